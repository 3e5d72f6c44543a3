/*
 * cli_send.c - `evlua send`: submit one command, optionally wait for its
 * result.
 *
 * The command goes to the aggregate type's commands topic, keyed by the
 * aggregate id and partitioned with murmur2 (as evlua run requires). With
 * --wait, the results topic's partition of that aggregate (the same
 * partition number) is read from its current end, read_committed, until
 * the result naming the command's id arrives: only results committed
 * after the command was sent can be its result, and reading from the end
 * is set up before the command is sent, so none is missed.
 */
#include <getopt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "cli.h"
#include "envelope.h"
#include "json.h"
#include "kafka.h"
#include "luaapi.h"

static const char send_usage[] =
    "usage: evlua send [-c CONFIG] [--wait] [options] AGGREGATE_TYPE "
    "AGGREGATE_ID\n"
    "                  COMMAND_TYPE [JSON]\n"
    "\n"
    "Produce a command to the commands topic of AGGREGATE_TYPE, keyed by\n"
    "AGGREGATE_ID (murmur2 partitioner). JSON is the command's data, a JSON\n"
    "object (default {}). Prints the command's id, or with --wait its result\n"
    "(one JSON line from the results topic).\n"
    "\n"
    "  -c, --config FILE         config file (topics, Kafka; docs/config.md)\n"
    "  -w, --wait                wait for the result and print it\n"
    "  -t, --timeout SECONDS     how long --wait waits (default 30)\n"
    "  --id ID                   the command id (default: a new UUIDv7)\n"
    "  --expected-version N      reject unless the aggregate is at version N\n"
    "  --user ID                 metadata.user_id\n"
    "  --correlation ID          metadata.correlation_id\n"
    "\n"
    "Exit 0 when sent (with --wait: accepted or duplicate), 1 when rejected,\n"
    "failed, timed out or Kafka failed, 2 on a usage or config error.\n";

typedef struct send_opts {
    const char *config, *id, *user, *correlation;
    int wait, has_expected;
    long long expected;
    long timeout_s;
} send_opts;

typedef struct delivery {
    int done;
    rd_kafka_resp_err_t err;
    int32_t partition;
} delivery;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    delivery *d = rkm->_private;
    d->done = 1;
    d->err = rkm->err;
    d->partition = rkm->partition;
}

/* Is data a JSON object by evlua's rules? Writes the reason into err. */
static int data_ok(const char *data, char *err, size_t errlen)
{
    evl_buf scratch = {0};
    int is_object = 0;
    evl_err e = evl_json_members(data, strlen(data), NULL, 0, &scratch,
                                 &is_object, err, errlen);
    evl_buf_free(&scratch);
    if (e != EVL_OK)
        return 0;
    if (!is_object)
        snprintf(err, errlen, "the data must be a JSON object");
    return is_object;
}

/* Is the result envelope r (len bytes) the one of command id? Then print
 * it and set *rc to the exit code its status gives. */
static int is_our_result(const char *r, size_t len, const char *id,
                         evl_buf *scratch, int *rc)
{
    enum { M_COMMAND_ID, M_STATUS };
    evl_json_member m[] = {{.name = "command_id"}, {.name = "status"}};
    char err[EVL_ERRLEN];
    int is_object;
    if (evl_json_members(r, len, m, 2, scratch, &is_object, err, sizeof err) !=
            EVL_OK ||
        m[M_COMMAND_ID].type != EVL_JSON_STRING ||
        strcmp(scratch->data + m[M_COMMAND_ID].off, id) != 0)
        return 0;
    const char *status = m[M_STATUS].type == EVL_JSON_STRING
                             ? scratch->data + m[M_STATUS].off
                             : "";
    printf("%.*s\n", (int)len, r);
    fflush(stdout);
    *rc = strcmp(status, "accepted") == 0 || strcmp(status, "duplicate") == 0
              ? EVL_EXIT_OK
              : EVL_EXIT_FAILURE;
    return 1;
}

/* Read results until ours; print it. Returns the exit code. */
static int wait_result(rd_kafka_t *consumer, const char *id, long timeout_s)
{
    long long deadline = evl_now_ms() + timeout_s * 1000;
    evl_buf scratch = {0};
    int rc = -1;
    while (rc < 0 && evl_now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 200);
        if (!m)
            continue;
        if (m->err || !m->payload) {
            if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "evlua send: reading results: %s\n",
                        rd_kafka_message_errstr(m));
        } else {
            is_our_result(m->payload, m->len, id, &scratch, &rc);
        }
        rd_kafka_message_destroy(m);
    }
    evl_buf_free(&scratch);
    if (rc >= 0)
        return rc;
    fprintf(stderr,
            "evlua send: no result for command %s within %ld s (is "
            "`evlua run` running?)\n",
            id, timeout_s);
    return EVL_EXIT_FAILURE;
}

/* The producer, with the commands topic's partition count in *n (which
 * must exist: a produce must never auto-create it with the wrong count).
 * Returns EVL_EXIT_OK or the exit code, with the reason printed. */
static int open_producer(const evl_config *cfg, const char *commands,
                         const char *type, rd_kafka_t **producer, int *n)
{
    char err[EVL_ERRLEN], errstr[512];
    rd_kafka_conf_t *conf = NULL;
    const char *prequired[] = {
        "partitioner", "murmur2_random", "enable.idempotence", "true", "acks",
        "all",         "client.id",      "evlua-send",         NULL};
    if (evl_kafka_conf_new(cfg, NULL, prequired, &conf, err, sizeof err)) {
        fprintf(stderr, "evlua send: %s\n", err);
        return EVL_EXIT_USAGE;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    if (!(*producer =
              rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr))) {
        fprintf(stderr, "evlua send: %s\n", errstr);
        return EVL_EXIT_USAGE;
    }
    if (evl_kafka_partitions(*producer, commands, 10000, n, err, sizeof err)) {
        fprintf(stderr, "evlua send: %s\n", err);
        return EVL_EXIT_FAILURE;
    }
    if (*n == 0) {
        fprintf(stderr,
                "evlua send: topic %s does not exist (does `evlua run` "
                "have an aggregate of type %s?)\n",
                commands, type);
        return EVL_EXIT_FAILURE;
    }
    return EVL_EXIT_OK;
}

/* A consumer of partition p of the results topic, from its current end
 * (set up before the command is sent, so its result cannot be missed).
 * Returns EVL_EXIT_OK or the exit code, with the reason printed. */
static int open_results(const evl_config *cfg, const char *results, int32_t p,
                        rd_kafka_t **consumer)
{
    char err[EVL_ERRLEN], errstr[512];
    rd_kafka_conf_t *conf = NULL;
    int64_t lo, hi;
    rd_kafka_resp_err_t rerr;
    const char *crequired[] = {
        "group.id",       "evlua-send",         "isolation.level",
        "read_committed", "enable.auto.commit", "false",
        "client.id",      "evlua-send",         NULL};
    if (evl_kafka_conf_new(cfg, NULL, crequired, &conf, err, sizeof err)) {
        fprintf(stderr, "evlua send: %s\n", err);
        return EVL_EXIT_USAGE;
    }
    if (!(*consumer =
              rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr))) {
        fprintf(stderr, "evlua send: %s\n", errstr);
        return EVL_EXIT_FAILURE;
    }
    rd_kafka_poll_set_consumer(*consumer);
    rerr = rd_kafka_query_watermark_offsets(*consumer, results, p, &lo, &hi,
                                            10000);
    if (rerr) {
        fprintf(stderr, "evlua send: cannot read the end of %s[%d]: %s\n",
                results, (int)p, rd_kafka_err2str(rerr));
        return EVL_EXIT_FAILURE;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, results, p)->offset = hi;
    rd_kafka_assign(*consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    return EVL_EXIT_OK;
}

/* Produce the command cmd keyed by aggregate_id and wait for its
 * delivery. Returns EVL_EXIT_OK or EVL_EXIT_FAILURE, with the reason
 * printed. */
static int produce(rd_kafka_t *producer, const char *commands,
                   const char *aggregate_id, const evl_buf *cmd)
{
    delivery d = {0};
    rd_kafka_resp_err_t perr = rd_kafka_producev(
        producer, RD_KAFKA_V_TOPIC(commands),
        RD_KAFKA_V_KEY(aggregate_id, strlen(aggregate_id)),
        RD_KAFKA_V_VALUE(cmd->data, cmd->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADER("content-type", "application/json", -1),
        RD_KAFKA_V_OPAQUE(&d), RD_KAFKA_V_END);
    if (perr) {
        fprintf(stderr, "evlua send: rd_kafka_producev: %s\n",
                rd_kafka_err2str(perr));
        return EVL_EXIT_FAILURE;
    }
    rd_kafka_flush(producer, 30000);
    if (!d.done || d.err) {
        fprintf(stderr, "evlua send: the command was not delivered: %s\n",
                d.done ? rd_kafka_err2str(d.err) : "timed out");
        return EVL_EXIT_FAILURE;
    }
    return EVL_EXIT_OK;
}

static int send_command(const evl_config *cfg, const send_opts *o,
                        const char *type, const char *aggregate_id,
                        const char *command_type, const char *data)
{
    char commands[256], results[256], id[EVL_ENVELOPE_MAX_ID + 1];
    rd_kafka_t *producer = NULL, *consumer = NULL;
    evl_buf cmd = {0};
    int n = 0, rc;

    evl_config_topic(cfg->cmd.commands_topic, type, commands, sizeof commands);
    evl_config_topic(cfg->cmd.results_topic, type, results, sizeof results);
    if (o->id)
        snprintf(id, sizeof id, "%s", o->id);
    else if (evl_luaapi_uuid7(id) != 0) {
        fprintf(stderr, "evlua send: cannot generate a command id\n");
        return EVL_EXIT_FAILURE;
    }
    evl_envelope_command_in c = {.id = id,
                                 .type = command_type,
                                 .aggregate_type = type,
                                 .aggregate_id = aggregate_id,
                                 .has_expected_version = o->has_expected,
                                 .expected_version = o->expected,
                                 .data = data,
                                 .data_len = strlen(data),
                                 .user_id = o->user,
                                 .correlation_id = o->correlation};
    evl_envelope_command(&cmd, &c);

    if ((rc = open_producer(cfg, commands, type, &producer, &n)))
        goto out;
    if (o->wait &&
        (rc = open_results(
             cfg, results,
             evl_kafka_murmur2_partition(aggregate_id, strlen(aggregate_id), n),
             &consumer)))
        goto out;
    if ((rc = produce(producer, commands, aggregate_id, &cmd)))
        goto out;
    if (!o->wait) {
        printf("%s\n", id);
        rc = EVL_EXIT_OK;
        goto out;
    }
    rc = wait_result(consumer, id, o->timeout_s);

out:
    if (consumer) {
        rd_kafka_consumer_close(consumer);
        rd_kafka_destroy(consumer);
    }
    if (producer)
        rd_kafka_destroy(producer);
    evl_buf_free(&cmd);
    return rc;
}

int evl_cli_send(int argc, char **argv)
{
    enum { O_ID = 256, O_EXPECTED, O_USER, O_CORRELATION };
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},
        {"wait", no_argument, 0, 'w'},
        {"timeout", required_argument, 0, 't'},
        {"id", required_argument, 0, O_ID},
        {"expected-version", required_argument, 0, O_EXPECTED},
        {"user", required_argument, 0, O_USER},
        {"correlation", required_argument, 0, O_CORRELATION},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    send_opts o = {0};
    char err[EVL_ERRLEN];
    char *end;
    int c, rc;
    o.timeout_s = 30;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:wt:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': o.config = optarg; break;
        case 'w': o.wait = 1; break;
        case 't':
            o.timeout_s = strtol(optarg, &end, 10);
            if (*end || o.timeout_s <= 0) {
                fprintf(stderr, "evlua send: bad --timeout '%s'\n", optarg);
                return EVL_EXIT_USAGE;
            }
            break;
        case O_ID: o.id = optarg; break;
        case O_EXPECTED:
            errno = 0;
            o.expected = strtoll(optarg, &end, 10);
            /* out of range is refused, not clamped: a version past 2^53
             * cannot be sent exactly in JSON (I-JSON) anyway */
            if (end == optarg || *end || errno == ERANGE || o.expected < 0 ||
                o.expected > 9007199254740991LL) {
                fprintf(stderr, "evlua send: bad --expected-version '%s'\n",
                        optarg);
                return EVL_EXIT_USAGE;
            }
            o.has_expected = 1;
            break;
        case O_USER: o.user = optarg; break;
        case O_CORRELATION: o.correlation = optarg; break;
        case 'h': fputs(send_usage, stdout); return EVL_EXIT_OK;
        default: evl_cli_usage_error(send_usage); return EVL_EXIT_USAGE;
        }
    }
    if (argc - optind < 3 || argc - optind > 4) {
        fprintf(stderr, "evlua send: %s arguments\n",
                argc - optind < 3 ? "too few" : "too many");
        evl_cli_usage_error(send_usage);
        return EVL_EXIT_USAGE;
    }
    const char *data = argc - optind == 4 ? argv[optind + 3] : "{}";
    if (!*argv[optind] || !*argv[optind + 1] || !*argv[optind + 2]) {
        fprintf(stderr, "evlua send: AGGREGATE_TYPE, AGGREGATE_ID and "
                        "COMMAND_TYPE must not be empty\n");
        return EVL_EXIT_USAGE;
    }
    for (int i = 0; i < 3; i++)
        if (evl_utf8_check(argv[optind + i], strlen(argv[optind + i])) >= 0) {
            fprintf(stderr, "evlua send: '%s' is not valid UTF-8\n",
                    argv[optind + i]);
            return EVL_EXIT_USAGE;
        }
    if (o.id && (!*o.id || strlen(o.id) > EVL_ENVELOPE_MAX_ID)) {
        fprintf(stderr, "evlua send: --id must have 1 to %d bytes\n",
                EVL_ENVELOPE_MAX_ID);
        return EVL_EXIT_USAGE;
    }
    if (!data_ok(data, err, sizeof err)) {
        fprintf(stderr, "evlua send: JSON: %s\n", err);
        return EVL_EXIT_USAGE;
    }
    evl_config cfg;
    if ((rc = evl_cli_load_config(o.config, &cfg)))
        return rc;
    rc = send_command(&cfg, &o, argv[optind], argv[optind + 1],
                      argv[optind + 2], data);
    evl_config_free(&cfg);
    return rc;
}
