/*
 * test_store.c - the command side's in-memory states: lookups per
 * (type, partition); transactions that roll back to exactly the committed
 * states (state text, version, remembered command ids, aggregates created
 * in the transaction); two transactions at once (a sealed older one under
 * an open newer one: commit the older alone, or roll both back); the
 * dedup list keeps the newest N ids, escaped ids included; snapshots
 * round-trip through restore without re-encoding the state; tombstones
 * and bad records; dropping partitions; the byte count grows with
 * aggregates and remembered ids, returns on rollback, and is 0 after a
 * drop.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "store.h"

static const char *state_of(evl_store *s, const char *id)
{
    return evl_store_state(evl_store_get(s, "customer", 0, id), NULL);
}

static void lookups(void)
{
    evl_store *s = evl_store_new(3);
    CHECK(evl_store_get(s, "customer", 0, "c-1") == NULL, "empty store");
    CHECK_INT(evl_store_version(NULL), 0, "an unknown aggregate: version 0");
    CHECK(!evl_store_seen(NULL, "x"), "an unknown aggregate saw nothing");
    evl_store_put(s, "customer", 0, "c-1", "{\"a\":1}", 7, 2, "cmd-1");
    evl_store_put(s, "customer", 1, "c-1", "{\"b\":1}", 7, 5, NULL);
    evl_store_put(s, "cart", 0, "c-1", "{}", 2, 1, NULL);
    evl_store_agg *a = evl_store_get(s, "customer", 0, "c-1");
    CHECK_INT(evl_store_version(a), 2, "version");
    CHECK_STR(evl_store_state(a, NULL), "{\"a\":1}", "state");
    CHECK(evl_store_seen(a, "cmd-1"), "the command id is remembered");
    CHECK(!evl_store_seen(a, "cmd-2"), "another is not");
    CHECK_INT(evl_store_version(evl_store_get(s, "customer", 1, "c-1")), 5,
              "partitions are separate");
    CHECK_INT(evl_store_count(s, NULL, -1), 3, "three aggregates in all");
    CHECK_INT(evl_store_count(s, "customer", -1), 2, "two customers");
    evl_store_drop(s, "customer", 1);
    CHECK_INT(evl_store_count(s, NULL, -1), 2, "drop one partition");
    evl_store_drop(s, "cart", -1);
    CHECK_INT(evl_store_count(s, NULL, -1), 1, "drop a type");
    evl_store_drop(s, NULL, -1);
    CHECK_INT(evl_store_count(s, NULL, -1), 0, "drop everything");
    evl_store_free(s);
    evl_store_free(NULL);
}

static void dedup_ring(void)
{
    evl_store *s = evl_store_new(3);
    char id[16];
    for (int i = 1; i <= 5; i++) {
        snprintf(id, sizeof id, "cmd-%d", i);
        evl_store_put(s, "customer", 0, "c-1", "{}", 2, i, id);
    }
    evl_store_agg *a = evl_store_get(s, "customer", 0, "c-1");
    CHECK(!evl_store_seen(a, "cmd-1") && !evl_store_seen(a, "cmd-2"),
          "the oldest ids are forgotten");
    CHECK(evl_store_seen(a, "cmd-3") && evl_store_seen(a, "cmd-5"),
          "the newest three are kept");
    evl_store_free(s);

    s = evl_store_new(0);
    evl_store_put(s, "customer", 0, "c-1", "{}", 2, 1, "cmd-1");
    CHECK(!evl_store_seen(evl_store_get(s, "customer", 0, "c-1"), "cmd-1"),
          "dedup_ids = 0 remembers nothing");
    evl_store_free(s);
}

static void transactions(void)
{
    evl_store *s = evl_store_new(2);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":1}", 7, 1, "a");
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":2}", 7, 2, "b");

    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":3}", 7, 3, "c");
    evl_store_put(s, "customer", 0, "c-2", "{\"w\":1}", 7, 1, "d");
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":4}", 7, 4, "e");
    CHECK_INT(evl_store_ntouched(s), 2, "two aggregates touched");
    const char *type;
    int32_t part;
    const evl_store_agg *t0 = evl_store_touched(s, 0, &type, &part);
    CHECK_STR(evl_store_id(t0), "c-1", "first touched first");
    CHECK_STR(type, "customer", "its type");
    CHECK_INT(part, 0, "its partition");
    CHECK_STR(state_of(s, "c-1"), "{\"v\":4}",
              "the transaction sees its "
              "own writes");
    evl_store_agg *a = evl_store_get(s, "customer", 0, "c-1");
    CHECK(!evl_store_seen(a, "a") && !evl_store_seen(a, "b"),
          "inside: the ring moved on");
    evl_store_rollback(s);

    a = evl_store_get(s, "customer", 0, "c-1");
    CHECK_STR(evl_store_state(a, NULL), "{\"v\":2}", "rollback: old state");
    CHECK_INT(evl_store_version(a), 2, "rollback: old version");
    CHECK(evl_store_seen(a, "a") && evl_store_seen(a, "b"),
          "rollback: the old ids are back");
    CHECK(!evl_store_seen(a, "c") && !evl_store_seen(a, "e"),
          "rollback: the new ids are gone");
    CHECK(evl_store_get(s, "customer", 0, "c-2") == NULL,
          "rollback: an aggregate created in it is gone");
    CHECK_INT(evl_store_ntouched(s), 0, "nothing touched after rollback");

    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":3}", 7, 3, "c");
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":4}", 7, 4, "e");
    evl_store_put(s, "customer", 0, "c-2", "{\"w\":1}", 7, 1, "d");
    evl_store_commit(s);
    a = evl_store_get(s, "customer", 0, "c-1");
    CHECK_STR(evl_store_state(a, NULL), "{\"v\":4}", "commit keeps");
    CHECK(evl_store_seen(a, "e") && evl_store_seen(a, "c") &&
              !evl_store_seen(a, "b"),
          "commit: the ring holds the newest two");
    CHECK(evl_store_get(s, "customer", 0, "c-2") != NULL, "commit: created");

    /* a drop in the middle of a transaction rolls it back first */
    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-3", "{}", 2, 1, "x");
    evl_store_drop(s, "customer", 0);
    CHECK_INT(evl_store_count(s, NULL, -1), 0, "drop inside a transaction");
    evl_store_free(s);
}

/* The command processor decides the next batch while the previous one
 * commits: the older transaction is sealed under the newer. */
static void sealed(void)
{
    evl_store *s = evl_store_new(2);
    evl_store_agg *a;
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":1}", 7, 1, "a");
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":2}", 7, 2, "b");

    /* older: c-1 -> 3 (id c pushes a out of the two-slot ring), c-2
     * created; newer: c-1 -> 4 (e pushes b out), c-3 created */
    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":3}", 7, 3, "c");
    evl_store_put(s, "customer", 0, "c-2", "{\"w\":1}", 7, 1, "d");
    evl_store_seal(s);
    CHECK_INT(evl_store_ntouched(s), 0, "sealed: the newer level is empty");
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":4}", 7, 4, "e");
    evl_store_put(s, "customer", 0, "c-3", "{\"x\":1}", 7, 1, "f");
    evl_store_put(s, "customer", 0, "c-2", "{\"w\":2}", 7, 2, "g");
    CHECK_INT(evl_store_ntouched(s), 3, "the newer level lists its own");
    CHECK_STR(evl_store_id(evl_store_touched(s, 0, NULL, NULL)), "c-1",
              "touched again in the newer level: listed there");
    CHECK_STR(state_of(s, "c-1"), "{\"v\":4}", "the newest state shows");

    /* roll both back: exactly the committed states */
    evl_store_rollback(s);
    a = evl_store_get(s, "customer", 0, "c-1");
    CHECK_STR(evl_store_state(a, NULL), "{\"v\":2}", "both rolled back");
    CHECK_INT(evl_store_version(a), 2, "both rolled back: version");
    CHECK(evl_store_seen(a, "a") && evl_store_seen(a, "b") &&
              !evl_store_seen(a, "c") && !evl_store_seen(a, "e"),
          "both rolled back: ring");
    CHECK(!evl_store_get(s, "customer", 0, "c-2") &&
              !evl_store_get(s, "customer", 0, "c-3"),
          "both rolled back: created aggregates gone");

    /* commit the older alone, then roll the newer back */
    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":3}", 7, 3, "c");
    evl_store_put(s, "customer", 0, "c-2", "{\"w\":1}", 7, 1, "d");
    evl_store_seal(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":4}", 7, 4, "e");
    evl_store_put(s, "customer", 0, "c-2", "{\"w\":2}", 7, 2, "g");
    evl_store_put(s, "customer", 0, "c-3", "{\"x\":1}", 7, 1, "f");
    evl_store_commit_sealed(s);
    CHECK_INT(evl_store_ntouched(s), 3, "the newer level stays open");
    evl_store_rollback(s);
    a = evl_store_get(s, "customer", 0, "c-1");
    CHECK_STR(evl_store_state(a, NULL), "{\"v\":3}",
              "the older level's state stays");
    CHECK_INT(evl_store_version(a), 3, "the older level's version stays");
    CHECK(evl_store_seen(a, "b") && evl_store_seen(a, "c") &&
              !evl_store_seen(a, "a") && !evl_store_seen(a, "e"),
          "the ring as the older level left it");
    a = evl_store_get(s, "customer", 0, "c-2");
    CHECK(a && evl_store_version(a) == 1 && evl_store_seen(a, "d") &&
              !evl_store_seen(a, "g"),
          "created in the older level, changed in the newer: as created");
    CHECK(!evl_store_get(s, "customer", 0, "c-3"),
          "created in the newer level: gone");

    /* commit the older, then the newer, then seal twice (merge) */
    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":4}", 7, 4, "e");
    evl_store_seal(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":5}", 7, 5, "h");
    evl_store_commit_sealed(s);
    evl_store_commit(s);
    a = evl_store_get(s, "customer", 0, "c-1");
    CHECK(evl_store_version(a) == 5 && evl_store_seen(a, "e") &&
              evl_store_seen(a, "h") && !evl_store_seen(a, "c"),
          "both committed in turn");
    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":6}", 7, 6, "i");
    evl_store_seal(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":7}", 7, 7, "j");
    evl_store_seal(s);
    CHECK_INT(evl_store_ntouched(s), 0, "sealing again merges");
    evl_store_commit_sealed(s);
    evl_store_rollback(s);
    CHECK_INT(evl_store_version(evl_store_get(s, "customer", 0, "c-1")), 7,
              "the merged level committed as one");

    /* a drop while both are open rolls both back first */
    evl_store_begin(s);
    evl_store_put(s, "customer", 0, "c-1", "{\"v\":8}", 7, 8, "k");
    evl_store_seal(s);
    evl_store_put(s, "customer", 0, "c-4", "{}", 2, 1, "l");
    evl_store_drop(s, "customer", 0);
    CHECK_INT(evl_store_count(s, NULL, -1), 0, "drop with two levels open");
    evl_store_free(s);

    /* empty levels, no ids remembered (nothing allocated yet) */
    s = evl_store_new(0);
    evl_store_begin(s);
    evl_store_seal(s);
    evl_store_commit_sealed(s);
    evl_store_put(s, "customer", 1, "c-9", "{}", 2, 1, NULL);
    evl_store_seal(s);
    evl_store_commit_sealed(s);
    evl_store_commit(s);
    CHECK_INT(evl_store_version(evl_store_get(s, "customer", 1, "c-9")), 1,
              "empty levels seal and commit");
    evl_store_free(s);
}

static void snapshots(void)
{
    evl_store *s = evl_store_new(2), *r = evl_store_new(2);
    evl_buf b = {0};
    char err[EVL_ERRLEN];
    const char *st = "{\"f\":1.0,\"i\":10,\"s\":\"\\u00e9\",\"l\":[]}";
    evl_store_put(s, "customer", 3, "c-\"1\"", st, strlen(st), 4, "a");
    evl_store_put(s, "customer", 3, "c-\"1\"", st, strlen(st), 5, "b");
    evl_store_put(s, "customer", 3, "c-\"1\"", st, strlen(st), 6, "c");
    evl_store_snapshot(evl_store_get(s, "customer", 3, "c-\"1\""), "customer",
                       &b);
    evl_buf_putc(&b, '\0');
    CHECK_STR(
        b.data,
        "{\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-\\\"1\\\"\","
        "\"version\":6,\"command_ids\":[\"b\",\"c\"],"
        "\"state\":{\"f\":1.0,\"i\":10,\"s\":\"\\u00e9\",\"l\":[]}}",
        "the snapshot format");
    CHECK_INT(evl_store_restore(r, "customer", 3, "c-\"1\"", 5, b.data,
                                b.len - 1, err, sizeof err),
              EVL_OK, "restore a snapshot");
    evl_store_agg *a = evl_store_get(r, "customer", 3, "c-\"1\"");
    CHECK_INT(evl_store_version(a), 6, "restored version");
    CHECK_STR(evl_store_state(a, NULL), st,
              "restored state, byte for byte (1.0 stays a float)");
    CHECK(evl_store_seen(a, "b") && evl_store_seen(a, "c") &&
              !evl_store_seen(a, "a"),
          "restored command ids");

    /* more ids than the store remembers: the newest are kept */
    evl_store *small = evl_store_new(1);
    evl_store_restore(small, "customer", 3, "k", 1, b.data, b.len - 1, err,
                      sizeof err);
    a = evl_store_get(small, "customer", 3, "k");
    CHECK(evl_store_seen(a, "c") && !evl_store_seen(a, "b"),
          "a smaller dedup_ids keeps the newest");
    evl_store_free(small);

    const char *nullstate = "{ \"version\" : 0 , \"command_ids\":[\"z\"], "
                            "\"state\" : null }";
    CHECK_INT(evl_store_restore(r, "customer", 3, "n", 1, nullstate,
                                strlen(nullstate), err, sizeof err),
              EVL_OK, "a snapshot with a null state");
    CHECK(evl_store_state(evl_store_get(r, "customer", 3, "n"), NULL) == NULL,
          "no state: initial()");

    CHECK_INT(evl_store_restore(r, "customer", 3, "c-\"1\"", 5, NULL, 0, err,
                                sizeof err),
              EVL_OK, "a tombstone");
    CHECK(evl_store_get(r, "customer", 3, "c-\"1\"") == NULL,
          "a tombstone forgets the aggregate");

    CHECK_INT(evl_store_restore(r, "customer", 3, "x", 1, "not json", 8, err,
                                sizeof err),
              EVL_EPERMANENT, "garbage is refused");
    CHECK_HAS(err, "not valid JSON", "and named");
    CHECK_INT(evl_store_restore(r, "customer", 3, "x", 1, "{\"state\":{}}", 12,
                                err, sizeof err),
              EVL_EPERMANENT, "a snapshot without version is refused");
    CHECK_INT(evl_store_restore(r, "customer", 3, "x", 1, "{\"version\":1}", 13,
                                err, sizeof err),
              EVL_EPERMANENT, "a snapshot without state is refused");
    CHECK_INT(
        evl_store_restore(r, "customer", 3, NULL, 0, "{}", 2, err, sizeof err),
        EVL_EPERMANENT, "a record without key is refused");
    /* One reader for records, the one that checks like the scripts'
     * decoder: a control byte in the state was "white space" to the old
     * parser and copied verbatim into the next snapshot, which no restore
     * could read again. */
    static const char ctl[] = "{\"state\":\x01\n2,\"version\":4}";
    CHECK_INT(evl_store_restore(r, "customer", 3, "x", 1, ctl, sizeof ctl - 1,
                                err, sizeof err),
              EVL_EPERMANENT, "a control byte before the state is refused");
    CHECK_HAS(err, "not valid JSON", "as invalid JSON");
    static const char *const refused[] = {
        "{\"version\":4,\"state\":{\"s\":\"a\x01\"}}", /* raw control byte */
        "{\"version\":4,\"state\":{\"s\":\"\xff\"}}",  /* invalid UTF-8 */
        "{\"version\":4,\"state\":{\"n\":9007199254740993}}", /* rounded */
        "{\"version\":4.5,\"state\":{}}",
        "{\"version\":-1,\"state\":{}}",
        "{\"version\":4,\"state\":{},\"command_ids\":[\"a\",1]}",
        "{\"version\":4,\"state\":{},\"command_ids\":{}}",
        "{\"version\":4,\"state\":{}} x",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char what[160];
        snprintf(what, sizeof what, "refused: %s", refused[i]);
        CHECK_INT(evl_store_restore(r, "customer", 3, "x", 1, refused[i],
                                    strlen(refused[i]), err, sizeof err),
                  EVL_EPERMANENT, what);
    }
    /* escaped ids come back unescaped, and the state exactly as written */
    static const char esc[] = "{\"command_ids\":[\"q\\\"1\",\"\\u00e9\"],"
                              "\"version\":2, \"state\" : [1, 2.0] }";
    CHECK_INT(evl_store_restore(r, "customer", 3, "e", 1, esc, sizeof esc - 1,
                                err, sizeof err),
              EVL_OK, "escaped command ids and spaces around members");
    a = evl_store_get(r, "customer", 3, "e");
    CHECK(a && evl_store_seen(a, "q\"1") && evl_store_seen(a, "\xc3\xa9"),
          "escaped ids are remembered unescaped");
    CHECK_STR(a ? evl_store_state(a, NULL) : NULL, "[1, 2.0]",
              "the state span as written");
    CHECK(evl_store_get(r, "customer", 3, "x") == NULL,
          "refused records change nothing");
    evl_buf_free(&b);
    evl_store_free(s);
    evl_store_free(r);
}

/* Ids that JSON escapes, ids that look like pieces of the stored list,
 * eviction and rollback of the escaped text. */
static void escaped_ids(void)
{
    evl_store *s = evl_store_new(2);
    evl_buf b = {0}, before = {0};
    evl_store_agg *a;
    evl_store_put(s, "t", 0, "k", "{}", 2, 1, "x\"1");
    evl_store_put(s, "t", 0, "k", "{}", 2, 2, "b\\s");
    a = evl_store_get(s, "t", 0, "k");
    CHECK(evl_store_seen(a, "x\"1") && evl_store_seen(a, "b\\s"),
          "ids with a quote and a backslash are remembered");
    CHECK(!evl_store_seen(a, "x\\\"1") && !evl_store_seen(a, "x") &&
              !evl_store_seen(a, "b\\") && !evl_store_seen(a, "x\"1\",\"b"),
          "near misses and a span across two ids are not");
    evl_store_put(s, "t", 0, "k", "{}", 2, 3, "\xc3\xa9-\xe2\x82\xac");
    a = evl_store_get(s, "t", 0, "k");
    CHECK(!evl_store_seen(a, "x\"1") && evl_store_seen(a, "b\\s") &&
              evl_store_seen(a, "\xc3\xa9-\xe2\x82\xac"),
          "the oldest escaped id leaves; UTF-8 ids are found");
    evl_store_snapshot(a, "t", &b);
    evl_buf_putc(&b, '\0');
    CHECK_HAS(b.data, "\"command_ids\":[\"b\\\\s\",\"\xc3\xa9-\xe2\x82\xac\"]",
              "the snapshot lists them escaped, oldest first");

    /* a rolled-back id leaves the text as it was */
    evl_store_snapshot(a, "t", &before);
    evl_store_begin(s);
    evl_store_put(s, "t", 0, "k", "{}", 2, 4, "new");
    evl_store_seal(s);
    evl_store_put(s, "t", 0, "k", "{}", 2, 5, "newer\"");
    evl_store_rollback(s);
    a = evl_store_get(s, "t", 0, "k");
    b.len = 0;
    evl_store_snapshot(a, "t", &b);
    CHECK(b.len == before.len && memcmp(b.data, before.data, b.len) == 0,
          "rolling back two levels restores the snapshot byte for byte");
    CHECK(!evl_store_seen(a, "new") && !evl_store_seen(a, "newer\"") &&
              evl_store_seen(a, "b\\s"),
          "and the ids");
    evl_buf_free(&b);
    evl_buf_free(&before);
    evl_store_free(s);
}

static void many(void)
{
    evl_store *s = evl_store_new(2);
    char id[32];
    evl_store_begin(s);
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "agg-%d", i);
        evl_store_put(s, "t", i % 3, id, "{}", 2, 1, id);
    }
    evl_store_commit(s);
    int found = 0;
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "agg-%d", i);
        found += evl_store_seen(evl_store_get(s, "t", i % 3, id), id);
    }
    CHECK_INT(found, 20000, "20,000 aggregates, all found after growth");
    evl_store_free(s);
}

static void bytes(void)
{
    evl_store *s = evl_store_new(10);
    char id[32], cmd[128];
    CHECK_INT(evl_store_bytes(s, NULL, -1), 0, "an empty store holds 0 bytes");
    evl_store_put(s, "t", 0, "a-0", "{}", 2, 1, NULL);
    size_t one = evl_store_bytes(s, NULL, -1);
    CHECK(one > 0, "one aggregate holds some bytes");
    for (int i = 1; i < 100; i++) {
        snprintf(id, sizeof id, "a-%d", i);
        evl_store_put(s, "t", 0, id, "{}", 2, 1, NULL);
    }
    size_t hundred = evl_store_bytes(s, NULL, -1);
    CHECK(hundred > one + 99 * 50, "bytes grow with the aggregates");
    size_t before_ids = hundred;
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "a-%d", i);
        for (int k = 0; k < 10; k++) {
            snprintf(cmd, sizeof cmd, "%s-cmd-%036d", id, k);
            evl_store_put(s, "t", 0, id, "{}", 2, 2 + k, cmd);
        }
    }
    size_t with_ids = evl_store_bytes(s, NULL, -1);
    /* 100 aggregates x 10 ids of ~42 bytes each: at least 42,000 */
    CHECK(with_ids >= before_ids + 100 * 10 * 42, "bytes grow with the ids");
    /* the ring is full: more ids replace old ones, the bytes stay put */
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "a-%d", i);
        snprintf(cmd, sizeof cmd, "%s-cmd-%036d", id, 99);
        evl_store_put(s, "t", 0, id, "{}", 2, 20, cmd);
    }
    CHECK_INT(evl_store_bytes(s, NULL, -1), with_ids,
              "a full id ring holds its bytes");
    /* a transaction that grows a state, adds an aggregate, rolls back */
    evl_store_begin(s);
    evl_store_put(s, "t", 0, "a-1", "{\"big\":\"xxxxxxxxxxxxxxxxxxxxxx\"}", 30,
                  30, "c-new");
    evl_store_put(s, "t", 1, "b-1", "{}", 2, 1, "c-new2");
    CHECK(evl_store_bytes(s, NULL, -1) > with_ids, "a put inside counts");
    evl_store_rollback(s);
    /* (the restored id list is a tight copy: its capacity may shrink) */
    size_t back = evl_store_bytes(s, "t", 0);
    CHECK(back <= with_ids && back + 200 > with_ids,
          "a rollback gives the bytes back");
    /* a restored snapshot counts as the same aggregate put */
    evl_buf snap = {0};
    evl_store_snapshot(evl_store_get(s, "t", 0, "a-5"), "t", &snap);
    size_t p0 = evl_store_bytes(s, "t", 0);
    char err[256];
    CHECK_INT(evl_store_restore(s, "t", 0, "a-5", 3, snap.data, snap.len, err,
                                sizeof err),
              EVL_OK, "restore");
    CHECK(evl_store_bytes(s, "t", 0) <= p0, "a restore replaces, not adds");
    CHECK_INT(evl_store_restore(s, "t", 0, "a-5", 3, NULL, 0, err, sizeof err),
              EVL_OK, "tombstone");
    CHECK(evl_store_bytes(s, "t", 0) < p0 - 400, "a tombstone frees");
    evl_buf_free(&snap);
    evl_store_drop(s, NULL, -1);
    CHECK_INT(evl_store_bytes(s, NULL, -1), 0, "0 bytes after a drop");
    evl_store_free(s);
}

int main(void)
{
    lookups();
    dedup_ring();
    transactions();
    sealed();
    snapshots();
    escaped_ids();
    many();
    bytes();
    return check_done();
}
