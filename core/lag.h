/*
 * lag.h - how far behind each consumer group is, measured over EVERY
 * partition of the topics it reads, whatever the assignment.
 *
 * A thread of its own (started by `evlua run`) wakes every
 * metrics.lag_interval_ms (5 s by default), and at once when a pipeline's
 * assignment changes (evl_lag_held), and, for each watched group:
 *
 *   - reads where the group is: a projection's offsets in evlua_offsets
 *     (the truth for a projection: the Kafka group offsets trail them),
 *     the command processor's committed group offsets (AdminAPI
 *     ListConsumerGroupOffsets); a partition with none starts at its
 *     beginning (as the pipelines do);
 *   - reads each partition's high watermark (rd_kafka_query_watermark_
 *     offsets) and sets evlua_consumer_lag{group,topic,partition} to the
 *     difference;
 *   - reads the record at that offset with an assign-only read_committed
 *     consumer and sets evlua_consumer_lag_seconds{group} to now minus
 *     the oldest such record's timestamp (0 when nothing waits).
 *
 * Transaction markers: the high watermark counts the commit/abort marker
 * every transaction leaves in a partition, and librdkafka 2.0.2 gives no
 * last stable offset for a partition outside a consumer's assignment
 * (2.8.0's rd_kafka_ListOffsets does; unused while evlua also builds with
 * 2.0.2). The
 * probe corrects what it can: a partition whose gap is at most
 * EVL_LAG_EXACT records is read to its end and counted exactly (data
 * records only); a gap with no data record at all (the marker a caught-up
 * partition ends with, aborted records, an open transaction) counts 0.
 * A larger gap counts hi - offset, overcounting one marker per
 * transaction in it.
 *
 * Readiness: a group is "not ready" (component "lag GROUP") when this
 * process holds none of its partitions (evl_lag_held), data waits, the
 * oldest waiting record is older than two periods, and the group's
 * offsets did not move for two periods: nobody consumes it.
 * A standby instance whose partitions another instance consumes stays
 * ready.
 *
 * Does not: follow script reloads (the groups and topics are those of the
 * scripts loaded at start), create topics, commit anything (its consumer
 * never joins a group).
 *
 * Uses kafka.h (its own client), pg.h (its own connection, when a
 * projection is watched), metrics.h.
 */
#ifndef EVL_LAG_H
#define EVL_LAG_H

#include <stddef.h>

#include "config.h"
#include "evl.h"

/* Partitions whose gap is at most this many records are counted exactly. */
#define EVL_LAG_EXACT 1000

typedef struct evl_lag evl_lag;

/* A stopped measurer for cfg (which must outlive it). Never NULL; free
 * with evl_lag_free. @locality the caller's thread. */
evl_lag *evl_lag_new(const evl_config *cfg);

/* Watch group reading topics (n of them; copied). projection: the
 * projection whose evlua_offsets rows are the group's position, or NULL
 * for a group whose position is its committed Kafka offsets. Before
 * evl_lag_start, or after it for a pipeline started later (measured from
 * the next period on). @locality any thread. */
void evl_lag_watch(evl_lag *lag, const char *group, const char *projection,
                   const char *const *topics, size_t n);

/* As evl_lag_watch, the position read from schema.evlua_offsets (schema:
 * a lower-case identifier, a shadow rebuild's; NULL: the search_path's). */
void evl_lag_watch_in(evl_lag *lag, const char *group, const char *projection,
                      const char *schema, const char *const *topics, size_t n);

/* Create the clients and start the thread. Returns EVL_OK, or
 * EVL_EPERMANENT with err (a bad kafka property, no memory for a
 * thread). A database that cannot be reached now is retried each period.
 */
evl_err evl_lag_start(evl_lag *lag, char *err, size_t errlen);

/* Stop the thread (within one probe, at most about a second and the
 * requests in flight), release everything. Accepts NULL. */
void evl_lag_free(evl_lag *lag);

/* Consumer `consumer` (any unique pointer: its rd_kafka_t) of group now
 * holds n partitions (0 after a revocation). Pipelines call it from their
 * rebalance callbacks. @locality any thread. */
void evl_lag_held(const char *group, const void *consumer, int n);

#endif
