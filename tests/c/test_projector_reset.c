/*
 * test_projector_reset.c - `evlua projection reset NAME` rebuilds a
 * projection from the start of its topics.
 *
 * shipping_addresses counts changes, so a rebuild that kept old rows (or
 * applied something twice) shows. After it projected 200 events: reset
 * refuses while a projector of that projection runs (its group has a
 * member); with none running it runs the projection's reset SQL, clears
 * its checkpoints, offsets and parked events, deletes its consumer group
 * and re-reads everything: the same rows again, checkpoints at the last
 * sequences. --no-rebuild leaves the tables empty for `evlua run` to
 * refill. Other projections' bookkeeping is untouched. Everything runs
 * with projection.threads = 2 (one partition each): the rebuild's count
 * adds up both threads'.
 */
#include "projtest.h"

static pt T;
static char topic[128], cfg[700];

static int cli(char *out, size_t n, const char *a3, const char *a4)
{
    static int k;
    char log[64];
    snprintf(log, sizeof log, "reset-%d.log", ++k);
    pid_t pid = a4   ? pt_spawn(&T, log, "projection", "reset", "-c", cfg,
                                "shipping_addresses", a3, a4, NULL)
                : a3 ? pt_spawn(&T, log, "projection", "reset", "-c", cfg,
                                "shipping_addresses", a3, NULL)
                     : pt_spawn(&T, log, "projection", "reset", "-c", cfg,
                                "shipping_addresses", NULL);
    return pt_output(&T, pid, log, out, n);
}

static void state(char *buf, size_t n)
{
    pt_text(&T, buf, n,
            "SELECT string_agg(customer_id || ':' || address || ':' || "
            "changes, ' ' ORDER BY customer_id) || ' / ' || (SELECT "
            "string_agg(aggregate_id || '=' || sequence, ' ' ORDER BY "
            "aggregate_id) FROM evlua_checkpoints WHERE projection = "
            "'shipping_addresses') FROM shipping_addresses");
}

int main(void)
{
    char before[4096], after[4096], out[8192];
    pt_init(&T, "proj_reset");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 2);
    pt_config_examples(&T, topic, "threads = 2");
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_producer(&T);
    pt_begin(&T);
    for (int s = 1; s <= 20; s++)
        for (int c = 0; c < 10; c++) {
            char id[16], data[128];
            snprintf(id, sizeof id, "z%d", c);
            snprintf(data, sizeof data,
                     "{\"newAddress\":\"%d Reset Ave\",\"previousAddress\":"
                     "\"x\"}",
                     s * 10 + c);
            pt_ev(&T, topic, id, s, "CustomerAddressChanged", data);
        }
    pt_commit(&T);
    CHECK_INT(pt_catch_up(&T, "shipping_addresses", NULL, NULL), 0,
              "the first projection exits 0");
    CHECK_INT(pt_catch_up(&T, "customer_profile", NULL, NULL), 0,
              "another projection ran too");
    state(before, sizeof before);
    CHECK_HAS(before, "z0:200 Reset Ave:20", "20 changes counted for z0");

    /* refused while a projector runs */
    pid_t run = pt_spawn(&T, "run.log", "run", "-c", cfg, NULL);
    CHECK(pt_wait_log(&T, "run.log", "partitions assigned", 4, 120) >= 4,
          "the projectors have joined their groups");
    int rc = cli(out, sizeof out, NULL, NULL);
    CHECK_INT(rc, 1, "reset refuses while projectors run");
    CHECK_HAS(out, "active members", "saying why");
    state(after, sizeof after);
    CHECK_STR(after, before, "and changes nothing");
    kill(run, SIGTERM);
    CHECK_INT(th_wait(run, -1), 0, "the running projectors stop with exit 0");

    rc = cli(out, sizeof out, NULL, NULL);
    CHECK_INT(rc, 0, "reset exits 0");
    CHECK_HAS(out, "projection shipping_addresses reset", "it says so");
    CHECK_HAS(out, "rebuilt: 200 events applied", "and rebuilds everything");
    state(after, sizeof after);
    CHECK_STR(after, before,
              "the rebuilt rows and checkpoints equal the original ones");
    CHECK(pt_long(&T, "SELECT count(*) FROM evlua_checkpoints WHERE "
                      "projection = 'customer_profile'") > 0,
          "other projections' checkpoints are untouched");

    rc = cli(out, sizeof out, "--no-rebuild", NULL);
    CHECK_INT(rc, 0, "reset --no-rebuild exits 0");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM shipping_addresses"), 0,
              "its reset SQL emptied the table");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_checkpoints WHERE "
                          "projection = 'shipping_addresses'"),
              0, "its checkpoints are gone");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_offsets WHERE "
                          "projection = 'shipping_addresses'"),
              0, "its offsets are gone");
    CHECK_INT(pt_catch_up(&T, "shipping_addresses", NULL, NULL), 0,
              "the next run rebuilds it");
    state(after, sizeof after);
    CHECK_STR(after, before, "to the same state");

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
