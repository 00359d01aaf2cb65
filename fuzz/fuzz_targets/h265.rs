//! H.265 elementary stream: `h265::parse_sps` (on the input as one NAL unit, and on every NAL
//! unit of it), `H265Assembler` (the input as one PES) and the RFC 7798 payloader.
//!
//! Properties:
//! - `parse_sps` gives a non-zero size, chroma_format_idc 0..=3 and a bit depth 8..=16 when it
//!   accepts;
//! - the assembler's access units are Annex B with 4-byte start codes and hold no AUD, filler
//!   or truncated NAL unit; once VPS, SPS and PPS were seen, every keyframe has all three;
//! - the payloader's output depacketizes (single NAL / AP / FU) back to exactly the sendable
//!   NAL units of the access unit, each payload within `max_payload`, AP headers with the OR of
//!   the F bits and the lowest LayerId and TID, the marker on the last payload only.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tsbridge::codec::h264::{nal_units, AccessUnit};
use tsbridge::codec::h265::{parse_sps, H265Assembler, NalType};
use tsbridge::rtp::{H265Packetizer, Payload};
use tsbridge::ts::{Pes, Pid};

/// Type, LayerId and TID of a 2-byte NAL unit / payload header.
fn fields(h: &[u8]) -> (u8, u16, u16) {
    let h16 = u16::from_be_bytes([h[0], h[1]]);
    ((h[0] >> 1) & 0x3F, (h16 >> 3) & 0x3F, h16 & 7)
}

/// NAL units back out of RFC 7798 payloads (no DONL).
fn depacketize(payloads: &[Payload]) -> Vec<Vec<u8>> {
    let mut nals = Vec::new();
    let mut fu: Option<Vec<u8>> = None;
    for p in payloads {
        let d = &p.data[..];
        assert!(d.len() >= 2, "payload shorter than its header");
        match fields(d).0 {
            48 => {
                assert!(fu.is_none(), "AP inside an FU run");
                let mut rest = &d[2..];
                let (mut n, mut f, mut layer_id, mut tid) = (0, 0, u16::MAX, u16::MAX);
                while !rest.is_empty() {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let nal = &rest[2..2 + len];
                    let (_, l, t) = fields(nal);
                    f |= nal[0] & 0x80;
                    layer_id = layer_id.min(l);
                    tid = tid.min(t);
                    nals.push(nal.to_vec());
                    rest = &rest[2 + len..];
                    n += 1;
                }
                assert!(n >= 2, "AP with {n} NAL units");
                assert_eq!(d[0] & 0x80, f, "AP F bit");
                assert_eq!(fields(d), (48, layer_id, tid), "AP LayerId/TID");
            }
            49 => {
                assert!(d.len() > 3, "empty FU");
                let start = d[2] & 0x80 != 0;
                let end = d[2] & 0x40 != 0;
                assert!(!(start && end), "FU both start and end");
                let header = [(d[0] & 0x81) | (d[2] & 0x3F) << 1, d[1]];
                if start {
                    assert!(fu.is_none(), "FU start inside a run");
                    fu = Some(header.to_vec());
                }
                let buf = fu.as_mut().expect("FU continuation without start");
                assert_eq!(buf[..2], header, "FU header changed within a run");
                buf.extend_from_slice(&d[3..]);
                if end {
                    nals.push(fu.take().unwrap());
                }
            }
            _ => {
                assert!(fu.is_none(), "single NAL inside an FU run");
                nals.push(d.to_vec());
            }
        }
    }
    assert!(fu.is_none(), "unfinished FU");
    nals
}

fn check_sps(nal: &[u8]) {
    if let Some(sps) = parse_sps(nal) {
        assert!(sps.width > 0 && sps.height > 0);
        assert!(sps.chroma_format_idc <= 3);
        assert!((8..=16).contains(&sps.bit_depth));
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    check_sps(data);
    for nal in nal_units(data) {
        check_sps(nal);
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
    let mut asm = H265Assembler::new();
    let mut aus: Vec<AccessUnit> = Vec::new();
    asm.push(&pes, &mut aus);
    let first_pass = aus.len();
    asm.push(&pes, &mut aus); // again: the parameter set caches are now filled
    let has = |t: NalType| nal_units(data).any(|n| NalType::of(n) == Some(t));
    let all_params = has(NalType::VPS) && has(NalType::SPS) && has(NalType::PPS);
    for (i, au) in aus.iter().enumerate() {
        assert!(au.pts < 1 << 33 && au.dts < 1 << 33);
        assert!(au.data.starts_with(&[0, 0, 0, 1]));
        let types: Vec<Option<NalType>> = nal_units(&au.data).map(NalType::of).collect();
        assert!(
            types
                .iter()
                .all(|t| t.is_some_and(|t| t != NalType::AUD && t != NalType::FD)),
            "AUD, filler or a truncated NAL unit in an access unit"
        );
        if au.keyframe && all_params && i >= first_pass {
            for t in [NalType::VPS, NalType::SPS, NalType::PPS] {
                assert!(types.contains(&Some(t)), "keyframe without {t:?}");
            }
        }
    }

    let max_payload = [4, 5, 40, 1120, 65_535][usize::from(ctl >> 2) % 5];
    let mut p = H265Packetizer::new(max_payload);
    let mut payloads = Vec::new();
    for au in aus.iter().map(|a| &a.data[..]).chain([data]) {
        payloads.clear();
        p.packetize(au, &mut payloads);
        let expected: Vec<&[u8]> = nal_units(au)
            .filter(|n| n.len() >= 2 && !matches!((n[0] >> 1) & 0x3F, 35 | 38 | 48..=63))
            .collect();
        assert!(payloads
            .iter()
            .all(|p| p.data.len() <= max_payload && p.data.len() >= 2));
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
