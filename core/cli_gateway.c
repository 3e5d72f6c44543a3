/*
 * cli_gateway.c - `evlua gateway -c CONFIG`: the command gateway alone
 * (gateway.h), for deployments that scale it apart from the processors;
 * and the start of the gateway that `evlua run` shares.
 *
 * The gateway loads the script set of the config only to learn the
 * aggregate types and their command types: it never runs a handler.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "gateway.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"

static const char gateway_usage[] =
    "usage: evlua gateway [-c CONFIG] [--scripts DIR]\n"
    "\n"
    "Serve the command gateway on gateway.listen: POST /v1/commands sends a\n"
    "command and answers with its result, GET /v1/commands/ID its outcome\n"
    "(docs/gateway.openapi.json). Commands are decided by `evlua run`\n"
    "elsewhere; `evlua run` also starts the gateway when gateway.listen is\n"
    "set. The scripts are loaded only to learn the aggregate and command\n"
    "types; SIGHUP reloads them (all or nothing: a failed reload keeps\n"
    "the loaded ones).\n"
    "\n"
    "  -c, --config FILE   config file (gateway.*, Kafka; docs/config.md)\n"
    "  --scripts DIR       aggregates from DIR/aggregates instead\n"
    "\n"
    "Stops on SIGTERM or SIGINT. Exit 0 after a clean stop, 2 on a usage or\n"
    "configuration error (no gateway.listen, no tokens on a non-loopback\n"
    "address, ...).\n";

int evl_cli_gateway_start(const evl_config *cfg, const evl_luahost *host,
                          evl_gateway **gw)
{
    char err[EVL_ERRLEN], port[16];
    int bound = 0;
    *gw = NULL;
    if (!cfg->gateway.listen)
        return EVL_EXIT_OK;
    if (evl_gateway_start(cfg, host, gw, &bound, err, sizeof err) != EVL_OK) {
        fprintf(stderr, "evlua: %s\n", err);
        evl_log(EVL_LOG_ERROR, "gateway not started", "error", err, NULL);
        return EVL_EXIT_USAGE;
    }
    snprintf(port, sizeof port, "%d", bound);
    evl_log(EVL_LOG_INFO, "gateway listening", "listen", cfg->gateway.listen,
            "port", port, "tls", cfg->gateway.tls_cert ? "on" : "off", "tokens",
            cfg->gateway.ntokens ? "yes" : "none (loopback)", NULL);
    return EVL_EXIT_OK;
}

int evl_cli_gateway(int argc, char **argv)
{
    const char *config, *scripts;
    int rc = evl_cli_script_opts(argc, argv, "gateway", gateway_usage, &config,
                                 &scripts);
    if (rc >= 0)
        return rc;
    evl_config cfg;
    if ((rc = evl_cli_load_config(config, &cfg)))
        return rc;
    evl_luahost_config hc;
    evl_luahost *host = NULL;
    evl_gateway *gw = NULL;
    evl_cli_host_config(&cfg, scripts, &hc);
    if ((rc = evl_cli_load_host(&hc, &host)))
        goto out;
    evl_cli_warn_unloaded(&cfg, host, EVL_CLI_TOKENS);
    if (!cfg.gateway.listen) {
        fprintf(stderr, "evlua gateway: gateway.listen is not set in %s\n",
                cfg.path);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    if (evl_lifecycle_install() != 0 || evl_lifecycle_install_reload() != 0) {
        evl_log(EVL_LOG_ERROR, "cannot install signal handlers", NULL);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }
    if ((rc = evl_cli_serve_metrics(&cfg, "gateway")) ||
        (rc = evl_cli_gateway_start(&cfg, host, &gw)))
        goto out;
    evl_thread_name("evl:gateway", NULL);
    while (!evl_lifecycle_stopping()) {
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    evl_log(EVL_LOG_INFO, "gateway stopping", NULL);
out:
    evl_gateway_stop(gw);
    evl_metrics_stop();
    evl_luahost_free(host);
    evl_config_free(&cfg);
    return rc;
}
