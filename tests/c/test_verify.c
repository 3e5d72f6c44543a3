/*
 * test_verify.c - `evlua verify` against the real broker: a history
 * written by `evlua run` with the example customer aggregate (six
 * customers, three of them with an address; emails changed, one of them
 * twice to a domain a new rule will block; a rejected registration; a
 * name change), then verified with
 *   (a) the same scripts: exit 0, every state equal, every decision same;
 *   (b) a copy whose apply keeps the address under another name: exit 1,
 *       exactly the three customers with an address listed as different
 *       (the diff: address gone, postalAddress added), the others equal,
 *       and every decision the same (no handle reads the address here);
 *   (c) a copy whose handle rejects one email domain: exit 1, states
 *       equal, exactly the two commands that set such an email newly
 *       rejected;
 *   (d) a copy that renames an event field (newAddress -> address) with an
 *       upcast and reads the new name in apply: exit 0, the recorded
 *       events go through the upcast, so every state is equal;
 * Two records no command side writes (an event that is no JSON, a
 * result without a status) are counted as unreadable and change nothing.
 * And --limit, --aggregate-type, the text table, and usage errors (exit
 * 2: no --scripts, a bad --limit, an unknown type, a stray argument,
 * scripts that do not load).
 */
#include <sys/wait.h>

#include "cmdtest.h"

static ct t;

/* Run evlua verify with args (NULL-terminated, after "verify"), stdout
 * into out (a cJSON document when it parses) and the text into text. */
static int verify(const char *const *args, char *text, size_t n, cJSON **out)
{
    char outp[1024], errp[1024], cfg[1024];
    const char *argv[32];
    int k = 0;
    snprintf(outp, sizeof outp, "%s/verify.out", t.dir);
    snprintf(errp, sizeof errp, "%s/verify.err", t.dir);
    snprintf(cfg, sizeof cfg, "%s/a.lua", t.dir);
    argv[k++] = t.bin;
    argv[k++] = "verify";
    argv[k++] = "-c";
    argv[k++] = cfg;
    for (; *args && k < 30; args++)
        argv[k++] = *args;
    argv[k] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        th_die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644),
            fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int rc = th_wait(pid, 120);
    if (rc < 0)
        th_die("evlua verify did not end in 120 s");
    th_read_file(outp, text, n);
    if (out)
        *out = cJSON_Parse(text);
    char err[4096];
    th_read_file(errp, err, sizeof err);
    if (err[0])
        fprintf(stderr, "evlua verify stderr:\n%s", err);
    return rc;
}

static long long num(const cJSON *j, const char *part, const char *name)
{
    const cJSON *types = cJSON_GetObjectItem(j, "types");
    const cJSON *ty = cJSON_GetArrayItem(types, 0);
    const cJSON *p = part ? cJSON_GetObjectItem(ty, part) : ty;
    const cJSON *v = cJSON_GetObjectItem(p, name);
    return cJSON_IsNumber(v) ? (long long)v->valuedouble : -1;
}

/* The sorted, comma-joined values of member name of the differences of
 * part and kind. */
static const char *listed(const cJSON *j, const char *part, const char *kind,
                          const char *name, char *b, size_t n)
{
    const char *v[64];
    size_t m = 0, o = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(j, "differences"))
    {
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(d, "part"));
        const char *k = cJSON_GetStringValue(cJSON_GetObjectItem(d, "kind"));
        const char *x = cJSON_GetStringValue(cJSON_GetObjectItem(d, name));
        if (p && k && x && !strcmp(p, part) && !strcmp(k, kind) && m < 64)
            v[m++] = x;
    }
    for (size_t i = 0; i < m; i++) /* insertion sort: a few names */
        for (size_t k = i; k > 0 && strcmp(v[k - 1], v[k]) > 0; k--) {
            const char *s = v[k];
            v[k] = v[k - 1];
            v[k - 1] = s;
        }
    b[0] = '\0';
    for (size_t i = 0; i < m && o < n; i++)
        o += (size_t)snprintf(b + o, n - o, "%s%s", i ? "," : "", v[i]);
    return b;
}

/* A copy of the customer aggregate in DIR/NAME/aggregates with the first
 * `from` replaced by `to`. */
static void variant(const char *name, const char *from, const char *to)
{
    char path[1024], src[16384], *at, text[20000];
    snprintf(path, sizeof path, "%s/aggregates/customer.lua", t.dir);
    th_read_file(path, src, sizeof src);
    snprintf(path, sizeof path, "%s/%s", t.dir, name);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/aggregates", t.dir, name);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/aggregates/customer.lua", t.dir, name);
    if (!from) {
        th_write_file(path, src);
        return;
    }
    if (!(at = strstr(src, from)))
        th_die("customer.lua has no \"%s\" any more", from);
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - src), src, to,
             at + strlen(from));
    th_write_file(path, text);
}

static void write_history(void)
{
    char results[256];
    th_recs res = {0};
    ct_topic(&t, "customer", "results", results, sizeof results);
    pid_t pid = ct_start(&t, "a", "a.log", NULL);
    rd_kafka_t *p = ct_producer(&t);
    ct_wait_topic(&t, results, 30);
    for (int i = 1; i <= 6; i++) {
        char id[32], agg[16], data[256];
        snprintf(agg, sizeof agg, "c-%d", i);
        snprintf(id, sizeof id, "reg-%d", i);
        snprintf(data, sizeof data,
                 "{\"name\":\"N%d\",\"email\":\"n%d@ok.example\"%s}", i, i,
                 i <= 3 ? ",\"address\":\"Street 1\"" : "");
        ct_send(&t, p, "customer", id, "RegisterCustomer", agg, data, NULL);
        snprintf(id, sizeof id, "mail-%d", i);
        snprintf(data, sizeof data, "{\"email\":\"m%d@%s.example\"}", i,
                 i == 1 || i == 4 ? "blocked" : "ok");
        ct_send(&t, p, "customer", id, "ChangeEmail", agg, data, NULL);
    }
    ct_send(&t, p, "customer", "reg-again", "RegisterCustomer", "c-2",
            "{\"name\":\"X\",\"email\":\"x@ok.example\"}", NULL);
    ct_send(&t, p, "customer", "rename-5", "UpdateCustomerProfile", "c-5",
            "{\"name\":\"Five\"}", NULL);
    ct_flush(p);
    CHECK_INT(ct_wait_count(&t, results, 14, 90, &res), 14,
              "every command has its result");
    th_recs_free(&res);
    /* records no command side writes: counted, not compared */
    char topic[256];
    ct_topic(&t, "customer", "events", topic, sizeof topic);
    ct_send_raw(p, topic, -1, "c-1", "not json", 8);
    ct_send_raw(p, results, -1, "c-1", "{\"x\":1}", 7);
    ct_flush(p);
    rd_kafka_destroy(p);
    CHECK_INT(th_stop(pid, SIGTERM, 30), 0, "evlua run stops cleanly");
}

int main(void)
{
    char text[65536], b[1024], dir[1024];
    cJSON *j = NULL;
    ct_init_customer(&t, "verify", "a", NULL, NULL);
    write_history();

    /* (a) the same scripts */
    variant("same", NULL, NULL);
    snprintf(dir, sizeof dir, "%s/same", t.dir);
    const char *a_args[] = {"--scripts", dir, "--json", NULL};
    CHECK_INT(verify(a_args, text, sizeof text, &j), 0,
              "the same scripts: nothing differs, exit 0");
    CHECK(j != NULL, "--json prints one JSON document");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(j, "differs")), "differs false");
    CHECK_INT(num(j, NULL, "aggregates"), 6, "six customers read");
    CHECK_INT(num(j, NULL, "unreadable"), 2,
              "a record that is no event and one that is no result counted");
    CHECK_INT(num(j, "state", "equal"), 6, "every state equal");
    CHECK_INT(num(j, "state", "different"), 0, "none different");
    CHECK_INT(num(j, "decisions", "same"), 14,
              "every decision the same "
              "(the rejected one too)");
    CHECK_INT(num(j, "decisions", "skipped"), 0, "none skipped");
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "differences")), 0,
              "no differences listed");
    cJSON_Delete(j);

    /* (b) apply keeps the address under another name */
    variant("renamed", "s.address = e.data.newAddress",
            "s.postalAddress = e.data.newAddress");
    snprintf(dir, sizeof dir, "%s/renamed", t.dir);
    const char *b_args[] = {"--scripts", dir, "--json", NULL};
    CHECK_INT(verify(b_args, text, sizeof text, &j), 1,
              "a renamed field in apply: exit 1");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "differs")), "differs true");
    CHECK_INT(num(j, "state", "different"), 3, "three states differ");
    CHECK_INT(num(j, "state", "equal"), 3, "the three without address equal");
    CHECK_STR(listed(j, "state", "different", "aggregate_id", b, sizeof b),
              "c-1,c-2,c-3", "exactly the customers with an address listed");
    CHECK_INT(num(j, "decisions", "same"), 14,
              "no handle here reads the address: decisions the same");
    CHECK_HAS(text,
              "\"changes\":[{\"path\":\"address\",\"old\":\"Street 1\"},"
              "{\"path\":\"postalAddress\",\"new\":\"Street 1\"}]",
              "the diff: address gone, postalAddress added");
    cJSON_Delete(j);
    const char *b_text[] = {"--scripts", dir, NULL};
    CHECK_INT(verify(b_text, text, sizeof text, NULL), 1, "text: exit 1 too");
    snprintf(b, sizeof b, "\n%-26s %12d\n", "state different", 3);
    CHECK_HAS(text, b,
              "the summary table: a row per count, a column per "
              "type");
    CHECK_HAS(text,
              "customer c-2: state different\n  address: \"Street 1\" "
              "-> (absent)\n  postalAddress: (absent) -> \"Street 1\"",
              "a difference as text");
    CHECK_HAS(text, "DIFFERENCES FOUND", "the verdict");

    /* --limit: only the first aggregates read */
    const char *l_args[] = {"--scripts", dir, "--json", "--limit", "2", NULL};
    verify(l_args, text, sizeof text, &j);
    CHECK_INT(num(j, "state", "equal") + num(j, "state", "different"), 2,
              "--limit 2: two states compared");
    cJSON_Delete(j);

    /* (c) handle rejects a domain */
    variant("rule", "if cmd.data.email == s.email then return {} end",
            "if cmd.data.email:match(\"@blocked%.example$\") then\n"
            "        return ctx.reject(\"this domain is blocked\")\n"
            "      end\n"
            "      if cmd.data.email == s.email then return {} end");
    snprintf(dir, sizeof dir, "%s/rule", t.dir);
    const char *c_args[] = {"--scripts",        dir,        "--json",
                            "--aggregate-type", "customer", NULL};
    CHECK_INT(verify(c_args, text, sizeof text, &j), 1,
              "a new rejection rule: exit 1");
    CHECK_INT(num(j, "state", "equal"), 6, "apply unchanged: states equal");
    CHECK_INT(num(j, "decisions", "newly_rejected"), 2, "two newly rejected");
    CHECK_INT(num(j, "decisions", "same"), 12, "the rest the same");
    CHECK_STR(
        listed(j, "decisions", "newly_rejected", "command_id", b, sizeof b),
        "mail-1,mail-4", "exactly the commands that set such an email");
    CHECK_HAS(text, "\"new\":\"rejected: this domain is blocked\"",
              "the new outcome with its reason");
    CHECK_HAS(text, "\"old\":\"accepted (1 event: CustomerEmailChanged)\"",
              "the recorded outcome");
    cJSON_Delete(j);

    /* (d) a field renamed by upcast: the fold goes through it */
    variant("upcast", "s.address = e.data.newAddress",
            "s.address = e.data.address");
    snprintf(dir, sizeof dir, "%s/upcast/aggregates/customer.lua", t.dir);
    th_read_file(dir, text, sizeof text);
    char *h = strstr(text, "  handle = {");
    CHECK(h != NULL, "the customer script has its handle table");
    if (h) {
        static char up[20000];
        snprintf(up, sizeof up,
                 "%.*s  upcast = {\n    CustomerAddressChanged = "
                 "function(e)\n      e.data.address, e.data.newAddress = "
                 "e.data.newAddress, nil\n      return e\n    end,\n  "
                 "},\n\n%s",
                 (int)(h - text), text, h);
        th_write_file(dir, up);
    }
    snprintf(dir, sizeof dir, "%s/upcast", t.dir);
    const char *d_args[] = {"--scripts", dir, "--json", NULL};
    CHECK_INT(verify(d_args, text, sizeof text, &j), 0,
              "a field renamed by upcast and read by apply: exit 0");
    CHECK_INT(num(j, "state", "equal"), 6, "every state equal through upcast");
    CHECK_INT(num(j, "decisions", "same"), 14, "every decision the same");
    cJSON_Delete(j);

    /* usage errors: exit 2 */
    const char *u1[] = {"--json", NULL};
    CHECK_INT(verify(u1, text, sizeof text, NULL), 2, "no --scripts");
    const char *u2[] = {"--scripts", dir, "--limit", "0", NULL};
    CHECK_INT(verify(u2, text, sizeof text, NULL), 2, "--limit 0");
    const char *u3[] = {"--scripts", dir, "--aggregate-type", "nope", NULL};
    CHECK_INT(verify(u3, text, sizeof text, NULL), 2, "an unknown type");
    const char *u4[] = {"--scripts", dir, "extra", NULL};
    CHECK_INT(verify(u4, text, sizeof text, NULL), 2, "a stray argument");
    variant("broken", "return {", "return {{");
    snprintf(dir, sizeof dir, "%s/broken", t.dir);
    const char *u5[] = {"--scripts", dir, NULL};
    CHECK_INT(verify(u5, text, sizeof text, NULL), 2,
              "scripts that do not load");
    return check_done();
}
