//! AAC / MPEG audio framing of TS audio PES (for the transcoder): ADTS and MPEG audio headers at
//! every offset, and LOAS/LATM frames (`loas_frame_len` + `Latm::parse_frame`) walked through the
//! input as the transcoder's framer does, with the LATM config state carried across frames.
//!
//! Properties: accepted headers are self-consistent (frame length covers the header, sane
//! rates), and LATM payload ranges lie inside the buffer they index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsbridge::codec::aac::{loas_frame_len, parse_adts, Latm};
use tsbridge::codec::mpa;

fuzz_target!(|data: &[u8]| {
    for at in 0..data.len().min(64) {
        let b = &data[at..];
        if let Some(h) = parse_adts(b) {
            assert!(h.frame_len > h.header_len);
            assert!((1..=4).contains(&h.raw_blocks));
            let _ = h.samples();
            let _ = h.config.unsupported();
        }
        if let Some(h) = mpa::parse_header(b) {
            assert!(h.frame_len >= 4, "MPEG audio frame shorter than its header");
            assert!(h.sample_rate > 0 && h.samples > 0);
            let _ = h.name();
        }
    }

    let mut latm = Latm::new();
    let mut buf = Vec::new();
    let mut payloads = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(len) = loas_frame_len(rest) else {
            rest = &rest[1..];
            continue;
        };
        assert!(len >= 3);
        let frame = &rest[..len.min(rest.len())];
        buf.clear();
        payloads.clear();
        if let Ok(cfg) = latm.parse_frame(frame, &mut buf, &mut payloads) {
            let _ = cfg.unsupported();
            for r in &payloads {
                assert!(r.start <= r.end && r.end <= buf.len());
            }
        }
        rest = &rest[frame.len()..];
    }
});
