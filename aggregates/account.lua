-- The bank account: money moves only through events that carry the
-- complete fact (the amount and the balance it left), and a withdrawal
-- the balance cannot cover is a rejection, not an event.
--
-- Commands: OpenAccount {owner}
--           Deposit {amount, memo?}     amount: a positive integer (cents)
--           Withdraw {amount, memo?}
local function amount_ok(a)
  return math.type(a) == "integer" and a > 0
end

local function memo_of(d)
  if type(d.memo) == "string" and d.memo ~= "" then return d.memo end
  return nil -- optional: absent from the event when not given
end

return {
  type = "account",

  initial = function() return { open = false, balance = 0 } end,

  apply = {
    AccountOpened = function(s, e)
      s.open, s.owner = true, e.data.owner
    end,
    MoneyDeposited = function(s, e) s.balance = s.balance + e.data.amount end,
    MoneyWithdrawn = function(s, e) s.balance = s.balance - e.data.amount end,
  },

  handle = {
    OpenAccount = function(s, cmd, ctx)
      if s.open then return ctx.reject("account already open") end
      local owner = cmd.data.owner
      if type(owner) ~= "string" or owner == "" then
        return ctx.reject("owner must be a non-empty string")
      end
      return { { type = "AccountOpened", data = { owner = owner } } }
    end,

    Deposit = function(s, cmd, ctx)
      if not s.open then return ctx.reject("unknown account") end
      local d = cmd.data
      if not amount_ok(d.amount) then
        return ctx.reject("amount must be a positive integer (cents)")
      end
      return { { type = "MoneyDeposited", data = {
        amount = d.amount, memo = memo_of(d), balanceAfter = s.balance + d.amount } } }
    end,

    Withdraw = function(s, cmd, ctx)
      if not s.open then return ctx.reject("unknown account") end
      local d = cmd.data
      if not amount_ok(d.amount) then
        return ctx.reject("amount must be a positive integer (cents)")
      end
      if d.amount > s.balance then
        return ctx.reject("insufficient funds")
      end
      return { { type = "MoneyWithdrawn", data = {
        amount = d.amount, memo = memo_of(d), balanceAfter = s.balance - d.amount } } }
    end,
  },
}
