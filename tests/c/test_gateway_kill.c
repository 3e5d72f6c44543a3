/*
 * test_gateway_kill.c - `evlua run` killed with -9 while requests wait at
 * `evlua gateway` (the real broker): the waiting client gets 202 or the
 * answer; while no processor runs, waiters past gateway.max_waiters are
 * refused with 503 and the others keep waiting through the restart and
 * get their results; a retry of the first id after the restart gets the
 * one true outcome, and every command's events are recorded once. A
 * request still waiting when the gateway stops gets 503.
 */
#include "gwtest.h"

static ct t;
static int port;

typedef struct req {
    pthread_t th;
    char id[32], query[64];
    gw_resp r;
} req;

static void *req_main(void *arg)
{
    req *q = arg;
    char body[512], path[128];
    snprintf(body, sizeof body,
             "{\"id\":\"%s\",\"aggregate_type\":\"customer\","
             "\"aggregate_id\":\"c-%s\",\"type\":\"RegisterCustomer\","
             "\"data\":{\"name\":\"N %s\",\"email\":\"n@example.org\"}}",
             q->id, q->id, q->id);
    snprintf(path, sizeof path, "/v1/commands%s", q->query);
    gw_http(&t, port, "POST", path, body, NULL, 120, &q->r);
    return NULL;
}

static void start(req *q, const char *id, const char *query)
{
    snprintf(q->id, sizeof q->id, "%s", id);
    snprintf(q->query, sizeof q->query, "%s", query);
    pthread_create(&q->th, NULL, req_main, q);
}

int main(void)
{
    char gwcfg[512], events[256];
    int mport = th_free_port(), rport = th_free_port();
    port = th_free_port();
    ct_init(&t, "gwkill");
    ct_copy_aggregate(&t, "customer.lua");
    ct_topic(&t, "customer", "events", events, sizeof events);
    snprintf(gwcfg, sizeof gwcfg,
             "listen = '127.0.0.1:%d', timeout_ms = 90000, max_waiters = 3",
             port);
    gw_config(&t, "g", "g", mport, gwcfg);
    gw_config(&t, "r", "r", rport, "");
    pid_t rpid = ct_start(&t, "r", "r.log", NULL);
    pid_t gpid = gw_start(&t, "g", "g.log");
    CHECK(gw_wait_ready(mport, 90), "the gateway becomes ready");
    req warm;
    start(&warm, "warm", "");
    pthread_join(warm.th, NULL);
    CHECK_INT(warm.r.status, 200, "a first command answers 200");
    gw_resp_free(&warm.r);

    /* kill -9 the processor while a request waits */
    req a;
    start(&a, "k-1", "?timeout_ms=3000");
    th_sleep_ms(20);
    kill(rpid, SIGKILL);
    th_wait(rpid, 30);
    pthread_join(a.th, NULL);
    CHECK(a.r.status == 202 || a.r.status == 200,
          "the waiting client gets 202 or the answer");
    fprintf(stderr, "request k-1 during the kill: %d %s\n", a.r.status,
            a.r.body);
    gw_resp_free(&a.r);

    /* no processor: three wait, the fourth is refused */
    req w[3];
    char id[16];
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "w-%d", i);
        start(&w[i], id, "");
    }
    th_sleep_ms(1500);
    req over;
    double t_over = th_now();
    start(&over, "w-over", "");
    pthread_join(over.th, NULL);
    fprintf(stderr, "w-over: %d after %.1f s\n", over.r.status,
            th_now() - t_over);
    CHECK_INT(over.r.status, 503, "past max_waiters: 503");
    CHECK_HAS(gw_str(&over.r, "error"), "gateway.max_waiters",
              "naming the limit");
    gw_resp_free(&over.r);

    /* the processor comes back: the waiters get their results */
    rpid = ct_start(&t, "r", "r2.log", NULL);
    for (int i = 0; i < 3; i++) {
        pthread_join(w[i].th, NULL);
        CHECK_INT(w[i].r.status, 200,
                  "a request that waited through the restart gets 200");
        gw_resp_free(&w[i].r);
    }

    /* the retry of k-1: the one true outcome */
    req b;
    start(&b, "k-1", "");
    pthread_join(b.th, NULL);
    CHECK_INT(b.r.status, 200, "the retry after the restart: 200");
    CHECK_STR(gw_str(&b.r, "status"), "accepted", "accepted once");
    CHECK_INT(gw_int(&b.r, "version"), 1, "at version 1");
    gw_resp_free(&b.r);

    /* every command's event once */
    th_recs ev = {0};
    ct_read_all(&t, events, "read_committed", &ev);
    static const char *ids[] = {"warm", "k-1", "w-0", "w-1", "w-2"};
    for (size_t k = 0; k < 5; k++) {
        int n = 0;
        for (size_t i = 0; i < ev.n; i++)
            n += th_str(&ev.v[i], "causation_id") &&
                 strcmp(th_str(&ev.v[i], "causation_id"), ids[k]) == 0;
        char what[128];
        snprintf(what, sizeof what, "command %s recorded its event once",
                 ids[k]);
        CHECK_INT(n, 1, what);
    }
    CHECK_INT(ev.n, 5, "five events in all");
    th_recs_free(&ev);

    /* stopping the gateway answers whoever still waits */
    CHECK_INT(th_stop(rpid, SIGTERM, 30), 0, "evlua run stops with 0");
    req last;
    start(&last, "last", "");
    th_sleep_ms(1500);
    CHECK_INT(th_stop(gpid, SIGTERM, 30), 0, "evlua gateway stops with 0");
    pthread_join(last.th, NULL);
    CHECK_INT(last.r.status, 503, "a request waiting at the stop: 503");
    CHECK_HAS(gw_str(&last.r, "error"), "stopping", "saying the gateway stops");
    gw_resp_free(&last.r);
    if (check_failures_) {
        ct_dump_log(&t, "g.log");
        ct_dump_log(&t, "r2.log");
    }
    return check_done();
}
