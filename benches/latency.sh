#!/usr/bin/env bash
# Latency benchmark (issue 24), Chromium on loopback, a 720p30 H.264 + Opus stream replayed in
# real time:
#   1. tsbridge's own added latency: TS arrival to the frame's first RTP packet on the wire
#      (p50/p99 from /streams/{s}: `latency.added_ms`);
#   2. glass to glass, TS arrival to the rendered frame, from the player page (`latencyMs`:
#      the display time minus the frame's ingest time, abs-capture-time as the video receiver's
#      synchronization source gives it), p50/p95 over RUNS joins, with --playout-delay 0,400
#      (Chrome's low-latency renderer), 0,1000 (the default) and with the extension off;
#   3. a cold edge's first frame (Redis + origin + a fresh edge per join; the player's
#      firstFrameMs), p50/p95.
#
# Usage: benches/latency.sh   (env: RUNS=10, SECONDS_PER_RUN=8, BIN=…, NO_BUILD=1, BASE=18300)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
BASE=${BASE:-18300}
BIN=${BIN:-target/release/tsbridge}
for tool in ffmpeg chromium redis-server curl python3; do
    command -v "$tool" >/dev/null || { echo "latency.sh: needs $tool" >&2; exit 1; }
done
[[ -n "${NO_BUILD:-}" ]] || cargo build --release --quiet
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tsbridge-latency.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

TS=$TMP/720p30.ts
ffmpeg -hide_banner -loglevel error -nostdin -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t 30 -c:v libx264 -preset veryfast -pix_fmt yuv420p -bf 0 -g 30 -b:v 2500k \
    -c:a libopus -b:a 64k -ac 2 -f mpegts "$TS"

# Chromium on the player page for $2 s; prints the page's last stats line (JSON).
play() {
    local url=$1 secs=$2 profile
    profile=$(mktemp -d "$TMP/chromium.XXXXXX")
    timeout "$secs" chromium --headless --no-sandbox --disable-gpu --no-first-run \
        --autoplay-policy=no-user-gesture-required --enable-logging=stderr --log-level=0 \
        --user-data-dir="$profile" "$url" 2>&1 >/dev/null | grep -a TSBRIDGE_STATS | tail -1 |
        sed -e 's/.*TSBRIDGE_STATS //' -e 's/", source.*//' || true
}

stats() { # p50/p95 of numbers on stdin
    python3 -c '
import sys
v = sorted(float(x) for x in sys.stdin.read().split() if x not in ("null", "None", ""))
if not v: print("no samples"); sys.exit()
q = lambda p: v[min(len(v) - 1, round((len(v) - 1) * p))]
print(f"p50 {q(0.5):.0f} ms, p95 {q(0.95):.0f} ms ({len(v)} runs)")'
}

field() { python3 -c "import json,sys; j=json.loads(sys.stdin.read() or '{}'); print(j.get('$1'))"; }

echo "# 1+2: one node, $RUNS joins of ${SECONDS_PER_RUN} s each"
for delay in 0,400 0,1000 off; do
    PORT=$BASE
    "$BIN" serve --listen "127.0.0.1:$PORT" --ice-udp 127.0.0.1:0 --playout-delay "$delay" \
        --replay "cam=$TS" >"$TMP/serve_$delay.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
    sleep 2
    : >"$TMP/glass_$delay"
    for _ in $(seq 1 "$RUNS"); do
        play "http://127.0.0.1:$PORT/play/cam?stats=1" "$SECONDS_PER_RUN" | field latencyMs >>"$TMP/glass_$delay"
    done
    echo "--playout-delay $delay: glass to glass (TS arrival to rendered frame): $(stats <"$TMP/glass_$delay")"
    if [[ $delay == 0,400 ]]; then
        curl -s "127.0.0.1:$PORT/streams/cam" | python3 -c '
import json, sys
l = json.load(sys.stdin)["latency"]
a, n = l["added_ms"], l["samples"]
print("tsbridge added (TS arrival to first RTP packet on the wire): p50 %s ms, p99 %s ms (%s frames)" % (a["p50"], a["p99"], n))'
    fi
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
done

echo "# 3: a cold edge's first frame, $RUNS joins (a fresh edge each)"
RPORT=$((BASE + 99))
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
sleep 0.5
cluster=(--cluster "redis://127.0.0.1:$RPORT/0" --cluster-token latency-bench-token-0123456789)
"$BIN" serve --listen "127.0.0.1:$((BASE + 1))" --ice-udp 127.0.0.1:0 "${cluster[@]}" \
    --public-url "http://127.0.0.1:$((BASE + 1))" --replay "cam=$TS" >"$TMP/origin.log" 2>&1 &
PIDS+=($!)
sleep 2
: >"$TMP/cold"
for i in $(seq 1 "$RUNS"); do
    EPORT=$((BASE + 10 + i))
    "$BIN" serve --listen "127.0.0.1:$EPORT" --ice-udp 127.0.0.1:0 "${cluster[@]}" \
        --public-url "http://127.0.0.1:$EPORT" >"$TMP/edge_$i.log" 2>&1 &
    EDGE=$!
    sleep 1.5
    play "http://127.0.0.1:$EPORT/play/cam?stats=1" 4 | field firstFrameMs >>"$TMP/cold"
    kill "$EDGE"; wait "$EDGE" 2>/dev/null || true
done
echo "cold edge first frame (page load to first picture): $(stats <"$TMP/cold")"
