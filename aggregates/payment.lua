-- A payment (aggregate id = "pay-" .. the order id): one charge of a card,
-- accepted or declined. A step of the order process (order.lua).
--
-- Commands:  Charge {order, amount, card}   amount: a positive integer (cents)
-- Reacts to: order.PaymentRequested -> Charge
--
-- The decline rule, a stand-in for a card gateway: a charge over
-- LIMIT cents is declined. A decline is an event (PaymentDeclined) so the
-- order process can react to it; a rejection would reach only the sender.
local LIMIT = 100000 -- 1,000.00

return {
  type = "payment",

  initial = function() return { status = "new" } end,

  apply = {
    PaymentAccepted = function(s, e) s.status, s.amount = "accepted", e.data.amount end,
    PaymentDeclined = function(s, e) s.status, s.amount = "declined", e.data.amount end,
  },

  handle = {
    Charge = function(s, cmd, ctx)
      local d = cmd.data
      if s.status ~= "new" then return ctx.reject("already charged (" .. s.status .. ")") end
      if math.type(d.amount) ~= "integer" or d.amount < 1 then
        return ctx.reject("amount must be a positive integer (cents)")
      end
      if type(d.card) ~= "string" or d.card == "" then
        return ctx.reject("card must be a non-empty string")
      end
      if d.amount > LIMIT then
        return { { type = "PaymentDeclined", data = { order = d.order, amount = d.amount,
          reason = string.format("amount %d is over the card limit %d", d.amount, LIMIT) } } }
      end
      return { { type = "PaymentAccepted", data = { order = d.order, amount = d.amount } } }
    end,
  },

  react = {
    ["order.PaymentRequested"] = function(e)
      return { type = "Charge", aggregate_id = "pay-" .. e.aggregate_id,
               data = { order = e.aggregate_id, amount = e.data.amount, card = e.data.card } }
    end,
  },
}
