/*
 * gateway.c - the gateway's HTTP side (see gateway.h): routes, the
 * validation of a command, bearer tokens, limits, and the answers.
 *
 * libmicrohttpd is the HTTP library the metrics endpoint already uses; it
 * is kept by Debian, serves HTTP/1.1 keep-alive from an internal thread
 * pool over epoll, speaks TLS through GnuTLS, and can suspend a
 * connection: a request that waits for its result holds no thread, so
 * gateway.max_waiters requests wait with gateway.threads threads.
 *
 * A POST is read whole (at most gateway.max_body bytes), checked with
 * the JSON rules of evlua's bridge (json.h: the rules the command side
 * applies, so a command accepted here never fails there for its JSON),
 * checked against the token, and written as the command envelope
 * (envelope.h, as `evlua send` writes it) with metadata.user_id set to
 * the token's principal. Then the request waits (gateway_int.h). POST
 * /v1/batch does the same for each command of {"commands": [...]}, and
 * answers them all in one list once the last one's answer is known.
 */
#include "gateway_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "envelope.h"
#include "json.h"
#include "lifecycle.h"
#include "log.h"
#include "luaapi.h"

enum { R_POST, R_GET, R_BATCH, R_OTHER };

/* libmicrohttpd's own connection limit is gateway.max_connections plus
 * this margin: past max_connections a connection is still accepted and
 * its request answered 503 (and closed), where libmicrohttpd would close
 * it without a word; only past the margin too does it do that. The
 * margin also absorbs libmicrohttpd sharing its limit among the threads
 * of its pool (each thread accepts up to its share). */
#define GW_CONN_MARGIN 16
static const char *const route_names[] = {
    "POST /v1/commands", "GET /v1/commands/{id}", "POST /v1/batch", "other"};

/* ---- answers ----------------------------------------------------------- */

static void count(evl_gateway *gw, int route, int status)
{
    evl_metric **slot =
        status >= 0 && status < 600 ? &gw->counters[route][status] : NULL;
    evl_metric *m = slot ? __atomic_load_n(slot, __ATOMIC_ACQUIRE) : NULL;
    if (m) {
        evl_metric_add(m, 1);
        return;
    }
    char labels[128], st[8];
    snprintf(st, sizeof st, "%d", status);
    evl_metrics_labels(labels, sizeof labels, "route", route_names[route],
                       "status", st, NULL);
    m = evl_metrics_counter("evlua_gateway_requests_total",
                            "HTTP requests the gateway answered, by route "
                            "and status",
                            labels);
    if (slot) /* a race stores the same pointer twice */
        __atomic_store_n(slot, m, __ATOMIC_RELEASE);
    evl_metric_add(m, 1);
}

/* Answer status with body (copied); location: the Location header (NULL
 * or "": none); applied: bit 1, the request's Prefer was honoured (RFC
 * 7240: Preference-Applied: respond-async); bit 2, close the connection
 * after the answer (Connection: close). */
static enum MHD_Result respond_pref(evl_gateway *gw,
                                    struct MHD_Connection *conn, int route,
                                    int status, const char *body, size_t len,
                                    const char *location, int applied)
{
    struct MHD_Response *res = MHD_create_response_from_buffer(
        len, (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(res, "Content-Type", "application/json");
    if (location && *location)
        MHD_add_response_header(res, "Location", location);
    if (status == 401)
        MHD_add_response_header(res, "WWW-Authenticate",
                                "Bearer realm=\"evlua\"");
    if (status == 503)
        MHD_add_response_header(res, "Retry-After", "1");
    if (applied & 1)
        MHD_add_response_header(res, "Preference-Applied", "respond-async");
    if (applied & 2)
        MHD_add_response_header(res, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result r = MHD_queue_response(conn, (unsigned)status, res);
    MHD_destroy_response(res);
    count(gw, route, status);
    return r;
}

static enum MHD_Result respond(evl_gateway *gw, struct MHD_Connection *conn,
                               int route, int status, const char *body,
                               size_t len, const char *location)
{
    return respond_pref(gw, conn, route, status, body, len, location, 0);
}

/* An error's body: {"error": msg} (and the command id when known). */
static void error_body(evl_buf *b, const char *id, const char *msg)
{
    evl_buf_putc(b, '{');
    if (id) {
        evl_buf_puts(b, "\"command_id\":");
        evl_envelope_put_string(b, id, strlen(id));
        evl_buf_putc(b, ',');
    }
    evl_buf_puts(b, "\"error\":");
    evl_envelope_put_string(b, msg, strlen(msg));
    evl_buf_putc(b, '}');
}

/* An error answer (error_body). */
static enum MHD_Result fail(evl_gateway *gw, struct MHD_Connection *conn,
                            int route, int status, const char *id,
                            const char *msg)
{
    evl_buf b = {0};
    error_body(&b, id, msg);
    enum MHD_Result r = respond(gw, conn, route, status, b.data, b.len, NULL);
    evl_buf_free(&b);
    return r;
}

/* Was conn accepted past gateway.max_connections (notify_connection)? */
static int conn_over(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    const gw_conn *c = ci ? ci->socket_context : NULL;
    /* set once, before the connection's first request: no lock needed */
    return c && c->over;
}

/* ---- tokens ------------------------------------------------------------ */

/* The token of the request's bearer credential; NULL with *status 401
 * when there is none or it is unknown. With no tokens configured
 * (loopback only), every request passes with no principal. */
static const evl_gateway_token *
authenticate(evl_gateway *gw, struct MHD_Connection *conn, int *ok)
{
    const evl_config *cfg = gw->cfg;
    *ok = cfg->gateway.ntokens == 0;
    if (*ok)
        return NULL;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)h, strlen(h), md);
    const evl_gateway_token *found = NULL;
    /* compare with every token in constant time */
    for (int i = 0; i < cfg->gateway.ntokens; i++)
        if (CRYPTO_memcmp(md, cfg->gateway.tokens[i].sha256, sizeof md) == 0)
            found = &cfg->gateway.tokens[i];
    *ok = found != NULL;
    return found;
}

static int listed(const evl_strlist *l, const char *s)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->v[i], "*") == 0 || strcmp(l->v[i], s) == 0)
            return 1;
    return 0;
}

/* ---- POST /v1/commands -------------------------------------------------- */

/* The members of the metadata object text[0..len) but user_id and
 * correlation_id (the envelope writes those itself), as JSON text without
 * the braces, so a handler sees the client's own keys in ctx.metadata as
 * it does for a command sent to Kafka directly; NULL when there are none.
 * text is valid JSON already (parse_command checked the body). */
static char *metadata_more(const char *text, size_t len)
{
    cJSON *o = cJSON_ParseWithLength(text, len);
    char *out = NULL;
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(o, "user_id");
    cJSON_DeleteItemFromObjectCaseSensitive(o, "correlation_id");
    if (o->child) {
        char *p = cJSON_PrintUnformatted(o);
        size_t n = p ? strlen(p) : 0;
        if (n >= 2) {
            out = evl_xmalloc(n - 1);
            memcpy(out, p + 1, n - 2);
            out[n - 2] = '\0';
        }
        cJSON_free(p);
    }
    cJSON_Delete(o);
    return out;
}

/* The command body[0..blen) (a request's body, or one command of a
 * batch), checked for token tok, as an envelope in cmd; its type in *t
 * and its id in id. Returns 0, or the HTTP status with the reason in
 * msg. */
static int parse_command(evl_gateway *gw, const gw_types *ts, const char *body,
                         size_t blen, const evl_gateway_token *tok,
                         const gw_type **t, char *id, evl_buf *cmd, char *agg,
                         char *msg, size_t msglen)
{
    char *more = NULL; /* metadata's other members */
    enum { M_ID, M_AT, M_AID, M_TYPE, M_DATA, M_EV, M_META };
    evl_json_member m[] = {
        {.name = "id"},           {.name = "aggregate_type"},
        {.name = "aggregate_id"}, {.name = "type"},
        {.name = "data"},         {.name = "expected_version"},
        {.name = "metadata"}};
    evl_json_member mm[] = {{.name = "user_id"}, {.name = "correlation_id"}};
    evl_buf s = {0}, ms = {0};
    char err[EVL_ERRLEN];
    int is_object, status = 422;
    size_t unknown;
    if (!body)
        body = "";
    if (evl_json_members_unknown(body, blen, m, 7, &s, &is_object, &unknown,
                                 err, sizeof err)) {
        snprintf(msg, msglen, "malformed JSON: %.400s", err);
        status = 400;
        goto out;
    }
    if (!is_object) {
        snprintf(msg, msglen, "the command must be a JSON object");
        goto out;
    }
    /* An unknown field is refused, not ignored: a misspelt
     * "expectedVersion" would otherwise drop the concurrency check the
     * client asked for. metadata's own keys stay free-form. */
    if (unknown != EVL_JSON_NONE) {
        snprintf(msg, msglen,
                 "unknown field '%.200s'; a command has only id, "
                 "aggregate_type, aggregate_id, type, data, "
                 "expected_version, metadata",
                 s.data + unknown);
        goto out;
    }
#define STR(i) (s.data + m[i].off)
    if (m[M_AT].type != EVL_JSON_STRING) {
        snprintf(msg, msglen, "aggregate_type must be a string");
        goto out;
    }
    *t = NULL;
    for (size_t i = 0; i < ts->n; i++)
        if (strcmp(ts->v[i].type, STR(M_AT)) == 0)
            *t = &ts->v[i];
    if (!*t) {
        snprintf(msg, msglen, "unknown aggregate type '%.200s'", STR(M_AT));
        goto out;
    }
    if (m[M_AID].type != EVL_JSON_STRING || m[M_AID].len == 0 ||
        m[M_AID].len > EVL_ENVELOPE_MAX_AGGREGATE_ID) {
        snprintf(msg, msglen, "aggregate_id must be a string of 1 to %d bytes",
                 EVL_ENVELOPE_MAX_AGGREGATE_ID);
        goto out;
    }
    if (m[M_TYPE].type != EVL_JSON_STRING || m[M_TYPE].len == 0 ||
        m[M_TYPE].len > EVL_ENVELOPE_MAX_ID) {
        snprintf(msg, msglen, "type must be a string of 1 to %d bytes",
                 EVL_ENVELOPE_MAX_ID);
        goto out;
    }
    int known = 0;
    for (size_t i = 0; i < (*t)->ncmds; i++)
        known |= strcmp((*t)->cmds[i], STR(M_TYPE)) == 0;
    if (!known) {
        snprintf(msg, msglen, "aggregate type %s has no handler for '%.200s'",
                 (*t)->type, STR(M_TYPE));
        goto out;
    }
    if (m[M_ID].type != EVL_JSON_ABSENT &&
        (m[M_ID].type != EVL_JSON_STRING || m[M_ID].len == 0 ||
         m[M_ID].len > EVL_ENVELOPE_MAX_ID)) {
        snprintf(msg, msglen, "id must be a string of 1 to %d bytes",
                 EVL_ENVELOPE_MAX_ID);
        goto out;
    }
    if (m[M_DATA].type != EVL_JSON_OTHER || body[m[M_DATA].voff] != '{') {
        snprintf(msg, msglen, "data must be a JSON object");
        goto out;
    }
    if (m[M_EV].type != EVL_JSON_ABSENT &&
        (m[M_EV].type != EVL_JSON_NUMBER || !m[M_EV].isint ||
         m[M_EV].integer < 0)) {
        snprintf(msg, msglen,
                 "expected_version must be a non-negative integer");
        goto out;
    }
    const char *user = NULL, *corr = NULL;
    if (m[M_META].type != EVL_JSON_ABSENT) {
        if (m[M_META].type != EVL_JSON_OTHER || body[m[M_META].voff] != '{') {
            snprintf(msg, msglen, "metadata must be a JSON object");
            goto out;
        }
        evl_json_members(body + m[M_META].voff, m[M_META].vlen, mm, 2, &ms,
                         &is_object, err, sizeof err);
        for (int i = 0; i < 2; i++)
            if (mm[i].type != EVL_JSON_ABSENT &&
                mm[i].type != EVL_JSON_STRING) {
                snprintf(msg, msglen, "metadata.%s must be a string",
                         mm[i].name);
                goto out;
            }
        if (mm[0].type == EVL_JSON_STRING)
            user = ms.data + mm[0].off;
        if (mm[1].type == EVL_JSON_STRING)
            corr = ms.data + mm[1].off;
        more = metadata_more(body + m[M_META].voff, m[M_META].vlen);
    }
    if (gw->cfg->gateway.ntokens > 0) {
        if (!listed(&tok->aggregates, (*t)->type) ||
            (tok->commands.n > 0 && !listed(&tok->commands, STR(M_TYPE)))) {
            snprintf(msg, msglen, "principal %s may not send %.200s to %s",
                     tok->principal, STR(M_TYPE), (*t)->type);
            status = 403;
            goto out;
        }
        user = tok->principal; /* never the body's */
    }
    if (m[M_ID].type == EVL_JSON_STRING)
        snprintf(id, EVL_ENVELOPE_MAX_ID + 1, "%s", STR(M_ID));
    else if (evl_luaapi_uuid7(id) != 0) {
        snprintf(msg, msglen, "cannot generate a command id");
        status = 503;
        goto out;
    }
    snprintf(agg, EVL_ENVELOPE_MAX_AGGREGATE_ID + 1, "%s", STR(M_AID));
    char *data = evl_xmalloc(m[M_DATA].vlen + 1);
    memcpy(data, body + m[M_DATA].voff, m[M_DATA].vlen);
    data[m[M_DATA].vlen] = '\0';
    evl_envelope_command_in c = {.id = id,
                                 .type = STR(M_TYPE),
                                 .aggregate_type = (*t)->type,
                                 .aggregate_id = agg,
                                 .has_expected_version =
                                     m[M_EV].type == EVL_JSON_NUMBER,
                                 .expected_version = m[M_EV].integer,
                                 .data = data,
                                 .data_len = m[M_DATA].vlen,
                                 .user_id = user,
                                 .correlation_id = corr,
                                 .metadata_more = more};
    evl_envelope_command(cmd, &c);
    free(data);
#undef STR
    status = 0;
out:
    free(more);
    evl_buf_free(&s);
    evl_buf_free(&ms);
    return status;
}

/* Does the request carry Prefer: respond-async (RFC 7240)? */
static int prefers_async(struct MHD_Connection *conn)
{
    const char *h =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Prefer");
    for (const char *p = h; p && *p; p++) {
        /* a preference token of its own: not part of another's name */
        if (strncasecmp(p, "respond-async", 13) != 0 ||
            (p > h && !strchr(", \t", p[-1])) || !strchr(",; \t", p[13]))
            continue;
        return 1;
    }
    return 0;
}

/* The wait of this request: gateway.timeout_ms, or less when the query
 * asks (?timeout_ms=N), none with Prefer: respond-async (*async set). */
static long long wait_ms(evl_gateway *gw, struct MHD_Connection *conn,
                         int *async)
{
    long long max = gw->cfg->gateway.timeout_ms;
    const char *q =
        MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "timeout_ms");
    *async = 0;
    if (q) {
        char *end;
        long long v = strtoll(q, &end, 10);
        if (!*end && v >= 0 && v < max)
            return v;
    }
    if (prefers_async(conn)) {
        *async = 1;
        return 0;
    }
    return max;
}

/* A command of a request, checked before the lock: its envelope, or why
 * it is refused. */
typedef struct gw_item {
    const gw_type *t;
    int status; /* 0: to send; else its refusal, with msg */
    char *id;   /* NULL: unknown (a refusal before the id was read) */
    char *agg;
    char *msg;
    evl_buf cmd;
} gw_item;

static void item_parse(evl_gateway *gw, const gw_types *ts, const gw_req *r,
                       const char *body, size_t len, gw_item *it)
{
    char id[EVL_ENVELOPE_MAX_ID + 1], agg[EVL_ENVELOPE_MAX_AGGREGATE_ID + 1];
    char msg[EVL_ERRLEN];
    it->status = parse_command(gw, ts, body, len, r->tok, &it->t, id, &it->cmd,
                               agg, msg, sizeof msg);
    if (it->status) {
        it->msg = evl_xstrdup(msg);
        return;
    }
    it->id = evl_xstrdup(id);
    it->agg = evl_xstrdup(agg);
}

static void items_free(gw_item *it, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(it[i].id);
        free(it[i].agg);
        free(it[i].msg);
        evl_buf_free(&it[i].cmd);
    }
    free(it);
}

/* Answer slot s with an error (error_body). gw->mu held. */
static void slot_fail(evl_gateway *gw, gw_slot *s, int status, const char *id,
                      const char *msg)
{
    evl_buf b = {0};
    error_body(&b, id, msg);
    gw_slot_answer(gw, s, status, b.data, b.len, NULL);
    evl_buf_free(&b);
}

/* Send the commands it[0..n) of r, one slot each, and answer r once every
 * slot has its answer: at once when none waits, else when the last wait
 * ends (the connection suspended meanwhile). Refused whole (503) when the
 * gateway is not ready or the waits would pass gateway.max_waiters, and
 * then nothing is sent. */
static enum MHD_Result send_items(evl_gateway *gw, gw_req *r,
                                  struct MHD_Connection *conn, gw_item *it,
                                  size_t n)
{
    char msg[EVL_ERRLEN];
    int async;
    long long wait = wait_ms(gw, conn, &async);
    const char *id1 = r->route == R_POST ? it[0].id : NULL;
    pthread_mutex_lock(&gw->mu);
    if (!gw->ready) {
        snprintf(msg, sizeof msg, "not ready: %s", gw->notready);
        pthread_mutex_unlock(&gw->mu);
        return fail(gw, conn, r->route, 503, id1, msg);
    }
    /* the commands that would wait, counted before any is sent */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        gw_entry *e = it[i].status ? NULL : gw_lookup(gw, it[i].id);
        k += !it[i].status && !(e && e->done) && !(e && e->acked && wait == 0);
    }
    if (k > 0 &&
        (size_t)gw->nwaiting + k > (size_t)gw->cfg->gateway.max_waiters) {
        pthread_mutex_unlock(&gw->mu);
        snprintf(msg, sizeof msg,
                 "too many commands waiting for their result (%d, "
                 "gateway.max_waiters): retry later",
                 gw->cfg->gateway.max_waiters);
        return fail(gw, conn, r->route, 503, id1, msg);
    }
    r->conn = conn;
    r->async = async;
    r->deadline_ms = evl_now_ms() + wait;
    for (size_t i = 0; i < n; i++) {
        gw_slot *s = &r->slots[i];
        const gw_type *t = it[i].t;
        if (it[i].status) {
            slot_fail(gw, s, it[i].status, NULL, it[i].msg);
            continue;
        }
        if (!__atomic_load_n(&t->assigned, __ATOMIC_ACQUIRE)) {
            /* its results would not be read: nothing could answer a wait */
            snprintf(msg, sizeof msg,
                     "not ready: the results topic %s of the reloaded type %s "
                     "is not assigned yet",
                     t->results_topic, t->type);
            slot_fail(gw, s, 503, it[i].id, msg);
            continue;
        }
        gw_entry *e = gw_lookup(gw, it[i].id);
        if (e && strcmp(e->type, t->type) != 0) {
            /* an id names one command: never another type's outcome */
            slot_fail(gw, s, 422, it[i].id,
                      "this command id was sent for another aggregate type");
            continue;
        }
        if (e && e->done) { /* a retry: the first outcome again */
            gw_slot_answer(gw, s, e->status, e->body, e->len, NULL);
            continue;
        }
        if (e && e->acked && wait == 0) {
            /* in Kafka already, and the client does not wait: 202 now,
             * however many others wait */
            evl_buf b = {0};
            char loc[300];
            gw_pending(e->id, &b, loc, sizeof loc);
            gw_slot_answer(gw, s, 202, b.data, b.len, loc);
            evl_buf_free(&b);
            continue;
        }
        if (!e) {
            /* the same id already in flight waits for the same result and
             * is not sent twice */
            e = gw_insert(gw, it[i].id);
            e->type = t->type;
            if (gw_produce(gw, t, it[i].agg, it[i].id, &it[i].cmd, msg,
                           sizeof msg) != 0) {
                gw_remove(gw, e);
                slot_fail(gw, s, 503, it[i].id, msg);
                continue;
            }
        }
        /* even a wait of 0 is one until the command is in Kafka: a 202
         * promises that it is (gw_kafka.c answers it from the delivery
         * report) */
        gw_wait(gw, e, s);
    }
    if (r->nwait == 0) {
        gw_compose(r);
        pthread_mutex_unlock(&gw->mu);
        return respond_pref(
            gw, conn, r->route, r->status, r->resp, r->resp_len, r->location,
            r->async && (r->status == 202 || r->route == R_BATCH));
    }
    r->phase = GW_WAIT;
    MHD_suspend_connection(conn);
    pthread_mutex_unlock(&gw->mu);
    return MHD_YES;
}

typedef struct gw_split {
    evl_gateway *gw;
    const gw_types *ts;
    const gw_req *r;
    gw_item *it;
    size_t n, cap, max; /* it[0..min(n, max)) parsed; n counts all */
} gw_split;

static void split_item(void *ud, const char *value, size_t len)
{
    gw_split *sp = ud;
    if (sp->n < sp->max) {
        if (sp->n == sp->cap) {
            sp->cap = sp->cap ? sp->cap * 2 : 16;
            sp->it = evl_xrealloc(sp->it, sp->cap * sizeof *sp->it);
        }
        memset(&sp->it[sp->n], 0, sizeof *sp->it);
        item_parse(sp->gw, sp->ts, sp->r, value, len, &sp->it[sp->n]);
    }
    sp->n++;
}

void gw_compose(gw_req *r)
{
    if (r->route != R_BATCH) {
        gw_slot *s = &r->slots[0];
        r->status = s->status;
        r->resp = s->body;
        r->resp_len = s->len;
        s->body = NULL;
        snprintf(r->location, sizeof r->location, "%s",
                 s->location ? s->location : "");
        return;
    }
    /* {"results":[{"http_status":N, and the single answer's members},...]} */
    evl_buf b = {0};
    char num[32];
    evl_buf_puts(&b, "{\"results\":[");
    for (size_t i = 0; i < r->nslots; i++) {
        const gw_slot *s = &r->slots[i];
        snprintf(num, sizeof num, "%s{\"http_status\":%d", i ? "," : "",
                 s->status);
        evl_buf_puts(&b, num);
        if (s->location) {
            evl_buf_puts(&b, ",\"location\":");
            evl_envelope_put_string(&b, s->location, strlen(s->location));
        }
        /* a body is an object with members: its '{' replaced by ',' */
        evl_buf_putc(&b, ',');
        evl_buf_put(&b, s->body + 1, s->len - 1);
    }
    evl_buf_puts(&b, "]}");
    r->status = 200;
    r->resp = b.data;
    r->resp_len = b.len;
    r->location[0] = '\0';
}

static enum MHD_Result post_command(evl_gateway *gw, gw_req *r,
                                    struct MHD_Connection *conn)
{
    char msg[EVL_ERRLEN];
    enum MHD_Result res;
    if (r->too_big) {
        snprintf(msg, sizeof msg,
                 "the body is larger than %d bytes "
                 "(gateway.max_body)",
                 gw->cfg->gateway.max_body);
        return fail(gw, conn, r->route, 413, NULL, msg);
    }
    /* held to the end: a reload may swap the set meanwhile */
    gw_types *ts = gw_types_get(gw);
    gw_item *it = NULL;
    size_t n = 0;
    if (r->route == R_POST) {
        it = evl_xmalloc(sizeof *it);
        memset(it, 0, sizeof *it);
        n = 1;
        item_parse(gw, ts, r, r->body.data, r->body.len, it);
        if (it->status) { /* a single command's refusal is the answer */
            res = fail(gw, conn, R_POST, it->status, NULL, it->msg);
            goto out;
        }
        r->slots = &r->one;
    } else {
        /* {"commands": [command, ...]} */
        evl_json_member m[] = {{.name = "commands"}};
        evl_buf sc = {0};
        char err[EVL_ERRLEN];
        int is_object, status = 422;
        size_t unknown;
        const char *body = r->body.data ? r->body.data : "";
        int max = gw->cfg->gateway.max_waiters;
        if (evl_json_members_unknown(body, r->body.len, m, 1, &sc, &is_object,
                                     &unknown, err, sizeof err)) {
            snprintf(msg, sizeof msg, "malformed JSON: %.400s", err);
            status = 400;
        } else if (!is_object) {
            snprintf(msg, sizeof msg, "a batch must be a JSON object");
        } else if (unknown != EVL_JSON_NONE) {
            snprintf(msg, sizeof msg,
                     "unknown field '%.200s'; a batch has only commands",
                     sc.data + unknown);
        } else if (m[0].type != EVL_JSON_OTHER || body[m[0].voff] != '[') {
            snprintf(msg, sizeof msg, "commands must be an array of commands");
        } else {
            gw_split sp = {gw, ts, r, NULL, 0, 0, (size_t)max};
            evl_json_array_values(body + m[0].voff, m[0].vlen, split_item, &sp,
                                  err, sizeof err);
            it = sp.it;
            n = sp.n < sp.max ? sp.n : sp.max;
            status = 0;
            if (sp.n == 0 || sp.n > sp.max) {
                snprintf(msg, sizeof msg,
                         "a batch holds 1 to %d commands "
                         "(gateway.max_waiters); this one holds %zu",
                         max, sp.n);
                status = 422;
            }
        }
        evl_buf_free(&sc);
        if (status) {
            res = fail(gw, conn, R_BATCH, status, NULL, msg);
            goto out;
        }
        r->slots = calloc(n, sizeof *r->slots);
        if (!r->slots)
            abort();
    }
    r->nslots = n;
    for (size_t i = 0; i < n; i++)
        r->slots[i].req = r;
    res = send_items(gw, r, conn, it, n);
out:
    items_free(it, n);
    gw_types_put(gw, ts);
    return res;
}

/* ---- GET /v1/commands/ID ------------------------------------------------ */

static enum MHD_Result get_command(evl_gateway *gw, const gw_req *r,
                                   const char *id, struct MHD_Connection *conn)
{
    pthread_mutex_lock(&gw->mu);
    gw_entry *e = gw_lookup(gw, id);
    /* a token sees only the outcomes of the types it may send to: for
     * another's it is as unknown as an id never sent */
    if (e && r->tok && !listed(&r->tok->aggregates, e->type))
        e = NULL;
    if (!e) {
        pthread_mutex_unlock(&gw->mu);
        return fail(gw, conn, R_GET, 404, id,
                    "unknown command id (never sent through this gateway, "
                    "or older than its cache: gateway.cache_size)");
    }
    evl_buf b = {0};
    int st = 202;
    if (e->done) {
        evl_buf_put(&b, e->body, e->len);
        st = e->status;
    } else {
        char loc[300];
        gw_pending(id, &b, loc, sizeof loc);
    }
    pthread_mutex_unlock(&gw->mu);
    enum MHD_Result res = respond(gw, conn, R_GET, st, b.data, b.len, NULL);
    evl_buf_free(&b);
    return res;
}

/* ---- libmicrohttpd's callbacks ------------------------------------------ */

static void conn_busy(evl_gateway *gw, struct MHD_Connection *conn, int busy);

static __thread int named;

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn,
                              const char *url, const char *method,
                              const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    evl_gateway *gw = cls;
    gw_req *r = *con_cls;
    (void)version;
    if (!named) {
        evl_thread_name("evl:gw-http", NULL);
        named = 1;
    }
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            abort();
        *con_cls = r;
        r->started_ms = evl_now_ms();
        if (strcmp(url, "/v1/commands") == 0)
            r->route = R_POST;
        else if (strcmp(url, "/v1/batch") == 0)
            r->route = R_BATCH;
        else if (strncmp(url, "/v1/commands/", 13) == 0 && url[13])
            r->route = R_GET;
        else
            r->route = R_OTHER;
        if (conn_over(conn)) {
            char msg[200];
            evl_buf b = {0};
            snprintf(msg, sizeof msg,
                     "too many open connections (%d, "
                     "gateway.max_connections): retry later",
                     gw->cfg->gateway.max_connections);
            evl_buf_puts(&b, "{\"error\":");
            evl_envelope_put_string(&b, msg, strlen(msg));
            evl_buf_putc(&b, '}');
            enum MHD_Result res =
                respond_pref(gw, conn, r->route, 503, b.data, b.len, NULL, 2);
            evl_buf_free(&b);
            return res;
        }
        if (r->route == R_OTHER)
            return fail(gw, conn, R_OTHER, 404, NULL,
                        "no such resource: POST /v1/commands, POST "
                        "/v1/batch, GET /v1/commands/ID");
        if (strcmp(method, r->route == R_GET ? "GET" : "POST") != 0)
            return fail(gw, conn, r->route, 405, NULL,
                        r->route == R_GET ? "use GET" : "use POST");
        int ok;
        r->tok = authenticate(gw, conn, &ok);
        if (!ok)
            return fail(gw, conn, r->route, 401, NULL,
                        "a valid bearer token is required (Authorization: "
                        "Bearer TOKEN)");
        const char *cl = MHD_lookup_connection_value(
            conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (r->route != R_GET && cl &&
            strtoll(cl, NULL, 10) > gw->cfg->gateway.max_body) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "the body is larger than %d bytes (gateway.max_body)",
                     gw->cfg->gateway.max_body);
            return fail(gw, conn, r->route, 413, NULL, msg);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (r->body.len + *upload_data_size > (size_t)gw->cfg->gateway.max_body)
            r->too_big = 1;
        else
            evl_buf_put(&r->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->phase == GW_DONE) {
        evl_metric_observe(gw->m_wait,
                           (double)(evl_now_ms() - r->started_ms) / 1000.0);
        return respond_pref(
            gw, conn, r->route, r->status, r->resp, r->resp_len, r->location,
            r->async && (r->status == 202 || r->route == R_BATCH));
    }
    if (r->phase == GW_WAIT) /* not reached: a waiting request is suspended */
        return MHD_YES;
    conn_busy(gw, conn, 1);
    if (r->route == R_GET)
        return get_command(gw, r, url + 13, conn);
    return post_command(gw, r, conn);
}

/* The request of conn is read whole (busy 1), or answered (busy 0: the
 * next request's deadline starts now). */
static void conn_busy(evl_gateway *gw, struct MHD_Connection *conn, int busy)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (!ci || !ci->socket_context)
        return;
    pthread_mutex_lock(&gw->cmu);
    gw_conn *c = ci->socket_context;
    c->busy = busy;
    c->since_ms = evl_now_ms();
    pthread_mutex_unlock(&gw->cmu);
}

static void notify_connection(void *cls, struct MHD_Connection *conn,
                              void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
    evl_gateway *gw = cls;
    pthread_mutex_lock(&gw->cmu);
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        gw_conn *c = calloc(1, sizeof *c);
        if (!c)
            abort();
        c->conn = conn;
        c->since_ms = evl_now_ms();
        c->over = ++gw->nconns > gw->cfg->gateway.max_connections;
        c->next = gw->conns;
        if (gw->conns)
            gw->conns->prev = c;
        gw->conns = c;
        *socket_context = c;
    } else if (*socket_context) {
        gw_conn *c = *socket_context;
        if (c->prev)
            c->prev->next = c->next;
        else
            gw->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        gw->nconns--;
        free(c);
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&gw->cmu);
}

void gw_reap(evl_gateway *gw)
{
    static const char body[] = "{\"error\":\"the request did not arrive "
                               "within gateway.connection_timeout_s\"}";
    char msg[512];
    int len = snprintf(msg, sizeof msg,
                       "HTTP/1.1 408 Request Timeout\r\n"
                       "Content-Type: application/json\r\n"
                       "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                       sizeof body - 1, body);
    /* libmicrohttpd closes a connection idle for the timeout itself; one
     * still open a second later is trickling bytes */
    long long limit = gw->cfg->gateway.connection_timeout_s * 1000LL + 1000;
    long long now = evl_now_ms();
    int reaped = 0;
    pthread_mutex_lock(&gw->cmu);
    for (gw_conn *c = gw->conns; c; c = c->next) {
        if (c->busy || c->shut || now - c->since_ms < limit)
            continue;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) {
            /* no response is being written while a request is read; over
             * TLS a plain answer would be noise: just close */
            if (!gw->tls_cert)
                (void)!send(ci->connect_fd, msg, (size_t)len, MSG_NOSIGNAL);
            shutdown(ci->connect_fd, SHUT_RDWR);
        }
        c->shut = 1;
        reaped++;
    }
    pthread_mutex_unlock(&gw->cmu);
    for (int i = 0; i < reaped; i++)
        count(gw, R_OTHER, 408);
}

static void request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    evl_gateway *gw = cls;
    gw_req *r = *con_cls;
    (void)toe;
    conn_busy(gw, conn, 0);
    if (!r)
        return;
    pthread_mutex_lock(&gw->mu);
    gw_unwait(gw, r);
    pthread_mutex_unlock(&gw->mu);
    for (size_t i = 0; i < r->nslots; i++) {
        free(r->slots[i].body);
        free(r->slots[i].location);
    }
    if (r->slots != &r->one)
        free(r->slots);
    evl_buf_free(&r->body);
    free(r->resp);
    free(r);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    evl_log(EVL_LOG_DEBUG, "gateway http", "error", line, NULL);
}

/* ---- start and stop ------------------------------------------------------ */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    evl_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        evl_buf_put(&b, chunk, n);
    fclose(f);
    evl_buf_putc(&b, '\0');
    return b.data;
}

static void free_types(gw_types *ts)
{
    if (!ts)
        return;
    for (size_t i = 0; i < ts->n; i++) {
        free(ts->v[i].commands_topic);
        free(ts->v[i].results_topic);
        for (size_t j = 0; j < ts->v[i].ncmds; j++)
            free(ts->v[i].cmds[j]);
        free(ts->v[i].cmds);
    }
    free(ts->v);
    free(ts);
}

gw_types *gw_types_get(evl_gateway *gw)
{
    pthread_mutex_lock(&gw->tmu);
    gw_types *ts = gw->types;
    ts->refs++;
    pthread_mutex_unlock(&gw->tmu);
    return ts;
}

void gw_types_put(evl_gateway *gw, gw_types *ts)
{
    pthread_mutex_lock(&gw->tmu);
    int last = --ts->refs == 0;
    pthread_mutex_unlock(&gw->tmu);
    if (last)
        free_types(ts);
}

static const char *intern(evl_gateway *gw, const char *type)
{
    for (gw_name *n = gw->names; n; n = n->next)
        if (strcmp(n->s, type) == 0)
            return n->s;
    size_t len = strlen(type);
    gw_name *n = evl_xmalloc(sizeof *n + len + 1);
    memcpy(n->s, type, len + 1);
    n->next = gw->names;
    gw->names = n;
    return n->s;
}

/* The types of host (one reference: the gateway's). A type of old with
 * the same results topic keeps its assignment. */
static gw_types *make_types(evl_gateway *gw, const evl_luahost *host,
                            const gw_types *old)
{
    const evl_config *cfg = gw->cfg;
    char topic[512];
    gw_types *ts = evl_xmalloc(sizeof *ts);
    ts->n = evl_luahost_naggregates(host);
    ts->v = calloc(ts->n + 1, sizeof *ts->v);
    ts->refs = 1;
    if (!ts->v)
        abort();
    for (size_t i = 0; i < ts->n; i++) {
        const evl_luahost_aggregate *a = evl_luahost_aggregate_at(host, i);
        gw_type *t = &ts->v[i];
        t->type = intern(gw, a->type);
        evl_config_topic(cfg->cmd.commands_topic, a->type, topic, sizeof topic);
        t->commands_topic = evl_xstrdup(topic);
        evl_config_topic(cfg->cmd.results_topic, a->type, topic, sizeof topic);
        t->results_topic = evl_xstrdup(topic);
        t->cmds = calloc(a->ncommands + 1, sizeof *t->cmds);
        if (!t->cmds)
            abort();
        for (size_t j = 0; j < a->ncommands; j++)
            t->cmds[j] = evl_xstrdup(a->commands[j]);
        t->ncmds = a->ncommands;
        for (size_t j = 0; old && j < old->n; j++)
            if (strcmp(old->v[j].results_topic, t->results_topic) == 0)
                t->assigned =
                    __atomic_load_n(&old->v[j].assigned, __ATOMIC_ACQUIRE);
    }
    return ts;
}

int gw_reload(evl_gateway *gw)
{
    evl_luahost *fresh = NULL;
    char err[EVL_ERRLEN];
    if (evl_luahost_reload(gw->host, &fresh, NULL, err, sizeof err) != EVL_OK) {
        evl_log(EVL_LOG_ERROR, "gateway: reload failed; keeping the types",
                "error", err, NULL);
        evl_metrics_scripts("gateway", "failed", NULL, NULL);
        return 0;
    }
    gw_types *ts = make_types(gw, fresh, gw->types);
    evl_metrics_scripts("gateway", "applied", evl_luahost_hash(gw->host),
                        evl_luahost_hash(fresh));
    evl_luahost_free(gw->host);
    gw->host = fresh;
    pthread_mutex_lock(&gw->tmu);
    gw_types *old = gw->types;
    gw->types = ts;
    pthread_mutex_unlock(&gw->tmu);
    char n[16];
    snprintf(n, sizeof n, "%zu", ts->n);
    evl_log(EVL_LOG_INFO, "gateway: types reloaded", "aggregate_types", n,
            "scripts", evl_luahost_hash(fresh), NULL);
    gw_types_put(gw, old); /* freed when the last request lets it go */
    return 1;
}

/* The address of cfg->gateway.listen into *out and its port into *port,
 * after the checks evl_gateway_check documents. */
static evl_err check_config(const evl_config *cfg, struct sockaddr_storage *out,
                            long *port, char *err, size_t errlen)
{
    const char *listen = cfg->gateway.listen;
    char hostpart[256];
    /* HOST:PORT, or [IPv6]:PORT */
    const char *h = listen ? listen : "", *colon = strrchr(h, ':');
    size_t hlen = colon ? (size_t)(colon - h) : 0;
    int v6 = *h == '[';
    if (v6) {
        const char *close = strchr(h, ']');
        if (!close || close + 1 != colon)
            colon = NULL;
        h++;
        hlen = close ? (size_t)(close - h) : 0;
    }
    if (!colon || hlen == 0 || hlen >= sizeof hostpart)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "gateway.listen \"%s\": expected HOST:PORT or "
                          "[IPV6]:PORT",
                          listen ? listen : "");
    memcpy(hostpart, h, hlen);
    hostpart[hlen] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "gateway.listen \"%s\": bad port", listen);
    struct sockaddr_storage ss;
    struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sa6 = (struct sockaddr_in6 *)&ss;
    int loopback;
    memset(&ss, 0, sizeof ss);
    if (v6) {
        sa6->sin6_family = AF_INET6;
        sa6->sin6_port = htons((uint16_t)p);
        if (inet_pton(AF_INET6, hostpart, &sa6->sin6_addr) != 1)
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "gateway.listen \"%s\": [HOST] must be an "
                              "IPv6 address",
                              listen);
        loopback = IN6_IS_ADDR_LOOPBACK(&sa6->sin6_addr) ||
                   (IN6_IS_ADDR_V4MAPPED(&sa6->sin6_addr) &&
                    sa6->sin6_addr.s6_addr[12] == 127);
    } else {
        sa->sin_family = AF_INET;
        sa->sin_port = htons((uint16_t)p);
        if (inet_pton(AF_INET, hostpart, &sa->sin_addr) != 1)
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "gateway.listen \"%s\": HOST must be an IPv4 "
                              "address (or [IPV6])",
                              listen);
        loopback = (ntohl(sa->sin_addr.s_addr) >> 24) == 127;
    }
    if (cfg->gateway.ntokens == 0 && !loopback)
        return evl_seterr(
            err, errlen, EVL_EPERMANENT,
            "gateway.listen \"%s\": no gateway.tokens configured, and "
            "anyone who can reach this address could send commands as "
            "anyone: configure tokens, or listen on 127.0.0.1 or [::1]",
            listen);
    if (!cfg->gateway.tls_cert != !cfg->gateway.tls_key)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "gateway.tls_cert and gateway.tls_key go together");
    if (cfg->gateway.tls_cert &&
        MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "gateway.tls_cert: this libmicrohttpd has no TLS");

    *out = ss;
    *port = p;
    return EVL_OK;
}

evl_err evl_gateway_check(const evl_config *cfg, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    long p;
    return check_config(cfg, &ss, &p, err, errlen);
}

evl_err evl_gateway_start(const evl_config *cfg, const evl_luahost *host,
                          evl_gateway **out, int *port, char *err,
                          size_t errlen)
{
    const char *listen = cfg->gateway.listen;
    struct sockaddr_storage ss;
    long p;
    evl_err e = check_config(cfg, &ss, &p, err, errlen);
    if (e != EVL_OK)
        return e;
    e = EVL_EPERMANENT;

    evl_gateway *gw = calloc(1, sizeof *gw);
    if (!gw)
        abort();
    gw->cfg = cfg;
    pthread_mutex_init(&gw->mu, NULL);
    pthread_mutex_init(&gw->cmu, NULL);
    gw->nbuckets = (size_t)cfg->gateway.cache_size / 2 + 1024;
    gw->buckets = calloc(gw->nbuckets, sizeof *gw->buckets);
    if (!gw->buckets)
        abort();
    pthread_mutex_init(&gw->tmu, NULL);
    /* its own host, to reload from on SIGHUP as the pipelines do */
    if ((e = evl_luahost_again(host, &gw->host, NULL, err, errlen)))
        goto fail;
    gw->types = make_types(gw, gw->host, NULL);
    evl_metrics_scripts("gateway", NULL, NULL, evl_luahost_hash(gw->host));
    gw->reload_seen = evl_lifecycle_reloads();
    gw->m_waiters = evl_metrics_gauge(
        "evlua_gateway_waiters",
        "commands waiting for their result (a batch counts each)", NULL);
    gw->m_wait = evl_metrics_histogram(
        "evlua_gateway_wait_seconds",
        "from a request's arrival to its answer, for requests that waited "
        "for a result",
        NULL, NULL, 0);
    if ((e = gw_kafka_start(gw, err, errlen)))
        goto fail;

    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (cfg->gateway.tls_cert) {
        gw->tls_cert = slurp(cfg->gateway.tls_cert);
        gw->tls_key = slurp(cfg->gateway.tls_key);
        if (!gw->tls_cert || !gw->tls_key) {
            e = evl_seterr(err, errlen, EVL_EPERMANENT, "cannot read %s",
                           !gw->tls_cert ? cfg->gateway.tls_cert
                                         : cfg->gateway.tls_key);
            goto fail;
        }
        flags |= MHD_USE_TLS;
    }
    struct MHD_OptionItem tls[] = {
        {gw->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0,
         gw->tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, gw->tls_key},
        {MHD_OPTION_END, 0, NULL}};
    gw->daemon = MHD_start_daemon(
        flags, (uint16_t)p, NULL, NULL, answer, gw, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->gateway.threads,
        MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->gateway.connection_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->gateway.max_connections + GW_CONN_MARGIN,
        MHD_OPTION_NOTIFY_COMPLETED, request_done, gw,
        MHD_OPTION_NOTIFY_CONNECTION, notify_connection, gw, MHD_OPTION_ARRAY,
        tls, MHD_OPTION_END);
    if (!gw->daemon) {
        e = evl_seterr(err, errlen, EVL_EPERMANENT,
                       "gateway.listen \"%s\": cannot listen (in use, not "
                       "allowed, or a bad TLS certificate or key)",
                       listen);
        goto fail;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(gw->daemon, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : (int)p;
    *out = gw;
    return EVL_OK;
fail:
    evl_gateway_stop(gw);
    return e;
}

void evl_gateway_stop(evl_gateway *gw)
{
    if (!gw)
        return;
    /* new commands get 503 from now on: no thread would end their wait */
    pthread_mutex_lock(&gw->mu);
    gw->ready = 0;
    snprintf(gw->notready, sizeof gw->notready, "the gateway is stopping");
    pthread_mutex_unlock(&gw->mu);
    gw->quit = 1; /* before the Kafka thread could set ready again */
    gw_kafka_stop(gw);
    if (gw->daemon) {
        static const char msg[] = "{\"error\":\"the gateway is stopping\"}";
        pthread_mutex_lock(&gw->mu);
        while (gw->waiting) { /* its last slot's answer unlists it */
            gw_req *r = gw->waiting;
            for (size_t i = 0; i < r->nslots; i++)
                if (r->slots[i].entry)
                    gw_slot_answer(gw, &r->slots[i], 503, msg, sizeof msg - 1,
                                   NULL);
        }
        pthread_mutex_unlock(&gw->mu);
        MHD_quiesce_daemon(gw->daemon);
        /* let the resumed connections send their answers */
        for (int i = 0; i < 20; i++) {
            const union MHD_DaemonInfo *di = MHD_get_daemon_info(
                gw->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
            if (!di || di->num_connections == 0)
                break;
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
        MHD_stop_daemon(gw->daemon);
    }
    for (size_t i = 0; i < gw->nbuckets; i++)
        for (gw_entry *e = gw->buckets[i], *next; e; e = next) {
            next = e->hnext;
            free(e->id);
            free(e->body);
            free(e);
        }
    free(gw->buckets);
    if (gw->types)
        gw_types_put(gw, gw->types);
    for (gw_name *n = gw->names, *next; n; n = next) {
        next = n->next;
        free(n);
    }
    evl_luahost_free(gw->host);
    free(gw->tls_cert);
    free(gw->tls_key);
    pthread_mutex_destroy(&gw->mu);
    pthread_mutex_destroy(&gw->cmu);
    pthread_mutex_destroy(&gw->tmu);
    evl_metrics_ready("gateway", 0, "stopped");
    free(gw);
}
