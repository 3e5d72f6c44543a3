/*
 * verify_decide.c - the decisions part of `evlua verify` (verify.h):
 * each recorded decision of an aggregate, in the order the processor
 * made them, is made again by the new handle on the state before it.
 *
 * The state before a command at version v is the aggregate's events
 * 1..v folded with the new apply (through upcast), built up as the
 * decisions go (each event is applied once per aggregate, not once per
 * command). A command goes through what cmd_decide.c does before handle
 * with the same functions (evl_luahost_parse_command, the
 * expected_version check, evl_luahost_decide), so a verdict here is the
 * verdict the processor would give. Envelope fields are not compared: an
 * event is its type and data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "verify_int.h"

/* What came of a decision, in words: "accepted (2 events: A, B)",
 * "rejected: reason", "failed: reason". */
static void outcome_new(char *b, size_t n, int verdict,
                        const evl_luahost_decision *dec, const char *err)
{
    if (verdict == EVL_LUAHOST_REJECTED) {
        snprintf(b, n, "rejected: %s", err);
    } else if (verdict == EVL_LUAHOST_FAILED) {
        snprintf(b, n, "failed: %s", err);
    } else {
        size_t o = (size_t)snprintf(b, n, "accepted (%zu event%s", dec->nevents,
                                    dec->nevents == 1 ? "" : "s");
        for (size_t i = 0; i < dec->nevents && o < n; i++)
            o += (size_t)snprintf(b + o, n - o, "%s%s", i ? ", " : ": ",
                                  dec->events[i].type);
        if (o < n)
            snprintf(b + o, n - o, ")");
    }
}

static void outcome_old(char *b, size_t n, const vf_hist *h, const vf_agg *a,
                        const vf_result *res, long long before)
{
    const char *t = h->text.data;
    if (res->status == 'a') {
        size_t o = (size_t)snprintf(b, n, "accepted (%zu event%s", res->nevents,
                                    res->nevents == 1 ? "" : "s");
        for (size_t i = 0; i < res->nevents && o < n; i++) {
            const vf_event *e = &a->ev[(size_t)before + i];
            /* the type's JSON string without its quotes (a valid type
             * needs no escapes) */
            o += (size_t)snprintf(b + o, n - o, "%s%.*s", i ? ", " : ": ",
                                  (int)(e->tlen - 2), t + e->off + e->toff + 1);
        }
        if (o < n)
            snprintf(b + o, n - o, ")");
    } else {
        snprintf(b, n, "%s: %s", res->status == 'r' ? "rejected" : "failed",
                 res->has_error ? t + res->eoff : "");
    }
}

/* Compare the recorded events with dec's. Returns 1 when they are the
 * same; else 0 with what differs in detail (and an event's data changes
 * in df). */
static int same_events(lua_State *L, const vf_hist *h, const vf_agg *a,
                       size_t before, size_t n, const evl_luahost_decision *dec,
                       char *detail, size_t dn, vf_diff *df)
{
    const char *t = h->text.data;
    char err[EVL_ERRLEN];
    if (dec->nevents != n) {
        snprintf(detail, dn, "%zu event%s instead of %zu", dec->nevents,
                 dec->nevents == 1 ? "" : "s", n);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        const vf_event *e = &a->ev[before + i];
        const evl_luahost_event *ne = &dec->events[i];
        const char *ot = t + e->off + e->toff + 1, *od = t + e->off + e->doff;
        size_t otl = e->tlen - 2;
        if (strlen(ne->type) != otl || memcmp(ne->type, ot, otl) != 0) {
            snprintf(detail, dn, "event %zu: type %.*s, now %s", i + 1,
                     (int)otl, ot, ne->type);
            return 0;
        }
        if (e->dlen == ne->data_len && memcmp(od, ne->data, e->dlen) == 0)
            continue;
        if (vf_diff_json(L, od, e->dlen, ne->data, ne->data_len, 20, df, err,
                         sizeof err) != EVL_OK) {
            snprintf(detail, dn, "event %zu (%.64s): %.400s", i + 1, ne->type,
                     err);
            return 0;
        }
        if (df->total > 0) {
            snprintf(detail, dn, "event %zu (%s): data", i + 1, ne->type);
            return 0;
        }
    }
    return 1;
}

void vf_decide_aggregate(evl_luahost *host, lua_State *L, const char *type,
                         const vf_hist *h, const vf_agg *a,
                         const evl_verify_opts *opts, evl_verify_report *r)
{
    evl_verify_counts *c = &r->types[r->ntypes - 1];
    evl_buf cur = {0}, next = {0};
    evl_luahost_decision dec = {0};
    evl_command cmd = {0};
    size_t k = 0;    /* events folded into cur */
    int have = 0;    /* cur holds a state (else: initial()) */
    int fold_ok = 1; /* the fold so far worked */
    char fold_err[EVL_ERRLEN] = "";

    for (size_t i = 0; i < a->nres; i++) {
        const vf_result *res = &a->res[i];
        const char *cid = h->text.data + res->cidoff;
        const vf_cmd *rec = vf_hist_command(h, cid);
        long long before = res->status == 'a'
                               ? res->version - (long long)res->nevents
                               : res->version;
        size_t need = res->status == 'a' ? res->nevents : 0;
        if (!rec || before < 0 || (size_t)before + need > a->nev ||
            !(before == 0 || a->ev[before - 1].seq == before) ||
            (need && a->ev[(size_t)before + need - 1].seq !=
                         before + (long long)need)) {
            c->dc_skipped++;
            continue;
        }
        if ((size_t)before < k) { /* cannot happen in processing order */
            k = 0;
            have = 0;
            fold_ok = 1;
        }
        if ((size_t)before > k && fold_ok) {
            next.len = 0;
            if (vf_fold(host, type, h, a, k, (size_t)before - k,
                        have ? cur.data : NULL, have ? cur.len : 0, &next,
                        fold_err, sizeof fold_err) == EVL_OK) {
                evl_buf tmp = cur;
                cur = next;
                next = tmp;
                have = 1;
                k = (size_t)before;
            } else {
                fold_ok = 0;
            }
        }

        /* the new verdict */
        char err[EVL_ERRLEN] = "", now[1024], was[1024], detail[512] = "";
        int verdict;
        const char *text = h->text.data + rec->off;
        if (!fold_ok) {
            verdict = EVL_LUAHOST_FAILED;
            snprintf(err, sizeof err, "the state before it: %.480s", fold_err);
        } else {
            verdict = evl_luahost_parse_command(host, text, rec->len, &cmd, err,
                                                sizeof err);
            if (verdict == EVL_LUAHOST_ACCEPTED) {
                if (cmd.has_expected_version &&
                    cmd.expected_version != before) {
                    verdict = EVL_LUAHOST_REJECTED;
                    snprintf(err, sizeof err,
                             "expected version %lld, but aggregate %s is at "
                             "version %lld",
                             cmd.expected_version, cmd.aggregate_id, before);
                } else {
                    evl_luahost_command lc = {type,
                                              cmd.aggregate_id,
                                              before,
                                              have ? cur.data : NULL,
                                              have ? cur.len : 0,
                                              NULL,
                                              0};
                    verdict =
                        evl_luahost_decide(host, &lc, &dec, err, sizeof err);
                }
            }
        }

        /* against the recorded one */
        const char *kind = NULL;
        vf_diff df = {0};
        switch (res->status) {
        case 'a':
            if (verdict == EVL_LUAHOST_REJECTED)
                kind = "newly_rejected";
            else if (verdict == EVL_LUAHOST_FAILED)
                kind = "newly_failing";
            else if (!same_events(L, h, a, (size_t)before, res->nevents, &dec,
                                  detail, sizeof detail, &df))
                kind = "different";
            break;
        case 'r':
            if (verdict == EVL_LUAHOST_FAILED)
                kind = "newly_failing";
            else if (verdict == EVL_LUAHOST_ACCEPTED)
                kind = "different";
            else if (!res->has_error ||
                     strcmp(err, h->text.data + res->eoff) != 0) {
                kind = "different";
                snprintf(detail, sizeof detail, "the reason");
            }
            break;
        default: /* 'f': a failure again is the same, whatever its text
                    (it names the script's path) */
            if (verdict == EVL_LUAHOST_REJECTED)
                kind = "newly_rejected";
            else if (verdict == EVL_LUAHOST_ACCEPTED)
                kind = "different";
        }
        if (!kind) {
            c->dc_same++;
        } else {
            if (strcmp(kind, "different") == 0)
                c->dc_different++;
            else if (strcmp(kind, "newly_rejected") == 0)
                c->dc_newly_rejected++;
            else
                c->dc_newly_failing++;
            if (r->shown_decisions++ < opts->show) {
                /* the command type, read plainly from its JSON */
                evl_json_member m[] = {{.name = "type"}};
                evl_buf scratch = {0};
                int obj = 0;
                const char *ctype = NULL;
                if (evl_json_members(text, rec->len, m, 1, &scratch, &obj, NULL,
                                     0) == EVL_OK &&
                    obj && m[0].type == EVL_JSON_STRING)
                    ctype = scratch.data + m[0].off;
                outcome_old(was, sizeof was, h, a, res, before);
                outcome_new(now, sizeof now, verdict, &dec, err);
                evl_verify_diff d = {.part = "decisions",
                                     .kind = kind,
                                     .type = (char *)type,
                                     .aggregate_id = a->id,
                                     .command_id = (char *)cid,
                                     .command = (char *)ctype,
                                     .old_outcome = was,
                                     .new_outcome = now,
                                     .detail = detail[0] ? detail : NULL,
                                     .changes = df.v,
                                     .nchanges = df.n,
                                     .total_changes = df.total};
                vf_report_add(r, &d);
                evl_buf_free(&scratch);
            }
        }
        vf_diff_free(&df);
    }
    evl_envelope_command_free(&cmd);
    evl_luahost_decision_free(&dec);
    evl_buf_free(&cur);
    evl_buf_free(&next);
}
