/*
 * cmdproc.c - the command processor (cmdproc.h).
 *
 * Threads: everything runs on the caller's thread but the end of each
 * Kafka transaction: a committer thread sends its offsets and commits it
 * while the caller's thread decides the next batch (see "the pipeline").
 * librdkafka calls back into this file only from calls made here: the
 * rebalance callback from rd_kafka_consumer_poll / rd_kafka_consumer_close
 * (caller's thread), the delivery report callback from rd_kafka_poll / the
 * transaction calls (the thread using that producer).
 *
 * The batch lives in cp->batch from the poll until it is committed or
 * abandoned: first the commands of the transaction in flight (fl_n), then
 * those decided for the next one (ndec), then those not decided yet. A
 * revocation waits for the transaction in flight and destroys the rest
 * (eager rebalancing revokes every partition, so nothing in it may be
 * processed any more).
 */
#include "cmdproc.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <librdkafka/rdkafka.h>

#include "envelope.h"
#include "kafka.h"
#include "lag.h"
#include "lifecycle.h"
#include "log.h"
#include "luaapi.h"
#include "metrics.h"
#include "store.h"

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_CONFIG = 2 };

/* How long start-up keeps trying to reach the cluster. */
#define STARTUP_TIMEOUT_MS 60000
/* Bytes a record needs beyond key and value (headers, framing): kept free
 * under message.max.bytes. */
#define RECORD_OVERHEAD 1024
/* Deciding a batch stops after this long (the rest goes into the next
 * transaction), far below transaction.timeout.ms. */
#define DECIDE_BUDGET_MS 1000

/* Producers used in turn, one transaction each (see "the pipeline"). */
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
static const char *const outcome_names[4] = {"accepted", "rejected", "failed",
                                             "duplicate"};

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

/* Outcome of a transaction step: go on, repeat the call, abort the
 * transaction and read the batch again, stop; or STEP_LOST: the producer
 * is fenced, but by the broker timing out its own transaction (see
 * "recovering from a timed-out transaction"), not by a newer instance. */
typedef enum step {
    STEP_OK,
    STEP_RETRY,
    STEP_ABORT,
    STEP_FATAL,
    STEP_LOST
} step;

struct cmdproc;

/* The committer thread: sends the offsets of the transaction in flight and
 * commits it (see "the pipeline"). Fields under mu. */
typedef struct committer {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, has_job, done, quit;
    struct cmdproc *cp;
    int producer;
    rd_kafka_topic_partition_list_t *offsets;
    rd_kafka_consumer_group_metadata_t *cgmd;
    step result;
    long long send_offsets_ms, commit_ms;
    int fail; /* test hook EVLUA_TEST_FAIL_IN_FLIGHT: this one fails */
} committer;

typedef struct cmdproc {
    const evl_config *cfg;
    evl_luahost *host;
    unsigned seen_hup;

    agtype *types;
    size_t ntypes;

    rd_kafka_t *producers[NPRODUCERS], *consumer, *restorer;
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

    int in_txn; /* a transaction begun by this thread, not yet handed on */
    int fatal;  /* a fatal error seen in a callback */
    /* recovering from a timed-out transaction: when each producer's last
     * transaction began (monotonic ms; written before it is handed to the
     * committer), the age at which one was found fenced by its own
     * timeout (written by the thread using that producer, read after
     * settle), and lost: a producer needs rebuilding */
    long long begun_ms[NPRODUCERS], lost_age_ms[NPRODUCERS];
    int lost;
    long txn_timeout_ms; /* the producers' transaction.timeout.ms */
    long txn_count, fail_before_commit, hang_before_commit, fail_in_flight;
    const char *hold_file; /* test hook EVLUA_TEST_HOLD_FILE */
    char delivery_error[NPRODUCERS][EVL_ERRLEN];
    unsigned backoff_ms;
    long long collect_ms; /* how long the last batch took to collect */

    /* totals for the log (committed transactions only) */
    long long n_accepted, n_rejected, n_failed, n_duplicate, n_events;
    /* evlua_command_transactions_total{outcome}, batch duration, ... */
    evl_metric *m_committed, *m_aborted, *m_batch_seconds, *m_batch_size,
        *m_txn_seconds, *m_lua_seconds, *m_lua_memory;
    evl_metric *m_store_bytes, *m_store_aggs; /* see store_gauges */
    double lua_s;        /* handler time of the batch being decided */
    evl_kafka_wait wait; /* the consumer's wait for partitions (kafka.h) */
} cmdproc;

/* evlua_store_bytes and evlua_store_aggregates: what the store holds,
 * after each commit, restore and drop (an O(partitions) sum). */
static void store_gauges(cmdproc *cp)
{
    evl_metric_set(cp->m_store_bytes,
                   (double)evl_store_bytes(cp->store, NULL, -1));
    evl_metric_set(cp->m_store_aggs,
                   (double)evl_store_count(cp->store, NULL, -1));
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- aggregate types and their topics ---------------------------------- */

static void types_free(cmdproc *cp)
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

static void types_from_host(const evl_config *cfg, const evl_luahost *host,
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
                               "outcome", outcome_names[o], NULL);
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

static agtype *type_by_commands(cmdproc *cp, const char *topic)
{
    for (size_t i = 0; i < cp->ntypes; i++)
        if (strcmp(cp->types[i].commands, topic) == 0)
            return &cp->types[i];
    return NULL;
}

static agtype *type_by_state(cmdproc *cp, const char *topic)
{
    for (size_t i = 0; i < cp->ntypes; i++)
        if (strcmp(cp->types[i].state, topic) == 0)
            return &cp->types[i];
    return NULL;
}

/* Partition count of topic, retrying while the cluster does not answer. */
static evl_err partitions_of(cmdproc *cp, const char *topic, int *count,
                             char *err, size_t errlen)
{
    long long deadline = now_ms() + STARTUP_TIMEOUT_MS;
    for (;;) {
        evl_err e = evl_kafka_partitions(cp->producers[0], topic, 10000, count,
                                         err, errlen);
        if (e != EVL_ETRANSIENT || now_ms() > deadline ||
            evl_lifecycle_stopping())
            return e;
        evl_log(EVL_LOG_WARN, "waiting for the Kafka cluster", "error", err,
                NULL);
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
        sleep_ms(100);
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
        if ((e = evl_kafka_create_topics(cp->producers[0], &spec, 1, 30000, err,
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
            if ((e = evl_kafka_create_topics(cp->producers[0], &spec, 1, 30000,
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
    for (int j = 0; j < NPRODUCERS; j++) {
        t->rkt[OUT_EVENTS][j] =
            rd_kafka_topic_new(cp->producers[j], t->events, NULL);
        t->rkt[OUT_STATE][j] =
            rd_kafka_topic_new(cp->producers[j], t->state, NULL);
        t->rkt[OUT_RESULTS][j] =
            rd_kafka_topic_new(cp->producers[j], t->results, NULL);
    }
    return EVL_OK;
}

static evl_err ensure_all(cmdproc *cp, agtype *ts, size_t n, char *err,
                          size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        evl_err e = ensure_topics(cp, &ts[i], err, errlen);
        if (e)
            return e;
    }
    return EVL_OK;
}

static evl_err subscribe(cmdproc *cp, char *err, size_t errlen)
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
    evl_kafka_wait_begin(&cp->wait);
    return EVL_OK;
}

/* ---- the batch --------------------------------------------------------- */

static void batch_clear(cmdproc *cp)
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

/* A message from the consumer: a command joins the batch (1); an error is
 * logged (a fatal one sets cp->fatal) and dropped (0). */
static int batch_take(cmdproc *cp, rd_kafka_message_t *m)
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

/* First (rewind = 1) or next (rewind = 0) offset per partition of the
 * first n messages of the batch. Returns owned; NULL when n is 0. */
static rd_kafka_topic_partition_list_t *batch_offsets(cmdproc *cp, int rewind,
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

/* ---- restoring states on assignment -------------------------------------- */

/* Read the state partitions of parts (commands-topic partitions) from the
 * beginning to their end into the store. A record the store cannot read
 * stops its partition's restore: that partition's aggregates are dropped
 * and its commands partition is added to *bad (created on first use), so
 * the caller leaves it unconsumed rather than run its aggregates from an
 * older state. Returns 0, or -1 when stopped. */
static int restore_states(cmdproc *cp,
                          const rd_kafka_topic_partition_list_t *parts,
                          rd_kafka_topic_partition_list_t **bad)
{
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new(parts->cnt);
    long long t0 = now_ms(), last_log = t0, last_pending = 0;
    long records = 0;
    int remaining, rc = 0;
    char err[EVL_ERRLEN];

    for (int i = 0; i < parts->cnt; i++) {
        agtype *t = type_by_commands(cp, parts->elems[i].topic);
        if (!t)
            continue;
        rd_kafka_topic_partition_list_add(l, t->state,
                                          parts->elems[i].partition)
            ->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    remaining = l->cnt;
    if (remaining == 0)
        goto out;
    rd_kafka_assign(cp->restorer, l);
    while (remaining > 0) {
        rd_kafka_message_t *m;
        if (evl_lifecycle_stopping()) {
            rc = -1;
            break;
        }
        if (now_ms() - last_log > 10000) {
            last_log = now_ms();
            evl_logf(EVL_LOG_INFO,
                     "restoring states: %ld records read, %d partitions to "
                     "go",
                     records, remaining);
        }
        if (!(m = rd_kafka_consumer_poll(cp->restorer, 200)))
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            const char *topic = rd_kafka_topic_name(m->rkt);
            rd_kafka_topic_partition_t *p =
                rd_kafka_topic_partition_list_find(l, topic, m->partition);
            int64_t lo = -1, hi = -1;
            rd_kafka_get_watermark_offsets(cp->restorer, topic, m->partition,
                                           &lo, &hi);
            /* read_committed stops at the last stable offset: a
             * transaction still open there (a dead owner's, until its
             * timeout; a committed one whose markers are still being
             * written) hides what follows it, possibly snapshots of a
             * later owner. The end counts only when nothing is pending. */
            if (p && p->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->offset < hi) {
                if (now_ms() - last_pending > 5000) {
                    char at[64];
                    last_pending = now_ms();
                    snprintf(at, sizeof at, "%s[%d] at %lld of %lld", topic,
                             (int)m->partition, (long long)m->offset,
                             (long long)hi);
                    evl_log(EVL_LOG_INFO,
                            "restoring states: waiting for a pending "
                            "transaction on a state partition",
                            "partition", at, NULL);
                }
            } else if (p && p->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                p->err = RD_KAFKA_RESP_ERR__PARTITION_EOF; /* done */
                remaining--;
            }
        } else if (m->err) {
            evl_log(EVL_LOG_WARN, "reading a state topic failed; retrying",
                    "error", rd_kafka_message_errstr(m), NULL);
        } else {
            agtype *t = type_by_state(cp, rd_kafka_topic_name(m->rkt));
            rd_kafka_topic_partition_t *p =
                t ? rd_kafka_topic_partition_list_find(l, t->state,
                                                       m->partition)
                  : NULL;
            if (p && p->err == RD_KAFKA_RESP_ERR_NO_ERROR &&
                evl_store_restore(cp->store, t->type, m->partition, m->key,
                                  m->key_len, m->payload,
                                  m->payload ? m->len : 0, err,
                                  sizeof err) != EVL_OK) {
                char at[320], off[32];
                snprintf(at, sizeof at, "%s[%d]", t->state, (int)m->partition);
                snprintf(off, sizeof off, "%lld", (long long)m->offset);
                evl_log(EVL_LOG_ERROR,
                        "unreadable state record: this partition's commands "
                        "are not processed until it is fixed (produce a "
                        "valid snapshot or a tombstone for the key, then "
                        "restart)",
                        "partition", at, "offset", off, "error", err, NULL);
                p->err = RD_KAFKA_RESP_ERR__BAD_MSG; /* done, and bad */
                remaining--;
                evl_store_drop(cp->store, t->type, m->partition);
                if (!*bad)
                    *bad = rd_kafka_topic_partition_list_new(1);
                rd_kafka_topic_partition_list_add(*bad, t->commands,
                                                  m->partition);
            }
            records++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(cp->restorer, NULL);
    if (rc == 0) {
        char ms[32], nrec[32], naggs[32];
        snprintf(ms, sizeof ms, "%lld", now_ms() - t0);
        snprintf(nrec, sizeof nrec, "%ld", records);
        snprintf(naggs, sizeof naggs, "%zu",
                 evl_store_count(cp->store, NULL, -1));
        evl_log(EVL_LOG_INFO, "states restored", "records", nrec, "aggregates",
                naggs, "ms", ms, NULL);
    }
out:
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

/* The committed offsets of parts, once no transaction is pending on them
 * (require_stable: librdkafka asks so under read_committed). */
static rd_kafka_topic_partition_list_t *
committed_offsets(cmdproc *cp, const rd_kafka_topic_partition_list_t *parts)
{
    for (int attempt = 0;; attempt++) {
        rd_kafka_topic_partition_list_t *l =
            rd_kafka_topic_partition_list_copy(parts);
        rd_kafka_resp_err_t rerr = rd_kafka_committed(cp->consumer, l, 10000);
        int unstable = 0;
        for (int i = 0; !rerr && i < l->cnt; i++)
            if (l->elems[i].err == RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT)
                unstable = 1;
        if (!rerr && !unstable)
            return l;
        rd_kafka_topic_partition_list_destroy(l);
        if (evl_lifecycle_stopping())
            return NULL;
        if (attempt % 25 == 0) /* every 5 s */
            evl_log(EVL_LOG_WARN, "waiting for the committed offsets", "error",
                    rerr ? rd_kafka_err2str(rerr)
                         : "a transaction of the previous owner is still "
                           "pending (it ends by its commit, abort or "
                           "transaction.timeout.ms)",
                    NULL);
        sleep_ms(200);
    }
}

static void abort_open_txn(cmdproc *cp);
static int settle(cmdproc *cp, int rewind);
static void discard_decided(cmdproc *cp);

static void log_partitions(const char *msg,
                           const rd_kafka_topic_partition_list_t *parts)
{
    char list[1024];
    size_t len = 0;
    list[0] = '\0';
    for (int i = 0; i < parts->cnt && len < sizeof list - 64; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s[%d]",
                                i ? "," : "", parts->elems[i].topic,
                                (int)parts->elems[i].partition);
    evl_log(EVL_LOG_INFO, msg, "partitions", list, NULL);
}

/* Take parts (commands partitions) for consumer rk: their committed
 * offsets, then their states into the store (empty for them), then assign
 * them from those offsets. From the rebalance callback, and from recover()
 * for the partitions the consumer still holds. */
static void take_partitions(cmdproc *cp, rd_kafka_t *rk,
                            const rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_topic_partition_list_t *offsets;
    evl_metrics_ready("commands", 0, "restoring states");
    /* offsets first: once they are stable, no earlier owner's
     * transaction can still add to the state topic */
    rd_kafka_topic_partition_list_t *bad = NULL;
    offsets = committed_offsets(cp, parts);
    if (!offsets || restore_states(cp, parts, &bad) != 0) {
        if (offsets)
            rd_kafka_topic_partition_list_destroy(offsets);
        if (bad)
            rd_kafka_topic_partition_list_destroy(bad);
        evl_store_drop(cp->store, NULL, -1);
        rd_kafka_assign(rk, NULL); /* stopping: consume nothing */
        return;
    }
    if (bad) { /* held, but not consumed: see restore_states */
        char why[600];
        size_t len = (size_t)snprintf(why, sizeof why,
                                      "unreadable state record; not "
                                      "consuming");
        for (int i = 0; i < bad->cnt; i++) {
            rd_kafka_topic_partition_list_del(offsets, bad->elems[i].topic,
                                              bad->elems[i].partition);
            if (len < sizeof why - 1)
                len += (size_t)snprintf(why + len, sizeof why - len, " %s[%d]",
                                        bad->elems[i].topic,
                                        (int)bad->elems[i].partition);
        }
        rd_kafka_assign(rk, offsets);
        evl_metrics_ready("commands", 0, why);
        rd_kafka_topic_partition_list_destroy(bad);
    } else {
        rd_kafka_assign(rk, offsets);
        evl_metrics_ready("commands", 1, NULL);
    }
    rd_kafka_topic_partition_list_destroy(offsets);
    store_gauges(cp);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t rerr,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    cmdproc *cp = opaque;
    evl_lag_held(cp->cfg->cmd.group_id, rk,
                 rerr == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? parts->cnt : 0);
    if (rerr == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        evl_kafka_wait_end(&cp->wait);
        log_partitions("partitions assigned", parts);
        take_partitions(cp, rk, parts);
        return;
    }
    evl_metrics_ready("commands", 0, "rebalancing: partitions revoked");
    evl_kafka_wait_begin(&cp->wait);
    if (rerr == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        log_partitions("partitions revoked", parts);
    else
        evl_log(EVL_LOG_WARN, "rebalance error", "error",
                rd_kafka_err2str(rerr), NULL);
    /* the transaction in flight ends first (its commit or abort); what was
     * decided after it is dropped unbegun */
    cp->revokes++;
    settle(cp, 0);
    abort_open_txn(cp);
    batch_clear(cp);
    discard_decided(cp);
    evl_store_drop(cp->store, NULL, -1);
    store_gauges(cp);
    rd_kafka_assign(rk, NULL);
}

/* librdkafka's statistics callback, used as a clock only: it runs from
 * rd_kafka_consumer_poll every statistics.interval.ms, also while the
 * consumer waits for an assignment, and says why it waits (kafka.h). */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    cmdproc *cp = opaque;
    (void)json;
    (void)len;
    evl_kafka_wait_check(&cp->wait, rk, cp->cfg->cmd.group_id);
    return 0; /* librdkafka frees json */
}

/* ---- deciding one command -------------------------------------------- */

/* The records of a batch are built in an evl_buf that is reused (len = 0)
 * from one transaction to the next. One that grew past ARENA_KEEP (a
 * batch of large events or snapshots) is freed instead, once its
 * transaction committed, so a burst does not pin its high-water mark for
 * the rest of the process. */
#define ARENA_KEEP (4u << 20)

static void arena_release(evl_buf *b)
{
    if (b->cap > ARENA_KEEP)
        evl_buf_free(b);
    b->len = 0;
}

static size_t arena_put(cmdproc *cp, const void *p, size_t n)
{
    size_t off = cp->arena.len;
    evl_buf_put(&cp->arena, p, n);
    return off;
}

static size_t arena_str(cmdproc *cp, const char *s)
{
    size_t off = arena_put(cp, s, strlen(s));
    evl_buf_putc(&cp->arena, '\0');
    return off;
}

static outmsg *out_new(cmdproc *cp)
{
    outmsg *o;
    if (cp->nout == cp->capout) {
        cp->capout = cp->capout ? 2 * cp->capout : 1024;
        cp->out = evl_xrealloc(cp->out, sizeof *cp->out * cp->capout);
    }
    o = &cp->out[cp->nout++];
    memset(o, 0, sizeof *o);
    o->evtype = SIZE_MAX;
    return o;
}

/* Queue the result of the command in rkm. ids: offsets of event ids in
 * the arena. */
static void queue_result(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                         const char *status, const char *aggregate_id,
                         long long version, const size_t *ids, size_t nids,
                         const char *error)
{
    const char *evs[64];
    const char **ev = nids <= 64 ? evs : evl_xmalloc(sizeof *ev * nids);
    outmsg *o;
    evl_envelope_result_in r;

    for (size_t i = 0; i < nids; i++)
        ev[i] = cp->arena.data + ids[i];
    r = (evl_envelope_result_in){cp->cmd.id, status, aggregate_id, version,
                                 ev,         nids,   error};
    /* build in a scratch buffer (the arena is where ev points into) */
    evl_buf tmp = {0};
    evl_envelope_result(&tmp, &r);
    if (ev != evs)
        free(ev);

    o = out_new(cp);
    o->t = t;
    o->kind = OUT_RESULTS;
    o->partition = rkm->partition;
    o->agtype = t->type;
    o->status = status;
    if (aggregate_id) {
        o->keylen = strlen(aggregate_id);
        o->key = arena_put(cp, aggregate_id, o->keylen);
    } else if (rkm->key) {
        o->keylen = rkm->key_len;
        o->key = arena_put(cp, rkm->key, rkm->key_len);
    } else {
        o->key = SIZE_MAX;
    }
    o->vallen = tmp.len;
    o->val = arena_put(cp, tmp.data, tmp.len);
    evl_buf_free(&tmp);

    for (int k = 0; k < 4; k++)
        if (strcmp(status, outcome_names[k]) == 0)
            t->pending[k]++;
}

static void reject(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                   long long version, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

static void reject(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                   long long version, const char *fmt, ...)
{
    char msg[EVL_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    queue_result(cp, t, rkm, "rejected", cp->cmd.aggregate_id, version, NULL, 0,
                 msg);
}

static void fail(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                 long long version, const char *msg)
{
    evl_log(EVL_LOG_WARN, "command failed", "aggregate_type", t->type,
            "aggregate_id", cp->cmd.aggregate_id, "command_id", cp->cmd.id,
            "error", msg, NULL);
    queue_result(cp, t, rkm, "failed", cp->cmd.aggregate_id, version, NULL, 0,
                 msg);
}

/* Would a snapshot of this state (plus ids) fit in a record? */
static size_t snapshot_estimate(const evl_store_agg *a, size_t state_len,
                                int dedup)
{
    return state_len + (size_t)dedup * (EVL_ENVELOPE_MAX_ID * 2 + 3) + 4096 +
           (a ? strlen(evl_store_id(a)) : 0);
}

static void decide(cmdproc *cp, const rd_kafka_message_t *rkm)
{
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    agtype *t = type_by_commands(cp, topic);
    evl_command *c = &cp->cmd;
    char err[EVL_ERRLEN], memerr[EVL_ERRLEN];
    int host_full = 0;
    evl_store_agg *a;
    long long version;
    const char *state;
    size_t state_len;
    int32_t home;

    if (!t) { /* cannot happen: we subscribe only to our topics */
        evl_log(EVL_LOG_ERROR, "a message from an unknown topic", "topic",
                topic, NULL);
        return;
    }
    /* decoded once, in the host's state, for the checks here and for
     * handle below */
    switch (evl_luahost_parse_command(
        cp->host, rkm->payload ? rkm->payload : "", rkm->payload ? rkm->len : 0,
        c, err, sizeof err)) {
    case EVL_LUAHOST_ACCEPTED: break;
    case EVL_LUAHOST_REJECTED: reject(cp, t, rkm, -1, "%s", err); return;
    case EVL_LUAHOST_FAILED:
        /* the decoded command does not fit the host's memory limit: read
         * it in the scratch state for the checks below; deciding it then
         * fails, with the aggregate's version */
        snprintf(memerr, sizeof memerr, "%s", err);
        host_full = 1;
        if (evl_envelope_parse_command(cp->L, rkm->payload ? rkm->payload : "",
                                       rkm->payload ? rkm->len : 0, c, err,
                                       sizeof err) != EVL_OK) {
            reject(cp, t, rkm, -1, "%s", err);
            return;
        }
        break;
    }
    if (c->aggregate_type && strcmp(c->aggregate_type, t->type) != 0) {
        if (evl_luahost_aggregate_get(cp->host, c->aggregate_type))
            reject(cp, t, rkm, -1,
                   "a command for aggregate type %s arrived on %s (send it "
                   "to the commands topic of %s)",
                   c->aggregate_type, topic, c->aggregate_type);
        else
            reject(cp, t, rkm, -1, "unknown aggregate type %s",
                   c->aggregate_type);
        return;
    }
    if (!rkm->key) {
        reject(cp, t, rkm, -1,
               "the command has no Kafka key: key commands by their "
               "aggregate_id");
        return;
    }
    if (rkm->key_len != strlen(c->aggregate_id) ||
        memcmp(rkm->key, c->aggregate_id, rkm->key_len) != 0) {
        reject(cp, t, rkm, -1,
               "the command's Kafka key differs from its aggregate_id %s: "
               "key commands by their aggregate_id",
               c->aggregate_id);
        return;
    }
    home = evl_kafka_murmur2_partition(rkm->key, rkm->key_len, t->partitions);
    if (home != rkm->partition) {
        reject(cp, t, rkm, -1,
               "aggregate %s belongs to partition %d of %s (murmur2) but its "
               "command came on partition %d: produce commands with the "
               "murmur2 partitioner (Java's default; librdkafka's "
               "murmur2_random)",
               c->aggregate_id, (int)home, topic, (int)rkm->partition);
        return;
    }

    a = evl_store_get(cp->store, t->type, rkm->partition, c->aggregate_id);
    version = evl_store_version(a);
    if (evl_store_seen(a, c->id)) {
        queue_result(cp, t, rkm, "duplicate", c->aggregate_id, version, NULL, 0,
                     NULL);
        return;
    }
    if (c->has_expected_version && c->expected_version != version) {
        reject(cp, t, rkm, version,
               "expected version %lld, but aggregate %s is at version %lld",
               c->expected_version, c->aggregate_id, version);
        return;
    }

    if (host_full) {
        fail(cp, t, rkm, version, memerr);
        return;
    }
    state = evl_store_state(a, &state_len);
    evl_luahost_command lc = {
        t->type, c->aggregate_id, version, state, state_len, NULL, 0};
    double h0 = now_s();
    int verdict = evl_luahost_decide(cp->host, &lc, &cp->dec, err, sizeof err);
    cp->lua_s += now_s() - h0;
    switch (verdict) {
    case EVL_LUAHOST_REJECTED: reject(cp, t, rkm, version, "%s", err); return;
    case EVL_LUAHOST_FAILED: fail(cp, t, rkm, version, err); return;
    case EVL_LUAHOST_ACCEPTED: break;
    }

    /* Envelopes. All or nothing: check sizes before queueing anything. */
    size_t n = cp->dec.nevents, first_out = cp->nout,
           arena_mark = cp->arena.len;
    char occurred_at[25];
    const char *correlation = c->correlation_id ? c->correlation_id : c->id;
    evl_luaapi_now(occurred_at);
    if (n > cp->capids) {
        cp->capids = n;
        cp->event_ids = evl_xrealloc(cp->event_ids, sizeof(size_t) * n);
    }
    if (snapshot_estimate(a, cp->dec.state_len, cp->cfg->cmd.dedup_ids) >
        cp->max_message) {
        char msg[EVL_ERRLEN];
        snprintf(msg, sizeof msg,
                 "the state of aggregate %s after this command is %zu bytes: "
                 "its snapshot would not fit message.max.bytes (%zu)",
                 c->aggregate_id, cp->dec.state_len, cp->max_message);
        fail(cp, t, rkm, version, msg);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const evl_luahost_event *ev = &cp->dec.events[i];
        char id[37];
        evl_buf tmp = {0};
        if (evl_luaapi_uuid7(id) != 0) {
            /* getrandom failing is not something to go on with */
            evl_log(EVL_LOG_ERROR, "cannot generate an event id", NULL);
            abort();
        }
        evl_envelope_event_in in = {
            id,          ev->type,        ev->version,
            t->type,     c->aggregate_id, version + (long long)i + 1,
            occurred_at, c->id,           correlation,
            c->user_id,  ev->data,        ev->data_len};
        evl_envelope_event(&tmp, &in);
        if (tmp.len + strlen(c->aggregate_id) + RECORD_OVERHEAD >
            cp->max_message) {
            char msg[EVL_ERRLEN];
            snprintf(msg, sizeof msg,
                     "event %zu (%s) is %zu bytes: more than "
                     "message.max.bytes (%zu) allows",
                     i + 1, ev->type, tmp.len, cp->max_message);
            evl_buf_free(&tmp);
            cp->nout = first_out;
            cp->arena.len = arena_mark;
            fail(cp, t, rkm, version, msg);
            return;
        }
        outmsg *o = out_new(cp);
        o->t = t;
        o->kind = OUT_EVENTS;
        o->partition = rkm->partition;
        o->agtype = t->type;
        o->keylen = strlen(c->aggregate_id);
        o->key = arena_put(cp, c->aggregate_id, o->keylen);
        o->vallen = tmp.len;
        o->val = arena_put(cp, tmp.data, tmp.len);
        o->evtype = arena_str(cp, ev->type);
        cp->event_ids[i] = arena_str(cp, id);
        evl_buf_free(&tmp);
    }
    evl_store_put(cp->store, t->type, rkm->partition, c->aggregate_id,
                  cp->dec.state, cp->dec.state_len, version + (long long)n,
                  c->id);
    t->pending_events += (long long)n;
    queue_result(cp, t, rkm, "accepted", c->aggregate_id,
                 version + (long long)n, cp->event_ids, n, NULL);
}

/* Queue one snapshot per aggregate the batch touched. */
static void queue_snapshots(cmdproc *cp)
{
    size_t n = evl_store_ntouched(cp->store);
    for (size_t i = 0; i < n; i++) {
        const char *type;
        int32_t partition;
        const evl_store_agg *a =
            evl_store_touched(cp->store, i, &type, &partition);
        agtype *t = NULL;
        for (size_t k = 0; k < cp->ntypes; k++)
            if (strcmp(cp->types[k].type, type) == 0)
                t = &cp->types[k];
        if (!t)
            continue;
        outmsg *o = out_new(cp);
        o->t = t;
        o->kind = OUT_STATE;
        o->partition = partition;
        o->agtype = t->type;
        o->keylen = strlen(evl_store_id(a));
        o->key = arena_put(cp, evl_store_id(a), o->keylen);
        o->val = cp->arena.len;
        evl_store_snapshot(a, type, &cp->arena);
        o->vallen = cp->arena.len - o->val;
    }
}

/* ---- recovering from a timed-out transaction ----------------------------
 *
 * A producer cut off from the broker (a network partition, or the process
 * stalled) for longer than transaction.timeout.ms finds, when it comes
 * back, that the transaction coordinator has aborted its open transaction
 * and bumped its epoch. Its next call is answered PRODUCER_FENCED or
 * INVALID_PRODUCER_EPOCH, which librdkafka turns into the fatal _FENCED,
 * "fenced by a newer instance": the same error, and the same text, as
 * when another process with our transactional.id called
 * init_transactions. Neither the error code nor its string tells the two
 * apart (librdkafka 2.0.2 normalizes both; no API shows the epoch).
 *
 * What does: the coordinator aborts a transaction for its timeout only
 * once it has been open longer than transaction.timeout.ms, counted from
 * its first AddPartitionsToTxn, which comes after our begin_transaction.
 * So a transaction fenced while younger than the timeout was fenced by a
 * newer instance: exit 1, as before. One fenced when older was (or may
 * have been) timed out; evlua's own transactions last milliseconds (a
 * batch is decided before it begins), so an old one means we were cut
 * off or stalled. Then, like Kafka Streams on a lost task: drop the
 * producer, build it again with the same transactional.id
 * (init_transactions bumps the epoch once more), drop the store, restore
 * the states of the partitions the consumer holds (or gets back after a
 * rebalance) from the committed offsets, and go on.
 *
 * The one case this reads wrongly: a second process started with our
 * transactional.id while this one was cut off. This one's rebuilt
 * producer then fences it, and it exits 1 (its transaction is young):
 * one survives and exactly-once holds, but not necessarily the newer. */

/* The age (ms) of producer j's transaction when j was fenced by the broker
 * timing it out; 0 when j is not fenced, or when its transaction is too
 * young for a timeout (so another instance fenced it: logged). */
static long long own_timeout(cmdproc *cp, int j)
{
    char reason[512], age_s[32], timeout_s[32];
    long long age;
    if (rd_kafka_fatal_error(cp->producers[j], reason, sizeof reason) !=
            RD_KAFKA_RESP_ERR__FENCED ||
        cp->begun_ms[j] == 0)
        return 0;
    age = now_ms() - cp->begun_ms[j];
    if (age > cp->txn_timeout_ms)
        return age;
    snprintf(age_s, sizeof age_s, "%lld", age);
    snprintf(timeout_s, sizeof timeout_s, "%ld", cp->txn_timeout_ms);
    evl_log(EVL_LOG_ERROR,
            "producer fenced while its transaction was younger than "
            "transaction.timeout.ms, so not by its timeout: another process "
            "uses this transactional.id",
            "client", rd_kafka_name(cp->producers[j]), "transaction_age_ms",
            age_s, "transaction_timeout_ms", timeout_s, NULL);
    return 0;
}

/* ---- the transaction ----------------------------------------------------- */

/* Runs on the thread using rk (no two threads use one producer at once),
 * so each producer has its own error slot. */
static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                      void *opaque)
{
    cmdproc *cp = opaque;
    int j = 0;
    while (j < NPRODUCERS - 1 && cp->producers[j] != rk)
        j++;
    if (rkm->err && cp->delivery_error[j][0] == '\0')
        snprintf(cp->delivery_error[j], sizeof cp->delivery_error[j],
                 "delivery to %s[%d] failed: %s", rd_kafka_topic_name(rkm->rkt),
                 (int)rkm->partition, rd_kafka_err2str(rkm->err));
}

static step produce_one(cmdproc *cp, const outmsg *o)
{
    const char *b = cp->arena.data;
    rd_kafka_t *rk = cp->producers[cp->cur];
    rd_kafka_topic_t *rkt = o->t->rkt[o->kind][cp->cur];
    for (;;) {
        rd_kafka_resp_err_t rerr;
        const char *key = o->key == SIZE_MAX ? NULL : b + o->key;
        size_t keylen = o->key == SIZE_MAX ? 0 : o->keylen;
        if (o->evtype != SIZE_MAX)
            rerr = rd_kafka_producev(
                rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(o->partition),
                RD_KAFKA_V_KEY(key, keylen),
                RD_KAFKA_V_VALUE((void *)(b + o->val), o->vallen),
                RD_KAFKA_V_MSGFLAGS(0),
                RD_KAFKA_V_HEADER("evlua-type", b + o->evtype, -1),
                RD_KAFKA_V_HEADER("evlua-aggregate-type", o->agtype, -1),
                RD_KAFKA_V_HEADER("content-type", "application/json", -1),
                RD_KAFKA_V_END);
        else if (o->status)
            rerr = rd_kafka_producev(
                rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(o->partition),
                RD_KAFKA_V_KEY(key, keylen),
                RD_KAFKA_V_VALUE((void *)(b + o->val), o->vallen),
                RD_KAFKA_V_MSGFLAGS(0),
                RD_KAFKA_V_HEADER("evlua-status", o->status, -1),
                RD_KAFKA_V_HEADER("evlua-aggregate-type", o->agtype, -1),
                RD_KAFKA_V_HEADER("content-type", "application/json", -1),
                RD_KAFKA_V_END);
        else
            rerr = rd_kafka_producev(
                rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(o->partition),
                RD_KAFKA_V_KEY(key, keylen),
                RD_KAFKA_V_VALUE((void *)(b + o->val), o->vallen),
                RD_KAFKA_V_MSGFLAGS(0),
                RD_KAFKA_V_HEADER("evlua-aggregate-type", o->agtype, -1),
                RD_KAFKA_V_HEADER("content-type", "application/json", -1),
                RD_KAFKA_V_END);
        if (rerr == RD_KAFKA_RESP_ERR_NO_ERROR)
            return STEP_OK;
        if (rerr == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(rk, 10);
            continue;
        }
        if (rerr == RD_KAFKA_RESP_ERR__FATAL) {
            char reason[512];
            long long age = own_timeout(cp, cp->cur);
            if (age > 0) {
                cp->lost_age_ms[cp->cur] = age;
                return STEP_LOST;
            }
            rd_kafka_fatal_error(rk, reason, sizeof reason);
            evl_log(EVL_LOG_ERROR, "producer fatal error", "error", reason,
                    NULL);
            return STEP_FATAL;
        }
        evl_log(EVL_LOG_WARN, "rd_kafka_producev failed; aborting the batch",
                "topic", rd_kafka_topic_name(rkt), "error",
                rd_kafka_err2str(rerr), NULL);
        return STEP_ABORT;
    }
}

/* Run a transaction call of producer j: retry while retriable; map the
 * rest. */
static step txn_call(cmdproc *cp, int j, const char *call,
                     rd_kafka_error_t *error)
{
    char err[EVL_ERRLEN];
    evl_err e = evl_kafka_error(error, call, err, sizeof err);
    switch (e) {
    case EVL_OK: return STEP_OK;
    case EVL_EPERMANENT:
        evl_log(EVL_LOG_WARN, "transaction needs an abort", "error", err,
                "delivery",
                cp->delivery_error[j][0] ? cp->delivery_error[j] : NULL, NULL);
        return STEP_ABORT;
    case EVL_ETRANSIENT:
        evl_log(EVL_LOG_WARN, "retrying a transaction call", "error", err,
                NULL);
        sleep_ms(100);
        return STEP_RETRY;
    case EVL_EFATAL: break;
    }
    long long age = own_timeout(cp, j);
    if (age > 0) {
        char a[32];
        snprintf(a, sizeof a, "%lld", age);
        cp->lost_age_ms[j] = age;
        evl_log(EVL_LOG_WARN,
                "producer fenced after the broker timed out its transaction "
                "(not by another instance): it will be rebuilt",
                "error", err, "transaction_age_ms", a, NULL);
        return STEP_LOST;
    }
    evl_log(EVL_LOG_ERROR, "transaction failed fatally", "error", err, NULL);
    return STEP_FATAL;
}

/* Abort producer j's transaction. Sets cp->fatal when that fails (cp->lost
 * when j is fenced by its own transaction's timeout). */
static void abort_txn(cmdproc *cp, int j)
{
    for (;;) {
        step s = txn_call(cp, j, "rd_kafka_abort_transaction",
                          rd_kafka_abort_transaction(cp->producers[j], -1));
        if (s == STEP_RETRY)
            continue;
        if (s == STEP_LOST)
            cp->lost = 1;
        else if (s != STEP_OK)
            cp->fatal = 1;
        break;
    }
}

/* Abort the transaction this thread has open (if any): the store rolls
 * back. Sets cp->fatal when that fails. */
static void abort_open_txn(cmdproc *cp)
{
    if (!cp->in_txn)
        return;
    abort_txn(cp, cp->cur);
    cp->in_txn = 0;
    cp->cur = (cp->cur + 1) % NPRODUCERS; /* see "the pipeline" */
    evl_store_rollback(cp->store);
}

/* Forget the batch being decided: its records and counts (the store's
 * changes are the caller's to roll back). */
static void counts_settle(cmdproc *cp, int committed, int inflight);
static void discard_decided(cmdproc *cp)
{
    counts_settle(cp, 0, 0);
    cp->arena.len = 0;
    cp->nout = 0;
    cp->ndec = 0;
}

/* Abort, roll the store back, seek the consumer back to the batch. */
static void abort_and_rewind(cmdproc *cp)
{
    rd_kafka_topic_partition_list_t *first = batch_offsets(cp, 1, cp->nbatch);
    abort_open_txn(cp);
    evl_store_rollback(cp->store);
    if (first) {
        rd_kafka_error_t *error =
            rd_kafka_seek_partitions(cp->consumer, first, 10000);
        if (error) {
            evl_log(EVL_LOG_WARN, "seeking back failed", "error",
                    rd_kafka_error_string(error), NULL);
            rd_kafka_error_destroy(error);
        }
        rd_kafka_topic_partition_list_destroy(first);
    }
    batch_clear(cp);
    discard_decided(cp);
    evl_log(EVL_LOG_WARN, "batch aborted; it will be read again", NULL);
    sleep_ms(cp->backoff_ms);
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

/* ---- the pipeline --------------------------------------------------------
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

static void *committer_main(void *arg)
{
    committer *c = arg;
    cmdproc *cp = c->cp;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->has_job && !c->quit)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->quit)
            break;
        int j = c->producer;
        pthread_mutex_unlock(&c->mu);

        long long t0 = now_ms(), t1;
        step s;
        do {
            s = txn_call(cp, j, "rd_kafka_send_offsets_to_transaction",
                         rd_kafka_send_offsets_to_transaction(
                             cp->producers[j], c->offsets, c->cgmd, -1));
        } while (s == STEP_RETRY);
        t1 = now_ms();
        if (s == STEP_OK && c->fail) {
            /* the records are in the log; the next batch gets time to be
             * decided on top of this one, then this one fails */
            rd_kafka_flush(cp->producers[j], 30000);
            sleep_ms(1500);
            evl_log(EVL_LOG_WARN,
                    "test hook EVLUA_TEST_FAIL_IN_FLIGHT: failing the "
                    "transaction in flight",
                    NULL);
            s = STEP_ABORT;
        }
        while (s == STEP_OK || s == STEP_RETRY) {
            s = txn_call(cp, j, "rd_kafka_commit_transaction",
                         rd_kafka_commit_transaction(cp->producers[j], -1));
            if (s == STEP_OK)
                break;
        }

        pthread_mutex_lock(&c->mu);
        c->result = s;
        c->send_offsets_ms = t1 - t0;
        c->commit_ms = now_ms() - t1;
        c->has_job = 0;
        c->done = 1;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        /* the processing thread may be waiting in rd_kafka_consumer_poll
         * (the flag stays until a poll sees it: no lost wake-up) */
        rd_kafka_queue_yield(cp->cq);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static int committer_start(cmdproc *cp)
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

static void committer_stop(cmdproc *cp)
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
static int committer_wait(cmdproc *cp, int ms)
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

/* Is the next transaction's batch decided as far as it may go:
 * batch_size commands, or DECIDE_BUDGET_MS spent deciding it? */
static int decided_enough(const cmdproc *cp)
{
    return cp->ndec >= (size_t)cp->cfg->cmd.batch_size ||
           (cp->ndec > 0 && now_ms() - cp->dec_t0 > DECIDE_BUDGET_MS);
}

/* Decide the batch's commands not decided yet, until decided_enough. */
static void decide_more(cmdproc *cp)
{
    while (cp->fl_n + cp->ndec < cp->nbatch && !decided_enough(cp)) {
        if (cp->ndec == 0) {
            cp->dec_t0 = now_ms();
            cp->lua_s = 0;
            evl_store_begin(cp->store); /* open already while in flight */
        }
        decide(cp, cp->batch[cp->fl_n + cp->ndec]);
        cp->ndec++;
    }
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

/* Wait for the transaction in flight and settle it: committed, its changes
 * stay and its commands leave the batch; failed, it is aborted and
 * everything since the last commit is dropped (the store rolls back, the
 * batch is cleared and, with rewind, the consumer seeks back to it).
 * Returns 0, or 1 on a fatal error. */
static int settle(cmdproc *cp, int rewind)
{
    committer *c = &cp->cm;
    step s;
    if (!cp->inflight)
        return 0;
    committer_wait(cp, -1);
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

    if (s == STEP_OK) {
        long long now = now_ms();
        /* every record is delivered (librdkafka read them from the buffer,
         * without a copy); after a failure they may not be until the abort */
        arena_release(&cp->fl_arena);
        evl_store_commit_sealed(cp->store);
        counts_settle(cp, 1, 1);
        evl_metric_add(cp->m_committed, 1);
        evl_metric_observe(cp->m_batch_seconds,
                           (double)(now - cp->fl_t0) / 1000.0);
        evl_metric_observe(cp->m_txn_seconds,
                           (double)(now - cp->fl_tb) / 1000.0);
        evl_metric_observe(cp->m_batch_size, (double)cp->fl_n);
        evl_metric_set(cp->m_lua_memory, (double)evl_luahost_memory(cp->host));
        store_gauges(cp);
        if (evl_log_get_level() <= EVL_LOG_DEBUG)
            log_committed(cp);
        batch_shift(cp, cp->fl_n);
        cp->fl_n = 0;
        cp->fl_nout = 0;
        cp->backoff_ms = 0;
        return 0;
    }

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
    if (s == STEP_FATAL) {
        cp->fatal = 1; /* a fenced producer cannot abort */
    } else if (s == STEP_LOST) {
        cp->lost = 1; /* nor a timed-out one: recover() rebuilds it */
    } else {
        abort_txn(cp, cp->fl_producer);
    }
    if (rewind && !cp->fatal && !cp->lost) {
        abort_and_rewind(cp); /* rolls back, clears, forgets the decided */
    } else {
        evl_store_rollback(cp->store);
        batch_clear(cp);
        discard_decided(cp);
    }
    return cp->fatal ? 1 : 0;
}

/* Begin the decided batch's transaction, produce its records, and hand it
 * to the committer. Returns 0, or 1 on a fatal error. */
static int launch(cmdproc *cp, long long waited)
{
    rd_kafka_topic_partition_list_t *offsets;
    long long t1 = now_ms(), tb, t2, t3;
    step s;

    queue_snapshots(cp);
    evl_metric_add(cp->m_lua_seconds, cp->lua_s);
    cp->delivery_error[cp->cur][0] = '\0';
    tb = now_ms();
    cp->begun_ms[cp->cur] = tb;
    do {
        s = txn_call(cp, cp->cur, "rd_kafka_begin_transaction",
                     rd_kafka_begin_transaction(cp->producers[cp->cur]));
    } while (s == STEP_RETRY && !evl_lifecycle_stopping());
    if (s != STEP_OK)
        goto failed;
    cp->in_txn = 1;
    t2 = now_ms();
    for (size_t i = 0; i < cp->nout; i++)
        if ((s = produce_one(cp, &cp->out[i])) != STEP_OK)
            goto failed;

    cp->txn_count++;
    if (cp->hang_before_commit > 0 && cp->txn_count == cp->hang_before_commit) {
        rd_kafka_flush(cp->producers[cp->cur], 30000);
        evl_log(EVL_LOG_WARN,
                "test hook EVLUA_TEST_HANG_BEFORE_COMMIT: hanging with an "
                "open transaction",
                NULL);
        for (;;)
            sleep_ms(1000); /* until killed */
    }
    if (cp->hold_file && unlink(cp->hold_file) == 0) {
        /* the broker knows the transaction (its records are in the log):
         * a test cuts the network now, with the transaction open */
        rd_kafka_flush(cp->producers[cp->cur], 30000);
        evl_log(EVL_LOG_WARN,
                "test hook EVLUA_TEST_HOLD_FILE: holding the transaction "
                "open for 2 s",
                NULL);
        sleep_ms(2000);
    }
    if (cp->fail_before_commit > 0 && cp->txn_count == cp->fail_before_commit) {
        rd_kafka_flush(cp->producers[cp->cur],
                       30000); /* the records are in the log */
        evl_log(EVL_LOG_WARN,
                "test hook EVLUA_TEST_FAIL_BEFORE_COMMIT: failing this "
                "transaction before its commit",
                NULL);
        s = STEP_ABORT;
        goto failed;
    }
    t3 = now_ms();

    /* hand it on: the store seals its changes, the buffers swap */
    offsets = batch_offsets(cp, 0, cp->ndec);
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
    cp->fl_t1 = t1; /* deciding overlaps the wait for the previous commit */
    cp->fl_wait = waited;
    cp->fl_tb = tb;
    cp->fl_t2 = t2;
    cp->fl_t3 = t3;
    cp->fl_collect = cp->collect_ms;

    committer *c = &cp->cm;
    pthread_mutex_lock(&c->mu);
    c->producer = cp->fl_producer;
    c->offsets = offsets;
    c->cgmd = rd_kafka_consumer_group_metadata(cp->consumer);
    c->fail = cp->fail_in_flight > 0 && cp->txn_count == cp->fail_in_flight;
    c->done = 0;
    c->has_job = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return 0;

failed:
    counts_settle(cp, 0, 0);
    evl_metric_add(cp->m_aborted, 1);
    if (s == STEP_LOST)
        cp->lost = 1;
    if (s == STEP_FATAL || s == STEP_LOST || cp->fatal) {
        cp->in_txn = 0; /* a fenced producer cannot abort */
        evl_store_rollback(cp->store);
        batch_clear(cp);
        discard_decided(cp);
        return s == STEP_LOST && !cp->fatal ? 0 : 1;
    }
    /* STEP_ABORT, or a retriable begin/produce problem */
    abort_and_rewind(cp);
    return cp->fatal ? 1 : 0;
}

/* One turn of the pipeline: decide what the batch holds, then, while a
 * transaction is in flight, take in and decide more commands until it
 * ends; settle it; start the next. Returns 0, or 1 on a fatal error. */
static int pipeline_step(cmdproc *cp)
{
    unsigned peek = cp->seen_hup, revokes = cp->revokes;
    /* a reload waits for a moment with nothing in flight or decided */
    int reload = evl_lifecycle_reload_requested(&peek);
    int batch = cp->cfg->cmd.batch_size;
    long long w0 = 0;

    if (!(reload && cp->inflight))
        decide_more(cp);
    if (cp->inflight) {
        w0 = now_ms();
        while (!committer_wait(cp, 0)) {
            rd_kafka_message_t *m;
            if (reload || evl_lifecycle_stopping() || cp->fatal || cp->lost ||
                (int)(cp->nbatch - cp->fl_n) >= batch || decided_enough(cp)) {
                committer_wait(cp, 5);
                continue;
            }
            /* returns at once when the committer is done (it yields the
             * queue) */
            m = rd_kafka_consumer_poll(cp->consumer, 100);
            if (cp->revokes != revokes)
                return cp->fatal; /* the revocation settled and cleared */
            if (!m)
                continue;
            if (batch_take(cp, m))
                decide_more(cp);
        }
        w0 = now_ms() - w0;
        if (settle(cp, 1) != 0)
            return 1;
    }
    if (cp->ndec == 0)
        return 0;
    if (evl_lifecycle_stopping() || cp->fatal || cp->lost) {
        /* stopping (or recovering): the decided batch never began */
        evl_store_rollback(cp->store);
        batch_clear(cp);
        discard_decided(cp);
        return cp->fatal;
    }
    return launch(cp, w0);
}

/* ---- the loop ------------------------------------------------------------ */

/* Poll until the batch is full, or a stop is requested. Once the batch has
 * its first command, it takes what the consumer has queued and closes as
 * soon as nothing more is there (linger_ms 0), or waits up to linger_ms
 * after the first command for more. The adaptive close is what keeps
 * latency low at every rate: commands queue up while the previous
 * transaction commits, so the batch grows with the load without waiting
 * for a clock. While nothing comes, return every 100 ms so the loop sees
 * SIGHUP and the stop flag. */
static void collect(cmdproc *cp)
{
    long long deadline = 0;
    int batch = cp->cfg->cmd.batch_size, linger = cp->cfg->cmd.linger_ms;
    /* delivery reports between transactions (commit's flush serves those
     * of its own records; the committer's producer is its own) */
    for (int j = 0; j < NPRODUCERS; j++)
        if (!cp->inflight || j != cp->fl_producer)
            rd_kafka_poll(cp->producers[j], 0);
    while ((int)(cp->nbatch - cp->fl_n) < batch && !cp->fatal && !cp->lost) {
        int timeout;
        rd_kafka_message_t *m;
        if (cp->nbatch == cp->fl_n) {
            /* in flight: the pipeline takes in commands while it waits */
            if (evl_lifecycle_stopping() || cp->inflight)
                return;
            timeout = 100;
        } else {
            long long left = deadline - now_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        m = rd_kafka_consumer_poll(cp->consumer, timeout);
        if (!m) {
            if (cp->nbatch == cp->fl_n || timeout == 0)
                return; /* idle, or nothing more queued */
            continue;
        }
        if (!batch_take(cp, m))
            continue;
        if (cp->nbatch - cp->fl_n == 1)
            deadline = now_ms() + linger;
    }
}

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

static void maybe_reload(cmdproc *cp)
{
    char err[EVL_ERRLEN];
    evl_luahost *nh = NULL;
    agtype *ts;
    size_t nts;

    if (!evl_lifecycle_reload_requested(&cp->seen_hup))
        return;
    if (evl_luahost_reload(cp->host, &nh, NULL, err, sizeof err) != EVL_OK) {
        evl_metrics_scripts("commands", "failed", NULL, NULL);
        return; /* luahost logged why; the old set stays */
    }
    types_from_host(cp->cfg, nh, &ts, &nts);
    if (!same_types(cp->types, cp->ntypes, ts, nts)) {
        evl_err e = ensure_all(cp, ts, nts, err, sizeof err);
        if (e) {
            evl_log(EVL_LOG_ERROR,
                    "script reload refused: the new aggregate types' topics "
                    "are not usable; keeping the loaded set",
                    "error", err, NULL);
            agtype *keep = cp->types;
            size_t nkeep = cp->ntypes;
            cp->types = ts, cp->ntypes = nts;
            types_free(cp);
            cp->types = keep, cp->ntypes = nkeep;
            evl_luahost_free(nh);
            evl_metrics_scripts("commands", "failed", NULL, NULL);
            return;
        }
        types_free(cp);
        cp->types = ts, cp->ntypes = nts;
        if (subscribe(cp, err, sizeof err) != EVL_OK) {
            evl_log(EVL_LOG_ERROR, "resubscribing failed", "error", err, NULL);
            cp->fatal = 1;
        }
    } else {
        /* keep the topic handles; the new list only names the same */
        agtype *keep = cp->types;
        size_t nkeep = cp->ntypes;
        cp->types = ts, cp->ntypes = nts;
        types_free(cp);
        cp->types = keep, cp->ntypes = nkeep;
    }
    evl_metrics_scripts("commands", "applied", evl_luahost_hash(cp->host),
                        evl_luahost_hash(nh));
    evl_luahost_free(cp->host);
    cp->host = nh;
    /* the reload's summary line is luahost's, once for every pipeline */
    evl_log(EVL_LOG_DEBUG, "command processor switched scripts", "hash",
            evl_luahost_hash(nh), NULL);
}

/* Create producer j (the transactional ids of "the pipeline"); not yet
 * initialized. At start, and again when recover() rebuilds it. Returns
 * EXIT_OK, or EXIT_CONFIG with err set. */
static int producer_new(cmdproc *cp, int j, char *err, size_t errlen)
{
    const evl_config *cfg = cp->cfg;
    rd_kafka_conf_t *conf;
    char errstr[512], size[64], txid[600], client[64];
    size_t sizelen = sizeof size;

    /* the producers: NPRODUCERS transactional ids derived from
     * commands.transactional_id (the first is it, the others add ".alt",
     * ".alt2", ...), all stable across restarts
     *
     * retry.backoff.ms: right after a commit the coordinator may still be
     * writing the markers and answer the next AddPartitionsToTxn with
     * CONCURRENT_TRANSACTIONS; librdkafka waits retry.backoff.ms (100 ms by
     * default) before trying again, which caps small transactions at ~15/s.
     * The Java producer retries those after 20 ms.
     * linger.ms: records are produced all at once right before the commit,
     * whose flush would otherwise wait out the linger. */
    const char *pdefaults[] = {"transaction.timeout.ms",
                               "10000",
                               "retry.backoff.ms",
                               "20",
                               "linger.ms",
                               "0",
                               NULL};
    if (j == 0)
        snprintf(txid, sizeof txid, "%s", cfg->cmd.transactional_id);
    else if (j == 1)
        snprintf(txid, sizeof txid, "%s.alt", cfg->cmd.transactional_id);
    else
        snprintf(txid, sizeof txid, "%s.alt%d", cfg->cmd.transactional_id, j);
    snprintf(client, sizeof client, "evlua-commands-%d", j);
    const char *prequired[] = {"transactional.id",
                               txid,
                               "enable.idempotence",
                               "true",
                               "acks",
                               "all",
                               "partitioner",
                               "murmur2_random",
                               "client.id",
                               client,
                               NULL};
    if (evl_kafka_conf_new(cfg, pdefaults, prequired, &conf, err, errlen))
        return EXIT_CONFIG;
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
    rd_kafka_conf_set_opaque(conf, cp);
    sizelen = sizeof size;
    if (rd_kafka_conf_get(conf, "message.max.bytes", size, &sizelen) ==
        RD_KAFKA_CONF_OK)
        cp->max_message = (size_t)strtoull(size, NULL, 10);
    if (cp->max_message < 4096)
        cp->max_message = 1000000;
    sizelen = sizeof size;
    if (rd_kafka_conf_get(conf, "transaction.timeout.ms", size, &sizelen) ==
        RD_KAFKA_CONF_OK)
        cp->txn_timeout_ms = strtol(size, NULL, 10);
    if (cp->txn_timeout_ms <= 0)
        cp->txn_timeout_ms = 60000; /* librdkafka's own default */
    if (!(cp->producers[j] =
              rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr))) {
        evl_seterr(err, errlen, EVL_EPERMANENT, "producer: %s", errstr);
        return EXIT_CONFIG;
    }
    return EXIT_OK;
}

static int start_clients(cmdproc *cp, char *err, size_t errlen)
{
    const evl_config *cfg = cp->cfg;
    rd_kafka_conf_t *conf;
    char errstr[512], group[512];

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
    char member[300];
    evl_kafka_instance_id(cfg, "cmd", member, sizeof member);
    const char *cdefaults[] = {"auto.offset.reset",
                               "earliest",
                               "fetch.min.bytes",
                               "65536",
                               "fetch.wait.max.ms",
                               "5",
                               "statistics.interval.ms",
                               "1000",
                               NULL};
    const char *crequired[] = {
        "group.id",
        cfg->cmd.group_id,
        "isolation.level",
        "read_committed",
        "enable.auto.commit",
        "false",
        "enable.auto.offset.store",
        "false",
        "enable.partition.eof",
        "false",
        "partition.assignment.strategy",
        evl_kafka_assignor(cfg, "range", "evlua-commands"),
        "client.id",
        "evlua-commands",
        *member ? "group.instance.id" : NULL,
        member,
        NULL};
    if (evl_kafka_conf_new(cfg, cdefaults, crequired, &conf, err, errlen))
        return EXIT_CONFIG;
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_stats_cb(conf, stats_cb);
    rd_kafka_conf_set_opaque(conf, cp);
    if (!(cp->consumer =
              rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr))) {
        evl_seterr(err, errlen, EVL_EPERMANENT, "consumer: %s", errstr);
        return EXIT_CONFIG;
    }
    rd_kafka_poll_set_consumer(cp->consumer);
    cp->cq = rd_kafka_queue_get_consumer(cp->consumer);

    /* reader of the state topics: assigned by hand, never joins a group */
    snprintf(group, sizeof group, "%s.restore", cfg->cmd.group_id);
    const char *rrequired[] = {"group.id",
                               group,
                               "isolation.level",
                               "read_committed",
                               "enable.auto.commit",
                               "false",
                               "enable.auto.offset.store",
                               "false",
                               "enable.partition.eof",
                               "true",
                               "auto.offset.reset",
                               "earliest",
                               "client.id",
                               "evlua-restore",
                               NULL};
    /* an empty partition's end is known after one fetch: do not let the
     * broker hold it */
    const char *rdefaults[] = {"fetch.wait.max.ms", "10", NULL};
    if (evl_kafka_conf_new(cfg, rdefaults, rrequired, &conf, err, errlen))
        return EXIT_CONFIG;
    if (!(cp->restorer =
              rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr))) {
        evl_seterr(err, errlen, EVL_EPERMANENT, "state reader: %s", errstr);
        return EXIT_CONFIG;
    }
    rd_kafka_poll_set_consumer(cp->restorer);
    return EXIT_OK;
}

/* init_transactions for producer j, retried until deadline (monotonic
 * ms). Returns EXIT_OK or EXIT_RUNTIME (logged). */
static int init_one(cmdproc *cp, int j, long long deadline)
{
    for (;;) {
        char err[EVL_ERRLEN];
        evl_err e =
            evl_kafka_error(rd_kafka_init_transactions(cp->producers[j], 30000),
                            "rd_kafka_init_transactions", err, sizeof err);
        if (e == EVL_OK)
            return EXIT_OK;
        if (e == EVL_EFATAL || now_ms() > deadline ||
            evl_lifecycle_stopping()) {
            evl_log(EVL_LOG_ERROR, "cannot start the transactional producer",
                    "error", err, NULL);
            return EXIT_RUNTIME;
        }
        evl_log(EVL_LOG_WARN, "retrying init_transactions", "error", err, NULL);
        sleep_ms(500);
    }
}

static int init_transactions(cmdproc *cp)
{
    long long deadline = now_ms() + STARTUP_TIMEOUT_MS;
    for (int j = 0; j < NPRODUCERS; j++)
        if (init_one(cp, j, deadline) != EXIT_OK)
            return EXIT_RUNTIME;
    return EXIT_OK;
}

/* Recover from a timed-out transaction (see "recovering from a timed-out
 * transaction"): rebuild every producer fenced by its own timeout, drop
 * the store, and restore and rewind the partitions the consumer still
 * holds (ones it lost come back through the rebalance callback, which
 * restores them). Called with nothing in flight and no transaction open.
 * Returns 0, or 1 when it cannot go on (a producer fenced by another
 * instance, or one that cannot be rebuilt). */
static int recover(cmdproc *cp)
{
    char err[EVL_ERRLEN], msg[256], age_ms[32], timeout_ms[32];
    long long age = 0;
    rd_kafka_topic_partition_list_t *parts = NULL;

    evl_metrics_ready("commands", 0, "recovering from a timed-out transaction");
    for (int j = 0; j < NPRODUCERS; j++) {
        if (rd_kafka_fatal_error(cp->producers[j], NULL, 0) ==
            RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        if (cp->lost_age_ms[j] == 0 && own_timeout(cp, j) == 0)
            return 1; /* fenced, but not by its own timeout */
        if (cp->lost_age_ms[j] > age)
            age = cp->lost_age_ms[j];
        for (size_t i = 0; i < cp->ntypes; i++)
            for (int k = 0; k < 3; k++)
                if (cp->types[i].rkt[k][j]) {
                    rd_kafka_topic_destroy(cp->types[i].rkt[k][j]);
                    cp->types[i].rkt[k][j] = NULL;
                }
        rd_kafka_destroy(cp->producers[j]);
        cp->producers[j] = NULL;
        if (producer_new(cp, j, err, sizeof err) != EXIT_OK) {
            evl_log(EVL_LOG_ERROR, "cannot rebuild the producer", "error", err,
                    NULL);
            return 1;
        }
        for (size_t i = 0; i < cp->ntypes; i++) {
            agtype *t = &cp->types[i];
            t->rkt[OUT_EVENTS][j] =
                rd_kafka_topic_new(cp->producers[j], t->events, NULL);
            t->rkt[OUT_STATE][j] =
                rd_kafka_topic_new(cp->producers[j], t->state, NULL);
            t->rkt[OUT_RESULTS][j] =
                rd_kafka_topic_new(cp->producers[j], t->results, NULL);
        }
        /* the broker may still be unreachable: keep trying as long as
         * start-up would */
        if (init_one(cp, j, now_ms() + STARTUP_TIMEOUT_MS) != EXIT_OK)
            return 1;
        cp->lost_age_ms[j] = 0;
        cp->begun_ms[j] = 0;
        cp->delivery_error[j][0] = '\0';
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
        take_partitions(cp, cp->consumer, parts);
    else
        evl_metrics_ready("commands", 0, "waiting for a partition assignment");
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);
    snprintf(msg, sizeof msg,
             "our transaction timed out while the broker was unreachable "
             "(%lld s > transaction.timeout.ms); rebuilt the producer and "
             "restored states",
             age / 1000);
    snprintf(age_ms, sizeof age_ms, "%lld", age);
    snprintf(timeout_ms, sizeof timeout_ms, "%ld", cp->txn_timeout_ms);
    evl_log(EVL_LOG_WARN, msg, "transactional_id",
            cp->cfg->cmd.transactional_id, "transaction_age_ms", age_ms,
            "transaction_timeout_ms", timeout_ms, NULL);
    return 0;
}

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

int evl_cmdproc_run(const evl_config *cfg, const evl_luahost *proto)
{
    cmdproc cp;
    char err[EVL_ERRLEN];
    int rc = EXIT_OK;
    evl_err e;
    long long last_counts;
    const char *hook = getenv("EVLUA_TEST_FAIL_BEFORE_COMMIT");
    const char *hang = getenv("EVLUA_TEST_HANG_BEFORE_COMMIT");
    const char *fail_in_flight = getenv("EVLUA_TEST_FAIL_IN_FLIGHT");

    memset(&cp, 0, sizeof cp);
    cp.cfg = cfg;
    evl_metrics_ready("commands", 0, "starting");
    cp.m_committed = evl_metrics_counter(
        "evlua_command_transactions_total",
        "Kafka transactions of the command side, by outcome",
        "outcome=\"committed\"");
    cp.m_aborted = evl_metrics_counter(
        "evlua_command_transactions_total",
        "Kafka transactions of the command side, by outcome",
        "outcome=\"aborted\"");
    cp.m_batch_seconds = evl_metrics_histogram(
        "evlua_command_batch_seconds",
        "Time from the start of deciding a batch to its commit", NULL, NULL, 0);
    cp.m_txn_seconds = evl_metrics_histogram(
        "evlua_command_transaction_seconds",
        "Time from beginning a Kafka transaction to its commit", NULL, NULL, 0);
    static const double sizes[] = {1,   2,   5,    10,   50,
                                   100, 500, 1000, 5000, 10000};
    cp.m_batch_size = evl_metrics_histogram(
        "evlua_command_batch_size", "Commands per Kafka transaction", NULL,
        sizes, sizeof sizes / sizeof sizes[0]);
    cp.m_lua_seconds = evl_metrics_counter(
        "evlua_lua_handler_seconds_total",
        "Time spent in Lua handlers (aggregate handle, projection handlers)",
        "pipeline=\"commands\"");
    cp.m_lua_memory = evl_metrics_gauge("evlua_lua_memory_bytes",
                                        "Heap of a pipeline's Lua state",
                                        "pipeline=\"commands\"");
    cp.m_store_bytes = evl_metrics_gauge(
        "evlua_store_bytes",
        "Heap bytes of the command side's aggregate states and remembered "
        "command ids",
        NULL);
    cp.m_store_aggs =
        evl_metrics_gauge("evlua_store_aggregates",
                          "Aggregates held in the command side's store", NULL);
    if (hook && *hook)
        cp.fail_before_commit = strtol(hook, NULL, 10);
    if (hang && *hang)
        cp.hang_before_commit = strtol(hang, NULL, 10);
    if (fail_in_flight && *fail_in_flight)
        cp.fail_in_flight = strtol(fail_in_flight, NULL, 10);
    cp.hold_file = getenv("EVLUA_TEST_HOLD_FILE");
    if (cp.hold_file && !*cp.hold_file)
        cp.hold_file = NULL;
    if (evl_luahost_reload(proto, &cp.host, NULL, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "command processor: cannot load the scripts",
                "error", err, NULL);
        return EXIT_CONFIG;
    }
    /* the SIGHUPs before now are in this host already */
    evl_lifecycle_reload_requested(&cp.seen_hup);
    evl_metrics_scripts("commands", NULL, NULL, evl_luahost_hash(cp.host));
    cp.store = evl_store_new(cfg->cmd.dedup_ids);
    cp.L = luaL_newstate();
    if (!cp.L) {
        evl_log(EVL_LOG_ERROR, "cannot create a Lua state", NULL);
        rc = EXIT_RUNTIME;
        goto out;
    }
    types_from_host(cfg, cp.host, &cp.types, &cp.ntypes);
    if (cp.ntypes == 0) {
        evl_log(EVL_LOG_ERROR, "command processor: no aggregate scripts", NULL);
        rc = EXIT_CONFIG;
        goto out;
    }
    if (!evl_config_kafka(cfg, "bootstrap.servers") &&
        !evl_config_kafka(cfg, "test.mock.num.brokers")) {
        evl_log(EVL_LOG_ERROR,
                "command processor: no Kafka configured: set "
                "kafka[\"bootstrap.servers\"] or EVLUA_KAFKA_BOOTSTRAP",
                NULL);
        rc = EXIT_CONFIG;
        goto out;
    }
    if (evl_config_kafka(cfg, "test.mock.num.brokers"))
        evl_log(EVL_LOG_WARN,
                "librdkafka's MOCK cluster is configured: a development toy "
                "without transaction markers; nothing here is exactly once",
                NULL);
    if ((rc = start_clients(&cp, err, sizeof err)) != EXIT_OK) {
        evl_log(EVL_LOG_ERROR, "command processor: bad Kafka configuration",
                "error", err, NULL);
        goto out;
    }
    if ((e = ensure_all(&cp, cp.types, cp.ntypes, err, sizeof err))) {
        evl_log(EVL_LOG_ERROR, "command processor: topics not usable", "error",
                err, NULL);
        rc = e == EVL_EPERMANENT ? EXIT_CONFIG : EXIT_RUNTIME;
        goto out;
    }
    if ((rc = init_transactions(&cp)) != EXIT_OK)
        goto out;
    if (committer_start(&cp) != 0) {
        evl_log(EVL_LOG_ERROR, "cannot start the committer thread", NULL);
        rc = EXIT_RUNTIME;
        goto out;
    }
    if (subscribe(&cp, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "command processor", "error", err, NULL);
        rc = EXIT_RUNTIME;
        goto out;
    }
    evl_metrics_ready("commands", 0, "waiting for a partition assignment");
    evl_log(EVL_LOG_INFO, "command processor started", "group",
            cfg->cmd.group_id, "transactional_id", cfg->cmd.transactional_id,
            "scripts", evl_luahost_hash(cp.host), NULL);

    last_counts = now_ms();
    while (!evl_lifecycle_stopping() && !cp.fatal) {
        if (!cp.inflight)
            maybe_reload(&cp);
        long long tc = now_ms();
        collect(&cp);
        cp.collect_ms = now_ms() - tc;
        if (cp.fatal)
            break;
        if (!cp.lost && (cp.nbatch > 0 || cp.inflight) &&
            pipeline_step(&cp) != 0) {
            cp.fatal = 1;
            break;
        }
        /* a producer fenced by its own transaction's timeout (set by
         * settle, launch or the rebalance callback): nothing is in flight
         * any more */
        if (cp.lost && !cp.fatal && recover(&cp) != 0) {
            cp.fatal = 1;
            break;
        }
        if (now_ms() - last_counts > 60000) {
            last_counts = now_ms();
            log_counts(&cp);
        }
    }
    /* stopping: the transaction in flight ends (commit or abort); what
     * was decided after it never began */
    if (settle(&cp, 0) != 0)
        cp.fatal = 1;
    evl_store_rollback(cp.store);
    batch_clear(&cp);
    discard_decided(&cp);
    if (cp.fatal) {
        evl_log(EVL_LOG_ERROR,
                "command processor stops after a fatal Kafka error (see the "
                "error above: another instance with the same "
                "commands.transactional_id or the same instance?)",
                NULL);
        rc = EXIT_RUNTIME;
    }
    log_counts(&cp);

out:
    committer_stop(&cp);
    if (cp.cq)
        rd_kafka_queue_destroy(cp.cq);
    if (cp.consumer) {
        rd_kafka_consumer_close(cp.consumer);
        rd_kafka_destroy(cp.consumer);
    }
    if (cp.restorer) {
        rd_kafka_consumer_close(cp.restorer);
        rd_kafka_destroy(cp.restorer);
    }
    types_free(&cp); /* topic handles before their producers */
    for (int j = 0; j < NPRODUCERS; j++)
        if (cp.producers[j])
            rd_kafka_destroy(cp.producers[j]);
    if (cp.L)
        lua_close(cp.L);
    evl_store_free(cp.store);
    evl_luahost_decision_free(&cp.dec);
    evl_envelope_command_free(&cp.cmd);
    evl_buf_free(&cp.arena);
    evl_buf_free(&cp.fl_arena);
    free(cp.out);
    free(cp.fl_out);
    free(cp.event_ids);
    free(cp.batch);
    evl_luahost_free(cp.host);
    evl_metrics_ready("commands", 0, rc == EXIT_OK ? "stopped" : "failed");
    if (rc == EXIT_OK)
        evl_log(EVL_LOG_INFO, "command processor stopped", NULL);
    return rc;
}
