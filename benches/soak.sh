#!/usr/bin/env bash
# Soak: viewers joining and leaving and a source restarting, for a bounded time; prints RSS,
# sessions and errors over time. Everything on 127.0.0.1; stops by itself.
#
# Usage: benches/soak.sh            (env: MINUTES=30 VIEWERS=20 ROUND=20 HTTP_PORT=18890
#                                      UDP_PORT=18190 BIN=target/release/tsbridge)
#   Each round: the source (tsbridge replay → PUT /ingest/soak) is restarted, then
#   `tsbridge loadtest` runs VIEWERS viewers for ROUND seconds and deletes them.
#   A row every round: elapsed, server RSS, sessions left, viewers connected/failed, loss %,
#   TS problems, and the server's total sessions.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-30}
VIEWERS=${VIEWERS:-20}
ROUND=${ROUND:-20}
HTTP_PORT=${HTTP_PORT:-18890}
UDP_PORT=${UDP_PORT:-18190}
BIN=${BIN:-target/release/tsbridge}
# `tsbridge loadtest` runs the load tool's own binary, from the same directory.
[ -x "$BIN" ] && [ -x "$(dirname "$BIN")/tsbridge-loadtest" ] || cargo build --release --quiet
BASE="http://127.0.0.1:$HTTP_PORT"

"$BIN" serve --listen "127.0.0.1:$HTTP_PORT" --ice-udp "127.0.0.1:$UDP_PORT" --source-grace 5 --max-per-ip 0 \
    >/tmp/tsbridge-soak-server.log 2>&1 &
SERVER=$!
SOURCE=
cleanup() { kill "$SERVER" ${SOURCE:+"$SOURCE"} 2>/dev/null || true; }
trap cleanup EXIT
sleep 1

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

end=$(( $(date +%s) + MINUTES * 60 ))
start=$(date +%s)
printf '%8s %9s %9s %6s %6s %7s %8s %9s\n' elapsed_s rss_kb sessions conn failed loss% ts_err sessions_total
while [ "$(date +%s)" -lt "$end" ]; do
    # The source restarts every round (a new source continues the same stream).
    [ -n "$SOURCE" ] && kill "$SOURCE" 2>/dev/null || true
    "$BIN" replay testdata/h264_opus.ts --to "$BASE/ingest/soak" --loop >/dev/null 2>&1 &
    SOURCE=$!
    report=$("$BIN" loadtest --url "$BASE/whep/soak" --viewers "$VIEWERS" --seconds "$ROUND" \
        --json --quiet 2>/dev/null || echo '{}')
    stream=$(curl -s "$BASE/streams/soak" || echo '{}')
    printf '%8s %9s %9s %6s %6s %7s %8s %9s\n' \
        $(( $(date +%s) - start )) "$(rss_kb)" \
        "$(echo "$stream" | field "d.get('viewers', '?')")" \
        "$(echo "$report" | field "d.get('connected', '?')")" \
        "$(echo "$report" | field "d.get('failed', '?')")" \
        "$(echo "$report" | field "d.get('loss_pct', '?')")" \
        "$(echo "$stream" | field "d.get('ts_problems', '?')")" \
        "$(echo "$stream" | field "d.get('sessions_total', '?')")"
done
