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
    let j = common::stream_json(s.http_addr, "bad").await;
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
    // After the GOP backlog (1 s GOP), live frames 3000 apart through the loop point (6 s
    // of 4 s loops) with no lost packet.
    let live = common::live_start(&aus, 3000, 30);
    assert!(aus.len() - live >= 120, "{} live frames", aus.len() - live);
    for w in aus[live..].windows(2) {
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
    // AAC plays transcoded to Opus (issue 21: it was reported "not playable").
    assert_eq!(tracks[1]["codec"], "AAC (ADTS)");
    assert_eq!(tracks[1]["kind"], "audio");
    assert_eq!(tracks[1]["playable"], true);
    assert_eq!(tracks[1]["transcoded_to"], "Opus");
    assert_eq!(tracks[1]["audio_index"], 0);
    assert_eq!(tracks[1]["default"], true);
}

/// Byte surgery on whole 188-byte TS packets, for hostile-stream tests.
mod surgery {
    pub fn pid(p: &[u8]) -> u16 {
        u16::from_be_bytes([p[1] & 0x1f, p[2]])
    }

    /// The adaptation field's flags byte, if the packet has one with flags.
    fn af_flags(p: &mut [u8]) -> Option<&mut u8> {
        (p[3] & 0x20 != 0 && p[4] > 0).then(|| &mut p[5])
    }

    pub fn set_discontinuity(p: &mut [u8]) -> bool {
        af_flags(p).map(|f| *f |= 0x80).is_some()
    }

    fn payload_start(p: &[u8]) -> usize {
        if p[3] & 0x20 != 0 {
            5 + usize::from(p[4])
        } else {
            4
        }
    }

    fn read_ts(b: &[u8]) -> u64 {
        (u64::from(b[0] >> 1) & 7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1)
    }

    fn write_ts(b: &mut [u8], v: u64) {
        b[0] = (b[0] & 0xf0) | ((v >> 29) as u8 & 0x0e) | 1;
        b[1] = (v >> 22) as u8;
        b[2] = ((v >> 14) as u8 & 0xfe) | 1;
        b[3] = (v >> 7) as u8;
        b[4] = ((v << 1) as u8 & 0xfe) | 1;
    }

    /// The PTS of the PES that starts in this packet.
    pub fn pes_pts(p: &[u8]) -> Option<u64> {
        let at = payload_start(p);
        (p[1] & 0x40 != 0
            && at + 14 <= p.len()
            && p[at..at + 3] == [0, 0, 1]
            && p[at + 7] & 0x80 != 0)
            .then(|| read_ts(&p[at + 9..at + 14]))
    }

    /// Moves the PCR and a PES header's PTS/DTS in this packet by `delta` (90 kHz, mod 2^33).
    pub fn shift_time(p: &mut [u8], delta: i64) {
        let wrap = |v: u64| (v as i64 + delta).rem_euclid(1 << 33) as u64;
        if af_flags(p).is_some_and(|f| *f & 0x10 != 0) {
            let b = &mut p[6..12];
            let base = u64::from(b[0]) << 25
                | u64::from(b[1]) << 17
                | u64::from(b[2]) << 9
                | u64::from(b[3]) << 1
                | u64::from(b[4] >> 7);
            let base = wrap(base);
            b[0] = (base >> 25) as u8;
            b[1] = (base >> 17) as u8;
            b[2] = (base >> 9) as u8;
            b[3] = (base >> 1) as u8;
            b[4] = (b[4] & 0x7f) | ((base as u8 & 1) << 7);
        }
        let at = payload_start(p);
        let pusi = p[1] & 0x40 != 0;
        if !pusi || at + 14 > p.len() || p[at..at + 3] != [0, 0, 1] {
            return;
        }
        let flags = p[at + 7] >> 6;
        for (present, off) in [(flags & 2 != 0, 9), (flags == 3, 14)] {
            if present && at + off + 5 <= p.len() {
                let b = &mut p[at + off..at + off + 5];
                let v = wrap(read_ts(b));
                write_ts(b, v);
            }
        }
    }
}

/// A hostile source, one stream: duplicated packets, lost packets (continuity errors), PAT and
/// PMT missing for 2 s, then every timestamp jumping 20 s forward without a flag, then back to
/// the start flagged by `discontinuity_indicator`. Problems are counted, and the viewer (an
/// independent WebRTC stack) keeps getting video and audio whose RTP time runs on without a
/// jump: the timeline re-anchors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ts_keeps_viewers_playing_on_one_timeline() {
    let s = Server::start(ServeArgs::loopback()).await.unwrap();
    let clean = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
    let pmt_pid = 0x1000;
    let mut hostile = Vec::new();
    for copy in 0..3 {
        let mut first_of_pid = std::collections::HashSet::new();
        for (i, pkt) in clean.chunks(188).enumerate() {
            let mut p = pkt.to_vec();
            let pid = surgery::pid(&p);
            let psi = pid == 0 || pid == pmt_pid;
            match copy {
                0 => {
                    // 2 s to 4 s of the first copy (about packets 790–1580): no PAT/PMT.
                    if psi && (790..1580).contains(&i) {
                        continue;
                    }
                    if i % 300 == 150 && !psi {
                        continue; // lost: a continuity-counter gap
                    }
                    if i % 50 == 25 {
                        hostile.extend_from_slice(&p); // duplicate (same CC)
                    }
                }
                1 => surgery::shift_time(&mut p, 20 * 90_000),
                _ => {
                    if first_of_pid.insert(pid) {
                        surgery::set_discontinuity(&mut p);
                    }
                }
            }
            hostile.extend_from_slice(&p);
        }
    }
    // The surgery took: the first PTS of the second copy is 20 s after the first copy's.
    let copy_len = hostile.len() - 2 * clean.len();
    let first_pts = |bytes: &[u8]| bytes.chunks(188).find_map(surgery::pes_pts).unwrap();
    let (a, b) = (
        first_pts(&hostile[..copy_len]),
        first_pts(&hostile[copy_len..]),
    );
    assert_eq!(b - a, 20 * 90_000, "PTS {a} then {b}");
    let path = std::env::temp_dir().join(format!("tsbridge-hostile-{}.ts", std::process::id()));
    std::fs::write(&path, &hostile).unwrap();
    let ingest = url(&s, "/ingest/hostile");
    let p2 = path.clone();
    let pusher =
        tokio::spawn(async move { tsbridge::ingest::replay::push(&p2, &ingest, false).await });
    let opts = WhepOptions {
        seconds: 25.0,
        ..Default::default()
    };
    let viewer = common::WhepSession::start(&url(&s, "/whep/hostile"), &opts)
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    pusher.await.unwrap().unwrap();
    // What is in flight when the source ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = viewer.collected();
    let _ = std::fs::remove_file(&path);

    let aus = h264_access_units(&got.video);
    let complete = aus.iter().filter(|a| a.complete).count();
    assert!(
        complete >= 400,
        "{complete} complete AUs of 540 sent over 18 s"
    );
    for w in aus.windows(2) {
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            step < 90_000,
            "video RTP time steps {step} ticks at seq {}: the jumps must not reach the viewer",
            w[1].first_seq
        );
    }
    assert!(
        got.audio.len() >= 600,
        "{} audio packets of 900",
        got.audio.len()
    );
    let mut audio = got.audio.clone();
    audio.sort_by_key(|p| p.seq);
    for w in audio.windows(2) {
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(step < 48_000, "audio RTP time steps {step} ticks");
    }
    let j = common::stream_json(s.http_addr, "hostile").await;
    assert!(j["ts_problems"].as_u64().unwrap() > 0, "{j}");
}

/// Random bytes pushed as a stream: counted as TS problems, never "ready"; a WHEP viewer is
/// answered with a status that says why after `--whep-wait`, never left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_never_become_ready() {
    let mut args = ServeArgs::loopback();
    args.whep_wait = Duration::from_secs(2);
    let s = Server::start(args).await.unwrap();
    // xorshift64*: deterministic noise, with a 0x47 every 188 bytes now and then to tempt the
    // resync.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise: Vec<u8> = (0..2_000_000)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect();
    for i in (0..noise.len()).step_by(188 * 7) {
        noise[i] = 0x47;
    }
    let r = request(
        "PUT",
        &url(&s, "/ingest/noise"),
        &[("Content-Type", "video/mp2t")],
        &noise,
    )
    .await
    .unwrap();
    assert!(r.status < 300, "ingest: {} {}", r.status, r.text());
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let r = request(
        "POST",
        &url(&s, "/whep/noise"),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    // The PUT has ended: the stream is known but not live (WHEP: 409 + Retry-After).
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(
        r.text().contains("no PAT/PMT"),
        "the answer says why: {}",
        r.text()
    );
    let j = common::stream_json(s.http_addr, "noise").await;
    assert_eq!(j["ready"], false, "{j}");
    assert!(j["ts_problems"].as_u64().unwrap() > 0, "{j}");
    eprintln!("WHEP on noise: {} {}", r.status, r.text().trim());
}
