/*
 * metrics.c - registry, Prometheus rendering and the HTTP endpoint (see
 * metrics.h).
 *
 * Metrics live in one list guarded by one mutex; handles are never freed
 * while the process runs, so pipelines can keep them. Values are doubles
 * updated under the same mutex: updates happen per event at most, far
 * below what a mutex costs to matter.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "log.h"

typedef enum kind { COUNTER, GAUGE, HISTOGRAM } kind;

struct evl_metric {
    kind kind;
    char *name, *help, *labels;
    double value;
    double *buckets; /* upper bounds */
    double *counts;  /* per bucket, not cumulative */
    size_t nbuckets;
    double sum, count;
    struct evl_metric *next;
};

typedef struct ready_entry {
    char *component;
    int ready;
    char *reason;
    struct ready_entry *next;
} ready_entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static evl_metric *metrics, *metrics_tail;
static ready_entry *readies;
static char ready_hint[400]; /* mu; "" none */
static long long ready_hint_ms;

/*
 * The HTTP endpoint runs libmicrohttpd in "external polling" mode on a
 * thread of ours, so the connection table below is touched by that thread
 * only (MHD calls every callback from MHD_run_wait). A probe must get
 * through whatever clients do:
 *
 *   - each request has a whole-request deadline (REQUEST_DEADLINE_MS from
 *     its connection's accept or the end of its previous request): MHD's
 *     own timeout restarts on every byte, so a client sending one byte a
 *     second (slowloris) would hold a connection forever. A connection past
 *     its deadline is shut down; MHD then sees the end and closes it;
 *   - one address holds at most PER_IP connections;
 *   - the last RESERVE of MAX_CONNS slots go only to addresses holding
 *     none, so clients on other addresses (the kubelet's probe, a
 *     Prometheus scraper) always find a slot while one address floods.
 *     Two clients on one address are indistinguishable: see
 *     docs/operations.md.
 */
#define MAX_CONNS           128
#define PER_IP              16
#define RESERVE             16
#define REQUEST_DEADLINE_MS 5000
#define IDLE_TIMEOUT_S      5u

typedef struct conn_entry {
    struct MHD_Connection *conn;
    struct sockaddr_storage addr;
    long long since_ms; /* accept, or the end of the last request */
    int shut;
    struct conn_entry *next;
} conn_entry;

static struct MHD_Daemon *daemon_;
static pthread_t server_thread;
static volatile int server_stop;
static conn_entry *conns;
static int nconns;

static const double default_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                         0.025,  0.05,  0.1,    0.25,  0.5,
                                         1,      2.5,   5,      10};

static evl_metric *get(kind k, const char *name, const char *help,
                       const char *labels, const double *buckets, size_t nb)
{
    if (!labels)
        labels = "";
    pthread_mutex_lock(&mu);
    evl_metric *m;
    for (m = metrics; m; m = m->next)
        if (strcmp(m->name, name) == 0 && strcmp(m->labels, labels) == 0)
            goto out;
    m = evl_xmalloc(sizeof *m);
    memset(m, 0, sizeof *m);
    m->kind = k;
    m->name = evl_xstrdup(name);
    m->help = evl_xstrdup(help ? help : "");
    m->labels = evl_xstrdup(labels);
    if (k == HISTOGRAM) {
        if (!buckets) {
            buckets = default_buckets;
            nb = sizeof default_buckets / sizeof default_buckets[0];
        }
        m->nbuckets = nb;
        m->buckets = evl_xmalloc(sizeof(double) * nb);
        memcpy(m->buckets, buckets, sizeof(double) * nb);
        m->counts = evl_xmalloc(sizeof(double) * nb);
        memset(m->counts, 0, sizeof(double) * nb);
    }
    /* keep metrics of one name together, in order of first use */
    evl_metric *after = NULL;
    for (evl_metric *p = metrics; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            after = p;
    if (after) {
        m->next = after->next;
        after->next = m;
        if (metrics_tail == after)
            metrics_tail = m;
    } else if (metrics_tail) {
        metrics_tail->next = m;
        metrics_tail = m;
    } else {
        metrics = metrics_tail = m;
    }
out:
    pthread_mutex_unlock(&mu);
    return m;
}

evl_metric *evl_metrics_counter(const char *name, const char *help,
                                const char *labels)
{
    return get(COUNTER, name, help, labels, NULL, 0);
}

evl_metric *evl_metrics_gauge(const char *name, const char *help,
                              const char *labels)
{
    return get(GAUGE, name, help, labels, NULL, 0);
}

evl_metric *evl_metrics_histogram(const char *name, const char *help,
                                  const char *labels, const double *buckets,
                                  size_t nbuckets)
{
    return get(HISTOGRAM, name, help, labels, buckets, nbuckets);
}

void evl_metric_add(evl_metric *m, double v)
{
    pthread_mutex_lock(&mu);
    m->value += v;
    pthread_mutex_unlock(&mu);
}

void evl_metric_set(evl_metric *m, double v)
{
    pthread_mutex_lock(&mu);
    m->value = v;
    pthread_mutex_unlock(&mu);
}

void evl_metric_observe(evl_metric *m, double v)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < m->nbuckets; i++)
        if (v <= m->buckets[i]) {
            m->counts[i] += 1;
            break;
        }
    m->sum += v;
    m->count += 1;
    pthread_mutex_unlock(&mu);
}

double evl_metric_value(const evl_metric *m)
{
    pthread_mutex_lock(&mu);
    double v = m->value;
    pthread_mutex_unlock(&mu);
    return v;
}

char *evl_metrics_labels(char *buf, size_t n, ...)
{
    va_list ap;
    size_t o = 0;
    if (n == 0)
        return buf;
    buf[0] = '\0';
    va_start(ap, n);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (!v)
            v = "";
        o += (size_t)snprintf(buf + o, o < n ? n - o : 0, "%s%s=\"",
                              o ? "," : "", k);
        for (const char *p = v; *p && o + 3 < n; p++) {
            if (*p == '"' || *p == '\\') {
                buf[o++] = '\\';
                buf[o++] = *p;
            } else if (*p == '\n') {
                buf[o++] = '\\';
                buf[o++] = 'n';
            } else {
                buf[o++] = *p;
            }
        }
        if (o + 1 < n)
            buf[o++] = '"';
        buf[o < n ? o : n - 1] = '\0';
    }
    va_end(ap);
    return buf;
}

static void appendf(char **s, size_t *len, size_t *cap, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int w = vsnprintf(*s + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if ((size_t)w < *cap - *len) {
            *len += (size_t)w;
            return;
        }
        *cap = *cap * 2 + (size_t)w;
        *s = evl_xrealloc(*s, *cap);
    }
}

/* Prometheus wants labels joined with le for buckets. */
static void bucket_labels(char *buf, size_t n, const char *labels,
                          const char *le)
{
    snprintf(buf, n, "%s%sle=\"%s\"", labels, *labels ? "," : "", le);
}

char *evl_metrics_render(void)
{
    size_t len = 0, cap = 4096;
    char *s = evl_xmalloc(cap);
    s[0] = '\0';
    static const char *const types[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&mu);
    const char *last = NULL;
    for (evl_metric *m = metrics; m; m = m->next) {
        if (!last || strcmp(last, m->name) != 0) {
            appendf(&s, &len, &cap, "# HELP %s %s\n# TYPE %s %s\n", m->name,
                    m->help, m->name, types[m->kind]);
            last = m->name;
        }
        const char *open = *m->labels ? "{" : "",
                   *close = *m->labels ? "}" : "";
        if (m->kind != HISTOGRAM) {
            appendf(&s, &len, &cap, "%s%s%s%s %.17g\n", m->name, open,
                    m->labels, close, m->value);
            continue;
        }
        double cum = 0;
        char lb[1024], le[64];
        for (size_t i = 0; i < m->nbuckets; i++) {
            cum += m->counts[i];
            snprintf(le, sizeof le, "%g", m->buckets[i]);
            bucket_labels(lb, sizeof lb, m->labels, le);
            appendf(&s, &len, &cap, "%s_bucket{%s} %.17g\n", m->name, lb, cum);
        }
        bucket_labels(lb, sizeof lb, m->labels, "+Inf");
        appendf(&s, &len, &cap, "%s_bucket{%s} %.17g\n", m->name, lb, m->count);
        appendf(&s, &len, &cap, "%s_sum%s%s%s %.17g\n%s_count%s%s%s %.17g\n",
                m->name, open, m->labels, close, m->sum, m->name, open,
                m->labels, close, m->count);
    }
    pthread_mutex_unlock(&mu);
    return s;
}

void evl_metrics_ready(const char *component, int ready, const char *reason)
{
    pthread_mutex_lock(&mu);
    ready_entry *r;
    for (r = readies; r; r = r->next)
        if (strcmp(r->component, component) == 0)
            break;
    if (!r) {
        r = evl_xmalloc(sizeof *r);
        memset(r, 0, sizeof *r);
        r->component = evl_xstrdup(component);
        r->next = readies;
        readies = r;
    }
    if (r->ready != ready || !r->reason ||
        strcmp(r->reason, reason ? reason : "") != 0) {
        free(r->reason);
        r->reason = evl_xstrdup(reason ? reason : "");
        r->ready = ready;
    }
    pthread_mutex_unlock(&mu);
}

void evl_metrics_ready_hint(const char *why)
{
    pthread_mutex_lock(&mu);
    snprintf(ready_hint, sizeof ready_hint, "%s", why ? why : "");
    ready_hint_ms = evl_now_ms();
    pthread_mutex_unlock(&mu);
}

static void json_str(char *buf, size_t n, size_t *o, const char *s)
{
    if (*o + 1 < n)
        buf[(*o)++] = '"';
    for (; *s && *o + 7 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*o)++] = '\\';
            buf[(*o)++] = (char)c;
        } else if (c < 0x20) {
            *o += (size_t)snprintf(buf + *o, n - *o, "\\u%04x", c);
        } else {
            buf[(*o)++] = (char)c;
        }
    }
    if (*o + 1 < n)
        buf[(*o)++] = '"';
    buf[*o < n ? *o : n - 1] = '\0';
}

int evl_metrics_readiness(char *buf, size_t n)
{
    size_t o = 0;
    int all = 1;
    pthread_mutex_lock(&mu);
    for (ready_entry *r = readies; r; r = r->next)
        if (!r->ready)
            all = 0;
    o += (size_t)snprintf(buf, n, "{\"ready\":%s,\"components\":{",
                          all ? "true" : "false");
    int hint =
        ready_hint[0] && evl_now_ms() - ready_hint_ms < EVL_METRICS_HINT_MS;
    for (ready_entry *r = readies; r && o + 64 < n; r = r->next) {
        json_str(buf, n, &o, r->component);
        o += (size_t)snprintf(buf + o, n - o, ":{\"ready\":%s,\"reason\":",
                              r->ready ? "true" : "false");
        if (hint && !r->ready && strcmp(r->reason, "starting") == 0) {
            char why[512];
            snprintf(why, sizeof why, "starting: %s", ready_hint);
            json_str(buf, n, &o, why);
        } else {
            json_str(buf, n, &o, r->reason);
        }
        o += (size_t)snprintf(buf + o, n - o, "}%s", r->next ? "," : "");
    }
    if (o + 3 < n) {
        buf[o++] = '}';
        buf[o++] = '}';
        buf[o] = '\0';
    }
    pthread_mutex_unlock(&mu);
    return all;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn,
                              const char *url, const char *method,
                              const char *version, const char *upload,
                              size_t *upload_len, void **con_cls)
{
    struct MHD_Response *res;
    unsigned status = MHD_HTTP_OK;
    const char *ctype = "application/json";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static const char msg[] = "{\"error\":\"method not allowed\"}";
        res = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg,
                                              MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics") == 0) {
        char *body = evl_metrics_render();
        res = MHD_create_response_from_buffer(strlen(body), body,
                                              MHD_RESPMEM_MUST_FREE);
        ctype = "text/plain; version=0.0.4; charset=utf-8";
    } else if (strcmp(url, "/healthz") == 0) {
        static const char msg[] = "{\"status\":\"alive\"}";
        res = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg,
                                              MHD_RESPMEM_PERSISTENT);
    } else if (strcmp(url, "/readyz") == 0) {
        char *body = evl_xmalloc(16384);
        if (!evl_metrics_readiness(body, 16384))
            status = MHD_HTTP_SERVICE_UNAVAILABLE;
        res = MHD_create_response_from_buffer(strlen(body), body,
                                              MHD_RESPMEM_MUST_FREE);
    } else {
        static const char msg[] = "{\"error\":\"not found: try /metrics, "
                                  "/healthz or /readyz\"}";
        res = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg,
                                              MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    }
    MHD_add_response_header(res, "Content-Type", ctype);
    enum MHD_Result r = MHD_queue_response(conn, status, res);
    MHD_destroy_response(res);
    return r;
}

static int same_host(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return 0;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->sa_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr,
                      sizeof(struct in6_addr)) == 0;
    return 0;
}

/* Called before MHD accepts a connection: the per-address cap and the
 * reserve (see the top of the file). */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr,
                                     socklen_t addrlen)
{
    int mine = 0;
    (void)cls;
    (void)addrlen;
    for (conn_entry *c = conns; c; c = c->next)
        mine += same_host((const struct sockaddr *)&c->addr, addr);
    if (mine >= PER_IP || nconns >= MAX_CONNS ||
        (mine > 0 && nconns >= MAX_CONNS - RESERVE))
        return MHD_NO;
    return MHD_YES;
}

static void notify_connection(void *cls, struct MHD_Connection *conn,
                              void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
    (void)cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_entry *c = evl_xmalloc(sizeof *c);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        memset(c, 0, sizeof *c);
        c->conn = conn;
        c->since_ms = evl_now_ms();
        if (ci && ci->client_addr)
            memcpy(&c->addr, ci->client_addr,
                   ci->client_addr->sa_family == AF_INET6
                       ? sizeof(struct sockaddr_in6)
                       : sizeof(struct sockaddr_in));
        c->next = conns;
        conns = c;
        nconns++;
        *socket_context = c;
        return;
    }
    for (conn_entry **pc = &conns; *pc; pc = &(*pc)->next)
        if (*pc == *socket_context) {
            conn_entry *c = *pc;
            *pc = c->next;
            free(c);
            nconns--;
            break;
        }
    *socket_context = NULL;
}

/* A request is answered: the next one on this connection gets a new
 * deadline. */
static void request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    (void)cls;
    (void)con_cls;
    (void)toe;
    if (ci && ci->socket_context)
        ((conn_entry *)ci->socket_context)->since_ms = evl_now_ms();
}

/* Shut down the connections past their deadline (MHD closes them when it
 * next sees their sockets end). */
static void reap(void)
{
    long long now = evl_now_ms();
    for (conn_entry *c = conns; c; c = c->next) {
        if (c->shut || now - c->since_ms < REQUEST_DEADLINE_MS)
            continue;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci)
            shutdown(ci->connect_fd, SHUT_RDWR);
        c->shut = 1;
    }
}

static void *serve(void *arg)
{
    (void)arg;
    evl_thread_name("evl:metrics", NULL);
    while (!server_stop) {
        MHD_run_wait(daemon_, 100);
        reap();
    }
    return NULL;
}

/* libmicrohttpd's own messages go through evlua's logger (log.file,
 * log.format), not straight to stderr. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    size_t n;
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    /* a client that hangs up or is cut off is the flood defence at work,
     * not news: one such line per connection would swamp the log */
    evl_log(strstr(line, "onnection") ? EVL_LOG_DEBUG : EVL_LOG_WARN,
            "metrics endpoint", "error", line, NULL);
}

evl_err evl_metrics_serve(const char *listen, int *port, char *err,
                          size_t errlen)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "metrics.listen \"%s\": expected HOST:PORT", listen);
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "metrics.listen \"%s\": bad port", listen);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)p);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "metrics.listen \"%s\": HOST must be an IPv4 "
                          "address",
                          listen);
    daemon_ = MHD_start_daemon(
        MHD_USE_AUTO | MHD_USE_ERROR_LOG, (uint16_t)p, accept_policy, NULL,
        answer, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_TIMEOUT, IDLE_TIMEOUT_S,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNS,
        MHD_OPTION_NOTIFY_CONNECTION, notify_connection, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL, MHD_OPTION_END);
    if (!daemon_)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "cannot listen on %s (in use or not allowed)",
                          listen);
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : (int)p;
    server_stop = 0;
    if (pthread_create(&server_thread, NULL, serve, NULL) != 0) {
        MHD_stop_daemon(daemon_);
        daemon_ = NULL;
        return evl_seterr(err, errlen, EVL_EFATAL,
                          "cannot start the metrics thread");
    }
    return EVL_OK;
}

void evl_metrics_stop(void)
{
    if (!daemon_)
        return;
    server_stop = 1;
    pthread_join(server_thread, NULL);
    MHD_stop_daemon(daemon_); /* closes what is open: notify frees it */
    daemon_ = NULL;
}

void evl_metrics_scripts(const char *pipeline, const char *outcome,
                         const char *old_hash, const char *new_hash)
{
    static const char info_help[] =
        "Script set of a pipeline: 1 for the loaded hash, 0 for replaced ones";
    char labels[512];
    if (outcome) {
        evl_metrics_labels(labels, sizeof labels, "pipeline", pipeline,
                           "outcome", outcome, NULL);
        evl_metric_add(evl_metrics_counter("evlua_script_reloads_total",
                                           "Script reloads, by outcome",
                                           labels),
                       1);
    }
    if (old_hash && new_hash && strcmp(old_hash, new_hash) != 0) {
        evl_metrics_labels(labels, sizeof labels, "pipeline", pipeline, "hash",
                           old_hash, NULL);
        evl_metric_set(
            evl_metrics_gauge("evlua_scripts_info", info_help, labels), 0);
    }
    if (new_hash) {
        evl_metrics_labels(labels, sizeof labels, "pipeline", pipeline, "hash",
                           new_hash, NULL);
        evl_metric_set(
            evl_metrics_gauge("evlua_scripts_info", info_help, labels), 1);
    }
}

void evl_metrics_reset(void)
{
    pthread_mutex_lock(&mu);
    while (metrics) {
        evl_metric *m = metrics;
        metrics = m->next;
        free(m->name);
        free(m->help);
        free(m->labels);
        free(m->buckets);
        free(m->counts);
        free(m);
    }
    metrics_tail = NULL;
    while (readies) {
        ready_entry *r = readies;
        readies = r->next;
        free(r->component);
        free(r->reason);
        free(r);
    }
    pthread_mutex_unlock(&mu);
}
