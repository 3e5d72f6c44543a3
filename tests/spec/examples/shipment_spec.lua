-- The welcome kit (aggregates/shipment.lua): a policy reacting to the
-- customer's first address.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }
local shipment = app.aggregate("shipment")

local function address_changed(previous)
  return { type = "CustomerAddressChanged", aggregate_id = "c1",
           data = { newAddress = "1 Main St", previousAddress = previous } }
end

describe("shipment", function()
  it("ships a welcome kit for a customer's first address", function()
    shipment.reacting_to(address_changed(testing.null))
      .expect_commands{ { type = "ShipWelcomeKit", aggregate_id = "kit-c1",
                          data = { customer = "c1", address = "1 Main St" } } }
  end)

  it("sends nothing when the customer moves", function()
    shipment.reacting_to(address_changed("0 Old Rd")).expect_no_commands()
  end)

  it("ships once per customer", function()
    local shipped = { { type = "WelcomeKitShipped", data = { customer = "c1", address = "1 Main St" } } }
    shipment.when{ type = "ShipWelcomeKit", data = { customer = "c1", address = "1 Main St" } }
      .expect_events(shipped)
    shipment.given(shipped)
      .when{ type = "ShipWelcomeKit", data = { customer = "c1", address = "2 Hill St" } }
      .expect_rejection("already shipped")
  end)

  it("follows a registration with an address to the kit", function()
    app.cascade{ aggregate_type = "customer", aggregate_id = "c1", type = "RegisterCustomer",
                 data = { name = "Ann", email = "ann@example.com", address = "1 Main St" } }
      .expect_events{
        { type = "CustomerRegistered" },
        { type = "CustomerAddressChanged" },
        { type = "WelcomeKitShipped", aggregate_type = "shipment", aggregate_id = "kit-c1",
          data = { customer = "c1", address = "1 Main St" } },
      }
  end)
end)
