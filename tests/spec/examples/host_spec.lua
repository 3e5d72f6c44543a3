-- The multi-tenant host aggregate (aggregates/host.lua).
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }
local host = app.aggregate("host")

local created = {
  { type = "HostCreated", data = { name = "acme" } },
  { type = "UserAddedToHost", data = { userId = "u1", email = "a@acme.io", role = "admin" } },
}

describe("host", function()
  it("adds users with a role to an existing host", function()
    host.given(created, "host-acme")
      .when{ type = "AddUser", data = { userId = "u2", email = "b@acme.io", role = "member" } }
      .expect_events{ { type = "UserAddedToHost", aggregate_id = "host-acme", sequence = 3,
                        data = { userId = "u2", role = "member" } } }
  end)

  it("rejects users for a host that does not exist, and unknown roles", function()
    host.when{ type = "AddUser", data = { userId = "u1", role = "admin" } }
      .expect_rejection("unknown host")
    host.given(created)
      .when{ type = "AddUser", data = { userId = "u3", role = "owner" } }
      .expect_rejection("role must be")
  end)

  it("never removes the last admin", function()
    host.given(created)
      .when{ type = "RemoveUser", data = { userId = "u1" } }
      .expect_rejection("last admin")
  end)
end)
