//! Recovery points are start points (issue 24): a periodic-intra-refresh source (one IDR, then
//! recovery points only) pushed live into the server. Its GOP cache stays within
//! `--gop-cache-max`, the API says why it is re-encoded, a joining viewer gets an IDR at once
//! when it is, and a picture decodable from the recovery point (by OpenH264 here) when it is
//! not.

mod common;

use std::time::{Duration, Instant};

use common::h264::nal;
use common::{h264_access_units, request, whep_receive, StopWhen, WhepOptions};
use tsbridge::codec::h264_decoder::{DecodeState, H264Decoder};
use tsbridge::config::{ServeArgs, Transcode};
use tsbridge::server::Server;

/// The server with a GOP cache bound of `bound` (`--gop-cache-max`).
async fn serve(bound: &str, transcode: Transcode) -> Server {
    let mut args = ServeArgs::loopback();
    args.gop_cache_max = bound.parse().expect("bound");
    args.video_transcode = transcode;
    Server::start(args).await.expect("server starts")
}

/// Pushes testdata/h264_intra_refresh.ts (4 s: an IDR, then a recovery point each second)
/// once, in real time, as stream `name`.
fn push_intra_refresh(s: &Server, name: &str) -> tokio::task::JoinHandle<Result<(), String>> {
    let ingest = format!("http://{}/ingest/{name}", s.http_addr);
    tokio::spawn(async move {
        tsbridge::ingest::replay::push(&common::testdata("h264_intra_refresh.ts"), &ingest, false)
            .await
    })
}

/// `GET /streams/{name}`'s video track and GOP cache, once the stream exists.
async fn poll(s: &Server, name: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    let r = request(
        "GET",
        &format!("http://{}/streams/{name}", s.http_addr),
        &[],
        b"",
    )
    .await
    .ok()?;
    let j: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    let video = j["tracks"]
        .as_array()?
        .iter()
        .find(|t| t["kind"] == "video")?
        .clone();
    Some((video, j["gop_cache"].clone()))
}

/// The source's recovery points start GOPs: the cache never holds more than its bound (1.5 s
/// here; before issue 24 it held everything since the one IDR), the API says the source has
/// no keyframe within it and why the video is re-encoded, and a viewer joining mid-stream
/// gets an IDR (the re-encoder's, Constrained Baseline) as its first picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intra_refresh_source_is_cached_within_its_bound_and_re_encoded() {
    let s = serve("1.5,1MiB", Transcode::Auto).await;
    let source = push_intra_refresh(&s, "ir");
    let t0 = Instant::now();
    let (mut max_seconds, mut max_bytes, mut video, mut gop) = (0f64, 0u64, None, None);
    while t0.elapsed() < Duration::from_millis(2500) {
        if let Some((v, g)) = poll(&s, "ir").await {
            max_seconds = max_seconds.max(g["seconds"].as_f64().unwrap_or(0.0));
            max_bytes = max_bytes.max(g["bytes"].as_u64().unwrap_or(0));
            video = Some(v);
            gop = Some(g);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (video, gop) = (video.expect("the stream"), gop.expect("its cache"));
    eprintln!("video track: {video}\nGOP cache: {gop}");
    assert_eq!(gop["max_seconds"], 1.5);
    assert!(max_seconds <= 1.5, "the cache held {max_seconds} s");
    assert!(max_bytes <= 1 << 20, "the cache held {max_bytes} bytes");
    assert!(max_seconds > 0.5, "it held something: {max_seconds} s");
    assert_eq!(
        gop["starts_at"], "keyframe",
        "the re-encoder's IDRs lead it"
    );
    let reason = video["transcode_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("no IDR within the GOP cache bound (1.5 s"),
        "{video}"
    );
    let starts = video["start_points"].as_str().unwrap_or_default();
    assert!(starts.starts_with("recovery points only"), "{video}");

    // A viewer joining now (the IDR is 2.5 s old) starts with an IDR.
    let r = whep_receive(
        &format!("http://{}/whep/ir", s.http_addr),
        WhepOptions {
            seconds: 1.0,
            stop: StopWhen::FirstKeyframe,
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    let first = aus.first().expect("video");
    assert!(first.is_keyframe(), "first AU: {:?}", first.nal_types);
    // The re-encoder's (Constrained Baseline) IDR. Its parameter sets go in a STAP-A before
    // it, which webrtc-rs drops here as the session's very first packet (with and without
    // --no-direct-send; not when the first packet is a pass-through recovery point, below):
    // the profile is read from the API instead. Chromium decodes it (tests/browser.rs).
    assert_eq!(video["profile_level_id"], "42c00d", "{video}");
    let waited = first.first_at.unwrap().duration_since(r.posted_at);
    eprintln!("first IDR {waited:?} after the POST");
    let _ = source.await;
}

/// Without the re-encoder, a viewer that joins gets the GOP since the latest recovery point:
/// its first access unit is that recovery point (SEI + parameter sets, no IDR), and OpenH264
/// decodes a picture from every access unit with no error but the concealed IDR it never got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_joining_an_intra_refresh_source_decodes_from_the_recovery_point() {
    let s = serve("1.5", Transcode::Off).await;
    let source = push_intra_refresh(&s, "ir");
    // Past the IDR's GOP (cut to the recovery point at 1 s when it outgrew 1.5 s).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (video, gop) = poll(&s, "ir").await.expect("the stream");
    eprintln!("video track: {video}\nGOP cache: {gop}");
    assert_eq!(gop["starts_at"], "recovery_point");
    assert!(video["transcoded_to"].is_null(), "{video}");
    assert!(
        video["start_points"]
            .as_str()
            .unwrap_or_default()
            .contains("--video-transcode auto"),
        "{video}"
    );
    let r = whep_receive(
        &format!("http://{}/whep/ir", s.http_addr),
        WhepOptions {
            audio: false,
            seconds: 1.2,
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 20, "{} access units", aus.len());
    let first = &aus[0];
    assert!(
        first.nal_types.starts_with(&[nal::SPS, nal::PPS, 6]) && !first.is_keyframe(),
        "first AU: {:?}",
        first.nal_types
    );
    let sei = &first.nals[2];
    let point = tsbridge::codec::h264::recovery_point(sei).expect("a recovery point");
    assert_eq!(point.frames, 18);

    let mut d = H264Decoder::new(true).expect("OpenH264");
    let (mut pictures, mut states) = (0, Vec::new());
    for au in aus.iter().filter(|au| au.complete) {
        let (state, picture) = d.decode(&au.annex_b());
        states.push(state);
        pictures += usize::from(picture.is_some());
    }
    eprintln!("{} access units, {pictures} pictures", aus.len());
    // OpenH264 holds one picture back (no flush here).
    assert!(pictures + 1 >= states.len(), "{pictures} pictures");
    assert!(!states[0].fails(DecodeState::REF_LOST | DecodeState::CONCEALED));
    assert!(
        states[1..].iter().all(|s| !s.fails(DecodeState::CONCEALED)),
        "{states:?}"
    );
    let _ = source.await;
}

/// H.265 open GOPs (testdata/hevc_open_gop.ts: a CRA every 30 frames, a RASL picture after
/// each, which refers to the GOP before): a viewer that joins after the first CRA starts at
/// it and does not get the RASL picture after it, which it could not decode; the RASL
/// pictures of later CRAs, whose references it has, it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_starting_at_a_cra_does_not_get_its_rasl_picture() {
    let mut args = ServeArgs::loopback();
    args.replays.push(tsbridge::config::Named {
        name: "open".into(),
        value: common::testdata("hevc_open_gop.ts"),
    });
    let s = Server::start(args).await.expect("server starts");
    // Past the CRA at 1 s (frame 29), before the next.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, gop) = poll(&s, "open").await.expect("the stream");
    eprintln!("GOP cache: {gop}");
    let r = whep_receive(
        &format!("http://{}/whep/open", s.http_addr),
        WhepOptions {
            h265: true,
            audio: false,
            seconds: 2.5,
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = common::h265::hevc_access_units(&r.video);
    let kinds: Vec<u8> = aus
        .iter()
        .map(|au| au.types().into_iter().find(|&t| t < 32).unwrap_or(255))
        .collect();
    eprintln!("first picture types: {:?}", &kinds[..kinds.len().min(40)]);
    let cra = 21;
    assert_eq!(kinds.first(), Some(&cra), "it starts at the CRA: {kinds:?}");
    assert!(!matches!(kinds[1], 8 | 9), "no RASL after it: {kinds:?}");
    // A later CRA's RASL picture comes with it.
    let later = kinds
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, &t)| t == cra || t == 20)
        .map(|(i, _)| i)
        .expect("a later IRAP picture");
    if kinds[later] == cra {
        assert!(matches!(kinds[later + 1], 8 | 9), "{kinds:?}");
    }
}
