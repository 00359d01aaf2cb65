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
    let (clean, total, problems) = decode_count(video);
    assert_eq!(clean, total, "{problems:?}");
    total
}

/// From the first keyframe (with its SPS) on: how many access units are whole and decode
/// cleanly, how many there are, and what was wrong with the others.
fn decode_count(video: &[common::RtpPkt]) -> (usize, usize, Vec<String>) {
    use tsbridge::codec::h264_decoder::H264Decoder;
    let aus = common::h264_access_units(video);
    // From the first keyframe that carries its SPS (7): webrtc-rs (the client) drops its very
    // first packet when that packet is the keyframe's SPS/PPS aggregate.
    let first = aus
        .iter()
        .position(|a| a.is_keyframe() && a.nal_types.contains(&7))
        .expect("a keyframe with its SPS");
    let mut d = H264Decoder::new(false).expect("OpenH264");
    let (mut clean, mut problems) = (0, Vec::new());
    for (i, au) in aus[first..].iter().enumerate() {
        if !au.complete {
            problems.push(format!("access unit {i}: {:?}", au.problems));
            continue;
        }
        let (state, _) = d.decode(&au.annex_b());
        if state.fails(0) {
            problems.push(format!("access unit {i} did not decode cleanly: {state:?}"));
        } else {
            clean += 1;
        }
    }
    (clean, aus.len() - first, problems)
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
    let mut ffmpeg = common::tools::ffmpeg_loop(
        "h264_opus.ts",
        "rtp_mpegts",
        &format!("rtp://{}", relay.addr()),
    );
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

/// `h264_opus.ts` sent live to `url` as MPEG-TS (SRT here), killed on drop.
fn ffmpeg_publish(url: &str) -> tokio::process::Child {
    common::tools::ffmpeg_loop("h264_opus.ts", "mpegts", url)
}

const PASSPHRASE: &str = "correct-horse-battery";
const TOKEN: &str = "srt-publish-token";

/// `tsbridge serve --srt-listen` on a free port, with a passphrase and a publish token.
fn srt_server(extra: &[&str]) -> (common::TsbridgeProcess, std::net::SocketAddr) {
    let port = common::tools::free_udp_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    let mut args = vec![
        "--srt-listen",
        &listen,
        "--srt-passphrase",
        PASSPHRASE,
        "--publish-token",
        TOKEN,
    ];
    args.extend_from_slice(extra);
    let server =
        common::TsbridgeProcess::serve(env!("CARGO_BIN_EXE_tsbridge"), &args).expect("starts");
    (server, addr)
}

/// ffmpeg publishes over SRT (AES, token in the stream id) through a link that loses 5 % of
/// the datagrams both ways with 30 ms of jitter: SRT's retransmissions repair it within the
/// latency, and a webrtc-rs viewer decodes every frame with no gap; the API shows the
/// connection's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_publisher_over_a_lossy_link_plays_without_a_gap() {
    if !common::tools::have_srt("srt_publisher_over_a_lossy_link_plays_without_a_gap") {
        return;
    }
    // 300 ms (6x the relay's RTT): 120 ms holds 5 % loss on an idle machine, but the test
    // also runs beside others on two loaded cores, where a retransmission can come late.
    let (server, srt) = srt_server(&["--srt-latency-ms", "300"]);
    let link = Impairment {
        loss: 0.05,
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(30),
        ..Impairment::NONE
    };
    let relay = Relay::loopback(srt, link, 5).await;
    let _ffmpeg = ffmpeg_publish(&format!(
        "srt://{}?passphrase={PASSPHRASE}&streamid=#!::r=lossy,m=publish,s={TOKEN}",
        relay.addr(),
    ));
    let r = common::whep_receive(
        &server.whep_url("lossy"),
        common::WhepOptions {
            seconds: 15.0,
            stop: common::StopWhen::VideoAus(240),
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let decoded = decode_all(&r.video);
    let http = server.authority().parse().unwrap();
    let j = common::stream_json(http, "lossy").await;
    eprintln!("relay forward: {}", relay.stats.forward.summary());
    eprintln!("relay backward: {}", relay.stats.backward.summary());
    eprintln!("stream srt: {}", j["srt"]);
    assert!(decoded >= 200, "{decoded} access units decoded");
    assert!(relay.stats.forward.dropped.load(Ordering::Relaxed) > 20);
    let srt = &j["srt"];
    assert!(srt["retransmitted"].as_u64() > Some(0), "{j}");
    assert!(srt["lost"].as_u64() > Some(0), "{j}");
    assert_eq!(srt["dropped"], 0, "nothing given up: {j}");
    assert_eq!(j["ts_problems"], 0, "no TS damage: {j}");
}

/// A caller with the wrong passphrase, and one with the wrong token, are refused with a log
/// line each, and no stream is created for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_wrong_passphrase_or_token_is_refused_and_creates_nothing() {
    if !common::tools::have_srt("srt_wrong_passphrase_or_token_is_refused_and_creates_nothing") {
        return;
    }
    let (server, srt) = srt_server(&[]);
    let since = std::time::Instant::now();
    let tries = [
        (
            "badpass",
            "some other passphrase",
            TOKEN,
            "wrong passphrase",
        ),
        (
            "badtoken",
            PASSPHRASE,
            "not-the-token",
            "wrong or missing token",
        ),
    ];
    for (name, pass, token, logged) in tries {
        let mut ffmpeg = ffmpeg_publish(&format!(
            "srt://{srt}?passphrase={pass}&streamid=#!::r={name},s={token}"
        ));
        let status = tokio::time::timeout(Duration::from_secs(10), ffmpeg.wait())
            .await
            .expect("ffmpeg gives up within 10 s")
            .expect("ffmpeg ran");
        assert!(!status.success(), "{name}: ffmpeg should fail");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while server.logged_after(since, logged).is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            server.logged_after(since, logged).is_some(),
            "{name}: no log line with {logged:?}"
        );
        let r = common::request("GET", &format!("{}/streams/{name}", server.base), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{name}: {}", r.text());
    }
    // A stream id that does not parse is refused in the handshake, saying why.
    let mut ffmpeg = ffmpeg_publish(&format!(
        "srt://{srt}?passphrase={PASSPHRASE}&streamid=#!::r=../up,s={TOKEN}"
    ));
    let status = tokio::time::timeout(Duration::from_secs(10), ffmpeg.wait())
        .await
        .expect("ffmpeg gives up within 10 s")
        .expect("ffmpeg ran");
    assert!(!status.success());
    assert!(
        logged_times(
            &server,
            since,
            "SRT caller refused: invalid stream name",
            Duration::from_secs(3)
        )
        .await
    );
}

/// `m=request` reads a stream as TS over SRT: ffprobe sees its H.264 and Opus tracks; a wrong
/// view token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_request_is_read_by_ffprobe() {
    if !common::tools::have_srt("srt_request_is_read_by_ffprobe") {
        return;
    }
    let demo = common::testdata("h264_opus.ts");
    let replay = format!("cam={}", demo.display());
    let (server, srt) = srt_server(&["--replay", &replay, "--view-token", "view-tok"]);
    let probe = |token: &str| {
        tokio::process::Command::new("ffprobe")
            .args(["-hide_banner", "-loglevel", "error", "-show_entries"])
            .args(["stream=codec_name", "-of", "csv=p=0"])
            .arg(format!(
                "srt://{srt}?passphrase={PASSPHRASE}&streamid=#!::r=cam,m=request,s={token}"
            ))
            .kill_on_drop(true)
            .output()
    };
    let out = tokio::time::timeout(Duration::from_secs(20), probe("view-tok"))
        .await
        .expect("ffprobe within 20 s")
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // Each stream once, and again under its program.
    let mut codecs: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    codecs.sort();
    codecs.dedup();
    assert_eq!(codecs, ["h264", "opus"], "{text}");
    let since = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(20), probe("nope"))
        .await
        .expect("ffprobe within 20 s")
        .expect("ffprobe runs");
    assert!(!out.status.success());
    assert!(server
        .logged_after(since, "SRT reader refused: wrong or missing token")
        .is_some());
}

/// An SRT reader (`m=request`, ffmpeg for 5 s of the stream) is listed in `/streams/{s}` with
/// its connection's sender-side figures while it reads (packets sent, an RTT; its address for
/// the admin only), and is gone from the list once it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_reader_figures_are_listed_while_it_reads() {
    if !common::tools::have_srt("srt_reader_figures_are_listed_while_it_reads") {
        return;
    }
    const ADMIN: &str = "admin-secret-token";
    let demo = common::testdata("h264_opus.ts");
    let replay = format!("cam={}", demo.display());
    let (server, srt) = srt_server(&["--replay", &replay, "--admin-token", ADMIN]);
    let http: std::net::SocketAddr = server.authority().parse().unwrap();
    let admin = format!("Bearer {ADMIN}");
    let since = std::time::Instant::now();
    let mut reader = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(format!(
            "srt://{srt}?passphrase={PASSPHRASE}&streamid=#!::r=cam,m=request"
        ))
        .args(["-t", "5", "-c", "copy", "-f", "mpegts", "-y", "/dev/null"])
        .kill_on_drop(true)
        .spawn()
        .expect("start ffmpeg");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let j = loop {
        let j = common::stream_json_with(http, "cam", &[("Authorization", &admin)]).await;
        let r = &j["srt_readers"][0];
        // (Its first figures may come before the first keyframe was sent: a few packets.)
        if r["packets_sent"].as_u64() > Some(20) && r["rtt_ms"].as_f64() > Some(0.0) {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reader with figures: {j}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("while reading: {}", j["srt_readers"]);
    let readers = j["srt_readers"].as_array().unwrap();
    assert_eq!(readers.len(), 1, "{j}");
    let r = &readers[0];
    assert!(
        r["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{r}"
    );
    assert!(r["bytes_sent"].as_u64() > Some(1000), "{r}");
    assert!(r["latency_ms"].as_u64() > Some(0), "{r}");
    assert_eq!(r["dropped"], 0, "{r}");
    // Without the admin token, no address.
    let anon = common::stream_json(http, "cam").await;
    assert_eq!(
        anon["srt_readers"][0]["peer"],
        serde_json::Value::Null,
        "{anon}"
    );

    let status = tokio::time::timeout(Duration::from_secs(20), reader.wait())
        .await
        .expect("ffmpeg reads 5 s and leaves")
        .expect("ffmpeg ran");
    assert!(status.success(), "{status:?}");
    let left = std::time::Instant::now();
    loop {
        let j = common::stream_json(http, "cam").await;
        if j["srt_readers"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "the reader is still listed: {j}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "the reader left the list {:.1} s after ffmpeg exited",
        left.elapsed().as_secs_f64()
    );
    // Its last figures are logged as it leaves.
    let (_, line) = server
        .logged_after(since, "SRT reader left")
        .expect("a log line as the reader leaves");
    eprintln!("{line}");
    assert!(line.contains("packets="), "{line}");
    // The metrics keep what the reader was sent after it left.
    let metrics = common::request(
        "GET",
        &format!("{}/metrics", server.base),
        &[("Authorization", &admin)],
        b"",
    )
    .await
    .expect("GET /metrics");
    let text = metrics.text();
    let value = |name: &str| {
        let series = format!("{name}{{stream=\"cam\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(value("tsbridge_srt_reader_packets_sent_total") > 20);
    assert_eq!(value("tsbridge_srt_readers"), 0);
}

/// `srt-live-transmit` as an SRT listener (AES) relaying the UDP TS it gets on `udp_in`.
fn srt_live_transmit(udp_in: u16, srt_port: u16) -> tokio::process::Child {
    common::tools::srt_live_transmit(udp_in, srt_port, Some(PASSPHRASE))
}

/// Waits (up to `within`) for the `n`th log line with `needle` read after `since`.
async fn logged_times(
    server: &common::TsbridgeProcess,
    since: std::time::Instant,
    needle: &str,
    within: Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if server.logged_after(since, needle).is_some() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--srt-pull` calls `srt-live-transmit` (listener, AES): the stream plays; when the listener
/// restarts, the pull connects again by itself and the stream plays again. (ffmpeg feeds
/// srt-live-transmit over plain UDP, which a loaded machine may drop: a few pictures may not
/// decode.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_pull_plays_and_reconnects_after_the_listener_restarts() {
    if !common::tools::have_srt("srt_pull_plays_and_reconnects_after_the_listener_restarts") {
        return;
    }
    let (udp_in, srt_port) = (
        common::tools::free_udp_port(),
        common::tools::free_udp_port(),
    );
    let _ffmpeg = ffmpeg_publish(&format!("udp://127.0.0.1:{udp_in}?pkt_size=1316"));
    let mut slt = srt_live_transmit(udp_in, srt_port);
    let pull = format!("pulled=srt://127.0.0.1:{srt_port}?passphrase={PASSPHRASE}");
    let server =
        common::TsbridgeProcess::serve(env!("CARGO_BIN_EXE_tsbridge"), &["--srt-pull", &pull])
            .expect("starts");
    let url = server.whep_url("pulled");
    let watch = || {
        common::whep_receive(
            &url,
            common::WhepOptions {
                seconds: 10.0,
                stop: common::StopWhen::VideoAus(45),
                ..Default::default()
            },
        )
    };
    let r = watch().await.expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let (clean, total, problems) = decode_count(&r.video);
    assert!(
        clean >= 35 && total >= 40,
        "{clean} of {total}: {problems:?}"
    );

    let since = std::time::Instant::now();
    let _ = slt.kill().await;
    assert!(
        logged_times(
            &server,
            since,
            "SRT pull: connection ended",
            Duration::from_secs(10)
        )
        .await,
        "the pull noticed the listener going away"
    );
    let restarted = std::time::Instant::now();
    let _slt = srt_live_transmit(udp_in, srt_port);
    assert!(
        logged_times(
            &server,
            restarted,
            "SRT pull: connected",
            Duration::from_secs(15)
        )
        .await,
        "the pull connected again"
    );
    let r = watch().await.expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let (clean, total, problems) = decode_count(&r.video);
    assert!(
        clean >= 35 && total >= 40,
        "{clean} of {total}: {problems:?}"
    );
}

/// An SRT publisher that goes away and comes back within `--source-grace` is the same stream
/// to its viewers: the viewer stays connected and its video goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_publisher_returning_within_the_grace_keeps_its_viewers() {
    if !common::tools::have_srt("srt_publisher_returning_within_the_grace_keeps_its_viewers") {
        return;
    }
    let (server, srt) = srt_server(&["--source-grace", "10"]);
    // `latency=` in the stream id sets the connection's latency.
    let url =
        format!("srt://{srt}?passphrase={PASSPHRASE}&streamid=#!::r=back,s={TOKEN},latency=300");
    let mut first = ffmpeg_publish(&url);
    let viewer = common::WhepSession::start(&server.whep_url("back"), &Default::default())
        .await
        .expect("WHEP");
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    let aus = |c: &common::whep::Collected| common::h264_access_units(&c.video).len();
    assert!(
        viewer
            .wait_until(Duration::from_secs(10), |c| aus(c) >= 30)
            .await
    );
    let since = std::time::Instant::now();
    let _ = first.kill().await;
    assert!(
        logged_times(&server, since, "SRT source left", Duration::from_secs(10)).await,
        "the publisher's leaving was seen"
    );
    let before = aus(&viewer.collected());
    let _second = ffmpeg_publish(&url);
    assert!(
        viewer
            .wait_until(Duration::from_secs(10), |c| aus(c) >= before + 30)
            .await,
        "the same viewer gets the returning publisher's video"
    );
    let r = viewer.finish().await;
    assert!(common::h264_access_units(&r.video).len() >= before + 30);
    let j = common::stream_json(server.authority().parse().unwrap(), "back").await;
    assert_eq!(j["srt"]["latency_ms"], 300, "{j}");
}

/// RTP-wrapped TS over a link that loses packets: each gap is given up on after
/// `--udp-reorder-ms` and counted lost (as many as the link dropped; not late, not a
/// duplicate), and the stream plays on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_wrapped_ts_with_loss_counts_it_and_plays_on() {
    let test = "rtp_wrapped_ts_with_loss_counts_it_and_plays_on";
    if !common::tools::have(test, "ffmpeg", "-version", "ffmpeg") {
        return;
    }
    let port = common::tools::free_udp_port();
    let server = common::TsbridgeProcess::serve(
        env!("CARGO_BIN_EXE_tsbridge"),
        &[
            "--udp",
            &format!("lossy=127.0.0.1:{port}"),
            "--udp-reorder-ms",
            "30",
        ],
    )
    .expect("tsbridge starts");
    let link = Impairment {
        loss: 0.02,
        ..Impairment::NONE
    };
    let relay = Relay::loopback(format!("127.0.0.1:{port}").parse().unwrap(), link, 9).await;
    let mut ffmpeg = common::tools::ffmpeg_loop(
        "h264_opus.ts",
        "rtp_mpegts",
        &format!("rtp://{}", relay.addr()),
    );
    let r = common::whep_receive(
        &server.whep_url("lossy"),
        common::WhepOptions {
            seconds: 12.0,
            stop: common::StopWhen::VideoAus(150),
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let (clean, total, _) = decode_count(&r.video);
    let http = server.authority().parse().unwrap();
    let j = stream_until(http, "lossy", |j| j["rtp"]["lost"].as_u64() > Some(0)).await;
    let _ = ffmpeg.kill().await;
    eprintln!("relay forward: {}", relay.stats.forward.summary());
    eprintln!(
        "stream rtp: {}; {clean} of {total} access units decoded",
        j["rtp"]
    );
    let dropped = relay.stats.forward.dropped.load(Ordering::Relaxed);
    let rtp = &j["rtp"];
    assert!(rtp["lost"].as_u64() > Some(0), "{j}");
    assert!(
        rtp["lost"].as_u64() <= Some(dropped),
        "no more lost than dropped: {j}"
    );
    assert_eq!(rtp["late"], 0, "{j}");
    assert_eq!(rtp["duplicates"], 0, "{j}");
    // A lost TS packet damages its picture and those after it until the next keyframe
    // (every second here): the stream goes on, and decodes again at each keyframe.
    assert!(total >= 100 && clean >= 30, "{clean} of {total}");
}

/// Stopping the server (in process: dropping it) closes its SRT connections: the publisher
/// learns at once, rather than sending into a server that no longer listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_closes_its_srt_connections() {
    if !common::tools::have_srt("stopping_the_server_closes_its_srt_connections") {
        return;
    }
    let (args, srt) = common::srt_loopback();
    let server = tsbridge::server::Server::start(args).await.expect("starts");
    let mut ffmpeg = ffmpeg_publish(&format!("srt://{srt}?streamid=stop"));
    let http = server.http_addr;
    tokio::time::sleep(Duration::from_millis(1500)).await; // ffmpeg connects
    let j = stream_until(http, "stop", |j| j["source"] == "live").await;
    assert_eq!(j["source"], "live", "{j}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ffmpeg.wait())
            .await
            .is_err(),
        "ffmpeg publishes"
    );
    drop(server);
    let status = tokio::time::timeout(Duration::from_secs(3), ffmpeg.wait())
        .await
        .expect("ffmpeg sees its connection closed within 3 s (not SRT's 5 s peer timeout)")
        .expect("ffmpeg ran");
    assert!(!status.success());
}

/// A server (in process) stopping while an SRT reader (`m=request`) is connected, and its
/// runtime with it: the reader's thread, which waits on the runtime for the stream's bytes, is
/// woken first and ends without a panic (a tokio timer still waiting when its runtime stops
/// panics), also while its stream is silent. The server runs on a runtime of its own, whose
/// threads' panics are recorded.
#[test]
fn stopping_the_runtime_with_an_srt_reader_connected_panics_nothing() {
    let test = "stopping_the_runtime_with_an_srt_reader_connected_panics_nothing";
    if !common::tools::have_srt(test) {
        return;
    }
    const THREADS: &str = "srt-reader-stop-test";
    let panics = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let panics = panics.clone();
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(THREADS) {
                panics.lock().unwrap().push(info.to_string());
            }
            before(info);
        }));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()
        .unwrap();
    let mut reader = rt.block_on(async {
        let (args, srt) = common::srt_loopback();
        let server = tsbridge::server::Server::start(args).await.expect("starts");
        let url = format!("http://{}/ingest/cam", server.http_addr);
        let pushing = tokio::spawn(async move {
            tsbridge::ingest::replay::push(&common::testdata("h264_opus.ts"), &url, true).await
        });
        let created = format!("http://{}/streams/cam", server.http_addr);
        while common::request("GET", &created, &[], b"")
            .await
            .unwrap()
            .status
            != 200
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reader = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-i"])
            .arg(format!("srt://{srt}?streamid=#!::r=cam,m=request"))
            .args(["-t", "60", "-c", "copy", "-f", "mpegts", "-y", "/dev/null"])
            .spawn()
            .expect("start ffmpeg");
        let j = stream_until(server.http_addr, "cam", |j| {
            j["srt_readers"][0]["packets_sent"].as_u64() > Some(0)
        })
        .await;
        assert_eq!(j["srt_readers"].as_array().map(Vec::len), Some(1), "{j}");
        // The source ends: the reader's thread waits for bytes that do not come.
        pushing.abort();
        stream_until(server.http_addr, "cam", |j| j["source"] == "ended").await;
        server.shutdown().await;
        reader
    });
    drop(rt);
    let _ = reader.kill();
    let _ = reader.wait();
    let panics = panics.lock().unwrap();
    assert!(panics.is_empty(), "{panics:#?}");
}

/// A stream registered with its own SRT passphrase (issue 22): its publisher encrypts with
/// that one and plays; the listener's `--srt-passphrase` no longer opens it (refused in the
/// handshake, logged); other streams keep the listener's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_stream_has_its_own_srt_passphrase() {
    let test = "a_registered_stream_has_its_own_srt_passphrase";
    if !common::tools::have_srt(test) {
        return;
    }
    let (server, srt) = srt_server(&["--admin-token", "admin-secret-token"]);
    let own = "own-stream-passphrase";
    let body = format!(r#"{{"publish_token": "own-publish-token", "srt_passphrase": "{own}"}}"#);
    let r = common::request(
        "POST",
        &format!("{}/streams/own", server.base),
        &[
            ("Authorization", "Bearer admin-secret-token"),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.text().contains(own), "{}", r.text());
    // Too short for libsrt: refused with why.
    let r = common::request(
        "POST",
        &format!("{}/streams/short", server.base),
        &[("Authorization", "Bearer admin-secret-token")],
        br#"{"srt_passphrase": "short"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    // The listener's passphrase does not open the registered stream.
    let since = std::time::Instant::now();
    let mut wrong = ffmpeg_publish(&format!(
        "srt://{srt}?passphrase={PASSPHRASE}&streamid=#!::r=own,s=own-publish-token"
    ));
    let status = tokio::time::timeout(Duration::from_secs(10), wrong.wait())
        .await
        .expect("ffmpeg gives up within 10 s")
        .expect("ffmpeg ran");
    assert!(!status.success());
    assert!(
        logged_times(&server, since, "wrong passphrase", Duration::from_secs(3)).await,
        "the refusal is logged"
    );
    // Its own does.
    let _ffmpeg = ffmpeg_publish(&format!(
        "srt://{srt}?passphrase={own}&streamid=#!::r=own,s=own-publish-token"
    ));
    plays(&server, "own").await;
    // Another stream still takes the listener's passphrase.
    let _other = ffmpeg_publish(&format!(
        "srt://{srt}?passphrase={PASSPHRASE}&streamid=#!::r=other,s={TOKEN}"
    ));
    plays(&server, "other").await;
}

/// Waits (10 s at most) until stream `name` exists and got video over SRT.
async fn plays(server: &common::TsbridgeProcess, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = format!("{}/streams/{name}", server.base);
        let r = common::request("GET", &url, &[], b"").await.unwrap();
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if j["video_frames"].as_u64().unwrap_or(0) > 25 && j["srt"].is_object() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} not playing: {j}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
