/*
 * test_pg.c - the PostgreSQL edge against a real server: SQLSTATEs get
 * their class; a pipeline segment is one implicit transaction that an
 * error rolls back alone, reported with the failing statement's tag; a
 * statement that cannot be prepared fails where it is used, with the
 * server's reason, and takes no other segment down; prepared statements
 * are reused; a deferred constraint fails at the Sync; array literals
 * carry any text; the advance function refuses a checkpoint that moved;
 * a statement libpq refuses before sending it (more than 65,535
 * parameters) is that statement's permanent error, fails its segment
 * alone and leaves the connection usable.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "pg.h"
#include "svc.h"

typedef struct seen {
    int n;
    long seg[8], tag[8];
    evl_err cls[8];
    char state[8][6];
    char msg[8][256];
} seen;

static void record(void *ud, const evl_pg_failure *f)
{
    seen *s = ud;
    if (s->n == 8)
        return;
    s->seg[s->n] = f->seg;
    s->tag[s->n] = f->tag;
    s->cls[s->n] = f->cls;
    snprintf(s->state[s->n], 6, "%s", f->sqlstate);
    snprintf(s->msg[s->n], 256, "%s", f->msg);
    s->n++;
}

static long long one(evl_pg *pg, const char *sql)
{
    char err[EVL_ERRLEN];
    PGresult *res = NULL;
    if (evl_pg_query(pg, sql, 0, NULL, &res, err, sizeof err) != EVL_OK) {
        fprintf(stderr, "FAIL: %s: %s\n", sql, err);
        exit(1);
    }
    long long v = PQntuples(res) && !PQgetisnull(res, 0, 0)
                      ? strtoll(PQgetvalue(res, 0, 0), NULL, 10)
                      : -1;
    PQclear(res);
    return v;
}

static void classes(void)
{
    CHECK_INT(evl_pg_classify("40001", 1), EVL_ETRANSIENT,
              "serialization failure is transient");
    CHECK_INT(evl_pg_classify("40P01", 1), EVL_ETRANSIENT,
              "deadlock is transient");
    CHECK_INT(evl_pg_classify("08006", 1), EVL_ETRANSIENT,
              "connection failure is transient");
    CHECK_INT(evl_pg_classify("08P01", 1), EVL_EPERMANENT,
              "a protocol violation (wrong parameter count) is permanent");
    CHECK_INT(evl_pg_classify("53300", 1), EVL_ETRANSIENT,
              "too many connections is transient");
    CHECK_INT(evl_pg_classify("57P01", 1), EVL_ETRANSIENT,
              "admin shutdown is transient");
    CHECK_INT(evl_pg_classify("57014", 1), EVL_EPERMANENT,
              "a statement timeout is permanent (it would repeat)");
    CHECK_INT(evl_pg_classify("23505", 1), EVL_EPERMANENT,
              "unique violation is permanent");
    CHECK_INT(evl_pg_classify("22P02", 1), EVL_EPERMANENT,
              "bad input syntax is permanent");
    CHECK_INT(evl_pg_classify("42P01", 1), EVL_EPERMANENT,
              "undefined table is permanent");
    CHECK_INT(evl_pg_classify("23505", 0), EVL_ETRANSIENT,
              "anything on a lost connection is transient");
    CHECK_INT(evl_pg_classify("", 0), EVL_ETRANSIENT,
              "no SQLSTATE and no connection is transient");
    CHECK_INT(evl_pg_classify(NULL, 1), EVL_EPERMANENT,
              "a client-side error on a live connection is permanent");
}

static void arrays(evl_pg *pg)
{
    static const char *const odd[] = {
        "plain",    "",     "a\"b",  "back\\slash",
        "{br,ace}", "NULL", "ünï 🎉", "'; DROP TABLE x; --"};
    evl_buf b = {0};
    for (size_t i = 0; i < 8; i++)
        evl_pg_array_add(&b, odd[i], strlen(odd[i]), i == 0);
    evl_buf_putc(&b, '}');
    evl_buf_putc(&b, '\0');
    char err[EVL_ERRLEN];
    const char *vals[1] = {b.data};
    PGresult *res = NULL;
    CHECK_INT(evl_pg_query(pg, "SELECT unnest($1::text[])", 1, vals, &res, err,
                           sizeof err),
              EVL_OK, "an array literal of odd strings is accepted");
    CHECK_INT(res ? PQntuples(res) : -1, 8, "it has every element");
    for (int i = 0; res && i < PQntuples(res) && i < 8; i++)
        CHECK_STR(PQgetvalue(res, i, 0), odd[i],
                  "each element comes back verbatim");
    PQclear(res);
    evl_buf_free(&b);
}

static void pipelines(evl_pg *pg, const char *table)
{
    char err[EVL_ERRLEN], ins[256], sql[256];
    snprintf(ins, sizeof ins, "INSERT INTO %s (id, v) VALUES ($1, $2)", table);
    seen s;

    /* segment 0: fine; segment 1: ok then a bad int; segment 2: fine */
    memset(&s, 0, sizeof s);
    CHECK_INT(evl_pg_pipe_begin(pg, err, sizeof err), EVL_OK, "pipe begins");
    evl_pg_pipe_prepare(pg, ins);
    const char *a[2] = {"1", "10"}, *b[2] = {"2", "20"}, *c[2] = {"3", "x"},
               *d[2] = {"4", "40"};
    evl_pg_pipe_send(pg, ins, 2, a, 100);
    evl_pg_pipe_sync(pg, 0);
    evl_pg_pipe_send(pg, ins, 2, b, 200);
    evl_pg_pipe_send(pg, ins, 2, c, 201);
    evl_pg_pipe_send(pg, ins, 2, d, 202);
    evl_pg_pipe_sync(pg, 1);
    evl_pg_pipe_send(pg, ins, 2, d, 300);
    evl_pg_pipe_sync(pg, 2);
    CHECK_INT(evl_pg_pipe_end(pg, record, &s, err, sizeof err), EVL_EPERMANENT,
              "a pipeline with a bad statement reports a permanent error");
    CHECK_INT(s.n, 1, "exactly one segment failed");
    CHECK_INT(s.seg[0], 1, "the failed segment is named");
    CHECK_INT(s.tag[0], 201, "the failing statement is named by its tag");
    CHECK_STR(s.state[0], "22P02", "with its SQLSTATE");
    snprintf(sql, sizeof sql,
             "SELECT string_agg(id::text, ',' ORDER BY id) "
             "FROM %s",
             table);
    PGresult *res = NULL;
    evl_pg_query(pg, sql, 0, NULL, &res, err, sizeof err);
    CHECK_STR(res ? PQgetvalue(res, 0, 0) : NULL, "1,4",
              "the failed segment rolled back as a whole (2 is gone), the "
              "others committed");
    PQclear(res);

    /* a statement that cannot be prepared fails where it is used */
    memset(&s, 0, sizeof s);
    const char *bad = "INSERT INTO no_such_table_at_all VALUES ($1)";
    CHECK_INT(evl_pg_pipe_begin(pg, err, sizeof err), EVL_OK, "pipe begins");
    evl_pg_pipe_prepare(pg, bad);
    evl_pg_pipe_prepare(pg, ins);
    const char *e1[2] = {"5", "50"}, *e2[1] = {"x"};
    evl_pg_pipe_send(pg, ins, 2, e1, 1);
    evl_pg_pipe_sync(pg, 10);
    evl_pg_pipe_send(pg, bad, 1, e2, 2);
    evl_pg_pipe_sync(pg, 11);
    CHECK_INT(evl_pg_pipe_end(pg, record, &s, err, sizeof err), EVL_EPERMANENT,
              "an unpreparable statement is a permanent error");
    CHECK_INT(s.n, 1, "only its segment fails");
    CHECK_INT(s.seg[0], 11, "the segment that uses it");
    CHECK_STR(s.state[0], "42P01", "with the reason the server gave");
    CHECK_HAS(s.msg[0], "no_such_table_at_all", "naming the missing table");
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE id = 5", table);
    CHECK_INT(one(pg, sql), 1, "the other segment committed");

    /* a deferred constraint fails at the Sync */
    snprintf(sql, sizeof sql,
             "ALTER TABLE %s ADD CONSTRAINT %s_v UNIQUE (v) DEFERRABLE "
             "INITIALLY DEFERRED",
             table, table);
    CHECK_INT(evl_pg_exec(pg, sql, err, sizeof err), EVL_OK,
              "a deferred constraint is added");
    memset(&s, 0, sizeof s);
    evl_pg_pipe_begin(pg, err, sizeof err);
    evl_pg_pipe_prepare(pg, ins);
    const char *f1[2] = {"6", "60"}, *f2[2] = {"7", "60"};
    evl_pg_pipe_send(pg, ins, 2, f1, 1);
    evl_pg_pipe_send(pg, ins, 2, f2, 2);
    evl_pg_pipe_sync(pg, 20);
    CHECK_INT(evl_pg_pipe_end(pg, record, &s, err, sizeof err), EVL_EPERMANENT,
              "a deferred violation fails the segment");
    CHECK_INT(s.n, 1, "one failure");
    CHECK_INT(s.tag[0], EVL_PG_TAG_SYNC,
              "blamed on the Sync (the implicit commit), not a statement");
    CHECK_STR(s.state[0], "23505", "a unique violation");
    CHECK_INT(evl_pg_ok(pg), 1, "the connection is still usable");

    /* explicit transaction, parameter count mismatch on a prepared
     * statement is permanent, not a connection error */
    memset(&s, 0, sizeof s);
    evl_pg_pipe_begin(pg, err, sizeof err);
    evl_pg_pipe_prepare(pg, ins);
    const char *g1[1] = {"8"};
    evl_pg_pipe_send(pg, ins, 1, g1, 7);
    evl_pg_pipe_sync(pg, 30);
    CHECK_INT(evl_pg_pipe_end(pg, record, &s, err, sizeof err), EVL_EPERMANENT,
              "too few parameters is a permanent error");
    CHECK_STR(s.state[0], "08P01", "reported as the protocol violation");
    CHECK_INT(evl_pg_ok(pg), 1, "and the connection survives it");
}

/* A statement text of n parameters ($1..$n) and its values. */
static char *many_params(int n, const char ***vals)
{
    evl_buf b = {0};
    evl_buf_puts(&b, "SELECT cardinality(ARRAY[");
    for (int i = 1; i <= n; i++) {
        char p[16];
        snprintf(p, sizeof p, "%s$%d", i > 1 ? "," : "", i);
        evl_buf_puts(&b, p);
    }
    evl_buf_puts(&b, "]::text[])");
    evl_buf_putc(&b, '\0');
    *vals = malloc(sizeof(char *) * (size_t)n);
    for (int i = 0; i < n; i++)
        (*vals)[i] = "x";
    return b.data;
}

/* libpq refuses a statement of more than 65,535 parameters before it
 * sends anything, without a SQLSTATE, on a connection that is fine: that
 * statement's permanent error, not a lost connection (which would be
 * retried forever). */
static void refused(evl_pg *pg, const char *table)
{
    char err[EVL_ERRLEN], ins[256], sql[256];
    const char **vals = NULL;
    char *big = many_params(70000, &vals);
    seen s;
    snprintf(ins, sizeof ins, "INSERT INTO %s (id, v) VALUES ($1, $2)", table);

    CHECK_INT(evl_pg_query(pg, big, 70000, vals, NULL, err, sizeof err),
              EVL_EPERMANENT,
              "a query with 70,000 parameters is a permanent error");
    CHECK_HAS(err, "65535", "with libpq's reason");
    CHECK_INT(evl_pg_ok(pg), 1, "the connection is still usable after it");

    /* the projector's shapes: one explicit transaction (BEGIN,
     * statements, COMMIT, Sync; after a failure the caller rolls back),
     * and implicit transactions, one per segment; with the statement
     * prepared and unnamed */
    for (int prepared = 0; prepared < 2; prepared++) {
        /* v is unique (a deferred constraint of pipelines()) */
        const char *a[2] = {prepared ? "11" : "21", prepared ? "11" : "21"},
                   *b[2] = {prepared ? "12" : "22", prepared ? "12" : "22"},
                   *c[2] = {prepared ? "13" : "23", prepared ? "13" : "23"},
                   *d[2] = {prepared ? "14" : "24", prepared ? "14" : "24"};
        memset(&s, 0, sizeof s);
        CHECK_INT(evl_pg_pipe_begin(pg, err, sizeof err), EVL_OK,
                  "pipe begins");
        evl_pg_pipe_prepare(pg, ins);
        if (prepared)
            evl_pg_pipe_prepare(pg, big);
        evl_pg_pipe_prepare(pg, "BEGIN");
        evl_pg_pipe_prepare(pg, "COMMIT");
        evl_pg_pipe_send(pg, "BEGIN", 0, NULL, 0);
        evl_pg_pipe_send(pg, ins, 2, a, 1);
        evl_pg_pipe_send(pg, big, 70000, vals, 2);
        evl_pg_pipe_send(pg, ins, 2, b, 3);
        evl_pg_pipe_send(pg, "COMMIT", 0, NULL, 4);
        evl_pg_pipe_sync(pg, 40);
        CHECK_INT(evl_pg_pipe_end(pg, record, &s, err, sizeof err),
                  EVL_EPERMANENT,
                  "a transaction with a refused statement fails "
                  "permanently, not as a lost connection");
        CHECK_INT(s.n, 1, "one failure");
        CHECK_INT(s.seg[0], 40, "its segment is named");
        CHECK_INT(s.tag[0], 2, "blaming the refused statement by its tag");
        CHECK_INT(s.cls[0], EVL_EPERMANENT, "as a permanent error");
        CHECK_HAS(s.msg[0], "65535", "with libpq's reason");
        CHECK_HAS(s.msg[0], "refused", "saying libpq refused it");
        CHECK_INT(evl_pg_ok(pg), 1, "the connection is still usable");
        CHECK_INT(PQtransactionStatus(evl_pg_conn(pg)), PQTRANS_INERROR,
                  "the transaction was aborted: its COMMIT did not run");
        CHECK_INT(evl_pg_exec(pg, "ROLLBACK", err, sizeof err), EVL_OK,
                  "it rolls back");

        memset(&s, 0, sizeof s);
        evl_pg_pipe_begin(pg, err, sizeof err);
        evl_pg_pipe_prepare(pg, ins);
        if (prepared)
            evl_pg_pipe_prepare(pg, big);
        evl_pg_pipe_send(pg, ins, 2, c, 5);
        evl_pg_pipe_send(pg, big, 70000, vals, 6);
        evl_pg_pipe_send(pg, ins, 2, c, 7);
        evl_pg_pipe_sync(pg, 41);
        evl_pg_pipe_send(pg, big, 70000, vals, 8);
        evl_pg_pipe_sync(pg, 42);
        evl_pg_pipe_send(pg, ins, 2, d, 9);
        evl_pg_pipe_sync(pg, 43);
        CHECK_INT(evl_pg_pipe_end(pg, record, &s, err, sizeof err),
                  EVL_EPERMANENT, "implicit transactions: permanent too");
        CHECK_INT(s.n, 2, "both segments with a refused statement fail");
        CHECK_INT(s.seg[0], 41, "the first is named");
        CHECK_INT(s.tag[0], 6, "blaming its refused statement");
        CHECK_INT(s.seg[1], 42, "the second is named");
        CHECK_INT(s.tag[1], 8, "blaming its refused statement");
        const char *at = strstr(s.msg[1], "65535");
        CHECK(at && !strstr(at + 5, "65535"),
              "each message gives libpq's reason once");
        CHECK_INT(evl_pg_ok(pg), 1, "the connection is still usable");
        CHECK_INT(PQtransactionStatus(evl_pg_conn(pg)), PQTRANS_IDLE,
                  "and no transaction is left open");

        snprintf(sql, sizeof sql,
                 "SELECT string_agg(id::text, ',' ORDER BY id) FROM %s "
                 "WHERE id > 10",
                 table);
        PGresult *res = NULL;
        evl_pg_query(pg, sql, 0, NULL, &res, err, sizeof err);
        CHECK_STR(res ? PQgetvalue(res, 0, 0) : NULL, prepared ? "14,24" : "24",
                  "the failed transactions rolled back whole (the "
                  "statements before and after a refused one are gone), "
                  "the good one committed");
        PQclear(res);
    }
    free(big);
    free(vals);
}

static void advance(evl_pg *pg)
{
    char err[EVL_ERRLEN];
    const char *v1[7] = {"t_proj", "{agg}", "{a1}", "{-1}",
                         "{f}",    "{3}",   "{f}"};
    CHECK_INT(
        evl_pg_query(pg, EVL_PG_ADVANCE_SQL, 7, v1, NULL, err, sizeof err),
        EVL_OK, "a new checkpoint is written");
    const char *v2[7] = {"t_proj", "{agg}", "{a1}", "{3}", "{f}", "{5}", "{f}"};
    CHECK_INT(
        evl_pg_query(pg, EVL_PG_ADVANCE_SQL, 7, v2, NULL, err, sizeof err),
        EVL_OK, "it moves from the value read");
    CHECK_INT(
        evl_pg_query(pg, EVL_PG_ADVANCE_SQL, 7, v2, NULL, err, sizeof err),
        EVL_ETRANSIENT, "a stale previous value is refused (40001)");
    CHECK_HAS(err, "changed concurrently", "saying why");
    CHECK_INT(
        evl_pg_query(pg, EVL_PG_ADVANCE_SQL, 7, v1, NULL, err, sizeof err),
        EVL_ETRANSIENT, "so is inserting a row that exists");
    CHECK_INT(one(pg, "SELECT sequence FROM evlua_checkpoints WHERE "
                      "projection = 't_proj'"),
              5, "the refused writes changed nothing");
}

int main(void)
{
    char conninfo[1024], full[1200], err[EVL_ERRLEN], table[64], sql[256];
    svc_pg_conninfo(conninfo, sizeof conninfo);
    snprintf(table, sizeof table, "t_pg_%ld", (long)getpid());
    snprintf(full, sizeof full, "%s options='-csearch_path=%s'", conninfo,
             table);
    classes();

    evl_pg *pg = NULL;
    CHECK_INT(evl_pg_open("host='unterminated", NULL, &pg, err, sizeof err),
              EVL_EPERMANENT, "a conninfo libpq cannot parse is permanent");
    CHECK_INT(evl_pg_open("host=127.0.0.1 port=1 connect_timeout=2", NULL, &pg,
                          err, sizeof err),
              EVL_ETRANSIENT, "a server that is not there is transient");

    if (evl_pg_open(conninfo, "test", &pg, err, sizeof err) != EVL_OK) {
        fprintf(stderr, "FAIL: %s\n", err);
        return 1;
    }
    snprintf(sql, sizeof sql,
             "SET client_min_messages = warning; DROP SCHEMA IF EXISTS %s "
             "CASCADE; CREATE SCHEMA %s",
             table, table);
    CHECK_INT(evl_pg_exec(pg, sql, err, sizeof err), EVL_OK, "schema");
    evl_pg_close(pg);
    pg = NULL;
    if (evl_pg_open(full, "test", &pg, err, sizeof err) != EVL_OK) {
        fprintf(stderr, "FAIL: %s\n", err);
        return 1;
    }
    CHECK_INT(evl_pg_create_tables(pg, err, sizeof err), EVL_OK,
              "evlua's tables are created");
    CHECK_INT(evl_pg_create_tables(pg, err, sizeof err), EVL_OK,
              "and creating them again is harmless");
    snprintf(sql, sizeof sql, "CREATE TABLE %s (id int PRIMARY KEY, v int)",
             table);
    CHECK_INT(evl_pg_exec(pg, sql, err, sizeof err), EVL_OK, "test table");
    CHECK_INT(evl_pg_exec(pg, "SELECT 1/0", err, sizeof err), EVL_EPERMANENT,
              "division by zero is permanent");
    CHECK_HAS(err, "22012", "the message carries the SQLSTATE");

    arrays(pg);
    pipelines(pg, table);
    refused(pg, table);
    advance(pg);

    snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", table);
    evl_pg_exec(pg, sql, err, sizeof err);
    evl_pg_close(pg);
    return check_done();
}
