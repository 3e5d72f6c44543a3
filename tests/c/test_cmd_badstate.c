/*
 * test_cmd_badstate.c - a state record evlua cannot read stops its
 * partition, loudly, instead of bringing an aggregate back at an older
 * version.
 *
 * A record with a control byte where JSON allows only white space
 * ({"state":<0x01><LF>2,"version":4}) was once read as "OK" by one parser
 * and copied into the next snapshot, which no restore could read again;
 * a record refused at restore was only warned about, so its aggregate
 * started over from the previous snapshot. Now: the partition whose state
 * holds such a record is not consumed (its commands wait, nothing is
 * lost), the log names the partition, offset and reason, and the other
 * partitions go on.
 */
#include "cmdtest.h"

int main(void)
{
    ct t;
    char results[256], state[256];
    th_recs res = {0};
    const char *victim = NULL, *other = NULL;
    int32_t vpart = -1;
    char ids[12][16];
    pid_t pid;

    ct_init_customer(&t, "badstate", "a", NULL, NULL);
    ct_topic(&t, "customer", "results", results, sizeof results);
    ct_topic(&t, "customer", "state", state, sizeof state);
    rd_kafka_t *p = ct_producer(&t);

    pid = ct_start(&t, "a", "a1.log", NULL);
    ct_wait_topic(&t, results, 30);
    for (int i = 0; i < 12; i++) {
        char cmd[32];
        snprintf(ids[i], sizeof ids[i], "c-%d", i);
        snprintf(cmd, sizeof cmd, "reg-%d", i);
        ct_send(&t, p, "customer", cmd, "RegisterCustomer", ids[i],
                "{\"name\":\"Ann\",\"email\":\"ann@example.org\"}", NULL);
    }
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, results, 12, 90, &res), 12,
              "twelve customers registered");
    /* two aggregates on different partitions */
    for (size_t i = 0; i < res.n; i++) {
        const char *agg = th_str(&res.v[i], "aggregate_id");
        if (!victim) {
            victim = agg;
            vpart = res.v[i].partition;
        } else if (!other && res.v[i].partition != vpart) {
            other = agg;
        }
    }
    if (!victim || !other)
        th_die("twelve ids landed on one partition");
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "a clean stop exits 0");

    /* the unreadable snapshot, newest for the victim */
    static const char bad[] = "{\"state\":\x01\n2,\"version\":4}";
    ct_send_raw(p, state, vpart, victim, bad, sizeof bad - 1);
    ct_flush(p);

    pid = ct_start(&t, "a", "a2.log", NULL);
    ct_send(&t, p, "customer", "upd-victim", "UpdateCustomerProfile", victim,
            "{\"name\":\"Anna\"}", NULL);
    ct_send(&t, p, "customer", "upd-other", "UpdateCustomerProfile", other,
            "{\"name\":\"Bob\"}", NULL);
    ct_flush(p);
    th_recs_free(&res);
    CHECK(ct_wait_count(&t, results, 13, 90, &res) >= 13,
          "the other partition's command has its result");
    const th_rec *r = ct_result(&res, "upd-other");
    CHECK_STR(r ? th_str(r, "status") : NULL, "accepted",
              "the other partition goes on");
    CHECK_INT(r ? th_int(r, "version") : -1, 2, "at its right version");
    /* give the victim's command time it would need to be answered */
    th_sleep_ms(5000);
    th_recs_free(&res);
    ct_read_all(&t, results, "read_committed", &res);
    CHECK(ct_result(&res, "upd-victim") == NULL,
          "the victim's partition is not consumed: no result at an older "
          "version");
    CHECK(ct_log_has(&t, "a2.log", "unreadable state record"),
          "the log says why the partition waits");
    CHECK(ct_log_has(&t, "a2.log", "control character") ||
              ct_log_has(&t, "a2.log", "not valid JSON"),
          "and what is wrong with the record");
    if (check_failures_)
        ct_dump_log(&t, "a2.log");
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "it still stops cleanly");

    th_recs_free(&res);
    rd_kafka_destroy(p);
    return check_done();
}
