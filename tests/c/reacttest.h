/*
 * reacttest.h - the world of the reaction tests (tests/c/test_react_*.c),
 * on top of cmdtest.h: a private directory holding the two fixture
 * aggregates of tests/fixtures/react_e2e (member, the source; parcel,
 * which reacts to it), a config whose topics, groups and transactional
 * ids carry the test's prefix, and helpers to read the reaction side's
 * topics, to run `evlua parked --reactions` and to read the metrics
 * endpoint of `evlua run`.
 */
#ifndef EVL_REACTTEST_H
#define EVL_REACTTEST_H

#include "cmdtest.h"

/* Copy tests/fixtures/react_e2e/aggregates/NAME into the test's
 * aggregates. */
static inline void rt_copy_fixture(const ct *t, const char *name)
{
    char from[1024], to[1024], buf[8192];
    size_t n;
    FILE *in, *out;
    snprintf(from, sizeof from, "%s/tests/fixtures/react_e2e/aggregates/%s",
             t->src, name);
    snprintf(to, sizeof to, "%s/aggregates/%s", t->dir, name);
    if (!(in = fopen(from, "r")) || !(out = fopen(to, "w")))
        th_die("cannot copy %s to %s", from, to);
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
}

/* Write config NAME.lua; extra_reactions: Lua fields (with trailing
 * commas) for the reactions table, extra: top-level fields (e.g.
 * "metrics = { listen = '127.0.0.1:0' },"); either may be NULL. */
static inline void rt_config_ex(const ct *t, const char *name,
                                const char *extra_reactions, const char *extra)
{
    char text[8192], rel[256];
    snprintf(text, sizeof text,
             "return {\n"
             "  aggregates = '%s/aggregates',\n"
             "  projections = {},\n"
             "  kafka = { ['bootstrap.servers'] = '%s',\n"
             "            ['session.timeout.ms'] = 6000,\n"
             "            ['heartbeat.interval.ms'] = 1000 },\n"
             "  commands = {\n"
             "    group_id = '%s.group', transactional_id = '%s.tx',\n"
             "    partitions = 3,\n"
             "    topics = { commands = '%s.{type}.commands',\n"
             "               events = '%s.{type}.events',\n"
             "               state = '%s.{type}.state',\n"
             "               results = '%s.{type}.results' },\n"
             "  },\n"
             "  reactions = {\n"
             "    group_prefix = '%s.react.',\n"
             "    parked_topic = '%s.{type}.reactions.parked',\n"
             "    %s\n"
             "  },\n"
             "  %s\n"
             "}\n",
             t->dir, t->bootstrap, t->prefix, t->prefix, t->prefix, t->prefix,
             t->prefix, t->prefix, t->prefix, t->prefix,
             extra_reactions ? extra_reactions : "", extra ? extra : "");
    snprintf(rel, sizeof rel, "%s.lua", name);
    ct_write_file(t, rel, text);
}

/* rt_config_ex without top-level extras. */
static inline void rt_config(const ct *t, const char *name,
                             const char *extra_reactions)
{
    rt_config_ex(t, name, extra_reactions, NULL);
}

/* ct_init with both fixtures and config "a". */
static inline void rt_init(ct *t, const char *name, const char *extra_reactions)
{
    ct_init(t, name);
    rt_copy_fixture(t, "member.lua");
    rt_copy_fixture(t, "parcel.lua");
    rt_config(t, "a", extra_reactions);
}

/* Replace the first occurrence of from with to in DIR/aggregates/NAME. */
static inline void rt_edit_fixture(const ct *t, const char *name,
                                   const char *from, const char *to)
{
    char path[1024], text[16384], out[17408];
    snprintf(path, sizeof path, "%s/aggregates/%s", t->dir, name);
    th_read_file(path, text, sizeof text);
    char *at = strstr(text, from);
    if (!at)
        th_die("%s: no '%s' to replace", path, from);
    snprintf(out, sizeof out, "%.*s%s%s", (int)(at - text), text, to,
             at + strlen(from));
    th_write_file(path, out);
}

/* Run `evlua ARGS -c DIR/a.lua` (a shell command line fragment), its
 * stdout and stderr into out; returns its exit code. */
static inline int rt_evlua(const ct *t, const char *args, char *out, size_t n)
{
    char cmd[2048];
    size_t got;
    snprintf(cmd, sizeof cmd, "%s %s -c %s/a.lua 2>&1", t->bin, args, t->dir);
    FILE *f = popen(cmd, "r");
    if (!f)
        th_die("popen(%s) failed", cmd);
    got = fread(out, 1, n - 1, f);
    out[got] = '\0';
    int rc = pclose(f);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* How many records of recs have JSON string member name equal to v. */
static inline size_t rt_count(const th_recs *recs, const char *name,
                              const char *v)
{
    size_t n = 0;
    for (size_t i = 0; i < recs->n; i++) {
        const char *s = th_str(&recs->v[i], name);
        if (s && strcmp(s, v) == 0)
            n++;
    }
    return n;
}

/* metadata.NAME of a command record, or NULL. */
static inline const char *rt_meta(const th_rec *r, const char *name)
{
    cJSON *m = cJSON_GetObjectItemCaseSensitive(r->json, "metadata");
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, name));
}

/* Delete consumer group `group` (no members may be left in it). */
static inline void rt_delete_group(const ct *t, const char *group)
{
    rd_kafka_t *rk =
        th_kafka_new(RD_KAFKA_PRODUCER, ct_conf(t), "admin client");
    rd_kafka_DeleteGroup_t *g = rd_kafka_DeleteGroup_new(group);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DeleteGroups(rk, &g, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    if (!ev)
        th_die("DeleteGroups(%s): no answer", group);
    const rd_kafka_DeleteGroups_result_t *res =
        rd_kafka_event_DeleteGroups_result(ev);
    size_t cnt = 0;
    const rd_kafka_group_result_t **gr =
        rd_kafka_DeleteGroups_result_groups(res, &cnt);
    if (rd_kafka_event_error(ev) ||
        (cnt == 1 && rd_kafka_group_result_error(gr[0])))
        th_die("DeleteGroups(%s): %s", group,
               rd_kafka_event_error(ev)
                   ? rd_kafka_event_error_string(ev)
                   : rd_kafka_error_string(rd_kafka_group_result_error(gr[0])));
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_DeleteGroup_destroy(g);
    rd_kafka_destroy(rk);
}

/* ---- the metrics endpoint ---------------------------------------------- */

/* The port of the metrics endpoint `evlua run` logged to DIR/LOG ("metrics
 * endpoint listening ... port=N"; metrics.listen "127.0.0.1:0" picks a
 * free one), waiting up to timeout_ms for the line; 0 when it never came. */
static inline int rt_metrics_port(const ct *t, const char *log,
                                  long long timeout_ms)
{
    char path[1024], text[65536];
    if (!ct_wait_log(t, log, "metrics endpoint listening", timeout_ms))
        return 0;
    snprintf(path, sizeof path, "%s/%s", t->dir, log);
    th_read_file(path, text, sizeof text);
    const char *line = strstr(text, "metrics endpoint listening");
    const char *p = line ? strstr(line, " port=") : NULL;
    return p ? atoi(p + 6) : 0;
}

/* The value of series (a metric name with its labels as /metrics writes
 * them: name{type="parcel",outcome="reacted"}) on the endpoint at port;
 * -1 when /metrics does not list it. */
static inline double rt_metric(int port, const char *series)
{
    size_t cap = 1 << 20, n = strlen(series);
    char *b = malloc(cap);
    double v = -1;
    th_http_get(port, "/metrics", b, cap);
    for (const char *p = b; (p = strstr(p, series)) != NULL; p += n)
        if ((p == b || p[-1] == '\n') && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
    free(b);
    return v;
}

/* evlua_reactions_total{type,outcome} (rt_metric). */
static inline double rt_reactions(int port, const char *type,
                                  const char *outcome)
{
    char series[300];
    snprintf(series, sizeof series,
             "evlua_reactions_total{type=\"%s\",outcome=\"%s\"}", type,
             outcome);
    return rt_metric(port, series);
}

#endif
