/*
 * testhooks.h - the test suite's fault-injection hooks, compiled only into
 * test builds (as SQLite's SQLITE_TEST).
 *
 * The hooks are set through environment variables, read once, in one
 * place (evl_testhooks_read), into one struct. With EVLUA_TEST_HOOKS
 * undefined (CMake -DEVLUA_TEST_HOOKS=OFF, the default of -DEVLUA_TESTS=OFF)
 * every hook is an inline function that does nothing and returns 0: the
 * compiler removes the calls, and the binary holds none of the variables'
 * names. Never set them in production.
 *
 * The hooks (N counts the transactions of the process from 1):
 *   EVLUA_TEST_FAIL_BEFORE_COMMIT=N  the N-th transaction fails after its
 *       records reached the broker and before its commit, as if the
 *       commit had needed an abort (tests/c/test_cmd_abort.c).
 *   EVLUA_TEST_HANG_BEFORE_COMMIT=N  the process hangs there instead, with
 *       the transaction open: a crash in mid-transaction, once killed
 *       (tests/c/test_cmd_takeover.c).
 *   EVLUA_TEST_FAIL_IN_FLIGHT=N      the committer holds the N-th
 *       transaction 1.5 s after sending its offsets (the next batch is
 *       decided on top of it meanwhile), then fails it
 *       (tests/c/test_cmd_pipeline.c).
 *   EVLUA_TEST_HOLD_FILE=PATH        when PATH exists as a transaction is
 *       about to commit, it is removed, the transaction's records are
 *       flushed (so the broker knows the transaction) and it is held open
 *       for 2 s (tests/c/test_cmd_partition.c cuts the network then).
 *
 * Uses log (and librdkafka to flush a producer).
 *
 * @locality evl_testhooks_read once at start; the others on the thread
 * using the producer they are given.
 */
#ifndef EVL_TESTHOOKS_H
#define EVL_TESTHOOKS_H

#include <string.h>

#include <librdkafka/rdkafka.h>

typedef struct evl_testhooks {
    long fail_before_commit; /* EVLUA_TEST_FAIL_BEFORE_COMMIT; 0: off */
    long hang_before_commit; /* EVLUA_TEST_HANG_BEFORE_COMMIT; 0: off */
    long fail_in_flight;     /* EVLUA_TEST_FAIL_IN_FLIGHT; 0: off */
    const char *hold_file;   /* EVLUA_TEST_HOLD_FILE; NULL: off */
} evl_testhooks;

#ifdef EVLUA_TEST_HOOKS

#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static inline long evl_testhooks_long_(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : 0;
}

static inline void evl_testhooks_sleep_ms_(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Read every hook from the environment into h. */
static inline void evl_testhooks_read(evl_testhooks *h)
{
    memset(h, 0, sizeof *h);
    h->fail_before_commit =
        evl_testhooks_long_("EVLUA_TEST_FAIL_BEFORE_COMMIT");
    h->hang_before_commit =
        evl_testhooks_long_("EVLUA_TEST_HANG_BEFORE_COMMIT");
    h->fail_in_flight = evl_testhooks_long_("EVLUA_TEST_FAIL_IN_FLIGHT");
    h->hold_file = getenv("EVLUA_TEST_HOLD_FILE");
    if (h->hold_file && !*h->hold_file)
        h->hold_file = NULL;
}

/* Transaction txn (counted from 1) of producer rk has produced its records
 * and is about to commit: hang (never returns), hold it open, or return 1
 * when it must fail instead (as if the commit had needed an abort). */
static inline int evl_testhooks_before_commit(const evl_testhooks *h, long txn,
                                              rd_kafka_t *rk)
{
    if (h->hang_before_commit > 0 && txn == h->hang_before_commit) {
        rd_kafka_flush(rk, 30000);
        evl_log(EVL_LOG_WARN,
                "test hook EVLUA_TEST_HANG_BEFORE_COMMIT: hanging with an "
                "open transaction",
                NULL);
        for (;;)
            evl_testhooks_sleep_ms_(1000); /* until killed */
    }
    if (h->hold_file && unlink(h->hold_file) == 0) {
        /* the broker knows the transaction (its records are in the log):
         * a test cuts the network now, with the transaction open */
        rd_kafka_flush(rk, 30000);
        evl_log(EVL_LOG_WARN,
                "test hook EVLUA_TEST_HOLD_FILE: holding the transaction "
                "open for 2 s",
                NULL);
        evl_testhooks_sleep_ms_(2000);
    }
    if (h->fail_before_commit > 0 && txn == h->fail_before_commit) {
        rd_kafka_flush(rk, 30000); /* the records are in the log */
        evl_log(EVL_LOG_WARN,
                "test hook EVLUA_TEST_FAIL_BEFORE_COMMIT: failing this "
                "transaction before its commit",
                NULL);
        return 1;
    }
    return 0;
}

/* Is transaction txn the one EVLUA_TEST_FAIL_IN_FLIGHT names? */
static inline int evl_testhooks_fail_in_flight(const evl_testhooks *h, long txn)
{
    return h->fail_in_flight > 0 && txn == h->fail_in_flight;
}

/* The committer sent the offsets of a transaction of rk that
 * evl_testhooks_fail_in_flight named: let the next batch be decided on top
 * of it, then return 1 (it fails). */
static inline int evl_testhooks_in_flight(rd_kafka_t *rk)
{
    rd_kafka_flush(rk, 30000);
    evl_testhooks_sleep_ms_(1500);
    evl_log(EVL_LOG_WARN,
            "test hook EVLUA_TEST_FAIL_IN_FLIGHT: failing the transaction "
            "in flight",
            NULL);
    return 1;
}

#else /* no hooks: constants the compiler removes */

static inline void evl_testhooks_read(evl_testhooks *h)
{
    memset(h, 0, sizeof *h);
}

static inline int evl_testhooks_before_commit(const evl_testhooks *h, long txn,
                                              rd_kafka_t *rk)
{
    (void)h, (void)txn, (void)rk;
    return 0;
}

static inline int evl_testhooks_fail_in_flight(const evl_testhooks *h, long txn)
{
    (void)h, (void)txn;
    return 0;
}

static inline int evl_testhooks_in_flight(rd_kafka_t *rk)
{
    (void)rk;
    return 0;
}

#endif

#endif
