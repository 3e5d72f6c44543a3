/*
 * test_projector_kill.c - kill -9 cannot make an event count twice or
 * get lost.
 *
 * While a producer writes 20,000 events over 500 aggregates (in 100
 * Kafka transactions), `evlua run` is killed with SIGKILL ten times at
 * random moments and started again, each time in the next isolation mode,
 * every other time with two projector threads (projection.threads = 2:
 * two consumers in the group, two connections). Then it runs until done
 * (two threads) and stops on SIGTERM with exit code 0. The
 * tables equal the state computed here independently (count, sum and
 * last value per aggregate; each (aggregate, sequence) logged exactly
 * once) and every checkpoint equals its aggregate's last sequence.
 *
 * The consumer uses static group membership (group.instance.id), so a
 * restarted instance takes its partitions back without waiting for the
 * dead one's session to time out (with two threads their ids get -1 and
 * -2 appended: a change of thread count waits for the old members'
 * sessions, 6 s).
 */
#include "projtest.h"

#define AGGS   500
#define SEQS   40
#define PER_TX 200

static pt T;
static char topic[128];

static int value(int a, int s)
{
    return (a * 7 + s * 13) % 101;
}

static void config(const char *isolation, int threads)
{
    char extra[1024], pdir[700];
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\", "
             "batch_size = 250, isolation = \"%s\", threads = %d },\n"
             "  kafka = { [\"bootstrap.servers\"] = \"%s\",\n"
             "            [\"group.instance.id\"] = \"%s-1\",\n"
             "            [\"session.timeout.ms\"] = \"6000\" },",
             topic, T.name, isolation, threads, T.bootstrap, T.name);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    pt_config(&T, pdir, extra);
}

int main(void)
{
    static const char *const modes[] = {"aggregate", "batch", "aggregate-tx"};
    char cfg[700], msg[160];
    pt_init(&T, "proj_kill");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 4);
    pt_grid_projection(&T, "kill", 0);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_producer(&T);
    srand((unsigned)getpid());

    pt_grid grid = {&T, topic, "k", AGGS, SEQS, PER_TX, value, 0, 0};
    pt_grid_start(&grid);
    for (int i = 0; i < 10; i++) {
        config(modes[i % 3], 1 + i % 2);
        pid_t pid = pt_spawn(&T, "evlua.log", "run", "-c", cfg, NULL);
        long ms = 300 + rand() % 1300;
        th_sleep_ms(ms);
        /* the first kill may come before the schema exists */
        long long n = pt_long(&T, "SELECT count(*) FROM pg_tables WHERE "
                                  "tablename = 'applied' AND schemaname = "
                                  "current_schema()")
                          ? pt_long(&T, "SELECT count(*) FROM applied")
                          : 0;
        fprintf(stderr,
                "kill -9 #%d after %ld ms (%s, %d thread(s)), %lld applied so "
                "far\n",
                i + 1, ms, modes[i % 3], 1 + i % 2, n);
        kill(pid, SIGKILL);
        CHECK_INT(th_wait(pid, -1), 128 + SIGKILL, "the projector was killed");
    }
    CHECK(pt_grid_join(&grid), "the producer wrote every event");

    config("aggregate", 2);
    int started = pt_log_count(&T, "evlua.log", "partitions assigned");
    int second = pt_log_count(&T, "evlua.log", "thread=2");
    pid_t pid = pt_spawn(&T, "evlua.log", "run", "-c", cfg, NULL);
    CHECK(pt_wait_log(&T, "evlua.log", "partitions assigned", started + 1, 60) >
              started,
          "the last instance gets its partitions");
    CHECK(pt_wait_log(&T, "evlua.log", "thread=2", second + 1, 60) > second,
          "its second thread joins the group too");
    long long n =
        pt_wait_for(&T, AGGS * SEQS, 180, "SELECT count(*) FROM applied");
    CHECK_INT(n, AGGS * SEQS, "after the kills every event gets applied");
    pt_wait_for(&T, AGGS, 30,
                "SELECT count(*) FROM evlua_checkpoints WHERE sequence = 40");
    kill(pid, SIGTERM);
    CHECK_INT(th_wait(pid, -1), 0, "SIGTERM stops the projector with exit 0");

    CHECK_INT(pt_long(&T, "SELECT count(*) FROM (SELECT DISTINCT id, seq "
                          "FROM applied) d"),
              AGGS * SEQS, "no event was applied twice");
    /* the expected state, computed here */
    long long good = pt_grid_good(&grid, 5);
    snprintf(msg, sizeof msg,
             "all %d aggregates equal the independently computed state", AGGS);
    CHECK_INT(good, AGGS, msg);
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM evlua_checkpoints WHERE "
                      "projection = 'kill' AND sequence = %d AND NOT "
                      "parked",
                      SEQS),
              AGGS, "every checkpoint is its aggregate's last sequence");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_parked"), 0,
              "nothing was parked");

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
