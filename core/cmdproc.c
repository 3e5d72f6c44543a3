/*
 * cmdproc.c - the command processor (cmdproc.h): open / loop / close.
 *
 * evl_cmdproc_run opens the processor (scripts, store, Kafka clients,
 * topics, transactional producers, the committer thread, the
 * subscription), runs pipeline.h's loop with one turn per batch, and
 * closes it. A turn polls a batch (evl_pipeline_collect), decides it
 * (cmd_decide.c) while the transaction before it commits, and launches
 * its transaction (cmd_commit.c); after a producer was fenced by its own
 * transaction's timeout (txn.h) it rebuilds the producer and restores the
 * partitions held (recover). Between batches it reloads the scripts on
 * SIGHUP. cmdproc_int.h maps the other files.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "cmdproc_int.h"
#include "lifecycle.h"
#include "log.h"

void cmd_store_gauges(cmdproc *cp)
{
    evl_metric_set(cp->m_store_bytes,
                   (double)evl_store_bytes(cp->store, NULL, -1));
    evl_metric_set(cp->m_store_aggs,
                   (double)evl_store_count(cp->store, NULL, -1));
}

/* ---- the batch --------------------------------------------------------- */

void cmd_batch_clear(cmdproc *cp)
{
    for (size_t i = 0; i < cp->nbatch; i++)
        rd_kafka_message_destroy(cp->batch[i]);
    cp->nbatch = 0;
}

static void batch_add(cmdproc *cp, rd_kafka_message_t *rkm)
{
    if (cp->nbatch == cp->capbatch) {
        cp->capbatch = cp->capbatch ? 2 * cp->capbatch : 256;
        cp->batch = evl_xrealloc(cp->batch, sizeof *cp->batch * cp->capbatch);
    }
    cp->batch[cp->nbatch++] = rkm;
}

int cmd_batch_take(cmdproc *cp, rd_kafka_message_t *m)
{
    if (!m->err) {
        batch_add(cp, m);
        return 1;
    }
    if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
        cp->fatal = 1;
        evl_log(EVL_LOG_ERROR, "consumer fatal error", "error",
                rd_kafka_message_errstr(m), NULL);
    } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        evl_log(EVL_LOG_WARN, "consumer error", "error",
                rd_kafka_message_errstr(m), NULL);
    }
    rd_kafka_message_destroy(m);
    return 0;
}

rd_kafka_topic_partition_list_t *cmd_batch_offsets(cmdproc *cp, int rewind,
                                                   size_t n)
{
    rd_kafka_topic_partition_list_t *l;
    if (n == 0)
        return NULL;
    l = rd_kafka_topic_partition_list_new(8);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_message_t *m = cp->batch[i];
        const char *topic = rd_kafka_topic_name(m->rkt);
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(l, topic, m->partition);
        if (!p) {
            p = rd_kafka_topic_partition_list_add(l, topic, m->partition);
            p->offset = rewind ? m->offset : m->offset + 1;
        } else if (!rewind && m->offset + 1 > p->offset) {
            p->offset = m->offset + 1;
        } else if (rewind && m->offset < p->offset) {
            p->offset = m->offset;
        }
    }
    return l;
}

/* The batch as evl_pipeline_collect fills it: the commands not in flight
 * are pending; a fatal error or a lost producer halts it; a transaction in
 * flight keeps it busy (pipeline_step takes in commands meanwhile). */
static int sink_take(void *ctx, rd_kafka_message_t *m)
{
    return cmd_batch_take(ctx, m);
}

static size_t sink_pending(void *ctx)
{
    cmdproc *cp = ctx;
    return cp->nbatch - cp->fl_n;
}

static int sink_halted(void *ctx)
{
    cmdproc *cp = ctx;
    return cp->fatal || cp->lost;
}

static int sink_busy(void *ctx)
{
    cmdproc *cp = ctx;
    return cp->inflight;
}

static const evl_pipeline_sink sink = {sink_take, sink_pending, sink_halted,
                                       sink_busy, NULL};

/* ---- one turn ------------------------------------------------------------ */

/* While a transaction is in flight, take in and decide more commands until
 * it ends (or a reload, a stop or a full batch says wait). Returns 0 when
 * it ended, 1 when a revocation settled and cleared everything. */
static int overlap(cmdproc *cp, int reload)
{
    unsigned revokes = cp->revokes;
    while (!cmd_committer_wait(cp, 0)) {
        rd_kafka_message_t *m;
        if (reload || evl_lifecycle_stopping() || cp->fatal || cp->lost ||
            (int)(cp->nbatch - cp->fl_n) >= cp->cfg->cmd.batch_size ||
            cmd_decided_enough(cp)) {
            cmd_committer_wait(cp, 5);
            continue;
        }
        /* returns at once when the committer is done (it yields the
         * queue) */
        m = rd_kafka_consumer_poll(cp->consumer, 100);
        if (cp->revokes != revokes)
            return 1; /* the revocation settled and cleared */
        if (m && cmd_batch_take(cp, m))
            cmd_decide_more(cp);
    }
    return 0;
}

/* One turn of the pipeline: decide what the batch holds, then, while a
 * transaction is in flight, take in and decide more commands until it
 * ends; settle it; start the next. Returns 0, or 1 on a fatal error. */
static int pipeline_step(cmdproc *cp)
{
    /* a reload waits for a moment with nothing in flight or decided */
    int reload = evl_pipeline_reload_pending(&cp->pl);
    long long w0 = 0;

    if (!(reload && cp->inflight))
        cmd_decide_more(cp);
    if (cp->inflight) {
        w0 = evl_now_ms();
        if (overlap(cp, reload))
            return cp->fatal;
        w0 = evl_now_ms() - w0;
        if (cmd_settle(cp, 1) != 0)
            return 1;
    }
    if (cp->ndec == 0)
        return 0;
    if (evl_lifecycle_stopping() || cp->fatal || cp->lost) {
        /* stopping (or recovering): the decided batch never began */
        cmd_drop_uncommitted(cp);
        return cp->fatal;
    }
    return cmd_launch(cp, w0);
}

static int recover(cmdproc *cp);

static evl_pipeline_outcome turn(void *ctx)
{
    cmdproc *cp = ctx;
    if (cp->fatal)
        return EVL_PIPELINE_FAILED;
    /* delivery reports between transactions (commit's flush serves those
     * of its own records; the committer's producer is its own) */
    for (int j = 0; j < NPRODUCERS; j++)
        if (!cp->inflight || j != cp->fl_producer)
            rd_kafka_poll(cp->txn[j].rk, 0);
    evl_pipeline_collect(&cp->pl, &sink, cp);
    if (cp->fatal)
        return EVL_PIPELINE_FAILED;
    if (!cp->lost && (cp->nbatch > 0 || cp->inflight) &&
        pipeline_step(cp) != 0) {
        cp->fatal = 1;
        return EVL_PIPELINE_FAILED;
    }
    /* a producer fenced by its own transaction's timeout (set by settle,
     * launch or the rebalance callback): nothing is in flight any more */
    if (cp->lost && !cp->fatal && recover(cp) != 0) {
        cp->fatal = 1;
        return EVL_PIPELINE_FAILED;
    }
    return EVL_PIPELINE_NEXT;
}

/* A reload waits for nothing in flight. */
static int idle(void *ctx)
{
    cmdproc *cp = ctx;
    return !cp->inflight && !cp->fatal;
}

/* ---- reloading the scripts ------------------------------------------------
 */

/* Same aggregate types in a and b (in order: hosts load sorted)? */
static int same_types(const agtype *a, size_t na, const agtype *b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i].type, b[i].type) != 0)
            return 0;
    return 1;
}

/* Free the n types ts (not cp's own). */
static void drop_types(cmdproc *cp, agtype *ts, size_t n)
{
    agtype *keep = cp->types;
    size_t nkeep = cp->ntypes;
    cp->types = ts, cp->ntypes = n;
    cmd_types_free(cp);
    cp->types = keep, cp->ntypes = nkeep;
}

/* Take nh's types ts when they differ from the loaded ones: their topics
 * checked, and subscribed. Returns 0, or -1 (logged; ts freed) when the
 * reload is refused. */
static int switch_types(cmdproc *cp, agtype *ts, size_t nts)
{
    char err[EVL_ERRLEN];
    if (same_types(cp->types, cp->ntypes, ts, nts)) {
        /* keep the topic handles; the new list only names the same */
        drop_types(cp, ts, nts);
        return 0;
    }
    if (cmd_ensure_all(cp, ts, nts, err, sizeof err)) {
        evl_log(EVL_LOG_ERROR,
                "script reload refused: the new aggregate types' topics are "
                "not usable; keeping the loaded set",
                "error", err, NULL);
        drop_types(cp, ts, nts);
        return -1;
    }
    for (size_t i = 0; i < cp->ntypes; i++) {
        size_t k = 0;
        while (k < nts && strcmp(ts[k].type, cp->types[i].type) != 0)
            k++;
        if (k == nts) /* its commands would wait without a word */
            evl_log(EVL_LOG_WARN,
                    "an aggregate type is gone from the scripts: its commands "
                    "topic is no longer read; commands sent to it wait there "
                    "until a script of that type is loaded again",
                    "type", cp->types[i].type, "topic", cp->types[i].commands,
                    NULL);
    }
    cmd_types_free(cp);
    cp->types = ts, cp->ntypes = nts;
    if (cmd_subscribe(cp, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "resubscribing failed", "error", err, NULL);
        cp->fatal = 1;
    }
    return 0;
}

static void reload(void *ctx)
{
    cmdproc *cp = ctx;
    char err[EVL_ERRLEN];
    evl_luahost *nh = NULL;
    agtype *ts;
    size_t nts;

    if (evl_luahost_reload(cp->host, &nh, NULL, err, sizeof err) != EVL_OK) {
        evl_metrics_scripts("commands", "failed", NULL, NULL);
        return; /* luahost logged why; the old set stays */
    }
    cmd_types_from_host(cp->cfg, nh, &ts, &nts);
    if (switch_types(cp, ts, nts) != 0) {
        evl_luahost_free(nh);
        evl_metrics_scripts("commands", "failed", NULL, NULL);
        return;
    }
    evl_metrics_scripts("commands", "applied", evl_luahost_hash(cp->host),
                        evl_luahost_hash(nh));
    evl_luahost_free(cp->host);
    cp->host = nh;
    /* the reload's summary line is luahost's, once for every pipeline */
    evl_log(EVL_LOG_DEBUG, "command processor switched scripts", "hash",
            evl_luahost_hash(nh), NULL);
}

/* ---- the Kafka clients ----------------------------------------------------
 */

/* Create producer j (the transactional ids of "the pipeline"); not yet
 * initialized. At start, and again when recover() rebuilds it. Returns
 * EXIT_OK, or EXIT_CONFIG with err set. */
static int producer_new(cmdproc *cp, int j, char *err, size_t errlen)
{
    const evl_config *cfg = cp->cfg;
    char txid[600], client[64];

    /* the producers: NPRODUCERS transactional ids derived from
     * commands.transactional_id (the first is it, the others add ".alt",
     * ".alt2", ...), all stable across restarts; the defaults are
     * evl_kafka_batch_txn_* (kafka.h says why) */
    if (j == 0)
        snprintf(txid, sizeof txid, "%s", cfg->cmd.transactional_id);
    else if (j == 1)
        snprintf(txid, sizeof txid, "%s.alt", cfg->cmd.transactional_id);
    else
        snprintf(txid, sizeof txid, "%s.alt%d", cfg->cmd.transactional_id, j);
    snprintf(client, sizeof client, "evlua-commands-%d", j);
    evl_kafka_client_opts o = {.name = "producer",
                               .client_id = client,
                               .transactional_id = txid,
                               .defaults = evl_kafka_batch_txn_defaults,
                               .required = evl_kafka_batch_txn_required};
    if (evl_txn_open(&cp->txn[j], cfg, &o, err, errlen))
        return EXIT_CONFIG;
    cp->max_message = evl_kafka_max_message(cp->txn[j].rk);
    return EXIT_OK;
}

static int start_clients(cmdproc *cp, char *err, size_t errlen)
{
    const evl_config *cfg = cp->cfg;
    char group[512];

    for (int j = 0; j < NPRODUCERS; j++)
        if (producer_new(cp, j, err, errlen) != EXIT_OK)
            return EXIT_CONFIG;

    /* consumer of the commands topics
     *
     * fetch.min.bytes / fetch.wait.max.ms: librdkafka fetches in the
     * background, and with its defaults (1 byte, 500 ms) the broker
     * answers every fetch as soon as one command is there: at thousands
     * of commands per second, thousands of fetch round trips that cost
     * the broker the CPU it needs for the transactions. Waiting up to
     * 5 ms for 64 KiB makes a fetch carry a hundred commands under load
     * and adds at most 5 ms when the stream is thin.
     *
     * statistics.interval.ms: the clock of stats_cb (the statistics
     * themselves are dropped).
     *
     * group.instance.id: static membership when `instance` is set
     * (kafka.h): a restarted instance gets its partitions back at once. */
    static const char *const cdefaults[] = {"auto.offset.reset",
                                            "earliest",
                                            "fetch.min.bytes",
                                            "65536",
                                            "fetch.wait.max.ms",
                                            "5",
                                            "statistics.interval.ms",
                                            "1000",
                                            NULL};
    evl_kafka_client_opts co = {.name = "consumer",
                                .client_id = "evlua-commands",
                                .group_id = cfg->cmd.group_id,
                                .assignor = "range",
                                .instance = "cmd",
                                .defaults = cdefaults,
                                .opaque = cp,
                                .rebalance_cb = cmd_rebalance_cb,
                                .stats_cb = cmd_stats_cb};
    if (evl_kafka_consumer_new(cfg, &co, &cp->consumer, err, errlen))
        return EXIT_CONFIG;
    cp->cq = rd_kafka_queue_get_consumer(cp->consumer);
    cp->pl.consumer = cp->consumer;

    /* reader of the state topics: assigned by hand, never joins a group;
     * an empty partition's end is known after one fetch: do not let the
     * broker hold it */
    snprintf(group, sizeof group, "%s.restore", cfg->cmd.group_id);
    static const char *const rdefaults[] = {"fetch.wait.max.ms", "10", NULL};
    evl_kafka_client_opts ro = {.name = "state reader",
                                .client_id = "evlua-restore",
                                .group_id = group,
                                .reader = 1,
                                .defaults = rdefaults};
    if (evl_kafka_consumer_new(cfg, &ro, &cp->restorer, err, errlen))
        return EXIT_CONFIG;
    return EXIT_OK;
}

static int init_transactions(cmdproc *cp)
{
    long long deadline = evl_now_ms() + STARTUP_TIMEOUT_MS;
    for (int j = 0; j < NPRODUCERS; j++)
        if (evl_txn_init(&cp->txn[j], deadline) != EVL_OK)
            return EXIT_RUNTIME;
    return EXIT_OK;
}

/* ---- recovering a lost producer -------------------------------------------
 */

/* Build producer j again with its transactional.id (txn.h: a producer
 * fenced by its own transaction's timeout). Returns 0, or 1 (logged). */
static int rebuild_producer(cmdproc *cp, int j)
{
    char err[EVL_ERRLEN];
    cmd_topics_close(cp, j);
    evl_txn_close(&cp->txn[j]);
    if (producer_new(cp, j, err, sizeof err) != EXIT_OK) {
        evl_log(EVL_LOG_ERROR, "cannot rebuild the producer", "error", err,
                NULL);
        return 1;
    }
    for (size_t i = 0; i < cp->ntypes; i++)
        cmd_topics_open(cp, &cp->types[i], j);
    /* the broker may still be unreachable: keep trying as long as start-up
     * would */
    return evl_txn_init(&cp->txn[j], evl_now_ms() + STARTUP_TIMEOUT_MS) ==
                   EVL_OK
               ? 0
               : 1;
}

static void log_recovered(cmdproc *cp, long long age)
{
    char msg[256], age_ms[32], timeout_ms[32];
    snprintf(msg, sizeof msg,
             "our transaction timed out while the broker was unreachable "
             "(%lld s > transaction.timeout.ms); rebuilt the producer and "
             "restored states",
             age / 1000);
    snprintf(age_ms, sizeof age_ms, "%lld", age);
    snprintf(timeout_ms, sizeof timeout_ms, "%ld", cp->txn[0].timeout_ms);
    evl_log(EVL_LOG_WARN, msg, "transactional_id",
            cp->cfg->cmd.transactional_id, "transaction_age_ms", age_ms,
            "transaction_timeout_ms", timeout_ms, NULL);
}

/* Recover from a timed-out transaction (txn.h): rebuild every producer
 * fenced by its own timeout, drop the store, and restore and rewind the
 * partitions the consumer still holds (ones it lost come back through the
 * rebalance callback, which restores them). Called with nothing in flight
 * and no transaction open. Returns 0, or 1 when it cannot go on (a
 * producer fenced by another instance, or one that cannot be rebuilt). */
static int recover(cmdproc *cp)
{
    long long age = 0;
    rd_kafka_topic_partition_list_t *parts = NULL;

    evl_pipeline_ready(&cp->pl, 0, "recovering from a timed-out transaction");
    for (int j = 0; j < NPRODUCERS; j++) {
        evl_txn *tx = &cp->txn[j];
        if (rd_kafka_fatal_error(tx->rk, NULL, 0) == RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        if (tx->lost_age_ms == 0 && evl_txn_own_timeout(tx) == 0)
            return 1; /* fenced, but not by its own timeout */
        if (tx->lost_age_ms > age)
            age = tx->lost_age_ms;
        if (rebuild_producer(cp, j) != 0)
            return 1;
    }
    cp->lost = 0;
    cp->backoff_ms = 0;
    /* what the store holds may be ahead of or behind what is committed:
     * read it again from the state topics, and the commands from the
     * committed offsets */
    evl_store_drop(cp->store, NULL, -1);
    if (rd_kafka_assignment(cp->consumer, &parts) ==
            RD_KAFKA_RESP_ERR_NO_ERROR &&
        parts && parts->cnt > 0 && !rd_kafka_assignment_lost(cp->consumer))
        cmd_take_partitions(cp, cp->consumer, parts);
    else
        evl_pipeline_ready(&cp->pl, 0, "waiting for a partition assignment");
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);
    log_recovered(cp, age);
    return 0;
}

/* ---- open / loop / close ----------------------------------------------- */

static void log_counts(cmdproc *cp)
{
    char a[32], r[32], f[32], d[32], e[32];
    snprintf(a, sizeof a, "%lld", cp->n_accepted);
    snprintf(r, sizeof r, "%lld", cp->n_rejected);
    snprintf(f, sizeof f, "%lld", cp->n_failed);
    snprintf(d, sizeof d, "%lld", cp->n_duplicate);
    snprintf(e, sizeof e, "%lld", cp->n_events);
    evl_log(EVL_LOG_INFO, "commands so far", "accepted", a, "rejected", r,
            "failed", f, "duplicate", d, "events", e, NULL);
}

static void tick(void *ctx)
{
    log_counts(ctx);
}

static void metrics_open(cmdproc *cp)
{
    cp->m_committed = evl_metrics_counter(
        "evlua_command_transactions_total",
        "Kafka transactions of the command side, by outcome",
        "outcome=\"committed\"");
    cp->m_aborted = evl_metrics_counter(
        "evlua_command_transactions_total",
        "Kafka transactions of the command side, by outcome",
        "outcome=\"aborted\"");
    cp->m_batch_seconds = evl_metrics_histogram(
        "evlua_command_batch_seconds",
        "Time from the start of deciding a batch to its commit", NULL, NULL, 0);
    cp->m_txn_seconds = evl_metrics_histogram(
        "evlua_command_transaction_seconds",
        "Time from beginning a Kafka transaction to its commit", NULL, NULL, 0);
    static const double sizes[] = {1,   2,   5,    10,   50,
                                   100, 500, 1000, 5000, 10000};
    cp->m_batch_size = evl_metrics_histogram(
        "evlua_command_batch_size", "Commands per Kafka transaction", NULL,
        sizes, sizeof sizes / sizeof sizes[0]);
    cp->m_lua_seconds = evl_metrics_counter(
        "evlua_lua_handler_seconds_total",
        "Time spent in Lua handlers (aggregate handle, projection handlers)",
        "pipeline=\"commands\"");
    cp->m_lua_memory = evl_metrics_gauge("evlua_lua_memory_bytes",
                                         "Heap of a pipeline's Lua state",
                                         "pipeline=\"commands\"");
    cp->m_store_bytes = evl_metrics_gauge(
        "evlua_store_bytes",
        "Heap bytes of the command side's aggregate states and remembered "
        "command ids",
        NULL);
    cp->m_store_aggs =
        evl_metrics_gauge("evlua_store_aggregates",
                          "Aggregates held in the command side's store", NULL);
}

/* Everything but the scripts: the store, the scratch Lua state, the types,
 * the Kafka clients and topics, the producers' transactions, the
 * committer, the subscription. Returns EXIT_OK or the exit code (logged). */
static int open_rest(cmdproc *cp)
{
    const evl_config *cfg = cp->cfg;
    char err[EVL_ERRLEN];
    int rc;
    evl_err e;

    cp->store = evl_store_new(cfg->cmd.dedup_ids);
    if (!(cp->L = luaL_newstate())) {
        evl_log(EVL_LOG_ERROR, "cannot create a Lua state", NULL);
        return EXIT_RUNTIME;
    }
    cmd_types_from_host(cfg, cp->host, &cp->types, &cp->ntypes);
    if (cp->ntypes == 0) {
        evl_log(EVL_LOG_ERROR, "command processor: no aggregate scripts", NULL);
        return EXIT_CONFIG;
    }
    if (!evl_config_kafka(cfg, "bootstrap.servers") &&
        !evl_config_kafka(cfg, "test.mock.num.brokers")) {
        evl_log(EVL_LOG_ERROR,
                "command processor: no Kafka configured: set "
                "kafka[\"bootstrap.servers\"] or EVLUA_KAFKA_BOOTSTRAP",
                NULL);
        return EXIT_CONFIG;
    }
    if (evl_config_kafka(cfg, "test.mock.num.brokers"))
        evl_log(EVL_LOG_WARN,
                "librdkafka's MOCK cluster is configured: a development toy "
                "without transaction markers; nothing here is exactly once",
                NULL);
    if ((rc = start_clients(cp, err, sizeof err)) != EXIT_OK) {
        evl_log(EVL_LOG_ERROR, "command processor: bad Kafka configuration",
                "error", err, NULL);
        return rc;
    }
    if ((e = cmd_ensure_all(cp, cp->types, cp->ntypes, err, sizeof err))) {
        if (e != EVL_ETRANSIENT || !evl_lifecycle_stopping())
            evl_log(EVL_LOG_ERROR, "command processor: topics not usable",
                    "error", err, NULL);
        return e == EVL_EPERMANENT ? EXIT_CONFIG : EXIT_RUNTIME;
    }
    if ((rc = init_transactions(cp)) != EXIT_OK)
        return rc;
    if (cmd_committer_start(cp) != 0) {
        evl_log(EVL_LOG_ERROR, "cannot start the committer thread", NULL);
        return EXIT_RUNTIME;
    }
    if (cmd_subscribe(cp, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "command processor", "error", err, NULL);
        return EXIT_RUNTIME;
    }
    evl_pipeline_ready(&cp->pl, 0, "waiting for a partition assignment");
    evl_log(EVL_LOG_INFO, "command processor started", "group",
            cfg->cmd.group_id, "transactional_id", cfg->cmd.transactional_id,
            "scripts", evl_luahost_hash(cp->host), NULL);
    return EXIT_OK;
}

/* The loop, then the stop: the transaction in flight ends (commit or
 * abort); what was decided after it never began. */
static int loop(cmdproc *cp)
{
    static const evl_pipeline_ops ops = {turn, idle, reload, tick};
    int rc = EXIT_OK;
    evl_pipeline_loop(&cp->pl, &ops, cp);
    if (cmd_settle(cp, 0) != 0)
        cp->fatal = 1;
    cmd_drop_uncommitted(cp);
    if (cp->fatal) {
        evl_log(EVL_LOG_ERROR,
                "command processor stops after a fatal Kafka error (see the "
                "error above: another instance with the same "
                "commands.transactional_id or the same instance?)",
                NULL);
        rc = EXIT_RUNTIME;
    }
    log_counts(cp);
    return rc;
}

static void close_all(cmdproc *cp)
{
    cmd_committer_stop(cp);
    if (cp->cq)
        rd_kafka_queue_destroy(cp->cq);
    if (cp->consumer) {
        rd_kafka_consumer_close(cp->consumer);
        rd_kafka_destroy(cp->consumer);
    }
    if (cp->restorer) {
        rd_kafka_consumer_close(cp->restorer);
        rd_kafka_destroy(cp->restorer);
    }
    cmd_types_free(cp); /* topic handles before their producers */
    for (int j = 0; j < NPRODUCERS; j++)
        evl_txn_close(&cp->txn[j]);
    if (cp->L)
        lua_close(cp->L);
    evl_store_free(cp->store);
    evl_luahost_decision_free(&cp->dec);
    evl_envelope_command_free(&cp->cmd);
    evl_buf_free(&cp->arena);
    evl_buf_free(&cp->fl_arena);
    free(cp->out);
    free(cp->fl_out);
    free(cp->event_ids);
    free(cp->batch);
    evl_luahost_free(cp->host);
}

int evl_cmdproc_run(const evl_config *cfg, const evl_luahost *proto)
{
    cmdproc cp;
    char err[EVL_ERRLEN];
    int rc;

    memset(&cp, 0, sizeof cp);
    cp.cfg = cfg;
    evl_pipeline_open(&cp.pl, "commands", cfg->cmd.group_id,
                      cfg->cmd.batch_size, cfg->cmd.linger_ms);
    metrics_open(&cp);
    evl_testhooks_read(&cp.hooks);
    if (evl_luahost_again(proto, &cp.host, NULL, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "command processor: cannot load the scripts",
                "error", err, NULL);
        return EXIT_CONFIG;
    }
    evl_metrics_scripts("commands", NULL, NULL, evl_luahost_hash(cp.host));
    if ((rc = open_rest(&cp)) == EXIT_OK)
        rc = loop(&cp);
    else if (rc == EXIT_RUNTIME && evl_lifecycle_stopping() && !cp.fatal) {
        /* asked to stop while starting (a broker out of reach): nothing
         * was processed, nothing is lost */
        evl_log(EVL_LOG_INFO, "command processor stopped before it was ready",
                NULL);
        rc = EXIT_OK;
    }
    close_all(&cp);
    evl_pipeline_close(&cp.pl,
                       rc == EXIT_OK ? EVL_PIPELINE_DONE : EVL_PIPELINE_FAILED);
    if (rc == EXIT_OK)
        evl_log(EVL_LOG_INFO, "command processor stopped", NULL);
    return rc;
}
