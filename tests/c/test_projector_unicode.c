/*
 * test_projector_unicode.c - what events say lands verbatim: SQL
 * injection strings, quotes, backslashes, braces, placeholders, emoji
 * with joiners, right-to-left text, combining marks, line separators,
 * control characters and a 200 kB string, as data and as aggregate ids
 * (which also travel through the checkpoint statement's arrays). A
 * payload with bytes that are not UTF-8 is parked, its bytes kept in hex.
 */
#include "projtest.h"

static pt T;
static char topic[128];

static const char *const odd[] = {
    "Robert'); DROP TABLE customers;--",
    "$1 $2 %s %n \\x00 \\\\",
    "\"quoted\" and \\back\\slash\\",
    "{curly,\"braces\"}",
    "NULL",
    "",
    " leading and trailing ",
    "emoji \xf0\x9f\x8e\x89 family "
    "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7",
    "RTL \xd7\xa2\xd7\x91\xd7\xa8\xd7\x99\xd7\xaa \xd8\xa7\xd9\x84\xd8\xb9"
    "\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9",
    "combining e\xcc\x81 vs \xc3\xa9",
    "line\xe2\x80\xa8separator\xe2\x80\xa9paragraph",
    "tab\there\nnewline\rcr\x01\x1f control",
    "clef \xf0\x9d\x84\x9e max \xf4\x8f\xbf\xbf",
    "';SELECT pg_sleep(10);--",
};
#define NODD (sizeof odd / sizeof odd[0])

/* s as a JSON string literal */
static char *json_str(const char *s)
{
    size_t n = strlen(s);
    char *o = malloc(6 * n + 3), *p = o;
    *p++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20) {
            p += sprintf(p, "\\u%04x", c);
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    *p = '\0';
    return o;
}

static const char *row_name(const char *id, char *buf, size_t n)
{
    const char *vals[1] = {id};
    PGresult *res =
        PQexecParams(T.db, "SELECT name FROM customers WHERE id = $1", 1, NULL,
                     vals, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        snprintf(buf, n, "%s", PQgetvalue(res, 0, 0));
    else
        snprintf(buf, n, "(no row)");
    PQclear(res);
    return buf;
}

int main(void)
{
    pt_init(&T, "proj_unicode");
    snprintf(topic, sizeof topic, "%s.events", T.name);
    pt_topic(&T, topic, 2);
    char msg[256];
    pt_config_examples(&T, topic, NULL);
    pt_producer(&T);

    size_t biglen = 200 * 1024;
    char *big = malloc(biglen + 1);
    for (size_t i = 0; i < biglen; i++)
        big[i] = "abc\xc3\xa9'\"\\{},"[i % 12];
    /* keep UTF-8 whole: é is 2 bytes at positions 3,4 of each 12 */
    big[biglen] = '\0';

    pt_begin(&T);
    for (size_t i = 0; i < NODD; i++) {
        /* the odd string as name, under an id that is odd too */
        char *name = json_str(odd[i]);
        char id[512];
        snprintf(id, sizeof id, "id-%zu %s", i, odd[i]);
        char *idj = json_str(id);
        char data[2048];
        snprintf(data, sizeof data, "{\"name\":%s,\"email\":\"e@x.io\"}", name);
        pt_event(&T, topic, "customer", idj, id, 1, "CustomerRegistered", data);
        free(name);
        free(idj);
    }
    char *bigj = json_str(big);
    char *data = malloc(strlen(bigj) + 64);
    sprintf(data, "{\"name\":%s,\"email\":\"e@x.io\"}", bigj);
    pt_ev(&T, topic, "big", 1, "CustomerRegistered", data);
    free(data);
    free(bigj);
    const char bad[] = "{\"type\":\"CustomerRegistered\",\"aggregate_type\":"
                       "\"customer\",\"aggregate_id\":\"bad\",\"sequence\":1,"
                       "\"data\":{\"name\":\"\xff\xfe\"}}";
    pt_raw(&T, topic, "bad", "CustomerRegistered", "customer", bad,
           sizeof bad - 1);
    pt_commit(&T);

    evl_projector_stats st;
    memset(&st, 0, sizeof st);
    CHECK_INT(pt_catch_up(&T, "customer_profile", NULL, &st), 0,
              "the projector exits 0");
    CHECK_INT(st.applied, (long long)NODD + 1, "every odd event is applied");
    CHECK_INT(st.parked, 1, "the one that is not UTF-8 is parked");

    char got[4096];
    for (size_t i = 0; i < NODD; i++) {
        char id[512];
        snprintf(id, sizeof id, "id-%zu %s", i, odd[i]);
        snprintf(msg, sizeof msg, "odd string %zu lands verbatim", i);
        CHECK_STR(row_name(id, got, sizeof got), odd[i], msg);
    }
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM customers"),
              (long long)NODD + 1, "nothing else was created (or dropped)");
    CHECK_INT(pt_long(&T, "SELECT count(*) FROM evlua_checkpoints WHERE "
                          "aggregate_id LIKE 'id-%%' AND sequence = 1"),
              (long long)NODD, "every odd id has its checkpoint");
    const char *vals[1] = {"big"};
    PGresult *res =
        PQexecParams(T.db, "SELECT name FROM customers WHERE id = $1", 1, NULL,
                     vals, NULL, NULL, 0);
    CHECK(PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), big) == 0,
          "the 200 kB string lands verbatim");
    PQclear(res);
    CHECK_HAS(pt_text(&T, got, sizeof got,
                      "SELECT left(event, 40) FROM evlua_parked WHERE "
                      "aggregate_id = 'bad'"),
              "(not UTF-8; hex) 7b22",
              "bytes that are not UTF-8 are kept in hex");
    CHECK_HAS(pt_text(&T, got, sizeof got,
                      "SELECT error FROM evlua_parked WHERE aggregate_id = "
                      "'bad'"),
              "UTF-8", "and the error says why");
    free(big);

    pt_exec(&T, "DROP SCHEMA %s CASCADE", T.name);
    pt_done(&T);
    return check_done();
}
