/*
 * verify.h - `evlua verify`: a new script set against the recorded
 * history, before it goes live (docs/verify.md).
 *
 * For each aggregate type it reads T.events, T.state, T.commands and
 * T.results from the start to their current end with a consumer of its
 * own (read_committed, assigned by hand, never committing offsets: the
 * running processors do not notice it) and reports:
 *
 *   state      each aggregate's recorded events folded with the NEW
 *              apply (through upcast), against its latest snapshot in
 *              T.state (which the OLD scripts wrote): equal, different
 *              (with a JSON diff: path, old, new), failed (the new apply
 *              raised), skipped (no snapshot, or the events read do not
 *              cover it: history cut by retention, or written while we
 *              read).
 *   decisions  each recorded command with an accepted, rejected or
 *              failed result, re-run through the NEW handle on the state
 *              before it (the aggregate's events before it, folded with
 *              the new apply): same, different (events' type or data, a
 *              rejection's reason, or now accepted), newly rejected,
 *              newly failing. Envelope fields (ids, times, sequence,
 *              causation) are not compared. Skipped: a command the
 *              processor refused before handle (bad JSON, wrong key or
 *              partition: version null), a duplicate, one whose command
 *              or events were not read.
 *
 * Does not: write anything, commit offsets, talk to PostgreSQL, run
 * projections or reactions (part 2 of issue 18, a shadow rebuild, is
 * not there yet).
 *
 * Uses kafka.h (the reader), json.h and envelope.h's rules (through
 * evl_json_members and the Lua host), luahost.h (apply, decide).
 *
 * @locality the calling thread; the host is used on it alone.
 */
#ifndef EVL_VERIFY_H
#define EVL_VERIFY_H

#include <stddef.h>

#include "config.h"
#include "evl.h"
#include "luahost.h"

/* Progress of a long run: phase "read" (done/total: records read / the
 * topics' end offsets, summed), "state" or "decisions" (aggregates). */
typedef void (*evl_verify_progress)(void *ud, const char *type,
                                    const char *phase, long long done,
                                    long long total);

typedef struct evl_verify_opts {
    const char *aggregate_type; /* NULL: every aggregate type of the host */
    long long limit;            /* aggregates per type (the first seen on
                                   the topics); 0: all */
    size_t show;                /* differences kept per type and part; 0: 10 */
    evl_verify_progress progress; /* NULL: none */
    void *progress_ud;
} evl_verify_opts;

/* One difference between two JSON values: where (path "" for the whole
 * value, else "name", "items[2].qty", ["a key"] for a key that is not
 * [A-Za-z_][A-Za-z0-9_]*; indices from 1, as Lua's) and the JSON text of
 * the value on each side (NULL: absent on that side). */
typedef struct evl_verify_change {
    char *path;
    char *old;
    char *new_;
} evl_verify_change;

/* One aggregate or command that differs. Strings owned by the report;
 * NULL when not applicable. */
typedef struct evl_verify_diff {
    const char *part; /* "state" or "decisions" */
    const char *kind; /* state: "different", "failed"; decisions:
                         "different", "newly_rejected", "newly_failing" */
    char *type;
    char *aggregate_id;
    char *command_id;  /* decisions */
    char *command;     /* decisions: the command type */
    char *old_outcome; /* decisions: "accepted", "rejected: reason", ... */
    char *new_outcome;
    char *detail; /* what differs when it is not a JSON diff ("2 events
                     instead of 1", an apply error), or NULL */
    evl_verify_change *changes; /* state, or an event's data */
    size_t nchanges, total_changes;
} evl_verify_diff;

typedef struct evl_verify_counts {
    char *type;
    long long records;    /* read from the four topics */
    long long unreadable; /* of those, records that are not what the
                             command side writes (not counted below) */
    long long aggregates; /* seen on the topics (verified: up to limit) */
    long long st_equal, st_different, st_failed, st_skipped;
    long long dc_same, dc_different, dc_newly_rejected, dc_newly_failing,
        dc_skipped;
} evl_verify_counts;

/* Initialise with {0}; free with evl_verify_report_free(). */
typedef struct evl_verify_report {
    evl_verify_counts *types;
    size_t ntypes;
    evl_verify_diff *diffs;
    size_t ndiffs;
    double read_s, state_s, decide_s; /* wall seconds */
    /* internal */
    size_t capdiffs, shown_state, shown_decisions;
} evl_verify_report;

void evl_verify_report_free(evl_verify_report *r); /* accepts NULL */

/* Verify host's scripts (the NEW set) against the topics cfg names
 * (cfg->cmd's topic patterns and the kafka table), for
 * opts->aggregate_type or every aggregate type of host. A type whose
 * events topic does not exist is reported with 0 records. Returns EVL_OK
 * with r filled, or the class of the failure (the broker did not answer:
 * EVL_ETRANSIENT; an unknown aggregate type: EVL_EPERMANENT) with err. */
evl_err evl_verify_run(const evl_config *cfg, evl_luahost *host,
                       const evl_verify_opts *opts, evl_verify_report *r,
                       char *err, size_t errlen);

/* Does anything differ (state different or failed, decisions different,
 * newly rejected or newly failing)? */
int evl_verify_differs(const evl_verify_report *r);

#endif
