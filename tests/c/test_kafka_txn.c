/*
 * test_kafka_txn.c - the Kafka harness is a real broker with real
 * transactions: a transactional producer commits 2 messages, aborts 1
 * (after it reached the broker), commits 1 more; a read_committed consumer
 * sees exactly the 3 committed ones, in order, while a read_uncommitted
 * consumer sees all 4 (so the aborted one really is in the log).
 * librdkafka 2.0.2's mock cluster fails this test.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "check.h"
#include "harness.h"
#include "svc.h"

static char bootstrap[256];
static char topic[128];

static void create_topic(void)
{
    rd_kafka_resp_err_t e = th_create_topic(bootstrap, topic, 1, NULL);
    if (e)
        th_die("CreateTopics: %s", rd_kafka_err2str(e));
}

static void produce(rd_kafka_t *rk, const char *value)
{
    rd_kafka_resp_err_t e = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
        RD_KAFKA_V_KEY("k", 1), RD_KAFKA_V_VALUE((void *)value, strlen(value)),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (e)
        th_die("rd_kafka_producev: %s", rd_kafka_err2str(e));
}

static void run_producer(void)
{
    char txid[160];
    rd_kafka_conf_t *conf = th_kconf(bootstrap);
    snprintf(txid, sizeof txid, "%s-producer", topic);
    th_kset(conf, "transactional.id", txid);
    rd_kafka_t *rk = th_kafka_new(RD_KAFKA_PRODUCER, conf, "producer");
    th_kcheck(rd_kafka_init_transactions(rk, 30000), "init_transactions");

    th_kcheck(rd_kafka_begin_transaction(rk), "begin_transaction");
    produce(rk, "one");
    produce(rk, "two");
    th_kcheck(rd_kafka_commit_transaction(rk, -1), "commit #1");

    th_kcheck(rd_kafka_begin_transaction(rk), "begin_transaction");
    produce(rk, "aborted");
    /* make sure the message is in the broker's log before the abort */
    CHECK_INT(rd_kafka_flush(rk, 30000), RD_KAFKA_RESP_ERR_NO_ERROR,
              "the to-be-aborted message reaches the broker");
    th_kcheck(rd_kafka_abort_transaction(rk, -1), "abort");

    th_kcheck(rd_kafka_begin_transaction(rk), "begin_transaction");
    produce(rk, "three");
    th_kcheck(rd_kafka_commit_transaction(rk, -1), "commit #2");
    rd_kafka_destroy(rk);
}

/* Read partition 0 from the start until end of partition; join the values
 * with ',' into out. */
static void consume_all(const char *isolation, char *out, size_t outlen)
{
    static const char *const eof[] = {"enable.partition.eof", "true", NULL};
    char group[160];
    snprintf(group, sizeof group, "%s-%s", topic, isolation);
    rd_kafka_t *rk = th_consumer(bootstrap, group, isolation, eof);
    rd_kafka_topic_partition_list_t *parts =
        rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic, 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);

    out[0] = '\0';
    time_t deadline = time(NULL) + 30;
    for (;;) {
        if (time(NULL) > deadline) {
            CHECK(0, "reached the end of the partition within 30 s");
            break;
        }
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, 500);
        if (!rkm)
            continue;
        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            rd_kafka_message_destroy(rkm);
            break;
        }
        if (rkm->err) {
            fprintf(stderr, "consumer error: %s\n",
                    rd_kafka_message_errstr(rkm));
        } else {
            size_t len = strlen(out);
            snprintf(out + len, outlen - len, "%s%.*s", len ? "," : "",
                     (int)rkm->len, (const char *)rkm->payload);
        }
        rd_kafka_message_destroy(rkm);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

int main(void)
{
    char seen[1024];
    svc_kafka_bootstrap(bootstrap, sizeof bootstrap);
    snprintf(topic, sizeof topic, "evlua-test-txn-%ld-%ld", (long)getpid(),
             (long)time(NULL));
    create_topic();
    run_producer();

    consume_all("read_committed", seen, sizeof seen);
    CHECK_STR(seen, "one,two,three",
              "a read_committed consumer sees exactly the committed "
              "messages, in order");

    consume_all("read_uncommitted", seen, sizeof seen);
    CHECK_STR(seen, "one,two,aborted,three",
              "a read_uncommitted consumer also sees the aborted message, "
              "so it really reached the log");
    return check_done();
}
