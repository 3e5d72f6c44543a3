/*
 * reload_driver.c - a process running the Lua host the way a pipeline
 * does, for tests/integration/reload_test.sh: between "batches" (every
 * 20 ms) it checks for SIGHUP, reloads all-or-nothing, and prints what the
 * current script set answers to the command Probe of aggregate "probe":
 *
 *   answer=<data.answer of the event> hash=<set hash>
 *
 * once at start and after every reload attempt (successful or not).
 * With a second argument N, N - 1 more "pipelines" (threads, each with
 * its own host) reload on the same SIGHUPs, silently, as evlua run's
 * pipelines do. Exits 0 on SIGTERM.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lifecycle.h"
#include "log.h"
#include "luahost.h"

static void report(evl_luahost *host)
{
    static const char cmd[] = "{\"id\":\"c1\",\"type\":\"Probe\",\"data\":{}}";
    evl_luahost_command c = {.aggregate_type = "probe",
                             .aggregate_id = "p1",
                             .command = cmd,
                             .command_len = sizeof cmd - 1};
    evl_luahost_decision d = {0};
    char err[EVL_ERRLEN];
    if (evl_luahost_decide(host, &c, &d, err, sizeof err) ==
            EVL_LUAHOST_ACCEPTED &&
        d.nevents == 1)
        printf("answer=%s hash=%s\n", d.events[0].data, evl_luahost_hash(host));
    else
        printf("answer=ERROR(%s) hash=%s\n", err, evl_luahost_hash(host));
    fflush(stdout);
    evl_luahost_decision_free(&d);
}

/* Another pipeline: its own host, reloaded on every SIGHUP. */
static void *pipeline(void *arg)
{
    char err[EVL_ERRLEN];
    evl_luahost *host = NULL;
    unsigned seen = 0;
    if (evl_luahost_reload(arg, &host, NULL, err, sizeof err) != EVL_OK)
        return NULL;
    evl_lifecycle_reload_requested(&seen);
    while (!evl_lifecycle_stopping()) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        evl_luahost *fresh = NULL;
        if (evl_lifecycle_reload_requested(&seen) &&
            evl_luahost_reload(host, &fresh, NULL, err, sizeof err) == EVL_OK) {
            evl_luahost_free(host);
            host = fresh;
        }
    }
    evl_luahost_free(host);
    return NULL;
}

int main(int argc, char **argv)
{
    char agg[4096], proj[4096], err[EVL_ERRLEN];
    pthread_t threads[16];
    int npipes = argc == 3 ? atoi(argv[2]) : 1;
    if (argc < 2 || argc > 3 || npipes < 1 || npipes > 16) {
        fprintf(stderr, "usage: reload_driver SCRIPTS_DIR [PIPELINES]\n");
        return 2;
    }
    snprintf(agg, sizeof agg, "%s/aggregates", argv[1]);
    snprintf(proj, sizeof proj, "%s/projections", argv[1]);
    const char *aggs[] = {agg}, *projs[] = {proj};
    evl_luahost_config hc = {.aggregate_dirs = aggs,
                             .naggregate_dirs = 1,
                             .projection_dirs = projs,
                             .nprojection_dirs = 1};
    evl_luahost *host = NULL;
    if (evl_luahost_new(&hc, &host, NULL, err, sizeof err) != EVL_OK) {
        fprintf(stderr, "reload_driver: %s\n", err);
        return 2;
    }
    evl_lifecycle_install();
    evl_lifecycle_install_reload();
    for (int i = 1; i < npipes; i++)
        pthread_create(&threads[i], NULL, pipeline, host);
    unsigned seen = 0;
    report(host);
    while (!evl_lifecycle_stopping()) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (!evl_lifecycle_reload_requested(&seen))
            continue;
        evl_luahost *fresh = NULL;
        if (evl_luahost_reload(host, &fresh, NULL, err, sizeof err) == EVL_OK) {
            evl_luahost_free(host);
            host = fresh;
        }
        report(host);
    }
    for (int i = 1; i < npipes; i++)
        pthread_join(threads[i], NULL);
    evl_luahost_free(host);
    return 0;
}
