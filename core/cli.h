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
#include "pg.h"
#include "projector.h"

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

/* Settings of cfg that name what host has not loaded (what: a mask of
 * EVL_CLI_PROJECTIONS, a projection.each.NAME with no projection NAME;
 * EVL_CLI_TOKENS, a gateway token's aggregates entry, "*" aside, with no
 * aggregate type of that name). Appends one line per such name to out,
 * "CONFIG: KEY: ... (loaded: ...)", and returns how many it appended;
 * free out with evl_luahost_problems_free(). `evlua check` reports them
 * as errors; run and gateway only warn (evl_cli_warn_unloaded), since
 * removing a script before its settings is a legitimate step. */
enum { EVL_CLI_PROJECTIONS = 1, EVL_CLI_TOKENS = 2 };
size_t evl_cli_config_unloaded(const evl_config *cfg, const evl_luahost *host,
                               int what, evl_luahost_problems *out);

/* Log each line of evl_cli_config_unloaded as a warning. */
void evl_cli_warn_unloaded(const evl_config *cfg, const evl_luahost *host,
                           int what);

/* After a usage error's own line: the synopsis of usage (its text up to
 * the first blank line) and where the whole text is ("evlua SUB --help"),
 * to stderr; a mistyped option does not scroll the mistake away under
 * the whole help. */
void evl_cli_usage_error(const char *usage);

/* Parse the options run, check and repl share: -c/--config FILE,
 * --scripts DIR, -h/--help, and no operands. Returns -1 to go on (with
 * *config and *scripts set, NULL when absent), or the exit code to return
 * now: 0 after printing usage for --help, EVL_EXIT_USAGE after printing
 * what was wrong and the usage to stderr. */
int evl_cli_script_opts(int argc, char **argv, const char *name,
                        const char *usage, const char **config,
                        const char **scripts);

/* Connect to the configured database (application "evlua cli"). On
 * error prints "evlua: MESSAGE" and returns EVL_EXIT_USAGE (no database
 * configured, a conninfo libpq refuses) or EVL_EXIT_FAILURE; else
 * EVL_EXIT_OK and *pg (close with evl_pg_close). */
int evl_cli_connect_db(const evl_config *cfg, evl_pg **pg);

/* v with thousands separators ("1,234,567") into buf. */
void evl_cli_fmt_count(long long v, char *buf, size_t n);

/* An evl_projector_opts.progress for a terminal: one line on stderr,
 * rewritten ("rebuilding NAME: done/total (P%), rate events/s, ETA");
 * ud is the projection's name. */
void evl_cli_rebuild_progress(void *ud, const evl_projector_progress *p);

/* Run projection name (evl_projector_run_opts with *o, whose group and
 * schema the caller may set) until it has read its topics up to their
 * end at assignment: progress on a terminal, info logs held back there
 * meanwhile, SIGINT/SIGTERM stopping it. *st (zeroed first) gets the
 * counts. Returns the projector's exit code; EVL_EXIT_FAILURE (said, st
 * empty) when the signal handlers cannot be installed. cmd names the
 * subcommand in messages. */
int evl_cli_catch_up(const evl_config *cfg, const evl_luahost *host,
                     const char *name, const char *cmd, evl_projector_opts *o,
                     evl_projector_stats *st);
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
/* `evlua projection rebuild NAME --shadow` and `projection diff NAME`
 * (cli_shadow.c); evl_cli_projection hands them over. */
int evl_cli_shadow(int argc, char **argv);
int evl_cli_verify(int argc, char **argv);
/* `evlua test`: busted with evlua's Lua modules; returns only on error. */
int evl_cli_test(int argc, char **argv);

#endif
