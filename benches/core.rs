//! Benchmarks of the sans-IO core on real data: `testdata/h264_opus.ts` (6 s, H.264 High
//! 640x360 ~400 kbit/s + Opus stereo, 444 KB).
//!
//! ```text
//! cargo bench --bench core -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `demux`: `ts::Demuxer::push` over the whole file in 64 KiB chunks (bytes/s).
//! - `au_assembly`: `H264Assembler::push` over the file's video PES (access units/s).
//! - `h264_packetize`: `rtp::H264Packetizer` over the file's access units (bytes/s of AU).
//! - `opus_packetize`: `rtp::OpusPacketizer` over the file's Opus packets (packets/s).
//! - `timestamp`: `Timeline::map` + `rescale` + `to_rtp` per video AU / Opus PES (samples/s).
//! - `ring`: `Ring::write` of 1316-byte chunks (7 TS packets, as in UDP) with readers using
//!   `try_read` (bytes written/s).
//! - `payload_handoff`: what each viewer costs to get one RTP payload of the file's video in
//!   the form str0m's RTP mode takes (`Arc<[u8]>`): a clone of our `Arc<[u8]>` payload vs. a
//!   copy out of a `Bytes` slice (payloads/s).
//! - `srtp_1200B`: one 1,200-byte RTP packet through each SRTP profile with str0m's crypto
//!   provider (AES-128-GCM, AES-256-GCM, AES-128-CM + HMAC-SHA1-80), the per-viewer crypto.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use tsbridge::codec::h264::{AccessUnit, H264Assembler};
use tsbridge::codec::opus;
use tsbridge::rtp::{H264Packetizer, OpusPacketizer, Payload};
use tsbridge::stream::ring::{Read, Ring};
use tsbridge::time::{rescale, to_rtp, ClockRate, Timeline};
use tsbridge::ts::{DemuxEvent, Demuxer, Pes};

const CHUNK: usize = 64 << 10;

/// The test stream, demuxed once.
struct Data {
    ts: Vec<u8>,
    video_pes: Vec<Pes>,
    audio_pes: Vec<Pes>,
    /// PTS of video PES and audio PES in stream order, and whether it is audio.
    pts: Vec<(u64, bool)>,
    aus: Vec<AccessUnit>,
}

fn load() -> Data {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_opus.ts");
    let ts = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut demuxer = Demuxer::new();
    let mut events = Vec::new();
    for chunk in ts.chunks(CHUNK) {
        demuxer.push(chunk, &mut events);
    }
    demuxer.flush(&mut events);
    let tracks = demuxer.tracks().expect("PMT in the test stream");
    let video = tracks.video().expect("H.264 track").pid;
    let audio = tracks
        .tracks
        .iter()
        .find(|t| matches!(t.codec, tsbridge::ts::Codec::Opus { .. }))
        .expect("Opus track")
        .pid;
    let (mut video_pes, mut audio_pes, mut pts) = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        if let DemuxEvent::Pes(pes) = e {
            if pes.pid == video {
                pts.extend(pes.pts.map(|p| (p, false)));
                video_pes.push(pes);
            } else if pes.pid == audio {
                pts.extend(pes.pts.map(|p| (p, true)));
                audio_pes.push(pes);
            }
        }
    }
    let mut assembler = H264Assembler::new();
    let mut aus = Vec::new();
    for pes in &video_pes {
        assembler.push(pes, &mut aus);
    }
    Data {
        ts,
        video_pes,
        audio_pes,
        pts,
        aus,
    }
}

fn benches(c: &mut Criterion) {
    let data = load();

    let mut g = c.benchmark_group("demux");
    g.throughput(Throughput::Bytes(data.ts.len() as u64));
    g.bench_function("h264_opus.ts/64KiB", |b| {
        let mut events = Vec::with_capacity(1024);
        b.iter(|| {
            let mut demuxer = Demuxer::new();
            for chunk in data.ts.chunks(CHUNK) {
                demuxer.push(black_box(chunk), &mut events);
            }
            demuxer.flush(&mut events);
            black_box(&events);
            events.clear();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("au_assembly");
    g.throughput(Throughput::Elements(data.aus.len() as u64));
    g.bench_function("h264_opus.ts", |b| {
        let mut aus = Vec::with_capacity(data.aus.len());
        b.iter(|| {
            let mut assembler = H264Assembler::new();
            for pes in &data.video_pes {
                assembler.push(black_box(pes), &mut aus);
            }
            black_box(&aus);
            aus.clear();
        })
    });
    g.finish();

    let au_bytes: usize = data.aus.iter().map(|au| au.data.len()).sum();
    let mut g = c.benchmark_group("h264_packetize");
    g.throughput(Throughput::Bytes(au_bytes as u64));
    g.bench_function("h264_opus.ts/1120", |b| {
        let mut p = H264Packetizer::default();
        let mut out: Vec<Payload> = Vec::with_capacity(64);
        b.iter(|| {
            for au in &data.aus {
                p.packetize(black_box(&au.data), &mut out);
                black_box(&out);
                out.clear();
            }
        })
    });
    g.finish();

    let mut packets = Vec::new();
    for pes in &data.audio_pes {
        opus::split_pes(&pes.data, &mut packets).expect("valid Opus PES");
    }
    let mut g = c.benchmark_group("opus_packetize");
    g.throughput(Throughput::Elements(packets.len() as u64));
    g.bench_function("h264_opus.ts", |b| {
        let mut p = OpusPacketizer::new();
        let mut out: Vec<Payload> = Vec::with_capacity(1);
        b.iter(|| {
            for packet in &packets {
                p.packetize(black_box(packet.data), &mut out);
                black_box(&out);
                out.clear();
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("timestamp");
    g.throughput(Throughput::Elements(data.pts.len() as u64));
    g.bench_function("map+rescale+to_rtp", |b| {
        b.iter(|| {
            let mut timeline = Timeline::new();
            for &(pts, audio) in &data.pts {
                let (step, rate) = if audio {
                    (1800, ClockRate::OPUS)
                } else {
                    (3000, ClockRate::NINETY_KHZ)
                };
                let t = timeline.map(black_box(pts), step);
                black_box(rescale(t, rate));
                black_box(to_rtp(t, rate, 0x1234_5678));
            }
        })
    });
    g.finish();

    ring(c);
    payload_handoff(c, &data);
}

/// 1316-byte chunks into a 1 MiB ring, 1024 per iteration (1.35 MB: more than the ring).
fn ring(c: &mut Criterion) {
    const WRITE: usize = 1316;
    const WRITES: usize = 1024;
    const CAPACITY: usize = 1 << 20;
    let chunk: Vec<u8> = (0..WRITE).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Bytes((WRITE * WRITES) as u64));

    g.bench_function("1_reader", |b| {
        let ring = Ring::new(CAPACITY);
        let mut cur = ring.cursor();
        let mut buf = vec![0; 64 << 10];
        b.iter(|| {
            for _ in 0..WRITES {
                ring.write(black_box(&chunk));
                while let Some(r) = ring.try_read(&mut cur, &mut buf) {
                    black_box(r);
                }
            }
        })
    });

    // 4 readers keep up; 4 read one chunk's worth every other write (half speed), so they
    // fall behind and are lapped about every 1600 writes, then resume at the live edge.
    g.bench_function("8_readers_4_lapped", |b| {
        let ring = Ring::new(CAPACITY);
        let mut fast: Vec<_> = (0..4).map(|_| ring.cursor()).collect();
        let mut slow: Vec<_> = (0..4).map(|_| ring.cursor()).collect();
        let mut buf = vec![0; 64 << 10];
        let mut small = vec![0; WRITE];
        let mut laps = 0u64;
        let mut n = 0u64;
        b.iter(|| {
            for _ in 0..WRITES {
                ring.write(black_box(&chunk));
                for cur in &mut fast {
                    while let Some(r) = ring.try_read(cur, &mut buf) {
                        black_box(r);
                    }
                }
                n += 1;
                if n.is_multiple_of(2) {
                    for cur in &mut slow {
                        if let Some(Read::Lapped(_)) = ring.try_read(cur, &mut small) {
                            laps += 1;
                        }
                    }
                }
            }
        });
        black_box(laps);
    });
    g.finish();
}

/// Per viewer and payload: `Arc::clone` of our payload vs. `Arc<[u8]>::from(&Bytes)`, for the
/// video payloads of the whole file.
fn payload_handoff(c: &mut Criterion, data: &Data) {
    let mut p = H264Packetizer::default();
    let mut payloads = Vec::new();
    for au in &data.aus {
        p.packetize(&au.data, &mut payloads);
    }
    let as_bytes: Vec<Bytes> = payloads
        .iter()
        .map(|p| Bytes::copy_from_slice(&p.data))
        .collect();
    let mut g = c.benchmark_group("payload_handoff");
    g.throughput(Throughput::Elements(payloads.len() as u64));
    g.bench_function("arc_clone", |b| {
        b.iter(|| {
            for p in &payloads {
                let to_str0m: Arc<[u8]> = Arc::clone(black_box(&p.data));
                black_box(to_str0m);
            }
        })
    });
    g.bench_function("copy_from_bytes", |b| {
        b.iter(|| {
            for p in &as_bytes {
                let to_str0m: Arc<[u8]> = Arc::from(&black_box(p)[..]);
                black_box(to_str0m);
            }
        })
    });
    g.finish();
}

/// Per-viewer SRTP of one 1,200-byte RTP packet in each profile str0m can negotiate (its
/// crypto provider, as the engine uses it): which profile a viewer gets is a per-packet cost.
/// AES-CM-SHA1 includes its HMAC-SHA1 tag (RFC 3711), the GCM profiles their GHASH tag.
fn srtp_profiles(c: &mut Criterion) {
    let provider = str0m::crypto::from_feature_flags();
    let srtp = provider.srtp_provider;
    let header = [
        0x90, 0x66, 0x12, 0x34, 0, 1, 0x5f, 0x90, 0xde, 0xad, 0xbe, 0xef,
    ];
    let payload = vec![0x5a_u8; 1200 - header.len()];
    let mut out = vec![0_u8; 1200 + 16];
    let mut g = c.benchmark_group("srtp_1200B");
    g.throughput(Throughput::Elements(1));
    let mut gcm128 = srtp.aead_aes_128_gcm().create_cipher([7; 16], true);
    g.bench_function("aead_aes_128_gcm", |b| {
        b.iter(|| gcm128.encrypt(&[1; 12], &header, black_box(&payload), &mut out))
    });
    let mut gcm256 = srtp.aead_aes_256_gcm().create_cipher([7; 32], true);
    g.bench_function("aead_aes_256_gcm", |b| {
        b.iter(|| gcm256.encrypt(&[1; 12], &header, black_box(&payload), &mut out))
    });
    let mut cm = srtp.aes_128_cm_sha1_80().create_cipher([7; 16], true);
    let hmac = provider.sha1_hmac_provider;
    g.bench_function("aes_128_cm_hmac_sha1_80", |b| {
        b.iter(|| {
            let r = cm.encrypt(&[1; 16], black_box(&payload), &mut out[..payload.len()]);
            let tag = hmac.sha1_hmac(&[3; 20], &[&header, &out[..payload.len()], &[0; 4]]);
            (r, tag)
        })
    });
    g.finish();
}

criterion_group!(core_benches, benches, srtp_profiles);
criterion_main!(core_benches);
