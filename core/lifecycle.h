/*
 * lifecycle.h - process-wide stop requests.
 *
 * SIGTERM and SIGINT only set a flag; every pipeline polls
 * evl_lifecycle_stopping() at its batch boundaries, finishes or aborts
 * the batch in flight, closes its clients and returns. A pipeline that
 * hits a fatal error calls evl_lifecycle_request_stop() so the others
 * drain too, and the process exits with the worst exit code.
 * (SIGHUP belongs to luahost: evl_luahost_install_sighup.)
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

#endif
