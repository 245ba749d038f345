#!/usr/bin/env bash
# Herald and Nchan side by side: the same workloads from `herald bench`, against both servers,
# in one run, each server pinned to one core and the load to the other. Beside them, the
# machine's own floor, measured in the same run: the kernel's cost of one loopback write
# (bench/kernel_floor.py) and a hub that does nothing but one write per subscriber
# (bench/floor_hub.py). Writes docs/benchmarks.md and docs/benchmarks-fanout.svg.
#
#   bash bench/compare.sh            # full run, about 10 minutes once built
#   QUICK=1 bash bench/compare.sh    # short runs, to check the script itself
#   PROTO_REPEAT=1 bash bench/compare.sh   # one round (not REPEAT) of the TLS and HTTP/2 block
#   SERVER_BIN=/path/to/old/herald DOCS_DIR=/tmp/before bash bench/compare.sh
#                                    # another herald build as the server (a "before" run); the
#                                    # load generator is still this tree's
#
# Needs root (or sudo) once, to install nginx and Nchan from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
HERALD_PORT=${HERALD_PORT:-18400}
NCHAN_PORT=${NCHAN_PORT:-18401}
FLOOR_PORT=${FLOOR_PORT:-18402}
QUICK=${QUICK:-0}
DOCS_DIR=${DOCS_DIR:-docs}
if [ "$QUICK" = 1 ]; then
    DURATION=2s; IDLE=2000; RATES="50 max"; BIG=2000; REPEAT=${REPEAT:-1}
else
    DURATION=10s; IDLE=19000; RATES="20 50 100 200 500 max"; BIG=10000; REPEAT=${REPEAT:-3}
fi

# --- servers ------------------------------------------------------------------------------
if [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
    echo "== installing nginx and Nchan (Debian packages nginx-light, libnginx-mod-nchan)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light libnginx-mod-nchan >/dev/null
    # The package starts a default site on port 80; this script runs its own nginx.
    $SUDO systemctl stop nginx 2>/dev/null || $SUDO pkill -x nginx || true
fi

echo "== building herald (release)"
cargo build --release --quiet
HERALD="${CARGO_TARGET_DIR:-target}/release/herald"
SERVER_BIN=${SERVER_BIN:-$HERALD}

WORK=$(mktemp -d)
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
SERVER_PIDS=""
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT

start_herald() {
    # The memory store, as Nchan keeps its messages in memory; one worker thread. Both servers
    # keep 10,000 events per channel, so that a subscriber the load generator reads late in a
    # saturating run is not pushed past what history holds (Herald would tell it how many it
    # skipped; the run would count them as lost).
    HERALD_HISTORY__STORE=memory HERALD_HISTORY__SIZE=10000 HERALD_TLS__ENABLED=${HERALD_TLS__ENABLED:-false} taskset -c "$SERVER_CPU" "$SERVER_BIN" serve --listen "127.0.0.1:$HERALD_PORT" --workers 1 \
        --log-level warn 2>"$WORK/herald.log" &
    SERVER_PIDS=$!
    URLS=(--sub-url "http://127.0.0.1:$HERALD_PORT/sse/{channel}" --pub-url "http://127.0.0.1:$HERALD_PORT/sse/{channel}" --body json)
    wait_for_port "$HERALD_PORT"
}

# Herald with TLS on (a temporary self-signed certificate; the bench does not check it):
# herald-tls is HTTP/1.1 over TLS, herald-h2 HTTP/2 over TLS (by ALPN, as browsers connect),
# herald-h2c HTTP/2 without TLS. Publishers use HTTP/1.1 on the same listener throughout.
start_herald_tls() {
    HERALD_TLS__ENABLED=true start_herald
    URLS=(--sub-url "https://127.0.0.1:$HERALD_PORT/sse/{channel}" --pub-url "https://127.0.0.1:$HERALD_PORT/sse/{channel}" --body json)
}
start_herald-tls() { start_herald_tls; }
start_herald-h2() { start_herald_tls; URLS+=(--http2); }
start_herald-h2c() { start_herald; URLS+=(--http2); }

start_nchan() {
    mkdir -p "$WORK/nchan"
    sed "s#@PORT@#$NCHAN_PORT#; s#@DIR@#$WORK/nchan#g" bench/nchan.conf >"$WORK/nchan/nginx.conf"
    taskset -c "$SERVER_CPU" nginx -p "$WORK/nchan" -c "$WORK/nchan/nginx.conf" -e "$WORK/nchan/error.log" &
    wait_for_port "$NCHAN_PORT"
    local master
    master=$(cat "$WORK/nchan/nginx.pid")
    SERVER_PIDS="$master,$(pgrep -P "$master" | paste -sd,)"
    URLS=(--sub-url "http://127.0.0.1:$NCHAN_PORT/sub/{channel}" --pub-url "http://127.0.0.1:$NCHAN_PORT/pub/{channel}" --body raw)
}

start_floor() {
    taskset -c "$SERVER_CPU" python3 bench/floor_hub.py "$FLOOR_PORT" 2>"$WORK/floor.log" &
    SERVER_PIDS=$!
    URLS=(--sub-url "http://127.0.0.1:$FLOOR_PORT/sub/{channel}" --pub-url "http://127.0.0.1:$FLOOR_PORT/pub/{channel}" --body raw)
    wait_for_port "$FLOOR_PORT"
}

stop_server() {
    if [ -n "$SERVER_PIDS" ]; then
        kill "${SERVER_PIDS%%,*}" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "${SERVER_PIDS%%,*}" 2>/dev/null || break; sleep 0.1; done
        # Whatever is left (a worker still closing connections) goes now: the next server must
        # not share the core with it.
        for pid in ${SERVER_PIDS//,/ }; do kill -9 "$pid" 2>/dev/null || true; done
        for _ in $(seq 50); do pgrep -f "nginx: worker|herald serve --listen|floor_hub.py" >/dev/null || break; sleep 0.1; done
        SERVER_PIDS=""
    fi
}

wait_for_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

# run_bench <server> <workload name> <bench args...>: one run, its JSON line kept with its command.
run_bench() {
    local server=$1 name=$2
    shift 2
    local cmd=(taskset -c "$LOAD_CPU" "$HERALD" bench "$@" "${URLS[@]}" --server-pid "$SERVER_PIDS")
    echo "-- $server $name: ${cmd[*]}"
    "${cmd[@]}" | tee "$WORK/last.txt" | sed -n '1,/^{/p' | grep -v '^{' || true
    local json
    json=$(tail -n 1 "$WORK/last.txt")
    printf '{"server":"%s","workload":"%s","command":"%s","report":%s}\n' "$server" "$name" "${cmd[*]}" "$json" >>"$RESULTS/all.jsonl"
}

# fresh_run <server> <workload name> <fanout args...>: one saturating fan-out run on a server
# started for it alone.
fresh_run() {
    local server=$1 name=$2
    shift 2
    "start_$server"
    run_bench "$server" "$name" fanout "$@" --duration "$DURATION"
    stop_server
}

# kernel_floor: the kernel's cost of one small loopback write, in this run (last line is JSON),
# over 1,000 connections (the 1 x 1,000 workloads) and over 9,000 (as near to the 1,000 x 10
# workload's 10,000 as the open-file limit allows: the script holds both ends of each).
kernel_floor() {
    local args
    for args in "1000 200" "9000 30"; do
        echo "-- kernel floor: python3 bench/kernel_floor.py $args"
        # shellcheck disable=SC2086
        python3 bench/kernel_floor.py $args | tee "$WORK/last.txt" | grep -v '^{' || true
        local json
        json=$(tail -n 1 "$WORK/last.txt")
        # A failed measurement is reported and left out, rather than breaking the report at the end.
        if python3 -c 'import json, sys; json.loads(sys.argv[1])' "$json" 2>/dev/null; then
            printf '{"server":"kernel","workload":"floor","command":"python3 bench/kernel_floor.py %s","report":%s}\n' \
                "$args" "$json" >>"$RESULTS/all.jsonl"
        else
            echo "kernel_floor.py $args failed; this measurement is left out of the report" >&2
        fi
    done
}

kernel_floor
for server in herald nchan; do
    echo "== $server: idle and the rate sweep"
    # Idle first, on a fresh server, so that its baseline memory is the server's own.
    "start_$server"
    run_bench "$server" idle idle --connections "$IDLE" --hold 3s
    stop_server

    "start_$server"
    for rate in $RATES; do
        r=$rate; [ "$rate" = max ] && r=0
        run_bench "$server" "1x1000@$rate" fanout --subscribers 1000 --channels 1 --rate "$r" --duration "$DURATION"
    done
    stop_server
done
# The workloads the targets are judged on, each on a fresh server (so that none starts while the
# server is still flushing to, or closing, the previous run's connections), $REPEAT times, the
# servers taking turns: this VM's figures move by tens of percent from one run to the next, and
# by up to 2x from one day to the next, so the report takes medians of runs made side by side.
for rep in $(seq "$REPEAT"); do
    echo "== round $rep of $REPEAT"
    for server in herald nchan floor; do
        fresh_run "$server" "1x1000@50-fresh" --subscribers 1000 --channels 1 --rate 50
    done
    for server in herald nchan; do
        fresh_run "$server" "1x1000@max1" --subscribers 1000 --channels 1 --publishers 1
        fresh_run "$server" "1x1000@max4" --subscribers 1000 --channels 1 --publishers 4
        fresh_run "$server" "1x1000@max16" --subscribers 1000 --channels 1 --publishers 16
        fresh_run "$server" "1000x10@max16" --subscribers 10000 --channels 1000 --publishers 16
    done
done
# The same fan-out over TLS and HTTP/2, beside plain HTTP/1.1 run in the same rounds, and what
# an idle subscriber costs over each (over HTTP/2: streams, 100 to a connection).
echo "== over TLS and HTTP/2"
for server in herald herald-tls herald-h2 herald-h2c; do
    "start_$server"
    run_bench "$server" proto-idle idle --connections "$IDLE" --hold 3s
    stop_server
done
for rep in $(seq "${PROTO_REPEAT:-$REPEAT}"); do
    for server in herald herald-tls herald-h2 herald-h2c; do
        fresh_run "$server" "proto-1x1000@max4" --subscribers 1000 --channels 1 --publishers 4
        fresh_run "$server" "proto-1000x10@max16" --subscribers 10000 --channels 1000 --publishers 16
    done
done
for server in herald nchan; do
    "start_$server"
    run_bench "$server" "1x$BIG@50" fanout --subscribers "$BIG" --channels 1 --rate 50 --duration "$DURATION"
    stop_server
done
kernel_floor

echo "== writing $DOCS_DIR/benchmarks.md"
# The raw reports are kept beside the document, so that it can be rebuilt (or checked) from them:
#   python3 bench/report.py docs/benchmarks.jsonl docs
mkdir -p "$DOCS_DIR"
cp "$RESULTS/all.jsonl" "$DOCS_DIR/benchmarks.jsonl"
python3 bench/report.py "$DOCS_DIR/benchmarks.jsonl" "$DOCS_DIR" \
    --herald-version "$("$SERVER_BIN" --version) ($([ "$SERVER_BIN" = "$HERALD" ] && git rev-parse --short HEAD || echo "$SERVER_BIN"))" \
    --nchan-version "$(dpkg-query -W -f='${Version}' libnginx-mod-nchan) on $(nginx -v 2>&1 | sed 's/.*: //')" \
    --quick "$QUICK"
