#!/usr/bin/python3
"""tsbridge's GStreamer WHEP viewer (webrtcbin, ICE by libnice).

Offers recvonly H.264 (H.265 first with --video-codec H265) and Opus with every ICE candidate
in the offer (non-trickle), POSTs it, decodes what arrives for --seconds counted from the POST,
DELETEs the session and prints ONE JSON line (keys: tests/peers/README.md). Exit 0 when media
was decoded, 1 when none was, 2 when the POST failed.

Run it with Debian's /usr/bin/python3: python3-gi is a Debian package.

    /usr/bin/python3 tests/peers/whep_gst.py http://127.0.0.1:8889/whep/demo --seconds 5
"""
import hashlib
import os
import ssl
import subprocess
import tempfile
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstSdp, GstVideo, GstWebRTC  # noqa: E402

import whep_common  # noqa: E402

FEEDBACK = "rtcp-fb-nack=(boolean)true,rtcp-fb-nack-pli=(boolean)true"
H265 = ("encoding-name=H265,payload=98,profile-id=(string)1,tier-flag=(string)0,"
        "level-id=(string)93")
H264 = [f"encoding-name=H264,payload={pt},packetization-mode=(string)1,"
        f"profile-level-id=(string){profile},level-asymmetry-allowed=(string)1"
        for pt, profile in ((102, "42e01f"), (104, "42001f"), (106, "4d001f"), (108, "64001f"))]
OPUS = ("application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
        "encoding-params=(string)2")
DECODERS = {
    "H264": ["rtph264depay", "h264parse", "avdec_h264"],
    "H265": ["rtph265depay", "h265parse", "avdec_h265"],
    "OPUS": ["rtpopusdepay", "opusdec"],
}
RECVONLY = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY


def ecdsa_certificate():
    """(PEM of a self-signed P-256 certificate and its key, the certificate's SHA-256
    fingerprint). GStreamer 1.22 makes an RSA certificate by default, and tsbridge's DTLS
    (str0m's, ECDSA only) ends the handshake with it."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=whep_gst",
                        "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"], check=True,
                       capture_output=True)
        with open(f"{d}/cert.pem") as c, open(f"{d}/key.pem") as k:
            cert, key = c.read(), k.read()
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert)).hexdigest().upper()
    return cert + key, ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def emit(webrtc, signal, *args):
    """A webrtcbin action signal that answers through a promise: its reply."""
    promise = Gst.Promise.new()
    webrtc.emit(signal, *args, promise)
    if promise.wait() != Gst.PromiseResult.REPLIED:
        raise RuntimeError(f"{signal}: no reply")
    reply = promise.get_reply()
    if reply is not None and reply.has_field("error"):
        raise RuntimeError(f"{signal}: {reply.get_value('error').message}")
    return reply


class Viewer:
    def __init__(self, args, whep):
        self.args, self.whep = args, whep
        self.video, self.audio = whep_common.VideoMeter(), whep_common.AudioMeter()
        self.gathered = threading.Event()
        self.pipe = Gst.Pipeline.new()
        self.webrtc = Gst.ElementFactory.make("webrtcbin")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.pipe.add(self.webrtc)
        # Kept for the viewer's life: PyGObject (3.42) drops a reference of webrtcbin's when
        # the wrapper of this property dies, and webrtcbin then crashes on a freed agent.
        self.ice = self.webrtc.get_property("ice-agent")
        # libnice never gathers a loopback address by itself: hand it the one to use.
        self.ice.emit("add-local-ip-address", args.ice_ip)
        self.ice.set_property("ice-tcp", False)
        self.nice = self.ice.get_property("agent")
        self.nice.set_property("upnp", False)  # no UPnP search while gathering
        self.pem, self.fingerprint = ecdsa_certificate()
        self.webrtc.connect("deep-element-added", self.on_element)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("pad-added", self.on_pad)

    def on_element(self, _bin, _parent, element):
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "dtlssrtpdec":  # made before the offer
            element.set_property("pem", self.pem)

    def on_gathering(self, webrtc, _):
        if webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.gathered.set()

    def on_pad(self, _, pad):
        """A received stream: depayload, decode, measure at the decoder, discard."""
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        encoding = pad.get_current_caps().get_structure(0).get_string("encoding-name").upper()
        names = DECODERS.get(encoding)
        if names is None:
            self.whep.error(f"received {encoding}, which this viewer does not decode")
            return
        elements = [Gst.ElementFactory.make(n) for n in ["queue", *names, "fakesink"]]
        if None in elements:
            self.whep.error(f"a GStreamer element of {names} is missing")
            return
        for e in elements:
            self.pipe.add(e)
        for a, b in zip(elements, elements[1:]):
            a.link(b)
        for e in elements:
            e.sync_state_with_parent()
        probe = self.on_audio if encoding == "OPUS" else self.on_video
        elements[-2].get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, probe)
        pad.link(elements[0].get_static_pad("sink"))

    def on_video(self, pad, info):
        vinfo = GstVideo.VideoInfo.new_from_caps(pad.get_current_caps())
        luma = stride = None
        if self.video.wants_pixels():
            buf = info.get_buffer()
            ok, mapped = buf.map(Gst.MapFlags.READ)
            if ok:
                luma, stride = bytes(mapped.data)[vinfo.offset[0]:], vinfo.stride[0]
                buf.unmap(mapped)
        self.video.add(vinfo.width, vinfo.height, luma, stride)
        return Gst.PadProbeReturn.OK

    def on_audio(self, pad, info):
        caps = pad.get_current_caps().get_structure(0)  # opusdec: S16LE, interleaved
        buf = info.get_buffer()
        ok, mapped = buf.map(Gst.MapFlags.READ)
        if ok:
            self.audio.add(bytes(mapped.data), caps.get_value("channels"), caps.get_value("rate"))
            buf.unmap(mapped)
        return Gst.PadProbeReturn.OK

    def offer(self):
        video = [H265] if self.args.video_codec == "H265" else []
        video = Gst.Caps.from_string(";".join(
            f"application/x-rtp,media=video,clock-rate=90000,{codec},{FEEDBACK}"
            for codec in video + H264))
        self.webrtc.emit("add-transceiver", RECVONLY, video)
        self.webrtc.emit("add-transceiver", RECVONLY, Gst.Caps.from_string(OPUS))
        reply = emit(self.webrtc, "create-offer", None)  # owns the offer: keep it meanwhile
        emit(self.webrtc, "set-local-description", reply.get_value("offer"))
        if not self.gathered.wait(5):
            self.whep.error("ICE gathering not complete after 5 s; offering what there is")
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        # webrtcbin 1.22 hashes the whole PEM, key included, into a=fingerprint: put the
        # certificate's own there.
        return "\r\n".join(f"a=fingerprint:sha-256 {self.fingerprint}"
                            if line.startswith("a=fingerprint:") else line
                            for line in sdp.splitlines()) + "\r\n"

    def run(self):
        self.pipe.set_state(Gst.State.PLAYING)
        try:
            answer = self.whep.post(self.offer())
            if answer is None:
                return
            _, sdp = GstSdp.SDPMessage.new_from_text(answer)
            emit(self.webrtc, "set-remote-description", GstWebRTC.WebRTCSessionDescription.new(
                GstWebRTC.WebRTCSDPType.ANSWER, sdp))
            bus = self.pipe.get_bus()
            while (left := self.whep.t_post + self.args.seconds - time.monotonic()) > 0:
                msg = bus.timed_pop_filtered(int(left * Gst.SECOND), Gst.MessageType.ERROR)
                if msg is not None:
                    self.whep.error(f"{msg.src.get_name()}: {msg.parse_error()[0].message}")
            state = self.webrtc.get_property("connection-state")
            if state != GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
                self.whep.error(f"connection state {state.value_nick}")
        except Exception as e:  # recorded in the JSON, never lost
            self.whep.error(f"{type(e).__name__}: {e}")
        finally:
            self.whep.delete()  # before the DTLS close, which would end the session first
            self.pipe.set_state(Gst.State.NULL)


def main():
    p = whep_common.arg_parser(__doc__.splitlines()[0])
    p.add_argument("--video-codec", choices=["H264", "H265"], default="H264",
                   help="H265: offer H.265 before the H.264 profiles (default H264 only)")
    args = p.parse_args()
    Gst.init(None)
    whep = whep_common.Whep("gstreamer", args.url, args.token)
    viewer = Viewer(args, whep)
    viewer.run()
    code = whep_common.finish(whep, viewer.video, viewer.audio)
    os._exit(code)  # skips PyGObject's noisy teardown of the stopped pipeline


if __name__ == "__main__":
    main()
