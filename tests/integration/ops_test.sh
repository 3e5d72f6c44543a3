#!/usr/bin/env bash
# Operations, end to end against the real broker and PostgreSQL:
# - /metrics parses as Prometheus text and its counters move as commands
#   and events flow; /healthz answers;
# - /readyz turns 503 (naming the projection) while PostgreSQL is down and
#   200 again after it is back;
# - SIGTERM under load exits 0, and after a restart every command has
#   exactly one result and every accepted command's events exist once;
# - the log never contains the database password.
set -euo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
run=${EVLUA_RUN_DIR:?EVLUA_RUN_DIR must point at the fixtures\' run dir}
bootstrap=$(cat "$run/kafka/bootstrap")
conninfo=$(cat "$run/pg/conninfo")
password=${conninfo##*password=}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- log (tail)"; tail -30 "$work/log" 2>/dev/null; exit 1; }

tag="ops$$"
mkdir -p "$work/aggregates" "$work/projections"
sed "s/type = \"customer\"/type = \"$tag\"/" "$src/aggregates/customer.lua" > "$work/aggregates/c.lua"
sed -e "s/name = \"customer_profile\"/name = \"${tag}_profile\"/" \
    -e "s/customers/${tag}_customers/g" "$src/projections/customer_profile.lua" > "$work/projections/p.lua"
. "$src/scripts/lib.sh" # free_port
port=$(free_port)
cat > "$work/evlua.lua" <<LUA
return {
  aggregates = "$work/aggregates", projections = "$work/projections",
  kafka = { ["bootstrap.servers"] = "$bootstrap" },
  postgres = "$conninfo",
  commands = { transactional_id = "$tag.0", group_id = "$tag.commands", partitions = 3 },
  projection = { group_prefix = "$tag.projection." },
  metrics = { listen = "127.0.0.1:$port" },
  shutdown_timeout_ms = 20000,
}
LUA
start() { "$evlua" run -c "$work/evlua.lua" >> "$work/log" 2>&1 & pid=$!; }
metric() { # metric NAME-AND-LABELS-REGEX -> value (0 when absent)
    curl -s "http://127.0.0.1:$port/metrics" | grep -E "^$1 " | awk '{s+=$2} END {print s+0}'
}
wait_until() { # wait_until SECONDS CMD...
    local t=$1; shift
    for _ in $(seq 1 $((t * 10))); do "$@" && return 0; sleep 0.1; done
    return 1
}
start
wait_until 60 curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || fail "/healthz answers"
wait_until 60 curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || fail "/readyz turns ready"

# a command through send, then the counters
"$evlua" send -c "$work/evlua.lua" --wait "$tag" a1 RegisterCustomer '{"name":"Ann","email":"a@x.io"}' >/dev/null \
    || fail "a command is accepted"
curl -s "http://127.0.0.1:$port/metrics" > "$work/m1"
python3 - "$work/m1" <<'PY' || fail "/metrics parses as Prometheus text"
import re, sys
line_re = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.eE+-]+$|^[^ ]+ [+-]Inf$|^[^ ]+ NaN$')
n = 0
for l in open(sys.argv[1]):
    l = l.rstrip("\n")
    if not l or l.startswith("# HELP ") or l.startswith("# TYPE "):
        continue
    if not line_re.match(l):
        print("bad line:", l); sys.exit(1)
    n += 1
assert n > 10, n
PY
accepted1=$(metric "evlua_commands_total\{[^}]*outcome=\"accepted\"[^}]*\}")
[ "${accepted1%.*}" -ge 1 ] || fail "evlua_commands_total counts the accepted command"
aggs1=$(metric "evlua_store_aggregates" || true) # none: 0, and the message below
[ "${aggs1%.*}" -ge 1 ] || fail "evlua_store_aggregates counts the aggregate of the accepted command (got $aggs1)"
sbytes1=$(metric "evlua_store_bytes" || true)
[ "${sbytes1%.*}" -ge 100 ] || fail "evlua_store_bytes counts its state and command id (got $sbytes1)"
wait_until 30 sh -c "[ \"\$(curl -s http://127.0.0.1:$port/metrics | grep -E '^evlua_projection_events_total\{[^}]*outcome=\"applied\"' | awk '{s+=\$2} END {print s+0}')\" -ge 1 ]" \
    || fail "evlua_projection_events_total counts the applied event"

# every family the docs promise is there
for family in evlua_build_info evlua_scripts_info evlua_commands_total evlua_events_total \
    evlua_command_transactions_total evlua_command_batch_size_bucket evlua_command_batch_seconds_bucket \
    evlua_command_transaction_seconds_bucket evlua_projection_events_total evlua_projection_batches_total \
    evlua_projection_batch_size_bucket evlua_projection_batch_seconds_bucket evlua_parked_aggregates \
    evlua_consumer_lag evlua_lua_handler_seconds_total evlua_lua_memory_bytes \
    evlua_store_bytes evlua_store_aggregates; do
    grep -q "^$family[{ ]" "$work/m1" || fail "/metrics has $family"
done
# SIGHUP: every pipeline counts the reload
kill -HUP "$pid"
wait_until 30 sh -c "[ \$(curl -s http://127.0.0.1:$port/metrics | grep -E '^evlua_script_reloads_total\{[^}]*outcome=\"applied\"' | wc -l) -ge 2 ]" \
    || fail "evlua_script_reloads_total counts the reload of both pipelines"

# load: 6,000 commands over 300 aggregates (a registration, then 19 name
# changes each), fed through kcat (murmur2, as the docs require) over a few
# seconds; SIGTERM lands while they flow; a restart finishes the stream.
n=6000; naggs=300
cat > "$work/feed.py" <<'PY'
import sys, time
tag, n, naggs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(1, n + 1):
    a = "c%d" % (i % naggs)
    if i <= naggs:
        cmd = '{"id":"%s-cmd-%d","type":"RegisterCustomer","aggregate_type":"%s","aggregate_id":"%s","data":{"name":"N%d","email":"n%d@x.io"}}' % (tag, i, tag, a, i, i)
    else:
        cmd = '{"id":"%s-cmd-%d","type":"UpdateCustomerProfile","aggregate_type":"%s","aggregate_id":"%s","data":{"name":"N%d"}}' % (tag, i, tag, a, i)
    sys.stdout.write(a + "\t" + cmd + "\n")
    if i % 100 == 0:
        sys.stdout.flush()
        time.sleep(0.06)
PY
python3 "$work/feed.py" "$tag" "$n" "$naggs" \
    | kcat -b "$bootstrap" -P -t "$tag.commands" -K '\t' -X partitioner=murmur2_random -X linger.ms=5 &
feeder=$!
results_now() {
    kcat -b "$bootstrap" -C -t "$tag.results" -e -q -X isolation.level=read_committed -f '%s\n' 2>/dev/null \
        | grep "\"command_id\":\"$tag-cmd-" || true
}
wait_until 30 sh -c "[ \$(curl -s http://127.0.0.1:$port/metrics | grep -E '^evlua_commands_total\{[^}]*outcome=\"accepted\"' | awk '{s+=\$2} END {print s+0}') -ge 500 ]" \
    || fail "the load starts flowing"
t0=$(date +%s%N)
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
pid=
drain_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ $rc = 0 ] || fail "SIGTERM under load exits 0 (got $rc)"
grep -q 'evlua stopped' "$work/log" || fail "a clean stop is logged"
wait "$feeder" || fail "producing the commands"
before=$(results_now | wc -l)
[ "$before" -lt "$n" ] || fail "SIGTERM did not land under load ($before of $n results already)"
echo "SIGTERM landed after $before of $n results; exit 0 after $drain_ms ms"
start
wait_until 180 sh -c "[ \$(kcat -b $bootstrap -C -t $tag.results -e -q -X isolation.level=read_committed -f '%s\n' 2>/dev/null | grep -c '\"command_id\":\"$tag-cmd-') -ge $n ]" \
    || fail "every command gets a result after the restart (got $(results_now | wc -l))"
results=$(results_now)
[ "$(echo "$results" | grep -o "\"command_id\":\"[^\"]*\"" | sort | uniq -d | wc -l)" = 0 ] || fail "no command has two results"
[ "$(echo "$results" | wc -l)" = "$n" ] || fail "exactly $n results"
accepted=$(echo "$results" | grep -c '"status":"accepted"')
[ "$accepted" = "$n" ] || fail "every command accepted (got $accepted)"
# every accepted command's event exactly once, sequences 1..20 per aggregate
kcat -b "$bootstrap" -C -t "$tag.events" -e -q -X isolation.level=read_committed -f '%k %s\n' 2>/dev/null \
    | grep -E '^c[0-9]+ ' > "$work/events"
python3 - "$work/events" "$n" "$naggs" <<'PY' || fail "events exactly once, contiguous sequences"
import json, sys, collections
n, naggs = int(sys.argv[2]), int(sys.argv[3])
seqs, causes = collections.defaultdict(list), collections.Counter()
for line in open(sys.argv[1]):
    key, value = line.split(" ", 1)
    e = json.loads(value)
    seqs[e["aggregate_id"]].append(e["sequence"])
    causes[e["causation_id"]] += 1
assert len(causes) == n and max(causes.values()) == 1, "one event per command"
assert len(seqs) == naggs, len(seqs)
for a, s in seqs.items():
    assert s == list(range(1, n // naggs + 1)), (a, s)
PY
# the read model saw every last name (projection drained on SIGTERM too)
last_names() {
    psql "$conninfo" -XAtc "SELECT id || '=' || name FROM ${tag}_customers WHERE id LIKE 'c%' ORDER BY id" 2>/dev/null
}
expected=$(for a in $(seq 0 $((naggs - 1))); do
    i=$(( n - naggs + a )); [ "$a" = 0 ] && i=$n; echo "c$a=N$i"; done | sort)
wait_until 60 sh -c "[ \"\$(psql '$conninfo' -XAtc \"SELECT id || '=' || name FROM ${tag}_customers WHERE id LIKE 'c%' ORDER BY id\" | sort)\" = \"$expected\" ]" \
    || fail "the customers table holds every aggregate's last name ($(last_names | wc -l) rows)"

# readiness follows PostgreSQL
"$src/scripts/pg" pause
"$evlua" send -c "$work/evlua.lua" "$tag" a2 RegisterCustomer '{"name":"Bo","email":"b@x.io"}' >/dev/null || true
if ! wait_until 60 sh -c "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/readyz | grep -q 503"; then
    "$src/scripts/pg" resume
    fail "/readyz turns 503 while PostgreSQL is down"
fi
curl -s "http://127.0.0.1:$port/readyz" | grep -q "${tag}_profile" || fail "/readyz names the unready projection"
"$src/scripts/pg" resume
wait_until 60 curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || fail "/readyz is ready again after PostgreSQL is back"

kill -TERM "$pid"; wait "$pid" || fail "the final SIGTERM exits 0"
pid=

# the shutdown deadline: a pipeline stuck with an open transaction (test
# hook) does not hold SIGTERM past shutdown_timeout_ms; exit 1; the command
# it held is handled after a restart
sed 's/shutdown_timeout_ms = 20000/shutdown_timeout_ms = 1500/' "$work/evlua.lua" > "$work/short.lua"
EVLUA_TEST_HANG_BEFORE_COMMIT=1 "$evlua" run -c "$work/short.lua" >> "$work/log" 2>&1 & pid=$!
wait_until 60 curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || fail "ready before the hang"
"$evlua" send -c "$work/evlua.lua" "$tag" a3 RegisterCustomer '{"name":"Cy","email":"c@x.io"}' >/dev/null
wait_until 60 grep -q "hanging with an open transaction" "$work/log" || fail "the test hook hangs the transaction"
t0=$(date +%s%N)
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
pid=
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$rc" = 1 ] || fail "a stop past the deadline exits 1 (got $rc)"
[ "$ms" -lt 10000 ] || fail "the deadline of 1.5 s ended the process (took $ms ms)"
grep -q "shutdown deadline passed" "$work/log" || fail "the deadline is logged"
start
wait_until 60 sh -c "kcat -b $bootstrap -C -t $tag.results -e -q -X isolation.level=read_committed -f '%s\n' 2>/dev/null | grep '\"aggregate_id\":\"a3\"' | grep -q accepted" \
    || fail "the command held at the deadline is handled after a restart"
kill -TERM "$pid"; wait "$pid" || fail "the last SIGTERM exits 0"
pid=

! grep -qF "$password" "$work/log" || fail "the log contains the database password"
echo "ok: metrics, readiness, SIGTERM under load, no secrets in the log"
