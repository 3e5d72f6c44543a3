-- evlua send: option values out of range are refused (exit 2), never
-- clamped into a command that means something else.
local bin = os.getenv("EVLUA_BIN") or "build/evlua"

local function run(args)
  local p = io.popen(bin .. " " .. args .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return out:gsub("rc=%d+\n$", ""), rc
end

describe("evlua send --expected-version", function()
  for _, v in ipairs({ "99999999999999999999", "9007199254740992", "-1", "12x", "" }) do
    it("refuses " .. (v == "" and "an empty value" or v) .. " with exit 2", function()
      local out, rc = run("send customer c-1 Noop '{}' --expected-version '" .. v .. "'")
      assert.are.equal(2, rc, out)
      assert.matches("bad --expected-version", out, 1, true)
    end)
  end
end)
