/*
 * test_projector_replay.c - replays change nothing.
 *
 * shipping_addresses counts address changes (changes = changes + 1: not
 * idempotent), so an event applied twice shows. After 300 events over 30
 * customers are projected: deleting the consumer group (Kafka's
 * committed offsets back to the beginning) reads nothing again, since the
 * database's offsets are the truth; deleting the database's offsets too
 * re-reads every event, in each isolation mode, and the checkpoints skip
 * them all: the tables are unchanged. New events after that are applied
 * exactly once.
 */
#include "projtest.h"

static pt T;
static char topic[128];

static void produce(int from, int to)
{
    char data[160];
    pt_begin(&T);
    for (int s = from; s <= to; s++)
        for (int c = 0; c < 30; c++) {
            char id[16];
            snprintf(id, sizeof id, "r%02d", c);
            snprintf(data, sizeof data,
                     "{\"newAddress\":\"%d Replay Rd\",\"previousAddress\":"
                     "\"x\"}",
                     s * 100 + c);
            pt_ev(&T, topic, id, s, "CustomerAddressChanged", data);
        }
    pt_commit(&T);
}

static void snapshot(char *buf, size_t n)
{
    pt_text(&T, buf, n,
            "SELECT md5(string_agg(customer_id || address || changes, ',' "
            "ORDER BY customer_id)) || ':' || sum(changes) || ':' || "
            "(SELECT md5(string_agg(aggregate_id || sequence, ',' ORDER BY "
            "aggregate_id)) FROM evlua_checkpoints) FROM shipping_addresses");
}

static void forget_kafka_offsets(void)
{
    evl_config cfg;
    evl_luahost *host = NULL;
    char group[256], err[EVL_ERRLEN];
    pt_load(&T, &cfg, &host);
    evl_projector_group(&cfg, "shipping_addresses", group, sizeof group);
    CHECK_INT(evl_projector_reset_group(&cfg, group, err, sizeof err), EVL_OK,
              "the consumer group (and its Kafka offsets) is deleted");
    evl_luahost_free(host);
    evl_config_free(&cfg);
}

int main(void)
{
    char before[256], after[256], msg[128];
    evl_projector_stats st;
    pt_init(&T, "proj_replay");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 3);
    pt_config_examples(&T, topic, "batch_size = 64");
    pt_producer(&T);
    produce(1, 10);

    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "shipping_addresses", NULL, &st), 0,
              "the first run exits 0");
    CHECK_INT(st.applied, 300, "it applies all 300 events");
    CHECK_INT(pt_long(&T, "SELECT sum(changes) FROM shipping_addresses"), 300,
              "each counted once");
    snapshot(before, sizeof before);

    forget_kafka_offsets();
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "shipping_addresses", NULL, &st), 0,
              "a run without Kafka offsets exits 0");
    CHECK_INT(st.messages, 0,
              "it starts at the database's offsets: nothing is read again");
    snapshot(after, sizeof after);
    CHECK_STR(after, before, "the tables are unchanged");

    static const char *const modes[] = {"aggregate", "batch", "aggregate-tx"};
    for (int m = 0; m < 3; m++) {
        forget_kafka_offsets();
        pt_exec(&T, "DELETE FROM evlua_offsets");
        memset(&st, 0, sizeof st);
        snprintf(msg, sizeof msg, "[%s] a full replay exits 0", modes[m]);
        CHECK_INT(pt_catch_up(&T, "shipping_addresses", modes[m], &st), 0, msg);
        snprintf(msg, sizeof msg, "[%s] every event is read again", modes[m]);
        CHECK_INT(st.replayed, 300, msg);
        snprintf(msg, sizeof msg, "[%s] and none is applied", modes[m]);
        CHECK_INT(st.applied, 0, msg);
        snapshot(after, sizeof after);
        snprintf(msg, sizeof msg,
                 "[%s] the tables and checkpoints are unchanged", modes[m]);
        CHECK_STR(after, before, msg);
    }

    produce(11, 12);
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "shipping_addresses", NULL, &st), 0,
              "the run after the replays exits 0");
    CHECK_INT(st.applied, 60, "the 60 new events are applied");
    CHECK_INT(pt_long(&T, "SELECT sum(changes) FROM shipping_addresses"), 360,
              "once each");
    CHECK_INT(pt_long(&T, "SELECT min(sequence) FROM evlua_checkpoints"), 12,
              "every checkpoint is at the last sequence");

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
