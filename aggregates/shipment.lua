-- Welcome kits: the first time a customer gives an address, ship a kit.
-- A policy: the reaction only turns a fact of another aggregate into a
-- command; this aggregate decides (one kit per customer).
--
-- Commands:  ShipWelcomeKit {customer, address}
-- Reacts to: customer.CustomerAddressChanged (the first address only)
return {
  type = "shipment",

  initial = function() return { shipped = false } end,

  apply = {
    WelcomeKitShipped = function(s, e)
      s.shipped = true
      s.customer, s.address = e.data.customer, e.data.address
    end,
  },

  handle = {
    ShipWelcomeKit = function(s, cmd, ctx)
      local d = cmd.data
      if s.shipped then return ctx.reject("the welcome kit is already shipped") end
      if type(d.customer) ~= "string" or d.customer == "" then
        return ctx.reject("customer must be a non-empty string")
      end
      if type(d.address) ~= "string" or d.address == "" then
        return ctx.reject("address must be a non-empty string")
      end
      return { { type = "WelcomeKitShipped",
                 data = { customer = d.customer, address = d.address } } }
    end,
  },

  -- Events of other aggregates -> commands for this one. The command's id
  -- is derived from the event's, so a replayed event is a duplicate here.
  react = {
    ["customer.CustomerAddressChanged"] = function(e)
      local previous = e.data.previousAddress
      if previous ~= nil and previous ~= evlua.null then
        return nil -- not the first address
      end
      return { type = "ShipWelcomeKit", aggregate_id = "kit-" .. e.aggregate_id,
               data = { customer = e.aggregate_id, address = e.data.newAddress } }
    end,
  },
}
