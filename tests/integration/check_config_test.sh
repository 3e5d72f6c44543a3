#!/usr/bin/env bash
# evlua check refuses what evlua run would refuse, or silently ignore, in a
# config: a misspelt librdkafka property and a non-loopback gateway.listen
# without tokens are config errors (exit 2, naming the key), as at run's
# start; a projection.each.NAME with no projection NAME loaded and a
# gateway token's aggregates entry naming no loaded aggregate type are
# errors of check (exit 1) and warnings of run, with the same text, since
# run must not refuse a set from which a script was removed on purpose.
# run names projections left without a database and refuses a set that
# leaves nothing to run. No broker, no database: neither is asked.
set -uo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
out=$dir/out
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; echo "--- output"; cat "$out"; exit 1; }

# check TEXT: evlua check with the config TEXT on the repository's
# scripts, output in $out, exit code in $rc
check() {
    printf 'return %s\n' "$1" > "$dir/evlua.lua"
    "$evlua" check -c "$dir/evlua.lua" --scripts "$src" > "$out" 2>&1
    rc=$?
}
has() { grep -qF -- "$1" "$out" || fail "expected: $1"; }

check '{ kafka = { ["bootstrap.srvers"] = "127.0.0.1:9092" } }'
[ "$rc" -eq 2 ] || fail "a misspelt kafka property: exit 2 (got $rc)"
has "evlua: $dir/evlua.lua: kafka property 'bootstrap.srvers': No such configuration property"
check '{ kafka = { ["bootstrap.servers"] = "127.0.0.1:9092", ["linger.ms"] = "soon" } }'
[ "$rc" -eq 2 ] || fail "a bad kafka value: exit 2 (got $rc)"
has "kafka property 'linger.ms'"
check '{ kafka = { ["bootstrap.servers"] = "127.0.0.1:1", ["linger.ms"] = 5 } }'
[ "$rc" -eq 0 ] || fail "valid kafka properties pass, no broker needed (got $rc)"

check '{ gateway = { listen = "0.0.0.0:18081" } }'
[ "$rc" -eq 2 ] || fail "a non-loopback gateway without tokens: exit 2 (got $rc)"
has "evlua: $dir/evlua.lua: gateway.listen \"0.0.0.0:18081\": no gateway.tokens configured"
check '{ gateway = { listen = "127.0.0.1:18081" } }'
[ "$rc" -eq 0 ] || fail "a loopback gateway without tokens passes (got $rc)"
check '{ gateway = { listen = "localhost:18081" } }'
[ "$rc" -eq 2 ] || fail "a listen run refuses: exit 2 (got $rc)"
has "HOST must be an IPv4 address"

tok='sha256 = string.rep("a", 64)'
check "{ projection = { each = { todoz = { threads = 1 } } } }"
[ "$rc" -eq 1 ] || fail "projection.each of no loaded projection: exit 1 (got $rc)"
has "$dir/evlua.lua: projection.each.todoz: no projection of that name is loaded (loaded: balances, customer_profile,"
check "{ projection = { each = { ledger = { threads = 1 } } } }"
[ "$rc" -eq 0 ] || fail "projection.each of a loaded projection passes (got $rc)"
check "{ gateway = { tokens = { { principal = 'web', $tok, aggregates = { 'customer', 'todoz' } } } } }"
[ "$rc" -eq 1 ] || fail "a token's aggregates naming no loaded type: exit 1 (got $rc)"
has "$dir/evlua.lua: gateway.tokens[1] (web): aggregates names 'todoz': no aggregate type of that name is loaded (loaded: account, cart, customer,"
grep -q "'customer'" "$out" && fail "a loaded type is not reported"
check "{ gateway = { tokens = { { principal = 'web', $tok, aggregates = '*' } } } }"
[ "$rc" -eq 0 ] || fail "aggregates = \"*\" passes (got $rc)"

# run: the same text as a warning, and it starts anyway (no broker: the
# command side waits for one; killed once the warnings are out)
printf 'return { kafka = { ["bootstrap.servers"] = "127.0.0.1:1" },
  projection = { each = { todoz = { threads = 1 } } },
  gateway = { tokens = { { principal = "web", %s, aggregates = "todoz" } } } }\n' \
    "$tok" > "$dir/evlua.lua"
"$evlua" run -c "$dir/evlua.lua" --scripts "$src" > "$out" 2>&1 &
pid=$!
for _ in $(seq 50); do
    grep -q "gateway.tokens\[1\]" "$out" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
sleep 0.5
kill -0 "$pid" 2>/dev/null || { wait "$pid"; fail "run refused to start (exit $?)"; }
{ kill -KILL "$pid"; wait "$pid"; } 2>/dev/null # a clean stop waits for the broker
has "level=warn msg=\"$dir/evlua.lua: projection.each.todoz: no projection of that name is loaded (loaded: balances,"
has "level=warn msg=\"$dir/evlua.lua: gateway.tokens[1] (web): aggregates names 'todoz': no aggregate type of that name is loaded"
# run decides what to start from the scripts and the config: projections
# without a database are named, and a set that leaves nothing to run is a
# usage error (exit 2) before any broker is asked
mkdir -p "$dir/ponly/aggregates" "$dir/ponly/projections"
cp "$src/projections/customer_profile.lua" "$dir/ponly/projections/"
printf 'return { aggregates = "%s", projections = "%s" }\n' \
    "$dir/ponly/aggregates" "$dir/ponly/projections" > "$dir/ponly/evlua.lua"
env -u EVLUA_PG_CONNINFO "$evlua" run -c "$dir/ponly/evlua.lua" > "$out" 2>&1
rc=$?
[ "$rc" -eq 2 ] || fail "projections without a database, nothing else: exit 2 (got $rc)"
has "projections loaded but no database configured"
has "nothing to run"
echo "ok: check_config"
