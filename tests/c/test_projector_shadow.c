/*
 * test_projector_shadow.c - `evlua projection rebuild NAME --shadow` builds
 * a changed projection beside the live one, and `evlua projection diff`
 * compares the two.
 *
 * shipping_addresses counts changes, so a shadow that applied an event
 * twice (or missed one) shows against an independent fold of what was
 * written. The live projection runs (`evlua run`) throughout:
 *   - a shadow of the unchanged script, built to the end, equals the live
 *     tables (diff exits 0);
 *   - a shadow of a changed script (a new column) is built while events
 *     keep coming, follows them, and diff names exactly the new column on
 *     every row (exit 1); both sides hold every event exactly once;
 *   - a second rebuild is refused while that shadow runs; the live table
 *     is never altered, its checkpoints stay its own;
 *   - with the live projectors stopped, swap puts the shadow in place while a
 * reader queries the table all along (no query fails); the old script then
 * refuses the swapped-in tables (the pin); the new one goes on from the
 * shadow's offsets, exactly once; swap --back restores the old version, which
 * goes on from its own offsets, exactly once;
 *   - usage errors: rebuild without --shadow, diff without a shadow.
 */
#include "projtest.h"

#include <pthread.h>

static pt T;
static char topic[128], cfg[700], newdir[700];
enum { CUSTOMERS = 10 };
static int seqs[CUSTOMERS];
static char last[CUSTOMERS][64];

/* A reader of the live table for the whole swap: every failing query
 * counts. */
static volatile int reading = 1;
static long reads, read_errors;
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
    }
    PQfinish(c);
    return NULL;
}

static void write_events(int per_customer)
{
    pt_begin(&T);
    for (int s = 0; s < per_customer; s++)
        for (int c = 0; c < CUSTOMERS; c++) {
            char id[16], data[160];
            snprintf(id, sizeof id, "s%d", c);
            seqs[c]++;
            snprintf(last[c], sizeof last[c], "%d Shadow Road", seqs[c]);
            snprintf(data, sizeof data,
                     "{\"newAddress\":\"%s\",\"previousAddress\":\"x\"}",
                     last[c]);
            pt_ev(&T, topic, id, seqs[c], "CustomerAddressChanged", data);
        }
    pt_commit(&T);
}

/* The rows an exactly-once projection must hold: per customer the last
 * address and the number of events. */
static void expected(char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int c = 0; c < CUSTOMERS; c++)
        o += (size_t)snprintf(buf + o, n - o, "%ss%d:%s:%d", c ? " " : "", c,
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

int main(void)
{
    char want[4096], got[4096], out[16384];
    pt_init(&T, "proj_shadow");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 2);
    pt_config_examples(&T, topic, NULL);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pt_exec(&T, "DROP SCHEMA IF EXISTS evlua_shadow_shipping_addresses "
                "CASCADE");
    pt_producer(&T);
    write_events(10);

    pid_t run = pt_spawn(&T, "run.log", "run", "-c", cfg, NULL);
    char q[300];
    snprintf(q, sizeof q, "SELECT sum(changes) FROM %s.shipping_addresses",
             T.name);
    CHECK_INT(pt_wait_for(&T, 10 * CUSTOMERS, 120, q), 10 * CUSTOMERS,
              "the live projection has every event");

    /* usage errors */
    CHECK_INT(cli("u1.log", out, sizeof out, "rebuild", NULL, NULL, NULL), 2,
              "rebuild without --shadow is a usage error");
    CHECK_HAS(out, "add --shadow", "saying what to add");
    CHECK_INT(cli("u2.log", out, sizeof out, "diff", NULL, NULL, NULL), 2,
              "diff before any shadow is a usage error");
    CHECK_HAS(out, "has no shadow", "saying there is none");

    /* the unchanged script: equal */
    CHECK_INT(cli("same.log", out, sizeof out, "rebuild", "--shadow",
                  "--until-caught-up", NULL),
              0, "a shadow of the same script builds");
    CHECK_HAS(out, "caught up: 100 events applied", "every event, once");
    CHECK_INT(
        cli("same-diff.log", out, sizeof out, "diff", "--wait", "120", NULL), 0,
        "diff of the same script exits 0");
    CHECK_HAS(out,
              "shipping_addresses: live 10 rows, shadow 10 rows; only live 0, "
              "only shadow 0, different 0",
              "counting every row");
    CHECK_HAS(out, "live and shadow are equal", "and says they are equal");

    /* a changed script: a new column, built while events keep coming */
    char path[800], text[2048];
    snprintf(newdir, sizeof newdir, "%s/new", T.dir);
    mkdir(newdir, 0700);
    snprintf(path, sizeof path, "%s/aggregates", newdir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/projections", newdir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/projections/shipping_addresses.lua",
             newdir);
    snprintf(text, sizeof text,
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
             "             e.data.newAddress:match('^%%d+') }\n"
             "  end },\n"
             "}\n");
    th_write_file(path, text);
    pid_t sh = pt_spawn(&T, "shadow.log", "projection", "rebuild",
                        "shipping_addresses", "--shadow", "-c", cfg,
                        "--scripts", newdir, "--metrics", "127.0.0.1:0", NULL);
    for (int i = 0; i < 10; i++) {
        write_events(3);
        th_sleep_ms(100);
    }
    CHECK(pt_wait_log(&T, "shadow.log", "follows new events", 1, 120) == 1,
          "the shadow catches up, then follows");
    CHECK_INT(cli("busy.log", out, sizeof out, "rebuild", "--shadow",
                  "--scripts", newdir),
              1, "a second shadow rebuild is refused while one runs");
    CHECK_HAS(out, "a shadow rebuild of this projection is running",
              "saying why");
    for (int i = 0; i < 5; i++)
        write_events(2);
    /* diff compares at equal offsets, whatever they are: let both read
     * everything first, so the figures below are the last */
    snprintf(q, sizeof q, "SELECT sum(changes) FROM %s.shipping_addresses",
             T.name);
    CHECK_INT(pt_wait_for(&T, 50 * CUSTOMERS, 120, q), 50 * CUSTOMERS,
              "the live projection reads on");
    CHECK_INT(pt_wait_for(&T, 50 * CUSTOMERS, 120,
                          "SELECT sum(changes) FROM evlua_shadow_shipping_"
                          "addresses.shipping_addresses"),
              50 * CUSTOMERS, "and so does the shadow");

    CHECK_INT(
        cli("diff.log", out, sizeof out, "diff", "--wait", "120", "--limit=3"),
        1, "diff of the changed script exits 1");
    CHECK_HAS(out,
              "shipping_addresses: live 10 rows, shadow 10 rows; only live 0, "
              "only shadow 0, different 10",
              "every row differs");
    CHECK_HAS(out,
              "different {\"customer_id\": \"s0\"}: number: (no column) "
              "-> \"50\"",
              "by the new column, shown per key");
    CHECK(!strstr(out, "\"s3\"}"), "--limit 3 shows the first three");
    CHECK_HAS(out, "live and shadow DIFFER", "and says they differ");

    expected(want, sizeof want);
    rows(T.name, got, sizeof got);
    CHECK_STR(got, want, "the live rows hold every event exactly once");
    rows("evlua_shadow_shipping_addresses", got, sizeof got);
    CHECK_STR(got, want, "so do the shadow's");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_shadow_shipping_"
                          "addresses.evlua_checkpoints WHERE sequence = 50"),
              CUSTOMERS, "the shadow's checkpoints are its own");

    CHECK_INT(cli("swap-sh.log", out, sizeof out, "swap", NULL, NULL, NULL), 1,
              "swap is refused while the shadow rebuild runs");
    CHECK_HAS(out, "a shadow rebuild of this projection is running",
              "saying why");

    /* with the live projectors stopped the shadow reads on: its lag
     * metric is its own (the live one would be 50 behind) */
    kill(run, SIGTERM);
    CHECK_INT(th_wait(run, -1), 0, "the live projectors stop with exit 0");
    write_events(5);
    snprintf(q, sizeof q,
             "SELECT sum(changes) FROM evlua_shadow_shipping_addresses."
             "shipping_addresses");
    CHECK_INT(pt_wait_for(&T, 55 * CUSTOMERS, 120, q), 55 * CUSTOMERS,
              "the shadow follows new events");
    char slog[800], line[8192], needle[300];
    snprintf(slog, sizeof slog, "%s/shadow.log", T.dir);
    th_read_file(slog, line, sizeof line);
    const char *pp = strstr(line, "metrics endpoint listening");
    pp = pp ? strstr(pp, "port=") : NULL;
    int port = pp ? atoi(pp + 5) : 0;
    CHECK(port > 0, "the shadow serves metrics on the port it logged");
    snprintf(needle, sizeof needle,
             "evlua_consumer_lag{group=\"%s.shipping_addresses.shadow\"",
             T.name);
    int seen = 0;
    long long lagsum = -1;
    for (double t0 = th_now(); port > 0 && th_now() - t0 < 30;) {
        th_http_get(port, "/metrics", out, sizeof out);
        seen = 0;
        lagsum = 0;
        for (const char *m = strstr(out, needle); m;
             m = strstr(m + 1, needle)) {
            const char *sp = strchr(m, ' ');
            seen++;
            lagsum += sp ? atoll(sp + 1) : 1000000;
        }
        if (seen == 2 && lagsum == 0)
            break;
        th_sleep_ms(250);
    }
    /* two periods of the lag thread (5 s), so the figure is one measured
     * after the last events */
    th_sleep_ms(11000);
    th_http_get(port, "/metrics", out, sizeof out);
    lagsum = 0;
    for (const char *m = strstr(out, needle); m; m = strstr(m + 1, needle)) {
        const char *sp = strchr(m, ' ');
        lagsum += sp ? atoll(sp + 1) : 1000000;
    }
    CHECK_INT(seen, 2, "the shadow group's lag is reported per partition");
    CHECK_INT(lagsum, 0, "from the shadow's own offsets");
    kill(sh, SIGTERM);
    CHECK_INT(th_wait(sh, -1), 0, "the shadow stops with exit 0 on SIGTERM");

    run = pt_spawn(&T, "run2.log", "run", "-c", cfg, NULL);
    snprintf(q, sizeof q, "SELECT sum(changes) FROM %s.shipping_addresses",
             T.name);
    CHECK_INT(pt_wait_for(&T, 55 * CUSTOMERS, 120, q), 55 * CUSTOMERS,
              "the live projection catches up");
    /* swapping under running projectors: test_projector_swap.c; here
     * they are stopped first */
    kill(run, SIGTERM);
    CHECK_INT(th_wait(run, -1), 0, "the live projectors stop with exit 0");
    expected(want, sizeof want);
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM %s.evlua_checkpoints WHERE "
                      "projection = 'shipping_addresses' AND sequence = "
                      "55",
                      T.name),
              CUSTOMERS, "the live checkpoints are at the last sequences");
    CHECK_INT(pt_long(&T,
                      "SELECT count(*) FROM information_schema.columns "
                      "WHERE table_schema = '%s' AND column_name = "
                      "'number'",
                      T.name),
              0, "the live table was never altered");

    /* swap, with a reader on the live table throughout */
    pthread_t rt;
    pthread_create(&rt, NULL, reader, NULL);
    th_sleep_ms(300);
    CHECK_INT(cli("swap.log", out, sizeof out, "swap", NULL, NULL, NULL), 0,
              "swap exits 0");
    CHECK_HAS(out, "swapped in", "and says so");
    snprintf(q, sizeof q,
             "SELECT count(*) FROM information_schema.columns WHERE "
             "table_schema = '%s' AND column_name = 'number'",
             T.name);
    CHECK_INT(pt_long(&T, "%s", q), 1, "the live table is the new version");
    rows(T.name, got, sizeof got);
    CHECK_STR(got, want, "holding every event exactly once");
    CHECK_INT(cli("swap2.log", out, sizeof out, "swap", NULL, NULL, NULL), 2,
              "a second swap without a new shadow is a usage error");
    CHECK_HAS(out, "swap it back with --back", "pointing to --back");

    write_events(10);
    pid_t old = pt_spawn(&T, "old.log", "run", "-c", cfg, NULL);
    CHECK(pt_wait_log(&T, "old.log", "were swapped in for its script version",
                      1, 60) >= 1,
          "the old script refuses the swapped-in tables");
    kill(old, SIGTERM);
    th_wait(old, -1);
    CHECK_INT(pt_long(&T, "SELECT sum(changes) FROM shipping_addresses"),
              55 * CUSTOMERS, "and applies nothing to them");

    char cfg2[800], ctext[8192], from[1100], to[800];
    th_read_file(cfg, ctext, sizeof ctext);
    snprintf(from, sizeof from, "%s/projections", T.src);
    snprintf(to, sizeof to, "%s/projections", newdir);
    char *at = strstr(ctext, from);
    CHECK(at != NULL, "the test's config names the example projections");
    if (at) {
        char rest[8192];
        snprintf(rest, sizeof rest, "%s", at + strlen(from));
        snprintf(at, sizeof ctext - (size_t)(at - ctext), "%s%s", to, rest);
    }
    snprintf(cfg2, sizeof cfg2, "%s/evlua-new.lua", T.dir);
    th_write_file(cfg2, ctext);
    pid_t nw = pt_spawn(&T, "new.log", "run", "-c", cfg2, NULL);
    CHECK_INT(pt_wait_for(&T, 65 * CUSTOMERS, 120,
                          "SELECT sum(changes) FROM shipping_addresses"),
              65 * CUSTOMERS,
              "the new script goes on from the shadow's offsets");
    kill(nw, SIGTERM);
    CHECK_INT(th_wait(nw, -1), 0, "and stops with exit 0");
    expected(want, sizeof want);
    rows(T.name, got, sizeof got);
    CHECK_STR(got, want, "every event exactly once");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM shipping_addresses WHERE "
                          "number = '65'"),
              CUSTOMERS, "written by the new script");

    /* back */
    CHECK_INT(cli("back.log", out, sizeof out, "swap", "--back", NULL, NULL), 0,
              "swap --back exits 0");
    CHECK_INT(pt_long(&T, "%s", q), 0, "the live table is the old version");
    CHECK_INT(pt_long(&T, "SELECT sum(changes) FROM shipping_addresses"),
              55 * CUSTOMERS, "as it was swapped out");
    old = pt_spawn(&T, "old2.log", "run", "-c", cfg, NULL);
    CHECK_INT(pt_wait_for(&T, 65 * CUSTOMERS, 120,
                          "SELECT sum(changes) FROM shipping_addresses"),
              65 * CUSTOMERS, "the old script goes on from its own offsets");
    kill(old, SIGTERM);
    CHECK_INT(th_wait(old, -1), 0, "and stops with exit 0");
    rows(T.name, got, sizeof got);
    CHECK_STR(got, want, "every event exactly once");

    reading = 0;
    pthread_join(rt, NULL);
    CHECK(reads > 0, "the reader read throughout");
    CHECK_INT(read_errors, 0, "and no query of it failed");
    if (read_errors)
        fprintf(stderr, "first reader error: %s\n", read_error);

    pt_exec(&T, "DROP SCHEMA evlua_shadow_shipping_addresses CASCADE");
    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
