/*
 * test_projector_e2e.c - events become rows, end to end, for the three
 * example projections (projections/customer_profile.lua,
 * shipping_addresses.lua, welcome_kits.lua), each in another isolation
 * mode: a transactional producer writes customer events in the wire
 * format to a 4-partition topic; each projector reads them into
 * PostgreSQL; the rows, checkpoints and offsets are what the events say.
 * A second run changes nothing; the shipping projection never ran a
 * handler for the types it does not subscribe to.
 */
#include "projtest.h"

static pt T;
static char topic[128];

static void produce(void)
{
    pt_producer(&T);
    pt_begin(&T);
    pt_ev(&T, topic, "c1", 1, "CustomerRegistered",
          "{\"name\":\"Ann\",\"email\":\"ann@example.com\"}");
    pt_ev(&T, topic, "c1", 2, "CustomerAddressChanged",
          "{\"newAddress\":\"1 Main St\",\"previousAddress\":null}");
    pt_ev(&T, topic, "c2", 1, "CustomerRegistered",
          "{\"name\":\"Bob\",\"email\":\"bob@example.com\"}");
    pt_commit(&T);
    pt_begin(&T);
    pt_ev(&T, topic, "c1", 3, "CustomerNameChanged",
          "{\"newName\":\"Anne\",\"previousName\":\"Ann\"}");
    pt_ev(&T, topic, "c1", 4, "CustomerAddressChanged",
          "{\"newAddress\":\"2 Side St\",\"previousAddress\":\"1 Main St\"}");
    pt_ev(&T, topic, "c2", 2, "CustomerNoteAdded", "{\"note\":\"vip\"}");
    pt_ev(&T, topic, "c3", 1, "CustomerRegistered",
          "{\"name\":\"Cy\",\"email\":\"cy@example.com\"}");
    pt_ev(&T, topic, "c3", 2, "CustomerAddressChanged",
          "{\"newAddress\":\"3 Hill Rd\",\"previousAddress\":null}");
    pt_commit(&T);
    pt_begin(&T);
    pt_ev(&T, topic, "c1", 5, "CustomerEmailChanged",
          "{\"newEmail\":\"anne@example.com\",\"previousEmail\":"
          "\"ann@example.com\"}");
    pt_ev(&T, topic, "c2", 3, "CustomerNameChanged",
          "{\"newName\":\"Robert\",\"previousName\":\"Bob\"}");
    pt_commit(&T);
}

static void check_customers(void)
{
    char b[512];
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM customers"), 3,
              "customer_profile has one row per customer");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT name || '|' || email || '|' || address FROM "
                      "customers WHERE id = 'c1'"),
              "Anne|anne@example.com|2 Side St",
              "c1 has its latest name, email and address");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT name || '|' || email || '|' || "
                      "coalesce(address, '-') FROM customers WHERE id = 'c2'"),
              "Robert|bob@example.com|-", "c2 was renamed, has no address");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT to_char(updated_at AT TIME ZONE 'UTC', 'SS') "
                      "FROM customers WHERE id = 'c1'"),
              "05", "updated_at is the last event's occurred_at");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(aggregate_id || '=' || sequence, ',' "
                      "ORDER BY aggregate_id) FROM evlua_checkpoints WHERE "
                      "projection = 'customer_profile'"),
              "c1=5,c2=3,c3=2",
              "each checkpoint is its aggregate's last handled sequence");
    CHECK_INT(
        pt_long(&T, "SELECT count(*) FROM evlua_offsets WHERE "
                    "projection = 'customer_profile'"),
        pt_long(&T, "SELECT count(DISTINCT partition) FROM evlua_offsets"),
        "offsets are stored per partition");
}

static void check_shipping(void)
{
    char b[512];
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(customer_id || ':' || address || ':' "
                      "|| changes, ',' ORDER BY customer_id) FROM "
                      "shipping_addresses"),
              "c1:2 Side St:2,c3:3 Hill Rd:1",
              "shipping_addresses holds the latest address and counts the "
              "changes");
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(aggregate_id || '=' || sequence, ',' "
                      "ORDER BY aggregate_id) FROM evlua_checkpoints WHERE "
                      "projection = 'shipping_addresses'"),
              "c1=4,c3=2", "its checkpoints only cover the events it handles");
}

static void check_kits(void)
{
    char b[512];
    CHECK_STR(pt_text(&T, b, sizeof b,
                      "SELECT string_agg(customer_id || ':' || address, ',' "
                      "ORDER BY customer_id) FROM welcome_kits"),
              "c1:1 Main St,c3:3 Hill Rd",
              "welcome_kits has a row for each customer's first address");
}

int main(void)
{
    evl_projector_stats st;
    pt_init(&T, "proj_e2e");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 4);
    pt_config_examples(&T, topic, "linger_ms = 20");
    produce();

    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "customer_profile", "aggregate", &st), 0,
              "customer_profile (aggregate) catches up and exits 0");
    CHECK_INT(st.applied, 9, "it applied its 9 events");
    CHECK_INT(st.skipped, 1, "and skipped the one type it has no handler for");
    check_customers();

    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "shipping_addresses", "batch", &st), 0,
              "shipping_addresses (batch) catches up and exits 0");
    CHECK_INT(st.applied, 3, "it applied the 3 address changes");
    CHECK_INT(st.skipped, 7, "the other 7 events were skipped by header");
    check_shipping();

    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "welcome_kits", "aggregate-tx", &st), 0,
              "welcome_kits (aggregate-tx) catches up and exits 0");
    CHECK_INT(st.applied, 3, "it ran its handler for the 3 address changes");
    check_kits();

    /* nothing new: a second run applies nothing and changes nothing */
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "shipping_addresses", "batch", &st), 0,
              "a second run exits 0");
    CHECK_INT(st.applied + st.replayed, 0,
              "it starts at the stored offsets: nothing is read again");
    check_shipping();

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
