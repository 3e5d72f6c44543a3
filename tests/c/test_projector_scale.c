/*
 * test_projector_scale.c - several instances of one projection share the
 * work and never apply an event twice.
 *
 * Over a 6-partition topic, while 30,000 events over 600 aggregates are
 * produced: instances A and B start; A is killed (-9) mid-stream and
 * started again; B is frozen (SIGSTOP) longer than its session timeout,
 * so the group gives its partitions away while it may be holding a batch,
 * then thawed (a zombie coming back: its checkpoint writes must fail and
 * be re-read, not double anything); a third instance C joins. At the end
 * the tables equal the independently computed state, each (aggregate,
 * sequence) was applied exactly once, every checkpoint is the aggregate's
 * last sequence, and SIGTERM stops each instance with exit code 0.
 */
#include "projtest.h"

#define AGGS   600
#define SEQS   50
#define PER_TX 200

static pt T;
static char topic[128], cfg[700];

static int value(int a, int s)
{
    return (a * 11 + s * 17) % 97;
}

static pid_t start(const char *log)
{
    int before = pt_log_count(&T, log, "partitions assigned");
    pid_t pid = pt_spawn(&T, log, "run", "-c", cfg, NULL);
    pt_wait_log(&T, log, "partitions assigned", before + 1, 60);
    return pid;
}

static long long applied(void)
{
    return pt_long(&T, "SELECT count(*) FROM applied");
}

int main(void)
{
    char extra[1024], pdir[700], msg[160];
    pt_init(&T, "proj_scale");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 6);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    pt_grid_projection(&T, "scale", 1);
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\", "
             "batch_size = 200 },\n"
             "  kafka = { [\"bootstrap.servers\"] = \"%s\",\n"
             "            [\"session.timeout.ms\"] = \"6000\",\n"
             "            [\"heartbeat.interval.ms\"] = \"500\" },",
             topic, T.name, T.bootstrap);
    pt_config(&T, pdir, extra);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_producer(&T);

    pid_t a = start("a.log");
    pid_t b = start("b.log");
    pt_grid grid = {&T, topic, "s", AGGS, SEQS, PER_TX, value, 0, 0};
    pt_grid_start(&grid);

    th_sleep_ms(3000);
    fprintf(stderr, "kill -9 A at %lld applied\n", applied());
    kill(a, SIGKILL);
    CHECK_INT(th_wait(a, -1), 128 + SIGKILL, "A was killed");
    th_sleep_ms(2000);
    a = start("a.log");
    fprintf(stderr, "A restarted at %lld applied\n", applied());

    th_sleep_ms(2000);
    fprintf(stderr, "SIGSTOP B at %lld applied\n", applied());
    kill(b, SIGSTOP);
    th_sleep_ms(9000); /* > session.timeout.ms: B's partitions move to A */
    fprintf(stderr, "SIGCONT B at %lld applied\n", applied());
    kill(b, SIGCONT);
    th_sleep_ms(2000);
    pid_t c = start("c.log");
    fprintf(stderr, "C joined at %lld applied\n", applied());
    CHECK(applied() < AGGS * SEQS, "C joins while events keep coming");

    CHECK(pt_grid_join(&grid), "the producer wrote every event");
    long long n =
        pt_wait_for(&T, AGGS * SEQS, 180, "SELECT count(*) FROM applied");
    CHECK_INT(n, AGGS * SEQS, "every event gets applied");
    pt_wait_for(&T, AGGS, 30,
                "SELECT count(*) FROM evlua_checkpoints WHERE sequence = 50");
    kill(a, SIGTERM);
    kill(b, SIGTERM);
    kill(c, SIGTERM);
    CHECK_INT(th_wait(a, -1), 0, "SIGTERM stops A with exit 0");
    CHECK_INT(th_wait(b, -1), 0, "SIGTERM stops B with exit 0");
    CHECK_INT(th_wait(c, -1), 0, "SIGTERM stops C with exit 0");

    CHECK_INT(pt_long(&T, "SELECT count(*) FROM (SELECT DISTINCT id, seq "
                          "FROM applied) d"),
              AGGS * SEQS, "no event was applied twice");
    CHECK(pt_long(&T, "SELECT count(DISTINCT pid) FROM applied") >= 3,
          "the work was shared by several instances");
    long long good = pt_grid_good(&grid, 0);
    snprintf(msg, sizeof msg,
             "all %d aggregates equal the independently computed state", AGGS);
    CHECK_INT(good, AGGS, msg);
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM evlua_checkpoints WHERE "
                      "sequence = %d AND NOT parked",
                      SEQS),
              AGGS, "every checkpoint is its aggregate's last sequence");
    fprintf(stderr, "checkpoint conflicts retried: %d (a: %d, b: %d, c: %d)\n",
            pt_log_count(&T, "a.log", "changed concurrently") +
                pt_log_count(&T, "b.log", "changed concurrently") +
                pt_log_count(&T, "c.log", "changed concurrently"),
            pt_log_count(&T, "a.log", "changed concurrently"),
            pt_log_count(&T, "b.log", "changed concurrently"),
            pt_log_count(&T, "c.log", "changed concurrently"));

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
