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
# Then, on a clean loopback link (part 2), SRT ingest against HTTP push of the same file at the
# same bitrate, each with one WHEP viewer (the load tool): the server's CPU over the viewer's
# steady window, the bridge's added latency (arrival to first RTP packet: p50/p99 from
# /streams/{s}), and what the transport itself holds before arrival: SRT's receive buffer
# (its repair window, about --srt-latency-ms), HTTP none.
#
# Needs ffmpeg (with SRT), libsrt 1.5 (srt-tools), curl, python3. Usage:
#   benches/contribution.sh      (env: LOSS="1 5 10" LATENCY="120 300" DURATION=15
#                                 JITTER_MS=30 DELAY_MS=10 BIN=… RELAY=… PARTS="1 2"
#                                 FILE=testdata/h264_opus.ts: the TS published, looped)
set -euo pipefail

LOSS=${LOSS:-1 5 10}
LATENCY=${LATENCY:-120 300}
DURATION=${DURATION:-15}
JITTER_MS=${JITTER_MS:-30}
DELAY_MS=${DELAY_MS:-10}
PARTS=${PARTS:-1 2}
FILE=${FILE:-testdata/h264_opus.ts}

cd "$(dirname "$0")/.."
for tool in ffmpeg curl python3 srt-live-transmit; do
    command -v "$tool" >/dev/null || { echo "contribution.sh: needs $tool" >&2; exit 1; }
done
if [[ -z "${BIN:-}" || -z "${RELAY:-}" ]]; then
    cargo build --release --quiet --bin tsbridge --bin tsbridge-loadtest --example lossy_relay
    BIN=${BIN:-target/release/tsbridge}
    RELAY=${RELAY:-target/release/examples/lossy_relay}
fi
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

part1() {
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
                -i "$FILE" -c copy -f mpegts \
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
}

# Part 2: one transport at a time, publisher + one viewer, on loopback.
part2() {
    local http=127.0.0.1:18889 srt=127.0.0.1:18890 transport url report
    report=$(mktemp "${TMPDIR:-/tmp}/contribution-load.XXXXXX")
    printf '%-6s %8s %10s %12s %12s %10s\n' ingest kbit/s server_cpu% added_p50_ms added_p99_ms held_ms
    for transport in http srt; do
        "$BIN" serve --listen "$http" --ice-udp 127.0.0.1:18189 --srt-listen "$srt" \
            >/dev/null 2>"${TMPDIR:-/tmp}/contribution-server.log" &
        local server=$!
        PIDS+=("$server")
        sleep 1
        case $transport in
            http) url=(-method PUT "http://$http/ingest/bench") ;;
            srt) url=("srt://$srt?streamid=bench") ;;
        esac
        ffmpeg -hide_banner -loglevel quiet -nostdin -re -stream_loop -1 \
            -i "$FILE" -c copy -f mpegts "${url[@]}" &
        PIDS+=($!)
        "$BIN" loadtest --url "http://$http/whep/bench" --viewers 1 --seconds "$DURATION" \
            --server-pid "$server" --json --quiet >"$report"
        curl -s "http://$http/streams/bench" | python3 -c "
import json, sys
j = json.load(sys.stdin); r = json.load(open('$report'))
lat = (j.get('latency') or {}).get('added_ms') or {}
held = (j.get('srt') or {}).get('receive_buffer_ms', 0)
print('%-6s %8d %10.1f %12.2f %12.2f %10d' % ('$transport', j['ingest_kbps'],
      ((r.get('steady') or {}).get('server') or {}).get('cpu_pct', 0), lat.get('p50', 0), lat.get('p99', 0), held))"
        cleanup
        PIDS=()
        sleep 0.5
    done
    rm -f "$report"
}

for part in $PARTS; do "part$part"; done
