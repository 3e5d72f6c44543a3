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
 */
#include "projtest.h"

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

int main(void)
{
    char type[120];
    int port = 20000 + (int)(getpid() % 30000);
    pt_init(&T, "proj_newtopic");
    projection();
    pt_producer(&T);

    snprintf(type, sizeof type, "%s_made", T.name);
    run(type, 1, port);
    /* the next run loads every aggregate script: the first type's topic
     * exists now */
    snprintf(type, sizeof type, "%s_late", T.name);
    run(type, 0, port + 1);

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
