//! Test helpers shared by the integration tests (`mod common;`).
//!
//! - [`http`]: a tiny HTTP/1.1 client over `TcpStream` (also for malformed requests and
//!   streaming bodies).
//! - [`whep`]: a WHEP viewer on webrtc-rs 0.21, an independent WebRTC stack; loopback-only ICE;
//!   raw RTP with arrival times.
//! - [`runtime`]: the Tokio runtime for webrtc-rs with a fix for its SRTP-key race (the first
//!   RTP packets after the DTLS handshake were dropped).
//! - [`server`]: start the `tsbridge` binary on ephemeral loopback ports, killed on drop.
//! - [`cluster`]: cluster nodes as `tsbridge` processes on a real `redis-server` ([`redis`]).
//! - [`sse`]: WHEP server-sent events: subscribe, read events as they come.
//! - [`whip`]: a WHIP publisher on the same stack: a testdata TS file demuxed by tsbridge's own
//!   demuxer, sent in real time (looping), keyframe requests counted.
//! - [`relay`]: a lossy UDP link (loss, duplicates, reordering, delay, jitter), both ways.
//! - [`tools`]: outside programs (ffmpeg, srt-live-transmit): found, or a loud skip.
//! - [`tone`]: RMS and dominant frequency of decoded audio.
//! - [`h265`]: an RFC 7798 depacketizer (access units and their NAL unit types).
//! - [`h264`]: an RFC 6184 depacketizer that reports what a sender did (NAL types, marker
//!   placement, gaps).
//!
//! Each test crate uses a different part, hence the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod h264;
pub mod h265;
pub mod hook;
pub mod http;
pub mod redis;
pub mod relay;
pub mod runtime;
pub mod server;
pub mod sse;
#[path = "../../src/codec/transcode/tone.rs"]
pub mod tone;
pub mod tools;
pub mod whep;
pub mod whip;

pub use h264::{h264_access_units, live_start, sps_profile_level_id, ts_steps, Au};
pub use http::{request, HttpResponse};
pub use server::TsbridgeProcess;
pub use whep::{
    offer_sdp, sdp_codecs, whep_receive, SdpCodec, StopWhen, WhepOptions, WhepResult, WhepSession,
};
pub use whip::{whip_offer_sdp, whip_publish, FileMedia, OfferCodec, WhipOptions, WhipPublisher};

use std::time::Instant;

/// One received RTP packet: the header fields tests check, the payload, and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPkt {
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub ssrc: u32,
    pub payload: Vec<u8>,
    pub at: Instant,
    /// Header extensions: (id, value).
    pub exts: Vec<(u8, Vec<u8>)>,
}

impl RtpPkt {
    /// A packet for hand-made tests (`ssrc` 1, `pt` 102, arrival now).
    pub fn new(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> RtpPkt {
        RtpPkt {
            pt: 102,
            seq,
            ts,
            marker,
            ssrc: 1,
            payload: payload.to_vec(),
            at: Instant::now(),
            exts: Vec::new(),
        }
    }
}

/// The repository's `testdata/` directory.
/// Loopback server arguments with an SRT listener on a free port, and its address.
pub fn srt_loopback() -> (tsbridge::config::ServeArgs, std::net::SocketAddr) {
    let srt: std::net::SocketAddr = format!("127.0.0.1:{}", tools::free_udp_port())
        .parse()
        .unwrap();
    let mut args = tsbridge::config::ServeArgs::loopback();
    args.srt_listen = Some(srt);
    (args, srt)
}

pub fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// `GET /streams/{name}` on the server at `http_addr`, as JSON (asserting 200).
pub async fn stream_json(http_addr: std::net::SocketAddr, name: &str) -> serde_json::Value {
    stream_json_with(http_addr, name, &[]).await
}

/// [`stream_json`] with request headers (a token).
pub async fn stream_json_with(
    http_addr: std::net::SocketAddr,
    name: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let r = request(
        "GET",
        &format!("http://{http_addr}/streams/{name}"),
        headers,
        b"",
    )
    .await
    .expect("GET /streams/{name}");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("JSON")
}

/// A self-signed certificate for 127.0.0.1 and localhost in `dir` (made by the `openssl`
/// command): (cert.pem, key.pem).
#[allow(dead_code)] // not every test binary uses it
pub fn self_signed_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes the test certificate (apt-get install openssl)");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

/// A certificate authority and a server certificate for 127.0.0.1 and localhost signed by it,
/// in `dir` (made by the `openssl` command): (ca.pem, cert.pem, key.pem). For clients that
/// verify a chain (rustls does not take a self-signed server certificate as its own root).
#[allow(dead_code)] // not every test binary uses it
pub fn ca_signed_cert(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl makes the test certificates (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=tsbridge test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "key.pem", "-out", "server.csr"]);
    openssl(&csr);
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// URIs of the RTP header extensions the server answers when offered.
pub const ABS_CAPTURE_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";
pub const PLAYOUT_DELAY: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// The id `a=extmap` gives `uri` in `sdp`.
pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=extmap:")?;
        let (id, what) = rest.split_once(' ')?;
        (what.split_whitespace().next() == Some(uri))
            .then(|| id.split('/').next()?.parse().ok())
            .flatten()
    })
}

/// (abs-capture-time as µs since the Unix epoch, the packet's arrival as the same) of each
/// packet that carries one (extension `id`).
pub fn capture_times(packets: &[RtpPkt], id: u8) -> Vec<(u64, u64)> {
    let now = (Instant::now(), std::time::SystemTime::now());
    let unix_us = |at: Instant| {
        let t = now.1 - now.0.duration_since(at);
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
    };
    packets
        .iter()
        .filter_map(|p| {
            let (_, v) = p.exts.iter().find(|(i, _)| *i == id)?;
            let ntp = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            let secs = (ntp >> 32).checked_sub(2_208_988_800)?;
            let us = secs * 1_000_000 + (((ntp & 0xffff_ffff) * 1_000_000) >> 32);
            Some((us, unix_us(p.at)))
        })
        .collect()
}
