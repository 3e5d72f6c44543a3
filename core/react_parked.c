/*
 * react_parked.c - parked reactions: the records of the parked topic, the
 * set they fold into, and the operator's list / retry / drop
 * (reactor.h, reactor_int.h).
 *
 * Why a topic, and why records that fold: a reactor's parking has to be
 * exactly once with its offsets, and the one transaction a reactor has is
 * Kafka's. A record written in that transaction is there exactly when the
 * offsets moved past its event; a table would need a second system and a
 * two-phase dance, and would make a database a requirement of reactions.
 * So the topic is the truth, and every reader (each reactor at start and
 * after an abort, `evlua parked list`) rebuilds the same set by folding it
 * from the beginning:
 *
 *   parked    {"kind":"parked","reaction":T,"aggregate_type","aggregate_id",
 *              "source":{"topic","partition","offset"},"event":{...},
 *              "error","at"}: one more parked event of a source aggregate
 *   retry     {"kind":"retry"|"drop","aggregate_type","aggregate_id",
 *   drop       "request_id","at"}: the operator asks (no reactor yet acted)
 *   released  {"kind":"released","reaction":T,"aggregate_type",
 *              "aggregate_id","request_id","applied","dropped",
 *              "through":{"topic","partition","offset"}?,"error"?,"at"}:
 *              a reactor answered a request: the events up to `through`
 *              left (their commands were sent in the same transaction, or
 *              they were dropped); with an error, the first one left is
 *              parked again with that error.
 *
 * Every record folds idempotently (a parked event at or before the last
 * one of its aggregate, an answer to a request already answered, change
 * nothing), so a reactor can fold its own records ahead of the commit and
 * read them back afterwards.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "luaapi.h"
#include "reactor_int.h"

/* ---- the set ------------------------------------------------------------ */

void rp_set_init(rp_set *s)
{
    memset(s, 0, sizeof *s);
    s->nbuckets = 256;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    if (!s->buckets)
        abort();
}

static void event_free(rp_event *e)
{
    free(e->topic);
    free(e->event);
    free(e->error);
    free(e->at);
}

static void agg_free(rp_agg *a)
{
    for (size_t i = 0; i < a->n; i++)
        event_free(&a->v[i]);
    free(a->v);
    free(a->atype);
    free(a->aid);
    free(a->drop_topic);
    free(a);
}

static void request_free(rp_request *q)
{
    free(q->id);
    free(q->kind);
    free(q->atype);
    free(q->aid);
}

void rp_set_free(rp_set *s)
{
    for (size_t b = 0; s->buckets && b < s->nbuckets; b++)
        for (rp_agg *a = s->buckets[b], *next; a; a = next) {
            next = a->next;
            agg_free(a);
        }
    free(s->buckets);
    for (size_t i = 0; i < s->nreqs; i++)
        request_free(&s->reqs[i]);
    free(s->reqs);
    for (size_t i = 0; i < s->ndone; i++)
        free(s->done[i]);
    free(s->done);
    memset(s, 0, sizeof *s);
}

static size_t bucket(const rp_set *s, const char *atype, const char *aid)
{
    uint64_t h = evl_hash_str(atype) * 31 + evl_hash_str(aid);
    return (size_t)(h % s->nbuckets);
}

rp_agg *rp_find(const rp_set *s, const char *atype, const char *aid)
{
    for (rp_agg *a = s->buckets[bucket(s, atype, aid)]; a; a = a->next)
        if (strcmp(a->aid, aid) == 0 && strcmp(a->atype, atype) == 0)
            return a;
    return NULL;
}

static rp_agg *agg_add(rp_set *s, const char *atype, const char *aid)
{
    rp_agg *a = rp_find(s, atype, aid);
    if (a)
        return a;
    a = evl_xmalloc(sizeof *a);
    memset(a, 0, sizeof *a);
    a->atype = evl_xstrdup(atype);
    a->aid = evl_xstrdup(aid);
    size_t b = bucket(s, atype, aid);
    a->next = s->buckets[b];
    s->buckets[b] = a;
    return a;
}

static void agg_remove(rp_set *s, rp_agg *a)
{
    rp_agg **pp = &s->buckets[bucket(s, a->atype, a->aid)];
    while (*pp && *pp != a)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = a->next;
        if (a->n > 0)
            s->naggs--;
        agg_free(a);
    }
}

static int is_done(const rp_set *s, const char *id)
{
    for (size_t i = 0; i < s->ndone; i++)
        if (strcmp(s->done[i], id) == 0)
            return 1;
    return 0;
}

static void mark_done(rp_set *s, const char *id)
{
    if (is_done(s, id))
        return;
    if (s->ndone == s->capdone) {
        s->capdone = s->capdone ? 2 * s->capdone : 16;
        s->done = evl_xrealloc(s->done, sizeof *s->done * s->capdone);
    }
    s->done[s->ndone++] = evl_xstrdup(id);
    for (size_t i = 0; i < s->nreqs; i++)
        if (strcmp(s->reqs[i].id, id) == 0) {
            request_free(&s->reqs[i]);
            memmove(&s->reqs[i], &s->reqs[i + 1],
                    sizeof *s->reqs * (s->nreqs - i - 1));
            s->nreqs--;
            break;
        }
}

static void add_request(rp_set *s, const char *id, const char *kind,
                        const char *atype, const char *aid)
{
    if (is_done(s, id))
        return;
    for (size_t i = 0; i < s->nreqs; i++)
        if (strcmp(s->reqs[i].id, id) == 0)
            return;
    if (s->nreqs == s->capreqs) {
        s->capreqs = s->capreqs ? 2 * s->capreqs : 8;
        s->reqs = evl_xrealloc(s->reqs, sizeof *s->reqs * s->capreqs);
    }
    rp_request *q = &s->reqs[s->nreqs++];
    q->id = evl_xstrdup(id);
    q->kind = evl_xstrdup(kind);
    q->atype = evl_xstrdup(atype);
    q->aid = evl_xstrdup(aid);
}

/* ---- folding a record --------------------------------------------------- */

static char *dupn(const char *p, size_t n)
{
    char *d = evl_xmalloc(n + 1);
    memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

enum {
    M_KIND,
    M_ATYPE,
    M_AID,
    M_SOURCE,
    M_EVENT,
    M_ERROR,
    M_AT,
    M_REQUEST,
    M_THROUGH,
    M_DROPPED,
    NM
};

/* A string member (copied: scratch is reused), or NULL. */
static char *member_str(const evl_json_member *m, const evl_buf *scratch)
{
    return m->type == EVL_JSON_STRING ? evl_xstrdup(scratch->data + m->off)
                                      : NULL;
}

/* {"topic","partition","offset"} at json[m] into the three. */
static int read_where(const char *json, const evl_json_member *m, char **topic,
                      int32_t *partition, int64_t *offset)
{
    evl_json_member w[3] = {
        {.name = "topic"}, {.name = "partition"}, {.name = "offset"}};
    evl_buf scratch = {0};
    int obj = 0, rc = -1;
    char err[EVL_ERRLEN];
    if (m->type != EVL_JSON_OTHER ||
        evl_json_members(json + m->voff, m->vlen, w, 3, &scratch, &obj, err,
                         sizeof err) != EVL_OK ||
        !obj || w[0].type != EVL_JSON_STRING || !w[1].isint || !w[2].isint)
        goto out;
    *topic = evl_xstrdup(scratch.data + w[0].off);
    *partition = (int32_t)w[1].integer;
    *offset = w[2].integer;
    rc = 0;
out:
    evl_buf_free(&scratch);
    return rc;
}

static int fold_parked(rp_set *s, const char *json, const evl_json_member *m,
                       const char *atype, const char *aid,
                       const evl_buf *scratch)
{
    rp_event e = {0};
    if (read_where(json, &m[M_SOURCE], &e.topic, &e.partition, &e.offset) != 0)
        return -1;
    rp_agg *a = agg_add(s, atype, aid);
    if (a->n > 0) {
        const rp_event *last = &a->v[a->n - 1];
        if (strcmp(last->topic, e.topic) == 0 &&
            last->partition == e.partition && last->offset >= e.offset) {
            free(e.topic); /* folded before */
            return 0;
        }
    }
    if (m[M_EVENT].type != EVL_JSON_ABSENT &&
        !(m[M_EVENT].vlen == 4 &&
          memcmp(json + m[M_EVENT].voff, "null", 4) == 0)) {
        e.event = dupn(json + m[M_EVENT].voff, m[M_EVENT].vlen);
        e.len = m[M_EVENT].vlen;
    }
    e.error = member_str(&m[M_ERROR], scratch);
    e.at = member_str(&m[M_AT], scratch);
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 4;
        a->v = evl_xrealloc(a->v, sizeof *a->v * a->cap);
    }
    if (a->n == 0)
        s->naggs++;
    a->v[a->n++] = e;
    return 0;
}

static void fold_released(rp_set *s, const char *json, const evl_json_member *m,
                          const char *atype, const char *aid,
                          const evl_buf *scratch)
{
    rp_agg *a = rp_find(s, atype, aid);
    char *topic = NULL;
    int32_t partition = 0;
    int64_t offset = -1;
    if (m[M_REQUEST].type == EVL_JSON_STRING) {
        if (is_done(s, scratch->data + m[M_REQUEST].off))
            return; /* folded before */
        mark_done(s, scratch->data + m[M_REQUEST].off);
    }
    if (!a)
        return;
    if (read_where(json, &m[M_THROUGH], &topic, &partition, &offset) == 0) {
        size_t k = 0, before = a->n;
        while (k < a->n && strcmp(a->v[k].topic, topic) == 0 &&
               a->v[k].partition == partition && a->v[k].offset <= offset)
            event_free(&a->v[k++]);
        memmove(a->v, a->v + k, sizeof *a->v * (a->n - k));
        a->n -= k;
        if (before > 0 && a->n == 0)
            s->naggs--;
        if (m[M_DROPPED].isint && m[M_DROPPED].integer > 0) {
            free(a->drop_topic);
            a->drop_topic = topic;
            a->drop_partition = partition;
            a->drop_offset = offset;
        } else {
            free(topic);
        }
    }
    if (a->n > 0 && m[M_ERROR].type == EVL_JSON_STRING) {
        free(a->v[0].error);
        a->v[0].error = member_str(&m[M_ERROR], scratch);
    }
    if (a->n == 0 && !a->drop_topic)
        agg_remove(s, a);
}

int rp_apply(rp_set *s, const char *json, size_t len, char *err, size_t errlen)
{
    evl_json_member m[NM] = {
        {.name = "kind"},         {.name = "aggregate_type"},
        {.name = "aggregate_id"}, {.name = "source"},
        {.name = "event"},        {.name = "error"},
        {.name = "at"},           {.name = "request_id"},
        {.name = "through"},      {.name = "dropped"}};
    evl_buf scratch = {0};
    int obj = 0, rc = -1;
    char *kind = NULL, *atype = NULL, *aid = NULL;
    if (evl_json_members(json, len, m, NM, &scratch, &obj, err, errlen) !=
        EVL_OK)
        goto out;
    kind = member_str(&m[M_KIND], &scratch);
    atype = member_str(&m[M_ATYPE], &scratch);
    aid = member_str(&m[M_AID], &scratch);
    if (!obj || !kind || !atype || !aid) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "not a parked-topic record (an object with kind, "
                   "aggregate_type and aggregate_id)");
        goto out;
    }
    rc = 0;
    if (strcmp(kind, "parked") == 0) {
        if ((rc = fold_parked(s, json, m, atype, aid, &scratch)) != 0)
            evl_seterr(err, errlen, EVL_EPERMANENT,
                       "parked record without a valid source");
    } else if (strcmp(kind, "released") == 0) {
        fold_released(s, json, m, atype, aid, &scratch);
    } else if ((strcmp(kind, "retry") == 0 || strcmp(kind, "drop") == 0) &&
               m[M_REQUEST].type == EVL_JSON_STRING) {
        add_request(s, scratch.data + m[M_REQUEST].off, kind, atype, aid);
    } else {
        rc = -1;
        evl_seterr(err, errlen, EVL_EPERMANENT, "unknown record kind '%s'",
                   kind);
    }
out:
    free(kind);
    free(atype);
    free(aid);
    evl_buf_free(&scratch);
    return rc;
}

/* ---- writing records ---------------------------------------------------- */

static void put_str(evl_buf *b, const char *s)
{
    evl_envelope_put_string(b, s, strlen(s));
}

/* "\"name\":" then the string s */
static void put_field(evl_buf *b, const char *name, const char *s)
{
    evl_buf_putc(b, '"');
    evl_buf_puts(b, name);
    evl_buf_puts(b, "\":");
    put_str(b, s);
}

static void put_where(evl_buf *b, const char *name, const char *topic,
                      int32_t partition, int64_t offset)
{
    char num[64];
    evl_buf_putc(b, '"');
    evl_buf_puts(b, name);
    evl_buf_puts(b, "\":{");
    put_field(b, "topic", topic);
    snprintf(num, sizeof num, ",\"partition\":%d,\"offset\":%lld}",
             (int)partition, (long long)offset);
    evl_buf_puts(b, num);
}

static void put_head(evl_buf *b, const char *kind, const char *reaction,
                     const char *atype, const char *aid)
{
    evl_buf_putc(b, '{');
    put_field(b, "kind", kind);
    if (reaction) {
        evl_buf_putc(b, ',');
        put_field(b, "reaction", reaction);
    }
    evl_buf_putc(b, ',');
    put_field(b, "aggregate_type", atype);
    evl_buf_putc(b, ',');
    put_field(b, "aggregate_id", aid);
}

static void put_at(evl_buf *b)
{
    char at[25];
    evl_luaapi_now(at);
    evl_buf_putc(b, ',');
    put_field(b, "at", at);
    evl_buf_putc(b, '}');
}

void rp_record_parked(evl_buf *out, const char *reaction, const char *atype,
                      const char *aid, const char *topic, int32_t partition,
                      int64_t offset, const char *event, size_t len,
                      const char *error)
{
    put_head(out, "parked", reaction, atype, aid);
    evl_buf_putc(out, ',');
    put_where(out, "source", topic, partition, offset);
    evl_buf_puts(out, ",\"event\":");
    evl_buf_put(out, event, len);
    evl_buf_putc(out, ',');
    put_field(out, "error", error);
    put_at(out);
}

void rp_record_released(evl_buf *out, const char *reaction,
                        const rp_released *r)
{
    char num[96];
    put_head(out, "released", reaction, r->atype, r->aid);
    evl_buf_putc(out, ',');
    put_field(out, "request_id", r->request_id);
    snprintf(num, sizeof num, ",\"applied\":%lld,\"dropped\":%lld", r->applied,
             r->dropped);
    evl_buf_puts(out, num);
    if (r->through) {
        evl_buf_putc(out, ',');
        put_where(out, "through", r->through->topic, r->through->partition,
                  r->through->offset);
    }
    if (r->error) {
        evl_buf_putc(out, ',');
        put_field(out, "error", r->error);
    }
    put_at(out);
}

void rp_record_request(evl_buf *out, const char *kind, const char *atype,
                       const char *aid, const char *request_id)
{
    put_head(out, kind, NULL, atype, aid);
    evl_buf_putc(out, ',');
    put_field(out, "request_id", request_id);
    put_at(out);
}

/* ---- reading the topic -------------------------------------------------- */

/* Fold one message of the parked topic (errors logged, skipped); *pos
 * moves past it, or to the end an EOF reports. */
void rp_fold_message(rp_set *s, rd_kafka_message_t *m, int64_t *pos)
{
    char err[EVL_ERRLEN], where[300];
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (m->offset > *pos)
            *pos = m->offset;
        return;
    }
    if (m->err || !m->payload)
        return;
    if (m->offset + 1 > *pos)
        *pos = m->offset + 1;
    if (rp_apply(s, m->payload, m->len, err, sizeof err) != 0) {
        snprintf(where, sizeof where, "%s[%d]@%lld",
                 rd_kafka_topic_name(m->rkt), (int)m->partition,
                 (long long)m->offset);
        evl_log(EVL_LOG_WARN, "skipping a record of the parked topic", "record",
                where, "error", err, NULL);
    }
}

evl_err rp_drain(rd_kafka_t *reader, const char *topic, rp_set *s, int64_t *pos,
                 int timeout_ms, char *err, size_t errlen)
{
    int64_t lo = 0, hi = 0;
    long long deadline = evl_now_ms() + timeout_ms;
    rd_kafka_resp_err_t e;
    /* A topic created a moment ago (the reactor's first start) can still
     * be unknown to this client's metadata ("Local: Unknown partition")
     * although the creating client already saw it: ask again until the
     * deadline instead of failing the start on the first answer. */
    for (;;) {
        long long left = deadline - evl_now_ms();
        e = rd_kafka_query_watermark_offsets(reader, topic, 0, &lo, &hi,
                                             left < 100     ? 100
                                             : left > 10000 ? 10000
                                                            : (int)left);
        if (!e)
            break;
        if (evl_now_ms() >= deadline || evl_lifecycle_stopping())
            return evl_seterr(err, errlen, EVL_ETRANSIENT,
                              "the end of %s is not known: %s", topic,
                              rd_kafka_err2str(e));
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 200);
        if (m) {
            rp_fold_message(s, m, pos);
            rd_kafka_message_destroy(m);
        }
    }
    while (*pos < hi && hi > lo) {
        if (evl_now_ms() > deadline || evl_lifecycle_stopping())
            return evl_seterr(err, errlen, EVL_ETRANSIENT,
                              "%s not read to its end (%lld) within %d ms "
                              "(a transaction still open?)",
                              topic, (long long)hi, timeout_ms);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 100);
        if (!m)
            continue;
        rp_fold_message(s, m, pos);
        rd_kafka_message_destroy(m);
    }
    return EVL_OK;
}

evl_err rp_fold(rd_kafka_t *reader, const char *topic, rp_set *s, int64_t *pos,
                int timeout_ms, char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t e = rd_kafka_assign(reader, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e)
        return evl_seterr(err, errlen, EVL_ETRANSIENT, "assigning %s: %s",
                          topic, rd_kafka_err2str(e));
    rp_set_free(s);
    rp_set_init(s);
    *pos = 0;
    return rp_drain(reader, topic, s, pos, timeout_ms, err, errlen);
}

void rp_poll(rd_kafka_t *reader, rp_set *s, int64_t *pos)
{
    rd_kafka_message_t *m;
    while ((m = rd_kafka_consumer_poll(reader, 0)) != NULL) {
        rp_fold_message(s, m, pos);
        rd_kafka_message_destroy(m);
    }
}
