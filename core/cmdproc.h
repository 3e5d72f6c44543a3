/*
 * cmdproc.h - the command side: commands -> Lua aggregates -> events, in
 * one Kafka transaction per poll batch, exactly once.
 *
 * One loop for every aggregate type: a consumer in group
 * commands.group_id subscribes to the commands topic of each loaded type
 * (read_committed, no auto commit, an eager assignor), and transactional
 * producers (idempotent, partitioner murmur2_random) write for all of
 * them: two, taking turns transaction by transaction, with the stable ids
 * commands.transactional_id and commands.transactional_id .. ".alt" (a
 * producer cannot begin its next transaction until the coordinator has
 * written the markers of its last one; the other one can). One loop keeps
 * one open transaction and one consumer-group membership per process,
 * which is what Kafka's exactly-once protocol is built around; types
 * scale out by partitions and instances, not threads.
 *
 * Per batch (up to commands.batch_size commands: those already received,
 * closing as soon as none is left, or with commands.linger_ms > 0 waiting
 * up to that long after the first one for more):
 *   1. decide: for each command in order, parse and validate it (decoded
 *      once, in the Lua host's state), then run the aggregate's handle
 *      (Lua) on the state from the store, and queue its events, its
 *      result, and the store update. Nothing is sent yet, so the Kafka
 *      transaction never waits for Lua.
 *   2. write: begin the transaction; produce each event (key = aggregate
 *      id, the DESIGN envelope, headers evlua-type, evlua-aggregate-type,
 *      content-type) to {type}.events, one snapshot per touched aggregate
 *      to {type}.state, one result per command to {type}.results, all to
 *      the partition number the command came from; send the batch's
 *      offsets with the consumer group's metadata; commit.
 * A transaction that needs an abort is aborted, the store rolls back to
 * its committed states, the consumer seeks back to the batch's first
 * offsets and the batch is read and decided again. A fatal error (fenced
 * by a newer instance with the same transactional.id) ends the loop with 1.
 * A producer fenced because the broker timed out its own transaction (it
 * was cut off from the broker, or stalled, for longer than
 * transaction.timeout.ms: told apart by the transaction's age, see
 * txn.c) is not fatal: it is rebuilt with the same transactional.id,
 * the store is dropped and the partitions held are restored and read
 * again from their committed offsets, and the loop goes on (logged:
 * "our transaction timed out while the broker was unreachable").
 *
 * Partitions: on assignment the committed offsets are fetched (stable:
 * pending transactions settle first), then the states of the assigned
 * partitions are read from {type}.state up to its high watermark
 * (read_committed, waiting out any transaction still open there) before
 * any command is consumed; on revocation they are dropped.
 *
 * At start the events, state and results topics of each type must exist
 * with the commands topic's partition count; with commands.create_topics
 * evlua creates what is missing (the commands topic with
 * commands.partitions, the state topic compacted).
 *
 * Metrics (metrics.h): evlua_commands_total{aggregate_type,outcome},
 * evlua_events_total{aggregate_type}, evlua_command_transactions_total
 * {outcome="committed"|"aborted"}, evlua_command_batch_seconds; readiness
 * component "commands" (not ready while starting or restoring states).
 *
 * Test hooks (testhooks.h; compiled only into test builds, never set
 * them in production), N counts the transactions of the process from 1:
 * EVLUA_TEST_FAIL_BEFORE_COMMIT=N makes the N-th transaction fail after
 * its records reached the broker and before its commit, as if the commit
 * had needed an abort; EVLUA_TEST_HANG_BEFORE_COMMIT=N makes the process
 * hang there instead, with the transaction open (a crash in
 * mid-transaction, once killed); EVLUA_TEST_FAIL_IN_FLIGHT=N makes the
 * committer hold the N-th transaction 1.5 s after sending its offsets,
 * then fail it; EVLUA_TEST_HOLD_FILE=PATH: when PATH exists as a
 * transaction is about to commit, it is removed, the transaction's
 * records are flushed (so the broker knows the transaction) and it is
 * held open for 2 s (the partition test cuts the network then).
 *
 * Built from the pipeline layer: pipeline.h (the loop, readiness, reload
 * between batches), txn.h (the transactions), kafka.h (the clients);
 * cmdproc_int.h maps its own files (cmd_topics.c, cmd_restore.c,
 * cmd_decide.c, cmd_commit.c).
 *
 * Uses pipeline, txn, kafka, envelope, store, luahost, luaapi, lifecycle,
 * metrics, testhooks, log.
 *
 * @locality runs on the calling thread, which it keeps until the stop.
 */
#ifndef EVL_CMDPROC_H
#define EVL_CMDPROC_H

#include "config.h"
#include "luahost.h"

/* Run the command side until evl_lifecycle_stopping() (SIGTERM, SIGINT,
 * or another pipeline's failure). Builds its own host from proto
 * (evl_luahost_reload) and swaps in a reloaded set on SIGHUP between
 * transactions. Returns the exit code: 0 after a clean stop, 1 on a
 * runtime failure (fenced by a newer instance, Kafka unreachable at
 * start), 2 on a configuration problem (missing topics with create_topics
 * = false, mismatched partition counts, an invalid Kafka property, no
 * broker configured). */
int evl_cmdproc_run(const evl_config *cfg, const evl_luahost *proto);

#endif
