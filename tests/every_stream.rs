//! Every stream plays for every WebRTC stack: streams with one kind of track, codecs a viewer
//! cannot take, answered so that stacks other than Chromium accept them. The viewer is the
//! `webrtc` crate (an independent stack) offering audio + video, and, where installed, aiortc
//! (`tests/peers/whep_aiortc.py`; required in CI by `TSBRIDGE_REQUIRE_PEERS`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{h264_access_units, whep_receive, StopWhen, WhepOptions};
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

async fn serve(replays: &[(&str, &str)]) -> Server {
    let mut args = ServeArgs::loopback();
    for (name, file) in replays {
        args.replays.push(Named {
            name: name.to_string(),
            value: common::testdata(file),
        });
    }
    Server::start(args).await.expect("server starts")
}

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

/// The lines of the answer's first m-section of `kind`.
fn section<'a>(sdp: &'a str, kind: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in sdp.lines().map(str::trim) {
        if line.starts_with("m=") {
            if inside {
                break;
            }
            inside = line.starts_with(&format!("m={kind} "));
        }
        if inside {
            out.push(line);
        }
    }
    assert!(!out.is_empty(), "no {kind} section in\n{sdp}");
    out
}

/// A section the viewer gets nothing on, answered so every stack takes it: kept (port 9, in
/// the BUNDLE group), `a=inactive`, with a payload type the offer listed and its rtpmap.
fn assert_idle(answer: &str, offer: &str, kind: &str) {
    let s = section(answer, kind);
    let m: Vec<&str> = s[0].split_whitespace().collect();
    assert_eq!(
        m[1], "9",
        "{kind} kept, not rejected with port 0:\n{answer}"
    );
    assert_eq!(m.len(), 4, "one payload type: {}", s[0]);
    let offered = section(offer, kind)[0].to_string();
    assert!(
        offered.split_whitespace().skip(3).any(|pt| pt == m[3]),
        "{kind}: answered payload type {} was offered ({offered})",
        m[3]
    );
    assert!(s.contains(&"a=inactive"), "{kind} inactive:\n{answer}");
    assert!(
        !s.iter()
            .any(|l| matches!(*l, "a=sendonly" | "a=sendrecv" | "a=recvonly")),
        "{kind}: only a=inactive as direction:\n{answer}"
    );
    assert!(
        s.iter()
            .any(|l| l.starts_with(&format!("a=rtpmap:{} ", m[3]))),
        "{kind}: rtpmap of the answered payload type:\n{answer}"
    );
    let mid = s
        .iter()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .expect("a=mid");
    let bundle = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=group:BUNDLE "))
        .expect("a BUNDLE group");
    assert!(
        bundle.split_whitespace().any(|m| m == mid),
        "{kind} (mid {mid}) in BUNDLE {bundle}"
    );
}

/// An Opus-only TS: the offered video section is answered inactive, and the Opus plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_stream_answers_video_inactive_and_plays_opus() {
    let s = serve(&[("radio", "opus_only.ts")]).await;
    let r = whep_receive(
        &url(&s, "/whep/radio"),
        WhepOptions {
            seconds: 4.0,
            stop: StopWhen::AudioPackets(100),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert_idle(&r.answer_sdp, &r.offer_sdp, "video");
    assert!(r.video.is_empty(), "no video sent");
    assert!(
        r.audio.len() >= 100,
        "Opus plays: {} packets; {:?} {:?}\n{}",
        r.audio.len(),
        r.setup_error,
        r.states,
        r.answer_sdp
    );
    assert_eq!(r.audio_mime.as_deref(), Some("audio/opus"));
    // One Opus packet of 20 ms per RTP packet: timestamps 960 apart.
    for w in r.audio.windows(2).take(50) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 960);
    }
}

/// A video-only TS: the offered audio section is answered inactive, and the video plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_only_stream_answers_audio_inactive_and_plays_h264() {
    let s = serve(&[("v", "h264_only.ts")]).await;
    let r = whep_receive(
        &url(&s, "/whep/v"),
        WhepOptions {
            seconds: 4.0,
            stop: StopWhen::VideoAus(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert_idle(&r.answer_sdp, &r.offer_sdp, "audio");
    assert!(r.audio.is_empty());
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 30, "{} access units", aus.len());
    assert!(aus[0].is_keyframe(), "starts at a keyframe");
}

/// H.264 + AC-3: AC-3 does not play in WebRTC (and is not transcoded): video plays, the audio
/// section is inactive, and the API says why. (With `--features ffmpeg` it plays as Opus:
/// `tests/transcode.rs`.)
#[cfg(not(feature = "ffmpeg"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_with_ac3_plays_video_and_says_why_audio_does_not() {
    let s = serve(&[("ac3", "h264_ac3.ts")]).await;
    let r = whep_receive(
        &url(&s, "/whep/ac3"),
        WhepOptions {
            seconds: 4.0,
            stop: StopWhen::VideoAus(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert_idle(&r.answer_sdp, &r.offer_sdp, "audio");
    assert!(h264_access_units(&r.video).len() >= 20);
    let j = common::stream_json(s.http_addr, "ac3").await;
    let ac3 = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["stream_type"] == 0x81)
        .expect("AC-3 listed")
        .clone();
    assert_eq!(ac3["playable"], false, "{ac3}");
    assert!(ac3["reason"].as_str().unwrap().contains("AC-3"), "{ac3}");
}

/// A stream whose PMT drops its audio: a viewer who joins after the change gets the audio
/// section inactive (and the video), not a rejected section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_after_a_pmt_change_to_video_only_gets_audio_inactive() {
    let s = Server::start(ServeArgs::loopback()).await.unwrap();
    let mut joined = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
    joined.extend(std::fs::read(common::testdata("h264_only.ts")).unwrap());
    let path = std::env::temp_dir().join(format!("tsbridge-pmt-idle-{}.ts", std::process::id()));
    std::fs::write(&path, &joined).unwrap();
    let ingest = url(&s, "/ingest/pmt");
    let p2 = path.clone();
    let pusher =
        tokio::spawn(async move { tsbridge::ingest::replay::push(&p2, &ingest, false).await });
    // Wait for the second PMT (video only).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = common::request("GET", &url(&s, "/streams/pmt"), &[], b"")
            .await
            .unwrap();
        if r.status == 200 {
            let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            if j["tracks"].as_array().is_some_and(|t| t.len() == 1) {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no PMT change seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = whep_receive(
        &url(&s, "/whep/pmt"),
        WhepOptions {
            seconds: 3.0,
            stop: StopWhen::VideoAus(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert_idle(&r.answer_sdp, &r.offer_sdp, "audio");
    assert!(h264_access_units(&r.video).len() >= 10);
    pusher.abort();
    let _ = std::fs::remove_file(&path);
}

/// An offer that can take nothing the stream has (audio only, against a video-only stream):
/// 406 saying what the stream has and what was offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_that_can_take_nothing_is_406_saying_why() {
    let s = serve(&[("v", "h264_only.ts")]).await;
    let r = whep_receive(
        &url(&s, "/whep/v"),
        WhepOptions {
            video: false,
            seconds: 1.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 406, "{:?}", r.error_body);
    let why = r.error_body.unwrap_or_default();
    assert!(why.contains("H.264") && why.contains("opus"), "{why}");
}

// ---- outside peers ------------------------------------------------------------------------

/// `tests/peers` (or `TSBRIDGE_PEERS`), when aiortc is importable; else `None` after saying
/// loudly that `test` is skipped (a panic when `TSBRIDGE_REQUIRE_PEERS` is set, as in CI).
fn aiortc_or_skip(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TSBRIDGE_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers"));
    let script = dir.join("whep_aiortc.py");
    let importable = std::process::Command::new("python3")
        .args(["-c", "import aiortc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if script.exists() && importable {
        return Some(dir);
    }
    let why = format!("{} (aiortc importable: {importable})", script.display());
    if std::env::var_os("TSBRIDGE_REQUIRE_PEERS").is_some() {
        panic!("aiortc is required (TSBRIDGE_REQUIRE_PEERS is set) but missing: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: no aiortc peer: {why} ***");
    eprintln!("*** pip install -r tests/peers/requirements.txt ***\n");
    None
}

/// Runs the aiortc WHEP viewer for `seconds`; its one JSON line.
async fn aiortc_view(peers: &std::path::Path, url: &str, seconds: f64) -> serde_json::Value {
    let out = tokio::process::Command::new("python3")
        .arg(peers.join("whep_aiortc.py"))
        .arg(url)
        .args(["--seconds", &seconds.to_string()])
        .output()
        .await
        .expect("run aiortc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let Some(line) = line else {
        panic!(
            "aiortc printed no JSON (exit {:?}); stderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    serde_json::from_str(line).expect("aiortc JSON")
}

/// aiortc (the Python stack most AI pipelines use) plays an audio-only and a video-only
/// stream: it used to fail on the rejected section ("Failed to set remote … description").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_plays_audio_only_and_video_only_streams() {
    let Some(peers) = aiortc_or_skip("aiortc_plays_audio_only_and_video_only_streams") else {
        return;
    };
    let s = serve(&[("radio", "opus_only.ts"), ("v", "h264_only.ts")]).await;
    let (radio, v) = (url(&s, "/whep/radio"), url(&s, "/whep/v"));
    let (audio, video) = tokio::join!(
        aiortc_view(&peers, &radio, 4.0),
        aiortc_view(&peers, &v, 4.0),
    );
    assert_eq!(audio["http_status"], 201, "{audio}");
    assert!(
        audio["audio_samples"].as_u64().unwrap_or(0) > 48_000,
        "aiortc decoded audio of the Opus-only stream: {audio}"
    );
    assert!(audio["audio_rms"].as_f64().unwrap_or(0.0) > 0.0, "{audio}");
    assert_eq!(video["http_status"], 201, "{video}");
    assert!(
        video["video_frames_decoded"].as_u64().unwrap_or(0) >= 30,
        "aiortc decoded frames of the video-only stream: {video}"
    );
    assert!(
        video["video_distinct_samples"].as_u64().unwrap_or(0) > 1,
        "{video}"
    );
}

// ---- WHEP conformance (draft-ietf-wish-whep-04, RFC 9725) ----------------------------------

/// A session answers only under its own stream and role; HEAD on an endpoint is 200 with the
/// SDP media type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_answer_only_under_their_own_stream_and_role() {
    let s = serve(&[("cam", "h264_opus.ts")]).await;
    let mut viewer = common::WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    let loc = viewer.location.clone().unwrap();
    let id = loc.rsplit('/').next().unwrap().to_string();
    for wrong in [
        format!("/whip/cam/{id}"),
        format!("/whep/other/{id}"),
        format!("/whip/other/{id}"),
    ] {
        let r = common::request("DELETE", &url(&s, &wrong), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 404, "DELETE {wrong}: {}", r.text());
        let frag = [("Content-Type", "application/trickle-ice-sdpfrag")];
        let body = b"a=mid:0\r\na=candidate:2 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
        let r = common::request("PATCH", &url(&s, &wrong), &frag, body)
            .await
            .unwrap();
        assert_eq!(r.status, 404, "PATCH {wrong}: {}", r.text());
    }
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 10)
            .await,
        "the session is untouched"
    );
    assert_eq!(viewer.delete().await, Some(200));

    for endpoint in ["/whep/cam", "/whip/cam", "/whep/not-yet-there"] {
        let r = common::request("HEAD", &url(&s, endpoint), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "HEAD {endpoint}");
        assert_eq!(
            r.header("content-type"),
            Some("application/sdp"),
            "{endpoint}"
        );
    }
}

/// A stream that is known but not live (its source ended, past --source-grace) is 409 +
/// Retry-After after the wait; a name nothing ever fed stays 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_source_ended_is_409_an_unknown_one_404() {
    let mut args = ServeArgs::loopback();
    args.whep_wait = Duration::from_millis(500);
    args.source_grace = Duration::from_millis(300);
    let s = Server::start(args).await.unwrap();
    let ts = std::fs::read(common::testdata("h264_only.ts")).unwrap();
    let r = common::request(
        "PUT",
        &url(&s, "/ingest/gone"),
        &[("Content-Type", "video/mp2t")],
        &ts,
    )
    .await
    .unwrap();
    assert!(r.status < 300, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let sdp = [("Content-Type", "application/sdp")];
    let r = common::request("POST", &url(&s, "/whep/gone"), &sdp, offer.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("not live"), "{}", r.text());
    let r = common::request("POST", &url(&s, "/whep/never"), &sdp, offer.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
}

// ---- B-frames ------------------------------------------------------------------------------

/// libx264's defaults (B-frames) are reported where a user looks: the video track in the API
/// says the stream is re-encoded and why (with how to avoid it); with `--video-transcode off`
/// it warns with what to do; a source without B-frames says `b_frames: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_frames_are_reported_on_the_track_with_what_to_do() {
    let s = serve(&[("bf", "h264_bframes.ts"), ("ok", "h264_opus.ts")]).await;
    let mut args = ServeArgs::loopback();
    args.replays.push(Named {
        name: "bf".into(),
        value: common::testdata("h264_bframes.ts"),
    });
    args.video_transcode = tsbridge::config::Transcode::Off;
    let off = Server::start(args).await.expect("server starts");
    let video = |j: &serde_json::Value| {
        j["tracks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["kind"] == "video"))
            .cloned()
    };
    let reported = |addr| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let j = common::stream_json(addr, "bf").await;
            if let Some(v) = video(&j).filter(|v| v["b_frames"] == true) {
                break v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no B-frame report: {j}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let bf = reported(s.http_addr).await;
    assert_eq!(bf["transcoded_to"], "H.264 Constrained Baseline", "{bf}");
    let reason = bf["transcode_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("B-frames") && reason.contains("-bf 0"),
        "{bf}"
    );
    assert!(bf.get("warning").is_none(), "{bf}");
    let bf = reported(off.http_addr).await;
    let warning = bf["warning"].as_str().unwrap_or("");
    assert!(warning.contains("-bf 0"), "{bf}");
    assert!(bf.get("transcoded_to").is_none(), "{bf}");
    let ok = video(&common::stream_json(s.http_addr, "ok").await).expect("video track");
    assert_eq!(ok["b_frames"], false, "{ok}");
    assert!(ok.get("warning").is_none(), "{ok}");
    assert!(ok.get("transcoded_to").is_none(), "{ok}");
}

/// A B-frame source reaches an independent WebRTC stack re-encoded: Constrained Baseline from
/// an IDR with its SPS on, RTP time rising one frame per access unit, and every access unit
/// decodes to a picture at once, in order (a decoder that had to reorder would hold some back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_frame_source_arrives_re_encoded_in_display_order() {
    use openh264::decoder::{Decoder, DecoderConfig, Flush};
    let s = serve(&[("bf", "h264_bframes.ts")]).await;
    let r = whep_receive(
        &url(&s, "/whep/bf"),
        WhepOptions {
            seconds: 4.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    // The first picture or two may go out as the source sent them, before B-frames showed.
    let start = aus
        .iter()
        .position(|a| {
            a.is_keyframe()
                && a.sps()
                    .and_then(common::sps_profile_level_id)
                    .is_some_and(|p| p.starts_with("42"))
        })
        .expect("a Constrained Baseline IDR");
    let aus = &aus[start..];
    assert!(aus.len() >= 60, "{} access units re-encoded", aus.len());
    for w in aus.windows(2) {
        assert_eq!(
            w[1].ts.wrapping_sub(w[0].ts),
            3000,
            "one frame per access unit"
        );
    }
    let mut decoder = Decoder::with_api_config(
        openh264::OpenH264API::from_source(),
        DecoderConfig::new().flush_after_decode(Flush::NoFlush),
    )
    .unwrap();
    for (i, au) in aus.iter().enumerate() {
        assert!(au.complete, "access unit {i}: {:?}", au.problems);
        let picture = decoder.decode(&au.annex_b()).expect("decodes");
        assert!(picture.is_some(), "access unit {i} gave no picture at once");
    }
    assert!(r.audio.len() > 50, "the Opus plays too");
}

/// A viewer's PLI makes the re-encoder send an IDR: a keyframe on demand from a source that
/// has one every 6 s (a pass-through stream cannot give one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_pli_gets_a_keyframe_from_the_re_encoder() {
    let s = serve(&[("bf", "h264_bframes_long_gop.ts")]).await;
    let viewer = common::WhepSession::start(&url(&s, "/whep/bf"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    let keyframes = |c: &common::whep::Collected| {
        h264_access_units(&c.video)
            .iter()
            .filter(|a| a.is_keyframe())
            .count()
    };
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| h264_access_units(&c.video)
                .len()
                > 20)
            .await
    );
    let before = keyframes(&viewer.collected());
    viewer.send_pli().await.expect("PLI sent");
    assert!(
        viewer
            .wait_until(Duration::from_secs(2), |c| keyframes(c) > before)
            .await,
        "no keyframe within 2 s of the PLI ({before} before)"
    );
    let j = common::stream_json(s.http_addr, "bf").await;
    let v = j["tracks"][0].clone();
    assert!(v["keyframes_on_request"].as_u64() >= Some(1), "{v}");
    viewer.finish().await;
}

/// B-frames in a picture format the re-encoder cannot take (10-bit 4:2:2): the API says why,
/// the warning stays, and the video still flows as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_frames_that_cannot_be_re_encoded_are_reported_and_passed_on() {
    let s = serve(&[("pro", "h264_422_10bit_bframes.ts")]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (j, v) = loop {
        let j = common::stream_json(s.http_addr, "pro").await;
        let v = j["tracks"][0].clone();
        if v["transcode_error"].is_string() {
            break (j, v);
        }
        assert!(tokio::time::Instant::now() < deadline, "no report: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let why = v["transcode_error"].as_str().unwrap();
    assert!(why.contains("4:2:2"), "{v}");
    assert!(v["warning"].as_str().unwrap_or("").contains("-bf 0"), "{v}");
    assert!(v.get("transcoded_to").is_none(), "{v}");
    let frames = j["video_frames"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = common::stream_json(s.http_addr, "pro").await["video_frames"]
        .as_u64()
        .unwrap_or(0);
    assert!(later > frames, "video keeps flowing: {frames} then {later}");
}

// ---- H.265 ---------------------------------------------------------------------------------

/// HEVC + Opus to a viewer that offers H.265 (as Chrome with a hardware decoder does): H.265
/// is negotiated at the source's profile, and the video arrives as RFC 7798 access units, an
/// IRAP with VPS/SPS/PPS first (instant start), timestamps 3000 apart; the Opus plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hevc_plays_to_a_viewer_that_offers_h265() {
    let s = serve(&[("hevc", "hevc_opus.ts")]).await;
    let r = whep_receive(
        &url(&s, "/whep/hevc"),
        WhepOptions {
            h265: true,
            // Long enough for both kinds: the GOP burst alone can bring 40 video access
            // units before the first 50 audio packets.
            seconds: 3.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let video = section(&r.answer_sdp, "video");
    assert!(
        video.iter().any(|l| l.contains("H265/90000")),
        "H.265 negotiated:\n{}",
        r.answer_sdp
    );
    assert!(
        video.iter().any(|l| l.contains("profile-id=1")),
        "{video:?}"
    );
    assert_eq!(r.video_pt_mime.as_deref(), Some("video/H265"));
    let aus = common::h265::hevc_access_units(&r.video);
    assert!(aus.len() >= 40, "{} access units", aus.len());
    let first = aus[0].types();
    assert!(aus[0].is_irap(), "starts at an IRAP: {first:?}");
    for t in [32, 33, 34] {
        assert!(
            first.contains(&t),
            "VPS/SPS/PPS before the first IRAP: {first:?}"
        );
    }
    let live = &aus[aus.len() - 20..];
    for w in live.windows(2) {
        assert_eq!(
            w[1].ts.wrapping_sub(w[0].ts),
            3000,
            "30 fps on the 90 kHz clock"
        );
    }
    assert!(r.audio.len() > 50, "the Opus plays too");
    let j = common::stream_json(s.http_addr, "hevc").await;
    let v = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "video")
        .cloned()
        .unwrap();
    assert_eq!(v["codec"], "H.265", "{v}");
    assert_eq!(v["playable"], true, "{v}");
    assert_eq!(v["profile_id"], 1, "{v}");
    assert_eq!(v["width"], 640, "{v}");
}

/// HEVC + Opus to a viewer that offers only H.264: it gets the Opus and its video section
/// inactive; an offer of H.264 video alone can take nothing: 406 saying H.265. (With
/// `--features ffmpeg` such a viewer gets it re-encoded: `tests/transcode.rs`.)
#[cfg(not(feature = "ffmpeg"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hevc_to_an_h264_only_viewer_plays_its_audio_or_is_406() {
    let s = serve(&[("hevc", "hevc_opus.ts")]).await;
    let r = whep_receive(
        &url(&s, "/whep/hevc"),
        WhepOptions {
            seconds: 3.0,
            stop: StopWhen::AudioPackets(50),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert_idle(&r.answer_sdp, &r.offer_sdp, "video");
    assert!(r.video.is_empty());
    assert!(r.audio.len() >= 50, "{} audio packets", r.audio.len());
    let r = whep_receive(
        &url(&s, "/whep/hevc"),
        WhepOptions {
            audio: false,
            seconds: 1.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 406, "{:?}", r.error_body);
    let why = r.error_body.unwrap_or_default();
    assert!(why.contains("H.265"), "{why}");
}

/// GStreamer's webrtcbin (`tests/peers/whep_gst.py`, Debian's python3-gi), when
/// installed; else `None` after saying so loudly (a panic with `TSBRIDGE_REQUIRE_PEERS`).
fn gstreamer_or_skip(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TSBRIDGE_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers"));
    let script = dir.join("whep_gst.py");
    let check = "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); \
                 from gi.repository import Gst; Gst.init(None); \
                 assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('avdec_h265')";
    let importable = std::process::Command::new("/usr/bin/python3")
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    if script.exists() && importable {
        return Some(dir);
    }
    let why = format!(
        "{} (GStreamer webrtcbin + avdec_h265 usable: {importable})",
        script.display()
    );
    if std::env::var_os("TSBRIDGE_REQUIRE_PEERS").is_some() {
        panic!("GStreamer is required (TSBRIDGE_REQUIRE_PEERS is set) but missing: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: no GStreamer peer: {why} ***");
    eprintln!("*** apt-get install python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-bad gstreamer1.0-nice gstreamer1.0-libav gstreamer1.0-plugins-good openssl ***\n");
    None
}

async fn gst_view(peers: &std::path::Path, url: &str, codec: &str) -> serde_json::Value {
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg(peers.join("whep_gst.py"))
        .arg(url)
        .args(["--seconds", "4", "--video-codec", codec])
        .output()
        .await
        .expect("run the GStreamer viewer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        panic!(
            "GStreamer viewer printed no JSON (exit {:?}); stderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    serde_json::from_str(line).expect("GStreamer viewer JSON")
}

/// GStreamer decodes H.265 from an HEVC stream, and plays an audio-only stream whose idle
/// video section is the first (BUNDLE-tag) one: it used to stall in ICE checking on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_decodes_hevc_and_plays_an_audio_only_stream() {
    let Some(peers) = gstreamer_or_skip("gstreamer_decodes_hevc_and_plays_an_audio_only_stream")
    else {
        return;
    };
    let s = serve(&[("hevc", "hevc_opus.ts"), ("radio", "opus_only.ts")]).await;
    let (hevc, radio) = (url(&s, "/whep/hevc"), url(&s, "/whep/radio"));
    let (h, a) = tokio::join!(
        gst_view(&peers, &hevc, "H265"),
        gst_view(&peers, &radio, "H264")
    );
    assert_eq!(h["http_status"], 201, "{h}");
    assert!(
        h["video_frames_decoded"].as_u64().unwrap_or(0) >= 30,
        "GStreamer decoded H.265: {h}"
    );
    assert!(h["audio_samples"].as_u64().unwrap_or(0) > 48_000, "{h}");
    assert_eq!(a["http_status"], 201, "{a}");
    assert!(
        a["audio_samples"].as_u64().unwrap_or(0) > 48_000,
        "GStreamer played the audio-only stream: {a}"
    );
}

// ---- 192-byte packets ----------------------------------------------------------------------

/// M2TS (192-byte packets, as cameras and Blu-ray write), replayed by `--replay` and pushed
/// over HTTP: both play, through the one packet aligner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m2ts_plays_when_replayed_and_when_pushed() {
    let s = serve(&[("cam", "h264_opus.m2ts")]).await;
    let m2ts = std::fs::read(common::testdata("h264_opus.m2ts")).unwrap();
    let ingest = url(&s, "/ingest/pushed");
    // Pushed about as fast as it plays (3 s), in pieces that are no multiple of 192.
    let pusher = tokio::spawn(async move {
        let mut up =
            common::http::ChunkedUpload::start("PUT", &ingest, &[("Content-Type", "video/mp2t")])
                .await?;
        let pieces: Vec<&[u8]> = m2ts.chunks(7777).collect();
        let pause = Duration::from_secs(3) / pieces.len() as u32;
        for piece in pieces {
            up.send(piece).await?;
            tokio::time::sleep(pause).await;
        }
        up.finish().await
    });
    for name in ["cam", "pushed"] {
        let r = whep_receive(
            &url(&s, &format!("/whep/{name}")),
            WhepOptions {
                seconds: 3.0,
                stop: match name {
                    "cam" => StopWhen::AudioPackets(50),
                    _ => StopWhen::VideoAus(5),
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201, "{name}: {:?}", r.error_body);
        let aus = h264_access_units(&r.video);
        assert!(aus.len() >= 5, "{name}: {} access units", aus.len());
        assert!(aus[0].is_keyframe(), "{name}");
        if name == "cam" {
            assert!(aus.len() >= 20 && r.audio.len() >= 50, "{name}: audio too");
        }
    }
    let j = common::stream_json(s.http_addr, "cam").await;
    assert_eq!(
        j["ts_problems"], 0,
        "the 4-byte headers are no garbage: {j}"
    );
    let pushed = pusher.await.unwrap().unwrap();
    assert!(pushed.status < 300, "{}", pushed.text());
}

// ---- MPTS ----------------------------------------------------------------------------------

/// A TS with two programs (1: HEVC only, 2: H.264 + Opus): the API lists both with the URLs
/// that play them; the stream follows program 2 (the first that plays everywhere); a viewer
/// picks program 1 with `?program=1` and gets its H.265; every program is demuxed once however
/// many viewers it has; an unknown program is 404 naming the ones there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpts_programs_are_listed_and_each_plays_by_its_url() {
    let s = serve(&[("mpts", "mpts.ts")]).await;
    let av = WhepOptions {
        seconds: 3.0,
        stop: StopWhen::AudioPackets(30),
        ..Default::default()
    };
    // The default: program 2, H.264 + Opus.
    let r = whep_receive(&url(&s, "/whep/mpts"), av.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(!h264_access_units(&r.video).is_empty() && r.audio.len() >= 30);

    let j = common::stream_json(s.http_addr, "mpts").await;
    assert_eq!(j["program"], 2, "{j}");
    let programs = j["programs"].as_array().expect("programs");
    assert_eq!(programs.len(), 2, "{j}");
    assert_eq!(programs[0]["number"], 1);
    assert_eq!(programs[0]["followed"], false);
    assert_eq!(programs[0]["tracks"][0]["codec"], "H.265");
    assert_eq!(programs[0]["urls"]["whep"], "/whep/mpts?program=1");
    assert_eq!(programs[0]["urls"]["play"], "/play/mpts?program=1");
    assert_eq!(programs[1]["followed"], true);
    assert_eq!(programs[1]["tracks"].as_array().unwrap().len(), 2);

    // Program 1 by the URL the API gives, twice: H.265 to both, one demux of it.
    let hevc = WhepOptions {
        h265: true,
        audio: false,
        seconds: 5.0,
        ..Default::default()
    };
    let whep1 = url(&s, "/whep/mpts?program=1");
    let a = common::WhepSession::start(&whep1, &hevc).await.unwrap();
    let b = common::WhepSession::start(&whep1, &hevc).await.unwrap();
    assert_eq!((a.status, b.status), (201, 201), "{:?}", a.error_body);
    for v in [&a, &b] {
        assert!(
            v.wait_until(Duration::from_secs(5), |c| {
                common::h265::hevc_access_units(&c.video).len() >= 10
            })
            .await,
            "program 1's H.265 plays"
        );
        let aus = common::h265::hevc_access_units(&v.collected().video);
        assert!(aus[0].is_irap(), "{:?}", aus[0].types());
    }
    let j = common::stream_json(s.http_addr, "mpts").await;
    assert_eq!(j["programs"][0]["viewers"], 2, "{j}");
    assert_eq!(j["programs"][0]["tracks"][0]["width"], 320, "{j}");
    assert_eq!(j["viewers"], 2, "{j}");
    // Program 2 by number is the stream's own.
    let r = whep_receive(&url(&s, "/whep/mpts?program=2"), av)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(r.audio.len() >= 30);
    // No program 9.
    let r = whep_receive(&url(&s, "/whep/mpts?program=9"), WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{:?}", r.error_body);
    let why = r.error_body.unwrap_or_default();
    assert!(why.contains("1, 2"), "{why}");
}
