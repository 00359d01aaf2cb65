#!/usr/bin/env bash
# Time to first frame and frames decoded in headless Chromium for a B-frame source with a 5 s
# GOP (libx264 High -bf 3, 720p30, 2.5 Mbit/s + Opus), re-encoded (the default) and, for
# comparison, passed through (--video-transcode off).
#
#   benches/reencode_ttff.sh      (after `npm install` in tests/peers: see tests/peers/README.md)
#
# Prints one row per join (at random points of the GOP): first frame ms, frames decoded in
# RUN_SECONDS, freezes, packets lost; then the server's view of the re-encoder (CPU share).
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
RUN_SECONDS=${RUN_SECONDS:-4}
BIN=${BIN:-target/release/tsbridge}
[ -x "$BIN" ] || cargo build --release --quiet
CLIP=target/bench-data/bframes_720p30_gop5.ts
mkdir -p target/bench-data
[ -f "$CLIP" ] || ffmpeg -v error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
  -f lavfi -i sine=frequency=440:sample_rate=48000 -t 20 -c:v libx264 -pix_fmt yuv420p \
  -profile:v high -bf 3 -b:v 2500k -g 150 -keyint_min 150 -sc_threshold 0 -c:a libopus -b:a 64k \
  -ar 48000 -ac 2 -f mpegts "$CLIP"

for mode in auto off; do
  PORT=$((18900 + RANDOM % 500))
  "$BIN" serve --listen 127.0.0.1:$PORT --ice-udp 127.0.0.1:0 --video-transcode $mode \
    --replay bf=$CLIP >/tmp/reencode_ttff_$mode.log 2>&1 &
  SERVER=$!
  sleep 3
  echo "--video-transcode $mode: first_frame_ms frames_decoded freezes lost"
  runs=$RUNS; [ $mode = off ] && runs=3
  for i in $(seq 1 $runs); do
    sleep 0.$((RANDOM % 9 + 1))
    node tests/peers/whep_browser.mjs "http://127.0.0.1:$PORT/whep/bf" \
      --seconds "$RUN_SECONDS" --screenshot /tmp/reencode_ttff.png 2>/dev/null | python3 -c '
import json, sys
j = json.loads(sys.stdin.read()); v = j.get("video") or {}
print(j.get("first_frame_ms"), v.get("framesDecoded"), v.get("freezeCount"), v.get("packetsLost"))'
  done
  curl -s "127.0.0.1:$PORT/streams/bf" | python3 -c '
import json, sys
t = json.load(sys.stdin)["tracks"][0]
print({k: t[k] for k in ("transcoded_to", "transcoder_cpu_pct", "frames_encoded", "transcode_errors") if k in t})'
  kill $SERVER; wait $SERVER 2>/dev/null
done
