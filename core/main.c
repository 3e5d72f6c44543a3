/*
 * main.c - the evlua binary: dispatches to the subcommand (cli.h). Exit
 * codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
 */
#include <stdio.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <libpq-fe.h>
#include <lua.h>

#include "cli.h"

static const char usage[] =
    "usage: evlua [--version] [--help] COMMAND [ARGS]\n"
    "\n"
    "evlua turns commands into atomic events with Lua aggregates (one Kafka\n"
    "transaction per command batch) and projects events into PostgreSQL "
    "with\n"
    "Lua projections.\n"
    "\n"
    "Commands (`evlua COMMAND --help` for each):\n"
    "  run [-c CONFIG]                     run the configured pipelines\n"
    "  check [-c CONFIG] [--scripts DIR]   load and validate every script\n"
    "  repl [-c CONFIG] [--scripts DIR]    try commands against the scripts\n"
    "  send [-c CONFIG] [--wait] TYPE ID COMMAND [JSON]\n"
    "                                      submit a command (--wait: print "
    "its\n"
    "                                      result)\n"
    "  gateway [-c CONFIG]                 serve the HTTP command gateway "
    "alone\n"
    "  parked list|retry|drop              manage parked aggregates\n"
    "  projection reset NAME               rebuild a projection from the "
    "start\n"
    "  projection rebuild NAME --shadow    build a changed projection beside "
    "the live\n"
    "                                      one (schema evlua_shadow_NAME)\n"
    "  projection diff NAME                compare the live tables with the "
    "shadow's\n"
    "  projection swap NAME [--back]       put the shadow in place (and "
    "back)\n"
    "  verify [-c CONFIG] --scripts NEWDIR [--aggregate-type T] [--limit N]\n"
    "         [--json]                     check new scripts against the\n"
    "                                      recorded history (exit 1: they\n"
    "                                      differ)\n"
    "  test [DIR] [BUSTED-ARGS...]         run a project's busted specs with "
    "evlua's\n"
    "                                      Lua modules (no install needed)\n"
    "\n"
    "Options:\n"
    "  -h, --help     show this help and exit\n"
    "  --version      print the versions of evlua and its libraries\n"
    "  -v, -vv        (after any command but run, gateway and test) also\n"
    "                 log info,\n"
    "                 or debug, lines on stderr; one-shot commands log\n"
    "                 only warnings and errors by default\n"
    "\n"
    "Environment:\n"
    "  EVLUA_LOG_LEVEL        debug, info (default), warn or error\n"
    "  EVLUA_KAFKA_BOOTSTRAP  overrides kafka[\"bootstrap.servers\"]\n"
    "  EVLUA_PG_CONNINFO      overrides postgres\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.\n"
    "Configuration reference: docs/config.md.\n";

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
} command;

static const command commands[] = {
    {"run", evl_cli_run},       {"check", evl_cli_check},
    {"repl", evl_cli_repl},     {"test", evl_cli_test},
    {"send", evl_cli_send},     {"gateway", evl_cli_gateway},
    {"parked", evl_cli_parked}, {"projection", evl_cli_projection},
    {"verify", evl_cli_verify},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return EVL_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 ||
        strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return EVL_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        int pqv = PQlibVersion();
        printf("evlua %s\nlibrdkafka %s\n%s\nlibpq %d.%d\n", EVLUA_VERSION,
               rd_kafka_version_str(), LUA_RELEASE, pqv / 10000, pqv % 100);
        return EVL_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(cmd, commands[i].name) != 0)
            continue;
        int n = argc - 1;
        /* run and gateway (servers) log as configured; test hands -v to
         * busted */
        if (strcmp(cmd, "run") != 0 && strcmp(cmd, "gateway") != 0 &&
            strcmp(cmd, "test") != 0)
            evl_cli_oneshot(&n, argv + 1);
        return commands[i].fn(n, argv + 1);
    }
    fprintf(stderr, "evlua: unknown command '%s' (see evlua --help)\n", cmd);
    return EVL_EXIT_USAGE;
}
