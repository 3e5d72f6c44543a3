/*
 * test_projector_params.c - a statement libpq refuses parks its aggregate;
 * it never stalls the projector.
 *
 * libpq refuses a statement of more than 65,535 parameters before it
 * sends anything, without a SQLSTATE, on a connection that is fine. That
 * is the statement's own, permanent error: `evlua run` with one
 * projection per isolation mode reads a partition where aggregate BIG's
 * first event makes the handler return a multi-row insert with 70,000
 * parameters. In every mode BIG's events are parked (the first with
 * libpq's reason), A's and B's are applied, nothing is retried as a lost
 * connection, a later event of another aggregate is applied within
 * seconds. The projectors keep serving SIGHUP: with a fixed script
 * reloaded, `evlua parked retry` applies BIG's events in order. A
 * projection added to the scripts starts at the next SIGHUP and reads the
 * topic from its start; one whose schema fails stops alone, the others
 * going on, and starts at the SIGHUP after its fix. SIGTERM ends the run
 * with exit 0.
 */
#include "projtest.h"

static pt T;

static const char *const modes[3] = {"aggregate", "batch", "aggregate-tx"};
static const char *const tags[3] = {"agg", "batch", "aggtx"};

/* Projection params_TAG: an upsert per event, and for an event with
 * data.big a multi-row insert of data.big / 2 rows (data.big
 * parameters). */
static void script(const char *tag, int fixed)
{
    char path[800], text[4096];
    snprintf(path, sizeof path, "%s/projections/params_%s.lua", T.dir, tag);
    snprintf(text, sizeof text,
             "return {\n"
             "  name = 'params_%s',\n"
             "  schema = {\n"
             "    [[CREATE TABLE IF NOT EXISTS items_%s (id text PRIMARY "
             "KEY,\n"
             "      history text NOT NULL)]],\n"
             "    [[CREATE TABLE IF NOT EXISTS lines_%s (id text, k "
             "integer)]],\n"
             "  },\n"
             "  on = {\n"
             "    Counted = function(e)\n"
             "      local up = { [[INSERT INTO items_%s (id, history)\n"
             "        VALUES ($1, $2) ON CONFLICT (id) DO UPDATE\n"
             "        SET history = items_%s.history || ',' || "
             "EXCLUDED.history]],\n"
             "        e.aggregate_id, tostring(e.sequence) }\n"
             "      if %s then return up end\n"
             "      local rows, st = {}, { '' }\n"
             "      for i = 1, e.data.big // 2 do\n"
             "        rows[i] = '($' .. (2 * i - 1) .. ', $' .. (2 * i) .. "
             "')'\n"
             "        st[2 * i] = e.aggregate_id\n"
             "        st[2 * i + 1] = i\n"
             "      end\n"
             "      st[1] = 'INSERT INTO lines_%s (id, k) VALUES ' ..\n"
             "              table.concat(rows, ', ')\n"
             "      return { up, st }\n"
             "    end,\n"
             "  },\n"
             "}\n",
             tag, tag, tag, tag, tag, fixed ? "true" : "not e.data.big", tag);
    th_write_file(path, text);
}

/* Projection NAME counting the events of each aggregate in table
 * NAME_n; schema_ok 0: a schema PostgreSQL refuses. */
static void added(const char *name, int schema_ok)
{
    char path[800], text[2048];
    snprintf(path, sizeof path, "%s/projections/%s.lua", T.dir, name);
    snprintf(text, sizeof text,
             "return {\n"
             "  name = '%s',\n"
             "  schema = { [[CREATE TABLE IF NOT EXISTS %s_n (id text PRIMARY "
             "KEY, n integer NOT NULL%s)]] },\n"
             "  on = {\n"
             "    Counted = function(e)\n"
             "      return { [[INSERT INTO %s_n (id, n) VALUES ($1, 1)\n"
             "        ON CONFLICT (id) DO UPDATE SET n = %s_n.n + 1]],\n"
             "        e.aggregate_id }\n"
             "    end,\n"
             "  },\n"
             "}\n",
             name, name, schema_ok ? "" : ", n nonsense", name, name);
    th_write_file(path, text);
}

static void count(const char *topic, const char *id, long long seq, int big)
{
    char data[64];
    if (big)
        snprintf(data, sizeof data, "{\"big\":%d}", big);
    else
        snprintf(data, sizeof data, "{}");
    pt_ev(&T, topic, id, seq, "Counted", data);
}

/* A projection added while evlua runs. */
static void check_added(pid_t pid, const char *topic, int port)
{
    char rz[16384];
    const char *counts = "SELECT CASE WHEN string_agg(id || '=' || n, ',' "
                         "ORDER BY id) = 'A=2,B=1,BIG=3,C=1' THEN 1 ELSE 0 "
                         "END FROM %s_n";
    char sql[256];
    added("added_ok", 1);
    added("added_bad", 0);
    kill(pid, SIGHUP);
    CHECK_INT(pt_wait_log(&T, "evlua.log", "reload started a pipeline", 2, 30),
              2, "SIGHUP starts a projector for each added projection");
    snprintf(sql, sizeof sql, counts, "added_ok");
    CHECK_INT(pt_wait_for(&T, 1, 60, sql), 1,
              "the added projection reads the topic from its start: every "
              "event once");
    CHECK_INT(pt_wait_log(&T, "evlua.log",
                          "a pipeline a reload started has stopped", 1, 30),
              1, "the one whose schema fails stops, logged");
    CHECK(kill(pid, 0) == 0, "and evlua run goes on");
    CHECK_HAS(th_readyz(port, rz, sizeof rz),
              "\"projection added_bad\":{\"ready\":false,\"reason\":\"failed "
              "to start",
              "/readyz says it failed, not that it is starting");
    pt_begin(&T);
    count(topic, "D", 1, 0);
    pt_commit(&T);
    CHECK_INT(pt_wait_for(&T, 4, 30,
                          "SELECT (SELECT count(*) FROM items_agg WHERE id = "
                          "'D') + (SELECT count(*) FROM items_batch WHERE id "
                          "= 'D') + (SELECT count(*) FROM items_aggtx WHERE "
                          "id = 'D') + (SELECT count(*) FROM added_ok_n WHERE "
                          "id = 'D')"),
              4, "the other projectors go on applying events");
    added("added_bad", 1);
    kill(pid, SIGHUP);
    CHECK_INT(pt_wait_log(&T, "evlua.log", "reload started a pipeline", 3, 30),
              3, "the SIGHUP after the fix starts it again");
    snprintf(sql, sizeof sql,
             "SELECT CASE WHEN string_agg(id || '=' || n, ',' ORDER BY id) = "
             "'A=2,B=1,BIG=3,C=1,D=1' THEN 1 ELSE 0 END FROM added_bad_n");
    CHECK_INT(pt_wait_for(&T, 1, 60, sql), 1,
              "and it applies every event once");
    CHECK_INT(pt_log_count(&T, "evlua.log", "reload started a pipeline"), 3,
              "a running projector is never started twice");
}

int main(void)
{
    char topic[160], extra[1200], pdir[700], cfg[700], b[1024], sql[1024];
    int port = th_free_port();
    pt_init(&T, "proj_params");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 1);
    for (int m = 0; m < 3; m++)
        script(tags[m], 0);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\", "
             "threads = 1, each = { params_agg = { isolation = \"%s\" }, "
             "params_batch = { isolation = \"%s\" }, params_aggtx = { "
             "isolation = \"%s\" } } },\n"
             /* building 65,536 parameters in Lua takes longer than the
              * default second under ASan on a loaded machine: this test
              * is about libpq's refusal, not the clock */
             "  limits = { time_ms = 60000 },\n"
             "  metrics = { listen = \"127.0.0.1:%d\" },",
             topic, T.name, modes[0], modes[1], modes[2], port);
    pt_config(&T, pdir, extra);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_producer(&T);
    pt_begin(&T);
    count(topic, "A", 1, 0);
    count(topic, "BIG", 1, 70000); /* refused by libpq */
    count(topic, "B", 1, 0);
    count(topic, "BIG", 2, 0); /* behind it */
    count(topic, "A", 2, 0);
    pt_commit(&T);

    pid_t pid = pt_spawn(&T, "evlua.log", "run", "-c", cfg, NULL);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM evlua_parked WHERE aggregate_id = 'BIG'");
    CHECK_INT(pt_wait_for(&T, 6, 60, sql), 6,
              "in every mode BIG's two events are parked");
    CHECK_INT(pt_wait_for(&T, 6, 30,
                          "SELECT (SELECT count(*) FROM items_agg WHERE id "
                          "|| '=' || history IN ('A=1,2', 'B=1')) + (SELECT "
                          "count(*) FROM items_batch WHERE id || '=' || "
                          "history IN ('A=1,2', 'B=1')) + (SELECT count(*) "
                          "FROM items_aggtx WHERE id || '=' || history IN "
                          "('A=1,2', 'B=1'))"),
              6, "A's and B's events are applied in every mode");
    for (int m = 0; m < 3; m++) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "[%s] the refused event is parked with libpq's reason",
                 modes[m]);
        CHECK_HAS(pt_text(&T, b, sizeof b,
                          "SELECT error FROM evlua_parked WHERE projection "
                          "= 'params_%s' AND aggregate_id = 'BIG' AND "
                          "sequence = 1",
                          tags[m]),
                  "65535", msg);
        snprintf(msg, sizeof msg, "[%s] and BIG's first upsert with it",
                 modes[m]);
        CHECK_STR(pt_text(&T, b, sizeof b,
                          "SELECT count(*) FROM items_%s WHERE id = 'BIG'",
                          tags[m]),
                  "0", msg);
        snprintf(msg, sizeof msg, "[%s] nothing of the refused insert",
                 modes[m]);
        CHECK_STR(
            pt_text(&T, b, sizeof b, "SELECT count(*) FROM lines_%s", tags[m]),
            "0", msg);
    }
    CHECK_INT(pt_log_count(&T, "evlua.log", "transient database error"), 0,
              "the refusal is never retried as a lost connection");
    /* the line comes after the parking transaction's commit */
    CHECK_INT(pt_wait_log(&T, "evlua.log", "aggregate parked", 3, 30), 3,
              "each projection logs that it parked BIG");

    /* the projectors go on */
    pt_begin(&T);
    count(topic, "C", 1, 0);
    count(topic, "BIG", 3, 0);
    pt_commit(&T);
    CHECK_INT(pt_wait_for(&T, 3, 30,
                          "SELECT (SELECT count(*) FROM items_agg WHERE id = "
                          "'C') + (SELECT count(*) FROM items_batch WHERE id "
                          "= 'C') + (SELECT count(*) FROM items_aggtx WHERE "
                          "id = 'C')"),
              3, "a later event of another aggregate is applied");
    CHECK_INT(pt_wait_for(&T, 9, 30, sql), 9,
              "and BIG's later event waits parked behind the refused one");

    /* the fix reaches the projectors, and the parked events can go */
    for (int m = 0; m < 3; m++)
        script(tags[m], 1);
    kill(pid, SIGHUP);
    CHECK_INT(pt_wait_log(&T, "evlua.log", "projection reloaded", 3, 30), 3,
              "every projector reloads the fixed script on SIGHUP");
    pid_t retry = pt_spawn(&T, "retry.log", "parked", "retry", "-c", cfg,
                           "params_agg", "BIG", NULL);
    CHECK_INT(th_wait(retry, -1), 0, "evlua parked retry applies BIG's events");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT history FROM items_agg WHERE id = 'BIG'"),
              "1,2,3", "in order, once each");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT count(*) FROM evlua_parked WHERE projection = "
                      "'params_agg'"),
              "0", "and nothing of params_agg is parked any more");

    check_added(pid, topic, port);

    kill(pid, SIGTERM);
    CHECK_INT(th_wait(pid, -1), 0, "SIGTERM: exit 0");

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
