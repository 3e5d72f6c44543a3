#!/usr/bin/env bash
# scripts/demo, the first thing every user runs, end to end with its own
# Kafka broker and PostgreSQL (in a temporary EVLUA_RUN_DIR, with the
# evlua binary of this build):
# - on the examples it exits 0 and shows what it promises: titled tables,
#   the kill -9 ledger (one row per event, printed both ways), the parked
#   aggregate and its retry, the wall time; it stops what it started;
# - a step that does not do what it shows fails the demo: with an example
#   script broken so that a rejection it shows no longer happens, it exits
#   non-zero naming the step, and stops its services all the same;
# - --help prints the usage without running anything.
# usage: demo_test.sh EVLUA_BINARY   (EVLUA_DEMO: the demo to test)
set -euo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
demo=${EVLUA_DEMO:-$src/scripts/demo}
work=$(mktemp -d)
export EVLUA_RUN_DIR=$work/run EVLUA_BIN=$evlua
cleanup() {
    # only what the demo started here, should it have left anything
    "$src/scripts/kafka" stop > /dev/null 2>&1 || true
    "$src/scripts/pg" stop > /dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
has() { grep -qF -- "$1" "$2" || { cat "$2"; fail "the output lacks '$1'"; }; }

# --help: usage, exit 0, nothing started
"$demo" --help > "$work/help" 2>&1 || fail "--help exits non-zero"
has "--keep" "$work/help"
has "EVLUA_RUN_DIR" "$work/help"
[ ! -e "$EVLUA_RUN_DIR" ] || fail "--help started something in $EVLUA_RUN_DIR"
if "$demo" --no-such-option > "$work/bad" 2>&1; then fail "an unknown option is accepted"; fi

# the whole demo on the examples
rc=0
"$demo" > "$work/out" 2>&1 || rc=$?
[ $rc = 0 ] || { cat "$work/out"; fail "the demo exits $rc on the intact examples"; }
for line in \
    "/readyz 200 after" \
    "customers (projection customer_profile" \
    "shipping_addresses (only CustomerAddressChanged" \
    "welcome_kits (a later feature" \
    "kit-c-ann  WelcomeKitShipped" \
    "order/o-1  OrderConfirmed" \
    "payment/pay-o-2  PaymentDeclined" \
    "stock/mug  StockReleased" \
    "one correlation id across three aggregates" \
    "customers after the reload" \
    "kill -9 after" \
    "ledger per account after kill -9 and restart" \
    "a-bob waits at 2500" \
    "a-bob's deposits arrived, in order" \
    "== done: every step checked" \
    "wall time: "; do
    has "$line" "$work/out"
done
events=$(sed -n 's/.*money events on account.events (read_committed): \([0-9]*\)$/\1/p' "$work/out")
rows=$(sed -n 's/.*ledger rows: *\([0-9]*\) (\([0-9]*\) distinct events)$/\1 \2/p' "$work/out")
[ -n "$events" ] && [ "$events" -gt 2000 ] || { cat "$work/out"; fail "no count of the burst's events (got '$events')"; }
[ "$rows" = "$events $events" ] || fail "ledger rows '$rows' for $events events"
# the kill came while the burst was being processed
killed=$(sed -n 's/.*kill -9 after [0-9.]*s: \([0-9]*\) ledger rows.*/\1/p' "$work/out")
[ -n "$killed" ] && [ "$killed" -lt "$events" ] || fail "the kill was not mid-stream ($killed of $events rows)"
"$src/scripts/kafka" status > /dev/null 2>&1 && fail "the demo left its broker running"
"$src/scripts/pg" status > /dev/null 2>&1 && fail "the demo left PostgreSQL running"

# a step that fails fails the demo: customer.lua accepts an empty name
mkdir -p "$work/broken"
cp -r "$src/aggregates" "$src/projections" "$work/broken/"
sed -i 's/return ctx.reject("name must not be empty")/return {}/' "$work/broken/aggregates/customer.lua"
rc=0
EVLUA_DEMO_SCRIPTS=$work/broken "$demo" > "$work/out2" 2>&1 || rc=$?
[ $rc != 0 ] || { cat "$work/out2"; fail "the demo exits 0 although a step failed"; }
has "FAILED (exit $rc) at step: commands -> atomic events" "$work/out2"
has "expected a rejection matching 'name must not be empty'" "$work/out2"
grep -q "== done" "$work/out2" && fail "a failed demo still prints '== done'"
"$src/scripts/kafka" status > /dev/null 2>&1 && fail "the failed demo left its broker running"
"$src/scripts/pg" status > /dev/null 2>&1 && fail "the failed demo left PostgreSQL running"
echo "ok: the demo shows its promises and fails loudly on a failed step ($(sed -n 's/^wall time: //p' "$work/out"))"
