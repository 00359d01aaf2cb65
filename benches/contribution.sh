#!/usr/bin/env bash
# SRT contribution over a bad link: what reaches the stream at each loss rate and SRT latency.
#
# For each LOSS (percent, both ways, with JITTER_MS of jitter and DELAY_MS of delay each way)
# and each LATENCY (--srt-latency-ms), starts `tsbridge serve --srt-listen`, puts
# examples/lossy_relay.rs in front of it, publishes testdata/h264_opus.ts with ffmpeg over
# SRT for DURATION seconds, and prints from /streams/{s}: packets received, gaps SRT saw (lost), packets
# sent again (retransmitted), packets given up on (dropped: each damages a picture or audio
# frame), TS problems the demuxer found, video frames demuxed, and the RTT.
#
# Needs ffmpeg (with SRT), libsrt 1.5 (srt-tools), curl, python3. Usage:
#   benches/contribution.sh      (env: LOSS="1 5 10" LATENCY="120 300" DURATION=15
#                                 JITTER_MS=30 DELAY_MS=10 BIN=… RELAY=…)
set -euo pipefail

LOSS=${LOSS:-1 5 10}
LATENCY=${LATENCY:-120 300}
DURATION=${DURATION:-15}
JITTER_MS=${JITTER_MS:-30}
DELAY_MS=${DELAY_MS:-10}

cd "$(dirname "$0")/.."
for tool in ffmpeg curl python3 srt-live-transmit; do
    command -v "$tool" >/dev/null || { echo "contribution.sh: needs $tool" >&2; exit 1; }
done
if [[ -z "${BIN:-}" || -z "${RELAY:-}" ]]; then
    cargo build --release --quiet --bin tsbridge --example lossy_relay
    BIN=${BIN:-target/release/tsbridge}
    RELAY=${RELAY:-target/release/examples/lossy_relay}
fi
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

printf '%-6s %-8s %8s %6s %8s %8s %8s %8s %7s\n' loss% latency packets lost resent dropped ts_err frames rtt_ms
for latency in $LATENCY; do
    for loss in $LOSS; do
        http=127.0.0.1:18889 srt=127.0.0.1:18890 relay=127.0.0.1:18891
        "$BIN" serve --listen "$http" --ice-udp 127.0.0.1:18189 --srt-listen "$srt" \
            --srt-latency-ms "$latency" >/dev/null 2>"${TMPDIR:-/tmp}/contribution-server.log" &
        PIDS+=($!)
        "$RELAY" --listen "$relay" --to "$srt" --loss "$loss" --jitter-ms "$JITTER_MS" \
            --delay-ms "$DELAY_MS" >/dev/null &
        PIDS+=($!)
        sleep 1
        timeout "$DURATION" ffmpeg -hide_banner -loglevel quiet -re -stream_loop -1 \
            -i testdata/h264_opus.ts -c copy -f mpegts \
            "srt://$relay?streamid=bench&latency=$((latency * 1000))" || true
        curl -s "http://$http/streams/bench" | python3 -c "
import json, sys
j = json.load(sys.stdin); s = j['srt'] or {}
print('%-6s %-8s %8d %6d %8d %8d %8d %8d %7.1f' % ('$loss', '$latency', s.get('packets', 0),
      s.get('lost', 0), s.get('retransmitted', 0), s.get('dropped', 0), j['ts_problems'],
      j['video_frames'], s.get('rtt_ms', 0)))"
        cleanup
        PIDS=()
        sleep 0.5
    done
done
