/* evl.c - error classes, aborting allocation, names, hash and clock
 * helpers (see evl.h). */
#include "evl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

const char *evl_err_name(evl_err e)
{
    switch (e) {
    case EVL_OK: return "ok";
    case EVL_ETRANSIENT: return "transient";
    case EVL_EPERMANENT: return "permanent";
    case EVL_EFATAL: return "fatal";
    }
    return "unknown";
}

evl_err evl_seterr(char *err, size_t errlen, evl_err cls, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return cls;
}

static void oom(size_t n)
{
    fprintf(stderr, "evlua: out of memory allocating %zu bytes\n", n);
    abort();
}

void *evl_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *evl_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *evl_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = evl_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

int evl_valid_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
            return 0;
    return 1;
}

uint64_t evl_hash(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

uint64_t evl_hash_str(const char *s)
{
    return evl_hash(s, strlen(s));
}

long long evl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void evl_thread_name(const char *prefix, const char *name)
{
    char b[16];
    snprintf(b, sizeof b, "%s%s", prefix ? prefix : "", name ? name : "");
    prctl(PR_SET_NAME, b, 0, 0, 0);
}
