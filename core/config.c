/*
 * config.c - load and validate the Lua configuration file (see config.h).
 *
 * The file runs in its own small lua_State that is closed right after:
 * values are copied out into C strings, so nothing of the config's Lua
 * world survives loading. Validation walks the returned table key by key
 * against what this file knows; anything else is an error that names the
 * dotted key, so a typo never silently falls back to a default.
 */
#include "config.h"
#include "pattern.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <libpq-fe.h>
#include <lua.h>
#include <lualib.h>

typedef struct loader {
    lua_State *L;
    const char *file;
    char *err;
    size_t errlen;
} loader;

static evl_err fail(loader *ld, const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static evl_err fail(loader *ld, const char *key, const char *fmt, ...)
{
    char msg[EVL_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (key)
        return evl_seterr(ld->err, ld->errlen, EVL_EPERMANENT, "%s: %s: %s",
                          ld->file, key, msg);
    return evl_seterr(ld->err, ld->errlen, EVL_EPERMANENT, "%s: %s", ld->file,
                      msg);
}

static void strlist_add(evl_strlist *l, const char *s)
{
    l->v = evl_xrealloc(l->v, sizeof(char *) * (size_t)(l->n + 1));
    l->v[l->n++] = evl_xstrdup(s);
}

static void strlist_free(evl_strlist *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void set_str(char **dst, const char *s)
{
    free(*dst);
    *dst = s ? evl_xstrdup(s) : NULL;
}

/* The value on top of the stack, typed; key is the dotted name for
 * messages. Each pops nothing. */
static evl_err get_str(loader *ld, const char *key, char **dst)
{
    if (lua_type(ld->L, -1) != LUA_TSTRING)
        return fail(ld, key, "is a %s, expected a string",
                    luaL_typename(ld->L, -1));
    set_str(dst, lua_tostring(ld->L, -1));
    return EVL_OK;
}

static evl_err get_int(loader *ld, const char *key, long min, long max,
                       long *dst)
{
    int isint;
    lua_Integer v = lua_tointegerx(ld->L, -1, &isint);
    if (!isint || lua_type(ld->L, -1) != LUA_TNUMBER)
        return fail(ld, key, "is a %s, expected an integer",
                    luaL_typename(ld->L, -1));
    if (v < min || v > max)
        return fail(ld, key, "is %lld, expected %ld to %ld", (long long)v, min,
                    max);
    *dst = (long)v;
    return EVL_OK;
}

static evl_err get_intv(loader *ld, const char *key, long min, long max,
                        int *dst)
{
    long v;
    evl_err e = get_int(ld, key, min, max, &v);
    if (e == EVL_OK)
        *dst = (int)v;
    return e;
}

static evl_err get_bool(loader *ld, const char *key, int *dst)
{
    if (!lua_isboolean(ld->L, -1))
        return fail(ld, key, "is a %s, expected a boolean",
                    luaL_typename(ld->L, -1));
    *dst = lua_toboolean(ld->L, -1);
    return EVL_OK;
}

static evl_err get_enum(loader *ld, const char *key, const char *const *ok,
                        char **dst)
{
    evl_err e = get_str(ld, key, dst);
    if (e)
        return e;
    for (int i = 0; ok[i]; i++)
        if (strcmp(*dst, ok[i]) == 0)
            return EVL_OK;
    char list[256] = "";
    for (int i = 0; ok[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
                 i ? ", " : "", ok[i]);
    return fail(ld, key, "is \"%s\", expected one of: %s", *dst, list);
}

/* A string or a list of strings. */
static evl_err get_strlist(loader *ld, const char *key, evl_strlist *dst)
{
    lua_State *L = ld->L;
    strlist_free(dst);
    if (lua_type(L, -1) == LUA_TSTRING) {
        strlist_add(dst, lua_tostring(L, -1));
        return EVL_OK;
    }
    if (!lua_istable(L, -1))
        return fail(ld, key, "is a %s, expected a string or a list of strings",
                    luaL_typename(L, -1));
    /* raw: a __len metamethod would run Lua outside the protected walk */
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING) {
            evl_err e = fail(ld, key, "item %lld is a %s, expected a string",
                             (long long)i, luaL_typename(L, -1));
            lua_pop(L, 1);
            return e;
        }
        strlist_add(dst, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    return EVL_OK;
}

/* Iterate the table on top of the stack; for each string key call fn with
 * the value on top. A non-string key is an error. */
typedef evl_err (*field_fn)(loader *ld, const char *prefix, const char *k,
                            void *ud);

static evl_err each_field(loader *ld, const char *prefix, field_fn fn, void *ud)
{
    lua_State *L = ld->L;
    if (!lua_istable(L, -1))
        return fail(ld, prefix, "is a %s, expected a table",
                    luaL_typename(L, -1));
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        evl_err e;
        if (lua_type(L, -2) != LUA_TSTRING) {
            e = fail(ld, prefix, "has a %s key, expected names",
                     luaL_typename(L, -2));
        } else {
            char k[256];
            snprintf(k, sizeof k, "%s", lua_tostring(L, -2));
            e = fn(ld, prefix, k, ud);
        }
        if (e) {
            lua_pop(L, 2);
            return e;
        }
        lua_pop(L, 1);
    }
    return EVL_OK;
}

/* "prefix.k" (or "k") into buf for messages; a key too long for it is
 * cut, which only shortens the message. */
static void key_name(char *buf, size_t n, const char *prefix, const char *k)
{
    if (snprintf(buf, n, "%s%s%s", prefix ? prefix : "", prefix ? "." : "",
                 k) >= (int)n)
        buf[n - 1] = '\0';
}
#define KEY(buf, prefix, k) key_name(buf, sizeof buf, prefix, k)

static const char *const isolations[] = {"aggregate", "batch", "aggregate-tx",
                                         NULL};
static const char *const policies[] = {"park", "halt", NULL};
static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const formats[] = {"logfmt", "json", NULL};

static evl_err kafka_field(loader *ld, const char *prefix, const char *k,
                           void *ud)
{
    evl_config *cfg = ud;
    lua_State *L = ld->L;
    char key[300];
    KEY(key, prefix, k);
    /* librdkafka takes every value as a string; accept numbers and
     * booleans too, written the way librdkafka parses them */
    const char *v;
    if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
        v = lua_tostring(L, -1); /* converts the value slot only */
    else if (lua_isboolean(L, -1))
        v = lua_toboolean(L, -1) ? "true" : "false";
    else
        return fail(ld, key, "is a %s, expected a string, number or boolean",
                    luaL_typename(L, -1));
    for (int i = 0; i < cfg->nkafka; i++)
        if (strcmp(cfg->kafka[i].key, k) == 0) {
            set_str(&cfg->kafka[i].value, v);
            return EVL_OK;
        }
    cfg->kafka =
        evl_xrealloc(cfg->kafka, sizeof(evl_kv) * (size_t)(cfg->nkafka + 1));
    cfg->kafka[cfg->nkafka].key = evl_xstrdup(k);
    cfg->kafka[cfg->nkafka].value = evl_xstrdup(v);
    cfg->nkafka++;
    return EVL_OK;
}

/* ---- the keys ---------------------------------------------------------- */

/*
 * Every key evlua reads is a row of one of the tables below: its name
 * (the last part of the dotted key), its kind, the range of an integer,
 * and where its value goes, as an offset into the record the table
 * fills (evl_config; evl_projection_cfg for projection.each.NAME). The
 * loader walks the file's table and looks each key up here; an unknown
 * one is an error. evl_config_each_key() lists the same rows, so a test
 * can hold docs/config.md to them.
 */
typedef enum kind {
    K_STR,     /* char *: a string */
    K_STRLIST, /* evl_strlist: a string or a list of strings */
    K_ENUM,    /* char *: one of the strings in choices */
    K_BOOL,    /* int: a boolean */
    K_INT,     /* int: an integer in min..max */
    K_LONG,    /* long: an integer in min..max */
    K_SIZE,    /* size_t: an integer in min..max */
    K_MB,      /* size_t: an integer in min..max, in MiB, stored in bytes */
    K_KAFKA,   /* evl_config.kafka: librdkafka properties, passed through */
    K_TABLE,   /* a table of the keys in sub, into the same record */
    K_TOKENS,  /* gateway.tokens: a list of token tables
                  (config_gateway.c) */
    K_EACH     /* projection.each: NAME = a table of the keys in sub, each
                  into an evl_projection_cfg of its own */
} kind;

typedef struct key_spec {
    const char *name;
    kind kind;
    long min, max;
    size_t off;
    const void *sub; /* K_ENUM: the choices (NULL-ended); K_TABLE, K_EACH:
                        the keys (ended by a NULL name) */
} key_spec;

#define CFG(field)  offsetof(evl_config, field)
#define PROJ(field) offsetof(evl_projection_cfg, field)
#define END                                                                    \
    {                                                                          \
        NULL, K_STR, 0, 0, 0, NULL                                             \
    }

static const key_spec limits_keys[] = {
    {"memory_mb", K_MB, 1, 1 << 20, CFG(limits.memory), NULL},
    {"instructions", K_LONG, 1000, 1L << 40, CFG(limits.instructions), NULL},
    {"time_ms", K_LONG, -1, 3600000, CFG(limits.time_ms), NULL},
    {"pattern_subject", K_SIZE, 64, 1L << 30, CFG(limits.pattern_subject),
     NULL},
    END};

static const key_spec topics_keys[] = {
    {"commands", K_STR, 0, 0, CFG(cmd.commands_topic), NULL},
    {"events", K_STR, 0, 0, CFG(cmd.events_topic), NULL},
    {"state", K_STR, 0, 0, CFG(cmd.state_topic), NULL},
    {"results", K_STR, 0, 0, CFG(cmd.results_topic), NULL},
    END};

static const key_spec commands_keys[] = {
    {"enabled", K_BOOL, 0, 0, CFG(cmd.enabled), NULL},
    {"group_id", K_STR, 0, 0, CFG(cmd.group_id), NULL},
    {"transactional_id", K_STR, 0, 0, CFG(cmd.transactional_id), NULL},
    {"batch_size", K_INT, 1, 100000, CFG(cmd.batch_size), NULL},
    {"linger_ms", K_INT, 0, 60000, CFG(cmd.linger_ms), NULL},
    {"dedup_ids", K_INT, 0, 100000, CFG(cmd.dedup_ids), NULL},
    {"create_topics", K_BOOL, 0, 0, CFG(cmd.create_topics), NULL},
    {"partitions", K_INT, 1, 10000, CFG(cmd.partitions), NULL},
    {"topics", K_TABLE, 0, 0, 0, topics_keys},
    END};

static const key_spec each_proj_keys[] = {
    {"isolation", K_ENUM, 0, 0, PROJ(isolation), isolations},
    {"on_error", K_ENUM, 0, 0, PROJ(on_error), policies},
    {"group_id", K_STR, 0, 0, PROJ(group_id), NULL},
    {"topics", K_STRLIST, 0, 0, PROJ(topics), NULL},
    {"batch_size", K_INT, 1, 100000, PROJ(batch_size), NULL},
    {"threads", K_INT, 1, 64, PROJ(threads), NULL},
    END};

static const key_spec projection_keys[] = {
    {"enabled", K_BOOL, 0, 0, CFG(proj.enabled), NULL},
    {"batch_size", K_INT, 1, 100000, CFG(proj.batch_size), NULL},
    {"batch_bytes", K_INT, 65536, 1 << 30, CFG(proj.batch_bytes), NULL},
    {"linger_ms", K_INT, 0, 60000, CFG(proj.linger_ms), NULL},
    {"threads", K_INT, 1, 64, CFG(proj.threads), NULL},
    {"isolation", K_ENUM, 0, 0, CFG(proj.isolation), isolations},
    {"on_error", K_ENUM, 0, 0, CFG(proj.on_error), policies},
    {"group_prefix", K_STR, 0, 0, CFG(proj.group_prefix), NULL},
    {"topics", K_STRLIST, 0, 0, CFG(proj.topics), NULL},
    {"each", K_EACH, 0, 0, 0, each_proj_keys},
    END};

static const key_spec reactions_keys[] = {
    {"enabled", K_BOOL, 0, 0, CFG(react.enabled), NULL},
    {"on_error", K_ENUM, 0, 0, CFG(react.on_error), policies},
    {"max_commands", K_INT, 1, 100000, CFG(react.max_commands), NULL},
    {"batch_size", K_INT, 1, 100000, CFG(react.batch_size), NULL},
    {"batch_bytes", K_INT, 65536, 1 << 30, CFG(react.batch_bytes), NULL},
    {"linger_ms", K_INT, 0, 60000, CFG(react.linger_ms), NULL},
    {"group_prefix", K_STR, 0, 0, CFG(react.group_prefix), NULL},
    {"parked_topic", K_STR, 0, 0, CFG(react.parked_topic), NULL},
    END};

static const key_spec metrics_keys[] = {
    {"listen", K_STR, 0, 0, CFG(metrics.listen), NULL},
    {"lag_interval_ms", K_INT, 100, 3600000, CFG(metrics.lag_interval_ms),
     NULL},
    END};

static const key_spec gateway_keys[] = {
    {"listen", K_STR, 0, 0, CFG(gateway.listen), NULL},
    {"tls_cert", K_STR, 0, 0, CFG(gateway.tls_cert), NULL},
    {"tls_key", K_STR, 0, 0, CFG(gateway.tls_key), NULL},
    {"timeout_ms", K_INT, 1, 3600000, CFG(gateway.timeout_ms), NULL},
    {"max_body", K_INT, 1024, 16 << 20, CFG(gateway.max_body), NULL},
    {"max_waiters", K_INT, 1, 1000000, CFG(gateway.max_waiters), NULL},
    {"max_connections", K_INT, 1, 1000000, CFG(gateway.max_connections), NULL},
    {"connection_timeout_s", K_INT, 1, 3600, CFG(gateway.connection_timeout_s),
     NULL},
    {"cache_size", K_INT, 1, 100000000, CFG(gateway.cache_size), NULL},
    {"threads", K_INT, 1, 256, CFG(gateway.threads), NULL},
    {"tokens", K_TOKENS, 0, 0, 0, NULL},
    END};

static const key_spec log_keys[] = {
    {"level", K_ENUM, 0, 0, CFG(log_level), levels},
    {"format", K_ENUM, 0, 0, CFG(log_format), formats},
    {"file", K_STR, 0, 0, CFG(log_file), NULL},
    END};

static const key_spec top_keys[] = {
    {"aggregates", K_STRLIST, 0, 0, CFG(aggregate_dirs), NULL},
    {"projections", K_STRLIST, 0, 0, CFG(projection_dirs), NULL},
    {"lib", K_STR, 0, 0, CFG(lib_dir), NULL},
    {"kafka", K_KAFKA, 0, 0, 0, NULL},
    {"postgres", K_STR, 0, 0, CFG(pg_conninfo), NULL},
    {"limits", K_TABLE, 0, 0, 0, limits_keys},
    {"commands", K_TABLE, 0, 0, 0, commands_keys},
    {"projection", K_TABLE, 0, 0, 0, projection_keys},
    {"reactions", K_TABLE, 0, 0, 0, reactions_keys},
    {"metrics", K_TABLE, 0, 0, 0, metrics_keys},
    {"gateway", K_TABLE, 0, 0, 0, gateway_keys},
    {"log", K_TABLE, 0, 0, 0, log_keys},
    {"instance", K_STR, 0, 0, CFG(instance), NULL},
    {"shutdown_timeout_ms", K_INT, 0, 3600000, CFG(shutdown_timeout_ms), NULL},
    END};

/* What each_field passes to table_field: the keys of the table being
 * walked, the record they fill, and the config (for K_KAFKA, K_EACH). */
typedef struct table_walk {
    const key_spec *keys;
    char *rec;
    evl_config *cfg;
} table_walk;

static evl_err table_field(loader *ld, const char *prefix, const char *k,
                           void *ud);

/* projection.each: k is a projection's name; its table fills a new
 * evl_projection_cfg. */
static evl_err each_proj(loader *ld, const char *prefix, const char *k,
                         void *ud)
{
    const table_walk *parent = ud;
    evl_config *cfg = parent->cfg;
    char key[300];
    KEY(key, prefix, k);
    cfg->proj.each =
        evl_xrealloc(cfg->proj.each, sizeof(evl_projection_cfg) *
                                         (size_t)(cfg->proj.neach + 1));
    evl_projection_cfg *p = &cfg->proj.each[cfg->proj.neach++];
    memset(p, 0, sizeof *p);
    p->name = evl_xstrdup(k);
    table_walk w = {parent->keys, (char *)p, cfg};
    return each_field(ld, key, table_field, &w);
}

/* Read the value on top of the stack as key (the dotted name) of kind
 * ks->kind into its place in rec. */
static evl_err read_key(loader *ld, const char *key, const key_spec *ks,
                        char *rec, evl_config *cfg)
{
    void *dst = rec + ks->off;
    long v;
    evl_err e;
    switch (ks->kind) {
    case K_STR: return get_str(ld, key, dst);
    case K_STRLIST: return get_strlist(ld, key, dst);
    case K_ENUM: return get_enum(ld, key, ks->sub, dst);
    case K_BOOL: return get_bool(ld, key, dst);
    case K_INT: return get_intv(ld, key, ks->min, ks->max, dst);
    case K_LONG: return get_int(ld, key, ks->min, ks->max, dst);
    case K_SIZE:
    case K_MB:
        if ((e = get_int(ld, key, ks->min, ks->max, &v)))
            return e;
        *(size_t *)dst = ks->kind == K_MB ? (size_t)v << 20 : (size_t)v;
        return EVL_OK;
    case K_KAFKA: return each_field(ld, key, kafka_field, cfg);
    case K_TOKENS: {
        char msg[EVL_ERRLEN];
        if (evl_config_gateway_tokens(ld->L, cfg, msg, sizeof msg))
            return fail(ld, key, "%s", msg);
        return EVL_OK;
    }
    case K_TABLE: {
        table_walk w = {ks->sub, rec, cfg};
        return each_field(ld, key, table_field, &w);
    }
    case K_EACH: {
        table_walk w = {ks->sub, rec, cfg};
        return each_field(ld, key, each_proj, &w);
    }
    }
    return fail(ld, key, "has an unknown kind"); /* not reached */
}

static evl_err table_field(loader *ld, const char *prefix, const char *k,
                           void *ud)
{
    const table_walk *w = ud;
    char key[300];
    KEY(key, prefix, k);
    for (const key_spec *ks = w->keys; ks->name; ks++)
        if (strcmp(ks->name, k) == 0)
            return read_key(ld, key, ks, w->rec, w->cfg);
    return fail(ld, NULL, "unknown key '%s'", key);
}

/* The type of a key of kind k, as evl_config_each_key names it. */
static const char *kind_name(kind k)
{
    switch (k) {
    case K_STR: return "string";
    case K_STRLIST: return "string or list";
    case K_ENUM: return "enum";
    case K_BOOL: return "boolean";
    case K_INT:
    case K_LONG:
    case K_SIZE:
    case K_MB: return "integer";
    case K_KAFKA: return "table";
    case K_TOKENS: return "list of tables";
    case K_TABLE:
    case K_EACH: break;
    }
    return "table";
}

static int each_key(const key_spec *keys, const char *prefix,
                    evl_config_key_fn fn, void *ud)
{
    for (const key_spec *ks = keys; ks->name; ks++) {
        char name[200];
        int r;
        KEY(name, prefix, ks->name);
        if (ks->kind == K_TABLE)
            r = each_key(ks->sub, name, fn, ud);
        else if (ks->kind == K_EACH) {
            snprintf(name + strlen(name), sizeof name - strlen(name), ".NAME");
            r = each_key(ks->sub, name, fn, ud);
        } else {
            evl_config_key k = {name, kind_name(ks->kind), ks->min, ks->max,
                                ks->kind == K_ENUM ? ks->sub : NULL};
            r = fn(&k, ud);
        }
        if (r)
            return r;
    }
    return 0;
}

int evl_config_each_key(evl_config_key_fn fn, void *ud)
{
    return each_key(top_keys, NULL, fn, ud);
}

static void defaults(evl_config *cfg)
{
    strlist_add(&cfg->aggregate_dirs, "aggregates");
    strlist_add(&cfg->projection_dirs, "projections");
    cfg->limits.memory = (size_t)64 << 20;
    cfg->limits.instructions = 10000000;
    cfg->limits.time_ms = 1000;
    cfg->limits.pattern_subject = (size_t)1 << 20;
    cfg->cmd.enabled = 1;
    cfg->cmd.group_id = evl_xstrdup("evlua.commands");
    cfg->cmd.transactional_id = evl_xstrdup("evlua.commands.0");
    cfg->cmd.batch_size = 1000;
    cfg->cmd.linger_ms = 0;
    cfg->cmd.dedup_ids = 100;
    cfg->cmd.create_topics = 1;
    cfg->cmd.partitions = 6;
    cfg->cmd.commands_topic = evl_xstrdup("{type}.commands");
    cfg->cmd.events_topic = evl_xstrdup("{type}.events");
    cfg->cmd.state_topic = evl_xstrdup("{type}.state");
    cfg->cmd.results_topic = evl_xstrdup("{type}.results");
    cfg->proj.enabled = 1;
    cfg->proj.batch_size = 500;
    cfg->proj.batch_bytes = 4 << 20;
    cfg->proj.linger_ms = 5;
    cfg->proj.threads = 2;
    cfg->proj.isolation = evl_xstrdup("aggregate");
    cfg->proj.on_error = evl_xstrdup("park");
    cfg->proj.group_prefix = evl_xstrdup("evlua.projection.");
    cfg->react.enabled = 1;
    cfg->react.on_error = evl_xstrdup("park");
    cfg->react.max_commands = 100;
    cfg->react.batch_size = 5000;
    cfg->react.batch_bytes = 4 << 20;
    cfg->react.linger_ms = 0;
    cfg->react.group_prefix = evl_xstrdup("evlua.react.");
    cfg->react.parked_topic = evl_xstrdup("{type}.reactions.parked");
    cfg->log_level = evl_xstrdup("info");
    cfg->log_format = evl_xstrdup("logfmt");
    cfg->shutdown_timeout_ms = 30000;
    cfg->metrics.lag_interval_ms = 5000;
    evl_config_gateway_defaults(cfg);
}

/* ---- the config file's limits ---------------------------------------- */

/*
 * The config file is Lua and could loop, allocate or backtrack forever,
 * hanging `evlua check`, `evlua run` and any ExecStartPre. It runs under
 * fixed limits (docs/config.md), the same kinds as a script's: a count
 * hook spends an instruction budget and reads the clock, the allocator
 * caps memory and charges growth to the budget (ALLOC_BYTES per
 * instruction), and string.find/match/gmatch/gsub are pattern.h's, which
 * charge every matching step, so a backtracking pattern is bounded too.
 * Once a limit is spent the hook fires on every instruction and raises
 * again, so a pcall in the config cannot swallow it.
 */
#define CONFIG_INSTRUCTIONS 100000000L
#define CONFIG_TIME_MS      10000
#define CONFIG_MEMORY_MB    64
#define HOOK_STEP           1000
#define ALLOC_BYTES         256
#define BIG_ALLOC           65536 /* growth that reads the clock */

enum { SPENT_INSTRUCTIONS = 1, SPENT_TIME, SPENT_MEMORY };

typedef struct budget {
    lua_State *L;
    size_t mem_used, mem_limit;
    long left; /* instructions */
    long long deadline_ms;
    int spent;       /* SPENT_*: the first limit the file ran into */
    char where[160]; /* "file:line" where it did, or "" */
} budget;

static void config_hook(lua_State *L, lua_Debug *ar);

static budget *budget_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* Shrinking never fails (Lua relies on it); growth past the cap is
 * refused, which Lua raises as a memory error. */
static void *config_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    budget *b = ud;
    void *p;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        b->mem_used -= osize;
        return NULL;
    }
    if (nsize > osize && nsize - osize > b->mem_limit - b->mem_used) {
        if (!b->spent)
            b->spent = SPENT_MEMORY; /* kept only if the load fails */
        return NULL;
    }
    p = realloc(ptr, nsize);
    if (!p)
        return nsize <= osize ? ptr : NULL;
    b->mem_used = b->mem_used - osize + nsize;
    if (nsize > osize && b->L) {
        /* the allocator cannot raise: it arms the hook for the next
         * instruction, which does */
        size_t grow = nsize - osize;
        b->left -= (long)(grow / ALLOC_BYTES);
        if (b->left <= 0 ||
            (grow >= BIG_ALLOC && evl_now_ms() > b->deadline_ms))
            lua_sethook(b->L, config_hook, LUA_MASKCOUNT, 1);
    }
    return p;
}

static const char *spent_text(int spent, char *buf, size_t n)
{
    if (spent == SPENT_TIME)
        snprintf(buf, n, "the config file's time limit (%d s) was exceeded",
                 CONFIG_TIME_MS / 1000);
    else if (spent == SPENT_MEMORY)
        snprintf(buf, n, "the config file's memory limit (%d MiB) was exceeded",
                 CONFIG_MEMORY_MB);
    else
        snprintf(buf, n,
                 "the config file's instruction limit (%ld instructions) was "
                 "exceeded",
                 CONFIG_INSTRUCTIONS);
    return buf;
}

/* A limit is spent: note which and where (the first time), make the hook
 * fire on every instruction from now on, and raise. level is the stack
 * level of the Lua function to blame. */
static int spend(lua_State *L, budget *b, int level, int why)
{
    lua_Debug ar;
    char text[96];
    if (b->spent != SPENT_INSTRUCTIONS && b->spent != SPENT_TIME) {
        b->spent = why;
        b->where[0] = '\0';
        if (lua_getstack(L, level, &ar) && lua_getinfo(L, "Sl", &ar) &&
            ar.currentline > 0)
            snprintf(b->where, sizeof b->where, "%s:%d", ar.short_src,
                     ar.currentline);
        lua_sethook(L, config_hook, LUA_MASKCOUNT, 1);
    }
    return luaL_error(L, "%s", spent_text(b->spent, text, sizeof text));
}

static void config_hook(lua_State *L, lua_Debug *ar)
{
    budget *b = budget_of(L);
    (void)ar;
    if (b->spent == SPENT_INSTRUCTIONS || b->spent == SPENT_TIME)
        spend(L, b, 0, b->spent);
    if (evl_now_ms() > b->deadline_ms)
        spend(L, b, 0, SPENT_TIME);
    b->left -= lua_gethookcount(L);
    if (b->left <= 0)
        spend(L, b, 0, SPENT_INSTRUCTIONS);
}

/* pattern.h's callback: a matching step is an instruction. Level 1 is the
 * Lua function that called string.find and the like. */
static void config_charge(lua_State *L, size_t steps)
{
    budget *b = budget_of(L);
    long before = b->left;
    if (b->spent == SPENT_INSTRUCTIONS || b->spent == SPENT_TIME)
        spend(L, b, 1, b->spent);
    if (before <= 0 || steps >= (size_t)before)
        spend(L, b, 1, SPENT_INSTRUCTIONS);
    b->left -= (long)steps;
    if (before / HOOK_STEP != b->left / HOOK_STEP &&
        evl_now_ms() > b->deadline_ms)
        spend(L, b, 1, SPENT_TIME);
}

/* string.find(s, pattern [, init [, plain]]) and the others: the stock
 * functions' results, charged per step */
static int str_find(lua_State *L)
{
    return evl_pattern_find(L, config_charge);
}
static int str_match(lua_State *L)
{
    return evl_pattern_match(L, config_charge);
}
static int str_gmatch(lua_State *L)
{
    return evl_pattern_gmatch(L, config_charge);
}
static int str_gsub(lua_State *L)
{
    return evl_pattern_gsub(L, config_charge);
}

/* The config file's Lua: base (without file loading), string (with the
 * charging pattern functions), table, math and os.getenv. */
static void open_config_libs(lua_State *L)
{
    static const luaL_Reg patterns[] = {{"find", str_find},
                                        {"match", str_match},
                                        {"gmatch", str_gmatch},
                                        {"gsub", str_gsub},
                                        {NULL, NULL}};
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    /* the string table is also the strings' __index: s:find() too */
    luaL_setfuncs(L, patterns, 0);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0); /* not as a global */
    lua_newtable(L);
    lua_getfield(L, -2, "getenv");
    lua_setfield(L, -2, "getenv");
    lua_remove(L, -2);
    lua_setglobal(L, "os");
    lua_pop(L, 4); /* the libraries requiref left */
    static const char *const drop[] = {"dofile", "loadfile", "require",
                                       "collectgarbage", NULL};
    for (int i = 0; drop[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, drop[i]);
    }
}

/* The config's error value as text, without calling its metamethods. */
static const char *error_text(lua_State *L)
{
    int t = lua_type(L, -1);
    if (t == LUA_TSTRING || t == LUA_TNUMBER)
        return lua_tostring(L, -1);
    return lua_pushfstring(L, "(an error object of type %s)",
                           luaL_typename(L, -1));
}

/* Walks the returned table (at 2) into the evl_config (1), protected: a
 * memory error or a spent limit while reading it raises. */
typedef struct walk {
    loader *ld;
    evl_config *cfg;
    evl_err e;
} walk;

static int walk_config(lua_State *L)
{
    walk *w = lua_touserdata(L, 1);
    table_walk tw = {top_keys, (char *)w->cfg, w->cfg};
    w->e = each_field(w->ld, NULL, table_field, &tw);
    return 0;
}

/* Runs the file at path under the limits and reads what it returns into
 * c. Returns EVL_OK or EVL_EPERMANENT with the message in ld->err. */
static evl_err run_config(loader *ld, const char *path, evl_config *c)
{
    budget b;
    evl_err e = EVL_OK;
    char text[96];
    int status;
    memset(&b, 0, sizeof b);
    b.mem_limit = (size_t)CONFIG_MEMORY_MB << 20;
    b.left = CONFIG_INSTRUCTIONS;
    b.deadline_ms = evl_now_ms() + CONFIG_TIME_MS;
    lua_State *L = lua_newstate(config_alloc, &b);
    if (!L)
        return fail(ld, NULL, "cannot create a Lua state");
    b.L = L;
    ld->L = L;
    lua_sethook(L, config_hook, LUA_MASKCOUNT, HOOK_STEP);
    open_config_libs(L);
    b.spent = 0;
    status = luaL_loadfilex(L, path, "t");
    if (status == LUA_OK)
        status = lua_pcall(L, 0, 1, 0);
    if (status == LUA_OK && !lua_istable(L, -1)) {
        e = fail(ld, NULL, "returned a %s, expected a table",
                 luaL_typename(L, -1));
        goto out;
    }
    if (status == LUA_OK) {
        walk w = {ld, c, EVL_OK};
        lua_pushcfunction(L, walk_config);
        lua_pushlightuserdata(L, &w);
        lua_pushvalue(L, -3);
        status = lua_pcall(L, 2, 0, 0);
        if (status == LUA_OK) {
            e = w.e;
            goto out;
        }
    }
    /* a spent limit is named, with the file (and the line) */
    if (b.spent == SPENT_INSTRUCTIONS || b.spent == SPENT_TIME ||
        (b.spent == SPENT_MEMORY && status == LUA_ERRMEM)) {
        if (b.where[0])
            e = evl_seterr(ld->err, ld->errlen, EVL_EPERMANENT, "%s: %s",
                           b.where, spent_text(b.spent, text, sizeof text));
        else
            e = fail(ld, NULL, "%s", spent_text(b.spent, text, sizeof text));
    } else {
        /* the message already names the file (and line) */
        e = evl_seterr(ld->err, ld->errlen, EVL_EPERMANENT, "%s",
                       error_text(L));
    }
out:
    /* __gc metamethods run at close: under the hook still, and their
     * errors are dropped (no warning function is set) */
    lua_close(L);
    ld->L = NULL;
    return e;
}

/* Returns the name of the variable that set postgres, or NULL. */
static const char *env_overrides(evl_config *cfg)
{
    const char *pg_from = NULL;
    const char *v = getenv("EVLUA_KAFKA_BOOTSTRAP");
    if (v && *v) {
        int i;
        for (i = 0; i < cfg->nkafka; i++)
            if (strcmp(cfg->kafka[i].key, "bootstrap.servers") == 0)
                break;
        if (i == cfg->nkafka) {
            cfg->kafka =
                evl_xrealloc(cfg->kafka, sizeof(evl_kv) * (size_t)(i + 1));
            cfg->kafka[i].key = evl_xstrdup("bootstrap.servers");
            cfg->kafka[i].value = NULL;
            cfg->nkafka++;
        }
        set_str(&cfg->kafka[i].value, v);
    }
    v = getenv("EVLUA_PG_CONNINFO");
    if (v && *v) {
        set_str(&cfg->pg_conninfo, v);
        pg_from = "EVLUA_PG_CONNINFO";
    }
    v = getenv("EVLUA_INSTANCE");
    if (v && *v)
        set_str(&cfg->instance, v);
    return pg_from;
}

evl_err evl_config_load(const char *path, evl_config *cfg, char *err,
                        size_t errlen)
{
    evl_config c;
    evl_err e = EVL_OK;
    loader ld = {NULL, path ? path : "(defaults)", err, errlen};

    memset(&c, 0, sizeof c);
    memset(cfg, 0, sizeof *cfg);
    defaults(&c);
    c.path = evl_xstrdup(ld.file);
    if (path && (e = run_config(&ld, path, &c)))
        goto out;
    const char *pg_from = env_overrides(&c);
    /* a conninfo libpq refuses stops evlua here, with a message that
     * quotes none of it (it may hold a password), rather than at the
     * first connection */
    if (c.pg_conninfo) {
        char msg[EVL_ERRLEN];
        if (evl_config_check_conninfo(c.pg_conninfo, msg, sizeof msg)) {
            e = pg_from ? fail(&ld, NULL, "%s: %s", pg_from, msg)
                        : fail(&ld, "postgres", "%s", msg);
            goto out;
        }
    }
    if (c.cmd.transactional_id[0] == '\0') {
        e = fail(&ld, "commands.transactional_id", "must not be empty");
        goto out;
    }
    if (!strstr(c.react.parked_topic, "{type}")) {
        e = fail(&ld, "reactions.parked_topic",
                 "must contain {type} (each reacting aggregate type parks in "
                 "a topic of its own)");
        goto out;
    }
    /* checked after the environment, which may set it; the value is not
     * quoted: it may come from EVLUA_INSTANCE and be anything */
    if (c.instance && (!evl_valid_name(c.instance) ||
                       strlen(c.instance) > EVL_CONFIG_INSTANCE_MAX)) {
        const char *env = getenv("EVLUA_INSTANCE");
        e = fail(&ld, env && *env ? NULL : "instance",
                 "%sis not a valid name (letters, digits, '.', '_' and '-'; "
                 "1 to %d bytes)",
                 env && *env ? "EVLUA_INSTANCE " : "", EVL_CONFIG_INSTANCE_MAX);
        goto out;
    }
out:
    if (e) {
        evl_config_free(&c);
        return e;
    }
    *cfg = c;
    return EVL_OK;
}

void evl_config_free(evl_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    strlist_free(&cfg->aggregate_dirs);
    strlist_free(&cfg->projection_dirs);
    free(cfg->lib_dir);
    for (int i = 0; i < cfg->nkafka; i++) {
        free(cfg->kafka[i].key);
        free(cfg->kafka[i].value);
    }
    free(cfg->kafka);
    free(cfg->pg_conninfo);
    free(cfg->cmd.group_id);
    free(cfg->cmd.transactional_id);
    free(cfg->cmd.commands_topic);
    free(cfg->cmd.events_topic);
    free(cfg->cmd.state_topic);
    free(cfg->cmd.results_topic);
    free(cfg->proj.isolation);
    free(cfg->proj.on_error);
    free(cfg->proj.group_prefix);
    strlist_free(&cfg->proj.topics);
    for (int i = 0; i < cfg->proj.neach; i++) {
        evl_projection_cfg *p = &cfg->proj.each[i];
        free(p->name);
        free(p->isolation);
        free(p->on_error);
        free(p->group_id);
        strlist_free(&p->topics);
    }
    free(cfg->proj.each);
    free(cfg->react.on_error);
    free(cfg->react.group_prefix);
    free(cfg->react.parked_topic);
    free(cfg->metrics.listen);
    evl_config_gateway_free(cfg);
    free(cfg->instance);
    free(cfg->log_level);
    free(cfg->log_format);
    free(cfg->log_file);
    memset(cfg, 0, sizeof *cfg);
}

const char *evl_config_kafka(const evl_config *cfg, const char *key)
{
    for (int i = 0; i < cfg->nkafka; i++)
        if (strcmp(cfg->kafka[i].key, key) == 0)
            return cfg->kafka[i].value;
    return NULL;
}

void evl_config_topic(const char *pattern, const char *type, char *buf,
                      size_t n)
{
    size_t o = 0;
    if (n == 0)
        return;
    for (const char *p = pattern; *p && o + 1 < n;) {
        if (strncmp(p, "{type}", 6) == 0) {
            for (const char *t = type; *t && o + 1 < n; t++)
                buf[o++] = *t;
            p += 6;
        } else {
            buf[o++] = *p++;
        }
    }
    buf[o] = '\0';
}

evl_projection_cfg evl_config_projection(const evl_config *cfg,
                                         const char *name)
{
    evl_projection_cfg r;
    memset(&r, 0, sizeof r);
    r.name = (char *)name;
    r.isolation = cfg->proj.isolation;
    r.on_error = cfg->proj.on_error;
    r.topics = cfg->proj.topics;
    r.batch_size = cfg->proj.batch_size;
    r.threads = cfg->proj.threads;
    for (int i = 0; i < cfg->proj.neach; i++) {
        const evl_projection_cfg *p = &cfg->proj.each[i];
        if (strcmp(p->name, name) != 0)
            continue;
        if (p->isolation)
            r.isolation = p->isolation;
        if (p->on_error)
            r.on_error = p->on_error;
        if (p->group_id)
            r.group_id = p->group_id;
        if (p->topics.n)
            r.topics = p->topics;
        if (p->batch_size)
            r.batch_size = p->batch_size;
        if (p->threads)
            r.threads = p->threads;
    }
    return r;
}

/* Appends to a NUL-terminated buffer of size n, truncating. */
typedef struct out {
    char *buf;
    size_t n, o;
} out;

static void out_mem(out *w, const char *s, size_t l)
{
    for (size_t i = 0; i < l && w->o + 1 < w->n; i++)
        w->buf[w->o++] = s[i];
    w->buf[w->o] = '\0';
}

static void out_str(out *w, const char *s)
{
    out_mem(w, s, strlen(s));
}

/* libpq's message for a conninfo it refuses, without the input. libpq
 * quotes the offending text ("missing "=" after "ret" in connection info
 * string"), which may be a piece of a password and may itself hold
 * quotes, so no scan of the message can tell where the quote ends. The
 * message is matched instead against libpq's own (fe-connect.c) by the
 * fixed text before the quoted part, and what is shown is this table's
 * text: nothing of the input but a position. A message not in the table
 * (a later libpq, a translation) is withheld. */
static const struct {
    const char *libpq; /* the fixed start of libpq's message */
    const char *shown;
} parse_errors[] = {
    {"missing \"=\" after \"",
     "missing \"=\" after \"...\" in connection info string"},
    {"invalid connection option \"", "invalid connection option \"...\""},
    {"unterminated quoted string in connection info string",
     "unterminated quoted string in connection info string"},
    {"invalid percent-encoded token: \"",
     "invalid percent-encoded token: \"...\""},
    {"forbidden value %00 in percent-encoded value: \"",
     "forbidden value %00 in percent-encoded value: \"...\""},
    {"invalid URI propagated to internal parser routine: \"",
     "invalid URI propagated to internal parser routine"},
    {"end of string reached when looking for matching \"]\" in IPv6 host "
     "address in URI: \"",
     "end of string reached when looking for matching \"]\" in IPv6 host "
     "address in URI"},
    {"IPv6 host address may not be empty in URI: \"",
     "IPv6 host address may not be empty in URI"},
    {"unexpected character \"",
     "unexpected character \"...\" at position %d in URI (expected \":\" "
     "or \"/\")"},
    {"extra key/value separator \"=\" in URI query parameter: \"",
     "extra key/value separator \"=\" in URI query parameter: \"...\""},
    {"missing key/value separator \"=\" in URI query parameter: \"",
     "missing key/value separator \"=\" in URI query parameter: \"...\""},
    {"invalid URI query parameter: \"", "invalid URI query parameter: \"...\""},
    {"connection info string size exceeds the maximum allowed",
     "connection info string size exceeds the maximum allowed"},
    {"out of memory", "out of memory"},
};

static void parse_error_text(const char *msg, char *buf, size_t n)
{
    if (n == 0)
        return;
    snprintf(buf, n, "%s", msg ? "libpq's message withheld" : "out of memory");
    for (size_t i = 0; msg && i < sizeof parse_errors / sizeof *parse_errors;
         i++) {
        const char *fixed = parse_errors[i].libpq;
        if (strncmp(msg, fixed, strlen(fixed)) != 0)
            continue;
        if (strstr(parse_errors[i].shown, "%d")) {
            /* unexpected character "%c" at position %d ...: the one
             * character is skipped, the position kept */
            const char *p = msg + strlen(fixed);
            int pos = -1;
            if (*p && strncmp(p + 1, "\" at position ", 14) == 0)
                pos = atoi(p + 15);
            snprintf(buf, n, parse_errors[i].shown, pos);
        } else {
            snprintf(buf, n, "%s", parse_errors[i].shown);
        }
        return;
    }
}

/* PQconninfoParse, with a refusal described by parse_error_text. */
static PQconninfoOption *parse_conninfo(const char *conninfo, char *err,
                                        size_t errlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", &perr);
    if (!opts)
        parse_error_text(perr, err, errlen);
    PQfreemem(perr);
    return opts;
}

evl_err evl_config_check_conninfo(const char *conninfo, char *err,
                                  size_t errlen)
{
    char msg[EVL_ERRLEN];
    PQconninfoOption *opts = parse_conninfo(conninfo, msg, sizeof msg);
    if (!opts)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "unparseable conninfo: %s", msg);
    PQconninfoFree(opts);
    return EVL_OK;
}

/* Settings whose value is never shown: libpq marks its secrets with
 * dispchar "*" (password, sslpassword); the names catch any it adds
 * without the mark. */
static int secret_option(const PQconninfoOption *o)
{
    return (o->dispchar && strchr(o->dispchar, '*')) ||
           strstr(o->keyword, "password") || strstr(o->keyword, "secret");
}

/* key=value as libpq reads it back: bare when the value has no space,
 * quote or backslash and is not empty, else quoted with \ escapes. */
static void out_setting(out *w, const char *key, const char *val)
{
    int bare = *val != '\0';
    for (const char *p = val; *p && bare; p++)
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\v' ||
            *p == '\f' || *p == '\'' || *p == '\\')
            bare = 0;
    if (w->o > 0)
        out_str(w, " ");
    out_str(w, key);
    out_str(w, "=");
    if (bare) {
        out_str(w, val);
        return;
    }
    out_str(w, "'");
    for (const char *p = val; *p; p++) {
        if (*p == '\'' || *p == '\\')
            out_str(w, "\\");
        out_mem(w, p, 1);
    }
    out_str(w, "'");
}

/* libpq parses the conninfo, in whichever form (key=value with quotes and
 * escapes and any whitespace, URI with user:password@, percent-encoding
 * and query parameters); the text is rebuilt from what it parsed, so no
 * form of writing a password can slip through a second parser. Where to
 * connect comes first, then the rest in libpq's order. */
void evl_config_redact_conninfo(const char *conninfo, char *buf, size_t n)
{
    static const char *const first[] = {"host",   "hostaddr", "port",
                                        "dbname", "user",     NULL};
    char msg[EVL_ERRLEN];
    out w = {buf, n, 0};
    if (n == 0)
        return;
    buf[0] = '\0';
    PQconninfoOption *opts = parse_conninfo(conninfo, msg, sizeof msg);
    if (!opts) {
        out_str(&w, "(unparseable conninfo: ");
        out_str(&w, msg);
        out_str(&w, ")");
        return;
    }
    for (int i = 0; first[i]; i++)
        for (PQconninfoOption *o = opts; o->keyword; o++)
            if (o->val && strcmp(o->keyword, first[i]) == 0)
                out_setting(&w, o->keyword, o->val);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        int is_first = 0;
        for (int i = 0; first[i]; i++)
            if (strcmp(o->keyword, first[i]) == 0)
                is_first = 1;
        if (o->val && !is_first)
            out_setting(&w, o->keyword, secret_option(o) ? "***" : o->val);
    }
    PQconninfoFree(opts);
}
