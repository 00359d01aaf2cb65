//! What is counted per viewer: the times to each start-up step, loss as extended
//! sequence-number ranges per SSRC, and the first keyframe (read from the H.264 payload).
//!
//! Once its first keyframe is in, a viewer may count video by the SRTP packet's clear-text
//! header instead of decrypting it (see `--decrypt-all`): loss stays exact, the client's CPU
//! per packet drops to a fraction, so it can run beside the server.

use std::time::{Duration, Instant};

use str0m::rtp::{RtpPacket, Ssrc};

/// H.264 payload types we offer: (pt, rtx pt, profile-level-id), as Chromium does (all with
/// packetization-mode=1). Anything else that arrives is the Opus track.
pub(crate) const H264_OFFER: [(u8, u8, u32); 3] = [
    (102, 103, 0x42001f),
    (106, 107, 0x42e01f),
    (116, 117, 0x4d001f),
];

pub(crate) fn is_video_pt(pt: u8) -> bool {
    H264_OFFER.iter().any(|(p, _, _)| *p == pt)
}

/// Loss accounting for one track: the extended sequence-number range per SSRC.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Track {
    pub(crate) ssrc: Option<Ssrc>,
    pub(crate) first: u64,
    pub(crate) max: u64,
    pub(crate) received: u64,
    /// Expected packets of earlier SSRCs (a new SSRC starts a new range).
    pub(crate) expected_before: u64,
}

impl Track {
    #[inline]
    fn on_packet(&mut self, ssrc: Ssrc, seq: u64) {
        if self.ssrc != Some(ssrc) {
            self.expected_before = self.expected();
            self.ssrc = Some(ssrc);
            self.first = seq;
            self.max = seq;
        } else if seq > self.max {
            self.max = seq;
        } else if seq < self.first {
            self.first = seq;
        }
        self.received += 1;
    }

    pub(crate) fn expected(&self) -> u64 {
        self.expected_before + self.ssrc.map_or(0, |_| self.max - self.first + 1)
    }

    /// A packet known by its 16-bit sequence number: extended next to the highest seen so far
    /// (the same numbering str0m's extended sequence numbers use).
    #[inline]
    fn on_header(&mut self, ssrc: Ssrc, seq: u16) {
        let ext = match self.ssrc {
            Some(s) if s == ssrc => extend_seq(self.max, seq),
            _ => u64::from(seq),
        };
        self.on_packet(ssrc, ext);
    }
}

/// The 64-bit sequence number ending in `seq` nearest to `near`.
fn extend_seq(near: u64, seq: u16) -> u64 {
    let base = near & !0xffff;
    [base.wrapping_sub(0x1_0000), base, base + 0x1_0000]
        .into_iter()
        .map(|b| b | u64::from(seq))
        .filter(|&c| c <= near + 0x8000)
        .min_by_key(|&c| c.abs_diff(near))
        .unwrap_or(u64::from(seq))
}

/// Counters at the start of the steady-state window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mark {
    pub(crate) packets: u64,
    pub(crate) expected: u64,
    pub(crate) bytes: u64,
    pub(crate) set: bool,
}

/// Everything measured about one viewer; survives the viewer's session.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub(crate) t0: Instant,
    pub(crate) location: Option<String>,
    pub(crate) answered: Option<Duration>,
    pub(crate) ice: Option<Duration>,
    pub(crate) connected: Option<Duration>,
    pub(crate) first_rtp: Option<Duration>,
    pub(crate) first_key: Option<Duration>,
    /// RTP timestamp of the keyframe access unit being received (until it is complete).
    pub(crate) key_ts: Option<u32>,
    pub(crate) video: Track,
    pub(crate) audio: Track,
    pub(crate) bytes: u64,
    pub(crate) mark: Mark,
    /// Why it failed (never connected) or misbehaved.
    pub(crate) error: Option<String>,
    /// Connected, then lost the session before the end.
    pub(crate) dropped: bool,
    pub(crate) ice_disconnected: bool,
    /// Share of received RTP to throw away (a lossy viewer), 0..1.
    pub(crate) drop: f64,
    /// Video packets (original payload type, not RTX) a lossy viewer threw away.
    pub(crate) thrown_video: u64,
}

impl Stats {
    pub(crate) fn new(t0: Instant) -> Self {
        Stats {
            t0,
            location: None,
            answered: None,
            ice: None,
            connected: None,
            first_rtp: None,
            first_key: None,
            key_ts: None,
            video: Track::default(),
            audio: Track::default(),
            bytes: 0,
            mark: Mark::default(),
            error: None,
            dropped: false,
            ice_disconnected: false,
            drop: 0.0,
            thrown_video: 0,
        }
    }

    pub(crate) fn packets(&self) -> u64 {
        self.video.received + self.audio.received
    }

    pub(crate) fn expected(&self) -> u64 {
        self.video.expected() + self.audio.expected()
    }

    /// Count a video SRTP packet by its clear-text header (RFC 3711 does not encrypt it), if
    /// this viewer counts video that way by now (see `--decrypt-all`). False: decrypt it.
    #[inline]
    pub(crate) fn counted_by_header(&mut self, d: &[u8], decrypt_all: bool) -> bool {
        let by_header = !decrypt_all
            && self.drop == 0.0
            && self.first_key.is_some()
            && is_rtp(d)
            && is_video_pt(d[1] & 0x7f);
        if by_header {
            let ssrc = Ssrc::from(u32::from_be_bytes([d[8], d[9], d[10], d[11]]));
            self.bytes += d.len() as u64;
            self.video.on_header(ssrc, u16::from_be_bytes([d[2], d[3]]));
        }
        by_header
    }

    #[inline]
    pub(crate) fn on_rtp(&mut self, p: &RtpPacket, now: Instant) {
        if self.first_rtp.is_none() {
            self.first_rtp = Some(now - self.t0);
        }
        let h = &p.header;
        self.bytes += (h.header_len + p.payload.len()) as u64;
        if !is_video_pt(*h.payload_type) {
            self.audio.on_packet(h.ssrc, *p.seq_no);
            return;
        }
        self.video.on_packet(h.ssrc, *p.seq_no);
        if self.first_key.is_some() {
            return;
        }
        match self.key_ts {
            // The keyframe's access unit ends at its marker bit, or when a later one starts
            // (its last packet was lost).
            Some(ts) if ts != h.timestamp || h.marker => {
                self.first_key = Some(now - self.t0);
            }
            Some(_) => {}
            None if h264_keyframe_start(&p.payload) => {
                self.key_ts = Some(h.timestamp);
                if h.marker {
                    self.first_key = Some(now - self.t0);
                }
            }
            None => {}
        }
    }
}

/// Whether an H.264 RTP payload (RFC 6184) starts a keyframe: an SPS or IDR as a single NAL
/// unit or inside a STAP-A, or the first fragment of an IDR in an FU-A.
fn h264_keyframe_start(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if len == 0 || rest.len() < 2 + len {
                    return false;
                }
                if matches!(rest[2] & 0x1f, IDR | SPS) {
                    return true;
                }
                rest = &rest[2 + len..];
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

/// An RTP (not RTCP) packet: first byte 128..=191 (RFC 7983), payload type not 64..=95
/// (where RTCP's 192..=223 packet types fall with the marker bit, RFC 5761).
pub(crate) fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && (128..=191).contains(&d[0]) && !(64..=95).contains(&(d[1] & 0x7f))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_starts_are_found_in_single_stap_a_and_fu_a_payloads() {
        // Single NAL units: IDR (5) and SPS (7) start a keyframe; a P slice (1) does not.
        assert!(h264_keyframe_start(&[0x65, 0x88]));
        assert!(h264_keyframe_start(&[0x67, 0x42]));
        assert!(!h264_keyframe_start(&[0x41, 0x9a]));
        // STAP-A with SPS + PPS.
        assert!(h264_keyframe_start(&[
            0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce
        ]));
        // STAP-A with only a PPS and an SEI, and a truncated one.
        assert!(!h264_keyframe_start(&[
            0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x06, 0x05
        ]));
        assert!(!h264_keyframe_start(&[0x78, 0x00, 0x09, 0x67]));
        // FU-A: start of an IDR, a middle fragment of it, the start of a P slice.
        assert!(h264_keyframe_start(&[0x7c, 0x85, 0x00]));
        assert!(!h264_keyframe_start(&[0x7c, 0x05, 0x00]));
        assert!(!h264_keyframe_start(&[0x7c, 0x81, 0x00]));
        assert!(!h264_keyframe_start(&[]));
    }

    #[test]
    fn loss_counts_gaps_per_ssrc_range() {
        let mut t = Track::default();
        for seq in [10, 11, 13, 14] {
            t.on_packet(Ssrc::from(1), seq);
        }
        assert_eq!((t.expected(), t.received), (5, 4));
        // Reordered packet fills the gap; a new SSRC starts a new range.
        t.on_packet(Ssrc::from(1), 12);
        t.on_packet(Ssrc::from(2), 1000);
        t.on_packet(Ssrc::from(2), 1002);
        assert_eq!((t.expected(), t.received), (8, 7));
    }

    #[test]
    fn header_counting_extends_sequence_numbers_across_the_wrap() {
        assert_eq!(extend_seq(10, 11), 11);
        assert_eq!(extend_seq(65_535, 0), 65_536);
        assert_eq!(extend_seq(65_537, 65_534), 65_534);
        assert_eq!(extend_seq(3 << 16 | 5, 3), 3 << 16 | 3);
        assert_eq!(extend_seq(0, 65_535), 65_535, "never below zero");
        // Decrypted packets (str0m's extended numbers), then headers, across a wrap: no loss.
        let mut t = Track::default();
        for seq in 65_530..65_536 {
            t.on_packet(Ssrc::from(7), seq);
        }
        for seq in [0u16, 1, 3, 2, 4] {
            t.on_header(Ssrc::from(7), seq);
        }
        assert_eq!((t.expected(), t.received), (11, 11));
        t.on_header(Ssrc::from(7), 6);
        assert_eq!((t.expected(), t.received), (13, 12), "5 is lost");
    }
}
