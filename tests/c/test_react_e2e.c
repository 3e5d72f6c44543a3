/*
 * test_react_e2e.c - reactions end to end through `evlua run` on the real
 * broker: commands into the member aggregate, its first-address events
 * react into ShipKit commands for the parcel aggregate (one per member;
 * a second move sends nothing), which the command side applies. Each
 * reaction command is on parcel.commands once, keyed by its aggregate id
 * on the murmur2 partition, with a UUIDv5 id, causation_id = the source
 * event's id, the source's correlation and user ids; the parcel's events
 * carry the same correlation id and the command as their causation.
 * Meanwhile the metrics endpoint counts the reactions by outcome (the
 * three moves: two reacted, one returned nil; the joins have no reaction
 * and are not counted) and /readyz is 200 naming the parcel reactor.
 */
#include "reacttest.h"

/* The MemberMoved event of member aid that says first = true. */
static const th_rec *first_move(const th_recs *evs, const char *aid)
{
    for (size_t i = 0; i < evs->n; i++) {
        const th_rec *e = &evs->v[i];
        cJSON *d = cJSON_GetObjectItemCaseSensitive(e->json, "data");
        if (th_str(e, "type") &&
            strcmp(th_str(e, "type"), "MemberMoved") == 0 &&
            th_str(e, "aggregate_id") &&
            strcmp(th_str(e, "aggregate_id"), aid) == 0 &&
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "first")))
            return e;
    }
    return NULL;
}

static const th_rec *by_member(const th_recs *recs, const char *kit)
{
    for (size_t i = 0; i < recs->n; i++)
        if (th_str(&recs->v[i], "aggregate_id") &&
            strcmp(th_str(&recs->v[i], "aggregate_id"), kit) == 0)
            return &recs->v[i];
    return NULL;
}

static void check_command(const th_rec *c, const th_rec *src, const char *kit,
                          const char *user)
{
    char what[128];
    snprintf(what, sizeof what, "the command for %s", kit);
    CHECK(c != NULL && src != NULL, what);
    if (!c || !src)
        return;
    const char *id = th_str(c, "id");
    CHECK_STR(th_str(c, "type"), "ShipKit", "the reaction's command type");
    CHECK_STR(th_str(c, "aggregate_type"), "parcel", "aggregate_type");
    CHECK_STR(c->key, kit, "keyed by the command's aggregate id");
    CHECK_INT(c->partition, evl_kafka_murmur2_partition(kit, strlen(kit), 3),
              "on the murmur2 partition of its key");
    CHECK(id && strlen(id) == 36 && id[14] == '5',
          "the command id is a UUIDv5 (deterministic)");
    CHECK_STR(rt_meta(c, "causation_id"), th_str(src, "id"),
              "causation_id is the source event's id");
    CHECK_STR(rt_meta(c, "correlation_id"), th_str(src, "correlation_id"),
              "correlation_id is the source event's");
    if (user)
        CHECK_STR(rt_meta(c, "user_id"), user, "user_id from the source event");
    else
        CHECK(rt_meta(c, "user_id") == NULL,
              "no user_id when the source event has none");
}

/* A reload whose react table names a new source type (parcel reacting
 * to its own KitShipped) makes the running reactor read that topic too:
 * a thank-you note per kit already shipped. */
static void check_new_source(ct *t, pid_t pid, const char *pev)
{
    th_recs pe = {0};
    rt_edit_fixture(
        t, "parcel.lua", "  react = {\n",
        "  react = {\n"
        "    [\"parcel.KitShipped\"] = function(e, ctx)\n"
        "      return { aggregate_id = 'thanks-' .. e.aggregate_id,\n"
        "               type = 'Note', data = { text = 'thanks' } }\n"
        "    end,\n");
    kill(pid, SIGHUP);
    CHECK(ct_wait_log(t, "a.log", "reactor subscribed to the reloaded sources",
                      30000),
          "SIGHUP: the reactor subscribes to the new source type");
    long long deadline = th_now_ms() + 90000;
    size_t notes = 0;
    while (notes < 2 && th_now_ms() < deadline) {
        th_recs_free(&pe);
        memset(&pe, 0, sizeof pe);
        ct_read_all(t, pev, "read_committed", &pe);
        notes = (size_t)rt_count(&pe, "type", "Noted");
        if (notes < 2)
            th_sleep_ms(500);
    }
    CHECK_INT((long long)notes, 2,
              "a Noted event per kit shipped: the reloaded react key reads "
              "parcel.events from its start");
    CHECK(by_member(&pe, "kit-m-1") != NULL, "the kits are still there");
    th_recs_free(&pe);
}

/* A reload that gives a react table to a type that had none (member,
 * thanking for each kit shipped) starts that type's reactor in the
 * running process: a Poked event per kit, its metrics and readiness, and
 * its group on the lag thread's list. */
static void check_new_reactor(ct *t, pid_t pid, int port)
{
    char mev[256], series[512];
    th_recs me = {0};
    ct_topic(t, "member", "events", mev, sizeof mev);
    rt_edit_fixture(t, "member.lua", "  neutral = { \"Poked\" },\n",
                    "  neutral = { \"Poked\" },\n"
                    "  react = {\n"
                    "    [\"parcel.KitShipped\"] = function(e, ctx)\n"
                    "      return { aggregate_id = 'thanked-' .. "
                    "e.data.member,\n"
                    "               type = 'Poke', data = { mode = 'kit' } }\n"
                    "    end,\n"
                    "  },\n");
    kill(pid, SIGHUP);
    CHECK(ct_wait_log(t, "a.log", "reload started a pipeline", 30000),
          "SIGHUP: evlua run starts the new type's reactor");
    long long deadline = th_now_ms() + 90000;
    long long poked = 0;
    while (poked < 2 && th_now_ms() < deadline) {
        th_recs_free(&me);
        memset(&me, 0, sizeof me);
        ct_read_all(t, mev, "read_committed", &me);
        poked = (long long)rt_count(&me, "type", "Poked");
        if (poked < 2)
            th_sleep_ms(500);
    }
    CHECK_INT(poked, 2,
              "a Poked event per kit shipped: the member reactor started at "
              "the reload reads parcel.events from its start");
    CHECK(by_member(&me, "thanked-m-1") && by_member(&me, "thanked-m-2"),
          "one for each member's kit");
    th_recs_free(&me);
    deadline = th_now_ms() + 30000;
    while (rt_reactions(port, "member", "reacted") < 2 &&
           th_now_ms() < deadline)
        th_sleep_ms(200);
    CHECK_INT(rt_reactions(port, "member", "reacted"), 2,
              "evlua_reactions_total{type=\"member\",outcome=\"reacted\"}");
    snprintf(series, sizeof series,
             "evlua_consumer_lag_seconds{group=\"%s.react.member\"}",
             t->prefix);
    deadline = th_now_ms() + 30000;
    while (rt_metric(port, series) < 0 && th_now_ms() < deadline)
        th_sleep_ms(500);
    CHECK(rt_metric(port, series) >= 0,
          "the lag thread measures the new reactor's group");
    char b[16384];
    th_readyz(port, b, sizeof b);
    CHECK_HAS(b, "\"reactions.member\"", "/readyz names the member reactor");
}

/* reactions.batch_bytes closes a batch at its byte bound: four 70 KB
 * events, written while evlua is stopped (so they wait together), take
 * four transactions at a 64 KiB bound where batch_size alone would take
 * them in one. */
static void check_batch_bytes(ct *t, rd_kafka_t *p)
{
    size_t n = 70 * 1024;
    char *data = malloc(n + 32);
    snprintf(data, n + 32, "{\"name\":\"%0*d\"}", (int)n, 7);
    for (int i = 3; i <= 6; i++) {
        char id[32], aid[32];
        snprintf(id, sizeof id, "c-big-%d", i);
        snprintf(aid, sizeof aid, "m-%d", i);
        ct_send(t, p, "member", id, "Join", aid, data, NULL);
    }
    ct_flush(p);
    free(data);
    rt_config_ex(t, "b", "batch_bytes = 65536,",
                 "metrics = { listen = '127.0.0.1:0' },");
    pid_t pid = ct_start(t, "b", "b.log", NULL);
    int port = rt_metrics_port(t, "b.log", 30000);
    const char *series = "evlua_reaction_transactions_total{type=\"parcel\","
                         "outcome=\"committed\"}";
    long long deadline = th_now_ms() + 60000;
    while (rt_metric(port, series) < 4 && th_now_ms() < deadline)
        th_sleep_ms(200);
    CHECK(rt_metric(port, series) >= 4,
          "reactions.batch_bytes 65536: four 70 KB events take four "
          "transactions");
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run (b) exits 0");
    if (check_failures_)
        ct_dump_log(t, "b.log");
}

int main(void)
{
    ct t;
    char mev[256], pcmd[256], pev[256], pres[256];
    th_recs me = {0}, pc = {0}, pe = {0}, pr = {0};

    rt_init(&t, "re2e", NULL);
    rt_config_ex(&t, "a", NULL, "metrics = { listen = '127.0.0.1:0' },");
    ct_topic(&t, "member", "events", mev, sizeof mev);
    ct_topic(&t, "parcel", "commands", pcmd, sizeof pcmd);
    ct_topic(&t, "parcel", "events", pev, sizeof pev);
    ct_topic(&t, "parcel", "results", pres, sizeof pres);

    pid_t pid = ct_start(&t, "a", "a.log", NULL);
    rd_kafka_t *p = ct_producer(&t);
    CHECK(ct_wait_log(&t, "a.log", "reactor started", 60000),
          "evlua run starts the parcel reactor");
    ct_wait_topic(&t, pres, 30);
    int port = rt_metrics_port(&t, "a.log", 30000);
    CHECK(port > 0, "evlua run logs the port of its metrics endpoint");
    CHECK_INT(rt_reactions(port, "parcel", "reacted"), 0,
              "the reactor's counters are there from its start, at 0");

    const char *meta1 =
        "\"metadata\":{\"user_id\":\"u-1\",\"correlation_id\":\"corr-1\"}";
    ct_send(&t, p, "member", "c-1", "Join", "m-1", "{\"name\":\"Ann\"}", meta1);
    ct_send(&t, p, "member", "c-2", "Join", "m-2", "{\"name\":\"Bo\"}", NULL);
    ct_send(&t, p, "member", "c-3", "Move", "m-1", "{\"address\":\"1 Main\"}",
            meta1);
    ct_send(&t, p, "member", "c-4", "Move", "m-1", "{\"address\":\"2 Side\"}",
            meta1);
    ct_send(&t, p, "member", "c-5", "Move", "m-2", "{\"address\":\"3 High\"}",
            NULL);
    ct_flush(p);

    CHECK_INT(ct_wait_count(&t, pev, 2, 90, &pe), 2,
              "two KitShipped events: one per member's first address");
    ct_read_all(&t, mev, "read_committed", &me);
    ct_read_all(&t, pcmd, "read_committed", &pc);
    ct_read_all(&t, pres, "read_committed", &pr);
    CHECK_INT(me.n, 5, "five member events");
    CHECK_INT(pc.n, 2,
              "two reaction commands, no more (a second move "
              "reacts with nil)");
    const th_rec *s1 = first_move(&me, "m-1"), *s2 = first_move(&me, "m-2");
    check_command(by_member(&pc, "kit-m-1"), s1, "kit-m-1", "u-1");
    check_command(by_member(&pc, "kit-m-2"), s2, "kit-m-2", NULL);
    CHECK_INT(rt_count(&pr, "status", "accepted"), 2,
              "the parcel aggregate accepted both");
    {
        /* the broker auto-creates topics (num.partitions = 4): a topic
         * evlua did not create itself would show it */
        char parked[256];
        snprintf(parked, sizeof parked, "%s.parcel.reactions.parked", t.prefix);
        CHECK_INT(ct_partitions(&t, pcmd), 3,
                  "parcel.commands has commands.partitions, not the "
                  "broker's num.partitions (no auto-creation)");
        CHECK_INT(ct_partitions(&t, parked), 1,
                  "the parked topic has the one partition evlua creates");
    }

    const th_rec *k1 = by_member(&pe, "kit-m-1"),
                 *c1 = by_member(&pc, "kit-m-1");
    CHECK(k1 && c1, "kit-m-1's event and command");
    if (k1 && c1) {
        CHECK_STR(th_str(k1, "type"), "KitShipped", "the parcel's event");
        CHECK_STR(th_str(k1, "correlation_id"), "corr-1",
                  "the correlation id is intact across the chain");
        CHECK_STR(th_str(k1, "causation_id"), th_str(c1, "id"),
                  "the parcel's event was caused by the reaction command");
        CHECK_STR(th_str(k1, "user_id"), "u-1", "user id across the chain");
    }
    const th_rec *k2 = by_member(&pe, "kit-m-2");
    if (k2 && s2)
        CHECK_STR(th_str(k2, "correlation_id"), th_str(s2, "correlation_id"),
                  "m-2's correlation id (its command's id) carries over");

    {
        /* counted at each commit: the second move of m-1 may commit after
         * the kits are shipped */
        long long deadline = th_now_ms() + 60000;
        while ((rt_reactions(port, "parcel", "reacted") < 2 ||
                rt_reactions(port, "parcel", "none") < 1) &&
               th_now_ms() < deadline)
            th_sleep_ms(200);
        CHECK_INT(rt_reactions(port, "parcel", "reacted"), 2,
                  "evlua_reactions_total{type=\"parcel\",outcome=\"reacted\"}: "
                  "the two first moves");
        CHECK_INT(rt_reactions(port, "parcel", "none"), 1,
                  "evlua_reactions_total{type=\"parcel\",outcome=\"none\"}: "
                  "m-1's second move");
        CHECK_INT(rt_reactions(port, "parcel", "parked"), 0,
                  "evlua_reactions_total{type=\"parcel\",outcome=\"parked\"}");
        CHECK_INT(
            rt_metric(port, "evlua_reaction_commands_total{type=\"parcel\"}"),
            pc.n,
            "evlua_reaction_commands_total: the commands on "
            "parcel.commands");
        CHECK_INT(rt_metric(port, "evlua_reactions_parked{type=\"parcel\"}"), 0,
                  "evlua_reactions_parked: no parked source aggregate");
        CHECK(rt_metric(port,
                        "evlua_reaction_transactions_total{type=\"parcel\","
                        "outcome=\"committed\"}") >= 1,
              "the reactor committed its transactions");
    }
    {
        char b[16384];
        long long deadline = th_now_ms() + 60000;
        while (!strstr(th_readyz(port, b, sizeof b), " 200") &&
               th_now_ms() < deadline)
            th_sleep_ms(200);
        fprintf(stderr, "/readyz: %s\n", b);
        CHECK_HAS(b, " 200", "/readyz: 200 once the reactor runs");
        CHECK_HAS(b, "\"reactions.parcel\":{\"ready\":true",
                  "/readyz names the parcel reactor, ready");
    }
    {
        char b[8192];
        CHECK_INT(rt_evlua(&t, "parked list --reactions parcel", b, sizeof b),
                  0, "evlua parked list --reactions parcel: exit 0");
        CHECK_HAS(b, "no parked reactions", "nothing parked");
    }

    check_new_source(&t, pid, pev);
    check_new_reactor(&t, pid, port);
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run exits 0 on SIGTERM");
    CHECK(ct_log_has(&t, "a.log", "reactions so far"),
          "the reactor logs its counts at the stop");
    if (check_failures_)
        ct_dump_log(&t, "a.log");
    check_batch_bytes(&t, p);
    rd_kafka_destroy(p);
    th_recs_free(&me);
    th_recs_free(&pc);
    th_recs_free(&pe);
    th_recs_free(&pr);
    return check_done();
}
