/*
 * test_pattern.c - the sandbox's pattern functions give what Lua's own
 * string.find, match, gmatch and gsub give (results and error messages),
 * on hundreds of generated and hand-picked patterns and subjects, while
 * every matching step is charged: a pathological pattern runs out of
 * budget at once instead of backtracking for minutes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "check.h"
#include "pattern.h"

/* ---- the functions under test, with a counting or limited budget ------ */

static size_t steps_spent;
static size_t steps_limit; /* 0: none */
static size_t charge_calls;

static void count_steps(lua_State *L, size_t steps)
{
    steps_spent += steps;
    charge_calls++;
    if (steps_limit && steps_spent > steps_limit)
        luaL_error(L, "test budget of %I steps exceeded",
                   (lua_Integer)steps_limit);
}

static int my_find(lua_State *L)
{
    return evl_pattern_find(L, count_steps);
}
static int my_match(lua_State *L)
{
    return evl_pattern_match(L, count_steps);
}
static int my_gmatch(lua_State *L)
{
    return evl_pattern_gmatch(L, count_steps);
}
static int my_gsub(lua_State *L)
{
    return evl_pattern_gsub(L, count_steps);
}

static lua_State *new_state(void)
{
    static const luaL_Reg mine[] = {{"find", my_find},
                                    {"match", my_match},
                                    {"gmatch", my_gmatch},
                                    {"gsub", my_gsub},
                                    {NULL, NULL}};
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_newlib(L, mine);
    lua_setglobal(L, "mine");
    return L;
}

/* Run chunk; on error report it as a failed check. */
static int run(lua_State *L, const char *chunk, const char *what)
{
    if (luaL_dostring(L, chunk) != LUA_OK) {
        CHECK_FAIL_("%s: %s", what, lua_tostring(L, -1));
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

/* ---- conformance ------------------------------------------------------ */

/*
 * The harness: compare(fname, args...) calls string[fname] and
 * mine[fname] the same way (through the same local name, so argument
 * errors name the same function), gmatch loops collected, and records a
 * difference. Results are compared by type and value, errors by message.
 */
static const char harness[] =
    "local unpack = table.unpack\n"
    "local function ser(v)\n"
    "  local t = type(v)\n"
    "  if t == 'string' then return string.format('%q', v) end\n"
    "  if t == 'number' then return (math.type(v) or 'nan') .. ':' .. "
    "tostring(v) end\n"
    "  return t .. ':' .. tostring(v)\n"
    "end\n"
    "local function serall(r)\n"
    "  local o = { tostring(r.n) }\n"
    "  for i = 1, r.n do o[#o + 1] = ser(r[i]) end\n"
    "  return table.concat(o, ',')\n"
    "end\n"
    "local function call(lib, fname, args)\n"
    "  local fn = lib[fname]\n"
    "  local r = table.pack(pcall(function()\n"
    "    if fname == 'gmatch' then\n"
    "      local it = fn(unpack(args, 1, args.n))\n"
    "      local out = {}\n"
    "      for i = 1, 200 do\n"
    "        local x = table.pack(it())\n"
    "        out[#out + 1] = serall(x)\n"
    "        if x[1] == nil then break end\n"
    "      end\n"
    "      return table.concat(out, ' | ')\n"
    "    end\n"
    "    local res = table.pack(fn(unpack(args, 1, args.n)))\n"
    "    return serall(res)\n"
    "  end))\n"
    "  if r[1] then return 'ok ' .. r[2] end\n"
    "  return 'error ' .. tostring(r[2])\n"
    "end\n"
    "cases, diffs, errors = 0, {}, 0\n"
    "function compare(fname, ...)\n"
    "  local args = table.pack(...)\n"
    "  local want = call(string, fname, args)\n"
    "  local got = call(mine, fname, args)\n"
    "  cases = cases + 1\n"
    "  if want:sub(1, 5) == 'error' then errors = errors + 1 end\n"
    "  if want ~= got and #diffs < 40 then\n"
    "    local a = {}\n"
    "    for i = 1, args.n do a[i] = ser(args[i]) end\n"
    "    diffs[#diffs + 1] = fname .. '(' .. table.concat(a, ', ') .. ')\\n'"
    " ..\n"
    "      '      stock: ' .. want .. '\\n      mine:  ' .. got\n"
    "  end\n"
    "end\n"
    /* gsub replacement functions and tables used below */
    "repl_fn = function(a, ...)\n"
    "  if a == 'a' then return nil end\n"
    "  if a == 'b' then return false end\n"
    "  if a == 'c' then return 42 end\n"
    "  if a == '' then return '<>' end\n"
    "  if type(a) == 'number' then return a * 2 end\n"
    "  return '[' .. tostring(a) .. select('#', ...) .. ']'\n"
    "end\n"
    "repl_tab = { a = 'A', b = false, c = 7, ab = 'AB', [1] = 'one', x = "
    "1.5 }\n"
    "repl_bad = function() return {} end\n"
    "repl_badtab = { a = true }\n";

/* Generated: every item and quantifier, sequences of them, captures and
 * anchors, against subjects that exercise classes and boundaries. */
static const char generated[] =
    "local subjects = { '', 'a', 'aaa', 'ab', 'abc', 'aaab', 'bbb',\n"
    "  'hello world', '  x = 12, y=3.5; ', 'THE (quick) [brown] fox',\n"
    "  'a.b-c+d*e?f', '\\0a\\0b', 'x\\tY\\n9_', '((a)(b))', 'aXbXc',\n"
    "  'f(a(b)c)d', '\\200\\255\\1 ', 'ba$b^a', '%d%%', 'key=val&k2=v2' }\n"
    "local items = { 'a', 'b', '.', '%a', '%d', '%s', '%w', '%p', '%u', "
    "'%l',\n"
    "  '%x', '%c', '%g', '%A', '%D', '%S', '%W', '[ab]', '[^a]', '[a-c]',\n"
    "  '[%a_]', '[^%s]', '[]]', '[a-]', '[%-+]', '%.', '%%', '%(', 'x', "
    "'\\0',\n"
    "  '[\\0-\\31]', '[^%w%s]', '%z', '%b()', '%f[%w]', '%f[%W]', '$', "
    "'^' }\n"
    "local quants = { '', '*', '+', '-', '?' }\n"
    "local seed = 12345\n"
    "local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648\n"
    "  return seed % n + 1 end\n"
    "local function item()\n"
    "  local it = items[rnd(#items)]\n"
    "  if it:sub(1, 2) == '%b' or it:sub(1, 2) == '%f' then return it end\n"
    "  return it .. quants[rnd(#quants)]\n"
    "end\n"
    "local pats = {}\n"
    "for _, it in ipairs(items) do\n"
    "  for _, q in ipairs(quants) do pats[#pats + 1] = it .. q end\n"
    "end\n"
    "for i = 1, 500 do\n"
    "  local n, p = rnd(4), ''\n"
    "  for j = 1, n do\n"
    "    local x = item()\n"
    "    local r = rnd(10)\n"
    "    if r == 1 then x = '(' .. x .. ')'\n"
    "    elseif r == 2 then x = '()' .. x\n"
    "    elseif r == 3 then x = '(' .. x .. item() .. ')%1'\n"
    "    end\n"
    "    p = p .. x\n"
    "  end\n"
    "  local r = rnd(6)\n"
    "  if r == 1 then p = '^' .. p elseif r == 2 then p = p .. '$' end\n"
    "  pats[#pats + 1] = p\n"
    "end\n"
    "for pi, p in ipairs(pats) do\n"
    "  for si, s in ipairs(subjects) do\n"
    "    if (pi + si) % 3 == 0 then\n"
    "      compare('find', s, p)\n"
    "      compare('match', s, p)\n"
    "    elseif (pi + si) % 3 == 1 then\n"
    "      compare('gmatch', s, p)\n"
    "      compare('gsub', s, p, '<%0>')\n"
    "    else\n"
    "      compare('find', s, p, rnd(7) - 3)\n"
    "      compare('gsub', s, p, repl_fn)\n"
    "      compare('gsub', s, p, repl_tab, rnd(3))\n"
    "    end\n"
    "  end\n"
    "end\n";

/* Hand-picked: the manual's examples, every argument form, every error. */
static const char handpicked[] =
    "local C = compare\n"
    /* find: init and plain */
    "for _, i in ipairs{ -100, -4, -3, -1, 0, 1, 2, 3, 4, 5, 100, "
    "math.maxinteger, math.mininteger } do\n"
    "  C('find', 'abc', 'b', i)\n"
    "  C('find', 'abc', '', i)\n"
    "  C('find', 'abc', '.-', i)\n"
    "  C('match', 'abc', '()', i)\n"
    "  C('gmatch', 'abc', '.?', i)\n"
    "  C('find', 'a.c', '.', i, true)\n"
    "end\n"
    "C('find', 'a.c', '.', 1, true) C('find', 'a+b', '+', 1, 1)\n"
    "C('find', 'a+b', 'a+', 1, false) C('find', 'a+b', 'a+', 1, nil)\n"
    "C('find', 'aaa', 'aaaa', 1, true) C('find', '', '', 1, true)\n"
    "C('find', 'x\\0y', '\\0', 1, true) C('find', 'x\\0y', '\\0y')\n"
    "C('find', 'abcabc', 'cab', 1, true) C('find', 'abcabc', 'bc', 3)\n"
    "C('find', 'hello', 'l+') C('find', 'hello', '(l)(l)')\n"
    "C('find', 'hello', '()ll()') C('find', 12345, 34) C('find', 1.5, '.')\n"
    "C('match', 'hello world', '%w+') C('match', 'key = value', "
    "'(%w+)%s*=%s*(%w+)')\n"
    "C('match', 'THE (quick) fox', '%((%a+)%)') C('match', '  trim  ', "
    "'^%s*(.-)%s*$')\n"
    "C('match', 'now is the time', '%f[%a]%a+%f[%A]', 3)\n"
    "C('match', 'THE (quick) fox', '%f[%a]%a+') C('match', 'x', '%f[x]')\n"
    "C('match', 'x', 'x%f[%z]') C('match', 'x', 'x%f[\\0]') "
    "C('match', 'ab', '%f[^a]')\n"
    "C('match', '[[x]]', '%b[]') C('match', 'if (a(b)c) end', '%b()')\n"
    "C('match', '\"a\"b\"', '%b\"\"') C('match', '(((', '%b()') "
    "C('match', 'x)', '%b()')\n"
    "C('match', 'abab', '(ab)%1') C('match', 'abac', '(ab)%1') "
    "C('match', 'aa', '(a*(.)%w(%s*))')\n"
    "C('match', 'xyyx', '(.)(.)%2%1') C('match', 'xx', '()%1') "
    "C('match', 'x', '(()x)')\n"
    "C('match', 'hello', '(h)(e)(l)(l)(o)') C('match', 'a$b', 'a$b') "
    "C('match', 'ab', 'b$')\n"
    "C('match', 'a^b', 'a^b') C('match', '^ab', '^^a') C('match', 'ab', "
    "'^(a)') C('match', 'ab', '$')\n"
    "C('match', 'aaa', 'a-b') C('match', 'aaab', 'a-b') C('match', 'aaa', "
    "'^a-$') C('match', 'a]', '[]]')\n"
    "C('match', '-', '[a-]') C('match', 'b', '[a-]') C('match', '%', "
    "'[%%]') C('match', ']', '[%]]')\n"
    "C('match', '^', '[%^]') C('match', '^', '[x^]') C('match', 'c', "
    "'[^^]') C('match', 'z', '[a-%z]')\n"
    "C('match', '5', '[%d-z]') C('match', '-', '[%d-z]') C('match', "
    "'\\255', '[\\128-\\255]')\n"
    "C('match', 'x', '[') C('match', 'x', '[^') C('match', 'x', '[]') "
    "C('match', 'x', '[^]')\n"
    "C('match', 'x', '[%') C('match', 'x', '[a-') C('match', 'x', '%') "
    "C('match', 'x', 'x%')\n"
    "C('match', 'x', '%b') C('match', 'x', '%bx') C('match', 'x', 'y%b') "
    "C('match', 'x', '%f')\n"
    "C('match', 'x', '%fx') C('match', 'x', '%f[') C('match', 'x', '(x') "
    "C('match', 'x', 'x)')\n"
    "C('match', 'x', ')') C('match', 'x', '%1') C('match', 'x', '%0') "
    "C('match', 'x', '(x)%2')\n"
    "C('match', 'x', '(x%1)') C('match', 'x', '(()') C('find', 'x', '(x') "
    "C('find', 'x', ')')\n"
    "C('match', 'x', '%9') C('gmatch', 'x', '(x') C('gsub', 'x', '(x', "
    "'y')\n"
    "C('match', 'x', string.rep('(', 32) .. 'x' .. string.rep(')', 32))\n"
    "C('match', 'x', string.rep('(', 33) .. 'x' .. string.rep(')', 33))\n"
    "C('match', 'x', string.rep('()', 40))\n"
    "C('match', string.rep('a', 300), string.rep('a?', 300))\n"
    "C('match', string.rep('a', 300), string.rep('a?', 190))\n"
    "C('match', string.rep('a', 300), string.rep('a?', 199))\n"
    "C('match', string.rep('a', 300), string.rep('a?', 200))\n"
    "C('match', string.rep('a', 300), string.rep('a', 300))\n"
    "C('match', string.rep('a', 300), string.rep('(a)', 31))\n"
    "C('match', string.rep('a', 300), string.rep('a*', 200))\n"
    "C('match', string.rep('a', 30), string.rep('a-', 198) .. 'a')\n"
    /* gmatch and its empty-match rules */
    "C('gmatch', 'hello world from Lua', '%a+') C('gmatch', 'k=v, a=b', "
    "'(%w+)=(%w+)')\n"
    "C('gmatch', 'abc', '') C('gmatch', 'abc', '.-') C('gmatch', 'abc', "
    "'x*') C('gmatch', 'abc', '()')\n"
    "C('gmatch', 'abc', '^a') C('gmatch', '^a^a', '^a') C('gmatch', 'a,b,,c', "
    "'([^,]*)')\n"
    "C('gmatch', '', '') C('gmatch', '', 'x') C('gmatch', 'aaa', 'a*$') "
    "C('gmatch', 'abc', 'b*')\n"
    "C('gmatch', 'abc', '.', 10) C('gmatch', 'abc', '.', -1) "
    "C('gmatch', 'abc', '.', 4)\n"
    /* gsub: every replacement form, max n, anchors, errors */
    "C('gsub', 'hello world', '(%w+)', '%1 %1') C('gsub', 'hello world', "
    "'%w+', '%0 %0', 1)\n"
    "C('gsub', 'hello world', '(%w+)%s*(%w+)', '%2 %1') C('gsub', 'abc', "
    "'', '-')\n"
    "C('gsub', 'abc', '%w', '%%') C('gsub', 'abc', '%w', '%') "
    "C('gsub', 'abc', '%w', '%x')\n"
    "C('gsub', 'abc', '%w', '%1') C('gsub', 'abc', '%w', '%2') "
    "C('gsub', 'abc', '(%w)', '%2')\n"
    "C('gsub', 'abc', '()%w', '%1') C('gsub', 'abc', '(%w)()', '%2%1') "
    "C('gsub', 'abc', '%w', '%9')\n"
    "C('gsub', 'abc', 'b', 7) C('gsub', 'abc', 'b', 7.5) C('gsub', "
    "'abc', '%w', repl_fn)\n"
    "C('gsub', 'abc', '(%w)', repl_tab) C('gsub', 'abc', '%w', repl_bad) "
    "C('gsub', 'abc', '%w', repl_badtab)\n"
    "C('gsub', 'abc', '()', repl_fn) C('gsub', 'abc', '', repl_fn) "
    "C('gsub', 'abc', '^a', 'x')\n"
    "C('gsub', 'aaa', '^a', 'x') C('gsub', 'abc', '^', 'x') C('gsub', "
    "'abc', '$', 'x')\n"
    "C('gsub', 'abc', 'x*', '-') C('gsub', 'abc', 'b*', '-') C('gsub', "
    "'abc', '.', 'x', 0)\n"
    "C('gsub', 'abc', '.', 'x', -1) C('gsub', 'abc', '.', 'x', 2) "
    "C('gsub', 'abc', '.', 'x', 2.0)\n"
    "C('gsub', 'abc', '.', 'x', 2.5) C('gsub', 'abc', '.', 'x', '2') "
    "C('gsub', 'abc', '.', 'x', 'z')\n"
    "C('gsub', 'abc', '.') C('gsub', 'abc', '.', nil, 'z') C('gsub', "
    "'abc', '.', true)\n"
    "C('gsub', 'abc', '.', {}) C('gsub', 'a b', '%s', '%%s') "
    "C('gsub', 'x', 'x', 'a%0b%0c')\n"
    "C('gsub', 'hello world', 'o', {o = 0}) C('gsub', '$name is $age', "
    "'%$(%w+)', {name = 'Ann', age = 3})\n"
    "C('gsub', 'abc', '%w', function(c) return c:byte() end)\n"
    "C('gsub', 'abc', '%w', function(c) return c == 'b' and 1.25 end)\n"
    "C('gsub', 'abc', '%w', function() error('boom') end)\n"
    "C('gsub', 'abc', '%w', setmetatable({}, {__index = function(_, k) "
    "return k:upper() end}))\n"
    /* argument errors */
    "C('find') C('find', 'a') C('find', {}, 'a') C('find', 'a', {}) "
    "C('find', 'a', 'a', 'x')\n"
    "C('find', 'a', 'a', 1.5) C('match', nil, 'a') C('gmatch', 'a') "
    "C('gmatch', 'a', 'a', {})\n"
    "C('gsub', 'a') C('gsub', {}, 'a', 'b') C('match', 'a', 'a', '2')\n"
    "C('find', 'abc', 'b', '2') C('find', 'abc', 'b', 2.0)\n"
    /* malformed patterns after valid prefixes, through every function */
    "local bad = { '%', '[', '[^', '[a', '[%', '[]', '(', ')', '%b', '%bx',\n"
    "  '%f', '%fa', '%f[', '%1', '%0', '(x)%2', '(()', '(x%1)', 'x)(' }\n"
    "local pre = { '', 'a', 'a*', '(a)', '.-', '[ab]+', '%w?' }\n"
    "for _, b in ipairs(bad) do\n"
    "  for _, p in ipairs(pre) do\n"
    "    C('find', 'xa(a)ab', p .. b) C('match', 'xa(a)ab', p .. b)\n"
    "    C('gmatch', 'xa(a)ab', p .. b) C('gsub', 'xa(a)ab', p .. b, '-')\n"
    "  end\n"
    "end\n";

static void test_conformance(void)
{
    lua_State *L = new_state();
    if (run(L, harness, "harness") && run(L, generated, "generated cases") &&
        run(L, handpicked, "hand-picked cases")) {
        lua_Integer cases, errors;
        lua_getglobal(L, "cases");
        cases = lua_tointeger(L, -1);
        lua_getglobal(L, "errors");
        errors = lua_tointeger(L, -1);
        lua_pop(L, 2);
        fprintf(stderr,
                "conformance: %lld calls compared, %lld of them "
                "errors\n",
                (long long)cases, (long long)errors);
        CHECK(cases > 5000, "thousands of calls are compared");
        CHECK(errors > 100, "including a hundred error cases");
        lua_getglobal(L, "diffs");
        check_count_++;
        if (luaL_len(L, -1) > 0) {
            CHECK_FAIL_("the sandbox's pattern functions differ from the "
                        "stock ones (first %d):",
                        (int)luaL_len(L, -1));
            for (lua_Integer i = 1; i <= luaL_len(L, -1); i++) {
                lua_geti(L, -1, i);
                fprintf(stderr, "    %s\n", lua_tostring(L, -1));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_close(L);
}

/* ---- cost ------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run chunk under a step limit: it must fail with the budget error, and
 * soon. */
static void expect_over_budget(const char *chunk, const char *what)
{
    lua_State *L = new_state();
    double t0 = now_s(), dt;
    int rc;
    steps_spent = 0;
    steps_limit = 1000000;
    rc = luaL_dostring(L, chunk);
    dt = now_s() - t0;
    check_count_++;
    if (rc == LUA_OK || !strstr(lua_tostring(L, -1), "test budget of"))
        CHECK_FAIL_("%s: expected the budget error, got %s", what,
                    rc == LUA_OK ? "success" : lua_tostring(L, -1));
    CHECK(dt < 5.0, "and it stops within seconds even under valgrind");
    steps_limit = 0;
    lua_close(L);
}

static void test_cost(void)
{
    lua_State *L = new_state();

    /* the example and its kin */
    expect_over_budget("mine.find(string.rep('a', 20000), '.-.-.-b')",
                       "find with a cubic backtrack");
    expect_over_budget("mine.match(string.rep('a', 20000), '.-.-.-b')",
                       "match with a cubic backtrack");
    expect_over_budget("mine.gsub(string.rep('a', 20000), '.-.-.-b', '')",
                       "gsub with a cubic backtrack");
    expect_over_budget("for x in mine.gmatch(string.rep('a', 20000), "
                       "'.-.-.-b') do end",
                       "gmatch with a cubic backtrack");
    expect_over_budget("mine.find(string.rep('a', 5000), "
                       "string.rep('a*', 30) .. 'b')",
                       "find with nested stars");
    expect_over_budget("mine.find(string.rep('(', 20000), '%b()x')",
                       "find with a quadratic %b");
    expect_over_budget("mine.find(string.rep('a', 100000), "
                       "string.rep('a', 3000) .. 'b', 1, true)",
                       "a plain find with a long near-miss needle");
    expect_over_budget("mine.find(string.rep('ab', 20000), "
                       "'(' .. string.rep('[%a%d%s%p]', 50) .. ')-x')",
                       "find with large sets");
    expect_over_budget("mine.gsub(string.rep('x', 100000), '', "
                       "string.rep('y', 1000))",
                       "gsub whose output is large");

    /* a cheap call costs little, and the cost is reported */
    steps_spent = 0;
    charge_calls = 0;
    run(L, "assert(mine.find('hello world', 'o w') == 5)", "cheap find");
    CHECK(steps_spent > 0 && steps_spent < 100,
          "a short find costs a few steps");
    CHECK_INT(charge_calls, 1, "reported once, before returning");
    steps_spent = 0;
    run(L,
        "local s = string.rep('a', 3000); assert(mine.find(s, '.-b') == "
        "nil)",
        "quadratic find");
    CHECK(steps_spent > 3000u * 3000 / 2,
          "a quadratic search is charged quadratically");
    steps_spent = 0;
    run(L, "for w in mine.gmatch(string.rep('word ', 1000), '%a+') do end",
        "gmatch loop");
    CHECK(steps_spent > 5000 && steps_spent < 100000,
          "a gmatch loop is charged about linearly");

    /* an error raised by the charge leaves the state usable */
    steps_limit = 100;
    CHECK(luaL_dostring(L, "mine.gsub(string.rep('a', 5000), 'a', "
                           "function(c) return c end)") != LUA_OK,
          "the charge stops a gsub calling Lua");
    lua_pop(L, 1);
    steps_limit = 0;
    run(L, "assert(mine.gsub('abc', '%w', '%0%0') == 'aabbcc')",
        "the state is fine after an error from the charge");
    lua_close(L);
}

int main(void)
{
    test_conformance();
    test_cost();
    return check_done();
}
