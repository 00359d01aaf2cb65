//! Where a TS reader that joins mid-stream should start: at the latest PAT and PMT, then the
//! first packet of a start point's access unit — an IDR or IRAP picture, or an H.264 recovery
//! point (periodic intra refresh sends no other) — or, without video, the next audio PES.
//! Everything before is held back. Sans-IO.
//!
//! Packets are found by the crate's one [`Aligner`], so 192-byte (M2TS) and 204-byte input
//! joins too. The reader gets 188-byte TS: for 188-byte input, bytes after the start pass
//! through untouched (damage included, as the source sent it); for other strides, the
//! aligned 188-byte packets are passed on.

use std::ops::ControlFlow;

use super::align::{Aligned, Aligner, Stride};
use super::packet::{self, Header, PACKET_SIZE};
use super::psi::StreamType;
use crate::codec::h264::{self, NalType as H264Nal};

/// How far the join has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Learning PAT and PMT, waiting for the start packet.
    Searching,
    /// Started on 188-byte input: every byte passes through.
    PassThrough,
    /// Started on 192/204-byte input: aligned packets pass through.
    Packets,
}

pub struct StartPoint {
    align: Aligner,
    pat: Option<[u8; PACKET_SIZE]>,
    pmt_pid: Option<u16>,
    pmt: Option<[u8; PACKET_SIZE]>,
    /// The video PID, and whether it is H.265 (else H.264).
    video_pid: Option<(u16, bool)>,
    audio_pid: Option<u16>,
    state: State,
}

impl Default for StartPoint {
    fn default() -> Self {
        Self::new()
    }
}

impl StartPoint {
    pub fn new() -> Self {
        StartPoint {
            align: Aligner::new(),
            pat: None,
            pmt_pid: None,
            pmt: None,
            video_pid: None,
            audio_pid: None,
            state: State::Searching,
        }
    }

    pub fn started(&self) -> bool {
        self.state != State::Searching
    }

    /// A reader that has started already (on 188-byte input): every byte passes through. For
    /// the live bytes after a [`last_start`].
    pub fn passing_through() -> Self {
        StartPoint {
            state: State::PassThrough,
            ..Self::new()
        }
    }

    /// Whether, from the start on, input bytes pass through untouched (188-byte input); else
    /// the output is the input's packets, 188 bytes each.
    pub fn passes_through(&self) -> bool {
        self.state == State::PassThrough
    }

    /// Feed bytes; append what the reader should get to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.state == State::PassThrough {
            out.extend_from_slice(data);
            return;
        }
        let mut align = std::mem::take(&mut self.align);
        let flow = align.push(data, &mut |item| {
            let Aligned::Packet { packet, stride, .. } = item else {
                return ControlFlow::Continue(());
            };
            match self.state {
                State::Searching if self.is_start(packet) => {
                    for psi in [self.pat, self.pmt].into_iter().flatten() {
                        out.extend_from_slice(&psi);
                    }
                    out.extend_from_slice(packet);
                    if stride == Stride::Ts188 {
                        // The rest of the input as it is: `take_pending` below.
                        self.state = State::PassThrough;
                        return ControlFlow::Break(());
                    }
                    self.state = State::Packets;
                }
                State::Searching => self.learn(packet),
                State::Packets | State::PassThrough => out.extend_from_slice(packet),
            }
            ControlFlow::Continue(())
        });
        if flow.is_break() {
            out.extend_from_slice(&align.take_pending());
        }
        self.align = align;
    }

    fn is_start(&self, pkt: &[u8; PACKET_SIZE]) -> bool {
        let header = Header::parse(pkt);
        if self.pmt.is_none() || !header.pusi {
            return false;
        }
        let pid = header.pid.0;
        match self.video_pid {
            Some((v, hevc)) if v == pid => {
                let Ok((af, payload)) = packet::split(pkt, &header) else {
                    return false;
                };
                af.random_access || starts_keyframe(payload, hevc)
            }
            Some(_) => false,
            None => self.audio_pid == Some(pid),
        }
    }

    /// Remember the latest PAT and PMT and the PIDs they give.
    fn learn(&mut self, pkt: &[u8; PACKET_SIZE]) {
        let header = Header::parse(pkt);
        let pid = header.pid.0;
        if !header.pusi {
            return;
        }
        let Some(section) = packet::split(pkt, &header).ok().and_then(|(_, p)| {
            let pointer = usize::from(*p.first()?);
            p.get(1 + pointer..)
        }) else {
            return;
        };
        if pid == 0 && section.first() == Some(&0x00) {
            // PAT: programs from byte 8, 4 bytes each, CRC at the end.
            let len = section_len(section);
            let end = (3 + len).saturating_sub(4).min(section.len());
            let mut i = 8;
            while i + 4 <= end {
                let program = u16::from_be_bytes([section[i], section[i + 1]]);
                if program != 0 {
                    self.pmt_pid =
                        Some(u16::from_be_bytes([section[i + 2], section[i + 3]]) & 0x1FFF);
                    self.pat = Some(*pkt);
                    break;
                }
                i += 4;
            }
        } else if Some(pid) == self.pmt_pid && section.first() == Some(&0x02) && section.len() >= 12
        {
            let len = section_len(section);
            let end = (3 + len).saturating_sub(4).min(section.len());
            let info_len = usize::from(u16::from_be_bytes([section[10], section[11]]) & 0x0FFF);
            let mut i = 12 + info_len;
            let (mut video, mut audio) = (None, None);
            while i + 5 <= end {
                let st = StreamType(section[i]);
                let es = u16::from_be_bytes([section[i + 1], section[i + 2]]) & 0x1FFF;
                let es_len =
                    usize::from(u16::from_be_bytes([section[i + 3], section[i + 4]]) & 0x0FFF);
                if st == StreamType::H264 || st == StreamType::HEVC {
                    video.get_or_insert((es, st == StreamType::HEVC));
                } else if audio.is_none() {
                    audio = Some(es);
                }
                i += 5 + es_len;
            }
            self.video_pid = video;
            self.audio_pid = audio;
            self.pmt = Some(*pkt);
        }
    }
}

/// The latest start point in `data` (the bytes a ring still holds, oldest first): the offset
/// of its first packet, and the PAT and PMT in force there to put before it. A reader that
/// begins there gets the GOP the stream is in — a cold cluster edge's first viewer then starts
/// as on a warm node — where [`StartPoint`] would wait for the next one. 188-byte input only
/// (`None` otherwise, or without a start point).
pub fn last_start(data: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut join = StartPoint::new();
    let mut last = None;
    let mut on = |item: Aligned<'_>| {
        let Aligned::Packet {
            packet,
            offset,
            stride,
        } = item
        else {
            return ControlFlow::Continue(());
        };
        if stride != Stride::Ts188 {
            last = None;
            return ControlFlow::Break(());
        }
        if join.is_start(packet) {
            let psi: Vec<u8> = [join.pat, join.pmt]
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            // The offset is within `data`, which is in memory.
            last = Some((offset as usize, psi));
        } else {
            join.learn(packet);
        }
        ControlFlow::Continue(())
    };
    let mut align = Aligner::new();
    if align.push(data, &mut on).is_continue() {
        let _ = align.flush(&mut on);
    }
    last
}

fn section_len(section: &[u8]) -> usize {
    match section {
        [_, a, b, ..] => usize::from(u16::from_be_bytes([*a, *b]) & 0x0FFF),
        _ => 0,
    }
}

/// Whether a PES start's first bytes hold parameter sets or a start point: for H.264 an SPS,
/// an IDR or a recovery point SEI NAL unit (x264 puts AUD, SPS, PPS, SEI … first), for H.265
/// a VPS/SPS/PPS or IRAP one.
fn starts_keyframe(pes: &[u8], hevc: bool) -> bool {
    let Some(&hdr_len) = pes.get(8) else {
        return false;
    };
    let Some(es) = pes.get(9 + usize::from(hdr_len)..) else {
        return false;
    };
    if !hevc {
        // The last NAL unit may be cut by the packet's end: a recovery point SEI is read as
        // far as it goes.
        return h264::nal_units(es).any(|nal| match H264Nal::of(nal) {
            Some(H264Nal::IDR | H264Nal::SPS) => true,
            Some(H264Nal::SEI) => h264::recovery_point(nal).is_some(),
            _ => false,
        });
    }
    es.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && matches!((w[3] >> 1) & 0x3F, 16..=23 | 32..=34))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h264::{AccessUnit, H264Assembler};
    use crate::ts::packet::SYNC_BYTE;
    use crate::ts::{DemuxEvent, Demuxer};

    fn file() -> Vec<u8> {
        crate::testdata::bytes("h264_opus.ts")
    }

    fn pid_of(pkt: &[u8; PACKET_SIZE]) -> u16 {
        Header::parse(pkt).pid.0
    }

    /// The first access unit of the output is an IDR, and the output demuxes cleanly.
    fn check_output(out: &[u8]) {
        let mut d = Demuxer::new();
        let mut ev = Vec::new();
        d.push(out, &mut ev);
        let tracks = d.tracks().expect("tracks from the first packets").clone();
        let mut h = H264Assembler::new();
        let mut aus: Vec<AccessUnit> = Vec::new();
        for e in &ev {
            if let DemuxEvent::Pes(p) = e {
                if Some(p.pid) == tracks.video().map(|t| t.pid) {
                    h.push(p, &mut aus);
                }
            }
        }
        assert!(aus[0].keyframe, "the first access unit is an IDR");
        assert!(!ev.iter().any(|e| matches!(e, DemuxEvent::Problem(_))));
    }

    #[test]
    fn last_start_is_the_gop_the_stream_is_in() {
        let f = crate::testdata::bytes("long_gop.ts");
        // Bytes a ring holds: both GOPs (IDRs at 0 and 5 s), 2 s into the second.
        let held = &f[..f.len() * 7 / 10];
        let (at, psi) = last_start(held).expect("a start point");
        assert_eq!(psi.len(), 2 * PACKET_SIZE, "PAT and PMT");
        let mut out = psi.clone();
        out.extend_from_slice(&held[at..]);
        check_output(&out);
        // The second IDR, not the first.
        assert!(at > f.len() / 3, "{at}");
        // Within the first GOP only, from an odd offset: the first IDR.
        assert!(last_start(&f[3..f.len() / 3]).is_some_and(|(a, _)| a < 20_000));
        assert_eq!(last_start(&[0u8; 5000]), None);
    }

    #[test]
    fn joins_mid_stream_at_pat_pmt_then_idr() {
        let f = file();
        // Join at an odd offset in the middle of a GOP, fed in small uneven chunks.
        let mut sp = StartPoint::new();
        let mut out = Vec::new();
        for chunk in f[100_001..].chunks(1000) {
            sp.push(chunk, &mut out);
        }
        assert!(sp.started());
        assert_eq!(out[0], SYNC_BYTE);
        assert_eq!(pid_of(out[..188].try_into().unwrap()), 0, "PAT first");
        assert_eq!(
            pid_of(out[188..376].try_into().unwrap()),
            0x1000,
            "then the PMT"
        );
        check_output(&out);
        // 188-byte input: from the start packet on, the input passes through as it is.
        assert!(sp.passes_through());
        let at = f
            .windows(PACKET_SIZE)
            .position(|w| w == &out[376..564])
            .unwrap();
        assert_eq!(out[376..], f[at..]);
    }

    #[test]
    fn joins_m2ts_input_and_outputs_188_byte_packets() {
        let Some(m2ts) = crate::testdata::read("h264_opus.m2ts") else {
            return;
        };
        // Join in the middle of a unit, fed in chunks that are no multiple of anything.
        let mut sp = StartPoint::new();
        let mut out = Vec::new();
        for chunk in m2ts[50_003..].chunks(777) {
            sp.push(chunk, &mut out);
        }
        assert!(sp.started() && !sp.passes_through());
        assert_eq!(out.len() % PACKET_SIZE, 0);
        assert!(out.chunks(PACKET_SIZE).all(|p| p[0] == SYNC_BYTE));
        assert_eq!(pid_of(out[..188].try_into().unwrap()), 0, "PAT first");
        assert_eq!(
            pid_of(out[188..376].try_into().unwrap()),
            0x100,
            "then the PMT"
        );
        check_output(&out);
        // Every packet of the input after the start is there, in order, without its header.
        let units: Vec<&[u8]> = m2ts.chunks(192).map(|u| &u[4..]).collect();
        let first = units.iter().position(|u| *u == &out[376..564]).unwrap();
        let rest: Vec<u8> = units[first..].concat();
        assert!(out[376..] == rest[..]);
    }

    #[test]
    fn joins_hevc_at_an_irap_with_its_parameter_sets() {
        use crate::codec::h265::H265Assembler;
        let Some(f) = crate::testdata::read("hevc_opus.ts") else {
            return;
        };
        let mut sp = StartPoint::new();
        let mut out = Vec::new();
        for chunk in f[150_001..].chunks(1000) {
            sp.push(chunk, &mut out);
        }
        assert!(sp.started());
        let mut d = Demuxer::new();
        let mut ev = Vec::new();
        d.push(&out, &mut ev);
        let hevc = d
            .tracks()
            .and_then(|t| t.hevc())
            .expect("the H.265 track")
            .pid;
        let mut h = H265Assembler::new();
        let mut aus: Vec<AccessUnit> = Vec::new();
        for e in &ev {
            if let DemuxEvent::Pes(p) = e {
                if p.pid == hevc {
                    h.push(p, &mut aus);
                }
            }
        }
        assert!(aus[0].keyframe, "the first access unit is an IRAP");
        assert!(h.sps().is_some(), "with its SPS");
    }

    #[test]
    fn h264_start_points_are_idr_sps_or_a_recovery_point_sei() {
        let pes = |es: &[u8]| crate::ts::testutil::pes_bytes(0xE0, Some(0), None, es, false);
        let aud = [0, 0, 0, 1, 0x09, 0xF0];
        let slice = [0, 0, 1, 0x41, 0x9A, 0x02];
        let recovery = [0, 0, 1, 0x06, 0x06, 0x02, 0x09, 0xC4, 0x80];
        let user_data = [0, 0, 1, 0x06, 0x05, 0x02, 0xAA, 0xBB, 0x80];
        let with = |parts: &[&[u8]]| pes(&parts.concat());
        assert!(starts_keyframe(&with(&[&aud, &recovery, &slice]), false));
        // Cut inside the SEI's payload: not yet known, not a start.
        assert!(!starts_keyframe(&with(&[&aud, &recovery[..6]]), false));
        assert!(!starts_keyframe(&with(&[&aud, &user_data, &slice]), false));
        assert!(!starts_keyframe(&with(&[&aud, &slice]), false));
        assert!(starts_keyframe(
            &with(&[&aud, &[0, 0, 1, 0x65, 0x88]]),
            false
        ));
    }

    /// testdata/h264_intra_refresh.ts has one IDR, then recovery points every 30 frames: a
    /// reader that joins after the IDR starts at the next recovery point, not never.
    #[test]
    fn joins_an_intra_refresh_source_at_a_recovery_point() {
        let f = crate::testdata::bytes("h264_intra_refresh.ts");
        let mut sp = StartPoint::new();
        let mut out = Vec::new();
        for chunk in f[f.len() / 3..].chunks(1000) {
            sp.push(chunk, &mut out);
        }
        assert!(sp.started());
        let mut d = Demuxer::new();
        let mut ev = Vec::new();
        d.push(&out, &mut ev);
        d.flush(&mut ev);
        let video = d.tracks().and_then(|t| t.video()).expect("video").pid;
        let mut h = H264Assembler::new();
        let mut aus: Vec<AccessUnit> = Vec::new();
        for e in &ev {
            if let DemuxEvent::Pes(p) = e {
                if p.pid == video {
                    h.push(p, &mut aus);
                }
            }
        }
        assert!(!aus[0].keyframe);
        assert_eq!(
            aus[0].recovery,
            crate::codec::Recovery::Point { frames: 18 }
        );
        assert!(h.sps().is_some(), "with its SPS");
        assert_eq!(aus.len(), 60, "from the recovery point at 60");
    }

    #[test]
    fn garbage_never_starts() {
        let mut sp = StartPoint::new();
        let mut out = Vec::new();
        let junk: Vec<u8> = (0..50_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        sp.push(&junk, &mut out);
        assert!(!sp.started());
        assert!(out.is_empty());
    }
}
