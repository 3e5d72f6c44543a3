-- Every function of the evlua table that scripts see is documented in
-- core/lua/API.md (as `evlua.NAME` or `evlua.json.NAME`), and the
-- documented ones exist.
local native = require("evlua_host")

local function read(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("a")
  f:close()
  return s
end

local doc = read((os.getenv("EVLUA_SOURCE_DIR") or ".") .. "/core/lua/API.md")

local function names(t, prefix, out)
  for k, v in pairs(t) do
    local name = prefix .. "." .. k
    if type(v) == "table" and getmetatable(v) == nil then
      names(v, name, out)
    else
      out[#out + 1] = name
    end
  end
  return out
end

describe("core/lua/API.md", function()
  local api = names(native.api, "evlua", {})
  table.sort(api)

  it("sees a non-trivial evlua table", function()
    assert.is_true(#api >= 6, "expected at least 6 evlua.* entries, got " .. #api)
  end)

  for _, name in ipairs(api) do
    it("documents " .. name, function()
      assert.is_truthy(doc:find("`" .. name, 1, true),
        name .. " is in the evlua table but not in core/lua/API.md")
    end)
  end

  it("documents nothing that does not exist", function()
    local have = {}
    for _, n in ipairs(api) do have[n] = true end
    for name in doc:gmatch("`(evlua%.[%w_%.]+)") do
      name = name:gsub("%.$", "")
      if name:match("%.%u[%u_]*$") then goto continue end -- a placeholder
      assert.is_true(have[name] ~= nil,
        name .. " is documented in core/lua/API.md but missing from the evlua table")
      ::continue::
    end
  end)
end)
