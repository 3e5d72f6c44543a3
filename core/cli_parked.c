/*
 * cli_parked.c - `evlua parked list|retry|drop` (projections, and with
 * --reactions the reactors' parked topics: reactor.h) and `evlua
 * projection reset NAME`: the operator's side of the projection and
 * reaction pipelines.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "lifecycle.h"
#include "log.h"
#include "parked.h"
#include "pg.h"
#include "projector.h"
#include "reactor.h"

static const char parked_usage[] =
    "usage: evlua parked list [PROJECTION] [-c CONFIG]\n"
    "       evlua parked retry PROJECTION AGGREGATE_ID [--type TYPE]\n"
    "                          [-c CONFIG] [--scripts DIR]\n"
    "       evlua parked drop PROJECTION AGGREGATE_ID [--type TYPE] [-c "
    "CONFIG]\n"
    "       evlua parked list --reactions [TYPE] [-c CONFIG] [--scripts DIR]\n"
    "       evlua parked retry|drop --reactions TYPE SOURCE_TYPE SOURCE_ID\n"
    "                          [-c CONFIG] [--wait SECONDS]\n"
    "\n"
    "When an event fails permanently in a projection (a Lua error, a bad\n"
    "payload, a constraint violation...), the projector parks it, and every\n"
    "later event of the same aggregate, in evlua_parked; other aggregates\n"
    "go on.\n"
    "\n"
    "  list    show the parked aggregates (of PROJECTION, or all) with the\n"
    "          error of their first parked event\n"
    "  retry   re-run the aggregate's parked events in order with the\n"
    "          current scripts; those that succeed leave evlua_parked and\n"
    "          the checkpoint moves on; the first failing one stays, with\n"
    "          its new error. Safe while projectors run.\n"
    "  drop    delete the aggregate's parked events for good (logged); its\n"
    "          checkpoint moves past them\n"
    "\n"
    "With --reactions: a reaction that fails (a Lua error, an invalid\n"
    "command, too many commands) parks its source aggregate's event, and\n"
    "every later event of that aggregate, in the reacting aggregate type's\n"
    "parked topic (reactions.parked_topic); TYPE is the reacting type,\n"
    "SOURCE_TYPE/SOURCE_ID the aggregate whose events are parked. retry\n"
    "and drop write a request there and wait for the running reactor's\n"
    "answer: retry re-runs the parked events in order with the scripts it\n"
    "has now (after a SIGHUP) and sends their commands; those before a\n"
    "new failure are released, the rest stay parked with the new error.\n"
    "No database is needed.\n"
    "\n"
    "  -c, --config FILE   config file (postgres, script dirs; see "
    "docs/config.md)\n"
    "  --scripts DIR       use DIR/aggregates, DIR/projections (and DIR/lib)\n"
    "  --type TYPE         only the aggregate of this type (default: every\n"
    "                      type with parked events under AGGREGATE_ID)\n"
    "  --reactions         the parked reactions (see above)\n"
    "  --wait SECONDS      how long retry/drop --reactions wait for the\n"
    "                      reactor's answer (default 30)\n"
    "\n"
    "Exit 0 on success (retry: nothing left parked), 1 when events remain\n"
    "parked, nothing is parked for that aggregate or the database fails, 2\n"
    "on a usage or config error or a projection evlua does not know (no\n"
    "script and no rows in its tables has that name). With --reactions:\n"
    "retry and drop exit 1 when no reactor answered within the wait (the\n"
    "request stays: a reactor acts on it when it runs) or events remain.\n";

static const char projection_usage[] =
    "usage: evlua projection reset NAME [-c CONFIG] [--scripts DIR]\n"
    "                              [--no-rebuild]\n"
    "\n"
    "Rebuild projection NAME from the start of its topics:\n"
    "  1. its consumer group is deleted (refused while projectors of NAME\n"
    "     are running: stop them first);\n"
    "  2. in one transaction: its `reset` SQL runs and its checkpoints,\n"
    "     offsets and parked events are deleted;\n"
    "  3. its events are read again from the beginning up to the end the\n"
    "     topics have now, with progress (done/total, rate, ETA) on a\n"
    "     terminal. SIGINT stops the rebuild; `evlua run` finishes it.\n"
    "\n"
    "  -c, --config FILE   config file (see docs/config.md)\n"
    "  --scripts DIR       use DIR/aggregates, DIR/projections (and DIR/lib)\n"
    "  --no-rebuild        do 1 and 2 only: the next `evlua run` rebuilds\n"
    "\n"
    "Exit 0 when done, 1 on a runtime failure, 2 on a usage or config "
    "error.\n"
    "\n"
    "A changed projection can first be built beside the live one and\n"
    "compared: `evlua projection rebuild NAME --shadow --help` and\n"
    "`evlua projection diff NAME --help`, then put in place with\n"
    "`evlua projection swap NAME --help`.\n";

typedef struct args {
    const char *config, *scripts, *type;
    int no_rebuild, reactions, wait_s;
    int npos;
    char *pos[4];
} args;

/* Parse options anywhere on the line; positionals into a->pos. Returns
 * -1 after --help, 0 ok, 2 on a usage error. */
static int parse(int argc, char **argv, const char *usage, args *a)
{
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"scripts", required_argument, 0, 's'},
                                         {"type", required_argument, 0, 't'},
                                         {"no-rebuild", no_argument, 0, 'n'},
                                         {"reactions", no_argument, 0, 'r'},
                                         {"wait", required_argument, 0, 'w'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    memset(a, 0, sizeof *a);
    a->wait_s = 30;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': a->config = optarg; break;
        case 's': a->scripts = optarg; break;
        case 't': a->type = optarg; break;
        case 'n': a->no_rebuild = 1; break;
        case 'r': a->reactions = 1; break;
        case 'w':
            a->wait_s = atoi(optarg);
            if (a->wait_s < 0 || a->wait_s > 3600) {
                fprintf(stderr, "evlua: --wait: 0 to 3600 seconds\n");
                return EVL_EXIT_USAGE;
            }
            break;
        case 'h': fputs(usage, stdout); return -1;
        default: evl_cli_usage_error(usage); return EVL_EXIT_USAGE;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (a->npos == 4) {
            fprintf(stderr, "evlua %s: too many arguments\n", argv[0]);
            evl_cli_usage_error(usage);
            return EVL_EXIT_USAGE;
        }
        a->pos[a->npos++] = argv[i];
    }
    return 0;
}

/* Is name a projection evlua knows: a loaded script (host, or the
 * scripts of the config when host is NULL), or one with rows in evlua's
 * tables (a projection since removed may still have parked events)? When
 * not, say so naming the known ones and return EVL_EXIT_USAGE, as
 * `projection reset` does. */
static int known_projection(const evl_config *cfg, const args *a,
                            const evl_luahost *host, evl_pg *pg,
                            const char *sub, const char *name)
{
    static const char sql[] =
        "SELECT 1 FROM evlua_checkpoints WHERE projection = $1 UNION ALL "
        "SELECT 1 FROM evlua_offsets WHERE projection = $1 UNION ALL "
        "SELECT 1 FROM evlua_parked WHERE projection = $1 LIMIT 1";
    evl_luahost *own = NULL;
    PGresult *res = NULL;
    char err[EVL_ERRLEN];
    int rc = EVL_EXIT_OK;
    if (!host) { /* scripts that do not load only cost the hint */
        evl_luahost_config hc;
        evl_luahost_problems problems = {0};
        evl_cli_host_config(cfg, a->scripts, &hc);
        if (evl_luahost_new(&hc, &own, &problems, err, sizeof err) == EVL_OK)
            host = own;
        evl_luahost_problems_free(&problems);
    }
    if (host && evl_luahost_projection_get(host, name))
        goto out;
    if (evl_pg_query(pg, sql, 1, &name, &res, err, sizeof err) == EVL_OK &&
        PQntuples(res) > 0)
        goto out;
    fprintf(stderr, "evlua parked %s: unknown projection '%s'", sub, name);
    for (size_t i = 0; host && i < evl_luahost_nprojections(host); i++)
        fprintf(stderr, "%s%s", i ? ", " : " (projections: ",
                evl_luahost_projection_at(host, i)->name);
    fprintf(stderr, "%s\n", host && evl_luahost_nprojections(host) ? ")" : "");
    rc = EVL_EXIT_USAGE;
out:
    if (res)
        PQclear(res);
    evl_luahost_free(own);
    return rc;
}

static int parked_list(const evl_config *cfg, const args *a)
{
    evl_pg *pg = NULL;
    char err[EVL_ERRLEN];
    long long n = 0;
    int rc = evl_cli_connect_db(cfg, &pg);
    if (rc)
        return rc;
    if (a->npos > 1 &&
        (rc = known_projection(cfg, a, NULL, pg, "list", a->pos[1])) != 0)
        goto out;
    if (evl_parked_list(pg, a->npos > 1 ? a->pos[1] : NULL, stdout, &n, err,
                        sizeof err) != EVL_OK) {
        fprintf(stderr, "evlua parked list: %s\n", err);
        rc = EVL_EXIT_FAILURE;
    } else if (n == 0) {
        printf("no parked events%s%s\n", a->npos > 1 ? " in projection " : "",
               a->npos > 1 ? a->pos[1] : "");
    }
out:
    evl_pg_close(pg);
    return rc;
}

static int parked_retry(const evl_config *cfg, const args *a)
{
    evl_luahost_config hc;
    evl_luahost *host = NULL;
    evl_pg *pg = NULL;
    char err[EVL_ERRLEN];
    evl_parked_result r;
    evl_cli_host_config(cfg, a->scripts, &hc);
    int rc = evl_cli_load_host(&hc, &host);
    if (rc)
        return rc;
    if ((rc = evl_cli_connect_db(cfg, &pg)) != 0)
        goto out;
    if (!evl_luahost_projection_get(host, a->pos[1])) {
        /* retry needs the script, not only rows */
        fprintf(stderr,
                "evlua parked retry: no projection script has name "
                "%s\n",
                a->pos[1]);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    if (evl_parked_retry(pg, host, a->pos[1], a->type, a->pos[2], &r, err,
                         sizeof err) != EVL_OK) {
        fprintf(stderr, "evlua parked retry: %s\n", err);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }
    printf("%s %s: %lld applied, %lld already applied, %lld still parked; "
           "checkpoint %lld\n",
           a->pos[1], a->pos[2], r.applied, r.obsolete, r.remaining,
           r.checkpoint);
    if (r.remaining > 0) {
        if (r.failed_sequence >= 0)
            printf("  sequence %lld failed again: %s\n", r.failed_sequence,
                   r.error);
        else
            printf("  failed again: %s\n", r.error);
        rc = EVL_EXIT_FAILURE;
    }
out:
    evl_pg_close(pg);
    evl_luahost_free(host);
    return rc;
}

static int parked_drop(const evl_config *cfg, const args *a)
{
    evl_pg *pg = NULL;
    char err[EVL_ERRLEN];
    long long n = 0;
    int rc = evl_cli_connect_db(cfg, &pg);
    if (rc)
        return rc;
    if ((rc = known_projection(cfg, a, NULL, pg, "drop", a->pos[1])) != 0)
        goto out;
    if (evl_parked_drop(pg, a->pos[1], a->type, a->pos[2], &n, err,
                        sizeof err) != EVL_OK) {
        fprintf(stderr, "evlua parked drop: %s\n", err);
        rc = EVL_EXIT_FAILURE;
    } else {
        printf("%s %s: %lld parked event%s dropped\n", a->pos[1], a->pos[2], n,
               n == 1 ? "" : "s");
    }
out:
    evl_pg_close(pg);
    return rc;
}

/* ---- parked reactions (--reactions) -------------------------------------- */

static int reactions_list(const evl_config *cfg, const args *a)
{
    char err[EVL_ERRLEN];
    long long total = 0;
    evl_luahost *host = NULL;
    int rc = EVL_EXIT_OK;
    if (a->npos < 2) { /* every reacting type of the scripts */
        evl_luahost_config hc;
        evl_cli_host_config(cfg, a->scripts, &hc);
        if ((rc = evl_cli_load_host(&hc, &host)) != 0)
            return rc;
    }
    size_t ntypes = host ? evl_luahost_naggregates(host) : 1;
    for (size_t i = 0; i < ntypes; i++) {
        const char *type =
            host ? evl_luahost_aggregate_at(host, i)->type : a->pos[1];
        long long n = 0;
        if (host && !evl_reactor_reacts(host, type))
            continue;
        evl_err e =
            evl_reactor_parked_list(cfg, type, stdout, &n, err, sizeof err);
        if (e == EVL_EPERMANENT && host)
            continue; /* that reactor never ran: nothing parked */
        if (e != EVL_OK) {
            fprintf(stderr, "evlua parked list --reactions: %s\n", err);
            rc = e == EVL_EPERMANENT ? EVL_EXIT_USAGE : EVL_EXIT_FAILURE;
            break;
        }
        total += n;
    }
    if (rc == EVL_EXIT_OK && total == 0)
        printf("no parked reactions%s%s\n", a->npos > 1 ? " of " : "",
               a->npos > 1 ? a->pos[1] : "");
    evl_luahost_free(host);
    return rc;
}

static int reactions_request(const evl_config *cfg, const args *a)
{
    char err[EVL_ERRLEN];
    evl_reactor_released r;
    const char *kind = a->pos[0], *type = a->pos[1];
    evl_err e =
        evl_reactor_parked_request(cfg, type, kind, a->pos[2], a->pos[3],
                                   a->wait_s * 1000, &r, err, sizeof err);
    if (e != EVL_OK) {
        fprintf(stderr, "evlua parked %s --reactions: %s\n", kind, err);
        return EVL_EXIT_FAILURE;
    }
    if (!r.answered) {
        printf("reactions %s %s/%s: %s requested (%s); no reactor answered "
               "within %d s: a running reactor of %s acts on it\n",
               type, a->pos[2], a->pos[3], kind, r.request_id, a->wait_s, type);
        return EVL_EXIT_FAILURE;
    }
    if (strcmp(kind, "drop") == 0)
        printf("reactions %s %s/%s: %lld parked event%s dropped\n", type,
               a->pos[2], a->pos[3], r.dropped, r.dropped == 1 ? "" : "s");
    else
        printf("reactions %s %s/%s: %lld released (their commands sent), "
               "%lld still parked\n",
               type, a->pos[2], a->pos[3], r.applied, r.remaining);
    if (r.error[0])
        printf("  failed again: %s\n", r.error);
    return r.remaining > 0 ? EVL_EXIT_FAILURE : EVL_EXIT_OK;
}

static int parked_reactions(const args *a)
{
    evl_config cfg;
    int rc;
    const char *sub = a->npos ? a->pos[0] : "";
    int list = strcmp(sub, "list") == 0;
    int req = strcmp(sub, "retry") == 0 || strcmp(sub, "drop") == 0;
    if ((!list && !req) || (list && a->npos > 2) || (req && a->npos != 4)) {
        fprintf(stderr, "evlua parked: %s\n",
                !list && !req ? "expected list, retry or drop"
                : list        ? "list --reactions takes at most a TYPE"
                              : "retry|drop --reactions takes TYPE "
                                "SOURCE_TYPE SOURCE_ID");
        evl_cli_usage_error(parked_usage);
        return EVL_EXIT_USAGE;
    }
    if ((rc = evl_cli_load_config(a->config, &cfg)) != 0)
        return rc;
    rc = list ? reactions_list(&cfg, a) : reactions_request(&cfg, a);
    evl_config_free(&cfg);
    return rc;
}

int evl_cli_parked(int argc, char **argv)
{
    args a;
    evl_config cfg;
    int rc = parse(argc, argv, parked_usage, &a);
    if (rc)
        return rc < 0 ? EVL_EXIT_OK : rc;
    if (a.reactions)
        return parked_reactions(&a);
    const char *sub = a.npos ? a.pos[0] : "";
    int want = strcmp(sub, "list") == 0    ? -1
               : strcmp(sub, "retry") == 0 ? 3
               : strcmp(sub, "drop") == 0  ? 3
                                           : 0;
    if (want == 0 || (want < 0 && a.npos > 2) || (want > 0 && a.npos != want)) {
        fprintf(stderr, "evlua parked: %s\n",
                want == 0 ? "expected list, retry or drop"
                          : "wrong number of arguments");
        evl_cli_usage_error(parked_usage);
        return EVL_EXIT_USAGE;
    }
    if ((rc = evl_cli_load_config(a.config, &cfg)) != 0)
        return rc;
    if (strcmp(sub, "list") == 0)
        rc = parked_list(&cfg, &a);
    else if (strcmp(sub, "retry") == 0)
        rc = parked_retry(&cfg, &a);
    else
        rc = parked_drop(&cfg, &a);
    evl_config_free(&cfg);
    return rc;
}

/* ---- projection reset ---------------------------------------------------- */

int evl_cli_projection(int argc, char **argv)
{
    args a;
    evl_config cfg;
    evl_luahost_config hc;
    evl_luahost *host = NULL;
    evl_pg *pg = NULL;
    char err[EVL_ERRLEN], group[256];
    /* the first operand names the action; the shadow's have their own
     * options (cli_shadow.c) */
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-') {
            if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config") ||
                !strcmp(argv[i], "--scripts"))
                i++;
            continue;
        }
        if (!strcmp(argv[i], "rebuild") || !strcmp(argv[i], "diff") ||
            !strcmp(argv[i], "swap"))
            return evl_cli_shadow(argc, argv);
        break;
    }
    int rc = parse(argc, argv, projection_usage, &a);
    if (rc)
        return rc < 0 ? EVL_EXIT_OK : rc;
    if (a.npos != 2 || strcmp(a.pos[0], "reset") != 0) {
        fprintf(stderr, "evlua projection: expected reset NAME, rebuild NAME "
                        "--shadow, diff NAME or swap NAME\n");
        evl_cli_usage_error(projection_usage);
        return EVL_EXIT_USAGE;
    }
    const char *name = a.pos[1];
    if ((rc = evl_cli_load_config(a.config, &cfg)) != 0)
        return rc;
    evl_cli_host_config(&cfg, a.scripts, &hc);
    if ((rc = evl_cli_load_host(&hc, &host)) != 0)
        goto out;
    if (!evl_luahost_projection_get(host, name)) {
        fprintf(stderr,
                "evlua projection reset: no projection script has "
                "name %s\n",
                name);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    if ((rc = evl_cli_connect_db(&cfg, &pg)) != 0)
        goto out;

    evl_projector_group(&cfg, name, group, sizeof group);
    evl_err e = evl_projector_reset_group(&cfg, group, err, sizeof err);
    if (e != EVL_OK) {
        fprintf(stderr, "evlua projection reset: %s\n", err);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }
    e = evl_projector_reset_db(pg, host, name, err, sizeof err);
    if (e != EVL_OK) {
        fprintf(stderr, "evlua projection reset: %s\n", err);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }
    evl_pg_close(pg);
    pg = NULL;
    evl_log(EVL_LOG_WARN, "projection reset", "projection", name, "group",
            group, NULL);
    printf("projection %s reset: reset SQL run; checkpoints, offsets and "
           "parked events cleared; consumer group %s deleted\n",
           name, group);
    fflush(stdout);
    if (a.no_rebuild)
        goto out;

    evl_projector_stats st;
    evl_projector_opts o = {0};
    rc = evl_cli_catch_up(&cfg, host, name, "reset", &o, &st);
    if (rc == EVL_EXIT_FAILURE && !st.batches && !st.messages)
        goto out;
    printf("projection %s %s: %lld events applied, %lld skipped (other "
           "types), %lld parked\n",
           name, evl_lifecycle_stopping() ? "rebuild interrupted" : "rebuilt",
           st.applied, st.skipped, st.parked);
out:
    evl_pg_close(pg);
    evl_luahost_free(host);
    evl_config_free(&cfg);
    return rc;
}
