/*
 * test_kafka_util.c - kafka.h without a broker: the murmur2 partition
 * agrees with the Java client's default partitioner (values computed with
 * org.apache.kafka.common.utils.Utils.murmur2 from kafka-clients 4.1.1);
 * configuration layering (defaults < the config's kafka table < required);
 * error classification.
 */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "kafka.h"
#include "log.h"

static void murmur2_matches_java(void)
{
    static const struct {
        const char *key;
        int p6, p7;
    } v[] = {{"c-1", 5, 5},
             {"customer-42", 3, 1},
             {"", 3, 2},
             {"a", 4, 5},
             {"ab", 2, 0},
             {"abc", 3, 4},
             {"abcd", 2, 5},
             {"\xc3\xbc"
              "n\xc3\xaf"
              "code",
              1, 6}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "murmur2(\"%s\") %% 6 as in Java",
                 v[i].key);
        CHECK_INT(evl_kafka_murmur2_partition(v[i].key, strlen(v[i].key), 6),
                  v[i].p6, what);
        snprintf(what, sizeof what, "murmur2(\"%s\") %% 7 as in Java",
                 v[i].key);
        CHECK_INT(evl_kafka_murmur2_partition(v[i].key, strlen(v[i].key), 7),
                  v[i].p7, what);
    }
}

static void conf_layers(void)
{
    evl_config cfg;
    char err[EVL_ERRLEN], val[64];
    size_t n = sizeof val;
    rd_kafka_conf_t *conf = NULL;
    evl_kv kv[3] = {{"linger.ms", "7"},
                    {"isolation.level", "read_uncommitted"},
                    {"client.id", "mine"}};
    memset(&cfg, 0, sizeof cfg);
    cfg.kafka = kv;
    cfg.nkafka = 3;
    const char *defaults[] = {"linger.ms", "5", "acks", "1", NULL};
    const char *required[] = {"isolation.level", "read_committed", NULL};
    CHECK_INT(
        evl_kafka_conf_new(&cfg, defaults, required, &conf, err, sizeof err),
        EVL_OK, "a valid configuration");
    rd_kafka_conf_get(conf, "linger.ms", val, &n);
    CHECK_STR(val, "7", "the config's kafka table wins over a default");
    n = sizeof val;
    rd_kafka_conf_get(conf, "acks", val, &n);
    CHECK_STR(val, "1", "a default the table leaves alone stays");
    n = sizeof val;
    rd_kafka_conf_get(conf, "isolation.level", val, &n);
    CHECK_STR(val, "read_committed", "a required property wins (warned)");
    n = sizeof val;
    rd_kafka_conf_get(conf, "client.id", val, &n);
    CHECK_STR(val, "mine", "other properties pass through");
    rd_kafka_conf_destroy(conf);

    evl_kv bad[1] = {{"no.such.property", "1"}};
    cfg.kafka = bad;
    cfg.nkafka = 1;
    conf = NULL;
    CHECK_INT(evl_kafka_conf_new(&cfg, NULL, NULL, &conf, err, sizeof err),
              EVL_EPERMANENT, "an unknown property is a config error");
    CHECK_HAS(err, "kafka property 'no.such.property'",
              "the error names the property");
    CHECK(conf == NULL, "no configuration on error");
}

static void classification(void)
{
    char err[EVL_ERRLEN] = "untouched";
    CHECK_INT(evl_kafka_classify(NULL), EVL_OK, "no error is ok");
    CHECK_INT(evl_kafka_error(NULL, "call", err, sizeof err), EVL_OK,
              "no error, nothing to say");
    CHECK_STR(err, "untouched", "err is left alone");
    rd_kafka_error_t *e =
        rd_kafka_error_new(RD_KAFKA_RESP_ERR__STATE, "in the wrong state");
    CHECK_INT(evl_kafka_classify(e), EVL_EFATAL,
              "an error that is neither abortable nor retriable is fatal");
    CHECK_INT(evl_kafka_error(e, "rd_kafka_begin_transaction", err, sizeof err),
              EVL_EFATAL, "evl_kafka_error classifies (and destroys)");
    CHECK_STR(err, "rd_kafka_begin_transaction: in the wrong state (_STATE)",
              "the message names the call, the text and the code");
}

int main(void)
{
    evl_log_set_level(EVL_LOG_ERROR);
    murmur2_matches_java();
    conf_layers();
    classification();
    return check_done();
}
