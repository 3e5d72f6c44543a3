-- A feature added long after the events were designed: send a welcome
-- kit the first time a customer gives an address. It needs nothing but
-- the existing CustomerAddressChanged events.
return {
  name = "welcome_kits",
  schema = [[
    CREATE TABLE IF NOT EXISTS welcome_kits (
      customer_id text PRIMARY KEY,
      address text NOT NULL,
      requested_at timestamptz NOT NULL
    )]],
  reset = "TRUNCATE welcome_kits",
  on = {
    CustomerAddressChanged = function(e)
      if e.data.previousAddress ~= evlua.null and e.data.previousAddress ~= nil then
        return nil -- not the first address
      end
      return { [[INSERT INTO welcome_kits (customer_id, address, requested_at)
                 VALUES ($1, $2, $3) ON CONFLICT (customer_id) DO NOTHING]],
               e.aggregate_id, e.data.newAddress, e.occurred_at }
    end,
  },
}
