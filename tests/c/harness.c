/*
 * harness.c - the one harness of evlua's C tests: processes, files, logs
 * and the broker, for whichever side a test exercises (harness.h).
 *
 * The idea: one implementation of what every test does, as SQLite's
 * tester.tcl is one harness for every subsystem; the side headers
 * (cmdtest.h, projtest.h) only add their private world on top.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "evl.h"
#include "kafka.h"

int th_died;

void th_die(const char *fmt, ...)
{
    va_list ap;
    th_died = 1;
    va_start(ap, fmt);
    fputs("FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

long long th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double th_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void th_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

long th_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

void th_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        th_die("cannot write %s: %s", path, strerror(errno));
}

char *th_read_file(const char *path, char *b, size_t n)
{
    FILE *f = fopen(path, "r");
    size_t len = f ? fread(b, 1, n - 1, f) : 0;
    b[len] = '\0';
    if (f)
        fclose(f);
    return b;
}

char *th_strndup(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

void th_remove_dir(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: cannot remove %s\n", dir);
}

int th_free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(s, (struct sockaddr *)&sa, &len) != 0)
        th_die("cannot find a free port");
    close(s);
    return ntohs(sa.sin_port);
}

/* ---- processes --------------------------------------------------------- */

pid_t th_spawn(const char *log, const char *env, const char *const argv[])
{
    pid_t pid;
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        th_die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(127);
        close(fd);
        if (env)
            putenv((char *)env);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

int th_wait(pid_t pid, int timeout_s)
{
    long long deadline = th_now_ms() + timeout_s * 1000LL;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, timeout_s < 0 ? 0 : WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status)
                                     : 128 + WTERMSIG(status);
        if (r < 0 && errno != EINTR)
            return -1;
        if (timeout_s < 0)
            continue;
        if (th_now_ms() > deadline)
            return -1;
        th_sleep_ms(50);
    }
}

void th_in_child(void (*fn)(void *arg, void *out), void *arg, void *out,
                 size_t size, const char *what)
{
    int fd[2];
    pid_t pid;
    if (pipe(fd) != 0)
        th_die("pipe: %s", strerror(errno));
    fflush(NULL);
    if ((pid = fork()) < 0)
        th_die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fd[0]);
        fn(arg, out);
        if (write(fd[1], out, size) != (ssize_t)size)
            _exit(1);
        _exit(0);
    }
    close(fd[1]);
    if (read(fd[0], out, size) != (ssize_t)size)
        th_die("%s: the child died", what);
    close(fd[0]);
    th_wait(pid, -1);
}

int th_stop(pid_t pid, int sig, int timeout_s)
{
    int rc;
    kill(pid, sig);
    rc = th_wait(pid, timeout_s);
    if (rc < 0) {
        kill(pid, SIGKILL);
        th_wait(pid, 10);
    }
    return rc;
}

/* ---- logs -------------------------------------------------------------- */

int th_file_has(const char *path, const char *text)
{
    char *buf;
    long n;
    int found;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    n = (long)fread(buf, 1, (size_t)n, f);
    buf[n] = '\0';
    fclose(f);
    found = strstr(buf, text) != NULL;
    free(buf);
    return found;
}

int th_log_count(const char *path, const char *needle)
{
    char line[8192];
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, needle))
            n++;
    if (f)
        fclose(f);
    return n;
}

int th_wait_log(const char *path, const char *needle, int count,
                long long timeout_ms)
{
    long long deadline = th_now_ms() + timeout_ms;
    for (;;) {
        int n = th_log_count(path, needle);
        if (n >= count || th_now_ms() > deadline)
            return n;
        th_sleep_ms(50);
    }
}

void th_dump_log(const char *path, const char *name)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "tail -n 40 %s >&2", path);
    fprintf(stderr, "--- last lines of %s\n", name);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
}

/* ---- HTTP -------------------------------------------------------------- */

/* Run curl with args on 127.0.0.1:port; its output into b. */
static const char *curl(const char *args, int port, const char *path, char *b,
                        size_t n)
{
    char cmd[512];
    FILE *f;
    snprintf(cmd, sizeof cmd, "curl -s -m 5 %shttp://127.0.0.1:%d%s", args,
             port, path);
    b[0] = '\0';
    if ((f = popen(cmd, "r"))) {
        size_t k = fread(b, 1, n - 1, f);
        b[k] = '\0';
        pclose(f);
    }
    return b;
}

const char *th_http_get(int port, const char *path, char *b, size_t n)
{
    return curl("", port, path, b, n);
}

const char *th_readyz(int port, char *b, size_t n)
{
    return curl("-w ' %{http_code}' ", port, "/readyz", b, n);
}

/* ---- Kafka ------------------------------------------------------------- */

rd_kafka_conf_t *th_kconf(const char *bootstrap)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    th_kset(conf, "bootstrap.servers", bootstrap);
    return conf;
}

void th_kset(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK)
        th_die("%s: %s", k, errstr);
}

rd_kafka_t *th_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t *conf,
                         const char *what)
{
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(type, conf, errstr, sizeof errstr);
    if (!rk)
        th_die("rd_kafka_new(%s): %s", what, errstr);
    return rk;
}

rd_kafka_t *th_consumer(const char *bootstrap, const char *group,
                        const char *isolation, const char *const *settings)
{
    rd_kafka_conf_t *conf = th_kconf(bootstrap);
    rd_kafka_t *rk;
    th_kset(conf, "group.id", group);
    th_kset(conf, "isolation.level", isolation);
    th_kset(conf, "enable.auto.commit", "false");
    for (; settings && settings[0]; settings += 2)
        th_kset(conf, settings[0], settings[1]);
    rk = th_kafka_new(RD_KAFKA_CONSUMER, conf, "consumer");
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

void th_kcheck(rd_kafka_error_t *error, const char *call)
{
    if (error)
        th_die("%s: %s", call, rd_kafka_error_string(error));
}

/* A client for metadata and admin requests. */
static rd_kafka_t *admin_client(const char *bootstrap)
{
    return th_kafka_new(RD_KAFKA_PRODUCER, th_kconf(bootstrap), "admin");
}

int th_partitions(const char *bootstrap, const char *topic)
{
    char err[EVL_ERRLEN];
    int n = 0;
    rd_kafka_t *rk = admin_client(bootstrap);
    if (evl_kafka_partitions(rk, topic, 10000, &n, err, sizeof err))
        th_die("metadata: %s", err);
    rd_kafka_destroy(rk);
    return n;
}

int th_wait_topic(const char *bootstrap, const char *topic, long timeout_ms)
{
    int n = 0;
    for (long i = 0;
         i < timeout_ms / 100 && (n = th_partitions(bootstrap, topic)) == 0;
         i++)
        th_sleep_ms(100);
    return n;
}

rd_kafka_resp_err_t th_create_topic(const char *bootstrap, const char *topic,
                                    int partitions, const char *const *config)
{
    char errstr[512];
    rd_kafka_t *rk = admin_client(bootstrap);
    rd_kafka_NewTopic_t *nt =
        rd_kafka_NewTopic_new(topic, partitions, 1, errstr, sizeof errstr);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    const rd_kafka_topic_result_t **res;
    size_t n;
    if (!nt)
        th_die("NewTopic %s: %s", topic, errstr);
    for (; config && config[0]; config += 2)
        rd_kafka_NewTopic_set_config(nt, config[0], config[1]);
    rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
    if (!(ev = rd_kafka_queue_poll(q, 30000)))
        th_die("CreateTopics(%s): no answer within 30 s", topic);
    if (rd_kafka_event_error(ev))
        th_die("CreateTopics(%s): %s", topic, rd_kafka_event_error_string(ev));
    res = rd_kafka_CreateTopics_result_topics(
        rd_kafka_event_CreateTopics_result(ev), &n);
    if (n == 1)
        e = rd_kafka_topic_result_error(res[0]);
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_destroy(rk);
    th_wait_topic(bootstrap, topic, 10000);
    return e;
}

/* ---- reading a topic back ---------------------------------------------- */

void th_recs_free(th_recs *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->v[i].key);
        free(r->v[i].value);
        cJSON_Delete(r->v[i].json);
    }
    free(r->v);
    memset(r, 0, sizeof *r);
}

/* Append message m to recs. */
static void add_rec(th_recs *recs, rd_kafka_message_t *m)
{
    th_rec *r;
    rd_kafka_headers_t *h;
    if (recs->n == recs->cap) {
        recs->cap = recs->cap ? 2 * recs->cap : 256;
        recs->v = realloc(recs->v, sizeof *recs->v * recs->cap);
    }
    r = &recs->v[recs->n++];
    memset(r, 0, sizeof *r);
    r->partition = m->partition;
    r->offset = m->offset;
    r->key = m->key ? th_strndup(m->key, m->key_len) : NULL;
    r->value = m->payload ? th_strndup(m->payload, m->len) : NULL;
    r->len = m->len;
    r->json = r->value ? cJSON_ParseWithLength(r->value, r->len) : NULL;
    if (rd_kafka_message_headers(m, &h) == 0) {
        evl_kafka_header(m, "evlua-type", r->h_type, sizeof r->h_type);
        evl_kafka_header(m, "evlua-aggregate-type", r->h_agg, sizeof r->h_agg);
        evl_kafka_header(m, "content-type", r->h_ct, sizeof r->h_ct);
    }
}

/* Stable order: by partition, then offset. */
static void sort_recs(th_recs *recs)
{
    for (size_t i = 1; i < recs->n; i++) {
        th_rec x = recs->v[i];
        size_t j = i;
        while (j > 0 && (recs->v[j - 1].partition > x.partition ||
                         (recs->v[j - 1].partition == x.partition &&
                          recs->v[j - 1].offset > x.offset))) {
            recs->v[j] = recs->v[j - 1];
            j--;
        }
        recs->v[j] = x;
    }
}

void th_read_all(const char *bootstrap, const char *group, const char *topic,
                 const char *isolation, th_recs *out)
{
    static const char *const settings[] = {"enable.partition.eof", "true",
                                           "fetch.wait.max.ms", "10", NULL};
    int n = th_partitions(bootstrap, topic), remaining;
    rd_kafka_t *rk;
    rd_kafka_topic_partition_list_t *parts;
    long long deadline = th_now_ms() + 60000;
    th_recs tmp = {0};

    th_recs_free(out);
    if (n == 0)
        return;
    rk = th_consumer(bootstrap, group, isolation, settings);
    parts = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, parts);
    remaining = n;
    while (remaining > 0) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (th_now_ms() > deadline)
            th_die("reading %s: no end of partition within 60 s", topic);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            rd_kafka_topic_partition_t *p =
                rd_kafka_topic_partition_list_find(parts, topic, m->partition);
            if (p && p->err == 0) {
                p->err = RD_KAFKA_RESP_ERR__PARTITION_EOF;
                remaining--;
            }
        } else if (m->err) {
            fprintf(stderr, "reading %s: %s\n", topic,
                    rd_kafka_message_errstr(m));
        } else {
            add_rec(&tmp, m);
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    sort_recs(&tmp);
    *out = tmp;
}

const char *th_str(const th_rec *r, const char *name)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(r->json, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

long long th_int(const th_rec *r, const char *name)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(r->json, name);
    return cJSON_IsNumber(v) ? (long long)v->valuedouble : -1;
}
