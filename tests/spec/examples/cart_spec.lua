-- The cart aggregate (aggregates/cart.lua): complete facts in events.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }
local cart = app.aggregate("cart")

local two_mugs = {
  { type = "ItemAddedToCart", data = { productId = "mug", quantity = 2, priceAtTimeOfAdding = 1250 } },
}

describe("cart", function()
  it("records the price at the time of adding", function()
    cart.when{ type = "AddItemToCart", data = { productId = "mug", quantity = 2, price = 1250 } }
      .expect_events{ { type = "ItemAddedToCart",
        data = { productId = "mug", quantity = 2, priceAtTimeOfAdding = 1250 } } }
  end)

  it("rejects a fractional quantity and a negative price", function()
    cart.when{ type = "AddItemToCart", data = { productId = "mug", quantity = 1.5, price = 1 } }
      .expect_rejection("positive integer")
    cart.when{ type = "AddItemToCart", data = { productId = "mug", quantity = 1, price = -1 } }
      .expect_rejection("non%-negative")
  end)

  it("removes an item with the quantity that was in the cart", function()
    cart.given(two_mugs)
      .when{ type = "RemoveItemFromCart", data = { productId = "mug" } }
      .expect_events{ { type = "ItemRemovedFromCart", data = { productId = "mug", quantity = 2 } } }
      .expect_state{ items = {} }
  end)

  it("checks out with the total, once", function()
    local r = cart.given(two_mugs).when{ type = "CheckOutCart" }
    r.expect_events{ { type = "CartCheckedOut", data = { itemCount = 2, totalPrice = 2500 } } }
    cart.given{ two_mugs[1], { type = "CartCheckedOut", data = { itemCount = 2, totalPrice = 2500 } } }
      .when{ type = "AddItemToCart", data = { productId = "pen", quantity = 1, price = 100 } }
      .expect_rejection("already checked out")
  end)

  it("refuses to check out an empty cart", function()
    cart.when{ type = "CheckOutCart" }.expect_rejection("empty")
  end)
end)
