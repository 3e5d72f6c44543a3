/*
 * bench_cmd.c - throughput and latency of the command side against the
 * real broker, driving a real `evlua run` (the binary in EVLUA_BIN).
 *
 *   bench_cmd throughput EVENTS COMMANDS BATCH_SIZE AGGREGATES
 *       Preload COMMANDS commands (each yielding EVENTS events, 1 or 3)
 *       for AGGREGATES aggregates into a fresh 6-partition commands topic,
 *       start evlua run with commands.batch_size = BATCH_SIZE, and time
 *       the results: commands/s = results between the first and the last
 *       one / the time between them (from the records' timestamps, so
 *       start-up and restore are not counted). BATCH_SIZE 1 is the seed's
 *       literal form: one transaction per command.
 *   bench_cmd latency RATE SECONDS AGGREGATES
 *       With evlua run consuming, send 1-event commands at RATE per second
 *       for SECONDS; for each, the time from the send call to its result
 *       arriving at a read_committed consumer; prints p50, p99, p99.9,
 *       max, and where the time went, split at the result record's
 *       timestamp (evlua's producer stamps it when evlua produces it):
 *       to_result (send -> produced: the load generator's linger, evlua's
 *       fetch, the wait for the transaction in flight, deciding) and
 *       to_visible (produced -> read: flushing, commit, the markers, the
 *       reader's fetch), p50 and p99 in ms; and evlua's CPU time per
 *       command (all its threads) and the share of the run its
 *       processing thread spent runnable but waiting for a CPU (Linux
 *       schedstat), which is what a crowded machine costs it.
 *
 *   bench_cmd floor RATE SECONDS AGGREGATES
 *       The latency run against the latency floor instead of evlua: a bare
 *       transactional loop (a child process, bench_cmd floor-loop) with the
 *       same librdkafka, a read_committed consumer and a transactional
 *       producer doing, per poll batch, begin / produce one record per
 *       command (the command itself, to the results topic, same partition)
 *       / send offsets / commit: no Lua, no state, no envelope. Same output
 *       as latency (its CPU is the loop's).
 *
 * Throughput runs also print evlua's CPU time per command (all its
 * threads, from its start to the last result). Every run prints
 * cpu_split_us_per_cmd: that CPU per command by thread name (evlua's
 * own threads, librdkafka's rdk:main, rdk:broker (all brokers), ...).
 * Latency runs with evlua's default batch_size and linger_ms.
 * Environment: EVLUA_BENCH_LINGER_MS sets commands.linger_ms,
 * EVLUA_BENCH_BATCH_SIZE the latency run's commands.batch_size;
 * EVLUA_BENCH_KAFKA adds librdkafka properties, EVLUA_BENCH_COMMANDS
 * fields of the commands table (e.g. "dedup_ids = 10,");
 * EVLUA_BENCH_DEBUG=1 runs evlua at debug level (per-batch timings);
 * EVLUA_BENCH_DUMP=FILE writes each command's send time and latency.
 *
 * Output: one line of "key=value" per run (scripts/bench-cmd makes the
 * table). Needs the broker (svc.h) and EVLUA_BIN, EVLUA_SOURCE_DIR.
 */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>

#include "cmdtest.h"

static const char bench_lua[] =
    "-- bench: One yields one event, Three yields three\n"
    "return {\n"
    "  type = 'bench',\n"
    "  initial = function() return { n = 0 } end,\n"
    "  apply = { Counted = function(s, e) s.n = s.n + 1 end },\n"
    "  handle = {\n"
    "    One = function(s, cmd)\n"
    "      return { { type = 'Counted', data = { by = cmd.data.by } } }\n"
    "    end,\n"
    "    Three = function(s, cmd)\n"
    "      return { { type = 'Counted', data = { by = cmd.data.by } },\n"
    "               { type = 'Counted', data = { by = cmd.data.by } },\n"
    "               { type = 'Counted', data = { by = cmd.data.by } } }\n"
    "    end,\n"
    "  },\n"
    "}\n";

static ct t;
static char cmd_topic[256]; /* the commands topic of setup */

/* batch: commands.batch_size, 0 for evlua's default (or
 * EVLUA_BENCH_BATCH_SIZE); commands.linger_ms is evlua's default unless
 * EVLUA_BENCH_LINGER_MS; EVLUA_BENCH_COMMANDS adds fields. */
static void setup(int batch)
{
    char extra[256], commands[256];
    const char *linger = getenv("EVLUA_BENCH_LINGER_MS");
    const char *size = getenv("EVLUA_BENCH_BATCH_SIZE");
    size_t n = 0;
    ct_init(&t, "bench");
    ct_write_file(&t, "aggregates/bench.lua", bench_lua);
    extra[0] = '\0';
    if (batch == 0 && size && *size)
        batch = atoi(size);
    if (batch > 0)
        n += (size_t)snprintf(extra, sizeof extra, "batch_size = %d, ", batch);
    if (linger && *linger)
        n += (size_t)snprintf(extra + n, sizeof extra - n, "linger_ms = %d, ",
                              atoi(linger));
    /* EVLUA_BENCH_COMMANDS: more fields of the commands table, e.g.
     * "dedup_ids = 10," */
    if (getenv("EVLUA_BENCH_COMMANDS"))
        snprintf(extra + n, sizeof extra - n, "%s",
                 getenv("EVLUA_BENCH_COMMANDS"));
    /* EVLUA_BENCH_KAFKA: extra librdkafka properties as Lua fields,
     * e.g. "['retry.backoff.ms'] = 10," */
    ct_config(&t, "a", "a", extra, getenv("EVLUA_BENCH_KAFKA"));
    ct_topic(&t, "bench", "commands", commands, sizeof commands);
    ct_create_topic(&t, commands, 6, NULL);
    snprintf(cmd_topic, sizeof cmd_topic, "%s", commands);
}

static void send_cmd(rd_kafka_t *p, const char *id, const char *type, int agg)
{
    char a[32];
    snprintf(a, sizeof a, "a-%d", agg);
    ct_send(&t, p, "bench", id, type, a, "{\"by\":1}", NULL);
}

/* A read_committed consumer of every partition of the results topic,
 * from the start. */
static rd_kafka_t *results_consumer(const char *topic)
{
    static const char *const settings[] = {"fetch.wait.max.ms", "5", NULL};
    char group[300];
    rd_kafka_t *rk;
    rd_kafka_topic_partition_list_t *l;
    int n = 0;
    for (int i = 0; i < 600 && (n = ct_partitions(&t, topic)) == 0; i++)
        th_sleep_ms(100);
    if (n == 0)
        th_die("topic %s never appeared", topic);
    snprintf(group, sizeof group, "%s.bench", t.prefix);
    rk = th_consumer(t.bootstrap, group, "read_committed", settings);
    l = rd_kafka_topic_partition_list_new(n);
    for (int i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(l, topic, i)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    return rk;
}

/* The threads of process pid from /proc/PID/task/TID/schedstat (ns on a
 * CPU, ns runnable but waiting for one); 0 threads when there is no
 * schedstat. */
#define MAX_THREADS 128
typedef struct sched_use {
    int n;
    struct {
        int tid, is_evlua; /* named "evlua": not one of librdkafka's */
        char comm[20];     /* the thread's name: evlua, rdk:main, ... */
        long long run_ns, wait_ns;
    } t[MAX_THREADS];
} sched_use;

static void sched_of(pid_t pid, sched_use *u)
{
    char path[64];
    DIR *d;
    struct dirent *e;
    u->n = 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if (!(d = opendir(path)))
        return;
    while ((e = readdir(d)) && u->n < MAX_THREADS) {
        char f[400], comm[64] = "";
        long long run, wait;
        FILE *fp;
        if (e->d_name[0] == '.')
            continue;
        snprintf(f, sizeof f, "%s/%s/comm", path, e->d_name);
        if ((fp = fopen(f, "r"))) {
            if (!fgets(comm, sizeof comm, fp))
                comm[0] = '\0';
            fclose(fp);
        }
        snprintf(f, sizeof f, "%s/%s/schedstat", path, e->d_name);
        if (!(fp = fopen(f, "r")))
            continue;
        if (fscanf(fp, "%lld %lld", &run, &wait) == 2) {
            u->t[u->n].tid = atoi(e->d_name);
            /* evlua's own threads: "evl:commands", "evl:commit", ...
             * (the process's first thread keeps its name, "evlua") */
            u->t[u->n].is_evlua = strncmp(comm, "evl", 3) == 0;
            comm[strcspn(comm, "\n")] = '\0';
            /* the kernel's names are at most 15 bytes; cut to the field */
            comm[sizeof u->t[u->n].comm - 1] = '\0';
            memcpy(u->t[u->n].comm, comm, sizeof u->t[u->n].comm);
            u->t[u->n].run_ns = run;
            u->t[u->n].wait_ns = wait;
            u->n++;
        }
        fclose(fp);
    }
    closedir(d);
}

/* From a to b: CPU ns of all threads, and the run-queue wait of the
 * processing thread (the "evlua" thread that ran most in between; the
 * process's first thread only waits for signals, the committer less). */
static void sched_delta(const sched_use *a, const sched_use *b,
                        long long *run_ns, long long *proc_wait_ns)
{
    long long best = -1;
    *run_ns = *proc_wait_ns = 0;
    for (int i = 0; i < b->n; i++) {
        long long r0 = 0, w0 = 0;
        for (int j = 0; j < a->n; j++)
            if (a->t[j].tid == b->t[i].tid) {
                r0 = a->t[j].run_ns;
                w0 = a->t[j].wait_ns;
            }
        *run_ns += b->t[i].run_ns - r0;
        if (b->t[i].is_evlua && b->t[i].run_ns - r0 > best) {
            best = b->t[i].run_ns - r0;
            *proc_wait_ns = b->t[i].wait_ns - w0;
        }
    }
}

/* From a to b, CPU per command by thread name into out, e.g.
 * "evlua:40.1,rdk:main:80.2,rdk:broker:30.0" (us per command; a
 * thread's name without the digits of its broker id, so the broker
 * threads add up): where a command's CPU goes, thread by thread. */
static void sched_split(const sched_use *a, const sched_use *b, int ncmds,
                        char *out, size_t cap)
{
    char names[MAX_THREADS][20];
    long long ns[MAX_THREADS];
    int k = 0;
    for (int i = 0; i < b->n; i++) {
        char name[20];
        long long r0 = 0;
        int j;
        for (j = 0; j < a->n; j++)
            if (a->t[j].tid == b->t[i].tid)
                r0 = a->t[j].run_ns;
        snprintf(name, sizeof name, "%s", b->t[i].comm);
        name[strcspn(name, "-0123456789")] = '\0';
        for (j = 0; j < k && strcmp(names[j], name) != 0; j++)
            ;
        if (j == k) {
            snprintf(names[k], sizeof names[k], "%s", name);
            ns[k++] = 0;
        }
        ns[j] += b->t[i].run_ns - r0;
    }
    size_t n = 0;
    out[0] = '\0';
    for (int j = 0; j < k && n < cap; j++)
        n += (size_t)snprintf(out + n, cap - n, "%s%s:%.1f", j ? "," : "",
                              names[j], ncmds ? ns[j] / 1000.0 / ncmds : 0.0);
}

static int throughput(int events, int ncommands, int batch, int aggs)
{
    char results[256], id[32];
    rd_kafka_t *p, *c;
    long long first_ts = -1, last_ts = -1, t0, seen = 0, accepted = 0;
    pid_t pid;
    static sched_use tp_s0, tp_s1;

    setup(batch);
    ct_topic(&t, "bench", "results", results, sizeof results);
    p = ct_producer(&t);
    t0 = th_now_ms();
    for (int i = 0; i < ncommands; i++) {
        snprintf(id, sizeof id, "c-%d", i);
        send_cmd(p, id, events == 3 ? "Three" : "One", i % aggs);
    }
    ct_flush(p);
    fprintf(stderr, "preloaded %d commands in %lld ms\n", ncommands,
            th_now_ms() - t0);
    rd_kafka_destroy(p);

    pid = ct_start(&t, "a", "a.log",
                   getenv("EVLUA_BENCH_DEBUG") ? "EVLUA_LOG_LEVEL=debug"
                                               : "EVLUA_LOG_LEVEL=warn");
    c = results_consumer(results);
    t0 = th_now_ms();
    sched_of(pid, &tp_s0);
    while (seen < ncommands) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 500);
        if (th_now_ms() - t0 > 600000)
            th_die("only %lld of %d results after 10 minutes", seen, ncommands);
        if (!m)
            continue;
        if (!m->err) {
            long long ts = rd_kafka_message_timestamp(m, NULL);
            if (first_ts < 0 || ts < first_ts)
                first_ts = ts;
            if (ts > last_ts)
                last_ts = ts;
            seen++;
            accepted += m->len > 40 &&
                        memmem(m->payload, m->len, "\"accepted\"", 10) != NULL;
        }
        rd_kafka_message_destroy(m);
    }
    sched_of(pid, &tp_s1);
    long long run_ns, wait_ns;
    sched_delta(&tp_s0, &tp_s1, &run_ns, &wait_ns);
    char split[512];
    sched_split(&tp_s0, &tp_s1, ncommands, split, sizeof split);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    int rc = th_stop(pid, SIGTERM, 60);
    double secs = (double)(last_ts - first_ts) / 1000.0;
    printf("mode=throughput events=%d commands=%d batch_size=%d "
           "aggregates=%d accepted=%lld seconds=%.3f commands_per_s=%.0f "
           "events_per_s=%.0f evlua_cpu_us_per_cmd=%.1f "
           "cpu_split_us_per_cmd=%s exit=%d\n",
           events, ncommands, batch, aggs, accepted, secs,
           secs > 0 ? (double)(ncommands - 1) / secs : 0.0,
           secs > 0 ? (double)(ncommands - 1) * events / secs : 0.0,
           (double)run_ns / 1000.0 / ncommands, split, rc);
    return accepted == ncommands && rc == 0 ? 0 : 1;
}

/* ---- latency ----------------------------------------------------------- */

static long long *sent_us;
static long long *lat_us;
/* the split: send -> the result record's timestamp (set by evlua's
 * producer: queueing, fetching, batching, deciding), and that timestamp ->
 * arrival (flushing, committing, the markers, the reader's fetch); wall
 * clock milliseconds */
static long long *sent_wall_ms, *in_evlua_ms, *to_visible_ms;
static int nsent_total;
static volatile int received, warm;
static volatile int stop_reader;
static char lat_results[256];

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
    while (!stop_reader && received < nsent_total) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        long long now = now_us();
        if (!m)
            continue;
        if (!m->err && m->payload) {
            /* {"command_id":"L-123",... */
            const char *s = memmem(m->payload, m->len, "\"L-", 3);
            if (!s && memmem(m->payload, m->len, "\"W-", 3))
                warm++;
            if (s) {
                int i = atoi(s + 3);
                if (i >= 0 && i < nsent_total && lat_us[i] < 0) {
                    long long ts = rd_kafka_message_timestamp(m, NULL);
                    lat_us[i] = now - sent_us[i];
                    in_evlua_ms[i] = ts - sent_wall_ms[i];
                    to_visible_ms[i] = wall_ms() - ts;
                    received++;
                }
            }
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

/* ---- the latency floor: a bare transactional loop ---------------------- */

static volatile sig_atomic_t floor_stop;
static void on_term(int sig)
{
    floor_stop = 1;
}

/* bench_cmd floor-loop BOOTSTRAP COMMANDS RESULTS ID: consume COMMANDS
 * (read_committed, group ID) and, per poll batch, in one transaction,
 * produce each command as it is to RESULTS (same partition) and commit
 * the batch's offsets. Until SIGTERM. librdkafka settings as evlua's
 * command side (docs/command-side.md). */
static int floor_loop(const char *bootstrap, const char *commands,
                      const char *results, const char *id)
{
    static const char *const csettings[] = {"fetch.wait.max.ms",
                                            "5",
                                            "fetch.min.bytes",
                                            "65536",
                                            "enable.auto.commit",
                                            "false",
                                            "auto.offset.reset",
                                            "earliest",
                                            NULL};
    char errstr[512];
    rd_kafka_t *c = th_consumer(bootstrap, id, "read_committed", csettings);
    rd_kafka_conf_t *conf = th_kconf(bootstrap);
    th_kset(conf, "transactional.id", id);
    th_kset(conf, "linger.ms", "0");
    th_kset(conf, "retry.backoff.ms", "20");
    th_kset(conf, "transaction.timeout.ms", "10000");
    rd_kafka_t *p =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!p)
        th_die("floor producer: %s", errstr);
    th_kcheck(rd_kafka_init_transactions(p, 30000), "init_transactions");
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, commands, RD_KAFKA_PARTITION_UA);
    if (rd_kafka_subscribe(c, sub))
        th_die("floor: subscribe failed");
    rd_kafka_topic_partition_list_destroy(sub);
    signal(SIGTERM, on_term);
    static rd_kafka_message_t *batch[1000];
    while (!floor_stop) {
        int n = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        while (m) {
            if (m->err)
                rd_kafka_message_destroy(m);
            else
                batch[n++] = m;
            m = n < 1000 ? rd_kafka_consumer_poll(c, 0) : NULL;
        }
        if (n == 0)
            continue;
        th_kcheck(rd_kafka_begin_transaction(p), "begin_transaction");
        rd_kafka_topic_partition_list_t *offs =
            rd_kafka_topic_partition_list_new(8);
        for (int i = 0; i < n; i++) {
            m = batch[i];
            rd_kafka_resp_err_t e = rd_kafka_producev(
                p, RD_KAFKA_V_TOPIC(results),
                RD_KAFKA_V_PARTITION(m->partition),
                RD_KAFKA_V_KEY(m->key, m->key_len),
                RD_KAFKA_V_VALUE(m->payload, m->len),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (e)
                th_die("floor: produce: %s", rd_kafka_err2str(e));
            const char *tn = rd_kafka_topic_name(m->rkt);
            rd_kafka_topic_partition_t *tp =
                rd_kafka_topic_partition_list_find(offs, tn, m->partition);
            if (!tp)
                tp = rd_kafka_topic_partition_list_add(offs, tn, m->partition);
            tp->offset = m->offset + 1;
        }
        rd_kafka_consumer_group_metadata_t *g =
            rd_kafka_consumer_group_metadata(c);
        th_kcheck(rd_kafka_send_offsets_to_transaction(p, offs, g, -1),
                  "send_offsets_to_transaction");
        rd_kafka_consumer_group_metadata_destroy(g);
        rd_kafka_topic_partition_list_destroy(offs);
        th_kcheck(rd_kafka_commit_transaction(p, -1), "commit_transaction");
        for (int i = 0; i < n; i++)
            rd_kafka_message_destroy(batch[i]);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    rd_kafka_destroy(p);
    return 0;
}

/* Start the floor loop as a child process (its own librdkafka threads,
 * so its CPU is measured as evlua's is). */
static pid_t floor_start(void)
{
    char results[256], id[300];
    ct_topic(&t, "bench", "results", results, sizeof results);
    ct_create_topic(&t, results, 6, NULL);
    snprintf(id, sizeof id, "%s.floor", t.prefix);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        th_die("fork: %s", strerror(errno));
    if (pid == 0) {
        execl("/proc/self/exe", "bench_cmd", "floor-loop", t.bootstrap,
              cmd_topic, results, id, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int latency(int rate, int seconds, int aggs, int floor)
{
    char id[32];
    rd_kafka_t *p, *c;
    pthread_t th;
    pid_t pid;
    long long start;
    int n = rate * seconds, i = 0;

    setup(0);
    ct_topic(&t, "bench", "results", lat_results, sizeof lat_results);
    nsent_total = n;
    sent_us = calloc((size_t)n, sizeof *sent_us);
    lat_us = malloc(sizeof *lat_us * (size_t)n);
    sent_wall_ms = calloc((size_t)n, sizeof *sent_wall_ms);
    in_evlua_ms = calloc((size_t)n, sizeof *in_evlua_ms);
    to_visible_ms = calloc((size_t)n, sizeof *to_visible_ms);
    for (int k = 0; k < n; k++)
        lat_us[k] = -1;
    if (floor) {
        pid = floor_start();
    } else {
        pid = ct_start(&t, "a", "a.log",
                       getenv("EVLUA_BENCH_DEBUG") ? "EVLUA_LOG_LEVEL=debug"
                                                   : "EVLUA_LOG_LEVEL=info");
        for (int k = 0; k < 600 && !ct_log_has(&t, "a.log", "states restored");
             k++)
            th_sleep_ms(50);
    }
    c = results_consumer(lat_results);
    pthread_create(&th, NULL, reader, c);
    p = ct_producer(&t);
    /* warm up: connections, metadata, the first fetches, until results
     * flow; these are not measured */
    for (int k = 0; k < 200; k++) {
        snprintf(id, sizeof id, "W-%d", k);
        send_cmd(p, id, "One", k % aggs);
    }
    ct_flush(p);
    for (int k = 0; k < 600 && warm < 200; k++)
        th_sleep_ms(50);
    if (warm < 200)
        th_die("warm-up: %d of 200 results", warm);
    static sched_use s0, s1;
    long long run_ns, proc_wait_ns;
    sched_of(pid, &s0);
    start = now_us();
    while (i < n) {
        long long due = start + (long long)i * 1000000 / rate;
        long long now = now_us();
        if (now < due) {
            struct timespec ts = {0, (long)((due - now) * 1000)};
            nanosleep(&ts, NULL);
            continue;
        }
        snprintf(id, sizeof id, "L-%d", i);
        sent_us[i] = now_us();
        sent_wall_ms[i] = wall_ms();
        send_cmd(p, id, "One", i % aggs);
        i++;
    }
    ct_flush(p);
    for (int k = 0; k < 600 && received < n; k++)
        th_sleep_ms(50);
    /* evlua's CPU per command and how long its processing thread waited
     * for a CPU, over the measured run (sending until the last result) */
    sched_of(pid, &s1);
    sched_delta(&s0, &s1, &run_ns, &proc_wait_ns);
    char split[512];
    sched_split(&s0, &s1, n, split, sizeof split);
    double window_ms = (now_us() - start) / 1000.0;
    stop_reader = 1;
    pthread_join(th, NULL);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    rd_kafka_destroy(p);
    int rc = th_stop(pid, SIGTERM, 60);

    /* EVLUA_BENCH_DUMP=FILE: one line per command, "ms since the first
     * send, latency ms, wall clock ms of the send" (to see when the slow
     * ones happened, next to evlua's debug log) */
    const char *dump = getenv("EVLUA_BENCH_DUMP");
    FILE *df = dump && *dump ? fopen(dump, "w") : NULL;
    for (int k = 0; df && k < n; k++)
        if (lat_us[k] >= 0)
            fprintf(df, "%.1f %.1f %lld\n", (sent_us[k] - start) / 1000.0,
                    lat_us[k] / 1000.0, sent_wall_ms[k]);
    if (df)
        fclose(df);
    long long *v = malloc(sizeof *v * (size_t)n);
    long long *a = malloc(sizeof *a * (size_t)n);
    long long *b = malloc(sizeof *b * (size_t)n);
    int m = 0;
    for (int k = 0; k < n; k++)
        if (lat_us[k] >= 0) {
            a[m] = in_evlua_ms[k];
            b[m] = to_visible_ms[k];
            v[m++] = lat_us[k];
        }
    qsort(v, (size_t)m, sizeof *v, cmp_ll);
    qsort(a, (size_t)m, sizeof *a, cmp_ll);
    qsort(b, (size_t)m, sizeof *b, cmp_ll);
    printf("mode=%s rate=%d seconds=%d commands=%d results=%d "
           "p50_ms=%.1f p99_ms=%.1f p999_ms=%.1f max_ms=%.1f "
           "to_result_p50_ms=%lld to_result_p99_ms=%lld "
           "to_visible_p50_ms=%lld to_visible_p99_ms=%lld "
           "evlua_cpu_us_per_cmd=%.1f evlua_runq_wait_pct=%.1f "
           "cpu_split_us_per_cmd=%s exit=%d\n",
           floor ? "floor" : "latency", rate, seconds, n, m,
           m ? v[m / 2] / 1000.0 : -1.0,
           m ? v[(long)m * 99 / 100] / 1000.0 : -1.0,
           m ? v[(long)m * 999 / 1000] / 1000.0 : -1.0,
           m ? v[m - 1] / 1000.0 : -1.0, m ? a[m / 2] : -1LL,
           m ? a[(long)m * 99 / 100] : -1LL, m ? b[m / 2] : -1LL,
           m ? b[(long)m * 99 / 100] : -1LL, (double)run_ns / 1000.0 / n,
           window_ms > 0 ? (double)proc_wait_ns / 1e4 / window_ms : 0.0, split,
           rc);
    free(a);
    free(b);
    free(sent_wall_ms);
    free(in_evlua_ms);
    free(to_visible_ms);
    free(v);
    free(sent_us);
    free(lat_us);
    return m == n && rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "throughput") == 0)
        return throughput(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]),
                          atoi(argv[5]));
    if (argc == 5 && strcmp(argv[1], "latency") == 0)
        return latency(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), 0);
    if (argc == 5 && strcmp(argv[1], "floor") == 0)
        return latency(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), 1);
    if (argc == 6 && strcmp(argv[1], "floor-loop") == 0)
        return floor_loop(argv[2], argv[3], argv[4], argv[5]);
    fprintf(stderr, "usage: bench_cmd throughput EVENTS COMMANDS BATCH_SIZE "
                    "AGGREGATES\n"
                    "       bench_cmd latency RATE SECONDS AGGREGATES\n"
                    "       bench_cmd floor RATE SECONDS AGGREGATES\n");
    return 2;
}
