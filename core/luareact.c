/*
 * luareact.c - the reaction operation of the script host:
 * evl_luahost_react (luahost.h gives its contract; docs/reactions.md the
 * script's side).
 *
 * The idea: a reaction is a stateless function from one event to the
 * commands it sends. This file runs it as projections are run (decode
 * the envelope, the source aggregate's upcast, the handler under the
 * sandbox's limits), checks every command it returns against the
 * reacting aggregate (known fields only, a type handle knows, a usable
 * aggregate id, data a JSON object) and writes each one in the wire
 * format of T.commands, with its deterministic id (uuid.h), so the
 * reactor only produces bytes and never touches a Lua value.
 *
 * The command count is checked before any command is read: a reaction
 * that returns 100,000 commands fails at once, whatever their shape.
 * The strings the commands take from the event (id, correlation_id,
 * user_id) stay on the Lua stack while the commands are written: a Lua
 * string does not move while it is referenced there.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "luahost_int.h"
#include "uuid.h"

/* What the steps of one react share: stack slots and names. */
typedef struct react_ctx {
    int priv;         /* the reacting aggregate's private table */
    int ev;           /* the event as the reaction sees it */
    int res;          /* what the reaction returned */
    size_t n;         /* commands in res */
    int single;       /* res is one command, not a list */
    const char *id;   /* the event's id (on the stack) */
    const char *corr; /* its correlation_id; NULL: none */
    const char *user; /* its user_id; NULL: none */
    char what[EVL_ENVELOPE_MAX_ID * 2 + 16]; /* "react.<TYPE.Event>" */
} react_ctx;

/* A string field of the event: pushed (left on the stack, which keeps
 * the pointer valid) and returned; NULL when it is not a non-empty
 * string. */
static const char *event_string(lua_State *L, int ev, const char *field)
{
    if (lh_rawfield(L, ev, field) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        return NULL;
    return lua_tostring(L, -1);
}

/* Decode the event, keep what the commands take from it, run the source
 * aggregate's upcast and push the reaction for it (nothing pushed and 1
 * returned when the aggregate has none: no commands). */
static int push_reaction(op *o, lua_State *L, react_ctx *rc, int *found)
{
    const agg *src;
    const char *atype, *type;
    int ev;

    *found = 0;
    if (!lh_push_json_table(o, L, "event", o->event, o->event_len))
        return 0;
    ev = lua_gettop(L);
    rc->id = event_string(L, ev, "id");
    if (rc->id && lua_rawlen(L, -1) > EVL_ENVELOPE_MAX_ID)
        rc->id = NULL;
    rc->corr = event_string(L, ev, "correlation_id");
    rc->user = event_string(L, ev, "user_id");
    atype = event_string(L, ev, "aggregate_type");
    if (!atype) {
        lh_failf(o, "%s: the event has no aggregate_type (a string)",
                 o->script);
        return 0;
    }
    src = lh_find_agg(o->h, atype);

    /* the event as the reaction sees it: a copy the upcast may replace */
    lua_pushvalue(L, ev);
    rc->ev = lua_gettop(L);
    if (src) {
        const char *script = o->script;
        lua_rawgeti(L, LUA_REGISTRYINDEX, src->ref);
        lua_pushvalue(L, rc->ev);
        o->script = src->script;
        if (!lh_upcast_event(o, L, rc->ev + 1, rc->ev + 2))
            return 0;
        o->script = script;
        lua_replace(L, rc->ev);
        lua_settop(L, rc->ev);
    }
    if (lh_rawfield(L, rc->ev, "type") != LUA_TSTRING) {
        lh_failf(o, "%s: the event has no string type", o->script);
        return 0;
    }
    type = lua_tostring(L, -1);
    snprintf(rc->what, sizeof rc->what, "react.%s.%s", atype, type);
    if (lh_rawfield(L, rc->priv, "react") != LUA_TTABLE)
        return 1; /* no react table */
    lua_pushfstring(L, "%s.%s", atype, type);
    if (lua_rawget(L, -2) != LUA_TFUNCTION)
        return 1; /* not an event this aggregate reacts to */
    if (!rc->id) {
        lh_failf(o,
                 "%s: %s: the event has no id (a non-empty string of at most "
                 "%d bytes), which its commands' ids are made from",
                 o->script, rc->what, EVL_ENVELOPE_MAX_ID);
        return 0;
    }
    *found = 1;
    return 1;
}

/* Call the reaction on top of the stack: fn(e, ctx) with ctx =
 * {aggregate_type}; its result lands at rc->res. */
static int call_reaction(op *o, lua_State *L, react_ctx *rc)
{
    int r;
    lua_pushvalue(L, rc->ev);
    lua_createtable(L, 0, 1);
    lua_pushstring(L, o->agg->type);
    lua_setfield(L, -2, "aggregate_type");
    r = lh_call(o->h, L, 2);
    if (r != CALL_OK) {
        lh_fail_call(o, L, r, rc->what);
        return 0;
    }
    rc->res = lua_gettop(L);
    return 1;
}

/* nil, one command or a list of them: how many (rc->n), counted before
 * any is read, so that too many fail at once. */
static int count_commands(op *o, lua_State *L, react_ctx *rc)
{
    int res = rc->res, t1;
    size_t len;
    rc->n = 0;
    if (lua_isnil(L, res))
        return 1;
    if (!lua_istable(L, res)) {
        lh_failf(o,
                 "%s: %s returned a %s, expected a command {type = ..., "
                 "aggregate_id = ..., data = ...}, a list of them or nil",
                 o->script, rc->what, luaL_typename(L, res));
        return 0;
    }
    t1 = lua_rawgeti(L, res, 1);
    lua_pop(L, 1);
    if (t1 == LUA_TNIL) {
        lua_pushnil(L);
        if (!lua_next(L, res))
            return 1; /* {}: an empty list */
        lua_pop(L, 2);
        rc->single = 1;
        rc->n = 1;
    } else if (t1 == LUA_TTABLE) {
        rc->n = lua_rawlen(L, res);
    }
    if (rc->n > o->max_commands) {
        lh_failf(o,
                 "%s: %s returned %zu commands (more than "
                 "reactions.max_commands = %zu)",
                 o->script, rc->what, rc->n, o->max_commands);
        return 0;
    }
    if (t1 != LUA_TNIL && (t1 != LUA_TTABLE || !lh_is_sequence(L, res, &len))) {
        lh_failf(o,
                 "%s: %s returned a table that is neither a command "
                 "{type = ..., aggregate_id = ..., data = ...} nor a list of "
                 "them",
                 o->script, rc->what);
        return 0;
    }
    return 1;
}

/* The fields a command may have: anything else is a mistake to name. */
static int command_keys(op *o, lua_State *L, const react_ctx *rc, int c,
                        size_t i)
{
    static const char *const known[] = {"type", "aggregate_id", "data",
                                        "expected_version"};
    for (lua_pushnil(L); lua_next(L, c); lua_pop(L, 1)) {
        size_t k = 0;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (; k < 4 && strcmp(lua_tostring(L, -2), known[k]) != 0; k++)
                ;
        if (lua_type(L, -2) != LUA_TSTRING || k == 4) {
            lh_failf(o,
                     "%s: %s: command %zu has an unknown field %s (a command "
                     "has type, aggregate_id, data and expected_version)",
                     o->script, rc->what, i, lh_describe(L, -2));
            return 0;
        }
    }
    return 1;
}

/* The field on top of the stack should have been a non-empty string. */
static void bad_string(op *o, lua_State *L, const react_ctx *rc, size_t i,
                       const char *field)
{
    if (lua_isnil(L, -1))
        lh_failf(o, "%s: %s: command %zu has no %s (a non-empty string)",
                 o->script, rc->what, i, field);
    else
        lh_failf(o,
                 "%s: %s: command %zu has %s %s, expected a non-empty string",
                 o->script, rc->what, i, field,
                 lua_type(L, -1) == LUA_TSTRING ? "\"\"" : lh_describe(L, -1));
}

/* command i's type (pushed): a handle entry of the reacting aggregate. */
static const char *command_type(op *o, lua_State *L, const react_ctx *rc, int c,
                                size_t i)
{
    const char *type;
    if (lh_rawfield(L, c, "type") != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        bad_string(o, L, rc, i, "type");
        return NULL;
    }
    type = lua_tostring(L, -1);
    if (!bsearch(&type, o->agg->commands, o->agg->pub.ncommands,
                 sizeof *o->agg->commands, lh_cmpstr)) {
        lh_failf(o,
                 "%s: %s: command %zu has type '%s', which aggregate type %s "
                 "has no handle entry for",
                 o->script, rc->what, i, type, o->agg->type);
        return NULL;
    }
    return type;
}

/* command i's aggregate_id (pushed): what the command side accepts. */
static const char *command_aggregate_id(op *o, lua_State *L,
                                        const react_ctx *rc, int c, size_t i)
{
    const char *id, *why = NULL;
    size_t len;
    if (lh_rawfield(L, c, "aggregate_id") != LUA_TSTRING ||
        lua_rawlen(L, -1) == 0) {
        bad_string(o, L, rc, i, "aggregate_id");
        return NULL;
    }
    id = lua_tolstring(L, -1, &len);
    if (len > EVL_ENVELOPE_MAX_AGGREGATE_ID)
        why = lua_pushfstring(L,
                              "is longer than the %d bytes a command "
                              "takes",
                              EVL_ENVELOPE_MAX_AGGREGATE_ID);
    else if (memchr(id, '\0', len))
        why = "contains a NUL byte";
    else if (evl_utf8_check(id, len) >= 0)
        why = "is not valid UTF-8";
    if (why) {
        lh_failf(o, "%s: %s: command %zu's aggregate_id %s", o->script,
                 rc->what, i, why);
        return NULL;
    }
    return id;
}

/* command i's expected_version into *in. */
static int command_version(op *o, lua_State *L, const react_ctx *rc, int c,
                           size_t i, evl_envelope_command_in *in)
{
    if (lh_rawfield(L, c, "expected_version") == LUA_TNIL) {
        lua_pop(L, 1);
        return 1;
    }
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0) {
        lh_failf(o,
                 "%s: %s: command %zu has expected_version %s, expected an "
                 "integer >= 0 (or none)",
                 o->script, rc->what, i, lh_describe(L, -1));
        return 0;
    }
    in->has_expected_version = 1;
    in->expected_version = (long long)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return 1;
}

/* command i's data as JSON at the end of the text (offset *off, length
 * *len): a table with an object form; none is {}. */
static int command_data(op *o, lua_State *L, const react_ctx *rc, int c,
                        size_t i, size_t *off, size_t *len)
{
    evl_buf *b = &o->reactions->text;
    char jerr[EVL_ERRLEN];
    int t = lh_rawfield(L, c, "data");
    *off = b->len;
    if (t == LUA_TNIL) {
        evl_buf_puts(b, "{}");
    } else if (t != LUA_TTABLE) {
        lh_failf(o, "%s: %s: command %zu has data of type %s, expected a table",
                 o->script, rc->what, i,
                 evl_json_is_null(L, -1) ? "null" : luaL_typename(L, -1));
        return 0;
    } else if (evl_json_encode(L, -1, b, jerr, sizeof jerr) != EVL_OK) {
        lh_failf(o, "%s: %s: command %zu's data has no JSON form: %s",
                 o->script, rc->what, i, jerr);
        return 0;
    } else if (b->data[*off] != '{') {
        lh_failf(o,
                 "%s: %s: command %zu's data is a list, expected a table "
                 "with names (a JSON object)",
                 o->script, rc->what, i);
        return 0;
    }
    *len = b->len - *off;
    lua_pop(L, 1);
    return 1;
}

static const char *put_text(evl_buf *b, const char *s)
{
    const char *off = OFF(b->len);
    evl_buf_put(b, s, strlen(s) + 1);
    return off;
}

/* Check command i (1-based, at c) and write it as out->cmds[i - 1]. */
static int add_command(op *o, lua_State *L, const react_ctx *rc, int c,
                       size_t i)
{
    evl_luahost_reactions *out = o->reactions;
    evl_luahost_reaction *r = &out->cmds[i - 1];
    evl_envelope_command_in in;
    char id[37], *data;
    size_t doff, dlen;
    int top = lua_gettop(L);

    memset(&in, 0, sizeof in);
    if (!lua_istable(L, c)) {
        lh_failf(o,
                 "%s: %s returned command %zu as a %s, expected a table "
                 "{type = ..., aggregate_id = ..., data = ...}",
                 o->script, rc->what, i, luaL_typename(L, c));
        return 0;
    }
    if (!command_keys(o, L, rc, c, i) ||
        !(in.type = command_type(o, L, rc, c, i)) ||
        !(in.aggregate_id = command_aggregate_id(o, L, rc, c, i)) ||
        !command_version(o, L, rc, c, i, &in) ||
        !command_data(o, L, rc, c, i, &doff, &dlen))
        return 0;

    /* from here on nothing raises: the data can sit in C memory while
     * the command is written after it */
    evl_uuid_reaction(id, rc->id, o->agg->type, i - 1);
    data = evl_xmalloc(dlen);
    memcpy(data, out->text.data + doff, dlen);
    out->text.len = doff;
    r->id = put_text(&out->text, id);
    r->type = put_text(&out->text, in.type);
    r->aggregate_id = put_text(&out->text, in.aggregate_id);
    r->json = OFF(out->text.len);
    in.id = id;
    in.aggregate_type = o->agg->type;
    in.data = data;
    in.data_len = dlen;
    in.user_id = rc->user;
    in.correlation_id = rc->corr;
    in.causation_id = rc->id;
    evl_envelope_command(&out->text, &in);
    free(data);
    r->len = out->text.len - (size_t)(uintptr_t)r->json;
    evl_buf_putc(&out->text, '\0');
    lua_settop(L, top);
    return 1;
}

static void op_react(lua_State *L, op *o)
{
    evl_luahost_reactions *out = o->reactions;
    react_ctx rc;
    int found;

    memset(&rc, 0, sizeof rc);
    o->status = EVL_EPERMANENT;
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->agg->ref);
    rc.priv = lua_gettop(L);
    if (!push_reaction(o, L, &rc, &found))
        return;
    if (!found) {
        o->status = EVL_OK;
        return;
    }
    if (!call_reaction(o, L, &rc) || !count_commands(o, L, &rc))
        return;
    if (rc.n > out->cap) {
        out->cmds = evl_xrealloc(out->cmds, sizeof *out->cmds * rc.n);
        out->cap = rc.n;
    }
    for (size_t i = 1; i <= rc.n; i++) {
        int c = rc.res;
        if (!rc.single) {
            lua_rawgeti(L, rc.res, (lua_Integer)i);
            c = lua_gettop(L);
        }
        if (!add_command(o, L, &rc, c, i))
            return;
        lua_settop(L, rc.res);
    }
    for (size_t i = 0; i < rc.n; i++) {
        evl_luahost_reaction *r = &out->cmds[i];
        r->id = FIX(out->text.data, r->id);
        r->type = FIX(out->text.data, r->type);
        r->aggregate_id = FIX(out->text.data, r->aggregate_id);
        r->json = FIX(out->text.data, r->json);
    }
    out->n = rc.n;
    o->status = EVL_OK;
}

static void clear_reactions(evl_luahost_reactions *r)
{
    r->n = 0;
    r->text.len = 0;
}

evl_err evl_luahost_react(evl_luahost *h, const char *aggregate_type,
                          const char *event, size_t event_len,
                          size_t max_commands, evl_luahost_reactions *out,
                          char *err, size_t errlen)
{
    op o;
    memset(&o, 0, sizeof o);
    clear_reactions(out);
    o.agg = lh_find_agg(h, aggregate_type);
    if (!o.agg)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "no aggregate script has type %s",
                          aggregate_type ? aggregate_type : "(null)");
    o.h = h;
    o.fn = op_react;
    o.script = o.agg->script;
    o.err = err;
    o.errlen = errlen;
    o.event = event;
    o.event_len = event_len;
    o.max_commands = max_commands ? max_commands : EVL_LUAHOST_MAX_COMMANDS;
    o.reactions = out;
    if (lh_run(h, &o) != 0)
        o.status = EVL_EPERMANENT;
    if (o.status != EVL_OK)
        clear_reactions(out);
    return (evl_err)o.status;
}

void evl_luahost_reactions_free(evl_luahost_reactions *r)
{
    if (!r)
        return;
    free(r->cmds);
    evl_buf_free(&r->text);
    memset(r, 0, sizeof *r);
}
