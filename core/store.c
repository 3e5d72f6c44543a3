/*
 * store.c - aggregate states per partition, with an undo log (store.h).
 *
 * Each partition is a chained hash table of aggregates keyed by id
 * (FNV-1a). Remembered command ids are a ring of strings per aggregate.
 *
 * The undo log keeps, for each aggregate touched in the open transaction,
 * what it was: the old state text (moved, not copied), the old version,
 * and a copy of the ring's pointer array (the strings stay where they
 * are). Strings that leave a ring during the transaction are freed only
 * on commit; strings that entered it are freed only on rollback. An id
 * that enters and leaves within one transaction sits on both lists and is
 * freed exactly once either way (commit frees the leavers, rollback the
 * enterers).
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "envelope.h"

struct evl_store_agg {
    struct evl_store_agg *next; /* hash chain */
    struct part *part;
    uint64_t hash;
    char *id;
    char *state; /* NULL: none */
    size_t state_len;
    long long version;
    char **ids;               /* ring of dedup slots, NULL until the first id */
    int cap, nids, next_slot; /* cap: slots in ids */
    unsigned txn; /* serial of the transaction that last touched it */
};

typedef struct part {
    char *type;
    int32_t partition;
    evl_store_agg **buckets;
    size_t nbuckets, count;
} part;

typedef struct undo {
    evl_store_agg *a;
    int created;
    char *state;
    size_t state_len;
    long long version;
    char **ids; /* copy of the ring's pointers, NULL when it had none */
    int nids, next_slot;
} undo;

typedef struct strlist {
    char **v;
    size_t n, cap;
} strlist;

struct evl_store {
    int dedup;
    part **parts;
    size_t nparts;
    undo *undo;
    size_t nundo, capundo;
    strlist left, entered; /* ids that left / entered rings in the txn */
    unsigned txn;
    int open;
    /* evl_store_seal(): the first `sealed` undo entries (and the first
     * left_mark / entered_mark strings) belong to the older transaction;
     * 0 when none is sealed */
    size_t sealed, left_mark, entered_mark;
};

static void strlist_push(strlist *l, char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = evl_xrealloc(l->v, sizeof *l->v * l->cap);
    }
    l->v[l->n++] = s;
}

static void strlist_clear(strlist *l, int free_them)
{
    if (free_them)
        for (size_t i = 0; i < l->n; i++)
            free(l->v[i]);
    l->n = 0;
}

/* Drop the first n strings (freeing them when asked), keep the rest. */
static void strlist_shift(strlist *l, size_t n, int free_them)
{
    if (n == 0)
        return;
    if (free_them)
        for (size_t i = 0; i < n; i++)
            free(l->v[i]);
    memmove(l->v, l->v + n, sizeof *l->v * (l->n - n));
    l->n -= n;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

evl_store *evl_store_new(int dedup_ids)
{
    evl_store *s = evl_xmalloc(sizeof *s);
    memset(s, 0, sizeof *s);
    s->dedup = dedup_ids > 0 ? dedup_ids : 0;
    return s;
}

static void agg_free(evl_store_agg *a)
{
    free(a->id);
    free(a->state);
    free(a->ids);
    free(a);
}

/* Free the agg and the id strings in its ring. */
static void agg_free_all(evl_store_agg *a)
{
    for (int i = 0; a->ids && i < a->nids; i++)
        free(a->ids[(a->next_slot - 1 - i + a->cap) % a->cap]);
    agg_free(a);
}

static void part_free(part *p)
{
    for (size_t b = 0; b < p->nbuckets; b++) {
        evl_store_agg *a = p->buckets[b], *next;
        for (; a; a = next) {
            next = a->next;
            agg_free_all(a);
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
    free(s->left.v);
    free(s->entered.v);
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
}

evl_store_agg *evl_store_get(evl_store *s, const char *type, int32_t partition,
                             const char *id)
{
    part *p = find_part(s, type, partition, 0);
    return p ? find_agg(p, id, fnv1a(id)) : NULL;
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

/* The i-th newest remembered id (0: the newest), i < a->nids. */
static const char *ring_at(const evl_store_agg *a, int i)
{
    return a->ids[(a->next_slot - 1 - i + a->cap) % a->cap];
}

int evl_store_seen(const evl_store_agg *a, const char *command_id)
{
    if (!a || !command_id)
        return 0;
    for (int i = 0; i < a->nids; i++)
        if (strcmp(ring_at(a, i), command_id) == 0)
            return 1;
    return 0;
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
    s->sealed = s->left_mark = s->entered_mark = 0;
}

void evl_store_seal(evl_store *s)
{
    if (!s->open) {
        evl_store_begin(s);
        return;
    }
    /* one sealed level only: sealing again merges the open level into it */
    s->sealed = s->nundo;
    s->left_mark = s->left.n;
    s->entered_mark = s->entered.n;
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
            free(s->undo[i].ids);
        }
        memmove(s->undo, s->undo + s->sealed,
                sizeof *s->undo * (s->nundo - s->sealed));
        s->nundo -= s->sealed;
    }
    strlist_shift(&s->left, s->left_mark, 1);
    strlist_shift(&s->entered, s->entered_mark, 0);
    s->sealed = s->left_mark = s->entered_mark = 0;
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
    u->next_slot = a->next_slot;
    u->ids = NULL;
    if (a->ids) {
        u->ids = evl_xmalloc(sizeof *u->ids * (size_t)a->cap);
        memcpy(u->ids, a->ids, sizeof *u->ids * (size_t)a->cap);
    }
}

static void push_id(evl_store *s, evl_store_agg *a, const char *command_id)
{
    char *id = evl_xstrdup(command_id);
    if (!a->ids) {
        a->cap = s->dedup;
        a->ids = evl_xmalloc(sizeof *a->ids * (size_t)a->cap);
        memset(a->ids, 0, sizeof *a->ids * (size_t)a->cap);
    }
    if (a->nids == a->cap) {
        char *old = a->ids[a->next_slot]; /* the oldest */
        if (s->open)
            strlist_push(&s->left, old);
        else
            free(old);
    } else {
        a->nids++;
    }
    a->ids[a->next_slot] = id;
    a->next_slot = (a->next_slot + 1) % a->cap;
    if (s->open)
        strlist_push(&s->entered, id);
}

evl_store_agg *evl_store_put(evl_store *s, const char *type, int32_t partition,
                             const char *id, const char *state,
                             size_t state_len, long long version,
                             const char *command_id)
{
    part *p = find_part(s, type, partition, 1);
    uint64_t h = fnv1a(id);
    evl_store_agg *a = find_agg(p, id, h);
    int created = !a;
    char *copy = NULL;

    if (created)
        a = add_agg(p, id, h);
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
        free(s->undo[i].ids);
    }
    strlist_clear(&s->left, 1);
    strlist_clear(&s->entered, 0);
    s->nundo = 0;
    s->sealed = s->left_mark = s->entered_mark = 0;
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
            agg_free(a); /* its ids are all on the entered list */
            continue;
        }
        free(a->state);
        a->state = u->state;
        a->state_len = u->state_len;
        a->version = u->version;
        if (u->ids) {
            memcpy(a->ids, u->ids, sizeof *a->ids * (size_t)a->cap);
            free(u->ids);
        } else {
            free(a->ids);
            a->ids = NULL;
            a->cap = 0;
        }
        a->nids = u->nids;
        a->next_slot = u->next_slot;
        a->txn = 0;
    }
    strlist_clear(&s->entered, 1);
    strlist_clear(&s->left, 0);
    s->nundo = 0;
    s->sealed = s->left_mark = s->entered_mark = 0;
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
    for (int i = a->nids - 1; i >= 0; i--) { /* oldest first */
        const char *id = ring_at(a, i);
        evl_envelope_put_string(out, id, strlen(id));
        if (i)
            evl_buf_putc(out, ',');
    }
    evl_buf_puts(out, "],\"state\":");
    if (a->state)
        evl_buf_put(out, a->state, a->state_len);
    else
        evl_buf_puts(out, "null");
    evl_buf_putc(out, '}');
}

static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n &&
           (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* End of the JSON string starting at s[i] == '"' (index after the closing
 * quote), or 0. */
static size_t skip_string(const char *s, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return 0;
}

/* End of the JSON value at s[i] (the text is known to be valid JSON). */
static size_t skip_value(const char *s, size_t i, size_t n)
{
    int depth = 0;
    if (i >= n)
        return 0;
    if (s[i] == '"')
        return skip_string(s, i, n);
    if (s[i] != '{' && s[i] != '[') {
        while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' &&
               s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            i++;
        return i;
    }
    for (; i < n; i++) {
        if (s[i] == '"') {
            if (!(i = skip_string(s, i, n)))
                return 0;
            i--;
        } else if (s[i] == '{' || s[i] == '[') {
            depth++;
        } else if (s[i] == '}' || s[i] == ']') {
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

/* Find the text of top-level member `key` of the JSON object s (valid
 * JSON, keys without escapes as evlua writes them). */
static int member_span(const char *s, size_t n, const char *key, size_t *b,
                       size_t *e)
{
    size_t klen = strlen(key), i = skip_ws(s, 0, n);
    if (i >= n || s[i] != '{')
        return 0;
    i = skip_ws(s, i + 1, n);
    while (i < n && s[i] == '"') {
        size_t kb = i + 1, ke = skip_string(s, i, n);
        if (!ke)
            return 0;
        i = skip_ws(s, ke, n);
        if (i >= n || s[i] != ':')
            return 0;
        i = skip_ws(s, i + 1, n);
        size_t vb = i, ve = skip_value(s, i, n);
        if (!ve)
            return 0;
        if (ke - 1 - kb == klen && memcmp(s + kb, key, klen) == 0) {
            *b = vb;
            *e = ve;
            return 1;
        }
        i = skip_ws(s, ve, n);
        if (i < n && s[i] == ',')
            i = skip_ws(s, i + 1, n);
    }
    return 0;
}

evl_err evl_store_restore(evl_store *s, const char *type, int32_t partition,
                          const char *key, size_t keylen, const char *value,
                          size_t len, char *err, size_t errlen)
{
    evl_err e = EVL_EPERMANENT;
    cJSON *root = NULL, *v, *ids;
    char *id = NULL;
    size_t sb = 0, se = 0;
    evl_store_agg *a;
    int n;

    if (!key || keylen == 0 || memchr(key, '\0', keylen))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "a state record without a usable key");
    id = evl_xmalloc(keylen + 1);
    memcpy(id, key, keylen);
    id[keylen] = '\0';
    if (!value) { /* tombstone */
        part *p = find_part(s, type, partition, 0);
        if (p && (a = find_agg(p, id, fnv1a(id)))) {
            unlink_agg(a);
            agg_free_all(a);
        }
        e = EVL_OK;
        goto out;
    }
    root = cJSON_ParseWithLength(value, len);
    if (!root || !cJSON_IsObject(root)) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s is not a JSON object", id);
        goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) ||
        v->valuedouble > 9007199254740991.0 ||
        v->valuedouble != (double)(long long)v->valuedouble) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s has no integer version", id);
        goto out;
    }
    ids = cJSON_GetObjectItemCaseSensitive(root, "command_ids");
    if (ids && !cJSON_IsArray(ids)) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s: command_ids is not an array", id);
        goto out;
    }
    if (!member_span(value, len, "state", &sb, &se)) {
        evl_seterr(err, errlen, EVL_EPERMANENT,
                   "state record of %s has no state", id);
        goto out;
    }
    int null_state = se - sb == 4 && memcmp(value + sb, "null", 4) == 0;
    /* replace whatever was there: restore is the truth */
    {
        part *p = find_part(s, type, partition, 0);
        if (p && (a = find_agg(p, id, fnv1a(id)))) {
            unlink_agg(a);
            agg_free_all(a);
        }
    }
    a = evl_store_put(s, type, partition, id, null_state ? NULL : value + sb,
                      null_state ? 0 : se - sb, (long long)v->valuedouble,
                      NULL);
    /* keep the newest dedup ids, oldest first */
    n = ids ? cJSON_GetArraySize(ids) : 0;
    int i = 0;
    for (cJSON *c = ids ? ids->child : NULL; c; c = c->next, i++)
        if (i >= n - s->dedup && s->dedup > 0 && cJSON_IsString(c))
            push_id(s, a, c->valuestring);
    e = EVL_OK;
out:
    cJSON_Delete(root);
    free(id);
    return e;
}
