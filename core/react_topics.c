/*
 * react_topics.c - a reactor's types and topics (reactor_int.h): the
 * source types its react keys name, their events topics, the commands
 * topic it writes and its parked topic, created when missing.
 *
 * The parked topic is created here rather than by kafka.h's
 * evl_kafka_create_topics because it needs retention.ms = -1: a parked
 * reaction must wait for the operator however long that takes, and a
 * topic with the broker's default retention (7 days) would lose it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "reactor_int.h"

int evl_reactor_reacts(const evl_luahost *host, const char *type)
{
    const evl_luahost_aggregate *a = evl_luahost_aggregate_get(host, type);
    return a && a->nreacts > 0;
}

void evl_reactor_group(const evl_config *cfg, const char *type, char *buf,
                       size_t n)
{
    snprintf(buf, n, "%s%s", cfg->react.group_prefix, type);
}

/* The source type of react key k ("customer.CustomerAddressChanged":
 * everything before the last dot) into buf. */
static void key_source(const char *k, char *buf, size_t n)
{
    const char *dot = strrchr(k, '.');
    size_t len = dot ? (size_t)(dot - k) : strlen(k);
    if (len >= n)
        len = n - 1;
    memcpy(buf, k, len);
    buf[len] = '\0';
}

/* The sorted unique source types of type's react keys (the keys are
 * sorted, and a prefix before a dot sorts with its key). */
static size_t sources_of(const evl_luahost *host, const char *type, char ***out)
{
    const evl_luahost_aggregate *a = evl_luahost_aggregate_get(host, type);
    size_t n = 0;
    char **v = evl_xmalloc(sizeof(char *) * (a && a->nreacts ? a->nreacts : 1));
    for (size_t i = 0; a && i < a->nreacts; i++) {
        char src[512];
        int seen = 0;
        key_source(a->reacts[i], src, sizeof src);
        for (size_t j = 0; j < n && !seen; j++)
            seen = strcmp(v[j], src) == 0;
        if (!seen)
            v[n++] = evl_xstrdup(src);
    }
    *out = v;
    return n;
}

void evl_reactor_topics(const evl_config *cfg, const evl_luahost *host,
                        const char *type, evl_strlist *out)
{
    char **srcs;
    size_t n = sources_of(host, type, &srcs);
    out->v = evl_xmalloc(sizeof(char *) * (n ? n : 1));
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        char topic[256];
        evl_config_topic(cfg->cmd.events_topic, srcs[i], topic, sizeof topic);
        out->v[out->n++] = evl_xstrdup(topic);
        free(srcs[i]);
    }
    free(srcs);
}

void evl_reactor_topics_free(evl_strlist *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

void rx_sources(reactor *r)
{
    char **srcs;
    r->nsrcs = sources_of(r->host, r->type, &srcs);
    r->srcs = evl_xmalloc(sizeof *r->srcs * (r->nsrcs ? r->nsrcs : 1));
    for (size_t i = 0; i < r->nsrcs; i++) {
        memset(&r->srcs[i], 0, sizeof r->srcs[i]);
        r->srcs[i].type = srcs[i];
        evl_config_topic(r->cfg->cmd.events_topic, srcs[i], r->srcs[i].topic,
                         sizeof r->srcs[i].topic);
    }
    free(srcs);
}

void rx_sources_free(reactor *r)
{
    for (size_t i = 0; i < r->nsrcs; i++)
        free(r->srcs[i].type);
    free(r->srcs);
    r->srcs = NULL;
    r->nsrcs = 0;
}

evl_err rx_ensure_parked(rd_kafka_t *rk, const char *topic, char *err,
                         size_t errlen)
{
    char errstr[512];
    int n = 0;
    evl_err e = evl_kafka_partitions(rk, topic, 10000, &n, err, errlen);
    if (e || n > 0)
        return e;
    rd_kafka_NewTopic_t *nt =
        rd_kafka_NewTopic_new(topic, 1, -1, errstr, sizeof errstr);
    if (!nt)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "cannot describe topic %s: %s", topic, errstr);
    rd_kafka_NewTopic_set_config(nt, "retention.ms", "-1");
    rd_kafka_NewTopic_set_config(nt, "retention.bytes", "-1");
    rd_kafka_AdminOptions_t *opts =
        rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, 10000, NULL, 0);
    rd_kafka_AdminOptions_set_operation_timeout(opts, 10000, NULL, 0);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &nt, 1, opts, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
    if (!ev) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "CreateTopics(%s): no answer within 15 s", topic);
    } else if (rd_kafka_event_error(ev)) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT, "CreateTopics(%s): %s",
                       topic, rd_kafka_event_error_string(ev));
    } else {
        size_t cnt;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(
                rd_kafka_event_CreateTopics_result(ev), &cnt);
        rd_kafka_resp_err_t te = cnt ? rd_kafka_topic_result_error(res[0]) : 0;
        if (te && te != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            e = evl_seterr(err, errlen, EVL_EPERMANENT,
                           "cannot create topic %s: %s", topic,
                           rd_kafka_err2str(te));
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy(nt);
    if (e)
        return e;
    /* wait until the metadata shows it (create = 0: it exists now) */
    evl_kafka_topic_spec spec = {.name = topic, .partitions = 1};
    int created = 0;
    return evl_kafka_ensure_topic(rk, &spec, 0, 10000, &n, &created, err,
                                  errlen);
}

/* Make sure topic exists (created with commands.partitions when
 * commands.create_topics); its partition count into *n. */
static evl_err ensure(reactor *r, const char *topic, int *n, char *err,
                      size_t errlen)
{
    evl_kafka_topic_spec spec = {.name = topic,
                                 .partitions = r->cfg->cmd.partitions};
    int created = 0;
    evl_err e =
        evl_kafka_ensure_topic(r->txn.rk, &spec, r->cfg->cmd.create_topics,
                               10000, n, &created, err, errlen);
    if (e == EVL_OK && *n == 0)
        e = evl_seterr(err, errlen, EVL_EPERMANENT,
                       "topic %s does not exist (and commands.create_topics "
                       "is off)",
                       topic);
    if (e == EVL_OK && created)
        evl_log(EVL_LOG_INFO, "created topic", "topic", topic, NULL);
    return e;
}

evl_err rx_ensure_topics(reactor *r, char *err, size_t errlen)
{
    int n = 0;
    evl_err e;
    if ((e = ensure(r, r->commands, &n, err, errlen)))
        return e;
    for (size_t i = 0; i < r->nsrcs; i++)
        if ((e = ensure(r, r->srcs[i].topic, &r->srcs[i].partitions, err,
                        errlen)))
            return e;
    return rx_ensure_parked(r->txn.rk, r->ptopic, err, errlen);
}

int rx_holds(const reactor *r, const char *atype, const char *aid)
{
    const rd_kafka_topic_partition_list_t *l = r->assigned;
    if (!l || l->cnt == 0)
        return 0;
    for (size_t i = 0; i < r->nsrcs; i++) {
        const rx_source *s = &r->srcs[i];
        if (strcmp(s->type, atype) != 0 || s->partitions <= 0)
            continue;
        int32_t p =
            evl_kafka_murmur2_partition(aid, strlen(aid), s->partitions);
        for (int j = 0; j < l->cnt; j++)
            if (l->elems[j].partition == p &&
                strcmp(l->elems[j].topic, s->topic) == 0)
                return 1;
        return 0;
    }
    /* a source type the scripts no longer name: nobody holds it; whoever
     * holds partitions answers (the answer folds idempotently) */
    return 1;
}
