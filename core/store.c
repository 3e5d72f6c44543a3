/*
 * store.c - aggregate states per partition, with an undo log (store.h).
 *
 * Each partition is a chained hash table of aggregates keyed by id
 * (FNV-1a). An aggregate's remembered command ids are kept as the text
 * its snapshot carries, "id1","id2",... oldest first, JSON-escaped, with
 * each one's length there: a snapshot copies that text in one piece, and
 * the duplicate check compares lengths before bytes in one contiguous
 * buffer. (One string per id cost ~19 us per snapshot and ~3.5 us per
 * check with 100 UUIDs per aggregate, in cache misses and escaping:
 * tests/bench/bench_store.c.)
 *
 * The undo log keeps, for each aggregate touched in the open transaction,
 * what it was: the old state text (moved, not copied), the old version,
 * and a copy of its ids text and lengths.
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "json.h"

struct evl_store_agg {
    struct evl_store_agg *next; /* hash chain */
    struct part *part;
    uint64_t hash;
    char *id;
    char *state; /* NULL: none */
    size_t state_len;
    long long version;
    /* remembered command ids, oldest first: "id1","id2" (escaped) */
    char *idj;
    size_t idj_len, idj_cap;
    uint32_t *elen; /* each id's length in idj; cap slots, NULL until the
                       first id */
    int cap, nids;
    unsigned txn; /* serial of the transaction that last touched it */
};

typedef struct part {
    char *type;
    int32_t partition;
    evl_store_agg **buckets;
    size_t nbuckets, count;
    size_t bytes; /* agg_bytes() of its aggregates (evl_store_bytes) */
} part;

typedef struct undo {
    evl_store_agg *a;
    int created;
    char *state;
    size_t state_len;
    long long version;
    char *idj; /* copies of idj and elen; NULL when it had no ids */
    size_t idj_len;
    uint32_t *elen;
    int nids;
} undo;

struct evl_store {
    int dedup;
    part **parts;
    size_t nparts;
    undo *undo;
    size_t nundo, capundo;
    unsigned txn;
    int open;
    /* evl_store_seal(): the first `sealed` undo entries belong to the
     * older transaction; 0 when none is sealed */
    size_t sealed;
};

evl_store *evl_store_new(int dedup_ids)
{
    evl_store *s = evl_xmalloc(sizeof *s);
    memset(s, 0, sizeof *s);
    s->dedup = dedup_ids > 0 ? dedup_ids : 0;
    return s;
}

/* What a holds on the heap, as requested from malloc (its own overhead,
 * ~16 bytes per block, 5 blocks with ids, is not counted). Kept in
 * part.bytes: each change to a is bracketed by a subtraction before and
 * an addition after. */
static size_t agg_bytes(const evl_store_agg *a)
{
    return sizeof *a + strlen(a->id) + 1 + (a->state ? a->state_len + 1 : 0) +
           a->idj_cap + (a->elen ? sizeof *a->elen * (size_t)a->cap : 0);
}

static void agg_free(evl_store_agg *a)
{
    free(a->id);
    free(a->state);
    free(a->idj);
    free(a->elen);
    free(a);
}

static void part_free(part *p)
{
    for (size_t b = 0; b < p->nbuckets; b++) {
        evl_store_agg *a = p->buckets[b], *next;
        for (; a; a = next) {
            next = a->next;
            agg_free(a);
        }
    }
    free(p->buckets);
    free(p->type);
    free(p);
}

void evl_store_free(evl_store *s)
{
    if (!s)
        return;
    evl_store_drop(s, NULL, -1);
    free(s->parts);
    free(s->undo);
    free(s);
}

static int part_matches(const part *p, const char *type, int32_t partition)
{
    return (!type || strcmp(p->type, type) == 0) &&
           (partition < 0 || p->partition == partition);
}

void evl_store_drop(evl_store *s, const char *type, int32_t partition)
{
    size_t j = 0;
    if (s->open)
        evl_store_rollback(s);
    for (size_t i = 0; i < s->nparts; i++) {
        if (part_matches(s->parts[i], type, partition))
            part_free(s->parts[i]);
        else
            s->parts[j++] = s->parts[i];
    }
    s->nparts = j;
}

size_t evl_store_count(const evl_store *s, const char *type, int32_t partition)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nparts; i++)
        if (part_matches(s->parts[i], type, partition))
            n += s->parts[i]->count;
    return n;
}

size_t evl_store_bytes(const evl_store *s, const char *type, int32_t partition)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nparts; i++) {
        const part *p = s->parts[i];
        if (part_matches(p, type, partition))
            n += p->bytes + sizeof *p + strlen(p->type) + 1 +
                 sizeof *p->buckets * p->nbuckets;
    }
    return n;
}

static part *find_part(const evl_store *s, const char *type, int32_t partition,
                       int create)
{
    part *p;
    for (size_t i = 0; i < s->nparts; i++)
        if (s->parts[i]->partition == partition &&
            strcmp(s->parts[i]->type, type) == 0)
            return s->parts[i];
    if (!create)
        return NULL;
    p = evl_xmalloc(sizeof *p);
    p->type = evl_xstrdup(type);
    p->partition = partition;
    p->nbuckets = 64;
    p->buckets = evl_xmalloc(sizeof *p->buckets * p->nbuckets);
    memset(p->buckets, 0, sizeof *p->buckets * p->nbuckets);
    p->count = 0;
    p->bytes = 0;
    ((evl_store *)s)->parts =
        evl_xrealloc(s->parts, sizeof *s->parts * (s->nparts + 1));
    ((evl_store *)s)->parts[((evl_store *)s)->nparts++] = p;
    return p;
}

static evl_store_agg *find_agg(const part *p, const char *id, uint64_t h)
{
    for (evl_store_agg *a = p->buckets[h & (p->nbuckets - 1)]; a; a = a->next)
        if (a->hash == h && strcmp(a->id, id) == 0)
            return a;
    return NULL;
}

static void grow(part *p)
{
    size_t n = p->nbuckets * 2;
    evl_store_agg **b = evl_xmalloc(sizeof *b * n);
    memset(b, 0, sizeof *b * n);
    for (size_t i = 0; i < p->nbuckets; i++) {
        evl_store_agg *a = p->buckets[i], *next;
        for (; a; a = next) {
            next = a->next;
            a->next = b[a->hash & (n - 1)];
            b[a->hash & (n - 1)] = a;
        }
    }
    free(p->buckets);
    p->buckets = b;
    p->nbuckets = n;
}

static evl_store_agg *add_agg(part *p, const char *id, uint64_t h)
{
    evl_store_agg *a = evl_xmalloc(sizeof *a);
    memset(a, 0, sizeof *a);
    a->part = p;
    a->hash = h;
    a->id = evl_xstrdup(id);
    if (p->count + 1 > p->nbuckets)
        grow(p);
    a->next = p->buckets[h & (p->nbuckets - 1)];
    p->buckets[h & (p->nbuckets - 1)] = a;
    p->count++;
    p->bytes += agg_bytes(a);
    return a;
}

static void unlink_agg(evl_store_agg *a)
{
    part *p = a->part;
    evl_store_agg **pp = &p->buckets[a->hash & (p->nbuckets - 1)];
    while (*pp != a)
        pp = &(*pp)->next;
    *pp = a->next;
    p->count--;
    p->bytes -= agg_bytes(a);
}

evl_store_agg *evl_store_get(evl_store *s, const char *type, int32_t partition,
                             const char *id)
{
    part *p = find_part(s, type, partition, 0);
    return p ? find_agg(p, id, evl_hash_str(id)) : NULL;
}

long long evl_store_version(const evl_store_agg *a)
{
    return a ? a->version : 0;
}

const char *evl_store_state(const evl_store_agg *a, size_t *len)
{
    if (len)
        *len = a ? a->state_len : 0;
    return a ? a->state : NULL;
}

const char *evl_store_id(const evl_store_agg *a)
{
    return a->id;
}

/* Is one of a's remembered ids, without `strip` bytes at each end of its
 * text, the len bytes at p? */
static int has_text(const evl_store_agg *a, const char *p, size_t len,
                    size_t strip)
{
    size_t off = 0;
    for (int i = 0; i < a->nids; off += a->elen[i++] + 1)
        if (a->elen[i] == len + 2 * strip &&
            memcmp(a->idj + off + strip, p, len) == 0)
            return 1;
    return 0;
}

int evl_store_seen(const evl_store_agg *a, const char *command_id)
{
    size_t n;
    int plain = 1, found;
    evl_buf esc = {0};
    if (!a || !command_id || a->nids == 0)
        return 0;
    n = strlen(command_id);
    for (size_t i = 0; i < n && plain; i++) {
        unsigned char c = (unsigned char)command_id[i];
        plain = c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
    }
    if (plain) /* written as it is, between quotes */
        return has_text(a, command_id, n, 1);
    /* command ids are valid UTF-8 (they come from JSON), so equal ids and
     * equal escaped texts are the same thing */
    evl_envelope_put_string(&esc, command_id, n);
    found = has_text(a, esc.data, esc.len, 0);
    free(esc.data);
    return found;
}

void evl_store_begin(evl_store *s)
{
    if (s->open)
        return;
    s->open = 1;
    s->txn++;
    if (s->txn == 0) /* 0 marks "never touched" */
        s->txn = 1;
    s->nundo = 0;
    s->sealed = 0;
}

void evl_store_seal(evl_store *s)
{
    if (!s->open) {
        evl_store_begin(s);
        return;
    }
    /* one sealed level only: sealing again merges the open level into it */
    s->sealed = s->nundo;
    /* a new serial: an aggregate touched again gets its own undo entry */
    s->txn++;
    if (s->txn == 0)
        s->txn = 1;
}

void evl_store_commit_sealed(evl_store *s)
{
    if (!s->open)
        return;
    if (s->sealed > 0) {
        for (size_t i = 0; i < s->sealed; i++) {
            free(s->undo[i].state);
            free(s->undo[i].idj);
            free(s->undo[i].elen);
        }
        memmove(s->undo, s->undo + s->sealed,
                sizeof *s->undo * (s->nundo - s->sealed));
        s->nundo -= s->sealed;
    }
    s->sealed = 0;
}

/* Record a as it is now, once per transaction. */
static void remember(evl_store *s, evl_store_agg *a, int created)
{
    undo *u;
    if (!s->open || a->txn == s->txn)
        return;
    a->txn = s->txn;
    if (s->nundo == s->capundo) {
        s->capundo = s->capundo ? 2 * s->capundo : 64;
        s->undo = evl_xrealloc(s->undo, sizeof *s->undo * s->capundo);
    }
    u = &s->undo[s->nundo++];
    u->a = a;
    u->created = created;
    u->state = a->state; /* moved: put replaces, never frees, it */
    u->state_len = a->state_len;
    u->version = a->version;
    u->nids = a->nids;
    u->idj = NULL;
    u->idj_len = 0;
    u->elen = NULL;
    if (a->elen) {
        u->elen = evl_xmalloc(sizeof *u->elen * (size_t)a->cap);
        memcpy(u->elen, a->elen, sizeof *u->elen * (size_t)a->nids);
        u->idj_len = a->idj_len;
        u->idj = evl_xmalloc(a->idj_len + 1);
        memcpy(u->idj, a->idj, a->idj_len);
    }
}

static void push_id(evl_store *s, evl_store_agg *a, const char *command_id)
{
    evl_buf b = {a->idj, a->idj_len, a->idj_cap};
    size_t start;
    if (!a->elen) {
        a->cap = s->dedup;
        a->elen = evl_xmalloc(sizeof *a->elen * (size_t)a->cap);
    }
    if (a->nids == a->cap) { /* forget the oldest, and its comma */
        size_t cut = a->elen[0] + (a->nids > 1 ? 1 : 0);
        memmove(b.data, b.data + cut, b.len - cut);
        b.len -= cut;
        memmove(a->elen, a->elen + 1, sizeof *a->elen * (size_t)(a->nids - 1));
        a->nids--;
    }
    if (a->nids > 0)
        evl_buf_putc(&b, ',');
    start = b.len;
    evl_envelope_put_string(&b, command_id, strlen(command_id));
    a->elen[a->nids++] = (uint32_t)(b.len - start);
    a->idj = b.data;
    a->idj_len = b.len;
    a->idj_cap = b.cap;
}

evl_store_agg *evl_store_put(evl_store *s, const char *type, int32_t partition,
                             const char *id, const char *state,
                             size_t state_len, long long version,
                             const char *command_id)
{
    part *p = find_part(s, type, partition, 1);
    uint64_t h = evl_hash_str(id);
    evl_store_agg *a = find_agg(p, id, h);
    int created = !a;
    char *copy = NULL;

    if (created)
        a = add_agg(p, id, h);
    p->bytes -= agg_bytes(a);
    /* The state text before the first touch of this transaction belongs
     * to the undo log; one written earlier in it is ours to free. */
    if (s->open && a->txn == s->txn)
        free(a->state);
    else if (!s->open)
        free(a->state);
    remember(s, a, created);
    if (state) {
        copy = evl_xmalloc(state_len + 1);
        memcpy(copy, state, state_len);
        copy[state_len] = '\0';
    }
    a->state = copy;
    a->state_len = copy ? state_len : 0;
    a->version = version;
    if (command_id && s->dedup > 0)
        push_id(s, a, command_id);
    p->bytes += agg_bytes(a);
    return a;
}

size_t evl_store_ntouched(const evl_store *s)
{
    return s->open ? s->nundo - s->sealed : 0;
}

const evl_store_agg *evl_store_touched(const evl_store *s, size_t i,
                                       const char **type, int32_t *partition)
{
    const evl_store_agg *a = s->undo[s->sealed + i].a;
    if (type)
        *type = a->part->type;
    if (partition)
        *partition = a->part->partition;
    return a;
}

void evl_store_commit(evl_store *s)
{
    if (!s->open)
        return;
    for (size_t i = 0; i < s->nundo; i++) {
        free(s->undo[i].state);
        free(s->undo[i].idj);
        free(s->undo[i].elen);
    }
    s->nundo = 0;
    s->sealed = 0;
    s->open = 0;
}

void evl_store_rollback(evl_store *s)
{
    if (!s->open)
        return;
    /* in reverse, though each aggregate appears once */
    for (size_t i = s->nundo; i-- > 0;) {
        undo *u = &s->undo[i];
        evl_store_agg *a = u->a;
        if (u->created) {
            unlink_agg(a);
            agg_free(a);
            continue;
        }
        a->part->bytes -= agg_bytes(a);
        free(a->state);
        a->state = u->state;
        a->state_len = u->state_len;
        a->version = u->version;
        free(a->idj);
        free(a->elen);
        a->idj = u->idj; /* NULL with elen when it had no ids */
        a->idj_len = u->idj_len;
        a->idj_cap = u->idj ? u->idj_len + 1 : 0;
        a->elen = u->elen;
        a->nids = u->nids;
        a->txn = 0;
        a->part->bytes += agg_bytes(a);
    }
    s->nundo = 0;
    s->sealed = 0;
    s->open = 0;
}

/* ---- snapshots ---------------------------------------------------------- */

void evl_store_snapshot(const evl_store_agg *a, const char *type, evl_buf *out)
{
    char num[32];
    evl_buf_puts(out, "{\"aggregate_type\":");
    evl_envelope_put_string(out, type, strlen(type));
    evl_buf_puts(out, ",\"aggregate_id\":");
    evl_envelope_put_string(out, a->id, strlen(a->id));
    snprintf(num, sizeof num, ",\"version\":%lld", a->version);
    evl_buf_puts(out, num);
    evl_buf_puts(out, ",\"command_ids\":[");
    evl_buf_put(out, a->idj, a->idj_len); /* oldest first, escaped */
    evl_buf_puts(out, "],\"state\":");
    if (a->state)
        evl_buf_put(out, a->state, a->state_len);
    else
        evl_buf_puts(out, "null");
    evl_buf_putc(out, '}');
}

/* Restoring reads a record with evl_json_members, the reader that checks
 * text exactly as the Lua host's decoder does: a record evlua would not
 * accept from a script (a control byte, invalid UTF-8, a rounded integer)
 * is refused here too, so a snapshot written from a restored state is
 * always valid JSON that the next restore reads again. */

typedef struct ids_walk {
    evl_store *s;
    evl_store_agg *a;
    long n, skip; /* ids seen; how many oldest ones to pass over */
} ids_walk;

static void count_id(void *ud, const char *str, size_t n)
{
    (void)str;
    (void)n;
    ((ids_walk *)ud)->n++;
}

static void keep_id(void *ud, const char *str, size_t n)
{
    ids_walk *w = ud;
    (void)n;
    if (w->n++ >= w->skip) {
        w->a->part->bytes -= agg_bytes(w->a);
        push_id(w->s, w->a, str);
        w->a->part->bytes += agg_bytes(w->a);
    }
}

evl_err evl_store_restore(evl_store *s, const char *type, int32_t partition,
                          const char *key, size_t keylen, const char *value,
                          size_t len, char *err, size_t errlen)
{
    enum { M_VERSION, M_IDS, M_STATE };
    evl_json_member m[] = {
        {.name = "version"}, {.name = "command_ids"}, {.name = "state"}};
    evl_err e = EVL_EPERMANENT;
    evl_buf scratch = {0};
    char *id = NULL, why[EVL_ERRLEN];
    ids_walk w = {s, NULL, 0, 0};
    int is_object = 0;
    evl_store_agg *a;

    if (!key || keylen == 0 || memchr(key, '\0', keylen))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "a state record without a usable key");
    id = evl_xmalloc(keylen + 1);
    memcpy(id, key, keylen);
    id[keylen] = '\0';
    if (!value) { /* tombstone */
        part *p = find_part(s, type, partition, 0);
        if (p && (a = find_agg(p, id, evl_hash_str(id)))) {
            unlink_agg(a);
            agg_free(a);
        }
        e = EVL_OK;
        goto out;
    }
    if (evl_json_members(value, len, m, sizeof m / sizeof m[0], &scratch,
                         &is_object, why, sizeof why) != EVL_OK) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s is not valid JSON: %s", id, why);
        goto out;
    }
    if (!is_object) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s is not a JSON object", id);
        goto out;
    }
    if (m[M_VERSION].type != EVL_JSON_NUMBER || !m[M_VERSION].isint ||
        m[M_VERSION].integer < 0) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s has no integer version", id);
        goto out;
    }
    if (m[M_STATE].type == EVL_JSON_ABSENT) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s has no state", id);
        goto out;
    }
    if (m[M_IDS].type != EVL_JSON_ABSENT &&
        evl_json_array_strings(value + m[M_IDS].voff, m[M_IDS].vlen, &scratch,
                               count_id, &w, why, sizeof why) != EVL_OK) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s: command_ids: %s", id, why);
        goto out;
    }
    const char *st = value + m[M_STATE].voff;
    size_t stlen = m[M_STATE].vlen;
    int null_state = stlen == 4 && memcmp(st, "null", 4) == 0;
    /* replace whatever was there: restore is the truth */
    {
        part *p = find_part(s, type, partition, 0);
        if (p && (a = find_agg(p, id, evl_hash_str(id)))) {
            unlink_agg(a);
            agg_free(a);
        }
    }
    a = evl_store_put(s, type, partition, id, null_state ? NULL : st,
                      null_state ? 0 : stlen, m[M_VERSION].integer, NULL);
    /* keep the newest dedup ids, oldest first */
    if (s->dedup > 0 && w.n > 0) {
        w.a = a;
        w.skip = w.n > s->dedup ? w.n - s->dedup : 0;
        w.n = 0;
        evl_json_array_strings(value + m[M_IDS].voff, m[M_IDS].vlen, &scratch,
                               keep_id, &w, why, sizeof why);
    }
    e = EVL_OK;
out:
    evl_buf_free(&scratch);
    free(id);
    return e;
}
