/*
 * test_lag.c - evlua_consumer_lag and evlua_consumer_lag_seconds tell the
 * truth about a group whatever its assignment, and /readyz says when a
 * group holds nothing here while its topics have data waiting.
 *
 * `evlua run` with a command processor and a projection, each group's
 * partitions all held by another member that does not consume: a plain
 * librdkafka consumer joined first with the same assignor, which then
 * stops polling, so the rebalance evlua's join starts waits for it
 * (max.poll.interval.ms) and evlua gets nothing. Meanwhile 20 events and
 * 7 commands wait:
 *
 *   within a few timer periods (metrics.lag_interval_ms = 1000) the
 *   projection group's lag is 20 and the commands group's 7, the age of
 *   the oldest waiting event grows, and /readyz answers 503 naming both
 *   groups;
 *
 *   once the other member leaves, evlua takes the partitions, consumes
 *   everything, and within a few periods both lags and ages are 0 and
 *   /readyz says ready.
 */
#include "projtest.h"

#define NEVENTS 20
#define NCMDS   7

static pt T;

/* Sum of metric{group="group",...} in the scrape b; -1 when absent. */
static double metric(const char *b, const char *name, const char *group)
{
    char head[400];
    double sum = -1;
    snprintf(head, sizeof head, "%s{group=\"%s\"", name, group);
    for (const char *p = b; (p = strstr(p, head)) != NULL; p++) {
        if (p != b && p[-1] != '\n')
            continue;
        const char *sp = strchr(p, '}');
        if (!sp)
            break;
        if (sum < 0)
            sum = 0;
        sum += strtod(sp + 1, NULL);
    }
    return sum;
}

/* With a rebalance callback, librdkafka hands a revocation to the
 * application's next poll: a member that stops polling keeps its
 * partitions through a rebalance until max.poll.interval.ms. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *ps, void *opaque)
{
    (void)opaque;
    rd_kafka_assign(rk,
                    err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? ps : NULL);
}

/* A group member that takes every partition of topic and then never
 * polls again: its partitions stay with it through evlua's join. */
static rd_kafka_t *blocker(const char *group, const char *topic, int nparts)
{
    char errstr[512];
    rd_kafka_conf_t *conf = pt_kconf(&T);
    th_kset(conf, "group.id", group);
    th_kset(conf, "partition.assignment.strategy", "range");
    th_kset(conf, "enable.auto.commit", "false");
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk)
        th_die("rd_kafka_new(blocker): %s", errstr);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
    if (rd_kafka_subscribe(rk, l))
        th_die("subscribe(blocker)");
    rd_kafka_topic_partition_list_destroy(l);
    int held = 0;
    for (int i = 0; i < 300 && held < nparts; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m)
            rd_kafka_message_destroy(m);
        rd_kafka_topic_partition_list_t *a = NULL;
        if (!rd_kafka_assignment(rk, &a) && a) {
            held = a->cnt;
            rd_kafka_topic_partition_list_destroy(a);
        }
    }
    if (held < nparts)
        th_die("the blocker of %s did not get its partitions", group);
    return rk;
}

int main(void)
{
    char type[120], events[200], commands[200], pgroup[200], cgroup[200],
        path[800], extra[1500], cfg[800], msg[600];
    static char b[1 << 18];
    int port = th_free_port();
    pt_init(&T, "lag");
    snprintf(type, sizeof type, "%s_acct", T.name);
    snprintf(events, sizeof events, "%s.events", type);
    snprintf(commands, sizeof commands, "%s.commands", type);
    snprintf(pgroup, sizeof pgroup, "%s.p.opened", T.name);
    snprintf(cgroup, sizeof cgroup, "%s.cmd", T.name);

    pt_opened_aggregate(&T, type);
    snprintf(path, sizeof path, "%s/projections/opened.lua", T.dir);
    th_write_file(path,
                  "return {\n"
                  "  name = 'opened',\n"
                  "  schema = [[CREATE TABLE IF NOT EXISTS opened (id text "
                  "PRIMARY KEY)]],\n"
                  "  on = {\n"
                  "    Opened = function(e)\n"
                  "      return { [[INSERT INTO opened VALUES ($1)\n"
                  "                 ON CONFLICT DO NOTHING]], "
                  "e.aggregate_id }\n"
                  "    end,\n"
                  "  },\n"
                  "}\n");
    pt_topic(&T, events, 2);
    pt_topic(&T, commands, 2);
    rd_kafka_t *pblock = blocker(pgroup, events, 2);
    rd_kafka_t *cblock = blocker(cgroup, commands, 2);

    /* the waiting work: 20 events in one transaction, 7 commands */
    pt_producer(&T);
    pt_opened_events(&T, events, type, NEVENTS);
    {
        rd_kafka_conf_t *conf = pt_kconf(&T);
        /* the partitioner evlua checks commands against */
        th_kset(conf, "partitioner", "murmur2_random");
        rd_kafka_t *prod = th_kafka_new(RD_KAFKA_PRODUCER, conf, "producer");
        for (int i = 1; i <= NCMDS; i++) {
            char id[32], v[400];
            snprintf(id, sizeof id, "c%d", i);
            snprintf(v, sizeof v,
                     "{\"id\":\"cmd-%s\",\"type\":\"Open\",\"aggregate_type\":"
                     "\"%s\",\"aggregate_id\":\"%s\",\"data\":{}}",
                     id, type, id);
            if (rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(commands),
                                  RD_KAFKA_V_KEY(id, strlen(id)),
                                  RD_KAFKA_V_VALUE(v, strlen(v)),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                  RD_KAFKA_V_END))
                th_die("producev(command)");
        }
        if (rd_kafka_flush(prod, 30000))
            th_die("flush(commands)");
        rd_kafka_destroy(prod);
    }

    snprintf(path, sizeof path, "%s/projections", T.dir);
    snprintf(extra, sizeof extra,
             "commands = { enabled = true, group_id = \"%s\", "
             "transactional_id = \"%s.tx\" },\n"
             "  projection = { group_prefix = \"%s.p.\", threads = 1 },\n"
             "  metrics = { listen = \"127.0.0.1:%d\", lag_interval_ms = "
             "1000 },",
             cgroup, T.name, T.name, port);
    pt_config(&T, path, extra);
    snprintf(cfg, sizeof cfg, "%s/evlua.lua", T.dir);
    pid_t pid = pt_spawn(&T, "evlua.log", "run", "-c", cfg, NULL);

    /* held elsewhere: the lag counts what waits */
    double pl = -1, cl = -1, age1 = -1, t0 = th_now();
    while (th_now() - t0 < 20) {
        th_http_get(port, "/metrics", b, sizeof b);
        pl = metric(b, "evlua_consumer_lag", pgroup);
        cl = metric(b, "evlua_consumer_lag", cgroup);
        age1 = metric(b, "evlua_consumer_lag_seconds", pgroup);
        if (pl == NEVENTS && cl == NCMDS && age1 > 0)
            break;
        th_sleep_ms(250);
    }
    snprintf(msg, sizeof msg,
             "no partitions: the projection's lag is the %d waiting events "
             "(got %g), the commands group's the %d waiting commands (got "
             "%g), the oldest is older than 0 s (got %g), within %.1f s",
             NEVENTS, pl, NCMDS, cl, age1, th_now() - t0);
    CHECK(pl == NEVENTS && cl == NCMDS && age1 > 0, msg);
    fprintf(stderr, "%s\n", msg);
    th_sleep_ms(2500);
    double age2 = metric(th_http_get(port, "/metrics", b, sizeof b),
                         "evlua_consumer_lag_seconds", pgroup);
    snprintf(msg, sizeof msg, "the age grows while they wait (%g s, then %g s)",
             age1, age2);
    CHECK(age2 >= age1 + 1.5, msg);
    fprintf(stderr, "%s\n", msg);
    double cage = metric(b, "evlua_consumer_lag_seconds", cgroup);
    snprintf(msg, sizeof msg, "the commands' age is above 0 (got %g)", cage);
    CHECK(cage > 0, msg);
    for (int i = 0; i < 50; i++) {
        th_readyz(port, b, 16384);
        if (strstr(b, " 503") && strstr(b, pgroup) && strstr(b, cgroup))
            break;
        th_sleep_ms(200);
    }
    snprintf(msg, sizeof msg, "/readyz 503 naming both groups: %.400s", b);
    CHECK(strstr(b, " 503") && strstr(b, pgroup) && strstr(b, cgroup), msg);
    fprintf(stderr, "%s\n", msg);

    /* the other members leave: evlua consumes, the gauges go to 0 */
    rd_kafka_consumer_close(pblock);
    rd_kafka_destroy(pblock);
    rd_kafka_consumer_close(cblock);
    rd_kafka_destroy(cblock);
    long long got =
        pt_wait_for(&T, NEVENTS + NCMDS, 60, "SELECT count(*) FROM opened");
    CHECK_INT(got, NEVENTS + NCMDS, "every event and command is projected");
    t0 = th_now();
    double pa = -1, ca = -1;
    while (th_now() - t0 < 15) {
        th_http_get(port, "/metrics", b, sizeof b);
        pl = metric(b, "evlua_consumer_lag", pgroup);
        cl = metric(b, "evlua_consumer_lag", cgroup);
        pa = metric(b, "evlua_consumer_lag_seconds", pgroup);
        ca = metric(b, "evlua_consumer_lag_seconds", cgroup);
        if (pl == 0 && cl == 0 && pa == 0 && ca == 0)
            break;
        th_sleep_ms(250);
    }
    snprintf(msg, sizeof msg,
             "caught up: lags and ages go to 0 (projection %g / %g s, "
             "commands %g / %g s) within %.1f s",
             pl, pa, cl, ca, th_now() - t0);
    CHECK(pl == 0 && cl == 0 && pa == 0 && ca == 0, msg);
    fprintf(stderr, "%s\n", msg);
    int ready = 0;
    for (int i = 0; i < 50 && !ready; i++) {
        ready = strstr(th_readyz(port, b, 16384), " 200") != NULL;
        if (!ready)
            th_sleep_ms(200);
    }
    snprintf(msg, sizeof msg, "/readyz ready once caught up: %.300s", b);
    CHECK(ready, msg);

    kill(pid, SIGTERM);
    CHECK_INT(th_wait(pid, -1), 0, "SIGTERM: exit 0");
    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
