/*
 * test_projector_swap.c - `evlua projection swap` under a running
 * projector: events keep coming and a reader keeps querying while the
 * shadow's tables go in, and `evlua run` follows without a restart.
 *
 * shipping_addresses counts changes, so a side that applied an event
 * twice (or missed one) shows against an independent fold:
 *   - a shadow of a changed script (a new column `number`) is built; the
 *     new script is deployed into the running process's scripts
 *     directory (no SIGHUP), then swapped in while a writer produces
 *     events and a reader queries the live table throughout;
 *   - the running projector fails its next transaction at the fence,
 *     loads the script from disk, and goes on from the shadow's offsets:
 *     every event exactly once, the new column written by every event
 *     that came after the swap, the swapped-out table untouched since;
 *   - swap --back while the new script is still deployed: the projector
 *     waits, not ready, writing nothing to the tables swapped back (they
 *     are pinned to the old version, which had no pin before the first
 *     swap); once the old script is deployed again it goes on from its
 *     own offsets, exactly once;
 *   - no reader query failed; `evlua run` never restarted;
 *   - `projection reset` with another version moves the pin to it.
 * The shadow is built with `instance` set (static members), as the demo
 * has it: its consumers must not be static, or its group stays busy for
 * a session after the rebuild ends and the swap right after it is
 * refused.
 * Argument: the isolation mode (default aggregate).
 */
#include "projtest.h"

#include <pthread.h>

static pt T;
static char topic[128], cfg[700], static_cfg[700], livefile[1200], newdir[700];
enum { CUSTOMERS = 10 };
static int seqs[CUSTOMERS];
static char last[CUSTOMERS][64];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static volatile int reading = 1, writing = 0;
static long reads, read_errors, written;
static char read_error[512];

static void *reader(void *arg)
{
    (void)arg;
    PGconn *c = PQconnectdb(T.dbinfo);
    while (reading) {
        PGresult *res =
            PQexec(c, "SELECT count(*), sum(changes) FROM shipping_addresses");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            reads++;
        else if (read_errors++ == 0)
            snprintf(read_error, sizeof read_error, "%s",
                     PQresultErrorMessage(res));
        PQclear(res);
        th_sleep_ms(5);
    }
    PQfinish(c);
    return NULL;
}

static void write_events(int per_customer)
{
    pthread_mutex_lock(&mu);
    pt_begin(&T);
    for (int s = 0; s < per_customer; s++)
        for (int c = 0; c < CUSTOMERS; c++) {
            char id[16], data[160];
            snprintf(id, sizeof id, "w%d", c);
            seqs[c]++;
            snprintf(last[c], sizeof last[c], "%d Swap Street", seqs[c]);
            snprintf(data, sizeof data,
                     "{\"newAddress\":\"%s\",\"previousAddress\":\"x\"}",
                     last[c]);
            pt_ev(&T, topic, id, seqs[c], "CustomerAddressChanged", data);
            written++;
        }
    pt_commit(&T);
    pthread_mutex_unlock(&mu);
}

/* Events keep coming while writing is set. */
static void *writer(void *arg)
{
    (void)arg;
    while (writing) {
        write_events(1);
        th_sleep_ms(40);
    }
    return NULL;
}

static void expected(char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int c = 0; c < CUSTOMERS; c++)
        o += (size_t)snprintf(buf + o, n - o, "%sw%d:%s:%d", c ? " " : "", c,
                              last[c], seqs[c]);
}

static void rows(const char *schema, char *buf, size_t n)
{
    pt_text(&T, buf, n,
            "SELECT string_agg(customer_id || ':' || address || ':' || "
            "changes, ' ' ORDER BY customer_id) FROM %s.shipping_addresses",
            schema);
}

static int cli(const char *log, char *out, size_t n, const char *a1,
               const char *a2, const char *a3, const char *a4)
{
    pid_t pid = pt_spawn(&T, log, "projection", a1, "shipping_addresses", "-c",
                         cfg, a2, a3, a4, NULL);
    return pt_output(&T, pid, log, out, n);
}

static const char new_script[] =
    "return {\n"
    "  name = 'shipping_addresses',\n"
    "  schema = [[CREATE TABLE IF NOT EXISTS shipping_addresses (\n"
    "    customer_id text PRIMARY KEY, address text NOT NULL,\n"
    "    changes integer NOT NULL DEFAULT 1, number text)]],\n"
    "  reset = 'TRUNCATE shipping_addresses',\n"
    "  on = { CustomerAddressChanged = function(e)\n"
    "    return { [[INSERT INTO shipping_addresses (customer_id,\n"
    "               address, number) VALUES ($1, $2, $3)\n"
    "               ON CONFLICT (customer_id) DO UPDATE SET\n"
    "               address = EXCLUDED.address, number =\n"
    "               EXCLUDED.number, changes =\n"
    "               shipping_addresses.changes + 1]],\n"
    "             e.aggregate_id, e.data.newAddress,\n"
    "             e.data.newAddress:match('^%d+') }\n"
    "  end },\n"
    "}\n";

static long long total(void)
{
    pthread_mutex_lock(&mu);
    long long n = written;
    pthread_mutex_unlock(&mu);
    return n;
}

int main(int argc, char **argv)
{
    const char *iso = argc > 1 ? argv[1] : "aggregate";
    char want[4096], got[4096], out[16384], old_script[8192], path[1200],
        extra[1024], q[300];
    pt_init(&T, strcmp(iso, "aggregate") == 0 ? "proj_swap" : "proj_swap_tx");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 2);

    /* the running process's scripts: a copy of the example projection */
    char livedir[1100];
    snprintf(livedir, sizeof livedir, "%s/live", T.dir);
    mkdir(livedir, 0700);
    snprintf(path, sizeof path, "%s/projections/shipping_addresses.lua", T.src);
    th_read_file(path, old_script, sizeof old_script);
    snprintf(livefile, sizeof livefile, "%s/shipping_addresses.lua", livedir);
    th_write_file(livefile, old_script);
    snprintf(path, sizeof path, "%s/aggregates", T.dir);
    mkdir(path, 0700);
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\", "
             "isolation = \"%s\" }, instance = \"%s\",",
             topic, T.name, iso, T.name);
    pt_config(&T, livedir, extra); /* with `instance`: for the shadow */
    char text[8192];
    snprintf(path, sizeof path, "%s/evlua.lua", T.dir);
    th_read_file(path, text, sizeof text);
    snprintf(static_cfg, sizeof static_cfg, "%s/evlua-static.lua", T.dir);
    th_write_file(static_cfg, text);
    *strstr(extra, " instance = ") = '\0';
    pt_config(&T, livedir, extra); /* without: `evlua run` and reset */
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_exec(&T, "DROP SCHEMA IF EXISTS evlua_shadow_shipping_addresses "
                "CASCADE");
    pt_producer(&T);
    write_events(10);

    pid_t run = pt_spawn(&T, "run.log", "run", "-c", cfg, NULL);
    snprintf(q, sizeof q, "SELECT sum(changes) FROM %s.shipping_addresses",
             T.name);
    CHECK_INT(pt_wait_for(&T, 10 * CUSTOMERS, 120, q), 10 * CUSTOMERS,
              "the live projection has every event");

    /* the shadow of the new script, built to the end there is now */
    snprintf(newdir, sizeof newdir, "%s/new", T.dir);
    mkdir(newdir, 0700);
    snprintf(path, sizeof path, "%s/aggregates", newdir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/projections", newdir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/projections/shipping_addresses.lua",
             newdir);
    th_write_file(path, new_script);
    write_events(5);
    pid_t sh = pt_spawn(&T, "shadow.log", "projection", "rebuild",
                        "shipping_addresses", "--shadow", "-c", static_cfg,
                        "--scripts", newdir, "--until-caught-up", NULL);
    CHECK_INT(pt_output(&T, sh, "shadow.log", out, sizeof out), 0,
              "the shadow of the new script builds");

    /* events keep coming and a reader keeps reading from here on */
    pthread_t rt, wt;
    pthread_create(&rt, NULL, reader, NULL);
    writing = 1;
    pthread_create(&wt, NULL, writer, NULL);
    th_sleep_ms(500);

    /* deploy the new script (no SIGHUP), then swap under the running
     * projector */
    th_write_file(livefile, new_script);
    CHECK_INT(cli("swap.log", out, sizeof out, "swap", NULL, NULL, NULL), 0,
              "swap exits 0 while `evlua run` runs");
    CHECK_HAS(out, "swapped in", "and says so");
    CHECK(pt_wait_log(&T, "run.log", "projection follows the swap", 1, 60) >= 1,
          "the running projector follows the swap");
    th_sleep_ms(1500);
    writing = 0;
    pthread_join(wt, NULL);
    long long n = total();
    CHECK_INT(pt_wait_for(&T, n, 120, q), n,
              "the new tables have every event, from the shadow's offsets");
    expected(want, sizeof want);
    rows(T.name, got, sizeof got);
    CHECK_STR(got, want, "each exactly once");
    char nq[300];
    snprintf(nq, sizeof nq,
             "SELECT count(*) FROM %s.shipping_addresses WHERE number = "
             "split_part(address, ' ', 1)",
             T.name);
    CHECK_INT(pt_long(&T, "%s", nq), CUSTOMERS,
              "the new column written by the new script up to the last "
              "event");
    long long old_sum = pt_long(&T, "SELECT sum(changes) FROM "
                                    "evlua_shadow_shipping_addresses."
                                    "shipping_addresses");
    CHECK(old_sum > 15 * CUSTOMERS && old_sum < n,
          "the old tables were written up to the swap, and not after");
    CHECK_INT(pt_log_count(&T, "run.log", "projector stopped"), 0,
              "`evlua run` never restarted its projector");

    /* back, with the new script still deployed: the old tables are
     * pinned to the old version, so the projector waits */
    CHECK_INT(cli("back.log", out, sizeof out, "swap", "--back", NULL, NULL), 0,
              "swap --back exits 0 while `evlua run` runs");
    write_events(3);
    CHECK(pt_wait_log(&T, "run.log", "waiting (not ready)", 1, 60) >= 1,
          "the projector waits for the old script to be deployed");
    th_sleep_ms(2000);
    CHECK_INT(pt_long(&T, "%s", q), old_sum,
              "and writes nothing to the tables swapped back meanwhile");
    th_write_file(livefile, old_script);
    CHECK(pt_wait_log(&T, "run.log", "projection follows the swap", 2, 60) >= 2,
          "with the old script deployed it follows");
    n = total();
    CHECK_INT(pt_wait_for(&T, n, 120, q), n,
              "the old tables catch up from their own offsets");
    expected(want, sizeof want);
    rows(T.name, got, sizeof got);
    CHECK_STR(got, want, "each event exactly once");
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM information_schema.columns "
                      "WHERE table_schema = '%s' AND column_name = "
                      "'number'",
                      T.name),
              0, "the live table is the old version again");

    reading = 0;
    pthread_join(rt, NULL);
    CHECK(reads > 0, "the reader read throughout");
    CHECK_INT(read_errors, 0, "and no query of it failed");
    if (read_errors)
        fprintf(stderr, "first reader error: %s\n", read_error);
    kill(run, SIGTERM);
    CHECK_INT(th_wait(run, -1), 0, "`evlua run` stops with exit 0");

    /* a reset with another version (a comment more) rebuilds the pinned
     * tables: the pin moves to the script that rebuilt them */
    char edited[8300];
    snprintf(edited, sizeof edited, "-- edited\n%s", old_script);
    th_write_file(livefile, edited);
    CHECK_INT(cli("reset.log", out, sizeof out, "reset", NULL, NULL, NULL), 0,
              "projection reset of pinned tables with another version");
    CHECK_INT(pt_long(&T, "%s", q), n, "rebuilds every event");
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM %s.evlua_pins p JOIN "
                      "%s.evlua_fences f USING (projection) WHERE "
                      "p.script_hash = f.script_hash",
                      T.name, T.name),
              1, "and the pin is the version it rebuilt with");

    pt_exec(&T, "DROP SCHEMA evlua_shadow_shipping_addresses CASCADE");
    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
