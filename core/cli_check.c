/* cli_check.c - `evlua check`: load and validate every script. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char check_usage[] =
    "usage: evlua check [-c CONFIG] [--scripts DIR]\n"
    "\n"
    "Load and validate every aggregate and projection script with the exact\n"
    "sandbox, limits and contract checks of `evlua run`.\n"
    "\n"
    "  -c, --config FILE   config file (default: built-in defaults)\n"
    "  --scripts DIR       use DIR/aggregates, DIR/projections (and DIR/lib)\n"
    "                      instead of the configured directories\n"
    "\n"
    "Exit 0 when every script is fine; 1 with one `file:line: message` line\n"
    "per problem on stderr; 2 on a usage or config error.\n";

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
    evl_luahost_config hc;
    evl_luahost *host = NULL;
    evl_cli_host_config(&cfg, scripts, &hc);
    if (evl_cli_load_host(&hc, &host) != EVL_EXIT_OK) {
        evl_config_free(&cfg);
        return EVL_EXIT_FAILURE;
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
