/*
 * soak_load.c - the load generator and the final checks of scripts/soak,
 * against the example scripts (aggregates/ and projections/ of the
 * repository) run by a real `evlua run`.
 *
 *   soak_load send BOOTSTRAP RATE SECONDS AGGREGATES TAG PROGRESS DRAIN
 *       Send RATE commands/s for SECONDS to the commands topics of the
 *       example aggregate types (account 40 %, customer 25 %, cart 20 %,
 *       host 15 %), spread over AGGREGATES aggregate ids in proportion;
 *       command ids are TAG-0, TAG-1, ... Each command is one the
 *       aggregate accepts given the commands sent to it before (open
 *       before deposit, add a cart item that is not there, ...), except
 *       withdrawals, which the balance may refuse. A thread reads the
 *       results topics (read_committed) meanwhile. Every second PROGRESS
 *       is rewritten (atomically) with one line
 *           sent results accepted rejected failed duplicate done
 *       (done: 0 while sending, 1 after). After SECONDS it waits up to
 *       DRAIN seconds for a result of every command sent, then prints
 *       that line on stdout and exits 0, or 1 when results are missing.
 *   soak_load verify BOOTSTRAP CONNINFO TAG SENT
 *       Read every results and events topic from the start to its end,
 *       read_committed, and check:
 *         - each of the SENT commands has exactly one result, no other
 *           result exists, no failed one;
 *         - every event an accepted result lists is on the events topics
 *           exactly once, and every event there is listed by one result;
 *         - per aggregate, sequences 1..k without gaps or repeats, all on
 *           one partition;
 *       and the read models in PostgreSQL against the events (for the
 *       projections whose tables exist): ledger (one row per money
 *       event, per account), balances (balance = the sum of the account's
 *       events, movements = their count), customers (one row per
 *       registered customer, its last name, email and address),
 *       shipping_addresses (last address, number of changes),
 *       welcome_kits (the first address), hosts and host_users (users
 *       present); no parked events. Prints the figures and one line per
 *       problem (the first 20 of each kind), and a last line
 *       "violations=N"; exits 0 only when N is 0.
 *
 * The producer uses the murmur2 partitioner (what evlua requires of
 * command producers, README "Guarantees") and is idempotent, so a retried
 * send is never a second command.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#define NTYPES 4
static const char *const types[NTYPES] = {"account", "customer", "cart",
                                          "host"};
/* share of the commands per type, in percent, and of the aggregate ids */
static const int weights[NTYPES] = {40, 25, 20, 15};

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "soak_load: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(long long us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    if (us > 0)
        nanosleep(&ts, NULL);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        abort();
    return p;
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p)
        abort();
    return p;
}

/* xorshift64*: the workload is the same for the same seed */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

static rd_kafka_conf_t *conf_for(const char *bootstrap)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                          sizeof errstr) != RD_KAFKA_CONF_OK)
        die("bootstrap.servers: %s", errstr);
    return conf;
}

static void set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK)
        die("%s: %s", k, errstr);
}

/* Partitions of topic, 0 when it does not exist (yet). */
static int partitions_of(rd_kafka_t *rk, const char *topic)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    int n = 0;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) ==
        RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (md->topic_cnt == 1 && md->topics[0].err == 0)
            n = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    return n;
}

/* A read_committed consumer assigned every partition of the KIND topics
 * of every type ("results", "events") from the start; partition EOF
 * events on. *nparts: the partitions assigned. */
static rd_kafka_t *reader_of(const char *bootstrap, const char *group,
                             const char *kind, int *nparts)
{
    char errstr[512], topic[128];
    rd_kafka_conf_t *conf = conf_for(bootstrap);
    rd_kafka_t *rk;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(32);
    set(conf, "group.id", group);
    set(conf, "isolation.level", "read_committed");
    set(conf, "enable.auto.commit", "false");
    set(conf, "enable.partition.eof", "true");
    set(conf, "fetch.wait.max.ms", "50");
    if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr)))
        die("rd_kafka_new(consumer): %s", errstr);
    rd_kafka_poll_set_consumer(rk);
    *nparts = 0;
    for (int i = 0; i < NTYPES; i++) {
        int n;
        snprintf(topic, sizeof topic, "%s.%s", types[i], kind);
        n = partitions_of(rk, topic);
        for (int p = 0; p < n; p++)
            rd_kafka_topic_partition_list_add(l, topic, p)->offset =
                RD_KAFKA_OFFSET_BEGINNING;
        *nparts += n;
    }
    if (rd_kafka_assign(rk, l))
        die("assign failed");
    rd_kafka_topic_partition_list_destroy(l);
    return rk;
}

/* ---- send ----------------------------------------------------------------
 */

typedef struct counts {
    long long sent, results, accepted, rejected, failed, duplicate;
} counts;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static counts cnt;
static volatile int sending_done, stop_reader;
static char tag_prefix[64]; /* "TAG-" */
static long long delivery_errors;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *op)
{
    if (m->err) {
        fprintf(stderr, "soak_load: delivery failed: %s\n",
                rd_kafka_err2str(m->err));
        __atomic_add_fetch(&delivery_errors, 1, __ATOMIC_RELAXED);
    }
}

/* Counts the results of this run's commands by status. */
static void *results_reader(void *arg)
{
    rd_kafka_t *rk = arg;
    size_t plen = strlen(tag_prefix);
    char needle[96];
    int n = snprintf(needle, sizeof needle, "\"command_id\":\"%s", tag_prefix);
    while (!stop_reader) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m)
            continue;
        if (!m->err && m->payload &&
            memmem(m->payload, m->len, needle, (size_t)n)) {
            const char *p = m->payload;
            pthread_mutex_lock(&mu);
            cnt.results++;
            if (memmem(p, m->len, "\"status\":\"accepted\"", 19))
                cnt.accepted++;
            else if (memmem(p, m->len, "\"status\":\"rejected\"", 19))
                cnt.rejected++;
            else if (memmem(p, m->len, "\"status\":\"duplicate\"", 20))
                cnt.duplicate++;
            else
                cnt.failed++;
            pthread_mutex_unlock(&mu);
        }
        rd_kafka_message_destroy(m);
    }
    (void)plen;
    return NULL;
}

static void write_progress(const char *path, int done)
{
    char tmp[4200];
    counts c;
    FILE *f;
    pthread_mutex_lock(&mu);
    c = cnt;
    pthread_mutex_unlock(&mu);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!(f = fopen(tmp, "w")))
        die("cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "%lld %lld %lld %lld %lld %lld %d\n", c.sent, c.results,
            c.accepted, c.rejected, c.failed, c.duplicate, done);
    fclose(f);
    if (rename(tmp, path) != 0)
        die("rename %s: %s", tmp, strerror(errno));
}

/* What the generator knows of each aggregate: enough to send commands
 * the aggregate accepts (it sees them in the same order). */
typedef struct agg_state {
    uint8_t created; /* opened, registered, host created */
    uint8_t items;   /* cart: products in it (bit p: "p<p>") */
    uint16_t users;  /* host: users on it (bit u: "u<u>"; u0 the admin) */
    uint32_t k;      /* customer: profile changes so far */
} agg_state;

/* Command i: its type index, aggregate id and JSON into buf. */
static int next_command(long long i, int *naggs, agg_state **st, char *agg,
                        size_t aggn, char *buf, size_t n)
{
    uint32_t r = rng() % 100, w = 0;
    int t = 0;
    for (t = 0; t < NTYPES - 1; t++) {
        w += (uint32_t)weights[t];
        if (r < w)
            break;
    }
    uint32_t j = rng() % (uint32_t)naggs[t];
    agg_state *s = &st[t][j];
    char data[256];
    const char *cmd;
    switch (t) {
    case 0: /* account */
        snprintf(agg, aggn, "acct-%u", j);
        if (!s->created) {
            s->created = 1;
            cmd = "OpenAccount";
            snprintf(data, sizeof data, "{\"owner\":\"owner %u\"}", j);
        } else {
            uint32_t a = rng() % 1000 + 1, x = rng() % 3;
            cmd = x == 0 ? "Withdraw" : "Deposit";
            if (rng() % 2)
                snprintf(data, sizeof data,
                         "{\"amount\":%u,\"memo\":\"m%lld\"}", a, i);
            else
                snprintf(data, sizeof data, "{\"amount\":%u}", a);
        }
        break;
    case 1: /* customer */
        snprintf(agg, aggn, "cust-%u", j);
        if (!s->created) {
            s->created = 1;
            cmd = "RegisterCustomer";
            snprintf(data, sizeof data,
                     "{\"name\":\"Customer %u\",\"email\":\"c%u@example.com\","
                     "\"address\":\"%u Main St\"}",
                     j, j, j);
        } else if (++s->k % 2) {
            cmd = "UpdateCustomerProfile";
            snprintf(
                data, sizeof data,
                "{\"name\":\"Customer %u v%u\",\"address\":\"%u Side St\"}", j,
                s->k, s->k);
        } else {
            cmd = "ChangeEmail";
            snprintf(data, sizeof data, "{\"email\":\"c%u-%u@example.com\"}", j,
                     s->k);
        }
        break;
    case 2: { /* cart: add what is not there, remove what is */
        uint32_t p = rng() % 8;
        snprintf(agg, aggn, "cart-%u", j);
        if (s->items & (1u << p)) {
            s->items &= (uint8_t) ~(1u << p);
            cmd = "RemoveItemFromCart";
            snprintf(data, sizeof data, "{\"productId\":\"p%u\"}", p);
        } else {
            s->items |= (uint8_t)(1u << p);
            cmd = "AddItemToCart";
            snprintf(data, sizeof data,
                     "{\"productId\":\"p%u\",\"quantity\":%u,\"price\":%u}", p,
                     rng() % 3 + 1, 100 * (p + 1));
        }
        break;
    }
    default: { /* host: u0 is its admin (never removed), u1..u7 members */
        snprintf(agg, aggn, "host-%u", j);
        if (!s->created) {
            s->created = 1;
            cmd = "CreateHost";
            snprintf(data, sizeof data, "{\"name\":\"Host %u\"}", j);
            break;
        }
        uint32_t u = (s->users & 1) ? rng() % 7 + 1 : 0;
        if (s->users & (1u << u)) {
            s->users &= (uint16_t) ~(1u << u);
            cmd = "RemoveUser";
            snprintf(data, sizeof data, "{\"userId\":\"u%u\"}", u);
        } else {
            s->users |= (uint16_t)(1u << u);
            cmd = "AddUser";
            snprintf(data, sizeof data,
                     "{\"userId\":\"u%u\",\"email\":\"u%u@h%u.example\","
                     "\"role\":\"%s\"}",
                     u, u, j, u == 0 ? "admin" : "member");
        }
    }
    }
    snprintf(buf, n,
             "{\"id\":\"%s%lld\",\"type\":\"%s\",\"aggregate_type\":\"%s\","
             "\"aggregate_id\":\"%s\",\"data\":%s}",
             tag_prefix, i, cmd, types[t], agg, data);
    return t;
}

static int cmd_send(int argc, char **argv)
{
    const char *bootstrap = argv[2], *progress = argv[7];
    double rate = atof(argv[3]);
    long long seconds = atoll(argv[4]), drain = atoll(argv[8]);
    int aggregates = atoi(argv[5]), naggs[NTYPES], nparts;
    agg_state *st[NTYPES];
    char errstr[512], group[128], topic[128], agg[64], json[1024];
    rd_kafka_conf_t *conf;
    rd_kafka_t *p, *c;
    pthread_t th;
    long long start, next_progress, i = 0, total;

    if (rate <= 0 || seconds <= 0 || aggregates < NTYPES || drain < 0)
        die("send: RATE, SECONDS > 0, AGGREGATES >= %d, DRAIN >= 0", NTYPES);
    snprintf(tag_prefix, sizeof tag_prefix, "%s-", argv[6]);
    for (int t = 0; t < NTYPES; t++) {
        naggs[t] = aggregates * weights[t] / 100;
        if (naggs[t] < 1)
            naggs[t] = 1;
        st[t] = xcalloc((size_t)naggs[t], sizeof *st[t]);
    }

    conf = conf_for(bootstrap);
    set(conf, "partitioner", "murmur2_random");
    set(conf, "enable.idempotence", "true");
    set(conf, "linger.ms", "5");
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    if (!(p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr)))
        die("rd_kafka_new(producer): %s", errstr);
    snprintf(group, sizeof group, "soak.%s.progress", argv[6]);
    c = reader_of(bootstrap, group, "results", &nparts);
    if (nparts == 0)
        die("no results topics (is evlua run up?)");
    /* asked through the consumer: a producer's metadata request would
     * create a missing topic on a broker that auto-creates */
    for (int t = 0; t < NTYPES; t++) {
        snprintf(topic, sizeof topic, "%s.commands", types[t]);
        if (partitions_of(c, topic) == 0)
            die("topic %s does not exist (is evlua run up?)", topic);
    }
    pthread_create(&th, NULL, results_reader, c);

    total = (long long)(rate * (double)seconds);
    start = now_us();
    next_progress = start;
    write_progress(progress, 0);
    while (i < total) {
        long long due = start + (long long)((double)i * 1e6 / rate);
        long long now = now_us();
        if (now >= next_progress) {
            write_progress(progress, 0);
            next_progress += 1000000;
        }
        if (now < due) {
            sleep_us(due - now < 1000 ? due - now : 1000);
            continue;
        }
        int t = next_command(i, naggs, st, agg, sizeof agg, json, sizeof json);
        snprintf(topic, sizeof topic, "%s.commands", types[t]);
        for (;;) {
            rd_kafka_resp_err_t e = rd_kafka_producev(
                p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(agg, strlen(agg)),
                RD_KAFKA_V_VALUE(json, strlen(json)),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
                break;
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                die("produce to %s: %s", topic, rd_kafka_err2str(e));
            rd_kafka_poll(p, 10);
        }
        rd_kafka_poll(p, 0);
        i++;
        pthread_mutex_lock(&mu);
        cnt.sent = i;
        pthread_mutex_unlock(&mu);
    }
    if (rd_kafka_flush(p, 60000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        die("flush: commands not delivered within 60 s");
    if (delivery_errors)
        die("%lld commands were not delivered", delivery_errors);
    sending_done = 1;
    write_progress(progress, 1);
    for (long long deadline = now_us() + drain * 1000000;;) {
        long long got;
        pthread_mutex_lock(&mu);
        got = cnt.results;
        pthread_mutex_unlock(&mu);
        write_progress(progress, 1);
        if (got >= total || now_us() > deadline)
            break;
        sleep_us(200000);
    }
    stop_reader = 1;
    pthread_join(th, NULL);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    rd_kafka_destroy(p);
    write_progress(progress, 1);
    printf("%lld %lld %lld %lld %lld %lld 1\n", cnt.sent, cnt.results,
           cnt.accepted, cnt.rejected, cnt.failed, cnt.duplicate);
    for (int t = 0; t < NTYPES; t++)
        free(st[t]);
    (void)argc;
    return cnt.results >= total ? 0 : 1;
}

/* ---- verify --------------------------------------------------------------
 */

static long long violations;
static const char *kind_now; /* the kind of the current problems */
static int kind_shown;

#define PROBLEM(...)                                                           \
    do {                                                                       \
        violations++;                                                          \
        if (kind_shown++ < 20) {                                               \
            printf("VIOLATION (%s): ", kind_now);                              \
            printf(__VA_ARGS__);                                               \
            putchar('\n');                                                     \
        }                                                                      \
    } while (0)

static void kind(const char *k)
{
    kind_now = k;
    kind_shown = 0;
}

/* A set of event ids (UUIDs as 16 bytes), open addressing. state: 0
 * empty, 1 listed by a result, 2 listed and seen on a topic, 3 seen but
 * not listed. */
typedef struct idset {
    uint64_t (*key)[2];
    uint8_t *state;
    size_t cap, n;
} idset;

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* "xxxxxxxx-xxxx-..." -> 128 bits; 0 when s is not a UUID. */
static int parse_uuid(const char *s, uint64_t out[2])
{
    int nd = 0;
    out[0] = out[1] = 0;
    for (; *s; s++) {
        int v;
        if (*s == '-')
            continue;
        if ((v = hexval(*s)) < 0 || nd >= 32)
            return 0;
        out[nd / 16] = out[nd / 16] << 4 | (uint64_t)v;
        nd++;
    }
    return nd == 32;
}

static size_t id_slot(const idset *s, const uint64_t k[2])
{
    size_t h = (size_t)((k[0] ^ (k[1] * 0x9e3779b97f4a7c15ull)) *
                            0xff51afd7ed558ccdull >>
                        17);
    for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1))
        if (!s->state[i] || (s->key[i][0] == k[0] && s->key[i][1] == k[1]))
            return i;
}

static uint8_t *id_get(idset *s, const uint64_t k[2], int create)
{
    size_t i;
    if (create && (s->n + 1) * 10 > s->cap * 7) {
        idset bigger = {0};
        bigger.cap = s->cap ? s->cap * 2 : 1 << 16;
        bigger.key = xcalloc(bigger.cap, sizeof *bigger.key);
        bigger.state = xcalloc(bigger.cap, 1);
        for (size_t j = 0; j < s->cap; j++)
            if (s->state[j]) {
                size_t d = id_slot(&bigger, s->key[j]);
                bigger.key[d][0] = s->key[j][0];
                bigger.key[d][1] = s->key[j][1];
                bigger.state[d] = s->state[j];
            }
        bigger.n = s->n;
        free(s->key);
        free(s->state);
        *s = bigger;
    }
    if (!s->cap)
        return NULL;
    i = id_slot(s, k);
    if (!s->state[i]) {
        if (!create)
            return NULL;
        s->key[i][0] = k[0];
        s->key[i][1] = k[1];
        s->n++;
    }
    return &s->state[i];
}

/* What the events say each aggregate's read model rows must be. */
typedef struct agg {
    char *key; /* "type/id" */
    int type;
    const char *id; /* into key */
    long long last_seq;
    int partition;
    /* account */
    int opened;
    long long balance, movements;
    /* customer */
    int registered;
    char *name, *email, *address, *first_address;
    long long address_changes;
    /* host */
    int created;
    long long users;
    cJSON *user_set; /* userId -> true */
    struct agg *next;
} agg;

#define AGG_BUCKETS 65536
static agg *aggs[AGG_BUCKETS];
static long long naggs_seen;

static agg *agg_get(int type, const char *id, int create)
{
    char key[1100];
    uint32_t h = 2166136261u;
    snprintf(key, sizeof key, "%s/%s", types[type], id);
    for (const char *c = key; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    for (agg *a = aggs[h % AGG_BUCKETS]; a; a = a->next)
        if (strcmp(a->key, key) == 0)
            return a;
    if (!create)
        return NULL;
    agg *a = xcalloc(1, sizeof *a);
    a->key = xstrdup(key);
    a->type = type;
    a->id = a->key + strlen(types[type]) + 1;
    a->partition = -1;
    a->next = aggs[h % AGG_BUCKETS];
    aggs[h % AGG_BUCKETS] = a;
    naggs_seen++;
    return a;
}

static const char *jstr(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static long long jint(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? (long long)v->valuedouble : -1;
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? xstrdup(v) : NULL;
}

typedef void (*on_record)(const rd_kafka_message_t *m, cJSON *json, void *arg);

/* Read every KIND topic to its end (read_committed), calling fn per
 * record; returns the records read. */
static long long read_all(const char *bootstrap, const char *tag,
                          const char *kind_name, on_record fn, void *arg)
{
    char group[160];
    int nparts, eof = 0;
    long long n = 0, deadline = now_us() + 600 * 1000000LL;
    rd_kafka_t *rk;
    snprintf(group, sizeof group, "soak.%s.verify", tag);
    rk = reader_of(bootstrap, group, kind_name, &nparts);
    while (eof < nparts) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
        if (now_us() > deadline)
            die("reading the %s topics: no end within 10 minutes", kind_name);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            eof++;
        else if (m->err)
            fprintf(stderr, "soak_load: reading %s: %s\n", kind_name,
                    rd_kafka_message_errstr(m));
        else {
            cJSON *json =
                m->payload ? cJSON_ParseWithLength(m->payload, m->len) : NULL;
            fn(m, json, arg);
            cJSON_Delete(json);
            n++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return n;
}

typedef struct vstate {
    long long sent;
    uint8_t *seen; /* results per command index */
    idset events;  /* event ids */
    counts c;
    long long listed, events_read, money_events, registered, addr_events;
} vstate;

static void on_result(const rd_kafka_message_t *m, cJSON *r, void *arg)
{
    vstate *v = arg;
    const char *id = jstr(r, "command_id"), *st = jstr(r, "status");
    size_t plen = strlen(tag_prefix);
    const cJSON *evs = cJSON_GetObjectItemCaseSensitive(r, "events"), *e;
    char *end;
    long long idx;
    kind("results");
    if (!r || !id || !st) {
        PROBLEM("a malformed result at %s[%d]@%lld",
                rd_kafka_topic_name(m->rkt), (int)m->partition,
                (long long)m->offset);
        return;
    }
    if (strncmp(id, tag_prefix, plen) != 0 ||
        (idx = strtoll(id + plen, &end, 10), *end) || idx < 0 ||
        idx >= v->sent) {
        PROBLEM("a result for command %s, which this run did not send", id);
        return;
    }
    if (v->seen[idx]++ > 0) {
        /* one problem per cause: its events were counted with the first */
        PROBLEM("two results for command %s", id);
        return;
    }
    v->c.results++;
    if (strcmp(st, "accepted") == 0)
        v->c.accepted++;
    else if (strcmp(st, "rejected") == 0)
        v->c.rejected++;
    else if (strcmp(st, "duplicate") == 0)
        v->c.duplicate++;
    else {
        v->c.failed++;
        kind("failed commands");
        PROBLEM("command %s: %s", id,
                m->len < 400 ? (const char *)m->payload : "(long result)");
    }
    if (strcmp(st, "accepted") != 0) {
        if (cJSON_GetArraySize(evs) > 0) {
            kind("results");
            PROBLEM("a %s result lists events: command %s", st, id);
        }
        return;
    }
    cJSON_ArrayForEach(e, evs)
    {
        uint64_t k[2];
        uint8_t *s;
        kind("results");
        if (!cJSON_IsString(e) || !parse_uuid(e->valuestring, k)) {
            PROBLEM("command %s lists a malformed event id", id);
            continue;
        }
        s = id_get(&v->events, k, 1);
        if (*s)
            PROBLEM("event %s is listed by two results", e->valuestring);
        *s = 1;
        v->listed++;
    }
}

static void on_event(const rd_kafka_message_t *m, cJSON *e, void *arg)
{
    vstate *v = arg;
    const char *id = jstr(e, "id"), *aid = jstr(e, "aggregate_id"),
               *type = jstr(e, "type");
    const char *topic = rd_kafka_topic_name(m->rkt);
    long long seq = jint(e, "sequence");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "data");
    uint64_t k[2];
    uint8_t *s;
    int t;
    agg *a;
    kind("events");
    v->events_read++;
    if (!e || !id || !aid || !type || !parse_uuid(id, k)) {
        PROBLEM("a malformed event at %s[%d]@%lld", topic, (int)m->partition,
                (long long)m->offset);
        return;
    }
    s = id_get(&v->events, k, 1);
    if (*s == 0 || *s == 3) {
        PROBLEM("event %s (%s of %s) is listed by no result", id, type, aid);
        if (*s == 3)
            PROBLEM("event %s appears twice", id);
        *s = 3;
    } else if (*s == 2) {
        PROBLEM("event %s (%s of %s) appears twice", id, type, aid);
    } else {
        *s = 2;
    }
    for (t = 0; t < NTYPES; t++)
        if (strncmp(topic, types[t], strlen(types[t])) == 0 &&
            topic[strlen(types[t])] == '.')
            break;
    if (t == NTYPES)
        return;
    kind("sequences");
    a = agg_get(t, aid, 1);
    if (seq != a->last_seq + 1)
        PROBLEM("aggregate %s: sequence %lld after %lld", a->key, seq,
                a->last_seq);
    a->last_seq = seq;
    if (a->partition < 0)
        a->partition = m->partition;
    else if (a->partition != m->partition)
        PROBLEM("aggregate %s has events on partitions %d and %d", a->key,
                a->partition, (int)m->partition);
    /* what the read models must show */
    if (strcmp(type, "AccountOpened") == 0)
        a->opened = 1;
    else if (strcmp(type, "MoneyDeposited") == 0) {
        a->balance += jint(d, "amount");
        a->movements++;
        v->money_events++;
    } else if (strcmp(type, "MoneyWithdrawn") == 0) {
        a->balance -= jint(d, "amount");
        a->movements++;
        v->money_events++;
    } else if (strcmp(type, "CustomerRegistered") == 0) {
        a->registered = 1;
        v->registered++;
        set_str(&a->name, jstr(d, "name"));
        set_str(&a->email, jstr(d, "email"));
    } else if (strcmp(type, "CustomerNameChanged") == 0)
        set_str(&a->name, jstr(d, "newName"));
    else if (strcmp(type, "CustomerEmailChanged") == 0)
        set_str(&a->email, jstr(d, "newEmail"));
    else if (strcmp(type, "CustomerAddressChanged") == 0) {
        set_str(&a->address, jstr(d, "newAddress"));
        if (!a->first_address)
            set_str(&a->first_address, jstr(d, "newAddress"));
        a->address_changes++;
        v->addr_events++;
    } else if (strcmp(type, "HostCreated") == 0)
        a->created = 1;
    else if (strcmp(type, "UserAddedToHost") == 0 ||
             strcmp(type, "UserRemovedFromHost") == 0) {
        const char *u = jstr(d, "userId");
        if (!a->user_set)
            a->user_set = cJSON_CreateObject();
        if (u && type[4] == 'A') {
            if (!cJSON_GetObjectItemCaseSensitive(a->user_set, u)) {
                cJSON_AddTrueToObject(a->user_set, u);
                a->users++;
            }
        } else if (u && cJSON_GetObjectItemCaseSensitive(a->user_set, u)) {
            cJSON_DeleteItemFromObjectCaseSensitive(a->user_set, u);
            a->users--;
        }
    }
}

/* ---- the read models ----------------------------------------------------- */

static PGconn *conn;

static PGresult *query(const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die("PQexec(\"%s\") failed: %s", sql, PQerrorMessage(conn));
    return res;
}

static int table_exists(const char *name)
{
    const char *params[1] = {name};
    PGresult *res = PQexecParams(conn, "SELECT to_regclass($1) IS NOT NULL", 1,
                                 NULL, params, NULL, NULL, 0);
    int yes = PQresultStatus(res) == PGRES_TUPLES_OK &&
              strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return yes;
}

static int same(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* rows of a one-row-per-aggregate table: each row's aggregate is known and
 * every expected aggregate has a row */
static void check_rows(const char *table, const char *sql, int type,
                       int (*expected)(const agg *),
                       void (*row)(const agg *, PGresult *, int))
{
    PGresult *res;
    long long want = 0;
    kind(table);
    if (!table_exists(table)) {
        printf("read model %s: no such table (its projection is not among "
               "the scripts): not checked\n",
               table);
        return;
    }
    res = query(sql);
    for (int b = 0; b < AGG_BUCKETS; b++)
        for (agg *a = aggs[b]; a; a = a->next)
            if (a->type == type && expected(a))
                want++;
    if (PQntuples(res) != want)
        PROBLEM("%d rows for %lld aggregates", PQntuples(res), want);
    for (int i = 0; i < PQntuples(res); i++) {
        agg *a = agg_get(type, PQgetvalue(res, i, 0), 0);
        if (!a || !expected(a))
            PROBLEM("a row for %s, which has no such events",
                    PQgetvalue(res, i, 0));
        else
            row(a, res, i);
    }
    printf("read model %s: %d rows checked\n", table, PQntuples(res));
    PQclear(res);
}

static int is_opened(const agg *a)
{
    return a->opened;
}
static int has_movements(const agg *a)
{
    return a->movements > 0;
}
static int is_registered(const agg *a)
{
    return a->registered;
}
static int has_address(const agg *a)
{
    return a->address != NULL;
}
static int is_created(const agg *a)
{
    return a->created;
}
static int has_users(const agg *a)
{
    return a->users > 0;
}

static void row_ledger(const agg *a, PGresult *res, int i)
{
    long long rows = atoll(PQgetvalue(res, i, 1)),
              distinct = atoll(PQgetvalue(res, i, 2)),
              maxseq = atoll(PQgetvalue(res, i, 3));
    if (rows != a->movements || distinct != a->movements)
        PROBLEM("account %s: %lld ledger rows (%lld distinct events) for %lld "
                "money events",
                a->id, rows, distinct, a->movements);
    (void)maxseq;
}

static void row_balance(const agg *a, PGresult *res, int i)
{
    long long bal = atoll(PQgetvalue(res, i, 1)),
              mov = atoll(PQgetvalue(res, i, 2));
    if (bal != a->balance || mov != a->movements)
        PROBLEM("account %s: balance %lld (%lld movements), its events sum to "
                "%lld (%lld)",
                a->id, bal, mov, a->balance, a->movements);
}

static void row_customer(const agg *a, PGresult *res, int i)
{
    if (!same(PQgetvalue(res, i, 1), a->name) ||
        !same(PQgetvalue(res, i, 2), a->email) ||
        !same(PQgetvalue(res, i, 3), a->address))
        PROBLEM("customer %s: row (%s, %s, %s), events say (%s, %s, %s)", a->id,
                PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
                PQgetvalue(res, i, 3), a->name, a->email,
                a->address ? a->address : "");
}

static void row_shipping(const agg *a, PGresult *res, int i)
{
    if (!same(PQgetvalue(res, i, 1), a->address) ||
        atoll(PQgetvalue(res, i, 2)) != a->address_changes)
        PROBLEM("customer %s: shipping address %s after %s changes, events "
                "say %s after %lld",
                a->id, PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), a->address,
                a->address_changes);
}

static void row_kit(const agg *a, PGresult *res, int i)
{
    if (!same(PQgetvalue(res, i, 1), a->first_address))
        PROBLEM("customer %s: welcome kit to %s, the first address is %s",
                a->id, PQgetvalue(res, i, 1), a->first_address);
}

static void row_host(const agg *a, PGresult *res, int i)
{
    (void)a;
}

static void row_host_users(const agg *a, PGresult *res, int i)
{
    if (atoll(PQgetvalue(res, i, 1)) != a->users)
        PROBLEM("host %s: %s users in host_users, the events leave %lld", a->id,
                PQgetvalue(res, i, 1), a->users);
}

static int cmd_verify(int argc, char **argv)
{
    const char *bootstrap = argv[2], *conninfo = argv[3], *tag = argv[4];
    vstate v = {0};
    long long nres, nev, t0 = now_us();

    v.sent = atoll(argv[5]);
    snprintf(tag_prefix, sizeof tag_prefix, "%s-", tag);
    v.seen = xcalloc((size_t)v.sent, 1);

    nres = read_all(bootstrap, tag, "results", on_result, &v);
    kind("results");
    for (long long i = 0; i < v.sent; i++)
        if (!v.seen[i])
            PROBLEM("no result for command %s%lld", tag_prefix, i);
    nev = read_all(bootstrap, tag, "events", on_event, &v);
    kind("events");
    for (size_t i = 0; i < v.events.cap; i++)
        if (v.events.state[i] == 1)
            PROBLEM("an event listed by a result is not on the events topics "
                    "(%016" PRIx64 "%016" PRIx64 ")",
                    v.events.key[i][0], v.events.key[i][1]);
    printf("commands: %lld sent, %lld results (%lld accepted, %lld rejected, "
           "%lld failed, %lld duplicate)\n",
           v.sent, v.c.results, v.c.accepted, v.c.rejected, v.c.failed,
           v.c.duplicate);
    printf("events: %lld on the topics (read_committed), %lld listed by "
           "results, %lld aggregates\n",
           nev, v.listed, naggs_seen);

    conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK)
        die("cannot connect to PostgreSQL: %s", PQerrorMessage(conn));
    check_rows("ledger",
               "SELECT account_id, count(*), count(DISTINCT event_id), "
               "max(sequence) FROM ledger GROUP BY account_id",
               0, has_movements, row_ledger);
    check_rows("balances",
               "SELECT account_id, balance, movements FROM balances", 0,
               is_opened, row_balance);
    check_rows("customers", "SELECT id, name, email, address FROM customers", 1,
               is_registered, row_customer);
    check_rows("shipping_addresses",
               "SELECT customer_id, address, changes FROM shipping_addresses",
               1, has_address, row_shipping);
    check_rows("welcome_kits", "SELECT customer_id, address FROM welcome_kits",
               1, has_address, row_kit);
    check_rows("hosts", "SELECT id FROM hosts", 3, is_created, row_host);
    check_rows("host_users",
               "SELECT host_id, count(*) FROM host_users GROUP BY host_id", 3,
               has_users, row_host_users);
    if (table_exists("evlua_parked")) {
        PGresult *res = query("SELECT projection, count(*) FROM evlua_parked "
                              "GROUP BY projection");
        kind("parked");
        for (int i = 0; i < PQntuples(res); i++)
            PROBLEM("projection %s has %s parked events", PQgetvalue(res, i, 0),
                    PQgetvalue(res, i, 1));
        PQclear(res);
    }
    PQfinish(conn);
    printf("read %lld results and %lld events in %.1f s\n", nres, nev,
           (double)(now_us() - t0) / 1e6);
    printf("violations=%lld\n", violations);
    free(v.seen);
    free(v.events.key);
    free(v.events.state);
    (void)argc;
    return violations ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 9 && strcmp(argv[1], "send") == 0)
        return cmd_send(argc, argv);
    if (argc == 6 && strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc, argv);
    fprintf(stderr,
            "usage: soak_load send BOOTSTRAP RATE SECONDS AGGREGATES TAG "
            "PROGRESS DRAIN\n"
            "       soak_load verify BOOTSTRAP CONNINFO TAG SENT\n"
            "(scripts/soak runs it; see the top of tests/bench/soak_load.c)\n");
    return 2;
}
