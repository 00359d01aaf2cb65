//! Contribution over real networks: the lossy link of the test support, and sources that
//! cross it (RTP-wrapped TS on `--udp`).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::relay::{Impairment, Relay};
use tokio::net::UdpSocket;

/// Loss, duplicates and reordering happen at about their rates, and replies come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_impairs_at_its_rates_and_carries_replies() {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let imp = Impairment {
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.1,
        ..Impairment::NONE
    };
    let relay = Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        echo_addr,
        imp,
        Impairment::NONE,
        7,
    )
    .await
    .unwrap();
    let client = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // Read while sending: a burst of replies would overflow the socket's buffer.
    let reader = tokio::spawn({
        let client = client.clone();
        async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while let Ok(Ok((4, _))) =
                tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await
            {
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
            }
            got
        }
    });
    for i in 0..1000u32 {
        client
            .send_to(&i.to_be_bytes(), relay.addr())
            .await
            .unwrap();
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let got = reader.await.unwrap();
    let f = &relay.stats.forward;
    eprintln!("forward: {}", f.summary());
    let dropped = f.dropped.load(Ordering::Relaxed);
    assert!((60..=140).contains(&dropped), "{}", f.summary());
    assert!(f.duplicated.load(Ordering::Relaxed) > 20, "{}", f.summary());
    assert_eq!(got.len() as u64, f.sent.load(Ordering::Relaxed));
    assert_eq!(
        relay.stats.backward.sent.load(Ordering::Relaxed),
        got.len() as u64
    );
    assert!(
        got.windows(2).any(|w| w[1] < w[0]),
        "some datagrams overtook others"
    );
}

/// Polls `GET /streams/{name}` until `pred` holds (or 10 s pass); returns the last answer.
async fn stream_until(
    http: std::net::SocketAddr,
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = common::stream_json(http, name).await;
        if pred(&j) || std::time::Instant::now() >= deadline {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every access unit from the first keyframe on is whole (no RTP gap) and decodes without an
/// error or concealment; returns how many there were.
fn decode_all(video: &[common::RtpPkt]) -> usize {
    use tsbridge::codec::h264_decoder::H264Decoder;
    let aus = common::h264_access_units(video);
    let first = aus
        .iter()
        .position(|a| a.is_keyframe())
        .expect("a keyframe");
    let mut d = H264Decoder::new(false).expect("OpenH264");
    for (i, au) in aus[first..].iter().enumerate() {
        assert!(au.complete, "access unit {i}: {:?}", au.problems);
        let (state, _) = d.decode(&au.annex_b());
        assert!(
            !state.fails(0),
            "access unit {i} did not decode cleanly: {state:?}"
        );
    }
    aus.len() - first
}

/// `ffmpeg -f rtp_mpegts` (TS in RTP, RFC 2250) into `--udp` through a link that reorders,
/// duplicates and delays: the headers are stripped, the packets put back in order, and a
/// webrtc-rs viewer decodes every frame; the API and metrics count what the link did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_wrapped_ts_over_a_reordering_link_plays() {
    let test = "rtp_wrapped_ts_over_a_reordering_link_plays";
    if !common::tools::have(test, "ffmpeg", "-version", "ffmpeg") {
        return;
    }
    let port = common::tools::free_udp_port();
    let server = common::TsbridgeProcess::serve(
        env!("CARGO_BIN_EXE_tsbridge"),
        &["--udp", &format!("rtp=127.0.0.1:{port}")],
    )
    .expect("tsbridge starts");
    let link = Impairment {
        reorder: 0.1,
        reorder_hold: Duration::from_millis(8),
        duplicate: 0.03,
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(4),
        ..Impairment::NONE
    };
    let relay = Relay::loopback(format!("127.0.0.1:{port}").parse().unwrap(), link, 22).await;
    let mut ffmpeg = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
        ])
        .arg("-i")
        .arg(common::testdata("h264_opus.ts"))
        .args(["-c", "copy", "-f", "rtp_mpegts"])
        .arg(format!("rtp://{}", relay.addr()))
        .kill_on_drop(true)
        .spawn()
        .expect("start ffmpeg");
    let r = common::whep_receive(
        &server.whep_url("rtp"),
        common::WhepOptions {
            seconds: 12.0,
            stop: common::StopWhen::VideoAus(150),
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let decoded = decode_all(&r.video);
    assert!(decoded >= 120, "{decoded} access units decoded");
    assert!(r.audio.len() > 100, "{} audio packets", r.audio.len());

    let http = server.authority().parse().unwrap();
    let j = stream_until(http, "rtp", |j| {
        j["rtp"]["reordered"].as_u64() > Some(0) && j["rtp"]["duplicates"].as_u64() > Some(0)
    })
    .await;
    let _ = ffmpeg.kill().await;
    eprintln!("relay forward: {}", relay.stats.forward.summary());
    eprintln!("stream rtp: {}", j["rtp"]);
    let rtp = &j["rtp"];
    assert!(rtp["packets"].as_u64() > Some(200), "{j}");
    assert!(rtp["reordered"].as_u64() > Some(0), "{j}");
    assert!(rtp["duplicates"].as_u64() > Some(0), "{j}");
    assert_eq!(rtp["lost"], 0, "{j}");
    assert_eq!(j["ts_problems"], 0, "no TS damage: {j}");
    let metrics = common::request("GET", &format!("{}/metrics", server.base), &[], b"")
        .await
        .expect("GET /metrics");
    let text = metrics.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("tsbridge_rtp_reordered_total{stream=\"rtp\"}"))
        .unwrap_or_else(|| panic!("no RTP reorder counter in\n{text}"));
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(server
        .logged_after(
            std::time::Instant::now() - Duration::from_secs(60),
            "RTP-wrapped TS"
        )
        .is_some());
}
