/*
 * luahost.h - runs the user's aggregate and projection scripts, sandboxed
 * and limited, and turns their results into plain C data.
 *
 * A host is one lua_State holding one complete script set: every *.lua of
 * the configured aggregate and projection directories, loaded in sorted
 * file-name order and validated against the contracts of DESIGN.md:
 *
 *   aggregate  { type = "customer",               -- [A-Za-z0-9._-]+
 *                initial = function() -> state table,
 *                apply  = { EventType   = function(state, e) -> nil | state },
 *                handle = { CommandType = function(state, cmd, ctx)
 *                                         -> { {type=, data=}, ... }
 *                                          | ctx.reject(msg) },
 *                upcast = { EventType = function(e) -> nil | e },  -- optional
 *                neutral = { "EventType", ... },  -- optional, see below
 *                emits = { "EventType", ... },    -- optional, see below
 *                react = { ["TYPE.EventType"] = function(e, ctx)
 *                          -> nil | command | {command...} } } -- optional
 *                          (docs/reactions.md)
 *   projection { name = "customer_profile",       -- [A-Za-z0-9._-]+
 *                on = { EventType = function(e) -> stmt | {stmt...} | nil },
 *                schema = "DDL" | { "DDL", ... }, -- optional
 *                reset = "SQL" | function() -> stmt | {stmt...} | nil }
 *                                                 -- optional
 *
 * where stmt is { sql, param1, param2, ... }. Two aggregates with one type
 * or two projections with one name are an error.
 *
 * State lives in C as JSON text: the caller keeps it (the store is not this
 * module's business) and passes it in; decide returns the events and the
 * state after applying them, in one call.
 *
 * Two traps that would silently give a wrong state are bugs that fail the
 * command (issue 15):
 *
 *   - An event type that handle emits must have an apply entry, or be
 *     declared state-neutral in `neutral` (a list of event types that
 *     leave the state as it is). Otherwise a typo in an apply key
 *     (MoneyWithdrawnn) would make the event change nothing, forever.
 *     Events already recorded keep the old rule: replaying a type with
 *     no apply entry leaves the state as it is, so old data never blocks.
 *   - handle must not change the state it is given (events are the only
 *     way to change it). After handle returns, its state table is
 *     compared with a fresh decode of the same JSON (the one the events
 *     are applied to); any difference fails the command, naming the
 *     first changed field ("balance", "limits.daily", "log[1]").
 *     Detection rather than a read-only proxy: a proxy costs a
 *     metamethod call per read, and next(), rawget(), rawlen() and the
 *     JSON encoder see an empty table, so an event whose data holds
 *     s.items would silently be emitted with {}; the comparison is one
 *     raw walk of the state per accepted command (CPU per decide, median
 *     of 9 runs: within noise for a 4-field state, +20% for a 50-item
 *     cart). Limits: handle sees its own change until it returns (the
 *     command then fails anyway); a change that restores the old value,
 *     or turns an integer into an equal float, is no change; metatables
 *     are not compared; a handle that rejects is not checked (nothing is
 *     kept either way). initial() runs once per decide and goes through
 *     JSON like a stored state, so an initial() that differs between
 *     calls (a uuid, a clock) is not taken for a change.
 *
 * What load cannot refuse, evl_luahost_lint() reports for `evlua check`:
 * it reads each aggregate's source for the event types handle builds
 * (table constructors with a `type = "Name"` string field and a `data`
 * field, outside comments, strings and upcast functions), adds the
 * optional `emits` list (types built at run time, or no longer emitted
 * but still in the log) and compares them with apply, neutral, the
 * projections' `on` keys and the event types of react keys. A table
 * with an `aggregate_id` field, or one built inside a react function,
 * is a command, not an event.
 *
 * Sandbox (see the allow-list in luasandbox.c and core/lua/API.md): each
 * script gets its own global table with fresh copies of the base library
 * (without dofile, loadfile, collectgarbage control; load takes text
 * only), string (without dump), table, math, utf8, os.time/clock/date and
 * the evlua table; require() loads only text modules from lib_dir. The
 * shared string metatable is hidden. Metatables with __gc are refused.
 *
 * Limits: memory per lua_State (custom allocator), an instruction budget
 * and a time limit per handler call (count hook; a pcall in the script
 * cannot swallow them), caps on the subject size of string patterns and
 * on string.rep results, and charges for the steps of pattern matching,
 * of library functions whose work their arguments decide, of JSON
 * encoding, and for memory growth (the hook does not reach inside C
 * functions).
 * Going over fails the call, not the process, and the next call starts
 * afresh.
 *
 * Errors: load problems are collected (all of them, one "file:line: msg"
 * line each). A failing call reports "<script>: <handler>: <detail>";
 * Lua errors carry script:line and a traceback.
 *
 * Does not: talk to Kafka or PostgreSQL, build event envelopes (ids,
 * timestamps, sequence numbers), keep state between calls (but for the
 * decoded command evl_luahost_parse_command hands to the next decide),
 * lock anything.
 *
 * Uses luaapi, envelope, uuid (reaction command ids), json, log,
 * lifecycle (the SIGHUP count, for one reload summary per signal) and the
 * Lua C API.
 *
 * @locality a host belongs to one thread at a time (the pipeline that owns
 * it); hosts on different threads are independent.
 */
#ifndef EVL_LUAHOST_H
#define EVL_LUAHOST_H

#include <stddef.h>

#include "envelope.h"
#include "evl.h"
#include "json.h"

typedef struct evl_luahost evl_luahost;

/* Defaults for the limits when the config leaves them 0. */
#define EVL_LUAHOST_MEMORY_LIMIT      (64u * 1024 * 1024) /* bytes per state */
#define EVL_LUAHOST_INSTRUCTION_LIMIT 10000000L           /* per handler call */
#define EVL_LUAHOST_TIME_LIMIT_MS     1000L               /* per handler call */
#define EVL_LUAHOST_MAX_STRING_OP     (1024u * 1024)      /* bytes */
#define EVL_LUAHOST_MAX_COMMANDS      100 /* per reaction call */

typedef struct evl_luahost_config {
    /* Directories whose *.lua files are aggregates / projections. Each
     * must exist (an empty one is fine). Files load in directory order,
     * then by file name (strcmp). A script's name in messages is the
     * directory as given joined with the file name. */
    const char *const *aggregate_dirs;
    size_t naggregate_dirs;
    const char *const *projection_dirs;
    size_t nprojection_dirs;
    /* Where require("a.b") looks: lib_dir/a/b.lua. NULL: require fails. */
    const char *lib_dir;
    /* Bytes of Lua heap per host; 0: EVL_LUAHOST_MEMORY_LIMIT. */
    size_t memory_limit;
    /* VM instructions per handler call (counted in steps of at most
     * 1000); 0: EVL_LUAHOST_INSTRUCTION_LIMIT. Pattern matching steps,
     * library functions that do work in proportion to their arguments or
     * results, and JSON encoding are charged too (see luasandbox.c's
     * allow-list). */
    long instruction_limit;
    /* Wall-clock milliseconds per handler call, checked with the
     * instruction count (so a short loop over a costly C function, such
     * as a find on a large string, is stopped too); 0:
     * EVL_LUAHOST_TIME_LIMIT_MS; negative: no time limit. The clock is
     * CLOCK_MONOTONIC_COARSE: a few milliseconds of resolution. */
    long time_limit_ms;
    /* Largest subject of string.find/match/gmatch/gsub and largest
     * string.rep result; 0: EVL_LUAHOST_MAX_STRING_OP. Patterns are
     * capped at 4096 bytes. Both bound what one C call can cost, where
     * neither the count hook nor the clock reaches. */
    size_t max_string_op;
} evl_luahost_config;

/* Everything wrong with a script set, one line per problem:
 * "dir/file.lua:12: message" (Lua's own syntax and runtime errors) or
 * "dir/file.lua: message" (contract problems, which have no line). */
typedef struct evl_luahost_problems {
    char **lines;
    size_t n;
} evl_luahost_problems;

/* Frees the lines and zeroes p; accepts NULL. */
void evl_luahost_problems_free(evl_luahost_problems *p);

/* Load and validate the script set of cfg into a new host. The config is
 * copied. On success returns EVL_OK, sets *out (owned; free with
 * evl_luahost_free()) and logs "scripts loaded" with the set's hash and
 * counts. Otherwise returns EVL_EPERMANENT, leaves *out alone, appends
 * every problem to problems (when non-NULL; free with
 * evl_luahost_problems_free()) and writes "N problems loading scripts;
 * first: ..." into err. */
evl_err evl_luahost_new(const evl_luahost_config *cfg, evl_luahost **out,
                        evl_luahost_problems *problems, char *err,
                        size_t errlen);

/* Build a complete new host from old's config (the same directories,
 * sandbox and limits), silently: a pipeline's own copy of the set it was
 * started with, or a look at what the files hold now. EVL_OK and *out,
 * or EVL_EPERMANENT with old untouched, err written and every problem
 * appended to problems when non-NULL. */
evl_err evl_luahost_again(const evl_luahost *old, evl_luahost **out,
                          evl_luahost_problems *problems, char *err,
                          size_t errlen);

/* A pipeline's reload on SIGHUP: evl_luahost_again, and the first caller
 * to switch after each signal speaks for every pipeline of the process
 * (one line: "scripts reloaded" with the new and old hashes, or "script
 * reload refused; keeping the loaded set" and its problems), so the line
 * means a pipeline now decides with the new set. The caller swaps *out in
 * between batches and frees old; on failure old stays in use. A caller
 * that collects the problems (problems non-NULL) reports them itself and
 * logs nothing. */
evl_err evl_luahost_reload(const evl_luahost *old, evl_luahost **out,
                           evl_luahost_problems *problems, char *err,
                           size_t errlen);

/* Close the lua_State and free everything; accepts NULL. */
void evl_luahost_free(evl_luahost *host);

/* Hex FNV-1a 64 of the loaded set: over each script's kind, file name
 * (without directory) and content, in load order, and each library module
 * that scripts require while loading. Equal sets hash equally wherever
 * they live. Owned by the host. */
const char *evl_luahost_hash(const evl_luahost *host);

/* Bytes of Lua heap in use now. */
size_t evl_luahost_memory(const evl_luahost *host);

/* A full garbage collection (lua_gc LUA_GCCOLLECT): what a large batch
 * left behind goes back to the C heap now rather than over the next
 * incremental steps. Between calls into the host only. */
void evl_luahost_gc(evl_luahost *host);

/* ---- lookups: pointers stay valid until the host is freed ---------------- */

typedef struct evl_luahost_aggregate {
    const char *type;
    const char *script;          /* "aggregates/customer.lua" */
    const char *const *commands; /* keys of handle, sorted */
    size_t ncommands;
    const char *const *events; /* keys of apply, sorted */
    size_t nevents;
    const char *const *neutral; /* the neutral list, sorted, unique */
    size_t nneutral;
    const char *const *reacts; /* keys of react ("TYPE.EventName"),
                                  sorted; none: nreacts 0 */
    size_t nreacts;
} evl_luahost_aggregate;

typedef struct evl_luahost_projection {
    const char *name;
    const char *script;
    const char *hash;          /* hex FNV-1a 64 of the script file's text: the
                                  version `projection swap` pins (evlua_pins) */
    const char *const *schema; /* DDL statements in order (a string
                                  schema is one); none: nschema 0 */
    size_t nschema;
    const char *const *events; /* keys of on, sorted */
    size_t nevents;
} evl_luahost_projection;

size_t evl_luahost_naggregates(const evl_luahost *host);
size_t evl_luahost_nprojections(const evl_luahost *host);

/* By position (0 .. n-1, in load order) or by type / name; NULL when out
 * of range or unknown. */
const evl_luahost_aggregate *evl_luahost_aggregate_at(const evl_luahost *host,
                                                      size_t i);
const evl_luahost_aggregate *evl_luahost_aggregate_get(const evl_luahost *host,
                                                       const char *type);
const evl_luahost_projection *evl_luahost_projection_at(const evl_luahost *host,
                                                        size_t i);
const evl_luahost_projection *
evl_luahost_projection_get(const evl_luahost *host, const char *name);

/* Does projection p have a handler for event_type? (binary search) */
int evl_luahost_projection_handles(const evl_luahost_projection *p,
                                   const char *event_type);

/* The traps of a loaded set that load does not refuse, for `evlua check`.
 * Appends to errors (when non-NULL) one "script:line: message" line per
 * event type that handle can emit (found as the top of this file says)
 * with neither an apply entry nor a neutral declaration: such a command
 * fails at run time. Appends to warnings (when non-NULL) one
 * "script:line: warning: message" line per apply entry no handler emits
 * (a typo, or a type to list in emits), per neutral entry that also has
 * an apply entry, and, when the set has aggregates, per projection `on`
 * entry for a type no aggregate of the set emits (it may come from an
 * aggregate outside the set). Reactions (docs/reactions.md): an error per
 * react key whose TYPE is no aggregate type of the set, a warning per
 * key whose event type TYPE's aggregate has no apply, neutral or emits
 * entry for. Where the line is not known a line reads "script: ...".
 * Returns the number of errors. */
size_t evl_luahost_lint(const evl_luahost *host, evl_luahost_problems *errors,
                        evl_luahost_problems *warnings);

/* ---- calls ------------------------------------------------------------- */

/* What decide runs on. aggregate_type picks the script; the command's
 * "type" field picks the handler. */
typedef struct evl_luahost_command {
    const char *aggregate_type;
    const char *aggregate_id; /* ctx.aggregate_id; the events' aggregate_id */
    long long version;        /* events so far: ctx.version */
    const char *state;        /* state JSON; NULL: no events yet, initial() */
    size_t state_len;
    const char *command; /* the command JSON (wire format); NULL: the
                            command the last evl_luahost_parse_command
                            kept (decoded once, not twice) */
    size_t command_len;
} evl_luahost_command;

typedef enum evl_luahost_verdict {
    EVL_LUAHOST_ACCEPTED = 0, /* events (maybe none) and the new state */
    EVL_LUAHOST_REJECTED = 1, /* ctx.reject(msg), or no handler for the
                                 command type: msg in err, no events */
    EVL_LUAHOST_FAILED = 2    /* a bug or a limit: Lua error, bad result,
                                 bad input JSON, unknown aggregate type,
                                 memory or instruction limit; detail in
                                 err, no events */
} evl_luahost_verdict;

typedef struct evl_luahost_event {
    const char *type;
    long long version; /* schema version: the event's `version` field,
                          1 when absent */
    const char *data;  /* JSON text of data, NUL-terminated */
    size_t data_len;
} evl_luahost_event;

/* Owned by the caller; initialise with {0}. decide overwrites it (reusing
 * its memory); free with evl_luahost_decision_free(). Pointers inside stay
 * valid until the next decide into it or its free. */
typedef struct evl_luahost_decision {
    evl_luahost_event *events;
    size_t nevents;
    const char *state; /* JSON of the state after applying the events */
    size_t state_len;
    /* internal */
    evl_buf text;
    size_t cap;
} evl_luahost_decision;

void evl_luahost_decision_free(evl_luahost_decision *d); /* accepts NULL */

/* Decide a command: state (or initial()) -> handle[cmd.type](state, cmd,
 * ctx) with ctx = {aggregate_id, version, metadata = cmd.metadata or {},
 * reject}. Each event must be a table with a non-empty string `type`, a
 * table `data` and optionally a positive integer `version`; data must
 * have a JSON form, and its type an apply entry or a neutral declaration
 * (else FAILED: "<script>: handle.<Cmd>: event type '<T>' has no apply
 * entry (...)"). A handle that changed its state argument FAILS too
 * ("<script>: handle.<Cmd> must not change the state (emit an event
 * instead): field '<path>'"). On ACCEPTED the events are applied in
 * order (to a fresh decode of the state), each seeing e = {type,
 * version, data, aggregate_type, aggregate_id, sequence = version + i},
 * and the resulting state must be a table with a JSON form; out holds
 * events and state. With no state, initial() runs once and its JSON form
 * is what both handle and apply start from. On REJECTED and FAILED out
 * is emptied (nevents 0, state NULL) and err holds the reason. */
evl_luahost_verdict evl_luahost_decide(evl_luahost *host,
                                       const evl_luahost_command *cmd,
                                       evl_luahost_decision *out, char *err,
                                       size_t errlen);

/* Decode and check a command exactly like evl_envelope_parse_command,
 * but in the host's Lua state (under its memory limit), and keep the
 * decoded table for the next evl_luahost_decide whose cmd->command is
 * NULL; that decide takes it (a second one finds none). A command kept
 * before and not decided is dropped. Returns ACCEPTED: a valid command,
 * its fields in out; REJECTED: not a valid command, the reason in err and
 * every field that could be read in out (as evl_envelope_parse_command);
 * FAILED: the decoded command does not fit the memory limit (err says
 * so; out's fields are all NULL). */
evl_luahost_verdict evl_luahost_parse_command(evl_luahost *host,
                                              const char *json, size_t len,
                                              evl_command *out, char *err,
                                              size_t errlen);

/* Rebuild state: apply the n stored events (full envelope JSON, as on
 * the events topic) in order to state (NULL: initial()). Each event goes
 * through upcast[e.type] first when the script has one; a type with no
 * apply entry leaves the state as it is (recorded events never block a
 * rebuild). On EVL_OK the new state JSON replaces the content of out (out->len
 * reset first); else EVL_EPERMANENT with the reason in err and out->len 0. */
evl_err evl_luahost_apply(evl_luahost *host, const char *aggregate_type,
                          const char *state, size_t state_len,
                          const char *const *events, const size_t *lens,
                          size_t n, evl_buf *out, char *err, size_t errlen);

/* One SQL parameter. text is what to bind: NULL for SQL NULL, otherwise
 * NUL-terminated: the string itself, "%lld", "%.17g", "true"/"false", or
 * JSON for a table. */
typedef enum evl_luahost_ptype {
    EVL_PARAM_NULL = 0, /* evlua.null */
    EVL_PARAM_STRING,
    EVL_PARAM_INTEGER,
    EVL_PARAM_FLOAT,
    EVL_PARAM_BOOLEAN,
    EVL_PARAM_JSON /* a Lua table */
} evl_luahost_ptype;

typedef struct evl_luahost_param {
    evl_luahost_ptype type;
    const char *text;
    size_t len;
    long long i; /* EVL_PARAM_INTEGER, and 0/1 for EVL_PARAM_BOOLEAN */
    double f;    /* EVL_PARAM_FLOAT */
} evl_luahost_param;

typedef struct evl_luahost_stmt {
    const char *sql;
    size_t sql_len;
    const evl_luahost_param *params;
    size_t nparams;
    /* what evlua.upsert / evlua.delete made (luaapi.h): op is
     * EVL_SQL_UPSERT or EVL_SQL_DELETE, table the name as given, columns
     * the nparams column names in parameter order, the first nkey the
     * key; sql is the single-row form. A plain statement: op
     * EVL_SQL_PLAIN (0), the rest NULL / 0. */
    int op;
    const char *table;
    const char *const *columns;
    size_t nkey;
} evl_luahost_stmt;

/* Owned by the caller; initialise with {0}; project overwrites it (reusing
 * its memory); free with evl_luahost_stmts_free(). */
typedef struct evl_luahost_stmts {
    evl_luahost_stmt *stmts;
    size_t n;
    /* internal */
    evl_buf text;
    evl_luahost_param *params;
    size_t nparams, capparams, capstmts;
    const char **names; /* columns of upserts and deletes */
    size_t nnames, capnames;
} evl_luahost_stmts;

void evl_luahost_stmts_free(evl_luahost_stmts *s); /* accepts NULL */

/* Run projection `projection`'s handler for the event (envelope JSON):
 * on[e.type](e), after the event's aggregate's upcast[e.type] when the
 * host has that aggregate and it has one. The handler returns one
 * statement {sql, params...} (first element a string), a list of them, or
 * nil. SQL is a non-empty string; params are strings, integers, floats
 * (not NaN or infinite), booleans, evlua.null or tables (bound as JSON);
 * strings must be UTF-8 without NUL bytes. A nil between params is an
 * error (a trailing one cannot be seen: PostgreSQL will count the
 * parameters). An event type with no handler gives 0 statements.
 * EVL_OK with out filled, or EVL_EPERMANENT with out emptied and the
 * reason in err (the event should be parked). */
evl_err evl_luahost_project(evl_luahost *host, const char *projection,
                            const char *event, size_t event_len,
                            evl_luahost_stmts *out, char *err, size_t errlen);

/* The statements that reset projection's tables before a rebuild: its
 * `reset` string as one statement, what its `reset` function returns
 * (validated like a handler's result), or none. */
evl_err evl_luahost_reset(evl_luahost *host, const char *projection,
                          evl_luahost_stmts *out, char *err, size_t errlen);

/* ---- reactions: events -> commands (docs/reactions.md) ------------------ */

/* Does aggregate a react to an event of aggregate_type and event_type
 * (a react key "aggregate_type.event_type")? (binary search) A react key
 * splits at its last dot: TYPE (a valid name, which may hold dots) and
 * the event type (not empty, no dot); load refuses any other key, a
 * value that is not a function and a react that is not a table. */
int evl_luahost_reacts_to(const evl_luahost_aggregate *a,
                          const char *aggregate_type, const char *event_type);

/* One command a reaction sends, in the wire format of T.commands
 * (envelope.h's evl_envelope_command, plus metadata.causation_id):
 * {"id","type","aggregate_type","aggregate_id","data","metadata":
 * {"user_id"?,"correlation_id","causation_id"}}. Pointers stay valid
 * until the next react into the same evl_luahost_reactions or its free. */
typedef struct evl_luahost_reaction {
    const char *id;           /* deterministic (evl_uuid_reaction) */
    const char *type;         /* the command type */
    const char *aggregate_id; /* the record's key */
    const char *json;         /* the command, NUL-terminated */
    size_t len;
} evl_luahost_reaction;

/* Owned by the caller; initialise with {0}; react overwrites it (reusing
 * its memory); free with evl_luahost_reactions_free(). */
typedef struct evl_luahost_reactions {
    evl_luahost_reaction *cmds;
    size_t n;
    /* internal */
    evl_buf text;
    size_t cap;
} evl_luahost_reactions;

void evl_luahost_reactions_free(evl_luahost_reactions *r); /* accepts NULL */

/* Run aggregate type aggregate_type's reaction to the event (the full
 * envelope JSON, as on an events topic): react["<e.aggregate_type>.
 * <e.type>"](e, ctx), after the source aggregate's upcast[e.type] when
 * the host has that aggregate and it has one. The reaction returns nil
 * (no command), one command table or a list of them; each is {type =
 * non-empty string naming a handle entry of aggregate_type, aggregate_id
 * = non-empty string, data = table (default {}), expected_version =
 * non-negative integer (optional)}; any other field is an error. The
 * i-th command (from 0) gets the id evl_uuid_reaction(e.id,
 * aggregate_type, i), causation_id e.id, and e's correlation_id and
 * user_id (left out when the event's is null). The react key looked up
 * is "<e.aggregate_type>.<e.type>" with e.type after the upcast. An event
 * with no reaction gives 0 commands. More than max_commands (0:
 * EVL_LUAHOST_MAX_COMMANDS) commands is an error, found before any
 * command is read ("... returned 100000 commands (more than
 * reactions.max_commands = 100)"). Messages number commands from 1. The
 * reaction runs under the host's limits, as a handler does. An event
 * without a string id, aggregate_type or type is an error. EVL_OK with
 * out filled, or
 * EVL_EPERMANENT with out emptied and the reason in err
 * ("aggregates/shipment.lua: react.customer.CustomerAddressChanged:
 * command 1 has no aggregate_id (a non-empty string)"): the event is to
 * be parked. */
evl_err evl_luahost_react(evl_luahost *host, const char *aggregate_type,
                          const char *event, size_t event_len,
                          size_t max_commands, evl_luahost_reactions *out,
                          char *err, size_t errlen);

#endif
