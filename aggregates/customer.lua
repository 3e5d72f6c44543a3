-- The customer aggregate: one profile form (a user gesture) becomes
-- atomic events, one per fact that really changed.
--
-- Commands: RegisterCustomer {name, email, address?}
--           UpdateCustomerProfile {name?, address?}
--           ChangeEmail {email}
local function blank(s) return s == nil or s == evlua.null or s == "" end

local function valid_email(s)
  return type(s) == "string" and s:match("^[^@%s]+@[^@%s]+%.[^@%s]+$") ~= nil
end

return {
  type = "customer",

  initial = function() return { registered = false } end,

  apply = {
    CustomerRegistered = function(s, e)
      s.registered = true
      s.name, s.email = e.data.name, e.data.email
    end,
    CustomerNameChanged = function(s, e) s.name = e.data.newName end,
    CustomerAddressChanged = function(s, e) s.address = e.data.newAddress end,
    CustomerEmailChanged = function(s, e) s.email = e.data.newEmail end,
  },

  handle = {
    RegisterCustomer = function(s, cmd, ctx)
      local d = cmd.data
      if s.registered then return ctx.reject("customer already registered") end
      if blank(d.name) then return ctx.reject("name must not be empty") end
      if not valid_email(d.email) then
        return ctx.reject("email is not a valid address")
      end
      local events = {
        { type = "CustomerRegistered", data = { name = d.name, email = d.email } },
      }
      if not blank(d.address) then
        events[#events + 1] = { type = "CustomerAddressChanged",
          data = { newAddress = d.address, previousAddress = evlua.null } }
      end
      return events
    end,

    -- One form, two facts: only the fields that really changed become
    -- events, so consumers of addresses never see name changes.
    UpdateCustomerProfile = function(s, cmd, ctx)
      local d = cmd.data
      if not s.registered then return ctx.reject("unknown customer") end
      if d.name ~= nil and blank(d.name) then
        return ctx.reject("name must not be empty")
      end
      local events = {}
      if d.name ~= nil and d.name ~= s.name then
        events[#events + 1] = { type = "CustomerNameChanged",
          data = { newName = d.name, previousName = s.name } }
      end
      if d.address ~= nil and not blank(d.address) and d.address ~= s.address then
        events[#events + 1] = { type = "CustomerAddressChanged",
          data = { newAddress = d.address,
                   previousAddress = s.address or evlua.null } }
      end
      return events
    end,

    ChangeEmail = function(s, cmd, ctx)
      if not s.registered then return ctx.reject("unknown customer") end
      if not valid_email(cmd.data.email) then
        return ctx.reject("email is not a valid address")
      end
      if cmd.data.email == s.email then return {} end
      return { { type = "CustomerEmailChanged",
                 data = { newEmail = cmd.data.email, previousEmail = s.email } } }
    end,
  },
}
