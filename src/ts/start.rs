//! Where a TS reader that joins mid-stream should start: at the latest PAT and PMT, then the
//! first packet of an IDR access unit (or, without video, the next audio PES). Everything
//! before is held back; from there on bytes pass through untouched. Sans-IO.

use super::packet::{PACKET_SIZE, SYNC_BYTE};
use super::psi::StreamType;

pub struct StartPoint {
    carry: Vec<u8>,
    pat: Option<[u8; PACKET_SIZE]>,
    pmt_pid: Option<u16>,
    pmt: Option<[u8; PACKET_SIZE]>,
    video_pid: Option<u16>,
    audio_pid: Option<u16>,
    started: bool,
}

impl Default for StartPoint {
    fn default() -> Self {
        Self::new()
    }
}

impl StartPoint {
    pub fn new() -> Self {
        StartPoint {
            carry: Vec::new(),
            pat: None,
            pmt_pid: None,
            pmt: None,
            video_pid: None,
            audio_pid: None,
            started: false,
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Feed bytes; append what the reader should get to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.started {
            out.extend_from_slice(data);
            return;
        }
        self.carry.extend_from_slice(data);
        let mut at = 0;
        while at + PACKET_SIZE <= self.carry.len() {
            if self.carry[at] != SYNC_BYTE {
                at += 1;
                continue;
            }
            let mut pkt = [0u8; PACKET_SIZE];
            pkt.copy_from_slice(&self.carry[at..at + PACKET_SIZE]);
            if self.is_start(&pkt) {
                for psi in [self.pat, self.pmt].into_iter().flatten() {
                    out.extend_from_slice(&psi);
                }
                out.extend_from_slice(&self.carry[at..]);
                self.carry = Vec::new();
                self.started = true;
                return;
            }
            self.learn(&pkt);
            at += PACKET_SIZE;
        }
        self.carry.drain(..at);
    }

    fn is_start(&self, pkt: &[u8; PACKET_SIZE]) -> bool {
        if self.pmt.is_none() || pkt[1] & 0x40 == 0 {
            return false;
        }
        let pid = pid_of(pkt);
        match self.video_pid {
            Some(v) if v == pid => {
                let rai = pkt[3] & 0x20 != 0 && pkt[4] > 0 && pkt[5] & 0x40 != 0;
                rai || payload(pkt).is_some_and(starts_idr)
            }
            Some(_) => false,
            None => self.audio_pid == Some(pid),
        }
    }

    /// Remember the latest PAT and PMT and the PIDs they give.
    fn learn(&mut self, pkt: &[u8; PACKET_SIZE]) {
        let pid = pid_of(pkt);
        if pkt[1] & 0x40 == 0 {
            return;
        }
        let Some(section) = payload(pkt).and_then(|p| {
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
                if st == StreamType::H264 {
                    video.get_or_insert(es);
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

fn pid_of(pkt: &[u8; PACKET_SIZE]) -> u16 {
    u16::from_be_bytes([pkt[1], pkt[2]]) & 0x1FFF
}

fn section_len(section: &[u8]) -> usize {
    match section {
        [_, a, b, ..] => usize::from(u16::from_be_bytes([*a, *b]) & 0x0FFF),
        _ => 0,
    }
}

fn payload(pkt: &[u8; PACKET_SIZE]) -> Option<&[u8]> {
    let start = match pkt[3] & 0x30 {
        0x10 => 4,
        0x30 => 5 + usize::from(pkt[4]),
        _ => return None,
    };
    pkt.get(start..)
}

/// Whether a PES start's first bytes hold an SPS or IDR NAL (x264 puts AUD, SPS, PPS, … first).
fn starts_idr(pes: &[u8]) -> bool {
    let Some(&hdr_len) = pes.get(8) else {
        return false;
    };
    let Some(es) = pes.get(9 + usize::from(hdr_len)..) else {
        return false;
    };
    es.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && matches!(w[3] & 0x1F, 5 | 7))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h264::{AccessUnit, H264Assembler};
    use crate::ts::{DemuxEvent, Demuxer};

    fn file() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/h264_opus.ts"
        ))
        .unwrap()
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
        let mut d = Demuxer::new();
        let mut ev = Vec::new();
        d.push(&out, &mut ev);
        let tracks = d.tracks().expect("tracks from the first packets").clone();
        let mut h = H264Assembler::new();
        let mut aus: Vec<AccessUnit> = Vec::new();
        for e in &ev {
            if let DemuxEvent::Pes(p) = e {
                if Some(p.pid) == tracks.h264().map(|t| t.pid) {
                    h.push(p, &mut aus);
                }
            }
        }
        assert!(aus[0].keyframe, "the first access unit is an IDR");
        assert!(!ev.iter().any(|e| matches!(e, DemuxEvent::Problem(_))));
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
