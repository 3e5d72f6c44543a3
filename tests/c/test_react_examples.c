/*
 * test_react_examples.c - the repository's example aggregates (aggregates/
 * customer, shipment, order, stock, payment) under `evlua run` on the real
 * broker, driven by real commands:
 *
 *   - the welcome kit: a customer's first address (given at registration,
 *     or later in a profile update) ships one kit; a second address ships
 *     nothing, and a registration without an address ships nothing;
 *   - the order process: placed -> stock reserved -> payment requested ->
 *     charged -> accepted -> order confirmed;
 *   - a declined payment (over payment.lua's card limit): -> order
 *     cancelled -> stock released;
 *   - no stock: reservation failed -> order cancelled, nothing released.
 *
 * Each chain is walked by its causation links from the command the test
 * sent: every command's events carry it as their causation, every reaction
 * command carries the event that caused it; one correlation id (the first
 * command's) and its user id run through the chain; a reaction command
 * has the UUIDv5 id of docs/reactions.md, sits once on its topic, keyed by
 * its aggregate id on the murmur2 partition, and is accepted once; the
 * chain's last event causes nothing. The reactors' metrics count what the
 * scripts decide, and /readyz names the four reactors ready.
 */
#include "reacttest.h"
#include "uuid.h"

enum { CUSTOMER, SHIPMENT, ORDER, STOCK, PAYMENT, NTYPES };
static const char *const TYPES[NTYPES] = {"customer", "shipment", "order",
                                          "stock", "payment"};

static ct T;
static th_recs CMDS[NTYPES], EVS[NTYPES], RES[NTYPES];
static int PARTS[NTYPES]; /* partitions of each commands topic */
static char WHAT[600];

#define SAY(...) (snprintf(WHAT, sizeof WHAT, __VA_ARGS__), WHAT)

static int same(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

static int type_index(const char *type)
{
    for (int i = 0; i < NTYPES; i++)
        if (strcmp(TYPES[i], type) == 0)
            return i;
    th_die("no aggregate type %s in this test", type);
}

static const char *data_str(const th_rec *r, const char *name)
{
    cJSON *d = cJSON_GetObjectItemCaseSensitive(r->json, "data");
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, name));
}

static cJSON *data_item(const th_rec *r, const char *name)
{
    cJSON *d = cJSON_GetObjectItemCaseSensitive(r->json, "data");
    return cJSON_GetObjectItemCaseSensitive(d, name);
}

/* How many records of recs have id `id`. */
static size_t count_id(const th_recs *recs, const char *id)
{
    return rt_count(recs, "id", id);
}

/* The commands (on every commands topic) whose causation is event_id: how
 * many, and the last into *out. */
static size_t caused_commands(const char *event_id, const th_rec **out,
                              int *topic)
{
    size_t n = 0;
    for (int i = 0; i < NTYPES; i++)
        for (size_t k = 0; k < CMDS[i].n; k++)
            if (same(rt_meta(&CMDS[i].v[k], "causation_id"), event_id)) {
                n++;
                if (out)
                    *out = &CMDS[i].v[k];
                if (topic)
                    *topic = i;
            }
    return n;
}

static void read_world(void)
{
    char topic[256];
    for (int i = 0; i < NTYPES; i++) {
        ct_topic(&T, TYPES[i], "commands", topic, sizeof topic);
        ct_read_all(&T, topic, "read_committed", &CMDS[i]);
        ct_topic(&T, TYPES[i], "events", topic, sizeof topic);
        ct_read_all(&T, topic, "read_committed", &EVS[i]);
        ct_topic(&T, TYPES[i], "results", topic, sizeof topic);
        ct_read_all(&T, topic, "read_committed", &RES[i]);
    }
}

/* Check command c of chain step k (of type atype, named name); cause: the
 * event that caused it (NULL for the command the test sent). */
static void check_command(const char *chain, int k, const th_rec *c,
                          const char *atype, const char *name,
                          const th_rec *cause, const char *corr,
                          const char *user)
{
    int ti = type_index(atype);
    const char *id = th_str(c, "id"), *aid = th_str(c, "aggregate_id");
    CHECK_STR(th_str(c, "type"), name,
              SAY("%s step %d: command type", chain, k));
    CHECK_STR(th_str(c, "aggregate_type"), atype,
              SAY("%s step %d (%s): aggregate_type", chain, k, name));
    CHECK_STR(
        c->key, aid,
        SAY("%s step %d (%s): keyed by its aggregate id", chain, k, name));
    if (aid)
        CHECK_INT(c->partition,
                  evl_kafka_murmur2_partition(aid, strlen(aid), PARTS[ti]),
                  SAY("%s step %d (%s): on the murmur2 partition of its "
                      "key",
                      chain, k, name));
    CHECK_INT(count_id(&CMDS[ti], id), 1,
              SAY("%s step %d (%s %s): once on %s.commands", chain, k, name,
                  id ? id : "(no id)", atype));
    const char *mcorr = rt_meta(c, "correlation_id");
    CHECK_STR(
        mcorr ? mcorr : id, corr,
        SAY("%s step %d (%s): the chain's correlation id", chain, k, name));
    if (cause) {
        char want[37];
        evl_uuid_reaction(want, th_str(cause, "id"), atype, 0);
        CHECK_STR(id, want,
                  SAY("%s step %d (%s): id = uuid5(reactions namespace, "
                      "\"<event id>/%s/0\")",
                      chain, k, name, atype));
        CHECK(id && strlen(id) == 36 && id[14] == '5' && strchr("89ab", id[19]),
              SAY("%s step %d (%s): a version 5, RFC variant UUID: %s", chain,
                  k, name, id ? id : "(null)"));
        CHECK_STR(rt_meta(c, "causation_id"), th_str(cause, "id"),
                  SAY("%s step %d (%s): causation_id = the id of the event "
                      "that triggered it",
                      chain, k, name));
        if (user)
            CHECK_STR(rt_meta(c, "user_id"), user,
                      SAY("%s step %d (%s): user id carried", chain, k, name));
        else
            CHECK(rt_meta(c, "user_id") == NULL,
                  SAY("%s step %d (%s): no user id when the chain has none",
                      chain, k, name));
    }
    size_t nres = 0;
    const th_rec *res = NULL;
    for (size_t i = 0; i < RES[ti].n; i++)
        if (same(th_str(&RES[ti].v[i], "command_id"), id)) {
            nres++;
            res = &RES[ti].v[i];
        }
    CHECK_INT(nres, 1, SAY("%s step %d (%s): one result", chain, k, name));
    CHECK_STR(res ? th_str(res, "status") : NULL, "accepted",
              SAY("%s step %d (%s): accepted", chain, k, name));
}

/* Check event e of chain step k, caused by command c. */
static void check_event(const char *chain, int k, const th_rec *e,
                        const th_rec *c, const char *corr, const char *user)
{
    const char *name = th_str(e, "type");
    int ti = type_index(th_str(c, "aggregate_type"));
    CHECK_STR(
        th_str(e, "aggregate_type"), th_str(c, "aggregate_type"),
        SAY("%s step %d (%s): the command's aggregate type", chain, k, name));
    CHECK_STR(th_str(e, "aggregate_id"), th_str(c, "aggregate_id"),
              SAY("%s step %d (%s): the command's aggregate", chain, k, name));
    CHECK_STR(th_str(e, "causation_id"), th_str(c, "id"),
              SAY("%s step %d (%s): causation_id = its command's id", chain, k,
                  name));
    CHECK_STR(
        th_str(e, "correlation_id"), corr,
        SAY("%s step %d (%s): the chain's correlation id", chain, k, name));
    if (user)
        CHECK_STR(th_str(e, "user_id"), user,
                  SAY("%s step %d (%s): user id carried", chain, k, name));
    else
        CHECK(th_str(e, "user_id") == NULL,
              SAY("%s step %d (%s): no user id", chain, k, name));
    CHECK_INT(count_id(&EVS[ti], th_str(e, "id")), 1,
              SAY("%s step %d (%s): once on its events topic", chain, k, name));
}

/* Walk the chain that starts with command first_id: steps are pairs
 * (aggregate type, command or event type), NULL-terminated, commands and
 * events taking turns, beginning with the command the test sent and
 * ending with an event. got[k] gets step k's record (NULL when the chain
 * broke before it). */
static void check_chain(const char *chain, const char *first_id,
                        const char *corr, const char *user,
                        const char *const *steps, const th_rec **got)
{
    const th_rec *cmd = NULL, *ev = NULL;
    int k;
    for (k = 0; steps[2 * k]; k++)
        got[k] = NULL;
    for (k = 0; steps[2 * k]; k++) {
        const char *atype = steps[2 * k], *name = steps[2 * k + 1];
        int ti = type_index(atype);
        if (k % 2 == 0) {
            const th_rec *c = NULL;
            int on = -1;
            size_t n = 0;
            if (k == 0) {
                for (size_t i = 0; i < CMDS[ti].n; i++)
                    if (same(th_str(&CMDS[ti].v[i], "id"), first_id)) {
                        n++;
                        c = &CMDS[ti].v[i];
                        on = ti;
                    }
            } else {
                n = caused_commands(th_str(ev, "id"), &c, &on);
            }
            CHECK_INT(n, 1,
                      SAY("%s step %d: exactly one %s command %s", chain, k,
                          name, k ? "caused by the event before" : first_id));
            if (n != 1)
                return;
            CHECK_STR(
                TYPES[on], atype,
                SAY("%s step %d (%s): on %s.commands", chain, k, name, atype));
            check_command(chain, k, c, atype, name, ev, corr, user);
            got[k] = cmd = c;
        } else {
            const th_rec *e = NULL;
            size_t n = 0;
            for (size_t i = 0; i < EVS[ti].n; i++) {
                const th_rec *x = &EVS[ti].v[i];
                if (!same(th_str(x, "causation_id"), th_str(cmd, "id")))
                    continue;
                if (same(th_str(x, "type"), name)) {
                    n++;
                    e = x;
                } else {
                    CHECK_INT(caused_commands(th_str(x, "id"), NULL, NULL), 0,
                              SAY("%s step %d: the command's other event %s "
                                  "causes no command",
                                  chain, k, th_str(x, "type")));
                }
            }
            CHECK_INT(n, 1,
                      SAY("%s step %d: exactly one %s event of command %s",
                          chain, k, name, th_str(cmd, "id")));
            if (n != 1)
                return;
            check_event(chain, k, e, cmd, corr, user);
            got[k] = ev = e;
        }
    }
    CHECK_INT(caused_commands(th_str(ev, "id"), NULL, NULL), 0,
              SAY("%s: the chain ends: its last event (%s) causes no "
                  "command",
                  chain, th_str(ev, "type")));
}

/* Does topic kind "events" of type hold an event named name of aggregate
 * aid? */
static int has_event(int ti, const char *name, const char *aid)
{
    for (size_t i = 0; i < EVS[ti].n; i++)
        if (same(th_str(&EVS[ti].v[i], "type"), name) &&
            same(th_str(&EVS[ti].v[i], "aggregate_id"), aid))
            return 1;
    return 0;
}

/* Wait up to timeout_s for the events (type index, event name, aggregate
 * id; n of them) to be on their events topics (read_committed). */
typedef struct want_event {
    int ti;
    const char *name, *aid;
} want_event;

static int wait_events(const want_event *w, size_t n, int timeout_s)
{
    long long deadline = th_now_ms() + timeout_s * 1000LL;
    char topic[256];
    for (;;) {
        size_t ok = 0;
        for (size_t i = 0; i < n; i++) {
            if (!has_event(w[i].ti, w[i].name, w[i].aid)) {
                ct_topic(&T, TYPES[w[i].ti], "events", topic, sizeof topic);
                ct_read_all(&T, topic, "read_committed", &EVS[w[i].ti]);
            }
            ok += has_event(w[i].ti, w[i].name, w[i].aid);
        }
        if (ok == n)
            return 1;
        if (th_now_ms() > deadline) {
            for (size_t i = 0; i < n; i++)
                if (!has_event(w[i].ti, w[i].name, w[i].aid))
                    fprintf(stderr, "still missing: %s.events %s of %s\n",
                            TYPES[w[i].ti], w[i].name, w[i].aid);
            return 0;
        }
        th_sleep_ms(500);
    }
}

/* What the example scripts decide for this test's commands, per reacting
 * type: source events that reacted, that returned nil, commands sent. */
typedef struct want_counts {
    const char *type;
    int reacted, none, commands;
} want_counts;

static int counts_reached(int port, const want_counts *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (rt_reactions(port, w[i].type, "reacted") < w[i].reacted ||
            rt_reactions(port, w[i].type, "none") < w[i].none)
            return 0;
    return 1;
}

int main(void)
{
    static const char *const files[] = {"customer.lua", "shipment.lua",
                                        "order.lua", "stock.lua",
                                        "payment.lua"};
    char topic[256], path[1024], b[16384];
    const th_rec *got[16];

    ct_init(&T, "rexamples");
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        ct_copy_aggregate(&T, files[i]);
    rt_config_ex(&T, "a", NULL, "metrics = { listen = '127.0.0.1:0' },");
    snprintf(path, sizeof path, "%s/a.log", T.dir);

    pid_t pid = ct_start(&T, "a", "a.log", NULL);
    int port = rt_metrics_port(&T, "a.log", 60000);
    CHECK(port > 0, "evlua run logs the port of its metrics endpoint");
    CHECK_INT(th_wait_log(path, "reactor started", 4, 120000), 4,
              "one reactor per example aggregate with a react table "
              "(shipment, order, stock, payment)");
    /* every type's topics exist before the test produces (the test
     * broker would auto-create a missing one with its own partitions) */
    for (int i = 0; i < NTYPES; i++) {
        ct_topic(&T, TYPES[i], "results", topic, sizeof topic);
        CHECK(ct_wait_topic(&T, topic, 60) > 0,
              SAY("evlua run creates %s", topic));
        ct_topic(&T, TYPES[i], "commands", topic, sizeof topic);
        PARTS[i] = ct_partitions(&T, topic);
        CHECK_INT(PARTS[i], 3,
                  SAY("%s has commands.partitions partitions", topic));
    }
    if (check_failures_) {
        ct_dump_log(&T, "a.log");
        th_die("evlua run did not start its pipelines");
    }

    rd_kafka_t *p = ct_producer(&T);
    /* stock first: the orders' reservations must find it */
    ct_send(&T, p, "stock", "ex-stock-1", "ReceiveStock", "sku-1",
            "{\"quantity\":10}", NULL);
    ct_flush(p);
    {
        want_event w[] = {{STOCK, "StockReceived", "sku-1"}};
        CHECK(wait_events(w, 1, 120), "the stock is received");
    }

    const char *kit_meta =
        "\"metadata\":{\"user_id\":\"u-1\",\"correlation_id\":\"corr-kit-1\"}";
    const char *order_meta = "\"metadata\":{\"user_id\":\"u-9\","
                             "\"correlation_id\":\"corr-order-1\"}";
    ct_send(&T, p, "customer", "ex-reg-c1", "RegisterCustomer", "c-1",
            "{\"name\":\"Ann\",\"email\":\"ann@example.org\","
            "\"address\":\"1 Main St\"}",
            kit_meta);
    ct_send(&T, p, "customer", "ex-reg-c2", "RegisterCustomer", "c-2",
            "{\"name\":\"Bo\",\"email\":\"bo@example.org\"}", NULL);
    ct_send(&T, p, "customer", "ex-addr-c2", "UpdateCustomerProfile", "c-2",
            "{\"address\":\"5 Oak Ave\"}", NULL);
    ct_send(&T, p, "customer", "ex-move-c1", "UpdateCustomerProfile", "c-1",
            "{\"address\":\"2 Side St\"}", NULL);
    ct_send(&T, p, "customer", "ex-move-c2", "UpdateCustomerProfile", "c-2",
            "{\"address\":\"6 Elm Rd\"}", NULL);
    ct_send(&T, p, "order", "ex-place-o1", "PlaceOrder", "o-1",
            "{\"customer\":\"c-1\",\"sku\":\"sku-1\",\"quantity\":2,"
            "\"amount\":5000,\"card\":\"4242\"}",
            order_meta);
    /* over payment.lua's card limit (100000 cents): declined */
    ct_send(&T, p, "order", "ex-place-o2", "PlaceOrder", "o-2",
            "{\"customer\":\"c-2\",\"sku\":\"sku-1\",\"quantity\":3,"
            "\"amount\":250000,\"card\":\"4000\"}",
            NULL);
    /* sku-2 never received stock: the reservation fails */
    ct_send(&T, p, "order", "ex-place-o3", "PlaceOrder", "o-3",
            "{\"customer\":\"c-2\",\"sku\":\"sku-2\",\"quantity\":1,"
            "\"amount\":1000,\"card\":\"4242\"}",
            NULL);
    ct_flush(p);

    {
        want_event w[] = {
            {SHIPMENT, "WelcomeKitShipped", "kit-c-1"},
            {SHIPMENT, "WelcomeKitShipped", "kit-c-2"},
            {ORDER, "OrderConfirmed", "o-1"},
            {ORDER, "OrderCancelled", "o-2"},
            {STOCK, "StockReleased", "sku-1"},
            {ORDER, "OrderCancelled", "o-3"},
        };
        CHECK(wait_events(w, sizeof w / sizeof w[0], 300),
              "every chain reaches its last event");
    }

    /* the reactors count what the scripts decide; waiting for the counts
     * also waits for the events that react with nil (second addresses) */
    const want_counts counts[] = {
        /* first addresses of c-1 and c-2 / their second addresses */
        {"shipment", 2, 2, 2},
        /* StockReserved x2, StockReservationFailed, PaymentAccepted,
         * PaymentDeclined */
        {"order", 5, 0, 5},
        /* OrderPlaced x3, OrderCancelled with stock reserved / without */
        {"stock", 4, 1, 4},
        /* PaymentRequested x2 */
        {"payment", 2, 0, 2},
    };
    {
        long long deadline = th_now_ms() + 120000;
        while (!counts_reached(port, counts, 4) && th_now_ms() < deadline)
            th_sleep_ms(500);
        for (size_t i = 0; i < 4; i++) {
            char series[300];
            CHECK_INT(rt_reactions(port, counts[i].type, "reacted"),
                      counts[i].reacted,
                      SAY("evlua_reactions_total{type=\"%s\","
                          "outcome=\"reacted\"}",
                          counts[i].type));
            CHECK_INT(rt_reactions(port, counts[i].type, "none"),
                      counts[i].none,
                      SAY("evlua_reactions_total{type=\"%s\",outcome=\"none\"}",
                          counts[i].type));
            CHECK_INT(rt_reactions(port, counts[i].type, "parked"), 0,
                      SAY("evlua_reactions_total{type=\"%s\","
                          "outcome=\"parked\"}",
                          counts[i].type));
            snprintf(series, sizeof series,
                     "evlua_reaction_commands_total{type=\"%s\"}",
                     counts[i].type);
            CHECK_INT(rt_metric(port, series), counts[i].commands, series);
        }
    }
    {
        long long deadline = th_now_ms() + 60000;
        while (!strstr(th_readyz(port, b, sizeof b), " 200") &&
               th_now_ms() < deadline)
            th_sleep_ms(500);
        CHECK_HAS(b, " 200", "/readyz: ready");
        for (size_t i = 0; i < 4; i++) {
            char comp[128];
            snprintf(comp, sizeof comp, "\"reactions.%s\":{\"ready\":true",
                     counts[i].type);
            CHECK_HAS(b, comp, "/readyz names each reactor, ready");
        }
    }

    read_world();

    /* ---- the welcome kit ---- */
    static const char *const kit_reg[] = {
        "customer", "RegisterCustomer", "customer", "CustomerAddressChanged",
        "shipment", "ShipWelcomeKit",   "shipment", "WelcomeKitShipped",
        NULL};
    check_chain("kit c-1", "ex-reg-c1", "corr-kit-1", "u-1", kit_reg, got);
    if (got[3]) {
        CHECK_STR(th_str(got[3], "aggregate_id"), "kit-c-1", "c-1's kit");
        CHECK_STR(data_str(got[3], "customer"), "c-1", "the kit's customer");
        CHECK_STR(data_str(got[3], "address"), "1 Main St",
                  "the kit goes to the first address");
    }
    static const char *const kit_update[] = {
        "customer", "UpdateCustomerProfile",
        "customer", "CustomerAddressChanged",
        "shipment", "ShipWelcomeKit",
        "shipment", "WelcomeKitShipped",
        NULL};
    check_chain("kit c-2", "ex-addr-c2", "ex-addr-c2", NULL, kit_update, got);
    if (got[3])
        CHECK_STR(data_str(got[3], "address"), "5 Oak Ave",
                  "c-2's kit goes to its first address");
    static const char *const no_address[] = {
        "customer", "RegisterCustomer", "customer", "CustomerRegistered", NULL};
    check_chain("register c-2 without an address", "ex-reg-c2", "ex-reg-c2",
                NULL, no_address, got);
    static const char *const second_address[] = {
        "customer", "UpdateCustomerProfile", "customer",
        "CustomerAddressChanged", NULL};
    check_chain("second address of c-1", "ex-move-c1", "ex-move-c1", NULL,
                second_address, got);
    check_chain("second address of c-2", "ex-move-c2", "ex-move-c2", NULL,
                second_address, got);
    CHECK_INT(CMDS[SHIPMENT].n, 2,
              "two ShipWelcomeKit commands in all: one per customer");
    CHECK_INT(EVS[SHIPMENT].n, 2, "two WelcomeKitShipped events in all");

    /* ---- the order process ---- */
    static const char *const happy[] = {
        "order",   "PlaceOrder",     "order",   "OrderPlaced",
        "stock",   "ReserveStock",   "stock",   "StockReserved",
        "order",   "RequestPayment", "order",   "PaymentRequested",
        "payment", "Charge",         "payment", "PaymentAccepted",
        "order",   "ConfirmOrder",   "order",   "OrderConfirmed",
        NULL};
    check_chain("order o-1", "ex-place-o1", "corr-order-1", "u-9", happy, got);
    if (got[6])
        CHECK_STR(th_str(got[6], "aggregate_id"), "pay-o-1",
                  "the payment of o-1");
    if (got[9])
        CHECK_STR(data_str(got[9], "payment"), "pay-o-1",
                  "o-1 is confirmed with its payment");

    static const char *const declined[] = {
        "order",   "PlaceOrder",     "order",   "OrderPlaced",
        "stock",   "ReserveStock",   "stock",   "StockReserved",
        "order",   "RequestPayment", "order",   "PaymentRequested",
        "payment", "Charge",         "payment", "PaymentDeclined",
        "order",   "CancelOrder",    "order",   "OrderCancelled",
        "stock",   "ReleaseStock",   "stock",   "StockReleased",
        NULL};
    check_chain("order o-2 (declined)", "ex-place-o2", "ex-place-o2", NULL,
                declined, got);
    if (got[9]) {
        CHECK_HAS(data_str(got[9], "reason"), "payment declined",
                  "o-2 is cancelled because the payment was declined");
        CHECK(cJSON_IsTrue(data_item(got[9], "stockReserved")),
              "o-2's cancellation says stock was reserved");
    }
    if (got[11]) {
        CHECK_STR(data_str(got[11], "order"), "o-2", "o-2's stock released");
        CHECK_INT(cJSON_GetNumberValue(data_item(got[11], "quantity")), 3,
                  "the 3 units o-2 reserved are released");
    }

    static const char *const no_stock[] = {
        "order", "PlaceOrder",   "order", "OrderPlaced",
        "stock", "ReserveStock", "stock", "StockReservationFailed",
        "order", "CancelOrder",  "order", "OrderCancelled",
        NULL};
    check_chain("order o-3 (no stock)", "ex-place-o3", "ex-place-o3", NULL,
                no_stock, got);
    if (got[5]) {
        CHECK_STR(data_str(got[5], "reason"),
                  "out of stock: 1 wanted, 0 available",
                  "o-3 is cancelled for want of stock");
        CHECK(cJSON_IsFalse(data_item(got[5], "stockReserved")),
              "o-3's cancellation says nothing was reserved");
    }

    /* ---- every topic, whole: exactly once, nothing rejected ---- */
    for (int i = 0; i < NTYPES; i++) {
        char **ids = malloc(sizeof(char *) * (CMDS[i].n ? CMDS[i].n : 1));
        size_t n = 0, accepted = 0;
        for (size_t k = 0; k < CMDS[i].n; k++)
            ids[n++] = (char *)th_str(&CMDS[i].v[k], "id");
        CHECK_INT(ct_check_exactly_once(&EVS[i], &RES[i], ids, n), 0,
                  SAY("%s: one result per command, each event once, "
                      "sequences without gaps",
                      TYPES[i]));
        for (size_t k = 0; k < RES[i].n; k++)
            accepted += same(th_str(&RES[i].v[k], "status"), "accepted");
        CHECK_INT(accepted, RES[i].n,
                  SAY("%s: every command accepted", TYPES[i]));
        free(ids);
    }

    CHECK_INT(th_stop(pid, SIGTERM, 60), 0, "evlua run exits 0 on SIGTERM");
    if (check_failures_)
        ct_dump_log(&T, "a.log");
    rd_kafka_destroy(p);
    for (int i = 0; i < NTYPES; i++) {
        th_recs_free(&CMDS[i]);
        th_recs_free(&EVS[i]);
        th_recs_free(&RES[i]);
    }
    return check_done();
}
