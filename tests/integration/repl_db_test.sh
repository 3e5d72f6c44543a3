#!/usr/bin/env bash
# evlua repl against PostgreSQL: :db applies every event of the session
# (not only the last command's) through the projections and shows a
# query's rows, without NOTICE noise; :sql after a rejection says so
# instead of showing the previous command's SQL; :brief shortens answers.
set -euo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
run=${EVLUA_RUN_DIR:?run through ctest}
conninfo=$(cat "$run/pg/conninfo")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; echo "--- output"; cat "$work/out"; exit 1; }

cat > "$work/evlua.lua" <<LUA
return {
  aggregates = "$src/aggregates", projections = "$src/projections",
  postgres = "$conninfo",
}
LUA
{
    echo 'customer c1 RegisterCustomer {"name":"Ann","email":"ann@example.com"}'
    echo 'customer c2 RegisterCustomer {"name":"Bob","email":"bob@example.com"}'
    echo 'customer c2 UpdateCustomerProfile {"name":""}'
    echo ':sql'
    echo ':db SELECT id, name FROM customers ORDER BY id'
    echo ':brief'
    echo 'customer c3 RegisterCustomer {"name":"Cy","email":"cy@example.com"}'
    echo ':sql'
    echo ':quit'
} | "$evlua" repl -c "$work/evlua.lua" > "$work/out" 2>&1 || fail "repl exits 0"

grep -q '^no SQL: the last command (customer c2 UpdateCustomerProfile) was rejected' "$work/out" ||
    fail ":sql after a rejection says so"
grep -q '^  c1 | Ann$' "$work/out" || fail ":db applied the first command's events too"
grep -q '^  c2 | Bob$' "$work/out" || fail ":db applied the second command's events"
grep -q '^  (2 rows)$' "$work/out" || fail ":db shows the query's row count"
grep -q '(rolled back)' "$work/out" || fail ":db rolls back"
if grep -qi 'NOTICE' "$work/out"; then fail "no NOTICE lines"; fi
grep -q '^brief answers on' "$work/out" || fail ":brief toggles"
grep -q '^  1 CustomerRegistered$' "$work/out" || fail "brief: the event types"
[ "$(grep -c '"causation_id"' "$work/out")" = 2 ] || fail "brief: no envelopes after :brief"
grep -q -- "-- customer_profile" "$work/out" || fail ":sql still shows the last accepted command's SQL in brief mode"
# nothing stays behind: the transaction was rolled back
if psql "$conninfo" -tAc "SELECT to_regclass('customers') IS NOT NULL AND EXISTS (SELECT 1 FROM customers WHERE id = 'c1')" 2>/dev/null | grep -q t; then
    fail ":db left rows behind"
fi
echo "ok: repl :db, :sql, :brief"
