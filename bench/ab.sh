#!/usr/bin/env bash
# Two herald builds side by side on the workloads the hot path and the store touch: idle memory,
# fan-out at 50/s and flat out (memory store), and publish-to-receive latency and acknowledged
# rate with the disk store and fsync = "always". The builds take turns, ROUNDS times, the old one
# first in odd rounds and the new one first in even rounds (so that a machine that slows down
# or speeds up over a round favours neither); each run is a fresh server pinned to SERVER_CPU
# with `herald bench` (of the NEW build) on LOAD_CPU.
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY [results.jsonl]
#   python3 bench/ab_report.py results.jsonl     # the figures as a table, with ratios
set -u
OLD=$1 NEW=$2 OUT=${3:-ab.jsonl}
ROUNDS=${ROUNDS:-2} DURATION=${DURATION:-5s} PORT=${PORT:-18500}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
# The servers' log level: `info` includes the access-log lines (one per publish), `warn` not.
LOG_LEVEL=${LOG_LEVEL:-warn}
: >"$OUT"

run() { # build label env... -- bench args...
    local build=$1 label=$2
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local bin=$OLD
    [ "$build" = new ] && bin=$NEW
    local dir
    dir=$(mktemp -d)
    (cd "$dir" && exec env "${envs[@]}" taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$PORT" --workers 1 --log-level "$LOG_LEVEL" 2>/dev/null) &
    local pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
    local json
    json=$(taskset -c "$LOAD_CPU" "$NEW" bench "$@" --sub-url "http://127.0.0.1:$PORT/sse/{channel}" \
        --pub-url "http://127.0.0.1:$PORT/sse/{channel}" --server-pid "$pid" 2>/dev/null | tail -n 1)
    printf '{"build":"%s","label":"%s","report":%s}\n' "$build" "$label" "${json:-null}" >>"$OUT"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rm -rf "$dir"
    sleep 0.5
}

MEM=(HERALD_HISTORY__STORE=memory HERALD_HISTORY__SIZE=10000)
DISK=(HERALD_HISTORY__STORE=disk HERALD_HISTORY__FSYNC=always)
for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS"
    order="old new"
    [ $((round % 2)) -eq 0 ] && order="new old"
    for b in $order; do
        run $b idle "${MEM[@]}" -- idle --connections 5000 --hold 2s
        run $b "1x1000@50" "${MEM[@]}" -- fanout --subscribers 1000 --channels 1 --rate 50 --duration "$DURATION"
        run $b "1x1000@max1" "${MEM[@]}" -- fanout --subscribers 1000 --channels 1 --publishers 1 --duration "$DURATION"
        run $b "1x1000@max16" "${MEM[@]}" -- fanout --subscribers 1000 --channels 1 --publishers 16 --duration "$DURATION"
        run $b "1000x10@max16" "${MEM[@]}" -- fanout --subscribers 10000 --channels 1000 --publishers 16 --duration "$DURATION"
        run $b "disk-always 1x1000@50" "${DISK[@]}" -- fanout --subscribers 1000 --channels 1 --rate 50 --duration "$DURATION"
        run $b "disk-always 1x100 pub1" "${DISK[@]}" -- fanout --subscribers 1 --channels 100 --publishers 1 --duration "$DURATION"
        run $b "disk-always 1x100 pub16" "${DISK[@]}" -- fanout --subscribers 1 --channels 100 --publishers 16 --duration "$DURATION"
    done
done
echo "results in $OUT"
