/*
 * luaapi.h - the `evlua` table that C provides to Lua scripts:
 *
 *   evlua.uuid()                  -> UUIDv7 string (RFC 9562)
 *   evlua.now()                   -> RFC 3339 UTC time with milliseconds
 *   evlua.json.encode/decode/array, evlua.json.null (from json.h)
 *   evlua.null                    -> the JSON null sentinel
 *   evlua.log(level, msg, fields) -> one logfmt line through log.h
 *
 * core/lua/API.md documents every function of the table for script
 * authors; keep the two in step (a spec checks it).
 *
 * This module only builds the table. It does not sandbox, load scripts or
 * limit anything: that is luahost's job, which gives each script its own
 * copy of the table (so evlua.log can name the script). The same entry
 * point serves the loadable Lua module used by busted specs.
 *
 * Uses json.h, log.h, getrandom(2), C11 atomics and the Lua C API.
 *
 * @locality any thread, each on its own lua_State.
 */
#ifndef EVL_LUAAPI_H
#define EVL_LUAAPI_H

#include <lua.h>

/* Push a new evlua table onto L. script names the script that will use
 * it: evlua.log adds it as the field script=NAME (NULL or "" omits the
 * field). The copy is made, so script need not outlive the call.
 * Raises a Lua error only on memory exhaustion of L.
 */
void evl_luaapi_push(lua_State *L, const char *script);

/* lua_CFunction form of evl_luaapi_push(L, NULL): pushes the table and
 * returns 1. Usable as a module opener (luaopen_evlua can be this). */
int evl_luaapi_open(lua_State *L);

/* Write a fresh UUIDv7 in its 36-character text form plus NUL into
 * out[37]: 48 bits of Unix milliseconds, version 7, a 12-bit counter
 * (RFC 9562 section 6.2 method 1: seeded randomly each millisecond,
 * incremented within one, carried into the timestamp when it overflows),
 * the variant, and 62 random bits. Values from one process are strictly
 * increasing. Random bytes come from getrandom(2) through a per-thread
 * pool (not refilled across fork(): do not fork and keep generating).
 * Returns 0, or -1 with errno set when getrandom(2) fails. For C callers
 * (envelope ids) and the Lua binding alike. */
int evl_luaapi_uuid7(char out[37]);

/* Write the current UTC time as "2026-11-28T17:55:11.123Z" plus NUL into
 * out[25]. */
void evl_luaapi_now(char out[25]);

#endif
