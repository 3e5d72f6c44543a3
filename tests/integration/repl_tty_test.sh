#!/usr/bin/env bash
# evlua repl on a terminal (tmux): a prompt, line editing (the cursor moves
# back and a word is inserted), tab completion of aggregate and command
# types (also after :follow), and history (up arrow) all work.
set -euo pipefail
evlua=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
command -v tmux >/dev/null || { echo "FAIL: tmux is not installed (scripts/deps installs it)"; exit 1; }
sock="evlua-repl-test-$$"
t() { tmux -L "$sock" "$@"; }
trap 't kill-server 2>/dev/null || true' EXIT
fail() { echo "FAIL: $*"; echo "--- screen"; t capture-pane -p -t repl; exit 1; }
wait_for() {
    for _ in $(seq 1 100); do
        t capture-pane -p -t repl | grep -q -- "$1" && return 0
        sleep 0.05
    done
    fail "expected on screen: $1"
}

t -f /dev/null new-session -d -s repl -x 160 -y 50 "cd '$src' && '$evlua' repl --scripts '$src'; sleep 5"
wait_for 'evlua>'
# type the command without the id, move left over the command name and
# data, insert the id: the line editor must put it in the middle
t send-keys -t repl 'customer RegisterCustomer {"name":"Ann","email":"a@x.io"}'
for _ in $(seq 1 48); do t send-keys -t repl Left; done
t send-keys -t repl 'c9 '
t send-keys -t repl Enter
wait_for 'accepted: 1 event, version 0 -> 1'
wait_for '"aggregate_id": "c9"'

# tab completion: "cus<TAB> c9 UpdateCust<TAB>"
t send-keys -t repl 'cus' Tab
t send-keys -t repl ' c9 UpdateCust' Tab
t send-keys -t repl ' {"name":"Bo"}' Enter
wait_for '"newName": "Bo"'

# history: up arrow twice brings back the first command; it is rejected now
t send-keys -t repl Up Up Enter
wait_for 'rejected: customer already registered'
# :follow completes like a plain command line: ":follow cus<TAB> c9 ChangeEm<TAB>"
t send-keys -t repl ':follow cus' Tab
t send-keys -t repl ' c9 ChangeEm' Tab
t send-keys -t repl ' {"email":"bo@x.io"}' Enter
wait_for 'customer c9 ChangeEmail {"email":"bo@x.io"}: accepted, version 2 -> 3'
wait_for 'followed 1 command (1 accepted'
t send-keys -t repl ':quit' Enter
echo "ok: repl line editing, completion and history on a terminal"
