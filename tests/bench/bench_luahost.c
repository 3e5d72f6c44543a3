/*
 * bench_luahost.c - handler calls per second through the Lua host, against
 * the same JSON work without the Lua call, in one run.
 *
 *   bench_luahost [N] [SCRIPTS_ROOT]
 *
 * projection: decode a ~300-byte event envelope, run customer_profile's
 *             handler, extract and validate its statement
 *             (evl_luahost_project), vs. JSON only: decode the same event
 *             into a Lua state.
 * aggregate:  UpdateCustomerProfile on a registered customer: decode state
 *             and command, handle, validate and encode 2 events, apply
 *             them, encode the new state (evl_luahost_decide), vs. JSON
 *             only: decode state and command, encode 2 event data objects
 *             and the state.
 * Prints a table; figures are per second on one core (one thread).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "json.h"
#include "log.h"
#include "luahost.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char event[] =
    "{\"id\":\"0193a4f2-7c3e-7d41-9a2b-5e8f3c1d2a4b\","
    "\"type\":\"CustomerAddressChanged\",\"version\":1,"
    "\"aggregate_type\":\"customer\",\"aggregate_id\":\"customer-000123\","
    "\"sequence\":7,\"occurred_at\":\"2026-11-28T17:55:11.123Z\","
    "\"causation_id\":\"0193a4f2-7c3e-7d41-9a2b-5e8f3c1d2a00\","
    "\"correlation_id\":\"0193a4f2-7c3e-7d41-9a2b-5e8f3c1d2a00\","
    "\"user_id\":\"user-42\",\"data\":{\"newAddress\":\"12 Harbour Road, "
    "Springfield\",\"previousAddress\":\"3 Elm St\"}}";

static const char state[] =
    "{\"address\":\"3 Elm St\",\"email\":\"ann@example.com\","
    "\"name\":\"Ann\",\"registered\":true}";

static const char command[] =
    "{\"id\":\"0193a4f2-7c3e-7d41-9a2b-5e8f3c1d2a00\","
    "\"type\":\"UpdateCustomerProfile\",\"aggregate_type\":\"customer\","
    "\"aggregate_id\":\"customer-000123\",\"data\":{\"name\":\"Ann Smith\","
    "\"address\":\"12 Harbour Road, Springfield\"},"
    "\"metadata\":{\"user_id\":\"user-42\"}}";

static void die(const char *what, const char *err)
{
    fprintf(stderr, "bench_luahost: %s: %s\n", what, err);
    exit(1);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    const char *root = argc > 2 ? argv[2] : ".";
    char agg[4096], proj[4096], err[EVL_ERRLEN];
    snprintf(agg, sizeof agg, "%s/aggregates", root);
    snprintf(proj, sizeof proj, "%s/projections", root);
    const char *aggs[] = {agg}, *projs[] = {proj};
    evl_luahost_config hc = {.aggregate_dirs = aggs,
                             .naggregate_dirs = 1,
                             .projection_dirs = projs,
                             .nprojection_dirs = 1};
    evl_luahost *host = NULL;
    evl_log_set_level(EVL_LOG_WARN);
    if (evl_luahost_new(&hc, &host, NULL, err, sizeof err) != EVL_OK)
        die("loading scripts", err);

    /* projection through the host */
    evl_luahost_stmts stmts = {0};
    size_t nstmts = 0;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        if (evl_luahost_project(host, "customer_profile", event,
                                sizeof event - 1, &stmts, err,
                                sizeof err) != EVL_OK)
            die("project", err);
        nstmts += stmts.n;
    }
    double t_proj = now() - t0;
    if (nstmts != (size_t)n)
        die("project", "expected one statement per event");

    /* JSON only: decode the same event */
    lua_State *L = luaL_newstate();
    t0 = now();
    for (long i = 0; i < n; i++) {
        if (evl_json_decode(L, event, sizeof event - 1, err, sizeof err))
            die("decode", err);
        lua_pop(L, 1);
    }
    double t_proj_json = now() - t0;

    /* aggregate through the host */
    evl_luahost_decision dec = {0};
    evl_luahost_command cmd = {.aggregate_type = "customer",
                               .aggregate_id = "customer-000123",
                               .version = 6,
                               .state = state,
                               .state_len = sizeof state - 1,
                               .command = command,
                               .command_len = sizeof command - 1};
    size_t nevents = 0;
    long na = n / 2;
    t0 = now();
    for (long i = 0; i < na; i++) {
        if (evl_luahost_decide(host, &cmd, &dec, err, sizeof err) !=
            EVL_LUAHOST_ACCEPTED)
            die("decide", err);
        nevents += dec.nevents;
    }
    double t_agg = now() - t0;
    if (nevents != (size_t)na * 2)
        die("decide", "expected two events per command");

    /* JSON only: decode state + command, encode 2 data objects + state */
    evl_buf out = {0};
    t0 = now();
    for (long i = 0; i < na; i++) {
        out.len = 0;
        if (evl_json_decode(L, state, sizeof state - 1, err, sizeof err) ||
            evl_json_decode(L, command, sizeof command - 1, err, sizeof err))
            die("decode", err);
        lua_getfield(L, -1, "data");
        if (evl_json_encode(L, -1, &out, err, sizeof err) ||
            evl_json_encode(L, -1, &out, err, sizeof err) ||
            evl_json_encode(L, -3, &out, err, sizeof err))
            die("encode", err);
        lua_pop(L, 3);
    }
    double t_agg_json = now() - t0;

    double proj_rate = (double)n / t_proj, proj_json = (double)n / t_proj_json;
    double agg_rate = (double)na / t_agg, agg_json = (double)na / t_agg_json;
    printf("Lua host benchmark: %ld projection events, %ld commands, one "
           "thread\n\n",
           n, na);
    printf("| work | through the host (/s) | JSON only (/s) | host / JSON "
           "|\n|---|---|---|---|\n");
    printf("| projection event (%zu-byte envelope -> 1 statement) | %.0f | "
           "%.0f | %.2f |\n",
           sizeof event - 1, proj_rate, proj_json, proj_rate / proj_json);
    printf("| aggregate command (handle + apply, 2 events) | %.0f | %.0f | "
           "%.2f |\n",
           agg_rate, agg_json, agg_rate / agg_json);
    printf("\nhost memory after the run: %zu bytes\n",
           evl_luahost_memory(host));

    evl_buf_free(&out);
    lua_close(L);
    evl_luahost_stmts_free(&stmts);
    evl_luahost_decision_free(&dec);
    evl_luahost_free(host);
    return 0;
}
