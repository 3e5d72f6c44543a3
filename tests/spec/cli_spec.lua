-- The evlua binary's command line: help, version, exit codes
-- (0 ok, 1 runtime failure, 2 usage or configuration error).
local bin = os.getenv("EVLUA_BIN") or "build/evlua"

local src = os.getenv("EVLUA_SOURCE_DIR") or "."

-- run(args [, env]): evlua's output (stdout and stderr) and exit code;
-- env is a prefix such as "env -u EVLUA_LOG_LEVEL"
local function run(args, env)
  local p = io.popen((env or "") .. " " .. bin .. " " .. args .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return out:gsub("rc=%d+\n$", ""), rc
end

describe("evlua", function()
  it("prints its usage on --help and exits 0", function()
    local out, rc = run("--help")
    assert.are.equal(0, rc)
    assert.matches("usage: evlua", out, 1, true)
    assert.matches("Exit codes", out, 1, true)
  end)

  it("prints its version on --version", function()
    local out, rc = run("--version")
    assert.are.equal(0, rc)
    assert.matches("^evlua %d+%.%d+%.%d+\nlibrdkafka ", out)
  end)

  it("exits 2 naming the command when the command is unknown", function()
    local out, rc = run("frobnicate")
    assert.are.equal(2, rc)
    assert.matches("unknown command 'frobnicate'", out, 1, true)
  end)

  it("exits 2 with the usage when no command is given", function()
    local out, rc = run("")
    assert.are.equal(2, rc)
    assert.matches("usage: evlua", out, 1, true)
  end)

  describe("check", function()
    it("exits 0 on the example scripts and lists them", function()
      local out, rc = run("check --scripts " .. (os.getenv("EVLUA_SOURCE_DIR") or "."))
      assert.are.equal(0, rc, out)
      assert.matches("aggregate customer", out, 1, true)
      assert.matches("projection customer_profile", out, 1, true)
    end)

    it("exits 1 with one file:line: message per problem", function()
      local out, rc = run("check --scripts tests/fixtures/scripts/broken")
      assert.are.equal(1, rc)
      assert.matches("broken/aggregates/a_syntax.lua:3: ", out, 1, true)
      assert.matches("b_handle_string.lua: handle.UpdateProfile is a string, expected a function",
        out, 1, true)
      assert.matches('aggregate type "dup" is already defined', out, 1, true)
      assert.matches('projection name "dup" is already defined', out, 1, true)
    end)

    it("exits 2 on an unknown option", function()
      local _, rc = run("check --frobnicate")
      assert.are.equal(2, rc)
    end)
  end)
end)

-- evlua send: option values out of range are refused (exit 2), never
-- clamped into a command that means something else.
describe("evlua send --expected-version", function()
  for _, v in ipairs({ "99999999999999999999", "9007199254740992", "-1", "12x", "" }) do
    it("refuses " .. (v == "" and "an empty value" or v) .. " with exit 2", function()
      local out, rc = run("send customer c-1 Noop '{}' --expected-version '" .. v .. "'")
      assert.are.equal(2, rc, out)
      assert.matches("bad --expected-version", out, 1, true)
    end)
  end
end)

-- One-shot commands answer; their log shows only when something is wrong
-- (warnings and errors), unless -v asks for more.
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

-- evlua verify: usage errors exit 2 before any broker is asked (the runs
-- against a broker are tests/c/test_verify.c)
describe("evlua verify", function()
  it("prints its usage on --help and exits 0", function()
    local out, rc = run("verify --help")
    assert.are.equal(0, rc)
    assert.matches("usage: evlua verify", out, 1, true)
    assert.matches("--scripts NEWDIR", out, 1, true)
  end)

  it("is listed in evlua --help", function()
    local out = run("--help")
    assert.matches("verify [-c CONFIG] --scripts NEWDIR", out, 1, true)
  end)

  it("exits 2 without --scripts", function()
    local out, rc = run("verify")
    assert.are.equal(2, rc)
    assert.matches("--scripts NEWDIR is required", out, 1, true)
  end)

  for _, v in ipairs({ "0", "-3", "x", "" }) do
    it("refuses --limit '" .. v .. "' with exit 2", function()
      local out, rc = run("verify --scripts " .. src .. " --limit '" .. v .. "'")
      assert.are.equal(2, rc)
      assert.matches("--limit wants a positive number", out, 1, true)
    end)
  end

  it("exits 2 on an aggregate type the scripts do not have", function()
    local out, rc = run("verify --scripts " .. src .. " --aggregate-type nope")
    assert.are.equal(2, rc)
    assert.matches("has no aggregate of type nope", out, 1, true)
  end)

  it("exits 2 when the new scripts do not load", function()
    local out, rc = run("verify --scripts " .. src .. "/tests/fixtures/scripts/broken")
    assert.are.equal(2, rc)
    assert.matches("a_syntax.lua:3: ", out, 1, true)
  end)
end)
