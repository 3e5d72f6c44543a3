/* kafka.c - librdkafka configuration, error classes and topics (kafka.h). */
#include "kafka.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"

evl_err evl_kafka_conf_set(rd_kafka_conf_t *conf, const char *key,
                           const char *value, char *err, size_t errlen)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "kafka property '%s': %s", key, errstr);
    return EVL_OK;
}

const char *evl_kafka_conf_value(rd_kafka_t *rk, const char *key, char *buf,
                                 size_t n)
{
    size_t len = n;
    buf[0] = '\0';
    if (rd_kafka_conf_get(rd_kafka_conf(rk), key, buf, &len) !=
        RD_KAFKA_CONF_OK)
        buf[0] = '\0';
    return buf;
}

int evl_kafka_log_fenced(const rd_kafka_t *rk, const char *fac, const char *buf)
{
    /* the line librdkafka logs when it raises the fatal error; its text
     * is librdkafka's own for the error code (rd_kafka_fatal_error would
     * take a lock the logging thread may hold) */
    if (strcmp(fac, "FATAL") != 0 ||
        !strstr(buf, rd_kafka_err2str(RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID)))
        return 0;
    char id[256];
    evl_log(EVL_LOG_ERROR,
            "another consumer joined the group with this consumer's "
            "group.instance.id, so this one is fenced and stops: two evlua "
            "processes run with the same `instance` (each needs its own; a "
            "restarted process takes its old one's place)",
            "client", rd_kafka_name(rk), "group.instance.id",
            evl_kafka_conf_value((rd_kafka_t *)rk, "group.instance.id", id,
                                 sizeof id),
            "error", "FENCED_INSTANCE_ID", NULL);
    return 1;
}

/* A broker connection that failed ("FAIL"): every client of the process
 * (a dozen in `evlua run`) reports the same broker down, each every
 * second or so. The first line of a text is logged, the same text from
 * any client again only after FAIL_QUIET_MS, with how many were left out;
 * and the readiness of what is still starting names it. Returns 1 when
 * the line is to be left out. */
#define FAIL_QUIET_MS 30000
#define FAIL_TEXTS    16
static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char text[256];
    long long last_ms;
    unsigned left_out;
} fails[FAIL_TEXTS];

static int fail_quiet(const char *kind, const char *buf, unsigned *left_out)
{
    /* "[thrd:HOST:PORT/ID]: HOST:PORT/ID: Connect to ... failed: Connection
     * refused (after 0ms in state CONNECT, 1 identical error(s) ...)" */
    const char *p = strstr(buf, "]: ");
    p = p ? p + 3 : buf;
    const char *end = strstr(p, " (after ");
    size_t n = end ? (size_t)(end - p) : strlen(p);
    char text[256], hint[300];
    snprintf(text, sizeof text, "%s %.*s", kind, (int)n, p);
    snprintf(hint, sizeof hint, "cannot reach Kafka: %.*s", (int)n, p);
    if (strcmp(kind, "FAIL") == 0)
        evl_metrics_ready_hint(hint);
    long long now = evl_now_ms();
    int quiet = 0, slot = 0;
    pthread_mutex_lock(&fail_mu);
    for (int i = 0; i < FAIL_TEXTS; i++) {
        if (strcmp(fails[i].text, text) == 0) {
            slot = i;
            break;
        }
        if (fails[i].last_ms < fails[slot].last_ms)
            slot = i; /* the oldest, if the text is new */
    }
    if (strcmp(fails[slot].text, text) == 0 &&
        now - fails[slot].last_ms < FAIL_QUIET_MS) {
        fails[slot].left_out++;
        quiet = 1;
    } else {
        *left_out =
            strcmp(fails[slot].text, text) == 0 ? fails[slot].left_out : 0;
        snprintf(fails[slot].text, sizeof fails[slot].text, "%s", text);
        fails[slot].last_ms = now;
        fails[slot].left_out = 0;
    }
    pthread_mutex_unlock(&fail_mu);
    return quiet;
}

/* librdkafka's syslog levels -> ours. Its notices (reconnects, group
 * changes) are worth seeing at info. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf)
{
    unsigned left_out = 0;
    if (strcmp(fac, "FAIL") == 0 && fail_quiet(fac, buf, &left_out))
        return;
    evl_log_level lvl = level <= 3   ? EVL_LOG_ERROR
                        : level == 4 ? EVL_LOG_WARN
                        : level <= 6 ? EVL_LOG_INFO
                                     : EVL_LOG_DEBUG;
    /* The kafka table goes to every client, so consumer properties on a
     * producer (and back) are expected, not worth a warning. */
    if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "will be ignored"))
        lvl = EVL_LOG_DEBUG;
    char n[16];
    snprintf(n, sizeof n, "%u", left_out);
    evl_log(evl_log_lib(lvl), buf, "client", rd_kafka_name(rk), "facility", fac,
            left_out ? "left_out" : NULL, n, NULL);
    evl_kafka_log_fenced(rk, fac, buf);
}

void evl_kafka_log_fatal(rd_kafka_t *rk, const char *msg, const char *field,
                         const char *value)
{
    char fatal[512];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, fatal, sizeof fatal);
    evl_log(EVL_LOG_ERROR, msg, "client", rd_kafka_name(rk), "error",
            rd_kafka_err2name(orig), "reason", fatal, field, value, NULL);
}

static void error_cb(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    if (code == RD_KAFKA_RESP_ERR__FATAL) {
        evl_kafka_log_fatal(rk, "kafka client fatal error", NULL, NULL);
        return;
    }
    /* non-fatal: librdkafka retries by itself (a one-shot command reports
     * what it could not do in its own words); a broker out of reach is
     * reported by every client, logged as fail_quiet says */
    unsigned left_out = 0;
    const char *name = rd_kafka_err2name((rd_kafka_resp_err_t)code);
    if ((code == RD_KAFKA_RESP_ERR__TRANSPORT ||
         code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
         code == RD_KAFKA_RESP_ERR__RESOLVE) &&
        fail_quiet(name, reason, &left_out))
        return;
    char n[16];
    snprintf(n, sizeof n, "%u", left_out);
    evl_log(evl_log_lib(EVL_LOG_WARN), "kafka client error", "client",
            rd_kafka_name(rk), "error", name, "reason", reason,
            left_out ? "left_out" : NULL, n, NULL);
}

static evl_err set_pairs(rd_kafka_conf_t *conf, const char *const *kv,
                         char *err, size_t errlen)
{
    for (; kv && kv[0]; kv += 2) {
        evl_err e = evl_kafka_conf_set(conf, kv[0], kv[1], err, errlen);
        if (e)
            return e;
    }
    return EVL_OK;
}

evl_err evl_kafka_conf_new(const evl_config *cfg, const char *const *defaults,
                           const char *const *required, rd_kafka_conf_t **out,
                           char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    evl_err e;

    if ((e = set_pairs(conf, defaults, err, errlen)))
        goto fail;
    for (int i = 0; cfg && i < cfg->nkafka; i++) {
        if (!cfg->kafka[i].value)
            continue;
        if ((e = evl_kafka_conf_set(conf, cfg->kafka[i].key,
                                    cfg->kafka[i].value, err, errlen)))
            goto fail;
    }
    for (const char *const *kv = required; kv && kv[0]; kv += 2) {
        const char *mine = cfg ? evl_config_kafka(cfg, kv[0]) : NULL;
        if (mine && strcmp(mine, kv[1]) != 0)
            evl_log(EVL_LOG_WARN,
                    "kafka property overridden: evlua's guarantees need it",
                    "property", kv[0], "configured", mine, "used", kv[1], NULL);
    }
    if ((e = set_pairs(conf, required, err, errlen)))
        goto fail;
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    *out = conf;
    return EVL_OK;
fail:
    rd_kafka_conf_destroy(conf);
    return e;
}

/* Up to this many key, value pairs of a role's own required properties,
 * besides o->required. */
#define ROLE_PAIRS 10

/* Append key, value to the NULL-terminated pairs kv (n pairs so far). */
static void put_pair(const char **kv, int *n, const char *key,
                     const char *value)
{
    kv[2 * *n] = key;
    kv[2 * *n + 1] = value;
    (*n)++;
    kv[2 * *n] = NULL;
}

/* evl_kafka_conf_new with role (the role's required pairs) then
 * o->required then client.id; the callbacks; rd_kafka_new. */
static evl_err client_new(const evl_config *cfg, const evl_kafka_client_opts *o,
                          rd_kafka_type_t type, const char **role, int nrole,
                          rd_kafka_t **out, char *err, size_t errlen)
{
    size_t nextra = 0;
    rd_kafka_conf_t *conf;
    char errstr[512];
    evl_err e;

    while (o->required && o->required[2 * nextra])
        nextra++;
    const char **req =
        evl_xmalloc(sizeof *req * (2 * ((size_t)nrole + nextra + 1) + 1));
    memcpy(req, role, sizeof *req * 2 * (size_t)nrole);
    if (nextra)
        memcpy(req + 2 * nrole, o->required, sizeof *req * 2 * nextra);
    int n = nrole + (int)nextra;
    req[2 * n] = NULL;
    if (o->client_id)
        put_pair(req, &n, "client.id", o->client_id);
    e = evl_kafka_conf_new(cfg, o->defaults, req, &conf, err, errlen);
    free(req);
    if (e)
        return e;
    if (o->rebalance_cb)
        rd_kafka_conf_set_rebalance_cb(conf, o->rebalance_cb);
    if (o->offset_commit_cb)
        rd_kafka_conf_set_offset_commit_cb(conf, o->offset_commit_cb);
    if (o->stats_cb)
        rd_kafka_conf_set_stats_cb(conf, o->stats_cb);
    if (o->dr_msg_cb)
        rd_kafka_conf_set_dr_msg_cb(conf, o->dr_msg_cb);
    if (o->opaque)
        rd_kafka_conf_set_opaque(conf, o->opaque);
    if (!(*out = rd_kafka_new(type, conf, errstr, sizeof errstr))) {
        rd_kafka_conf_destroy(conf);
        return evl_seterr(err, errlen, EVL_EPERMANENT, "%s: %s",
                          o->name ? o->name : "rd_kafka_new", errstr);
    }
    return EVL_OK;
}

evl_err evl_kafka_consumer_new(const evl_config *cfg,
                               const evl_kafka_client_opts *o, rd_kafka_t **out,
                               char *err, size_t errlen)
{
    const char *role[2 * ROLE_PAIRS + 1] = {NULL};
    char member[300] = "";
    int n = 0;
    evl_err e;

    put_pair(role, &n, "group.id", o->group_id);
    put_pair(role, &n, "isolation.level",
             o->isolation ? o->isolation : "read_committed");
    put_pair(role, &n, "enable.auto.commit", "false");
    put_pair(role, &n, "enable.auto.offset.store", "false");
    put_pair(role, &n, "enable.partition.eof",
             o->partition_eof || o->reader ? "true" : "false");
    if (o->assignor)
        put_pair(role, &n, "partition.assignment.strategy",
                 evl_kafka_assignor(cfg, o->assignor,
                                    o->client_id ? o->client_id : ""));
    if (o->instance)
        evl_kafka_instance_id(cfg, o->instance, member, sizeof member);
    if (*member)
        put_pair(role, &n, "group.instance.id", member);
    if (o->reader)
        put_pair(role, &n, "auto.offset.reset", "earliest");
    if ((e = client_new(cfg, o, RD_KAFKA_CONSUMER, role, n, out, err, errlen)))
        return e;
    rd_kafka_poll_set_consumer(*out);
    return EVL_OK;
}

const char *const evl_kafka_batch_txn_defaults[] = {"transaction.timeout.ms",
                                                    "10000",
                                                    "retry.backoff.ms",
                                                    "20",
                                                    "linger.ms",
                                                    "0",
                                                    NULL};
const char *const evl_kafka_batch_txn_required[] = {"partitioner",
                                                    "murmur2_random", NULL};

size_t evl_kafka_max_message(rd_kafka_t *rk)
{
    char size[64];
    evl_kafka_conf_value(rk, "message.max.bytes", size, sizeof size);
    size_t n = (size_t)strtoull(size, NULL, 10);
    return n < 4096 ? 1000000 : n;
}

evl_err evl_kafka_producer_new(const evl_config *cfg,
                               const evl_kafka_client_opts *o, rd_kafka_t **out,
                               char *err, size_t errlen)
{
    const char *role[2 * ROLE_PAIRS + 1] = {NULL};
    int n = 0;
    /* librdkafka's producers ask the broker to create a missing topic
     * when they look it up (brokers allow it by default), with the
     * broker's partition count: a topic evlua writes is created by evlua,
     * with its own count, or not at all */
    put_pair(role, &n, "allow.auto.create.topics", "false");
    if (o->transactional_id) {
        put_pair(role, &n, "transactional.id", o->transactional_id);
        put_pair(role, &n, "enable.idempotence", "true");
        put_pair(role, &n, "acks", "all");
    }
    return client_new(cfg, o, RD_KAFKA_PRODUCER, role, n, out, err, errlen);
}

evl_err evl_kafka_classify(const rd_kafka_error_t *error)
{
    if (!error)
        return EVL_OK;
    if (rd_kafka_error_is_fatal(error))
        return EVL_EFATAL;
    if (rd_kafka_error_txn_requires_abort(error))
        return EVL_EPERMANENT;
    if (rd_kafka_error_is_retriable(error))
        return EVL_ETRANSIENT;
    return EVL_EFATAL;
}

evl_err evl_kafka_error(rd_kafka_error_t *error, const char *call, char *err,
                        size_t errlen)
{
    evl_err e;
    if (!error)
        return EVL_OK;
    e = evl_kafka_classify(error);
    evl_seterr(err, errlen, e, "%s: %s (%s)", call,
               rd_kafka_error_string(error), rd_kafka_error_name(error));
    rd_kafka_error_destroy(error);
    return e;
}

evl_err evl_kafka_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms,
                             int *count, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t rerr = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms);
    if (rerr) {
        char bs[512] = "";
        size_t n = sizeof bs;
        if (rd_kafka_conf_get(rd_kafka_conf(rk), "bootstrap.servers", bs, &n) !=
            RD_KAFKA_CONF_OK)
            bs[0] = '\0';
        return evl_seterr(err, errlen, EVL_ETRANSIENT,
                          "cannot read the cluster's metadata from %s (%s): "
                          "%s",
                          bs[0] ? bs : "no bootstrap.servers",
                          "kafka[\"bootstrap.servers\"] or "
                          "EVLUA_KAFKA_BOOTSTRAP; -c CONFIG",
                          rd_kafka_err2str(rerr));
    }
    *count = 0;
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];
        if (strcmp(t->topic, topic) != 0)
            continue;
        if (t->err == RD_KAFKA_RESP_ERR_NO_ERROR)
            *count = t->partition_cnt;
        break;
    }
    rd_kafka_metadata_destroy(md);
    return EVL_OK;
}

evl_err evl_kafka_create_topics(rd_kafka_t *rk,
                                const evl_kafka_topic_spec *specs, size_t n,
                                int timeout_ms, char *err, size_t errlen)
{
    char errstr[512];
    evl_err e = EVL_OK;
    rd_kafka_NewTopic_t **nts;
    rd_kafka_AdminOptions_t *opts;
    rd_kafka_queue_t *q;
    rd_kafka_event_t *ev;
    size_t made = 0;

    if (n == 0)
        return EVL_OK;
    nts = evl_xmalloc(sizeof *nts * n);
    for (; made < n; made++) {
        nts[made] =
            rd_kafka_NewTopic_new(specs[made].name, specs[made].partitions, -1,
                                  errstr, sizeof errstr);
        if (!nts[made]) {
            e = evl_seterr(err, errlen, EVL_EPERMANENT,
                           "cannot describe topic %s: %s", specs[made].name,
                           errstr);
            goto out;
        }
        if (specs[made].compacted)
            rd_kafka_NewTopic_set_config(nts[made], "cleanup.policy",
                                         "compact");
    }
    opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, NULL, 0);
    rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, NULL, 0);
    q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, nts, n, opts, q);
    ev = rd_kafka_queue_poll(q, timeout_ms + 5000);
    if (!ev) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "CreateTopics: no answer within %d ms", timeout_ms);
    } else if (rd_kafka_event_error(ev)) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT, "CreateTopics: %s",
                       rd_kafka_event_error_string(ev));
    } else {
        size_t cnt;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(
                rd_kafka_event_CreateTopics_result(ev), &cnt);
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t te = rd_kafka_topic_result_error(res[i]);
            if (te == RD_KAFKA_RESP_ERR_NO_ERROR ||
                te == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
                continue;
            e = evl_seterr(err, errlen,
                           te == RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT
                               ? EVL_ETRANSIENT
                               : EVL_EPERMANENT,
                           "cannot create topic %s: %s",
                           rd_kafka_topic_result_name(res[i]),
                           rd_kafka_topic_result_error_string(res[i])
                               ? rd_kafka_topic_result_error_string(res[i])
                               : rd_kafka_err2str(te));
            break;
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(opts);
out:
    rd_kafka_NewTopic_destroy_array(nts, made);
    free(nts);
    return e;
}

evl_err evl_kafka_ensure_topic(rd_kafka_t *rk, const evl_kafka_topic_spec *spec,
                               int create, int timeout_ms, int *count,
                               int *created, char *err, size_t errlen)
{
    int n = 0;
    evl_err e;
    *created = 0;
    if ((e = evl_kafka_partitions(rk, spec->name, timeout_ms, &n, err, errlen)))
        return e;
    if (n > 0 || !create) {
        *count = n;
        return EVL_OK;
    }
    if ((e = evl_kafka_create_topics(rk, spec, 1, timeout_ms, err, errlen)))
        return e;
    /* the metadata may lag behind the controller for a moment */
    for (int i = 0; i < 100; i++) {
        if ((e = evl_kafka_partitions(rk, spec->name, timeout_ms, &n, err,
                                      errlen)))
            return e;
        if (n > 0) {
            *count = n;
            *created = 1;
            return EVL_OK;
        }
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return evl_seterr(err, errlen, EVL_ETRANSIENT,
                      "topic %s was created but does not show in the "
                      "cluster's metadata",
                      spec->name);
}

void evl_kafka_instance_id(const evl_config *cfg, const char *suffix, char *buf,
                           size_t n)
{
    if (!cfg || !cfg->instance || !*cfg->instance)
        snprintf(buf, n, "%s", "");
    else
        snprintf(buf, n, "%s.%s", cfg->instance, suffix);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void evl_kafka_wait_begin(evl_kafka_wait *w)
{
    w->since = mono_s();
    w->logged = 0;
}

void evl_kafka_wait_end(evl_kafka_wait *w)
{
    w->since = 0;
    w->logged = 0;
}

int evl_kafka_wait_check(evl_kafka_wait *w, rd_kafka_t *rk, const char *group)
{
    if (w->since == 0 || w->logged ||
        mono_s() - w->since < EVL_KAFKA_WAIT_LOG_MS / 1000.0)
        return 0;
    w->logged = 1;
    char timeout[32], id[256], msg[512];
    evl_kafka_conf_value(rk, "session.timeout.ms", timeout, sizeof timeout);
    evl_kafka_conf_value(rk, "group.instance.id", id, sizeof id);
    if (!*id)
        snprintf(msg, sizeof msg,
                 "waiting for partitions of group %s: a member that left "
                 "without leaving (kill -9?) holds them until its session "
                 "times out (session.timeout.ms=%s); set `instance` for "
                 "static membership",
                 group, *timeout ? timeout : "?");
    else
        snprintf(msg, sizeof msg,
                 "waiting for partitions of group %s: a member that stopped "
                 "(a static member does not leave on close, a dynamic one "
                 "killed with -9 cannot) holds them until its session times "
                 "out (session.timeout.ms=%s), unless it comes back",
                 group, *timeout ? timeout : "?");
    evl_log(EVL_LOG_INFO, msg, "client", rd_kafka_name(rk), "group", group,
            *id ? "group.instance.id" : NULL, id, NULL);
    return 1;
}

int32_t evl_kafka_murmur2_partition(const void *key, size_t len,
                                    int32_t partitions)
{
    /* librdkafka's own function: the same code its producer runs. It
     * falls back to a random partition only for a NULL key. */
    return rd_kafka_msg_partitioner_murmur2(NULL, key ? key : "", len,
                                            partitions, NULL, NULL);
}

const char *evl_kafka_header(const rd_kafka_message_t *rkm, const char *name,
                             char *buf, size_t n)
{
    rd_kafka_headers_t *hdrs;
    const void *val;
    size_t size;
    if (n == 0 ||
        rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, name, &val, &size) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    if (!val)
        size = 0;
    if (size > n - 1)
        size = n - 1;
    if (size)
        memcpy(buf, val, size);
    buf[size] = '\0';
    return buf;
}

static int eager_assignors(const char *v)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ", ", &save); t;
         t = strtok_r(NULL, ", ", &save), n++)
        if (strcmp(t, "range") != 0 && strcmp(t, "roundrobin") != 0)
            return 0;
    return n > 0;
}

const char *evl_kafka_assignor(const evl_config *cfg, const char *dflt,
                               const char *client)
{
    const char *v = evl_config_kafka(cfg, "partition.assignment.strategy");
    if (!v)
        return dflt;
    if (strlen(v) < 256 && eager_assignors(v))
        return v;
    evl_log(EVL_LOG_WARN,
            "kafka partition.assignment.strategy: cooperative assignors "
            "lose assignments with manual commits in librdkafka 2.0; using "
            "the default",
            "client", client, "configured", v, "using", dflt, NULL);
    return dflt;
}
