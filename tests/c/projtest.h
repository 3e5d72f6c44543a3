/*
 * projtest.h - what the projection-side tests share: a private world on
 * the shared services (a PostgreSQL schema, topics and consumer groups
 * named after the test and its pid), a transactional producer writing
 * events in the DESIGN wire format, config files, and ways to run a
 * projector (in this process until caught up, or as `evlua run`).
 *
 * Every helper fails the test (exit 1) when a service misbehaves: a test
 * never skips. Processes, files, logs and topics are the shared harness's
 * (harness.h); this file adds the projection side's world on top.
 */
#ifndef EVL_PROJTEST_H
#define EVL_PROJTEST_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "check.h"
#include "config.h"
#include "harness.h"
#include "luahost.h"
#include "projector.h"
#include "svc.h"

typedef struct pt {
    char name[64]; /* test name + pid: schema, topic, group prefix */
    char bootstrap[256];
    char conninfo[1024]; /* the service's */
    char dbinfo[1200];   /* conninfo with search_path = name */
    char dir[512];       /* scratch dir: config, scripts, logs */
    char src[1024];      /* source tree */
    PGconn *db;
    rd_kafka_t *producer;
    int in_txn;
} pt;

/* ---- PostgreSQL -------------------------------------------------------------
 */

static inline PGresult *pt_sql(pt *t, const char *sql)
{
    PGresult *res = PQexec(t->db, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        th_die("SQL \"%s\": %s", sql, PQresultErrorMessage(res));
    return res;
}

/* pt_sql on the SQL printf-formatted from fmt and ap. */
static inline PGresult *pt_vsql(pt *t, const char *fmt, va_list ap)
{
    char sql[8192];
    vsnprintf(sql, sizeof sql, fmt, ap);
    return pt_sql(t, sql);
}

static inline void pt_exec(pt *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PQclear(pt_vsql(t, fmt, ap));
    va_end(ap);
}

/* First column of the first row as a number (-1: no row or NULL). */
static inline long long pt_long(pt *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *res = pt_vsql(t, fmt, ap);
    va_end(ap);
    long long v = -1;
    if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

/* First column of the first row as text into buf ("(none)" / "(null)"). */
static inline const char *pt_text(pt *t, char *buf, size_t n, const char *fmt,
                                  ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *res = pt_vsql(t, fmt, ap);
    va_end(ap);
    if (PQntuples(res) == 0)
        snprintf(buf, n, "(none)");
    else if (PQgetisnull(res, 0, 0))
        snprintf(buf, n, "(null)");
    else
        snprintf(buf, n, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return buf;
}

static inline void pt_connect(pt *t)
{
    if (t->db)
        PQfinish(t->db);
    t->db = PQconnectdb(t->dbinfo);
    if (PQstatus(t->db) != CONNECTION_OK)
        th_die("PQconnectdb: %s", PQerrorMessage(t->db));
    PQclear(PQexec(t->db, "SET client_min_messages = warning"));
}

/* ---- Kafka
 * -------------------------------------------------------------------- */

static inline rd_kafka_conf_t *pt_kconf(pt *t)
{
    return th_kconf(t->bootstrap);
}

/* Create topic with partitions (it must not exist yet). */
static inline void pt_topic(pt *t, const char *topic, int partitions)
{
    rd_kafka_resp_err_t e =
        th_create_topic(t->bootstrap, topic, partitions, NULL);
    if (e)
        th_die("CreateTopics(%s): %s", topic, rd_kafka_err2str(e));
}

/* Partition count of topic in the cluster's metadata (0: no such topic). */
static inline int pt_partitions(pt *t, const char *topic)
{
    return th_partitions(t->bootstrap, topic);
}

/* A transactional producer with the partitioner evlua documents. */
static inline void pt_producer(pt *t)
{
    char txid[160];
    rd_kafka_conf_t *conf = pt_kconf(t);
    snprintf(txid, sizeof txid, "%s-producer", t->name);
    th_kset(conf, "transactional.id", txid);
    th_kset(conf, "partitioner", "murmur2_random");
    th_kset(conf, "linger.ms", "5");
    t->producer = th_kafka_new(RD_KAFKA_PRODUCER, conf, "producer");
    th_kcheck(rd_kafka_init_transactions(t->producer, 30000),
              "init_transactions");
}

static inline void pt_begin(pt *t)
{
    th_kcheck(rd_kafka_begin_transaction(t->producer), "begin_transaction");
    t->in_txn = 1;
}

static inline void pt_commit(pt *t)
{
    th_kcheck(rd_kafka_commit_transaction(t->producer, -1),
              "commit_transaction");
    t->in_txn = 0;
}

/* Produce raw: key, value and the three evlua headers (type may be NULL:
 * no evlua-type header). */
static inline void pt_raw(pt *t, const char *topic, const char *key,
                          const char *type, const char *atype,
                          const char *value, size_t len)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(3);
    if (type)
        rd_kafka_header_add(h, "evlua-type", -1, type, -1);
    rd_kafka_header_add(h, "evlua-aggregate-type", -1, atype, -1);
    rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            t->producer, RD_KAFKA_V_TOPIC(topic),
            RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_HEADERS(h),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (!e)
            return;
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(t->producer, 50);
            continue;
        }
        th_die("rd_kafka_producev: %s", rd_kafka_err2str(e));
    }
}

/* One event in the wire format; data is JSON text. */
static inline void pt_event(pt *t, const char *topic, const char *atype,
                            const char *aid_json, const char *key,
                            long long seq, const char *type, const char *data)
{
    static unsigned long long n;
    size_t cap = strlen(data) + strlen(aid_json) + 512;
    char *v = malloc(cap);
    int len = snprintf(
        v, cap,
        "{\"id\":\"%s-%llu\",\"type\":\"%s\",\"version\":1,"
        "\"aggregate_type\":\"%s\",\"aggregate_id\":%s,\"sequence\":%lld,"
        "\"occurred_at\":\"2026-01-01T00:00:%02lldZ\","
        "\"causation_id\":\"c\",\"correlation_id\":\"c\",\"user_id\":\"u\","
        "\"data\":%s}",
        t->name, ++n, type, atype, aid_json, seq, seq % 60, data);
    pt_raw(t, topic, key, type, atype, v, (size_t)len);
    free(v);
}

/* pt_event for a plain ASCII aggregate id. */
static inline void pt_ev(pt *t, const char *topic, const char *aid,
                         long long seq, const char *type, const char *data)
{
    char aj[300];
    snprintf(aj, sizeof aj, "\"%s\"", aid);
    pt_event(t, topic, "customer", aj, aid, seq, type, data);
}

/* Write aggregates/TYPE.lua: an aggregate whose command Open makes the
 * event Opened (the lag and new-topic tests). */
static inline void pt_opened_aggregate(pt *t, const char *type)
{
    char path[800], text[1024];
    snprintf(path, sizeof path, "%s/aggregates/%s.lua", t->dir, type);
    snprintf(text, sizeof text,
             "return {\n"
             "  type = '%s',\n"
             "  initial = function() return {} end,\n"
             "  apply = { Opened = function(s, e) s.open = true end },\n"
             "  handle = { Open = function(s, c) return { { type = "
             "'Opened', data = {} } } end },\n"
             "}\n",
             type);
    th_write_file(path, text);
}

/* One transaction of n events Opened of type, to aggregates e1..en. */
static inline void pt_opened_events(pt *t, const char *topic, const char *type,
                                    int n)
{
    pt_begin(t);
    for (int i = 1; i <= n; i++) {
        char id[32], aj[40];
        snprintf(id, sizeof id, "e%d", i);
        snprintf(aj, sizeof aj, "\"%s\"", id);
        pt_event(t, topic, type, aj, id, 1, "Opened", "{}");
    }
    pt_commit(t);
}

/* ---- setup
 * ----------------------------------------------------------------------- */

/* pt_init on the PostgreSQL at conninfo (NULL: the shared service). */
static inline void pt_init_pg(pt *t, const char *name, const char *conninfo)
{
    memset(t, 0, sizeof *t);
    svc_kafka_bootstrap(t->bootstrap, sizeof t->bootstrap);
    if (conninfo)
        snprintf(t->conninfo, sizeof t->conninfo, "%s", conninfo);
    else
        svc_pg_conninfo(t->conninfo, sizeof t->conninfo);
    snprintf(t->name, sizeof t->name, "%s_%ld", name, (long)getpid());
    const char *src = getenv("EVLUA_SOURCE_DIR");
    snprintf(t->src, sizeof t->src, "%s", src && *src ? src : ".");
    const char *run = getenv("EVLUA_RUN_DIR");
    snprintf(t->dir, sizeof t->dir, "%s/%s", run && *run ? run : "/tmp",
             t->name);
    mkdir(t->dir, 0700);
    char sub[600];
    snprintf(sub, sizeof sub, "%s/projections", t->dir);
    mkdir(sub, 0700);
    snprintf(sub, sizeof sub, "%s/aggregates", t->dir);
    mkdir(sub, 0700);
    snprintf(t->dbinfo, sizeof t->dbinfo, "%s options='-csearch_path=%s'",
             t->conninfo, t->name);
    /* the schema first, on a plain connection */
    PGconn *c = PQconnectdb(t->conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        th_die("PQconnectdb: %s", PQerrorMessage(c));
    char sql[300];
    snprintf(sql, sizeof sql,
             "SET client_min_messages = warning; DROP SCHEMA IF EXISTS %s "
             "CASCADE; CREATE SCHEMA %s",
             t->name, t->name);
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        th_die("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
    pt_connect(t);
}

static inline void pt_init(pt *t, const char *name)
{
    pt_init_pg(t, name, NULL);
}

/* Write DIR/evlua.lua: the test's kafka, postgres (its schema) and
 * script dirs (projections: dir; aggregates: the test's own, empty unless
 * written), then `extra` (Lua table fields, e.g. "projection = {...},"). */
static inline void pt_config(pt *t, const char *projections_dir,
                             const char *extra)
{
    char path[700], text[8192];
    snprintf(path, sizeof path, "%s/evlua.lua", t->dir);
    snprintf(text, sizeof text,
             "return {\n"
             "  aggregates = \"%s/aggregates\",\n"
             "  projections = \"%s\",\n"
             "  kafka = { [\"bootstrap.servers\"] = \"%s\" },\n"
             "  postgres = [==[%s]==],\n"
             "  commands = { enabled = false },\n"
             "  %s\n"
             "}\n",
             t->dir, projections_dir, t->bootstrap, t->dbinfo,
             extra ? extra : "");
    th_write_file(path, text);
}

/* pt_config for the source tree's example projections reading topic:
 * projection = { topics = { topic }, group_prefix = "NAME.", fields }. */
static inline void pt_config_examples(pt *t, const char *topic,
                                      const char *fields)
{
    char extra[1024], pdir[1100];
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\"%s%s "
             "},",
             topic, t->name, fields ? ", " : "", fields ? fields : "");
    snprintf(pdir, sizeof pdir, "%s/projections", t->src);
    pt_config(t, pdir, extra);
}

static inline void pt_load(pt *t, evl_config *cfg, evl_luahost **host)
{
    char path[700], err[EVL_ERRLEN];
    snprintf(path, sizeof path, "%s/evlua.lua", t->dir);
    if (evl_config_load(path, cfg, err, sizeof err) != EVL_OK)
        th_die("config: %s", err);
    evl_luahost_config hc;
    memset(&hc, 0, sizeof hc);
    hc.aggregate_dirs = (const char *const *)cfg->aggregate_dirs.v;
    hc.naggregate_dirs = (size_t)cfg->aggregate_dirs.n;
    hc.projection_dirs = (const char *const *)cfg->projection_dirs.v;
    hc.nprojection_dirs = (size_t)cfg->projection_dirs.n;
    evl_luahost_problems probs = {0};
    if (evl_luahost_new(&hc, host, &probs, err, sizeof err) != EVL_OK)
        th_die("scripts: %s", err);
    evl_luahost_problems_free(&probs);
}

/* Run projection in this process until it has read everything there is.
 * Returns its exit code. */
static inline int pt_catch_up(pt *t, const char *projection,
                              const char *isolation, evl_projector_stats *stats)
{
    evl_config cfg;
    evl_luahost *host = NULL;
    pt_load(t, &cfg, &host);
    evl_projector_opts o;
    memset(&o, 0, sizeof o);
    o.until_caught_up = 1;
    o.isolation = isolation;
    o.stats = stats;
    int rc = evl_projector_run_opts(&cfg, host, projection, &o);
    evl_luahost_free(host);
    evl_config_free(&cfg);
    return rc;
}

/* ---- the evlua binary
 * -------------------------------------------------------------- */

/* Start `evlua ARGS...` (NULL-terminated) with stdout and stderr appended
 * to DIR/<log>. Returns the pid. */
static inline pid_t pt_spawn(pt *t, const char *log, ...)
{
    const char *bin = getenv("EVLUA_BIN");
    if (!bin || !*bin)
        th_die("EVLUA_BIN is not set (run through ctest)");
    const char *argv[32];
    int argc = 0;
    argv[argc++] = bin;
    va_list ap;
    va_start(ap, log);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    char path[700];
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    return th_spawn(path, NULL, argv);
}

/* Wait for pid (started by pt_spawn with log); its output into out.
 * Returns its exit code. */
static inline int pt_output(pt *t, pid_t pid, const char *log, char *out,
                            size_t n)
{
    char path[800];
    int rc = th_wait(pid, -1);
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    th_read_file(path, out, n);
    return rc;
}

/* Poll `SELECT ...` until it returns want (or timeout_s passes); returns
 * the last value. */
static inline long long pt_wait_for(pt *t, long long want, int timeout_s,
                                    const char *sql)
{
    long long v = -1;
    time_t end = time(NULL) + timeout_s;
    do {
        PGresult *res = PQexec(t->db, sql);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 &&
            !PQgetisnull(res, 0, 0))
            v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        if (PQstatus(t->db) != CONNECTION_OK)
            pt_connect(t);
        if (v == want)
            return v;
        th_sleep_ms(200);
    } while (time(NULL) < end);
    return v;
}

/* How often needle occurs in DIR/log. */
static inline int pt_log_count(pt *t, const char *log, const char *needle)
{
    char path[800];
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    return th_log_count(path, needle);
}

/* Wait until needle occurs at least count times in DIR/log; returns the
 * count seen. */
static inline int pt_wait_log(pt *t, const char *log, const char *needle,
                              int count, int timeout_s)
{
    char path[800];
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    return th_wait_log(path, needle, count, timeout_s * 1000LL);
}

/* ---- the long runs: a grid of events and the state it makes ----------------
 *
 * The tests that kill and freeze projectors while events keep coming
 * (test_projector_kill, test_projector_scale) write aggs x seqs "Added"
 * events from a thread: sequences in order per aggregate, aggregates
 * interleaved, per_tx events a transaction and 150 ms after each.
 * Aggregate a is "<prefix><a as %03d>"; its event s carries
 * {"v": value(a, s)}. */
typedef struct pt_grid {
    pt *t;
    const char *topic;
    const char *prefix;
    int aggs, seqs, per_tx;
    int (*value)(int a, int s);
    volatile int done; /* every event committed */
    pthread_t thread;
} pt_grid;

static inline void *pt_grid_produce_(void *arg)
{
    pt_grid *g = arg;
    int k = 0;
    for (int s = 1; s <= g->seqs; s++)
        for (int a = 0; a < g->aggs; a++) {
            if (k % g->per_tx == 0)
                pt_begin(g->t);
            char id[16], data[32];
            snprintf(id, sizeof id, "%s%03d", g->prefix, a);
            snprintf(data, sizeof data, "{\"v\":%d}", g->value(a, s));
            pt_ev(g->t, g->topic, id, s, "Added", data);
            if (++k % g->per_tx == 0) {
                pt_commit(g->t);
                th_sleep_ms(150);
            }
        }
    g->done = 1;
    return NULL;
}

/* Write projections/NAME.lua: the grid's events into totals (id, n, sum,
 * last) and applied (id, seq), plus applied.pid (the backend's pid, to
 * see which instance applied it) when with_pid. */
static inline void pt_grid_projection(pt *t, const char *name, int with_pid)
{
    char path[800], text[2048];
    snprintf(path, sizeof path, "%s/projections/%s.lua", t->dir, name);
    snprintf(
        text, sizeof text,
        "return {\n"
        "  name = '%s',\n"
        "  schema = [[\n"
        "    CREATE TABLE IF NOT EXISTS totals (id text PRIMARY KEY,\n"
        "      n integer NOT NULL, sum bigint NOT NULL, last integer NOT "
        "NULL);\n"
        "    CREATE TABLE IF NOT EXISTS applied (id text NOT NULL,\n"
        "      seq bigint NOT NULL%s)]],\n"
        "  on = {\n"
        "    Added = function(e)\n"
        "      return {\n"
        "        { [[INSERT INTO totals VALUES ($1, 1, $2, $3) ON CONFLICT "
        "(id)\n"
        "            DO UPDATE SET n = totals.n + 1,\n"
        "            sum = totals.sum + EXCLUDED.sum, last = "
        "EXCLUDED.last]],\n"
        "          e.aggregate_id, e.data.v, e.data.v },\n"
        "        { 'INSERT INTO applied VALUES ($1, $2%s)',\n"
        "          e.aggregate_id, e.sequence },\n"
        "      }\n"
        "    end,\n"
        "  },\n"
        "}\n",
        name, with_pid ? ", pid integer NOT NULL" : "",
        with_pid ? ", pg_backend_pid()" : "");
    th_write_file(path, text);
}

/* Start producing the grid in a thread (pt_producer first). */
static inline void pt_grid_start(pt_grid *g)
{
    if (pthread_create(&g->thread, NULL, pt_grid_produce_, g) != 0)
        th_die("pthread_create: %s", strerror(errno));
}

/* Wait for the producing thread; 1 when it wrote every event. */
static inline int pt_grid_join(pt_grid *g)
{
    pthread_join(g->thread, NULL);
    return g->done;
}

/* How many rows of the table totals (id, n, sum, last) equal the state
 * the grid's events make: n = seqs, sum and last of the values. A wrong
 * row is printed while fewer than show rows were right. */
static inline long long pt_grid_good(pt_grid *g, int show)
{
    long long good = 0;
    PGresult *res = pt_sql(g->t, "SELECT id, n, sum, last FROM totals");
    for (int r = 0; r < PQntuples(res); r++) {
        int a = atoi(PQgetvalue(res, r, 0) + strlen(g->prefix));
        long long sum = 0;
        for (int s = 1; s <= g->seqs; s++)
            sum += g->value(a, s);
        if (atoi(PQgetvalue(res, r, 1)) == g->seqs &&
            strtoll(PQgetvalue(res, r, 2), NULL, 10) == sum &&
            atoi(PQgetvalue(res, r, 3)) == g->value(a, g->seqs))
            good++;
        else if (good < show)
            fprintf(stderr, "  %s: n=%s sum=%s (want %lld) last=%s\n",
                    PQgetvalue(res, r, 0), PQgetvalue(res, r, 1),
                    PQgetvalue(res, r, 2), sum, PQgetvalue(res, r, 3));
    }
    PQclear(res);
    return good;
}

/* Release the clients; a passing test also removes its scratch dir (a
 * failing one keeps it: the logs are there). */
static inline void pt_done(pt *t)
{
    if (t->producer)
        rd_kafka_destroy(t->producer);
    if (t->db)
        PQfinish(t->db);
    if (check_failures_ == 0 && strstr(t->dir, t->name))
        th_remove_dir(t->dir);
}

#endif
