/*
 * test_cmd_chaos.c - kill -9 of `evlua run` at random moments while 5,000
 * commands for 200 aggregates stream in, restarted each time, five times:
 * every command has exactly one result, every accepted command's events
 * appear exactly once, sequences per aggregate are contiguous, and the
 * last snapshot of each aggregate has the version of its last event.
 *
 * Each kill comes at a random moment 0.2 to 2.7 s after the instance
 * has restored its states and started consuming, so kills land in every
 * phase of a batch: deciding, producing, committing, between batches.
 *
 * EVLUA_CHAOS_COMMANDS / EVLUA_CHAOS_KILLS change the size of the run.
 */
#include "cmdtest.h"

#define AGGS 200

static ct t;
static int ncommands = 5000;
static char **ids;

int main(void)
{
    char events[256], results[256], state[256], log[64];
    th_recs evs = {0}, res = {0}, st = {0};
    int kills = 5;
    pid_t pid;

    if (getenv("EVLUA_CHAOS_COMMANDS"))
        ncommands = atoi(getenv("EVLUA_CHAOS_COMMANDS")) / AGGS * AGGS;
    if (getenv("EVLUA_CHAOS_KILLS"))
        kills = atoi(getenv("EVLUA_CHAOS_KILLS"));
    ids = calloc((size_t)ncommands, sizeof *ids);
    srand((unsigned)getpid());
    ct_init_customer(&t, "chaos", "a", "batch_size = 50,", NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);
    ct_topic(&t, "customer", "state", state, sizeof state);

    pid = ct_start(&t, "a", "run0.log", NULL);
    ct_wait_topic(&t, results, 30);
    ct_stream stream = {.t = &t,
                        .aggs = AGGS,
                        .rounds = ncommands / AGGS,
                        .pause_ms = 1800, /* outlasts the five kills */
                        .emails = 1,
                        .ids = ids};
    ct_stream_start(&stream);
    snprintf(log, sizeof log, "run0.log");
    for (int k = 1; k <= kills; k++) {
        /* kill while it works: once it consumes, after a random delay */
        for (int i = 0; i < 600 && !ct_log_has(&t, log, "states restored"); i++)
            th_sleep_ms(50);
        th_sleep_ms(200 + rand() % 2500);
        kill(pid, SIGKILL);
        CHECK_INT(th_wait(pid, 10), 128 + SIGKILL, "killed with -9");
        fprintf(stderr, "kill %d done\n", k);
        snprintf(log, sizeof log, "run%d.log", k);
        pid = ct_start(&t, "a", log, NULL);
    }
    ct_stream_join(&stream);

    ct_check_run(&t, events, results, ids, (size_t)ncommands, &evs, &res);

    /* the last snapshot of each aggregate matches its last event */
    ct_read_all(&t, state, "read_committed", &st);
    int mismatches = 0;
    for (int a = 0; a < AGGS; a++) {
        char agg[32];
        long long last_seq = 0, snap = -1;
        snprintf(agg, sizeof agg, "c-%d", a);
        for (size_t i = 0; i < evs.n; i++)
            if (strcmp(th_str(&evs.v[i], "aggregate_id"), agg) == 0)
                last_seq = th_int(&evs.v[i], "sequence");
        for (size_t i = 0; i < st.n; i++)
            if (st.v[i].key && strcmp(st.v[i].key, agg) == 0)
                snap = th_int(&st.v[i], "version");
        mismatches += snap != last_seq;
    }
    CHECK_INT(mismatches, 0, "snapshots agree with the events");

    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "the last run exits 0");
    if (check_failures_)
        ct_dump_log(&t, log);
    for (int i = 0; i < ncommands; i++)
        free(ids[i]);
    free(ids);
    th_recs_free(&evs);
    th_recs_free(&res);
    th_recs_free(&st);
    return check_done();
}
