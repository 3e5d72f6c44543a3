/*
 * pg.h - evlua's PostgreSQL edge: connections, error classes, a
 * prepared-statement cache, pipelined execution and the evlua_* tables.
 *
 * Error classes are decided here and nowhere else (evl.h):
 *
 *   EVL_ETRANSIENT  a lost connection (no SQLSTATE), classes 08 (but not
 *                   08P01, a protocol error such as a wrong parameter
 *                   count, which a retry repeats), 53 (resources), 57P0x
 *                   (shutdown, crash, cannot connect now), 58 (I/O),
 *                   40001 (serialization failure) and 40P01 (deadlock),
 *                   55P03 (lock not available);
 *   EVL_EPERMANENT  everything else: classes 22 (data), 23 (constraints),
 *                   42 (syntax, undefined objects), 57014 (a statement
 *                   timeout repeats itself, so the aggregate is parked
 *                   rather than retried forever), ... and a statement
 *                   libpq refuses itself, before sending it, on a
 *                   connection that is still up (more than 65,535
 *                   parameters, out of memory): libpq would refuse it
 *                   on any connection.
 *
 * A connection is gone (transient) when PQstatus says so, or when a
 * result says so (class 08, ...); nothing else counts as a lost
 * connection.
 *
 * Pipelines (libpq pipeline mode): the caller sends statements and Sync
 * points, then collects. A segment is what lies between two Sync points;
 * an error aborts the rest of its segment (libpq delivers
 * PGRES_PIPELINE_ABORTED) and nothing else. Outside an explicit BEGIN a
 * segment is one implicit transaction, committed by its Sync.
 *
 * Prepared statements are cached per SQL text and connection (at most
 * EVL_PG_MAX_PREPARED; beyond that statements go unnamed). A new text is
 * prepared in a segment of its own at the start of the pipeline
 * (evl_pg_pipe_prepare), so a bad statement fails where it is used, with
 * the reason the server gave when preparing it, and never takes an
 * unrelated segment down.
 *
 * Does not: know about Kafka, projections or Lua; retry (the caller does,
 * with its own backoff); log (the caller logs where it handles errors).
 *
 * Uses libpq, buf.h and log/evl helpers.
 *
 * @locality a connection belongs to one thread at a time.
 */
#ifndef EVL_PG_H
#define EVL_PG_H

#include <stddef.h>

#include <libpq-fe.h>

#include "evl.h"
#include "buf.h"

typedef struct evl_pg evl_pg;

#define EVL_PG_MAX_PREPARED 1024

/* Connect to conninfo (key=value or URI). evlua's defaults go under the
 * user's settings (the user's win): application_name (appname, may be
 * NULL), connect_timeout=10, TCP keepalives after 10 s idle. Sets
 * client_encoding UTF8. On success EVL_OK and *out (owned; free with
 * evl_pg_close). Else EVL_EPERMANENT for a conninfo libpq cannot parse,
 * EVL_ETRANSIENT for anything else (unreachable, refused, starting up,
 * authentication), with libpq's message in err. Never logs the
 * password. */
evl_err evl_pg_open(const char *conninfo, const char *appname, evl_pg **out,
                    char *err, size_t errlen);

/* As evl_pg_open, with schema (may be NULL: as evl_pg_open) the only
 * schema on the connection's search_path, on every (re)connection: the
 * unqualified names of evlua's tables and of a projection's SQL resolve
 * there (a shadow rebuild). schema must be a lower-case SQL identifier. */
evl_err evl_pg_open_in(const char *conninfo, const char *appname,
                       const char *schema, evl_pg **out, char *err,
                       size_t errlen);

/* Close the connection and free everything; accepts NULL. */
void evl_pg_close(evl_pg *pg);

/* Drop the connection and connect again (same parameters); the
 * prepared-statement cache is emptied. Classes as evl_pg_open. */
evl_err evl_pg_reconnect(evl_pg *pg, char *err, size_t errlen);

/* The libpq connection (for PQ* reads; do not PQfinish it). */
PGconn *evl_pg_conn(const evl_pg *pg);

/* Is the connection usable (CONNECTION_OK and not broken mid-pipeline)? */
int evl_pg_ok(const evl_pg *pg);

/* The class of an error with this SQLSTATE (NULL or "" when the server
 * sent none); conn_ok says whether the connection survived it. */
evl_err evl_pg_classify(const char *sqlstate, int conn_ok);

/* Classify a failed result (res may be NULL: no result at all) on pg and
 * write "what: message [SQLSTATE]" into err. Returns EVL_OK when res
 * succeeded (COMMAND_OK or TUPLES_OK). */
evl_err evl_pg_check(evl_pg *pg, const PGresult *res, const char *what,
                     char *err, size_t errlen);

/* PQexec: simple protocol, may hold several statements (one implicit
 * transaction unless they contain BEGIN/COMMIT). */
evl_err evl_pg_exec(evl_pg *pg, const char *sql, char *err, size_t errlen);

/* PQexecParams with text parameters (values[i] NULL for SQL NULL). On
 * EVL_OK and out non-NULL, *out is the result (owned; PQclear it). A
 * statement libpq refuses is EVL_EPERMANENT; note that it was not sent,
 * so an explicit transaction around it is not aborted: roll back. */
evl_err evl_pg_query(evl_pg *pg, const char *sql, int nparams,
                     const char *const *values, PGresult **out, char *err,
                     size_t errlen);

/* evl_pg_exec and evl_pg_query keeping the result whatever its status,
 * for callers that show the server's own answer (rows, command status,
 * error fields): the REPL's :db, the spec helpers' db:exec. *out is the
 * result (of the last statement, for evl_pg_exec_result), owned: PQclear
 * it on every path; NULL when the connection was already gone or libpq
 * could not make one. Returns and classes as evl_pg_exec/evl_pg_query. */
evl_err evl_pg_exec_result(evl_pg *pg, const char *sql, PGresult **out,
                           char *err, size_t errlen);
evl_err evl_pg_query_result(evl_pg *pg, const char *sql, int nparams,
                            const char *const *values, PGresult **out,
                            char *err, size_t errlen);

/* Create evlua's tables and function when missing (idempotent, safe to
 * run from several threads and processes at once: serialized by an
 * advisory lock):
 *   evlua_checkpoints (projection, aggregate_type, aggregate_id, sequence,
 *                      parked)
 *   evlua_offsets     (projection, topic, partition, next_offset)
 *   evlua_parked      (id, projection, aggregate_type, aggregate_id,
 *                      sequence, event_type, topic, partition, offset,
 *                      event, error, parked_at)
 *   evlua_pins        (projection, script_hash, script, pinned_at)
 *   evlua_fences      (projection, epoch, script_hash, script)
 *   evlua_advance_checkpoints(...) - see EVL_PG_ADVANCE_SQL;
 *   evlua_load_checkpoints(p, types, ids) - see
 *                                     EVL_PG_LOAD_CHECKPOINTS_SQL;
 *   evlua_checkpoint_conflict(p, n) - raises the 40001 of a moved
 *                                     checkpoint;
 *   evlua_fence(p, epoch)           - see EVL_PG_FENCE_SQL.
 */
evl_err evl_pg_create_tables(evl_pg *pg, char *err, size_t errlen);

/* Run sql (DDL, maybe several statements) under the same advisory lock,
 * so instances starting together do not race on CREATE ... IF NOT
 * EXISTS. */
evl_err evl_pg_exec_locked(evl_pg *pg, const char *sql, char *err,
                           size_t errlen);

/* The statements projectors write their bookkeeping with (parameters as
 * documented next to each). */

/* $1 projection, $2 text[] types, $3 text[] ids, $4 bigint[] previous
 * sequences (-1: no row yet), $5 boolean[] previous parked flags, $6
 * bigint[] new sequences, $7 boolean[] new parked flags. Moves each row
 * from (previous) to (new) in one statement; if any row is not at its
 * previous value (another instance, `evlua parked` or a reset moved it),
 * raises SQLSTATE 40001, so the whole transaction is retried on fresh
 * values: checkpoints are optimistic locks. */
#define EVL_PG_ADVANCE_SQL                                                     \
    "SELECT evlua_advance_checkpoints($1, $2::text[], $3::text[], "            \
    "$4::bigint[], $5::boolean[], $6::bigint[], $7::boolean[])"

/* The same for one aggregate, without the function call (cheaper when
 * every aggregate commits on its own): $1 projection, $2 type, $3 id, $4
 * previous sequence (-1: no row yet), $5 previous parked, $6 new
 * sequence, $7 new parked. */
#define EVL_PG_ADVANCE_ONE_SQL                                                 \
    "WITH u AS (UPDATE evlua_checkpoints SET sequence = $6::bigint, "          \
    "parked = $7::boolean WHERE $4::bigint >= 0 AND projection = $1 AND "      \
    "aggregate_type = $2 AND aggregate_id = $3 AND sequence = $4::bigint "     \
    "AND parked = $5::boolean RETURNING 1), "                                  \
    "i AS (INSERT INTO evlua_checkpoints (projection, aggregate_type, "        \
    "aggregate_id, sequence, parked) SELECT $1, $2, $3, $6::bigint, "          \
    "$7::boolean WHERE $4::bigint < 0 ON CONFLICT DO NOTHING RETURNING 1) "    \
    "SELECT CASE WHEN (SELECT count(*) FROM u) + (SELECT count(*) FROM i) = "  \
    "1 "                                                                       \
    "THEN 0 ELSE evlua_checkpoint_conflict($1, 1) END"

/* $1 projection, $2 the epoch the projector read (0: no row): the first
 * statement of every transaction a projector writes. Fails with SQLSTATE
 * EV001 once `projection swap` has moved the tables since (evlua_fence,
 * EVL_PG_EPOCH_SQL). */
#define EVL_PG_FENCE_SQL "SELECT evlua_fence($1, $2::bigint)"

/* $1 projection: the swap epoch (0 when never swapped) and the pinned
 * script version (NULLs when none), read together. */
#define EVL_PG_EPOCH_SQL                                                       \
    "SELECT coalesce((SELECT epoch FROM evlua_fences WHERE projection = "      \
    "$1), 0), p.script_hash, p.script FROM (SELECT 1) x LEFT JOIN "            \
    "evlua_pins p ON p.projection = $1"

/* $1 projection, $2 script hash, $3 script file: the version a
 * projector loaded (at start, reload and after a swap), leaving the
 * epoch alone. */
#define EVL_PG_VERSION_SQL                                                     \
    "INSERT INTO evlua_fences (projection, script_hash, script) VALUES ($1, "  \
    "$2, $3) ON CONFLICT (projection) DO UPDATE SET script_hash = "            \
    "EXCLUDED.script_hash, script = EXCLUDED.script WHERE "                    \
    "evlua_fences.script_hash IS DISTINCT FROM EXCLUDED.script_hash"

/* The swap's side: taken first in its transaction, it waits for the
 * projectors' transactions in progress and holds off new ones. $1
 * projection. */
#define EVL_PG_SWAP_LOCK_SQL                                                   \
    "SELECT pg_advisory_xact_lock(hashtextextended('evlua fence ' || $1, "     \
    "0))"

/* $1 projection, $2 text[] topics, $3 integer[] partitions, $4 bigint[]
 * next offsets; an offset never moves back. */
#define EVL_PG_OFFSETS_SQL                                                     \
    "INSERT INTO evlua_offsets (projection, topic, partition, next_offset) "   \
    "SELECT $1, u.t, u.p, u.o FROM unnest($2::text[], $3::integer[], "         \
    "$4::bigint[]) AS u(t, p, o) "                                             \
    "ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = "  \
    "GREATEST(evlua_offsets.next_offset, EXCLUDED.next_offset)"

/* $1 projection, $2 aggregate_type, $3 aggregate_id, $4 sequence (NULL
 * when unknown), $5 event_type, $6 topic, $7 partition, $8 offset,
 * $9 event, $10 error. A message parked twice (a replay) stays once. */
#define EVL_PG_PARK_SQL                                                        \
    "INSERT INTO evlua_parked (projection, aggregate_type, aggregate_id, "     \
    "sequence, event_type, topic, partition, \"offset\", event, error) "       \
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "                        \
    "ON CONFLICT (projection, topic, partition, \"offset\") DO NOTHING"

/* $1 projection, $2 text[] types, $3 text[] ids: the checkpoints of
 * those aggregates that have one (aggregate_type, aggregate_id, sequence,
 * parked). */
#define EVL_PG_LOAD_CHECKPOINTS_SQL                                            \
    "SELECT * FROM evlua_load_checkpoints($1, $2::text[], $3::text[])"

/* ---- pipelines ----------------------------------------------------------- */

/* Enter pipeline mode. Returns EVL_ETRANSIENT when the connection is
 * gone. */
evl_err evl_pg_pipe_begin(evl_pg *pg, char *err, size_t errlen);

/* Make sure sql is prepared before the segments that use it: known texts
 * cost nothing; a new one is prepared in a segment of its own. Call for
 * every statement text before the first evl_pg_pipe_send of the
 * pipeline. */
void evl_pg_pipe_prepare(evl_pg *pg, const char *sql);

/* Queue sql with n text parameters (values[i] NULL for SQL NULL). tag is
 * the caller's name for the statement, handed back on error. Failures
 * to send surface in evl_pg_pipe_end: a lost connection as
 * EVL_ETRANSIENT; a statement libpq refuses (more than 65,535
 * parameters, ...) as its segment's permanent failure, tagged tag, with
 * libpq's message and no SQLSTATE: the segment is aborted on the server
 * as for any failing statement (a stand-in that fails is sent in its
 * place), so nothing of it commits. */
void evl_pg_pipe_send(evl_pg *pg, const char *sql, int n,
                      const char *const *values, long tag);

/* Send what is queued now (the server starts on it) without reading
 * results; evl_pg_pipe_end reads them later. EVL_ETRANSIENT when the
 * connection is gone. */
evl_err evl_pg_pipe_flush(evl_pg *pg, char *err, size_t errlen);

/* End the current segment (a Sync point); seg names it. */
void evl_pg_pipe_sync(evl_pg *pg, long seg);

/* The first error of a failed segment: seg and tag as given, its class,
 * SQLSTATE ("" when none) and message (for a statement whose preparation
 * failed, the reason the server gave then). */
/* The tag of a failure at a Sync point itself: an implicit transaction
 * whose commit failed (a deferred constraint). */
#define EVL_PG_TAG_SYNC (-999999L)

typedef struct evl_pg_failure {
    long seg;
    long tag;
    evl_err cls;
    const char *sqlstate;
    const char *msg;
} evl_pg_failure;

typedef void (*evl_pg_on_failure)(void *ud, const evl_pg_failure *f);

/* Flush, read every result and leave pipeline mode. on_failure (may be
 * NULL) is called once per failed segment, in order. Returns EVL_OK when
 * every segment succeeded; EVL_ETRANSIENT when the connection broke (the
 * outcome of segments without a result is unknown: no callbacks for
 * them) or some segment failed transiently; else EVL_EPERMANENT. On
 * EVL_ETRANSIENT err says why. */
evl_err evl_pg_pipe_end(evl_pg *pg, evl_pg_on_failure on_failure, void *ud,
                        char *err, size_t errlen);

/* ---- helpers ---------------------------------------------------------------
 */

/* Append s (len bytes) as one element of a PostgreSQL array literal:
 * '{' before the first element (first non-zero), ',' before the others,
 * the element double-quoted with " and \ escaped. Close with
 * evl_buf_putc(b, '}'), and terminate with '\0' before binding it. */
void evl_pg_array_add(evl_buf *b, const char *s, size_t len, int first);

#endif
