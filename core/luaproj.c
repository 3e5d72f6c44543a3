/*
 * luaproj.c - the projection operations of the script host:
 * evl_luahost_project and evl_luahost_reset (luahost.h gives their
 * contracts).
 *
 * The idea: a projection handler returns SQL statements as Lua tables;
 * this file checks each one (SQL text, placeholders, parameter types,
 * UTF-8) and copies it into the caller's evl_luahost_stmts, typed and
 * ready to bind, so the projector never touches Lua values.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "luaapi.h"
#include "luahost_int.h"

/* ---- project ---------------------------------------------------------- */

static evl_luahost_param *new_param(evl_luahost_stmts *s)
{
    if (s->nparams == s->capparams) {
        s->capparams = s->capparams ? 2 * s->capparams : 16;
        s->params = evl_xrealloc(s->params, sizeof *s->params * s->capparams);
    }
    memset(&s->params[s->nparams], 0, sizeof *s->params);
    return &s->params[s->nparams++];
}

/* Append a NUL-terminated string to the text buffer; its offset. */
static const char *put_text(evl_buf *b, const char *p, size_t n)
{
    const char *off = OFF(b->len);
    evl_buf_put(b, p, n);
    evl_buf_putc(b, '\0');
    return off;
}

/* Check a string bound for PostgreSQL text: UTF-8, no NUL. */
static const char *bad_text(const char *s, size_t n)
{
    if (memchr(s, '\0', n))
        return "contains a NUL byte";
    if (evl_utf8_check(s, n) >= 0)
        return "is not valid UTF-8";
    return NULL;
}

static int sql_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* A byte of an identifier ($1 after one is not a placeholder). */
static int sql_word(char c)
{
    return sql_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (unsigned char)c >= 0x80;
}

/* The highest $N placeholder of the SQL text, outside string literals,
 * quoted identifiers, comments and dollar-quoted bodies; 0 when none. */
static long highest_placeholder(const char *sql, size_t len)
{
    long best = 0;
    size_t i = 0;
    while (i < len) {
        char c = sql[i];
        if (c == '\'' || c == '"') { /* '' and "" escape themselves */
            for (i++; i < len; i++) {
                if (sql[i] != c)
                    continue;
                if (i + 1 < len && sql[i + 1] == c) {
                    i++;
                    continue;
                }
                break;
            }
            i++;
        } else if (c == '-' && i + 1 < len && sql[i + 1] == '-') {
            while (i < len && sql[i] != '\n')
                i++;
        } else if (c == '/' && i + 1 < len && sql[i + 1] == '*') {
            const char *end = NULL;
            for (size_t j = i + 2; j + 1 < len; j++)
                if (sql[j] == '*' && sql[j + 1] == '/') {
                    end = sql + j + 2;
                    break;
                }
            i = end ? (size_t)(end - sql) : len;
        } else if (c == '$' && i + 1 < len && sql_digit(sql[i + 1]) &&
                   (i == 0 || !(sql_word(sql[i - 1]) || sql[i - 1] == '_'))) {
            long n = 0;
            for (i++; i < len && sql_digit(sql[i]); i++)
                n = n < 100000 ? n * 10 + (sql[i] - '0') : n;
            if (n > best)
                best = n;
        } else if (c == '$') { /* $tag$ ... $tag$ */
            size_t t = i + 1;
            while (t < len && (sql_word(sql[t]) || sql[t] == '_'))
                t++;
            if (t < len && sql[t] == '$') {
                size_t taglen = t + 1 - i;
                const char *end = NULL;
                for (size_t j = t + 1; j + taglen <= len; j++)
                    if (memcmp(sql + j, sql + i, taglen) == 0) {
                        end = sql + j + taglen;
                        break;
                    }
                i = end ? (size_t)(end - sql) : len;
            } else {
                i++;
            }
        } else {
            i++;
        }
    }
    return best;
}

/* The statement table at idx has only positive integer keys: the
 * highest in *max. label names it in messages ("statement" or
 * "statement 2"). */
static int stmt_keys(op *o, lua_State *L, int idx, const char *what,
                     const char *label, lua_Integer *max)
{
    *max = 0;
    if (!lua_istable(L, idx)) {
        lh_failf(o, "%s: %s returned %s as a %s, expected {sql, params...}",
                 o->script, what, label, luaL_typename(L, idx));
        return 0;
    }
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
        if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1) {
            lh_failf(o,
                     "%s: %s returned %s with a key that is not a position "
                     "(%s), expected {sql, params...}",
                     o->script, what, label, lh_describe(L, -2));
            return 0;
        }
        if (lua_tointeger(L, -2) > *max)
            *max = lua_tointeger(L, -2);
    }
    return 1;
}

/* Check the SQL text (element 1) and append the statement, its params
 * to come (max - 1 of them). */
static int stmt_sql(op *o, lua_State *L, int idx, const char *what,
                    const char *label, lua_Integer max)
{
    evl_luahost_stmts *s = o->stmts;
    evl_luahost_stmt *stmt;
    const char *sql, *why;
    size_t len;
    lua_rawgeti(L, idx, 1);
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        lh_failf(o,
                 "%s: %s returned %s whose first element is %s, expected "
                 "the SQL text",
                 o->script, what, label,
                 lua_type(L, -1) == LUA_TSTRING
                     ? "empty"
                     : lua_pushfstring(L, "a %s", luaL_typename(L, -1)));
        return 0;
    }
    sql = lua_tolstring(L, -1, &len);
    if ((why = bad_text(sql, len)) != NULL) {
        lh_failf(o, "%s: %s returned %s whose SQL %s", o->script, what, label,
                 why);
        return 0;
    }
    if (s->n == s->capstmts) {
        s->capstmts = s->capstmts ? 2 * s->capstmts : 4;
        s->stmts = evl_xrealloc(s->stmts, sizeof *s->stmts * s->capstmts);
    }
    stmt = &s->stmts[s->n++];
    memset(stmt, 0, sizeof *stmt);
    stmt->sql = put_text(&s->text, sql, len);
    stmt->sql_len = len;
    stmt->params = (const evl_luahost_param *)(uintptr_t)s->nparams;
    stmt->nparams = (size_t)(max > 1 ? max - 1 : 0);
    lua_pop(L, 1);
    /* a nil at the end is no key at all: the table looks shorter than the
     * SQL's placeholders, and PostgreSQL would refuse the statement with a
     * puzzling "bind message supplies 1 parameters" at run time */
    long want = highest_placeholder(sql, len);
    if (want > (long)stmt->nparams) {
        lh_failf(o,
                 "%s: %s returned %s whose $%ld is nil (use evlua.null for "
                 "SQL NULL)",
                 o->script, what, label, (long)stmt->nparams + 1);
        return 0;
    }
    return 1;
}

/* A number parameter (on top of the stack) as text: "%lld" or "%.17g";
 * NaN and infinities have no SQL form. */
static int number_param(op *o, lua_State *L, const char *what,
                        const char *label, lua_Integer k, evl_luahost_param *p)
{
    char num[64];
    if (lua_isinteger(L, -1)) {
        p->type = EVL_PARAM_INTEGER;
        p->i = (long long)lua_tointeger(L, -1);
        p->len = (size_t)snprintf(num, sizeof num, "%lld", p->i);
    } else {
        p->type = EVL_PARAM_FLOAT;
        p->f = (double)lua_tonumber(L, -1);
        if (!isfinite(p->f)) {
            lh_failf(o,
                     "%s: %s returned %s whose $%lld is %s, which "
                     "SQL parameters do not take",
                     o->script, what, label, (long long)k - 1,
                     isnan(p->f) ? "NaN" : "infinite");
            return 0;
        }
        p->len = (size_t)snprintf(num, sizeof num, "%.17g", p->f);
    }
    p->text = put_text(&o->stmts->text, num, p->len);
    return 1;
}

/* Element k of the statement (on top of the stack) as parameter $k-1. */
static int add_param(op *o, lua_State *L, const char *what, const char *label,
                     lua_Integer k)
{
    evl_luahost_stmts *s = o->stmts;
    evl_luahost_param *p = new_param(s);
    char jerr[EVL_ERRLEN];
    const char *why;
    size_t len;
    switch (lua_type(L, -1)) {
    case LUA_TBOOLEAN:
        p->type = EVL_PARAM_BOOLEAN;
        p->i = lua_toboolean(L, -1);
        p->text = put_text(&s->text, p->i ? "true" : "false", p->i ? 4 : 5);
        p->len = p->i ? 4 : 5;
        return 1;
    case LUA_TNUMBER: return number_param(o, L, what, label, k, p);
    case LUA_TSTRING: {
        const char *v = lua_tolstring(L, -1, &len);
        if ((why = bad_text(v, len)) != NULL) {
            lh_failf(o, "%s: %s returned %s whose $%lld %s", o->script, what,
                     label, (long long)k - 1, why);
            return 0;
        }
        p->type = EVL_PARAM_STRING;
        p->len = len;
        p->text = put_text(&s->text, v, len);
        return 1;
    }
    case LUA_TTABLE:
        p->type = EVL_PARAM_JSON;
        p->text = OFF(s->text.len);
        if (evl_json_encode(L, -1, &s->text, jerr, sizeof jerr) != EVL_OK) {
            lh_failf(o, "%s: %s returned %s whose $%lld has no JSON form: %s",
                     o->script, what, label, (long long)k - 1, jerr);
            return 0;
        }
        p->len = s->text.len - (size_t)(uintptr_t)p->text;
        evl_buf_putc(&s->text, '\0');
        return 1;
    case LUA_TNIL:
        lh_failf(o,
                 "%s: %s returned %s whose $%lld is nil (use evlua.null "
                 "for SQL NULL)",
                 o->script, what, label, (long long)k - 1);
        return 0;
    default:
        if (evl_json_is_null(L, -1)) {
            p->type = EVL_PARAM_NULL;
            p->text = NULL;
            return 1;
        }
        lh_failf(o,
                 "%s: %s returned %s whose $%lld is a %s, expected a "
                 "string, number, boolean, evlua.null or table",
                 o->script, what, label, (long long)k - 1,
                 luaL_typename(L, -1));
        return 0;
    }
}

/* The statement just added came from evlua.upsert or evlua.delete when
 * the table at idx has their metatable (luaapi.h): record its meaning.
 * Anything that does not hold together leaves it a plain statement. */
static void add_meaning(evl_luahost_stmts *s, lua_State *L, int idx)
{
    evl_luahost_stmt *stmt = &s->stmts[s->n - 1];
    int top = lua_gettop(L), kind;
    if (!lua_getmetatable(L, idx))
        return;
    lua_getfield(L, -1, "__name");
    const char *name = lua_tostring(L, -1);
    if (name && strcmp(name, "evlua.upsert") == 0)
        kind = EVL_SQL_UPSERT;
    else if (name && strcmp(name, "evlua.delete") == 0)
        kind = EVL_SQL_DELETE;
    else
        goto out;
    lua_getfield(L, top + 1, "nkey");
    lua_getfield(L, top + 1, "table");
    lua_getfield(L, top + 1, "columns");
    lua_Integer nkey = lua_isinteger(L, -3) ? lua_tointeger(L, -3) : 0;
    if (nkey < 1 || (size_t)nkey > stmt->nparams ||
        lua_type(L, -2) != LUA_TSTRING || !lua_istable(L, -1) ||
        lua_rawlen(L, -1) != stmt->nparams)
        goto out;
    size_t base = s->nnames;
    for (size_t i = 1; i <= stmt->nparams; i++) {
        size_t len;
        if (lua_rawgeti(L, -1, (lua_Integer)i) != LUA_TSTRING)
            goto out;
        const char *c = lua_tolstring(L, -1, &len);
        if (s->nnames == s->capnames) {
            s->capnames = s->capnames ? 2 * s->capnames : 16;
            s->names = evl_xrealloc(s->names, sizeof *s->names * s->capnames);
        }
        s->names[s->nnames++] = put_text(&s->text, c, len);
        lua_pop(L, 1);
    }
    size_t tlen;
    const char *t = lua_tolstring(L, -2, &tlen);
    stmt->table = put_text(&s->text, t, tlen);
    stmt->columns = (const char *const *)(uintptr_t)base;
    stmt->nkey = (size_t)nkey;
    stmt->op = kind;
out:
    lua_settop(L, top);
}

/* Validate the statement table at idx and append it. label names it in
 * messages ("statement" or "statement 2"). */
static int add_stmt(op *o, lua_State *L, int idx, const char *what,
                    const char *label)
{
    lua_Integer max;
    if (!stmt_keys(o, L, idx, what, label, &max) ||
        !stmt_sql(o, L, idx, what, label, max))
        return 0;
    for (lua_Integer k = 2; k <= max; k++) {
        lua_rawgeti(L, idx, k);
        if (!add_param(o, L, what, label, k))
            return 0;
        lua_pop(L, 1);
    }
    add_meaning(o->stmts, L, idx);
    return 1;
}

/* Turn offsets into pointers once every statement is in. */
static void fix_stmts(evl_luahost_stmts *s)
{
    for (size_t i = 0; i < s->nparams; i++)
        if (s->params[i].type != EVL_PARAM_NULL)
            s->params[i].text = FIX(s->text.data, s->params[i].text);
    for (size_t i = 0; i < s->nnames; i++)
        s->names[i] = FIX(s->text.data, s->names[i]);
    for (size_t i = 0; i < s->n; i++) {
        evl_luahost_stmt *st = &s->stmts[i];
        st->sql = FIX(s->text.data, st->sql);
        st->params = s->params + (uintptr_t)st->params;
        if (st->op != EVL_SQL_PLAIN) {
            st->table = FIX(s->text.data, st->table);
            st->columns = s->names + (uintptr_t)st->columns;
        }
    }
}

/* Collect the handler result at res: one statement, a list or nil. */
static int collect_stmts(op *o, lua_State *L, int res, const char *what)
{
    size_t n;
    int t1;
    if (lua_isnil(L, res))
        return 1;
    if (!lua_istable(L, res)) {
        lh_failf(o,
                 "%s: %s returned a %s, expected a statement {sql, "
                 "params...}, a list of them or nil",
                 o->script, what, luaL_typename(L, res));
        return 0;
    }
    t1 = lua_rawgeti(L, res, 1);
    lua_pop(L, 1);
    if (t1 != LUA_TTABLE && t1 != LUA_TNIL)
        return add_stmt(o, L, res, what, "a statement");
    if (!lh_is_sequence(L, res, &n)) {
        lh_failf(o,
                 "%s: %s returned a table that is neither a statement "
                 "{sql, params...} nor a list of them",
                 o->script, what);
        return 0;
    }
    for (size_t i = 1; i <= n; i++) {
        char label[48];
        snprintf(label, sizeof label, "statement %zu", i);
        lua_rawgeti(L, res, (lua_Integer)i);
        if (!add_stmt(o, L, lua_gettop(L), what, label))
            return 0;
        lua_settop(L, res);
    }
    return 1;
}

static void op_project(lua_State *L, op *o)
{
    char what[160];
    const agg *a = NULL;
    int ev, rc;

    o->status = EVL_EPERMANENT;
    if (!lh_push_json_table(o, L, "event", o->event, o->event_len))
        return;
    ev = lua_gettop(L);

    /* the event's own aggregate may know how to upcast it */
    if (lh_rawfield(L, ev, "aggregate_type") == LUA_TSTRING)
        a = lh_find_agg(o->h, lua_tostring(L, -1));
    lua_settop(L, ev);
    if (a) {
        const char *script = o->script;
        lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref);
        lua_pushvalue(L, ev);
        o->script = a->script;
        if (!lh_upcast_event(o, L, ev + 1, ev + 2))
            return;
        o->script = script;
        lua_replace(L, ev);
        lua_settop(L, ev);
    }

    if (lh_rawfield(L, ev, "type") != LUA_TSTRING) {
        lh_failf(o, "%s: the event has no string type", o->script);
        return;
    }
    snprintf(what, sizeof what, "on.%s", lua_tostring(L, -1));
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->proj->ref);
    lh_rawfield(L, -1, "on");
    lua_pushvalue(L, ev + 1);
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        o->status = EVL_OK; /* not an event this projection handles */
        return;
    }
    lua_pushvalue(L, ev);
    rc = lh_call(o->h, L, 1);
    if (rc != CALL_OK) {
        lh_fail_call(o, L, rc, what);
        return;
    }
    if (!collect_stmts(o, L, lua_gettop(L), what))
        return;
    fix_stmts(o->stmts);
    o->status = EVL_OK;
}

static void clear_stmts(evl_luahost_stmts *s)
{
    s->n = 0;
    s->nparams = 0;
    s->nnames = 0;
    s->text.len = 0;
}

/* Run fn (op_project, op_reset) on projection's script; out is cleared
 * first and again on failure. */
static evl_err run_projection_op(evl_luahost *h, const char *projection,
                                 void (*fn)(lua_State *, op *),
                                 const char *event, size_t event_len,
                                 evl_luahost_stmts *out, char *err,
                                 size_t errlen)
{
    op o;
    memset(&o, 0, sizeof o);
    clear_stmts(out);
    o.proj = lh_find_proj(h, projection);
    if (!o.proj)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "no projection script has name %s",
                          projection ? projection : "(null)");
    o.h = h;
    o.fn = fn;
    o.script = o.proj->script;
    o.err = err;
    o.errlen = errlen;
    o.event = event;
    o.event_len = event_len;
    o.stmts = out;
    if (lh_run(h, &o) != 0)
        o.status = EVL_EPERMANENT;
    if (o.status != EVL_OK)
        clear_stmts(out);
    return (evl_err)o.status;
}

evl_err evl_luahost_project(evl_luahost *h, const char *projection,
                            const char *event, size_t event_len,
                            evl_luahost_stmts *out, char *err, size_t errlen)
{
    return run_projection_op(h, projection, op_project, event, event_len, out,
                             err, errlen);
}

static void op_reset(lua_State *L, op *o)
{
    int t, rc;
    o->status = EVL_EPERMANENT;
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->proj->ref);
    t = lh_rawfield(L, -1, "reset");
    if (t == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    } else if (t == LUA_TFUNCTION) {
        rc = lh_call(o->h, L, 0);
        if (rc != CALL_OK) {
            lh_fail_call(o, L, rc, "reset");
            return;
        }
    }
    if (!collect_stmts(o, L, lua_gettop(L), "reset"))
        return;
    fix_stmts(o->stmts);
    o->status = EVL_OK;
}

evl_err evl_luahost_reset(evl_luahost *h, const char *projection,
                          evl_luahost_stmts *out, char *err, size_t errlen)
{
    return run_projection_op(h, projection, op_reset, NULL, 0, out, err,
                             errlen);
}

void evl_luahost_stmts_free(evl_luahost_stmts *s)
{
    if (!s)
        return;
    free(s->stmts);
    free(s->params);
    free(s->names);
    evl_buf_free(&s->text);
    memset(s, 0, sizeof *s);
}
