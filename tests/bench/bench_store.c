/*
 * bench_store.c - what the command side's in-memory store costs per
 * command once aggregates remember their last command ids (store.h).
 *
 *   bench_store [AGGREGATES [DEDUP_IDS [COMMANDS]]]   (10000 100 200000)
 *
 * Fills a store with AGGREGATES aggregates, each remembering DEDUP_IDS
 * UUIDv7 command ids (a long-lived aggregate under the default
 * commands.dedup_ids), then runs COMMANDS commands on random aggregates in
 * transactions of 300, as the processor does: look up, check the id was
 * not seen, put the new state and id, and write one snapshot per touched
 * aggregate before commit. Prints microseconds per command for each step.
 *
 * Baseline, same run, same ids: the id list kept as one string per id
 * (what the store did before): the check compares each string, a new id
 * is a new string, and the snapshot escapes the ids one at a time. Its
 * figures cover the id list only, so the ratio understates the store's
 * gain (the rest of the store's work is in its figure, not the
 * baseline's).
 *
 * First, memory: a fresh store of AGGREGATES aggregates with the same
 * state, for 0, 10 and DEDUP_IDS remembered UUID command ids each; prints
 * the bytes per aggregate as evl_store_bytes() counts them and as malloc
 * holds them (mallinfo2: with its per-block overhead).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envelope.h"
#include "luaapi.h"
#include "store.h"

#define BATCH 300

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void new_id(char out[37])
{
    if (evl_luaapi_uuid7(out) != 0) {
        fprintf(stderr, "bench_store: no random bytes\n");
        exit(1);
    }
}

/* the baseline's list: a ring of strings per aggregate */
typedef struct ring {
    char **v;
    int n, next;
} ring;

static int ring_seen(const ring *r, const char *id)
{
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->v[i], id) == 0)
            return 1;
    return 0;
}

static void ring_push(ring *r, int cap, const char *id)
{
    if (r->n == cap)
        free(r->v[r->next]);
    else
        r->n++;
    r->v[r->next] = strdup(id);
    r->next = (r->next + 1) % cap;
}

static void ring_json(const ring *r, int cap, evl_buf *out)
{
    for (int i = r->n - 1; i >= 0; i--) { /* oldest first */
        const char *id = r->v[(r->next - 1 - i + cap) % cap];
        evl_envelope_put_string(out, id, strlen(id));
        if (i)
            evl_buf_putc(out, ',');
    }
}

/* The bytes per aggregate of a store of naggs aggregates, each with
 * state and nids remembered ids (UUIDs), the store keeping dedup. */
static void memory(int naggs, int dedup, int nids, const char *state)
{
    char agg[32], cid[37];
    size_t m0 = mallinfo2().uordblks;
    evl_store *s = evl_store_new(dedup);
    for (int k = 0; k < (nids > 0 ? nids : 1); k++)
        for (int a = 0; a < naggs; a++) {
            snprintf(agg, sizeof agg, "customer-%d", a);
            new_id(cid);
            evl_store_put(s, "customer", a % 6, agg, state, strlen(state),
                          k + 1, nids > 0 ? cid : NULL);
        }
    size_t m1 = mallinfo2().uordblks;
    printf("memory: dedup_ids=%d ids=%d state=%zu id=36 bytes: store counts "
           "%.0f B/aggregate, malloc holds %.0f B/aggregate\n",
           dedup, nids, strlen(state),
           (double)evl_store_bytes(s, NULL, -1) / naggs,
           (double)(m1 - m0) / naggs);
    evl_store_free(s);
}

int main(int argc, char **argv)
{
    int naggs = argc > 1 ? atoi(argv[1]) : 10000;
    int dedup = argc > 2 ? atoi(argv[2]) : 100;
    int ncmds = argc > 3 ? atoi(argv[3]) : 200000;
    const char *state = "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}";
    size_t state_len = strlen(state);
    char agg[32], cid[37];
    evl_buf out = {0};
    double t_seen = 0, t_put = 0, t_snap = 0, t_total, b_seen = 0, b_put = 0,
           b_snap = 0, b_total, t0;
    long long snap_bytes = 0, dup = 0;
    int *pick;

    if (naggs < 1 || dedup < 1 || ncmds < BATCH) {
        fprintf(stderr, "usage: bench_store [AGGREGATES [DEDUP_IDS "
                        "[COMMANDS >= 300]]]\n");
        return 2;
    }
    memory(naggs, dedup, 0, state);
    memory(naggs, dedup, 10, state);
    memory(naggs, dedup, dedup, state);

    evl_store *s = evl_store_new(dedup);
    ring *rings = calloc((size_t)naggs, sizeof *rings);
    for (int a = 0; a < naggs; a++)
        rings[a].v = calloc((size_t)dedup, sizeof *rings[a].v);
    for (int k = 0; k < dedup; k++)
        for (int a = 0; a < naggs; a++) {
            snprintf(agg, sizeof agg, "customer-%d", a);
            new_id(cid);
            evl_store_put(s, "customer", a % 6, agg, state, state_len, k + 1,
                          cid);
            ring_push(&rings[a], dedup, cid);
        }
    pick = malloc(sizeof *pick * (size_t)ncmds);
    srand(7);
    for (int i = 0; i < ncmds; i++)
        pick[i] = rand() % naggs;

    /* the store */
    t0 = now_s();
    for (int i = 0; i < ncmds; i += BATCH) {
        evl_store_begin(s);
        for (int j = i; j < i + BATCH && j < ncmds; j++) {
            snprintf(agg, sizeof agg, "customer-%d", pick[j]);
            new_id(cid);
            double q0 = now_s();
            evl_store_agg *a = evl_store_get(s, "customer", pick[j] % 6, agg);
            int seen = evl_store_seen(a, cid);
            double q1 = now_s();
            dup += seen;
            if (!seen)
                evl_store_put(s, "customer", pick[j] % 6, agg, state, state_len,
                              evl_store_version(a) + 1, cid);
            t_put += now_s() - q1;
            t_seen += q1 - q0;
        }
        double q = now_s();
        out.len = 0;
        for (size_t k = 0; k < evl_store_ntouched(s); k++) {
            const char *type;
            int32_t partition;
            const evl_store_agg *a = evl_store_touched(s, k, &type, &partition);
            evl_store_snapshot(a, type, &out);
        }
        snap_bytes += (long long)out.len;
        evl_store_commit(s);
        t_snap += now_s() - q;
    }
    t_total = now_s() - t0;

    /* the baseline: the id list as one string per id, same commands */
    t0 = now_s();
    for (int i = 0; i < ncmds; i += BATCH) {
        int touched[BATCH], nt = 0;
        for (int j = i; j < i + BATCH && j < ncmds; j++) {
            ring *r = &rings[pick[j]];
            new_id(cid);
            double q0 = now_s();
            int seen = ring_seen(r, cid);
            double q1 = now_s();
            dup += seen;
            if (!seen)
                ring_push(r, dedup, cid);
            b_put += now_s() - q1;
            b_seen += q1 - q0;
            touched[nt++] = pick[j];
        }
        double q = now_s();
        out.len = 0;
        for (int k = 0; k < nt; k++)
            ring_json(&rings[touched[k]], dedup, &out);
        b_snap += now_s() - q;
    }
    b_total = now_s() - t0;

    double n = (double)ncmds / 1e6;
    printf("aggregates=%d dedup_ids=%d commands=%d snapshot_bytes_per_cmd=%.0f "
           "duplicates=%lld\n",
           naggs, dedup, ncmds, (double)snap_bytes / ncmds, dup);
    printf("store:    %.2f us/command (lookup+seen %.2f, put %.2f, snapshots "
           "%.2f)\n",
           t_total / n, t_seen / n, t_put / n, t_snap / n);
    printf("baseline: %.2f us/command for the id list alone, one string per "
           "id (seen %.2f, push %.2f, snapshot ids %.2f)\n",
           b_total / n, b_seen / n, b_put / n, b_snap / n);
    printf("ratio: baseline id list / whole store = %.1fx\n",
           t_total > 0 ? b_total / t_total : 0.0);

    for (int a = 0; a < naggs; a++) {
        for (int k = 0; k < rings[a].n; k++)
            free(rings[a].v[k]);
        free(rings[a].v);
    }
    free(rings);
    free(pick);
    free(out.data);
    evl_store_free(s);
    return dup == 0 ? 0 : 1; /* fresh UUIDs are never duplicates */
}
