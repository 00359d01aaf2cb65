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
        }
    }
}

/// The repository's `testdata/` directory.
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
