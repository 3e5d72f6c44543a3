#!/usr/bin/env bash
# evlua repl through a pipe: a command shows its events, state and SQL; a
# failing command does not end the session; :reload picks up an edited
# script and shows what changed; a broken script is refused. Reactions: a
# command shows what each reaction would send; :follow runs the chain.
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
grep -q 'customer_profile: INSERT INTO "customers"' "$work/out" || fail "the projection SQL is shown"
grep -q "params: \$1='c1' \$2='ann@example.com' \$3='Ann'" "$work/out" || fail "the SQL parameters are shown"
grep -q '(evlua.upsert: the projector sends the rows of this table, columns and key in a batch as one INSERT ... SELECT \* FROM unnest' "$work/out" || fail "an upsert says it is coalesced"
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

# Reactions, on the examples: the commands a reaction would send, and the
# order process followed both ways.
{
    echo 'customer c1 RegisterCustomer {"name":"Ann","email":"ann@example.com","address":"1 Main St"}'
    echo 'customer c1 UpdateCustomerProfile {"address":"2 Hill St"}'
    echo ':state shipment kit-c1'
    echo ':brief'
    echo 'stock mug ReceiveStock {quantity = 5}'
    echo ':follow order o1 PlaceOrder {customer = "c1", sku = "mug", quantity = 2, amount = 2500, card = "tok"}'
    echo ':follow order o2 PlaceOrder {customer = "c1", sku = "mug", quantity = 2, amount = 250000, card = "tok"}'
    echo ':state stock mug'
    echo ':follow depth 2'
    echo ':follow order o3 PlaceOrder {customer = "c1", sku = "mug", quantity = 1, amount = 100, card = "tok"}'
    echo ':follow depth 0'
    echo ':sql'
    echo ':help'
} | "$evlua" repl --scripts "$src" > "$work/out" 2>&1 || fail "repl exits 0 (reactions)"

grep -q '^  reactions (not run; :follow runs the chain):' "$work/out" || fail "a command shows its reactions"
grep -q '^    shipment, to CustomerAddressChanged: ShipWelcomeKit kit-c1 {"address":"1 Main St","customer":"c1"}' "$work/out" ||
    fail "the reaction's command is shown with its data"
grep -q '"causation_id": ' "$work/out" || fail "the reaction's command shows its metadata"
[ "$(grep -c '^    shipment, to CustomerAddressChanged: no command' "$work/out")" = 1 ] ||
    fail "a second address sends no kit, and says so"
grep -q '^no events for shipment kit-c1' "$work/out" || fail "reactions are shown, not run"
grep -q '^order o1 PlaceOrder .*: accepted, version 0 -> 1$' "$work/out" || fail ":follow prints the first command"
grep -q '^    stock mug ReserveStock {"order":"o1","quantity":2}: accepted, version 1 -> 2$' "$work/out" ||
    fail ":follow indents the reaction's command under its event"
grep -q '^                order o1 ConfirmOrder {"payment":"pay-o1"}: accepted' "$work/out" || fail "the chain ends confirmed"
grep -q '^followed 5 commands (5 accepted, 0 rejected, 0 failed), 5 events, 4 reaction steps deep$' "$work/out" ||
    fail ":follow sums up the confirmed chain"
grep -q '^              #1 PaymentDeclined' "$work/out" || fail "the second order is declined"
grep -q '^                    stock mug ReleaseStock {"order":"o2"}: accepted' "$work/out" || fail "a declined order releases its stock"
grep -q '"reservedTotal": 2' "$work/out" || fail ":follow changes the session's aggregates (o1 reserved, o2 released)"
grep -q 'payment pay-o3 Charge .*: not followed (deeper than the depth limit)' "$work/out" || fail ":follow depth limits the chain"
grep -q '1 command not followed (depth limit 2: :follow depth N)' "$work/out" || fail ":follow says what it did not follow"
grep -q '^error: :follow depth needs a number from 1 to 100' "$work/out" || fail "a bad depth is refused"
grep -q '^no SQL: the last command (order o3 PlaceOrder) ran in :follow' "$work/out" || fail ":sql after :follow says why"
grep -q '^  :follow TYPE ID COMMAND \[DATA\]' "$work/out" || fail ":help lists :follow"

# Reactions that fail, commands they send that are rejected, and a loop,
# on the toolkit's fixture (echo reacts to counter, and to itself).
{
    echo 'counter k1 Increment {"by":7}'
    echo ':brief'
    echo 'counter k1 Increment {"by":0}'
    echo ':follow counter k1 Increment {"by":-1}'
    echo ':follow counter k1 Increment {"by":13}'
    echo ':follow counter k2 Increment {"by":99}'
    echo ':state counter k1'
} | "$evlua" repl --scripts "$src/tests/spec/fixtures/toolkit" > "$work/out" 2>&1 || fail "repl exits 0 (failing reactions)"
grep -q '^    echo, to Incremented: FAILED: .*command 1 has an unknown field "dat"' "$work/out" ||
    fail "a reaction's invalid command is shown as its failure"
grep -q '^accepted: 1 event, version 1 -> 2' "$work/out" || fail "a command with no reaction command is accepted"
grep -q '^    echo echo-k1 Echo {"by":-1,"loop":false}: rejected: echo refuses negatives$' "$work/out" ||
    fail ":follow shows a rejected reaction command"
grep -q '^    reaction of echo FAILED: .*unlucky number' "$work/out" || fail ":follow shows a failed reaction"
grep -q '1 reaction FAILED$' "$work/out" || fail ":follow counts failed reactions"
grep -q '^followed 9 commands (9 accepted, 0 rejected, 0 failed), 9 events, 8 reaction steps deep; 1 command not followed (depth limit 8' "$work/out" ||
    fail "a loop of reactions stops at the default depth 8"
grep -q '^version 4$' "$work/out" || fail "the session goes on after failed reactions"
# The config's reactions.max_commands holds in the REPL as in evlua run
mkdir -p "$work/cap/aggregates"
cat > "$work/cap/aggregates/src.lua" <<'LUA'
return { type = "src", initial = function() return {} end, apply = {},
  neutral = { "Poked" },
  handle = { Poke = function() return { { type = "Poked", data = {} } } end } }
LUA
cat > "$work/cap/aggregates/dst.lua" <<'LUA'
return { type = "dst", initial = function() return {} end, apply = {},
  neutral = { "Noted" },
  handle = { Note = function() return { { type = "Noted", data = {} } } end },
  react = { ["src.Poked"] = function(e)
    return { { type = "Note", aggregate_id = "a" }, { type = "Note", aggregate_id = "b" } }
  end } }
LUA
printf 'return { aggregates = "%s/cap/aggregates", projections = {},\n  reactions = { max_commands = %s } }\n' \
    "$work" 1 > "$work/cap/one.lua"
printf 'return { aggregates = "%s/cap/aggregates", projections = {},\n  reactions = { max_commands = %s } }\n' \
    "$work" 2 > "$work/cap/two.lua"
echo 'src s1 Poke' | "$evlua" repl -c "$work/cap/one.lua" > "$work/out" 2>&1 || fail "repl exits 0 (cap 1)"
grep -q 'FAILED: .*returned 2 commands.*reactions.max_commands = 1' "$work/out" ||
    fail "reactions.max_commands = 1 in the config refuses a reaction's 2 commands"
echo 'src s1 Poke' | "$evlua" repl -c "$work/cap/two.lua" > "$work/out" 2>&1 || fail "repl exits 0 (cap 2)"
grep -q 'FAILED' "$work/out" && fail "reactions.max_commands = 2 allows 2 commands"
grep -q 'dst, to Poked: Note b' "$work/out" || fail "both reaction commands are shown under the cap"
echo "ok: repl through a pipe"
