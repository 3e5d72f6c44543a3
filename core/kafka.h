/*
 * kafka.h - what evlua's pipelines need from librdkafka beyond its own API:
 * client configuration from evl_config, error classes, and topics.
 *
 *   - Clients: evl_kafka_consumer_new and evl_kafka_producer_new build
 *     every pipeline's clients (below) from the configuration.
 *   - Configuration: the `kafka` table of the config is passed through
 *     verbatim to every client; each pipeline adds the properties its
 *     guarantees rest on (isolation.level, transactional.id, ...), which
 *     win over the table (a conflicting value is logged and overridden),
 *     and defaults the table may change. librdkafka's log lines and
 *     client errors go through log.h; a failed broker connection is
 *     logged once per text for every client of the process within 30 s
 *     (with how many were left out) and named by the readiness of what
 *     is still starting (metrics.h, evl_metrics_ready_hint).
 *   - Errors: rd_kafka_error_t is classified by its flags, in the order
 *     DESIGN.md fixes (fatal, then txn_requires_abort, then retriable):
 *       fatal              -> EVL_EFATAL      (fenced: log and exit)
 *       txn_requires_abort -> EVL_EPERMANENT  (this transaction is lost:
 *                                             abort, rewind, try again)
 *       retriable          -> EVL_ETRANSIENT  (repeat the same call)
 *       anything else      -> EVL_EFATAL      (a state or usage error: a bug
 *                                             or a broken cluster)
 *   - Topics: partition counts from the cluster metadata, creation with the
 *     admin API (the broker's replication factor; optionally compacted), and
 *     the murmur2 partition of a key (Java's default partitioner, which
 *     evlua's producers use through partitioner=murmur2_random).
 *
 * Does not: own clients beyond the call, consume, produce, retry.
 *
 * @locality any thread; each function works on the handles it is given.
 */
#ifndef EVL_KAFKA_H
#define EVL_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "evl.h"

/* Build a client configuration: `defaults` (NULL-terminated key, value
 * pairs; may be NULL), then every property of cfg->kafka, then `required`
 * (same form; may be NULL). A required property the config sets to another
 * value is logged at warn level and overridden. Installs a log callback
 * (librdkafka's lines become log.h lines with client=NAME) and an error
 * callback (logged at warn; fatal ones at error).
 * On success returns EVL_OK and *out (owned: pass it to rd_kafka_new, or
 * rd_kafka_conf_destroy it). On an invalid property returns
 * EVL_EPERMANENT with "kafka property 'k': librdkafka's message" in err. */
evl_err evl_kafka_conf_new(const evl_config *cfg, const char *const *defaults,
                           const char *const *required, rd_kafka_conf_t **out,
                           char *err, size_t errlen);

/* ---- building clients --------------------------------------------------
 *
 * The one way a pipeline builds its Kafka clients (the command side, the
 * projector, the lag thread, the coming reactors): evl_kafka_conf_new
 * with the properties the client's role rests on, its callbacks, then
 * rd_kafka_new. Zero-initialize the options and set what applies.
 */
typedef struct evl_kafka_client_opts {
    const char *name;      /* names the client in err ("consumer") */
    const char *client_id; /* client.id (required); NULL: librdkafka's */
    /* consumers */
    const char *group_id;  /* group.id (required; also for a consumer
                            * assigned by hand, which never joins it) */
    const char *isolation; /* isolation.level; NULL: "read_committed" */
    int partition_eof;     /* enable.partition.eof */
    int reader;            /* assigned by hand and read to the end (state
                            * restore, lag probes): enable.partition.eof and
                            * auto.offset.reset=earliest, both required */
    const char *assignor;  /* the default partition.assignment.strategy,
                            * through evl_kafka_assignor (the config may
                            * name other eager ones); NULL: not set (a
                            * consumer assigned by hand) */
    const char *instance;  /* static membership: the suffix of
                            * evl_kafka_instance_id ("cmd"); NULL or no
                            * `instance` in the config: dynamic */
    /* producers */
    const char *transactional_id; /* NULL: not transactional; else also
                                   * enable.idempotence and acks=all */
    /* both */
    const char *const *defaults; /* key, value pairs, NULL-terminated:
                                  * the config may change them; may be NULL */
    const char *const *required; /* the same, winning over the config:
                                  * set after the role's own; may be NULL */
    void *opaque;                /* rd_kafka_conf_set_opaque */
    /* callbacks, each set when not NULL */
    void (*rebalance_cb)(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque);
    void (*offset_commit_cb)(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets,
                             void *opaque);
    int (*stats_cb)(rd_kafka_t *rk, char *json, size_t len, void *opaque);
    void (*dr_msg_cb)(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                      void *opaque);
} evl_kafka_client_opts;

/* A consumer: evl_kafka_conf_new with defaults o->defaults and, required,
 * group.id, isolation.level, enable.auto.commit=false,
 * enable.auto.offset.store=false, enable.partition.eof,
 * partition.assignment.strategy (o->assignor), group.instance.id
 * (o->instance), auto.offset.reset=earliest (o->reader), o->required,
 * client.id; its callbacks; rd_kafka_new;
 * rd_kafka_poll_set_consumer (rebalances and messages come from
 * rd_kafka_consumer_poll). On success returns EVL_OK and *out (owned:
 * rd_kafka_consumer_close, then rd_kafka_destroy). Else EVL_EPERMANENT
 * with "NAME: librdkafka's message" or evl_kafka_conf_new's in err. */
evl_err evl_kafka_consumer_new(const evl_config *cfg,
                               const evl_kafka_client_opts *o, rd_kafka_t **out,
                               char *err, size_t errlen);

/* A producer: the same with, required, transactional.id,
 * enable.idempotence=true and acks=all (when o->transactional_id is
 * set), o->required, client.id. The consumer fields are ignored. Not yet
 * initialized for transactions (rd_kafka_init_transactions is the
 * caller's: it talks to the broker). Returns as evl_kafka_consumer_new;
 * *out is freed with rd_kafka_destroy. */
evl_err evl_kafka_producer_new(const evl_config *cfg,
                               const evl_kafka_client_opts *o, rd_kafka_t **out,
                               char *err, size_t errlen);

/* The defaults and required properties of a transactional producer that
 * produces a batch's records all at once right before its commit (the
 * command side's and the reactors'):
 *   retry.backoff.ms 20: right after a commit the coordinator may still be
 *     writing the markers and answer the next AddPartitionsToTxn with
 *     CONCURRENT_TRANSACTIONS; librdkafka waits retry.backoff.ms (100 ms
 *     by default) before asking again, which caps small transactions at
 *     ~15/s (the Java producer retries those after 20 ms);
 *   linger.ms 0: the commit's flush would otherwise wait out the linger;
 *   transaction.timeout.ms 10000: a stalled instance's transaction ends
 *     soon;
 *   partitioner murmur2_random (required): the one `evlua send` and the
 *     Java clients use, so an aggregate's commands share one partition. */
extern const char *const evl_kafka_batch_txn_defaults[];
extern const char *const evl_kafka_batch_txn_required[];

/* rk's message.max.bytes: the largest record it produces (librdkafka's
 * default, 1,000,000, when unreadable or below 4 KiB). */
size_t evl_kafka_max_message(rd_kafka_t *rk);

/* The value of property key of rk's configuration into buf ("" when unset
 * or unknown). */
const char *evl_kafka_conf_value(rd_kafka_t *rk, const char *key, char *buf,
                                 size_t n);

/* rd_kafka_conf_set with evlua's error convention (EVL_EPERMANENT). */
evl_err evl_kafka_conf_set(rd_kafka_conf_t *conf, const char *key,
                           const char *value, char *err, size_t errlen);

/* The class of error (see above); EVL_OK for NULL. Does not destroy it. */
evl_err evl_kafka_classify(const rd_kafka_error_t *error);

/* Classify error, write "CALL: message (NAME)" into err, destroy error.
 * Returns EVL_OK (and writes nothing) when error is NULL. */
evl_err evl_kafka_error(rd_kafka_error_t *error, const char *call, char *err,
                        size_t errlen);

/* Partition count of topic from the cluster's metadata into *count (0 when
 * the topic does not exist). Asks for all topics, so a broker with
 * auto.create.topics.enable does not create it by being asked. Returns
 * EVL_OK, or EVL_ETRANSIENT when the cluster did not answer within
 * timeout_ms (message in err). */
evl_err evl_kafka_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms,
                             int *count, char *err, size_t errlen);

typedef struct evl_kafka_topic_spec {
    const char *name;
    int partitions;
    int compacted; /* cleanup.policy=compact */
} evl_kafka_topic_spec;

/* Create the n topics with the broker's default replication factor. A
 * topic that already exists is not an error (another instance may have
 * won the race; the caller checks partition counts afterwards). Returns
 * EVL_OK, EVL_ETRANSIENT on a timeout, else EVL_EPERMANENT naming the
 * topic and the broker's reason. */
evl_err evl_kafka_create_topics(rd_kafka_t *rk,
                                const evl_kafka_topic_spec *specs, size_t n,
                                int timeout_ms, char *err, size_t errlen);

/* Make sure topic spec->name exists: when the cluster's metadata lacks it
 * and create is set, create it (evl_kafka_create_topics: another client
 * creating it at the same time is fine) and wait until the metadata shows
 * it. *count is its partition count, 0 when it does not exist (and create
 * was not set); *created is 1 when this call created it (or raced with
 * another creator). Returns EVL_OK, EVL_ETRANSIENT when the cluster did
 * not answer within timeout_ms (or the new topic did not show in time),
 * else EVL_EPERMANENT naming the topic and the broker's reason. */
evl_err evl_kafka_ensure_topic(rd_kafka_t *rk, const evl_kafka_topic_spec *spec,
                               int create, int timeout_ms, int *count,
                               int *created, char *err, size_t errlen);

/* ---- consumer groups -------------------------------------------------
 *
 * Static membership (Kafka's group.instance.id, KIP-345): with the config
 * key `instance` set, every consumer `evlua run` puts in a group gets a
 * group.instance.id derived from it, unique per consumer in the process
 * and stable across restarts. A restarted instance then takes its old
 * members' places, and their partitions, at once instead of after their
 * session timeout. The other side of it: a static member does not leave
 * its group on close (librdkafka 2.0.2 sends no LeaveGroup for one), so
 * after a clean stop its partitions wait for session.timeout.ms unless it
 * comes back; and two processes with one `instance` fence each other
 * (FENCED_INSTANCE_ID, fatal for the older consumer).
 */

/* The partition.assignment.strategy a pipeline's consumer uses: the
 * config's when it names only eager assignors (range, roundrobin, in any
 * order), else dflt. Cooperative assignors lose assignments with manual
 * offset commits in librdkafka before 2.10 (2.0.2 and 2.8.0 alike), so a
 * cooperative one in the config is logged at warn (naming client) and replaced.
 * The one place that policy lives, for every consumer group evlua joins. */
const char *evl_kafka_assignor(const evl_config *cfg, const char *dflt,
                               const char *client);

/* "<cfg->instance>.<suffix>" into buf: the group.instance.id of the
 * consumer suffix names ("cmd", "proj.NAME.1"); "" when cfg->instance is
 * unset (dynamic membership). */
void evl_kafka_instance_id(const evl_config *cfg, const char *suffix, char *buf,
                           size_t n);

/* Log rk's fatal error at error level: msg with the client, the error's
 * name and librdkafka's reason (and field=value when field is not NULL).
 * The error callback of evl_kafka_conf_new uses it. @locality any
 * thread, not from a log callback. */
void evl_kafka_log_fatal(rd_kafka_t *rk, const char *msg, const char *field,
                         const char *value);

/* For a librdkafka log callback: when the line (facility fac, text buf)
 * is librdkafka raising FENCED_INSTANCE_ID, log at error level that two
 * processes run with the same `instance` (naming the group.instance.id),
 * and return 1; else 0. librdkafka logs it the moment a static member is
 * fenced, before any consumer poll could report it. The log callback of
 * evl_kafka_conf_new calls it. @locality any thread. */
int evl_kafka_log_fenced(const rd_kafka_t *rk, const char *fac,
                         const char *buf);

/* Why a consumer waits for partitions: a group member that died without
 * leaving (kill -9) holds them until its session times out, and nothing
 * tells the operator. A consumer begins waiting when it subscribes and
 * when its partitions are revoked, and stops when they are assigned;
 * evl_kafka_wait_check, called often while it polls, logs once per wait
 * at info, after EVL_KAFKA_WAIT_LOG_MS, why (naming the group and
 * session.timeout.ms, and `instance` when it is not set). Zero-initialize;
 * nothing to free. @locality the consumer's thread. */
#define EVL_KAFKA_WAIT_LOG_MS 6000

typedef struct evl_kafka_wait {
    double since; /* when the wait began (monotonic s); 0: not waiting */
    int logged;
} evl_kafka_wait;

void evl_kafka_wait_begin(evl_kafka_wait *w);
void evl_kafka_wait_end(evl_kafka_wait *w);
/* Returns 1 when it logged. */
int evl_kafka_wait_check(evl_kafka_wait *w, rd_kafka_t *rk, const char *group);

/* The partition the murmur2 partitioners (librdkafka's murmur2 and
 * murmur2_random for non-NULL keys, the Java client's default) choose for
 * key among partitions partitions. */
int32_t evl_kafka_murmur2_partition(const void *key, size_t len,
                                    int32_t partitions);

/* Value of header name of rkm (the last one), NULL-terminated into buf
 * (truncated to n - 1 bytes); NULL when absent. */
const char *evl_kafka_header(const rd_kafka_message_t *rkm, const char *name,
                             char *buf, size_t n);

#endif
