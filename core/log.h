/*
 * log.h - one line per event on stderr, in logfmt:
 *
 *   ts=2026-11-28T17:55:11.123Z level=info msg="scripts loaded" hash=ab12
 *
 * Fields are string key/value pairs; values are quoted and escaped when
 * they need it, so a line always parses back. Each line is formatted in a
 * stack buffer and written with one write(2), so lines from different
 * threads never interleave. Does not allocate.
 *
 * @locality any thread.
 */
#ifndef EVL_LOG_H
#define EVL_LOG_H

#include <stdarg.h>

typedef enum evl_log_level {
    EVL_LOG_DEBUG = 0,
    EVL_LOG_INFO = 1,
    EVL_LOG_WARN = 2,
    EVL_LOG_ERROR = 3
} evl_log_level;

/* Lines below lvl are dropped. Default: EVL_LOG_INFO, or the level named
 * by the environment variable EVLUA_LOG_LEVEL when set. */
void evl_log_set_level(evl_log_level lvl);
evl_log_level evl_log_get_level(void);

/* One-shot commands (check, send, parked, projection, repl, test) answer
 * on stdout and stderr themselves; their log is for when something went
 * wrong. After evl_log_oneshot(verbose): lines below warn are dropped
 * (verbose 1: below info; 2 or more: none), unless EVLUA_LOG_LEVEL names
 * a level, and evl_log_lib() turns a library's own warnings into info.
 * The config's log.level is for `evlua run` and no longer applies. */
void evl_log_oneshot(int verbose);
int evl_log_is_oneshot(void);

/* The level to log a library's message (librdkafka's, libmicrohttpd's) at,
 * given the level the library gave it: the same, but at most info in a
 * one-shot command (a broker's hiccup is not part of its answer). */
evl_log_level evl_log_lib(evl_log_level lvl);

/* "debug", "info", "warn", "error" -> level; -1 for anything else. */
int evl_log_parse_level(const char *name);

/* Log msg with fields given as NULL-terminated pairs of strings:
 * evl_log(EVL_LOG_INFO, "reloaded", "hash", h, "scripts", n, NULL).
 * A NULL value is printed as an empty string. */
void evl_log(evl_log_level lvl, const char *msg, ...);
void evl_logv(evl_log_level lvl, const char *msg, va_list ap);

/* Output format: logfmt (default) or one JSON object per line
 * ({"ts":..,"level":..,"msg":..,"key":"value",...}). */
typedef enum evl_log_format {
    EVL_LOG_LOGFMT = 0,
    EVL_LOG_JSON = 1
} evl_log_format;
void evl_log_set_format(evl_log_format f);

/* Write log lines to path (appending, created 0640) instead of stderr.
 * Returns 0, or -1 with errno. */
int evl_log_open_file(const char *path);

/* Open the log file again in place of the old one (for logrotate; a no-op
 * without a file). Async-signal-safe: SIGUSR1 calls it, see
 * evl_lifecycle_install_reopen() in lifecycle.h. */
void evl_log_reopen(void);

/* Log a printf-formatted message with no fields. */
void evl_logf(evl_log_level lvl, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
