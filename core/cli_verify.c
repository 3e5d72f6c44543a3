/*
 * cli_verify.c - `evlua verify`: a new script set against the recorded
 * history (verify.h does the work; this file parses options and prints
 * the summary table, the first differences, or --json).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "envelope.h"
#include "verify.h"

static const char verify_usage[] =
    "usage: evlua verify [-c CONFIG] --scripts NEWDIR [--aggregate-type T]\n"
    "                    [--limit N] [--show N] [--json]\n"
    "\n"
    "Check a new script set against the recorded history before it goes\n"
    "live. Reads the topics of each aggregate type (read_committed, from\n"
    "the start to their end now, with a consumer of its own that never\n"
    "commits offsets) and, with the NEW scripts in NEWDIR/aggregates:\n"
    "  state      folds each aggregate's events with the new apply (through\n"
    "             upcast) and compares the state with its latest snapshot\n"
    "             (written by the running scripts): equal or different,\n"
    "             with a JSON diff (path, old, new);\n"
    "  decisions  re-runs each recorded command through the new handle on\n"
    "             the state before it: same, different (events' type or\n"
    "             data, a rejection's reason), newly rejected, newly\n"
    "             failing. Event ids and times are not compared.\n"
    "Prints a summary table and the first differences of each type.\n"
    "\n"
    "  -c, --config FILE       config file (topics, Kafka; docs/config.md)\n"
    "  -s, --scripts NEWDIR    the new scripts (NEWDIR/aggregates, and\n"
    "                          NEWDIR/lib when it exists); required\n"
    "  -t, --aggregate-type T  only aggregate type T (default: every type\n"
    "                          of the new scripts)\n"
    "  -n, --limit N           only the first N aggregates of each type\n"
    "                          (in the order the topics hold them)\n"
    "      --show N            differences printed per type and part\n"
    "                          (default 10)\n"
    "      --json              one JSON document on stdout, for machines\n"
    "\n"
    "Progress goes to stderr when it is a terminal. See docs/verify.md.\n"
    "Exit 0 when nothing differs, 1 when something does (or the broker\n"
    "failed), 2 on a usage, config or script error.\n";

static void progress(void *ud, const char *type, const char *phase,
                     long long done, long long total)
{
    (void)ud;
    fprintf(stderr, "\r\033[Kverify %s: %s %lld/%lld", type, phase, done,
            total);
    fflush(stderr);
}

static void print_value(FILE *out, const char *json)
{
    fputs(json ? json : "(absent)", out);
}

static void print_text(FILE *out, const evl_verify_report *r,
                       const char *scripts, const char *hash)
{
    static const char *const rows[] = {"records read",
                                       "aggregates",
                                       "state equal",
                                       "state different",
                                       "state failed",
                                       "state skipped",
                                       "decisions same",
                                       "decisions different",
                                       "decisions newly rejected",
                                       "decisions newly failing",
                                       "decisions skipped"};
    fprintf(out, "evlua verify: scripts %s (%s)\n\n", scripts, hash);
    fprintf(out, "%-26s", "");
    for (size_t t = 0; t < r->ntypes; t++)
        fprintf(out, " %12s", r->types[t].type);
    fputc('\n', out);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fprintf(out, "%-26s", rows[i]);
        for (size_t t = 0; t < r->ntypes; t++) {
            const evl_verify_counts *c = &r->types[t];
            long long v[] = {
                c->records,          c->aggregates,   c->st_equal,
                c->st_different,     c->st_failed,    c->st_skipped,
                c->dc_same,          c->dc_different, c->dc_newly_rejected,
                c->dc_newly_failing, c->dc_skipped};
            fprintf(out, " %12lld", v[i]);
        }
        fputc('\n', out);
    }
    for (size_t i = 0; i < r->ndiffs; i++) {
        const evl_verify_diff *d = &r->diffs[i];
        fputc('\n', out);
        if (strcmp(d->part, "state") == 0)
            fprintf(out, "%s %s: state %s\n", d->type, d->aggregate_id,
                    d->kind);
        else
            fprintf(out, "%s %s: command %s (%s) %s\n", d->type,
                    d->aggregate_id, d->command_id,
                    d->command ? d->command : "?", d->kind);
        if (d->old_outcome)
            fprintf(out, "  was: %s\n  now: %s\n", d->old_outcome,
                    d->new_outcome);
        if (d->detail)
            fprintf(out, "  %s\n", d->detail);
        for (size_t k = 0; k < d->nchanges; k++) {
            fprintf(out, "  %s: ",
                    d->changes[k].path[0] ? d->changes[k].path : "(whole)");
            print_value(out, d->changes[k].old);
            fputs(" -> ", out);
            print_value(out, d->changes[k].new_);
            fputc('\n', out);
        }
        if (d->total_changes > d->nchanges)
            fprintf(out, "  ... %zu more\n", d->total_changes - d->nchanges);
    }
    fprintf(out, "\nread %.1f s, state %.1f s, decisions %.1f s: %s\n",
            r->read_s, r->state_s, r->decide_s,
            evl_verify_differs(r) ? "DIFFERENCES FOUND" : "no differences");
}

static void json_str(evl_buf *b, const char *key, const char *s)
{
    if (!s)
        return;
    evl_buf_putc(b, ',');
    evl_envelope_put_string(b, key, strlen(key));
    evl_buf_putc(b, ':');
    evl_envelope_put_string(b, s, strlen(s));
}

static void json_num(evl_buf *b, const char *key, long long v, int first)
{
    char n[32];
    if (!first)
        evl_buf_putc(b, ',');
    evl_envelope_put_string(b, key, strlen(key));
    snprintf(n, sizeof n, ":%lld", v);
    evl_buf_puts(b, n);
}

static void print_json(FILE *out, const evl_verify_report *r,
                       const char *scripts, const char *hash)
{
    evl_buf b = {0};
    char n[128];
    evl_buf_puts(&b, "{\"differs\":");
    evl_buf_puts(&b, evl_verify_differs(r) ? "true" : "false");
    json_str(&b, "scripts", scripts);
    json_str(&b, "hash", hash);
    evl_buf_puts(&b, ",\"types\":[");
    for (size_t t = 0; t < r->ntypes; t++) {
        const evl_verify_counts *c = &r->types[t];
        evl_buf_puts(&b, t ? ",{\"type\":" : "{\"type\":");
        evl_envelope_put_string(&b, c->type, strlen(c->type));
        json_num(&b, "records", c->records, 0);
        json_num(&b, "unreadable", c->unreadable, 0);
        json_num(&b, "aggregates", c->aggregates, 0);
        evl_buf_puts(&b, ",\"state\":{");
        json_num(&b, "equal", c->st_equal, 1);
        json_num(&b, "different", c->st_different, 0);
        json_num(&b, "failed", c->st_failed, 0);
        json_num(&b, "skipped", c->st_skipped, 0);
        evl_buf_puts(&b, "},\"decisions\":{");
        json_num(&b, "same", c->dc_same, 1);
        json_num(&b, "different", c->dc_different, 0);
        json_num(&b, "newly_rejected", c->dc_newly_rejected, 0);
        json_num(&b, "newly_failing", c->dc_newly_failing, 0);
        json_num(&b, "skipped", c->dc_skipped, 0);
        evl_buf_puts(&b, "}}");
    }
    evl_buf_puts(&b, "],\"differences\":[");
    for (size_t i = 0; i < r->ndiffs; i++) {
        const evl_verify_diff *d = &r->diffs[i];
        evl_buf_puts(&b, i ? ",{\"part\":" : "{\"part\":");
        evl_envelope_put_string(&b, d->part, strlen(d->part));
        json_str(&b, "kind", d->kind);
        json_str(&b, "type", d->type);
        json_str(&b, "aggregate_id", d->aggregate_id);
        json_str(&b, "command_id", d->command_id);
        json_str(&b, "command", d->command);
        json_str(&b, "old", d->old_outcome);
        json_str(&b, "new", d->new_outcome);
        json_str(&b, "detail", d->detail);
        if (d->total_changes) {
            /* old and new are JSON texts from the encoder: written as they
             * are; an absent side is left out */
            evl_buf_puts(&b, ",\"changes\":[");
            for (size_t k = 0; k < d->nchanges; k++) {
                evl_buf_puts(&b, k ? ",{\"path\":" : "{\"path\":");
                evl_envelope_put_string(&b, d->changes[k].path,
                                        strlen(d->changes[k].path));
                if (d->changes[k].old) {
                    evl_buf_puts(&b, ",\"old\":");
                    evl_buf_puts(&b, d->changes[k].old);
                }
                if (d->changes[k].new_) {
                    evl_buf_puts(&b, ",\"new\":");
                    evl_buf_puts(&b, d->changes[k].new_);
                }
                evl_buf_putc(&b, '}');
            }
            evl_buf_putc(&b, ']');
            json_num(&b, "total_changes", (long long)d->total_changes, 0);
        }
        evl_buf_putc(&b, '}');
    }
    snprintf(n, sizeof n,
             "],\"seconds\":{\"read\":%.3f,\"state\":%.3f,\"decisions\":%.3f}"
             "}\n",
             r->read_s, r->state_s, r->decide_s);
    evl_buf_puts(&b, n);
    fwrite(b.data, 1, b.len, out);
    evl_buf_free(&b);
}

static int parse_count(const char *opt, const char *s, long long *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v <= 0) {
        fprintf(stderr, "evlua verify: %s wants a positive number, not '%s'\n",
                opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int evl_cli_verify(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},
        {"scripts", required_argument, 0, 's'},
        {"aggregate-type", required_argument, 0, 't'},
        {"limit", required_argument, 0, 'n'},
        {"show", required_argument, 0, 'S'},
        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *config = NULL, *scripts = NULL;
    evl_verify_opts vo = {0};
    long long show = 10;
    int json = 0, c, rc;
    char err[EVL_ERRLEN];
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:s:t:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 's': scripts = optarg; break;
        case 't': vo.aggregate_type = optarg; break;
        case 'n':
            if (parse_count("--limit", optarg, &vo.limit))
                return EVL_EXIT_USAGE;
            break;
        case 'S':
            if (parse_count("--show", optarg, &show))
                return EVL_EXIT_USAGE;
            break;
        case 'j': json = 1; break;
        case 'h': fputs(verify_usage, stdout); return EVL_EXIT_OK;
        default: evl_cli_usage_error(verify_usage); return EVL_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "evlua verify: unexpected argument '%s'\n",
                argv[optind]);
        evl_cli_usage_error(verify_usage);
        return EVL_EXIT_USAGE;
    }
    if (!scripts) {
        fprintf(stderr, "evlua verify: --scripts NEWDIR is required (the new "
                        "scripts to check)\n");
        evl_cli_usage_error(verify_usage);
        return EVL_EXIT_USAGE;
    }
    vo.show = (size_t)show;

    evl_config cfg;
    evl_luahost_config hc;
    evl_luahost *host = NULL;
    evl_verify_report r = {0};
    if ((rc = evl_cli_load_config(config, &cfg)) != EVL_EXIT_OK)
        return rc;
    evl_cli_host_config(&cfg, scripts, &hc);
    /* only aggregates are verified: NEWDIR needs no projections */
    hc.nprojection_dirs = 0;
    if ((rc = evl_cli_load_host(&hc, &host)) != EVL_EXIT_OK)
        goto out;
    if (vo.aggregate_type &&
        !evl_luahost_aggregate_get(host, vo.aggregate_type)) {
        fprintf(stderr,
                "evlua verify: %s/aggregates has no aggregate of type "
                "%s\n",
                scripts, vo.aggregate_type);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    if (evl_luahost_naggregates(host) == 0) {
        fprintf(stderr, "evlua verify: %s/aggregates holds no aggregate\n",
                scripts);
        rc = EVL_EXIT_USAGE;
        goto out;
    }
    if (isatty(STDERR_FILENO))
        vo.progress = progress;
    evl_err e = evl_verify_run(&cfg, host, &vo, &r, err, sizeof err);
    if (vo.progress)
        fputs("\r\033[K", stderr);
    if (e != EVL_OK) {
        fprintf(stderr, "evlua verify: %s\n", err);
        rc = EVL_EXIT_FAILURE;
        goto out;
    }
    if (json)
        print_json(stdout, &r, scripts, evl_luahost_hash(host));
    else
        print_text(stdout, &r, scripts, evl_luahost_hash(host));
    rc = evl_verify_differs(&r) ? EVL_EXIT_FAILURE : EVL_EXIT_OK;
out:
    evl_verify_report_free(&r);
    evl_luahost_free(host);
    evl_config_free(&cfg);
    return rc;
}
