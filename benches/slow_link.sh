#!/usr/bin/env bash
# Instant start behind a slow link: what a new viewer loses of its start-up burst (the GOP
# backlog) at each --backlog-rate, when its downlink is slower than the server's NIC.
#
# Makes a 20 s 1280x720 30 fps H.264 (5 s GOP, ~2 Mbit/s) + Opus TS file with ffmpeg, puts a
# viewer host in a network namespace behind a veth pair whose server side is shaped with
# `tc tbf` (LINK_MBIT, 50 ms of queue), and for each rate in $RATES starts a release server
# replaying the file and joins it JOINS times, one viewer at a time at random points of the
# GOP, with the load tool (every packet decrypted, NACKs answered). Prints, per join, the loss
# over the viewer's whole run (after retransmissions; the start's burst is where it happens)
# and the time to its first complete keyframe, then the server's NACK/retransmission counts.
#
# With CHROMIUM=1 (after `npm install` in tests/peers), each join is a headless Chromium instead
# (tests/peers/whep_browser.mjs), and the line gives first frame, packets lost, freezes and
# frames decoded.
#
# Needs root, iproute2 (ip, tc), ffmpeg, curl. Usage:
#   benches/slow_link.sh      (env: RATES="1000 25 16" LINK_MBIT=20 JOINS=6 BIN=… CHROMIUM=1)
set -euo pipefail

RATES=${RATES:-1000 25 16}
LINK_MBIT=${LINK_MBIT:-20}
JOINS=${JOINS:-6}
NS=tsbridge-slow
SERVER_IP=10.77.0.1
VIEWER_IP=10.77.0.2

cd "$(dirname "$0")/.."
for tool in ip tc ffmpeg curl; do
    command -v "$tool" >/dev/null || { echo "slow_link.sh: needs $tool" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "slow_link.sh: needs root (network namespace, tc)" >&2; exit 1; }
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet
    BIN=target/release/tsbridge
fi
BIN=$(realpath "$BIN")
WORK=$(mktemp -d)
SERVER=

cleanup() {
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    ip netns del "$NS" 2>/dev/null || true
    ip link del tsb-slow0 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

FILE=$WORK/gop5_2m.ts
timeout 300 ffmpeg -hide_banner -loglevel error -nostdin -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 20 \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p -bf 0 -g 150 -keyint_min 150 \
    -sc_threshold 0 -b:v 2M -maxrate 2M -bufsize 2M -c:a libopus -b:a 64k -f mpegts "$FILE"

ip netns del "$NS" 2>/dev/null || true
ip link del tsb-slow0 2>/dev/null || true
ip netns add "$NS"
ip link add tsb-slow0 type veth peer name tsb-slow1
ip link set tsb-slow1 netns "$NS"
ip addr add "$SERVER_IP/24" dev tsb-slow0
ip link set tsb-slow0 up
ip netns exec "$NS" ip addr add "$VIEWER_IP/24" dev tsb-slow1
ip netns exec "$NS" ip link set tsb-slow1 up
ip netns exec "$NS" ip link set lo up
tc qdisc add dev tsb-slow0 root tbf rate "${LINK_MBIT}mbit" burst 20kb latency 50ms
echo "viewer link: ${LINK_MBIT} Mbit/s, 50 ms queue; source: 2 Mbit/s, 5 s GOP"

URL=http://$SERVER_IP:8889/whep/cam
for rate in $RATES; do
    "$BIN" serve --listen "$SERVER_IP:8889" --ice-udp "$SERVER_IP:8189" \
        --replay "cam=$FILE" --backlog-rate "$rate" > "$WORK/server.log" 2>&1 &
    SERVER=$!
    sleep 6
    echo "--backlog-rate $rate"
    for _ in $(seq "$JOINS"); do
        sleep "0.$((RANDOM % 100))"
        if [[ -n "${CHROMIUM:-}" ]]; then
            timeout 60 ip netns exec "$NS" node tests/peers/whep_browser.mjs "$URL" \
                --seconds 5 --chromium-arg \
                --disable-features=WebRtcHideLocalIpsWithMdns,PrivateNetworkAccessSendPreflights,BlockInsecurePrivateNetworkRequests,LocalNetworkAccessChecks \
                2>/dev/null | tail -1 |
                jq -r '"  first frame \(.first_frame_ms) ms, lost \(.video.packetsLost), freezes \(.video.freezeCount) (\(.video.totalFreezesDuration) s), frames decoded \(.video.framesDecoded)"'
        else
            ip netns exec "$NS" "$BIN" loadtest --url "$URL" --viewers 1 --seconds 5 \
                --decrypt-all 2>/dev/null |
                awk '/^packets:/ { sub(/.*loss /, ""); loss = $1 }
                     /^first keyframe:/ { key = $4 }
                     END { printf "  loss %s %%, first keyframe %s ms\n", loss, key }'
        fi
    done
    curl -s "http://$SERVER_IP:8889/metrics" |
        grep -E '^tsbridge_(nacks_received|retransmissions)_total' | sed 's/^/  /'
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
done
