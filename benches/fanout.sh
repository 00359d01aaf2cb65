#!/usr/bin/env bash
# Fan-out benchmark: server CPU and memory per WHEP viewer of one 2 Mbit/s stream.
#
# Makes a 10 s 1280x720 30 fps H.264 (no B-frames, 1 s GOP) + Opus TS file of ~2 Mbit/s with
# ffmpeg, then for each N in $NS starts a fresh release server replaying it (127.0.0.1 only),
# lets it idle, and runs `tsbridge loadtest` with N viewers. The load tool samples the server's
# utime+stime and RSS from /proc/PID over its steady-state window (after the ramp, once every
# viewer has connected or failed) and counts the RTP packets delivered in that same window, so:
#
#   µs/pkt   = server CPU seconds in the window / RTP packets delivered to all viewers in it
#              (µs of server CPU per delivered packet per viewer; goal ≤ 4 at 100–1000 viewers)
#   KB/view  = (server RSS at the end of the window - RSS of the idle server) / viewers connected
#
# The load tool runs on the same cores as the server: its own CPU is shown (client %) and the
# server's figures are only meaningful while the machine is not saturated (sum < 100 % x cores).
#
# Usage: benches/fanout.sh            (env: NS="10 100 500 1000" S=20 RAMP=100 TASKS=2
#                                       HTTP_PORT=18889 UDP_PORT=18189 BIN=… OUT=dir NO_BUILD=1)
#   S: seconds of steady state per N.  RAMP: viewers started per second.  TASKS: the load tool's
#   event loops (one can drive ~750 viewers on this 2-core box; past that its ICE consent
#   checks fall behind and the server frees the viewers as silent).  OUT: keep the JSON
#   reports and logs there.  BIN: the tsbridge binary to run (default: build target/release);
#   a copy under another name keeps a `pkill tsbridge` run by something else off the server.
set -euo pipefail

NS=${NS:-10 100 500 1000}
S=${S:-20}
RAMP=${RAMP:-100}
TASKS=${TASKS:-2}
HTTP_PORT=${HTTP_PORT:-18889}
UDP_PORT=${UDP_PORT:-18189}
IDLE_S=${IDLE_S:-3}

cd "$(dirname "$0")/.."
for tool in ffmpeg ffprobe jq curl; do
    command -v "$tool" >/dev/null || { echo "fanout.sh: needs $tool" >&2; exit 1; }
done
if [[ -z "${BIN:-}" ]]; then
    BIN=target/release/tsbridge
    if [[ -z "${NO_BUILD:-}" ]]; then
        cargo build --release --quiet
    fi
fi
[[ -x "$BIN" ]] || { echo "fanout.sh: no binary at $BIN" >&2; exit 1; }
# `tsbridge loadtest` runs the load tool's own binary, from the same directory.
[[ -x "$(dirname "$BIN")/tsbridge-loadtest" ]] ||
    { echo "fanout.sh: no tsbridge-loadtest next to $BIN" >&2; exit 1; }

# One UDP socket per viewer in the load tool (plus a TCP connection per POST in flight).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)
export CLK_TCK

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tsbridge-fanout.XXXXXX")
SERVER_PID=
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "${OUT:-}" ]]; then
        mkdir -p "$OUT" && cp "$TMP"/*.json "$TMP"/*.log "$OUT"/ 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TS=$TMP/fanout.ts
timeout 120 ffmpeg -hide_banner -loglevel error -nostdin -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 10 \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p -bf 0 -g 30 -keyint_min 30 -sc_threshold 0 \
    -b:v 1850k -minrate 1850k -maxrate 1850k -bufsize 1850k \
    -c:a libopus -b:a 64k -ac 2 -f mpegts "$TS"
KBPS=$(ffprobe -v error -show_entries format=bit_rate -of default=nw=1:nk=1 "$TS")
KBPS=$((KBPS / 1000))

proc_cpu_ticks() { # utime + stime of PID, in clock ticks
    local stat rest
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}
proc_rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

start_server() {
    "$BIN" serve --replay "fan=$TS" --listen "127.0.0.1:$HTTP_PORT" \
        --ice-udp "127.0.0.1:$UDP_PORT" --whep-wait 30 --max-per-ip 0 >"$TMP/server-$1.log" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 100); do
        if curl -sf "http://127.0.0.1:$HTTP_PORT/streams/fan" 2>/dev/null |
            jq -e '.ready == true' >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "fanout.sh: the server did not become ready; see its log:" >&2
    tail -20 "$TMP/server-$1.log" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

echo "# tsbridge fan-out: $(basename "$TS") ${KBPS} kbit/s (1280x720 30 fps H.264 GOP 1 s + Opus), replayed"
echo "# $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); ${S} s steady state per run, ramp ${RAMP} viewers/s; 127.0.0.1"
printf '%6s %6s %7s %7s %8s %8s %7s %8s %12s %7s %7s %6s %7s\n' \
    N conn srv_cpu idle_cpu us/pkt KB/view loss% pkt/s TTFF_p50/p95 client other failed rcvdrop
for N in $NS; do
    start_server "$N"
    # Idle: the replay and demux alone, and the baseline RSS.
    sleep 1
    c0=$(proc_cpu_ticks "$SERVER_PID")
    sleep "$IDLE_S"
    c1=$(proc_cpu_ticks "$SERVER_PID")
    idle_rss=$(proc_rss_kb "$SERVER_PID")
    idle_pct=$(awk -v d=$((c1 - c0)) -v t="$CLK_TCK" -v s="$IDLE_S" 'BEGIN { printf "%.1f", d / t / s * 100 }')

    limit=$((N / ${RAMP%.*} + S + 120))
    if ! timeout "$limit" "$BIN" loadtest --url "http://127.0.0.1:$HTTP_PORT/whep/fan" \
        --viewers "$N" --seconds "$S" --ramp "$RAMP" --tasks "$TASKS" --server-pid "$SERVER_PID" --json --quiet \
        >"$TMP/n$N.json" 2>"$TMP/loadtest-$N.log"; then
        echo "fanout.sh: loadtest with N=$N failed; its log:" >&2
        tail -20 "$TMP/loadtest-$N.log" >&2
        stop_server
        continue
    fi
    stop_server

    jq -r --argjson n "$N" --argjson idle_rss "$idle_rss" '
        def v: if . == null then "-" else . end;
        .steady as $s | ($s.server // {}) as $srv |
        [ $n, .connected, ($srv.cpu_pct | v), ($srv.us_per_packet | v),
          (if $srv.rss_kb_end and $s.viewers > 0
           then ($srv.rss_kb_end - $idle_rss) / $s.viewers else null end | v),
          ($s.loss_pct | v), ($s.packets_per_s | v),
          (.time_to_first_keyframe_ms.p50 | v), (.time_to_first_keyframe_ms.p95 | v),
          ($s.client_cpu_pct | v),
          (if $s.host_cpu_pct and $srv.cpu_pct
           then $s.host_cpu_pct - $srv.cpu_pct - $s.client_cpu_pct else null end | v),
          .failed, ($s.udp_rcvbuf_errors | v) ]
        | @tsv' "$TMP/n$N.json" |
        awk -F'\t' -v idle="$idle_pct" '
            function f(x, d) { return x == "-" ? "-" : sprintf("%." d "f", x) }
            { printf "%6s %6s %7s %7s %8s %8s %7s %8s %12s %7s %7s %6s %7s\n", $1, $2, f($3, 1) "%",
                idle "%", f($4, 2), f($5, 0), f($6, 3), f($7, 0), f($8, 0) "/" f($9, 0),
                f($10, 1) "%", f($11, 0) "%", $12, $13 }'
done
cat <<EOF
# srv_cpu: server CPU in the steady window (100% = one core); idle_cpu: the same with no viewer.
# us/pkt: server CPU µs per RTP packet delivered to one viewer (goal ≤ 4 at 100–1000 viewers).
# KB/view: (server RSS at the end - idle RSS) / connected viewers.  loss%: sequence gaps in the window.
# TTFF: POST → last packet of the first keyframe, ms.  client: the load tool's own CPU on the
# same $(nproc) cores: it competes with the server.  other: CPU used by the rest of the host in the
# window (interference).  rcvdrop: datagrams the kernel dropped at full UDP receive buffers in the
# window (host-wide; mostly the load tool's sockets: loss then says the client, not the server, fell
# behind).  srv_cpu + client + other near $(($(nproc) * 100))% means CPU-bound: figures are then low bounds.
EOF
