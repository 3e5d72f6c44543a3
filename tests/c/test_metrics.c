/*
 * test_metrics.c - metrics render as Prometheus text, readiness turns the
 * endpoint's /readyz to 503 with the reason, and the HTTP endpoint serves
 * all three paths.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "metrics.h"

/* GET path from 127.0.0.1:port; the whole response into buf. */
static void http_get(int port, const char *path, char *buf, size_t n)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    buf[0] = '\0';
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return;
    }
    char req[256];
    snprintf(req, sizeof req,
             "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, strlen(req)) < 0) {
        close(fd);
        return;
    }
    size_t o = 0;
    ssize_t r;
    while (o + 1 < n && (r = read(fd, buf + o, n - 1 - o)) > 0)
        o += (size_t)r;
    buf[o] = '\0';
    close(fd);
}

int main(void)
{
    char labels[256], buf[16384], err[EVL_ERRLEN];

    evl_metrics_labels(labels, sizeof labels, "type", "Register", "outcome",
                       "acc\"epted", (const char *)NULL);
    CHECK_STR(labels, "type=\"Register\",outcome=\"acc\\\"epted\"",
              "label values are quoted and escaped");

    evl_metric *c =
        evl_metrics_counter("evlua_commands_total", "Commands handled", labels);
    evl_metric_add(c, 2);
    CHECK(evl_metrics_counter("evlua_commands_total", NULL, labels) == c,
          "the same name and labels give the same handle");
    evl_metric_add(evl_metrics_counter("evlua_commands_total", NULL,
                                       "type=\"X\",outcome=\"rejected\""),
                   1);
    evl_metric *h = evl_metrics_histogram("evlua_batch_seconds",
                                          "Batch latency", NULL, NULL, 0);
    evl_metric_observe(h, 0.003);
    evl_metric_observe(h, 0.2);
    evl_metric *g = evl_metrics_gauge("evlua_lua_memory_bytes", "Lua heap",
                                      "pipeline=\"commands\"");
    evl_metric_set(g, 1234);

    char *text = evl_metrics_render();
    CHECK_HAS(text,
              "# HELP evlua_commands_total Commands handled\n"
              "# TYPE evlua_commands_total counter\n"
              "evlua_commands_total{type=\"Register\",outcome=\"acc\\\"epted\"}"
              " 2\n"
              "evlua_commands_total{type=\"X\",outcome=\"rejected\"} 1\n",
              "one HELP/TYPE per name, then each series");
    CHECK_HAS(text, "evlua_batch_seconds_bucket{le=\"0.0025\"} 0\n",
              "a bucket below both observations is 0");
    CHECK_HAS(text, "evlua_batch_seconds_bucket{le=\"0.005\"} 1\n",
              "buckets are cumulative");
    CHECK_HAS(text, "evlua_batch_seconds_bucket{le=\"+Inf\"} 2\n",
              "+Inf counts everything");
    CHECK_HAS(text, "evlua_batch_seconds_count 2\n", "histogram count");
    CHECK_HAS(text, "evlua_lua_memory_bytes{pipeline=\"commands\"} 1234\n",
              "gauges render their value");
    free(text);

    CHECK_INT(evl_metrics_readiness(buf, sizeof buf), 1,
              "with no component registered, the process is ready");
    evl_metrics_ready("commands", 1, "assigned 3 partitions");
    evl_metrics_ready("projection customer_profile", 0,
                      "PostgreSQL unreachable: connection refused");
    CHECK_INT(evl_metrics_readiness(buf, sizeof buf), 0,
              "one unready component makes the process unready");
    CHECK_HAS(buf,
              "\"projection customer_profile\":{\"ready\":false,"
              "\"reason\":\"PostgreSQL unreachable: connection "
              "refused\"}",
              "the body says which component and why");

    int port = 0;
    CHECK_INT(evl_metrics_serve("127.0.0.1:0", &port, err, sizeof err), EVL_OK,
              "the endpoint starts on a free port");
    CHECK(port > 0, "and reports the port");
    http_get(port, "/metrics", buf, sizeof buf);
    CHECK_HAS(buf, "HTTP/1.1 200", "/metrics answers 200");
    CHECK_HAS(buf, "text/plain; version=0.0.4", "in the Prometheus format");
    CHECK_HAS(buf, "evlua_commands_total{type=\"X\",outcome=\"rejected\"} 1",
              "with the metrics");
    http_get(port, "/healthz", buf, sizeof buf);
    CHECK_HAS(buf, "HTTP/1.1 200", "/healthz answers 200");
    http_get(port, "/readyz", buf, sizeof buf);
    CHECK_HAS(buf, "HTTP/1.1 503", "/readyz answers 503 when unready");
    CHECK_HAS(buf, "PostgreSQL unreachable", "naming the reason");
    evl_metrics_ready("projection customer_profile", 1, "connected");
    http_get(port, "/readyz", buf, sizeof buf);
    CHECK_HAS(buf, "HTTP/1.1 200", "/readyz answers 200 once ready again");
    http_get(port, "/nope", buf, sizeof buf);
    CHECK_HAS(buf, "HTTP/1.1 404", "unknown paths are 404");

    CHECK_INT(evl_metrics_serve("localhost:x", &port, err, sizeof err),
              EVL_EPERMANENT, "a bad listen address is an error");
    CHECK_HAS(err, "metrics.listen", "naming the setting");
    evl_metrics_stop();
    evl_metrics_stop();
    evl_metrics_reset();

    /* a pipeline's script set: the initial load, a failed and an applied
     * reload */
    evl_metrics_scripts("commands", NULL, NULL, "aaaa");
    evl_metrics_scripts("commands", "failed", NULL, NULL);
    evl_metrics_scripts("commands", "applied", "aaaa", "bbbb");
    evl_metrics_scripts("commands", "applied", "bbbb", "bbbb");
    text = evl_metrics_render();
    CHECK_HAS(text,
              "evlua_scripts_info{pipeline=\"commands\",hash=\"aaaa\"} 0\n",
              "the replaced hash goes to 0");
    CHECK_HAS(text,
              "evlua_scripts_info{pipeline=\"commands\",hash=\"bbbb\"} 1\n",
              "the loaded hash is 1");
    CHECK_HAS(text,
              "evlua_script_reloads_total{pipeline=\"commands\","
              "outcome=\"applied\"} 2\n",
              "applied reloads are counted (also one without changes)");
    CHECK_HAS(text,
              "evlua_script_reloads_total{pipeline=\"commands\","
              "outcome=\"failed\"} 1\n",
              "failed reloads are counted");
    free(text);
    evl_metrics_reset();
    return check_done();
}
