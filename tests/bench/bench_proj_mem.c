/*
 * bench_proj_mem.c - the RSS of a projector catching up, and whether it
 * gives the memory back once idle (issue 21 item 3), in one run:
 *
 *   keep        EVLUA_NO_TRIM=1: no arena shrink, Lua collection or
 *               malloc_trim (the projector as it was before), librdkafka
 *               prefetch queued.max.messages.kbytes = 16384;
 *   trim        the same with the memory given back (the default);
 *   trim q8192  and queued.max.messages.kbytes = 8192;
 *   trim q4096  and 4096;
 *   trim q1024  and 1024.
 *
 * A topic of EVENTS events (default 300,000, ~300 bytes each) over KEYS
 * aggregates (default 50,000), 4 partitions, is produced once. Each run is
 * a child process (its RSS is its own) that loads the scripts, notes its
 * RSS ("start"), runs `evlua run`'s projector (default two threads) in a
 * thread, samples RSS every 100 ms ("peak") until the projection's
 * offsets in PostgreSQL reach the topic's end, then lets it idle for 3 s
 * and notes RSS again ("idle"). The variants run interleaved, RUNS times
 * (default 3), each on a fresh schema and consumer group; min/median/max
 * are printed, with the catch-up's events/s from the projector's start,
 * joining the group included (throughput: the prefetch limit must not
 * cost it).
 *
 * usage: bench_proj_mem [EVENTS [KEYS [RUNS [VARIANTS]]]]: VARIANTS, the
 * first that many of the list above (default all) (services as for the
 * tests: $EVLUA_RUN_DIR/{kafka/bootstrap,pg/conninfo})
 */
#include <pthread.h>
#include <stdint.h>

#include "lifecycle.h"
#include "log.h"
#include "projtest.h"

static pt T;
static long nevents = 300000;
static int nkeys = 50000;
static char topic[160];
static long long topic_end; /* the sum of the partitions' high watermarks */

static const char script[] =
    "return {\n"
    "  name = 'memb',\n"
    "  schema = [[CREATE TABLE IF NOT EXISTS memb_items (id text PRIMARY "
    "KEY,\n"
    "    v bigint NOT NULL, name text NOT NULL, note text NOT NULL)]],\n"
    "  reset = 'TRUNCATE memb_items',\n"
    "  on = {\n"
    "    Upserted = function(e)\n"
    "      return { [[INSERT INTO memb_items (id, v, name, note)\n"
    "                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE\n"
    "                 SET v = EXCLUDED.v, name = EXCLUDED.name,\n"
    "                 note = EXCLUDED.note]],\n"
    "               e.aggregate_id, e.data.v, e.data.name, e.data.note }\n"
    "    end,\n"
    "  },\n"
    "}\n";

static void produce(void)
{
    char note[201];
    memset(note, 'n', 200);
    note[200] = '\0';
    pt_topic(&T, topic, 4);
    for (long i = 0; i < nevents; i++) {
        if (i % 5000 == 0)
            pt_begin(&T);
        char id[32], data[400];
        snprintf(id, sizeof id, "k%06ld", i % nkeys);
        snprintf(data, sizeof data,
                 "{\"v\":%ld,\"name\":\"name-%ld\",\"note\":\"%s\"}", i, i,
                 note);
        pt_ev(&T, topic, id, i / nkeys + 1, "Upserted", data);
        if (i % 5000 == 4999 || i == nevents - 1)
            pt_commit(&T);
    }
    topic_end = 0;
    for (int p = 0; p < 4; p++) {
        int64_t lo, hi;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(
            T.producer, topic, p, &lo, &hi, 10000);
        if (e)
            th_die("query_watermark_offsets: %s", rd_kafka_err2str(e));
        topic_end += hi;
    }
}

typedef struct variant {
    const char *name;
    int keep;   /* EVLUA_NO_TRIM */
    int queued; /* queued.max.messages.kbytes */
} variant;

static const variant variants[] = {{"keep (before)", 1, 16384},
                                   {"trim", 0, 16384},
                                   {"trim q8192", 0, 8192},
                                   {"trim q4096", 0, 4096},
                                   {"trim q1024", 0, 1024}};
#define NVAR    (int)(sizeof variants / sizeof variants[0])
#define MAXRUNS 9

typedef struct result {
    long start, peak, idle; /* kB */
    double eps;
} result;

typedef struct child_run {
    evl_config cfg;
    evl_luahost *host;
    int rc;
} child_run;

static void *projector_main(void *arg)
{
    child_run *c = arg;
    c->rc = evl_projector_run_opts(&c->cfg, c->host, "memb", NULL);
    return NULL;
}

static void run_child(const variant *v, int run_no, result *r)
{
    char extra[1024], pdir[700];
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "kafka = { [\"bootstrap.servers\"] = \"%s\",\n"
             "          [\"queued.max.messages.kbytes\"] = %d },\n"
             "projection = { topics = { \"%s\" }, group_prefix = "
             "\"%s.%d.\" },",
             T.bootstrap, v->queued, topic, T.name, run_no);
    pt_config(&T, pdir, extra);
    if (v->keep)
        setenv("EVLUA_NO_TRIM", "1", 1);
    else
        unsetenv("EVLUA_NO_TRIM");
    child_run c;
    memset(&c, 0, sizeof c);
    pt_load(&T, &c.cfg, &c.host);
    PGconn *db = PQconnectdb(T.dbinfo);
    if (PQstatus(db) != CONNECTION_OK)
        th_die("connect: %s", PQerrorMessage(db));
    r->start = r->peak = th_rss_kb();
    double t0 = th_now(), t_done = 0, last_q = 0;
    pthread_t th;
    pthread_create(&th, NULL, projector_main, &c);
    for (;;) {
        th_sleep_ms(100);
        long kb = th_rss_kb();
        if (kb > r->peak)
            r->peak = kb;
        double t = th_now();
        if (t_done > 0) {
            if (t - t_done >= 3.0) {
                r->idle = kb;
                break;
            }
            continue;
        }
        if (t - last_q < 0.5)
            continue;
        last_q = t;
        long long done = 0;
        PGresult *res = PQexec(db, "SELECT coalesce(sum(next_offset), 0) "
                                   "FROM evlua_offsets WHERE projection = "
                                   "'memb'");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            done = atoll(PQgetvalue(res, 0, 0));
        PQclear(res);
        /* the end offsets count each partition's last commit marker,
         * which no consumer position passes */
        if (done >= topic_end - 4)
            t_done = t;
        if (t - t0 > 900)
            th_die("%s: not caught up after 900 s (%lld of %lld)", v->name,
                   done, topic_end);
    }
    /* from the projector's start (joining the group included) to the last
     * offset, to 0.5 s */
    r->eps = t_done > t0 ? (double)nevents / (t_done - t0) : 0;
    evl_lifecycle_request_stop();
    pthread_join(th, NULL);
    PQfinish(db);
    if (c.rc != 0)
        th_die("%s: the projector failed", v->name);
}

typedef struct child_args {
    const variant *v;
    int run_no;
} child_args;

/* th_in_child's side of run */
static void in_child(void *arg, void *out)
{
    const child_args *a = arg;
    run_child(a->v, a->run_no, out);
}

static void run(const variant *v, int run_no, result *out)
{
    result r = {0, 0, 0, 0};
    child_args args = {v, run_no};
    pt_exec(&T, "DROP SCHEMA IF EXISTS %s CASCADE", T.name);
    pt_exec(&T, "CREATE SCHEMA %s", T.name);
    th_in_child(in_child, &args, &r, sizeof r, v->name);
    *out = r;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* "min / median / max" of v[0..n) (sorted in place), in MiB from kB
 * (scale 1/1024) or as is (scale 1) */
static void mmm(double *v, int n, double scale, const char *fmt, char *out,
                size_t len)
{
    char a[32], b[32], c[32];
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    snprintf(a, sizeof a, fmt, v[0] * scale);
    snprintf(b, sizeof b, fmt, v[n / 2] * scale);
    snprintf(c, sizeof c, fmt, v[n - 1] * scale);
    snprintf(out, len, "%.31s / %.31s / %.31s", a, b, c);
}

int main(int argc, char **argv)
{
    int runs = 3, nvar = NVAR;
    if (argc > 1)
        nevents = atol(argv[1]);
    if (argc > 2)
        nkeys = atoi(argv[2]);
    if (argc > 3)
        runs = atoi(argv[3]);
    if (argc > 4 && atoi(argv[4]) > 0 && atoi(argv[4]) < NVAR)
        nvar = atoi(argv[4]);
    if (nevents < 1 || nkeys < 1 || runs < 1 || runs > MAXRUNS) {
        fprintf(stderr, "usage: bench_proj_mem [EVENTS [KEYS [RUNS <= 9 "
                        "[VARIANTS]]]]\n");
        return 2;
    }
    if (!getenv("EVLUA_LOG_LEVEL"))
        evl_log_set_level(EVL_LOG_WARN);
    pt_init(&T, "bench_proj_mem");
    char path[800];
    snprintf(path, sizeof path, "%s/projections/memb.lua", T.dir);
    th_write_file(path, script);
    pt_producer(&T);
    snprintf(topic, sizeof topic, "%s.events", T.name);
    produce();
    printf("projector RSS over a catch-up: %ld events (~300 B) over %d "
           "aggregates, 4 partitions, 2 projector threads, %d runs of each "
           "(min / median / max), %ld CPUs\n\n",
           nevents, nkeys, runs, sysconf(_SC_NPROCESSORS_ONLN));
    static result res[NVAR][MAXRUNS];
    int run_no = 0;
    for (int i = 0; i < runs; i++)
        for (int v = 0; v < nvar; v++)
            run(&variants[v], ++run_no, &res[v][i]);
    printf("| variant | RSS start MiB | peak MiB | idle after catch-up MiB "
           "| idle / peak | events/s |\n|---|---|---|---|---|---|\n");
    double eps_keep = 0;
    for (int v = 0; v < nvar; v++) {
        double s[MAXRUNS], p[MAXRUNS], d[MAXRUNS], q[MAXRUNS], e[MAXRUNS];
        for (int i = 0; i < runs; i++) {
            s[i] = (double)res[v][i].start;
            p[i] = (double)res[v][i].peak;
            d[i] = (double)res[v][i].idle;
            q[i] = p[i] > 0 ? d[i] / p[i] : 0;
            e[i] = res[v][i].eps;
        }
        char cs[128], cp[128], cd[128], cq[128], ce[128];
        mmm(s, runs, 1 / 1024.0, "%.0f", cs, sizeof cs);
        mmm(p, runs, 1 / 1024.0, "%.0f", cp, sizeof cp);
        mmm(d, runs, 1 / 1024.0, "%.0f", cd, sizeof cd);
        mmm(q, runs, 1, "%.2f", cq, sizeof cq);
        mmm(e, runs, 1, "%.0f", ce, sizeof ce);
        if (v == 0)
            eps_keep = e[runs / 2];
        printf("| %s | %s | %s | %s | %s | %s", variants[v].name, cs, cp, cd,
               cq, ce);
        if (v > 0 && eps_keep > 0)
            printf(" (%.2fx)", e[runs / 2] / eps_keep);
        printf(" |\n");
    }
    printf("\ncommand: build/tests/bench_proj_mem %ld %d %d %d\n", nevents,
           nkeys, runs, nvar);
    pt_exec(&T, "DROP SCHEMA IF EXISTS %s CASCADE", T.name);
    return 0;
}
