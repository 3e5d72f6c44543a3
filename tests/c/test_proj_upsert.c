/*
 * test_proj_upsert.c - evlua.upsert / evlua.delete and their coalescing
 * (core/luaapi_sql.c, core/proj_upsert.c), no database: what a handler's
 * upsert becomes, the errors that name what is wrong, the multi-row
 * statements, and the order proj_upsert_plan sends a batch's rows in.
 * tests/c/test_projector_upsert.c runs them against PostgreSQL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "luahost.h"
#include "projector_int.h"

/* ---- the Lua side, through the production host ------------------------- */

static const char proj_script[] =
    "local function u(t, r, o) return evlua.upsert(t, r, o) end\n"
    "return { name = 'p', on = {\n"
    "  Up = function(e) return evlua.upsert('customers', { name = "
    "e.data.name, id = e.aggregate_id, score = 3 }, { key = 'id' }) end,\n"
    "  Two = function(e) return { evlua.upsert('s.t', { b = 1, a = 2, k2 = "
    "'x', k1 = evlua.null }, { key = { 'k2', 'k1' } }),\n"
    "     { 'UPDATE x SET n = n + 1' }, evlua.delete('t', { z = 1, y = 'q' }) "
    "} end,\n"
    "  KeyOnly = function(e) return evlua.upsert('t', { id = 1 }, { key = "
    "'id' }) end,\n"
    "  NoKey = function(e) return u('t', { id = 1 }, {}) end,\n"
    "  KeyMissing = function(e) return u('t', { id = 1 }, { key = 'nope' }) "
    "end,\n"
    "  BadCol = function(e) return u('t', { 'x' }, { key = 'id' }) end,\n"
    "  BadTable = function(e) return u('a.b.c', { id = 1 }, { key = 'id' }) "
    "end,\n"
    "  EmptyRow = function(e) return evlua.delete('t', {}) end,\n"
    "  BadOpt = function(e) return u('t', { id = 1 }, { key = 'id', keys = "
    "1 }) end,\n"
    "  Quote = function(e) return evlua.upsert('we\"ird', { ['c\"l'] = 1, "
    "id = 2 }, { key = 'id' }) end,\n"
    "}}\n";

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "w");
    if (!fp) {
        perror(path);
        exit(2);
    }
    fputs(text, fp);
    fclose(fp);
}

static evl_err project(evl_luahost *h, const char *type, evl_luahost_stmts *out,
                       char *err)
{
    char ev[512];
    snprintf(ev, sizeof ev,
             "{\"id\":\"e1\",\"type\":\"%s\",\"aggregate_type\":\"customer\","
             "\"aggregate_id\":\"c1\",\"sequence\":1,\"data\":{\"name\":"
             "\"Ann\"}}",
             type);
    return evl_luahost_project(h, "p", ev, strlen(ev), out, err, 4096);
}

static void test_lua(void)
{
    char root[] = "/tmp/evlua-upsert-XXXXXX", adir[1200], pdir[1200];
    char err[4096];
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp");
        return;
    }
    snprintf(adir, sizeof adir, "%s/aggregates", root);
    snprintf(pdir, sizeof pdir, "%s/projections", root);
    mkdir(adir, 0700);
    mkdir(pdir, 0700);
    write_file(pdir, "p.lua", proj_script);
    const char *pdirs[1] = {pdir}, *adirs[1] = {adir};
    evl_luahost_config cfg = {0};
    cfg.aggregate_dirs = adirs;
    cfg.naggregate_dirs = 1;
    cfg.projection_dirs = pdirs;
    cfg.nprojection_dirs = 1;
    cfg.max_string_op = 1024 * 1024;
    evl_luahost *h = NULL;
    CHECK_INT(evl_luahost_new(&cfg, &h, NULL, err, sizeof err), EVL_OK,
              "the projection loads");
    if (!h) {
        fprintf(stderr, "    (%s)\n", err);
        return;
    }
    evl_luahost_stmts s = {0};

    CHECK_INT(project(h, "Up", &s, err), EVL_OK, "an upsert is a statement");
    CHECK_INT(s.n, 1, "one statement");
    if (s.n == 1) {
        const evl_luahost_stmt *st = &s.stmts[0];
        CHECK_STR(st->sql,
                  "INSERT INTO \"customers\" (\"id\", \"name\", \"score\") "
                  "VALUES ($1, $2, $3) ON CONFLICT (\"id\") DO UPDATE SET "
                  "\"name\" = EXCLUDED.\"name\", \"score\" = "
                  "EXCLUDED.\"score\"",
                  "the key first, then the other columns by name");
        CHECK_INT(st->op, EVL_SQL_UPSERT, "it says it is an upsert");
        CHECK_STR(st->table, "customers", "of its table");
        CHECK_INT(st->nkey, 1, "keyed by one column");
        CHECK_INT(st->nparams, 3, "three values");
        if (st->nparams == 3) {
            CHECK_STR(st->columns[0], "id", "column 1");
            CHECK_STR(st->columns[2], "score", "column 3");
            CHECK_STR(st->params[0].text, "c1", "$1 is the id");
            CHECK_STR(st->params[1].text, "Ann", "$2 the name");
            CHECK_INT(st->params[2].type, EVL_PARAM_INTEGER, "$3 an integer");
        }
    }

    CHECK_INT(project(h, "Two", &s, err), EVL_OK, "a list mixes them");
    CHECK_INT(s.n, 3, "three statements");
    if (s.n == 3) {
        CHECK_STR(s.stmts[0].sql,
                  "INSERT INTO \"s\".\"t\" (\"k2\", \"k1\", \"a\", \"b\") "
                  "VALUES ($1, $2, $3, $4) ON CONFLICT (\"k2\", \"k1\") DO "
                  "UPDATE SET \"a\" = EXCLUDED.\"a\", \"b\" = EXCLUDED.\"b\"",
                  "a two-column key in its order; schema.table");
        CHECK_INT(s.stmts[0].nkey, 2, "two key columns");
        CHECK_INT(s.stmts[0].params[1].type, EVL_PARAM_NULL,
                  "evlua.null binds NULL");
        CHECK_INT(s.stmts[1].op, EVL_SQL_PLAIN, "plain SQL stays plain");
        CHECK_STR(s.stmts[2].sql,
                  "DELETE FROM \"t\" WHERE \"y\" = $1 AND \"z\" = $2",
                  "a delete: every column is key");
        CHECK_INT(s.stmts[2].op, EVL_SQL_DELETE, "it says it is a delete");
        CHECK_INT(s.stmts[2].nkey, 2, "all of it key");
    }

    CHECK_INT(project(h, "KeyOnly", &s, err), EVL_OK, "a key-only upsert");
    if (s.n == 1)
        CHECK_STR(s.stmts[0].sql,
                  "INSERT INTO \"t\" (\"id\") VALUES ($1) ON CONFLICT "
                  "(\"id\") DO NOTHING",
                  "does nothing on conflict");

    CHECK_INT(project(h, "Quote", &s, err), EVL_OK, "odd names");
    if (s.n == 1)
        CHECK_STR(s.stmts[0].sql,
                  "INSERT INTO \"we\"\"ird\" (\"id\", \"c\"\"l\") VALUES ($1, "
                  "$2) ON CONFLICT (\"id\") DO UPDATE SET \"c\"\"l\" = "
                  "EXCLUDED.\"c\"\"l\"",
                  "are quoted, quotes doubled");

    static const struct {
        const char *type, *msg;
    } bad[] = {
        {"NoKey", "evlua.upsert: the key option is missing"},
        {"KeyMissing", "evlua.upsert: key column 'nope' is not in the row"},
        {"BadCol", "evlua.upsert: the row has a number key (1)"},
        {"BadTable", "table name 'a.b.c' is not NAME or SCHEMA.NAME"},
        {"EmptyRow", "evlua.delete: the key row is empty"},
        {"BadOpt", "evlua.upsert: unknown option keys"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char what[128];
        snprintf(what, sizeof what, "%s fails", bad[i].type);
        CHECK_INT(project(h, bad[i].type, &s, err), EVL_EPERMANENT, what);
        snprintf(what, sizeof what, "%s says why", bad[i].type);
        CHECK_HAS(err, bad[i].msg, what);
    }
    evl_luahost_stmts_free(&s);
    evl_luahost_free(h);
    unlink(strcat(strcpy(err, pdir), "/p.lua"));
    rmdir(pdir);
    rmdir(adir);
    rmdir(root);
}

/* ---- the multi-row statements ------------------------------------------- */

static int add_shape(projector *pj, int op, const char *table,
                     const char *const *cols, size_t ncols, size_t nkey,
                     const char *const *types)
{
    evl_luahost_stmt st = {0};
    st.op = op;
    st.table = table;
    st.columns = cols;
    st.nparams = ncols;
    st.nkey = nkey;
    int i = proj_upsert_shape(pj, &st);
    ushape *s = &pj->shapes[i];
    if (types) {
        evl_buf b = {0};
        proj_upsert_sql(&b, s, types);
        s->sql = evl_xstrdup(b.data);
        s->state = 1;
        evl_buf_free(&b);
    }
    return i;
}

static void test_sql(void)
{
    projector pj;
    memset(&pj, 0, sizeof pj);
    const char *cols[] = {"id", "name"}, *types[] = {"integer", "text"};
    int u = add_shape(&pj, EVL_SQL_UPSERT, "public.c", cols, 2, 1, types);
    int d = add_shape(&pj, EVL_SQL_DELETE, "c", cols, 2, 2, types);
    CHECK_STR(pj.shapes[u].sql,
              "INSERT INTO \"public\".\"c\" (\"id\", \"name\") SELECT * FROM "
              "unnest($1::integer[], $2::text[]) ON CONFLICT (\"id\") DO "
              "UPDATE SET \"name\" = EXCLUDED.\"name\"",
              "the multi-row upsert");
    CHECK_STR(pj.shapes[d].sql,
              "DELETE FROM \"c\" AS evlua_t USING unnest($1::integer[], "
              "$2::text[]) AS evlua_u(\"id\", \"name\") WHERE evlua_t.\"id\" "
              "= evlua_u.\"id\" AND evlua_t.\"name\" = evlua_u.\"name\"",
              "the multi-row delete");
    CHECK_INT(add_shape(&pj, EVL_SQL_UPSERT, "public.c", cols, 2, 1, NULL), u,
              "an equal shape is the same shape");
    CHECK(add_shape(&pj, EVL_SQL_UPSERT, "public.c", cols, 2, 2, NULL) != u,
          "another key is another shape");
    proj_upsert_free(&pj);
}

/* ---- planning ------------------------------------------------------------ */

/* A batch built by hand: groups of events, each event's statements. */
typedef struct fake {
    projector pj;
    batch b;
    evl_buf log; /* what was emitted, one line each */
} fake;

static void fake_init(fake *f)
{
    memset(f, 0, sizeof *f);
    static const char *const c2[] = {"id", "name"}, *const t2[] = {"text",
                                                                   "text"};
    static const char *const c1[] = {"id"}, *const t1[] = {"text"};
    static const char *const co[] = {"id", "other"};
    add_shape(&f->pj, EVL_SQL_UPSERT, "c", c2, 2, 1, t2);   /* 0 */
    add_shape(&f->pj, EVL_SQL_DELETE, "c", c1, 1, 1, t1);   /* 1 */
    add_shape(&f->pj, EVL_SQL_UPSERT, "c", co, 2, 1, t2);   /* 2 */
    add_shape(&f->pj, EVL_SQL_UPSERT, "d", co, 2, 1, NULL); /* 3: unknown */
    f->b.groups = calloc(8, sizeof(pgroup));
    f->b.evs = calloc(32, sizeof(pev));
    f->b.stmts = calloc(64, sizeof(pstmt));
}

static void fake_free(fake *f)
{
    for (size_t i = 0; i < f->b.nstmts; i++)
        free(f->b.stmts[i].values);
    free(f->b.groups);
    free(f->b.evs);
    free(f->b.stmts);
    proj_upsert_free(&f->pj);
    evl_buf_free(&f->log);
}

/* An event of group g with state st. */
static int fake_event(fake *f, int g, int st)
{
    batch *b = &f->b;
    while ((size_t)g >= b->ngroups) {
        b->groups[b->ngroups].first = -1;
        b->groups[b->ngroups].touched = 1;
        b->ngroups++;
    }
    int e = (int)b->nevs++;
    pev *ev = &b->evs[e];
    ev->group = g;
    ev->next = -1;
    ev->state = st;
    ev->stmt0 = b->nstmts;
    pgroup *gr = &b->groups[g];
    if (gr->first < 0)
        gr->first = e;
    else
        b->evs[gr->last].next = e;
    gr->last = e;
    return e;
}

/* A statement of the last event: shape (or -1 and sql), values. */
static void fake_stmt(fake *f, int shape, const char *sql, const char *v0,
                      const char *v1)
{
    batch *b = &f->b;
    pstmt *ps = &b->stmts[b->nstmts++];
    ps->shape = shape;
    ps->sql = shape >= 0 ? "ROW" : sql;
    ps->nparams = shape < 0 ? 0 : shape == 1 ? 1 : 2;
    ps->values = calloc(2, sizeof(char *));
    ps->values[0] = v0;
    ps->values[1] = v1;
    ps->ev = (int)b->nevs - 1;
    b->evs[b->nevs - 1].nstmt++;
}

static void record(void *ud, const char *sql, int n, const char *const *values,
                   long tag)
{
    fake *f = ud;
    char t[32];
    if (!sql) {
        snprintf(t, sizeof t, "park %ld\n", tag);
        evl_buf_puts(&f->log, t);
        return;
    }
    if (tag == TAG_COALESCED) {
        int i = 0;
        while (i < (int)f->pj.nshapes && f->pj.shapes[i].sql != sql)
            i++;
        snprintf(t, sizeof t, "multi %d", i);
    } else {
        snprintf(t, sizeof t, "%s %ld", strcmp(sql, "ROW") ? sql : "row",
                 tag / 2);
    }
    evl_buf_puts(&f->log, t);
    for (int i = 0; i < n; i++) {
        evl_buf_putc(&f->log, ' ');
        evl_buf_puts(&f->log, values[i] ? values[i] : "(null)");
    }
    evl_buf_putc(&f->log, '\n');
}

static void check_plan(fake *f, const char *want, const char *what)
{
    f->log.len = 0;
    proj_upsert_plan(&f->pj, &f->b, 0, f->b.ngroups, record, f);
    evl_buf_putc(&f->log, '\0');
    CHECK_STR(f->log.data, want, what);
    fake_free(f);
}

static void test_plan(void)
{
    fake f;

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "a", "A");
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 0, NULL, "b", "B \"q\"");
    fake_event(&f, 2, EV_APPLY);
    fake_stmt(&f, 0, NULL, "c", NULL);
    check_plan(&f, "multi 0 {\"a\",\"b\",\"c\"} {\"A\",\"B \\\"q\\\"\",NULL}\n",
               "three aggregates' upserts: one statement, NULL and quotes "
               "in the arrays");

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "a", "1");
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "a", "2");
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 0, NULL, "b", "3");
    check_plan(&f, "multi 0 {\"a\",\"b\"} {\"1\",\"3\"}\nrow 1 a 2\n",
               "one aggregate's key twice: a second layer, nothing merged "
               "away; another aggregate's row joins the oldest layer");

    fake_init(&f);
    for (int g = 0; g < 4; g++) {
        static const char *const id[] = {"a", "b", "c", "d"};
        fake_event(&f, g, EV_APPLY);
        fake_stmt(&f, 0, NULL, id[g], "1");
        fake_event(&f, g, EV_APPLY);
        fake_stmt(&f, 0, NULL, id[g], "2");
    }
    check_plan(&f,
               "multi 0 {\"a\",\"b\",\"c\",\"d\"} "
               "{\"1\",\"1\",\"1\",\"1\"}\n"
               "multi 0 {\"a\",\"b\",\"c\",\"d\"} "
               "{\"2\",\"2\",\"2\",\"2\"}\n",
               "every aggregate writes its key twice: two statements, "
               "not one per aggregate");

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "a", "1");
    fake_stmt(&f, -1, "PLAIN", NULL, NULL);
    fake_stmt(&f, 0, NULL, "a2", "2");
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 0, NULL, "b", "3");
    check_plan(&f, "row 0 a 1\nPLAIN 1\nmulti 0 {\"a2\",\"b\"} {\"2\",\"3\"}\n",
               "plain SQL goes after the aggregate's earlier rows, before "
               "its later ones; a bucket of one row is its own statement");

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "x", "1");
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 0, NULL, "x", "2");
    check_plan(&f, "row 0 x 1\nrow 1 x 2\n",
               "two aggregates, one key: two statements, in batch order");

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "x", "1");
    fake_stmt(&f, 1, NULL, "x", NULL);
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 0, NULL, "y", "1");
    fake_stmt(&f, 1, NULL, "y", NULL);
    check_plan(&f,
               "multi 0 {\"x\",\"y\"} {\"1\",\"1\"}\nmulti 1 {\"x\",\"y\"}\n",
               "upsert then delete of a key: the deletes follow");

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "x", "1");
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 1, NULL, "y", NULL);
    fake_stmt(&f, 0, NULL, "y", "2");
    fake_event(&f, 2, EV_APPLY);
    fake_stmt(&f, 0, NULL, "z", "3");
    check_plan(&f, "multi 0 {\"x\",\"z\"} {\"1\",\"3\"}\nrow 1 y\nrow 2 y 2\n",
               "delete then upsert in one aggregate: sent in that order");

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "x", "1");
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 2, NULL, "x", "o");
    fake_event(&f, 2, EV_APPLY);
    fake_stmt(&f, 0, NULL, "x", "3");
    check_plan(&f, "row 0 x 1\nrow 1 x o\nrow 2 x 3\n",
               "a key of an older shape written again by another aggregate "
               "after a newer one: flushed in between");

    fake_init(&f);
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "a", "1");
    fake_stmt(&f, 3, NULL, "a", "u");
    fake_event(&f, 1, EV_PARK);
    fake_event(&f, 2, EV_APPLY);
    fake_stmt(&f, 0, NULL, "c", "1");
    fake_event(&f, 3, EV_REPLAY);
    check_plan(&f, "row 0 a 1\nrow 1 a u\npark 1\nrow 2 c 1\n",
               "a shape not looked up goes row by row, in order; parked "
               "events are sent, replayed ones are not");

    fake_init(&f);
    f.b.percall = 1;
    fake_event(&f, 0, EV_APPLY);
    fake_stmt(&f, 0, NULL, "a", "1");
    fake_event(&f, 1, EV_APPLY);
    fake_stmt(&f, 0, NULL, "b", "2");
    check_plan(&f, "row 0 a 1\nrow 1 b 2\n",
               "percall: every row its own statement");
}

int main(void)
{
    test_lua();
    test_sql();
    test_plan();
    return check_done();
}
