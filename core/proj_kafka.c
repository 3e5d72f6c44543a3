/*
 * proj_kafka.c - the projector's consumer: which topics and group, the
 * client built through kafka.h, topics that do not exist yet, and
 * rebalances.
 *
 * Rebalances are eager: all partitions are revoked, then assigned. The
 * rebalance callback runs inside rd_kafka_consumer_poll on the
 * projector's thread (which owns the database connection too), settles
 * the batch in flight while its partitions are still ours, reads
 * evlua_offsets and assigns each partition at its database offset.
 */
#include "projector_int.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "lag.h"
#include "log.h"

/* ---- topics, group ------------------------------------------------------- */

void evl_projector_group(const evl_config *cfg, const char *name, char *buf,
                         size_t n)
{
    evl_projection_cfg pc = evl_config_projection(cfg, name);
    if (pc.group_id)
        snprintf(buf, n, "%s", pc.group_id);
    else
        snprintf(buf, n, "%s%s",
                 cfg->proj.group_prefix ? cfg->proj.group_prefix
                                        : "evlua.projection.",
                 name);
}

static void strlist_add(evl_strlist *l, const char *s)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return;
    l->v = evl_xrealloc(l->v, sizeof(char *) * (size_t)(l->n + 1));
    l->v[l->n++] = evl_xstrdup(s);
}

int evl_projector_topics(const evl_config *cfg, const evl_luahost *host,
                         const char *name, evl_strlist *out)
{
    evl_projection_cfg pc = evl_config_projection(cfg, name);
    memset(out, 0, sizeof *out);
    if (pc.topics.n > 0) {
        for (int i = 0; i < pc.topics.n; i++)
            strlist_add(out, pc.topics.v[i]);
        return out->n;
    }
    for (size_t i = 0; i < evl_luahost_naggregates(host); i++) {
        char t[512];
        evl_config_topic(cfg->cmd.events_topic ? cfg->cmd.events_topic
                                               : "{type}.events",
                         evl_luahost_aggregate_at(host, i)->type, t, sizeof t);
        strlist_add(out, t);
    }
    return out->n;
}

void evl_projector_topics_free(evl_strlist *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* ---- partitions ---------------------------------------------------------- */

void proj_parts_clear(projector *pj)
{
    for (int i = 0; i < pj->nparts; i++) {
        free(pj->parts[i].topic);
        free(pj->parts[i].halt_error);
    }
    free(pj->parts);
    pj->parts = NULL;
    pj->nparts = 0;
    pj->last_part = 0;
}

/* ---- Kafka callbacks ----------------------------------------------------- */

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    projector *pj = opaque;
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        evl_log(EVL_LOG_WARN,
                "kafka offset commit failed (harmless: the database holds "
                "the offsets)",
                "projection", pj->name, "error", rd_kafka_err2str(err), NULL);
}

/* Set each partition of ps to its offset in evlua_offsets (the beginning
 * when there is none). Waits out transient database errors. Returns 0
 * when it gave up because of a stop request. */
static int offsets_from_db(projector *pj, rd_kafka_topic_partition_list_t *ps)
{
    char err[EVL_ERRLEN];
    for (int i = 0; i < ps->cnt; i++)
        ps->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
    for (int attempt = 0;; attempt++) {
        PGresult *res = NULL;
        const char *vals[1] = {pj->name};
        evl_err e = EVL_OK;
        if (!evl_pg_ok(pj->pg))
            e = evl_pg_reconnect(pj->pg, err, sizeof err);
        if (e == EVL_OK)
            e = evl_pg_query(pj->pg,
                             "SELECT topic, partition, next_offset FROM "
                             "evlua_offsets WHERE projection = $1",
                             1, vals, &res, err, sizeof err);
        if (e == EVL_OK) {
            for (int r = 0; r < PQntuples(res); r++) {
                const char *t = PQgetvalue(res, r, 0);
                int32_t p = (int32_t)atol(PQgetvalue(res, r, 1));
                int64_t o = strtoll(PQgetvalue(res, r, 2), NULL, 10);
                for (int i = 0; i < ps->cnt; i++)
                    if (ps->elems[i].partition == p &&
                        strcmp(ps->elems[i].topic, t) == 0)
                        ps->elems[i].offset = o;
            }
            PQclear(res);
            return 1;
        }
        long ms = proj_backoff_ms(attempt);
        char n[24], d[24];
        snprintf(n, sizeof n, "%d", attempt + 1);
        snprintf(d, sizeof d, "%ld", ms);
        evl_log(EVL_LOG_WARN,
                "cannot read the projection's offsets; retrying the "
                "assignment",
                "projection", pj->name, "reason", err, "attempt", n, "delay_ms",
                d, NULL);
        if (proj_nap(ms))
            return 0;
    }
}

static void describe_parts(const rd_kafka_topic_partition_list_t *ps,
                           int offsets, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < ps->cnt && o + 1 < n; i++) {
        int w;
        if (!offsets)
            w = snprintf(buf + o, n - o, "%s%s[%" PRId32 "]", i ? " " : "",
                         ps->elems[i].topic, ps->elems[i].partition);
        else if (ps->elems[i].offset >= 0)
            w = snprintf(buf + o, n - o, "%s%s[%" PRId32 "]@%" PRId64,
                         i ? " " : "", ps->elems[i].topic,
                         ps->elems[i].partition, ps->elems[i].offset);
        else
            w = snprintf(buf + o, n - o, "%s%s[%" PRId32 "]@beginning",
                         i ? " " : "", ps->elems[i].topic,
                         ps->elems[i].partition);
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

static int assign_at_db(projector *pj, rd_kafka_t *rk,
                        rd_kafka_topic_partition_list_t *ps);

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *ps, void *opaque)
{
    projector *pj = opaque;
    char desc[1024];
    if (pj->inflight) { /* finish it while its partitions are ours */
        enum settle_rc r = proj_settle(pj);
        if (r == STOPPING || r == FAILED)
            pj->abort_rc = r;
    }
    pj->rebalanced = 1;
    proj_ckmap_clear(&pj->cache);
    proj_parts_clear(pj);
    if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        describe_parts(ps, 0, desc, sizeof desc);
        rd_kafka_assign(rk, NULL);
        pj->assigned = 0;
        evl_lag_held(pj->group_id, rk, 0);
        evl_kafka_wait_begin(&pj->wait);
        evl_metrics_ready(pj->component, 0, "rebalancing: partitions revoked");
        evl_log(EVL_LOG_INFO, "partitions revoked", "projection", pj->name,
                "partitions", desc, THREAD_FIELD(pj), NULL);
        return;
    }
    assign_at_db(pj, rk, ps);
}

/* Read every assigned partition again from evlua_offsets, as a new
 * assignment of the same partitions would (after `projection swap`
 * replaced the offsets). Partitions halted before are resumed: the new
 * scripts get their chance. Returns 0 when a stop request cut it short. */
int proj_reassign(projector *pj)
{
    rd_kafka_topic_partition_list_t *ps = NULL;
    if (!pj->assigned)
        return 1; /* the next assignment reads them anyway */
    rd_kafka_resp_err_t e = rd_kafka_assignment(pj->rk, &ps);
    if (e) {
        evl_log(EVL_LOG_ERROR, "cannot read the consumer's assignment",
                "projection", pj->name, "error", rd_kafka_err2str(e), NULL);
        return 1;
    }
    proj_parts_clear(pj);
    int ok = assign_at_db(pj, pj->rk, ps);
    if (ok)
        rd_kafka_resume_partitions(pj->rk, ps);
    rd_kafka_topic_partition_list_destroy(ps);
    return ok;
}

/* Assign ps at the offsets evlua_offsets holds for them. Returns 0 when
 * a stop request cut the reading short (ps is then assigned paused). */
static int assign_at_db(projector *pj, rd_kafka_t *rk,
                        rd_kafka_topic_partition_list_t *ps)
{
    char desc[1024];
    int ok = offsets_from_db(pj, ps);
    rd_kafka_assign(rk, ps);
    pj->assigned = 1;
    evl_lag_held(pj->group_id, rk, ps->cnt);
    evl_kafka_wait_end(&pj->wait);
    pj->parts = evl_xmalloc(sizeof(part) * (size_t)(ps->cnt ? ps->cnt : 1));
    pj->nparts = ps->cnt;
    for (int i = 0; i < ps->cnt; i++) {
        part *p = &pj->parts[i];
        memset(p, 0, sizeof *p);
        p->topic = evl_xstrdup(ps->elems[i].topic);
        p->partition = ps->elems[i].partition;
        p->start = ps->elems[i].offset;
        p->end = -1;
        if (pj->opts.until_caught_up) {
            int64_t lo = 0, hi = 0;
            rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
            for (int t = 0; t < 5; t++) {
                e = rd_kafka_query_watermark_offsets(rk, p->topic, p->partition,
                                                     &lo, &hi, 10000);
                if (!e)
                    break;
            }
            if (e)
                evl_log(EVL_LOG_WARN, "cannot read the end of a partition",
                        "projection", pj->name, "topic", p->topic, "error",
                        rd_kafka_err2str(e), NULL);
            if (p->start < 0 || p->start < lo)
                p->start = lo;
            p->end = e ? INT64_MAX : hi;
        }
        p->pos = p->start < 0 ? 0 : p->start;
    }
    describe_parts(ps, 1, desc, sizeof desc);
    evl_log(EVL_LOG_INFO, "partitions assigned at their database offsets",
            "projection", pj->name, "partitions", desc, THREAD_FIELD(pj), NULL);
    if (!ok) /* stopping: read nothing more */
        rd_kafka_pause_partitions(rk, ps);
    proj_report_ready(pj);
    return ok;
}

/* The group.instance.id of this thread's consumer, "" for none: derived
 * from `instance` when it is set (kafka.h: one id per thread of each
 * projection, stable across restarts while projection.threads stays the
 * same); else the kafka table's, made one per thread when the projection
 * runs several (static members must differ). */
static void member_id(const projector *pj, char *buf, size_t n)
{
    const evl_config *cfg = pj->cfg;
    char suffix[300];
    if (pj->opts.schema) { /* a shadow rebuild: a static member would keep
                              its group busy for a session after it ends,
                              and `projection swap` waits for it empty */
        *buf = '\0';
        return;
    }
    snprintf(suffix, sizeof suffix, "proj.%s.%d", pj->name, pj->instance + 1);
    evl_kafka_instance_id(cfg, suffix, buf, n);
    const char *v = evl_config_kafka(cfg, "group.instance.id");
    if (*buf || !v || pj->ninstances <= 1)
        return;
    snprintf(buf, n, "%s-%d", v, pj->instance + 1);
}

evl_err proj_kafka_open(projector *pj, char *err, size_t errlen)
{
    const evl_config *cfg = pj->cfg;
    char client[300], member[300], errstr[512];
    if (pj->ninstances > 1)
        snprintf(client, sizeof client, "evlua-projection-%s-%d", pj->name,
                 pj->instance + 1);
    else
        snprintf(client, sizeof client, "evlua-projection-%s", pj->name);
    member_id(pj, member, sizeof member);
    /* librdkafka prefetches up to 64 MB per consumer by default; a few
     * batches ahead is all a projector uses */
    const char *defaults[] = {"client.id",
                              client,
                              "auto.offset.reset",
                              "earliest",
                              "queued.max.messages.kbytes",
                              "16384",
                              NULL};
    /* what exactly-once needs, whatever the config says */
    const char *required[] = {"group.id",
                              pj->group_id,
                              "isolation.level",
                              "read_committed",
                              "enable.auto.commit",
                              "false",
                              "enable.auto.offset.store",
                              "false",
                              "enable.partition.eof",
                              pj->opts.until_caught_up ? "true" : "false",
                              NULL};
    rd_kafka_conf_t *conf = NULL;
    evl_err e = evl_kafka_conf_new(cfg, defaults, required, &conf, err, errlen);
    if (e != EVL_OK)
        return e;
    /* set over the table's without a word: the assignor logs its own
     * warning, and the member id is derived from the table's */
    e = evl_kafka_conf_set(conf, "partition.assignment.strategy",
                           evl_kafka_assignor(cfg, "range,roundrobin", client),
                           err, errlen);
    if (e == EVL_OK && *member)
        e = evl_kafka_conf_set(conf, "group.instance.id", member, err, errlen);
    if (e != EVL_OK) {
        rd_kafka_conf_destroy(conf);
        return e;
    }
    rd_kafka_conf_set_opaque(conf, pj);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    pj->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!pj->rk) {
        rd_kafka_conf_destroy(conf);
        return evl_seterr(err, errlen, EVL_EPERMANENT, "rd_kafka_new: %s",
                          errstr);
    }
    rd_kafka_poll_set_consumer(pj->rk);
    return EVL_OK;
}

int proj_kafka_fatal(projector *pj)
{
    if (!pj->fatal && rd_kafka_fatal_error(pj->rk, NULL, 0)) {
        evl_kafka_log_fatal(pj->rk, "fatal Kafka error: stopping the projector",
                            "projection", pj->name);
        pj->fatal = 1;
    }
    return pj->fatal;
}

/* ---- topics that do not exist yet ---------------------------------------
 *
 * A consumer subscribed to a topic that does not exist sees it only at its
 * next full metadata refresh (topic.metadata.refresh.interval.ms, 5
 * minutes by default): a new aggregate type's events would wait that long
 * while /readyz said ready. So before subscribing, each topic is looked
 * up; a missing one is created with the command side's settings when
 * commands.create_topics is on (an events topic gets its commands topic's
 * partition count when that exists, else commands.partitions, as the
 * command side would give it), else left out of the subscription and
 * looked for every MISSING_CHECK_S; once it exists the consumer subscribes
 * again, with it. Until then /readyz names it. */

#define MISSING_CHECK_S 2.0

/* The threads of a process create a topic once (the others find it). */
static pthread_mutex_t topics_mu = PTHREAD_MUTEX_INITIALIZER;

/* The partition count to create topic with. */
static int topic_partitions(projector *pj, const char *topic)
{
    const evl_config *cfg = pj->cfg;
    for (size_t i = 0; i < evl_luahost_naggregates(pj->host); i++) {
        const char *type = evl_luahost_aggregate_at(pj->host, i)->type;
        char events[512], commands[512], err[EVL_ERRLEN];
        evl_config_topic(cfg->cmd.events_topic ? cfg->cmd.events_topic
                                               : "{type}.events",
                         type, events, sizeof events);
        if (strcmp(events, topic) != 0)
            continue;
        evl_config_topic(cfg->cmd.commands_topic ? cfg->cmd.commands_topic
                                                 : "{type}.commands",
                         type, commands, sizeof commands);
        int n = 0;
        if (evl_kafka_partitions(pj->rk, commands, 10000, &n, err,
                                 sizeof err) == EVL_OK &&
            n > 0)
            return n; /* co-partitioned with its commands */
        break;
    }
    return cfg->cmd.partitions > 0 ? cfg->cmd.partitions : 6;
}

/* Subscribe to the topics that are not missing (none: no subscription). */
evl_err proj_subscribe(projector *pj, char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *sub =
        rd_kafka_topic_partition_list_new(pj->topics.n);
    for (int i = 0; i < pj->topics.n; i++) {
        int missing = 0;
        for (int k = 0; k < pj->missing.n; k++)
            if (strcmp(pj->missing.v[k], pj->topics.v[i]) == 0)
                missing = 1;
        if (!missing)
            rd_kafka_topic_partition_list_add(sub, pj->topics.v[i],
                                              RD_KAFKA_PARTITION_UA);
    }
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    int was = pj->nsubscribed;
    pj->nsubscribed = sub->cnt;
    if (sub->cnt > 0) {
        e = rd_kafka_subscribe(pj->rk, sub);
        evl_kafka_wait_begin(&pj->wait);
    } else if (was > 0) /* a reload left only missing topics */
        e = rd_kafka_unsubscribe(pj->rk);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e)
        return evl_seterr(err, errlen, EVL_EPERMANENT, "%s: %s",
                          pj->nsubscribed ? "rd_kafka_subscribe"
                                          : "rd_kafka_unsubscribe",
                          rd_kafka_err2str(e));
    return EVL_OK;
}

/* Look topic up and, when it is missing and commands.create_topics is
 * on, create it. Returns 1 when it exists; else 0 with the readiness
 * reason in why. */
static int look_up(projector *pj, const char *topic, char *why, size_t n)
{
    const evl_config *cfg = pj->cfg;
    char err[EVL_ERRLEN];
    evl_kafka_topic_spec spec = {topic, 0, 0};
    int count = 0, created = 0;
    evl_err e = evl_kafka_ensure_topic(pj->rk, &spec, 0, 10000, &count,
                                       &created, err, sizeof err);
    if (e == EVL_OK && count == 0 && cfg->cmd.create_topics) {
        spec.partitions = topic_partitions(pj, topic);
        e = evl_kafka_ensure_topic(pj->rk, &spec, 1, 10000, &count, &created,
                                   err, sizeof err);
    }
    if (e == EVL_OK && count > 0) {
        if (created) {
            char parts[16];
            snprintf(parts, sizeof parts, "%d", count);
            evl_log(EVL_LOG_INFO,
                    "topic created (it did not exist; commands.create_topics)",
                    "projection", pj->name, "topic", topic, "partitions", parts,
                    THREAD_FIELD(pj), NULL);
        }
        return 1;
    }
    if (e == EVL_OK) /* missing, not to be created */
        snprintf(why, n,
                 "topic %.240s does not exist (commands.create_topics is "
                 "false): waiting for it",
                 topic);
    else if (e == EVL_ETRANSIENT)
        snprintf(why, n, "topic %.200s: cannot look it up (%.200s): waiting",
                 topic, err);
    else
        snprintf(why, n,
                 "topic %.200s does not exist and cannot be created "
                 "(%.200s): waiting for it",
                 topic, err);
    return 0;
}

/* Before subscribing: look every topic up (creating missing ones when
 * configured to); remember those still missing. */
void proj_ensure_topics(projector *pj)
{
    pthread_mutex_lock(&topics_mu);
    for (int i = 0; i < pj->topics.n; i++) {
        char why[sizeof pj->missing_why];
        if (look_up(pj, pj->topics.v[i], why, sizeof why))
            continue;
        strlist_add(&pj->missing, pj->topics.v[i]);
        snprintf(pj->missing_why, sizeof pj->missing_why, "%s", why);
        evl_log(EVL_LOG_WARN,
                "a topic of the projection does not exist; it is read as "
                "soon as it does",
                "projection", pj->name, "topic", pj->topics.v[i], "reason", why,
                THREAD_FIELD(pj), NULL);
    }
    pthread_mutex_unlock(&topics_mu);
    pj->missing_checked = proj_now_s();
}

/* Between batches, every MISSING_CHECK_S while topics are missing: look
 * them up again (creating them when configured to: the cluster may not
 * have answered before); subscribe again when some exist now. Returns 0,
 * or 1 on a failure to subscribe (logged). */
int proj_check_missing(projector *pj)
{
    if (pj->missing.n == 0 ||
        proj_now_s() - pj->missing_checked < MISSING_CHECK_S)
        return 0;
    char err[EVL_ERRLEN], why[sizeof pj->missing_why];
    int appeared = 0;
    pthread_mutex_lock(&topics_mu);
    for (int k = 0; k < pj->missing.n;) {
        if (!look_up(pj, pj->missing.v[k], why, sizeof why)) {
            snprintf(pj->missing_why, sizeof pj->missing_why, "%s", why);
            k++;
            continue;
        }
        evl_log(EVL_LOG_INFO, "a missing topic exists now; subscribing to it",
                "projection", pj->name, "topic", pj->missing.v[k],
                THREAD_FIELD(pj), NULL);
        free(pj->missing.v[k]);
        pj->missing.v[k] = pj->missing.v[--pj->missing.n];
        appeared = 1;
    }
    pthread_mutex_unlock(&topics_mu);
    pj->missing_checked = proj_now_s();
    if (!appeared) {
        proj_report_ready(pj);
        return 0;
    }
    if (proj_subscribe(pj, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "cannot subscribe", "projection", pj->name,
                "error", err, NULL);
        return 1;
    }
    evl_metrics_ready(pj->component, 0,
                      pj->missing.n ? pj->missing_why
                                    : "waiting for a partition assignment");
    return 0;
}

/* ---- topics after a reload ---------------------------------------------- */

void proj_join_topics(const evl_strlist *l, char *buf, size_t n)
{
    buf[0] = '\0';
    for (int i = 0; i < l->n; i++) {
        size_t o = strlen(buf);
        snprintf(buf + o, n - o, "%s%s", i ? "," : "", l->v[i]);
    }
}

/* Do a and b name the same topics, in any order? */
static int same_topics(const evl_strlist *a, const evl_strlist *b)
{
    if (a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++) {
        int found = 0;
        for (int k = 0; k < b->n && !found; k++)
            found = strcmp(a->v[i], b->v[k]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

/* Swap the topic lists of pj with *topics and *missing. */
static void swap_lists(projector *pj, evl_strlist *topics, evl_strlist *missing)
{
    evl_strlist t = pj->topics, m = pj->missing;
    pj->topics = *topics;
    pj->missing = *missing;
    *topics = t;
    *missing = m;
}

/* Made the way setup makes them: each topic looked up (created when
 * configured to, else waited for), then one subscription to all that
 * exist. nh is pj->host for the time of it: the partition count of a
 * topic to create comes from its aggregate type, which may be new. On a
 * failure the old lists and subscription are back (a failure to take the
 * old subscription again is fatal to the projector: logged). */
evl_err proj_resubscribe(projector *pj, evl_luahost *nh, char *err,
                         size_t errlen)
{
    evl_strlist topics = {0}, missing = {0};
    if (evl_projector_topics(pj->cfg, nh, pj->name, &topics) == 0)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the reloaded scripts leave the projection no "
                          "topics (no aggregate script whose events topic "
                          "it reads)");
    if (same_topics(&topics, &pj->topics)) {
        evl_projector_topics_free(&topics);
        return EVL_OK;
    }
    evl_luahost *oh = pj->host;
    swap_lists(pj, &topics, &missing); /* the old ones held here */
    pj->host = nh;
    proj_ensure_topics(pj);
    pj->host = oh;
    evl_err e = proj_subscribe(pj, err, errlen);
    if (e != EVL_OK) {
        char again[EVL_ERRLEN];
        swap_lists(pj, &topics, &missing); /* the new ones freed below */
        if (proj_subscribe(pj, again, sizeof again) != EVL_OK) {
            evl_log(EVL_LOG_ERROR, "cannot subscribe to the topics again",
                    "projection", pj->name, "error", again, THREAD_FIELD(pj),
                    NULL);
            pj->abort_rc = FAILED;
        }
    } else {
        char list[1024];
        proj_join_topics(&pj->topics, list, sizeof list);
        evl_log(EVL_LOG_INFO, "projection subscribed to the reloaded topics",
                "projection", pj->name, "topics", list, THREAD_FIELD(pj), NULL);
    }
    evl_projector_topics_free(&topics);
    evl_projector_topics_free(&missing);
    return e;
}
