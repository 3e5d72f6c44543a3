-- The evlua_host Lua module runs the production host: the same sandbox,
-- JSON bridge and validation as `evlua run`, loaded from busted.
local native = require("evlua_host")
local root = os.getenv("EVLUA_SOURCE_DIR") or "."

local host = assert(native.load{
  aggregates = root .. "/aggregates", projections = root .. "/projections" })

describe("evlua_host", function()
  it("lists the example scripts", function()
    local types = {}
    for _, a in ipairs(host:aggregates()) do types[#types + 1] = a.type end
    assert.are.same({ "account", "cart", "customer", "host", "order", "payment",
      "shipment", "stock" }, types)
  end)

  it("turns one profile update into two atomic events", function()
    local r = host:decide{ aggregate_type = "customer", aggregate_id = "c-1",
      version = 1, state = { registered = true, name = "Ann", email = "a@x.io" },
      command = { id = "k1", type = "UpdateCustomerProfile",
                  data = { name = "Ann Lee", address = "1 Main St" } } }
    assert.are.equal("accepted", r.verdict, r.error)
    assert.are.equal(2, #r.events)
    assert.are.equal("CustomerNameChanged", r.events[1].type)
    assert.are.equal("Ann Lee", r.events[1].data.newName)
    assert.are.equal("CustomerAddressChanged", r.events[2].type)
    assert.are.equal(native.api.null, r.events[2].data.previousAddress)
    assert.are.equal("1 Main St", r.state.address)
  end)

  it("keeps rejection and failure apart", function()
    local r = host:decide{ aggregate_type = "customer", aggregate_id = "c-1",
      command = { id = "k2", type = "UpdateCustomerProfile", data = { name = "" } } }
    assert.are.equal("rejected", r.verdict)
    assert.matches("unknown customer", r.error, 1, true)
    r = host:decide{ aggregate_type = "cart", aggregate_id = "k-1",
      state = { items = "not a table", checkedOut = false },
      command = { id = "k3", type = "CheckOutCart", data = {} } }
    assert.are.equal("failed", r.verdict)
    assert.matches("aggregates/cart.lua:%d+:", r.error)
  end)

  it("keeps integers as integers through the JSON bridge", function()
    local r = host:decide{ aggregate_type = "cart", aggregate_id = "k-2",
      command = { id = "k4", type = "AddItemToCart",
                  data = { productId = "p1", quantity = 2, price = 1999 } } }
    assert.are.equal("accepted", r.verdict, r.error)
    assert.are.equal("integer", math.type(r.events[1].data.priceAtTimeOfAdding))
    r = host:decide{ aggregate_type = "cart", aggregate_id = "k-2",
      command = { id = "k5", type = "AddItemToCart",
                  data = { productId = "p1", quantity = 2.5, price = 1 } } }
    assert.are.equal("rejected", r.verdict)
  end)

  it("projects an event into bound statements", function()
    local stmts = assert(host:project("shipping_addresses", {
      type = "CustomerAddressChanged", aggregate_type = "customer",
      aggregate_id = "c-1'; DROP TABLE x; --", sequence = 2,
      data = { newAddress = "Ünïcødé 🏠" } }))
    assert.are.equal(1, #stmts)
    assert.matches("INSERT INTO shipping_addresses", stmts[1].sql, 1, true)
    assert.are.same({ "c-1'; DROP TABLE x; --", "Ünïcødé 🏠" }, stmts[1].params)
  end)

  it("gives no statement for an event the projection does not handle", function()
    local stmts = assert(host:project("shipping_addresses", {
      type = "CustomerNameChanged", aggregate_id = "c-1", data = {} }))
    assert.are.equal(0, #stmts)
  end)

  it("refuses values with no JSON form", function()
    assert.has_error(function()
      host:decide{ aggregate_type = "customer", aggregate_id = "c-1",
        command = { id = "k6", type = "ChangeEmail", data = { f = print } } }
    end)
  end)

  it("reports every problem of a broken set", function()
    local h, problems = native.load{
      aggregates = root .. "/tests/fixtures/scripts/broken/aggregates",
      projections = root .. "/tests/fixtures/scripts/broken/projections" }
    assert.is_nil(h)
    assert.is_true(#problems >= 10)
    assert.matches("a_syntax.lua:3:", problems[1], 1, true)
  end)
end)
