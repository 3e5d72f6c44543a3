/*
 * pattern.c - Lua 5.4 string patterns that pay per step (see pattern.h).
 *
 * Written from the rules of the reference manual (section 6.4.1), not from
 * Lua's source; tests/c/test_pattern.c holds it to the stock library's
 * results and error messages on many patterns and subjects.
 *
 * How it works:
 *
 *   - A backtracking matcher over the pattern text, no compilation: an
 *     item is one character class (".", "%x", "[set]" or a literal) with
 *     an optional quantifier, or a capture bracket, "%b", "%f", a
 *     back-reference or the final "$". Matching the rest of the pattern
 *     after a choice (the quantifiers "?", "*", "+", "-" and the captures,
 *     which must be undone when the rest fails) is a recursive call; the
 *     rest is a loop. Recursion is limited to 200 nested calls ("pattern
 *     too complex"), as deep as Lua's own matcher goes, so the same
 *     patterns are accepted.
 *
 *   - Cost: every loop turn of the matcher, every class test, every set
 *     element and every few bytes scanned or copied is a step. Steps are
 *     counted down from a batch and handed to the charge callback when the
 *     batch is spent and before returning or calling Lua code, so the
 *     counting costs a decrement and the callback (which may raise the
 *     budget error) runs about once per thousand steps.
 *
 *   - Nothing here allocates outside Lua: captures live in the matcher on
 *     the C stack, gsub's result in a luaL_Buffer. The gmatch iterator
 *     keeps offsets, not pointers, between calls, and finds its subject
 *     and pattern again in its upvalues.
 */
#include "pattern.h"

#include <ctype.h>
#include <string.h>

#include <lauxlib.h>

#define MAX_CAPTURES 32   /* as LUA_MAXCAPTURES */
#define MAX_DEPTH    200  /* nested matcher calls ("pattern too complex") */
#define BATCH        1024 /* steps between calls of the charge callback */
#define BYTES_STEP   8    /* bytes scanned or copied per step */
#define SCAN_STEP    64   /* bytes per step of memchr, memcmp */

#define uchar(c) ((unsigned char)(c))

/* cap.len of a capture still open, of a position capture "()" */
enum { CAP_OPEN = -1, CAP_POSITION = -2 };

typedef struct matcher {
    lua_State *L;
    const char *src, *src_end; /* the whole subject */
    const char *pat_end;
    int depth; /* nested calls still allowed */
    int ncap;
    struct {
        const char *at;
        ptrdiff_t len; /* or CAP_OPEN, CAP_POSITION */
    } cap[MAX_CAPTURES];
    evl_pattern_charge charge;
    long credit; /* steps left in this batch */
} matcher;

static void setup(matcher *m, lua_State *L, const char *s, size_t ls,
                  const char *p, size_t lp, evl_pattern_charge charge)
{
    m->L = L;
    m->src = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->depth = MAX_DEPTH;
    m->ncap = 0;
    m->charge = charge;
    m->credit = BATCH;
}

/* Every attempt at a new start position begins without captures. */
static void restart(matcher *m)
{
    m->depth = MAX_DEPTH;
    m->ncap = 0;
}

/* Hand the steps of this batch to the callback (which may raise). */
static void pay(matcher *m)
{
    long spent = BATCH - m->credit;
    m->credit = BATCH;
    if (spent > 0 && m->charge)
        m->charge(m->L, (size_t)spent);
}

static inline void spend(matcher *m, long n)
{
    m->credit -= n;
    if (m->credit <= 0)
        pay(m);
}

/* ---- single characters -------------------------------------------------- */

/* c against the class letter cl of "%cl"; an upper-case letter is the
 * complement; any other character after '%' stands for itself. */
static int class_match(int c, int cl)
{
    int r;
    switch (tolower(cl)) {
    case 'a': r = isalpha(c); break;
    case 'c': r = iscntrl(c); break;
    case 'd': r = isdigit(c); break;
    case 'g': r = isgraph(c); break;
    case 'l': r = islower(c); break;
    case 'p': r = ispunct(c); break;
    case 's': r = isspace(c); break;
    case 'u': r = isupper(c); break;
    case 'w': r = isalnum(c); break;
    case 'x': r = isxdigit(c); break;
    case 'z': r = c == 0; break; /* NUL: gone from the 5.4 manual, kept */
    default: return cl == c;
    }
    return isupper(cl) ? !r : r != 0;
}

/* The end of the set whose '[' is at p: just past its closing ']'. The
 * first member (after an optional '^') may be ']' itself, and "%]" is a
 * member, not the end. */
static const char *set_end(matcher *m, const char *p)
{
    const char *q = p + 1;
    int first = 1;
    if (q < m->pat_end && *q == '^')
        q++;
    for (;;) {
        if (q >= m->pat_end)
            luaL_error(m->L, "malformed pattern (missing ']')");
        if (*q == ']' && !first)
            return q + 1;
        first = 0;
        if (*q == '%')
            q++; /* the escaped character: checked at the next turn */
        q++;
    }
}

/* Is c in the set from '[' at p to its closing ']' at close? */
static int set_match(matcher *m, int c, const char *p, const char *close)
{
    int in = 1;
    const char *q = p + 1;
    long n = 0;
    if (*q == '^') {
        in = 0;
        q++;
    }
    for (; q < close; n++) {
        if (*q == '%') {
            if (class_match(c, uchar(q[1])))
                goto found;
            q += 2;
        } else if (q[1] == '-' && q + 2 < close) {
            if (uchar(q[0]) <= c && c <= uchar(q[2]))
                goto found;
            q += 3;
        } else {
            if (uchar(*q) == c)
                goto found;
            q++;
        }
    }
    spend(m, n >> 2);
    return !in;
found:
    spend(m, n >> 2);
    return in;
}

/* The end of the single-character item at p. */
static const char *item_end(matcher *m, const char *p)
{
    if (*p == '%') {
        if (p + 1 >= m->pat_end)
            luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 2;
    }
    if (*p == '[')
        return set_end(m, p);
    return p + 1;
}

/* Does the character at s match the item from p to ep? */
static int single_match(matcher *m, const char *s, const char *p,
                        const char *ep)
{
    int c;
    spend(m, 1);
    if (s >= m->src_end)
        return 0;
    c = uchar(*s);
    switch (*p) {
    case '.': return 1;
    case '%': return class_match(c, uchar(p[1]));
    case '[': return set_match(m, c, p, ep - 1);
    default: return uchar(*p) == c;
    }
}

/* ---- the matcher -------------------------------------------------------- */

static const char *do_match(matcher *m, const char *s, const char *p);

static const char *open_capture(matcher *m, const char *s, const char *p,
                                ptrdiff_t kind)
{
    const char *r;
    if (m->ncap >= MAX_CAPTURES)
        luaL_error(m->L, "too many captures");
    m->cap[m->ncap].at = s;
    m->cap[m->ncap].len = kind;
    m->ncap++;
    r = do_match(m, s, p);
    if (!r)
        m->ncap--;
    return r;
}

/* ')' closes the innermost capture still open. */
static const char *close_capture(matcher *m, const char *s, const char *p)
{
    int i = m->ncap - 1;
    const char *r;
    while (i >= 0 && m->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0)
        luaL_error(m->L, "invalid pattern capture");
    m->cap[i].len = s - m->cap[i].at;
    r = do_match(m, s, p);
    if (!r)
        m->cap[i].len = CAP_OPEN;
    return r;
}

/* "%1".."%9" (digit d): the text of that closed capture again. A
 * position capture never matches. */
static const char *back_reference(matcher *m, const char *s, int d)
{
    int i = d - '1';
    size_t len;
    if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN)
        luaL_error(m->L, "invalid capture index %%%d", i + 1);
    if (m->cap[i].len == CAP_POSITION)
        return NULL;
    len = (size_t)m->cap[i].len;
    spend(m, (long)(len / SCAN_STEP));
    if ((size_t)(m->src_end - s) < len || memcmp(m->cap[i].at, s, len) != 0)
        return NULL;
    return s + len;
}

/* "%bxy" with p at x: from an x at s to its balancing y. */
static const char *balance(matcher *m, const char *s, const char *p)
{
    const char *q;
    int open, level = 1;
    if (p + 1 >= m->pat_end)
        luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != *p)
        return NULL;
    open = *p;
    for (q = s + 1; q < m->src_end; q++) {
        if (*q == p[1]) {
            if (--level == 0)
                break;
        } else if (*q == open) {
            level++;
        }
    }
    spend(m, q - s);
    return q < m->src_end ? q + 1 : NULL;
}

/* Item p..ep repeated as often as it matches from s, then the rest from
 * the longest run down to the shortest. */
static const char *longest(matcher *m, const char *s, const char *p,
                           const char *ep)
{
    ptrdiff_t n = 0;
    while (single_match(m, s + n, p, ep))
        n++;
    for (; n >= 0; n--) {
        const char *r = do_match(m, s + n, ep + 1);
        if (r)
            return r;
    }
    return NULL;
}

/* The rest first, one more repetition of p..ep each time it fails. */
static const char *shortest(matcher *m, const char *s, const char *p,
                            const char *ep)
{
    for (;; s++) {
        const char *r = do_match(m, s, ep + 1);
        if (r)
            return r;
        if (!single_match(m, s, p, ep))
            return NULL;
    }
}

/* Match the pattern from p on against the subject from s: the end of the
 * match, or NULL. */
static const char *do_match(matcher *m, const char *s, const char *p)
{
    const char *ep, *r;
    if (m->depth-- == 0)
        luaL_error(m->L, "pattern too complex");
    for (;;) {
        spend(m, 1);
        if (p == m->pat_end)
            goto out;
        switch (*p) {
        case '(':
            if (p[1] == ')')
                s = open_capture(m, s, p + 2, CAP_POSITION);
            else
                s = open_capture(m, s, p + 1, CAP_OPEN);
            goto out;
        case ')': s = close_capture(m, s, p + 1); goto out;
        case '$':
            if (p + 1 != m->pat_end)
                break; /* a literal '$' */
            if (s != m->src_end)
                s = NULL;
            goto out;
        case '%':
            if (p[1] == 'b') {
                s = balance(m, s, p + 2);
                if (!s)
                    goto out;
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                int before, here;
                p += 2;
                if (*p != '[')
                    luaL_error(m->L, "missing '[' after '%%f' in pattern");
                ep = set_end(m, p);
                before = s == m->src ? '\0' : uchar(s[-1]);
                here = s < m->src_end ? uchar(*s) : '\0';
                if (set_match(m, before, p, ep - 1) ||
                    !set_match(m, here, p, ep - 1)) {
                    s = NULL;
                    goto out;
                }
                p = ep;
                continue;
            }
            if (isdigit(uchar(p[1]))) {
                s = back_reference(m, s, uchar(p[1]));
                if (!s)
                    goto out;
                p += 2;
                continue;
            }
            break;
        }

        /* one character class, maybe with a quantifier */
        ep = item_end(m, p);
        if (!single_match(m, s, p, ep)) {
            if (*ep == '*' || *ep == '?' || *ep == '-') {
                p = ep + 1; /* zero repetitions are fine */
                continue;
            }
            s = NULL;
            goto out;
        }
        switch (*ep) {
        case '?':
            r = do_match(m, s + 1, ep + 1);
            if (r) {
                s = r;
                goto out;
            }
            p = ep + 1;
            continue;
        case '+': s = longest(m, s + 1, p, ep); goto out;
        case '*': s = longest(m, s, p, ep); goto out;
        case '-': s = shortest(m, s, p, ep); goto out;
        default:
            s++;
            p = ep;
            continue;
        }
    }
out:
    m->depth++;
    return s;
}

/* ---- results ------------------------------------------------------------ */

/* Capture i of the match s..e; i == 0 without captures is the match. */
static void push_capture(matcher *m, int i, const char *s, const char *e)
{
    if (i >= m->ncap) {
        if (i != 0)
            luaL_error(m->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(m->L, s, (size_t)(e - s));
    } else if (m->cap[i].len == CAP_OPEN) {
        luaL_error(m->L, "unfinished capture");
    } else if (m->cap[i].len == CAP_POSITION) {
        lua_pushinteger(m->L, m->cap[i].at - m->src + 1);
    } else {
        lua_pushlstring(m->L, m->cap[i].at, (size_t)m->cap[i].len);
    }
}

/* All captures, or the whole match when there are none and s is given. */
static int push_captures(matcher *m, const char *s, const char *e)
{
    int n = m->ncap == 0 && s ? 1 : m->ncap;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

/* A relative start position (negative: from the end) as 1-based. */
static lua_Integer start_at(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return pos;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 1;
    return (lua_Integer)len + pos + 1;
}

/* A pattern without magic characters is searched for as plain text. */
static int is_plain(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++) {
        switch (p[i]) {
        case '^':
        case '$':
        case '*':
        case '+':
        case '?':
        case '.':
        case '(':
        case '[':
        case '%':
        case '-': return 0;
        }
    }
    return 1;
}

static const char *find_plain(matcher *m, const char *s, size_t ls,
                              const char *p, size_t lp)
{
    const char *q = s, *last;
    if (lp == 0)
        return s;
    if (lp > ls)
        return NULL;
    last = s + (ls - lp);
    while (q <= last) {
        const char *hit = memchr(q, *p, (size_t)(last - q) + 1);
        if (!hit) {
            spend(m, (last - q) / SCAN_STEP + 1);
            return NULL;
        }
        spend(m, (hit - q) / SCAN_STEP + 1 + (long)(lp / SCAN_STEP));
        if (memcmp(hit + 1, p + 1, lp - 1) == 0)
            return hit;
        q = hit + 1;
    }
    return NULL;
}

static int find_or_match(lua_State *L, evl_pattern_charge charge, int find)
{
    size_t ls, lp, init;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *at, *e;
    int anchored;
    matcher m;

    init = (size_t)start_at(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    setup(&m, L, s, ls, p, lp, charge);
    if (find && (lua_toboolean(L, 4) || is_plain(p, lp))) {
        spend(&m, (long)(lp / BYTES_STEP));
        e = find_plain(&m, s + init, ls - init, p, lp);
        pay(&m);
        if (!e) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (lua_Integer)(e - s) + 1);
        lua_pushinteger(L, (lua_Integer)(e - s + lp));
        return 2;
    }
    anchored = *p == '^';
    if (anchored)
        p++;
    at = s + init;
    do {
        restart(&m);
        e = do_match(&m, at, p);
        if (e) {
            pay(&m);
            if (!find)
                return push_captures(&m, at, e);
            lua_pushinteger(L, (lua_Integer)(at - s) + 1);
            lua_pushinteger(L, (lua_Integer)(e - s));
            return push_captures(&m, NULL, NULL) + 2;
        }
    } while (at++ < m.src_end && !anchored);
    pay(&m);
    luaL_pushfail(L);
    return 1;
}

int evl_pattern_find(lua_State *L, evl_pattern_charge charge)
{
    return find_or_match(L, charge, 1);
}

int evl_pattern_match(lua_State *L, evl_pattern_charge charge)
{
    return find_or_match(L, charge, 0);
}

/* ---- gmatch ------------------------------------------------------------- */

typedef struct gmatch_state {
    size_t at;       /* offset of the next attempt */
    size_t last_end; /* offset of the last match's end */
    int matched;     /* last_end is set: no empty match there */
    evl_pattern_charge charge;
} gmatch_state;

/* The iterator: upvalues subject, pattern, state. */
static int gmatch_next(lua_State *L)
{
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
    gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
    const char *last = g->matched ? s + g->last_end : NULL;
    matcher m;

    setup(&m, L, s, ls, p, lp, g->charge);
    for (const char *at = s + g->at; at <= m.src_end; at++) {
        const char *e;
        restart(&m);
        e = do_match(&m, at, p);
        if (e && e != last) {
            g->at = g->last_end = (size_t)(e - s);
            g->matched = 1;
            pay(&m);
            return push_captures(&m, at, e);
        }
    }
    g->at = ls + 1; /* done: later calls find nothing at once */
    pay(&m);
    return 0;
}

int evl_pattern_gmatch(lua_State *L, evl_pattern_charge charge)
{
    size_t ls, lp, init;
    gmatch_state *g;
    luaL_checklstring(L, 1, &ls);
    luaL_checklstring(L, 2, &lp);
    init = (size_t)start_at(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls)
        init = ls + 1; /* past the end: no match at all */
    lua_settop(L, 2);
    g = lua_newuserdatauv(L, sizeof *g, 0);
    g->at = init;
    g->last_end = 0;
    g->matched = 0;
    g->charge = charge;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* ---- gsub --------------------------------------------------------------- */

/* Capture i of the match s..e into b. */
static void add_capture(matcher *m, luaL_Buffer *b, int i, const char *s,
                        const char *e)
{
    if (i < m->ncap && m->cap[i].len == CAP_POSITION) {
        lua_pushinteger(m->L, m->cap[i].at - m->src + 1);
        luaL_addvalue(b);
        return;
    }
    if (i < m->ncap && m->cap[i].len >= 0) {
        luaL_addlstring(b, m->cap[i].at, (size_t)m->cap[i].len);
        return;
    }
    push_capture(m, i, s, e); /* the whole match, or the error */
    luaL_addvalue(b);
}

/* The replacement string (argument 3) for the match s..e: "%0" is the
 * match, "%1".."%9" captures, "%%" a '%'. */
static void add_string(matcher *m, luaL_Buffer *b, const char *s, const char *e)
{
    size_t l, i = 0;
    const char *r = lua_tolstring(m->L, 3, &l);
    spend(m, (long)(l / BYTES_STEP));
    while (i < l) {
        const char *pct = memchr(r + i, '%', l - i);
        size_t upto = pct ? (size_t)(pct - r) : l;
        int d;
        luaL_addlstring(b, r + i, upto - i);
        if (!pct)
            break;
        d = uchar(r[upto + 1]); /* the terminating '\0' after a final % */
        if (d == '%')
            luaL_addchar(b, '%');
        else if (d == '0')
            luaL_addlstring(b, s, (size_t)(e - s));
        else if (isdigit(d))
            add_capture(m, b, d - '1', s, e);
        else
            luaL_error(m->L, "invalid use of '%c' in replacement string", '%');
        i = upto + 2;
    }
}

/* Whatever replaces the match s..e, by the type tr of argument 3. */
static void add_replacement(matcher *m, luaL_Buffer *b, const char *s,
                            const char *e, int tr)
{
    lua_State *L = m->L;
    spend(m, (e - s) / BYTES_STEP);
    if (tr == LUA_TFUNCTION) {
        int n;
        pay(m); /* the function's own cost comes after ours */
        lua_pushvalue(L, 3);
        n = push_captures(m, s, e);
        lua_call(L, n, 1);
    } else if (tr == LUA_TTABLE) {
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        add_string(m, b, s, e);
        return;
    }
    if (!lua_toboolean(L, -1)) { /* false or nil: keep the match */
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
    } else if (!lua_isstring(L, -1)) {
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    } else {
        luaL_addvalue(b);
    }
}

int evl_pattern_gsub(lua_State *L, evl_pattern_charge charge)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *at = s, *last = NULL;
    int tr = lua_type(L, 3), anchored;
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1), n = 0;
    luaL_Buffer b;
    matcher m;

    luaL_argexpected(L,
                     tr == LUA_TNUMBER || tr == LUA_TSTRING ||
                         tr == LUA_TFUNCTION || tr == LUA_TTABLE,
                     3, "string/function/table");
    setup(&m, L, s, ls, p, lp, charge);
    anchored = *p == '^';
    if (anchored)
        p++;
    luaL_buffinit(L, &b);
    while (n < max) {
        const char *e;
        restart(&m);
        e = do_match(&m, at, p);
        if (e && e != last) {
            n++;
            add_replacement(&m, &b, at, e, tr);
            at = last = e;
        } else if (at < m.src_end) {
            luaL_addchar(&b, *at++);
        } else {
            break;
        }
        if (anchored)
            break;
    }
    spend(&m, (m.src_end - at) / BYTES_STEP);
    luaL_addlstring(&b, at, (size_t)(m.src_end - at));
    pay(&m);
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}
