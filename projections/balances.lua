-- Account balances: one row per account, moved by each deposit and
-- withdrawal (an increment, not idempotent either: checkpoints keep it
-- exact).
return {
  name = "balances",
  schema = [[
    CREATE TABLE IF NOT EXISTS balances (
      account_id text PRIMARY KEY,
      owner text NOT NULL,
      balance bigint NOT NULL DEFAULT 0,
      movements integer NOT NULL DEFAULT 0
    )]],
  reset = "TRUNCATE balances",
  on = {
    AccountOpened = function(e)
      return { "INSERT INTO balances (account_id, owner) VALUES ($1, $2)",
               e.aggregate_id, e.data.owner }
    end,
    MoneyDeposited = function(e)
      return { [[UPDATE balances SET balance = balance + $2,
                   movements = movements + 1 WHERE account_id = $1]],
               e.aggregate_id, e.data.amount }
    end,
    MoneyWithdrawn = function(e)
      return { [[UPDATE balances SET balance = balance - $2,
                   movements = movements + 1 WHERE account_id = $1]],
               e.aggregate_id, e.data.amount }
    end,
  },
}
