/*
 * test_config_limits.c - the config file runs under limits: a config that
 * loops, allocates without end or matches a backtracking pattern stops
 * with an error naming the file and the limit, and `evlua check` exits 2
 * on it, instead of hanging.
 *
 * Each load runs in a child process under alarm(), so a config that
 * still hangs fails this test instead of hanging the suite.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "config.h"

#define BOUND_S 25 /* the config's own limit is 10 s of wall clock */

static char path[64];

static void write_config(const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* Loads text in a child; returns its evl_err, or -1 if the child hung
 * (SIGALRM) or died. err gets the message, *secs the wall time. */
static int load_bounded(const char *text, char *err, size_t errlen,
                        double *secs)
{
    int fd[2];
    struct timespec t0, t1;
    write_config(text);
    if (pipe(fd) != 0)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid == 0) {
        evl_config cfg;
        char e[EVL_ERRLEN] = "";
        close(fd[0]);
        alarm(BOUND_S);
        evl_err r = evl_config_load(path, &cfg, e, sizeof e);
        evl_config_free(&cfg);
        if (write(fd[1], e, strlen(e)) < 0)
            _exit(100);
        _exit((int)r);
    }
    close(fd[1]);
    ssize_t n = read(fd[0], err, errlen - 1);
    err[n > 0 ? n : 0] = '\0';
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *secs = (double)(t1.tv_sec - t0.tv_sec) +
            (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (!WIFEXITED(status)) {
        snprintf(err, errlen, "the load was killed by signal %d%s",
                 WIFSIGNALED(status) ? WTERMSIG(status) : 0,
                 WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM
                     ? " (it hung)"
                     : "");
        return -1;
    }
    return WEXITSTATUS(status);
}

/* The load stops with a permanent error naming the file and one of the
 * limits in the '|'-separated list (a slow machine or valgrind may reach
 * the time limit before the instruction limit). */
static void stops(const char *text, const char *limits, const char *what)
{
    char err[EVL_ERRLEN], one[64];
    double secs;
    int r = load_bounded(text, err, sizeof err, &secs), named = 0;
    for (const char *p = limits; *p;) {
        size_t n = strcspn(p, "|");
        snprintf(one, sizeof one, "%.*s", (int)n, p);
        if (strstr(err, one))
            named = 1;
        p += n + (p[n] == '|');
    }
    check_count_++;
    if (r != EVL_EPERMANENT)
        CHECK_FAIL_("%s: expected a permanent error, got %d: %s", what, r, err);
    else if (!strstr(err, path) || !named)
        CHECK_FAIL_("%s: expected a message naming %s and \"%s\", got \"%s\"",
                    what, path, limits, err);
    else
        fprintf(stderr, "ok %s (%.1f s): %s\n", what, secs, err);
}

/* `evlua check -c path` in a child bounded by alarm; its exit status. */
static int evlua_check(const char *bin, char *out, size_t outlen)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        dup2(fd[1], 1);
        alarm(BOUND_S);
        execl(bin, bin, "check", "-c", path, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t o = 0;
    ssize_t n;
    while (o + 1 < outlen && (n = read(fd[0], out + o, outlen - 1 - o)) > 0)
        o += (size_t)n;
    out[o] = '\0';
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int main(void)
{
    char err[EVL_ERRLEN];
    double secs;
    snprintf(path, sizeof path, "/tmp/evlua-test-climits-%ld.lua",
             (long)getpid());
    unsetenv("EVLUA_PG_CONNINFO");
    unsetenv("EVLUA_INSTANCE");

    stops("while true do end", "instruction limit|time limit",
          "a config that loops forever");
    stops("while true do pcall(function() while true do end end) end",
          "instruction limit|time limit",
          "a loop that catches the limit's error");
    stops("local t = {}\nfor i = 1, 1e10 do t[i] = ('x'):rep(100) .. i end",
          "memory limit|time limit", "a config that allocates without end");
    stops("local s = string.rep('x', 1 << 30)", "memory limit",
          "one huge string");
    stops("local s = string.rep('a', 20000)\n"
          "return { lib = tostring(s:find('.-.-.-b')) }",
          "instruction limit|time limit", "a backtracking string pattern");
    stops("for i = 1, 1e7 do local s = string.rep('x', 30e6) end",
          "time limit|instruction limit",
          "allocation-heavy work past the time limit");

    /* validation reads lengths raw: a __len that loops is not called */
    int r = load_bounded("return { aggregates = setmetatable({}, { __len = "
                         "function() while true do end end }) }",
                         err, sizeof err, &secs);
    CHECK(r == EVL_OK || r == EVL_EPERMANENT,
          "a looping __len on a config list neither hangs nor crashes");

    /* a normal config that computes a little still loads */
    r = load_bounded("local n = 0\nfor i = 1, 1e6 do n = n + i end\n"
                     "local parts = {}\n"
                     "for i = 1, 1e4 do parts[#parts + 1] = tostring(i) end\n"
                     "return { lib = ('x'):rep(3) .. #table.concat(parts),\n"
                     "  commands = { group_id = ('g.x'):gsub('%.', '-') } }",
                     err, sizeof err, &secs);
    CHECK_INT(r, EVL_OK, "a config that computes a little loads");

    /* the binary: evlua check exits 2 (a configuration error) */
    const char *bin = getenv("EVLUA_BIN");
    if (!bin) {
        CHECK(0, "EVLUA_BIN is set (ctest sets it)");
    } else {
        char out[4096];
        write_config("while true do end");
        CHECK_INT(evlua_check(bin, out, sizeof out), 2,
                  "evlua check on a looping config exits 2");
        CHECK_HAS(out, "limit (", "saying which limit");
    }
    unlink(path);
    return check_done();
}
