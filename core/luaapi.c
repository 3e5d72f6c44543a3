/*
 * luaapi.c - the evlua table (see luaapi.h).
 *
 * UUIDv7 monotonicity: one process-wide 64-bit word holds the last value
 * issued as (milliseconds << 12 | counter). A new id takes the clock with
 * a random counter seed below 0x800 (so a millisecond has room for at
 * least 2048 increments), or last + 1 when that would not be larger; the
 * compare-and-swap makes it hold across threads. When the counter
 * overflows, the carry moves the timestamp a millisecond ahead of the
 * clock, which RFC 9562 allows; the clock catches up.
 */
#include "luaapi.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <lauxlib.h>

#include "json.h"
#include "log.h"

/* ---- random bytes ----------------------------------------------------- */

/* Per-thread pool: one getrandom(2) call per 25 ids instead of one each. */
static _Thread_local struct {
    unsigned char buf[256];
    size_t pos;
} pool = {.pos = 256};

static int random_bytes(unsigned char *out, size_t n)
{
    if (n > sizeof pool.buf)
        return -1;
    if (pool.pos + n > sizeof pool.buf) {
        size_t got = 0;
        while (got < sizeof pool.buf) {
            ssize_t r = getrandom(pool.buf + got, sizeof pool.buf - got, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return -1;
            got += (size_t)r;
        }
        pool.pos = 0;
    }
    memcpy(out, pool.buf + pool.pos, n);
    /* Used bytes are wiped so they never show up twice. */
    memset(pool.buf + pool.pos, 0, n);
    pool.pos += n;
    return 0;
}

/* ---- UUIDv7 ----------------------------------------------------------- */

static _Atomic uint64_t uuid_last; /* ms << 12 | counter of the last id */

int evl_luaapi_uuid7(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[10], b[16];
    struct timespec ts;
    uint64_t ms, seed, last, next;

    if (random_bytes(rnd, sizeof rnd) != 0)
        return -1;
    clock_gettime(CLOCK_REALTIME, &ts);
    ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)(ts.tv_nsec / 1000000);
    seed = ((uint64_t)rnd[0] << 8 | rnd[1]) & 0x7ff;
    last = atomic_load(&uuid_last);
    do {
        next = (ms << 12) | seed;
        if (next <= last)
            next = last + 1;
    } while (!atomic_compare_exchange_weak(&uuid_last, &last, next));

    ms = next >> 12;
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | ((next >> 8) & 0x0f));
    b[7] = (unsigned char)(next & 0xff);
    b[8] = (unsigned char)(0x80 | (rnd[2] & 0x3f));
    memcpy(b + 9, rnd + 3, 7);

    for (int i = 0, o = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 0x0f];
    }
    out[36] = '\0';
    return 0;
}

void evl_luaapi_now(char out[25])
{
    struct timespec ts;
    struct tm tm;
    unsigned ms;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    ms = (unsigned)(ts.tv_nsec / 1000000) % 1000u;
    if (strftime(out, 20, "%Y-%m-%dT%H:%M:%S", &tm) != 19) {
        strcpy(out, "0000-00-00T00:00:00.000Z"); /* year beyond 9999 */
        return;
    }
    snprintf(out + 19, 6, ".%03uZ", ms);
}

/* ---- bindings --------------------------------------------------------- */

/* evlua.uuid() -> string
 * A new UUIDv7 ("0190c1d2-7a3b-7c4d-8e5f-0123456789ab"), time-ordered. */
static int l_uuid(lua_State *L)
{
    char id[37];
    if (evl_luaapi_uuid7(id) != 0)
        return luaL_error(L, "evlua.uuid: getrandom failed: %s",
                          strerror(errno));
    lua_pushlstring(L, id, 36);
    return 1;
}

/* evlua.now() -> string
 * The current UTC time, RFC 3339 with milliseconds
 * ("2026-11-28T17:55:11.123Z"). */
static int l_now(lua_State *L)
{
    char ts[25];
    evl_luaapi_now(ts);
    lua_pushstring(L, ts);
    return 1;
}

/* Fields beyond this many are dropped: log.h takes a fixed argument list
 * and a log line is not worth an allocation. */
#define MAX_FIELDS 16

typedef struct field {
    const char *k, *v;
} field;

static int field_cmp(const void *a, const void *b)
{
    return strcmp(((const field *)a)->k, ((const field *)b)->k);
}

/* Push the log text of the value at idx: strings as they are, tables as
 * JSON (through the encode function at upvalue 2) or their tostring()
 * when they have no JSON form, evlua.null as "null", the rest through
 * tostring(). */
static const char *field_text(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        lua_pushvalue(L, idx);
        return lua_tostring(L, -1);
    }
    if (evl_json_is_null(L, idx)) {
        lua_pushliteral(L, "null");
        return lua_tostring(L, -1);
    }
    if (lua_type(L, idx) == LUA_TTABLE) {
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_pushvalue(L, idx);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
            return lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    return luaL_tolstring(L, idx, NULL);
}

/* evlua.log(level, msg [, fields]) -> nothing
 * level is "debug", "info", "warn" or "error"; fields a table of string
 * keys whose values are written as text (tables as JSON). The line gets
 * script=NAME of the calling script. At most 16 fields, in key order. */
static int l_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error",
                                         NULL};
    field f[MAX_FIELDS + 1];
    const char *kv[2 * (MAX_FIELDS + 1)];
    int lvl = luaL_checkoption(L, 1, NULL, levels);
    const char *msg = luaL_checkstring(L, 2);
    int nf = 0, first;

    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    if ((int)lvl < (int)evl_log_get_level())
        return 0;
    lua_settop(L, 3);
    if (lua_type(L, lua_upvalueindex(1)) == LUA_TSTRING) {
        f[nf].k = "script";
        f[nf++].v = lua_tostring(L, lua_upvalueindex(1));
    }
    first = nf;
    if (lua_istable(L, 3)) {
        luaL_checkstack(L, 3 * MAX_FIELDS + 8, "evlua.log");
        lua_pushnil(L);
        while (lua_next(L, 3) != 0) {
            /* key at -2, value at -1. A kept field leaves key, value and
             * its text on the stack (so the pointers stay valid) and
             * continues from a copy of the key. */
            if (lua_type(L, -2) == LUA_TSTRING && nf - first < MAX_FIELDS) {
                f[nf].k = lua_tostring(L, -2);
                f[nf].v = field_text(L, -1);
                lua_pushvalue(L, -3);
                nf++;
            } else {
                lua_pop(L, 1);
            }
        }
    }
    qsort(f + first, (size_t)(nf - first), sizeof *f, field_cmp);
    for (int i = 0; i < 2 * (MAX_FIELDS + 1); i++)
        kv[i] = NULL;
    for (int i = 0; i < nf; i++) {
        kv[2 * i] = f[i].k;
        kv[2 * i + 1] = f[i].v;
    }
    evl_log((evl_log_level)lvl, msg, kv[0], kv[1], kv[2], kv[3], kv[4], kv[5],
            kv[6], kv[7], kv[8], kv[9], kv[10], kv[11], kv[12], kv[13], kv[14],
            kv[15], kv[16], kv[17], kv[18], kv[19], kv[20], kv[21], kv[22],
            kv[23], kv[24], kv[25], kv[26], kv[27], kv[28], kv[29], kv[30],
            kv[31], kv[32], kv[33], (const char *)NULL);
    return 0;
}

void evl_luaapi_push(lua_State *L, const char *script)
{
    luaL_checkstack(L, 4, "evlua");
    lua_createtable(L, 0, 6);

    lua_pushcfunction(L, l_uuid);
    lua_setfield(L, -2, "uuid");
    lua_pushcfunction(L, l_now);
    lua_setfield(L, -2, "now");

    evl_json_open(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "json");

    /* evlua.log's upvalues: the script name, json.encode */
    if (script && *script)
        lua_pushstring(L, script);
    else
        lua_pushnil(L);
    lua_getfield(L, -2, "encode");
    lua_pushcclosure(L, l_log, 2);
    lua_setfield(L, -3, "log");
    lua_pop(L, 1); /* json table */

    evl_json_push_null(L);
    lua_setfield(L, -2, "null");

    evl_luaapi_sql_push(L);
}

int evl_luaapi_open(lua_State *L)
{
    evl_luaapi_push(L, NULL);
    return 1;
}
