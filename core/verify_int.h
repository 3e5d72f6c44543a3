/*
 * verify_int.h - what the parts of `evlua verify` share (verify.h is the
 * public side): the JSON diff (verify_diff.c), the history read from the
 * topics (verify.c) and the decisions part (verify_decide.c).
 *
 * @locality one thread (the CLI's).
 */
#ifndef EVL_VERIFY_INT_H
#define EVL_VERIFY_INT_H

#include <stddef.h>

#include <lua.h>

#include "buf.h"
#include "evl.h"
#include "luahost.h"
#include "verify.h"

/* ---- JSON diff (verify_diff.c): pure, no Kafka, no scripts -------------- */

/* One difference between two JSON values (verify.h's
 * evl_verify_change). */
typedef evl_verify_change vf_change;

/* Differences found, in path order (object keys sorted by strcmp, array
 * elements by index); at most max are kept, total counts all. Initialise
 * with {0}; free with vf_diff_free(). */
typedef struct vf_diff {
    vf_change *v;
    size_t n, total;
} vf_diff;

void vf_diff_free(vf_diff *d); /* accepts NULL; zeroes d */

/* Compare the JSON texts a and b (both decoded with json.h's rules on L,
 * a plain lua_State the caller owns; the stack is left as it was) and
 * append the differences to d, keeping at most max of them. Objects are
 * compared key by key (a key on one side only is a change with the other
 * side absent), arrays element by element (extra elements likewise); an
 * array and an object, or values of other JSON types, differ as wholes.
 * Numbers are equal when both are integers or both floats and their values
 * are equal (1 and 1.0 differ: the snapshot text differs too). Returns
 * EVL_OK (d->total 0: equal), or EVL_EPERMANENT when a text is not valid
 * JSON ("old: invalid JSON at byte 3"), d unchanged. */
evl_err vf_diff_json(lua_State *L, const char *a, size_t alen, const char *b,
                     size_t blen, size_t max, vf_diff *d, char *err,
                     size_t errlen);

/* ---- the history of one aggregate type (verify.c) ----------------------- */

/* A record's value, NUL-terminated, at text.data + off (offsets: text
 * grows while reading). */
typedef struct vf_event {
    size_t off, len;
    long long seq;
    size_t toff, tlen; /* "type": the value's bytes text+off+toff */
    size_t doff, dlen; /* "data": likewise */
} vf_event;

typedef struct vf_result {
    size_t cidoff; /* the command id (NUL-terminated) in text */
    char status;   /* 'a'ccepted, 'r'ejected, 'f'ailed */
    int has_error;
    long long version; /* as recorded: after (accepted), else before */
    size_t nevents;
    size_t eoff; /* "error" (NUL-terminated) in text, when has_error */
} vf_result;

typedef struct vf_agg {
    char *id;
    vf_event *ev;
    size_t nev, capev;
    vf_result *res;
    size_t nres, capres;
    long long snap_version; /* -1: no snapshot */
    size_t soff, slen;      /* the snapshot's "state" in text */
} vf_agg;

typedef struct vf_cmd {
    size_t off, len;
    char *id;
} vf_cmd;

typedef struct vf_hist {
    evl_buf text;
    vf_agg **aggs; /* in the order first seen */
    size_t naggs, capaggs;
    vf_agg **map; /* open addressing on id */
    size_t mapcap;
    vf_cmd *cmds;
    size_t ncmds, capcmds;
    size_t *cmdmap; /* index + 1 into cmds; open addressing on id */
    size_t cmdmapcap;
    long long records; /* read, all four topics */
    long long unreadable;
} vf_hist;

void vf_hist_free(vf_hist *h);

/* The first command read with this id, or NULL. */
const vf_cmd *vf_hist_command(const vf_hist *h, const char *id);

/* ---- the decisions part (verify_decide.c) ------------------------------- */

/* Re-decide every result of aggregate a with host (aggregate type type)
 * and add to r's decisions counts and first differences (at most
 * opts->show). L is a scratch lua_State for diffs. */
void vf_decide_aggregate(evl_luahost *host, lua_State *L, const char *type,
                         const vf_hist *h, const vf_agg *a,
                         const evl_verify_opts *opts, evl_verify_report *r);

/* The events of a, folded with host's apply: events [0, n) into out
 * (state NULL: initial()). EVL_OK or EVL_EPERMANENT with err. */
evl_err vf_fold(evl_luahost *host, const char *type, const vf_hist *h,
                const vf_agg *a, size_t from, size_t n, const char *state,
                size_t state_len, evl_buf *out, char *err, size_t errlen);

/* Append a found difference (copies everything) to r->diffs. */
void vf_report_add(evl_verify_report *r, const evl_verify_diff *d);

#endif
