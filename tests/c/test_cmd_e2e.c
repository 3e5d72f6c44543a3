/*
 * test_cmd_e2e.c - a command yielding two events, end to end on the real
 * broker: a read_committed consumer sees both, in order, on the
 * aggregate's one partition (murmur2 of its id, the command's partition),
 * with contiguous sequences, UUIDv7 ids, the causation and correlation
 * ids, user id, the three headers; the result lists exactly those events;
 * the state topic holds the snapshot on the same partition; `evlua send
 * --wait` prints the result and exits 0 (accepted) or 1 (rejected);
 * SIGTERM ends `evlua run` with 0.
 */
#include "cmdtest.h"

static void check_event(const th_rec *e, const char *type, long long seq,
                        const char *causation, const char *correlation,
                        const char *user, int32_t partition)
{
    char what[160];
    const char *id = th_str(e, "id"), *at = th_str(e, "occurred_at");
    snprintf(what, sizeof what, "event %lld (%s)", seq, type);
    CHECK_STR(th_str(e, "type"), type, what);
    CHECK_INT(th_int(e, "sequence"), seq, "sequence numbers 1, 2, 3 ...");
    CHECK_INT(th_int(e, "version"), 1, "schema version 1 by default");
    CHECK_STR(th_str(e, "aggregate_type"), "customer", "aggregate_type");
    CHECK_STR(th_str(e, "aggregate_id"), "c-1", "aggregate_id");
    CHECK_STR(e->key, "c-1", "the key is the aggregate id");
    CHECK_INT(e->partition, partition,
              "the event sits on the command's partition (murmur2)");
    CHECK_STR(th_str(e, "causation_id"), causation,
              "causation_id is the command id");
    CHECK_STR(th_str(e, "correlation_id"), correlation, "correlation_id");
    if (user)
        CHECK_STR(th_str(e, "user_id"), user, "user_id from the metadata");
    else
        CHECK(
            cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(e->json, "user_id")),
            "user_id is null without metadata");
    CHECK(id && strlen(id) == 36 && id[14] == '7' && id[8] == '-',
          "the event id is a UUIDv7");
    CHECK(at && strlen(at) == 24 && at[10] == 'T' && at[23] == 'Z',
          "occurred_at is RFC 3339 UTC with milliseconds");
    CHECK_STR(e->h_type, type, "header evlua-type");
    CHECK_STR(e->h_agg, "customer", "header evlua-aggregate-type");
    CHECK_STR(e->h_ct, "application/json", "header content-type");
    CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(e->json, "data")),
          "data is an object");
}

int main(void)
{
    ct t;
    char events[256], results[256], state[256];
    th_recs evs = {0}, res = {0}, st = {0};
    pid_t pid;
    int32_t home;

    ct_init_customer(&t, "e2e", "a", NULL, NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);
    ct_topic(&t, "customer", "state", state, sizeof state);

    pid = ct_start(&t, "a", "a.log", NULL);
    rd_kafka_t *p = ct_producer(&t);
    /* the topics are created by evlua run: wait for them */
    ct_wait_topic(&t, results, 30);
    CHECK_INT(ct_partitions(&t, events), 6,
              "evlua run created the events topic with 6 partitions");

    ct_send(&t, p, "customer", "cmd-1", "RegisterCustomer", "c-1",
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\"}",
            "\"metadata\":{\"user_id\":\"u-7\",\"correlation_id\":\"corr-1\"}");
    ct_send(&t, p, "customer", "cmd-2", "UpdateCustomerProfile", "c-1",
            "{\"name\":\"Anna\",\"address\":\"1 Main St\"}", NULL);
    ct_flush(p);

    CHECK_INT(ct_wait_count(&t, results, 2, 90, &res), 2,
              "one result per command");
    ct_read_all(&t, events, "read_committed", &evs);
    home = evl_kafka_murmur2_partition("c-1", 3, 6);
    CHECK_INT(evs.n, 3, "three events: one from cmd-1, two from cmd-2");
    if (evs.n == 3) {
        check_event(&evs.v[0], "CustomerRegistered", 1, "cmd-1", "corr-1",
                    "u-7", home);
        check_event(&evs.v[1], "CustomerNameChanged", 2, "cmd-2", "cmd-2", NULL,
                    home);
        check_event(&evs.v[2], "CustomerAddressChanged", 3, "cmd-2", "cmd-2",
                    NULL, home);
        CHECK(evs.v[1].offset + 1 == evs.v[2].offset,
              "the two events of one command are adjacent in the log");
        cJSON *d = cJSON_GetObjectItemCaseSensitive(evs.v[1].json, "data");
        CHECK_STR(cJSON_GetStringValue(
                      cJSON_GetObjectItemCaseSensitive(d, "newName")),
                  "Anna", "CustomerNameChanged carries the new name");
        CHECK_STR(cJSON_GetStringValue(
                      cJSON_GetObjectItemCaseSensitive(d, "previousName")),
                  "Ann", "... and the previous one (a complete fact)");
    }

    const th_rec *r2 = ct_result(&res, "cmd-2");
    CHECK(r2 != NULL, "cmd-2 has a result");
    if (r2 && evs.n == 3) {
        cJSON *ids = cJSON_GetObjectItemCaseSensitive(r2->json, "events");
        CHECK_STR(th_str(r2, "status"), "accepted", "cmd-2 is accepted");
        CHECK_INT(th_int(r2, "version"), 3, "the result names the version");
        CHECK_INT(cJSON_GetArraySize(ids), 2, "the result lists two events");
        CHECK_STR(cJSON_GetStringValue(cJSON_GetArrayItem(ids, 0)),
                  th_str(&evs.v[1], "id"), "first listed event");
        CHECK_STR(cJSON_GetStringValue(cJSON_GetArrayItem(ids, 1)),
                  th_str(&evs.v[2], "id"), "second listed event");
        CHECK_INT(r2->partition, home, "the result is on the same partition");
        CHECK_STR(r2->key, "c-1", "the result is keyed by aggregate id");
    }

    ct_read_all(&t, state, "read_committed", &st);
    CHECK(st.n >= 1, "a snapshot on the state topic");
    if (st.n >= 1) {
        const th_rec *s = &st.v[st.n - 1];
        CHECK_INT(s->partition, home, "the snapshot is on the same partition");
        CHECK_STR(s->key, "c-1", "the snapshot is keyed by aggregate id");
        CHECK_INT(th_int(s, "version"), 3, "the snapshot's version");
        cJSON *sv = cJSON_GetObjectItemCaseSensitive(s->json, "state");
        CHECK_STR(
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(sv, "name")),
            "Anna", "the snapshot's state");
        CHECK_INT(cJSON_GetArraySize(
                      cJSON_GetObjectItemCaseSensitive(s->json, "command_ids")),
                  2, "the snapshot remembers both command ids");
    }
    char partitions[256];
    ct_topic(&t, "customer", "state", partitions, sizeof partitions);
    CHECK_INT(ct_partitions(&t, partitions), 6,
              "the state topic has the commands topic's partitions");

    /* evlua send --wait, as a user would */
    {
        char cmd[2048], out[4096];
        size_t n;
        FILE *f;
        snprintf(cmd, sizeof cmd,
                 "%s send -c %s/a.lua --wait --user u-9 customer c-2 "
                 "RegisterCustomer '{\"name\":\"Bo\","
                 "\"email\":\"bo@example.org\"}' 2>&1",
                 t.bin, t.dir);
        f = popen(cmd, "r");
        n = fread(out, 1, sizeof out - 1, f);
        out[n] = '\0';
        CHECK_INT(WEXITSTATUS(pclose(f)), 0, "evlua send --wait: accepted, 0");
        CHECK_HAS(out, "\"status\":\"accepted\"", "it prints the result");
        snprintf(cmd, sizeof cmd,
                 "%s send -c %s/a.lua --wait customer c-2 ChangeEmail "
                 "'{\"email\":\"nope\"}' 2>&1",
                 t.bin, t.dir);
        f = popen(cmd, "r");
        n = fread(out, 1, sizeof out - 1, f);
        out[n] = '\0';
        CHECK_INT(WEXITSTATUS(pclose(f)), 1, "evlua send --wait: rejected, 1");
        CHECK_HAS(out, "email is not a valid address", "the reason is shown");
    }

    int rc = th_stop(pid, SIGTERM, 30);
    CHECK_INT(rc, 0, "evlua run exits 0 on SIGTERM");
    if (check_failures_)
        ct_dump_log(&t, "a.log");
    rd_kafka_destroy(p);
    th_recs_free(&evs);
    th_recs_free(&res);
    th_recs_free(&st);
    return check_done();
}
