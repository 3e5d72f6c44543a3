/*
 * test_log.c - log lines are logfmt that parses back: one line per call,
 * values quoted and escaped when they need it, levels filter.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "evl.h"
#include "lifecycle.h"
#include "log.h"

static int pipefd[2];
static int saved_stderr;

/* Redirect fd 2 into a pipe for the duration of one log call and return
 * what was written (NUL-terminated) in buf. */
static void capture_begin(void)
{
    if (pipe(pipefd) != 0)
        exit(2);
    saved_stderr = dup(2);
    dup2(pipefd[1], 2);
}

static void capture_end(char *buf, size_t n)
{
    dup2(saved_stderr, 2);
    close(saved_stderr);
    close(pipefd[1]);
    ssize_t got = read(pipefd[0], buf, n - 1);
    buf[got > 0 ? got : 0] = '\0';
    close(pipefd[0]);
}

int main(void)
{
    char out[8192];

    evl_log_set_level(EVL_LOG_INFO);
    capture_begin();
    evl_log(EVL_LOG_INFO, "scripts loaded", "hash", "ab12", "n", "3",
            (const char *)NULL);
    capture_end(out, sizeof out);
    CHECK(strncmp(out, "ts=", 3) == 0, "a line starts with the timestamp");
    CHECK_HAS(out, "Z level=info msg=\"scripts loaded\" hash=ab12 n=3\n",
              "fields follow the quoted message in order");
    CHECK(strchr(out, '\n') == out + strlen(out) - 1,
          "one call writes exactly one line");

    capture_begin();
    evl_log(EVL_LOG_WARN, "x", "err", "a \"b\"\nc\\d\x01", "empty", "", "nul",
            (const char *)NULL, (const char *)NULL);
    capture_end(out, sizeof out);
    CHECK_HAS(out, "err=\"a \\\"b\\\"\\nc\\\\d\\x01\"",
              "quotes, newlines, backslashes and control bytes are escaped");
    CHECK_HAS(out, "empty=\"\" nul=\"\"\n",
              "empty and NULL values print as empty quoted strings");

    capture_begin();
    evl_log(EVL_LOG_DEBUG, "hidden", (const char *)NULL);
    evl_logf(EVL_LOG_ERROR, "failed after %d tries", 3);
    capture_end(out, sizeof out);
    CHECK(strstr(out, "hidden") == NULL, "debug lines are dropped at info");
    CHECK_HAS(out, "level=error msg=\"failed after 3 tries\"",
              "evl_logf formats its message");

    char big[10000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    capture_begin();
    evl_log(EVL_LOG_INFO, "big", "v", big, (const char *)NULL);
    capture_end(out, sizeof out);
    CHECK(strlen(out) <= 4096 && out[strlen(out) - 1] == '\n',
          "an oversized line is truncated, still one line ending in \\n");

    CHECK_INT(evl_log_parse_level("warn"), EVL_LOG_WARN, "parse warn");
    CHECK_INT(evl_log_parse_level("loud"), -1, "unknown level names");
    CHECK_STR(evl_err_name(EVL_ETRANSIENT), "transient", "error class name");
    char err[16];
    CHECK_INT(evl_seterr(err, sizeof err, EVL_EPERMANENT, "%s",
                         "0123456789abcdefXYZ"),
              EVL_EPERMANENT, "evl_seterr returns the class");
    CHECK_STR(err, "0123456789abcde", "evl_seterr truncates into the buffer");
    /* JSON lines */
    evl_log_set_format(EVL_LOG_JSON);
    capture_begin();
    evl_log(EVL_LOG_INFO, "a \"q\"", "k", "v\n1", (const char *)NULL);
    capture_end(out, sizeof out);
    CHECK(strncmp(out, "{\"ts\":\"", 7) == 0, "a JSON line is an object");
    CHECK_HAS(
        out,
        "\"level\":\"info\",\"msg\":\"a \\\"q\\\"\",\"k\":\"v\\u000a1\"}\n",
        "fields are JSON strings, escaped");
    evl_log_set_format(EVL_LOG_LOGFMT);

    /* a log file, reopened on SIGUSR1 after rotation */
    char path[64], rotated[80];
    snprintf(path, sizeof path, "/tmp/evlua-test-log-%ld.log", (long)getpid());
    snprintf(rotated, sizeof rotated, "%s.1", path);
    CHECK_INT(evl_log_open_file(path), 0, "the log file opens");
    CHECK_INT(evl_lifecycle_install_reopen(), 0, "SIGUSR1 handler installs");
    evl_log(EVL_LOG_INFO, "before rotation", (const char *)NULL);
    rename(path, rotated);
    raise(SIGUSR1);
    evl_log(EVL_LOG_INFO, "after rotation", (const char *)NULL);
    FILE *f = fopen(rotated, "r");
    size_t n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    CHECK_HAS(out, "before rotation", "the old file has the old lines");
    CHECK(strstr(out, "after rotation") == NULL, "and not the new ones");
    f = fopen(path, "r");
    n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    CHECK_HAS(out, "after rotation", "SIGUSR1 reopened the path");
    unlink(path);
    unlink(rotated);
    return check_done();
}
