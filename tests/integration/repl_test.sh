#!/usr/bin/env bash
# evlua repl through a pipe: a command shows its events, state and SQL; a
# failing command does not end the session; :reload picks up an edited
# script and shows what changed; a broken script is refused.
set -euo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/aggregates" "$src/projections" "$work/"
fail() { echo "FAIL: $*"; echo "--- output"; cat "$work/out"; exit 1; }

# The session is fed line by line; the edit happens between two reads.
{
    echo 'customer c1 RegisterCustomer {"name":"Ann","email":"ann@example.com"}'
    echo 'customer c1 UpdateCustomerProfile {name = "", address = "x"}'
    echo 'cart k1 CheckOutCart'
    echo 'nosuch x Y'
    echo ':state customer c1'
    sleep 0.5
    # edit: a new command type in the customer aggregate
    sed -i 's/^  handle = {$/  neutral = { "Ponged" },\n  handle = {\n    Ping = function() return { { type = "Ponged", data = {} } } end,/' \
        "$work/aggregates/customer.lua"
    echo ':reload'
    echo 'customer c1 Ping'
    sleep 0.5
    echo 'return {' >> "$work/aggregates/cart.lua"
    echo ':reload'
    echo 'customer c1 Ping'
    echo ':quit'
} | "$evlua" repl --scripts "$work" > "$work/out" 2>&1 || fail "repl exits 0"

grep -q '^accepted: 1 event, version 0 -> 1' "$work/out" || fail "the command is accepted"
grep -q '"type": "CustomerRegistered"' "$work/out" || fail "the event is shown with its envelope"
grep -q '"causation_id": ' "$work/out" || fail "the envelope has a causation id"
grep -q 'customer_profile: INSERT INTO customers' "$work/out" || fail "the projection SQL is shown"
grep -q "params: \$1='c1' \$2='Ann'" "$work/out" || fail "the SQL parameters are shown"
grep -q '^rejected: name must not be empty' "$work/out" || fail "a rejection does not end the session"
grep -q '^rejected: cart is empty' "$work/out" || fail "the next command still runs"
grep -q "^rejected: unknown aggregate type 'nosuch'" "$work/out" || fail "unknown aggregate types are named"
grep -q '^version 1' "$work/out" || fail ":state shows the version"
grep -q '^reloaded: [0-9a-f]* -> [0-9a-f]*' "$work/out" || fail ":reload reloads"
grep -q '+ aggregate customer command Ping' "$work/out" || fail ":reload shows what changed"
grep -q '"type": "Ponged"' "$work/out" || fail "the reloaded script runs"
grep -q '^reload failed; keeping the loaded scripts' "$work/out" || fail "a broken set is refused"
grep -q 'aggregates/cart.lua:[0-9]*:' "$work/out" || fail "the refusal names file:line"
[ "$(grep -c '"type": "Ponged"' "$work/out")" = 2 ] || fail "the old set stays after a refused reload"
echo "ok: repl through a pipe"
