/*
 * test_react_halt.c - reactions.on_error = halt on the real broker: a
 * failing reaction stops `evlua run` with exit code 1 and the error
 * logged, and its batch is not committed: the good reaction before it
 * went out, the failing event's offset was not committed, so a run with
 * on_error = park reads it again and parks it.
 */
#include "reacttest.h"

int main(void)
{
    ct t;
    char pcmd[256], parked[256];
    th_recs pc = {0}, pk = {0};

    rt_init(&t, "rhalt", "on_error = 'halt',");
    rt_config(&t, "b", NULL); /* the same world, on_error = park */
    ct_topic(&t, "parcel", "commands", pcmd, sizeof pcmd);
    ct_topic(&t, "parcel", "reactions.parked", parked, sizeof parked);

    pid_t pid = ct_start(&t, "a", "a.log", NULL);
    rd_kafka_t *p = ct_producer(&t);
    CHECK(ct_wait_log(&t, "a.log", "reactor started", 60000),
          "the parcel reactor starts");
    ct_send(&t, p, "member", "c-1", "Poke", "m-1", "{\"mode\":\"ok\"}", NULL);
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, pcmd, 1, 60, &pc), 1,
              "the good reaction's command is sent");
    ct_send(&t, p, "member", "c-2", "Poke", "m-2", "{\"mode\":\"boom\"}", NULL);
    ct_flush(p);
    CHECK_INT(th_wait(pid, 60), 1, "a failing reaction under halt: exit 1");
    CHECK(ct_log_has(&t, "a.log", "reactions.on_error = halt"),
          "the halt is logged");
    CHECK(ct_log_has(&t, "a.log", "boom"), "with the reaction's error");
    ct_read_all(&t, pcmd, "read_committed", &pc);
    CHECK_INT(pc.n, 1, "nothing more was sent");

    /* park instead: the event comes again (its offset was not committed) */
    pid = ct_start(&t, "b", "b.log", NULL);
    CHECK_INT(ct_wait_count(&t, parked, 1, 60, &pk), 1,
              "run with on_error = park parks the event the halted run did "
              "not commit");
    if (pk.n == 1)
        CHECK_STR(th_str(&pk.v[0], "aggregate_id"), "m-2", "m-2's event");
    ct_read_all(&t, pcmd, "read_committed", &pc);
    CHECK_INT(pc.n, 1, "m-1's command is not sent again");
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run exits 0 on SIGTERM");
    if (check_failures_) {
        ct_dump_log(&t, "a.log");
        ct_dump_log(&t, "b.log");
    }
    rd_kafka_destroy(p);
    th_recs_free(&pc);
    th_recs_free(&pk);
    return check_done();
}
