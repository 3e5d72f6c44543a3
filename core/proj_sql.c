/*
 * proj_sql.c - a decided batch becomes SQL, and a failure becomes a
 * verdict on one aggregate.
 *
 * The handlers' statements, parked events, checkpoint updates (one
 * statement for all aggregates, as arrays) and offsets go down one
 * libpq pipeline in the transaction shape of the isolation mode. Each
 * statement carries a tag (projector_int.h), so a failure names the
 * event that caused it; exec_batch and exec_per_aggregate turn that into
 * parking the aggregate (or halting the partition) and run again
 * without it.
 */
#include "projector_int.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- array literals ------------------------------------------------------ */

void proj_arr_reset(evl_buf *b)
{
    b->len = 0;
}

void proj_arr_end(evl_buf *b)
{
    if (b->len == 0)
        evl_buf_putc(b, '{');
    evl_buf_putc(b, '}');
    evl_buf_putc(b, '\0');
}

static void arr_raw(evl_buf *b, const char *s)
{
    evl_buf_putc(b, b->len == 0 ? '{' : ',');
    evl_buf_puts(b, s);
}

void proj_arr_text(evl_buf *b, const char *s)
{
    evl_pg_array_add(b, s, strlen(s), b->len == 0);
}

/* ---- what a failure blames ---------------------------------------------- */

const char proj_behind_msg[] =
    "not applied: an earlier event of this aggregate is parked";

void proj_halt_part(projector *pj, const pev *ev, const char *why)
{
    part *pt = &pj->parts[ev->part];
    if (pt->halted && pt->halt_offset <= ev->rkm->offset)
        return;
    pt->halted = 1;
    pt->halt_new = 1;
    pt->halt_offset = ev->rkm->offset;
    free(pt->halt_error);
    pt->halt_error = evl_xstrdup(why);
}

/* After states changed: events of halted partitions, group summaries. */
void proj_summarize(projector *pj, batch *b)
{
    for (size_t e = 0; e < b->nevs; e++) {
        pev *ev = &b->evs[e];
        const part *pt = &pj->parts[ev->part];
        if (pt->halted && ev->rkm->offset >= pt->halt_offset)
            ev->state = EV_HALT;
    }
    for (size_t gi = 0; gi < b->ngroups; gi++) {
        pgroup *g = &b->groups[gi];
        g->touched = 0;
        g->new_seq = g->prev_seq > 0 ? g->prev_seq : 0;
        g->new_parked = g->prev_parked;
        for (int i = g->first; i >= 0; i = b->evs[i].next) {
            const pev *ev = &b->evs[i];
            if (ev->state == EV_APPLY) {
                g->touched = 1;
                if (ev->seq > g->new_seq)
                    g->new_seq = ev->seq;
            } else if (ev->state == EV_PARK) {
                g->touched = 1;
                g->new_parked = 1;
            }
        }
    }
}

/* A statement of ev failed permanently with msg: park ev and the rest of
 * its aggregate, or halt its partition. */
static void mark_failure(projector *pj, batch *b, pev *ev, const char *msg)
{
    ev->fail = proj_arena_text(&b->ar, msg, strlen(msg));
    if (pj->halt) {
        proj_halt_part(pj, ev, ev->fail);
    } else {
        int on = 0;
        for (int i = b->groups[ev->group].first; i >= 0; i = b->evs[i].next) {
            pev *x = &b->evs[i];
            if (x == ev) {
                on = 1;
                x->state = EV_PARK;
                x->error = x->fail;
            } else if (on && x->state == EV_APPLY) {
                x->state = EV_PARK;
                x->error = proj_behind_msg;
            }
        }
    }
    proj_summarize(pj, b);
}

/* Fail the first applied event of group g with msg (a failure that no
 * statement could be blamed for, narrowed down to g). Returns 0 when g
 * has nothing left to apply. */
static int fail_group(projector *pj, batch *b, size_t g, const char *msg)
{
    for (int i = b->groups[g].first; i >= 0; i = b->evs[i].next)
        if (b->evs[i].state == EV_APPLY) {
            mark_failure(pj, b, &b->evs[i], msg);
            return 1;
        }
    return 0;
}

/* ---- sending ------------------------------------------------------------- */

static void on_failure(void *ud, const evl_pg_failure *f)
{
    projector *pj = ud;
    if (pj->nfails == pj->capfails) {
        pj->capfails = pj->capfails ? pj->capfails * 2 : 16;
        pj->fails = evl_xrealloc(pj->fails, sizeof(failure) * pj->capfails);
    }
    failure *x = &pj->fails[pj->nfails++];
    x->seg = f->seg;
    x->tag = f->tag;
    if (f->tag == TAG_FENCE)
        pj->fenced = 1;
    x->cls = f->cls;
    if (*f->sqlstate)
        snprintf(x->msg, sizeof x->msg, "%s [%s]", f->msg, f->sqlstate);
    else
        snprintf(x->msg, sizeof x->msg, "%s", f->msg);
}

static const char *event_text(projector *pj, batch *b, pev *ev)
{
    if (!ev->stored) {
        const char *p = ev->rkm->payload ? ev->rkm->payload : "";
        size_t n = ev->rkm->len;
        if (evl_utf8_check(p, n) < 0 && !memchr(p, '\0', n)) {
            ev->stored = proj_arena_strndup(&b->ar, p, n);
        } else {
            /* not text PostgreSQL can hold: keep the bytes, in hex */
            char *h = proj_arena_alloc(&b->ar, 2 * n + 32);
            size_t o = (size_t)sprintf(h, "(not UTF-8; hex) ");
            for (size_t i = 0; i < n; i++)
                o += (size_t)sprintf(h + o, "%02x", (unsigned char)p[i]);
            ev->stored = h;
        }
    }
    return ev->stored;
}

static void send_park(projector *pj, batch *b, pev *ev)
{
    const pgroup *g = &b->groups[ev->group];
    const part *pt = &pj->parts[ev->part];
    char seq[24], partition[24], offset[24];
    snprintf(seq, sizeof seq, "%lld", ev->seq);
    snprintf(partition, sizeof partition, "%" PRId32, pt->partition);
    snprintf(offset, sizeof offset, "%" PRId64, ev->rkm->offset);
    const char *vals[10] = {pj->name,
                            g->atype,
                            g->aid,
                            ev->seq >= 0 ? seq : NULL,
                            ev->type,
                            pt->topic,
                            partition,
                            offset,
                            event_text(pj, b, ev),
                            ev->error ? ev->error : "parked"};
    evl_pg_pipe_send(pj->pg, EVL_PG_PARK_SQL, 10, vals,
                     2L * (long)(ev - b->evs) + 1);
}

/* The first statement of every transaction: fails once the tables were
 * swapped since this projector read its epoch (pg.h EVL_PG_FENCE_SQL). */
static void send_fence(projector *pj)
{
    const char *vals[2] = {pj->name, pj->epoch};
    evl_pg_pipe_send(pj->pg, EVL_PG_FENCE_SQL, 2, vals, TAG_FENCE);
}

/* One statement moving the checkpoint of group gi alone. */
static void send_advance_one(projector *pj, batch *b, size_t gi)
{
    const pgroup *g = &b->groups[gi];
    char ps[24], ns[24];
    snprintf(ps, sizeof ps, "%lld", g->prev_seq);
    snprintf(ns, sizeof ns, "%lld", g->new_seq);
    const char *vals[7] = {pj->name,
                           g->atype,
                           g->aid,
                           ps,
                           g->prev_parked ? "t" : "f",
                           ns,
                           g->new_parked ? "t" : "f"};
    evl_pg_pipe_send(pj->pg, EVL_PG_ADVANCE_ONE_SQL, 7, vals, TAG_ADVANCE);
}

/* One statement moving the checkpoints of the touched groups in [lo, hi).
 * Returns 0 when there was none to send. */
static int send_advance(projector *pj, batch *b, size_t lo, size_t hi)
{
    for (int k = 0; k < 6; k++)
        proj_arr_reset(&pj->a[k]);
    size_t n = 0;
    for (size_t gi = lo; gi < hi; gi++) {
        const pgroup *g = &b->groups[gi];
        if (!g->touched || g->done)
            continue;
        char ps[24], ns[24];
        snprintf(ps, sizeof ps, "%lld", g->prev_seq);
        snprintf(ns, sizeof ns, "%lld", g->new_seq);
        proj_arr_text(&pj->a[0], g->atype);
        proj_arr_text(&pj->a[1], g->aid);
        arr_raw(&pj->a[2], ps);
        arr_raw(&pj->a[3], g->prev_parked ? "t" : "f");
        arr_raw(&pj->a[4], ns);
        arr_raw(&pj->a[5], g->new_parked ? "t" : "f");
        n++;
    }
    if (n == 0)
        return 0;
    for (int k = 0; k < 6; k++)
        proj_arr_end(&pj->a[k]);
    const char *vals[7] = {pj->name,      pj->a[0].data, pj->a[1].data,
                           pj->a[2].data, pj->a[3].data, pj->a[4].data,
                           pj->a[5].data};
    evl_pg_pipe_send(pj->pg, EVL_PG_ADVANCE_SQL, 7, vals, TAG_ADVANCE);
    return 1;
}

/* The offset to store for partition p after batch b: after its last
 * message, or the halting event. -1: b has nothing of p. */
int64_t proj_part_next(const projector *pj, const batch *b, int p)
{
    const part *pt = &pj->parts[p];
    if (p >= b->nnext || b->next[p] < 0)
        return -1;
    if (pt->halted && pt->halt_offset < b->next[p])
        return pt->halt_offset;
    return b->next[p];
}

static int send_offsets(projector *pj, batch *b)
{
    for (int k = 0; k < 3; k++)
        proj_arr_reset(&pj->a[k]);
    int n = 0;
    for (int p = 0; p < pj->nparts; p++) {
        int64_t next = proj_part_next(pj, b, p);
        if (next < 0)
            continue;
        char ps[24], os[24];
        snprintf(ps, sizeof ps, "%" PRId32, pj->parts[p].partition);
        snprintf(os, sizeof os, "%" PRId64, next);
        proj_arr_text(&pj->a[0], pj->parts[p].topic);
        arr_raw(&pj->a[1], ps);
        arr_raw(&pj->a[2], os);
        n++;
    }
    if (n == 0)
        return 0;
    for (int k = 0; k < 3; k++)
        proj_arr_end(&pj->a[k]);
    const char *vals[4] = {pj->name, pj->a[0].data, pj->a[1].data,
                           pj->a[2].data};
    evl_pg_pipe_send(pj->pg, EVL_PG_OFFSETS_SQL, 4, vals, TAG_OFFSETS);
    return 1;
}

static int has_offsets(const projector *pj, const batch *b)
{
    for (int p = 0; p < pj->nparts; p++)
        if (proj_part_next(pj, b, p) >= 0)
            return 1;
    return 0;
}

/* Prepare the statement texts of groups [lo, hi) (each group only if
 * pending) before the segments that use them. */
static void prepare_texts(projector *pj, batch *b, size_t lo, size_t hi,
                          int parks)
{
    evl_pg *pg = pj->pg;
    for (size_t gi = lo; gi < hi; gi++) {
        const pgroup *g = &b->groups[gi];
        if (!g->touched || g->done)
            continue;
        for (int i = g->first; i >= 0; i = b->evs[i].next) {
            const pev *ev = &b->evs[i];
            if (ev->state != EV_APPLY)
                continue;
            for (size_t s = 0; s < ev->nstmt; s++)
                evl_pg_pipe_prepare(pg, b->stmts[ev->stmt0 + s].sql);
        }
    }
    proj_upsert_prepare(pj);
    evl_pg_pipe_prepare(pg, EVL_PG_FENCE_SQL);
    evl_pg_pipe_prepare(pg, EVL_PG_ADVANCE_SQL);
    evl_pg_pipe_prepare(pg, EVL_PG_OFFSETS_SQL);
    if (parks)
        evl_pg_pipe_prepare(pg, EVL_PG_PARK_SQL);
}

/* Send the work of group g: its statements and parked events. */
static int send_group(projector *pj, batch *b, size_t gi, int *parks)
{
    const pgroup *g = &b->groups[gi];
    int n = 0;
    for (int i = g->first; i >= 0; i = b->evs[i].next) {
        pev *ev = &b->evs[i];
        if (ev->state == EV_APPLY) {
            for (size_t s = 0; s < ev->nstmt; s++) {
                const pstmt *ps = &b->stmts[ev->stmt0 + s];
                evl_pg_pipe_send(pj->pg, ps->sql, ps->nparams, ps->values,
                                 2L * (long)(ev->stmt0 + s));
                n++;
            }
        } else if (ev->state == EV_PARK) {
            send_park(pj, b, ev);
            (*parks)++;
        }
    }
    return n;
}

typedef struct emit_ctx {
    projector *pj;
    batch *b;
    int parks;
} emit_ctx;

/* proj_upsert_plan's sends go down the pipeline. */
static void emit_pipe(void *ud, const char *sql, int n,
                      const char *const *values, long tag)
{
    emit_ctx *c = ud;
    if (!sql) {
        send_park(c->pj, c->b, &c->b->evs[tag]);
        c->parks++;
        return;
    }
    evl_pg_pipe_send(c->pj->pg, sql, n, values, tag);
}

static int range_parks(const batch *b, size_t lo, size_t hi)
{
    for (size_t gi = lo; gi < hi; gi++)
        if (b->groups[gi].touched && b->groups[gi].new_parked)
            return 1;
    return 0;
}

static void rollback(projector *pj)
{
    if (evl_pg_ok(pj->pg) &&
        PQtransactionStatus(evl_pg_conn(pj->pg)) != PQTRANS_IDLE) {
        char err[EVL_ERRLEN];
        evl_pg_exec(pj->pg, "ROLLBACK", err, sizeof err);
    }
}

/* Queue one transaction: the groups [lo, hi), their checkpoints and, when
 * offs, the offsets (in pipeline mode; results are read by range_result).
 * Returns 0 when there was nothing to do (nothing queued). */
int proj_range_send(projector *pj, batch *b, size_t lo, size_t hi, int offs)
{
    int any = offs && has_offsets(pj, b);
    for (size_t gi = lo; gi < hi && !any; gi++)
        any = b->groups[gi].touched;
    if (!any)
        return 0;
    int parks = 0;
    prepare_texts(pj, b, lo, hi, range_parks(b, lo, hi));
    evl_pg_pipe_prepare(pj->pg, "BEGIN");
    evl_pg_pipe_prepare(pj->pg, "COMMIT");
    evl_pg_pipe_send(pj->pg, "BEGIN", 0, NULL, TAG_BEGIN);
    send_fence(pj);
    emit_ctx ec = {pj, b, 0};
    pj->stats.statements += proj_upsert_plan(pj, b, lo, hi, emit_pipe, &ec);
    parks += ec.parks;
    send_advance(pj, b, lo, hi);
    if (offs)
        send_offsets(pj, b);
    evl_pg_pipe_send(pj->pg, "COMMIT", 0, NULL, TAG_COMMIT);
    evl_pg_pipe_sync(pj->pg, 0);
    return 1;
}

evl_err proj_range_result(projector *pj, char *err, size_t errlen)
{
    pj->nfails = 0;
    evl_err e = evl_pg_pipe_end(pj->pg, on_failure, pj, err, errlen);
    if (e != EVL_OK)
        rollback(pj);
    return e;
}

/* One transaction, waited for. */
static evl_err run_range(projector *pj, batch *b, size_t lo, size_t hi,
                         int offs, char *err, size_t errlen)
{
    int any = offs && has_offsets(pj, b);
    for (size_t gi = lo; gi < hi && !any; gi++)
        any = b->groups[gi].touched;
    if (!any)
        return EVL_OK;
    evl_err e = evl_pg_pipe_begin(pj->pg, err, errlen);
    if (e != EVL_OK)
        return e;
    proj_range_send(pj, b, lo, hi, offs);
    return proj_range_result(pj, err, errlen);
}

/* The cache learns the checkpoints of the touched groups in [lo, hi). */
void proj_remember(projector *pj, batch *b, size_t lo, size_t hi)
{
    for (size_t gi = lo; gi < hi; gi++) {
        const pgroup *g = &b->groups[gi];
        if (g->touched && !g->done)
            proj_ckmap_put(&pj->cache, g->key, g->klen, g->hash, g->new_seq,
                           g->new_parked);
    }
}

/* Groups [lo, hi) committed: the cache learns what they wrote. */
void proj_committed(projector *pj, batch *b, size_t lo, size_t hi)
{
    proj_remember(pj, b, lo, hi);
    for (size_t gi = lo; gi < hi; gi++)
        if (b->groups[gi].touched)
            b->groups[gi].done = 1;
}

static evl_err bookkeeping_failed(const failure *f, char *err, size_t errlen)
{
    const char *what = f->tag == TAG_BEGIN     ? "BEGIN"
                       : f->tag == TAG_FENCE   ? "the swap fence"
                       : f->tag == TAG_ADVANCE ? "the checkpoint update"
                       : f->tag == TAG_OFFSETS ? "the evlua_offsets upsert"
                                               : "parking an event";
    return evl_seterr(err, errlen, EVL_EFATAL, "%s failed: %s", what, f->msg);
}

/* A transaction stopped at the fence: nothing of it was written. The
 * caller gives the batch up (resolve returns FENCED). */
static evl_err swapped(projector *pj, char *err, size_t errlen)
{
    for (size_t k = 0; k < pj->nfails; k++)
        if (pj->fails[k].tag == TAG_FENCE)
            return evl_seterr(err, errlen, EVL_ETRANSIENT, "%s",
                              pj->fails[k].msg);
    return evl_seterr(err, errlen, EVL_ETRANSIENT,
                      "the projection's tables were swapped");
}

/* Modes aggregate and batch: one transaction per batch; see
 * projector.h for the way failures are handled. first is the outcome of
 * the batch's first transaction when it was already sent (send_async;
 * its failures are in pj->fails), or EVL_OK - 1 when not. */
evl_err proj_exec_batch(projector *pj, batch *b, char *err, size_t errlen,
                        evl_err first)
{
    size_t lo = 0, hi = b->ngroups;
    for (;;) {
        int offs = hi == b->ngroups;
        evl_err e = first != NOT_SENT
                        ? first
                        : run_range(pj, b, lo, hi, offs, err, errlen);
        first = NOT_SENT;
        if (e != EVL_OK && pj->fenced)
            return swapped(pj, err, errlen);
        if (e == EVL_OK) {
            if (b->percall) /* row by row passed: was the catalog stale? */
                proj_upsert_forget(pj);
            proj_committed(pj, b, lo, hi);
            if (offs)
                return EVL_OK;
            lo = hi;
            hi = b->ngroups;
            continue;
        }
        if (e != EVL_EPERMANENT)
            return e;
        if (pj->nfails == 0)
            return evl_seterr(err, errlen, EVL_EFATAL,
                              "a transaction failed without an error: %s", err);
        const failure *f = &pj->fails[0];
        if (f->tag == TAG_COALESCED) {
            /* a row of a multi-row statement: row by row, to name it */
            b->percall = 1;
            continue;
        }
        if (f->tag >= 0 && f->tag % 2 == 0) {
            pev *ev = &b->evs[b->stmts[f->tag / 2].ev];
            size_t g = (size_t)ev->group;
            b->percall = 0; /* found: the rest goes coalesced again */
            mark_failure(pj, b, ev, f->msg);
            if (pj->iso == ISO_AGGREGATE && !pj->halt && ++b->nfail > 2 &&
                g >= lo && g < hi)
                hi = g + 1; /* commit up to it, go on after it */
            continue;
        }
        if (f->tag == TAG_COMMIT || f->tag == EVL_PG_TAG_SYNC) {
            /* a deferred constraint: no statement to blame */
            if (pj->halt) {
                for (size_t gi = lo; gi < hi; gi++)
                    for (int i = b->groups[gi].first; i >= 0;
                         i = b->evs[i].next)
                        if (b->evs[i].state == EV_APPLY)
                            proj_halt_part(pj, &b->evs[i], f->msg);
                proj_summarize(pj, b);
                continue;
            }
            if (hi - lo == 1) {
                if (!fail_group(pj, b, lo, f->msg))
                    return bookkeeping_failed(f, err, errlen);
                continue;
            }
            hi = lo + (hi - lo) / 2;
            continue;
        }
        return bookkeeping_failed(f, err, errlen);
    }
}

/* Mode aggregate-tx: one implicit transaction per aggregate, all in one
 * pipeline; the offsets once every aggregate is done. */
evl_err proj_exec_per_aggregate(projector *pj, batch *b, char *err,
                                size_t errlen)
{
    for (;;) {
        size_t pending = 0;
        for (size_t gi = 0; gi < b->ngroups; gi++)
            if (b->groups[gi].touched && !b->groups[gi].done)
                pending++;
        if (pending == 0)
            break;
        evl_err e = evl_pg_pipe_begin(pj->pg, err, errlen);
        if (e != EVL_OK)
            return e;
        prepare_texts(pj, b, 0, b->ngroups, range_parks(b, 0, b->ngroups));
        evl_pg_pipe_prepare(pj->pg, EVL_PG_ADVANCE_ONE_SQL);
        for (size_t gi = 0; gi < b->ngroups; gi++) {
            pgroup *g = &b->groups[gi];
            if (!g->touched || g->done)
                continue;
            int parks = 0;
            send_fence(pj);
            pj->stats.statements += send_group(pj, b, gi, &parks);
            send_advance_one(pj, b, gi);
            evl_pg_pipe_sync(pj->pg, (long)gi);
        }
        pj->nfails = 0;
        e = evl_pg_pipe_end(pj->pg, on_failure, pj, err, errlen);
        if (pj->fenced)
            return swapped(pj, err, errlen);
        if (e == EVL_ETRANSIENT)
            return e; /* the retry reads the checkpoints again */
        /* every segment that did not fail has committed */
        for (size_t gi = 0; gi < b->ngroups; gi++) {
            pgroup *g = &b->groups[gi];
            if (!g->touched || g->done)
                continue;
            int failed = 0;
            for (size_t k = 0; k < pj->nfails; k++)
                if (pj->fails[k].seg == (long)gi)
                    failed = 1;
            if (!failed)
                proj_committed(pj, b, gi, gi + 1);
        }
        for (size_t k = 0; k < pj->nfails; k++) {
            const failure *f = &pj->fails[k];
            if (f->tag == TAG_ADVANCE && f->cls == EVL_ETRANSIENT)
                /* a checkpoint guessed wrong (or moved): read them again */
                return evl_seterr(err, errlen, EVL_ETRANSIENT, "%s", f->msg);
            if (f->tag >= 0 && f->tag % 2 == 0)
                mark_failure(pj, b, &b->evs[b->stmts[f->tag / 2].ev], f->msg);
            else if (f->tag == EVL_PG_TAG_SYNC && f->seg >= 0) {
                if (!fail_group(pj, b, (size_t)f->seg, f->msg))
                    return bookkeeping_failed(f, err, errlen);
            } else
                return bookkeeping_failed(f, err, errlen);
        }
    }
    if (!has_offsets(pj, b))
        return EVL_OK;
    evl_err e = evl_pg_pipe_begin(pj->pg, err, errlen);
    if (e != EVL_OK)
        return e;
    evl_pg_pipe_prepare(pj->pg, EVL_PG_FENCE_SQL);
    evl_pg_pipe_prepare(pj->pg, EVL_PG_OFFSETS_SQL);
    send_fence(pj);
    send_offsets(pj, b);
    evl_pg_pipe_sync(pj->pg, -1);
    pj->nfails = 0;
    e = evl_pg_pipe_end(pj->pg, on_failure, pj, err, errlen);
    if (pj->fenced)
        return swapped(pj, err, errlen);
    if (e == EVL_EPERMANENT && pj->nfails > 0)
        return bookkeeping_failed(&pj->fails[0], err, errlen);
    return e;
}
