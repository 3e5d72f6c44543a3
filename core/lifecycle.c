/* lifecycle.c - stop flags set from signal handlers (see lifecycle.h). */
#include "lifecycle.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>

static volatile sig_atomic_t stop_signal;
static atomic_int stop_requested;

static void on_stop(int sig)
{
    stop_signal = sig;
    atomic_store(&stop_requested, 1);
}

int evl_lifecycle_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return -1;
    sa.sa_handler = SIG_IGN;
    return sigaction(SIGPIPE, &sa, NULL);
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
