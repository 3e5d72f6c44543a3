/*
 * test_cmd_static.c - after kill -9, a restarted `evlua run` with
 * `instance` set gets its partitions back at once (static membership),
 * on both sides; without `instance` it says why it waits.
 *
 * `evlua run` with the customer aggregate and a projection of it, with
 * session.timeout.ms = 30 s:
 *
 *   without `instance`: killed with -9 and restarted at once, the new
 *   process waits for the dead members' sessions to time out, and says so
 *   in the log for the command consumer's group and the projection's
 *   group ("waiting for partitions of group ... session.timeout.ms=30000;
 *   set `instance` ...");
 *
 *   with `instance`: killed with -9 and restarted, both sides have their
 *   partitions again in well under half the session timeout (a ratio to
 *   session.timeout.ms, not an absolute time), and a command sent after
 *   the restart is accepted and projected;
 *
 *   a second process with the same `instance`: the first one's consumers
 *   are fenced (FENCED_INSTANCE_ID is fatal), it exits non-zero and its
 *   log says that two processes share one `instance`.
 */
#include <libpq-fe.h>

#include "cmdtest.h"

#define SESSION_MS 30000

static ct T;
static char schema[64], dbinfo[1400];

static void db_exec(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        th_die("PQconnectdb: %s", PQerrorMessage(c));
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        PQresultStatus(res) != PGRES_TUPLES_OK)
        th_die("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
}

static long long db_count(const char *sql)
{
    PGconn *c = PQconnectdb(dbinfo);
    long long n = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *res = PQexec(c, sql);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
            n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
    }
    PQfinish(c);
    return n;
}

/* Config NAME.lua: groups and transactional id under tag, `instance`
 * when instance is not NULL. */
static void config(const char *name, const char *tag, const char *txid,
                   const char *instance)
{
    char text[8192], rel[64], inst[200] = "";
    if (instance)
        snprintf(inst, sizeof inst, "instance = '%s',", instance);
    snprintf(text, sizeof text,
             "return {\n"
             "  aggregates = '%s/aggregates',\n"
             "  projections = '%s/projections',\n"
             "  postgres = [==[%s]==],\n"
             "  kafka = { ['bootstrap.servers'] = '%s',\n"
             "            ['session.timeout.ms'] = %d,\n"
             "            ['heartbeat.interval.ms'] = 1000 },\n"
             "  commands = {\n"
             "    group_id = '%s.%s.cmd', transactional_id = '%s.%s',\n"
             "    partitions = 2,\n"
             "    topics = { commands = '%s.{type}.commands',\n"
             "               events = '%s.{type}.events',\n"
             "               state = '%s.{type}.state',\n"
             "               results = '%s.{type}.results' },\n"
             "  },\n"
             "  projection = { group_prefix = '%s.%s.proj.', threads = 1 },\n"
             "  %s\n"
             "}\n",
             T.dir, T.dir, dbinfo, T.bootstrap, SESSION_MS, T.prefix, tag,
             T.prefix, txid, T.prefix, T.prefix, T.prefix, T.prefix, T.prefix,
             tag, inst);
    snprintf(rel, sizeof rel, "%s.lua", name);
    ct_write_file(&T, rel, text);
}

/* Both sides have partitions in LOG (within timeout_ms). */
static int assigned(const char *log, long long timeout_ms)
{
    long long deadline = th_now_ms() + timeout_ms;
    return ct_wait_log(&T, log, "msg=\"partitions assigned\"", timeout_ms) &&
           ct_wait_log(&T, log,
                       "msg=\"partitions assigned at their database offsets\"",
                       deadline - th_now_ms());
}

static void kill9(pid_t pid)
{
    kill(pid, SIGKILL);
    th_wait(pid, 10);
}

static void register_customer(rd_kafka_t *p, const char *cmd, const char *id)
{
    ct_send(&T, p, "customer", cmd, "RegisterCustomer", id,
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\",\"address\":"
            "\"1 Main St\"}",
            NULL);
    ct_flush(p);
}

int main(void)
{
    char conninfo[1024], sql[512], results[256], group[300], msg[300];
    ct_init(&T, "static");
    svc_pg_conninfo(conninfo, sizeof conninfo);
    snprintf(schema, sizeof schema, "cmd_static_%ld", (long)getpid());
    snprintf(dbinfo, sizeof dbinfo, "%s options='-csearch_path=%s'", conninfo,
             schema);
    snprintf(sql, sizeof sql,
             "SET client_min_messages = warning; DROP SCHEMA IF EXISTS %s "
             "CASCADE; CREATE SCHEMA %s",
             schema, schema);
    db_exec(conninfo, sql);
    ct_copy_aggregate(&T, "customer.lua");
    char pdir[700];
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    mkdir(pdir, 0755);
    ct_write_file(&T, "projections/registered.lua",
                  "return {\n"
                  "  name = 'registered',\n"
                  "  schema = [[CREATE TABLE IF NOT EXISTS registered (id "
                  "text PRIMARY KEY)]],\n"
                  "  on = { CustomerRegistered = function(e)\n"
                  "    return { [[INSERT INTO registered VALUES ($1)\n"
                  "               ON CONFLICT DO NOTHING]], e.aggregate_id }\n"
                  "  end },\n"
                  "}\n");
    ct_topic(&T, "customer", "results", results, sizeof results);
    rd_kafka_t *p = ct_producer(&T);

    /* ---- without `instance`: the restarted process says why it waits */
    config("dyn", "dyn", "dyn", NULL);
    pid_t pid = ct_start(&T, "dyn", "dyn1.log", NULL);
    CHECK(assigned("dyn1.log", 60000), "the first run has its partitions");
    kill9(pid);
    pid = ct_start(&T, "dyn", "dyn2.log", NULL);
    /* both sides wait; each says so (after EVL_KAFKA_WAIT_LOG_MS) */
    long long t1 = th_now_ms();
    snprintf(group, sizeof group, "waiting for partitions of group %s.dyn.cmd",
             T.prefix);
    CHECK(ct_wait_log(&T, "dyn2.log", group, SESSION_MS / 2),
          "the restarted process logs why the command side waits, within "
          "half the session timeout");
    snprintf(group, sizeof group,
             "waiting for partitions of group %s.dyn.proj.registered",
             T.prefix);
    CHECK(
        ct_wait_log(&T, "dyn2.log", group, SESSION_MS / 2 - (th_now_ms() - t1)),
        "and why the projection waits");
    CHECK(ct_log_has(&T, "dyn2.log", "session.timeout.ms=30000"),
          "naming the session timeout");
    CHECK(ct_log_has(&T, "dyn2.log", "set `instance` for static membership"),
          "and what to do about it");
    CHECK(!ct_log_has(&T, "dyn2.log", "msg=\"partitions assigned\""),
          "it has no partitions yet (the dead member holds them)");
    kill9(pid);

    /* ---- with `instance`: partitions back at once after kill -9 */
    config("st", "st", "st", "node-1");
    pid = ct_start(&T, "st", "st1.log", NULL);
    CHECK(assigned("st1.log", 60000), "the first run has its partitions");
    register_customer(p, "cmd-1", "c-1");
    th_recs res = {0};
    CHECK_INT(ct_wait_count(&T, results, 1, 60, &res), 1,
              "the first command has its result");
    th_recs_free(&res);
    kill9(pid);
    long long t0 = th_now_ms();
    pid = ct_start(&T, "st", "st2.log", NULL);
    int back = assigned("st2.log", SESSION_MS * 2);
    double ratio = (double)(th_now_ms() - t0) / SESSION_MS;
    snprintf(msg, sizeof msg,
             "the restarted instance has both sides' partitions back after "
             "%.2f of session.timeout.ms (expected < 0.5)",
             ratio);
    CHECK(back && ratio < 0.5, msg);
    fprintf(stderr, "%s\n", msg);
    register_customer(p, "cmd-2", "c-2");
    CHECK_INT(ct_wait_count(&T, results, 2, 60, &res), 2,
              "a command after the restart has its result");
    const th_rec *r = ct_result(&res, "cmd-2");
    CHECK_STR(r ? th_str(r, "status") : NULL, "accepted", "it is accepted");
    th_recs_free(&res);
    long long n = 0;
    for (int i = 0; i < 300 && n != 2; i++) {
        n = db_count("SELECT count(*) FROM registered");
        if (n != 2)
            th_sleep_ms(100);
    }
    CHECK_INT(n, 2, "and projected");

    /* ---- a second process with the same `instance` fences the first */
    config("dup", "st", "dup", "node-1");
    pid_t dup = ct_start(&T, "dup", "dup.log", NULL);
    int rc = th_wait(pid, 60);
    CHECK(rc > 0 && rc < 128,
          "the first process stops with an error when another one takes "
          "its instance");
    CHECK(ct_log_has(&T, "st2.log", "FENCED_INSTANCE_ID"),
          "its log names the fencing");
    CHECK(ct_log_has(&T, "st2.log", "same `instance`"),
          "and says that two processes share one `instance`");
    CHECK(assigned("dup.log", SESSION_MS), "the second one has partitions");
    if (rc < 0)
        kill9(pid);
    CHECK_INT(th_stop(dup, SIGTERM, 60), 0, "SIGTERM: exit 0");

    if (check_failures_) {
        ct_dump_log(&T, "dyn2.log");
        ct_dump_log(&T, "st2.log");
    }
    rd_kafka_destroy(p);
    snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", schema);
    db_exec(conninfo, sql);
    return check_done();
}
