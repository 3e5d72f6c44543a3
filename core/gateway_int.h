/*
 * gateway_int.h - what gateway.c (HTTP) and gw_kafka.c (Kafka, waiters,
 * outcome cache) share. Not for other modules: use gateway.h.
 *
 * One mutex, gw->mu, guards the cache and every request's waiting state.
 * A request has a slot per command (one, or a batch's); each slot that
 * waits is registered on its command's entry, and the connection is
 * suspended, under that mutex; the Kafka thread resolves the entry (or
 * the deadline passes, or the delivery thread learns that the command is
 * in Kafka) and answers the slot under it, and the request's last answer
 * resumes the connection, so a resume can never come before its
 * suspend.
 */
#ifndef EVL_GATEWAY_INT_H
#define EVL_GATEWAY_INT_H

#include <pthread.h>
#include <stddef.h>

#include <librdkafka/rdkafka.h>
#include <microhttpd.h>

#include "buf.h"
#include "gateway.h"
#include "metrics.h"

typedef struct gw_req gw_req;
typedef struct gw_slot gw_slot;

/* A command id the gateway has sent or answered: pending until its
 * result arrives, then its outcome (an HTTP status and JSON body). */
typedef struct gw_entry {
    char *id;
    const char *type; /* its aggregate type (gw->types' string) */
    int done;
    int acked; /* the command is in Kafka (delivery report, or its result) */
    int status;
    char *body;
    size_t len;
    gw_slot *waiters;
    struct gw_entry *hnext;         /* hash chain */
    struct gw_entry *older, *newer; /* age list, for eviction */
} gw_entry;

enum { GW_READ, GW_WAIT, GW_DONE };

/* One command a request answers: POST /v1/commands has one, POST
 * /v1/batch one per command of its body. */
struct gw_slot {
    gw_req *req;
    gw_entry *entry;               /* while waiting */
    struct gw_slot *wnext, *wprev; /* entry's waiters */
    int status;                    /* its answer (0: none yet) */
    char *body;                    /* its JSON object */
    size_t len;
    char *location; /* 202: where its outcome will be (else NULL) */
};

/* One HTTP request (libmicrohttpd's con_cls). */
struct gw_req {
    int route;
    int phase;
    evl_buf body;
    int too_big;
    const evl_gateway_token *tok;
    struct MHD_Connection *conn;
    long long started_ms, deadline_ms;
    gw_slot one;    /* a single command's slot */
    gw_slot *slots; /* &one, or a batch's */
    size_t nslots;
    size_t nwait;          /* slots still waiting */
    int listed;            /* on gw->waiting, for its deadline */
    gw_req *tnext, *tprev; /* gw->waiting */
    int async;             /* Prefer: respond-async honoured */
    int status;            /* GW_DONE: the answer */
    char *resp;
    size_t resp_len;
    char location[320];
};

/* An open HTTP connection, for the whole-request deadline (gw_reap). */
typedef struct gw_conn {
    struct MHD_Connection *conn;
    long long since_ms; /* accept, or the end of its last request */
    int busy;           /* a request is read whole: no deadline */
    int shut;
    int over; /* accepted past gateway.max_connections: answered 503 */
    struct gw_conn *prev, *next;
} gw_conn;

typedef struct gw_type {
    const char *type; /* interned (gw->names): lives as long as gw */
    char *commands_topic, *results_topic;
    char **cmds; /* command types it handles */
    size_t ncmds;
    int assigned; /* its results topic is assigned (atomic) */
} gw_type;

/* The aggregate types the gateway knows: replaced whole on SIGHUP. An
 * HTTP thread holds one with gw_types_get for a request; the Kafka
 * thread (the one that swaps them) reads gw->types as it is. */
typedef struct gw_types {
    gw_type *v;
    size_t n;
    int refs; /* gw->tmu */
} gw_types;

/* A type name, kept until the gateway stops: cache entries outlive the
 * set that named their type. */
typedef struct gw_name {
    struct gw_name *next;
    char s[];
} gw_name;

struct evl_gateway {
    const evl_config *cfg;
    gw_types *types;     /* gw->tmu; changed by the Kafka thread only */
    pthread_mutex_t tmu; /* guards types and the sets' refs */
    gw_name *names;      /* the Kafka thread's (and start's) */
    evl_luahost *host;   /* the gateway's own, reloaded on SIGHUP */
    unsigned reload_seen;
    struct MHD_Daemon *daemon;
    char *tls_cert, *tls_key;

    rd_kafka_t *producer, *consumer;
    pthread_t thread, dr_thread;
    int thread_started, dr_thread_started;
    volatile int quit;

    pthread_mutex_t mu;
    gw_entry **buckets;
    size_t nbuckets, nentries;
    gw_entry *oldest, *newest;
    gw_req *waiting;
    int nwaiting;
    int ready;
    char notready[256];

    evl_metric *m_waiters, *m_wait;
    /* evlua_gateway_requests_total by route and status, looked up once
     * each (the registry's lookup walks every metric under its lock) */
    evl_metric *counters[4][600];

    pthread_mutex_t cmu; /* guards conns and nconns */
    gw_conn *conns;
    int nconns;
};

/* gateway.c: answer 408 on, and shut down, every connection whose request
 * has not arrived whole within gateway.connection_timeout_s (a client
 * trickling bytes would otherwise hold it for ever: libmicrohttpd's own
 * timeout restarts on every byte). @locality the Kafka thread. */
void gw_reap(evl_gateway *gw);

/* gateway.c: the current set of types, held (gw_types_put it). */
gw_types *gw_types_get(evl_gateway *gw);
void gw_types_put(evl_gateway *gw, gw_types *ts);
/* Reload the scripts (after a SIGHUP) and swap in their types; a failed
 * reload keeps the old ones. Returns 1 when the set changed. @locality
 * the Kafka thread. */
int gw_reload(evl_gateway *gw);

/* gw_kafka.c */
evl_err gw_kafka_start(evl_gateway *gw, char *err, size_t errlen);
void gw_kafka_stop(evl_gateway *gw);
/* Produce cmd (len bytes) for command id to type's commands topic keyed
 * by aggregate_id. Returns 0, or -1 with the reason in err (queue full,
 * ...). @locality an HTTP thread, gw->mu held. */
int gw_produce(evl_gateway *gw, const gw_type *t, const char *aggregate_id,
               const char *id, const evl_buf *cmd, char *err, size_t errlen);
/* The entry of id, NULL when unknown. gw->mu held. */
gw_entry *gw_lookup(evl_gateway *gw, const char *id);
/* A new pending entry for id (evicting the oldest entries without
 * waiters past cache_size). gw->mu held. */
gw_entry *gw_insert(evl_gateway *gw, const char *id);
/* Drop e (a pending entry whose command was not sent). gw->mu held. */
void gw_remove(evl_gateway *gw, gw_entry *e);
/* Register slot s as a waiter of e until its request's deadline.
 * gw->mu held. */
void gw_wait(evl_gateway *gw, gw_entry *e, gw_slot *s);
/* Unlink every waiting slot of r from its entry, and r from the deadline
 * list. gw->mu held. */
void gw_unwait(evl_gateway *gw, gw_req *r);
/* Give slot s its answer (copied; location: a 202's, or NULL) and stop
 * its wait; the request's last answer completes it (gw_complete) when it
 * is suspended. gw->mu held. */
void gw_slot_answer(evl_gateway *gw, gw_slot *s, int status, const char *body,
                    size_t len, const char *location);
/* Every slot of r answered: build r's answer (a single command's own, or
 * a batch's list) into r->status/resp/location. gw->mu held. */
void gw_compose(gw_req *r);
/* The 202 answer of command id: its body into b, its Location into loc. */
void gw_pending(const char *id, evl_buf *b, char *loc, size_t loclen);

#endif
