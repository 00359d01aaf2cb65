#!/usr/bin/env bash
# Cluster benchmark: an origin and 3 edges on this machine, on a real redis-server; the load
# tool's viewers spread over the edges. Prints the viewers connected per edge, each edge's
# server CPU per delivered packet, the origin's TS egress to its edges (it must stay ≈ edges ×
# the stream's bitrate, not viewers ×), and the added latency of one hop (the same RTP payload
# at an origin viewer and at an edge viewer, p50/p99; `one_hop_latency` in tests/cluster.rs).
#
# Usage: benches/cluster.sh    (env: N=100 viewers per edge, S=20 s, BIN=…, NO_BUILD=1)
set -euo pipefail
N=${N:-100}
S=${S:-20}
EDGES=${EDGES:-3}
BASE=${BASE:-18700}
cd "$(dirname "$0")/.."
for tool in ffmpeg ffprobe jq curl redis-server; do
    command -v "$tool" >/dev/null || { echo "cluster.sh: needs $tool" >&2; exit 1; }
done
BIN=${BIN:-target/release/tsbridge}
[[ -n "${NO_BUILD:-}" ]] || cargo build --release --quiet
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tsbridge-cluster.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

TS=$TMP/cluster.ts
ffmpeg -hide_banner -loglevel error -nostdin -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 10 \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p -bf 0 -g 30 -keyint_min 30 -sc_threshold 0 \
    -b:v 1850k -minrate 1850k -maxrate 1850k -bufsize 1850k -c:a libopus -b:a 64k -ac 2 -f mpegts "$TS"
KBPS=$(( $(ffprobe -v error -show_entries format=bit_rate -of default=nw=1:nk=1 "$TS") / 1000 ))

RPORT=$((BASE + 99))
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
sleep 0.5
REDIS=redis://127.0.0.1:$RPORT/0
node() { # index, extra args…
    local i=$1; shift
    "$BIN" serve --listen "127.0.0.1:$((BASE + i))" --ice-udp "127.0.0.1:$((BASE + 50 + i))" \
        --cluster "$REDIS" --public-url "http://127.0.0.1:$((BASE + i))" --cluster-token bench-cluster-secret-0123 \
        --max-viewers 100000 --max-sessions 100000 --max-per-ip 0 "$@" >"$TMP/node$i.log" 2>&1 &
    PIDS+=($!)
    eval "NODE_PID_$i=$!"
}
node 0 --replay "cam=$TS"
for i in $(seq 1 "$EDGES"); do node "$i"; done
sleep 3

echo "stream: ${KBPS} kbit/s; $EDGES edges × $N viewers, ${S} s"
O=http://127.0.0.1:$BASE
before=$(curl -s "$O/streams/cam" | jq .ts_bytes_sent)
t0=$(date +%s.%N)
for i in $(seq 1 "$EDGES"); do
    pid_var=NODE_PID_$i
    "$(dirname "$BIN")/tsbridge-loadtest" --url "http://127.0.0.1:$((BASE + i))/whep/cam" \
        --viewers "$N" --seconds "$S" --ramp 100 --tasks 1 --server-pid "${!pid_var}" --json --quiet \
        >"$TMP/edge$i.json" 2>"$TMP/loadtest$i.log" &
    LT+=($!)
done
wait "${LT[@]}"
t1=$(date +%s.%N)
after=$(curl -s "$O/streams/cam" | jq .ts_bytes_sent)
readers=$(curl -s "$O/streams/cam" | jq .ts_readers)
egress=$(echo "($after - $before) * 8 / ($t1 - $t0) / 1000" | bc -l)
total=0
for i in $(seq 1 "$EDGES"); do
    jq -r --arg i "$i" '"edge \($i): \(.connected) viewers connected, \(.steady.server.us_per_packet // "-") µs/pkt, loss \(.steady.loss_pct // "-") %"' "$TMP/edge$i.json"
    total=$((total + $(jq .connected "$TMP/edge$i.json")))
done
printf 'total viewers: %d; origin TS egress to edges: %.0f kbit/s (%d readers; %d edges × %d kbit/s = %d)\n' \
    "$total" "$egress" "$readers" "$EDGES" "$KBPS" $((EDGES * KBPS))
cleanup
trap - EXIT
HOP_SECONDS=${HOP_SECONDS:-10} TSBRIDGE_REQUIRE_REDIS=1 cargo test --release --quiet --test cluster -- \
    --ignored one_hop_latency --nocapture 2>/dev/null | grep "one hop" || echo "one hop: the measurement failed"
