/*
 * json.c - JSON text to Lua values, and the readers and Lua module
 * functions (see json.h): exact conversion between JSON text and Lua
 * values.
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
 * The encoder is json_encode.c; what both sides share is in json_int.h.
 */
#include "json.h"
#include "json_int.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

/* Registry key of the array marker metatable (its address is the key). */
const char evl_json_array_mt_key = 'a';
/* Numbers whose text is no longer than this are converted from a copy on
 * the C stack; longer ones (rare) from a heap copy. */
#define NUMBUF 64

/* The encode binding keeps its output buffer between calls unless it grew
 * beyond this. */
#define KEEP_BUF ((size_t)64 << 10)

/* ------------------------------------------------------------------ */
/* UTF-8                                                                */

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
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &evl_json_array_mt_key) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "evlua.json.array");
    lua_setfield(L, -2, "__name");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &evl_json_array_mt_key);
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

/* evl_json_members, and with unknown non-NULL, evl_json_members_unknown. */
static evl_err members(const char *text, size_t len, evl_json_member *m,
                       size_t nm, evl_buf *scratch, int *is_object,
                       size_t *unknown, char *err, size_t errlen)
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
    if (unknown)
        *unknown = EVL_JSON_NONE;
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
        if (!hit && unknown && *unknown == EVL_JSON_NONE) {
            /* keep the first unknown key, unescaped, NUL-terminated */
            size_t at = scratch->len, kl = end - from;
            if (scratch->cap - at < kl + 1)
                evl_buf_reserve(scratch, kl + 1); /* may move key: redo */
            if (esc)
                klen = unescape(s, from, end, scratch->data + at);
            else
                memcpy(scratch->data + at, s + from, klen);
            scratch->data[at + klen] = '\0';
            scratch->len = at + klen + 1;
            *unknown = at;
        }
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

evl_err evl_json_members(const char *text, size_t len, evl_json_member *m,
                         size_t nm, evl_buf *scratch, int *is_object, char *err,
                         size_t errlen)
{
    return members(text, len, m, nm, scratch, is_object, NULL, err, errlen);
}

evl_err evl_json_members_unknown(const char *text, size_t len,
                                 evl_json_member *m, size_t nm,
                                 evl_buf *scratch, int *is_object,
                                 size_t *unknown, char *err, size_t errlen)
{
    return members(text, len, m, nm, scratch, is_object, unknown, err, errlen);
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

evl_err evl_json_array_values(const char *text, size_t len,
                              void (*fn)(void *ud, const char *value, size_t n),
                              void *ud, char *err, size_t errlen)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, nums = 0;
    skip_ws(s, len, &i);
    if (i >= len || s[i] != '[')
        return evl_seterr(err, errlen, EVL_EPERMANENT, "not an array");
    i++;
    for (;;) {
        skip_ws(s, len, &i);
        if (i >= len)
            return evl_seterr(err, errlen, EVL_EPERMANENT, "unfinished array");
        if (s[i] == ']')
            return EVL_OK;
        if (s[i] == ',') {
            i++;
            continue;
        }
        size_t end = skip_value(s, len, i, &nums);
        fn(ud, text + i, end - i);
        i = end;
    }
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
