//! The video re-encoder (`codec::reencode`): what a B-frame stream costs, at 720p30 and 1080p30.
//!
//! `cargo bench --bench reencode` makes 10 s of libx264 High with B-frames (testsrc2, 2.5 and
//! 5 Mbit/s, 2 s GOP) with ffmpeg under `target/bench-data/`, then for each:
//!
//! - **CPU**: the re-encoder over the whole clip as fast as it goes, in this thread's CPU time:
//!   ms per picture and the share of one core that real time takes (the goal: 720p30
//!   ≤ 40 %).
//! - **Added latency**: the clip fed in real time (each access unit at its DTS), from an access
//!   unit's arrival to its picture leaving the encoder, p50/p99/max. It includes the decoder's
//!   reorder wait (a B-frame stream's pictures come out up to a few frames after their access
//!   units) and the encoding.
//!
//! `ENCODE_ONLY_SECONDS=N` shortens the real-time part. Without ffmpeg it says so and stops.
//!
//! With `--features ffmpeg` (libavcodec decodes what browsers cannot): broadcast video made
//! the same way (10 s each) — MPEG-2 576i25 and 1080i25 (interlaced, deinterlaced before
//! encoding), HEVC 720p30 without B-frames — through the same re-encoder, CPU only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tsbridge::codec::h264::{AccessUnit, H264Assembler};
use tsbridge::codec::reencode::{Reencoder, SourceFrame};
#[cfg(feature = "ffmpeg")]
use tsbridge::codec::VideoCodec;
use tsbridge::ts::{DemuxEvent, Demuxer};

struct Clip {
    label: &'static str,
    size: &'static str,
    bitrate: &'static str,
}

const CLIPS: [Clip; 2] = [
    Clip {
        label: "720p30",
        size: "1280x720",
        bitrate: "2500k",
    },
    Clip {
        label: "1080p30",
        size: "1920x1080",
        bitrate: "5000k",
    },
];

fn main() {
    if Command::new("ffmpeg").arg("-version").output().is_err() {
        eprintln!(
            "SKIPPED: the re-encoder bench needs ffmpeg to make its input (apt-get install ffmpeg)"
        );
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).expect("bench data dir");
    let realtime_s: f64 = std::env::var("ENCODE_ONLY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    #[cfg(feature = "ffmpeg")]
    broadcast(&dir);
    if std::env::var_os("BROADCAST_ONLY").is_some() {
        return;
    }
    for clip in &CLIPS {
        let file = make_clip(&dir, clip);
        let aus = access_units(&file);
        let media_s = aus.len() as f64 / 30.0;

        let best = best_cpu_seconds(Reencoder::new, &aus);
        println!(
            "{}: {} pictures ({media_s:.1} s): CPU {:.1} ms per picture, {:.1} % of one core \
             for real time",
            clip.label,
            aus.len(),
            best * 1e3 / aus.len() as f64,
            best / media_s * 100.0
        );

        // In real time: arrival of an access unit → its picture out.
        let mut r = Reencoder::new();
        let mut out = Vec::new();
        let mut arrived = std::collections::HashMap::new();
        let mut latency = Vec::new();
        let first_dts = aus[0].dts;
        let start = Instant::now();
        for au in aus
            .iter()
            .take_while(|a| (a.dts - first_dts) as f64 / 90_000.0 < realtime_s)
        {
            let at = start + Duration::from_micros((au.dts - first_dts) * 100 / 9);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            arrived.insert(au.pts, Instant::now());
            r.push(SourceFrame::from(au), &mut out).expect("re-encodes");
            for f in out.drain(..) {
                if let Some(t) = arrived.get(&f.pts) {
                    latency.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        latency.sort_by(f64::total_cmp);
        let q = |p: f64| latency[((latency.len() - 1) as f64 * p) as usize];
        println!(
            "{}: added latency (access unit in → picture out, real time, {} pictures): p50 \
             {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            clip.label,
            latency.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
}

/// Broadcast shapes for the FFmpeg decoders: label, codec, ffmpeg output arguments.
#[cfg(feature = "ffmpeg")]
const BROADCAST: [(&str, VideoCodec, &str); 3] = [
    (
        "mpeg2_576i25",
        VideoCodec::Mpeg2,
        "-vf scale=720:576,setfield=tff -r 25 -c:v mpeg2video -b:v 4M -g 12 -bf 2 -flags +ilme+ildct -top 1",
    ),
    (
        "mpeg2_1080i25",
        VideoCodec::Mpeg2,
        "-vf scale=1920:1080,setfield=tff -r 25 -c:v mpeg2video -b:v 12M -g 12 -bf 2 -flags +ilme+ildct -top 1",
    ),
    (
        "hevc_720p30",
        VideoCodec::H265,
        "-vf scale=1280:720 -r 30 -c:v libx265 -x265-params bframes=0:keyint=60:log-level=error -b:v 2M",
    ),
];

/// CPU of the re-encoder on each broadcast shape, as for the B-frame clips.
#[cfg(feature = "ffmpeg")]
fn broadcast(dir: &Path) {
    use tsbridge::codec::VideoAssembler;
    for (label, codec, args) in BROADCAST {
        let file = dir.join(format!("{label}.ts"));
        if !file.exists() {
            let status = Command::new("ffmpeg")
                .args([
                    "-v",
                    "error",
                    "-y",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=1920x1080:rate=30",
                ])
                .args(["-t", "10"])
                .args(args.split(' '))
                .args(["-f", "mpegts"])
                .arg(&file)
                .status()
                .expect("run ffmpeg");
            assert!(status.success(), "ffmpeg made no {}", file.display());
        }
        let data = std::fs::read(&file).expect("clip");
        let mut demuxer = Demuxer::new();
        let mut events = Vec::new();
        demuxer.push(&data, &mut events);
        demuxer.flush(&mut events);
        let mut assembler = VideoAssembler::new(codec);
        let mut aus = Vec::new();
        for e in &events {
            if let DemuxEvent::Pes(pes) = e {
                assembler.push(pes, &mut aus);
            }
        }
        assembler.flush(&mut aus);
        let fps = if label.contains("25") { 25.0 } else { 30.0 };
        let media_s = aus.len() as f64 / fps;
        let best = best_cpu_seconds(|| Reencoder::for_source(codec), &aus);
        println!(
            "{label}: {} pictures ({media_s:.1} s): CPU {:.1} ms per picture, {:.1} % of one \
             core for real time",
            aus.len(),
            best * 1e3 / aus.len() as f64,
            best / media_s * 100.0
        );
    }
}

fn make_clip(dir: &Path, clip: &Clip) -> PathBuf {
    let file = dir.join(format!("bframes_{}.ts", clip.label));
    if file.exists() {
        return file;
    }
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={}:rate=30", clip.size))
        .args("-t 10 -c:v libx264 -pix_fmt yuv420p -profile:v high".split(' '))
        .args("-bf 3 -g 60 -sc_threshold 0 -f mpegts -b:v".split(' '))
        .arg(clip.bitrate)
        .arg(&file)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg made no {}", file.display());
    file
}

fn access_units(file: &Path) -> Vec<AccessUnit> {
    let data = std::fs::read(file).expect("clip");
    let mut demuxer = Demuxer::new();
    let mut events = Vec::new();
    demuxer.push(&data, &mut events);
    demuxer.flush(&mut events);
    let mut assembler = H264Assembler::new();
    let mut aus = Vec::new();
    for e in &events {
        if let DemuxEvent::Pes(pes) = e {
            assembler.push(pes, &mut aus);
        }
    }
    aus
}

/// The re-encoder over `aus` as fast as it goes, best of 3, in this thread's CPU seconds;
/// every picture comes out (a few may stay in the decoder).
fn best_cpu_seconds(new: impl Fn() -> Reencoder, aus: &[AccessUnit]) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut r = new();
        let mut out = Vec::new();
        let start = thread_cpu_seconds();
        for au in aus {
            r.push(SourceFrame::from(au), &mut out).expect("re-encodes");
        }
        r.flush(&mut out);
        best = best.min(thread_cpu_seconds() - start);
        assert!(out.len() + 3 >= aus.len(), "{} of {}", out.len(), aus.len());
    }
    best
}

fn thread_cpu_seconds() -> f64 {
    tsbridge::metrics::thread_cpu_time().as_secs_f64()
}
