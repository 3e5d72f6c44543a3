/*
 * projector.h - the projection side: events from Kafka -> a Lua
 * projection -> SQL in PostgreSQL, with an exactly-once effect.
 *
 * One projector runs one projection on its own thread, with its own Lua
 * host (built from the prototype with evl_luahost_reload), its own
 * consumer in group evlua.projection.NAME and its own PostgreSQL
 * connection; projection.threads > 1 runs that many such projectors,
 * members of the same group, which Kafka gives disjoint partitions (all
 * events of an aggregate are in one partition, so each aggregate still
 * has one writer, in order). With the config's `instance` each consumer
 * is a static member of its group (kafka.h: group.instance.id
 * "<instance>.proj.NAME.<thread>"). Per batch (up to
 * projection.batch_size events, waiting at most projection.linger_ms for
 * it to fill):
 *
 *   1. events whose evlua-type header the projection has no handler for
 *      are dropped unparsed (their offsets still advance);
 *   2. the rest are grouped by aggregate (aggregate_type, aggregate_id),
 *      order kept; events at or below the aggregate's checkpoint are
 *      skipped (so replays are harmless), events of a parked aggregate go
 *      straight to evlua_parked;
 *   3. each remaining event runs through the projection's handler;
 *   4. the statements, the parked events, the new checkpoints (one
 *      statement for the batch) and the offsets (one statement) are sent
 *      pipelined, with prepared statements, in the isolation mode's
 *      transaction shape:
 *        aggregate     one transaction per batch; a statement that fails
 *                      permanently names its aggregate (pipelining tells
 *                      which statement failed), which is parked from that
 *                      event on while the batch is re-run without it. No
 *                      SAVEPOINTs (so no 64-subtransaction cliff); after
 *                      two failing aggregates in one batch the re-runs
 *                      commit the part before each failure (linear, not
 *                      quadratic, in poison events);
 *        batch         the same, but the batch is always committed whole:
 *                      one re-run per failing aggregate;
 *        aggregate-tx  one transaction per aggregate, all of a batch's
 *                      transactions in one pipeline; offsets after them;
 *      an error no statement can be blamed for (at COMMIT: a deferred
 *      constraint) is narrowed down by bisecting the batch's aggregates;
 *   5. after the DB commit, the Kafka offsets are committed (the DB's
 *      evlua_offsets is the truth: on assignment each partition is sought
 *      to it, or to the beginning when it has none).
 *
 * Checkpoints are optimistic locks (pg.h EVL_PG_ADVANCE_SQL): two
 * instances, a zombie, `evlua parked` or a reset touching the same
 * aggregate make one transaction fail with 40001 and be re-read, never
 * apply an event twice.
 *
 * Errors: transient ones (pg.h) roll back, reconnect when needed and
 * retry the batch with capped exponential backoff (100 ms .. 10 s), each
 * retry logged with its reason; nothing is skipped. Permanent ones follow
 * the projection's on_error: "park" (the event and every later event of
 * its aggregate go to evlua_parked, in order, with the error, topic,
 * partition, offset and event JSON; the others go on, offsets advance)
 * or "halt" (that partition stops at the event: nothing of it at or past
 * the event is committed, the partition is paused and an error logged;
 * SIGHUP with fixed scripts resumes it).
 *
 * Topics: before subscribing, a projector looks its topics up; a missing
 * one is created with the command side's settings when
 * commands.create_topics is on (else it is subscribed to once it exists,
 * looked for every 2 s), and readiness names it until then: a consumer
 * subscribed to a missing topic would see it only at its next metadata
 * refresh, minutes later.
 *
 * Between batches: SIGHUP reloads the scripts (the projection's schema is
 * run again; when the projection's topics follow from the aggregate
 * scripts and the reload changes them, the consumer subscribes to the new
 * ones first; on any failure the loaded set stays); the stop flag
 * (lifecycle.h) finishes the batch in flight, commits, closes and
 * returns.
 *
 * Uses pg, luahost, config, log, lifecycle, metrics, lag and kafka (which
 * builds its clients) over librdkafka. Does not produce to Kafka. Made of
 * projector.c and proj_*.c around projector_int.h, which maps them.
 *
 * @locality each projector on its own thread; nothing shared but the
 * read-only config and prototype host.
 */
#ifndef EVL_PROJECTOR_H
#define EVL_PROJECTOR_H

#include "config.h"
#include "luahost.h"
#include "pg.h"

/* Run projection `projection` until evl_lifecycle_stopping(). Returns the
 * exit code: 0 after a clean stop, 1 on a runtime failure (a fatal Kafka
 * error, a failing bookkeeping statement), 2 on a configuration problem
 * (unknown projection, no topics, bad Kafka property, bad conninfo, a
 * schema that fails). A database that cannot be reached is waited for.
 * @locality its own thread (cfg and proto are only read). */
int evl_projector_run(const evl_config *cfg, const evl_luahost *proto,
                      const char *projection);

/* Progress of a run that stops once caught up. */
typedef struct evl_projector_progress {
    long long done;  /* messages consumed since assignment */
    long long total; /* messages between assignment and the end offsets */
    double rate;     /* messages per second so far */
    double eta;      /* seconds left, or -1 when unknown */
} evl_projector_progress;

/* Counters of one run (all messages, whatever happened to them). */
typedef struct evl_projector_stats {
    long long messages; /* consumed */
    long long applied;  /* events whose statements committed */
    long long skipped;  /* not handled by the projection (header) */
    long long replayed; /* at or below their checkpoint */
    long long parked;   /* written to evlua_parked */
    long long batches;  /* committed batches */
    long long retries;  /* transient errors retried */
    long long statements;
    double seconds; /* from the first message consumed to the last commit */
} evl_projector_stats;

typedef struct evl_projector_opts {
    /* Stop (exit 0) once every assigned partition has been read up to the
     * end offset it had at assignment (rebuilds, benchmarks, tests). */
    int until_caught_up;
    /* Called about every 200 ms and once at the end (may be NULL). */
    void (*progress)(void *ud, const evl_projector_progress *p);
    void *ud;
    /* Overrides of the projection's settings (NULL / 0: configured). */
    const char *isolation;
    const char *on_error;
    int batch_size;
    int threads; /* projector threads (0: projection.threads) */
    /* A failure stops this projection only, not the process (a projection
     * that `evlua run` started at a reload: cli_run.c). */
    int alone;
    /* A shadow rebuild (cli_shadow.c): the consumer group instead of the
     * configured one, and the only schema on the search_path, where the
     * projection's tables and evlua's own (checkpoints, offsets, parked)
     * are created and written. NULL: the configured group, the
     * connection's search_path. */
    const char *group;
    const char *schema;
    /* Filled at the end of the run (may be NULL); with several threads,
     * their sums (seconds: from the first message of any to the last
     * commit of any). */
    evl_projector_stats *stats;
} evl_projector_opts;

/* evl_projector_run with options (opts may be NULL). */
int evl_projector_run_opts(const evl_config *cfg, const evl_luahost *proto,
                           const char *projection,
                           const evl_projector_opts *opts);

/* The consumer group of projection name under cfg (its group_id, or
 * group_prefix .. name) into buf. */
void evl_projector_group(const evl_config *cfg, const char *name, char *buf,
                         size_t n);

/* The topics projection name reads: its configured topics, else the
 * events topic of every aggregate type of host. Fills out (free with
 * evl_projector_topics_free); returns the count (0: nothing to read). */
int evl_projector_topics(const evl_config *cfg, const evl_luahost *host,
                         const char *name, evl_strlist *out);
void evl_projector_topics_free(evl_strlist *l);

/* The database half of `evlua projection reset NAME`, in one
 * transaction: the projection's reset statements (luahost), then its
 * checkpoints, offsets and parked events deleted. Returns EVL_OK, or the
 * class with the reason in err. */
evl_err evl_projector_reset_db(evl_pg *pg, evl_luahost *host,
                               const char *projection, char *err,
                               size_t errlen);

/* The Kafka half: delete consumer group `group` (its committed offsets go
 * with it). Refuses, with EVL_EPERMANENT and "... has N active members"
 * style text in err, while the group has members: stop the projectors
 * first. A group that does not exist is fine. */
evl_err evl_projector_reset_group(const evl_config *cfg, const char *group,
                                  char *err, size_t errlen);

#endif
