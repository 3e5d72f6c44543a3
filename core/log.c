/* log.c - logfmt lines on stderr (see log.h). */
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int level = -1; /* -1: not yet read from the environment */

static const char *names[] = {"debug", "info", "warn", "error"};

int evl_log_parse_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

evl_log_level evl_log_get_level(void)
{
    if (level < 0) {
        int l = evl_log_parse_level(getenv("EVLUA_LOG_LEVEL"));
        level = l < 0 ? EVL_LOG_INFO : l;
    }
    return (evl_log_level)level;
}

void evl_log_set_level(evl_log_level lvl)
{
    level = (int)lvl;
}

/* A line buffer that silently truncates: a log line is never worth a
 * crash or an allocation. */
typedef struct line {
    char buf[4096];
    size_t len;
} line;

static void put(line *ln, const char *s, size_t n)
{
    size_t room = sizeof(ln->buf) - 1 - ln->len; /* keep 1 for '\n' */
    if (n > room)
        n = room;
    memcpy(ln->buf + ln->len, s, n);
    ln->len += n;
}

static void puts_(line *ln, const char *s)
{
    put(ln, s, strlen(s));
}

/* logfmt value: bare when it has no space, quote, '=' or control byte;
 * otherwise double-quoted with \" \\ \n \t and \xNN escapes. */
static void putval(line *ln, const char *v)
{
    int bare = *v != '\0';
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f) {
            bare = 0;
            break;
        }
    if (bare) {
        puts_(ln, v);
        return;
    }
    put(ln, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': put(ln, "\\\"", 2); break;
        case '\\': put(ln, "\\\\", 2); break;
        case '\n': put(ln, "\\n", 2); break;
        case '\t': put(ln, "\\t", 2); break;
        default:
            if (*p < ' ' || *p == 0x7f) {
                snprintf(esc, sizeof esc, "\\x%02x", *p);
                puts_(ln, esc);
            } else {
                put(ln, (const char *)p, 1);
            }
        }
    }
    put(ln, "\"", 1);
}

static void begin(line *ln, evl_log_level lvl)
{
    struct timeval tv;
    struct tm tm;
    char ts[64];
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof ts,
             "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(tv.tv_usec / 1000));
    ln->len = 0;
    puts_(ln, ts);
    puts_(ln, names[lvl]);
}

static void emit(line *ln)
{
    ln->buf[ln->len++] = '\n';
    ssize_t off = 0;
    while ((size_t)off < ln->len) {
        ssize_t w = write(2, ln->buf + off, ln->len - (size_t)off);
        if (w <= 0)
            break;
        off += w;
    }
}

void evl_logv(evl_log_level lvl, const char *msg, va_list ap)
{
    line ln;
    if ((int)lvl < (int)evl_log_get_level())
        return;
    begin(&ln, lvl);
    puts_(&ln, " msg=");
    putval(&ln, msg ? msg : "");
    for (;;) {
        const char *k = va_arg(ap, const char *);
        const char *v;
        if (!k)
            break;
        v = va_arg(ap, const char *);
        put(&ln, " ", 1);
        puts_(&ln, k);
        put(&ln, "=", 1);
        putval(&ln, v ? v : "");
    }
    emit(&ln);
}

void evl_log(evl_log_level lvl, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    evl_logv(lvl, msg, ap);
    va_end(ap);
}

void evl_logf(evl_log_level lvl, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    if ((int)lvl < (int)evl_log_get_level())
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    evl_log(lvl, msg, (const char *)NULL);
}
