//! AAC and MP2 sources play with sound: the server transcodes to Opus once per stream; the
//! independent WebRTC client receives Opus that decodes to the source's tone.

mod common;

use std::time::Duration;

use common::tone::{dominant_frequency, rms};
use common::{whep_receive, StopWhen, WhepOptions};
use tsbridge::config::{Named, ServeArgs, Transcode};
use tsbridge::server::Server;

async fn serve(name: &str, file: &str, tweak: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut args = ServeArgs::loopback();
    args.replays.push(Named {
        name: name.into(),
        value: common::testdata(file),
    });
    tweak(&mut args);
    Server::start(args).await.expect("server starts")
}

/// Receive ~3 s of a stream and check its Opus: 960 ticks per packet, decodes (with a decoder
/// of its own) to a loud tone at `tone` Hz.
async fn plays_tone(file: &str, tone: f32) {
    let s = serve("a", file, |_| {}).await;
    let r = receive_audio(&format!("http://{}/whep/a", s.http_addr)).await;
    check_tone(&r, tone);
    let j = common::stream_json(s.http_addr, "a").await;
    let audio = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "audio")
        .unwrap_or_else(|| panic!("an audio track in {j}"));
    assert_eq!(audio["transcoded_to"], "Opus", "{audio}");
    assert!(audio["transcoder_cpu_pct"].as_f64().unwrap() > 0.0);
}

/// A viewer of `url` until 150 Opus packets came (at most 6 s).
async fn receive_audio(url: &str) -> common::WhepResult {
    let opts = WhepOptions {
        seconds: 6.0,
        stop: StopWhen::AudioPackets(150),
        ..Default::default()
    };
    whep_receive(url, opts).await.unwrap()
}

/// The viewing got ~3 s of Opus, 960 ticks per packet, that decodes (with a decoder of its
/// own) to a loud tone at `tone` Hz, and video.
fn check_tone(r: &common::WhepResult, tone: f32) {
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    assert!(
        r.audio.len() >= 150,
        "{} Opus packets, {} video, audio {:?}, answer {}",
        r.audio.len(),
        r.video.len(),
        r.audio_mime,
        r.answer_sdp
    );
    assert!(r.video.len() > 50, "video plays too");
    // 960 ticks per 20 ms packet; at the replay's loop point the shorter track may have a
    // gap, never an overlap.
    let steps: Vec<u32> = r
        .audio
        .windows(2)
        .map(|w| w[1].ts.wrapping_sub(w[0].ts))
        .collect();
    assert!(steps.iter().all(|&d| d >= 960), "{steps:?}");
    assert!(
        steps.iter().filter(|&&d| d == 960).count() >= steps.len() - 3,
        "{steps:?}"
    );
    for w in r.audio.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
    }
    let mut decoder = mousiki::Decoder::new(48_000, mousiki::Channels::Stereo).unwrap();
    let mut pcm = vec![0.0f32; 5760 * 2];
    let mut left = Vec::new();
    for p in &r.audio {
        let n = decoder
            .decode_float(&p.payload, &mut pcm, false)
            .expect("Opus decodes");
        left.extend(pcm[..n * 2].iter().step_by(2));
    }
    let x = &left[9600..]; // skip the first 200 ms
    let rms = rms(x);
    assert!(rms > 0.05, "audible: rms {rms}");
    let f = dominant_frequency(x, 48_000.0);
    assert!(
        (f - tone).abs() < tone * 0.02,
        "dominant {f} Hz, want {tone} Hz"
    );
}

/// Issue 21: a TS with two AAC tracks (eng 440 Hz, spa 880 Hz). Both are listed with their
/// language as playable (the second is no longer "not playable"); viewers get the first by
/// default and the second with `?audio=1` or `?lang=spa`, and two viewers of the second share
/// one transcoder (the track's stream has both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_picks_the_audio_track_by_index_or_language() {
    let s = serve("a", "h264_aac_eng_spa.ts", |_| {}).await;
    let url = format!("http://{}/whep/a", s.http_addr);
    check_tone(&receive_audio(&url).await, 440.0);

    // Two viewers of the Spanish track at once, one by index, one by language.
    let opts = WhepOptions {
        seconds: 6.0,
        stop: StopWhen::AudioPackets(150),
        ..Default::default()
    };
    let (index_url, lang_url) = (format!("{url}?audio=1"), format!("{url}?lang=SPA"));
    let by_index = common::WhepSession::start(&index_url, &opts);
    let by_lang = common::WhepSession::start(&lang_url, &opts);
    let (by_index, by_lang) = tokio::join!(by_index, by_lang);
    let (by_index, by_lang) = (by_index.unwrap(), by_lang.unwrap());
    tokio::join!(by_index.wait_stop(), by_lang.wait_stop());
    let j = common::stream_json(s.http_addr, "a").await;
    let (by_index, by_lang) = tokio::join!(by_index.finish(), by_lang.finish());
    check_tone(&by_index, 880.0);
    check_tone(&by_lang, 880.0);

    let audio: Vec<&serde_json::Value> = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "audio")
        .collect();
    assert_eq!(audio.len(), 2, "{j}");
    for (i, (t, lang)) in audio.iter().zip(["eng", "spa"]).enumerate() {
        assert_eq!(t["audio_index"], i, "{t}");
        assert_eq!(t["language"], lang, "{t}");
        assert_eq!(t["playable"], true, "{t}");
        assert_eq!(t["transcoded_to"], "Opus", "{t}");
        assert!(t.get("reason").is_none(), "{t}");
        assert!(t["transcoder_cpu_pct"].as_f64().unwrap() > 0.0, "{t}");
        assert_eq!(t["urls"]["whep"], format!("/whep/a?audio={i}"), "{t}");
    }
    assert_eq!(audio[0]["default"], true);
    assert_eq!(audio[1]["default"], false);
    assert_eq!(
        audio[1]["viewers"], 2,
        "one stream for both viewers: {}",
        audio[1]
    );
    assert_eq!(j["viewers"], 2, "{j}");

    // Wrong picks say what there is.
    for (query, status, says) in [
        (
            "?audio=2",
            404,
            "its audio tracks are 0 (eng, AAC (ADTS)), 1 (spa, AAC (ADTS))",
        ),
        ("?lang=fra", 404, "no audio track in"),
        ("?lang=spanish", 400, "ISO 639-2"),
        ("?audio=1&lang=spa", 400, "not both"),
    ] {
        let r = whep_receive(&format!("{url}{query}"), WhepOptions::default())
            .await
            .unwrap();
        let body = r.error_body.unwrap_or_default();
        assert_eq!(r.status, status, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aac_stereo_48k_plays_as_opus() {
    plays_tone("h264_aac.ts", 440.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aac_mono_44k1_plays_as_opus_at_the_right_pitch() {
    plays_tone("h264_aac_mono44.ts", 1000.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mp2_44k1_plays_as_opus() {
    plays_tone("h264_mp2.ts", 660.0).await;
}

/// `--audio-transcode off`: the AAC track stays unsupported with its reason; video plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcoding_off_leaves_aac_unsupported() {
    let s = serve("a", "h264_aac.ts", |a| a.audio_transcode = Transcode::Off).await;
    let r = whep_receive(
        &format!("http://{}/whep/a", s.http_addr),
        WhepOptions {
            seconds: 3.0,
            stop: StopWhen::VideoAus(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    assert!(r.audio.is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let j = common::stream_json(s.http_addr, "a").await;
    let aac = j["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["stream_type"] == 0x0f)
        .unwrap();
    assert_eq!(aac["playable"], false);
}

/// `--features ffmpeg` (issue 21): AC-3, E-AC-3 5.1 and AAC 5.1 play as Opus at the source's
/// pitch, 5.1 downmixed to stereo; the API says what the track is transcoded from.
#[cfg(feature = "ffmpeg")]
mod ffmpeg {
    use super::*;

    async fn plays_as_opus(file: &str, codec: &str) {
        let s = serve("a", file, |_| {}).await;
        let r = receive_audio(&format!("http://{}/whep/a", s.http_addr)).await;
        check_tone(&r, 440.0);
        let j = common::stream_json(s.http_addr, "a").await;
        let audio = j["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["kind"] == "audio")
            .unwrap_or_else(|| panic!("an audio track in {j}"));
        assert_eq!(audio["codec"], codec, "{audio}");
        assert_eq!(audio["playable"], true, "{audio}");
        assert_eq!(audio["transcoded_to"], "Opus", "{audio}");
        assert!(audio["transcoder_cpu_pct"].as_f64().unwrap() > 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ac3_plays_as_opus() {
        plays_as_opus("h264_ac3.ts", "AC-3").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eac3_5_1_plays_as_stereo_opus() {
        plays_as_opus("h264_eac3_51.ts", "E-AC-3").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aac_5_1_plays_as_stereo_opus() {
        plays_as_opus("h264_aac_51.ts", "AAC (ADTS)").await;
    }

    /// The pictures OpenH264 decodes from a viewing's H.264, from its first IDR on: how many,
    /// and their sizes.
    fn decode_h264(video: &[common::RtpPkt]) -> (usize, Vec<(usize, usize)>) {
        use openh264::decoder::{Decoder, DecoderConfig, Flush};
        use openh264::formats::YUVSource;
        let aus = common::h264_access_units(video);
        let Some(start) = aus
            .iter()
            .position(|a| a.is_keyframe() && a.sps().is_some())
        else {
            return (0, Vec::new());
        };
        let mut decoder = Decoder::with_api_config(
            openh264::OpenH264API::from_source(),
            DecoderConfig::new().flush_after_decode(Flush::NoFlush),
        )
        .unwrap();
        let mut sizes = Vec::new();
        let mut pictures = 0;
        for au in aus[start..].iter().filter(|a| a.complete) {
            if let Ok(Some(p)) = decoder.decode(&au.annex_b()) {
                pictures += 1;
                if !sizes.contains(&p.dimensions()) {
                    sizes.push(p.dimensions());
                }
            }
        }
        (pictures, sizes)
    }

    /// The video track of stream `a` once the API says it is re-encoded (at most 10 s).
    async fn reencoded_video(s: &Server) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let j = common::stream_json(s.http_addr, "a").await;
            let video = j["tracks"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["kind"] == "video"))
                .cloned();
            if let Some(v) = video.filter(|v| v.get("transcoded_to").is_some()) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not re-encoded: {j}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// MPEG-2 (which no browser decodes) reaches a WebRTC viewer as H.264 that OpenH264
    /// decodes to pictures of the source's size; the API says why it is re-encoded.
    async fn mpeg2_plays_as_h264(file: &str, size: (usize, usize), pictures: usize) -> Server {
        let s = serve("a", file, |_| {}).await;
        let r = whep_receive(
            &format!("http://{}/whep/a", s.http_addr),
            WhepOptions {
                seconds: 15.0,
                stop: StopWhen::VideoAus(pictures + 25),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201, "{:?}", r.error_body);
        assert_eq!(r.video_pt_mime.as_deref(), Some("video/H264"));
        let (decoded, sizes) = decode_h264(&r.video);
        assert!(decoded >= pictures, "{decoded} pictures decoded");
        assert_eq!(sizes, [size]);
        let video = reencoded_video(&s).await;
        assert_eq!(video["codec"], "MPEG-2 video", "{video}");
        assert_eq!(video["playable"], true, "{video}");
        assert_eq!(
            video["transcoded_to"], "H.264 Constrained Baseline",
            "{video}"
        );
        let reason = video["transcode_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("MPEG-2 video"), "{video}");
        assert_eq!(
            (video["width"].as_u64(), video["height"].as_u64()),
            (Some(size.0 as u64), Some(size.1 as u64)),
            "{video}"
        );
        assert!(video["frames_encoded"].as_u64().unwrap() > 0, "{video}");
        eprintln!(
            "{file}: {decoded} pictures decoded, re-encoder at {}% of a core",
            video["transcoder_cpu_pct"]
        );
        s
    }

    /// HEVC + AAC: a viewer whose offer has no H.265 gets the video re-encoded to H.264 (by
    /// the variant made for such viewers, while they watch), one that offers H.265 at the
    /// same time gets it as it is; the API says so on the stream's HEVC track.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hevc_plays_as_h264_to_a_viewer_without_h265_and_as_it_is_to_one_with() {
        let s = serve("a", "hevc_aac.ts", |_| {}).await;
        let whep = format!("http://{}/whep/a", s.http_addr);
        // Its AAC as Opus: the file's 440 Hz.
        check_tone(&receive_audio(&whep).await, 440.0);
        let opts = |h265| WhepOptions {
            h265,
            seconds: 20.0,
            ..Default::default()
        };
        let h264 = common::WhepSession::start(&whep, &opts(false))
            .await
            .unwrap();
        assert_eq!(h264.status, 201, "{:?}", h264.error_body);
        let h265 = common::WhepSession::start(&whep, &opts(true))
            .await
            .unwrap();
        assert_eq!(h265.status, 201, "{:?}", h265.error_body);
        let enough = |c: &common::whep::Collected| {
            common::h264_access_units(&c.video).len() >= 80 && c.audio.len() >= 50
        };
        assert!(h264.wait_until(Duration::from_secs(15), enough).await);
        let enough = |c: &common::whep::Collected| {
            common::h265::hevc_access_units(&c.video).len() >= 40 && c.audio.len() >= 50
        };
        assert!(h265.wait_until(Duration::from_secs(15), enough).await);
        let c = h264.collected();
        assert_eq!(c.video_mime.as_deref(), Some("video/H264"));
        let (decoded, sizes) = decode_h264(&c.video);
        let j = common::stream_json(s.http_addr, "a").await;
        let aus = common::h264_access_units(&c.video);
        let complete = aus.iter().filter(|a| a.complete).count();
        // (From the first IDR that carries its SPS: 1 s of GOP may come before it.)
        assert!(
            decoded >= 30,
            "{decoded} pictures decoded of {} access units ({complete} complete): {j}",
            aus.len()
        );
        assert_eq!(sizes, [(1280, 720)]);
        assert_eq!(h265.collected().video_mime.as_deref(), Some("video/H265"));
        let video = j["tracks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["kind"] == "video"))
            .cloned()
            .unwrap_or_else(|| panic!("a video track in {j}"));
        assert_eq!(video["codec"], "H.265", "{video}");
        assert!(
            video.get("transcoded_to").is_none(),
            "passed through: {video}"
        );
        let w = &video["without_h265"];
        assert_eq!(w["viewers"], 1, "{video}");
        assert_eq!(w["transcoded_to"], "H.264 Constrained Baseline", "{video}");
        let reason = w["transcode_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("H.265"), "{video}");
        assert_eq!(j["viewers"], 2, "{j}");
        eprintln!(
            "hevc_aac.ts: {decoded} pictures decoded of {} access units, re-encoder: {w}",
            aus.len()
        );
    }

    /// DVB SD: MPEG-2 576i (deinterlaced) + MP2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mpeg2_576i_plays_as_h264() {
        let s = mpeg2_plays_as_h264("mpeg2_576i_mp2.ts", (720, 576), 40).await;
        // Its MP2 as Opus: the file's 440 Hz.
        let r = receive_audio(&format!("http://{}/whep/a", s.http_addr)).await;
        check_tone(&r, 440.0);
    }

    /// ATSC HD: MPEG-2 1080i + AC-3 5.1: H.264 pictures and the tone as stereo Opus.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mpeg2_1080i_with_ac3_5_1_plays_as_h264_and_opus() {
        let s = mpeg2_plays_as_h264("mpeg2_1080i_ac3_51.ts", (1920, 1080), 10).await;
        let r = receive_audio(&format!("http://{}/whep/a", s.http_addr)).await;
        check_tone(&r, 440.0);
    }
}

/// Without FFmpeg's decoders, AC-3 says how to get them.
#[cfg(not(feature = "ffmpeg"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ac3_without_ffmpeg_says_rebuild_with_the_feature() {
    let s = serve("a", "h264_ac3.ts", |_| {}).await;
    let r = whep_receive(
        &format!("http://{}/whep/a", s.http_addr),
        WhepOptions {
            seconds: 3.0,
            stop: StopWhen::VideoAus(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    let j = common::stream_json(s.http_addr, "a").await;
    let ac3 = &j["tracks"][1];
    assert_eq!(ac3["playable"], false, "{ac3}");
    assert!(
        ac3["reason"]
            .as_str()
            .unwrap()
            .contains("rebuild with --features ffmpeg"),
        "{ac3}"
    );
}

/// Without FFmpeg's decoders, 5.1 AAC (which the PMT does not tell from stereo) is found out
/// by the transcoder: the API then says the track does not play, and how to make it.
#[cfg(not(feature = "ffmpeg"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aac_5_1_without_ffmpeg_is_reported_not_playable() {
    let s = serve("a", "h264_aac_51.ts", |_| {}).await;
    let mut aac = serde_json::Value::Null;
    for _ in 0..50 {
        let j = common::stream_json(s.http_addr, "a").await;
        aac = j["tracks"][1].clone();
        if aac["playable"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(aac["playable"], false, "{aac}");
    assert!(aac.get("transcoded_to").is_none(), "{aac}");
    let reason = aac["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("more than 2 channels"), "{aac}");
    assert!(reason.contains("rebuild with --features ffmpeg"), "{aac}");
}
