/* log.c - logfmt lines on stderr (see log.h). */
#include "log.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int level = -1; /* -1: not yet read from the environment */
static int format = EVL_LOG_LOGFMT;
static int log_fd = 2;
static char log_path[4096]; /* for reopening from the signal handler */

void evl_log_set_format(evl_log_format f)
{
    format = (int)f;
}

int evl_log_open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    snprintf(log_path, sizeof log_path, "%s", path);
    if (log_fd != 2)
        close(log_fd);
    log_fd = fd;
    return 0;
}

/* Open the path again (logrotate moved the old file away) and put it in
 * place of the old descriptor; open/dup2/close are async-signal-safe, and
 * dup2 swaps atomically for concurrent writers. */
void evl_log_reopen(void)
{
    if (!log_path[0])
        return;
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return;
    dup2(fd, log_fd);
    close(fd);
}

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

static int oneshot;

void evl_log_oneshot(int verbose)
{
    oneshot = 1;
    if (evl_log_parse_level(getenv("EVLUA_LOG_LEVEL")) >= 0)
        return; /* the environment wins, as for `run` */
    level = verbose >= 2   ? EVL_LOG_DEBUG
            : verbose == 1 ? EVL_LOG_INFO
                           : EVL_LOG_WARN;
}

int evl_log_is_oneshot(void)
{
    return oneshot;
}

evl_log_level evl_log_lib(evl_log_level lvl)
{
    return oneshot && lvl > EVL_LOG_INFO ? EVL_LOG_INFO : lvl;
}

/* A line buffer that silently truncates: a log line is never worth a
 * crash or an allocation. */
typedef struct line {
    char buf[4096];
    size_t len;
} line;

static void put(line *ln, const char *s, size_t n)
{
    size_t room = sizeof(ln->buf) - 2 - ln->len; /* keep "}\n" */
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

/* JSON string with escapes; bytes >= 0x80 pass through (the callers log
 * UTF-8). */
static void putjson(line *ln, const char *v)
{
    put(ln, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            put(ln, "\\", 1);
            put(ln, (const char *)p, 1);
        } else if (*p < ' ' || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            puts_(ln, esc);
        } else {
            put(ln, (const char *)p, 1);
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
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    ln->len = 0;
    if (format == EVL_LOG_JSON) {
        puts_(ln, "{\"ts\":\"");
        puts_(ln, ts);
        puts_(ln, "\",\"level\":\"");
        puts_(ln, names[lvl]);
        put(ln, "\"", 1);
        return;
    }
    puts_(ln, "ts=");
    puts_(ln, ts);
    puts_(ln, " level=");
    puts_(ln, names[lvl]);
}

static void emit(line *ln)
{
    if (format == EVL_LOG_JSON) {
        if (ln->len > sizeof(ln->buf) - 3) /* truncated: close it validly */
            ln->len = sizeof(ln->buf) - 3;
        ln->buf[ln->len++] = '}';
    }
    ln->buf[ln->len++] = '\n';
    ssize_t off = 0;
    while ((size_t)off < ln->len) {
        ssize_t w = write(log_fd, ln->buf + off, ln->len - (size_t)off);
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
    int json = format == EVL_LOG_JSON;
    puts_(&ln, json ? ",\"msg\":" : " msg=");
    (json ? putjson : putval)(&ln, msg ? msg : "");
    for (;;) {
        const char *k = va_arg(ap, const char *);
        const char *v;
        if (!k)
            break;
        v = va_arg(ap, const char *);
        if (json) {
            put(&ln, ",", 1);
            putjson(&ln, k);
            put(&ln, ":", 1);
            putjson(&ln, v ? v : "");
            continue;
        }
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
