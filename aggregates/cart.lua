-- The shopping cart: events carry complete facts (the price at the time
-- of adding), so no consumer has to look anything up.
--
-- Commands: AddItemToCart {productId, quantity, price}
--           RemoveItemFromCart {productId}
--           CheckOutCart {}
return {
  type = "cart",

  initial = function() return { items = {}, checkedOut = false } end,

  apply = {
    ItemAddedToCart = function(s, e)
      local item = s.items[e.data.productId]
      if item then
        item.quantity = item.quantity + e.data.quantity
      else
        s.items[e.data.productId] = { quantity = e.data.quantity,
                                      price = e.data.priceAtTimeOfAdding }
      end
    end,
    ItemRemovedFromCart = function(s, e) s.items[e.data.productId] = nil end,
    CartCheckedOut = function(s) s.checkedOut = true end,
  },

  handle = {
    AddItemToCart = function(s, cmd, ctx)
      local d = cmd.data
      if s.checkedOut then return ctx.reject("cart is already checked out") end
      if type(d.productId) ~= "string" or d.productId == "" then
        return ctx.reject("productId must be a non-empty string")
      end
      if math.type(d.quantity) ~= "integer" or d.quantity < 1 then
        return ctx.reject("quantity must be a positive integer")
      end
      if math.type(d.price) ~= "integer" or d.price < 0 then
        return ctx.reject("price must be a non-negative integer (cents)")
      end
      return { { type = "ItemAddedToCart", data = {
        productId = d.productId, quantity = d.quantity,
        priceAtTimeOfAdding = d.price } } }
    end,

    RemoveItemFromCart = function(s, cmd, ctx)
      if s.checkedOut then return ctx.reject("cart is already checked out") end
      local item = s.items[cmd.data.productId]
      if not item then return ctx.reject("item is not in the cart") end
      return { { type = "ItemRemovedFromCart", data = {
        productId = cmd.data.productId, quantity = item.quantity } } }
    end,

    CheckOutCart = function(s, cmd, ctx)
      if s.checkedOut then return ctx.reject("cart is already checked out") end
      local total, count = 0, 0
      for _, item in pairs(s.items) do
        total = total + item.quantity * item.price
        count = count + item.quantity
      end
      if count == 0 then return ctx.reject("cart is empty") end
      return { { type = "CartCheckedOut",
                 data = { itemCount = count, totalPrice = total } } }
    end,
  },
}
