/*
 * cli_repl_int.h - what `evlua repl`'s files share: cli_repl.c (the
 * lines, the in-memory aggregates, reactions and :follow) and
 * cli_repl_db.c (:db, the only part that talks to PostgreSQL).
 *
 * Uses luahost. Private to the REPL.
 */
#ifndef EVL_CLI_REPL_INT_H
#define EVL_CLI_REPL_INT_H

#include <stddef.h>

#include "luahost.h"

/* What :db works on: the session's events and the scripts. */
typedef struct evl_repl_db {
    const char *conninfo; /* the config's postgres (NULL: none) */
    evl_luahost *host;
    const char *session; /* every event envelope of the session in order,
                            one JSON text per line */
    size_t session_len, nevents;
    evl_luahost_stmts *stmts; /* scratch for the statements */
} evl_repl_db;

/* :db [QUERY]: every event of the session through every projection that
 * handles it, in order (each projection's schema first), then QUERY
 * (may be ""), printing rows, counts and errors to stdout; all in one
 * transaction that is rolled back. */
void evl_repl_db_run(const evl_repl_db *db, const char *query);

#endif
