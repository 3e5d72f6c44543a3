/*
 * cli_run.c - `evlua run`: the long-running service.
 *
 * Loads the config and the script set once (a broken set is a
 * configuration error: exit 2 before touching Kafka), then starts one
 * thread per pipeline: the command processor (when aggregates are loaded
 * and commands.enabled), one projector per projection (when a database
 * is configured and projection.enabled) and one reactor per aggregate type
 * with a react table (when reactions.enabled; reactor.h). Each pipeline builds
 * its own host from the loaded one (evl_luahost_again), so no lua_State is
 * ever shared between threads, and watches SIGHUP and the stop flag at its
 * batch boundaries. The main thread watches SIGHUP too: it starts a
 * pipeline for each projection or react table a reload adds, and again
 * one that was started so and failed (such a one stops alone). The exit
 * code is the worst of the pipelines' started at the start.
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
    "SIGHUP reloads every script (all or nothing) between batches, and\n"
    "starts a projector or reactor for each projection or react table it\n"
    "adds (one that fails stops alone; the next SIGHUP starts it again).\n"
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
    int late;    /* started at a reload: a failure stops it alone */
    int watched; /* its group is on the lag thread's list */
    int thread_started;
    int rc;
    int done; /* set (atomically) when the pipeline returned */
} pipeline;

/* The pipelines of the process, each allocated apart (their threads keep
 * a pointer), and the script sets those started at reloads were named
 * from. */
typedef struct run_set {
    pipeline **p;
    size_t n;
    evl_luahost **hosts;
    size_t nhosts;
    evl_luahost *latest; /* the set the last reload loaded (NULL: none) */
    int latest_kept;     /* latest is in hosts */
} run_set;

static pipeline *add_pipeline(run_set *rs, pipeline p)
{
    rs->p = evl_xrealloc(rs->p, sizeof(pipeline *) * (rs->n + 1));
    rs->p[rs->n] = evl_xmalloc(sizeof p);
    *rs->p[rs->n] = p;
    return rs->p[rs->n++];
}

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
    if (strcmp(p->kind, "projection") == 0) {
        evl_projector_opts o;
        memset(&o, 0, sizeof o);
        o.alone = p->late;
        p->rc = evl_projector_run_opts(p->cfg, p->proto, p->name, &o);
    }
    if (strcmp(p->kind, "reactions") == 0)
        p->rc = evl_reactor_run(p->cfg, p->proto, p->name);
    if (p->rc != 0 && p->late && !evl_lifecycle_stopping())
        evl_log(EVL_LOG_ERROR,
                "a pipeline a reload started has stopped; the others go on "
                "(the next SIGHUP starts it again)",
                "pipeline", p->kind, "name", p->name, NULL);
    else if (p->rc != 0)
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

/* Put p's group on the lag thread's list: the commands group over the
 * commands topic of every aggregate type of proto, a reactor's group over
 * its source topics, a projection's over its topics. */
static void watch_pipeline(evl_lag *lag, const evl_config *cfg,
                           const evl_luahost *proto, pipeline *p)
{
    char group[256];
    evl_strlist topics = {0};
    if (!lag || p->watched)
        return;
    p->watched = 1;
    if (strcmp(p->kind, "commands") == 0) {
        size_t nt = evl_luahost_naggregates(proto);
        char **names = evl_xmalloc(sizeof(char *) * (nt ? nt : 1));
        for (size_t t = 0; t < nt; t++) {
            char buf[512];
            evl_config_topic(cfg->cmd.commands_topic,
                             evl_luahost_aggregate_at(proto, t)->type, buf,
                             sizeof buf);
            names[t] = evl_xstrdup(buf);
        }
        evl_lag_watch(lag, cfg->cmd.group_id, NULL, (const char *const *)names,
                      nt);
        for (size_t t = 0; t < nt; t++)
            free(names[t]);
        free(names);
    } else if (strcmp(p->kind, "reactions") == 0) {
        evl_reactor_group(cfg, p->name, group, sizeof group);
        evl_reactor_topics(cfg, proto, p->name, &topics);
        evl_lag_watch(lag, group, NULL, (const char *const *)topics.v,
                      (size_t)topics.n);
        evl_reactor_topics_free(&topics);
    } else {
        evl_projector_group(cfg, p->name, group, sizeof group);
        evl_projector_topics(cfg, proto, p->name, &topics);
        evl_lag_watch(lag, group, p->name, (const char *const *)topics.v,
                      (size_t)topics.n);
        evl_projector_topics_free(&topics);
    }
}

/* The lag thread for the pipelines of rs. A failure to start it is
 * logged; the pipelines run without it. */
static evl_lag *start_lag(const evl_config *cfg, const evl_luahost *proto,
                          run_set *rs)
{
    char err[EVL_ERRLEN];
    evl_lag *lag = evl_lag_new(cfg);
    for (size_t i = 0; i < rs->n; i++)
        watch_pipeline(lag, cfg, proto, rs->p[i]);
    if (evl_lag_start(lag, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_WARN, "lag thread not started: no lag metrics",
                "reason", err, NULL);
        evl_lag_free(lag);
        return NULL;
    }
    return lag;
}

static int start_pipeline(pipeline *p)
{
    if (pthread_create(&p->thread, NULL, pipeline_main, p) != 0) {
        evl_log(EVL_LOG_ERROR, "pthread_create failed", "pipeline", p->kind,
                "name", p->name, NULL);
        return -1;
    }
    p->thread_started = 1;
    return 0;
}

/* The pipeline of kind and name in rs, or NULL. */
static pipeline *find_pipeline(run_set *rs, const char *kind, const char *name)
{
    for (size_t i = 0; i < rs->n; i++)
        if (strcmp(rs->p[i]->kind, kind) == 0 &&
            (!name || strcmp(rs->p[i]->name, name) == 0))
            return rs->p[i];
    return NULL;
}

/* The pipelines the script set h calls for under cfg, each passed to
 * fn(ud, kind, name), name pointing into h: the command processor
 * (aggregates, commands.enabled), a projector per projection
 * (projection.enabled and a database: without one, a warning), a reactor
 * per aggregate type with a react table (reactions.enabled). The one
 * place that decides, at start and at each reload. */
static void
each_wanted(const evl_config *cfg, const evl_luahost *h,
            void (*fn)(void *ud, const char *kind, const char *name), void *ud)
{
    size_t nproj = evl_luahost_nprojections(h);
    size_t nagg = evl_luahost_naggregates(h);
    if (cfg->cmd.enabled && nagg > 0)
        fn(ud, "commands", NULL);
    if (cfg->proj.enabled && nproj > 0 && !cfg->pg_conninfo)
        evl_log(EVL_LOG_WARN,
                "projections loaded but no database configured "
                "(postgres / EVLUA_PG_CONNINFO): projectors not started",
                NULL);
    for (size_t i = 0; cfg->proj.enabled && cfg->pg_conninfo && i < nproj; i++)
        fn(ud, "projection", evl_luahost_projection_at(h, i)->name);
    for (size_t i = 0; cfg->react.enabled && i < nagg; i++) {
        const char *type = evl_luahost_aggregate_at(h, i)->type;
        if (evl_reactor_reacts(h, type))
            fn(ud, "reactions", type);
    }
}

/* Start a pipeline of kind and name, named in nh, unless one runs: the
 * pipelines watch SIGHUP each for itself, so a projection or a react
 * table added to the scripts would otherwise wait for a restart. One that
 * was started so and has failed is started again. Returns 1 when started. */
static int start_added(run_set *rs, const evl_config *cfg, evl_luahost *nh,
                       evl_lag *lag, const char *kind, const char *name)
{
    pipeline *p = find_pipeline(rs, kind, name);
    if (p && !(p->late && __atomic_load_n(&p->done, __ATOMIC_ACQUIRE)))
        return 0;
    if (p) {
        if (p->thread_started)
            pthread_join(p->thread, NULL);
        p->thread_started = 0;
        p->name = name; /* nh outlives it */
        p->proto = nh;
        p->rc = 0;
        __atomic_store_n(&p->done, 0, __ATOMIC_RELEASE);
    } else {
        p = add_pipeline(rs, (pipeline){.kind = kind,
                                        .name = name,
                                        .cfg = cfg,
                                        .proto = nh,
                                        .late = 1});
        watch_pipeline(lag, cfg, nh, p);
    }
    if (start_pipeline(p) != 0) {
        p->rc = EVL_EXIT_FAILURE;
        __atomic_store_n(&p->done, 1, __ATOMIC_RELEASE);
        return 0;
    }
    evl_log(EVL_LOG_INFO, "reload started a pipeline", "pipeline", kind, "name",
            name, NULL);
    return 1;
}

typedef struct added {
    run_set *rs;
    const evl_config *cfg;
    evl_luahost *nh;
    evl_lag *lag;
    int used; /* a pipeline was started with nh */
} added;

/* each_wanted's visitor at a reload: start what does not run yet. */
static void add_late(void *ud, const char *kind, const char *name)
{
    added *a = ud;
    if (strcmp(kind, "commands") != 0)
        a->used |= start_added(a->rs, a->cfg, a->nh, a->lag, kind, name);
    else if (!find_pipeline(a->rs, "commands", NULL))
        evl_log(EVL_LOG_WARN,
                "the reloaded scripts have aggregates but this process "
                "started without a command processor: restart evlua to "
                "start it",
                NULL);
}

/* After a SIGHUP: start the pipelines the reloaded scripts add. The
 * running pipelines speak for the reload (the first to switch to the new
 * set logs the summary line, so it means commands are now decided by the
 * new scripts); this load is silent unless none runs. A set that does not
 * load starts nothing. */
static void start_reloaded(run_set *rs, const evl_config *cfg,
                           const evl_luahost *proto, evl_lag *lag)
{
    char err[EVL_ERRLEN];
    evl_luahost *nh = NULL;
    const evl_luahost *from = rs->latest ? rs->latest : proto;
    size_t live = 0;
    for (size_t i = 0; i < rs->n; i++)
        live += !__atomic_load_n(&rs->p[i]->done, __ATOMIC_ACQUIRE);
    if ((live ? evl_luahost_again(from, &nh, NULL, err, sizeof err)
              : evl_luahost_reload(from, &nh, NULL, err, sizeof err)) != EVL_OK)
        return;
    added a = {rs, cfg, nh, lag, 0};
    each_wanted(cfg, nh, add_late, &a);
    int used = a.used;
    if (rs->latest && !rs->latest_kept)
        evl_luahost_free(rs->latest);
    rs->latest = nh;
    rs->latest_kept = used;
    if (used) { /* the names of the pipelines it started point into it */
        rs->hosts =
            evl_xrealloc(rs->hosts, sizeof(evl_luahost *) * (rs->nhosts + 1));
        rs->hosts[rs->nhosts++] = nh;
    }
}

/* Run until every pipeline returned, starting those a reload adds. Once
 * a stop is requested they have shutdown_timeout_ms to drain; a pipeline
 * stuck past that (a broker or database that does not answer) ends the
 * process with exit code 1. What was not committed is processed again
 * after the restart: the open Kafka transaction is aborted by the next
 * instance's init_transactions (or its timeout), an open DB transaction
 * rolls back with the connection. */
static void supervise(run_set *rs, const evl_config *cfg,
                      const evl_luahost *proto, evl_lag *lag, unsigned seen)
{
    double stop_at = 0;
    for (;;) {
        if (!evl_lifecycle_stopping() && evl_lifecycle_reload_requested(&seen))
            start_reloaded(rs, cfg, proto, lag);
        size_t done = 0;
        for (size_t i = 0; i < rs->n; i++)
            done += (size_t)__atomic_load_n(&rs->p[i]->done, __ATOMIC_ACQUIRE);
        if (done == rs->n)
            return;
        if (evl_lifecycle_stopping()) {
            if (stop_at == 0)
                stop_at = mono_s();
            else if (mono_s() - stop_at > cfg->shutdown_timeout_ms / 1000.0) {
                char t[24];
                snprintf(t, sizeof t, "%d", cfg->shutdown_timeout_ms);
                for (size_t i = 0; i < rs->n; i++)
                    if (!__atomic_load_n(&rs->p[i]->done, __ATOMIC_ACQUIRE))
                        evl_log(EVL_LOG_ERROR,
                                "shutdown deadline passed with this pipeline "
                                "still draining; exiting without it (its "
                                "uncommitted batch is processed again after "
                                "a restart)",
                                "pipeline", rs->p[i]->kind, "name",
                                rs->p[i]->name, "shutdown_timeout_ms", t, NULL);
                fflush(NULL);
                _exit(EVL_EXIT_FAILURE);
            }
        }
        usleep(20000);
    }
}

/* each_wanted's visitor at start. */
static void add_start(void *ud, const char *kind, const char *name)
{
    added *a = ud;
    add_pipeline(
        a->rs,
        (pipeline){.kind = kind, .name = name, .cfg = a->cfg, .proto = a->nh});
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
    run_set rs = {0};
    evl_cli_host_config(&cfg, scripts, &hc);
    if ((rc = evl_cli_load_host(&hc, &proto))) {
        evl_config_free(&cfg);
        return rc;
    }
    /* settings for a script that is gone: not refused, since removing a
     * projection before its settings is a legitimate step (check errs) */
    evl_cli_warn_unloaded(&cfg, proto, EVL_CLI_PROJECTIONS | EVL_CLI_TOKENS);
    if (evl_lifecycle_install() != 0 || evl_lifecycle_install_reload() != 0) {
        evl_log(EVL_LOG_ERROR, "cannot install signal handlers", NULL);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }

    if ((rc = evl_cli_serve_metrics(&cfg, "run")) != EVL_EXIT_OK ||
        (rc = evl_cli_gateway_start(&cfg, proto, &gw)) != EVL_EXIT_OK)
        goto out;
    added a = {&rs, &cfg, proto, NULL, 0};
    each_wanted(&cfg, proto, add_start, &a);
    if (rs.n == 0) {
        fprintf(stderr, "evlua run: nothing to run: no aggregates with "
                        "commands.enabled, no projections with a database "
                        "and no react tables with reactions.enabled\n");
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    evl_log(EVL_LOG_INFO, "evlua starting", "version", EVLUA_VERSION,
            "librdkafka", rd_kafka_version_str(), "config", cfg.path, "scripts",
            evl_luahost_hash(proto), NULL);
    /* nobody would see what it measures without the endpoint */
    evl_lag *lag = cfg.metrics.listen ? start_lag(&cfg, proto, &rs) : NULL;
    unsigned seen = 0; /* the SIGHUPs before the pipelines loaded */
    evl_lifecycle_reload_requested(&seen);
    for (size_t i = 0; i < rs.n; i++)
        if (rc == EVL_EXIT_OK && start_pipeline(rs.p[i]) != 0) {
            evl_lifecycle_request_stop();
            rc = EVL_EXIT_FAILURE;
        } else if (rc != EVL_EXIT_OK) {
            rs.p[i]->done = 1; /* not started: not waited for */
        }
    supervise(&rs, &cfg, proto, lag, seen);
    for (size_t i = 0; i < rs.n; i++) {
        if (rs.p[i]->thread_started)
            pthread_join(rs.p[i]->thread, NULL);
        /* one started at a reload and failed alone stopped only itself */
        if (rs.p[i]->rc > rc && !rs.p[i]->late)
            rc = rs.p[i]->rc;
    }
    evl_lag_free(lag);
    evl_log(EVL_LOG_INFO, "evlua stopped", NULL);
out:
    for (size_t i = 0; i < rs.n; i++)
        free(rs.p[i]);
    free(rs.p);
    for (size_t i = 0; i < rs.nhosts; i++)
        evl_luahost_free(rs.hosts[i]);
    free(rs.hosts);
    if (rs.latest && !rs.latest_kept)
        evl_luahost_free(rs.latest);
    evl_gateway_stop(gw);
    evl_metrics_stop();
    evl_luahost_free(proto);
    evl_config_free(&cfg);
    return rc;
}
