/*
 * projector_int.h - what the files of the projector share (private: only
 * core/projector.c and core/proj_*.c include it; projector.h is the
 * contract). One projector's state and its batch, the way lstate.h is
 * Lua's, and the functions one file of the projector offers the others:
 *
 *   projector.c     open (setup) / loop / close, collecting a batch,
 *                   deciding its events (Lua), settling it, the threads
 *   proj_arena.c    the batch arenas and the checkpoint cache
 *   proj_read.c     messages -> events and aggregate groups; checkpoints
 *                   read from the database
 *   proj_sql.c      events -> pipelined SQL, and what a failure blames
 *   proj_upsert.c   evlua.upsert / evlua.delete rows coalesced into
 *                   multi-row statements
 *   proj_kafka.c    the consumer: topics, creation, rebalances
 *   proj_metrics.c  metrics and readiness
 *   proj_reset.c    evl_projector_reset_db / evl_projector_reset_group
 *
 * Internal functions shared between these files are named proj_*; each
 * file's other functions are static. Everything here runs on the
 * projector's own thread.
 */
#ifndef EVL_PROJECTOR_INT_H
#define EVL_PROJECTOR_INT_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "buf.h"
#include "kafka.h"
#include "luaapi.h"
#include "luahost.h"
#include "metrics.h"
#include "projector.h"

/* ---- arenas and the checkpoint cache (proj_arena.c) ---------------------- */

/* A bump allocator: everything of a batch (or an attempt) goes in one
 * and is dropped at once. Blocks are kept for the next round. */
typedef struct block {
    struct block *next;
    size_t cap, used;
    char data[];
} block;

typedef struct arena {
    block *head, *cur;
} arena;

/* The checkpoint cache: "type\0id" -> the aggregate's checkpoint row as
 * this projector last read or wrote it (open addressing, evl_hash). */
typedef struct ckpt {
    char *key; /* "type\0id"; NULL: empty slot */
    size_t klen;
    uint64_t hash;
    long long seq; /* -1: no row */
    int parked;
} ckpt;

typedef struct ckmap {
    ckpt *slots;
    size_t cap, n;
} ckmap;

void *proj_arena_alloc(arena *a, size_t n);
void proj_arena_reset(arena *a);
void proj_arena_free(arena *a);
/* Free the blocks past the first `keep` bytes of capacity. Only between
 * batches (it resets the arena). */
void proj_arena_shrink(arena *a, size_t keep);
char *proj_arena_strndup(arena *a, const char *s, size_t n);
/* A copy of s that PostgreSQL's text accepts: valid UTF-8, no NUL bytes
 * (each bad byte becomes '?'). */
char *proj_arena_text(arena *a, const char *s, size_t n);

/* The cache's entry for key (hash h: evl_hash of the key), or NULL. */
const ckpt *proj_ckmap_get(const ckmap *m, const char *key, size_t klen,
                           uint64_t h);
void proj_ckmap_put(ckmap *m, const char *key, size_t klen, uint64_t h,
                    long long seq, int parked);
void proj_ckmap_clear(ckmap *m);

/* ---- the projector and its batch ---------------------------------------- */

enum { ISO_AGGREGATE, ISO_BATCH, ISO_AGGREGATE_TX };
enum { EV_SKIP, EV_REPLAY, EV_APPLY, EV_PARK, EV_HALT };

/* What seeing a batch through (settling the one in flight, processing a
 * new one) came to. */
enum settle_rc {
    SETTLED,  /* committed (or nothing was in flight) */
    REDECIDE, /* committed only after trouble: a batch decided meanwhile
                 must be decided again (the cache it used was dropped) */
    STOPPING, /* a stop request left it uncommitted */
    FAILED,   /* a runtime failure (logged) */
    FENCED    /* uncommitted: `projection swap` moved the tables since the
                 scripts were loaded (pj->fenced; see follow_swap) */
};

/* Statement tags in a pipeline: statement i is 2i, the park insert of
 * event i is 2i+1, bookkeeping is negative. */
#define TAG_BEGIN   (-2L)
#define TAG_ADVANCE (-3L)
#define TAG_OFFSETS (-4L)
#define TAG_COMMIT  (-5L)
/* a multi-row statement of coalesced upserts or deletes: a failure sends
 * the batch again row by row to find the culprit (proj_upsert.c) */
#define TAG_COALESCED (-6L)
/* evlua_fence, first in every transaction (EVL_PG_FENCE_SQL) */
#define TAG_FENCE (-7L)

typedef struct part {
    char *topic;
    int32_t partition;
    int64_t start, end; /* until_caught_up: where it began, where it ends */
    int64_t pos;        /* next offset known to be done */
    int halted;
    int64_t halt_offset;
    int halt_new; /* halted by this batch: pause and log after commit */
    char *halt_error;
} part;

typedef struct pev {
    rd_kafka_message_t *rkm;
    int part;
    int group;
    int next; /* next event of the group, -1 */
    long long seq;
    const char *type;   /* may be NULL (no header, no JSON type) */
    const char *bad;    /* why the payload cannot be used, or NULL */
    const char *fail;   /* a permanent error seen for it in this batch */
    const char *error;  /* EV_PARK: what goes into evlua_parked.error */
    const char *stored; /* the event as stored when parked */
    int state;
    size_t stmt0, nstmt;
} pev;

typedef struct pgroup {
    const char *atype, *aid;
    const char *key; /* "type\0id" */
    size_t klen;
    uint64_t hash;
    int first, last;
    long long prev_seq, new_seq;
    int prev_parked, new_parked;
    int touched; /* has events to apply or park */
    int done;    /* committed (aggregate-tx) */
} pgroup;

typedef struct pstmt {
    const char *sql;
    int nparams;
    const char **values;
    int ev;
    int shape; /* an upsert or delete: its index in pj->shapes; else -1 */
} pstmt;

/* The shape of an upsert or a delete: what one multi-row statement
 * covers. Looked up in the catalog once (state), kept for the
 * projector's life (forgotten when a multi-row statement fails). */
typedef struct ushape {
    int op; /* EVL_SQL_UPSERT or EVL_SQL_DELETE */
    char *table;
    char **cols;
    int ncols, nkey;
    uint64_t hash;
    int state; /* 0: not looked up; 1: coalesced (sql set); -1: sent row
                  by row (no such table or column, an array column: the
                  single-row statement says what is wrong) */
    char *sql; /* the multi-row statement, $k typed arrays */
} ushape;

typedef struct failure {
    long seg, tag;
    evl_err cls;
    char msg[1100];
} failure;

/* Everything of one batch: its messages, events, aggregate groups and
 * the statements of its current attempt. */
typedef struct batch {
    rd_kafka_message_t **msgs;
    size_t nmsgs, capmsgs;
    pev *evs;
    size_t nevs, capevs;
    pgroup *groups;
    size_t ngroups, capgroups;
    int *gindex; /* open addressing over groups, -1 empty */
    size_t gcap;
    arena ar;      /* lives as long as the batch */
    int64_t *next; /* per partition: after its last message; -1 none */
    int nnext;
    int nfail; /* aggregates failed in this batch */
    /* the attempt */
    pstmt *stmts;
    size_t nstmts, capstmts;
    arena attempt_ar;
    int percall;        /* the next attempt sends upserts row by row */
    double t_collected; /* for evlua_projection_batch_seconds */
    size_t bytes;       /* message bytes (values and keys) collected */
} batch;

typedef struct projector {
    const evl_config *cfg;
    const char *name;
    evl_projector_opts opts;
    int iso, halt, batch_size, linger_ms;
    size_t batch_bytes; /* projection.batch_bytes */
    /* memory given back (see release_memory): message bytes since the
     * last trim; keep_memory: EVLUA_NO_TRIM set (benchmarks' baseline) */
    size_t bytes_since_trim;
    int keep_memory;
    double idle_since; /* the first empty poll of an idle stretch; 0: busy */
    char group_id[256];
    evl_strlist topics;
    /* topics the cluster said do not exist (yet): not subscribed; looked
     * for every MISSING_CHECK_S until they appear (see ensure_topics) */
    evl_strlist missing;
    char missing_why[512]; /* readiness reason while some are missing */
    double missing_checked;
    int nsubscribed;     /* topics in the current subscription */
    evl_kafka_wait wait; /* the consumer's wait for partitions (kafka.h) */

    evl_luahost *host;
    const evl_luahost_projection *proj;
    evl_pg *pg;
    rd_kafka_t *rk;
    unsigned hup_seen;
    int fatal;      /* a fatal Kafka error */
    int rebalanced; /* a rebalance happened during this poll */
    int assigned;

    part *parts;
    int nparts, last_part;
    ckmap cache;

    batch bufs[2];           /* one being built, one maybe in flight */
    batch *inflight;         /* sent to PostgreSQL, results not read yet */
    enum settle_rc abort_rc; /* STOPPING or FAILED when settling in a
                                callback did; else SETTLED */
    char epoch[24];          /* the swap epoch the loaded scripts are for */
    int fenced;    /* a transaction failed at the fence: the tables were
                      swapped; follow_swap before anything else */
    int guess_off; /* batches to go before guessing new aggregates again */
    evl_luahost_stmts lstmts;
    ushape *shapes; /* proj_upsert.c */
    size_t nshapes, capshapes;
    struct upsend *us; /* proj_upsert.c's scratch for sending */
    failure *fails;
    size_t nfails, capfails;

    evl_buf a[7];     /* array literals of the bookkeeping statements */
    evl_buf jscratch; /* strings read by read_fields */
    evl_projector_stats stats;
    evl_projector_stats published; /* what the metrics have seen */
    evl_metric *m_events[5], *m_batches, *m_lua_memory, *m_batch_size,
        *m_batch_seconds, *m_lua_seconds, *m_parked;
    double lua_s;             /* handler time not yet published */
    double parked_counted;    /* when it was last refreshed */
    int parked_dirty;         /* a batch parked an aggregate */
    char component[160];      /* readiness name: "projection NAME" ("#i" added
                                 when the projection runs several threads) */
    int instance, ninstances; /* this thread, of the projection's threads */
    char thread_no[12];       /* instance + 1, for the log */
    double t0, last_progress;
    double first_msg, last_commit; /* for stats.seconds */
} projector;

/* The last field of a projector's log lines: thread=i when the projection
 * runs several threads (a NULL key ends the list otherwise). */
#define THREAD_FIELD(pj)                                                       \
    ((pj)->ninstances > 1 ? "thread" : NULL), (pj)->thread_no

/* exec_batch's `first` when the batch's first transaction was not sent
 * ahead. */
#define NOT_SENT ((evl_err)-1)

/* ---- projector.c --------------------------------------------------------- */

/* Monotonic seconds. */
double proj_now_s(void);
/* Sleep ms milliseconds, waking early for a stop request. Returns 1 when
 * stopping. */
int proj_nap(long ms);
/* 100 ms, 200 ms, ... capped at 10 s. */
long proj_backoff_ms(int attempt);
/* Read the outcome of the batch in flight and see it through (SETTLED
 * when nothing is in flight). Its messages are released. */
enum settle_rc proj_settle(projector *pj);

/* ---- proj_read.c --------------------------------------------------------- */

/* The index in pj->parts of topic[partition], or -1. */
int proj_part_find(projector *pj, const char *topic, int32_t partition);
/* Read the messages of b into events and groups (no database, no Lua). */
void proj_prepare_batch(projector *pj, batch *b);
/* Does b need checkpoints from the database (neither cached nor
 * guessed)? */
int proj_needs_load(const projector *pj, const batch *b);
/* Read the checkpoints of b's aggregates the cache lacks (or guess them).
 * EVL_OK, EVL_ETRANSIENT or EVL_EFATAL (reason in err). */
evl_err proj_load_checkpoints(projector *pj, batch *b, char *err,
                              size_t errlen);

/* ---- proj_sql.c ---------------------------------------------------------- */

/* The error of an event parked behind an earlier parked event of its
 * aggregate (compared by address: such events are not logged). */
extern const char proj_behind_msg[];

/* PostgreSQL array literals built in an evl_buf. */
void proj_arr_reset(evl_buf *b);
void proj_arr_end(evl_buf *b);
void proj_arr_text(evl_buf *b, const char *s);

/* Halt ev's partition at ev (on_error = halt) for reason why. */
void proj_halt_part(projector *pj, const pev *ev, const char *why);
/* After states changed: events of halted partitions, group summaries. */
void proj_summarize(projector *pj, batch *b);
/* The offset to store for partition p after batch b, or -1. */
int64_t proj_part_next(const projector *pj, const batch *b, int p);
/* Queue the transaction of groups [lo, hi) (and the offsets when offs);
 * 0 when there was nothing to queue. Results: proj_range_result. */
int proj_range_send(projector *pj, batch *b, size_t lo, size_t hi, int offs);
evl_err proj_range_result(projector *pj, char *err, size_t errlen);
/* The cache learns the checkpoints of the touched groups in [lo, hi). */
void proj_remember(projector *pj, batch *b, size_t lo, size_t hi);
/* Groups [lo, hi) committed: the cache learns what they wrote. */
void proj_committed(projector *pj, batch *b, size_t lo, size_t hi);
/* The transaction shapes of the isolation modes (projector.h): aggregate
 * and batch, aggregate-tx. */
evl_err proj_exec_batch(projector *pj, batch *b, char *err, size_t errlen,
                        evl_err first);
evl_err proj_exec_per_aggregate(projector *pj, batch *b, char *err,
                                size_t errlen);

/* ---- proj_upsert.c ------------------------------------------------------- */

/* The shape index of st (an upsert or delete) in pj->shapes, added when
 * new; -1 for a plain statement. */
int proj_upsert_shape(projector *pj, const evl_luahost_stmt *st);
/* Look the shapes not yet looked up in the catalog (one query each; only
 * when the connection is idle, outside a pipeline). A failed lookup
 * leaves the shape to be sent row by row this time. */
void proj_upsert_resolve(projector *pj);
/* Prepare the multi-row statements (before the pipeline's first send). */
void proj_upsert_prepare(projector *pj);
/* A multi-row statement failed: look every shape up again. */
void proj_upsert_forget(projector *pj);
void proj_upsert_free(projector *pj);

/* The work of the touched groups in [lo, hi) in sending order, handed to
 * emit: statements (upserts and deletes of a shape coalesced into its
 * multi-row statement, tag TAG_COALESCED, unless b->percall) and parked
 * events (sql NULL, tag the event's index). The order of each
 * aggregate's statements holds (see the top of proj_upsert.c). Returns
 * the statements emitted. */
typedef void (*proj_upsert_emit)(void *ud, const char *sql, int n,
                                 const char *const *values, long tag);
int proj_upsert_plan(projector *pj, batch *b, size_t lo, size_t hi,
                     proj_upsert_emit emit, void *ud);
/* The multi-row statement of shape s with column types types (format_type
 * text, without []) into out (reset first, NUL-terminated). */
void proj_upsert_sql(evl_buf *out, const ushape *s, const char *const *types);

/* ---- proj_kafka.c -------------------------------------------------------- */

void proj_parts_clear(projector *pj);
/* Read every assigned partition again from evlua_offsets (after a swap);
 * 0 when a stop request cut it short. */
int proj_reassign(projector *pj);
/* Create the consumer (proj_subscribe subscribes it). EVL_OK, or
 * EVL_EPERMANENT (configuration) with the reason in err. */
evl_err proj_kafka_open(projector *pj, char *err, size_t errlen);
/* Has the consumer raised a fatal error? Logged once, when first seen
 * (kafka.c's error callback has logged the client's side of it). */
int proj_kafka_fatal(projector *pj);
/* Subscribe to the topics that are not missing. EVL_OK or
 * EVL_EPERMANENT. */
evl_err proj_subscribe(projector *pj, char *err, size_t errlen);
/* Before subscribing: look every topic up (creating missing ones when
 * configured to); remember those still missing. */
void proj_ensure_topics(projector *pj);
/* Between batches: subscribe again when missing topics appeared. Returns
 * 0, or 1 on a failure to subscribe (logged). */
int proj_check_missing(projector *pj);
/* After a reload, between batches (nothing in flight), before nh
 * replaces pj->host: when the projection's topics with the scripts nh
 * differ from the subscribed ones (a new aggregate type's events topic),
 * make the new ones usable as at start (created, or waited for) and
 * subscribe to the new list; the rebalance reads each partition from
 * evlua_offsets, a new topic from its start. Logged when it subscribes.
 * EVL_OK (also when nothing changed), or EVL_EPERMANENT with the reason
 * in err and the old topics and subscription kept. */
evl_err proj_resubscribe(projector *pj, evl_luahost *nh, char *err,
                         size_t errlen);
/* The topics of l joined with commas into buf (truncated to n). */
void proj_join_topics(const evl_strlist *l, char *buf, size_t n);

/* ---- proj_metrics.c ------------------------------------------------------ */

void proj_metrics_init(projector *pj);
/* Add what happened since the last call to the counters. */
void proj_metrics_publish(projector *pj);
/* Ready unless a topic is missing or a partition is halted. */
void proj_report_ready(projector *pj);
/* Refresh evlua_parked_aggregates (after a batch that parked, and every
 * 10 s). Only with nothing in flight on the connection. */
void proj_count_parked(projector *pj);
/* A transient failure: counted, readiness says why, logged with msg. */
void proj_log_retry(projector *pj, const char *msg, const char *reason,
                    int attempt, long ms);

#endif
