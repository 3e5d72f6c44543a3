/*
 * test_config_keys.c - docs/config.md and the loader agree on the keys:
 * every key config.c accepts (evl_config_each_key) has a row in the
 * reference's "Keys" table, and every row there names a key it accepts.
 * A row may name several keys with braces:
 * `projection.each.NAME.{isolation,on_error}`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config.h"

#define MAXKEYS 128

typedef struct keyset {
    char *name[MAXKEYS];
    int n;
} keyset;

static void add(keyset *s, const char *name, size_t len)
{
    if (s->n == MAXKEYS) {
        CHECK(0, "at most MAXKEYS keys");
        return;
    }
    s->name[s->n] = malloc(len + 1);
    memcpy(s->name[s->n], name, len);
    s->name[s->n++][len] = '\0';
}

static int has(const keyset *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->name[i], name) == 0)
            return 1;
    return 0;
}

/* The key column of one table row ("a.b" or "a.{b,c}") into s. */
static void add_documented(keyset *s, const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (!open) {
        add(s, key, len);
        return;
    }
    size_t stem = (size_t)(open - key);
    const char *p = open + 1, *end = key + len - 1; /* at '}' */
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma ? comma : end;
        char name[200];
        snprintf(name, sizeof name, "%.*s%.*s", (int)stem, key, (int)(stop - p),
                 p);
        add(s, name, strlen(name));
        p = stop + 1;
    }
}

/* The keys of the "## Keys" table of docs/config.md. */
static void read_docs(keyset *s)
{
    const char *src = getenv("EVLUA_SOURCE_DIR");
    char path[512], line[4096];
    int in_keys = 0;
    snprintf(path, sizeof path, "%s/docs/config.md", src ? src : ".");
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "docs/config.md can be read (EVLUA_SOURCE_DIR)");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "## ", 3) == 0)
            in_keys = strncmp(line, "## Keys", 7) == 0;
        else if (in_keys && strncmp(line, "| `", 3) == 0) {
            const char *end = strchr(line + 3, '`');
            if (end)
                add_documented(s, line + 3, (size_t)(end - (line + 3)));
        }
    }
    fclose(f);
}

static int collect(const evl_config_key *k, void *ud)
{
    add(ud, k->name, strlen(k->name));
    return 0;
}

int main(void)
{
    keyset code = {0}, docs = {0};
    char what[300];
    evl_config_each_key(collect, &code);
    read_docs(&docs);
    CHECK(code.n > 40, "the loader lists its keys");
    CHECK(docs.n > 40, "docs/config.md has a Keys table");
    CHECK(has(&code, "commands.topics.events"), "nested keys are dotted");
    CHECK(has(&code, "projection.each.NAME.threads"),
          "per-projection keys are named with NAME");
    for (int i = 0; i < code.n; i++) {
        snprintf(what, sizeof what, "key %s is documented in docs/config.md",
                 code.name[i]);
        CHECK(has(&docs, code.name[i]), what);
    }
    for (int i = 0; i < docs.n; i++) {
        snprintf(what, sizeof what,
                 "documented key %s is one the loader accepts", docs.name[i]);
        CHECK(has(&code, docs.name[i]), what);
    }
    for (int i = 0; i < code.n; i++)
        free(code.name[i]);
    for (int i = 0; i < docs.n; i++)
        free(docs.name[i]);
    return check_done();
}
