/*
 * test_metrics_flood.c - the metrics endpoint answers a probe while one
 * address floods it with slow requests (slowloris), closes every slow
 * request at its deadline however steadily it trickles bytes, and sends
 * libmicrohttpd's own messages through evlua's log.
 *
 * Before: about 1,020 connections sending one byte now and then kept
 * /healthz refused for the whole attack (the server's timeout restarts on
 * every byte), and its messages went straight to stderr.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "metrics.h"

#define ATTACKERS 1100

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A socket connected from address `from` to 127.0.0.1:port (non-blocking
 * once connected), or -1. */
static int dial(const char *from, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    inet_pton(AF_INET, from, &sa.sin_addr);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* GET /healthz from 127.0.0.1 with a 3 s limit; 1 when it answered 200. */
static int probe(int port)
{
    char buf[1024];
    size_t o = 0;
    ssize_t r;
    struct timeval tv = {3, 0};
    int fd = dial("127.0.0.1", port);
    if (fd < 0)
        return 0;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static const char req[] =
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) < 0) {
        close(fd);
        return 0;
    }
    while (o + 1 < sizeof buf &&
           (r = read(fd, buf + o, sizeof buf - 1 - o)) > 0)
        o += (size_t)r;
    buf[o] = '\0';
    close(fd);
    return strstr(buf, "HTTP/1.1 200") != NULL;
}

/* Has the server closed fd (end of stream or reset)? */
static int closed_by_server(int fd)
{
    char c;
    ssize_t r = read(fd, &c, 1);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

int main(void)
{
    char err[EVL_ERRLEN], logpath[] = "/tmp/evlua-metrics-flood-XXXXXX";
    static int fds[ATTACKERS];
    int port = 0, open_fds = 0, probes_ok = 0, probes = 0;

    signal(SIGPIPE, SIG_IGN); /* the server closes what we write to */
    int lfd = mkstemp(logpath);
    close(lfd);
    CHECK_INT(evl_log_open_file(logpath), 0, "log to a file");
    CHECK_INT(evl_metrics_serve("127.0.0.1:0", &port, err, sizeof err), EVL_OK,
              "the endpoint starts");

    /* the flood: every connection starts a request and never ends it */
    for (int i = 0; i < ATTACKERS; i++) {
        fds[i] = dial("127.0.0.2", port);
        if (fds[i] >= 0 && write(fds[i], "GET /healthz HTTP/1.1\r\n", 23) == 23)
            open_fds++;
    }
    CHECK(open_fds > 1000, "the flood connects");

    /* trickle a header byte on each every 250 ms for 4 s, probing now and
     * then from another address */
    long long t0 = now_ms();
    while (now_ms() - t0 < 4000) {
        for (int i = 0; i < ATTACKERS; i++)
            if (fds[i] >= 0 && write(fds[i], "X", 1) < 0 && errno != EAGAIN) {
                close(fds[i]);
                fds[i] = -1;
            }
        if ((now_ms() - t0) / 1000 >= probes) {
            probes++;
            probes_ok += probe(port);
        }
        sleep_ms(250);
    }
    CHECK_INT(probes_ok, probes, "every probe got 200 during the flood");

    /* past the whole-request deadline, however steady the trickle */
    while (now_ms() - t0 < 7000) {
        for (int i = 0; i < ATTACKERS; i++)
            if (fds[i] >= 0 && write(fds[i], "X", 1) < 0 && errno != EAGAIN) {
                close(fds[i]);
                fds[i] = -1;
            }
        sleep_ms(250);
    }
    int still = 0;
    for (int i = 0; i < ATTACKERS; i++)
        if (fds[i] >= 0) {
            still += !closed_by_server(fds[i]);
            close(fds[i]);
        }
    CHECK_INT(still, 0, "no slow request outlives its deadline");
    CHECK(probe(port), "and the endpoint still answers afterwards");

    /* libmicrohttpd's complaint about a taken port goes to evlua's log */
    int port2 = 0;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    evl_metrics_stop();
    int blocker = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int one = 1;
    setsockopt(blocker, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(blocker, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        listen(blocker, 1) == 0) {
        CHECK_INT(evl_metrics_serve(addr, &port2, err, sizeof err),
                  EVL_EPERMANENT, "a taken port is an error");
        FILE *f = fopen(logpath, "r");
        char text[8192] = "";
        size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
        text[n] = '\0';
        if (f)
            fclose(f);
        CHECK_HAS(text, "msg=\"metrics endpoint\"",
                  "libmicrohttpd's message is a line of evlua's log");
    } else {
        CHECK(0, "could not take the port again to test the log");
    }
    close(blocker);
    evl_metrics_stop();
    unlink(logpath);
    evl_metrics_reset();
    return check_done();
}
