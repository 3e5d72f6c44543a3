/*
 * test_cmd_partition.c - a network partition between `evlua run` and the
 * broker, longer than transaction.timeout.ms, while commands flow: the
 * broker rolls the open transaction back and bumps the producer's epoch,
 * and evlua must recover by itself (rebuild the fenced producer, restore
 * the states, rewind to the committed offsets) instead of exiting.
 *
 * The partition is real: evlua runs in a network namespace joined to the
 * host by a veth pair with link-local addresses (169.254.x.y, never
 * routed off the machine); this test starts its own broker listening on
 * the host side's address (scripts/kafka with EVLUA_KAFKA_HOST), and cuts
 * the link by setting the namespace's end down. Commands are produced
 * from the host side all the time, cuts included.
 *
 * Each cut comes while a transaction is open on the broker: the test hook
 * EVLUA_TEST_HOLD_FILE holds one open for 2 s after its records reached
 * the broker (without it, a cut often lands before the broker has heard
 * of the transaction, which then cannot time out there), and the test
 * cuts as soon as evlua logs that.
 *
 * Two cuts, both longer than transaction.timeout.ms (8 s): the first
 * (12 s) shorter than session.timeout.ms (30 s), so the consumer usually
 * keeps its partitions and evlua must rewind and restore them itself; the
 * second (34 s) longer, so the consumer also loses its partitions to a
 * rebalance. After each: the process is still running and it logged the
 * recovery line; in the end every command, those sent during and after
 * the cuts too, has exactly one result and every accepted command's
 * events appear exactly once.
 *
 * Needs root (network namespaces): without it the test FAILS.
 * EVLUA_PARTITION_CUTS=1 runs the first cut only.
 */
#include <pthread.h>

#include "cmdtest.h"

#define AGGS               100
#define TXN_TIMEOUT_MS     8000
#define SESSION_TIMEOUT_MS 30000
#define RECOVERY_LINE                                                          \
    "our transaction timed out while the broker was unreachable"

static ct t;
static char ns[64], dev_host[32], dev_ns[32], addr_host[32], addr_ns[32];
static char rundir[256];
static int net_made, broker_started;
static pid_t evlua_pid;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char **ids;
static size_t nids, capids;
static volatile int stop_sending;

static int sh(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Run a shell command; its exit status. */
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static void teardown(void)
{
    if (evlua_pid > 0 && kill(evlua_pid, 0) == 0) {
        kill(evlua_pid, SIGKILL);
        th_wait(evlua_pid, 10);
    }
    if (broker_started)
        sh("EVLUA_RUN_DIR='%s' '%s/scripts/kafka' stop >/dev/null 2>&1", rundir,
           getenv("EVLUA_SOURCE_DIR"));
    if (rundir[0])
        sh("rm -rf '%s'", rundir);
    if (net_made) {
        sh("ip link del %s >/dev/null 2>&1", dev_host);
        sh("ip netns del %s >/dev/null 2>&1", ns);
    }
}

/* Interrupted (ctest's timeout, ^C): tear the network and broker down
 * all the same. */
static void on_signal(int sig)
{
    (void)sig;
    exit(1);
}

/* The namespace, the veth pair and its addresses. */
static void make_net(void)
{
    long pid = (long)getpid();
    int a = 10 + (int)(pid % 200), b = 4 * (int)((pid / 200) % 60);
    snprintf(ns, sizeof ns, "evlua-part-%ld", pid);
    snprintf(dev_host, sizeof dev_host, "evp%lda", pid % 10000000);
    snprintf(dev_ns, sizeof dev_ns, "evp%ldb", pid % 10000000);
    snprintf(addr_host, sizeof addr_host, "169.254.%d.%d", a, b + 1);
    snprintf(addr_ns, sizeof addr_ns, "169.254.%d.%d", a, b + 2);
    net_made = 1;
    if (sh("ip netns add %s", ns) ||
        sh("ip link add %s type veth peer name %s", dev_host, dev_ns) ||
        sh("ip link set %s netns %s", dev_ns, ns) ||
        sh("ip addr add %s/30 dev %s", addr_host, dev_host) ||
        sh("ip link set %s up", dev_host) ||
        sh("ip netns exec %s ip addr add %s/30 dev %s", ns, addr_ns, dev_ns) ||
        sh("ip netns exec %s ip link set %s up", ns, dev_ns) ||
        sh("ip netns exec %s ip link set lo up", ns))
        th_die("could not build the network namespace %s (iproute2 and root "
               "are needed)",
               ns);
    fprintf(stderr, "namespace %s: %s (%s) <-> %s (%s)\n", ns, dev_host,
            addr_host, dev_ns, addr_ns);
}

static void link_set(const char *state)
{
    if (sh("ip netns exec %s ip link set %s %s", ns, dev_ns, state))
        th_die("could not set %s %s", dev_ns, state);
    fprintf(stderr, "link %s\n", state);
}

static void start_broker(void)
{
    char path[512], bootstrap[256];
    FILE *f;
    snprintf(rundir, sizeof rundir, "/tmp/evlua-partition-run-XXXXXX");
    if (!mkdtemp(rundir))
        th_die("mkdtemp: %s", strerror(errno));
    broker_started = 1;
    if (sh("EVLUA_RUN_DIR='%s' EVLUA_KAFKA_HOST=%s '%s/scripts/kafka' start "
           ">/dev/null",
           rundir, addr_host, getenv("EVLUA_SOURCE_DIR")))
        th_die("could not start a broker on %s", addr_host);
    snprintf(path, sizeof path, "%s/kafka/bootstrap", rundir);
    if (!(f = fopen(path, "r")) || !fgets(bootstrap, sizeof bootstrap, f))
        th_die("no bootstrap address in %s", path);
    fclose(f);
    bootstrap[strcspn(bootstrap, "\r\n")] = '\0';
    setenv("EVLUA_KAFKA_BOOTSTRAP", bootstrap, 1);
}

/* evlua run inside the namespace (ip netns exec execs it: same pid). */
static pid_t start_in_ns(const char *log)
{
    char cfg[1024], logpath[1024];
    pid_t pid;
    snprintf(cfg, sizeof cfg, "%s/a.lua", t.dir);
    snprintf(logpath, sizeof logpath, "%s/%s", t.dir, log);
    if ((pid = fork()) < 0)
        th_die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
            close(fd);
        }
        static char hold[1200];
        snprintf(hold, sizeof hold, "EVLUA_TEST_HOLD_FILE=%s/hold", t.dir);
        putenv(hold);
        execlp("ip", "ip", "netns", "exec", ns, t.bin, "run", "-c", cfg,
               (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* evlua's exit code once it has exited (reaped once), else -1. */
static int exit_code = -1;
static int exited(pid_t pid)
{
    if (exit_code < 0)
        exit_code = th_wait(pid, 0);
    return exit_code;
}

/* How often text occurs in DIR/LOG. */
static int log_count(const char *log, const char *text)
{
    char path[1024], line[8192];
    int n = 0;
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", t.dir, log);
    if (!(f = fopen(path, "r")))
        return 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, text) != NULL;
    fclose(f);
    return n;
}

/* ~100 commands/s over AGGS aggregates until stop_sending. */
static void *produce(void *arg)
{
    rd_kafka_t *p = ct_producer(&t);
    (void)arg;
    for (int k = 0; !stop_sending; k++) {
        char id[64], agg[32], data[160];
        int a = k % AGGS;
        snprintf(id, sizeof id, "cmd-%d", k);
        snprintf(agg, sizeof agg, "c-%d", a);
        if (k < AGGS) {
            snprintf(data, sizeof data,
                     "{\"name\":\"N0\",\"email\":\"e0-%d@example.org\"}", a);
            ct_send(&t, p, "customer", id, "RegisterCustomer", agg, data, NULL);
        } else {
            snprintf(data, sizeof data, "{\"name\":\"N%d\"}", k);
            ct_send(&t, p, "customer", id, "UpdateCustomerProfile", agg, data,
                    NULL);
        }
        pthread_mutex_lock(&mu);
        if (nids == capids) {
            capids = capids ? 2 * capids : 1024;
            ids = realloc(ids, sizeof *ids * capids);
        }
        ids[nids++] = strdup(id);
        pthread_mutex_unlock(&mu);
        th_sleep_ms(10);
    }
    ct_flush(p);
    rd_kafka_destroy(p);
    return NULL;
}

int main(void)
{
    char events[256], results[256], text[4096];
    th_recs evs = {0}, res = {0};
    pthread_t producer;
    int cuts = 2;
    static const int cut_s[2] = {12, 34};
    pid_t pid;

    if (geteuid() != 0)
        th_die("this test needs root: it makes a network namespace and a "
               "veth pair to cut evlua off from the broker (run ctest as "
               "root, as CI does)");
    if (!getenv("EVLUA_SOURCE_DIR"))
        th_die("EVLUA_SOURCE_DIR must be set (run through ctest)");
    if (getenv("EVLUA_PARTITION_CUTS"))
        cuts = atoi(getenv("EVLUA_PARTITION_CUTS")) == 1 ? 1 : 2;
    atexit(teardown);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    make_net();
    start_broker();

    ct_init(&t, "partition");
    ct_copy_aggregate(&t, "customer.lua");
    snprintf(text, sizeof text,
             "return {\n"
             "  aggregates = '%s/aggregates',\n"
             "  projections = {},\n"
             "  kafka = { ['bootstrap.servers'] = '%s',\n"
             "            ['session.timeout.ms'] = %d,\n"
             "            ['heartbeat.interval.ms'] = 1000,\n"
             "            ['transaction.timeout.ms'] = %d },\n"
             "  commands = {\n"
             "    group_id = '%s.group', transactional_id = '%s.a',\n"
             "    topics = { commands = '%s.{type}.commands',\n"
             "               events = '%s.{type}.events',\n"
             "               state = '%s.{type}.state',\n"
             "               results = '%s.{type}.results' },\n"
             "    batch_size = 50,\n"
             "  },\n"
             "}\n",
             t.dir, t.bootstrap, SESSION_TIMEOUT_MS, TXN_TIMEOUT_MS, t.prefix,
             t.prefix, t.prefix, t.prefix, t.prefix, t.prefix);
    ct_write_file(&t, "a.lua", text);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);

    pid = evlua_pid = start_in_ns("a.log");
    CHECK(ct_wait_log(&t, "a.log", "states restored", 90000),
          "evlua (in the namespace) reached the broker and took partitions");
    pthread_create(&producer, NULL, produce, NULL);

    for (int c = 0; c < cuts; c++) {
        th_sleep_ms(4000); /* commands flow */
        /* cut while the broker has a transaction of evlua's open */
        ct_write_file(&t, "hold", "");
        long long deadline = th_now_ms() + 30000;
        while (log_count("a.log", "EVLUA_TEST_HOLD_FILE") < c + 1 &&
               th_now_ms() < deadline)
            th_sleep_ms(20);
        CHECK_INT(log_count("a.log", "EVLUA_TEST_HOLD_FILE"), c + 1,
                  "evlua holds a transaction open for the cut");
        long long t0 = th_now_ms();
        link_set("down");
        th_sleep_ms(cut_s[c] * 1000L);
        link_set("up");
        fprintf(stderr, "cut %d: %lld ms\n", c + 1, th_now_ms() - t0);
        deadline = th_now_ms() + 120000;
        while (log_count("a.log", RECOVERY_LINE) < c + 1 && exited(pid) < 0 &&
               th_now_ms() < deadline)
            th_sleep_ms(200);
        snprintf(text, sizeof text,
                 "cut %d (%d s > transaction.timeout.ms %d ms): evlua "
                 "logged the recovery line",
                 c + 1, cut_s[c], TXN_TIMEOUT_MS);
        CHECK_INT(log_count("a.log", RECOVERY_LINE), c + 1, text);
        CHECK_INT(exited(pid), -1,
                  "... and is still running (-1: no exit code)");
        if (check_failures_)
            break;
    }
    /* commands sent after the link came back are processed too */
    th_sleep_ms(5000);
    stop_sending = 1;
    pthread_join(producer, NULL);
    fprintf(stderr, "%zu commands sent\n", nids);

    CHECK_INT(ct_wait_count(&t, results, nids, 180, &res), nids,
              "a result for every command, those sent after the cuts too");
    ct_read_all(&t, events, "read_committed", &evs);
    CHECK_INT(ct_check_exactly_once(&evs, &res, ids, nids), 0,
              "exactly once: results, events, sequences");
    CHECK(!ct_log_has(&t, "a.log", "stops after a fatal Kafka error"),
          "no fatal stop was logged");
    if (exited(pid) < 0)
        CHECK_INT(th_stop(pid, SIGTERM, 30), 0,
                  "the instance exits 0 on SIGTERM");
    if (check_failures_)
        ct_dump_log(&t, "a.log");
    for (size_t i = 0; i < nids; i++)
        free(ids[i]);
    free(ids);
    th_recs_free(&evs);
    th_recs_free(&res);
    return check_done();
}
