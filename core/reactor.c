/*
 * reactor.c - one reactor (reactor.h): open / loop / close.
 *
 * evl_reactor_run opens the reactor (its scripts, the transactional
 * producer, the topics, the parked topic folded, the subscription), runs
 * pipeline.h's loop with one turn per batch, and closes it. A turn is
 * synchronous, the simplest shape that is exactly once: collect a batch
 * (evl_pipeline_collect), decide it (react_decide.c), then begin, produce
 * the commands and the parking records, send the offsets and commit
 * (txn.h). No transaction is ever open while the consumer polls, so a
 * rebalance never meets one.
 *
 * What can go wrong in a transaction, and what happens:
 *   ABORT  abort it, seek the consumer back to the batch (evl_txn_rewind),
 *          fold the parked topic again (the set was folded ahead of the
 *          commit) and decide the batch again after a capped back-off;
 *   LOST   the producer was fenced by its own transaction's timeout: build
 *          it again with the same transactional.id, then as ABORT;
 *   FATAL  fenced by a newer instance: the reactor ends with 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lag.h"
#include "lifecycle.h"
#include "log.h"
#include "reactor_int.h"

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the batch ---------------------------------------------------------- */

static void batch_clear(reactor *r)
{
    for (size_t i = 0; i < r->nbatch; i++)
        rd_kafka_message_destroy(r->batch[i]);
    r->nbatch = 0;
    r->batch_bytes = 0;
}

static int sink_take(void *ctx, rd_kafka_message_t *m)
{
    reactor *r = ctx;
    if (!m->err) {
        if (r->nbatch == r->capbatch) {
            r->capbatch = r->capbatch ? 2 * r->capbatch : 256;
            r->batch = evl_xrealloc(r->batch, sizeof *r->batch * r->capbatch);
        }
        r->batch[r->nbatch++] = m;
        r->batch_bytes += m->len + m->key_len;
        return 1;
    }
    if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
        r->fatal = 1;
        evl_log(EVL_LOG_ERROR, "reactor consumer fatal error", "reaction",
                r->type, "error", rd_kafka_message_errstr(m), NULL);
    } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        evl_log(EVL_LOG_WARN, "reactor consumer error", "reaction", r->type,
                "error", rd_kafka_message_errstr(m), NULL);
    }
    rd_kafka_message_destroy(m);
    return 0;
}

static size_t sink_pending(void *ctx)
{
    return ((reactor *)ctx)->nbatch;
}

static int sink_halted(void *ctx)
{
    return ((reactor *)ctx)->fatal;
}

static int sink_busy(void *ctx)
{
    (void)ctx;
    return 0; /* nothing is ever in flight between turns */
}

/* reactions.batch_bytes: what a batch of large events holds in memory */
static int sink_full(void *ctx)
{
    reactor *r = ctx;
    return r->batch_bytes >= (size_t)r->cfg->react.batch_bytes;
}

static const evl_pipeline_sink sink = {sink_take, sink_pending, sink_halted,
                                       sink_busy, sink_full};

/* The first (rewind) or next offset per partition of the batch; NULL
 * when it is empty. Owned. */
static rd_kafka_topic_partition_list_t *batch_offsets(reactor *r, int rewind)
{
    rd_kafka_topic_partition_list_t *l;
    if (r->nbatch == 0)
        return NULL;
    l = rd_kafka_topic_partition_list_new(8);
    for (size_t i = 0; i < r->nbatch; i++) {
        rd_kafka_message_t *m = r->batch[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(l, topic, m->partition);
        int64_t o = rewind ? m->offset : m->offset + 1;
        if (!p)
            rd_kafka_topic_partition_list_add(l, topic, m->partition)->offset =
                o;
        else if (rewind ? o < p->offset : o > p->offset)
            p->offset = o;
    }
    return l;
}

/* ---- the parked topic --------------------------------------------------- */

void rx_read_parked(reactor *r, int timeout_ms)
{
    char err[EVL_ERRLEN];
    if (timeout_ms <= 0) {
        rp_poll(r->reader, &r->parked, &r->parked_next);
        return;
    }
    if (rp_drain(r->reader, r->ptopic, &r->parked, &r->parked_next, timeout_ms,
                 err, sizeof err) != EVL_OK)
        evl_log(EVL_LOG_WARN, "parked topic not read to its end", "reaction",
                r->type, "error", err, NULL);
}

/* Fold the parked topic again from its beginning. Returns 0, or -1
 * (logged). */
static int refold(reactor *r)
{
    char err[EVL_ERRLEN], n[32];
    if (rp_fold(r->reader, r->ptopic, &r->parked, &r->parked_next, 60000, err,
                sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "cannot read the parked topic", "reaction",
                r->type, "topic", r->ptopic, "error", err, NULL);
        return -1;
    }
    evl_metric_set(r->m_parked, (double)r->parked.naggs);
    snprintf(n, sizeof n, "%zu", r->parked.naggs);
    evl_log(EVL_LOG_DEBUG, "parked topic folded", "reaction", r->type,
            "parked_aggregates", n, NULL);
    return 0;
}

/* ---- the transaction ---------------------------------------------------- */

static evl_txn_step produce(reactor *r, const rx_out *o)
{
    const char *b = r->arena.data;
    rd_kafka_topic_t *rkt = o->kind == OUT_COMMAND ? r->rkt_cmd : r->rkt_parked;
    evl_txn_step s;
    do {
        rd_kafka_resp_err_t rerr = rd_kafka_producev(
            r->txn.rk, RD_KAFKA_V_RKT(rkt),
            RD_KAFKA_V_PARTITION(o->kind == OUT_COMMAND ? RD_KAFKA_PARTITION_UA
                                                        : 0),
            RD_KAFKA_V_KEY(b + o->key, o->keylen),
            RD_KAFKA_V_VALUE((void *)(b + o->val), o->vallen),
            RD_KAFKA_V_MSGFLAGS(0),
            RD_KAFKA_V_HEADER("content-type", "application/json", -1),
            RD_KAFKA_V_HEADER("evlua-reaction", r->type, -1), RD_KAFKA_V_END);
        s = evl_txn_produced(&r->txn, rerr, rd_kafka_topic_name(rkt));
    } while (s == EVL_TXN_RETRY);
    return s;
}

/* Begin, produce the batch's records, send its offsets, commit. */
static evl_txn_step write_batch(reactor *r)
{
    evl_txn_step s = evl_txn_begin(&r->txn);
    if (s != EVL_TXN_OK)
        return s;
    for (size_t i = 0; i < r->nout; i++)
        if ((s = produce(r, &r->out[i])) != EVL_TXN_OK)
            return s;
    rd_kafka_topic_partition_list_t *offsets = batch_offsets(r, 0);
    if (offsets) {
        rd_kafka_consumer_group_metadata_t *cgmd =
            rd_kafka_consumer_group_metadata(r->consumer);
        s = evl_txn_send_offsets(&r->txn, offsets, cgmd);
        rd_kafka_consumer_group_metadata_destroy(cgmd);
        rd_kafka_topic_partition_list_destroy(offsets);
        if (s != EVL_TXN_OK)
            return s;
    }
    return evl_txn_commit(&r->txn);
}

static void committed(reactor *r)
{
    for (int k = 0; k < 3; k++) {
        if (r->pending[k])
            evl_metric_add(r->m_outcomes[k], (double)r->pending[k]);
        r->total[k] += r->pending[k];
    }
    if (r->pending_cmds)
        evl_metric_add(r->m_cmds, (double)r->pending_cmds);
    r->total_cmds += r->pending_cmds;
    evl_metric_add(r->m_committed, 1);
    evl_metric_set(r->m_parked, (double)r->parked.naggs);
    evl_metric_set(r->m_lua_memory, (double)evl_luahost_memory(r->host));
    rx_discard(r);
    batch_clear(r);
    r->backoff_ms = 0;
}

/* The producer's handles on the commands and parked topics. Only once
 * rx_ensure_topics made them: a topic handle sends a metadata request at
 * once (librdkafka >= 2.x), and a producer's metadata request lets the
 * broker auto-create the topic with its defaults (num.partitions, a 7-day
 * retention for the parked topic) before evlua creates it as it must be. */
static void producer_topics(reactor *r)
{
    r->rkt_cmd = rd_kafka_topic_new(r->txn.rk, r->commands, NULL);
    r->rkt_parked = rd_kafka_topic_new(r->txn.rk, r->ptopic, NULL);
}

/* Build the producer (again) with the reactor's transactional.id and
 * initialize it. Returns RX_OK or an exit code (logged). */
static int producer_open(reactor *r)
{
    char err[EVL_ERRLEN], client[300];
    snprintf(client, sizeof client, "evlua-react-%s", r->type);
    evl_kafka_client_opts o = {.name = "reactor producer",
                               .client_id = client,
                               .transactional_id = r->txid,
                               .defaults = evl_kafka_batch_txn_defaults,
                               .required = evl_kafka_batch_txn_required};
    if (evl_txn_open(&r->txn, r->cfg, &o, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "reactor: bad Kafka configuration", "reaction",
                r->type, "error", err, NULL);
        return RX_CONFIG;
    }
    if (evl_txn_init(&r->txn, evl_now_ms() + RX_STARTUP_MS) != EVL_OK)
        return RX_RUNTIME;
    r->max_message = evl_kafka_max_message(r->txn.rk);
    if (r->topics_ready)
        producer_topics(r);
    return RX_OK;
}

static void producer_close(reactor *r)
{
    if (r->rkt_cmd)
        rd_kafka_topic_destroy(r->rkt_cmd);
    if (r->rkt_parked)
        rd_kafka_topic_destroy(r->rkt_parked);
    r->rkt_cmd = r->rkt_parked = NULL;
    evl_txn_close(&r->txn);
}

/* The transaction failed with s (ABORT or LOST): drop it, rewind, refold,
 * back off. Returns 0, or -1 when the reactor cannot go on. */
static int recover(reactor *r, evl_txn_step s)
{
    rd_kafka_topic_partition_list_t *first = batch_offsets(r, 1);
    evl_metric_add(r->m_aborted, 1);
    if (s == EVL_TXN_ABORT) {
        s = evl_txn_abort(&r->txn);
        if (s == EVL_TXN_FATAL)
            goto fatal;
    }
    if (s == EVL_TXN_LOST) {
        evl_log(EVL_LOG_WARN,
                "reactor's transaction timed out while the broker was "
                "unreachable; rebuilding the producer",
                "reaction", r->type, NULL);
        producer_close(r);
        if (producer_open(r) != RX_OK)
            goto fatal;
    }
    evl_txn_rewind(r->consumer, first);
    if (first)
        rd_kafka_topic_partition_list_destroy(first);
    rx_discard(r);
    batch_clear(r);
    if (refold(r) != 0)
        return -1;
    evl_log(EVL_LOG_WARN, "reactor batch aborted; it will be read again",
            "reaction", r->type, NULL);
    sleep_ms(r->backoff_ms);
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : 100;
    if (r->backoff_ms > 5000)
        r->backoff_ms = 5000;
    return 0;
fatal:
    if (first)
        rd_kafka_topic_partition_list_destroy(first);
    return -1;
}

/* ---- one turn ------------------------------------------------------------ */

static evl_pipeline_outcome turn(void *ctx)
{
    reactor *r = ctx;
    if (r->fatal)
        return EVL_PIPELINE_FAILED;
    rd_kafka_poll(r->txn.rk, 0);
    rx_read_parked(r, 0);
    evl_pipeline_collect(&r->pl, &sink, r);
    if (r->fatal)
        return EVL_PIPELINE_FAILED;
    if (r->catch_up) {
        /* partitions came: what other instances parked for them is in the
         * topic (their transactions ended before they let go) */
        rx_read_parked(r, 30000);
        r->catch_up = 0;
    }
    if (r->nbatch == 0 && !rx_requests_due(r))
        return EVL_PIPELINE_NEXT;
    rx_decide(r);
    if (r->halt) {
        rx_discard(r);
        batch_clear(r);
        return EVL_PIPELINE_FAILED;
    }
    evl_txn_step s = write_batch(r);
    if (s == EVL_TXN_OK) {
        committed(r);
        return EVL_PIPELINE_NEXT;
    }
    if (s == EVL_TXN_FATAL || recover(r, s) != 0) {
        r->fatal = 1;
        return EVL_PIPELINE_FAILED;
    }
    return EVL_PIPELINE_NEXT;
}

/* ---- partitions ---------------------------------------------------------- */

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t rerr,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    reactor *r = opaque;
    char n[32];
    if (r->assigned)
        rd_kafka_topic_partition_list_destroy(r->assigned);
    r->assigned = NULL;
    if (rerr == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, parts);
        r->assigned = rd_kafka_topic_partition_list_copy(parts);
        r->catch_up = 1;
        evl_pipeline_assigned(&r->pl);
        evl_pipeline_ready(&r->pl, 1, NULL);
        evl_lag_held(r->group, rk, parts->cnt);
        snprintf(n, sizeof n, "%d", parts->cnt);
        evl_log(EVL_LOG_INFO, "reactor partitions assigned", "reaction",
                r->type, "partitions", n, NULL);
        return;
    }
    /* revoked (eager: all of them): nothing is in flight between turns;
     * the batch collected so far is read again by the next owner */
    batch_clear(r);
    rx_discard(r);
    rd_kafka_assign(rk, NULL);
    evl_pipeline_waiting(&r->pl);
    evl_pipeline_ready(&r->pl, 0, "waiting for a partition assignment");
    evl_lag_held(r->group, rk, 0);
}

static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    reactor *r = opaque;
    (void)rk, (void)json, (void)len;
    evl_pipeline_wait_check(&r->pl);
    return 0; /* librdkafka frees json */
}

/* ---- reload, tick, metrics -------------------------------------------------
 */

/* The reloaded scripts nh name other source types: read those instead.
 * Their topics are made sure of, then the consumer subscribes anew (a
 * rebalance; nothing is in flight between batches). A new source type
 * is read from its group offsets, from the start of its topic the first
 * time, as at a restart. Returns 0, or -1 with the old sources, host
 * and subscription kept (logged). */
static int subscribe(reactor *r);

static int resubscribe(reactor *r, evl_luahost *nh)
{
    char err[EVL_ERRLEN];
    rx_source *old = r->srcs;
    size_t nold = r->nsrcs;
    evl_luahost *oh = r->host;
    r->host = nh;
    rx_sources(r);
    evl_err e = rx_ensure_topics(r, err, sizeof err);
    if (e == EVL_OK && subscribe(r) == RX_OK) {
        rx_source *cur = r->srcs;
        size_t ncur = r->nsrcs;
        r->srcs = old;
        r->nsrcs = nold;
        rx_sources_free(r);
        r->srcs = cur;
        r->nsrcs = ncur;
        r->host = oh;
        evl_log(EVL_LOG_INFO, "reactor subscribed to the reloaded sources",
                "reaction", r->type, NULL);
        return 0;
    }
    if (e != EVL_OK)
        evl_log(EVL_LOG_ERROR,
                "reload refused: the reloaded react table's topics are not "
                "usable; the old scripts stay",
                "reaction", r->type, "error", err, NULL);
    rx_sources_free(r);
    r->srcs = old;
    r->nsrcs = nold;
    r->host = oh;
    if (e == EVL_OK && subscribe(r) != RX_OK)
        r->fatal = 1; /* neither subscription took: logged by subscribe */
    return -1;
}

static void reload(void *ctx)
{
    reactor *r = ctx;
    char err[EVL_ERRLEN];
    evl_luahost *nh = NULL;
    if (evl_luahost_reload(r->host, &nh, NULL, err, sizeof err) != EVL_OK) {
        evl_metrics_scripts(r->component, "failed", NULL, NULL);
        return; /* luahost logged why; the old set stays */
    }
    evl_strlist before = {0}, after = {0};
    evl_reactor_topics(r->cfg, r->host, r->type, &before);
    evl_reactor_topics(r->cfg, nh, r->type, &after);
    int same = before.n == after.n;
    for (int i = 0; same && i < before.n; i++)
        same = strcmp(before.v[i], after.v[i]) == 0;
    evl_reactor_topics_free(&before);
    evl_reactor_topics_free(&after);
    if (!same && resubscribe(r, nh) != 0) {
        evl_luahost_free(nh);
        evl_metrics_scripts(r->component, "failed", NULL, NULL);
        return;
    }
    evl_metrics_scripts(r->component, "applied", evl_luahost_hash(r->host),
                        evl_luahost_hash(nh));
    evl_luahost_free(r->host);
    r->host = nh;
}

static void log_counts(reactor *r)
{
    char a[32], b[32], c[32], d[32], e[32];
    snprintf(a, sizeof a, "%lld", r->total[RX_REACTED]);
    snprintf(b, sizeof b, "%lld", r->total[RX_NONE]);
    snprintf(c, sizeof c, "%lld", r->total[RX_PARKED]);
    snprintf(d, sizeof d, "%lld", r->total_cmds);
    snprintf(e, sizeof e, "%zu", r->parked.naggs);
    evl_log(EVL_LOG_INFO, "reactions so far", "reaction", r->type, "reacted", a,
            "none", b, "parked", c, "commands", d, "parked_aggregates", e,
            NULL);
}

static void tick(void *ctx)
{
    log_counts(ctx);
}

static void metrics_open(reactor *r)
{
    static const char *const outcomes[3] = {"reacted", "none", "parked"};
    char labels[400];
    for (int k = 0; k < 3; k++) {
        evl_metrics_labels(labels, sizeof labels, "type", r->type, "outcome",
                           outcomes[k], NULL);
        r->m_outcomes[k] = evl_metrics_counter(
            "evlua_reactions_total",
            "Source events a reactor handled, by reacting type and outcome",
            labels);
    }
    evl_metrics_labels(labels, sizeof labels, "type", r->type, NULL);
    r->m_cmds =
        evl_metrics_counter("evlua_reaction_commands_total",
                            "Commands reactions sent (committed)", labels);
    r->m_parked = evl_metrics_gauge(
        "evlua_reactions_parked",
        "Source aggregates whose reactions are parked", labels);
    evl_metrics_labels(labels, sizeof labels, "type", r->type, "outcome",
                       "committed", NULL);
    r->m_committed = evl_metrics_counter(
        "evlua_reaction_transactions_total",
        "Kafka transactions of the reactors, by outcome", labels);
    evl_metrics_labels(labels, sizeof labels, "type", r->type, "outcome",
                       "aborted", NULL);
    r->m_aborted = evl_metrics_counter(
        "evlua_reaction_transactions_total",
        "Kafka transactions of the reactors, by outcome", labels);
    evl_metrics_labels(labels, sizeof labels, "pipeline", r->component, NULL);
    r->m_lua_memory = evl_metrics_gauge(
        "evlua_lua_memory_bytes", "Heap of a pipeline's Lua state", labels);
}

/* ---- open / loop / close ------------------------------------------------ */

static int open_clients(reactor *r)
{
    char err[EVL_ERRLEN], group[400];
    static const char *const cdefaults[] = {"auto.offset.reset",
                                            "earliest",
                                            "fetch.wait.max.ms",
                                            "10",
                                            "statistics.interval.ms",
                                            "1000",
                                            NULL};
    char client[300], instance[300];
    snprintf(client, sizeof client, "evlua-react-%s", r->type);
    snprintf(instance, sizeof instance, "react.%s", r->type);
    evl_kafka_client_opts co = {.name = "reactor consumer",
                                .client_id = client,
                                .group_id = r->group,
                                .assignor = "range",
                                .instance = instance,
                                .defaults = cdefaults,
                                .opaque = r,
                                .rebalance_cb = rebalance_cb,
                                .stats_cb = stats_cb};
    if (evl_kafka_consumer_new(r->cfg, &co, &r->consumer, err, sizeof err))
        goto bad;
    r->pl.consumer = r->consumer;
    snprintf(group, sizeof group, "%s.parked", r->group);
    static const char *const rdefaults[] = {"fetch.wait.max.ms", "10", NULL};
    evl_kafka_client_opts ro = {.name = "parked reader",
                                .client_id = client,
                                .group_id = group,
                                .reader = 1,
                                .defaults = rdefaults};
    if (evl_kafka_consumer_new(r->cfg, &ro, &r->reader, err, sizeof err))
        goto bad;
    return RX_OK;
bad:
    evl_log(EVL_LOG_ERROR, "reactor: bad Kafka configuration", "reaction",
            r->type, "error", err, NULL);
    return RX_CONFIG;
}

static int subscribe(reactor *r)
{
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new((int)r->nsrcs);
    for (size_t i = 0; i < r->nsrcs; i++)
        rd_kafka_topic_partition_list_add(l, r->srcs[i].topic,
                                          RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(r->consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        evl_log(EVL_LOG_ERROR, "reactor: cannot subscribe", "reaction", r->type,
                "error", rd_kafka_err2str(e), NULL);
        return RX_RUNTIME;
    }
    evl_pipeline_waiting(&r->pl);
    return RX_OK;
}

/* Everything but the scripts: topics, producer (initialized before the
 * fold: it aborts what a crashed predecessor left open in the parked
 * topic), the parked set, the subscription. */
static int open_rest(reactor *r)
{
    const evl_config *cfg = r->cfg;
    char err[EVL_ERRLEN];
    int rc;
    evl_err e;
    if (!evl_reactor_reacts(r->host, r->type)) {
        evl_log(EVL_LOG_ERROR, "reactor: the aggregate has no react table",
                "reaction", r->type, NULL);
        return RX_CONFIG;
    }
    if (!evl_config_kafka(cfg, "bootstrap.servers")) {
        evl_log(EVL_LOG_ERROR,
                "reactor: no Kafka configured: set "
                "kafka[\"bootstrap.servers\"] or EVLUA_KAFKA_BOOTSTRAP",
                NULL);
        return RX_CONFIG;
    }
    rx_sources(r);
    if ((rc = open_clients(r)) != RX_OK || (rc = producer_open(r)) != RX_OK)
        return rc;
    if ((e = rx_ensure_topics(r, err, sizeof err))) {
        evl_log(EVL_LOG_ERROR, "reactor: topics not usable", "reaction",
                r->type, "error", err, NULL);
        return e == EVL_EPERMANENT ? RX_CONFIG : RX_RUNTIME;
    }
    r->topics_ready = 1;
    producer_topics(r);
    if (refold(r) != 0)
        return RX_RUNTIME;
    if ((rc = subscribe(r)) != RX_OK)
        return rc;
    evl_pipeline_ready(&r->pl, 0, "waiting for a partition assignment");
    char n[32];
    snprintf(n, sizeof n, "%zu", r->parked.naggs);
    evl_log(EVL_LOG_INFO, "reactor started", "reaction", r->type, "group",
            r->group, "transactional_id", r->txid, "parked_aggregates", n,
            "scripts", evl_luahost_hash(r->host), NULL);
    return RX_OK;
}

static void close_all(reactor *r)
{
    if (r->consumer) {
        rd_kafka_consumer_close(r->consumer);
        rd_kafka_destroy(r->consumer);
    }
    if (r->reader) {
        rd_kafka_consumer_close(r->reader);
        rd_kafka_destroy(r->reader);
    }
    batch_clear(r);
    free(r->batch);
    if (r->assigned)
        rd_kafka_topic_partition_list_destroy(r->assigned);
    producer_close(r);
    rx_sources_free(r);
    rp_set_free(&r->parked);
    evl_buf_free(&r->arena);
    evl_buf_free(&r->scratch);
    free(r->out);
    evl_luahost_reactions_free(&r->rs);
    evl_luahost_free(r->host);
}

int evl_reactor_run(const evl_config *cfg, const evl_luahost *proto,
                    const char *type)
{
    static const evl_pipeline_ops ops = {turn, NULL, reload, tick};
    reactor r;
    char err[EVL_ERRLEN];
    int rc;

    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.type = type;
    snprintf(r.component, sizeof r.component, "reactions.%s", type);
    evl_reactor_group(cfg, type, r.group, sizeof r.group);
    snprintf(r.txid, sizeof r.txid, "%s.react.%s", cfg->cmd.transactional_id,
             type);
    evl_config_topic(cfg->cmd.commands_topic, type, r.commands,
                     sizeof r.commands);
    evl_config_topic(cfg->react.parked_topic, type, r.ptopic, sizeof r.ptopic);
    rp_set_init(&r.parked);
    evl_pipeline_open(&r.pl, r.component, r.group, cfg->react.batch_size,
                      cfg->react.linger_ms);
    metrics_open(&r);
    if (evl_luahost_again(proto, &r.host, NULL, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "reactor: cannot load the scripts", "reaction",
                type, "error", err, NULL);
        rp_set_free(&r.parked);
        evl_pipeline_close(&r.pl, EVL_PIPELINE_FAILED);
        return RX_CONFIG;
    }
    evl_metrics_scripts(r.component, NULL, NULL, evl_luahost_hash(r.host));
    if ((rc = open_rest(&r)) == RX_OK) {
        evl_pipeline_outcome o = evl_pipeline_loop(&r.pl, &ops, &r);
        if (o != EVL_PIPELINE_DONE)
            rc = RX_RUNTIME;
        if (r.fatal)
            evl_log(EVL_LOG_ERROR,
                    "reactor stops after a fatal Kafka error (another "
                    "instance with the same commands.transactional_id?)",
                    "reaction", type, NULL);
        log_counts(&r);
    } else if (rc == RX_RUNTIME && evl_lifecycle_stopping() && !r.fatal) {
        /* asked to stop while starting (a broker out of reach): nothing
         * was processed, nothing is lost */
        evl_log(EVL_LOG_INFO, "reactor stopped before it was ready", "reaction",
                type, NULL);
        rc = RX_OK;
    }
    close_all(&r);
    evl_pipeline_close(&r.pl,
                       rc == RX_OK ? EVL_PIPELINE_DONE : EVL_PIPELINE_FAILED);
    if (rc == RX_OK)
        evl_log(EVL_LOG_INFO, "reactor stopped", "reaction", type, NULL);
    return rc;
}
