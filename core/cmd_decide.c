/*
 * cmd_decide.c - deciding commands (cmdproc_int.h): each command of a
 * batch, in order, is parsed and checked, run through its aggregate's
 * handle (Lua) on the state from the store, and its records (events,
 * result; the snapshots once per batch) are queued in cp->out with their
 * bytes in cp->arena. Nothing is sent here, so the Kafka transaction never
 * waits for Lua (cmd_commit.c sends).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdproc_int.h"
#include "log.h"
#include "luaapi.h"

/* The records of a batch are built in an evl_buf that is reused (len = 0)
 * from one transaction to the next. One that grew past ARENA_KEEP (a
 * batch of large events or snapshots) is freed instead, once its
 * transaction committed, so a burst does not pin its high-water mark for
 * the rest of the process. */
#define ARENA_KEEP (4u << 20)

void cmd_arena_release(evl_buf *b)
{
    if (b->cap > ARENA_KEEP)
        evl_buf_free(b);
    b->len = 0;
}

static size_t arena_put(cmdproc *cp, const void *p, size_t n)
{
    size_t off = cp->arena.len;
    evl_buf_put(&cp->arena, p, n);
    return off;
}

static size_t arena_str(cmdproc *cp, const char *s)
{
    size_t off = arena_put(cp, s, strlen(s));
    evl_buf_putc(&cp->arena, '\0');
    return off;
}

static outmsg *out_new(cmdproc *cp)
{
    outmsg *o;
    if (cp->nout == cp->capout) {
        cp->capout = cp->capout ? 2 * cp->capout : 1024;
        cp->out = evl_xrealloc(cp->out, sizeof *cp->out * cp->capout);
    }
    o = &cp->out[cp->nout++];
    memset(o, 0, sizeof *o);
    o->evtype = SIZE_MAX;
    return o;
}

/* Queue the result of the command in rkm. ids: offsets of event ids in
 * the arena. */
static void queue_result(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                         const char *status, const char *aggregate_id,
                         long long version, const size_t *ids, size_t nids,
                         const char *error)
{
    const char *evs[64], *tys[64];
    const char **ev = nids <= 64 ? evs : evl_xmalloc(sizeof *ev * nids);
    const char **ty = nids <= 64 ? tys : evl_xmalloc(sizeof *ty * nids);
    outmsg *o;
    evl_envelope_result_in r;

    /* an accepted command's events are those of the decision (ids given) */
    for (size_t i = 0; i < nids; i++) {
        ev[i] = cp->arena.data + ids[i];
        ty[i] = cp->dec.events[i].type;
    }
    r = (evl_envelope_result_in){
        cp->cmd.id, status, aggregate_id, version,
        ev,         nids,   error,        nids ? ty : NULL};
    /* build in a scratch buffer (the arena is where ev points into) */
    evl_buf tmp = {0};
    evl_envelope_result(&tmp, &r);
    if (ev != evs)
        free(ev);
    if (ty != tys)
        free(ty);

    o = out_new(cp);
    o->t = t;
    o->kind = OUT_RESULTS;
    o->partition = rkm->partition;
    o->agtype = t->type;
    o->status = status;
    if (aggregate_id) {
        o->keylen = strlen(aggregate_id);
        o->key = arena_put(cp, aggregate_id, o->keylen);
    } else if (rkm->key) {
        o->keylen = rkm->key_len;
        o->key = arena_put(cp, rkm->key, rkm->key_len);
    } else {
        o->key = SIZE_MAX;
    }
    o->vallen = tmp.len;
    o->val = arena_put(cp, tmp.data, tmp.len);
    evl_buf_free(&tmp);

    for (int k = 0; k < 4; k++)
        if (strcmp(status, cmd_outcome_names[k]) == 0)
            t->pending[k]++;
}

static void reject(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                   long long version, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

static void reject(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                   long long version, const char *fmt, ...)
{
    char msg[EVL_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    queue_result(cp, t, rkm, "rejected", cp->cmd.aggregate_id, version, NULL, 0,
                 msg);
}

static void fail(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                 long long version, const char *msg)
{
    evl_log(EVL_LOG_WARN, "command failed", "aggregate_type", t->type,
            "aggregate_id", cp->cmd.aggregate_id, "command_id", cp->cmd.id,
            "error", msg, NULL);
    queue_result(cp, t, rkm, "failed", cp->cmd.aggregate_id, version, NULL, 0,
                 msg);
}

/* Would a snapshot of this state (plus ids) fit in a record? */
static size_t snapshot_estimate(const evl_store_agg *a, size_t state_len,
                                int dedup)
{
    return state_len + (size_t)dedup * (EVL_ENVELOPE_MAX_ID * 2 + 3) + 4096 +
           (a ? strlen(evl_store_id(a)) : 0);
}

/* Parse the command in rkm into cp->cmd and check what the command side
 * requires of it (its type, key and partition). Returns 1 when it may be
 * decided (*host_full: it did not fit the host's memory limit, memerr
 * says why), else 0 with its result queued. */
static int check_command(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                         int *host_full, char *memerr, size_t memerrlen)
{
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    const char *payload = rkm->payload ? rkm->payload : "";
    size_t len = rkm->payload ? rkm->len : 0;
    evl_command *c = &cp->cmd;
    char err[EVL_ERRLEN];
    int32_t home;

    /* decoded once, in the host's state, for the checks here and for
     * handle in decide */
    switch (
        evl_luahost_parse_command(cp->host, payload, len, c, err, sizeof err)) {
    case EVL_LUAHOST_ACCEPTED: break;
    case EVL_LUAHOST_REJECTED: reject(cp, t, rkm, -1, "%s", err); return 0;
    case EVL_LUAHOST_FAILED:
        /* the decoded command does not fit the host's memory limit: read
         * it in the scratch state for the checks below; deciding it then
         * fails, with the aggregate's version */
        snprintf(memerr, memerrlen, "%s", err);
        *host_full = 1;
        if (evl_envelope_parse_command(cp->L, payload, len, c, err,
                                       sizeof err) != EVL_OK) {
            reject(cp, t, rkm, -1, "%s", err);
            return 0;
        }
        break;
    }
    if (c->aggregate_type && strcmp(c->aggregate_type, t->type) != 0) {
        if (evl_luahost_aggregate_get(cp->host, c->aggregate_type))
            reject(cp, t, rkm, -1,
                   "a command for aggregate type %s arrived on %s (send it "
                   "to the commands topic of %s)",
                   c->aggregate_type, topic, c->aggregate_type);
        else
            reject(cp, t, rkm, -1, "unknown aggregate type %s",
                   c->aggregate_type);
        return 0;
    }
    if (!rkm->key) {
        reject(cp, t, rkm, -1,
               "the command has no Kafka key: key commands by their "
               "aggregate_id");
        return 0;
    }
    if (rkm->key_len != strlen(c->aggregate_id) ||
        memcmp(rkm->key, c->aggregate_id, rkm->key_len) != 0) {
        reject(cp, t, rkm, -1,
               "the command's Kafka key differs from its aggregate_id %s: "
               "key commands by their aggregate_id",
               c->aggregate_id);
        return 0;
    }
    home = evl_kafka_murmur2_partition(rkm->key, rkm->key_len, t->partitions);
    if (home != rkm->partition) {
        reject(cp, t, rkm, -1,
               "aggregate %s belongs to partition %d of %s (murmur2) but its "
               "command came on partition %d: produce commands with the "
               "murmur2 partitioner (Java's default; librdkafka's "
               "murmur2_random)",
               c->aggregate_id, (int)home, topic, (int)rkm->partition);
        return 0;
    }
    return 1;
}

/* Queue the event records of the decision in cp->dec for the command in
 * rkm on aggregate a at version, their ids into cp->event_ids. All or
 * nothing: returns 1, or 0 (nothing queued) when a record would not fit
 * message.max.bytes, with the command's failure queued. */
static int queue_events(cmdproc *cp, agtype *t, const rd_kafka_message_t *rkm,
                        const evl_store_agg *a, long long version)
{
    evl_command *c = &cp->cmd;
    size_t n = cp->dec.nevents, first_out = cp->nout,
           arena_mark = cp->arena.len;
    char occurred_at[25], msg[EVL_ERRLEN];
    const char *correlation = c->correlation_id ? c->correlation_id : c->id;
    evl_luaapi_now(occurred_at);
    if (n > cp->capids) {
        cp->capids = n;
        cp->event_ids = evl_xrealloc(cp->event_ids, sizeof(size_t) * n);
    }
    if (snapshot_estimate(a, cp->dec.state_len, cp->cfg->cmd.dedup_ids) >
        cp->max_message) {
        snprintf(msg, sizeof msg,
                 "the state of aggregate %s after this command is %zu bytes: "
                 "its snapshot would not fit message.max.bytes (%zu)",
                 c->aggregate_id, cp->dec.state_len, cp->max_message);
        fail(cp, t, rkm, version, msg);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        const evl_luahost_event *ev = &cp->dec.events[i];
        char id[37];
        evl_buf tmp = {0};
        if (evl_luaapi_uuid7(id) != 0) {
            /* getrandom failing is not something to go on with */
            evl_log(EVL_LOG_ERROR, "cannot generate an event id", NULL);
            abort();
        }
        evl_envelope_event_in in = {
            id,          ev->type,        ev->version,
            t->type,     c->aggregate_id, version + (long long)i + 1,
            occurred_at, c->id,           correlation,
            c->user_id,  ev->data,        ev->data_len};
        evl_envelope_event(&tmp, &in);
        if (tmp.len + strlen(c->aggregate_id) + RECORD_OVERHEAD >
            cp->max_message) {
            snprintf(msg, sizeof msg,
                     "event %zu (%s) is %zu bytes: more than "
                     "message.max.bytes (%zu) allows",
                     i + 1, ev->type, tmp.len, cp->max_message);
            evl_buf_free(&tmp);
            cp->nout = first_out;
            cp->arena.len = arena_mark;
            fail(cp, t, rkm, version, msg);
            return 0;
        }
        outmsg *o = out_new(cp);
        o->t = t;
        o->kind = OUT_EVENTS;
        o->partition = rkm->partition;
        o->agtype = t->type;
        o->keylen = strlen(c->aggregate_id);
        o->key = arena_put(cp, c->aggregate_id, o->keylen);
        o->vallen = tmp.len;
        o->val = arena_put(cp, tmp.data, tmp.len);
        o->evtype = arena_str(cp, ev->type);
        cp->event_ids[i] = arena_str(cp, id);
        evl_buf_free(&tmp);
    }
    return 1;
}

/* Decide the command in rkm: its result (and events, and the store's
 * update) queued for the batch's transaction. */
static void decide(cmdproc *cp, const rd_kafka_message_t *rkm)
{
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    agtype *t = cmd_type_by_commands(cp, topic);
    evl_command *c = &cp->cmd;
    char err[EVL_ERRLEN], memerr[EVL_ERRLEN];
    int host_full = 0;
    evl_store_agg *a;
    long long version;
    size_t state_len, n;

    if (!t) { /* cannot happen: we subscribe only to our topics */
        evl_log(EVL_LOG_ERROR, "a message from an unknown topic", "topic",
                topic, NULL);
        return;
    }
    if (!check_command(cp, t, rkm, &host_full, memerr, sizeof memerr))
        return;
    a = evl_store_get(cp->store, t->type, rkm->partition, c->aggregate_id);
    version = evl_store_version(a);
    if (evl_store_seen(a, c->id)) {
        queue_result(cp, t, rkm, "duplicate", c->aggregate_id, version, NULL, 0,
                     NULL);
        return;
    }
    if (c->has_expected_version && c->expected_version != version) {
        reject(cp, t, rkm, version,
               "expected version %lld, but aggregate %s is at version %lld",
               c->expected_version, c->aggregate_id, version);
        return;
    }
    if (host_full) {
        fail(cp, t, rkm, version, memerr);
        return;
    }
    const char *state = evl_store_state(a, &state_len);
    evl_luahost_command lc = {
        t->type, c->aggregate_id, version, state, state_len, NULL, 0};
    double h0 = cmd_now_s();
    int verdict = evl_luahost_decide(cp->host, &lc, &cp->dec, err, sizeof err);
    cp->lua_s += cmd_now_s() - h0;
    switch (verdict) {
    case EVL_LUAHOST_REJECTED: reject(cp, t, rkm, version, "%s", err); return;
    case EVL_LUAHOST_FAILED: fail(cp, t, rkm, version, err); return;
    case EVL_LUAHOST_ACCEPTED: break;
    }
    if (!queue_events(cp, t, rkm, a, version))
        return;
    n = cp->dec.nevents;
    evl_store_put(cp->store, t->type, rkm->partition, c->aggregate_id,
                  cp->dec.state, cp->dec.state_len, version + (long long)n,
                  c->id);
    t->pending_events += (long long)n;
    queue_result(cp, t, rkm, "accepted", c->aggregate_id,
                 version + (long long)n, cp->event_ids, n, NULL);
}

/* Queue one snapshot per aggregate the batch touched. */
void cmd_queue_snapshots(cmdproc *cp)
{
    size_t n = evl_store_ntouched(cp->store);
    for (size_t i = 0; i < n; i++) {
        const char *type;
        int32_t partition;
        const evl_store_agg *a =
            evl_store_touched(cp->store, i, &type, &partition);
        agtype *t = NULL;
        for (size_t k = 0; k < cp->ntypes; k++)
            if (strcmp(cp->types[k].type, type) == 0)
                t = &cp->types[k];
        if (!t)
            continue;
        outmsg *o = out_new(cp);
        o->t = t;
        o->kind = OUT_STATE;
        o->partition = partition;
        o->agtype = t->type;
        o->keylen = strlen(evl_store_id(a));
        o->key = arena_put(cp, evl_store_id(a), o->keylen);
        o->val = cp->arena.len;
        evl_store_snapshot(a, type, &cp->arena);
        o->vallen = cp->arena.len - o->val;
    }
}

int cmd_decided_enough(const cmdproc *cp)
{
    return cp->ndec >= (size_t)cp->cfg->cmd.batch_size ||
           (cp->ndec > 0 && evl_now_ms() - cp->dec_t0 > DECIDE_BUDGET_MS);
}

void cmd_decide_more(cmdproc *cp)
{
    while (cp->fl_n + cp->ndec < cp->nbatch && !cmd_decided_enough(cp)) {
        if (cp->ndec == 0) {
            cp->dec_t0 = evl_now_ms();
            cp->lua_s = 0;
            evl_store_begin(cp->store); /* open already while in flight */
        }
        decide(cp, cp->batch[cp->fl_n + cp->ndec]);
        cp->ndec++;
    }
}
