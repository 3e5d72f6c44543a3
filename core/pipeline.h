/*
 * pipeline.h - the loop shape evlua's consume-transform-produce pipelines
 * share: open / loop / close, one batch per turn, named outcomes.
 *
 * A pipeline (the command side; the coming reactors) keeps its own state
 * and hands the loop its steps (evl_pipeline_ops). The loop runs until
 * evl_lifecycle_stopping() (SIGTERM, SIGINT, another pipeline's failure)
 * or a turn's FAILED:
 *
 *     while not stopping:
 *         between batches, when a SIGHUP came and ops->idle: ops->reload
 *         ops->turn: poll a batch (evl_pipeline_collect), process it,
 *                    commit it                   -> NEXT | DONE | FAILED
 *         every EVL_PIPELINE_TICK_MS: ops->tick  (a summary line)
 *
 * It also holds what every pipeline's consumer needs around the loop: the
 * readiness component (metrics.h), the SIGHUP counter it has seen (the
 * only place a pipeline reads it), and the wait for partitions and its
 * log (kafka.h's evl_kafka_wait).
 *
 * Does not: build clients (kafka.h), run transactions (txn.h), decide.
 *
 * Uses kafka, luahost (the SIGHUP counter), lifecycle, metrics.
 *
 * @locality the pipeline's thread; evl_pipeline_assigned / _revoked /
 * _wait_check from the consumer's callbacks (the same thread).
 */
#ifndef EVL_PIPELINE_H
#define EVL_PIPELINE_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "kafka.h"

/* What a turn (or the loop) ended with: go on with the next batch; done
 * (a clean stop); failed (a fatal error, logged where it was seen). */
typedef enum evl_pipeline_outcome {
    EVL_PIPELINE_NEXT,
    EVL_PIPELINE_DONE,
    EVL_PIPELINE_FAILED
} evl_pipeline_outcome;

/* How often the loop calls ops->tick. */
#define EVL_PIPELINE_TICK_MS 60000

typedef struct evl_pipeline_ops {
    /* One batch. Required. */
    evl_pipeline_outcome (*turn)(void *ctx);
    /* Is this a moment between batches (nothing in flight)? NULL: always. */
    int (*idle)(void *ctx);
    /* Reload the scripts (a SIGHUP came; called when idle). NULL: none. */
    void (*reload)(void *ctx);
    /* Every EVL_PIPELINE_TICK_MS. NULL: none. */
    void (*tick)(void *ctx);
} evl_pipeline_ops;

typedef struct evl_pipeline {
    const char *component; /* readiness component ("commands") */
    const char *group;     /* consumer group, for the partition-wait log */
    rd_kafka_t *consumer;  /* the pipeline's consumer (not owned) */
    int batch_size;        /* commands per batch, at most */
    int linger_ms;         /* wait after a batch's first message */
    unsigned seen_hup;     /* SIGHUPs handled (evl_pipeline_reload_*) */
    evl_kafka_wait wait;   /* the consumer's wait for partitions */
    long long collect_ms;  /* how long the last evl_pipeline_collect took */
} evl_pipeline;

/* Start p: not ready ("starting"); the SIGHUPs before now count as seen
 * (the pipeline's scripts already hold them). */
void evl_pipeline_open(evl_pipeline *p, const char *component,
                       const char *group, int batch_size, int linger_ms);

/* Run the loop (above) until a stop or a FAILED turn: returns DONE or
 * FAILED. */
evl_pipeline_outcome evl_pipeline_loop(evl_pipeline *p,
                                       const evl_pipeline_ops *ops, void *ctx);

/* Readiness at the end: "stopped" after DONE, else "failed". */
void evl_pipeline_close(evl_pipeline *p, evl_pipeline_outcome o);

/* Readiness of the component (why: the reason when not ready). */
void evl_pipeline_ready(const evl_pipeline *p, int ready, const char *why);

/* Has a SIGHUP come that the pipeline has not reloaded for? Peeks. */
int evl_pipeline_reload_pending(const evl_pipeline *p);

/* The same, and marks it handled. */
int evl_pipeline_reload_take(evl_pipeline *p);

/* The consumer subscribed, or lost its partitions: it waits for some (the
 * log after EVL_KAFKA_WAIT_LOG_MS says why). */
void evl_pipeline_waiting(evl_pipeline *p);

/* Partitions came: the wait ends. */
void evl_pipeline_assigned(evl_pipeline *p);

/* Log why the consumer waits, once per wait (from a statistics callback:
 * it runs while the consumer polls, also while it waits). */
void evl_pipeline_wait_check(evl_pipeline *p);

/* Where evl_pipeline_collect puts messages: take(ctx, m) owns m and
 * returns 1 when it joined the batch, 0 when it was dropped (an error);
 * pending(ctx) counts the batch's messages not yet processed; halted(ctx)
 * says the turn cannot go on (a fatal error, a lost producer); busy(ctx)
 * says a transaction is in flight (the pipeline takes in messages while
 * it waits for it, so an empty batch returns at once); full(ctx), when
 * not NULL, says the batch holds enough by the sink's own measure (bytes)
 * before batch_size messages. */
typedef struct evl_pipeline_sink {
    int (*take)(void *ctx, rd_kafka_message_t *m);
    size_t (*pending)(void *ctx);
    int (*halted)(void *ctx);
    int (*busy)(void *ctx);
    int (*full)(void *ctx);
} evl_pipeline_sink;

/* Poll p->consumer until the batch holds p->batch_size messages (or the
 * sink says it is full), or a stop is requested. Once the batch has its first
 * message, it takes what the consumer has queued and closes as soon as nothing
 * more is there (linger_ms 0), or waits up to linger_ms after the first one for
 * more. The adaptive close is what keeps latency low at every rate: messages
 * queue up while the previous transaction commits, so the batch grows
 * with the load without waiting for a clock. While nothing comes, it
 * returns every 100 ms so the loop sees SIGHUP and the stop flag. Sets
 * p->collect_ms. */
void evl_pipeline_collect(evl_pipeline *p, const evl_pipeline_sink *sink,
                          void *ctx);

#endif
