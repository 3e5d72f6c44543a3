/*
 * txn.h - one transactional producer of a consume-transform-produce
 * pipeline: begin, produce, send the consumer's offsets, commit, abort,
 * and telling a fence by a newer instance from a fence by the broker
 * timing out our own transaction.
 *
 * Each call names its outcome (evl_txn_step) and logs where it decides
 * it, so a pipeline acts on the step without reading error codes:
 *   EVL_TXN_OK     go on
 *   EVL_TXN_RETRY  a retriable error, already waited for: repeat the call
 *                  (the loops below do)
 *   EVL_TXN_ABORT  this transaction is lost: abort it, rewind the consumer
 *                  and read the batch again
 *   EVL_TXN_FATAL  fenced by a newer instance with our transactional.id (or
 *                  a state error): stop
 *   EVL_TXN_LOST   fenced, but by the broker timing out our own transaction
 *                  (we were cut off or stalled for longer than
 *                  transaction.timeout.ms, told apart by the transaction's
 *                  age): rebuild the producer (evl_txn_close, evl_txn_open,
 *                  evl_txn_init) and restore what the pipeline holds
 * The error classes themselves are kafka.c's (evl_kafka_error).
 *
 * Does not: choose what to produce, own the consumer, retry a batch.
 *
 * Uses kafka, lifecycle, log.
 *
 * @locality the thread using the producer; one thread at a time per
 * evl_txn (a pipeline may hand one to a committer thread between calls).
 */
#ifndef EVL_TXN_H
#define EVL_TXN_H

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "evl.h"
#include "kafka.h"

typedef enum evl_txn_step {
    EVL_TXN_OK,
    EVL_TXN_RETRY,
    EVL_TXN_ABORT,
    EVL_TXN_FATAL,
    EVL_TXN_LOST
} evl_txn_step;

typedef struct evl_txn {
    rd_kafka_t *rk;
    long timeout_ms;       /* the producer's transaction.timeout.ms */
    long long begun_ms;    /* when its last transaction began (monotonic
                            * ms); 0: none since it was built */
    long long lost_age_ms; /* the age at which it was found fenced by its
                            * own timeout; 0: not found so */
    /* the first failed delivery of the open transaction, for the log */
    char delivery_error[EVL_ERRLEN];
} evl_txn;

/* Build t's producer with evl_kafka_producer_new(cfg, o) (o must name a
 * transactional_id; o->opaque and o->dr_msg_cb are t's own: the delivery
 * reports fill t->delivery_error). Not yet initialized: evl_txn_init.
 * Returns EVL_OK, or EVL_EPERMANENT (a configuration problem) with err. */
evl_err evl_txn_open(evl_txn *t, const evl_config *cfg,
                     const evl_kafka_client_opts *o, char *err, size_t errlen);

/* init_transactions, retried until deadline (monotonic ms) or a stop
 * (asked for a second at a time, so a stop is seen within about one).
 * Returns EVL_OK; EVL_ETRANSIENT, unlogged, when a stop came first
 * (evl_lifecycle_stopping: the caller stops as asked); or the class of
 * the last error (logged). */
evl_err evl_txn_init(evl_txn *t, long long deadline_ms);

/* Destroy t's producer (NULL is fine) and forget its transaction. */
void evl_txn_close(evl_txn *t);

/* Begin a transaction, retrying while retriable (and not stopping). */
evl_txn_step evl_txn_begin(evl_txn *t);

/* The step for rd_kafka_producev's answer rerr on topic: OK; RETRY after
 * serving the producer's queue for 10 ms (QUEUE_FULL); FATAL or LOST
 * (a fenced producer); else ABORT (logged). */
evl_txn_step evl_txn_produced(evl_txn *t, rd_kafka_resp_err_t rerr,
                              const char *topic);

/* Send the consumer's offsets (not taken), retrying while retriable. */
evl_txn_step
evl_txn_send_offsets(evl_txn *t, const rd_kafka_topic_partition_list_t *offsets,
                     const rd_kafka_consumer_group_metadata_t *cgmd);

/* Commit, retrying while retriable. */
evl_txn_step evl_txn_commit(evl_txn *t);

/* Abort, retrying while retriable: OK, FATAL or LOST. */
evl_txn_step evl_txn_abort(evl_txn *t);

/* The step of a transaction call's result (destroyed): retriable ones
 * wait 100 ms first; the logs name call. */
evl_txn_step evl_txn_call(evl_txn *t, const char *call,
                          rd_kafka_error_t *error);

/* The age (ms) of t's transaction when t was fenced by the broker timing
 * it out; 0 when t is not fenced, or when its transaction is too young
 * for a timeout (another instance fenced it: logged at error). */
long long evl_txn_own_timeout(evl_txn *t);

/* Seek consumer back to offsets (the first offsets of a batch whose
 * transaction was aborted; not taken; NULL: nothing to do). A failure is
 * logged: the batch is then read from where the consumer is. */
void evl_txn_rewind(rd_kafka_t *consumer,
                    const rd_kafka_topic_partition_list_t *offsets);

#endif
