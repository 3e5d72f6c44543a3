/*
 * store.h - the command side's in-memory aggregate states.
 *
 * For every commands-topic partition the process owns, the store holds
 * each aggregate's state (JSON text from the Lua host), its version
 * (events so far) and the ids of its last N accepted commands (to answer
 * `duplicate`). A partition is named by (aggregate type, partition
 * number): the events, state and results topics of a type share the
 * commands topic's partitioning, so this pair names one slice of all four.
 *
 * Transactions: between evl_store_begin() and evl_store_commit() /
 * evl_store_rollback(), every aggregate changed by evl_store_put() is
 * remembered as it was (copy on write: the old state text is kept, not
 * copied), so a Kafka transaction that aborts leaves the store exactly as
 * it was committed. The touched aggregates are also the list of snapshots
 * the transaction must write.
 *
 * Snapshots (the value of a record on the compacted {type}.state topic,
 * keyed by aggregate id) are JSON:
 *
 *   {"aggregate_type":"customer","aggregate_id":"c-1","version":3,
 *    "command_ids":["...oldest", "...newest"],"state":{...}}
 *
 * "state" is the Lua host's JSON, copied verbatim both ways (it is not
 * re-encoded, so integers stay integers and floats floats).
 *
 * Memory: about (state + 130 + N * (command id + 9)) bytes per aggregate
 * once it holds N = dedup_ids ids, as evl_store_bytes() counts it (a
 * 40-byte state with 100 UUIDs: 4.7 KB); malloc's overhead adds ~50-90
 * (tests/bench/bench_store.c prints both; docs/command-side.md).
 *
 * Does not: talk to Kafka, run Lua, decide anything.
 *
 * Uses buf.h (snapshots are written into an evl_buf), json.h (restoring
 * reads them with evl_json_members), envelope.h's string writer and
 * evl.h's hash.
 *
 * @locality one thread (the command processor's).
 */
#ifndef EVL_STORE_H
#define EVL_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "evl.h"
#include "buf.h"

typedef struct evl_store evl_store;
typedef struct evl_store_agg evl_store_agg;

/* A new, empty store remembering the last dedup_ids accepted command ids
 * per aggregate (0: none, so no duplicate is ever detected). Returns owned;
 * free with evl_store_free(). */
evl_store *evl_store_new(int dedup_ids);

/* Frees everything (an open transaction is rolled back first); accepts
 * NULL. */
void evl_store_free(evl_store *s);

/* Forget the aggregates of (type, partition); partition -1: every
 * partition of type; type NULL: everything. An open transaction is rolled
 * back first (a revoked partition's half-done work must not survive). */
void evl_store_drop(evl_store *s, const char *type, int32_t partition);

/* Number of aggregates held for (type, partition), with the same wildcards
 * as evl_store_drop. */
size_t evl_store_count(const evl_store *s, const char *type, int32_t partition);

/* Heap bytes held by the aggregates of (type, partition), same wildcards:
 * their ids, states, remembered command ids and tables, as requested from
 * malloc (its per-block overhead is not counted). The undo copies of an
 * open transaction are not counted either. 0 after evl_store_drop(). */
size_t evl_store_bytes(const evl_store *s, const char *type, int32_t partition);

/* The aggregate, or NULL when the store has none (no events yet: version
 * 0, initial state). Valid until the next put, rollback or drop. */
evl_store_agg *evl_store_get(evl_store *s, const char *type, int32_t partition,
                             const char *id);

long long evl_store_version(const evl_store_agg *a);
/* The state JSON (NUL-terminated) and its length; NULL when none. */
const char *evl_store_state(const evl_store_agg *a, size_t *len);
const char *evl_store_id(const evl_store_agg *a);
/* Is command_id among the aggregate's remembered command ids? a may be
 * NULL (then: no). */
int evl_store_seen(const evl_store_agg *a, const char *command_id);

/* Start remembering changes. Calling it again while open is a no-op. */
void evl_store_begin(evl_store *s);

/* Set the aggregate's state (copied; NULL: none), version, and, when
 * command_id is non-NULL, remember it as the newest accepted command id.
 * Creates the aggregate when needed. Returns it. */
evl_store_agg *evl_store_put(evl_store *s, const char *type, int32_t partition,
                             const char *id, const char *state,
                             size_t state_len, long long version,
                             const char *command_id);

/* The aggregates put since evl_store_begin() (or the last seal), in
 * first-touch order:
 * i from 0 to evl_store_ntouched() - 1. *type and *partition name the
 * aggregate's partition (pointers valid while it is held). */
size_t evl_store_ntouched(const evl_store *s);
const evl_store_agg *evl_store_touched(const evl_store *s, size_t i,
                                       const char **type, int32_t *partition);

/* Keep the changes / undo them; either closes the transaction (both
 * levels, when one is sealed). */
void evl_store_commit(evl_store *s);
void evl_store_rollback(evl_store *s);

/* Two transactions at once: seal the open one (it becomes the older
 * level, still undoable) and open a newer one on top, whose changes
 * evl_store_ntouched() / evl_store_touched() then list. Opens one when
 * none is. Sealing again merges the open level into the sealed one.
 * evl_store_commit_sealed() keeps the older level's changes and leaves the
 * newer open; evl_store_rollback() undoes both. */
void evl_store_seal(evl_store *s);
void evl_store_commit_sealed(evl_store *s);

/* Append the snapshot JSON of a (of aggregate type `type`) to out. */
void evl_store_snapshot(const evl_store_agg *a, const char *type, evl_buf *out);

/* Load one record of the state topic into (type, partition): key is the
 * aggregate id; value NULL (a tombstone) forgets it. The record is read by
 * evl_json_members, which checks text exactly as the scripts' decoder does
 * (no control bytes, valid UTF-8, exact integers), so every snapshot
 * written from a restored state can be restored again. Returns EVL_OK, or
 * EVL_EPERMANENT when the value is not a snapshot (err says why; the store
 * is unchanged): the caller must not go on with that partition, or its
 * aggregate would run from an older state. Not inside a transaction. */
evl_err evl_store_restore(evl_store *s, const char *type, int32_t partition,
                          const char *key, size_t keylen, const char *value,
                          size_t len, char *err, size_t errlen);

#endif
