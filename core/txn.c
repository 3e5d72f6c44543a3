/*
 * txn.c - a transactional producer's calls and their steps (txn.h).
 *
 * Recovering from a timed-out transaction. A producer cut off from the
 * broker (a network partition, or the process stalled) for longer than
 * transaction.timeout.ms finds, when it comes back, that the transaction
 * coordinator has aborted its open transaction and bumped its epoch. Its
 * next call is answered PRODUCER_FENCED or INVALID_PRODUCER_EPOCH, which
 * librdkafka turns into the fatal _FENCED, "fenced by a newer instance":
 * the same error, and the same text, as when another process with our
 * transactional.id called init_transactions. Neither the error code nor
 * its string tells the two apart (librdkafka 2.0.2 normalizes both; no
 * API shows the epoch).
 *
 * What does: the coordinator aborts a transaction for its timeout only
 * once it has been open longer than transaction.timeout.ms, counted from
 * its first AddPartitionsToTxn, which comes after our begin_transaction.
 * So a transaction fenced while younger than the timeout was fenced by a
 * newer instance: EVL_TXN_FATAL. One fenced when older was (or may have
 * been) timed out; a pipeline's transactions last milliseconds (a batch is
 * decided before it begins), so an old one means we were cut off or
 * stalled: EVL_TXN_LOST. Then, like Kafka Streams on a lost task, the
 * pipeline drops the producer, builds it again with the same
 * transactional.id (init_transactions bumps the epoch once more), drops
 * what it holds and restores it from the committed offsets.
 *
 * The one case this reads wrongly: a second process started with our
 * transactional.id while this one was cut off. This one's rebuilt
 * producer then fences it, and it exits 1 (its transaction is young):
 * one survives and exactly-once holds, but not necessarily the newer.
 */
#include "txn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lifecycle.h"
#include "log.h"

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Runs on the thread using rk (no two threads use one producer at once),
 * so each producer has its own error slot. */
static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                      void *opaque)
{
    evl_txn *t = opaque;
    (void)rk;
    if (rkm->err && t->delivery_error[0] == '\0')
        snprintf(t->delivery_error, sizeof t->delivery_error,
                 "delivery to %s[%d] failed: %s", rd_kafka_topic_name(rkm->rkt),
                 (int)rkm->partition, rd_kafka_err2str(rkm->err));
}

evl_err evl_txn_open(evl_txn *t, const evl_config *cfg,
                     const evl_kafka_client_opts *o, char *err, size_t errlen)
{
    evl_kafka_client_opts mine = *o;
    char v[64];
    evl_err e;

    memset(t, 0, sizeof *t);
    mine.opaque = t;
    mine.dr_msg_cb = dr_msg_cb;
    if ((e = evl_kafka_producer_new(cfg, &mine, &t->rk, err, errlen)))
        return e;
    evl_kafka_conf_value(t->rk, "transaction.timeout.ms", v, sizeof v);
    t->timeout_ms = strtol(v, NULL, 10);
    if (t->timeout_ms <= 0)
        t->timeout_ms = 60000; /* librdkafka's own default */
    return EVL_OK;
}

evl_err evl_txn_init(evl_txn *t, long long deadline_ms)
{
    /* a call that times out is resumed by the next one (librdkafka keeps
     * the operation), so short calls lose nothing and see a stop soon */
    long long warn_at = now_ms() + 30000;
    for (;;) {
        char err[EVL_ERRLEN];
        evl_err e =
            evl_kafka_error(rd_kafka_init_transactions(t->rk, 1000),
                            "rd_kafka_init_transactions", err, sizeof err);
        if (e == EVL_OK)
            return EVL_OK;
        if (evl_lifecycle_stopping() && e != EVL_EFATAL)
            return EVL_ETRANSIENT;
        if (e == EVL_EFATAL || now_ms() > deadline_ms) {
            evl_log(EVL_LOG_ERROR, "cannot start the transactional producer",
                    "error", err, NULL);
            return e;
        }
        if (e != EVL_ETRANSIENT || now_ms() > warn_at) {
            evl_log(EVL_LOG_WARN, "retrying init_transactions", "error", err,
                    NULL);
            warn_at = now_ms() + 30000;
        }
        if (e != EVL_ETRANSIENT)
            sleep_ms(500);
    }
}

void evl_txn_close(evl_txn *t)
{
    if (t->rk)
        rd_kafka_destroy(t->rk);
    t->rk = NULL;
    t->begun_ms = 0;
    t->lost_age_ms = 0;
    t->delivery_error[0] = '\0';
}

long long evl_txn_own_timeout(evl_txn *t)
{
    char reason[512], age_s[32], timeout_s[32];
    long long age;
    if (rd_kafka_fatal_error(t->rk, reason, sizeof reason) !=
            RD_KAFKA_RESP_ERR__FENCED ||
        t->begun_ms == 0)
        return 0;
    age = now_ms() - t->begun_ms;
    if (age > t->timeout_ms)
        return age;
    snprintf(age_s, sizeof age_s, "%lld", age);
    snprintf(timeout_s, sizeof timeout_s, "%ld", t->timeout_ms);
    evl_log(EVL_LOG_ERROR,
            "producer fenced while its transaction was younger than "
            "transaction.timeout.ms, so not by its timeout: another process "
            "uses this transactional.id",
            "client", rd_kafka_name(t->rk), "transaction_age_ms", age_s,
            "transaction_timeout_ms", timeout_s, NULL);
    return 0;
}

evl_txn_step evl_txn_call(evl_txn *t, const char *call, rd_kafka_error_t *error)
{
    char err[EVL_ERRLEN];
    evl_err e = evl_kafka_error(error, call, err, sizeof err);
    switch (e) {
    case EVL_OK: return EVL_TXN_OK;
    case EVL_EPERMANENT:
        evl_log(EVL_LOG_WARN, "transaction needs an abort", "error", err,
                "delivery", t->delivery_error[0] ? t->delivery_error : NULL,
                NULL);
        return EVL_TXN_ABORT;
    case EVL_ETRANSIENT:
        evl_log(EVL_LOG_WARN, "retrying a transaction call", "error", err,
                NULL);
        sleep_ms(100);
        return EVL_TXN_RETRY;
    case EVL_EFATAL: break;
    }
    long long age = evl_txn_own_timeout(t);
    if (age > 0) {
        char a[32];
        snprintf(a, sizeof a, "%lld", age);
        t->lost_age_ms = age;
        evl_log(EVL_LOG_WARN,
                "producer fenced after the broker timed out its transaction "
                "(not by another instance): it will be rebuilt",
                "error", err, "transaction_age_ms", a, NULL);
        return EVL_TXN_LOST;
    }
    evl_log(EVL_LOG_ERROR, "transaction failed fatally", "error", err, NULL);
    return EVL_TXN_FATAL;
}

/* The transaction calls, repeated while retriable by repeat(). */
enum op { OP_BEGIN, OP_SEND_OFFSETS, OP_COMMIT, OP_ABORT };

static evl_txn_step repeat(evl_txn *t, enum op op,
                           const rd_kafka_topic_partition_list_t *offsets,
                           const rd_kafka_consumer_group_metadata_t *cgmd)
{
    evl_txn_step s;
    do {
        switch (op) {
        case OP_BEGIN:
            s = evl_txn_call(t, "rd_kafka_begin_transaction",
                             rd_kafka_begin_transaction(t->rk));
            break;
        case OP_SEND_OFFSETS:
            s = evl_txn_call(
                t, "rd_kafka_send_offsets_to_transaction",
                rd_kafka_send_offsets_to_transaction(t->rk, offsets, cgmd, -1));
            break;
        case OP_COMMIT:
            s = evl_txn_call(t, "rd_kafka_commit_transaction",
                             rd_kafka_commit_transaction(t->rk, -1));
            break;
        default:
            s = evl_txn_call(t, "rd_kafka_abort_transaction",
                             rd_kafka_abort_transaction(t->rk, -1));
            break;
        }
        /* a begin gives up when stopping: nothing is open yet */
    } while (s == EVL_TXN_RETRY &&
             !(op == OP_BEGIN && evl_lifecycle_stopping()));
    return s;
}

evl_txn_step evl_txn_begin(evl_txn *t)
{
    t->delivery_error[0] = '\0';
    t->begun_ms = now_ms();
    return repeat(t, OP_BEGIN, NULL, NULL);
}

evl_txn_step evl_txn_produced(evl_txn *t, rd_kafka_resp_err_t rerr,
                              const char *topic)
{
    char reason[512];
    long long age;
    if (rerr == RD_KAFKA_RESP_ERR_NO_ERROR)
        return EVL_TXN_OK;
    if (rerr == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_poll(t->rk, 10);
        return EVL_TXN_RETRY;
    }
    if (rerr != RD_KAFKA_RESP_ERR__FATAL) {
        evl_log(EVL_LOG_WARN, "rd_kafka_producev failed; aborting the batch",
                "topic", topic, "error", rd_kafka_err2str(rerr), NULL);
        return EVL_TXN_ABORT;
    }
    if ((age = evl_txn_own_timeout(t)) > 0) {
        t->lost_age_ms = age;
        return EVL_TXN_LOST;
    }
    rd_kafka_fatal_error(t->rk, reason, sizeof reason);
    evl_log(EVL_LOG_ERROR, "producer fatal error", "error", reason, NULL);
    return EVL_TXN_FATAL;
}

evl_txn_step
evl_txn_send_offsets(evl_txn *t, const rd_kafka_topic_partition_list_t *offsets,
                     const rd_kafka_consumer_group_metadata_t *cgmd)
{
    return repeat(t, OP_SEND_OFFSETS, offsets, cgmd);
}

evl_txn_step evl_txn_commit(evl_txn *t)
{
    return repeat(t, OP_COMMIT, NULL, NULL);
}

evl_txn_step evl_txn_abort(evl_txn *t)
{
    evl_txn_step s = repeat(t, OP_ABORT, NULL, NULL);
    return s == EVL_TXN_ABORT ? EVL_TXN_FATAL : s;
}

void evl_txn_rewind(rd_kafka_t *consumer,
                    const rd_kafka_topic_partition_list_t *offsets)
{
    rd_kafka_error_t *error;
    if (!offsets)
        return;
    /* rd_kafka_seek_partitions takes a non-const list it does not keep */
    error = rd_kafka_seek_partitions(
        consumer, (rd_kafka_topic_partition_list_t *)offsets, 10000);
    if (error) {
        evl_log(EVL_LOG_WARN, "seeking back failed", "error",
                rd_kafka_error_string(error), NULL);
        rd_kafka_error_destroy(error);
    }
}
