/*
 * verify_diff.c - the JSON diff of `evlua verify` (verify_int.h): both
 * texts are decoded with json.h (the one JSON reader, so a diff sees
 * exactly what the scripts see) and walked side by side on the Lua
 * stack; a value that differs is written back with json.h's encoder.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "envelope.h"
#include "json.h"
#include "verify_int.h"

typedef struct walk {
    lua_State *L;
    evl_buf path;
    size_t max;
    vf_diff *d;
    int mt; /* stack index of the array marker (or nil) */
} walk;

void vf_diff_free(vf_diff *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].path);
        free(d->v[i].old);
        free(d->v[i].new_);
    }
    free(d->v);
    memset(d, 0, sizeof *d);
}

/* JSON text of the value at idx (NULL: idx 0, absent). */
static char *text_of(lua_State *L, int idx)
{
    evl_buf b = {0};
    char err[EVL_ERRLEN];
    if (idx == 0)
        return NULL;
    /* the value came from decode, so it encodes */
    if (evl_json_encode(L, idx, &b, err, sizeof err) != EVL_OK) {
        evl_buf_free(&b);
        return evl_xstrdup("?");
    }
    evl_buf_putc(&b, '\0');
    return b.data;
}

static void add(walk *w, int a, int b)
{
    vf_diff *d = w->d;
    d->total++;
    if (d->n >= w->max)
        return;
    d->v = evl_xrealloc(d->v, sizeof *d->v * (d->n + 1));
    vf_change *c = &d->v[d->n++];
    c->path = evl_xmalloc(w->path.len + 1);
    memcpy(c->path, w->path.data ? w->path.data : "", w->path.len);
    c->path[w->path.len] = '\0';
    c->old = text_of(w->L, a);
    c->new_ = text_of(w->L, b);
}

/* 'a' array, 'o' object, else the Lua type as a letter class. */
static int kind(walk *w, int idx)
{
    lua_State *L = w->L;
    switch (lua_type(L, idx)) {
    case LUA_TTABLE: {
        int arr = 0;
        if (lua_getmetatable(L, idx)) {
            arr = lua_rawequal(L, -1, w->mt);
            lua_pop(L, 1);
        }
        return arr ? 'a' : 'o';
    }
    case LUA_TNUMBER: return lua_isinteger(L, idx) ? 'i' : 'f';
    case LUA_TSTRING: return 's';
    case LUA_TBOOLEAN: return 'b';
    default: return 'n'; /* evlua.null */
    }
}

static int plain_key(const char *k)
{
    if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || *k == '_'))
        return 0;
    for (; *k; k++)
        if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') ||
              (*k >= '0' && *k <= '9') || *k == '_'))
            return 0;
    return 1;
}

static void compare(walk *w, int a, int b);

static void push_key(walk *w, const char *k)
{
    if (plain_key(k)) {
        if (w->path.len > 0)
            evl_buf_putc(&w->path, '.');
        evl_buf_puts(&w->path, k);
    } else {
        evl_buf_putc(&w->path, '[');
        evl_envelope_put_string(&w->path, k, strlen(k));
        evl_buf_putc(&w->path, ']');
    }
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* Keys of the objects at a and b (decoded: string keys only), sorted,
 * each once. Returns owned array of pointers into the Lua strings (valid
 * while the tables live on the stack). */
static const char **keys(lua_State *L, int a, int b, size_t *n)
{
    const char **k = NULL;
    size_t cap = 0, m = 0;
    int t[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        lua_pushnil(L);
        while (lua_next(L, t[i])) {
            lua_pop(L, 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                continue;
            if (m == cap) {
                cap = cap ? 2 * cap : 16;
                k = evl_xrealloc(k, sizeof *k * cap);
            }
            k[m++] = lua_tostring(L, -1);
        }
    }
    if (m > 1)
        qsort(k, m, sizeof *k, cmp_str);
    size_t o = 0;
    for (size_t i = 0; i < m; i++)
        if (o == 0 || strcmp(k[o - 1], k[i]) != 0)
            k[o++] = k[i];
    *n = o;
    return k;
}

static void compare_objects(walk *w, int a, int b)
{
    lua_State *L = w->L;
    size_t n, mark = w->path.len;
    const char **k = keys(L, a, b, &n);
    luaL_checkstack(L, 4, "diff");
    for (size_t i = 0; i < n; i++) {
        int ta = lua_getfield(L, a, k[i]), ia = lua_gettop(L);
        int tb = lua_getfield(L, b, k[i]), ib = lua_gettop(L);
        push_key(w, k[i]);
        if (ta == LUA_TNIL || tb == LUA_TNIL) {
            if (ta != tb)
                add(w, ta == LUA_TNIL ? 0 : ia, tb == LUA_TNIL ? 0 : ib);
        } else {
            compare(w, ia, ib);
        }
        w->path.len = mark;
        lua_pop(L, 2);
    }
    free(k);
}

static void compare_arrays(walk *w, int a, int b)
{
    lua_State *L = w->L;
    lua_Integer na = (lua_Integer)lua_rawlen(L, a),
                nb = (lua_Integer)lua_rawlen(L, b);
    size_t mark = w->path.len;
    luaL_checkstack(L, 4, "diff");
    for (lua_Integer i = 1; i <= (na > nb ? na : nb); i++) {
        char ix[32];
        int ia = 0, ib = 0;
        if (i <= na) {
            lua_rawgeti(L, a, i);
            ia = lua_gettop(L);
        }
        if (i <= nb) {
            lua_rawgeti(L, b, i);
            ib = lua_gettop(L);
        }
        snprintf(ix, sizeof ix, "[%lld]", (long long)i);
        evl_buf_puts(&w->path, ix);
        if (ia && ib)
            compare(w, ia, ib);
        else
            add(w, ia, ib);
        w->path.len = mark;
        lua_pop(L, (ia != 0) + (ib != 0));
    }
}

static void compare(walk *w, int a, int b)
{
    lua_State *L = w->L;
    int ka = kind(w, a), kb = kind(w, b);
    if (ka != kb) {
        add(w, a, b);
        return;
    }
    switch (ka) {
    case 'o': compare_objects(w, a, b); break;
    case 'a': compare_arrays(w, a, b); break;
    case 'n': break;
    default:
        if (!lua_rawequal(L, a, b))
            add(w, a, b);
    }
}

evl_err vf_diff_json(lua_State *L, const char *a, size_t alen, const char *b,
                     size_t blen, size_t max, vf_diff *d, char *err,
                     size_t errlen)
{
    int top = lua_gettop(L);
    char e[EVL_ERRLEN];
    walk w = {L, {0}, max, d, 0};
    if (evl_json_decode(L, a, alen, e, sizeof e) != EVL_OK)
        return evl_seterr(err, errlen, EVL_EPERMANENT, "old: %s", e);
    if (evl_json_decode(L, b, blen, e, sizeof e) != EVL_OK) {
        lua_settop(L, top);
        return evl_seterr(err, errlen, EVL_EPERMANENT, "new: %s", e);
    }
    evl_json_push_array_mt(L);
    w.mt = lua_gettop(L);
    compare(&w, top + 1, top + 2);
    evl_buf_free(&w.path);
    lua_settop(L, top);
    return EVL_OK;
}
