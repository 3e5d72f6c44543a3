/*
 * parked.h - what happens to parked events after they were parked: list
 * them, re-run them with the current scripts, or drop them.
 *
 * A projector parks an aggregate when one of its events fails
 * permanently: that event and every later one of the aggregate go to
 * evlua_parked in order, and the aggregate's checkpoint row says
 * parked = true, so later events follow them there (projector.h). Every
 * change made here goes through the same checkpoint row (locked), so a
 * projector running at the same time notices (its next write to the row
 * fails with 40001 and it re-reads) and never applies an event twice or
 * out of order.
 *
 * Uses pg, luahost and log. Does not talk to Kafka.
 *
 * @locality any thread, one connection per call.
 */
#ifndef EVL_PARKED_H
#define EVL_PARKED_H

#include <stdio.h>

#include "evl.h"
#include "luahost.h"
#include "pg.h"

/* Print one block per parked aggregate of projection (NULL: every
 * projection) to out:
 *
 *   customer_profile customer/c-17: 3 events, sequences 4..6, parked since
 *     2026-01-01 12:00:00+00, first at customer.events[2]@118
 *     error: duplicate key value violates unique constraint ... [23505]
 *
 * *naggregates (may be NULL) receives the count. */
evl_err evl_parked_list(evl_pg *pg, const char *projection, FILE *out,
                        long long *naggregates, char *err, size_t errlen);

typedef struct evl_parked_result {
    long long applied;         /* events re-run successfully and removed */
    long long obsolete;        /* at or below the checkpoint: removed unrun */
    long long remaining;       /* still parked */
    long long checkpoint;      /* the aggregate's checkpoint afterwards */
    long long failed_sequence; /* the first remaining event, -1 if none */
    char error[EVL_ERRLEN];    /* why it failed again */
} evl_parked_result;

/* Re-run the parked events of aggregate aggregate_id (of aggregate_type;
 * NULL: of every type that has parked events under that id) of
 * projection, in their order, with host's scripts, in one transaction:
 * the events that succeed before the first failure are applied and leave
 * evlua_parked, the checkpoint moves to the last of them, and parked
 * turns false when nothing is left. The failing event keeps its place
 * with the new error. Totals over the types go to *out. Returns EVL_OK
 * (even when events remain: see out->remaining), EVL_EPERMANENT when
 * nothing is parked under that name, or the class of a database error. */
evl_err evl_parked_retry(evl_pg *pg, evl_luahost *host, const char *projection,
                         const char *aggregate_type, const char *aggregate_id,
                         evl_parked_result *out, char *err, size_t errlen);

/* Delete the parked events of the aggregate (types as above) and move its
 * checkpoint past them (parked = false), so a replay does not park them
 * again. Logs each drop (warn). *dropped (may be NULL) receives the
 * count. EVL_EPERMANENT when nothing is parked under that name. */
evl_err evl_parked_drop(evl_pg *pg, const char *projection,
                        const char *aggregate_type, const char *aggregate_id,
                        long long *dropped, char *err, size_t errlen);

#endif
