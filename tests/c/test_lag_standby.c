/*
 * test_lag_standby.c - a standby instance stays ready while another
 * instance works through an old backlog of its group.
 *
 * lag.h's readiness rule flags a group this process holds nothing of
 * while data waits longer than two periods, but only when the group's
 * position does not move: nobody consumes it. Two `evlua run` for one
 * projection on a one-partition topic (one of them holds nothing), 1,000
 * events waiting when they start and a handler that takes 20 ms each, in
 * batches of 5: for several seconds the oldest waiting event is older
 * than two periods (metrics.lag_interval_ms = 1000) and one instance holds
 * no partition, yet neither /readyz names the group as unconsumed.
 */
#include "projtest.h"

#define NEVENTS 1000

static pt T;

static double age_of(int port, const char *group)
{
    char cmd[256], head[300], line[1024];
    double v = -1;
    snprintf(cmd, sizeof cmd, "curl -s -m 5 http://127.0.0.1:%d/metrics", port);
    snprintf(head, sizeof head, "evlua_consumer_lag_seconds{group=\"%s\"}",
             group);
    FILE *f = popen(cmd, "r");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, head, strlen(head)) == 0)
            v = strtod(line + strlen(head), NULL);
    if (f)
        pclose(f);
    return v;
}

static void config(const char *name, int port)
{
    char dir[700], extra[1000], from[800], to[800];
    snprintf(dir, sizeof dir, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "projection = { group_prefix = \"%s.p.\", threads = 1, "
             "batch_size = 5 },\n"
             "  metrics = { listen = \"127.0.0.1:%d\", lag_interval_ms = "
             "1000 },",
             T.name, port);
    pt_config(&T, dir, extra);
    snprintf(from, sizeof from, "%s/evlua.lua", T.dir);
    snprintf(to, sizeof to, "%s/%s.lua", T.dir, name);
    if (rename(from, to) != 0)
        th_die("rename %s: %s", from, strerror(errno));
}

int main(void)
{
    char type[120], events[200], group[200], path[800], cfga[800], cfgb[800],
        msg[1200], ba[8192], bb[8192];
    int port = th_free_port();
    pt_init(&T, "lagsb");
    snprintf(type, sizeof type, "%s_t", T.name);
    snprintf(events, sizeof events, "%s.events", type);
    snprintf(group, sizeof group, "%s.p.slow", T.name);
    snprintf(path, sizeof path, "%s/projections/slow.lua", T.dir);
    th_write_file(path, "return {\n"
                        "  name = 'slow',\n"
                        "  schema = [[CREATE TABLE IF NOT EXISTS slow (id text "
                        "PRIMARY KEY)]],\n"
                        "  on = {\n"
                        "    Opened = function(e)\n"
                        "      return { [[INSERT INTO slow SELECT $1 FROM "
                        "pg_sleep(0.02)\n"
                        "                 ON CONFLICT DO NOTHING]], "
                        "e.aggregate_id }\n"
                        "    end,\n"
                        "  },\n"
                        "}\n");
    pt_topic(&T, events, 1);
    pt_producer(&T);
    pt_opened_events(&T, events, type, NEVENTS);
    /* the projector reads the events topic of every aggregate type */
    snprintf(path, sizeof path, "%s/aggregates/%s.lua", T.dir, type);
    snprintf(msg, sizeof msg,
             "return { type = '%s', initial = function() return {} end,\n"
             "  apply = { Opened = function(s, e) end },\n"
             "  handle = { Open = function(s, c) return {} end } }\n",
             type);
    th_write_file(path, msg);
    config("a", port);
    config("b", port + 1);
    snprintf(cfga, sizeof cfga, "%s/a.lua", T.dir);
    snprintf(cfgb, sizeof cfgb, "%s/b.lua", T.dir);

    pid_t a = pt_spawn(&T, "a.log", "run", "-c", cfga, NULL);
    pt_wait_for(&T, 1, 30, "SELECT least(count(*), 1) FROM slow");
    pid_t b = pt_spawn(&T, "b.log", "run", "-c", cfgb, NULL);
    /* both settled: each has its assignment (one of them empty) */
    int settled = 0;
    for (int i = 0; i < 100 && !settled; i++) {
        th_sleep_ms(200);
        settled = strstr(th_readyz(port, ba, sizeof ba), "\"projection "
                                                         "slow\":{\"ready\":"
                                                         "true") &&
                  strstr(th_readyz(port + 1, bb, sizeof bb),
                         "\"projection slow\":{\"ready\":true");
    }
    CHECK(settled, "both instances have their assignment");
    th_sleep_ms(1500);

    double t0 = th_now(), oldest = 0;
    int flagged = 0, samples = 0;
    long long done = 0;
    while (th_now() - t0 < 6 && !flagged) {
        th_readyz(port, ba, sizeof ba);
        th_readyz(port + 1, bb, sizeof bb);
        flagged =
            strstr(ba, "nobody consumes") || strstr(bb, "nobody consumes");
        double x = age_of(port + 1, group), y = age_of(port, group);
        if (x > oldest)
            oldest = x;
        if (y > oldest)
            oldest = y;
        samples++;
        th_sleep_ms(300);
    }
    done = pt_long(&T, "SELECT count(*) FROM slow");
    snprintf(msg, sizeof msg,
             "the oldest waiting event was older than two periods while "
             "the backlog was worked on (%.1f s; %lld of %d done)",
             oldest, done, NEVENTS);
    CHECK(oldest > 2 && done < NEVENTS, msg);
    fprintf(stderr, "%s\n", msg);
    snprintf(msg, sizeof msg,
             "neither instance names the group as unconsumed (%d samples): "
             "%.300s | %.300s",
             samples, ba, bb);
    CHECK(!flagged, msg);

    kill(a, SIGTERM);
    kill(b, SIGTERM);
    CHECK_INT(th_wait(a, -1), 0, "SIGTERM: a exits 0");
    CHECK_INT(th_wait(b, -1), 0, "SIGTERM: b exits 0");
    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
