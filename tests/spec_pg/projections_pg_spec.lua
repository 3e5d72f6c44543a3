-- The example projections against a real PostgreSQL, each spec in a
-- transaction that is rolled back. Needs EVLUA_PG_CONNINFO or a server
-- from scripts/pg start; fails (never skips) without one.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }

local function conninfo()
  local v = os.getenv("EVLUA_PG_CONNINFO")
  if v and v ~= "" then return v end
  local f = io.open((os.getenv("EVLUA_RUN_DIR") or ".run") .. "/pg/conninfo")
  assert(f, "no PostgreSQL: set EVLUA_PG_CONNINFO or run scripts/pg start")
  v = f:read("l")
  f:close()
  return v
end

local function ev(type_, id, data, seq)
  return { type = type_, aggregate_type = "customer", aggregate_id = id, data = data,
           sequence = seq }
end

describe("against PostgreSQL", function()
  local db
  after_each(function() if db then db.rollback(); db = nil end end)

  it("customer_profile builds the customers row from atomic events", function()
    db = app.projection("customer_profile").against_postgres(conninfo())
    db.apply{
      ev("CustomerRegistered", "c1", { name = "Ann", email = "ann@example.com" }, 1),
      ev("CustomerNameChanged", "c1", { newName = "Ann Lee", previousName = "Ann" }, 2),
      ev("CustomerAddressChanged", "c1", { newAddress = "1 Main St", previousAddress = testing.null }, 3),
    }
    local rows = db.query("SELECT id, name, email, address FROM customers")
    assert.are.same({ { id = "c1", name = "Ann Lee", email = "ann@example.com",
                        address = "1 Main St" } }, rows)
  end)

  it("host_users adds, changes and removes users (evlua.upsert, evlua.delete)", function()
    db = app.projection("host_users").against_postgres(conninfo())
    local function hev(type_, data, seq)
      return { type = type_, aggregate_type = "host", aggregate_id = "h1", data = data,
               sequence = seq }
    end
    db.apply{
      hev("HostCreated", { name = "Harbour" }, 1),
      hev("UserAddedToHost", { userId = "u1", email = "a@x.io", role = "admin" }, 2),
      hev("UserAddedToHost", { userId = "u2", email = "b@x.io", role = "member" }, 3),
      hev("UserAddedToHost", { userId = "u1", email = "a@y.io", role = "owner" }, 4),
      hev("UserRemovedFromHost", { userId = "u2" }, 5),
    }
    assert.are.same({ { host_id = "h1", user_id = "u1", email = "a@y.io", role = "owner" } },
      db.query("SELECT host_id, user_id, email, role FROM host_users"))
    assert.are.same({ { id = "h1", name = "Harbour" } }, db.query("SELECT id, name FROM hosts"))
  end)

  it("stores hostile strings and odd Unicode verbatim", function()
    db = app.projection("customer_profile").against_postgres(conninfo())
    local name = "Robert'); DROP TABLE customers; -- 𝓡ö\u{200B}b"
    db.apply{ ev("CustomerRegistered", "c'2", { name = name, email = "r@example.com" }, 1) }
    local rows = db.query("SELECT name FROM customers WHERE id = $1", "c'2")
    assert.are.equal(name, rows[1].name)
  end)

  it("shipping_addresses is harmless to replay", function()
    db = app.projection("customer_profile").against_postgres(conninfo())
    db.apply{ ev("CustomerRegistered", "c3", { name = "C", email = "c@example.com" }, 1) }
    db.assert_replay_harmless(
      { ev("CustomerAddressChanged", "c3", { newAddress = "9 Elm" }, 2) },
      "SELECT id, address FROM customers ORDER BY id")
  end)

  it("keeps shipping_addresses' change counter exact through replays", function()
    -- `changes = changes + 1` is not idempotent: the checkpoints keep a
    -- redelivery from counting twice, and its reset clears it for a rebuild
    -- (a projection replays cannot leave alone is in toolkit_pg_spec.lua)
    db = app.projection("shipping_addresses").against_postgres(conninfo())
    db.assert_replay_harmless(
      { ev("CustomerAddressChanged", "c4", { newAddress = "9 Elm" }, 1),
        ev("CustomerAddressChanged", "c4", { newAddress = "10 Elm" }, 2) },
      "SELECT customer_id, address, changes FROM shipping_addresses")
    assert.are.same({ { customer_id = "c4", address = "10 Elm", changes = 2 } },
      db.query("SELECT customer_id, address, changes FROM shipping_addresses"))
  end)
end)
