-- The customers read model: one row per customer. Each handler names the
-- columns of the customer's row that its event changes (evlua.upsert):
-- the projector sends every such row of a batch as one multi-row statement.
local function customer(e, columns)
  columns.id = e.aggregate_id
  columns.updated_at = e.occurred_at
  return evlua.upsert("customers", columns, { key = "id" })
end

return {
  name = "customer_profile",
  schema = [[
    CREATE TABLE IF NOT EXISTS customers (
      id text PRIMARY KEY,
      name text,
      email text,
      address text,
      updated_at timestamptz NOT NULL
    )]],
  reset = "TRUNCATE customers",
  on = {
    CustomerRegistered = function(e)
      return customer(e, { name = e.data.name, email = e.data.email })
    end,
    CustomerNameChanged = function(e)
      return customer(e, { name = e.data.newName })
    end,
    CustomerAddressChanged = function(e)
      return customer(e, { address = e.data.newAddress })
    end,
    CustomerEmailChanged = function(e)
      return customer(e, { email = e.data.newEmail })
    end,
  },
}
