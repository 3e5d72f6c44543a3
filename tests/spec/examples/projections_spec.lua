-- The example projections: which events they take and the SQL they return.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }

local function address(id, new, previous)
  return { type = "CustomerAddressChanged", aggregate_type = "customer", aggregate_id = id,
           data = { newAddress = new, previousAddress = previous or testing.null } }
end

describe("projections", function()
  it("customer_profile upserts on registration with bound values", function()
    local stmts = app.projection("customer_profile").project{
      { type = "CustomerRegistered", aggregate_id = "c1",
        data = { name = "Ann", email = "ann@example.com" } } }
    assert.are.equal(1, #stmts)
    assert.matches("INSERT INTO customers", stmts[1].sql, 1, true)
    assert.are.same({ "c1", "Ann", "ann@example.com", "2026-01-01T00:00:00.000Z" },
      stmts[1].params)
  end)

  it("shipping_addresses only takes address changes", function()
    local p = app.projection("shipping_addresses")
    assert.are.same({ "CustomerAddressChanged" }, p.info.events)
    assert.are.equal(1, #p.project{ address("c1", "1 Main St") })
  end)

  it("welcome_kits fires on the first address only", function()
    local p = app.projection("welcome_kits")
    assert.are.equal(1, #p.project{ address("c1", "1 Main St") })
    assert.are.equal(0, #p.project{ address("c1", "2 Side St", "1 Main St") })
  end)
end)
