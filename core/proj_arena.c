/*
 * proj_arena.c - the projector's memory of a batch and of its aggregates.
 *
 * Arenas: a bump allocator per batch (and per attempt at it); everything
 * of the batch goes in one and is dropped at once, the blocks kept for
 * the next round. The checkpoint cache: an open-addressing map of
 * "type\0id" -> the aggregate's checkpoint row as this projector last
 * read or wrote it (projector.c says why a stale entry is harmless).
 */
#include "projector_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void *proj_arena_alloc(arena *a, size_t n)
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

void proj_arena_reset(arena *a)
{
    a->cur = a->head;
    if (a->cur)
        a->cur->used = 0;
}

void proj_arena_free(arena *a)
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
void proj_arena_shrink(arena *a, size_t keep)
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

char *proj_arena_strndup(arena *a, const char *s, size_t n)
{
    char *p = proj_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* A copy of s that PostgreSQL's text accepts: valid UTF-8, no NUL bytes
 * (each bad byte becomes '?'). */
char *proj_arena_text(arena *a, const char *s, size_t n)
{
    char *p = proj_arena_strndup(a, s, n);
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

/* ---- the checkpoint cache ------------------------------------------------ */

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

const ckpt *proj_ckmap_get(const ckmap *m, const char *key, size_t klen,
                           uint64_t h)
{
    if (!m->cap)
        return NULL;
    const ckpt *c = ckmap_slot(m, key, klen, h);
    return c->key ? c : NULL;
}

void proj_ckmap_clear(ckmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

void proj_ckmap_put(ckmap *m, const char *key, size_t klen, uint64_t h,
                    long long seq, int parked)
{
    if (m->n >= CKMAP_MAX)
        proj_ckmap_clear(m);
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
