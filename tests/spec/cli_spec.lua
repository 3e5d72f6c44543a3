-- The evlua binary's command line: help, version, exit codes
-- (0 ok, 1 runtime failure, 2 usage or configuration error).
local bin = os.getenv("EVLUA_BIN") or "build/evlua"

local function run(args)
  local p = io.popen(bin .. " " .. args .. " 2>&1; echo \"rc=$?\"")
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
