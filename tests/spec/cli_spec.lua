-- The evlua binary's command line: help, version, exit codes
-- (0 ok, 1 runtime failure, 2 usage or configuration error).
local bin = assert(os.getenv("EVLUA_BIN"), "EVLUA_BIN must name the evlua binary")

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
    assert.matches("^evlua %d+%.%d+%.%d+\n$", out)
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
end)
