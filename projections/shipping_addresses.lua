-- Shipping only cares about addresses: it subscribes to one event type
-- and never parses the others (they are skipped by header).
return {
  name = "shipping_addresses",
  schema = [[
    CREATE TABLE IF NOT EXISTS shipping_addresses (
      customer_id text PRIMARY KEY,
      address text NOT NULL,
      changes integer NOT NULL DEFAULT 1
    )]],
  reset = "TRUNCATE shipping_addresses",
  on = {
    CustomerAddressChanged = function(e)
      return { [[INSERT INTO shipping_addresses (customer_id, address)
                 VALUES ($1, $2)
                 ON CONFLICT (customer_id) DO UPDATE
                 SET address = EXCLUDED.address,
                     changes = shipping_addresses.changes + 1]],
               e.aggregate_id, e.data.newAddress }
    end,
  },
}
