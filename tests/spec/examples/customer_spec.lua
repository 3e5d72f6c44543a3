-- The customer aggregate (aggregates/customer.lua), given/when/then.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }
local customer = app.aggregate("customer")

local registered = {
  { type = "CustomerRegistered", data = { name = "Ann", email = "ann@example.com" } },
}

describe("customer", function()
  it("registers with a name and an email", function()
    customer.when{ type = "RegisterCustomer",
                   data = { name = "Ann", email = "ann@example.com" } }
      .expect_events{ { type = "CustomerRegistered",
                        data = { name = "Ann", email = "ann@example.com" } } }
      .expect_state{ registered = true, name = "Ann" }
  end)

  it("records a first address given at registration as its own fact", function()
    customer.when{ type = "RegisterCustomer",
                   data = { name = "Ann", email = "ann@example.com", address = "1 Main St" } }
      .expect_events{ { type = "CustomerRegistered" },
                      { type = "CustomerAddressChanged", sequence = 2,
                        data = { newAddress = "1 Main St", previousAddress = testing.null } } }
  end)

  it("turns one profile form into one event per changed fact", function()
    customer.given(registered)
      .when{ type = "UpdateCustomerProfile", data = { name = "Ann Lee", address = "2 Side St" } }
      .expect_events{
        { type = "CustomerNameChanged", sequence = 2,
          data = { newName = "Ann Lee", previousName = "Ann" } },
        { type = "CustomerAddressChanged", sequence = 3, data = { newAddress = "2 Side St" } },
      }
      .expect_state{ name = "Ann Lee", address = "2 Side St" }
  end)

  it("emits nothing for fields that did not really change", function()
    customer.given(registered)
      .when{ type = "UpdateCustomerProfile", data = { name = "Ann", address = "2 Side St" } }
      .expect_events{ { type = "CustomerAddressChanged" } }
  end)

  it("rejects an empty name", function()
    customer.given(registered)
      .when{ type = "UpdateCustomerProfile", data = { name = "" } }
      .expect_rejection("name must not be empty")
  end)

  it("rejects a second registration", function()
    customer.given(registered)
      .when{ type = "RegisterCustomer", data = { name = "X", email = "x@example.com" } }
      .expect_rejection("already registered")
  end)

  it("rejects an invalid email and changes a valid one", function()
    customer.given(registered)
      .when{ type = "ChangeEmail", data = { email = "not-an-email" } }
      .expect_rejection("not a valid address")
    customer.given(registered)
      .when{ type = "ChangeEmail", data = { email = "ann@new.example" } }
      .expect_events{ { type = "CustomerEmailChanged",
                        data = { newEmail = "ann@new.example", previousEmail = "ann@example.com" } } }
  end)

  it("rejects a command type it has no handler for", function()
    customer.when{ type = "DeleteEverything" }.expect_rejection()
  end)
end)
