/*
 * config.h - evlua's configuration: a Lua file returning a table.
 *
 *   return {
 *     aggregates  = "aggregates",   -- script dir, or a list of dirs
 *     projections = "projections",
 *     lib         = "lib",          -- require() looks here (optional)
 *     kafka    = { ["bootstrap.servers"] = "127.0.0.1:9092" },
 *     postgres = "host=127.0.0.1 dbname=evlua",
 *     ...
 *   }
 *
 * Every key is documented in docs/config.md (a unit test holds the two to
 * evl_config_each_key()); an unknown key or a value of
 * the wrong type is an error naming the key ("evlua.lua: unknown key
 * 'commands.batchsize'"). The file runs in a plain Lua state with the
 * base, string, table and math libraries and os.getenv, so it can compute
 * values; it cannot reach the host. It runs under fixed limits (100M
 * instructions, 10 s, 64 MiB; string patterns charge each matching step
 * to the instructions): past one, loading fails naming the file (and
 * line) and the limit. After loading, the environment
 * overrides the connection settings: EVLUA_KAFKA_BOOTSTRAP sets
 * kafka["bootstrap.servers"], EVLUA_PG_CONNINFO sets postgres and
 * EVLUA_INSTANCE sets instance. A postgres conninfo that libpq cannot
 * parse is an error (that does not quote it).
 *
 * Does not validate the scripts (luahost does) nor the Kafka properties
 * (librdkafka does, when a client is created).
 *
 * @locality any thread; the returned struct is read-only after load.
 */
#ifndef EVL_CONFIG_H
#define EVL_CONFIG_H

#include <stddef.h>

#include "evl.h"

struct lua_State;

/* Longest accepted `instance` name: derived group.instance.ids add a
 * suffix and Kafka caps them at 249 bytes. */
#define EVL_CONFIG_INSTANCE_MAX 128

typedef struct evl_strlist {
    char **v;
    int n;
} evl_strlist;

/* One librdkafka property, passed through verbatim. */
typedef struct evl_kv {
    char *key;
    char *value;
} evl_kv;

/* A bearer token of the gateway: only its SHA-256 is configured. */
typedef struct evl_gateway_token {
    char *principal; /* becomes metadata.user_id */
    unsigned char sha256[32];
    evl_strlist aggregates; /* types it may send to; "*": any */
    evl_strlist commands;   /* command types; empty: any */
} evl_gateway_token;

/* Per-projection settings; NULL / 0 fields inherit from evl_config.proj. */
typedef struct evl_projection_cfg {
    char *name;
    char *isolation; /* "aggregate", "batch" or "aggregate-tx" */
    char *on_error;  /* "park" or "halt" */
    char *group_id;
    evl_strlist topics;
    int batch_size;
    int threads; /* projector instances (consumer + DB connection) */
} evl_projection_cfg;

typedef struct evl_config {
    char *path; /* the file it came from, or "(defaults)" */

    evl_strlist aggregate_dirs;
    evl_strlist projection_dirs;
    char *lib_dir; /* NULL: require() finds nothing */

    evl_kv *kafka; /* librdkafka properties, both sides */
    int nkafka;
    char *pg_conninfo; /* NULL: no database configured */

    struct {
        size_t memory;          /* bytes per lua_State */
        long instructions;      /* per handler call */
        long time_ms;           /* wall clock per handler call; -1: none */
        size_t pattern_subject; /* bytes of a string-pattern subject */
    } limits;

    struct {
        int enabled;
        char *group_id;
        char *transactional_id;
        int batch_size;
        int linger_ms;
        int dedup_ids; /* command ids remembered per aggregate */
        int create_topics;
        int partitions; /* when creating the commands topic */
        /* topic name patterns; "{type}" is replaced by the aggregate type */
        char *commands_topic, *events_topic, *state_topic, *results_topic;
    } cmd;

    struct {
        int enabled;
        int batch_size;
        int batch_bytes; /* a batch closes past this many message bytes */
        int linger_ms;
        int threads; /* projector instances per projection */
        char *isolation;
        char *on_error;
        char *group_prefix; /* group id = prefix .. projection name */
        evl_strlist topics; /* empty: the events topic of every aggregate */
        evl_projection_cfg *each; /* overrides by projection name */
        int neach;
    } proj;

    /* reactions (reactor.h): one reactor per aggregate type with a react
     * table */
    struct {
        int enabled;
        char *on_error;     /* "park" or "halt" */
        int max_commands;   /* commands one event's reaction may return */
        int batch_size;     /* events per Kafka transaction, at most */
        int batch_bytes;    /* a batch closes past this many event bytes */
        int linger_ms;      /* as commands.linger_ms */
        char *group_prefix; /* consumer group = prefix .. type */
        char *parked_topic; /* pattern; "{type}": the reacting type */
    } react;

    /* the command gateway (gateway.h): its tokens and limits */
    struct {
        char *listen; /* "127.0.0.1:8080"; NULL: no gateway in evlua run */
        char *tls_cert, *tls_key; /* PEM files; both or neither */
        int timeout_ms;           /* longest wait for a result */
        int max_body;             /* bytes of a request body */
        int max_waiters;          /* requests waiting for a result */
        int max_connections;
        int connection_timeout_s; /* idle or slow connections close */
        int cache_size;           /* outcomes remembered for GET/retries */
        int threads;              /* HTTP threads */
        evl_gateway_token *tokens;
        int ntokens;
    } gateway;

    struct {
        char *listen;        /* "127.0.0.1:9464"; NULL: no HTTP endpoint */
        int lag_interval_ms; /* how often lag.h measures every group */
    } metrics;

    /* A stable name of this evlua instance (letters, digits, '.', '_',
     * '-'; at most EVL_CONFIG_INSTANCE_MAX bytes), NULL when unset. With
     * it, every consumer evlua creates joins its group with a static
     * group.instance.id derived from it (Kafka static membership). */
    char *instance;

    char *log_level;
    char *log_format; /* "logfmt" or "json" */
    char *log_file;   /* NULL: stderr */
    int shutdown_timeout_ms;
} evl_config;

/* Load path (NULL: defaults only, i.e. as if the file returned {}), apply
 * the environment overrides, validate. On success fills *cfg (owned; free
 * with evl_config_free) and returns EVL_OK. On error returns
 * EVL_EPERMANENT with "FILE: message" in err and leaves *cfg zeroed. */
evl_err evl_config_load(const char *path, evl_config *cfg, char *err,
                        size_t errlen);

/* One key evlua reads from the config file, as evl_config_each_key()
 * lists it. name is dotted ("commands.batch_size"); the keys of
 * projection.each.NAME are named with NAME as written
 * ("projection.each.NAME.threads"). type: "string", "string or list",
 * "enum" (choices: the NULL-ended accepted strings), "boolean", "integer"
 * (min..max: the accepted range) or "table" (kafka, passed through). */
typedef struct evl_config_key {
    const char *name;
    const char *type;
    long min, max;
    const char *const *choices;
} evl_config_key;
typedef int (*evl_config_key_fn)(const evl_config_key *key, void *ud);

/* Call fn for every key the loader accepts (tables themselves, such as
 * limits, are not listed; their keys are), in the loader's table order.
 * key and its strings are valid while fn runs. A non-zero return from fn
 * stops the walk and is returned; else 0. */
int evl_config_each_key(evl_config_key_fn fn, void *ud);

/* config_gateway.c, for the loader: read the list of token tables on top
 * of L's stack into cfg->gateway.tokens (EVL_OK, or EVL_EPERMANENT with
 * the reason in err, naming the token by position, never its hash);
 * defaults and freeing of the gateway's settings. */
evl_err evl_config_gateway_tokens(struct lua_State *L, evl_config *cfg,
                                  char *err, size_t errlen);
void evl_config_gateway_defaults(evl_config *cfg);
void evl_config_gateway_free(evl_config *cfg);

/* Frees what cfg owns and zeroes it. Accepts NULL. */
void evl_config_free(evl_config *cfg);

/* The value of librdkafka property key in cfg->kafka, or NULL. */
const char *evl_config_kafka(const evl_config *cfg, const char *key);

/* Expand a topic pattern ("{type}.events") for aggregate type into buf. */
void evl_config_topic(const char *pattern, const char *type, char *buf,
                      size_t n);

/* The settings of projection name: its override merged over cfg->proj.
 * Pointers into cfg; valid while cfg lives. */
evl_projection_cfg evl_config_projection(const evl_config *cfg,
                                         const char *name);

/* The conninfo for logs, without its secrets: libpq parses it (key=value
 * or URI, any quoting or percent-encoding) and buf gets the settings it
 * found as key=value pairs, where to connect first, with password and
 * sslpassword shown as "***" ("host=h port=5432 dbname=app user=evlua
 * password=***"). A conninfo libpq refuses gives "(unparseable conninfo:
 * MESSAGE)", libpq's message with every quoted span replaced by "...",
 * so no part of the input shows. NULL reads as "". Truncates to n. */
void evl_config_redact_conninfo(const char *conninfo, char *buf, size_t n);

/* EVL_OK when libpq parses conninfo; else EVL_EPERMANENT and
 * "unparseable conninfo: MESSAGE" in err, quoting nothing of the input
 * (as above). Use it for any error about a conninfo instead of libpq's
 * own message. */
evl_err evl_config_check_conninfo(const char *conninfo, char *err,
                                  size_t errlen);

#endif
