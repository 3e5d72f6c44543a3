-- evlua.testing itself: a spec fails when the scripts misbehave, and every
-- failed expectation says what happened instead. The fixture scripts are
-- in tests/spec/fixtures/toolkit.
local testing = require("evlua.testing")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local app = testing.load{ root = here .. "/fixtures/toolkit" }
local counter = app.aggregate("counter")

-- The message f raises (fails the spec when f does not raise).
local function raised(f)
  local ok, err = pcall(f)
  assert(not ok, "expected an error, but none was raised")
  return tostring(err)
end

local function has(text, fragment)
  assert(text:find(fragment, 1, true),
    string.format("expected the message to mention %q; it was:\n%s", fragment, text))
end

describe("when", function()
  it("fails the spec at once when the handler crashes, with no expect_* after it", function()
    local msg = raised(function() counter.when{ type = "Crash" } end)
    has(msg, "the command failed")
    has(msg, "attempt to index")
    has(msg, "when_failing")
  end)

  it("points at the spec's line, not at the toolkit", function()
    local msg = raised(function() counter.given{}.when{ type = "Crash" } end)
    has(msg, "toolkit_spec.lua:")
  end)

  it("lets a spec expect a failure with when_failing", function()
    counter.when_failing{ type = "Crash" }.expect_failure("attempt to index")
    counter.given{ { type = "Incremented", data = { by = 1 } } }
      .when_failing{ type = "Crash" }.expect_failure()
  end)

  it("when_failing fails when the command does not fail, showing what happened", function()
    local msg = raised(function() counter.when_failing{ type = "Increment", data = { by = 3 } } end)
    has(msg, "expected the command to fail")
    has(msg, "accepted")
    has(msg, "Incremented")
    has(msg, '"by":3')
    msg = raised(function() counter.when_failing{ type = "Refuse" } end)
    has(msg, "rejected: counters never refuse")
  end)

  it("still passes for an accepted or rejected command without expect_*", function()
    counter.when{ type = "Increment" }
    counter.when{ type = "Refuse" }
  end)
end)

describe("a missed expectation shows what happened instead", function()
  it("expect_rejection shows the events that were emitted, with their data", function()
    local msg = raised(function()
      counter.when{ type = "Increment", data = { by = 7 } }.expect_rejection("never")
    end)
    has(msg, "expected a rejection")
    has(msg, "accepted with 1 event")
    has(msg, "Incremented")
    has(msg, '"by":7')
  end)

  it("expect_events shows the rejection reason", function()
    local msg = raised(function()
      counter.when{ type = "Refuse" }.expect_events{ { type = "Incremented" } }
    end)
    has(msg, "rejected: counters never refuse, but this one does")
  end)

  it("expect_events shows every event when the data differs", function()
    local msg = raised(function()
      counter.when{ type = "Increment", data = { by = 2 } }
        .expect_events{ { type = "Incremented", data = { by = 5 } } }
    end)
    has(msg, "events[1].data.by: expected 5, got 2")
    has(msg, '1. Incremented {"by":2}')
  end)

  it("expect_events shows the events when their number differs", function()
    local msg = raised(function()
      counter.when{ type = "Increment", data = { by = 2 } }.expect_no_events()
    end)
    has(msg, "expected 0 events, got 1")
    has(msg, '1. Incremented {"by":2}')
  end)

  it("expect_state shows the whole state", function()
    local msg = raised(function()
      counter.given{ { type = "Incremented", data = { by = 4 } } }
        .when{ type = "Increment", data = { by = 1 } }.expect_state{ n = 6 }
    end)
    has(msg, "state.n: expected 6, got 5")
    has(msg, '{"n":5}')
  end)

  it("expect_failure shows the events of an accepted command", function()
    local msg = raised(function()
      counter.when{ type = "Increment", data = { by = 9 } }.expect_failure()
    end)
    has(msg, '"by":9')
  end)

  it("a misspelt expectation names the ones that exist", function()
    local msg = raised(function()
      counter.when{ type = "Increment" }.expect_event{ { type = "Incremented" } }
    end)
    has(msg, "expect_event")
    has(msg, "expect_events")
  end)
end)

describe("given", function()
  it("refuses an event type the aggregate's apply does not know (a typo)", function()
    local msg = raised(function()
      counter.given{ { type = "Incremnted", data = { by = 1 } } }
    end)
    has(msg, "Incremnted")
    has(msg, "no apply entry")
    has(msg, "Incremented") -- the types apply has
    has(msg, "neutral")
    has(msg, "toolkit_spec.lua:")
  end)

  it("accepts an event type the aggregate declares state-neutral", function()
    counter.given{ { type = "CounterViewed" }, { type = "Incremented", data = { by = 2 } } }
      .when{ type = "Increment" }.expect_state{ n = 3 }
  end)
end)

describe("reacting_to", function()
  local echo = app.aggregate("echo")
  local function incremented(by)
    return { type = "Incremented", aggregate_id = "k1", data = { by = by } }
  end

  it("gives the commands a reaction sends, with their ids and metadata", function()
    local r = echo.reacting_to(incremented(2))
      .expect_commands{ { type = "Echo", aggregate_type = "echo", aggregate_id = "echo-k1",
                          data = { by = 2 } } }
    local cmd = r.commands[1]
    assert.are.equal(r.event.id, cmd.metadata.causation_id)
    assert.are.equal(r.event.correlation_id, cmd.metadata.correlation_id)
    -- the same event gives the same command id: a replay is a duplicate
    local again = echo.reacting_to{ id = r.event.id, type = "Incremented",
      aggregate_id = "k1", data = { by = 2 } }
    assert.are.equal(cmd.id, again.commands[1].id)
    echo.reacting_to(incremented(0)).expect_no_commands()
  end)

  it("expect_commands shows the commands that were sent", function()
    local msg = raised(function()
      echo.reacting_to(incremented(2)).expect_commands{ { type = "Echo", data = { by = 3 } } }
    end)
    has(msg, "commands[1].data.by: expected 3, got 2")
    has(msg, "the reaction of echo to counter.Incremented sent 1 command:")
    has(msg, '1. Echo echo-k1 {"by":2,"loop":false}')
    msg = raised(function() echo.reacting_to(incremented(0)).expect_commands{ { type = "Echo" } } end)
    has(msg, "expected 1 command, got 0")
    has(msg, "sent no commands")
    msg = raised(function() echo.reacting_to(incremented(2)).expect_no_commands() end)
    has(msg, "expected no commands, got 1")
    has(msg, "Echo echo-k1")
  end)

  it("fails the spec at once when the reaction fails", function()
    local msg = raised(function() echo.reacting_to(incremented(13)) end)
    has(msg, "the reaction failed")
    has(msg, "unlucky number")
    has(msg, "reacting_to_failing")
    has(msg, "toolkit_spec.lua:")
    msg = raised(function() echo.reacting_to(incremented(7)) end)
    has(msg, 'unknown field "dat"')
  end)

  it("lets a spec expect a failure with reacting_to_failing", function()
    echo.reacting_to_failing(incremented(13)).expect_failure("unlucky")
    local msg = raised(function() echo.reacting_to_failing(incremented(2)) end)
    has(msg, "expected the reaction to fail")
    has(msg, "Echo echo-k1")
    msg = raised(function() echo.reacting_to_failing(incremented(13)).expect_failure("lucky day") end)
    has(msg, 'does not match "lucky day"')
  end)

  it("refuses an event the aggregate has no reaction to, naming the ones it has", function()
    local msg = raised(function() echo.reacting_to{ type = "CounterViewed" } end)
    has(msg, "has no reaction to counter.CounterViewed")
    has(msg, "counter.Incremented, echo.Echoed")
    has(msg, "toolkit_spec.lua:")
    msg = raised(function() echo.reacting_to{ type = "Nobody" } end)
    has(msg, "no aggregate of the set applies event type 'Nobody'")
  end)
end)

describe("cascade", function()
  local function increment(by)
    return { aggregate_type = "counter", aggregate_id = "k1", type = "Increment",
             data = { by = by } }
  end

  it("runs a command, the reactions to its events and their commands", function()
    local c = app.cascade(increment(2), { given = {
      { type = "Incremented", aggregate_id = "k1", data = { by = 5 } } } })
      .expect_commands{ { type = "Increment", verdict = "accepted", depth = 0 },
                        { type = "Echo", aggregate_id = "echo-k1", verdict = "accepted", depth = 1 } }
      .expect_events{ { type = "Incremented", aggregate_type = "counter", sequence = 2 },
                      { type = "Echoed", aggregate_type = "echo", data = { by = 2 } } }
      .expect_state("counter", "k1", { n = 7 })
      .expect_state("echo", "echo-k1", { n = 1 })
    -- one correlation id through the whole chain; each step caused by the last
    local first, echoed = c.events[1], c.events[2]
    assert.are.equal(c.commands[1].command.id, first.correlation_id)
    assert.are.equal(first.correlation_id, echoed.correlation_id)
    assert.are.equal(c.commands[2].command.id, echoed.causation_id)
    assert.are.equal(first.id, c.commands[2].command.metadata.causation_id)
  end)

  it("records a rejection in the chain as an answer", function()
    app.cascade(increment(-1))
      .expect_commands{ { verdict = "accepted" },
                        { type = "Echo", verdict = "rejected", error = "echo refuses negatives" } }
      .expect_events{ { type = "Incremented" } }
  end)

  it("shows the whole chain when an expectation does not hold", function()
    local msg = raised(function()
      app.cascade(increment(2)).expect_events{ { type = "Incremented" } }
    end)
    has(msg, "expected 1 event, the chain has 2")
    has(msg, 'counter k1 Increment {"by":2}: accepted')
    has(msg, '#1 Echoed {"by":2,"loop":false}')
    msg = raised(function() app.cascade(increment(2)).expect_state("echo", "echo-k1", { n = 2 }) end)
    has(msg, "state.n: expected 2, got 1")
    msg = raised(function()
      app.cascade(increment(2)).expect_commands{ {}, { verdict = "rejected" } }
    end)
    has(msg, "commands[2].verdict: expected \"rejected\", got \"accepted\"")
  end)

  it("fails at once when a reaction or a command fails, showing the chain so far", function()
    local msg = raised(function() app.cascade(increment(13)) end)
    has(msg, "the reaction of echo to counter.Incremented failed (a bug): ")
    has(msg, "unlucky number")
    has(msg, "counter k1 Increment")
    has(msg, "toolkit_spec.lua:")
    msg = raised(function() app.cascade{ aggregate_type = "counter", type = "Crash" } end)
    has(msg, "counter test-1 Crash failed (a bug)")
  end)

  it("stops a loop of reactions at the depth limit", function()
    local msg = raised(function() app.cascade(increment(99)) end)
    has(msg, "deeper than depth 8")
    has(msg, "not followed")
    msg = raised(function() app.cascade(increment(99), { depth = 3 }) end)
    has(msg, "deeper than depth 3")
  end)

  it("needs the command's aggregate type", function()
    local msg = raised(function() app.cascade{ type = "Increment" } end)
    has(msg, "cascade: the command needs the aggregate_type")
  end)
end)
