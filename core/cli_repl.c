/*
 * cli_repl.c - `evlua repl`: try commands against the real scripts.
 *
 * In memory by default: no Kafka, no PostgreSQL. Each input line
 *
 *   AGGREGATE_TYPE AGGREGATE_ID COMMAND_TYPE [DATA]
 *
 * (DATA as JSON or as a Lua table constructor, default {}) runs through
 * the production host (luahost.h): the verdict, the events in their full
 * envelope, the new state and version, and the SQL every projection would
 * run for those events, and the commands each reaction (an aggregate's
 * react table) would send for them, without running them. `:follow`
 * runs such a chain in memory: the command, the reactions to its events,
 * their commands, and so on to a depth limit, printed as a tree. States
 * and events are kept per aggregate in this process only. Lines starting
 * with ':' are REPL commands (:help).
 *
 * Line editing, history and tab completion come from libedit when stdin is
 * a terminal; otherwise lines are read plainly, without prompts, so the
 * REPL can be scripted and tested through a pipe.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lualib.h>

#include "cli.h"
#include "cli_repl_int.h"
#include "envelope.h"
#include "json.h"
#include "log.h"
#include "luaapi.h"

static const char repl_usage[] =
    "usage: evlua repl [-c CONFIG] [--scripts DIR]\n"
    "\n"
    "Try commands against the real aggregate and projection scripts, in\n"
    "memory (no Kafka, no PostgreSQL needed): the events, the SQL, and the\n"
    "commands reactions would send (:follow runs the chain). A sandbox: it\n"
    "neither reads nor changes a running system's aggregates. Type :help\n"
    "inside.\n"
    "\n"
    "  -c, --config FILE   config file (scripts, limits, postgres for :db)\n"
    "  --scripts DIR       use DIR/aggregates, DIR/projections (and DIR/lib)\n"
    "\n"
    "Reads plain lines without prompts when stdin is not a terminal.\n";

static const char repl_help[] =
    "  TYPE ID COMMAND [DATA]   run a command; DATA is JSON or a Lua table\n"
    "                           (default {}), e.g.\n"
    "                           customer c1 RegisterCustomer {\"name\":\"Ann\","
    "\"email\":\"a@x.io\"}\n"
    "  :state TYPE ID           the aggregate's state and version\n"
    "  :events TYPE ID          the aggregate's events so far\n"
    "  :sql                     the SQL of the last command's events\n"
    "  :follow TYPE ID COMMAND [DATA]\n"
    "                           run the command and the chain it sets off:\n"
    "                           the reactions to its events, their\n"
    "                           commands, and so on (breadth first, as\n"
    "                           evlua run would), printed as a tree\n"
    "  :follow depth N          how many reaction steps :follow goes\n"
    "                           (default 8)\n"
    "  :db [QUERY]              apply every event of this session to\n"
    "                           PostgreSQL (config postgres) through the\n"
    "                           projections, then run QUERY (e.g. SELECT *\n"
    "                           FROM customers) and show its rows; all in\n"
    "                           a transaction that is rolled back\n"
    "  :brief                   short answers (verdict and event types) on\n"
    "                           and off\n"
    "  :reload                  reload every script (all or nothing), show\n"
    "                           what changed\n"
    "  :reset                   forget every aggregate\n"
    "  :help, :quit\n";

/* One aggregate instance kept in memory. */
typedef struct agg_inst {
    char *type, *id;
    char *state; /* JSON */
    long long version;
    evl_buf events; /* envelope JSON texts, one per line */
    struct agg_inst *next;
} agg_inst;

typedef struct repl {
    evl_config cfg;
    evl_luahost *host;
    agg_inst *aggs;
    evl_luahost_stmts stmts;
    evl_buf sql;       /* the last command's statements, for :sql */
    char **sql_events; /* envelope JSON of the last command's events */
    size_t nsql_events;
    char last[300];  /* what the last command did, when it was not
                        accepted with events (for :sql) */
    evl_buf session; /* every event of the session in order, one
                        envelope per line (for :db) */
    size_t nsession;
    int brief;                       /* :brief */
    int follow_depth;                /* :follow's depth limit */
    evl_luahost_reactions reactions; /* the last reaction's commands */
    lua_State *L;                    /* scratch state: Lua-table input, JSON */
    int tty;
} repl;

static repl R;

/* ---- printing -------------------------------------------------------- */

/* Print compact JSON text indented by 2 per level, prefixed by pad. */
static void print_pretty(const char *s, size_t len, const char *pad)
{
    int depth = 0, instr = 0;
    fputs(pad, stdout);
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (instr) {
            putchar(c);
            if (c == '\\' && i + 1 < len)
                putchar(s[++i]);
            else if (c == '"')
                instr = 0;
            continue;
        }
        switch (c) {
        case '"':
            instr = 1;
            putchar(c);
            break;
        case '{':
        case '[':
            if (i + 1 < len && (s[i + 1] == '}' || s[i + 1] == ']')) {
                putchar(c);
                putchar(s[++i]);
                break;
            }
            putchar(c);
            depth++;
            printf("\n%s%*s", pad, depth * 2, "");
            break;
        case '}':
        case ']':
            depth--;
            printf("\n%s%*s%c", pad, depth * 2, "", c);
            break;
        case ',': printf(",\n%s%*s", pad, depth * 2, ""); break;
        case ':': fputs(": ", stdout); break;
        default: putchar(c);
        }
    }
    putchar('\n');
}

/* ---- the aggregate store ---------------------------------------------- */

static agg_inst *find_inst(const char *type, const char *id, int create)
{
    for (agg_inst *a = R.aggs; a; a = a->next)
        if (strcmp(a->type, type) == 0 && strcmp(a->id, id) == 0)
            return a;
    if (!create)
        return NULL;
    agg_inst *a = evl_xmalloc(sizeof *a);
    memset(a, 0, sizeof *a);
    a->type = evl_xstrdup(type);
    a->id = evl_xstrdup(id);
    a->next = R.aggs;
    R.aggs = a;
    return a;
}

static void free_insts(void)
{
    while (R.aggs) {
        agg_inst *a = R.aggs;
        R.aggs = a->next;
        free(a->type);
        free(a->id);
        free(a->state);
        evl_buf_free(&a->events);
        free(a);
    }
}

static void clear_last(void)
{
    for (size_t i = 0; i < R.nsql_events; i++)
        free(R.sql_events[i]);
    free(R.sql_events);
    R.sql_events = NULL;
    R.nsql_events = 0;
    R.sql.len = 0;
    R.last[0] = '\0';
}

/* ---- input ----------------------------------------------------------------
 */

/* Turn DATA (JSON, or a Lua table constructor evaluated in an empty
 * environment) into JSON text in out. Returns 0, or -1 with err. */
static int data_to_json(const char *data, evl_buf *out, char *err,
                        size_t errlen)
{
    lua_State *L = R.L;
    int top = lua_gettop(L);
    out->len = 0;
    while (isspace((unsigned char)*data))
        data++;
    if (*data == '\0') {
        evl_buf_puts(out, "{}");
        return 0;
    }
    if (evl_json_decode(L, data, strlen(data), err, errlen) != EVL_OK) {
        /* not JSON: try a Lua table constructor */
        char jerr[EVL_ERRLEN];
        snprintf(jerr, sizeof jerr, "%s", err);
        size_t n = strlen(data) + 8;
        char *chunk = evl_xmalloc(n);
        snprintf(chunk, n, "return %s", data);
        int rc = luaL_loadbufferx(L, chunk, strlen(chunk), "=data", "t");
        free(chunk);
        if (rc == LUA_OK) {
            lua_newtable(L); /* empty environment: a constructor only */
            lua_setupvalue(L, -2, 1);
            rc = lua_pcall(L, 0, 1, 0);
        }
        if (rc != LUA_OK) {
            snprintf(err, errlen,
                     "DATA is neither JSON (%.200s) nor a Lua "
                     "table (%.200s)",
                     jerr, lua_tostring(L, -1));
            lua_settop(L, top);
            return -1;
        }
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "DATA must be an object, got %s",
                 luaL_typename(L, -1));
        lua_settop(L, top);
        return -1;
    }
    evl_err e = evl_json_encode(L, -1, out, err, errlen);
    lua_settop(L, top);
    return e == EVL_OK ? 0 : -1;
}

/* ---- commands -------------------------------------------------------------
 */

static void print_statements(const evl_luahost_stmts *s, const char *proj,
                             evl_buf *sql)
{
    FILE *out = R.brief ? NULL : stdout;
    for (size_t i = 0; i < s->n; i++) {
        const evl_luahost_stmt *st = &s->stmts[i];
        if (out)
            fprintf(out, "    %s: %.*s\n", proj, (int)st->sql_len, st->sql);
        evl_buf_puts(sql, "-- ");
        evl_buf_puts(sql, proj);
        evl_buf_putc(sql, '\n');
        evl_buf_put(sql, st->sql, st->sql_len);
        evl_buf_puts(sql, ";\n");
        if (st->nparams == 0)
            continue;
        if (out)
            fputs("      params:", out);
        evl_buf_puts(sql, "-- params:");
        for (size_t j = 0; j < st->nparams; j++) {
            const evl_luahost_param *p = &st->params[j];
            char one[160];
            if (p->type == EVL_PARAM_NULL)
                snprintf(one, sizeof one, " $%zu=NULL", j + 1);
            else
                snprintf(one, sizeof one, " $%zu=%s%.*s%s", j + 1,
                         p->type == EVL_PARAM_STRING ? "'" : "",
                         p->len > 100 ? 100 : (int)p->len, p->text,
                         p->type == EVL_PARAM_STRING ? "'" : "");
            if (out)
                fputs(one, out);
            evl_buf_puts(sql, one);
        }
        if (out)
            putc('\n', out);
        evl_buf_putc(sql, '\n');
        if (out && st->op != EVL_SQL_PLAIN)
            fprintf(out,
                    "      (evlua.%s: the projector sends the rows of this "
                    "table, columns and key in a batch as one %s)\n",
                    st->op == EVL_SQL_DELETE ? "delete" : "upsert",
                    st->op == EVL_SQL_DELETE
                        ? "DELETE ... USING unnest($1::type[], ...)"
                        : "INSERT ... SELECT * FROM unnest($1::type[], ...) "
                          "ON CONFLICT ...");
    }
}

/* The SQL every projection would run for one event envelope. */
static void project_event(const char *env, size_t len, const char *type)
{
    char err[EVL_ERRLEN];
    for (size_t i = 0; i < evl_luahost_nprojections(R.host); i++) {
        const evl_luahost_projection *p = evl_luahost_projection_at(R.host, i);
        if (!evl_luahost_projection_handles(p, type))
            continue;
        if (evl_luahost_project(R.host, p->name, env, len, &R.stmts, err,
                                sizeof err) != EVL_OK) {
            printf("    %s: FAILED: %s\n", p->name, err);
            continue;
        }
        print_statements(&R.stmts, p->name, &R.sql);
    }
}

/* Decide the command c (its JSON text cmd, len bytes, already parsed
 * into c) for aggregate type/id against the session's state of that
 * aggregate, as the command side would (an expected_version that does
 * not match is a rejection). When accepted, each event gets its envelope
 * (causation: the command; correlation and user: the command's, or the
 * command's id and "repl"), joins the aggregate's events and the
 * session, and the state and version move; envs receives the envelopes,
 * each NUL-terminated, one after another. *from: the version before. */
static evl_luahost_verdict session_decide(const char *type, const char *id,
                                          const evl_command *c, const char *cmd,
                                          size_t len, evl_luahost_decision *dec,
                                          long long *from, evl_buf *envs,
                                          char *err, size_t errlen)
{
    agg_inst *a = find_inst(type, id, 0);
    long long version = a ? a->version : 0;
    *from = version;
    envs->len = 0;
    if (c->has_expected_version && c->expected_version != version) {
        snprintf(err, errlen,
                 "expected version %lld, but aggregate %s is at version %lld",
                 c->expected_version, id, version);
        return EVL_LUAHOST_REJECTED;
    }
    evl_luahost_command lc = {.aggregate_type = type,
                              .aggregate_id = id,
                              .version = version,
                              .state = a ? a->state : NULL,
                              .state_len = a && a->state ? strlen(a->state) : 0,
                              .command = cmd,
                              .command_len = len};
    evl_luahost_verdict v = evl_luahost_decide(R.host, &lc, dec, err, errlen);
    if (v != EVL_LUAHOST_ACCEPTED)
        return v;
    a = find_inst(type, id, 1);
    evl_buf env = {0};
    for (size_t i = 0; i < dec->nevents; i++) {
        const evl_luahost_event *e = &dec->events[i];
        char eid[37], now[25];
        evl_luaapi_uuid7(eid);
        evl_luaapi_now(now);
        evl_envelope_event_in ev = {
            .id = eid,
            .type = e->type,
            .schema_version = e->version,
            .aggregate_type = type,
            .aggregate_id = id,
            .sequence = version + (long long)i + 1,
            .occurred_at = now,
            .causation_id = c->id,
            .correlation_id = c->correlation_id ? c->correlation_id : c->id,
            .user_id = c->user_id,
            .data = e->data,
            .data_len = e->data_len};
        env.len = 0;
        evl_envelope_event(&env, &ev);
        evl_buf_put(&a->events, env.data, env.len);
        evl_buf_putc(&a->events, '\n');
        evl_buf_put(&R.session, env.data, env.len);
        evl_buf_putc(&R.session, '\n');
        R.nsession++;
        evl_buf_put(envs, env.data, env.len);
        evl_buf_putc(envs, '\0');
    }
    evl_buf_free(&env);
    free(a->state);
    a->state = evl_xstrdup(dec->state);
    a->version += (long long)dec->nevents;
    return v;
}

/* After an accepted decision: a's new state, and the SQL every
 * projection would run for its events. */
static void show_outcome(const agg_inst *a, const evl_luahost_decision *dec)
{
    if (!R.brief) {
        printf("  state (version %lld):\n", a->version);
        print_pretty(dec->state, dec->state_len, "    ");
    }
    if (dec->nevents == 0)
        return;
    if (!R.brief)
        printf("  sql:\n");
    for (size_t i = 0; i < R.nsql_events; i++)
        project_event(R.sql_events[i], strlen(R.sql_events[i]),
                      dec->events[i].type);
    if (R.sql.len == 0 && !R.brief)
        printf("    (no projection handles these events)\n");
}

static void show_reactions(const char *type, const evl_luahost_decision *dec);

/* The wire command for a line TYPE ID COMMAND DATA (DATA as JSON or a Lua
 * table, converted into dj), parsed into c; cmd_id receives its fresh id.
 * Returns 0, or -1 after printing why (an unknown type, bad data). */
static int line_command(const char *type, const char *id, const char *ctype,
                        const char *data, evl_buf *dj, char cmd_id[37],
                        evl_buf *cmd, evl_command *c)
{
    char err[EVL_ERRLEN];
    if (!evl_luahost_aggregate_get(R.host, type)) {
        printf("rejected: unknown aggregate type '%s'\n", type);
        return -1;
    }
    if (data_to_json(data, dj, err, sizeof err) != 0) {
        printf("error: %s\n", err);
        return -1;
    }
    evl_luaapi_uuid7(cmd_id);
    evl_envelope_command_in ci = {.id = cmd_id,
                                  .type = ctype,
                                  .aggregate_type = type,
                                  .aggregate_id = id,
                                  .data = dj->data,
                                  .data_len = dj->len,
                                  .user_id = "repl"};
    cmd->len = 0;
    evl_envelope_command(cmd, &ci);
    if (evl_envelope_parse_command(R.L, cmd->data, cmd->len, c, err,
                                   sizeof err) != EVL_OK) {
        printf("error: %s\n", err);
        return -1;
    }
    return 0;
}

static void run_command(const char *type, const char *id, const char *ctype,
                        const char *data)
{
    char err[EVL_ERRLEN], cmd_id[37];
    evl_buf dj = {0}, cmd = {0}, envs = {0};
    evl_command c = {0};
    evl_luahost_decision dec = {0};
    long long from;

    if (line_command(type, id, ctype, data, &dj, cmd_id, &cmd, &c) != 0)
        goto out;
    evl_luahost_verdict v = session_decide(type, id, &c, cmd.data, cmd.len,
                                           &dec, &from, &envs, err, sizeof err);
    clear_last();
    if (v != EVL_LUAHOST_ACCEPTED) {
        const char *what = v == EVL_LUAHOST_REJECTED ? "rejected" : "failed";
        printf("%s: %s\n", what, err);
        snprintf(R.last, sizeof R.last, "the last command (%s %s %s) was %s",
                 type, id, ctype, what);
        goto out;
    }
    agg_inst *a = find_inst(type, id, 0);
    printf("accepted: %zu event%s, version %lld -> %lld\n", dec.nevents,
           dec.nevents == 1 ? "" : "s", from, a->version);
    if (dec.nevents == 0)
        snprintf(R.last, sizeof R.last,
                 "the last command (%s %s %s) emitted no events", type, id,
                 ctype);
    R.sql_events = evl_xmalloc(sizeof(char *) * (dec.nevents + 1));
    const char *env = envs.data;
    for (size_t i = 0; i < dec.nevents; i++, env += strlen(env) + 1) {
        long long seq = from + (long long)i + 1;
        if (R.brief) {
            printf("  %lld %s\n", seq, dec.events[i].type);
        } else {
            printf("  event %s (sequence %lld):\n", dec.events[i].type, seq);
            print_pretty(env, strlen(env), "    ");
        }
        R.sql_events[R.nsql_events++] = evl_xstrdup(env);
    }
    show_outcome(a, &dec);
    show_reactions(type, &dec);
out:
    evl_envelope_command_free(&c);
    evl_luahost_decision_free(&dec);
    evl_buf_free(&dj);
    evl_buf_free(&cmd);
    evl_buf_free(&envs);
}

/* ---- reactions: what they would send, and :follow ------------------------
 */

/* The data of the command JSON cmd, as compact JSON text in out. */
static void command_data(const char *cmd, size_t len, evl_buf *out)
{
    char err[EVL_ERRLEN];
    lua_State *L = R.L;
    int top = lua_gettop(L);
    out->len = 0;
    if (evl_json_decode(L, cmd, len, err, sizeof err) == EVL_OK &&
        lua_getfield(L, -1, "data") == LUA_TTABLE &&
        evl_json_encode(L, -1, out, err, sizeof err) == EVL_OK) {
        lua_settop(L, top);
        return;
    }
    lua_settop(L, top);
    out->len = 0;
    evl_buf_puts(out, "{}");
}

/* Run every reaction to the event envelope env (aggregate type src, event
 * type etype): fn(arg, reacting type, rc, err) once per aggregate type
 * that reacts to it, with its commands in R.reactions when rc is EVL_OK.
 * Returns how many reacted. */
typedef void (*react_fn)(void *arg, const char *reactor, evl_err rc,
                         const char *err);
static size_t react_all(const char *src, const char *etype, const char *env,
                        react_fn fn, void *arg)
{
    size_t n = 0;
    for (size_t i = 0; i < evl_luahost_naggregates(R.host); i++) {
        const evl_luahost_aggregate *a = evl_luahost_aggregate_at(R.host, i);
        if (!evl_luahost_reacts_to(a, src, etype))
            continue;
        char err[EVL_ERRLEN] = "";
        /* the config's cap, so the REPL refuses what `evlua run` would */
        evl_err rc = evl_luahost_react(R.host, a->type, env, strlen(env),
                                       (size_t)R.cfg.react.max_commands,
                                       &R.reactions, err, sizeof err);
        fn(arg, a->type, rc, err);
        n++;
    }
    return n;
}

/* One reaction's outcome, after a command (show_reactions). */
static void show_one(void *arg, const char *reactor, evl_err rc,
                     const char *err)
{
    const char *etype = arg;
    evl_buf data = {0};
    if (rc != EVL_OK) {
        if (R.brief)
            printf("  -> %s: FAILED: %s\n", reactor, err);
        else
            printf("    %s, to %s: FAILED: %s\n", reactor, etype, err);
        return;
    }
    if (R.reactions.n == 0 && !R.brief)
        printf("    %s, to %s: no command\n", reactor, etype);
    for (size_t i = 0; i < R.reactions.n; i++) {
        const evl_luahost_reaction *c = &R.reactions.cmds[i];
        if (R.brief) {
            printf("  -> %s %s %s\n", reactor, c->aggregate_id, c->type);
            continue;
        }
        command_data(c->json, c->len, &data);
        printf("    %s, to %s: %s %s %.*s\n", reactor, etype, c->type,
               c->aggregate_id, (int)data.len, data.data);
        print_pretty(c->json, c->len, "      ");
    }
    evl_buf_free(&data);
}

/* After an accepted command: the commands each reaction would send for
 * its events (R.sql_events), without sending or running them. */
static void show_reactions(const char *type, const evl_luahost_decision *dec)
{
    int header = 0;
    for (size_t i = 0; i < R.nsql_events; i++) {
        const char *etype = dec->events[i].type;
        int reacts = 0;
        for (size_t j = 0; j < evl_luahost_naggregates(R.host) && !reacts; j++)
            reacts = evl_luahost_reacts_to(evl_luahost_aggregate_at(R.host, j),
                                           type, etype);
        if (!reacts)
            continue;
        if (!header && !R.brief)
            printf("  reactions (not run; :follow runs the chain):\n");
        header = 1;
        react_all(type, etype, R.sql_events[i], show_one, (void *)etype);
    }
}

#define FOLLOW_MAX_COMMANDS 1000 /* commands one :follow decides */
#define FOLLOW_NONE         ((size_t)-1)

/* A node of :follow's tree: a command (or a reaction that failed), what
 * came of it, and its events. Children are the commands the reactions
 * to its events sent, in event order: kid, then next. */
typedef struct fnode {
    int depth;
    size_t event;     /* which event of the parent caused it */
    size_t kid, last; /* first and last child; FOLLOW_NONE: none */
    size_t next;      /* next sibling */
    char *cmd;        /* the command JSON; NULL: a failed reaction */
    char *line;       /* the command and what came of it */
    char **events;    /* "#SEQ Type {data}" per event */
    size_t nevents;
} fnode;

typedef struct follow {
    fnode *nodes;
    size_t n, cap;
    int limit;
    size_t cur, cur_event; /* the node and event reactions run for */
    long accepted, rejected, failed, cut, reactfail, events;
    int deepest;
} follow;

static size_t follow_add(follow *f, size_t parent, size_t event, int depth,
                         char *cmd, char *line)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 16;
        f->nodes = evl_xrealloc(f->nodes, sizeof *f->nodes * f->cap);
    }
    fnode *k = &f->nodes[f->n];
    memset(k, 0, sizeof *k);
    k->depth = depth;
    k->event = event;
    k->kid = k->last = k->next = FOLLOW_NONE;
    k->cmd = cmd;
    k->line = line;
    if (parent != FOLLOW_NONE) {
        fnode *p = &f->nodes[parent];
        if (p->last == FOLLOW_NONE)
            p->kid = f->n;
        else
            f->nodes[p->last].next = f->n;
        p->last = f->n;
    }
    return f->n++;
}

static char *fmt(const char *format, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(NULL, 0, format, ap);
    va_end(ap);
    char *s = evl_xmalloc((size_t)n + 1);
    va_start(ap, format);
    vsnprintf(s, (size_t)n + 1, format, ap);
    va_end(ap);
    return s;
}

/* A reaction's outcome during :follow: its commands become children of
 * the current node, one level deeper. */
static void follow_one(void *arg, const char *reactor, evl_err rc,
                       const char *err)
{
    follow *f = arg;
    int depth = f->nodes[f->cur].depth + 1;
    if (rc != EVL_OK) {
        f->reactfail++;
        follow_add(f, f->cur, f->cur_event, depth, NULL,
                   fmt("reaction of %s FAILED: %s", reactor, err));
        return;
    }
    for (size_t i = 0; i < R.reactions.n; i++) {
        const evl_luahost_reaction *c = &R.reactions.cmds[i];
        follow_add(f, f->cur, f->cur_event, depth, evl_xstrdup(c->json), NULL);
    }
}

/* Decide node i of f and run the reactions to its events. */
static void follow_decide(follow *f, size_t i)
{
    char err[EVL_ERRLEN];
    evl_command c = {0};
    evl_luahost_decision dec = {0};
    evl_buf envs = {0}, data = {0};
    fnode *k = &f->nodes[i];
    long long from;
    const char *cmd = k->cmd;
    if (evl_envelope_parse_command(R.L, cmd, strlen(cmd), &c, err,
                                   sizeof err) != EVL_OK) {
        k->line = fmt("invalid command: %s", err);
        f->failed++;
        goto out;
    }
    command_data(cmd, strlen(cmd), &data);
    const char *what = fmt("%s %s %s %.*s", c.aggregate_type, c.aggregate_id,
                           c.type, (int)data.len, data.data);
    if (k->depth > f->limit ||
        f->accepted + f->rejected + f->failed >= FOLLOW_MAX_COMMANDS) {
        k->line = fmt("%s: not followed (%s)", what,
                      k->depth > f->limit ? "deeper than the depth limit"
                                          : "too many commands");
        f->cut++;
        free((char *)what);
        goto out;
    }
    if (k->depth > f->deepest)
        f->deepest = k->depth;
    evl_luahost_verdict v =
        session_decide(c.aggregate_type, c.aggregate_id, &c, cmd, strlen(cmd),
                       &dec, &from, &envs, err, sizeof err);
    if (v == EVL_LUAHOST_ACCEPTED) {
        f->accepted++;
        k->line = fmt("%s: accepted, version %lld -> %lld", what, from,
                      from + (long long)dec.nevents);
    } else {
        *(v == EVL_LUAHOST_REJECTED ? &f->rejected : &f->failed) += 1;
        k->line = fmt("%s: %s: %s", what,
                      v == EVL_LUAHOST_REJECTED ? "rejected" : "FAILED", err);
    }
    free((char *)what);
    if (v != EVL_LUAHOST_ACCEPTED)
        goto out;
    k->events = evl_xmalloc(sizeof(char *) * (dec.nevents + 1));
    k->nevents = dec.nevents;
    f->events += (long)dec.nevents;
    const char *env = envs.data;
    for (size_t j = 0; j < dec.nevents; j++, env += strlen(env) + 1) {
        const evl_luahost_event *e = &dec.events[j];
        f->nodes[i].events[j] = fmt("#%lld %s %.*s", from + (long long)j + 1,
                                    e->type, (int)e->data_len, e->data);
        f->cur = i;
        f->cur_event = j;
        react_all(c.aggregate_type, e->type, env, follow_one, f);
    }
out:
    evl_envelope_command_free(&c);
    evl_luahost_decision_free(&dec);
    evl_buf_free(&envs);
    evl_buf_free(&data);
}

static void follow_print(const follow *f, size_t i, int pad)
{
    const fnode *k = &f->nodes[i];
    printf("%*s%s\n", pad, "", k->line);
    size_t kid = k->kid;
    for (size_t j = 0; j < k->nevents; j++) {
        printf("%*s%s\n", pad + 2, "", k->events[j]);
        for (; kid != FOLLOW_NONE && f->nodes[kid].event == j;
             kid = f->nodes[kid].next)
            follow_print(f, kid, pad + 4);
    }
}

/* :follow TYPE ID COMMAND [DATA]: the command, then every reaction to
 * its events, their commands, and so on, breadth first as the pipelines
 * would run them, to the depth limit; all in the session. */
static void cmd_follow(const char *type, const char *id, const char *ctype,
                       const char *data)
{
    char cmd_id[37];
    evl_buf dj = {0}, cmd = {0};
    evl_command c = {0};
    follow f = {.limit = R.follow_depth};
    if (line_command(type, id, ctype, data, &dj, cmd_id, &cmd, &c) != 0)
        goto out;
    clear_last();
    snprintf(R.last, sizeof R.last,
             "the last command (%s %s %s) ran in :follow (:db applies every "
             "event of the session)",
             type, id, ctype);
    evl_buf_putc(&cmd, '\0');
    follow_add(&f, FOLLOW_NONE, 0, 0, evl_xstrdup(cmd.data), NULL);
    for (size_t i = 0; i < f.n; i++)
        if (f.nodes[i].cmd)
            follow_decide(&f, i);
    follow_print(&f, 0, 0);
    printf("followed %ld command%s (%ld accepted, %ld rejected, %ld failed), "
           "%ld event%s, %d reaction step%s deep",
           f.accepted + f.rejected + f.failed,
           f.accepted + f.rejected + f.failed == 1 ? "" : "s", f.accepted,
           f.rejected, f.failed, f.events, f.events == 1 ? "" : "s", f.deepest,
           f.deepest == 1 ? "" : "s");
    if (f.reactfail)
        printf("; %ld reaction%s FAILED", f.reactfail,
               f.reactfail == 1 ? "" : "s");
    if (f.cut)
        printf("; %ld command%s not followed (depth limit %d: :follow depth "
               "N)",
               f.cut, f.cut == 1 ? "" : "s", f.limit);
    putchar('\n');
out:
    for (size_t i = 0; i < f.n; i++) {
        for (size_t j = 0; j < f.nodes[i].nevents; j++)
            free(f.nodes[i].events[j]);
        free(f.nodes[i].events);
        free(f.nodes[i].cmd);
        free(f.nodes[i].line);
    }
    free(f.nodes);
    evl_envelope_command_free(&c);
    evl_buf_free(&dj);
    evl_buf_free(&cmd);
}

static void cmd_state(const char *type, const char *id, int events)
{
    agg_inst *a = type && id ? find_inst(type, id, 0) : NULL;
    if (!a) {
        printf("no events for %s %s in this session (the REPL runs in "
               "memory: it does not read a running system's aggregates)\n",
               type ? type : "?", id ? id : "?");
        return;
    }
    if (!events) {
        printf("version %lld\n", a->version);
        print_pretty(a->state, strlen(a->state), "  ");
        return;
    }
    const char *p = a->events.data, *end = p + a->events.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        print_pretty(p, (size_t)(nl - p), "  ");
        p = nl + 1;
    }
}

/* Names of the aggregates, commands and projections of a host, for
 * :reload's diff. */
static void describe(evl_luahost *h, evl_buf *b)
{
    b->len = 0;
    for (size_t i = 0; i < evl_luahost_naggregates(h); i++) {
        const evl_luahost_aggregate *a = evl_luahost_aggregate_at(h, i);
        for (size_t j = 0; j < a->ncommands; j++) {
            evl_buf_puts(b, "aggregate ");
            evl_buf_puts(b, a->type);
            evl_buf_puts(b, " command ");
            evl_buf_puts(b, a->commands[j]);
            evl_buf_putc(b, '\n');
        }
        for (size_t j = 0; j < a->nevents; j++) {
            evl_buf_puts(b, "aggregate ");
            evl_buf_puts(b, a->type);
            evl_buf_puts(b, " applies ");
            evl_buf_puts(b, a->events[j]);
            evl_buf_putc(b, '\n');
        }
    }
    for (size_t i = 0; i < evl_luahost_nprojections(h); i++) {
        const evl_luahost_projection *p = evl_luahost_projection_at(h, i);
        for (size_t j = 0; j < p->nevents; j++) {
            evl_buf_puts(b, "projection ");
            evl_buf_puts(b, p->name);
            evl_buf_puts(b, " on ");
            evl_buf_puts(b, p->events[j]);
            evl_buf_putc(b, '\n');
        }
    }
    evl_buf_putc(b, '\0');
}

/* Print the lines of a that are not in b, prefixed by mark. */
static int diff_lines(const char *a, const char *b, char mark)
{
    int n = 0;
    const char *p = a;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = (size_t)(nl - p);
        int found = 0;
        for (const char *q = b; *q;) {
            const char *qnl = strchr(q, '\n');
            if ((size_t)(qnl - q) == len && memcmp(p, q, len) == 0) {
                found = 1;
                break;
            }
            q = qnl + 1;
        }
        if (!found) {
            printf("  %c %.*s\n", mark, (int)len, p);
            n++;
        }
        p = nl + 1;
    }
    return n;
}

static void cmd_reload(void)
{
    char err[EVL_ERRLEN];
    evl_luahost *fresh = NULL;
    evl_luahost_problems problems = {0};
    if (evl_luahost_reload(R.host, &fresh, &problems, err, sizeof err) !=
        EVL_OK) {
        printf("reload failed; keeping the loaded scripts (%s):\n",
               evl_luahost_hash(R.host));
        for (size_t i = 0; i < problems.n; i++)
            printf("  %s\n", problems.lines[i]);
        evl_luahost_problems_free(&problems);
        return;
    }
    evl_buf before = {0}, after = {0};
    describe(R.host, &before);
    describe(fresh, &after);
    printf("reloaded: %s -> %s\n", evl_luahost_hash(R.host),
           evl_luahost_hash(fresh));
    int n = diff_lines(before.data, after.data, '-') +
            diff_lines(after.data, before.data, '+');
    if (n == 0)
        printf("  (same aggregates, commands and projections; script "
               "bodies %s)\n",
               strcmp(evl_luahost_hash(R.host), evl_luahost_hash(fresh))
                   ? "changed"
                   : "unchanged");
    evl_buf_free(&before);
    evl_buf_free(&after);
    evl_luahost_free(R.host);
    R.host = fresh;
}

/* ---- line editing ---------------------------------------------------------
 */

static char *dup_match(const char *s)
{
    return strdup(s); /* libedit frees matches with free() */
}

static char *complete_gen(const char *text, int state)
{
    static size_t i, j;
    static int word, after_follow;
    if (state == 0) {
        i = j = 0;
        /* which word is being completed? */
        word = 0;
        const char *line = rl_line_buffer;
        int inword = 0;
        for (int k = 0; k < rl_point && line[k]; k++) {
            if (isspace((unsigned char)line[k]))
                inword = 0;
            else if (!inword) {
                inword = 1;
                word++;
            }
        }
        if (rl_point == 0 || isspace((unsigned char)line[rl_point - 1]))
            word++;
        /* :follow TYPE ID COMMAND: complete as a line without :follow */
        while (isspace((unsigned char)*line))
            line++;
        after_follow = strncmp(line, ":follow", 7) == 0 &&
                       isspace((unsigned char)line[7]) && word > 1;
        word -= after_follow;
    }
    size_t tl = strlen(text);
    if (word <= 1) {
        static const char *const cmds[] = {
            ":state", ":events", ":sql",   ":db",   ":follow",
            ":brief", ":reload", ":reset", ":help", ":quit"};
        for (; i < evl_luahost_naggregates(R.host); i++) {
            const char *t = evl_luahost_aggregate_at(R.host, i)->type;
            if (strncmp(t, text, tl) == 0) {
                i++;
                return dup_match(t);
            }
        }
        for (; j < sizeof cmds / sizeof cmds[0]; j++)
            if (strncmp(cmds[j], text, tl) == 0)
                return dup_match(cmds[j++]);
        return NULL;
    }
    if (word == 3) {
        char type[128] = "";
        sscanf(rl_line_buffer, after_follow ? "%*s %127s" : "%127s", type);
        const evl_luahost_aggregate *a =
            evl_luahost_aggregate_get(R.host, type);
        if (!a)
            return NULL;
        for (; i < a->ncommands; i++)
            if (strncmp(a->commands[i], text, tl) == 0)
                return dup_match(a->commands[i++]);
    }
    return NULL;
}

static char **complete(const char *text, int start, int end)
{
    rl_attempted_completion_over = 1;
    return rl_completion_matches(text, complete_gen);
}

/* Next line, owned by the caller (free()); NULL at end of input. */
static char *next_line(void)
{
    if (R.tty) {
        char *l = readline("evlua> ");
        if (l && *l)
            add_history(l);
        return l;
    }
    size_t cap = 0;
    char *l = NULL;
    ssize_t n = getline(&l, &cap, stdin);
    if (n < 0) {
        free(l);
        return NULL;
    }
    l[strcspn(l, "\r\n")] = '\0';
    return l;
}

/* Split TYPE ID COMMAND off p (in place) into words; returns the rest
 * (DATA), or NULL with a message printed when a word is missing. */
static char *split_command(char *p, char *words[3])
{
    for (int w = 0; w < 3; w++) {
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0') {
            printf("error: expected TYPE ID COMMAND [DATA] (:help)\n");
            return NULL;
        }
        words[w] = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (*p)
            *p++ = '\0';
    }
    return p;
}

/* :follow depth N | :follow TYPE ID COMMAND [DATA] */
static void follow_line(char *p)
{
    char *words[3], *rest;
    long n;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '\0') {
        printf("usage: :follow TYPE ID COMMAND [DATA] | :follow depth N "
               "(depth limit now %d)\n",
               R.follow_depth);
        return;
    }
    if (strncmp(p, "depth", 5) == 0 &&
        (p[5] == '\0' || isspace((unsigned char)p[5]))) {
        char *end;
        n = strtol(p + 5, &end, 10);
        while (isspace((unsigned char)*end))
            end++;
        if (end == p + 5 || *end || n < 1 || n > 100) {
            printf("error: :follow depth needs a number from 1 to 100\n");
            return;
        }
        R.follow_depth = (int)n;
        printf("follow depth limit %d\n", R.follow_depth);
        return;
    }
    if ((rest = split_command(p, words)))
        cmd_follow(words[0], words[1], words[2], rest);
}

/* Handle one line; returns 0 to quit. */
static int handle_line(char *line)
{
    char *p = line;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '\0' || *p == '#')
        return 1;
    if (*p == ':') {
        char cmd[32] = "", a1[256] = "", a2[256] = "";
        sscanf(p, "%31s %255s %255s", cmd, a1, a2);
        if (strcmp(cmd, ":quit") == 0 || strcmp(cmd, ":q") == 0)
            return 0;
        else if (strcmp(cmd, ":help") == 0)
            fputs(repl_help, stdout);
        else if (strcmp(cmd, ":state") == 0)
            cmd_state(a1, a2, 0);
        else if (strcmp(cmd, ":events") == 0)
            cmd_state(a1, a2, 1);
        else if (strcmp(cmd, ":sql") == 0) {
            if (R.last[0])
                printf("no SQL: %s\n", R.last);
            else if (R.sql.len == 0)
                printf("no SQL yet: run a command first\n");
            else
                fwrite(R.sql.data, 1, R.sql.len, stdout);
        } else if (strcmp(cmd, ":db") == 0) {
            const char *q = p + 3;
            while (isspace((unsigned char)*q))
                q++;
            evl_repl_db db = {.conninfo = R.cfg.pg_conninfo,
                              .host = R.host,
                              .session = R.session.data,
                              .session_len = R.session.len,
                              .nevents = R.nsession,
                              .stmts = &R.stmts};
            evl_repl_db_run(&db, q);
        } else if (strcmp(cmd, ":follow") == 0) {
            follow_line(p + 7);
        } else if (strcmp(cmd, ":brief") == 0) {
            R.brief = !R.brief;
            printf("brief answers %s\n", R.brief ? "on" : "off");
        } else if (strcmp(cmd, ":reload") == 0)
            cmd_reload();
        else if (strcmp(cmd, ":reset") == 0) {
            free_insts();
            clear_last();
            R.session.len = 0;
            R.nsession = 0;
            printf("all aggregates forgotten\n");
        } else
            printf("unknown command %s (:help)\n", cmd);
        return 1;
    }
    /* TYPE ID COMMAND [DATA] */
    char *words[3];
    if ((p = split_command(p, words)))
        run_command(words[0], words[1], words[2], p);
    return 1;
}

int evl_cli_repl(int argc, char **argv)
{
    const char *config, *scripts;
    int rc =
        evl_cli_script_opts(argc, argv, "repl", repl_usage, &config, &scripts);
    if (rc >= 0)
        return rc;
    memset(&R, 0, sizeof R);
    R.follow_depth = 8;
    if ((rc = evl_cli_load_config(config, &R.cfg)))
        return rc;
    /* the REPL's own chatter would drown the answers: warnings only,
     * unless asked for more */
    if (!getenv("EVLUA_LOG_LEVEL"))
        evl_log_set_level(EVL_LOG_WARN);
    evl_luahost_config hc;
    evl_cli_host_config(&R.cfg, scripts, &hc);
    if ((rc = evl_cli_load_host(&hc, &R.host))) {
        evl_config_free(&R.cfg);
        return rc;
    }
    R.L = luaL_newstate();
    R.tty = isatty(0) && isatty(1);
    if (R.tty) {
        rl_readline_name = "evlua";
        rl_attempted_completion_function = complete;
        printf("evlua repl: %zu aggregates, %zu projections (scripts %s), "
               "in memory: not connected to a running system. :help for "
               "help.\n",
               evl_luahost_naggregates(R.host),
               evl_luahost_nprojections(R.host), evl_luahost_hash(R.host));
    }
    char *line;
    while ((line = next_line())) {
        int go = handle_line(line);
        free(line);
        fflush(stdout);
        if (!go)
            break;
    }
    free_insts();
    clear_last();
    evl_buf_free(&R.sql);
    evl_buf_free(&R.session);
    evl_luahost_stmts_free(&R.stmts);
    evl_luahost_reactions_free(&R.reactions);
    evl_luahost_free(R.host);
    lua_close(R.L);
    evl_config_free(&R.cfg);
    return EVL_EXIT_OK;
}
