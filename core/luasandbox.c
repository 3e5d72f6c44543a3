/*
 * luasandbox.c - what a script may do, and how much: the limits of a
 * host's Lua state and the sandbox every script runs in (luahost.h says
 * what they are; luahost_int.h how the host's files fit together).
 *
 * The idea: a script is untrusted code that shares the process with the
 * pipeline, so everything it can reach is listed in one data table (the
 * allow-list below), and everything that can cost without bound is
 * metered in one place: the allocator counts bytes, the count hook counts
 * instructions and watches the clock, and the wrappers charge what a
 * single C call does (pattern steps, string.rep, table loops, JSON) to
 * the same budget. A spent limit raises on every following instruction,
 * so no pcall in the script can swallow it.
 *
 * Calling a script function (lh_call) lives here too: it starts the
 * budget and turns how the call ended into CALL_OK / ERR / MEM / BUDGET.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>

#include "json.h"
#include "log.h"
#include "luaapi.h"
#include "luahost_int.h"
#include "pattern.h"

#define OUT_BYTES   8    /* bytes a library function makes per step */
#define MAX_PATTERN 4096 /* bytes of a pattern */

/* Registry keys (their addresses). */
static const char key_tmpl = 0;     /* sandbox template tables */
static const char key_loaded = 0;   /* require's cache */
static const char key_loading = 0;  /* marks a module being loaded */
static const char key_rejectmt = 0; /* metatable of ctx.reject results */
static const char key_reject = 0;   /* the ctx.reject function */

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

lua_State *lh_sandbox_open(evl_luahost *h)
{
    lua_State *L = lua_newstate(l_alloc, h);
    if (!L)
        return NULL;
    *(evl_luahost **)lua_getextraspace(L) = h;
    lua_atpanic(L, panic);
    lua_sethook(L, hook, LUA_MASKCOUNT, h->hook_step);
    evl_json_set_meter(L, &json_meter);
    return L;
}

/* ---- calling script functions ----------------------------------------- */

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

int lh_call(evl_luahost *h, lua_State *L, int nargs)
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
void lh_describe_failure(evl_luahost *h, lua_State *L, int rc,
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

void lh_setup_sandbox(lua_State *L)
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
void lh_push_env(lua_State *L, const char *name)
{
    int env, tmpl;
    luaL_checkstack(L, 10, "lh_push_env");
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
    lh_fnv_item(h, 'l', name, buf, len);
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
    lh_push_env(L, path);
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

void lh_push_reject(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_reject);
}

int lh_is_rejection(lua_State *L, int idx)
{
    int r;
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
        return 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_rejectmt);
    r = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return r;
}
