/*
 * test_cmd_takeover.c - a new owner never restores past a transaction
 * that is still open. Instance A dies in the middle of a transaction
 * (EVLUA_TEST_HANG_BEFORE_COMMIT, then kill -9) with a snapshot of it in
 * the state topic; B takes the partition over (another transactional id,
 * so A's transaction stays open until its timeout), handles commands and
 * leaves; C takes over while A's transaction may still be open. Reading
 * read_committed only up to the last stable offset, B and C would miss
 * what came after A's open transaction (C would miss B's snapshots and
 * repeat sequence numbers); evlua waits until nothing is pending.
 */
#include "cmdtest.h"

int main(void)
{
    ct t;
    char events[256], results[256];
    th_recs evs = {0}, res = {0};
    char *ids[4] = {"cmd-1", "cmd-2", "cmd-3", "cmd-4"};
    pid_t a, b, c;

    ct_init_customer(&t, "takeover", "a", NULL,
                     "['transaction.timeout.ms'] = 15000,");
    ct_config(&t, "b", "b", NULL, NULL);
    ct_config(&t, "c", "c", NULL, NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);
    rd_kafka_t *p = ct_producer(&t);

    a = ct_start(&t, "a", "a.log", "EVLUA_TEST_HANG_BEFORE_COMMIT=2");
    ct_wait_topic(&t, results, 30);
    ct_send(&t, p, "customer", "cmd-1", "RegisterCustomer", "c-1",
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\"}", NULL);
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, results, 1, 60, &res), 1, "cmd-1 committed");
    ct_send(&t, p, "customer", "cmd-2", "UpdateCustomerProfile", "c-1",
            "{\"name\":\"N2\"}", NULL);
    ct_flush(p);
    for (int i = 0; i < 200 && !ct_log_has(&t, "a.log", "hanging"); i++)
        th_sleep_ms(50);
    CHECK(ct_log_has(&t, "a.log", "hanging"),
          "A hangs in its second transaction, records in the log");
    kill(a, SIGKILL);
    th_wait(a, 10);

    /* cmd-3 waits in the topic; B's first batch holds cmd-2 and cmd-3.
     * Do not wait for their results: they only become visible once A's
     * transaction ends, and C must come while it may still be open. */
    ct_send(&t, p, "customer", "cmd-3", "ChangeEmail", "c-1",
            "{\"email\":\"n3@example.org\"}", NULL);
    ct_flush(p);
    b = ct_start(&t, "b", "b.log", "EVLUA_LOG_LEVEL=debug");
    for (int i = 0; i < 1200 && !ct_log_has(&t, "b.log", "batch committed");
         i++)
        th_sleep_ms(50);
    CHECK(ct_log_has(&t, "b.log", "batch committed"),
          "B committed a batch (cmd-2 again and cmd-3)");
    CHECK_INT(th_stop(b, SIGTERM, 30), 0, "B leaves");

    c = ct_start(&t, "c", "c.log", NULL);
    ct_send(&t, p, "customer", "cmd-4", "UpdateCustomerProfile", "c-1",
            "{\"name\":\"N4\"}", NULL);
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, results, 4, 90, &res), 4, "C handles cmd-4");
    const th_rec *r = ct_result(&res, "cmd-4");
    CHECK_INT(r ? th_int(r, "version") : -1, 4,
              "C continues at version 4: it restored B's snapshot");
    ct_read_all(&t, events, "read_committed", &evs);
    CHECK_INT(ct_check_exactly_once(&evs, &res, ids, 4), 0,
              "exactly once: results, events, sequences");
    CHECK_INT(th_stop(c, SIGTERM, 30), 0, "C exits 0");
    if (check_failures_) {
        ct_dump_log(&t, "b.log");
        ct_dump_log(&t, "c.log");
    }
    rd_kafka_destroy(p);
    th_recs_free(&evs);
    th_recs_free(&res);
    return check_done();
}
