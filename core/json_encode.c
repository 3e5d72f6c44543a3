/*
 * json_encode.c - Lua values to JSON text (see json.h for the rules; the
 * decoder is json.c).
 *
 * The encoder walks the value depth first and appends straight to an
 * evl_buf. It calls no Lua function that can raise: the stack is grown
 * with lua_checkstack, tables are read with lua_next/lua_rawget (no
 * metamethods, so no Lua code runs and nothing can change the table
 * meanwhile), and lua_tolstring is only called on values that are already
 * strings (on a number it would convert the key in place and break
 * lua_next). Object keys are sorted, so equal tables encode equally;
 * errors name the path of the bad value.
 */
#include "json.h"
#include "json_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

/* Registry key of the encoder's meter (a light userdata), if any. */
static const char meter_key = 'm';

void evl_json_set_meter(lua_State *L, const evl_json_meter *meter)
{
    if (meter)
        lua_pushlightuserdata(L, (void *)meter);
    else
        lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &meter_key);
}

/* The encoder stops at this many bytes of output. The buffer lives on the
 * C heap, outside the capped Lua allocator, and a small Lua value can
 * stand for a huge text (x = {x, x} repeated 60 times is 2^60 elements):
 * without a bound a script could make the process abort. */
#define MAX_ENCODED ((size_t)64 << 20)

/* ------------------------------------------------------------------ */
/* Encoding                                                             */

/* How a value inside an open table is reached: by key or by index. */
typedef struct step {
    const char *key; /* NULL for an array index; points into a Lua string
                        kept on the stack while the step is current */
    size_t keylen;
    lua_Integer index;
} step;

typedef struct enc {
    lua_State *L;
    evl_buf *out;
    size_t limit; /* out->len may not grow past this */
    char *err;
    size_t errlen;
    int mt;    /* stack index of the array marker metatable, or of nil */
    int depth; /* tables open */
    const void *open[EVL_JSON_MAX_DEPTH]; /* tables on the path: cycles */
    step path[EVL_JSON_MAX_DEPTH];        /* path[d]: the child of open[d] */
    const evl_json_meter *meter;          /* or NULL */
    size_t nodes, metered_len; /* since the last charge; out->len then */
} enc;

typedef struct skey {
    const char *p;
    size_t len;
    int slot; /* stack index of the key string */
} skey;

static int is_ident(const char *p, size_t n)
{
    if (n == 0 || n > 64 || is_digit((unsigned char)p[0]))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned c = (unsigned char)p[i];
        if (!(is_digit(c) || c == '_' ||
              ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')))
            return 0;
    }
    return 1;
}

/* Write one path step ("name", ".name", "[3]", ["odd key"]) into dst of
 * cap bytes; returns its length. Long keys are cut, odd bytes escaped. */
static size_t format_step(char *dst, size_t cap, const step *sp, int first)
{
    size_t n = 0;
    if (!sp->key)
        return (size_t)snprintf(dst, cap, "[%lld]", (long long)sp->index);
    if (is_ident(sp->key, sp->keylen))
        return (size_t)snprintf(dst, cap, "%s%.*s", first ? "" : ".",
                                (int)sp->keylen, sp->key);
    const unsigned char *p = (const unsigned char *)sp->key;
    n += (size_t)snprintf(dst + n, cap - n, "[\"");
    for (size_t i = 0; i < sp->keylen;) {
        size_t q = p[i] >= 0x80 ? utf8_seq(p + i, sp->keylen - i) : 1;
        if (i >= 48 || n + 12 >= cap) {
            n += (size_t)snprintf(dst + n, cap - n, "...");
            break;
        }
        if (q > 1) {
            memcpy(dst + n, p + i, q);
            n += q;
            i += q;
        } else if (p[i] < 0x20 || p[i] >= 0x7F || p[i] == '"' || p[i] == '\\') {
            n += (size_t)snprintf(dst + n, cap - n, "\\x%02X", p[i++]);
        } else {
            dst[n++] = (char)p[i++];
        }
    }
    n += (size_t)snprintf(dst + n, cap - n, "\"]");
    return n;
}

/* Report an error at the current path: "data.items[3]: <message>". A
 * deep path is shortened to its end: "...[1][1]: nesting deeper...". */
static evl_err fail(enc *e, const char *fmt, ...)
{
    char path[240], one[80];
    size_t start = sizeof path - 1, n = 0;
    int elided = 0;
    va_list ap;

    if (!e->err || e->errlen == 0)
        return EVL_EPERMANENT;
    path[start] = '\0';
    for (int d = e->depth - 1; d >= 0; d--) {
        size_t k = format_step(one, sizeof one, &e->path[d], d == 0);
        if (k >= start - 3) { /* keep room for "..." */
            elided = 1;
            break;
        }
        start -= k;
        memcpy(path + start, one, k);
    }
    if (e->depth > 0) {
        const char *p = path + start;
        if (elided && *p == '.')
            p++;
        n = (size_t)snprintf(e->err, e->errlen, "%s%s: ", elided ? "..." : "",
                             p);
    }
    if (n < e->errlen) {
        va_start(ap, fmt);
        vsnprintf(e->err + n, e->errlen - n, fmt, ap);
        va_end(ap);
    }
    utf8_trim(e->err);
    return EVL_EPERMANENT;
}

static evl_err put_string(enc *e, const char *s, size_t len, const char *what)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    evl_buf *b = e->out;
    size_t start = 0, i = 0;

    if (b->len > e->limit || len > e->limit - b->len)
        return fail(e, "JSON text longer than %zu bytes", MAX_ENCODED);
    putc1(b, '"');
    while (i < len) {
        if (len - i >= 8 && plain8(p + i)) {
            i += 8;
            continue;
        }
        unsigned c = p[i];
        if (c >= 0x80) {
            size_t q = utf8_seq(p + i, len - i);
            if (!q)
                return fail(e, "%s is not valid UTF-8 (bad byte at offset %zu)",
                            what, i);
            i += q;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        put(b, p + start, i - start);
        start = ++i;
        switch (c) {
        case '"': put(b, "\\\"", 2); break;
        case '\\': put(b, "\\\\", 2); break;
        case '\b': put(b, "\\b", 2); break;
        case '\f': put(b, "\\f", 2); break;
        case '\n': put(b, "\\n", 2); break;
        case '\r': put(b, "\\r", 2); break;
        case '\t': put(b, "\\t", 2); break;
        case 0:
            return fail(e,
                        "%s contains a NUL byte (offset %zu): \\u0000 is "
                        "not supported",
                        what, i - 1);
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(b, u, 6);
        }
        }
    }
    put(b, p + start, i - start);
    putc1(b, '"');
    return EVL_OK;
}

static evl_err put_number(enc *e, int idx)
{
    lua_State *L = e->L;
    char tmp[32];
    size_t n;

    if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        if (v > MAX_EXACT_INT || v < -MAX_EXACT_INT)
            return fail(e,
                        "integer %lld is outside +-2^53 (I-JSON): send it "
                        "as a string",
                        (long long)v);
        uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        n = sizeof tmp;
        do
            tmp[--n] = (char)('0' + u % 10);
        while (u /= 10);
        if (v < 0)
            tmp[--n] = '-';
        put(e->out, tmp + n, sizeof tmp - n);
        return EVL_OK;
    }
    lua_Number d = lua_tonumber(L, idx);
    if (isnan(d))
        return fail(e, "cannot encode NaN as JSON");
    if (isinf(d))
        return fail(e, "cannot encode %s as JSON", d > 0 ? "inf" : "-inf");
    n = (size_t)snprintf(tmp, sizeof tmp, "%.17g", (double)d);
    /* "1" would come back as an integer: make it "1.0" ("-0" -> "-0.0"). */
    if (!memchr(tmp, '.', n) && !memchr(tmp, 'e', n)) {
        tmp[n++] = '.';
        tmp[n++] = '0';
    }
    put(e->out, tmp, n);
    return EVL_OK;
}

static int skey_cmp(const void *a, const void *b)
{
    const skey *x = a, *y = b;
    int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static evl_err encode_value(enc *e, int idx);

/* The keys of a table being encoded: how many integer keys, their range,
 * and how many string keys. */
typedef struct shape {
    lua_Integer nint, imin, imax;
    size_t nstr;
} shape;

/* Read the keys of the table at t into sh, pushing a copy of each string
 * key (so pointers to it stay valid while the table is written). A key
 * JSON cannot have is an error. */
static evl_err scan_keys(enc *e, int t, shape *sh)
{
    lua_State *L = e->L;
    int keytype;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1); /* the value; the key stays for lua_next */
        keytype = lua_type(L, -1);
        if (keytype == LUA_TSTRING) {
            if (!lua_checkstack(L, 4))
                return fail(e, "cannot encode: table too large for the Lua "
                               "stack");
            lua_pushvalue(L, -1); /* the copy below is kept */
            sh->nstr++;
        } else if (lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);
            if (sh->nint == 0 || k < sh->imin)
                sh->imin = k;
            if (sh->nint == 0 || k > sh->imax)
                sh->imax = k;
            sh->nint++;
        } else if (keytype == LUA_TNUMBER) {
            return fail(e,
                        "table has a float key (%.17g): JSON object keys "
                        "must be strings",
                        (double)lua_tonumber(L, -1));
        } else if (keytype == LUA_TBOOLEAN) {
            return fail(e,
                        "table has a boolean key (%s): JSON object keys "
                        "must be strings",
                        lua_toboolean(L, -1) ? "true" : "false");
        } else {
            return fail(e,
                        "table has a %s key: JSON object keys must be "
                        "strings",
                        lua_typename(L, keytype));
        }
    }
    return EVL_OK;
}

/* Is a table of these keys (marked: with the array marker) an array
 * 1..n or an object? Anything else is an error. */
static evl_err check_shape(enc *e, const shape *sh, int marked)
{
    if (sh->nint > 0 && sh->nstr > 0)
        return fail(e, "table mixes integer and string keys: JSON needs an "
                       "array or an object");
    if (marked && sh->nstr > 0)
        return fail(e, "table marked as an array has string keys");
    if (sh->nint > 0 && sh->imin < 1)
        return fail(e, "table has the integer key %lld: arrays start at 1",
                    (long long)sh->imin);
    if (sh->nint > 0 && sh->imax != sh->nint)
        return fail(e,
                    "sparse array (key %lld but %lld elements): JSON "
                    "arrays have no holes",
                    (long long)sh->imax, (long long)sh->nint);
    return EVL_OK;
}

/* The elements 1..n of the table at t; sp is its step of the path. */
static evl_err encode_array(enc *e, int t, lua_Integer n, step *sp)
{
    lua_State *L = e->L;
    evl_err rc;
    putc1(e->out, '[');
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1)
            putc1(e->out, ',');
        sp->key = NULL;
        sp->index = i;
        lua_rawgeti(L, t, i);
        rc = encode_value(e, lua_gettop(L));
        lua_pop(L, 1);
        if (rc != EVL_OK)
            return rc;
    }
    putc1(e->out, ']');
    return EVL_OK;
}

/* Tables with at most this many keys sort them on the C stack, by
 * insertion. */
#define SMALL_KEYS 16

/* Sort keys[0..n) by their bytes. */
static void sort_keys(skey *keys, size_t n)
{
    if (n > SMALL_KEYS) {
        qsort(keys, n, sizeof *keys, skey_cmp);
        return;
    }
    /* insertion sort: few keys, no call per comparison */
    for (size_t i = 1; i < n; i++) {
        skey k = keys[i];
        size_t j = i;
        for (; j > 0 && skey_cmp(&keys[j - 1], &k) > 0; j--)
            keys[j] = keys[j - 1];
        keys[j] = k;
    }
}

/* The members of the table at t, whose nstr string keys are on the stack
 * from base + 1, in key order; sp is its step of the path. */
static evl_err encode_object(enc *e, int t, int base, size_t nstr, step *sp)
{
    lua_State *L = e->L;
    skey small[SMALL_KEYS], *keys = small;
    evl_err rc = EVL_OK;
    if (nstr > sizeof small / sizeof small[0])
        keys = evl_xmalloc(nstr * sizeof *keys);
    for (size_t i = 0; i < nstr; i++) {
        keys[i].slot = base + 1 + (int)i;
        keys[i].p = lua_tolstring(L, keys[i].slot, &keys[i].len);
    }
    sort_keys(keys, nstr);
    putc1(e->out, '{');
    for (size_t i = 0; i < nstr; i++) {
        if (i > 0)
            putc1(e->out, ',');
        sp->key = keys[i].p;
        sp->keylen = keys[i].len;
        if ((rc = put_string(e, keys[i].p, keys[i].len, "key")) != EVL_OK)
            goto out;
        putc1(e->out, ':');
        lua_pushvalue(L, keys[i].slot);
        lua_rawget(L, t);
        rc = encode_value(e, lua_gettop(L));
        lua_pop(L, 1);
        if (rc != EVL_OK)
            goto out;
    }
    putc1(e->out, '}');
out:
    if (keys != small)
        free(keys);
    return rc;
}

/* The table at absolute index t. Its string keys are copied to the top of
 * the stack while it is written, so the pointers kept for sorting and for
 * error paths stay valid (no string pointer outlives its stack slot). */
static evl_err encode_table(enc *e, int t)
{
    lua_State *L = e->L;
    const void *self = lua_topointer(L, t);
    int base = lua_gettop(L), marked = 0;
    shape sh = {0, 0, 0, 0};
    evl_err rc;

    if (e->depth == EVL_JSON_MAX_DEPTH)
        return fail(e, "nesting deeper than %d", EVL_JSON_MAX_DEPTH);
    for (int d = 0; d < e->depth; d++)
        if (e->open[d] == self)
            return fail(e, "cannot encode a cyclic table (it contains itself)");
    if (!lua_checkstack(L, 4))
        return fail(e, "cannot encode: Lua stack exhausted");
    if (lua_getmetatable(L, t)) {
        marked = lua_rawequal(L, -1, e->mt);
        lua_pop(L, 1);
    }
    if ((rc = scan_keys(e, t, &sh)) != EVL_OK ||
        (rc = check_shape(e, &sh, marked)) != EVL_OK)
        goto out;
    e->open[e->depth++] = self;
    step *sp = &e->path[e->depth - 1];
    if (sh.nint > 0 || marked)
        rc = encode_array(e, t, sh.nint, sp);
    else
        rc = encode_object(e, t, base, sh.nstr, sp);
    e->depth--;
out:
    lua_settop(L, base);
    return rc;
}

static evl_err encode_value(enc *e, int idx)
{
    lua_State *L = e->L;
    size_t len;
    const char *s;

    if (e->out->len > e->limit)
        return fail(e, "JSON text longer than %zu bytes", MAX_ENCODED);
    if (e->meter && ++e->nodes >= EVL_JSON_METER_NODES) {
        size_t bytes = e->out->len - e->metered_len;
        char why[160];
        e->metered_len = e->out->len;
        if (e->meter->charge(L, e->nodes + bytes / 16, why, sizeof why))
            return fail(e, "%s", why);
        e->nodes = 0;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put(e->out, "null", 4); return EVL_OK;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            put(e->out, "true", 4);
        else
            put(e->out, "false", 5);
        return EVL_OK;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx))
            return fail(e, "cannot encode a light userdata as JSON");
        put(e->out, "null", 4);
        return EVL_OK;
    case LUA_TNUMBER: return put_number(e, idx);
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        return put_string(e, s, len, "string");
    case LUA_TTABLE: return encode_table(e, idx);
    default:
        return fail(e, "cannot encode a %s as JSON",
                    lua_typename(L, lua_type(L, idx)));
    }
}

evl_err evl_json_encode(lua_State *L, int idx, evl_buf *out, char *err,
                        size_t errlen)
{
    enc e;
    int top = lua_gettop(L);
    size_t len0 = out->len;
    evl_err rc;

    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 8))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "cannot encode: Lua stack exhausted");
    e.L = L;
    e.out = out;
    e.limit = len0 + MAX_ENCODED;
    e.err = err;
    e.errlen = errlen;
    e.depth = 0;
    e.nodes = 0;
    e.metered_len = len0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &meter_key);
    e.meter = lua_touserdata(L, -1);
    lua_pop(L, 1);
    /* nil until the first array() or decode: then no table is marked */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &evl_json_array_mt_key);
    e.mt = lua_gettop(L);

    rc = encode_value(&e, idx);
    lua_settop(L, top);
    if (rc != EVL_OK)
        out->len = len0;
    return rc;
}
