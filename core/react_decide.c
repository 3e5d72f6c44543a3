/*
 * react_decide.c - deciding a reactor's batch (reactor_int.h): which
 * events react, what they send, what parks; and the operator's requests.
 *
 * Nothing here talks to Kafka: the batch is decided first, into records
 * (commands for T.commands, records for the parked topic), and only then
 * does reactor.c begin the transaction that writes them, so however slow
 * a reaction is it never stretches a transaction.
 *
 * Order per source aggregate is what parking protects: the events of one
 * source aggregate are on one partition, so they arrive in order, and
 * once one is parked every later one is parked behind it (the parked set
 * is folded ahead of the commit so the rest of the batch sees it). A
 * request is acted on before the batch's events, which came later in the
 * log than the events the request releases.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "reactor_int.h"

/* Append a record (key, value) of kind to the batch's records. */
static void queue(reactor *r, int kind, const char *key, size_t keylen,
                  const char *val, size_t vallen)
{
    if (r->nout == r->capout) {
        r->capout = r->capout ? 2 * r->capout : 256;
        r->out = evl_xrealloc(r->out, sizeof *r->out * r->capout);
    }
    rx_out *o = &r->out[r->nout++];
    o->kind = kind;
    o->key = r->arena.len;
    o->keylen = keylen;
    evl_buf_put(&r->arena, key, keylen);
    o->val = r->arena.len;
    o->vallen = vallen;
    evl_buf_put(&r->arena, val, vallen);
}

/* Queue a record of the parked topic (in r->scratch) keyed by the source
 * aggregate, and fold it into the parked set now. */
static void queue_parked(reactor *r, const char *atype, const char *aid)
{
    char key[2048], err[EVL_ERRLEN];
    int n = snprintf(key, sizeof key, "%s/%s", atype, aid);
    if (n < 0 || (size_t)n >= sizeof key)
        n = (int)sizeof key - 1;
    queue(r, OUT_PARKED, key, (size_t)n, r->scratch.data, r->scratch.len);
    if (rp_apply(&r->parked, r->scratch.data, r->scratch.len, err,
                 sizeof err) != 0)
        evl_log(EVL_LOG_ERROR, "cannot fold a record the reactor wrote",
                "error", err, NULL);
}

/* Run the reaction to event; queue its commands. Returns 0, or -1 with
 * the reason in err. */
static int react_one(reactor *r, const char *event, size_t len, char *err,
                     size_t errlen)
{
    if (evl_luahost_react(r->host, r->type, event, len,
                          (size_t)r->cfg->react.max_commands, &r->rs, err,
                          errlen) != EVL_OK)
        return -1;
    /* a record the broker refuses would abort every try of the batch */
    for (size_t i = 0; i < r->rs.n; i++)
        if (r->rs.cmds[i].len + strlen(r->rs.cmds[i].aggregate_id) +
                RX_RECORD_OVERHEAD >
            r->max_message) {
            snprintf(err, errlen,
                     "command %zu is %zu bytes, more than the producer's "
                     "message.max.bytes (%zu) allows",
                     i + 1, r->rs.cmds[i].len, r->max_message);
            return -1;
        }
    for (size_t i = 0; i < r->rs.n; i++) {
        const evl_luahost_reaction *c = &r->rs.cmds[i];
        queue(r, OUT_COMMAND, c->aggregate_id, strlen(c->aggregate_id), c->json,
              c->len);
    }
    r->pending_cmds += (long long)r->rs.n;
    r->pending[r->rs.n ? RX_REACTED : RX_NONE]++;
    return 0;
}

static void park(reactor *r, const rd_kafka_message_t *m, const char *atype,
                 const char *aid, const char *error)
{
    /* an event too large to carry is kept as null (its source offset
     * still says where it is) */
    int fits = m->payload && m->len + 2 * RX_RECORD_OVERHEAD < r->max_message;
    r->scratch.len = 0;
    rp_record_parked(&r->scratch, r->type, atype, aid,
                     rd_kafka_topic_name(m->rkt), m->partition, m->offset,
                     fits ? (const char *)m->payload : "null",
                     fits ? m->len : 4, error);
    queue_parked(r, atype, aid);
    r->pending[RX_PARKED]++;
}

/* The event's type, aggregate type and id: from the headers evlua writes
 * (and the key), else from the JSON. Returns 0, or -1 (not an event). */
static int event_names(reactor *r, const rd_kafka_message_t *m, char *etype,
                       char *atype, char *aid, size_t n)
{
    evl_json_member f[3] = {
        {.name = "type"}, {.name = "aggregate_type"}, {.name = "aggregate_id"}};
    char err[EVL_ERRLEN];
    int obj = 0;
    if (evl_kafka_header(m, "evlua-type", etype, n) &&
        evl_kafka_header(m, "evlua-aggregate-type", atype, n) && m->key &&
        m->key_len < n) {
        memcpy(aid, m->key, m->key_len);
        aid[m->key_len] = '\0';
        return 0;
    }
    if (!m->payload ||
        evl_json_members(m->payload, m->len, f, 3, &r->scratch, &obj, err,
                         sizeof err) != EVL_OK ||
        !obj || f[0].type != EVL_JSON_STRING || f[1].type != EVL_JSON_STRING ||
        f[2].type != EVL_JSON_STRING)
        return -1;
    snprintf(etype, n, "%s", r->scratch.data + f[0].off);
    snprintf(atype, n, "%s", r->scratch.data + f[1].off);
    snprintf(aid, n, "%s", r->scratch.data + f[2].off);
    return 0;
}

/* Was this event of a parked aggregate parked before (a replay)? */
static int parked_before(const rp_agg *a, const rd_kafka_message_t *m)
{
    const rp_event *last = &a->v[a->n - 1];
    return last->partition == m->partition && last->offset >= m->offset &&
           strcmp(last->topic, rd_kafka_topic_name(m->rkt)) == 0;
}

static void decide_event(reactor *r, const rd_kafka_message_t *m)
{
    char etype[EVL_ENVELOPE_MAX_AGGREGATE_ID + 1],
        atype[EVL_ENVELOPE_MAX_AGGREGATE_ID + 1],
        aid[EVL_ENVELOPE_MAX_AGGREGATE_ID + 1];
    char err[EVL_ERRLEN], where[400];
    const evl_luahost_aggregate *self =
        evl_luahost_aggregate_get(r->host, r->type);
    snprintf(where, sizeof where, "%s[%d]@%lld", rd_kafka_topic_name(m->rkt),
             (int)m->partition, (long long)m->offset);
    if (event_names(r, m, etype, atype, aid, sizeof etype) != 0) {
        evl_log(EVL_LOG_WARN,
                "skipping a record that is not an event (no evlua headers, "
                "no type/aggregate_type/aggregate_id strings)",
                "reaction", r->type, "record", where, NULL);
        return;
    }
    if (!self || !evl_luahost_reacts_to(self, atype, etype))
        return; /* no reaction: the offset advances */
    rp_agg *a = rp_find(&r->parked, atype, aid);
    if (a && a->drop_topic && a->drop_partition == m->partition &&
        m->offset <= a->drop_offset &&
        strcmp(a->drop_topic, rd_kafka_topic_name(m->rkt)) == 0)
        return; /* dropped by the operator: a replay does not park it */
    if (a && a->n > 0) {
        if (parked_before(a, m))
            return;
        snprintf(err, sizeof err,
                 "parked behind %.200s[%d]@%lld, the first parked event of "
                 "this aggregate",
                 a->v[0].topic, (int)a->v[0].partition,
                 (long long)a->v[0].offset);
        park(r, m, atype, aid, err);
        return;
    }
    if (react_one(r, m->payload, m->len, err, sizeof err) == 0)
        return;
    if (strcmp(r->cfg->react.on_error, "halt") == 0) {
        evl_log(EVL_LOG_ERROR,
                "reaction failed; reactions.on_error = halt: stopping, the "
                "batch not committed",
                "reaction", r->type, "event", where, "aggregate_type", atype,
                "aggregate_id", aid, "error", err, NULL);
        r->halt = 1;
        return;
    }
    evl_log(EVL_LOG_WARN, "reaction failed; its source aggregate is parked",
            "reaction", r->type, "event", where, "aggregate_type", atype,
            "aggregate_id", aid, "error", err, NULL);
    park(r, m, atype, aid, err);
}

/* ---- requests ----------------------------------------------------------- */

int rx_requests_due(const reactor *r)
{
    for (size_t i = 0; i < r->parked.nreqs; i++)
        if (rx_holds(r, r->parked.reqs[i].atype, r->parked.reqs[i].aid))
            return 1;
    return 0;
}

/* Retry: re-run a's events in order until one fails; into rel. */
static void retry(reactor *r, const rp_agg *a, rp_released *rel, char *err,
                  size_t errlen)
{
    for (size_t k = 0; k < a->n; k++) {
        const rp_event *e = &a->v[k];
        if (!e->event) {
            snprintf(err, errlen, "the parked record holds no event");
            rel->error = err;
            return;
        }
        if (react_one(r, e->event, e->len, err, errlen) != 0) {
            rel->error = err;
            return;
        }
        rel->applied++;
        rel->through = e;
    }
}

/* Act on request q: queue the released record (and a retry's commands). */
static void act(reactor *r, const rp_request *q)
{
    const rp_agg *a = rp_find(&r->parked, q->atype, q->aid);
    rp_released rel = {.atype = q->atype, .aid = q->aid, .request_id = q->id};
    char err[EVL_ERRLEN], n[32];
    if (!a || a->n == 0)
        rel.error = "nothing is parked for this aggregate";
    else if (strcmp(q->kind, "drop") == 0) {
        rel.dropped = (long long)a->n;
        rel.through = &a->v[a->n - 1];
    } else {
        retry(r, a, &rel, err, sizeof err);
    }
    r->scratch.len = 0;
    rp_record_released(&r->scratch, r->type, &rel);
    snprintf(n, sizeof n, "%lld", rel.applied + rel.dropped);
    evl_log(strcmp(q->kind, "drop") == 0 ? EVL_LOG_WARN : EVL_LOG_INFO,
            strcmp(q->kind, "drop") == 0 ? "parked reactions dropped"
                                         : "parked reactions retried",
            "reaction", r->type, "aggregate_type", q->atype, "aggregate_id",
            q->aid, "request_id", q->id, "events", n, "error", rel.error, NULL);
    char *atype = evl_xstrdup(q->atype), *aid = evl_xstrdup(q->aid);
    queue_parked(r, atype, aid); /* folds it: q is gone afterwards */
    free(atype);
    free(aid);
}

void rx_decide(reactor *r)
{
    size_t i = 0;
    while (i < r->parked.nreqs) {
        size_t before = r->parked.nreqs;
        const rp_request *q = &r->parked.reqs[i];
        if (!rx_holds(r, q->atype, q->aid)) {
            i++;
            continue;
        }
        act(r, q);
        if (r->parked.nreqs == before)
            i++; /* not folded away (should not happen) */
    }
    for (size_t k = 0; k < r->nbatch && !r->halt; k++)
        decide_event(r, r->batch[k]);
}

void rx_discard(reactor *r)
{
    r->arena.len = 0;
    r->nout = 0;
    memset(r->pending, 0, sizeof r->pending);
    r->pending_cmds = 0;
}
