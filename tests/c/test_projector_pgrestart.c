/*
 * test_projector_pgrestart.c - PostgreSQL restarted under a running
 * projector: processing resumes, nothing is lost or doubled.
 *
 * The test runs its own PostgreSQL cluster (scripts/pg under a private
 * EVLUA_RUN_DIR), so restarting it disturbs no other test. A projector
 * reads 6,000 events over 100 aggregates into a table that counts and
 * sums (not idempotent) and a log of (aggregate, sequence) without a
 * key; each event also sleeps 0.5 ms so the run lasts. Mid-stream the
 * server is restarted twice: `pg_ctl restart -m fast` (connections
 * terminated) and `-m immediate` (a crash: the outcome of a COMMIT in
 * flight is unknown, and crash recovery runs). Afterwards every event is
 * in the log exactly once, every count and sum is right and every
 * checkpoint is the aggregate's last sequence.
 */
#include <pthread.h>

#include "projtest.h"

static pt T;
static char topic[128], rundir[600], bindir[256], conninfo[1024];
static evl_projector_stats stats;
static int run_rc = -1;

static const char script[] =
    "return {\n"
    "  name = 'restart',\n"
    "  schema = [[\n"
    "    CREATE TABLE IF NOT EXISTS totals (id text PRIMARY KEY,\n"
    "      n integer NOT NULL, sum bigint NOT NULL);\n"
    "    CREATE TABLE IF NOT EXISTS applied (id text NOT NULL,\n"
    "      seq bigint NOT NULL)]],\n"
    "  on = {\n"
    "    Added = function(e)\n"
    "      return {\n"
    "        { [[INSERT INTO totals VALUES ($1, 1, $2) ON CONFLICT (id)\n"
    "            DO UPDATE SET n = totals.n + 1,\n"
    "            sum = totals.sum + EXCLUDED.sum]], e.aggregate_id, "
    "e.data.v },\n"
    "        { 'INSERT INTO applied VALUES ($1, $2)', e.aggregate_id,\n"
    "          e.sequence },\n"
    "        { 'SELECT pg_sleep(0.0005)' },\n"
    "      }\n"
    "    end,\n"
    "  },\n"
    "}\n";

static void sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    fprintf(stderr, "+ %s\n", cmd);
    if (system(cmd) != 0)
        th_die("command failed: %s", cmd);
}

/* atexit: the private cluster never outlives the test, even a failed
 * one. */
static void stop_cluster(void)
{
    char cmd[2048];
    const char *src = getenv("EVLUA_SOURCE_DIR");
    snprintf(cmd, sizeof cmd,
             "EVLUA_RUN_DIR='%s' '%s/scripts/pg' stop >/dev/null 2>&1; "
             "rm -rf '%s'",
             rundir, src && *src ? src : ".", rundir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: stopping the private cluster failed\n");
}

static void start_cluster(void)
{
    const char *run = getenv("EVLUA_RUN_DIR");
    snprintf(rundir, sizeof rundir, "%s/pgrestart_%ld",
             run && *run ? run : "/tmp", (long)getpid());
    const char *src = getenv("EVLUA_SOURCE_DIR");
    atexit(stop_cluster);
    sh("EVLUA_RUN_DIR='%s' '%s/scripts/pg' start >/dev/null", rundir,
       src && *src ? src : ".");
    char path[700];
    snprintf(path, sizeof path, "%s/pg/conninfo", rundir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(conninfo, sizeof conninfo, f))
        th_die("no conninfo in %s", path);
    fclose(f);
    conninfo[strcspn(conninfo, "\n")] = '\0';
    FILE *p =
        popen("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1", "r");
    if (!p || !fgets(bindir, sizeof bindir, p))
        th_die("no PostgreSQL binaries");
    pclose(p);
    bindir[strcspn(bindir, "\n")] = '\0';
}

static void restart(const char *mode)
{
    char datadir[600], path[700];
    snprintf(path, sizeof path, "%s/pg/datadir", rundir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(datadir, sizeof datadir, f))
        th_die("no datadir in %s", path);
    fclose(f);
    datadir[strcspn(datadir, "\n")] = '\0';
    sh("%s '%s/pg_ctl' restart -D '%s/data' -m %s -w -t 60 -l "
       "'%s/server.log' >/dev/null",
       getuid() == 0 ? "runuser -u postgres --" : "", bindir, datadir, mode,
       datadir);
}

static void *projector(void *arg)
{
    (void)arg;
    run_rc = pt_catch_up(&T, "restart", NULL, &stats);
    return NULL;
}

static long long applied_now(void)
{
    return pt_wait_for(&T, -2, 0, "SELECT count(*) FROM applied");
}

int main(void)
{
    start_cluster();
    pt_init_pg(&T, "proj_pgrestart", conninfo);
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 3);
    char extra[512], pdir[700], path[800];
    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\", "
             "batch_size = 100 },",
             topic, T.name);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(path, sizeof path, "%s/restart.lua", pdir);
    th_write_file(path, script);
    pt_config(&T, pdir, extra);
    pt_producer(&T);
    for (int s = 1; s <= 60; s++) {
        pt_begin(&T);
        for (int a = 0; a < 100; a++) {
            char id[16], data[32];
            snprintf(id, sizeof id, "a%03d", a);
            snprintf(data, sizeof data, "{\"v\":%d}", s);
            pt_ev(&T, topic, id, s, "Added", data);
        }
        pt_commit(&T);
    }

    pthread_t th;
    pthread_create(&th, NULL, projector, NULL);
    /* wait until it is well under way, then restart twice */
    long long n = 0;
    for (int i = 0; i < 600 && (n = applied_now()) < 1000; i++)
        th_sleep_ms(100);
    CHECK(n >= 1000 && n < 6000, "the projector is mid-stream at restart");
    restart("fast");
    pt_connect(&T);
    long long m = applied_now();
    for (int i = 0; i < 600 && (m = applied_now()) < n + 1500; i++)
        th_sleep_ms(100);
    CHECK(m < 6000, "still mid-stream at the crash");
    restart("immediate");
    pt_connect(&T);
    pthread_join(th, NULL);

    CHECK_INT(run_rc, 0, "the projector caught up and exited 0");
    CHECK(stats.retries >= 2, "it retried through both restarts");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM applied"), 6000,
              "every event was applied");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM (SELECT DISTINCT id, seq FROM "
                          "applied) d"),
              6000, "none twice");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM totals WHERE n = 60 AND sum "
                          "= 1830"),
              100, "every aggregate's count and sum are exact");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_checkpoints WHERE "
                          "sequence = 60 AND NOT parked"),
              100, "every checkpoint is the aggregate's last sequence");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_parked"), 0,
              "nothing was parked");

    pt_done(&T);
    return check_done();
}
