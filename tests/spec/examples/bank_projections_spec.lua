-- The bank projections (projections/ledger.lua, projections/balances.lua):
-- which events they take and the SQL they return.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }

local function deposit(id, amount, after, memo)
  return { type = "MoneyDeposited", aggregate_type = "account", aggregate_id = id,
           sequence = 2, id = "ev-" .. id,
           data = { amount = amount, balanceAfter = after, memo = memo } }
end

describe("ledger", function()
  local ledger = app.projection("ledger")

  it("takes the money movements only", function()
    local events = ledger.info.events
    table.sort(events)
    assert.are.same({ "MoneyDeposited", "MoneyWithdrawn" }, events)
  end)

  it("appends one row per event with a plain INSERT (no ON CONFLICT)", function()
    local stmts = ledger.project{ deposit("a1", 500, 500, "salary") }
    assert.are.equal(1, #stmts)
    assert.matches("^%s*INSERT INTO ledger", stmts[1].sql)
    assert.is_nil(stmts[1].sql:find("ON CONFLICT", 1, true))
    assert.are.same({ "ev-a1", "a1", 2, "deposit", 500, 500, "salary",
                      "2026-01-01T00:00:00.000Z" }, stmts[1].params)
  end)

  it("stores a missing memo as SQL NULL", function()
    local stmts = ledger.project{ deposit("a1", 5, 5) }
    assert.are.equal(testing.null, stmts[1].params[7])
  end)

  it("records a withdrawal as such", function()
    local stmts = ledger.project{ { type = "MoneyWithdrawn", aggregate_id = "a1",
      data = { amount = 200, balanceAfter = 300 } } }
    assert.are.equal("withdrawal", stmts[1].params[4])
    assert.are.equal(200, stmts[1].params[5])
  end)
end)

describe("balances", function()
  local balances = app.projection("balances")

  it("opens a row per account and moves it by each amount", function()
    local stmts = balances.project{
      { type = "AccountOpened", aggregate_id = "a1", data = { owner = "Ann" } },
      deposit("a1", 500, 500),
      { type = "MoneyWithdrawn", aggregate_id = "a1", data = { amount = 200, balanceAfter = 300 } },
    }
    assert.are.equal(3, #stmts)
    assert.matches("INSERT INTO balances", stmts[1].sql, 1, true)
    assert.are.same({ "a1", "Ann" }, stmts[1].params)
    assert.matches("balance + $2", stmts[2].sql, 1, true)
    assert.are.same({ "a1", 500 }, stmts[2].params)
    assert.matches("balance - $2", stmts[3].sql, 1, true)
    assert.are.same({ "a1", 200 }, stmts[3].params)
  end)
end)
