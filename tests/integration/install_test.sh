#!/usr/bin/env bash
# Deployment files work: `cmake --install` installs the binary, the Lua
# library (busted can load evlua.testing from the install) and the docs;
# the systemd unit passes systemd-analyze verify; the example production
# config loads (with its secrets from the environment) and its secrets do
# not show up in what evlua prints.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cmake --install "$build" --prefix "$work/usr" > "$work/install.log" || { cat "$work/install.log"; fail "cmake --install"; }
for f in bin/evlua lib/lua/5.4/evlua_host.so share/lua/5.4/evlua/testing.lua \
         share/doc/evlua/README.md share/doc/evlua/config.md \
         share/doc/evlua/examples/evlua.service share/doc/evlua/examples/aggregates/customer.lua; do
    [ -e "$work/usr/$f" ] || fail "installed $f"
done
"$work/usr/bin/evlua" --version | grep -q '^librdkafka ' || fail "the installed binary runs"

# the installed Lua library works without the source tree
cd "$work"
LUA_PATH="$work/usr/share/lua/5.4/?.lua;;" LUA_CPATH="$work/usr/lib/lua/5.4/?.so;;" \
    lua5.4 -e '
      local t = require("evlua.testing")
      local app = t.load{ root = "'"$work"'/usr/share/doc/evlua/examples" }
      app.aggregate("customer").when{ type = "RegisterCustomer",
        data = { name = "Ann", email = "a@x.io" } }.expect_events{ { type = "CustomerRegistered" } }
      print("installed library ok")' 2>/dev/null | grep -q "installed library ok" || fail "evlua.testing runs from the install"

# systemd unit: systemd-analyze verify needs the binary at its path;
# check it against a copy that points to the installed one
sed "s|/usr/local/bin/evlua|$work/usr/bin/evlua|g" "$src/deploy/evlua.service" > "$work/evlua.service"
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' "$work/evlua.service" || fail "the unit reloads with SIGHUP"
if command -v systemd-analyze >/dev/null; then
    # unknown users and missing /etc/evlua are fine here; syntax is not
    out=$(systemd-analyze verify "$work/evlua.service" 2>&1 || true)
    if echo "$out" | grep -Ei 'unknown (key|section)|invalid|failed to parse|bad' ; then
        fail "systemd-analyze verify: $out"
    fi
    echo "systemd-analyze verify: ok"
else
    fail "systemd-analyze is not installed (scripts/deps installs systemd)"
fi

# the production config loads; without its secrets it refuses to
cd "$src"
if "$work/usr/bin/evlua" check -c deploy/evlua.prod.lua --scripts "$src" > "$work/o" 2>&1; then
    fail "the production config loads without KAFKA_SASL_PASSWORD"
fi
grep -q 'KAFKA_SASL_PASSWORD must be set' "$work/o" || { cat "$work/o"; fail "naming the missing secret"; }
KAFKA_SASL_PASSWORD=kafka-s3cret PG_PASSWORD=pg-s3cret \
    "$work/usr/bin/evlua" check -c <(sed 's|file = "/var/log/evlua/evlua.log"|file = nil|' deploy/evlua.prod.lua) \
    --scripts "$src" > "$work/o" 2>&1 || { cat "$work/o"; fail "the production config loads with its secrets"; }
! grep -q 's3cret' "$work/o" || fail "secrets are printed"
echo "ok: install, unit file and production config"
