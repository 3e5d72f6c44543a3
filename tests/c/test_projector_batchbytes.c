/*
 * test_projector_batchbytes.c - a projector batch closes at
 * projection.batch_bytes as well as at batch_size: 200 events of ~6 KB
 * with batch_bytes = 64 KiB, batch_size 500 and a linger long enough to
 * take them all in one batch otherwise, are applied in batches of at most
 * 11 events (at least 19 batches), every one of them applied.
 */
#include "projtest.h"

static pt T;

static const char script[] =
    "return {\n"
    "  name = 'bb',\n"
    "  schema = [[CREATE TABLE IF NOT EXISTS bb_items (id text PRIMARY KEY,\n"
    "    v bigint NOT NULL, note text NOT NULL)]],\n"
    "  reset = 'TRUNCATE bb_items',\n"
    "  on = {\n"
    "    Upserted = function(e)\n"
    "      return { [[INSERT INTO bb_items (id, v, note) VALUES ($1, $2, $3)\n"
    "                 ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v,\n"
    "                 note = EXCLUDED.note]],\n"
    "               e.aggregate_id, e.data.v, e.data.note }\n"
    "    end,\n"
    "  },\n"
    "}\n";

#define NEVENTS 200
#define NOTE    6000

int main(void)
{
    char topic[160], path[800], extra[1024], pdir[700];
    static char data[NOTE + 100], note[NOTE + 1];
    pt_init(&T, "proj_batchbytes");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    snprintf(pdir, sizeof pdir, "%s/projections", T.dir);
    snprintf(path, sizeof path, "%s/bb.lua", pdir);
    th_write_file(path, script);
    pt_topic(&T, topic, 1);
    pt_producer(&T);
    memset(note, 'x', NOTE);
    note[NOTE] = '\0';
    pt_begin(&T);
    for (int i = 0; i < NEVENTS; i++) {
        char id[32];
        snprintf(id, sizeof id, "k%03d", i % 50);
        snprintf(data, sizeof data, "{\"v\":%d,\"note\":\"%s\"}", i, note);
        pt_ev(&T, topic, id, i / 50 + 1, "Upserted", data);
    }
    pt_commit(&T);

    snprintf(extra, sizeof extra,
             "projection = { topics = { \"%s\" }, group_prefix = \"%s.\",\n"
             "  batch_size = 500, linger_ms = 2000, batch_bytes = 65536 },",
             topic, T.name);
    pt_config(&T, pdir, extra);
    evl_projector_stats st;
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "bb", "aggregate", &st), 0,
              "the projector catches up");
    CHECK_INT(st.applied, NEVENTS, "every event is applied");
    CHECK(st.batches >= NEVENTS / 11,
          "batches of at most 11 events of ~6 KB under 64 KiB");
    if (st.batches < NEVENTS / 11)
        fprintf(stderr, "  batches: %lld (expected >= %d)\n", st.batches,
                NEVENTS / 11);
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM bb_items"), 50,
              "the rows are there");
    CHECK_INT(pt_long(&T, "SELECT sum(v) FROM bb_items"),
              50 * 150 + 49 * 50 / 2, "each row has its last event");
    return check_done();
}
