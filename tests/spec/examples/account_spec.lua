-- The bank account aggregate (aggregates/account.lua): money moves only
-- through complete facts, and an overdraft is a rejection.
local testing = require("evlua.testing")
local app = testing.load{ root = os.getenv("EVLUA_SOURCE_DIR") or "." }
local account = app.aggregate("account")

local opened = { { type = "AccountOpened", data = { owner = "Ann" } } }
local with_500 = {
  opened[1],
  { type = "MoneyDeposited", data = { amount = 500, balanceAfter = 500 } },
}

describe("account", function()
  it("opens once, for a named owner", function()
    account.when{ type = "OpenAccount", data = { owner = "Ann" } }
      .expect_events{ { type = "AccountOpened", data = { owner = "Ann" } } }
      .expect_state{ open = true, balance = 0, owner = "Ann" }
    account.given(opened).when{ type = "OpenAccount", data = { owner = "Ann" } }
      .expect_rejection("already open")
    account.when{ type = "OpenAccount", data = {} }.expect_rejection("owner")
  end)

  it("deposits with the balance it leaves, memo optional", function()
    account.given(opened)
      .when{ type = "Deposit", data = { amount = 500, memo = "salary" } }
      .expect_events{ { type = "MoneyDeposited", sequence = 2,
                        data = { amount = 500, balanceAfter = 500, memo = "salary" } } }
      .expect_state{ balance = 500 }
    local r = account.given(opened).when{ type = "Deposit", data = { amount = 7 } }
    r.expect_events{ { type = "MoneyDeposited", data = { amount = 7 } } }
    assert.is_nil(r.events[1].data.memo)
  end)

  it("withdraws what the balance covers", function()
    account.given(with_500)
      .when{ type = "Withdraw", data = { amount = 200, memo = "rent" } }
      .expect_events{ { type = "MoneyWithdrawn", sequence = 3,
                        data = { amount = 200, balanceAfter = 300 } } }
      .expect_state{ balance = 300 }
    account.given(with_500).when{ type = "Withdraw", data = { amount = 500 } }
      .expect_state{ balance = 0 }
  end)

  it("rejects a withdrawal beyond the balance", function()
    account.given(with_500).when{ type = "Withdraw", data = { amount = 501 } }
      .expect_rejection("insufficient funds")
  end)

  it("rejects amounts that are not positive integer cents", function()
    for _, amount in ipairs{ 0, -5, 1.5 } do
      account.given(opened).when{ type = "Deposit", data = { amount = amount } }
        .expect_rejection("positive integer")
      account.given(with_500).when{ type = "Withdraw", data = { amount = amount } }
        .expect_rejection("positive integer")
    end
    account.given(opened).when{ type = "Deposit", data = { amount = "5" } }
      .expect_rejection("positive integer")
  end)

  it("knows no account it has not opened", function()
    account.when{ type = "Deposit", data = { amount = 5 } }.expect_rejection("unknown account")
    account.when{ type = "Withdraw", data = { amount = 5 } }.expect_rejection("unknown account")
  end)
end)
