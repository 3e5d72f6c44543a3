/*
 * test_cmd_pipeline.c - the transaction in flight fails after the next
 * batch was decided on top of it (EVLUA_TEST_FAIL_IN_FLIGHT=2: the second
 * transaction's commit is held 1.5 s while commands keep coming, then it
 * fails). Both are dropped: the store rolls both back, the consumer reads
 * both again. Over a paced stream of 600 commands on 40 aggregates: one
 * result per command, all accepted, every event exactly once, sequences
 * 1..n per aggregate without gaps, and each aggregate's last result
 * carries the version of its committed events.
 */
#include "cmdtest.h"

enum { AGGS = 40, N = 600 };

/* The decided_after=K of the in-flight failure's log line, or -1. */
static long decided_after(const ct *t)
{
    char path[600], line[4096];
    long k = -1;
    snprintf(path, sizeof path, "%s/a.log", t->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        const char *p;
        if (strstr(line, "transaction in flight failed") &&
            (p = strstr(line, "decided_after=")))
            k = strtol(p + strlen("decided_after="), NULL, 10);
    }
    fclose(f);
    return k;
}

int main(void)
{
    ct t;
    char events[256], results[256], id[32], agg[32], data[128];
    char *ids[N];
    int per_agg[AGGS] = {0}; /* committed events per aggregate */
    th_recs evs = {0}, res = {0};
    pid_t pid;

    ct_init_customer(&t, "pipeline", "a", NULL, NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);

    pid = ct_start(&t, "a", "a.log", "EVLUA_TEST_FAIL_IN_FLIGHT=2");
    rd_kafka_t *p = ct_producer(&t);
    for (int i = 0; i < 300 && !ct_log_has(&t, "a.log", "states restored"); i++)
        th_sleep_ms(100);

    /* a register per aggregate, then email changes; 10 commands every
     * 25 ms (about 1.5 s), so commands arrive while transactions are in
     * flight */
    for (int i = 0; i < N; i++) {
        int a = i % AGGS;
        snprintf(id, sizeof id, "cmd-%d", i);
        snprintf(agg, sizeof agg, "c-%d", a);
        ids[i] = strdup(id);
        if (i < AGGS)
            snprintf(data, sizeof data,
                     "{\"name\":\"N%d\",\"email\":\"n%d@example.org\","
                     "\"address\":\"%d Main St\"}",
                     a, a, a);
        else
            snprintf(data, sizeof data, "{\"email\":\"e%d@example.org\"}", i);
        ct_send(&t, p, "customer", id,
                i < AGGS ? "RegisterCustomer" : "ChangeEmail", agg, data, NULL);
        if (i % 10 == 9) {
            ct_flush(p);
            th_sleep_ms(25);
        }
    }
    ct_flush(p);

    CHECK_INT(ct_wait_count(&t, results, N, 120, &res), N,
              "every command has a result");
    CHECK(ct_log_has(&t, "a.log", "EVLUA_TEST_FAIL_IN_FLIGHT"),
          "the transaction in flight was failed (logged)");
    long k = decided_after(&t);
    fprintf(stderr, "decided after the failed transaction: %ld\n", k);
    CHECK(k > 0, "commands had been decided on top of it when it failed: "
                 "the path under test ran");
    CHECK(ct_log_has(&t, "a.log", "batch aborted; it will be read again"),
          "both were read again");

    th_recs_free(&res);
    ct_read_all(&t, results, "read_committed", &res);
    ct_read_all(&t, events, "read_committed", &evs);
    CHECK_INT(ct_check_exactly_once(&evs, &res, ids, N), 0,
              "exactly once: results, events, sequences");
    int accepted = 0, last_ok = 1;
    for (size_t i = 0; i < res.n; i++) {
        const char *st = th_str(&res.v[i], "status");
        accepted += st && strcmp(st, "accepted") == 0;
    }
    CHECK_INT(accepted, N, "all accepted");
    /* each aggregate's newest result carries its number of events */
    for (size_t i = 0; i < evs.n; i++) {
        const char *a = th_str(&evs.v[i], "aggregate_id");
        int n = a && a[0] == 'c' && a[1] == '-' ? atoi(a + 2) : -1;
        if (n >= 0 && n < AGGS)
            per_agg[n]++;
    }
    for (int a = 0; a < AGGS; a++) {
        char last[32];
        snprintf(last, sizeof last, "cmd-%d", N - AGGS + a);
        const th_rec *r = ct_result(&res, last);
        if (!r || th_int(r, "version") != per_agg[a]) {
            fprintf(stderr, "aggregate c-%d: last version %lld, want %d\n", a,
                    r ? th_int(r, "version") : -1, per_agg[a]);
            last_ok = 0;
        }
    }
    CHECK(last_ok, "every aggregate ends at the version of its commands");

    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run exits 0 on SIGTERM");
    if (check_failures_)
        ct_dump_log(&t, "a.log");
    rd_kafka_destroy(p);
    for (int i = 0; i < N; i++)
        free(ids[i]);
    th_recs_free(&evs);
    th_recs_free(&res);
    return check_done();
}
