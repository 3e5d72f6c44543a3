/*
 * json.c - exact conversion between JSON text and Lua values (see json.h).
 *
 * Decoding runs in two passes:
 *
 *   1. scan(): one pass over the text that checks all of it: the nesting
 *      depth (before anything recurses, so 10,000 brackets cost nothing),
 *      the number grammar ("01", "1." and "-.5" are not JSON), string
 *      escapes, raw control characters in strings, UTF-8 of the raw bytes,
 *      the pairing of \u surrogate escapes, and the grammar ("[1,}"). It
 *      converts every number from its own text, so integers stay exact,
 *      and counts the entries of every array and object.
 *   2. build() pushes the value onto the Lua stack straight from the text,
 *      which it may now trust: numbers come from step 1 in document order,
 *      tables are created at their final size, strings without escapes
 *      are pushed from the text itself. No tree, no C heap per value
 *      (cJSON's tree and its mallocs were most of the projector's
 *      decoding time).
 *
 * evl_json_members() uses the same scan to read a few top-level members
 * of an object without Lua (the projector's grouping).
 *
 * build() allocates Lua values, which raises on memory exhaustion. It runs
 * under lua_pcall, so the number and count lists (C heap) are freed before
 * the memory error is raised again: C called from Lua holds no malloc'd
 * memory across a call that can raise.
 *
 * Decisions:
 *   - "\u0000" is rejected: C strings (and so many consumers) would cut
 *     the string short, and PostgreSQL's jsonb, where projections write,
 *     rejects it too. The encoder refuses strings with a NUL byte for the
 *     same reason, so whatever encode() writes, decode() reads back.
 *   - Likewise the encoder refuses integers outside +-(2^53 - 1), which
 *     I-JSON senders must not send and decode() would reject.
 *   - Duplicate object keys: the last one wins (RFC 8259 leaves it open;
 *     this is what JavaScript and most parsers do).
 *   - A byte order mark is not skipped (I-JSON forbids it).
 *   - Byte offsets in messages count from 0.
 *   - Floats are read with strtod (unless the exact fast path applies) and
 *     printed with "%.17g", which follow LC_NUMERIC: evlua never calls
 *     setlocale, so that is "C".
 *
 * Encoding appends straight to an evl_buf and calls no Lua function that
 * can raise: the stack is grown with lua_checkstack, tables are read with
 * lua_next/lua_rawget (no metamethods, so no Lua code runs and nothing can
 * change the table meanwhile), and lua_tolstring is only called on values
 * that are already strings (on a number it would convert the key in place
 * and break lua_next).
 */
#include "json.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

/* Registry key of the array marker metatable (its address is the key). */
static const char array_mt_key = 'a';
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

/* I-JSON's exactly representable integers: +-(2^53 - 1). */
#define MAX_EXACT_INT 9007199254740991LL

/* The encoder stops at this many bytes of output. The buffer lives on the
 * C heap, outside the capped Lua allocator, and a small Lua value can
 * stand for a huge text (x = {x, x} repeated 60 times is 2^60 elements):
 * without a bound a script could make the process abort. */
#define MAX_ENCODED ((size_t)64 << 20)

/* Numbers whose text is no longer than this are converted from a copy on
 * the C stack; longer ones (rare) from a heap copy. */
#define NUMBUF 64

/* The encode binding keeps its output buffer between calls unless it grew
 * beyond this. */
#define KEEP_BUF ((size_t)64 << 10)

/* ------------------------------------------------------------------ */
/* Output (buf.h), with inline forms for the encoder's hot paths          */

static inline void put(evl_buf *b, const void *p, size_t n)
{
    if (b->cap - b->len < n)
        evl_buf_reserve(b, n);
    if (n) /* p may be NULL when n is 0 */
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

static inline void putc1(evl_buf *b, char c)
{
    if (b->len == b->cap)
        evl_buf_reserve(b, 1);
    b->data[b->len++] = c;
}

/* ------------------------------------------------------------------ */
/* UTF-8                                                                */

/* Length of the valid UTF-8 sequence at p (n > 0 bytes available), or 0
 * when it is invalid. The table of RFC 3629, section 4: the second byte's
 * range rules out overlong forms (E0, F0), surrogates, also when encoded
 * on their own as CESU-8 does (ED), and code points above U+10FFFF (F4). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];

    if (c < 0x80)
        return 1;
    if (c < 0xC2 || c > 0xF4) /* continuation, overlong C0/C1, > U+10FFFF */
        return 0;
    if (n < 2 || (p[1] & 0xC0) != 0x80)
        return 0;
    if (c < 0xE0)
        return 2;
    if (n < 3 || (p[2] & 0xC0) != 0x80)
        return 0;
    if (c < 0xF0) {
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return 0;
        return 3;
    }
    if (n < 4 || (p[3] & 0xC0) != 0x80)
        return 0;
    if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
        return 0;
    return 4;
}

long evl_utf8_check(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        if (p[i] < 0x80) {
            /* Text is mostly ASCII: skip it a word at a time. */
            uint64_t w;
            while (len - i >= 8) {
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            while (i < len && p[i] < 0x80)
                i++;
            continue;
        }
        size_t n = utf8_seq(p + i, len - i);
        if (!n)
            return (long)i;
        i += n;
    }
    return -1;
}

/* Cut a trailing incomplete UTF-8 sequence left by a truncating snprintf,
 * so messages (which may end up in JSON themselves) stay valid UTF-8. */
static void utf8_trim(char *s)
{
    size_t n = strlen(s);
    long bad = evl_utf8_check(s, n);
    if (bad >= 0 && n - (size_t)bad < 4)
        s[bad] = '\0';
}

/* Are the 8 bytes at p all plain string bytes: ASCII, not a control
 * character, '"' or '\\'? Tested a word at a time (the "has zero byte"
 * trick: x - 0x01.. borrows into the top bit of each byte that was 0), so
 * long strings are scanned and copied quickly. */
static inline int plain8(const unsigned char *p)
{
    const uint64_t ones = 0x0101010101010101ULL, high = ones * 0x80;
    uint64_t x, q, b, ctl, quote, bslash;

    memcpy(&x, p, 8);
    q = x ^ (ones * '"');
    b = x ^ (ones * '\\');
    ctl = (x - ones * 0x20) & ~x;                /* a byte below 0x20 */
    quote = (q - ones) & ~q;                     /* a byte equal to '"' */
    bslash = (b - ones) & ~b;                    /* a byte equal to '\\' */
    return !((ctl | quote | bslash | x) & high); /* x: a byte >= 0x80 */
}

/* ------------------------------------------------------------------ */
/* null and the array marker                                            */

void evl_json_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, NULL);
}

int evl_json_is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && !lua_touserdata(L, idx);
}

void evl_json_push_array_mt(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "evlua.json.array");
    lua_setfield(L, -2, "__name");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_mt_key);
}

/* ------------------------------------------------------------------ */
/* Decoding, step 1: scan                                               */

/* A number converted from its text. */
typedef struct num {
    int isint;
    union {
        lua_Integer i;
        lua_Number d;
    } v;
} num;

/* What the structure allows next (scan's grammar check). */
enum {
    WANT_VALUE,          /* at the start, after ':' or ',' in an array */
    WANT_VALUE_OR_CLOSE, /* after '[' */
    WANT_KEY,            /* after ',' in an object */
    WANT_KEY_OR_CLOSE,   /* after '{' */
    WANT_COLON,          /* after a key */
    WANT_COMMA_OR_CLOSE, /* after a value inside an array or object */
    WANT_END             /* after the top-level value */
};

typedef struct scan_state {
    const unsigned char *s;
    size_t len;
    num *nums; /* starts as the caller's stack array, then heap */
    size_t n, cap;
    int on_heap;
    /* the element count of each array and object, in document order (so
     * the builder sizes its tables once); like nums */
    uint32_t *counts;
    size_t ncounts, capcounts;
    int counts_on_heap;
    /* the grammar: what may come next, the open containers ('[' or '{')
     * and their entries in counts; the first violation, reported when the
     * tokens are all fine (token errors come first, as they always did) */
    int want;
    char open[EVL_JSON_MAX_DEPTH + 2];
    uint32_t open_at[EVL_JSON_MAX_DEPTH + 2];
    int bad_structure; /* 1: invalid; 2: text after the value */
    size_t bad_at;
    char *err;
    size_t errlen;
} scan_state;

#define SCAN_STATE(s, len, nums, counts, err, errlen)                          \
    {                                                                          \
        (const unsigned char *)(s), (len), (nums), 0,                          \
            sizeof(nums) / sizeof(nums)[0], 0, (counts), 0,                    \
            sizeof(counts) / sizeof(counts)[0], 0, WANT_VALUE, {0}, {0}, 0, 0, \
            (err), (errlen)                                                    \
    }

static void scan_free(scan_state *st)
{
    if (st->on_heap)
        free(st->nums);
    if (st->counts_on_heap)
        free(st->counts);
}

static int is_ws(unsigned c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_digit(unsigned c)
{
    return c >= '0' && c <= '9';
}

static int hexval(unsigned c)
{
    if (c >= '0' && c <= '9')
        return (int)(c - '0');
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return (int)(c - 'a' + 10);
    return -1;
}

/* The code unit of the \uXXXX escape at s[i] ('\\' at i), or -1. */
static long hex4(const scan_state *st, size_t i)
{
    long v = 0;
    if (i > st->len || st->len - i < 6 || st->s[i] != '\\' ||
        st->s[i + 1] != 'u')
        return -1;
    for (size_t k = i + 2; k < i + 6; k++) {
        int h = hexval(st->s[k]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* Print at most 40 bytes of the number text at s[off..off+n) (it is all
 * ASCII number characters) for a message. */
#define NUM_TEXT(st, off, n)                                                   \
    (int)((n) > 40 ? 40 : (n)), (const char *)(st)->s + (off),                 \
        (n) > 40 ? "..." : ""

/* The string starting with '"' at st->s[*pos]; on success *pos is just
 * past its closing quote. */
static evl_err scan_string(scan_state *st, size_t *pos)
{
    const unsigned char *s = st->s;
    size_t len = st->len, i = *pos + 1;

    for (;;) {
        while (len - i >= 8 && plain8(s + i))
            i += 8;
        while (i < len && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' &&
               s[i] != '\\')
            i++;
        if (i >= len)
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "invalid JSON at byte %zu: unterminated string",
                              *pos);
        unsigned c = s[i];
        if (c == '"')
            break;
        if (c >= 0x80) {
            size_t n = utf8_seq(s + i, len - i);
            if (!n)
                return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                                  "invalid UTF-8 in string at byte %zu", i);
            i += n;
            continue;
        }
        if (c < 0x20)
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "invalid JSON at byte %zu: control character "
                              "0x%02X in string must be escaped",
                              i, c);
        /* c == '\\' */
        if (i + 1 >= len)
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "invalid JSON at byte %zu: unterminated string",
                              *pos);
        switch (s[i + 1]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't': i += 2; continue;
        case 'u': break;
        default:
            if (s[i + 1] < 0x20 || s[i + 1] >= 0x7F)
                return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                                  "invalid JSON at byte %zu: bad escape in "
                                  "string",
                                  i);
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "invalid JSON at byte %zu: bad escape \\%c in "
                              "string",
                              i, s[i + 1]);
        }
        long u = hex4(st, i);
        if (u < 0)
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "invalid JSON at byte %zu: \\u must be followed "
                              "by four hex digits",
                              i);
        if (u == 0)
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "\\u0000 in string at byte %zu: NUL characters "
                              "are not supported (as in PostgreSQL jsonb)",
                              i);
        if (u >= 0xD800 && u <= 0xDBFF) {
            long lo = hex4(st, i + 6);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                                  "invalid UTF-8 in string at byte %zu: lone "
                                  "surrogate \\u%04lx",
                                  i, u);
            i += 12;
        } else if (u >= 0xDC00 && u <= 0xDFFF) {
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "invalid UTF-8 in string at byte %zu: lone "
                              "surrogate \\u%04lx",
                              i, u);
        } else {
            i += 6;
        }
    }
    *pos = i + 1;
    return EVL_OK;
}

static void push_num(scan_state *st, num v)
{
    if (st->n == st->cap) {
        size_t cap = st->cap * 2;
        num *p = st->on_heap ? evl_xrealloc(st->nums, cap * sizeof *p)
                             : evl_xmalloc(cap * sizeof *p);
        if (!st->on_heap)
            memcpy(p, st->nums, st->n * sizeof *p);
        st->nums = p;
        st->cap = cap;
        st->on_heap = 1;
    }
    st->nums[st->n++] = v;
}

/* Convert a valid JSON float text of n bytes without strtod when that is
 * exact: with at most 15 digits and a decimal exponent k within +-22, both
 * the digits m and 10^k are doubles exactly, so one IEEE multiplication
 * or division rounds correctly (Clinger's fast path). Typical event
 * values (12.5, 0.1, 1e3) take this path, saving strtod's several hundred
 * instructions. Returns 0 to fall back to strtod. */
static int fast_float(const unsigned char *p, size_t n, double *out)
{
    static const double pow10[] = {
        1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
        1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    size_t i = 0;
    uint64_t m = 0;
    int digits = 0, k = 0, neg = 0;

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
    return 0; /* extended precision would round twice */
#endif
    if (p[i] == '-') {
        neg = 1;
        i++;
    }
    for (; i < n && is_digit(p[i]); i++, digits++)
        m = m * 10 + (uint64_t)(p[i] - '0');
    if (i < n && p[i] == '.')
        for (i++; i < n && is_digit(p[i]); i++, digits++, k--)
            m = m * 10 + (uint64_t)(p[i] - '0');
    if (digits > 15)
        return 0;
    if (i < n) { /* the exponent */
        int eneg = 0, e = 0;
        i++;
        if (p[i] == '+' || p[i] == '-')
            eneg = p[i++] == '-';
        for (; i < n; i++) {
            if (e > 1000)
                return 0;
            e = e * 10 + (p[i] - '0');
        }
        k += eneg ? -e : e;
    }
    if (k < -22 || k > 22)
        return 0;
    double d = (double)m;
    d = k < 0 ? d / pow10[-k] : d * pow10[k];
    *out = neg ? -d : d;
    return 1;
}

/* The number starting at st->s[*pos] ('-' or a digit), by the grammar of
 * RFC 8259, section 6; on success *pos is just past it. */
static evl_err scan_number(scan_state *st, size_t *pos)
{
    const unsigned char *s = st->s;
    size_t len = st->len, start = *pos, i = start;
    num v = {1, {0}};

    if (s[i] == '-')
        i++;
    if (i >= len || !is_digit(s[i]))
        goto bad;
    if (s[i] == '0')
        i++;
    else
        while (i < len && is_digit(s[i]))
            i++;
    if (i < len && s[i] == '.') {
        v.isint = 0;
        if (++i >= len || !is_digit(s[i]))
            goto bad;
        while (i < len && is_digit(s[i]))
            i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        v.isint = 0;
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= len || !is_digit(s[i]))
            goto bad;
        while (i < len && is_digit(s[i]))
            i++;
    }
    /* "01", "1.5.3", "1-2": not one JSON number (and the builder skips a
     * number token by its characters). */
    if (i < len && (is_digit(s[i]) || s[i] == '.' || s[i] == 'e' ||
                    s[i] == 'E' || s[i] == '+' || s[i] == '-'))
        goto bad;

    size_t n = i - start;
    if (v.isint) {
        /* At most 16 digits fit below 2^53; no strtoll, no errno. */
        size_t d = start + (s[start] == '-');
        uint64_t u = 0;
        if (i - d > 16)
            goto range;
        for (; d < i; d++)
            u = u * 10 + (uint64_t)(s[d] - '0');
        if (u > (uint64_t)MAX_EXACT_INT)
            goto range;
        v.v.i = s[start] == '-' ? -(lua_Integer)u : (lua_Integer)u;
    } else if (!fast_float(s + start, n, &v.v.d)) {
        /* strtod needs a NUL-terminated copy: the text may end right after
         * the number. */
        char small[NUMBUF], *copy = n < NUMBUF ? small : evl_xmalloc(n + 1);
        char *end;
        memcpy(copy, s + start, n);
        copy[n] = '\0';
        v.v.d = strtod(copy, &end);
        int whole = end == copy + n;
        if (copy != small)
            free(copy);
        if (!whole)
            goto bad;
        if (isinf(v.v.d))
            return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                              "number %.*s%s at byte %zu overflows a double",
                              NUM_TEXT(st, start, n), start);
    }
    push_num(st, v);
    *pos = i;
    return EVL_OK;

bad:
    return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                      "invalid JSON at byte %zu: malformed number", start);
range:
    return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                      "integer %.*s%s at byte %zu is outside +-2^53 (I-JSON): "
                      "send it as a string",
                      NUM_TEXT(st, start, n), start);
}

static void structure_bad(scan_state *st, size_t at)
{
    if (!st->bad_structure) {
        st->bad_structure = st->want == WANT_END ? 2 : 1;
        st->bad_at = at;
    }
}

/* The token at st->s[at] of kind c ('[', '{', ']', '}', ',', ':', '"' or
 * 'v' for any other value) meets the grammar; depth is the nesting before
 * it. Records the first violation and then stops checking. */
static void structure(scan_state *st, unsigned c, int depth, size_t at)
{
    if (st->bad_structure)
        return;
    switch (c) {
    case ',':
        if (st->want != WANT_COMMA_OR_CLOSE)
            goto bad;
        st->counts[st->open_at[depth]]++;
        st->want = st->open[depth] == '{' ? WANT_KEY : WANT_VALUE;
        return;
    case ':':
        if (st->want != WANT_COLON)
            goto bad;
        st->want = WANT_VALUE;
        return;
    case ']':
    case '}':
        if (depth < 1 || st->open[depth] != (c == ']' ? '[' : '{'))
            goto bad;
        if (st->want != WANT_COMMA_OR_CLOSE &&
            st->want != (c == ']' ? WANT_VALUE_OR_CLOSE : WANT_KEY_OR_CLOSE))
            goto bad;
        st->want = depth == 1 ? WANT_END : WANT_COMMA_OR_CLOSE;
        return;
    case '"':
        if (st->want == WANT_KEY || st->want == WANT_KEY_OR_CLOSE) {
            if (st->want == WANT_KEY_OR_CLOSE)
                st->counts[st->open_at[depth]] = 1;
            st->want = WANT_COLON;
            return;
        }
        break;
    default: break;
    }
    /* a value: a scalar, or '[' / '{' opening depth + 1 */
    if (st->want != WANT_VALUE && st->want != WANT_VALUE_OR_CLOSE)
        goto bad;
    if (st->want == WANT_VALUE_OR_CLOSE)
        st->counts[st->open_at[depth]] = 1;
    if (c == '[' || c == '{') {
        if (st->ncounts == st->capcounts) {
            size_t cap = st->capcounts * 2;
            uint32_t *p = st->counts_on_heap
                              ? evl_xrealloc(st->counts, cap * sizeof *p)
                              : evl_xmalloc(cap * sizeof *p);
            if (!st->counts_on_heap)
                memcpy(p, st->counts, st->ncounts * sizeof *p);
            st->counts = p;
            st->capcounts = cap;
            st->counts_on_heap = 1;
        }
        st->open[depth + 1] = (char)c;
        st->open_at[depth + 1] = (uint32_t)st->ncounts;
        st->counts[st->ncounts++] = 0;
        st->want = c == '[' ? WANT_VALUE_OR_CLOSE : WANT_KEY_OR_CLOSE;
        return;
    }
    st->want = depth == 0 ? WANT_END : WANT_COMMA_OR_CLOSE;
    return;
bad:
    structure_bad(st, at);
}

/* Check the whole text and convert its numbers (see the top of this
 * file): its tokens, and then its structure (JSON's grammar), counting the
 * entries of every array and object on the way. */
static evl_err scan(scan_state *st)
{
    const unsigned char *s = st->s;
    size_t len = st->len, i = 0;
    int depth = 0, tokens = 0;
    evl_err rc;

    while (i < len) {
        unsigned c = s[i];
        if (is_ws(c)) {
            i++;
            continue;
        }
        tokens++;
        if (c == '"' || c == '-' || is_digit(c) || c == 't' || c == 'f' ||
            c == 'n')
            structure(st, c == '"' ? '"' : 'v', depth, i);
        else if (c == '[' || c == '{' || c == ']' || c == '}' || c == ',' ||
                 c == ':')
            structure(st, c, depth, i);
        switch (c) {
        case '[':
        case '{':
            if (++depth > EVL_JSON_MAX_DEPTH)
                return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                                  "nesting deeper than %d at byte %zu",
                                  EVL_JSON_MAX_DEPTH, i);
            i++;
            break;
        case ']':
        case '}':
            if (--depth < 0)
                return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                                  "invalid JSON at byte %zu: unmatched '%c'", i,
                                  c);
            i++;
            break;
        case ',':
        case ':': i++; break;
        case '"':
            if ((rc = scan_string(st, &i)) != EVL_OK)
                return rc;
            break;
        case 't':
        case 'f':
        case 'n': {
            const char *word = c == 't' ? "true" : c == 'f' ? "false" : "null";
            size_t n = strlen(word);
            if (len - i < n || memcmp(s + i, word, n) != 0)
                goto unexpected;
            i += n;
            break;
        }
        default:
            if (c == '-' || is_digit(c)) {
                if ((rc = scan_number(st, &i)) != EVL_OK)
                    return rc;
                break;
            }
            goto unexpected;
        }
    }
    if (!tokens)
        return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                          "invalid JSON at byte %zu: no value", len);
    if (st->bad_structure == 2)
        return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                          "invalid JSON at byte %zu: text after the value",
                          st->bad_at);
    if (st->bad_structure)
        return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                          "invalid JSON at byte %zu", st->bad_at);
    if (st->want != WANT_END)
        return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                          "invalid JSON at byte %zu: unexpected end", len);
    return EVL_OK;

unexpected:
    if (s[i] > 0x20 && s[i] < 0x7F)
        return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                          "invalid JSON at byte %zu: unexpected '%c'", i, s[i]);
    return evl_seterr(st->err, st->errlen, EVL_EPERMANENT,
                      "invalid JSON at byte %zu: unexpected byte 0x%02X", i,
                      s[i]);
}

/* ------------------------------------------------------------------ */
/* Decoding, step 2: build                                              */

/* The text is valid (scan said so): the builder only reads it. */
typedef struct build_state {
    const unsigned char *s;
    size_t len, i;
    const num *nums;
    size_t n, next;
    const uint32_t *counts;
    size_t ncounts, nextc;
    int mt; /* stack index of the array marker metatable */
} build_state;

static inline void skip_ws(const unsigned char *s, size_t len, size_t *i)
{
    while (*i < len && is_ws(s[*i]))
        (*i)++;
}

/* Append the UTF-8 form of code point u to out (at most 4 bytes); returns
 * how many. */
static size_t utf8_put(unsigned long u, char *out)
{
    if (u < 0x80) {
        out[0] = (char)u;
        return 1;
    }
    if (u < 0x800) {
        out[0] = (char)(0xC0 | (u >> 6));
        out[1] = (char)(0x80 | (u & 0x3F));
        return 2;
    }
    if (u < 0x10000) {
        out[0] = (char)(0xE0 | (u >> 12));
        out[1] = (char)(0x80 | ((u >> 6) & 0x3F));
        out[2] = (char)(0x80 | (u & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (u >> 18));
    out[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((u >> 6) & 0x3F));
    out[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

/* The code unit of the (valid) \uXXXX escape at p. */
static unsigned long hex4_valid(const unsigned char *p)
{
    unsigned long v = 0;
    for (int k = 2; k < 6; k++)
        v = v * 16 + (unsigned long)hexval(p[k]);
    return v;
}

/* The end of the (valid) string of s[0..len) whose opening quote is at
 * s[i]: the index of its closing quote; *esc says whether it has escapes. */
static size_t string_end(const unsigned char *s, size_t len, size_t i, int *esc)
{
    *esc = 0;
    i++;
    for (;;) {
        while (len - i >= 8 && plain8(s + i))
            i += 8;
        unsigned c = s[i];
        if (c == '"')
            return i;
        if (c == '\\') {
            *esc = 1;
            i += 2;
            continue;
        }
        i++;
    }
}

/* Unescape the (valid) string body s[from..to) into out, which has room
 * for to - from bytes (escapes never grow); returns the length. */
static size_t unescape(const unsigned char *s, size_t from, size_t to,
                       char *out)
{
    size_t o = 0;
    for (size_t i = from; i < to;) {
        if (s[i] != '\\') {
            out[o++] = (char)s[i++];
            continue;
        }
        unsigned char e = s[i + 1];
        i += 2;
        switch (e) {
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned long u = hex4_valid(s + i - 2);
            i += 4;
            if (u >= 0xD800 && u <= 0xDBFF) { /* a pair (scan checked) */
                unsigned long lo = hex4_valid(s + i);
                i += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            o += utf8_put(u, out + o);
            break;
        }
        default: out[o++] = (char)e; break; /* " \ / */
        }
    }
    return o;
}

/* Push the string whose opening quote is at b->i; b->i moves past it. */
static void build_string(lua_State *L, build_state *b)
{
    int esc;
    size_t end = string_end(b->s, b->len, b->i, &esc), from = b->i + 1;
    if (!esc) {
        lua_pushlstring(L, (const char *)b->s + from, end - from);
    } else {
        luaL_Buffer lb;
        char *p = luaL_buffinitsize(L, &lb, end - from);
        luaL_pushresultsize(&lb, unescape(b->s, from, end, p));
    }
    b->i = end + 1;
}

/* Push the value at b->i (after white space); b->i moves past it. The
 * recursion is bounded by scan's depth limit. */
static void build_value(lua_State *L, build_state *b)
{
    const unsigned char *s = b->s;
    skip_ws(s, b->len, &b->i);
    unsigned c = s[b->i];
    switch (c) {
    case '"': build_string(L, b); return;
    case 't':
        lua_pushboolean(L, 1);
        b->i += 4;
        return;
    case 'f':
        lua_pushboolean(L, 0);
        b->i += 5;
        return;
    case 'n':
        lua_pushlightuserdata(L, NULL);
        b->i += 4;
        return;
    case '[': {
        uint32_t n = b->counts[b->nextc++];
        luaL_checkstack(L, 3, "decoding JSON");
        lua_createtable(L, (int)n, 0);
        lua_pushvalue(L, b->mt);
        lua_setmetatable(L, -2);
        b->i++;
        for (uint32_t k = 1; k <= n; k++) {
            build_value(L, b);
            lua_rawseti(L, -2, (lua_Integer)k);
            skip_ws(s, b->len, &b->i);
            b->i++; /* ',' or ']' */
        }
        if (n == 0) {
            skip_ws(s, b->len, &b->i);
            b->i++; /* ']' */
        }
        return;
    }
    case '{': {
        uint32_t n = b->counts[b->nextc++];
        luaL_checkstack(L, 4, "decoding JSON");
        lua_createtable(L, 0, (int)n);
        b->i++;
        for (uint32_t k = 0; k < n; k++) {
            skip_ws(s, b->len, &b->i);
            build_string(L, b);
            skip_ws(s, b->len, &b->i);
            b->i++; /* ':' */
            build_value(L, b);
            lua_rawset(L, -3); /* a duplicate key: the last one wins */
            skip_ws(s, b->len, &b->i);
            b->i++; /* ',' or '}' */
        }
        if (n == 0) {
            skip_ws(s, b->len, &b->i);
            b->i++; /* '}' */
        }
        return;
    }
    default:                 /* a number: scan converted it */
        if (b->next >= b->n) /* scan() and the builder disagree: a bug */
            luaL_error(L, "internal error: JSON numbers out of step");
        if (b->nums[b->next].isint)
            lua_pushinteger(L, b->nums[b->next].v.i);
        else
            lua_pushnumber(L, b->nums[b->next].v.d);
        b->next++;
        while (b->i < b->len &&
               (is_digit(s[b->i]) || s[b->i] == '-' || s[b->i] == '+' ||
                s[b->i] == '.' || s[b->i] == 'e' || s[b->i] == 'E'))
            b->i++;
        return;
    }
}

/* Runs under lua_pcall: (build_state) -> value */
static int build(lua_State *L)
{
    build_state *b = lua_touserdata(L, 1);
    evl_json_push_array_mt(L);
    b->mt = lua_gettop(L);
    build_value(L, b);
    return 1;
}

evl_err evl_json_decode(lua_State *L, const char *s, size_t len, char *err,
                        size_t errlen)
{
    num stack_nums[64];
    uint32_t stack_counts[32];
    scan_state st = SCAN_STATE(s, len, stack_nums, stack_counts, err, errlen);
    int memerr = 0;
    evl_err rc;

    if ((rc = scan(&st)) != EVL_OK)
        goto out;
    if (!lua_checkstack(L, 3)) {
        rc = evl_seterr(err, errlen, EVL_EPERMANENT,
                        "cannot decode JSON: Lua stack exhausted");
        goto out;
    }
    build_state b = {(const unsigned char *)s,
                     len,
                     0,
                     st.nums,
                     st.n,
                     0,
                     st.counts,
                     st.ncounts,
                     0,
                     0};
    lua_pushcfunction(L, build);
    lua_pushlightuserdata(L, &b);
    int status = lua_pcall(L, 1, 1, 0);
    if (status == LUA_ERRMEM) {
        memerr = 1; /* raised again below, once the C heap is clean */
        rc = EVL_EPERMANENT;
    } else if (status != LUA_OK) {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                         : "unknown error";
        rc = evl_seterr(err, errlen, EVL_EPERMANENT, "cannot decode JSON: %s",
                        msg);
        lua_pop(L, 1);
    } else {
        rc = EVL_OK;
    }

out:
    scan_free(&st);
    if (memerr)
        lua_error(L);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Top-level members without Lua                                        */

/* The index just past the (valid) value at s[i] (after white space);
 * *nums counts the numbers it holds. */
static size_t skip_value(const unsigned char *s, size_t len, size_t i,
                         size_t *nums)
{
    int depth = 0, esc;
    do {
        skip_ws(s, len, &i);
        unsigned c = s[i];
        if (c == '"') {
            i = string_end(s, len, i, &esc) + 1;
        } else if (c == '[' || c == '{') {
            depth++;
            i++;
        } else if (c == ']' || c == '}') {
            depth--;
            i++;
        } else if (c == ',' || c == ':') {
            i++;
        } else if (c == 't' || c == 'n') {
            i += 4;
        } else if (c == 'f') {
            i += 5;
        } else {
            (*nums)++;
            while (i < len && (is_digit(s[i]) || s[i] == '-' || s[i] == '+' ||
                               s[i] == '.' || s[i] == 'e' || s[i] == 'E'))
                i++;
        }
    } while (depth > 0);
    return i;
}

evl_err evl_json_members(const char *text, size_t len, evl_json_member *m,
                         size_t nm, evl_buf *scratch, int *is_object, char *err,
                         size_t errlen)
{
    num stack_nums[64];
    uint32_t stack_counts[32];
    scan_state st =
        SCAN_STATE(text, len, stack_nums, stack_counts, err, errlen);
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, nums = 0;
    evl_err rc;

    for (size_t k = 0; k < nm; k++)
        m[k].type = EVL_JSON_ABSENT;
    *is_object = 0;
    scratch->len = 0;
    if ((rc = scan(&st)) != EVL_OK)
        goto out;
    skip_ws(s, len, &i);
    if (s[i] != '{')
        goto out;
    *is_object = 1;
    for (uint32_t n = st.counts[0]; n > 0; n--) {
        int esc;
        i++; /* '{' or ',' */
        skip_ws(s, len, &i);
        size_t end = string_end(s, len, i, &esc), from = i + 1;
        const char *key = text + from;
        size_t klen = end - from;
        if (esc) { /* rare: compare the key unescaped */
            size_t at = scratch->len;
            if (scratch->cap - at < klen)
                evl_buf_reserve(scratch, klen);
            klen = unescape(s, from, end, scratch->data + at);
            key = scratch->data + at; /* not kept: len stays at */
        }
        evl_json_member *hit = NULL;
        for (size_t k = 0; k < nm && !hit; k++)
            if (strlen(m[k].name) == klen && memcmp(m[k].name, key, klen) == 0)
                hit = &m[k]; /* a duplicate key: the last one counts, as in
                                evl_json_decode */
        i = end + 1;
        skip_ws(s, len, &i);
        i++; /* ':' */
        skip_ws(s, len, &i);
        if (hit)
            hit->voff = i;
        if (!hit) {
            i = skip_value(s, len, i, &nums);
        } else if (s[i] == '"') {
            end = string_end(s, len, i, &esc);
            from = i + 1;
            size_t at = scratch->len;
            if (scratch->cap - at < end - from + 1)
                evl_buf_reserve(scratch, end - from + 1);
            size_t n2 =
                esc ? unescape(s, from, end, scratch->data + at) : end - from;
            if (!esc)
                memcpy(scratch->data + at, s + from, n2);
            scratch->data[at + n2] = '\0';
            scratch->len = at + n2 + 1;
            hit->type = EVL_JSON_STRING;
            hit->off = at;
            hit->len = n2;
            i = end + 1;
        } else if (s[i] == '-' || is_digit(s[i])) {
            const num *v = &st.nums[nums];
            hit->type = EVL_JSON_NUMBER;
            hit->isint = v->isint;
            hit->num = v->isint ? (double)v->v.i : v->v.d;
            hit->integer = v->isint ? (long long)v->v.i : 0;
            i = skip_value(s, len, i, &nums);
        } else {
            hit->type = EVL_JSON_OTHER;
            i = skip_value(s, len, i, &nums);
        }
        if (hit)
            hit->vlen = i - hit->voff;
        skip_ws(s, len, &i);
    }
out:
    scan_free(&st);
    return rc;
}

evl_err evl_json_array_strings(const char *text, size_t len, evl_buf *scratch,
                               void (*fn)(void *ud, const char *str, size_t n),
                               void *ud, char *err, size_t errlen)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    long index = 0;
    skip_ws(s, len, &i);
    if (i >= len || s[i] != '[')
        return evl_seterr(err, errlen, EVL_EPERMANENT, "not an array");
    i++;
    for (;;) {
        int esc;
        skip_ws(s, len, &i);
        if (i >= len)
            return evl_seterr(err, errlen, EVL_EPERMANENT, "unfinished array");
        if (s[i] == ']')
            return EVL_OK;
        if (s[i] == ',') {
            i++;
            continue;
        }
        index++;
        if (s[i] != '"')
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "element %ld is not a string", index);
        size_t end = string_end(s, len, i, &esc), from = i + 1;
        scratch->len = 0;
        if (scratch->cap < end - from + 1)
            evl_buf_reserve(scratch, end - from + 1);
        size_t n = esc ? unescape(s, from, end, scratch->data) : end - from;
        if (!esc)
            memcpy(scratch->data, s + from, n);
        scratch->data[n] = '\0';
        fn(ud, scratch->data, n);
        i = end + 1;
    }
}

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
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key);
    e.mt = lua_gettop(L);

    rc = encode_value(&e, idx);
    lua_settop(L, top);
    if (rc != EVL_OK)
        out->len = len0;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Lua bindings                                                         */

/* evlua.json.encode(v) -> string
 * The output buffer is the closure's upvalue (a userdata that frees it in
 * __gc): it is reused across calls, and a memory error in lua_pushlstring
 * cannot leak it. */
static int l_encode(lua_State *L)
{
    evl_buf *b = lua_touserdata(L, lua_upvalueindex(1));
    char err[EVL_ERRLEN];

    luaL_checkany(L, 1);
    b->len = 0;
    if (evl_json_encode(L, 1, b, err, sizeof err) != EVL_OK)
        return luaL_error(L, "%s", err);
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    if (b->cap > KEEP_BUF)
        evl_buf_free(b);
    return 1;
}

static int buf_gc(lua_State *L)
{
    evl_buf_free(lua_touserdata(L, 1));
    return 0;
}

/* evlua.json.decode(s) -> value */
static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[EVL_ERRLEN];

    if (evl_json_decode(L, s, len, err, sizeof err) != EVL_OK)
        return luaL_error(L, "%s", err);
    return 1;
}

/* evlua.json.array(t) -> t
 * Refuses a table that already has another metatable rather than
 * silently replacing it. */
static int l_array(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    evl_json_push_array_mt(L);
    if (lua_getmetatable(L, 1)) {
        if (!lua_rawequal(L, -1, -2))
            return luaL_argerror(L, 1, "table already has a metatable");
        lua_pop(L, 1);
    }
    lua_setmetatable(L, 1);
    return 1;
}

int evl_json_open(lua_State *L)
{
    lua_createtable(L, 0, 4);

    evl_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushcclosure(L, l_encode, 1);
    lua_setfield(L, -2, "encode");

    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
    lua_pushcfunction(L, l_array);
    lua_setfield(L, -2, "array");
    evl_json_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
