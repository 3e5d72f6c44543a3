/*
 * test_cmd_fence.c - two instances with the same transactional.id (a
 * zombie and its replacement): the newer one's init_transactions fences
 * the older, which exits 1 at its next transaction; the newer takes over
 * every partition; every command has exactly one result and every
 * accepted command's events appear exactly once, with contiguous
 * sequences.
 */
#include "cmdtest.h"

#define AGGS 30

int main(void)
{
    ct t;
    char events[256], results[256], id[64], agg[64];
    char *ids[3 * AGGS];
    size_t n = 0;
    th_recs evs = {0}, res = {0};
    pid_t a, b;
    int rc;

    ct_init_customer(&t, "fence", "same", "batch_size = 20,", NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);
    rd_kafka_t *p = ct_producer(&t);

    a = ct_start(&t, "a", "a.log", NULL);
    for (int i = 0; i < AGGS; i++) {
        snprintf(id, sizeof id, "reg-%d", i);
        snprintf(agg, sizeof agg, "c-%d", i);
        ct_send(&t, p, "customer", id, "RegisterCustomer", agg,
                "{\"name\":\"N\",\"email\":\"n@example.org\"}", NULL);
        ids[n++] = strdup(id);
    }
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, results, n, 90, &res), n,
              "the first instance handles the first commands");

    b = ct_start(&t, "a", "b.log", NULL);
    for (int i = 0; i < 100 && !ct_log_has(&t, "b.log", "processor started");
         i++)
        th_sleep_ms(100);
    CHECK(ct_log_has(&t, "b.log", "processor started"),
          "the second instance started (and fenced the first)");
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < AGGS; i++) {
            snprintf(id, sizeof id, "upd-%d-%d", round, i);
            snprintf(agg, sizeof agg, "c-%d", i);
            char data[64];
            snprintf(data, sizeof data, "{\"name\":\"N%d\"}", round);
            ct_send(&t, p, "customer", id, "UpdateCustomerProfile", agg, data,
                    NULL);
            ids[n++] = strdup(id);
            th_sleep_ms(20);
        }
    ct_flush(p);

    rc = th_wait(a, 90);
    CHECK_INT(rc, 1, "the fenced instance exits 1");
    if (rc < 0)
        th_stop(a, SIGKILL, 5);
    CHECK(ct_log_has(&t, "a.log", "fatal"), "... after logging a fatal error");

    CHECK_INT(ct_wait_count(&t, results, n, 120, &res), n,
              "every command gets its result");
    ct_read_all(&t, events, "read_committed", &evs);
    CHECK_INT(evs.n, n, "one event per command (no duplicate, none lost)");
    CHECK_INT(ct_check_exactly_once(&evs, &res, ids, n), 0,
              "exactly once: results, events, sequences");

    CHECK_INT(th_stop(b, SIGTERM, 30), 0, "the newer instance exits 0");
    if (check_failures_) {
        ct_dump_log(&t, "a.log");
        ct_dump_log(&t, "b.log");
    }
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    rd_kafka_destroy(p);
    th_recs_free(&evs);
    th_recs_free(&res);
    return check_done();
}
