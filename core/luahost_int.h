/*
 * luahost_int.h - what the parts of the script host share (not for other
 * modules: their interface is luahost.h).
 *
 * The host is one module in six files, split by role as Lua and Redis
 * split theirs:
 *
 *   luasandbox.c  the Lua state's limits (allocator, count hook, charges
 *                 for C work), calling script functions, and the sandbox:
 *                 the allow-list table, its wrappers, require, ctx.reject
 *   luahost.c     loading and validating a script set, the host's life
 *                 (new, reload, free), lookups; the protected-op runner
 *                 and small helpers every part uses
 *   lualint.c     what load cannot refuse: the source reader that finds
 *                 the event types handle builds, and evl_luahost_lint
 *   luaagg.c      aggregate operations: parse_command, decide, apply
 *   luaproj.c     projection operations: project, reset, the statements
 *   luareact.c    the reaction operation: react, the commands it sends
 *
 * Everything the parts call across files is declared here with the lh_
 * prefix (internal; evl_luahost_ is the public interface); whatever one
 * file alone uses stays static in it.
 *
 * The op discipline (see luahost.c's top comment): every piece of work
 * on the state runs as an op inside lh_run's lua_pcall; script functions
 * are called from an op with lh_call.
 */
#ifndef EVL_LUAHOST_INT_H
#define EVL_LUAHOST_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#include "luahost.h"

/* ---- the host ----------------------------------------------------------- */

/* An event type an aggregate's handle can emit, as far as its source (or
 * its emits list) shows; line 0: not known. */
typedef struct emit {
    char *type;
    int line;
} emit;

typedef struct agg {
    evl_luahost_aggregate pub;
    char *type, *script;
    char **commands, **events, **neutral;
    int *event_lines; /* where each apply function starts; 0: unknown */
    emit *emits;      /* sorted by type, unique */
    size_t nemits;
    int neutral_line, emits_line;
    char **reacts;    /* keys of react, sorted (pub.nreacts of them) */
    int *react_lines; /* where each react function starts; 0: unknown */
    int ref;          /* registry: {initial=, apply={}, handle={}, upcast={}?,
                         neutral={Type=true}?, react={}?} */
} agg;

typedef struct proj {
    evl_luahost_projection pub;
    char *name, *script;
    char hash[17]; /* hex FNV-1a 64 of the script file's text */
    char **schema;
    size_t nschema;
    char **events;
    int *event_lines; /* where each on function starts; 0: unknown */
    int ref;          /* registry: {on={}, reset=?} */
} proj;

struct evl_luahost {
    lua_State *L;

    /* the config, copied (reload builds from it) */
    char **adirs, **pdirs;
    size_t nadirs, npdirs;
    char *lib_dir;
    size_t mem_limit;
    long instr_limit;
    long time_limit_ms; /* < 0: none */
    size_t max_string_op;

    /* allocator */
    size_t mem_used;

    /* instruction budget */
    int hook_step;
    long ticks_per_call, ticks_left;
    long long deadline_ms;
    int over_budget; /* 0, OVER_INSTRUCTIONS or OVER_TIME */
    char budget_where[192];

    /* the script set */
    agg *aggs;
    size_t naggs;
    proj *projs;
    size_t nprojs;
    uint64_t fnv;
    int hashing; /* while loading: required modules join the hash */
    char hash[17];
};

/* The host pointer sits in the state's extra space (set by
 * lh_sandbox_open), so hooks and wrappers find it without a lookup. */
static inline evl_luahost *host_of(lua_State *L)
{
    return *(evl_luahost **)lua_getextraspace(L);
}

/* One script file of a set, read whole (luahost.c reads them). */
struct file {
    char kind;        /* 'a'ggregate or 'p'rojection */
    char *name;       /* dir/file.lua */
    const char *base; /* file.lua, inside name */
    char *text;
    size_t len;
};

/* ---- protected operations (luahost.c) ------------------------------------ */

/* One piece of work on the state, run by lh_run: fn with its inputs and
 * outputs. */
typedef struct op op;
struct op {
    evl_luahost *h;
    void (*fn)(lua_State *L, op *o);
    const char *script; /* for messages, as the op progresses */
    char *err;
    size_t errlen;
    int status; /* op-specific result */

    /* load */
    struct file *files, *file;
    size_t nfiles;
    evl_luahost_problems *problems;
    /* parse_command */
    const char *json;
    size_t json_len;
    evl_command *parsed;
    /* decide */
    const agg *agg;
    const evl_luahost_command *cmd;
    evl_luahost_decision *dec;
    /* apply */
    const char *state;
    size_t state_len;
    const char *const *events;
    const size_t *lens;
    size_t nevents;
    evl_buf *out;
    /* project, reset, react */
    const proj *proj;
    const char *event;
    size_t event_len;
    evl_luahost_stmts *stmts;
    /* react (agg: the reacting aggregate) */
    size_t max_commands;
    evl_luahost_reactions *reactions;
};

/* Run o->fn protected. Returns 0, or -1 when the glue code itself raised
 * (memory, in practice), with the message in o->err. */
int lh_run(evl_luahost *h, op *o);

/* printf into o->err (when there is one). */
void lh_failf(op *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* A failed lh_call (rc) of what into o->err: "<script>: <what>: <detail>". */
void lh_fail_call(op *o, lua_State *L, int rc, const char *what);

/* Raw t[k] pushed; returns its type. */
int lh_rawfield(lua_State *L, int t, const char *k);

/* Push a short description of the value at idx without running any
 * metamethod, and return it. */
const char *lh_describe(lua_State *L, int idx);

/* Keys and entries of a table: is it exactly the sequence 1..n? */
int lh_is_sequence(lua_State *L, int t, size_t *n);

/* Offsets into a growing buffer are kept in pointer fields while it
 * grows and turned into pointers once it is done. */
#define OFF(x)       ((const char *)(uintptr_t)(x))
#define FIX(base, p) ((base) + (uintptr_t)(p))

/* ---- small helpers (luahost.c) ------------------------------------------ */

/* Hash one item of the set: kind, name, length, content. */
void lh_fnv_item(evl_luahost *h, char kind, const char *name, const char *text,
                 size_t len);
int lh_cmpstr(const void *a, const void *b); /* for qsort of char * */
void lh_free_strv(char **v, size_t n);
/* Append one formatted line to p. */
void lh_problem(evl_luahost_problems *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The lines of the functions of priv[field] for the sorted keys. */
int *lh_fn_lines(lua_State *L, int priv, const char *field, char *const *keys,
                 size_t n);

/* Where a react key "TYPE.EventName" splits: the index of its last dot,
 * or -1 when the key is not of that form (TYPE a valid name, EventName
 * not empty). */
long lh_react_split(const char *key);

/* By type / name; NULL when unknown. */
const agg *lh_find_agg(const evl_luahost *h, const char *type);
const proj *lh_find_proj(const evl_luahost *h, const char *name);

/* ---- limits, calls and the sandbox (luasandbox.c) ----------------------- */

/* A new Lua state for h: the counting allocator, the panic handler, the
 * count hook every hook_step instructions and the JSON meter; h in its
 * extra space. NULL when not even that fits the memory limit. */
lua_State *lh_sandbox_open(evl_luahost *h);

/* Build the allow-list's template tables and the registry entries the
 * sandbox needs; once per state, inside an op. */
void lh_setup_sandbox(lua_State *L);

/* Push a fresh global table for the script called name. */
void lh_push_env(lua_State *L, const char *name);

/* Push the ctx.reject function; is the value at idx what it returned? */
void lh_push_reject(lua_State *L);
int lh_is_rejection(lua_State *L, int idx);

/* What lh_call returns. */
enum { CALL_OK, CALL_ERR, CALL_MEM, CALL_BUDGET };

/* Call the function below the nargs arguments on top of L with a fresh
 * budget. Always leaves one value on the stack: the result (CALL_OK) or
 * the error message. */
int lh_call(evl_luahost *h, lua_State *L, int nargs);

/* Describe a failed call: "<script>: <what>: <detail>" into buf. */
void lh_describe_failure(evl_luahost *h, lua_State *L, int rc,
                         const char *script, const char *what, char *buf,
                         size_t len);

/* ---- source facts (lualint.c) ------------------------------------------- */

/* What evl_luahost_lint needs from an aggregate's source (a is in
 * h->aggs already; it takes over declared, the emits list). */
void lh_source_facts(op *o, lua_State *L, agg *a, int priv, char **declared,
                     size_t ndeclared);

/* ---- aggregate operations shared with projections (luaagg.c) ------------ */

/* Decode JSON text that must hold a table and push it; 0 with the
 * failure in o->err otherwise. */
int lh_push_json_table(op *o, lua_State *L, const char *what, const char *s,
                       size_t len);

/* Run upcast[e.type](e) of the aggregate whose private table is at priv
 * on the event at ev (replaced when upcast returns a table). */
int lh_upcast_event(op *o, lua_State *L, int priv, int ev);

#endif
