/*
 * test_projector_poison.c - one bad aggregate never blocks the others.
 *
 * In one batch (one Kafka transaction, one partition): aggregate A's
 * second event violates a CHECK constraint, D's handler raises a Lua
 * error, E's payload is not JSON; B and C are fine. In every isolation
 * mode: B and C are committed, A keeps its first event and has the
 * poison event and every later one parked in order (with the error, the
 * offset and the event JSON), D and E are parked, the offsets advance.
 * A later event of A goes straight to parked. `evlua parked retry` with
 * the broken script changes nothing; after the script is fixed it
 * applies A's events in order and A goes on normally; `evlua parked drop`
 * removes E's unreadable event for good.
 */
#include "projtest.h"

static pt T;

/* The broken script lets n < 0 reach the CHECK constraint and raises a
 * Lua error for events asking for it; the fixed one does neither. */
static const char script_fmt[] =
    "return {\n"
    "  name = 'poison_%s',\n"
    "  schema = [[CREATE TABLE IF NOT EXISTS items_%s (\n"
    "    id text PRIMARY KEY, n integer NOT NULL CHECK (n >= 0),\n"
    "    history text NOT NULL)]],\n"
    "  reset = 'TRUNCATE items_%s',\n"
    "  on = {\n"
    "    Counted = function(e)\n"
    "      %s\n"
    "      return { [[INSERT INTO items_%s (id, n, history) VALUES ($1, $2, "
    "$3)\n"
    "                 ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n,\n"
    "                 history = items_%s.history || ',' || "
    "EXCLUDED.history]],\n"
    "               e.aggregate_id, %s, tostring(e.sequence) }\n"
    "    end,\n"
    "  },\n"
    "}\n";

static void write_script(const char *tag, int fixed)
{
    char path[800], text[2048];
    snprintf(path, sizeof path, "%s/projections/poison_%s.lua", T.dir, tag);
    snprintf(text, sizeof text, script_fmt, tag, tag, tag,
             fixed ? "-- fixed"
                   : "if e.data.explode then error('boom: ' .. "
                     "e.aggregate_id) end",
             tag, tag, fixed ? "math.max(e.data.n, 0)" : "e.data.n");
    th_write_file(path, text);
}

static void count(const char *topic, const char *id, long long seq, int n)
{
    char data[64];
    snprintf(data, sizeof data, "{\"n\":%d}", n);
    pt_ev(&T, topic, id, seq, "Counted", data);
}

/* Run `evlua ARGS` to completion; its output into out. */
static int cli(char *out, size_t n, const char *a1, const char *a2,
               const char *a3, const char *a4)
{
    static int k;
    char log[64], cfg[700];
    snprintf(log, sizeof log, "cli-%d.log", ++k);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pid_t pid = a4 ? pt_spawn(&T, log, a1, a2, "-c", cfg, a3, a4, NULL)
                   : pt_spawn(&T, log, a1, a2, "-c", cfg, a3, NULL);
    return pt_output(&T, pid, log, out, n);
}

static void scenario(const char *mode, const char *tag)
{
    char topic[160], proj[64], b[4096], msg[256];
    evl_projector_stats st;
    snprintf(topic, sizeof topic, "%s.%s.events", T.name, tag);
    snprintf(proj, sizeof proj, "poison_%s", tag);
    pt_topic(&T, topic, 1);
    write_script(tag, 0);
    fprintf(stderr, "--- isolation %s\n", mode);

    pt_begin(&T);
    count(topic, "A", 1, 1);
    count(topic, "B", 1, 1);
    count(topic, "A", 2, -5); /* CHECK (n >= 0) */
    count(topic, "C", 1, 1);
    count(topic, "A", 3, 3);
    pt_ev(&T, topic, "D", 1, "Counted", "{\"n\":1,\"explode\":true}");
    count(topic, "B", 2, 2);
    pt_raw(&T, topic, "E", "Counted", "customer", "{not json", 9);
    count(topic, "A", 4, 4);
    count(topic, "C", 2, 2);
    pt_commit(&T);

    memset(&st, 0, sizeof st);
    snprintf(msg, sizeof msg, "[%s] the projector survives the poison", mode);
    CHECK_INT(pt_catch_up(&T, proj, mode, &st), 0, msg);
    CHECK_INT(st.parked, 5, "A's 3 events, D's and E's are parked");

    snprintf(msg, sizeof msg, "[%s] B and C are committed", mode);
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(id || '=' || n || ':' || history, "
                      "' ' ORDER BY id) FROM items_%s",
                      tag),
              "A=1:1 B=2:1,2 C=2:1,2", msg);
    snprintf(msg, sizeof msg,
             "[%s] A's poison event and every later one are parked, in "
             "order",
             mode);
    CHECK_STR(
        pt_text(&T, b, sizeof b,
                "SELECT string_agg(aggregate_id || coalesce(sequence::"
                "text, '?'), ' ' ORDER BY aggregate_id, id) FROM evlua_parked "
                "WHERE "
                "projection = '%s'",
                proj),
        "A2 A3 A4 D1 E?", msg);
    CHECK_HAS(pt_text(&T, b, sizeof b,
                      "SELECT error FROM evlua_parked WHERE projection = "
                      "'%s' AND aggregate_id = 'A' AND sequence = 2",
                      proj),
              "23514", "the poison event carries the constraint's SQLSTATE");
    CHECK_HAS(b, "check constraint", "and the server's message");
    CHECK_HAS(pt_text(&T, b, sizeof b,
                      "SELECT error FROM evlua_parked WHERE projection = "
                      "'%s' AND aggregate_id = 'D'",
                      proj),
              "boom: D", "a Lua error is parked with its message");
    CHECK_HAS(b, "poison_", "naming the script");
    CHECK_HAS(pt_text(&T, b, sizeof b,
                      "SELECT error FROM evlua_parked WHERE projection = "
                      "'%s' AND aggregate_id = 'E'",
                      proj),
              "not a JSON object", "a bad payload is parked as such");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT event FROM evlua_parked WHERE projection = "
                      "'%s' AND aggregate_id = 'E'",
                      proj),
              "{not json", "with its bytes as they came");
    CHECK_HAS(pt_text(&T, b, sizeof b,
                      "SELECT topic || '/' || partition || '/' || \"offset\" "
                      "|| ' ' || event FROM evlua_parked WHERE projection = "
                      "'%s' AND aggregate_id = 'A' AND sequence = 2",
                      proj),
              "/0/2 {", "with topic, partition, offset and event JSON");
    CHECK_HAS(b, "\"n\":-5", "the event JSON is the original");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(aggregate_id || '=' || sequence || "
                      "':' || parked, ' ' ORDER BY aggregate_id) FROM "
                      "evlua_checkpoints WHERE projection = '%s'",
                      proj),
              "A=1:true B=2:false C=2:false D=0:true E=0:true",
              "checkpoints stop before the parked events and say parked");
    CHECK_INT(pt_long(&T,
                      "SELECT next_offset FROM evlua_offsets WHERE "
                      "projection = '%s'",
                      proj),
              10, "the offsets advanced past the whole batch");

    /* a later event of A follows the others into evlua_parked */
    pt_begin(&T);
    count(topic, "A", 5, 5);
    count(topic, "B", 3, 3);
    pt_commit(&T);
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, proj, mode, &st), 0, "the next run exits 0");
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM evlua_parked WHERE projection = "
                      "'%s' AND aggregate_id = 'A' AND sequence = 5",
                      proj),
              1, "a later event of a parked aggregate goes straight to parked");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT n || ':' || history FROM items_%s WHERE id = "
                      "'B'",
                      tag),
              "3:1,2,3", "while B goes on");

    int rc = cli(b, sizeof b, "parked", "list", proj, NULL);
    CHECK_INT(rc, 0, "evlua parked list exits 0");
    snprintf(msg, sizeof msg,
             "%s customer/A: 4 events, sequences 2..5, parked since", proj);
    CHECK_HAS(b, msg, "parked list shows A with its events");
    CHECK_HAS(b, "error: new row for relation", "and its first error");

    rc = cli(b, sizeof b, "parked", "retry", proj, "A");
    CHECK_INT(rc, 1, "retry with the broken script exits 1");
    CHECK_HAS(b, "0 applied", "it applies nothing");
    CHECK_HAS(b, "4 still parked", "everything stays parked");
    CHECK_HAS(b, "sequence 2 failed again", "naming the event that failed");

    write_script(tag, 1);
    rc = cli(b, sizeof b, "parked", "retry", proj, "A");
    CHECK_INT(rc, 0, "retry with the fixed script exits 0");
    CHECK_HAS(b, "4 applied", "it applies the 4 parked events");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT n || ':' || history FROM items_%s WHERE id = "
                      "'A'",
                      tag),
              "5:1,2,3,4,5", "A's events were applied in order");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT sequence || ':' || parked FROM "
                      "evlua_checkpoints WHERE projection = '%s' AND "
                      "aggregate_id = 'A'",
                      proj),
              "5:false", "A's checkpoint moved on; A is no longer parked");
    rc = cli(b, sizeof b, "parked", "retry", proj, "D");
    CHECK_INT(rc, 0, "D's Lua error is gone with the fix too");

    rc = cli(b, sizeof b, "parked", "retry", proj, "E");
    CHECK_INT(rc, 1, "E's payload can never work");
    rc = cli(b, sizeof b, "parked", "drop", proj, "E");
    CHECK_INT(rc, 0, "so it is dropped");
    CHECK_HAS(b, "1 parked event dropped", "drop says how many");
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM evlua_parked WHERE projection = "
                      "'%s'",
                      proj),
              0, "nothing is left parked");
    rc = cli(b, sizeof b, "parked", "list", proj, NULL);
    CHECK_HAS(b, "no parked events", "parked list says so");

    /* a projection evlua does not know is a usage error everywhere (exit
     * 2 naming it), not silence or a runtime failure */
    rc = cli(b, sizeof b, "parked", "list", "nosuch", NULL);
    CHECK_INT(rc, 2, "parked list of an unknown projection exits 2");
    CHECK_HAS(b, "unknown projection 'nosuch'", "naming it");
    rc = cli(b, sizeof b, "parked", "retry", "nosuch", "A");
    CHECK_INT(rc, 2, "parked retry of an unknown projection exits 2");
    CHECK_HAS(b, "no projection script has name nosuch", "naming it");
    rc = cli(b, sizeof b, "parked", "drop", "nosuch", "A");
    CHECK_INT(rc, 2, "parked drop of an unknown projection exits 2");
    rc = cli(b, sizeof b, "projection", "reset", "nosuch", NULL);
    CHECK_INT(rc, 2, "as does projection reset");

    /* A goes on normally */
    pt_begin(&T);
    count(topic, "A", 6, 6);
    pt_commit(&T);
    CHECK_INT(pt_catch_up(&T, proj, mode, NULL), 0, "the projector exits 0");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT n || ':' || history FROM items_%s WHERE id = "
                      "'A'",
                      tag),
              "6:1,2,3,4,5,6", "A's next event is applied normally");
}

int main(void)
{
    pt_init(&T, "proj_poison");
    char extra[512], pdir[700];
    snprintf(extra, sizeof extra,
             "projection = { group_prefix = \"%s.\", linger_ms = 200, "
             "each = { poison_agg = { topics = \"%s.agg.events\" },"
             "         poison_batch = { topics = \"%s.batch.events\" },"
             "         poison_tx = { topics = \"%s.tx.events\" } } },",
             T.name, T.name, T.name, T.name);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    /* every script must exist before the config is loaded */
    write_script("agg", 0);
    write_script("batch", 0);
    write_script("tx", 0);
    pt_config(&T, pdir, extra);
    pt_producer(&T);

    scenario("aggregate", "agg");
    scenario("batch", "batch");
    scenario("aggregate-tx", "tx");

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
