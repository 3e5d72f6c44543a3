/*
 * test_luahost.c - the Lua host loads and validates script sets, runs
 * aggregates and projections, keeps decisions, rejections and failures
 * apart, and survives every hostile script of issue 3 with a clear error.
 *
 * Usage: test_luahost [FIXTURES_DIR]
 * FIXTURES_DIR defaults to $EVLUA_SOURCE_DIR/tests/fixtures, then to the
 * compile-time EVLUA_FIXTURES_DIR, then to tests/fixtures.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "evl.h"
#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "luaapi.h"
#include "luahost.h"

#ifndef EVLUA_FIXTURES_DIR
#define EVLUA_FIXTURES_DIR "tests/fixtures"
#endif

static char fixtures[1024];

/* ---- helpers ---------------------------------------------------------- */

typedef struct set {
    char adir[1200], pdir[1200], lib[1200];
    const char *adirs[1], *pdirs[1];
    evl_luahost_config cfg;
} set;

static void set_init(set *s, const char *root, size_t mem, long instr)
{
    memset(s, 0, sizeof *s);
    snprintf(s->adir, sizeof s->adir, "%s/aggregates", root);
    snprintf(s->pdir, sizeof s->pdir, "%s/projections", root);
    snprintf(s->lib, sizeof s->lib, "%s/lib", root);
    s->adirs[0] = s->adir;
    s->pdirs[0] = s->pdir;
    s->cfg.aggregate_dirs = s->adirs;
    s->cfg.naggregate_dirs = 1;
    s->cfg.projection_dirs = s->pdirs;
    s->cfg.nprojection_dirs = 1;
    s->cfg.lib_dir = s->lib;
    s->cfg.memory_limit = mem;
    s->cfg.instruction_limit = instr;
    s->cfg.max_string_op = 1024 * 1024;
}

static evl_luahost *load_ms(const char *name, size_t mem, long instr, long ms,
                            evl_luahost_problems *probs, char *err,
                            size_t errlen)
{
    char root[1100];
    set s;
    evl_luahost *h = NULL;
    snprintf(root, sizeof root, "%s/scripts/%s", fixtures, name);
    set_init(&s, root, mem, instr);
    s.cfg.time_limit_ms = ms;
    if (evl_luahost_new(&s.cfg, &h, probs, err, errlen) != EVL_OK)
        return NULL;
    return h;
}

static evl_luahost *load(const char *name, size_t mem, long instr,
                         evl_luahost_problems *probs, char *err, size_t errlen)
{
    return load_ms(name, mem, instr, 0, probs, err, errlen);
}

static int has_problem(const evl_luahost_problems *p, const char *want)
{
    for (size_t i = 0; i < p->n; i++)
        if (strstr(p->lines[i], want))
            return 1;
    return 0;
}

#define CHECK_PROBLEM(p, want)                                                 \
    do {                                                                       \
        check_count_++;                                                        \
        if (!has_problem(p, want)) {                                           \
            CHECK_FAIL_("expected a load problem containing \"%s\"; got:",     \
                        want);                                                 \
            for (size_t i_ = 0; i_ < (p)->n; i_++)                             \
                fprintf(stderr, "    %s\n", (p)->lines[i_]);                   \
        }                                                                      \
    } while (0)

static char cmdbuf[4096];

static const char *command(const char *type, const char *data)
{
    snprintf(cmdbuf, sizeof cmdbuf,
             "{\"id\":\"cmd-1\",\"type\":\"%s\",\"aggregate_type\":\"x\","
             "\"aggregate_id\":\"id-7\",\"data\":%s,"
             "\"metadata\":{\"user_id\":\"u-1\"}}",
             type, data ? data : "{}");
    return cmdbuf;
}

static evl_luahost_verdict decide(evl_luahost *h, const char *agg,
                                  const char *state, long long version,
                                  const char *cmd, evl_luahost_decision *d,
                                  char *err, size_t errlen)
{
    evl_luahost_command c;
    memset(&c, 0, sizeof c);
    c.aggregate_type = agg;
    c.aggregate_id = "id-7";
    c.version = version;
    c.state = state;
    c.state_len = state ? strlen(state) : 0;
    c.command = cmd;
    c.command_len = strlen(cmd);
    err[0] = '\0';
    return evl_luahost_decide(h, &c, d, err, errlen);
}

/* A hostile handler: the verdict must be FAILED and the message must
 * contain want. */
static void expect_failure(evl_luahost *h, const char *handler,
                           const char *data, const char *want, const char *what)
{
    evl_luahost_decision d = {0};
    char err[4096];
    evl_luahost_verdict v = decide(h, "hostile", NULL, 0,
                                   command(handler, data), &d, err, sizeof err);
    check_count_++;
    if (v != EVL_LUAHOST_FAILED || !strstr(err, want))
        CHECK_FAIL_("%s: handle.%s: expected FAILED with \"%s\", got verdict "
                    "%d and \"%s\"",
                    what, handler, want, (int)v, err);
    CHECK_INT(d.nevents, 0, "a failed decision carries no events");
    CHECK(d.state == NULL, "a failed decision carries no state");
    evl_luahost_decision_free(&d);
}

/* A hostile handler that is allowed to run: the one event's data. */
static void expect_event_data(evl_luahost *h, const char *handler,
                              const char *data, const char *want,
                              const char *what)
{
    evl_luahost_decision d = {0};
    char err[4096];
    evl_luahost_verdict v = decide(h, "hostile", NULL, 0,
                                   command(handler, data), &d, err, sizeof err);
    check_count_++;
    if (v != EVL_LUAHOST_ACCEPTED || d.nevents != 1 ||
        !strstr(d.events[0].data, want))
        CHECK_FAIL_("%s: handle.%s: expected one event with \"%s\", got "
                    "verdict %d, %zu events, data %s, err \"%s\"",
                    what, handler, want, (int)v, d.nevents,
                    d.nevents ? d.events[0].data : "-", err);
    evl_luahost_decision_free(&d);
}

static void plain_still_works(evl_luahost *h, const char *after)
{
    evl_luahost_decision d = {0};
    char err[4096], what[256];
    evl_luahost_verdict v = decide(h, "plain", "{\"n\":41}", 3,
                                   command("Count", NULL), &d, err, sizeof err);
    snprintf(what, sizeof what, "after %s, a good call is accepted", after);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, what);
    if (v == EVL_LUAHOST_ACCEPTED)
        CHECK_STR(d.state, "{\"n\":42}", "and its state is right");
    else
        fprintf(stderr, "    (%s)\n", err);
    evl_luahost_decision_free(&d);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[1400];
    FILE *fp;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fp = fopen(path, "w");
    if (!fp) {
        perror(path);
        exit(2);
    }
    fputs(text, fp);
    fclose(fp);
}

static int stderr_pipe[2], saved_stderr;

static void capture_begin(void)
{
    if (pipe(stderr_pipe) != 0)
        exit(2);
    saved_stderr = dup(2);
    dup2(stderr_pipe[1], 2);
}

static void capture_end(char *buf, size_t n)
{
    ssize_t got;
    dup2(saved_stderr, 2);
    close(saved_stderr);
    close(stderr_pipe[1]);
    got = read(stderr_pipe[0], buf, n - 1);
    buf[got > 0 ? got : 0] = '\0';
    close(stderr_pipe[0]);
}

/* ---- the good set ----------------------------------------------------- */

static void test_good_set(void)
{
    evl_luahost_problems probs = {0};
    char err[EVL_ERRLEN];
    evl_luahost *h = load("good", 0, 0, &probs, err, sizeof err);
    const evl_luahost_aggregate *a;
    const evl_luahost_projection *p;

    CHECK(h != NULL, "the good script set loads");
    if (!h) {
        fprintf(stderr, "    %s\n", err);
        evl_luahost_problems_free(&probs);
        return;
    }
    CHECK_INT(probs.n, 0, "a good set has no problems");
    CHECK_INT(evl_luahost_naggregates(h), 1, "one aggregate is loaded");
    CHECK_INT(evl_luahost_nprojections(h), 2, "two projections are loaded");
    CHECK_STR(evl_luahost_projection_at(h, 0)->name, "audit",
              "in file name order");
    CHECK_INT(strlen(evl_luahost_hash(h)), 16, "the set hash is 16 hex digits");
    CHECK(evl_luahost_memory(h) > 0, "the host reports its Lua heap");

    a = evl_luahost_aggregate_get(h, "customer");
    CHECK(a != NULL, "the aggregate is found by its type");
    CHECK(evl_luahost_aggregate_get(h, "nobody") == NULL,
          "an unknown type is not found");
    CHECK(evl_luahost_aggregate_at(h, 0) == a, "and by its position");
    if (a) {
        CHECK_HAS(a->script, "good/aggregates/customer.lua",
                  "the aggregate knows its script");
        CHECK_INT(a->ncommands, 5, "the aggregate lists its command types");
        CHECK_STR(a->commands[0], "EchoContext", "commands are sorted (1)");
        CHECK_STR(a->commands[4], "UpdateCustomerProfile",
                  "commands are sorted (5)");
        CHECK_INT(a->nevents, 3, "the aggregate lists its applied events");
    }
    p = evl_luahost_projection_get(h, "audit");
    CHECK(p != NULL && p->nschema == 2, "a schema list keeps each statement");
    if (p && p->nschema == 2)
        CHECK_HAS(p->schema[1], "CREATE INDEX", "in order");
    p = evl_luahost_projection_get(h, "customer_profile");
    CHECK(p != NULL, "the projection is found by its name");
    if (p) {
        CHECK_INT(p->nevents, 3, "the projection lists its event types");
        CHECK(evl_luahost_projection_handles(p, "CustomerNameChanged"),
              "the projection handles an event type it has");
        CHECK(!evl_luahost_projection_handles(p, "OrderPlaced"),
              "and not one it lacks");
        CHECK_INT(p->nschema, 1, "a schema string is one statement");
        if (p->nschema == 1)
            CHECK_HAS(p->schema[0], "CREATE TABLE IF NOT EXISTS customers",
                      "the projection's schema is kept");
    }

    {
        evl_luahost *h2 = load("good", 0, 0, NULL, err, sizeof err);
        CHECK(h2 != NULL, "the same set loads twice");
        if (h2)
            CHECK_STR(evl_luahost_hash(h2), evl_luahost_hash(h),
                      "the same set hashes the same");
        evl_luahost_free(h2);
    }
    evl_luahost_free(h);
}

static void test_decide(void)
{
    char err[4096];
    evl_luahost *h = load("good", 0, 0, NULL, err, sizeof err);
    evl_luahost_decision d = {0};
    evl_luahost_verdict v;
    char state[1024];

    if (!h) {
        CHECK(0, "the good set loads for decide");
        return;
    }

    v = decide(h, "customer", NULL, 0,
               command("RegisterCustomer", "{\"name\":\"  Ada  \"}"), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "a valid command is accepted");
    CHECK_INT(d.nevents, 2, "registering emits two events");
    if (d.nevents == 2) {
        CHECK_STR(d.events[0].type, "CustomerRegistered", "first event type");
        CHECK_INT(d.events[0].version, 1, "an event without version is v1");
        CHECK_HAS(d.events[0].data, "\"name\":\"Ada\"",
                  "the handler used a required module (trim)");
        CHECK_HAS(d.events[0].data, "\"at\":\"20",
                  "evlua.now() gives an RFC 3339 time");
        CHECK_INT(d.events[0].data_len, strlen(d.events[0].data),
                  "data_len is the JSON's length");
        CHECK_STR(d.events[1].type, "CustomerNameChanged", "second type");
        CHECK_INT(d.events[1].version, 2, "an event's version is kept");
        CHECK_STR(d.events[1].data, "{\"newName\":\"Ada\"}",
                  "the event data is JSON");
    }
    CHECK_HAS(d.state, "\"registered\":true", "apply ran on the new state");
    CHECK_HAS(d.state, "\"count\":2", "both events were applied");
    CHECK_HAS(d.state, "\"last_seq\":2",
              "apply saw sequence = version + position");
    CHECK_HAS(d.state, "\"name\":\"Ada\"",
              "an apply that returns a table replaces the state");
    snprintf(state, sizeof state, "%s", d.state ? d.state : "{}");

    v = decide(h, "customer", state, 2,
               command("RegisterCustomer", "{\"name\":\"Bob\"}"), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_REJECTED, "ctx.reject rejects");
    CHECK_STR(err, "customer id-7 is already registered",
              "the rejection carries the script's message");
    CHECK_INT(d.nevents, 0, "a rejection has no events");
    CHECK(d.state == NULL, "a rejection has no new state");

    v = decide(h, "customer", state, 2,
               command("UpdateCustomerProfile", "{\"name\":\"\"}"), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_REJECTED, "an empty name is rejected");
    CHECK_STR(err, "name must not be empty", "with the contract's message");

    v = decide(h, "customer", state, 2,
               command("UpdateCustomerProfile",
                       "{\"name\":\"Cy\",\"address\":\"Main St 1\"}"),
               &d, err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "a profile update is accepted");
    CHECK_HAS(d.state, "\"address\":\"Main St 1\"", "the address was applied");
    CHECK_HAS(d.state, "\"count\":4", "on top of the old state");

    v = decide(h, "customer", state, 2, command("Touch", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED,
              "a handle that changes its state argument fails");
    CHECK_HAS(err, "handle.Touch must not change the state", "and says so");
    CHECK_INT(d.nevents, 0, "with no events");

    v = decide(h, "customer", NULL, 5, command("EchoContext", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "ctx is readable");
    if (d.nevents == 1) {
        CHECK_HAS(d.events[0].data, "\"id\":\"id-7\"", "ctx.aggregate_id");
        CHECK_HAS(d.events[0].data, "\"version\":5", "ctx.version");
        CHECK_HAS(d.events[0].data, "\"user\":\"u-1\"", "ctx.metadata");
        CHECK_HAS(d.events[0].data, "\"cmd_id\":\"cmd-1\"",
                  "the whole command reaches the handler");
    }

    v = decide(h, "customer", NULL, 0, command("Fly", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_REJECTED, "a command without handler is rejected");
    CHECK_HAS(err, "has no handler for command Fly", "and says so");

    v = decide(h, "starship", NULL, 0, command("Fly", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED, "an unknown aggregate type fails");
    CHECK_HAS(err, "starship", "naming the type");

    v = decide(h, "customer", NULL, 0, "{\"type\": ", &d, err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED, "invalid command JSON fails");
    CHECK_HAS(err, "command JSON", "saying which JSON");

    v = decide(h, "customer", NULL, 0,
               "{\"type\":\"Touch\",\"data\":{\"n\":9223372036854775808}}", &d,
               err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED,
              "an integer beyond 2^53 in a command fails");
    v = decide(h, "customer", NULL, 0,
               "{\"type\":\"Touch\",\"data\":{\"n\":1e400}}", &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED, "1e400 in a command fails");
    v = decide(h, "customer", NULL, 0,
               "{\"type\":\"Touch\",\"data\":{\"s\":\"\xff\xfe\"}}", &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED, "invalid UTF-8 in a command fails");
    v = decide(h, "customer", NULL, 0, "{\"data\":{}}", &d, err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED, "a command without type fails");
    CHECK_HAS(err, "no type", "and says so");
    v = decide(h, "customer", "[1,2", 0, command("Touch", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED, "invalid state JSON fails");
    CHECK_HAS(err, "state JSON", "saying which JSON");

    /* deep nesting must fail cleanly, not blow the C stack */
    {
        size_t depth = 10000, n = 0;
        char *deep = evl_xmalloc(2 * depth + 64);
        n += (size_t)sprintf(deep, "{\"type\":\"Touch\",\"data\":");
        for (size_t i = 0; i < depth; i++)
            deep[n++] = '[';
        for (size_t i = 0; i < depth; i++)
            deep[n++] = ']';
        deep[n++] = '}';
        deep[n] = '\0';
        v = decide(h, "customer", NULL, 0, deep, &d, err, sizeof err);
        CHECK_INT(v, EVL_LUAHOST_FAILED, "JSON nested 10,000 deep fails");
        free(deep);
    }

    /* rebuilding: stored envelopes, one of an old version (upcast) */
    {
        const char *events[] = {
            "{\"type\":\"CustomerRegistered\",\"version\":1,\"sequence\":1,"
            "\"aggregate_id\":\"id-7\",\"data\":{\"name\":\"Ada\"}}",
            "{\"type\":\"CustomerNameChanged\",\"version\":1,\"sequence\":2,"
            "\"aggregate_id\":\"id-7\",\"data\":{\"name\":\"Old Style\"}}",
            "{\"type\":\"SomethingElse\",\"version\":1,\"data\":{}}",
        };
        size_t lens[3];
        evl_buf out = {0};
        for (int i = 0; i < 3; i++)
            lens[i] = strlen(events[i]);
        CHECK_INT(evl_luahost_apply(h, "customer", NULL, 0, events, lens, 3,
                                    &out, err, sizeof err),
                  EVL_OK, "stored events rebuild the state");
        CHECK_HAS(out.data, "\"name\":\"Old Style\"",
                  "an old event version goes through upcast first");
        CHECK_HAS(out.data, "\"count\":2",
                  "an event without apply entry leaves the state alone");
        CHECK_INT(out.len, strlen(out.data), "the state is NUL-terminated");
        CHECK_INT(evl_luahost_apply(h, "customer", "{\"count\":1}", 11,
                                    events + 2, lens + 2, 1, &out, err,
                                    sizeof err),
                  EVL_OK, "apply starts from a given state");
        CHECK_STR(out.data, "{\"count\":1}",
                  "and keeps it when nothing applies");
        lens[0] = 5;
        CHECK_INT(evl_luahost_apply(h, "customer", NULL, 0, events, lens, 1,
                                    &out, err, sizeof err),
                  EVL_EPERMANENT, "a truncated event fails the rebuild");
        CHECK_HAS(err, "event 1 JSON", "naming the event");
        CHECK_INT(out.len, 0, "and leaves no state");
        evl_buf_free(&out);
    }

    evl_luahost_decision_free(&d);
    evl_luahost_free(h);
}

static void test_project(void)
{
    char err[4096];
    evl_luahost *h = load("good", 0, 0, NULL, err, sizeof err);
    evl_luahost_stmts s = {0};
    const char *ev;

    if (!h) {
        CHECK(0, "the good set loads for project");
        return;
    }
    ev = "{\"id\":\"e1\",\"type\":\"CustomerRegistered\",\"aggregate_type\":"
         "\"customer\",\"aggregate_id\":\"c-1\",\"sequence\":1,\"version\":1,"
         "\"data\":{\"name\":\"Ada\"}}";
    CHECK_INT(evl_luahost_project(h, "customer_profile", ev, strlen(ev), &s,
                                  err, sizeof err),
              EVL_OK, "a handler returning one statement projects");
    CHECK_INT(s.n, 1, "one statement");
    if (s.n == 1) {
        const evl_luahost_param *p = s.stmts[0].params;
        CHECK_HAS(s.stmts[0].sql, "INSERT INTO customers", "its SQL");
        CHECK_INT(s.stmts[0].sql_len, strlen(s.stmts[0].sql), "sql_len");
        CHECK_INT(s.stmts[0].nparams, 7, "seven params");
        if (s.stmts[0].nparams == 7) {
            CHECK_INT(p[0].type, EVL_PARAM_STRING, "$1 is a string");
            CHECK_STR(p[0].text, "c-1", "$1 is the aggregate id");
            CHECK_STR(p[1].text, "Ada", "$2 is the name");
            CHECK_INT(p[2].type, EVL_PARAM_INTEGER, "$3 is an integer");
            CHECK_INT(p[2].i, 1, "$3 is 1");
            CHECK_STR(p[2].text, "1", "$3 reads 1");
            CHECK_INT(p[3].type, EVL_PARAM_FLOAT, "$4 is a float");
            CHECK(p[3].f == 1.5, "$4 is 1.5");
            CHECK_STR(p[3].text, "1.5", "$4 reads 1.5");
            CHECK_INT(p[4].type, EVL_PARAM_BOOLEAN, "$5 is a boolean");
            CHECK_STR(p[4].text, "true", "$5 reads true");
            CHECK_INT(p[5].type, EVL_PARAM_JSON, "$6 (a table) is JSON");
            CHECK_STR(p[5].text, "{\"tags\":[\"a\",\"b\"]}", "$6's JSON");
            CHECK_INT(p[6].type, EVL_PARAM_NULL, "$7 (evlua.null) is NULL");
            CHECK(p[6].text == NULL, "a NULL param has no text");
        }
    }

    ev = "{\"type\":\"CustomerNameChanged\",\"aggregate_type\":\"customer\","
         "\"aggregate_id\":\"c-1\",\"version\":2,\"data\":{\"newName\":\"B\"}}";
    CHECK_INT(evl_luahost_project(h, "customer_profile", ev, strlen(ev), &s,
                                  err, sizeof err),
              EVL_OK, "a handler returning a list projects");
    CHECK_INT(s.n, 2, "two statements");
    if (s.n == 2) {
        CHECK_INT(s.stmts[0].nparams, 2, "the first has two params");
        CHECK_STR(s.stmts[0].params[0].text, "c-1", "first statement $1");
        CHECK_STR(s.stmts[0].params[1].text, "B", "first statement $2");
        CHECK_HAS(s.stmts[1].sql, "INSERT INTO audit", "the second's SQL");
        CHECK_STR(s.stmts[1].params[0].text, "CustomerNameChanged",
                  "second statement $1");
    }

    ev = "{\"type\":\"CustomerNameChanged\",\"aggregate_type\":\"customer\","
         "\"aggregate_id\":\"c-1\",\"version\":1,\"data\":{\"name\":\"Old\"}}";
    CHECK_INT(evl_luahost_project(h, "customer_profile", ev, strlen(ev), &s,
                                  err, sizeof err),
              EVL_OK, "an old event version projects");
    if (s.n == 2)
        CHECK_STR(s.stmts[0].params[1].text, "Old",
                  "after its aggregate's upcast");

    ev = "{\"type\":\"CustomerAddressChanged\",\"data\":{}}";
    CHECK_INT(evl_luahost_project(h, "customer_profile", ev, strlen(ev), &s,
                                  err, sizeof err),
              EVL_OK, "a handler returning nil projects");
    CHECK_INT(s.n, 0, "to no statement");
    ev = "{\"type\":\"OrderPlaced\",\"data\":{}}";
    CHECK_INT(evl_luahost_project(h, "customer_profile", ev, strlen(ev), &s,
                                  err, sizeof err),
              EVL_OK, "an event without handler projects");
    CHECK_INT(s.n, 0, "to no statement");
    CHECK_INT(
        evl_luahost_project(h, "nobody", ev, strlen(ev), &s, err, sizeof err),
        EVL_EPERMANENT, "an unknown projection fails");
    ev = "{\"type\":\"CustomerRegistered\",\"data\":{\"n\":9223372036854775807}"
         "}";
    CHECK_INT(evl_luahost_project(h, "customer_profile", ev, strlen(ev), &s,
                                  err, sizeof err),
              EVL_EPERMANENT, "2^63 in an event fails");
    CHECK_HAS(err, "event JSON", "saying which JSON");
    ev = "{\"type\":\"CustomerRegistered\",\"data\":{\"s\":\"\\ud800\"}}";
    CHECK_INT(evl_luahost_project(h, "customer_profile", ev, strlen(ev), &s,
                                  err, sizeof err),
              EVL_EPERMANENT, "a lone surrogate in an event fails");

    CHECK_INT(evl_luahost_reset(h, "audit", &s, err, sizeof err), EVL_OK,
              "a reset function gives statements");
    CHECK(s.n == 1 && strcmp(s.stmts[0].sql, "TRUNCATE audit") == 0,
          "the ones it returns");
    CHECK_INT(evl_luahost_reset(h, "customer_profile", &s, err, sizeof err),
              EVL_OK, "a reset string gives statements");
    CHECK_INT(s.n, 1, "one statement");
    if (s.n == 1)
        CHECK_STR(s.stmts[0].sql, "TRUNCATE customers", "the reset SQL");

    evl_luahost_stmts_free(&s);
    evl_luahost_free(h);
}

/* ---- the broken set: every problem, one line each --------------------- */

static void test_broken_set(void)
{
    evl_luahost_problems probs = {0};
    char err[EVL_ERRLEN];
    evl_luahost *h = load("broken", 0, 100000, &probs, err, sizeof err);

    CHECK(h == NULL, "a broken set does not load");
    CHECK_HAS(err, "problems loading scripts; first:",
              "the error counts the problems");
    CHECK(probs.n >= 14, "every problem is collected, not just the first");
    CHECK_PROBLEM(&probs, "broken/aggregates/a_syntax.lua:3:");
    CHECK_PROBLEM(&probs, "broken/aggregates/b_handle_string.lua: "
                          "handle.UpdateProfile is a string, expected a "
                          "function");
    CHECK_PROBLEM(&probs, "c_missing.lua: initial is missing, expected a "
                          "function");
    CHECK_PROBLEM(&probs, "c_missing.lua: apply is missing");
    CHECK_PROBLEM(&probs, "c_missing.lua: handle is missing");
    CHECK_PROBLEM(&probs, "e_dup.lua: aggregate type \"dup\" is already "
                          "defined in");
    CHECK_PROBLEM(&probs, "broken/aggregates/f_runtime.lua:2: attempt to "
                          "index a nil value");
    CHECK_PROBLEM(&probs, "g_number.lua: returned a number, expected a table");
    CHECK_PROBLEM(&probs, "h_badname.lua: type \"has space\" is not a valid "
                          "name");
    CHECK_PROBLEM(&probs, "h_badname.lua: apply has a number key");
    CHECK_PROBLEM(&probs, "h_badname.lua: upcast is a number");
    CHECK_PROBLEM(&probs, "i_loop.lua: loading: instruction budget of 100000 "
                          "exceeded (at ");
    CHECK_PROBLEM(&probs, "j_binary.lua:2: attempt to load a binary chunk");
    CHECK_PROBLEM(&probs, "broken/aggregates/k_errobj.lua: no position here");
    CHECK_PROBLEM(&probs, "b_dup.lua: projection name \"dup\" is already "
                          "defined in");
    CHECK_PROBLEM(&probs, "c_bad.lua: on is a string, expected a table of "
                          "functions");
    CHECK_PROBLEM(&probs, "c_bad.lua: schema is a number, expected a string "
                          "or a list of strings");
    CHECK_PROBLEM(&probs, "e_schema.lua: schema[2] is a boolean, expected a "
                          "string");
    CHECK_PROBLEM(&probs, "c_bad.lua: reset is a number");
    CHECK_PROBLEM(&probs, "d_noname.lua: name is missing");
    for (size_t i = 0; i < probs.n; i++)
        CHECK(strchr(probs.lines[i], '\n') == NULL,
              "each problem is a single line");
    evl_luahost_problems_free(&probs);

    {
        set s;
        const char *missing = "/nonexistent/evlua/aggregates";
        set_init(&s, "/nonexistent", 0, 0);
        s.adirs[0] = missing;
        s.cfg.nprojection_dirs = 0;
        CHECK_INT(evl_luahost_new(&s.cfg, &h, &probs, err, sizeof err),
                  EVL_EPERMANENT, "a missing script directory is an error");
        CHECK_PROBLEM(&probs, "/nonexistent/evlua/aggregates: cannot open");
        evl_luahost_problems_free(&probs);
    }
}

/* ---- hostile scripts -------------------------------------------------- */

static char *big_command(const char *type, size_t n)
{
    size_t len = n + 128, off;
    char *s = evl_xmalloc(len);
    off = (size_t)snprintf(s, len, "{\"type\":\"%s\",\"data\":{\"s\":\"", type);
    memset(s + off, 'x', n);
    off += n;
    snprintf(s + off, len - off, "\"}}");
    return s;
}

static void test_hostile(void)
{
    evl_luahost_problems probs = {0};
    char err[4096];
    /* no time limit here: under valgrind the clock would trip first */
    evl_luahost *h = load_ms("hostile", 32u * 1024 * 1024, 1000000, -1, &probs,
                             err, sizeof err);
    evl_luahost_decision d = {0};
    evl_luahost_stmts s = {0};
    evl_luahost_verdict v;
    struct stat st;

    CHECK(h != NULL, "the hostile set loads (its tampering is contained)");
    if (!h) {
        for (size_t i = 0; i < probs.n; i++)
            fprintf(stderr, "    %s\n", probs.lines[i]);
        evl_luahost_problems_free(&probs);
        return;
    }
    plain_still_works(h, "loading a script that tampers with its sandbox");
    expect_event_data(h, "Probe", NULL, "\"coroutine\":\"nil\"",
                      "no coroutine library");
    expect_event_data(h, "Probe", NULL, "\"debug\":\"nil\"", "no debug");
    expect_event_data(h, "Probe", NULL, "\"io\":\"nil\"", "no io");
    expect_event_data(h, "Probe", NULL, "\"package\":\"nil\"", "no package");
    expect_event_data(h, "Probe", NULL, "\"dofile\":\"nil\"", "no dofile");
    expect_event_data(h, "Probe", NULL, "\"loadfile\":\"nil\"", "no loadfile");
    expect_event_data(h, "Probe", NULL, "\"os_execute\":\"nil\"",
                      "no os.execute");
    expect_event_data(h, "Probe", NULL, "\"os_getenv\":\"nil\"",
                      "no os.getenv");
    expect_event_data(h, "Probe", NULL, "\"os_time\":\"function\"",
                      "os.time stays");
    expect_event_data(h, "Probe", NULL, "\"string_dump\":\"nil\"",
                      "no string.dump");
    expect_event_data(h, "Probe", NULL, "\"G_is_env\":true",
                      "_G is the script's own global table");

    /* runtime errors carry script:line and a traceback */
    expect_failure(h, "Error", NULL,
                   "hostile/aggregates/hostile.lua: handle.Error: ",
                   "a runtime error names script and handler");
    expect_failure(h, "Error", NULL, "hostile.lua:17: attempt to index a nil",
                   "a runtime error has script:line");
    expect_failure(h, "Error", NULL,
                   "stack traceback:", "a runtime error has a traceback");
    expect_failure(h, "ErrorTable", NULL, "custom error object",
                   "an error object is shown through __tostring");
    expect_failure(h, "BreakApply", NULL,
                   "hostile.lua: apply.Broken: ", "an error in apply fails");
    expect_failure(h, "BreakApply", NULL, "hostile.lua:11: apply exploded",
                   "an error in apply has script:line");
    expect_failure(h, "BreakApply", NULL,
                   "stack traceback:", "an error in apply has a traceback");

    /* limits */
    expect_failure(h, "Loop", NULL,
                   "hostile.lua: handle.Loop: instruction budget of 1000000 "
                   "exceeded (at ",
                   "an infinite loop runs out of budget");
    expect_failure(h, "Loop", NULL, "/hostile.lua:19)",
                   "the budget error says where the loop was");
    plain_still_works(h, "an infinite loop");
    expect_failure(h, "PcallLoop", NULL,
                   "handle.PcallLoop: instruction budget of 1000000 exceeded",
                   "a pcall cannot swallow the budget");
    plain_still_works(h, "a pcall-wrapped infinite loop");
    expect_failure(h, "Bomb", NULL,
                   "hostile/aggregates/hostile.lua: handle.Bomb: memory limit "
                   "of 33554432 bytes exceeded",
                   "a memory bomb hits the memory limit");
    plain_still_works(h, "a memory bomb");
    CHECK(evl_luahost_memory(h) < 8u * 1024 * 1024,
          "the bomb's memory is given back");
    expect_failure(h, "Rep", NULL, "string.rep: result would exceed the limit",
                   "string.rep is capped");
    expect_event_data(h, "RepEmpty", NULL, "\"s\":\"\"",
                      "string.rep of nothing 2^60 times returns at once");
    expect_failure(h, "Move", NULL,
                   "handle.Move: instruction budget of 1000000 exceeded",
                   "table.move over 2^50 elements is charged to the budget");
    expect_failure(h, "LongLen", NULL,
                   "handle.LongLen: instruction budget of 1000000 exceeded",
                   "table.insert under a lying __len is charged too");
    expect_event_data(h, "ShortMove", NULL, "\"a\":[1,2,3,9]",
                      "table.move, insert and remove still work");
    expect_event_data(h, "Sort", NULL, "\"first\":-2000",
                      "table.sort still works");
    expect_failure(h, "SortBig", NULL, "instruction budget of 1000000 exceeded",
                   "table.sort on a lying __len is charged to the budget");
    plain_still_works(h, "C loops charged to the budget");
    {
        char *big = big_command("BigMatch", 2 * 1024 * 1024);
        v = decide(h, "hostile", NULL, 0, big, &d, err, sizeof err);
        CHECK_INT(v, EVL_LUAHOST_FAILED, "a pattern on a 2 MB subject fails");
        CHECK_HAS(err,
                  "string.match: subject of 2097152 bytes exceeds the "
                  "limit of 1048576",
                  "naming the cap");
        free(big);
        big = big_command("BigMethod", 2 * 1024 * 1024);
        v = decide(h, "hostile", NULL, 0, big, &d, err, sizeof err);
        CHECK_INT(v, EVL_LUAHOST_FAILED,
                  "the cap holds for method calls (s:find) too");
        CHECK_HAS(err, "string.find: subject of",
                  "through the string "
                  "metatable");
        free(big);
        big = big_command("BigPlainFind", 2 * 1024 * 1024);
        v = decide(h, "hostile", NULL, 0, big, &d, err, sizeof err);
        CHECK_INT(v, EVL_LUAHOST_FAILED, "a plain find is capped too");
        free(big);
        big = big_command("Len", 10 * 1024 * 1024);
        v = decide(h, "hostile", NULL, 0, big, &d, err, sizeof err);
        CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "a 10 MB string reaches a handler");
        if (v == EVL_LUAHOST_ACCEPTED && d.nevents == 1)
            CHECK_HAS(d.events[0].data, "\"n\":10485760", "whole");
        else
            fprintf(stderr, "    (%s)\n", err);
        free(big);
    }

    /* the sandbox */
    expect_failure(h, "OsExecute", NULL, "execute",
                   "os.execute does not exist");
    CHECK(stat("/tmp/evlua-sandbox-escape", &st) != 0,
          "and nothing was executed");
    expect_failure(h, "IoOpen", NULL, "global 'io'", "io does not exist");
    expect_failure(h, "DebugSethook", NULL, "global 'debug'",
                   "debug does not exist");
    expect_failure(h, "Dump", NULL, "dump", "string.dump does not exist");
    expect_event_data(h, "LoadBinary", NULL,
                      "attempt to load a binary chunk (mode is 't')",
                      "load refuses binary chunks even when asked for \"b\"");
    expect_event_data(h, "LoadText", NULL,
                      "\"got\":\"the script's own global\"",
                      "a loaded text chunk sees the script's globals");
    expect_failure(h, "RequireC", NULL,
                   "module 'socket.core' not found: no file",
                   "require of a C module fails");
    expect_failure(h, "RequireSelf", NULL, "requires itself",
                   "a require cycle fails");
    expect_failure(h, "RequireEscape", NULL, "invalid module name",
                   "require cannot leave the library directory");
    expect_failure(h, "Loadlib", NULL, "global 'package'",
                   "package.loadlib does not exist");
    expect_failure(h, "Dofile", NULL, "global 'dofile'",
                   "dofile does not exist");
    expect_event_data(h, "StringMt", NULL, "\"mt\":\"false\"",
                      "getmetatable(\"\") gives nothing to tamper with");
    expect_failure(h, "StringMtTamper", NULL, "attempt to index a boolean",
                   "the string metatable cannot be changed");
    expect_event_data(h, "ArrayMtTamper", NULL, "\"mt\":\"evlua.json.array\"",
                      "the shared JSON array metatable is protected");
    expect_failure(h, "Gc", NULL, "__gc metamethods are not allowed",
                   "finalizers are refused");
    expect_failure(h, "Collect", NULL, "only \"count\" is allowed",
                   "collectgarbage cannot steer the collector");
    expect_event_data(h, "Count", NULL, "\"kb\":true",
                      "collectgarbage(\"count\") works");
    v = decide(h, "tamper", NULL, 0, command("Upper", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "the tampering script still runs");
    if (d.nevents == 1) {
        CHECK_HAS(d.events[0].data, "\"u\":\"X\"",
                  "its change to string.upper missed the string metatable");
        CHECK_HAS(d.events[0].data, "\"s\":\"pwned\"",
                  "but its own copy of string has it");
    }
    v = decide(h, "hostile", NULL, 0, command("SetmetatableG", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED,
              "a script may set a metatable on its _G");
    v = decide(h, "plain", NULL, 0, command("Count", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED,
              "setmetatable(_G, ...) in one script leaves the others alone");
    if (d.nevents == 1) {
        CHECK_HAS(d.events[0].data, "\"upper\":\"ABC\"", "string methods work");
        CHECK_HAS(d.events[0].data, "\"upper2\":\"ABC\"",
                  "string.upper is the real one");
        CHECK_HAS(d.events[0].data, "\"floor\":2", "math.floor is there");
        CHECK_HAS(d.events[0].data, "\"inserted\":1", "table.insert is there");
        CHECK_HAS(d.events[0].data, "\"leaked\":\"no\"",
                  "another script's globals do not leak in");
        CHECK_HAS(d.events[0].data, "\"uuid_ok\":true",
                  "another script's evlua changes do not leak in");
    }

    /* results that are not events */
    expect_failure(h, "NotTable", NULL,
                   "hostile.lua: handle.NotTable returned event 1 as a string",
                   "an event that is not a table fails");
    expect_failure(h, "NoType", NULL,
                   "handle.NoType returned event 1 without a string type",
                   "an event without type fails");
    expect_failure(h, "EmptyType", NULL, "returned event 1 with an empty type",
                   "an event with an empty type fails");
    expect_failure(h, "NoData", NULL,
                   "returned event 1 (X) without a data table",
                   "an event without data fails");
    expect_failure(h, "BadVersion", NULL,
                   "returned event 1 (X) with version 0, expected a positive "
                   "integer",
                   "a bad event version fails");
    expect_failure(h, "SecondBad", NULL,
                   "handle.SecondBad returned event 2 without a string type",
                   "the position of the bad event is named");
    expect_failure(h, "NaN", NULL,
                   "returned event 1 (X) whose data has no "
                   "JSON form",
                   "NaN in event data fails");
    expect_failure(h, "NaN", NULL, "NaN", "and says NaN");
    expect_failure(h, "Func", NULL, "function", "a function in data fails");
    expect_failure(h, "Cycle", NULL, "whose data has no JSON form",
                   "a cyclic table in data fails");
    expect_failure(h, "Single", NULL, "is not a list of events",
                   "a single event not wrapped in a list fails");
    expect_failure(h, "Nothing", NULL, "returned nothing, expected a list",
                   "a handler returning nothing fails");
    expect_failure(h, "Number", NULL, "returned a number, expected a list",
                   "a handler returning a number fails");
    expect_failure(h, "RejectNonString", NULL, "bad argument #1 to 'reject'",
                   "ctx.reject wants a string");
    plain_still_works(h, "every hostile handler");

    /* projections */
    {
        static const struct {
            const char *type, *want, *what;
        } cases[] = {
            {"Error", "projections/hostile.lua: on.Error: ",
             "a runtime error in a projection names script and handler"},
            {"Error", "projections/hostile.lua:5: projection boom",
             "a runtime error in a projection has script:line"},
            {"NilParam",
             "on.NilParam returned a statement whose $1 is nil "
             "(use evlua.null",
             "a nil param fails"},
            {"TrailingNil",
             "on.TrailingNil returned a statement whose $2 is nil (use "
             "evlua.null",
             "a nil last param fails like any nil param (the table is "
             "shorter than the SQL's placeholders)"},
            {"FuncParam", "whose $1 is a function, expected a string",
             "a function param fails"},
            {"NaNParam", "whose $1 is NaN", "a NaN param fails"},
            {"CycleParam", "whose $1 has no JSON form",
             "a cyclic table param fails"},
            {"BadSql", "whose first element is a number, expected the SQL",
             "a statement without SQL fails"},
            {"EmptySql", "whose first element is empty",
             "a statement with empty SQL fails"},
            {"NulSql", "whose SQL contains a NUL byte",
             "SQL with a NUL byte fails"},
            {"NotStmt", "on.NotStmt returned a string, expected a statement",
             "a string instead of a statement fails"},
            {"NamedKey", "with a key that is not a position (\"extra\")",
             "a statement with a named key fails"},
            {"ListBad",
             "on.ListBad returned statement 2 whose $1 is a "
             "function",
             "the bad statement's position is named"},
            {"Loop", "on.Loop: instruction budget of 1000000 exceeded",
             "an infinite loop in a projection runs out of budget"},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char ev[256];
            snprintf(ev, sizeof ev, "{\"type\":\"%s\",\"data\":{}}",
                     cases[i].type);
            CHECK_INT(evl_luahost_project(h, "hostile", ev, strlen(ev), &s, err,
                                          sizeof err),
                      EVL_EPERMANENT, cases[i].what);
            CHECK_HAS(err, cases[i].want, cases[i].what);
            CHECK_INT(s.n, 0, "a failed projection has no statements");
        }
        CHECK_INT(evl_luahost_project(h, "hostile",
                                      "{\"type\":\"Error\",\"data\":{}}", 26,
                                      &s, err, sizeof err),
                  EVL_EPERMANENT, "");
        CHECK_HAS(err, "stack traceback:",
                  "a projection error has a "
                  "traceback");
        CHECK_INT(evl_luahost_project(h, "hostile",
                                      "{\"type\":\"Quoted\",\"data\":{}}", 27,
                                      &s, err, sizeof err),
                  EVL_OK,
                  "a $N in literals, quoted names, comments and dollar "
                  "quotes is no placeholder");
        CHECK_INT(evl_luahost_project(h, "hostile",
                                      "{\"type\":\"Empty\",\"data\":{}}", 26,
                                      &s, err, sizeof err),
                  EVL_OK, "an empty list is no statement");
        CHECK_INT(s.n, 0, "none");
        CHECK_INT(evl_luahost_reset(h, "hostile", &s, err, sizeof err), EVL_OK,
                  "a reset function gives statements");
        CHECK_INT(s.n, 2, "two of them");
    }
    plain_still_works(h, "every hostile projection");

    evl_luahost_stmts_free(&s);
    evl_luahost_decision_free(&d);
    evl_luahost_free(h);
}

/* A loop of a few instructions around a costly C call stays far within
 * any instruction budget: the time limit stops it. */
static void test_time_limit(void)
{
    char err[4096];
    evl_luahost *h = load_ms("hostile", 32u * 1024 * 1024, 1000000000L, 300,
                             NULL, err, sizeof err);
    evl_luahost_decision d = {0};
    char *big;
    evl_luahost_verdict v;

    if (!h) {
        CHECK(0, "the hostile set loads with a time limit");
        return;
    }
    big = big_command("SlowFinds", 1024 * 1024);
    v = decide(h, "hostile", NULL, 0, big, &d, err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED, "a short loop over a costly C call fails");
    CHECK_HAS(err, "handle.SlowFinds: time limit of 300 ms exceeded (at ",
              "on the time limit, within the instruction budget");
    free(big);
    plain_still_works(h, "the time limit");
    evl_luahost_decision_free(&d);
    evl_luahost_free(h);
}

/* ---- sandbox costs (issue 15, item 1) --------------------------------- */

/*
 * Each handler makes library calls whose C work is far out of proportion
 * to the instructions the count hook sees: a backtracking pattern, or a
 * loop of a few instructions around a call that does a lot. Each command
 * must fail on a limit, soon, and the host must take the next command.
 * Each runs in a child process under alarm(), so the unfixed behaviour
 * (minutes of matching) shows as a failure, not a hung test.
 */
static const char costly_agg[] =
    "local function done() return { { type = 'Done', data = {} } } end\n"
    "local function ints(n) local t = {} for i = 1, n do t[i] = 65 end\n"
    "  return t end\n"
    "local A = string.rep('a', 20000)\n"
    "return { type = 'costly',\n"
    "  initial = function() return {} end,\n"
    "  apply = { Done = function() end },\n"
    "  handle = {\n"
    "    Ping = function() return done() end,\n"
    "    Find = function()\n"
    "      string.find(string.rep('a', 20000), '.-.-.-b') return done() end,\n"
    "    Match = function() A:match('.-.-.-b') return done() end,\n"
    "    Gmatch = function() for x in A:gmatch('.-.-.-b') do end\n"
    "      return done() end,\n"
    "    Gsub = function() A:gsub('.-.-.-b', '') return done() end,\n"
    "    PcallFind = function()\n"
    "      for i = 1, 1e9 do pcall(string.find, A, '.-.-.-b') end end,\n"
    "    Concat = function()\n"
    "      local t = {} for i = 1, 20000 do t[i] = 'abcdefghijklmnop' end\n"
    "      for i = 1, 1e9 do table.concat(t, ',') end end,\n"
    "    Rep = function() for i = 1, 1e9 do string.rep('x', 1000000) end end,\n"
    "    FormatQ = function() local s = string.rep('\\0', 300000)\n"
    "      for i = 1, 1e9 do string.format('%q', s) end end,\n"
    "    Lower = function() local s = string.rep('A', 1000000)\n"
    "      for i = 1, 1e9 do s:lower() end end,\n"
    "    Utf8Len = function() local s = string.rep('a', 1000000)\n"
    "      for i = 1, 1e9 do utf8.len(s) end end,\n"
    "    Utf8Offset = function() local s = string.rep('a', 1000000)\n"
    "      for i = 1, 1e9 do utf8.offset(s, 999999) end end,\n"
    "    Utf8Codepoint = function() local s = string.rep('a', 200000)\n"
    "      for i = 1, 1e9 do utf8.codepoint(s, 1, -1) end end,\n"
    "    Utf8Codes = function() local s = string.rep('\\x80', 1000000)\n"
    "      for i = 1, 1e9 do for p, c in utf8.codes(s) do end end end,\n"
    "    Utf8CodesOk = function() local n, sum = 0, 0\n"
    "      for p, c in utf8.codes('h\\u{E9}llo \\u{1F600}') do\n"
    "        n = n + 1 sum = sum + p + c end\n"
    "      local ok, e = pcall(function() for p, c in utf8.codes('a\\xffb') "
    "do end end)\n"
    "      return { { type = 'Done', data = { n = n, sum = sum, e = e } } }\n"
    "    end,\n"
    "    Utf8Char = function() local t = ints(100000)\n"
    "      for i = 1, 1e9 do utf8.char(table.unpack(t)) end end,\n"
    "    Byte = function() local s = string.rep('a', 200000)\n"
    "      for i = 1, 1e9 do s:byte(1, -1) end end,\n"
    "    Char = function() local t = ints(100000)\n"
    "      for i = 1, 1e9 do string.char(table.unpack(t)) end end,\n"
    "    Unpack = function() local t = ints(100000)\n"
    "      for i = 1, 1e9 do table.unpack(t) end end,\n"
    "    Date = function() local f = string.rep('%c', 100000)\n"
    "      for i = 1, 1e9 do os.date(f) end end,\n"
    "    ToNumber = function() local s = string.rep('1', 1000000)\n"
    "      for i = 1, 1e9 do tonumber(s) tonumber(s, 16) end end,\n"
    "    Pack = function()\n"
    "      for i = 1, 1e9 do pcall(string.pack, 'c60000000', '') end end,\n"
    "    StrUnpack = function() local f = string.rep('i1', 100000)\n"
    "      local s = string.rep('a', 100000)\n"
    "      for i = 1, 1e9 do string.unpack(f, s) end end,\n"
    "    SortAdversary = function() local t = {}\n"
    "      for i = 1, 100000 do t[i] = i end\n"
    "      for i = 1, 1e9 do pcall(table.sort, t, function(a, b)\n"
    "        return math.random(2) == 1 end) end end,\n"
    "    SortSlow = function() local t = { 3, 1, 2 }\n"
    "      table.sort(t, function(a, b) while true do end end) end,\n"
    "    SortError = function() local t = { 3, 1, 2 }\n"
    "      table.sort(t, function(a, b) error('no order here') end) end,\n"
    /* the sandbox's own string.rep against a reference */
    "    RepSame = function()\n"
    "      local function ref(s, n, sep) local t = {}\n"
    "        for i = 1, n do t[i] = s end return table.concat(t, sep) end\n"
    "      for _, s in ipairs{ '', 'a', 'ab', 'abc', 'hello world' } do\n"
    "        for _, sep in ipairs{ '', ',', ', ', 'xyz' } do\n"
    "          for n = -2, 40 do\n"
    "            local want = n > 0 and ref(s, n, sep) or ''\n"
    "            if string.rep(s, n, sep) ~= want or\n"
    "               (sep == '' and s:rep(n) ~= want) then\n"
    "              error(('rep(%q, %d, %q)'):format(s, n, sep)) end\n"
    "          end\n"
    "        end\n"
    "      end\n"
    "      local rep = string.rep\n"
    "      local ok, e = pcall(function() local r = rep('x', 'y') return r "
    "end)\n"
    "      local ok2, e2 = pcall(function() local r = rep('x', 1, {}) return "
    "r end)\n"
    "      return { { type = 'Done', data = { e = e, e2 = e2,\n"
    "        big = #string.rep('ab', 300000, '-') } } }\n"
    "    end,\n"
    /* a small value that stands for a huge text: 2^40 leaves */
    "    JsonEncode = function() local t = {} for i = 1, 40 do t = { t, t } "
    "end\n"
    "      evlua.json.encode(t) return done() end,\n"
    "    JsonData = function() local t = {} for i = 1, 40 do t = { t, t } "
    "end\n"
    "      return { { type = 'Done', data = { t = t } } } end,\n"
    "  } }\n";

typedef struct cost_result {
    int finished, verdict, next_ok;
    double secs;
    char err[1024];
} cost_result;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run handler in a child that alarm() stops after cap seconds; then a
 * plain command on the same host. */
static void run_costly(evl_luahost *h, const char *handler, unsigned cap,
                       cost_result *r)
{
    int fd[2], st = 0;
    pid_t pid;
    memset(r, 0, sizeof *r);
    if (pipe(fd) != 0)
        exit(2);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        exit(2);
    if (pid == 0) {
        cost_result c = {0};
        evl_luahost_decision d = {0};
        char err[4096];
        double t0;
        close(fd[0]);
        alarm(cap);
        t0 = mono_s();
        c.verdict = decide(h, "costly", NULL, 0, command(handler, NULL), &d,
                           err, sizeof err);
        c.secs = mono_s() - t0;
        snprintf(c.err, sizeof c.err, "%.1000s", err);
        evl_luahost_decision_free(&d);
        c.next_ok = decide(h, "costly", NULL, 0, command("Ping", NULL), &d, err,
                           sizeof err) == EVL_LUAHOST_ACCEPTED;
        evl_luahost_decision_free(&d);
        evl_luahost_free(h); /* the child's copy: no leak reports at exit */
        c.finished = 1;
        _exit(write(fd[1], &c, sizeof c) == (ssize_t)sizeof c ? 0 : 3);
    }
    close(fd[1]);
    if (read(fd[0], r, sizeof *r) != (ssize_t)sizeof *r)
        r->finished = 0;
    close(fd[0]);
    waitpid(pid, &st, 0);
}

/* The command fails with want in its error, within secs, and the next
 * command on the host is accepted. */
static void expect_costly(evl_luahost *h, const char *handler, const char *want,
                          const char *want2, double secs)
{
    cost_result r;
    const char *preload = getenv("LD_PRELOAD");
    /* valgrind runs C code some 50 times slower than the budget expects */
    if (preload && strstr(preload, "vgpreload"))
        secs *= 10;
    run_costly(h, handler, (unsigned)(secs * 4), &r);
    check_count_++;
    if (!r.finished) {
        CHECK_FAIL_("handle.%s: still running after %.0f s (expected a limit "
                    "error within %.1f s)",
                    handler, secs * 4, secs);
        return;
    }
    if (r.verdict != EVL_LUAHOST_FAILED ||
        (!strstr(r.err, want) && !(want2 && strstr(r.err, want2))))
        CHECK_FAIL_("handle.%s: expected FAILED with \"%s\"%s%s, got verdict "
                    "%d and \"%.300s\"",
                    handler, want, want2 ? " or " : "", want2 ? want2 : "",
                    r.verdict, r.err);
    check_count_++;
    if (r.secs > secs)
        CHECK_FAIL_("handle.%s: took %.2f s, expected at most %.1f s", handler,
                    r.secs, secs);
    CHECK(r.next_ok, "the next command on the same host is accepted");
}

static evl_luahost *load_costly(const char *root, long instr, long ms)
{
    char err[4096];
    set s;
    evl_luahost *h = NULL;
    set_init(&s, root, 64u * 1024 * 1024, instr);
    s.cfg.lib_dir = NULL;
    s.cfg.time_limit_ms = ms;
    if (evl_luahost_new(&s.cfg, &h, NULL, err, sizeof err) != EVL_OK) {
        CHECK_FAIL_("the costly set loads: %s", err);
        return NULL;
    }
    return h;
}

static void test_sandbox_costs(void)
{
    char root[] = "/tmp/evlua-costs-XXXXXX", adir[256], pdir[256], path[300];
    evl_luahost *h;

    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp works");
        return;
    }
    snprintf(adir, sizeof adir, "%s/aggregates", root);
    snprintf(pdir, sizeof pdir, "%s/projections", root);
    mkdir(adir, 0700);
    mkdir(pdir, 0700);
    write_file(adir, "costly.lua", costly_agg);

    /* The case: limits.time_ms = 1000 and the default budget. The
     * find stops on the budget (or, under valgrind, on the clock) well
     * within the time limit's reach, and the host goes on. */
    h = load_costly(root, 0, 1000);
    if (h) {
        expect_costly(h, "Find",
                      "handle.Find: instruction budget of 10000000 "
                      "exceeded (at ",
                      "handle.Find: time limit of 1000 ms", 2.5);
        expect_costly(h, "Find", "costly.lua:11)", "costly.lua:11)", 2.5);
        expect_costly(h, "Match", "exceeded", NULL, 2.5);
        expect_costly(h, "Gmatch", "exceeded", NULL, 2.5);
        expect_costly(h, "Gsub", "exceeded", NULL, 2.5);
        expect_costly(h, "PcallFind", "exceeded", NULL, 2.5);
        /* the JSON encoder is C too: evlua.json.encode, and the event data
         * the host encodes after handle returns */
        expect_costly(h, "JsonEncode", "exceeded", NULL, 2.5);
        expect_costly(h, "JsonData", "exceeded", NULL, 2.5);
    }
    evl_luahost_free(h);

    /* Without a time limit, the instruction budget alone bounds every
     * library call a script can make. */
    h = load_costly(root, 1000000, -1);
    if (h) {
        static const char *const loops[] = {
            "Find",    "Concat",     "Rep",           "FormatQ",   "Lower",
            "Utf8Len", "Utf8Offset", "Utf8Codepoint", "Utf8Codes", "Utf8Char",
            "Byte",    "Char",       "Unpack",        "ToNumber",  "Pack",
            "Date",    "StrUnpack",  "SortAdversary", "SortSlow",
        };
        for (size_t i = 0; i < sizeof loops / sizeof loops[0]; i++)
            expect_costly(h, loops[i], "instruction budget of 1000000 exceeded",
                          NULL, 5.0);
        expect_costly(h, "SortError", "no order here", NULL, 5.0);
        {
            evl_luahost_decision d = {0};
            char err[4096];
            evl_luahost_verdict v =
                decide(h, "costly", NULL, 0, command("Utf8CodesOk", NULL), &d,
                       err, sizeof err);
            CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "utf8.codes still iterates");
            if (v == EVL_LUAHOST_ACCEPTED && d.nevents == 1) {
                CHECK_HAS(d.events[0].data, "\"n\":7", "every character");
                CHECK_HAS(d.events[0].data, "\"sum\":129241",
                          "with its position and code");
                CHECK_HAS(d.events[0].data, "invalid UTF-8 code",
                          "and its error on a bad byte");
            } else {
                fprintf(stderr, "    (%s)\n", err);
            }
            evl_luahost_decision_free(&d);
        }
        {
            evl_luahost_decision d = {0};
            char err[4096];
            evl_luahost_verdict v =
                decide(h, "costly", NULL, 0, command("RepSame", NULL), &d, err,
                       sizeof err);
            CHECK_INT(v, EVL_LUAHOST_ACCEPTED,
                      "string.rep gives what repeated concatenation gives");
            if (v == EVL_LUAHOST_ACCEPTED && d.nevents == 1) {
                CHECK_HAS(d.events[0].data, "\"big\":899999",
                          "for large results too");
                CHECK_HAS(d.events[0].data,
                          "bad argument #2 to 'rep' (number expected, got "
                          "string)",
                          "with Lua's argument errors");
                CHECK_HAS(d.events[0].data,
                          "bad argument #3 to 'rep' (string expected, got "
                          "table)",
                          "for each argument");
            } else {
                fprintf(stderr, "    (%s)\n", err);
            }
            evl_luahost_decision_free(&d);
        }
    }
    evl_luahost_free(h);

    unlink((snprintf(path, sizeof path, "%s/costly.lua", adir), path));
    rmdir(adir);
    rmdir(pdir);
    rmdir(root);
}

/* ---- reload ----------------------------------------------------------- */

static const char agg_v1[] =
    "return { type = 'counter', initial = function() return { n = 0 } end,\n"
    "  apply = { Added = function(s, e) s.n = s.n + e.data.by end },\n"
    "  handle = { Add = function(s, c) return { { type = 'Added', data = { by "
    "= 1 } } } end } }\n";
static const char agg_v2[] =
    "return { type = 'counter', initial = function() return { n = 0 } end,\n"
    "  apply = { Added = function(s, e) s.n = s.n + e.data.by end },\n"
    "  handle = { Add = function(s, c) return { { type = 'Added', data = { by "
    "= 10 } } } end } }\n";
static const char agg_broken[] =
    "return { type = 'counter',\n  initial = function() return {} end end }\n";

static void test_reload(void)
{
    char root[] = "/tmp/evlua-luahost-XXXXXX";
    char adir[256], pdir[256], err[EVL_ERRLEN], log[8192];
    evl_luahost *h = NULL, *h2 = NULL;
    evl_luahost_problems probs = {0};
    evl_luahost_decision d = {0};
    unsigned seen = 0, seen2 = 0;
    char hash1[17];
    set s;

    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp works");
        return;
    }
    evl_log_set_level(EVL_LOG_INFO);
    snprintf(adir, sizeof adir, "%s/aggregates", root);
    snprintf(pdir, sizeof pdir, "%s/projections", root);
    mkdir(adir, 0700);
    mkdir(pdir, 0700);
    write_file(adir, "counter.lua", agg_v1);
    set_init(&s, root, 0, 0);
    s.cfg.lib_dir = NULL;

    capture_begin();
    evl_luahost_new(&s.cfg, &h, NULL, err, sizeof err);
    capture_end(log, sizeof log);
    CHECK(h != NULL, "a one-script set loads");
    if (!h)
        goto out;
    CHECK(strstr(log, "scripts loaded") == NULL,
          "loading logs nothing (the caller reports a load, once)");
    snprintf(hash1, sizeof hash1, "%s", evl_luahost_hash(h));

    CHECK_INT(evl_lifecycle_install_reload(), 0, "the SIGHUP handler installs");
    CHECK(!evl_lifecycle_reload_requested(&seen), "no reload before a signal");
    raise(SIGHUP);
    CHECK(evl_lifecycle_reload_requested(&seen), "SIGHUP requests a reload");
    CHECK(!evl_lifecycle_reload_requested(&seen), "once");
    CHECK(evl_lifecycle_reload_requested(&seen2),
          "and every pipeline sees the request");

    /* a broken script: the old set stays */
    write_file(adir, "counter.lua", agg_broken);
    capture_begin();
    CHECK_INT(evl_luahost_reload(h, &h2, &probs, err, sizeof err),
              EVL_EPERMANENT, "reloading a broken set fails");
    capture_end(log, sizeof log);
    CHECK(h2 == NULL, "and gives no new host");
    CHECK_PROBLEM(&probs, "counter.lua:2:");
    CHECK(strstr(log, "counter.lua:2:") == NULL,
          "a caller that collects the problems reports them itself");
    evl_luahost_problems_free(&probs);
    /* pipelines collect nothing: the first to reload after a SIGHUP logs
     * the summary for all of them, the others stay quiet */
    capture_begin();
    CHECK_INT(evl_luahost_reload(h, &h2, NULL, err, sizeof err), EVL_EPERMANENT,
              "a pipeline's reload of the broken set fails");
    CHECK_INT(evl_luahost_reload(h, &h2, NULL, err, sizeof err), EVL_EPERMANENT,
              "so does the next pipeline's");
    capture_end(log, sizeof log);
    CHECK_HAS(log, "script reload refused; keeping the loaded set",
              "the refused reload is logged");
    CHECK_HAS(log, "counter.lua:2:", "with each problem");
    CHECK(strstr(strstr(log, "counter.lua:2:") + 1, "counter.lua:2:") == NULL,
          "once, not once per pipeline");
    CHECK_INT(decide(h, "counter", NULL, 0, command("Add", NULL), &d, err,
                     sizeof err),
              EVL_LUAHOST_ACCEPTED, "the old set keeps working");
    CHECK_STR(d.state, "{\"n\":1}", "with the old behaviour");

    /* a fixed script: the new set takes over */
    write_file(adir, "counter.lua", agg_v2);
    raise(SIGHUP);
    /* a look at the new set (a pipeline's own copy, the main thread's
     * check for additions) says nothing: the summary line is for a
     * pipeline that switched */
    capture_begin();
    CHECK_INT(evl_luahost_again(h, &h2, NULL, err, sizeof err), EVL_OK,
              "a silent load of the new set succeeds");
    capture_end(log, sizeof log);
    CHECK(strstr(log, "scripts reloaded") == NULL,
          "and logs no summary: no pipeline has switched yet");
    evl_luahost_free(h2);
    h2 = NULL;
    capture_begin();
    CHECK_INT(evl_luahost_reload(h, &h2, NULL, err, sizeof err), EVL_OK,
              "reloading a good set succeeds");
    capture_end(log, sizeof log);
    CHECK(h2 != NULL, "with a new host");
    if (h2) {
        CHECK(strcmp(evl_luahost_hash(h2), hash1) != 0,
              "whose hash differs from the old set's");
        CHECK_HAS(log, "msg=\"scripts reloaded\"", "the reload is logged");
        CHECK_HAS(log, evl_luahost_hash(h2), "with the new hash");
        evl_luahost_free(h);
        h = h2;
        CHECK_INT(decide(h, "counter", NULL, 0, command("Add", NULL), &d, err,
                         sizeof err),
                  EVL_LUAHOST_ACCEPTED, "the new set runs");
        CHECK_STR(d.state, "{\"n\":10}", "with the new behaviour");
    }

out:
    evl_luahost_decision_free(&d);
    evl_luahost_free(h);
    unlink((snprintf(log, sizeof log, "%s/counter.lua", adir), log));
    rmdir(adir);
    rmdir(pdir);
    rmdir(root);
    evl_log_set_level(EVL_LOG_WARN);
}

/* ---- the evlua table -------------------------------------------------- */

static void test_api(void)
{
    char prev[37] = "", id[37], ts[25], err[4096], out[8192];
    int increasing = 1, shaped = 1;
    evl_luahost *h;
    evl_luahost_decision d = {0};

    for (int i = 0; i < 5000; i++) {
        if (evl_luaapi_uuid7(id) != 0) {
            shaped = 0;
            break;
        }
        if (strlen(id) != 36 || id[8] != '-' || id[13] != '-' ||
            id[14] != '7' || id[18] != '-' || !strchr("89ab", id[19]) ||
            id[23] != '-')
            shaped = 0;
        if (strcmp(prev, id) >= 0)
            increasing = 0;
        memcpy(prev, id, sizeof id);
    }
    CHECK(shaped, "evl_luaapi_uuid7 gives version-7, variant-10 UUIDs");
    CHECK(increasing, "UUIDv7s from one process are strictly increasing");

    evl_luaapi_now(ts);
    CHECK_INT(strlen(ts), 24, "now() is 24 characters");
    CHECK(ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z',
          "now() is RFC 3339 UTC with milliseconds");

    h = load("good", 0, 0, NULL, err, sizeof err);
    if (!h) {
        CHECK(0, "the good set loads for evlua.log");
        return;
    }
    capture_begin();
    decide(h, "customer", NULL, 0, command("Log", "{\"who\":\"me too\"}"), &d,
           err, sizeof err);
    capture_end(out, sizeof out);
    CHECK_HAS(out, "level=warn msg=\"customer says hello\" script=",
              "evlua.log writes a line at its level");
    CHECK_HAS(out,
              "good/aggregates/customer.lua n=3 t=\"{\\\"a\\\":1}\" "
              "who=\"me too\"",
              "naming the script, with the fields in key order");
    CHECK_HAS(out, "level=info msg=\"printed\\t42\" script=",
              "print writes a log line too");
    evl_luahost_decision_free(&d);
    evl_luahost_free(h);
}

/* A command parsed once in the host is what the next decide runs on. */
static void test_parse_command(void)
{
    char err[4096];
    evl_luahost *h = load("good", 0, 0, NULL, err, sizeof err);
    evl_luahost *small;
    evl_luahost_decision d = {0};
    evl_luahost_command c;
    evl_command cmd = {0};
    const char *text;

    if (!h) {
        CHECK(0, "the good set loads for parse_command");
        return;
    }
    text = command("RegisterCustomer", "{\"name\":\"Ada\"}");
    CHECK_INT(
        evl_luahost_parse_command(h, text, strlen(text), &cmd, err, sizeof err),
        EVL_LUAHOST_ACCEPTED, "a valid command parses");
    CHECK_STR(cmd.id, "cmd-1", "parse reads the id");
    CHECK_STR(cmd.aggregate_id, "id-7", "and the aggregate id");
    CHECK_STR(cmd.user_id, "u-1", "and the metadata");

    memset(&c, 0, sizeof c);
    c.aggregate_type = "customer";
    c.aggregate_id = cmd.aggregate_id;
    CHECK_INT(evl_luahost_decide(h, &c, &d, err, sizeof err),
              EVL_LUAHOST_ACCEPTED, "decide runs on the parsed command");
    CHECK_INT(d.nevents, 2, "with the handler of its type");
    CHECK_INT(evl_luahost_decide(h, &c, &d, err, sizeof err),
              EVL_LUAHOST_FAILED, "a second decide finds no parsed command");
    CHECK_HAS(err, "no parsed command", "and says so");

    text = "{\"id\":\"x-1\",\"type\":\"T\",\"data\":{}}";
    CHECK_INT(
        evl_luahost_parse_command(h, text, strlen(text), &cmd, err, sizeof err),
        EVL_LUAHOST_REJECTED, "a command without aggregate_id is invalid");
    CHECK_HAS(err, "no aggregate_id", "the reason is the envelope's");
    CHECK_STR(cmd.id, "x-1", "the id is still read");
    CHECK_INT(evl_luahost_parse_command(h, "{", 1, &cmd, err, sizeof err),
              EVL_LUAHOST_REJECTED, "malformed JSON is invalid");
    CHECK_HAS(err, "malformed JSON", "and named so");
    CHECK(cmd.id == NULL, "with no id");
    evl_luahost_free(h);

    /* a command whose decoded form exceeds the host's memory limit */
    small = load("good", (size_t)1 << 20, 0, NULL, err, sizeof err);
    if (small) {
        evl_buf big = {0};
        evl_buf_puts(&big, "{\"id\":\"b-1\",\"type\":\"T\","
                           "\"aggregate_id\":\"a\",\"data\":{\"x\":[[]");
        for (int i = 0; i < 100000; i++)
            evl_buf_puts(&big, ",[]");
        evl_buf_puts(&big, "]}}");
        CHECK_INT(evl_luahost_parse_command(small, big.data, big.len, &cmd, err,
                                            sizeof err),
                  EVL_LUAHOST_FAILED, "a command over the memory limit fails");
        CHECK_HAS(err, "memory limit", "naming the limit");
        CHECK(cmd.id == NULL, "and no field points anywhere");
        evl_buf_free(&big);
        evl_luahost_free(small);
    } else {
        CHECK(0, "the good set loads with 1 MiB");
    }
    evl_luahost_decision_free(&d);
    evl_envelope_command_free(&cmd);
}

/* ---- script traps (issue 15, items 11, 12, 15) ------------------------ */

static const char *traps_event(const char *type, const char *data)
{
    static char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"id\":\"e-1\",\"type\":\"%s\",\"version\":1,"
             "\"aggregate_type\":\"account\",\"aggregate_id\":\"id-7\","
             "\"sequence\":3,\"data\":%s}",
             type, data);
    return buf;
}

/* Item 11 at run time: an emitted event type with neither an apply entry
 * nor a neutral declaration fails the command; replaying such recorded
 * events leaves the state as it is. */
static void test_traps_unapplied(void)
{
    char err[4096];
    evl_luahost_decision d = {0};
    evl_luahost_verdict v;
    evl_luahost *h = load("traps_typo", 0, 0, NULL, err, sizeof err);
    CHECK(h != NULL, "a script with an apply typo still loads");
    if (!h) {
        fprintf(stderr, "    %s\n", err);
        return;
    }
    v = decide(h, "account", "{\"balance\":10}", 2,
               command("Withdraw", "{\"amount\":4}"), &d, err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_FAILED,
              "emitting an event type apply lacks fails the command");
    CHECK_HAS(err,
              "traps_typo/aggregates/account.lua: handle.Withdraw: event "
              "type 'MoneyWithdrawn' has no apply entry (add one, or list "
              "it in neutral = {...} if it changes no state)",
              "naming the script, the handler and the event type");
    CHECK_INT(d.nevents, 0, "and emitting nothing");
    v = decide(h, "account", "{\"balance\":10}", 2,
               command("Deposit", "{\"amount\":4}"), &d, err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "an applied event type is accepted");
    if (v == EVL_LUAHOST_ACCEPTED)
        CHECK_STR(d.state, "{\"balance\":14}", "and applied");
    {
        const char *evs[1];
        size_t lens[1];
        evl_buf out = {0};
        evs[0] = traps_event("MoneyWithdrawn", "{\"amount\":4}");
        lens[0] = strlen(evs[0]);
        CHECK_INT(evl_luahost_apply(h, "account", "{\"balance\":10}", 14, evs,
                                    lens, 1, &out, err, sizeof err),
                  EVL_OK, "a recorded event of such a type still replays");
        CHECK_STR(out.data, "{\"balance\":10}", "leaving the state as it is");
        evl_buf_free(&out);
    }
    evl_luahost_free(h);

    h = load("traps_clean", 0, 0, NULL, err, sizeof err);
    CHECK(h != NULL, "the correct account loads");
    if (!h) {
        fprintf(stderr, "    %s\n", err);
        return;
    }
    v = decide(h, "account", "{\"balance\":10}", 2,
               command("RequestStatement", NULL), &d, err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED,
              "an event type declared neutral needs no apply entry");
    if (v == EVL_LUAHOST_ACCEPTED) {
        CHECK_INT(d.nevents, 1, "it is emitted");
        CHECK_STR(d.state, "{\"balance\":10}", "and changes no state");
    } else {
        fprintf(stderr, "    (%s)\n", err);
    }
    v = decide(h, "account", "{\"balance\":10}", 2, command("Close", NULL), &d,
               err, sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "an event type built at run time");
    if (v == EVL_LUAHOST_ACCEPTED)
        CHECK_HAS(d.state, "\"closed\":true", "is applied");
    evl_luahost_decision_free(&d);
    evl_luahost_free(h);
}

static void expect_state_change(evl_luahost *h, const char *state,
                                const char *handler, const char *field)
{
    evl_luahost_decision d = {0};
    char err[4096], want[256];
    evl_luahost_verdict v = decide(h, "account", state, 3,
                                   command(handler, NULL), &d, err, sizeof err);
    snprintf(want, sizeof want,
             "handle.%s must not change the state (emit an event instead): "
             "field '%s'",
             handler, field);
    check_count_++;
    if (v != EVL_LUAHOST_FAILED || !strstr(err, want))
        CHECK_FAIL_("handle.%s changes its state: expected FAILED with "
                    "\"%s\", got verdict %d and \"%s\" (state %s)",
                    handler, want, (int)v, err, d.state ? d.state : "-");
    CHECK_INT(d.nevents, 0, "a command that changed its state emits nothing");
    evl_luahost_decision_free(&d);
}

/* Item 12: handle changing the state it is given is a bug that fails the
 * command; reading, iterating and copying it is fine. */
static void test_traps_state_change(void)
{
    static const char state[] =
        "{\"balance\":10,\"limits\":{\"daily\":500},\"log\":[]}";
    char err[4096];
    evl_luahost_decision d = {0};
    evl_luahost_verdict v;
    evl_luahost *h = load("traps_clean", 0, 0, NULL, err, sizeof err);
    if (!h) {
        CHECK(0, "the correct account loads");
        return;
    }
    expect_state_change(h, state, "Cheat", "balance");
    expect_state_change(h, NULL, "Cheat", "balance");
    expect_state_change(h, state, "CheatDeep", "limits.daily");
    expect_state_change(h, state, "CheatAdd", "log[1]");
    expect_state_change(h, state, "CheatRemove", "limits");
    expect_state_change(h, state, "CheatCycle", "self");

    v = decide(h, "account", state, 3, command("Inspect", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED,
              "a handler that reads and copies its state is accepted");
    if (v == EVL_LUAHOST_ACCEPTED) {
        CHECK_HAS(d.events[0].data, "\"keys\":\"balance,limits,log\"",
                  "pairs() sees the state");
        CHECK_HAS(d.events[0].data, "\"limits\":{\"daily\":500}",
                  "a part of the state can go into an event");
        CHECK_HAS(d.events[0].data, "\"next\":11", "a copy may change");
    } else {
        fprintf(stderr, "    (%s)\n", err);
    }
    v = decide(h, "account", NULL, 0, command("Inspect", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "the same from initial()");

    /* initial() gives another id each call: handle and apply must still
     * start from the same state */
    v = decide(h, "stamp", NULL, 0, command("Stamp", NULL), &d, err,
               sizeof err);
    CHECK_INT(v, EVL_LUAHOST_ACCEPTED, "a changing initial() is no change");
    if (v == EVL_LUAHOST_ACCEPTED)
        CHECK_HAS(d.state, "\"seen\":true",
                  "handle and apply start from one initial state");
    else
        fprintf(stderr, "    (%s)\n", err);
    evl_luahost_decision_free(&d);
    evl_luahost_free(h);
}

/* Items 11 and 15 in evlua check: what load cannot refuse, lint reports
 * with file:line. */
static int lint_has(const evl_luahost_problems *p, const char *want)
{
    check_count_++;
    if (has_problem(p, want))
        return 1;
    CHECK_FAIL_("expected a lint line containing \"%s\"; got:", want);
    for (size_t i = 0; i < p->n; i++)
        fprintf(stderr, "    %s\n", p->lines[i]);
    return 0;
}

static void lint_set(const char *name, size_t *nerr, evl_luahost_problems *e,
                     evl_luahost_problems *w)
{
    char err[4096];
    evl_luahost *h = load(name, 0, 0, NULL, err, sizeof err);
    *nerr = 99;
    if (!h) {
        CHECK_FAIL_("%s loads: %s", name, err);
        return;
    }
    *nerr = evl_luahost_lint(h, e, w);
    evl_luahost_free(h);
}

static void test_traps_lint(void)
{
    evl_luahost_problems e = {0}, w = {0};
    size_t nerr;

    lint_set("traps_typo", &nerr, &e, &w);
    CHECK_INT(nerr, 1, "an emitted type apply lacks is one error");
    CHECK_INT(e.n, 1, "reported once");
    lint_has(&e, "traps_typo/aggregates/account.lua:18: event type "
                 "'MoneyWithdrawn' can be emitted by handle but has no apply "
                 "entry (add one, or list it in neutral = {...} if it "
                 "changes no state); did you mean 'MoneyWithdrawnn'?");
    CHECK_INT(w.n, 1, "the unused apply key is one warning");
    lint_has(&w, "traps_typo/aggregates/account.lua:9: warning: "
                 "apply.MoneyWithdrawnn: no handler emits this event type");
    evl_luahost_problems_free(&e);
    evl_luahost_problems_free(&w);

    lint_set("traps_warn", &nerr, &e, &w);
    CHECK_INT(nerr, 0, "warnings are no errors");
    CHECK_INT(w.n, 3, "three warnings");
    lint_has(&w, "traps_warn/aggregates/account.lua:10: warning: "
                 "apply.AccountFrozen: no handler emits this event type");
    lint_has(&w, "traps_warn/aggregates/account.lua:7: warning: neutral "
                 "lists 'MoneyDeposited', which has an apply entry");
    lint_has(&w, "traps_warn/projections/balances.lua:8: warning: "
                 "on.MoneyDeposted: no aggregate of this script set emits "
                 "this event type; did you mean 'MoneyDeposited'? (fine if "
                 "an aggregate outside this set does)");
    evl_luahost_problems_free(&e);
    evl_luahost_problems_free(&w);

    /* comments, long strings, a data field named type, an event built by
     * a helper (declared in emits), an upcaster's result: none of it
     * misleads the scan */
    lint_set("traps_clean", &nerr, &e, &w);
    CHECK_INT(nerr, 0, "a correct set has no errors");
    CHECK_INT(w.n, 0, "and no warnings");
    for (size_t i = 0; i < e.n + w.n; i++)
        fprintf(stderr, "    %s\n", i < e.n ? e.lines[i] : w.lines[i - e.n]);
    evl_luahost_problems_free(&e);
    evl_luahost_problems_free(&w);

    lint_set("good", &nerr, &e, &w);
    CHECK_INT(nerr, 0, "the good set has no errors");
    evl_luahost_problems_free(&e);
    evl_luahost_problems_free(&w);

    {
        /* projections alone: their events come from elsewhere */
        char root[] = "/tmp/evlua-traps-XXXXXX", dir[1200], err[4096];
        set s;
        evl_luahost *h = NULL;
        if (!mkdtemp(root)) {
            CHECK(0, "mkdtemp");
            return;
        }
        snprintf(dir, sizeof dir, "%s/aggregates", root);
        mkdir(dir, 0700);
        snprintf(dir, sizeof dir, "%s/projections", root);
        mkdir(dir, 0700);
        write_file(dir, "p.lua",
                   "return { name = 'p', on = { Anything = function(e) end } "
                   "}\n");
        set_init(&s, root, 0, 0);
        CHECK_INT(evl_luahost_new(&s.cfg, &h, NULL, err, sizeof err), EVL_OK,
                  "a projection-only set loads");
        if (h) {
            CHECK_INT(evl_luahost_lint(h, &e, &w), 0, "lint: no errors");
            CHECK_INT(w.n, 0, "and no warning without aggregates to compare");
        }
        evl_luahost_free(h);
        evl_luahost_problems_free(&e);
        evl_luahost_problems_free(&w);
        unlink(strcat(strcpy(err, dir), "/p.lua"));
        rmdir(dir);
        snprintf(dir, sizeof dir, "%s/aggregates", root);
        rmdir(dir);
        rmdir(root);
    }
}

/* neutral and emits must be lists of names */
static void test_traps_declarations(void)
{
    char root[] = "/tmp/evlua-decl-XXXXXX", adir[1200], pdir[1200], err[4096];
    evl_luahost_problems probs = {0};
    evl_luahost *h = NULL;
    set s;
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp");
        return;
    }
    snprintf(adir, sizeof adir, "%s/aggregates", root);
    snprintf(pdir, sizeof pdir, "%s/projections", root);
    mkdir(adir, 0700);
    mkdir(pdir, 0700);
    write_file(adir, "a.lua",
               "return { type = 'a', initial = function() return {} end,\n"
               "  apply = {}, handle = {}, neutral = 'X', emits = { 1 } }\n");
    write_file(adir, "b.lua",
               "return { type = 'b', initial = function() return {} end,\n"
               "  apply = {}, handle = {}, neutral = { X = true },\n"
               "  emits = { '' } }\n");
    set_init(&s, root, 0, 0);
    CHECK(evl_luahost_new(&s.cfg, &h, &probs, err, sizeof err) != EVL_OK,
          "bad neutral or emits declarations do not load");
    CHECK_PROBLEM(&probs, "a.lua: neutral is a string, expected a list of "
                          "event type names");
    CHECK_PROBLEM(&probs, "a.lua: emits[1] is a number, expected an event "
                          "type name");
    CHECK_PROBLEM(&probs, "b.lua: neutral is a table that is not a list");
    CHECK_PROBLEM(&probs, "b.lua: emits[1] is an empty string");
    evl_luahost_free(h);
    evl_luahost_problems_free(&probs);
    write_file(adir, "b.lua",
               "return { type = 'b', initial = function() return {} end,\n"
               "  apply = {}, handle = {}, neutral = { 'Y', 'X', 'Y' } }\n");
    unlink(strcat(strcpy(err, adir), "/a.lua"));
    h = NULL;
    CHECK_INT(evl_luahost_new(&s.cfg, &h, NULL, err, sizeof err), EVL_OK,
              "a good neutral list loads");
    if (h) {
        const evl_luahost_aggregate *a = evl_luahost_aggregate_get(h, "b");
        CHECK(a && a->nneutral == 2 && strcmp(a->neutral[0], "X") == 0 &&
                  strcmp(a->neutral[1], "Y") == 0,
              "neutral is listed sorted, each name once");
    }
    evl_luahost_free(h);
    unlink(strcat(strcpy(err, adir), "/b.lua"));
    rmdir(adir);
    rmdir(pdir);
    rmdir(root);
}

int main(int argc, char **argv)
{
    const char *src = getenv("EVLUA_SOURCE_DIR");
    if (argc > 1)
        snprintf(fixtures, sizeof fixtures, "%s", argv[1]);
    else if (src)
        snprintf(fixtures, sizeof fixtures, "%s/tests/fixtures", src);
    else
        snprintf(fixtures, sizeof fixtures, "%s", EVLUA_FIXTURES_DIR);
    evl_log_set_level(EVL_LOG_WARN);

    test_good_set();
    test_decide();
    test_parse_command();
    test_project();
    test_broken_set();
    test_hostile();
    test_time_limit();
    test_sandbox_costs();
    test_reload();
    test_traps_unapplied();
    test_traps_state_change();
    test_traps_lint();
    test_traps_declarations();
    evl_log_set_level(EVL_LOG_INFO);
    test_api();
    return check_done();
}
