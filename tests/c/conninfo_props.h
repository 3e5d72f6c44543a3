/*
 * conninfo_props.h - what evl_config_redact_conninfo promises, as one
 * check shared by test_conninfo.c and the fuzz target
 * (tests/fuzz/fuzz_conninfo.c).
 *
 * For a conninfo libpq parses:
 *   - the output depends only on the settings libpq parsed: the same
 *     settings written another way give the same output;
 *   - it does not depend on the secrets: the same settings with other
 *     values for password and sslpassword give the same output, so no
 *     part of a password (not even its length) can show, however it was
 *     written (quotes, escapes, percent-encoding, '://', '@');
 *   - it parses back to the same settings, secrets as *** or absent.
 * For a conninfo libpq refuses, the output is made only of the words of
 * libpq's messages and numbers, so no piece of the input shows.
 */
#ifndef EVL_CONNINFO_PROPS_H
#define EVL_CONNINFO_PROPS_H

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "config.h"

static int props_secret(const PQconninfoOption *o)
{
    return (o->dispchar && strchr(o->dispchar, '*')) ||
           strstr(o->keyword, "password") || strstr(o->keyword, "secret");
}

/* The words a refused conninfo may show: evlua's frame and the texts of
 * libpq's parse errors. */
static const char *const props_vocabulary[] = {
    "unparseable", "conninfo",   "missing",      "after",
    "in",          "connection", "info",         "string",
    "invalid",     "option",     "unterminated", "quoted",
    "percent",     "encoded",    "token",        "forbidden",
    "value",       "00",         "URI",          "propagated",
    "to",          "internal",   "parser",       "routine",
    "end",         "of",         "reached",      "when",
    "looking",     "for",        "matching",     "IPv6",
    "host",        "address",    "may",          "not",
    "be",          "empty",      "unexpected",   "character",
    "at",          "position",   "expected",     "or",
    "extra",       "key",        "separator",    "query",
    "parameter",   "size",       "exceeds",      "the",
    "maximum",     "allowed",    "out",          "memory",
    "libpq",       "s",          "message",      "withheld",
    NULL};

static int props_known_word(const char *w, size_t n)
{
    size_t digits = 0;
    while (digits < n && isdigit((unsigned char)w[digits]))
        digits++;
    if (digits == n)
        return 1;
    for (int i = 0; props_vocabulary[i]; i++)
        if (strlen(props_vocabulary[i]) == n &&
            strncmp(props_vocabulary[i], w, n) == 0)
            return 1;
    return 0;
}

/* The settings as key='value' pairs, each secret replaced by other (NULL:
 * kept). Returns owned; free(). */
static char *props_rebuild(PQconninfoOption *opts, const char *other)
{
    size_t n = 1;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val)
            n += strlen(o->keyword) + 2 * strlen(o->val) + 16 +
                 (other ? strlen(other) * 2 : 0);
    char *s = malloc(n), *w = s;
    if (!s)
        abort();
    *s = '\0';
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        const char *v = other && props_secret(o) ? other : o->val;
        w += sprintf(w, "%s%s='", w == s ? "" : " ", o->keyword);
        for (; *v; v++) {
            if (*v == '\'' || *v == '\\')
                *w++ = '\\';
            *w++ = *v;
        }
        *w++ = '\'';
        *w = '\0';
    }
    return s;
}

/* Redacts in into out (outlen bytes) and checks the promises above.
 * Returns NULL when they hold, else which one failed. */
static const char *conninfo_props(const char *in, char *out, size_t outlen)
{
    const char *bad = NULL;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(in, &perr);
    PQfreemem(perr);
    evl_config_redact_conninfo(in, out, outlen);
    if (!opts) {
        if (strncmp(out, "(unparseable conninfo: ", 23) != 0)
            return "a refused conninfo is not said so";
        for (const char *p = out; *p;) {
            size_t n = 0;
            if (!isprint((unsigned char)*p))
                return "a refused conninfo shows a control byte";
            while (isalnum((unsigned char)p[n]))
                n++;
            if (n && !props_known_word(p, n))
                return "a refused conninfo shows a word of its own";
            p += n ? n : 1;
        }
        return NULL;
    }
    if (strlen(out) + 1 >= outlen) {
        PQconninfoFree(opts);
        return NULL; /* truncated: nothing more to compare */
    }
    char *same = props_rebuild(opts, NULL);
    /* two other secrets, so one of them differs from the real one */
    char *other1 = props_rebuild(opts, "Q");
    char *other2 = props_rebuild(opts, "R'@://%41 x");
    char *buf = malloc(outlen);
    if (!buf)
        abort();
    evl_config_redact_conninfo(same, buf, outlen);
    if (strcmp(buf, out) != 0)
        bad = "the output depends on how the settings were written";
    evl_config_redact_conninfo(other1, buf, outlen);
    if (!bad && strcmp(buf, out) != 0)
        bad = "the output depends on a secret";
    evl_config_redact_conninfo(other2, buf, outlen);
    if (!bad && strcmp(buf, out) != 0)
        bad = "the output depends on a secret";
    char *rerr = NULL;
    PQconninfoOption *back = PQconninfoParse(out, &rerr);
    PQfreemem(rerr);
    if (!bad && !back)
        bad = "the output does not parse";
    for (PQconninfoOption *a = opts, *b = back; !bad && a->keyword; a++, b++) {
        if (!b->keyword || strcmp(a->keyword, b->keyword) != 0)
            bad = "the output parses to other options";
        else if (props_secret(a)
                     ? b->val && strcmp(b->val, "***") != 0
                     : !a->val != !b->val || (a->val && strcmp(a->val, b->val)))
            bad = "the output parses to other settings";
    }
    PQconninfoFree(back);
    free(buf);
    free(other2);
    free(other1);
    free(same);
    PQconninfoFree(opts);
    return bad;
}

#endif
