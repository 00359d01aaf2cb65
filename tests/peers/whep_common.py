"""What tsbridge's two Python WHEP viewers share (standard library only, so that both
interpreters can import it: the aiortc one and Debian's /usr/bin/python3 for GStreamer).

- the command line every viewer takes (URL, --seconds, --token),
- the WHEP HTTP exchange (POST offer -> 201 + answer + Location, DELETE at the end),
- what the answer negotiated per media section,
- the meters that turn decoded media into the JSON figures the tests read.
"""
import argparse
import array
import hashlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def arg_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("url", help="WHEP endpoint, e.g. http://127.0.0.1:8889/whep/demo")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="how long to receive, counted from the POST (default 5)")
    p.add_argument("--token", help="sent as Authorization: Bearer TOKEN")
    p.add_argument("--ice-ip", default="127.0.0.1",
                   help="the local address to offer as ICE host candidate (default 127.0.0.1)")
    return p


def http(method, url, body=None, token=None, timeout=10.0):
    """(status, headers, text) of one request; HTTP error statuses are returned, not raised."""
    headers = {"Content-Type": "application/sdp"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf-8", "replace")


class Whep:
    """One WHEP session: post() the offer, delete() the resource. Times are from the POST."""

    def __init__(self, peer, url, token):
        self.url, self.token = url, token
        self.t_post = None
        self.location = None
        self.result = {"peer": peer, "url": url, "http_status": None, "errors": []}

    def ms(self, t):
        """Milliseconds from the POST to monotonic time t (None stays None)."""
        if t is None or self.t_post is None:
            return None
        return round((t - self.t_post) * 1000, 1)

    def error(self, text):
        self.result["errors"].append(text)

    def post(self, offer_sdp):
        """The answer SDP, or None after recording why there is none."""
        self.t_post = time.monotonic()
        status, headers, body = http("POST", self.url, offer_sdp.encode(), self.token)
        self.result["http_status"] = status
        self.result["post_to_answer_ms"] = self.ms(time.monotonic())
        if status != 201:
            self.error(f"POST answered {status}: {body[:300]!r}")
            return None
        location = headers.get("Location")
        if location:
            self.location = urllib.parse.urljoin(self.url, location)
        else:
            self.error("201 without a Location header")
        self.result["negotiated"] = negotiated(body)
        return body

    def delete(self):
        if not self.location:
            return
        try:
            status, _, _ = http("DELETE", self.location, token=self.token)
        except OSError as e:
            self.error(f"DELETE failed: {e}")
            return
        self.result["delete_status"] = status
        if status not in (200, 204):
            self.error(f"DELETE answered {status}")


def negotiated(sdp):
    """{kind: 'codec/clock[/channels]'} per m-section of an answer: the first payload type that
    is not a repair format, or None for a rejected (port 0) or inactive section."""
    sections = []
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("m="):
            kind, port, _proto, *pts = line[2:].split()
            sections.append({"kind": kind, "live": port != "0", "pts": pts, "rtpmap": {}})
        elif sections and line == "a=inactive":
            sections[-1]["live"] = False
        elif sections and line.startswith("a=rtpmap:"):
            pt, _, codec = line[len("a=rtpmap:"):].partition(" ")
            sections[-1]["rtpmap"][pt] = codec
    out = {}
    for s in sections:
        codecs = [s["rtpmap"].get(pt, pt) for pt in s["pts"]]
        codecs = [c for c in codecs if c.split("/")[0].lower() not in ("rtx", "red", "ulpfec")]
        out[s["kind"]] = codecs[0] if s["live"] and codecs else None
    return out


class VideoMeter:
    """Decoded pictures: count, first one's time, size, and how many distinct pictures were
    seen among every 10th (their luma hashed; 1 distinct => the picture is frozen)."""

    def __init__(self):
        self.frames = 0
        self.first = None
        self.width = self.height = None
        self.hashes = set()

    def wants_pixels(self):
        """Whether the next frame's luma is sampled (call before add)."""
        return self.frames % 10 == 0

    def add(self, width, height, luma=None, stride=None):
        """One decoded picture; luma = its Y plane (rows of `stride` bytes) when wanted."""
        if self.first is None:
            self.first = time.monotonic()
        self.frames += 1
        self.width, self.height = width, height
        if luma is not None:
            rows = (luma[r * stride:r * stride + width] for r in range(0, height, 2))
            self.hashes.add(hashlib.md5(b"".join(rows)).digest())

    def figures(self, whep):
        return {
            "first_video_frame_ms": whep.ms(self.first),
            "video_frames_decoded": self.frames,
            "width": self.width,
            "height": self.height,
            "video_distinct_samples": len(self.hashes),
        }


class AudioMeter:
    """Decoded signed 16-bit interleaved audio: samples per channel, RMS, and the dominant
    frequency of the first channel from its zero crossings (the test streams carry sine tones).
    A crossing counts once the signal has left a small band around zero (noise near zero adds
    none); half periods far from the median one (a jump where the source loops, a lost packet)
    are left out of the mean."""

    BAND = 256

    def __init__(self):
        self.first = None
        self.samples = 0
        self.rate = None
        self.sumsq = 0.0
        self.count = 0
        self.positive = None
        self.crossings = []  # first-channel sample indices

    def add(self, pcm_bytes, channels, rate):
        if self.first is None:
            self.first = time.monotonic()
        pcm = array.array("h")
        pcm.frombytes(pcm_bytes[:len(pcm_bytes) - len(pcm_bytes) % 2])
        if sys.byteorder != "little":
            pcm.byteswap()
        self.rate = rate
        self.samples += len(pcm) // channels
        first = pcm[::channels]
        self.sumsq += float(sum(x * x for x in first))
        for i, x in enumerate(first, self.count):
            if (x > self.BAND and self.positive is not True) or (
                    x < -self.BAND and self.positive is not False):
                if self.positive is not None:
                    self.crossings.append(i)
                self.positive = x > 0
        self.count += len(first)

    def frequency(self):
        halves = sorted(b - a for a, b in zip(self.crossings, self.crossings[1:]))
        if len(halves) < 4:
            return None
        median = halves[len(halves) // 2]
        kept = [h for h in halves if abs(h - median) <= median / 4]
        return round(self.rate * len(kept) / (2 * sum(kept)), 1)

    def figures(self, whep):
        rms = (self.sumsq / self.count) ** 0.5 if self.count else None
        return {
            "first_audio_frame_ms": whep.ms(self.first),
            "audio_samples": self.samples,
            "audio_rms": round(rms, 1) if rms is not None else None,
            "audio_freq_hz": self.frequency(),
        }


def finish(whep, video, audio):
    """Prints the one JSON line; returns the exit code: 0 media decoded, 1 none, 2 HTTP failure."""
    whep.result.update(video.figures(whep))
    whep.result.update(audio.figures(whep))
    whep.result["errors"] = whep.result.pop("errors")  # last, for whoever reads the line
    if whep.result.get("http_status") != 201:
        code = 2
    elif video.frames or audio.samples:
        code = 0
    else:
        code = 1
        whep.error("nothing decoded")
    print(json.dumps(whep.result), flush=True)
    return code
