//! WHIP end to end: a WHIP publisher on the `webrtc` crate (an independent WebRTC stack) sends
//! `testdata/h264_opus.ts` in real time; WHEP viewers on the same stack, TS pulls and the API
//! check what comes out, with and without a `--pipeline` command in between.

mod common;

use std::time::{Duration, Instant};

use common::h264::nal;
use common::http;
use common::{
    h264_access_units, live_start, request, ts_steps, whep_receive, whip_publish, OfferCodec,
    RtpPkt, StopWhen, WhepOptions, WhepResult, WhepSession, WhipOptions, WhipPublisher,
};
use tsbridge::codec::h264::H264Assembler;
use tsbridge::codec::opus;
use tsbridge::config::ServeArgs;
use tsbridge::server::Server;
use tsbridge::ts::{Codec, DemuxEvent, Demuxer, StreamType, TrackSet};
use webrtc::peer_connection::RTCPeerConnectionState;

async fn serve(tweak: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut args = ServeArgs::loopback();
    tweak(&mut args);
    Server::start(args).await.expect("server starts")
}

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

async fn publish_with(s: &Server, name: &str, opts: WhipOptions) -> WhipPublisher {
    let p = whip_publish(
        &url(s, &format!("/whip/{name}")),
        &common::testdata("h264_opus.ts"),
        opts,
    )
    .await
    .expect("WHIP publisher");
    assert_eq!(p.status, 201, "{:?}", p.error_body);
    p
}

async fn publish(s: &Server, name: &str) -> WhipPublisher {
    publish_with(s, name, WhipOptions::default()).await
}

async fn stream_json(s: &Server, name: &str) -> serde_json::Value {
    common::stream_json(s.http_addr, name).await
}

/// Waits until `/streams/{name}` satisfies `pred`; returns the last JSON seen.
async fn wait_json(
    s: &Server,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let j = stream_json(s, name).await;
        if pred(&j) || Instant::now() >= deadline {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ffmpeg_available(test: &str) -> bool {
    let ok = std::process::Command::new("ffmpeg")
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: ffmpeg is required in CI (CI is set) but was not found");
        }
        eprintln!("\n*** SKIPPED {test}: no ffmpeg on PATH (apt-get install ffmpeg) ***\n");
    }
    ok
}

/// The checks of `viewer_gets_idr_first_then_slices_with_exact_timestamps` (tests/whep.rs),
/// for a viewer of the published `h264_opus.ts`: IDR with SPS/PPS first, complete AUs with the
/// marker on their last packet, SPS/PPS before every IDR, 3000-tick steps once live, Opus 960
/// ticks apart without loss.
fn check_viewer_of_h264_opus(r: &WhepResult, min_aus: usize, min_audio: usize) {
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(r.setup_error.is_none(), "{:?}", r.setup_error);
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= min_aus, "only {} access units", aus.len());
    let first = &aus[0];
    assert!(
        first.nal_types.starts_with(&[nal::SPS, nal::PPS]) && first.is_keyframe(),
        "first AU: {:?}",
        first.nal_types
    );
    for au in &aus[..aus.len() - 1] {
        assert!(au.complete, "{:?}", au.problems);
        assert!(
            au.marker_on_last && !au.marker_inside,
            "marker ends each AU"
        );
        assert!(!au.nal_types.contains(&nal::AUD), "AUD dropped");
        if au.is_keyframe() {
            assert_eq!(
                &au.nal_types[..2],
                &[nal::SPS, nal::PPS],
                "SPS/PPS before every IDR"
            );
        } else {
            assert_eq!(au.nal_types, vec![nal::SLICE]);
        }
    }
    let live = live_start(&aus, 3000, 30);
    let steps = ts_steps(&aus[live..]);
    assert!(
        steps.iter().all(|&d| d == 3000),
        "30 fps = 3000 ticks per frame once live (backlog of {live}): {steps:?}"
    );
    assert!(
        aus.len() - live >= min_aus / 2,
        "{} live AUs of {}",
        aus.len() - live,
        aus.len()
    );

    assert!(
        r.audio.len() >= min_audio,
        "only {} Opus packets",
        r.audio.len()
    );
    for w in r.audio.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "no audio loss on loopback"
        );
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 960, "20 ms Opus = 960 ticks");
    }
    assert!(r
        .audio
        .iter()
        .all(|p| !p.payload.is_empty() && p.payload.len() < 500));
}

/// What a TS pull held, demuxed by tsbridge's own demuxer.
#[derive(Debug, Default)]
struct Pulled {
    bytes: usize,
    tracks: Vec<TrackSet>,
    problems: Vec<String>,
    aus: Vec<tsbridge::codec::h264::AccessUnit>,
    opus_packets: Vec<u32>,
    opus_errors: usize,
    profile_level_id: Option<String>,
}

fn demux_ts(data: &[u8]) -> Pulled {
    let mut d = Demuxer::new();
    let mut events = Vec::new();
    for c in data.chunks(1316) {
        d.push(c, &mut events);
    }
    d.flush(&mut events);
    let mut out = Pulled {
        bytes: data.len(),
        ..Default::default()
    };
    let mut h264 = H264Assembler::new();
    for e in &events {
        match e {
            DemuxEvent::Tracks(t) => out.tracks.push(t.clone()),
            DemuxEvent::Problem(p) => out.problems.push(p.to_string()),
            DemuxEvent::Pes(pes) => {
                let Some(t) = out.tracks.last() else { continue };
                if t.video().map(|v| v.pid) == Some(pes.pid) {
                    h264.push(pes, &mut out.aus);
                } else if t.audio().map(|a| a.pid) == Some(pes.pid) {
                    let mut packets = Vec::new();
                    if opus::split_pes(&pes.data, &mut packets).is_err() {
                        out.opus_errors += 1;
                    }
                    out.opus_packets.extend(packets.iter().map(|p| p.samples));
                }
            }
            _ => {}
        }
    }
    out.profile_level_id = h264.sps().map(|s| s.profile_level_id.to_string());
    out
}

/// Reads `GET {url}` for `seconds` (the body never ends while the source is live).
async fn pull_ts(url: &str, seconds: f64) -> Vec<u8> {
    let mut resp = http::open("GET", url, &[], b"").await.expect("GET .ts");
    assert_eq!(resp.status, 200, "GET {url}");
    assert_eq!(resp.header("content-type"), Some("video/mp2t"));
    let mut data = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.body.chunk()).await {
        data.extend_from_slice(&chunk);
    }
    data
}

/// A pulled stream is H.264 + Opus as the PMT says, with whole access units and Opus packets.
fn check_pulled_h264_opus(p: &Pulled, what: &str) {
    assert!(
        p.bytes > 0 && p.bytes.is_multiple_of(188),
        "{what}: {} bytes",
        p.bytes
    );
    assert!(p.problems.is_empty(), "{what}: {:?}", p.problems);
    let t = p.tracks.first().unwrap_or_else(|| panic!("{what}: no PMT"));
    let v = t
        .video()
        .unwrap_or_else(|| panic!("{what}: no video in {t:?}"));
    assert_eq!(v.stream_type, StreamType(0x1b), "{what}: H.264 is 0x1B");
    let a = t
        .audio()
        .unwrap_or_else(|| panic!("{what}: no audio in {t:?}"));
    assert_eq!(a.codec, Codec::Opus { channels: 2 }, "{what}");
    assert_eq!(t.tracks.len(), 2, "{what}: exactly the published tracks");
    assert!(p.aus.len() >= 30, "{what}: {} AUs", p.aus.len());
    assert!(p.aus.iter().any(|a| a.keyframe), "{what}: no keyframe");
    assert_eq!(p.profile_level_id.as_deref(), Some("64001e"), "{what}");
    for w in p.aus.windows(2) {
        assert_eq!(
            w[1].pts.wrapping_sub(w[0].pts) & ((1 << 33) - 1),
            3000,
            "{what}"
        );
    }
    assert_eq!(p.opus_errors, 0, "{what}: bad Opus control headers");
    assert!(
        p.opus_packets.len() >= 50,
        "{what}: {} Opus",
        p.opus_packets.len()
    );
    assert!(p.opus_packets.iter().all(|&n| n == 960), "{what}");
}

/// The published file comes out at a WHEP viewer as it went in. The viewer POSTs the
/// `Playback-Url` at once after the WHIP 201, before the first frame was muxed: the POST waits
/// for the stream, then plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_viewer_gets_the_published_media_via_playback_url() {
    let s = serve(|_| {}).await;
    let p = publish_with(
        &s,
        "cam",
        WhipOptions {
            // The first frame is sent 1 s after Connected: the viewer surely asks before it.
            media_delay: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let playback = p.playback_url.clone().expect("Playback-Url header");
    assert_eq!(
        playback,
        url(&s, "/whep/cam"),
        "absolute http:// URL of the WHEP endpoint"
    );
    let loc = p.response.header("location").unwrap_or("");
    assert!(
        loc.starts_with("/whip/cam/") && loc.len() > "/whip/cam/".len() + 16,
        "{loc}"
    );
    let etag = p.etag.clone().expect("ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "{etag}"
    );
    assert_eq!(p.response.header("content-type"), Some("application/sdp"));
    // The answer receives what was offered.
    let codecs = common::sdp_codecs(&p.answer_sdp);
    for media in ["video", "audio"] {
        assert!(
            codecs.iter().any(|c| c.media == media
                && c.port != 0
                && c.direction.as_deref() == Some("recvonly")),
            "{media} not received: {}",
            p.answer_sdp
        );
    }

    let r = whep_receive(
        &playback,
        WhepOptions {
            seconds: 4.0,
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    let media_started = p.stats.media_started_at().expect("publisher sent media");
    assert!(
        r.posted_at < media_started,
        "the viewer was meant to ask before the first frame"
    );
    eprintln!(
        "viewer POST answered {:?} after it was sent; publisher: {} frames, {} audio",
        r.connected_at.map(|c| c.duration_since(r.posted_at)),
        p.stats.video_frames(),
        p.stats.audio_packets()
    );
    check_viewer_of_h264_opus(&r, 60, 100);
    assert_eq!(
        p.stats
            .write_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// `GET /streams/{s}.ts` of a WHIP stream is the muxed TS: PAT/PMT with H.264 and Opus, whole
/// access units 3000 ticks apart, Opus packets behind valid control headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_pull_of_a_published_stream_demuxes_into_h264_and_opus() {
    let s = serve(|_| {}).await;
    let p = publish(&s, "cam").await;
    assert!(
        p.wait_until(Duration::from_secs(5), |st| st.video_frames() > 0)
            .await
    );
    let data = pull_ts(&url(&s, "/streams/cam.ts"), 2.5).await;
    let pulled = demux_ts(&data);
    check_pulled_h264_opus(&pulled, "/streams/cam.ts");
}

/// The session endpoints: OPTIONS, PATCH (trickle) and DELETE on the `Location`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_session_answers_options_patch_and_delete() {
    let s = serve(|_| {}).await;
    let r = request("OPTIONS", &url(&s, "/whip/cam"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("accept-post"), Some("application/sdp"));
    assert!(r
        .header("access-control-expose-headers")
        .unwrap_or("")
        .contains("Playback-Url"));

    let mut p = publish(&s, "cam").await;
    assert!(p.wait_connected(Duration::from_secs(5)).await.is_some());
    let loc = p.location.clone().unwrap();
    let frag = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let trickle = "a=mid:0\r\na=candidate:2 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
    let r = request("PATCH", &loc, &frag, trickle.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(p.delete().await, Some(200));
    let again = request("DELETE", &loc, &[], b"").await.unwrap();
    assert_eq!(again.status, 404);
    let j = wait_json(&s, "cam", Duration::from_secs(5), |j| {
        j["source"] == "ended"
    })
    .await;
    assert_eq!(j["source"], "ended", "{j}");
}

/// One publisher per stream; an offer without H.264 or Opus is 406 saying what is taken;
/// wrong Content-Type 415, bad SDP 400. A refused offer leaves the name free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_refusals_get_specific_statuses() {
    let s = serve(|_| {}).await;
    let file = common::testdata("h264_opus.ts");
    let whip = url(&s, "/whip/cam");

    let vp8 = whip_publish(
        &whip,
        &file,
        WhipOptions {
            codecs: Some(vec![OfferCodec::Vp8]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(vp8.status, 406, "{:?}", vp8.error_body);
    let body = vp8.error_body.clone().unwrap_or_default();
    assert!(
        body.contains("H.264") && body.contains("Opus"),
        "406 must name what is supported: {body}"
    );
    assert!(body.contains("VP8"), "and what was offered: {body}");

    let vp8_pcmu = whip_publish(
        &whip,
        &file,
        WhipOptions {
            codecs: Some(vec![OfferCodec::Vp8, OfferCodec::Pcmu]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(vp8_pcmu.status, 406, "{:?}", vp8_pcmu.error_body);

    let offer = common::whip_offer_sdp(&file, &WhipOptions::default())
        .await
        .unwrap();
    let r = request(
        "POST",
        &whip,
        &[("Content-Type", "text/plain")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(r.text().contains("application/sdp"), "{}", r.text());
    let sdp = [("Content-Type", "application/sdp")];
    let r = request("POST", &whip, &sdp, b"this is not SDP")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let r = request("POST", &url(&s, "/whip/bad%20name"), &sdp, offer.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    // None of that took the name.
    let first = publish(&s, "cam").await;
    let second = whip_publish(&whip, &file, WhipOptions::default())
        .await
        .unwrap();
    assert_eq!(second.status, 409, "{:?}", second.error_body);
    assert!(
        second
            .error_body
            .as_deref()
            .unwrap_or("")
            .contains("publisher"),
        "{:?}",
        second.error_body
    );
    // The first one is undisturbed.
    let n = first.stats.video_frames();
    assert!(
        first
            .wait_until(Duration::from_secs(3), |st| st.video_frames() > n + 15)
            .await
    );
    assert!(first.stats.connected_at().is_some());
}

/// A viewer's PLI reaches the WHIP publisher (the only source that can make a keyframe on
/// demand), at most one every 500 ms however many viewers ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_pli_reaches_the_publisher_rate_limited() {
    let s = serve(|_| {}).await;
    let p = publish(&s, "cam").await;
    let viewer = WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 30)
            .await
    );
    // Let any start-up requests settle, then take the baseline.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = p.stats.keyframe_requests();
    viewer.send_pli().await.expect("PLI sent");
    assert!(
        p.wait_until(Duration::from_secs(3), |st| st.keyframe_requests() > before)
            .await,
        "the viewer's PLI never reached the publisher ({} before, {:?})",
        before,
        p.stats
    );
    eprintln!(
        "PLI forwarded: {} -> {}",
        before,
        p.stats.keyframe_requests()
    );

    // A burst of 10 PLIs within ~100 ms: at most one is forwarded (500 ms limit; the one just
    // before may still count against it).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = p.stats.keyframe_requests();
    for _ in 0..10 {
        viewer.send_pli().await.expect("PLI sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let burst = p.stats.keyframe_requests() - before;
    assert!(
        (1..=2).contains(&burst),
        "10 PLIs in 100 ms gave {burst} keyframe requests"
    );
    viewer.finish().await;
}

/// With `--pipeline cat` the publisher writes `{s}.input`, `cat` copies it to `{s}`: viewers of
/// `Playback-Url` (`/whep/{s}`) get the media unchanged, and both streams can be pulled as TS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_cat_passes_the_published_stream_through() {
    let s = serve(|a| a.pipeline = Some("cat".into())).await;
    let p = publish(&s, "cam").await;
    assert_eq!(
        p.playback_url.as_deref(),
        Some(url(&s, "/whep/cam").as_str())
    );
    let r = whep_receive(
        p.playback_url.as_deref().unwrap(),
        WhepOptions {
            seconds: 4.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    check_viewer_of_h264_opus(&r, 60, 100);

    let (input_url, output_url) = (url(&s, "/streams/cam.input.ts"), url(&s, "/streams/cam.ts"));
    let (input, output) = tokio::join!(pull_ts(&input_url, 2.5), pull_ts(&output_url, 2.5));
    check_pulled_h264_opus(&demux_ts(&input), "/streams/cam.input.ts");
    check_pulled_h264_opus(&demux_ts(&output), "/streams/cam.ts");

    let list = request("GET", &url(&s, "/streams"), &[], b"")
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let names: Vec<&str> = j["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&"cam") && names.contains(&"cam.input"),
        "{names:?}"
    );
}

/// An ffmpeg filter as the pipeline (the `examples/mirror.sh` command): the viewer gets the
/// re-encoded stream, still H.264 + Opus, starting at an IDR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_ffmpeg_filter_reencodes_for_viewers() {
    if !ffmpeg_available("pipeline_ffmpeg_filter_reencodes_for_viewers") {
        return;
    }
    let mirror = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mirror.sh");
    let s = serve(|a| a.pipeline = Some(mirror.into())).await;
    let p = publish(&s, "cam").await;
    let r = whep_receive(
        p.playback_url.as_deref().unwrap(),
        WhepOptions {
            seconds: 12.0,
            stop: StopWhen::VideoAus(90),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 60, "{} AUs through ffmpeg", aus.len());
    assert!(
        aus[0].is_keyframe() && aus[0].nal_types.starts_with(&[nal::SPS, nal::PPS]),
        "{:?}",
        aus[0].nal_types
    );
    for au in &aus[..aus.len() - 1] {
        assert!(au.complete, "{:?}", au.problems);
        let slices = if au.is_keyframe() {
            nal::IDR
        } else {
            nal::SLICE
        };
        assert!(
            au.nal_types
                .iter()
                .all(|&t| t == slices || [nal::SPS, nal::PPS, nal::SEI].contains(&t)),
            "{:?}",
            au.nal_types
        );
    }
    // The backlog stamped by the sending pace, then about 30 fps.
    assert!(
        aus.windows(2)
            .all(|w| (1..=6000).contains(&w[1].ts.wrapping_sub(w[0].ts))),
        "timestamps move forward at about 30 fps"
    );
    assert!(r.audio.len() >= 50, "{} Opus packets", r.audio.len());
    // The picture is the source's, mirrored: testsrc2's colour bars are far from symmetric.
    let viewer_frame = decode_gray(&aus[0].annex_b(), &["-f", "h264"]);
    let source = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
    let source_frame = decode_gray(&source, &["-f", "mpegts"]);
    let (w, h) = (640, 360);
    assert_eq!(
        viewer_frame.len(),
        w * h,
        "one 640x360 frame from the viewer's IDR"
    );
    let diff = |flip: bool| {
        let mut sum = 0u64;
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                sum += u64::from(viewer_frame[y * w + x].abs_diff(source_frame[y * w + sx]));
            }
        }
        sum as f64 / (w * h) as f64
    };
    let (as_is, mirrored) = (diff(false), diff(true));
    eprintln!("mean difference to the source: {as_is:.1} as is, {mirrored:.1} mirrored");
    assert!(
        mirrored * 2.0 < as_is,
        "the viewer's picture is not the mirrored source ({as_is:.1} vs {mirrored:.1})"
    );
    // Re-encoded by x264, not passed through: another SPS than the source's High 3.0.
    let j = stream_json(&s, "cam").await;
    let h264 = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "video")
        .cloned()
        .unwrap_or_default();
    assert_ne!(h264["profile_level_id"], "64001e", "{j}");
    assert_eq!(h264["width"], 640, "{j}");
    let a = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "audio")
        .cloned()
        .unwrap_or_default();
    assert_eq!(a["codec"], "Opus", "{j}");
}

/// The connection was up and then went to another state (disconnected, failed, closed).
fn ended_after_connected(states: &[RTCPeerConnectionState]) -> bool {
    states
        .iter()
        .position(|s| *s == RTCPeerConnectionState::Connected)
        .is_some_and(|i| {
            states[i + 1..]
                .iter()
                .any(|s| *s != RTCPeerConnectionState::Connected)
        })
}

/// The first picture of `input` (an H.264 elementary stream or a TS), as 8-bit luma.
fn decode_gray(input: &[u8], format: &[&str]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error"])
        .args(format)
        .args([
            "-i",
            "-",
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run ffmpeg");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let data = input.to_vec();
    // ffmpeg may stop reading after the first frame: write from another thread.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("ffmpeg output");
    let _ = writer.join();
    out.stdout
}

/// Sorted, de-duplicated packets with unwrapped sequence numbers.
fn by_seq(pkts: &[RtpPkt]) -> Vec<(i64, &RtpPkt)> {
    let mut out: Vec<(i64, &RtpPkt)> = Vec::with_capacity(pkts.len());
    let mut last: Option<i64> = None;
    for p in pkts {
        let ext = match last {
            None => i64::from(p.seq),
            Some(l) => l + i64::from(p.seq.wrapping_sub(l as u16) as i16),
        };
        last = Some(last.map_or(ext, |l| l.max(ext)));
        out.push((ext, p));
    }
    out.sort_by_key(|(e, _)| *e);
    out.dedup_by_key(|(e, _)| *e);
    out
}

/// The pipeline command dies (here after 4 s) while the publisher is there: it is restarted
/// and the viewer rides through on the same RTP stream — same SSRC, no sequence gap,
/// timestamps never going back — and frames resume after the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_crash_restarts_and_viewers_ride_through() {
    let s = serve(|a| a.pipeline = Some("timeout 4 cat".into())).await;
    let p = publish(&s, "cam").await;
    let r = whep_receive(
        p.playback_url.as_deref().unwrap(),
        WhepOptions {
            seconds: 7.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let video = by_seq(&r.video);
    assert!(video.len() > 100, "{} video packets", video.len());

    let ssrcs: std::collections::BTreeSet<u32> = r.video.iter().map(|p| p.ssrc).collect();
    assert_eq!(ssrcs.len(), 1, "one RTP stream throughout: {ssrcs:?}");
    let missing: i64 = video.windows(2).map(|w| w[1].0 - w[0].0 - 1).sum();
    assert!(
        missing <= 3,
        "{missing} video packets missing: the restart must not break the sequence"
    );
    for w in video.windows(2) {
        let step = w[1].1.ts.wrapping_sub(w[0].1.ts) as i32;
        assert!(
            (0..90_000 * 2).contains(&step),
            "RTP time went from {} to {} (seq {} -> {})",
            w[0].1.ts,
            w[1].1.ts,
            w[0].1.seq,
            w[1].1.seq
        );
    }
    // The restart shows as a pause in arrivals (0.5 s backoff + start-up), about 4 s in.
    let longest = r
        .video
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap();
    let gap_at = r
        .video
        .windows(2)
        .position(|w| w[1].at.duration_since(w[0].at) >= Duration::from_millis(400))
        .map(|i| i + 1);
    eprintln!(
        "pause at packet {gap_at:?} of {}; longest {longest:?}",
        r.video.len()
    );
    let gap_at = gap_at.unwrap_or_else(|| {
        panic!("no pause in the video: did the pipeline restart? longest gap {longest:?}")
    });
    let after = h264_access_units(&r.video[gap_at..]);
    assert!(
        after.len() >= 30,
        "only {} frames after the restart",
        after.len()
    );
    assert!(
        after.iter().any(|a| a.is_keyframe()),
        "no keyframe after the restart"
    );
    assert!(r.audio.len() > 100, "{} audio packets", r.audio.len());
    let audio = by_seq(&r.audio);
    for w in audio.windows(2) {
        assert!(
            (w[1].1.ts.wrapping_sub(w[0].1.ts) as i32) > 0,
            "audio time went back"
        );
    }
}

/// The publisher DELETEs: the stream's input closes (`"source": "ended"`), and its viewers are
/// closed by the server once `--source-grace` has passed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_delete_ends_viewers_after_the_grace() {
    let grace = Duration::from_secs(1);
    let s = serve(|a| a.source_grace = grace).await;
    let mut p = publish(&s, "cam").await;
    let viewer = WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 30)
            .await
    );
    assert_eq!(s.app.engine.session_count().await, 2);
    let t0 = Instant::now();
    assert_eq!(p.delete().await, Some(200));

    let j = wait_json(&s, "cam", Duration::from_secs(3), |j| {
        j["source"] == "ended"
    })
    .await;
    assert_eq!(j["source"], "ended", "{j}");
    assert!(
        t0.elapsed() < grace,
        "took {:?} to see the end",
        t0.elapsed()
    );
    assert_eq!(
        s.app.engine.session_count().await,
        1,
        "the viewer stays within the grace"
    );

    while s.app.engine.session_count().await > 0 && t0.elapsed() < grace + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended_after = t0.elapsed();
    assert_eq!(
        s.app.engine.session_count().await,
        0,
        "viewer not closed {ended_after:?} after the publisher left"
    );
    assert!(ended_after >= grace, "closed after {ended_after:?}");
    eprintln!("viewer closed {ended_after:?} after the DELETE");

    // The viewer's side sees the server end the connection.
    let closed = viewer
        .wait_until(Duration::from_secs(10), |c| {
            ended_after_connected(&c.states)
        })
        .await;
    let c = viewer.collected();
    eprintln!(
        "viewer states {:?}, {:?} after the DELETE",
        c.states,
        t0.elapsed()
    );
    assert!(
        closed,
        "the viewer never saw its connection end: {:?}",
        c.states
    );
    let j = stream_json(&s, "cam").await;
    assert_eq!(j["source"], "ended", "{j}");
}

/// A new publisher within the grace continues the stream: the viewer stays connected and keeps
/// receiving on the same RTP stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_publisher_within_the_grace_keeps_viewers() {
    let grace = Duration::from_secs(3);
    let s = serve(|a| a.source_grace = grace).await;
    let mut first = publish(&s, "cam").await;
    let viewer = WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 30)
            .await
    );
    assert_eq!(first.delete().await, Some(200));
    let j = wait_json(&s, "cam", Duration::from_secs(3), |j| {
        j["source"] == "ended"
    })
    .await;
    assert_eq!(j["source"], "ended", "{j}");
    let before = viewer.collected().video_markers;

    let second = publish(&s, "cam").await;
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video_markers >= before + 60)
            .await,
        "the viewer got no frames from the new publisher"
    );
    // Past the grace: still there, still receiving.
    tokio::time::sleep(grace).await;
    let n = viewer.collected().video_markers;
    assert!(
        viewer
            .wait_until(Duration::from_secs(2), |c| c.video_markers >= n + 15)
            .await,
        "the viewer stopped receiving after the grace"
    );
    assert_eq!(s.app.engine.session_count().await, 2);
    let c = viewer.collected();
    assert_eq!(
        c.states.last(),
        Some(&RTCPeerConnectionState::Connected),
        "{:?}",
        c.states
    );
    let ssrcs: std::collections::BTreeSet<u32> = c.video.iter().map(|p| p.ssrc).collect();
    assert_eq!(ssrcs.len(), 1, "{ssrcs:?}");
    let video = by_seq(&c.video);
    let missing: i64 = video.windows(2).map(|w| w[1].0 - w[0].0 - 1).sum();
    assert!(
        missing <= 3,
        "{missing} packets missing across the publisher change"
    );
    for w in video.windows(2) {
        let step = w[1].1.ts.wrapping_sub(w[0].1.ts) as i32;
        assert!((0..90_000 * 2).contains(&step), "RTP time step {step}");
    }
    assert!(second.stats.video_frames() > 60);
    viewer.finish().await;
}

/// A publisher that vanishes (no DELETE, no DTLS close) is freed by the ICE timeout: its
/// stream's input ends and the name can be published again. `--ice-timeout` bounds how long
/// that takes (it is documented as the disconnect timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_publisher_is_freed_by_ice_timeout() {
    let ice_timeout = Duration::from_secs(2);
    let s = serve(|a| a.ice_timeout = ice_timeout).await;
    let mut p = publish(&s, "cam").await;
    assert!(
        p.wait_until(Duration::from_secs(5), |st| st.video_frames() > 30)
            .await
    );
    let j = stream_json(&s, "cam").await;
    assert_eq!(j["source"], "live", "{j}");
    p.stop().await;
    let t = Instant::now();
    // Still there a moment later: nothing told the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.app.engine.session_count().await, 1);
    let j = wait_json(&s, "cam", Duration::from_secs(40), |j| {
        j["source"] == "ended"
    })
    .await;
    let freed_after = t.elapsed();
    assert_eq!(j["source"], "ended", "{j}");
    eprintln!("vanished publisher freed after {freed_after:?}");
    assert_eq!(s.app.engine.session_count().await, 0);
    let again = publish(&s, "cam").await;
    assert!(
        again
            .wait_until(Duration::from_secs(5), |st| st.video_frames() > 10)
            .await
    );
    // Until then, a publisher coming back (a reloaded page) gets 409.
    assert!(
        freed_after < ice_timeout + Duration::from_secs(5),
        "a vanished publisher held its stream for {freed_after:?} with --ice-timeout {ice_timeout:?}"
    );
}

/// `viewers` counts viewers: the publisher of the stream is not one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_count_does_not_include_the_publisher() {
    let s = serve(|_| {}).await;
    let mut p = publish(&s, "cam").await;
    assert!(
        p.wait_until(Duration::from_secs(5), |st| st.video_frames() > 10)
            .await
    );
    let j = stream_json(&s, "cam").await;
    assert_eq!(j["viewers"], 0, "a publisher alone: {j}");
    let r = whep_receive(
        &url(&s, "/whep/cam"),
        WhepOptions {
            seconds: 2.0,
            stop: StopWhen::VideoAus(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.delete_status, Some(200));
    p.delete().await;
    let j = wait_json(&s, "cam", Duration::from_secs(3), |j| {
        j["source"] == "ended"
    })
    .await;
    assert_eq!(j["viewers"], 0, "nobody is left: {j}");
}

/// A stream that already has a source (here a `--replay`) cannot also take a publisher: 409,
/// with or without a pipeline (whose output would otherwise be a second writer of the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_to_a_stream_fed_by_another_source_is_409() {
    for pipeline in [None, Some("cat")] {
        let s = serve(|a| {
            a.replays.push(tsbridge::config::Named {
                name: "cam".into(),
                value: common::testdata("h264_opus.ts"),
            });
            a.pipeline = pipeline.map(str::to_owned);
        })
        .await;
        let j = wait_json(&s, "cam", Duration::from_secs(5), |j| j["source"] == "live").await;
        assert_eq!(j["source"], "live", "{j}");
        let p = whip_publish(
            &url(&s, "/whip/cam"),
            &common::testdata("h264_opus.ts"),
            WhipOptions::default(),
        )
        .await
        .unwrap();
        // Let a wrongly accepted publisher's pipeline write for a while.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let j = stream_json(&s, "cam").await;
        assert_eq!(
            p.status, 409,
            "pipeline {pipeline:?}: {:?}; stream now {j}",
            p.error_body
        );
    }
}

/// A publisher that sends only video makes a video-only stream: the PMT lists H.264 alone and
/// a viewer's audio m-line is not answered with anything to receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_only_publisher_makes_a_video_only_stream() {
    let s = serve(|_| {}).await;
    let p = publish_with(
        &s,
        "cam",
        WhipOptions {
            audio: false,
            ..Default::default()
        },
    )
    .await;
    assert!(
        !common::sdp_codecs(&p.offer_sdp)
            .iter()
            .any(|c| c.media == "audio"),
        "{}",
        p.offer_sdp
    );
    let r = whep_receive(
        &url(&s, "/whep/cam"),
        WhepOptions {
            seconds: 3.0,
            stop: StopWhen::VideoAus(40),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(h264_access_units(&r.video).len() >= 40);
    assert!(r.audio.is_empty());
    assert_eq!(p.stats.audio_packets(), 0);
    let j = stream_json(&s, "cam").await;
    let tracks = j["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 1, "{j}");
    assert_eq!(tracks[0]["codec"], "H.264", "{j}");
}
