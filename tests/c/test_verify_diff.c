/*
 * test_verify_diff.c - the JSON diff of `evlua verify`: equal texts give
 * no change whatever their key order or spacing; a renamed field is two
 * changes (the old name gone, the new one added); nested objects and
 * arrays give paths ("address.city", "items[2].qty"); extra array
 * elements, an array against an object, an integer against an equal
 * float, null against a value are changes; odd keys are quoted; max
 * bounds what is kept, not what is counted; invalid JSON is an error
 * naming the side.
 */
#include <lauxlib.h>
#include <lualib.h>

#include "check.h"
#include "verify_int.h"

static lua_State *L;

/* The diff of a and b (equal JSON must give total 0). */
static vf_diff diff(const char *a, const char *b, size_t max)
{
    vf_diff d = {0};
    char err[EVL_ERRLEN];
    int top = lua_gettop(L);
    if (vf_diff_json(L, a, strlen(a), b, strlen(b), max, &d, err, sizeof err) !=
        EVL_OK)
        CHECK_FAIL_("diff of %s and %s failed: %s", a, b, err);
    CHECK_INT(lua_gettop(L), top, "the stack is left as it was");
    return d;
}

static void equal_texts(void)
{
    vf_diff d = diff("{\"a\":1,\"b\":[1,2,{\"c\":null}]}",
                     " { \"b\" : [1, 2, {\"c\": null}], \"a\": 1 } ", 10);
    CHECK_INT(d.total, 0, "key order and spacing do not matter");
    vf_diff_free(&d);
    d = diff("[]", "[]", 10);
    CHECK_INT(d.total, 0, "empty arrays are equal");
    vf_diff_free(&d);
}

static void renamed_field(void)
{
    vf_diff d = diff("{\"name\":\"Ann\",\"registered\":true}",
                     "{\"fullName\":\"Ann\",\"registered\":true}", 10);
    CHECK_INT(d.total, 2, "a rename is one key gone and one added");
    CHECK_INT(d.n, 2, "both kept");
    CHECK_STR(d.v[0].path, "fullName", "keys in strcmp order: added first");
    CHECK(d.v[0].old == NULL, "absent on the old side");
    CHECK_STR(d.v[0].new_, "\"Ann\"", "the new value as JSON");
    CHECK_STR(d.v[1].path, "name", "then the one gone");
    CHECK_STR(d.v[1].old, "\"Ann\"", "its old value");
    CHECK(d.v[1].new_ == NULL, "absent on the new side");
    vf_diff_free(&d);
}

static void nested_paths(void)
{
    vf_diff d = diff("{\"address\":{\"city\":\"Oslo\",\"zip\":1},"
                     "\"items\":[{\"qty\":1},{\"qty\":2}]}",
                     "{\"address\":{\"city\":\"Bergen\",\"zip\":1},"
                     "\"items\":[{\"qty\":1},{\"qty\":3},{\"qty\":4}]}",
                     10);
    CHECK_INT(d.total, 3, "city, items[2].qty and the extra element");
    CHECK_STR(d.v[0].path, "address.city", "nested object path");
    CHECK_STR(d.v[0].old, "\"Oslo\"", "old city");
    CHECK_STR(d.v[0].new_, "\"Bergen\"", "new city");
    CHECK_STR(d.v[1].path, "items[2].qty", "array element path, from 1");
    CHECK_STR(d.v[1].old, "2", "old qty");
    CHECK_STR(d.v[1].new_, "3", "new qty");
    CHECK_STR(d.v[2].path, "items[3]", "an element only on the new side");
    CHECK(d.v[2].old == NULL, "absent before");
    CHECK_STR(d.v[2].new_, "{\"qty\":4}", "the whole new element");
    vf_diff_free(&d);
}

static void kinds_differ(void)
{
    vf_diff d = diff("{\"a\":[],\"b\":1,\"c\":null,\"d\":\"x\"}",
                     "{\"a\":{},\"b\":1.0,\"c\":false,\"d\":\"x\"}", 10);
    CHECK_INT(d.total, 3, "array/object, integer/float, null/false");
    CHECK_STR(d.v[0].path, "a", "an empty array is not an empty object");
    CHECK_STR(d.v[0].old, "[]", "old: the array");
    CHECK_STR(d.v[0].new_, "{}", "new: the object");
    CHECK_STR(d.v[1].path, "b", "1 and 1.0 differ");
    CHECK_STR(d.v[1].new_, "1.0", "the float stays a float");
    CHECK_STR(d.v[2].old, "null", "null is a value");
    vf_diff_free(&d);
    d = diff("1", "\"1\"", 10);
    CHECK_INT(d.total, 1, "whole values of other types");
    CHECK_STR(d.v[0].path, "", "the whole value has the empty path");
    vf_diff_free(&d);
}

static void odd_keys(void)
{
    vf_diff d = diff("{\"a b\":{\"2x\":1}}", "{\"a b\":{\"2x\":2}}", 10);
    CHECK_INT(d.total, 1, "one change");
    CHECK_STR(d.v[0].path, "[\"a b\"][\"2x\"]", "keys that are no names");
    vf_diff_free(&d);
}

static void max_kept(void)
{
    vf_diff d = diff("[1,2,3,4,5]", "[5,4,3,2,1]", 2);
    CHECK_INT(d.total, 4, "every change counted");
    CHECK_INT(d.n, 2, "only max kept");
    CHECK_STR(d.v[1].path, "[2]", "the first ones");
    vf_diff_free(&d);
}

static void invalid(void)
{
    vf_diff d = {0};
    char err[EVL_ERRLEN] = "";
    CHECK_INT(vf_diff_json(L, "{}", 2, "{\"a\":", 5, 10, &d, err, sizeof err),
              EVL_EPERMANENT, "invalid JSON is an error");
    CHECK_HAS(err, "new: ", "the message names the side");
    CHECK_INT(vf_diff_json(L, "[1,]", 4, "{}", 2, 10, &d, err, sizeof err),
              EVL_EPERMANENT, "on either side");
    CHECK_HAS(err, "old: ", "the old side");
    CHECK_INT(d.total, 0, "nothing added");
    CHECK_INT(lua_gettop(L), 0, "nothing left on the stack");
}

int main(void)
{
    L = luaL_newstate();
    equal_texts();
    renamed_field();
    nested_paths();
    kinds_differ();
    odd_keys();
    max_kept();
    invalid();
    lua_close(L);
    return check_done();
}
