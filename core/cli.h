/*
 * cli.h - what the evlua subcommands share, and their entry points.
 *
 * Each subcommand is `int evl_cli_NAME(int argc, char **argv)` where
 * argv[0] is the subcommand's name; it returns the process exit code
 * (EVL_EXIT_* of evl.h). main.c only
 * dispatches. Each lives in its own file (cli_run.c, cli_send.c, ...).
 *
 * @locality the main thread.
 */
#ifndef EVL_CLI_H
#define EVL_CLI_H

#include "config.h"
#include "gateway.h"
#include "luahost.h"

/* For a one-shot subcommand (every one but run): remove -v, -vv and
 * --verbose (each counts once) from argv[1..*argc) before any "--", and
 * set the log up as evl_log_oneshot says (info lines only with -v).
 * *argc shrinks accordingly. */
void evl_cli_oneshot(int *argc, char **argv);

/* Load the config at path (NULL: defaults) and apply its log level.
 * On error prints "evlua: MESSAGE" to stderr and returns EVL_EXIT_USAGE;
 * else EVL_EXIT_OK with *cfg filled (free with evl_config_free). */
int evl_cli_load_config(const char *path, evl_config *cfg);

/* Fill hc from cfg (pointers into cfg: keep cfg alive). scripts_dir, when
 * non-NULL, replaces the script directories with scripts_dir/aggregates
 * and scripts_dir/projections (and scripts_dir/lib when it exists); the
 * strings are kept in static storage. */
void evl_cli_host_config(const evl_config *cfg, const char *scripts_dir,
                         evl_luahost_config *hc);

/* Load the script set; on problems print one "file:line: message" line
 * each to stderr and return EVL_EXIT_USAGE, else EVL_EXIT_OK and *host. */
int evl_cli_load_host(const evl_luahost_config *hc, evl_luahost **host);

/* Parse the options run, check and repl share: -c/--config FILE,
 * --scripts DIR, -h/--help, and no operands. Returns -1 to go on (with
 * *config and *scripts set, NULL when absent), or the exit code to return
 * now: 0 after printing usage for --help, EVL_EXIT_USAGE after printing
 * what was wrong and the usage to stderr. */
int evl_cli_script_opts(int argc, char **argv, const char *name,
                        const char *usage, const char **config,
                        const char **scripts);

/* Start the metrics endpoint when cfg->metrics.listen is set and publish
 * evlua_build_info. Returns EVL_EXIT_OK, or EVL_EXIT_USAGE after printing
 * "evlua NAME: reason". */
int evl_cli_serve_metrics(const evl_config *cfg, const char *name);

/* Start the command gateway when cfg->gateway.listen is set (*gw NULL
 * otherwise). Returns EVL_EXIT_OK, or EVL_EXIT_USAGE after printing why. */
int evl_cli_gateway_start(const evl_config *cfg, const evl_luahost *host,
                          evl_gateway **gw);

int evl_cli_run(int argc, char **argv);
int evl_cli_gateway(int argc, char **argv);
int evl_cli_check(int argc, char **argv);
int evl_cli_repl(int argc, char **argv);
int evl_cli_send(int argc, char **argv);
int evl_cli_parked(int argc, char **argv);
int evl_cli_projection(int argc, char **argv);
/* `evlua test`: busted with evlua's Lua modules; returns only on error. */
int evl_cli_test(int argc, char **argv);

#endif
