#!/usr/bin/env bash
# Hot reload on SIGHUP, in a process running the host like five pipelines
# (tests/c/reload_driver.c): a changed script takes over; a broken one is
# refused, logged with file:line, and the old set stays in service. Each
# reload is one summary in the log, not one per pipeline.
set -euo pipefail
driver=$1
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/aggregates" "$work/projections"
probe() { # probe ANSWER -> an aggregate script answering ANSWER
    cat > "$work/aggregates/probe.lua" <<LUA
return {
  type = "probe",
  initial = function() return {} end,
  neutral = { "Probed" },
  apply = {},
  handle = { Probe = function() return { { type = "Probed", data = { answer = "$1" } } } end },
}
LUA
}
fail() { echo "FAIL: $*"; echo "--- stdout"; cat "$work/out"; echo "--- stderr"; cat "$work/err"; exit 1; }

# wait_line N: wait until stdout has N lines
wait_line() {
    for _ in $(seq 1 250); do
        [ "$(wc -l < "$work/out")" -ge "$1" ] && return 0
        sleep 0.02
    done
    fail "expected $1 lines of output"
}

probe one
"$driver" "$work" 5 > "$work/out" 2> "$work/err" &
pid=$!
wait_line 1
grep -q '^answer={"answer":"one"}' "$work/out" || fail "the first set answers one"
hash1=$(sed -n 1p "$work/out" | sed 's/.*hash=//')

probe two
kill -HUP "$pid"
wait_line 2
sed -n 2p "$work/out" | grep -q '^answer={"answer":"two"}' || fail "after SIGHUP the new set answers two"
hash2=$(sed -n 2p "$work/out" | sed 's/.*hash=//')
[ "$hash1" != "$hash2" ] || fail "the new set has a new hash"
sleep 0.3 # the other pipelines reload too
grep -q "msg=\"scripts reloaded\" hash=$hash2" "$work/err" || fail "a log line names the new set's hash"
[ "$(grep -c 'msg="scripts reloaded"' "$work/err")" = 1 ] || fail "one line per reload, not one per pipeline"

# broken: a syntax error on line 3 of a second script
printf 'return {\n  type = "other",\n  initial = function( return {} end,\n}\n' > "$work/aggregates/other.lua"
kill -HUP "$pid"
wait_line 3
sed -n 3p "$work/out" | grep -q "^answer={\"answer\":\"two\"} hash=$hash2\$" || fail "a broken set is refused and the old one stays"
grep -q 'other.lua:3:' "$work/err" || fail "the refusal names file and line"
sleep 0.3
[ "$(grep -c 'script reload refused' "$work/err")" = 1 ] || fail "one refusal line for five pipelines"
[ "$(grep -c 'other.lua:3:' "$work/err")" = 1 ] || fail "each problem logged once"

# fixed again: the next SIGHUP loads it
rm "$work/aggregates/other.lua"
probe three
kill -HUP "$pid"
wait_line 4
sed -n 4p "$work/out" | grep -q '^answer={"answer":"three"}' || fail "a fixed set loads on the next SIGHUP"

kill -TERM "$pid"
wait "$pid" || fail "the process exits 0 on SIGTERM"
echo "ok: reload took over, refused a broken set, kept serving"
