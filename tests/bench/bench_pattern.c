/*
 * bench_pattern.c - the sandbox's pattern functions (pattern.c, charging
 * every step) against Lua's own on ordinary patterns: time per workload,
 * and the ratio mine/stock over all of them, for several runs.
 *
 * Usage: bench_pattern [ITERATIONS [RUNS]]   (defaults 20000, 5)
 * Prints one line per workload of the last run, then the overall ratio's
 * min/median/max over the runs (above 1: the sandbox's is slower).
 */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lualib.h>

#include "pattern.h"

static size_t spent;

/* What luahost's charge does in the common case: add and compare. */
static void charge(lua_State *L, size_t steps)
{
    (void)L;
    spent += steps;
}

static int my_find(lua_State *L)
{
    return evl_pattern_find(L, charge);
}
static int my_match(lua_State *L)
{
    return evl_pattern_match(L, charge);
}
static int my_gmatch(lua_State *L)
{
    return evl_pattern_gmatch(L, charge);
}
static int my_gsub(lua_State *L)
{
    return evl_pattern_gsub(L, charge);
}

static const char bench[] =
    "local N = ...\n"
    "local text = string.rep('The quick brown fox jumps over the lazy dog; "
    "key_1=value-1, when=2026-12-04T15:56:20Z. ', 8)\n"
    "local work = {\n"
    "  { 'find plain', function(L) return L.find(text, 'lazy cat') end },\n"
    "  { 'find word', function(L) return L.find(text, '%f[%w]dog%f[%W]') "
    "end },\n"
    "  { 'match kv', function(L) return L.match(text, '(%w+)=([%w-]+)') "
    "end },\n"
    "  { 'match date', function(L) return L.match(text, "
    "'(%d+)-(%d+)-(%d+)T(%d+):(%d+)') end },\n"
    "  { 'match trim', function(L) return L.match('   some value   ', "
    "'^%s*(.-)%s*$') end },\n"
    "  { 'match email', function(L) return L.match('ann.lee@example.org', "
    "'^[%w._%-]+@[%w.-]+%.%a+$') end },\n"
    "  { 'match uuid', function(L) return L.match("
    "'0190b6c2-7d3e-7a41-9c2b-5f6e7d8c9b0a', "
    "'^%x+%-%x+%-%x+%-%x+%-%x+$') end },\n"
    "  { 'gmatch words', function(L) local n = 0\n"
    "      for w in L.gmatch(text, '%a+') do n = n + 1 end return n end },\n"
    "  { 'gsub spaces', function(L) return L.gsub(text, '%s+', ' ') end },\n"
    "  { 'gsub fn', function(L) return L.gsub('a,b,c,d,e,f', '[^,]+', "
    "string.upper) end },\n"
    "  { 'gsub %1', function(L) return L.gsub(text, '(%w+)=(%S+)', "
    "'%2=%1') end },\n"
    "}\n"
    "local out, total = {}, { 0, 0 }\n"
    "for _, w in ipairs(work) do\n"
    "  local t = {}\n"
    "  for k, L in ipairs({ string, mine }) do\n"
    "    local f = w[2]\n"
    "    local t0 = os.clock()\n"
    "    for i = 1, N do f(L) end\n"
    "    t[k] = os.clock() - t0\n"
    "    total[k] = total[k] + t[k]\n"
    "  end\n"
    "  out[#out + 1] = string.format('%-13s stock %8.1f ns  mine %8.1f ns  "
    "ratio %.2f', w[1], t[1] / N * 1e9, t[2] / N * 1e9, t[2] / t[1])\n"
    "end\n"
    "return total[2] / total[1], table.concat(out, '\\n')\n";

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    static const luaL_Reg mine[] = {{"find", my_find},
                                    {"match", my_match},
                                    {"gmatch", my_gmatch},
                                    {"gsub", my_gsub},
                                    {NULL, NULL}};
    long n = argc > 1 ? atol(argv[1]) : 20000;
    int runs = argc > 2 ? atoi(argv[2]) : 5;
    double ratio[64];
    lua_State *L = luaL_newstate();
    if (runs < 1 || runs > 64 || n < 1) {
        fprintf(stderr, "usage: bench_pattern [ITERATIONS [RUNS<=64]]\n");
        return 2;
    }
    luaL_openlibs(L);
    luaL_newlib(L, mine);
    lua_setglobal(L, "mine");
    for (int r = 0; r < runs; r++) {
        if (luaL_loadstring(L, bench) != LUA_OK) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
            return 1;
        }
        lua_pushinteger(L, n);
        if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
            return 1;
        }
        ratio[r] = lua_tonumber(L, -2);
        if (r == runs - 1)
            printf("%s\n", lua_tostring(L, -1));
        lua_pop(L, 2);
    }
    qsort(ratio, (size_t)runs, sizeof ratio[0], cmp_double);
    printf("ratio mine/stock over all workloads, %d runs of %ld: min %.2f "
           "median %.2f max %.2f\n",
           runs, n, ratio[0], ratio[runs / 2], ratio[runs - 1]);
    lua_close(L);
    return 0;
}
