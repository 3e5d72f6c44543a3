-- Users per host (multi-tenant): rows keyed by (host_id, user_id).
return {
  name = "host_users",
  -- several DDL statements in one string are fine: schema runs as a script
  schema = [[
    CREATE TABLE IF NOT EXISTS hosts (id text PRIMARY KEY, name text NOT NULL);
    CREATE TABLE IF NOT EXISTS host_users (
      host_id text NOT NULL, user_id text NOT NULL,
      email text, role text NOT NULL,
      PRIMARY KEY (host_id, user_id));
  ]],
  reset = "TRUNCATE hosts, host_users",
  on = {
    HostCreated = function(e)
      return evlua.upsert("hosts", { id = e.aggregate_id, name = e.data.name }, { key = "id" })
    end,
    UserAddedToHost = function(e)
      return evlua.upsert("host_users",
        { host_id = e.aggregate_id, user_id = e.data.userId, email = e.data.email, role = e.data.role },
        { key = { "host_id", "user_id" } })
    end,
    UserRemovedFromHost = function(e)
      return evlua.delete("host_users", { host_id = e.aggregate_id, user_id = e.data.userId })
    end,
  },
}
