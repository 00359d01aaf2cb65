//! H.265 RTP payloader, RFC 7798 without decoding order numbers (`sprop-max-don-diff` 0, so
//! no DONL/DOND fields): single NAL unit packets (§4.4.1), aggregation packets (AP, §4.4.2) and
//! fragmentation units (FU, §4.4.3).
//!
//! The same shapes as RFC 6184's single NAL unit / STAP-A / FU-A, with HEVC's 2-byte NAL unit
//! header as the payload header: F (1 bit), type (6), LayerId (6), TID (3).

use super::nal::{NalPacketizer, NalSyntax};
use crate::codec::h265::NalType;

/// Aggregation packet payload header type (RFC 7798 §4.4.2).
pub const AP: u8 = 48;
/// Fragmentation unit payload header type (RFC 7798 §4.4.3).
pub const FU: u8 = 49;

/// The F bit of the first header byte.
const F_BIT: u8 = 0x80;
/// F, LayerId and TID (nuh_temporal_id_plus1) in the 16-bit header.
const F: u16 = 0x8000;
const LAYER_ID: u16 = 0x01F8;
const TID: u16 = 0x0007;
/// Type bits of the first header byte.
const TYPE_SHIFT: u8 = 1;
/// Types 48–63 are unspecified in H.265 and used by RFC 7798 (AP, FU, PACI) or reserved.
const FIRST_RTP_TYPE: u8 = AP;

/// H.265's NAL unit header: two bytes, F (1 bit), type (6), LayerId (6), TID (3).
#[derive(Clone, Copy, Debug)]
pub struct Hevc;

impl NalSyntax for Hevc {
    const HEADER_LEN: usize = 2;

    /// Not AUD (35) and filler data (38), which carry nothing over RTP, nor types 48–63,
    /// which the receiver would read as RTP aggregation, fragmentation or PACI packets, nor
    /// units shorter than the header.
    fn sendable(nal: &[u8]) -> bool {
        NalType::of(nal)
            .is_some_and(|t| t != NalType::AUD && t != NalType::FD && t.0 < FIRST_RTP_TYPE)
    }

    /// RFC 7798 §4.4.2: F ORed, the lowest LayerId and the lowest TID.
    fn merge(acc: u16, header: u16) -> u16 {
        (acc | header) & F | (acc & LAYER_ID).min(header & LAYER_ID) | (acc & TID).min(header & TID)
    }

    fn aggregate(merged: u16) -> u16 {
        merged | u16::from(AP << TYPE_SHIFT) << 8
    }

    /// The payload header keeps the unit's F, LayerId and TID with type FU; the FU header
    /// carries the unit's type.
    fn fu_prefix(nal: &[u8]) -> [u8; 3] {
        [
            (nal[0] & (F_BIT | 0x01)) | (FU << TYPE_SHIFT),
            nal[1],
            (nal[0] >> TYPE_SHIFT) & 0x3F,
        ]
    }
}

/// Packetizes H.265 access units for RTP, RFC 7798 without decoding order numbers
/// (`sprop-max-don-diff` 0): single NAL unit packets (§4.4.1), aggregation packets (§4.4.2)
/// and fragmentation units (§4.4.3); see [`NalPacketizer`].
pub type H265Packetizer = NalPacketizer<Hevc>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h264::nal_units;
    use crate::rtp::nal::{FU_END, FU_START};
    use crate::rtp::{Payload, DEFAULT_MAX_PAYLOAD};

    /// Annex B with 4-byte start codes.
    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(n);
        }
        v
    }

    /// A NAL unit of `len` bytes of type `t`, LayerId 0, TID 1, the body a counter that never
    /// forms a start code (no zero bytes).
    fn nal(t: u8, len: usize) -> Vec<u8> {
        nal_with(t, 0, 1, len)
    }

    /// A NAL unit with the given header fields.
    fn nal_with(t: u8, layer_id: u8, tid: u8, len: usize) -> Vec<u8> {
        let h = u16::from(t) << 9 | u16::from(layer_id) << 3 | u16::from(tid);
        let mut v = h.to_be_bytes().to_vec();
        v.extend((2..len).map(|i| (i % 251) as u8 + 1));
        v
    }

    fn run(p: &mut H265Packetizer, au: &[u8]) -> Vec<Payload> {
        let mut out = Vec::new();
        p.packetize(au, &mut out);
        out
    }

    /// Type, LayerId and TID of a 2-byte header.
    fn fields(h: &[u8]) -> (u8, u16, u16) {
        let h16 = u16::from_be_bytes([h[0], h[1]]);
        ((h[0] >> 1) & 0x3F, (h16 >> 3) & 0x3F, h16 & 7)
    }

    /// A small RFC 7798 depacketizer (no DONL): payloads back to NAL units; checks the
    /// structure on the way (AP header fields, FU start/end bits and headers).
    fn depacketize(payloads: &[Payload]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            let d = &p.data[..];
            assert!(d.len() >= 2, "payload shorter than its header");
            match fields(d).0 {
                0..=47 => {
                    assert!(fu.is_none(), "single NAL inside a fragmented one");
                    nals.push(d.to_vec());
                }
                AP => {
                    assert!(fu.is_none(), "AP inside a fragmented NAL");
                    let mut rest = &d[2..];
                    let (mut count, mut f) = (0, 0);
                    let (mut layer_id, mut tid) = (u16::MAX, u16::MAX);
                    while !rest.is_empty() {
                        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                        assert!(len >= 2 && 2 + len <= rest.len(), "bad AP size");
                        let n = &rest[2..2 + len];
                        let (_, l, t) = fields(n);
                        f |= n[0] & F_BIT;
                        layer_id = layer_id.min(l);
                        tid = tid.min(t);
                        nals.push(n.to_vec());
                        rest = &rest[2 + len..];
                        count += 1;
                    }
                    assert!(count >= 2, "AP with {count} NAL unit");
                    assert_eq!(d[0] & F_BIT, f, "AP F bit");
                    assert_eq!(fields(d), (AP, layer_id, tid), "AP LayerId/TID");
                }
                FU => {
                    assert!(d.len() > 3, "FU without data");
                    let (start, end) = (d[2] & FU_START != 0, d[2] & FU_END != 0);
                    assert!(!(start && end), "FU with start and end bits");
                    let t = d[2] & 0x3F;
                    assert!(t != AP && t != FU, "FU of an AP or FU");
                    // The original header: F, FuType, and LayerId/TID of the payload header.
                    let header = [(d[0] & (F_BIT | 1)) | t << 1, d[1]];
                    if start {
                        assert!(fu.is_none(), "FU start inside a fragmented NAL");
                        fu = Some(header.to_vec());
                    }
                    let buf = fu.as_mut().expect("FU without start");
                    assert_eq!(buf[..2], header, "FU header changed between fragments");
                    buf.extend_from_slice(&d[3..]);
                    if end {
                        nals.push(fu.take().unwrap());
                    }
                }
                t => panic!("unexpected payload type {t}"),
            }
        }
        assert!(fu.is_none(), "unfinished FU");
        nals
    }

    fn assert_markers(payloads: &[Payload]) {
        let markers: Vec<bool> = payloads.iter().map(|p| p.marker).collect();
        let mut expected = vec![false; payloads.len()];
        if let Some(last) = expected.last_mut() {
            *last = true;
        }
        assert_eq!(markers, expected);
    }

    #[test]
    fn single_nal_unit_goes_as_is_with_marker() {
        let slice = nal(1, 500);
        let out = run(&mut H265Packetizer::new(1200), &annexb(&[&slice]));
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], &slice[..]);
        assert!(out[0].marker);
    }

    #[test]
    fn small_nals_aggregate_into_one_ap() {
        let (vps, sps, pps, idr) = (nal(32, 24), nal(33, 42), nal(34, 7), nal(19, 100));
        let out = run(
            &mut H265Packetizer::new(1200),
            &annexb(&[&vps, &sps, &pps, &idr]),
        );
        assert_eq!(out.len(), 1);
        let d = &out[0].data;
        // Type 48, LayerId 0, TID 1.
        assert_eq!(d[..2], [AP << 1, 0x01]);
        let mut expected = d[..2].to_vec();
        for n in [&vps, &sps, &pps, &idr] {
            expected.extend_from_slice(&(n.len() as u16).to_be_bytes());
            expected.extend_from_slice(n);
        }
        assert_eq!(&d[..], &expected[..]);
        assert_eq!(d.len(), 2 + 2 + 24 + 2 + 42 + 2 + 7 + 2 + 100);
        assert!(out[0].marker);
    }

    #[test]
    fn ap_header_has_the_or_of_f_bits_and_lowest_layer_id_and_tid() {
        let a = nal_with(39, 3, 2, 10);
        let b = nal_with(1, 1, 5, 10);
        let out = run(&mut H265Packetizer::new(1200), &annexb(&[&a, &b]));
        assert_eq!(fields(&out[0].data), (AP, 1, 2));
        assert_eq!(out[0].data[0] & F_BIT, 0);
        let mut bad = nal_with(39, 0, 4, 10);
        bad[0] |= F_BIT;
        let out = run(&mut H265Packetizer::new(1200), &annexb(&[&bad, &b]));
        assert_eq!(out[0].data[0] & F_BIT, F_BIT);
        assert_eq!(fields(&out[0].data), (AP, 0, 4));
        assert_eq!(depacketize(&out), vec![bad, b]);
    }

    #[test]
    fn large_nal_is_split_into_fus_with_start_and_end_bits() {
        // 2500 bytes: 2-byte header + 2498 body bytes; 997 body bytes per FU → 997, 997, 504.
        let idr = nal_with(19, 33, 3, 2500);
        let out = run(&mut H265Packetizer::new(1000), &annexb(&[&idr]));
        let sizes: Vec<usize> = out.iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, [1000, 1000, 507]);
        for (i, p) in out.iter().enumerate() {
            // Payload header: type 49 with the NAL unit's LayerId (33: its top bit in the first
            // byte) and TID.
            assert_eq!(fields(&p.data), (FU, 33, 3));
            assert_eq!(p.data[0] & 1, 1);
            let start = if i == 0 { FU_START } else { 0 };
            let end = if i == out.len() - 1 { FU_END } else { 0 };
            // FU header: S, E, the NAL unit type (19).
            assert_eq!(p.data[2], start | end | 19);
        }
        // The original header is not repeated: FU payloads are the body.
        assert_eq!(&out[0].data[3..], &idr[2..999]);
        assert_eq!(&out[1].data[3..], &idr[999..1996]);
        assert_eq!(&out[2].data[3..], &idr[1996..]);
        assert_markers(&out);
        assert_eq!(depacketize(&out), vec![idr]);
    }

    #[test]
    fn parameter_sets_aggregate_and_a_large_irap_is_fragmented() {
        let (vps, sps, pps, sei, cra) = (
            nal(32, 24),
            nal(33, 42),
            nal(34, 7),
            nal(39, 600),
            nal(21, 5000),
        );
        let au = annexb(&[&vps, &sps, &pps, &sei, &cra]);
        let out = run(&mut H265Packetizer::new(1200), &au);
        // AP(VPS, SPS, PPS, SEI) = 2 + 26 + 44 + 9 + 602 = 683, then 5000 bytes of CRA in FUs.
        assert_eq!(fields(&out[0].data).0, AP);
        assert_eq!(out[0].data.len(), 683);
        assert!(out[1..].iter().all(|p| fields(&p.data).0 == FU));
        assert_markers(&out);
        assert_eq!(depacketize(&out), vec![vps, sps, pps, sei, cra]);
    }

    #[test]
    fn aggregation_stops_when_the_next_nal_does_not_fit() {
        // 2 + (2+500) + (2+500) = 1006 ≤ 1200; + (2+300) = 1308 > 1200.
        let (a, b, c) = (nal(39, 500), nal(39, 500), nal(1, 300));
        let out = run(&mut H265Packetizer::new(1200), &annexb(&[&a, &b, &c]));
        assert_eq!(out.len(), 2);
        assert_eq!(fields(&out[0].data).0, AP);
        assert_eq!(out[0].data.len(), 1006);
        assert_eq!(&out[1].data[..], &c[..]); // alone: a single NAL unit packet
        assert_eq!(depacketize(&out), vec![a, b, c]);
    }

    #[test]
    fn nal_of_exactly_max_payload_is_a_single_packet_and_one_more_byte_two_fus() {
        let slice = nal(1, 1200);
        let out = run(&mut H265Packetizer::new(1200), &annexb(&[&slice]));
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], &slice[..]);
        // 1201 bytes at 1200: body 1199 = 1197 + 2; never a start+end fragment.
        let slice = nal(1, 1201);
        let out = run(&mut H265Packetizer::new(1200), &annexb(&[&slice]));
        let sizes: Vec<usize> = out.iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, [1200, 5]);
        assert_eq!(out[0].data[2], FU_START | 1);
        assert_eq!(out[1].data[2], FU_END | 1);
        assert_eq!(depacketize(&out), vec![slice]);
    }

    #[test]
    fn marker_only_on_the_last_payload_of_the_access_unit() {
        let (vps, sps, pps, idr, slice) = (
            nal(32, 24),
            nal(33, 42),
            nal(34, 7),
            nal(19, 3000),
            nal(1, 900),
        );
        let mut p = H265Packetizer::new(1200);
        let mut out = Vec::new();
        p.packetize(&annexb(&[&vps, &sps, &pps, &idr]), &mut out);
        let first = out.len();
        assert_markers(&out);
        p.packetize(&annexb(&[&slice]), &mut out);
        assert_markers(&out[first..]);
        assert!(out[first - 1].marker && out[first].marker);
    }

    #[test]
    fn aud_filler_rtp_types_and_truncated_units_are_dropped() {
        let (aud, vps, sps, filler, idr, eos) = (
            vec![0x46, 0x01, 0x50],
            nal(32, 24),
            nal(33, 42),
            nal(38, 50),
            nal(19, 40),
            nal(36, 2),
        );
        let rtp_types: Vec<Vec<u8>> = (48..=63).map(|t| nal(t, 5)).collect();
        let mut nals: Vec<&[u8]> = vec![&aud[..], &vps[..], &[0x42][..], &sps[..], &filler[..]];
        nals.extend(rtp_types.iter().map(Vec::as_slice));
        nals.extend([&idr[..], &eos[..]]);
        let out = run(&mut H265Packetizer::new(1200), &annexb(&nals));
        assert_eq!(out.len(), 1);
        // The end-of-sequence NAL unit is only its header, and is sent.
        assert_eq!(depacketize(&out), vec![vps, sps, idr, eos]);
        // An access unit of nothing but an AUD gives nothing, not an empty marked packet.
        assert!(run(&mut H265Packetizer::new(1200), &annexb(&[&aud])).is_empty());
    }

    #[test]
    fn empty_input_gives_nothing() {
        let mut p = H265Packetizer::default();
        assert!(run(&mut p, &[]).is_empty());
        assert!(run(&mut p, &[0, 0, 0, 1]).is_empty());
        assert!(run(&mut p, &[0, 0, 1, 0x26, 0, 0, 1, 0x02]).is_empty());
        // Bytes without any start code are not a NAL unit.
        assert!(run(&mut p, &[0x26, 1, 2, 3]).is_empty());
    }

    #[test]
    fn max_payload_is_clamped() {
        assert_eq!(H265Packetizer::new(0).max_payload(), 4);
        assert_eq!(H265Packetizer::new(1 << 20).max_payload(), 65_535);
        assert_eq!(H265Packetizer::default().max_payload(), DEFAULT_MAX_PAYLOAD);
        // At the minimum every fragment carries one byte.
        let slice = nal(1, 6);
        let out = run(&mut H265Packetizer::new(1), &annexb(&[&slice]));
        assert_eq!(out.len(), 4);
        assert_eq!(depacketize(&out), vec![slice]);
    }

    /// xorshift64*: deterministic noise without a dependency.
    fn noise(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The NAL units of `au` the packetizer sends.
    fn sendable(au: &[u8]) -> Vec<Vec<u8>> {
        nal_units(au)
            .filter(|n| n.len() >= 2 && !matches!((n[0] >> 1) & 0x3F, 35 | 38 | 48..=63))
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn garbage_never_panics_and_stays_within_limits() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            let len = (noise(&mut seed) % 4000) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| noise(&mut seed) as u8).collect();
            // Plant start codes so there are NAL units to work on.
            for _ in 0..(noise(&mut seed) % 8) {
                if len > 4 {
                    let at = (noise(&mut seed) as usize) % (len - 3);
                    data[at..at + 3].copy_from_slice(&[0, 0, 1]);
                }
            }
            let max = 4 + (noise(&mut seed) % 1500) as usize;
            let mut p = H265Packetizer::new(max);
            let out = run(&mut p, &data);
            assert!(out.iter().all(|p| p.data.len() >= 2 && p.data.len() <= max));
            assert_markers(&out);
            // Whatever was sent comes back exactly, F bit or not.
            assert_eq!(depacketize(&out), sendable(&data), "round {round}");
        }
    }

    #[test]
    fn round_trips_every_access_unit_of_the_hevc_test_stream() {
        use crate::codec::h265::{H265Assembler, NalType as T};
        use crate::ts::{DemuxEvent, Demuxer};

        let Some(ts) = crate::testdata::read("hevc_opus.ts") else {
            return;
        };
        let mut demuxer = Demuxer::new();
        let mut events = Vec::new();
        demuxer.push(&ts, &mut events);
        demuxer.flush(&mut events);
        let tracks = demuxer.tracks().expect("PMT");
        assert!(tracks.h264().is_none());
        let hevc = tracks.hevc().map(|t| t.pid);
        assert!(hevc.is_some());
        let mut assembler = H265Assembler::new();
        let mut aus = Vec::new();
        for e in &events {
            if let DemuxEvent::Pes(pes) = e {
                if Some(pes.pid) == hevc {
                    assembler.push(pes, &mut aus);
                }
            }
        }
        assert_eq!(aus.len(), 180);
        assert_eq!(aus.iter().filter(|au| au.keyframe).count(), 6);
        let sps = assembler.sps().expect("SPS");
        assert_eq!((sps.width, sps.height), (640, 360));
        let types = |au: &[u8]| -> Vec<T> { nal_units(au).filter_map(T::of).collect() };
        // AUD removed; every keyframe (IDR, then CRAs) starts with VPS, SPS, PPS.
        assert_eq!(
            types(&aus[0].data),
            [T::VPS, T::SPS, T::PPS, T::PREFIX_SEI, T::IDR_N_LP]
        );
        assert_eq!(types(&aus[1].data), [T::TRAIL_R]);
        assert_eq!(
            types(&aus[30].data),
            [T::VPS, T::SPS, T::PPS, T::PREFIX_SEI, T::CRA_NUT]
        );
        let mut p = H265Packetizer::default();
        let (mut packets, mut ap, mut fu) = (0, 0, 0);
        for au in &aus {
            let out = run(&mut p, &au.data);
            assert!(out.iter().all(|p| p.data.len() <= DEFAULT_MAX_PAYLOAD));
            assert_markers(&out);
            let expected: Vec<Vec<u8>> = nal_units(&au.data).map(<[u8]>::to_vec).collect();
            assert_eq!(depacketize(&out), expected);
            packets += out.len();
            ap += out.iter().filter(|p| fields(&p.data).0 == AP).count();
            fu += out.iter().filter(|p| fields(&p.data).0 == FU).count();
        }
        // Every keyframe's VPS, SPS and PPS travel together.
        assert!(ap >= 6, "{ap} AP");
        assert!(fu > 0 && packets > aus.len());
    }
}
