/*
 * test_projector_upsert.c - evlua.upsert and evlua.delete on the real
 * broker and PostgreSQL, coalesced into multi-row statements
 * (core/proj_upsert.c), in every isolation mode.
 *
 * One batch (one Kafka transaction, one partition) mixes: an aggregate
 * upserting its row twice (the last write wins), deleting it, then
 * upserting it again (the order holds); plain SQL between two upserts of
 * one aggregate that reads the row (it sees the first upsert, not the
 * second); a two-column key written twice; values that need quoting in
 * an array literal, NULL and jsonb; and an aggregate D whose upsert
 * violates a CHECK constraint inside a multi-row statement. D alone is
 * parked (its first event with the constraint's SQLSTATE, its second
 * behind it), and F, whose upsert names a column the table lacks (the
 * catalog check sends it row by row: PostgreSQL's own error); every other
 * row lands once. Then: 300 aggregates' upserts
 * go out as a handful of statements (not 300) outside aggregate-tx; a
 * full replay (Kafka and database offsets forgotten) changes nothing,
 * though the plain SQL appends a row each time it runs.
 */
#include "projtest.h"

static pt T;

static const char script_fmt[] =
    "local P, L, Q = 'people_%s', 'log_%s', 'pairs_%s'\n"
    "return {\n"
    "  name = 'ups_%s',\n"
    "  schema = {\n"
    "    'CREATE TABLE IF NOT EXISTS ' .. P .. ' (id text PRIMARY KEY, "
    "name text, n integer NOT NULL CHECK (n >= 0), tags jsonb)',\n"
    "    'CREATE TABLE IF NOT EXISTS ' .. L .. ' (k bigserial PRIMARY KEY, "
    "aid text, what text)',\n"
    "    'CREATE TABLE IF NOT EXISTS ' .. Q .. ' (a text, b integer, v "
    "text, PRIMARY KEY (a, b))' },\n"
    "  reset = 'TRUNCATE ' .. P .. ', ' .. L .. ', ' .. Q,\n"
    "  on = {\n"
    "    Set = function(e)\n"
    "      return evlua.upsert(P, { id = e.aggregate_id, name = "
    "e.data.name, n = e.data.n, tags = e.data.tags or evlua.null }, { key "
    "= 'id' })\n"
    "    end,\n"
    "    Note = function(e)\n"
    "      return { evlua.upsert(P, { id = e.aggregate_id, name = "
    "e.data.name, n = e.data.n, tags = evlua.null }, { key = 'id' }),\n"
    "        { 'INSERT INTO ' .. L .. ' (aid, what) SELECT $1, name || "
    "\\':\\' || n FROM ' .. P .. ' WHERE id = $1', e.aggregate_id },\n"
    "        evlua.upsert(P, { id = e.aggregate_id, name = e.data.name, n = "
    "e.data.n + 1, tags = evlua.null }, { key = 'id' }) }\n"
    "    end,\n"
    "    Typo = function(e) return evlua.upsert(P, { id = e.aggregate_id, "
    "nmae = 'x', n = 1 }, { key = 'id' }) end,\n"
    "    Gone = function(e) return evlua.delete(P, { id = e.aggregate_id }) "
    "end,\n"
    "    Pair = function(e)\n"
    "      return evlua.upsert(Q, { a = e.aggregate_id, b = e.data.b, v = "
    "e.data.v }, { key = { 'a', 'b' } })\n"
    "    end,\n"
    "  },\n"
    "}\n";

static void write_script(const char *tag)
{
    char path[800], text[4096];
    snprintf(path, sizeof path, "%s/projections/ups_%s.lua", T.dir, tag);
    snprintf(text, sizeof text, script_fmt, tag, tag, tag, tag);
    th_write_file(path, text);
}

static void forget_offsets(const char *proj)
{
    evl_config cfg;
    evl_luahost *host = NULL;
    char group[256], err[EVL_ERRLEN];
    pt_load(&T, &cfg, &host);
    evl_projector_group(&cfg, proj, group, sizeof group);
    CHECK_INT(evl_projector_reset_group(&cfg, group, err, sizeof err), EVL_OK,
              "the consumer group is deleted");
    evl_luahost_free(host);
    evl_config_free(&cfg);
    pt_exec(&T, "DELETE FROM evlua_offsets WHERE projection = '%s'", proj);
}

static void snapshot(const char *tag, char *b, size_t n)
{
    pt_text(&T, b, n,
            "SELECT (SELECT string_agg(id || '=' || name || ':' || n || ':' "
            "|| coalesce(tags::text, '-'), ' ' ORDER BY id) FROM people_%s) "
            "|| ' | ' || (SELECT string_agg(aid || '=' || what, ' ' ORDER BY "
            "k) FROM log_%s) || ' | ' || (SELECT string_agg(a || b || '=' || "
            "v, ' ' ORDER BY a, b) FROM pairs_%s)",
            tag, tag, tag);
}

static void scenario(const char *mode, const char *tag)
{
    char topic[160], proj[64], b[4096], msg[256], before[4096];
    evl_projector_stats st;
    snprintf(topic, sizeof topic, "%s.%s.events", T.name, tag);
    snprintf(proj, sizeof proj, "ups_%s", tag);
    pt_topic(&T, topic, 1);
    fprintf(stderr, "--- isolation %s\n", mode);

    pt_begin(&T);
    pt_ev(&T, topic, "A", 1, "Set", "{\"name\":\"a\",\"n\":1}");
    pt_ev(&T, topic, "B", 1, "Set", "{\"name\":\"b\",\"n\":1}");
    pt_ev(&T, topic, "A", 2, "Set", "{\"name\":\"a2\",\"n\":2}");
    pt_ev(&T, topic, "C", 1, "Set", "{\"name\":\"c\",\"n\":1}");
    pt_ev(&T, topic, "B", 2, "Note", "{\"name\":\"b2\",\"n\":5}");
    pt_ev(&T, topic, "A", 3, "Gone", "{}");
    pt_ev(&T, topic, "D", 1, "Set", "{\"name\":\"d\",\"n\":-1}");
    pt_ev(&T, topic, "D", 2, "Set", "{\"name\":\"d2\",\"n\":2}");
    pt_ev(&T, topic, "C", 2, "Pair", "{\"b\":1,\"v\":\"x\"}");
    pt_ev(&T, topic, "C", 3, "Pair", "{\"b\":2,\"v\":\"y\"}");
    pt_ev(&T, topic, "C", 4, "Pair", "{\"b\":1,\"v\":\"z\"}");
    pt_ev(&T, topic, "E", 1, "Set",
          "{\"name\":\"e \\\"q\\\" \\\\ ,{}\",\"n\":3,\"tags\":{\"x\":1}}");
    pt_ev(&T, topic, "F", 1, "Typo", "{}");
    pt_ev(&T, topic, "A", 4, "Set", "{\"name\":\"a4\",\"n\":4}");
    pt_commit(&T);

    memset(&st, 0, sizeof st);
    snprintf(msg, sizeof msg, "[%s] the projector exits 0", mode);
    CHECK_INT(pt_catch_up(&T, proj, mode, &st), 0, msg);
    CHECK_INT(st.parked, 3, "D's two events and F's are parked");
    CHECK_INT(st.applied, 11, "the 11 others are applied");
    snapshot(tag, b, sizeof b);
    snprintf(msg, sizeof msg,
             "[%s] each aggregate's statements in order, once; D absent", mode);
    CHECK_STR(b,
              "A=a4:4:- B=b2:6:- C=c:1:- E=e \"q\" \\ ,{}:3:{\"x\": 1} | "
              "B=b2:5 | C1=z C2=y",
              msg);
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(aggregate_id || sequence, ' ' ORDER "
                      "BY aggregate_id) FROM evlua_parked WHERE projection = "
                      "'%s'",
                      proj),
              "D1 D2 F1", "only D (both its events) and F are parked");
    CHECK_HAS(pt_text(&T, b, sizeof b,
                      "SELECT error FROM evlua_parked WHERE projection = "
                      "'%s' AND sequence = 1",
                      proj),
              "23514", "the culprit row carries the constraint's SQLSTATE");
    CHECK_HAS(pt_text(&T, b, sizeof b,
                      "SELECT error FROM evlua_parked WHERE projection = "
                      "'%s' AND aggregate_id = 'F'",
                      proj),
              "column \"nmae\" of relation",
              "a column the catalog does not know: sent row by row, parked "
              "with PostgreSQL's own error");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(aggregate_id || '=' || sequence || "
                      "':' || parked, ' ' ORDER BY aggregate_id) FROM "
                      "evlua_checkpoints WHERE projection = '%s'",
                      proj),
              "A=4:false B=2:false C=4:false D=0:true E=1:false F=0:true",
              "the checkpoints moved in the same transaction");

    /* many aggregates: a handful of statements, not one per event */
    pt_begin(&T);
    for (int i = 0; i < 300; i++) {
        char id[16];
        snprintf(id, sizeof id, "m%03d", i);
        pt_ev(&T, topic, id, 1, "Set", "{\"name\":\"m\",\"n\":7}");
    }
    pt_commit(&T);
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, proj, mode, &st), 0, "the next run exits 0");
    CHECK_INT(st.applied, 300, "300 upserts applied");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM people_%s WHERE n = 7", tag),
              300, "300 rows");
    snprintf(msg, sizeof msg, "[%s] statements sent: %llu", mode,
             (unsigned long long)st.statements);
    if (strcmp(mode, "aggregate-tx") == 0)
        CHECK(st.statements == 300, msg); /* a transaction each */
    else
        CHECK(st.statements >= 1 && st.statements <= 10, msg);

    /* a full replay changes nothing (the log would grow) */
    snapshot(tag, before, sizeof before);
    forget_offsets(proj);
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, proj, mode, &st), 0, "the replay exits 0");
    snprintf(msg, sizeof msg, "[%s] the replay skips every applied event",
             mode);
    CHECK_INT(st.replayed, 311, msg);
    snapshot(tag, b, sizeof b);
    CHECK_STR(b, before, "and changes nothing");
}

int main(void)
{
    pt_init(&T, "proj_upsert");
    char extra[512], pdir[700];
    snprintf(extra, sizeof extra,
             "projection = { group_prefix = \"%s.\", linger_ms = 200, "
             "each = { ups_agg = { topics = \"%s.agg.events\" },"
             "         ups_batch = { topics = \"%s.batch.events\" },"
             "         ups_tx = { topics = \"%s.tx.events\" } } },",
             T.name, T.name, T.name, T.name);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    write_script("agg");
    write_script("batch");
    write_script("tx");
    pt_config(&T, pdir, extra);
    pt_producer(&T);

    scenario("aggregate", "agg");
    scenario("batch", "batch");
    scenario("aggregate-tx", "tx");

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
