-- An example production config: TLS to Kafka with SASL/SCRAM, TLS to
-- PostgreSQL with certificate verification. Secrets come from the
-- environment (systemd's EnvironmentFile), never from this file, and are
-- never logged. Every key is documented in docs/config.md.
local function need(name)
  local v = os.getenv(name)
  if not v or v == "" then error(name .. " must be set in the environment", 0) end
  return v
end

return {
  aggregates  = "/etc/evlua/aggregates",
  projections = "/etc/evlua/projections",
  lib         = "/etc/evlua/lib",

  -- passed through to librdkafka as they are
  kafka = {
    ["bootstrap.servers"]        = "kafka-1.internal:9093,kafka-2.internal:9093,kafka-3.internal:9093",
    ["security.protocol"]        = "SASL_SSL",
    ["sasl.mechanisms"]          = "SCRAM-SHA-512",
    ["sasl.username"]            = "evlua",
    ["sasl.password"]            = need("KAFKA_SASL_PASSWORD"),
    ["ssl.ca.location"]          = "/etc/evlua/tls/kafka-ca.pem",
    ["ssl.endpoint.identification.algorithm"] = "https",
    ["client.id"]                = "evlua",
  },

  -- libpq conninfo; EVLUA_PG_CONNINFO overrides it
  postgres = "host=pg.internal port=5432 dbname=app user=evlua "
          .. "sslmode=verify-full sslrootcert=/etc/evlua/tls/pg-ca.pem "
          -- quoted, with ' and \ escaped: a password may hold spaces
          .. "password='" .. (need("PG_PASSWORD"):gsub("[\\']", "\\%0")) .. "'",

  limits = { memory_mb = 128, instructions = 20000000, time_ms = 2000 },

  commands = {
    -- one stable id per instance (e.g. from the host name)
    transactional_id = "evlua.commands." .. (os.getenv("HOSTNAME") or "0"),
    batch_size = 1000, linger_ms = 0,   -- 0: batches close when nothing more is queued
    create_topics = false,   -- topics are managed; evlua checks them at start
  },

  projection = {
    isolation = "aggregate", on_error = "park", batch_size = 500,
    threads = 2,   -- projectors per projection (at most the topics' partitions)
    each = { welcome_kits = { on_error = "halt" } },
  },

  metrics = { listen = "0.0.0.0:9464" },
  log = { level = "info", format = "json", file = "/var/log/evlua/evlua.log" },
  shutdown_timeout_ms = 30000,
}
