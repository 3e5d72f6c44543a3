-- evlua.upsert and evlua.delete as script authors and the toolkit see them:
-- ordinary statements {sql, values...} whose SQL is the single-row form
-- (the projector coalesces them per batch; tests/c/test_proj_upsert.c and
-- test_projector_upsert.c cover that), and errors that name what is wrong.
local native = require("evlua_host")
local evlua = native.api
local testing = require("evlua.testing")

describe("evlua.upsert", function()
  it("is a statement: the key first, then the other columns by name", function()
    local st = evlua.upsert("customers", { name = "Ann", id = "c1", email = evlua.null },
      { key = "id" })
    assert.are.equal('INSERT INTO "customers" ("id", "email", "name") VALUES ($1, $2, $3) '
      .. 'ON CONFLICT ("id") DO UPDATE SET "email" = EXCLUDED."email", "name" = EXCLUDED."name"',
      st[1])
    assert.are.equal("c1", st[2])
    assert.are.equal(evlua.null, st[3])
    assert.are.equal("Ann", st[4])
    assert.are.equal(false, getmetatable(st)) -- its meaning is not to be copied
  end)

  it("takes a key of several columns, in the key's order, and SCHEMA.NAME", function()
    local st = evlua.upsert("app.members", { user_id = "u", host_id = "h", role = "admin" },
      { key = { "user_id", "host_id" } })
    assert.matches('^INSERT INTO "app"."members" %("user_id", "host_id", "role"%)', st[1])
    assert.matches('ON CONFLICT %("user_id", "host_id"%) DO UPDATE SET "role" = EXCLUDED."role"$',
      st[1])
  end)

  it("does nothing on conflict when every column is key", function()
    assert.matches('ON CONFLICT %("id"%) DO NOTHING$',
      evlua.upsert("seen", { id = 1 }, { key = "id" })[1])
  end)

  it("quotes identifiers, never splices values", function()
    local st = evlua.upsert('t"x', { ['a"b'] = "'); DROP TABLE t; --", id = 1 }, { key = "id" })
    assert.matches('INSERT INTO "t""x" ("id", "a""b")', st[1], 1, true)
    assert.are.equal("'); DROP TABLE t; --", st[3])
  end)

  it("gives the same statement for a shape seen before, after many others", function()
    local first = evlua.upsert("t", { id = 1, a = 2 }, { key = "id" })
    for i = 1, 600 do -- more shapes than the cache keeps
      local st = evlua.upsert("t", { id = i, ["c" .. i] = i }, { key = "id" })
      assert.are.equal('INSERT INTO "t" ("id", "c' .. i .. '") VALUES ($1, $2) ON CONFLICT ("id") '
        .. 'DO UPDATE SET "c' .. i .. '" = EXCLUDED."c' .. i .. '"', st[1])
    end
    local again = evlua.upsert("t", { id = 3, a = 4 }, { key = "id" })
    assert.are.equal(first[1], again[1])
    assert.are.same({ 3, 4 }, { again[2], again[3] })
    assert.are.equal('DELETE FROM "t" WHERE "id" = $1', evlua.delete("t", { id = 1 })[1])
  end)

  it("names what is wrong", function()
    local cases = {
      { function() evlua.upsert(1, { id = 1 }, { key = "id" }) end, "the table name is a number" },
      { function() evlua.upsert("", { id = 1 }, { key = "id" }) end, "the table name is empty" },
      { function() evlua.upsert("a.b.c", { id = 1 }, { key = "id" }) end, "not NAME or SCHEMA.NAME" },
      { function() evlua.upsert("t", "row", { key = "id" }) end, "the row is a string" },
      { function() evlua.upsert("t", {}, { key = "id" }) end, "the row is empty" },
      { function() evlua.upsert("t", { 1 }, { key = "id" }) end, "the row has a number key" },
      { function() evlua.upsert("t", { id = 1 }) end, "the options are a no value" },
      { function() evlua.upsert("t", { id = 1 }, {}) end, "the key option is missing" },
      { function() evlua.upsert("t", { id = 1 }, { key = {} }) end, "the key is an empty list" },
      { function() evlua.upsert("t", { id = 1 }, { key = "nope" }) end,
        "key column 'nope' is not in the row" },
      { function() evlua.upsert("t", { id = 1 }, { key = { "id", "id" } }) end,
        "key column 'id' is listed twice" },
      { function() evlua.upsert("t", { id = 1 }, { key = "id", on = 1 }) end, "unknown option on" },
      { function() evlua.delete("t", {}) end, "evlua.delete: the key row is empty" },
      { function() evlua.delete("t", { id = 1 }, {}) end, "got a third argument" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(c[1])
      assert.is_false(ok)
      assert.matches(c[2], err, 1, true)
    end
  end)
end)

describe("evlua.delete", function()
  it("is a statement keyed by every column, sorted", function()
    local st = evlua.delete("host_users", { user_id = "u1", host_id = "h1" })
    assert.are.same({ 'DELETE FROM "host_users" WHERE "host_id" = $1 AND "user_id" = $2',
      "h1", "u1" }, { st[1], st[2], st[3] })
  end)
end)

describe("the toolkit", function()
  it("shows the SQL an upsert becomes", function()
    local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }
    local stmts = app.projection("host_users").project{
      { type = "HostCreated", aggregate_type = "host", aggregate_id = "h1", data = { name = "H" } } }
    assert.are.same({ { sql = 'INSERT INTO "hosts" ("id", "name") VALUES ($1, $2) '
      .. 'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"', params = { "h1", "H" } } },
      stmts)
  end)
end)
