/*
 * bench_verify.c - what `evlua verify` costs on a real history.
 *
 *   bench_verify ROUNDS AGGREGATES
 *
 * Writes the history through a real `evlua run` with the example customer
 * aggregate: AGGREGATES customers registered with an address (2 events
 * each), then ROUNDS - 1 rounds of UpdateCustomerProfile changing name
 * and address (2 events each): ROUNDS * AGGREGATES commands, twice as
 * many events (5 10000: 50,000 commands, 100,000 events over 10,000
 * aggregates). Then runs `evlua verify --json` three times:
 *   baseline  --limit 1: reading the four topics, next to no Lua;
 *   same      the same scripts (exit 0 expected);
 *   renamed   apply keeps the address under another name (exit 1: every
 *             state differs, and every profile update that set an address
 *             decides differently).
 * Each three times; the run of median wall time is printed: wall seconds,
 * CPU seconds (user + system, from wait4), max
 * RSS (MB) and the ratio of wall time to the baseline's. One line of
 * key=value per run. Exit 0 when the counts are what the scripts imply.
 * Needs the broker (svc.h), EVLUA_BIN and EVLUA_SOURCE_DIR.
 */
#include <sys/resource.h>
#include <sys/wait.h>

#include "cmdtest.h"

static ct t;

typedef struct run {
    double wall, cpu, rss_mb;
    int rc;
    cJSON *j;
} run;

static run verify(const char *scripts, const char *limit)
{
    char cfg[1024], outp[1024];
    static char text[1 << 20];
    const char *argv[] = {
        t.bin,       "verify", "-c",     cfg,
        "--scripts", scripts,  "--json", limit ? "--limit" : NULL,
        limit,       NULL};
    run r = {0};
    struct rusage ru;
    int status;
    snprintf(cfg, sizeof cfg, "%s/a.lua", t.dir);
    snprintf(outp, sizeof outp, "%s/verify.out", t.dir);
    double t0 = th_now();
    pid_t pid = fork();
    if (pid < 0)
        th_die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fo, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (wait4(pid, &status, 0, &ru) != pid)
        th_die("wait4: %s", strerror(errno));
    r.wall = th_now() - t0;
    r.cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
            (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    r.rss_mb = (double)ru.ru_maxrss / 1024.0;
    r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    th_read_file(outp, text, sizeof text);
    r.j = cJSON_Parse(text);
    if (!r.j)
        th_die("evlua verify printed no JSON (exit %d)", r.rc);
    return r;
}

/* The run of median wall time of three (the broker is shared: one run
 * can lose a second to it). */
static run verify3(const char *scripts, const char *limit)
{
    run r[3], x;
    for (int i = 0; i < 3; i++)
        r[i] = verify(scripts, limit);
    for (int i = 0; i < 3; i++)
        for (int k = i + 1; k < 3; k++)
            if (r[k].wall < r[i].wall) {
                x = r[i];
                r[i] = r[k];
                r[k] = x;
            }
    cJSON_Delete(r[0].j);
    cJSON_Delete(r[2].j);
    return r[1];
}

static long long num(const cJSON *j, const char *part, const char *name)
{
    const cJSON *ty = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "types"), 0);
    const cJSON *v =
        cJSON_GetObjectItem(part ? cJSON_GetObjectItem(ty, part) : ty, name);
    return cJSON_IsNumber(v) ? (long long)v->valuedouble : -1;
}

static void print(const char *name, const run *r, const run *base)
{
    const cJSON *s = cJSON_GetObjectItem(r->j, "seconds");
    printf(
        "run=%s exit=%d records=%lld aggregates=%lld wall_s=%.2f "
        "cpu_s=%.2f max_rss_mb=%.0f read_s=%.2f state_s=%.2f "
        "decisions_s=%.2f vs_baseline=%.2f state_equal=%lld "
        "state_different=%lld decisions_same=%lld "
        "decisions_different=%lld\n",
        name, r->rc, num(r->j, NULL, "records"), num(r->j, NULL, "aggregates"),
        r->wall, r->cpu, r->rss_mb, cJSON_GetObjectItem(s, "read")->valuedouble,
        cJSON_GetObjectItem(s, "state")->valuedouble,
        cJSON_GetObjectItem(s, "decisions")->valuedouble, r->wall / base->wall,
        num(r->j, "state", "equal"), num(r->j, "state", "different"),
        num(r->j, "decisions", "same"), num(r->j, "decisions", "different"));
    fflush(stdout);
}

/* A copy of customer.lua in DIR/NAME/aggregates, the first `from`
 * replaced by `to` (from NULL: as it is). */
static void variant(const char *name, const char *from, const char *to,
                    char *dir, size_t n)
{
    char path[1024], src[16384], text[20000], *at;
    snprintf(path, sizeof path, "%s/aggregates/customer.lua", t.dir);
    th_read_file(path, src, sizeof src);
    snprintf(dir, n, "%s/%s", t.dir, name);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/aggregates", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/aggregates/customer.lua", dir);
    if (from && !(at = strstr(src, from)))
        th_die("customer.lua has no \"%s\"", from);
    if (from)
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - src), src, to,
                 at + strlen(from));
    th_write_file(path, from ? text : src);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench_verify ROUNDS AGGREGATES\n");
        return 2;
    }
    int rounds = atoi(argv[1]), aggs = atoi(argv[2]);
    long long ncmd = (long long)rounds * aggs;
    char results[256], same[1024], renamed[1024];
    th_recs res = {0};
    ct_init_customer(&t, "bverify", "a", NULL, NULL);
    ct_topic(&t, "customer", "results", results, sizeof results);

    double t0 = th_now();
    pid_t pid = ct_start(&t, "a", "a.log", NULL);
    rd_kafka_t *p = ct_producer(&t);
    ct_wait_topic(&t, results, 30);
    for (int r = 0; r < rounds; r++) {
        for (int a = 0; a < aggs; a++) {
            char id[64], agg[32], data[256];
            snprintf(agg, sizeof agg, "c-%d", a);
            snprintf(id, sizeof id, "cmd-%d-%d", r, a);
            if (r == 0)
                snprintf(data, sizeof data,
                         "{\"name\":\"N%d\",\"email\":\"c%d@ok.example\","
                         "\"address\":\"Street %d\"}",
                         a, a, a);
            else
                snprintf(data, sizeof data,
                         "{\"name\":\"N%d-%d\",\"address\":\"Street %d-%d\"}",
                         a, r, a, r);
            ct_send(&t, p, "customer", id,
                    r == 0 ? "RegisterCustomer" : "UpdateCustomerProfile", agg,
                    data, NULL);
        }
    }
    ct_flush(p);
    rd_kafka_destroy(p);
    if ((long long)ct_wait_count(&t, results, (size_t)ncmd, 900, &res) < ncmd)
        th_die("only %zu of %lld results came", res.n, ncmd);
    th_recs_free(&res);
    if (th_stop(pid, SIGTERM, 60) != 0)
        th_die("evlua run did not stop cleanly");
    printf("history commands=%lld events=%lld aggregates=%d written_s=%.1f\n",
           ncmd, 2 * ncmd, aggs, th_now() - t0);

    variant("same", NULL, NULL, same, sizeof same);
    variant("renamed", "s.address = e.data.newAddress",
            "s.postalAddress = e.data.newAddress", renamed, sizeof renamed);
    run base = verify3(same, "1");
    print("baseline", &base, &base);
    run s = verify3(same, NULL);
    print("same", &s, &base);
    run rn = verify3(renamed, NULL);
    print("renamed", &rn, &base);

    CHECK_INT(base.rc, 0, "baseline: nothing differs");
    CHECK_INT(s.rc, 0, "the same scripts: exit 0");
    CHECK_INT(num(s.j, "state", "equal"), aggs, "every state equal");
    CHECK_INT(num(s.j, "decisions", "same"), ncmd, "every decision the same");
    CHECK_INT(rn.rc, 1, "renamed: exit 1");
    CHECK_INT(num(rn.j, "state", "different"), aggs, "every state differs");
    CHECK_INT(num(rn.j, "decisions", "different"), ncmd - aggs,
              "every profile update decides differently");
    cJSON_Delete(base.j);
    cJSON_Delete(s.j);
    cJSON_Delete(rn.j);
    return check_done();
}
