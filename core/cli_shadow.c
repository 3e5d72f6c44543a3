/*
 * cli_shadow.c - a changed projection built beside the live one, then the
 * two compared, before anything goes live:
 *
 *   evlua projection rebuild NAME --shadow  the scripts given (--scripts)
 *       from the start of the topics into schema evlua_shadow_NAME: its
 *       tables, checkpoints, offsets and parked events all live there
 *       (the schema is the only one on its connections' search_path),
 *       under its own consumer group; the live projection is untouched.
 *   evlua projection diff NAME  live vs shadow tables, in one snapshot
 *       taken when both have read the same offsets.
 *   evlua projection swap NAME [--back]  the shadow's tables and
 *       bookkeeping trade places with the live ones in one transaction,
 *       and the live tables are pinned to the script that built them
 *       (evlua_pins, checked by the projector at start and reload).
 *       Running projectors follow: the swap raises the projection's epoch
 *       (evlua_fences) under an advisory lock their transactions take
 *       shared, so each fails its next transaction and takes up the new
 *       tables (projector.c follow_swap).
 *
 * The projector itself is the one `evlua run` uses (projector.h, with
 * opts.schema and opts.group), so the shadow is built exactly as the live
 * read model would be.
 */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lag.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"

typedef struct args {
    const char *config, *scripts, *name, *action, *metrics;
    int shadow, until_caught_up, limit, wait_s, back;
} args;

static const char rebuild_usage[] =
    "usage: evlua projection rebuild NAME --shadow [-c CONFIG]\n"
    "                                [--scripts DIR] [--until-caught-up]\n"
    "                                [--metrics HOST:PORT]\n"
    "\n"
    "Build projection NAME, as the scripts of DIR (or of the config) have\n"
    "it, from the start of its topics into PostgreSQL schema\n"
    "evlua_shadow_NAME, while the live projection keeps serving:\n"
    "  1. a shadow from an earlier rebuild is dropped (its consumer group\n"
    "     GROUP.shadow is deleted: refused while one still runs);\n"
    "  2. the schema is created; the projection's `schema` SQL, evlua's\n"
    "     checkpoints, offsets and parked tables are made in it (it is the\n"
    "     only schema on the search_path of the shadow's connections);\n"
    "  3. the events are read from the start up to the end the topics have\n"
    "     now, with progress (done/total, rate, ETA) on a terminal;\n"
    "  4. then it follows new events, as the live projector does, until\n"
    "     SIGINT or SIGTERM (not with --until-caught-up).\n"
    "Compare with `evlua projection diff NAME`.\n"
    "\n"
    "  -c, --config FILE   config file (see docs/config.md)\n"
    "  --scripts DIR       the new scripts: DIR/aggregates, DIR/projections\n"
    "                      (both: the aggregate types name the topics a\n"
    "                      projection without `topics` reads)\n"
    "  --shadow            required: build beside the live projection\n"
    "                      (`projection reset` rebuilds in place)\n"
    "  --until-caught-up   stop after step 3\n"
    "  --metrics HOST:PORT serve /metrics and /readyz there (port 0: any;\n"
    "                      logged): the projector's metrics and the shadow\n"
    "                      group's lag, "
    "evlua_consumer_lag{group=\"GROUP.shadow\"}\n"
    "\n"
    "Exit 0 when done or stopped, 1 on a runtime failure, 2 on a usage or\n"
    "config error.\n";

static const char diff_usage[] =
    "usage: evlua projection diff NAME [-c CONFIG] [--limit N]\n"
    "                             [--wait SECONDS]\n"
    "\n"
    "Compare every table of the shadow of projection NAME (schema\n"
    "evlua_shadow_NAME, from `projection rebuild NAME --shadow`) with the\n"
    "live table of the same name: row counts, rows only in one, rows that\n"
    "differ (matched by the shadow table's primary key; without one, rows\n"
    "are compared as a whole), with the first N differences. It compares\n"
    "in one snapshot taken when the shadow has read exactly the live\n"
    "projection's offsets, waiting up to SECONDS for such a moment.\n"
    "\n"
    "  -c, --config FILE   config file (see docs/config.md)\n"
    "  --limit N           differences shown per table (default 10)\n"
    "  --wait SECONDS      how long to wait for the shadow to reach the\n"
    "                      live offsets (default 60)\n"
    "\n"
    "Exit 0 when the tables are equal, 1 when they differ or on a runtime\n"
    "failure, 2 on a usage or config error (no shadow of NAME among\n"
    "them), 3 when the shadow did not reach the live offsets in time.\n";

static const char swap_usage[] =
    "usage: evlua projection swap NAME [-c CONFIG] [--back]\n"
    "\n"
    "Put the shadow of projection NAME (from `projection rebuild NAME\n"
    "--shadow`) in place of the live one, in one PostgreSQL transaction:\n"
    "every table of schema evlua_shadow_NAME trades places with the live\n"
    "table of the same name, and NAME's checkpoints, offsets, parked events\n"
    "and pinned script version trade places with the shadow's. Readers\n"
    "wait for the commit and then see the new tables; none sees a missing\n"
    "or half-built one. The live version is kept in the shadow schema:\n"
    "--back swaps it in again. Refused while the shadow rebuild runs.\n"
    "Projectors of NAME may run: the swap waits for their transactions in\n"
    "progress, and their next one fails at a fence, writing nothing; each\n"
    "then loads its scripts from disk again and goes on from the\n"
    "swapped-in offsets once the projection's script there is the version\n"
    "the swapped-in tables are pinned to (until then it waits, not ready).\n"
    "Deploy the new script first (no SIGHUP needed) or right after. A\n"
    "projector started with another version refuses to start (the pin).\n"
    "\n"
    "  -c, --config FILE   config file (see docs/config.md)\n"
    "  --back              swap the version swapped out last back in\n"
    "\n"
    "Exit 0 when swapped, 1 on a runtime failure (nothing changed), 2 on a\n"
    "usage or config error (no shadow, or --back without a swap).\n";

/* Parse options anywhere on the line. Returns -1 after --help, 0 ok, 2
 * on a usage error. */
static int parse(int argc, char **argv, args *a)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},
        {"scripts", required_argument, 0, 's'},
        {"shadow", no_argument, 0, 'S'},
        {"until-caught-up", no_argument, 0, 'u'},
        {"limit", required_argument, 0, 'l'},
        {"wait", required_argument, 0, 'w'},
        {"back", no_argument, 0, 'b'},
        {"metrics", required_argument, 0, 'm'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *pos[3] = {0};
    int npos = 0, help = 0, c;
    memset(a, 0, sizeof *a);
    a->limit = 10;
    a->wait_s = 60;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': a->config = optarg; break;
        case 's': a->scripts = optarg; break;
        case 'S': a->shadow = 1; break;
        case 'u': a->until_caught_up = 1; break;
        case 'l':
            a->limit = atoi(optarg);
            if (a->limit < 0 || a->limit > 100000) {
                fprintf(stderr, "evlua projection diff: --limit: 0 to "
                                "100000\n");
                return EVL_EXIT_USAGE;
            }
            break;
        case 'w':
            a->wait_s = atoi(optarg);
            if (a->wait_s < 0 || a->wait_s > 86400) {
                fprintf(stderr, "evlua projection diff: --wait: 0 to 86400 "
                                "seconds\n");
                return EVL_EXIT_USAGE;
            }
            break;
        case 'b': a->back = 1; break;
        case 'm': a->metrics = optarg; break;
        case 'h': help = 1; break;
        default: return EVL_EXIT_USAGE;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (npos == 3) {
            fprintf(stderr, "evlua projection: too many arguments\n");
            return EVL_EXIT_USAGE;
        }
        pos[npos++] = argv[i];
    }
    a->action = pos[0] ? pos[0] : "rebuild";
    a->name = pos[1];
    if (help) {
        fputs(!strcmp(a->action, "diff")   ? diff_usage
              : !strcmp(a->action, "swap") ? swap_usage
                                           : rebuild_usage,
              stdout);
        return -1;
    }
    if (npos != 2) {
        fprintf(stderr,
                "evlua projection %s: expected one projection "
                "name\n",
                a->action);
        return EVL_EXIT_USAGE;
    }
    return 0;
}

/* evlua_shadow_ and the name in lower case, other characters than
 * [a-z0-9_] as '_': an identifier that needs no quoting. */
static int shadow_schema(const char *name, char *buf, size_t n)
{
    int len = snprintf(buf, n, "evlua_shadow_%s", name);
    if (len < 0 || (size_t)len >= n || len > 63) {
        fprintf(stderr,
                "evlua projection: name %s is too long for a shadow "
                "schema (at most 50 characters)\n",
                name);
        return EVL_EXIT_USAGE;
    }
    for (char *p = buf; *p; p++) {
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
        else if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
            *p = '_';
    }
    return 0;
}

static int db_fail(const char *what, const char *err)
{
    fprintf(stderr, "evlua projection %s: %s\n", what, err);
    return EVL_EXIT_FAILURE;
}

/* The shadow of a projection has one owner at a time: a session-level
 * advisory lock on the live database, held by `rebuild --shadow` for its
 * whole run and by `swap` for its transaction, released when the holder
 * ends however it ends (kill -9 included). A consumer group's members
 * would not do: the rebuild leaves and re-joins its group between
 * catching up and following. 0 when taken, else the exit code (said). */
static int own_shadow(evl_pg *pg, const char *what, const char *schema)
{
    char err[EVL_ERRLEN];
    PGresult *res = NULL;
    const char *v[1] = {schema};
    if (evl_pg_query(pg,
                     "SELECT pg_try_advisory_lock(hashtextextended('evlua "
                     "shadow ' || $1, 0))",
                     1, v, &res, err, sizeof err) != EVL_OK)
        return db_fail(what, err);
    int got = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (got)
        return 0;
    fprintf(stderr,
            "evlua projection %s: a shadow rebuild of this projection is "
            "running (schema %s): stop it first\n",
            what, schema);
    return EVL_EXIT_FAILURE;
}

/* ---- rebuild --shadow ---------------------------------------------------- */

static int rebuild(const args *a, evl_config *cfg, evl_luahost *host,
                   const char *schema)
{
    char err[EVL_ERRLEN], group[300], sql[256];
    evl_pg *pg = NULL, *lock = NULL;
    evl_lag *lag = NULL;
    int rc;
    if (!a->shadow) {
        fprintf(stderr, "evlua projection rebuild: add --shadow to build "
                        "beside the live projection (`evlua projection "
                        "reset NAME` rebuilds it in place)\n");
        evl_cli_usage_error(rebuild_usage);
        return EVL_EXIT_USAGE;
    }
    if ((rc = evl_cli_connect_db(cfg, &lock)) != 0)
        return rc;
    if ((rc = own_shadow(lock, "rebuild", schema)) != 0)
        goto out;
    if ((rc = evl_cli_connect_db(cfg, &pg)) != 0)
        goto out;
    evl_projector_group(cfg, a->name, group, sizeof group - 8);
    strcat(group, ".shadow");
    evl_err e = evl_projector_reset_group(cfg, group, err, sizeof err);
    if (e == EVL_EPERMANENT) {
        fprintf(stderr,
                "evlua projection rebuild: a shadow rebuild of %s is running "
                "(consumer group %s has active members): stop it first\n",
                a->name, group);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }
    if (e != EVL_OK) {
        rc = db_fail("rebuild", err);
        goto out;
    }
    snprintf(sql, sizeof sql,
             "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema,
             schema);
    if ((e = evl_pg_exec(pg, sql, err, sizeof err)) != EVL_OK) {
        rc = db_fail("rebuild", err);
        goto out;
    }
    evl_pg_close(pg);
    pg = NULL;
    /* the shadow's tables are pinned to the script that builds them */
    {
        const evl_luahost_projection *p =
            evl_luahost_projection_get(host, a->name);
        const char *v[3] = {a->name, p->hash, p->script};
        e = evl_pg_open_in(cfg->pg_conninfo, "evlua cli", schema, &pg, err,
                           sizeof err);
        if (e == EVL_OK)
            e = evl_pg_create_tables(pg, err, sizeof err);
        if (e == EVL_OK)
            e = evl_pg_query(pg,
                             "INSERT INTO evlua_pins (projection, script_hash, "
                             "script) VALUES ($1, $2, $3)",
                             3, v, NULL, err, sizeof err);
        if (e != EVL_OK) {
            rc = db_fail("rebuild", err);
            goto out;
        }
        evl_pg_close(pg);
        pg = NULL;
    }
    evl_log(EVL_LOG_WARN, "shadow rebuild started", "projection", a->name,
            "schema", schema, "group", group, NULL);
    printf("projection %s: building its shadow in schema %s (consumer "
           "group %s)\n",
           a->name, schema, group);
    fflush(stdout);

    if (a->metrics) {
        int port = 0;
        char ps[16];
        evl_strlist topics = {0};
        if (evl_metrics_serve(a->metrics, &port, err, sizeof err) != EVL_OK) {
            fprintf(stderr, "evlua projection rebuild: --metrics: %s\n", err);
            rc = EVL_EXIT_USAGE;
            goto out;
        }
        snprintf(ps, sizeof ps, "%d", port);
        evl_log(EVL_LOG_WARN, "metrics endpoint listening", "listen",
                a->metrics, "port", ps, NULL);
        lag = evl_lag_new(cfg);
        evl_projector_topics(cfg, host, a->name, &topics);
        evl_lag_watch_in(lag, group, a->name, schema,
                         (const char *const *)topics.v, (size_t)topics.n);
        evl_projector_topics_free(&topics);
        if (evl_lag_start(lag, err, sizeof err) != EVL_OK) {
            evl_log(EVL_LOG_WARN, "lag thread not started: no lag metrics",
                    "reason", err, NULL);
            evl_lag_free(lag);
            lag = NULL;
        }
    }
    evl_projector_stats st;
    evl_projector_opts o = {.group = group, .schema = schema};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = evl_cli_catch_up(cfg, host, a->name, "rebuild", &o, &st);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) +
               (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    int stopped = evl_lifecycle_stopping();
    printf("shadow of %s %s: %lld events applied, %lld skipped (other "
           "types), %lld parked, in %.1f s\n",
           a->name, stopped ? "interrupted" : "caught up", st.applied,
           st.skipped, st.parked, s);
    fflush(stdout);
    if (rc != 0 || stopped || a->until_caught_up)
        goto out;
    printf("shadow of %s follows new events until stopped (SIGINT or "
           "SIGTERM)\n",
           a->name);
    fflush(stdout);
    memset(&o, 0, sizeof o);
    o.group = group;
    o.schema = schema;
    rc = evl_projector_run_opts(cfg, host, a->name, &o);
    printf("shadow of %s stopped\n", a->name);
out:
    evl_pg_close(pg);
    evl_lag_free(lag);
    if (a->metrics)
        evl_metrics_stop();
    evl_pg_close(lock); /* the shadow is free again */
    return rc;
}

/* ---- diff ---------------------------------------------------------------- */

/* An SQL identifier or literal for text s, quoted by libpq (owned). */
static char *quoted(evl_pg *pg, const char *s, int ident)
{
    PGconn *conn = evl_pg_conn(pg);
    char *q = ident ? PQescapeIdentifier(conn, s, strlen(s))
                    : PQescapeLiteral(conn, s, strlen(s));
    char *r = evl_xstrdup(q ? q : "\"\"");
    PQfreemem(q);
    return r;
}

/* One query's rows (EVL_OK with *res, owned) or an error in err. */
static evl_err rows(evl_pg *pg, const char *sql, int n, const char *const *v,
                    PGresult **res, char *err, size_t errlen)
{
    return evl_pg_query(pg, sql, n, v, res, err, errlen);
}

/* In the open snapshot: does the shadow stand at exactly the live
 * offsets? 1 yes, 0 no (what differs in why), -1 on an error. */
static int same_offsets(evl_pg *pg, const char *schema, const char *name,
                        char *why, size_t n, char *err, size_t errlen)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "WITH l AS (SELECT topic, partition, next_offset FROM "
             "evlua_offsets WHERE projection = $1), "
             "s AS (SELECT topic, partition, next_offset FROM "
             "%s.evlua_offsets WHERE projection = $1 AND topic IN "
             "(SELECT topic FROM l)) "
             "SELECT COALESCE(l.topic, s.topic), COALESCE(l.partition, "
             "s.partition), COALESCE(l.next_offset::text, 'none'), "
             "COALESCE(s.next_offset::text, 'none') "
             "FROM l FULL JOIN s USING (topic, partition) "
             "WHERE l.next_offset IS DISTINCT FROM s.next_offset "
             "ORDER BY 1, 2 LIMIT 1",
             schema);
    PGresult *res = NULL;
    const char *v[1] = {name};
    if (rows(pg, sql, 1, v, &res, err, errlen) != EVL_OK)
        return -1;
    int same = PQntuples(res) == 0;
    if (!same)
        snprintf(why, n, "%s[%s]: live at %s, shadow at %s",
                 PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                 PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3));
    PQclear(res);
    return same;
}

typedef struct tally {
    long long live, shadow, only_live, only_shadow, differ;
} tally;

/* Compare live table `lname` with shadow table `sname` (both quoted and
 * qualified as needed); print the first a->limit differences. */
static evl_err diff_table(evl_pg *pg, const args *a, const char *table,
                          const char *lname, const char *sname, tally *t,
                          char *err, size_t errlen)
{
    char *sql = NULL, *on = NULL, *karr = NULL;
    PGresult *res = NULL;
    size_t cap = 4096;
    evl_err e;
    /* the shadow table's primary key, in key order */
    {
        char q[600];
        snprintf(q, sizeof q,
                 "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON "
                 "a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
                 "WHERE i.indrelid = '%s'::regclass AND i.indisprimary "
                 "ORDER BY array_position(i.indkey::int2[], a.attnum)",
                 sname);
        if ((e = rows(pg, q, 0, NULL, &res, err, errlen)) != EVL_OK)
            return e;
    }
    int nk = PQntuples(res);
    on = evl_xmalloc(cap);
    karr = evl_xmalloc(cap);
    strcpy(on, "");
    strcpy(karr, "ARRAY[");
    for (int i = 0; i < nk; i++) {
        char *id = quoted(pg, PQgetvalue(res, i, 0), 1);
        char *lit = quoted(pg, PQgetvalue(res, i, 0), 0);
        size_t need = strlen(on) + 2 * strlen(id) + 32;
        if (need > cap / 2 || strlen(karr) + strlen(lit) + 8 > cap / 2) {
            free(id);
            free(lit);
            e = evl_seterr(err, errlen, EVL_EPERMANENT,
                           "%s: primary key too long to compare", table);
            goto out;
        }
        snprintf(on + strlen(on), cap - strlen(on), "%sl.%s = s.%s",
                 i ? " AND " : "", id, id);
        snprintf(karr + strlen(karr), cap - strlen(karr), "%s%s", i ? "," : "",
                 lit);
        free(id);
        free(lit);
    }
    strcat(karr, "]::text[]");
    PQclear(res);
    res = NULL;

    sql = evl_xmalloc(3 * cap);
    if (nk > 0)
        snprintf(sql, 3 * cap,
                 "WITH d AS (SELECT to_jsonb(l) AS lj, to_jsonb(s) AS sj "
                 "FROM %s l FULL JOIN %s s ON %s) "
                 "SELECT (SELECT count(*) FROM %s), (SELECT count(*) FROM "
                 "%s), count(*) FILTER (WHERE sj IS NULL), "
                 "count(*) FILTER (WHERE lj IS NULL), "
                 "count(*) FILTER (WHERE lj IS NOT NULL AND sj IS NOT NULL) "
                 "FROM d WHERE lj IS DISTINCT FROM sj",
                 lname, sname, on, lname, sname);
    else
        snprintf(sql, 3 * cap,
                 "SELECT (SELECT count(*) FROM %s), (SELECT count(*) FROM "
                 "%s), (SELECT count(*) FROM (SELECT to_jsonb(l) FROM %s l "
                 "EXCEPT ALL SELECT to_jsonb(s) FROM %s s) x), "
                 "(SELECT count(*) FROM (SELECT to_jsonb(s) FROM %s s "
                 "EXCEPT ALL SELECT to_jsonb(l) FROM %s l) x), 0",
                 lname, sname, lname, sname, sname, lname);
    if ((e = rows(pg, sql, 0, NULL, &res, err, errlen)) != EVL_OK)
        goto out;
    t->live = atoll(PQgetvalue(res, 0, 0));
    t->shadow = atoll(PQgetvalue(res, 0, 1));
    t->only_live = atoll(PQgetvalue(res, 0, 2));
    t->only_shadow = atoll(PQgetvalue(res, 0, 3));
    t->differ = atoll(PQgetvalue(res, 0, 4));
    PQclear(res);
    res = NULL;
    printf("%s: live %lld rows, shadow %lld rows; only live %lld, only "
           "shadow %lld, different %lld%s\n",
           table, t->live, t->shadow, t->only_live, t->only_shadow, t->differ,
           nk ? "" : " (no primary key: rows compared whole)");
    if (a->limit == 0 || t->only_live + t->only_shadow + t->differ == 0)
        goto out;

    /* the first differences, in key order: the key, and per field the
     * live and the shadow value ("(no column)" where a side lacks it) */
    if (nk > 0)
        snprintf(sql, 3 * cap,
                 "WITH d AS (SELECT to_jsonb(l) AS lj, to_jsonb(s) AS sj "
                 "FROM %s l FULL JOIN %s s ON %s), "
                 "x AS (SELECT lj, sj, (SELECT jsonb_object_agg(k, "
                 "COALESCE(lj, sj) -> k) FROM unnest(%s) k) AS kj FROM d "
                 "WHERE lj IS DISTINCT FROM sj ORDER BY 3 LIMIT %d) "
                 "SELECT kj::text, CASE WHEN sj IS NULL THEN 'only live' "
                 "WHEN lj IS NULL THEN 'only shadow' ELSE 'different' END, "
                 "CASE WHEN lj IS NULL OR sj IS NULL THEN COALESCE(lj, "
                 "sj)::text ELSE (SELECT string_agg(f || ': ' || CASE WHEN "
                 "lj ? f THEN (lj -> f)::text ELSE '(no column)' END || ' "
                 "-> ' || CASE WHEN sj ? f THEN (sj -> f)::text ELSE '(no "
                 "column)' END, ', ' ORDER BY f) FROM jsonb_object_keys(lj "
                 "|| sj) f WHERE lj -> f IS DISTINCT FROM sj -> f) END "
                 "FROM x ORDER BY kj",
                 lname, sname, on, karr, a->limit);
    else
        snprintf(sql, 3 * cap,
                 "(SELECT '', 'only live', j::text FROM (SELECT to_jsonb(l) "
                 "j FROM %s l EXCEPT ALL SELECT to_jsonb(s) FROM %s s) x "
                 "ORDER BY 3 LIMIT %d) UNION ALL (SELECT '', 'only shadow', "
                 "j::text FROM (SELECT to_jsonb(s) j FROM %s s EXCEPT ALL "
                 "SELECT to_jsonb(l) FROM %s l) x ORDER BY 3 LIMIT %d)",
                 lname, sname, a->limit, sname, lname, a->limit);
    if ((e = rows(pg, sql, 0, NULL, &res, err, errlen)) != EVL_OK)
        goto out;
    for (int i = 0; i < PQntuples(res); i++)
        printf("  %s %s%s%s\n", PQgetvalue(res, i, 1), PQgetvalue(res, i, 0),
               nk ? ": " : "", PQgetvalue(res, i, 2));
out:
    PQclear(res);
    free(sql);
    free(on);
    free(karr);
    return e;
}

static int diff(const args *a, evl_config *cfg, const char *schema)
{
    char err[EVL_ERRLEN], why[512] = "";
    evl_pg *pg = NULL;
    PGresult *res = NULL;
    int rc = evl_cli_connect_db(cfg, &pg);
    if (rc != 0)
        return rc;
    const char *v[1] = {schema};
    if (rows(pg,
             "SELECT 1 FROM pg_namespace n JOIN pg_class c ON c.relnamespace "
             "= n.oid WHERE n.nspname = $1 AND c.relname = 'evlua_offsets'",
             1, v, &res, err, sizeof err) != EVL_OK) {
        rc = db_fail("diff", err);
        goto out;
    }
    if (PQntuples(res) == 0) {
        fprintf(stderr,
                "evlua projection diff: projection %s has no shadow "
                "(schema %s): build one with `evlua projection rebuild %s "
                "--shadow`\n",
                a->name, schema, a->name);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    PQclear(res);
    res = NULL;

    /* one snapshot in which the shadow stands at the live offsets */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (evl_pg_exec(pg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                        err, sizeof err) != EVL_OK) {
            rc = db_fail("diff", err);
            goto out;
        }
        int same =
            same_offsets(pg, schema, a->name, why, sizeof why, err, sizeof err);
        if (same < 0) {
            rc = db_fail("diff", err);
            goto out;
        }
        if (same)
            break;
        evl_pg_exec(pg, "ROLLBACK", err, sizeof err);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec >= a->wait_s) {
            fprintf(stderr,
                    "evlua projection diff: the shadow of %s did not reach "
                    "the live offsets within %d s (%s): is `evlua "
                    "projection rebuild %s --shadow` running?\n",
                    a->name, a->wait_s, why, a->name);
            rc = 3;
            goto out;
        }
        usleep(200 * 1000);
    }

    /* the shadow's tables, but evlua's own */
    if (rows(pg,
             "SELECT c.relname, (SELECT to_regclass(quote_ident(c.relname))"
             "::text) FROM pg_class c JOIN pg_namespace n ON n.oid = "
             "c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', "
             "'p') AND c.relname NOT LIKE 'evlua\\_%' ORDER BY 1",
             1, v, &res, err, sizeof err) != EVL_OK) {
        rc = db_fail("diff", err);
        goto out;
    }
    int differ = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *table = PQgetvalue(res, i, 0);
        if (PQgetisnull(res, i, 1)) {
            printf("%s: only in the shadow (no live table of that name)\n",
                   table);
            differ = 1;
            continue;
        }
        char *tq = quoted(pg, table, 1);
        char sname[300];
        snprintf(sname, sizeof sname, "%s.%s", schema, tq);
        free(tq);
        tally tl = {0};
        if (diff_table(pg, a, table, PQgetvalue(res, i, 1), sname, &tl, err,
                       sizeof err) != EVL_OK) {
            rc = db_fail("diff", err);
            goto out;
        }
        if (tl.only_live + tl.only_shadow + tl.differ > 0)
            differ = 1;
    }
    if (PQntuples(res) == 0)
        printf("the shadow of %s has no tables\n", a->name);
    printf("projection %s: live and shadow %s\n", a->name,
           differ ? "DIFFER" : "are equal");
    rc = differ ? EVL_EXIT_FAILURE : EVL_EXIT_OK;
out:
    PQclear(res);
    if (pg && evl_pg_ok(pg))
        evl_pg_exec(pg, "ROLLBACK", err, sizeof err);
    evl_pg_close(pg);
    return rc;
}

/* ---- swap ---------------------------------------------------------------- */

/* evlua's tables a projection's bookkeeping lives in, with the columns
 * that move (evlua_parked's id is given anew, in the old order). */
static const struct {
    const char *table, *cols, *order;
} books[] = {
    {"evlua_checkpoints",
     "projection, aggregate_type, aggregate_id, sequence, parked", "1"},
    {"evlua_offsets", "projection, topic, partition, next_offset", "1"},
    {"evlua_parked",
     "projection, aggregate_type, aggregate_id, sequence, event_type, topic, "
     "partition, \"offset\", event, error, parked_at",
     "id"},
    {"evlua_pins", "projection, script_hash, script, pinned_at", "1"},
};

/* The statements of one swap, run in the open transaction. */
static evl_err swap_tx(evl_pg *pg, const args *a, const char *schema,
                       int *ntables, char *err, size_t errlen)
{
    char sql[2048];
    PGresult *res = NULL;
    const char *v[1] = {a->name};
    evl_err e;
    /* readers wait on the locks; a long one must not hold the swap (and
     * everything queued behind it) for ever */
    if ((e = evl_pg_exec(pg, "SET LOCAL lock_timeout = '30s'", err, errlen)) !=
        EVL_OK)
        return e;
    /* first, before any table lock: wait for the projectors' transactions
     * in progress, hold off new ones, and move the epoch, so each running
     * projector's next transaction fails at its fence and it takes up the
     * swapped-in tables */
    if ((e = evl_pg_query(pg, EVL_PG_SWAP_LOCK_SQL, 1, v, NULL, err, errlen)) !=
        EVL_OK)
        return e;
    if ((e = evl_pg_query(pg,
                          "INSERT INTO evlua_fences (projection, epoch) "
                          "VALUES ($1, 1) ON CONFLICT (projection) DO UPDATE "
                          "SET epoch = evlua_fences.epoch + 1",
                          1, v, NULL, err, errlen)) != EVL_OK)
        return e;
    /* tables never swapped have no pin: pin them to the version their
     * projectors last loaded, so a projector of any other version refuses
     * them if they are ever swapped back */
    if ((e = evl_pg_query(
             pg,
             "INSERT INTO evlua_pins (projection, script_hash, script) "
             "SELECT projection, script_hash, script FROM evlua_fences WHERE "
             "projection = $1 AND script_hash IS NOT NULL ON CONFLICT "
             "(projection) DO NOTHING",
             1, v, NULL, err, errlen)) != EVL_OK)
        return e;
    snprintf(sql, sizeof sql,
             "DROP SCHEMA IF EXISTS evlua_swap_%d CASCADE; CREATE SCHEMA "
             "evlua_swap_%d",
             (int)getpid(), (int)getpid());
    if ((e = evl_pg_exec(pg, sql, err, errlen)) != EVL_OK)
        return e;
    /* the shadow's tables and where each goes: the live table's schema,
     * or the first of the search_path for a new one */
    const char *vs[1] = {schema};
    e = evl_pg_query(
        pg,
        "SELECT quote_ident(c.relname), (SELECT quote_ident(n2.nspname) FROM "
        "pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace WHERE "
        "c2.oid = to_regclass(quote_ident(c.relname))), "
        "quote_ident(current_schema()) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN "
        "('r', 'p') AND c.relname NOT LIKE 'evlua\\_%' ORDER BY 1",
        1, vs, &res, err, errlen);
    if (e != EVL_OK)
        return e;
    *ntables = PQntuples(res);
    for (int i = 0; e == EVL_OK && i < PQntuples(res); i++) {
        const char *t = PQgetvalue(res, i, 0);
        int live = !PQgetisnull(res, i, 1);
        const char *ls = live ? PQgetvalue(res, i, 1) : PQgetvalue(res, i, 2);
        if (!live && !PQgetvalue(res, i, 2)[0]) {
            e = evl_seterr(err, errlen, EVL_EPERMANENT,
                           "no schema on the search_path for table %s", t);
            break;
        }
        snprintf(sql, sizeof sql, "ALTER TABLE %s.%s SET SCHEMA evlua_swap_%d",
                 schema, t, (int)getpid());
        e = evl_pg_exec(pg, sql, err, errlen);
        if (e == EVL_OK && live) {
            snprintf(sql, sizeof sql, "ALTER TABLE %s.%s SET SCHEMA %s", ls, t,
                     schema);
            e = evl_pg_exec(pg, sql, err, errlen);
        }
        if (e == EVL_OK) {
            snprintf(sql, sizeof sql,
                     "ALTER TABLE evlua_swap_%d.%s SET SCHEMA %s",
                     (int)getpid(), t, ls);
            e = evl_pg_exec(pg, sql, err, errlen);
        }
    }
    PQclear(res);
    if (e != EVL_OK)
        return e;
    snprintf(sql, sizeof sql, "DROP SCHEMA evlua_swap_%d", (int)getpid());
    if ((e = evl_pg_exec(pg, sql, err, errlen)) != EVL_OK)
        return e;

    /* the bookkeeping trades places the same way, through a temporary
     * table */
    for (size_t i = 0; e == EVL_OK && i < sizeof books / sizeof books[0]; i++) {
        const char *t = books[i].table, *c = books[i].cols;
        snprintf(sql, sizeof sql,
                 "CREATE TEMP TABLE evlua_swap_live ON COMMIT DROP AS SELECT "
                 "%s FROM %s WHERE projection = $1 ORDER BY %s",
                 c, t, books[i].order);
        e = evl_pg_query(pg, sql, 1, v, NULL, err, errlen);
        if (e == EVL_OK) {
            snprintf(sql, sizeof sql, "DELETE FROM %s WHERE projection = $1",
                     t);
            e = evl_pg_query(pg, sql, 1, v, NULL, err, errlen);
        }
        if (e == EVL_OK) {
            snprintf(sql, sizeof sql,
                     "INSERT INTO %s (%s) SELECT %s FROM %s.%s WHERE "
                     "projection = $1 ORDER BY %s",
                     t, c, c, schema, t, books[i].order);
            e = evl_pg_query(pg, sql, 1, v, NULL, err, errlen);
        }
        if (e == EVL_OK) {
            snprintf(sql, sizeof sql, "DELETE FROM %s.%s WHERE projection = $1",
                     schema, t);
            e = evl_pg_query(pg, sql, 1, v, NULL, err, errlen);
        }
        if (e == EVL_OK) {
            snprintf(sql, sizeof sql,
                     "INSERT INTO %s.%s (%s) SELECT %s FROM evlua_swap_live; "
                     "DROP TABLE evlua_swap_live",
                     schema, t, c, c);
            e = evl_pg_exec(pg, sql, err, errlen);
        }
    }
    if (e != EVL_OK)
        return e;
    snprintf(sql, sizeof sql, "COMMENT ON SCHEMA %s IS %s", schema,
             a->back ? "NULL" : "'evlua: the version swapped out'");
    return evl_pg_exec(pg, sql, err, errlen);
}

static int swap(const args *a, evl_config *cfg, const char *schema)
{
    char err[EVL_ERRLEN], group[300];
    evl_pg *pg = NULL;
    PGresult *res = NULL;
    int rc = evl_cli_connect_db(cfg, &pg), ntables = 0;
    if (rc != 0)
        return rc;
    if ((rc = own_shadow(pg, "swap", schema)) != 0)
        goto out;
    const char *v[1] = {schema};
    if (evl_pg_query(pg,
                     "SELECT obj_description(n.oid, 'pg_namespace') IS NOT "
                     "NULL FROM pg_namespace n JOIN pg_class c ON "
                     "c.relnamespace = n.oid WHERE n.nspname = $1 AND "
                     "c.relname = 'evlua_offsets'",
                     1, v, &res, err, sizeof err) != EVL_OK) {
        rc = db_fail("swap", err);
        goto out;
    }
    int swapped = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    if (PQntuples(res) == 0 || swapped != a->back) {
        fprintf(stderr, "evlua projection swap: %s\n",
                PQntuples(res) == 0
                    ? "no shadow of this projection: build one with `evlua "
                      "projection rebuild NAME --shadow`"
                : a->back ? "nothing to swap back: the shadow schema holds a "
                            "shadow rebuild, not a swapped-out version"
                          : "the shadow schema holds the version swapped out "
                            "last: swap it back with --back, or build a new "
                            "shadow first");
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    PQclear(res);
    res = NULL;

    /* the shadow's group goes (the swapped-out version reads from the
     * database offsets if it is ever swapped back); a shadow rebuild still
     * running is refused here too */
    evl_projector_group(cfg, a->name, group, sizeof group - 8);
    strcat(group, ".shadow");
    evl_err e = evl_projector_reset_group(cfg, group, err, sizeof err);
    if (e == EVL_EPERMANENT) {
        fprintf(stderr,
                "evlua projection swap: a shadow rebuild of %s is running "
                "(consumer group %s has active members): stop it first\n",
                a->name, group);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }
    if (e == EVL_OK) /* evlua_fences and evlua_fence, when still missing */
        e = evl_pg_create_tables(pg, err, sizeof err);
    if (e != EVL_OK) {
        rc = db_fail("swap", err);
        goto out;
    }
    e = evl_pg_exec(pg, "BEGIN", err, sizeof err);
    if (e == EVL_OK)
        e = swap_tx(pg, a, schema, &ntables, err, sizeof err);
    if (e == EVL_OK)
        e = evl_pg_exec(pg, "COMMIT", err, sizeof err);
    if (e != EVL_OK) {
        char rerr[EVL_ERRLEN];
        if (evl_pg_ok(pg))
            evl_pg_exec(pg, "ROLLBACK", rerr, sizeof rerr);
        rc = db_fail("swap", err);
        goto out;
    }
    evl_log(EVL_LOG_WARN,
            a->back ? "projection swapped back" : "projection swapped",
            "projection", a->name, "schema", schema, NULL);
    printf("projection %s: %d table(s), checkpoints, offsets, parked events "
           "and pinned version %s; the version swapped out is in schema %s\n",
           a->name, ntables, a->back ? "swapped back" : "swapped in", schema);
    rc = EVL_EXIT_OK;
out:
    PQclear(res);
    evl_pg_close(pg);
    return rc;
}

int evl_cli_shadow(int argc, char **argv)
{
    args a;
    evl_config cfg;
    evl_luahost_config hc;
    evl_luahost *host = NULL;
    char schema[80];
    int rc = parse(argc, argv, &a);
    if (rc)
        return rc < 0 ? EVL_EXIT_OK : rc;
    if ((rc = shadow_schema(a.name, schema, sizeof schema)) != 0)
        return rc;
    if ((rc = evl_cli_load_config(a.config, &cfg)) != 0)
        return rc;
    if (!strcmp(a.action, "diff") || !strcmp(a.action, "swap")) {
        rc = !strcmp(a.action, "diff") ? diff(&a, &cfg, schema)
                                       : swap(&a, &cfg, schema);
        goto out;
    }
    evl_cli_host_config(&cfg, a.scripts, &hc);
    if ((rc = evl_cli_load_host(&hc, &host)) != 0)
        goto out;
    if (!evl_luahost_projection_get(host, a.name)) {
        fprintf(stderr,
                "evlua projection rebuild: no projection script has name "
                "%s\n",
                a.name);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    rc = rebuild(&a, &cfg, host, schema);
out:
    evl_luahost_free(host);
    evl_config_free(&cfg);
    return rc;
}
