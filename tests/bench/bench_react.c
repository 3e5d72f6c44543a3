/*
 * bench_react.c - throughput and latency of the reaction side against the
 * real broker, driving a real `evlua run` (the binary in EVLUA_BIN) that
 * runs one reactor and nothing else (commands.enabled = false, no
 * database): the figures are the reactor's alone, not shared with a
 * command side deciding the commands it sends.
 *
 * The world: a source aggregate type `src` whose events the benchmark
 * writes itself, as the command side writes them (the envelope of
 * envelope.h, keyed by the aggregate id, partitioned by murmur2, the
 * evlua-type / evlua-aggregate-type headers the reactor's filter reads,
 * in Kafka transactions), and an aggregate type `bench` whose react table
 * turns each `src.Happened` event into one `Do` command on
 * bench.commands. Both topics have 6 partitions.
 *
 *   bench_react throughput EVENTS BATCH_SIZE AGGREGATES
 *       Preload EVENTS events of AGGREGATES source aggregates (one
 *       transaction per 1,000 events, as the command side's batches),
 *       start evlua run with reactions.batch_size = BATCH_SIZE (0: evlua's
 *       default) and read bench.commands read_committed until every
 *       event's command is there: reactions/s = commands between the
 *       first and the last one / the time between their record
 *       timestamps (evlua's producer stamps them), so start-up is not
 *       counted. Also: the commands' mean size (the ceiling's record
 *       size), duplicates seen (must be 0) and evlua's CPU per reaction
 *       (all its threads, from the first command to the last).
 *   bench_react latency RATE SECONDS AGGREGATES
 *       With the reactor running, write RATE events per second for
 *       SECONDS the way the command side does at that rate (linger 0: a
 *       transaction takes the events due, commits, takes the ones that
 *       came due meanwhile); for each event, the time from its
 *       transaction's commit returning to its command arriving at a
 *       read_committed consumer: p50, p99, p99.9, max; the same from the
 *       event's produce call; and the split at the command record's
 *       timestamp: to_command (the source commit -> the reactor produced
 *       the command: the markers, its fetch, the batch in flight, Lua)
 *       and to_visible (-> visible: the reactor's commit, the reader's
 *       fetch), p50 and p99 in ms (wall clock, ms resolution).
 *   bench_react smoke
 *       A short throughput run and a short latency run, for ctest.
 *
 * Environment: EVLUA_BENCH_LINGER_MS sets reactions.linger_ms;
 * EVLUA_BENCH_DEBUG=1 runs evlua at debug level.
 *
 * Output: one line of "key=value" per run (scripts/bench-react makes the
 * table). Exit 0 when every command came exactly once and evlua stopped
 * cleanly. Needs the broker (svc.h), EVLUA_BIN and EVLUA_SOURCE_DIR.
 */
#define _GNU_SOURCE /* memmem */
#include <pthread.h>

#include "buf.h"
#include "cmdtest.h"
#include "envelope.h"

static const char src_lua[] =
    "-- bench_react's source aggregate: the benchmark writes its events\n"
    "return {\n"
    "  type = 'src',\n"
    "  initial = function() return {} end,\n"
    "  apply = { Happened = function(s, e) end },\n"
    "  handle = {\n"
    "    Happen = function(s, cmd)\n"
    "      return { { type = 'Happened', data = cmd.data } }\n"
    "    end,\n"
    "  },\n"
    "}\n";

static const char bench_lua[] =
    "-- bench_react's reacting aggregate: one command per source event\n"
    "return {\n"
    "  type = 'bench',\n"
    "  initial = function() return { n = 0 } end,\n"
    "  apply = { Done = function(s, e) s.n = s.n + 1 end },\n"
    "  handle = {\n"
    "    Do = function(s, cmd)\n"
    "      return { { type = 'Done', data = { n = cmd.data.n } } }\n"
    "    end,\n"
    "  },\n"
    "  react = {\n"
    "    ['src.Happened'] = function(e, ctx)\n"
    "      return { aggregate_id = 't-' .. e.aggregate_id, type = 'Do',\n"
    "               data = { n = e.data.n } }\n"
    "    end,\n"
    "  },\n"
    "}\n";

/* Events per source transaction when preloading (the command side's
 * default commands.batch_size). */
#define PRELOAD_TXN 1000
/* Partitions of the events and commands topics. */
#define PARTITIONS 6

static ct t;
static char events_topic[256], commands_topic[256];
static long long *seqs; /* the next sequence per source aggregate */
static int naggs;

/* The config: the reactor only; batch 0 keeps evlua's
 * reactions.batch_size. */
static void setup(int batch, int aggs)
{
    char text[4096], extra[128] = "";
    const char *linger = getenv("EVLUA_BENCH_LINGER_MS");
    size_t n = 0;
    ct_init(&t, "bench_react");
    /* the harness removes this run's directory at exit (smoke: the last) */
    snprintf(ct_dir_, sizeof ct_dir_, "%s", t.dir);
    ct_write_file(&t, "aggregates/src.lua", src_lua);
    ct_write_file(&t, "aggregates/bench.lua", bench_lua);
    if (batch > 0)
        n += (size_t)snprintf(extra, sizeof extra, "batch_size = %d, ", batch);
    if (linger && *linger)
        snprintf(extra + n, sizeof extra - n, "linger_ms = %d, ", atoi(linger));
    snprintf(text, sizeof text,
             "return {\n"
             "  aggregates = '%s/aggregates',\n"
             "  projections = {},\n"
             "  kafka = { ['bootstrap.servers'] = '%s',\n"
             "            ['session.timeout.ms'] = 6000,\n"
             "            ['heartbeat.interval.ms'] = 1000 },\n"
             "  commands = {\n"
             "    enabled = false,\n"
             "    group_id = '%s.group', transactional_id = '%s.tx',\n"
             "    topics = { commands = '%s.{type}.commands',\n"
             "               events = '%s.{type}.events',\n"
             "               state = '%s.{type}.state',\n"
             "               results = '%s.{type}.results' },\n"
             "  },\n"
             "  reactions = {\n"
             "    group_prefix = '%s.react.',\n"
             "    parked_topic = '%s.{type}.reactions.parked',\n"
             "    %s\n"
             "  },\n"
             "}\n",
             t.dir, t.bootstrap, t.prefix, t.prefix, t.prefix, t.prefix,
             t.prefix, t.prefix, t.prefix, t.prefix, extra);
    ct_write_file(&t, "a.lua", text);
    ct_topic(&t, "src", "events", events_topic, sizeof events_topic);
    ct_topic(&t, "bench", "commands", commands_topic, sizeof commands_topic);
    ct_create_topic(&t, events_topic, PARTITIONS, NULL);
    ct_create_topic(&t, commands_topic, PARTITIONS, NULL);
    naggs = aggs;
    seqs = calloc((size_t)aggs, sizeof *seqs);
}

/* ---- the source: events as the command side writes them ---------------- */

/* Event i's id: a UUID whose last 12 digits are i, so that the command's
 * causation_id names the event it answers. */
#define EVENT_ID_FMT   "0193a4f2-7c3e-7000-8000-%012ld"
#define EVENT_ID_INDEX 24 /* where i starts in the id */

/* A transactional producer as the command side's: murmur2 partitions,
 * idempotent, no linger (a transaction's records go out at its commit). */
static rd_kafka_t *source_producer(void)
{
    char txid[300];
    rd_kafka_conf_t *conf = ct_conf(&t);
    snprintf(txid, sizeof txid, "%s.source", t.prefix);
    th_kset(conf, "partitioner", "murmur2_random");
    th_kset(conf, "transactional.id", txid);
    th_kset(conf, "linger.ms", "0");
    rd_kafka_t *p = th_kafka_new(RD_KAFKA_PRODUCER, conf, "source producer");
    th_kcheck(rd_kafka_init_transactions(p, 60000), "init_transactions");
    return p;
}

/* Produce event i of source aggregate a-(i % naggs) inside the open
 * transaction. */
static void put_event(rd_kafka_t *p, long i)
{
    char id[40], cause[40], aid[32], data[48];
    int a = (int)(i % naggs);
    evl_buf b = {0};
    snprintf(id, sizeof id, EVENT_ID_FMT, i);
    snprintf(cause, sizeof cause, "0193a4f2-7c3e-7000-9000-%012ld", i);
    snprintf(aid, sizeof aid, "a-%d", a);
    snprintf(data, sizeof data, "{\"n\":%ld}", i);
    evl_envelope_event_in e = {.id = id,
                               .type = "Happened",
                               .schema_version = 1,
                               .aggregate_type = "src",
                               .aggregate_id = aid,
                               .sequence = ++seqs[a],
                               .occurred_at = "2026-12-05T12:00:00.000Z",
                               .causation_id = cause,
                               .correlation_id = cause,
                               .user_id = "u-1",
                               .data = data,
                               .data_len = strlen(data)};
    evl_envelope_event(&b, &e);
    rd_kafka_resp_err_t err;
    while (
        (err = rd_kafka_producev(
             p, RD_KAFKA_V_TOPIC(events_topic),
             RD_KAFKA_V_KEY(aid, strlen(aid)), RD_KAFKA_V_VALUE(b.data, b.len),
             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
             RD_KAFKA_V_HEADER("evlua-type", "Happened", -1),
             RD_KAFKA_V_HEADER("evlua-aggregate-type", "src", -1),
             RD_KAFKA_V_HEADER("content-type", "application/json", -1),
             RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(p, 10);
    if (err)
        th_die("rd_kafka_producev(%s): %s", events_topic,
               rd_kafka_err2str(err));
    evl_buf_free(&b);
}

/* Write events from .. to-1 in one transaction. */
static void put_events(rd_kafka_t *p, long from, long to)
{
    th_kcheck(rd_kafka_begin_transaction(p), "begin_transaction");
    for (long i = from; i < to; i++)
        put_event(p, i);
    th_kcheck(rd_kafka_commit_transaction(p, 60000), "commit_transaction");
}

/* ---- reading the commands ----------------------------------------------- */

/* A read_committed consumer assigned to every partition of the commands
 * topic from the start. */
static rd_kafka_t *commands_consumer(void)
{
    static const char *const settings[] = {"fetch.wait.max.ms", "5", NULL};
    char group[300];
    rd_kafka_topic_partition_list_t *l;
    snprintf(group, sizeof group, "%s.bench", t.prefix);
    rd_kafka_t *rk =
        th_consumer(t.bootstrap, group, "read_committed", settings);
    l = rd_kafka_topic_partition_list_new(PARTITIONS);
    for (int i = 0; i < PARTITIONS; i++)
        rd_kafka_topic_partition_list_add(l, commands_topic, i)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    return rk;
}

/* The index of the event a command answers (its causation_id), or -1. */
static long event_index(const rd_kafka_message_t *m)
{
    static const char key[] = "\"causation_id\":\"";
    const char *s;
    if (m->err || !m->payload ||
        !(s = memmem(m->payload, m->len, key, sizeof key - 1)))
        return -1;
    s += sizeof key - 1;
    if ((size_t)(s - (const char *)m->payload) + 36 > m->len)
        return -1;
    return atol(s + EVENT_ID_INDEX);
}

/* CPU time (user + system, all threads) of process pid in microseconds;
 * -1 when unknown. */
static long long cpu_us(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long long ut, st;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *s = strrchr(buf, ')'); /* the name may hold spaces */
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime */
    if (!s ||
        sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        return -1;
    return (long long)((ut + st) * 1000000ULL /
                       (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* Die when evlua ended (a reactor that cannot start ends `evlua run`):
 * nothing would come. */
static void check_running(pid_t pid)
{
    int rc = th_wait(pid, 0);
    if (rc < 0)
        return;
    ct_dump_log(&t, "a.log");
    th_die("evlua run ended with %d before the commands came", rc);
}

static const char *log_level(const char *level)
{
    return getenv("EVLUA_BENCH_DEBUG") ? "EVLUA_LOG_LEVEL=debug" : level;
}

/* ---- throughput --------------------------------------------------------- */

static int throughput(long nevents, int batch, int aggs)
{
    rd_kafka_t *p, *c;
    long long t0, first_ts = -1, last_ts = -1, cpu0 = -1, cpu1 = -1;
    long long got = 0, dups = 0, bytes = 0;
    char *seen = calloc((size_t)nevents, 1);
    pid_t pid;

    setup(batch, aggs);
    p = source_producer();
    t0 = th_now_ms();
    for (long i = 0; i < nevents; i += PRELOAD_TXN)
        put_events(p, i, i + PRELOAD_TXN < nevents ? i + PRELOAD_TXN : nevents);
    fprintf(stderr, "preloaded %ld events in %lld ms\n", nevents,
            th_now_ms() - t0);
    rd_kafka_destroy(p);

    pid = ct_start(&t, "a", "a.log", log_level("EVLUA_LOG_LEVEL=warn"));
    c = commands_consumer();
    t0 = th_now_ms();
    /* until every event's command came, then 1 s more for duplicates */
    long long until = -1;
    while (until < 0 || th_now_ms() < until) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        if (th_now_ms() - t0 > 600000)
            th_die("only %lld of %ld commands after 10 minutes", got, nevents);
        if (!m) {
            check_running(pid);
            continue;
        }
        long i = event_index(m);
        if (i >= 0 && i < nevents) {
            long long ts = rd_kafka_message_timestamp(m, NULL);
            if (cpu0 < 0)
                cpu0 = cpu_us(pid);
            if (first_ts < 0 || ts < first_ts)
                first_ts = ts;
            if (ts > last_ts)
                last_ts = ts;
            bytes += (long long)m->len;
            if (seen[i]) {
                dups++;
            } else {
                seen[i] = 1;
                if (++got == nevents) {
                    cpu1 = cpu_us(pid);
                    until = th_now_ms() + 1000;
                }
            }
        } else if (!m->err) {
            th_die("a record on %s that answers no event of this run",
                   commands_topic);
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    int rc = th_stop(pid, SIGTERM, 60);
    if (rc != 0)
        ct_dump_log(&t, "a.log");
    double secs = (double)(last_ts - first_ts) / 1000.0;
    printf("mode=throughput events=%ld batch_size=%d aggregates=%d "
           "commands=%lld duplicates=%lld seconds=%.3f reactions_per_s=%.0f "
           "command_bytes=%.0f evlua_cpu_us_per_reaction=%.1f exit=%d\n",
           nevents, batch, aggs, got, dups, secs,
           secs > 0 ? (double)(got - 1) / secs : 0.0,
           (double)bytes / (double)(got + dups),
           cpu0 >= 0 && cpu1 >= 0 ? (double)(cpu1 - cpu0) / (double)got : -1.0,
           rc);
    free(seen);
    free(seqs);
    return got == nevents && dups == 0 && rc == 0 ? 0 : 1;
}

/* ---- latency ------------------------------------------------------------ */

/* Per event (the warm-up's after the measured ones), monotonic us and
 * wall clock ms: produced, committed, arrived; and the command record's
 * timestamp (wall ms, evlua's producer). */
static long long *prod_us, *commit_us, *arr_us;
static long long *commit_wall, *cmd_ts, *arr_wall;
static long nmeasured, ntotal;
static volatile long received, warm;
static volatile int stop_reader;

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *reader(void *arg)
{
    rd_kafka_t *c = arg;
    while (!stop_reader && received < nmeasured) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        long long now = now_us();
        if (!m)
            continue;
        long i = event_index(m);
        if (i >= 0 && i < ntotal && arr_us[i] < 0) {
            arr_us[i] = now;
            arr_wall[i] = wall_ms();
            cmd_ts[i] = rd_kafka_message_timestamp(m, NULL);
            if (i < nmeasured)
                received++;
            else
                warm++;
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of v (n values, sorted); -1 when empty. */
static long long quantile(const long long *v, long n, double q)
{
    long k = (long)((double)n * q);
    return n ? v[k < n ? k : n - 1] : -1;
}

static int latency(int rate, int seconds, int aggs)
{
    enum { WARM = 200 };
    rd_kafka_t *p, *c;
    pthread_t th;
    long n = (long)rate * seconds, i = 0, ntxn = 0;
    long long start, cpu0, cpu1;

    setup(0, aggs);
    nmeasured = n;
    ntotal = n + WARM;
    prod_us = calloc((size_t)ntotal, sizeof *prod_us);
    commit_us = calloc((size_t)ntotal, sizeof *commit_us);
    commit_wall = calloc((size_t)ntotal, sizeof *commit_wall);
    cmd_ts = calloc((size_t)ntotal, sizeof *cmd_ts);
    arr_wall = calloc((size_t)ntotal, sizeof *arr_wall);
    arr_us = malloc(sizeof *arr_us * (size_t)ntotal);
    for (long k = 0; k < ntotal; k++)
        arr_us[k] = -1;

    pid_t pid = ct_start(&t, "a", "a.log", log_level("EVLUA_LOG_LEVEL=info"));
    if (!ct_wait_log(&t, "a.log", "reactor partitions assigned", 60000)) {
        ct_dump_log(&t, "a.log");
        th_die("the reactor got no partitions within 60 s");
    }
    c = commands_consumer();
    pthread_create(&th, NULL, reader, c);
    p = source_producer();
    /* warm up: connections, metadata, the first fetches, until commands
     * flow; not measured */
    put_events(p, n, n + WARM);
    for (int k = 0; k < 600 && warm < WARM; k++) {
        check_running(pid);
        th_sleep_ms(50);
    }
    if (warm < WARM)
        th_die("warm-up: %ld of %d commands", (long)warm, WARM);

    cpu0 = cpu_us(pid);
    start = now_us();
    while (i < n) {
        long long now = now_us();
        long due = (long)((now - start) * rate / 1000000) + 1;
        if (due > n)
            due = n;
        if (due <= i) {
            long long wait = start + (long long)i * 1000000 / rate - now;
            struct timespec ts = {(time_t)(wait / 1000000),
                                  (long)(wait % 1000000) * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        th_kcheck(rd_kafka_begin_transaction(p), "begin_transaction");
        for (long k = i; k < due; k++) {
            prod_us[k] = now_us();
            put_event(p, k);
        }
        th_kcheck(rd_kafka_commit_transaction(p, 60000), "commit_transaction");
        long long cu = now_us(), cw = wall_ms();
        for (long k = i; k < due; k++) {
            commit_us[k] = cu;
            commit_wall[k] = cw;
        }
        ntxn++;
        i = due;
    }
    for (int k = 0; k < 600 && received < n; k++) {
        check_running(pid);
        th_sleep_ms(50);
    }
    cpu1 = cpu_us(pid);
    stop_reader = 1;
    pthread_join(th, NULL);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    rd_kafka_destroy(p);
    int rc = th_stop(pid, SIGTERM, 60);
    if (rc != 0)
        ct_dump_log(&t, "a.log");

    long long *lc = malloc(sizeof *lc * (size_t)n),
              *lp = malloc(sizeof *lp * (size_t)n),
              *tc = malloc(sizeof *tc * (size_t)n),
              *tv = malloc(sizeof *tv * (size_t)n);
    long m = 0;
    for (long k = 0; k < n; k++)
        if (arr_us[k] >= 0) {
            lc[m] = arr_us[k] - commit_us[k];
            lp[m] = arr_us[k] - prod_us[k];
            tc[m] = cmd_ts[k] - commit_wall[k];
            tv[m++] = arr_wall[k] - cmd_ts[k];
        }
    qsort(lc, (size_t)m, sizeof *lc, cmp_ll);
    qsort(lp, (size_t)m, sizeof *lp, cmp_ll);
    qsort(tc, (size_t)m, sizeof *tc, cmp_ll);
    qsort(tv, (size_t)m, sizeof *tv, cmp_ll);
    printf("mode=latency rate=%d seconds=%d events=%ld commands=%ld "
           "source_txns=%ld p50_ms=%.1f p99_ms=%.1f p999_ms=%.1f max_ms=%.1f "
           "from_produce_p50_ms=%.1f from_produce_p99_ms=%.1f "
           "to_command_p50_ms=%lld to_command_p99_ms=%lld "
           "to_visible_p50_ms=%lld to_visible_p99_ms=%lld "
           "evlua_cpu_us_per_reaction=%.1f exit=%d\n",
           rate, seconds, n, m, ntxn, quantile(lc, m, 0.5) / 1000.0,
           quantile(lc, m, 0.99) / 1000.0, quantile(lc, m, 0.999) / 1000.0,
           quantile(lc, m, 1.0) / 1000.0, quantile(lp, m, 0.5) / 1000.0,
           quantile(lp, m, 0.99) / 1000.0, quantile(tc, m, 0.5),
           quantile(tc, m, 0.99), quantile(tv, m, 0.5), quantile(tv, m, 0.99),
           cpu0 >= 0 && cpu1 >= 0 ? (double)(cpu1 - cpu0) / (double)n : -1.0,
           rc);
    free(lc);
    free(lp);
    free(tc);
    free(tv);
    free(prod_us);
    free(commit_us);
    free(commit_wall);
    free(cmd_ts);
    free(arr_wall);
    free(arr_us);
    free(seqs);
    return m == n && rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "throughput") == 0)
        return throughput(atol(argv[2]), atoi(argv[3]), atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "latency") == 0)
        return latency(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    if (argc == 2 && strcmp(argv[1], "smoke") == 0) {
        /* both modes, briefly: each run has its own directory and topics */
        if (throughput(300, 100, 30) != 0)
            return 1;
        th_remove_dir(t.dir);
        return latency(100, 2, 30);
    }
    fprintf(stderr, "usage: bench_react throughput EVENTS BATCH_SIZE "
                    "AGGREGATES\n"
                    "       bench_react latency RATE SECONDS AGGREGATES\n"
                    "       bench_react smoke\n");
    return 2;
}
