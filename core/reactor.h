/*
 * reactor.h - the reaction side: events of other (or its own) aggregate
 * types -> an aggregate's Lua `react` table -> commands to its commands
 * topic, exactly once, in one Kafka transaction per batch.
 *
 * One reactor runs per aggregate type T whose script has a non-empty
 * `react` table (when reactions.enabled), on its own thread with its own
 * Lua host (built from the prototype with evl_luahost_reload). It consumes
 * the events topic of every source type SRC named in T's react keys
 * ("SRC.EventName") in consumer group <reactions.group_prefix>T
 * (read_committed, manual offsets, an eager assignor) and writes with one
 * transactional producer (transactional.id
 * <commands.transactional_id>.react.T, partitioner murmur2_random, the
 * one `evlua send` and the command side use). Per batch (up to
 * reactions.batch_size events):
 *
 *   1. an event whose evlua-type / evlua-aggregate-type headers name no
 *      react key of T is skipped unread (its offset still advances);
 *   2. an event of a parked source aggregate is parked behind the first
 *      one (below), in order;
 *   3. the others run through evl_luahost_react: each command goes to
 *      T.commands keyed by its aggregate id, with the deterministic id
 *      derived from the event id, so a reaction produced twice (a crash,
 *      a replay) is a `duplicate` at the aggregate, never a second effect;
 *   4. begin, produce the commands and the parking records, send the
 *      batch's offsets, commit: a batch's commands, its parking and its
 *      offsets become visible together or not at all.
 * A transaction that needs an abort is aborted, the consumer seeks back
 * to the batch and it is decided again (capped back-off); a producer
 * fenced by its own transaction's timeout is rebuilt (txn.h); a fence by
 * a newer instance ends the reactor with 1.
 *
 * Parking (reactions.on_error = park, the default): a reaction that fails
 * (a Lua error, an invalid command, more than reactions.max_commands)
 * parks its source aggregate: the event and every later event of that
 * aggregate go to the topic <reactions.parked_topic> (one partition,
 * kept forever), in the same transaction as the offsets, so parking is
 * exactly once with no second system and a reactor needs no database.
 * `evlua parked retry|drop --reactions` writes a request there; the
 * reactor holding the source aggregate's partition acts on it (a retry
 * re-runs the parked events in order with the current scripts) and writes
 * the outcome in the transaction that sends the released events'
 * commands. The reactor folds the whole topic at start, and again after
 * an aborted transaction, so what it holds in memory is what is
 * committed. reactions.on_error = halt: the error is logged and the
 * reactor ends with 1, its batch not committed.
 *
 * Metrics: evlua_reactions_total{type,outcome="reacted"|"none"|"parked"},
 * evlua_reaction_commands_total{type}, evlua_reactions_parked{type}
 * (parked source aggregates), evlua_reaction_transactions_total
 * {type,outcome}; readiness component "reactions.T"; a summary line every
 * EVL_PIPELINE_TICK_MS.
 *
 * Built on pipeline.h (the loop), txn.h (the transactions) and kafka.h
 * (the clients); reactor_int.h maps its files.
 *
 * Uses pipeline, txn, kafka, luahost, json, envelope, lifecycle, metrics,
 * lag, log. Does not talk to PostgreSQL.
 *
 * @locality evl_reactor_run keeps the calling thread until the stop; the
 * other functions run on any thread.
 */
#ifndef EVL_REACTOR_H
#define EVL_REACTOR_H

#include <stdio.h>

#include "config.h"
#include "evl.h"
#include "luahost.h"

/* Does aggregate type `type` of host have a non-empty react table? */
int evl_reactor_reacts(const evl_luahost *host, const char *type);

/* Run type's reactor until evl_lifecycle_stopping(). Returns the exit
 * code: 0 after a clean stop, 1 on a runtime failure (fenced, Kafka
 * unreachable at start, a failing reaction under on_error = halt), 2 on
 * a configuration problem (no Kafka, a missing topic without
 * commands.create_topics, no react table). */
int evl_reactor_run(const evl_config *cfg, const evl_luahost *proto,
                    const char *type);

/* type's consumer group ("evlua.react.shipment") into buf. */
void evl_reactor_group(const evl_config *cfg, const char *type, char *buf,
                       size_t n);

/* The events topics type's reactor reads (one per source type of its
 * react keys, sorted, unique) into out (owned: free with
 * evl_reactor_topics_free). */
void evl_reactor_topics(const evl_config *cfg, const evl_luahost *host,
                        const char *type, evl_strlist *out);
void evl_reactor_topics_free(evl_strlist *l);

/* ---- parked reactions (the operator's side: `evlua parked --reactions`) */

/* Print one block per parked source aggregate of type's reactions to out:
 *
 *   reactions shipment customer/c-17: 3 events, customer.events[2]@118..130,
 *     parked since 2026-01-01T12:00:00.000Z
 *     error: aggregates/shipment.lua: react.customer.X: ...
 *
 * and one line per request no reactor has answered yet. *naggregates
 * (may be NULL) gets the count. EVL_OK; EVL_EPERMANENT when the parked
 * topic does not exist (no reactor of type has run); EVL_ETRANSIENT when
 * Kafka did not answer. */
evl_err evl_reactor_parked_list(const evl_config *cfg, const char *type,
                                FILE *out, long long *naggregates, char *err,
                                size_t errlen);

/* What a reactor answered to a retry or drop. */
typedef struct evl_reactor_released {
    int answered;               /* 0: no answer within the wait */
    long long applied, dropped; /* events released / dropped */
    long long remaining;        /* still parked afterwards */
    char error[EVL_ERRLEN];     /* why a retried event failed again */
    char request_id[40];
} evl_reactor_released;

/* Ask the reactors of type to retry (kind "retry") or drop ("drop") the
 * parked events of source aggregate src_type/src_id: write the request
 * (an idempotent producer), then wait up to wait_ms for the reactor's
 * answer into *out. EVL_OK (see out->answered), EVL_EPERMANENT when
 * nothing of src_type/src_id is parked, or when the topic does not exist,
 * EVL_ETRANSIENT when Kafka failed. */
evl_err evl_reactor_parked_request(const evl_config *cfg, const char *type,
                                   const char *kind, const char *src_type,
                                   const char *src_id, int wait_ms,
                                   evl_reactor_released *out, char *err,
                                   size_t errlen);

#endif
