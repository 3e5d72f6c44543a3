/*
 * test_cmd_abort.c - a failure injected after the events reached the
 * broker and before the commit (EVLUA_TEST_FAIL_BEFORE_COMMIT=1): no
 * read_committed consumer ever sees those events; a read_uncommitted one
 * does (they really were in the log); the retry publishes the command's
 * events exactly once, with one result; the in-memory state was rolled
 * back, so the next command continues at the right version.
 */
#include "cmdtest.h"

int main(void)
{
    ct t;
    char events[256], results[256];
    th_recs evs = {0}, all = {0}, res = {0};
    pid_t pid;

    ct_init_customer(&t, "abort", "a", NULL, NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);

    pid = ct_start(&t, "a", "a.log", "EVLUA_TEST_FAIL_BEFORE_COMMIT=1");
    rd_kafka_t *p = ct_producer(&t);
    ct_wait_topic(&t, results, 30);

    ct_send(&t, p, "customer", "cmd-1", "RegisterCustomer", "c-1",
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\","
            "\"address\":\"1 Main St\"}",
            NULL);
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, results, 1, 90, &res), 1,
              "the command gets its result after the retry");
    CHECK(ct_log_has(&t, "a.log", "EVLUA_TEST_FAIL_BEFORE_COMMIT"),
          "the injected failure happened (logged)");
    CHECK(ct_log_has(&t, "a.log", "batch aborted"),
          "the batch was aborted and read again");

    ct_read_all(&t, events, "read_committed", &evs);
    CHECK_INT(evs.n, 2, "read_committed: the two events, exactly once");
    if (evs.n == 2) {
        CHECK_INT(th_int(&evs.v[0], "sequence"), 1, "sequence 1");
        CHECK_INT(th_int(&evs.v[1], "sequence"), 2, "sequence 2");
        CHECK_STR(th_str(&evs.v[0], "causation_id"), "cmd-1", "causation");
    }
    ct_read_all(&t, events, "read_uncommitted", &all);
    CHECK_INT(all.n, 4,
              "read_uncommitted: the aborted attempt's two events are in the "
              "log too");
    if (all.n == 4 && evs.n == 2) {
        CHECK(strcmp(th_str(&all.v[0], "id"), th_str(&evs.v[0], "id")) != 0,
              "the aborted events are not the committed ones");
        CHECK_INT(th_int(&all.v[0], "sequence"), 1,
                  "the aborted attempt had the same sequences");
    }
    ct_read_all(&t, results, "read_uncommitted", &all);
    CHECK_INT(all.n, 2, "an aborted result and the committed one");

    /* the rolled-back store: the next command continues at version 2 */
    ct_send(&t, p, "customer", "cmd-2", "ChangeEmail", "c-1",
            "{\"email\":\"a@example.org\"}", NULL);
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, results, 2, 60, &res), 2, "cmd-2's result");
    const th_rec *r = ct_result(&res, "cmd-2");
    CHECK_STR(r ? th_str(r, "status") : NULL, "accepted", "cmd-2 accepted");
    CHECK_INT(r ? th_int(r, "version") : -1, 3,
              "cmd-2 continues at version 3: no trace of the abort");
    ct_read_all(&t, events, "read_committed", &evs);
    CHECK_INT(evs.n, 3, "three committed events in all");

    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run exits 0 on SIGTERM");
    if (check_failures_)
        ct_dump_log(&t, "a.log");
    rd_kafka_destroy(p);
    th_recs_free(&evs);
    th_recs_free(&all);
    th_recs_free(&res);
    return check_done();
}
