/*
 * cmd_restore.c - the command side's partitions (cmdproc_int.h). The store
 * holds the states of the aggregates of the partitions the consumer is
 * assigned, and only those: on assignment the committed offsets are
 * fetched first (stable: once no earlier owner's transaction is pending,
 * nothing more can reach the state topic), then the states are read from
 * {type}.state up to its end, then the partitions are consumed; on
 * revocation the transaction in flight settles and everything else is
 * dropped.
 */
#include <stdio.h>
#include <string.h>

#include "cmdproc_int.h"
#include "lag.h"
#include "lifecycle.h"
#include "log.h"

/* A restore in progress: the state partitions read (an element's err is
 * NO_ERROR while it is read, _PARTITION_EOF once done, _BAD_MSG when a
 * record was unreadable), what is left, and the unreadable ones. */
typedef struct restore {
    cmdproc *cp;
    rd_kafka_topic_partition_list_t *l, **bad;
    long records;
    int remaining;
    long long last_pending;
} restore;

/* The end of a state partition: done, unless a transaction is pending. */
static void restore_eof(restore *r, const rd_kafka_message_t *m)
{
    const char *topic = rd_kafka_topic_name(m->rkt);
    rd_kafka_topic_partition_t *p =
        rd_kafka_topic_partition_list_find(r->l, topic, m->partition);
    int64_t lo = -1, hi = -1;
    rd_kafka_get_watermark_offsets(r->cp->restorer, topic, m->partition, &lo,
                                   &hi);
    /* read_committed stops at the last stable offset: a transaction still
     * open there (a dead owner's, until its timeout; a committed one whose
     * markers are still being written) hides what follows it, possibly
     * snapshots of a later owner. The end counts only when nothing is
     * pending. */
    if (p && p->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->offset < hi) {
        if (evl_now_ms() - r->last_pending > 5000) {
            char at[64];
            r->last_pending = evl_now_ms();
            snprintf(at, sizeof at, "%s[%d] at %lld of %lld", topic,
                     (int)m->partition, (long long)m->offset, (long long)hi);
            evl_log(EVL_LOG_INFO,
                    "restoring states: waiting for a pending transaction on "
                    "a state partition",
                    "partition", at, NULL);
        }
    } else if (p && p->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        p->err = RD_KAFKA_RESP_ERR__PARTITION_EOF; /* done */
        r->remaining--;
    }
}

/* A state record into the store. One the store cannot read ends its
 * partition's restore: see restore_states. */
static void restore_record(restore *r, const rd_kafka_message_t *m)
{
    cmdproc *cp = r->cp;
    char err[EVL_ERRLEN], at[320], off[32];
    agtype *t = cmd_type_by_state(cp, rd_kafka_topic_name(m->rkt));
    rd_kafka_topic_partition_t *p =
        t ? rd_kafka_topic_partition_list_find(r->l, t->state, m->partition)
          : NULL;
    r->records++;
    if (!p || p->err != RD_KAFKA_RESP_ERR_NO_ERROR ||
        evl_store_restore(cp->store, t->type, m->partition, m->key, m->key_len,
                          m->payload, m->payload ? m->len : 0, err,
                          sizeof err) == EVL_OK)
        return;
    snprintf(at, sizeof at, "%s[%d]", t->state, (int)m->partition);
    snprintf(off, sizeof off, "%lld", (long long)m->offset);
    evl_log(EVL_LOG_ERROR,
            "unreadable state record: this partition's commands are not "
            "processed until it is fixed (produce a valid snapshot or a "
            "tombstone for the key, then restart)",
            "partition", at, "offset", off, "error", err, NULL);
    p->err = RD_KAFKA_RESP_ERR__BAD_MSG; /* done, and bad */
    r->remaining--;
    evl_store_drop(cp->store, t->type, m->partition);
    if (!*r->bad)
        *r->bad = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(*r->bad, t->commands, m->partition);
}

static void log_restored(cmdproc *cp, long records, long long t0)
{
    char ms[32], nrec[32], naggs[32];
    snprintf(ms, sizeof ms, "%lld", evl_now_ms() - t0);
    snprintf(nrec, sizeof nrec, "%ld", records);
    snprintf(naggs, sizeof naggs, "%zu", evl_store_count(cp->store, NULL, -1));
    evl_log(EVL_LOG_INFO, "states restored", "records", nrec, "aggregates",
            naggs, "ms", ms, NULL);
}

/* Read the state partitions of parts (commands-topic partitions) from the
 * beginning to their end into the store. A record the store cannot read
 * stops its partition's restore: that partition's aggregates are dropped
 * and its commands partition is added to *bad (created on first use), so
 * the caller leaves it unconsumed rather than run its aggregates from an
 * older state. Returns 0, or -1 when stopped. */
static int restore_states(cmdproc *cp,
                          const rd_kafka_topic_partition_list_t *parts,
                          rd_kafka_topic_partition_list_t **bad)
{
    restore r = {cp, rd_kafka_topic_partition_list_new(parts->cnt), bad, 0, 0,
                 0};
    long long t0 = evl_now_ms(), last_log = t0;
    int rc = 0;

    for (int i = 0; i < parts->cnt; i++) {
        agtype *t = cmd_type_by_commands(cp, parts->elems[i].topic);
        if (t)
            rd_kafka_topic_partition_list_add(r.l, t->state,
                                              parts->elems[i].partition)
                ->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    if ((r.remaining = r.l->cnt) == 0)
        goto out;
    rd_kafka_assign(cp->restorer, r.l);
    while (r.remaining > 0) {
        rd_kafka_message_t *m;
        if (evl_lifecycle_stopping()) {
            rc = -1;
            break;
        }
        if (evl_now_ms() - last_log > 10000) {
            last_log = evl_now_ms();
            evl_logf(EVL_LOG_INFO,
                     "restoring states: %ld records read, %d partitions to "
                     "go",
                     r.records, r.remaining);
        }
        if (!(m = rd_kafka_consumer_poll(cp->restorer, 200)))
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            restore_eof(&r, m);
        else if (m->err)
            evl_log(EVL_LOG_WARN, "reading a state topic failed; retrying",
                    "error", rd_kafka_message_errstr(m), NULL);
        else
            restore_record(&r, m);
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(cp->restorer, NULL);
    if (rc == 0)
        log_restored(cp, r.records, t0);
out:
    rd_kafka_topic_partition_list_destroy(r.l);
    return rc;
}

/* The committed offsets of parts, once no transaction is pending on them
 * (require_stable: librdkafka asks so under read_committed). */
static rd_kafka_topic_partition_list_t *
committed_offsets(cmdproc *cp, const rd_kafka_topic_partition_list_t *parts)
{
    for (int attempt = 0;; attempt++) {
        rd_kafka_topic_partition_list_t *l =
            rd_kafka_topic_partition_list_copy(parts);
        rd_kafka_resp_err_t rerr = rd_kafka_committed(cp->consumer, l, 10000);
        int unstable = 0;
        for (int i = 0; !rerr && i < l->cnt; i++)
            if (l->elems[i].err == RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT)
                unstable = 1;
        if (!rerr && !unstable)
            return l;
        rd_kafka_topic_partition_list_destroy(l);
        if (evl_lifecycle_stopping())
            return NULL;
        if (attempt % 25 == 0) /* every 5 s */
            evl_log(EVL_LOG_WARN, "waiting for the committed offsets", "error",
                    rerr ? rd_kafka_err2str(rerr)
                         : "a transaction of the previous owner is still "
                           "pending (it ends by its commit, abort or "
                           "transaction.timeout.ms)",
                    NULL);
        cmd_sleep_ms(200);
    }
}

static void log_partitions(const char *msg,
                           const rd_kafka_topic_partition_list_t *parts)
{
    char list[1024];
    size_t len = 0;
    list[0] = '\0';
    for (int i = 0; i < parts->cnt && len < sizeof list - 64; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s[%d]",
                                i ? "," : "", parts->elems[i].topic,
                                (int)parts->elems[i].partition);
    evl_log(EVL_LOG_INFO, msg, "partitions", list, NULL);
}

/* Take parts (commands partitions) for consumer rk: their committed
 * offsets, then their states into the store (empty for them), then assign
 * them from those offsets. From the rebalance callback, and from recover()
 * for the partitions the consumer still holds. */
void cmd_take_partitions(cmdproc *cp, rd_kafka_t *rk,
                         const rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_topic_partition_list_t *offsets;
    evl_pipeline_ready(&cp->pl, 0, "restoring states");
    /* offsets first: once they are stable, no earlier owner's
     * transaction can still add to the state topic */
    rd_kafka_topic_partition_list_t *bad = NULL;
    offsets = committed_offsets(cp, parts);
    if (!offsets || restore_states(cp, parts, &bad) != 0) {
        if (offsets)
            rd_kafka_topic_partition_list_destroy(offsets);
        if (bad)
            rd_kafka_topic_partition_list_destroy(bad);
        evl_store_drop(cp->store, NULL, -1);
        rd_kafka_assign(rk, NULL); /* stopping: consume nothing */
        return;
    }
    if (bad) { /* held, but not consumed: see restore_states */
        char why[600];
        size_t len = (size_t)snprintf(why, sizeof why,
                                      "unreadable state record; not "
                                      "consuming");
        for (int i = 0; i < bad->cnt; i++) {
            rd_kafka_topic_partition_list_del(offsets, bad->elems[i].topic,
                                              bad->elems[i].partition);
            if (len < sizeof why - 1)
                len += (size_t)snprintf(why + len, sizeof why - len, " %s[%d]",
                                        bad->elems[i].topic,
                                        (int)bad->elems[i].partition);
        }
        rd_kafka_assign(rk, offsets);
        evl_pipeline_ready(&cp->pl, 0, why);
        rd_kafka_topic_partition_list_destroy(bad);
    } else {
        rd_kafka_assign(rk, offsets);
        evl_pipeline_ready(&cp->pl, 1, NULL);
    }
    rd_kafka_topic_partition_list_destroy(offsets);
    cmd_store_gauges(cp);
}

void cmd_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t rerr,
                      rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    cmdproc *cp = opaque;
    evl_lag_held(cp->cfg->cmd.group_id, rk,
                 rerr == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? parts->cnt : 0);
    if (rerr == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        evl_pipeline_assigned(&cp->pl);
        log_partitions("partitions assigned", parts);
        cmd_take_partitions(cp, rk, parts);
        return;
    }
    evl_pipeline_ready(&cp->pl, 0, "rebalancing: partitions revoked");
    evl_pipeline_waiting(&cp->pl);
    if (rerr == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        log_partitions("partitions revoked", parts);
    else
        evl_log(EVL_LOG_WARN, "rebalance error", "error",
                rd_kafka_err2str(rerr), NULL);
    /* the transaction in flight ends first (its commit or abort); what was
     * decided after it is dropped unbegun */
    cp->revokes++;
    cmd_settle(cp, 0);
    cmd_abort_open(cp);
    cmd_batch_clear(cp);
    cmd_discard_decided(cp);
    evl_store_drop(cp->store, NULL, -1);
    cmd_store_gauges(cp);
    rd_kafka_assign(rk, NULL);
}

/* librdkafka's statistics callback, used as a clock only: it runs from
 * rd_kafka_consumer_poll every statistics.interval.ms, also while the
 * consumer waits for an assignment, and says why it waits (kafka.h). */
int cmd_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    cmdproc *cp = opaque;
    (void)json;
    (void)len;
    (void)rk;
    evl_pipeline_wait_check(&cp->pl);
    return 0; /* librdkafka frees json */
}
