//! Auth, limits and shutdown: clear statuses, never a hang.

mod common;

use std::time::{Duration, Instant};

use common::{request, WhepOptions};
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;
use webrtc::peer_connection::RTCPeerConnectionState;

async fn serve(tweak: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut args = ServeArgs::loopback();
    args.replays.push(Named {
        name: "cam".into(),
        value: common::testdata("h264_opus.ts"),
    });
    tweak(&mut args);
    Server::start(args).await.expect("server starts")
}

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_viewing_and_publishing() {
    let s = serve(|a| {
        a.view_token = Some("v-secret".into());
        a.publish_token = Some("p-secret".into());
    })
    .await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let sdp = ("Content-Type", "application/sdp");

    for auth in [None, Some("Bearer wrong"), Some("Bearer p-secret")] {
        let mut h = vec![sdp];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        let r = request("POST", &url(&s, "/whep/cam"), &h, offer.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert!(r
            .header("www-authenticate")
            .unwrap_or("")
            .starts_with("Bearer"));
        assert!(!r.text().contains("secret"), "tokens are never echoed");
    }
    let r = request("GET", &url(&s, "/streams"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = request("GET", &url(&s, "/streams/cam.ts"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = request(
        "PUT",
        &url(&s, "/ingest/x"),
        &[("Authorization", "Bearer v-secret")],
        b"\x47",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "the view token does not publish");
    let r = request("POST", &url(&s, "/whip/x"), &[sdp], offer.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    let opts = WhepOptions {
        token: Some("v-secret".into()),
        ..Default::default()
    };
    let viewer = common::WhepSession::start(&url(&s, "/whep/cam"), &opts)
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| !c.video.is_empty())
            .await
    );
    let loc = viewer.location.clone().unwrap();
    let r = request("DELETE", &loc, &[], b"").await.unwrap();
    assert_eq!(r.status, 401, "only the owner's token may end the session");
    let r = request("DELETE", &loc, &[("Authorization", "Bearer v-secret")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_answer_503_with_retry_after() {
    let s = serve(|a| a.max_viewers = 1).await;
    let first = common::WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let t = Instant::now();
    let r = request(
        "POST",
        &url(&s, "/whep/cam"),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "answered at once, no hang"
    );

    let s2 = serve(|a| a.max_sessions = 0).await;
    let r = request(
        "POST",
        &url(&s2, "/whep/cam"),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("--max-sessions"));
}

/// SIGTERM: the binary ends its sessions and exits 0 within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_quickly() {
    let (mut child, base) = common::server::serve_async(
        &[
            "--replay".into(),
            format!("cam={}", common::testdata("h264_opus.ts").display()),
        ],
        false,
    )
    .await;
    let viewer = common::WhepSession::start(&format!("{base}/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| !c.video.is_empty())
            .await
    );
    let pid = child.id().unwrap() as i32;
    let t = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { kill(pid, 15) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits within 5 s")
        .unwrap();
    assert!(status.success(), "{status}");
    eprintln!("exited in {:?}", t.elapsed());
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// `GET /metrics` exposes global and per-stream series that move with the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sessions_packets_and_first_frames() {
    let s = serve(|_| {}).await;
    let viewer = common::WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 30)
            .await
    );
    let r = request("GET", &url(&s, "/metrics"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
    };
    assert_eq!(
        value("tsbridge_sessions_created_total{role=\"viewer\"}"),
        1.0
    );
    assert_eq!(value("tsbridge_viewers{stream=\"cam\"}"), 1.0);
    assert!(value("tsbridge_packets_sent_total") > 30.0);
    assert!(value("tsbridge_ingest_bytes_total{stream=\"cam\"}") > 10_000.0);
    assert!(value("tsbridge_gop_cache_frames{stream=\"cam\"}") >= 1.0);
    assert_eq!(value("tsbridge_time_to_first_frame_seconds_count"), 1.0);
    assert_eq!(
        value("tsbridge_time_to_first_frame_seconds_bucket{le=\"1\"}"),
        1.0
    );
}

/// The source stops and another starts within the grace period: the viewer stays connected and
/// its RTP carries on (sequence numbers without a gap, timestamps only forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_restart_within_grace_keeps_viewers_with_continuous_rtp() {
    let s = Server::start(ServeArgs::loopback()).await.unwrap();
    let ingest = url(&s, "/ingest/relay");
    let file = common::testdata("h264_only.ts"); // 4 s
    let first = {
        let ingest = ingest.clone();
        let file = file.clone();
        tokio::spawn(async move { tsbridge::ingest::replay::push(&file, &ingest, false).await })
    };
    let viewer = common::WhepSession::start(&url(&s, "/whep/relay"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    first.await.unwrap().expect("first source pushed its file");
    tokio::time::sleep(Duration::from_millis(700)).await; // a gap with no source
    let second =
        tokio::spawn(async move { tsbridge::ingest::replay::push(&file, &ingest, false).await });
    assert!(
        viewer
            .wait_until(Duration::from_secs(10), |c| {
                common::h264_access_units(&c.video).len() > 200
            })
            .await,
        "the viewer keeps receiving after the source came back"
    );
    second.abort();
    let aus = common::h264_access_units(&viewer.collected().video);
    for w in aus.windows(2) {
        assert_eq!(
            w[1].first_seq,
            w[0].last_seq.wrapping_add(1),
            "no sequence gap"
        );
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            step > 0 && step < 90_000 * 2,
            "timestamps only move forward: {step}"
        );
    }
}

/// Hundreds of WHEP sessions created and deleted: none is left behind and memory comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_churn_leaves_nothing_behind() {
    let s = serve(|_| {}).await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let rss = || -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut warm = 0;
    for round in 0..3 {
        for _ in 0..100 {
            let r = request(
                "POST",
                &url(&s, "/whep/cam"),
                &[("Content-Type", "application/sdp")],
                offer.as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 201, "{}", r.text());
            let d = request("DELETE", &url(&s, r.header("location").unwrap()), &[], b"")
                .await
                .unwrap();
            assert_eq!(d.status, 200);
        }
        assert_eq!(s.app.engine.session_count().await, 0);
        if round == 0 {
            warm = rss();
        }
    }
    let j = common::stream_json(s.http_addr, "cam").await;
    assert_eq!(j["viewers"], 0);
    assert_eq!(j["sessions_total"], 300);
    let grown = rss().saturating_sub(warm);
    eprintln!("RSS after 100 sessions: {warm} kB; after 300: +{grown} kB");
    assert!(grown < 20_000, "RSS grew by {grown} kB over 200 sessions");
}

/// A PMT change mid-stream (the audio track vanishes, the video changes profile): the viewer
/// keeps receiving video, gets the new SPS/PPS before the new IDR, and the API shows the new
/// track set. A viewer that played only the audio is ended by the server (RTCP BYE + DTLS
/// close_notify, then its ICE checks go unanswered), not left waiting for packets that will
/// never come; the a/v viewer is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmt_change_keeps_viewers_and_updates_tracks() {
    let s = Server::start(ServeArgs::loopback()).await.unwrap();
    let mut joined = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
    joined.extend(std::fs::read(common::testdata("h264_only.ts")).unwrap());
    let path = std::env::temp_dir().join(format!("tsbridge-pmt-{}.ts", std::process::id()));
    std::fs::write(&path, &joined).unwrap();
    let ingest = url(&s, "/ingest/pmt");
    let p2 = path.clone();
    let pusher =
        tokio::spawn(async move { tsbridge::ingest::replay::push(&p2, &ingest, false).await });
    let viewer = common::WhepSession::start(&url(&s, "/whep/pmt"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    let audio_only = WhepOptions {
        video: false,
        ..WhepOptions::default()
    };
    let listener = common::WhepSession::start(&url(&s, "/whep/pmt"), &audio_only)
        .await
        .unwrap();
    assert_eq!(listener.status, 201);
    assert!(
        listener
            .wait_until(Duration::from_secs(5), |c| c.audio.len() > 10)
            .await,
        "the audio-only viewer plays the first program's audio"
    );
    let baseline_sps = |c: &common::whep::Collected| {
        common::h264_access_units(&c.video)
            .iter()
            .filter_map(|a| a.sps().and_then(common::sps_profile_level_id))
            .any(|p| p.starts_with("42"))
    };
    assert!(
        viewer
            .wait_until(Duration::from_secs(15), baseline_sps)
            .await,
        "the second program's SPS reached the viewer"
    );
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 600)
            .await
    );
    let ended = |c: &common::whep::Collected| {
        c.states.iter().any(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Closed
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Disconnected
            )
        })
    };
    let j = common::stream_json(s.http_addr, "pmt").await;
    assert_eq!(
        j["viewers"], 1,
        "the server ended the audio-only viewer: {j}"
    );
    assert!(
        listener.wait_until(Duration::from_secs(10), ended).await,
        "the audio-only viewer's connection ended when its track left: {:?}",
        listener.collected().states
    );
    assert!(!ended(&viewer.collected()), "the a/v viewer goes on");
    let metrics = request("GET", &url(&s, "/metrics"), &[], b"")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("its tracks left the stream"),
        "the close is counted with its cause"
    );
    pusher.await.unwrap().unwrap();
    let _ = std::fs::remove_file(&path);
    let aus = common::h264_access_units(&viewer.collected().video);
    for w in aus.windows(2) {
        assert!(
            w[1].ts.wrapping_sub(w[0].ts) < 90_000 * 2,
            "RTP time moves forward"
        );
    }
    let j = common::stream_json(s.http_addr, "pmt").await;
    let tracks = j["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 1, "the new PMT has video only: {j}");
    assert_eq!(tracks[0]["profile_level_id"], "42c01e");
}

/// Hundreds of idle and slow TCP clients: a real request is still answered at once; past
/// --max-connections a new connection gets 503 + Retry-After; after --http-timeout the idle
/// and slow ones are closed and the server accepts again; a body that does not arrive is 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_http_clients_neither_starve_nor_pile_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let s = serve(|a| {
        a.http_timeout = Duration::from_secs(1);
        a.max_connections = 300;
        // All from 127.0.0.1: this is about the global cap.
        a.max_per_ip = 0;
    })
    .await;
    let mut held = Vec::new();
    for i in 0..250 {
        let mut c = TcpStream::connect(s.http_addr).await.unwrap();
        if i % 5 == 0 {
            // Slow: half a request head, then nothing.
            c.write_all(b"GET /streams HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        held.push(c);
    }
    let t = Instant::now();
    let r = request("GET", &url(&s, "/streams"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // 250 held + 60 more: the last ones are over the limit of 300.
    let mut extra = Vec::new();
    for _ in 0..60 {
        extra.push(TcpStream::connect(s.http_addr).await.unwrap());
    }
    let mut head = vec![0u8; 512];
    let last = extra.last_mut().unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), last.read(&mut head))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("Retry-After: 1"), "{head}");

    // After the timeout every held connection is closed by the server.
    let deadline = Instant::now() + Duration::from_secs(5);
    for c in held.iter_mut().chain(extra.iter_mut()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(left, c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue, // a 503 or 408 head first
                Err(_) => panic!("a connection is still open after the HTTP timeout"),
            }
        }
    }
    drop((held, extra));
    let r = request("GET", &url(&s, "/streams"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // A body announced and not sent: 408, not a handler waiting forever.
    let mut c = TcpStream::connect(s.http_addr).await.unwrap();
    c.write_all(
        b"POST /whep/cam HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
          Content-Length: 1000\r\n\r\nv=0\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
        .await
        .expect("408, not a hang")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}
