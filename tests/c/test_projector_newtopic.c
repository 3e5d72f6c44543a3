/*
 * test_projector_newtopic.c - a new aggregate type's events are projected
 * within seconds, even when its events topic does not exist when the
 * projector starts.
 *
 * A librdkafka consumer subscribed to a topic that does not exist sees it
 * only at its next full metadata refresh (topic.metadata.refresh.interval.ms,
 * 5 minutes by default), while /readyz said ready. Two runs of `evlua run`
 * (projector only) for an aggregate type whose events topic does not
 * exist:
 *
 *   with commands.create_topics (the default) the projector creates it,
 *   with commands.partitions partitions, before subscribing: events
 *   produced to it are projected within seconds;
 *
 *   with commands.create_topics = false it waits for the topic, and
 *   /readyz answers 503 naming it; once the topic is created and events
 *   produced to it, they are projected within seconds and /readyz says
 *   ready.
 *
 * A third run (two projector threads) gets a new aggregate type while it
 * runs: its script and a handler for its event are added, then SIGHUP.
 * Each thread subscribes to the new type's events topic (created, as at
 * start), logged once per thread; its events are projected within
 * seconds, each once. A SIGHUP that changes no topic subscribes to
 * nothing new.
 */
#include "projtest.h"

#include <unistd.h>

static pt T;

static void projection(void)
{
    char path[800];
    snprintf(path, sizeof path, "%s/projections/opened.lua", T.dir);
    th_write_file(
        path, "return {\n"
              "  name = 'opened',\n"
              "  schema = [[CREATE TABLE IF NOT EXISTS opened (type text, id "
              "text,\n"
              "    PRIMARY KEY (type, id))]],\n"
              "  on = {\n"
              "    Opened = function(e)\n"
              "      return { [[INSERT INTO opened VALUES ($1, $2)\n"
              "                 ON CONFLICT DO NOTHING]],\n"
              "               e.aggregate_type, e.aggregate_id }\n"
              "    end,\n"
              "  },\n"
              "}\n");
}

static void produce(const char *topic, const char *type)
{
    pt_begin(&T);
    for (int i = 1; i <= 3; i++) {
        char id[32], aj[40];
        snprintf(id, sizeof id, "x%d", i);
        snprintf(aj, sizeof aj, "\"%s\"", id);
        pt_event(&T, topic, type, aj, id, 1, "Opened", "{}");
    }
    pt_commit(&T);
}

/* One run: evlua run for aggregate type `type` (whose events topic does
 * not exist), create: commands.create_topics. */
static void run(const char *type, int create, int port)
{
    char topic[200], extra[1200], pdir[700], cfg[700], b[16384], sql[300],
        log[64], msg[300];
    const char *mode = create ? "create_topics" : "no create_topics";
    snprintf(topic, sizeof topic, "%s.events", type);
    snprintf(log, sizeof log, "evlua-%s.log", create ? "create" : "wait");
    pt_opened_aggregate(&T, type);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "commands = { enabled = false, create_topics = %s, partitions "
             "= 3 },\n"
             "  projection = { group_prefix = \"%s.%s.\", threads = 1 },\n"
             "  metrics = { listen = \"127.0.0.1:%d\" },",
             create ? "true" : "false", T.name, create ? "c" : "w", port);
    pt_config(&T, pdir, extra);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    CHECK_INT(pt_partitions(&T, topic), 0, "the events topic does not exist");

    pid_t pid = pt_spawn(&T, log, "run", "-c", cfg, NULL);
    if (create) {
        int n = 0;
        for (int i = 0; i < 100 && n == 0; i++) {
            th_sleep_ms(200);
            n = pt_partitions(&T, topic);
        }
        CHECK_INT(n, 3,
                  "the projector created the events topic with "
                  "commands.partitions partitions");
    } else {
        /* started, waiting for the topic */
        CHECK(pt_wait_log(&T, log, "projector started", 1, 30) == 1,
              "the projector started");
        th_sleep_ms(2000);
        CHECK_HAS(th_readyz(port, b, sizeof b), " 503",
                  "/readyz: not ready while the topic is missing");
        CHECK_HAS(b, topic, "naming the missing topic");
        CHECK_INT(pt_partitions(&T, topic), 0,
                  "the projector did not create the topic");
        pt_topic(&T, topic, 2);
    }
    double t0 = th_now();
    produce(topic, type);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM opened WHERE type = '%s'",
             type);
    long long got = pt_wait_for(&T, 3, 30, sql);
    double took = th_now() - t0;
    snprintf(msg, sizeof msg,
             "[%s] the events are projected within seconds (took %.1f s)", mode,
             took);
    CHECK_INT(got, 3, msg);
    CHECK(took < 20, msg);
    int ready = 0;
    for (int i = 0; i < 50 && !ready; i++) {
        ready = strstr(th_readyz(port, b, sizeof b), " 200") != NULL;
        if (!ready)
            th_sleep_ms(200);
    }
    snprintf(msg, sizeof msg, "[%s] /readyz says ready once assigned: %.200s",
             mode, b);
    CHECK(ready, msg);
    CHECK_INT(
        pt_log_count(&T, log,
                     create ? "topic created" : "exists now; subscribing"),
        1,
        create ? "the log says the topic was created"
               : "the log says the topic appeared");
    kill(pid, SIGTERM);
    CHECK_INT(th_wait(pid, -1), 0, "SIGTERM: exit 0");
}

/* Aggregate type `type` whose command Write makes the event Noted, and
 * projection opened with a handler counting Noted events per aggregate. */
static void add_noted(const char *type)
{
    char path[800], text[1024];
    snprintf(path, sizeof path, "%s/aggregates/%s.lua", T.dir, type);
    snprintf(text, sizeof text,
             "return {\n"
             "  type = '%s',\n"
             "  initial = function() return {} end,\n"
             "  apply = { Noted = function(s, e) s.n = true end },\n"
             "  handle = { Write = function(s, c) return { { type = "
             "'Noted', data = {} } } end },\n"
             "}\n",
             type);
    th_write_file(path, text);
    snprintf(path, sizeof path, "%s/projections/opened.lua", T.dir);
    th_write_file(
        path, "return {\n"
              "  name = 'opened',\n"
              "  schema = {\n"
              "    [[CREATE TABLE IF NOT EXISTS opened (type text, id text,\n"
              "      PRIMARY KEY (type, id))]],\n"
              "    [[CREATE TABLE IF NOT EXISTS noted (id text PRIMARY KEY,\n"
              "      n integer NOT NULL)]],\n"
              "  },\n"
              "  on = {\n"
              "    Opened = function(e)\n"
              "      return { [[INSERT INTO opened VALUES ($1, $2)\n"
              "                 ON CONFLICT DO NOTHING]],\n"
              "               e.aggregate_type, e.aggregate_id }\n"
              "    end,\n"
              "    Noted = function(e)\n"
              "      return { [[INSERT INTO noted VALUES ($1, 1) ON CONFLICT\n"
              "        (id) DO UPDATE SET n = noted.n + 1]], e.aggregate_id }\n"
              "    end,\n"
              "  },\n"
              "}\n");
}

/* Without any aggregate script the projection would read no topic: the
 * reload is refused by each thread, and the loaded set reads on. */
static void refused(pid_t pid, const char *log, const char *type,
                    const char *topic)
{
    char dir[800], off[800];
    snprintf(dir, sizeof dir, "%s/aggregates", T.dir);
    snprintf(off, sizeof off, "%s/aggregates.off", T.dir);
    CHECK(rename(dir, off) == 0 && mkdir(dir, 0755) == 0,
          "[refused] the aggregate scripts moved away");
    kill(pid, SIGHUP);
    CHECK_INT(pt_wait_log(&T, log, "cannot subscribe to the reloaded", 2, 30),
              2, "[refused] each thread refuses the reload, logged");
    CHECK_INT(pt_log_count(&T, log, "projection reloaded"), 4,
              "[refused] and keeps the loaded set");
    CHECK(rmdir(dir) == 0 && rename(off, dir) == 0,
          "[refused] the aggregate scripts back");
    pt_begin(&T);
    pt_event(&T, topic, type, "\"n7\"", "n7", 1, "Noted", "{}");
    pt_commit(&T);
    CHECK_INT(pt_wait_for(&T, 7, 30, "SELECT count(*) FROM noted"), 7,
              "[refused] the loaded subscription reads on");
}

/* The third run: a type added at SIGHUP (the others' topics exist). */
static void run_reload(int port)
{
    char type[120], topic[200], extra[1200], pdir[700], cfg[700], msg[300];
    const char *log = "evlua-reload.log",
               *subscribed = "projection subscribed to the reloaded topics";
    snprintf(type, sizeof type, "%s_noted", T.name);
    snprintf(topic, sizeof topic, "%s.events", type);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "commands = { enabled = false, partitions = 3 },\n"
             "  projection = { group_prefix = \"%s.r.\", threads = 2 },\n"
             "  metrics = { listen = \"127.0.0.1:%d\" },",
             T.name, port);
    pt_config(&T, pdir, extra);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pid_t pid = pt_spawn(&T, log, "run", "-c", cfg, NULL);
    CHECK_INT(pt_wait_log(&T, log, "projector started", 2, 30), 2,
              "[reload] both projector threads started");

    add_noted(type);
    kill(pid, SIGHUP);
    CHECK_INT(pt_wait_log(&T, log, subscribed, 2, 60), 2,
              "[reload] SIGHUP: each thread subscribes to the new type's "
              "events topic");
    CHECK_INT(pt_partitions(&T, topic), 3,
              "[reload] the topic was created as at start "
              "(commands.partitions)");
    double t0 = th_now();
    pt_begin(&T);
    for (int i = 1; i <= 6; i++) {
        char id[32], aj[40];
        snprintf(id, sizeof id, "n%d", i);
        snprintf(aj, sizeof aj, "\"%s\"", id);
        pt_event(&T, topic, type, aj, id, 1, "Noted", "{}");
    }
    pt_commit(&T);
    long long got = pt_wait_for(&T, 6, 30, "SELECT count(*) FROM noted");
    double took = th_now() - t0;
    snprintf(msg, sizeof msg,
             "[reload] the new type's events are projected within seconds "
             "(took %.1f s)",
             took);
    CHECK_INT(got, 6, msg);
    CHECK(took < 20, msg);
    th_sleep_ms(3000); /* time for a second application to show */
    CHECK_INT(pt_long(&T, "SELECT sum(n) FROM noted"), 6,
              "[reload] each event applied once");

    kill(pid, SIGHUP);
    CHECK_INT(pt_wait_log(&T, log, "projection reloaded", 4, 30), 4,
              "[reload] a second SIGHUP reloads both threads");
    CHECK_INT(pt_log_count(&T, log, subscribed), 2,
              "[reload] and subscribes to nothing new: no topic changed");
    refused(pid, log, type, topic);
    kill(pid, SIGTERM);
    CHECK_INT(th_wait(pid, -1), 0, "[reload] SIGTERM: exit 0");
}

int main(void)
{
    char type[120];
    int port = th_free_port();
    pt_init(&T, "proj_newtopic");
    projection();
    pt_producer(&T);

    snprintf(type, sizeof type, "%s_made", T.name);
    run(type, 1, port);
    /* the next run loads every aggregate script: the first type's topic
     * exists now */
    snprintf(type, sizeof type, "%s_late", T.name);
    run(type, 0, port + 1);
    run_reload(port + 2);

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
