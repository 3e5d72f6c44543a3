/*
 * cli_run.c - `evlua run`: the long-running service.
 *
 * Loads the config and the script set once (a broken set is a
 * configuration error: exit 2 before touching Kafka), then starts one
 * thread per pipeline: the command processor (when aggregates are loaded
 * and commands.enabled), one projector per projection (when a database
 * is configured and projection.enabled) and one reactor per aggregate type
 * with a react table (when reactions.enabled; reactor.h). Each pipeline builds
 * its own host from the loaded one (evl_luahost_reload), so no lua_State is
 * ever shared between threads, and watches SIGHUP and the stop flag at its
 * batch boundaries. The exit code is the worst of the pipelines'.
 * Beside them, when metrics.listen is set, runs the lag thread (lag.h),
 * which watches the group of each pipeline started, whatever the
 * partitions this process holds.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "cli.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"
#include "cmdproc.h"
#include "lag.h"
#include "projector.h"
#include "reactor.h"

static const char run_usage[] =
    "usage: evlua run [-c CONFIG] [--scripts DIR]\n"
    "\n"
    "Run the configured pipelines until SIGTERM or SIGINT:\n"
    "  - the command processor: commands topics -> aggregates -> events,\n"
    "    state snapshots and results, one Kafka transaction per batch;\n"
    "  - one projector per projection (projection.threads of them): events\n"
    "    -> SQL in PostgreSQL, with checkpoints and offsets in the same DB\n"
    "    transaction;\n"
    "  - one reactor per aggregate type with a react table: the source\n"
    "    events it names -> its reactions -> commands to its commands\n"
    "    topic, one Kafka transaction per batch; a failing reaction parks\n"
    "    its source aggregate (see `evlua parked --help`).\n"
    "SIGHUP reloads every script (all or nothing) between batches.\n"
    "\n"
    "  -c, --config FILE   config file (see docs/config.md)\n"
    "  --scripts DIR       use DIR/aggregates, DIR/projections (and DIR/lib)\n"
    "\n"
    "Exit 0 after a clean stop, 1 on a runtime failure (e.g. fenced by\n"
    "another instance), 2 on a usage, config or script error.\n";

typedef struct pipeline {
    pthread_t thread;
    const char *kind;
    const char *name; /* projection name, reacting type, or NULL */
    const evl_config *cfg;
    const evl_luahost *proto;
    int rc;
    int done; /* set (atomically) when the pipeline returned */
} pipeline;

static void *pipeline_main(void *arg)
{
    pipeline *p = arg;
    if (strcmp(p->kind, "commands") == 0)
        evl_thread_name("evl:commands", NULL);
    else
        evl_thread_name(
            strcmp(p->kind, "projection") == 0 ? "evl:p:" : "evl:r:", p->name);
    if (strcmp(p->kind, "commands") == 0)
        p->rc = evl_cmdproc_run(p->cfg, p->proto);
    if (strcmp(p->kind, "projection") == 0)
        p->rc = evl_projector_run(p->cfg, p->proto, p->name);
    if (strcmp(p->kind, "reactions") == 0)
        p->rc = evl_reactor_run(p->cfg, p->proto, p->name);
    if (p->rc != 0)
        evl_lifecycle_request_stop(); /* one pipeline down: drain all */
    __atomic_store_n(&p->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait until every pipeline returned. Once a stop is requested they have
 * shutdown_timeout_ms to drain; a pipeline stuck past that (a broker or
 * database that does not answer) ends the process with exit code 1. What
 * was not committed is processed again after the restart: the open Kafka
 * transaction is aborted by the next instance's init_transactions (or its
 * timeout), an open DB transaction rolls back with the connection. */
static void wait_pipelines(pipeline *ps, size_t n, int timeout_ms)
{
    double stop_at = 0;
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += (size_t)__atomic_load_n(&ps[i].done, __ATOMIC_ACQUIRE);
        if (done == n)
            return;
        if (evl_lifecycle_stopping()) {
            if (stop_at == 0)
                stop_at = mono_s();
            else if (mono_s() - stop_at > timeout_ms / 1000.0) {
                char t[24];
                snprintf(t, sizeof t, "%d", timeout_ms);
                for (size_t i = 0; i < n; i++)
                    if (!__atomic_load_n(&ps[i].done, __ATOMIC_ACQUIRE))
                        evl_log(EVL_LOG_ERROR,
                                "shutdown deadline passed with this pipeline "
                                "still draining; exiting without it (its "
                                "uncommitted batch is processed again after "
                                "a restart)",
                                "pipeline", ps[i].kind, "name", ps[i].name,
                                "shutdown_timeout_ms", t, NULL);
                fflush(NULL);
                _exit(EVL_EXIT_FAILURE);
            }
        }
        usleep(20000);
    }
}

/* The lag thread for the n pipelines of ps: the commands group over the
 * commands topic of every aggregate type, each projection's group over
 * its topics. A failure to start it is logged; the pipelines run
 * without it. */
static evl_lag *start_lag(const evl_config *cfg, const evl_luahost *proto,
                          const pipeline *ps, size_t n)
{
    char err[EVL_ERRLEN], group[256];
    evl_lag *lag = evl_lag_new(cfg);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ps[i].kind, "commands") == 0) {
            size_t nt = evl_luahost_naggregates(proto);
            char **topics = evl_xmalloc(sizeof(char *) * (nt ? nt : 1));
            for (size_t t = 0; t < nt; t++) {
                char buf[512];
                evl_config_topic(cfg->cmd.commands_topic,
                                 evl_luahost_aggregate_at(proto, t)->type, buf,
                                 sizeof buf);
                topics[t] = evl_xstrdup(buf);
            }
            evl_lag_watch(lag, cfg->cmd.group_id, NULL,
                          (const char *const *)topics, nt);
            for (size_t t = 0; t < nt; t++)
                free(topics[t]);
            free(topics);
        } else if (strcmp(ps[i].kind, "reactions") == 0) {
            evl_strlist topics = {0};
            evl_reactor_group(cfg, ps[i].name, group, sizeof group);
            evl_reactor_topics(cfg, proto, ps[i].name, &topics);
            evl_lag_watch(lag, group, NULL, (const char *const *)topics.v,
                          (size_t)topics.n);
            evl_reactor_topics_free(&topics);
        } else {
            evl_strlist topics = {0};
            evl_projector_group(cfg, ps[i].name, group, sizeof group);
            evl_projector_topics(cfg, proto, ps[i].name, &topics);
            evl_lag_watch(lag, group, ps[i].name, (const char *const *)topics.v,
                          (size_t)topics.n);
            evl_projector_topics_free(&topics);
        }
    }
    if (evl_lag_start(lag, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_WARN, "lag thread not started: no lag metrics",
                "reason", err, NULL);
        evl_lag_free(lag);
        return NULL;
    }
    return lag;
}

/* Start the metrics endpoint when configured, and publish evlua_build_info.
 * Returns EVL_EXIT_OK or EVL_EXIT_USAGE (the address cannot be served). */
int evl_cli_serve_metrics(const evl_config *cfg, const char *name)
{
    if (cfg->metrics.listen) {
        char err[EVL_ERRLEN], port[16];
        int bound = 0;
        if (evl_metrics_serve(cfg->metrics.listen, &bound, err, sizeof err) !=
            EVL_OK) {
            fprintf(stderr, "evlua %s: %s\n", name, err);
            return EVL_EXIT_USAGE;
        }
        snprintf(port, sizeof port, "%d", bound);
        evl_log(EVL_LOG_INFO, "metrics endpoint listening", "listen",
                cfg->metrics.listen, "port", port, NULL);
    }
    char labels[128];
    evl_metrics_labels(labels, sizeof labels, "version", EVLUA_VERSION, NULL);
    evl_metric_set(evl_metrics_gauge("evlua_build_info",
                                     "evlua's version (value 1)", labels),
                   1);
    return EVL_EXIT_OK;
}

int evl_cli_run(int argc, char **argv)
{
    const char *config, *scripts;
    int rc =
        evl_cli_script_opts(argc, argv, "run", run_usage, &config, &scripts);
    if (rc >= 0)
        return rc;

    evl_config cfg;
    if ((rc = evl_cli_load_config(config, &cfg)))
        return rc;
    evl_luahost_config hc;
    evl_luahost *proto = NULL;
    evl_gateway *gw = NULL;
    evl_cli_host_config(&cfg, scripts, &hc);
    if ((rc = evl_cli_load_host(&hc, &proto))) {
        evl_config_free(&cfg);
        return rc;
    }
    if (evl_lifecycle_install() != 0 || evl_lifecycle_install_reload() != 0) {
        evl_log(EVL_LOG_ERROR, "cannot install signal handlers", NULL);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }

    if ((rc = evl_cli_serve_metrics(&cfg, "run")) != EVL_EXIT_OK ||
        (rc = evl_cli_gateway_start(&cfg, proto, &gw)) != EVL_EXIT_OK)
        goto out;
    size_t nproj = evl_luahost_nprojections(proto);
    size_t nagg = evl_luahost_naggregates(proto);
    pipeline *ps = evl_xmalloc(sizeof(pipeline) * (nproj + nagg + 1));
    size_t n = 0;
    if (cfg.cmd.enabled && evl_luahost_naggregates(proto) > 0)
        ps[n++] = (pipeline){.kind = "commands", .cfg = &cfg, .proto = proto};
    if (cfg.proj.enabled && nproj > 0) {
        if (!cfg.pg_conninfo) {
            evl_log(EVL_LOG_WARN,
                    "projections loaded but no database configured "
                    "(postgres / EVLUA_PG_CONNINFO): projectors not started",
                    NULL);
        } else {
            for (size_t i = 0; i < nproj; i++)
                ps[n++] = (pipeline){
                    .kind = "projection",
                    .name = evl_luahost_projection_at(proto, i)->name,
                    .cfg = &cfg,
                    .proto = proto};
        }
    }
    for (size_t i = 0; cfg.react.enabled && i < nagg; i++) {
        const char *type = evl_luahost_aggregate_at(proto, i)->type;
        if (evl_reactor_reacts(proto, type))
            ps[n++] = (pipeline){
                .kind = "reactions", .name = type, .cfg = &cfg, .proto = proto};
    }
    if (n == 0) {
        fprintf(stderr, "evlua run: nothing to run: no aggregates with "
                        "commands.enabled, no projections with a database "
                        "and no react tables with reactions.enabled\n");
        free(ps);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    evl_log(EVL_LOG_INFO, "evlua starting", "version", EVLUA_VERSION,
            "librdkafka", rd_kafka_version_str(), "config", cfg.path, "scripts",
            evl_luahost_hash(proto), NULL);
    /* nobody would see what it measures without the endpoint */
    evl_lag *lag = cfg.metrics.listen ? start_lag(&cfg, proto, ps, n) : NULL;
    size_t started = 0;
    for (; started < n; started++)
        if (pthread_create(&ps[started].thread, NULL, pipeline_main,
                           &ps[started]) != 0) {
            evl_log(EVL_LOG_ERROR, "pthread_create failed", NULL);
            evl_lifecycle_request_stop();
            rc = EVL_EXIT_FAILURE;
            break;
        }
    wait_pipelines(ps, started, cfg.shutdown_timeout_ms);
    for (size_t i = 0; i < started; i++) {
        pthread_join(ps[i].thread, NULL);
        if (ps[i].rc > rc)
            rc = ps[i].rc;
    }
    evl_lag_free(lag);
    free(ps);
    evl_log(EVL_LOG_INFO, "evlua stopped", NULL);
out:
    evl_gateway_stop(gw);
    evl_metrics_stop();
    evl_luahost_free(proto);
    evl_config_free(&cfg);
    return rc;
}
