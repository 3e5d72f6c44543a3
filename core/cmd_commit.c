/*
 * cmd_commit.c - the command side's transactions (cmdproc_int.h), on
 * txn.h's producer calls.
 *
 * A batch is decided first (Lua, no Kafka: however slow a script is, it
 * never stretches a transaction), queueing its records and the store
 * updates; then its transaction begins, the records, the snapshots of the
 * touched aggregates and the offsets are produced, and it commits.
 * Deciding stops early after DECIDE_BUDGET_MS; the rest of the batch goes
 * into the next transaction. Records are produced without a copy: their
 * arena stays put until the transaction is committed or aborted (when
 * librdkafka is done with them).
 *
 * Sending the offsets and committing are five round trips to the broker,
 * most of a transaction's time, and need no work from this thread: the
 * committer thread does them while this thread takes in and decides the
 * next batch, on top of the states the transaction in flight leaves (the
 * store keeps both levels undoable: evl_store_seal). The next transaction
 * begins only once the one in flight has committed, so records keep their
 * order in the log and each offset commit follows the one before. If the
 * one in flight fails, the batch decided meanwhile is dropped with it: the
 * store rolls both back and the consumer reads both again.
 *
 * Transactions take turns between NPRODUCERS producers. Once
 * commit_transaction returns, the transaction is committed, but the
 * coordinator is still writing its markers, and until it has, the same
 * transactional id cannot start the next one (CONCURRENT_TRANSACTIONS, a
 * retry after retry.backoff.ms): 20 to 70 ms per transaction on a loaded
 * two-core machine, the larger part of a small batch's latency. The next
 * producer has no such wait. Order and exactly-once are unaffected: a
 * transaction begins only after the previous one committed, records keep
 * their log order, and each producer's offset commits carry the consumer
 * group's generation. */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdproc_int.h"
#include "log.h"

/* ---- producing ------------------------------------------------------- */

static evl_txn_step produce_one(cmdproc *cp, const outmsg *o)
{
    const char *b = cp->arena.data;
    evl_txn *tx = &cp->txn[cp->cur];
    rd_kafka_topic_t *rkt = o->t->rkt[o->kind][cp->cur];
    const char *key = o->key == SIZE_MAX ? NULL : b + o->key;
    size_t keylen = o->key == SIZE_MAX ? 0 : o->keylen;
    evl_txn_step s;
    do {
        rd_kafka_resp_err_t rerr;
        if (o->evtype != SIZE_MAX)
            rerr = rd_kafka_producev(
                tx->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(o->partition),
                RD_KAFKA_V_KEY(key, keylen),
                RD_KAFKA_V_VALUE((void *)(b + o->val), o->vallen),
                RD_KAFKA_V_MSGFLAGS(0),
                RD_KAFKA_V_HEADER("evlua-type", b + o->evtype, -1),
                RD_KAFKA_V_HEADER("evlua-aggregate-type", o->agtype, -1),
                RD_KAFKA_V_HEADER("content-type", "application/json", -1),
                RD_KAFKA_V_END);
        else if (o->status)
            rerr = rd_kafka_producev(
                tx->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(o->partition),
                RD_KAFKA_V_KEY(key, keylen),
                RD_KAFKA_V_VALUE((void *)(b + o->val), o->vallen),
                RD_KAFKA_V_MSGFLAGS(0),
                RD_KAFKA_V_HEADER("evlua-status", o->status, -1),
                RD_KAFKA_V_HEADER("evlua-aggregate-type", o->agtype, -1),
                RD_KAFKA_V_HEADER("content-type", "application/json", -1),
                RD_KAFKA_V_END);
        else
            rerr = rd_kafka_producev(
                tx->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(o->partition),
                RD_KAFKA_V_KEY(key, keylen),
                RD_KAFKA_V_VALUE((void *)(b + o->val), o->vallen),
                RD_KAFKA_V_MSGFLAGS(0),
                RD_KAFKA_V_HEADER("evlua-aggregate-type", o->agtype, -1),
                RD_KAFKA_V_HEADER("content-type", "application/json", -1),
                RD_KAFKA_V_END);
        s = evl_txn_produced(tx, rerr, rd_kafka_topic_name(rkt));
    } while (s == EVL_TXN_RETRY);
    return s;
}

/* ---- aborting -------------------------------------------------------- */

/* Abort producer j's transaction. Sets cp->fatal when that fails (cp->lost
 * when j is fenced by its own transaction's timeout). */
static void abort_txn(cmdproc *cp, int j)
{
    evl_txn_step s = evl_txn_abort(&cp->txn[j]);
    if (s == EVL_TXN_LOST)
        cp->lost = 1;
    else if (s != EVL_TXN_OK)
        cp->fatal = 1;
}

void cmd_abort_open(cmdproc *cp)
{
    if (!cp->in_txn)
        return;
    abort_txn(cp, cp->cur);
    cp->in_txn = 0;
    cp->cur = (cp->cur + 1) % NPRODUCERS; /* see "the pipeline" */
    evl_store_rollback(cp->store);
}

/* The counts of the transaction in flight (inflight) or of the batch
 * being decided: to the metrics and the log's totals (committed), or
 * forgotten (aborted). */
static void counts_settle(cmdproc *cp, int committed, int inflight)
{
    for (size_t i = 0; i < cp->ntypes; i++) {
        agtype *t = &cp->types[i];
        long long *pending = inflight ? t->fl_pending : t->pending;
        long long *events =
            inflight ? &t->fl_pending_events : &t->pending_events;
        if (committed) {
            for (int k = 0; k < 4; k++)
                if (pending[k])
                    evl_metric_add(t->outcomes[k], (double)pending[k]);
            if (*events)
                evl_metric_add(t->events_total, (double)*events);
            cp->n_accepted += pending[OUTCOME_ACCEPTED];
            cp->n_rejected += pending[OUTCOME_REJECTED];
            cp->n_failed += pending[OUTCOME_FAILED];
            cp->n_duplicate += pending[OUTCOME_DUPLICATE];
            cp->n_events += *events;
        }
        memset(pending, 0, sizeof t->pending);
        *events = 0;
    }
}

void cmd_discard_decided(cmdproc *cp)
{
    counts_settle(cp, 0, 0);
    cp->arena.len = 0;
    cp->nout = 0;
    cp->ndec = 0;
}

void cmd_drop_uncommitted(cmdproc *cp)
{
    evl_store_rollback(cp->store);
    cmd_batch_clear(cp);
    cmd_discard_decided(cp);
}

/* Abort, roll the store back, seek the consumer back to the batch. */
static void abort_and_rewind(cmdproc *cp)
{
    rd_kafka_topic_partition_list_t *first =
        cmd_batch_offsets(cp, 1, cp->nbatch);
    cmd_abort_open(cp);
    evl_store_rollback(cp->store);
    if (first) {
        evl_txn_rewind(cp->consumer, first);
        rd_kafka_topic_partition_list_destroy(first);
    }
    cmd_batch_clear(cp);
    cmd_discard_decided(cp);
    evl_log(EVL_LOG_WARN, "batch aborted; it will be read again", NULL);
    cmd_sleep_ms(cp->backoff_ms);
    cp->backoff_ms = cp->backoff_ms ? cp->backoff_ms * 2 : 100;
    if (cp->backoff_ms > 5000)
        cp->backoff_ms = 5000;
}

/* Drop the first n messages of the batch (committed); keep the rest. */
static void batch_shift(cmdproc *cp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rd_kafka_message_destroy(cp->batch[i]);
    memmove(cp->batch, cp->batch + n, sizeof *cp->batch * (cp->nbatch - n));
    cp->nbatch -= n;
}

/* ---- the committer thread -------------------------------------------- */

/* Send the offsets of producer j's transaction and commit it. */
static evl_txn_step commit_job(committer *c, int j)
{
    evl_txn *tx = &c->cp->txn[j];
    long long t0 = evl_now_ms(), t1;
    evl_txn_step s = evl_txn_send_offsets(tx, c->offsets, c->cgmd);
    t1 = evl_now_ms();
    /* the test hook: the records are in the log; the next batch gets time
     * to be decided on top of this one, then this one fails */
    if (s == EVL_TXN_OK && c->fail && evl_testhooks_in_flight(tx->rk))
        s = EVL_TXN_ABORT;
    if (s == EVL_TXN_OK)
        s = evl_txn_commit(tx);
    c->send_offsets_ms = t1 - t0;
    c->commit_ms = evl_now_ms() - t1;
    return s;
}

static void *committer_main(void *arg)
{
    committer *c = arg;
    evl_thread_name("evl:commit", NULL);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->has_job && !c->quit)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->quit)
            break;
        int j = c->producer;
        pthread_mutex_unlock(&c->mu);

        evl_txn_step s = commit_job(c, j);

        pthread_mutex_lock(&c->mu);
        c->result = s;
        c->has_job = 0;
        c->done = 1;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        /* the processing thread may be waiting in rd_kafka_consumer_poll
         * (the flag stays until a poll sees it: no lost wake-up) */
        rd_kafka_queue_yield(c->cp->cq);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int cmd_committer_start(cmdproc *cp)
{
    committer *c = &cp->cm;
    pthread_condattr_t ca;
    c->cp = cp;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&c->th, NULL, committer_main, c) != 0) {
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        return -1;
    }
    c->started = 1;
    return 0;
}

void cmd_committer_stop(cmdproc *cp)
{
    committer *c = &cp->cm;
    if (!c->started)
        return;
    pthread_mutex_lock(&c->mu);
    c->quit = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    c->started = 0;
}

/* Has the transaction in flight finished? Waits up to ms (-1: for ever). */
int cmd_committer_wait(cmdproc *cp, int ms)
{
    committer *c = &cp->cm;
    int done;
    pthread_mutex_lock(&c->mu);
    if (ms < 0) {
        while (!c->done)
            pthread_cond_wait(&c->cv, &c->mu);
    } else if (!c->done && ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
    done = c->done;
    pthread_mutex_unlock(&c->mu);
    return done;
}

static void log_committed(cmdproc *cp)
{
    char n[32], m[32], d[32], w[32], b[32], p[32], o[32], c[32], k[32];
    snprintf(k, sizeof k, "%lld", cp->fl_collect);
    snprintf(n, sizeof n, "%zu", cp->fl_n);
    snprintf(m, sizeof m, "%zu", cp->fl_nout);
    snprintf(d, sizeof d, "%lld", cp->fl_t1 - cp->fl_t0);
    snprintf(w, sizeof w, "%lld", cp->fl_wait);
    snprintf(b, sizeof b, "%lld", cp->fl_t2 - cp->fl_tb);
    snprintf(p, sizeof p, "%lld", cp->fl_t3 - cp->fl_t2);
    snprintf(o, sizeof o, "%lld", cp->cm.send_offsets_ms);
    snprintf(c, sizeof c, "%lld", cp->cm.commit_ms);
    evl_log(EVL_LOG_DEBUG, "batch committed", "commands", n, "records", m,
            "poll_ms", k, "decide_ms", d, "wait_ms", w, "begin_ms", b,
            "produce_ms", p, "send_offsets_ms", o, "commit_ms", c, NULL);
}

/* The transaction in flight committed: its changes stay, its commands
 * leave the batch. */
static void settle_committed(cmdproc *cp)
{
    long long now = evl_now_ms();
    /* every record is delivered (librdkafka read them from the buffer,
     * without a copy); after a failure they may not be until the abort */
    cmd_arena_release(&cp->fl_arena);
    evl_store_commit_sealed(cp->store);
    counts_settle(cp, 1, 1);
    evl_metric_add(cp->m_committed, 1);
    evl_metric_observe(cp->m_batch_seconds, (double)(now - cp->fl_t0) / 1000.0);
    evl_metric_observe(cp->m_txn_seconds, (double)(now - cp->fl_tb) / 1000.0);
    evl_metric_observe(cp->m_batch_size, (double)cp->fl_n);
    evl_metric_set(cp->m_lua_memory, (double)evl_luahost_memory(cp->host));
    cmd_store_gauges(cp);
    if (evl_log_get_level() <= EVL_LOG_DEBUG)
        log_committed(cp);
    batch_shift(cp, cp->fl_n);
    cp->fl_n = 0;
    cp->fl_nout = 0;
    cp->backoff_ms = 0;
}

/* The transaction in flight failed with step s: abort it (a fenced
 * producer cannot) and drop everything since the last commit. */
static void settle_failed(cmdproc *cp, evl_txn_step s, int rewind)
{
    char nf[32], nd[32];
    snprintf(nf, sizeof nf, "%zu", cp->fl_n);
    snprintf(nd, sizeof nd, "%zu", cp->ndec);
    evl_log(EVL_LOG_WARN,
            "transaction in flight failed; it and the batch decided after "
            "it are dropped",
            "commands", nf, "decided_after", nd, NULL);
    counts_settle(cp, 0, 1);
    evl_metric_add(cp->m_aborted, 1);
    cp->fl_n = 0;
    cp->fl_nout = 0;
    if (s == EVL_TXN_FATAL)
        cp->fatal = 1; /* a fenced producer cannot abort */
    else if (s == EVL_TXN_LOST)
        cp->lost = 1; /* nor a timed-out one: recover() rebuilds it */
    else
        abort_txn(cp, cp->fl_producer);
    if (rewind && !cp->fatal && !cp->lost)
        abort_and_rewind(cp); /* rolls back, clears, forgets the decided */
    else
        cmd_drop_uncommitted(cp);
}

/* Wait for the transaction in flight and settle it: committed, its changes
 * stay and its commands leave the batch; failed, it is aborted and
 * everything since the last commit is dropped (the store rolls back, the
 * batch is cleared and, with rewind, the consumer seeks back to it). */
int cmd_settle(cmdproc *cp, int rewind)
{
    committer *c = &cp->cm;
    evl_txn_step s;
    if (!cp->inflight)
        return 0;
    cmd_committer_wait(cp, -1);
    pthread_mutex_lock(&c->mu);
    s = c->result;
    c->done = 0;
    pthread_mutex_unlock(&c->mu);
    rd_kafka_consumer_group_metadata_destroy(c->cgmd);
    rd_kafka_topic_partition_list_destroy(c->offsets);
    c->cgmd = NULL;
    c->offsets = NULL;
    cp->inflight = 0;
    cp->fl_arena.len = 0;
    if (s == EVL_TXN_OK)
        settle_committed(cp);
    else
        settle_failed(cp, s, rewind);
    return cp->fatal ? 1 : 0;
}

/* ---- launching ------------------------------------------------------- */

/* Hand the begun and produced transaction to the committer: the store
 * seals its changes, the buffers and counts swap, the next producer takes
 * the turn. times: t1 (decided), waited, tb (begun), t2, t3 (produced). */
static void hand_on(cmdproc *cp, const long long times[5])
{
    rd_kafka_topic_partition_list_t *offsets =
        cmd_batch_offsets(cp, 0, cp->ndec);
    evl_store_seal(cp->store);
    for (size_t i = 0; i < cp->ntypes; i++) {
        agtype *t = &cp->types[i];
        memcpy(t->fl_pending, t->pending, sizeof t->pending);
        t->fl_pending_events = t->pending_events;
        memset(t->pending, 0, sizeof t->pending);
        t->pending_events = 0;
    }
    evl_buf ta = cp->fl_arena;
    cp->fl_arena = cp->arena;
    cp->arena = ta;
    cp->arena.len = 0;
    outmsg *to = cp->fl_out;
    cp->fl_out = cp->out;
    cp->out = to;
    size_t tc = cp->fl_capout;
    cp->fl_capout = cp->capout;
    cp->capout = tc;
    cp->fl_nout = cp->nout;
    cp->nout = 0;
    cp->fl_n = cp->ndec;
    cp->ndec = 0;
    cp->fl_producer = cp->cur;
    cp->cur = (cp->cur + 1) % NPRODUCERS;
    cp->in_txn = 0;
    cp->inflight = 1;
    cp->fl_t0 = cp->dec_t0;
    cp->fl_t1 = times[0]; /* deciding overlaps the wait for the previous
                           * commit */
    cp->fl_wait = times[1];
    cp->fl_tb = times[2];
    cp->fl_t2 = times[3];
    cp->fl_t3 = times[4];
    cp->fl_collect = cp->pl.collect_ms;

    committer *c = &cp->cm;
    pthread_mutex_lock(&c->mu);
    c->producer = cp->fl_producer;
    c->offsets = offsets;
    c->cgmd = rd_kafka_consumer_group_metadata(cp->consumer);
    c->fail = evl_testhooks_fail_in_flight(&cp->hooks, cp->txn_count);
    c->done = 0;
    c->has_job = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* The decided batch's transaction could not begin or be produced (step
 * s): abort and rewind, or, for a fenced producer, drop it all. Returns 0,
 * or 1 on a fatal error. */
static int launch_failed(cmdproc *cp, evl_txn_step s)
{
    counts_settle(cp, 0, 0);
    evl_metric_add(cp->m_aborted, 1);
    if (s == EVL_TXN_LOST)
        cp->lost = 1;
    if (s == EVL_TXN_FATAL || s == EVL_TXN_LOST || cp->fatal) {
        cp->in_txn = 0; /* a fenced producer cannot abort */
        cmd_drop_uncommitted(cp);
        return s == EVL_TXN_LOST && !cp->fatal ? 0 : 1;
    }
    /* EVL_TXN_ABORT, or a retriable begin/produce problem */
    abort_and_rewind(cp);
    return cp->fatal ? 1 : 0;
}

int cmd_launch(cmdproc *cp, long long waited)
{
    long long times[5] = {evl_now_ms(), waited, 0, 0, 0};
    evl_txn *tx = &cp->txn[cp->cur];
    evl_txn_step s;

    cmd_queue_snapshots(cp);
    evl_metric_add(cp->m_lua_seconds, cp->lua_s);
    if ((s = evl_txn_begin(tx)) != EVL_TXN_OK)
        return launch_failed(cp, s);
    times[2] = tx->begun_ms;
    cp->in_txn = 1;
    times[3] = evl_now_ms();
    for (size_t i = 0; i < cp->nout; i++)
        if ((s = produce_one(cp, &cp->out[i])) != EVL_TXN_OK)
            return launch_failed(cp, s);
    cp->txn_count++;
    if (evl_testhooks_before_commit(&cp->hooks, cp->txn_count, tx->rk))
        return launch_failed(cp, EVL_TXN_ABORT);
    times[4] = evl_now_ms();
    hand_on(cp, times);
    return 0;
}
