/*
 * lag.c - the lag thread (see lag.h for what it measures and why).
 *
 * One period: the cluster's metadata once (every topic, so asking creates
 * none), then per group its position (evlua_offsets or the group's
 * committed offsets), each partition's watermarks, and a probe: the
 * partitions with a gap are assigned to this module's consumer at the
 * group's position and read until the first data record (its timestamp
 * is the age), or, for a small gap, to the end (counting data records,
 * which takes the transaction markers out of the count). The consumer has
 * a group.id only because librdkafka's consumer API wants one; it never
 * subscribes or commits, so it never joins that group.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "kafka.h"
#include "lag.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"

#define REQUEST_MS 5000 /* metadata, watermarks, group offsets */
#define PROBE_MS   1000 /* at most this long reading first records */

typedef struct watched {
    char *group, *projection; /* projection NULL: Kafka group offsets */
    char *schema;             /* of its evlua_offsets; NULL: search_path */
    char **topics;
    size_t ntopics;
    long long last_pos; /* sum of positions last period; -1: unknown */
    double moved_at;    /* when that sum last changed (monotonic s) */
    double age;         /* last age reported */
    int failing;        /* the last period failed (logged once) */
} watched;

typedef struct lpart {
    const char *topic; /* into the metadata */
    int32_t partition;
    int64_t from, hi; /* the group's position; the high watermark */
    int64_t lag, count, ts;
    int seen, done, exact;
} lpart;

struct evl_lag {
    const evl_config *cfg;
    watched **w; /* each apart: the thread keeps one while a watch is added */
    size_t nw;   /* under mu once started */
    rd_kafka_t *rk;
    evl_pg *pg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, started;
    int kick; /* an assignment changed: measure now, not at the period */
};

/* ---- who holds what in this process ----------------------------------- */

typedef struct holding {
    char *group;
    const void *consumer;
    int n;
} holding;

static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static holding *helds;
static size_t nhelds;
static evl_lag *running; /* the started one, woken by assignments */

void evl_lag_held(const char *group, const void *consumer, int n)
{
    pthread_mutex_lock(&held_mu);
    size_t i = 0;
    while (i < nhelds && helds[i].consumer != consumer)
        i++;
    if (i == nhelds) {
        helds = evl_xrealloc(helds, sizeof(holding) * (nhelds + 1));
        helds[nhelds++] = (holding){evl_xstrdup(group), consumer, 0};
    } else if (strcmp(helds[i].group, group) != 0) {
        free(helds[i].group); /* a freed handle's address reused */
        helds[i].group = evl_xstrdup(group);
    }
    helds[i].n = n;
    if (running) { /* the gauges and readiness follow a rebalance at once */
        pthread_mutex_lock(&running->mu);
        running->kick = 1;
        pthread_cond_signal(&running->cv);
        pthread_mutex_unlock(&running->mu);
    }
    pthread_mutex_unlock(&held_mu);
}

static int held_count(const char *group)
{
    int n = 0;
    pthread_mutex_lock(&held_mu);
    for (size_t i = 0; i < nhelds; i++)
        if (strcmp(helds[i].group, group) == 0)
            n += helds[i].n;
    pthread_mutex_unlock(&held_mu);
    return n;
}

/* ---- setup ------------------------------------------------------------- */

evl_lag *evl_lag_new(const evl_config *cfg)
{
    evl_lag *lag = evl_xmalloc(sizeof *lag);
    memset(lag, 0, sizeof *lag);
    lag->cfg = cfg;
    pthread_mutex_init(&lag->mu, NULL);
    pthread_cond_init(&lag->cv, NULL);
    return lag;
}

void evl_lag_watch(evl_lag *lag, const char *group, const char *projection,
                   const char *const *topics, size_t n)
{
    evl_lag_watch_in(lag, group, projection, NULL, topics, n);
}

void evl_lag_watch_in(evl_lag *lag, const char *group, const char *projection,
                      const char *schema, const char *const *topics, size_t n)
{
    watched *w = evl_xmalloc(sizeof *w);
    memset(w, 0, sizeof *w);
    w->group = evl_xstrdup(group);
    w->projection = projection ? evl_xstrdup(projection) : NULL;
    w->schema = schema ? evl_xstrdup(schema) : NULL;
    w->topics = evl_xmalloc(sizeof(char *) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        w->topics[i] = evl_xstrdup(topics[i]);
    w->ntopics = n;
    w->last_pos = -1;
    pthread_mutex_lock(&lag->mu); /* a pipeline started by a reload */
    lag->w = evl_xrealloc(lag->w, sizeof(watched *) * (lag->nw + 1));
    lag->w[lag->nw++] = w;
    lag->kick = 1;
    pthread_cond_signal(&lag->cv);
    pthread_mutex_unlock(&lag->mu);
}

/* ---- one period ---------------------------------------------------------- */

static double wall_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static lpart *find(lpart *ps, size_t n, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < n; i++)
        if (ps[i].partition == partition && strcmp(ps[i].topic, topic) == 0)
            return &ps[i];
    return NULL;
}

/* The group's position in each partition of ps (-1: none) from
 * evlua_offsets. */
static evl_err db_positions(evl_lag *lag, const watched *w, lpart *ps, size_t n,
                            char *err, size_t errlen)
{
    evl_err e = EVL_OK;
    PGresult *res = NULL;
    if (!lag->pg)
        e = evl_pg_open(lag->cfg->pg_conninfo, "evlua lag", &lag->pg, err,
                        errlen);
    else if (!evl_pg_ok(lag->pg))
        e = evl_pg_reconnect(lag->pg, err, errlen);
    if (e)
        return e;
    const char *vals[1] = {w->projection};
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT topic, partition, next_offset FROM %s%sevlua_offsets "
             "WHERE projection = $1",
             w->schema ? w->schema : "", w->schema ? "." : "");
    if ((e = evl_pg_query(lag->pg, sql, 1, vals, &res, err, errlen)))
        return e;
    for (int r = 0; r < PQntuples(res); r++) {
        lpart *p = find(ps, n, PQgetvalue(res, r, 0),
                        (int32_t)atol(PQgetvalue(res, r, 1)));
        if (p)
            p->from = strtoll(PQgetvalue(res, r, 2), NULL, 10);
    }
    PQclear(res);
    return EVL_OK;
}

/* The same from the group's committed Kafka offsets. */
static evl_err kafka_positions(evl_lag *lag, const watched *w, lpart *ps,
                               size_t n, char *err, size_t errlen)
{
    evl_err e = EVL_OK;
    char errstr[256];
    rd_kafka_queue_t *q = rd_kafka_queue_new(lag->rk);
    rd_kafka_AdminOptions_t *o = rd_kafka_AdminOptions_new(
        lag->rk, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS);
    rd_kafka_AdminOptions_set_request_timeout(o, REQUEST_MS, errstr,
                                              sizeof errstr);
    rd_kafka_ListConsumerGroupOffsets_t *req =
        rd_kafka_ListConsumerGroupOffsets_new(w->group, NULL);
    rd_kafka_ListConsumerGroupOffsets(lag->rk, &req, 1, o, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, REQUEST_MS + 1000);
    if (!ev) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "ListConsumerGroupOffsets(%s): no answer", w->group);
        goto out;
    }
    if (rd_kafka_event_error(ev)) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "ListConsumerGroupOffsets(%s): %s", w->group,
                       rd_kafka_event_error_string(ev));
        goto out;
    }
    size_t ng = 0;
    const rd_kafka_group_result_t **gr =
        rd_kafka_ListConsumerGroupOffsets_result_groups(
            rd_kafka_event_ListConsumerGroupOffsets_result(ev), &ng);
    if (ng != 1 || rd_kafka_group_result_error(gr[0])) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "ListConsumerGroupOffsets(%s): %s", w->group,
                       ng != 1 ? "no result"
                               : rd_kafka_error_string(
                                     rd_kafka_group_result_error(gr[0])));
        goto out;
    }
    const rd_kafka_topic_partition_list_t *l =
        rd_kafka_group_result_partitions(gr[0]);
    for (int i = 0; l && i < l->cnt; i++) {
        lpart *p = find(ps, n, l->elems[i].topic, l->elems[i].partition);
        if (p && !l->elems[i].err)
            p->from = l->elems[i].offset;
    }
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_ListConsumerGroupOffsets_destroy(req);
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_queue_destroy(q);
    return e;
}

/* Read the first data record past each gap (its timestamp), and a small
 * gap to its end (see lag.h). */
static void probe(evl_lag *lag, lpart *ps, size_t n)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    size_t left = 0;
    for (size_t i = 0; i < n; i++) {
        if (ps[i].lag <= 0)
            continue;
        ps[i].exact = ps[i].lag <= EVL_LAG_EXACT;
        rd_kafka_topic_partition_list_add(l, ps[i].topic, ps[i].partition)
            ->offset = ps[i].from;
        left++;
    }
    if (left == 0 || rd_kafka_assign(lag->rk, l) != 0)
        goto out;
    double until = mono_s() + PROBE_MS / 1000.0;
    while (left > 0 && mono_s() < until) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(lag->rk, 50);
        if (!m)
            continue;
        lpart *p = m->rkt
                       ? find(ps, n, rd_kafka_topic_name(m->rkt), m->partition)
                       : NULL;
        if (p && !p->done) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF ||
                (!m->err && m->offset >= p->hi))
                p->done = 1; /* nothing (more) before the watermark */
            else if (!m->err) {
                if (!p->seen)
                    p->ts = rd_kafka_message_timestamp(m, NULL);
                p->seen = 1;
                p->count++;
                p->done = !p->exact || m->offset >= p->hi - 1;
            }
            left -= (size_t)p->done;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(lag->rk, NULL);
    for (size_t i = 0; i < n; i++)
        if (ps[i].lag > 0 && ps[i].done && (ps[i].exact || !ps[i].seen))
            ps[i].lag = ps[i].count; /* read to the end: exact */
out:
    rd_kafka_topic_partition_list_destroy(l);
}

static void report(watched *w, lpart *ps, size_t n, double interval_s)
{
    long long total = 0, pos = 0;
    double oldest = 0, now = wall_s();
    int aged = 0;
    for (size_t i = 0; i < n; i++) {
        char part[16], labels[600];
        snprintf(part, sizeof part, "%d", (int)ps[i].partition);
        evl_metrics_labels(labels, sizeof labels, "group", w->group, "topic",
                           ps[i].topic, "partition", part, NULL);
        evl_metric_set(
            evl_metrics_gauge("evlua_consumer_lag",
                              "Records a group has yet to consume in a "
                              "partition of its topics, held by any member "
                              "or none (lag.h)",
                              labels),
            (double)ps[i].lag);
        total += ps[i].lag;
        pos += ps[i].from;
        if (ps[i].lag > 0 && ps[i].seen && ps[i].ts > 0) {
            double age = now - (double)ps[i].ts / 1000.0;
            if (!aged || age > oldest)
                oldest = age;
            aged = 1;
        }
    }
    if (total == 0)
        w->age = 0;
    else if (aged)
        w->age = oldest > 0 ? oldest : 0;
    /* else: the probe saw nothing in time; the last age stands */
    char labels[300];
    evl_metrics_labels(labels, sizeof labels, "group", w->group, NULL);
    evl_metric_set(evl_metrics_gauge("evlua_consumer_lag_seconds",
                                     "Age of the oldest record a group has "
                                     "yet to consume (0: caught up)",
                                     labels),
                   w->age);

    char component[300], why[600];
    snprintf(component, sizeof component, "lag %s", w->group);
    int held = held_count(w->group);
    if (pos != w->last_pos)
        w->moved_at = mono_s();
    w->last_pos = pos;
    /* two periods, not one: a slow batch must not make a standby
     * unready */
    int stuck = total > 0 && w->age > 2 * interval_s &&
                mono_s() - w->moved_at > 2 * interval_s;
    if (held == 0 && stuck) {
        snprintf(why, sizeof why,
                 "group %s: no partitions in this process and nobody "
                 "consumes: lag %lld, the oldest waiting for %.0f s",
                 w->group, total, w->age);
        evl_metrics_ready(component, 0, why);
    } else
        evl_metrics_ready(component, 1, NULL);
}

static void measure(evl_lag *lag, watched *w,
                    const struct rd_kafka_metadata *md, double interval_s)
{
    char err[EVL_ERRLEN];
    evl_err e = EVL_OK;
    size_t n = 0;
    lpart *ps = NULL;
    for (size_t t = 0; t < w->ntopics; t++)
        for (int i = 0; i < md->topic_cnt; i++) {
            const struct rd_kafka_metadata_topic *mt = &md->topics[i];
            if (mt->err || strcmp(mt->topic, w->topics[t]) != 0)
                continue;
            ps = evl_xrealloc(ps, sizeof(lpart) *
                                      (n + (size_t)mt->partition_cnt + 1));
            for (int p = 0; p < mt->partition_cnt; p++)
                ps[n++] = (lpart){.topic = mt->topic,
                                  .partition = mt->partitions[p].id,
                                  .from = -1};
        }
    if (n == 0)
        goto out; /* no topic yet: nothing to wait for */
    e = w->projection ? db_positions(lag, w, ps, n, err, sizeof err)
                      : kafka_positions(lag, w, ps, n, err, sizeof err);
    for (size_t i = 0; e == EVL_OK && i < n; i++) {
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
            lag->rk, ps[i].topic, ps[i].partition, &lo, &hi, REQUEST_MS);
        if (ke)
            e = evl_seterr(err, sizeof err, EVL_ETRANSIENT,
                           "rd_kafka_query_watermark_offsets(%s[%d]): %s",
                           ps[i].topic, (int)ps[i].partition,
                           rd_kafka_err2str(ke));
        /* no position, or one the retention passed: the pipelines start
         * at the beginning */
        if (ps[i].from < lo)
            ps[i].from = lo;
        ps[i].hi = hi;
        ps[i].lag = hi > ps[i].from ? hi - ps[i].from : 0;
    }
    if (e) {
        if (!w->failing)
            evl_log(EVL_LOG_WARN,
                    "cannot measure a group's lag; its gauges keep their "
                    "last values",
                    "group", w->group, "reason", err, NULL);
        w->failing = 1;
        goto out;
    }
    w->failing = 0;
    probe(lag, ps, n);
    report(w, ps, n, interval_s);
out:
    free(ps);
}

static void tick(evl_lag *lag)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t ke =
        rd_kafka_metadata(lag->rk, 1, NULL, &md, REQUEST_MS);
    if (ke) {
        evl_log(EVL_LOG_DEBUG, "lag: no metadata this period", "error",
                rd_kafka_err2str(ke), NULL);
        return;
    }
    for (size_t i = 0;; i++) {
        pthread_mutex_lock(&lag->mu);
        int stop = lag->stop;
        watched *w = i < lag->nw ? lag->w[i] : NULL;
        pthread_mutex_unlock(&lag->mu);
        if (stop || !w)
            break;
        measure(lag, w, md, lag->cfg->metrics.lag_interval_ms / 1e3);
    }
    rd_kafka_metadata_destroy(md);
}

static void *lag_main(void *arg)
{
    evl_lag *lag = arg;
    evl_thread_name("evl:lag", NULL);
    pthread_mutex_lock(&lag->mu);
    while (!lag->stop) {
        lag->kick = 0;
        pthread_mutex_unlock(&lag->mu);
        tick(lag);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        long ms = lag->cfg->metrics.lag_interval_ms;
        until.tv_sec += ms / 1000;
        until.tv_nsec += (ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&lag->mu);
        while (!lag->stop && !lag->kick &&
               pthread_cond_timedwait(&lag->cv, &lag->mu, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&lag->mu);
    return NULL;
}

evl_err evl_lag_start(evl_lag *lag, char *err, size_t errlen)
{
    char group[300];
    /* fetch little ahead: a probe wants one record per partition */
    static const char *const defaults[] = {"fetch.wait.max.ms",
                                           "10",
                                           "queued.max.messages.kbytes",
                                           "1024",
                                           "max.partition.fetch.bytes",
                                           "262144",
                                           NULL};
    snprintf(group, sizeof group, "evlua.lag.%s",
             lag->nw ? lag->w[0]->group : "none");
    evl_kafka_client_opts o = {.name = "rd_kafka_new(lag consumer)",
                               .client_id = "evlua-lag",
                               .group_id = group,
                               .reader = 1,
                               .defaults = defaults};
    evl_err e = evl_kafka_consumer_new(lag->cfg, &o, &lag->rk, err, errlen);
    if (e)
        return e;
    if (pthread_create(&lag->thread, NULL, lag_main, lag) != 0)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "pthread_create(lag) failed");
    lag->started = 1;
    pthread_mutex_lock(&held_mu);
    running = lag;
    pthread_mutex_unlock(&held_mu);
    return EVL_OK;
}

void evl_lag_free(evl_lag *lag)
{
    if (!lag)
        return;
    pthread_mutex_lock(&held_mu);
    if (running == lag)
        running = NULL;
    pthread_mutex_unlock(&held_mu);
    if (lag->started) {
        pthread_mutex_lock(&lag->mu);
        lag->stop = 1;
        pthread_cond_signal(&lag->cv);
        pthread_mutex_unlock(&lag->mu);
        pthread_join(lag->thread, NULL);
    }
    if (lag->rk) {
        rd_kafka_consumer_close(lag->rk);
        rd_kafka_destroy(lag->rk);
    }
    evl_pg_close(lag->pg);
    for (size_t i = 0; i < lag->nw; i++) {
        for (size_t t = 0; t < lag->w[i]->ntopics; t++)
            free(lag->w[i]->topics[t]);
        free(lag->w[i]->topics);
        free(lag->w[i]->group);
        free(lag->w[i]->projection);
        free(lag->w[i]->schema);
        free(lag->w[i]);
    }
    free(lag->w);
    pthread_cond_destroy(&lag->cv);
    pthread_mutex_destroy(&lag->mu);
    free(lag);
}
