#!/usr/bin/env bash
# evlua check catches the script author's traps of issue 15: an event type
# handle emits without an apply entry is an error (exit 1, file:line); an
# apply entry no handler emits, a neutral entry also in apply and a
# projection on an event type no aggregate emits are warnings (exit 0);
# a correct set and the examples pass without a word of warning. A
# reaction to an aggregate type the set lacks is an error, to an event
# its source never emits a warning; bad react tables do not load.
set -uo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
fx=$src/tests/fixtures/scripts
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail() { echo "FAIL: $*"; echo "--- output"; cat "$out"; exit 1; }

# check DIR: run evlua check on DIR, output in $out, exit code in $rc
check() { "$evlua" check --scripts "$1" > "$out" 2>&1; rc=$?; }
has() { grep -qF -- "$1" "$out" || fail "expected: $1"; }

check "$fx/traps_typo"
[ "$rc" -eq 1 ] || fail "a handle emitting an event type apply lacks: exit 1 (got $rc)"
has "$fx/traps_typo/aggregates/account.lua:18: event type 'MoneyWithdrawn' can be emitted by handle but has no apply entry"
has "did you mean 'MoneyWithdrawnn'?"
has "$fx/traps_typo/aggregates/account.lua:9: warning: apply.MoneyWithdrawnn: no handler emits this event type"

check "$fx/traps_warn"
[ "$rc" -eq 0 ] || fail "warnings alone: exit 0 (got $rc)"
has "$fx/traps_warn/aggregates/account.lua:10: warning: apply.AccountFrozen: no handler emits this event type"
has "$fx/traps_warn/aggregates/account.lua:7: warning: neutral lists 'MoneyDeposited', which has an apply entry"
has "$fx/traps_warn/projections/balances.lua:8: warning: on.MoneyDeposted: no aggregate of this script set emits this event type"
has "did you mean 'MoneyDeposited'?"
[ "$(grep -c ': warning: ' "$out")" -eq 3 ] || fail "exactly three warnings"

# reactions (issue 17): a source type the set lacks is an error, an
# event its source never emits a warning; the commands reactions build
# (in react or in a helper) are no events handle emits
rfx=$src/tests/fixtures/react
check "$rfx/lint"
[ "$rc" -eq 1 ] || fail "a reaction to an unknown aggregate type: exit 1 (got $rc)"
has "$rfx/lint/aggregates/shipment.lua:20: react[\"custmer.CustomerAddressChanged\"]: no aggregate of this script set has type 'custmer'"
has "did you mean 'customer'?"
has "$rfx/lint/aggregates/shipment.lua:23: warning: react[\"customer.CustomerAdressChanged\"]: aggregate type 'customer' ($rfx/lint/aggregates/customer.lua) never emits event type 'CustomerAdressChanged'"
has "did you mean 'CustomerAddressChanged'?"
grep -q "ShipWelcomeKit" "$out" && fail "a reaction's command is no event handle emits"
[ "$(grep -c ': warning: ' "$out")" -eq 1 ] || fail "exactly one reaction warning"
check "$rfx/badload"
[ "$rc" -ne 0 ] || fail "bad react tables do not load"
has "$rfx/badload/aggregates/keys.lua: react key \"NoDot\" is not of the form \"TYPE.EventName\""
has "$rfx/badload/aggregates/values.lua: react.customer.Fine is a string, expected a function"
has "$rfx/badload/aggregates/notable.lua: react is a number, expected a table of functions"

check "$fx/traps_clean"
[ "$rc" -eq 0 ] || fail "a correct set passes (got $rc)"
grep -q 'warning' "$out" && fail "a correct set has no warnings"

check "$src"
[ "$rc" -eq 0 ] || fail "the examples pass (got $rc)"
grep -q 'warning' "$out" && fail "the examples have no warnings"
echo "ok: check_traps"
