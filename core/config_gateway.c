/*
 * config_gateway.c - the gateway's part of the configuration (see
 * config.h, gateway.h): its defaults and its bearer tokens.
 *
 *   gateway = { listen = "127.0.0.1:8080",
 *     tokens = {
 *       { principal = "web-shop",
 *         sha256 = "64 hex digits",     -- of the token, never the token
 *         aggregates = { "customer" },  -- or "*"
 *         commands = { "RegisterCustomer" } },  -- optional; none: any
 *     } }
 *
 * Only the hash is configured, so the config file (and anything that
 * prints it) never holds a credential. Errors name a token by its
 * position and principal, never by its hash.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

void evl_config_gateway_defaults(evl_config *cfg)
{
    cfg->gateway.timeout_ms = 10000;
    cfg->gateway.max_body = 1 << 20;
    cfg->gateway.max_waiters = 4096;
    cfg->gateway.max_connections = 1024;
    cfg->gateway.connection_timeout_s = 10;
    cfg->gateway.cache_size = 100000;
    cfg->gateway.threads = 2;
}

static void list_free(evl_strlist *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

void evl_config_gateway_free(evl_config *cfg)
{
    free(cfg->gateway.listen);
    free(cfg->gateway.tls_cert);
    free(cfg->gateway.tls_key);
    for (int i = 0; i < cfg->gateway.ntokens; i++) {
        evl_gateway_token *t = &cfg->gateway.tokens[i];
        free(t->principal);
        list_free(&t->aggregates);
        list_free(&t->commands);
    }
    free(cfg->gateway.tokens);
    cfg->gateway.tokens = NULL;
    cfg->gateway.ntokens = 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The string or list of strings at field name of the table on top into
 * l. Returns 0, or -1 with the reason in err. */
static int read_list(lua_State *L, const char *name, int idx, evl_strlist *l,
                     char *err, size_t errlen)
{
    int t = lua_getfield(L, -1, name), rc = 0;
    if (t == LUA_TNIL)
        goto out;
    if (t == LUA_TSTRING) {
        l->v = evl_xmalloc(sizeof *l->v);
        l->v[l->n++] = evl_xstrdup(lua_tostring(L, -1));
        goto out;
    }
    if (t != LUA_TTABLE) {
        snprintf(err, errlen, "token %d: %s is a %s, expected a list of names",
                 idx, name, luaL_typename(L, -1));
        rc = -1;
        goto out;
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, i) != LUA_TSTRING) {
            snprintf(err, errlen, "token %d: %s item %lld is a %s", idx, name,
                     (long long)i, luaL_typename(L, -1));
            lua_pop(L, 1);
            rc = -1;
            goto out;
        }
        l->v = evl_xrealloc(l->v, sizeof *l->v * (size_t)(l->n + 1));
        l->v[l->n++] = evl_xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
out:
    lua_pop(L, 1);
    return rc;
}

/* The token table on top of L's stack (position idx) into t. */
static int read_token(lua_State *L, int idx, evl_gateway_token *t, char *err,
                      size_t errlen)
{
    static const char *const known[] = {"principal", "sha256", "aggregates",
                                        "commands", NULL};
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        int ok = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; known[i]; i++)
                ok |= strcmp(lua_tostring(L, -1), known[i]) == 0;
        if (!ok) {
            snprintf(err, errlen, "token %d: unknown key '%s'", idx,
                     lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                    : "?");
            lua_pop(L, 1);
            return -1;
        }
    }
    if (lua_getfield(L, -1, "principal") != LUA_TSTRING ||
        lua_rawlen(L, -1) == 0) {
        lua_pop(L, 1);
        snprintf(err, errlen, "token %d: principal must be a non-empty string",
                 idx);
        return -1;
    }
    t->principal = evl_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    const char *h = NULL;
    if (lua_getfield(L, -1, "sha256") == LUA_TSTRING)
        h = lua_tostring(L, -1);
    int good = h && strlen(h) == 64;
    for (int i = 0; good && i < 32; i++) {
        int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);
        good = hi >= 0 && lo >= 0;
        t->sha256[i] = (unsigned char)(hi << 4 | lo);
    }
    lua_pop(L, 1);
    if (!good) {
        snprintf(err, errlen,
                 "token %d (%s): sha256 must be the token's SHA-256 in 64 hex "
                 "digits (sha256sum), never the token itself",
                 idx, t->principal);
        return -1;
    }
    if (read_list(L, "aggregates", idx, &t->aggregates, err, errlen) ||
        read_list(L, "commands", idx, &t->commands, err, errlen))
        return -1;
    if (t->aggregates.n == 0) {
        snprintf(err, errlen,
                 "token %d (%s): aggregates must name the aggregate types it "
                 "may send to (\"*\": any)",
                 idx, t->principal);
        return -1;
    }
    return 0;
}

evl_err evl_config_gateway_tokens(lua_State *L, evl_config *cfg, char *err,
                                  size_t errlen)
{
    if (!lua_istable(L, -1))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "is a %s, expected a list of token tables",
                          luaL_typename(L, -1));
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, i) != LUA_TTABLE) {
            lua_pop(L, 1);
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "token %lld is not a table", (long long)i);
        }
        cfg->gateway.tokens = evl_xrealloc(
            cfg->gateway.tokens,
            sizeof(evl_gateway_token) * (size_t)(cfg->gateway.ntokens + 1));
        evl_gateway_token *t = &cfg->gateway.tokens[cfg->gateway.ntokens++];
        memset(t, 0, sizeof *t);
        int rc = read_token(L, (int)i, t, err, errlen);
        lua_pop(L, 1);
        if (rc)
            return EVL_EPERMANENT;
    }
    return EVL_OK;
}
