/*
 * projector.c - one projection: Kafka -> Lua -> PostgreSQL (see
 * projector.h for the contract).
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
 * Rebalances are eager: all partitions are revoked, then assigned. The
 * rebalance callback runs inside rd_kafka_consumer_poll on this thread
 * (which owns the database connection too), reads evlua_offsets and
 * assigns each partition at its DB offset; messages collected before it
 * are dropped (they will be fetched again from the DB offsets).
 */
#include "projector.h"

#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>

#include "kafka.h"
#include "lag.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"

/* ---- small tools --------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep ms milliseconds, waking early for a stop request. Returns 1 when
 * stopping. */
static int nap(long ms)
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
static long backoff_ms(int attempt)
{
    long ms = 100;
    for (int i = 0; i < attempt && ms < 10000; i++)
        ms *= 2;
    return ms < 10000 ? ms : 10000;
}

/* A bump allocator: everything of a batch (or an attempt) goes in one
 * and is dropped at once. Blocks are kept for the next round. */
typedef struct block {
    struct block *next;
    size_t cap, used;
    char data[];
} block;

typedef struct arena {
    block *head, *cur;
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    for (;;) {
        if (a->cur && a->cur->cap - a->cur->used >= n) {
            void *p = a->cur->data + a->cur->used;
            a->cur->used += n;
            return p;
        }
        if (a->cur && a->cur->next) {
            a->cur = a->cur->next;
            a->cur->used = 0;
            continue;
        }
        size_t cap = n > 65536 ? n : 65536;
        block *b = evl_xmalloc(sizeof *b + cap);
        b->next = NULL;
        b->cap = cap;
        b->used = 0;
        if (a->cur)
            a->cur->next = b;
        else
            a->head = b;
        a->cur = b;
    }
}

static void arena_reset(arena *a)
{
    a->cur = a->head;
    if (a->cur)
        a->cur->used = 0;
}

static void arena_free(arena *a)
{
    block *b = a->head;
    while (b) {
        block *next = b->next;
        free(b);
        b = next;
    }
    a->head = a->cur = NULL;
}

/* Free the blocks past the first `keep` bytes of capacity: a batch of
 * large events grows the arena, and kept blocks would pin that high-water
 * mark for the life of the projector. Only between batches (reset). */
static void arena_shrink(arena *a, size_t keep)
{
    size_t have = 0;
    block **pb = &a->head;
    while (*pb && have + (*pb)->cap <= keep) {
        have += (*pb)->cap;
        pb = &(*pb)->next;
    }
    block *b = *pb;
    *pb = NULL;
    while (b) {
        block *next = b->next;
        free(b);
        b = next;
    }
    a->cur = a->head;
    if (a->cur)
        a->cur->used = 0;
}

static char *arena_strndup(arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* A copy of s that PostgreSQL's text accepts: valid UTF-8, no NUL bytes
 * (each bad byte becomes '?'). */
static char *arena_text(arena *a, const char *s, size_t n)
{
    char *p = arena_strndup(a, s, n);
    size_t at = 0;
    for (;;) {
        long bad = evl_utf8_check(p + at, n - at);
        if (bad < 0)
            break;
        p[at + (size_t)bad] = '?';
        at += (size_t)bad + 1;
    }
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\0')
            p[i] = '?';
    return p;
}

static uint64_t hash_key(const char *k, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* ---- the checkpoint cache ------------------------------------------------ */

typedef struct ckpt {
    char *key; /* "type\0id"; NULL: empty slot */
    size_t klen;
    uint64_t hash;
    long long seq; /* -1: no row */
    int parked;
} ckpt;

typedef struct ckmap {
    ckpt *slots;
    size_t cap, n;
} ckmap;

#define CKMAP_MAX 2000000 /* entries; beyond, the cache starts over */

static ckpt *ckmap_slot(const ckmap *m, const char *key, size_t klen,
                        uint64_t h)
{
    size_t i = (size_t)h & (m->cap - 1);
    for (;;) {
        ckpt *c = &m->slots[i];
        if (!c->key ||
            (c->hash == h && c->klen == klen && memcmp(c->key, key, klen) == 0))
            return c;
        i = (i + 1) & (m->cap - 1);
    }
}

static const ckpt *ckmap_get(const ckmap *m, const char *key, size_t klen,
                             uint64_t h)
{
    if (!m->cap)
        return NULL;
    const ckpt *c = ckmap_slot(m, key, klen, h);
    return c->key ? c : NULL;
}

static void ckmap_clear(ckmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static void ckmap_put(ckmap *m, const char *key, size_t klen, uint64_t h,
                      long long seq, int parked)
{
    if (m->n >= CKMAP_MAX)
        ckmap_clear(m);
    if (2 * (m->n + 1) > m->cap) {
        ckmap old = *m;
        m->cap = old.cap ? old.cap * 2 : 1024;
        m->slots = evl_xmalloc(sizeof(ckpt) * m->cap);
        memset(m->slots, 0, sizeof(ckpt) * m->cap);
        for (size_t i = 0; i < old.cap; i++)
            if (old.slots[i].key)
                *ckmap_slot(m, old.slots[i].key, old.slots[i].klen,
                            old.slots[i].hash) = old.slots[i];
        free(old.slots);
    }
    ckpt *c = ckmap_slot(m, key, klen, h);
    if (!c->key) {
        c->key = evl_xmalloc(klen);
        memcpy(c->key, key, klen);
        c->klen = klen;
        c->hash = h;
        m->n++;
    }
    c->seq = seq;
    c->parked = parked;
}

/* ---- the projector ------------------------------------------------------- */

enum { ISO_AGGREGATE, ISO_BATCH, ISO_AGGREGATE_TX };
enum { EV_SKIP, EV_REPLAY, EV_APPLY, EV_PARK, EV_HALT };

/* Statement tags in a pipeline: statement i is 2i, the park insert of
 * event i is 2i+1, bookkeeping is negative. */
#define TAG_BEGIN   (-2L)
#define TAG_ADVANCE (-3L)
#define TAG_OFFSETS (-4L)
#define TAG_COMMIT  (-5L)

typedef struct part {
    char *topic;
    int32_t partition;
    int64_t start, end; /* until_caught_up: where it began, where it ends */
    int64_t pos;        /* next offset known to be done */
    int halted;
    int64_t halt_offset;
    int halt_new; /* halted by this batch: pause and log after commit */
    char *halt_error;
} part;

typedef struct pev {
    rd_kafka_message_t *rkm;
    int part;
    int group;
    int next; /* next event of the group, -1 */
    long long seq;
    const char *type;   /* may be NULL (no header, no JSON type) */
    const char *bad;    /* why the payload cannot be used, or NULL */
    const char *fail;   /* a permanent error seen for it in this batch */
    const char *error;  /* EV_PARK: what goes into evlua_parked.error */
    const char *stored; /* the event as stored when parked */
    int state;
    size_t stmt0, nstmt;
} pev;

typedef struct pgroup {
    const char *atype, *aid;
    const char *key; /* "type\0id" */
    size_t klen;
    uint64_t hash;
    int first, last;
    long long prev_seq, new_seq;
    int prev_parked, new_parked;
    int touched; /* has events to apply or park */
    int done;    /* committed (aggregate-tx) */
} pgroup;

typedef struct pstmt {
    const char *sql;
    int nparams;
    const char **values;
    int ev;
} pstmt;

typedef struct failure {
    long seg, tag;
    evl_err cls;
    char msg[1100];
} failure;

/* Everything of one batch: its messages, events, aggregate groups and
 * the statements of its current attempt. */
typedef struct batch {
    rd_kafka_message_t **msgs;
    size_t nmsgs, capmsgs;
    pev *evs;
    size_t nevs, capevs;
    pgroup *groups;
    size_t ngroups, capgroups;
    int *gindex; /* open addressing over groups, -1 empty */
    size_t gcap;
    arena ar;      /* lives as long as the batch */
    int64_t *next; /* per partition: after its last message; -1 none */
    int nnext;
    int nfail; /* aggregates failed in this batch */
    /* the attempt */
    pstmt *stmts;
    size_t nstmts, capstmts;
    arena attempt_ar;
    double t_collected; /* for evlua_projection_batch_seconds */
    size_t bytes;       /* message bytes (values and keys) collected */
} batch;

typedef struct projector {
    const evl_config *cfg;
    const char *name;
    evl_projector_opts opts;
    int iso, halt, batch_size, linger_ms;
    size_t batch_bytes; /* projection.batch_bytes */
    /* memory given back (see release_memory): message bytes since the
     * last trim; keep_memory: EVLUA_NO_TRIM set (benchmarks' baseline) */
    size_t bytes_since_trim;
    int keep_memory;
    double idle_since; /* the first empty poll of an idle stretch; 0: busy */
    char group_id[256];
    evl_strlist topics;
    /* topics the cluster said do not exist (yet): not subscribed; looked
     * for every MISSING_CHECK_S until they appear (see ensure_topics) */
    evl_strlist missing;
    char missing_why[512]; /* readiness reason while some are missing */
    double missing_checked;
    int nsubscribed;     /* topics in the current subscription */
    evl_kafka_wait wait; /* the consumer's wait for partitions (kafka.h) */

    evl_luahost *host;
    const evl_luahost_projection *proj;
    evl_pg *pg;
    rd_kafka_t *rk;
    unsigned hup_seen;
    int fatal;      /* a fatal Kafka error */
    int rebalanced; /* a rebalance happened during this poll */
    int assigned;

    part *parts;
    int nparts, last_part;
    ckmap cache;

    batch bufs[2];   /* one being built, one maybe in flight */
    batch *inflight; /* sent to PostgreSQL, results not read yet */
    int abort_rc;    /* set when settling in a callback failed or stopped */
    int guess_off;   /* batches to go before guessing new aggregates again */
    evl_luahost_stmts lstmts;
    failure *fails;
    size_t nfails, capfails;

    evl_buf a[7];     /* array literals of the bookkeeping statements */
    evl_buf jscratch; /* strings read by read_fields */
    evl_projector_stats stats;
    evl_projector_stats published; /* what the metrics have seen */
    evl_metric *m_events[5], *m_batches, *m_lua_memory, *m_batch_size,
        *m_batch_seconds, *m_lua_seconds, *m_parked;
    double lua_s;             /* handler time not yet published */
    double parked_counted;    /* when it was last refreshed */
    int parked_dirty;         /* a batch parked an aggregate */
    char component[160];      /* readiness name: "projection NAME" ("#i" added
                                 when the projection runs several threads) */
    int instance, ninstances; /* this thread, of the projection's threads */
    char thread_no[12];       /* instance + 1, for the log */
    double t0, last_progress;
    double first_msg, last_commit; /* for stats.seconds */
} projector;

/* The last field of a projector's log lines: thread=i when the projection
 * runs several threads (a NULL key ends the list otherwise). */
#define THREAD_FIELD(pj)                                                       \
    ((pj)->ninstances > 1 ? "thread" : NULL), (pj)->thread_no

static const char *const iso_names[] = {"aggregate", "batch", "aggregate-tx"};

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

static void parts_clear(projector *pj)
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

static int part_find(projector *pj, const char *topic, int32_t partition)
{
    int n = pj->nparts;
    for (int k = 0; k < n; k++) {
        int i = (pj->last_part + k) % n;
        if (pj->parts[i].partition == partition &&
            strcmp(pj->parts[i].topic, topic) == 0) {
            pj->last_part = i;
            return i;
        }
    }
    return -1;
}

/* ---- Kafka callbacks ----------------------------------------------------- */

static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac,
                         const char *buf)
{
    evl_log_level lvl = level <= 3   ? EVL_LOG_ERROR
                        : level == 4 ? EVL_LOG_WARN
                        : level <= 6 ? EVL_LOG_INFO
                                     : EVL_LOG_DEBUG;
    /* at most info in a one-shot command (`evlua projection reset`) */
    evl_log(evl_log_lib(lvl), "librdkafka", "client", rd_kafka_name(rk),
            "facility", fac, "detail", buf, NULL);
    evl_kafka_log_fenced(rk, fac, buf);
}

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason,
                           void *opaque)
{
    projector *pj = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        if (!pj->fatal) /* else consumer_error said it */
            evl_kafka_log_fatal(rk, "fatal Kafka error: stopping the projector",
                                "projection", pj->name);
        pj->fatal = 1;
        return;
    }
    evl_log(EVL_LOG_WARN, "kafka error", "projection", pj->name, "error",
            rd_kafka_err2name((rd_kafka_resp_err_t)err), "reason", reason,
            NULL);
}

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
        long ms = backoff_ms(attempt);
        char n[24], d[24];
        snprintf(n, sizeof n, "%d", attempt + 1);
        snprintf(d, sizeof d, "%ld", ms);
        evl_log(EVL_LOG_WARN,
                "cannot read the projection's offsets; retrying the "
                "assignment",
                "projection", pj->name, "reason", err, "attempt", n, "delay_ms",
                d, NULL);
        if (nap(ms))
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

static int settle(projector *pj);

static void report_ready(projector *pj);

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *ps, void *opaque)
{
    projector *pj = opaque;
    char desc[1024];
    if (pj->inflight) { /* finish it while its partitions are ours */
        int r = settle(pj);
        if (r == 1 || r < 0)
            pj->abort_rc = r;
    }
    pj->rebalanced = 1;
    ckmap_clear(&pj->cache);
    parts_clear(pj);
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
    report_ready(pj);
}

/* ---- setup --------------------------------------------------------------- */

static int kafka_set(rd_kafka_conf_t *conf, const char *k, const char *v,
                     char *err, size_t errlen)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        (void)evl_seterr(err, errlen, EVL_EPERMANENT, "kafka property %s: %s",
                         k, errstr);
        return -1;
    }
    return 0;
}

/* Create the consumer (subscribe() subscribes it). Returns 0, or 2
 * (configuration) with the reason in err. */
static int kafka_open(projector *pj, char *err, size_t errlen)
{
    const evl_config *cfg = pj->cfg;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char client[300];
    if (pj->ninstances > 1)
        snprintf(client, sizeof client, "evlua-projection-%s-%d", pj->name,
                 pj->instance + 1);
    else
        snprintf(client, sizeof client, "evlua-projection-%s", pj->name);
    if (kafka_set(conf, "client.id", client, err, errlen))
        goto bad;
    for (int i = 0; i < cfg->nkafka; i++) {
        const char *k = cfg->kafka[i].key, *v = cfg->kafka[i].value;
        if (strcmp(k, "partition.assignment.strategy") == 0)
            continue; /* kafka.h's policy, below */
        char member[300];
        if (strcmp(k, "group.instance.id") == 0 && cfg->instance)
            continue; /* derived from `instance`, below */
        if (strcmp(k, "group.instance.id") == 0 && pj->ninstances > 1) {
            /* static members must differ: one per thread */
            snprintf(member, sizeof member, "%s-%d", v, pj->instance + 1);
            v = member;
        }
        if (kafka_set(conf, k, v, err, errlen))
            goto bad;
    }
    /* static membership (kafka.h): one id per thread of each projection,
     * stable across restarts while projection.threads stays the same */
    char suffix[300], member[300];
    snprintf(suffix, sizeof suffix, "proj.%s.%d", pj->name, pj->instance + 1);
    evl_kafka_instance_id(cfg, suffix, member, sizeof member);
    if (*member && kafka_set(conf, "group.instance.id", member, err, errlen))
        goto bad;
    if (!evl_config_kafka(cfg, "auto.offset.reset") &&
        kafka_set(conf, "auto.offset.reset", "earliest", err, errlen))
        goto bad;
    /* librdkafka prefetches up to 64 MB per consumer by default; a few
     * batches ahead is all a projector uses */
    if (!evl_config_kafka(cfg, "queued.max.messages.kbytes") &&
        kafka_set(conf, "queued.max.messages.kbytes", "16384", err, errlen))
        goto bad;
    if (kafka_set(conf, "partition.assignment.strategy",
                  evl_kafka_assignor(cfg, "range,roundrobin", client), err,
                  errlen))
        goto bad;
    /* what exactly-once needs, whatever the config says */
    if (kafka_set(conf, "group.id", pj->group_id, err, errlen) ||
        kafka_set(conf, "isolation.level", "read_committed", err, errlen) ||
        kafka_set(conf, "enable.auto.commit", "false", err, errlen) ||
        kafka_set(conf, "enable.auto.offset.store", "false", err, errlen) ||
        kafka_set(conf, "enable.partition.eof",
                  pj->opts.until_caught_up ? "true" : "false", err, errlen))
        goto bad;
    rd_kafka_conf_set_opaque(conf, pj);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);

    char errstr[512];
    pj->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!pj->rk) {
        (void)evl_seterr(err, errlen, EVL_EPERMANENT, "rd_kafka_new: %s",
                         errstr);
        goto bad;
    }
    conf = NULL; /* owned by rk now */
    rd_kafka_poll_set_consumer(pj->rk);
    return 0;
bad:
    if (conf)
        rd_kafka_conf_destroy(conf);
    return 2;
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
static int subscribe(projector *pj, char *err, size_t errlen)
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
    pj->nsubscribed = sub->cnt;
    if (sub->cnt > 0) {
        e = rd_kafka_subscribe(pj->rk, sub);
        evl_kafka_wait_begin(&pj->wait);
    }
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        (void)evl_seterr(err, errlen, EVL_EPERMANENT, "rd_kafka_subscribe: %s",
                         rd_kafka_err2str(e));
        return 2;
    }
    return 0;
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
static void ensure_topics(projector *pj)
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
    pj->missing_checked = now_s();
}

static void report_ready(projector *pj);

/* Between batches, every MISSING_CHECK_S while topics are missing: look
 * them up again (creating them when configured to: the cluster may not
 * have answered before); subscribe again when some exist now. Returns 0,
 * or 1 on a failure to subscribe (logged). */
static int check_missing(projector *pj)
{
    if (pj->missing.n == 0 || now_s() - pj->missing_checked < MISSING_CHECK_S)
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
    pj->missing_checked = now_s();
    if (!appeared) {
        report_ready(pj);
        return 0;
    }
    if (subscribe(pj, err, sizeof err) != 0) {
        evl_log(EVL_LOG_ERROR, "cannot subscribe", "projection", pj->name,
                "error", err, NULL);
        return 1;
    }
    evl_metrics_ready(pj->component, 0,
                      pj->missing.n ? pj->missing_why
                                    : "waiting for a partition assignment");
    return 0;
}

/* ---- metrics and readiness ------------------------------------------------
 */

/* Ready unless a topic is missing or a partition is halted (on_error =
 * halt). */
static void report_ready(projector *pj)
{
    if (pj->missing.n > 0) {
        evl_metrics_ready(pj->component, 0, pj->missing_why);
        return;
    }
    for (int p = 0; p < pj->nparts; p++) {
        const part *pt = &pj->parts[p];
        if (!pt->halted)
            continue;
        char why[768];
        snprintf(why, sizeof why, "partition %s[%d] halted at offset %lld: %s",
                 pt->topic, (int)pt->partition, (long long)pt->halt_offset,
                 pt->halt_error ? pt->halt_error : "");
        evl_metrics_ready(pj->component, 0, why);
        return;
    }
    evl_metrics_ready(pj->component, 1, NULL);
}

static void metrics_init(projector *pj)
{
    static const char *const outcomes[5] = {"consumed", "skipped", "applied",
                                            "replayed", "parked"};
    char labels[256];
    for (int i = 0; i < 5; i++) {
        evl_metrics_labels(labels, sizeof labels, "projection", pj->name,
                           "outcome", outcomes[i], NULL);
        pj->m_events[i] = evl_metrics_counter(
            "evlua_projection_events_total",
            "Events seen by a projection, by outcome", labels);
    }
    evl_metrics_labels(labels, sizeof labels, "projection", pj->name, NULL);
    pj->m_batches =
        evl_metrics_counter("evlua_projection_batches_total",
                            "Batches committed in PostgreSQL", labels);
    if (pj->ninstances > 1)
        snprintf(pj->component, sizeof pj->component, "projection %s#%d",
                 pj->name, pj->instance + 1);
    else
        snprintf(pj->component, sizeof pj->component, "projection %s",
                 pj->name);
    evl_metrics_labels(labels, sizeof labels, "pipeline", pj->component, NULL);
    pj->m_lua_memory = evl_metrics_gauge(
        "evlua_lua_memory_bytes", "Heap of a pipeline's Lua state", labels);
    pj->m_lua_seconds = evl_metrics_counter(
        "evlua_lua_handler_seconds_total",
        "Time spent in Lua handlers (aggregate handle, projection handlers)",
        labels);
    evl_metrics_labels(labels, sizeof labels, "projection", pj->name, NULL);
    static const double sizes[] = {1,   2,   5,    10,   50,
                                   100, 500, 1000, 5000, 10000};
    pj->m_batch_size = evl_metrics_histogram(
        "evlua_projection_batch_size", "Events per projection batch", labels,
        sizes, sizeof sizes / sizeof sizes[0]);
    pj->m_batch_seconds = evl_metrics_histogram(
        "evlua_projection_batch_seconds",
        "Time from a batch being collected to its PostgreSQL commit", labels,
        NULL, 0);
    pj->m_parked = evl_metrics_gauge(
        "evlua_parked_aggregates",
        "Aggregates with events waiting in evlua_parked", labels);
    evl_metrics_ready(pj->component, 0, "starting");
}

/* Add what happened since the last call to the counters. */
static void metrics_publish(projector *pj)
{
    const evl_projector_stats *s = &pj->stats;
    evl_projector_stats *p = &pj->published;
    long long now[5] = {s->messages, s->skipped, s->applied, s->replayed,
                        s->parked};
    long long was[5] = {p->messages, p->skipped, p->applied, p->replayed,
                        p->parked};
    for (int i = 0; i < 5; i++)
        if (now[i] > was[i])
            evl_metric_add(pj->m_events[i], (double)(now[i] - was[i]));
    if (s->batches > p->batches)
        evl_metric_add(pj->m_batches, (double)(s->batches - p->batches));
    *p = *s;
    if (pj->host)
        evl_metric_set(pj->m_lua_memory, (double)evl_luahost_memory(pj->host));
    evl_metric_add(pj->m_lua_seconds, pj->lua_s);
    pj->lua_s = 0;
}

/* evlua_parked_aggregates from the table (parked retry and drop run in
 * other processes): after a batch that parked, and every 10 s. Only with
 * nothing in flight on the connection. */
static void count_parked(projector *pj)
{
    double now = now_s();
    if (!pj->parked_dirty && now - pj->parked_counted < 10)
        return;
    char err[EVL_ERRLEN];
    const char *vals[1] = {pj->name};
    PGresult *res = NULL;
    if (!evl_pg_ok(pj->pg) ||
        evl_pg_query(pj->pg,
                     "SELECT count(*) FROM evlua_checkpoints "
                     "WHERE projection = $1 AND parked",
                     1, vals, &res, err, sizeof err) != EVL_OK)
        return; /* the next batch finds out; nothing depends on it */
    pj->parked_dirty = 0;
    pj->parked_counted = now;
    evl_metric_set(pj->m_parked, strtod(PQgetvalue(res, 0, 0), NULL));
    PQclear(res);
}

/* A transient failure: count it by SQLSTATE class (from the "[XXXXX]" the
 * pg module appends; "connection" when there is none) and say why the
 * projection is not ready. */
static void metrics_retry(projector *pj, const char *reason)
{
    char cls[16] = "connection", labels[256];
    const char *b = reason ? strrchr(reason, '[') : NULL;
    if (b && strlen(b) >= 7 && b[6] == ']')
        snprintf(cls, sizeof cls, "%.2s", b + 1);
    evl_metrics_labels(labels, sizeof labels, "projection", pj->name,
                       "sqlstate_class", cls, NULL);
    evl_metric_add(evl_metrics_counter("evlua_db_retries_total",
                                       "Transient database errors retried",
                                       labels),
                   1);
    evl_metrics_ready(pj->component, 0, reason ? reason : "retrying");
}

static void log_retry(projector *pj, const char *msg, const char *reason,
                      int attempt, long ms)
{
    metrics_retry(pj, reason);
    char n[24], d[24];
    snprintf(n, sizeof n, "%d", attempt + 1);
    snprintf(d, sizeof d, "%ld", ms);
    evl_log(EVL_LOG_WARN, msg, "projection", pj->name, "reason", reason,
            "attempt", n, "delay_ms", d, NULL);
}

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
        long ms = backoff_ms(attempt);
        log_retry(pj, what, err, attempt, ms);
        if (nap(ms))
            return EVL_ETRANSIENT;
    }
}

static evl_err do_connect(projector *pj, char *err, size_t errlen)
{
    char app[128];
    snprintf(app, sizeof app, "evlua projector %.80s", pj->name);
    return evl_pg_open(pj->cfg->pg_conninfo, app, &pj->pg, err, errlen);
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

/* Everything before the first poll. Returns an exit code (0: go on). */
static int setup(projector *pj, const evl_luahost *proto)
{
    char err[EVL_ERRLEN];
    const evl_config *cfg = pj->cfg;

    if (evl_luahost_reload(proto, &pj->host, NULL, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "projector cannot load the scripts",
                "projection", pj->name, "error", err, NULL);
        return 2;
    }
    pj->proj = evl_luahost_projection_get(pj->host, pj->name);
    if (!pj->proj) {
        evl_log(EVL_LOG_ERROR, "no projection script has this name",
                "projection", pj->name, NULL);
        return 2;
    }
    evl_projection_cfg pc = evl_config_projection(cfg, pj->name);
    const char *iso = pj->opts.isolation ? pj->opts.isolation : pc.isolation;
    const char *onerr = pj->opts.on_error ? pj->opts.on_error : pc.on_error;
    pj->iso = parse_iso(iso ? iso : "aggregate");
    if (pj->iso < 0) {
        evl_log(EVL_LOG_ERROR,
                "unknown isolation (aggregate, batch or aggregate-tx)",
                "projection", pj->name, "isolation", iso, NULL);
        return 2;
    }
    if (onerr && strcmp(onerr, "park") != 0 && strcmp(onerr, "halt") != 0) {
        evl_log(EVL_LOG_ERROR, "unknown on_error (park or halt)", "projection",
                pj->name, "on_error", onerr, NULL);
        return 2;
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
    evl_projector_group(cfg, pj->name, pj->group_id, sizeof pj->group_id);
    if (evl_projector_topics(cfg, pj->host, pj->name, &pj->topics) == 0) {
        evl_log(EVL_LOG_ERROR,
                "projection has no topics: configure projection.topics (or "
                "projection.each.NAME.topics), or load the aggregate scripts "
                "whose events topics it reads",
                "projection", pj->name, NULL);
        return 2;
    }
    if (!cfg->pg_conninfo) {
        evl_log(EVL_LOG_ERROR,
                "no database configured (postgres / EVLUA_PG_CONNINFO)",
                "projection", pj->name, NULL);
        return 2;
    }

    evl_err e = with_retry(pj, "cannot connect to PostgreSQL; retrying",
                           do_connect, err, sizeof err);
    if (e == EVL_ETRANSIENT)
        return -1; /* stopped while waiting */
    if (e != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "bad PostgreSQL settings", "projection",
                pj->name, "error", err, NULL);
        return 2;
    }
    e = with_retry(pj, "cannot create evlua's tables; retrying", do_tables, err,
                   sizeof err);
    if (e == EVL_ETRANSIENT)
        return -1;
    if (e != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "cannot create evlua's tables", "projection",
                pj->name, "error", err, NULL);
        return 2;
    }
    e = with_retry(pj, "cannot run the projection's schema; retrying",
                   do_schema, err, sizeof err);
    if (e == EVL_ETRANSIENT)
        return -1;
    if (e != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "the projection's schema failed", "projection",
                pj->name, "script", pj->proj->script, "error", err, NULL);
        return 2;
    }
    if (kafka_open(pj, err, sizeof err) != 0) {
        evl_log(EVL_LOG_ERROR, "cannot create the Kafka consumer", "projection",
                pj->name, "error", err, NULL);
        return 2;
    }
    ensure_topics(pj);
    if (subscribe(pj, err, sizeof err) != 0) {
        evl_log(EVL_LOG_ERROR, "cannot subscribe", "projection", pj->name,
                "error", err, NULL);
        return 2;
    }
    evl_lifecycle_reload_requested(&pj->hup_seen);

    char topics[512] = "", bs[24], conn[512];
    for (int i = 0; i < pj->topics.n; i++) {
        size_t o = strlen(topics);
        snprintf(topics + o, sizeof topics - o, "%s%s", i ? "," : "",
                 pj->topics.v[i]);
    }
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
    count_parked(pj);
    return 0;
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
        int p = rkm->rkt ? part_find(pj, rd_kafka_topic_name(rkm->rkt),
                                     rkm->partition)
                         : -1;
        if (p >= 0 && rkm->offset > pj->parts[p].pos)
            pj->parts[p].pos = rkm->offset;
        return;
    }
    if (rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
        if (!pj->fatal) /* else on_kafka_error said it */
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
        arena_shrink(&b->ar, ARENA_KEEP);
        arena_shrink(&b->attempt_ar, ARENA_KEEP);
    }
    if (!idle)
        pj->idle_since = 0;
    else if (pj->idle_since == 0)
        pj->idle_since = now_s();
    if (pj->bytes_since_trim == 0 ||
        (!idle && pj->bytes_since_trim < TRIM_BYTES) ||
        (idle && now_s() - pj->idle_since < IDLE_TRIM_S))
        return;
    pj->bytes_since_trim = 0;
    if (idle && !pj->inflight) {
        arena_shrink(&pj->bufs[0].ar, 0);
        arena_shrink(&pj->bufs[0].attempt_ar, 0);
        arena_shrink(&pj->bufs[1].ar, 0);
        arena_shrink(&pj->bufs[1].attempt_ar, 0);
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
            double left = deadline - now_s();
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
        if (pj->fatal) {
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
            pj->first_msg = now_s();
        if (b->nmsgs == 1)
            deadline = now_s() + pj->linger_ms / 1000.0;
        if (evl_lifecycle_stopping())
            break; /* finish what we have */
    }
    return (int)b->nmsgs;
}

/* ---- preparing a batch: parse once --------------------------------------- */

static int group_of(projector *pj, batch *b, const char *atype, const char *aid)
{
    size_t lt = strlen(atype), li = strlen(aid), klen = lt + 1 + li;
    char *key = arena_alloc(&b->ar, klen);
    memcpy(key, atype, lt + 1);
    memcpy(key + lt + 1, aid, li);
    uint64_t h = hash_key(key, klen);
    if (2 * (b->ngroups + 1) > b->gcap) {
        b->gcap = b->gcap ? b->gcap * 2 : 1024;
        free(b->gindex);
        b->gindex = evl_xmalloc(sizeof(int) * b->gcap);
        for (size_t i = 0; i < b->gcap; i++)
            b->gindex[i] = -1;
        for (size_t g = 0; g < b->ngroups; g++) {
            size_t i = (size_t)b->groups[g].hash & (b->gcap - 1);
            while (b->gindex[i] >= 0)
                i = (i + 1) & (b->gcap - 1);
            b->gindex[i] = (int)g;
        }
    }
    size_t i = (size_t)h & (b->gcap - 1);
    while (b->gindex[i] >= 0) {
        pgroup *g = &b->groups[b->gindex[i]];
        if (g->hash == h && g->klen == klen && memcmp(g->key, key, klen) == 0)
            return b->gindex[i];
        i = (i + 1) & (b->gcap - 1);
    }
    if (b->ngroups == b->capgroups) {
        b->capgroups = b->capgroups ? b->capgroups * 2 : 512;
        b->groups = evl_xrealloc(b->groups, sizeof(pgroup) * b->capgroups);
    }
    pgroup *g = &b->groups[b->ngroups];
    memset(g, 0, sizeof *g);
    g->key = key;
    g->klen = klen;
    g->hash = h;
    g->atype = key; /* key starts with the type and its '\0' */
    g->aid = arena_strndup(&b->ar, aid, li);
    g->first = g->last = -1;
    b->gindex[i] = (int)b->ngroups;
    return (int)b->ngroups++;
}

static const char *header(const rd_kafka_message_t *rkm, const char *name,
                          size_t *len)
{
    rd_kafka_headers_t *hdrs;
    const void *v = NULL;
    if (rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    if (rd_kafka_header_get_last(hdrs, name, &v, len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR ||
        !v)
        return NULL;
    return v;
}

static int valid_text(const char *s)
{
    return evl_utf8_check(s, strlen(s)) < 0;
}

/* What read_fields found. */
enum { FIELDS_OK, FIELDS_SKIP, FIELDS_NOT_OBJECT, FIELDS_NOT_JSON };

/* A sequence number as JSON gave it: a whole number in [1, 2^53 - 1],
 * else -1. */
static long long seq_of(double d)
{
    if (d >= 1 && d <= 9007199254740991.0 && d == (double)(long long)d)
        return (long long)d;
    return -1;
}

/* Read the grouping fields of rkm's payload: "type" (only when *type is
 * NULL: no header), "aggregate_type", "aggregate_id" (strings) and
 * "sequence". Fields that are missing or of the wrong kind stay NULL /
 * -1. FIELDS_SKIP: the JSON type is not handled by the projection. The
 * payload is checked exactly as the Lua decoder will check it, without
 * building anything (no cJSON tree: that was a third of the projector's
 * time); FIELDS_NOT_JSON when that check fails. */
static int read_fields(projector *pj, const rd_kafka_message_t *rkm, arena *ar,
                       const char **type, const char **atype, const char **aid,
                       long long *seq)
{
    evl_json_member m[4] = {{.name = "type"},
                            {.name = "aggregate_type"},
                            {.name = "aggregate_id"},
                            {.name = "sequence"}};
    char err[EVL_ERRLEN];
    int is_object;
    if (evl_json_members(rkm->payload ? rkm->payload : "", rkm->len, m, 4,
                         &pj->jscratch, &is_object, err, sizeof err) != EVL_OK)
        return FIELDS_NOT_JSON;
    if (!is_object)
        return FIELDS_NOT_OBJECT;
    const char *text = pj->jscratch.data;
    /* decoded strings are valid UTF-8 without NUL bytes: PostgreSQL text */
    if (!*type && m[0].type == EVL_JSON_STRING) {
        *type = arena_strndup(ar, text + m[0].off, m[0].len);
        if (!evl_luahost_projection_handles(pj->proj, *type))
            return FIELDS_SKIP;
    }
    if (m[1].type == EVL_JSON_STRING)
        *atype = arena_strndup(ar, text + m[1].off, m[1].len);
    if (m[2].type == EVL_JSON_STRING)
        *aid = arena_strndup(ar, text + m[2].off, m[2].len);
    if (m[3].type == EVL_JSON_NUMBER)
        *seq = m[3].isint ? (m[3].integer >= 1 ? m[3].integer : -1)
                          : seq_of(m[3].num);
    return FIELDS_OK;
}

/* read_fields for a payload the strict check refused, with cJSON's lax
 * reading, so that such an event is grouped (and parked) under the
 * aggregate it names, its handler reporting why it cannot be read. */
static int read_fields_lax(projector *pj, const rd_kafka_message_t *rkm,
                           arena *ar, const char **type, const char **atype,
                           const char **aid, long long *seq)
{
    int r = FIELDS_OK;
    cJSON *root =
        cJSON_ParseWithLength(rkm->payload ? rkm->payload : "", rkm->len);
    if (!root || !cJSON_IsObject(root)) {
        r = FIELDS_NOT_OBJECT;
        goto out;
    }
    const cJSON *jt = cJSON_GetObjectItemCaseSensitive(root, "type");
    const cJSON *ja = cJSON_GetObjectItemCaseSensitive(root, "aggregate_type");
    const cJSON *ji = cJSON_GetObjectItemCaseSensitive(root, "aggregate_id");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(root, "sequence");
    if (!*type && cJSON_IsString(jt)) {
        *type = arena_text(ar, jt->valuestring, strlen(jt->valuestring));
        if (!evl_luahost_projection_handles(pj->proj, *type)) {
            r = FIELDS_SKIP;
            goto out;
        }
    }
    if (cJSON_IsString(ja) && valid_text(ja->valuestring))
        *atype = arena_strndup(ar, ja->valuestring, strlen(ja->valuestring));
    if (cJSON_IsString(ji) && valid_text(ji->valuestring))
        *aid = arena_strndup(ar, ji->valuestring, strlen(ji->valuestring));
    if (cJSON_IsNumber(js))
        *seq = seq_of(js->valuedouble);
out:
    cJSON_Delete(root);
    return r;
}

/* Read the messages into events and groups (no database, no Lua). */
static void prepare_batch(projector *pj, batch *b)
{
    arena *ar = &b->ar;
    arena_reset(ar);
    b->nevs = b->ngroups = 0;
    b->nfail = 0;
    if (b->gcap == 0) {
        b->gcap = 1024;
        b->gindex = evl_xmalloc(sizeof(int) * b->gcap);
    }
    for (size_t i = 0; i < b->gcap; i++)
        b->gindex[i] = -1;
    if (b->nnext < pj->nparts) {
        b->next = evl_xrealloc(b->next, sizeof(int64_t) * (size_t)pj->nparts);
        b->nnext = pj->nparts;
    }
    for (int p = 0; p < b->nnext; p++)
        b->next[p] = -1;

    for (size_t m = 0; m < b->nmsgs; m++) {
        rd_kafka_message_t *rkm = b->msgs[m];
        int p = part_find(pj, rd_kafka_topic_name(rkm->rkt), rkm->partition);
        if (p < 0 ||
            (pj->parts[p].halted && rkm->offset >= pj->parts[p].halt_offset))
            continue; /* not ours (any more), or stopped */
        if (rkm->offset + 1 > b->next[p])
            b->next[p] = rkm->offset + 1;
        pj->stats.messages++;

        size_t hl = 0;
        const char *ht = header(rkm, "evlua-type", &hl);
        const char *type = NULL;
        if (ht) {
            type = arena_text(ar, ht, hl);
            if (!evl_luahost_projection_handles(pj->proj, type)) {
                pj->stats.skipped++;
                continue;
            }
        }

        const char *bad = NULL, *atype = NULL, *aid = NULL;
        long long seq = -1;
        int r = read_fields(pj, rkm, ar, &type, &atype, &aid, &seq);
        if (r == FIELDS_NOT_JSON) /* as lax as before: cJSON */
            r = read_fields_lax(pj, rkm, ar, &type, &atype, &aid, &seq);
        if (r == FIELDS_SKIP) {
            pj->stats.skipped++;
            continue;
        }
        if (r == FIELDS_NOT_OBJECT)
            bad = "invalid event: the value is not a JSON object";
        else if (!type)
            bad = "invalid event: no evlua-type header and no string "
                  "\"type\"";
        else if (!atype)
            bad = "invalid event: \"aggregate_type\" is not a UTF-8 "
                  "string";
        else if (!aid)
            bad = "invalid event: \"aggregate_id\" is not a UTF-8 string";
        else if (seq < 0)
            bad = "invalid event: \"sequence\" is not an integer >= 1";
        if (bad) {
            /* park it under the aggregate the message says it is of */
            size_t l = 0;
            const char *h = header(rkm, "evlua-aggregate-type", &l);
            if (!atype)
                atype = h ? arena_text(ar, h, l) : "?";
            if (!aid)
                aid = rkm->key ? arena_text(ar, rkm->key, rkm->key_len) : "";
        }

        if (b->nevs == b->capevs) {
            b->capevs = b->capevs ? b->capevs * 2 : 512;
            b->evs = evl_xrealloc(b->evs, sizeof(pev) * b->capevs);
        }
        int e = (int)b->nevs++;
        pev *ev = &b->evs[e];
        memset(ev, 0, sizeof *ev);
        ev->rkm = rkm;
        ev->part = p;
        ev->seq = seq;
        ev->type = type;
        ev->bad = bad;
        ev->next = -1;
        ev->group = group_of(pj, b, atype, aid);
        pgroup *g = &b->groups[ev->group];
        if (g->last >= 0)
            b->evs[g->last].next = e;
        else
            g->first = e;
        g->last = e;
    }
}

/* ---- checkpoints --------------------------------------------------------- */

static void arr_reset(evl_buf *b)
{
    b->len = 0;
}

static void arr_end(evl_buf *b)
{
    if (b->len == 0)
        evl_buf_putc(b, '{');
    evl_buf_putc(b, '}');
    evl_buf_putc(b, '\0');
}

static void arr_raw(evl_buf *b, const char *s)
{
    evl_buf_putc(b, b->len == 0 ? '{' : ',');
    evl_buf_puts(b, s);
}

static void arr_text(evl_buf *b, const char *s)
{
    evl_pg_array_add(b, s, strlen(s), b->len == 0);
}

/* May group g's checkpoint be assumed absent without asking? When its
 * first event in the batch has sequence 1 the aggregate is most likely
 * new; if not, its checkpoint write fails (40001) and the batch is
 * retried on the checkpoints read from the database, and the guess is
 * not made for a while (a replay from the beginning pays once). */
static int guess_new(const projector *pj, const batch *b, const pgroup *g)
{
    return pj->guess_off == 0 && b->evs[g->first].seq == 1;
}

/* Does b need checkpoints from the database (neither cached nor
 * guessed)? */
static int needs_load(const projector *pj, const batch *b)
{
    for (size_t gi = 0; gi < b->ngroups; gi++) {
        const pgroup *g = &b->groups[gi];
        if (!ckmap_get(&pj->cache, g->key, g->klen, g->hash) &&
            !guess_new(pj, b, g))
            return 1;
    }
    return 0;
}

/* Read the checkpoints of the batch's aggregates the cache lacks (or
 * guess them: guess_new). */
static evl_err load_checkpoints(projector *pj, batch *b, char *err,
                                size_t errlen)
{
    size_t n = 0;
    arr_reset(&pj->a[0]);
    arr_reset(&pj->a[1]);
    for (size_t g = 0; g < b->ngroups; g++) {
        const pgroup *gr = &b->groups[g];
        if (ckmap_get(&pj->cache, gr->key, gr->klen, gr->hash))
            continue;
        if (guess_new(pj, b, gr)) {
            ckmap_put(&pj->cache, gr->key, gr->klen, gr->hash, -1, 0);
            continue;
        }
        arr_text(&pj->a[0], gr->atype);
        arr_text(&pj->a[1], gr->aid);
        n++;
    }
    if (n == 0)
        return EVL_OK;
    arr_end(&pj->a[0]);
    arr_end(&pj->a[1]);
    const char *vals[3] = {pj->name, pj->a[0].data, pj->a[1].data};
    PGresult *res = NULL;
    evl_err e = evl_pg_query(pj->pg, EVL_PG_LOAD_CHECKPOINTS_SQL, 3, vals, &res,
                             err, errlen);
    if (e != EVL_OK)
        return e == EVL_EPERMANENT ? EVL_EFATAL : e;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *t = PQgetvalue(res, r, 0), *i = PQgetvalue(res, r, 1);
        size_t lt = strlen(t), li = strlen(i);
        char *key = arena_alloc(&b->attempt_ar, lt + 1 + li);
        memcpy(key, t, lt + 1);
        memcpy(key + lt + 1, i, li);
        ckmap_put(&pj->cache, key, lt + 1 + li, hash_key(key, lt + 1 + li),
                  strtoll(PQgetvalue(res, r, 2), NULL, 10),
                  PQgetvalue(res, r, 3)[0] == 't');
    }
    PQclear(res);
    for (size_t g = 0; g < b->ngroups; g++) {
        const pgroup *gr = &b->groups[g];
        if (!ckmap_get(&pj->cache, gr->key, gr->klen, gr->hash))
            ckmap_put(&pj->cache, gr->key, gr->klen, gr->hash, -1, 0);
    }
    return EVL_OK;
}

/* ---- deciding ------------------------------------------------------------ */

static const char behind_msg[] =
    "not applied: an earlier event of this aggregate is parked";

static void halt_part(projector *pj, const pev *ev, const char *why)
{
    part *pt = &pj->parts[ev->part];
    if (pt->halted && pt->halt_offset <= ev->rkm->offset)
        return;
    pt->halted = 1;
    pt->halt_new = 1;
    pt->halt_offset = ev->rkm->offset;
    free(pt->halt_error);
    pt->halt_error = evl_xstrdup(why);
}

/* After states changed: events of halted partitions, group summaries. */
static void summarize(projector *pj, batch *b)
{
    for (size_t e = 0; e < b->nevs; e++) {
        pev *ev = &b->evs[e];
        const part *pt = &pj->parts[ev->part];
        if (pt->halted && ev->rkm->offset >= pt->halt_offset)
            ev->state = EV_HALT;
    }
    for (size_t gi = 0; gi < b->ngroups; gi++) {
        pgroup *g = &b->groups[gi];
        g->touched = 0;
        g->new_seq = g->prev_seq > 0 ? g->prev_seq : 0;
        g->new_parked = g->prev_parked;
        for (int i = g->first; i >= 0; i = b->evs[i].next) {
            const pev *ev = &b->evs[i];
            if (ev->state == EV_APPLY) {
                g->touched = 1;
                if (ev->seq > g->new_seq)
                    g->new_seq = ev->seq;
            } else if (ev->state == EV_PARK) {
                g->touched = 1;
                g->new_parked = 1;
            }
        }
    }
}

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
        ps->sql = arena_strndup(&b->attempt_ar, st->sql, st->sql_len);
        ps->nparams = (int)st->nparams;
        ps->values =
            arena_alloc(&b->attempt_ar, sizeof(char *) * (st->nparams + 1));
        ps->ev = (int)(ev - b->evs);
        for (size_t k = 0; k < st->nparams; k++) {
            const evl_luahost_param *pa = &st->params[k];
            ps->values[k] =
                pa->type == EVL_PARAM_NULL
                    ? NULL
                    : arena_strndup(&b->attempt_ar, pa->text, pa->len);
        }
    }
}

/* Decide every event of the batch on the cached checkpoints, running the
 * handlers of those to apply. */
static evl_err project_one(projector *pj, const pev *ev, char *err,
                           size_t errlen)
{
    double t = now_s();
    evl_err e = evl_luahost_project(pj->host, pj->name, ev->rkm->payload,
                                    ev->rkm->len, &pj->lstmts, err, errlen);
    pj->lua_s += now_s() - t;
    return e;
}

static void decide(projector *pj, batch *b)
{
    char err[EVL_ERRLEN];
    b->nstmts = 0;
    for (size_t gi = 0; gi < b->ngroups; gi++) {
        pgroup *g = &b->groups[gi];
        const ckpt *c = ckmap_get(&pj->cache, g->key, g->klen, g->hash);
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
                ev->error = behind_msg;
            } else if (ev->fail || ev->bad) {
                const char *why = ev->fail ? ev->fail : ev->bad;
                if (pj->halt) {
                    halt_part(pj, ev, why);
                    ev->state = EV_HALT;
                } else {
                    ev->state = EV_PARK;
                    ev->error = why;
                    parked = 1;
                }
            } else if (project_one(pj, ev, err, sizeof err) != EVL_OK) {
                ev->fail = arena_text(&b->ar, err, strlen(err));
                if (pj->halt) {
                    halt_part(pj, ev, ev->fail);
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
    summarize(pj, b);
}

/* A statement of ev failed permanently with msg: park ev and the rest of
 * its aggregate, or halt its partition. */
static void mark_failure(projector *pj, batch *b, pev *ev, const char *msg)
{
    ev->fail = arena_text(&b->ar, msg, strlen(msg));
    if (pj->halt) {
        halt_part(pj, ev, ev->fail);
    } else {
        int on = 0;
        for (int i = b->groups[ev->group].first; i >= 0; i = b->evs[i].next) {
            pev *x = &b->evs[i];
            if (x == ev) {
                on = 1;
                x->state = EV_PARK;
                x->error = x->fail;
            } else if (on && x->state == EV_APPLY) {
                x->state = EV_PARK;
                x->error = behind_msg;
            }
        }
    }
    summarize(pj, b);
}

/* Fail the first applied event of group g with msg (a failure that no
 * statement could be blamed for, narrowed down to g). Returns 0 when g
 * has nothing left to apply. */
static int fail_group(projector *pj, batch *b, size_t g, const char *msg)
{
    for (int i = b->groups[g].first; i >= 0; i = b->evs[i].next)
        if (b->evs[i].state == EV_APPLY) {
            mark_failure(pj, b, &b->evs[i], msg);
            return 1;
        }
    return 0;
}

/* ---- sending ------------------------------------------------------------- */

static void on_failure(void *ud, const evl_pg_failure *f)
{
    projector *pj = ud;
    if (pj->nfails == pj->capfails) {
        pj->capfails = pj->capfails ? pj->capfails * 2 : 16;
        pj->fails = evl_xrealloc(pj->fails, sizeof(failure) * pj->capfails);
    }
    failure *x = &pj->fails[pj->nfails++];
    x->seg = f->seg;
    x->tag = f->tag;
    x->cls = f->cls;
    if (*f->sqlstate)
        snprintf(x->msg, sizeof x->msg, "%s [%s]", f->msg, f->sqlstate);
    else
        snprintf(x->msg, sizeof x->msg, "%s", f->msg);
}

static const char *event_text(projector *pj, batch *b, pev *ev)
{
    if (!ev->stored) {
        const char *p = ev->rkm->payload ? ev->rkm->payload : "";
        size_t n = ev->rkm->len;
        if (evl_utf8_check(p, n) < 0 && !memchr(p, '\0', n)) {
            ev->stored = arena_strndup(&b->ar, p, n);
        } else {
            /* not text PostgreSQL can hold: keep the bytes, in hex */
            char *h = arena_alloc(&b->ar, 2 * n + 32);
            size_t o = (size_t)sprintf(h, "(not UTF-8; hex) ");
            for (size_t i = 0; i < n; i++)
                o += (size_t)sprintf(h + o, "%02x", (unsigned char)p[i]);
            ev->stored = h;
        }
    }
    return ev->stored;
}

static void send_park(projector *pj, batch *b, pev *ev)
{
    const pgroup *g = &b->groups[ev->group];
    const part *pt = &pj->parts[ev->part];
    char seq[24], partition[24], offset[24];
    snprintf(seq, sizeof seq, "%lld", ev->seq);
    snprintf(partition, sizeof partition, "%" PRId32, pt->partition);
    snprintf(offset, sizeof offset, "%" PRId64, ev->rkm->offset);
    const char *vals[10] = {pj->name,
                            g->atype,
                            g->aid,
                            ev->seq >= 0 ? seq : NULL,
                            ev->type,
                            pt->topic,
                            partition,
                            offset,
                            event_text(pj, b, ev),
                            ev->error ? ev->error : "parked"};
    evl_pg_pipe_send(pj->pg, EVL_PG_PARK_SQL, 10, vals,
                     2L * (long)(ev - b->evs) + 1);
}

/* One statement moving the checkpoint of group gi alone. */
static void send_advance_one(projector *pj, batch *b, size_t gi)
{
    const pgroup *g = &b->groups[gi];
    char ps[24], ns[24];
    snprintf(ps, sizeof ps, "%lld", g->prev_seq);
    snprintf(ns, sizeof ns, "%lld", g->new_seq);
    const char *vals[7] = {pj->name,
                           g->atype,
                           g->aid,
                           ps,
                           g->prev_parked ? "t" : "f",
                           ns,
                           g->new_parked ? "t" : "f"};
    evl_pg_pipe_send(pj->pg, EVL_PG_ADVANCE_ONE_SQL, 7, vals, TAG_ADVANCE);
}

/* One statement moving the checkpoints of the touched groups in [lo, hi).
 * Returns 0 when there was none to send. */
static int send_advance(projector *pj, batch *b, size_t lo, size_t hi)
{
    for (int k = 0; k < 6; k++)
        arr_reset(&pj->a[k]);
    size_t n = 0;
    for (size_t gi = lo; gi < hi; gi++) {
        const pgroup *g = &b->groups[gi];
        if (!g->touched || g->done)
            continue;
        char ps[24], ns[24];
        snprintf(ps, sizeof ps, "%lld", g->prev_seq);
        snprintf(ns, sizeof ns, "%lld", g->new_seq);
        arr_text(&pj->a[0], g->atype);
        arr_text(&pj->a[1], g->aid);
        arr_raw(&pj->a[2], ps);
        arr_raw(&pj->a[3], g->prev_parked ? "t" : "f");
        arr_raw(&pj->a[4], ns);
        arr_raw(&pj->a[5], g->new_parked ? "t" : "f");
        n++;
    }
    if (n == 0)
        return 0;
    for (int k = 0; k < 6; k++)
        arr_end(&pj->a[k]);
    const char *vals[7] = {pj->name,      pj->a[0].data, pj->a[1].data,
                           pj->a[2].data, pj->a[3].data, pj->a[4].data,
                           pj->a[5].data};
    evl_pg_pipe_send(pj->pg, EVL_PG_ADVANCE_SQL, 7, vals, TAG_ADVANCE);
    return 1;
}

/* The offset to store for partition p after batch b: after its last
 * message, or the halting event. -1: b has nothing of p. */
static int64_t part_next(const projector *pj, const batch *b, int p)
{
    const part *pt = &pj->parts[p];
    if (p >= b->nnext || b->next[p] < 0)
        return -1;
    if (pt->halted && pt->halt_offset < b->next[p])
        return pt->halt_offset;
    return b->next[p];
}

static int send_offsets(projector *pj, batch *b)
{
    for (int k = 0; k < 3; k++)
        arr_reset(&pj->a[k]);
    int n = 0;
    for (int p = 0; p < pj->nparts; p++) {
        int64_t next = part_next(pj, b, p);
        if (next < 0)
            continue;
        char ps[24], os[24];
        snprintf(ps, sizeof ps, "%" PRId32, pj->parts[p].partition);
        snprintf(os, sizeof os, "%" PRId64, next);
        arr_text(&pj->a[0], pj->parts[p].topic);
        arr_raw(&pj->a[1], ps);
        arr_raw(&pj->a[2], os);
        n++;
    }
    if (n == 0)
        return 0;
    for (int k = 0; k < 3; k++)
        arr_end(&pj->a[k]);
    const char *vals[4] = {pj->name, pj->a[0].data, pj->a[1].data,
                           pj->a[2].data};
    evl_pg_pipe_send(pj->pg, EVL_PG_OFFSETS_SQL, 4, vals, TAG_OFFSETS);
    return 1;
}

static int has_offsets(const projector *pj, const batch *b)
{
    for (int p = 0; p < pj->nparts; p++)
        if (part_next(pj, b, p) >= 0)
            return 1;
    return 0;
}

/* Prepare the statement texts of groups [lo, hi) (each group only if
 * pending) before the segments that use them. */
static void prepare_texts(projector *pj, batch *b, size_t lo, size_t hi,
                          int parks)
{
    evl_pg *pg = pj->pg;
    for (size_t gi = lo; gi < hi; gi++) {
        const pgroup *g = &b->groups[gi];
        if (!g->touched || g->done)
            continue;
        for (int i = g->first; i >= 0; i = b->evs[i].next) {
            const pev *ev = &b->evs[i];
            if (ev->state != EV_APPLY)
                continue;
            for (size_t s = 0; s < ev->nstmt; s++)
                evl_pg_pipe_prepare(pg, b->stmts[ev->stmt0 + s].sql);
        }
    }
    evl_pg_pipe_prepare(pg, EVL_PG_ADVANCE_SQL);
    evl_pg_pipe_prepare(pg, EVL_PG_OFFSETS_SQL);
    if (parks)
        evl_pg_pipe_prepare(pg, EVL_PG_PARK_SQL);
}

/* Send the work of group g: its statements and parked events. */
static int send_group(projector *pj, batch *b, size_t gi, int *parks)
{
    const pgroup *g = &b->groups[gi];
    int n = 0;
    for (int i = g->first; i >= 0; i = b->evs[i].next) {
        pev *ev = &b->evs[i];
        if (ev->state == EV_APPLY) {
            for (size_t s = 0; s < ev->nstmt; s++) {
                const pstmt *ps = &b->stmts[ev->stmt0 + s];
                evl_pg_pipe_send(pj->pg, ps->sql, ps->nparams, ps->values,
                                 2L * (long)(ev->stmt0 + s));
                n++;
            }
        } else if (ev->state == EV_PARK) {
            send_park(pj, b, ev);
            (*parks)++;
        }
    }
    return n;
}

static int range_parks(const batch *b, size_t lo, size_t hi)
{
    for (size_t gi = lo; gi < hi; gi++)
        if (b->groups[gi].touched && b->groups[gi].new_parked)
            return 1;
    return 0;
}

static void rollback(projector *pj)
{
    if (evl_pg_ok(pj->pg) &&
        PQtransactionStatus(evl_pg_conn(pj->pg)) != PQTRANS_IDLE) {
        char err[EVL_ERRLEN];
        evl_pg_exec(pj->pg, "ROLLBACK", err, sizeof err);
    }
}

/* Queue one transaction: the groups [lo, hi), their checkpoints and, when
 * offs, the offsets (in pipeline mode; results are read by range_result).
 * Returns 0 when there was nothing to do (nothing queued). */
static int range_send(projector *pj, batch *b, size_t lo, size_t hi, int offs)
{
    int any = offs && has_offsets(pj, b);
    for (size_t gi = lo; gi < hi && !any; gi++)
        any = b->groups[gi].touched;
    if (!any)
        return 0;
    int parks = 0;
    prepare_texts(pj, b, lo, hi, range_parks(b, lo, hi));
    evl_pg_pipe_prepare(pj->pg, "BEGIN");
    evl_pg_pipe_prepare(pj->pg, "COMMIT");
    evl_pg_pipe_send(pj->pg, "BEGIN", 0, NULL, TAG_BEGIN);
    for (size_t gi = lo; gi < hi; gi++)
        if (b->groups[gi].touched)
            pj->stats.statements += send_group(pj, b, gi, &parks);
    send_advance(pj, b, lo, hi);
    if (offs)
        send_offsets(pj, b);
    evl_pg_pipe_send(pj->pg, "COMMIT", 0, NULL, TAG_COMMIT);
    evl_pg_pipe_sync(pj->pg, 0);
    return 1;
}

static evl_err range_result(projector *pj, char *err, size_t errlen)
{
    pj->nfails = 0;
    evl_err e = evl_pg_pipe_end(pj->pg, on_failure, pj, err, errlen);
    if (e != EVL_OK)
        rollback(pj);
    return e;
}

/* One transaction, waited for. */
static evl_err run_range(projector *pj, batch *b, size_t lo, size_t hi,
                         int offs, char *err, size_t errlen)
{
    int any = offs && has_offsets(pj, b);
    for (size_t gi = lo; gi < hi && !any; gi++)
        any = b->groups[gi].touched;
    if (!any)
        return EVL_OK;
    evl_err e = evl_pg_pipe_begin(pj->pg, err, errlen);
    if (e != EVL_OK)
        return e;
    range_send(pj, b, lo, hi, offs);
    return range_result(pj, err, errlen);
}

/* The cache learns the checkpoints of the touched groups in [lo, hi). */
static void remember(projector *pj, batch *b, size_t lo, size_t hi)
{
    for (size_t gi = lo; gi < hi; gi++) {
        const pgroup *g = &b->groups[gi];
        if (g->touched && !g->done)
            ckmap_put(&pj->cache, g->key, g->klen, g->hash, g->new_seq,
                      g->new_parked);
    }
}

/* Groups [lo, hi) committed: the cache learns what they wrote. */
static void committed(projector *pj, batch *b, size_t lo, size_t hi)
{
    remember(pj, b, lo, hi);
    for (size_t gi = lo; gi < hi; gi++)
        if (b->groups[gi].touched)
            b->groups[gi].done = 1;
}

static evl_err bookkeeping_failed(const failure *f, char *err, size_t errlen)
{
    const char *what = f->tag == TAG_BEGIN     ? "BEGIN"
                       : f->tag == TAG_ADVANCE ? "the checkpoint update"
                       : f->tag == TAG_OFFSETS ? "the evlua_offsets upsert"
                                               : "parking an event";
    return evl_seterr(err, errlen, EVL_EFATAL, "%s failed: %s", what, f->msg);
}

/* Modes aggregate and batch: one transaction per batch; see
 * projector.h for the way failures are handled. first is the outcome of
 * the batch's first transaction when it was already sent (send_async;
 * its failures are in pj->fails), or EVL_OK - 1 when not. */
#define NOT_SENT ((evl_err)-1)
static evl_err exec_batch(projector *pj, batch *b, char *err, size_t errlen,
                          evl_err first)
{
    size_t lo = 0, hi = b->ngroups;
    for (;;) {
        int offs = hi == b->ngroups;
        evl_err e = first != NOT_SENT
                        ? first
                        : run_range(pj, b, lo, hi, offs, err, errlen);
        first = NOT_SENT;
        if (e == EVL_OK) {
            committed(pj, b, lo, hi);
            if (offs)
                return EVL_OK;
            lo = hi;
            hi = b->ngroups;
            continue;
        }
        if (e != EVL_EPERMANENT)
            return e;
        if (pj->nfails == 0)
            return evl_seterr(err, errlen, EVL_EFATAL,
                              "a transaction failed without an error: %s", err);
        const failure *f = &pj->fails[0];
        if (f->tag >= 0 && f->tag % 2 == 0) {
            pev *ev = &b->evs[b->stmts[f->tag / 2].ev];
            size_t g = (size_t)ev->group;
            mark_failure(pj, b, ev, f->msg);
            if (pj->iso == ISO_AGGREGATE && !pj->halt && ++b->nfail > 2 &&
                g >= lo && g < hi)
                hi = g + 1; /* commit up to it, go on after it */
            continue;
        }
        if (f->tag == TAG_COMMIT || f->tag == EVL_PG_TAG_SYNC) {
            /* a deferred constraint: no statement to blame */
            if (pj->halt) {
                for (size_t gi = lo; gi < hi; gi++)
                    for (int i = b->groups[gi].first; i >= 0;
                         i = b->evs[i].next)
                        if (b->evs[i].state == EV_APPLY)
                            halt_part(pj, &b->evs[i], f->msg);
                summarize(pj, b);
                continue;
            }
            if (hi - lo == 1) {
                if (!fail_group(pj, b, lo, f->msg))
                    return bookkeeping_failed(f, err, errlen);
                continue;
            }
            hi = lo + (hi - lo) / 2;
            continue;
        }
        return bookkeeping_failed(f, err, errlen);
    }
}

/* Mode aggregate-tx: one implicit transaction per aggregate, all in one
 * pipeline; the offsets once every aggregate is done. */
static evl_err exec_per_aggregate(projector *pj, batch *b, char *err,
                                  size_t errlen)
{
    for (;;) {
        size_t pending = 0;
        for (size_t gi = 0; gi < b->ngroups; gi++)
            if (b->groups[gi].touched && !b->groups[gi].done)
                pending++;
        if (pending == 0)
            break;
        evl_err e = evl_pg_pipe_begin(pj->pg, err, errlen);
        if (e != EVL_OK)
            return e;
        prepare_texts(pj, b, 0, b->ngroups, range_parks(b, 0, b->ngroups));
        evl_pg_pipe_prepare(pj->pg, EVL_PG_ADVANCE_ONE_SQL);
        for (size_t gi = 0; gi < b->ngroups; gi++) {
            pgroup *g = &b->groups[gi];
            if (!g->touched || g->done)
                continue;
            int parks = 0;
            pj->stats.statements += send_group(pj, b, gi, &parks);
            send_advance_one(pj, b, gi);
            evl_pg_pipe_sync(pj->pg, (long)gi);
        }
        pj->nfails = 0;
        e = evl_pg_pipe_end(pj->pg, on_failure, pj, err, errlen);
        if (e == EVL_ETRANSIENT)
            return e; /* the retry reads the checkpoints again */
        /* every segment that did not fail has committed */
        for (size_t gi = 0; gi < b->ngroups; gi++) {
            pgroup *g = &b->groups[gi];
            if (!g->touched || g->done)
                continue;
            int failed = 0;
            for (size_t k = 0; k < pj->nfails; k++)
                if (pj->fails[k].seg == (long)gi)
                    failed = 1;
            if (!failed)
                committed(pj, b, gi, gi + 1);
        }
        for (size_t k = 0; k < pj->nfails; k++) {
            const failure *f = &pj->fails[k];
            if (f->tag >= 0 && f->tag % 2 == 0)
                mark_failure(pj, b, &b->evs[b->stmts[f->tag / 2].ev], f->msg);
            else if (f->tag == EVL_PG_TAG_SYNC && f->seg >= 0) {
                if (!fail_group(pj, b, (size_t)f->seg, f->msg))
                    return bookkeeping_failed(f, err, errlen);
            } else
                return bookkeeping_failed(f, err, errlen);
        }
    }
    if (!has_offsets(pj, b))
        return EVL_OK;
    evl_err e = evl_pg_pipe_begin(pj->pg, err, errlen);
    if (e != EVL_OK)
        return e;
    evl_pg_pipe_prepare(pj->pg, EVL_PG_OFFSETS_SQL);
    send_offsets(pj, b);
    evl_pg_pipe_sync(pj->pg, -1);
    pj->nfails = 0;
    e = evl_pg_pipe_end(pj->pg, on_failure, pj, err, errlen);
    if (e == EVL_EPERMANENT && pj->nfails > 0)
        return bookkeeping_failed(&pj->fails[0], err, errlen);
    return e;
}

/* ---- after the commit ---------------------------------------------------- */

static void finish_batch(projector *pj, batch *b)
{
    rd_kafka_topic_partition_list_t *offs =
        rd_kafka_topic_partition_list_new(pj->nparts ? pj->nparts : 1);
    for (int p = 0; p < pj->nparts; p++) {
        part *pt = &pj->parts[p];
        int64_t next = part_next(pj, b, p);
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
    pj->last_commit = now_s();
    metrics_publish(pj);
    report_ready(pj);
    evl_metric_observe(pj->m_batch_size, (double)b->nmsgs);
    if (b->t_collected > 0)
        evl_metric_observe(pj->m_batch_seconds, now_s() - b->t_collected);
    for (size_t gi = 0; gi < b->ngroups; gi++)
        if (b->groups[gi].touched && b->groups[gi].new_parked &&
            !b->groups[gi].prev_parked)
            pj->parked_dirty = 1;
    count_parked(pj);

    for (size_t e = 0; e < b->nevs; e++) {
        const pev *ev = &b->evs[e];
        if (ev->state != EV_PARK || !ev->error || ev->error == behind_msg)
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
    arena_reset(&b->attempt_ar);
    for (size_t gi = 0; gi < b->ngroups; gi++)
        b->groups[gi].done = 0;
    e = load_checkpoints(pj, b, err, errlen);
    if (e != EVL_OK)
        return e;
    decide(pj, b);
    if (pj->iso == ISO_AGGREGATE_TX)
        return exec_per_aggregate(pj, b, err, errlen);
    return exec_batch(pj, b, err, errlen, NOT_SENT);
}

/* See batch b through, starting from the outcome e of its last try
 * (EVL_EPERMANENT: of its asynchronous first transaction, failures in
 * pj->fails): permanent errors are handled, transient ones retried with
 * backoff on fresh checkpoints. Returns 0 when committed (and finished),
 * 1 when a stop request left it uncommitted, -1 on a runtime failure. */
static int resolve(projector *pj, batch *b, evl_err e, char *err)
{
    for (int attempt = 0;; attempt++) {
        if (e == EVL_EPERMANENT)
            e = exec_batch(pj, b, err, EVL_ERRLEN, EVL_EPERMANENT);
        if (e == EVL_OK) {
            finish_batch(pj, b);
            return 0;
        }
        if (e != EVL_ETRANSIENT) {
            evl_log(EVL_LOG_ERROR, "projector failed", "projection", pj->name,
                    "error", err, NULL);
            return -1;
        }
        pj->stats.retries++;
        ckmap_clear(&pj->cache);
        pj->guess_off = 1000;
        /* a conflict on a live connection is retried at once, the first
         * time */
        long ms = attempt == 0 && evl_pg_ok(pj->pg) ? 0 : backoff_ms(attempt);
        log_retry(pj, "transient database error; retrying the batch", err,
                  attempt, ms);
        if (nap(ms)) {
            evl_log(EVL_LOG_WARN,
                    "stopping with the batch uncommitted; it will be read "
                    "again",
                    "projection", pj->name, NULL);
            return 1;
        }
        e = attempt_sync(pj, b, err, EVL_ERRLEN);
    }
}

/* Read the outcome of the batch in flight and see it through. Returns 0
 * when it committed as sent, 2 when it committed only after trouble (a
 * batch decided meanwhile must be decided again: the cache it used was
 * dropped), 1 when stopping left it uncommitted, -1 on a failure. Its
 * messages are released. */
static int settle(projector *pj)
{
    batch *b = pj->inflight;
    char err[EVL_ERRLEN];
    if (!b)
        return 0;
    pj->inflight = NULL;
    evl_err e = range_result(pj, err, sizeof err);
    int rc;
    if (e == EVL_OK) {
        committed(pj, b, 0, b->ngroups);
        finish_batch(pj, b);
        rc = 0;
    } else {
        ckmap_clear(&pj->cache); /* it held this batch's hoped-for values */
        pj->guess_off = 1000;
        rc = resolve(pj, b, e, err);
        if (rc == 0)
            rc = 2;
    }
    drop_msgs(pj, b);
    return rc;
}

/* Take the batch just collected through the database. In modes
 * aggregate and batch it is decided (Lua) while the previous batch is
 * still running in PostgreSQL, then sent and left in flight: its results
 * are read when the next batch is ready (or the consumer idles, stops,
 * rebalances or reloads). Returns 0, 1 (stopping; uncommitted) or -1. */
static int process(projector *pj, batch *b)
{
    char err[EVL_ERRLEN];
    int r = 0;
    b->t_collected = now_s();
    prepare_batch(pj, b);
    if (pj->guess_off > 0)
        pj->guess_off--;
    if (pj->inflight && (pj->iso == ISO_AGGREGATE_TX || needs_load(pj, b))) {
        r = settle(pj); /* the checkpoints must be read after it */
        if (r == 1 || r < 0)
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
        e = load_checkpoints(pj, b, err, sizeof err);
    if (e != EVL_OK) {
        r = resolve(pj, b, e == EVL_EPERMANENT ? EVL_EFATAL : e, err);
        goto out;
    }
    arena_reset(&b->attempt_ar);
    for (size_t gi = 0; gi < b->ngroups; gi++)
        b->groups[gi].done = 0;
    decide(pj, b); /* while the batch in flight runs */
    if (pj->inflight) {
        r = settle(pj);
        if (r == 1 || r < 0)
            goto out;
        if (r == 2) { /* decided on values that did not hold */
            r = resolve(pj, b, attempt_sync(pj, b, err, sizeof err), err);
            goto out;
        }
    }
    e = evl_pg_pipe_begin(pj->pg, err, sizeof err);
    if (e != EVL_OK) {
        r = resolve(pj, b, e, err);
        goto out;
    }
    if (!range_send(pj, b, 0, b->ngroups, 1)) {
        evl_pg_pipe_end(pj->pg, NULL, NULL, err, sizeof err);
        finish_batch(pj, b); /* nothing to write */
        r = 0;
        goto out;
    }
    e = evl_pg_pipe_flush(pj->pg, err, sizeof err);
    if (e != EVL_OK) {
        r = resolve(pj, b, e, err);
        goto out;
    }
    remember(pj, b, 0, b->ngroups); /* the next batch is decided on these */
    pj->inflight = b;
    return 0;
out:
    drop_msgs(pj, b);
    return r;
}

/* ---- reload -------------------------------------------------------------- */

static void maybe_reload(projector *pj)
{
    if (!evl_lifecycle_reload_requested(&pj->hup_seen))
        return;
    int r = settle(pj); /* no batch spans two script sets */
    if (r == 1 || r < 0) {
        pj->abort_rc = r;
        return;
    }
    char err[EVL_ERRLEN];
    evl_luahost *nh = NULL;
    if (evl_luahost_reload(pj->host, &nh, NULL, err, sizeof err) != EVL_OK) {
        evl_metrics_scripts(pj->component, "failed", NULL, NULL);
        return; /* logged by luahost; the loaded set stays */
    }
    const evl_luahost_projection *np = evl_luahost_projection_get(nh, pj->name);
    if (!np) {
        evl_log(EVL_LOG_ERROR,
                "the new script set has no projection of this name; keeping "
                "the loaded set",
                "projection", pj->name, NULL);
        evl_luahost_free(nh);
        evl_metrics_scripts(pj->component, "failed", NULL, NULL);
        return;
    }
    for (size_t i = 0; i < np->nschema; i++) {
        evl_err e = EVL_OK;
        if (!evl_pg_ok(pj->pg))
            e = evl_pg_reconnect(pj->pg, err, sizeof err);
        if (e == EVL_OK)
            e = evl_pg_exec_locked(pj->pg, np->schema[i], err, sizeof err);
        if (e != EVL_OK) {
            evl_log(EVL_LOG_ERROR,
                    "the new schema failed; keeping the loaded set",
                    "projection", pj->name, "error", err, NULL);
            evl_luahost_free(nh);
            evl_metrics_scripts(pj->component, "failed", NULL, NULL);
            return;
        }
    }
    evl_metrics_scripts(pj->component, "applied", evl_luahost_hash(pj->host),
                        evl_luahost_hash(nh));
    evl_luahost_free(pj->host);
    pj->host = nh;
    pj->proj = np;
    evl_log(EVL_LOG_INFO, "projection reloaded", "projection", pj->name,
            "scripts", evl_luahost_hash(nh), THREAD_FIELD(pj), NULL);

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
    report_ready(pj);
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

static void report(projector *pj, int final)
{
    if (!pj->opts.progress)
        return;
    double t = now_s();
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
    arena_free(&b->ar);
    arena_free(&b->attempt_ar);
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
    parts_clear(pj);
    evl_pg_close(pj->pg);
    evl_luahost_free(pj->host);
    evl_luahost_stmts_free(&pj->lstmts);
    evl_projector_topics_free(&pj->topics);
    evl_projector_topics_free(&pj->missing);
    ckmap_clear(&pj->cache);
    for (int k = 0; k < 7; k++)
        evl_buf_free(&pj->a[k]);
    evl_buf_free(&pj->jscratch);
    free(pj->fails);
    free(pj);
}

/* What a process/settle result r means for the loop: 0 go on (r is 0 or
 * 2), 1 failure, -1 stop with the batch uncommitted. */
static int stop_code(int r)
{
    return r < 0 ? 1 : r == 1 ? -1 : 0;
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
                        int instance, int ninstances, instance_out *out)
{
    memset(out, 0, sizeof *out);
    projector *pj = evl_xmalloc(sizeof *pj);
    memset(pj, 0, sizeof *pj);
    pj->cfg = cfg;
    pj->name = projection;
    pj->instance = instance;
    pj->ninstances = ninstances;
    snprintf(pj->thread_no, sizeof pj->thread_no, "%d", instance + 1);
    metrics_init(pj);
    if (opts)
        pj->opts = *opts;
    pj->t0 = now_s();

    int rc = setup(pj, proto);
    if (rc != 0) {
        teardown(pj);
        return rc < 0 ? 0 : rc; /* < 0: stopped while waiting */
    }

    int code = 0; /* 1: failure; -1: stop request, batch uncommitted */
    while (!evl_lifecycle_stopping() && !code) {
        maybe_reload(pj);
        if (check_missing(pj) != 0) {
            code = 1;
            break;
        }
        evl_kafka_wait_check(&pj->wait, pj->rk, pj->group_id);
        batch *b = pj->inflight == &pj->bufs[0] ? &pj->bufs[1] : &pj->bufs[0];
        int n = pj->abort_rc ? 0 : collect(pj, b);
        if (pj->abort_rc) {
            code = stop_code(pj->abort_rc);
            break;
        }
        if (n < 0) {
            code = 1;
            break;
        }
        if (n > 0)
            code = stop_code(process(pj, b));
        else if (pj->inflight) /* idle: read what is in flight */
            code = stop_code(settle(pj));
        else
            release_memory(pj, NULL, 1); /* idle, nothing in flight */
        report(pj, 0);
        if (pj->opts.until_caught_up && !pj->inflight && caught_up(pj))
            break;
    }
    if (!code) /* finish the batch in flight, then close */
        code = stop_code(settle(pj));
    rc = code > 0 ? 1 : 0;
    if (pj->fatal)
        rc = 1;
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
    a->rc = run_instance(g->cfg, g->proto, g->name, &a->opts, a->instance, g->n,
                         &a->out);
    if (a->rc != 0 && !g->opts->until_caught_up)
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
        int rc = run_instance(cfg, proto, projection, opts, 0, 1, &out);
        if (opts->stats)
            *opts->stats = out.stats;
        return rc;
    }
    thread_group g = {
        cfg, proto, projection, opts, n, PTHREAD_MUTEX_INITIALIZER, NULL, 0};
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
    pthread_mutex_destroy(&g.mu);
    return rc;
}

int evl_projector_run(const evl_config *cfg, const evl_luahost *proto,
                      const char *projection)
{
    return evl_projector_run_opts(cfg, proto, projection, NULL);
}

/* ---- reset --------------------------------------------------------------- */

evl_err evl_projector_reset_db(evl_pg *pg, evl_luahost *host,
                               const char *projection, char *err, size_t errlen)
{
    const evl_luahost_projection *p =
        evl_luahost_projection_get(host, projection);
    if (!p)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "no projection script has name %s", projection);
    evl_err e = evl_pg_create_tables(pg, err, errlen);
    for (size_t i = 0; e == EVL_OK && i < p->nschema; i++)
        e = evl_pg_exec_locked(pg, p->schema[i], err, errlen);
    if (e != EVL_OK)
        return e;
    evl_luahost_stmts st = {0};
    e = evl_luahost_reset(host, projection, &st, err, errlen);
    if (e != EVL_OK)
        goto out;
    e = evl_pg_exec(pg, "BEGIN", err, errlen);
    for (size_t i = 0; e == EVL_OK && i < st.n; i++) {
        const char **vals =
            evl_xmalloc(sizeof(char *) * (st.stmts[i].nparams + 1));
        for (size_t k = 0; k < st.stmts[i].nparams; k++)
            vals[k] = st.stmts[i].params[k].type == EVL_PARAM_NULL
                          ? NULL
                          : st.stmts[i].params[k].text;
        e = evl_pg_query(pg, st.stmts[i].sql, (int)st.stmts[i].nparams, vals,
                         NULL, err, errlen);
        free(vals);
    }
    const char *vals[1] = {projection};
    static const char *const deletes[] = {
        "DELETE FROM evlua_checkpoints WHERE projection = $1",
        "DELETE FROM evlua_offsets WHERE projection = $1",
        "DELETE FROM evlua_parked WHERE projection = $1"};
    for (size_t i = 0; e == EVL_OK && i < 3; i++)
        e = evl_pg_query(pg, deletes[i], 1, vals, NULL, err, errlen);
    if (e == EVL_OK)
        e = evl_pg_exec(pg, "COMMIT", err, errlen);
    else if (evl_pg_ok(pg)) {
        char rerr[EVL_ERRLEN];
        evl_pg_exec(pg, "ROLLBACK", rerr, sizeof rerr);
    }
out:
    evl_luahost_stmts_free(&st);
    return e;
}

evl_err evl_projector_reset_group(const evl_config *cfg, const char *group,
                                  char *err, size_t errlen)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (int i = 0; i < cfg->nkafka; i++)
        if (rd_kafka_conf_set(conf, cfg->kafka[i].key, cfg->kafka[i].value,
                              errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "kafka property %s: %s", cfg->kafka[i].key,
                              errstr);
        }
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return evl_seterr(err, errlen, EVL_EPERMANENT, "rd_kafka_new: %s",
                          errstr);
    }
    evl_err e = EVL_OK;
    rd_kafka_DeleteGroup_t *dg = rd_kafka_DeleteGroup_new(group);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *ao =
        rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DELETEGROUPS);
    rd_kafka_AdminOptions_set_request_timeout(ao, 30000, errstr, sizeof errstr);
    rd_kafka_DeleteGroups(rk, &dg, 1, ao, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 60000);
    if (!ev) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "DeleteGroups(%s): no answer from Kafka within 60 s",
                       group);
    } else if (rd_kafka_event_error(ev)) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT, "DeleteGroups(%s): %s",
                       group, rd_kafka_event_error_string(ev));
    } else {
        size_t n = 0;
        const rd_kafka_group_result_t **gr =
            rd_kafka_DeleteGroups_result_groups(
                rd_kafka_event_DeleteGroups_result(ev), &n);
        for (size_t i = 0; i < n; i++) {
            const rd_kafka_error_t *ge = rd_kafka_group_result_error(gr[i]);
            rd_kafka_resp_err_t code = ge ? rd_kafka_error_code(ge) : 0;
            if (!code || code == RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND)
                continue;
            if (code == RD_KAFKA_RESP_ERR_NON_EMPTY_GROUP)
                e = evl_seterr(err, errlen, EVL_EPERMANENT,
                               "consumer group %s has active members: stop "
                               "the projectors of this projection first",
                               group);
            else
                e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                               "DeleteGroups(%s): %s", group,
                               rd_kafka_error_string(ge));
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_DeleteGroup_destroy(dg);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
    return e;
}
