/*
 * test_cmd_scale.c - scale-out over a 6-partition commands topic: two
 * `evlua run` instances in one group (distinct transactional ids) share
 * the stream; a third joins; one leaves by SIGTERM, another is killed
 * with -9, all mid-stream. Every command has exactly one result, every
 * accepted command's events appear exactly once, and no aggregate was
 * handled by two instances at once or by an owner without its state: its
 * sequences have no repeat and no gap.
 */
#include "cmdtest.h"

#define AGGS   120
#define ROUNDS 25

static ct t;
static char *ids[AGGS * ROUNDS];

static void wait_consuming(const char *log)
{
    for (int i = 0; i < 600 && !ct_log_has(&t, log, "states restored"); i++)
        th_sleep_ms(50);
}

int main(void)
{
    char events[256], results[256];
    th_recs evs = {0}, res = {0};
    pid_t a, b, c;
    size_t n = AGGS * ROUNDS;

    ct_init_customer(&t, "scale", "a", "batch_size = 100,", NULL);
    ct_config(&t, "b", "b", "batch_size = 100,", NULL);
    ct_config(&t, "c", "c", "batch_size = 100,", NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);

    a = ct_start(&t, "a", "a.log", NULL);
    ct_wait_topic(&t, results, 30);
    b = ct_start(&t, "b", "b.log", NULL);
    ct_stream stream = {
        .t = &t, .aggs = AGGS, .rounds = ROUNDS, .pause_ms = 1500, .ids = ids};
    ct_stream_start(&stream);
    wait_consuming("b.log");
    th_sleep_ms(4000);

    c = ct_start(&t, "c", "c.log", NULL);
    fprintf(stderr, "third instance joined\n");
    wait_consuming("c.log");
    th_sleep_ms(5000);

    CHECK_INT(th_stop(a, SIGTERM, 30), 0,
              "an instance leaving by SIGTERM "
              "exits 0");
    fprintf(stderr, "first instance left (SIGTERM)\n");
    th_sleep_ms(6000);

    kill(b, SIGKILL);
    CHECK_INT(th_wait(b, 10), 128 + SIGKILL, "an instance killed with -9");
    fprintf(stderr, "second instance killed\n");
    ct_stream_join(&stream);

    ct_check_run(&t, events, results, ids, n, &evs, &res);
    CHECK(ct_log_has(&t, "c.log", "partitions assigned"),
          "the third instance took partitions");

    CHECK_INT(th_stop(c, SIGTERM, 30), 0, "the last instance exits 0");
    if (check_failures_) {
        ct_dump_log(&t, "a.log");
        ct_dump_log(&t, "b.log");
        ct_dump_log(&t, "c.log");
    }
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    th_recs_free(&evs);
    th_recs_free(&res);
    return check_done();
}
