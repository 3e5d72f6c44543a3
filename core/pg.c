/*
 * pg.c - PostgreSQL connections, error classes, prepared statements and
 * pipelines (see pg.h).
 *
 * The pipeline keeps a queue of what it sent (a Prepare, a query, a Sync)
 * so that collecting can pair each result with its sender: libpq returns
 * results strictly in order, one result and a NULL per query, one
 * PGRES_PIPELINE_SYNC per Sync. The connection stays in blocking mode:
 * libpq then reads (and buffers) results while it waits to write, so a
 * long pipeline cannot deadlock with a server blocked on its own output.
 *
 * libpq refuses some statements itself, before sending a byte (more than
 * 65,535 parameters, out of memory): the send call returns 0 and the
 * message has no SQLSTATE. On a connection that is still up that is the
 * statement's own, permanent error; only a connection that is gone is
 * transient (local_class decides, for every such path). In a pipeline a
 * refused statement is replaced by a stand-in that fails on the server
 * (REFUSED_SQL), so its segment aborts exactly as for a statement the
 * server rejected: nothing before it commits, nothing after it runs, and
 * its failure is reported with libpq's message under the statement's
 * tag.
 */
#include "pg.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

/* ---- prepared-statement cache -------------------------------------------- */

enum { ENTRY_PENDING = 0, ENTRY_READY = 1, ENTRY_BAD = 2 };

typedef struct entry {
    char *sql;
    uint64_t hash;
    unsigned id; /* statement name: "evl_<id>" */
    int state;
    evl_err bad_cls; /* ENTRY_BAD: why preparing it failed */
    char bad_state[6];
    char *bad_msg;
} entry;

#define INDEX_SIZE (EVL_PG_MAX_PREPARED * 2) /* power of two */

/* ---- pipeline queue ------------------------------------------------------ */

enum { ITEM_PREPARE, ITEM_QUERY, ITEM_SYNC, ITEM_PREPARE_SYNC, ITEM_REFUSED };

typedef struct item {
    int kind;
    int entry; /* ITEM_PREPARE, ITEM_QUERY with a named statement, else -1;
                  ITEM_REFUSED: its message in refused[] */
    long tag;  /* ITEM_QUERY, ITEM_REFUSED: the caller's tag; ITEM_SYNC: the
                  segment */
} item;

/* What a statement libpq refused is replaced with in a pipeline: it fails
 * on the server (aborting the segment) and says why in the server's log. */
#define REFUSED_SQL                                                            \
    "DO $evlua$BEGIN RAISE EXCEPTION 'evlua: a statement was refused by "      \
    "libpq before it was sent; this stand-in fails its transaction'; "         \
    "END$evlua$"

struct evl_pg {
    PGconn *conn;
    char *conninfo;
    char *appname;
    char *schema; /* NULL, or the only schema on the search_path */

    entry *entries;
    int nentries;
    int index[INDEX_SIZE]; /* -1 empty, else position in entries */
    unsigned next_id;

    item *items;
    size_t nitems, capitems;
    int in_pipe;
    int broken; /* a send failed: the connection is gone */
    char broken_msg[256];
    char **refused; /* messages of this pipeline's refused statements */
    size_t nrefused, caprefused;
};

static void index_rebuild(evl_pg *pg)
{
    for (int i = 0; i < INDEX_SIZE; i++)
        pg->index[i] = -1;
    for (int e = 0; e < pg->nentries; e++) {
        size_t i = (size_t)pg->entries[e].hash & (INDEX_SIZE - 1);
        while (pg->index[i] >= 0)
            i = (i + 1) & (INDEX_SIZE - 1);
        pg->index[i] = e;
    }
}

static int cache_find(const evl_pg *pg, const char *sql, uint64_t h)
{
    size_t i = (size_t)h & (INDEX_SIZE - 1);
    while (pg->index[i] >= 0) {
        const entry *e = &pg->entries[pg->index[i]];
        if (e->hash == h && strcmp(e->sql, sql) == 0)
            return pg->index[i];
        i = (i + 1) & (INDEX_SIZE - 1);
    }
    return -1;
}

static int cache_add(evl_pg *pg, const char *sql, uint64_t h)
{
    if (pg->nentries >= EVL_PG_MAX_PREPARED)
        return -1;
    int e = pg->nentries++;
    entry *en = &pg->entries[e];
    memset(en, 0, sizeof *en);
    en->sql = evl_xstrdup(sql);
    en->hash = h;
    en->id = pg->next_id++;
    en->state = ENTRY_PENDING;
    size_t i = (size_t)h & (INDEX_SIZE - 1);
    while (pg->index[i] >= 0)
        i = (i + 1) & (INDEX_SIZE - 1);
    pg->index[i] = e;
    return e;
}

static void entry_name(const entry *en, char *buf, size_t n)
{
    snprintf(buf, n, "evl_%u", en->id);
}

/* Drop every entry that is not READY (after a pipeline: statements whose
 * preparation failed or was never confirmed are prepared afresh next
 * time). */
static void cache_compact(evl_pg *pg)
{
    int o = 0;
    for (int e = 0; e < pg->nentries; e++) {
        entry *en = &pg->entries[e];
        if (en->state == ENTRY_READY) {
            pg->entries[o++] = *en;
        } else {
            free(en->sql);
            free(en->bad_msg);
        }
    }
    if (o != pg->nentries) {
        pg->nentries = o;
        index_rebuild(pg);
    }
}

static void refused_clear(evl_pg *pg)
{
    for (size_t i = 0; i < pg->nrefused; i++)
        free(pg->refused[i]);
    pg->nrefused = 0;
}

static void cache_clear(evl_pg *pg)
{
    for (int e = 0; e < pg->nentries; e++) {
        free(pg->entries[e].sql);
        free(pg->entries[e].bad_msg);
    }
    pg->nentries = 0;
    index_rebuild(pg);
}

/* ---- errors -------------------------------------------------------------- */

evl_err evl_pg_classify(const char *st, int conn_ok)
{
    if (!conn_ok)
        return EVL_ETRANSIENT; /* whatever it said, the connection is gone */
    if (!st || strlen(st) != 5)
        return EVL_EPERMANENT; /* a client-side error on a live connection */
    if (strcmp(st, "08P01") == 0)
        return EVL_EPERMANENT; /* protocol violation: e.g. parameter count */
    if (strncmp(st, "08", 2) == 0 || strncmp(st, "53", 2) == 0 ||
        strncmp(st, "58", 2) == 0)
        return EVL_ETRANSIENT;
    if (strncmp(st, "57P0", 4) == 0)
        return EVL_ETRANSIENT;
    if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 ||
        strcmp(st, "55P03") == 0)
        return EVL_ETRANSIENT;
    return EVL_EPERMANENT;
}

/* "message (detail)" of res, or libpq's connection message, on one
 * line. */
static void error_text(const PGconn *conn, const PGresult *res, char *buf,
                       size_t n)
{
    const char *prim =
        res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *detail =
        res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
    if (prim)
        snprintf(buf, n, "%s%s%s%s", prim, detail ? " (" : "",
                 detail ? detail : "", detail ? ")" : "");
    else if (res && *PQresultErrorMessage(res))
        snprintf(buf, n, "%s", PQresultErrorMessage(res));
    else
        snprintf(buf, n, "%s",
                 conn ? PQerrorMessage(conn) : "no connection to PostgreSQL");
    /* one line: newlines and tabs become spaces, trailing ones go */
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    size_t len = strlen(buf);
    while (len > 0 && buf[len - 1] == ' ')
        buf[--len] = '\0';
    if (len == 0)
        snprintf(buf, n, "connection to PostgreSQL lost");
}

static const char *sqlstate_of(const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return st ? st : "";
}

/* The class of a call that libpq failed locally (a send function
 * returning 0, PQexec* returning NULL): transient only when the
 * connection is really gone; else libpq refused this one statement (too
 * many parameters, out of memory, ...) and would refuse it again on any
 * connection, so it is the statement's permanent error. */
static evl_err local_class(const evl_pg *pg)
{
    return pg->conn && PQstatus(pg->conn) == CONNECTION_OK ? EVL_EPERMANENT
                                                           : EVL_ETRANSIENT;
}

/* libpq's message for the call that just failed locally, on one line. In
 * pipeline mode libpq appends to the connection's message instead of
 * replacing it, so only its last line is this call's. */
static void local_text(const PGconn *conn, char *buf, size_t n)
{
    const char *m = conn ? PQerrorMessage(conn) : "";
    size_t len = strlen(m);
    while (len > 0 && (m[len - 1] == '\n' || m[len - 1] == ' '))
        len--;
    size_t start = len;
    while (start > 0 && m[start - 1] != '\n')
        start--;
    if (len > start)
        snprintf(buf, n, "%.*s", (int)(len - start), m + start);
    else
        snprintf(buf, n, "no connection to PostgreSQL");
}

int evl_pg_ok(const evl_pg *pg)
{
    return pg && pg->conn && !pg->broken && PQstatus(pg->conn) == CONNECTION_OK;
}

evl_err evl_pg_check(evl_pg *pg, const PGresult *res, const char *what,
                     char *err, size_t errlen)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK))
        return EVL_OK;
    char msg[EVL_ERRLEN];
    const char *state = sqlstate_of(res);
    error_text(pg->conn, res, msg, sizeof msg);
    /* no result: refused by libpq, or the connection is gone */
    evl_err cls =
        res ? evl_pg_classify(state, PQstatus(pg->conn) == CONNECTION_OK)
            : local_class(pg);
    if (*state)
        return evl_seterr(err, errlen, cls, "%s: %s [%s]", what, msg, state);
    return evl_seterr(err, errlen, cls, "%s: %s", what, msg);
}

/* ---- connections --------------------------------------------------------- */

/* NOTICEs ("relation already exists, skipping") are not for stderr. */
static void on_notice(void *arg, const char *message)
{
    (void)arg;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", message);
    msg[strcspn(msg, "\n")] = '\0';
    evl_log(EVL_LOG_DEBUG, "postgres notice", "notice", msg, NULL);
}

static evl_err connect_(evl_pg *pg, char *err, size_t errlen)
{
    /* evlua's defaults first, the user's conninfo (expanded from dbname)
     * over them, then what evlua needs regardless */
    const char *keys[] = {"application_name",
                          "connect_timeout",
                          "keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "dbname",
                          "client_encoding",
                          NULL,
                          NULL};
    const char *vals[] = {pg->appname ? pg->appname : "evlua",
                          "10",
                          "1",
                          "10",
                          "5",
                          "3",
                          pg->conninfo,
                          "UTF8",
                          NULL,
                          NULL};
    char options[1024];
    if (pg->schema) {
        /* after dbname, so it wins; the user's own options are kept */
        const char *user = "";
        PQconninfoOption *co = PQconninfoParse(pg->conninfo, NULL);
        for (PQconninfoOption *o = co; o && o->keyword; o++)
            if (strcmp(o->keyword, "options") == 0 && o->val)
                user = o->val;
        snprintf(options, sizeof options, "%s -c search_path=%s", user,
                 pg->schema);
        PQconninfoFree(co);
        keys[8] = "options";
        vals[8] = options;
    }
    pg->conn = PQconnectdbParams(keys, vals, 1);
    pg->broken = 0;
    if (PQstatus(pg->conn) != CONNECTION_OK) {
        char msg[EVL_ERRLEN];
        error_text(pg->conn, NULL, msg, sizeof msg);
        PQfinish(pg->conn);
        pg->conn = NULL;
        return evl_seterr(err, errlen, EVL_ETRANSIENT,
                          "cannot connect to PostgreSQL: %s", msg);
    }
    PQsetNoticeProcessor(pg->conn, on_notice, NULL);
    return EVL_OK;
}

evl_err evl_pg_open(const char *conninfo, const char *appname, evl_pg **out,
                    char *err, size_t errlen)
{
    return evl_pg_open_in(conninfo, appname, NULL, out, err, errlen);
}

evl_err evl_pg_open_in(const char *conninfo, const char *appname,
                       const char *schema, evl_pg **out, char *err,
                       size_t errlen)
{
    char msg[EVL_ERRLEN];
    /* libpq's own message would quote the string, password included */
    if (evl_config_check_conninfo(conninfo ? conninfo : "", msg, sizeof msg) !=
        EVL_OK)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "invalid PostgreSQL conninfo: %s", msg);

    evl_pg *pg = evl_xmalloc(sizeof *pg);
    memset(pg, 0, sizeof *pg);
    pg->conninfo = evl_xstrdup(conninfo);
    pg->appname = appname ? evl_xstrdup(appname) : NULL;
    pg->schema = schema ? evl_xstrdup(schema) : NULL;
    pg->entries = evl_xmalloc(sizeof(entry) * EVL_PG_MAX_PREPARED);
    index_rebuild(pg);
    evl_err e = connect_(pg, err, errlen);
    if (e != EVL_OK) {
        evl_pg_close(pg);
        return e;
    }
    *out = pg;
    return EVL_OK;
}

void evl_pg_close(evl_pg *pg)
{
    if (!pg)
        return;
    if (pg->conn)
        PQfinish(pg->conn);
    cache_clear(pg);
    refused_clear(pg);
    free(pg->refused);
    free(pg->entries);
    free(pg->items);
    free(pg->conninfo);
    free(pg->appname);
    free(pg->schema);
    free(pg);
}

evl_err evl_pg_reconnect(evl_pg *pg, char *err, size_t errlen)
{
    if (pg->conn)
        PQfinish(pg->conn);
    pg->conn = NULL;
    pg->in_pipe = 0;
    pg->nitems = 0;
    refused_clear(pg);
    cache_clear(pg);
    return connect_(pg, err, errlen);
}

PGconn *evl_pg_conn(const evl_pg *pg)
{
    return pg->conn;
}

/* ---- plain execution ----------------------------------------------------- */

static evl_err need_conn(evl_pg *pg, char *err, size_t errlen)
{
    if (!pg->conn || PQstatus(pg->conn) != CONNECTION_OK)
        return evl_seterr(err, errlen, EVL_ETRANSIENT,
                          "connection to PostgreSQL lost");
    return EVL_OK;
}

/* "call(\"sql...\")", on one line: how messages name a statement. */
static void name_call(const char *call, const char *sql, char *what, size_t n)
{
    snprintf(what, n, "%s(\"%.60s\")", call, sql);
    for (char *p = what; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
}

/* PQexec (params 0: may hold several statements) or PQexecParams with
 * n text parameters; the result in *out whatever its status. */
static evl_err run(evl_pg *pg, const char *sql, int params, int n,
                   const char *const *values, PGresult **out, char *err,
                   size_t errlen)
{
    char what[96];
    *out = NULL;
    evl_err e = need_conn(pg, err, errlen);
    if (e != EVL_OK)
        return e;
    *out = params ? PQexecParams(pg->conn, sql, n, NULL, values, NULL, NULL, 0)
                  : PQexec(pg->conn, sql);
    name_call(params ? "PQexecParams" : "PQexec", sql, what, sizeof what);
    return evl_pg_check(pg, *out, what, err, errlen);
}

evl_err evl_pg_exec_result(evl_pg *pg, const char *sql, PGresult **out,
                           char *err, size_t errlen)
{
    return run(pg, sql, 0, 0, NULL, out, err, errlen);
}

evl_err evl_pg_exec(evl_pg *pg, const char *sql, char *err, size_t errlen)
{
    PGresult *res;
    evl_err e = run(pg, sql, 0, 0, NULL, &res, err, errlen);
    PQclear(res);
    return e;
}

evl_err evl_pg_query_result(evl_pg *pg, const char *sql, int nparams,
                            const char *const *values, PGresult **out,
                            char *err, size_t errlen)
{
    return run(pg, sql, 1, nparams, values, out, err, errlen);
}

evl_err evl_pg_query(evl_pg *pg, const char *sql, int nparams,
                     const char *const *values, PGresult **out, char *err,
                     size_t errlen)
{
    PGresult *res;
    evl_err e =
        evl_pg_query_result(pg, sql, nparams, values, &res, err, errlen);
    if (e == EVL_OK && out)
        *out = res;
    else
        PQclear(res);
    return e;
}

/* One key for every evlua DDL: instances starting together take turns. */
#define DDL_LOCK   "SELECT pg_advisory_lock(7451045352341003521)"
#define DDL_UNLOCK "SELECT pg_advisory_unlock(7451045352341003521)"

evl_err evl_pg_exec_locked(evl_pg *pg, const char *sql, char *err,
                           size_t errlen)
{
    evl_err e = evl_pg_exec(pg, DDL_LOCK, err, errlen);
    if (e != EVL_OK)
        return e;
    e = evl_pg_exec(pg, sql, err, errlen);
    char uerr[EVL_ERRLEN];
    evl_err ue = evl_pg_exec(pg, DDL_UNLOCK, uerr, sizeof uerr);
    if (e == EVL_OK && ue != EVL_OK) {
        snprintf(err, errlen, "%s", uerr);
        return ue;
    }
    return e;
}

/* The settings of the functions that join a batch's keys with
 * evlua_checkpoints: an index lookup per key, never a scan of the table. */
#define PLAN_FOR_KEYS                                                          \
    "SET random_page_cost = 1.1 SET enable_seqscan = off "                     \
    "SET enable_hashjoin = off SET enable_mergejoin = off\n"

static const char tables_sql[] =
    /* Written for every aggregate of every batch, so its key is made
     * cheap to compare (measured: ~40% less server CPU per checkpoint
     * written than (projection, aggregate_type, aggregate_id) in the
     * database's collation): byte order ("C": these keys are only ever
     * compared for equality), and the most selective column first, so a
     * B-tree comparison is mostly settled by the first column. Queries
     * compare with these columns' collation (a parameter's default
     * collation gives way to it), so tables created before keep
     * working, just slower. */
    "CREATE TABLE IF NOT EXISTS evlua_checkpoints (\n"
    "  projection text COLLATE \"C\" NOT NULL,\n"
    "  aggregate_type text COLLATE \"C\" NOT NULL,\n"
    "  aggregate_id text COLLATE \"C\" NOT NULL,\n"
    "  sequence bigint NOT NULL,\n"
    "  parked boolean NOT NULL DEFAULT false,\n"
    "  PRIMARY KEY (aggregate_id, aggregate_type, projection))\n"
    /* rewritten every batch: room on the page for HOT updates */
    "  WITH (fillfactor = 70);\n"
    "CREATE TABLE IF NOT EXISTS evlua_offsets (\n"
    "  projection text NOT NULL,\n"
    "  topic text NOT NULL,\n"
    "  partition integer NOT NULL,\n"
    "  next_offset bigint NOT NULL,\n"
    "  PRIMARY KEY (projection, topic, partition));\n"
    "CREATE TABLE IF NOT EXISTS evlua_parked (\n"
    "  id bigserial PRIMARY KEY,\n"
    "  projection text NOT NULL,\n"
    "  aggregate_type text NOT NULL,\n"
    "  aggregate_id text NOT NULL,\n"
    "  sequence bigint,\n"
    "  event_type text,\n"
    "  topic text NOT NULL,\n"
    "  partition integer NOT NULL,\n"
    "  \"offset\" bigint NOT NULL,\n"
    "  event text NOT NULL,\n"
    "  error text NOT NULL,\n"
    "  parked_at timestamptz NOT NULL DEFAULT now(),\n"
    "  UNIQUE (projection, topic, partition, \"offset\"));\n"
    "CREATE INDEX IF NOT EXISTS evlua_parked_aggregate\n"
    "  ON evlua_parked (projection, aggregate_type, aggregate_id, id);\n"
    /* the script version a projection's tables were built by, written by
     * `projection rebuild --shadow` and `projection swap`: a projector
     * with another version refuses (projector.c) */
    "CREATE TABLE IF NOT EXISTS evlua_pins (\n"
    "  projection text PRIMARY KEY,\n"
    "  script_hash text NOT NULL,\n"
    "  script text NOT NULL,\n"
    "  pinned_at timestamptz NOT NULL DEFAULT now());\n"
    /* one row per projection: `projection swap` raises the epoch; a
     * projector's every transaction starts with evlua_fence */
    "CREATE TABLE IF NOT EXISTS evlua_fences (\n"
    "  projection text PRIMARY KEY,\n"
    "  epoch bigint NOT NULL DEFAULT 0,\n"
    /* the script version a projector last loaded: what a swap pins the
     * tables it moves aside to, when they have no pin yet */
    "  script_hash text,\n"
    "  script text);\n"
    /* The swap holds the exclusive lock of this key for its transaction;
     * a projector's transaction takes it shared, then reads the epoch
     * with a snapshot taken after the lock (a volatile function: each
     * statement its own snapshot), so it either commits before the swap
     * starts or sees the swap's epoch and fails: nothing written by the
     * old script lands in the tables swapped in. */
    "CREATE OR REPLACE FUNCTION evlua_fence(p text, e bigint)\n"
    "RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$\n"
    "DECLARE\n"
    "  cur bigint;\n"
    "BEGIN\n"
    "  PERFORM pg_advisory_xact_lock_shared(\n"
    "    hashtextextended('evlua fence ' || p, 0));\n"
    "  SELECT epoch INTO cur FROM evlua_fences WHERE projection = p;\n"
    "  IF coalesce(cur, 0) <> e THEN\n"
    "    RAISE EXCEPTION 'evlua: projection % was swapped (epoch % -> %): "
    "the projector follows the swap', p, e, coalesce(cur, 0)\n"
    "      USING ERRCODE = 'EV001';\n"
    "  END IF;\n"
    "  RETURN e;\n"
    "END $fn$;\n"
    /* Checkpoints are optimistic locks: every row moves from the value
     * this instance read to its new value, or the transaction fails with
     * 40001 and is retried on fresh values. */
    "CREATE OR REPLACE FUNCTION evlua_advance_checkpoints(\n"
    "    p text, types text[], ids text[], prev_seq bigint[],\n"
    "    prev_parked boolean[], new_seq bigint[], new_parked boolean[])\n"
    /* a batch's few hundred rows against a table that is hot in memory:
     * the planner, left to itself, may prefer a hash join over a seq scan
     * of the whole table to a few hundred primary-key lookups (15x slower
     * at 50,000 rows), the more so when the table grows faster than its
     * statistics. A primary-key lookup per row is right at any size, so
     * the plan is fixed here (PLAN_FOR_KEYS), whatever the statistics say:
     * no ANALYZE is needed while the table grows. */
    "RETURNS bigint LANGUAGE plpgsql\n" PLAN_FOR_KEYS "AS $fn$\n"
    "DECLARE\n"
    "  updated bigint := 0;\n"
    "  inserted bigint := 0;\n"
    "BEGIN\n"
    "  UPDATE evlua_checkpoints c SET sequence = u.ns, parked = u.np\n"
    "    FROM unnest(types, ids, prev_seq, prev_parked, new_seq, "
    "new_parked)\n"
    "         AS u(t, i, ps, pp, ns, np)\n"
    "   WHERE u.ps >= 0 AND c.projection = p AND c.aggregate_type = u.t\n"
    "     AND c.aggregate_id = u.i AND c.sequence = u.ps AND c.parked = "
    "u.pp;\n"
    "  GET DIAGNOSTICS updated = ROW_COUNT;\n"
    "  INSERT INTO evlua_checkpoints\n"
    "         (projection, aggregate_type, aggregate_id, sequence, parked)\n"
    "  SELECT p, u.t, u.i, u.ns, u.np\n"
    "    FROM unnest(types, ids, prev_seq, new_seq, new_parked)\n"
    "         AS u(t, i, ps, ns, np)\n"
    "   WHERE u.ps < 0\n"
    "  ON CONFLICT DO NOTHING;\n"
    "  GET DIAGNOSTICS inserted = ROW_COUNT;\n"
    "  IF updated + inserted <> cardinality(types) THEN\n"
    "    RAISE EXCEPTION 'evlua: % of % checkpoints of projection % changed "
    "concurrently (another instance, evlua parked or a reset)',\n"
    "      cardinality(types) - updated - inserted, cardinality(types), p\n"
    "      USING ERRCODE = '40001';\n"
    "  END IF;\n"
    "  RETURN updated + inserted;\n"
    "END $fn$;\n"
    "CREATE OR REPLACE FUNCTION evlua_load_checkpoints(\n"
    "    p text, types text[], ids text[])\n"
    "RETURNS TABLE (aggregate_type text, aggregate_id text, sequence "
    "bigint,\n"
    "               parked boolean)\n"
    "LANGUAGE sql STABLE\n" PLAN_FOR_KEYS "AS $fn$\n"
    "  SELECT c.aggregate_type, c.aggregate_id, c.sequence, c.parked\n"
    "    FROM unnest(types, ids) AS u(t, i)\n"
    "    JOIN evlua_checkpoints c ON c.projection = p\n"
    "         AND c.aggregate_type = u.t AND c.aggregate_id = u.i\n"
    "$fn$;\n"
    "CREATE OR REPLACE FUNCTION evlua_checkpoint_conflict(p text, n bigint)\n"
    "RETURNS bigint LANGUAGE plpgsql AS $fn$\n"
    "BEGIN\n"
    "  RAISE EXCEPTION 'evlua: % checkpoints of projection % changed "
    "concurrently (another instance, evlua parked or a reset)', n, p\n"
    "    USING ERRCODE = '40001';\n"
    "END $fn$;\n";

evl_err evl_pg_create_tables(evl_pg *pg, char *err, size_t errlen)
{
    return evl_pg_exec_locked(pg, tables_sql, err, errlen);
}

/* ---- pipelines ----------------------------------------------------------- */

static void push_item(evl_pg *pg, int kind, int entry_idx, long tag)
{
    if (pg->nitems == pg->capitems) {
        pg->capitems = pg->capitems ? pg->capitems * 2 : 256;
        pg->items = evl_xrealloc(pg->items, sizeof(item) * pg->capitems);
    }
    pg->items[pg->nitems++] = (item){kind, entry_idx, tag};
}

static void mark_broken(evl_pg *pg, const char *call)
{
    if (pg->broken)
        return;
    pg->broken = 1;
    char msg[200];
    error_text(pg->conn, NULL, msg, sizeof msg);
    snprintf(pg->broken_msg, sizeof pg->broken_msg, "%s failed: %s", call, msg);
}

evl_err evl_pg_pipe_begin(evl_pg *pg, char *err, size_t errlen)
{
    evl_err e = need_conn(pg, err, errlen);
    if (e != EVL_OK)
        return e;
    pg->nitems = 0;
    refused_clear(pg);
    if (pg->broken)
        return evl_seterr(err, errlen, EVL_ETRANSIENT, "%s", pg->broken_msg);
    if (!PQenterPipelineMode(pg->conn)) {
        char msg[EVL_ERRLEN];
        error_text(pg->conn, NULL, msg, sizeof msg);
        return evl_seterr(err, errlen, EVL_ETRANSIENT,
                          "PQenterPipelineMode failed: %s", msg);
    }
    pg->in_pipe = 1;
    return EVL_OK;
}

void evl_pg_pipe_prepare(evl_pg *pg, const char *sql)
{
    if (pg->broken)
        return;
    uint64_t h = evl_hash_str(sql);
    if (cache_find(pg, sql, h) >= 0)
        return;
    int e = cache_add(pg, sql, h);
    if (e < 0)
        return; /* cache full: sent unnamed */
    char name[32];
    entry_name(&pg->entries[e], name, sizeof name);
    if (!PQsendPrepare(pg->conn, name, sql, 0, NULL)) {
        if (local_class(pg) == EVL_ETRANSIENT) {
            mark_broken(pg, "PQsendPrepare");
            return;
        }
        /* refused by libpq: every use of it fails with this reason */
        char msg[512], full[600];
        local_text(pg->conn, msg, sizeof msg);
        snprintf(full, sizeof full,
                 "libpq refused the statement (PQsendPrepare): %s", msg);
        entry *en = &pg->entries[e];
        en->state = ENTRY_BAD;
        en->bad_cls = EVL_EPERMANENT;
        en->bad_state[0] = '\0';
        free(en->bad_msg);
        en->bad_msg = evl_xstrdup(full);
        return;
    }
    push_item(pg, ITEM_PREPARE, e, -1);
    if (!PQpipelineSync(pg->conn)) {
        mark_broken(pg, "PQpipelineSync");
        return;
    }
    push_item(pg, ITEM_PREPARE_SYNC, -1, -1);
}

/* Statement tag was refused by libpq (msg says why): send the stand-in
 * that fails its segment on the server, and remember why. */
static void refuse(evl_pg *pg, long tag, const char *msg)
{
    if (!PQsendQueryParams(pg->conn, REFUSED_SQL, 0, NULL, NULL, NULL, NULL,
                           0)) {
        mark_broken(pg, "PQsendQueryParams (stand-in)");
        return;
    }
    if (pg->nrefused == pg->caprefused) {
        pg->caprefused = pg->caprefused ? pg->caprefused * 2 : 4;
        pg->refused =
            evl_xrealloc(pg->refused, sizeof(char *) * pg->caprefused);
    }
    pg->refused[pg->nrefused] = evl_xstrdup(msg);
    push_item(pg, ITEM_REFUSED, (int)pg->nrefused++, tag);
}

void evl_pg_pipe_send(evl_pg *pg, const char *sql, int n,
                      const char *const *values, long tag)
{
    if (pg->broken)
        return;
    int e = cache_find(pg, sql, evl_hash_str(sql));
    if (e >= 0 && pg->entries[e].state == ENTRY_BAD) {
        /* libpq refused to prepare it (a server's refusal is only known
         * when results are read) */
        refuse(pg, tag, pg->entries[e].bad_msg);
        return;
    }
    int ok;
    const char *call;
    if (e >= 0) {
        char name[32];
        entry_name(&pg->entries[e], name, sizeof name);
        call = "PQsendQueryPrepared";
        ok = PQsendQueryPrepared(pg->conn, name, n, values, NULL, NULL, 0);
    } else {
        call = "PQsendQueryParams";
        ok = PQsendQueryParams(pg->conn, sql, n, NULL, values, NULL, NULL, 0);
    }
    if (!ok) {
        if (local_class(pg) == EVL_ETRANSIENT) {
            mark_broken(pg, call);
            return;
        }
        char msg[512], full[600];
        local_text(pg->conn, msg, sizeof msg);
        snprintf(full, sizeof full, "libpq refused the statement (%s): %s",
                 call, msg);
        refuse(pg, tag, full);
        return;
    }
    push_item(pg, ITEM_QUERY, e, tag);
}

void evl_pg_pipe_sync(evl_pg *pg, long seg)
{
    if (pg->broken)
        return;
    if (!PQpipelineSync(pg->conn)) {
        mark_broken(pg, "PQpipelineSync");
        return;
    }
    push_item(pg, ITEM_SYNC, -1, seg);
}

evl_err evl_pg_pipe_flush(evl_pg *pg, char *err, size_t errlen)
{
    if (!pg->broken && PQflush(pg->conn) != 0)
        mark_broken(pg, "PQflush");
    if (pg->broken)
        return evl_seterr(err, errlen, EVL_ETRANSIENT, "%s", pg->broken_msg);
    return EVL_OK;
}

/* The failure of the segment being read. */
typedef struct segstate {
    int failed;
    evl_err cls;
    long tag;
    char state[6];
    char msg[1024];
} segstate;

static void seg_fail(segstate *s, long tag, evl_err cls, const char *state,
                     const char *msg)
{
    if (s->failed)
        return;
    s->failed = 1;
    s->cls = cls;
    s->tag = tag;
    snprintf(s->state, sizeof s->state, "%s", state);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
}

/* What evl_pg_pipe_end gathers while it reads the results. */
typedef struct pipe_read {
    evl_pg_on_failure on_failure;
    void *ud;
    evl_err worst;              /* of the failed segments */
    char first_transient[1024]; /* the first transient failure's message */
    segstate seg;               /* the segment being read */
} pipe_read;

/* The segment r->seg, ended by the Sync point named seg, failed: count
 * it and report it. */
static void report_segment(pipe_read *r, long seg)
{
    const segstate *s = &r->seg;
    if (s->cls > r->worst)
        r->worst = s->cls;
    if (s->cls == EVL_ETRANSIENT && !*r->first_transient)
        snprintf(r->first_transient, sizeof r->first_transient, "%s", s->msg);
    if (r->on_failure) {
        evl_pg_failure f = {seg, s->tag, s->cls, s->state, s->msg};
        r->on_failure(r->ud, &f);
    }
}

/* The result res of Sync point it (cleared here): ends the segment.
 * Returns 0, or -1 when the pipeline broke. */
static int read_sync(evl_pg *pg, const item *it, PGresult *res, pipe_read *r)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_FATAL_ERROR) {
        /* the implicit transaction failed to commit (a deferred
         * constraint): the error comes before the Sync's result */
        char msg[1024];
        const char *state = sqlstate_of(res);
        int conn_ok = PQstatus(pg->conn) == CONNECTION_OK;
        error_text(pg->conn, res, msg, sizeof msg);
        seg_fail(&r->seg, EVL_PG_TAG_SYNC, evl_pg_classify(state, conn_ok),
                 state, msg);
        PQclear(res);
        if (!conn_ok) {
            mark_broken(pg, "commit at sync");
            return -1;
        }
        res = PQgetResult(pg->conn); /* the NULL ending the error */
        if (!res)
            res = PQgetResult(pg->conn);
        if (!res) {
            mark_broken(pg, "PQgetResult");
            return -1;
        }
        st = PQresultStatus(res);
    }
    PQclear(res);
    if (st != PGRES_PIPELINE_SYNC) {
        mark_broken(pg, "pipeline sync");
        return -1;
    }
    if (it->kind == ITEM_SYNC && r->seg.failed)
        report_segment(r, it->tag);
    memset(&r->seg, 0, sizeof r->seg);
    return 0;
}

/* The error result res of statement (or Prepare) it: the failure of its
 * segment, with the reason that tells most. */
static void read_error(evl_pg *pg, const item *it, const PGresult *res,
                       int conn_ok, segstate *seg)
{
    char msg[1024];
    const char *state = sqlstate_of(res);
    evl_err cls = evl_pg_classify(state, conn_ok);
    error_text(pg->conn, res, msg, sizeof msg);
    if (it->kind == ITEM_PREPARE) {
        entry *en = &pg->entries[it->entry];
        en->state = ENTRY_BAD;
        en->bad_cls = cls;
        snprintf(en->bad_state, sizeof en->bad_state, "%s", state);
        free(en->bad_msg);
        en->bad_msg = evl_xstrdup(msg);
        if (cls == EVL_ETRANSIENT)
            seg_fail(seg, -1, cls, state, msg);
    } else if (it->kind == ITEM_REFUSED) {
        /* the stand-in failed as it should: report why libpq
         * refused the statement it stands for */
        seg_fail(seg, it->tag, conn_ok ? EVL_EPERMANENT : EVL_ETRANSIENT, "",
                 pg->refused[it->entry]);
    } else if (it->entry >= 0 && pg->entries[it->entry].state == ENTRY_BAD) {
        /* used a statement that could not be prepared: its own
         * error says only "does not exist"; report why */
        entry *en = &pg->entries[it->entry];
        seg_fail(seg, it->tag, en->bad_cls, en->bad_state, en->bad_msg);
    } else {
        seg_fail(seg, it->tag, cls, state, msg);
    }
}

/* The result res of statement (or Prepare) it (cleared here), then the
 * NULL that ends each query's results. Returns 0, or -1 when the
 * connection went with it. */
static int read_result(evl_pg *pg, const item *it, PGresult *res, segstate *seg)
{
    ExecStatusType st = PQresultStatus(res);
    int conn_ok = PQstatus(pg->conn) == CONNECTION_OK;
    if (st == PGRES_FATAL_ERROR) {
        read_error(pg, it, res, conn_ok, seg);
        if (!conn_ok) {
            PQclear(res);
            mark_broken(pg, "statement");
            return -1;
        }
    } else if (st == PGRES_PIPELINE_ABORTED) {
        /* an earlier error of this segment; a Prepare aborted here was
         * never run: forget it (it stays PENDING and is compacted) */
    } else if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (it->kind == ITEM_PREPARE)
            pg->entries[it->entry].state = ENTRY_READY;
        else if (it->kind == ITEM_REFUSED) /* cannot happen */
            seg_fail(seg, it->tag, EVL_EPERMANENT, "", pg->refused[it->entry]);
    } else {
        char msg[160];
        snprintf(msg, sizeof msg, "unexpected result status %s",
                 PQresStatus(st));
        seg_fail(seg, it->tag, EVL_EPERMANENT, "", msg);
    }
    PQclear(res);
    /* each query's results end with a NULL */
    while ((res = PQgetResult(pg->conn)) != NULL) {
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            mark_broken(pg, "pipeline (results out of step)");
            break;
        }
        PQclear(res);
    }
    return 0;
}

evl_err evl_pg_pipe_end(evl_pg *pg, evl_pg_on_failure on_failure, void *ud,
                        char *err, size_t errlen)
{
    pipe_read r;
    memset(&r, 0, sizeof r);
    r.on_failure = on_failure;
    r.ud = ud;

    if (!pg->in_pipe)
        return evl_seterr(err, errlen, EVL_ETRANSIENT, "not in a pipeline");
    if (!pg->broken && PQflush(pg->conn) != 0)
        mark_broken(pg, "PQflush");

    for (size_t k = 0; k < pg->nitems && !pg->broken; k++) {
        const item *it = &pg->items[k];
        PGresult *res = PQgetResult(pg->conn);
        if (!res) {
            mark_broken(pg, "PQgetResult");
            break;
        }
        int sync = it->kind == ITEM_SYNC || it->kind == ITEM_PREPARE_SYNC;
        if ((sync ? read_sync(pg, it, res, &r)
                  : read_result(pg, it, res, &r.seg)) != 0)
            break;
    }

    pg->in_pipe = 0;
    pg->nitems = 0;
    refused_clear(pg);
    if (!pg->broken && !PQexitPipelineMode(pg->conn))
        mark_broken(pg, "PQexitPipelineMode");
    cache_compact(pg);
    if (pg->broken) {
        /* outcome of unanswered segments unknown: the caller reconnects */
        return evl_seterr(err, errlen, EVL_ETRANSIENT, "%s", pg->broken_msg);
    }
    if (r.worst == EVL_ETRANSIENT)
        return evl_seterr(err, errlen, EVL_ETRANSIENT, "%s", r.first_transient);
    return r.worst;
}

/* ---- helpers ------------------------------------------------------------- */

void evl_pg_array_add(evl_buf *b, const char *s, size_t len, int first)
{
    evl_buf_putc(b, first ? '{' : ',');
    evl_buf_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            evl_buf_put(b, s + run, i - run);
            evl_buf_putc(b, '\\');
            run = i;
        }
    }
    evl_buf_put(b, s + run, len - run);
    evl_buf_putc(b, '"');
}
