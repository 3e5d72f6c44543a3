/*
 * gwtest.h - the harness of the gateway's tests (tests/c/test_gateway*.c):
 * the command side's world (cmdtest.h) plus a config with a gateway
 * table, `evlua gateway` as a child process, and HTTP requests through
 * curl(1), a real HTTP client, whose status, headers and body the tests
 * read back.
 */
#ifndef EVL_GWTEST_H
#define EVL_GWTEST_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "cmdtest.h"

/* Write config NAME.lua: the command side's world of t (transactional id
 * txid), metrics on metrics_port, and the gateway table's fields gateway
 * (Lua text, e.g. "listen = '127.0.0.1:1234', timeout_ms = 5000"). */
static inline void gw_config(const ct *t, const char *name, const char *txid,
                             int metrics_port, const char *gateway)
{
    char text[16384], rel[256];
    snprintf(text, sizeof text,
             "return {\n"
             "  aggregates = '%s/aggregates',\n"
             "  projections = {},\n"
             "  kafka = { ['bootstrap.servers'] = '%s',\n"
             "            ['session.timeout.ms'] = 6000,\n"
             "            ['heartbeat.interval.ms'] = 1000 },\n"
             "  commands = {\n"
             "    group_id = '%s.group', transactional_id = '%s.%s',\n"
             "    topics = { commands = '%s.{type}.commands',\n"
             "               events = '%s.{type}.events',\n"
             "               state = '%s.{type}.state',\n"
             "               results = '%s.{type}.results' },\n"
             "  },\n"
             "  metrics = { listen = '127.0.0.1:%d' },\n"
             "  gateway = { %s },\n"
             "}\n",
             t->dir, t->bootstrap, t->prefix, t->prefix, txid, t->prefix,
             t->prefix, t->prefix, t->prefix, metrics_port, gateway);
    snprintf(rel, sizeof rel, "%s.lua", name);
    ct_write_file(t, rel, text);
}

/* `evlua gateway -c DIR/CONFIG.lua`, output to DIR/LOG. */
static inline pid_t gw_start(const ct *t, const char *config, const char *log)
{
    char cfg[1024], logpath[1024];
    snprintf(cfg, sizeof cfg, "%s/%s.lua", t->dir, config);
    snprintf(logpath, sizeof logpath, "%s/%s", t->dir, log);
    const char *argv[] = {t->bin, "gateway", "-c", cfg, NULL};
    return th_spawn(logpath, NULL, argv);
}

/* One HTTP exchange. */
typedef struct gw_resp {
    int status; /* 0: no answer (connection refused, closed, ...) */
    char body[65536];
    char location[512]; /* the Location header, "" when none */
    char headers[8192]; /* every response header, as received */
    cJSON *json;        /* the body parsed, NULL when not JSON */
} gw_resp;

static inline void gw_resp_free(gw_resp *r)
{
    cJSON_Delete(r->json);
    r->json = NULL;
}

/* The scheme gw_http uses: "http", or "https" (then curl -k: the tests'
 * certificates are self-signed). */
static const char *gw_scheme = "http";

/* The host gw_http connects to: "127.0.0.1", or "[::1]". */
static const char *gw_host = "127.0.0.1";

/* One more request header gw_http sends ("Name: value"; NULL: none). */
static const char *gw_header;

/* curl METHOD http://gw_host:port PATH with body (NULL: none) and an
 * optional bearer token; timeout_s for the whole exchange. Fills r. */
static inline void gw_http(const ct *t, int port, const char *method,
                           const char *path, const char *body,
                           const char *token, int timeout_s, gw_resp *r)
{
    static int seq;
    char bodyf[1024], outf[1024], hdrf[1024], cmd[8192], auth[600] = "";
    char extra[600] = "";
    int n = __sync_fetch_and_add(&seq, 1);
    snprintf(bodyf, sizeof bodyf, "%s/req-%d.json", t->dir, n);
    snprintf(outf, sizeof outf, "%s/resp-%d.json", t->dir, n);
    snprintf(hdrf, sizeof hdrf, "%s/resp-%d.hdr", t->dir, n);
    if (body)
        th_write_file(bodyf, body);
    if (token)
        snprintf(auth, sizeof auth, "-H 'Authorization: Bearer %s' ", token);
    if (gw_header)
        snprintf(extra, sizeof extra, "-H '%s' ", gw_header);
    snprintf(cmd, sizeof cmd,
             "curl -s -g -k -m %d -X %s %s%s%s%s%s -H 'Content-Type: "
             "application/json' -o %s -D %s -w '%%{http_code}' "
             "'%s://%s:%d%s'",
             timeout_s, method, auth, extra, body ? "--data-binary @" : "",
             body ? bodyf : "", body ? " " : "", outf, hdrf, gw_scheme, gw_host,
             port, path);
    memset(r, 0, sizeof *r);
    /* fork and read(), not popen(): a thread blocked reading a popen'd
     * FILE holds its lock, and th_spawn's fflush(NULL) would wait for it
     * as long as the request waits */
    int fds[2];
    if (pipe(fds) != 0)
        th_die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        th_die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char code[32];
    size_t got = 0;
    ssize_t k;
    while (got < sizeof code - 1 &&
           ((k = read(fds[0], code + got, sizeof code - 1 - got)) > 0 ||
            (k < 0 && errno == EINTR)))
        if (k > 0)
            got += (size_t)k;
    code[got] = '\0';
    close(fds[0]);
    waitpid(pid, NULL, 0);
    r->status = atoi(code);
    th_read_file(outf, r->body, sizeof r->body);
    r->json = cJSON_Parse(r->body);
    char hdr[8192], *l;
    th_read_file(hdrf, hdr, sizeof hdr);
    snprintf(r->headers, sizeof r->headers, "%s", hdr);
    if ((l = strstr(hdr, "\nLocation: ")))
        sscanf(l + 11, "%511[^\r\n]", r->location);
    unlink(bodyf);
    unlink(outf);
    unlink(hdrf);
}

/* String / integer member of r's JSON body (NULL / -1 when absent). */
static inline const char *gw_str(const gw_resp *r, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->json, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static inline long long gw_int(const gw_resp *r, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->json, name);
    return cJSON_IsNumber(v) ? (long long)v->valuedouble : -1;
}

/* Wait up to timeout_s until /readyz on metrics_port says the gateway
 * is ready (it assigned the results topics). Returns 1 when it did. */
static inline int gw_wait_ready(int metrics_port, int timeout_s)
{
    char b[4096];
    long long end = th_now_ms() + timeout_s * 1000LL;
    do {
        th_readyz(metrics_port, b, sizeof b);
        if (strstr(b, "\"gateway\":{\"ready\":true"))
            return 1;
        th_sleep_ms(200);
    } while (th_now_ms() < end);
    fprintf(stderr, "readyz: %s\n", b);
    return 0;
}

/* ---- the OpenAPI document against real responses ----------------------- */

static inline cJSON *gw_openapi_load(const ct *t)
{
    static char text[1 << 17];
    char path[1024];
    snprintf(path, sizeof path, "%s/docs/gateway.openapi.json", t->src);
    th_read_file(path, text, sizeof text);
    cJSON *doc = cJSON_Parse(text);
    if (!doc)
        th_die("docs/gateway.openapi.json is not JSON");
    return doc;
}

/* The schema s, following a local $ref. */
static inline const cJSON *gw_schema(const cJSON *doc, const cJSON *s)
{
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    if (!cJSON_IsString(ref))
        return s;
    const char *name = strrchr(ref->valuestring, '/') + 1;
    return cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(doc, "components"), "schemas"),
        name);
}

/* Does v match schema s (type, nullable, enum, required, properties,
 * additionalProperties: false, array items)? Prints why not into why. */
static inline int gw_matches(const cJSON *doc, const cJSON *s, const cJSON *v,
                             const char *at, char *why, size_t n)
{
    s = gw_schema(doc, s);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : NULL;
    if (cJSON_IsNull(v)) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "nullable")))
            return 1;
        snprintf(why, n, "%s is null, not nullable", at);
        return 0;
    }
    int ok = !ty || (strcmp(ty, "string") == 0 && cJSON_IsString(v)) ||
             (strcmp(ty, "boolean") == 0 && cJSON_IsBool(v)) ||
             (strcmp(ty, "integer") == 0 && cJSON_IsNumber(v) &&
              v->valuedouble == (double)(long long)v->valuedouble) ||
             (strcmp(ty, "array") == 0 && cJSON_IsArray(v)) ||
             (strcmp(ty, "object") == 0 && cJSON_IsObject(v));
    if (!ok) {
        snprintf(why, n, "%s is not of type %s", at, ty);
        return 0;
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum"), *e;
    if (en) {
        ok = 0;
        cJSON_ArrayForEach(e, en) ok |=
            cJSON_IsString(v) && strcmp(e->valuestring, v->valuestring) == 0;
        if (!ok) {
            snprintf(why, n, "%s: '%s' is not in the enum", at,
                     cJSON_IsString(v) ? v->valuestring : "?");
            return 0;
        }
    }
    char sub[256];
    if (cJSON_IsArray(v)) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        int i = 0;
        cJSON_ArrayForEach(e, v)
        {
            snprintf(sub, sizeof sub, "%s[%d]", at, i++);
            if (items && !gw_matches(doc, items, e, sub, why, n))
                return 0;
        }
    }
    if (cJSON_IsObject(v)) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
        const cJSON *addl =
            cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        cJSON_ArrayForEach(
            e, req) if (!cJSON_GetObjectItemCaseSensitive(v, e->valuestring))
        {
            snprintf(why, n, "%s lacks the required field %s", at,
                     e->valuestring);
            return 0;
        }
        cJSON_ArrayForEach(e, v)
        {
            const cJSON *ps =
                cJSON_GetObjectItemCaseSensitive(props, e->string);
            snprintf(sub, sizeof sub, "%s.%s", at, e->string);
            if (!ps && cJSON_IsFalse(addl)) {
                snprintf(why, n, "%s is not in the schema", sub);
                return 0;
            }
            if (ps && !gw_matches(doc, ps, e, sub, why, n))
                return 0;
        }
    }
    return 1;
}

/* Is response r to METHOD on the path template tpl ("/v1/commands/{id}")
 * one the document describes: its status listed, its body matching the
 * status's schema, a Location header when the status declares one?
 * Returns 1, else 0 with the reason printed. */
static inline int gw_openapi_check(const cJSON *doc, const char *method,
                                   const char *tpl, const gw_resp *r)
{
    char st[8], why[512] = "";
    const char *m = strcmp(method, "POST") == 0 ? "post" : "get";
    snprintf(st, sizeof st, "%d", r->status);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(doc, "paths"), tpl),
        m);
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(op, "responses"), st);
    if (!resp)
        snprintf(why, sizeof why, "status %s is not documented", st);
    else {
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(resp, "content"),
                "application/json"),
            "schema");
        const cJSON *hdrs = cJSON_GetObjectItemCaseSensitive(resp, "headers");
        if (!r->json)
            snprintf(why, sizeof why, "the body is not JSON: %.200s", r->body);
        else if (schema)
            gw_matches(doc, schema, r->json, "body", why, sizeof why);
        if (!why[0] && cJSON_GetObjectItemCaseSensitive(hdrs, "Location") &&
            !r->location[0])
            snprintf(why, sizeof why, "no Location header");
    }
    if (why[0])
        fprintf(stderr, "openapi: %s %s -> %d: %s\n", method, tpl, r->status,
                why);
    return why[0] == 0;
}

#endif
