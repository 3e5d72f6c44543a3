#!/usr/bin/env bash
# evlua run started before its broker (a first-week classic): /readyz
# says the brokers cannot be reached, not just "starting"; the log names
# the failed connection once, not once per Kafka client every second; and
# SIGTERM while it waits stops it at once with exit 0 (nothing was
# processed, nothing is lost). No broker, no database: the port is one
# nothing listens on.
set -uo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/scripts/lib.sh" # free_port
set +e
dir=$(mktemp -d)
trap 'kill -KILL "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; echo "--- log"; cut -c1-300 "$dir/log"; exit 1; }
kport=$(free_port)
mport=$(free_port)
[ "$kport" != "$mport" ] || mport=$(free_port)
cat > "$dir/evlua.lua" <<LUA
return {
  aggregates = "$src/aggregates",
  kafka = { ["bootstrap.servers"] = "127.0.0.1:$kport" },
  metrics = { listen = "127.0.0.1:$mport" },
  shutdown_timeout_ms = 20000,
}
LUA
env -u EVLUA_KAFKA_BOOTSTRAP "$evlua" run -c "$dir/evlua.lua" > "$dir/log" 2>&1 &
pid=$!
ready=""
for _ in $(seq 50); do
    ready=$(curl -s "127.0.0.1:$mport/readyz")
    case "$ready" in *"cannot reach Kafka"*) break ;; esac
    sleep 0.2
done
case "$ready" in
*"\"commands\":{\"ready\":false,\"reason\":\"starting: cannot reach Kafka: "*"127.0.0.1:$kport"*) ;;
*) fail "readyz names the unreachable broker: $ready" ;;
esac
sleep 4 # every client has tried a few times by now
n=$(grep -c 'facility=FAIL' "$dir/log")
[ "$n" -ge 1 ] || fail "the failed connection is logged"
[ "$n" -le 2 ] || fail "the failed connection is logged once, not by every client ($n lines)"
start=$(date +%s)
kill -TERM "$pid"
wait "$pid"
rc=$?
took=$(($(date +%s) - start))
[ "$rc" -eq 0 ] || fail "SIGTERM while waiting for the broker: exit 0 (got $rc)"
[ "$took" -le 5 ] || fail "and at once (took ${took}s)"
grep -q 'msg="command processor stopped before it was ready"' "$dir/log" ||
    fail "the command processor says it stopped before it was ready"
grep -q 'shutdown deadline passed' "$dir/log" && fail "no pipeline outlived the stop"
echo "ok: nobroker"
