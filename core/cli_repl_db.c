/*
 * cli_repl_db.c - the REPL's :db: the session's events through the
 * projections into PostgreSQL, then the user's query, all rolled back
 * (cli_repl_int.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cli_repl_int.h"
#include "json.h"
#include "pg.h"

static void no_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* "relation exists, skipping" is not the REPL's news */
}

/* The type of the event envelope ev (JSON), into type; "" when unreadable. */
static void event_type(const char *ev, size_t len, evl_buf *scratch, char *type,
                       size_t n)
{
    char err[EVL_ERRLEN];
    evl_json_member m = {.name = "type"};
    int obj = 0;
    type[0] = '\0';
    if (evl_json_members(ev, len, &m, 1, scratch, &obj, err, sizeof err) ==
            EVL_OK &&
        obj && m.type == EVL_JSON_STRING)
        snprintf(type, n, "%s", scratch->data + m.off);
}

/* Run one projection statement under a savepoint; print its outcome
 * unless quiet. Returns 1 when it worked. Errors of the savepoint
 * statements themselves show in the statement's own result. */
static int db_statement(evl_pg *pg, const char *proj,
                        const evl_luahost_stmt *st, int quiet)
{
    const char *vals[256];
    size_t np = st->nparams > 256 ? 256 : st->nparams;
    char err[EVL_ERRLEN];
    PGresult *res;
    int ok;
    for (size_t j = 0; j < np; j++)
        vals[j] = st->params[j].text;
    char *sql = evl_xmalloc(st->sql_len + 1);
    memcpy(sql, st->sql, st->sql_len);
    sql[st->sql_len] = '\0';
    evl_pg_exec(pg, "SAVEPOINT repl", err, sizeof err);
    ok = evl_pg_query_result(pg, sql, (int)np, vals, &res, err, sizeof err) ==
         EVL_OK;
    if (ok) {
        evl_pg_exec(pg, "RELEASE SAVEPOINT repl", err, sizeof err);
    } else {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        printf("  %s: ERROR %s: %s", proj, state ? state : "",
               PQresultErrorMessage(res));
        evl_pg_exec(pg, "ROLLBACK TO SAVEPOINT repl", err, sizeof err);
    }
    if (ok && !quiet)
        printf("  %s: %s rows affected\n", proj,
               *PQcmdTuples(res) ? PQcmdTuples(res) : "0");
    PQclear(res);
    free(sql);
    return ok;
}

static void print_rows(PGresult *res)
{
    int nf = PQnfields(res), nt = PQntuples(res);
    for (int f = 0; f < nf; f++)
        printf("%s%s", f ? " | " : "  ", PQfname(res, f));
    putchar('\n');
    for (int t = 0; t < nt; t++) {
        for (int f = 0; f < nf; f++)
            printf("%s%s", f ? " | " : "  ",
                   PQgetisnull(res, t, f) ? "NULL" : PQgetvalue(res, t, f));
        putchar('\n');
    }
    printf("  (%d row%s)\n", nt, nt == 1 ? "" : "s");
}

/* Create projection p's schema (before its first event). */
static void db_schema(evl_pg *pg, const evl_luahost_projection *p)
{
    char err[EVL_ERRLEN];
    for (size_t k = 0; k < p->nschema; k++) {
        PGresult *res;
        evl_pg_exec_result(pg, p->schema[k], &res, err, sizeof err);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            printf("  %s schema: %s", p->name, PQresultErrorMessage(res));
        PQclear(res);
    }
}

/* Every event of the session that projection p handles, through p, in
 * order; then a line of counts (when it handled any). */
static void db_project(evl_pg *pg, const evl_repl_db *db,
                       const evl_luahost_projection *p, evl_buf *scratch)
{
    char err[EVL_ERRLEN], type[256];
    long stmts = 0, failed = 0;
    int schema_done = 0;
    const char *ev = db->session, *end = ev + db->session_len;
    for (; ev < end;) {
        const char *nl = memchr(ev, '\n', (size_t)(end - ev));
        size_t len = (size_t)(nl - ev);
        event_type(ev, len, scratch, type, sizeof type);
        if (!evl_luahost_projection_handles(p, type)) {
            ev = nl + 1;
            continue;
        }
        if (!schema_done)
            db_schema(pg, p);
        schema_done = 1;
        if (evl_luahost_project(db->host, p->name, ev, len, db->stmts, err,
                                sizeof err) != EVL_OK) {
            printf("  %s: FAILED on %s: %s\n", p->name, type, err);
            failed++;
            ev = nl + 1;
            continue;
        }
        for (size_t k = 0; k < db->stmts->n; k++) {
            stmts++;
            if (!db_statement(pg, p->name, &db->stmts->stmts[k], 1))
                failed++;
        }
        ev = nl + 1;
    }
    if (schema_done)
        printf("  %s: %ld statement%s, %ld failed\n", p->name, stmts,
               stmts == 1 ? "" : "s", failed);
}

/* QUERY of :db: its rows, its command status or its error. */
static void db_query(evl_pg *pg, const char *query)
{
    char err[EVL_ERRLEN];
    PGresult *res;
    evl_pg_exec_result(pg, query, &res, err, sizeof err);
    ExecStatusType rs = PQresultStatus(res);
    if (rs == PGRES_TUPLES_OK)
        print_rows(res);
    else if (rs == PGRES_COMMAND_OK)
        printf("  %s\n", PQcmdStatus(res));
    else
        printf("  ERROR: %s", PQresultErrorMessage(res));
    PQclear(res);
}

void evl_repl_db_run(const evl_repl_db *db, const char *query)
{
    char err[EVL_ERRLEN];
    evl_pg *pg = NULL;
    evl_buf scratch = {0};
    if (!db->conninfo) {
        printf("no database configured (postgres in the config, or "
               "EVLUA_PG_CONNINFO)\n");
        return;
    }
    if (db->nevents == 0 && !*query) {
        printf("no events yet: run a command first (or give a query)\n");
        return;
    }
    if (evl_pg_open(db->conninfo, "evlua-repl", &pg, err, sizeof err) !=
        EVL_OK) {
        printf("%s\n", err);
        return;
    }
    PQsetNoticeProcessor(evl_pg_conn(pg), no_notice, NULL);
    evl_pg_exec(pg, "BEGIN", err, sizeof err);
    for (size_t i = 0; i < evl_luahost_nprojections(db->host); i++)
        db_project(pg, db, evl_luahost_projection_at(db->host, i), &scratch);
    if (*query)
        db_query(pg, query);
    evl_pg_exec(pg, "ROLLBACK", err, sizeof err);
    printf("  (rolled back)\n");
    evl_pg_close(pg);
    evl_buf_free(&scratch);
}
