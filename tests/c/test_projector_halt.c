/*
 * test_projector_halt.c - on_error = "halt" stops the partition at the
 * bad event, and SIGHUP with a fixed script resumes it.
 *
 * `evlua run` projects a one-partition topic where A's second event
 * violates a CHECK constraint, followed by events of B and C: A's first
 * event and B's first (before the bad one) are committed, nothing at or
 * past the bad event is, the stored offset stays at it, nothing is parked
 * and the log says PARTITION HALTED. A later event waits too. After the
 * script is fixed, SIGHUP reloads it and the partition goes on from the
 * bad event: everything is applied once, in order. SIGTERM: exit 0.
 * The projection runs two threads on its one partition: one idles (and
 * is ready), /readyz names the halted one, both reload on SIGHUP.
 */
#include "projtest.h"

static pt T;

static void script(int fixed)
{
    char path[800], text[2048];
    snprintf(path, sizeof path, "%s/projections/halting.lua", T.dir);
    snprintf(text, sizeof text,
             "return {\n"
             "  name = 'halting',\n"
             "  schema = [[CREATE TABLE IF NOT EXISTS h_items (\n"
             "    id text PRIMARY KEY, n integer NOT NULL CHECK (n >= 0),\n"
             "    history text NOT NULL)]],\n"
             "  on = {\n"
             "    Counted = function(e)\n"
             "      return { [[INSERT INTO h_items (id, n, history)\n"
             "                 VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE\n"
             "                 SET n = EXCLUDED.n,\n"
             "                 history = h_items.history || ',' || "
             "EXCLUDED.history]],\n"
             "               e.aggregate_id, %s, tostring(e.sequence) }\n"
             "    end,\n"
             "  },\n"
             "}\n",
             fixed ? "math.max(e.data.n, 0)" : "e.data.n");
    th_write_file(path, text);
}

static void count(const char *topic, const char *id, long long seq, int n)
{
    char data[64];
    snprintf(data, sizeof data, "{\"n\":%d}", n);
    pt_ev(&T, topic, id, seq, "Counted", data);
}

static const char *items(char *b, size_t n)
{
    return pt_text(&T, b, n,
                   "SELECT coalesce(string_agg(id || '=' || history, ' ' "
                   "ORDER BY id), '') FROM h_items");
}

int main(void)
{
    char topic[160], extra[600], pdir[700], cfg[700], b[1024];
    int port = th_free_port();
    pt_init(&T, "proj_halt");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 1);
    script(0);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\", "
             "linger_ms = 200, each = { halting = { on_error = \"halt\", "
             "threads = 2 } } }, metrics = { listen = \"127.0.0.1:%d\" },",
             topic, T.name, port);
    pt_config(&T, pdir, extra);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_producer(&T);
    pt_begin(&T);
    count(topic, "A", 1, 1);
    count(topic, "B", 1, 1);
    count(topic, "A", 2, -5); /* offset 2: the bad one */
    count(topic, "B", 2, 2);
    count(topic, "C", 1, 1);
    pt_commit(&T);

    pid_t pid = pt_spawn(&T, "evlua.log", "run", "-c", cfg, NULL);
    CHECK(pt_wait_log(&T, "evlua.log", "PARTITION HALTED", 1, 60) == 1,
          "the log says the partition halted");
    CHECK_HAS(pt_text(&T, b, sizeof b,
                      "SELECT 'x' FROM evlua_offsets WHERE next_offset = 2"),
              "x", "the stored offset stays at the bad event");
    CHECK_STR(items(b, sizeof b), "A=1 B=1",
              "what came before the bad event is committed, nothing after");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_parked"), 0,
              "nothing is parked");
    CHECK_HAS(th_readyz(port, b, sizeof b), " 503",
              "/readyz: halted is not ready");
    CHECK_HAS(b, "halted at offset 2", "/readyz says which offset halted");
    CHECK_HAS(b, "projection halting#", "and which thread of the projection");
    pt_begin(&T);
    count(topic, "B", 3, 3);
    pt_commit(&T);
    th_sleep_ms(1500);
    CHECK_STR(items(b, sizeof b), "A=1 B=1",
              "a later event waits behind the halt");

    script(1);
    kill(pid, SIGHUP);
    long long n = pt_wait_for(&T, 3, 60,
                              "SELECT count(*) FROM h_items WHERE history IN "
                              "('1,2', '1,2,3', '1')");
    CHECK_INT(n, 3, "after the fix and SIGHUP the partition goes on");
    CHECK_STR(items(b, sizeof b), "A=1,2 B=1,2,3 C=1",
              "every event applied once, in order");
    CHECK(pt_log_count(&T, "evlua.log", "halted partition resumed") == 1,
          "the log says it resumed");
    CHECK_INT(pt_log_count(&T, "evlua.log", "projection reloaded"), 2,
              "both threads reloaded the scripts");
    CHECK_HAS(th_readyz(port, b, sizeof b), " 200", "/readyz: ready again");
    /* offsets 0-4, a commit marker at 5, B's third event at 6 */
    CHECK_INT(pt_long(&T, "SELECT next_offset FROM evlua_offsets"), 7,
              "the offset moved past everything");
    kill(pid, SIGTERM);
    CHECK_INT(th_wait(pid, -1), 0, "SIGTERM: exit 0");

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
