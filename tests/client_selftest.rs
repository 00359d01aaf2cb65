//! Self-tests of the test client in `tests/common`: they need no tsbridge server.

mod common;

use common::h264::nal;
use common::http::Url;
use common::{h264_access_units, offer_sdp, sdp_codecs, sps_profile_level_id, RtpPkt, WhepOptions};

const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f];
const PPS: &[u8] = &[0x68, 0xcb, 0x8c, 0xb2];

fn stap_a(nals: &[&[u8]]) -> Vec<u8> {
    let nri = nals.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
    let mut out = vec![nri | nal::STAP_A];
    for n in nals {
        out.extend_from_slice(&(n.len() as u16).to_be_bytes());
        out.extend_from_slice(n);
    }
    out
}

/// Splits `nal_unit` into FU-A payloads of at most `size` NAL payload bytes each.
fn fu_a(nal_unit: &[u8], size: usize) -> Vec<Vec<u8>> {
    let hdr = nal_unit[0];
    let body = &nal_unit[1..];
    let chunks: Vec<&[u8]> = body.chunks(size).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut fu_hdr = hdr & 0x1f;
            if i == 0 {
                fu_hdr |= 0x80;
            }
            if i == last {
                fu_hdr |= 0x40;
            }
            let mut p = vec![(hdr & 0xe0) | nal::FU_A, fu_hdr];
            p.extend_from_slice(c);
            p
        })
        .collect()
}

fn idr(len: usize) -> Vec<u8> {
    let mut n = vec![0x65];
    n.extend((0..len).map(|i| (i % 251) as u8 + 1));
    n
}

#[test]
fn single_nal_units_make_one_au_per_timestamp() {
    let pkts = vec![
        RtpPkt::new(100, 3000, true, &[0x41, 1, 2, 3]),
        RtpPkt::new(101, 6000, true, &[0x41, 4, 5]),
    ];
    let aus = h264_access_units(&pkts);
    assert_eq!(aus.len(), 2);
    assert_eq!(aus[0].ts, 3000);
    assert_eq!(aus[0].nal_types, vec![nal::SLICE]);
    assert_eq!(aus[0].nals[0], vec![0x41, 1, 2, 3]);
    assert!(
        aus[0].marker_on_last && aus[0].complete,
        "{:?}",
        aus[0].problems
    );
    assert_eq!(aus[1].first_seq, 101);
    assert!(aus[1].complete);
    assert!(!aus[0].is_keyframe());
}

#[test]
fn stap_a_with_sps_pps_then_fu_a_idr_reassembles() {
    let big = idr(3000);
    let mut pkts = vec![RtpPkt::new(65534, 90_000, false, &stap_a(&[SPS, PPS]))];
    for (i, p) in fu_a(&big, 1100).iter().enumerate() {
        pkts.push(RtpPkt::new(
            65535u16.wrapping_add(i as u16),
            90_000,
            false,
            p,
        ));
    }
    pkts.last_mut().unwrap().marker = true;
    assert_eq!(pkts.len(), 4, "STAP-A + start/middle/end");
    let aus = h264_access_units(&pkts);
    assert_eq!(aus.len(), 1);
    let au = &aus[0];
    assert_eq!(au.nal_types, vec![nal::SPS, nal::PPS, nal::IDR]);
    assert_eq!(au.nals[0], SPS);
    assert_eq!(au.nals[1], PPS);
    assert_eq!(au.nals[2], big, "FU-A reassembly across a seq wrap");
    assert_eq!(
        au.packet_types,
        vec![nal::STAP_A, nal::FU_A, nal::FU_A, nal::FU_A]
    );
    assert!(au.complete, "{:?}", au.problems);
    assert!(au.is_keyframe());
    assert_eq!(au.first_seq, 65534);
    assert_eq!(au.last_seq, 1);
    assert_eq!(
        sps_profile_level_id(au.sps().unwrap()).as_deref(),
        Some("42c01e")
    );
    assert!(au.annex_b().starts_with(&[0, 0, 0, 1, 0x67]));
}

#[test]
fn missing_fu_a_fragment_makes_au_incomplete() {
    let big = idr(3000);
    let frags = fu_a(&big, 1100);
    assert_eq!(frags.len(), 3);
    // Middle fragment lost.
    let pkts = vec![
        RtpPkt::new(10, 0, false, &frags[0]),
        RtpPkt::new(12, 0, true, &frags[2]),
        RtpPkt::new(13, 3000, true, &[0x41, 9]),
    ];
    let aus = h264_access_units(&pkts);
    assert_eq!(aus.len(), 2);
    assert!(!aus[0].complete);
    assert!(
        !aus[0].nal_types.contains(&nal::IDR),
        "broken NAL must not be reported"
    );
    assert!(aus[0].marker_on_last);
    assert!(aus[1].complete, "{:?}", aus[1].problems);

    // End fragment lost (and the marker with it).
    let pkts = vec![
        RtpPkt::new(10, 0, false, &frags[0]),
        RtpPkt::new(11, 0, false, &frags[1]),
        RtpPkt::new(13, 3000, true, &[0x41, 9]),
    ];
    let aus = h264_access_units(&pkts);
    assert!(!aus[0].complete);
    assert!(!aus[0].marker_on_last);
    assert!(!aus[1].complete, "a packet is missing right before it");

    // Start fragment lost.
    let pkts = vec![
        RtpPkt::new(11, 0, false, &frags[1]),
        RtpPkt::new(12, 0, true, &frags[2]),
    ];
    let aus = h264_access_units(&pkts);
    assert!(!aus[0].complete);
    assert!(aus[0].nal_types.is_empty());
}

#[test]
fn reordered_and_duplicated_packets_are_normalised() {
    let frags = fu_a(&idr(2000), 800);
    let mut pkts: Vec<RtpPkt> = frags
        .iter()
        .enumerate()
        .map(|(i, f)| RtpPkt::new(500 + i as u16, 7, i + 1 == frags.len(), f))
        .collect();
    pkts.swap(0, 1);
    pkts.push(pkts[1].clone());
    let aus = h264_access_units(&pkts);
    assert_eq!(aus.len(), 1);
    assert_eq!(aus[0].packets, frags.len());
    assert!(aus[0].complete, "{:?}", aus[0].problems);
}

#[test]
fn marker_misplacement_is_reported() {
    let pkts = vec![
        RtpPkt::new(1, 0, true, &stap_a(&[SPS, PPS])),
        RtpPkt::new(2, 0, true, &idr(10)),
    ];
    let aus = h264_access_units(&pkts);
    assert_eq!(aus.len(), 1);
    assert!(aus[0].marker_inside);
    assert!(!aus[0].complete);
}

#[test]
fn url_parsing_and_location_resolution() {
    let u = Url::parse("http://127.0.0.1:8889/whep/cam1").unwrap();
    assert_eq!(u.authority, "127.0.0.1:8889");
    assert_eq!(u.path, "/whep/cam1");
    assert_eq!(
        u.join("/whep/cam1/abc"),
        "http://127.0.0.1:8889/whep/cam1/abc"
    );
    assert_eq!(u.join("cam1/abc"), "http://127.0.0.1:8889/whep/cam1/abc");
    assert_eq!(
        Url::parse("http://localhost").unwrap().authority,
        "localhost:80"
    );
    assert!(Url::parse("https://x").is_err());
}

#[tokio::test]
async fn http_client_handles_chunked_and_content_length() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let resp: &[u8] = if i == 0 {
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nLocation: /whep/x/1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
            } else {
                b"HTTP/1.1 415 Unsupported Media Type\r\nContent-Length: 3\r\n\r\nbad"
            };
            s.write_all(resp).await.unwrap();
        }
    });
    let url = format!("http://{addr}/whep/x");
    let r = common::request("POST", &url, &[("Content-Type", "application/sdp")], b"v=0")
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location"), Some("/whep/x/1"));
    assert_eq!(r.text(), "hello world");
    let r = common::request("POST", &url, &[("Content-Type", "text/plain")], b"v=0")
        .await
        .unwrap();
    assert_eq!(r.status, 415);
    assert_eq!(r.body, b"bad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_has_recvonly_h264_mode1_and_opus_with_loopback_candidate() {
    let sdp = offer_sdp(&WhepOptions::default()).await.unwrap();
    eprintln!("{sdp}");
    let codecs = sdp_codecs(&sdp);
    let h264: Vec<_> = codecs.iter().filter(|c| c.encoding == "H264").collect();
    assert_eq!(h264.len(), 3, "one PT per offered profile: {codecs:?}");
    for (c, profile) in h264.iter().zip(["42001f", "42e01f", "4d001f"]) {
        let fmtp = c.fmtp.as_deref().unwrap_or("");
        assert!(fmtp.contains("packetization-mode=1"), "{fmtp}");
        assert!(
            fmtp.contains(&format!("profile-level-id={profile}")),
            "{fmtp}"
        );
        assert_eq!(c.clock_rate, 90000);
        assert_eq!(c.direction.as_deref(), Some("recvonly"));
    }
    assert!(
        !sdp.contains("VP8") && !sdp.contains("AV1"),
        "only the codecs we asked for"
    );
    let opus: Vec<_> = codecs
        .iter()
        .filter(|c| c.encoding.eq_ignore_ascii_case("opus"))
        .collect();
    assert_eq!(opus.len(), 1);
    assert_eq!(opus[0].clock_rate, 48000);
    assert_eq!(opus[0].direction.as_deref(), Some("recvonly"));
    assert!(sdp.contains("opus/48000/2"));
    let m_video = sdp.find("m=video").expect("video m-line");
    let m_audio = sdp.find("m=audio").expect("audio m-line");
    assert!(m_video < m_audio, "video first");
    let candidates: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(
        !candidates.is_empty(),
        "non-trickle offer carries candidates"
    );
    assert!(
        candidates.iter().any(|c| c.contains(" 127.0.0.1 ")),
        "{candidates:?}"
    );
    assert!(
        candidates.iter().all(|c| c.contains(" 127.0.0.1 ")),
        "loopback only: {candidates:?}"
    );
    assert!(sdp.contains("a=group:BUNDLE"));
    assert!(sdp.contains("a=setup:actpass"));
    assert!(sdp.contains("a=fingerprint:sha-256"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_follows_options() {
    let sdp = offer_sdp(&WhepOptions {
        audio: false,
        h264_profiles: vec!["640c1f"],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!sdp.contains("m=audio"));
    let codecs = sdp_codecs(&sdp);
    assert_eq!(codecs.len(), 1, "{codecs:?}");
    assert!(codecs[0]
        .fmtp
        .as_deref()
        .unwrap()
        .contains("profile-level-id=640c1f"));

    let sdp = offer_sdp(&WhepOptions {
        video: false,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!sdp.contains("m=video"));
    assert!(sdp.contains("m=audio"));
}

/// A minimal WHEP answerer on str0m (the server's own WebRTC stack, but none of tsbridge's
/// code): it answers one offer, then sends synthetic H.264 (SPS+PPS+IDR every 30 frames) at 30
/// fps and Opus-sized audio every 20 ms, right from the moment DTLS is connected, like a server
/// with a GOP cache. DELETE stops it.
mod mini_str0m {
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use str0m::change::SdpOffer;
    use str0m::format::Codec;
    use str0m::media::{Frequency, MediaKind, MediaTime, Mid};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub const IDR_LEN: usize = 9000;

    /// Access unit `i` in Annex B: AUD, then SPS+PPS+IDR every 30th frame, else a P slice.
    pub fn access_unit(i: usize) -> Vec<u8> {
        let mut au = vec![0, 0, 0, 1, 0x09, 0xf0];
        if i.is_multiple_of(30) {
            au.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0]);
            au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xcb, 0x8c, 0xb2]);
            au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
            au.extend((0..IDR_LEN).map(|k| (k % 200) as u8 + 17));
        } else {
            au.extend_from_slice(&[0, 0, 0, 1, 0x41]);
            au.extend((0..1500 + i % 7).map(|k| (k % 200) as u8 + 17));
        }
        au
    }

    fn run(mut rtc: Rtc, socket: UdpSocket, stop: Arc<AtomicBool>) {
        let local = socket.local_addr().unwrap();
        let (mut video, mut audio): (Option<Mid>, Option<Mid>) = (None, None);
        let mut connected_at: Option<Instant> = None;
        let (mut frames, mut audio_pkts) = (0u64, 0u64);
        let mut buf = vec![0u8; 2000];
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
            let timeout = match rtc.poll_output() {
                Ok(Output::Timeout(t)) => t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                    continue;
                }
                Ok(Output::Event(e)) => {
                    match e {
                        Event::MediaAdded(m) if m.kind == MediaKind::Video => video = Some(m.mid),
                        Event::MediaAdded(m) => audio = Some(m.mid),
                        Event::Connected => connected_at = Some(Instant::now()),
                        _ => {}
                    }
                    continue;
                }
                Err(_) => return,
            };
            let now = Instant::now();
            let mut next_media = timeout;
            if let Some(t0) = connected_at {
                let next_frame = t0 + Duration::from_millis(frames * 1000 / 30);
                let next_audio = t0 + Duration::from_millis(audio_pkts * 20);
                if let (Some(mid), true) = (video, now >= next_frame) {
                    let w = rtc.writer(mid).unwrap();
                    let pt = w
                        .payload_params()
                        .find(|p| p.spec().codec == Codec::H264)
                        .map(|p| p.pt())
                        .unwrap();
                    let t = MediaTime::new(frames * 3000, Frequency::NINETY_KHZ);
                    w.write(pt, now, t, access_unit(frames as usize)).unwrap();
                    frames += 1;
                    continue;
                }
                if let (Some(mid), true) = (audio, now >= next_audio) {
                    let w = rtc.writer(mid).unwrap();
                    let pt = w.payload_params().next().map(|p| p.pt()).unwrap();
                    let t = MediaTime::new(audio_pkts * 960, Frequency::FORTY_EIGHT_KHZ);
                    w.write(pt, now, t, vec![0xfc; 160]).unwrap();
                    audio_pkts += 1;
                    continue;
                }
                next_media = next_media.min(next_frame).min(next_audio);
            }
            let wait = next_media.saturating_duration_since(now);
            let input = if wait.is_zero() {
                Input::Timeout(now)
            } else {
                socket.set_read_timeout(Some(wait)).unwrap();
                match socket.recv_from(&mut buf) {
                    Ok((n, source)) => Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: local,
                            contents: buf[..n].try_into().unwrap(),
                        },
                    ),
                    Err(_) => Input::Timeout(Instant::now()),
                }
            };
            if rtc.handle_input(input).is_err() {
                return;
            }
        }
    }

    /// Serves `POST /whep/x` (201 + answer + Location) and `DELETE` (200) on `listener`.
    pub async fn serve(listener: tokio::net::TcpListener) {
        str0m::crypto::from_feature_flags().install_process_default();
        let stop = Arc::new(AtomicBool::new(false));
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut got = Vec::new();
            let mut tmp = [0u8; 8192];
            let head_end = loop {
                let n = s.read(&mut tmp).await.unwrap();
                got.extend_from_slice(&tmp[..n]);
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while got.len() < head_end + len {
                let n = s.read(&mut tmp).await.unwrap();
                got.extend_from_slice(&tmp[..n]);
            }
            if head.starts_with("post") {
                let offer = String::from_utf8_lossy(&got[head_end..]).into_owned();
                let mut rtc = RtcConfig::new()
                    .clear_codecs()
                    .enable_h264(true)
                    .enable_opus(true, false)
                    .build(Instant::now());
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                let cand = Candidate::host(socket.local_addr().unwrap(), "udp").unwrap();
                rtc.add_local_candidate(cand).unwrap();
                let answer = rtc
                    .sdp_api()
                    .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
                    .unwrap()
                    .to_sdp_string();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || run(rtc, socket, stop));
                let resp = format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\n\
                     Location: /whep/x/1\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            } else {
                stop.store(true, Ordering::Relaxed);
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_client_gets_complete_first_keyframe_from_str0m() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/whep/x", listener.local_addr().unwrap());
    tokio::spawn(mini_str0m::serve(listener));

    let r = common::whep_receive(
        &url,
        WhepOptions {
            seconds: 1.5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    assert!(r.setup_error.is_none(), "{:?}", r.setup_error);
    assert_eq!(r.location.as_deref(), Some(&*format!("{}/1", url)));
    assert_eq!(r.delete_status, Some(200));
    assert_eq!(r.video_pt_mime.as_deref(), Some("video/H264"));
    assert!(r
        .audio_mime
        .as_deref()
        .unwrap()
        .eq_ignore_ascii_case("audio/opus"));
    let connected = r.connected_at.expect("connected");
    assert!(connected > r.posted_at);

    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 30, "{} AUs in 1.5 s", aus.len());
    for au in &aus {
        assert!(au.complete, "AU ts {}: {:?}", au.ts, au.problems);
    }
    // The server sends its keyframe the instant DTLS completes: the client must not lose it
    // (webrtc-rs 0.21.1 alone drops it about half the time; see tests/common/runtime.rs).
    assert_eq!(aus[0].nal_types, vec![nal::SPS, nal::PPS, nal::IDR]);
    assert_eq!(aus[0].nals[2].len(), mini_str0m::IDR_LEN + 1);
    assert_eq!(aus[1].ts.wrapping_sub(aus[0].ts), 3000);
    assert!(r.audio.len() >= 40, "{} audio packets", r.audio.len());
    assert!(r
        .audio
        .windows(2)
        .all(|w| w[1].seq == w[0].seq.wrapping_add(1)));
}

/// The client against the real server binary (run with `--ignored`; needs the binary built).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "smoke test of the client against the tsbridge binary"]
async fn whep_client_against_tsbridge_binary() {
    let Some(bin) = option_env!("CARGO_BIN_EXE_tsbridge") else {
        eprintln!("no tsbridge binary in this build");
        return;
    };
    let server =
        common::TsbridgeProcess::serve(bin, &["--replay", "cam=testdata/h264_opus.ts"]).unwrap();
    let r = common::whep_receive(
        &server.whep_url("cam"),
        WhepOptions {
            seconds: 3.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(r.setup_error.is_none(), "{:?}", r.setup_error);
    assert_eq!(r.delete_status, Some(200));
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 45, "{} AUs in 3 s", aus.len());
    assert!(aus.iter().all(|a| a.complete));
    assert!(aus[0].is_keyframe(), "{:?}", aus[0].nal_types);
    assert!(
        r.audio.len() >= 100,
        "{} audio packets in 3 s",
        r.audio.len()
    );
}
