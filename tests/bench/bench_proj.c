/*
 * bench_proj.c - events per second from Kafka into PostgreSQL, evlua's
 * projector in each isolation mode against two references, in one run:
 *
 *   ceiling  the same upserts pipelined from C with a prepared statement,
 *            one transaction per 500 (no Kafka, no Lua, no checkpoints):
 *            what PostgreSQL can take here, one statement per event;
 *   ceiling, 2 connections  the same split by key over two connections
 *            at once (evlua's default two projector threads);
 *   multi-row ceiling  one INSERT ... SELECT * FROM unnest($1::text[],
 *            ...) ON CONFLICT per 500 events, one transaction each: what
 *            coalesced upserts can reach;
 *   seed     the seed's literal consumer (event-design-notes.md): poll,
 *            group by aggregate, one DB transaction per aggregate with
 *            one round trip per statement, then a synchronous offset
 *            commit;
 *   evlua    `evlua run`'s projector (checkpoints, offsets, Lua handler)
 *            with isolation aggregate (the default), batch, aggregate-tx,
 *            with the default two projector threads (projection.threads:
 *            that many consumers in the group and connections, so
 *            PostgreSQL works on that many transactions at once); then
 *            the default mode with 1 and with 4 threads (one per
 *            partition);
 *   evlua upserts  the same projection written with evlua.upsert (rows
 *            coalesced into one multi-row statement per shape and
 *            transaction), default mode, 2 and 1 threads.
 *
 * Under the table: the ratios the targets are about (upserts against the
 * multi-row ceiling, plain SQL against the two-connection ceiling).
 *
 * Each run starts from an empty schema and reads the same topic of
 * EVENTS events (default 100,000) over KEYS aggregates (default 1,000 and
 * 50,000; one topic each, 4 partitions, written by a transactional
 * producer). Times run from the first message consumed to the last
 * commit, so joining the consumer group is not counted. The machine is
 * shared with Kafka and PostgreSQL (and maybe more), so every shape runs
 * EVLUA_BENCH_REPEAT times (default 3) and the median is shown. Each
 * evlua run is a child process of its own, whose RSS is sampled about
 * every 200 ms: the peak of the first half of the run against that of the
 * second (it must not grow). The CPU column is the share of one core the
 * client (the evlua process, or the C program) and the PostgreSQL server
 * (its postmaster and every process it started; not other servers on the
 * machine) used over the run: where the time goes.
 *
 * usage: bench_proj [EVENTS [KEYS...]]   (services as for the tests:
 * $EVLUA_RUN_DIR/{kafka/bootstrap,pg/conninfo} or EVLUA_KAFKA_BOOTSTRAP /
 * EVLUA_PG_CONNINFO)
 */
#include <stdint.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "log.h"
#include "projtest.h"

#define BATCH 500

static pt T;
static long nevents = 100000;
static int run_no;

static const char script[] =
    "return {\n"
    "  name = 'bench',\n"
    "  schema = [[CREATE TABLE IF NOT EXISTS bench_items (id text PRIMARY "
    "KEY,\n"
    "    v bigint NOT NULL, name text NOT NULL)]],\n"
    "  reset = 'TRUNCATE bench_items',\n"
    "  on = {\n"
    "    Upserted = function(e)\n"
    "      return { [[INSERT INTO bench_items (id, v, name) VALUES ($1, $2, "
    "$3)\n"
    "                 ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v,\n"
    "                 name = EXCLUDED.name]],\n"
    "               e.aggregate_id, e.data.v, e.data.name }\n"
    "    end,\n"
    "  },\n"
    "}\n";

static const char script_up[] =
    "return {\n"
    "  name = 'bench_up',\n"
    "  schema = [[CREATE TABLE IF NOT EXISTS bench_items (id text PRIMARY "
    "KEY,\n"
    "    v bigint NOT NULL, name text NOT NULL)]],\n"
    "  reset = 'TRUNCATE bench_items',\n"
    "  on = {\n"
    "    Upserted = function(e)\n"
    "      return evlua.upsert('bench_items', { id = e.aggregate_id, v = "
    "e.data.v, name = e.data.name }, { key = 'id' })\n"
    "    end,\n"
    "  },\n"
    "}\n";

#define UNNEST                                                                 \
    "INSERT INTO bench_items (id, v, name) SELECT * FROM "                     \
    "unnest($1::text[], $2::bigint[], $3::text[]) ON CONFLICT (id) DO UPDATE " \
    "SET v = EXCLUDED.v, name = EXCLUDED.name"

#define UPSERT                                                                 \
    "INSERT INTO bench_items (id, v, name) VALUES ($1, $2, $3) ON CONFLICT "   \
    "(id) DO UPDATE SET v = EXCLUDED.v, name = EXCLUDED.name"
#define TABLE_SQL                                                              \
    "CREATE TABLE IF NOT EXISTS bench_items (id text PRIMARY KEY, v bigint "   \
    "NOT NULL, name text NOT NULL)"

/* EVLUA_BENCH_FILLFACTOR=N: bench_items is created WITH (fillfactor = N)
 * by every shape (the references and the projections' schema alike), to
 * measure what room for HOT updates on its pages is worth. */
static char table_sql[256];
#define TABLE table_sql

/* src with " WITH (fillfactor = N)" after its first "name text NOT
 * NULL)" when EVLUA_BENCH_FILLFACTOR is set; a static copy. */
static const char *with_fillfactor(const char *src, char *out, size_t size)
{
    const char *ff = getenv("EVLUA_BENCH_FILLFACTOR");
    const char *at = strstr(src, "name text NOT NULL)");
    if (!ff || !*ff || !at) {
        snprintf(out, size, "%s", src);
        return out;
    }
    at += strlen("name text NOT NULL)");
    snprintf(out, size, "%.*s WITH (fillfactor = %d)%s", (int)(at - src), src,
             atoi(ff), at);
    return out;
}

/* The postmaster of the server the benchmark uses (the parent of one of
 * its backends), once known; 0: count every "postgres" process. */
static long postmaster;

/* CPU seconds (user + system) spent so far by the benchmark's server:
 * its postmaster and the postmaster's children, ended backends included
 * (every process named "postgres" while the postmaster is unknown): the
 * server's share of a run is the difference over it. Other servers on
 * the machine (another worktree's tests) do not count. */
static double postgres_cpu_s(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    double ticks = 0;
    while (d && (e = readdir(d))) {
        char path[300], line[1024];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = '\0';
        char *open = strchr(line, '('), *close = strrchr(line, ')');
        if (!open || !close || strncmp(open + 1, "postgres", 8) != 0 ||
            close != open + 9)
            continue;
        unsigned long ut = 0, st = 0;
        long cut = 0, cst = 0, ppid = 0;
        /* after ") ": state, ppid, fields 5..13, then utime, stime and
         * the times of reaped children (the postmaster's: backends that
         * ended, such as a projector's when it closed its connection) */
        if (sscanf(close + 2,
                   "%*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld "
                   "%ld",
                   &ppid, &ut, &st, &cut, &cst) != 5)
            continue;
        if (postmaster && ppid != postmaster && atol(e->d_name) != postmaster)
            continue;
        ticks += (double)ut + (double)st + (double)cut + (double)cst;
    }
    if (d)
        closedir(d);
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* EVLUA_BENCH_ONLY=shape,...: run only these shapes (ceiling, ceiling/2,
 * unnest, seed, aggregate, batch, aggregate-tx, aggregate/1, aggregate/4,
 * upserts, upserts/1),
 * e.g. to profile one of them. EVLUA_BENCH_EVLUA_BATCH=N sets evlua's
 * projection.batch_size (default 500, as the references use);
 * EVLUA_BENCH_FILLFACTOR=N bench_items' fillfactor (with_fillfactor). */
static int wanted(const char *shape)
{
    const char *only = getenv("EVLUA_BENCH_ONLY");
    if (!only || !*only)
        return 1;
    size_t n = strlen(shape);
    for (const char *p = only; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, shape, n) == 0)
            return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

static void fresh_schema(void)
{
    pt_exec(&T, "DROP SCHEMA IF EXISTS %s CASCADE", T.name);
    pt_exec(&T, "CREATE SCHEMA %s", T.name);
}

static void produce(const char *topic, int keys)
{
    pt_topic(&T, topic, 4);
    for (long i = 0; i < nevents; i++) {
        if (i % 5000 == 0)
            pt_begin(&T);
        char id[32], data[96];
        snprintf(id, sizeof id, "k%06ld", i % keys);
        snprintf(data, sizeof data, "{\"v\":%ld,\"name\":\"name-%ld\"}", i, i);
        pt_ev(&T, topic, id, i / keys + 1, "Upserted", data);
        if (i % 5000 == 4999 || i == nevents - 1)
            pt_commit(&T);
    }
}

/* ---- the raw PostgreSQL ceiling --------------------------------------------
 */

/* The events of connection `conn` of `nconn` (split by key), BATCH per
 * transaction, pipelined and prepared; its seconds. */
typedef struct ceiling_arg {
    int keys, conn, nconn;
    PGconn *c;
} ceiling_arg;

static void *ceiling_conn(void *arg)
{
    ceiling_arg *a = arg;
    PGconn *c = a->c;
    long *mine = malloc(sizeof *mine * (size_t)nevents);
    long n = 0;
    for (long k = 0; k < nevents; k++)
        if ((k % a->keys) % a->nconn == a->conn)
            mine[n++] = k;
    for (long i = 0; i < n; i += BATCH) {
        long end = i + BATCH < n ? i + BATCH : n;
        PQenterPipelineMode(c);
        PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
        for (long j = i; j < end; j++) {
            long k = mine[j];
            char id[32], v[24], name[32];
            snprintf(id, sizeof id, "k%06ld", k % a->keys);
            snprintf(v, sizeof v, "%ld", k);
            snprintf(name, sizeof name, "name-%ld", k);
            const char *vals[3] = {id, v, name};
            PQsendQueryPrepared(c, "up", 3, vals, NULL, NULL, 0);
        }
        PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
        PQpipelineSync(c);
        for (long k = 0; k < end - i + 2; k++) {
            PGresult *r = PQgetResult(c);
            if (PQresultStatus(r) != PGRES_COMMAND_OK)
                th_die("ceiling: %s", PQresultErrorMessage(r));
            PQclear(r);
            PQclear(PQgetResult(c)); /* NULL */
        }
        PGresult *r = PQgetResult(c); /* the sync */
        PQclear(r);
        PQexitPipelineMode(c);
    }
    free(mine);
    return NULL;
}

/* The ceiling over nconn connections at once (keys split between them,
 * so they never wait for each other's row locks). */
static double run_ceiling_n(int keys, int nconn)
{
    ceiling_arg a[2];
    pthread_t th[2];
    for (int j = 0; j < nconn; j++) {
        a[j] = (ceiling_arg){keys, j, nconn, PQconnectdb(T.dbinfo)};
        if (PQstatus(a[j].c) != CONNECTION_OK)
            th_die("ceiling: %s", PQerrorMessage(a[j].c));
        PQclear(PQexec(a[j].c, TABLE));
        PQclear(PQprepare(a[j].c, "up", UPSERT, 0, NULL));
    }
    double t0 = th_now();
    for (int j = 0; j < nconn; j++)
        pthread_create(&th[j], NULL, ceiling_conn, &a[j]);
    for (int j = 0; j < nconn; j++)
        pthread_join(th[j], NULL);
    double s = th_now() - t0;
    for (int j = 0; j < nconn; j++)
        PQfinish(a[j].c);
    return s;
}

/* One multi-row statement (unnest of three arrays) per BATCH events, a
 * transaction each: what coalesced upserts can reach. The BATCH events
 * of a statement have distinct keys when keys >= BATCH (else a batch is
 * cut where a key comes again). */
static double run_unnest(int keys)
{
    PGconn *c = PQconnectdb(T.dbinfo);
    if (PQstatus(c) != CONNECTION_OK)
        th_die("unnest: %s", PQerrorMessage(c));
    PQclear(PQexec(c, TABLE));
    PQclear(PQprepare(c, "un", UNNEST, 0, NULL));
    evl_buf a[3] = {{0}, {0}, {0}};
    int span = keys < BATCH ? keys : BATCH;
    double t0 = th_now();
    for (long i = 0; i < nevents; i += span) {
        long end = i + span < nevents ? i + span : nevents;
        for (int x = 0; x < 3; x++)
            a[x].len = 0;
        for (long k = i; k < end; k++) {
            char id[32], v[24], name[32];
            snprintf(id, sizeof id, "k%06ld", k % keys);
            snprintf(v, sizeof v, "%ld", k);
            snprintf(name, sizeof name, "name-%ld", k);
            evl_pg_array_add(&a[0], id, strlen(id), k == i);
            evl_pg_array_add(&a[1], v, strlen(v), k == i);
            evl_pg_array_add(&a[2], name, strlen(name), k == i);
        }
        for (int x = 0; x < 3; x++) {
            evl_buf_putc(&a[x], '}');
            evl_buf_putc(&a[x], '\0');
        }
        const char *vals[3] = {a[0].data, a[1].data, a[2].data};
        PQenterPipelineMode(c);
        PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
        PQsendQueryPrepared(c, "un", 3, vals, NULL, NULL, 0);
        PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
        PQpipelineSync(c);
        for (long k = 0; k < 3; k++) {
            PGresult *r = PQgetResult(c);
            if (PQresultStatus(r) != PGRES_COMMAND_OK)
                th_die("unnest: %s", PQresultErrorMessage(r));
            PQclear(r);
            PQclear(PQgetResult(c)); /* NULL */
        }
        PGresult *r = PQgetResult(c); /* the sync */
        PQclear(r);
        PQexitPipelineMode(c);
    }
    double s = th_now() - t0;
    for (int x = 0; x < 3; x++)
        evl_buf_free(&a[x]);
    PQfinish(c);
    return s;
}

#define MAXREP 9
static int repeat = 3;

/* index of the median of v[0..n) */
static int median(const double *v, int n)
{
    for (int i = 0; i < n; i++) {
        int below = 0, same = 0;
        for (int j = 0; j < n; j++) {
            below += v[j] < v[i];
            same += v[j] == v[i];
        }
        if (below <= n / 2 && below + same > n / 2)
            return i;
    }
    return 0;
}

/* ---- the seed's literal consumer --------------------------------------------
 */

static double run_seed(const char *topic)
{
    char group[160];
    PGconn *c = PQconnectdb(T.dbinfo);
    if (PQstatus(c) != CONNECTION_OK)
        th_die("seed: %s", PQerrorMessage(c));
    PQclear(PQexec(c, TABLE));
    static const char *const earliest[] = {"auto.offset.reset", "earliest",
                                           NULL};
    snprintf(group, sizeof group, "%s.seed.%d", T.name, ++run_no);
    rd_kafka_t *rk =
        th_consumer(T.bootstrap, group, "read_committed", earliest);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);

    rd_kafka_message_t *msgs[BATCH];
    int done_[BATCH];
    long seen = 0;
    double t0 = 0;
    while (seen < nevents) {
        int n = 0;
        double deadline = 0;
        while (n < BATCH) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, n ? 5 : 1000);
            if (!m) {
                if (n && th_now() > deadline)
                    break;
                continue;
            }
            if (m->err) {
                rd_kafka_message_destroy(m);
                continue;
            }
            if (!t0)
                t0 = th_now();
            if (!n)
                deadline = th_now() + 0.005;
            msgs[n++] = m;
        }
        /* Map<aggregateId, List<record>>, in first-seen order */
        memset(done_, 0, sizeof done_);
        for (int i = 0; i < n; i++) {
            if (done_[i])
                continue;
            PQclear(PQexec(c, "BEGIN"));
            for (int j = i; j < n; j++) {
                if (done_[j] || msgs[j]->key_len != msgs[i]->key_len ||
                    memcmp(msgs[j]->key, msgs[i]->key, msgs[i]->key_len))
                    continue;
                done_[j] = 1;
                cJSON *e =
                    cJSON_ParseWithLength(msgs[j]->payload, msgs[j]->len);
                const cJSON *d = cJSON_GetObjectItem(e, "data");
                char v[24];
                snprintf(v, sizeof v, "%.0f",
                         cJSON_GetObjectItem(d, "v")->valuedouble);
                const char *vals[3] = {
                    cJSON_GetObjectItem(e, "aggregate_id")->valuestring, v,
                    cJSON_GetObjectItem(d, "name")->valuestring};
                PGresult *r =
                    PQexecParams(c, UPSERT, 3, NULL, vals, NULL, NULL, 0);
                if (PQresultStatus(r) != PGRES_COMMAND_OK)
                    th_die("seed: %s", PQresultErrorMessage(r));
                PQclear(r);
                cJSON_Delete(e);
            }
            PQclear(PQexec(c, "COMMIT"));
        }
        rd_kafka_commit(rk, NULL, 0); /* commitSync */
        for (int i = 0; i < n; i++)
            rd_kafka_message_destroy(msgs[i]);
        seen += n;
    }
    double s = th_now() - t0;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    PQfinish(c);
    return s;
}

/* ---- evlua ------------------------------------------------------------------
 */

/* RSS samples of a run, one per progress report (about every 200 ms) */
#define MAXSAMPLES 4096
typedef struct rss_probe {
    int n;
    double t_first; /* the first report with an event consumed */
    double t[MAXSAMPLES];
    long kb[MAXSAMPLES];
} rss_probe;

static void probe(void *ud, const evl_projector_progress *p)
{
    rss_probe *r = ud;
    double t = th_now();
    if (r->t_first == 0 && p->done > 0)
        r->t_first = t;
    if (r->n < MAXSAMPLES) {
        r->t[r->n] = t;
        r->kb[r->n++] = th_rss_kb();
    }
}

/* The peak RSS of the run's first half and of its second half (the end
 * included): equal when nothing grows once the projector is up. */
static void rss_halves(const rss_probe *r, double seconds, long *first,
                       long *second)
{
    double mid = r->t_first + seconds / 2;
    *first = 0;
    *second = th_rss_kb();
    for (int i = 0; i < r->n; i++) {
        long *to = r->t[i] <= mid ? first : second;
        if (r->kb[i] > *to)
            *to = r->kb[i];
    }
}

/* the CPU the last evlua run used, as shares of one core over its
 * time: the projector process and the PostgreSQL server */
static double cpu_evlua, cpu_pg;

static double run_evlua_here(const char *topic, const char *proj,
                             const char *mode, int threads, long *rss_first,
                             long *rss_second, long long *applied)
{
    char extra[512], pdir[700];
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = "
             "\"%s.%d.\", batch_size = %d },",
             topic, T.name, run_no,
             getenv("EVLUA_BENCH_EVLUA_BATCH")
                 ? atoi(getenv("EVLUA_BENCH_EVLUA_BATCH"))
                 : BATCH);
    pt_config(&T, pdir, extra);
    evl_config cfg;
    evl_luahost *host = NULL;
    pt_load(&T, &cfg, &host);
    evl_projector_stats st;
    static rss_probe r;
    memset(&r, 0, sizeof r);
    evl_projector_opts o;
    memset(&o, 0, sizeof o);
    memset(&st, 0, sizeof st);
    o.until_caught_up = 1;
    o.isolation = mode;
    o.threads = threads;
    o.stats = &st;
    o.progress = probe;
    o.ud = &r;
    double c0 = self_cpu_s(), p0 = postgres_cpu_s();
    if (evl_projector_run_opts(&cfg, host, proj, &o) != 0)
        th_die("evlua %s: the projector failed", mode);
    if (st.seconds > 0) {
        usleep(100000); /* the postmaster reaps the closed backends */
        cpu_evlua = (self_cpu_s() - c0) / st.seconds;
        cpu_pg = (postgres_cpu_s() - p0) / st.seconds;
    }
    rss_halves(&r, st.seconds, rss_first, rss_second);
    *applied = st.applied;
    evl_luahost_free(host);
    evl_config_free(&cfg);
    return st.seconds;
}

typedef struct evlua_result {
    double seconds, cpu_evlua, cpu_pg;
    long rss_first, rss_second;
    long long applied;
} evlua_result;

typedef struct evlua_run {
    const char *topic, *proj, *mode;
    int threads;
} evlua_run;

/* th_in_child's side of run_evlua */
static void evlua_child(void *arg, void *out)
{
    const evlua_run *run = arg;
    evlua_result *r = out;
    r->seconds = run_evlua_here(run->topic, run->proj, run->mode, run->threads,
                                &r->rss_first, &r->rss_second, &r->applied);
    r->cpu_evlua = cpu_evlua;
    r->cpu_pg = cpu_pg;
}

/* run_evlua_here in a child process, so that its RSS is its own */
static double run_evlua(const char *topic, const char *proj, const char *mode,
                        int threads, long *rss_first, long *rss_second,
                        long long *applied)
{
    evlua_result r = {0, 0, 0, 0, 0, 0};
    evlua_run run = {topic, proj, mode, threads};
    char what[64];
    ++run_no; /* a fresh consumer group for every run */
    snprintf(what, sizeof what, "evlua %s", mode);
    th_in_child(evlua_child, &run, &r, sizeof r, what);
    *rss_first = r.rss_first;
    *rss_second = r.rss_second;
    *applied = r.applied;
    cpu_evlua = r.cpu_evlua;
    cpu_pg = r.cpu_pg;
    return r.seconds;
}

/* ---- the table ------------------------------------------------------------
 */

static void row(int keys, const char *shape, double eps, double seed,
                double ceiling, const double cpu[2], long rss_first,
                long rss_second)
{
    char r[64] = "";
    if (rss_first > 0)
        snprintf(r, sizeof r, "%5.1f -> %5.1f", rss_first / 1024.0,
                 rss_second / 1024.0);
    printf(
        "| %6d | %-44s | %9.0f | %6.1fx | %5.0f%% | %3.0f%% / %3.0f%% | %s |\n",
        keys, shape, eps, seed > 0 ? eps / seed : 1.0,
        ceiling > 0 ? 100.0 * eps / ceiling : 100.0, 100.0 * cpu[0],
        100.0 * cpu[1], r);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int keys[8] = {1000, 50000}, nkeys = 2;
    static char ratios[8][256];
    if (argc > 1)
        nevents = atol(argv[1]);
    if (argc > 2) {
        nkeys = 0;
        for (int i = 2; i < argc && nkeys < 8; i++)
            keys[nkeys++] = atoi(argv[i]);
    }
    if (!getenv("EVLUA_LOG_LEVEL"))
        evl_log_set_level(EVL_LOG_WARN);
    const char *rp = getenv("EVLUA_BENCH_REPEAT");
    repeat = rp && atoi(rp) > 0 ? atoi(rp) : 3;
    if (repeat > MAXREP)
        repeat = MAXREP;
    pt_init(&T, "bench_proj");
    char path[800];
    snprintf(path, sizeof path, "%s/projections/bench.lua", T.dir);
    char text[2048];
    with_fillfactor(TABLE_SQL, table_sql, sizeof table_sql);
    th_write_file(path, with_fillfactor(script, text, sizeof text));
    snprintf(path, sizeof path, "%s/projections/bench_up.lua", T.dir);
    th_write_file(path, with_fillfactor(script_up, text, sizeof text));
    pt_producer(&T);
    char fsync_[64];
    pt_text(&T, fsync_, sizeof fsync_, "SHOW fsync");
    {
        char st[64], line[256];
        snprintf(st, sizeof st, "/proc/%lld/status",
                 pt_long(&T, "SELECT pg_backend_pid()"));
        FILE *f = fopen(st, "r"); /* NULL: a server on another machine */
        while (f && fgets(line, sizeof line, f))
            if (sscanf(line, "PPid: %ld", &postmaster) == 1)
                break;
        if (f)
            fclose(f);
    }
    printf("evlua projector benchmark: %ld events per run, batches of %d, "
           "PostgreSQL fsync=%s, %ld CPUs, median of %d runs\n\n",
           nevents, BATCH, fsync_, sysconf(_SC_NPROCESSORS_ONLN), repeat);
    printf("| keys | shape | events/s | vs seed | vs ceiling | CPU client / "
           "PostgreSQL | RSS MB, peak of 1st half -> 2nd |\n"
           "|---|---|---|---|---|---|---|"
           "\n");

    /* the isolation modes with the default two projector threads, then
     * the default mode with 1 and with 4 threads (projection.threads; 4 =
     * one per partition here), then the projection with evlua.upsert */
    enum { NREFS = 4, NMODES = 7, NSHAPES = NREFS + NMODES };
    static const char *const refs[NREFS] = {"ceiling", "ceiling/2", "unnest",
                                            "seed"};
    static const char *const ref_names[NREFS] = {
        "raw PostgreSQL ceiling (C, pipelined, prepared)",
        "ceiling, 2 connections at once",
        "multi-row ceiling (one unnest upsert per 500)",
        "seed's literal consumer (txn per aggregate)"};
    static const char *const modes[NMODES] = {
        "aggregate", "batch",     "aggregate-tx", "aggregate",
        "aggregate", "aggregate", "aggregate"};
    static const int threads[NMODES] = {2, 2, 2, 1, 4, 2, 1};
    static const char *const projs[NMODES] = {
        "bench", "bench", "bench", "bench", "bench", "bench_up", "bench_up"};
    static const char *const only[NMODES] = {
        "aggregate",   "batch",   "aggregate-tx", "aggregate/1",
        "aggregate/4", "upserts", "upserts/1"};
    static const char *const names[NMODES] = {
        "evlua isolation=aggregate (default)",
        "evlua isolation=batch",
        "evlua isolation=aggregate-tx",
        "evlua aggregate, threads=1",
        "evlua aggregate, threads=4",
        "evlua upserts (evlua.upsert)",
        "evlua upserts, threads=1"};
    int ok = 1;
    for (int k = 0; k < nkeys; k++) {
        char topic[160];
        snprintf(topic, sizeof topic, "%s.k%d", T.name, keys[k]);
        produce(topic, keys[k]);
        double eps[NSHAPES][MAXREP], cpu[NSHAPES][MAXREP][2];
        long rfirst[NSHAPES][MAXREP], rsecond[NSHAPES][MAXREP];
        memset(eps, 0, sizeof eps);
        memset(cpu, 0, sizeof cpu);
        memset(rfirst, 0, sizeof rfirst);
        memset(rsecond, 0, sizeof rsecond);
        for (int rep = 0; rep < repeat; rep++) {
            for (int x = 0; x < NREFS; x++) {
                if (!wanted(refs[x]))
                    continue;
                fresh_schema();
                double c0 = self_cpu_s(), p0 = postgres_cpu_s();
                double s = x == 0   ? run_ceiling_n(keys[k], 1)
                           : x == 1 ? run_ceiling_n(keys[k], 2)
                           : x == 2 ? run_unnest(keys[k])
                                    : run_seed(topic);
                eps[x][rep] = (double)nevents / s;
                cpu[x][rep][0] = (self_cpu_s() - c0) / s;
                cpu[x][rep][1] = (postgres_cpu_s() - p0) / s;
            }
            for (int m = 0; m < NMODES; m++) {
                long long applied = 0;
                if (!wanted(only[m]))
                    continue;
                fresh_schema();
                double s = run_evlua(topic, projs[m], modes[m], threads[m],
                                     &rfirst[NREFS + m][rep],
                                     &rsecond[NREFS + m][rep], &applied);
                eps[NREFS + m][rep] = (double)nevents / s;
                cpu[NREFS + m][rep][0] = cpu_evlua;
                cpu[NREFS + m][rep][1] = cpu_pg;
                if (applied != nevents) {
                    fprintf(stderr, "FAIL: %s applied %lld of %ld events\n",
                            only[m], applied, nevents);
                    ok = 0;
                }
                long long rows =
                    pt_long(&T, "SELECT count(*) FROM %s.bench_items", T.name);
                if (rows != (nevents < keys[k] ? nevents : keys[k])) {
                    fprintf(stderr, "FAIL: %s left %lld rows\n", only[m], rows);
                    ok = 0;
                }
                /* the last event of every key won */
                long long last = pt_long(
                    &T,
                    "SELECT count(*) FROM %s.bench_items WHERE v + %d >= %ld",
                    T.name, keys[k], nevents);
                if (last != rows) {
                    fprintf(stderr,
                            "FAIL: %s: %lld of %lld rows hold their key's "
                            "last event\n",
                            only[m], last, rows);
                    ok = 0;
                }
            }
        }
        int mid[NSHAPES];
        for (int x = 0; x < NSHAPES; x++)
            mid[x] = median(eps[x], repeat);
        double ceiling = eps[0][mid[0]], seed = eps[3][mid[3]];
        for (int x = 0; x < NREFS; x++)
            if (wanted(refs[x]))
                row(keys[k], ref_names[x], eps[x][mid[x]], x == 3 ? seed : 0,
                    x == 0 ? 0 : ceiling, cpu[x][mid[x]], 0, 0);
        for (int m = 0; m < NMODES; m++)
            if (wanted(only[m]))
                row(keys[k], names[m], eps[NREFS + m][mid[NREFS + m]], seed,
                    ceiling, cpu[NREFS + m][mid[NREFS + m]],
                    rfirst[NREFS + m][mid[NREFS + m]],
                    rsecond[NREFS + m][mid[NREFS + m]]);
        double c2 = eps[1][mid[1]], un = eps[2][mid[2]];
        double agg = eps[NREFS][mid[NREFS]],
               up = eps[NREFS + 5][mid[NREFS + 5]],
               up1 = eps[NREFS + 6][mid[NREFS + 6]];
        if (un > 0 && up > 0)
            snprintf(ratios[k], sizeof ratios[k],
                     "keys %d: upserts / multi-row ceiling %.2fx (threads=1: "
                     "%.2fx); plain SQL (aggregate) / 2-connection ceiling "
                     "%.2fx; upserts / plain SQL %.2fx",
                     keys[k], up / un, up1 / un, c2 > 0 ? agg / c2 : 0,
                     agg > 0 ? up / agg : 0);
    }
    printf("\n");
    for (int k = 0; k < nkeys; k++)
        if (ratios[k][0])
            printf("%s\n", ratios[k]);
    printf("\ncommand: scripts/bench-proj %ld", nevents);
    for (int k = 0; k < nkeys; k++)
        printf(" %d", keys[k]);
    printf("\n");
    pt_exec(&T, "DROP SCHEMA IF EXISTS %s CASCADE", T.name);
    pt_done(&T);
    return ok ? 0 : 1;
}
