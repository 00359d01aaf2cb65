//! Headless Chromium plays a stream from the server's own player page (`/play/{s}`, WHEP) and
//! must decode video frames and receive audio samples, read from `getStats()` through the
//! page's console. Without Chromium the test says loudly that it skipped; with
//! `TSBRIDGE_REQUIRE_BROWSER=1` (set by `.ci/run`) a missing browser fails it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "/usr/bin/chromium".into(),
        "/usr/bin/chromium-browser".into(),
        "/usr/bin/google-chrome".into(),
    ];
    candidates
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

#[derive(Debug, Default, Clone)]
struct Seen {
    frames_decoded: u64,
    frame_width: u64,
    audio_samples: u64,
    first_frame_ms: Option<u64>,
    last: String,
}

/// Run Chromium on `url` until `done` says so or `timeout`; returns what the page reported.
async fn watch_page(
    browser: &PathBuf,
    url: &str,
    timeout: Duration,
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let profile = tempdir();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--enable-logging=stderr",
            "--log-level=0",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(at) = line.find("TSBRIDGE_STATS ") else {
                continue;
            };
            let json = &line[at + "TSBRIDGE_STATS ".len()..];
            let json = json.split("\", source").next().unwrap_or(json);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                continue;
            };
            seen.frames_decoded = v["video"]["framesDecoded"].as_u64().unwrap_or(0);
            seen.frame_width = v["video"]["frameWidth"].as_u64().unwrap_or(0);
            seen.audio_samples = v["audio"]["totalSamplesReceived"].as_u64().unwrap_or(0);
            if seen.frames_decoded > 0 && seen.first_frame_ms.is_none() {
                seen.first_frame_ms = v["ms"].as_u64();
            }
            seen.last = json.to_string();
            if done(&seen) {
                break;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    seen
}

fn tempdir() -> PathBuf {
    let p = std::env::temp_dir().join(format!("tsbridge-chromium-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&p).expect("temp dir");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_video_and_receives_audio() {
    let Some(browser) = chromium() else {
        if std::env::var_os("TSBRIDGE_REQUIRE_BROWSER").is_some() {
            panic!("Chromium is required (TSBRIDGE_REQUIRE_BROWSER is set) but was not found");
        }
        eprintln!("\n*** SKIPPED chromium_decodes_video_and_receives_audio: no Chromium found ***");
        eprintln!(
            "*** install it (apt-get install chromium) or set CHROMIUM=/path/to/chrome ***\n"
        );
        return;
    };
    let mut args = ServeArgs::loopback();
    args.replays.push(Named {
        name: "cam".into(),
        value: testdata("h264_opus.ts"),
    });
    let server = Server::start(args).await.expect("server starts");
    let url = format!("http://{}/play/cam?stats=1", server.http_addr);
    let seen = watch_page(&browser, &url, Duration::from_secs(45), |s| {
        s.frames_decoded >= 60 && s.audio_samples > 0
    })
    .await;
    eprintln!("chromium saw: {seen:?}");
    assert!(seen.frames_decoded >= 60, "video frames decoded: {seen:?}");
    assert_eq!(seen.frame_width, 640, "{seen:?}");
    assert!(seen.audio_samples > 0, "audio samples received: {seen:?}");
}
