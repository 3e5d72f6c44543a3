/*
 * bench_shadow.c - the time of `evlua projection rebuild NAME --shadow`
 * next to `evlua projection reset NAME` over the same history, in one run.
 *
 *   bench_shadow [EVENTS [AGGREGATES [RUNS]]]   (default 100000 10000 3)
 *
 * Writes EVENTS CustomerAddressChanged events over AGGREGATES customers
 * (6 partitions), then, RUNS times in turn, rebuilds shipping_addresses in
 * place (reset) and into its shadow schema (until caught up), each as the
 * evlua binary a user runs, timed from start to exit. Both must end with
 * every event applied once (sum of the changes column = EVENTS). Prints
 * each run, min / median / max, and shadow / reset of the medians.
 * Needs the fixture broker and PostgreSQL (ctest, or scripts/kafka and
 * scripts/pg with EVLUA_RUN_DIR).
 */
#include "../c/projtest.h"

static pt T;
static char cfg[700];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Run `evlua projection ...`; its wall time, or -1 when it failed. */
static double timed(const char *log, const char *a1, const char *a2,
                    const char *a3)
{
    double t0 = now_s();
    pid_t pid = pt_spawn(&T, log, "projection", a1, "shipping_addresses", "-c",
                         cfg, a2, a3, NULL);
    int rc = th_wait(pid, -1);
    double t = now_s() - t0;
    if (rc != 0) {
        fprintf(stderr,
                "bench_shadow: evlua projection %s exited %d (see "
                "%s/%s)\n",
                a1, rc, T.dir, log);
        return -1;
    }
    return t;
}

int main(int argc, char **argv)
{
    long events = argc > 1 ? atol(argv[1]) : 100000;
    int aggs = argc > 2 ? atoi(argv[2]) : 10000;
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    if (events < 1 || aggs < 1 || runs < 1 || runs > 20) {
        fprintf(stderr, "usage: bench_shadow [EVENTS [AGGREGATES [RUNS "
                        "1-20]]]\n");
        return 2;
    }
    char topic[128];
    pt_init(&T, "bench_shadow");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 6);
    pt_config_examples(&T, topic, NULL);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_exec(&T, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS "
                "evlua_shadow_shipping_addresses CASCADE");
    pt_producer(&T);
    long *seq = calloc((size_t)aggs, sizeof *seq);
    pt_begin(&T);
    for (long i = 0; i < events; i++) {
        int a = (int)(i % aggs);
        char id[32], data[128];
        snprintf(id, sizeof id, "b%d", a);
        snprintf(data, sizeof data,
                 "{\"newAddress\":\"%ld Bench Street\",\"previousAddress\":"
                 "\"x\"}",
                 i);
        pt_ev(&T, topic, id, ++seq[a], "CustomerAddressChanged", data);
        if (i % 5000 == 4999) {
            pt_commit(&T);
            pt_begin(&T);
        }
    }
    pt_commit(&T);
    free(seq);
    printf("history: %ld events over %d aggregates, 6 partitions; "
           "projection shipping_addresses (one upsert per event)\n",
           events, aggs);

    double reset[20], shadow[20];
    int bad = 0;
    for (int r = 0; r < runs && !bad; r++) {
        char log[64];
        snprintf(log, sizeof log, "reset-%d.log", r);
        reset[r] = timed(log, "reset", NULL, NULL);
        long long n = pt_long(&T, "SELECT coalesce(sum(changes), 0) FROM "
                                  "shipping_addresses");
        snprintf(log, sizeof log, "shadow-%d.log", r);
        shadow[r] = timed(log, "rebuild", "--shadow", "--until-caught-up");
        long long s = pt_long(&T, "SELECT coalesce(sum(changes), 0) FROM "
                                  "evlua_shadow_shipping_addresses."
                                  "shipping_addresses");
        if (reset[r] < 0 || shadow[r] < 0 || n != events || s != events) {
            fprintf(stderr,
                    "bench_shadow: run %d: reset applied %lld, shadow %lld "
                    "of %ld events\n",
                    r + 1, n, s, events);
            bad = 1;
            break;
        }
        printf("run %d: reset %.2f s (%.0f events/s), shadow rebuild %.2f s "
               "(%.0f events/s), shadow/reset %.2f\n",
               r + 1, reset[r], (double)events / reset[r], shadow[r],
               (double)events / shadow[r], shadow[r] / reset[r]);
        fflush(stdout);
    }
    if (!bad) {
        qsort(reset, (size_t)runs, sizeof reset[0], cmp);
        qsort(shadow, (size_t)runs, sizeof shadow[0], cmp);
        printf("\n| %ld events | min | median | max |\n|---|---|---|---|\n",
               events);
        printf("| projection reset, s | %.2f | %.2f | %.2f |\n", reset[0],
               reset[runs / 2], reset[runs - 1]);
        printf("| rebuild --shadow, s | %.2f | %.2f | %.2f |\n", shadow[0],
               shadow[runs / 2], shadow[runs - 1]);
        printf("\nshadow / reset (medians): %.2f\n",
               shadow[runs / 2] / reset[runs / 2]);
    }
    pt_exec(&T, "DROP SCHEMA evlua_shadow_shipping_addresses CASCADE");
    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    if (bad)
        check_failures_++; /* keep the logs */
    pt_done(&T);
    return bad;
}
