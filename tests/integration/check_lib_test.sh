#!/usr/bin/env bash
# The layout of README "Your own project": lib/ next to aggregates/ is
# where require() looks when the config names no `lib`, as the busted
# specs (testing.load) assume; with `lib` set, only that directory; with
# neither, require names what is missing. A project of aggregates only
# needs no empty projections/ (nor the reverse); with neither directory
# there, check says where it looked. Environment overrides that are not
# valid name the variable, not the file.
set -uo pipefail
evlua=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
out=$dir/out
fail() { echo "FAIL: $*"; echo "--- output"; cat "$out"; exit 1; }
mkdir -p "$dir/p/aggregates" "$dir/p/projections" "$dir/p/lib" "$dir/p/other"
printf 'return { hello = function() return "hi" end }\n' > "$dir/p/lib/util.lua"
cat > "$dir/p/aggregates/thing.lua" <<'LUA'
local util = require("util")
return {
  type = "thing",
  initial = function() return {} end,
  apply = { Did = function(s, e) end },
  handle = {
    Do = function(s, cmd) return { { type = "Did", data = { x = util.hello() } } } end,
  },
}
LUA
printf 'return { kafka = { ["bootstrap.servers"] = "127.0.0.1:9092" } }\n' > "$dir/p/evlua.lua"
cd "$dir/p"

"$evlua" check -c evlua.lua > "$out" 2>&1 || fail "lib/ is the default library directory"
grep -q '^ok: 1 aggregates' "$out" || fail "check says ok"
"$evlua" check > "$out" 2>&1 || fail "without -c too"

printf 'return { lib = "other" }\n' > evlua.lua
"$evlua" check -c evlua.lua > "$out" 2>&1 && fail "a configured lib replaces the default"
grep -q "module 'util' not found" "$out" || fail "require names the module"

mv lib lib.off
printf 'return {}\n' > evlua.lua
"$evlua" check -c evlua.lua > "$out" 2>&1 && fail "no lib/: require fails"
grep -q "module 'util' not found" "$out" || fail "require names the module"
mv lib.off lib
rmdir projections
"$evlua" check > "$out" 2>&1 || fail "aggregates only: no projections/ needed"
grep -q '^ok: 1 aggregates, 0 projections' "$out" || fail "check says ok"
mkdir projections
mv aggregates aggregates.off
"$evlua" check > "$out" 2>&1 || fail "projections only: no aggregates/ needed"
rmdir projections
"$evlua" check > "$out" 2>&1 && fail "neither directory: an error"
grep -q "aggregates: cannot open the aggregate directory" "$out" || fail "names aggregates"
grep -q "projections: cannot open the projection directory" "$out" || fail "names projections"
printf 'return { aggregates = "nope" }\n' > evlua.lua
mkdir projections
"$evlua" check -c evlua.lua > "$out" 2>&1 && fail "a configured directory that is missing: an error"
grep -q "nope: cannot open the aggregate directory" "$out" || fail "names it"
printf 'return {}\n' > evlua.lua
EVLUA_LOG_LEVEL=verbose "$evlua" check -c evlua.lua > "$out" 2>&1
[ $? -eq 2 ] || fail "EVLUA_LOG_LEVEL=verbose: exit 2"
grep -q "EVLUA_LOG_LEVEL: 'verbose' is not a level" "$out" || fail "names the variable"
EVLUA_INSTANCE='bad name!' "$evlua" check -c evlua.lua > "$out" 2>&1
[ $? -eq 2 ] || fail "EVLUA_INSTANCE='bad name!': exit 2"
grep -q "EVLUA_INSTANCE is not a valid name" "$out" || fail "names the variable"
printf 'return { instance = "bad name!" }\n' > evlua.lua
"$evlua" check -c evlua.lua > "$out" 2>&1
grep -q "evlua.lua: instance: is not a valid name" "$out" || fail "names the key"
echo "ok: check_lib"
