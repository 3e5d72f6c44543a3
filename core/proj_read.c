/*
 * proj_read.c - a batch's messages become events and aggregate groups,
 * and the groups get their checkpoints.
 *
 * Each message is parsed once per batch (not once per attempt): its
 * grouping fields are read with json.c's checker, which builds nothing;
 * the rest of the event is the Lua handler's business. What cannot be
 * grouped is still grouped under the aggregate its header or key names,
 * so it is parked there rather than lost. Checkpoints come from the
 * cache, a guess (a sequence 1 is most likely a new aggregate) or one
 * query per batch.
 */
#include "projector_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>

/* ---- partitions ---------------------------------------------------------- */

int proj_part_find(projector *pj, const char *topic, int32_t partition)
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

/* ---- preparing a batch: parse once --------------------------------------- */

static int group_of(projector *pj, batch *b, const char *atype, const char *aid)
{
    size_t lt = strlen(atype), li = strlen(aid), klen = lt + 1 + li;
    char *key = proj_arena_alloc(&b->ar, klen);
    memcpy(key, atype, lt + 1);
    memcpy(key + lt + 1, aid, li);
    uint64_t h = evl_hash(key, klen);
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
    g->aid = proj_arena_strndup(&b->ar, aid, li);
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
        *type = proj_arena_strndup(ar, text + m[0].off, m[0].len);
        if (!evl_luahost_projection_handles(pj->proj, *type))
            return FIELDS_SKIP;
    }
    if (m[1].type == EVL_JSON_STRING)
        *atype = proj_arena_strndup(ar, text + m[1].off, m[1].len);
    if (m[2].type == EVL_JSON_STRING)
        *aid = proj_arena_strndup(ar, text + m[2].off, m[2].len);
    if (m[3].type == EVL_JSON_NUMBER)
        *seq = m[3].isint ? (m[3].integer >= 1 ? m[3].integer : -1)
                          : seq_of(m[3].num);
    return FIELDS_OK;
}

/* read_fields for a payload the strict check refused, with cJSON's lax
 * reading, so that such an event is grouped (and parked) under the
 * aggregate it names, its handler reporting why it cannot be read.
 *
 * Why cJSON and not json.c: json.c reads exactly what the Lua decoder
 * accepts and stops at the first fault, by design. This reader's one job
 * is to read past such faults (invalid UTF-8 in another field, say) far
 * enough to find the aggregate to park the event under; it never decides
 * what an event means. Only payloads json.c refused come here. */
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
        *type = proj_arena_text(ar, jt->valuestring, strlen(jt->valuestring));
        if (!evl_luahost_projection_handles(pj->proj, *type)) {
            r = FIELDS_SKIP;
            goto out;
        }
    }
    if (cJSON_IsString(ja) && valid_text(ja->valuestring))
        *atype =
            proj_arena_strndup(ar, ja->valuestring, strlen(ja->valuestring));
    if (cJSON_IsString(ji) && valid_text(ji->valuestring))
        *aid = proj_arena_strndup(ar, ji->valuestring, strlen(ji->valuestring));
    if (cJSON_IsNumber(js))
        *seq = seq_of(js->valuedouble);
out:
    cJSON_Delete(root);
    return r;
}

/* What prepare_batch reads from one message. */
typedef struct fields {
    const char *type; /* may be NULL (no header, no JSON type) */
    const char *atype, *aid;
    long long seq;
    const char *bad; /* why the payload cannot be used, or NULL */
} fields;

/* Read rkm's fields into f (strings in ar). Returns 0 when the projection
 * does not handle its type (skip it). An event that cannot be used is
 * still given an aggregate: the one its header and key name. */
static int read_event(projector *pj, const rd_kafka_message_t *rkm, arena *ar,
                      fields *f)
{
    size_t hl = 0;
    const char *ht = header(rkm, "evlua-type", &hl);
    memset(f, 0, sizeof *f);
    f->seq = -1;
    if (ht) {
        f->type = proj_arena_text(ar, ht, hl);
        if (!evl_luahost_projection_handles(pj->proj, f->type))
            return 0;
    }
    int r = read_fields(pj, rkm, ar, &f->type, &f->atype, &f->aid, &f->seq);
    if (r == FIELDS_NOT_JSON) /* as lax as before: cJSON */
        r = read_fields_lax(pj, rkm, ar, &f->type, &f->atype, &f->aid, &f->seq);
    if (r == FIELDS_SKIP)
        return 0;
    if (r == FIELDS_NOT_OBJECT)
        f->bad = "invalid event: the value is not a JSON object";
    else if (!f->type)
        f->bad = "invalid event: no evlua-type header and no string "
                 "\"type\"";
    else if (!f->atype)
        f->bad = "invalid event: \"aggregate_type\" is not a UTF-8 "
                 "string";
    else if (!f->aid)
        f->bad = "invalid event: \"aggregate_id\" is not a UTF-8 string";
    else if (f->seq < 0)
        f->bad = "invalid event: \"sequence\" is not an integer >= 1";
    if (f->bad) {
        /* park it under the aggregate the message says it is of */
        size_t l = 0;
        const char *h = header(rkm, "evlua-aggregate-type", &l);
        if (!f->atype)
            f->atype = h ? proj_arena_text(ar, h, l) : "?";
        if (!f->aid)
            f->aid =
                rkm->key ? proj_arena_text(ar, rkm->key, rkm->key_len) : "";
    }
    return 1;
}

/* Append the event of rkm (partition p, fields f) to b and to its
 * aggregate's group. */
static void add_event(projector *pj, batch *b, rd_kafka_message_t *rkm, int p,
                      const fields *f)
{
    if (b->nevs == b->capevs) {
        b->capevs = b->capevs ? b->capevs * 2 : 512;
        b->evs = evl_xrealloc(b->evs, sizeof(pev) * b->capevs);
    }
    int e = (int)b->nevs++;
    pev *ev = &b->evs[e];
    memset(ev, 0, sizeof *ev);
    ev->rkm = rkm;
    ev->part = p;
    ev->seq = f->seq;
    ev->type = f->type;
    ev->bad = f->bad;
    ev->next = -1;
    ev->group = group_of(pj, b, f->atype, f->aid);
    pgroup *g = &b->groups[ev->group];
    if (g->last >= 0)
        b->evs[g->last].next = e;
    else
        g->first = e;
    g->last = e;
}

/* Read the messages into events and groups (no database, no Lua). */
void proj_prepare_batch(projector *pj, batch *b)
{
    proj_arena_reset(&b->ar);
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
        int p =
            proj_part_find(pj, rd_kafka_topic_name(rkm->rkt), rkm->partition);
        if (p < 0 ||
            (pj->parts[p].halted && rkm->offset >= pj->parts[p].halt_offset))
            continue; /* not ours (any more), or stopped */
        if (rkm->offset + 1 > b->next[p])
            b->next[p] = rkm->offset + 1;
        pj->stats.messages++;
        fields f;
        if (!read_event(pj, rkm, &b->ar, &f)) {
            pj->stats.skipped++;
            continue;
        }
        add_event(pj, b, rkm, p, &f);
    }
}

/* ---- checkpoints --------------------------------------------------------- */

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
int proj_needs_load(const projector *pj, const batch *b)
{
    for (size_t gi = 0; gi < b->ngroups; gi++) {
        const pgroup *g = &b->groups[gi];
        if (!proj_ckmap_get(&pj->cache, g->key, g->klen, g->hash) &&
            !guess_new(pj, b, g))
            return 1;
    }
    return 0;
}

/* Read the checkpoints of the batch's aggregates the cache lacks (or
 * guess them: guess_new). */
evl_err proj_load_checkpoints(projector *pj, batch *b, char *err, size_t errlen)
{
    size_t n = 0;
    proj_arr_reset(&pj->a[0]);
    proj_arr_reset(&pj->a[1]);
    for (size_t g = 0; g < b->ngroups; g++) {
        const pgroup *gr = &b->groups[g];
        if (proj_ckmap_get(&pj->cache, gr->key, gr->klen, gr->hash))
            continue;
        if (guess_new(pj, b, gr)) {
            proj_ckmap_put(&pj->cache, gr->key, gr->klen, gr->hash, -1, 0);
            continue;
        }
        proj_arr_text(&pj->a[0], gr->atype);
        proj_arr_text(&pj->a[1], gr->aid);
        n++;
    }
    if (n == 0)
        return EVL_OK;
    proj_arr_end(&pj->a[0]);
    proj_arr_end(&pj->a[1]);
    const char *vals[3] = {pj->name, pj->a[0].data, pj->a[1].data};
    PGresult *res = NULL;
    evl_err e = evl_pg_query(pj->pg, EVL_PG_LOAD_CHECKPOINTS_SQL, 3, vals, &res,
                             err, errlen);
    if (e != EVL_OK)
        return e == EVL_EPERMANENT ? EVL_EFATAL : e;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *t = PQgetvalue(res, r, 0), *i = PQgetvalue(res, r, 1);
        size_t lt = strlen(t), li = strlen(i);
        char *key = proj_arena_alloc(&b->attempt_ar, lt + 1 + li);
        memcpy(key, t, lt + 1);
        memcpy(key + lt + 1, i, li);
        proj_ckmap_put(&pj->cache, key, lt + 1 + li, evl_hash(key, lt + 1 + li),
                       strtoll(PQgetvalue(res, r, 2), NULL, 10),
                       PQgetvalue(res, r, 3)[0] == 't');
    }
    PQclear(res);
    for (size_t g = 0; g < b->ngroups; g++) {
        const pgroup *gr = &b->groups[g];
        if (!proj_ckmap_get(&pj->cache, gr->key, gr->klen, gr->hash))
            proj_ckmap_put(&pj->cache, gr->key, gr->klen, gr->hash, -1, 0);
    }
    return EVL_OK;
}
