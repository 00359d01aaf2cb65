//! Sources end to end: UDP, stdin (the real binary), HTTP PUT with damaged TS, the TS pull,
//! the seamless replay loop, and the `probe` command.

mod common;

use std::time::Duration;

use common::{h264_access_units, request, whep_receive, StopWhen, WhepOptions};
use tokio::io::AsyncWriteExt;
use tsbridge::config::{Named, ServeArgs};
use tsbridge::ingest::replay::Replayer;
use tsbridge::server::Server;

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

fn viewer(aus: usize) -> WhepOptions {
    WhepOptions {
        seconds: 10.0,
        stop: StopWhen::VideoAus(aus),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_source_plays() {
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut args = ServeArgs::loopback();
    args.udps.push(Named {
        name: "udp".into(),
        value: addr,
    });
    let s = Server::start(args).await.unwrap();
    let sender = tokio::spawn(async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = Replayer::open(&common::testdata("h264_opus.ts"), true).unwrap();
        // 7 TS packets per datagram, as ffmpeg sends them.
        tsbridge::ingest::replay::pace(r, |data| {
            let sock = &sock;
            async move {
                for d in data.chunks(7 * 188) {
                    sock.send_to(d, addr).await?;
                }
                Ok(())
            }
        })
        .await
    });
    let r = whep_receive(&url(&s, "/whep/udp"), viewer(20))
        .await
        .unwrap();
    sender.abort();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 20 && aus[0].is_keyframe(), "{} AUs", aus.len());
    assert!(!r.audio.is_empty());
}

/// The binary, as a user runs it: `serve --stdin NAME` with TS piped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_source_plays_in_the_real_binary() {
    let (mut child, base) =
        common::server::serve_async(&["--stdin".into(), "pipe".into()], true).await;
    let stdin = std::sync::Arc::new(tokio::sync::Mutex::new(child.stdin.take().unwrap()));
    let feeder = tokio::spawn(async move {
        let r = Replayer::open(&common::testdata("h264_opus.ts"), true).unwrap();
        let _ = tsbridge::ingest::replay::pace(r, |d| {
            let stdin = stdin.clone();
            async move { stdin.lock().await.write_all(&d).await }
        })
        .await;
    });
    let r = whep_receive(&format!("{base}/whep/pipe"), viewer(15))
        .await
        .unwrap();
    feeder.abort();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(h264_access_units(&r.video).len() >= 15);
}

/// Garbage between packets, truncated packets and lost packets are logged and skipped; the
/// stream stays up and viewers keep getting whole access units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_ts_over_http_keeps_playing() {
    let s = Server::start(ServeArgs::loopback()).await.unwrap();
    let clean = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
    let mut damaged = Vec::new();
    for (i, pkt) in clean.chunks(188).enumerate() {
        match i % 997 {
            13 | 500 => damaged.extend_from_slice(b"garbage between packets \x47\x00"),
            41 => damaged.extend_from_slice(&pkt[..100]), // truncated
            71 => {}                                      // lost
            _ => {}
        }
        if i % 997 != 41 && i % 997 != 71 {
            damaged.extend_from_slice(pkt);
        }
    }
    let path = std::env::temp_dir().join(format!("tsbridge-damaged-{}.ts", std::process::id()));
    std::fs::write(&path, &damaged).unwrap();
    let ingest = url(&s, "/ingest/bad");
    let p2 = path.clone();
    let pusher =
        tokio::spawn(async move { tsbridge::ingest::replay::push(&p2, &ingest, true).await });
    let r = whep_receive(&url(&s, "/whep/bad"), viewer(60))
        .await
        .unwrap();
    pusher.abort();
    let _ = std::fs::remove_file(&path);
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 60, "{} AUs", aus.len());
    let complete = aus.iter().filter(|a| a.complete).count();
    assert!(
        complete >= aus.len() - 2,
        "{complete} of {} complete",
        aus.len()
    );
    let j: serde_json::Value = serde_json::from_slice(
        &request("GET", &url(&s, "/streams/bad"), &[], b"")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(j["ts_problems"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["ready"], true);
}

/// Replay loops without a jump: video RTP time advances 3000 per frame across the loop point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_loop_is_seamless_for_viewers() {
    let mut args = ServeArgs::loopback();
    args.replays.push(Named {
        name: "loop".into(),
        value: common::testdata("h264_only.ts"), // 4 s
    });
    let s = Server::start(args).await.unwrap();
    let r = whep_receive(
        &url(&s, "/whep/loop"),
        WhepOptions {
            seconds: 6.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 150, "{} AUs", aus.len());
    // After the GOP backlog (squeezed, 1 tick apart), live frames 3000 apart.
    let live = aus
        .windows(2)
        .position(|w| w[1].ts.wrapping_sub(w[0].ts) != 1)
        .unwrap_or(0);
    for w in aus[live..].windows(2) {
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 3000);
        assert_eq!(w[1].first_seq, w[0].last_seq.wrapping_add(1));
    }
}

/// `GET /streams/{s}.ts` gives TS that demuxes into the stream's tracks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_pull_demuxes_into_the_tracks() {
    let mut args = ServeArgs::loopback();
    args.replays.push(Named {
        name: "cam".into(),
        value: common::testdata("h264_opus.ts"),
    });
    let s = Server::start(args).await.unwrap();
    let mut resp = common::http::open("GET", &url(&s, "/streams/cam.ts"), &[], b"")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("video/mp2t"));
    let bytes = tokio::time::timeout(Duration::from_secs(5), resp.body.read_at_least(200_000))
        .await
        .unwrap()
        .unwrap();
    let mut demux = tsbridge::ts::Demuxer::new();
    let mut events = Vec::new();
    demux.push(&bytes, &mut events);
    let tracks = demux.tracks().expect("a PMT within 200 kB");
    assert!(tracks.video().is_some() && tracks.audio().is_some());
    assert_eq!(&bytes[..3], &[0x47, 0x40, 0x00], "starts with the PAT");
    let video = tracks.video().unwrap().pid;
    let mut h264 = tsbridge::codec::h264::H264Assembler::new();
    let mut aus = Vec::new();
    for e in &events {
        if let tsbridge::ts::DemuxEvent::Pes(p) = e {
            if p.pid == video {
                h264.push(p, &mut aus);
            }
        }
    }
    assert!(aus.len() > 20);
    assert!(aus[0].keyframe, "starts at an IDR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_tracks_profile_and_gop() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsbridge"))
        .args(["probe", "--json"])
        .arg(common::testdata("h264_aac.ts"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tracks = j["tracks"].as_array().unwrap();
    assert_eq!(tracks[0]["codec"], "H.264");
    assert_eq!(tracks[0]["profile_level_id"], "64001e");
    assert_eq!(tracks[0]["gop_s"], 1.0);
    assert_eq!(tracks[0]["fps"], 30.0);
    assert_eq!(tracks[1]["playable"], false);
    assert!(tracks[1]["reason"].as_str().unwrap().contains("AAC"));
}
