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
      return { "INSERT INTO hosts (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
               e.aggregate_id, e.data.name }
    end,
    UserAddedToHost = function(e)
      return { [[INSERT INTO host_users (host_id, user_id, email, role)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (host_id, user_id) DO UPDATE
                 SET email = EXCLUDED.email, role = EXCLUDED.role]],
               e.aggregate_id, e.data.userId, e.data.email, e.data.role }
    end,
    UserRemovedFromHost = function(e)
      return { "DELETE FROM host_users WHERE host_id = $1 AND user_id = $2",
               e.aggregate_id, e.data.userId }
    end,
  },
}
