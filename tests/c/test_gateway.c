/*
 * test_gateway.c - the command gateway on the real broker, through curl:
 * `evlua gateway` alone answers 503 until `evlua run` has made the
 * topics; then every status of docs/gateway.openapi.json comes back from
 * a real request and matches the document (200 accepted with the events'
 * ids and sequences, 409 rejected and expected_version conflicts, 500 a
 * script error with script:line, 422 and 400 invalid commands, 202 with
 * a Location that later answers, 404, 405; an unknown field of the
 * command is refused, not ignored); retrying an id returns the
 * first outcome and records nothing twice; concurrent requests for one
 * aggregate are all answered, with one version each, in order; the
 * metrics count the requests; the threads are named. On SIGHUP both
 * gateways (evlua gateway's, evlua run's) accept a type the scripts
 * gained (422 before), and a broken script set keeps the loaded types.
 */
#include "gwtest.h"

#include "buf.h"

static const char probe_lua[] =
    "return {\n"
    "  type = 'probe',\n"
    "  initial = function() return { n = 0 } end,\n"
    "  apply = { Probed = function(s, e) s.n = s.n + 1 end },\n"
    "  handle = {\n"
    "    Ok = function(s, cmd, ctx)\n"
    "      return { { type = 'Probed', data = { shop = ctx.metadata.shop } } "
    "}\n"
    "    end,\n"
    "    Boom = function(s, cmd, ctx)\n"
    "      error('boom')\n" /* line 10 */
    "    end,\n"
    "  },\n"
    "}\n";

static ct t;
static int port;
static cJSON *doc;

/* POST body; check the answer against the document. */
static void post(const char *query, const char *body, gw_resp *r)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/commands%s", query ? query : "");
    gw_http(&t, port, "POST", path, body, NULL, 30, r);
    char what[300];
    snprintf(what, sizeof what, "POST -> %d matches the OpenAPI document",
             r->status);
    CHECK(gw_openapi_check(doc, "POST", "/v1/commands", r), what);
}

static void get(const char *path, gw_resp *r)
{
    gw_http(&t, port, "GET", path, NULL, NULL, 30, r);
    char what[300];
    snprintf(what, sizeof what, "GET -> %d matches the OpenAPI document",
             r->status);
    CHECK(gw_openapi_check(doc, "GET", "/v1/commands/{id}", r), what);
}

typedef struct conc {
    pthread_t th;
    int i;
    gw_resp r;
} conc;

static void *conc_main(void *arg)
{
    conc *c = arg;
    char body[512];
    snprintf(body, sizeof body,
             "{\"id\":\"conc-%d\",\"aggregate_type\":\"customer\","
             "\"aggregate_id\":\"c-1\",\"type\":\"UpdateCustomerProfile\","
             "\"data\":{\"name\":\"Name %d\"}}",
             c->i, c->i);
    gw_http(&t, port, "POST", "/v1/commands", body, NULL, 60, &c->r);
    return NULL;
}

int main(void)
{
    gw_resp r, r2;
    char gwcfg[256], events[256], probe_commands[256];
    int mport = th_free_port(), rport = th_free_port(), rgport = th_free_port();
    char rgcfg[256];
    port = th_free_port();
    int gport = port;

    ct_init(&t, "gateway");
    ct_copy_aggregate(&t, "customer.lua");
    ct_write_file(&t, "aggregates/probe.lua", probe_lua);
    doc = gw_openapi_load(&t);
    snprintf(gwcfg, sizeof gwcfg, "listen = '127.0.0.1:%d'", port);
    gw_config(&t, "g", "g", mport, gwcfg);
    /* evlua run serves a gateway of its own too (for the reload) */
    snprintf(rgcfg, sizeof rgcfg, "listen = '127.0.0.1:%d'", rgport);
    gw_config(&t, "r", "r", rport, rgcfg);
    ct_topic(&t, "customer", "events", events, sizeof events);
    ct_topic(&t, "probe", "commands", probe_commands, sizeof probe_commands);

    /* the gateway alone, before any topic exists: not ready */
    pid_t gpid = gw_start(&t, "g", "g.log");
    long long until = th_now_ms() + 20000;
    do {
        th_sleep_ms(200);
        gw_http(&t, port, "POST", "/v1/commands",
                "{\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-0\","
                "\"type\":\"ChangeEmail\",\"data\":{}}",
                NULL, 10, &r);
    } while (r.status == 0 && th_now_ms() < until);
    CHECK_INT(r.status, 503, "503 while the topics do not exist");
    CHECK(gw_openapi_check(doc, "POST", "/v1/commands", &r),
          "the 503 matches the document");
    CHECK_HAS(gw_str(&r, "error"), "not ready", "the 503 says not ready");
    gw_resp_free(&r);

    pid_t rpid = ct_start(&t, "r", "r.log", NULL);
    CHECK(gw_wait_ready(mport, 90), "the gateway becomes ready");

    /* 200 accepted, with the events' ids, types and sequences */
    static const char reg[] =
        "{\"id\":\"g-1\",\"aggregate_type\":\"customer\",\"aggregate_id\":"
        "\"c-1\",\"type\":\"RegisterCustomer\",\"data\":{\"name\":\"Ann\","
        "\"email\":\"ann@example.org\",\"address\":\"1 Main St\"}}";
    post(NULL, reg, &r);
    CHECK_INT(r.status, 200, "a command accepted: 200");
    CHECK_STR(gw_str(&r, "status"), "accepted", "status accepted");
    CHECK_STR(gw_str(&r, "command_id"), "g-1", "the command's id");
    CHECK_INT(gw_int(&r, "version"), 2, "the new version");
    const cJSON *evs = cJSON_GetObjectItemCaseSensitive(r.json, "events");
    CHECK_INT(cJSON_GetArraySize(evs), 2, "its two events");
    if (cJSON_GetArraySize(evs) == 2) {
        const cJSON *e0 = cJSON_GetArrayItem(evs, 0);
        const cJSON *e1 = cJSON_GetArrayItem(evs, 1);
        CHECK_INT((long long)cJSON_GetObjectItem(e0, "sequence")->valuedouble,
                  1, "first event: sequence 1");
        CHECK_INT((long long)cJSON_GetObjectItem(e1, "sequence")->valuedouble,
                  2, "second event: sequence 2");
        CHECK(strlen(cJSON_GetObjectItem(e0, "id")->valuestring) == 36,
              "event ids are UUIDs");
        const cJSON *t0 = cJSON_GetObjectItem(e0, "type");
        const cJSON *t1 = cJSON_GetObjectItem(e1, "type");
        CHECK_STR(cJSON_IsString(t0) ? t0->valuestring : "(none)",
                  "CustomerRegistered", "first event's type");
        CHECK_STR(cJSON_IsString(t1) ? t1->valuestring : "(none)",
                  "CustomerAddressChanged", "second event's type");
    }

    /* a retry: the first outcome again, nothing recorded twice */
    post(NULL, reg, &r2);
    CHECK_INT(r2.status, 200, "the retry: 200");
    CHECK_STR(r2.body, r.body, "the retry returns the first outcome");
    gw_resp_free(&r2);
    get("/v1/commands/g-1", &r2);
    CHECK_INT(r2.status, 200, "GET of the id: 200");
    CHECK_STR(r2.body, r.body, "GET returns the same outcome");
    gw_resp_free(&r2);
    gw_resp_free(&r);

    /* 409: rejected by the handler, and an expected_version conflict */
    post(NULL,
         "{\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-1\",\"type\":"
         "\"RegisterCustomer\",\"data\":{\"name\":\"Ann\",\"email\":"
         "\"ann@example.org\"}}",
         &r);
    CHECK_INT(r.status, 409, "rejected: 409");
    CHECK_HAS(gw_str(&r, "error"), "already registered", "with the reason");
    CHECK(gw_str(&r, "command_id") && strlen(gw_str(&r, "command_id")) == 36,
          "a generated id (UUIDv7) when the body has none");
    gw_resp_free(&r);
    post(NULL,
         "{\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-1\",\"type\":"
         "\"ChangeEmail\",\"expected_version\":1,\"data\":{\"email\":"
         "\"a@example.org\"}}",
         &r);
    CHECK_INT(r.status, 409, "an expected_version conflict: 409");
    CHECK_HAS(gw_str(&r, "error"), "version", "naming the version");
    gw_resp_free(&r);

    /* 500: a script error, with script:line */
    post(NULL,
         "{\"aggregate_type\":\"probe\",\"aggregate_id\":\"p-1\",\"type\":"
         "\"Boom\",\"data\":{}}",
         &r);
    CHECK_INT(r.status, 500, "a failing handler: 500");
    CHECK_STR(gw_str(&r, "status"), "failed", "status failed");
    CHECK_HAS(gw_str(&r, "error"), "probe.lua:10:", "the error's script:line");
    gw_resp_free(&r);

    /* 422 and 400: invalid commands, nothing sent */
    static const struct {
        const char *body, *why;
        int status;
    } bad[] = {
        {"{\"aggregate_type\":\"nope\",\"aggregate_id\":\"x\",\"type\":\"A\","
         "\"data\":{}}",
         "unknown aggregate type", 422},
        {"{\"aggregate_type\":\"customer\",\"aggregate_id\":\"x\",\"type\":"
         "\"Fly\",\"data\":{}}",
         "no handler", 422},
        {"{\"aggregate_type\":\"customer\",\"aggregate_id\":\"x\",\"type\":"
         "\"ChangeEmail\"}",
         "data must be", 422},
        {"{\"aggregate_type\":\"customer\",\"aggregate_id\":\"\",\"type\":"
         "\"ChangeEmail\",\"data\":{}}",
         "aggregate_id", 422},
        {"{\"aggregate_type\":\"customer\",\"aggregate_id\":\"x\",\"type\":"
         "\"ChangeEmail\",\"data\":{},\"expected_version\":\"3\"}",
         "expected_version", 422},
        {"[1,2]", "JSON object", 422},
        {"{\"aggregate_type\":", "malformed JSON", 400},
        {"{\"n\":9007199254740993}", "2^53", 400},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char what[200];
        post(NULL, bad[i].body, &r);
        snprintf(what, sizeof what, "invalid command %zu: %d", i,
                 bad[i].status);
        CHECK_INT(r.status, bad[i].status, what);
        CHECK_HAS(gw_str(&r, "error"), bad[i].why, "the error says why");
        gw_resp_free(&r);
    }

    /* an unknown field (a typo of expected_version) is refused, naming
     * it and the fields there are; metadata's own keys are free-form */
    post(NULL,
         "{\"id\":\"g-typo\",\"aggregate_type\":\"probe\",\"aggregate_id\":"
         "\"p-8\",\"type\":\"Ok\",\"data\":{},\"expectedVersion\":7}",
         &r);
    CHECK_INT(r.status, 422, "an unknown field: 422");
    CHECK_HAS(gw_str(&r, "error"), "'expectedVersion'", "naming the field");
    CHECK_HAS(gw_str(&r, "error"), "expected_version, metadata",
              "listing the allowed ones");
    gw_resp_free(&r);
    post(NULL,
         "{\"id\":\"g-meta\",\"aggregate_type\":\"probe\",\"aggregate_id\":"
         "\"p-8\",\"type\":\"Ok\",\"data\":{},\"metadata\":{\"shop\":"
         "\"eu\"}}",
         &r);
    CHECK_INT(r.status, 200, "a key of the user's own in metadata: 200");
    gw_resp_free(&r);

    post(NULL,
         "{\"id\":\"g-1\",\"aggregate_type\":\"probe\",\"aggregate_id\":"
         "\"p-9\",\"type\":\"Ok\",\"data\":{}}",
         &r);
    CHECK_INT(r.status, 422, "an id reused for another aggregate type: 422");
    CHECK_HAS(gw_str(&r, "error"), "another aggregate type", "saying so");
    gw_resp_free(&r);

    /* 202 + Location when the wait ends first; the Location answers */
    post("?timeout_ms=0",
         "{\"id\":\"g-slow\",\"aggregate_type\":\"probe\",\"aggregate_id\":"
         "\"p-2\",\"type\":\"Ok\",\"data\":{}}",
         &r);
    CHECK_INT(r.status, 202, "no result within the wait: 202");
    CHECK_STR(r.location, "/v1/commands/g-slow", "Location names the command");
    CHECK_STR(gw_str(&r, "status"), "pending", "status pending");
    gw_resp_free(&r);
    until = th_now_ms() + 30000;
    do {
        get("/v1/commands/g-slow", &r);
        if (r.status == 200)
            break;
        gw_resp_free(&r);
        th_sleep_ms(100);
    } while (th_now_ms() < until);
    CHECK_INT(r.status, 200, "the Location answers 200 once the result came");
    CHECK_INT(gw_int(&r, "version"), 1, "with the outcome");
    gw_resp_free(&r);

    /* Prefer: respond-async is ?timeout_ms=0 (RFC 7240), and a 202 comes
     * only once the command is in Kafka: the commands topic holds it when
     * the answer arrives */
    gw_header = "Prefer: respond-async";
    post(NULL,
         "{\"id\":\"g-async\",\"aggregate_type\":\"probe\","
         "\"aggregate_id\":\"p-3\",\"type\":\"Ok\",\"data\":{}}",
         &r);
    gw_header = NULL;
    CHECK_INT(r.status, 202, "Prefer: respond-async: 202 at once");
    CHECK_STR(r.location, "/v1/commands/g-async", "with its Location");
    CHECK_HAS(r.headers, "Preference-Applied: respond-async",
              "saying the preference was applied");
    gw_resp_free(&r);
    th_recs cmds = {0};
    ct_read_all(&t, probe_commands, "read_uncommitted", &cmds);
    int found = 0;
    for (size_t i = 0; i < cmds.n; i++)
        found |= th_str(&cmds.v[i], "id") &&
                 strcmp(th_str(&cmds.v[i], "id"), "g-async") == 0;
    CHECK(found, "the command was in its topic when the 202 came");
    found = 0;
    for (size_t i = 0; i < cmds.n; i++)
        found |= th_str(&cmds.v[i], "id") &&
                 strcmp(th_str(&cmds.v[i], "id"), "g-typo") == 0;
    CHECK(!found, "the command with an unknown field was not produced");
    /* metadata's own keys reach the command (and ctx.metadata), as for a
     * command produced to Kafka directly; user_id stays the gateway's */
    const th_rec *meta = NULL;
    for (size_t i = 0; i < cmds.n; i++)
        if (th_str(&cmds.v[i], "id") &&
            strcmp(th_str(&cmds.v[i], "id"), "g-meta") == 0)
            meta = &cmds.v[i];
    CHECK(meta != NULL, "the command with metadata.shop was produced");
    if (meta) {
        cJSON *md = cJSON_GetObjectItemCaseSensitive(meta->json, "metadata");
        cJSON *shop = cJSON_GetObjectItemCaseSensitive(md, "shop");
        CHECK(cJSON_IsString(shop) && strcmp(shop->valuestring, "eu") == 0,
              "metadata.shop is carried to the commands topic");
    }
    th_recs_free(&cmds);

    /* 404 and 405 */
    get("/v1/commands/never-sent", &r);
    CHECK_INT(r.status, 404, "an unknown id: 404");
    gw_resp_free(&r);
    gw_http(&t, port, "GET", "/v1/commands", NULL, NULL, 10, &r);
    CHECK_INT(r.status, 405, "GET /v1/commands: 405");
    CHECK(gw_openapi_check(doc, "POST", "/v1/commands", &r),
          "the 405 matches the document");
    gw_resp_free(&r);
    gw_http(&t, port, "GET", "/v2/other", NULL, NULL, 10, &r);
    CHECK_INT(r.status, 404, "another path: 404");
    gw_resp_free(&r);

    /* concurrent requests for one aggregate: all answered, one version
     * each, and each answer's event is at its version */
    enum { NC = 16 };
    static conc cs[NC];
    for (int i = 0; i < NC; i++) {
        cs[i].i = i;
        pthread_create(&cs[i].th, NULL, conc_main, &cs[i]);
    }
    int seen[NC] = {0}, answered = 0, ordered = 1;
    for (int i = 0; i < NC; i++) {
        pthread_join(cs[i].th, NULL);
        long long v = gw_int(&cs[i].r, "version");
        const cJSON *ev = cJSON_GetArrayItem(
            cJSON_GetObjectItemCaseSensitive(cs[i].r.json, "events"), 0);
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(ev, "sequence");
        if (cs[i].r.status == 200 && v >= 3 && v < 3 + NC)
            seen[v - 3]++, answered++;
        if (!cJSON_IsNumber(sq) || (long long)sq->valuedouble != v)
            ordered = 0;
        gw_resp_free(&cs[i].r);
    }
    CHECK_INT(answered, NC, "every concurrent request answered 200");
    int distinct = 1;
    for (int i = 0; i < NC; i++)
        distinct &= seen[i] == 1;
    CHECK(distinct, "versions 3..18, one per request");
    CHECK(ordered, "each answer's event has its version's sequence");

    /* one CustomerRegistered for c-1 however often it was retried */
    th_recs ev = {0};
    ct_read_all(&t, events, "read_committed", &ev);
    int regs = 0;
    for (size_t i = 0; i < ev.n; i++)
        regs += th_str(&ev.v[i], "type") &&
                strcmp(th_str(&ev.v[i], "type"), "CustomerRegistered") == 0;
    CHECK_INT(regs, 1, "the retried command recorded its event once");
    th_recs_free(&ev);
    {
        /* g-meta's handler saw metadata.shop in ctx.metadata */
        char pev[256];
        th_recs pe = {0};
        ct_topic(&t, "probe", "events", pev, sizeof pev);
        ct_read_all(&t, pev, "read_committed", &pe);
        int shop = 0;
        for (size_t i = 0; i < pe.n; i++) {
            cJSON *d = cJSON_GetObjectItemCaseSensitive(pe.v[i].json, "data");
            cJSON *v = cJSON_GetObjectItemCaseSensitive(d, "shop");
            shop |= cJSON_IsString(v) && strcmp(v->valuestring, "eu") == 0;
        }
        CHECK(shop, "the handler saw metadata.shop in ctx.metadata");
        th_recs_free(&pe);
    }

    /* POST /v1/batch: each command answered in its place, as alone */
    static const char batch[] =
        "{\"commands\":["
        "{\"id\":\"b-1\",\"aggregate_type\":\"probe\",\"aggregate_id\":"
        "\"p-b\",\"type\":\"Ok\",\"data\":{}},"
        "{\"id\":\"b-2\",\"aggregate_type\":\"probe\",\"aggregate_id\":"
        "\"p-b\",\"type\":\"Ok\",\"data\":{}},"
        "{\"id\":\"b-3\",\"aggregate_type\":\"nope\",\"aggregate_id\":"
        "\"x\",\"type\":\"A\",\"data\":{}},"
        "{\"id\":\"g-1\",\"aggregate_type\":\"customer\",\"aggregate_id\":"
        "\"c-1\",\"type\":\"RegisterCustomer\",\"data\":{\"name\":\"Ann\","
        "\"email\":\"ann@example.org\",\"address\":\"1 Main St\"}},"
        "{\"id\":\"b-5\",\"aggregate_type\":\"probe\",\"aggregate_id\":"
        "\"p-c\",\"type\":\"Boom\",\"data\":{}},"
        "{\"id\":\"b-6\",\"aggregate_type\":\"customer\","
        "\"aggregate_id\":\"c-1\",\"type\":\"RegisterCustomer\","
        "\"data\":{\"name\":\"Ann\",\"email\":\"ann@example.org\"}}"
        "]}";
    static const int want[] = {200, 200, 422, 200, 500, 409};
    char first[65536] = "";
    for (int round = 0; round < 2; round++) {
        gw_http(&t, port, "POST", "/v1/batch", batch, NULL, 30, &r);
        CHECK_INT(r.status, 200, "a batch: 200");
        CHECK(gw_openapi_check(doc, "POST", "/v1/batch", &r),
              "the batch's answer matches the OpenAPI document");
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(r.json, "results");
        CHECK_INT(cJSON_GetArraySize(res), 6, "one result per command");
        for (int i = 0; i < 6 && cJSON_GetArraySize(res) == 6; i++) {
            const cJSON *it = cJSON_GetArrayItem(res, i);
            const cJSON *hs =
                cJSON_GetObjectItemCaseSensitive(it, "http_status");
            char what[120];
            snprintf(what, sizeof what, "batch item %d: %d", i, want[i]);
            CHECK_INT(cJSON_IsNumber(hs) ? (long long)hs->valuedouble : -1,
                      want[i], what);
        }
        if (cJSON_GetArraySize(res) == 6) {
            const cJSON *v0 = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(res, 0), "version");
            const cJSON *v1 = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(res, 1), "version");
            CHECK(cJSON_IsNumber(v0) && cJSON_IsNumber(v1) &&
                      v0->valuedouble == 1 && v1->valuedouble == 2,
                  "one aggregate's commands of a batch: in their order");
            const cJSON *e2 = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(res, 2), "error");
            CHECK_HAS(cJSON_IsString(e2) ? e2->valuestring : NULL,
                      "unknown aggregate type", "an invalid one says why");
            const cJSON *c3 = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(res, 3), "command_id");
            const cJSON *v3 = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(res, 3), "version");
            CHECK(cJSON_IsString(c3) && strcmp(c3->valuestring, "g-1") == 0 &&
                      cJSON_IsNumber(v3) && v3->valuedouble == 2,
                  "an id sent before: its first outcome");
            const cJSON *e4 = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(res, 4), "error");
            CHECK_HAS(cJSON_IsString(e4) ? e4->valuestring : NULL,
                      "probe.lua:10:", "a script error: script:line");
        }
        if (round == 0)
            snprintf(first, sizeof first, "%s", r.body);
        else
            CHECK_STR(r.body, first, "the same batch again: the same answers");
        gw_resp_free(&r);
    }
    /* the wait ends first: each command 202 with its location */
    gw_http(&t, port, "POST", "/v1/batch?timeout_ms=0",
            "{\"commands\":[{\"id\":\"b-7\",\"aggregate_type\":\"probe\","
            "\"aggregate_id\":\"p-d\",\"type\":\"Ok\",\"data\":{}},"
            "{\"id\":\"b-8\",\"aggregate_type\":\"probe\","
            "\"aggregate_id\":\"p-e\",\"type\":\"Ok\",\"data\":{}}]}",
            NULL, 30, &r);
    CHECK_INT(r.status, 200, "a batch that does not wait: 200");
    CHECK(gw_openapi_check(doc, "POST", "/v1/batch", &r),
          "and matches the document");
    {
        const cJSON *it = cJSON_GetArrayItem(
            cJSON_GetObjectItemCaseSensitive(r.json, "results"), 1);
        const cJSON *hs = cJSON_GetObjectItemCaseSensitive(it, "http_status");
        const cJSON *lo = cJSON_GetObjectItemCaseSensitive(it, "location");
        CHECK(cJSON_IsNumber(hs) && hs->valuedouble == 202,
              "a command not decided yet: 202");
        CHECK_STR(cJSON_IsString(lo) ? lo->valuestring : NULL,
                  "/v1/commands/b-8", "with the location of its outcome");
    }
    gw_resp_free(&r);
    /* a batch refused whole: nothing of it sent */
    {
        static const struct {
            const char *body, *why;
            int status;
        } badb[] = {
            {"{\"commands\":[]}", "1 to 4096", 422},
            {"{\"commands\":{}}", "must be an array", 422},
            {"{\"cmds\":[]}", "unknown field 'cmds'", 422},
            {"[]", "JSON object", 422},
            {"{\"commands\":[", "malformed JSON", 400},
        };
        for (size_t i = 0; i < sizeof badb / sizeof badb[0]; i++) {
            char what[120];
            gw_http(&t, port, "POST", "/v1/batch", badb[i].body, NULL, 30, &r);
            snprintf(what, sizeof what, "invalid batch %zu: %d", i,
                     badb[i].status);
            CHECK_INT(r.status, badb[i].status, what);
            CHECK_HAS(gw_str(&r, "error"), badb[i].why, "the error says why");
            CHECK(gw_openapi_check(doc, "POST", "/v1/batch", &r),
                  "and matches the document");
            gw_resp_free(&r);
        }
        /* more commands than may wait at once (gateway.max_waiters) */
        evl_buf big = {0};
        evl_buf_puts(&big, "{\"commands\":[");
        for (int i = 0; i < 4097; i++) {
            char one[200];
            snprintf(one, sizeof one,
                     "%s{\"id\":\"big-%d\",\"aggregate_type\":\"probe\","
                     "\"aggregate_id\":\"p-f\",\"type\":\"Ok\","
                     "\"data\":{}}",
                     i ? "," : "", i);
            evl_buf_puts(&big, one);
        }
        evl_buf_puts(&big, "]}");
        evl_buf_putc(&big, '\0');
        gw_http(&t, port, "POST", "/v1/batch", big.data, NULL, 30, &r);
        evl_buf_free(&big);
        CHECK_INT(r.status, 422, "a batch past gateway.max_waiters: 422");
        CHECK_HAS(gw_str(&r, "error"), "holds 4097", "saying how many");
        gw_resp_free(&r);
    }
    {
        /* b-1 and b-2 recorded once each, though their batch came twice;
         * nothing of the refused batches */
        char pev[256];
        th_recs pc = {0};
        ct_topic(&t, "probe", "commands", pev, sizeof pev);
        ct_read_all(&t, pev, "read_uncommitted", &pc);
        int b1 = 0, big = 0;
        for (size_t i = 0; i < pc.n; i++) {
            const char *id = th_str(&pc.v[i], "id");
            b1 += id && strcmp(id, "b-1") == 0;
            big += id && strncmp(id, "big-", 4) == 0;
        }
        CHECK_INT(b1, 1, "a batch sent twice: its commands produced once");
        CHECK_INT(big, 0, "a refused batch: none of its commands produced");
        th_recs_free(&pc);
    }

    /* SIGHUP: a type added to the scripts is accepted without a restart;
     * a broken set is refused and the loaded one kept */
    static const char extra_cmd[] =
        "{\"aggregate_type\":\"extra\",\"aggregate_id\":\"e-1\","
        "\"type\":\"Add\",\"data\":{}}";
    post(NULL, extra_cmd, &r);
    CHECK_INT(r.status, 422, "a type not loaded yet: 422");
    CHECK_HAS(gw_str(&r, "error"), "unknown aggregate type", "saying so");
    gw_resp_free(&r);
    port = rgport;
    post(NULL, extra_cmd, &r);
    port = gport;
    CHECK_INT(r.status, 422, "evlua run's gateway: 422 too");
    gw_resp_free(&r);
    ct_write_file(&t, "aggregates/extra.lua", "return { type = 'extra',");
    kill(gpid, SIGHUP);
    until = th_now_ms() + 30000;
    while (!ct_log_has(&t, "g.log", "keeping the types") && th_now_ms() < until)
        th_sleep_ms(100);
    CHECK(ct_log_has(&t, "g.log", "keeping the types"),
          "a broken script set: the gateway's reload fails");
    post(NULL,
         "{\"aggregate_type\":\"probe\",\"aggregate_id\":\"p-7\","
         "\"type\":\"Ok\",\"data\":{}}",
         &r);
    CHECK_INT(r.status, 200, "and it goes on with the loaded types");
    gw_resp_free(&r);
    ct_write_file(&t, "aggregates/extra.lua",
                  "return {\n"
                  "  type = 'extra',\n"
                  "  initial = function() return { n = 0 } end,\n"
                  "  apply = { Added = function(s, e) s.n = s.n + 1 end },\n"
                  "  handle = { Add = function() return { { type = 'Added', "
                  "data = {} } } end },\n"
                  "}\n");
    kill(rpid, SIGHUP);
    kill(gpid, SIGHUP);
    /* 422 until the gateway reloads, 503 until evlua run has made the
     * topics and the gateway assigned the results */
    until = th_now_ms() + 90000;
    do {
        post(NULL, extra_cmd, &r);
        if (r.status != 422 && r.status != 503)
            break;
        gw_resp_free(&r);
        th_sleep_ms(200);
    } while (th_now_ms() < until);
    CHECK_INT(r.status, 200, "after SIGHUP the new type's command: 200");
    CHECK_INT(gw_int(&r, "version"), 1, "decided by evlua run");
    gw_resp_free(&r);
    port = rgport;
    until = th_now_ms() + 60000;
    do {
        post(NULL, extra_cmd, &r);
        if (r.status != 422 && r.status != 503)
            break;
        gw_resp_free(&r);
        th_sleep_ms(200);
    } while (th_now_ms() < until);
    port = gport;
    CHECK_INT(r.status, 200, "evlua run's gateway reloaded too: 200");
    CHECK_INT(gw_int(&r, "version"), 2, "the aggregate's next version");
    gw_resp_free(&r);
    post(NULL,
         "{\"aggregate_type\":\"customer\",\"aggregate_id\":\"c-1\","
         "\"type\":\"ChangeEmail\",\"data\":{\"email\":\"b@example.org\"}}",
         &r);
    CHECK_INT(r.status, 200, "the types loaded before are still served");
    gw_resp_free(&r);

    /* metrics */
    static char m[1 << 16];
    th_http_get(mport, "/metrics", m, sizeof m);
    CHECK_HAS(m,
              "evlua_gateway_requests_total{route=\"POST /v1/commands\","
              "status=\"200\"}",
              "requests counted by route and status");
    CHECK_HAS(m, "evlua_gateway_wait_seconds_count", "the wait histogram");
    CHECK_HAS(m, "evlua_gateway_waiters 0", "no waiter left in flight");
    CHECK_HAS(m,
              "evlua_script_reloads_total{pipeline=\"gateway\","
              "outcome=\"failed\"} 1",
              "the refused reload counted");
    CHECK_HAS(m,
              "evlua_script_reloads_total{pipeline=\"gateway\","
              "outcome=\"applied\"} 1",
              "the applied one too");

    /* its threads are named for top -H and perf */
    char cmd[1024], names[8192];
    snprintf(cmd, sizeof cmd, "cat /proc/%d/task/*/comm > %s/comm.txt",
             (int)gpid, t.dir);
    CHECK_INT(system(cmd), 0, "the gateway's threads can be listed");
    snprintf(cmd, sizeof cmd, "%s/comm.txt", t.dir);
    th_read_file(cmd, names, sizeof names);
    CHECK_HAS(names, "evl:gw-http", "an HTTP thread is named evl:gw-http");
    CHECK_HAS(names, "evl:gw-kafka", "the Kafka thread is named evl:gw-kafka");
    CHECK_HAS(names, "evl:gw-dr", "the delivery thread is named evl:gw-dr");

    CHECK_INT(th_stop(gpid, SIGTERM, 30), 0, "evlua gateway stops with 0");
    CHECK_INT(th_stop(rpid, SIGTERM, 30), 0, "evlua run stops with 0");
    if (check_failures_) {
        ct_dump_log(&t, "g.log");
        ct_dump_log(&t, "r.log");
    }
    cJSON_Delete(doc);
    return check_done();
}
