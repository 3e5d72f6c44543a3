/*
 * test_cmd_restart.c - after a restart a command sees the right version:
 * the states came back from the state topic (not from events, not from
 * memory). Once after a clean stop (SIGTERM, exit 0), once after kill -9.
 * Then SIGHUP: a changed script takes over between transactions, and a
 * new aggregate type gets its topics and its commands.
 */
#include "cmdtest.h"

static void expect_version(const ct *t, const char *results, size_t n,
                           const char *id, long long version)
{
    th_recs res = {0};
    char what[128];
    snprintf(what, sizeof what, "%s has its result", id);
    CHECK_INT(ct_wait_count(t, results, n, 90, &res), n, what);
    const th_rec *r = ct_result(&res, id);
    snprintf(what, sizeof what, "%s is accepted", id);
    CHECK_STR(r ? th_str(r, "status") : NULL, "accepted", what);
    snprintf(what, sizeof what, "%s lands at version %lld", id, version);
    CHECK_INT(r ? th_int(r, "version") : -1, version, what);
    th_recs_free(&res);
}

int main(void)
{
    ct t;
    char events[256], results[256];
    th_recs evs = {0};
    pid_t pid;

    ct_init_customer(&t, "restart", "a", NULL, NULL);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "customer", "results", results, sizeof results);
    rd_kafka_t *p = ct_producer(&t);

    pid = ct_start(&t, "a", "a1.log", NULL);
    ct_wait_topic(&t, results, 30);
    ct_send(&t, p, "customer", "cmd-1", "RegisterCustomer", "c-1",
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\","
            "\"address\":\"1 Main St\"}",
            NULL);
    ct_flush(p);
    expect_version(&t, results, 1, "cmd-1", 2);
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "a clean stop exits 0");

    pid = ct_start(&t, "a", "a2.log", NULL);
    ct_send(&t, p, "customer", "cmd-2", "UpdateCustomerProfile", "c-1",
            "{\"name\":\"Anna\"}", NULL);
    ct_flush(p);
    expect_version(&t, results, 2, "cmd-2", 3);
    CHECK(ct_log_has(&t, "a2.log", "msg=\"states restored\" records=1"),
          "the second run restored the snapshot from the state topic");
    /* the same command id again: the restored snapshot remembers it */
    ct_send(&t, p, "customer", "cmd-1", "RegisterCustomer", "c-1",
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\"}", NULL);
    ct_flush(p);
    {
        th_recs res = {0};
        int dup = 0;
        ct_wait_count(&t, results, 3, 60, &res);
        for (size_t i = 0; i < res.n; i++)
            dup += th_str(&res.v[i], "status") &&
                   strcmp(th_str(&res.v[i], "status"), "duplicate") == 0;
        CHECK_INT(dup, 1, "a command id from before the restart: duplicate");
        th_recs_free(&res);
    }
    kill(pid, SIGKILL);
    CHECK_INT(th_wait(pid, 10), 128 + SIGKILL, "killed with -9");

    pid = ct_start(&t, "a", "a3.log", NULL);
    ct_send(&t, p, "customer", "cmd-3", "ChangeEmail", "c-1",
            "{\"email\":\"anna@example.org\"}", NULL);
    ct_flush(p);
    expect_version(&t, results, 4, "cmd-3", 4);

    /* hot reload: a changed customer script and a new aggregate type */
    {
        char path[1024], *text, *at;
        FILE *f;
        long n;
        snprintf(path, sizeof path, "%s/aggregates/customer.lua", t.dir);
        f = fopen(path, "r");
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        fseek(f, 0, SEEK_SET);
        text = calloc(1, (size_t)n + 64);
        n = (long)fread(text, 1, (size_t)n, f);
        fclose(f);
        while ((at = strstr(text, "name must not be empty")))
            memcpy(at, "a name is required!!!!", 22);
        ct_write_file(&t, "aggregates/customer.lua", text);
        free(text);
        ct_write_file(&t, "aggregates/probe.lua",
                      "return { type = 'probe', initial = function() return "
                      "{} end, neutral = { 'Probed' }, apply = {}, handle = { "
                      "Ok = function() return "
                      "{ { type = 'Probed', data = {} } } end } }\n");
        kill(pid, SIGHUP);
        for (int i = 0;
             i < 200 && !ct_log_has(&t, "a3.log", "scripts reloaded"); i++)
            th_sleep_ms(50);
        CHECK(ct_log_has(&t, "a3.log", "scripts reloaded"),
              "SIGHUP: the processor switched to the new scripts");
        ct_send(&t, p, "customer", "cmd-4", "UpdateCustomerProfile", "c-1",
                "{\"name\":\"\"}", NULL);
        ct_flush(p);
        th_recs res = {0};
        ct_wait_count(&t, results, 5, 60, &res);
        const th_rec *r = ct_result(&res, "cmd-4");
        CHECK_HAS(r ? th_str(r, "error") : NULL, "a name is required",
                  "the reloaded script decides");
        char probe_results[256];
        ct_topic(&t, "probe", "results", probe_results, sizeof probe_results);
        ct_wait_topic(&t, probe_results, 10);
        ct_send(&t, p, "probe", "probe-1", "Ok", "p-1", "{}", NULL);
        ct_flush(p);
        CHECK_INT(ct_wait_count(&t, probe_results, 1, 60, &res), 1,
                  "a type added by the reload gets its topics and commands");
        r = ct_result(&res, "probe-1");
        CHECK_STR(r ? th_str(r, "status") : NULL, "accepted",
                  "the new type's command is accepted");
        th_recs_free(&res);

        /* a type removed by a reload: its commands would wait unread, so
         * the processor says so */
        char probe_file[1024];
        snprintf(probe_file, sizeof probe_file, "%s/aggregates/probe.lua",
                 t.dir);
        unlink(probe_file);
        kill(pid, SIGHUP);
        for (int i = 0;
             i < 200 && !ct_log_has(&t, "a3.log", "is gone from the scripts");
             i++)
            th_sleep_ms(50);
        CHECK(ct_log_has(&t, "a3.log",
                         "an aggregate type is gone from the scripts"),
              "a type a reload removes: the processor warns its commands "
              "wait unread");
        CHECK(ct_log_has(&t, "a3.log", "type=probe"), "naming the type");
    }

    ct_read_all(&t, events, "read_committed", &evs);
    CHECK_INT(evs.n, 4, "four events in all");
    for (size_t i = 0; i < evs.n; i++)
        CHECK_INT(th_int(&evs.v[i], "sequence"), (long long)i + 1,
                  "contiguous sequences across restarts");

    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "a clean stop exits 0");
    if (check_failures_) {
        ct_dump_log(&t, "a2.log");
        ct_dump_log(&t, "a3.log");
    }
    rd_kafka_destroy(p);
    th_recs_free(&evs);
    return check_done();
}
