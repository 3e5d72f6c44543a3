/*
 * cmd_topics.c - the command side's aggregate types and their topics
 * (cmdproc_int.h): each loaded aggregate type has a commands, events,
 * state and results topic, all with one partition count (an aggregate's
 * command, events and snapshot share a partition number). At start and on
 * a reload that changes the types they are checked, created when
 * commands.create_topics says so, and subscribed to.
 */
#include <stdlib.h>
#include <string.h>

#include "cmdproc_int.h"
#include "lifecycle.h"
#include "log.h"

const char *const cmd_outcome_names[4] = {"accepted", "rejected", "failed",
                                          "duplicate"};

void cmd_types_free(cmdproc *cp)
{
    for (size_t i = 0; i < cp->ntypes; i++) {
        agtype *t = &cp->types[i];
        for (int k = 0; k < 3; k++)
            for (int j = 0; j < NPRODUCERS; j++)
                if (t->rkt[k][j])
                    rd_kafka_topic_destroy(t->rkt[k][j]);
        free(t->type);
    }
    free(cp->types);
    cp->types = NULL;
    cp->ntypes = 0;
}

void cmd_types_from_host(const evl_config *cfg, const evl_luahost *host,
                         agtype **out, size_t *n)
{
    size_t k = evl_luahost_naggregates(host);
    agtype *ts = evl_xmalloc(sizeof *ts * (k ? k : 1));
    memset(ts, 0, sizeof *ts * (k ? k : 1));
    for (size_t i = 0; i < k; i++) {
        const char *type = evl_luahost_aggregate_at(host, i)->type;
        ts[i].type = evl_xstrdup(type);
        evl_config_topic(cfg->cmd.commands_topic, type, ts[i].commands,
                         sizeof ts[i].commands);
        evl_config_topic(cfg->cmd.events_topic, type, ts[i].events,
                         sizeof ts[i].events);
        evl_config_topic(cfg->cmd.state_topic, type, ts[i].state,
                         sizeof ts[i].state);
        evl_config_topic(cfg->cmd.results_topic, type, ts[i].results,
                         sizeof ts[i].results);
        for (int o = 0; o < 4; o++) {
            char labels[512];
            evl_metrics_labels(labels, sizeof labels, "aggregate_type", type,
                               "outcome", cmd_outcome_names[o], NULL);
            ts[i].outcomes[o] = evl_metrics_counter(
                "evlua_commands_total", "Commands handled, by outcome", labels);
        }
        char labels[512];
        evl_metrics_labels(labels, sizeof labels, "aggregate_type", type, NULL);
        ts[i].events_total = evl_metrics_counter("evlua_events_total",
                                                 "Events committed", labels);
    }
    *out = ts;
    *n = k;
}

agtype *cmd_type_by_commands(cmdproc *cp, const char *topic)
{
    for (size_t i = 0; i < cp->ntypes; i++)
        if (strcmp(cp->types[i].commands, topic) == 0)
            return &cp->types[i];
    return NULL;
}

agtype *cmd_type_by_state(cmdproc *cp, const char *topic)
{
    for (size_t i = 0; i < cp->ntypes; i++)
        if (strcmp(cp->types[i].state, topic) == 0)
            return &cp->types[i];
    return NULL;
}

/* Partition count of topic, retrying while the cluster does not answer:
 * a second at a time, so a stop is seen soon; logged every 10 s. */
static evl_err partitions_of(cmdproc *cp, const char *topic, int *count,
                             char *err, size_t errlen)
{
    long long deadline = evl_now_ms() + STARTUP_TIMEOUT_MS;
    long long warn_at = evl_now_ms() + 10000;
    for (;;) {
        evl_err e = evl_kafka_partitions(cp->txn[0].rk, topic, 1000, count, err,
                                         errlen);
        if (e != EVL_ETRANSIENT || evl_now_ms() > deadline ||
            evl_lifecycle_stopping())
            return e;
        if (evl_now_ms() > warn_at) {
            evl_log(EVL_LOG_WARN, "waiting for the Kafka cluster", "error", err,
                    NULL);
            warn_at = evl_now_ms() + 10000;
        }
    }
}

/* After a CreateTopics the metadata may lag: wait until topic shows. */
static evl_err wait_topic(cmdproc *cp, const char *topic, int *count, char *err,
                          size_t errlen)
{
    for (int i = 0; i < 100; i++) {
        evl_err e = partitions_of(cp, topic, count, err, errlen);
        if (e || *count > 0)
            return e;
        cmd_sleep_ms(100);
    }
    return evl_seterr(err, errlen, EVL_ETRANSIENT,
                      "topic %s was created but does not show in the "
                      "cluster's metadata",
                      topic);
}

/* Check (and create, when configured) the four topics of t. Returns EVL_OK,
 * EVL_EPERMANENT for a configuration problem, EVL_ETRANSIENT when the
 * cluster could not be reached. */
static evl_err ensure_topics(cmdproc *cp, agtype *t, char *err, size_t errlen)
{
    const evl_config *cfg = cp->cfg;
    const char *names[3] = {t->events, t->state, t->results};
    int n, counts[3];
    evl_err e;

    if ((e = partitions_of(cp, t->commands, &n, err, errlen)))
        return e;
    if (n == 0) {
        evl_kafka_topic_spec spec = {t->commands, cfg->cmd.partitions, 0};
        if (!cfg->cmd.create_topics)
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "topic %s does not exist (create it, or set "
                              "commands.create_topics = true)",
                              t->commands);
        if ((e = evl_kafka_create_topics(cp->txn[0].rk, &spec, 1, 30000, err,
                                         errlen)))
            return e;
        evl_log(EVL_LOG_INFO, "topic created", "topic", t->commands, NULL);
        if ((e = wait_topic(cp, t->commands, &n, err, errlen)))
            return e;
    }
    t->partitions = n;

    for (int i = 0; i < 3; i++) {
        if ((e = partitions_of(cp, names[i], &counts[i], err, errlen)))
            return e;
        if (counts[i] == 0) {
            evl_kafka_topic_spec spec = {names[i], n, i == 1};
            if (!cfg->cmd.create_topics)
                return evl_seterr(err, errlen, EVL_EPERMANENT,
                                  "topic %s does not exist (create it with "
                                  "%d partitions like %s%s, or set "
                                  "commands.create_topics = true)",
                                  names[i], n, t->commands,
                                  i == 1 ? ", compacted" : "");
            if ((e = evl_kafka_create_topics(cp->txn[0].rk, &spec, 1, 30000,
                                             err, errlen)))
                return e;
            evl_log(EVL_LOG_INFO, "topic created", "topic", names[i],
                    "compacted", i == 1 ? "true" : "false", NULL);
            if ((e = wait_topic(cp, names[i], &counts[i], err, errlen)))
                return e;
        }
        if (counts[i] != n)
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "topic %s has %d partitions but %s has %d: "
                              "the events, state and results topics need "
                              "the commands topic's partition count (an "
                              "aggregate's command, events and snapshot "
                              "share one partition number)",
                              names[i], counts[i], t->commands, n);
    }
    for (int j = 0; j < NPRODUCERS; j++)
        cmd_topics_open(cp, t, j);
    return EVL_OK;
}

void cmd_topics_open(cmdproc *cp, agtype *t, int j)
{
    t->rkt[OUT_EVENTS][j] = rd_kafka_topic_new(cp->txn[j].rk, t->events, NULL);
    t->rkt[OUT_STATE][j] = rd_kafka_topic_new(cp->txn[j].rk, t->state, NULL);
    t->rkt[OUT_RESULTS][j] =
        rd_kafka_topic_new(cp->txn[j].rk, t->results, NULL);
}

void cmd_topics_close(cmdproc *cp, int j)
{
    for (size_t i = 0; i < cp->ntypes; i++)
        for (int k = 0; k < 3; k++)
            if (cp->types[i].rkt[k][j]) {
                rd_kafka_topic_destroy(cp->types[i].rkt[k][j]);
                cp->types[i].rkt[k][j] = NULL;
            }
}

evl_err cmd_ensure_all(cmdproc *cp, agtype *ts, size_t n, char *err,
                       size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        evl_err e = ensure_topics(cp, &ts[i], err, errlen);
        if (e)
            return e;
    }
    return EVL_OK;
}

evl_err cmd_subscribe(cmdproc *cp, char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new((int)cp->ntypes);
    rd_kafka_resp_err_t rerr;
    for (size_t i = 0; i < cp->ntypes; i++)
        rd_kafka_topic_partition_list_add(topics, cp->types[i].commands,
                                          RD_KAFKA_PARTITION_UA);
    rerr = rd_kafka_subscribe(cp->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (rerr)
        return evl_seterr(err, errlen, EVL_EFATAL, "rd_kafka_subscribe: %s",
                          rd_kafka_err2str(rerr));
    evl_pipeline_waiting(&cp->pl);
    return EVL_OK;
}
