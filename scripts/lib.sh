# lib.sh - shared helpers of evlua's shell scripts. Sourced, not run.
#
# EVLUA_RUN_DIR (default: <repo>/.run) holds the state of the local
# services started by scripts/kafka and scripts/pg: pid files, the
# bootstrap address and the conninfo. Their data live in temporary
# directories recorded there and removed by `stop`.

set -euo pipefail

EVLUA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EVLUA_RUN_DIR=${EVLUA_RUN_DIR:-$EVLUA_ROOT/.run}
EVLUA_CACHE_DIR=${EVLUA_CACHE_DIR:-$EVLUA_ROOT/.cache}

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
say() { echo "$(basename "$0"): $*" >&2; }

# Is something listening on 127.0.0.1:$1?
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print a TCP port on 127.0.0.1 that nothing listens on. The window between
# this check and the server binding is closed by the callers retrying
# start-up when the bind fails.
free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    die "no free TCP port found on 127.0.0.1"
}

# Is the process in pid file $1 alive?
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the process group led by the pid in file $1: TERM, wait up to $2
# seconds, then KILL. Returns once nothing of the group is left.
stop_group() {
    local pidfile=$1 grace=${2:-20} pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 $((grace * 10))); do
        kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
        say "pid $pid did not stop within ${grace}s: killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

# Run "$@" as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
