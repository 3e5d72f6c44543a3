-- Stock of one product (aggregate id = the sku): a quantity on hand and
-- the reservations of orders. A step of the order process (order.lua):
-- it reserves for a placed order and releases for a cancelled one.
--
-- Commands:  ReceiveStock {quantity}
--            ReserveStock {order, quantity}
--            ReleaseStock {order}
-- Reacts to: order.OrderPlaced    -> ReserveStock
--            order.OrderCancelled -> ReleaseStock (when stock was reserved)
--
-- Not enough stock is an event (StockReservationFailed), not a rejection:
-- the order process must hear about it, and a rejection is only an answer
-- to the sender, never an event anyone can react to.
local function positive(n) return math.type(n) == "integer" and n > 0 end

local function available(s) return s.onHand - s.reservedTotal end

return {
  type = "stock",

  initial = function() return { onHand = 0, reservedTotal = 0, reserved = {} } end,

  apply = {
    StockReceived = function(s, e) s.onHand = s.onHand + e.data.quantity end,
    StockReserved = function(s, e)
      s.reserved[e.data.order] = e.data.quantity
      s.reservedTotal = s.reservedTotal + e.data.quantity
    end,
    StockReleased = function(s, e)
      s.reserved[e.data.order] = nil
      s.reservedTotal = s.reservedTotal - e.data.quantity
    end,
  },
  neutral = { "StockReservationFailed" },

  handle = {
    ReceiveStock = function(s, cmd, ctx)
      if not positive(cmd.data.quantity) then
        return ctx.reject("quantity must be a positive integer")
      end
      return { { type = "StockReceived", data = { quantity = cmd.data.quantity } } }
    end,

    ReserveStock = function(s, cmd, ctx)
      local d = cmd.data
      if type(d.order) ~= "string" or d.order == "" then
        return ctx.reject("order must be a non-empty string")
      end
      if not positive(d.quantity) then
        return ctx.reject("quantity must be a positive integer")
      end
      if s.reserved[d.order] then return {} end -- already reserved for it
      if d.quantity > available(s) then
        return { { type = "StockReservationFailed", data = {
          order = d.order, quantity = d.quantity, available = available(s) } } }
      end
      return { { type = "StockReserved", data = {
        order = d.order, quantity = d.quantity, availableAfter = available(s) - d.quantity } } }
    end,

    ReleaseStock = function(s, cmd, ctx)
      local quantity = s.reserved[cmd.data.order]
      if not quantity then return {} end -- nothing reserved: nothing to do
      return { { type = "StockReleased",
                 data = { order = cmd.data.order, quantity = quantity } } }
    end,
  },

  react = {
    ["order.OrderPlaced"] = function(e)
      return { type = "ReserveStock", aggregate_id = e.data.sku,
               data = { order = e.aggregate_id, quantity = e.data.quantity } }
    end,
    ["order.OrderCancelled"] = function(e)
      if not e.data.stockReserved then return nil end
      return { type = "ReleaseStock", aggregate_id = e.data.sku,
               data = { order = e.aggregate_id } }
    end,
  },
}
