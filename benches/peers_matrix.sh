#!/usr/bin/env bash
# Every source shape × every outside WebRTC stack: what each viewer decoded.
#
#   benches/peers_matrix.sh
#
# Starts `tsbridge serve` replaying each testdata shape (H.264+Opus, Opus only, H.264 only,
# H.264+AC-3, HEVC+Opus, M2TS, both programs of an MPTS), then runs each viewer of tests/peers
# on each: aiortc (python3 + aiortc), GStreamer webrtcbin (/usr/bin/python3 + python3-gi; offers
# H.265 first for the HEVC stream), headless Chromium (node + playwright-core: `npm install` in
# tests/peers first; see tests/peers/README.md). Prints one row per (shape, viewer): HTTP status,
# video frames decoded, audio samples. The webrtc-rs viewer is the integration tests'
# (tests/every_stream.rs). A viewer that is not installed is reported as "skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
PEERS=tests/peers
SECONDS_EACH=${SECONDS_EACH:-5}
BIN=${BIN:-target/release/tsbridge}
[ -x "$BIN" ] || cargo build --release --quiet
PORT=${PORT:-18890}
UDP=${UDP:-18190}

"$BIN" serve --listen 127.0.0.1:$PORT --ice-udp 127.0.0.1:$UDP \
  --replay av=testdata/h264_opus.ts --replay radio=testdata/opus_only.ts \
  --replay video=testdata/h264_only.ts --replay ac3=testdata/h264_ac3.ts \
  --replay hevc=testdata/hevc_opus.ts --replay m2ts=testdata/h264_opus.m2ts \
  --replay mpts=testdata/mpts.ts >/tmp/peers_matrix_server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
sleep 2

# name|WHEP path|video codec for GStreamer
SHAPES="H.264+Opus|av|H264
Opus only|radio|H264
H.264 only|video|H264
H.264+AC-3|ac3|H264
HEVC+Opus (H.265 offered)|hevc|H265
HEVC+Opus (H.264 only)|hevc|H264
M2TS (192-byte packets)|m2ts|H264
MPTS program 1 (HEVC)|mpts?program=1|H265
MPTS program 2 (H.264+Opus)|mpts?program=2|H264"

summary() {  # one JSON line on stdin -> "status frames samples"
  python3 -c '
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l.startswith("{")]
if not lines: print("no-output - -"); sys.exit()
j = json.loads(lines[-1])
v = j.get("video_frames_decoded", (j.get("video") or {}).get("framesDecoded"))
a = j.get("audio_samples", (j.get("audio") or {}).get("totalSamplesReceived"))
print(j.get("http_status", j.get("status", "?")), v if v is not None else 0, a if a is not None else 0)'
}

printf '%-30s %-10s %6s %8s %10s\n' shape viewer status frames samples
while IFS='|' read -r name path codec; do
  url="http://127.0.0.1:$PORT/whep/$path"
  if python3 -c 'import aiortc' 2>/dev/null; then
    r=$(python3 "$PEERS/whep_aiortc.py" "$url" --seconds "$SECONDS_EACH" 2>/dev/null | summary)
  else r="skipped - -"; fi
  printf '%-30s %-10s %6s %8s %10s\n' "$name" aiortc $r
  if /usr/bin/python3 -c 'import gi' 2>/dev/null; then
    r=$(/usr/bin/python3 "$PEERS/whep_gst.py" "$url" --seconds "$SECONDS_EACH" --video-codec "$codec" 2>/dev/null | summary)
  else r="skipped - -"; fi
  printf '%-30s %-10s %6s %8s %10s\n' "$name" gstreamer $r
  if [ -d "$PEERS/node_modules/playwright-core" ]; then
    r=$(node "$PEERS/whep_browser.mjs" "$url" --seconds "$SECONDS_EACH" 2>/dev/null | summary)
  else r="skipped - -"; fi
  printf '%-30s %-10s %6s %8s %10s\n' "$name" chromium $r
done <<<"$SHAPES"
