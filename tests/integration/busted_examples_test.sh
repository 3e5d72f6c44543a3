#!/usr/bin/env bash
# `busted` at the repository root passes on the example scripts, and fails
# (naming the problem) once an example script is broken: run on a copy of
# the repository's scripts, specs and .busted.
set -euo pipefail
busted=$1 build=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/build"
cp -r "$src/aggregates" "$src/projections" "$src/core" "$src/.busted" "$work/"
mkdir -p "$work/tests" && cp -r "$src/tests/spec" "$src/tests/fixtures" "$work/tests/"
cp "$build/evlua_host.so" "$work/build/"
ln -s "$build/evlua" "$work/build/evlua"
cd "$work"
export EVLUA_SOURCE_DIR=$work
"$busted" -o TAP > out.txt 2>&1 || { cat out.txt; echo "FAIL: busted fails on the intact examples"; exit 1; }
grep -q '^1\.\.' out.txt || { cat out.txt; echo "FAIL: no TAP plan"; exit 1; }

# break the customer aggregate: an empty name is now accepted
sed -i 's/return ctx.reject("name must not be empty")/return {}/' aggregates/customer.lua
if "$busted" -o TAP > out2.txt 2>&1; then
    cat out2.txt; echo "FAIL: busted passes although customer.lua is broken"; exit 1
fi
grep -q 'not ok .*rejects an empty name' out2.txt || { cat out2.txt; echo "FAIL: the failing spec is not named"; exit 1; }

# a syntax error: every spec that loads the scripts reports it with file:line
cp "$src/aggregates/customer.lua" aggregates/customer.lua
echo 'return {' >> aggregates/cart.lua
if "$busted" -o TAP > out3.txt 2>&1; then
    cat out3.txt; echo "FAIL: busted passes although cart.lua does not compile"; exit 1
fi
grep -q 'aggregates/cart.lua:[0-9]*:' out3.txt || { cat out3.txt; echo "FAIL: the syntax error is not located"; exit 1; }
echo "ok: busted passes on the examples and fails on broken ones"
