#!/usr/bin/env bash
# `evlua test` runs a project's own specs with evlua's Lua modules, with no
# install and no LUA_PATH: from the build tree, and from an install under
# any prefix; it exits with busted's status.
set -euo pipefail
build=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 EVLUA_BUSTED

# a project as the README's "Your own project" lays it out
proj=$work/bank
mkdir -p "$proj/aggregates" "$proj/projections" "$proj/spec"
cat > "$proj/aggregates/account.lua" <<'EOF'
return {
  type = "account",
  initial = function() return { balance = 0 } end,
  apply = { Deposited = function(s, e) s.balance = s.balance + e.data.amount end },
  handle = {
    Deposit = function(s, cmd, ctx)
      if cmd.data.amount <= 0 then return ctx.reject("amount must be positive") end
      return { { type = "Deposited", data = { amount = cmd.data.amount } } }
    end,
  },
}
EOF
cat > "$proj/spec/account_spec.lua" <<'EOF'
local testing = require("evlua.testing")
local app = testing.load{ root = "." }
describe("account", function()
  it("deposits", function()
    app.aggregate("account").when{ type = "Deposit", data = { amount = 5 } }
      .expect_events{ { type = "Deposited", data = { amount = 5 } } }
      .expect_state{ balance = 5 }
  end)
  it("refuses nothing", function()
    app.aggregate("account").when{ type = "Deposit", data = { amount = 0 } }
      .expect_rejection("positive")
  end)
end)
EOF

run() { # run DIR EVLUA ARGS...: output in $work/out, status in $rc
    local dir=$1 bin=$2
    shift 2
    set +e
    (cd "$dir" && "$bin" test "$@") > "$work/out" 2>&1
    rc=$?
    set -e
}

# from the build tree, in the project: ./spec by default
run "$proj" "$build/evlua"
[ "$rc" = 0 ] || { cat "$work/out"; fail "evlua test (build tree) exits $rc on passing specs"; }
grep -q '2 successes / 0 failures' "$work/out" || { cat "$work/out"; fail "both specs ran"; }

# busted's arguments go through; a DIR may come first
run "$proj" "$build/evlua" spec -o TAP
[ "$rc" = 0 ] || { cat "$work/out"; fail "evlua test DIR -o TAP exits $rc"; }
grep -q '^1\.\.2$' "$work/out" || { cat "$work/out"; fail "TAP output for DIR"; }

# a failing spec: busted's status, the spec named
sed -i 's/balance = 5/balance = 6/' "$proj/spec/account_spec.lua"
run "$proj" "$build/evlua" -o TAP
[ "$rc" = 1 ] || { cat "$work/out"; fail "evlua test exits $rc (not busted's 1) on one failing spec"; }
grep -q '^not ok 1 - account deposits' "$work/out" || { cat "$work/out"; fail "the failing spec is named"; }
sed -i 's/balance = 6/balance = 5/' "$proj/spec/account_spec.lua"

# help, and a clear word when there are no specs
run "$proj" "$build/evlua" --help
[ "$rc" = 0 ] && grep -q 'usage: evlua test' "$work/out" || { cat "$work/out"; fail "evlua test --help"; }
"$build/evlua" --help | grep -q '^  test ' || fail "evlua --help lists test"
mkdir -p "$work/empty"
run "$work/empty" "$build/evlua"
[ "$rc" = 2 ] && grep -q 'no spec directory' "$work/out" || { cat "$work/out"; fail "no ./spec: exit 2 ($rc)"; }
run "$proj" "$build/evlua" nosuchdir
[ "$rc" = 2 ] && grep -q "nosuchdir" "$work/out" || { cat "$work/out"; fail "a missing DIR: exit 2 ($rc)"; }
EVLUA_BUSTED=/nonexistent/busted run "$proj" "$build/evlua"
[ "$rc" = 2 ] && grep -q 'busted' "$work/out" || { cat "$work/out"; fail "no busted: exit 2 ($rc)"; }

# from an install under a prefix of the user's own (not /usr/local)
cmake --install "$build" --prefix "$work/usr" > "$work/install.log" || { cat "$work/install.log"; fail "cmake --install"; }
run "$proj" "$work/usr/bin/evlua"
[ "$rc" = 0 ] || { cat "$work/out"; fail "evlua test (installed) exits $rc"; }
grep -q '2 successes / 0 failures' "$work/out" || { cat "$work/out"; fail "both specs ran (installed)"; }
# ...and it uses the installed modules, not the build tree's
grep -q "$work/usr" <(cd "$proj" && "$work/usr/bin/evlua" test --paths) || fail "the installed evlua uses its own modules"
echo "ok: evlua test runs a project's specs from the build tree and an install"
