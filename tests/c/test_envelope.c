/*
 * test_envelope.c - the wire format: commands are parsed and validated
 * with json.h's rules and every complaint names the field; event and
 * result envelopes come out byte for byte as DESIGN.md writes them, and
 * commands as evlua send writes them;
 * strings are escaped so a result is valid JSON even for bad bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "check.h"
#include "envelope.h"

static lua_State *L;
static evl_command cmd;
static char err[EVL_ERRLEN];

static evl_err parse(const char *json)
{
    err[0] = '\0';
    return evl_envelope_parse_command(L, json, strlen(json), &cmd, err,
                                      sizeof err);
}

static void bad(const char *json, const char *why, const char *what)
{
    CHECK_INT(parse(json), EVL_EPERMANENT, what);
    CHECK_HAS(err, why, what);
    CHECK_INT(lua_gettop(L), 0, "the stack is left as it was");
}

static void strings_are_escaped(void)
{
    evl_buf b = {0};
    evl_envelope_put_string(&b, "a\"b\\c\n\t\x01", 8);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data, "\"a\\\"b\\\\c\\n\\t\\u0001\"",
              "quotes, backslashes and control bytes are escaped");
    b.len = 0;
    evl_envelope_put_string(&b, "caf\xc3\xa9 \xe2\x82\xac", 9);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data, "\"caf\xc3\xa9 \xe2\x82\xac\"",
              "valid UTF-8 is copied as it is");
    b.len = 0;
    evl_envelope_put_string(&b,
                            "x\xff"
                            "y\xc3",
                            4);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data, "\"x\\ufffdy\\ufffd\"",
              "invalid and truncated UTF-8 become U+FFFD");
    b.len = 0;
    evl_envelope_put_string(&b, "\xed\xa0\x80", 3);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data, "\"\\ufffd\\ufffd\\ufffd\"",
              "an encoded surrogate is not valid UTF-8");
    evl_buf_free(&b);
}

static void envelopes(void)
{
    evl_buf b = {0};
    evl_envelope_event_in e = {"01900000-0000-7000-8000-000000000000",
                               "CustomerNameChanged",
                               2,
                               "customer",
                               "c-1",
                               7,
                               "2026-11-28T17:55:11.123Z",
                               "cmd-1",
                               "corr-1",
                               NULL,
                               "{\"newName\":\"Ann\"}",
                               17};
    evl_envelope_event(&b, &e);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data,
              "{\"id\":\"01900000-0000-7000-8000-000000000000\","
              "\"type\":\"CustomerNameChanged\",\"version\":2,"
              "\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-1\","
              "\"sequence\":7,\"occurred_at\":\"2026-11-28T17:55:11.123Z\","
              "\"causation_id\":\"cmd-1\",\"correlation_id\":\"corr-1\","
              "\"user_id\":null,\"data\":{\"newName\":\"Ann\"}}",
              "the event envelope of DESIGN.md");

    const char *ids[2] = {"e-1", "e-2"};
    const char *types[2] = {"CustomerNameChanged", "CustomerAddressChanged"};
    evl_envelope_result_in r = {"cmd-1", "accepted", "c-1", 9,
                                ids,     2,          NULL,  types};
    b.len = 0;
    evl_envelope_result(&b, &r);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data,
              "{\"command_id\":\"cmd-1\",\"status\":\"accepted\","
              "\"aggregate_id\":\"c-1\",\"version\":9,"
              "\"events\":[\"e-1\",\"e-2\"],\"event_types\":["
              "\"CustomerNameChanged\",\"CustomerAddressChanged\"]}",
              "an accepted result, with its events' types");
    evl_envelope_result_in rej = {NULL, "rejected",      NULL, -1, NULL,
                                  0,    "bad \"input\"", NULL};
    b.len = 0;
    evl_envelope_result(&b, &rej);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data,
              "{\"command_id\":null,\"status\":\"rejected\","
              "\"aggregate_id\":null,\"version\":null,\"events\":[],"
              "\"error\":\"bad \\\"input\\\"\"}",
              "a rejection without id: nulls and an escaped error");
    evl_buf_free(&b);
}

static void good_commands(void)
{
    CHECK_INT(parse("{\"id\":\"cmd-1\",\"type\":\"Rename\","
                    "\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-1\","
                    "\"expected_version\":3,\"data\":{\"name\":\"Ann\"},"
                    "\"metadata\":{\"user_id\":\"u-1\","
                    "\"correlation_id\":\"k-9\"}}"),
              EVL_OK, "a complete command");
    CHECK_STR(cmd.id, "cmd-1", "id");
    CHECK_STR(cmd.type, "Rename", "type");
    CHECK_STR(cmd.aggregate_type, "customer", "aggregate_type");
    CHECK_STR(cmd.aggregate_id, "c-1", "aggregate_id");
    CHECK_INT(cmd.has_expected_version, 1, "has expected_version");
    CHECK_INT(cmd.expected_version, 3, "expected_version");
    CHECK_STR(cmd.user_id, "u-1", "metadata.user_id");
    CHECK_STR(cmd.correlation_id, "k-9", "metadata.correlation_id");

    CHECK_INT(parse(" {\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\","
                    "\"data\":{},\"expected_version\":null,"
                    "\"metadata\":{\"user_id\":null}} "),
              EVL_OK, "the smallest command; nulls mean absent");
    CHECK(cmd.aggregate_type == NULL, "no aggregate_type: the topic decides");
    CHECK_INT(cmd.has_expected_version, 0, "no expected_version");
    CHECK(cmd.user_id == NULL && cmd.correlation_id == NULL, "no metadata");
    CHECK_INT(lua_gettop(L), 0, "the stack is left as it was");
}

static void bad_commands(void)
{
    bad("{\"id\":", "malformed JSON: invalid JSON", "truncated JSON");
    CHECK(cmd.id == NULL, "an id cut short is not read");
    /* the id is readable before the damage: the rejection names it, so
     * a client (send --wait) can match its result */
    bad(" { \"id\" : \"cmd-7\", \"n\": 1.5, \"aggregate_id\":\"c-1\","
        "\"data\":{\"broken\" ",
        "malformed JSON", "malformed after the ids");
    CHECK_STR(cmd.id, "cmd-7", "the id before the damage is read");
    CHECK_STR(cmd.aggregate_id, "c-1", "so is the aggregate id");
    bad("{\"data\":{\"id\":\"inner\"},\"id\":\"x\",", "malformed JSON",
        "an id after a nested value");
    CHECK(cmd.id == NULL, "the walk stops at a nested value (no guessing)");
    bad("{\"id\":\"a\\\"b\",\"type\":", "malformed JSON",
        "an escaped id in malformed JSON");
    CHECK(cmd.id == NULL, "an id with escapes is not guessed at");
    bad("[\"id\",\"x\"", "malformed JSON", "not an object");
    CHECK(cmd.id == NULL, "nothing is read from a non-object");
    bad("[1,2]", "a command is a JSON object", "an array");
    bad("\"cmd\"", "a command is a JSON object", "a string");
    bad("{\"id\":\"a\xff\"}", "invalid UTF-8", "invalid UTF-8");
    bad("{\"id\":\"x\",\"n\":9007199254740993}", "outside +-2^53",
        "an integer beyond 2^53");
    bad("{\"id\":\"a\\u0000b\"}", "malformed JSON", "\\u0000");
    bad("{\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{}}",
        "the command has no id", "no id");
    bad("{\"id\":\"\",\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{}}",
        "no id (a non-empty string of at most 256 bytes): empty",
        "an empty id");
    bad("{\"id\":5,\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{}}",
        "not a string", "a numeric id");
    bad("{\"id\":\"x\",\"type\":\"T\",\"data\":{}}",
        "the command has no aggregate_id", "no aggregate_id");
    CHECK_STR(cmd.id, "x", "the id is read even when the command is bad");
    bad("{\"id\":\"x\",\"aggregate_id\":\"a\",\"data\":{}}",
        "the command has no type", "no type");
    bad("{\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\","
        "\"aggregate_type\":7,\"data\":{}}",
        "aggregate_type is not a string", "a numeric aggregate_type");
    bad("{\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{},"
        "\"expected_version\":-1}",
        "expected_version must be an integer >= 0", "a negative version");
    bad("{\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{},"
        "\"expected_version\":1.5}",
        "expected_version must be an integer", "a float version");
    bad("{\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\"}",
        "the command has no data", "no data");
    bad("{\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":[]}",
        "the command has no data", "data as an array");
    bad("{\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{},"
        "\"metadata\":[]}",
        "metadata must be a JSON object", "metadata as an array");
    bad("{\"id\":\"x\",\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{},"
        "\"metadata\":{\"user_id\":3}}",
        "metadata.user_id is not a string", "a numeric user_id");

    char *longid = malloc(400);
    memset(longid, 0, 400);
    strcpy(longid, "{\"id\":\"");
    memset(longid + 7, 'x', 300);
    strcat(longid, "\",\"type\":\"T\",\"aggregate_id\":\"a\",\"data\":{}}");
    bad(longid, "too long", "an id of 300 bytes");
    free(longid);

    size_t n = EVL_ENVELOPE_MAX_COMMAND + 1;
    char *huge = malloc(n);
    memset(huge, ' ', n);
    CHECK_INT(evl_envelope_parse_command(L, huge, n, &cmd, err, sizeof err),
              EVL_EPERMANENT, "a command beyond the size limit");
    CHECK_HAS(err, "more than the 16777216 evlua accepts",
              "the size limit is named");
    free(huge);
}

/* What evlua send and the REPL write is a command evlua reads back. */
static void commands_written(void)
{
    evl_buf b = {0};
    evl_envelope_command_in c = {.id = "cmd-1",
                                 .type = "ChangeName",
                                 .aggregate_type = "customer",
                                 .aggregate_id = "c-1",
                                 .has_expected_version = 1,
                                 .expected_version = 3,
                                 .data = "{\"name\":\"Ann\"}",
                                 .data_len = 14,
                                 .user_id = "u-9",
                                 .correlation_id = "corr-1"};
    evl_envelope_command(&b, &c);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data,
              "{\"id\":\"cmd-1\",\"type\":\"ChangeName\","
              "\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-1\","
              "\"expected_version\":3,\"data\":{\"name\":\"Ann\"},"
              "\"metadata\":{\"user_id\":\"u-9\",\"correlation_id\":"
              "\"corr-1\"}}",
              "a command with every field");
    CHECK_INT(parse(b.data), EVL_OK, "a written command parses");
    CHECK_INT(cmd.expected_version, 3, "expected_version read back");
    CHECK_STR(cmd.correlation_id, "corr-1", "correlation_id read back");

    evl_envelope_command_in plain = {.id = "cmd-2",
                                     .type = "Register",
                                     .aggregate_type = "customer",
                                     .aggregate_id = "c-2",
                                     .data = "{}",
                                     .data_len = 2,
                                     .correlation_id = "corr-2"};
    b.len = 0;
    evl_envelope_command(&b, &plain);
    evl_buf_putc(&b, '\0');
    CHECK_STR(b.data,
              "{\"id\":\"cmd-2\",\"type\":\"Register\","
              "\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-2\","
              "\"data\":{},\"metadata\":{\"correlation_id\":\"corr-2\"}}",
              "optional fields left out");
    CHECK_INT(parse(b.data), EVL_OK, "a minimal written command parses");
    CHECK(!cmd.has_expected_version && cmd.user_id == NULL,
          "absent fields read back absent");
    evl_buf_free(&b);
}

int main(void)
{
    L = luaL_newstate();
    strings_are_escaped();
    envelopes();
    commands_written();
    good_commands();
    bad_commands();
    evl_envelope_command_free(&cmd);
    evl_envelope_command_free(NULL);
    lua_close(L);
    return check_done();
}
