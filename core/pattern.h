/*
 * pattern.h - Lua 5.4 string patterns (string.find, match, gmatch, gsub)
 * that pay for their work as they go.
 *
 * Lua's own matcher backtracks, so one call can take time polynomial in
 * the subject's length (".-.-.-b" on 20,000 "a"s runs for minutes), and
 * the count hook never fires inside a C function. These functions give the
 * same results and the same error messages as the stock ones (the rules
 * of the Lua 5.4 manual, section 6.4.1: classes, sets, quantifiers,
 * anchors, captures, back-references, %b, %f; find's init and plain, gmatch's
 * init, gsub's replacement forms and max count), but every matching step
 * (one item tried at one position, one character compared or scanned, a
 * few bytes of output) is reported to a charge callback, which may raise
 * a Lua error to stop the call. Nothing is allocated outside Lua, so an
 * error raised from the callback leaks nothing.
 *
 * It does not: cap subject or pattern sizes (the caller does that), know
 * about budgets or clocks (the callback does), or register itself in any
 * table.
 *
 * Uses the Lua C API only.
 *
 * @locality any thread that owns the lua_State.
 */
#ifndef EVL_PATTERN_H
#define EVL_PATTERN_H

#include <stddef.h>

#include <lua.h>

/* Called with the number of steps spent since the last call (in batches
 * of about a thousand, and once with the rest before a function returns or
 * calls Lua code). It may raise a Lua error (lua_error, luaL_error) to
 * abort the match; NULL means free matching. */
typedef void (*evl_pattern_charge)(lua_State *L, size_t steps);

/* The bodies of string.find(s, pattern [, init [, plain]]),
 * string.match(s, pattern [, init]), string.gmatch(s, pattern [, init])
 * and string.gsub(s, pattern, repl [, n]): call them from a lua_CFunction
 * with the Lua arguments at stack index 1 and up, and return what they
 * return. The iterator that gmatch returns charges the same callback. */
int evl_pattern_find(lua_State *L, evl_pattern_charge charge);
int evl_pattern_match(lua_State *L, evl_pattern_charge charge);
int evl_pattern_gmatch(lua_State *L, evl_pattern_charge charge);
int evl_pattern_gsub(lua_State *L, evl_pattern_charge charge);

#endif
