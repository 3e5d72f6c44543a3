/*
 * lifecycle.h - the process's signals: stop, reload, reopen the log.
 *
 * Every signal the process handles is installed here, and every handler
 * only records the signal; the work happens on the threads that poll.
 *
 *   SIGTERM, SIGINT: a stop flag. Every pipeline polls
 *   evl_lifecycle_stopping() at its batch boundaries, finishes or aborts
 *   the batch in flight, closes its clients and returns. A pipeline that
 *   hits a fatal error calls evl_lifecycle_request_stop() so the others
 *   drain too, and the process exits with the worst exit code.
 *
 *   SIGHUP: a reload counter. Each pipeline keeps its own marker and asks
 *   evl_lifecycle_reload_requested() between batches, so one signal
 *   reaches every pipeline; the pipeline then builds a new script host
 *   (evl_luahost_reload).
 *
 *   SIGUSR1: reopen the log file (evl_log_reopen, for logrotate).
 *
 * Uses log.
 *
 * @locality any thread; the handlers are async-signal-safe.
 */
#ifndef EVL_LIFECYCLE_H
#define EVL_LIFECYCLE_H

/* Install SIGTERM/SIGINT handlers and ignore SIGPIPE. Returns 0, or -1
 * with errno from sigaction(2). */
int evl_lifecycle_install(void);

/* Has a stop been requested (signal or evl_lifecycle_request_stop)? */
int evl_lifecycle_stopping(void);

/* Ask every pipeline to stop (as SIGTERM does). */
void evl_lifecycle_request_stop(void);

/* Which signal asked for the stop (0: none or a request from code). */
int evl_lifecycle_signal(void);

/* ---- hot reload on SIGHUP ---------------------------------------------- */

/* Install a SIGHUP handler that only counts signals. Returns 0, or -1 with
 * errno from sigaction(2). */
int evl_lifecycle_install_reload(void);

/* Has a SIGHUP arrived since this caller last looked? *seen is the
 * caller's own marker (start it at 0): each pipeline keeps one, so every
 * pipeline sees every request. Returns 1 and updates *seen, or 0. */
int evl_lifecycle_reload_requested(unsigned *seen);

/* How many SIGHUPs have arrived so far (0: none). evl_luahost_reload uses
 * it so that only the first pipeline to reload after a signal logs the
 * summary. */
unsigned evl_lifecycle_reloads(void);

/* ---- log reopen on SIGUSR1 ---------------------------------------------- */

/* Install a SIGUSR1 handler that calls evl_log_reopen() (log.h). Returns
 * 0, or -1 with errno from sigaction(2). */
int evl_lifecycle_install_reopen(void);

#endif
