/*
 * cmdtest.h - the harness of the command side's tests against the real
 * broker (tests/c/test_cmd_*.c): a private directory with a config and
 * aggregate scripts, `evlua run` as a child process, a producer of
 * commands, and read-everything consumers that parse what they read.
 *
 * Every test names its topics, group and transactional ids with a prefix
 * unique to the process (the broker is shared by the whole ctest run).
 * Without a broker the tests FAIL (svc.h). Processes, files, logs and
 * topics are the shared harness's (harness.h); this file adds the command
 * side's world on top.
 */
#ifndef EVL_CMDTEST_H
#define EVL_CMDTEST_H

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>

#include "check.h"
#include "harness.h"
#include "kafka.h"
#include "svc.h"

typedef struct ct {
    char bootstrap[256];
    char prefix[128]; /* topic/group prefix, unique per process */
    char dir[512];    /* private directory: configs, scripts, logs */
    const char *bin;  /* the evlua binary */
    const char *src;  /* the source tree */
} ct;

/* The private directory is removed at exit when every check passed and
 * nothing died (and EVLUA_TEST_KEEP is unset); after a failure it stays
 * for its logs. */
static char ct_dir_[512];

static inline void ct_cleanup_(void)
{
    const char *keep = getenv("EVLUA_TEST_KEEP");
    if (!ct_dir_[0] || th_died || check_failures_ > 0 || (keep && *keep))
        return;
    th_remove_dir(ct_dir_);
}

static inline void ct_write_file(const ct *t, const char *rel, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", t->dir, rel);
    th_write_file(path, text);
}

/* Copy aggregates/NAME of the source tree into the test's aggregates. */
static inline void ct_copy_aggregate(const ct *t, const char *name)
{
    char from[1024], to[1024], buf[8192];
    size_t n;
    FILE *in, *out;
    snprintf(from, sizeof from, "%s/aggregates/%s", t->src, name);
    snprintf(to, sizeof to, "%s/aggregates/%s", t->dir, name);
    if (!(in = fopen(from, "r")) || !(out = fopen(to, "w")))
        th_die("cannot copy %s to %s", from, to);
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
}

static inline void ct_init(ct *t, const char *name)
{
    char aggs[1024];
    memset(t, 0, sizeof *t);
    svc_kafka_bootstrap(t->bootstrap, sizeof t->bootstrap);
    t->bin = getenv("EVLUA_BIN");
    t->src = getenv("EVLUA_SOURCE_DIR");
    if (!t->bin || !t->src)
        th_die("EVLUA_BIN and EVLUA_SOURCE_DIR must be set (run through "
               "ctest)");
    snprintf(t->prefix, sizeof t->prefix, "ct-%s-%ld-%ld", name, (long)getpid(),
             (long)time(NULL));
    snprintf(t->dir, sizeof t->dir, "/tmp/evlua-%s-XXXXXX", name);
    if (!mkdtemp(t->dir))
        th_die("mkdtemp: %s", strerror(errno));
    if (!ct_dir_[0]) {
        snprintf(ct_dir_, sizeof ct_dir_, "%s", t->dir);
        atexit(ct_cleanup_);
    }
    snprintf(aggs, sizeof aggs, "%s/aggregates", t->dir);
    mkdir(aggs, 0755);
    fprintf(stderr, "test directory %s, prefix %s\n", t->dir, t->prefix);
}

/* Topic of aggregate type `type` and kind ("commands", "events", ...). */
static inline void ct_topic(const ct *t, const char *type, const char *kind,
                            char *buf, size_t n)
{
    snprintf(buf, n, "%s.%s.%s", t->prefix, type, kind);
}

/* Write config NAME.lua: transactional id txid; extra_commands and
 * extra_kafka are Lua fields (with trailing commas) added to the commands
 * and kafka tables. */
static inline void ct_config(const ct *t, const char *name, const char *txid,
                             const char *extra_commands,
                             const char *extra_kafka)
{
    char text[8192], rel[256];
    snprintf(text, sizeof text,
             "return {\n"
             "  aggregates = '%s/aggregates',\n"
             "  projections = {},\n"
             "  kafka = { ['bootstrap.servers'] = '%s',\n"
             "            ['session.timeout.ms'] = 6000,\n"
             "            ['heartbeat.interval.ms'] = 1000,\n"
             "            %s },\n"
             "  commands = {\n"
             "    group_id = '%s.group', transactional_id = '%s.%s',\n"
             "    topics = { commands = '%s.{type}.commands',\n"
             "               events = '%s.{type}.events',\n"
             "               state = '%s.{type}.state',\n"
             "               results = '%s.{type}.results' },\n"
             "    %s\n"
             "  },\n"
             "}\n",
             t->dir, t->bootstrap, extra_kafka ? extra_kafka : "", t->prefix,
             t->prefix, txid, t->prefix, t->prefix, t->prefix, t->prefix,
             extra_commands ? extra_commands : "");
    snprintf(rel, sizeof rel, "%s.lua", name);
    ct_write_file(t, rel, text);
}

/* ct_init with the customer aggregate of the source tree and config "a"
 * (ct_config's arguments): the world of most command-side tests. */
static inline void ct_init_customer(ct *t, const char *name, const char *txid,
                                    const char *extra_commands,
                                    const char *extra_kafka)
{
    ct_init(t, name);
    ct_copy_aggregate(t, "customer.lua");
    ct_config(t, "a", txid, extra_commands, extra_kafka);
}

/* Start `evlua run -c DIR/CONFIG.lua`, stderr to DIR/LOG; env: extra
 * "K=V" (or NULL). */
static inline pid_t ct_start(const ct *t, const char *config, const char *log,
                             const char *env)
{
    char cfg[1024], logpath[1024];
    snprintf(cfg, sizeof cfg, "%s/%s.lua", t->dir, config);
    snprintf(logpath, sizeof logpath, "%s/%s", t->dir, log);
    const char *argv[] = {t->bin, "run", "-c", cfg, NULL};
    return th_spawn(logpath, env, argv);
}

/* Does DIR/LOG contain text? */
static inline int ct_log_has(const ct *t, const char *log, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    return th_file_has(path, text);
}

/* Wait up to timeout_ms for text to show in DIR/LOG; 1 when it did. */
static inline int ct_wait_log(const ct *t, const char *log, const char *text,
                              long long timeout_ms)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    return th_wait_log(path, text, 1, timeout_ms) >= 1;
}

static inline void ct_dump_log(const ct *t, const char *log)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    th_dump_log(path, log);
}

static inline rd_kafka_conf_t *ct_conf(const ct *t)
{
    return th_kconf(t->bootstrap);
}

/* A plain producer with the murmur2 partitioner (as evlua requires of
 * command producers). */
static inline rd_kafka_t *ct_producer(const ct *t)
{
    rd_kafka_conf_t *conf = ct_conf(t);
    th_kset(conf, "partitioner", "murmur2_random");
    th_kset(conf, "enable.idempotence", "true");
    th_kset(conf, "message.max.bytes", "10000000");
    th_kset(conf, "linger.ms", "1");
    return th_kafka_new(RD_KAFKA_PRODUCER, conf, "producer");
}

/* Produce value to topic with key (NULL: none); partition -1: the
 * partitioner's choice. */
static inline void ct_send_raw(rd_kafka_t *rk, const char *topic,
                               int32_t partition, const char *key,
                               const void *value, size_t len)
{
    rd_kafka_resp_err_t e;
    for (;;) {
        e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic),
            RD_KAFKA_V_PARTITION(partition < 0 ? RD_KAFKA_PARTITION_UA
                                               : partition),
            RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
            RD_KAFKA_V_VALUE((void *)value, len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            break;
        rd_kafka_poll(rk, 10);
    }
    if (e)
        th_die("rd_kafka_producev(%s): %s", topic, rd_kafka_err2str(e));
    rd_kafka_poll(rk, 0);
}

static inline void ct_flush(rd_kafka_t *rk)
{
    if (rd_kafka_flush(rk, 30000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        th_die("flush: messages not delivered in 30 s");
}

/* Send the command {id,type,aggregate_type,aggregate_id,data[,extra]}
 * keyed by the aggregate id. extra: more members, e.g.
 * "\"expected_version\":2" (or NULL). */
static inline void ct_send(const ct *t, rd_kafka_t *rk, const char *type,
                           const char *id, const char *command_type,
                           const char *aggregate_id, const char *data,
                           const char *extra)
{
    char topic[256];
    size_t n = strlen(data) + 1024 + (extra ? strlen(extra) : 0);
    char *v = malloc(n);
    ct_topic(t, type, "commands", topic, sizeof topic);
    snprintf(v, n,
             "{\"id\":\"%s\",\"type\":\"%s\",\"aggregate_type\":\"%s\","
             "\"aggregate_id\":\"%s\",\"data\":%s%s%s}",
             id, command_type, type, aggregate_id, data, extra ? "," : "",
             extra ? extra : "");
    ct_send_raw(rk, topic, -1, aggregate_id, v, strlen(v));
    free(v);
}

/* The steady command stream of the long runs (test_cmd_chaos,
 * test_cmd_scale), from a thread: rounds of one command to each of aggs
 * customers c-0, c-1, ... (command ids cmd-0, cmd-1, ...), each round
 * flushed and followed by pause_ms. Round 0 registers them; later rounds
 * update their profiles or, with emails (each customer's email its own),
 * every second round changes the email. ids[k] gets a copy of id k. */
typedef struct ct_stream {
    ct *t;
    int aggs, rounds;
    long pause_ms;
    int emails;
    char **ids;
    pthread_t thread;
} ct_stream;

/* Command k of the stream, round r, to customer a. */
static inline void ct_stream_send_(ct_stream *s, rd_kafka_t *p, int r, int a)
{
    char id[64], agg[32], data[160];
    const char *type = "UpdateCustomerProfile";
    int k = r * s->aggs + a;
    snprintf(id, sizeof id, "cmd-%d", k);
    snprintf(agg, sizeof agg, "c-%d", a);
    if (r == 0) {
        type = "RegisterCustomer";
        if (s->emails)
            snprintf(data, sizeof data,
                     "{\"name\":\"N0\",\"email\":\"e0-%d@example.org\"}", a);
        else
            snprintf(data, sizeof data,
                     "{\"name\":\"N0\",\"email\":\"e0@example.org\"}");
    } else if (r % 2 || !s->emails) {
        snprintf(data, sizeof data,
                 "{\"name\":\"N%d\",\"address\":\"%d Main St\"}", r, r);
    } else {
        type = "ChangeEmail";
        snprintf(data, sizeof data, "{\"email\":\"e%d-%d@example.org\"}", r, a);
    }
    ct_send(s->t, p, "customer", id, type, agg, data, NULL);
    s->ids[k] = strdup(id);
}

static inline void *ct_stream_run_(void *arg)
{
    ct_stream *s = arg;
    rd_kafka_t *p = ct_producer(s->t);
    for (int r = 0; r < s->rounds; r++) {
        for (int a = 0; a < s->aggs; a++)
            ct_stream_send_(s, p, r, a);
        ct_flush(p);
        th_sleep_ms(s->pause_ms);
    }
    rd_kafka_destroy(p);
    return NULL;
}

/* Start the stream in a thread; ids must hold aggs * rounds. */
static inline void ct_stream_start(ct_stream *s)
{
    if (pthread_create(&s->thread, NULL, ct_stream_run_, s) != 0)
        th_die("pthread_create: %s", strerror(errno));
}

static inline void ct_stream_join(ct_stream *s)
{
    pthread_join(s->thread, NULL);
}

static inline int ct_partitions(const ct *t, const char *topic)
{
    return th_partitions(t->bootstrap, topic);
}

/* Wait up to timeout_s for topic to exist (evlua creates its topics);
 * its partitions (0: it never appeared). */
static inline int ct_wait_topic(const ct *t, const char *topic, int timeout_s)
{
    return th_wait_topic(t->bootstrap, topic, timeout_s * 1000L);
}

/* Create topic with partitions and (NULL-terminated pairs) config. */
static inline void ct_create_topic(const ct *t, const char *topic,
                                   int partitions, const char *const *config)
{
    th_create_topic(t->bootstrap, topic, partitions, config);
}

/* Read every partition of topic from the start to its end (for
 * read_committed: the last stable offset) into out (th_read_all). */
static inline void ct_read_all(const ct *t, const char *topic,
                               const char *isolation, th_recs *out)
{
    char group[300];
    snprintf(group, sizeof group, "%s.reader", t->prefix);
    th_read_all(t->bootstrap, group, topic, isolation, out);
}

/* Read topic until it holds at least n records (read_committed) or
 * timeout_s passes. Returns the number read (out holds them). */
static inline size_t ct_wait_count(const ct *t, const char *topic, size_t n,
                                   int timeout_s, th_recs *out)
{
    long long deadline = th_now_ms() + timeout_s * 1000LL;
    for (;;) {
        ct_read_all(t, topic, "read_committed", out);
        if (out->n >= n || th_now_ms() > deadline)
            return out->n;
        th_sleep_ms(300);
    }
}

/* The result of command id among recs, or NULL. */
static inline const th_rec *ct_result(const th_recs *recs, const char *id)
{
    for (size_t i = 0; i < recs->n; i++) {
        const char *c = th_str(&recs->v[i], "command_id");
        if (c && strcmp(c, id) == 0)
            return &recs->v[i];
    }
    return NULL;
}

/* ---- exactly-once checks over a whole run ------------------------------- */

/* Check the invariants of the command side over events and results of one
 * aggregate type, given the n command ids that were sent:
 *   - exactly one result per command id, and no other results;
 *   - every accepted command's events appear exactly once, with the ids
 *     its result lists, in order, causation_id = the command;
 *   - per aggregate, sequences are 1..k without gaps or repeats;
 *   - each aggregate's events sit on one partition.
 * Returns the number of problems (each printed). */
static inline int ct_check_exactly_once(const th_recs *events,
                                        const th_recs *results, char **ids,
                                        size_t n)
{
    int problems = 0;
    cJSON *by_cmd = cJSON_CreateObject();   /* command id -> result index */
    cJSON *by_event = cJSON_CreateObject(); /* event id -> count */
    cJSON *agg_seq = cJSON_CreateObject();  /* aggregate -> last sequence */
    cJSON *agg_part = cJSON_CreateObject(); /* aggregate -> partition */

#define PROBLEM(...)                                                           \
    do {                                                                       \
        if (problems++ < 20) {                                                 \
            fprintf(stderr, "exactly-once: ");                                 \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

    for (size_t i = 0; i < results->n; i++) {
        const char *c = th_str(&results->v[i], "command_id");
        if (!c) {
            PROBLEM("a result without command_id: %s", results->v[i].value);
            continue;
        }
        if (cJSON_GetObjectItemCaseSensitive(by_cmd, c))
            PROBLEM("two results for command %s", c);
        else
            cJSON_AddNumberToObject(by_cmd, c, (double)i);
    }
    for (size_t i = 0; i < n; i++)
        if (!cJSON_GetObjectItemCaseSensitive(by_cmd, ids[i]))
            PROBLEM("no result for command %s", ids[i]);
    if ((size_t)cJSON_GetArraySize(by_cmd) != n)
        PROBLEM("%d distinct results for %zu commands",
                cJSON_GetArraySize(by_cmd), n);

    for (size_t i = 0; i < events->n; i++) {
        const th_rec *e = &events->v[i];
        const char *id = th_str(e, "id"), *agg = th_str(e, "aggregate_id");
        long long seq = th_int(e, "sequence");
        cJSON *c, *p;
        if (!id || !agg) {
            PROBLEM("a malformed event: %s", e->value);
            continue;
        }
        if (cJSON_GetObjectItemCaseSensitive(by_event, id))
            PROBLEM("event %s appears twice", id);
        else
            cJSON_AddNumberToObject(by_event, id, 1);
        c = cJSON_GetObjectItemCaseSensitive(agg_seq, agg);
        if (!c) {
            if (seq != 1)
                PROBLEM("aggregate %s starts at sequence %lld", agg, seq);
            cJSON_AddNumberToObject(agg_seq, agg, (double)seq);
        } else {
            if (seq != (long long)c->valuedouble + 1)
                PROBLEM("aggregate %s: sequence %lld after %lld", agg, seq,
                        (long long)c->valuedouble);
            cJSON_SetNumberValue(c, (double)seq);
        }
        p = cJSON_GetObjectItemCaseSensitive(agg_part, agg);
        if (!p)
            cJSON_AddNumberToObject(agg_part, agg, e->partition);
        else if ((int)p->valuedouble != e->partition)
            PROBLEM("aggregate %s has events on partitions %d and %d", agg,
                    (int)p->valuedouble, (int)e->partition);
    }
    /* every event an accepted result lists exists; the total matches */
    size_t listed = 0;
    for (size_t i = 0; i < results->n; i++) {
        const th_rec *r = &results->v[i];
        cJSON *evs = cJSON_GetObjectItemCaseSensitive(r->json, "events");
        const char *st = th_str(r, "status");
        cJSON *e;
        if (st && strcmp(st, "accepted") != 0 && cJSON_GetArraySize(evs) > 0)
            PROBLEM("a %s result lists events: %s", st, r->value);
        cJSON_ArrayForEach(e, evs)
        {
            listed++;
            if (!cJSON_IsString(e) ||
                !cJSON_GetObjectItemCaseSensitive(by_event, e->valuestring))
                PROBLEM("result %s lists an event that is not on the topic",
                        r->value);
        }
    }
    if (listed != events->n)
        PROBLEM("results list %zu events, the topic has %zu", listed,
                events->n);
#undef PROBLEM
    cJSON_Delete(by_cmd);
    cJSON_Delete(by_event);
    cJSON_Delete(agg_seq);
    cJSON_Delete(agg_part);
    return problems;
}

/* Read a long run back (results: n of them, within 300 s) and check it:
 * a result for every command, exactly once (ct_check_exactly_once), every
 * command accepted. */
static inline void ct_check_run(const ct *t, const char *events,
                                const char *results, char **ids, size_t n,
                                th_recs *evs, th_recs *res)
{
    size_t accepted = 0;
    CHECK_INT(ct_wait_count(t, results, n, 300, res), n,
              "a result for every command");
    ct_read_all(t, events, "read_committed", evs);
    CHECK_INT(ct_check_exactly_once(evs, res, ids, n), 0,
              "exactly once: results, events, sequences");
    for (size_t i = 0; i < res->n; i++)
        accepted += th_str(&res->v[i], "status") &&
                    strcmp(th_str(&res->v[i], "status"), "accepted") == 0;
    CHECK_INT(accepted, n, "every command was accepted");
}

#endif
