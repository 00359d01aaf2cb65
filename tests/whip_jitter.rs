//! WHIP over a bad link (`--whip-jitter-ms`): a webrtc-rs publisher sends real H.264 through the
//! lossy relay, and the TS the server makes of it is decoded with OpenH264.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::relay::{Impairment, Relay};
use common::{whip_publish, FileMedia, WhipOptions};

/// 5 % loss, 10 % reordering and 30 ms of jitter, both ways (NACKs and PLIs cross it too).
const LINK: Impairment = Impairment {
    loss: 0.05,
    duplicate: 0.0,
    reorder: 0.10,
    reorder_hold: Duration::from_millis(20),
    delay: Duration::from_millis(5),
    jitter: Duration::from_millis(30),
};

/// What came out of one run.
struct Run {
    /// Access units from the first keyframe on, and how many failed to decode cleanly.
    decoded: usize,
    errors: usize,
    whip: serde_json::Value,
    dropped: u64,
    metrics: String,
}

/// A server with `--whip-jitter-ms {jitter}`, a publisher through the relay, and 8 s of the
/// stream's TS read back and decoded.
async fn run(jitter: &str, seed: u64) -> Run {
    let port = common::tools::free_udp_port();
    let ice = format!("127.0.0.1:{port}");
    let server = common::TsbridgeProcess::spawn(
        env!("CARGO_BIN_EXE_tsbridge"),
        [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ice-udp",
            &ice,
            "--whip-jitter-ms",
            jitter,
        ]
        .map(String::from)
        .to_vec(),
    )
    .expect("tsbridge starts");
    let relay = Relay::loopback(ice.parse().unwrap(), LINK, seed).await;
    let mut publisher = whip_publish(
        &format!("{}/whip/cam", server.base),
        &common::testdata("h264_opus.ts"),
        WhipOptions {
            media_via: Some(relay.addr()),
            ..Default::default()
        },
    )
    .await
    .expect("WHIP publish");
    assert_eq!(publisher.status, 201, "{:?}", publisher.error_body);
    assert!(
        publisher
            .wait_connected(Duration::from_secs(10))
            .await
            .is_some(),
        "the publisher connects through the relay"
    );
    // Media is coming in (the jitter buffer counts it).
    let http: std::net::SocketAddr = server.authority().parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::stream_json(http, "cam").await["whip"]["packets"].as_u64() < Some(1) {
        assert!(std::time::Instant::now() < deadline, "no WHIP media");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut body = common::http::open("GET", &format!("{}/streams/cam.ts", server.base), &[], b"")
        .await
        .expect("GET /streams/cam.ts");
    assert_eq!(body.status, 200);
    let mut ts = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(Ok(Some(c))) = tokio::time::timeout_at(until, body.body.chunk()).await {
        ts.extend_from_slice(&c);
    }
    let j = common::stream_json(http, "cam").await;
    let metrics = common::request("GET", &format!("{}/metrics", server.base), &[], b"")
        .await
        .expect("GET /metrics")
        .text();
    publisher.close().await;

    let media = FileMedia::from_ts(&ts);
    // From the first keyframe on (without the buffer there may be none whole: then all).
    let first = media.video.iter().position(|(_, _, key)| *key).unwrap_or(0);
    let mut decoder = tsbridge::codec::h264_decoder::H264Decoder::new(false).expect("OpenH264");
    let aus = &media.video[first..];
    let errors = aus
        .iter()
        .filter(|(_, au, _)| decoder.decode(au).0.fails(0))
        .count();
    eprintln!(
        "--whip-jitter-ms {jitter}: {} access units, {errors} did not decode cleanly; whip: {}; \
         relay forward: {}; backward: {}",
        aus.len(),
        j["whip"],
        relay.stats.forward.summary(),
        relay.stats.backward.summary()
    );
    Run {
        decoded: aus.len(),
        errors,
        whip: j["whip"].clone(),
        dropped: relay.stats.forward.dropped.load(Ordering::Relaxed),
        metrics,
    }
}

/// 5 % loss, 10 % reordering, 30 ms jitter: with the jitter buffer the TS decodes without a
/// broken picture (holes are NACKed and filled, or skipped to the next keyframe); with
/// `--whip-jitter-ms 0` the same link breaks pictures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_over_a_lossy_link_decodes_cleanly_only_with_the_jitter_buffer() {
    let (on, off) = tokio::join!(run("40,400", 7), run("0", 7));

    // The link did its damage both times.
    assert!(
        on.dropped > 20 && off.dropped > 20,
        "{} {}",
        on.dropped,
        off.dropped
    );

    // With the buffer: a stream that plays (half of 8 s at 25 fps at least: the file's
    // publisher cannot answer a PLI, so a hole given up on costs the rest of its 1 s GOP),
    // and no broken picture.
    assert!(on.decoded >= 100, "{} access units", on.decoded);
    assert_eq!(on.errors, 0, "decode errors with the buffer");
    let w = &on.whip;
    assert!(w["recovered"].as_u64() > Some(10), "holes filled: {w}");
    assert!(w["nacks"].as_u64() > Some(0), "{w}");
    assert!(w["packets"].as_u64() > Some(300), "{w}");
    // Most of the video the relay dropped came back after a NACK.
    let lost = w["lost"].as_u64().expect("lost");
    assert!(
        lost * 3 < on.dropped,
        "{lost} video packets lost of {} dropped",
        on.dropped
    );
    let delay = w["delay_ms"].as_u64().expect("a delay");
    assert!((40..=400).contains(&delay), "{w}");
    let line = on
        .metrics
        .lines()
        .find(|l| l.starts_with("tsbridge_whip_recovered_total{stream=\"cam\"}"))
        .unwrap_or_else(|| panic!("no WHIP counter in\n{}", on.metrics));
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(on
        .metrics
        .contains("tsbridge_whip_jitter_delay_milliseconds{stream=\"cam\"}"));

    // Without: the same link breaks pictures, and holes are given up on at once.
    assert!(off.decoded >= 30, "{} access units", off.decoded);
    assert_eq!(
        off.whip["nacks"], 0,
        "nothing held, nothing asked for: {}",
        off.whip
    );
    assert!(off.errors > 0, "no decode error without the buffer");
    assert_eq!(off.whip["delay_ms"], 0, "{}", off.whip);
    assert!(off.whip["lost"].as_u64() > Some(10), "{}", off.whip);
}
