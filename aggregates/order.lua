-- The order process: a process manager built from an aggregate. Its state
-- is where the process stands; its react table holds its triggers, the
-- events of the other steps (stock.lua, payment.lua) turned into commands
-- to itself. Every step is a command, so every step is decided against
-- the state and refused when it does not fit.
--
--   PlaceOrder -> OrderPlaced -> (stock) ReserveStock
--     StockReserved          -> RequestPayment -> PaymentRequested -> (payment) Charge
--       PaymentAccepted      -> ConfirmOrder   -> OrderConfirmed
--       PaymentDeclined      -> CancelOrder    -> OrderCancelled -> (stock) ReleaseStock
--     StockReservationFailed -> CancelOrder    -> OrderCancelled (nothing to release)
--
-- Commands:  PlaceOrder {customer, sku, quantity, amount, card}  amount in cents
--            RequestPayment {}, ConfirmOrder {payment}, CancelOrder {reason}
-- Reacts to: stock.StockReserved, stock.StockReservationFailed,
--            payment.PaymentAccepted, payment.PaymentDeclined
local function text(v) return type(v) == "string" and v ~= "" end
local function positive(n) return math.type(n) == "integer" and n > 0 end

return {
  type = "order",

  -- status: none -> placed -> awaiting_payment -> confirmed | cancelled
  initial = function() return { status = "none" } end,

  apply = {
    OrderPlaced = function(s, e)
      local d = e.data
      s.status = "placed"
      s.customer, s.sku, s.quantity, s.amount, s.card =
        d.customer, d.sku, d.quantity, d.amount, d.card
    end,
    PaymentRequested = function(s) s.status, s.stockReserved = "awaiting_payment", true end,
    OrderConfirmed = function(s, e) s.status, s.payment = "confirmed", e.data.payment end,
    OrderCancelled = function(s, e) s.status, s.reason = "cancelled", e.data.reason end,
  },

  handle = {
    PlaceOrder = function(s, cmd, ctx)
      local d = cmd.data
      if s.status ~= "none" then return ctx.reject("order already placed") end
      if not text(d.customer) then return ctx.reject("customer must be a non-empty string") end
      if not text(d.sku) then return ctx.reject("sku must be a non-empty string") end
      if not positive(d.quantity) then return ctx.reject("quantity must be a positive integer") end
      if not positive(d.amount) then
        return ctx.reject("amount must be a positive integer (cents)")
      end
      if not text(d.card) then return ctx.reject("card must be a non-empty string") end
      return { { type = "OrderPlaced", data = { customer = d.customer, sku = d.sku,
        quantity = d.quantity, amount = d.amount, card = d.card } } }
    end,

    -- stock is reserved: charge the card
    RequestPayment = function(s, cmd, ctx)
      if s.status ~= "placed" then return ctx.reject("order is " .. s.status) end
      return { { type = "PaymentRequested", data = { amount = s.amount, card = s.card } } }
    end,

    ConfirmOrder = function(s, cmd, ctx)
      if s.status ~= "awaiting_payment" then return ctx.reject("order is " .. s.status) end
      return { { type = "OrderConfirmed", data = { payment = cmd.data.payment } } }
    end,

    -- stockReserved tells stock whether there is anything to release
    CancelOrder = function(s, cmd, ctx)
      if s.status == "none" or s.status == "confirmed" or s.status == "cancelled" then
        return ctx.reject("order is " .. s.status)
      end
      return { { type = "OrderCancelled", data = { reason = cmd.data.reason or "cancelled",
        sku = s.sku, stockReserved = s.stockReserved == true } } }
    end,
  },

  react = {
    ["stock.StockReserved"] = function(e)
      return { type = "RequestPayment", aggregate_id = e.data.order }
    end,
    ["stock.StockReservationFailed"] = function(e)
      return { type = "CancelOrder", aggregate_id = e.data.order, data = {
        reason = string.format("out of stock: %d wanted, %d available",
          e.data.quantity, e.data.available) } }
    end,
    ["payment.PaymentAccepted"] = function(e)
      return { type = "ConfirmOrder", aggregate_id = e.data.order,
               data = { payment = e.aggregate_id } }
    end,
    ["payment.PaymentDeclined"] = function(e)
      return { type = "CancelOrder", aggregate_id = e.data.order,
               data = { reason = "payment declined: " .. e.data.reason } }
    end,
  },
}
