/*
 * metrics.h - process-wide metrics, health and readiness, served over HTTP.
 *
 * Pipelines record what they do in counters, gauges and histograms, each
 * identified by a name and a label set written the Prometheus way
 * ("type=\"RegisterCustomer\",outcome=\"accepted\""). Looking one up
 * returns a stable handle to keep (lookups take a lock; updates are cheap).
 * evl_metrics_serve starts an HTTP endpoint (libmicrohttpd, its own
 * thread):
 *
 *   /metrics  Prometheus text format 0.0.4
 *   /healthz  200 {"status":"alive"} while the process runs
 *   /readyz   200 when every registered component is ready, else 503; the
 *             JSON body names each component and why it is not ready
 *
 * Does not: push metrics anywhere, persist them, know about Kafka or
 * PostgreSQL (pipelines report readiness themselves).
 *
 * @locality any thread.
 */
#ifndef EVL_METRICS_H
#define EVL_METRICS_H

#include <stddef.h>

#include "evl.h"

typedef struct evl_metric evl_metric;

/* Counter / gauge / histogram named name with labels (NULL or "" for
 * none), created on first use. help is used the first time a name is
 * seen. A histogram uses buckets (ascending, nbuckets of them; NULL: the
 * default latency buckets in seconds, 0.5 ms .. 10 s). Never NULL. */
evl_metric *evl_metrics_counter(const char *name, const char *help,
                                const char *labels);
evl_metric *evl_metrics_gauge(const char *name, const char *help,
                              const char *labels);
evl_metric *evl_metrics_histogram(const char *name, const char *help,
                                  const char *labels, const double *buckets,
                                  size_t nbuckets);

void evl_metric_add(evl_metric *m, double v);     /* counter, gauge */
void evl_metric_set(evl_metric *m, double v);     /* gauge */
void evl_metric_observe(evl_metric *m, double v); /* histogram */
double evl_metric_value(const evl_metric *m);     /* counter, gauge */

/* Label values are quoted and escaped by this helper:
 * evl_metrics_labels(buf, n, "type", t, "outcome", o, NULL) writes
 * type="t",outcome="o". Returns buf. */
char *evl_metrics_labels(char *buf, size_t n, ...);

/* Render every metric in the Prometheus text format into a malloc'd
 * string (free() it). */
char *evl_metrics_render(void);

/* Readiness of a component ("commands", "projection customer_profile").
 * A component that never reported is not listed; one that reported not
 * ready makes /readyz answer 503 with its reason. */
void evl_metrics_ready(const char *component, int ready, const char *reason);

/* Why the components still starting may wait (the brokers cannot be
 * reached: kafka.c reports each failed connection): a not-ready
 * component whose reason is "starting" shows "starting: WHY" while the
 * last report is less than EVL_METRICS_HINT_MS old. */
#define EVL_METRICS_HINT_MS 30000
void evl_metrics_ready_hint(const char *why);

/* Render the readiness JSON into buf; returns 1 when everything is ready. */
int evl_metrics_readiness(char *buf, size_t n);

/* Serve /metrics, /healthz, /readyz on listen ("127.0.0.1:9464", port 0
 * picks a free one). Returns EVL_OK and the bound port in *port, or
 * EVL_EPERMANENT with err. One server per process; stop it with
 * evl_metrics_stop (also safe when none runs). */
evl_err evl_metrics_serve(const char *listen, int *port, char *err,
                          size_t errlen);
void evl_metrics_stop(void);

/* A pipeline's script set: evlua_script_reloads_total{pipeline,outcome}
 * gains one when outcome is "applied" or "failed" (NULL: the initial load
 * counts nothing), and evlua_scripts_info{pipeline,hash} is 1 for the
 * current hash and 0 for the one it replaced. */
void evl_metrics_scripts(const char *pipeline, const char *outcome,
                         const char *old_hash, const char *new_hash);

/* Forget every metric and readiness entry (tests). */
void evl_metrics_reset(void);

#endif
