-- The customers read model: one row per customer.
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
      return { [[INSERT INTO customers (id, name, email, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE
                 SET name = EXCLUDED.name, email = EXCLUDED.email,
                     updated_at = EXCLUDED.updated_at]],
               e.aggregate_id, e.data.name, e.data.email, e.occurred_at }
    end,
    CustomerNameChanged = function(e)
      return { [[UPDATE customers SET name = $2, updated_at = $3 WHERE id = $1]],
               e.aggregate_id, e.data.newName, e.occurred_at }
    end,
    CustomerAddressChanged = function(e)
      return { [[UPDATE customers SET address = $2, updated_at = $3 WHERE id = $1]],
               e.aggregate_id, e.data.newAddress, e.occurred_at }
    end,
    CustomerEmailChanged = function(e)
      return { [[UPDATE customers SET email = $2, updated_at = $3 WHERE id = $1]],
               e.aggregate_id, e.data.newEmail, e.occurred_at }
    end,
  },
}
