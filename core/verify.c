/*
 * verify.c - `evlua verify` (verify.h): reads one aggregate type's four
 * topics into memory, grouped by aggregate, then runs the state part here
 * and the decisions part (verify_decide.c) over them.
 *
 * Reading: one consumer, assigned by hand to every partition of the four
 * topics from the beginning (no group is joined, no offset committed),
 * read_committed, each partition read until its end as it was when the
 * run started (the high watermark then, or librdkafka's end-of-partition
 * at the last stable offset, whichever comes first). The topics keep
 * growing while a live system runs; what was read after another topic's
 * end is matched by version (a snapshot newer than the events read is
 * skipped, not compared), so a running system never makes a false
 * difference.
 *
 * Memory: every record's value is kept (one buffer; ~ the topics' size),
 * plus ~100 bytes per event and per result. Records are read through
 * evl_json_members (json.c's rules, no Lua); only what is compared goes
 * through the Lua host.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <lauxlib.h>
#include <librdkafka/rdkafka.h>

#include "json.h"
#include "kafka.h"
#include "lifecycle.h"
#include "verify_int.h"

#define READ_IDLE_MS 60000 /* no record and no end for this long: give up */

/* ---- the history in memory ----------------------------------------------- */

void vf_hist_free(vf_hist *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->naggs; i++) {
        free(h->aggs[i]->id);
        free(h->aggs[i]->ev);
        free(h->aggs[i]->res);
        free(h->aggs[i]);
    }
    free(h->aggs);
    free(h->map);
    for (size_t i = 0; i < h->ncmds; i++)
        free(h->cmds[i].id);
    free(h->cmds);
    free(h->cmdmap);
    evl_buf_free(&h->text);
    memset(h, 0, sizeof *h);
}

static void map_put(vf_agg **map, size_t cap, vf_agg *a)
{
    size_t i = (size_t)evl_hash_str(a->id) & (cap - 1);
    while (map[i])
        i = (i + 1) & (cap - 1);
    map[i] = a;
}

static vf_agg *agg_get(vf_hist *h, const char *id)
{
    size_t i;
    if (h->mapcap) {
        i = (size_t)evl_hash_str(id) & (h->mapcap - 1);
        for (; h->map[i]; i = (i + 1) & (h->mapcap - 1))
            if (strcmp(h->map[i]->id, id) == 0)
                return h->map[i];
    }
    if (2 * (h->naggs + 1) > h->mapcap) {
        size_t cap = h->mapcap ? 2 * h->mapcap : 1024;
        vf_agg **map = calloc(cap, sizeof *map);
        if (!map)
            abort();
        for (size_t k = 0; k < h->naggs; k++)
            map_put(map, cap, h->aggs[k]);
        free(h->map);
        h->map = map;
        h->mapcap = cap;
    }
    if (h->naggs == h->capaggs) {
        h->capaggs = h->capaggs ? 2 * h->capaggs : 1024;
        h->aggs = evl_xrealloc(h->aggs, sizeof *h->aggs * h->capaggs);
    }
    vf_agg *a = evl_xmalloc(sizeof *a);
    memset(a, 0, sizeof *a);
    a->id = evl_xstrdup(id);
    a->snap_version = -1;
    h->aggs[h->naggs++] = a;
    map_put(h->map, h->mapcap, a);
    return a;
}

const vf_cmd *vf_hist_command(const vf_hist *h, const char *id)
{
    if (!h->cmdmapcap)
        return NULL;
    size_t i = (size_t)evl_hash_str(id) & (h->cmdmapcap - 1);
    for (; h->cmdmap[i]; i = (i + 1) & (h->cmdmapcap - 1))
        if (strcmp(h->cmds[h->cmdmap[i] - 1].id, id) == 0)
            return &h->cmds[h->cmdmap[i] - 1];
    return NULL;
}

static void cmd_put(vf_hist *h, const char *id, size_t off, size_t len)
{
    if (vf_hist_command(h, id))
        return; /* the first one counts (a resend got "duplicate") */
    if (2 * (h->ncmds + 1) > h->cmdmapcap) {
        size_t cap = h->cmdmapcap ? 2 * h->cmdmapcap : 1024;
        size_t *map = calloc(cap, sizeof *map);
        if (!map)
            abort();
        for (size_t k = 0; k < h->ncmds; k++) {
            size_t i = (size_t)evl_hash_str(h->cmds[k].id) & (cap - 1);
            while (map[i])
                i = (i + 1) & (cap - 1);
            map[i] = k + 1;
        }
        free(h->cmdmap);
        h->cmdmap = map;
        h->cmdmapcap = cap;
    }
    if (h->ncmds == h->capcmds) {
        h->capcmds = h->capcmds ? 2 * h->capcmds : 1024;
        h->cmds = evl_xrealloc(h->cmds, sizeof *h->cmds * h->capcmds);
    }
    vf_cmd *c = &h->cmds[h->ncmds++];
    c->off = off;
    c->len = len;
    c->id = evl_xstrdup(id);
    size_t i = (size_t)evl_hash_str(id) & (h->cmdmapcap - 1);
    while (h->cmdmap[i])
        i = (i + 1) & (h->cmdmapcap - 1);
    h->cmdmap[i] = h->ncmds;
}

/* Keep a copy of s (NUL-terminated) in the text; its offset. */
static size_t keep(vf_hist *h, const char *s, size_t n)
{
    size_t off = h->text.len;
    evl_buf_put(&h->text, s, n);
    evl_buf_putc(&h->text, '\0');
    return off;
}

/* ---- one record of each topic ------------------------------------------- */

enum { T_EVENTS, T_STATE, T_COMMANDS, T_RESULTS };

typedef struct reader {
    vf_hist *h;
    evl_buf scratch;
    const char *type;
} reader;

static void count_id(void *ud, const char *s, size_t n)
{
    (void)s;
    (void)n;
    (*(size_t *)ud)++;
}

static int rd_event(reader *rd, size_t off, size_t len)
{
    vf_hist *h = rd->h;
    evl_json_member m[] = {{.name = "aggregate_id"},
                           {.name = "sequence"},
                           {.name = "type"},
                           {.name = "data"}};
    int obj;
    if (evl_json_members(h->text.data + off, len, m, 4, &rd->scratch, &obj,
                         NULL, 0) != EVL_OK ||
        !obj || m[0].type != EVL_JSON_STRING || m[1].type != EVL_JSON_NUMBER ||
        !m[1].isint || m[2].type != EVL_JSON_STRING ||
        m[3].type == EVL_JSON_ABSENT)
        return -1;
    vf_agg *a = agg_get(h, rd->scratch.data + m[0].off);
    if (a->nev == a->capev) {
        a->capev = a->capev ? 2 * a->capev : 4;
        a->ev = evl_xrealloc(a->ev, sizeof *a->ev * a->capev);
    }
    vf_event *e = &a->ev[a->nev++];
    e->off = off;
    e->len = len;
    e->seq = m[1].integer;
    e->toff = m[2].voff;
    e->tlen = m[2].vlen;
    e->doff = m[3].voff;
    e->dlen = m[3].vlen;
    return 0;
}

static int rd_state(reader *rd, const rd_kafka_message_t *rkm, size_t off,
                    size_t len)
{
    vf_hist *h = rd->h;
    char id[EVL_ENVELOPE_MAX_AGGREGATE_ID + 1];
    if (!rkm->key || rkm->key_len > EVL_ENVELOPE_MAX_AGGREGATE_ID)
        return -1;
    memcpy(id, rkm->key, rkm->key_len);
    id[rkm->key_len] = '\0';
    vf_agg *a = agg_get(h, id);
    if (!rkm->payload) { /* a tombstone */
        a->snap_version = -1;
        return 0;
    }
    evl_json_member m[] = {{.name = "version"}, {.name = "state"}};
    int obj;
    if (evl_json_members(h->text.data + off, len, m, 2, &rd->scratch, &obj,
                         NULL, 0) != EVL_OK ||
        !obj || m[0].type != EVL_JSON_NUMBER || !m[0].isint ||
        m[1].type == EVL_JSON_ABSENT)
        return -1;
    a->snap_version = m[0].integer;
    a->soff = off + m[1].voff;
    a->slen = m[1].vlen;
    return 0;
}

static int rd_command(reader *rd, size_t off, size_t len)
{
    evl_json_member m[] = {{.name = "id"}};
    int obj;
    if (evl_json_members(rd->h->text.data + off, len, m, 1, &rd->scratch, &obj,
                         NULL, 0) != EVL_OK ||
        !obj || m[0].type != EVL_JSON_STRING)
        return -1; /* its result has no version: skipped anyway */
    cmd_put(rd->h, rd->scratch.data + m[0].off, off, len);
    return 0;
}

/* A result is kept when it is a decision (accepted, rejected or failed
 * with a version); the rest (duplicates, commands refused before handle)
 * is counted as skipped by the caller. Returns 1 kept, 0 not a decision,
 * -1 unreadable. */
static int rd_result(reader *rd, size_t off, size_t len)
{
    vf_hist *h = rd->h;
    evl_json_member m[] = {{.name = "command_id"},   {.name = "status"},
                           {.name = "aggregate_id"}, {.name = "version"},
                           {.name = "events"},       {.name = "error"}};
    int obj;
    const char *text = h->text.data + off;
    if (evl_json_members(text, len, m, 6, &rd->scratch, &obj, NULL, 0) !=
            EVL_OK ||
        !obj || m[1].type != EVL_JSON_STRING)
        return -1;
    const char *status = rd->scratch.data + m[1].off;
    if (m[0].type != EVL_JSON_STRING || m[2].type != EVL_JSON_STRING ||
        m[3].type != EVL_JSON_NUMBER || !m[3].isint ||
        (strcmp(status, "accepted") && strcmp(status, "rejected") &&
         strcmp(status, "failed")))
        return 0;
    size_t nev = 0;
    if (m[4].type != EVL_JSON_ABSENT) {
        evl_buf s2 = {0};
        evl_json_array_strings(text + m[4].voff, m[4].vlen, &s2, count_id, &nev,
                               NULL, 0);
        evl_buf_free(&s2);
    }
    /* copies before agg_get/keep move anything */
    char *aid = evl_xstrdup(rd->scratch.data + m[2].off);
    char *cid = evl_xstrdup(rd->scratch.data + m[0].off);
    char st = status[0];
    char *error = m[5].type == EVL_JSON_STRING
                      ? evl_xstrdup(rd->scratch.data + m[5].off)
                      : NULL;
    vf_agg *a = agg_get(h, aid);
    if (a->nres == a->capres) {
        a->capres = a->capres ? 2 * a->capres : 4;
        a->res = evl_xrealloc(a->res, sizeof *a->res * a->capres);
    }
    vf_result *r = &a->res[a->nres++];
    memset(r, 0, sizeof *r);
    r->status = st;
    r->version = m[3].integer;
    r->nevents = nev;
    r->cidoff = keep(h, cid, strlen(cid));
    r->eoff = error ? keep(h, error, strlen(error)) : 0;
    r->has_error = error != NULL;
    free(aid);
    free(cid);
    free(error);
    return 1;
}

/* ---- reading the four topics -------------------------------------------- */

typedef struct part {
    int kind;
    int32_t partition;
    int64_t hi;
    int done;
} part;

static evl_err read_type(const evl_config *cfg, rd_kafka_t *rk,
                         const char *type, vf_hist *h, evl_verify_counts *c,
                         const evl_verify_opts *o, char *err, size_t errlen)
{
    const char *patterns[4] = {cfg->cmd.events_topic, cfg->cmd.state_topic,
                               cfg->cmd.commands_topic, cfg->cmd.results_topic};
    char topics[4][256];
    part *parts = NULL;
    size_t nparts = 0, remaining = 0;
    long long total = 0, done = 0, last_progress = 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    reader rd = {h, {0}, type};
    evl_err e = EVL_OK;

    for (int k = 0; k < 4; k++) {
        int n = 0;
        evl_config_topic(patterns[k], type, topics[k], sizeof topics[k]);
        if ((e = evl_kafka_partitions(rk, topics[k], 10000, &n, err, errlen)))
            goto out;
        for (int32_t p = 0; p < n; p++) {
            int64_t lo = 0, hi = 0;
            rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
                rk, topics[k], p, &lo, &hi, 10000);
            if (ke) {
                e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                               "rd_kafka_query_watermark_offsets(%s[%d]): %s",
                               topics[k], (int)p, rd_kafka_err2str(ke));
                goto out;
            }
            parts = evl_xrealloc(parts, sizeof *parts * (nparts + 1));
            parts[nparts++] = (part){k, p, hi, hi <= lo};
            if (hi > lo) {
                remaining++;
                total += hi - lo;
                rd_kafka_topic_partition_list_add(l, topics[k], p)->offset =
                    RD_KAFKA_OFFSET_BEGINNING;
            }
        }
    }
    if (remaining == 0)
        goto out;
    rd_kafka_resp_err_t ke = rd_kafka_assign(rk, l);
    if (ke) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT, "rd_kafka_assign: %s",
                       rd_kafka_err2str(ke));
        goto out;
    }
    long long idle = evl_now_ms();
    while (remaining > 0) {
        if (evl_lifecycle_stopping()) {
            e = evl_seterr(err, errlen, EVL_ETRANSIENT, "interrupted");
            goto out;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m) {
            if (evl_now_ms() - idle > READ_IDLE_MS) {
                e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                               "no record and no end of partition in %d s "
                               "reading the topics of %s",
                               READ_IDLE_MS / 1000, type);
                goto out;
            }
            continue;
        }
        idle = evl_now_ms();
        const char *tn = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
        part *pt = NULL;
        for (size_t i = 0; i < nparts; i++)
            if (parts[i].partition == m->partition &&
                strcmp(topics[parts[i].kind], tn) == 0)
                pt = &parts[i];
        if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            e = evl_seterr(err, errlen, EVL_ETRANSIENT, "reading %s: %s", tn,
                           rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            goto out;
        }
        if (!pt || pt->done) {
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            pt->done = 1;
            remaining--;
            rd_kafka_message_destroy(m);
            continue;
        }
        if (m->offset >= pt->hi) { /* written after we started */
            pt->done = 1;
            remaining--;
            rd_kafka_message_destroy(m);
            continue;
        }
        size_t off =
            keep(h, m->payload ? m->payload : "", m->payload ? m->len : 0);
        int rc = 0;
        h->records++;
        c->records++;
        switch (pt->kind) {
        case T_EVENTS: rc = rd_event(&rd, off, m->len); break;
        case T_STATE:
            rc = rd_state(&rd, m, off, m->payload ? m->len : 0);
            break;
        case T_COMMANDS: rc = rd_command(&rd, off, m->len); break;
        case T_RESULTS:
            rc = rd_result(&rd, off, m->len);
            if (rc == 0)
                c->dc_skipped++;
            rc = rc < 0 ? -1 : 0;
            break;
        }
        if (rc < 0) {
            h->unreadable++;
            c->unreadable++;
        }
        if (m->offset + 1 >= pt->hi) {
            pt->done = 1;
            remaining--;
        }
        rd_kafka_message_destroy(m);
        done++;
        if (o->progress && done - last_progress >= 20000) {
            last_progress = done;
            o->progress(o->progress_ud, type, "read", done, total);
        }
    }
out:
    rd_kafka_assign(rk, NULL);
    rd_kafka_topic_partition_list_destroy(l);
    free(parts);
    evl_buf_free(&rd.scratch);
    return e;
}

/* ---- the report ---------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? evl_xstrdup(s) : NULL;
}

void vf_report_add(evl_verify_report *r, const evl_verify_diff *d)
{
    if (r->ndiffs == r->capdiffs) {
        r->capdiffs = r->capdiffs ? 2 * r->capdiffs : 16;
        r->diffs = evl_xrealloc(r->diffs, sizeof *r->diffs * r->capdiffs);
    }
    evl_verify_diff *c = &r->diffs[r->ndiffs++];
    *c = *d;
    c->type = dup_or_null(d->type);
    c->aggregate_id = dup_or_null(d->aggregate_id);
    c->command_id = dup_or_null(d->command_id);
    c->command = dup_or_null(d->command);
    c->old_outcome = dup_or_null(d->old_outcome);
    c->new_outcome = dup_or_null(d->new_outcome);
    c->detail = dup_or_null(d->detail);
    c->changes = NULL;
    if (d->nchanges) {
        c->changes = evl_xmalloc(sizeof *c->changes * d->nchanges);
        for (size_t i = 0; i < d->nchanges; i++) {
            c->changes[i].path = dup_or_null(d->changes[i].path);
            c->changes[i].old = dup_or_null(d->changes[i].old);
            c->changes[i].new_ = dup_or_null(d->changes[i].new_);
        }
    }
}

void evl_verify_report_free(evl_verify_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->ntypes; i++)
        free(r->types[i].type);
    free(r->types);
    for (size_t i = 0; i < r->ndiffs; i++) {
        evl_verify_diff *d = &r->diffs[i];
        free(d->type);
        free(d->aggregate_id);
        free(d->command_id);
        free(d->command);
        free(d->old_outcome);
        free(d->new_outcome);
        free(d->detail);
        for (size_t k = 0; k < d->nchanges; k++) {
            free(d->changes[k].path);
            free(d->changes[k].old);
            free(d->changes[k].new_);
        }
        free(d->changes);
    }
    free(r->diffs);
    memset(r, 0, sizeof *r);
}

int evl_verify_differs(const evl_verify_report *r)
{
    for (size_t i = 0; i < r->ntypes; i++) {
        const evl_verify_counts *c = &r->types[i];
        if (c->st_different || c->st_failed || c->dc_different ||
            c->dc_newly_rejected || c->dc_newly_failing)
            return 1;
    }
    return 0;
}

/* ---- the state part ------------------------------------------------------ */

static int cmp_seq(const void *x, const void *y)
{
    const vf_event *a = x, *b = y;
    return (a->seq > b->seq) - (a->seq < b->seq);
}

evl_err vf_fold(evl_luahost *host, const char *type, const vf_hist *h,
                const vf_agg *a, size_t from, size_t n, const char *state,
                size_t state_len, evl_buf *out, char *err, size_t errlen)
{
    const char *evs[64] = {0};
    size_t lens[64] = {0};
    const char **ev = n <= 64 ? evs : evl_xmalloc(sizeof *ev * n);
    size_t *len = n <= 64 ? lens : evl_xmalloc(sizeof *len * n);
    for (size_t i = 0; i < n; i++) {
        ev[i] = h->text.data + a->ev[from + i].off;
        len[i] = a->ev[from + i].len;
    }
    evl_err e = evl_luahost_apply(host, type, state, state_len, ev, len, n, out,
                                  err, errlen);
    if (ev != evs)
        free(ev);
    if (len != lens)
        free(len);
    return e;
}

/* Events 1..n of a are all there, in order. */
static int complete(const vf_agg *a, long long n)
{
    if (n < 0 || (size_t)n > a->nev)
        return 0;
    for (long long k = 0; k < n; k++)
        if (a->ev[k].seq != k + 1)
            return 0;
    return 1;
}

/* Count an aggregate whose state the new scripts could not fold or
 * compare, and show it while there is room. */
static void state_failed(evl_verify_counts *c, const evl_verify_opts *o,
                         evl_verify_report *r, evl_verify_diff *d, char *err)
{
    c->st_failed++;
    if (r->shown_state++ < o->show) {
        d->kind = "failed";
        d->detail = err;
        vf_report_add(r, d);
    }
}

static void state_aggregate(evl_luahost *host, lua_State *L, const char *type,
                            const vf_hist *h, const vf_agg *a,
                            const evl_verify_opts *o, evl_verify_report *r,
                            evl_buf *out)
{
    evl_verify_counts *c = &r->types[r->ntypes - 1];
    char err[EVL_ERRLEN];
    const char *snap = h->text.data + a->soff;
    evl_verify_diff d = {
        .part = "state", .type = (char *)type, .aggregate_id = a->id};
    if (a->snap_version < 0 || !complete(a, a->snap_version)) {
        c->st_skipped++;
        return;
    }
    out->len = 0;
    if (vf_fold(host, type, h, a, 0, (size_t)a->snap_version, NULL, 0, out, err,
                sizeof err) != EVL_OK) {
        state_failed(c, o, r, &d, err);
        return;
    }
    if (out->len == a->slen && memcmp(out->data, snap, a->slen) == 0) {
        c->st_equal++;
        return;
    }
    vf_diff df = {0};
    if (vf_diff_json(L, snap, a->slen, out->data, out->len, 20, &df, err,
                     sizeof err) != EVL_OK) {
        state_failed(c, o, r, &d, err);
        return;
    }
    if (df.total == 0) {
        c->st_equal++; /* the same JSON written otherwise */
    } else {
        c->st_different++;
        if (r->shown_state++ < o->show) {
            d.kind = "different";
            d.changes = df.v;
            d.nchanges = df.n;
            d.total_changes = df.total;
            vf_report_add(r, &d);
        }
    }
    vf_diff_free(&df);
}

/* ---- the run ------------------------------------------------------------ */

static double now_s(void)
{
    return (double)evl_now_ms() / 1000.0;
}

static evl_err verify_type(const evl_config *cfg, rd_kafka_t *rk,
                           evl_luahost *host, lua_State *L, const char *type,
                           const evl_verify_opts *o, evl_verify_report *r,
                           char *err, size_t errlen)
{
    vf_hist h = {0};
    evl_buf out = {0};
    r->types = evl_xrealloc(r->types, sizeof *r->types * (r->ntypes + 1));
    evl_verify_counts *c = &r->types[r->ntypes++];
    memset(c, 0, sizeof *c);
    c->type = evl_xstrdup(type);
    r->shown_state = r->shown_decisions = 0;

    double t0 = now_s();
    evl_err e = read_type(cfg, rk, type, &h, c, o, err, errlen);
    r->read_s += now_s() - t0;
    if (e)
        goto out;
    size_t n = h.naggs;
    if (o->limit > 0 && (size_t)o->limit < n)
        n = (size_t)o->limit;
    c->aggregates = (long long)h.naggs;
    for (size_t i = 0; i < h.naggs; i++)
        if (h.aggs[i]->nev > 1)
            qsort(h.aggs[i]->ev, h.aggs[i]->nev, sizeof(vf_event), cmp_seq);

    t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        state_aggregate(host, L, type, &h, h.aggs[i], o, r, &out);
        if (o->progress && (i + 1) % 2000 == 0)
            o->progress(o->progress_ud, type, "state", (long long)i + 1,
                        (long long)n);
    }
    r->state_s += now_s() - t0;

    t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        vf_decide_aggregate(host, L, type, &h, h.aggs[i], o, r);
        if (o->progress && (i + 1) % 2000 == 0)
            o->progress(o->progress_ud, type, "decisions", (long long)i + 1,
                        (long long)n);
    }
    /* results of aggregates past the limit are not decisions checked */
    r->decide_s += now_s() - t0;
    evl_luahost_gc(host);
out:
    evl_buf_free(&out);
    vf_hist_free(&h);
    return e;
}

evl_err evl_verify_run(const evl_config *cfg, evl_luahost *host,
                       const evl_verify_opts *opts, evl_verify_report *r,
                       char *err, size_t errlen)
{
    evl_verify_opts o = *opts;
    rd_kafka_t *rk = NULL;
    lua_State *L = NULL;
    char group[128];
    evl_err e;
    if (o.show == 0)
        o.show = 10;
    if (o.aggregate_type && !evl_luahost_aggregate_get(host, o.aggregate_type))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the scripts have no aggregate of type %s",
                          o.aggregate_type);
    /* never joined (assigned by hand) and never committed: the name only
     * satisfies librdkafka */
    snprintf(group, sizeof group, "evlua-verify-%ld", (long)getpid());
    evl_kafka_client_opts ko = {.name = "verify reader",
                                .client_id = "evlua-verify",
                                .group_id = group,
                                .reader = 1};
    if ((e = evl_kafka_consumer_new(cfg, &ko, &rk, err, errlen)))
        return e;
    L = luaL_newstate();
    if (!L)
        abort();
    for (size_t i = 0; i < evl_luahost_naggregates(host) && e == EVL_OK; i++) {
        const char *type = evl_luahost_aggregate_at(host, i)->type;
        if (o.aggregate_type && strcmp(type, o.aggregate_type) != 0)
            continue;
        e = verify_type(cfg, rk, host, L, type, &o, r, err, errlen);
    }
    lua_close(L);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return e;
}
