/*
 * proj_metrics.c - what a projector tells /metrics and /readyz: its
 * counters and histograms (published after each commit), the parked
 * aggregates (counted from the table), transient errors by SQLSTATE
 * class, and why it is not ready.
 */
#include "projector_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* ---- metrics and readiness ---------------------------------------------- */

/* Ready unless a topic is missing or a partition is halted (on_error =
 * halt). */
void proj_report_ready(projector *pj)
{
    if (pj->missing.n > 0) {
        evl_metrics_ready(pj->component, 0, pj->missing_why);
        return;
    }
    for (int p = 0; p < pj->nparts; p++) {
        const part *pt = &pj->parts[p];
        if (!pt->halted)
            continue;
        char why[768];
        snprintf(why, sizeof why, "partition %s[%d] halted at offset %lld: %s",
                 pt->topic, (int)pt->partition, (long long)pt->halt_offset,
                 pt->halt_error ? pt->halt_error : "");
        evl_metrics_ready(pj->component, 0, why);
        return;
    }
    evl_metrics_ready(pj->component, 1, NULL);
}

void proj_metrics_init(projector *pj)
{
    static const char *const outcomes[5] = {"consumed", "skipped", "applied",
                                            "replayed", "parked"};
    char labels[256];
    for (int i = 0; i < 5; i++) {
        evl_metrics_labels(labels, sizeof labels, "projection", pj->name,
                           "outcome", outcomes[i], NULL);
        pj->m_events[i] = evl_metrics_counter(
            "evlua_projection_events_total",
            "Events seen by a projection, by outcome", labels);
    }
    evl_metrics_labels(labels, sizeof labels, "projection", pj->name, NULL);
    pj->m_batches =
        evl_metrics_counter("evlua_projection_batches_total",
                            "Batches committed in PostgreSQL", labels);
    if (pj->ninstances > 1)
        snprintf(pj->component, sizeof pj->component, "projection %s#%d",
                 pj->name, pj->instance + 1);
    else
        snprintf(pj->component, sizeof pj->component, "projection %s",
                 pj->name);
    evl_metrics_labels(labels, sizeof labels, "pipeline", pj->component, NULL);
    pj->m_lua_memory = evl_metrics_gauge(
        "evlua_lua_memory_bytes", "Heap of a pipeline's Lua state", labels);
    pj->m_lua_seconds = evl_metrics_counter(
        "evlua_lua_handler_seconds_total",
        "Time spent in Lua handlers (aggregate handle, projection handlers)",
        labels);
    evl_metrics_labels(labels, sizeof labels, "projection", pj->name, NULL);
    static const double sizes[] = {1,   2,   5,    10,   50,
                                   100, 500, 1000, 5000, 10000};
    pj->m_batch_size = evl_metrics_histogram(
        "evlua_projection_batch_size", "Events per projection batch", labels,
        sizes, sizeof sizes / sizeof sizes[0]);
    pj->m_batch_seconds = evl_metrics_histogram(
        "evlua_projection_batch_seconds",
        "Time from a batch being collected to its PostgreSQL commit", labels,
        NULL, 0);
    pj->m_parked = evl_metrics_gauge(
        "evlua_parked_aggregates",
        "Aggregates with events waiting in evlua_parked", labels);
    evl_metrics_ready(pj->component, 0, "starting");
}

/* Add what happened since the last call to the counters. */
void proj_metrics_publish(projector *pj)
{
    const evl_projector_stats *s = &pj->stats;
    evl_projector_stats *p = &pj->published;
    long long now[5] = {s->messages, s->skipped, s->applied, s->replayed,
                        s->parked};
    long long was[5] = {p->messages, p->skipped, p->applied, p->replayed,
                        p->parked};
    for (int i = 0; i < 5; i++)
        if (now[i] > was[i])
            evl_metric_add(pj->m_events[i], (double)(now[i] - was[i]));
    if (s->batches > p->batches)
        evl_metric_add(pj->m_batches, (double)(s->batches - p->batches));
    *p = *s;
    if (pj->host)
        evl_metric_set(pj->m_lua_memory, (double)evl_luahost_memory(pj->host));
    evl_metric_add(pj->m_lua_seconds, pj->lua_s);
    pj->lua_s = 0;
}

/* evlua_parked_aggregates from the table (parked retry and drop run in
 * other processes): after a batch that parked, and every 10 s. Only with
 * nothing in flight on the connection. */
void proj_count_parked(projector *pj)
{
    double now = proj_now_s();
    if (!pj->parked_dirty && now - pj->parked_counted < 10)
        return;
    char err[EVL_ERRLEN];
    const char *vals[1] = {pj->name};
    PGresult *res = NULL;
    if (!evl_pg_ok(pj->pg) ||
        evl_pg_query(pj->pg,
                     "SELECT count(*) FROM evlua_checkpoints "
                     "WHERE projection = $1 AND parked",
                     1, vals, &res, err, sizeof err) != EVL_OK)
        return; /* the next batch finds out; nothing depends on it */
    pj->parked_dirty = 0;
    pj->parked_counted = now;
    evl_metric_set(pj->m_parked, strtod(PQgetvalue(res, 0, 0), NULL));
    PQclear(res);
}

/* A transient failure: count it by SQLSTATE class (from the "[XXXXX]" the
 * pg module appends; "connection" when there is none) and say why the
 * projection is not ready. */
static void metrics_retry(projector *pj, const char *reason)
{
    char cls[16] = "connection", labels[256];
    const char *b = reason ? strrchr(reason, '[') : NULL;
    if (b && strlen(b) >= 7 && b[6] == ']')
        snprintf(cls, sizeof cls, "%.2s", b + 1);
    evl_metrics_labels(labels, sizeof labels, "projection", pj->name,
                       "sqlstate_class", cls, NULL);
    evl_metric_add(evl_metrics_counter("evlua_db_retries_total",
                                       "Transient database errors retried",
                                       labels),
                   1);
    evl_metrics_ready(pj->component, 0, reason ? reason : "retrying");
}

void proj_log_retry(projector *pj, const char *msg, const char *reason,
                    int attempt, long ms)
{
    metrics_retry(pj, reason);
    char n[24], d[24];
    snprintf(n, sizeof n, "%d", attempt + 1);
    snprintf(d, sizeof d, "%ld", ms);
    evl_log(EVL_LOG_WARN, msg, "projection", pj->name, "reason", reason,
            "attempt", n, "delay_ms", d, NULL);
}
