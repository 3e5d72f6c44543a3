/*
 * bench_gateway.c - the command gateway's throughput and latency against
 * the same commands produced straight to Kafka, in one run, against one
 * `evlua run` (the binary in EVLUA_BIN) serving both (gateway.listen set).
 *
 *   bench_gateway SECONDS CONNECTIONS AGGREGATES [FLOOD [BATCH]]
 *
 * Six phases, SECONDS each, 1-event commands to AGGREGATES aggregates:
 *
 *   gateway    CONNECTIONS keep-alive HTTP/1.1 connections on loopback (a
 *              small C client, one thread each), each sending POST
 *              /v1/commands and waiting for its answer: CONNECTIONS
 *              commands in flight; latency = request written -> answer
 *              read.
 *   gateway async  the same connections sending with ?timeout_ms=0: each
 *              answer (202) comes once Kafka has the command; two rates:
 *              the 202s per second, and the results evlua made of them
 *              (read from the results topic, first to last, as the flood
 *              phase counts); every 202 must have its result.
 *   gateway batch  the same connections sending POST /v1/batch with
 *              BATCH commands each (default 100) and waiting for all their
 *              results: CONNECTIONS x BATCH commands in flight; latency =
 *              batch written -> its answer read.
 *   direct     the same commands built with envelope.c and produced with
 *              the murmur2 partitioner (as the gateway and `evlua send`
 *              do), CONNECTIONS in flight: a new one each time a result
 *              of ours arrives at a read_committed consumer of the
 *              results topic; latency = produce call -> result read.
 *              Run twice: with CONNECTIONS in flight, and with the batch
 *              phase's CONNECTIONS x BATCH.
 *   flood      FLOOD commands (default 50,000) produced at once, as
 *              bench_cmd's throughput run preloads them: commands/s from
 *              the first result to the last; evlua's ceiling, no bound
 *              on what is in flight, and the commands are in Kafka before
 *              the clock starts (every other phase pays for producing
 *              them while it is timed).
 *
 * Prints one key=value line per phase (with the command side's mean
 * batch, transaction and batch size from its /metrics over the phase:
 * where a waiting request's time goes) and a table with each path's
 * commands/s, p50/p99 and its ratio to the direct path at equal
 * concurrency and to the flood. Exit 0 when every phase answered every
 * command it sent.
 */
#define _GNU_SOURCE /* memmem, strcasestr */
#include <netinet/tcp.h>

#include "envelope.h"
#include "gwtest.h"

static const char bench_lua[] =
    "return {\n"
    "  type = 'bench',\n"
    "  initial = function() return { n = 0 } end,\n"
    "  apply = { Counted = function(s, e) s.n = s.n + 1 end },\n"
    "  handle = {\n"
    "    One = function(s, cmd)\n"
    "      return { { type = 'Counted', data = { by = cmd.data.by } } }\n"
    "    end,\n"
    "  },\n"
    "}\n";

static ct t;
static int port, mport, nconn, naggs, batch = 100;
static double seconds;

typedef struct lat {
    double *v;
    size_t n, cap;
} lat;

static void lat_add(lat *l, double ms)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4096;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = ms;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(lat *l, double p)
{
    if (!l->n)
        return -1;
    qsort(l->v, l->n, sizeof *l->v, cmp_double);
    size_t i = (size_t)(p * (double)(l->n - 1));
    return l->v[i];
}

typedef struct result {
    const char *path;
    int inflight;
    size_t n;
    double secs, p50, p99;
    int errors;
} result;

static void report(result *r, lat *l)
{
    r->p50 = pct(l, 0.50);
    r->p99 = pct(l, 0.99);
    printf("path=%s inflight=%d commands=%zu seconds=%.2f cmds_per_s=%.0f "
           "p50_ms=%.2f p99_ms=%.2f errors=%d\n",
           r->path, r->inflight, r->n, r->secs, (double)r->n / r->secs, r->p50,
           r->p99, r->errors);
    fflush(stdout);
}

/* ---- the command side's own account, from its /metrics --------------- */

typedef struct snap {
    double batch_s, batch_n, txn_s, txn_n, size_s, size_n;
} snap;

static double metric(const char *m, const char *name)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(m, pat);
    return p ? atof(p + strlen(pat)) : 0;
}

static void snap_take(snap *s)
{
    static char m[1 << 20];
    th_http_get(mport, "/metrics", m, sizeof m);
    s->batch_s = metric(m, "evlua_command_batch_seconds_sum");
    s->batch_n = metric(m, "evlua_command_batch_seconds_count");
    s->txn_s = metric(m, "evlua_command_transaction_seconds_sum");
    s->txn_n = metric(m, "evlua_command_transaction_seconds_count");
    s->size_s = metric(m, "evlua_command_batch_size_sum");
    s->size_n = metric(m, "evlua_command_batch_size_count");
}

/* The means over the phase since *s0. */
static void snap_report(const char *path, const snap *s0)
{
    snap s1;
    snap_take(&s1);
    double bn = s1.batch_n - s0->batch_n, tn = s1.txn_n - s0->txn_n;
    double sn = s1.size_n - s0->size_n;
    printf("path=%s evlua_batch_mean_ms=%.1f evlua_txn_mean_ms=%.1f "
           "evlua_batch_size_mean=%.1f evlua_txns=%.0f\n",
           path, bn > 0 ? 1000 * (s1.batch_s - s0->batch_s) / bn : -1,
           tn > 0 ? 1000 * (s1.txn_s - s0->txn_s) / tn : -1,
           sn > 0 ? (s1.size_s - s0->size_s) / sn : -1, tn);
    fflush(stdout);
}

/* ---- the gateway: keep-alive HTTP clients --------------------------- */

typedef struct client {
    pthread_t th;
    int i;
    lat l;
    size_t n;
    int errors;
} client;

static volatile int stop_clients;
static int async_phase; /* ?timeout_ms=0, 202 expected */
static int batch_phase; /* POST /v1/batch with batch commands each */

/* Read one HTTP response from s into buf; returns its status (0: closed
 * or malformed). */
static int read_response(int s, char *buf, size_t cap)
{
    size_t got = 0;
    char *hend = NULL;
    while (!hend) {
        ssize_t k = recv(s, buf + got, cap - 1 - got, 0);
        if (k <= 0)
            return 0;
        got += (size_t)k;
        buf[got] = '\0';
        hend = strstr(buf, "\r\n\r\n");
    }
    int status = atoi(buf + 9);
    const char *cl = strcasestr(buf, "\r\nContent-Length:");
    size_t body = cl ? (size_t)atol(cl + 17) : 0;
    size_t need = (size_t)(hend + 4 - buf) + body;
    while (got < need) {
        ssize_t k = recv(s, buf + got, cap - 1 - got, 0);
        if (k <= 0)
            return 0;
        got += (size_t)k;
    }
    return status;
}

static void *client_main(void *arg)
{
    client *c = arg;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        th_die("connect: %s", strerror(errno));
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int per = batch_phase ? batch : 1;
    size_t cap = 512 * (size_t)per + 1024, bufcap = 1024 * (size_t)per + 8192;
    char *req = malloc(cap), *body = malloc(cap), *buf = malloc(bufcap);
    for (unsigned long k = 0; !stop_clients; k++) {
        int bl = 0;
        if (batch_phase)
            bl += snprintf(body, cap, "{\"commands\":[");
        for (int j = 0; j < per; j++) {
            unsigned long n = k * (unsigned long)per + (unsigned long)j;
            bl += snprintf(body + bl, cap - (size_t)bl,
                           "%s{\"id\":\"%s-%d-%lu\",\"aggregate_type\":"
                           "\"bench\",\"aggregate_id\":\"a-%lu\",\"type\":"
                           "\"One\",\"data\":{\"by\":1}}",
                           j ? "," : "",
                           async_phase   ? "ga"
                           : batch_phase ? "gb"
                                         : "g",
                           c->i, n, (c->i * 7919UL + n) % (unsigned long)naggs);
        }
        if (batch_phase)
            bl += snprintf(body + bl, cap - (size_t)bl, "]}");
        int rl = snprintf(req, cap,
                          "POST %s%s HTTP/1.1\r\nHost: bench\r\n"
                          "Content-Type: application/json\r\n"
                          "Content-Length: %d\r\n\r\n%s",
                          batch_phase ? "/v1/batch" : "/v1/commands",
                          async_phase ? "?timeout_ms=0" : "", bl, body);
        double t0 = th_now();
        if (send(s, req, (size_t)rl, MSG_NOSIGNAL) != rl)
            th_die("send to the gateway failed");
        int st = read_response(s, buf, bufcap);
        int ok = 0; /* commands answered as expected */
        if (batch_phase && st == 200)
            for (const char *p = buf; (p = strstr(p, "\"http_status\":200"));
                 p++)
                ok++;
        else if (st == (async_phase ? 202 : 200))
            ok = 1;
        if (ok != per) {
            c->errors++;
            if (c->errors < 3)
                fprintf(stderr, "gateway answered %d (%d of %d): %.300s\n", st,
                        ok, per, buf);
            if (st == 0)
                break;
            continue;
        }
        lat_add(&c->l, (th_now() - t0) * 1000);
        c->n += (size_t)per;
    }
    free(req);
    free(body);
    free(buf);
    close(s);
    return NULL;
}

static void run_direct_results(result *r, size_t sent, double t_end);

/* The gateway phase; async: with ?timeout_ms=0, and the results of the
 * 202s counted into *res (NULL otherwise); with batches of batch
 * commands when batched. */
static void run_gateway(result *r, result *res, int batched)
{
    client *cs = calloc((size_t)nconn, sizeof *cs);
    lat all = {0};
    snap s0;
    snap_take(&s0);
    stop_clients = 0;
    async_phase = res != NULL;
    batch_phase = batched;
    for (int i = 0; i < nconn; i++) {
        cs[i].i = i;
        pthread_create(&cs[i].th, NULL, client_main, &cs[i]);
    }
    double t0 = th_now();
    if (res)
        run_direct_results(res, 0, t0 + seconds);
    else
        th_sleep_ms((long)(seconds * 1000));
    stop_clients = 1;
    r->n = 0;
    for (int i = 0; i < nconn; i++) {
        pthread_join(cs[i].th, NULL);
        r->n += cs[i].n;
        r->errors += cs[i].errors;
        for (size_t k = 0; k < cs[i].l.n; k++)
            lat_add(&all, cs[i].l.v[k]);
        free(cs[i].l.v);
    }
    r->secs = th_now() - t0;
    r->path = res       ? "gateway async (202s)"
              : batched ? "gateway batch"
                        : "gateway";
    r->inflight = batched ? nconn * batch : nconn;
    report(r, &all);
    if (res) /* every 202's result, however long after the phase */
        run_direct_results(res, r->n, th_now() + 120);
    snap_report(r->path, &s0);
    free(all.v);
    free(cs);
}

/* ---- direct: produce to Kafka, read the results --------------------- */

static rd_kafka_t *producer, *consumer;
static char commands[256], results[256];

static void open_direct(void)
{
    rd_kafka_conf_t *conf = th_kconf(t.bootstrap);
    th_kset(conf, "partitioner", "murmur2_random");
    th_kset(conf, "enable.idempotence", "true");
    th_kset(conf, "linger.ms", "1");
    producer = th_kafka_new(RD_KAFKA_PRODUCER, conf, "producer");
    consumer =
        th_consumer(t.bootstrap, "bench-gw-direct", "read_committed", NULL);
    int n = th_partitions(t.bootstrap, results);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(l, results, p)->offset =
            RD_KAFKA_OFFSET_END;
    rd_kafka_assign(consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Send command seq of the phase tag. */
static void send_direct(const char *tag, unsigned long seq)
{
    char id[64], agg[32];
    evl_buf cmd = {0};
    snprintf(id, sizeof id, "%s-%lu", tag, seq);
    snprintf(agg, sizeof agg, "a-%lu", (seq * 7919UL) % (unsigned long)naggs);
    evl_envelope_command_in c = {.id = id,
                                 .type = "One",
                                 .aggregate_type = "bench",
                                 .aggregate_id = agg,
                                 .data = "{\"by\":1}",
                                 .data_len = 8};
    evl_envelope_command(&cmd, &c);
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(commands),
                                    RD_KAFKA_V_KEY(agg, strlen(agg)),
                                    RD_KAFKA_V_VALUE(cmd.data, cmd.len),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_END)) ==
           RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(producer, 10);
    if (err)
        th_die("produce: %s", rd_kafka_err2str(err));
    evl_buf_free(&cmd);
}

/* The sequence number of a result of the phase tag, or -1. */
static long result_seq(const rd_kafka_message_t *m, const char *tag)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"command_id\":\"%s-", tag);
    const char *p = memmem(m->payload, m->len, pat, strlen(pat));
    return p ? atol(p + strlen(pat)) : -1;
}

/* Count the results of the async phase (ids "ga-...") into r until
 * t_end, or, with sent > 0, until sent of them came: commands/s from the
 * first to the last, as the flood counts them. */
static void run_direct_results(result *r, size_t sent, double t_end)
{
    static double first, last;
    static size_t done;
    if (!sent)
        first = last = 0, done = 0;
    while (th_now() < t_end && (!sent || done < sent)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 20);
        if (!m)
            continue;
        if (!m->err && result_seq(m, "ga") >= 0) {
            last = th_now();
            if (!done++)
                first = last;
        }
        rd_kafka_message_destroy(m);
    }
    if (!sent)
        return;
    r->path = "gateway async (results)";
    r->inflight = nconn;
    r->n = done > 0 ? done - 1 : 0;
    r->secs = last > first ? last - first : 1;
    r->errors = (int)(sent - (done < sent ? done : sent));
    lat none = {0};
    report(r, &none);
    r->p50 = r->p99 = -1;
}

/* CONNECTIONS (inflight) commands in flight, tagged tag. */
static void run_direct(result *r, const char *tag, int inflight)
{
    snap s0;
    snap_take(&s0);
    size_t cap = 1 << 22;
    double *sent = calloc(cap, sizeof *sent);
    lat l = {0};
    unsigned long next = 0;
    for (; next < (unsigned long)inflight; next++) {
        sent[next] = th_now();
        send_direct(tag, next);
    }
    double t0 = th_now(), end = t0 + seconds;
    size_t done = 0;
    while (th_now() < end) {
        rd_kafka_poll(producer, 0);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 5);
        if (!m)
            continue;
        long s = m->err ? -1 : result_seq(m, tag);
        rd_kafka_message_destroy(m);
        if (s < 0 || (size_t)s >= cap)
            continue;
        lat_add(&l, (th_now() - sent[s]) * 1000);
        done++;
        if (next < cap) {
            sent[next] = th_now();
            send_direct(tag, next++);
        }
    }
    r->secs = th_now() - t0;
    r->n = done;
    r->path =
        inflight == nconn ? "direct" : "direct, the batch phase's in flight";
    r->inflight = inflight;
    report(r, &l);
    snap_report(r->path, &s0);
    /* let the commands still in flight finish before the next phase */
    for (double q = th_now() + 10; done < next && th_now() < q;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 50);
        if (m) {
            if (!m->err && result_seq(m, tag) >= 0)
                done++;
            rd_kafka_message_destroy(m);
        }
    }
    free(l.v);
    free(sent);
}

static void run_flood(result *r, unsigned long n)
{
    lat l = {0};
    snap s0;
    snap_take(&s0);
    for (unsigned long i = 0; i < n; i++)
        send_direct("f", i);
    rd_kafka_flush(producer, 60000);
    double first = 0, last = 0, end = th_now() + 120;
    size_t done = 0;
    while (done < n && th_now() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 50);
        if (!m)
            continue;
        if (!m->err && result_seq(m, "f") >= 0) {
            last = th_now();
            if (!done++)
                first = last;
        }
        rd_kafka_message_destroy(m);
    }
    r->path = "direct flood";
    r->inflight = (int)n;
    r->n = done > 0 ? done - 1 : 0; /* between the first and the last */
    r->secs = last > first ? last - first : 1;
    r->errors = (int)(n - done);
    report(r, &l);
    snap_report(r->path, &s0);
    r->p50 = r->p99 = -1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_gateway SECONDS CONNECTIONS AGGREGATES "
                        "[FLOOD [BATCH]]\n");
        return 2;
    }
    seconds = atof(argv[1]);
    nconn = atoi(argv[2]);
    naggs = atoi(argv[3]);
    unsigned long flood = argc > 4 ? strtoul(argv[4], NULL, 10) : 50000;
    if (argc > 5)
        batch = atoi(argv[5]);
    if (batch < 1)
        th_die("BATCH must be at least 1");
    mport = th_free_port();
    char gwcfg[256];
    port = th_free_port();
    ct_init(&t, "bench-gw");
    ct_write_file(&t, "aggregates/bench.lua", bench_lua);
    ct_topic(&t, "bench", "commands", commands, sizeof commands);
    ct_topic(&t, "bench", "results", results, sizeof results);
    /* every command of the batch phase may wait at once */
    snprintf(gwcfg, sizeof gwcfg,
             "listen = '127.0.0.1:%d', max_waiters = %d, max_body = %d", port,
             nconn * batch + 4096, 16777216);
    gw_config(&t, "r", "r", mport, gwcfg);
    pid_t rpid = ct_start(&t, "r", "r.log", NULL);
    if (!gw_wait_ready(mport, 120))
        th_die("the gateway did not become ready");
    open_direct();
    /* warm up both paths (connections, metadata, the processor) */
    double s0 = seconds;
    seconds = 1;
    result w1 = {0}, w2 = {0};
    run_gateway(&w1, NULL, 0);
    run_direct(&w2, "w", nconn);
    seconds = s0;

    result g = {0}, ga = {0}, gr = {0}, gb = {0}, d = {0}, db = {0}, f = {0};
    run_gateway(&g, NULL, 0);
    run_gateway(&ga, &gr, 0);
    run_gateway(&gb, NULL, 1);
    run_direct(&d, "d", nconn);
    run_direct(&db, "db", nconn * batch);
    run_flood(&f, flood);

    double fr = (double)f.n / f.secs;
    /* each path against the direct path with as many commands in flight
     * (the async rows: the same 64 connections), and against the flood */
    printf("\n| path | in flight | commands/s | p50 ms | p99 ms | vs direct, "
           "same in flight | vs flood |\n|---|---|---|---|---|---|---|\n");
    result *rs[] = {&g, &ga, &gr, &gb, &d, &db, &f};
    result *base[] = {&d, &d, &d, &db, &d, &db, NULL};
    for (int i = 0; i < 7; i++) {
        double cps = (double)rs[i]->n / rs[i]->secs;
        char p50[16] = "-", p99[16] = "-", vs[16] = "-";
        if (rs[i]->p50 >= 0) {
            snprintf(p50, sizeof p50, "%.1f", rs[i]->p50);
            snprintf(p99, sizeof p99, "%.1f", rs[i]->p99);
        }
        if (base[i])
            snprintf(vs, sizeof vs, "%.0f %%",
                     100 * cps / ((double)base[i]->n / base[i]->secs));
        printf("| %s | %d | %.0f | %s | %s | %s | %.0f %% |\n", rs[i]->path,
               rs[i]->inflight, cps, p50, p99, vs, 100 * cps / fr);
    }
    fflush(stdout);

    rd_kafka_consumer_close(consumer);
    rd_kafka_destroy(consumer);
    rd_kafka_destroy(producer);
    th_stop(rpid, SIGTERM, 30);
    int bad = g.errors || ga.errors || gr.errors || gb.errors || f.errors ||
              g.n == 0 || ga.n == 0 || gb.n == 0 || d.n == 0 || db.n == 0;
    if (bad)
        ct_dump_log(&t, "r.log");
    return bad;
}
