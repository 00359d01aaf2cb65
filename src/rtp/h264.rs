//! H.264 RTP payloader, RFC 6184 packetization-mode=1: single NAL unit packets, STAP-A
//! aggregation (§5.7.1) and FU-A fragmentation (§5.8).

use super::nal::{NalPacketizer, NalSyntax};
use crate::codec::h264::NalType;

/// STAP-A (single-time aggregation packet) NAL unit type.
pub const STAP_A: u8 = 24;
/// FU-A (fragmentation unit) NAL unit type.
pub const FU_A: u8 = 28;

/// F bit and NRI of a NAL unit header.
const F_NRI: u8 = 0xE0;
const F: u16 = 0x80;
const NRI: u16 = 0x60;

/// H.264's NAL unit header: one byte, F (1 bit), NRI (2), type (5).
#[derive(Clone, Copy, Debug)]
pub struct Avc;

impl NalSyntax for Avc {
    const HEADER_LEN: usize = 1;

    /// Not AUD (9) and filler data (12), which carry nothing over RTP, nor types 0 and
    /// 24–31, unspecified in H.264 and read as RTP aggregation/fragmentation packets by the
    /// receiver.
    fn sendable(nal: &[u8]) -> bool {
        let t = nal.first().map_or(0, |h| h & 0x1F);
        !(t == 0 || t >= STAP_A || t == NalType::AUD.0 || t == NalType::FILLER.0)
    }

    /// RFC 6184 §5.7: F ORed, the highest NRI.
    fn merge(acc: u16, header: u16) -> u16 {
        (acc | header) & F | (acc & NRI).max(header & NRI)
    }

    fn aggregate(merged: u16) -> u16 {
        merged | u16::from(STAP_A)
    }

    fn fu_prefix(nal: &[u8]) -> [u8; 3] {
        [(nal[0] & F_NRI) | FU_A, nal[0] & 0x1F, 0]
    }
}

/// Packetizes H.264 access units for RTP, RFC 6184 packetization-mode=1: single NAL unit
/// packets, STAP-A (§5.7.1), FU-A (§5.8); see [`NalPacketizer`].
pub type H264Packetizer = NalPacketizer<Avc>;

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

    /// A NAL unit of `len` bytes with header byte `header`, the body a counter that never
    /// forms a start code (no zero bytes).
    fn nal(header: u8, len: usize) -> Vec<u8> {
        let mut v = vec![header];
        v.extend((1..len).map(|i| (i % 251) as u8 + 1));
        v
    }

    fn run(p: &mut H264Packetizer, au: &[u8]) -> Vec<Payload> {
        let mut out = Vec::new();
        p.packetize(au, &mut out);
        out
    }

    /// A tiny RFC 6184 depacketizer: payloads back to NAL units; checks the structure on the way.
    fn depacketize(payloads: &[Payload]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            let d = &p.data[..];
            match d[0] & 0x1F {
                1..=23 => {
                    assert!(fu.is_none(), "single NAL inside a fragmented one");
                    nals.push(d.to_vec());
                }
                STAP_A => {
                    assert!(fu.is_none(), "STAP-A inside a fragmented NAL");
                    let mut rest = &d[1..];
                    let mut count = 0;
                    let (mut f, mut nri) = (0, 0);
                    while !rest.is_empty() {
                        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                        assert!(len > 0 && 2 + len <= rest.len(), "bad STAP-A size");
                        let n = &rest[2..2 + len];
                        f |= n[0] & 0x80;
                        nri = nri.max(n[0] & NRI as u8);
                        nals.push(n.to_vec());
                        rest = &rest[2 + len..];
                        count += 1;
                    }
                    assert!(count >= 2, "STAP-A with {count} NAL unit");
                    assert_eq!(d[0] & F_NRI, f | nri, "STAP-A F/NRI");
                }
                FU_A => {
                    let (start, end) = (d[1] & FU_START != 0, d[1] & FU_END != 0);
                    assert!(!(start && end), "FU-A with start and end bits");
                    assert_eq!(d[1] & 0x20, 0, "FU-A R bit");
                    let header = (d[0] & F_NRI) | (d[1] & 0x1F);
                    if start {
                        assert!(fu.is_none(), "FU-A start inside a fragmented NAL");
                        fu = Some(vec![header]);
                    }
                    let buf = fu.as_mut().expect("FU-A without start");
                    assert_eq!(buf[0], header, "FU-A header changed between fragments");
                    buf.extend_from_slice(&d[2..]);
                    if end {
                        nals.push(fu.take().unwrap());
                    }
                }
                t => panic!("unexpected payload type {t}"),
            }
        }
        assert!(fu.is_none(), "unfinished FU-A");
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
        let slice = nal(0x41, 500);
        let out = run(&mut H264Packetizer::new(1200), &annexb(&[&slice]));
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], &slice[..]);
        assert!(out[0].marker);
    }

    #[test]
    fn small_sps_pps_idr_aggregate_into_one_stap_a() {
        let (sps, pps, idr) = (nal(0x67, 25), nal(0x68, 4), nal(0x65, 100));
        let out = run(&mut H264Packetizer::new(1200), &annexb(&[&sps, &pps, &idr]));
        assert_eq!(out.len(), 1);
        let d = &out[0].data;
        // NRI 3 (max of all), type 24.
        assert_eq!(d[0], 0x60 | STAP_A);
        let mut expected = vec![d[0]];
        for n in [&sps, &pps, &idr] {
            expected.extend_from_slice(&(n.len() as u16).to_be_bytes());
            expected.extend_from_slice(n);
        }
        assert_eq!(&d[..], &expected[..]);
        assert_eq!(d.len(), 1 + 2 + 25 + 2 + 4 + 2 + 100);
        assert!(out[0].marker);
    }

    #[test]
    fn stap_a_nri_is_the_highest_and_f_bit_carries() {
        let (sei, slice) = (nal(0x06, 10), nal(0x21, 10)); // NRI 0 and 1
        let out = run(&mut H264Packetizer::new(1200), &annexb(&[&sei, &slice]));
        assert_eq!(out[0].data[0], 0x20 | STAP_A);
        let (bad, slice) = (nal(0x86, 10), nal(0x41, 10)); // F bit set, NRI 2
        let out = run(&mut H264Packetizer::new(1200), &annexb(&[&bad, &slice]));
        assert_eq!(out[0].data[0], 0x80 | 0x40 | STAP_A);
    }

    #[test]
    fn sps_pps_aggregate_and_a_large_idr_is_fragmented() {
        let (sps, pps, sei, idr) = (nal(0x67, 25), nal(0x68, 4), nal(0x06, 600), nal(0x65, 5000));
        let au = annexb(&[&sps, &pps, &sei, &idr]);
        let out = run(&mut H264Packetizer::new(1200), &au);
        // STAP-A(SPS, PPS, SEI) = 1 + 27 + 6 + 602 = 636, then 5000 bytes of IDR in FU-As.
        assert_eq!(out[0].data[0] & 0x1F, STAP_A);
        assert_eq!(out[0].data.len(), 636);
        assert!(out[1..].iter().all(|p| p.data[0] & 0x1F == FU_A));
        assert_markers(&out);
        assert_eq!(depacketize(&out), vec![sps, pps, sei, idr]);
    }

    #[test]
    fn aggregation_stops_when_the_next_nal_does_not_fit() {
        // 1 + (2+500) + (2+500) = 1005 ≤ 1200; + (2+300) = 1307 > 1200.
        let (a, b, c) = (nal(0x06, 500), nal(0x06, 500), nal(0x41, 300));
        let out = run(&mut H264Packetizer::new(1200), &annexb(&[&a, &b, &c]));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data[0] & 0x1F, STAP_A);
        assert_eq!(out[0].data.len(), 1005);
        assert_eq!(&out[1].data[..], &c[..]); // alone: a single NAL unit packet
        assert_eq!(depacketize(&out), vec![a, b, c]);
    }

    #[test]
    fn nal_of_exactly_max_payload_is_a_single_packet() {
        let slice = nal(0x41, 1200);
        let out = run(&mut H264Packetizer::new(1200), &annexb(&[&slice]));
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], &slice[..]);
    }

    #[test]
    fn fu_a_split_has_exact_sizes_and_bits() {
        // 2500 bytes: header + 2499 body bytes; 998 body bytes per fragment → 998, 998, 503.
        let idr = nal(0x65, 2500);
        let out = run(&mut H264Packetizer::new(1000), &annexb(&[&idr]));
        let sizes: Vec<usize> = out.iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, [1000, 1000, 505]);
        for (i, p) in out.iter().enumerate() {
            assert!(p.data.len() <= 1000);
            // FU indicator: F and NRI of the NAL unit (0x60), type 28.
            assert_eq!(p.data[0], 0x60 | FU_A);
            let start = if i == 0 { FU_START } else { 0 };
            let end = if i == out.len() - 1 { FU_END } else { 0 };
            // FU header: S, E, R = 0, the NAL unit type (5).
            assert_eq!(p.data[1], start | end | 5);
        }
        assert_eq!(&out[0].data[2..], &idr[1..999]);
        assert_eq!(&out[1].data[2..], &idr[999..1997]);
        assert_eq!(&out[2].data[2..], &idr[1997..]);
        assert_markers(&out);
    }

    #[test]
    fn fu_a_with_one_byte_over_gives_two_fragments() {
        // 1201 bytes at 1200: body 1200 = 1198 + 2; never a start+end fragment.
        let slice = nal(0x41, 1201);
        let out = run(&mut H264Packetizer::new(1200), &annexb(&[&slice]));
        let sizes: Vec<usize> = out.iter().map(|p| p.data.len()).collect();
        assert_eq!(sizes, [1200, 4]);
        assert_eq!(out[0].data[1], FU_START | 1);
        assert_eq!(out[1].data[1], FU_END | 1);
        assert_eq!(depacketize(&out), vec![slice]);
    }

    #[test]
    fn marker_only_on_the_last_payload_of_the_access_unit() {
        let (sps, pps, idr, slice) = (nal(0x67, 25), nal(0x68, 4), nal(0x65, 3000), nal(0x41, 900));
        let mut p = H264Packetizer::new(1200);
        let mut out = Vec::new();
        p.packetize(&annexb(&[&sps, &pps, &idr]), &mut out);
        let first = out.len();
        assert_markers(&out);
        p.packetize(&annexb(&[&slice]), &mut out);
        assert_markers(&out[first..]);
        assert!(out[first - 1].marker && out[first].marker);
    }

    #[test]
    fn aud_filler_and_reserved_types_are_dropped() {
        let (aud, sps, pps, filler, idr) = (
            vec![0x09, 0xF0],
            nal(0x67, 25),
            nal(0x68, 4),
            nal(0x0C, 50),
            nal(0x65, 40),
        );
        let reserved = [nal(0x00, 5), nal(0x78, 5), nal(0x7C, 5), nal(0x7F, 5)];
        let au = annexb(&[
            &aud,
            &sps,
            &pps,
            &filler,
            &reserved[0],
            &reserved[1],
            &idr,
            &reserved[2],
            &reserved[3],
        ]);
        let out = run(&mut H264Packetizer::new(1200), &au);
        assert_eq!(out.len(), 1);
        assert_eq!(depacketize(&out), vec![sps, pps, idr]);
        // An access unit of nothing but an AUD gives nothing, not an empty marked packet.
        assert!(run(&mut H264Packetizer::new(1200), &annexb(&[&aud])).is_empty());
    }

    #[test]
    fn empty_input_gives_nothing() {
        let mut p = H264Packetizer::default();
        assert!(run(&mut p, &[]).is_empty());
        assert!(run(&mut p, &[0, 0, 0, 1]).is_empty());
        assert!(run(&mut p, &[0, 0, 1, 0, 0, 0, 1, 0, 0]).is_empty());
        // Bytes without any start code are not a NAL unit.
        assert!(run(&mut p, &[0x65, 1, 2, 3]).is_empty());
    }

    #[test]
    fn max_payload_is_clamped() {
        assert_eq!(H264Packetizer::new(0).max_payload(), 3);
        assert_eq!(H264Packetizer::new(1 << 20).max_payload(), 65_535);
        assert_eq!(H264Packetizer::default().max_payload(), DEFAULT_MAX_PAYLOAD);
        // At the minimum every fragment carries one byte.
        let slice = nal(0x41, 5);
        let out = run(&mut H264Packetizer::new(1), &annexb(&[&slice]));
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
            let max = 3 + (noise(&mut seed) % 1500) as usize;
            let mut p = H264Packetizer::new(max);
            let out = run(&mut p, &data);
            assert!(out
                .iter()
                .all(|p| !p.data.is_empty() && p.data.len() <= max));
            assert_markers(&out);
            // Whatever was sent comes back exactly, F bit or not.
            let expected: Vec<Vec<u8>> = nal_units(&data)
                .filter(|n| matches!(n[0] & 0x1F, 1..=8 | 10 | 11 | 13..=23))
                .map(<[u8]>::to_vec)
                .collect();
            assert_eq!(depacketize(&out), expected, "round {round}");
        }
    }

    #[test]
    fn round_trips_every_access_unit_of_the_test_stream() {
        let Some(aus) = crate::ts::testutil::testdata_video_aus("h264_opus.ts") else {
            return;
        };
        assert_eq!(aus.len(), 180);
        let mut p = H264Packetizer::default();
        let (mut packets, mut stap_a, mut fu_a) = (0, 0, 0);
        for au in &aus {
            let out = run(&mut p, &au.data);
            assert!(out.iter().all(|p| p.data.len() <= DEFAULT_MAX_PAYLOAD));
            assert_markers(&out);
            let expected: Vec<Vec<u8>> = nal_units(&au.data).map(<[u8]>::to_vec).collect();
            assert_eq!(depacketize(&out), expected);
            packets += out.len();
            stap_a += out.iter().filter(|p| p.data[0] & 0x1F == STAP_A).count();
            fu_a += out.iter().filter(|p| p.data[0] & 0x1F == FU_A).count();
        }
        // Every IDR's SPS and PPS travel together.
        assert!(stap_a >= 6, "{stap_a} STAP-A");
        assert!(fu_a > 0 && packets > aus.len());
    }
}
