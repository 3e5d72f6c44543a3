/*
 * luaapi_sql.c - evlua.upsert and evlua.delete: declarative projection
 * statements (luaapi.h gives the contract, core/lua/API.md the script
 * author's view).
 *
 * The idea: an upsert or a delete is an ordinary statement {sql,
 * params...} (so the busted toolkit, the REPL and a per-row send see and
 * run plain SQL: `INSERT INTO "t" ("id", "name") VALUES ($1, $2) ON
 * CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"`) that also
 * carries, in its metatable, what it means: the operation, the table, the
 * columns in parameter order and how many of them are the key. The
 * projector reads that (luaproj.c) to coalesce every row of one shape in a
 * batch into one multi-row statement (proj_upsert.c).
 *
 * Columns come in a fixed order whatever Lua's table order: the key
 * columns as the key option lists them, then the others sorted by name,
 * so equal shapes give equal SQL text. Identifiers are always quoted;
 * values are always parameters.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "buf.h"
#include "luaapi.h"

#define MAX_COLUMNS 256

/* Append identifier s quoted ("" doubles a quote). */
static void put_ident(evl_buf *b, const char *s, size_t n)
{
    evl_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"')
            evl_buf_putc(b, '"');
        evl_buf_putc(b, s[i]);
    }
    evl_buf_putc(b, '"');
}

void evl_luaapi_sql_table(evl_buf *b, const char *table)
{
    const char *dot = strchr(table, '.');
    if (dot) {
        put_ident(b, table, (size_t)(dot - table));
        evl_buf_putc(b, '.');
        table = dot + 1;
    }
    put_ident(b, table, strlen(table));
}

void evl_luaapi_sql_column(evl_buf *b, const char *col)
{
    put_ident(b, col, strlen(col));
}

static void put_param(evl_buf *b, size_t i)
{
    char num[24];
    int n = snprintf(num, sizeof num, "$%zu", i);
    evl_buf_put(b, num, (size_t)n);
}

void evl_luaapi_sql_row(evl_buf *b, int op, const char *table,
                        const char *const *cols, size_t ncols, size_t nkey)
{
    b->len = 0;
    if (op == EVL_SQL_DELETE) {
        evl_buf_puts(b, "DELETE FROM ");
        evl_luaapi_sql_table(b, table);
        evl_buf_puts(b, " WHERE ");
        for (size_t i = 0; i < ncols; i++) {
            if (i)
                evl_buf_puts(b, " AND ");
            evl_luaapi_sql_column(b, cols[i]);
            evl_buf_puts(b, " = ");
            put_param(b, i + 1);
        }
    } else {
        evl_buf_puts(b, "INSERT INTO ");
        evl_luaapi_sql_table(b, table);
        evl_buf_puts(b, " (");
        for (size_t i = 0; i < ncols; i++) {
            if (i)
                evl_buf_puts(b, ", ");
            evl_luaapi_sql_column(b, cols[i]);
        }
        evl_buf_puts(b, ") VALUES (");
        for (size_t i = 0; i < ncols; i++) {
            if (i)
                evl_buf_puts(b, ", ");
            put_param(b, i + 1);
        }
        evl_buf_puts(b, ")");
        evl_luaapi_sql_conflict(b, cols, ncols, nkey);
    }
    evl_buf_putc(b, '\0');
    b->len--;
}

void evl_luaapi_sql_conflict(evl_buf *b, const char *const *cols, size_t ncols,
                             size_t nkey)
{
    evl_buf_puts(b, " ON CONFLICT (");
    for (size_t i = 0; i < nkey; i++) {
        if (i)
            evl_buf_puts(b, ", ");
        evl_luaapi_sql_column(b, cols[i]);
    }
    if (nkey == ncols) {
        evl_buf_puts(b, ") DO NOTHING");
        return;
    }
    evl_buf_puts(b, ") DO UPDATE SET ");
    for (size_t i = nkey; i < ncols; i++) {
        if (i > nkey)
            evl_buf_puts(b, ", ");
        evl_luaapi_sql_column(b, cols[i]);
        evl_buf_puts(b, " = EXCLUDED.");
        evl_luaapi_sql_column(b, cols[i]);
    }
}

/* ---- the Lua functions --------------------------------------------------- */

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A name (table or column): a non-empty string without NUL bytes. */
static const char *check_name(lua_State *L, int idx, const char *fn,
                              const char *what)
{
    size_t n;
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: %s is a %s, expected a non-empty string", fn, what,
                   luaL_typename(L, idx));
    const char *s = lua_tolstring(L, idx, &n);
    if (n == 0 || memchr(s, '\0', n))
        luaL_error(L, "%s: %s is %s, expected a non-empty string", fn, what,
                   n == 0 ? "empty" : "a string with a NUL byte");
    return s;
}

static void check_table_name(lua_State *L, const char *fn)
{
    const char *t = check_name(L, 1, fn, "the table name");
    const char *dot = strchr(t, '.');
    if (dot && (dot == t || dot[1] == '\0' || strchr(dot + 1, '.')))
        luaL_error(L,
                   "%s: table name '%s' is not NAME or SCHEMA.NAME (a dot "
                   "separates the schema)",
                   fn, t);
}

/* The columns of the row at idx, sorted, into cols; returns how many. */
static size_t row_columns(lua_State *L, int idx, const char *fn,
                          const char *what, const char **cols)
{
    size_t n = 0;
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: %s is a %s, expected a table {column = value}", fn,
                   what, luaL_typename(L, idx));
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            const char *type = luaL_typename(L, -2);
            luaL_error(L, "%s: %s has a %s key (%s), expected column names", fn,
                       what, type, luaL_tolstring(L, -2, NULL));
        }
        if (n == MAX_COLUMNS)
            luaL_error(L, "%s: %s has more than %d columns", fn, what,
                       MAX_COLUMNS);
        size_t len;
        const char *c = lua_tolstring(L, -2, &len);
        if (len == 0 || memchr(c, '\0', len))
            luaL_error(L, "%s: %s has a column name that is %s", fn, what,
                       len == 0 ? "empty" : "a string with a NUL byte");
        cols[n++] = c; /* the key string lives as long as the row */
    }
    if (n == 0)
        luaL_error(L, "%s: %s is empty, expected at least one column", fn,
                   what);
    qsort(cols, n, sizeof *cols, str_cmp);
    return n;
}

/* The metatables of the shapes seen, cached (upvalue 1, shared by upsert
 * and delete: key "op nkey \0 table \0 col \0 ..." -> metatable; [1] the
 * count): a handler's shape comes again and again, and its SQL text and
 * metatable need building once. Emptied past MAX_SHAPES. */
#define MAX_SHAPES 256

/* Push the metatable of the shape: __name, __metatable, table, nkey,
 * columns, and sql (the single-row statement). The table name is at
 * index 1. */
static void push_meta(lua_State *L, int op, const char **cols, size_t ncols,
                      size_t nkey)
{
    const char *table = lua_tostring(L, 1);
    luaL_Buffer kb;
    char nk[24];
    luaL_buffinit(L, &kb);
    snprintf(nk, sizeof nk, "%c%zu", op == EVL_SQL_DELETE ? 'd' : 'u', nkey);
    luaL_addlstring(&kb, nk, strlen(nk) + 1);
    luaL_addlstring(&kb, table, strlen(table) + 1);
    for (size_t i = 0; i < ncols; i++)
        luaL_addlstring(&kb, cols[i], strlen(cols[i]) + 1);
    luaL_pushresult(&kb);
    int key = lua_gettop(L);
    lua_pushvalue(L, key);
    if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TTABLE) {
        lua_remove(L, key);
        return;
    }
    lua_pop(L, 1);
    evl_buf b = {0};
    evl_luaapi_sql_row(&b, op, table, cols, ncols, nkey);
    lua_createtable(L, 0, 7);
    lua_pushlstring(L, b.data, b.len);
    evl_buf_free(&b);
    lua_setfield(L, -2, "sql");
    lua_pushstring(L, op == EVL_SQL_DELETE ? "evlua.delete" : "evlua.upsert");
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0); /* getmetatable() says false: not to be copied */
    lua_setfield(L, -2, "__metatable");
    lua_pushstring(L, table);
    lua_setfield(L, -2, "table");
    lua_pushinteger(L, (lua_Integer)nkey);
    lua_setfield(L, -2, "nkey");
    lua_createtable(L, (int)ncols, 0);
    for (size_t i = 0; i < ncols; i++) {
        lua_pushstring(L, cols[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "columns");
    lua_rawgeti(L, lua_upvalueindex(1), 1);
    lua_Integer n = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (n >= MAX_SHAPES) { /* shapes made up on the fly: start again */
        lua_newtable(L);
        lua_replace(L, lua_upvalueindex(1));
        n = 0;
    }
    lua_pushinteger(L, n + 1);
    lua_rawseti(L, lua_upvalueindex(1), 1);
    lua_pushvalue(L, key);
    lua_pushvalue(L, -2);
    lua_rawset(L, lua_upvalueindex(1));
    lua_remove(L, key);
}

/* Build the statement: {sql, values...} with its meaning in the
 * metatable. cols[0..nkey) is the key. The row is at index 2. */
static int push_stmt(lua_State *L, int op, const char **cols, size_t ncols,
                     size_t nkey)
{
    push_meta(L, op, cols, ncols, nkey);
    int mt = lua_gettop(L);
    lua_createtable(L, (int)ncols + 1, 0);
    int t = lua_gettop(L);
    lua_getfield(L, mt, "sql");
    lua_rawseti(L, t, 1);
    for (size_t i = 0; i < ncols; i++) {
        lua_getfield(L, 2, cols[i]);
        lua_rawseti(L, t, (lua_Integer)i + 2);
    }
    lua_pushvalue(L, mt);
    lua_setmetatable(L, t);
    return 1;
}

/* evlua.upsert(table, row, {key = "id" | {"a", "b"}}) -> statement */
static int l_upsert(lua_State *L)
{
    static const char fn[] = "evlua.upsert";
    const char *cols[MAX_COLUMNS], *key[MAX_COLUMNS], *out[MAX_COLUMNS];
    size_t ncols, nkey = 0;
    check_table_name(L, fn);
    ncols = row_columns(L, 2, fn, "the row", cols);
    if (!lua_istable(L, 3))
        luaL_error(L,
                   "%s: the options are a %s, expected a table {key = "
                   "\"column\" or {\"a\", \"b\"}}",
                   fn, luaL_typename(L, 3));
    for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1))
        if (lua_type(L, -2) != LUA_TSTRING ||
            strcmp(lua_tostring(L, -2), "key") != 0)
            luaL_error(L, "%s: unknown option %s (the only one is key)", fn,
                       luaL_tolstring(L, -2, NULL));
    lua_getfield(L, 3, "key");
    int k = lua_gettop(L);
    if (lua_type(L, k) == LUA_TSTRING) {
        key[nkey++] = check_name(L, k, fn, "the key");
    } else if (lua_istable(L, k)) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, k);
        if (n == 0)
            luaL_error(L, "%s: the key is an empty list, expected column names",
                       fn);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, k, i);
            char what[40];
            snprintf(what, sizeof what, "key column %lld", (long long)i);
            const char *c = check_name(L, -1, fn, what);
            for (size_t j = 0; j < nkey; j++)
                if (strcmp(key[j], c) == 0)
                    luaL_error(L, "%s: key column '%s' is listed twice", fn, c);
            if (nkey == MAX_COLUMNS)
                luaL_error(L, "%s: the key has too many columns", fn);
            key[nkey++] = c; /* stays alive: the key table is on the stack */
            lua_pop(L, 1);
        }
    } else {
        luaL_error(L,
                   "%s: the key option is %s, expected a column name or a "
                   "list of them",
                   fn,
                   lua_isnil(L, k)
                       ? "missing"
                       : lua_pushfstring(L, "a %s", luaL_typename(L, k)));
    }
    /* the key columns first, in the key's order, then the rest */
    for (size_t j = 0; j < nkey; j++) {
        size_t i = 0;
        while (i < ncols && strcmp(cols[i], key[j]) != 0)
            i++;
        if (i == ncols)
            luaL_error(L, "%s: key column '%s' is not in the row", fn, key[j]);
        out[j] = key[j];
    }
    size_t n = nkey;
    for (size_t i = 0; i < ncols; i++) {
        int is_key = 0;
        for (size_t j = 0; j < nkey && !is_key; j++)
            is_key = strcmp(cols[i], key[j]) == 0;
        if (!is_key)
            out[n++] = cols[i];
    }
    return push_stmt(L, EVL_SQL_UPSERT, out, ncols, nkey);
}

/* evlua.delete(table, keyrow) -> statement */
static int l_delete(lua_State *L)
{
    static const char fn[] = "evlua.delete";
    const char *cols[MAX_COLUMNS];
    check_table_name(L, fn);
    size_t ncols = row_columns(L, 2, fn, "the key row", cols);
    if (!lua_isnone(L, 3))
        luaL_error(L, "%s: takes (table, keyrow), got a third argument", fn);
    return push_stmt(L, EVL_SQL_DELETE, cols, ncols, ncols);
}

void evl_luaapi_sql_push(lua_State *L)
{
    lua_newtable(L); /* the shapes' metatables, shared */
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_upsert, 1);
    lua_setfield(L, -3, "upsert");
    lua_pushcclosure(L, l_delete, 1);
    lua_setfield(L, -2, "delete");
}
