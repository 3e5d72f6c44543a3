/*
 * gateway.h - the command gateway: an authenticated HTTP API that sends a
 * command to its aggregate's commands topic and answers with its result
 * (docs/DESIGN.md "Command gateway", docs/gateway.openapi.json).
 *
 *   POST /v1/commands       the command JSON; waits for its result:
 *                           200 accepted, 409 rejected, 500 failed,
 *                           202 + Location when gateway.timeout_ms passes
 *                           (or at once with ?timeout_ms=0, Prefer:
 *                           respond-async), always only once Kafka has
 *                           acknowledged the command
 *   GET  /v1/commands/ID    the outcome from a bounded cache (404: unknown)
 *
 * The HTTP side (gateway.c: routes, validation, bearer tokens, limits)
 * runs on libmicrohttpd's threads; the Kafka side (gw_kafka.c: an
 * idempotent murmur2 producer, a read_committed consumer of every results
 * topic, the waiters and the outcome cache) on two threads of its own
 * (results and deadlines; delivery reports).
 *
 * Does not: decide commands (evlua run's command side does), persist
 * outcomes (the cache dies with the process; the results topics are the
 * record), rate-limit per client.
 *
 * @locality start and stop from one thread (evlua run's or evlua
 * gateway's main thread).
 */
#ifndef EVL_GATEWAY_H
#define EVL_GATEWAY_H

#include "config.h"
#include "evl.h"
#include "luahost.h"

typedef struct evl_gateway evl_gateway;

/* The checks of cfg's gateway settings evl_gateway_start makes before it
 * binds anything, for `evlua check`: gateway.listen is HOST:PORT or
 * [IPV6]:PORT with a numeric address, tokens are configured unless the
 * address is a loopback one, tls_cert and tls_key go together and this
 * libmicrohttpd has TLS when they are set. Returns EVL_OK, or
 * EVL_EPERMANENT with the reason (naming the key) in err. Binds nothing,
 * starts nothing; cfg->gateway.listen must be set.
 * @locality any thread. */
evl_err evl_gateway_check(const evl_config *cfg, char *err, size_t errlen);

/* Start the gateway on cfg->gateway.listen for the aggregate types (and
 * their command types) of host, which may be freed afterwards; cfg must
 * outlive the gateway. On each SIGHUP (evl_lifecycle_install_reload) the
 * gateway reloads the scripts on its Kafka thread and swaps in their
 * types; requests in flight keep the set they started with; a type it
 * adds answers 503 until its results topic is assigned. Refuses (EVL_EPERMANENT
 * with the reason in err) when no token is configured and the address is not a
 * loopback one, when TLS is asked for and libmicrohttpd lacks it, when the
 * address cannot be bound. Kafka is reached in the background: until the
 * results topics are assigned the gateway answers 503 and readiness says why.
 * On success *out (stop it with evl_gateway_stop) and the bound port in
 * *port. */
evl_err evl_gateway_start(const evl_config *cfg, const evl_luahost *host,
                          evl_gateway **out, int *port, char *err,
                          size_t errlen);

/* Answer every waiting request with 503, stop both sides, free. Accepts
 * NULL. */
void evl_gateway_stop(evl_gateway *gw);

#endif
