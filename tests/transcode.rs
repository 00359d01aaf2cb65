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
    let r = whep_receive(
        &format!("http://{}/whep/a", s.http_addr),
        WhepOptions {
            seconds: 6.0,
            stop: StopWhen::AudioPackets(150),
            ..Default::default()
        },
    )
    .await
    .unwrap();
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
