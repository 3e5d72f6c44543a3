/*
 * json.h - exact conversion between JSON text and Lua values.
 *
 * Decoding is written directly (no cJSON tree): one pass checks the text,
 * a second builds the Lua value from it. It guarantees:
 *
 *   - integers stay integers and floats stay floats: a JSON number written
 *     without '.', 'e' or 'E' becomes a Lua integer (exact, from its text),
 *     any other number a Lua float. Following I-JSON (RFC 7493), an integer
 *     outside +-(2^53 - 1) and a number that overflows a double (1e400) are
 *     rejected: send such values as strings.
 *   - JSON null is the evlua.null sentinel (a light userdata, NULL), so a
 *     null inside an array or object keeps its place.
 *   - arrays carry a marker metatable, so `[]` and `{}` survive a round
 *     trip; a decoded object has no metatable.
 *   - every string and key must be valid UTF-8 (no lone surrogates, no
 *     overlong forms); nesting is limited (EVL_JSON_MAX_DEPTH).
 *
 * Decoding also rejects \u0000 (C strings would cut the string short;
 * PostgreSQL's jsonb refuses it too) and a byte order mark;
 * duplicate keys: the last one wins. Byte offsets in messages count from
 * 0; paths use Lua's 1-based indices.
 *
 * Encoding is written directly (no cJSON tree):
 *   nil or evlua.null -> null; booleans; integers exactly ("%lld"), but
 *   only within +-(2^53 - 1) and strings without NUL bytes, so whatever
 *   encode writes, decode reads back (an aggregate can never emit an event
 *   its projections would refuse); at most 64 MB of output;
 *   floats with 17 significant digits, always with a '.' or exponent so
 *   they decode as floats again; NaN and +-inf are errors; strings must be
 *   valid UTF-8 and are escaped; a table with the array marker, or whose
 *   keys are exactly 1..n (n > 0), is an array; a table whose keys are all
 *   strings is an object (keys sorted, so equal tables encode equally); an
 *   empty table without the marker is {}; anything else (sparse arrays,
 *   mixed keys, functions, userdata, threads, cycles, nesting deeper than
 *   EVL_JSON_MAX_DEPTH) is an error naming the offending path, e.g.
 *   "data.items[3]: cannot encode a function as JSON".
 *
 * This is evlua's one JSON reader: code that reads JSON text uses
 * evl_json_decode (into Lua) or evl_json_members (a few top-level fields,
 * no Lua), so everything reads JSON by the same rules. Exceptions (the
 * remaining cJSON uses), each with its reason:
 *   - proj_read.c (projector): reads past faults json.c refused, to find
 *     the aggregate to park under.
 *   - tests/c (test helpers): take apart what evlua wrote, with a reader
 *     of their own rather than the one under test.
 *
 * Uses the Lua C API and buf.h (evl_buf, where the encoder writes). No global
 * state but the registry entry that holds the array metatable.
 *
 * @locality any thread, each on its own lua_State.
 */
#ifndef EVL_JSON_H
#define EVL_JSON_H

#include <stddef.h>

#include <lua.h>

#include "buf.h"
#include "evl.h"

#define EVL_JSON_MAX_DEPTH 128

/* Decode len bytes of JSON text (one value, surrounding white space
 * allowed, nothing after it) and push the value onto L.
 * Returns EVL_OK with exactly one value pushed, or EVL_EPERMANENT with
 * nothing pushed and a message in err ("invalid JSON at byte 17",
 * "integer 9007199254740993 at byte 9 is outside +-2^53 (I-JSON): send it as
 * a string", "invalid UTF-8 in string at byte 4", "nesting deeper than 128
 * at byte 128"). Never raises a Lua error except on memory exhaustion of L
 * (which the caller's pcall catches).
 * @locality the thread that owns L. */
evl_err evl_json_decode(lua_State *L, const char *s, size_t len, char *err,
                        size_t errlen);

/* One top-level member looked for by evl_json_members. */
enum { EVL_JSON_ABSENT, EVL_JSON_STRING, EVL_JSON_NUMBER, EVL_JSON_OTHER };
typedef struct evl_json_member {
    const char *name; /* in: the key (compared unescaped) */
    int type;         /* out: EVL_JSON_* */
    size_t off, len;  /* STRING: unescaped, NUL-terminated, at
                         scratch->data + off (valid UTF-8, no NUL inside) */
    int isint;        /* NUMBER: written as an integer (exact) */
    long long integer;
    double num;        /* NUMBER: the value (integers exactly) */
    size_t voff, vlen; /* any type but ABSENT: the member's value as it is
                          written, text[voff..voff+vlen) (valid JSON) */
} evl_json_member;

/* Check len bytes of JSON text exactly as evl_json_decode does and, when
 * it is an object, find its top-level members named in m[0..nm). scratch
 * (caller-owned, reused; its old content is dropped) holds the strings found.
 * Returns EVL_OK with *is_object set (0: valid JSON but not an object; every
 * member ABSENT), or EVL_EPERMANENT with decode's message in err. No Lua, no
 * allocation but scratch's growth (and a long text's number list). For readers
 * that need a few fields fast (the projector groups events by them before any
 * Lua runs). Of duplicate keys the last one counts, as in evl_json_decode,
 * so such readers agree with what the scripts see.
 * @locality any thread. */
evl_err evl_json_members(const char *s, size_t len, evl_json_member *m,
                         size_t nm, evl_buf *scratch, int *is_object, char *err,
                         size_t errlen);

/* As evl_json_members, and also finds the first top-level key that is
 * none of m's names (for readers that refuse unknown members, so a typo
 * of a field's name is not silently ignored): *unknown is EVL_JSON_NONE
 * when every key is named in m (or the text is no object), else the key,
 * unescaped and NUL-terminated (a \u0000 in it ends it early), is at
 * scratch->data + *unknown.
 * @locality any thread. */
#define EVL_JSON_NONE ((size_t)-1)
evl_err evl_json_members_unknown(const char *s, size_t len, evl_json_member *m,
                                 size_t nm, evl_buf *scratch, int *is_object,
                                 size_t *unknown, char *err, size_t errlen);

/* Call fn(ud, str, n) for each element of the JSON array s[0..len), a
 * value evl_json_members (or evl_json_decode) has already found valid,
 * with the element unescaped and NUL-terminated in scratch (valid while
 * fn runs). Returns EVL_OK, or EVL_EPERMANENT when s is not an array or
 * an element is not a string (err names its 1-based index); elements
 * before it have been passed to fn.
 * @locality any thread. */
evl_err evl_json_array_strings(const char *s, size_t len, evl_buf *scratch,
                               void (*fn)(void *ud, const char *str, size_t n),
                               void *ud, char *err, size_t errlen);

/* Call fn(ud, value, n) for each element of the JSON array s[0..len), a
 * value evl_json_members (or evl_json_decode) has already found valid,
 * with the element's own text (no white space around it; a span of s).
 * Returns EVL_OK, or EVL_EPERMANENT when s is not an array.
 * @locality any thread. */
evl_err evl_json_array_values(const char *s, size_t len,
                              void (*fn)(void *ud, const char *value, size_t n),
                              void *ud, char *err, size_t errlen);

/* Append the JSON text of the value at index idx of L to out (which is
 * not NUL-terminated by the encoder; out->len grows). On error out->len is
 * restored to what it was and the message (with the path of the bad value)
 * is in err; returns EVL_EPERMANENT. Does not raise Lua errors, does not
 * change the stack (may use a few slots temporarily: the caller must leave
 * room via lua_checkstack, which this function also calls).
 * @locality the thread that owns L. */
evl_err evl_json_encode(lua_State *L, int idx, evl_buf *out, char *err,
                        size_t errlen);

/* A meter for the encoder's work on one lua_State. A small Lua value can
 * stand for a huge text (t = {t, t} nested 40 deep is 2^40 elements), and
 * the Lua host's instruction count does not run inside C: with a meter set
 * on L, evl_json_encode calls meter->charge(L, work) every
 * EVL_JSON_METER_NODES values it writes (work: values plus output bytes
 * / 16); a non-zero return stops the encoding with the message the meter
 * wrote into err. The meter must not raise. Set it once per state (NULL:
 * none, the default); meter must outlive L. */
typedef struct evl_json_meter {
    int (*charge)(lua_State *L, size_t work, char *err, size_t errlen);
} evl_json_meter;
#define EVL_JSON_METER_NODES 1024
void evl_json_set_meter(lua_State *L, const evl_json_meter *meter);

/* Push the evlua.null sentinel; is the value at idx the sentinel? */
void evl_json_push_null(lua_State *L);
int evl_json_is_null(lua_State *L, int idx);

/* Push the array marker metatable (created in the registry on first use,
 * with __name = "evlua.json.array"). Setting it on a table makes the
 * encoder write it as an array even when empty. */
void evl_json_push_array_mt(lua_State *L);

/* Is the string of len bytes valid UTF-8 (RFC 3629: no surrogates, no
 * overlong forms, nothing above U+10FFFF)? Returns -1 when valid, else the
 * byte offset of the first bad byte. */
long evl_utf8_check(const char *s, size_t len);

/* Lua module functions, for the evlua table (luaapi) and the busted
 * module: evlua.json.encode(v) -> string, evlua.json.decode(s) -> value.
 * Both raise a Lua error with the message on bad input. Pushes a table
 * {encode=, decode=, null=, array=} where array(t) sets the marker on t
 * and returns t. */
int evl_json_open(lua_State *L);

#endif
