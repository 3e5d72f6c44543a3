/*
 * test_react_chaos.c - reactions exactly once across kill -9, and a
 * replay, on the real broker (slow):
 *   - 10,000 source events (200 members poked 50 times, each poke's
 *     reaction one Note command) while `evlua run` is killed with -9
 *     eight times: every reaction command is on parcel.commands exactly
 *     once (counted by its deterministic id), one per source event
 *     (causation_id), and the parcel aggregate applied each once;
 *   - replay: with evlua stopped, the reactor's group is deleted, so the
 *     next run reacts to every source event again from offset 0: every
 *     re-sent command is answered `duplicate` and no new event appears.
 * EVLUA_CHAOS_KILLS overrides the number of kills.
 */
#include "reacttest.h"

#define AGGS   200
#define ROUNDS 50
#define N      (AGGS * ROUNDS)

static ct t;

static void *stream(void *arg)
{
    rd_kafka_t *p = ct_producer(&t);
    (void)arg;
    for (int r = 0; r < ROUNDS; r++) {
        for (int a = 0; a < AGGS; a++) {
            char id[64], aid[32];
            snprintf(id, sizeof id, "poke-%d-%d", r, a);
            snprintf(aid, sizeof aid, "m-%d", a);
            ct_send(&t, p, "member", id, "Poke", aid, "{\"mode\":\"ok\"}",
                    NULL);
        }
        ct_flush(p);
        th_sleep_ms(600);
    }
    rd_kafka_destroy(p);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* How many values of member name of recs occur more than once, and how
 * many distinct values there are (into *distinct). */
static size_t repeats(const th_recs *recs, const char *name, size_t *distinct)
{
    char **v = calloc(recs->n + 1, sizeof *v);
    size_t n = 0, rep = 0;
    for (size_t i = 0; i < recs->n; i++) {
        const char *s = th_str(&recs->v[i], name);
        if (!s)
            s = rt_meta(&recs->v[i], name);
        if (s)
            v[n++] = (char *)s;
    }
    qsort(v, n, sizeof *v, cmp);
    *distinct = n > 0;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(v[i], v[i - 1]) == 0)
            rep++;
        else
            (*distinct)++;
    }
    free(v);
    return rep;
}

int main(void)
{
    char mev[256], pcmd[256], pev[256], pres[256], log[64], group[300];
    th_recs me = {0}, pc = {0}, pe = {0}, pr = {0};
    int kills =
        getenv("EVLUA_CHAOS_KILLS") ? atoi(getenv("EVLUA_CHAOS_KILLS")) : 8;
    size_t distinct = 0;
    pthread_t th;

    srand((unsigned)getpid());
    rt_init(&t, "rchaos", NULL);
    ct_topic(&t, "member", "events", mev, sizeof mev);
    ct_topic(&t, "parcel", "commands", pcmd, sizeof pcmd);
    ct_topic(&t, "parcel", "events", pev, sizeof pev);
    ct_topic(&t, "parcel", "results", pres, sizeof pres);
    snprintf(group, sizeof group, "%s.react.parcel", t.prefix);

    pid_t pid = ct_start(&t, "a", "run0.log", NULL);
    CHECK(ct_wait_log(&t, "run0.log", "reactor started", 60000),
          "the reactor starts");
    if (pthread_create(&th, NULL, stream, NULL) != 0)
        th_die("pthread_create failed");
    snprintf(log, sizeof log, "run0.log");
    for (int k = 1; k <= kills; k++) {
        /* kill while it reacts: once the reactor has partitions */
        for (int i = 0; i < 600 && !ct_log_has(&t, log,
                                               "reactor partitions "
                                               "assigned");
             i++)
            th_sleep_ms(50);
        th_sleep_ms(200 + rand() % 2500);
        kill(pid, SIGKILL);
        CHECK_INT(th_wait(pid, 10), 128 + SIGKILL, "killed with -9");
        fprintf(stderr, "kill %d done\n", k);
        snprintf(log, sizeof log, "run%d.log", k);
        pid = ct_start(&t, "a", log, NULL);
    }
    pthread_join(th, NULL);

    CHECK_INT(ct_wait_count(&t, pres, N, 600, &pr), N,
              "one result per reaction command");
    ct_read_all(&t, mev, "read_committed", &me);
    ct_read_all(&t, pcmd, "read_committed", &pc);
    ct_read_all(&t, pev, "read_committed", &pe);
    CHECK_INT(me.n, N, "10,000 source events");
    CHECK_INT(pc.n, N, "10,000 reaction commands, none twice");
    CHECK_INT(repeats(&pc, "id", &distinct), 0, "no command id twice");
    CHECK_INT(distinct, N, "10,000 distinct command ids");
    CHECK_INT(repeats(&pc, "causation_id", &distinct), 0,
              "one command per source event");
    CHECK_INT(distinct, N, "every source event reacted");
    CHECK_INT(rt_count(&pr, "status", "accepted"), N, "all accepted");
    CHECK_INT(pe.n, N, "the parcel aggregate applied each once");
    CHECK_INT(repeats(&pe, "causation_id", &distinct), 0,
              "no command applied twice");

    /* replay from offset 0 */
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "the last run exits 0");
    rt_delete_group(&t, group);
    pid = ct_start(&t, "a", "replay.log", NULL);
    CHECK_INT(ct_wait_count(&t, pres, 2 * N, 600, &pr), 2 * N,
              "every re-sent command is answered");
    CHECK_INT(rt_count(&pr, "status", "duplicate"), N, "... as a duplicate");
    ct_read_all(&t, pev, "read_committed", &pe);
    CHECK_INT(pe.n, N, "no new events");
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "the replay run exits 0");
    if (check_failures_) {
        ct_dump_log(&t, log);
        ct_dump_log(&t, "replay.log");
    }
    th_recs_free(&me);
    th_recs_free(&pc);
    th_recs_free(&pe);
    th_recs_free(&pr);
    return check_done();
}
