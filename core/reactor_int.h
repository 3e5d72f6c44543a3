/*
 * reactor_int.h - what the reactor's files share (as cmdproc_int.h does
 * for the command side). Not a public header: only core/reactor.c and
 * core/react_*.c include it.
 *
 *   reactor.c        open / loop / close: clients, the batch, one turn
 *                    (decide, then the transaction), recovering
 *   react_decide.c   one batch: headers, parked aggregates, Lua, the
 *                    records to produce; retry and drop requests
 *   react_parked.c   the parked set: records, folding the parked topic
 *   react_admin.c    the operator's list / retry / drop (reactor.h)
 *   react_topics.c   source types, topic names, creating and checking
 *                    the topics
 *
 * Threads: everything runs on the reactor's thread; librdkafka calls back
 * only from calls made there (the rebalance callback from
 * rd_kafka_consumer_poll, the delivery reports from the transaction
 * calls).
 */
#ifndef EVL_REACTOR_INT_H
#define EVL_REACTOR_INT_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "buf.h"
#include "kafka.h"
#include "luahost.h"
#include "metrics.h"
#include "pipeline.h"
#include "reactor.h"
#include "txn.h"

enum { RX_OK = 0, RX_RUNTIME = 1, RX_CONFIG = 2 };

/* Bytes a record needs beyond key and value (headers, framing), and for
 * the parked record's other fields: kept free under message.max.bytes. */
#define RX_RECORD_OVERHEAD 4096

/* How long start-up keeps trying to reach the cluster. */
#define RX_STARTUP_MS 60000

/* ---- the parked set (react_parked.c) ----------------------------------- */

/* One parked event: where it came from, its envelope, why. */
typedef struct rp_event {
    char *topic;
    int32_t partition;
    int64_t offset;
    char *event; /* the envelope JSON as it was on the events topic */
    size_t len;
    char *error;
    char *at; /* when it was parked (ISO 8601 UTC) */
} rp_event;

/* The parked events of one source aggregate, in order; and how far the
 * operator dropped its events (so a replay does not park them again). */
typedef struct rp_agg {
    char *atype, *aid;
    rp_event *v;
    size_t n, cap;
    char *drop_topic; /* NULL: nothing dropped */
    int32_t drop_partition;
    int64_t drop_offset;
    struct rp_agg *next; /* hash chain */
} rp_agg;

/* A retry or drop no reactor has answered yet. */
typedef struct rp_request {
    char *id, *kind, *atype, *aid;
} rp_request;

typedef struct rp_set {
    rp_agg **buckets;
    size_t nbuckets;
    size_t naggs; /* aggregates with parked events (n > 0) */
    rp_request *reqs;
    size_t nreqs, capreqs;
    char **done; /* ids of the requests answered */
    size_t ndone, capdone;
} rp_set;

void rp_set_init(rp_set *s);
void rp_set_free(rp_set *s); /* and zero it */
rp_agg *rp_find(const rp_set *s, const char *atype, const char *aid);
/* Fold one record of the parked topic (JSON) into s. Records are
 * idempotent: folding one twice changes nothing. Returns 0, or -1 for a
 * record it cannot read (err says why; skipped). */
int rp_apply(rp_set *s, const char *json, size_t len, char *err, size_t errlen);
/* Assign reader (a read_committed consumer assigned by hand, with
 * enable.partition.eof) to partition 0 of topic from the beginning, empty
 * s and fold every record up to the end the topic has now into it; *pos
 * is where the reader is (the next offset). Returns EVL_OK, or
 * EVL_ETRANSIENT when the end did not come within timeout_ms (err). */
evl_err rp_fold(rd_kafka_t *reader, const char *topic, rp_set *s, int64_t *pos,
                int timeout_ms, char *err, size_t errlen);
/* The same from where the reader is (*pos), without emptying s. */
evl_err rp_drain(rd_kafka_t *reader, const char *topic, rp_set *s, int64_t *pos,
                 int timeout_ms, char *err, size_t errlen);
/* Fold one message of the parked topic into s (a bad record is logged
 * and skipped); *pos moves past it, or to the end a partition EOF
 * reports. */
void rp_fold_message(rp_set *s, rd_kafka_message_t *m, int64_t *pos);
/* Fold what the reader has ready now, without waiting. */
void rp_poll(rd_kafka_t *reader, rp_set *s, int64_t *pos);

/* Append the records to out (each a JSON object, not NUL-terminated). */
void rp_record_parked(evl_buf *out, const char *reaction, const char *atype,
                      const char *aid, const char *topic, int32_t partition,
                      int64_t offset, const char *event, size_t len,
                      const char *error);
typedef struct rp_released {
    const char *atype, *aid, *request_id;
    long long applied, dropped;
    const rp_event *through; /* the last event released; NULL: none */
    const char *error;       /* NULL: none */
} rp_released;
void rp_record_released(evl_buf *out, const char *reaction,
                        const rp_released *r);
void rp_record_request(evl_buf *out, const char *kind, const char *atype,
                       const char *aid, const char *request_id);

/* ---- the reactor ------------------------------------------------------- */

/* A source type: its events topic and partition count. */
typedef struct rx_source {
    char *type;
    char topic[256];
    int partitions;
} rx_source;

enum { OUT_COMMAND, OUT_PARKED };

/* A record to produce: offsets into r->arena. */
typedef struct rx_out {
    int kind;
    size_t key, keylen, val, vallen;
} rx_out;

enum { RX_REACTED, RX_NONE, RX_PARKED };

typedef struct reactor {
    const evl_config *cfg;
    const char *type;
    evl_luahost *host;
    evl_pipeline pl;
    char component[300], group[300], txid[600];
    char commands[256], ptopic[256]; /* T.commands, the parked topic */

    rx_source *srcs;
    size_t nsrcs;

    rd_kafka_t *consumer; /* group member on the sources */
    rd_kafka_t *reader;   /* assigned to the parked topic */
    evl_txn txn;
    rd_kafka_topic_t *rkt_cmd, *rkt_parked; /* of txn.rk */
    int topics_ready; /* rx_ensure_topics done: producer_open makes rkt_* */
    rd_kafka_topic_partition_list_t *assigned; /* NULL: none */
    int catch_up; /* partitions came: read the parked topic to its end */

    rd_kafka_message_t **batch;
    size_t nbatch, capbatch;
    size_t batch_bytes; /* keys and values of the batch's messages */

    rp_set parked;
    int64_t parked_next; /* the reader's next offset in the parked topic */

    evl_buf arena; /* the records of the batch being decided */
    rx_out *out;
    size_t nout, capout;
    evl_luahost_reactions rs;
    evl_buf scratch;
    size_t max_message; /* the producer's message.max.bytes */
    int halt;           /* a reaction failed under on_error = halt */
    int fatal;          /* a fatal error seen in a callback */
    unsigned backoff_ms;

    /* counts of the batch being decided (RX_*), commands; totals */
    long long pending[3], pending_cmds;
    long long total[3], total_cmds;
    evl_metric *m_outcomes[3], *m_cmds, *m_parked, *m_committed, *m_aborted,
        *m_lua_memory;
} reactor;

/* ---- react_topics.c ----------------------------------------------------- */

/* The source types of type's react keys (sorted, unique) into r. */
void rx_sources(reactor *r);
void rx_sources_free(reactor *r);
/* Make sure T.commands, the sources' events topics (created with the
 * command side's settings when commands.create_topics) and the parked
 * topic (1 partition, retention.ms=-1) exist, and note the sources'
 * partition counts. Returns EVL_OK, EVL_EPERMANENT (a configuration
 * problem) or EVL_ETRANSIENT (err). */
evl_err rx_ensure_topics(reactor *r, char *err, size_t errlen);
/* Create the parked topic `topic` when it is missing, with rk's admin
 * API: 1 partition, kept forever. */
evl_err rx_ensure_parked(rd_kafka_t *rk, const char *topic, char *err,
                         size_t errlen);
/* Does this reactor hold the partition of source aggregate atype/aid? */
int rx_holds(const reactor *r, const char *atype, const char *aid);

/* ---- react_decide.c ----------------------------------------------------- */

/* Decide the batch and the requests this reactor can act on: fills
 * r->out (and the parked set, folded ahead of the commit: an abort
 * refolds it from the topic). Sets r->halt on a failing reaction under
 * on_error = halt. */
void rx_decide(reactor *r);
/* Forget what rx_decide queued. */
void rx_discard(reactor *r);
/* Are there requests this reactor can act on? */
int rx_requests_due(const reactor *r);

/* ---- reactor.c ---------------------------------------------------------- */

/* Read the parked topic from where the reader is to its end (new
 * requests, other instances' parking). */
void rx_read_parked(reactor *r, int timeout_ms);

#endif
