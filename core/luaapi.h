/*
 * luaapi.h - the `evlua` table that C provides to Lua scripts:
 *
 *   evlua.uuid()                  -> UUIDv7 string (RFC 9562)
 *   evlua.now()                   -> RFC 3339 UTC time with milliseconds
 *   evlua.json.encode/decode/array, evlua.json.null (from json.h)
 *   evlua.null                    -> the JSON null sentinel
 *   evlua.log(level, msg, fields) -> one logfmt line through log.h
 *   evlua.upsert(table, row, {key = ...}), evlua.delete(table, keyrow)
 *                                 -> a projection statement that the
 *                                    projector may coalesce (luaapi_sql.c)
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

#include "buf.h"

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

/* ---- declarative statements (luaapi_sql.c) ------------------------------ */

/* evlua.upsert / evlua.delete return an ordinary statement {sql,
 * values...} whose metatable (__name "evlua.upsert" or "evlua.delete")
 * holds table (the name as given: NAME or SCHEMA.NAME), columns (the
 * column names in parameter order) and nkey (the first nkey columns are
 * the key; a delete's columns are all key). Arguments are checked
 * (a Lua error names what is wrong). */
enum { EVL_SQL_PLAIN = 0, EVL_SQL_UPSERT = 1, EVL_SQL_DELETE = 2 };

/* Set upsert and delete in the table on top of L. */
void evl_luaapi_sql_push(lua_State *L);

/* The single-row statement of an upsert or a delete into b (b->len
 * reset first; NUL-terminated, len without it):
 *   INSERT INTO "t" ("k", "a") VALUES ($1, $2)
 *     ON CONFLICT ("k") DO UPDATE SET "a" = EXCLUDED."a"
 *   (DO NOTHING when every column is key)
 *   DELETE FROM "t" WHERE "k" = $1 AND ... */
void evl_luaapi_sql_row(evl_buf *b, int op, const char *table,
                        const char *const *cols, size_t ncols, size_t nkey);
/* Append a table name (NAME or SCHEMA.NAME) or a column, quoted. */
void evl_luaapi_sql_table(evl_buf *b, const char *table);
void evl_luaapi_sql_column(evl_buf *b, const char *col);
/* Append " ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c, ..." (or DO
 * NOTHING). */
void evl_luaapi_sql_conflict(evl_buf *b, const char *const *cols, size_t ncols,
                             size_t nkey);

#endif
