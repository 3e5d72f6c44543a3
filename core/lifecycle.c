/* lifecycle.c - the signal handlers and the flags they set (see
 * lifecycle.h). Each handler only records; the pipelines poll. */
#include "lifecycle.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "log.h"

/* Install handler for sig; flags as sigaction's sa_flags. */
static int install(int sig, void (*handler)(int), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = flags;
    return sigaction(sig, &sa, NULL);
}

/* ---- stop on SIGTERM / SIGINT ------------------------------------------ */

static volatile sig_atomic_t stop_signal;
static atomic_int stop_requested;

static void on_stop(int sig)
{
    stop_signal = sig;
    atomic_store(&stop_requested, 1);
}

int evl_lifecycle_install(void)
{
    if (install(SIGTERM, on_stop, 0) != 0 || install(SIGINT, on_stop, 0) != 0)
        return -1;
    return install(SIGPIPE, SIG_IGN, 0);
}

int evl_lifecycle_stopping(void)
{
    return atomic_load(&stop_requested);
}

void evl_lifecycle_request_stop(void)
{
    atomic_store(&stop_requested, 1);
}

int evl_lifecycle_signal(void)
{
    return stop_signal;
}

/* ---- reload on SIGHUP -------------------------------------------------- */

/* A counter, not a flag: every pipeline compares it with what it saw
 * last, so one signal reaches them all. Lock-free atomics are
 * async-signal-safe. */
#if ATOMIC_INT_LOCK_FREE != 2
#error "the SIGHUP counter needs lock-free atomic int"
#endif
static atomic_uint hup_count;

static void on_sighup(int sig)
{
    (void)sig;
    atomic_fetch_add(&hup_count, 1u);
}

int evl_lifecycle_install_reload(void)
{
    return install(SIGHUP, on_sighup, SA_RESTART);
}

int evl_lifecycle_reload_requested(unsigned *seen)
{
    unsigned now = atomic_load(&hup_count);
    if (now == *seen)
        return 0;
    *seen = now;
    return 1;
}

unsigned evl_lifecycle_reloads(void)
{
    return atomic_load(&hup_count);
}

/* ---- log reopen on SIGUSR1 --------------------------------------------- */

static void on_reopen(int sig)
{
    (void)sig;
    evl_log_reopen();
}

int evl_lifecycle_install_reopen(void)
{
    return install(SIGUSR1, on_reopen, SA_RESTART);
}
