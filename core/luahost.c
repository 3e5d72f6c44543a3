/*
 * luahost.c - sandboxed, limited script host (see luahost.h): loading
 * and validating a script set, the host's life and lookups. The other
 * parts are luasandbox.c, lualint.c, luaagg.c and luaproj.c
 * (luahost_int.h says which does what).
 *
 * How it hangs together:
 *
 *   - One lua_State per host, created with a counting allocator (the
 *     memory limit) and a count hook (the instruction budget). The host
 *     pointer sits in the state's extra space, so hooks and sandbox
 *     wrappers find it without a registry lookup.
 *
 *   - Every piece of work on the state (loading, decide, apply, project)
 *     runs inside one lua_pcall of a C function ("op"): glue code pushes
 *     values too, and an out-of-memory error there must fail the call,
 *     not reach the panic handler. Output buffers live in caller-owned
 *     structs, never in locals, so an error thrown through the op leaks
 *     nothing. Script functions are called from the op with a nested
 *     lua_pcall and a traceback handler.
 *
 *   - Glue code never runs script code behind the budget's back: exported
 *     tables and results are read with raw accesses, so an __index on a
 *     returned table is not called.
 *
 *   - Budget: the hook fires every hook_step instructions and counts down
 *     ticks. Once the budget is spent it sets over_budget, lowers the step
 *     to 1 and raises an error; since it keeps raising on every following
 *     instruction, a pcall in the script catches the error but can run no
 *     further code, so the error unwinds every Lua frame. The host then
 *     reports the budget by the flag, whatever the call returned. The
 *     same tick checks a coarse wall clock (15 ns, vDSO): counting alone
 *     lets a loop of a few instructions around a costly C call (a find on
 *     a 1 MB string) run for minutes. A thread CPU clock would not count
 *     preemption, but costs a system call (~240 ns) per handler call.
 *
 *   - What a single C call can cost is bounded apart: pattern subjects and
 *     string.rep results are capped, and library loops whose length an
 *     argument picks (table.move, insert, remove, sort) are charged to
 *     the budget before they start.
 *
 *   - Memory: the allocator refuses growth past the limit; Lua turns that
 *     into LUA_ERRMEM without calling the message handler, so the host
 *     names the script and handler itself.
 *
 *   - State between calls: none but the loaded scripts. The state of an
 *     aggregate comes in and goes out as JSON.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lifecycle.h"
#include "log.h"
#include "luahost_int.h"

#define HOOK_STEP       1000                /* instructions per tick */
#define MAX_SCRIPT_SIZE (16u * 1024 * 1024) /* bytes of a script file */

/* ---- small helpers ---------------------------------------------------- */

static void fnv(evl_luahost *h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h->fnv ^= s[i];
        h->fnv *= 0x100000001b3ULL;
    }
}

/* Hash one item of the set: kind, name, length, content. */
void lh_fnv_item(evl_luahost *h, char kind, const char *name, const char *text,
                 size_t len)
{
    unsigned char n[8];
    for (int i = 0; i < 8; i++)
        n[i] = (unsigned char)((uint64_t)len >> (8 * i));
    fnv(h, &kind, 1);
    fnv(h, name, strlen(name) + 1);
    fnv(h, n, sizeof n);
    fnv(h, text, len);
}

int lh_cmpstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void lh_free_strv(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char **copy_strv(const char *const *v, size_t n)
{
    char **c = evl_xmalloc(sizeof *c * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        c[i] = evl_xstrdup(v[i]);
    return c;
}

void lh_problem(evl_luahost_problems *p, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    p->lines = evl_xrealloc(p->lines, sizeof *p->lines * (p->n + 1));
    p->lines[p->n++] = evl_xstrdup(line);
}

void evl_luahost_problems_free(evl_luahost_problems *p)
{
    if (!p)
        return;
    lh_free_strv(p->lines, p->n);
    p->lines = NULL;
    p->n = 0;
}

static int trampoline(lua_State *L)
{
    op *o = lua_touserdata(L, 1);
    lua_settop(L, 0);
    luaL_checkstack(L, 40, "evlua host");
    o->fn(L, o);
    return 0;
}

/* Run o->fn protected. Returns 0, or -1 when the glue code itself raised
 * (memory, in practice), with the message in o->err. */
int lh_run(evl_luahost *h, op *o)
{
    lua_State *L = h->L;
    int st;
    lua_settop(L, 0);
    lua_pushcfunction(L, trampoline);
    lua_pushlightuserdata(L, o);
    st = lua_pcall(L, 1, 0, 0);
    if (st != LUA_OK) {
        if (st == LUA_ERRMEM)
            snprintf(o->err, o->errlen,
                     "%s: memory limit of %zu bytes "
                     "exceeded",
                     o->script ? o->script : "scripts", h->mem_limit);
        else
            snprintf(o->err, o->errlen, "%s: %s",
                     o->script ? o->script : "scripts",
                     lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        lua_settop(L, 0);
        lua_gc(L, LUA_GCCOLLECT);
        return -1;
    }
    lua_settop(L, 0);
    return 0;
}

void lh_failf(op *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (o->err && o->errlen)
        vsnprintf(o->err, o->errlen, fmt, ap);
    va_end(ap);
}

void lh_fail_call(op *o, lua_State *L, int rc, const char *what)
{
    if (o->err && o->errlen)
        lh_describe_failure(o->h, L, rc, o->script, what, o->err, o->errlen);
    if (rc == CALL_MEM)
        lua_gc(L, LUA_GCCOLLECT);
}

/* Raw t[k] pushed; returns its type. */
int lh_rawfield(lua_State *L, int t, const char *k)
{
    t = lua_absindex(L, t);
    lua_pushstring(L, k);
    return lua_rawget(L, t);
}

/* Push a short description of the value at idx without running any
 * metamethod (no script code outside a budgeted call). */
const char *lh_describe(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return lua_pushfstring(L, "%I", lua_tointeger(L, idx));
        return lua_pushfstring(L, "%f", lua_tonumber(L, idx));
    case LUA_TSTRING: return lua_pushfstring(L, "\"%s\"", lua_tostring(L, idx));
    case LUA_TBOOLEAN:
        return lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
    default: return lua_pushfstring(L, "a %s", luaL_typename(L, idx));
    }
}

/* Keys and entries of a table: is it exactly the sequence 1..n? */
int lh_is_sequence(lua_State *L, int t, size_t *n)
{
    size_t len = lua_rawlen(L, t), count = 0;
    for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1))
        count++;
    *n = len;
    return count == len;
}

/* ---- loading ---------------------------------------------------------- */

/* First line of the message on top of the stack. */
static void first_line(lua_State *L, char *buf, size_t len)
{
    const char *m = lua_tostring(L, -1);
    size_t n;
    if (!m)
        m = "(error object is not a string)";
    n = strcspn(m, "\n");
    snprintf(buf, len, "%.*s", (int)n, m);
}

static const char *kind_name(char kind)
{
    return kind == 'a' ? "aggregate" : "projection";
}

/* Validate t.<field> as a table of functions keyed by names; push a copy
 * (or nothing, returning 0, when there are problems or it is absent and
 * optional). keys receives the sorted names. */
static int fn_table(op *o, lua_State *L, int t, const char *field, int required,
                    char ***keys, size_t *nkeys)
{
    const char *script = o->script;
    int top = lua_gettop(L), tt = lh_rawfield(L, t, field), ok = 1, src;
    size_t n = 0, i = 0;
    if (tt == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return 0;
    }
    if (tt != LUA_TTABLE) {
        lh_problem(o->problems, "%s: %s is %s, expected a table of functions",
                   script, field,
                   tt == LUA_TNIL
                       ? "missing"
                       : lua_pushfstring(L, "a %s", lua_typename(L, tt)));
        lua_settop(L, top);
        return -1;
    }
    src = lua_gettop(L);
    for (lua_pushnil(L); lua_next(L, src); lua_pop(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lh_problem(o->problems, "%s: %s has a %s key, expected names",
                       script, field, luaL_typename(L, -2));
            ok = 0;
        } else if (lua_type(L, -1) != LUA_TFUNCTION) {
            lh_problem(o->problems, "%s: %s.%s is a %s, expected a function",
                       script, field, lua_tostring(L, -2),
                       luaL_typename(L, -1));
            ok = 0;
        }
        n++;
    }
    if (!ok) {
        lua_settop(L, top);
        return -1;
    }
    lua_createtable(L, 0, (int)n);
    if (keys)
        *keys = evl_xmalloc(sizeof **keys * (n ? n : 1));
    for (lua_pushnil(L); lua_next(L, src);) {
        if (keys)
            (*keys)[i++] = evl_xstrdup(lua_tostring(L, -2));
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    if (keys) {
        qsort(*keys, n, sizeof **keys, lh_cmpstr);
        *nkeys = n;
    }
    lua_remove(L, src);
    return 1;
}

/* A name field (type, name) that must be an evl_valid_name. */
static const char *name_field(op *o, lua_State *L, int t, const char *field)
{
    int tt = lh_rawfield(L, t, field);
    const char *s;
    if (tt != LUA_TSTRING) {
        lh_problem(o->problems, "%s: %s is %s, expected a non-empty string",
                   o->script, field,
                   tt == LUA_TNIL
                       ? "missing"
                       : lua_pushfstring(L, "a %s", lua_typename(L, tt)));
        return NULL;
    }
    s = lua_tostring(L, -1);
    if (!evl_valid_name(s)) {
        lh_problem(o->problems,
                   "%s: %s \"%s\" is not a valid name (letters, "
                   "digits, '.', '_' and '-'; not empty)",
                   o->script, field, s);
        return NULL;
    }
    return s;
}

/* t.<field>: an optional list of event type names (neutral, emits).
 * Pushes them as a set {Name = true} and returns 1 with the sorted,
 * unique names in *out (owned by the caller); 0, pushing nothing, when
 * absent; -1 after adding problems. */
static int name_list(op *o, lua_State *L, int t, const char *field, char ***out,
                     size_t *nout)
{
    int top = lua_gettop(L), tt = lh_rawfield(L, t, field), ok = 1;
    size_t len = 0, n = 0;
    char **v;

    if (tt == LUA_TNIL) {
        lua_settop(L, top);
        return 0;
    }
    if (tt != LUA_TTABLE || !lh_is_sequence(L, top + 1, &len)) {
        lh_problem(
            o->problems, "%s: %s is %s, expected a list of event type names",
            o->script, field,
            tt == LUA_TTABLE ? "a table that is not a list"
                             : lua_pushfstring(L, "a %s", lua_typename(L, tt)));
        lua_settop(L, top);
        return -1;
    }
    lua_createtable(L, 0, (int)len);
    for (size_t i = 1; i <= len; i++) {
        if (lua_rawgeti(L, top + 1, (lua_Integer)i) != LUA_TSTRING ||
            lua_rawlen(L, -1) == 0) {
            lh_problem(o->problems,
                       "%s: %s[%zu] is %s, expected an event type name",
                       o->script, field, i,
                       lua_type(L, -1) == LUA_TSTRING
                           ? "an empty string"
                           : lua_pushfstring(L, "a %s", luaL_typename(L, -1)));
            ok = 0;
            lua_settop(L, top + 2);
            continue;
        }
        lua_pushboolean(L, 1);
        lua_rawset(L, top + 2);
    }
    if (!ok) {
        lua_settop(L, top);
        return -1;
    }
    /* C copies last: nothing below can raise while v is held */
    v = evl_xmalloc(sizeof *v * (len ? len : 1));
    for (size_t i = 1; i <= len; i++) {
        lua_rawgeti(L, top + 1, (lua_Integer)i);
        v[n++] = evl_xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    qsort(v, n, sizeof *v, lh_cmpstr);
    len = n;
    n = 0;
    for (size_t i = 0; i < len; i++) {
        if (n > 0 && strcmp(v[n - 1], v[i]) == 0)
            free(v[i]);
        else
            v[n++] = v[i];
    }
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    *out = v;
    *nout = n;
    return 1;
}

long lh_react_split(const char *key)
{
    const char *dot = strrchr(key, '.');
    char type[EVL_ENVELOPE_MAX_ID + 1];
    size_t n;
    if (!dot || dot[1] == '\0')
        return -1;
    n = (size_t)(dot - key);
    if (n == 0 || n > EVL_ENVELOPE_MAX_ID)
        return -1;
    memcpy(type, key, n);
    type[n] = '\0';
    return evl_valid_name(type) ? (long)n : -1;
}

/* t.react: optional, a table of functions keyed "TYPE.EventName" (the
 * event types of an aggregate type that turn into commands for this
 * one). Pushes a copy and returns 1 with the sorted keys in *out; 0,
 * pushing nothing, when absent; -1 after adding problems. */
static int react_table(op *o, lua_State *L, int t, char ***out, size_t *nout)
{
    int rc = fn_table(o, L, t, "react", 0, out, nout), ok = 1;
    if (rc <= 0)
        return rc;
    for (size_t i = 0; i < *nout; i++)
        if (lh_react_split((*out)[i]) < 0) {
            lh_problem(o->problems,
                       "%s: react key \"%s\" is not of the form "
                       "\"TYPE.EventName\" (an aggregate type, a dot, an "
                       "event type)",
                       o->script, (*out)[i]);
            ok = 0;
        }
    if (!ok) {
        lh_free_strv(*out, *nout);
        *out = NULL;
        *nout = 0;
        lua_pop(L, 1);
        return -1;
    }
    return 1;
}

static void load_aggregate(op *o, lua_State *L, int t)
{
    evl_luahost *h = o->h;
    const char *type = name_field(o, L, t, "type");
    int priv, tt, bad = type == NULL;
    char **commands = NULL, **events = NULL, **neutral = NULL, **emits = NULL,
         **reacts = NULL;
    size_t ncommands = 0, nevents = 0, nneutral = 0, nemits = 0, nreacts = 0;
    agg *a;

    lua_createtable(L, 0, 4);
    priv = lua_gettop(L);
    tt = lh_rawfield(L, t, "initial");
    if (tt != LUA_TFUNCTION) {
        lh_problem(
            o->problems, "%s: initial is %s, expected a function", o->script,
            tt == LUA_TNIL ? "missing"
                           : lua_pushfstring(L, "a %s", lua_typename(L, tt)));
        bad = 1;
        lua_settop(L, priv);
    } else {
        lua_setfield(L, priv, "initial");
    }
    if (fn_table(o, L, t, "apply", 1, &events, &nevents) > 0)
        lua_setfield(L, priv, "apply");
    else
        bad = 1;
    if (fn_table(o, L, t, "handle", 1, &commands, &ncommands) > 0)
        lua_setfield(L, priv, "handle");
    else
        bad = 1;
    switch (fn_table(o, L, t, "upcast", 0, NULL, NULL)) {
    case 1: lua_setfield(L, priv, "upcast"); break;
    case -1: bad = 1; break;
    }
    switch (name_list(o, L, t, "neutral", &neutral, &nneutral)) {
    case 1: lua_setfield(L, priv, "neutral"); break;
    case -1: bad = 1; break;
    }
    switch (name_list(o, L, t, "emits", &emits, &nemits)) {
    case 1: lua_pop(L, 1); break;
    case -1: bad = 1; break;
    }
    switch (react_table(o, L, t, &reacts, &nreacts)) {
    case 1: lua_setfield(L, priv, "react"); break;
    case -1: bad = 1; break;
    }
    for (size_t i = 0; type && i < h->naggs; i++)
        if (strcmp(h->aggs[i].type, type) == 0) {
            lh_problem(o->problems,
                       "%s: aggregate type \"%s\" is already "
                       "defined in %s",
                       o->script, type, h->aggs[i].script);
            bad = 1;
        }
    if (bad) {
        lh_free_strv(commands, ncommands);
        lh_free_strv(events, nevents);
        lh_free_strv(neutral, nneutral);
        lh_free_strv(emits, nemits);
        lh_free_strv(reacts, nreacts);
        return;
    }
    h->aggs = evl_xrealloc(h->aggs, sizeof *h->aggs * (h->naggs + 1));
    a = &h->aggs[h->naggs++];
    memset(a, 0, sizeof *a);
    a->type = evl_xstrdup(type);
    a->script = evl_xstrdup(o->script);
    a->commands = commands;
    a->events = events;
    a->pub.ncommands = ncommands;
    a->pub.nevents = nevents;
    a->neutral = neutral;
    a->pub.nneutral = nneutral;
    a->reacts = reacts;
    a->pub.nreacts = nreacts;
    lua_pushvalue(L, priv);
    a->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    a->react_lines = lh_fn_lines(L, priv, "react", a->reacts, nreacts);
    lh_source_facts(o, L, a, priv, emits, nemits);
}

/* schema: one DDL string or a list of them; pushes nothing. */
static int load_schema(op *o, lua_State *L, int t, char ***out, size_t *nout)
{
    int top = lua_gettop(L), tt = lh_rawfield(L, t, "schema"), ok = 1;
    char **v = NULL;
    size_t n = 0, len;

    if (tt == LUA_TSTRING) {
        v = evl_xmalloc(sizeof *v);
        v[n++] = evl_xstrdup(lua_tostring(L, -1));
    } else if (tt == LUA_TTABLE && lh_is_sequence(L, top + 1, &len)) {
        v = evl_xmalloc(sizeof *v * (len ? len : 1));
        for (size_t i = 1; i <= len; i++) {
            if (lua_rawgeti(L, top + 1, (lua_Integer)i) != LUA_TSTRING) {
                lh_problem(o->problems,
                           "%s: schema[%zu] is a %s, expected a "
                           "string",
                           o->script, i, luaL_typename(L, -1));
                ok = 0;
            } else {
                v[n++] = evl_xstrdup(lua_tostring(L, -1));
            }
            lua_pop(L, 1);
        }
    } else if (tt != LUA_TNIL) {
        lh_problem(o->problems,
                   "%s: schema is %s, expected a string or a list "
                   "of strings",
                   o->script,
                   tt == LUA_TTABLE
                       ? "a table that is not a list"
                       : lua_pushfstring(L, "a %s", lua_typename(L, tt)));
        ok = 0;
    }
    lua_settop(L, top);
    if (!ok) {
        lh_free_strv(v, n);
        return 0;
    }
    *out = v;
    *nout = n;
    return 1;
}

static void load_projection(op *o, lua_State *L, int t)
{
    evl_luahost *h = o->h;
    const char *name = name_field(o, L, t, "name");
    int priv, tt, bad = name == NULL;
    char **events = NULL, **schema = NULL;
    size_t nevents = 0, nschema = 0;
    proj *p;

    lua_createtable(L, 0, 2);
    priv = lua_gettop(L);
    if (fn_table(o, L, t, "on", 1, &events, &nevents) > 0)
        lua_setfield(L, priv, "on");
    else
        bad = 1;
    if (!load_schema(o, L, t, &schema, &nschema))
        bad = 1;
    tt = lh_rawfield(L, t, "reset");
    if (tt == LUA_TSTRING || tt == LUA_TFUNCTION || tt == LUA_TNIL) {
        lua_setfield(L, priv, "reset");
    } else {
        lh_problem(o->problems,
                   "%s: reset is a %s, expected a string or a "
                   "function",
                   o->script, lua_typename(L, tt));
        bad = 1;
    }
    for (size_t i = 0; name && i < h->nprojs; i++)
        if (strcmp(h->projs[i].name, name) == 0) {
            lh_problem(o->problems,
                       "%s: projection name \"%s\" is already "
                       "defined in %s",
                       o->script, name, h->projs[i].script);
            bad = 1;
        }
    if (bad) {
        lh_free_strv(events, nevents);
        lh_free_strv(schema, nschema);
        return;
    }
    h->projs = evl_xrealloc(h->projs, sizeof *h->projs * (h->nprojs + 1));
    p = &h->projs[h->nprojs++];
    memset(p, 0, sizeof *p);
    p->name = evl_xstrdup(name);
    p->script = evl_xstrdup(o->script);
    snprintf(p->hash, sizeof p->hash, "%016llx",
             (unsigned long long)(o->file
                                      ? evl_hash(o->file->text, o->file->len)
                                      : evl_hash("", 0)));
    p->schema = schema;
    p->nschema = nschema;
    p->events = events;
    p->pub.nevents = nevents;
    lua_pushvalue(L, priv);
    p->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    p->event_lines = lh_fn_lines(L, priv, "on", p->events, nevents);
}

/* A Lua error of script name as one problem line, "name:line: msg".
 * Lua shortens long chunk names to "...end/of/name.lua": give the full
 * name back; a message without position gets "name: " in front. */
static void lua_problem(op *o, lua_State *L, const char *name)
{
    char line[1024];
    size_t n = strlen(name);
    const char *colon;
    first_line(L, line, sizeof line);
    if (strncmp(line, name, n) == 0 && line[n] == ':') {
        lh_problem(o->problems, "%s", line);
    } else if (strncmp(line, "...", 3) == 0 &&
               (colon = strchr(line + 3, ':')) != NULL &&
               (size_t)(colon - line - 3) <= n &&
               strncmp(name + n - (size_t)(colon - line - 3), line + 3,
                       (size_t)(colon - line - 3)) == 0) {
        lh_problem(o->problems, "%s%s", name, colon);
    } else {
        lh_problem(o->problems, "%s: %s", name, line);
    }
}

static void load_one(op *o, lua_State *L, struct file *f)
{
    char line[1024];
    int env, rc;

    o->script = f->name;
    o->file = f;
    lh_push_env(L, f->name);
    env = lua_gettop(L);
    lua_pushfstring(L, "@%s", f->name);
    if (luaL_loadbufferx(L, f->text, f->len, lua_tostring(L, -1), "t") !=
        LUA_OK) {
        lua_problem(o, L, f->name);
        return;
    }
    lua_pushvalue(L, env);
    lua_setupvalue(L, -2, 1);
    rc = lh_call(o->h, L, 0);
    if (rc == CALL_ERR) {
        lua_problem(o, L, f->name);
        return;
    }
    if (rc != CALL_OK) {
        lh_describe_failure(o->h, L, rc, f->name, "loading", line, sizeof line);
        lh_problem(o->problems, "%s", line);
        if (rc == CALL_MEM)
            lua_gc(L, LUA_GCCOLLECT);
        return;
    }
    if (!lua_istable(L, -1)) {
        lh_problem(o->problems,
                   "%s: returned %s, expected a table (the script "
                   "must end with return { ... })",
                   f->name,
                   lua_isnil(L, -1)
                       ? "nothing"
                       : lua_pushfstring(L, "a %s", luaL_typename(L, -1)));
        return;
    }
    if (f->kind == 'a')
        load_aggregate(o, L, lua_gettop(L));
    else
        load_projection(o, L, lua_gettop(L));
}

static void op_load(lua_State *L, op *o)
{
    o->h->hashing = 1;
    for (size_t i = 0; i < o->nfiles; i++) {
        load_one(o, L, &o->files[i]);
        lua_settop(L, 0);
    }
    o->h->hashing = 0;
    o->script = NULL;
}

static void op_setup(lua_State *L, op *o)
{
    lh_setup_sandbox(L);
}

static int has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* Append the *.lua files of dir, sorted, to *files. */
static void read_dir(const char *dir, char kind, struct file **files,
                     size_t *nfiles, evl_luahost_problems *problems)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL;
    size_t n = 0;
    size_t dlen = strlen(dir);

    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    if (!d) {
        lh_problem(problems, "%s: cannot open the %s directory: %s", dir,
                   kind_name(kind), strerror(errno));
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !has_suffix(de->d_name, ".lua"))
            continue;
        names = evl_xrealloc(names, sizeof *names * (n + 1));
        names[n++] = evl_xstrdup(de->d_name);
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof *names, lh_cmpstr);

    for (size_t i = 0; i < n; i++) {
        size_t plen = dlen + 1 + strlen(names[i]) + 1;
        char *path = evl_xmalloc(plen);
        struct stat st;
        FILE *fp;
        struct file *f;
        snprintf(path, plen, "%.*s/%s", (int)dlen, dir, names[i]);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            if (stat(path, &st) != 0)
                lh_problem(problems, "%s: cannot stat: %s", path,
                           strerror(errno));
            free(path);
            continue;
        }
        if ((size_t)st.st_size > MAX_SCRIPT_SIZE) {
            lh_problem(problems, "%s: file of %lld bytes is larger than %u",
                       path, (long long)st.st_size, MAX_SCRIPT_SIZE);
            free(path);
            continue;
        }
        fp = fopen(path, "rb");
        if (!fp) {
            lh_problem(problems, "%s: cannot open: %s", path, strerror(errno));
            free(path);
            continue;
        }
        *files = evl_xrealloc(*files, sizeof **files * (*nfiles + 1));
        f = &(*files)[(*nfiles)++];
        f->kind = kind;
        f->name = path;
        f->base = path + dlen + 1;
        f->text = evl_xmalloc((size_t)st.st_size + 1);
        f->len = fread(f->text, 1, (size_t)st.st_size, fp);
        if (ferror(fp))
            lh_problem(problems, "%s: read error", path);
        fclose(fp);
    }
    lh_free_strv(names, n);
}

static void free_files(struct file *files, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(files[i].name);
        free(files[i].text);
    }
    free(files);
}

void evl_luahost_free(evl_luahost *h)
{
    if (!h)
        return;
    if (h->L)
        lua_close(h->L);
    for (size_t i = 0; i < h->naggs; i++) {
        free(h->aggs[i].type);
        free(h->aggs[i].script);
        lh_free_strv(h->aggs[i].commands, h->aggs[i].pub.ncommands);
        lh_free_strv(h->aggs[i].events, h->aggs[i].pub.nevents);
        lh_free_strv(h->aggs[i].neutral, h->aggs[i].pub.nneutral);
        lh_free_strv(h->aggs[i].reacts, h->aggs[i].pub.nreacts);
        free(h->aggs[i].react_lines);
        free(h->aggs[i].event_lines);
        for (size_t j = 0; j < h->aggs[i].nemits; j++)
            free(h->aggs[i].emits[j].type);
        free(h->aggs[i].emits);
    }
    free(h->aggs);
    for (size_t i = 0; i < h->nprojs; i++) {
        free(h->projs[i].name);
        free(h->projs[i].script);
        lh_free_strv(h->projs[i].schema, h->projs[i].nschema);
        lh_free_strv(h->projs[i].events, h->projs[i].pub.nevents);
        free(h->projs[i].event_lines);
    }
    free(h->projs);
    lh_free_strv(h->adirs, h->nadirs);
    lh_free_strv(h->pdirs, h->npdirs);
    free(h->lib_dir);
    free(h);
}

/* A host with cfg copied and the defaults filled in; no Lua state yet. */
static evl_luahost *host_from_config(const evl_luahost_config *cfg)
{
    evl_luahost *h = evl_xmalloc(sizeof *h);
    memset(h, 0, sizeof *h);
    h->adirs = copy_strv(cfg->aggregate_dirs, cfg->naggregate_dirs);
    h->nadirs = cfg->naggregate_dirs;
    h->pdirs = copy_strv(cfg->projection_dirs, cfg->nprojection_dirs);
    h->npdirs = cfg->nprojection_dirs;
    h->lib_dir = cfg->lib_dir ? evl_xstrdup(cfg->lib_dir) : NULL;
    h->mem_limit =
        cfg->memory_limit ? cfg->memory_limit : EVL_LUAHOST_MEMORY_LIMIT;
    h->instr_limit = cfg->instruction_limit > 0 ? cfg->instruction_limit
                                                : EVL_LUAHOST_INSTRUCTION_LIMIT;
    h->time_limit_ms = cfg->time_limit_ms == 0 ? EVL_LUAHOST_TIME_LIMIT_MS
                                               : cfg->time_limit_ms;
    h->max_string_op =
        cfg->max_string_op ? cfg->max_string_op : EVL_LUAHOST_MAX_STRING_OP;
    h->hook_step = h->instr_limit < HOOK_STEP ? (int)h->instr_limit : HOOK_STEP;
    h->ticks_per_call = (h->instr_limit + h->hook_step - 1) / h->hook_step;
    h->fnv = 0xcbf29ce484222325ULL;
    return h;
}

/* Open h's sandboxed state, read every script file (hashing each) and
 * load them; every problem goes to o->problems. */
static void open_and_load(evl_luahost *h, op *o)
{
    struct file *files = NULL;
    size_t nfiles = 0;

    h->L = lh_sandbox_open(h);
    if (!h->L) {
        lh_problem(o->problems,
                   "scripts: cannot create a Lua state within the "
                   "memory limit of %zu bytes",
                   h->mem_limit);
        return;
    }
    o->fn = op_setup;
    if (lh_run(h, o) != 0) {
        lh_problem(o->problems, "%s", o->err);
        return;
    }

    for (size_t i = 0; i < h->nadirs; i++)
        read_dir(h->adirs[i], 'a', &files, &nfiles, o->problems);
    for (size_t i = 0; i < h->npdirs; i++)
        read_dir(h->pdirs[i], 'p', &files, &nfiles, o->problems);
    for (size_t i = 0; i < nfiles; i++)
        lh_fnv_item(h, files[i].kind, files[i].base, files[i].text,
                    files[i].len);

    o->fn = op_load;
    o->files = files;
    o->nfiles = nfiles;
    if (lh_run(h, o) != 0)
        lh_problem(o->problems, "%s", o->err);
    free_files(files, nfiles);
    o->files = NULL;
}

/* Fill in the public views of the loaded scripts and the set's hash. */
static void publish(evl_luahost *h)
{
    for (size_t i = 0; i < h->naggs; i++) {
        agg *a = &h->aggs[i];
        a->pub.type = a->type;
        a->pub.script = a->script;
        a->pub.commands = (const char *const *)a->commands;
        a->pub.events = (const char *const *)a->events;
        a->pub.neutral = (const char *const *)a->neutral;
        a->pub.reacts = (const char *const *)a->reacts;
    }
    for (size_t i = 0; i < h->nprojs; i++) {
        proj *p = &h->projs[i];
        p->pub.name = p->name;
        p->pub.script = p->script;
        p->pub.hash = p->hash;
        p->pub.schema = (const char *const *)p->schema;
        p->pub.nschema = p->nschema;
        p->pub.events = (const char *const *)p->events;
    }
    snprintf(h->hash, sizeof h->hash, "%016llx", (unsigned long long)h->fnv);
}

evl_err evl_luahost_new(const evl_luahost_config *cfg, evl_luahost **out,
                        evl_luahost_problems *problems, char *err,
                        size_t errlen)
{
    evl_luahost_problems probs = {0};
    evl_luahost *h = host_from_config(cfg);
    char msg[EVL_ERRLEN];
    op o;

    memset(&o, 0, sizeof o);
    o.h = h;
    o.err = msg;
    o.errlen = sizeof msg;
    o.problems = &probs;
    open_and_load(h, &o);
    if (probs.n > 0) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "%zu problem%s loading scripts; first: %s", probs.n,
                   probs.n == 1 ? "" : "s", probs.lines[0]);
        if (problems) {
            for (size_t i = 0; i < probs.n; i++)
                lh_problem(problems, "%s", probs.lines[i]);
        }
        evl_luahost_problems_free(&probs);
        evl_luahost_free(h);
        return EVL_EPERMANENT;
    }
    publish(h);
    lua_gc(h->L, LUA_GCCOLLECT);
    /* no log line here: a load is reported by whoever decided to load
     * (evl_luahost_reload once per SIGHUP, the CLI at start), not once per
     * pipeline or per busted spec */
    *out = h;
    return EVL_OK;
}

/* The SIGHUP count (evl_lifecycle_reloads) the last reload summary was
 * logged for. */
static atomic_uint reload_logged;

evl_err evl_luahost_again(const evl_luahost *old, evl_luahost **out,
                          evl_luahost_problems *problems, char *err,
                          size_t errlen)
{
    evl_luahost_config cfg;

    memset(&cfg, 0, sizeof cfg);
    cfg.aggregate_dirs = (const char *const *)old->adirs;
    cfg.naggregate_dirs = old->nadirs;
    cfg.projection_dirs = (const char *const *)old->pdirs;
    cfg.nprojection_dirs = old->npdirs;
    cfg.lib_dir = old->lib_dir;
    cfg.memory_limit = old->mem_limit;
    cfg.instruction_limit = old->instr_limit;
    cfg.time_limit_ms = old->time_limit_ms;
    cfg.max_string_op = old->max_string_op;
    return evl_luahost_new(&cfg, out, problems, err, errlen);
}

evl_err evl_luahost_reload(const evl_luahost *old, evl_luahost **out,
                           evl_luahost_problems *problems, char *err,
                           size_t errlen)
{
    evl_luahost_problems probs = {0};
    evl_err rc = evl_luahost_again(old, out, &probs, err, errlen);
    /* Every pipeline reloads on its own, from the same files: the first to
     * reload after a SIGHUP speaks for all (one summary line per reload,
     * not one per pipeline). A caller that collects the problems reports
     * them itself. */
    unsigned gen = evl_lifecycle_reloads();
    int speak =
        !problems && gen != 0 && atomic_exchange(&reload_logged, gen) != gen;
    if (rc != EVL_OK) {
        char n[32];
        snprintf(n, sizeof n, "%zu", probs.n);
        if (speak)
            evl_log(EVL_LOG_ERROR,
                    "script reload refused; keeping the loaded set", "hash",
                    old->hash, "problems", n, (const char *)NULL);
        for (size_t i = 0; i < probs.n; i++) {
            if (speak)
                evl_log(EVL_LOG_ERROR, "script problem", "problem",
                        probs.lines[i], (const char *)NULL);
            if (problems)
                lh_problem(problems, "%s", probs.lines[i]);
        }
    } else if (speak) {
        evl_log(EVL_LOG_INFO, "scripts reloaded", "hash", (*out)->hash, "old",
                old->hash, (const char *)NULL);
    }
    evl_luahost_problems_free(&probs);
    return rc;
}

/* The line where the function on top of the stack starts (0: unknown);
 * pops it. */
static int fn_line(lua_State *L)
{
    lua_Debug ar;
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_getinfo(L, ">S", &ar);
    return ar.linedefined > 0 ? ar.linedefined : 0;
}

/* The lines of the functions of priv[field] for the sorted keys. */
int *lh_fn_lines(lua_State *L, int priv, const char *field, char *const *keys,
                 size_t n)
{
    int *lines = evl_xmalloc(sizeof *lines * (n ? n : 1));
    lh_rawfield(L, priv, field);
    for (size_t i = 0; i < n; i++) {
        lines[i] = 0;
        lua_pushstring(L, keys[i]);
        lua_rawget(L, -2);
        lines[i] = fn_line(L);
    }
    lua_pop(L, 1);
    return lines;
}

/* ---- lookups ---------------------------------------------------------- */

const char *evl_luahost_hash(const evl_luahost *h)
{
    return h->hash;
}

size_t evl_luahost_memory(const evl_luahost *h)
{
    return h->mem_used;
}

void evl_luahost_gc(evl_luahost *h)
{
    lua_gc(h->L, LUA_GCCOLLECT);
}

size_t evl_luahost_naggregates(const evl_luahost *h)
{
    return h->naggs;
}

size_t evl_luahost_nprojections(const evl_luahost *h)
{
    return h->nprojs;
}

const agg *lh_find_agg(const evl_luahost *h, const char *type)
{
    for (size_t i = 0; type && i < h->naggs; i++)
        if (strcmp(h->aggs[i].type, type) == 0)
            return &h->aggs[i];
    return NULL;
}

const proj *lh_find_proj(const evl_luahost *h, const char *name)
{
    for (size_t i = 0; name && i < h->nprojs; i++)
        if (strcmp(h->projs[i].name, name) == 0)
            return &h->projs[i];
    return NULL;
}

const evl_luahost_aggregate *evl_luahost_aggregate_at(const evl_luahost *h,
                                                      size_t i)
{
    return i < h->naggs ? &h->aggs[i].pub : NULL;
}

const evl_luahost_aggregate *evl_luahost_aggregate_get(const evl_luahost *h,
                                                       const char *type)
{
    const agg *a = lh_find_agg(h, type);
    return a ? &a->pub : NULL;
}

const evl_luahost_projection *evl_luahost_projection_at(const evl_luahost *h,
                                                        size_t i)
{
    return i < h->nprojs ? &h->projs[i].pub : NULL;
}

const evl_luahost_projection *evl_luahost_projection_get(const evl_luahost *h,
                                                         const char *name)
{
    const proj *p = lh_find_proj(h, name);
    return p ? &p->pub : NULL;
}

int evl_luahost_reacts_to(const evl_luahost_aggregate *a,
                          const char *aggregate_type, const char *event_type)
{
    char small[256], *key = small;
    size_t n;
    int found;
    if (!a || !aggregate_type || !event_type || a->nreacts == 0)
        return 0;
    n = strlen(aggregate_type) + 1 + strlen(event_type) + 1;
    if (n > sizeof small)
        key = evl_xmalloc(n);
    snprintf(key, n, "%s.%s", aggregate_type, event_type);
    found = bsearch(&key, a->reacts, a->nreacts, sizeof *a->reacts,
                    lh_cmpstr) != NULL;
    if (key != small)
        free(key);
    return found;
}

int evl_luahost_projection_handles(const evl_luahost_projection *p,
                                   const char *event_type)
{
    return p && event_type &&
           bsearch(&event_type, p->events, p->nevents, sizeof *p->events,
                   lh_cmpstr) != NULL;
}
