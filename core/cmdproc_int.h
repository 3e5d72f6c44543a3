/*
 * cmdproc_int.h - what the command side's files share (as Lua's
 * lstate.h): the processor's state and the functions one file calls in
 * another. Not a public header: only core/cmdproc.c and core/cmd_*.c
 * include it.
 *
 *   cmdproc.c      open / loop / close: clients, the batch, one turn of
 *                  the pipeline, reloads, recovering a lost producer
 *   cmd_topics.c   aggregate types and their topics (check, create,
 *                  subscribe)
 *   cmd_restore.c  partitions: committed offsets and states restored on
 *                  assignment, dropped on revocation
 *   cmd_decide.c   deciding commands: Lua, envelopes, the records to
 *                  produce
 *   cmd_commit.c   the transaction: begin and produce, the committer
 *                  thread, settling it (commit, or abort and rewind)
 *
 * Threads: everything runs on the caller's thread but the end of each
 * Kafka transaction: a committer thread sends its offsets and commits it
 * while the caller's thread decides the next batch (cmd_commit.c).
 * librdkafka calls back into these files only from calls made here: the
 * rebalance callback from rd_kafka_consumer_poll / rd_kafka_consumer_close
 * (caller's thread), the delivery report callback from rd_kafka_poll / the
 * transaction calls (the thread using that producer, txn.c).
 *
 * The batch lives in cp->batch from the poll until it is committed or
 * abandoned: first the commands of the transaction in flight (fl_n), then
 * those decided for the next one (ndec), then those not decided yet. A
 * revocation waits for the transaction in flight and destroys the rest
 * (eager rebalancing revokes every partition, so nothing in it may be
 * processed any more).
 */
#ifndef EVL_CMDPROC_INT_H
#define EVL_CMDPROC_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <lua.h>

#include "cmdproc.h"
#include "envelope.h"
#include "kafka.h"
#include "luahost.h"
#include "metrics.h"
#include "pipeline.h"
#include "store.h"
#include "testhooks.h"
#include "txn.h"

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_CONFIG = 2 };

/* How long start-up keeps trying to reach the cluster. */
#define STARTUP_TIMEOUT_MS 60000
/* Bytes a record needs beyond key and value (headers, framing): kept free
 * under message.max.bytes. */
#define RECORD_OVERHEAD 1024
/* Deciding a batch stops after this long (the rest goes into the next
 * transaction), far below transaction.timeout.ms. */
#define DECIDE_BUDGET_MS 1000

/* Producers used in turn, one transaction each (cmd_commit.c). */
#define NPRODUCERS 2

typedef struct agtype {
    char *type;
    char commands[256], events[256], state[256], results[256];
    int partitions;
    /* topic handles of events, state, results, per producer */
    rd_kafka_topic_t *rkt[3][NPRODUCERS];
    /* evlua_commands_total by outcome (OUTCOME_*), evlua_events_total */
    evl_metric *outcomes[4], *events_total;
    /* counts of the batch being decided, and of the transaction in
     * flight; added to the metrics on commit */
    long long pending[4], pending_events;
    long long fl_pending[4], fl_pending_events;
} agtype;

enum { OUTCOME_ACCEPTED, OUTCOME_REJECTED, OUTCOME_FAILED, OUTCOME_DUPLICATE };
extern const char *const cmd_outcome_names[4];

enum { OUT_EVENTS = 0, OUT_STATE = 1, OUT_RESULTS = 2 };

/* A record to produce in the write phase. Offsets point into cp->arena,
 * which may move while the batch is decided (and which becomes
 * cp->fl_arena, untouched, while its transaction is in flight). */
typedef struct outmsg {
    agtype *t;
    int kind; /* OUT_EVENTS, OUT_STATE, OUT_RESULTS */
    int32_t partition;
    const char *agtype;
    size_t key, keylen, val, vallen;
    size_t evtype;      /* NUL-terminated event type, or SIZE_MAX */
    const char *status; /* results: the status header */
} outmsg;

struct cmdproc;

/* The committer thread: sends the offsets of the transaction in flight and
 * commits it (cmd_commit.c). Fields under mu. */
typedef struct committer {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, has_job, done, quit;
    struct cmdproc *cp;
    int producer;
    rd_kafka_topic_partition_list_t *offsets;
    rd_kafka_consumer_group_metadata_t *cgmd;
    evl_txn_step result;
    long long send_offsets_ms, commit_ms;
    int fail; /* evl_testhooks_fail_in_flight: this one fails */
} committer;

typedef struct cmdproc {
    const evl_config *cfg;
    evl_luahost *host;
    evl_pipeline pl; /* the loop's state: readiness, SIGHUP, partition wait */

    agtype *types;
    size_t ntypes;

    /* the producers, used in turn (cmd_commit.c), each with its
     * transaction's state (txn.h) */
    evl_txn txn[NPRODUCERS];
    rd_kafka_t *consumer, *restorer;
    rd_kafka_queue_t *cq; /* the consumer's queue: the committer wakes it */
    int cur;              /* the producer of the next transaction */
    size_t max_message;   /* message.max.bytes of the producers */
    evl_store *store;
    lua_State *L; /* scratch state for parsing commands */

    rd_kafka_message_t **batch;
    size_t nbatch, capbatch;

    evl_buf arena;
    outmsg *out;
    size_t nout, capout;
    size_t *event_ids; /* offsets of this command's event ids */
    size_t capids;
    evl_luahost_decision dec;
    evl_command cmd;

    /* the transaction in flight: its records (swapped with arena and out
     * when it starts), commands (the first fl_n of the batch), producer,
     * and times for the debug log */
    evl_buf fl_arena;
    outmsg *fl_out;
    size_t fl_nout, fl_capout;
    size_t fl_n;
    int inflight, fl_producer;
    long long fl_t0, fl_t1, fl_tb, fl_t2, fl_t3, fl_wait, fl_collect;
    committer cm;
    size_t ndec;      /* commands decided for the next transaction */
    long long dec_t0; /* when deciding them began */
    unsigned revokes; /* revocations so far (they reset the batch) */

    int in_txn;     /* a transaction begun by this thread, not yet handed on */
    int fatal;      /* a fatal error seen in a callback */
    int lost;       /* a producer fenced by its own transaction's timeout
                     * needs rebuilding (txn.h, cmdproc.c's recover) */
    long txn_count; /* transactions begun, for the test hooks */
    evl_testhooks hooks; /* testhooks.h; all off in production builds */
    unsigned backoff_ms;

    /* totals for the log (committed transactions only) */
    long long n_accepted, n_rejected, n_failed, n_duplicate, n_events;
    /* evlua_command_transactions_total{outcome}, batch duration, ... */
    evl_metric *m_committed, *m_aborted, *m_batch_seconds, *m_batch_size,
        *m_txn_seconds, *m_lua_seconds, *m_lua_memory;
    evl_metric *m_store_bytes, *m_store_aggs; /* see cmd_store_gauges */
    double lua_s; /* handler time of the batch being decided */
} cmdproc;

static inline double cmd_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void cmd_sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- cmdproc.c: the batch, gauges ------------------------------------- */

/* evlua_store_bytes and evlua_store_aggregates: what the store holds,
 * after each commit, restore and drop (an O(partitions) sum). */
void cmd_store_gauges(cmdproc *cp);
/* Destroy the batch's messages. */
void cmd_batch_clear(cmdproc *cp);
/* A message from the consumer: a command joins the batch (1); an error is
 * logged (a fatal one sets cp->fatal) and dropped (0). */
int cmd_batch_take(cmdproc *cp, rd_kafka_message_t *m);
/* First (rewind = 1) or next (rewind = 0) offset per partition of the
 * first n messages of the batch. Returns owned; NULL when n is 0. */
rd_kafka_topic_partition_list_t *cmd_batch_offsets(cmdproc *cp, int rewind,
                                                   size_t n);

/* ---- cmd_topics.c ----------------------------------------------------- */

/* The types of host's aggregates, their topic names and metrics. */
void cmd_types_from_host(const evl_config *cfg, const evl_luahost *host,
                         agtype **out, size_t *n);
/* Free cp->types (topic handles first: before their producers). */
void cmd_types_free(cmdproc *cp);
agtype *cmd_type_by_commands(cmdproc *cp, const char *topic);
agtype *cmd_type_by_state(cmdproc *cp, const char *topic);
/* Check (and create, when configured) the topics of the n types ts, and
 * open their handles. Returns EVL_OK, EVL_EPERMANENT for a configuration
 * problem, EVL_ETRANSIENT when the cluster could not be reached. */
evl_err cmd_ensure_all(cmdproc *cp, agtype *ts, size_t n, char *err,
                       size_t errlen);
/* Open the topic handles of t for producer j. */
void cmd_topics_open(cmdproc *cp, agtype *t, int j);
/* Close those of producer j for every type. */
void cmd_topics_close(cmdproc *cp, int j);
/* Subscribe the consumer to the commands topics of cp->types. */
evl_err cmd_subscribe(cmdproc *cp, char *err, size_t errlen);

/* ---- cmd_restore.c ---------------------------------------------------- */

/* Take parts (commands partitions) for consumer rk: their committed
 * offsets, then their states into the store, then assign them. */
void cmd_take_partitions(cmdproc *cp, rd_kafka_t *rk,
                         const rd_kafka_topic_partition_list_t *parts);
void cmd_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t rerr,
                      rd_kafka_topic_partition_list_t *parts, void *opaque);
int cmd_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque);

/* ---- cmd_decide.c ----------------------------------------------------- */

/* Decide the batch's commands not decided yet, until cmd_decided_enough. */
void cmd_decide_more(cmdproc *cp);
/* Is the next transaction's batch decided as far as it may go:
 * batch_size commands, or DECIDE_BUDGET_MS spent deciding it? */
int cmd_decided_enough(const cmdproc *cp);
/* Queue one snapshot per aggregate the batch touched. */
void cmd_queue_snapshots(cmdproc *cp);
/* Reuse b for the next transaction's records (free it when it grew big). */
void cmd_arena_release(evl_buf *b);

/* ---- cmd_commit.c ----------------------------------------------------- */

int cmd_committer_start(cmdproc *cp);
void cmd_committer_stop(cmdproc *cp);
/* Has the transaction in flight finished? Waits up to ms (-1: for ever). */
int cmd_committer_wait(cmdproc *cp, int ms);
/* Begin the decided batch's transaction, produce its records, and hand it
 * to the committer. Returns 0, or 1 on a fatal error. */
int cmd_launch(cmdproc *cp, long long waited);
/* Wait for the transaction in flight and settle it (see cmd_commit.c).
 * Returns 0, or 1 on a fatal error. */
int cmd_settle(cmdproc *cp, int rewind);
/* Abort the transaction this thread has open (if any): the store rolls
 * back. Sets cp->fatal when that fails. */
void cmd_abort_open(cmdproc *cp);
/* Forget the batch being decided: its records and counts (the store's
 * changes are the caller's to roll back). */
void cmd_discard_decided(cmdproc *cp);
/* Drop everything not committed: roll the store back, clear the batch,
 * forget the decided. */
void cmd_drop_uncommitted(cmdproc *cp);

#endif
