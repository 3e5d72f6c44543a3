/*
 * main.c - the evlua binary: parses the command line and hands over to
 * the command's module. Exit codes: 0 ok, 1 runtime failure, 2 usage or
 * configuration error.
 */
#include <stdio.h>
#include <string.h>

#include "evl.h"
#include "log.h"

static const char usage[] =
    "usage: evlua [--version] [--help] COMMAND [ARGS]\n"
    "\n"
    "evlua turns commands into atomic events with Lua aggregates (one Kafka\n"
    "transaction per command) and projects events into PostgreSQL with Lua\n"
    "projections.\n"
    "\n"
    "Options:\n"
    "  -h, --help     show this help and exit\n"
    "  --version      print the version and exit\n"
    "\n"
    "Environment:\n"
    "  EVLUA_LOG_LEVEL   debug, info (default), warn or error\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 ||
        strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("evlua %s\n", EVLUA_VERSION);
        return 0;
    }
    fprintf(stderr, "evlua: unknown command '%s' (see evlua --help)\n", cmd);
    return 2;
}
