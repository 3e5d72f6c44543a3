/*
 * projector.c - one projection: Kafka -> Lua -> PostgreSQL (see
 * projector.h for the contract): open (setup), the loop (collect, decide,
 * settle) and close, and the threads of a projection. The other rooms of
 * the projector are proj_*.c around projector_int.h, which lists them.
 *
 * A batch lives in three layers, each rebuilt as rarely as it can be:
 *
 *   messages   what the consumer returned (owned until the batch ends);
 *   events     per message of a handled type: partition, aggregate group,
 *              sequence; parsed once per batch (prepare_batch). Marks
 *              made by a permanent failure (park this event, halt this
 *              partition) live here too, so they survive re-runs;
 *   attempt    per try against the database: checkpoints looked up,
 *              every event decided (skip, apply, park, halt), the
 *              handlers run and their statements copied (decide). A
 *              transient error throws the attempt away and makes a new
 *              one on fresh checkpoints.
 *
 * The checkpoint cache maps "type\0id" to the aggregate's checkpoint row
 * as this instance last read or wrote it; every write checks it still
 * holds (evlua_advance_checkpoints), so a stale entry costs a retry, never
 * a double application. It is dropped on every rebalance and every
 * transient error.
 *
 * Rebalances (proj_kafka.c) happen inside rd_kafka_consumer_poll, on
 * this thread: messages collected before one are dropped (they will be
 * fetched again from the DB offsets).
 */
#include "projector_int.h"

#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "kafka.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"

/* ---- small tools --------------------------------------------------------- */

double proj_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep ms milliseconds, waking early for a stop request. Returns 1 when
 * stopping. */
int proj_nap(long ms)
{
    while (ms > 0) {
        if (evl_lifecycle_stopping())
            return 1;
        long step = ms < 50 ? ms : 50;
        struct timespec ts = {0, step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return evl_lifecycle_stopping();
}

/* 100 ms, 200 ms, ... capped at 10 s. */
long proj_backoff_ms(int attempt)
{
    long ms = 100;
    for (int i = 0; i < attempt && ms < 10000; i++)
        ms *= 2;
    return ms < 10000 ? ms : 10000;
}

/* ---- the projector ------------------------------------------------------- */

static const char *const iso_names[] = {"aggregate", "batch", "aggregate-tx"};

/* ---- setup --------------------------------------------------------------- */

/* Run fn until it succeeds, retrying transient failures with backoff.
 * Returns EVL_OK, EVL_EPERMANENT (reason in err) or EVL_ETRANSIENT when a
 * stop request ended the waiting. */
static evl_err with_retry(projector *pj, const char *what,
                          evl_err (*fn)(projector *, char *, size_t), char *err,
                          size_t errlen)
{
    for (int attempt = 0;; attempt++) {
        evl_err e = EVL_OK;
        if (pj->pg && !evl_pg_ok(pj->pg))
            e = evl_pg_reconnect(pj->pg, err, errlen);
        if (e == EVL_OK)
            e = fn(pj, err, errlen);
        if (e != EVL_ETRANSIENT)
            return e;
        long ms = proj_backoff_ms(attempt);
        proj_log_retry(pj, what, err, attempt, ms);
        if (proj_nap(ms))
            return EVL_ETRANSIENT;
    }
}

static evl_err do_connect(projector *pj, char *err, size_t errlen)
{
    char app[128];
    snprintf(app, sizeof app, "evlua projector %.80s", pj->name);
    return evl_pg_open_in(pj->cfg->pg_conninfo, app, pj->opts.schema, &pj->pg,
                          err, errlen);
}

static evl_err do_tables(projector *pj, char *err, size_t errlen)
{
    return evl_pg_create_tables(pj->pg, err, errlen);
}

static evl_err do_schema(projector *pj, char *err, size_t errlen)
{
    for (size_t i = 0; i < pj->proj->nschema; i++) {
        evl_err e =
            evl_pg_exec_locked(pj->pg, pj->proj->schema[i], err, errlen);
        if (e != EVL_OK)
            return e;
    }
    return EVL_OK;
}

static int parse_iso(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, iso_names[i]) == 0)
            return i;
    return -1;
}

/* The scripts and the projection's settings. EVL_OK or EVL_EPERMANENT
 * (logged). */
static evl_err load_settings(projector *pj, const evl_luahost *proto)
{
    char err[EVL_ERRLEN];
    const evl_config *cfg = pj->cfg;

    if (evl_luahost_again(proto, &pj->host, NULL, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "projector cannot load the scripts",
                "projection", pj->name, "error", err, NULL);
        return EVL_EPERMANENT;
    }
    pj->proj = evl_luahost_projection_get(pj->host, pj->name);
    if (!pj->proj) {
        evl_log(EVL_LOG_ERROR, "no projection script has this name",
                "projection", pj->name, NULL);
        return EVL_EPERMANENT;
    }
    evl_projection_cfg pc = evl_config_projection(cfg, pj->name);
    const char *iso = pj->opts.isolation ? pj->opts.isolation : pc.isolation;
    const char *onerr = pj->opts.on_error ? pj->opts.on_error : pc.on_error;
    pj->iso = parse_iso(iso ? iso : "aggregate");
    if (pj->iso < 0) {
        evl_log(EVL_LOG_ERROR,
                "unknown isolation (aggregate, batch or aggregate-tx)",
                "projection", pj->name, "isolation", iso, NULL);
        return EVL_EPERMANENT;
    }
    if (onerr && strcmp(onerr, "park") != 0 && strcmp(onerr, "halt") != 0) {
        evl_log(EVL_LOG_ERROR, "unknown on_error (park or halt)", "projection",
                pj->name, "on_error", onerr, NULL);
        return EVL_EPERMANENT;
    }
    pj->halt = onerr && strcmp(onerr, "halt") == 0;
    pj->batch_size = pj->opts.batch_size > 0 ? pj->opts.batch_size
                     : pc.batch_size > 0     ? pc.batch_size
                                             : 500;
    pj->linger_ms = cfg->proj.linger_ms;
    pj->batch_bytes =
        cfg->proj.batch_bytes > 0 ? (size_t)cfg->proj.batch_bytes : 4u << 20;
    {
        const char *keep = getenv("EVLUA_NO_TRIM");
        pj->keep_memory = keep && *keep && strcmp(keep, "0") != 0;
    }
    if (pj->opts.group)
        snprintf(pj->group_id, sizeof pj->group_id, "%s", pj->opts.group);
    else
        evl_projector_group(cfg, pj->name, pj->group_id, sizeof pj->group_id);
    if (evl_projector_topics(cfg, pj->host, pj->name, &pj->topics) == 0) {
        evl_log(EVL_LOG_ERROR,
                "projection has no topics: configure projection.topics (or "
                "projection.each.NAME.topics), or load the aggregate scripts "
                "whose events topics it reads",
                "projection", pj->name, NULL);
        return EVL_EPERMANENT;
    }
    if (!cfg->pg_conninfo) {
        evl_log(EVL_LOG_ERROR,
                "no database configured (postgres / EVLUA_PG_CONNINFO)",
                "projection", pj->name, NULL);
        return EVL_EPERMANENT;
    }
    return EVL_OK;
}

/* Is the projection's script the version its tables were built by? A
 * `projection swap` pins the swapped-in tables to the script that built
 * them (evlua_pins); any other version would write them with other
 * rules. EVL_OK when no pin or the same version, EVL_EPERMANENT with the
 * reason in err when another, else the database's class. The swap epoch
 * read with the pin goes to epoch (when not NULL): read before the
 * offsets and checkpoints, it fences every write made on them (pg.h
 * EVL_PG_FENCE_SQL). */
static evl_err check_pin(projector *pj, const evl_luahost_projection *p,
                         char *epoch, char *err, size_t errlen)
{
    PGresult *res = NULL;
    const char *v[1] = {pj->name};
    evl_err e = evl_pg_query(pj->pg, EVL_PG_EPOCH_SQL, 1, v, &res, err, errlen);
    if (e != EVL_OK)
        return e;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return evl_seterr(err, errlen, EVL_ETRANSIENT,
                          "the swap epoch query returned no row");
    }
    if (epoch)
        snprintf(epoch, sizeof pj->epoch, "%s", PQgetvalue(res, 0, 0));
    if (!PQgetisnull(res, 0, 1) && strcmp(PQgetvalue(res, 0, 1), p->hash) != 0)
        e = evl_seterr(err, errlen, EVL_EPERMANENT,
                       "the tables of projection %s were swapped in for its "
                       "script version %s (%s, `evlua projection swap`); "
                       "%s is version %s: deploy the swapped script, or "
                       "swap back with `evlua projection swap %s --back`",
                       pj->name, PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
                       p->script, p->hash, pj->name);
    PQclear(res);
    return e;
}

/* Record the version p as the one this projection's tables are written
 * by now (evlua_fences): a swap pins the tables it moves aside to it. */
static evl_err note_version(projector *pj, const evl_luahost_projection *p,
                            char *err, size_t errlen)
{
    const char *v[3] = {pj->name, p->hash, p->script};
    return evl_pg_query(pj->pg, EVL_PG_VERSION_SQL, 3, v, NULL, err, errlen);
}

static evl_err do_pin(projector *pj, char *err, size_t errlen)
{
    evl_err e = check_pin(pj, pj->proj, pj->epoch, err, errlen);
    return e == EVL_OK ? note_version(pj, pj->proj, err, errlen) : e;
}

/* The connection, evlua's tables and the projection's schema, each
 * retried while the database fails transiently. EVL_OK, EVL_ETRANSIENT
 * when a stop request ended the waiting, or EVL_EPERMANENT (logged). */
static evl_err open_db(projector *pj)
{
    char err[EVL_ERRLEN];
    evl_err e = with_retry(pj, "cannot connect to PostgreSQL; retrying",
                           do_connect, err, sizeof err);
    if (e == EVL_ETRANSIENT)
        return e; /* stopped while waiting */
    if (e != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "bad PostgreSQL settings", "projection",
                pj->name, "error", err, NULL);
        return EVL_EPERMANENT;
    }
    e = with_retry(pj, "cannot create evlua's tables; retrying", do_tables, err,
                   sizeof err);
    if (e == EVL_ETRANSIENT)
        return e;
    if (e != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "cannot create evlua's tables", "projection",
                pj->name, "error", err, NULL);
        return EVL_EPERMANENT;
    }
    e = with_retry(pj, "cannot run the projection's schema; retrying",
                   do_schema, err, sizeof err);
    if (e == EVL_ETRANSIENT)
        return e;
    if (e != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "the projection's schema failed", "projection",
                pj->name, "script", pj->proj->script, "error", err, NULL);
        return EVL_EPERMANENT;
    }
    e = with_retry(pj, "cannot read the projection's pinned version; retrying",
                   do_pin, err, sizeof err);
    if (e == EVL_ETRANSIENT)
        return e;
    if (e != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "wrong script version for the tables",
                "projection", pj->name, "error", err, NULL);
        return EVL_EPERMANENT;
    }
    return EVL_OK;
}

/* Everything before the first poll: EVL_OK (go on), EVL_ETRANSIENT when a
 * stop request came while waiting for the database, or EVL_EPERMANENT
 * on a configuration error (logged). */
static evl_err setup(projector *pj, const evl_luahost *proto)
{
    char err[EVL_ERRLEN];
    const evl_config *cfg = pj->cfg;
    evl_err e = load_settings(pj, proto);
    if (e == EVL_OK)
        e = open_db(pj);
    if (e != EVL_OK)
        return e;
    if (proj_kafka_open(pj, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "cannot create the Kafka consumer", "projection",
                pj->name, "error", err, NULL);
        return EVL_EPERMANENT;
    }
    proj_ensure_topics(pj);
    if (proj_subscribe(pj, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "cannot subscribe", "projection", pj->name,
                "error", err, NULL);
        return EVL_EPERMANENT;
    }
    evl_lifecycle_reload_requested(&pj->hup_seen);

    char topics[512], bs[24], conn[512];
    proj_join_topics(&pj->topics, topics, sizeof topics);
    snprintf(bs, sizeof bs, "%d", pj->batch_size);
    evl_config_redact_conninfo(cfg->pg_conninfo, conn, sizeof conn);
    evl_log(EVL_LOG_INFO, "projector started", "projection", pj->name, "group",
            pj->group_id, "topics", topics, "isolation", iso_names[pj->iso],
            "on_error", pj->halt ? "halt" : "park", "batch_size", bs,
            "postgres", conn, THREAD_FIELD(pj), NULL);
    evl_metrics_ready(pj->component, 0,
                      pj->missing.n ? pj->missing_why
                                    : "waiting for a partition assignment");
    evl_metrics_scripts(pj->component, NULL, NULL, evl_luahost_hash(pj->host));
    pj->parked_dirty = 1;
    proj_count_parked(pj);
    return EVL_OK;
}

/* ---- collecting a batch -------------------------------------------------- */

static void drop_msgs(projector *pj, batch *b)
{
    for (size_t i = 0; i < b->nmsgs; i++)
        rd_kafka_message_destroy(b->msgs[i]);
    b->nmsgs = 0;
}

static void consumer_error(projector *pj, const rd_kafka_message_t *rkm)
{
    if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        int p = rkm->rkt ? proj_part_find(pj, rd_kafka_topic_name(rkm->rkt),
                                          rkm->partition)
                         : -1;
        if (p >= 0 && rkm->offset > pj->parts[p].pos)
            pj->parts[p].pos = rkm->offset;
        return;
    }
    if (rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
        if (!pj->fatal) /* else proj_kafka_fatal said it */
            evl_kafka_log_fatal(pj->rk,
                                "fatal Kafka error: stopping the projector",
                                "projection", pj->name);
        pj->fatal = 1;
        return;
    }
    evl_log(EVL_LOG_WARN, "kafka consumer error", "projection", pj->name,
            "topic", rkm->rkt ? rd_kafka_topic_name(rkm->rkt) : "", "error",
            rd_kafka_message_errstr(rkm), NULL);
}

/* What a batch's arenas keep between batches; more is freed (a batch of
 * batch_size ordinary events needs well under this). */
#define ARENA_KEEP (1u << 20)
/* Give memory back to the system (malloc_trim) after this many message
 * bytes, and once whenever the projector has been idle after work for
 * IDLE_TRIM_S (not at each empty poll: a catch-up has short gaps, and
 * pages given back there are faulted in again at once). */
#define TRIM_BYTES  (64u << 20)
#define IDLE_TRIM_S 1.0

/* After a batch: its arenas back to ARENA_KEEP; when idle (nothing
 * collected, nothing in flight, for IDLE_TRIM_S) or after TRIM_BYTES of
 * messages, a full
 * Lua collection and malloc_trim(0), which hands the free pages of
 * glibc's heaps back (a catch-up otherwise leaves RSS at its peak:
 * docs/projection-side.md has the figures). b: a batch not in flight, or
 * NULL. Nothing when EVLUA_NO_TRIM is set. */
static void release_memory(projector *pj, batch *b, int idle)
{
    if (pj->keep_memory)
        return;
    if (b) {
        proj_arena_shrink(&b->ar, ARENA_KEEP);
        proj_arena_shrink(&b->attempt_ar, ARENA_KEEP);
    }
    if (!idle)
        pj->idle_since = 0;
    else if (pj->idle_since == 0)
        pj->idle_since = proj_now_s();
    if (pj->bytes_since_trim == 0 ||
        (!idle && pj->bytes_since_trim < TRIM_BYTES) ||
        (idle && proj_now_s() - pj->idle_since < IDLE_TRIM_S))
        return;
    pj->bytes_since_trim = 0;
    if (idle && !pj->inflight) {
        proj_arena_shrink(&pj->bufs[0].ar, 0);
        proj_arena_shrink(&pj->bufs[0].attempt_ar, 0);
        proj_arena_shrink(&pj->bufs[1].ar, 0);
        proj_arena_shrink(&pj->bufs[1].attempt_ar, 0);
    }
    evl_luahost_gc(pj->host);
    malloc_trim(0);
}

/* Poll up to batch_size messages and batch_bytes bytes (at least one
 * message, however large), waiting at most linger_ms after the first.
 * Returns how many, 0 when idle, -1 on a fatal error. */
static int collect(projector *pj, batch *b)
{
    double deadline = 0;
    release_memory(pj, b, 0);
    b->nmsgs = 0;
    b->bytes = 0;
    while ((int)b->nmsgs < pj->batch_size && b->bytes < pj->batch_bytes) {
        /* with a batch in flight, an empty queue means: go read it */
        int timeout = pj->inflight ? 0 : 100;
        if (b->nmsgs > 0) {
            double left = deadline - proj_now_s();
            if (left <= 0)
                break;
            timeout = (int)(left * 1000) + 1;
        }
        pj->rebalanced = 0;
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(pj->rk, timeout);
        if (pj->rebalanced) {
            drop_msgs(pj, b); /* fetched again from the DB offsets */
            b->bytes = 0;
        }
        if (proj_kafka_fatal(pj)) {
            if (rkm)
                rd_kafka_message_destroy(rkm);
            return -1;
        }
        if (!rkm) {
            if (b->nmsgs == 0)
                return 0;
            continue;
        }
        if (rkm->err) {
            consumer_error(pj, rkm);
            rd_kafka_message_destroy(rkm);
            if (pj->fatal)
                return -1;
            if (b->nmsgs == 0)
                return 0;
            continue;
        }
        if (b->nmsgs == b->capmsgs) {
            b->capmsgs = b->capmsgs ? b->capmsgs * 2 : 512;
            b->msgs = evl_xrealloc(b->msgs, sizeof *b->msgs * b->capmsgs);
        }
        b->msgs[b->nmsgs++] = rkm;
        b->bytes += rkm->len + rkm->key_len;
        pj->bytes_since_trim += rkm->len + rkm->key_len;
        if (pj->first_msg == 0)
            pj->first_msg = proj_now_s();
        if (b->nmsgs == 1)
            deadline = proj_now_s() + pj->linger_ms / 1000.0;
        if (evl_lifecycle_stopping())
            break; /* finish what we have */
    }
    return (int)b->nmsgs;
}

/* ---- deciding ------------------------------------------------------------ */

/* Copy the handler's statements into the attempt. */
static void keep_stmts(projector *pj, batch *b, pev *ev)
{
    const evl_luahost_stmts *ls = &pj->lstmts;
    ev->stmt0 = b->nstmts;
    ev->nstmt = ls->n;
    for (size_t s = 0; s < ls->n; s++) {
        const evl_luahost_stmt *st = &ls->stmts[s];
        if (b->nstmts == b->capstmts) {
            b->capstmts = b->capstmts ? b->capstmts * 2 : 1024;
            b->stmts = evl_xrealloc(b->stmts, sizeof(pstmt) * b->capstmts);
        }
        pstmt *ps = &b->stmts[b->nstmts++];
        ps->sql = proj_arena_strndup(&b->attempt_ar, st->sql, st->sql_len);
        ps->nparams = (int)st->nparams;
        ps->values = proj_arena_alloc(&b->attempt_ar,
                                      sizeof(char *) * (st->nparams + 1));
        ps->ev = (int)(ev - b->evs);
        ps->shape = proj_upsert_shape(pj, st);
        for (size_t k = 0; k < st->nparams; k++) {
            const evl_luahost_param *pa = &st->params[k];
            ps->values[k] =
                pa->type == EVL_PARAM_NULL
                    ? NULL
                    : proj_arena_strndup(&b->attempt_ar, pa->text, pa->len);
        }
    }
}

/* Decide every event of the batch on the cached checkpoints, running the
 * handlers of those to apply. */
static evl_err project_one(projector *pj, const pev *ev, char *err,
                           size_t errlen)
{
    double t = proj_now_s();
    evl_err e = evl_luahost_project(pj->host, pj->name, ev->rkm->payload,
                                    ev->rkm->len, &pj->lstmts, err, errlen);
    pj->lua_s += proj_now_s() - t;
    return e;
}

static void decide(projector *pj, batch *b)
{
    char err[EVL_ERRLEN];
    b->nstmts = 0;
    b->percall = 0;
    for (size_t gi = 0; gi < b->ngroups; gi++) {
        pgroup *g = &b->groups[gi];
        const ckpt *c = proj_ckmap_get(&pj->cache, g->key, g->klen, g->hash);
        g->prev_seq = c ? c->seq : -1;
        g->prev_parked = c ? c->parked : 0;
        long long running = g->prev_seq > 0 ? g->prev_seq : 0;
        int parked = g->prev_parked;
        for (int i = g->first; i >= 0; i = b->evs[i].next) {
            pev *ev = &b->evs[i];
            const part *pt = &pj->parts[ev->part];
            ev->nstmt = 0;
            ev->error = NULL;
            if (pt->halted && ev->rkm->offset >= pt->halt_offset) {
                ev->state = EV_HALT;
            } else if (ev->seq >= 0 && ev->seq <= running) {
                ev->state = EV_REPLAY;
            } else if (parked) {
                ev->state = EV_PARK;
                ev->error = proj_behind_msg;
            } else if (ev->fail || ev->bad) {
                const char *why = ev->fail ? ev->fail : ev->bad;
                if (pj->halt) {
                    proj_halt_part(pj, ev, why);
                    ev->state = EV_HALT;
                } else {
                    ev->state = EV_PARK;
                    ev->error = why;
                    parked = 1;
                }
            } else if (project_one(pj, ev, err, sizeof err) != EVL_OK) {
                ev->fail = proj_arena_text(&b->ar, err, strlen(err));
                if (pj->halt) {
                    proj_halt_part(pj, ev, ev->fail);
                    ev->state = EV_HALT;
                } else {
                    ev->state = EV_PARK;
                    ev->error = ev->fail;
                    parked = 1;
                }
            } else {
                keep_stmts(pj, b, ev);
                ev->state = EV_APPLY;
                running = ev->seq;
            }
        }
    }
    proj_summarize(pj, b);
}

/* ---- after the commit ---------------------------------------------------- */

/* After a commit: one line per aggregate the batch parked (not per event
 * parked behind it). */
static void log_parked(projector *pj, const batch *b)
{
    for (size_t e = 0; e < b->nevs; e++) {
        const pev *ev = &b->evs[e];
        if (ev->state != EV_PARK || !ev->error || ev->error == proj_behind_msg)
            continue;
        const pgroup *g = &b->groups[ev->group];
        char seq[24], off[24];
        snprintf(seq, sizeof seq, "%lld", ev->seq);
        snprintf(off, sizeof off, "%" PRId64, ev->rkm->offset);
        evl_log(EVL_LOG_WARN,
                "aggregate parked: this event and every later one of the "
                "aggregate wait in evlua_parked (evlua parked list|retry)",
                "projection", pj->name, "aggregate_type", g->atype,
                "aggregate_id", g->aid, "sequence", seq, "topic",
                pj->parts[ev->part].topic, "offset", off, "error", ev->error,
                NULL);
    }
}

/* After a commit: pause and log the partitions the batch halted. */
static void pause_halted(projector *pj)
{
    for (int p = 0; p < pj->nparts; p++) {
        part *pt = &pj->parts[p];
        if (!pt->halt_new)
            continue;
        pt->halt_new = 0;
        rd_kafka_topic_partition_list_t *one =
            rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(one, pt->topic, pt->partition);
        rd_kafka_pause_partitions(pj->rk, one);
        rd_kafka_topic_partition_list_destroy(one);
        char ps[24], off[24];
        snprintf(ps, sizeof ps, "%" PRId32, pt->partition);
        snprintf(off, sizeof off, "%" PRId64, pt->halt_offset);
        evl_log(EVL_LOG_ERROR,
                "PARTITION HALTED (on_error = halt): a permanent error; "
                "nothing at or past this offset is committed. Fix the "
                "script and send SIGHUP, or restart, to resume",
                "projection", pj->name, "topic", pt->topic, "partition", ps,
                "offset", off, "error", pt->halt_error, NULL);
    }
}

static void finish_batch(projector *pj, batch *b)
{
    rd_kafka_topic_partition_list_t *offs =
        rd_kafka_topic_partition_list_new(pj->nparts ? pj->nparts : 1);
    for (int p = 0; p < pj->nparts; p++) {
        part *pt = &pj->parts[p];
        int64_t next = proj_part_next(pj, b, p);
        if (next < 0)
            continue;
        rd_kafka_topic_partition_list_add(offs, pt->topic, pt->partition)
            ->offset = next;
        if (next > pt->pos)
            pt->pos = next;
    }
    if (offs->cnt > 0)
        rd_kafka_commit(pj->rk, offs, 1);
    rd_kafka_topic_partition_list_destroy(offs);

    for (size_t e = 0; e < b->nevs; e++) {
        switch (b->evs[e].state) {
        case EV_APPLY: pj->stats.applied++; break;
        case EV_PARK: pj->stats.parked++; break;
        case EV_REPLAY: pj->stats.replayed++; break;
        default: break;
        }
    }
    pj->stats.batches++;
    pj->last_commit = proj_now_s();
    proj_metrics_publish(pj);
    proj_report_ready(pj);
    evl_metric_observe(pj->m_batch_size, (double)b->nmsgs);
    if (b->t_collected > 0)
        evl_metric_observe(pj->m_batch_seconds, proj_now_s() - b->t_collected);
    for (size_t gi = 0; gi < b->ngroups; gi++)
        if (b->groups[gi].touched && b->groups[gi].new_parked &&
            !b->groups[gi].prev_parked)
            pj->parked_dirty = 1;
    proj_count_parked(pj);
    log_parked(pj, b);
    pause_halted(pj);
}

/* ---- one batch ----------------------------------------------------------- */

/* One synchronous try at batch b: fresh checkpoints, every event decided
 * again, the transaction(s) waited for. */
static evl_err attempt_sync(projector *pj, batch *b, char *err, size_t errlen)
{
    evl_err e = EVL_OK;
    if (!evl_pg_ok(pj->pg))
        e = evl_pg_reconnect(pj->pg, err, errlen);
    if (e != EVL_OK)
        return e == EVL_EPERMANENT ? EVL_EFATAL : e;
    proj_arena_reset(&b->attempt_ar);
    for (size_t gi = 0; gi < b->ngroups; gi++)
        b->groups[gi].done = 0;
    e = proj_load_checkpoints(pj, b, err, errlen);
    if (e != EVL_OK)
        return e;
    decide(pj, b);
    proj_upsert_resolve(pj);
    if (pj->iso == ISO_AGGREGATE_TX)
        return proj_exec_per_aggregate(pj, b, err, errlen);
    return proj_exec_batch(pj, b, err, errlen, NOT_SENT);
}

/* See batch b through, starting from the outcome e of its last try
 * (EVL_EPERMANENT: of its asynchronous first transaction, failures in
 * pj->fails): permanent errors are handled, transient ones retried with
 * backoff on fresh checkpoints. Returns SETTLED when committed (and
 * finished), STOPPING when a stop request left it uncommitted, FAILED on
 * a runtime failure (logged). */
static enum settle_rc resolve(projector *pj, batch *b, evl_err e, char *err)
{
    for (int attempt = 0;; attempt++) {
        if (pj->fenced)
            return FENCED; /* nothing of b was written */
        if (e == EVL_EPERMANENT)
            e = proj_exec_batch(pj, b, err, EVL_ERRLEN, EVL_EPERMANENT);
        if (e == EVL_OK) {
            finish_batch(pj, b);
            return SETTLED;
        }
        if (pj->fenced)
            return FENCED;
        if (e != EVL_ETRANSIENT) {
            evl_log(EVL_LOG_ERROR, "projector failed", "projection", pj->name,
                    "error", err, NULL);
            return FAILED;
        }
        pj->stats.retries++;
        proj_ckmap_clear(&pj->cache);
        pj->guess_off = 1000;
        /* a conflict on a live connection is retried at once, the first
         * time */
        long ms =
            attempt == 0 && evl_pg_ok(pj->pg) ? 0 : proj_backoff_ms(attempt);
        proj_log_retry(pj, "transient database error; retrying the batch", err,
                       attempt, ms);
        if (proj_nap(ms)) {
            evl_log(EVL_LOG_WARN,
                    "stopping with the batch uncommitted; it will be read "
                    "again",
                    "projection", pj->name, NULL);
            return STOPPING;
        }
        e = attempt_sync(pj, b, err, EVL_ERRLEN);
    }
}

/* Read the outcome of the batch in flight and see it through: SETTLED
 * when it committed as sent, REDECIDE when only after trouble (see enum
 * settle_rc), STOPPING or FAILED. Its messages are released. */
enum settle_rc proj_settle(projector *pj)
{
    batch *b = pj->inflight;
    char err[EVL_ERRLEN];
    if (!b)
        return SETTLED;
    pj->inflight = NULL;
    evl_err e = proj_range_result(pj, err, sizeof err);
    enum settle_rc rc;
    if (e == EVL_OK) {
        proj_committed(pj, b, 0, b->ngroups);
        finish_batch(pj, b);
        rc = SETTLED;
    } else {
        proj_ckmap_clear(
            &pj->cache); /* it held this batch's hoped-for values */
        pj->guess_off = 1000;
        rc = resolve(pj, b, e, err);
        if (rc == SETTLED)
            rc = REDECIDE;
    }
    drop_msgs(pj, b);
    return rc;
}

/* Take the batch just collected through the database. In modes
 * aggregate and batch it is decided (Lua) while the previous batch is
 * still running in PostgreSQL, then sent and left in flight: its results
 * are read when the next batch is ready (or the consumer idles, stops,
 * rebalances or reloads). Returns SETTLED (b committed or in flight),
 * STOPPING or FAILED. */
static enum settle_rc process(projector *pj, batch *b)
{
    char err[EVL_ERRLEN];
    enum settle_rc r = SETTLED;
    b->t_collected = proj_now_s();
    proj_prepare_batch(pj, b);
    if (pj->guess_off > 0)
        pj->guess_off--;
    if (pj->inflight &&
        (pj->iso == ISO_AGGREGATE_TX || proj_needs_load(pj, b))) {
        r = proj_settle(pj); /* the checkpoints must be read after it */
        if (r == STOPPING || r == FAILED || r == FENCED)
            goto out;
    }
    if (pj->iso == ISO_AGGREGATE_TX) {
        r = resolve(pj, b, attempt_sync(pj, b, err, sizeof err), err);
        goto out;
    }
    evl_err e = EVL_OK;
    if (!pj->inflight && !evl_pg_ok(pj->pg))
        e = evl_pg_reconnect(pj->pg, err, sizeof err);
    if (e == EVL_OK) /* with a batch in flight this only guesses */
        e = proj_load_checkpoints(pj, b, err, sizeof err);
    if (e != EVL_OK) {
        r = resolve(pj, b, e == EVL_EPERMANENT ? EVL_EFATAL : e, err);
        goto out;
    }
    proj_arena_reset(&b->attempt_ar);
    for (size_t gi = 0; gi < b->ngroups; gi++)
        b->groups[gi].done = 0;
    decide(pj, b); /* while the batch in flight runs */
    if (pj->inflight) {
        r = proj_settle(pj);
        if (r == STOPPING || r == FAILED || r == FENCED)
            goto out;
        if (r == REDECIDE) { /* decided on values that did not hold */
            r = resolve(pj, b, attempt_sync(pj, b, err, sizeof err), err);
            goto out;
        }
    }
    proj_upsert_resolve(pj); /* new shapes: the connection is idle now */
    e = evl_pg_pipe_begin(pj->pg, err, sizeof err);
    if (e != EVL_OK) {
        r = resolve(pj, b, e, err);
        goto out;
    }
    if (!proj_range_send(pj, b, 0, b->ngroups, 1)) {
        evl_pg_pipe_end(pj->pg, NULL, NULL, err, sizeof err);
        finish_batch(pj, b); /* nothing to write */
        r = SETTLED;
        goto out;
    }
    e = evl_pg_pipe_flush(pj->pg, err, sizeof err);
    if (e != EVL_OK) {
        r = resolve(pj, b, e, err);
        goto out;
    }
    proj_remember(pj, b, 0,
                  b->ngroups); /* the next batch is decided on these */
    pj->inflight = b;
    return SETTLED;
out:
    drop_msgs(pj, b);
    return r;
}

/* ---- reload -------------------------------------------------------------- */

/* A reload refused: nh freed, counted as failed; the loaded set stays.
 * err may be NULL. */
static void refuse(projector *pj, evl_luahost *nh, const char *msg,
                   const char *err)
{
    evl_log(EVL_LOG_ERROR, msg, "projection", pj->name, "error", err ? err : "",
            THREAD_FIELD(pj), NULL);
    evl_luahost_free(nh);
    evl_metrics_scripts(pj->component, "failed", NULL, NULL);
}

static void maybe_reload(projector *pj)
{
    if (!evl_lifecycle_reload_requested(&pj->hup_seen))
        return;
    enum settle_rc r = proj_settle(pj); /* no batch spans two script sets */
    if (r == STOPPING || r == FAILED) {
        pj->abort_rc = r;
        return;
    }
    if (r == FENCED) /* follow_swap reloads, from the new tables' view */
        return;
    char err[EVL_ERRLEN];
    evl_luahost *nh = NULL;
    if (evl_luahost_reload(pj->host, &nh, NULL, err, sizeof err) != EVL_OK) {
        evl_metrics_scripts(pj->component, "failed", NULL, NULL);
        return; /* logged by luahost; the loaded set stays */
    }
    const evl_luahost_projection *np = evl_luahost_projection_get(nh, pj->name);
    if (!np) {
        refuse(pj, nh,
               "the new script set has no projection of this name; keeping "
               "the loaded set",
               NULL);
        return;
    }
    if (strcmp(np->hash, pj->proj->hash) != 0) {
        evl_err e = EVL_OK;
        if (!evl_pg_ok(pj->pg))
            e = evl_pg_reconnect(pj->pg, err, sizeof err);
        if (e == EVL_OK) /* the epoch stays: only follow_swap moves it */
            e = check_pin(pj, np, NULL, err, sizeof err);
        if (e != EVL_OK) {
            refuse(pj, nh,
                   "cannot check the new script against the tables' pinned "
                   "version; keeping the loaded set",
                   err);
            return;
        }
    }
    for (size_t i = 0; i < np->nschema; i++) {
        evl_err e = EVL_OK;
        if (!evl_pg_ok(pj->pg))
            e = evl_pg_reconnect(pj->pg, err, sizeof err);
        if (e == EVL_OK)
            e = evl_pg_exec_locked(pj->pg, np->schema[i], err, sizeof err);
        if (e != EVL_OK) {
            refuse(pj, nh, "the new schema failed; keeping the loaded set",
                   err);
            return;
        }
    }
    /* a new aggregate type's events topic, for a projection without
     * configured topics */
    if (proj_resubscribe(pj, nh, err, sizeof err) != EVL_OK) {
        refuse(pj, nh,
               "reload refused: the projection cannot subscribe to the "
               "reloaded scripts' topics; keeping the loaded set",
               err);
        return;
    }
    evl_metrics_scripts(pj->component, "applied", evl_luahost_hash(pj->host),
                        evl_luahost_hash(nh));
    evl_luahost_free(pj->host);
    pj->host = nh;
    pj->proj = np;
    evl_log(EVL_LOG_INFO, "projection reloaded", "projection", pj->name,
            "scripts", evl_luahost_hash(nh), THREAD_FIELD(pj), NULL);
    if (note_version(pj, np, err, sizeof err) != EVL_OK)
        evl_log(EVL_LOG_WARN,
                "cannot record the projection's script version (a swap "
                "would pin the tables it moves aside to the one before)",
                "projection", pj->name, "error", err, NULL);

    /* halted partitions get another chance with the new scripts */
    for (int p = 0; p < pj->nparts; p++) {
        part *pt = &pj->parts[p];
        if (!pt->halted)
            continue;
        rd_kafka_topic_partition_list_t *one =
            rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(one, pt->topic, pt->partition)
            ->offset = pt->halt_offset;
        rd_kafka_error_t *kerr = rd_kafka_seek_partitions(pj->rk, one, 5000);
        if (kerr)
            rd_kafka_error_destroy(kerr);
        rd_kafka_resume_partitions(pj->rk, one);
        rd_kafka_topic_partition_list_destroy(one);
        char ps[24], off[24];
        snprintf(ps, sizeof ps, "%" PRId32, pt->partition);
        snprintf(off, sizeof off, "%" PRId64, pt->halt_offset);
        evl_log(EVL_LOG_INFO, "halted partition resumed", "projection",
                pj->name, "topic", pt->topic, "partition", ps, "offset", off,
                NULL);
        pt->halted = 0;
        free(pt->halt_error);
        pt->halt_error = NULL;
    }
    proj_report_ready(pj);
}

/* ---- following a swap ---------------------------------------------------- */

/* One try at taking up the swapped-in tables: scripts loaded again from
 * disk, the projection's script checked against the tables' pin (the
 * epoch read with it, before anything else is read), its schema run,
 * then the new scripts replace the loaded ones. EVL_EPERMANENT when the
 * script on disk is not the pinned version (err says which it is). */
static evl_err take_up_swap(projector *pj, char *err, size_t errlen)
{
    evl_luahost *nh = NULL;
    char epoch[sizeof pj->epoch];
    /* a new connection: its prepared statements were planned for the
     * tables moved aside */
    evl_err e = evl_pg_reconnect(pj->pg, err, errlen);
    if (e != EVL_OK)
        return e;
    if (evl_luahost_reload(pj->host, &nh, NULL, err, errlen) != EVL_OK)
        return EVL_EPERMANENT;
    const evl_luahost_projection *np = evl_luahost_projection_get(nh, pj->name);
    if (!np)
        e = evl_seterr(err, errlen, EVL_EPERMANENT,
                       "the scripts on disk have no projection %s", pj->name);
    if (e == EVL_OK)
        e = check_pin(pj, np, epoch, err, errlen);
    for (size_t i = 0; e == EVL_OK && i < np->nschema; i++)
        e = evl_pg_exec_locked(pj->pg, np->schema[i], err, errlen);
    if (e == EVL_OK)
        e = note_version(pj, np, err, errlen);
    if (e == EVL_OK && proj_resubscribe(pj, nh, err, errlen) != EVL_OK)
        e = EVL_ETRANSIENT; /* retried: not the pin's wait */
    if (e != EVL_OK) {
        evl_luahost_free(nh);
        return e;
    }
    if (strcmp(np->hash, pj->proj->hash) != 0)
        evl_metrics_scripts(pj->component, "applied",
                            evl_luahost_hash(pj->host), evl_luahost_hash(nh));
    evl_luahost_free(pj->host);
    pj->host = nh;
    pj->proj = np;
    snprintf(pj->epoch, sizeof pj->epoch, "%s", epoch);
    return EVL_OK;
}

/* A transaction stopped at the fence: `evlua projection swap` traded the
 * tables, checkpoints, offsets and pin since this projector read them,
 * and nothing of its batches in progress was written. Take up the new
 * tables (waiting, not ready, while the script on disk is not the
 * version they are pinned to), then read every assigned partition again
 * from the new offsets with an empty checkpoint cache. Returns SETTLED,
 * or STOPPING when a stop request came while waiting. */
static enum settle_rc follow_swap(projector *pj)
{
    char err[EVL_ERRLEN];
    double logged = 0;
    evl_log(EVL_LOG_WARN,
            "projection swapped (evlua projection swap): following it with "
            "the scripts on disk",
            "projection", pj->name, THREAD_FIELD(pj), NULL);
    evl_metrics_ready(pj->component, 0, "following a projection swap");
    for (int attempt = 0;; attempt++) {
        evl_err e = take_up_swap(pj, err, sizeof err);
        if (e == EVL_OK)
            break;
        double t = proj_now_s();
        if (e == EVL_EPERMANENT && t - logged >= 30) {
            logged = t;
            evl_log(EVL_LOG_ERROR,
                    "projection swapped, and the script on disk is not the "
                    "version its tables were built by: waiting (not ready) "
                    "for it to be deployed",
                    "projection", pj->name, "error", err, THREAD_FIELD(pj),
                    NULL);
            evl_metrics_ready(pj->component, 0,
                              "projection swapped: waiting for the script "
                              "version its tables were built by");
        } else if (e != EVL_EPERMANENT)
            proj_log_retry(pj, "cannot take up the swapped tables; retrying",
                           err, attempt, proj_backoff_ms(attempt));
        if (proj_nap(e == EVL_EPERMANENT ? 1000 : proj_backoff_ms(attempt)))
            return STOPPING;
    }
    pj->fenced = 0;
    proj_upsert_forget(pj); /* shapes read from the old tables' catalog */
    proj_ckmap_clear(&pj->cache);
    pj->guess_off = 1000;
    if (!proj_reassign(pj))
        return STOPPING;
    pj->parked_dirty = 1;
    proj_count_parked(pj);
    evl_log(EVL_LOG_INFO,
            "projection follows the swap: the swapped-in tables from their "
            "own offsets",
            "projection", pj->name, "script", pj->proj->script, "version",
            pj->proj->hash, "epoch", pj->epoch, THREAD_FIELD(pj), NULL);
    proj_report_ready(pj);
    return SETTLED;
}

/* ---- progress ------------------------------------------------------------ */

static int caught_up(const projector *pj)
{
    if (pj->nsubscribed == 0)
        return 1; /* every topic is missing: nothing to read */
    if (!pj->assigned)
        return 0;
    for (int p = 0; p < pj->nparts; p++) {
        const part *pt = &pj->parts[p];
        if (!pt->halted && pt->pos < pt->end)
            return 0;
    }
    return 1;
}

/* The threads of one projection reading until caught up: none leaves the
 * consumer group before every one is caught up, or each departure would
 * move its partitions to the others in a rebalance (seconds each) for
 * nothing to read. */
typedef struct catch_up_group {
    pthread_mutex_t mu;
    int n, ncaught;
    unsigned char *caught; /* per thread */
} catch_up_group;

/* Thread i is (or is no longer) caught up: are all? */
static int all_caught_up(catch_up_group *cg, int i, int caught)
{
    if (!cg)
        return caught;
    pthread_mutex_lock(&cg->mu);
    if (cg->caught[i] != (caught != 0)) {
        cg->ncaught += caught ? 1 : -1;
        cg->caught[i] = caught != 0;
    }
    int all = cg->ncaught == cg->n;
    pthread_mutex_unlock(&cg->mu);
    return all;
}

static void report(projector *pj, int final)
{
    if (!pj->opts.progress)
        return;
    double t = proj_now_s();
    if (!final && t - pj->last_progress < 0.2)
        return;
    pj->last_progress = t;
    evl_projector_progress pr = {0, 0, 0, -1};
    for (int p = 0; p < pj->nparts; p++) {
        const part *pt = &pj->parts[p];
        if (pt->end < 0 || pt->end == INT64_MAX)
            continue;
        int64_t total = pt->end - pt->start, done = pt->pos - pt->start;
        pr.total += total > 0 ? total : 0;
        pr.done += done < 0 ? 0 : done > total ? total : done;
    }
    double el = t - pj->t0;
    pr.rate = el > 0 ? (double)pr.done / el : 0;
    pr.eta = pr.rate > 0 ? (double)(pr.total - pr.done) / pr.rate : -1;
    pj->opts.progress(pj->opts.ud, &pr);
}

/* ---- run ----------------------------------------------------------------- */

static void batch_free(projector *pj, batch *b)
{
    drop_msgs(pj, b);
    proj_arena_free(&b->ar);
    proj_arena_free(&b->attempt_ar);
    free(b->msgs);
    free(b->evs);
    free(b->groups);
    free(b->gindex);
    free(b->stmts);
    free(b->next);
}

static void teardown(projector *pj)
{
    /* after a failure a batch may still be in flight: its outcome is the
     * database's business now (the revoke in close must not settle it) */
    pj->inflight = NULL;
    if (pj->rk) {
        rd_kafka_consumer_close(pj->rk);
        rd_kafka_destroy(pj->rk);
    }
    batch_free(pj, &pj->bufs[0]);
    batch_free(pj, &pj->bufs[1]);
    proj_parts_clear(pj);
    evl_pg_close(pj->pg);
    evl_luahost_free(pj->host);
    evl_luahost_stmts_free(&pj->lstmts);
    proj_upsert_free(pj);
    evl_projector_topics_free(&pj->topics);
    evl_projector_topics_free(&pj->missing);
    proj_ckmap_clear(&pj->cache);
    for (int k = 0; k < 7; k++)
        evl_buf_free(&pj->a[k]);
    evl_buf_free(&pj->jscratch);
    free(pj->fails);
    free(pj);
}

/* What one thread of a projection hands back. */
typedef struct instance_out {
    evl_projector_stats stats;
    double first_msg, last_commit;
} instance_out;

/* One projector (one consumer, one Lua state, one connection): instance
 * of ninstances threads of the projection. */
static int run_instance(const evl_config *cfg, const evl_luahost *proto,
                        const char *projection, const evl_projector_opts *opts,
                        int instance, int ninstances, catch_up_group *cg,
                        instance_out *out)
{
    memset(out, 0, sizeof *out);
    projector *pj = evl_xmalloc(sizeof *pj);
    memset(pj, 0, sizeof *pj);
    pj->cfg = cfg;
    pj->name = projection;
    pj->instance = instance;
    pj->ninstances = ninstances;
    snprintf(pj->thread_no, sizeof pj->thread_no, "%d", instance + 1);
    proj_metrics_init(pj);
    if (opts)
        pj->opts = *opts;
    pj->t0 = proj_now_s();

    evl_err e = setup(pj, proto);
    if (e != EVL_OK) {
        if (e != EVL_ETRANSIENT) /* no longer starting: a reload's may stay */
            evl_metrics_ready(pj->component, 0,
                              "failed to start (see the log)");
        teardown(pj);
        /* transient: a stop request came while waiting for the database */
        return e == EVL_ETRANSIENT ? EVL_EXIT_OK : EVL_EXIT_USAGE;
    }

    enum settle_rc how = SETTLED;
    while (!evl_lifecycle_stopping()) {
        if (pj->fenced) {
            how = follow_swap(pj);
            if (how == STOPPING)
                break;
        }
        maybe_reload(pj);
        if (proj_check_missing(pj) != 0) {
            how = FAILED;
            break;
        }
        evl_kafka_wait_check(&pj->wait, pj->rk, pj->group_id);
        batch *b = pj->inflight == &pj->bufs[0] ? &pj->bufs[1] : &pj->bufs[0];
        int n = pj->abort_rc == SETTLED ? collect(pj, b) : 0;
        if (pj->abort_rc != SETTLED) { /* set by a callback */
            how = pj->abort_rc;
            break;
        }
        if (n < 0) {
            how = FAILED;
            break;
        }
        if (n > 0)
            how = process(pj, b);
        else if (pj->inflight) /* idle: read what is in flight */
            how = proj_settle(pj);
        else
            release_memory(pj, NULL, 1); /* idle, nothing in flight */
        report(pj, 0);
        if (how == STOPPING || how == FAILED)
            break;
        if (pj->opts.until_caught_up && !pj->inflight &&
            all_caught_up(cg, instance, caught_up(pj)))
            break;
    }
    if (how != STOPPING && how != FAILED) /* finish the batch in flight */
        how = proj_settle(pj);
    int rc = how == FAILED || pj->fatal ? EVL_EXIT_FAILURE : EVL_EXIT_OK;
    report(pj, 1);
    char a[24], s[24], r[24], pk[24], bt[24];
    snprintf(a, sizeof a, "%lld", pj->stats.applied);
    snprintf(s, sizeof s, "%lld", pj->stats.skipped);
    snprintf(r, sizeof r, "%lld", pj->stats.replayed);
    snprintf(pk, sizeof pk, "%lld", pj->stats.parked);
    snprintf(bt, sizeof bt, "%lld", pj->stats.batches);
    evl_log(EVL_LOG_INFO, "projector stopped", "projection", pj->name,
            "applied", a, "skipped", s, "replayed", r, "parked", pk, "batches",
            bt, THREAD_FIELD(pj), NULL);
    if (pj->first_msg > 0 && pj->last_commit > pj->first_msg)
        pj->stats.seconds = pj->last_commit - pj->first_msg;
    out->stats = pj->stats;
    out->first_msg = pj->first_msg;
    out->last_commit = pj->last_commit;
    teardown(pj);
    return rc;
}

/* ---- threads ------------------------------------------------------------- */

/* The threads of one projection: each is a member of the projection's
 * consumer group, so Kafka spreads the partitions over them (and over
 * the other instances of evlua) as over separate processes. Their
 * progress is added up for the caller's callback, once every thread has
 * reported (each reports within 200 ms of starting to poll). */
typedef struct thread_group {
    const evl_config *cfg;
    const evl_luahost *proto;
    const char *name;
    const evl_projector_opts *opts;
    int n;
    pthread_mutex_t mu;
    evl_projector_progress *progress; /* the last report of each thread */
    int nreported;                    /* threads that reported yet */
    catch_up_group cg;
} thread_group;

typedef struct thread_arg {
    thread_group *g;
    int instance;
    evl_projector_opts opts;
    instance_out out;
    int rc;
    int reported; /* has reported progress (under g->mu) */
} thread_arg;

static void group_progress(void *ud, const evl_projector_progress *p)
{
    thread_arg *a = ud;
    thread_group *g = a->g;
    pthread_mutex_lock(&g->mu);
    g->progress[a->instance] = *p;
    if (!a->reported) {
        a->reported = 1;
        g->nreported++;
    }
    if (g->nreported < g->n) { /* a total without some thread's is wrong */
        pthread_mutex_unlock(&g->mu);
        return;
    }
    evl_projector_progress sum = {0, 0, 0, -1};
    for (int i = 0; i < g->n; i++) {
        sum.done += g->progress[i].done;
        sum.total += g->progress[i].total;
        sum.rate += g->progress[i].rate;
    }
    if (sum.rate > 0)
        sum.eta = (double)(sum.total - sum.done) / sum.rate;
    g->opts->progress(g->opts->ud, &sum);
    pthread_mutex_unlock(&g->mu);
}

static void *thread_main(void *arg)
{
    thread_arg *a = arg;
    thread_group *g = a->g;
    evl_thread_name("evl:p:", g->name);
    a->rc = run_instance(g->cfg, g->proto, g->name, &a->opts, a->instance, g->n,
                         g->opts->until_caught_up ? &g->cg : NULL, &a->out);
    all_caught_up(&g->cg, a->instance, 1); /* gone: wait no more for it */
    if (a->rc != 0 && !g->opts->until_caught_up && !g->opts->alone)
        evl_lifecycle_request_stop(); /* one thread down: drain all */
    return NULL;
}

int evl_projector_run_opts(const evl_config *cfg, const evl_luahost *proto,
                           const char *projection,
                           const evl_projector_opts *opts)
{
    evl_projector_opts none;
    if (!opts) {
        memset(&none, 0, sizeof none);
        opts = &none;
    }
    int n = opts->threads > 0 ? opts->threads
                              : evl_config_projection(cfg, projection).threads;
    if (n <= 1) {
        instance_out out;
        int rc = run_instance(cfg, proto, projection, opts, 0, 1, NULL, &out);
        if (opts->stats)
            *opts->stats = out.stats;
        return rc;
    }
    thread_group g = {cfg,  proto, projection,
                      opts, n,     PTHREAD_MUTEX_INITIALIZER,
                      NULL, 0,     {PTHREAD_MUTEX_INITIALIZER, n, 0, NULL}};
    g.cg.caught = evl_xmalloc((size_t)n);
    memset(g.cg.caught, 0, (size_t)n);
    g.progress = evl_xmalloc(sizeof *g.progress * (size_t)n);
    memset(g.progress, 0, sizeof *g.progress * (size_t)n);
    thread_arg *args = evl_xmalloc(sizeof *args * (size_t)n);
    pthread_t *tids = evl_xmalloc(sizeof *tids * (size_t)n);
    int started = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        thread_arg *a = &args[i];
        memset(a, 0, sizeof *a);
        a->g = &g;
        a->instance = i;
        a->opts = *opts;
        a->opts.stats = NULL;
        if (opts->progress) {
            a->opts.progress = group_progress;
            a->opts.ud = a;
        }
        if (pthread_create(&tids[i], NULL, thread_main, a) != 0) {
            evl_log(EVL_LOG_ERROR, "pthread_create failed", "projection",
                    projection, NULL);
            evl_lifecycle_request_stop();
            rc = 1;
            break;
        }
        started++;
    }
    evl_projector_stats sum;
    memset(&sum, 0, sizeof sum);
    double first = 0, last = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(tids[i], NULL);
        const instance_out *o = &args[i].out;
        if (args[i].rc > rc)
            rc = args[i].rc;
        sum.messages += o->stats.messages;
        sum.applied += o->stats.applied;
        sum.skipped += o->stats.skipped;
        sum.replayed += o->stats.replayed;
        sum.parked += o->stats.parked;
        sum.batches += o->stats.batches;
        sum.retries += o->stats.retries;
        sum.statements += o->stats.statements;
        if (o->first_msg > 0 && (first == 0 || o->first_msg < first))
            first = o->first_msg;
        if (o->last_commit > last)
            last = o->last_commit;
    }
    if (first > 0 && last > first)
        sum.seconds = last - first;
    if (opts->stats)
        *opts->stats = sum;
    free(tids);
    free(args);
    free(g.progress);
    free(g.cg.caught);
    pthread_mutex_destroy(&g.mu);
    pthread_mutex_destroy(&g.cg.mu);
    return rc;
}

int evl_projector_run(const evl_config *cfg, const evl_luahost *proto,
                      const char *projection)
{
    return evl_projector_run_opts(cfg, proto, projection, NULL);
}
