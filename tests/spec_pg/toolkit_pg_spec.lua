-- evlua.testing's against_postgres: typed query results, the projector's
-- checkpoints, and no transaction outliving its spec. Needs PostgreSQL
-- (EVLUA_PG_CONNINFO or scripts/pg start); fails, never skips, without.
local testing = require("evlua.testing")
local src = os.getenv("EVLUA_SOURCE_DIR") or "."
local fixtures = src .. "/tests/spec/fixtures/toolkit"
local app = testing.load{ root = fixtures }
local bank = testing.load{ root = src }

local function conninfo()
  local v = os.getenv("EVLUA_PG_CONNINFO")
  if v and v ~= "" then return v end
  local f = io.open((os.getenv("EVLUA_RUN_DIR") or ".run") .. "/pg/conninfo")
  assert(f, "no PostgreSQL: set EVLUA_PG_CONNINFO or run scripts/pg start")
  v = f:read("l")
  f:close()
  return v
end

local function inc(id, by, seq)
  return { type = "Incremented", aggregate_type = "counter", aggregate_id = id,
           data = { by = by }, sequence = seq }
end

local function acct(type_, id, seq, data)
  return { type = type_, aggregate_type = "account", aggregate_id = id,
           sequence = seq, data = data }
end

local function has(text, fragment)
  assert(tostring(text):find(fragment, 1, true),
    string.format("expected the message to mention %q; it was:\n%s", fragment, tostring(text)))
end

describe("db.query", function()
  it("returns integers, numbers, booleans, NULL, JSON and text as such", function()
    local db = app.projection("tally").against_postgres(conninfo())
    local row = db.query([[SELECT 7::int2 AS s, 750::int4 AS i, 9007199254740993::int8 AS b,
      750.00::numeric AS n0, 12.5::numeric AS n1, 0.1::float8 AS f,
      12345678901234567890.123456789::numeric AS big,
      true AS t, false AS f2, NULL::text AS nothing,
      '{"a":[1,2.5,null],"b":"x"}'::jsonb AS jb, '[1]'::json AS j,
      'hi'::text AS s2, '2026-01-01'::date AS d]])[1]
    assert.are.equal(7, row.s); assert.are.equal("integer", math.type(row.s))
    assert.are.equal(750, row.i); assert.are.equal("integer", math.type(row.i))
    assert.are.equal(9007199254740993, row.b)
    assert.are.equal(750, row.n0)
    assert.are.equal(12.5, row.n1)
    assert.are.equal(0.1, row.f)
    assert.are.equal("12345678901234567890.123456789", row.big) -- not exact as a number
    assert.are.equal(true, row.t)
    assert.are.equal(false, row.f2)
    assert.are.equal(testing.null, row.nothing)
    assert.are.same({ a = { 1, 2.5, testing.null }, b = "x" }, row.jb)
    assert.are.same({ 1 }, row.j)
    assert.are.equal("hi", row.s2)
    assert.are.equal("2026-01-01", row.d)
  end)

  it("gives rows a balance spec can compare with", function()
    local db = bank.projection("balances").against_postgres(conninfo())
    db.apply{
      acct("AccountOpened", "a1", 1, { owner = "Ann" }),
      acct("MoneyDeposited", "a1", 2, { amount = 1000, balanceAfter = 1000 }),
      acct("MoneyWithdrawn", "a1", 3, { amount = 250, balanceAfter = 750 }),
    }
    assert.are.same({ { account_id = "a1", owner = "Ann", balance = 750, movements = 2 } },
      db.query("SELECT * FROM balances WHERE account_id = $1", "a1"))
  end)
end)

describe("the db's functions", function()
  it("has project as another name for apply", function()
    local db = app.projection("tally").against_postgres(conninfo())
    assert.are.equal(1, db.project{ inc("k1", 1, 1) })
    assert.are.equal(1, db.query("SELECT count(*) AS n FROM toolkit_tally")[1].n)
  end)

  it("names the functions it has when a spec guesses wrong", function()
    local db = app.projection("tally").against_postgres(conninfo())
    local ok, err = pcall(function() return db.exec("SELECT 1") end)
    assert.is_false(ok)
    has(err, "exec")
    has(err, "apply")
    has(err, "query")
    has(err, "assert_replay_harmless")
  end)
end)

describe("checkpoints", function()
  it("apply skips events at or below the aggregate's checkpoint, as the projector does", function()
    local db = app.projection("tally").against_postgres(conninfo())
    db.apply{ inc("k1", 1, 1), inc("k1", 2, 2) }
    db.apply{ inc("k1", 2, 2), inc("k1", 3, 3), inc("k2", 5, 1) }
    assert.are.same({ { counter_id = "k1", sequence = 1 }, { counter_id = "k1", sequence = 2 },
                      { counter_id = "k1", sequence = 3 }, { counter_id = "k2", sequence = 1 } },
      db.query("SELECT counter_id, sequence FROM toolkit_tally ORDER BY counter_id, sequence"))
    assert.are.same({ { aggregate_id = "k1", sequence = 3 }, { aggregate_id = "k2", sequence = 1 } },
      db.query([[SELECT aggregate_id, sequence FROM evlua_checkpoints
                 WHERE projection = 'tally' ORDER BY aggregate_id]]))
  end)

  it("numbers events without a sequence after the aggregate's last one", function()
    local db = app.projection("tally").against_postgres(conninfo())
    db.apply{ inc("k1", 1, 4) }
    db.apply{ inc("k1", 1), inc("k9", 1) }
    assert.are.same({ { counter_id = "k1", sequence = 4 }, { counter_id = "k1", sequence = 5 },
                      { counter_id = "k9", sequence = 1 } },
      db.query("SELECT counter_id, sequence FROM toolkit_tally ORDER BY counter_id, sequence"))
  end)
end)

describe("assert_replay_harmless", function()
  it("passes for a plain-INSERT ledger, which evlua's checkpoints make safe", function()
    local db = bank.projection("ledger").against_postgres(conninfo())
    db.apply{ acct("AccountOpened", "a1", 1, { owner = "Ann" }) }
    db.assert_replay_harmless({
      acct("MoneyDeposited", "a1", 2, { amount = 1000, balanceAfter = 1000 }),
      acct("MoneyWithdrawn", "a1", 3, { amount = 250, balanceAfter = 750, memo = "rent" }),
    }, "SELECT account_id, sequence, kind, amount, balance_after, memo FROM ledger ORDER BY sequence")
    assert.are.equal(2, db.query("SELECT count(*) AS n FROM ledger")[1].n)
  end)

  it("passes for the balance increments too", function()
    local db = bank.projection("balances").against_postgres(conninfo())
    db.assert_replay_harmless({
      acct("AccountOpened", "a2", 1, { owner = "Bo" }),
      acct("MoneyDeposited", "a2", 2, { amount = 10, balanceAfter = 10 }),
    }, "SELECT * FROM balances")
  end)

  it("fails for a projection a rebuild would double (no reset)", function()
    local db = app.projection("visits").against_postgres(conninfo())
    local ok, err = pcall(db.assert_replay_harmless, { inc("k1", 2, 1), inc("k1", 3, 2) },
      "SELECT counter_id, n FROM toolkit_visits")
    assert.is_false(ok)
    has(err, "rebuild")
    has(err, '"n":5')
    has(err, '"n":10')
  end)
end)

describe("transactions", function()
  -- a busted of its own, so a hang shows as a timeout, not a stuck suite
  local function run_fixture(name)
    local bin = os.getenv("EVLUA_BIN") or "build/evlua"
    local bindir = bin:match("^(.*)/[^/]*$") or "."
    local work = os.tmpname()
    os.remove(work)
    assert(os.execute("mkdir -p " .. work))
    local cmd = string.format(
      "cd %q && EVLUA_PG_CONNINFO=%q EVLUA_TOOLKIT_FIXTURES=%q timeout 90 busted" ..
      " --lpath=%q --cpath=%q --pattern=_fixture -o TAP %q 2>&1; echo \"rc=$?\"",
      work, conninfo(), fixtures, src .. "/core/lua/?.lua", bindir .. "/?.so",
      src .. "/tests/spec_pg/fixtures/" .. name)
    local t0 = os.time()
    local p = io.popen(cmd)
    local out = p:read("a")
    p:close()
    os.execute("rm -rf " .. work)
    return out, tonumber(out:match("rc=(%d+)\n$")), os.time() - t0
  end

  it("never outlive their spec: a failed assertion does not block the next spec", function()
    local out, rc, secs = run_fixture("leftover_fixture.lua")
    assert(rc ~= 124, "busted hung (killed by the timeout after " .. secs .. " s):\n" .. out)
    assert(rc ~= 0, "busted passed although two specs fail:\n" .. out)
    assert.matches("not ok 1 %- leftover transactions 1 fails", out)
    assert.matches("\nok 2 %- leftover transactions 2 gets the same tables afresh", out)
    assert.matches("\nok 3 %- leftover transactions 3 waits at most the lock timeout", out)
    assert.matches("\nnot ok 4 %- a before_each that fails after opening a db", out)
    assert.matches("\nok 5 %- after it 5 gets the same tables afresh", out)
    assert(secs < 60, "took " .. secs .. " s")
  end)
end)
