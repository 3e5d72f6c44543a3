/*
 * parked.c - list, retry and drop parked events (see parked.h).
 *
 * Retry runs without savepoints (the projector's reasoning: no
 * subtransaction cliff): all events in one transaction; when event k
 * fails, roll back and apply only the events before k, which are known to
 * succeed, in a second transaction.
 */
#include "parked.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

static void rollback(evl_pg *pg)
{
    char err[EVL_ERRLEN];
    if (evl_pg_ok(pg) && PQtransactionStatus(evl_pg_conn(pg)) != PQTRANS_IDLE)
        evl_pg_exec(pg, "ROLLBACK", err, sizeof err);
}

evl_err evl_parked_list(evl_pg *pg, const char *projection, FILE *out,
                        long long *naggregates, char *err, size_t errlen)
{
    evl_err e = evl_pg_create_tables(pg, err, errlen);
    if (e != EVL_OK)
        return e;
    const char *vals[1] = {projection};
    PGresult *res = NULL;
    e = evl_pg_query(
        pg,
        "SELECT projection, aggregate_type, aggregate_id, count(*), "
        "min(sequence), max(sequence), "
        "to_char(min(parked_at) AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "(array_agg(topic || '[' || partition || ']@' || \"offset\" "
        "ORDER BY id))[1], (array_agg(error ORDER BY id))[1] "
        "FROM evlua_parked WHERE $1::text IS NULL OR projection = $1 "
        "GROUP BY 1, 2, 3 ORDER BY 1, min(id)",
        1, vals, &res, err, errlen);
    if (e != EVL_OK)
        return e;
    int n = PQntuples(res);
    for (int r = 0; r < n; r++) {
        fprintf(out, "%s %s/%s: %s event%s", PQgetvalue(res, r, 0),
                PQgetvalue(res, r, 1), PQgetvalue(res, r, 2),
                PQgetvalue(res, r, 3),
                strcmp(PQgetvalue(res, r, 3), "1") == 0 ? "" : "s");
        if (!PQgetisnull(res, r, 4))
            fprintf(out, ", sequences %s..%s", PQgetvalue(res, r, 4),
                    PQgetvalue(res, r, 5));
        fprintf(out, ", parked since %s, first at %s\n  error: %s\n",
                PQgetvalue(res, r, 6), PQgetvalue(res, r, 7),
                PQgetvalue(res, r, 8));
    }
    if (naggregates)
        *naggregates = n;
    PQclear(res);
    return EVL_OK;
}

/* The aggregate types with parked events under (projection, id). */
static evl_err types_of(evl_pg *pg, const char *projection, const char *type,
                        const char *id, PGresult **out, char *err,
                        size_t errlen)
{
    const char *vals[3] = {projection, type, id};
    evl_err e = evl_pg_query(pg,
                             "SELECT DISTINCT aggregate_type FROM "
                             "evlua_parked WHERE projection = $1 AND "
                             "($2::text IS NULL OR aggregate_type = $2) AND "
                             "aggregate_id = $3 ORDER BY 1",
                             3, vals, out, err, errlen);
    if (e == EVL_OK && PQntuples(*out) == 0) {
        PQclear(*out);
        *out = NULL;
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "projection %s has no parked events for aggregate "
                          "%s%s%s",
                          projection, type ? type : "", type ? "/" : "", id);
    }
    return e;
}

/* Lock the checkpoint row of the aggregate (creating it when missing, so
 * that a projector's insert of it conflicts) and return its sequence. */
static evl_err lock_checkpoint(evl_pg *pg, const char *projection,
                               const char *type, const char *id, long long *seq,
                               char *err, size_t errlen)
{
    const char *vals[3] = {projection, type, id};
    evl_err e = evl_pg_query(
        pg,
        "INSERT INTO evlua_checkpoints (projection, aggregate_type, "
        "aggregate_id, sequence, parked) VALUES ($1, $2, $3, 0, true) "
        "ON CONFLICT DO NOTHING",
        3, vals, NULL, err, errlen);
    if (e != EVL_OK)
        return e;
    PGresult *res = NULL;
    e = evl_pg_query(pg,
                     "SELECT sequence FROM evlua_checkpoints WHERE "
                     "projection = $1 AND aggregate_type = $2 AND "
                     "aggregate_id = $3 FOR UPDATE",
                     3, vals, &res, err, errlen);
    if (e != EVL_OK)
        return e;
    *seq = PQntuples(res) ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    return EVL_OK;
}

static evl_err set_checkpoint(evl_pg *pg, const char *projection,
                              const char *type, const char *id, long long seq,
                              int parked, char *err, size_t errlen)
{
    char s[24];
    snprintf(s, sizeof s, "%lld", seq);
    const char *vals[5] = {projection, type, id, s, parked ? "t" : "f"};
    return evl_pg_query(pg,
                        "UPDATE evlua_checkpoints SET sequence = $4, parked "
                        "= $5 WHERE projection = $1 AND aggregate_type = $2 "
                        "AND aggregate_id = $3",
                        5, vals, NULL, err, errlen);
}

/* Run the statements of one event. EVL_EPERMANENT with the reason in
 * why when the event fails (a Lua or SQL error); other classes are
 * database trouble (in err). */
static evl_err run_event(evl_pg *pg, evl_luahost *host, const char *projection,
                         const char *event, evl_luahost_stmts *st, char *why,
                         size_t whylen, char *err, size_t errlen)
{
    if (evl_luahost_project(host, projection, event, strlen(event), st, why,
                            whylen) != EVL_OK)
        return EVL_EPERMANENT;
    for (size_t i = 0; i < st->n; i++) {
        const evl_luahost_stmt *s = &st->stmts[i];
        const char **vals = evl_xmalloc(sizeof(char *) * (s->nparams + 1));
        for (size_t k = 0; k < s->nparams; k++)
            vals[k] =
                s->params[k].type == EVL_PARAM_NULL ? NULL : s->params[k].text;
        evl_err e =
            evl_pg_query(pg, s->sql, (int)s->nparams, vals, NULL, why, whylen);
        free(vals);
        if (e == EVL_ETRANSIENT) {
            (void)evl_seterr(err, errlen, EVL_EPERMANENT, "%s", why);
            return EVL_ETRANSIENT;
        }
        if (e != EVL_OK)
            return EVL_EPERMANENT;
    }
    return EVL_OK;
}

/* One attempt at the parked events of (projection, type, id); upto >= 0:
 * apply only the first upto events (the second pass). Sets *failed_at to
 * the index of the first failing event (or -1). */
static evl_err retry_pass(evl_pg *pg, evl_luahost *host, const char *projection,
                          const char *type, const char *id, long upto,
                          long *failed_at, evl_parked_result *r, char *err,
                          size_t errlen)
{
    evl_luahost_stmts st = {0};
    PGresult *rows = NULL;
    long long ckpt = 0;
    char why[EVL_ERRLEN] = "";
    *failed_at = -1;
    evl_err e = evl_pg_exec(pg, "BEGIN", err, errlen);
    if (e == EVL_OK)
        e = lock_checkpoint(pg, projection, type, id, &ckpt, err, errlen);
    const char *vals[3] = {projection, type, id};
    if (e == EVL_OK)
        e = evl_pg_query(pg,
                         "SELECT id, sequence, event FROM evlua_parked "
                         "WHERE projection = $1 AND aggregate_type = $2 AND "
                         "aggregate_id = $3 ORDER BY id FOR UPDATE",
                         3, vals, &rows, err, errlen);
    if (e != EVL_OK)
        goto out;
    long n = PQntuples(rows), k = 0;
    long long last = ckpt;
    long applied = 0, obsolete = 0;
    for (; k < n && (upto < 0 || k < upto); k++) {
        long long seq = PQgetisnull(rows, k, 1)
                            ? -1
                            : strtoll(PQgetvalue(rows, k, 1), NULL, 10);
        if (seq >= 0 && seq <= last) {
            obsolete++;
            continue;
        }
        e = run_event(pg, host, projection, PQgetvalue(rows, k, 2), &st, why,
                      sizeof why, err, errlen);
        if (e == EVL_EPERMANENT) {
            *failed_at = k;
            e = EVL_OK;
            break;
        }
        if (e != EVL_OK)
            goto out;
        applied++;
        if (seq > last)
            last = seq;
    }
    if (*failed_at >= 0) {
        /* this transaction may be aborted: the caller redoes [0, k) */
        rollback(pg);
        snprintf(r->error, sizeof r->error, "%s", why);
        r->failed_sequence = PQgetisnull(rows, k, 1)
                                 ? -1
                                 : strtoll(PQgetvalue(rows, k, 1), NULL, 10);
        goto out;
    }
    /* remove what was done (rows [0, k)), record the error of row k */
    char first_left[24] = "";
    if (k < n)
        snprintf(first_left, sizeof first_left, "%s", PQgetvalue(rows, k, 0));
    const char *dv[4] = {projection, type, id, k < n ? first_left : NULL};
    e = evl_pg_query(pg,
                     "DELETE FROM evlua_parked WHERE projection = $1 AND "
                     "aggregate_type = $2 AND aggregate_id = $3 AND "
                     "($4::bigint IS NULL OR id < $4::bigint)",
                     4, dv, NULL, err, errlen);
    if (e == EVL_OK && k < n && *r->error) {
        const char *uv[2] = {first_left, r->error};
        e = evl_pg_query(pg,
                         "UPDATE evlua_parked SET error = $2 WHERE id = "
                         "$1::bigint",
                         2, uv, NULL, err, errlen);
    }
    if (e == EVL_OK)
        e = set_checkpoint(pg, projection, type, id, last, k < n, err, errlen);
    if (e == EVL_OK)
        e = evl_pg_exec(pg, "COMMIT", err, errlen);
    if (e == EVL_OK) {
        r->applied += applied;
        r->obsolete += obsolete;
        r->remaining += n - k;
        r->checkpoint = last;
    }
out:
    if (e != EVL_OK)
        rollback(pg);
    PQclear(rows);
    evl_luahost_stmts_free(&st);
    return e;
}

evl_err evl_parked_retry(evl_pg *pg, evl_luahost *host, const char *projection,
                         const char *aggregate_type, const char *aggregate_id,
                         evl_parked_result *out, char *err, size_t errlen)
{
    PGresult *types = NULL;
    evl_parked_result r;
    memset(&r, 0, sizeof r);
    r.failed_sequence = -1;
    if (!evl_luahost_projection_get(host, projection))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "no projection script has name %s", projection);
    evl_err e = evl_pg_create_tables(pg, err, errlen);
    if (e == EVL_OK)
        e = types_of(pg, projection, aggregate_type, aggregate_id, &types, err,
                     errlen);
    for (int t = 0; e == EVL_OK && t < PQntuples(types); t++) {
        const char *type = PQgetvalue(types, t, 0);
        long failed_at = -1;
        e = retry_pass(pg, host, projection, type, aggregate_id, -1, &failed_at,
                       &r, err, errlen);
        if (e == EVL_OK && failed_at >= 0) {
            long again = -1;
            char keep[EVL_ERRLEN];
            snprintf(keep, sizeof keep, "%s", r.error);
            e = retry_pass(pg, host, projection, type, aggregate_id, failed_at,
                           &again, &r, err, errlen);
            snprintf(r.error, sizeof r.error, "%s", keep);
        }
    }
    PQclear(types);
    if (e == EVL_OK) {
        char a[24], rem[24];
        snprintf(a, sizeof a, "%lld", r.applied);
        snprintf(rem, sizeof rem, "%lld", r.remaining);
        evl_log(EVL_LOG_INFO, "parked events retried", "projection", projection,
                "aggregate_id", aggregate_id, "applied", a, "remaining", rem,
                "error", r.remaining ? r.error : NULL, NULL);
        *out = r;
    }
    return e;
}

evl_err evl_parked_drop(evl_pg *pg, const char *projection,
                        const char *aggregate_type, const char *aggregate_id,
                        long long *dropped, char *err, size_t errlen)
{
    PGresult *types = NULL;
    long long total = 0;
    evl_err e = evl_pg_create_tables(pg, err, errlen);
    if (e == EVL_OK)
        e = types_of(pg, projection, aggregate_type, aggregate_id, &types, err,
                     errlen);
    for (int t = 0; e == EVL_OK && t < PQntuples(types); t++) {
        const char *type = PQgetvalue(types, t, 0);
        long long ckpt = 0;
        PGresult *res = NULL;
        const char *vals[3] = {projection, type, aggregate_id};
        e = evl_pg_exec(pg, "BEGIN", err, errlen);
        if (e == EVL_OK)
            e = lock_checkpoint(pg, projection, type, aggregate_id, &ckpt, err,
                                errlen);
        if (e == EVL_OK)
            e = evl_pg_query(pg,
                             "WITH d AS (DELETE FROM evlua_parked WHERE "
                             "projection = $1 AND aggregate_type = $2 AND "
                             "aggregate_id = $3 RETURNING sequence) "
                             "SELECT count(*), max(sequence) FROM d",
                             3, vals, &res, err, errlen);
        long long n = 0, maxseq = -1;
        if (e == EVL_OK) {
            n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
            if (!PQgetisnull(res, 0, 1))
                maxseq = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
            PQclear(res);
            e = set_checkpoint(pg, projection, type, aggregate_id,
                               maxseq > ckpt ? maxseq : ckpt, 0, err, errlen);
        }
        if (e == EVL_OK)
            e = evl_pg_exec(pg, "COMMIT", err, errlen);
        if (e != EVL_OK) {
            rollback(pg);
            break;
        }
        total += n;
        char ns[24], cs[24];
        snprintf(ns, sizeof ns, "%lld", n);
        snprintf(cs, sizeof cs, "%lld", maxseq > ckpt ? maxseq : ckpt);
        evl_log(
            EVL_LOG_WARN, "parked events dropped: they will never be applied",
            "projection", projection, "aggregate_type", type, "aggregate_id",
            aggregate_id, "events", ns, "checkpoint", cs, NULL);
    }
    PQclear(types);
    if (e == EVL_OK && dropped)
        *dropped = total;
    return e;
}
