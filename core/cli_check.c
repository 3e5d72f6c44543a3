/* cli_check.c - `evlua check`: load and validate every script. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "kafka.h"

static const char check_usage[] =
    "usage: evlua check [-c CONFIG] [--scripts DIR]\n"
    "\n"
    "Load and validate every aggregate and projection script with the exact\n"
    "sandbox, limits and contract checks of `evlua run`, then look for the\n"
    "traps that load cannot refuse:\n"
    "  error    an event type handle can emit (a `type = \"Name\"` field of\n"
    "           an event table in the source, or listed in emits = {...})\n"
    "           with no apply entry and not listed in neutral = {...}: such\n"
    "           a command fails at run time\n"
    "  warning  an apply entry no handler emits (a typo?); a neutral entry\n"
    "           that also has an apply entry; a projection on an event type\n"
    "           no aggregate of the set emits (when the set has aggregates)\n"
    "\n"
    "  -c, --config FILE   config file (default: built-in defaults)\n"
    "  --scripts DIR       use DIR/aggregates, DIR/projections (and DIR/lib)\n"
    "                      instead of the configured directories\n"
    "\n"
    "The config is checked as `evlua run` and `evlua gateway` check it at\n"
    "start: every kafka property is set on a librdkafka configuration (no\n"
    "connection is made), so a misspelt one is a config error, and so is a\n"
    "non-loopback gateway.listen without gateway.tokens. Then, against the\n"
    "scripts loaded:\n"
    "  error    a projection.each.NAME with no projection NAME loaded; a\n"
    "           gateway token's aggregates entry naming no loaded aggregate\n"
    "           type (`evlua run` and `evlua gateway` only warn of these)\n"
    "\n"
    "Exit 0 when every script is fine (warnings, `file:line: warning: ...`\n"
    "on stderr, do not change it); 1 with one `file:line: message` line per\n"
    "problem on stderr (`CONFIG: KEY: message` for a setting naming what is\n"
    "not loaded); 2 on a usage or config error.\n";

int evl_cli_check(int argc, char **argv)
{
    const char *config, *scripts;
    int rc = evl_cli_script_opts(argc, argv, "check", check_usage, &config,
                                 &scripts);
    if (rc >= 0)
        return rc;
    evl_config cfg;
    rc = evl_cli_load_config(config, &cfg);
    if (rc)
        return rc;
    /* what run and gateway refuse at start without the scripts: every
     * kafka property set on a throwaway librdkafka conf (no connection),
     * and the gateway's own checks of its settings (binding nothing) */
    {
        char err[EVL_ERRLEN];
        rd_kafka_conf_t *conf = NULL;
        if (evl_kafka_conf_new(&cfg, NULL, NULL, &conf, err, sizeof err) !=
                EVL_OK ||
            (cfg.gateway.listen &&
             evl_gateway_check(&cfg, err, sizeof err) != EVL_OK)) {
            fprintf(stderr, "evlua: %s: %s\n", cfg.path, err);
            if (conf)
                rd_kafka_conf_destroy(conf);
            evl_config_free(&cfg);
            return EVL_EXIT_USAGE;
        }
        rd_kafka_conf_destroy(conf);
    }
    evl_luahost_config hc;
    evl_luahost *host = NULL;
    evl_cli_host_config(&cfg, scripts, &hc);
    if (evl_cli_load_host(&hc, &host) != EVL_EXIT_OK) {
        evl_config_free(&cfg);
        return EVL_EXIT_FAILURE;
    }
    {
        evl_luahost_problems errors = {0}, warnings = {0};
        size_t nerr = evl_luahost_lint(host, &errors, &warnings);
        nerr += evl_cli_config_unloaded(
            &cfg, host, EVL_CLI_PROJECTIONS | EVL_CLI_TOKENS, &errors);
        for (size_t i = 0; i < errors.n; i++)
            fprintf(stderr, "%s\n", errors.lines[i]);
        for (size_t i = 0; i < warnings.n; i++)
            fprintf(stderr, "%s\n", warnings.lines[i]);
        evl_luahost_problems_free(&errors);
        evl_luahost_problems_free(&warnings);
        if (nerr > 0) {
            evl_luahost_free(host);
            evl_config_free(&cfg);
            return EVL_EXIT_FAILURE;
        }
    }
    printf("ok: %zu aggregates, %zu projections, hash %s\n",
           evl_luahost_naggregates(host), evl_luahost_nprojections(host),
           evl_luahost_hash(host));
    for (size_t i = 0; i < evl_luahost_naggregates(host); i++) {
        const evl_luahost_aggregate *a = evl_luahost_aggregate_at(host, i);
        printf("  aggregate %s (%s): %zu commands, %zu event types\n", a->type,
               a->script, a->ncommands, a->nevents);
    }
    for (size_t i = 0; i < evl_luahost_nprojections(host); i++) {
        const evl_luahost_projection *p = evl_luahost_projection_at(host, i);
        printf("  projection %s (%s): %zu event types\n", p->name, p->script,
               p->nevents);
    }
    evl_luahost_free(host);
    evl_config_free(&cfg);
    return EVL_EXIT_OK;
}
