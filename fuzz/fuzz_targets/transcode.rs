//! The audio transcoder (AAC ADTS / LATM, MPEG audio, AC-3 → Opus) on arbitrary PES payloads: framing,
//! decoding (symphonia), resampling, downmixing and encoding (mousiki), with PTS that jump,
//! repeat or go missing, discontinuities, flushes and resets in between.
//!
//! Input: byte 0 picks the source codec; then records of `[op, len, pts…]` + payload.
//! Properties: every Opus frame is 960 samples with 1..=1275 bytes (RFC 6716 §3.2.1), the
//! counters add up, and an `Unsupported` verdict is sticky until `reset`.
//!
//! Build it without debug assertions (`cargo fuzz run -O transcode`): mousiki keeps a
//! `debug_assert!(false)` on a CELT edge case that its release build handles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsbridge::codec::transcode::{SourceCodec, Transcoder, FRAME_SAMPLES};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let codec = match pick % 4 {
        0 => SourceCodec::AacAdts,
        1 => SourceCodec::AacLatm,
        2 => SourceCodec::MpegAudio,
        // AC-3 / E-AC-3 sync frames: decoded with `--features ffmpeg`, else `Unsupported`
        // after the framing (our A/52 header parser) found a frame.
        _ => SourceCodec::Ac3,
    };
    let mut t = Transcoder::new(codec);
    let mut out = Vec::new();
    let mut pts: u64 = 1 << 33; // somewhere on an unwrapped 64-bit timeline
    let mut unsupported = false;
    let mut produced = 0u64;
    // Bounded work per input: the encoder is the slow part.
    for _ in 0..64 {
        let [op, len, r @ ..] = rest else { break };
        let (op, len) = (*op, usize::from(*len) * 8 + 1);
        let payload = &r[..len.min(r.len())];
        rest = &r[payload.len()..];
        match op % 16 {
            0 => t.discontinuity(),
            1 => t.flush(&mut out),
            2 => {
                t.reset();
                unsupported = false;
            }
            _ => {}
        }
        let given = match op >> 4 {
            0 => None,
            1 => Some(pts.wrapping_sub(90_000)),      // backwards
            2 => Some(pts + (1 << 20)),                // far forward
            _ => Some(pts + u64::from(op) * 100),      // ordinary steps
        };
        if let Some(p) = given {
            pts = p;
        }
        match t.push(payload, given, &mut out) {
            Ok(()) => assert!(!unsupported, "Unsupported is sticky until reset"),
            Err(_) => unsupported = true,
        }
        for f in out.drain(..) {
            assert_eq!(f.samples, FRAME_SAMPLES);
            assert!((1..=1275).contains(&f.data.len()), "{} bytes", f.data.len());
            produced += 1;
        }
    }
    t.flush(&mut out);
    produced += out.len() as u64;
    let s = t.stats();
    assert_eq!(s.encoded_frames, produced, "every encoded frame is handed out");
    assert!(s.decoded_frames + s.decode_errors <= s.source_frames);
    if let Some(ch) = t.channels() {
        assert!(ch == 1 || ch == 2);
    }
});
