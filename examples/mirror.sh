#!/bin/sh
# mirror.sh — a TS→TS filter for `tsbridge serve --pipeline`: mirrors the picture (hflip).
#
#   tsbridge serve --pipeline 'examples/mirror.sh'
#
# then publish with WHIP to http://HOST:8889/whip/cam (e.g. open /publish/cam in a browser) and
# watch http://HOST:8889/play/cam: viewers see the mirrored stream. tsbridge runs this with
# `sh -c` for each WHIP stream, the publisher's MPEG-TS on stdin (also at
# /streams/cam.input.ts); what it writes to stdout is the stream viewers get. It is restarted
# with backoff if it exits while the publisher is still there.
#
# Low latency on purpose: no input probing beyond the first packets, x264 with zerolatency and
# no B-frames (WebRTC has no B-frames), a keyframe every second so new viewers start quickly,
# Opus audio copied as it is. Extra ffmpeg output options can be passed as arguments, e.g.
#   --pipeline 'examples/mirror.sh -b:v 1M'
exec ffmpeg -hide_banner -loglevel error -nostdin \
  -fflags nobuffer -probesize 32768 -analyzeduration 0 \
  -f mpegts -i - \
  -map 0:v:0 -map '0:a:0?' \
  -vf hflip \
  -c:v libx264 -preset ultrafast -tune zerolatency -bf 0 -g 30 -pix_fmt yuv420p \
  -c:a copy \
  "$@" \
  -f mpegts -muxdelay 0 -muxpreload 0 -flush_packets 1 -
