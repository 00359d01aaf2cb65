#!/usr/bin/env python3
"""tsbridge's aiortc WHEP viewer.

Offers recvonly video (+ audio unless --no-audio) with every ICE candidate in the offer
(non-trickle), POSTs it, decodes what arrives for --seconds counted from the POST, DELETEs the
session and prints ONE JSON line (keys: tests/peers/README.md). Exit 0 when media was decoded,
1 when none was, 2 when the POST failed.

    python3 tests/peers/whep_aiortc.py http://127.0.0.1:8889/whep/demo --seconds 5
"""
import asyncio
import sys
import time

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

import whep_common


async def consume(track, video, audio):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if track.kind == "video":
            luma = stride = None
            if video.wants_pixels():
                luma, stride = bytes(frame.planes[0]), frame.planes[0].line_size
            video.add(frame.width, frame.height, luma, stride)
        else:
            channels = len(frame.layout.channels)
            if frame.format.name != "s16":  # aiortc's Opus decoder gives packed s16
                raise RuntimeError(f"unexpected audio format {frame.format.name}")
            pcm = bytes(frame.planes[0])[:frame.samples * channels * 2]
            audio.add(pcm, channels, frame.sample_rate)


async def run(args, whep, video, audio):
    # aioice leaves loopback addresses out of its host candidates: name the address to use.
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [args.ice_ip]
    pc = RTCPeerConnection()
    tasks = []

    def on_track(track):
        task = asyncio.ensure_future(consume(track, video, audio))
        task.add_done_callback(lambda t: t.cancelled() or not t.exception()
                               or whep.error(f"{track.kind}: {t.exception()!r}"))
        tasks.append(task)

    pc.on("track", on_track)
    pc.addTransceiver("video", direction="recvonly")
    if not args.no_audio:
        pc.addTransceiver("audio", direction="recvonly")
    try:
        # aiortc's setLocalDescription returns once ICE gathering is complete.
        await pc.setLocalDescription(await pc.createOffer())
        answer = await asyncio.to_thread(whep.post, pc.localDescription.sdp)
        if answer is None:
            return
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.sleep(max(0.0, whep.t_post + args.seconds - time.monotonic()))
        if pc.connectionState != "connected":
            whep.error(f"connection state {pc.connectionState}")
    except Exception as e:  # recorded in the JSON, never lost
        whep.error(f"{type(e).__name__}: {e}")
    finally:
        # DELETE before closing: closing first lets the server end the session on DTLS
        # close_notify, and the DELETE would then find nothing.
        await asyncio.to_thread(whep.delete)
        await pc.close()
        for t in tasks:
            t.cancel()


def main():
    p = whep_common.arg_parser(__doc__.splitlines()[0])
    p.add_argument("--no-audio", action="store_true", help="offer a video section only")
    args = p.parse_args()
    whep = whep_common.Whep("aiortc", args.url, args.token)
    video, audio = whep_common.VideoMeter(), whep_common.AudioMeter()
    asyncio.run(run(args, whep, video, audio))
    sys.exit(whep_common.finish(whep, video, audio))


if __name__ == "__main__":
    main()
