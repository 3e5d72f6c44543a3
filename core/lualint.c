/*
 * lualint.c - the traps of a script set that load does not refuse, for
 * `evlua check` (evl_luahost_lint in luahost.h).
 *
 * The idea: which event types handle can emit is not something Lua can
 * tell without running it, but the source shows it well enough. At load
 * a small lexer reads each aggregate's text for table constructors with
 * a `type = "Name"` string and a `data` field (lh_source_facts); lint
 * then compares those types, and the optional emits list, with apply,
 * neutral and the projections' `on` keys, and suggests the nearest name
 * for a likely typo.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luahost_int.h"

/* ---- reading the source: what handle can emit --------------------------- */

/* Just enough of Lua's lexer to find event constructors in a script's
 * text: names, strings (short and long), single punctuation, with
 * comments skipped and lines counted. Anything it does not know becomes
 * punctuation, so no input can stop it or make it read past the end. */
enum { TK_EOF, TK_NAME, TK_STRING, TK_PUNCT };

typedef struct lex {
    const char *p, *end;
    int line;
    int kind, tline; /* the token and its line */
    char c;          /* TK_PUNCT: the character; 'x' for ==, ~=, <=, >= */
    const char *s;   /* TK_NAME, TK_STRING: text (a string's content) */
    size_t len;
} lex;

/* At '[': the level of the long bracket opening here ("[==[" is 2), or
 * -1 when none does. */
static int long_open(const lex *x)
{
    const char *q = x->p + 1;
    int level = 0;
    while (q < x->end && *q == '=') {
        q++;
        level++;
    }
    return q < x->end && *q == '[' ? level : -1;
}

/* Skip the long bracket of level opening at x->p; its content in s/len. */
static void long_skip(lex *x, int level)
{
    const char *q = x->p + level + 2;
    x->s = q;
    for (; q < x->end; q++) {
        if (*q == '\n') {
            x->line++;
        } else if (*q == ']') {
            const char *r = q + 1;
            int n = 0;
            while (r < x->end && *r == '=') {
                r++;
                n++;
            }
            if (n == level && r < x->end && *r == ']') {
                x->len = (size_t)(q - x->s);
                x->p = r + 1;
                return;
            }
        }
    }
    x->len = (size_t)(q - x->s);
    x->p = x->end;
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_';
}

static void next_token(lex *x)
{
    int level;
    char c;
    for (;;) {
        if (x->p >= x->end) {
            x->kind = TK_EOF;
            return;
        }
        c = *x->p;
        if (c == '\n') {
            x->line++;
            x->p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' ||
                   c == '\v') {
            x->p++;
        } else if (c == '-' && x->p + 1 < x->end && x->p[1] == '-') {
            x->p += 2;
            if (x->p < x->end && *x->p == '[' && (level = long_open(x)) >= 0)
                long_skip(x, level);
            else
                while (x->p < x->end && *x->p != '\n')
                    x->p++;
        } else {
            break;
        }
    }
    x->tline = x->line;
    if (name_char(c)) { /* a name, or a number (taken for one: harmless) */
        x->kind = TK_NAME;
        x->s = x->p;
        while (x->p < x->end && name_char(*x->p))
            x->p++;
        x->len = (size_t)(x->p - x->s);
        if (c >= '0' && c <= '9') {
            x->kind = TK_PUNCT;
            x->c = '0';
        }
    } else if (c == '"' || c == '\'') {
        const char *q = x->p + 1;
        x->kind = TK_STRING;
        x->s = q;
        while (q < x->end && *q != c && *q != '\n') {
            if (*q == '\\' && q + 1 < x->end) {
                if (q[1] == '\n')
                    x->line++;
                q++;
            }
            q++;
        }
        x->len = (size_t)(q - x->s);
        x->p = q < x->end && *q == c ? q + 1 : q;
    } else if (c == '[' && (level = long_open(x)) >= 0) {
        x->kind = TK_STRING;
        long_skip(x, level);
    } else {
        x->kind = TK_PUNCT;
        x->c = c;
        x->p++;
        if ((c == '=' || c == '~' || c == '<' || c == '>') && x->p < x->end &&
            *x->p == '=') {
            x->c = 'x';
            x->p++;
        }
    }
}

static void add_emit(agg *a, const char *type, size_t len, int line)
{
    char *t;
    if (len == 0 || len > 200 || memchr(type, '\\', len))
        return; /* no event type we could name */
    t = evl_xmalloc(len + 1);
    memcpy(t, type, len);
    t[len] = '\0';
    a->emits = evl_xrealloc(a->emits, sizeof *a->emits * (a->nemits + 1));
    a->emits[a->nemits].type = t;
    a->emits[a->nemits++].line = line;
}

#define SCAN_DEPTH 64 /* nested table constructors followed */

/* Add to a->emits every table constructor of the source with a field
 * `type = "Name"` (a string) and a field `data` (an event as decide
 * wants it: a data field named type, or the aggregate's own type, is no
 * event) but no field `aggregate_id` (that is a command, as reactions
 * build them, even in a helper outside react), with its line; note the lines of
 * the neutral and emits fields of the script's table. Fields written as t.type
 * = ... are not seen: emits = {...} declares those. */
static void scan_source(agg *a, const char *text, size_t len)
{
    struct {
        const char *type;
        size_t len;
        int line, data, aid;
    } st[SCAN_DEPTH];
    lex x = {.p = text, .end = text + len, .line = 1};
    int depth = 0, field = 0, want = 0, kline = 0;
    const char *key = NULL;
    size_t klen = 0;

    for (next_token(&x); x.kind != TK_EOF; next_token(&x)) {
        /* a field name follows '{', ',' or ';' */
        int at_field = field;
        field = x.kind == TK_PUNCT && (x.c == '{' || x.c == ',' || x.c == ';');
        if (want == 2) { /* the value of field key */
            if (depth > 0 && depth <= SCAN_DEPTH) {
                if (klen == 4 && memcmp(key, "type", 4) == 0 &&
                    x.kind == TK_STRING) {
                    st[depth - 1].type = x.s;
                    st[depth - 1].len = x.len;
                    st[depth - 1].line = x.tline;
                } else if (klen == 4 && memcmp(key, "data", 4) == 0) {
                    st[depth - 1].data = 1;
                } else if (klen == 12 && memcmp(key, "aggregate_id", 12) == 0) {
                    st[depth - 1].aid = 1;
                }
            }
            want = 0;
        } else if (want == 1) { /* after a field name: is it key = ? */
            want = 0;
            if (x.kind == TK_PUNCT && x.c == '=') {
                want = 2;
                if (depth == 1 && klen == 7 && memcmp(key, "neutral", 7) == 0 &&
                    !a->neutral_line)
                    a->neutral_line = kline;
                if (depth == 1 && klen == 5 && memcmp(key, "emits", 5) == 0 &&
                    !a->emits_line)
                    a->emits_line = kline;
                continue;
            }
        }
        if (at_field && x.kind == TK_NAME && depth > 0) {
            key = x.s;
            klen = x.len;
            kline = x.tline;
            want = 1;
        } else if (x.kind == TK_PUNCT && x.c == '{') {
            if (depth < SCAN_DEPTH)
                memset(&st[depth], 0, sizeof st[depth]);
            depth++;
        } else if (x.kind == TK_PUNCT && x.c == '}' && depth > 0) {
            depth--;
            if (depth < SCAN_DEPTH && st[depth].type && st[depth].data &&
                !st[depth].aid)
                add_emit(a, st[depth].type, st[depth].len, st[depth].line);
        }
    }
}

static int cmp_emit(const void *a, const void *b)
{
    const emit *x = a, *y = b;
    int c = strcmp(x->type, y->type);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* Drop from a->emits what the source shows inside the functions of
 * priv[field]: those tables are no events handle emits. */
static void drop_emits_in(lua_State *L, agg *a, int priv, const char *field)
{
    if (lh_rawfield(L, priv, field) == LUA_TTABLE) {
        for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
            lua_Debug ar;
            size_t k = 0;
            lua_pushvalue(L, -1);
            lua_getinfo(L, ">S", &ar);
            for (size_t i = 0; i < a->nemits; i++) {
                if (a->emits[i].line >= ar.linedefined &&
                    a->emits[i].line <= ar.lastlinedefined &&
                    a->emits[i].line > 0)
                    free(a->emits[i].type);
                else
                    a->emits[k++] = a->emits[i];
            }
            a->nemits = k;
        }
    }
    lua_pop(L, 1);
}

/* What evl_luahost_lint needs from an aggregate's source: the line of
 * each apply function, the event types handle builds and the emits list
 * (whose names a takes over), the neutral line. Runs once a is in
 * h->aggs, so memory held by a is freed with the host even if a Lua call
 * here runs out of memory. */
void lh_source_facts(op *o, lua_State *L, agg *a, int priv, char **declared,
                     size_t ndeclared)
{
    size_t n = 0;
    a->emits = evl_xmalloc(sizeof *a->emits * (ndeclared ? ndeclared : 1));
    for (size_t i = 0; i < ndeclared; i++) {
        a->emits[i].type = declared[i];
        a->emits[i].line = -1; /* the emits field's, once known */
    }
    a->nemits = ndeclared;
    free(declared);
    if (o->file)
        scan_source(a, o->file->text, o->file->len);
    for (size_t i = 0; i < a->nemits; i++)
        if (a->emits[i].line < 0)
            a->emits[i].line = a->emits_line;
    a->event_lines = lh_fn_lines(L, priv, "apply", a->events, a->pub.nevents);

    /* what an upcaster builds is not something handle emits, and what a
     * reaction builds ({type =, aggregate_id =, data =}) is a command */
    drop_emits_in(L, a, priv, "upcast");
    drop_emits_in(L, a, priv, "react");

    /* sorted by type, each once (at its first line) */
    if (a->nemits > 0)
        qsort(a->emits, a->nemits, sizeof *a->emits, cmp_emit);
    for (size_t i = 0; i < a->nemits; i++) {
        if (n > 0 && strcmp(a->emits[n - 1].type, a->emits[i].type) == 0)
            free(a->emits[i].type);
        else
            a->emits[n++] = a->emits[i];
    }
    a->nemits = n;
}

/* ---- lint: the traps load does not refuse ------------------------------ */

static int has_str(char *const *v, size_t n, const char *s)
{
    return n > 0 && bsearch(&s, v, n, sizeof *v, lh_cmpstr) != NULL;
}

static int has_emit(const agg *a, const char *type)
{
    for (size_t i = 0; i < a->nemits; i++)
        if (strcmp(a->emits[i].type, type) == 0)
            return 1;
    return 0;
}

/* Levenshtein distance of two short names (large when either is long). */
static size_t edits(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[65];
    if (la > 64 || lb > 64)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* "; did you mean 'X'?" for the nearest name of v (2 edits at most), or
 * "" */
static const char *nearest(char *buf, size_t len, const char *s,
                           const char *const *v, size_t n)
{
    const char *best = NULL;
    size_t bd = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = edits(s, v[i]);
        if (d > 0 && d < bd) {
            bd = d;
            best = v[i];
        }
    }
    if (!best)
        return "";
    snprintf(buf, len, "; did you mean '%s'?", best);
    return buf;
}

/* "script:line" or "script" (line unknown) */
static const char *at(char *buf, size_t len, const char *script, int line)
{
    if (line > 0)
        snprintf(buf, len, "%s:%d", script, line);
    else
        snprintf(buf, len, "%s", script);
    return buf;
}

/* The react keys of a: an error for a source type the set does not
 * have, a warning for an event type its source never emits (no apply,
 * neutral or emits entry). Returns the number of errors. */
static size_t lint_reacts(const evl_luahost *h, const agg *a,
                          evl_luahost_problems *errors,
                          evl_luahost_problems *warnings)
{
    char where[1100], hint[300], type[EVL_ENVELOPE_MAX_ID + 1];
    const char **types = evl_xmalloc(sizeof *types * (h->naggs + 1));
    size_t nerr = 0;

    for (size_t i = 0; i < h->naggs; i++)
        types[i] = h->aggs[i].type;
    for (size_t j = 0; j < a->pub.nreacts; j++) {
        const char *key = a->reacts[j], *event;
        long split = lh_react_split(key);
        const agg *src;
        if (split < 0)
            continue; /* load refuses those */
        memcpy(type, key, (size_t)split);
        type[split] = '\0';
        event = key + split + 1;
        at(where, sizeof where, a->script, a->react_lines[j]);
        src = lh_find_agg(h, type);
        if (!src) {
            nerr++;
            if (errors)
                lh_problem(errors,
                           "%s: react[\"%s\"]: no aggregate of this script "
                           "set has type '%s', so no event of it can come%s",
                           where, key, type,
                           nearest(hint, sizeof hint, type, types, h->naggs));
            continue;
        }
        if (!warnings || has_str(src->events, src->pub.nevents, event) ||
            has_str(src->neutral, src->pub.nneutral, event) ||
            has_emit(src, event))
            continue;
        lh_problem(warnings,
                   "%s: warning: react[\"%s\"]: aggregate type '%s' (%s) "
                   "never emits event type '%s' (no apply, neutral or emits "
                   "entry)%s",
                   where, key, type, src->script, event,
                   nearest(hint, sizeof hint, event,
                           (const char *const *)src->events, src->pub.nevents));
    }
    free(types);
    return nerr;
}

size_t evl_luahost_lint(const evl_luahost *h, evl_luahost_problems *errors,
                        evl_luahost_problems *warnings)
{
    size_t nerr = 0, nall = 0;
    const char **all = NULL; /* every type some aggregate emits */
    char where[1100], hint[300];

    for (size_t i = 0; i < h->naggs; i++) {
        const agg *a = &h->aggs[i];
        for (size_t j = 0; j < a->nemits; j++) {
            const emit *e = &a->emits[j];
            all = evl_xrealloc(all, sizeof *all * (nall + 1));
            all[nall++] = e->type;
            if (has_str(a->events, a->pub.nevents, e->type) ||
                has_str(a->neutral, a->pub.nneutral, e->type))
                continue;
            nerr++;
            if (errors)
                lh_problem(errors,
                           "%s: event type '%s' can be emitted by handle but "
                           "has no apply entry (add one, or list it in neutral "
                           "= {...} if it changes no state)%s",
                           at(where, sizeof where, a->script, e->line), e->type,
                           nearest(hint, sizeof hint, e->type,
                                   (const char *const *)a->events,
                                   a->pub.nevents));
        }
        for (size_t j = 0; j < a->pub.nneutral; j++) {
            all = evl_xrealloc(all, sizeof *all * (nall + 1));
            all[nall++] = a->neutral[j];
        }
        nerr += lint_reacts(h, a, errors, warnings);
        if (!warnings)
            continue;
        for (size_t j = 0; j < a->pub.nevents; j++) {
            const char *type = a->events[j];
            if (has_emit(a, type) || has_str(a->neutral, a->pub.nneutral, type))
                continue;
            lh_problem(warnings,
                       "%s: warning: apply.%s: no handler emits this event "
                       "type (a typo? list a type that handle builds at run "
                       "time, or no longer emits but is in the log, in emits "
                       "= {...})",
                       at(where, sizeof where, a->script, a->event_lines[j]),
                       type);
        }
        for (size_t j = 0; j < a->pub.nneutral; j++)
            if (has_str(a->events, a->pub.nevents, a->neutral[j]))
                lh_problem(warnings,
                           "%s: warning: neutral lists '%s', which has an "
                           "apply entry (the apply entry runs; drop one of "
                           "them)",
                           at(where, sizeof where, a->script, a->neutral_line),
                           a->neutral[j]);
    }
    /* projections: only against a set that has aggregates */
    for (size_t i = 0; warnings && h->naggs > 0 && i < h->nprojs; i++) {
        const proj *p = &h->projs[i];
        for (size_t j = 0; j < p->pub.nevents; j++) {
            const char *type = p->events[j], *near;
            size_t k;
            for (k = 0; k < nall && strcmp(all[k], type) != 0; k++)
                ;
            if (k < nall)
                continue;
            near = nearest(hint, sizeof hint, type, all, nall);
            lh_problem(warnings,
                       "%s: warning: on.%s: no aggregate of this script set "
                       "emits this event type%s (%sfine if an aggregate "
                       "outside this set does)",
                       at(where, sizeof where, p->script, p->event_lines[j]),
                       type, near, *near ? "" : "a typo? ");
        }
    }
    free(all);
    return nerr;
}
