//! Cost of transcoding one stream's audio to Opus: 5 s of AAC-LC stereo 48 kHz
//! (testdata/h264_aac.ts, looped) through `Transcoder`, i.e. ADTS framing, AAC decode and
//! Opus encode (no resampling at 48 kHz), plus 44.1 kHz mono AAC and 44.1 kHz stereo MP2,
//! which add the resampler. With `--features ffmpeg`, also AC-3 stereo, E-AC-3 5.1 and AAC 5.1
//! (FFmpeg's decoders, the BS.775 downmix).
//!
//! `cargo bench --bench transcode` prints, besides criterion's figures, the cost per 20 ms
//! Opus frame and the share of one core needed for real time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use tsbridge::codec::transcode::{SourceCodec, Transcoder};
use tsbridge::ts::{transcodable_audio, DemuxEvent, Demuxer};

const SECONDS: u64 = 5;

/// PES payloads with their PTS (90 kHz, unwrapped).
type Pes = Vec<(Vec<u8>, Option<u64>)>;

/// The PES payloads of the file's transcodable audio track, with PTS, looped to 5 s on one
/// continuous timeline.
fn audio_pes(name: &str) -> Option<(SourceCodec, Pes)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    let data = std::fs::read(&path).ok()?;
    let mut demuxer = Demuxer::new();
    demuxer.set_transcodable_audio(true);
    let mut events = Vec::new();
    demuxer.push(&data, &mut events);
    demuxer.flush(&mut events);
    let tracks = demuxer.tracks()?;
    let pid = transcodable_audio(tracks)?;
    let codec = tracks
        .tracks
        .iter()
        .find(|t| t.pid == pid)
        .and_then(|t| t.stream_type.transcodable())?;
    let one: Pes = events
        .into_iter()
        .filter_map(|e| match e {
            DemuxEvent::Pes(p) if p.pid == pid => Some((p.data.to_vec(), p.pts)),
            _ => None,
        })
        .collect();
    let stamps: Vec<u64> = one.iter().filter_map(|p| p.1).collect();
    let (first, last) = (*stamps.first()?, *stamps.last()?);
    // The loop period: the last PES's PTS plus one (average) PES duration, so the looped
    // timeline stays continuous.
    let period = last - first + (last - first) / (stamps.len() as u64 - 1).max(1);
    let mut out = Vec::new();
    for round in 0.. {
        for (data, pts) in &one {
            let pts = pts.map(|p| p - first + round * period);
            if pts.is_some_and(|p| p >= SECONDS * 90_000) {
                return Some((codec, out));
            }
            out.push((data.clone(), pts));
        }
    }
    Some((codec, out))
}

fn transcode(codec: SourceCodec, pes: &[(Vec<u8>, Option<u64>)]) -> usize {
    let mut t = Transcoder::new(codec);
    let mut out = Vec::new();
    for (data, pts) in pes {
        t.push(data, *pts, &mut out).expect("supported");
    }
    t.flush(&mut out);
    out.len()
}

fn bench(c: &mut Criterion) {
    let mut files = vec![
        ("h264_aac.ts", "aac_stereo_48k"),
        ("h264_aac_mono44.ts", "aac_mono_44k"),
        ("h264_mp2.ts", "mp2_stereo_44k"),
    ];
    // FFmpeg's decoders (`cargo bench --bench transcode --features ffmpeg`): 5.1 downmixed.
    if cfg!(feature = "ffmpeg") {
        files.extend([
            ("h264_ac3.ts", "ac3_stereo_48k"),
            ("h264_eac3_51.ts", "eac3_5_1_48k"),
            ("h264_aac_51.ts", "aac_5_1_48k"),
            ("mpeg2_1080i_ac3_51.ts", "ac3_5_1_48k"),
        ]);
    }
    for (name, label) in files {
        let Some((codec, pes)) = audio_pes(name) else {
            eprintln!("skipping {label}: testdata/{name} not found");
            continue;
        };
        let frames = transcode(codec, &pes);
        let mut group = c.benchmark_group("transcode");
        group.throughput(Throughput::Elements(frames as u64));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(8));
        group.bench_function(label, |b| b.iter(|| transcode(codec, &pes)));
        group.finish();

        // The figures that matter, measured directly: best of a few runs, in wall time and in
        // this thread's CPU time (which other processes on a busy machine do not inflate).
        let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
        for _ in 0..10 {
            let (start, start_cpu) = (Instant::now(), thread_cpu_seconds());
            std::hint::black_box(transcode(codec, &pes));
            cpu = cpu.min(thread_cpu_seconds() - start_cpu);
            wall = wall.min(start.elapsed().as_secs_f64());
        }
        let audio = frames as f64 * 0.020;
        for (what, t) in [("CPU", cpu), ("wall", wall)] {
            println!(
                "{label}: {frames} Opus frames ({audio:.2} s of audio), {what} {:.1} ms: {:.0} µs \
                 per 20 ms frame, {:.2} % of one core for real time",
                t * 1e3,
                t * 1e6 / frames as f64,
                t / audio * 100.0,
            );
        }
    }
}

fn thread_cpu_seconds() -> f64 {
    tsbridge::metrics::thread_cpu_time().as_secs_f64()
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
