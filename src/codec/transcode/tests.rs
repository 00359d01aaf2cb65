//! Tests of the whole transcoder on the project's test files (tone checks, timestamps,
//! corruption, resets) and of the timing against an ideal signal.

use super::tone;

use std::path::PathBuf;

use super::*;
use crate::codec::{aac, mpa};
use crate::time::Timeline;
use crate::ts::{DemuxEvent, Demuxer};
use tone::{dominant_frequency, rms};

use crate::testdata::read;

/// A PES payload and its PTS on the unwrapped timeline.
struct AudioPes {
    data: Vec<u8>,
    pts: Option<u64>,
}

/// The transcodable audio track of a TS file, as the media task gets it: the project's
/// `Demuxer` with transcodable audio on, PTS through a `Timeline` (so the first maps to 0).
fn audio_track(data: &[u8]) -> (SourceCodec, Vec<AudioPes>) {
    let mut demuxer = Demuxer::new();
    demuxer.set_transcodable_audio(true);
    let mut events = Vec::new();
    demuxer.push(data, &mut events);
    demuxer.flush(&mut events);
    let tracks = demuxer.tracks().expect("a PMT");
    let pid = crate::ts::transcodable_audio(tracks).expect("an AAC or MPEG audio track");
    let codec = tracks
        .tracks
        .iter()
        .find(|t| t.pid == pid)
        .and_then(|t| t.stream_type.transcodable())
        .expect("a transcodable codec");
    let mut timeline = Timeline::new();
    let out = events
        .into_iter()
        .filter_map(|e| match e {
            DemuxEvent::Pes(p) if p.pid == pid => Some(AudioPes {
                data: p.data.to_vec(),
                pts: p.pts.map(|pts| timeline.map(pts, 1920)),
            }),
            _ => None,
        })
        .collect();
    (codec, out)
}

fn transcode_all(t: &mut Transcoder, pes: &[AudioPes]) -> Vec<OpusFrame> {
    let mut out = Vec::new();
    for p in pes {
        t.push(&p.data, p.pts, &mut out).expect("supported");
    }
    t.flush(&mut out);
    out
}

/// Decodes with the same crate's decoder (a libopus port); interleaved f32.
fn decode(frames: &[OpusFrame], channels: usize) -> Vec<f32> {
    let ch = if channels == 1 {
        mousiki::Channels::Mono
    } else {
        mousiki::Channels::Stereo
    };
    let mut decoder = mousiki::Decoder::new(OPUS_RATE, ch).unwrap();
    let mut pcm = vec![0.0f32; 5760 * channels];
    let mut all = Vec::new();
    for f in frames {
        let n = decoder.decode_float(&f.data, &mut pcm, false).unwrap();
        assert_eq!(n, FRAME_SAMPLES as usize);
        all.extend_from_slice(&pcm[..n * channels]);
    }
    all
}

fn channel(pcm: &[f32], channels: usize, c: usize) -> Vec<f32> {
    pcm.iter().skip(c).step_by(channels).copied().collect()
}

/// Frames are 960 samples, 1800 ticks apart without a gap, from the first PTS.
fn check_timestamps(frames: &[OpusFrame], first_pts: u64) {
    assert!(frames.iter().all(|f| f.samples == FRAME_SAMPLES));
    assert_eq!(frames[0].pts_90k, first_pts);
    for w in frames.windows(2) {
        assert_eq!(w[1].pts_90k - w[0].pts_90k, FRAME_TICKS);
    }
}

/// Decodes, checks loudness and pitch on every channel (skipping the first 100 ms).
fn check_tone(frames: &[OpusFrame], channels: usize, tone: f32) {
    let pcm = decode(frames, channels);
    for c in 0..channels {
        let x = channel(&pcm, channels, c);
        let x = &x[4800..x.len() - 4800];
        let level = rms(x);
        assert!(level > 0.05, "channel {c} is silent: rms {level}");
        let f = dominant_frequency(&x[..x.len().min(48_000)], OPUS_RATE as f32);
        assert!(
            (f - tone).abs() <= tone * 0.02,
            "channel {c}: dominant {f} Hz, expected {tone} Hz"
        );
    }
}

fn run_file(name: &str, codec: SourceCodec, channels: u8, tone: f32) -> Option<Transcoder> {
    let data = read(name)?;
    let (found, pes) = audio_track(&data);
    assert_eq!(found, codec);
    let mut t = Transcoder::new(codec);
    let frames = transcode_all(&mut t, &pes);
    dump_ogg(name, &frames, channels);
    assert_eq!(t.channels(), Some(channels));
    check_timestamps(&frames, pes[0].pts.unwrap());
    check_tone(&frames, usize::from(channels), tone);
    let s = t.stats();
    assert_eq!(s.decode_errors, 0);
    assert_eq!(s.skipped_bytes, 0);
    assert_eq!(s.reanchors, 0);
    assert_eq!(s.encoded_frames, frames.len() as u64);
    // Every source sample is covered, and no more than one frame beyond.
    let format = t.source_format().unwrap();
    let source_ticks = s.decoded_frames
        * u64::from(match format.codec {
            "MP2" => 1152u32,
            "AC-3" | "E-AC-3" => 1536,
            _ => 1024,
        })
        * 90_000
        / u64::from(format.sample_rate);
    let opus_ticks = frames.len() as u64 * FRAME_TICKS;
    assert!(opus_ticks >= source_ticks && opus_ticks < source_ticks + FRAME_TICKS);
    Some(t)
}

#[test]
fn aac_stereo_48k_becomes_stereo_opus_at_440hz() {
    let Some(t) = run_file("h264_aac.ts", SourceCodec::AacAdts, 2, 440.0) else {
        return;
    };
    assert_eq!(
        t.source_format(),
        Some(SourceFormat {
            codec: "AAC-LC",
            sample_rate: 48_000,
            channels: 2
        })
    );
    assert_eq!(t.stats().decoded_frames, 189);
}

/// `--features ffmpeg`: AC-3, E-AC-3 5.1 and AAC 5.1 (which symphonia does not play) through
/// FFmpeg's decoders; 5.1 comes out stereo (ITU-R BS.775 downmix) at the source's pitch.
#[cfg(feature = "ffmpeg")]
mod ffmpeg_sources {
    use super::*;

    fn format(name: &str, codec: SourceCodec) -> Option<SourceFormat> {
        run_file(name, codec, 2, 440.0).and_then(|t| t.source_format())
    }

    #[test]
    fn ac3_stereo_becomes_stereo_opus_at_440hz() {
        let Some(f) = format("h264_ac3.ts", SourceCodec::Ac3) else {
            return;
        };
        assert_eq!((f.codec, f.sample_rate, f.channels), ("AC-3", 48_000, 2));
    }

    #[test]
    fn eac3_5_1_is_downmixed_to_stereo_opus() {
        let Some(f) = format("h264_eac3_51.ts", SourceCodec::Eac3) else {
            return;
        };
        assert_eq!((f.codec, f.sample_rate, f.channels), ("E-AC-3", 48_000, 6));
    }

    #[test]
    fn aac_5_1_is_decoded_by_ffmpeg_and_downmixed() {
        let Some(f) = format("h264_aac_51.ts", SourceCodec::AacAdts) else {
            return;
        };
        assert_eq!((f.codec, f.channels), ("AAC (FFmpeg)", 6));
    }
}

#[test]
fn aac_mono_44k_becomes_mono_opus_at_1khz() {
    let Some(t) = run_file("h264_aac_mono44.ts", SourceCodec::AacAdts, 1, 1000.0) else {
        return;
    };
    assert_eq!(t.source_format().unwrap().sample_rate, 44_100);
}

#[test]
fn mp2_stereo_44k_becomes_stereo_opus_at_660hz() {
    let Some(t) = run_file("h264_mp2.ts", SourceCodec::MpegAudio, 2, 660.0) else {
        return;
    };
    assert_eq!(t.source_format().unwrap().codec, "MP2");
}

#[test]
fn aac_latm_becomes_stereo_opus_at_880hz() {
    run_file("aac_latm.ts", SourceCodec::AacLatm, 2, 880.0);
}

/// The decoder's output sample k of a frame is the source at `pts + k / 48000`: encoder
/// lookahead and resampler delay are compensated (checked by cross-correlation with the
/// ideal signal, for a resampled and a 48 kHz source).
#[test]
fn decoded_output_lines_up_with_source_time() {
    for rate in [48_000u32, 44_100, 32_000] {
        let anchor = 90_000u64;
        // A 200 ms burst of 40 tones (100 Hz to 8 kHz, fixed pseudo-random phases) in a Hann
        // envelope, starting 100 ms in: its autocorrelation has one sharp peak.
        let tones: Vec<(f64, f64)> = (0..40u32)
            .map(|i| {
                let h = i.wrapping_mul(2_654_435_761) >> 8;
                (100.0 + 197.3 * f64::from(i), f64::from(h % 6283) / 1000.0)
            })
            .collect();
        let signal = |t: f64| -> f32 {
            let (start, len) = (0.1, 0.2);
            if !(start..start + len).contains(&t) {
                return 0.0;
            }
            let pi2 = 2.0 * std::f64::consts::PI;
            let env = 0.5 - 0.5 * (pi2 * (t - start) / len).cos();
            let sum: f64 = tones.iter().map(|(f, ph)| (pi2 * f * t + ph).sin()).sum();
            (env * sum * 0.02) as f32
        };
        let mut p = Pipeline::new(TranscodeConfig::default());
        let mut out = Vec::new();
        let mut stats = TranscodeStats::default();
        let frame = 1024usize;
        let total = rate as usize / 2; // 500 ms
        for (i, start) in (0..total).step_by(frame).enumerate() {
            let pts = anchor + start as u64 * 90_000 / u64::from(rate);
            assert!(p.timing(rate, frame as u32, Some(pts), &mut out, &mut stats));
            p.encoder_channels(1);
            p.planes[0].clear();
            p.planes[0].extend((start..start + frame).map(|n| signal(n as f64 / f64::from(rate))));
            p.feed_planes(frame, &mut out, &mut stats);
            assert_eq!(stats.reanchors, 0, "frame {i}");
        }
        p.flush(&mut out, &mut stats);
        check_timestamps(&out, anchor);
        let decoded = decode(&out, 1);
        let ideal: Vec<f32> = (0..decoded.len())
            .map(|n| signal(n as f64 / f64::from(OPUS_RATE)))
            .collect();
        let lag = (-200i32..=200)
            .map(|lag| {
                let c: f32 = (4800..decoded.len() - 4800)
                    .map(|n| decoded[n] * ideal[(n as i32 + lag) as usize])
                    .sum();
                (lag, c)
            })
            .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a })
            .0;
        assert!(
            lag.abs() <= 1,
            "{rate} Hz: decoded output is {lag} samples off"
        );
    }
}

#[test]
fn pts_jump_reanchors_at_the_new_pts() {
    let Some(data) = read("h264_aac.ts") else {
        return;
    };
    let (codec, mut pes) = audio_track(&data);
    // Forward by 10 s from PES 6, then backwards by 20 s from PES 12.
    let (jump, back) = (6, 12);
    for p in &mut pes[jump..] {
        p.pts = p.pts.map(|t| t + 900_000);
    }
    for p in &mut pes[back..] {
        p.pts = p.pts.map(|t| t + 100_000_000 - 1_800_000);
    }
    let mut t = Transcoder::new(codec);
    let frames = transcode_all(&mut t, &pes);
    assert_eq!(t.stats().reanchors, 2);
    let starts: Vec<usize> = (1..frames.len())
        .filter(|&i| frames[i].pts_90k != frames[i - 1].pts_90k + FRAME_TICKS)
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(frames[starts[0]].pts_90k, pes[jump].pts.unwrap());
    assert_eq!(frames[starts[1]].pts_90k, pes[back].pts.unwrap());
    // The segment before each jump ended with its last partial frame, not earlier.
    let end = |i: usize| frames[i - 1].pts_90k + FRAME_TICKS;
    assert!(end(starts[0]) >= pes[jump].pts.unwrap() - 900_000);
    assert!(end(starts[0]) < pes[jump].pts.unwrap() - 900_000 + FRAME_TICKS);
    check_tone(&frames[starts[0]..starts[1]], 2, 440.0);
}

#[test]
fn pts_jitter_under_a_frame_does_not_reanchor() {
    let Some(data) = read("h264_mp2.ts") else {
        return;
    };
    let (codec, mut pes) = audio_track(&data);
    let first = pes[0].pts.unwrap();
    for (i, p) in pes.iter_mut().enumerate().skip(1) {
        p.pts = p.pts.map(|t| if i % 2 == 0 { t + 900 } else { t - 900 });
    }
    let mut t = Transcoder::new(codec);
    let frames = transcode_all(&mut t, &pes);
    assert_eq!(t.stats().reanchors, 0);
    check_timestamps(&frames, first);
}

#[test]
fn payload_split_anywhere_gives_the_same_frames() {
    let Some(data) = read("h264_aac_mono44.ts") else {
        return;
    };
    let (codec, pes) = audio_track(&data);
    let mut whole = Transcoder::new(codec);
    let expected = transcode_all(&mut whole, &pes);
    // The same bytes in odd-sized pieces; each PTS stays with the piece its PES starts in.
    let mut split = Transcoder::new(codec);
    let mut out = Vec::new();
    for p in &pes {
        for (i, piece) in p.data.chunks(97).enumerate() {
            split
                .push(piece, if i == 0 { p.pts } else { None }, &mut out)
                .unwrap();
        }
    }
    split.flush(&mut out);
    assert_eq!(out, expected);
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let mut x = 0x1234_5678u32;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for codec in [
        SourceCodec::AacAdts,
        SourceCodec::AacLatm,
        SourceCodec::MpegAudio,
    ] {
        let mut t = Transcoder::new(codec);
        let mut out = Vec::new();
        for i in 0..300u64 {
            let len = (rand() % 2000) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            // Plenty of sync-looking bytes.
            for _ in 0..len / 16 {
                let at = rand() as usize % len.max(1);
                if let Some(b) = payload.get_mut(at) {
                    *b = if rand() % 2 == 0 { 0xFF } else { 0x56 };
                }
            }
            let pts = (i % 3 != 0).then_some(i * 1920);
            match t.push(&payload, pts, &mut out) {
                Ok(()) => {}
                // Random headers may well claim HE-AAC or a PCE: fine, start again.
                Err(TranscodeError::Unsupported(_)) => t.reset(),
            }
        }
        t.flush(&mut out);
        let s = t.stats();
        assert!(s.skipped_bytes > 0, "{codec:?}: {s:?}");
    }
}

#[test]
fn corrupt_frames_become_counted_silence_and_time_goes_on() {
    for name in ["h264_aac.ts", "h264_mp2.ts"] {
        let Some(data) = read(name) else {
            return;
        };
        let (codec, mut pes) = audio_track(&data);
        // Scramble the bodies of all frames of PES 4 (headers intact, so framing holds).
        let p = &mut pes[4].data;
        let mut at = 0;
        while at + 7 < p.len() {
            let len = match codec {
                SourceCodec::AacAdts => aac::parse_adts(&p[at..]).unwrap().frame_len,
                _ => mpa::parse_header(&p[at..]).unwrap().frame_len,
            };
            let end = (at + len).min(p.len());
            for (i, b) in p[at + 9..end].iter_mut().enumerate() {
                *b ^= (i as u8).wrapping_mul(37) | 0x11;
            }
            at += len;
        }
        let mut t = Transcoder::new(codec);
        let frames = transcode_all(&mut t, &pes);
        let s = t.stats();
        assert!(s.decode_errors > 0, "{name}: {s:?}");
        assert_eq!(s.reanchors, 0, "{name}");
        assert_eq!(
            s.decode_errors + s.decoded_frames,
            s.source_frames,
            "{name}"
        );
        check_timestamps(&frames, pes[0].pts.unwrap());
    }
}

#[test]
fn frames_before_the_first_pts_are_dropped() {
    let Some(data) = read("h264_aac.ts") else {
        return;
    };
    let (codec, pes) = audio_track(&data);
    let mut t = Transcoder::new(codec);
    let mut out = Vec::new();
    t.push(&pes[0].data, None, &mut out).unwrap();
    assert!(out.is_empty());
    let dropped = t.stats().frames_without_pts;
    assert!(dropped > 0);
    for p in &pes[1..] {
        t.push(&p.data, p.pts, &mut out).unwrap();
    }
    check_timestamps(&out, pes[1].pts.unwrap());
}

#[test]
fn reset_starts_again_at_the_next_pts() {
    let Some(data) = read("h264_aac.ts") else {
        return;
    };
    let (codec, pes) = audio_track(&data);
    let mut t = Transcoder::new(codec);
    let first = transcode_all(&mut t, &pes[..5]);
    t.reset();
    let again = transcode_all(&mut t, &pes);
    assert_eq!(t.channels(), Some(2));
    check_timestamps(&first, pes[0].pts.unwrap());
    check_timestamps(&again, pes[0].pts.unwrap());
}

/// Writes bits MSB first (for hand-made LATM headers).
struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    fn put(&mut self, n: u32, v: u32) {
        for i in (0..n).rev() {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let bit = ((v >> i) & 1) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= bit << (7 - self.bits % 8);
            self.bits += 1;
        }
    }
}

/// A LOAS frame with a StreamMuxConfig (audioMuxVersion 0) around `asc` bits and one
/// payload.
fn loas_frame(asc: &[(u32, u32)], payload: &[u8]) -> Vec<u8> {
    let mut w = BitWriter {
        bytes: Vec::new(),
        bits: 0,
    };
    w.put(1, 0); // useSameStreamMux
    w.put(1, 0); // audioMuxVersion
    w.put(1, 1); // allStreamsSameTimeFraming
    w.put(6, 0); // numSubFrames
    w.put(4, 0); // numProgram
    w.put(3, 0); // numLayer
    for &(n, v) in asc {
        w.put(n, v);
    }
    w.put(3, 0); // frameLengthType
    w.put(8, 0xFF); // latmBufferFullness
    w.put(1, 0); // otherDataPresent
    w.put(1, 0); // crcCheckPresent
    w.put(8, payload.len() as u32);
    for &b in payload {
        w.put(8, u32::from(b));
    }
    let len = w.bytes.len();
    let mut frame = vec![0x56, 0xE0 | (len >> 8) as u8, len as u8];
    frame.extend_from_slice(&w.bytes);
    frame
}

/// Explicit-SBR HE-AAC in LATM: a LOAS frame with its StreamMuxConfig and a made-up payload.
fn he_aac_loas_frame() -> Vec<u8> {
    // Explicit SBR: AOT 5, 24 kHz core, stereo, 48 kHz extension, AOT 2, GA flags.
    let he = [(5, 5), (4, 6), (4, 2), (4, 3), (5, 2), (3, 0)];
    loas_frame(&he, &[0x21, 0x00, 0x49, 0x90, 0x02, 0x19, 0x00, 0x23, 0x80])
}

/// With FFmpeg's decoders, HE-AAC is theirs: never "unsupported"; a frame they reject is
/// silence, counted.
#[cfg(feature = "ffmpeg")]
#[test]
fn he_aac_goes_to_ffmpeg() {
    let frame = he_aac_loas_frame();
    let mut t = Transcoder::new(SourceCodec::AacLatm);
    let mut out = Vec::new();
    for i in 0..2 * u64::from(UNSUPPORTED_AFTER) {
        t.push(&frame, Some(i * 1920), &mut out)
            .expect("FFmpeg takes HE-AAC");
    }
    assert_eq!(t.stats().source_frames, 2 * u64::from(UNSUPPORTED_AFTER));
}

#[cfg(not(feature = "ffmpeg"))]
#[test]
fn he_aac_is_unsupported_with_a_reason() {
    let frame = he_aac_loas_frame();
    let mut t = Transcoder::new(SourceCodec::AacLatm);
    let mut out = Vec::new();
    // Declared after UNSUPPORTED_AFTER frames in a row (one might be a corrupt header).
    let mut pts = 0;
    let mut push = |t: &mut Transcoder, data: &[u8]| {
        pts += 1920;
        t.push(data, Some(pts), &mut out)
    };
    for _ in 1..UNSUPPORTED_AFTER {
        push(&mut t, &frame).unwrap();
    }
    let err = push(&mut t, &frame).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported: HE-AAC (SBR/PS) is not supported by the AAC decoder (FFmpeg's decoders \
         play it: rebuild with --features ffmpeg)"
    );
    // Sticky: the caller lists the track as unsupported and stops feeding it.
    assert!(push(&mut t, &frame).is_err());
    // A plain AAC-LC config is fine.
    let lc = [(5, 2), (4, 3), (4, 2), (3, 0)];
    let mut t = Transcoder::new(SourceCodec::AacLatm);
    let lc_frame = loas_frame(&lc, &[0x21, 0x00]);
    for _ in 0..2 * UNSUPPORTED_AFTER {
        push(&mut t, &lc_frame).unwrap();
    }
    // ADTS: the Main profile is not decodable either.
    let mut t = Transcoder::new(SourceCodec::AacAdts);
    let adts = [0xFF, 0xF1, 3 << 2, 2 << 6, 0x01, 0x1F, 0xFC, 0x00];
    let results: Vec<_> = (0..UNSUPPORTED_AFTER)
        .map(|_| push(&mut t, &adts))
        .collect();
    let err = results.last().unwrap().clone().unwrap_err();
    assert!(err.to_string().contains("Main"), "{err}");
}

#[test]
fn one_corrupt_header_does_not_condemn_the_stream() {
    let Some(data) = read("h264_aac.ts") else {
        return;
    };
    let (codec, mut pes) = audio_track(&data);
    // The second ADTS frame of PES 3 claims the Main profile.
    let p = &mut pes[3].data;
    let second = aac::parse_adts(p).unwrap().frame_len;
    p[second + 2] &= 0x3F;
    let mut t = Transcoder::new(codec);
    let frames = transcode_all(&mut t, &pes);
    let s = t.stats();
    // (FFmpeg's decoder, which takes the frame, may well decode it.)
    let errors = if cfg!(feature = "ffmpeg") {
        0..=1
    } else {
        1..=1
    };
    assert!(errors.contains(&s.decode_errors), "{s:?}");
    assert_eq!(s.reanchors, 0);
    check_timestamps(&frames, pes[0].pts.unwrap());
    check_tone(&frames, 2, 440.0);
}

/// With `TSBRIDGE_TRANSCODE_OGG=dir`, writes each file's Opus output as Ogg Opus there, for
/// an outside decoder (`ffmpeg -c:a libopus -i x.ogg`).
fn dump_ogg(name: &str, frames: &[OpusFrame], channels: u8) {
    let Some(dir) = std::env::var_os("TSBRIDGE_TRANSCODE_OGG") else {
        return;
    };
    fn crc(data: &[u8]) -> u32 {
        data.iter().fold(0u32, |mut c, &b| {
            c ^= u32::from(b) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04C1_1DB7
                } else {
                    c << 1
                };
            }
            c
        })
    }
    fn page(out: &mut Vec<u8>, flags: u8, granule: u64, seq: u32, packet: &[u8]) {
        let start = out.len();
        out.extend_from_slice(b"OggS\0");
        out.push(flags);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let lacing = packet.len() / 255 + 1;
        out.push(lacing as u8);
        out.extend(std::iter::repeat_n(255u8, lacing - 1));
        out.push((packet.len() % 255) as u8);
        out.extend_from_slice(packet);
        let c = crc(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&c.to_le_bytes());
    }
    let mut ogg = Vec::new();
    let mut head = b"OpusHead\x01".to_vec();
    head.push(channels);
    head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip: already compensated
    head.extend_from_slice(&OPUS_RATE.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]);
    page(&mut ogg, 2, 0, 0, &head);
    page(&mut ogg, 0, 0, 1, b"OpusTags\x04\0\0\0test\0\0\0\0");
    for (i, f) in frames.iter().enumerate() {
        let last = if i + 1 == frames.len() { 4 } else { 0 };
        page(&mut ogg, last, (i as u64 + 1) * 960, i as u32 + 2, &f.data);
    }
    let path = PathBuf::from(dir).join(name).with_extension("ogg");
    std::fs::write(&path, ogg).unwrap();
}
