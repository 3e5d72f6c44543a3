/*
 * test_react_park.c - failing reactions park their source aggregate, on
 * the real broker through `evlua run`:
 *   - a reaction that errors on m-1's event parks it, and m-1's later
 *     event behind it (in order); m-2's and m-3's reactions flow;
 *   - bad results (no aggregate_id, a non-table, a command type parcel
 *     does not handle, 100,000 commands from one event) each park their
 *     own aggregate with an error naming what was wrong; nothing stops;
 *   - `evlua parked list --reactions` shows them; after the script is
 *     fixed and SIGHUP reloads it, `evlua parked retry --reactions`
 *     releases m-1's events, whose commands are sent once, in order; a
 *     retry that fails again keeps the event parked with the new error;
 *     `drop` removes one; the parked set survives a restart;
 *   - a replay from offset 0 sends the released events' commands again
 *     (answered `duplicate`) and parks nothing twice.
 */
#include "reacttest.h"

static void poke(ct *t, rd_kafka_t *p, const char *id, const char *aid,
                 const char *mode)
{
    char data[128];
    snprintf(data, sizeof data, "{\"mode\":\"%s\"}", mode);
    ct_send(t, p, "member", id, "Poke", aid, data, NULL);
}

/* The parked records of source aggregate aid (kind "parked"). */
static size_t parked_of(const th_recs *pk, const char *aid, const th_rec **v,
                        size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < pk->n; i++) {
        const th_rec *r = &pk->v[i];
        if (th_str(r, "kind") && strcmp(th_str(r, "kind"), "parked") == 0 &&
            th_str(r, "aggregate_id") &&
            strcmp(th_str(r, "aggregate_id"), aid) == 0 && n < max)
            v[n++] = r;
    }
    return n;
}

static void check_bad(const th_recs *pk, const char *aid, const char *needle,
                      const char *what)
{
    const th_rec *v[4];
    size_t n = parked_of(pk, aid, v, 4);
    CHECK_INT(n, 1, what);
    if (n == 1) {
        CHECK_HAS(th_str(v[0], "error"), needle, what);
        CHECK_HAS(th_str(v[0], "error"), "Poked",
                  "the error names the reaction");
    }
}

/* Texts of the Note commands of aggregate aid, in log order, joined by
 * ','. */
static void notes(const th_recs *pc, const char *aid, char *out, size_t n)
{
    out[0] = '\0';
    for (size_t i = 0; i < pc->n; i++) {
        const th_rec *c = &pc->v[i];
        if (!th_str(c, "aggregate_id") ||
            strcmp(th_str(c, "aggregate_id"), aid) != 0)
            continue;
        cJSON *d = cJSON_GetObjectItemCaseSensitive(c->json, "data");
        const char *txt =
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "text"));
        snprintf(out + strlen(out), n - strlen(out), "%s%s", out[0] ? "," : "",
                 txt ? txt : "?");
    }
}

static int unique_ids(const th_recs *pc)
{
    for (size_t i = 0; i < pc->n; i++)
        for (size_t j = i + 1; j < pc->n; j++)
            if (th_str(&pc->v[i], "id") && th_str(&pc->v[j], "id") &&
                strcmp(th_str(&pc->v[i], "id"), th_str(&pc->v[j], "id")) == 0)
                return 0;
    return 1;
}

int main(void)
{
    ct t;
    char pcmd[256], pev[256], parked[256], out[16384], txt[512];
    th_recs pc = {0}, pe = {0}, pk = {0};

    rt_init(&t, "rpark", NULL);
    ct_topic(&t, "parcel", "commands", pcmd, sizeof pcmd);
    ct_topic(&t, "parcel", "events", pev, sizeof pev);
    ct_topic(&t, "parcel", "reactions.parked", parked, sizeof parked);

    pid_t pid = ct_start(&t, "a", "a.log", NULL);
    rd_kafka_t *p = ct_producer(&t);
    CHECK(ct_wait_log(&t, "a.log", "reactor started", 60000),
          "the parcel reactor starts");

    poke(&t, p, "c-1", "m-1", "boom");
    poke(&t, p, "c-2", "m-1", "ok");
    poke(&t, p, "c-3", "m-2", "ok");
    poke(&t, p, "c-4", "b-noid", "noid");
    poke(&t, p, "c-5", "b-nt", "nontable");
    poke(&t, p, "c-6", "b-bt", "badtype");
    poke(&t, p, "c-7", "b-fl", "flood");
    poke(&t, p, "c-8", "m-3", "ok");
    ct_flush(p);

    CHECK_INT(ct_wait_count(&t, pev, 2, 90, &pe), 2,
              "m-2's and m-3's reactions flow past the failing ones");
    CHECK_INT(ct_wait_count(&t, parked, 6, 60, &pk), 6,
              "six events parked: m-1's two, one per bad result");
    const th_rec *m1[4];
    CHECK_INT(parked_of(&pk, "m-1", m1, 4), 2, "m-1's two events are parked");
    if (parked_of(&pk, "m-1", m1, 4) == 2) {
        CHECK_HAS(th_str(m1[0], "error"), "boom", "the first has the error");
        CHECK_HAS(th_str(m1[1], "error"), "parked behind",
                  "the second is parked behind it");
        cJSON *s0 = cJSON_GetObjectItemCaseSensitive(m1[0]->json, "source"),
              *s1 = cJSON_GetObjectItemCaseSensitive(m1[1]->json, "source");
        CHECK(cJSON_GetObjectItemCaseSensitive(s0, "offset")->valuedouble <
                  cJSON_GetObjectItemCaseSensitive(s1, "offset")->valuedouble,
              "in order");
        CHECK_STR(m1[0]->key, "member/m-1", "keyed by the source aggregate");
    }
    check_bad(&pk, "b-noid", "aggregate_id", "no aggregate_id: parked, named");
    check_bad(&pk, "b-nt", "react", "a non-table: parked");
    check_bad(&pk, "b-bt", "Nope", "an unknown command type: parked, named");
    check_bad(&pk, "b-fl", "max_commands", "100,000 commands: parked, named");

    ct_read_all(&t, pcmd, "read_committed", &pc);
    CHECK_INT(pc.n, 2, "only the two good reactions sent commands");

    CHECK_INT(rt_evlua(&t, "parked list --reactions parcel", out, sizeof out),
              0, "parked list --reactions parcel: exit 0");
    CHECK_HAS(out, "member/m-1: 2 events", "the list shows m-1's two events");
    CHECK_HAS(out, "boom", "... with the error");
    CHECK_HAS(out, "member/b-fl: 1 event", "and the flood");
    CHECK_INT(rt_evlua(&t, "parked list --reactions", out, sizeof out), 0,
              "parked list --reactions (every reacting type): exit 0");
    CHECK_HAS(out, "member/m-1", "it lists m-1 too");

    /* a retry before the fix fails again and keeps the event */
    CHECK_INT(rt_evlua(&t, "parked retry --reactions parcel member b-noid", out,
                       sizeof out),
              1, "a retry that fails again exits 1");
    CHECK_HAS(out, "failed again", "and says so");

    /* fix the script, reload, retry */
    rt_edit_fixture(&t, "parcel.lua", "error(\"boom\")",
                    "return { aggregate_id = id, type = \"Note\", "
                    "data = { text = \"fixed\" } }");
    kill(pid, SIGHUP);
    CHECK(ct_wait_log(&t, "a.log", "scripts reloaded", 30000),
          "SIGHUP reloads the scripts");
    th_sleep_ms(1000); /* the reactor swaps between batches */
    CHECK_INT(rt_evlua(&t, "parked retry --reactions parcel member m-1", out,
                       sizeof out),
              0, "retry after the fix: exit 0");
    CHECK_HAS(out, "2 released", "both of m-1's events are released");
    CHECK_INT(ct_wait_count(&t, pcmd, 4, 30, &pc), 4,
              "their two commands are sent");
    notes(&pc, "note-m-1", txt, sizeof txt);
    CHECK_STR(txt, "fixed,ok", "m-1's commands in the order of its events");
    CHECK_INT(rt_evlua(&t, "parked retry --reactions parcel member m-1", out,
                       sizeof out),
              1, "a second retry finds nothing parked");
    poke(&t, p, "c-9", "m-1", "ok");
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, pcmd, 5, 30, &pc), 5,
              "m-1's new events react directly again");

    CHECK_INT(rt_evlua(&t, "parked drop --reactions parcel member b-fl", out,
                       sizeof out),
              0, "drop: exit 0");
    CHECK_HAS(out, "1 parked event dropped", "drop says what it dropped");

    /* the parked set survives a restart: b-nt's next event parks */
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run exits 0 on SIGTERM");
    pid = ct_start(&t, "a", "b.log", NULL);
    CHECK(ct_wait_log(&t, "b.log", "parked_aggregates=3", 60000),
          "after a restart the reactor holds the three still parked");
    poke(&t, p, "c-10", "b-nt", "ok");
    ct_flush(p);
    /* 6 parked, 3 requests and their 3 answers, then b-nt's */
    CHECK_INT(ct_wait_count(&t, parked, 13, 60, &pk), 13,
              "b-nt's new event is parked behind its first");
    CHECK_INT(rt_evlua(&t, "parked list --reactions parcel", out, sizeof out),
              0, "list after the restart");
    CHECK_HAS(out, "member/b-nt: 2 events", "b-nt: two events parked");
    CHECK(strstr(out, "member/b-fl") == NULL, "b-fl was dropped");
    CHECK(strstr(out, "member/m-1") == NULL, "m-1 was released");

    ct_read_all(&t, pcmd, "read_committed", &pc);
    CHECK_INT(pc.n, 5, "five commands in all, none twice");
    CHECK(unique_ids(&pc), "every command id once");
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "the restarted run exits 0");

    /* a replay from offset 0: released events react again (duplicates at
     * the aggregate), parked ones are not parked twice, dropped ones not
     * again */
    char group[300];
    th_recs pr = {0};
    snprintf(group, sizeof group, "%s.react.parcel", t.prefix);
    rt_delete_group(&t, group);
    pid = ct_start(&t, "a", "c.log", NULL);
    CHECK_INT(ct_wait_count(&t, pcmd, 10, 60, &pc), 10,
              "the replay sends the five commands again, with their ids");
    CHECK(unique_ids(&pc) == 0, "the same ids as before");
    ct_read_all(&t, parked, "read_committed", &pk);
    CHECK_INT(pk.n, 13, "nothing parked twice, nothing dropped parked again");
    ct_topic(&t, "parcel", "results", group, sizeof group);
    CHECK_INT(ct_wait_count(&t, group, 10, 60, &pr), 10,
              "every command answered");
    CHECK_INT(rt_count(&pr, "status", "duplicate"), 5,
              "the re-sent ones as duplicates");
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "the replay run exits 0");
    th_recs_free(&pr);
    if (check_failures_) {
        ct_dump_log(&t, "a.log");
        ct_dump_log(&t, "b.log");
        ct_dump_log(&t, "c.log");
    }
    rd_kafka_destroy(p);
    th_recs_free(&pc);
    th_recs_free(&pe);
    th_recs_free(&pk);
    return check_done();
}
