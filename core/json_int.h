/*
 * json_int.h - what json.c (the decoder, the readers, the Lua module
 * functions) and json_encode.c (the encoder) share: the I-JSON integer
 * bound, the UTF-8 and byte-class tests both sides make, the inline
 * appends of the hot paths and the registry key of the array marker.
 * Private to those two files; everyone else uses json.h.
 */
#ifndef EVL_JSON_INT_H
#define EVL_JSON_INT_H

#include <stdint.h>
#include <string.h>

#include "json.h"

/* I-JSON's exactly representable integers: +-(2^53 - 1). */
#define MAX_EXACT_INT 9007199254740991LL

/* Registry key of the array marker metatable (its address is the key;
 * defined in json.c). */
extern const char evl_json_array_mt_key;

/* Appends to an evl_buf (buf.h), inline for the encoder's hot paths. */

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

static inline int is_digit(unsigned c)
{
    return c >= '0' && c <= '9';
}

/* Length of the valid UTF-8 sequence at p (n > 0 bytes available), or 0
 * when it is invalid. The table of RFC 3629, section 4: the second byte's
 * range rules out overlong forms (E0, F0), surrogates, also when encoded
 * on their own as CESU-8 does (ED), and code points above U+10FFFF (F4). */
static inline size_t utf8_seq(const unsigned char *p, size_t n)
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

/* Cut a trailing incomplete UTF-8 sequence left by a truncating snprintf,
 * so messages (which may end up in JSON themselves) stay valid UTF-8. */
static inline void utf8_trim(char *s)
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

#endif
