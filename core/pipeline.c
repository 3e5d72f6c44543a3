/*
 * pipeline.c - the loop shape pipelines share (pipeline.h).
 *
 * The loop is Redis's aeMain: a few lines that call the pipeline's steps.
 * What is here besides is what every consumer-driven pipeline did on its
 * own: batch polling with an adaptive close, the reload check between
 * batches, readiness, and the log of a wait for partitions.
 */
#include "pipeline.h"

#include <time.h>

#include "lifecycle.h"
#include "luahost.h"
#include "metrics.h"

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void evl_pipeline_open(evl_pipeline *p, const char *component,
                       const char *group, int batch_size, int linger_ms)
{
    p->component = component;
    p->group = group;
    p->batch_size = batch_size;
    p->linger_ms = linger_ms;
    p->wait.since = 0;
    p->wait.logged = 0;
    p->collect_ms = 0;
    evl_pipeline_ready(p, 0, "starting");
    /* the SIGHUPs before now are in the pipeline's scripts already */
    p->seen_hup = 0;
    evl_lifecycle_reload_requested(&p->seen_hup);
}

evl_pipeline_outcome evl_pipeline_loop(evl_pipeline *p,
                                       const evl_pipeline_ops *ops, void *ctx)
{
    long long last_tick = now_ms();
    while (!evl_lifecycle_stopping()) {
        if (ops->reload && (!ops->idle || ops->idle(ctx)) &&
            evl_pipeline_reload_take(p))
            ops->reload(ctx);
        evl_pipeline_outcome o = ops->turn(ctx);
        if (o != EVL_PIPELINE_NEXT)
            return o;
        if (ops->tick && now_ms() - last_tick > EVL_PIPELINE_TICK_MS) {
            last_tick = now_ms();
            ops->tick(ctx);
        }
    }
    return EVL_PIPELINE_DONE;
}

void evl_pipeline_close(evl_pipeline *p, evl_pipeline_outcome o)
{
    evl_pipeline_ready(p, 0, o == EVL_PIPELINE_DONE ? "stopped" : "failed");
}

void evl_pipeline_ready(const evl_pipeline *p, int ready, const char *why)
{
    evl_metrics_ready(p->component, ready, why);
}

int evl_pipeline_reload_pending(const evl_pipeline *p)
{
    unsigned peek = p->seen_hup;
    return evl_lifecycle_reload_requested(&peek);
}

int evl_pipeline_reload_take(evl_pipeline *p)
{
    return evl_lifecycle_reload_requested(&p->seen_hup);
}

void evl_pipeline_waiting(evl_pipeline *p)
{
    evl_kafka_wait_begin(&p->wait);
}

void evl_pipeline_assigned(evl_pipeline *p)
{
    evl_kafka_wait_end(&p->wait);
}

void evl_pipeline_wait_check(evl_pipeline *p)
{
    evl_kafka_wait_check(&p->wait, p->consumer, p->group);
}

void evl_pipeline_collect(evl_pipeline *p, const evl_pipeline_sink *sink,
                          void *ctx)
{
    long long t0 = now_ms(), deadline = 0;
    while ((int)sink->pending(ctx) < p->batch_size && !sink->halted(ctx) &&
           !(sink->full && sink->full(ctx))) {
        int timeout;
        rd_kafka_message_t *m;
        if (sink->pending(ctx) == 0) {
            /* in flight: the pipeline takes in messages while it waits */
            if (evl_lifecycle_stopping() || sink->busy(ctx))
                break;
            timeout = 100;
        } else {
            long long left = deadline - now_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        m = rd_kafka_consumer_poll(p->consumer, timeout);
        if (!m) {
            if (sink->pending(ctx) == 0 || timeout == 0)
                break; /* idle, or nothing more queued */
            continue;
        }
        if (!sink->take(ctx, m))
            continue;
        if (sink->pending(ctx) == 1)
            deadline = now_ms() + p->linger_ms;
    }
    p->collect_ms = now_ms() - t0;
}
