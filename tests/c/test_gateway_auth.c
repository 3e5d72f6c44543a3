/*
 * test_gateway_auth.c - the gateway's tokens and limits, inside `evlua
 * run` on the real broker: with no tokens it refuses a non-loopback
 * address; no token or a wrong one is 401, a token for another aggregate
 * or command type 403, and none of those produces anything; a body's
 * metadata.user_id is replaced by the token's principal; a token reads
 * only the outcomes of its aggregate types; oversize bodies (413),
 * invalid JSON and invalid UTF-8 (400) and a client trickling its request
 * (408, then closed) get clear errors while the gateway goes on answering
 * others; the tokens never show in the log (at debug level) or the
 * metrics; every answer matches docs/gateway.openapi.json. A second
 * gateway (evlua gateway) speaks HTTPS with a certificate and key file,
 * refuses plain HTTP, answers a retry of an id it never saw with the
 * duplicate mapped to accepted, and forgets outcomes past
 * gateway.cache_size. A third, with gateway.max_connections = 2, answers
 * a connection past the limit 503 (Retry-After, Connection: close) and
 * serves again once connections close.
 */
#include <openssl/sha.h>

#include "gwtest.h"

static const char probe_lua[] =
    "return {\n"
    "  type = 'probe',\n"
    "  initial = function() return { n = 0 } end,\n"
    "  apply = { Probed = function(s, e) s.n = s.n + 1 end },\n"
    "  handle = {\n"
    "    Ok = function() return { { type = 'Probed', data = {} } } end,\n"
    "    Boom = function() error('boom') end,\n"
    "  },\n"
    "}\n";

#define SHOP_TOKEN  "shop-7c1e0a55-secret-token"
#define PROBE_TOKEN "probe-93b2-another-secret"

static void hex_sha256(const char *s, char out[65])
{
    unsigned char md[32];
    SHA256((const unsigned char *)s, strlen(s), md);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

static ct t;
static int port;

static cJSON *doc;

static int status_of(const char *method, const char *path, const char *body,
                     const char *token, const char *want_in_error)
{
    gw_resp r;
    gw_http(&t, port, method, path, body, token, 30, &r);
    char what[200];
    snprintf(what, sizeof what, "%s -> %d matches the OpenAPI document", method,
             r.status);
    CHECK(gw_openapi_check(doc, method,
                           strcmp(path, "/v1/batch") == 0 ? "/v1/batch"
                           : strcmp(method, "POST") == 0  ? "/v1/commands"
                                                          : "/v1/commands/{id}",
                           &r),
          what);
    if (want_in_error)
        CHECK_HAS(gw_str(&r, "error"), want_in_error, "the error says why");
    int st = r.status;
    gw_resp_free(&r);
    return st;
}

/* Open a connection to the gateway and trickle a request's headers, one
 * byte every 300 ms, for up to 8 s. Returns what the server sent before
 * closing (into b), and the seconds it took in *secs. */
static void trickle(char *b, size_t n, double *secs)
{
    static const char req[] = "POST /v1/commands HTTP/1.1\r\nHost: x\r\n"
                              "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        th_die("connect to the gateway: %s", strerror(errno));
    fcntl(s, F_SETFL, O_NONBLOCK);
    double t0 = th_now();
    size_t got = 0;
    b[0] = '\0';
    for (size_t i = 0; th_now() - t0 < 8; i++) {
        if (i < sizeof req - 1 && send(s, req + i, 1, MSG_NOSIGNAL) < 0)
            break;
        th_sleep_ms(300);
        ssize_t k = recv(s, b + got, n - 1 - got, 0);
        if (k > 0) {
            got += (size_t)k;
            b[got] = '\0';
        } else if (k == 0)
            break;
    }
    *secs = th_now() - t0;
    close(s);
}

/* Open a keep-alive connection to the gateway on port p and have one
 * request answered on it, so the gateway has counted it; returns the
 * open socket, its answer's status line in line. */
static int held(int p, char *line, size_t n)
{
    static const char req[] = "GET /v1/commands/held HTTP/1.1\r\nHost: x\r\n"
                              "Connection: keep-alive\r\n\r\n";
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)p)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        th_die("connect to the gateway: %s", strerror(errno));
    if (send(s, req, sizeof req - 1, MSG_NOSIGNAL) < 0)
        th_die("send to the gateway: %s", strerror(errno));
    char b[4096];
    size_t got = 0;
    b[0] = '\0';
    /* the 404's JSON body ends with '}' */
    while (got < sizeof b - 1 && !strchr(b, '}')) {
        ssize_t k = recv(s, b + got, sizeof b - 1 - got, 0);
        if (k <= 0)
            break;
        got += (size_t)k;
        b[got] = '\0';
    }
    snprintf(line, n, "%.*s", (int)strcspn(b, "\r"), b);
    return s;
}

typedef struct trickler {
    pthread_t th;
    char b[2048];
    double secs;
} trickler;

static void *trickle_main(void *arg)
{
    trickler *tr = arg;
    trickle(tr->b, sizeof tr->b, &tr->secs);
    return NULL;
}

int main(void)
{
    char gwcfg[2048], shop_hash[65], probe_hash[65], cmds[256], pcmds[256];
    char events[256], logpath[1024];
    int rport = th_free_port();
    port = th_free_port();

    ct_init(&t, "gwauth");
    doc = gw_openapi_load(&t);
    ct_copy_aggregate(&t, "customer.lua");
    ct_write_file(&t, "aggregates/probe.lua", probe_lua);
    ct_topic(&t, "customer", "commands", cmds, sizeof cmds);
    ct_topic(&t, "probe", "commands", pcmds, sizeof pcmds);
    ct_topic(&t, "customer", "events", events, sizeof events);
    hex_sha256(SHOP_TOKEN, shop_hash);
    hex_sha256(PROBE_TOKEN, probe_hash);

    /* no tokens: only a loopback address */
    snprintf(gwcfg, sizeof gwcfg, "listen = '0.0.0.0:%d'", port);
    gw_config(&t, "open", "open", th_free_port(), gwcfg);
    pid_t opid = gw_start(&t, "open", "open.log");
    CHECK_INT(th_wait(opid, 30), 2,
              "no tokens on 0.0.0.0: evlua gateway refuses to start (2)");
    CHECK(ct_log_has(&t, "open.log", "no gateway.tokens configured"),
          "and says why");

    snprintf(gwcfg, sizeof gwcfg,
             "listen = '127.0.0.1:%d', max_body = 4096,\n"
             "    connection_timeout_s = 2,\n"
             "    tokens = {\n"
             "      { principal = 'shop', sha256 = '%s',\n"
             "        aggregates = { 'customer' } },\n"
             "      { principal = 'prober', sha256 = '%s',\n"
             "        aggregates = { 'probe' }, commands = { 'Ok' } } }",
             port, shop_hash, probe_hash);
    gw_config(&t, "r", "r", rport, gwcfg);
    snprintf(logpath, sizeof logpath, "%s/r.log", t.dir);
    pid_t rpid = ct_start(&t, "r", "r.log", "EVLUA_LOG_LEVEL=debug");
    CHECK(gw_wait_ready(rport, 90), "the gateway in evlua run becomes ready");

    static const char reg[] =
        "{\"id\":\"a-1\",\"aggregate_type\":\"customer\",\"aggregate_id\":"
        "\"c-1\",\"type\":\"RegisterCustomer\",\"data\":{\"name\":\"Ann\","
        "\"email\":\"ann@example.org\"},\"metadata\":{\"user_id\":\"admin\","
        "\"correlation_id\":\"corr-9\"}}";
    CHECK_INT(status_of("POST", "/v1/commands", reg, NULL, "bearer token"), 401,
              "no token: 401");
    CHECK_INT(status_of("POST", "/v1/commands", reg, "not-a-token", NULL), 401,
              "a wrong token: 401");
    CHECK_INT(
        status_of("POST", "/v1/commands", reg, PROBE_TOKEN, "may not send"),
        403, "a token for another aggregate type: 403");
    CHECK_INT(status_of("POST", "/v1/commands",
                        "{\"aggregate_type\":\"probe\",\"aggregate_id\":"
                        "\"p\",\"type\":\"Boom\",\"data\":{}}",
                        PROBE_TOKEN, "may not send"),
              403, "a token for other command types: 403");
    CHECK_INT(status_of("GET", "/v1/commands/a-1", NULL, NULL, NULL), 401,
              "GET without a token: 401");

    /* the token's principal is the user, whatever the body says */
    gw_resp r;
    gw_http(&t, port, "POST", "/v1/commands", reg, SHOP_TOKEN, 30, &r);
    CHECK_INT(r.status, 200, "the shop's token sends a customer command");
    gw_resp_free(&r);
    CHECK_INT(status_of("POST", "/v1/commands",
                        "{\"id\":\"a-2\",\"aggregate_type\":\"probe\","
                        "\"aggregate_id\":\"p\",\"type\":\"Ok\",\"data\":{}}",
                        PROBE_TOKEN, NULL),
              200, "the prober's token sends the command type it may");
    CHECK_INT(status_of("GET", "/v1/commands/a-2", NULL, PROBE_TOKEN, NULL),
              200, "the prober reads its command's outcome");
    CHECK_INT(status_of("GET", "/v1/commands/a-2", NULL, SHOP_TOKEN, NULL), 404,
              "a token of other aggregate types does not see it (404)");
    th_recs ev = {0};
    ct_read_all(&t, events, "read_committed", &ev);
    CHECK_INT(ev.n, 1, "one event recorded");
    if (ev.n == 1) {
        CHECK_STR(th_str(&ev.v[0], "user_id"), "shop",
                  "user_id is the token's principal, not the body's admin");
        CHECK_STR(th_str(&ev.v[0], "correlation_id"), "corr-9",
                  "the body's correlation_id is kept");
    }
    th_recs_free(&ev);

    /* limits and malformed bodies: clear errors */
    static char big[10000];
    memset(big, ' ', sizeof big - 1);
    memcpy(big, "{\"x\":1}", 7);
    CHECK_INT(
        status_of("POST", "/v1/commands", big, SHOP_TOKEN, "gateway.max_body"),
        413, "a body over max_body: 413");
    CHECK_INT(status_of("POST", "/v1/commands", "{\"aggregate_type\":}",
                        SHOP_TOKEN, "malformed JSON"),
              400, "invalid JSON: 400");
    CHECK_INT(status_of("POST", "/v1/commands",
                        "{\"aggregate_type\":\"customer\",\"aggregate_id\":"
                        "\"c-\xff\",\"type\":\"ChangeEmail\",\"data\":{}}",
                        SHOP_TOKEN, "UTF-8"),
              400, "invalid UTF-8: 400");

    /* a client trickling its request: 408 and closed, others served */
    trickler tr;
    pthread_create(&tr.th, NULL, trickle_main, &tr);
    th_sleep_ms(1000);
    CHECK_INT(status_of("GET", "/v1/commands/a-1", NULL, SHOP_TOKEN, NULL), 200,
              "another client is served while one trickles");
    pthread_join(tr.th, NULL);
    CHECK_HAS(tr.b, "408 Request Timeout", "the trickling client gets 408");
    CHECK(tr.secs < 6, "and is closed within the timeout and a second");
    CHECK_INT(status_of("POST", "/v1/commands", reg, SHOP_TOKEN, NULL), 200,
              "the gateway stays up: the retry still answers");

    /* a batch: the token checked for each command, the principal set */
    static const char batch[] =
        "{\"commands\":[{\"id\":\"a-3\",\"aggregate_type\":\"probe\","
        "\"aggregate_id\":\"p\",\"type\":\"Ok\",\"data\":{},"
        "\"metadata\":{\"user_id\":\"admin\"}},"
        "{\"id\":\"a-4\",\"aggregate_type\":\"customer\","
        "\"aggregate_id\":\"c-2\",\"type\":\"RegisterCustomer\","
        "\"data\":{\"name\":\"Bo\",\"email\":\"bo@example.org\"}},"
        "{\"id\":\"a-5\",\"aggregate_type\":\"probe\","
        "\"aggregate_id\":\"p\",\"type\":\"Boom\",\"data\":{}}]}";
    CHECK_INT(status_of("POST", "/v1/batch", batch, NULL, "bearer token"), 401,
              "a batch without a token: 401");
    gw_http(&t, port, "POST", "/v1/batch", batch, PROBE_TOKEN, 30, &r);
    CHECK_INT(r.status, 200, "a batch with the prober's token: 200");
    CHECK(gw_openapi_check(doc, "POST", "/v1/batch", &r),
          "it matches the OpenAPI document");
    {
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(r.json, "results");
        int st[3] = {0, 0, 0};
        for (int i = 0; i < 3 && i < cJSON_GetArraySize(res); i++) {
            const cJSON *h = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(res, i), "http_status");
            st[i] = cJSON_IsNumber(h) ? (int)h->valuedouble : 0;
        }
        CHECK_INT(st[0], 200, "the command it may send: 200");
        CHECK_INT(st[1], 403, "another aggregate type's: 403");
        CHECK_INT(st[2], 403, "another command type's: 403");
    }
    gw_resp_free(&r);

    /* nothing produced for the refused requests */
    th_recs c = {0};
    ct_read_all(&t, cmds, "read_uncommitted", &c);
    CHECK_INT(c.n, 1, "one customer command produced: the shop's");
    th_recs_free(&c);
    ct_read_all(&t, pcmds, "read_uncommitted", &c);
    CHECK_INT(c.n, 2, "two probe commands produced: the allowed Oks");
    for (size_t i = 0; i < c.n; i++)
        if (th_str(&c.v[i], "id") &&
            strcmp(th_str(&c.v[i], "id"), "a-3") == 0) {
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(c.v[i].json, "metadata"),
                "user_id");
            CHECK_STR(cJSON_IsString(u) ? u->valuestring : NULL, "prober",
                      "a batch's command: user_id is the token's principal");
        }
    th_recs_free(&c);

    /* the tokens are nowhere */
    static char m[1 << 16];
    th_http_get(rport, "/metrics", m, sizeof m);
    CHECK_HAS(m, "status=\"401\"", "the metrics count the 401s");
    CHECK_HAS(m, "status=\"408\"", "and the 408");
    CHECK(!strstr(m, SHOP_TOKEN) && !strstr(m, PROBE_TOKEN) &&
              !strstr(m, "not-a-token"),
          "no token in the metrics");
    CHECK(th_log_count(logpath, "level=debug") > 0,
          "the log is at debug level");
    CHECK(!th_file_has(logpath, SHOP_TOKEN) &&
              !th_file_has(logpath, PROBE_TOKEN) &&
              !th_file_has(logpath, "not-a-token") &&
              !th_file_has(logpath, shop_hash),
          "no token (nor its hash) in the log");

    /* HTTPS through libmicrohttpd's GnuTLS */
    char sh[2048];
    int tport = port, tmport = th_free_port();
    port = th_free_port();
    snprintf(sh, sizeof sh,
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "
             "/CN=127.0.0.1 -keyout %s/key.pem -out %s/cert.pem 2>/dev/null",
             t.dir, t.dir);
    CHECK_INT(system(sh), 0, "openssl makes a self-signed certificate");
    snprintf(gwcfg, sizeof gwcfg,
             "listen = '127.0.0.1:%d', tls_cert = '%s/cert.pem',\n"
             "    cache_size = 1,\n"
             "    tls_key = '%s/key.pem', tokens = {\n"
             "      { principal = 'shop', sha256 = '%s',\n"
             "        aggregates = '*' } }",
             port, t.dir, t.dir, shop_hash);
    gw_config(&t, "tls", "tls", tmport, gwcfg);
    pid_t tpid = gw_start(&t, "tls", "tls.log");
    CHECK(gw_wait_ready(tmport, 60), "the HTTPS gateway becomes ready");
    gw_scheme = "https";
    gw_http(&t, port, "POST", "/v1/commands", reg, SHOP_TOKEN, 30, &r);
    CHECK_INT(r.status, 200, "over HTTPS: 200");
    CHECK_STR(gw_str(&r, "status"), "accepted",
              "a retry of an id this gateway never saw: accepted");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r.json, "duplicate")),
          "marked duplicate (the first outcome is not in its cache)");
    gw_resp_free(&r);
    /* a cache of one outcome: the next command's pushes it out */
    CHECK_INT(status_of("POST", "/v1/commands",
                        "{\"id\":\"a-3\",\"aggregate_type\":\"probe\","
                        "\"aggregate_id\":\"p\",\"type\":\"Ok\",\"data\":{}}",
                        SHOP_TOKEN, NULL),
              200, "another command over HTTPS: 200");
    CHECK_INT(status_of("GET", "/v1/commands/a-3", NULL, SHOP_TOKEN, NULL), 200,
              "the newest outcome is in the cache");
    CHECK_INT(status_of("GET", "/v1/commands/a-1", NULL, SHOP_TOKEN, NULL), 404,
              "the older one is forgotten past gateway.cache_size");
    gw_scheme = "http";
    gw_http(&t, port, "GET", "/v1/commands/a-1", NULL, SHOP_TOKEN, 10, &r);
    CHECK_INT(r.status, 0, "plain HTTP to the HTTPS port gets no answer");
    gw_resp_free(&r);
    CHECK_INT(th_stop(tpid, SIGTERM, 30), 0, "the HTTPS gateway stops with 0");
    port = tport;

    /* past gateway.max_connections: a clear 503, and served again once
     * connections close (no Kafka needed: GET reads the cache) */
    int lport = th_free_port(), lmport = th_free_port();
    char line[256];
    snprintf(gwcfg, sizeof gwcfg,
             "listen = '127.0.0.1:%d', max_connections = 2", lport);
    gw_config(&t, "lim", "lim", lmport, gwcfg);
    pid_t lpid = gw_start(&t, "lim", "lim.log");
    port = lport;
    long long until = th_now_ms() + 30000;
    do { /* until it listens */
        th_sleep_ms(100);
        gw_http(&t, port, "GET", "/v1/commands/x", NULL, NULL, 10, &r);
        gw_resp_free(&r);
    } while (r.status == 0 && th_now_ms() < until);
    int h1 = held(lport, line, sizeof line);
    CHECK_HAS(line, " 404 ", "a first connection is served");
    int h2 = held(lport, line, sizeof line);
    CHECK_HAS(line, " 404 ", "a second connection is served");
    gw_http(&t, port, "GET", "/v1/commands/x", NULL, NULL, 10, &r);
    CHECK_INT(r.status, 503, "a third connection past max_connections: 503");
    CHECK_HAS(gw_str(&r, "error"), "gateway.max_connections",
              "its body names the limit");
    CHECK_HAS(r.headers, "Retry-After: 1", "with Retry-After");
    CHECK_HAS(r.headers, "Connection: close", "and Connection: close");
    CHECK(gw_openapi_check(doc, "GET", "/v1/commands/{id}", &r),
          "the 503 matches the OpenAPI document");
    gw_resp_free(&r);
    gw_http(&t, port, "POST", "/v1/commands", reg, NULL, 10, &r);
    CHECK_INT(r.status, 503, "a POST past max_connections: 503 too");
    CHECK(gw_openapi_check(doc, "POST", "/v1/commands", &r),
          "which matches the document");
    gw_resp_free(&r);
    close(h1);
    close(h2);
    until = th_now_ms() + 30000;
    do { /* the gateway notices the closes */
        gw_http(&t, port, "GET", "/v1/commands/x", NULL, NULL, 10, &r);
        gw_resp_free(&r);
        if (r.status == 404)
            break;
        th_sleep_ms(100);
    } while (th_now_ms() < until);
    CHECK_INT(r.status, 404, "served again once the connections closed");
    th_http_get(lmport, "/metrics", m, sizeof m);
    CHECK_HAS(m,
              "evlua_gateway_requests_total{route=\"GET /v1/commands/{id}\","
              "status=\"503\"} 1",
              "the refusal is counted");
    CHECK_INT(th_stop(lpid, SIGTERM, 30), 0, "that gateway stops with 0");
    port = tport;

    /* gateway.listen on IPv6: [::1] is a loopback address (no tokens
     * needed), [::] without tokens is refused */
    int s6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6,
                               .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int have6 = s6 >= 0 && bind(s6, (struct sockaddr *)&sa6, sizeof sa6) == 0;
    if (s6 >= 0)
        close(s6);
    if (!have6) {
        printf("# SKIP the IPv6 listen checks: this machine has no IPv6 "
               "loopback (cannot bind [::1]: %s)\n",
               strerror(errno));
    } else {
        int p6 = th_free_port(), m6 = th_free_port();
        snprintf(gwcfg, sizeof gwcfg, "listen = '[::]:%d'", p6);
        gw_config(&t, "open6", "open6", m6, gwcfg);
        pid_t o6 = gw_start(&t, "open6", "open6.log");
        CHECK_INT(th_wait(o6, 30), 2, "no tokens on [::]: refused (2)");
        CHECK(ct_log_has(&t, "open6.log", "no gateway.tokens configured"),
              "and says why");
        snprintf(gwcfg, sizeof gwcfg, "listen = '[::1]:%d'", p6);
        gw_config(&t, "v6", "v6", m6, gwcfg);
        pid_t v6 = gw_start(&t, "v6", "v6.log");
        gw_host = "[::1]";
        port = p6;
        until = th_now_ms() + 30000;
        do {
            th_sleep_ms(100);
            gw_http(&t, port, "GET", "/v1/commands/x", NULL, NULL, 10, &r);
            if (r.status == 0)
                gw_resp_free(&r);
        } while (r.status == 0 && th_now_ms() < until);
        CHECK_INT(r.status, 404, "a gateway on [::1] answers over IPv6");
        CHECK(gw_openapi_check(doc, "GET", "/v1/commands/{id}", &r),
              "as the document says");
        gw_resp_free(&r);
        gw_host = "127.0.0.1";
        port = tport;
        CHECK_INT(th_stop(v6, SIGTERM, 30), 0, "the IPv6 gateway stops with 0");
    }

    CHECK_INT(th_stop(rpid, SIGTERM, 30), 0, "evlua run stops with 0");
    if (check_failures_)
        ct_dump_log(&t, "r.log");
    cJSON_Delete(doc);
    return check_done();
}
