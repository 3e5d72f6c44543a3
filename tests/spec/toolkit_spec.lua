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
