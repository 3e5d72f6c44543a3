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
--   app.aggregate("customer").when_failing{ type = "Buggy" }.expect_failure("attempt to")
--
--   app.aggregate("shipment").reacting_to{ type = "CustomerAddressChanged",
--       aggregate_id = "c1", data = { newAddress = "1 Main St", previousAddress = testing.null } }
--     .expect_commands{ { type = "ShipWelcomeKit", aggregate_id = "kit-c1" } }
--
--   app.cascade({ aggregate_type = "order", aggregate_id = "o1", type = "PlaceOrder", data = ... },
--               { given = { events... }, depth = 8 })
--     .expect_events{ ... }.expect_commands{ ... }.expect_state("order", "o1", { ... })
--
--   local stmts = app.projection("customer_profile").project{ event, ... }
--   local db = app.projection("customer_profile").against_postgres(conninfo)
--   db.apply{ event, ... }; db.query("SELECT ...")
--   db.assert_replay_harmless({ event, ... }, "SELECT ...")
--
-- Rules a spec can count on:
--   * `when` raises at once when the command *fails* (a Lua error or a
--     limit in the handler: a bug), whether or not an expect_* follows; a
--     spec that means to test a failure says `when_failing{...}`, which
--     raises unless the command fails. Rejections are answers: `when`
--     returns them for expect_rejection.
--   * `reacting_to` and `cascade` raise at once when a reaction or a
--     command fails, as `when` does; `reacting_to_failing(e)` tests a
--     failing reaction. reacting_to refuses an event the aggregate has no
--     reaction to (a typo would otherwise pass expect_no_commands).
--   * Every expectation that does not hold says what happened instead: the
--     events with their data, the rejection reason or the error; for a
--     cascade, the whole chain as a tree.
--   * `given{}` refuses an event type that the aggregate's `apply` does not
--     know (a typo would silently leave the state alone), unless the
--     aggregate declares it state-neutral: `neutral = { "Type", ... }`.
--   * A db from against_postgres is one transaction, rolled back and closed
--     when the spec (the `it`) that opened it ends, whatever happened (also
--     when it was opened in before_each). Its connection waits at most
--     lock_timeout (5 s) for a lock and statement_timeout (60 s) for a
--     statement.
--   * db.apply goes through evlua_checkpoints as the projector does: an
--     event at or below its aggregate's checkpoint is skipped.
--
-- Every function works with `.` or `:`.

local native = require("evlua_host")
local evlua = native.api
local json = evlua.json

local M = { null = evlua.null, json = json, evlua = evlua }

-- Text for a value in messages: JSON with sorted keys (stable, readable).
local function canon(v, depth)
  depth = depth or 0
  if v == evlua.null then return "null" end
  local t = type(v)
  if t == "string" then
    local ok, s = pcall(json.encode, v)
    return ok and s or string.format("%q", v)
  elseif t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    for digits = 14, 17 do
      local s = string.format("%." .. digits .. "g", v)
      if tonumber(s) == v then
        return s:find("[%.eEn]") and s or s .. ".0"
      end
    end
  elseif t == "table" and depth < 20 then
    local n, count = #v, 0
    for _ in pairs(v) do count = count + 1 end
    local out = {}
    if n > 0 and n == count then
      for i = 1, n do out[i] = canon(v[i], depth + 1) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for i, k in ipairs(keys) do
      out[i] = canon(tostring(k)) .. ":" .. canon(v[k], depth + 1)
    end
    return "{" .. table.concat(out, ",") .. "}"
  end
  return tostring(v)
end
M.show = canon

-- Make every function of t callable as t.f(x) and t:f(x) (a tail call, so
-- error levels still point at the spec), and make a misspelt name an error
-- that lists the names there are. fields: data keys that may be nil.
local function methods(t, what, fields)
  local names = {}
  for k, f in pairs(t) do
    if type(f) == "function" then
      names[#names + 1] = k
      t[k] = function(first, ...)
        if first == t then return f(...) end
        return f(first, ...)
      end
    end
  end
  table.sort(names)
  local known = {}
  for _, k in ipairs(fields or {}) do known[k] = true end
  return setmetatable(t, { __index = function(_, k)
    if known[k] then return nil end
    error(string.format("%s has no '%s'; it has: %s", what, tostring(k),
      table.concat(names, ", ")), 2)
  end })
end

-- Does actual contain expected? Tables match partially (every key of
-- expected must match; actual may have more); everything else by equality.
local function contains(actual, expected, path)
  if type(expected) ~= "table" or expected == evlua.null then
    if actual ~= expected then
      return false, string.format("%s: expected %s, got %s", path,
        canon(expected), canon(actual))
    end
    return true
  end
  if type(actual) ~= "table" or actual == evlua.null then
    return false, string.format("%s: expected a table, got %s", path, canon(actual))
  end
  for k, v in pairs(expected) do
    local ok, why = contains(actual[k], v, path .. "." .. tostring(k))
    if not ok then return false, why end
  end
  return true
end
M.contains = contains

-- What a decision came to, for messages: "accepted with 2 events: ...",
-- "rejected: reason", "failed: error".
local function outcome(r, events)
  if r.verdict ~= "accepted" then
    return string.format("%s: %s", r.verdict, tostring(r.error))
  end
  local lines = { string.format("accepted with %d event%s%s", #events,
    #events == 1 and "" or "s", #events > 0 and ":" or "") }
  for i, e in ipairs(events) do
    lines[#lines + 1] = string.format("    %d. %s %s", i, e.type, canon(e.data))
  end
  lines[#lines + 1] = "  state after them: " .. canon(r.state)
  return table.concat(lines, "\n")
end

-- What a reaction came to, for messages: "the reaction of shipment to
-- customer.CustomerAddressChanged sent 1 command: ...", "... failed: err".
local function reaction_outcome(type_, key, cmds, err)
  local head = string.format("the reaction of %s to %s", type_, key)
  if err then return head .. " failed: " .. err end
  if #cmds == 0 then return head .. " sent no commands" end
  local lines = { string.format("%s sent %d command%s:", head, #cmds,
    #cmds == 1 and "" or "s") }
  for i, c in ipairs(cmds) do
    lines[#lines + 1] = string.format("    %d. %s %s %s", i, c.type, c.aggregate_id,
      canon(c.data))
  end
  return table.concat(lines, "\n")
end

--- The tree of a cascade as text, one line per command and event:
--   order o1 PlaceOrder: accepted
--     #1 OrderPlaced {"sku":"mug",...}
--       stock mug ReserveStock: accepted
function M.show_cascade(node)
  local lines = {}
  local function cmd(n, pad)
    local w = n.command
    local v = n.verdict or "not decided"
    if n.error then v = v .. ": " .. n.error end
    lines[#lines + 1] = string.format("%s%s %s %s %s: %s", pad, w.aggregate_type,
      w.aggregate_id, w.type, canon(w.data), v)
    for _, ev in ipairs(n.events or {}) do
      local e = ev.event
      lines[#lines + 1] = string.format("%s  #%d %s %s", pad, e.sequence, e.type, canon(e.data))
      for _, child in ipairs(ev.commands) do cmd(child, pad .. "    ") end
    end
  end
  cmd(node, "  ")
  return table.concat(lines, "\n")
end

local function dirs(opts)
  local root = opts.root
  return {
    aggregates = opts.aggregates or (root and root .. "/aggregates") or "aggregates",
    projections = opts.projections or (root and root .. "/projections") or "projections",
    lib = opts.lib or (root and io.open(root .. "/lib") and root .. "/lib") or nil,
    memory_mb = opts.memory_mb, instructions = opts.instructions,
  }
end

-- ---- databases: every open one is rolled back when its spec ends --------

local open_dbs = {}
local hooked = nil

local function close_all()
  for db in pairs(open_dbs) do pcall(db.rollback) end
  return nil, true -- let busted's other subscribers run
end

-- Under busted, roll back at the end of every spec (its 'test end', before
-- after_each runs), when a before_each or lazy_setup fails (the spec does
-- not run, so it never ends) and when the file ends. Outside busted, a db
-- lasts until rollback() or its garbage collection.
local function hook_busted()
  local busted = package.loaded.busted
  if hooked or type(busted) ~= "table" then return end
  local ok, subs = pcall(function()
    local s = {}
    local function on(channel)
      s[#s + 1] = { busted.subscribe(channel, close_all, { priority = 1 }), channel }
    end
    on({ "test", "end" })
    for _, status in ipairs{ "error", "failure" } do
      on({ status, "before_each" })
      on({ status, "lazy_setup" })
    end
    s[#s + 1] = { busted.subscribe({ "file", "end" }, function()
      close_all()
      for _, sub in ipairs(hooked or {}) do pcall(busted.unsubscribe, sub[1].id, sub[2]) end
      hooked = nil
      return nil, true
    end), { "file", "end" } }
    return s
  end)
  if ok then hooked = subs end
end

-- A PostgreSQL text[] literal.
local function pg_array(list)
  local out = {}
  for i, s in ipairs(list) do
    out[i] = '"' .. s:gsub('[\\"]', "\\%0") .. '"'
  end
  return "{" .. table.concat(out, ",") .. "}"
end

-- Parameters as the projector binds them: text, NULL as nil.
local function bind(params)
  local out = { n = params.n or #params }
  for i = 1, out.n do
    local v = params[i]
    if v == nil or v == evlua.null then out[i] = nil
    elseif math.type(v) == "integer" then out[i] = string.format("%d", v)
    elseif math.type(v) == "float" then out[i] = string.format("%.17g", v)
    elseif type(v) == "boolean" then out[i] = v and "true" or "false"
    elseif type(v) == "table" then out[i] = json.encode(v)
    else out[i] = tostring(v) end
  end
  return out
end

local DB_FUNCTIONS = "apply (or project), query, assert_replay_harmless, rollback"

--- Load a script set. Raises with every problem ("file:line: msg") when
-- the set does not load.
function M.load(opts)
  opts = opts or {}
  local d = dirs(opts)
  local host, problems = native.load(d)
  if not host then
    error("scripts do not load:\n  " .. table.concat(problems, "\n  "), 2)
  end
  local app = { host = host }
  local seq = 0

  -- Which aggregate applies an event type (for envelopes of projection
  -- specs that do not say): the one whose apply or neutral list has it.
  local aggregates, owner = {}, {}
  for _, a in ipairs(host:aggregates()) do
    a.neutral = a.neutral or {} -- types that move no state (the script's list)
    aggregates[a.type] = a
    for _, t in ipairs(a.events) do owner[t] = owner[t] or a.type end
    for _, t in ipairs(a.neutral) do owner[t] = owner[t] or a.type end
  end
  -- Who reacts to what: "TYPE.EventName" -> reacting types (host order).
  local reactors = {}
  for _, a in ipairs(host:aggregates()) do
    for _, key in ipairs(a.reacts or {}) do
      reactors[key] = reactors[key] or {}
      table.insert(reactors[key], a.type)
    end
  end

  -- A full envelope around a partial event, as the command side writes it.
  local function envelope(e, defaults, sequence)
    seq = seq + 1
    return {
      id = e.id or evlua.uuid(),
      type = assert(e.type, "an event needs a type"),
      version = e.version or 1,
      aggregate_type = e.aggregate_type or defaults.aggregate_type or owner[e.type],
      aggregate_id = e.aggregate_id or defaults.aggregate_id or "test-1",
      sequence = e.sequence or sequence or seq,
      occurred_at = e.occurred_at or "2026-01-01T00:00:00.000Z",
      causation_id = e.causation_id or "test-command",
      correlation_id = e.correlation_id or "test-command",
      user_id = e.user_id or evlua.null,
      data = e.data or {},
    }
  end

  --- app.aggregate(type) -> { given(events), when(command), when_failing(command) }
  function app.aggregate(type_)
    local a = aggregates[type_]
    if not a then
      local types = {}
      for t in pairs(aggregates) do types[#types + 1] = t end
      table.sort(types)
      error(string.format("no aggregate of type '%s' (there are: %s)", tostring(type_),
        table.concat(types, ", ")), 2)
    end
    local applies = {}
    for _, t in ipairs(a.events) do applies[t] = true end
    for _, t in ipairs(a.neutral) do applies[t] = true end

    local function scenario(history, aggregate_id)
      aggregate_id = aggregate_id or "test-1"
      for i, e in ipairs(history) do
        if e.type and not applies[e.type] then
          error(string.format("given: event %d has type '%s', which has no apply entry in " ..
            "%s (%s) (apply has: %s); fix the type, or add it to the aggregate's " ..
            "neutral = { ... } list if it moves no state", i, tostring(e.type), type_,
            a.script, table.concat(a.events, ", ")), 2)
        end
      end
      local s = {}

      -- Decide cmd on the given events: the raw decision and the result
      -- object with the expectations.
      local function decide(cmd)
        local state = nil
        if #history > 0 then
          local envs = {}
          for i, e in ipairs(history) do
            envs[i] = envelope(e, { aggregate_type = type_,
              aggregate_id = aggregate_id }, i)
          end
          local err
          state, err = host:apply(type_, nil, envs)
          if not state then return nil, "given events do not apply: " .. err end
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
        local function what() return outcome(r, result.events) end

        function result.expect_events(expected)
          if r.verdict ~= "accepted" then
            error("expected events, but the command was " .. what(), 2)
          end
          if #expected ~= #result.events then
            error(string.format("expected %d events, got %d; the command was %s",
              #expected, #result.events, what()), 2)
          end
          for i, want in ipairs(expected) do
            local ok, why = contains(result.events[i], want, "events[" .. i .. "]")
            if not ok then error(why .. "; the command was " .. what(), 2) end
          end
          return result
        end

        function result.expect_no_events()
          if r.verdict ~= "accepted" or #result.events > 0 then
            error(string.format("expected 0 events, got %d; the command was %s",
              #result.events, what()), 2)
          end
          return result
        end

        function result.expect_rejection(pattern)
          if r.verdict ~= "rejected" then
            error("expected a rejection, but the command was " .. what(), 2)
          end
          if pattern and not r.error:find(pattern) then
            error(string.format("rejection %q does not match %q", r.error, pattern), 2)
          end
          return result
        end

        function result.expect_failure(pattern)
          if r.verdict ~= "failed" then
            error("expected a failure, but the command was " .. what(), 2)
          end
          if pattern and not r.error:find(pattern) then
            error(string.format("failure %q does not match %q", r.error, pattern), 2)
          end
          return result
        end

        function result.expect_state(expected)
          if r.verdict ~= "accepted" then
            error("expected a state, but the command was " .. what(), 2)
          end
          local ok, why = contains(r.state, expected, "state")
          if not ok then error(why .. "; the whole state: " .. canon(r.state), 2) end
          return result
        end

        return r, methods(result, "the result of when", { "error", "state" })
      end

      function s.when(cmd)
        local r, result = decide(cmd)
        if not r then error(result, 2) end
        if r.verdict == "failed" then
          error("the command failed (a Lua error or a limit in the handler: a bug; " ..
            "a spec that expects it says when_failing{...}.expect_failure(pattern)): " ..
            r.error, 2)
        end
        return result
      end

      function s.when_failing(cmd)
        local r, result = decide(cmd)
        if not r then error(result, 2) end
        if r.verdict ~= "failed" then
          error("expected the command to fail, but it was " ..
            outcome(r, result.events), 2)
        end
        return result
      end

      return methods(s, "given{...}")
    end

    -- This aggregate's reaction to one event: the result object with the
    -- expectations. A reaction this aggregate does not have is an error
    -- (a typo in the spec would otherwise expect no commands and pass).
    local function react(e)
      if type(e) ~= "table" or type(e.type) ~= "string" then
        error("reacting_to: the event must be a table with a type", 3)
      end
      local env = envelope(e, {}, e.sequence)
      if not env.aggregate_type then
        error(string.format("reacting_to: no aggregate of the set applies event type " ..
          "'%s'; give the event's aggregate_type", e.type), 3)
      end
      local key = env.aggregate_type .. "." .. env.type
      local keys = a.reacts or {}
      local known = false
      for _, k in ipairs(keys) do known = known or k == key end
      if not known then
        error(string.format("aggregate %s (%s) has no reaction to %s (react has: %s)",
          type_, a.script, key, #keys > 0 and table.concat(keys, ", ") or "nothing"), 3)
      end
      local cmds, err = host:react(type_, env)
      local result = { event = env, commands = cmds or {}, error = err }
      local function what()
        return reaction_outcome(type_, key, cmds, err)
      end

      function result.expect_commands(expected)
        if err then error("expected commands, but " .. what(), 2) end
        if #expected ~= #cmds then
          error(string.format("expected %d command%s, got %d; %s", #expected,
            #expected == 1 and "" or "s", #cmds, what()), 2)
        end
        for i, want in ipairs(expected) do
          local ok, why = contains(cmds[i], want, "commands[" .. i .. "]")
          if not ok then error(why .. "; " .. what(), 2) end
        end
        return result
      end

      function result.expect_no_commands()
        if err or #cmds > 0 then
          error(string.format("expected no commands, got %d; %s", #result.commands,
            what()), 2)
        end
        return result
      end

      function result.expect_failure(pattern)
        if not err then error("expected the reaction to fail, but " .. what(), 2) end
        if pattern and not err:find(pattern) then
          error(string.format("failure %q does not match %q", err, pattern), 2)
        end
        return result
      end

      return methods(result, "the result of reacting_to", { "error" }), what
    end

    local agg = {}
    function agg.given(events, aggregate_id) return scenario(events or {}, aggregate_id) end
    function agg.when(cmd) return scenario({}).when(cmd) end
    function agg.when_failing(cmd) return scenario({}).when_failing(cmd) end

    --- reacting_to(event): the commands this aggregate's reaction sends for
    -- the event (a partial envelope: its aggregate_type defaults to the
    -- aggregate that applies its type). Raises at once when the reaction
    -- fails; a spec that tests that says reacting_to_failing(event).
    function agg.reacting_to(e)
      local result = react(e)
      if result.error then
        error("the reaction failed (a Lua error or an invalid command: a bug; a spec " ..
          "that expects it says reacting_to_failing(event).expect_failure(pattern)): " ..
          result.error, 2)
      end
      return result
    end

    function agg.reacting_to_failing(e)
      local result, what = react(e)
      if not result.error then error("expected the reaction to fail, but " .. what(), 2) end
      return result
    end
    return methods(agg, "aggregate '" .. type_ .. "'")
  end

  --- app.cascade(command [, opts]) -> the whole chain, in memory: the
  -- command is decided, every reaction to its events runs, their commands
  -- are decided, and so on, breadth first, as the pipelines would (one
  -- in-memory store; no Kafka). command = { aggregate_type, aggregate_id
  -- ("test-1"), type, data, metadata, id, expected_version }. opts:
  --   given = { events, each with aggregate_type (default: the aggregate
  --             that applies its type) and aggregate_id } applied first
  --   depth = 8: reaction hops followed; a chain deeper than that fails
  --           the spec (a loop of reactions?)
  -- Raises at once when a command or a reaction fails (a bug), showing the
  -- chain so far. Rejections are answers: the chain records them.
  function app.cascade(cmd, opts)
    opts = opts or {}
    local limit = opts.depth or 8
    if type(cmd) ~= "table" or type(cmd.type) ~= "string" then
      error("cascade: the command must be a table with a type", 2)
    end
    if not aggregates[cmd.aggregate_type] then
      error(string.format("cascade: the command needs the aggregate_type of an aggregate " ..
        "of the set (got %s)", canon(cmd.aggregate_type)), 2)
    end
    local store = {} -- "type\0id" -> { state, version, seen = { command ids } }
    local function inst(t, id)
      local k = t .. "\0" .. id
      store[k] = store[k] or { version = 0, seen = {} }
      return store[k]
    end
    for i, e in ipairs(opts.given or {}) do
      local env = envelope(e, {}, nil)
      if not env.aggregate_type then
        error(string.format("cascade: given event %d (%s): no aggregate of the set " ..
          "applies it; give its aggregate_type", i, tostring(e.type)), 2)
      end
      local a = inst(env.aggregate_type, env.aggregate_id)
      env.sequence = e.sequence or a.version + 1
      local state, err = host:apply(env.aggregate_type, a.state, { env })
      if not state then error(string.format("cascade: given event %d: %s", i, err), 2) end
      a.state, a.version = state, env.sequence
    end

    local root = { command = {
      id = cmd.id or evlua.uuid(), type = cmd.type, aggregate_type = cmd.aggregate_type,
      aggregate_id = cmd.aggregate_id or "test-1", expected_version = cmd.expected_version,
      data = cmd.data or {}, metadata = cmd.metadata or {} }, depth = 0 }
    local c = { events = {}, commands = {}, tree = root }
    local function tree() return "the chain:\n" .. M.show_cascade(root) end

    -- Decide one command node; its events get envelopes and reactions.
    local function decide(node)
      local w = node.command
      local a = inst(w.aggregate_type, w.aggregate_id)
      c.commands[#c.commands + 1] = node
      if a.seen[w.id] then
        node.verdict = "duplicate"
        return {}
      end
      if w.expected_version and w.expected_version ~= a.version then
        node.verdict = "rejected"
        node.error = string.format("expected version %d, but aggregate %s is at version %d",
          w.expected_version, w.aggregate_id, a.version)
        return {}
      end
      local r = host:decide{ aggregate_type = w.aggregate_type, aggregate_id = w.aggregate_id,
        version = a.version, state = a.state, command = w }
      node.verdict, node.error = r.verdict, r.error
      if r.verdict == "failed" then
        error(string.format("cascade: %s %s %s failed (a bug): %s\n%s", w.aggregate_type,
          w.aggregate_id, w.type, r.error, tree()), 0)
      end
      if r.verdict ~= "accepted" then return {} end
      a.seen[w.id] = true
      local md = w.metadata or {}
      node.events = {}
      for i, e in ipairs(r.events) do
        local env = {
          id = evlua.uuid(), type = e.type, version = e.version,
          aggregate_type = w.aggregate_type, aggregate_id = w.aggregate_id,
          sequence = a.version + i, occurred_at = "2026-01-01T00:00:00.000Z",
          causation_id = w.id, correlation_id = md.correlation_id or w.id,
          user_id = md.user_id or evlua.null, data = e.data,
        }
        node.events[i] = { event = env, commands = {} }
        c.events[#c.events + 1] = env
      end
      a.state, a.version = r.state, a.version + #r.events
      return node.events
    end

    -- Breadth first: a queue of command nodes.
    local queue, head = { root }, 1
    local ok, err = pcall(function()
      while head <= #queue do
        local node = queue[head]
        head = head + 1
        for _, ev in ipairs(decide(node)) do
          local env = ev.event
          for _, t in ipairs(reactors[env.aggregate_type .. "." .. env.type] or {}) do
            local cmds, rerr = host:react(t, env)
            if not cmds then
              error(string.format("cascade: the reaction of %s to %s.%s failed (a bug): %s\n%s",
                t, env.aggregate_type, env.type, rerr, tree()), 0)
            end
            for _, w in ipairs(cmds) do
              local child = { command = w, depth = node.depth + 1, reactor = t }
              ev.commands[#ev.commands + 1] = child
              if child.depth > limit then
                child.verdict = "not followed"
                error(string.format("cascade: the chain goes deeper than depth %d (a loop " ..
                  "of reactions? opts.depth raises the limit)\n%s", limit, tree()), 0)
              end
              queue[#queue + 1] = child
            end
          end
        end
      end
    end)
    if not ok then error(err, 2) end

    local function what() return tree() end

    --- c.state(type, id) -> the aggregate's state after the chain (nil: none)
    function c.state(t, id)
      local a = store[t .. "\0" .. id]
      return a and a.state
    end

    -- Partial matches of a list, in order, with the same count.
    local function match_list(kind, actual, expected, view)
      if #expected ~= #actual then
        error(string.format("expected %d %s, the chain has %d; %s", #expected,
          #expected == 1 and kind:sub(1, -2) or kind, #actual, what()), 3)
      end
      for i, want in ipairs(expected) do
        local ok2, why = contains(view(actual[i]), want, kind .. "[" .. i .. "]")
        if not ok2 then error(why .. "; " .. what(), 3) end
      end
    end

    --- every event of the chain, in order (partial envelopes)
    function c.expect_events(expected)
      match_list("events", c.events, expected, function(e) return e end)
      return c
    end

    --- every command of the chain, the first included, in order: the
    -- command's fields plus verdict and error
    function c.expect_commands(expected)
      match_list("commands", c.commands, expected, function(n)
        local v = {}
        for k, x in pairs(n.command) do v[k] = x end
        v.verdict, v.error, v.depth = n.verdict, n.error, n.depth
        return v
      end)
      return c
    end

    function c.expect_state(t, id, expected)
      local state = c.state(t, id)
      if state == nil then
        error(string.format("expected a state for %s %s, but the chain has no event of it; %s",
          t, id, what()), 2)
      end
      local ok2, why = contains(state, expected, "state")
      if not ok2 then error(why .. "; the whole state: " .. canon(state), 2) end
      return c
    end

    --- the chain as an indented tree (also in every failure message)
    function c.show() return M.show_cascade(root) end

    return methods(c, "the cascade")
  end

  --- app.projection(name) -> { project(events), against_postgres(conninfo) }
  function app.projection(name)
    local info
    local names = {}
    for _, p in ipairs(host:projections()) do
      if p.name == name then info = p end
      names[#names + 1] = p.name
    end
    if not info then
      error(string.format("no projection named '%s' (there are: %s)", tostring(name),
        table.concat(names, ", ")), 2)
    end
    local p = { info = info }
    local handles = {}
    for _, t in ipairs(info.events) do handles[t] = true end

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

    --- Run the projection against a real database, inside one transaction
    -- that the end of the spec (or rollback()) throws away. opts:
    -- lock_timeout_ms (5000), statement_timeout_ms (60000).
    function p.against_postgres(conninfo, opts)
      if type(conninfo) == "table" then conninfo, opts = nil, conninfo end
      opts = opts or {}
      conninfo = conninfo or opts.conninfo or os.getenv("EVLUA_PG_CONNINFO")
      if not conninfo or conninfo == "" then
        error("against_postgres needs a conninfo (or EVLUA_PG_CONNINFO)", 2)
      end
      local conn = native.pg(conninfo)
      local db = {}
      local ok, err = pcall(function()
        -- evlua's own tables, committed, as every projector makes them
        conn:create_tables()
        conn:exec(string.format("SET lock_timeout = %d", opts.lock_timeout_ms or 5000))
        conn:exec(string.format("SET statement_timeout = %d",
          opts.statement_timeout_ms or 60000))
        conn:exec("BEGIN")
        for _, ddl in ipairs(info.schema) do conn:exec(ddl) end
      end)
      if not ok then
        conn:close()
        error(string.format("against_postgres('%s'): %s", name, err), 2)
      end
      hook_busted()
      open_dbs[db] = true

      local last = {}    -- aggregate key -> highest sequence numbered here
      local history = {} -- every envelope applied, in order (for a rebuild)

      local function live()
        if not conn then
          error("this db is closed: it was rolled back when its spec ended (or by " ..
            "rollback()); open a new one with against_postgres in the spec or " ..
            "before_each", 3)
        end
      end

      local function key_of(env)
        return tostring(env.aggregate_type) .. "\0" .. tostring(env.aggregate_id)
      end

      -- The checkpoints of the aggregates of envs, read with the
      -- projector's statement: key -> { seq (-1: none), parked }.
      local function checkpoints(envs)
        local types, ids, seen = {}, {}, {}
        for _, env in ipairs(envs) do
          local k = key_of(env)
          if not seen[k] then
            seen[k] = { seq = -1, parked = false }
            types[#types + 1] = tostring(env.aggregate_type)
            ids[#ids + 1] = tostring(env.aggregate_id)
          end
        end
        if #types > 0 then
          local rows = conn:exec(native.sql.load_checkpoints,
            bind{ name, pg_array(types), pg_array(ids), n = 3 })
          for _, row in ipairs(rows) do
            seen[row.aggregate_type .. "\0" .. row.aggregate_id] =
              { seq = row.sequence, parked = row.parked }
          end
        end
        return seen
      end

      -- Envelopes for events; an event without a sequence gets the one
      -- after its aggregate's last (its checkpoint, or what this db
      -- numbered).
      local function envelopes(events)
        local envs = {}
        for i, e in ipairs(events) do
          envs[i] = envelope(e, {}, e.sequence or 0)
          envs[i].aggregate_type = envs[i].aggregate_type or "test"
        end
        local cps = checkpoints(envs)
        for i, env in ipairs(envs) do
          local k = key_of(env)
          local top = math.max(last[k] or 0, cps[k].seq)
          if events[i].sequence == nil then env.sequence = top + 1 end
          last[k] = math.max(top, env.sequence)
        end
        return envs
      end

      -- What the projector does with a batch, in one savepoint: skip events
      -- at or below their aggregate's checkpoint, run the statements of the
      -- others, move each touched checkpoint (from what was read to the new
      -- value, so a concurrent move fails as it would there). Returns
      -- rows affected, events skipped.
      local function run(envs)
        local cps = checkpoints(envs)
        local running, order, touched = {}, {}, {}
        local rows, skipped = 0, 0
        for i, env in ipairs(envs) do
          local k = key_of(env)
          local cp = cps[k]
          if cp.parked then
            error(string.format("event %d: aggregate %s/%s is parked for projection %s " ..
              "in this database", i, env.aggregate_type, env.aggregate_id, name), 0)
          end
          running[k] = running[k] or math.max(cp.seq, 0)
          if not handles[env.type] then
            -- not subscribed: skipped by header, checkpoint untouched
          elseif env.sequence <= running[k] then
            skipped = skipped + 1
          else
            local stmts, err = host:project(name, env)
            if not stmts then
              error(string.format("event %d (%s %s/%s #%d): %s", i, env.type,
                env.aggregate_type, env.aggregate_id, env.sequence, err), 0)
            end
            for _, st in ipairs(stmts) do
              local sok, res, count = pcall(conn.exec, conn, st.sql, bind(st.params))
              if not sok then
                error(string.format("event %d (%s %s/%s #%d): %s", i, env.type,
                  env.aggregate_type, env.aggregate_id, env.sequence, res), 0)
              end
              rows = rows + count
            end
            running[k] = env.sequence
            if not touched[k] then
              touched[k] = { env = env, prev = cp }
              order[#order + 1] = k
            end
            history[#history + 1] = env
          end
        end
        for _, k in ipairs(order) do
          local t = touched[k]
          conn:exec(native.sql.advance_checkpoint, bind{ name, t.env.aggregate_type,
            t.env.aggregate_id, t.prev.seq, t.prev.parked, running[k], false, n = 7 })
        end
        return rows, skipped
      end

      local function in_savepoint(f, ...)
        conn:exec("SAVEPOINT evlua_apply")
        local res = table.pack(pcall(f, ...))
        if res[1] then
          conn:exec("RELEASE SAVEPOINT evlua_apply")
          return table.unpack(res, 2, res.n)
        end
        pcall(conn.exec, conn, "ROLLBACK TO SAVEPOINT evlua_apply")
        error(res[2], 0)
      end

      --- db.apply(events) -> rows affected, events skipped. Through the
      -- checkpoints: an event at or below its aggregate's checkpoint is
      -- skipped, as a redelivered one is in production. A failing event
      -- raises and leaves the db as it was before this call.
      function db.apply(events)
        live()
        local ok, rows, skipped = pcall(function()
          local envs = envelopes(events)
          return in_savepoint(run, envs)
        end)
        if not ok then error("db.apply: " .. tostring(rows), 2) end
        return rows, skipped
      end
      db.project = db.apply

      --- db.query(sql, ...) -> rows, count. Values come back typed (see
      -- luamod.c): integers, numbers, booleans, decoded JSON, evlua.null.
      function db.query(sql, ...)
        live()
        local ok, rows, count = pcall(conn.exec, conn, sql, bind(table.pack(...)))
        if not ok then error("db.query: " .. tostring(rows), 2) end
        return rows, count
      end

      --- The two replays evlua performs must leave the result of `sql`
      -- unchanged: a redelivery of the events (after a crash: the
      -- checkpoints skip them) and a rebuild (`evlua projection reset`:
      -- the projection's reset, its checkpoints deleted, every event this
      -- db applied again from the start). opts.rebuild = false checks the
      -- redelivery only.
      function db.assert_replay_harmless(events, sql, ropts)
        live()
        ropts = ropts or {}
        local ok, err = pcall(function()
          local envs = envelopes(events)
          in_savepoint(run, envs)
          local once = canon((conn:exec(sql, bind{ n = 0 })))
          in_savepoint(run, envs)
          local again = canon((conn:exec(sql, bind{ n = 0 })))
          if again ~= once then
            error("a redelivery of the events changed the tables, although the " ..
              "checkpoints skipped them:\n  once:  " .. once .. "\n  again: " .. again, 0)
          end
          if ropts.rebuild == false then return end
          local stmts, rerr = host:reset(name)
          if not stmts then error("reset: " .. rerr, 0) end
          local replay = history
          history = {}
          in_savepoint(function()
            for _, st in ipairs(stmts) do conn:exec(st.sql, bind(st.params)) end
            -- what `evlua projection reset` deletes with the tables' rows
            conn:exec("DELETE FROM evlua_checkpoints WHERE projection = $1",
              bind{ name, n = 1 })
            run(replay)
          end)
          local rebuilt = canon((conn:exec(sql, bind{ n = 0 })))
          if rebuilt ~= once then
            error("a rebuild (`evlua projection reset " .. name .. "`: its reset, then " ..
              "every event again from the start) changed the tables:\n" ..
              "  once:          " .. once .. "\n  after rebuild: " .. rebuilt ..
              "\n(reset must undo everything the projection writes; and `sql` should " ..
              "not select what a rebuild renumbers, such as serial ids)", 0)
          end
        end)
        if not ok then error("assert_replay_harmless: " .. tostring(err), 2) end
        return db
      end

      --- Throw the transaction away and close the connection (idempotent;
      -- the end of the spec does it anyway).
      function db.rollback()
        open_dbs[db] = nil
        if conn then
          local c = conn
          conn = nil
          pcall(c.exec, c, "ROLLBACK")
          c:close()
        end
      end

      return methods(db, "db (functions: " .. DB_FUNCTIONS .. ")")
    end

    return methods(p, "projection '" .. name .. "'", { "info" })
  end

  return methods(app, "app", { "host" })
end

return M
