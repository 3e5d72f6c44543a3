/*
 * gw_kafka.c - the gateway's Kafka side (see gateway.h, gateway_int.h).
 *
 * Commands go out through one idempotent producer with the murmur2
 * partitioner (the one `evlua run` requires: an aggregate's commands share
 * a partition), built by kafka.h like every other client. Results come in
 * through one read_committed consumer assigned every partition of every
 * results topic from its end as it was when the gateway became ready: a
 * command is only sent once the gateway is ready, so its result lies past
 * that end and cannot be missed (the rule `evlua send --wait` follows for
 * one partition). No consumer group is joined: each gateway reads all
 * results and keeps those of commands it sent.
 *
 * A result finds its entry by command id (a hash table); the entry's
 * outcome is kept, bounded by gateway.cache_size in arrival order, for
 * GET and for retries of the same id, and every waiting request is
 * answered. The thread also ends waits whose deadline passed (202) once
 * their command's delivery report came (on a thread of its own).
 */
#include "gateway_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "json.h"
#include "kafka.h"
#include "lifecycle.h"
#include "log.h"

/* ---- the cache ------------------------------------------------------- */

static size_t bucket_of(const evl_gateway *gw, const char *id)
{
    return (size_t)(evl_hash_str(id) % gw->nbuckets);
}

gw_entry *gw_lookup(evl_gateway *gw, const char *id)
{
    for (gw_entry *e = gw->buckets[bucket_of(gw, id)]; e; e = e->hnext)
        if (strcmp(e->id, id) == 0)
            return e;
    return NULL;
}

void gw_remove(evl_gateway *gw, gw_entry *e)
{
    gw_entry **pp = &gw->buckets[bucket_of(gw, e->id)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->older)
        e->older->newer = e->newer;
    else
        gw->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        gw->newest = e->older;
    gw->nentries--;
    free(e->id);
    free(e->body);
    free(e);
}

gw_entry *gw_insert(evl_gateway *gw, const char *id)
{
    /* past the bound, forget the oldest entries nobody waits for */
    for (gw_entry *e = gw->oldest;
         e && gw->nentries >= (size_t)gw->cfg->gateway.cache_size;) {
        gw_entry *next = e->newer;
        if (!e->waiters)
            gw_remove(gw, e);
        e = next;
    }
    gw_entry *e = calloc(1, sizeof *e);
    if (!e)
        abort();
    e->id = evl_xstrdup(id);
    size_t b = bucket_of(gw, id);
    e->hnext = gw->buckets[b];
    gw->buckets[b] = e;
    e->older = gw->newest;
    if (gw->newest)
        gw->newest->newer = e;
    else
        gw->oldest = e;
    gw->newest = e;
    gw->nentries++;
    return e;
}

void gw_wait(evl_gateway *gw, gw_entry *e, gw_slot *s)
{
    gw_req *r = s->req;
    s->entry = e;
    s->wprev = NULL;
    s->wnext = e->waiters;
    if (e->waiters)
        e->waiters->wprev = s;
    e->waiters = s;
    if (!r->listed) {
        r->tprev = NULL;
        r->tnext = gw->waiting;
        if (gw->waiting)
            gw->waiting->tprev = r;
        gw->waiting = r;
        r->listed = 1;
    }
    r->nwait++;
    gw->nwaiting++;
    evl_metric_set(gw->m_waiters, gw->nwaiting);
}

/* Unlink s from its entry; its request leaves the deadline list with its
 * last waiting slot. */
static void slot_unwait(evl_gateway *gw, gw_slot *s)
{
    gw_req *r = s->req;
    if (!s->entry)
        return;
    if (s->wprev)
        s->wprev->wnext = s->wnext;
    else
        s->entry->waiters = s->wnext;
    if (s->wnext)
        s->wnext->wprev = s->wprev;
    s->entry = NULL;
    r->nwait--;
    gw->nwaiting--;
    evl_metric_set(gw->m_waiters, gw->nwaiting);
    if (r->nwait == 0 && r->listed) {
        if (r->tprev)
            r->tprev->tnext = r->tnext;
        else
            gw->waiting = r->tnext;
        if (r->tnext)
            r->tnext->tprev = r->tprev;
        r->listed = 0;
    }
}

void gw_unwait(evl_gateway *gw, gw_req *r)
{
    for (size_t i = 0; i < r->nslots && r->nwait > 0; i++)
        slot_unwait(gw, &r->slots[i]);
}

void gw_slot_answer(evl_gateway *gw, gw_slot *s, int status, const char *body,
                    size_t len, const char *location)
{
    gw_req *r = s->req;
    slot_unwait(gw, s);
    s->status = status;
    s->body = evl_xmalloc(len + 1);
    memcpy(s->body, body, len);
    s->len = len;
    s->location = location ? evl_xstrdup(location) : NULL;
    if (r->phase == GW_WAIT && r->nwait == 0) {
        gw_compose(r);
        r->phase = GW_DONE;
        MHD_resume_connection(r->conn);
    }
}

void gw_pending(const char *id, evl_buf *b, char *loc, size_t loclen)
{
    snprintf(loc, loclen, "/v1/commands/%s", id);
    evl_buf_puts(b, "{\"command_id\":");
    evl_envelope_put_string(b, id, strlen(id));
    evl_buf_puts(b, ",\"status\":\"pending\"}");
}

/* Answer s 202 (its wait is over; the outcome will be at its Location)
 * and stop its wait. With gw->mu held, s's command acknowledged. */
static void answer_pending(evl_gateway *gw, gw_slot *s)
{
    evl_buf b = {0};
    char loc[300];
    gw_pending(s->entry->id, &b, loc, sizeof loc);
    gw_slot_answer(gw, s, 202, b.data, b.len, loc);
    evl_buf_free(&b);
}

/* The outcome of e is known: keep it and answer its waiters, but a
 * waiter whose wait is already over (?timeout_ms=0 above all) gets its
 * 202 as if the outcome had come a moment later: what a client sees does
 * not depend on which of the two the thread noticed first. */
static void resolve(evl_gateway *gw, gw_entry *e, int status, evl_buf *body)
{
    long long now = evl_now_ms();
    e->done = 1;
    e->acked = 1; /* a result: the command was in Kafka */
    e->status = status;
    e->len = body->len;
    e->body = evl_xmalloc(body->len + 1);
    memcpy(e->body, body->data, body->len);
    while (e->waiters) {
        gw_slot *s = e->waiters;
        if (s->req->deadline_ms <= now)
            answer_pending(gw, s);
        else
            gw_slot_answer(gw, s, status, e->body, e->len, NULL);
    }
}

/* ---- producing --------------------------------------------------------- */

/* The delivery report of a command: written (the producer is idempotent
 * and acks=all: it is in Kafka for good), its waits that are over are
 * answered 202 now, never before; not written, its waiters are answered
 * 503 and the id forgotten, so a retry sends it again. @locality the
 * delivery thread (dr_main), or the one stopping the gateway. */
static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    evl_gateway *gw = opaque;
    char *id = rkm->_private;
    (void)rk;
    if (!rkm->err) {
        long long now = evl_now_ms();
        pthread_mutex_lock(&gw->mu);
        gw_entry *e = gw_lookup(gw, id);
        if (e && !e->acked) {
            e->acked = 1;
            for (gw_slot *s = e->waiters, *next; s; s = next) {
                next = s->wnext;
                if (s->req->deadline_ms <= now)
                    answer_pending(gw, s);
            }
        }
        pthread_mutex_unlock(&gw->mu);
    } else {
        evl_buf b = {0};
        evl_buf_puts(&b, "{\"command_id\":");
        evl_envelope_put_string(&b, id, strlen(id));
        evl_buf_puts(&b, ",\"error\":");
        char msg[300];
        snprintf(msg, sizeof msg, "the command was not delivered to Kafka: %s",
                 rd_kafka_err2str(rkm->err));
        evl_envelope_put_string(&b, msg, strlen(msg));
        evl_buf_putc(&b, '}');
        evl_log(EVL_LOG_WARN, "gateway: command not delivered", "command_id",
                id, "error", rd_kafka_err2str(rkm->err), NULL);
        pthread_mutex_lock(&gw->mu);
        gw_entry *e = gw_lookup(gw, id);
        if (e && !e->done) {
            while (e->waiters)
                gw_slot_answer(gw, e->waiters, 503, b.data, b.len, NULL);
            gw_remove(gw, e);
        }
        pthread_mutex_unlock(&gw->mu);
        evl_buf_free(&b);
    }
    free(id);
}

int gw_produce(evl_gateway *gw, const gw_type *t, const char *aggregate_id,
               const char *id, const evl_buf *cmd, char *err, size_t errlen)
{
    char *opaque = evl_xstrdup(id);
    rd_kafka_resp_err_t perr = rd_kafka_producev(
        gw->producer, RD_KAFKA_V_TOPIC(t->commands_topic),
        RD_KAFKA_V_KEY(aggregate_id, strlen(aggregate_id)),
        RD_KAFKA_V_VALUE(cmd->data, cmd->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADER("content-type", "application/json", -1),
        RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    if (perr) {
        free(opaque);
        snprintf(err, errlen, "cannot produce the command: %s",
                 rd_kafka_err2str(perr));
        return -1;
    }
    return 0;
}

/* ---- results ----------------------------------------------------------- */

typedef struct ev_list {
    evl_buf *out;
    long long seq;
    int n;
    const char *type, *types_end; /* the next type: NUL-separated list */
} ev_list;

static void put_event(void *ud, const char *s, size_t n)
{
    ev_list *l = ud;
    if (l->n++)
        evl_buf_putc(l->out, ',');
    evl_buf_puts(l->out, "{\"id\":");
    evl_envelope_put_string(l->out, s, n);
    if (l->type && l->type < l->types_end) {
        size_t tl = strlen(l->type);
        evl_buf_puts(l->out, ",\"type\":");
        evl_envelope_put_string(l->out, l->type, tl);
        l->type += tl + 1;
    }
    char num[48];
    snprintf(num, sizeof num, ",\"sequence\":%lld}", l->seq++);
    evl_buf_puts(l->out, num);
}

/* Keep the strings of a JSON array, NUL-separated. */
static void keep_type(void *ud, const char *s, size_t n)
{
    evl_buf_put(ud, s, n);
    evl_buf_putc(ud, '\0');
}

/* Count the strings of a JSON array. */
static void count_event(void *ud, const char *s, size_t n)
{
    (void)s;
    (void)n;
    (*(long long *)ud)++;
}

/* The HTTP answer of the result r (len bytes) of aggregate type type into
 * body; returns the status, or 0 when r is not a result of a command
 * (*id set to its id otherwise). */
static int map_result(const char *r, size_t len, const char *type,
                      evl_buf *scratch, evl_buf *body, char *id, size_t idlen)
{
    enum { M_ID, M_STATUS, M_AGG, M_VERSION, M_EVENTS, M_ERROR, M_TYPES };
    evl_json_member m[] = {{.name = "command_id"},   {.name = "status"},
                           {.name = "aggregate_id"}, {.name = "version"},
                           {.name = "events"},       {.name = "error"},
                           {.name = "event_types"}};
    char err[EVL_ERRLEN];
    int is_object, http;
    if (evl_json_members(r, len, m, 7, scratch, &is_object, err, sizeof err) ||
        m[M_ID].type != EVL_JSON_STRING || m[M_STATUS].type != EVL_JSON_STRING)
        return 0;
    snprintf(id, idlen, "%s", scratch->data + m[M_ID].off);
    const char *status = scratch->data + m[M_STATUS].off;
    if (strcmp(status, "accepted") == 0 || strcmp(status, "duplicate") == 0)
        http = 200;
    else if (strcmp(status, "rejected") == 0)
        http = 409;
    else
        http = 500;
    evl_buf_puts(body, "{\"command_id\":");
    evl_envelope_put_string(body, id, strlen(id));
    evl_buf_puts(body, ",\"status\":");
    /* a duplicate is the answer to a command accepted before this
     * gateway's cache remembers: accepted, without its events */
    evl_buf_puts(body, http == 200   ? "\"accepted\""
                       : http == 409 ? "\"rejected\""
                                     : "\"failed\"");
    if (strcmp(status, "duplicate") == 0)
        evl_buf_puts(body, ",\"duplicate\":true");
    evl_buf_puts(body, ",\"aggregate_type\":");
    evl_envelope_put_string(body, type, strlen(type));
    evl_buf_puts(body, ",\"aggregate_id\":");
    if (m[M_AGG].type == EVL_JSON_STRING)
        evl_envelope_put_string(body, scratch->data + m[M_AGG].off,
                                m[M_AGG].len);
    else
        evl_buf_puts(body, "null");
    long long version =
        m[M_VERSION].type == EVL_JSON_NUMBER && m[M_VERSION].isint
            ? m[M_VERSION].integer
            : -1;
    char num[48];
    if (version >= 0)
        snprintf(num, sizeof num, ",\"version\":%lld", version);
    else
        snprintf(num, sizeof num, ",\"version\":null");
    evl_buf_puts(body, num);
    if (strcmp(status, "accepted") == 0 && m[M_EVENTS].type == EVL_JSON_OTHER) {
        /* the events' sequences are the version's last ones */
        evl_buf tmp = {0}, types = {0};
        long long n = 0;
        evl_json_array_strings(r + m[M_EVENTS].voff, m[M_EVENTS].vlen, &tmp,
                               count_event, &n, err, sizeof err);
        /* their types, from a command side that writes them (not before
         * event_types was added to the result) */
        if (m[M_TYPES].type == EVL_JSON_OTHER)
            evl_json_array_strings(r + m[M_TYPES].voff, m[M_TYPES].vlen, &tmp,
                                   keep_type, &types, err, sizeof err);
        ev_list l = {body, version - n + 1, 0, NULL, NULL};
        if (types.len) {
            l.type = types.data;
            l.types_end = types.data + types.len;
        }
        evl_buf_puts(body, ",\"events\":[");
        evl_json_array_strings(r + m[M_EVENTS].voff, m[M_EVENTS].vlen, &tmp,
                               put_event, &l, err, sizeof err);
        evl_buf_putc(body, ']');
        evl_buf_free(&tmp);
        evl_buf_free(&types);
    }
    if (m[M_ERROR].type == EVL_JSON_STRING) {
        evl_buf_puts(body, ",\"error\":");
        evl_envelope_put_string(body, scratch->data + m[M_ERROR].off,
                                m[M_ERROR].len);
    }
    evl_buf_putc(body, '}');
    return http;
}

static void on_result(evl_gateway *gw, const rd_kafka_message_t *rkm,
                      evl_buf *scratch)
{
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    const char *type = NULL;
    char id[EVL_ENVELOPE_MAX_ID + 1];
    /* this thread is the one that swaps gw->types */
    const gw_types *ts = gw->types;
    for (size_t i = 0; i < ts->n && !type; i++)
        if (strcmp(ts->v[i].results_topic, topic) == 0)
            type = ts->v[i].type;
    if (!type || !rkm->payload)
        return;
    /* most results are of commands others sent: look the id up first */
    evl_json_member m[] = {{.name = "command_id"}};
    char err[EVL_ERRLEN];
    int is_object;
    if (evl_json_members(rkm->payload, rkm->len, m, 1, scratch, &is_object, err,
                         sizeof err) ||
        m[0].type != EVL_JSON_STRING || m[0].len > EVL_ENVELOPE_MAX_ID)
        return;
    snprintf(id, sizeof id, "%s", scratch->data + m[0].off);
    pthread_mutex_lock(&gw->mu);
    gw_entry *e = gw_lookup(gw, id);
    if (e && !e->done) {
        evl_buf body = {0};
        int http = map_result(rkm->payload, rkm->len, type, scratch, &body, id,
                              sizeof id);
        if (http)
            resolve(gw, e, http, &body);
        evl_buf_free(&body);
    }
    pthread_mutex_unlock(&gw->mu);
}

/* Answer 202 to every wait past its deadline whose command is in Kafka
 * (the others get theirs from the delivery report). */
static void expire(evl_gateway *gw)
{
    long long now = evl_now_ms();
    pthread_mutex_lock(&gw->mu);
    for (gw_req *r = gw->waiting, *next; r; r = next) {
        next = r->tnext;
        if (r->deadline_ms > now)
            continue;
        for (size_t i = 0; i < r->nslots; i++)
            if (r->slots[i].entry && r->slots[i].entry->acked)
                answer_pending(gw, &r->slots[i]);
    }
    pthread_mutex_unlock(&gw->mu);
}

static void not_ready(evl_gateway *gw, const char *why)
{
    pthread_mutex_lock(&gw->mu);
    snprintf(gw->notready, sizeof gw->notready, "%.200s", why);
    pthread_mutex_unlock(&gw->mu);
    evl_metrics_ready("gateway", 0, why);
}

/* Assign every partition of every results topic not assigned yet from
 * its end: all of them at start (rd_kafka_assign), those of the types a
 * reload added later (incremental: the others go on where they are).
 * Returns 0 when done, -1 (with readiness saying why, or at start) to
 * try again later. */
static int assign_results(evl_gateway *gw, int incremental)
{
    char err[EVL_ERRLEN], why[300];
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    int rc = -1;
    gw_types *ts = gw->types;
    for (size_t i = 0; i < ts->n; i++) {
        const gw_type *t = &ts->v[i];
        int n = 0, nc = 0;
        if (incremental && t->assigned)
            continue;
        if (evl_kafka_partitions(gw->consumer, t->results_topic, 5000, &n, err,
                                 sizeof err) ||
            evl_kafka_partitions(gw->consumer, t->commands_topic, 5000, &nc,
                                 err, sizeof err)) {
            not_ready(gw, err);
            goto out;
        }
        if (n == 0 || nc == 0) {
            snprintf(why, sizeof why,
                     "topic %s does not exist yet (is evlua run started?)",
                     n == 0 ? t->results_topic : t->commands_topic);
            not_ready(gw, why);
            goto out;
        }
        for (int p = 0; p < n; p++) {
            int64_t lo, hi;
            rd_kafka_resp_err_t rerr = rd_kafka_query_watermark_offsets(
                gw->consumer, t->results_topic, p, &lo, &hi, 5000);
            if (rerr) {
                snprintf(why, sizeof why, "cannot read the end of %s[%d]: %s",
                         t->results_topic, p, rd_kafka_err2str(rerr));
                not_ready(gw, why);
                goto out;
            }
            rd_kafka_topic_partition_list_add(l, t->results_topic, p)->offset =
                hi;
        }
    }
    if (incremental) {
        rd_kafka_error_t *ierr = rd_kafka_incremental_assign(gw->consumer, l);
        if (ierr) {
            evl_log(EVL_LOG_WARN, "gateway: rd_kafka_incremental_assign failed",
                    "error", rd_kafka_error_string(ierr), NULL);
            rd_kafka_error_destroy(ierr);
            goto out;
        }
    } else {
        rd_kafka_resp_err_t aerr = rd_kafka_assign(gw->consumer, l);
        if (aerr) {
            snprintf(why, sizeof why, "rd_kafka_assign: %s",
                     rd_kafka_err2str(aerr));
            not_ready(gw, why);
            goto out;
        }
    }
    for (size_t i = 0; i < ts->n; i++)
        __atomic_store_n(&ts->v[i].assigned, 1, __ATOMIC_RELEASE);
    rc = 0;
out:
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

static void *kafka_main(void *arg)
{
    evl_gateway *gw = arg;
    evl_buf scratch = {0};
    long long next_try = 0, next_expire = 0;
    int unassigned = 0; /* a reload added types not assigned yet */
    evl_thread_name("evl:gw-kafka", NULL);
    while (!gw->quit) {
        long long now = evl_now_ms();
        if (evl_lifecycle_reload_requested(&gw->reload_seen) && gw_reload(gw))
            unassigned = 1, next_try = 0;
        if (gw->ready && unassigned && now >= next_try) {
            if (assign_results(gw, 1) == 0)
                unassigned = 0;
            else
                next_try = now + 1000;
        }
        if (!gw->ready && now >= next_try) {
            if (assign_results(gw, 0) == 0) {
                pthread_mutex_lock(&gw->mu);
                gw->ready = !gw->quit; /* a stop wins */
                pthread_mutex_unlock(&gw->mu);
                evl_metrics_ready("gateway", 1, NULL);
                evl_log(EVL_LOG_INFO, "gateway ready: results assigned", NULL);
            } else {
                next_try = now + 1000;
            }
        }
        rd_kafka_message_t *rkm =
            rd_kafka_consumer_poll(gw->consumer, gw->ready ? 20 : 100);
        if (rkm) {
            if (!rkm->err)
                on_result(gw, rkm, &scratch);
            else if (rkm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                evl_log(EVL_LOG_WARN, "gateway: reading results", "error",
                        rd_kafka_message_errstr(rkm), NULL);
            rd_kafka_message_destroy(rkm);
        }
        if ((now = evl_now_ms()) >= next_expire) {
            expire(gw);
            gw_reap(gw);
            next_expire = now + 20;
        }
    }
    evl_buf_free(&scratch);
    return NULL;
}

/* The delivery reports, on a thread of their own: the Kafka thread
 * blocks in the consumer's poll, and a 202 waits for its report. */
static void *dr_main(void *arg)
{
    evl_gateway *gw = arg;
    evl_thread_name("evl:gw-dr", NULL);
    while (!gw->quit)
        rd_kafka_poll(gw->producer, 100);
    return NULL;
}

evl_err gw_kafka_start(evl_gateway *gw, char *err, size_t errlen)
{
    /* linger.ms 0: each request waits for its command's acknowledgement
     * (a 202) or its transaction, so a linger is latency on every one;
     * under load the producer still batches what arrives while its
     * in-flight requests are out (bench_gateway, ?timeout_ms=0 with 64
     * connections: 8,100 -> 11,400 a second against linger.ms 1) */
    static const char *const pdefaults[] = {"linger.ms", "0", NULL};
    static const char *const prequired[] = {
        "partitioner", "murmur2_random", "enable.idempotence",
        "true",        "acks",           "all",
        NULL};
    evl_kafka_client_opts po = {.name = "gateway producer",
                                .client_id = "evlua-gateway",
                                .defaults = pdefaults,
                                .required = prequired,
                                .opaque = gw,
                                .dr_msg_cb = dr_cb};
    evl_kafka_client_opts co = {.name = "gateway consumer",
                                .client_id = "evlua-gateway",
                                .group_id = "evlua-gateway",
                                .isolation = "read_committed"};
    evl_err e;
    if ((e = evl_kafka_producer_new(gw->cfg, &po, &gw->producer, err,
                                    errlen)) ||
        (e = evl_kafka_consumer_new(gw->cfg, &co, &gw->consumer, err, errlen)))
        return e;
    not_ready(gw, "the results topics are not assigned yet");
    if (pthread_create(&gw->thread, NULL, kafka_main, gw) != 0)
        return evl_seterr(err, errlen, EVL_EFATAL, "pthread_create failed");
    gw->thread_started = 1;
    if (pthread_create(&gw->dr_thread, NULL, dr_main, gw) != 0)
        return evl_seterr(err, errlen, EVL_EFATAL, "pthread_create failed");
    gw->dr_thread_started = 1;
    return EVL_OK;
}

void gw_kafka_stop(evl_gateway *gw)
{
    if (gw->thread_started) {
        gw->quit = 1;
        pthread_join(gw->thread, NULL);
        gw->thread_started = 0;
    }
    if (gw->dr_thread_started) {
        gw->quit = 1;
        pthread_join(gw->dr_thread, NULL);
        gw->dr_thread_started = 0;
    }
    if (gw->producer) {
        rd_kafka_flush(gw->producer, 5000);
        rd_kafka_destroy(gw->producer);
        gw->producer = NULL;
    }
    if (gw->consumer) {
        rd_kafka_consumer_close(gw->consumer);
        rd_kafka_destroy(gw->consumer);
        gw->consumer = NULL;
    }
}
