/*
 * test_conninfo.c - a conninfo never leaks its password: not through
 * evl_config_redact_conninfo (what logs print), not through an error
 * about it.
 *
 * Besides the cases of issue 15, a deterministic randomized check builds
 * many conninfos in every form libpq accepts (key=value with quotes,
 * escapes, tabs and newlines; URIs with user:password@, percent-encoding,
 * percent-encoded query keys; repeated keys) with random passwords made of
 * quotes, spaces, backslashes, "://", "@", "%xx", newlines and runs of
 * letters that appear nowhere else, and mutations of them that libpq may
 * refuse. Each must keep the promises of conninfo_props.h (the output
 * depends on the settings libpq parsed but not on the secrets, and parses
 * back to them; a refused one shows only libpq's words), and no letter
 * only passwords are made of may show.
 *
 *   test_conninfo [COUNT [SEED]]    (default 20000 cases, a fixed seed)
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "check.h"
#include "config.h"
#include "conninfo_props.h"

/* Passwords' letters: uppercase that no other part of a generated
 * conninfo uses, and none of the letters of libpq's messages ("URI",
 * "IPv6"), so any of them in the output is a leak. */
static const char pw_letters[] = "ABCDEFGHJKMNOTWXYZ";

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* splitmix64: deterministic for a seed, on every platform */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int rn(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

typedef struct sbuf {
    char s[4096];
    size_t n;
} sbuf;

static void put(sbuf *b, const char *s)
{
    size_t l = strlen(s);
    if (b->n + l >= sizeof b->s)
        l = sizeof b->s - 1 - b->n;
    memcpy(b->s + b->n, s, l);
    b->n += l;
    b->s[b->n] = '\0';
}

static void putc_(sbuf *b, char c)
{
    char s[2] = {c, '\0'};
    put(b, s);
}

static const char *const pw_specials[] = {
    "'", "\"", " ",  "  ",  "\\", "://",       "@",  "%41",
    "%", "%2", "\n", "\t",  "=",  "&",         "?",  "/",
    ":", ",",  "#",  "\\'", "''", "password=", "%70"};

static void gen_password(sbuf *pw)
{
    int pieces = 1 + rn(6);
    pw->n = 0;
    pw->s[0] = '\0';
    for (int i = 0; i < pieces; i++) {
        if (i == 0 || rn(2)) {
            int len = 1 + rn(8);
            for (int k = 0; k < len; k++)
                putc_(pw, pw_letters[rn((int)sizeof pw_letters - 1)]);
        } else {
            put(pw, pw_specials[rn(
                        (int)(sizeof pw_specials / sizeof *pw_specials))]);
        }
    }
}

static void gen_word(sbuf *b, int len)
{
    static const char lower[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int k = 0; k < len; k++)
        putc_(b, lower[rn((int)sizeof lower - 1)]);
}

/* A key=value value: quoted with \ escapes, or bare with \ before
 * whitespace, backslashes and a leading quote. */
static void put_kv_value(sbuf *b, const char *v)
{
    int needs = *v == '\0' || *v == '\'';
    for (const char *p = v; *p; p++)
        if (isspace((unsigned char)*p) || *p == '\\' || *p == '\'')
            needs = 1;
    if (needs ? rn(3) != 0 : rn(4) == 0) {
        putc_(b, '\'');
        for (const char *p = v; *p; p++) {
            if (*p == '\'' || *p == '\\')
                putc_(b, '\\');
            putc_(b, *p);
        }
        putc_(b, '\'');
        return;
    }
    for (const char *p = v; *p; p++) {
        if (isspace((unsigned char)*p) || *p == '\\' || (p == v && *p == '\''))
            putc_(b, '\\');
        putc_(b, *p);
    }
}

static void put_pct(sbuf *b, const char *v)
{
    static const char hexu[] = "0123456789ABCDEF", hexl[] = "0123456789abcdef";
    for (const char *p = v; *p; p++) {
        unsigned char c = (unsigned char)*p;
        int unreserved =
            isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
        if (unreserved && rn(4) != 0) {
            putc_(b, (char)c);
        } else {
            const char *hex = rn(2) ? hexu : hexl;
            putc_(b, '%');
            putc_(b, hex[c >> 4]);
            putc_(b, hex[c & 15]);
        }
    }
}

static const char *const kv_seps[] = {" ", "  ", "\t", "\n", " \n ", "\r\n"};

static void gen_kv(sbuf *b, const sbuf *pw, const sbuf *decoy)
{
    const char *keys[] = {
        "host",    "port",           "dbname", "user", "application_name",
        "sslmode", "connect_timeout"};
    int nk = (int)(sizeof keys / sizeof *keys);
    int pw_at = rn(nk + 1), decoy_at = decoy ? rn(pw_at + 1) : -1;
    int first = 1;
    for (int i = 0; i <= nk; i++) {
        for (int w = 0; w < 2; w++) {
            const char *key;
            sbuf v = {.n = 0};
            v.s[0] = '\0';
            if (w == 0 && i == decoy_at) {
                key = "password";
                put(&v, decoy->s);
            } else if (w == 1 && i == pw_at) {
                key = "password";
                put(&v, pw->s);
            } else if (w == 1 && i < nk && rn(3) != 0) {
                key = keys[i];
                if (strcmp(key, "port") == 0 ||
                    strcmp(key, "connect_timeout") == 0) {
                    snprintf(v.s, sizeof v.s, "%d", 1 + rn(65000));
                } else if (strcmp(key, "application_name") == 0) {
                    gen_word(&v, 1 + rn(5));
                    put(&v, rn(2) ? " x" : "'y");
                } else if (strcmp(key, "sslmode") == 0) {
                    put(&v, rn(2) ? "prefer" : "disable");
                } else {
                    gen_word(&v, 1 + rn(6));
                }
            } else {
                continue;
            }
            if (!first)
                put(b, kv_seps[rn((int)(sizeof kv_seps / sizeof *kv_seps))]);
            first = 0;
            put(b, key);
            put(b, rn(4) ? "=" : " = ");
            put_kv_value(b, v.s);
        }
    }
    if (rn(4) == 0)
        put(b, kv_seps[rn((int)(sizeof kv_seps / sizeof *kv_seps))]);
}

static void gen_uri(sbuf *b, const sbuf *pw, const sbuf *decoy)
{
    int in_userinfo = rn(2);
    put(b, rn(2) ? "postgresql://" : "postgres://");
    if (in_userinfo || rn(3) == 0) {
        gen_word(b, 1 + rn(5));
        if (in_userinfo) {
            putc_(b, ':');
            put_pct(b, pw->s);
        }
        putc_(b, '@');
    }
    int hosts = rn(3);
    for (int h = 0; h < hosts; h++) {
        if (h)
            putc_(b, ',');
        if (rn(5) == 0)
            put(b, "[::1]");
        else
            gen_word(b, 1 + rn(6));
        if (rn(2)) {
            char port[16];
            snprintf(port, sizeof port, ":%d", 1 + rn(65000));
            put(b, port);
        }
    }
    if (rn(3) != 0) {
        putc_(b, '/');
        gen_word(b, 1 + rn(6));
    }
    int params = (!in_userinfo ? 1 : 0) + rn(3), sep = 0;
    int pw_param = in_userinfo ? -1 : rn(params);
    int decoy_param = decoy && params > 1 ? rn(params) : -1;
    if (decoy_param == pw_param)
        decoy_param = -1;
    for (int i = 0; i < params; i++) {
        put(b, sep++ ? "&" : "?");
        if (i == pw_param || i == decoy_param) {
            /* the key percent-encoded too, now and then */
            put(b, rn(3) == 0 ? "%70assword"
                   : rn(2)    ? "pass%77ord"
                              : "password");
            putc_(b, '=');
            put_pct(b, i == pw_param ? pw->s : decoy->s);
        } else if (rn(2)) {
            put(b, "application_name=");
            gen_word(b, 1 + rn(6));
        } else {
            put(b, "sslmode=prefer");
        }
    }
}

/* One to three random edits: what a typo or a bad paste does. */
static void mutate(sbuf *b)
{
    static const char ins[] = "'\\ =@/:?&%\n\"abc";
    int edits = 1 + rn(3);
    for (int e = 0; e < edits && b->n > 0; e++) {
        size_t at = (size_t)rn((int)b->n);
        switch (rn(3)) {
        case 0: /* delete */
            memmove(b->s + at, b->s + at + 1, b->n - at);
            b->n--;
            break;
        case 1: /* insert */
            if (b->n + 2 < sizeof b->s) {
                memmove(b->s + at + 1, b->s + at, b->n - at + 1);
                b->s[at] = ins[rn((int)sizeof ins - 1)];
                b->n++;
            }
            break;
        default: /* replace */ b->s[at] = ins[rn((int)sizeof ins - 1)]; break;
        }
    }
}

static int has_pw_letter(const char *s)
{
    for (; *s; s++)
        if (strchr(pw_letters, *s))
            return 1;
    return 0;
}

/* "%41".."%5A": a password letter percent-encoded. */
static int has_encoded_letter(const char *s)
{
    for (; *s; s++)
        if (s[0] == '%' && (s[1] == '4' || s[1] == '5') && s[2] &&
            isxdigit((unsigned char)s[2]))
            return 1;
    return 0;
}

static int failures_shown;

static void report(const char *what, const char *in, const char *out)
{
    check_failures_++;
    if (failures_shown++ < 10) {
        fprintf(stderr, "FAIL: %s\n  conninfo: ", what);
        for (const char *p = in; *p; p++)
            fprintf(stderr, isprint((unsigned char)*p) ? "%c" : "\\x%02x",
                    (unsigned char)*p);
        fprintf(stderr, "\n  redacted: ");
        for (const char *p = out; *p; p++)
            fprintf(stderr, isprint((unsigned char)*p) ? "%c" : "\\x%02x",
                    (unsigned char)*p);
        fputc('\n', stderr);
    }
}

/* generated: built by this file and certainly parseable, so its password
 * letters are nowhere else; else a mutation that libpq may refuse. */
static void one_case(const char *in, int generated)
{
    char out[8192];
    check_count_++;
    const char *bad = conninfo_props(in, out, sizeof out);
    if (bad) {
        report(bad, in, out);
        return;
    }
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(in, &perr);
    PQfreemem(perr);
    if (generated && !opts)
        report("a generated conninfo that libpq refuses (test bug)", in, out);
    else if ((generated || !opts) &&
             (has_pw_letter(out) || has_encoded_letter(out)))
        report("a password letter shows", in, out);
    PQconninfoFree(opts);
}

static void randomized(long count, uint64_t seed)
{
    int before = check_failures_;
    rng_state = seed;
    for (long i = 0; i < count; i++) {
        sbuf pw = {.n = 0}, decoy = {.n = 0}, in = {.n = 0};
        in.s[0] = '\0';
        gen_password(&pw);
        int with_decoy = rn(5) == 0;
        if (with_decoy)
            gen_password(&decoy);
        if (rn(2))
            gen_kv(&in, &pw, with_decoy ? &decoy : NULL);
        else
            gen_uri(&in, &pw, with_decoy ? &decoy : NULL);
        int mutated = rn(3) == 0;
        if (mutated)
            mutate(&in);
        one_case(in.s, !mutated);
    }
    if (check_failures_ != before)
        fprintf(stderr, "randomized: %d of %ld cases failed (seed %llu)\n",
                check_failures_ - before, count, (unsigned long long)seed);
}

static void redacts(const char *in, const char *secret, const char *what)
{
    char out[1024];
    evl_config_redact_conninfo(in, out, sizeof out);
    check_count_++;
    if (strstr(out, secret))
        CHECK_FAIL_("%s: \"%s\" shows in \"%s\"", what, secret, out);
}

static char path[64];

static evl_err load(const char *text, evl_config *cfg, char *err)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return evl_config_load(path, cfg, err, EVL_ERRLEN);
}

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 20000;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 15;
    char out[1024], err[EVL_ERRLEN];
    evl_config cfg;

    /* the cases of issue 15, item 2 */
    redacts("host=h password=Ab://cd-x dbname=d", "cd-x",
            "\"://\" inside a key=value password");
    redacts("host=h dbname=postgres://x password=SeCrEt", "SeCrEt",
            "\"://\" in another value");
    redacts("host=h\npassword=SeCrEt\ndbname=d", "SeCrEt",
            "pairs separated by newlines");
    redacts("host=h\tpassword=SeCrEt", "SeCrEt", "pairs separated by tabs");
    redacts("postgresql://u@h/db?password=s%65cret", "s%65cret",
            "a percent-encoded URI password (as written)");
    redacts("postgresql://u@h/db?password=s%65cret", "cret",
            "a percent-encoded URI password (any part)");
    redacts("postgresql://u@h/db?%70assword=SeCrEt", "SeCrEt",
            "a URI password under a percent-encoded key");
    redacts("password=x://y@h", "y@h", "\"://\" at the start");
    redacts("host=h password=Sec ret", "Sec",
            "an unquoted password with a space (unparseable, first part)");
    redacts("host=h password=Sec ret", "ret",
            "an unquoted password with a space (unparseable, second part)");
    redacts("host=h password='SeCrEt", "SeCrEt", "an unterminated quote");
    redacts("host=h sslpassword=SeCrEt", "SeCrEt", "sslpassword");
    redacts("host=h password = SeCrEt", "SeCrEt", "spaces around '='");

    evl_config_redact_conninfo("host=x password=s3cret dbname=y", out,
                               sizeof out);
    CHECK_HAS(out, "password=***", "the password is shown as ***");
    CHECK_HAS(out, "host=x", "the other settings stay");
    CHECK_HAS(out, "dbname=y", "all of them");
    evl_config_redact_conninfo("postgresql://u:s3cret@h:5/db", out, sizeof out);
    CHECK(!strstr(out, "s3cret"), "a URI's user:password@ is redacted");
    CHECK_HAS(out, "password=***", "as password=***");

    /* the config refuses a conninfo libpq cannot parse, quoting none of it */
    snprintf(path, sizeof path, "/tmp/evlua-test-conninfo-%ld.lua",
             (long)getpid());
    unsetenv("EVLUA_PG_CONNINFO");
    unsetenv("EVLUA_INSTANCE");
    CHECK_INT(
        load("return { postgres = 'host=h password=Sec ret' }", &cfg, err),
        EVL_EPERMANENT, "an unparseable postgres conninfo is an error");
    CHECK_HAS(err, "postgres", "naming the key");
    CHECK(!strstr(err, "Sec") && !strstr(err, "ret\""),
          "without quoting the conninfo");
    evl_config_free(&cfg);
    setenv("EVLUA_PG_CONNINFO", "host=h password=Sec ret", 1);
    CHECK_INT(load("return {}", &cfg, err), EVL_EPERMANENT,
              "an unparseable EVLUA_PG_CONNINFO is an error");
    CHECK_HAS(err, "EVLUA_PG_CONNINFO", "naming the variable");
    CHECK(!strstr(err, "Sec") && !strstr(err, "ret\""),
          "without quoting the conninfo");
    evl_config_free(&cfg);
    unsetenv("EVLUA_PG_CONNINFO");
    unlink(path);

    randomized(count, seed);
    return check_done();
}
