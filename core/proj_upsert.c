/*
 * proj_upsert.c - the rows of evlua.upsert and evlua.delete coalesced
 * into multi-row statements.
 *
 * A handler's upsert is a single-row statement that also says what it
 * means (luaapi.h): table, columns, key. Every upsert of one shape
 * (operation, table, columns, key) in a transaction goes out as one
 *
 *   INSERT INTO "t" ("id", "name")
 *     SELECT * FROM unnest($1::text[], $2::text[])
 *     ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"
 *
 * and every delete of one shape as one DELETE ... USING unnest(...),
 * the arrays typed from the catalog (pg_attribute, format_type), looked
 * up once per shape. Values stay parameters; identifiers are quoted and
 * must name columns of the table (else the shape is sent row by row, and
 * PostgreSQL's own error for the single-row statement parks the event).
 *
 * Order. Rows wait in buckets, each of one shape, numbered as they open;
 * a flush sends every bucket in that order and empties them. The order of
 * each aggregate's statements holds because
 *   * a plain statement of an aggregate with rows waiting flushes first;
 *   * a row goes into the oldest bucket of its shape that is not older
 *     than the newest bucket holding a row of its aggregate and is newer
 *     than any bucket holding a row of the same (table, key columns, key
 *     values); when there is none it opens a new bucket of its shape (a
 *     layer). So a batch whose aggregates each write their key twice
 *     goes out as two statements per shape, not one per aggregate. An
 *     aggregate's rows go out in the order of its statements, one INSERT
 *     never holds a key twice, every write of a row goes out in the
 *     batch's order (also across aggregates), and no write is merged
 *     away: a constraint an intermediate row violates still parks its
 *     aggregate, as one statement per event would.
 * A plain statement of one aggregate is not ordered against another
 * aggregate's waiting rows (as across partitions).
 * A bucket of one row sends the row's own single-row statement, so its
 * failure names the event at once.
 *
 * Failures. A multi-row statement that fails names no event: the
 * projector sends the transaction again row by row (b->percall), which
 * finds the culprit the way any statement failure does (proj_sql.c parks
 * its aggregate), then goes back to coalescing for the rest.
 */
#include "projector_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* ---- shapes ----------------------------------------------------------------
 */

static uint64_t shape_hash(const evl_luahost_stmt *st)
{
    uint64_t h = evl_hash_str(st->table) ^ (uint64_t)st->op << 56 ^
                 (uint64_t)st->nkey << 48;
    for (size_t i = 0; i < st->nparams; i++)
        h = h * 1099511628211ULL ^ evl_hash_str(st->columns[i]);
    return h;
}

static int shape_is(const ushape *s, const evl_luahost_stmt *st, uint64_t h)
{
    if (s->hash != h || s->op != st->op || s->ncols != (int)st->nparams ||
        s->nkey != (int)st->nkey || strcmp(s->table, st->table) != 0)
        return 0;
    for (int i = 0; i < s->ncols; i++)
        if (strcmp(s->cols[i], st->columns[i]) != 0)
            return 0;
    return 1;
}

int proj_upsert_shape(projector *pj, const evl_luahost_stmt *st)
{
    if (st->op == EVL_SQL_PLAIN)
        return -1;
    uint64_t h = shape_hash(st);
    for (size_t i = 0; i < pj->nshapes; i++)
        if (shape_is(&pj->shapes[i], st, h))
            return (int)i;
    if (pj->nshapes == pj->capshapes) {
        pj->capshapes = pj->capshapes ? 2 * pj->capshapes : 8;
        pj->shapes =
            evl_xrealloc(pj->shapes, sizeof *pj->shapes * pj->capshapes);
    }
    ushape *s = &pj->shapes[pj->nshapes];
    memset(s, 0, sizeof *s);
    s->op = st->op;
    s->table = evl_xstrdup(st->table);
    s->ncols = (int)st->nparams;
    s->nkey = (int)st->nkey;
    s->cols = evl_xmalloc(sizeof *s->cols * st->nparams);
    for (size_t i = 0; i < st->nparams; i++)
        s->cols[i] = evl_xstrdup(st->columns[i]);
    s->hash = h;
    return (int)pj->nshapes++;
}

void proj_upsert_sql(evl_buf *out, const ushape *s, const char *const *types)
{
    char num[32];
    out->len = 0;
    if (s->op == EVL_SQL_DELETE) {
        evl_buf_puts(out, "DELETE FROM ");
        evl_luaapi_sql_table(out, s->table);
        evl_buf_puts(out, " AS evlua_t USING unnest(");
    } else {
        evl_buf_puts(out, "INSERT INTO ");
        evl_luaapi_sql_table(out, s->table);
        evl_buf_puts(out, " (");
        for (int i = 0; i < s->ncols; i++) {
            if (i)
                evl_buf_puts(out, ", ");
            evl_luaapi_sql_column(out, s->cols[i]);
        }
        evl_buf_puts(out, ") SELECT * FROM unnest(");
    }
    for (int i = 0; i < s->ncols; i++) {
        snprintf(num, sizeof num, "%s$%d::", i ? ", " : "", i + 1);
        evl_buf_puts(out, num);
        evl_buf_puts(out, types[i]);
        evl_buf_puts(out, "[]");
    }
    evl_buf_putc(out, ')');
    if (s->op == EVL_SQL_DELETE) {
        evl_buf_puts(out, " AS evlua_u(");
        for (int i = 0; i < s->ncols; i++) {
            if (i)
                evl_buf_puts(out, ", ");
            evl_luaapi_sql_column(out, s->cols[i]);
        }
        evl_buf_puts(out, ") WHERE ");
        for (int i = 0; i < s->ncols; i++) {
            if (i)
                evl_buf_puts(out, " AND ");
            evl_buf_puts(out, "evlua_t.");
            evl_luaapi_sql_column(out, s->cols[i]);
            evl_buf_puts(out, " = evlua_u.");
            evl_luaapi_sql_column(out, s->cols[i]);
        }
    } else {
        evl_luaapi_sql_conflict(out, (const char *const *)s->cols,
                                (size_t)s->ncols, (size_t)s->nkey);
    }
    evl_buf_putc(out, '\0');
    out->len--;
}

/* The catalog's columns of the shape's table: name, type, and whether
 * unnest can carry it (not an array: unnest would flatten it; not
 * generated: it takes no value). */
#define CATALOG_SQL                                                            \
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "                 \
    "t.typcategory <> 'A' AND a.attndims = 0 AND a.attgenerated = '' "         \
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "                \
    "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 "                     \
    "AND NOT a.attisdropped"

static void resolve_one(projector *pj, ushape *s)
{
    char err[EVL_ERRLEN];
    evl_buf name = {0};
    evl_luaapi_sql_table(&name, s->table);
    evl_buf_putc(&name, '\0');
    const char *vals[1] = {name.data};
    PGresult *res = NULL;
    evl_err e =
        evl_pg_query(pj->pg, CATALOG_SQL, 1, vals, &res, err, sizeof err);
    evl_buf_free(&name);
    if (e != EVL_OK) { /* row by row this time; looked up again later */
        evl_log(EVL_LOG_WARN,
                "could not read the catalog for coalesced upserts; sending "
                "them row by row this time",
                "projection", pj->name, "table", s->table, "error", err, NULL);
        return;
    }
    const char **types = evl_xmalloc(sizeof *types * (size_t)s->ncols);
    int ok = 1;
    for (int i = 0; i < s->ncols && ok; i++) {
        types[i] = NULL;
        for (int r = 0; r < PQntuples(res); r++)
            if (strcmp(PQgetvalue(res, r, 0), s->cols[i]) == 0 &&
                strcmp(PQgetvalue(res, r, 2), "t") == 0)
                types[i] = PQgetvalue(res, r, 1);
        ok = types[i] != NULL;
    }
    s->state = ok ? 1 : -1;
    if (ok) {
        evl_buf sql = {0};
        proj_upsert_sql(&sql, s, types);
        free(s->sql);
        s->sql = evl_xstrdup(sql.data);
        evl_buf_free(&sql);
    }
    free(types);
    PQclear(res);
}

void proj_upsert_resolve(projector *pj)
{
    for (size_t i = 0; i < pj->nshapes; i++)
        if (pj->shapes[i].state == 0)
            resolve_one(pj, &pj->shapes[i]);
}

void proj_upsert_prepare(projector *pj)
{
    for (size_t i = 0; i < pj->nshapes; i++)
        if (pj->shapes[i].state == 1)
            evl_pg_pipe_prepare(pj->pg, pj->shapes[i].sql);
}

void proj_upsert_forget(projector *pj)
{
    for (size_t i = 0; i < pj->nshapes; i++)
        pj->shapes[i].state = 0;
}

/* ---- planning ------------------------------------------------------------ */

typedef struct bucket {
    int shape;
    int *rows; /* statement indices */
    size_t n, cap;
} bucket;

typedef struct kent {
    uint64_t h;
    unsigned epoch; /* valid while it equals upsend.epoch */
    int stmt, bucket;
} kent;

typedef struct upsend {
    bucket *buckets;
    size_t nb, capb;
    kent *keys;
    size_t kcap;
    int *glast; /* per group: the newest bucket holding one of its rows */
    unsigned *gepoch;
    size_t gcap;
    unsigned epoch;
    evl_buf *arrs; /* one array literal per column */
    size_t narrs;
    const char **vals;
} upsend;

typedef struct plan {
    projector *pj;
    batch *b;
    upsend *u;
    proj_upsert_emit emit;
    void *ud;
    int sent;
} plan;

void proj_upsert_free(projector *pj)
{
    for (size_t i = 0; i < pj->nshapes; i++) {
        ushape *s = &pj->shapes[i];
        for (int c = 0; c < s->ncols; c++)
            free(s->cols[c]);
        free(s->cols);
        free(s->table);
        free(s->sql);
    }
    free(pj->shapes);
    pj->shapes = NULL;
    pj->nshapes = pj->capshapes = 0;
    upsend *u = pj->us;
    if (!u)
        return;
    for (size_t i = 0; i < u->capb; i++)
        free(u->buckets[i].rows);
    free(u->buckets);
    free(u->keys);
    free(u->glast);
    free(u->gepoch);
    for (size_t i = 0; i < u->narrs; i++)
        evl_buf_free(&u->arrs[i]);
    free(u->arrs);
    free(u->vals);
    free(u);
    pj->us = NULL;
}

static void arr_value(evl_buf *a, const char *v)
{
    if (v) {
        evl_pg_array_add(a, v, strlen(v), a->len == 0);
    } else {
        evl_buf_putc(a, a->len == 0 ? '{' : ',');
        evl_buf_puts(a, "NULL");
    }
}

static void send_bucket(plan *p, const bucket *k)
{
    const batch *b = p->b;
    if (k->n == 1) { /* its own statement: a failure names the event */
        const pstmt *ps = &b->stmts[k->rows[0]];
        p->emit(p->ud, ps->sql, ps->nparams, ps->values, 2L * k->rows[0]);
        p->sent++;
        return;
    }
    const ushape *s = &p->pj->shapes[k->shape];
    upsend *u = p->u;
    if (u->narrs < (size_t)s->ncols) {
        u->arrs = evl_xrealloc(u->arrs, sizeof *u->arrs * (size_t)s->ncols);
        u->vals = evl_xrealloc(u->vals, sizeof *u->vals * (size_t)s->ncols);
        memset(u->arrs + u->narrs, 0,
               sizeof *u->arrs * ((size_t)s->ncols - u->narrs));
        u->narrs = (size_t)s->ncols;
    }
    for (int c = 0; c < s->ncols; c++) {
        evl_buf *a = &u->arrs[c];
        a->len = 0;
        for (size_t r = 0; r < k->n; r++)
            arr_value(a, b->stmts[k->rows[r]].values[c]);
        evl_buf_putc(a, '}');
        evl_buf_putc(a, '\0');
        u->vals[c] = a->data;
    }
    p->emit(p->ud, s->sql, s->ncols, u->vals, TAG_COALESCED);
    p->sent++;
}

static void flush(plan *p)
{
    upsend *u = p->u;
    for (size_t i = 0; i < u->nb; i++)
        if (u->buckets[i].n > 0)
            send_bucket(p, &u->buckets[i]);
    u->nb = 0;
    u->epoch++;
}

static int group_waiting(const upsend *u, int g)
{
    return u->gepoch[g] == u->epoch ? u->glast[g] : -1;
}

static uint64_t key_hash(const projector *pj, const pstmt *ps)
{
    const ushape *s = &pj->shapes[ps->shape];
    uint64_t h = evl_hash_str(s->table);
    for (int i = 0; i < s->nkey; i++) {
        h = h * 1099511628211ULL ^ evl_hash_str(s->cols[i]);
        h = h * 1099511628211ULL ^
            (ps->values[i] ? evl_hash_str(ps->values[i]) : 0x5a5aULL);
    }
    return h;
}

static int same_key(const projector *pj, const pstmt *x, const pstmt *y)
{
    const ushape *a = &pj->shapes[x->shape], *c = &pj->shapes[y->shape];
    if (a->nkey != c->nkey || strcmp(a->table, c->table) != 0)
        return 0;
    for (int i = 0; i < a->nkey; i++) {
        if (strcmp(a->cols[i], c->cols[i]) != 0)
            return 0;
        const char *v = x->values[i], *w = y->values[i];
        if ((v == NULL) != (w == NULL) || (v && strcmp(v, w) != 0))
            return 0;
    }
    return 1;
}

/* The slot of ps's key in the current epoch: its entry, or the empty
 * slot where it goes. */
static kent *key_slot(plan *p, const pstmt *ps, uint64_t h)
{
    upsend *u = p->u;
    for (size_t i = h & (u->kcap - 1);; i = (i + 1) & (u->kcap - 1)) {
        kent *e = &u->keys[i];
        if (e->epoch != u->epoch)
            return e;
        if (e->h == h && same_key(p->pj, &p->b->stmts[e->stmt], ps))
            return e;
    }
}

/* A new bucket of shape, the newest. */
static int new_bucket(plan *p, int shape)
{
    upsend *u = p->u;
    if (u->nb == u->capb) {
        size_t cap = u->capb ? 2 * u->capb : 8;
        u->buckets = evl_xrealloc(u->buckets, sizeof *u->buckets * cap);
        memset(u->buckets + u->capb, 0, sizeof *u->buckets * (cap - u->capb));
        u->capb = cap;
    }
    bucket *k = &u->buckets[u->nb];
    k->shape = shape;
    k->n = 0;
    return (int)u->nb++;
}

static void add_row(plan *p, int g, int si)
{
    upsend *u = p->u;
    const pstmt *ps = &p->b->stmts[si];
    uint64_t h = key_hash(p->pj, ps);
    kent *e = key_slot(p, ps, h);
    /* it must go after the aggregate's rows waiting (into the bucket of
     * its newest one at the earliest) and after any row of its key
     * waiting (into a later bucket): the oldest bucket of the shape that
     * allows both, else a new one (a layer). The oldest, not the newest:
     * when every aggregate writes its key twice, the second rows share
     * one layer instead of opening one each. */
    int order = group_waiting(u, g);
    if (order < 0)
        order = 0;
    if (e->epoch == u->epoch && e->bucket >= order)
        order = e->bucket + 1;
    while (order < (int)u->nb && u->buckets[order].shape != ps->shape)
        order++;
    if (order >= (int)u->nb)
        order = new_bucket(p, ps->shape);
    bucket *k = &u->buckets[order];
    if (k->n == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 64;
        k->rows = evl_xrealloc(k->rows, sizeof *k->rows * k->cap);
    }
    k->rows[k->n++] = si;
    e->h = h;
    e->epoch = u->epoch;
    e->stmt = si;
    e->bucket = order;
    u->glast[g] = order;
    u->gepoch[g] = u->epoch;
}

static void plan_setup(plan *p)
{
    projector *pj = p->pj;
    batch *b = p->b;
    if (!pj->us) {
        pj->us = evl_xmalloc(sizeof *pj->us);
        memset(pj->us, 0, sizeof *pj->us);
    }
    upsend *u = p->u = pj->us;
    size_t want = 64;
    while (want < 2 * b->nstmts + 2)
        want *= 2;
    if (u->kcap < want) {
        free(u->keys);
        u->keys = evl_xmalloc(sizeof *u->keys * want);
        u->kcap = want;
    }
    if (u->gcap < b->ngroups) {
        free(u->glast);
        free(u->gepoch);
        u->gcap = b->ngroups;
        u->glast = evl_xmalloc(sizeof *u->glast * u->gcap);
        u->gepoch = evl_xmalloc(sizeof *u->gepoch * u->gcap);
    }
    /* a fresh start: nothing of any earlier epoch counts */
    memset(u->keys, 0, sizeof *u->keys * u->kcap);
    if (u->gcap) /* none yet when no batch had groups (NULL) */
        memset(u->gepoch, 0, sizeof *u->gepoch * u->gcap);
    u->epoch = 1;
    u->nb = 0;
}

int proj_upsert_plan(projector *pj, batch *b, size_t lo, size_t hi,
                     proj_upsert_emit emit, void *ud)
{
    plan p = {pj, b, NULL, emit, ud, 0};
    plan_setup(&p);
    for (size_t gi = lo; gi < hi; gi++) {
        const pgroup *g = &b->groups[gi];
        if (!g->touched)
            continue;
        for (int i = g->first; i >= 0; i = b->evs[i].next) {
            const pev *ev = &b->evs[i];
            if (ev->state == EV_PARK) {
                emit(ud, NULL, 0, NULL, i);
                continue;
            }
            if (ev->state != EV_APPLY)
                continue;
            for (size_t s = 0; s < ev->nstmt; s++) {
                int si = (int)(ev->stmt0 + s);
                const pstmt *ps = &b->stmts[si];
                if (!b->percall && ps->shape >= 0 &&
                    pj->shapes[ps->shape].state == 1) {
                    add_row(&p, (int)gi, si);
                    continue;
                }
                if (group_waiting(p.u, (int)gi) >= 0)
                    flush(&p);
                emit(ud, ps->sql, ps->nparams, ps->values, 2L * si);
                p.sent++;
            }
        }
    }
    flush(&p);
    return p.sent;
}
