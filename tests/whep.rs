//! WHEP end to end: the server on 127.0.0.1:0, a WHEP client on the `webrtc` crate (an
//! independent WebRTC stack), real MPEG-TS made by ffmpeg, RTP checked packet by packet.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::h264::nal;
use common::{
    h264_access_units, live_start, request, sdp_codecs, ts_steps, whep_receive, StopWhen,
    WhepOptions,
};
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

async fn serve(replays: &[(&str, &str)], tweak: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut args = ServeArgs::loopback();
    for (name, file) in replays {
        args.replays.push(Named {
            name: name.to_string(),
            value: common::testdata(file),
        });
    }
    tweak(&mut args);
    Server::start(args).await.expect("server starts")
}

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

async fn stream_json(s: &Server, name: &str) -> serde_json::Value {
    common::stream_json(s.http_addr, name).await
}

/// The RTP of a viewer of an H.264 + Opus file is what RFC 6184/7587 say, from the first IDR on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_gets_idr_first_then_slices_with_exact_timestamps() {
    let s = serve(&[("cam", "h264_opus.ts")], |_| {}).await;
    let r = whep_receive(
        &url(&s, "/whep/cam"),
        WhepOptions {
            seconds: 4.0,
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let location = r.location.clone().expect("Location");
    assert!(
        location.contains("/whep/cam/") && location.len() > 40,
        "{location}"
    );
    assert!(r.response.header("etag").is_some());
    assert_eq!(r.delete_status, Some(200));

    // The source is High profile; this offer (Chromium's) has none: the closest, Main, is used.
    assert!(
        r.video_fmtp
            .as_deref()
            .unwrap_or("")
            .contains("profile-level-id=4d001f"),
        "{:?}",
        r.video_fmtp
    );

    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 60, "only {} access units", aus.len());
    let first = &aus[0];
    assert!(
        first.nal_types.starts_with(&[nal::SPS, nal::PPS]) && first.is_keyframe(),
        "first AU: {:?}",
        first.nal_types
    );
    for au in &aus[1..aus.len() - 1] {
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
    // The cached GOP (at most a 1 s GOP) comes first, stamped by the sending pace; then live
    // frames at 30 fps, 3000 ticks apart.
    let live = live_start(&aus, 3000, 30);
    assert!(aus.len() - live >= 30, "{} live frames", aus.len() - live);

    assert!(r.audio.len() >= 100, "only {} Opus packets", r.audio.len());
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

/// A viewer may ask before the source exists: the POST waits, then plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_before_source_waits_then_plays() {
    let s = serve(&[], |_| {}).await;
    let whep_url = url(&s, "/whep/late");
    let viewer = tokio::spawn(async move {
        whep_receive(
            &whep_url,
            WhepOptions {
                seconds: 8.0,
                stop: StopWhen::VideoAus(20),
                ..Default::default()
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Waiting creates no stream: the name only has its waiting count.
    let waiting = request("GET", &url(&s, "/streams/late"), &[], b"")
        .await
        .unwrap();
    assert_eq!(waiting.status, 404, "{}", waiting.text());
    assert!(
        waiting.text().contains("WHEP requests waiting for it: 1"),
        "{}",
        waiting.text()
    );

    let ingest = url(&s, "/ingest/late");
    let pusher = tokio::spawn(async move {
        tsbridge::ingest::replay::push(&common::testdata("h264_opus.ts"), &ingest, false).await
    });
    let r = viewer.await.unwrap().expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    assert!(aus.len() >= 20, "{} AUs", aus.len());
    assert!(aus[0].is_keyframe());
    pusher.abort();
}

/// Nobody ever sends the stream: a clear 404 once the wait is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_stream_is_404_after_the_wait() {
    let s = serve(&[], |a| a.whep_wait = Duration::from_millis(700)).await;
    let t = Instant::now();
    let r = whep_receive(&url(&s, "/whep/nobody"), WhepOptions::default())
        .await
        .expect("WHEP");
    assert_eq!(r.status, 404);
    assert!(t.elapsed() >= Duration::from_millis(700));
    let body = r.error_body.unwrap_or_default();
    assert!(body.contains("no source"), "{body}");
}

/// A client that gives up while waiting is no longer counted as waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_client_that_disconnects_is_forgotten() {
    let s = serve(&[], |a| a.whep_wait = Duration::from_secs(30)).await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let gone = url(&s, "/whep/gone");
    let gone_api = url(&s, "/streams/gone");
    let post = request(
        "POST",
        &gone,
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    );
    // The request times out on our side after 500 ms: the connection is dropped.
    let _ = tokio::time::timeout(Duration::from_millis(500), post).await;
    let mut waiting = String::new();
    for _ in 0..50 {
        let r = request("GET", &gone_api, &[], b"").await.unwrap();
        assert_eq!(r.status, 404, "waiting creates no stream: {}", r.text());
        waiting = r.text();
        if !waiting.contains("waiting") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !waiting.contains("waiting"),
        "the abandoned POST is still waiting: {waiting}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_specific_statuses() {
    let s = serve(&[("cam", "h264_opus.ts")], |a| a.max_body = 16 << 10).await;
    let sdp = [("Content-Type", "application/sdp")];
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();

    let r = request(
        "POST",
        &url(&s, "/whep/cam"),
        &[("Content-Type", "text/plain")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(r.text().contains("application/sdp"));

    let r = request("POST", &url(&s, "/whep/cam"), &sdp, b"this is not SDP")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    let r = request("POST", &url(&s, "/whep/bad%20name"), &sdp, offer.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    let huge = vec![b'a'; 64 << 10];
    let r = request("POST", &url(&s, "/whep/cam"), &sdp, &huge)
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());

    let r = request("DELETE", &url(&s, "/whep/cam/0123456789abcdef"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let frag = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let r = request(
        "PATCH",
        &url(&s, "/whep/cam/0123456789abcdef"),
        &frag,
        b"a=end-of-candidates\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);

    let r = request("GET", &url(&s, "/streams/nope"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    let r = request("OPTIONS", &url(&s, "/whep/cam"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert!(r
        .header("access-control-expose-headers")
        .unwrap_or("")
        .contains("Location"));
    assert_eq!(r.header("accept-post"), Some("application/sdp"));
}

/// A video-only stream answers exactly its tracks: the offered audio m-line is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_holds_exactly_the_tracks_that_exist() {
    let s = serve(&[("v", "h264_only.ts")], |_| {}).await;
    let r = whep_receive(
        &url(&s, "/whep/v"),
        WhepOptions {
            seconds: 3.0,
            stop: StopWhen::VideoAus(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let codecs = sdp_codecs(&r.answer_sdp);
    assert!(
        !codecs.iter().any(|c| c.media == "audio"
            && c.port != 0
            && c.direction.as_deref() == Some("sendonly")),
        "audio must not be sent: {}",
        r.answer_sdp
    );
    assert!(r.audio.is_empty());
    // Constrained Baseline source, offered as such: the exact profile is chosen.
    assert!(
        r.video_fmtp.as_deref().unwrap_or("").contains("42e01f"),
        "{:?}",
        r.video_fmtp
    );
    assert!(h264_access_units(&r.video).len() >= 10);
}

/// AAC is listed with the reason it does not play; the video plays anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aac_track_is_listed_as_unsupported_and_video_plays() {
    // With the transcoder off (tests/transcode.rs covers it on).
    let s = serve(&[("aac", "h264_aac.ts")], |a| {
        a.audio_transcode = tsbridge::config::Transcode::Off
    })
    .await;
    let r = whep_receive(
        &url(&s, "/whep/aac"),
        WhepOptions {
            seconds: 3.0,
            stop: StopWhen::VideoAus(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(h264_access_units(&r.video).len() >= 10);
    let j = stream_json(&s, "aac").await;
    let tracks = j["tracks"].as_array().unwrap();
    let aac = tracks
        .iter()
        .find(|t| t["stream_type"] == 0x0f)
        .expect("AAC track listed");
    assert_eq!(aac["playable"], false);
    assert!(aac["reason"].as_str().unwrap().contains("AAC"), "{aac}");
    let h264 = tracks.iter().find(|t| t["stream_type"] == 0x1b).unwrap();
    assert_eq!(h264["profile_level_id"], "64001e");
    assert_eq!(h264["width"], 640);
}

/// DELETE frees the session; a second DELETE is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_frees_the_session() {
    let s = serve(&[("cam", "h264_opus.ts")], |_| {}).await;
    let r = whep_receive(
        &url(&s, "/whep/cam"),
        WhepOptions {
            seconds: 2.0,
            stop: StopWhen::VideoAus(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.delete_status, Some(200));
    assert_eq!(s.app.engine.session_count().await, 0);
    assert_eq!(stream_json(&s, "cam").await["viewers"], 0);
    let again = request("DELETE", r.location.as_deref().unwrap(), &[], b"")
        .await
        .unwrap();
    assert_eq!(again.status, 404);
}

/// A viewer that vanishes without DELETE (its process dies: no DTLS close, no more STUN) is
/// freed by the ICE timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_viewer_is_freed_by_ice_timeout() {
    let s = serve(&[("cam", "h264_opus.ts")], |a| {
        a.ice_timeout = Duration::from_secs(2)
    })
    .await;
    let whep_url = url(&s, "/whep/cam");
    // The viewer lives in its own runtime; dropping that runtime kills it mid-session.
    let got_video = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ok = rt.block_on(async {
            let opts = WhepOptions {
                delete: false,
                ..Default::default()
            };
            let session = common::WhepSession::start(&whep_url, &opts).await.unwrap();
            let ok = session
                .wait_until(Duration::from_secs(5), |c| c.video.len() > 20)
                .await;
            std::mem::forget(session);
            ok
        });
        drop(rt);
        ok
    })
    .join()
    .unwrap();
    assert!(got_video);
    assert_eq!(s.app.engine.session_count().await, 1);
    let t = Instant::now();
    while s.app.engine.session_count().await > 0 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.app.engine.session_count().await, 0, "session not freed");
    assert_eq!(stream_json(&s, "cam").await["viewers"], 0);
    eprintln!("vanished viewer freed after {:?}", t.elapsed());
}

/// `--ice-host` addresses are what the answer announces (NAT, containers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_host_addresses_are_announced() {
    let s = serve(&[("cam", "h264_opus.ts")], |a| {
        a.ice_hosts = vec!["203.0.113.7".into(), "localhost".into()]
    })
    .await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let r = request(
        "POST",
        &url(&s, "/whep/cam"),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let port = s.udp_addr.port();
    let answer = r.text();
    assert!(
        answer.contains(&format!("203.0.113.7 {port} typ host")),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("127.0.0.1 {port} typ host")),
        "{answer}"
    );
    let loc = r.header("location").unwrap().to_string();
    let _ = request("DELETE", &url(&s, &loc), &[], b"").await;
}

/// PATCH adds trickled candidates (204) and answers an ICE restart with new credentials;
/// `If-Match` is checked against the session's ETag, and required for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_trickles_candidates_and_restarts_ice() {
    let s = serve(&[("cam", "h264_opus.ts")], |_| {}).await;
    let session = common::WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert!(
        session
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 10)
            .await
    );
    let loc = session.location.clone().unwrap();
    let frag = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let trickle = "a=mid:0\r\na=candidate:2 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
    let r = request("PATCH", &loc, &frag, trickle.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());

    let r = request("PATCH", &loc, &frag, b"a=candidate:garbage\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());

    // If-Match (WHEP/WHIP): another ETag is 412; an ICE restart without one is 428.
    let etag = session.response.header("etag").unwrap().to_string();
    let wrong = [frag[0], ("If-Match", "\"not-the-etag\"")];
    let r = request("PATCH", &loc, &wrong, trickle.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 412, "{}", r.text());
    let right = [frag[0], ("If-Match", etag.as_str())];
    let r = request("PATCH", &loc, &right, trickle.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let restart = "a=ice-ufrag:newufrag\r\na=ice-pwd:newpasswordnewpassword12\r\n";
    let r = request("PATCH", &loc, &frag, restart.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 428, "{}", r.text());
    let any = [frag[0], ("If-Match", "*")];
    let r = request("PATCH", &loc, &any, restart.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/trickle-ice-sdpfrag")
    );
    let body = r.text();
    assert!(
        body.contains("a=ice-ufrag:") && body.contains("a=ice-pwd:"),
        "{body}"
    );
    assert!(body.contains("typ host"), "{body}");
    let new_etag = r.header("etag").expect("a new ETag").to_string();
    assert_ne!(new_etag, etag, "the ETag changes with the ICE credentials");
    // The old ETag no longer matches; the new one does.
    let r = request("PATCH", &loc, &right, trickle.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 412, "{}", r.text());
    let r = request(
        "PATCH",
        &loc,
        &[frag[0], ("If-Match", &new_etag)],
        trickle.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
}

/// A server replaying `long_gop.ts` (5 s GOP), 2.5 s into its first GOP.
async fn long_gop_half_way(tweak: impl FnOnce(&mut ServeArgs)) -> Server {
    let s = serve(&[("long", "long_gop.ts")], tweak).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s
}

/// Watch /whep/long for `seconds`: the answer, and the video's access units, an IDR first.
async fn view_long(s: &Server, seconds: f64) -> (common::WhepResult, Vec<common::Au>) {
    let r = whep_receive(
        &url(s, "/whep/long"),
        WhepOptions {
            seconds,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let aus = h264_access_units(&r.video);
    assert!(aus[0].is_keyframe(), "first AU: {:?}", aus[0].nal_types);
    (r, aus)
}

/// Instant start: a viewer joining mid-GOP of a 5 s-GOP source gets the cached GOP at once,
/// IDR (with SPS/PPS) first, its timestamps fast-forwarded to end at live, then live frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_starts_at_cached_idr_without_waiting_for_the_next() {
    let s = long_gop_half_way(|_| {}).await;
    let j = stream_json(&s, "long").await;
    assert!(j["gop_cache"]["frames"].as_u64().unwrap() >= 60, "{j}");
    let (r, aus) = view_long(&s, 2.0).await;
    assert_eq!(
        &aus[0].nal_types[..2],
        &[nal::SPS, nal::PPS][..],
        "{:?}",
        aus[0].nal_types
    );
    let first_video = r.first_video_at().unwrap();
    let connected = r.connected_at.unwrap();
    assert!(
        first_video.duration_since(connected) < Duration::from_millis(500),
        "first frame {:?} after connect",
        first_video.duration_since(connected)
    );
    // ~75 cached frames, then ~60 live ones; every frame complete and in order.
    assert!(aus.len() >= 100, "{} AUs", aus.len());
    let steps = ts_steps(&aus);
    // The backlog: stamped by the sending pace, at least 4x the stream's rate, so in at most a
    // quarter of its real time (and a tick a frame); then live frames 3000 apart. This client
    // (webrtc-rs) can lose a few packets of the backlog burst (it has no RTX; the server does
    // retransmit on NACK, and Chromium loses none), so gaps of whole frames are allowed, never
    // a step back.
    assert!(steps.iter().all(|&d| d > 0), "{steps:?}");
    let backlog = steps.iter().take_while(|&&d| d < 3000).count();
    assert!(backlog >= 40, "backlog of {backlog} frames: {steps:?}");
    let stamped: u32 = steps[..backlog].iter().sum();
    assert!(
        stamped as usize <= backlog * (3000 / 4 + 1),
        "backlog stamped over {stamped} ticks: {steps:?}"
    );
    assert!(
        steps[backlog + 1..].iter().all(|&d| d % 3000 == 0),
        "live after backlog: {steps:?}"
    );
    let complete = aus.iter().filter(|a| a.complete).count();
    assert!(
        complete * 10 >= aus.len() * 9,
        "{complete} of {} complete",
        aus.len()
    );
    // Audio is live: it starts right away too.
    assert!(r.first_audio_at().unwrap().duration_since(connected) < Duration::from_millis(500));
}

/// `--backlog-rate` paces the instant-start burst (for viewers behind slower links): at
/// 2 Mbit/s, the cached GOP's bytes take their time to arrive, their timestamps follow the
/// sending (so the browser's jitter estimate sees no spread), and the viewer still gets the
/// IDR first and goes on with live frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_rate_paces_the_start_burst() {
    const RATE: f64 = 2e6 / 8.0; // bytes per second (the stream's 400 kbit/s x 4 is less)
    let s = long_gop_half_way(|a| a.backlog_rate = 2.0).await;
    let (r, aus) = view_long(&s, 2.5).await;
    let steps = ts_steps(&aus);
    assert!(steps.iter().all(|&d| d > 0 && d < 90_000), "{steps:?}");
    // Live frames are 3000 ticks apart; the backlog's steps follow its sending.
    let backlog = 1 + steps.iter().rposition(|d| d % 3000 != 0).unwrap_or(0);
    assert!(backlog >= 40, "a backlog of {backlog} frames: {steps:?}");
    assert!(
        aus.len() - backlog >= 20,
        "{} live frames",
        aus.len() - backlog
    );
    let stamps: Vec<u32> = aus[..backlog].iter().map(|a| a.ts).collect();
    let packets: Vec<_> = r.video.iter().filter(|p| stamps.contains(&p.ts)).collect();
    let bytes: usize = packets.iter().map(|p| p.payload.len()).sum();
    let biggest = stamps
        .iter()
        .map(|ts| {
            let frame = packets.iter().filter(|p| p.ts == *ts);
            frame.map(|p| p.payload.len()).sum::<usize>()
        })
        .max()
        .unwrap();
    // Frames go whole: all but the largest one are paced.
    let paced = Duration::from_secs_f64((bytes - biggest) as f64 / RATE);
    let first = packets.iter().map(|p| p.at).min().unwrap();
    let last = packets.iter().map(|p| p.at).max().unwrap();
    assert!(
        last - first >= paced.mul_f64(0.8),
        "{bytes} bytes of backlog in {:?}; paced, at least {paced:?}",
        last - first
    );
    let stamped = Duration::from_secs_f64(f64::from(stamps[backlog - 1] - stamps[0]) / 90e3);
    let most = Duration::from_secs_f64(bytes as f64 / RATE);
    assert!(
        stamped >= paced.mul_f64(0.8) && stamped <= most.mul_f64(1.1),
        "backlog stamped over {stamped:?}, sent over {paced:?} to {most:?}"
    );
}

/// With several media threads, sessions are spread over them and every viewer plays: datagrams
/// that the kernel hands to another thread's socket reach their session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_spread_over_media_threads_all_play() {
    let s = serve(&[("cam", "h264_opus.ts")], |a| a.media_threads = 4).await;
    assert_eq!(s.app.engine.threads(), 4);
    let viewers: Vec<_> = (0..6)
        .map(|_| {
            let u = url(&s, "/whep/cam");
            tokio::spawn(async move {
                let opts = WhepOptions {
                    seconds: 2.5,
                    ..Default::default()
                };
                whep_receive(&u, opts).await.expect("WHEP")
            })
        })
        .collect();
    for v in viewers {
        let r = v.await.unwrap();
        assert_eq!(r.status, 201, "{:?}", r.error_body);
        let aus = h264_access_units(&r.video);
        assert!(aus.len() >= 30, "only {} access units", aus.len());
        assert!(aus[0].is_keyframe(), "first AU: {:?}", aus[0].nal_types);
        assert!(!r.audio.is_empty(), "no audio");
        assert_eq!(r.delete_status, Some(200));
    }
    assert_eq!(s.app.engine.session_count().await, 0);
}

/// A viewer on a bad link (the load tool's lossy viewer throws away half of its RTP) gets
/// retransmissions for its NACKs, is moved on to the next keyframe, and both are counted; the
/// viewers beside it lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_viewer_skips_to_keyframes_and_others_lose_nothing() {
    let s = serve(&[("cam", "h264_opus.ts")], |_| {}).await;
    let report = load_with_one_lossy_viewer(&s, 4, 50.0).await;
    assert_eq!(report.connected, 4, "{}", report.text());
    assert_eq!(report.with_keyframe, 4, "{}", report.text());
    assert!(report.loss_pct < 0.5, "{}", report.text());
    assert!(report.lossy_loss_pct.unwrap() > 5.0, "{}", report.text());
    let skips = s
        .app
        .engine
        .metrics
        .slow_viewer_skips
        .load(Ordering::Relaxed);
    assert!(skips >= 1, "no skip counted: {}", report.text());
    let r = request("GET", &url(&s, "/metrics"), &[], b"")
        .await
        .unwrap();
    let line = r
        .text()
        .lines()
        .find(|l| l.starts_with("tsbridge_stream_slow_viewer_skips_total{stream=\"cam\"}"))
        .map(str::to_string);
    assert!(line.is_some_and(|l| !l.ends_with(" 0")), "{}", r.text());
    let m = &s.app.engine.metrics;
    let (nacks, rtx) = (
        m.nacks_received.load(Ordering::Relaxed),
        m.retransmissions.load(Ordering::Relaxed),
    );
    assert!(nacks > 0 && rtx > 0, "NACKs {nacks}, retransmissions {rtx}");
}

/// Each SRTP profile a viewer may negotiate plays through to an independent WebRTC stack
/// (webrtc-rs): both AES-GCM profiles by the direct path (tsbridge's own RTP and SRTP), and
/// AES-CM + HMAC-SHA1 through str0m alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_srtp_profile_plays_and_gcm_goes_the_direct_way() {
    use common::whep::SrtpProtectionProfile as P;
    let s = serve(&[("cam", "h264_opus.ts")], |_| {}).await;
    let direct = || s.app.engine.metrics.direct_packets.load(Ordering::Relaxed);
    for (profile, is_direct) in [
        (P::Srtp_Aead_Aes_128_Gcm, true),
        (P::Srtp_Aead_Aes_256_Gcm, true),
        (P::Srtp_Aes128_Cm_Hmac_Sha1_80, false),
    ] {
        let before = direct();
        let r = whep_receive(
            &url(&s, "/whep/cam"),
            WhepOptions {
                seconds: 3.0,
                srtp_profiles: vec![profile],
                ..Default::default()
            },
        )
        .await
        .expect("WHEP");
        assert_eq!(r.status, 201, "{profile:?}: {:?}", r.error_body);
        let aus = h264_access_units(&r.video);
        assert!(
            aus.len() >= 45,
            "{profile:?}: only {} access units",
            aus.len()
        );
        assert!(aus[0].is_keyframe(), "{profile:?}: {:?}", aus[0].nal_types);
        let broken = aus[..aus.len() - 1]
            .iter()
            .filter(|au| !au.complete)
            .count();
        assert_eq!(broken, 0, "{profile:?}: incomplete access units");
        assert!(!r.audio.is_empty(), "{profile:?}: no audio");
        let sent = direct() - before;
        assert_eq!(
            sent > 50,
            is_direct,
            "{profile:?}: {sent} packets sent directly"
        );
    }
}

/// `--no-direct-send` puts every packet through str0m (for comparison and troubleshooting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_direct_send_sends_everything_through_str0m() {
    let s = serve(&[("cam", "h264_opus.ts")], |c| c.no_direct_send = true).await;
    let r = whep_receive(&url(&s, "/whep/cam"), WhepOptions::default())
        .await
        .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(h264_access_units(&r.video).len() >= 45);
    let m = &s.app.engine.metrics;
    assert_eq!(m.direct_packets.load(Ordering::Relaxed), 0);
}

/// The figures of the load tool's JSON report these tests look at.
#[derive(serde::Deserialize)]
struct LoadReport {
    connected: usize,
    with_keyframe: usize,
    loss_pct: f64,
    lossy_loss_pct: Option<f64>,
    lossy_video_loss_pct: Option<f64>,
    lossy_video_thrown: Option<u64>,
    /// The whole report, for failure messages.
    #[serde(skip)]
    json: String,
}

impl LoadReport {
    fn text(&self) -> &str {
        &self.json
    }
}

/// `viewers` load-tool viewers of /whep/cam, the first of which throws away `drop` percent of
/// the RTP it receives (and decrypts everything, retransmissions included, through str0m).
/// The load tool is its own binary (src/bin/tsbridge-loadtest), run here as a client would.
async fn load_with_one_lossy_viewer(s: &Server, viewers: usize, drop: f64) -> LoadReport {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsbridge-loadtest"))
        .args(["--url", &url(s, "/whep/cam")])
        .args(["--viewers", &viewers.to_string()])
        .args([
            "--seconds",
            "4",
            "--ramp",
            "50",
            "--connect-timeout",
            "10",
            "--tasks",
            "1",
        ])
        .args([
            "--quiet",
            "--lossy",
            "1",
            "--drop",
            &drop.to_string(),
            "--json",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("load tool");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "load tool: {}: {stderr}", out.status);
    let json = String::from_utf8(out.stdout).expect("UTF-8 report");
    let mut report: LoadReport =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json} {stderr}"));
    report.json = json;
    report
}

/// Video goes the direct way (tsbridge writes and encrypts it; see src/webrtc/direct.rs) and
/// its retransmissions repair a lossy link: with 5 % of its packets lost, a viewer ends up
/// missing far fewer video packets once its NACKs are answered. The viewer is the load tool's str0m, a
/// separate SRTP implementation that decrypts every packet, retransmissions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_retransmissions_repair_a_lossy_viewer() {
    let s = serve(&[("cam", "h264_opus.ts")], |_| {}).await;
    let report = load_with_one_lossy_viewer(&s, 2, 5.0).await;
    assert_eq!(report.with_keyframe, 2, "{}", report.text());
    let lossy = report.lossy_video_loss_pct.unwrap();
    assert!(lossy < 1.5, "after retransmissions: {}", report.text());
    let m = &s.app.engine.metrics;
    let direct = m.direct_packets.load(Ordering::Relaxed);
    let rtx = m.retransmissions.load(Ordering::Relaxed);
    assert!(direct > 100, "{direct} packets went the direct way");
    // Every video packet thrown away is NACKed once a later one comes, so nearly all are
    // resent (a resend thrown away is asked for again).
    let thrown = report.lossy_video_thrown.unwrap();
    assert!(
        2 * rtx >= thrown && thrown > 0,
        "{rtx} retransmissions: {}",
        report.text()
    );
    assert_eq!(m.slow_viewer_skips.load(Ordering::Relaxed), 0);
}

/// A viewer that offers abs-capture-time and playout-delay gets them on each frame's first
/// packet: the frame's ingest time (a live frame reaches the viewer within 50 ms of it, on
/// loopback) and `--playout-delay`; the stream's API and metrics give the latency the bridge
/// adds, which is well below a frame interval (the PES of a frame goes at its last packet,
/// not when the next one starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_carry_their_ingest_time_and_the_added_latency_is_measured() {
    let s = serve(&[("cam", "h264_opus.ts")], |a| {
        a.playout_delay = "0,100".parse().ok();
    })
    .await;
    let r = whep_receive(
        &url(&s, "/whep/cam"),
        WhepOptions {
            seconds: 4.0,
            header_extensions: vec![common::ABS_CAPTURE_TIME, common::PLAYOUT_DELAY],
            ..Default::default()
        },
    )
    .await
    .expect("WHEP");
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let capture = common::extmap_id(&r.answer_sdp, common::ABS_CAPTURE_TIME).expect("answered");
    let delay = common::extmap_id(&r.answer_sdp, common::PLAYOUT_DELAY).expect("answered");
    for (kind, packets) in [("video", &r.video), ("audio", &r.audio)] {
        let times = common::capture_times(packets, capture);
        assert!(times.len() > 20, "{kind}: {} stamped", times.len());
        // Past the start-up burst (the cached GOP, ingested earlier): live frames.
        let live = &times[times.len() / 2..];
        for &(captured, received) in live {
            let ms = (received as i64 - captured as i64) as f64 / 1000.0;
            assert!(
                (-2.0..50.0).contains(&ms),
                "{kind}: received {ms} ms after ingest"
            );
        }
    }
    let firsts = r
        .video
        .iter()
        .filter(|p| p.exts.iter().any(|e| e.0 == delay));
    let delays: Vec<&Vec<u8>> = firsts
        .flat_map(|p| p.exts.iter().filter(|e| e.0 == delay).map(|e| &e.1))
        .collect();
    assert!(!delays.is_empty());
    assert!(
        delays.iter().all(|d| d[..] == [0, 0, 10]),
        "0 and 10 (x 10 ms)"
    );

    let j = stream_json(&s, "cam").await;
    let l = &j["latency"];
    eprintln!("latency: {l}");
    assert!(l["samples"].as_u64().unwrap() > 50, "{l}");
    let (p50, p99) = (l["added_ms"]["p50"].as_f64(), l["added_ms"]["p99"].as_f64());
    // One frame interval of this 25 fps file is 40 ms.
    assert!(p50.unwrap() < 15.0, "{l}");
    assert!(p99.unwrap() < 100.0, "{l}");
    let metrics = request("GET", &url(&s, "/metrics"), &[], b"")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains(
            "tsbridge_latency_seconds_bucket{stream=\"cam\",from=\"arrival\",le=\"+Inf\"}"
        ),
        "{metrics}"
    );
}
