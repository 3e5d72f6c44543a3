/*
 * evl.h - what every evlua module shares: the error classes, small
 * helpers for caller-owned error buffers, aborting allocation, the name
 * check, the one table hash and the monotonic clock.
 *
 * A fallible function returns EVL_OK or the class of its failure, so the
 * caller can act without parsing text: retry a transient error, park the
 * aggregate on a permanent one, exit on a fatal one. The human-readable
 * detail goes into a buffer the caller owns (err, errlen), so reporting
 * never allocates.
 */
#ifndef EVL_H
#define EVL_H

#include <stddef.h>
#include <stdint.h>

typedef enum evl_err {
    EVL_OK = 0,
    EVL_ETRANSIENT = 1, /* may succeed if tried again: retry with backoff */
    EVL_EPERMANENT = 2, /* this input will never succeed: reject or park */
    EVL_EFATAL = 3      /* the process cannot go on: log and exit */
} evl_err;

/* The process exit codes, the only ones evlua returns: every subcommand
 * and both pipelines' run functions return one of these. */
#define EVL_EXIT_OK      0 /* done, or stopped by a signal */
#define EVL_EXIT_FAILURE 1 /* a runtime failure (logged) */
#define EVL_EXIT_USAGE   2 /* a usage or configuration error (printed) */

/* Size of the error buffers callers keep on their stack. */
#define EVL_ERRLEN 512

/* "transient", "permanent", "fatal" or "ok". Never NULL. */
const char *evl_err_name(evl_err e);

/* snprintf into err (when err is non-NULL and errlen > 0), then return
 * cls. Lets error paths read `return evl_seterr(err, errlen, EVL_EPERMANENT,
 * "...", ...);`. */
evl_err evl_seterr(char *err, size_t errlen, evl_err cls, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* malloc/realloc/strdup that abort the process on exhaustion (the C heap
 * running out is not something evlua can recover from; only the capped
 * Lua allocator returns NULL). */
void *evl_xmalloc(size_t n);
void *evl_xrealloc(void *p, size_t n);
char *evl_xstrdup(const char *s);

/* Is s a name evlua accepts for what ends up in topic, consumer group,
 * table and group.instance.id names (aggregate types, projections, the
 * instance): non-empty, letters, digits, '.', '_', '-' only (Kafka's
 * topic alphabet)? */
int evl_valid_name(const char *s);

/* The one hash of evlua's own tables (the store, the statement cache, the
 * projector's checkpoint map): 64-bit FNV-1a of the n bytes at p. Not for
 * anything that must match another program (Kafka's partitioner is
 * kafka.h's murmur2). */
uint64_t evl_hash(const void *p, size_t n);

/* Milliseconds on CLOCK_MONOTONIC: for deadlines and durations, never
 * for wall-clock time. Any thread. */
long long evl_now_ms(void);

/* evl_hash() of the NUL-terminated string s (its bytes, not the NUL). */
uint64_t evl_hash_str(const char *s);

/* Name the calling thread prefix + name (either may be NULL), cut to the
 * 15 bytes Linux keeps: what top -H, perf and /proc/PID/task/TID/comm
 * show, so an operator sees which pipeline a thread is. */
void evl_thread_name(const char *prefix, const char *name);

#endif
