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
    -- evlua.upsert: the key, then the other columns by name
    assert.are.equal('INSERT INTO "customers" ("id", "email", "name", "updated_at") '
      .. 'VALUES ($1, $2, $3, $4) ON CONFLICT ("id") DO UPDATE SET '
      .. '"email" = EXCLUDED."email", "name" = EXCLUDED."name", '
      .. '"updated_at" = EXCLUDED."updated_at"', stmts[1].sql)
    assert.are.same({ "c1", "ann@example.com", "Ann", "2026-01-01T00:00:00.000Z" },
      stmts[1].params)
  end)

  it("customer_profile changes only the columns an event names", function()
    local stmts = app.projection("customer_profile").project{
      { type = "CustomerAddressChanged", aggregate_id = "c1",
        data = { newAddress = "1 Main St", previousAddress = testing.null } } }
    assert.matches('DO UPDATE SET "address" = EXCLUDED."address", '
      .. '"updated_at" = EXCLUDED."updated_at"$', stmts[1].sql)
    assert.are.same({ "c1", "1 Main St", "2026-01-01T00:00:00.000Z" }, stmts[1].params)
  end)

  it("host_users deletes a user by its two-column key", function()
    local stmts = app.projection("host_users").project{
      { type = "UserRemovedFromHost", aggregate_type = "host", aggregate_id = "h1",
        data = { userId = "u1" } } }
    assert.are.same({ { sql = 'DELETE FROM "host_users" WHERE "host_id" = $1 AND "user_id" = $2',
      params = { "h1", "u1" } } }, stmts)
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
