-- One-shot commands answer; their log shows only when something is wrong
-- (warnings and errors), unless -v asks for more.
local bin = os.getenv("EVLUA_BIN") or "build/evlua"
local src = os.getenv("EVLUA_SOURCE_DIR") or "."

local function run(args, env)
  local p = io.popen((env or "") .. " " .. bin .. " " .. args .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return out:gsub("rc=%d+\n$", ""), rc
end

describe("one-shot commands", function()
  it("check prints its answer without info log lines", function()
    local out, rc = run("check --scripts " .. src, "env -u EVLUA_LOG_LEVEL")
    assert.are.equal(0, rc, out)
    assert.matches("^ok: ", out)
    assert.is_nil(out:find("level=info", 1, true), out)
  end)

  it("check -v adds them", function()
    local out, rc = run("check -v --scripts " .. src, "env -u EVLUA_LOG_LEVEL")
    assert.are.equal(0, rc, out)
    assert.matches('level=info msg="scripts loaded"', out, 1, true)
  end)

  it("EVLUA_LOG_LEVEL still wins", function()
    local out, rc = run("check --scripts " .. src, "EVLUA_LOG_LEVEL=info")
    assert.are.equal(0, rc, out)
    assert.matches('level=info msg="scripts loaded"', out, 1, true)
  end)

  it("send to an unreachable broker says so without librdkafka's chatter", function()
    local out, rc = run("send customer c-1 Noop '{}' --wait --timeout 3",
      "env -u EVLUA_LOG_LEVEL EVLUA_KAFKA_BOOTSTRAP=127.0.0.1:1")
    assert.are_not.equal(0, rc, out)
    assert.is_nil(out:find("level=", 1, true), out)
    assert.matches("evlua send: ", out, 1, true)
  end)
end)
