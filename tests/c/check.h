/*
 * check.h - the one tiny assert header of evlua's C tests.
 *
 * A test file is a main() that calls CHECK*() and ends with
 * `return check_done();`. A failing check prints file:line, what was
 * expected and what came, and the run goes on so one execution shows
 * every failure; the exit status is non-zero if any check failed.
 */
#ifndef EVL_CHECK_H
#define EVL_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures_;
static int check_count_;

#define CHECK_FAIL_(...)                                                       \
    do {                                                                       \
        check_failures_++;                                                     \
        fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);                  \
        fprintf(stderr, __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                   \
    } while (0)

/* CHECK(cond, "what it means") */
#define CHECK(cond, what)                                                      \
    do {                                                                       \
        check_count_++;                                                        \
        if (!(cond))                                                           \
            CHECK_FAIL_("%s (expected %s)", what, #cond);                      \
    } while (0)

#define CHECK_INT(got, want, what)                                             \
    do {                                                                       \
        long long g_ = (long long)(got), w_ = (long long)(want);               \
        check_count_++;                                                        \
        if (g_ != w_)                                                          \
            CHECK_FAIL_("%s: expected %lld, got %lld", what, w_, g_);          \
    } while (0)

#define CHECK_STR(got, want, what)                                             \
    do {                                                                       \
        const char *g_ = (got), *w_ = (want);                                  \
        check_count_++;                                                        \
        if (!g_ || !w_ || strcmp(g_, w_) != 0)                                 \
            CHECK_FAIL_("%s: expected \"%s\", got \"%s\"", what,               \
                        w_ ? w_ : "(null)", g_ ? g_ : "(null)");               \
    } while (0)

/* got contains the substring want */
#define CHECK_HAS(got, want, what)                                             \
    do {                                                                       \
        const char *g_ = (got), *w_ = (want);                                  \
        check_count_++;                                                        \
        if (!g_ || !strstr(g_, w_))                                            \
            CHECK_FAIL_("%s: expected text containing \"%s\", got \"%s\"",     \
                        what, w_, g_ ? g_ : "(null)");                         \
    } while (0)

static inline int check_done(void)
{
    fprintf(stderr, "%d checks, %d failed\n", check_count_, check_failures_);
    return check_failures_ ? 1 : 0;
}

#endif
