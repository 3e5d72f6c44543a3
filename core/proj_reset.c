/*
 * proj_reset.c - `evlua projection reset`: empty a projection's tables
 * (its reset handler), checkpoints, offsets and parked events in one
 * transaction (a pin a swap left moves to the script resetting), and
 * delete its consumer group. One-shot, outside any
 * running projector.
 */
#include "projector_int.h"

#include <stdlib.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

/* ---- reset --------------------------------------------------------------- */

evl_err evl_projector_reset_db(evl_pg *pg, evl_luahost *host,
                               const char *projection, char *err, size_t errlen)
{
    const evl_luahost_projection *p =
        evl_luahost_projection_get(host, projection);
    if (!p)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "no projection script has name %s", projection);
    evl_err e = evl_pg_create_tables(pg, err, errlen);
    for (size_t i = 0; e == EVL_OK && i < p->nschema; i++)
        e = evl_pg_exec_locked(pg, p->schema[i], err, errlen);
    if (e != EVL_OK)
        return e;
    evl_luahost_stmts st = {0};
    e = evl_luahost_reset(host, projection, &st, err, errlen);
    if (e != EVL_OK)
        goto out;
    e = evl_pg_exec(pg, "BEGIN", err, errlen);
    for (size_t i = 0; e == EVL_OK && i < st.n; i++) {
        const char **vals =
            evl_xmalloc(sizeof(char *) * (st.stmts[i].nparams + 1));
        for (size_t k = 0; k < st.stmts[i].nparams; k++)
            vals[k] = st.stmts[i].params[k].type == EVL_PARAM_NULL
                          ? NULL
                          : st.stmts[i].params[k].text;
        e = evl_pg_query(pg, st.stmts[i].sql, (int)st.stmts[i].nparams, vals,
                         NULL, err, errlen);
        free(vals);
    }
    const char *vals[1] = {projection};
    static const char *const deletes[] = {
        "DELETE FROM evlua_checkpoints WHERE projection = $1",
        "DELETE FROM evlua_offsets WHERE projection = $1",
        "DELETE FROM evlua_parked WHERE projection = $1"};
    for (size_t i = 0; e == EVL_OK && i < 3; i++)
        e = evl_pg_query(pg, deletes[i], 1, vals, NULL, err, errlen);
    /* tables pinned by a swap are rebuilt by this script now: the pin
     * moves to it, or the rebuild would be refused with them emptied */
    const char *pin[3] = {projection, p->hash, p->script};
    if (e == EVL_OK)
        e = evl_pg_query(pg,
                         "UPDATE evlua_pins SET script_hash = $2, script = "
                         "$3, pinned_at = now() WHERE projection = $1",
                         3, pin, NULL, err, errlen);
    if (e == EVL_OK)
        e = evl_pg_exec(pg, "COMMIT", err, errlen);
    else if (evl_pg_ok(pg)) {
        char rerr[EVL_ERRLEN];
        evl_pg_exec(pg, "ROLLBACK", rerr, sizeof rerr);
    }
out:
    evl_luahost_stmts_free(&st);
    return e;
}

/* One DeleteGroups request: EVL_OK (deleted, or no such group),
 * EVL_EPERMANENT (members are active), EVL_ETRANSIENT (*retry set when
 * the coordinator is still loading or moving: worth asking again). */
static evl_err delete_group(rd_kafka_t *rk, const char *group, int *retry,
                            char *err, size_t errlen)
{
    char errstr[512];
    evl_err e = EVL_OK;
    *retry = 0;
    rd_kafka_DeleteGroup_t *dg = rd_kafka_DeleteGroup_new(group);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *ao =
        rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DELETEGROUPS);
    rd_kafka_AdminOptions_set_request_timeout(ao, 30000, errstr, sizeof errstr);
    rd_kafka_DeleteGroups(rk, &dg, 1, ao, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 60000);
    if (!ev) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT,
                       "DeleteGroups(%s): no answer from Kafka within 60 s",
                       group);
    } else if (rd_kafka_event_error(ev)) {
        e = evl_seterr(err, errlen, EVL_ETRANSIENT, "DeleteGroups(%s): %s",
                       group, rd_kafka_event_error_string(ev));
    } else {
        size_t n = 0;
        const rd_kafka_group_result_t **gr =
            rd_kafka_DeleteGroups_result_groups(
                rd_kafka_event_DeleteGroups_result(ev), &n);
        for (size_t i = 0; i < n; i++) {
            const rd_kafka_error_t *ge = rd_kafka_group_result_error(gr[i]);
            rd_kafka_resp_err_t code = ge ? rd_kafka_error_code(ge) : 0;
            if (!code || code == RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND)
                continue;
            if (code == RD_KAFKA_RESP_ERR_NON_EMPTY_GROUP) {
                e = evl_seterr(err, errlen, EVL_EPERMANENT,
                               "consumer group %s has active members: stop "
                               "the projectors of this projection first",
                               group);
                continue;
            }
            /* a broker just started, or a coordinator moving */
            *retry = code == RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS ||
                     code == RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE ||
                     code == RD_KAFKA_RESP_ERR_NOT_COORDINATOR;
            e = evl_seterr(err, errlen, EVL_ETRANSIENT, "DeleteGroups(%s): %s",
                           group, rd_kafka_error_string(ge));
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_DeleteGroup_destroy(dg);
    rd_kafka_queue_destroy(q);
    return e;
}

evl_err evl_projector_reset_group(const evl_config *cfg, const char *group,
                                  char *err, size_t errlen)
{
    char errstr[512];
    rd_kafka_conf_t *conf = NULL;
    evl_err e = evl_kafka_conf_new(cfg, NULL, NULL, &conf, err, errlen);
    if (e != EVL_OK)
        return e;
    rd_kafka_t *rk =
        rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return evl_seterr(err, errlen, EVL_EPERMANENT, "rd_kafka_new: %s",
                          errstr);
    }
    /* asked again for up to 30 s while the coordinator is not ready */
    int retry = 0;
    for (int attempt = 0; attempt < 60; attempt++) {
        e = delete_group(rk, group, &retry, err, errlen);
        if (!retry)
            break;
        usleep(500 * 1000);
    }
    rd_kafka_destroy(rk);
    return e;
}
