/* cli.c - options, config and script loading shared by the subcommands. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lifecycle.h"
#include "log.h"
#include "pg.h"

void evl_cli_usage_error(const char *usage)
{
    const char *end = strstr(usage, "\n\n");
    size_t n = end ? (size_t)(end - usage) + 1 : strlen(usage);
    fwrite(usage, 1, n, stderr);
    /* "usage: evlua SUB ..." names the subcommand */
    const char *sub = strstr(usage, "evlua ");
    int len = 0;
    if (sub) {
        sub += 6;
        while (sub[len] && sub[len] != ' ' && sub[len] != '\n')
            len++;
    }
    if (len > 0 && sub[0] != '[' && sub[0] != '-')
        fprintf(stderr, "(the whole text: evlua %.*s --help)\n", len, sub);
    else
        fprintf(stderr, "(the whole text: evlua --help)\n");
}

int evl_cli_script_opts(int argc, char **argv, const char *name,
                        const char *usage, const char **config,
                        const char **scripts)
{
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"scripts", required_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    *config = *scripts = NULL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': *config = optarg; break;
        case 's': *scripts = optarg; break;
        case 'h': fputs(usage, stdout); return EVL_EXIT_OK;
        default: evl_cli_usage_error(usage); return EVL_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "evlua %s: unexpected argument '%s'\n", name,
                argv[optind]);
        evl_cli_usage_error(usage);
        return EVL_EXIT_USAGE;
    }
    return -1;
}

void evl_cli_oneshot(int *argc, char **argv)
{
    int verbose = 0, o = 1, i;
    for (i = 1; i < *argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0)
            verbose++;
        else if (strcmp(argv[i], "-vv") == 0)
            verbose += 2;
        else
            argv[o++] = argv[i];
    }
    for (; i < *argc; i++)
        argv[o++] = argv[i];
    argv[o] = NULL;
    *argc = o;
    evl_log_oneshot(verbose);
}

int evl_cli_load_config(const char *path, evl_config *cfg)
{
    char err[EVL_ERRLEN];
    if (evl_config_load(path, cfg, err, sizeof err) != EVL_OK) {
        fprintf(stderr, "evlua: %s\n", err);
        return EVL_EXIT_USAGE;
    }
    /* EVLUA_LOG_LEVEL wins over the file, as for every connection
     * setting; a one-shot command's level comes from -v */
    const char *lv = getenv("EVLUA_LOG_LEVEL");
    if (lv && evl_log_parse_level(lv) < 0) {
        fprintf(stderr,
                "evlua: EVLUA_LOG_LEVEL: '%s' is not a level (debug, info, "
                "warn or error)\n",
                lv);
        evl_config_free(cfg);
        return EVL_EXIT_USAGE;
    }
    if (!lv && !evl_log_is_oneshot())
        evl_log_set_level((evl_log_level)evl_log_parse_level(cfg->log_level));
    evl_log_set_format(strcmp(cfg->log_format, "json") == 0 ? EVL_LOG_JSON
                                                            : EVL_LOG_LOGFMT);
    if (cfg->log_file) {
        if (evl_log_open_file(cfg->log_file) != 0 ||
            evl_lifecycle_install_reopen() != 0) {
            fprintf(stderr, "evlua: log.file \"%s\": %s\n", cfg->log_file,
                    strerror(errno));
            evl_config_free(cfg);
            return EVL_EXIT_USAGE;
        }
    }
    return EVL_EXIT_OK;
}

static char agg_dir[4096], proj_dir[4096], lib_dir[4096];
static const char *agg_dirs[1] = {agg_dir}, *proj_dirs[1] = {proj_dir};

/* 1: l is just the default directory name and there is none; 0: some
 * directory of l exists; -1: otherwise (a configured one is missing). */
static int only_default(const evl_strlist *l, const char *name)
{
    struct stat st;
    int some = 0;
    for (int i = 0; i < l->n; i++)
        some |= stat(l->v[i], &st) == 0 && S_ISDIR(st.st_mode);
    if (some)
        return 0;
    return l->n == 1 && strcmp(l->v[0], name) == 0 ? 1 : -1;
}

void evl_cli_host_config(const evl_config *cfg, const char *scripts_dir,
                         evl_luahost_config *hc)
{
    memset(hc, 0, sizeof *hc);
    hc->memory_limit = cfg->limits.memory;
    hc->instruction_limit = cfg->limits.instructions;
    hc->time_limit_ms = cfg->limits.time_ms;
    hc->max_string_op = cfg->limits.pattern_subject;
    if (scripts_dir) {
        struct stat st;
        snprintf(agg_dir, sizeof agg_dir, "%s/aggregates", scripts_dir);
        snprintf(proj_dir, sizeof proj_dir, "%s/projections", scripts_dir);
        snprintf(lib_dir, sizeof lib_dir, "%s/lib", scripts_dir);
        hc->aggregate_dirs = agg_dirs;
        hc->naggregate_dirs = 1;
        hc->projection_dirs = proj_dirs;
        hc->nprojection_dirs = 1;
        hc->lib_dir = stat(lib_dir, &st) == 0 ? lib_dir : cfg->lib_dir;
        return;
    }
    hc->aggregate_dirs = (const char *const *)cfg->aggregate_dirs.v;
    hc->naggregate_dirs = (size_t)cfg->aggregate_dirs.n;
    hc->projection_dirs = (const char *const *)cfg->projection_dirs.v;
    hc->nprojection_dirs = (size_t)cfg->projection_dirs.n;
    /* a service of aggregates only (or projections only) needs no empty
     * directory of the other kind; with neither there, the errors say
     * where evlua looked */
    int agg = only_default(&cfg->aggregate_dirs, "aggregates");
    int proj = only_default(&cfg->projection_dirs, "projections");
    if (agg == 0 && proj == 1)
        hc->nprojection_dirs = 0;
    if (proj == 0 && agg == 1)
        hc->naggregate_dirs = 0;
    /* as the script directories: lib when there is one (the layout of
     * README "Your own project", which testing.load's specs assume) */
    struct stat st;
    hc->lib_dir = cfg->lib_dir;
    if (!hc->lib_dir && stat("lib", &st) == 0 && S_ISDIR(st.st_mode))
        hc->lib_dir = "lib";
}

int evl_cli_load_host(const evl_luahost_config *hc, evl_luahost **host)
{
    char err[EVL_ERRLEN];
    evl_luahost_problems problems = {0};
    if (evl_luahost_new(hc, host, &problems, err, sizeof err) == EVL_OK) {
        char na[32], np[32];
        snprintf(na, sizeof na, "%zu", evl_luahost_naggregates(*host));
        snprintf(np, sizeof np, "%zu", evl_luahost_nprojections(*host));
        evl_log(EVL_LOG_INFO, "scripts loaded", "hash", evl_luahost_hash(*host),
                "aggregates", na, "projections", np, (const char *)NULL);
        evl_luahost_problems_free(&problems);
        return EVL_EXIT_OK;
    }
    for (size_t i = 0; i < problems.n; i++)
        fprintf(stderr, "%s\n", problems.lines[i]);
    if (problems.n == 0)
        fprintf(stderr, "evlua: %s\n", err);
    evl_luahost_problems_free(&problems);
    return EVL_EXIT_USAGE;
}

int evl_cli_connect_db(const evl_config *cfg, evl_pg **pg)
{
    char err[EVL_ERRLEN];
    if (!cfg->pg_conninfo) {
        fprintf(stderr, "evlua: no database configured (postgres in the "
                        "config, or EVLUA_PG_CONNINFO)\n");
        return EVL_EXIT_USAGE;
    }
    evl_err e = evl_pg_open(cfg->pg_conninfo, "evlua cli", pg, err, sizeof err);
    if (e != EVL_OK) {
        fprintf(stderr, "evlua: %s\n", err);
        return e == EVL_EPERMANENT ? EVL_EXIT_USAGE : EVL_EXIT_FAILURE;
    }
    return EVL_EXIT_OK;
}

void evl_cli_fmt_count(long long v, char *buf, size_t n)
{
    char raw[32];
    snprintf(raw, sizeof raw, "%lld", v);
    size_t len = strlen(raw), o = 0;
    for (size_t i = 0; i < len && o + 2 < n; i++) {
        if (i > 0 && (len - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = raw[i];
    }
    buf[o] = '\0';
}

void evl_cli_rebuild_progress(void *ud, const evl_projector_progress *p)
{
    const char *name = ud;
    char done[32], total[32], rate[32], eta[32];
    evl_cli_fmt_count(p->done, done, sizeof done);
    evl_cli_fmt_count(p->total, total, sizeof total);
    evl_cli_fmt_count((long long)p->rate, rate, sizeof rate);
    if (p->eta >= 0)
        snprintf(eta, sizeof eta, "%lds", (long)(p->eta + 0.5));
    else
        snprintf(eta, sizeof eta, "?");
    fprintf(stderr, "\r\033[Krebuilding %s: %s/%s (%d%%), %s events/s, ETA %s",
            name, done, total,
            p->total ? (int)(100.0 * (double)p->done / (double)p->total) : 100,
            rate, eta);
    fflush(stderr);
}

int evl_cli_catch_up(const evl_config *cfg, const evl_luahost *host,
                     const char *name, const char *cmd, evl_projector_opts *o,
                     evl_projector_stats *st)
{
    memset(st, 0, sizeof *st);
    if (evl_lifecycle_install() != 0) {
        fprintf(stderr, "evlua projection %s: cannot install signal handlers\n",
                cmd);
        return EVL_EXIT_FAILURE;
    }
    int tty = isatty(STDERR_FILENO);
    evl_log_level saved = evl_log_get_level();
    if (tty && !getenv("EVLUA_LOG_LEVEL") && saved < EVL_LOG_WARN)
        evl_log_set_level(EVL_LOG_WARN); /* keep the progress line clean */
    o->until_caught_up = 1;
    o->progress = tty ? evl_cli_rebuild_progress : NULL;
    o->ud = (void *)name;
    o->stats = st;
    int rc = evl_projector_run_opts(cfg, host, name, o);
    evl_log_set_level(saved);
    if (tty)
        fputc('\n', stderr);
    return rc;
}

static void add_line(evl_luahost_problems *out, const char *s)
{
    out->lines = evl_xrealloc(out->lines, sizeof *out->lines * (out->n + 1));
    out->lines[out->n++] = evl_xstrdup(s);
}

size_t evl_cli_config_unloaded(const evl_config *cfg, const evl_luahost *host,
                               int what, evl_luahost_problems *out)
{
    size_t n0 = out->n;
    char line[2048];
    evl_buf loaded = {0};
    if (what & EVL_CLI_PROJECTIONS) {
        size_t np = evl_luahost_nprojections(host);
        for (size_t i = 0; i < np; i++) {
            evl_buf_puts(&loaded, i ? ", " : "");
            evl_buf_puts(&loaded, evl_luahost_projection_at(host, i)->name);
        }
        evl_buf_putc(&loaded, '\0');
        for (int i = 0; i < cfg->proj.neach; i++) {
            const char *name = cfg->proj.each[i].name;
            int found = 0;
            for (size_t j = 0; j < np && !found; j++)
                found =
                    strcmp(evl_luahost_projection_at(host, j)->name, name) == 0;
            if (found)
                continue;
            snprintf(line, sizeof line,
                     "%s: projection.each.%.200s: no projection of that name "
                     "is loaded (loaded: %.1500s)",
                     cfg->path, name, np ? loaded.data : "none");
            add_line(out, line);
        }
    }
    if (what & EVL_CLI_TOKENS) {
        size_t na = evl_luahost_naggregates(host);
        loaded.len = 0;
        for (size_t i = 0; i < na; i++) {
            evl_buf_puts(&loaded, i ? ", " : "");
            evl_buf_puts(&loaded, evl_luahost_aggregate_at(host, i)->type);
        }
        evl_buf_putc(&loaded, '\0');
        for (int i = 0; i < cfg->gateway.ntokens; i++) {
            const evl_gateway_token *t = &cfg->gateway.tokens[i];
            for (int k = 0; k < t->aggregates.n; k++) {
                const char *type = t->aggregates.v[k];
                int found = strcmp(type, "*") == 0;
                for (size_t j = 0; j < na && !found; j++)
                    found = strcmp(evl_luahost_aggregate_at(host, j)->type,
                                   type) == 0;
                if (found)
                    continue;
                snprintf(line, sizeof line,
                         "%s: gateway.tokens[%d] (%.100s): aggregates names "
                         "'%.200s': no aggregate type of that name is loaded "
                         "(loaded: %.1400s)",
                         cfg->path, i + 1, t->principal, type,
                         na ? loaded.data : "none");
                add_line(out, line);
            }
        }
    }
    evl_buf_free(&loaded);
    return out->n - n0;
}

void evl_cli_warn_unloaded(const evl_config *cfg, const evl_luahost *host,
                           int what)
{
    evl_luahost_problems p = {0};
    evl_cli_config_unloaded(cfg, host, what, &p);
    for (size_t i = 0; i < p.n; i++)
        evl_log(EVL_LOG_WARN, p.lines[i], NULL);
    evl_luahost_problems_free(&p);
}
