/*
 * luahost.c - sandboxed, limited script host (see luahost.h).
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
#include "luahost.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "luaapi.h"
#include "pattern.h"

#define HOOK_STEP       1000 /* instructions per tick */
#define OUT_BYTES       8    /* bytes a library function makes per step */
#define MAX_PATTERN     4096 /* bytes of a pattern */
#define MAX_SCRIPT_SIZE (16u * 1024 * 1024) /* bytes of a script file */

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
    int ref; /* registry: {initial=, apply={}, handle={}, upcast={}?,
                neutral={Type=true}?} */
} agg;

typedef struct proj {
    evl_luahost_projection pub;
    char *name, *script;
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

/* Registry keys (their addresses). */
static const char key_tmpl = 0;     /* sandbox template tables */
static const char key_loaded = 0;   /* require's cache */
static const char key_loading = 0;  /* marks a module being loaded */
static const char key_rejectmt = 0; /* metatable of ctx.reject results */
static const char key_reject = 0;   /* the ctx.reject function */
static const char key_command = 0;  /* the command parse kept for decide */

static evl_luahost *host_of(lua_State *L)
{
    return *(evl_luahost **)lua_getextraspace(L);
}

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
static void fnv_item(evl_luahost *h, char kind, const char *name,
                     const char *text, size_t len)
{
    unsigned char n[8];
    for (int i = 0; i < 8; i++)
        n[i] = (unsigned char)((uint64_t)len >> (8 * i));
    fnv(h, &kind, 1);
    fnv(h, name, strlen(name) + 1);
    fnv(h, n, sizeof n);
    fnv(h, text, len);
}

static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_strv(char **v, size_t n)
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

static void problem(evl_luahost_problems *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void problem(evl_luahost_problems *p, const char *fmt, ...)
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
    free_strv(p->lines, p->n);
    p->lines = NULL;
    p->n = 0;
}

/* ---- limits: allocator and count hook --------------------------------- */

/*
 * The instruction budget is counted in instructions: h->ticks_left holds
 * what is left of the call's budget (ticks_per_call * hook_step), so the
 * hook takes hook_step per tick and C code can be charged exact step
 * counts, however small.
 *
 * Growing memory costs steps too (ALLOC_BYTES bytes each): whatever
 * copies or fills large strings and tables (string.rep, concatenation in
 * a loop, string.pack's padding up to the memory limit inside a pcall)
 * pays in proportion. The allocator cannot raise, so when it spends the
 * budget, or sees the deadline pass on a large allocation, it arms the
 * hook for the very next instruction.
 */
#define ALLOC_BYTES 256   /* bytes of allocation per step */
#define BIG_ALLOC   65536 /* growth that reads the clock */

static void hook(lua_State *L, lua_Debug *ar);
static long long now_ms(void);

/* Lua assumes shrinking never fails; only growth past the limit is
 * refused. */
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    evl_luahost *h = ud;
    void *p;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        h->mem_used -= osize;
        return NULL;
    }
    if (nsize > osize && nsize - osize > h->mem_limit - h->mem_used)
        return NULL;
    p = realloc(ptr, nsize);
    if (!p)
        return nsize <= osize ? ptr : NULL;
    h->mem_used = h->mem_used - osize + nsize;
    if (nsize > osize && h->L) {
        size_t grow = nsize - osize;
        long before = h->ticks_left;
        h->ticks_left -= (long)(grow / ALLOC_BYTES);
        if ((before > 0 && h->ticks_left <= 0) ||
            (grow >= BIG_ALLOC && h->time_limit_ms >= 0 &&
             now_ms() > h->deadline_ms))
            lua_sethook(h->L, hook, LUA_MASKCOUNT, 1);
    }
    return p;
}

enum { OVER_INSTRUCTIONS = 1, OVER_TIME = 2 };

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *over_text(evl_luahost *h, char *buf, size_t len)
{
    if (h->over_budget == OVER_TIME)
        snprintf(buf, len, "time limit of %ld ms exceeded", h->time_limit_ms);
    else
        snprintf(buf, len, "instruction budget of %ld exceeded",
                 h->instr_limit);
    return buf;
}

/* A limit is spent: note which and where (the first time), make the hook
 * fire on every instruction from now on, and raise. level is the stack
 * level of the Lua function to blame. */
static int over_budget(lua_State *L, evl_luahost *h, int level, int why)
{
    lua_Debug ar;
    char text[96];
    if (!h->over_budget) {
        h->over_budget = why;
        h->budget_where[0] = '\0';
        if (lua_getstack(L, level, &ar) && lua_getinfo(L, "Sl", &ar) &&
            ar.currentline > 0)
            snprintf(h->budget_where, sizeof h->budget_where, "%s:%d",
                     ar.short_src, ar.currentline);
        lua_sethook(L, hook, LUA_MASKCOUNT, 1);
    }
    luaL_where(L, level);
    lua_pushstring(L, over_text(h, text, sizeof text));
    lua_concat(L, 2);
    return lua_error(L);
}

static void hook(lua_State *L, lua_Debug *ar)
{
    evl_luahost *h = host_of(L);
    (void)ar;
    if (h->over_budget)
        over_budget(L, h, 0, h->over_budget);
    if (h->time_limit_ms >= 0 && now_ms() > h->deadline_ms)
        over_budget(L, h, 0, OVER_TIME);
    h->ticks_left -= h->hook_step;
    if (h->ticks_left <= 0)
        over_budget(L, h, 0, OVER_INSTRUCTIONS);
}

/* Charge n steps of C work to the budget: library functions whose work
 * an argument or their data decides, out of the hook's reach. Called from
 * such a function (level 1 is its Lua caller); raises when the budget is
 * spent, and reads the clock whenever the charge crosses a tick, about as
 * often as the hook would have. */
static void charge(lua_State *L, lua_Unsigned n)
{
    evl_luahost *h = host_of(L);
    long before = h->ticks_left;
    if (h->over_budget)
        over_budget(L, h, 1, h->over_budget);
    if (before <= 0 || n >= (lua_Unsigned)before)
        over_budget(L, h, 1, OVER_INSTRUCTIONS);
    h->ticks_left -= (long)n;
    if (h->time_limit_ms >= 0 &&
        before / h->hook_step != h->ticks_left / h->hook_step &&
        now_ms() > h->deadline_ms)
        over_budget(L, h, 1, OVER_TIME);
}

/* The matcher's callback (pattern.h): its steps are instructions. */
static void charge_steps(lua_State *L, size_t steps)
{
    charge(L, (lua_Unsigned)steps);
}

/* The JSON encoder's meter (json.h): its work pays like C library work,
 * but the encoder cannot take a Lua error, so a spent limit arms the
 * hook (the next instruction raises) and stops the encoding with the
 * limit's message. Runs on the host's own state only. */
static int json_charge(lua_State *L, size_t work, char *err, size_t errlen)
{
    evl_luahost *h = host_of(L);
    int why = h->over_budget;
    h->ticks_left -= work > (size_t)LONG_MAX / 2 ? LONG_MAX / 2 : (long)work;
    if (!why && h->ticks_left <= 0)
        why = OVER_INSTRUCTIONS;
    if (!why && h->time_limit_ms >= 0 && now_ms() > h->deadline_ms)
        why = OVER_TIME;
    if (!why)
        return 0;
    if (!h->over_budget) {
        h->over_budget = why;
        snprintf(h->budget_where, sizeof h->budget_where, "encoding JSON");
        lua_sethook(L, hook, LUA_MASKCOUNT, 1);
    }
    over_text(h, err, errlen);
    return 1;
}

static const evl_json_meter json_meter = {json_charge};

static void budget_start(evl_luahost *h)
{
    h->ticks_left = h->ticks_per_call > LONG_MAX / h->hook_step
                        ? LONG_MAX
                        : h->ticks_per_call * h->hook_step;
    if (h->time_limit_ms >= 0)
        h->deadline_ms = now_ms() + h->time_limit_ms;
    /* after a spent limit, or the allocator's early call */
    if (h->over_budget || lua_gethookcount(h->L) != h->hook_step) {
        h->over_budget = 0;
        lua_sethook(h->L, hook, LUA_MASKCOUNT, h->hook_step);
    }
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    evl_log(EVL_LOG_ERROR, "unprotected Lua error", "error",
            msg ? msg : "(not a string)", (const char *)NULL);
    abort();
}

/* ---- calling script functions ----------------------------------------- */

enum { CALL_OK, CALL_ERR, CALL_MEM, CALL_BUDGET };

/* Message handler: the error message (or a description of a non-string
 * error object) followed by a traceback. */
static int msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)",
                                  luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Call the function below the nargs arguments on top of L with a fresh
 * budget. Always leaves one value on the stack: the result (CALL_OK) or
 * the error message. */
static int call(evl_luahost *h, lua_State *L, int nargs)
{
    int fn = lua_gettop(L) - nargs, st;
    lua_pushcfunction(L, msgh);
    lua_insert(L, fn);
    budget_start(h);
    st = lua_pcall(L, nargs, 1, fn);
    lua_remove(L, fn);
    if (h->over_budget)
        return CALL_BUDGET;
    if (st == LUA_ERRMEM)
        return CALL_MEM;
    if (st != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        /* an out-of-memory error caught and rethrown by the script */
        if (m && strncmp(m, "not enough memory", 17) == 0)
            return CALL_MEM;
        return CALL_ERR;
    }
    return CALL_OK;
}

/* Describe a failed call: "<what>: <detail>" into buf. */
static void describe_failure(evl_luahost *h, lua_State *L, int rc,
                             const char *script, const char *what, char *buf,
                             size_t len)
{
    const char *m;
    switch (rc) {
    case CALL_MEM:
        snprintf(buf, len, "%s: %s: memory limit of %zu bytes exceeded", script,
                 what, h->mem_limit);
        break;
    case CALL_BUDGET: {
        char text[96];
        snprintf(buf, len, "%s: %s: %s%s%s%s", script, what,
                 over_text(h, text, sizeof text),
                 h->budget_where[0] ? " (at " : "", h->budget_where,
                 h->budget_where[0] ? ")" : "");
        break;
    }
    default:
        m = lua_tostring(L, -1);
        snprintf(buf, len, "%s: %s: %s", script, what, m ? m : "(error)");
    }
}

/* ---- the sandbox ------------------------------------------------------ */

static int call_orig(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* load(chunk [, chunkname [, mode [, env]]]): text chunks only; without an
 * env argument the chunk sees the calling script's globals (Lua's own
 * load would give it the host's). */
static int sb_load(lua_State *L)
{
    int n = lua_gettop(L);
    lua_settop(L, 4);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    if (n < 4) {
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_replace(L, 4);
    }
    return call_orig(L);
}

/* print(...): one log line at info level with script=NAME. */
static int sb_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checkstack(L, 2 * n + 2, "print");
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            lua_pushliteral(L, "\t");
        luaL_tolstring(L, i, NULL);
    }
    lua_concat(L, n > 0 ? 2 * n - 1 : 0);
    evl_log(EVL_LOG_INFO, lua_tostring(L, -1), "script",
            lua_tostring(L, lua_upvalueindex(3)), (const char *)NULL);
    return 0;
}

/* setmetatable(t, mt): no __gc, since a finalizer would run at some later
 * time, inside another script's call or at close. */
static int sb_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc metamethods are not "
                                 "allowed in scripts");
        lua_pop(L, 1);
    }
    return call_orig(L);
}

/* collectgarbage("count") only: scripts do not steer the collector. */
static int sb_collectgarbage(lua_State *L)
{
    const char *opt = luaL_optstring(L, 1, "collect");
    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage: only \"count\" is allowed in "
                             "scripts");
    lua_settop(L, 1);
    return call_orig(L);
}

/* Lua's own matcher can take polynomial time in the subject's length
 * inside one C call, where the count hook never runs: the sandbox's
 * pattern functions are pattern.c's, which charge every matching step to
 * the budget. Both sizes stay capped as well. */
static void check_pattern(lua_State *L, const char *fn)
{
    evl_luahost *h = host_of(L);
    size_t ls, lp;
    luaL_checklstring(L, 1, &ls);
    luaL_checklstring(L, 2, &lp);
    if (lp > MAX_PATTERN)
        luaL_error(L, "string.%s: pattern of %I bytes exceeds the limit of %d",
                   fn, (lua_Integer)lp, MAX_PATTERN);
    if (ls > h->max_string_op)
        luaL_error(L, "string.%s: subject of %I bytes exceeds the limit of %I",
                   fn, (lua_Integer)ls, (lua_Integer)h->max_string_op);
}

static int sb_find(lua_State *L)
{
    check_pattern(L, "find");
    return evl_pattern_find(L, charge_steps);
}

static int sb_match(lua_State *L)
{
    check_pattern(L, "match");
    return evl_pattern_match(L, charge_steps);
}

static int sb_gmatch(lua_State *L)
{
    check_pattern(L, "gmatch");
    return evl_pattern_gmatch(L, charge_steps);
}

static int sb_gsub(lua_State *L)
{
    check_pattern(L, "gsub");
    return evl_pattern_gsub(L, charge_steps);
}

/* string.rep(s, n [, sep]): result capped (a tiny call, a huge memcpy),
 * and made in a few copies. */
static int sb_rep(lua_State *L)
{
    evl_luahost *h = host_of(L);
    size_t l, lsep, total, filled;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    luaL_Buffer b;
    char *p;
    if (n <= 0 || l + lsep == 0) {
        /* Lua would loop n times to copy nothing */
        lua_pushliteral(L, "");
        return 1;
    }
    if ((lua_Unsigned)n > (h->max_string_op + lsep) / (l + lsep))
        return luaL_error(L,
                          "string.rep: result would exceed the limit of "
                          "%I bytes",
                          (lua_Integer)h->max_string_op);
    /* Lua copies s and sep once per repetition (n calls of memcpy, six
     * milliseconds for a megabyte of one character); the result is
     * periodic, so copy what is filled onto the rest, doubling. */
    total = (size_t)n * (l + lsep) - lsep;
    p = luaL_buffinitsize(L, &b, total);
    memcpy(p, s, l);
    filled = l;
    if (filled < total) {
        memcpy(p + l, sep, lsep);
        filled += lsep;
    }
    while (filled < total) {
        size_t chunk = filled < total - filled ? filled : total - filled;
        memcpy(p + filled, p, chunk);
        filled += chunk;
    }
    luaL_pushresultsize(&b, total);
    return 1;
}

/* table.move(a1, f, e, t [, a2]): one step per element. */
static int sb_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    luaL_checkinteger(L, 4);
    if (e >= f)
        charge(L, (lua_Unsigned)e - (lua_Unsigned)f + 1u);
    return call_orig(L);
}

/* table.sort(t [, comp]): about n log2 n comparisons; a C comparison
 * loop on a table as large as the memory limit allows takes seconds. */
static int sb_sort(lua_State *L)
{
    lua_Integer n;
    lua_Unsigned steps = 0;
    luaL_checktype(L, 1, LUA_TTABLE);
    n = luaL_len(L, 1);
    if (n > 1) {
        lua_Unsigned lg = 0;
        for (lua_Unsigned m = (lua_Unsigned)n; m > 1; m >>= 1)
            lg++;
        steps = (lua_Unsigned)n > (~(lua_Unsigned)0) / (lg + 1)
                    ? ~(lua_Unsigned)0
                    : (lua_Unsigned)n * (lg + 1);
    }
    charge(L, steps);
    return call_orig(L);
}

/* table.insert/remove(t, pos ...): they shift #t elements, and a __len
 * metamethod may claim any length. */
static int sb_shift(lua_State *L)
{
    lua_Integer n;
    luaL_checkany(L, 1);
    n = luaL_len(L, 1);
    charge(L, n > 0 ? (lua_Unsigned)n : 0u);
    return call_orig(L);
}

/* Call the wrapped library function in this frame (its argument errors
 * name the same function) and charge what it produced: one step per
 * argument and per result, and one per `per` bytes of string results and,
 * with fmt, of the format (argument 1). Its work is linear in those, so
 * charging after the fact bounds a loop of such calls; one call is
 * already bounded by the memory limit (and its allocations are charged
 * as they happen). */
static int counted(lua_State *L, int fmt, size_t per)
{
    lua_CFunction f = lua_tocfunction(L, lua_upvalueindex(1));
    int nargs = lua_gettop(L), n, top;
    lua_Unsigned steps = (lua_Unsigned)nargs;
    if (fmt && lua_type(L, 1) == LUA_TSTRING)
        steps += lua_rawlen(L, 1) / per;
    n = f(L);
    top = lua_gettop(L);
    steps += (lua_Unsigned)n;
    for (int i = top - n + 1; i <= top; i++)
        if (lua_type(L, i) == LUA_TSTRING)
            steps += lua_rawlen(L, i) / per;
    charge(L, steps);
    return n;
}

/* string.byte, char, lower, upper, reverse; table.pack, unpack; utf8.char,
 * codepoint: arguments and results. */
static int sb_counted(lua_State *L)
{
    return counted(L, 0, OUT_BYTES);
}

/* string.format, unpack, packsize, os.date: the format too, and a byte
 * a step (%q spends tens of nanoseconds on some bytes, os.date one
 * strftime per conversion). */
static int sb_counted_fmt(lua_State *L)
{
    return counted(L, 1, 1);
}

/* string.pack(fmt, ...): a size in the format ("c60000000") is filled
 * byte by byte even when the memory limit stops it half-way (inside a
 * pcall, again and again): charge the sizes it names before it starts. */
static int sb_pack(lua_State *L)
{
    size_t lf;
    const char *fmt = luaL_checklstring(L, 1, &lf);
    lua_Unsigned named = 0, num = 0;
    for (size_t i = 0; i <= lf; i++) {
        if (i < lf && fmt[i] >= '0' && fmt[i] <= '9') {
            if (num < ((lua_Unsigned)1 << 40))
                num = num * 10 + (lua_Unsigned)(fmt[i] - '0');
        } else {
            named += num;
            num = 0;
        }
    }
    charge(L, named / OUT_BYTES);
    return counted(L, 1, 1);
}

/* A position argument made absolute as Lua's utf8 functions do (0 if it
 * lies before the string). */
static lua_Unsigned abs_pos(lua_State *L, int arg, lua_Integer dflt, size_t len)
{
    lua_Integer pos = luaL_optinteger(L, arg, dflt);
    if (pos >= 0)
        return (lua_Unsigned)pos;
    if ((lua_Unsigned)0 - (lua_Unsigned)pos > len)
        return 0;
    return (lua_Unsigned)((lua_Integer)len + pos + 1);
}

/* utf8.len(s [, i [, j]]): the bytes from i to j are decoded. */
static int sb_utf8_len(lua_State *L)
{
    size_t len;
    lua_Unsigned i, j;
    luaL_checklstring(L, 1, &len);
    i = abs_pos(L, 2, 1, len);
    j = abs_pos(L, 3, -1, len);
    if (j >= i)
        charge(L, (j - i + 1) / OUT_BYTES);
    return call_orig(L);
}

/* utf8.offset(s, n [, i]): up to |n| characters are walked. */
static int sb_utf8_offset(lua_State *L)
{
    size_t len;
    lua_Integer n;
    lua_Unsigned walk;
    luaL_checklstring(L, 1, &len);
    n = luaL_checkinteger(L, 2);
    walk = n < 0 ? (lua_Unsigned)0 - (lua_Unsigned)n : (lua_Unsigned)n;
    charge(L, (walk < len ? walk : len) / OUT_BYTES);
    return call_orig(L);
}

/* tonumber(s [, base]): a string is scanned whole (strtod, or digit by
 * digit with a base). */
static int sb_tonumber(lua_State *L)
{
    lua_CFunction f = lua_tocfunction(L, lua_upvalueindex(1));
    if (lua_type(L, 1) == LUA_TSTRING)
        charge(L, lua_rawlen(L, 1) / OUT_BYTES);
    return f(L);
}

/* The iterator of utf8.codes skips a run of continuation bytes in one
 * call: charge the bytes each call moves over. Upvalue: the library's
 * iterator. */
static int codes_step(lua_State *L)
{
    lua_CFunction f = lua_tocfunction(L, lua_upvalueindex(1));
    lua_Integer from = lua_tointeger(L, 2), to;
    size_t len = lua_type(L, 1) == LUA_TSTRING ? lua_rawlen(L, 1) : 0;
    int n = f(L);
    to = n > 0 ? lua_tointeger(L, -n) : (lua_Integer)len;
    if (to > from)
        charge(L, (lua_Unsigned)(to - from) / OUT_BYTES);
    return n;
}

/* utf8.codes(s [, lax]): the library's, with its iterator wrapped. */
static int sb_codes(lua_State *L)
{
    lua_CFunction f = lua_tocfunction(L, lua_upvalueindex(1));
    int n = f(L), at = lua_gettop(L) - n + 1;
    if (n >= 1 && lua_tocfunction(L, at)) {
        lua_pushvalue(L, at);
        lua_pushcclosure(L, codes_step, 1);
        lua_replace(L, at);
    }
    return n;
}

/* table.concat(t [, sep [, i [, j]]]): one step per element before it
 * starts (a lying __len may claim any length), and the result's bytes
 * after. */
static int sb_concat(lua_State *L)
{
    lua_Integer i, j;
    luaL_checkany(L, 1);
    i = luaL_optinteger(L, 3, 1);
    j = lua_isnoneornil(L, 4) ? luaL_len(L, 1) : luaL_checkinteger(L, 4);
    if (j >= i)
        charge(L, (lua_Unsigned)j - (lua_Unsigned)i + 1u);
    return counted(L, 0, OUT_BYTES);
}

static int sb_require(lua_State *L);

/*
 * The sandbox allow-list. A script's global table holds exactly these
 * entries, plus _G (the table itself) and evlua (luaapi). Anything not
 * listed does not exist for scripts: dofile, loadfile and warn; io;
 * os.execute, os.getenv, os.exit, os.remove, os.rename, os.tmpname,
 * os.setlocale; debug; package; coroutine; string.dump.
 *
 *   lib   the standard library table the entry comes from ("_G" is the
 *         base library) and the table it lands in
 *   name  the entry
 *   wrap  NULL: the library's own value. Otherwise a C closure over
 *         (original value, script's global table, script name)
 *   per   1: the wrapper is made per script (it uses the global table or
 *         the name); 0: one wrapper shared by all scripts
 *
 * Every script gets fresh copies of these tables, so what one script does
 * to string, math or its globals stays with it. The string metatable's
 * __index is the shared "string" row set below, and it is protected
 * (getmetatable("") returns false).
 */
static const struct allow {
    const char *lib, *name;
    lua_CFunction wrap;
    int per;
} allowlist[] = {
    {"_G", "assert", NULL, 0},
    {"_G", "collectgarbage", sb_collectgarbage, 0}, /* "count" only */
    {"_G", "error", NULL, 0},
    {"_G", "getmetatable", NULL, 0},
    {"_G", "ipairs", NULL, 0},
    {"_G", "load", sb_load, 1}, /* text only; env: the script's */
    {"_G", "next", NULL, 0},
    {"_G", "pairs", NULL, 0},
    {"_G", "pcall", NULL, 0},
    {"_G", "print", sb_print, 1}, /* a log line, script=NAME */
    {"_G", "rawequal", NULL, 0},
    {"_G", "rawget", NULL, 0},
    {"_G", "rawlen", NULL, 0},
    {"_G", "rawset", NULL, 0},
    {"_G", "require", sb_require, 0}, /* lib_dir text modules only */
    {"_G", "select", NULL, 0},
    {"_G", "setmetatable", sb_setmetatable, 0}, /* no __gc */
    {"_G", "tonumber", sb_tonumber, 0},         /* string length charged */
    {"_G", "tostring", NULL, 0},
    {"_G", "type", NULL, 0},
    {"_G", "xpcall", NULL, 0},
    {"_G", "_VERSION", NULL, 0},

    {"string", "byte", sb_counted, 0},       /* results charged */
    {"string", "char", sb_counted, 0},       /* arguments charged */
    {"string", "find", sb_find, 0},          /* steps charged; subject capped */
    {"string", "format", sb_counted_fmt, 0}, /* output charged */
    {"string", "gmatch", sb_gmatch, 0},      /* steps charged; capped */
    {"string", "gsub", sb_gsub, 0},          /* steps charged; capped */
    {"string", "len", NULL, 0},
    {"string", "lower", sb_counted, 0},        /* output charged */
    {"string", "match", sb_match, 0},          /* steps charged; capped */
    {"string", "pack", sb_pack, 0},            /* sizes, output charged */
    {"string", "packsize", sb_counted_fmt, 0}, /* format charged */
    {"string", "rep", sb_rep, 0},              /* result capped */
    {"string", "reverse", sb_counted, 0},      /* output charged */
    {"string", "sub", NULL, 0},
    {"string", "unpack", sb_counted_fmt, 0}, /* results charged */
    {"string", "upper", sb_counted, 0},      /* output charged */

    {"table", "concat", sb_concat, 0},  /* elements, output charged */
    {"table", "insert", sb_shift, 0},   /* #t charged to the budget */
    {"table", "move", sb_move, 0},      /* e - f + 1 charged */
    {"table", "pack", sb_counted, 0},   /* arguments charged */
    {"table", "remove", sb_shift, 0},   /* #t charged */
    {"table", "sort", sb_sort, 0},      /* n log n charged */
    {"table", "unpack", sb_counted, 0}, /* results charged */

    {"math", "abs", NULL, 0},
    {"math", "acos", NULL, 0},
    {"math", "asin", NULL, 0},
    {"math", "atan", NULL, 0},
    {"math", "ceil", NULL, 0},
    {"math", "cos", NULL, 0},
    {"math", "deg", NULL, 0},
    {"math", "exp", NULL, 0},
    {"math", "floor", NULL, 0},
    {"math", "fmod", NULL, 0},
    {"math", "huge", NULL, 0},
    {"math", "log", NULL, 0},
    {"math", "max", NULL, 0},
    {"math", "maxinteger", NULL, 0},
    {"math", "min", NULL, 0},
    {"math", "mininteger", NULL, 0},
    {"math", "modf", NULL, 0},
    {"math", "pi", NULL, 0},
    {"math", "rad", NULL, 0},
    {"math", "random", NULL, 0},
    {"math", "randomseed", NULL, 0},
    {"math", "sin", NULL, 0},
    {"math", "sqrt", NULL, 0},
    {"math", "tan", NULL, 0},
    {"math", "tointeger", NULL, 0},
    {"math", "type", NULL, 0},
    {"math", "ult", NULL, 0},

    {"utf8", "char", sb_counted, 0}, /* arguments charged */
    {"utf8", "charpattern", NULL, 0},
    {"utf8", "codepoint", sb_counted, 0},  /* results charged */
    {"utf8", "codes", sb_codes, 0},        /* bytes skipped charged */
    {"utf8", "len", sb_utf8_len, 0},       /* bytes charged */
    {"utf8", "offset", sb_utf8_offset, 0}, /* walk charged */

    {"os", "clock", NULL, 0},
    {"os", "date", sb_counted_fmt, 0}, /* format, output charged */
    {"os", "time", NULL, 0},
};

#define NALLOW (sizeof allowlist / sizeof allowlist[0])

/* Push t[lib] (creating it) where t is at index t. */
static void sub_table(lua_State *L, int t, const char *lib)
{
    if (strcmp(lib, "_G") == 0) {
        lua_pushvalue(L, t);
        return;
    }
    if (lua_getfield(L, t, lib) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, t, lib);
    }
}

/* Build the template of the allow-list from the standard libraries, hide
 * the string metatable, drop the real globals, and create the registry
 * entries (require's cache, the rejection marker, ctx.reject). */
static int reject_fn(lua_State *L);

static void setup_sandbox(lua_State *L)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_OSLIBNAME, luaopen_os},
    };
    int tmpl;
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        luaL_requiref(L, libs[i].name, libs[i].func, 1);
        lua_pop(L, 1);
    }

    lua_newtable(L);
    tmpl = lua_gettop(L);
    for (size_t i = 0; i < NALLOW; i++) {
        const struct allow *a = &allowlist[i];
        sub_table(L, tmpl, a->lib);
        if (strcmp(a->lib, "_G") == 0) {
            lua_getglobal(L, a->name);
        } else {
            lua_getglobal(L, a->lib);
            lua_getfield(L, -1, a->name);
            lua_remove(L, -2);
        }
        if (a->wrap && !a->per) {
            lua_pushnil(L);
            lua_pushnil(L);
            lua_pushcclosure(L, a->wrap, 3);
        }
        lua_setfield(L, -2, a->name);
        lua_pop(L, 1);
    }

    /* the string metatable: wrapped functions, protected */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_getfield(L, tmpl, "string");
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    lua_pushvalue(L, tmpl);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_tmpl);
    lua_pop(L, 1);

    /* No script can reach the real globals or the loaded-libraries table;
     * empty them anyway, so os.execute and friends are gone for good. */
    lua_pushglobaltable(L);
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        lua_rawset(L, -5);
    }
    lua_pop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        lua_rawset(L, -5);
    }
    lua_pop(L, 1);

    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_loaded);

    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "evlua.rejection");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "evlua.rejection");
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, reject_fn, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_reject);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_rejectmt);

    /* The JSON array marker is shared by every script: protect it, so no
     * script can hang an __index or __newindex on every other script's
     * arrays. */
    evl_json_push_array_mt(L);
    lua_pushliteral(L, "__metatable");
    if (lua_rawget(L, -2) == LUA_TNIL) {
        lua_pushliteral(L, "evlua.json.array");
        lua_setfield(L, -3, "__metatable");
    }
    lua_pop(L, 2);
}

/* Push a fresh global table for the script called name. */
static void push_env(lua_State *L, const char *name)
{
    int env, tmpl;
    luaL_checkstack(L, 10, "push_env");
    lua_createtable(L, 0, 32);
    env = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_tmpl);
    tmpl = env + 1;
    for (size_t i = 0; i < NALLOW; i++) {
        const struct allow *a = &allowlist[i];
        sub_table(L, env, a->lib);  /* target */
        sub_table(L, tmpl, a->lib); /* source */
        lua_getfield(L, -1, a->name);
        if (a->wrap && a->per) {
            lua_pushvalue(L, env);
            lua_pushstring(L, name);
            lua_pushcclosure(L, a->wrap, 3);
        }
        lua_setfield(L, -3, a->name);
        lua_pop(L, 2);
    }
    lua_pop(L, 1); /* tmpl */
    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");
    evl_luaapi_push(L, name);
    lua_setfield(L, env, "evlua");
}

/* Module names are dotted identifiers: no "..", no "/", nothing that
 * could leave lib_dir. */
static int valid_module(const char *s)
{
    int seg = 0;
    for (; *s; s++) {
        if (*s == '.') {
            if (seg == 0)
                return 0;
            seg = 0;
        } else if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                   (*s >= '0' && *s <= '9') || *s == '_') {
            seg++;
        } else {
            return 0;
        }
    }
    return seg > 0;
}

/* Add a library file to the set's hash (only while the set is loading).
 * Plain C, no Lua call in between: nothing leaks if Lua raises later. */
static void hash_module(evl_luahost *h, const char *name, const char *path)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    size_t len = 0, cap = 4096, got;
    if (!fp)
        return;
    buf = evl_xmalloc(cap);
    while ((got = fread(buf + len, 1, cap - len, fp)) > 0) {
        len += got;
        if (len == cap)
            buf = evl_xrealloc(buf, cap *= 2);
    }
    fclose(fp);
    fnv_item(h, 'l', name, buf, len);
    free(buf);
}

/* require(name) -> value
 * Loads lib_dir/<name with '.' -> '/'>.lua as text into a fresh sandbox
 * global table, once per host (cached). Never loads C modules. */
static int sb_require(lua_State *L)
{
    evl_luahost *h = host_of(L);
    const char *name = luaL_checkstring(L, 1);
    const char *path;
    int st;

    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_loaded); /* 2 */
    lua_pushvalue(L, 1);
    if (lua_rawget(L, 2) != LUA_TNIL) {
        if (lua_touserdata(L, -1) == (void *)&key_loading)
            return luaL_error(L,
                              "require: module '%s' requires itself "
                              "(directly or through others)",
                              name);
        return 1;
    }
    lua_pop(L, 1);
    if (!valid_module(name))
        return luaL_error(L,
                          "require: invalid module name '%s' (letters, "
                          "digits and '_', separated by '.')",
                          name);
    if (!h->lib_dir)
        return luaL_error(L,
                          "require: module '%s' not found (no library "
                          "directory is configured; C modules are never "
                          "loaded)",
                          name);
    lua_pushstring(L, h->lib_dir);
    lua_pushliteral(L, "/");
    luaL_gsub(L, name, ".", "/");
    lua_pushliteral(L, ".lua");
    lua_concat(L, 4);
    path = lua_tostring(L, -1); /* 3 */

    if (h->hashing)
        hash_module(h, name, path);
    st = luaL_loadfilex(L, path, "t"); /* 4 */
    if (st == LUA_ERRFILE)
        return luaL_error(L,
                          "require: module '%s' not found: no file %s "
                          "(C modules are never loaded)",
                          name, path);
    if (st != LUA_OK)
        return lua_error(L);
    push_env(L, path);
    lua_setupvalue(L, 4, 1);

    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, (void *)&key_loading);
    lua_rawset(L, 2);
    st = lua_pcall(L, 0, 1, 0);
    if (st != LUA_OK) {
        lua_pushvalue(L, 1);
        lua_pushnil(L);
        lua_rawset(L, 2);
        return lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_rawset(L, 2);
    return 1;
}

/* ctx.reject(msg) -> rejection
 * The handler returns this value to reject the command with msg. */
static int reject_fn(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_settop(L, 1);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_setmetatable(L, -2);
    return 1;
}

static int is_rejection(lua_State *L, int idx)
{
    int r;
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
        return 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_rejectmt);
    r = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return r;
}

/* ---- protected operations --------------------------------------------- */

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
    /* project, reset */
    const proj *proj;
    const char *event;
    size_t event_len;
    evl_luahost_stmts *stmts;
};

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
static int run(evl_luahost *h, op *o)
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

static void failf(op *o, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void failf(op *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (o->err && o->errlen)
        vsnprintf(o->err, o->errlen, fmt, ap);
    va_end(ap);
}

static void fail_call(op *o, lua_State *L, int rc, const char *what)
{
    if (o->err && o->errlen)
        describe_failure(o->h, L, rc, o->script, what, o->err, o->errlen);
    if (rc == CALL_MEM)
        lua_gc(L, LUA_GCCOLLECT);
}

/* Raw t[k] pushed; returns its type. */
static int rawfield(lua_State *L, int t, const char *k)
{
    t = lua_absindex(L, t);
    lua_pushstring(L, k);
    return lua_rawget(L, t);
}

/* Push a short description of the value at idx without running any
 * metamethod (no script code outside a budgeted call). */
static const char *describe(lua_State *L, int idx)
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
static int is_sequence(lua_State *L, int t, size_t *n)
{
    size_t len = lua_rawlen(L, t), count = 0;
    for (lua_pushnil(L); lua_next(L, t); lua_pop(L, 1))
        count++;
    *n = len;
    return count == len;
}

/* ---- loading ---------------------------------------------------------- */

struct file {
    char kind;        /* 'a'ggregate or 'p'rojection */
    char *name;       /* dir/file.lua */
    const char *base; /* file.lua, inside name */
    char *text;
    size_t len;
};

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
    int top = lua_gettop(L), tt = rawfield(L, t, field), ok = 1, src;
    size_t n = 0, i = 0;
    if (tt == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return 0;
    }
    if (tt != LUA_TTABLE) {
        problem(o->problems, "%s: %s is %s, expected a table of functions",
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
            problem(o->problems, "%s: %s has a %s key, expected names", script,
                    field, luaL_typename(L, -2));
            ok = 0;
        } else if (lua_type(L, -1) != LUA_TFUNCTION) {
            problem(o->problems, "%s: %s.%s is a %s, expected a function",
                    script, field, lua_tostring(L, -2), luaL_typename(L, -1));
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
        qsort(*keys, n, sizeof **keys, cmpstr);
        *nkeys = n;
    }
    lua_remove(L, src);
    return 1;
}

/* A name field (type, name) that must be an evl_valid_name. */
static const char *name_field(op *o, lua_State *L, int t, const char *field)
{
    int tt = rawfield(L, t, field);
    const char *s;
    if (tt != LUA_TSTRING) {
        problem(o->problems, "%s: %s is %s, expected a non-empty string",
                o->script, field,
                tt == LUA_TNIL
                    ? "missing"
                    : lua_pushfstring(L, "a %s", lua_typename(L, tt)));
        return NULL;
    }
    s = lua_tostring(L, -1);
    if (!evl_valid_name(s)) {
        problem(o->problems,
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
    int top = lua_gettop(L), tt = rawfield(L, t, field), ok = 1;
    size_t len = 0, n = 0;
    char **v;

    if (tt == LUA_TNIL) {
        lua_settop(L, top);
        return 0;
    }
    if (tt != LUA_TTABLE || !is_sequence(L, top + 1, &len)) {
        problem(
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
            problem(o->problems,
                    "%s: %s[%zu] is %s, expected an event type name", o->script,
                    field, i,
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
    qsort(v, n, sizeof *v, cmpstr);
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

/* ---- reading the source: what handle can emit --------------------------- */

/* Just enough of Lua's lexer to find event constructors in a script's
 * text: names, strings (short and long), single punctuation, with
 * comments skipped and lines counted. Anything it does not know becomes
 * punctuation, so no input can stop it or make it read past the end. */
enum { TK_EOF, TK_NAME, TK_STRING, TK_PUNCT };

typedef struct lex {
    const char *p, *end;
    int line;
    int kind, tline; /* the token and its line */
    char c;          /* TK_PUNCT: the character; 'x' for ==, ~=, <=, >= */
    const char *s;   /* TK_NAME, TK_STRING: text (a string's content) */
    size_t len;
} lex;

/* At '[': the level of the long bracket opening here ("[==[" is 2), or
 * -1 when none does. */
static int long_open(const lex *x)
{
    const char *q = x->p + 1;
    int level = 0;
    while (q < x->end && *q == '=') {
        q++;
        level++;
    }
    return q < x->end && *q == '[' ? level : -1;
}

/* Skip the long bracket of level opening at x->p; its content in s/len. */
static void long_skip(lex *x, int level)
{
    const char *q = x->p + level + 2;
    x->s = q;
    for (; q < x->end; q++) {
        if (*q == '\n') {
            x->line++;
        } else if (*q == ']') {
            const char *r = q + 1;
            int n = 0;
            while (r < x->end && *r == '=') {
                r++;
                n++;
            }
            if (n == level && r < x->end && *r == ']') {
                x->len = (size_t)(q - x->s);
                x->p = r + 1;
                return;
            }
        }
    }
    x->len = (size_t)(q - x->s);
    x->p = x->end;
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_';
}

static void next_token(lex *x)
{
    int level;
    char c;
    for (;;) {
        if (x->p >= x->end) {
            x->kind = TK_EOF;
            return;
        }
        c = *x->p;
        if (c == '\n') {
            x->line++;
            x->p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' ||
                   c == '\v') {
            x->p++;
        } else if (c == '-' && x->p + 1 < x->end && x->p[1] == '-') {
            x->p += 2;
            if (x->p < x->end && *x->p == '[' && (level = long_open(x)) >= 0)
                long_skip(x, level);
            else
                while (x->p < x->end && *x->p != '\n')
                    x->p++;
        } else {
            break;
        }
    }
    x->tline = x->line;
    if (name_char(c)) { /* a name, or a number (taken for one: harmless) */
        x->kind = TK_NAME;
        x->s = x->p;
        while (x->p < x->end && name_char(*x->p))
            x->p++;
        x->len = (size_t)(x->p - x->s);
        if (c >= '0' && c <= '9') {
            x->kind = TK_PUNCT;
            x->c = '0';
        }
    } else if (c == '"' || c == '\'') {
        const char *q = x->p + 1;
        x->kind = TK_STRING;
        x->s = q;
        while (q < x->end && *q != c && *q != '\n') {
            if (*q == '\\' && q + 1 < x->end) {
                if (q[1] == '\n')
                    x->line++;
                q++;
            }
            q++;
        }
        x->len = (size_t)(q - x->s);
        x->p = q < x->end && *q == c ? q + 1 : q;
    } else if (c == '[' && (level = long_open(x)) >= 0) {
        x->kind = TK_STRING;
        long_skip(x, level);
    } else {
        x->kind = TK_PUNCT;
        x->c = c;
        x->p++;
        if ((c == '=' || c == '~' || c == '<' || c == '>') && x->p < x->end &&
            *x->p == '=') {
            x->c = 'x';
            x->p++;
        }
    }
}

static void add_emit(agg *a, const char *type, size_t len, int line)
{
    char *t;
    if (len == 0 || len > 200 || memchr(type, '\\', len))
        return; /* no event type we could name */
    t = evl_xmalloc(len + 1);
    memcpy(t, type, len);
    t[len] = '\0';
    a->emits = evl_xrealloc(a->emits, sizeof *a->emits * (a->nemits + 1));
    a->emits[a->nemits].type = t;
    a->emits[a->nemits++].line = line;
}

#define SCAN_DEPTH 64 /* nested table constructors followed */

/* Add to a->emits every table constructor of the source with a field
 * `type = "Name"` (a string) and a field `data` (an event as decide
 * wants it: a data field named type, or the aggregate's own type, is no
 * event), with its line; note the lines of the neutral and emits fields
 * of the script's table. Fields written as t.type = ... are not seen:
 * emits = {...} declares those. */
static void scan_source(agg *a, const char *text, size_t len)
{
    struct {
        const char *type;
        size_t len;
        int line, data;
    } st[SCAN_DEPTH];
    lex x = {.p = text, .end = text + len, .line = 1};
    int depth = 0, field = 0, want = 0, kline = 0;
    const char *key = NULL;
    size_t klen = 0;

    for (next_token(&x); x.kind != TK_EOF; next_token(&x)) {
        /* a field name follows '{', ',' or ';' */
        int at_field = field;
        field = x.kind == TK_PUNCT && (x.c == '{' || x.c == ',' || x.c == ';');
        if (want == 2) { /* the value of field key */
            if (depth > 0 && depth <= SCAN_DEPTH) {
                if (klen == 4 && memcmp(key, "type", 4) == 0 &&
                    x.kind == TK_STRING) {
                    st[depth - 1].type = x.s;
                    st[depth - 1].len = x.len;
                    st[depth - 1].line = x.tline;
                } else if (klen == 4 && memcmp(key, "data", 4) == 0) {
                    st[depth - 1].data = 1;
                }
            }
            want = 0;
        } else if (want == 1) { /* after a field name: is it key = ? */
            want = 0;
            if (x.kind == TK_PUNCT && x.c == '=') {
                want = 2;
                if (depth == 1 && klen == 7 && memcmp(key, "neutral", 7) == 0 &&
                    !a->neutral_line)
                    a->neutral_line = kline;
                if (depth == 1 && klen == 5 && memcmp(key, "emits", 5) == 0 &&
                    !a->emits_line)
                    a->emits_line = kline;
                continue;
            }
        }
        if (at_field && x.kind == TK_NAME && depth > 0) {
            key = x.s;
            klen = x.len;
            kline = x.tline;
            want = 1;
        } else if (x.kind == TK_PUNCT && x.c == '{') {
            if (depth < SCAN_DEPTH)
                memset(&st[depth], 0, sizeof st[depth]);
            depth++;
        } else if (x.kind == TK_PUNCT && x.c == '}' && depth > 0) {
            depth--;
            if (depth < SCAN_DEPTH && st[depth].type && st[depth].data)
                add_emit(a, st[depth].type, st[depth].len, st[depth].line);
        }
    }
}

static int cmp_emit(const void *a, const void *b)
{
    const emit *x = a, *y = b;
    int c = strcmp(x->type, y->type);
    return c ? c : (x->line > y->line) - (x->line < y->line);
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
static int *fn_lines(lua_State *L, int priv, const char *field,
                     char *const *keys, size_t n)
{
    int *lines = evl_xmalloc(sizeof *lines * (n ? n : 1));
    rawfield(L, priv, field);
    for (size_t i = 0; i < n; i++) {
        lines[i] = 0;
        lua_pushstring(L, keys[i]);
        lua_rawget(L, -2);
        lines[i] = fn_line(L);
    }
    lua_pop(L, 1);
    return lines;
}

/* What evl_luahost_lint needs from an aggregate's source: the line of
 * each apply function, the event types handle builds and the emits list
 * (whose names a takes over), the neutral line. Runs once a is in
 * h->aggs, so memory held by a is freed with the host even if a Lua call
 * here runs out of memory. */
static void source_facts(op *o, lua_State *L, agg *a, int priv, char **declared,
                         size_t ndeclared)
{
    size_t n = 0;
    a->emits = evl_xmalloc(sizeof *a->emits * (ndeclared ? ndeclared : 1));
    for (size_t i = 0; i < ndeclared; i++) {
        a->emits[i].type = declared[i];
        a->emits[i].line = -1; /* the emits field's, once known */
    }
    a->nemits = ndeclared;
    free(declared);
    if (o->file)
        scan_source(a, o->file->text, o->file->len);
    for (size_t i = 0; i < a->nemits; i++)
        if (a->emits[i].line < 0)
            a->emits[i].line = a->emits_line;
    a->event_lines = fn_lines(L, priv, "apply", a->events, a->pub.nevents);

    /* what an upcaster builds is not something handle emits */
    if (rawfield(L, priv, "upcast") == LUA_TTABLE) {
        for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
            lua_Debug ar;
            size_t k = 0;
            lua_pushvalue(L, -1);
            lua_getinfo(L, ">S", &ar);
            for (size_t i = 0; i < a->nemits; i++) {
                if (a->emits[i].line >= ar.linedefined &&
                    a->emits[i].line <= ar.lastlinedefined &&
                    a->emits[i].line > 0)
                    free(a->emits[i].type);
                else
                    a->emits[k++] = a->emits[i];
            }
            a->nemits = k;
        }
    }
    lua_pop(L, 1);

    /* sorted by type, each once (at its first line) */
    if (a->nemits > 0)
        qsort(a->emits, a->nemits, sizeof *a->emits, cmp_emit);
    for (size_t i = 0; i < a->nemits; i++) {
        if (n > 0 && strcmp(a->emits[n - 1].type, a->emits[i].type) == 0)
            free(a->emits[i].type);
        else
            a->emits[n++] = a->emits[i];
    }
    a->nemits = n;
}

static void load_aggregate(op *o, lua_State *L, int t)
{
    evl_luahost *h = o->h;
    const char *type = name_field(o, L, t, "type");
    int priv, tt, bad = type == NULL;
    char **commands = NULL, **events = NULL, **neutral = NULL, **emits = NULL;
    size_t ncommands = 0, nevents = 0, nneutral = 0, nemits = 0;
    agg *a;

    lua_createtable(L, 0, 4);
    priv = lua_gettop(L);
    tt = rawfield(L, t, "initial");
    if (tt != LUA_TFUNCTION) {
        problem(
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
    for (size_t i = 0; type && i < h->naggs; i++)
        if (strcmp(h->aggs[i].type, type) == 0) {
            problem(o->problems,
                    "%s: aggregate type \"%s\" is already "
                    "defined in %s",
                    o->script, type, h->aggs[i].script);
            bad = 1;
        }
    if (bad) {
        free_strv(commands, ncommands);
        free_strv(events, nevents);
        free_strv(neutral, nneutral);
        free_strv(emits, nemits);
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
    lua_pushvalue(L, priv);
    a->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    source_facts(o, L, a, priv, emits, nemits);
}

/* schema: one DDL string or a list of them; pushes nothing. */
static int load_schema(op *o, lua_State *L, int t, char ***out, size_t *nout)
{
    int top = lua_gettop(L), tt = rawfield(L, t, "schema"), ok = 1;
    char **v = NULL;
    size_t n = 0, len;

    if (tt == LUA_TSTRING) {
        v = evl_xmalloc(sizeof *v);
        v[n++] = evl_xstrdup(lua_tostring(L, -1));
    } else if (tt == LUA_TTABLE && is_sequence(L, top + 1, &len)) {
        v = evl_xmalloc(sizeof *v * (len ? len : 1));
        for (size_t i = 1; i <= len; i++) {
            if (lua_rawgeti(L, top + 1, (lua_Integer)i) != LUA_TSTRING) {
                problem(o->problems,
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
        problem(o->problems,
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
        free_strv(v, n);
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
    tt = rawfield(L, t, "reset");
    if (tt == LUA_TSTRING || tt == LUA_TFUNCTION || tt == LUA_TNIL) {
        lua_setfield(L, priv, "reset");
    } else {
        problem(o->problems,
                "%s: reset is a %s, expected a string or a "
                "function",
                o->script, lua_typename(L, tt));
        bad = 1;
    }
    for (size_t i = 0; name && i < h->nprojs; i++)
        if (strcmp(h->projs[i].name, name) == 0) {
            problem(o->problems,
                    "%s: projection name \"%s\" is already "
                    "defined in %s",
                    o->script, name, h->projs[i].script);
            bad = 1;
        }
    if (bad) {
        free_strv(events, nevents);
        free_strv(schema, nschema);
        return;
    }
    h->projs = evl_xrealloc(h->projs, sizeof *h->projs * (h->nprojs + 1));
    p = &h->projs[h->nprojs++];
    memset(p, 0, sizeof *p);
    p->name = evl_xstrdup(name);
    p->script = evl_xstrdup(o->script);
    p->schema = schema;
    p->nschema = nschema;
    p->events = events;
    p->pub.nevents = nevents;
    lua_pushvalue(L, priv);
    p->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    p->event_lines = fn_lines(L, priv, "on", p->events, nevents);
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
        problem(o->problems, "%s", line);
    } else if (strncmp(line, "...", 3) == 0 &&
               (colon = strchr(line + 3, ':')) != NULL &&
               (size_t)(colon - line - 3) <= n &&
               strncmp(name + n - (size_t)(colon - line - 3), line + 3,
                       (size_t)(colon - line - 3)) == 0) {
        problem(o->problems, "%s%s", name, colon);
    } else {
        problem(o->problems, "%s: %s", name, line);
    }
}

static void load_one(op *o, lua_State *L, struct file *f)
{
    char line[1024];
    int env, rc;

    o->script = f->name;
    o->file = f;
    push_env(L, f->name);
    env = lua_gettop(L);
    lua_pushfstring(L, "@%s", f->name);
    if (luaL_loadbufferx(L, f->text, f->len, lua_tostring(L, -1), "t") !=
        LUA_OK) {
        lua_problem(o, L, f->name);
        return;
    }
    lua_pushvalue(L, env);
    lua_setupvalue(L, -2, 1);
    rc = call(o->h, L, 0);
    if (rc == CALL_ERR) {
        lua_problem(o, L, f->name);
        return;
    }
    if (rc != CALL_OK) {
        describe_failure(o->h, L, rc, f->name, "loading", line, sizeof line);
        problem(o->problems, "%s", line);
        if (rc == CALL_MEM)
            lua_gc(L, LUA_GCCOLLECT);
        return;
    }
    if (!lua_istable(L, -1)) {
        problem(o->problems,
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
    setup_sandbox(L);
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
        problem(problems, "%s: cannot open the %s directory: %s", dir,
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
        qsort(names, n, sizeof *names, cmpstr);

    for (size_t i = 0; i < n; i++) {
        size_t plen = dlen + 1 + strlen(names[i]) + 1;
        char *path = evl_xmalloc(plen);
        struct stat st;
        FILE *fp;
        struct file *f;
        snprintf(path, plen, "%.*s/%s", (int)dlen, dir, names[i]);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            if (stat(path, &st) != 0)
                problem(problems, "%s: cannot stat: %s", path, strerror(errno));
            free(path);
            continue;
        }
        if ((size_t)st.st_size > MAX_SCRIPT_SIZE) {
            problem(problems, "%s: file of %lld bytes is larger than %u", path,
                    (long long)st.st_size, MAX_SCRIPT_SIZE);
            free(path);
            continue;
        }
        fp = fopen(path, "rb");
        if (!fp) {
            problem(problems, "%s: cannot open: %s", path, strerror(errno));
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
            problem(problems, "%s: read error", path);
        fclose(fp);
    }
    free_strv(names, n);
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
        free_strv(h->aggs[i].commands, h->aggs[i].pub.ncommands);
        free_strv(h->aggs[i].events, h->aggs[i].pub.nevents);
        free_strv(h->aggs[i].neutral, h->aggs[i].pub.nneutral);
        free(h->aggs[i].event_lines);
        for (size_t j = 0; j < h->aggs[i].nemits; j++)
            free(h->aggs[i].emits[j].type);
        free(h->aggs[i].emits);
    }
    free(h->aggs);
    for (size_t i = 0; i < h->nprojs; i++) {
        free(h->projs[i].name);
        free(h->projs[i].script);
        free_strv(h->projs[i].schema, h->projs[i].nschema);
        free_strv(h->projs[i].events, h->projs[i].pub.nevents);
        free(h->projs[i].event_lines);
    }
    free(h->projs);
    free_strv(h->adirs, h->nadirs);
    free_strv(h->pdirs, h->npdirs);
    free(h->lib_dir);
    free(h);
}

evl_err evl_luahost_new(const evl_luahost_config *cfg, evl_luahost **out,
                        evl_luahost_problems *problems, char *err,
                        size_t errlen)
{
    evl_luahost_problems probs = {0};
    evl_luahost *h = evl_xmalloc(sizeof *h);
    struct file *files = NULL;
    size_t nfiles = 0;
    char msg[EVL_ERRLEN];
    op o;
    evl_err rc = EVL_OK;

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

    memset(&o, 0, sizeof o);
    o.h = h;
    o.err = msg;
    o.errlen = sizeof msg;
    o.problems = &probs;

    h->L = lua_newstate(l_alloc, h);
    if (!h->L) {
        problem(&probs,
                "scripts: cannot create a Lua state within the "
                "memory limit of %zu bytes",
                h->mem_limit);
        goto out;
    }
    *(evl_luahost **)lua_getextraspace(h->L) = h;
    lua_atpanic(h->L, panic);
    lua_sethook(h->L, hook, LUA_MASKCOUNT, h->hook_step);
    evl_json_set_meter(h->L, &json_meter);
    o.fn = op_setup;
    if (run(h, &o) != 0) {
        problem(&probs, "%s", msg);
        goto out;
    }

    for (size_t i = 0; i < h->nadirs; i++)
        read_dir(h->adirs[i], 'a', &files, &nfiles, &probs);
    for (size_t i = 0; i < h->npdirs; i++)
        read_dir(h->pdirs[i], 'p', &files, &nfiles, &probs);
    for (size_t i = 0; i < nfiles; i++)
        fnv_item(h, files[i].kind, files[i].base, files[i].text, files[i].len);

    o.fn = op_load;
    o.files = files;
    o.nfiles = nfiles;
    if (run(h, &o) != 0)
        problem(&probs, "%s", msg);

out:
    free_files(files, nfiles);
    if (probs.n > 0) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "%zu problem%s loading scripts; first: %s", probs.n,
                   probs.n == 1 ? "" : "s", probs.lines[0]);
        if (problems) {
            for (size_t i = 0; i < probs.n; i++)
                problem(problems, "%s", probs.lines[i]);
        }
        evl_luahost_problems_free(&probs);
        evl_luahost_free(h);
        return EVL_EPERMANENT;
    }
    for (size_t i = 0; i < h->naggs; i++) {
        agg *a = &h->aggs[i];
        a->pub.type = a->type;
        a->pub.script = a->script;
        a->pub.commands = (const char *const *)a->commands;
        a->pub.events = (const char *const *)a->events;
        a->pub.neutral = (const char *const *)a->neutral;
    }
    for (size_t i = 0; i < h->nprojs; i++) {
        proj *p = &h->projs[i];
        p->pub.name = p->name;
        p->pub.script = p->script;
        p->pub.schema = (const char *const *)p->schema;
        p->pub.nschema = p->nschema;
        p->pub.events = (const char *const *)p->events;
    }
    snprintf(h->hash, sizeof h->hash, "%016llx", (unsigned long long)h->fnv);
    lua_gc(h->L, LUA_GCCOLLECT);
    /* no log line here: a load is reported by whoever decided to load
     * (evl_luahost_reload once per SIGHUP, the CLI at start), not once per
     * pipeline or per busted spec */
    *out = h;
    return rc;
}

/* The SIGHUP count (evl_lifecycle_reloads) the last reload summary was
 * logged for. */
static atomic_uint reload_logged;

evl_err evl_luahost_reload(const evl_luahost *old, evl_luahost **out,
                           evl_luahost_problems *problems, char *err,
                           size_t errlen)
{
    evl_luahost_problems probs = {0};
    evl_luahost_config cfg;
    evl_err rc;

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
    rc = evl_luahost_new(&cfg, out, &probs, err, errlen);
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
                problem(problems, "%s", probs.lines[i]);
        }
    } else if (speak) {
        evl_log(EVL_LOG_INFO, "scripts reloaded", "hash", (*out)->hash, "old",
                old->hash, (const char *)NULL);
    }
    evl_luahost_problems_free(&probs);
    return rc;
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

static const agg *find_agg(const evl_luahost *h, const char *type)
{
    for (size_t i = 0; type && i < h->naggs; i++)
        if (strcmp(h->aggs[i].type, type) == 0)
            return &h->aggs[i];
    return NULL;
}

static const proj *find_proj(const evl_luahost *h, const char *name)
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
    const agg *a = find_agg(h, type);
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
    const proj *p = find_proj(h, name);
    return p ? &p->pub : NULL;
}

int evl_luahost_projection_handles(const evl_luahost_projection *p,
                                   const char *event_type)
{
    return p && event_type &&
           bsearch(&event_type, p->events, p->nevents, sizeof *p->events,
                   cmpstr) != NULL;
}

/* ---- lint: the traps load does not refuse ------------------------------ */

static int has_str(char *const *v, size_t n, const char *s)
{
    return n > 0 && bsearch(&s, v, n, sizeof *v, cmpstr) != NULL;
}

static int has_emit(const agg *a, const char *type)
{
    for (size_t i = 0; i < a->nemits; i++)
        if (strcmp(a->emits[i].type, type) == 0)
            return 1;
    return 0;
}

/* Levenshtein distance of two short names (large when either is long). */
static size_t edits(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[65];
    if (la > 64 || lb > 64)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* "; did you mean 'X'?" for the nearest name of v (2 edits at most), or
 * "" */
static const char *nearest(char *buf, size_t len, const char *s,
                           const char *const *v, size_t n)
{
    const char *best = NULL;
    size_t bd = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = edits(s, v[i]);
        if (d > 0 && d < bd) {
            bd = d;
            best = v[i];
        }
    }
    if (!best)
        return "";
    snprintf(buf, len, "; did you mean '%s'?", best);
    return buf;
}

/* "script:line" or "script" (line unknown) */
static const char *at(char *buf, size_t len, const char *script, int line)
{
    if (line > 0)
        snprintf(buf, len, "%s:%d", script, line);
    else
        snprintf(buf, len, "%s", script);
    return buf;
}

size_t evl_luahost_lint(const evl_luahost *h, evl_luahost_problems *errors,
                        evl_luahost_problems *warnings)
{
    size_t nerr = 0, nall = 0;
    const char **all = NULL; /* every type some aggregate emits */
    char where[1100], hint[300];

    for (size_t i = 0; i < h->naggs; i++) {
        const agg *a = &h->aggs[i];
        for (size_t j = 0; j < a->nemits; j++) {
            const emit *e = &a->emits[j];
            all = evl_xrealloc(all, sizeof *all * (nall + 1));
            all[nall++] = e->type;
            if (has_str(a->events, a->pub.nevents, e->type) ||
                has_str(a->neutral, a->pub.nneutral, e->type))
                continue;
            nerr++;
            if (errors)
                problem(errors,
                        "%s: event type '%s' can be emitted by handle but "
                        "has no apply entry (add one, or list it in neutral "
                        "= {...} if it changes no state)%s",
                        at(where, sizeof where, a->script, e->line), e->type,
                        nearest(hint, sizeof hint, e->type,
                                (const char *const *)a->events,
                                a->pub.nevents));
        }
        for (size_t j = 0; j < a->pub.nneutral; j++) {
            all = evl_xrealloc(all, sizeof *all * (nall + 1));
            all[nall++] = a->neutral[j];
        }
        if (!warnings)
            continue;
        for (size_t j = 0; j < a->pub.nevents; j++) {
            const char *type = a->events[j];
            if (has_emit(a, type) || has_str(a->neutral, a->pub.nneutral, type))
                continue;
            problem(warnings,
                    "%s: warning: apply.%s: no handler emits this event "
                    "type (a typo? list a type that handle builds at run "
                    "time, or no longer emits but is in the log, in emits "
                    "= {...})",
                    at(where, sizeof where, a->script, a->event_lines[j]),
                    type);
        }
        for (size_t j = 0; j < a->pub.nneutral; j++)
            if (has_str(a->events, a->pub.nevents, a->neutral[j]))
                problem(warnings,
                        "%s: warning: neutral lists '%s', which has an "
                        "apply entry (the apply entry runs; drop one of "
                        "them)",
                        at(where, sizeof where, a->script, a->neutral_line),
                        a->neutral[j]);
    }
    /* projections: only against a set that has aggregates */
    for (size_t i = 0; warnings && h->naggs > 0 && i < h->nprojs; i++) {
        const proj *p = &h->projs[i];
        for (size_t j = 0; j < p->pub.nevents; j++) {
            const char *type = p->events[j], *near;
            size_t k;
            for (k = 0; k < nall && strcmp(all[k], type) != 0; k++)
                ;
            if (k < nall)
                continue;
            near = nearest(hint, sizeof hint, type, all, nall);
            problem(warnings,
                    "%s: warning: on.%s: no aggregate of this script set "
                    "emits this event type%s (%sfine if an aggregate "
                    "outside this set does)",
                    at(where, sizeof where, p->script, p->event_lines[j]), type,
                    near, *near ? "" : "a typo? ");
        }
    }
    free(all);
    return nerr;
}

/* ---- decide ----------------------------------------------------------- */

/* Offsets into a growing buffer are kept in pointer fields while it
 * grows and turned into pointers once it is done. */
#define OFF(x)       ((const char *)(uintptr_t)(x))
#define FIX(base, p) ((base) + (uintptr_t)(p))

/* Decode JSON text that must hold an object/array (a table) and push it;
 * 0 with the failure in o->err otherwise. */
static int push_json_table(op *o, lua_State *L, const char *what, const char *s,
                           size_t len)
{
    char jerr[EVL_ERRLEN];
    if (evl_json_decode(L, s, len, jerr, sizeof jerr) != EVL_OK) {
        failf(o, "%s: %s JSON: %s", o->script, what, jerr);
        return 0;
    }
    if (!lua_istable(L, -1)) {
        failf(o, "%s: %s JSON is a %s, expected an object", o->script, what,
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
        return push_json_table(o, L, "state", state, state_len);
    rawfield(L, priv, "initial");
    rc = call(o->h, L, 0);
    if (rc != CALL_OK) {
        fail_call(o, L, rc, "initial");
        return 0;
    }
    if (!lua_istable(L, -1)) {
        failf(o, "%s: initial returned a %s, expected a table", o->script,
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
    rawfield(L, ev, "type");
    type = lua_tostring(L, -1);
    rawfield(L, priv, "apply");
    lua_pushvalue(L, -2);
    if (!type || lua_rawget(L, -2) != LUA_TFUNCTION) {
        lua_settop(L, top);
        return 1; /* no apply entry: the state stays as it is */
    }
    snprintf(what, sizeof what, "apply.%s", type);
    lua_pushvalue(L, st);
    lua_pushvalue(L, ev);
    rc = call(o->h, L, 2);
    if (rc != CALL_OK) {
        fail_call(o, L, rc, what);
        return 0;
    }
    if (lua_istable(L, -1)) {
        lua_replace(L, st);
    } else if (!lua_isnil(L, -1)) {
        failf(o, "%s: %s returned a %s, expected the state table or nil",
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
    rawfield(L, priv, "apply");
    ok = rawfield(L, -1, type) != LUA_TNIL;
    if (!ok && rawfield(L, priv, "neutral") == LUA_TTABLE)
        ok = rawfield(L, -1, type) != LUA_TNIL;
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

static void op_decide(lua_State *L, op *o)
{
    const evl_luahost_command *c = o->cmd;
    evl_luahost_decision *d = o->dec;
    char what[160], jerr[EVL_ERRLEN], path[256];
    const char *ctype, *state = c->state;
    int priv, cmd, fn, res, st, hst;
    size_t n, state_len = c->state_len, init = 0;

    o->status = EVL_LUAHOST_FAILED;
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->agg->ref);
    priv = lua_gettop(L);

    if (!c->command) {
        /* the table evl_luahost_parse_command kept; taken, not shared */
        lua_rawgetp(L, LUA_REGISTRYINDEX, &key_command);
        lua_pushnil(L);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &key_command);
        if (!lua_istable(L, -1)) {
            failf(o, "%s: no parsed command to decide", o->script);
            return;
        }
    } else if (!push_json_table(o, L, "command", c->command, c->command_len)) {
        return;
    }
    cmd = lua_gettop(L);
    if (rawfield(L, cmd, "type") != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        failf(o, "%s: the command has no type (a non-empty string)", o->script);
        return;
    }
    ctype = lua_tostring(L, -1);
    snprintf(what, sizeof what, "handle.%s", ctype);
    rawfield(L, priv, "handle");
    lua_pushvalue(L, -2);
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        o->status = EVL_LUAHOST_REJECTED;
        failf(o, "aggregate type %s has no handler for command %s",
              o->agg->type, ctype);
        return;
    }
    fn = lua_gettop(L);

    /* Handle's state and the one the events are applied to are two
     * decodes of one JSON text: initial() runs once, and goes through
     * JSON as a stored state does, so an initial() that differs between
     * calls (a uuid) is not taken for a change by handle. Its text sits
     * at the start of d->text (found by offset: the buffer grows). */
    if (!state) {
        if (!push_state(o, L, priv, NULL, 0))
            return;
        if (evl_json_encode(L, -1, &d->text, jerr, sizeof jerr) != EVL_OK) {
            failf(o, "%s: initial returned a state with no JSON form: %s",
                  o->script, jerr);
            return;
        }
        lua_pop(L, 1);
        init = 1;
        state_len = d->text.len;
    }
    if (!push_state(o, L, priv, init ? d->text.data : state, state_len))
        return;
    hst = lua_gettop(L);
    lua_pushvalue(L, fn);
    lua_pushvalue(L, hst);
    lua_pushvalue(L, cmd);

    /* ctx */
    lua_createtable(L, 0, 4);
    if (c->aggregate_id)
        lua_pushstring(L, c->aggregate_id);
    else
        rawfield(L, cmd, "aggregate_id");
    lua_setfield(L, -2, "aggregate_id");
    lua_pushinteger(L, (lua_Integer)c->version);
    lua_setfield(L, -2, "version");
    if (rawfield(L, cmd, "metadata") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
    lua_setfield(L, -2, "metadata");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_reject);
    lua_setfield(L, -2, "reject");

    st = call(o->h, L, 3); /* fn, state, cmd, ctx */
    if (st != CALL_OK) {
        fail_call(o, L, st, what);
        return;
    }
    res = lua_gettop(L);

    if (is_rejection(L, res)) {
        /* the script may have changed the rejection table since */
        o->status = EVL_LUAHOST_REJECTED;
        if (lua_rawgeti(L, res, 1) == LUA_TSTRING)
            failf(o, "%s", lua_tostring(L, -1));
        else
            failf(o, "rejected");
        return;
    }
    if (!lua_istable(L, res)) {
        failf(o,
              "%s: %s returned %s, expected a list of events or "
              "ctx.reject(msg)",
              o->script, what,
              lua_isnil(L, res)
                  ? "nothing"
                  : lua_pushfstring(L, "a %s", luaL_typename(L, res)));
        return;
    }
    if (!is_sequence(L, res, &n)) {
        failf(o,
              "%s: %s returned a table that is not a list of events "
              "(wrap a single event: return { {type = ..., data = ...} })",
              o->script, what);
        return;
    }

    if (n > d->cap) {
        d->events = evl_xrealloc(d->events, sizeof *d->events * n);
        d->cap = n;
    }
    for (size_t i = 1; i <= n; i++) {
        evl_luahost_event *e = &d->events[i - 1];
        const char *type;
        int ev;
        lua_rawgeti(L, res, (lua_Integer)i);
        ev = lua_gettop(L);
        if (!lua_istable(L, ev)) {
            failf(o,
                  "%s: %s returned event %zu as a %s, expected a table "
                  "{type = ..., data = ...}",
                  o->script, what, i, luaL_typename(L, ev));
            return;
        }
        if (rawfield(L, ev, "type") != LUA_TSTRING) {
            failf(o, "%s: %s returned event %zu without a string type",
                  o->script, what, i);
            return;
        }
        type = lua_tostring(L, -1);
        if (!*type) {
            failf(o, "%s: %s returned event %zu with an empty type", o->script,
                  what, i);
            return;
        }
        e->version = 1;
        if (rawfield(L, ev, "version") != LUA_TNIL) {
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
                failf(o,
                      "%s: %s returned event %zu (%s) with version %s, "
                      "expected a positive integer",
                      o->script, what, i, type, describe(L, -1));
                return;
            }
            e->version = (long long)lua_tointeger(L, -1);
        }
        lua_pop(L, 1);
        e->type = OFF(d->text.len);
        evl_buf_put(&d->text, type, strlen(type) + 1);
        if (rawfield(L, ev, "data") != LUA_TTABLE) {
            failf(o, "%s: %s returned event %zu (%s) without a data table",
                  o->script, what, i, type);
            return;
        }
        e->data = OFF(d->text.len);
        if (evl_json_encode(L, -1, &d->text, jerr, sizeof jerr) != EVL_OK) {
            failf(o,
                  "%s: %s returned event %zu (%s) whose data has no JSON "
                  "form: %s",
                  o->script, what, i, type, jerr);
            return;
        }
        e->data_len = d->text.len - (size_t)(uintptr_t)e->data;
        evl_buf_putc(&d->text, '\0');
        lua_settop(L, res);
    }

    /* Every event well formed: does each change the state as meant? */
    for (size_t i = 0; i < n; i++) {
        const char *type = d->text.data + (uintptr_t)d->events[i].type;
        if (!applies(L, priv, type)) {
            failf(o,
                  "%s: %s: event type '%s' has no apply entry (add one, or "
                  "list it in neutral = {...} if it changes no state)",
                  o->script, what, type);
            return;
        }
    }

    /* The new state: the events applied to a fresh decode of the old one,
     * which handle's must still equal. */
    if (!push_state(o, L, priv, init ? d->text.data : state, state_len))
        return;
    st = lua_gettop(L);
    path[0] = '\0';
    if (!same_state(L, hst, st, path, sizeof path)) {
        failf(o,
              "%s: %s must not change the state (emit an event instead): "
              "field '%s'",
              o->script, what, path);
        return;
    }
    for (size_t i = 1; i <= n; i++) {
        int ev;
        lua_createtable(L, 0, 6);
        ev = lua_gettop(L);
        lua_rawgeti(L, res, (lua_Integer)i);
        rawfield(L, -1, "type");
        lua_setfield(L, ev, "type");
        rawfield(L, -1, "data");
        lua_setfield(L, ev, "data");
        lua_pop(L, 1);
        lua_pushinteger(L, (lua_Integer)d->events[i - 1].version);
        lua_setfield(L, ev, "version");
        lua_pushstring(L, o->agg->type);
        lua_setfield(L, ev, "aggregate_type");
        if (c->aggregate_id)
            lua_pushstring(L, c->aggregate_id);
        else
            rawfield(L, cmd, "aggregate_id");
        lua_setfield(L, ev, "aggregate_id");
        lua_pushinteger(L, (lua_Integer)(c->version + (long long)i));
        lua_setfield(L, ev, "sequence");
        if (!apply_event(o, L, priv, st, ev))
            return;
        lua_settop(L, st);
    }
    d->state = OFF(d->text.len);
    if (evl_json_encode(L, st, &d->text, jerr, sizeof jerr) != EVL_OK) {
        failf(o, "%s: the state after the events has no JSON form: %s",
              o->script, jerr);
        return;
    }
    d->state_len = d->text.len - (size_t)(uintptr_t)d->state;
    evl_buf_putc(&d->text, '\0');

    d->nevents = n;
    d->state = FIX(d->text.data, d->state);
    for (size_t i = 0; i < n; i++) {
        d->events[i].type = FIX(d->text.data, d->events[i].type);
        d->events[i].data = FIX(d->text.data, d->events[i].data);
    }
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
    o.agg = find_agg(h, cmd->aggregate_type);
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
    if (run(h, &o) != 0)
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
    if (run(h, &o) != 0) {
        /* out of memory part way: no field may point into its text */
        out->id = out->type = out->aggregate_type = out->aggregate_id = NULL;
        out->user_id = out->correlation_id = NULL;
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
static int upcast_event(op *o, lua_State *L, int priv, int ev)
{
    char what[160];
    int rc;
    if (rawfield(L, priv, "upcast") != LUA_TTABLE ||
        rawfield(L, ev, "type") != LUA_TSTRING) {
        lua_settop(L, ev);
        return 1;
    }
    snprintf(what, sizeof what, "upcast.%s", lua_tostring(L, -1));
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        lua_settop(L, ev);
        return 1;
    }
    lua_pushvalue(L, ev);
    rc = call(o->h, L, 1);
    if (rc != CALL_OK) {
        fail_call(o, L, rc, what);
        return 0;
    }
    if (lua_istable(L, -1)) {
        lua_replace(L, ev);
    } else if (!lua_isnil(L, -1)) {
        failf(o, "%s: %s returned a %s, expected the event table or nil",
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
        if (!push_json_table(o, L, what, o->events[i], o->lens[i]))
            return;
        ev = lua_gettop(L);
        if (!upcast_event(o, L, priv, ev) || !apply_event(o, L, priv, st, ev))
            return;
        lua_settop(L, st);
    }
    o->out->len = 0;
    if (evl_json_encode(L, st, o->out, jerr, sizeof jerr) != EVL_OK) {
        failf(o, "%s: the state after the events has no JSON form: %s",
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
    o.agg = find_agg(h, aggregate_type);
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
    if (run(h, &o) != 0)
        o.status = EVL_EPERMANENT;
    if (o.status != EVL_OK)
        out->len = 0;
    return (evl_err)o.status;
}

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

/* Validate the statement table at idx and append it. label names it in
 * messages ("statement" or "statement 2"). */
static int add_stmt(op *o, lua_State *L, int idx, const char *what,
                    const char *label)
{
    evl_luahost_stmts *s = o->stmts;
    evl_luahost_stmt *stmt;
    char jerr[EVL_ERRLEN], num[64];
    const char *sql, *why;
    size_t len;
    lua_Integer max = 0;

    if (!lua_istable(L, idx)) {
        failf(o, "%s: %s returned %s as a %s, expected {sql, params...}",
              o->script, what, label, luaL_typename(L, idx));
        return 0;
    }
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
        if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1) {
            failf(o,
                  "%s: %s returned %s with a key that is not a position "
                  "(%s), expected {sql, params...}",
                  o->script, what, label, describe(L, -2));
            return 0;
        }
        if (lua_tointeger(L, -2) > max)
            max = lua_tointeger(L, -2);
    }
    lua_rawgeti(L, idx, 1);
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
        failf(o,
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
        failf(o, "%s: %s returned %s whose SQL %s", o->script, what, label,
              why);
        return 0;
    }
    if (s->n == s->capstmts) {
        s->capstmts = s->capstmts ? 2 * s->capstmts : 4;
        s->stmts = evl_xrealloc(s->stmts, sizeof *s->stmts * s->capstmts);
    }
    stmt = &s->stmts[s->n++];
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
        failf(o,
              "%s: %s returned %s whose $%ld is nil (use evlua.null for SQL "
              "NULL)",
              o->script, what, label, (long)stmt->nparams + 1);
        return 0;
    }

    for (lua_Integer k = 2; k <= max; k++) {
        evl_luahost_param *p = new_param(s);
        int t = lua_rawgeti(L, idx, k);
        switch (t) {
        case LUA_TBOOLEAN:
            p->type = EVL_PARAM_BOOLEAN;
            p->i = lua_toboolean(L, -1);
            p->text = put_text(&s->text, p->i ? "true" : "false", p->i ? 4 : 5);
            p->len = p->i ? 4 : 5;
            break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, -1)) {
                p->type = EVL_PARAM_INTEGER;
                p->i = (long long)lua_tointeger(L, -1);
                p->len = (size_t)snprintf(num, sizeof num, "%lld", p->i);
            } else {
                p->type = EVL_PARAM_FLOAT;
                p->f = (double)lua_tonumber(L, -1);
                if (!isfinite(p->f)) {
                    failf(o,
                          "%s: %s returned %s whose $%lld is %s, which "
                          "SQL parameters do not take",
                          o->script, what, label, (long long)k - 1,
                          isnan(p->f) ? "NaN" : "infinite");
                    return 0;
                }
                p->len = (size_t)snprintf(num, sizeof num, "%.17g", p->f);
            }
            p->text = put_text(&s->text, num, p->len);
            break;
        case LUA_TSTRING: {
            const char *v = lua_tolstring(L, -1, &len);
            if ((why = bad_text(v, len)) != NULL) {
                failf(o, "%s: %s returned %s whose $%lld %s", o->script, what,
                      label, (long long)k - 1, why);
                return 0;
            }
            p->type = EVL_PARAM_STRING;
            p->len = len;
            p->text = put_text(&s->text, v, len);
            break;
        }
        case LUA_TTABLE:
            p->type = EVL_PARAM_JSON;
            p->text = OFF(s->text.len);
            if (evl_json_encode(L, -1, &s->text, jerr, sizeof jerr) != EVL_OK) {
                failf(o, "%s: %s returned %s whose $%lld has no JSON form: %s",
                      o->script, what, label, (long long)k - 1, jerr);
                return 0;
            }
            p->len = s->text.len - (size_t)(uintptr_t)p->text;
            evl_buf_putc(&s->text, '\0');
            break;
        case LUA_TNIL:
            failf(o,
                  "%s: %s returned %s whose $%lld is nil (use evlua.null "
                  "for SQL NULL)",
                  o->script, what, label, (long long)k - 1);
            return 0;
        default:
            if (evl_json_is_null(L, -1)) {
                p->type = EVL_PARAM_NULL;
                p->text = NULL;
                break;
            }
            failf(o,
                  "%s: %s returned %s whose $%lld is a %s, expected a "
                  "string, number, boolean, evlua.null or table",
                  o->script, what, label, (long long)k - 1,
                  luaL_typename(L, -1));
            return 0;
        }
        lua_pop(L, 1);
    }
    return 1;
}

/* Turn offsets into pointers once every statement is in. */
static void fix_stmts(evl_luahost_stmts *s)
{
    for (size_t i = 0; i < s->nparams; i++)
        if (s->params[i].type != EVL_PARAM_NULL)
            s->params[i].text = FIX(s->text.data, s->params[i].text);
    for (size_t i = 0; i < s->n; i++) {
        s->stmts[i].sql = FIX(s->text.data, s->stmts[i].sql);
        s->stmts[i].params = s->params + (uintptr_t)s->stmts[i].params;
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
        failf(o,
              "%s: %s returned a %s, expected a statement {sql, "
              "params...}, a list of them or nil",
              o->script, what, luaL_typename(L, res));
        return 0;
    }
    t1 = lua_rawgeti(L, res, 1);
    lua_pop(L, 1);
    if (t1 != LUA_TTABLE && t1 != LUA_TNIL)
        return add_stmt(o, L, res, what, "a statement");
    if (!is_sequence(L, res, &n)) {
        failf(o,
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
    if (!push_json_table(o, L, "event", o->event, o->event_len))
        return;
    ev = lua_gettop(L);

    /* the event's own aggregate may know how to upcast it */
    if (rawfield(L, ev, "aggregate_type") == LUA_TSTRING)
        a = find_agg(o->h, lua_tostring(L, -1));
    lua_settop(L, ev);
    if (a) {
        const char *script = o->script;
        lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref);
        lua_pushvalue(L, ev);
        o->script = a->script;
        if (!upcast_event(o, L, ev + 1, ev + 2))
            return;
        o->script = script;
        lua_replace(L, ev);
        lua_settop(L, ev);
    }

    if (rawfield(L, ev, "type") != LUA_TSTRING) {
        failf(o, "%s: the event has no string type", o->script);
        return;
    }
    snprintf(what, sizeof what, "on.%s", lua_tostring(L, -1));
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->proj->ref);
    rawfield(L, -1, "on");
    lua_pushvalue(L, ev + 1);
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        o->status = EVL_OK; /* not an event this projection handles */
        return;
    }
    lua_pushvalue(L, ev);
    rc = call(o->h, L, 1);
    if (rc != CALL_OK) {
        fail_call(o, L, rc, what);
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
    o.proj = find_proj(h, projection);
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
    if (run(h, &o) != 0)
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
    t = rawfield(L, -1, "reset");
    if (t == LUA_TSTRING) {
        lua_createtable(L, 1, 0);
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
    } else if (t == LUA_TFUNCTION) {
        rc = call(o->h, L, 0);
        if (rc != CALL_OK) {
            fail_call(o, L, rc, "reset");
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
    evl_buf_free(&s->text);
    memset(s, 0, sizeof *s);
}
