/*
 * react_admin.c - the operator's side of parked reactions (reactor.h):
 * `evlua parked list|retry|drop --reactions`. Each call folds the parked
 * topic (react_parked.c) with a reader of its own; retry and drop write a
 * request record with an idempotent producer and wait for the answer a
 * running reactor writes (reactor.h says who answers and how).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lifecycle.h"
#include "luaapi.h"
#include "reactor_int.h"

/* ---- the operator's side ------------------------------------------------ */

/* A reader of type's parked topic (into topic) for a CLI command, folded
 * to the end into s. */
static evl_err cli_open(const evl_config *cfg, const char *type, char *topic,
                        size_t tn, rd_kafka_t **reader, rp_set *s, int64_t *pos,
                        char *err, size_t errlen)
{
    char group[300];
    int n = 0;
    evl_err e;
    evl_config_topic(cfg->react.parked_topic, type, topic, tn);
    evl_reactor_group(cfg, type, group, sizeof group);
    strncat(group, ".cli", sizeof group - strlen(group) - 1);
    evl_kafka_client_opts o = {.name = "parked reader",
                               .client_id = "evlua-parked",
                               .group_id = group,
                               .reader = 1};
    if ((e = evl_kafka_consumer_new(cfg, &o, reader, err, errlen)))
        return e;
    if ((e = evl_kafka_partitions(*reader, topic, 10000, &n, err, errlen)))
        return e;
    if (n == 0)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "no topic %s: no reactor of %s has run, so nothing "
                          "of it is parked",
                          topic, type);
    rp_set_init(s);
    return rp_fold(*reader, topic, s, pos, 30000, err, errlen);
}

static void cli_close(rd_kafka_t *reader, rp_set *s)
{
    if (reader) {
        rd_kafka_consumer_close(reader);
        rd_kafka_destroy(reader);
    }
    rp_set_free(s);
}

static void print_agg(FILE *out, const char *type, const rp_agg *a)
{
    const rp_event *f = &a->v[0], *l = &a->v[a->n - 1];
    fprintf(out, "reactions %s %s/%s: %zu event%s, %s[%d]@%lld", type, a->atype,
            a->aid, a->n, a->n == 1 ? "" : "s", f->topic, (int)f->partition,
            (long long)f->offset);
    if (a->n > 1)
        fprintf(out, "..%lld", (long long)l->offset);
    fprintf(out, ", parked since %s\n  error: %s\n", f->at ? f->at : "?",
            f->error ? f->error : "?");
}

evl_err evl_reactor_parked_list(const evl_config *cfg, const char *type,
                                FILE *out, long long *naggregates, char *err,
                                size_t errlen)
{
    char topic[256];
    rd_kafka_t *reader = NULL;
    rp_set s = {0};
    int64_t pos = 0;
    evl_err e = cli_open(cfg, type, topic, sizeof topic, &reader, &s, &pos, err,
                         errlen);
    if (e == EVL_OK) {
        for (size_t b = 0; b < s.nbuckets; b++)
            for (const rp_agg *a = s.buckets[b]; a; a = a->next)
                if (a->n > 0)
                    print_agg(out, type, a);
        for (size_t i = 0; i < s.nreqs; i++)
            fprintf(out,
                    "reactions %s %s/%s: %s requested (%s), no reactor "
                    "has answered yet\n",
                    type, s.reqs[i].atype, s.reqs[i].aid, s.reqs[i].kind,
                    s.reqs[i].id);
        if (naggregates)
            *naggregates = (long long)s.naggs;
    }
    cli_close(reader, &s);
    return e;
}

/* Write the request record (an idempotent producer). */
static evl_err send_request(const evl_config *cfg, const char *topic,
                            const char *kind, const char *src_type,
                            const char *src_id, const char *id, char *err,
                            size_t errlen)
{
    static const char *const required[] = {"enable.idempotence", "true", "acks",
                                           "all", NULL};
    evl_kafka_client_opts o = {.name = "parked request producer",
                               .client_id = "evlua-parked",
                               .required = required};
    rd_kafka_t *rk = NULL;
    evl_buf rec = {0};
    char key[2048];
    evl_err e = evl_kafka_producer_new(cfg, &o, &rk, err, errlen);
    if (e)
        return e;
    rp_record_request(&rec, kind, src_type, src_id, id);
    snprintf(key, sizeof key, "%s/%s", src_type, src_id);
    rd_kafka_resp_err_t pe = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
        RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE(rec.data, rec.len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADER("content-type", "application/json", -1),
        RD_KAFKA_V_END);
    if (pe)
        e = evl_seterr(err, errlen, EVL_ETRANSIENT, "rd_kafka_producev(%s): %s",
                       topic, rd_kafka_err2str(pe));
    else if (rd_kafka_flush(rk, 30000) != RD_KAFKA_RESP_ERR_NO_ERROR ||
             rd_kafka_outq_len(rk) > 0)
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "the request to %s was not delivered in 30 s", topic);
    evl_buf_free(&rec);
    rd_kafka_destroy(rk);
    return e;
}

/* Read the answer to request id into out (folding into s as it goes),
 * until wait_ms passes. */
static void await_answer(rd_kafka_t *reader, rp_set *s, int64_t *pos,
                         const char *id, int wait_ms, evl_reactor_released *out)
{
    long long deadline = evl_now_ms() + wait_ms;
    while (evl_now_ms() < deadline && !evl_lifecycle_stopping()) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 200);
        if (!m)
            continue;
        if (!m->err && m->payload) {
            evl_json_member f[5] = {{.name = "kind"},
                                    {.name = "request_id"},
                                    {.name = "applied"},
                                    {.name = "dropped"},
                                    {.name = "error"}};
            evl_buf scratch = {0};
            int obj = 0;
            char err[EVL_ERRLEN];
            if (evl_json_members(m->payload, m->len, f, 5, &scratch, &obj, err,
                                 sizeof err) == EVL_OK &&
                obj && f[0].type == EVL_JSON_STRING &&
                strcmp(scratch.data + f[0].off, "released") == 0 &&
                f[1].type == EVL_JSON_STRING &&
                strcmp(scratch.data + f[1].off, id) == 0) {
                out->answered = 1;
                out->applied = f[2].isint ? f[2].integer : 0;
                out->dropped = f[3].isint ? f[3].integer : 0;
                if (f[4].type == EVL_JSON_STRING)
                    snprintf(out->error, sizeof out->error, "%s",
                             scratch.data + f[4].off);
            }
            evl_buf_free(&scratch);
        }
        rp_fold_message(s, m, pos);
        rd_kafka_message_destroy(m);
        if (out->answered)
            return;
    }
}

evl_err evl_reactor_parked_request(const evl_config *cfg, const char *type,
                                   const char *kind, const char *src_type,
                                   const char *src_id, int wait_ms,
                                   evl_reactor_released *out, char *err,
                                   size_t errlen)
{
    char topic[256];
    rd_kafka_t *reader = NULL;
    rp_set s = {0};
    int64_t pos = 0;
    memset(out, 0, sizeof *out);
    evl_err e = cli_open(cfg, type, topic, sizeof topic, &reader, &s, &pos, err,
                         errlen);
    if (e)
        goto out;
    const rp_agg *a0 = rp_find(&s, src_type, src_id);
    if (!a0 || a0->n == 0) {
        e = evl_seterr(err, errlen, EVL_EPERMANENT,
                       "nothing of %s/%s is parked in the reactions of %s",
                       src_type, src_id, type);
        goto out;
    }
    evl_luaapi_uuid7(out->request_id);
    if ((e = send_request(cfg, topic, kind, src_type, src_id, out->request_id,
                          err, errlen)))
        goto out;
    await_answer(reader, &s, &pos, out->request_id, wait_ms, out);
    const rp_agg *a = rp_find(&s, src_type, src_id);
    out->remaining = a ? (long long)a->n : 0;
out:
    cli_close(reader, &s);
    return e;
}
