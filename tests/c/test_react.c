/*
 * test_react.c - reactions in the Lua host (issue 17): an event becomes
 * the commands a reaction returns, in the wire format, with ids that are
 * the same every time (UUIDv5, checked against Python's uuid.uuid5),
 * the event's correlation and user ids and the event as causation; bad
 * results fail with a message naming what was wrong; load refuses bad
 * react tables; lint finds unknown source types and events no aggregate
 * emits.
 *
 * Usage: test_react [FIXTURES_DIR]  (default $EVLUA_SOURCE_DIR/tests/fixtures)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "check.h"
#include "envelope.h"
#include "evl.h"
#include "log.h"
#include "luahost.h"
#include "uuid.h"

static char fixtures[1024];

/* ---- helpers ---------------------------------------------------------- */

static evl_luahost *load_set(const char *name, long instr,
                             evl_luahost_problems *probs, char *err,
                             size_t errlen)
{
    char adir[1200], pdir[1200];
    const char *adirs[1] = {adir}, *pdirs[1] = {pdir};
    evl_luahost_config cfg;
    evl_luahost *h = NULL;
    snprintf(adir, sizeof adir, "%s/react/%s/aggregates", fixtures, name);
    snprintf(pdir, sizeof pdir, "%s/react/%s/projections", fixtures, name);
    memset(&cfg, 0, sizeof cfg);
    cfg.aggregate_dirs = adirs;
    cfg.naggregate_dirs = 1;
    cfg.projection_dirs = pdirs;
    cfg.nprojection_dirs = 1;
    cfg.memory_limit = 32u * 1024 * 1024;
    cfg.instruction_limit = instr;
    /* no case here tests the clock: under valgrind on a loaded machine
     * filling 32 MiB can take longer than the default second, and the
     * memory case must meet the memory limit, not the clock */
    cfg.time_limit_ms = 60000;
    if (evl_luahost_new(&cfg, &h, probs, err, errlen) != EVL_OK)
        return NULL;
    return h;
}

/* An event envelope as on customer.events; user NULL: null. */
static const char *event(evl_buf *b, const char *id, const char *type,
                         long long version, const char *user, const char *data)
{
    evl_envelope_event_in e = {.id = id,
                               .type = type,
                               .schema_version = version,
                               .aggregate_type = "customer",
                               .aggregate_id = "c-1",
                               .sequence = 1,
                               .occurred_at = "2026-12-05T08:00:00.000Z",
                               .causation_id = "cmd-9",
                               .correlation_id = "corr-1",
                               .user_id = user,
                               .data = data,
                               .data_len = strlen(data)};
    b->len = 0;
    evl_envelope_event(b, &e);
    evl_buf_putc(b, '\0');
    return b->data;
}

static evl_err react(evl_luahost *h, const char *ev, size_t max,
                     evl_luahost_reactions *out, char *err, size_t errlen)
{
    err[0] = '\0';
    return evl_luahost_react(h, "shipment", ev, strlen(ev), max, out, err,
                             errlen);
}

/* Reaction to customer.Bad with data.case = c: it must fail, naming want. */
static void expect_bad(evl_luahost *h, const char *c, const char *want)
{
    evl_luahost_reactions out = {0};
    evl_buf b = {0};
    char data[128], err[2048];
    snprintf(data, sizeof data, "{\"case\":\"%s\"}", c);
    evl_err rc = react(h, event(&b, "evt-bad", "Bad", 1, NULL, data), 0, &out,
                       err, sizeof err);
    check_count_++;
    if (rc != EVL_EPERMANENT || !strstr(err, want))
        CHECK_FAIL_("case %s: expected a failure containing \"%s\", got rc %d "
                    "and \"%s\"",
                    c, want, (int)rc, err);
    if (getenv("TEST_REACT_SHOW"))
        fprintf(stderr, "%s: %s\n", c, err);
    CHECK_INT(out.n, 0, "a failed reaction leaves no commands");
    evl_luahost_reactions_free(&out);
    evl_buf_free(&b);
}

static int has_line(const evl_luahost_problems *p, const char *want)
{
    for (size_t i = 0; i < p->n; i++)
        if (strstr(p->lines[i], want))
            return 1;
    return 0;
}

#define CHECK_LINE(p, want)                                                    \
    do {                                                                       \
        check_count_++;                                                        \
        if (!has_line(p, want)) {                                              \
            CHECK_FAIL_("expected a line containing \"%s\"; got:", want);      \
            for (size_t i_ = 0; i_ < (p)->n; i_++)                             \
                fprintf(stderr, "    %s\n", (p)->lines[i_]);                   \
        }                                                                      \
    } while (0)

/* ---- ids -------------------------------------------------------------- */

static void test_uuid(void)
{
    char id[37], again[37];
    /* python3: uuid.uuid5(uuid.UUID("02ad841b-a62f-48e4-adc9-67af3dd0b4f5"),
     * name) */
    evl_uuid_reaction(id, "evt-1", "shipment", 0);
    CHECK_STR(id, "b145c152-394b-57ae-9e11-1262b3fee570",
              "uuid5 of evt-1/shipment/0 is Python's");
    evl_uuid_reaction(id, "evt-1", "shipment", 1);
    CHECK_STR(id, "35f6286d-7674-540e-af1b-9fe7e9273fe9",
              "the position changes the id");
    evl_uuid_reaction(id, "evt-2", "shipment", 0);
    CHECK_STR(id, "10c1199c-f983-5150-a243-bd9f44318b98",
              "the event id changes the id");
    evl_uuid_reaction(id, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "stock", 0);
    CHECK_STR(id, "4795a13e-7f35-5c69-ba65-fc3e81e8b5e6",
              "a uuid7 event id and another type");
    evl_uuid_reaction(again, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "stock",
                      0);
    CHECK_STR(again, id, "the same input gives the same id");

    /* a name longer than the stack buffer */
    char name[320];
    memset(name, 'x', 300);
    name[300] = '\0';
    evl_uuid_reaction(id, "e", name, 0);
    CHECK_STR(id, "746712d7-d37b-554f-af9b-7f53fd29bc04",
              "a long name (e/x*300/0) is Python's too");
}

static void test_envelope_causation(void)
{
    evl_buf b = {0};
    evl_envelope_command_in c = {.id = "c1",
                                 .type = "T",
                                 .aggregate_type = "a",
                                 .aggregate_id = "x",
                                 .data = "{}",
                                 .data_len = 2,
                                 .causation_id = "evt-1"};
    evl_envelope_command(&b, &c);
    evl_buf_putc(&b, '\0');
    CHECK_HAS(b.data, "\"metadata\":{\"causation_id\":\"evt-1\"}}",
              "causation_id alone in metadata");
    b.len = 0;
    c.correlation_id = "k";
    evl_envelope_command(&b, &c);
    evl_buf_putc(&b, '\0');
    CHECK_HAS(b.data,
              "\"metadata\":{\"correlation_id\":\"k\",\"causation_id\":"
              "\"evt-1\"}}",
              "correlation_id, then causation_id");
    evl_buf_free(&b);

    /* the command side reads causation_id, and never rejects for it */
    static const char *cmd_json[] = {
        "{\"id\":\"c\",\"type\":\"T\",\"aggregate_id\":\"x\",\"data\":{},"
        "\"metadata\":{\"causation_id\":\"evt-9\"}}",
        "{\"id\":\"c\",\"type\":\"T\",\"aggregate_id\":\"x\",\"data\":{},"
        "\"metadata\":{\"causation_id\":42}}",
        "{\"id\":\"c\",\"type\":\"T\",\"aggregate_id\":\"x\",\"data\":{}}"};
    lua_State *L = luaL_newstate();
    evl_command cmd = {0};
    char err[512];
    for (size_t i = 0; i < 3; i++) {
        CHECK_INT(evl_envelope_parse_command(L, cmd_json[i],
                                             strlen(cmd_json[i]), &cmd, err,
                                             sizeof err),
                  EVL_OK, "a command with or without causation_id is valid");
        if (i == 0)
            CHECK_STR(cmd.causation_id, "evt-9", "causation_id is read");
        else
            CHECK(cmd.causation_id == NULL,
                  "a non-string or absent causation_id reads as none");
    }
    evl_envelope_command_free(&cmd);
    lua_close(L);
}

/* ---- the welcome kit -------------------------------------------------- */

static void test_react_kit(void)
{
    evl_luahost_problems probs = {0};
    evl_luahost_reactions out = {0};
    evl_buf b = {0};
    char err[2048], want[1024], first[37];
    evl_luahost *h = load_set("basic", 0, &probs, err, sizeof err);
    CHECK(h != NULL, "the basic reaction set loads");
    if (!h) {
        fprintf(stderr, "%s\n", err);
        return;
    }

    const evl_luahost_aggregate *a = evl_luahost_aggregate_get(h, "shipment");
    CHECK_INT(a->nreacts, 5, "shipment has five react keys");
    CHECK_STR(a->reacts[0], "customer.Bad", "react keys are sorted");
    CHECK_STR(a->reacts[4], "shipment.KitShipped", "its own events too");
    CHECK(evl_luahost_reacts_to(a, "customer", "CustomerAddressChanged"),
          "shipment reacts to customer.CustomerAddressChanged");
    CHECK(!evl_luahost_reacts_to(a, "customer", "CustomerDeleted"),
          "but not to customer.CustomerDeleted");
    CHECK(!evl_luahost_reacts_to(a, "customr", "CustomerAddressChanged"),
          "nor to another type's event of that name");
    CHECK_INT(evl_luahost_aggregate_get(h, "customer")->nreacts, 0,
              "customer has no react table: nreacts 0");

    /* first address: one command */
    const char *ev =
        event(&b, "evt-1", "CustomerAddressChanged", 2, "u-7",
              "{\"previousAddress\":null,\"newAddress\":\"1 Main St\"}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK,
              "the welcome kit reaction runs");
    CHECK_STR(err, "", "no error");
    CHECK_INT(out.n, 1, "one command");
    if (out.n == 1) {
        evl_uuid_reaction(first, "evt-1", "shipment", 0);
        CHECK_STR(out.cmds[0].id, "b145c152-394b-57ae-9e11-1262b3fee570",
                  "the command id is uuid5(evt-1/shipment/0)");
        CHECK_STR(out.cmds[0].type, "ShipWelcomeKit", "the command type");
        CHECK_STR(out.cmds[0].aggregate_id, "kit-c-1", "the record key");
        snprintf(want, sizeof want,
                 "{\"id\":\"%s\",\"type\":\"ShipWelcomeKit\","
                 "\"aggregate_type\":\"shipment\",\"aggregate_id\":\"kit-c-1\","
                 "\"data\":{\"address\":\"1 Main St\",\"by\":\"shipment\","
                 "\"customer\":\"c-1\"},\"metadata\":{\"user_id\":\"u-7\","
                 "\"correlation_id\":\"corr-1\",\"causation_id\":\"evt-1\"}}",
                 first);
        CHECK_STR(out.cmds[0].json, want,
                  "the command JSON: ids, data (ctx.aggregate_type in it), "
                  "user, correlation and causation");
        CHECK_INT(out.cmds[0].len, strlen(want), "len is the JSON's length");

        /* the command side reads it as a command, causation included */
        lua_State *L = luaL_newstate();
        evl_command cmd = {0};
        CHECK_INT(evl_envelope_parse_command(L, out.cmds[0].json,
                                             out.cmds[0].len, &cmd, err,
                                             sizeof err),
                  EVL_OK, "the command parses as a command");
        CHECK_STR(cmd.correlation_id, "corr-1", "parsed correlation_id");
        CHECK_STR(cmd.causation_id, "evt-1", "parsed causation_id");
        evl_envelope_command_free(&cmd);
        lua_close(L);
    }

    /* the same event again: the same id */
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK, "again");
    CHECK(out.n == 1 && strcmp(out.cmds[0].id, first) == 0,
          "the same event gives the same command id");

    /* another event id: another command id; no user: no user_id */
    ev = event(&b, "evt-2", "CustomerAddressChanged", 2, NULL,
               "{\"previousAddress\":null,\"newAddress\":\"2 Side St\"}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK, "evt-2");
    CHECK(out.n == 1 && strcmp(out.cmds[0].id,
                               "10c1199c-f983-5150-a243-bd9f44318b98") == 0,
          "another event, another id (uuid5(evt-2/shipment/0))");
    CHECK(out.n == 1 && !strstr(out.cmds[0].json, "user_id"),
          "an event without user: no metadata.user_id");

    /* a later address: nil, no command */
    ev = event(&b, "evt-3", "CustomerAddressChanged", 2, NULL,
               "{\"previousAddress\":\"1 Main St\",\"newAddress\":\"2\"}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK, "evt-3");
    CHECK_INT(out.n, 0, "a reaction returning nil sends nothing");

    /* version 1 goes through customer's upcast first */
    ev = event(&b, "evt-4", "CustomerAddressChanged", 1, NULL,
               "{\"previousAddress\":null,\"addr\":\"old form\"}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK, "evt-4");
    CHECK(out.n == 1 && strstr(out.cmds[0].json, "\"address\":\"old form\""),
          "the reaction sees the event after the source's upcast");

    /* a list: positions 0 and 1, expected_version, default data */
    ev = event(&b, "evt-5", "Many", 1, NULL, "{}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK, "Many");
    CHECK_INT(out.n, 2, "a list of two commands");
    if (out.n == 2) {
        char id0[37], id1[37];
        evl_uuid_reaction(id0, "evt-5", "shipment", 0);
        evl_uuid_reaction(id1, "evt-5", "shipment", 1);
        CHECK_STR(out.cmds[0].id, id0, "command 0's id");
        CHECK_STR(out.cmds[1].id, id1, "command 1's id: the position counts");
        CHECK_HAS(out.cmds[0].json,
                  "\"aggregate_id\":\"a\",\"expected_version\":0,"
                  "\"data\":{}",
                  "expected_version written; no data is {}");
        CHECK_STR(out.cmds[1].type, "NoteAddress", "the second command's type");
        CHECK_HAS(out.cmds[1].json, "\"data\":{\"n\":2}", "its data");
    }
    ev = event(&b, "evt-6", "Empty", 1, NULL, "{}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK, "Empty");
    CHECK_INT(out.n, 0, "an empty list sends nothing");
    ev = event(&b, "evt-7", "CustomerDeleted", 1, NULL, "{}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK, "no reaction");
    CHECK_INT(out.n, 0, "an event with no reaction gives no command");
    CHECK_INT(evl_luahost_react(h, "customer", ev, strlen(ev), 0, &out, err,
                                sizeof err),
              EVL_OK, "an aggregate without react");
    CHECK_INT(out.n, 0, "sends nothing");
    CHECK_INT(evl_luahost_react(h, "nosuch", ev, strlen(ev), 0, &out, err,
                                sizeof err),
              EVL_EPERMANENT, "an unknown reacting type fails");
    CHECK_HAS(err, "no aggregate script has type nosuch", "and says so");

    evl_luahost_reactions_free(&out);
    evl_luahost_reactions_free(&out); /* twice is fine */
    evl_luahost_reactions_free(NULL);
    evl_buf_free(&b);
    evl_luahost_problems_free(&probs);
    evl_luahost_free(h);
}

/* ---- bad results, errors and limits ----------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_react_bad(void)
{
    evl_luahost_problems probs = {0};
    evl_luahost_reactions out = {0};
    evl_buf b = {0};
    char err[2048];
    /* 2,000,000 instructions: room for 100,000 loop turns, not forever */
    evl_luahost *h = load_set("basic", 2000000, &probs, err, sizeof err);
    CHECK(h != NULL, "the basic reaction set loads");
    if (!h) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    const char *pre = "shipment.lua: react.customer.Bad";

    expect_bad(h, "string",
               "react.customer.Bad returned a string, expected "
               "a command {type = ..., aggregate_id = ..., data "
               "= ...}, a list of them or nil");
    expect_bad(h, "string", pre);
    expect_bad(h, "noid", "command 1 has no aggregate_id (a non-empty string)");
    expect_bad(h, "emptyid",
               "command 1 has aggregate_id \"\", expected a "
               "non-empty string");
    expect_bad(h, "numid",
               "command 1 has aggregate_id 7, expected a non-empty string");
    expect_bad(h, "unknown",
               "command 1 has an unknown field \"dat\" (a "
               "command has type, aggregate_id, data and "
               "expected_version)");
    expect_bad(h, "notype", "command 1 has no type (a non-empty string)");
    expect_bad(h, "nohandler",
               "command 1 has type 'Teleport', which "
               "aggregate type shipment has no handle entry "
               "for");
    expect_bad(h, "datastring",
               "command 1 has data of type string, expected a table");
    expect_bad(h, "datalist", "command 1's data is a list");
    expect_bad(h, "version",
               "command 1 has expected_version -1, expected an "
               "integer >= 0");
    expect_bad(h, "second", "command 2 has no aggregate_id");
    expect_bad(h, "notcmd", "returned a table that is neither a command");
    expect_bad(h, "holes", "returned a table that is neither a command");
    expect_bad(h, "error", "shipment.lua:38: boom");
    expect_bad(h, "loop", "instruction budget of 2000000 exceeded");
    expect_bad(h, "memory", "memory limit of");

    /* 100,000 commands: refused by their count, at once */
    double t0 = now_s();
    expect_bad(h, "hundredk",
               "react.customer.Bad returned 100000 commands "
               "(more than reactions.max_commands = 100)");
    double took = now_s() - t0;
    check_count_++;
    if (took > 1.0)
        CHECK_FAIL_("100,000 commands must fail fast; took %.2f s", took);

    /* distinct tables: the count, or a limit, whichever comes first */
    {
        char e2[2048];
        const char *ev = event(&b, "evt-big", "Bad", 1, NULL,
                               "{\"case\":\"hundredk_distinct\"}");
        CHECK_INT(react(h, ev, 0, &out, e2, sizeof e2), EVL_EPERMANENT,
                  "100,000 distinct commands fail");
        CHECK(strstr(e2, "returned 100000 commands") || strstr(e2, "exceeded"),
              "by their count or a limit");
    }

    /* max_commands is the caller's */
    const char *ev = event(&b, "evt-5", "Many", 1, NULL, "{}");
    CHECK_INT(react(h, ev, 1, &out, err, sizeof err), EVL_EPERMANENT,
              "two commands with max_commands 1 fail");
    CHECK_HAS(err,
              "returned 2 commands (more than reactions.max_commands = "
              "1)",
              "and say how many");
    CHECK_INT(react(h, ev, 2, &out, err, sizeof err), EVL_OK,
              "two commands with max_commands 2 pass");

    /* the host is fine after every failure */
    ev = event(&b, "evt-1", "CustomerAddressChanged", 2, NULL,
               "{\"previousAddress\":null,\"newAddress\":\"x\"}");
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_OK,
              "a good reaction after the failures");
    CHECK_INT(out.n, 1, "sends its command");

    /* events that cannot be reacted to */
    CHECK_INT(react(h, "{\"type\":", 0, &out, err, sizeof err), EVL_EPERMANENT,
              "malformed event JSON fails");
    CHECK_HAS(err, "event JSON", "naming the event JSON");
    ev = "{\"type\":\"CustomerAddressChanged\",\"aggregate_type\":"
         "\"customer\",\"aggregate_id\":\"c\",\"data\":{\"previousAddress\":"
         "null}}";
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_EPERMANENT,
              "an event without id fails when reacted to");
    CHECK_HAS(err, "the event has no id", "naming the id");
    ev = "{\"id\":\"e\",\"type\":\"X\",\"data\":{}}";
    CHECK_INT(react(h, ev, 0, &out, err, sizeof err), EVL_EPERMANENT,
              "an event without aggregate_type fails");
    CHECK_HAS(err, "the event has no aggregate_type", "naming it");

    evl_luahost_reactions_free(&out);
    evl_buf_free(&b);
    evl_luahost_problems_free(&probs);
    evl_luahost_free(h);
}

/* ---- load and lint ------------------------------------------------------ */

static void test_load_refusals(void)
{
    evl_luahost_problems probs = {0};
    char err[2048];
    evl_luahost *h = load_set("badload", 0, &probs, err, sizeof err);
    CHECK(h == NULL, "a set with bad react tables does not load");
    evl_luahost_free(h);
    CHECK_LINE(&probs, "keys.lua: react key \"NoDot\" is not of the form "
                       "\"TYPE.EventName\"");
    CHECK_LINE(&probs, "keys.lua: react key \"customer.\" is not");
    CHECK_LINE(&probs, "keys.lua: react key \".Evt\" is not");
    CHECK_LINE(&probs, "keys.lua: react key \"bad type.Evt\" is not");
    CHECK(!has_line(&probs, "\"customer.Fine\" is not"),
          "a good key is not refused");
    CHECK_LINE(&probs, "notable.lua: react is a number, expected a table of "
                       "functions");
    CHECK_LINE(&probs,
               "values.lua: react.customer.Fine is a string, expected a "
               "function");
    CHECK_LINE(&probs, "values.lua: react has a number key, expected names");
    CHECK_INT(probs.n, 7, "seven problems, nothing else");
    evl_luahost_problems_free(&probs);
}

static void test_lint(void)
{
    evl_luahost_problems probs = {0}, errors = {0}, warnings = {0};
    char err[2048];
    evl_luahost *h = load_set("lint", 0, &probs, err, sizeof err);
    CHECK(h != NULL, "the lint set loads (lint finds its problems)");
    if (!h) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_INT(evl_luahost_lint(h, &errors, &warnings), 1, "one error");
    CHECK_LINE(&errors, "shipment.lua:20: react[\"custmer.CustomerAddress"
                        "Changed\"]: no aggregate of this script set has "
                        "type 'custmer'");
    CHECK_LINE(&errors, "did you mean 'customer'?");
    CHECK_INT(errors.n, 1,
              "only that error: the commands reactions build "
              "are no events handle emits");
    CHECK_LINE(&warnings, "shipment.lua:23: warning: react[\"customer."
                          "CustomerAdressChanged\"]: aggregate type "
                          "'customer' (");
    CHECK_LINE(&warnings, "never emits event type 'CustomerAdressChanged' "
                          "(no apply, neutral or emits entry); did you mean "
                          "'CustomerAddressChanged'?");
    CHECK_INT(warnings.n, 1, "one warning");

    /* no errors from the lint when errors is NULL, but the count */
    CHECK_INT(evl_luahost_lint(h, NULL, NULL), 1, "the count without lists");
    evl_luahost_problems_free(&errors);
    evl_luahost_problems_free(&warnings);
    evl_luahost_free(h);
}

int main(int argc, char **argv)
{
    const char *src = getenv("EVLUA_SOURCE_DIR");
    if (argc > 1)
        snprintf(fixtures, sizeof fixtures, "%s", argv[1]);
    else
        snprintf(fixtures, sizeof fixtures, "%s/tests/fixtures",
                 src ? src : ".");
    evl_log_set_level(EVL_LOG_WARN);

    test_uuid();
    test_envelope_causation();
    test_react_kit();
    test_react_bad();
    test_load_refusals();
    test_lint();
    return check_done();
}
