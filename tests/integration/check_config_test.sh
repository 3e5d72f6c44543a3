#!/usr/bin/env bash
# evlua check refuses what evlua run would refuse, or silently ignore, in a
# config: a misspelt librdkafka property and a non-loopback gateway.listen
# without tokens are config errors (exit 2, naming the key), as at run's
# start.
# No broker, no database: check connects to neither.
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

echo "ok: check_config"
