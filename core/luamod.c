/*
 * luamod.c - the Lua host as a loadable Lua C module, `evlua_host`, so
 * busted specs (and core/lua/evlua/testing.lua) load scripts through the
 * exact sandbox, limits, JSON bridge and validation that `evlua run` uses.
 *
 *   local native = require("evlua_host")
 *   native.api                       -- the evlua table (uuid, now, json..)
 *   local host, problems = native.load{
 *     aggregates = "dir" | {dirs}, projections = "dir" | {dirs},
 *     lib = "dir", memory_mb = 64, instructions = 1e7 }
 *   host:decide{ aggregate_type=, aggregate_id=, version=, state=,
 *                command= }           -> { verdict=, events=, state=,
 *                                          error= }
 *   host:apply(type, state, events)   -> state | nil, err
 *   host:project(name, event)         -> { {sql=, params={...}}, ... } |
 *                                        nil, err
 *   host:reset(name)                  -> statements | nil, err
 *   host:react(type, event [, max])   -> { command, ... } | nil, err
 *                                       (type's reaction to the event
 *                                        envelope: each command in its
 *                                        wire form, id, metadata and all)
 *   host:aggregates(), host:projections(), host:hash(), host:memory()
 *                                    (an aggregate: type, script, commands,
 *                                     events = apply's keys, neutral,
 *                                     reacts = react's keys)
 *   local db = native.pg(conninfo)   -- a connection for specs, opened
 *                                       as the projector opens its own
 *   db:exec(sql, {n=, ...})          -> rows, count: each row {col = v}
 *                                       with v an integer (int2/4/8, oid),
 *                                       a number (float4/8; numeric when
 *                                       exact, else text), a boolean,
 *                                       decoded json/jsonb, evlua.null for
 *                                       SQL NULL, else text
 *   db:create_tables()               -- evlua_checkpoints & co, as every
 *                                       projector creates them (committed)
 *   db:close()
 *   native.sql.load_checkpoints, native.sql.advance_checkpoint
 *                                    -- the projector's checkpoint
 *                                       statements (pg.h), verbatim
 *
 * Values cross as JSON through json.h, exactly as in production: a state
 * or event that has no JSON form fails here as it would there. The module
 * is built without linking liblua: the interpreter that loads it provides
 * the Lua API (a second copy of the Lua runtime in one process corrupts
 * tables).
 *
 * @locality the thread of the lua_State that loaded it.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <libpq-fe.h>
#include <lua.h>

#include "json.h"
#include "log.h"
#include "luaapi.h"
#include "luahost.h"
#include "pg.h"

#define HOST_MT "evlua.host"

typedef struct ud {
    evl_luahost *host;
    evl_luahost_decision dec;
    evl_luahost_stmts stmts;
    evl_luahost_reactions reactions;
    evl_buf buf;
} ud;

static ud *check_host(lua_State *L)
{
    ud *u = luaL_checkudata(L, 1, HOST_MT);
    if (!u->host)
        luaL_error(L, "evlua_host: host is closed");
    return u;
}

/* Read a string or list of strings field into a NULL-terminated array of
 * pointers to strings kept alive on the Lua stack (in table at index
 * keep). */
static size_t dirs_field(lua_State *L, int opts, const char *field,
                         const char **out, size_t max)
{
    size_t n = 0;
    lua_getfield(L, opts, field);
    if (lua_type(L, -1) == LUA_TSTRING) {
        out[n++] = lua_tostring(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, out); /* keep it alive */
        return n;
    }
    if (lua_istable(L, -1)) {
        lua_Integer len = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= len && n < max; i++) {
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "evlua_host.load: %s[%d] is not a string", field,
                           (int)i);
            out[n++] = lua_tostring(L, -1);
            lua_pop(L, 1); /* the list table keeps it alive */
        }
        lua_rawsetp(L, LUA_REGISTRYINDEX, out);
        return n;
    }
    if (!lua_isnil(L, -1))
        luaL_error(L, "evlua_host.load: %s must be a string or a list", field);
    lua_pop(L, 1);
    return 0;
}

/* native.load(opts) -> host | nil, problems */
static int l_load(lua_State *L)
{
    static const char *aggs[64], *projs[64];
    evl_luahost_config hc;
    evl_luahost_problems problems = {0};
    char err[EVL_ERRLEN];
    luaL_checktype(L, 1, LUA_TTABLE);
    memset(&hc, 0, sizeof hc);
    hc.aggregate_dirs = aggs;
    hc.naggregate_dirs = dirs_field(L, 1, "aggregates", aggs, 64);
    hc.projection_dirs = projs;
    hc.nprojection_dirs = dirs_field(L, 1, "projections", projs, 64);
    lua_getfield(L, 1, "lib");
    hc.lib_dir = lua_tostring(L, -1);
    lua_getfield(L, 1, "memory_mb");
    hc.memory_limit = (size_t)luaL_optinteger(L, -1, 0) << 20;
    lua_getfield(L, 1, "instructions");
    hc.instruction_limit = (long)luaL_optinteger(L, -1, 0);
    lua_pop(L, 2);

    ud *u = lua_newuserdatauv(L, sizeof(ud), 0);
    memset(u, 0, sizeof *u);
    luaL_setmetatable(L, HOST_MT);
    if (evl_luahost_new(&hc, &u->host, &problems, err, sizeof err) != EVL_OK) {
        lua_pushnil(L);
        lua_createtable(L, (int)problems.n, 0);
        for (size_t i = 0; i < problems.n; i++) {
            lua_pushstring(L, problems.lines[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        if (problems.n == 0) {
            lua_pushstring(L, err);
            lua_rawseti(L, -2, 1);
        }
        evl_luahost_problems_free(&problems);
        return 2;
    }
    evl_luahost_problems_free(&problems);
    return 1;
}

/* Encode the value at idx to JSON into u->buf (NUL-terminated); raises a
 * Lua error naming what on failure. */
static const char *encode(lua_State *L, ud *u, int idx, const char *what)
{
    char err[EVL_ERRLEN];
    u->buf.len = 0;
    if (evl_json_encode(L, idx, &u->buf, err, sizeof err) != EVL_OK)
        luaL_error(L, "%s: %s", what, err);
    evl_buf_putc(&u->buf, '\0');
    u->buf.len--;
    return u->buf.data;
}

static void decode(lua_State *L, const char *s, size_t len)
{
    char err[EVL_ERRLEN];
    if (evl_json_decode(L, s, len, err, sizeof err) != EVL_OK)
        luaL_error(L, "evlua_host: cannot decode host output: %s", err);
}

/* host:decide{aggregate_type, aggregate_id, version, state, command} */
static int l_decide(lua_State *L)
{
    ud *u = check_host(L);
    char err[EVL_ERRLEN];
    luaL_checktype(L, 2, LUA_TTABLE);
    evl_luahost_command cmd;
    memset(&cmd, 0, sizeof cmd);
    lua_getfield(L, 2, "aggregate_type");
    cmd.aggregate_type = luaL_checkstring(L, -1);
    lua_getfield(L, 2, "aggregate_id");
    cmd.aggregate_id = luaL_optstring(L, -1, "test-1");
    lua_getfield(L, 2, "version");
    cmd.version = luaL_optinteger(L, -1, 0);
    /* the command and the state as JSON, each kept alive as a string on
     * the stack */
    lua_getfield(L, 2, "command");
    luaL_checktype(L, -1, LUA_TTABLE);
    encode(L, u, lua_gettop(L), "command");
    lua_pushlstring(L, u->buf.data, u->buf.len);
    cmd.command = lua_tolstring(L, -1, &cmd.command_len);
    lua_getfield(L, 2, "state");
    if (!lua_isnil(L, -1)) {
        encode(L, u, lua_gettop(L), "state");
        lua_pushlstring(L, u->buf.data, u->buf.len);
        cmd.state = lua_tolstring(L, -1, &cmd.state_len);
    }
    evl_luahost_verdict v =
        evl_luahost_decide(u->host, &cmd, &u->dec, err, sizeof err);
    lua_createtable(L, 0, 4);
    static const char *const names[] = {"accepted", "rejected", "failed"};
    lua_pushstring(L, names[v]);
    lua_setfield(L, -2, "verdict");
    if (v != EVL_LUAHOST_ACCEPTED) {
        lua_pushstring(L, err);
        lua_setfield(L, -2, "error");
        return 1;
    }
    lua_createtable(L, (int)u->dec.nevents, 0);
    for (size_t i = 0; i < u->dec.nevents; i++) {
        const evl_luahost_event *e = &u->dec.events[i];
        lua_createtable(L, 0, 3);
        lua_pushstring(L, e->type);
        lua_setfield(L, -2, "type");
        lua_pushinteger(L, e->version);
        lua_setfield(L, -2, "version");
        decode(L, e->data, e->data_len);
        lua_setfield(L, -2, "data");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "events");
    decode(L, u->dec.state, u->dec.state_len);
    lua_setfield(L, -2, "state");
    return 1;
}

/* host:apply(type, state|nil, {event envelope tables}) -> state | nil,err */
static int l_apply(lua_State *L)
{
    ud *u = check_host(L);
    char err[EVL_ERRLEN];
    const char *type = luaL_checkstring(L, 2);
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 4);
    const char *state = NULL;
    size_t state_len = 0;
    if (!lua_isnil(L, 3)) {
        encode(L, u, 3, "state");
        lua_pushlstring(L, u->buf.data, u->buf.len);
        state = lua_tolstring(L, -1, &state_len);
    }
    /* encoded events stay alive in a table of strings */
    lua_createtable(L, (int)n, 0);
    int keep = lua_gettop(L);
    const char **evs = lua_newuserdatauv(
        L, sizeof(char *) * (size_t)(n + 1) + sizeof(size_t) * (size_t)(n + 1),
        0);
    size_t *lens = (size_t *)(evs + n + 1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 4, i);
        encode(L, u, lua_gettop(L), "event");
        lua_pop(L, 1);
        lua_pushlstring(L, u->buf.data, u->buf.len);
        evs[i - 1] = lua_tolstring(L, -1, &lens[i - 1]);
        lua_rawseti(L, keep, i);
    }
    u->buf.len = 0;
    if (evl_luahost_apply(u->host, type, state, state_len, evs, lens, (size_t)n,
                          &u->buf, err, sizeof err) != EVL_OK) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    decode(L, u->buf.data, u->buf.len);
    return 1;
}

static void push_stmts(lua_State *L, const evl_luahost_stmts *s)
{
    lua_createtable(L, (int)s->n, 0);
    for (size_t i = 0; i < s->n; i++) {
        const evl_luahost_stmt *st = &s->stmts[i];
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, st->sql, st->sql_len);
        lua_setfield(L, -2, "sql");
        lua_createtable(L, (int)st->nparams, 0);
        for (size_t j = 0; j < st->nparams; j++) {
            const evl_luahost_param *p = &st->params[j];
            switch (p->type) {
            case EVL_PARAM_NULL: evl_json_push_null(L); break;
            case EVL_PARAM_STRING: lua_pushlstring(L, p->text, p->len); break;
            case EVL_PARAM_INTEGER: lua_pushinteger(L, p->i); break;
            case EVL_PARAM_FLOAT: lua_pushnumber(L, p->f); break;
            case EVL_PARAM_BOOLEAN: lua_pushboolean(L, (int)p->i); break;
            case EVL_PARAM_JSON: decode(L, p->text, p->len); break;
            }
            lua_rawseti(L, -2, (lua_Integer)j + 1);
        }
        lua_setfield(L, -2, "params");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

/* Argument idx, an event envelope as JSON text or a table (encoded, the
 * text left on the stack): its JSON text and length. */
static const char *event_arg(lua_State *L, ud *u, int idx, size_t *len)
{
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tolstring(L, idx, len);
    luaL_checktype(L, idx, LUA_TTABLE);
    encode(L, u, idx, "event");
    lua_pushlstring(L, u->buf.data, u->buf.len);
    return lua_tolstring(L, -1, len);
}

/* host:project(name, event) -> statements | nil, err */
static int l_project(lua_State *L)
{
    ud *u = check_host(L);
    char err[EVL_ERRLEN];
    const char *name = luaL_checkstring(L, 2);
    size_t len;
    const char *ev;
    ev = event_arg(L, u, 3, &len);
    if (!evl_luahost_projection_get(u->host, name))
        return luaL_error(L, "evlua_host: no projection named '%s'", name);
    if (evl_luahost_project(u->host, name, ev, len, &u->stmts, err,
                            sizeof err) != EVL_OK) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    push_stmts(L, &u->stmts);
    return 1;
}

/* host:reset(name) -> statements | nil, err */
static int l_reset(lua_State *L)
{
    ud *u = check_host(L);
    char err[EVL_ERRLEN];
    const char *name = luaL_checkstring(L, 2);
    if (evl_luahost_reset(u->host, name, &u->stmts, err, sizeof err) !=
        EVL_OK) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    push_stmts(L, &u->stmts);
    return 1;
}

/* host:react(type, event [, max_commands]) -> { command, ... } | nil, err.
 * event is an envelope table or its JSON text; max_commands defaults to
 * reactions.max_commands' default. A type with no reaction to the event
 * gives {}. */
static int l_react(lua_State *L)
{
    ud *u = check_host(L);
    char err[EVL_ERRLEN];
    const char *type = luaL_checkstring(L, 2);
    lua_Integer max = luaL_optinteger(L, 4, EVL_LUAHOST_MAX_COMMANDS);
    size_t len;
    const char *ev;
    luaL_argcheck(L, max > 0, 4, "max_commands must be positive");
    ev = event_arg(L, u, 3, &len);
    if (!evl_luahost_aggregate_get(u->host, type))
        return luaL_error(L, "evlua_host: no aggregate of type '%s'", type);
    if (evl_luahost_react(u->host, type, ev, len, (size_t)max, &u->reactions,
                          err, sizeof err) != EVL_OK) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_createtable(L, (int)u->reactions.n, 0);
    for (size_t i = 0; i < u->reactions.n; i++) {
        const evl_luahost_reaction *c = &u->reactions.cmds[i];
        decode(L, c->json, c->len);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static void push_strv(lua_State *L, const char *const *v, size_t n)
{
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, v[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

/* host:aggregates() -> { {type=, script=, commands={}, events={},
 *                        neutral={}, reacts={}}, ... } (events: apply's
 *                        keys; reacts: react's, "TYPE.EventName") */
static int l_aggregates(lua_State *L)
{
    ud *u = check_host(L);
    size_t n = evl_luahost_naggregates(u->host);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const evl_luahost_aggregate *a = evl_luahost_aggregate_at(u->host, i);
        lua_createtable(L, 0, 6);
        lua_pushstring(L, a->type);
        lua_setfield(L, -2, "type");
        lua_pushstring(L, a->script);
        lua_setfield(L, -2, "script");
        push_strv(L, a->commands, a->ncommands);
        lua_setfield(L, -2, "commands");
        push_strv(L, a->events, a->nevents);
        lua_setfield(L, -2, "events");
        push_strv(L, a->neutral, a->nneutral);
        lua_setfield(L, -2, "neutral");
        push_strv(L, a->reacts, a->nreacts);
        lua_setfield(L, -2, "reacts");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* host:projections() -> { {name=, script=, schema={}, events={}}, ... } */
static int l_projections(lua_State *L)
{
    ud *u = check_host(L);
    size_t n = evl_luahost_nprojections(u->host);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const evl_luahost_projection *p = evl_luahost_projection_at(u->host, i);
        lua_createtable(L, 0, 4);
        lua_pushstring(L, p->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, p->script);
        lua_setfield(L, -2, "script");
        push_strv(L, p->schema, p->nschema);
        lua_setfield(L, -2, "schema");
        push_strv(L, p->events, p->nevents);
        lua_setfield(L, -2, "events");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* host:hash() -> string */
static int l_hash(lua_State *L)
{
    lua_pushstring(L, evl_luahost_hash(check_host(L)->host));
    return 1;
}

/* host:memory() -> integer (bytes of the host's Lua heap) */
static int l_memory(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)evl_luahost_memory(check_host(L)->host));
    return 1;
}

/* host:close(); also the __gc */
static int l_close(lua_State *L)
{
    ud *u = luaL_checkudata(L, 1, HOST_MT);
    evl_luahost_free(u->host);
    u->host = NULL;
    evl_luahost_decision_free(&u->dec);
    evl_luahost_stmts_free(&u->stmts);
    evl_luahost_reactions_free(&u->reactions);
    evl_buf_free(&u->buf);
    return 0;
}

/* ---- a small libpq binding for evlua.testing's against_postgres ------- */

#define PG_MT "evlua.pg"

/* res is the last result, kept until the next exec or close: building the
 * rows can raise (a memory error), and nothing malloc'd may be held across
 * that by the C stack alone. */
typedef struct pgud {
    evl_pg *pg;
    PGresult *res;
} pgud;

/* native.pg(conninfo) -> db; raises with libpq's message on failure. The
 * connection is made as the projector makes it (evl_pg_open: its
 * connect_timeout, keepalives, UTF8), named "evlua-spec". */
static int l_pg(lua_State *L)
{
    const char *conninfo = luaL_checkstring(L, 1);
    char err[EVL_ERRLEN];
    pgud *p = lua_newuserdatauv(L, sizeof(pgud), 0);
    p->pg = NULL;
    p->res = NULL;
    luaL_setmetatable(L, PG_MT);
    if (evl_pg_open(conninfo, "evlua-spec", &p->pg, err, sizeof err) != EVL_OK)
        return luaL_error(L, "%s", err);
    return 1;
}

static pgud *check_pg(lua_State *L)
{
    pgud *p = luaL_checkudata(L, 1, PG_MT);
    if (!p->pg)
        luaL_error(L, "evlua_host: connection is closed");
    return p;
}

/* Is s[0..len) an integer or decimal numeral (-12, 750.00, 0.5)? Sets
 * *frac to the position of the '.' (len when none). */
static int numeral(const char *s, size_t len, size_t *frac)
{
    size_t i = s[0] == '-' ? 1 : 0, digits = 0;
    *frac = len;
    for (; i < len; i++) {
        if (s[i] == '.' && *frac == len)
            *frac = i;
        else if (s[i] >= '0' && s[i] <= '9')
            digits++;
        else
            return 0;
    }
    return digits > 0;
}

/* Push a numeric column's value as a Lua number when that is exact: an
 * integer (750.00 is 750) that fits lua_Integer, or a decimal of at most
 * 15 significant digits (a double keeps 15 decimal digits through the
 * round trip); otherwise (NaN, very long or precise values) the text. */
static void push_numeric(lua_State *L, const char *s, size_t len)
{
    size_t frac, sig = 0, i;
    if (len == 0 || len > 64 || !numeral(s, len, &frac)) {
        lua_pushlstring(L, s, len);
        return;
    }
    int whole = 1;
    for (i = frac + 1; i < len; i++)
        if (s[i] != '0')
            whole = 0;
    if (whole) {
        char buf[72];
        memcpy(buf, s, frac);
        buf[frac] = '\0';
        if (lua_stringtonumber(L, buf) != 0) {
            if (lua_isinteger(L, -1))
                return;
            lua_pop(L, 1); /* beyond lua_Integer: a float would round */
        }
        lua_pushlstring(L, s, len);
        return;
    }
    int started = 0;
    size_t trailing = 0;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            continue;
        if (s[i] != '0')
            started = 1;
        if (started) {
            sig++;
            trailing = s[i] == '0' ? trailing + 1 : 0;
        }
    }
    if (sig - trailing > 15) {
        lua_pushlstring(L, s, len);
        return;
    }
    lua_pushnumber(L, strtod(s, NULL));
}

/* Push one column value by its type: integers (int2/4/8, oid) as
 * integers, float4/8 as numbers, numeric as a number where exact,
 * booleans, json/jsonb decoded (as the scripts' JSON reader does; text
 * when it cannot be), everything else as text. */
static void push_value(lua_State *L, const PGresult *res, int r, int c)
{
    const char *s = PQgetvalue(res, r, c);
    size_t len = (size_t)PQgetlength(res, r, c);
    char err[EVL_ERRLEN];
    switch (PQftype(res, c)) {
    case 16: /* bool */ lua_pushboolean(L, s[0] == 't'); return;
    case 20: /* int8 */
    case 21: /* int2 */
    case 23: /* int4 */
    case 26: /* oid */
        if (lua_stringtonumber(L, s) == 0)
            lua_pushlstring(L, s, len);
        return;
    case 700: /* float4 */
    case 701: /* float8 */ lua_pushnumber(L, strtod(s, NULL)); return;
    case 1700: /* numeric */ push_numeric(L, s, len); return;
    case 114:  /* json */
    case 3802: /* jsonb */
        if (evl_json_decode(L, s, len, err, sizeof err) != EVL_OK)
            lua_pushlstring(L, s, len);
        return;
    default: lua_pushlstring(L, s, len); return;
    }
}

/* db:exec(sql, params) -> rows, affected. params is a table with n (or a
 * sequence) of strings, nil for SQL NULL; without params, sql may hold
 * several statements (the result is the last one's). Each row is a table keyed
 * by column name; SQL NULL is evlua.null (the column is there). Raises on any
 * error with the server's message. */
static int l_pg_exec(lua_State *L)
{
    pgud *p = check_pg(L);
    const char *sql = luaL_checkstring(L, 2);
    const char *vals[256];
    int n = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "n");
        n = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1)
                                 : (int)luaL_len(L, 3);
        lua_pop(L, 1);
        if (n > 256)
            return luaL_error(L, "evlua_host: at most 256 parameters");
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, 3, i + 1); /* kept on the stack while used */
            vals[i] = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
        }
    }
    PQclear(p->res);
    p->res = NULL;
    char err[EVL_ERRLEN];
    if (lua_isnoneornil(L, 3)) {
        /* a script (several statements: a projection's schema) */
        if (evl_pg_exec_result(p->pg, sql, &p->res, err, sizeof err) != EVL_OK)
            return luaL_error(L, "%s", err);
    } else if (evl_pg_query(p->pg, sql, n, vals, &p->res, err, sizeof err) !=
               EVL_OK) {
        return luaL_error(L, "%s", err);
    }
    const PGresult *res = p->res;
    int rows = PQntuples(res), cols = PQnfields(res);
    lua_createtable(L, rows, 0);
    for (int r = 0; r < rows; r++) {
        lua_createtable(L, 0, cols);
        for (int c = 0; c < cols; c++) {
            if (PQgetisnull(res, r, c))
                evl_json_push_null(L);
            else
                push_value(L, res, r, c);
            lua_setfield(L, -2, PQfname(res, c));
        }
        lua_rawseti(L, -2, r + 1);
    }
    const char *tuples = PQcmdTuples(p->res);
    lua_pushinteger(L, tuples && *tuples ? atoll(tuples) : 0);
    PQclear(p->res);
    p->res = NULL;
    return 2;
}

/* db:create_tables(): evlua's own tables and functions (evlua_checkpoints
 * and the rest), as every projector creates them at start: idempotent,
 * committed, serialized by evlua's advisory lock. */
static int l_pg_create_tables(lua_State *L)
{
    pgud *p = check_pg(L);
    char err[EVL_ERRLEN];
    if (evl_pg_create_tables(p->pg, err, sizeof err) != EVL_OK)
        return luaL_error(L, "%s", err);
    return 0;
}

/* db:close(); also the __gc */
static int l_pg_close(lua_State *L)
{
    pgud *p = luaL_checkudata(L, 1, PG_MT);
    PQclear(p->res);
    p->res = NULL;
    evl_pg_close(p->pg);
    p->pg = NULL;
    return 0;
}

/* The projector's bookkeeping statements (pg.h), for a spec's db to move
 * checkpoints exactly as the projector does. */
static void push_sql(lua_State *L)
{
    lua_createtable(L, 0, 2);
    lua_pushstring(L, EVL_PG_LOAD_CHECKPOINTS_SQL);
    lua_setfield(L, -2, "load_checkpoints");
    lua_pushstring(L, EVL_PG_ADVANCE_ONE_SQL);
    lua_setfield(L, -2, "advance_checkpoint");
}

int luaopen_evlua_host(lua_State *L);

int luaopen_evlua_host(lua_State *L)
{
    static const luaL_Reg methods[] = {{"decide", l_decide},
                                       {"apply", l_apply},
                                       {"project", l_project},
                                       {"reset", l_reset},
                                       {"react", l_react},
                                       {"aggregates", l_aggregates},
                                       {"projections", l_projections},
                                       {"hash", l_hash},
                                       {"memory", l_memory},
                                       {"close", l_close},
                                       {NULL, NULL}};
    luaL_checkversion(L);
    /* specs are a one-shot run: their output is busted's, and the log only
     * speaks when something is wrong (EVLUA_LOG_LEVEL=info shows the rest) */
    evl_log_oneshot(0);
    if (luaL_newmetatable(L, HOST_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    static const luaL_Reg pg_methods[] = {{"exec", l_pg_exec},
                                          {"create_tables", l_pg_create_tables},
                                          {"close", l_pg_close},
                                          {NULL, NULL}};
    if (luaL_newmetatable(L, PG_MT)) {
        luaL_newlib(L, pg_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_pg_close);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushcfunction(L, l_load);
    lua_setfield(L, -2, "load");
    lua_pushcfunction(L, l_pg);
    lua_setfield(L, -2, "pg");
    evl_luaapi_push(L, "spec");
    lua_setfield(L, -2, "api");
    push_sql(L);
    lua_setfield(L, -2, "sql");
    return 1;
}
