/*
 * test_json.c - JSON <-> Lua conversion: exact numbers, null and empty
 * containers that survive a round trip, strict rejection of bad text, and
 * encoder errors that name the path of the bad value.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>

#include "check.h"
#include "json.h"

static lua_State *L;
static char err[EVL_ERRLEN];
static evl_buf out;
static char text[1024]; /* the last result of recode() or encode_expr() */

/* Keep the result in text[], cut to fit. */
static const char *keep(const char *s, size_t n)
{
    if (n >= sizeof text)
        n = sizeof text - 1;
    memcpy(text, s, n);
    text[n] = '\0';
    return text;
}

/* Decode json, encode the value again: the text, or the error message. */
static const char *recode_n(const char *json, size_t len)
{
    int top = lua_gettop(L);

    if (evl_json_decode(L, json, len, err, sizeof err) != EVL_OK) {
        CHECK_INT(lua_gettop(L), top, "a failed decode pushes nothing");
        return keep(err, strlen(err));
    }
    CHECK_INT(lua_gettop(L), top + 1, "decode pushes exactly one value");
    out.len = 0;
    if (evl_json_encode(L, -1, &out, err, sizeof err) != EVL_OK) {
        lua_settop(L, top);
        return keep(err, strlen(err));
    }
    CHECK_INT(lua_gettop(L), top + 1, "encode leaves the stack as it was");
    lua_settop(L, top);
    return keep(out.data, out.len);
}

static const char *recode(const char *json)
{
    return recode_n(json, strlen(json));
}

/* Decode json and leave the value on the stack; returns NULL on success,
 * else the message (and pushes nothing). */
static const char *decode(const char *json)
{
    if (evl_json_decode(L, json, strlen(json), err, sizeof err) != EVL_OK)
        return err;
    return NULL;
}

/* Evaluate the Lua expression and encode its value, after "prefix" already
 * in the buffer: the JSON text, or the error message. Checks that the
 * stack is unchanged and that a failure leaves the buffer as it was. */
static const char *encode_expr(const char *expr)
{
    char chunk[1024];
    int top;

    snprintf(chunk, sizeof chunk, "return %s", expr);
    if (luaL_dostring(L, chunk) != LUA_OK) {
        const char *msg =
            keep(lua_tostring(L, -1), strlen(lua_tostring(L, -1)));
        lua_pop(L, 1);
        CHECK_STR(msg, "", "the test expression runs");
        return msg;
    }
    top = lua_gettop(L);
    out.len = 0;
    evl_buf_puts(&out, "prefix");
    evl_err rc = evl_json_encode(L, -1, &out, err, sizeof err);
    CHECK_INT(lua_gettop(L), top, "encode leaves the stack top unchanged");
    lua_pop(L, 1);
    if (rc != EVL_OK) {
        CHECK_INT(rc, EVL_EPERMANENT, "encode errors are permanent");
        CHECK_INT(out.len, 6, "a failed encode restores the buffer length");
        return keep(err, strlen(err));
    }
    return keep(out.data + 6, out.len - 6);
}

/* Run a Lua chunk that uses the global `json`; returns "ok" or the error. */
static const char *run(const char *chunk)
{
    if (luaL_dostring(L, chunk) != LUA_OK) {
        const char *msg =
            keep(lua_tostring(L, -1), strlen(lua_tostring(L, -1)));
        lua_pop(L, 1);
        return msg;
    }
    lua_settop(L, 0);
    return "ok";
}

static void test_integers(void)
{
    static const char *ints[] = {"0", "-1", "42", "9007199254740991",
                                 "-9007199254740991"};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        CHECK_STR(recode(ints[i]), ints[i], "an integer survives a round trip");
        CHECK(decode(ints[i]) == NULL, "an integer in range decodes");
        CHECK(lua_isinteger(L, -1),
              "a number without '.' or 'e' is an integer");
        CHECK_INT(lua_tointeger(L, -1), strtoll(ints[i], NULL, 10),
                  "the integer keeps its exact value");
        lua_pop(L, 1);
    }
    CHECK_STR(recode("-0"), "0", "-0 is the integer 0");
    CHECK_STR(recode("[1,2,3]"), "[1,2,3]", "an array of integers stays so");
}

static void test_floats(void)
{
    CHECK_STR(recode("1.5"), "1.5", "1.5 survives a round trip");
    CHECK_STR(recode("1.0"), "1.0", "1.0 stays a float");
    CHECK(decode("1.0") == NULL && !lua_isinteger(L, -1),
          "1.0 decodes to a float, not an integer");
    lua_pop(L, 1);
    CHECK(decode("2e0") == NULL && !lua_isinteger(L, -1),
          "a number with an exponent is a float");
    lua_pop(L, 1);

    CHECK(decode("1e300") == NULL && lua_tonumber(L, -1) == 1e300,
          "1e300 decodes to the double 1e300");
    lua_pop(L, 1);
    CHECK_STR(recode("1e300"), "1.0000000000000001e+300",
              "1e300 encodes with 17 significant digits");
    CHECK(decode("1.0000000000000001e+300") == NULL &&
              lua_tonumber(L, -1) == 1e300,
          "the 17-digit text decodes to the same double");
    lua_pop(L, 1);

    CHECK_STR(recode("-0.0"), "-0.0", "-0.0 keeps its sign and its '.'");
    CHECK(decode("-0.0") == NULL && signbit(lua_tonumber(L, -1)),
          "-0.0 decodes to negative zero");
    lua_pop(L, 1);
    CHECK_STR(encode_expr("0.1"), "0.10000000000000001",
              "0.1 encodes with 17 significant digits");
    CHECK(decode("0.10000000000000001") == NULL && lua_tonumber(L, -1) == 0.1,
          "and decodes back to exactly 0.1");
    lua_pop(L, 1);
    CHECK_STR(encode_expr("2^63"), "9.2233720368547758e+18",
              "a float beyond the integers keeps its exponent");
    CHECK_STR(encode_expr("3.0"), "3.0", "an integral float gets '.0'");
    CHECK_STR(recode("1e-400"), "0.0", "an underflowing number becomes 0.0");

    /* both ways of reading floats (the exact fast path and strtod) give
     * strtod's double */
    static const char *floats[] = {"0.1",
                                   "0.3",
                                   "12.5",
                                   "-7.25e-3",
                                   "1e22",
                                   "1e23",
                                   "9.5e-22",
                                   "123456789012345.6",
                                   "1234567890123456e-5",
                                   "5e-324",
                                   "2.2250738585072014e-308",
                                   "1.7976931348623157e308",
                                   "4.9406564584124654e-324",
                                   "0.000001",
                                   "3.14159265358979323846",
                                   "1E+2",
                                   "1e0",
                                   "-0.0e5"};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
        CHECK(decode(floats[i]) == NULL, "a float decodes");
        double got = lua_tonumber(L, -1), want = strtod(floats[i], NULL);
        CHECK(memcmp(&got, &want, sizeof got) == 0,
              "a float decodes to the double strtod gives");
        lua_pop(L, 1);
    }
}

static void test_structure(void)
{
    const char *nested = "{\"a\":[1,{\"b\":null,\"c\":[true,false]}],"
                         "\"d\":{\"e\":\"x\"}}";
    CHECK_STR(recode(nested), nested, "nested objects and arrays survive");
    CHECK_STR(recode("[]"), "[]", "[] survives a round trip");
    CHECK_STR(recode("{}"), "{}", "{} survives a round trip");
    CHECK_STR(recode("{\"a\":[],\"b\":{},\"c\":[[]]}"),
              "{\"a\":[],\"b\":{},\"c\":[[]]}",
              "empty arrays and objects inside others survive");
    CHECK_STR(recode("[null,1,null]"), "[null,1,null]",
              "null in an array keeps its position");
    CHECK(decode("[null,1,null]") == NULL, "an array with nulls decodes");
    CHECK_INT(lua_rawlen(L, -1), 3, "the nulls count in the array's length");
    lua_rawgeti(L, -1, 3);
    CHECK(evl_json_is_null(L, -1), "a JSON null is the null sentinel");
    lua_pop(L, 2);
    CHECK_STR(recode("{\"b\":1,\"a\":2,\"c\":null}"),
              "{\"a\":2,\"b\":1,\"c\":null}",
              "object keys come out sorted, and a null member stays");
    CHECK_STR(recode("{\"a\":1,\"a\":2}"), "{\"a\":2}",
              "of duplicate keys the last one wins");
    CHECK_STR(recode(" \t\r\n[ 1 , \"x\" ]\n "), "[1,\"x\"]",
              "white space around tokens is allowed");
    CHECK_STR(recode("\"x\""), "\"x\"", "a string is a valid JSON text");
    CHECK_STR(recode("null"), "null", "null is a valid JSON text");

    CHECK(decode("{}") == NULL, "an object decodes");
    CHECK(!lua_getmetatable(L, -1), "a decoded object has no metatable");
    lua_pop(L, 1);
    CHECK(decode("[]") == NULL && lua_getmetatable(L, -1),
          "a decoded array has a metatable");
    evl_json_push_array_mt(L);
    CHECK(lua_rawequal(L, -1, -2), "which is the array marker");
    lua_getfield(L, -1, "__name");
    CHECK_STR(lua_tostring(L, -1), "evlua.json.array",
              "the marker is named evlua.json.array");
    lua_pop(L, 4);
}

static void test_strings(void)
{
    CHECK_STR(recode("\"\\u00e9\\n\\t\\\"\\\\\\/\""),
              "\"\xc3\xa9\\n\\t\\\"\\\\/\"",
              "escapes decode; '/' is not escaped again");
    CHECK(decode("\"\\ud83d\\ude00\"") == NULL, "a surrogate pair decodes");
    CHECK_STR(lua_tostring(L, -1), "\xf0\x9f\x98\x80",
              "a surrogate pair becomes one 4-byte UTF-8 character");
    lua_pop(L, 1);
    CHECK_STR(encode_expr("'a\"b\\\\c\\n\\1\\31/\\127 \xc3\xa9'"),
              "\"a\\\"b\\\\c\\n\\u0001\\u001f/\x7f \xc3\xa9\"",
              "the encoder escapes quotes, backslashes and control "
              "characters, nothing else");

    /* 10 MB with a multi-byte character and an escape at both ends */
    size_t n = 10u << 20;
    char *big = malloc(n + 32);
    size_t len = 0;
    memcpy(big, "\"\xc3\xa9\\n", 5);
    len = 5;
    memset(big + len, 'x', n);
    len += n;
    memcpy(big + len, "\\n\xc3\xa9\"", 5);
    len += 5;
    CHECK(evl_json_decode(L, big, len, err, sizeof err) == EVL_OK,
          "a 10 MB string decodes");
    CHECK_INT(lua_rawlen(L, -1), n + 6, "and keeps all its bytes");
    lua_pop(L, 1);
    free(big);
}

static void test_numbers_beyond_ijson(void)
{
    CHECK_STR(recode("9007199254740992"),
              "integer 9007199254740992 at byte 0 is outside +-2^53 (I-JSON): "
              "send it as a string",
              "2^53 is rejected");
    CHECK_HAS(recode("[9007199254740993]"),
              "integer 9007199254740993 at byte 1 is outside +-2^53",
              "2^53 + 1 is rejected, with its offset");
    CHECK_STR(recode("{\"id\": 9223372036854775808}"),
              "integer 9223372036854775808 at byte 7 is outside +-2^53 "
              "(I-JSON): send it as a string",
              "2^63 is rejected");
    CHECK_HAS(recode("-9007199254740992"), "is outside +-2^53",
              "-2^53 is rejected");
    CHECK_HAS(recode("123456789012345678901234567890123456789012345678901"),
              "integer 1234567890123456789012345678901234567890... at byte 0",
              "a very long integer is rejected and shortened in the message");
    CHECK_STR(recode("1e400"), "number 1e400 at byte 0 overflows a double",
              "1e400 is rejected");
    CHECK_STR(recode("[1, -1e400]"),
              "number -1e400 at byte 4 overflows a double",
              "-1e400 is rejected");
}

static void test_rejections(void)
{
    static const struct {
        const char *json, *want, *what;
    } bad[] = {
        {"", "invalid JSON at byte 0: no value", "empty input is rejected"},
        {"  \n", "invalid JSON at byte 3: no value", "blank input is rejected"},
        {"[1] x", "invalid JSON at byte 4: unexpected 'x'",
         "trailing garbage is rejected"},
        {"1 2", "invalid JSON at byte 2: text after the value",
         "a second value is rejected"},
        {"{}{}", "invalid JSON at byte 2: text after the value",
         "a second object is rejected"},
        {"[1,2", "invalid JSON at byte ", "an unclosed array is rejected"},
        {"[1,]", "invalid JSON at byte ", "a trailing comma is rejected"},
        {"{\"a\":1,}", "invalid JSON at byte ",
         "a trailing comma in an object"},
        {"{\"a\" 1}", "invalid JSON at byte ", "a missing colon is rejected"},
        {"{1:2}", "invalid JSON at byte ", "a number key is rejected"},
        {"[1}", "invalid JSON at byte 2", "a mismatched bracket is rejected"},
        {"{\"a\":1 \"b\":2}", "invalid JSON at byte 7",
         "a missing comma is rejected"},
        {"[1:2]", "invalid JSON at byte 2", "a colon in an array is rejected"},
        {"{\"a\"}", "invalid JSON at byte 4", "a key without a value"},
        {"[,1]", "invalid JSON at byte 1", "a leading comma is rejected"},
        {"{\"a\":{}", "invalid JSON at byte 7: unexpected end",
         "an unclosed object is rejected at the end"},
        {"]", "invalid JSON at byte 0: unmatched ']'", "a stray ] is rejected"},
        {"01", "invalid JSON at byte 0: malformed number",
         "a leading zero is rejected"},
        {"1.", "invalid JSON at byte 0: malformed number",
         "a '.' without digits is rejected"},
        {"-.5", "invalid JSON at byte 0: malformed number",
         "a number without an integer part is rejected"},
        {"+1", "invalid JSON at byte 0: unexpected '+'",
         "a '+' sign is rejected"},
        {"[1-2]", "invalid JSON at byte 1: malformed number",
         "a number running into another is rejected"},
        {"1e", "invalid JSON at byte 0: malformed number",
         "an exponent without digits is rejected"},
        {"NaN", "invalid JSON at byte 0: unexpected 'N'", "NaN is rejected"},
        {"tru", "invalid JSON at byte 0: unexpected 't'", "a cut literal"},
        {"\"abc", "invalid JSON at byte 0: unterminated string",
         "an unterminated string is rejected"},
        {"\"abc\\", "invalid JSON at byte 0: unterminated string",
         "a string ending in a backslash is rejected"},
        {"\"a\nb\"", "invalid JSON at byte 2: control character 0x0A",
         "a raw newline in a string is rejected"},
        {"\"\\x\"", "invalid JSON at byte 1: bad escape \\x",
         "an unknown escape is rejected"},
        {"\"\\\x01\"", "invalid JSON at byte 1: bad escape in string",
         "an escaped control character is rejected"},
        {"\"\\uzzzz\"", "invalid JSON at byte 1: \\u must be followed by four",
         "a \\u escape without hex digits is rejected"},
        {"\"\\u12\"", "invalid JSON at byte 1: \\u must be followed by four",
         "a short \\u escape is rejected"},
        {"\"a\\u0000b\"", "\\u0000 in string at byte 2: NUL",
         "\\u0000 is rejected rather than cutting the string"},
        {"\"a\xff\"", "invalid UTF-8 in string at byte 2",
         "an invalid UTF-8 byte is rejected"},
        {"{\"k\xff\":1}", "invalid UTF-8 in string at byte 3",
         "an invalid UTF-8 byte in a key is rejected"},
        {"\"\xc0\xaf\"", "invalid UTF-8 in string at byte 1",
         "an overlong 2-byte form is rejected"},
        {"\"\xe0\x80\xaf\"", "invalid UTF-8 in string at byte 1",
         "an overlong 3-byte form is rejected"},
        {"\"\xed\xa0\x80\"", "invalid UTF-8 in string at byte 1",
         "a raw (CESU-8) surrogate is rejected"},
        {"\"\xf4\x90\x80\x80\"", "invalid UTF-8 in string at byte 1",
         "a code point above U+10FFFF is rejected"},
        {"\"\xc3\"", "invalid UTF-8 in string at byte 1",
         "a truncated sequence is rejected"},
        {"\"\\ud800\"",
         "invalid UTF-8 in string at byte 1: lone surrogate "
         "\\ud800",
         "a lone high surrogate escape is rejected"},
        {"\"\\udc00x\"",
         "invalid UTF-8 in string at byte 1: lone surrogate "
         "\\udc00",
         "a lone low surrogate escape is rejected"},
        {"\"\\ud800\\u0041\"", "lone surrogate \\ud800",
         "a high surrogate followed by a non-surrogate is rejected"},
        {"\"\\ud800\\ud800\"", "lone surrogate \\ud800",
         "two high surrogates are rejected"},
        {"\xef\xbb\xbf{}", "invalid JSON at byte 0: unexpected byte 0xEF",
         "a byte order mark is rejected"},
        {"\x01 1", "invalid JSON at byte 0: unexpected byte 0x01",
         "a control character is not white space"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_HAS(recode(bad[i].json), bad[i].want, bad[i].what);

    CHECK_STR(recode_n("[1]\0", 4),
              "invalid JSON at byte 3: unexpected byte 0x00",
              "a NUL byte after the value is rejected");
    CHECK_STR(recode_n("\"a\0b\"", 5),
              "invalid JSON at byte 2: control character 0x00 in string "
              "must be escaped",
              "a raw NUL byte in a string is rejected");
}

static void test_nesting(void)
{
    size_t n = 10000;
    char *deep = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        deep[i] = '[';
        deep[2 * n - 1 - i] = ']';
    }
    deep[2 * n] = '\0';
    CHECK_STR(recode(deep), "nesting deeper than 128 at byte 128",
              "10,000 nested arrays are rejected cleanly");
    memset(deep, '{', n);
    CHECK_STR(recode(deep), "nesting deeper than 128 at byte 128",
              "10,000 nested object openings are rejected cleanly");

    /* exactly 128 levels are fine, 129 are not */
    memset(deep, '[', 128);
    memset(deep + 128, ']', 128);
    deep[256] = '\0';
    CHECK_STR(recode(deep), deep, "128 nested arrays survive a round trip");
    memset(deep, '[', 129);
    memset(deep + 129, ']', 129);
    deep[258] = '\0';
    CHECK_STR(recode(deep), "nesting deeper than 128 at byte 128",
              "129 nested arrays are rejected");
    free(deep);

    /* 127 arrays around an empty object: 128 levels */
    char want[300];
    memset(want, '[', 127);
    memcpy(want + 127, "{}", 2);
    memset(want + 129, ']', 127);
    want[256] = '\0';
    CHECK_STR(encode_expr("(function() local t = {} for i = 1, 127 do "
                          "t = {t} end return t end)()"),
              want, "the encoder writes 128 levels of nesting");
    const char *msg = encode_expr("(function() local t = {} for i = 1, 10000 "
                                  "do t = {a = t} end return t end)()");
    CHECK(strncmp(msg, "...a.a.a.", 9) == 0,
          "the encoder shows the end of a deep path");
    CHECK_HAS(msg, ".a.a: nesting deeper than 128",
              "the encoder rejects 10,000 levels");
    CHECK(strlen(msg) < 300, "a deep path is shortened");
}

static void test_encoder(void)
{
    CHECK_STR(encode_expr("nil"), "null", "nil encodes as null");
    CHECK_STR(encode_expr("json.null"), "null", "the sentinel encodes as null");
    CHECK_STR(encode_expr("{true, false, json.null}"), "[true,false,null]",
              "booleans and null in an array");
    CHECK_STR(encode_expr("{}"), "{}", "an empty plain table is an object");
    CHECK_STR(encode_expr("json.array({})"), "[]",
              "an empty marked table is an array");
    CHECK_STR(encode_expr("json.array({1, 2})"), "[1,2]",
              "a marked table with elements is an array");
    CHECK_STR(encode_expr("{[1] = 'a', [2] = 'b', [3] = 'c'}"),
              "[\"a\",\"b\",\"c\"]", "keys 1..n make an array");
    CHECK_STR(encode_expr("{zeta = 1, alpha = {x = 2}, [''] = 3, Beta = 4}"),
              "{\"\":3,\"Beta\":4,\"alpha\":{\"x\":2},\"zeta\":1}",
              "object keys are sorted bytewise");
    CHECK_STR(encode_expr("(function() local s = {1} return {a = s, b = s} "
                          "end)()"),
              "{\"a\":[1],\"b\":[1]}",
              "a table on two branches is not a cycle");
    CHECK_STR(encode_expr("setmetatable({a = 1}, {__index = function() end})"),
              "{\"a\":1}", "a table's own metatable is ignored");
    CHECK_STR(encode_expr("'\\b\\f\\r\\t'"), "\"\\b\\f\\r\\t\"",
              "the short escapes are used where JSON has them");

    /* 40 keys: more than the sort array on the C stack holds */
    char want[1024];
    size_t n = 0;
    want[n++] = '{';
    for (int i = 1; i <= 40; i++)
        n += (size_t)snprintf(want + n, sizeof want - n, "%s\"k%02d\":%d",
                              i > 1 ? "," : "", i, 41 - i);
    want[n++] = '}';
    want[n] = '\0';
    CHECK_STR(encode_expr("(function() local t = {} for i = 1, 40 do "
                          "t[string.format('k%02d', 41 - i)] = i end "
                          "return t end)()"),
              want, "a large object comes out sorted");
    CHECK_STR(encode_expr("-9007199254740991"), "-9007199254740991",
              "the most negative I-JSON integer is written exactly");
    CHECK_STR(encode_expr("math.mininteger + 0.0"), "-9.2233720368547758e+18",
              "a float is not mistaken for an integer");
}

static void test_encoder_errors(void)
{
    static const struct {
        const char *expr, *want, *what;
    } bad[] = {
        {"{data = {items = {1, 2, print}}}",
         "data.items[3]: cannot encode a function as JSON",
         "a function is rejected with its path"},
        {"print", "cannot encode a function as JSON",
         "a function at the top has no path"},
        {"{u = io.stdout}", "u: cannot encode a userdata as JSON",
         "a userdata is rejected"},
        {"{co = coroutine.create(print)}", "co: cannot encode a thread as JSON",
         "a thread is rejected"},
        {"(function() local t = {} t.self = t return {a = t} end)()",
         "a.self: cannot encode a cyclic table", "a cycle is detected"},
        {"(function() local t = {} t[1] = {t} return t end)()",
         "[1][1]: cannot encode a cyclic table", "a cycle through an array"},
        {"{x = 0/0}", "x: cannot encode NaN as JSON", "NaN is rejected"},
        {"{y = {math.huge}}", "y[1]: cannot encode inf as JSON",
         "inf is rejected"},
        {"{z = -math.huge}", "z: cannot encode -inf as JSON",
         "-inf is rejected"},
        {"{list = {1, nil, 3}}",
         "list: sparse array (key 3 but 2 elements): JSON arrays have no "
         "holes",
         "a sparse array is rejected"},
        {"{1, 2, a = 3}", "table mixes integer and string keys",
         "mixed keys are rejected"},
        {"{m = {[0] = 'x'}}",
         "m: table has the integer key 0: arrays start at 1",
         "an array from 0 is rejected"},
        {"{f = {[1.5] = true}}",
         "f: table has a float key (1.5): JSON object keys must be strings",
         "a float key is rejected"},
        {"{b = {[true] = 1}}",
         "b: table has a boolean key (true): JSON object keys must be strings",
         "a boolean key is rejected"},
        {"{t = {[{}] = 1}}", "t: table has a table key",
         "a table key is rejected"},
        {"{n = 9007199254740992}",
         "n: integer 9007199254740992 is outside +-2^53 (I-JSON): send it as "
         "a string",
         "an integer that decode would reject is not written"},
        {"{s = 'a\\0b'}", "s: string contains a NUL byte (offset 1)",
         "a string with a NUL byte is rejected"},
        {"{s = 'ok\\255'}",
         "s: string is not valid UTF-8 (bad byte at offset 2)",
         "an invalid UTF-8 string is rejected"},
        {"{s = '\\237\\160\\128'}", "s: string is not valid UTF-8",
         "a CESU-8 surrogate in a string is rejected"},
        {"{['k\\255'] = 1}", "[\"k\\xFF\"]: key is not valid UTF-8",
         "an invalid UTF-8 key is rejected and shown escaped"},
        {"{['a b'] = {print}}", "[\"a b\"][1]: cannot encode a function",
         "a key that is no identifier is quoted in the path"},
        {"{['caf\xc3\xa9 1'] = print}",
         "[\"caf\xc3\xa9 1\"]: cannot encode a function",
         "a key with non-ASCII characters is shown as it is"},
        {"{[string.rep('x', 60) .. '!'] = print}",
         "[\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\"]: cannot",
         "a long key is shortened in the path"},
        {"json.array({1, x = 2})", "table mixes integer and string keys",
         "a marked table with a string key is rejected"},
        {"json.array({x = 2})", "table marked as an array has string keys",
         "a marked table with only string keys is rejected"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_HAS(encode_expr(bad[i].expr), bad[i].want, bad[i].what);

    /* a light userdata other than the sentinel */
    int top = lua_gettop(L);
    static int thing;
    lua_pushlightuserdata(L, &thing);
    out.len = 0;
    CHECK(evl_json_encode(L, -1, &out, err, sizeof err) == EVL_EPERMANENT,
          "a light userdata other than null is rejected");
    CHECK_STR(err, "cannot encode a light userdata as JSON",
              "and the message says so");
    lua_settop(L, top);

    /* a message cut by a small buffer stays valid UTF-8 */
    CHECK(luaL_dostring(L, "return {['\xc3\xa9 x'] = print}") == LUA_OK,
          "the test value is made");
    char small[4];
    CHECK(evl_json_encode(L, -1, &out, small, sizeof small) != EVL_OK,
          "the function is rejected");
    CHECK_STR(small, "[\"", "a cut message ends before a split character");
    lua_settop(L, top);

    /* 2^20 references to one 100-byte string: 100 MB of text from a tiny
     * value; the encoder stops at its bound instead of exhausting memory */
    CHECK_HAS(encode_expr("(function() local s, t = string.rep('x', 100), {} "
                          "for i = 1, 2^20 do t[i] = s end return t end)()"),
              "JSON text longer than 67108864 bytes",
              "an enormous text is refused");
    CHECK_HAS(encode_expr("(function() local t = string.rep('x', 2^20) "
                          "for i = 1, 60 do t = {t, t} end return t end)()"),
              "JSON text longer than 67108864 bytes",
              "an exponential blow-up through shared tables is refused");
}

static void test_utf8_check(void)
{
    CHECK_INT(evl_utf8_check("", 0), -1, "the empty string is valid");
    CHECK_INT(evl_utf8_check("plain ascii text", 16), -1, "ASCII is valid");
    CHECK_INT(evl_utf8_check("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14),
              -1, "2-, 3- and 4-byte characters are valid");
    CHECK_INT(evl_utf8_check("\xef\xbf\xbf\xf4\x8f\xbf\xbf", 7), -1,
              "U+FFFF and U+10FFFF are valid");
    CHECK_INT(evl_utf8_check("a\xff"
                             "b",
                             3),
              1, "0xFF is invalid, at its offset");
    CHECK_INT(evl_utf8_check("\x80", 1), 0, "a lone continuation is invalid");
    CHECK_INT(evl_utf8_check("\xc0\x80", 2), 0, "overlong NUL is invalid");
    CHECK_INT(evl_utf8_check("\xc1\xbf", 2), 0, "overlong 2-byte is invalid");
    CHECK_INT(evl_utf8_check("ab\xe0\x9f\xbf", 5), 2,
              "overlong 3-byte is invalid");
    CHECK_INT(evl_utf8_check("\xf0\x8f\xbf\xbf", 4), 0,
              "overlong 4-byte is invalid");
    CHECK_INT(evl_utf8_check("x\xed\xa0\x80", 4), 1,
              "an encoded high surrogate is invalid");
    CHECK_INT(evl_utf8_check("\xed\xbf\xbf", 3), 0,
              "an encoded low surrogate is invalid");
    CHECK_INT(evl_utf8_check("\xed\x9f\xbf", 3), -1,
              "U+D7FF, just below the surrogates, is valid");
    CHECK_INT(evl_utf8_check("\xf4\x90\x80\x80", 4), 0,
              "above U+10FFFF is invalid");
    CHECK_INT(evl_utf8_check("\xf5\x80\x80\x80", 4), 0,
              "lead byte 0xF5 is invalid");
    CHECK_INT(evl_utf8_check("ab\xe2\x82", 4), 2,
              "a sequence cut by the end is invalid at its start");
    CHECK_INT(evl_utf8_check("\xe2\x82x", 3), 0,
              "a sequence cut by ASCII is invalid");
    CHECK_INT(evl_utf8_check("\xf0\x9f\x98x", 4), 0,
              "a 4-byte sequence cut by ASCII is invalid");

    char long_text[1000];
    memset(long_text, 'a', sizeof long_text);
    long_text[997] = '\xff';
    CHECK_INT(evl_utf8_check(long_text, sizeof long_text), 997,
              "a bad byte after a long ASCII run is found at its offset");
}

static void test_lua_api(void)
{
    CHECK_STR(run("local t = json.decode('[1, 2.5, null, \"x\"]')\n"
                  "assert(math.type(t[1]) == 'integer')\n"
                  "assert(math.type(t[2]) == 'float')\n"
                  "assert(t[3] == json.null)\n"
                  "assert(#t == 4)\n"
                  "assert(json.encode(t) == '[1,2.5,null,\"x\"]')\n"),
              "ok", "decode and encode work from Lua");
    CHECK_STR(run("assert(json.encode(json.decode('{\"a\":[],\"b\":{}}')) == "
                  "'{\"a\":[],\"b\":{}}')"),
              "ok", "[] and {} survive a round trip through Lua");
    CHECK_STR(run("local t = {} assert(json.array(t) == t)"), "ok",
              "array(t) returns t");
    CHECK_STR(run("local t = json.array({}) assert(json.array(t) == t)"), "ok",
              "array() on a marked table is harmless");
    CHECK_HAS(run("json.array(setmetatable({}, {}))"),
              "table already has a metatable",
              "array() refuses to replace another metatable");
    CHECK_HAS(run("json.array(1)"), "bad argument #1 to 'array'",
              "array() wants a table");
    CHECK_HAS(run("json.decode('[1,')"), "invalid JSON at byte",
              "decode raises a Lua error on bad text");
    CHECK_HAS(run("json.decode({})"), "bad argument #1 to 'decode'",
              "decode wants a string");
    CHECK_HAS(run("json.encode({data = {items = {1, 2, print}}})"),
              "data.items[3]: cannot encode a function as JSON",
              "encode raises a Lua error with the path");
    CHECK_HAS(run("json.encode()"), "bad argument #1 to 'encode'",
              "encode wants a value");
    CHECK_STR(run("local big = string.rep('y', 100000)\n"
                  "assert(json.encode(big) == '\"' .. big .. '\"')\n"
                  "assert(json.encode({1}) == '[1]')\n"),
              "ok", "encode reuses and shrinks its buffer across calls");
}

/* An allocator with a cap, as luahost uses, to exhaust Lua's memory. */
typedef struct cap {
    size_t used, limit;
} cap;

static void *cap_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    cap *c = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        c->used -= old;
        return NULL;
    }
    if (nsize > old && c->used + nsize - old > c->limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        c->used = c->used - old + nsize;
    return p;
}

static int decode_big(lua_State *LL)
{
    size_t len;
    const char *s = lua_tolstring(LL, 1, &len);
    char e[EVL_ERRLEN];
    if (evl_json_decode(LL, s, len, e, sizeof e) != EVL_OK)
        return luaL_error(LL, "%s", e);
    return 1;
}

static void test_members(void)
{
    evl_buf scratch = {0};
    int is_object = -1;
    evl_json_member m[4] = {{.name = "type"},
                            {.name = "aggregate_id"},
                            {.name = "sequence"},
                            {.name = "missing"}};
    const char *ev = " {\"data\":{\"sequence\":[1,2.5,{\"x\":3}],"
                     "\"type\":\"inner\"},\"t\\u0079pe\":\"Up\\u00e9\","
                     "\"aggregate_id\":\"k\\\"1\",\"sequence\":42,"
                     "\"sequence\":7,\"n\":[null,true,false,-1e3]} ";
    CHECK_INT(evl_json_members(ev, strlen(ev), m, 4, &scratch, &is_object, err,
                               sizeof err),
              EVL_OK, "a valid object is read");
    CHECK_INT(is_object, 1, "and known to be an object");
    CHECK_INT(m[0].type, EVL_JSON_STRING,
              "a key written with an escape is found");
    CHECK_STR(scratch.data + m[0].off, "Up\xc3\xa9",
              "its string comes unescaped");
    CHECK_INT(m[0].len, 4, "with its length in bytes");
    CHECK_STR(scratch.data + m[1].off, "k\"1",
              "a top-level string member is read, nested ones are not");
    CHECK_INT(m[2].type, EVL_JSON_NUMBER, "a number member is read");
    CHECK(m[2].isint && m[2].integer == 7 && m[2].num == 7.0,
          "as the exact integer, after nested numbers were skipped; of "
          "duplicate keys the last counts, as evl_json_decode does");
    CHECK_INT(m[3].type, EVL_JSON_ABSENT, "a missing member is absent");

    CHECK_INT(
        evl_json_members("[1]", 3, m, 4, &scratch, &is_object, err, sizeof err),
        EVL_OK, "an array is valid JSON");
    CHECK_INT(is_object, 0, "but not an object");
    CHECK_INT(m[0].type, EVL_JSON_ABSENT, "and has no members");
    CHECK_INT(evl_json_members("{\"type\":[]}", 11, m, 4, &scratch, &is_object,
                               err, sizeof err),
              EVL_OK, "an object with an array member is read");
    CHECK_INT(m[0].type, EVL_JSON_OTHER, "whose kind is other");
    CHECK_INT(evl_json_members("{\"sequence\":1.0}", 16, m, 4, &scratch,
                               &is_object, err, sizeof err),
              EVL_OK, "a float member is read");
    CHECK(m[2].type == EVL_JSON_NUMBER && !m[2].isint && m[2].num == 1.0,
          "as a float");
    CHECK_INT(evl_json_members("{\"a\":1,}", 8, m, 4, &scratch, &is_object, err,
                               sizeof err),
              EVL_EPERMANENT, "invalid JSON is refused");
    CHECK_HAS(err, "invalid JSON at byte ", "with decode's message");
    CHECK_INT(evl_json_members("{\"a\":9007199254740993}", 22, m, 4, &scratch,
                               &is_object, err, sizeof err),
              EVL_EPERMANENT, "as is what decode refuses beyond syntax");
    CHECK_HAS(err, "outside +-2^53", "naming why");

    /* the first key none of m's names, escaped keys unescaped; the
     * strings read after it are still right */
    size_t unknown = 0;
    const char *typo = "{\"type\":\"A\",\"ty\\u0070o\":{\"x\":1},"
                       "\"other\":2,\"aggregate_id\":\"k\"}";
    CHECK_INT(evl_json_members_unknown(typo, strlen(typo), m, 4, &scratch,
                                       &is_object, &unknown, err, sizeof err),
              EVL_OK, "an object with unknown keys is read");
    CHECK(unknown != EVL_JSON_NONE, "an unknown key is found");
    if (unknown != EVL_JSON_NONE)
        CHECK_STR(scratch.data + unknown, "typo", "the first, unescaped");
    CHECK_STR(scratch.data + m[0].off, "A", "a member before it is read");
    CHECK_STR(scratch.data + m[1].off, "k", "and one after it");
    CHECK_INT(evl_json_members_unknown(ev, strlen(ev), m, 4, &scratch,
                                       &is_object, &unknown, err, sizeof err),
              EVL_OK, "nested keys do not count");
    CHECK_STR(scratch.data + unknown, "data", "only top-level ones");
    CHECK_INT(evl_json_members_unknown("{\"type\":1}", 10, m, 4, &scratch,
                                       &is_object, &unknown, err, sizeof err),
              EVL_OK, "an object of known keys is read");
    CHECK(unknown == EVL_JSON_NONE, "with no unknown key");
    evl_buf_free(&scratch);
}

static void collect_value(void *ud, const char *v, size_t n)
{
    evl_buf *b = ud;
    evl_buf_put(b, v, n);
    evl_buf_putc(b, '|');
}

/* evl_json_array_values: each element's own text, whatever it holds */
static void test_array_values(void)
{
    static const char a[] =
        " [ {\"a\":[1,{\"b\":\"],\"}]} , \"x\\\"]\",-1.5e3,true,null,[] ,{}] ";
    evl_buf b = {0};
    char aerr[EVL_ERRLEN];
    CHECK_INT(evl_json_array_values(a, strlen(a), collect_value, &b, aerr,
                                    sizeof aerr),
              EVL_OK, "an array's values are listed");
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data,
              "{\"a\":[1,{\"b\":\"],\"}]}|\"x\\\"]\"|-1.5e3|true|null|[]|{}|",
              "each element's text, brackets inside strings kept");
    b.len = 0;
    CHECK_INT(
        evl_json_array_values("[]", 2, collect_value, &b, aerr, sizeof aerr),
        EVL_OK, "an empty array");
    CHECK_INT((long long)b.len, 0, "has no values");
    CHECK_INT(
        evl_json_array_values("{}", 2, collect_value, &b, aerr, sizeof aerr),
        EVL_EPERMANENT, "an object is not an array");
    evl_buf_free(&b);
}

static void test_memory_exhaustion(void)
{
    cap c = {0, (size_t)-1};
    lua_State *LL = lua_newstate(cap_alloc, &c);
    evl_buf json = {0};

    /* 20,000 objects with a number each: the number list is on the heap */
    evl_buf_putc(&json, '[');
    for (int i = 0; i < 20000; i++)
        evl_buf_puts(&json, i ? ",{\"k\":12345}" : "{\"k\":12345}");
    evl_buf_putc(&json, ']');

    luaL_openlibs(LL);
    lua_pushcfunction(LL, decode_big);
    lua_pushlstring(LL, json.data, json.len);
    c.limit = c.used + 200000;
    int status = lua_pcall(LL, 1, 1, 0);
    CHECK_INT(status, LUA_ERRMEM,
              "decoding beyond the Lua memory cap raises a memory error");
    CHECK_INT(lua_gettop(LL), 1, "which leaves only the error object");
    c.limit = (size_t)-1;

    lua_settop(LL, 0);
    lua_pushcfunction(LL, decode_big);
    lua_pushlstring(LL, json.data, json.len);
    CHECK_INT(lua_pcall(LL, 1, 1, 0), LUA_OK,
              "the same text decodes once memory allows");
    CHECK_INT(lua_rawlen(LL, -1), 20000, "into 20,000 elements");
    lua_settop(LL, 0);

    /* the encode binding's buffer is not lost when the result cannot be
     * pushed (the leak checkers would see it) */
    evl_json_open(LL);
    lua_setglobal(LL, "json");
    CHECK_INT(luaL_dostring(LL, "s = string.rep('z', 300000)"), LUA_OK,
              "the big string is made");
    lua_getglobal(LL, "json");
    lua_getfield(LL, -1, "encode");
    lua_getglobal(LL, "s");
    c.limit = c.used + 100000;
    CHECK_INT(lua_pcall(LL, 1, 1, 0), LUA_ERRMEM,
              "encoding a text too large for the cap raises a memory error");
    c.limit = (size_t)-1;
    lua_close(LL);
    evl_buf_free(&json);
}

int main(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    evl_json_open(L);
    lua_setglobal(L, "json");

    test_integers();
    test_floats();
    test_structure();
    test_strings();
    test_numbers_beyond_ijson();
    test_rejections();
    test_nesting();
    test_encoder();
    test_encoder_errors();
    test_utf8_check();
    test_lua_api();
    test_members();
    test_array_values();
    test_memory_exhaustion();

    CHECK_INT(lua_gettop(L), 0, "the tests leave the Lua stack empty");
    lua_close(L);
    evl_buf_free(&out);
    evl_buf_free(NULL);
    return check_done();
}
