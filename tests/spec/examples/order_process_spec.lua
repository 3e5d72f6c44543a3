-- The order process (aggregates/order.lua, stock.lua, payment.lua): a
-- process manager built from aggregates. Each step on its own, then the
-- whole chain in memory with app.cascade, both ways.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }
local order, stock, payment =
  app.aggregate("order"), app.aggregate("stock"), app.aggregate("payment")

local placed = { { type = "OrderPlaced", data = { customer = "c1", sku = "mug",
  quantity = 2, amount = 2500, card = "tok-1" } } }
local five_mugs = { type = "StockReceived", aggregate_id = "mug", data = { quantity = 5 } }

local function place(amount, quantity)
  return { aggregate_type = "order", aggregate_id = "o1", type = "PlaceOrder",
           data = { customer = "c1", sku = "mug", quantity = quantity or 2,
                    amount = amount, card = "tok-1" } }
end

describe("the order process, step by step", function()
  it("places an order and refuses a bad one", function()
    order.when(place(2500)).expect_events(placed).expect_state{ status = "placed" }
    order.when{ type = "PlaceOrder", data = { customer = "c1", sku = "mug", quantity = 0,
      amount = 1, card = "t" } }.expect_rejection("quantity must be a positive integer")
  end)

  it("stock reserves for a placed order, or says there is not enough", function()
    stock.reacting_to{ type = "OrderPlaced", aggregate_id = "o1", data = placed[1].data }
      .expect_commands{ { type = "ReserveStock", aggregate_id = "mug",
                          data = { order = "o1", quantity = 2 } } }
    stock.given{ { type = "StockReceived", data = { quantity = 5 } } }
      .when{ type = "ReserveStock", data = { order = "o1", quantity = 2 } }
      .expect_events{ { type = "StockReserved", data = { order = "o1", availableAfter = 3 } } }
    stock.given{ { type = "StockReceived", data = { quantity = 1 } } }
      .when{ type = "ReserveStock", data = { order = "o1", quantity = 2 } }
      .expect_events{ { type = "StockReservationFailed", data = { available = 1 } } }
  end)

  it("the order asks for payment once stock is reserved", function()
    order.reacting_to{ type = "StockReserved", aggregate_id = "mug",
                       data = { order = "o1", quantity = 2 } }
      .expect_commands{ { type = "RequestPayment", aggregate_id = "o1" } }
    order.given(placed).when{ type = "RequestPayment" }
      .expect_events{ { type = "PaymentRequested", data = { amount = 2500, card = "tok-1" } } }
  end)

  it("payment charges, and declines over the limit", function()
    payment.reacting_to{ type = "PaymentRequested", aggregate_id = "o1",
                         data = { amount = 2500, card = "tok-1" } }
      .expect_commands{ { type = "Charge", aggregate_id = "pay-o1",
                          data = { order = "o1", amount = 2500, card = "tok-1" } } }
    payment.when{ type = "Charge", data = { order = "o1", amount = 100000, card = "t" } }
      .expect_events{ { type = "PaymentAccepted" } }
    payment.when{ type = "Charge", data = { order = "o1", amount = 100001, card = "t" } }
      .expect_events{ { type = "PaymentDeclined", data = {
        reason = "amount 100001 is over the card limit 100000" } } }
  end)

  it("a cancelled order releases only stock it had reserved", function()
    stock.reacting_to{ type = "OrderCancelled", aggregate_id = "o1",
                       data = { sku = "mug", stockReserved = true, reason = "x" } }
      .expect_commands{ { type = "ReleaseStock", aggregate_id = "mug", data = { order = "o1" } } }
    stock.reacting_to{ type = "OrderCancelled", aggregate_id = "o1",
                       data = { sku = "mug", stockReserved = false, reason = "x" } }
      .expect_no_commands()
  end)

  it("a step that no longer fits is refused", function()
    order.given{ placed[1], { type = "OrderCancelled", data = { reason = "x" } } }
      .when{ type = "ConfirmOrder", data = { payment = "pay-o1" } }
      .expect_rejection("order is cancelled")
  end)
end)

describe("the order process, the whole chain", function()
  it("placed -> stock reserved -> paid -> confirmed", function()
    local c = app.cascade(place(2500), { given = { five_mugs } })
      .expect_commands{
        { type = "PlaceOrder", verdict = "accepted" },
        { type = "ReserveStock", aggregate_id = "mug", verdict = "accepted" },
        { type = "RequestPayment", aggregate_id = "o1", verdict = "accepted" },
        { type = "Charge", aggregate_id = "pay-o1", verdict = "accepted" },
        { type = "ConfirmOrder", aggregate_id = "o1", verdict = "accepted" },
      }
      .expect_events{
        { type = "OrderPlaced" }, { type = "StockReserved" }, { type = "PaymentRequested" },
        { type = "PaymentAccepted" }, { type = "OrderConfirmed", data = { payment = "pay-o1" } },
      }
      .expect_state("order", "o1", { status = "confirmed" })
      .expect_state("stock", "mug", { onHand = 5, reservedTotal = 2 })
    for _, e in ipairs(c.events) do
      assert.are.equal(c.commands[1].command.id, e.correlation_id)
    end
  end)

  it("placed -> stock reserved -> declined -> cancelled, stock released", function()
    app.cascade(place(250000), { given = { five_mugs } })
      .expect_events{
        { type = "OrderPlaced" }, { type = "StockReserved" }, { type = "PaymentRequested" },
        { type = "PaymentDeclined", aggregate_id = "pay-o1" },
        { type = "OrderCancelled", data = { stockReserved = true,
          reason = "payment declined: amount 250000 is over the card limit 100000" } },
        { type = "StockReleased", aggregate_id = "mug", data = { order = "o1", quantity = 2 } },
      }
      .expect_state("order", "o1", { status = "cancelled" })
      .expect_state("stock", "mug", { onHand = 5, reservedTotal = 0 })
  end)

  it("out of stock -> cancelled, nothing to release", function()
    app.cascade(place(2500, 9), { given = { five_mugs } })
      .expect_events{
        { type = "OrderPlaced" },
        { type = "StockReservationFailed", data = { quantity = 9, available = 5 } },
        { type = "OrderCancelled", data = { stockReserved = false,
          reason = "out of stock: 9 wanted, 5 available" } },
      }
      .expect_state("order", "o1", { status = "cancelled" })
  end)
end)
