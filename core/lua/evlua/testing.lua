--- evlua.testing: given/when/then for aggregates and projections, in busted.
--
-- Scripts load through the evlua_host module: the production host, with its
-- sandbox, limits, JSON bridge and validation. What passes here passes in
-- `evlua run`.
--
--   local testing = require("evlua.testing")
--   local app = testing.load{ root = "." }  -- root/aggregates, root/projections
--
--   app.aggregate("customer")
--     .given{ { type = "CustomerRegistered", data = { name = "Ann", email = "a@x.io" } } }
--     .when{ type = "UpdateCustomerProfile", data = { name = "Bo" } }
--     .expect_events{ { type = "CustomerNameChanged", data = { newName = "Bo" } } }
--     .expect_state{ name = "Bo" }
--
--   local stmts = app.projection("customer_profile").project{ event, ... }
--   local db = app.projection("customer_profile").against_postgres(conninfo)
--   db.apply{ event, ... }; db.query("SELECT ...") ; db.rollback()
--
-- Every function works with `.` or `:`.

local native = require("evlua_host")
local evlua = native.api
local json = evlua.json

local M = { null = evlua.null, json = json, evlua = evlua }

-- Make every function of t callable as t.f(x) and t:f(x).
local function methods(t)
  for k, f in pairs(t) do
    if type(f) == "function" then
      t[k] = function(first, ...)
        if first == t then return f(...) end
        return f(first, ...)
      end
    end
  end
  return t
end

local function show(v)
  local ok, s = pcall(json.encode, v)
  return ok and s or tostring(v)
end

-- Does actual contain expected? Tables match partially (every key of
-- expected must match; actual may have more); everything else by equality.
local function contains(actual, expected, path)
  if type(expected) ~= "table" or expected == evlua.null then
    if actual ~= expected then
      return false, string.format("%s: expected %s, got %s", path,
        show(expected), show(actual))
    end
    return true
  end
  if type(actual) ~= "table" then
    return false, string.format("%s: expected a table, got %s", path, show(actual))
  end
  for k, v in pairs(expected) do
    local ok, why = contains(actual[k], v, path .. "." .. tostring(k))
    if not ok then return false, why end
  end
  return true
end
M.contains = contains

local function dirs(opts)
  local root = opts.root
  return {
    aggregates = opts.aggregates or (root and root .. "/aggregates") or "aggregates",
    projections = opts.projections or (root and root .. "/projections") or "projections",
    lib = opts.lib or (root and io.open(root .. "/lib") and root .. "/lib") or nil,
    memory_mb = opts.memory_mb, instructions = opts.instructions,
  }
end

--- Load a script set. Raises with every problem ("file:line: msg") when
-- the set does not load.
function M.load(opts)
  opts = opts or {}
  local host, problems = native.load(dirs(opts))
  if not host then
    error("scripts do not load:\n  " .. table.concat(problems, "\n  "), 2)
  end
  local app = { host = host }
  local seq = 0

  -- A full envelope around a partial event, as the command side writes it.
  local function envelope(e, defaults, sequence)
    seq = seq + 1
    return {
      id = e.id or evlua.uuid(),
      type = assert(e.type, "an event needs a type"),
      version = e.version or 1,
      aggregate_type = e.aggregate_type or defaults.aggregate_type,
      aggregate_id = e.aggregate_id or defaults.aggregate_id or "test-1",
      sequence = e.sequence or sequence or seq,
      occurred_at = e.occurred_at or "2026-01-01T00:00:00.000Z",
      causation_id = e.causation_id or "test-command",
      correlation_id = e.correlation_id or "test-command",
      user_id = e.user_id or evlua.null,
      data = e.data or {},
    }
  end

  --- app.aggregate(type) -> { given(events), when(command) }
  function app.aggregate(type_)
    local found = false
    for _, a in ipairs(host:aggregates()) do
      if a.type == type_ then found = true end
    end
    if not found then error("no aggregate of type '" .. type_ .. "'", 2) end

    local function scenario(history, aggregate_id)
      aggregate_id = aggregate_id or "test-1"
      local s = {}
      function s.when(cmd)
        local state = nil
        if #history > 0 then
          local envs = {}
          for i, e in ipairs(history) do
            envs[i] = envelope(e, { aggregate_type = type_,
              aggregate_id = aggregate_id }, i)
          end
          local err
          state, err = host:apply(type_, nil, envs)
          if not state then error("given events do not apply: " .. err, 2) end
        end
        local command = {
          id = cmd.id or evlua.uuid(), type = assert(cmd.type, "a command needs a type"),
          aggregate_type = type_, aggregate_id = aggregate_id,
          data = cmd.data or {}, metadata = cmd.metadata or {},
        }
        local r = host:decide{ aggregate_type = type_, aggregate_id = aggregate_id,
          version = #history, state = state, command = command }
        local result = { verdict = r.verdict, error = r.error, state = r.state,
                         events = r.events or {} }
        for i, e in ipairs(result.events) do
          e.sequence = #history + i
          e.aggregate_id = aggregate_id
        end

        function result.expect_events(expected)
          if r.verdict ~= "accepted" then
            error(string.format("expected events, but the command was %s: %s",
              r.verdict, tostring(r.error)), 2)
          end
          if #expected ~= #result.events then
            local got = {}
            for i, e in ipairs(result.events) do got[i] = e.type end
            error(string.format("expected %d events, got %d: %s", #expected,
              #result.events, table.concat(got, ", ")), 2)
          end
          for i, want in ipairs(expected) do
            local ok, why = contains(result.events[i], want, "events[" .. i .. "]")
            if not ok then error(why, 2) end
          end
          return result
        end

        function result.expect_no_events()
          return result.expect_events({})
        end

        function result.expect_rejection(pattern)
          if r.verdict ~= "rejected" then
            error(string.format("expected a rejection, but the command was %s%s",
              r.verdict, r.error and (": " .. r.error) or ""), 2)
          end
          if pattern and not r.error:find(pattern) then
            error(string.format("rejection %q does not match %q", r.error, pattern), 2)
          end
          return result
        end

        function result.expect_failure(pattern)
          if r.verdict ~= "failed" then
            error(string.format("expected a failure, but the command was %s%s",
              r.verdict, r.error and (": " .. r.error) or ""), 2)
          end
          if pattern and not r.error:find(pattern) then
            error(string.format("failure %q does not match %q", r.error, pattern), 2)
          end
          return result
        end

        function result.expect_state(expected)
          if r.verdict ~= "accepted" then
            error(string.format("expected a state, but the command was %s: %s",
              r.verdict, tostring(r.error)), 2)
          end
          local ok, why = contains(r.state, expected, "state")
          if not ok then error(why, 2) end
          return result
        end

        return methods(result)
      end
      return methods(s)
    end

    local agg = {}
    function agg.given(events, aggregate_id) return scenario(events or {}, aggregate_id) end
    function agg.when(cmd) return scenario({}).when(cmd) end
    return methods(agg)
  end

  --- app.projection(name) -> { project(events), against_postgres(conninfo) }
  function app.projection(name)
    local info
    for _, p in ipairs(host:projections()) do
      if p.name == name then info = p end
    end
    if not info then error("no projection named '" .. name .. "'", 2) end
    local p = { info = info }

    -- Statements for events (partial events get a full envelope).
    function p.project(events)
      local out = {}
      for i, e in ipairs(events) do
        local stmts, err = host:project(name, envelope(e, {}, e.sequence))
        if not stmts then error(string.format("event %d: %s", i, err), 2) end
        for _, s in ipairs(stmts) do out[#out + 1] = s end
      end
      return out
    end

    local function bind(params)
      local out = { n = #params }
      for i, v in ipairs(params) do
        if v == evlua.null then out[i] = nil
        elseif math.type(v) == "integer" then out[i] = string.format("%d", v)
        elseif math.type(v) == "float" then out[i] = string.format("%.17g", v)
        elseif type(v) == "boolean" then out[i] = v and "true" or "false"
        elseif type(v) == "table" then out[i] = json.encode(v)
        else out[i] = v end
      end
      return out
    end

    --- Run the projection against a real database, inside one transaction
    -- that rollback() (or the end of the spec) throws away.
    function p.against_postgres(conninfo)
      conninfo = conninfo or os.getenv("EVLUA_PG_CONNINFO")
      if not conninfo then
        error("against_postgres needs a conninfo (or EVLUA_PG_CONNINFO)", 2)
      end
      local conn = native.pg(conninfo)
      conn:exec("BEGIN")
      for _, ddl in ipairs(info.schema) do conn:exec(ddl) end
      local db = {}
      function db.apply(events)
        local n = 0
        for _, s in ipairs(p.project(events)) do
          local _, count = conn:exec(s.sql, bind(s.params))
          n = n + count
        end
        return n
      end
      function db.query(sql, ...)
        local params = table.pack(...)
        return (conn:exec(sql, bind(params)))
      end
      --- Apply events twice; the result of `sql` must not change.
      function db.assert_replay_harmless(events, sql)
        db.apply(events)
        local once = json.encode(db.query(sql))
        db.apply(events)
        local twice = json.encode(db.query(sql))
        if once ~= twice then
          error("replaying the events changed the tables:\n  once:  " .. once ..
            "\n  twice: " .. twice, 2)
        end
        return db
      end
      function db.rollback()
        if conn then conn:exec("ROLLBACK"); conn:close(); conn = nil end
      end
      return methods(db)
    end

    return methods(p)
  end

  return methods(app)
end

return M
