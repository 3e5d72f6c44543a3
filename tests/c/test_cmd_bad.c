/*
 * test_cmd_bad.c - every bad input of the command side gets exactly one
 * result naming what is wrong, emits no event, and does not stop the
 * partition: ctx.reject, expected_version mismatch, unknown command type,
 * unknown aggregate type, malformed JSON, invalid UTF-8, an integer
 * beyond 2^53, missing id / aggregate_id, a missing or wrong Kafka key, a
 * command on the wrong partition -> rejected; a Lua error (with
 * script:line), an exceeded instruction budget, a 5 MB command whose event
 * cannot fit a Kafka record, a command whose decoded form exceeds the
 * scripts' memory limit -> failed; a repeated command id ->
 * duplicate. Afterwards good commands are still accepted and the group's
 * committed offsets are at the end of every commands partition.
 */
#include "cmdtest.h"

static const char probe_lua[] =
    "-- a test aggregate with handlers that misbehave on purpose\n"
    "return {\n"
    "  type = 'probe',\n"
    "  initial = function() return { n = 0 } end,\n"
    "  apply = { Probed = function(s, e) s.n = s.n + 1 end },\n"
    "  handle = {\n"
    "    Ok = function(s, cmd, ctx)\n"
    "      return { { type = 'Probed', data = { at = ctx.version } } }\n"
    "    end,\n"
    "    Boom = function(s, cmd, ctx)\n"
    "      error('boom')\n" /* line 11 */
    "    end,\n"
    "    Spin = function() while true do end end,\n"
    "    Echo = function(s, cmd)\n"
    "      return { { type = 'Probed', data = { blob = cmd.data.blob } } }\n"
    "    end,\n"
    "  },\n"
    "}\n";

typedef struct expect {
    const char *id;     /* command id, or NULL: find by error text */
    const char *status; /* expected status */
    const char *error;  /* substring of the error, or NULL */
} expect;

static const th_rec *find_by_error(const th_recs *res, const char *text)
{
    for (size_t i = 0; i < res->n; i++) {
        const char *e = th_str(&res->v[i], "error");
        if (!th_str(&res->v[i], "command_id") && e && strstr(e, text))
            return &res->v[i];
    }
    return NULL;
}

int main(void)
{
    ct t;
    char cust_cmds[256], probe_cmds[256], cust_res[256], probe_res[256],
        cust_ev[256], probe_ev[256];
    th_recs res = {0}, res2 = {0}, evs = {0};
    size_t sent = 0;
    pid_t pid;

    ct_init(&t, "bad");
    ct_copy_aggregate(&t, "customer.lua");
    ct_write_file(&t, "aggregates/probe.lua", probe_lua);
    ct_config(&t, "a", "a", "dedup_ids = 10,", NULL);
    ct_topic(&t, "customer", "commands", cust_cmds, sizeof cust_cmds);
    ct_topic(&t, "probe", "commands", probe_cmds, sizeof probe_cmds);
    ct_topic(&t, "customer", "results", cust_res, sizeof cust_res);
    ct_topic(&t, "probe", "results", probe_res, sizeof probe_res);
    ct_topic(&t, "customer", "events", cust_ev, sizeof cust_ev);
    ct_topic(&t, "probe", "events", probe_ev, sizeof probe_ev);
    /* room for a 5 MB command on the probe's commands topic */
    const char *big[] = {"max.message.bytes", "10485760", NULL};
    ct_create_topic(&t, probe_cmds, 6, big);

    pid = ct_start(&t, "a", "a.log", NULL);
    rd_kafka_t *p = ct_producer(&t);
    ct_wait_topic(&t, cust_res, 30);

    /* customer: one good command first */
    ct_send(&t, p, "customer", "reg-1", "RegisterCustomer", "c-1",
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\"}", NULL);
    sent++;
    ct_send(&t, p, "customer", "rej-1", "UpdateCustomerProfile", "c-1",
            "{\"name\":\"\"}", NULL);
    sent++;
    ct_send(&t, p, "customer", "ver-1", "ChangeEmail", "c-1",
            "{\"email\":\"a@example.org\"}", "\"expected_version\":7");
    sent++;
    ct_send(&t, p, "customer", "type-1", "Fly", "c-1", "{}", NULL);
    sent++;
    {
        const char *c = "{\"id\":\"agg-1\",\"type\":\"X\",\"aggregate_type\":"
                        "\"spaceship\",\"aggregate_id\":\"c-1\",\"data\":{}}";
        ct_send_raw(p, cust_cmds, -1, "c-1", c, strlen(c));
        sent++;
    }
    {
        const char *c = "{\"id\":\"json-1\", \"type\": oops";
        ct_send_raw(p, cust_cmds, -1, "c-1", c, strlen(c));
        sent++;
    }
    {
        const char c[] = "{\"id\":\"utf-1\",\"type\":\"ChangeEmail\","
                         "\"aggregate_id\":\"c-1\",\"data\":{\"email\":\"a\xff"
                         "b@example.org\"}}";
        ct_send_raw(p, cust_cmds, -1, "c-1", c, sizeof c - 1);
        sent++;
    }
    {
        const char *c = "{\"id\":\"int-1\",\"type\":\"ChangeEmail\","
                        "\"aggregate_id\":\"c-1\",\"data\":{\"n\":"
                        "9007199254740993}}";
        ct_send_raw(p, cust_cmds, -1, "c-1", c, strlen(c));
        sent++;
    }
    {
        const char *c = "{\"type\":\"ChangeEmail\",\"aggregate_id\":\"c-1\","
                        "\"data\":{}}";
        ct_send_raw(p, cust_cmds, -1, "c-1", c, strlen(c));
        sent++;
    }
    {
        const char *c = "{\"id\":\"noagg-1\",\"type\":\"ChangeEmail\","
                        "\"data\":{}}";
        ct_send_raw(p, cust_cmds, -1, "c-1", c, strlen(c));
        sent++;
    }
    {
        const char *c = "{\"id\":\"key-1\",\"type\":\"ChangeEmail\","
                        "\"aggregate_id\":\"c-1\",\"data\":{}}";
        ct_send_raw(p, cust_cmds, -1, "not-c-1", c, strlen(c));
        sent++;
        c = "{\"id\":\"key-2\",\"type\":\"ChangeEmail\","
            "\"aggregate_id\":\"c-1\",\"data\":{}}";
        ct_send_raw(p, cust_cmds, -1, NULL, c, strlen(c));
        sent++;
        c = "{\"id\":\"part-1\",\"type\":\"ChangeEmail\","
            "\"aggregate_id\":\"c-1\",\"data\":{}}";
        int32_t home = evl_kafka_murmur2_partition("c-1", 3, 6);
        ct_send_raw(p, cust_cmds, (home + 1) % 6, "c-1", c, strlen(c));
        sent++;
    }
    /* the right expected version passes */
    ct_send(&t, p, "customer", "ver-2", "ChangeEmail", "c-1",
            "{\"email\":\"a@example.org\"}", "\"expected_version\":1");
    sent++;

    /* probe: Lua error, limit, duplicate, 5 MB */
    ct_send(&t, p, "probe", "ok-1", "Ok", "p-1", "{}", NULL);
    ct_send(&t, p, "probe", "ok-1", "Ok", "p-1", "{}", NULL);
    ct_send(&t, p, "probe", "boom-1", "Boom", "p-1", "{}", NULL);
    ct_send(&t, p, "probe", "spin-1", "Spin", "p-1", "{}", NULL);
    {
        size_t n = 5 * 1024 * 1024;
        char *blob = malloc(n + 16);
        memset(blob, 'x', n + 16);
        blob[0] = '{';
        memcpy(blob + 1, "\"blob\":\"", 8);
        blob[n + 13] = '"';
        blob[n + 14] = '}';
        blob[n + 15] = '\0';
        ct_send(&t, p, "probe", "big-1", "Echo", "p-1", blob, NULL);
        free(blob);
    }
    {
        /* 4.5 MB of JSON, 1.5 million tables: more than the 64 MiB the
         * scripts may use */
        int items = 1500000;
        char *huge = malloc((size_t)items * 3 + 16), *w = huge;
        w += sprintf(w, "{\"x\":[[]");
        for (int i = 0; i < items; i++, w += 3)
            memcpy(w, ",[]", 3);
        strcpy(w, "]}");
        ct_send(&t, p, "probe", "huge-1", "Ok", "p-1", huge, NULL);
        free(huge);
    }
    ct_send(&t, p, "probe", "ok-2", "Ok", "p-1", "{}", NULL);
    ct_flush(p);

    CHECK_INT(ct_wait_count(&t, cust_res, sent, 90, &res), sent,
              "one result per customer command, bad ones included");
    CHECK_INT(ct_wait_count(&t, probe_res, 7, 90, &res2), 7,
              "one result per probe command");

    static const expect cust[] = {
        {"reg-1", "accepted", NULL},
        {"rej-1", "rejected", "name must not be empty"},
        {"ver-1", "rejected", "expected version 7"},
        {"type-1", "rejected", "no handler for command Fly"},
        {"agg-1", "rejected", "unknown aggregate type spaceship"},
        /* malformed: the id before the damage still names the result */
        {"json-1", "rejected", "malformed JSON: invalid JSON"},
        {"utf-1", "rejected", "invalid UTF-8"},
        {"int-1", "rejected", "9007199254740993"},
        {NULL, "rejected", "has no id"},
        {"noagg-1", "rejected", "has no aggregate_id"},
        {"key-1", "rejected", "Kafka key differs"},
        {"key-2", "rejected", "has no Kafka key"},
        {"part-1", "rejected", "murmur2"},
        {"ver-2", "accepted", NULL},
    };
    for (size_t i = 0; i < sizeof cust / sizeof cust[0]; i++) {
        const th_rec *r = cust[i].id ? ct_result(&res, cust[i].id)
                                     : find_by_error(&res, cust[i].error);
        char what[256];
        snprintf(what, sizeof what, "customer command %s (%s)",
                 cust[i].id ? cust[i].id : "without id", cust[i].error);
        CHECK(r != NULL, what);
        if (!r)
            continue;
        CHECK_STR(th_str(r, "status"), cust[i].status, what);
        if (cust[i].error)
            CHECK_HAS(th_str(r, "error"), cust[i].error, what);
        CHECK_INT(cJSON_GetArraySize(
                      cJSON_GetObjectItemCaseSensitive(r->json, "events")),
                  strcmp(cust[i].status, "accepted") == 0 ? 1 : 0,
                  "only accepted commands list events");
    }
    const th_rec *r = ct_result(&res, "ver-2");
    CHECK_INT(r ? th_int(r, "version") : -1, 2,
              "the right expected_version is accepted at version 2");

    static const expect probe[] = {
        {"boom-1", "failed", "probe.lua:11: boom"},
        {"spin-1", "failed", "instruction budget"},
        {"big-1", "failed", "message.max.bytes"},
        {"huge-1", "failed", "memory limit"},
        {"ok-2", "accepted", NULL},
    };
    for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
        const th_rec *q = ct_result(&res2, probe[i].id);
        char what[256];
        snprintf(what, sizeof what, "probe command %s", probe[i].id);
        CHECK(q != NULL, what);
        if (!q)
            continue;
        CHECK_STR(th_str(q, "status"), probe[i].status, what);
        if (probe[i].error)
            CHECK_HAS(th_str(q, "error"), probe[i].error, what);
    }
    int ok1 = 0, dup = 0;
    for (size_t i = 0; i < res2.n; i++) {
        const char *c = th_str(&res2.v[i], "command_id");
        const char *st = th_str(&res2.v[i], "status");
        if (c && strcmp(c, "ok-1") == 0) {
            ok1++;
            dup += st && strcmp(st, "duplicate") == 0;
        }
    }
    CHECK_INT(ok1, 2, "the repeated command id got two results");
    CHECK_INT(dup, 1, "... one of them duplicate");
    r = ct_result(&res2, "huge-1");
    CHECK_INT(r ? th_int(r, "version") : -1, 1,
              "a command too big for the scripts' memory is answered with "
              "its aggregate's version");
    r = ct_result(&res2, "ok-2");
    CHECK_INT(r ? th_int(r, "version") : -1, 2,
              "after the failures, ok-2 lands at version 2");

    ct_read_all(&t, cust_ev, "read_committed", &evs);
    CHECK_INT(evs.n, 2, "customer: only the accepted commands made events");
    ct_read_all(&t, probe_ev, "read_committed", &evs);
    CHECK_INT(evs.n, 2, "probe: only ok-1 and ok-2 made events");

    /* the group's committed offsets are at the end of each partition */
    {
        char group[256];
        snprintf(group, sizeof group, "%s.group", t.prefix);
        rd_kafka_t *c = th_consumer(t.bootstrap, group, "read_committed", NULL);
        rd_kafka_topic_partition_list_t *l =
            rd_kafka_topic_partition_list_new(12);
        for (int i = 0; i < 6; i++) {
            rd_kafka_topic_partition_list_add(l, cust_cmds, i);
            rd_kafka_topic_partition_list_add(l, probe_cmds, i);
        }
        CHECK_INT(rd_kafka_committed(c, l, 10000), 0, "committed offsets");
        int at_end = 0;
        for (int i = 0; i < l->cnt; i++) {
            int64_t lo, hi;
            rd_kafka_query_watermark_offsets(
                c, l->elems[i].topic, l->elems[i].partition, &lo, &hi, 10000);
            at_end += hi == 0 || l->elems[i].offset == hi;
        }
        CHECK_INT(at_end, 12,
                  "every commands partition is committed to its end");
        rd_kafka_topic_partition_list_destroy(l);
        rd_kafka_destroy(c);
    }

    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run exits 0 on SIGTERM");
    if (check_failures_)
        ct_dump_log(&t, "a.log");
    rd_kafka_destroy(p);
    th_recs_free(&res);
    th_recs_free(&res2);
    th_recs_free(&evs);
    return check_done();
}
