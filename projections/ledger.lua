-- The ledger: one row per money movement, written with a plain INSERT (no
-- key on the event, no ON CONFLICT). Applying an event twice would give
-- two rows; evlua's per-aggregate checkpoints, committed in the same
-- transaction as these rows, are what keep it at exactly one, even when
-- the process is killed mid-batch (scripts/demo shows it).
local function entry(kind)
  return function(e)
    return { [[INSERT INTO ledger (event_id, account_id, sequence, kind, amount,
                                   balance_after, memo, recorded_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)]],
             e.id, e.aggregate_id, e.sequence, kind, e.data.amount,
             e.data.balanceAfter, e.data.memo or evlua.null, e.occurred_at }
  end
end

return {
  name = "ledger",
  schema = [[
    CREATE TABLE IF NOT EXISTS ledger (
      entry bigserial PRIMARY KEY,
      event_id text NOT NULL,
      account_id text NOT NULL,
      sequence bigint NOT NULL,
      kind text NOT NULL,
      amount bigint NOT NULL,
      balance_after bigint NOT NULL,
      memo text,
      recorded_at timestamptz NOT NULL
    )]],
  reset = "TRUNCATE ledger",
  on = {
    MoneyDeposited = entry("deposit"),
    MoneyWithdrawn = entry("withdrawal"),
  },
}
