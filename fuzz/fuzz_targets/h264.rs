//! H.264 elementary stream: `parse_sps` and `recovery_point` (on the input as one NAL unit, and
//! on every NAL unit of it), `nal_units`, `H264Assembler` (the input as one PES) and the RFC 6184
//! payloader.
//!
//! Properties:
//! - `nal_units` yields non-empty units, without trailing zero bytes or start codes inside;
//! - `parse_sps` gives a non-zero size when it accepts; `recovery_point` never panics, and an
//!   access unit marked as a recovery point is no keyframe and has an SEI NAL unit;
//! - the payloader's output depacketizes (single NAL / STAP-A / FU-A) back to exactly the
//!   sendable NAL units of the access unit, each payload within `max_payload`, the marker on
//!   the last payload only.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tsbridge::codec::h264::{nal_units, parse_sps, recovery_point, AccessUnit, H264Assembler};
use tsbridge::rtp::{H264Packetizer, Payload};
use tsbridge::ts::{Pes, Pid};

/// NAL units back out of RFC 6184 payloads.
fn depacketize(payloads: &[Payload]) -> Vec<Vec<u8>> {
    let mut nals = Vec::new();
    let mut fu: Option<Vec<u8>> = None;
    for p in payloads {
        let d = &p.data[..];
        match d[0] & 0x1F {
            24 => {
                assert!(fu.is_none(), "STAP-A inside an FU-A run");
                let mut rest = &d[1..];
                let mut n = 0;
                while !rest.is_empty() {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    nals.push(rest[2..2 + len].to_vec());
                    rest = &rest[2 + len..];
                    n += 1;
                }
                assert!(n >= 2, "STAP-A with {n} NAL units");
            }
            28 => {
                let (ind, hdr) = (d[0], d[1]);
                assert!(d.len() > 2, "empty FU-A");
                let start = hdr & 0x80 != 0;
                let end = hdr & 0x40 != 0;
                assert!(!(start && end), "FU-A both start and end");
                if start {
                    assert!(fu.is_none(), "FU-A start inside a run");
                    fu = Some(vec![(ind & 0xE0) | (hdr & 0x1F)]);
                }
                let buf = fu.as_mut().expect("FU-A continuation without start");
                buf.extend_from_slice(&d[2..]);
                if end {
                    nals.push(fu.take().unwrap());
                }
            }
            _ => {
                assert!(fu.is_none(), "single NAL inside an FU-A run");
                nals.push(d.to_vec());
            }
        }
    }
    assert!(fu.is_none(), "unfinished FU-A");
    nals
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    if let Some(sps) = parse_sps(data) {
        assert!(sps.width > 0 && sps.height > 0);
    }
    let _ = recovery_point(data);
    for nal in nal_units(data) {
        assert!(!nal.is_empty());
        assert_ne!(nal.last(), Some(&0));
        assert!(
            !nal.windows(3).any(|w| w == [0, 0, 1]),
            "start code inside a NAL unit"
        );
        if let Some(sps) = parse_sps(nal) {
            assert!(sps.width > 0 && sps.height > 0);
        }
        let _ = recovery_point(nal);
    }

    // The input as one PES (PTS from the control byte, sometimes near the 33-bit wrap).
    let pts = if ctl & 0x80 != 0 {
        (1 << 33) - 1 - u64::from(ctl)
    } else {
        u64::from(ctl)
    };
    let pes = Pes {
        pid: Pid(0x100),
        pts: Some(pts),
        dts: (ctl & 0x40 != 0).then_some(pts.saturating_sub(3000)),
        random_access: ctl & 1 != 0,
        discontinuity: false,
        data: Bytes::copy_from_slice(data),
    };
    let mut asm = H264Assembler::new();
    let mut aus: Vec<AccessUnit> = Vec::new();
    asm.push(&pes, &mut aus);
    asm.push(&pes, &mut aus); // again: the SPS/PPS caches are now filled
    for au in &aus {
        assert!(au.pts < 1 << 33 && au.dts < 1 << 33);
        if au.recovery.is_point() {
            assert!(!au.keyframe, "a recovery point that is an IDR");
            assert!(
                nal_units(&au.data).any(|n| n[0] & 0x1F == 6),
                "a recovery point without its SEI"
            );
        }
    }

    let max_payload = [3, 4, 40, 1120, 65_535][usize::from(ctl >> 2) % 5];
    let mut p = H264Packetizer::new(max_payload);
    let mut payloads = Vec::new();
    for au in aus.iter().map(|a| &a.data[..]).chain([data]) {
        payloads.clear();
        p.packetize(au, &mut payloads);
        let expected: Vec<&[u8]> = nal_units(au)
            .filter(|n| !matches!(n[0] & 0x1F, 0 | 9 | 12 | 24..=31))
            .collect();
        assert!(payloads
            .iter()
            .all(|p| p.data.len() <= max_payload && !p.data.is_empty()));
        if let Some((last, rest)) = payloads.split_last() {
            assert!(last.marker && rest.iter().all(|p| !p.marker), "marker bits");
        }
        let got = depacketize(&payloads);
        assert_eq!(
            got, expected,
            "payloads do not depacketize to the access unit"
        );
    }
});
