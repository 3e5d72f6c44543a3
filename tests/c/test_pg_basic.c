/*
 * test_pg_basic.c - the PostgreSQL harness is a real server with real
 * transactions: a rolled-back transaction leaves nothing behind; a
 * committed one is visible from a second connection (and not before the
 * commit).
 */
#include <stdio.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "check.h"
#include "svc.h"

static PGconn *connect_(const char *conninfo)
{
    PGconn *conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "FAIL: PQconnectdb: %s", PQerrorMessage(conn));
        exit(1);
    }
    return conn;
}

/* Run sql, expect success; returns the first column of the first row as
 * an integer, or -1 when there is none. */
static long exec_(PGconn *conn, const char *sql)
{
    long v = -1;
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "FAIL: PQexec(\"%s\"): %s", sql,
                PQresultErrorMessage(res));
        exit(1);
    }
    if (st == PGRES_TUPLES_OK && PQntuples(res) > 0)
        v = atol(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

int main(void)
{
    char conninfo[1024], sql[512], table[64];
    svc_pg_conninfo(conninfo, sizeof conninfo);
    PGconn *a = connect_(conninfo), *b = connect_(conninfo);
    snprintf(table, sizeof table, "evlua_test_basic_%ld", (long)getpid());

    snprintf(sql, sizeof sql, "CREATE TABLE %s (id int PRIMARY KEY, v text)",
             table);
    exec_(a, sql);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
    char count_sql[512];
    snprintf(count_sql, sizeof count_sql, "%s", sql);

    exec_(a, "BEGIN");
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (1, 'rolled back')",
             table);
    exec_(a, sql);
    CHECK_INT(exec_(a, count_sql), 1,
              "the inserting transaction sees its own row");
    exec_(a, "ROLLBACK");
    CHECK_INT(exec_(a, count_sql), 0,
              "a rolled-back insert leaves nothing (same connection)");
    CHECK_INT(exec_(b, count_sql), 0,
              "a rolled-back insert leaves nothing (second connection)");

    exec_(a, "BEGIN");
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES (2, 'committed')", table);
    exec_(a, sql);
    CHECK_INT(exec_(b, count_sql), 0,
              "an uncommitted row is invisible to a second connection");
    exec_(a, "COMMIT");
    CHECK_INT(exec_(b, count_sql), 1,
              "a committed row is visible from a second connection");
    snprintf(sql, sizeof sql, "SELECT id FROM %s WHERE v = 'committed'", table);
    CHECK_INT(exec_(b, sql), 2, "the second connection reads its content");

    snprintf(sql, sizeof sql, "DROP TABLE %s", table);
    exec_(a, sql);
    PQfinish(a);
    PQfinish(b);
    return check_done();
}
