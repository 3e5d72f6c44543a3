/*
 * luaagg.c - the aggregate operations of the script host:
 * evl_luahost_parse_command, evl_luahost_decide and evl_luahost_apply
 * (luahost.h gives their contracts).
 *
 * The idea: state lives in C as JSON text and goes through Lua only for
 * the length of one op. decide decodes it twice (one copy for handle,
 * one the events are applied to), checks every event handle returns,
 * checks that handle left its state alone, applies the events and
 * encodes the result; apply replays stored events through upcast and
 * apply. Output goes to caller-owned buffers as offsets (OFF/FIX), so an
 * error raised through the op leaks nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "luahost_int.h"

/* Registry key (its address) of the command parse kept for decide. */
static const char key_command = 0;

/* ---- decide ----------------------------------------------------------- */

/* Decode JSON text that must hold an object/array (a table) and push it;
 * 0 with the failure in o->err otherwise. */
int lh_push_json_table(op *o, lua_State *L, const char *what, const char *s,
                       size_t len)
{
    char jerr[EVL_ERRLEN];
    if (evl_json_decode(L, s, len, jerr, sizeof jerr) != EVL_OK) {
        lh_failf(o, "%s: %s JSON: %s", o->script, what, jerr);
        return 0;
    }
    if (!lua_istable(L, -1)) {
        lh_failf(o, "%s: %s JSON is a %s, expected an object", o->script, what,
                 evl_json_is_null(L, -1) ? "null" : luaL_typename(L, -1));
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

/* Push the aggregate's state: decoded from state, or initial(). */
static int push_state(op *o, lua_State *L, int priv, const char *state,
                      size_t state_len)
{
    int rc;
    if (state)
        return lh_push_json_table(o, L, "state", state, state_len);
    lh_rawfield(L, priv, "initial");
    rc = lh_call(o->h, L, 0);
    if (rc != CALL_OK) {
        lh_fail_call(o, L, rc, "initial");
        return 0;
    }
    if (!lua_istable(L, -1)) {
        lh_failf(o, "%s: initial returned a %s, expected a table", o->script,
                 luaL_typename(L, -1));
        return 0;
    }
    return 1;
}

/* Run apply[e.type](state, e) for the event table at ev, the state at
 * index st (replaced when apply returns a table). */
static int apply_event(op *o, lua_State *L, int priv, int st, int ev)
{
    char what[160];
    const char *type;
    int rc, top = lua_gettop(L);
    lh_rawfield(L, ev, "type");
    type = lua_tostring(L, -1);
    lh_rawfield(L, priv, "apply");
    lua_pushvalue(L, -2);
    if (!type || lua_rawget(L, -2) != LUA_TFUNCTION) {
        lua_settop(L, top);
        return 1; /* no apply entry: the state stays as it is */
    }
    snprintf(what, sizeof what, "apply.%s", type);
    lua_pushvalue(L, st);
    lua_pushvalue(L, ev);
    rc = lh_call(o->h, L, 2);
    if (rc != CALL_OK) {
        lh_fail_call(o, L, rc, what);
        return 0;
    }
    if (lua_istable(L, -1)) {
        lua_replace(L, st);
    } else if (!lua_isnil(L, -1)) {
        lh_failf(o, "%s: %s returned a %s, expected the state table or nil",
                 o->script, what, luaL_typename(L, -1));
        return 0;
    }
    lua_settop(L, top);
    return 1;
}

/* Can an event of type be emitted: has it an apply entry or a neutral
 * declaration in the aggregate's private table at priv? */
static int applies(lua_State *L, int priv, const char *type)
{
    int top = lua_gettop(L), ok;
    lh_rawfield(L, priv, "apply");
    ok = lh_rawfield(L, -1, type) != LUA_TNIL;
    if (!ok && lh_rawfield(L, priv, "neutral") == LUA_TTABLE)
        ok = lh_rawfield(L, -1, type) != LUA_TNIL;
    lua_settop(L, top);
    return ok;
}

/* Put the key at k in front of the path of a changed state field (only
 * on the way out of a difference: building paths costs more than the
 * comparison). */
static void path_prepend(lua_State *L, int k, char *path, size_t len)
{
    char key[128];
    size_t kl, pl = strlen(path);
    const char *dot = pl && path[0] != '[' ? "." : "";
    if (lua_type(L, k) == LUA_TSTRING)
        snprintf(key, sizeof key, "%s%s", lua_tostring(L, k), dot);
    else if (lua_isinteger(L, k))
        snprintf(key, sizeof key, "[%lld]%s", (long long)lua_tointeger(L, k),
                 dot);
    else
        snprintf(key, sizeof key, "(a %s key)%s", luaL_typename(L, k), dot);
    kl = strlen(key);
    if (kl + 1 >= len)
        return;
    if (kl + pl + 1 > len)
        pl = len - kl - 1;
    memmove(path + kl, path, pl);
    memcpy(path, key, kl);
    path[kl + pl] = '\0';
}

/* Is the table at x (the state handle was given, after the call) the
 * same data as the table at y (a fresh decode of the same JSON)? The
 * walk follows y, a tree, so it ends even when handle made x cyclic; raw
 * accesses only (no script code runs). On a difference: 0, and the path
 * of the first changed field in path (which starts empty). */
static int same_state(lua_State *L, int x, int y, char *path, size_t len)
{
    size_t nx = 0, ny = 0;
    luaL_checkstack(L, 6, "comparing states");
    for (lua_pushnil(L); lua_next(L, y); lua_pop(L, 1)) {
        int same;
        ny++;
        lua_pushvalue(L, -2);
        lua_rawget(L, x); /* key, y's value, x's value */
        if (lua_istable(L, -1) && lua_istable(L, -2))
            same = same_state(L, lua_absindex(L, -1), lua_absindex(L, -2), path,
                              len);
        else
            same = lua_rawequal(L, -1, -2);
        lua_pop(L, 1);
        if (!same) {
            path_prepend(L, -2, path, len);
            lua_pop(L, 2);
            return 0;
        }
    }
    for (lua_pushnil(L); lua_next(L, x); lua_pop(L, 1))
        nx++;
    if (nx == ny)
        return 1;
    /* x has a key y lacks: name it */
    for (lua_pushnil(L); lua_next(L, x); lua_pop(L, 1)) {
        lua_pushvalue(L, -2);
        if (lua_rawget(L, y) == LUA_TNIL) {
            path_prepend(L, -3, path, len);
            lua_pop(L, 3);
            return 0;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* What the steps of one decide share: the stack slots they fill in, in
 * order, and what the command's handler is called in messages. */
typedef struct decide_ctx {
    int priv;          /* the aggregate's private table */
    int cmd;           /* the command table */
    int fn;            /* handle[cmd.type] */
    int hst;           /* the state handle is given */
    int res;           /* what handle returned */
    int st;            /* the state the events are applied to */
    const char *state; /* the state JSON as given; NULL: initial() */
    size_t state_len;  /* (initial's: at the start of dec->text) */
    int init;          /* the state came from initial() */
    size_t n;          /* events handle returned */
    char what[160];    /* "handle.<Cmd>" */
} decide_ctx;

/* The state JSON both decodes start from: the one given, or initial()'s
 * at the start of the decision's text (found by offset: it grows). */
static const char *state_text(const op *o, const decide_ctx *dc)
{
    return dc->init ? o->dec->text.data : dc->state;
}

/* Push the command: the table evl_luahost_parse_command kept (taken, not
 * shared) or a decode of the command JSON. */
static int push_command(op *o, lua_State *L)
{
    const evl_luahost_command *c = o->cmd;
    if (c->command)
        return lh_push_json_table(o, L, "command", c->command, c->command_len);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_command);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_command);
    if (!lua_istable(L, -1)) {
        lh_failf(o, "%s: no parsed command to decide", o->script);
        return 0;
    }
    return 1;
}

/* Push handle[cmd.type] and name it in dc->what; a command type with no
 * handler is REJECTED. */
static int push_handler(op *o, lua_State *L, decide_ctx *dc)
{
    const char *ctype;
    if (lh_rawfield(L, dc->cmd, "type") != LUA_TSTRING ||
        lua_rawlen(L, -1) == 0) {
        lh_failf(o, "%s: the command has no type (a non-empty string)",
                 o->script);
        return 0;
    }
    ctype = lua_tostring(L, -1);
    snprintf(dc->what, sizeof dc->what, "handle.%s", ctype);
    lh_rawfield(L, dc->priv, "handle");
    lua_pushvalue(L, -2);
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        o->status = EVL_LUAHOST_REJECTED;
        lh_failf(o, "aggregate type %s has no handler for command %s",
                 o->agg->type, ctype);
        return 0;
    }
    dc->fn = lua_gettop(L);
    return 1;
}

/* Push the state handle gets. Handle's state and the one the events are
 * applied to are two decodes of one JSON text: initial() runs once, and
 * goes through JSON as a stored state does, so an initial() that differs
 * between calls (a uuid) is not taken for a change by handle. */
static int push_handle_state(op *o, lua_State *L, decide_ctx *dc)
{
    evl_luahost_decision *d = o->dec;
    char jerr[EVL_ERRLEN];
    if (!dc->state) {
        if (!push_state(o, L, dc->priv, NULL, 0))
            return 0;
        if (evl_json_encode(L, -1, &d->text, jerr, sizeof jerr) != EVL_OK) {
            lh_failf(o, "%s: initial returned a state with no JSON form: %s",
                     o->script, jerr);
            return 0;
        }
        lua_pop(L, 1);
        dc->init = 1;
        dc->state_len = d->text.len;
    }
    if (!push_state(o, L, dc->priv, state_text(o, dc), dc->state_len))
        return 0;
    dc->hst = lua_gettop(L);
    return 1;
}

/* Push the aggregate id: the caller's, or the command's field. */
static void push_aggregate_id(op *o, lua_State *L, int cmd)
{
    if (o->cmd->aggregate_id)
        lua_pushstring(L, o->cmd->aggregate_id);
    else
        lh_rawfield(L, cmd, "aggregate_id");
}

/* Call handle(state, cmd, ctx) with ctx = {aggregate_id, version,
 * metadata, reject}; its result lands at dc->res. */
static int call_handle(op *o, lua_State *L, decide_ctx *dc)
{
    int rc;
    lua_pushvalue(L, dc->fn);
    lua_pushvalue(L, dc->hst);
    lua_pushvalue(L, dc->cmd);
    lua_createtable(L, 0, 4);
    push_aggregate_id(o, L, dc->cmd);
    lua_setfield(L, -2, "aggregate_id");
    lua_pushinteger(L, (lua_Integer)o->cmd->version);
    lua_setfield(L, -2, "version");
    if (lh_rawfield(L, dc->cmd, "metadata") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
    lua_setfield(L, -2, "metadata");
    lh_push_reject(L);
    lua_setfield(L, -2, "reject");

    rc = lh_call(o->h, L, 3); /* fn, state, cmd, ctx */
    if (rc != CALL_OK) {
        lh_fail_call(o, L, rc, dc->what);
        return 0;
    }
    dc->res = lua_gettop(L);
    return 1;
}

/* A rejection (REJECTED with its message), or a list of events: its
 * length in dc->n. */
static int check_result(op *o, lua_State *L, decide_ctx *dc)
{
    int res = dc->res;
    if (lh_is_rejection(L, res)) {
        /* the script may have changed the rejection table since */
        o->status = EVL_LUAHOST_REJECTED;
        if (lua_rawgeti(L, res, 1) == LUA_TSTRING)
            lh_failf(o, "%s", lua_tostring(L, -1));
        else
            lh_failf(o, "rejected");
        return 0;
    }
    if (!lua_istable(L, res)) {
        lh_failf(o,
                 "%s: %s returned %s, expected a list of events or "
                 "ctx.reject(msg)",
                 o->script, dc->what,
                 lua_isnil(L, res)
                     ? "nothing"
                     : lua_pushfstring(L, "a %s", luaL_typename(L, res)));
        return 0;
    }
    if (!lh_is_sequence(L, res, &dc->n)) {
        lh_failf(o,
                 "%s: %s returned a table that is not a list of events "
                 "(wrap a single event: return { {type = ..., data = ...} })",
                 o->script, dc->what);
        return 0;
    }
    return 1;
}

/* Check event i (at ev) and copy its type, version and data JSON into
 * e, as offsets into the decision's text. */
static int read_event(op *o, lua_State *L, const decide_ctx *dc, size_t i,
                      int ev, evl_luahost_event *e)
{
    evl_luahost_decision *d = o->dec;
    const char *what = dc->what, *type;
    char jerr[EVL_ERRLEN];
    if (!lua_istable(L, ev)) {
        lh_failf(o,
                 "%s: %s returned event %zu as a %s, expected a table "
                 "{type = ..., data = ...}",
                 o->script, what, i, luaL_typename(L, ev));
        return 0;
    }
    if (lh_rawfield(L, ev, "type") != LUA_TSTRING) {
        lh_failf(o, "%s: %s returned event %zu without a string type",
                 o->script, what, i);
        return 0;
    }
    type = lua_tostring(L, -1);
    if (!*type) {
        lh_failf(o, "%s: %s returned event %zu with an empty type", o->script,
                 what, i);
        return 0;
    }
    e->version = 1;
    if (lh_rawfield(L, ev, "version") != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
            lh_failf(o,
                     "%s: %s returned event %zu (%s) with version %s, "
                     "expected a positive integer",
                     o->script, what, i, type, lh_describe(L, -1));
            return 0;
        }
        e->version = (long long)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    e->type = OFF(d->text.len);
    evl_buf_put(&d->text, type, strlen(type) + 1);
    if (lh_rawfield(L, ev, "data") != LUA_TTABLE) {
        lh_failf(o, "%s: %s returned event %zu (%s) without a data table",
                 o->script, what, i, type);
        return 0;
    }
    e->data = OFF(d->text.len);
    if (evl_json_encode(L, -1, &d->text, jerr, sizeof jerr) != EVL_OK) {
        lh_failf(o,
                 "%s: %s returned event %zu (%s) whose data has no JSON "
                 "form: %s",
                 o->script, what, i, type, jerr);
        return 0;
    }
    e->data_len = d->text.len - (size_t)(uintptr_t)e->data;
    evl_buf_putc(&d->text, '\0');
    return 1;
}

/* Every event well formed, and each type with an apply entry or a
 * neutral declaration. */
static int read_events(op *o, lua_State *L, const decide_ctx *dc)
{
    evl_luahost_decision *d = o->dec;
    if (dc->n > d->cap) {
        d->events = evl_xrealloc(d->events, sizeof *d->events * dc->n);
        d->cap = dc->n;
    }
    for (size_t i = 1; i <= dc->n; i++) {
        lua_rawgeti(L, dc->res, (lua_Integer)i);
        if (!read_event(o, L, dc, i, lua_gettop(L), &d->events[i - 1]))
            return 0;
        lua_settop(L, dc->res);
    }
    for (size_t i = 0; i < dc->n; i++) {
        const char *type = d->text.data + (uintptr_t)d->events[i].type;
        if (!applies(L, dc->priv, type)) {
            lh_failf(o,
                     "%s: %s: event type '%s' has no apply entry (add one, "
                     "or list it in neutral = {...} if it changes no state)",
                     o->script, dc->what, type);
            return 0;
        }
    }
    return 1;
}

/* Push event i as apply sees it: {type, data, version, aggregate_type,
 * aggregate_id, sequence}. */
static void push_decided_event(op *o, lua_State *L, const decide_ctx *dc,
                               size_t i)
{
    int ev;
    lua_createtable(L, 0, 6);
    ev = lua_gettop(L);
    lua_rawgeti(L, dc->res, (lua_Integer)i);
    lh_rawfield(L, -1, "type");
    lua_setfield(L, ev, "type");
    lh_rawfield(L, -1, "data");
    lua_setfield(L, ev, "data");
    lua_pop(L, 1);
    lua_pushinteger(L, (lua_Integer)o->dec->events[i - 1].version);
    lua_setfield(L, ev, "version");
    lua_pushstring(L, o->agg->type);
    lua_setfield(L, ev, "aggregate_type");
    push_aggregate_id(o, L, dc->cmd);
    lua_setfield(L, ev, "aggregate_id");
    lua_pushinteger(L, (lua_Integer)(o->cmd->version + (long long)i));
    lua_setfield(L, ev, "sequence");
}

/* The new state at dc->st: the events applied to a fresh decode of the
 * old one, which handle's must still equal. */
static int apply_decided(op *o, lua_State *L, decide_ctx *dc)
{
    char path[256];
    if (!push_state(o, L, dc->priv, state_text(o, dc), dc->state_len))
        return 0;
    dc->st = lua_gettop(L);
    path[0] = '\0';
    if (!same_state(L, dc->hst, dc->st, path, sizeof path)) {
        lh_failf(o,
                 "%s: %s must not change the state (emit an event instead): "
                 "field '%s'",
                 o->script, dc->what, path);
        return 0;
    }
    for (size_t i = 1; i <= dc->n; i++) {
        push_decided_event(o, L, dc, i);
        if (!apply_event(o, L, dc->priv, dc->st, lua_gettop(L)))
            return 0;
        lua_settop(L, dc->st);
    }
    return 1;
}

/* Encode the new state after the events and turn the decision's offsets
 * into pointers. */
static int finish_decision(op *o, lua_State *L, const decide_ctx *dc)
{
    evl_luahost_decision *d = o->dec;
    char jerr[EVL_ERRLEN];
    d->state = OFF(d->text.len);
    if (evl_json_encode(L, dc->st, &d->text, jerr, sizeof jerr) != EVL_OK) {
        lh_failf(o, "%s: the state after the events has no JSON form: %s",
                 o->script, jerr);
        return 0;
    }
    d->state_len = d->text.len - (size_t)(uintptr_t)d->state;
    evl_buf_putc(&d->text, '\0');

    d->nevents = dc->n;
    d->state = FIX(d->text.data, d->state);
    for (size_t i = 0; i < dc->n; i++) {
        d->events[i].type = FIX(d->text.data, d->events[i].type);
        d->events[i].data = FIX(d->text.data, d->events[i].data);
    }
    return 1;
}

/* decide, in steps (each pushes what the next needs, or fails the op). */
static void op_decide(lua_State *L, op *o)
{
    decide_ctx dc;
    memset(&dc, 0, sizeof dc);
    dc.state = o->cmd->state;
    dc.state_len = o->cmd->state_len;
    o->status = EVL_LUAHOST_FAILED;
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->agg->ref);
    dc.priv = lua_gettop(L);
    if (!push_command(o, L))
        return;
    dc.cmd = lua_gettop(L);
    if (push_handler(o, L, &dc) && push_handle_state(o, L, &dc) &&
        call_handle(o, L, &dc) && check_result(o, L, &dc) &&
        read_events(o, L, &dc) && apply_decided(o, L, &dc) &&
        finish_decision(o, L, &dc))
        o->status = EVL_LUAHOST_ACCEPTED;
}

evl_luahost_verdict evl_luahost_decide(evl_luahost *h,
                                       const evl_luahost_command *cmd,
                                       evl_luahost_decision *out, char *err,
                                       size_t errlen)
{
    op o;
    memset(&o, 0, sizeof o);
    out->nevents = 0;
    out->state = NULL;
    out->state_len = 0;
    out->text.len = 0;
    o.agg = lh_find_agg(h, cmd->aggregate_type);
    if (!o.agg) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "no aggregate script has type %s",
                   cmd->aggregate_type ? cmd->aggregate_type : "(null)");
        return EVL_LUAHOST_FAILED;
    }
    o.h = h;
    o.fn = op_decide;
    o.script = o.agg->script;
    o.err = err;
    o.errlen = errlen;
    o.cmd = cmd;
    o.dec = out;
    if (lh_run(h, &o) != 0)
        o.status = EVL_LUAHOST_FAILED;
    if (o.status != EVL_LUAHOST_ACCEPTED) {
        out->nevents = 0;
        out->state = NULL;
        out->state_len = 0;
    }
    return (evl_luahost_verdict)o.status;
}

static void op_parse_command(lua_State *L, op *o)
{
    o->status = EVL_LUAHOST_REJECTED;
    if (evl_envelope_parse_command_keep(L, o->json, o->json_len, o->parsed,
                                        o->err, o->errlen) != EVL_OK)
        return;
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_command);
    o->status = EVL_LUAHOST_ACCEPTED;
}

evl_luahost_verdict evl_luahost_parse_command(evl_luahost *h, const char *json,
                                              size_t len, evl_command *out,
                                              char *err, size_t errlen)
{
    op o;
    memset(&o, 0, sizeof o);
    /* drop what an earlier parse kept (assigning nil never allocates) */
    lua_pushnil(h->L);
    lua_rawsetp(h->L, LUA_REGISTRYINDEX, &key_command);
    o.h = h;
    o.fn = op_parse_command;
    o.script = "the command";
    o.err = err;
    o.errlen = errlen;
    o.json = json;
    o.json_len = len;
    o.parsed = out;
    if (lh_run(h, &o) != 0) {
        /* out of memory part way: no field may point into its text */
        out->id = out->type = out->aggregate_type = out->aggregate_id = NULL;
        out->user_id = out->correlation_id = out->causation_id = NULL;
        out->has_expected_version = 0;
        return EVL_LUAHOST_FAILED;
    }
    return (evl_luahost_verdict)o.status;
}

void evl_luahost_decision_free(evl_luahost_decision *d)
{
    if (!d)
        return;
    free(d->events);
    evl_buf_free(&d->text);
    memset(d, 0, sizeof *d);
}

/* ---- apply (rebuild) -------------------------------------------------- */

/* Run upcast[e.type](e) of the aggregate whose private table is at priv
 * on the event at ev (replaced when upcast returns a table). */
int lh_upcast_event(op *o, lua_State *L, int priv, int ev)
{
    char what[160];
    int rc;
    if (lh_rawfield(L, priv, "upcast") != LUA_TTABLE ||
        lh_rawfield(L, ev, "type") != LUA_TSTRING) {
        lua_settop(L, ev);
        return 1;
    }
    snprintf(what, sizeof what, "upcast.%s", lua_tostring(L, -1));
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        lua_settop(L, ev);
        return 1;
    }
    lua_pushvalue(L, ev);
    rc = lh_call(o->h, L, 1);
    if (rc != CALL_OK) {
        lh_fail_call(o, L, rc, what);
        return 0;
    }
    if (lua_istable(L, -1)) {
        lua_replace(L, ev);
    } else if (!lua_isnil(L, -1)) {
        lh_failf(o, "%s: %s returned a %s, expected the event table or nil",
                 o->script, what, luaL_typename(L, -1));
        return 0;
    }
    lua_settop(L, ev);
    return 1;
}

static void op_apply(lua_State *L, op *o)
{
    char jerr[EVL_ERRLEN], what[32];
    int priv, st;

    o->status = EVL_EPERMANENT;
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->agg->ref);
    priv = lua_gettop(L);
    if (!push_state(o, L, priv, o->state, o->state_len))
        return;
    st = lua_gettop(L);
    for (size_t i = 0; i < o->nevents; i++) {
        int ev;
        snprintf(what, sizeof what, "event %zu", i + 1);
        if (!lh_push_json_table(o, L, what, o->events[i], o->lens[i]))
            return;
        ev = lua_gettop(L);
        if (!lh_upcast_event(o, L, priv, ev) ||
            !apply_event(o, L, priv, st, ev))
            return;
        lua_settop(L, st);
    }
    o->out->len = 0;
    if (evl_json_encode(L, st, o->out, jerr, sizeof jerr) != EVL_OK) {
        lh_failf(o, "%s: the state after the events has no JSON form: %s",
                 o->script, jerr);
        return;
    }
    evl_buf_putc(o->out, '\0');
    o->out->len--;
    o->status = EVL_OK;
}

evl_err evl_luahost_apply(evl_luahost *h, const char *aggregate_type,
                          const char *state, size_t state_len,
                          const char *const *events, const size_t *lens,
                          size_t n, evl_buf *out, char *err, size_t errlen)
{
    op o;
    memset(&o, 0, sizeof o);
    o.agg = lh_find_agg(h, aggregate_type);
    if (!o.agg) {
        out->len = 0;
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "no aggregate script has type %s",
                          aggregate_type ? aggregate_type : "(null)");
    }
    o.h = h;
    o.fn = op_apply;
    o.script = o.agg->script;
    o.err = err;
    o.errlen = errlen;
    o.state = state;
    o.state_len = state_len;
    o.events = events;
    o.lens = lens;
    o.nevents = n;
    o.out = out;
    if (lh_run(h, &o) != 0)
        o.status = EVL_EPERMANENT;
    if (o.status != EVL_OK)
        out->len = 0;
    return (evl_err)o.status;
}
