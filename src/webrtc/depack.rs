//! A WHIP publisher's H.264 RTP payloads (RFC 6184, packetization-mode 1: single NAL units,
//! STAP-A, FU-A), in sequence order from the jitter buffer, become Annex B access units.
//! Sans-IO. str0m has its own depacketizer, but only behind its frame mode, which is what the
//! jitter buffer replaces (see `jitter`).
//!
//! After a gap the access unit being built is broken: with `skip_to_keyframe` it is dropped
//! and so is everything up to the next keyframe (the decodable point; a keyframe is asked
//! for); without, what remains goes on (the buffer is off: the decoder conceals).

use std::time::Instant;

use crate::codec::h264::NalType;
use crate::rtp::h264::{FU_A, STAP_A};
use crate::rtp::nal::{FU_END, FU_START};

/// A whole access unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// Annex B (4-byte start codes).
    pub data: Vec<u8>,
    pub ts: u32,
    /// It has an IDR picture.
    pub keyframe: bool,
    /// When its first packet arrived.
    pub arrival: Instant,
}

const START: [u8; 4] = [0, 0, 0, 1];

#[derive(Debug)]
pub struct H264Assembler {
    skip_to_keyframe: bool,
    au: Vec<u8>,
    ts: Option<u32>,
    arrival: Option<Instant>,
    keyframe: bool,
    /// A fragmented NAL unit is open in `au`.
    fu_open: bool,
    /// Something of the access unit being built is missing.
    broken: bool,
    /// Nothing goes out before a keyframe (at the start, and after a loss when skipping).
    waiting: bool,
    /// Access units dropped while waiting for a keyframe.
    pub skipped: u64,
}

impl H264Assembler {
    pub fn new(skip_to_keyframe: bool) -> Self {
        H264Assembler {
            skip_to_keyframe,
            au: Vec::new(),
            ts: None,
            arrival: None,
            keyframe: false,
            fu_open: false,
            broken: false,
            waiting: true,
            skipped: 0,
        }
    }

    /// Whether access units are being dropped until a keyframe comes.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// Packets were lost before the next one.
    pub fn gap(&mut self) {
        if !self.au.is_empty() || self.fu_open || self.ts.is_some() {
            self.broken = true;
        } else if self.skip_to_keyframe {
            // Between access units: whole pictures may be gone that the next ones refer to;
            // a keyframe refers to none.
            self.waiting = true;
        }
    }

    /// The next payload in sequence. A finished access unit goes into `out`; returns true when
    /// a keyframe should be asked for (an access unit was dropped for want of one).
    pub fn push(
        &mut self,
        payload: &[u8],
        ts: u32,
        marker: bool,
        arrival: Instant,
        out: &mut Vec<AccessUnit>,
    ) -> bool {
        let mut want = false;
        // A new timestamp ends the access unit whose marker was not seen.
        if self.ts.is_some_and(|t| t != ts) {
            want |= self.finish(out);
        }
        if self.ts.is_none() {
            self.ts = Some(ts);
            self.arrival = Some(arrival);
        }
        self.depacketize(payload);
        if marker {
            want |= self.finish(out);
        }
        want
    }

    fn nal(&mut self, nal: &[u8]) {
        if let Some(&h) = nal.first() {
            self.keyframe |= h & 0x1f == NalType::IDR.0;
            self.au.extend_from_slice(&START);
            self.au.extend_from_slice(nal);
        }
    }

    fn depacketize(&mut self, p: &[u8]) {
        let Some(&h) = p.first() else {
            return;
        };
        let typ = h & 0x1f;
        if typ != FU_A && self.fu_open {
            // The fragmented unit never ended.
            self.fu_open = false;
            self.broken = true;
        }
        match typ {
            1..=23 => self.nal(p),
            STAP_A => {
                let mut rest = &p[1..];
                while rest.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let Some(nal) = rest.get(2..2 + n) else {
                        self.broken = true;
                        return;
                    };
                    self.nal(nal);
                    rest = &rest[2 + n..];
                }
            }
            FU_A if p.len() >= 2 => {
                let (fu, body) = (p[1], &p[2..]);
                let (start, end) = (fu & FU_START != 0, fu & FU_END != 0);
                if start {
                    if self.fu_open {
                        self.broken = true;
                    }
                    self.nal(&[(h & 0xe0) | (fu & 0x1f)]);
                    self.fu_open = true;
                } else if !self.fu_open {
                    // Its start was lost: a piece of a slice is no slice.
                    self.broken = true;
                    return;
                }
                self.au.extend_from_slice(body);
                if end {
                    self.fu_open = false;
                }
            }
            // Reserved types, STAP-B, MTAP, FU-B (not in mode 1): nothing we can use.
            _ => self.broken = true,
        }
    }

    fn finish(&mut self, out: &mut Vec<AccessUnit>) -> bool {
        if self.fu_open {
            self.fu_open = false;
            self.broken = true;
        }
        let data = std::mem::take(&mut self.au);
        let (ts, arrival) = (self.ts.take(), self.arrival.take());
        let (broken, keyframe) = (
            std::mem::take(&mut self.broken),
            std::mem::take(&mut self.keyframe),
        );
        let (Some(ts), Some(arrival)) = (ts, arrival) else {
            return false;
        };
        if broken && self.skip_to_keyframe {
            self.waiting = true;
        }
        if data.is_empty() || (broken && self.skip_to_keyframe) {
            self.skipped += u64::from(!data.is_empty());
            return self.skip_to_keyframe;
        }
        if self.waiting && !keyframe {
            self.skipped += 1;
            return true;
        }
        self.waiting = false;
        out.push(AccessUnit {
            data,
            ts,
            keyframe,
            arrival,
        });
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fu(nal: &[u8], size: usize) -> Vec<Vec<u8>> {
        let (h, body) = (nal[0], &nal[1..]);
        let chunks: Vec<&[u8]> = body.chunks(size).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut fu = (h & 0x1f) | if i == 0 { 0x80 } else { 0 };
                if i == chunks.len() - 1 {
                    fu |= 0x40;
                }
                [&[(h & 0xe0) | 28, fu][..], c].concat()
            })
            .collect()
    }

    fn stap(nals: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![24];
        for n in nals {
            p.extend_from_slice(&(n.len() as u16).to_be_bytes());
            p.extend_from_slice(n);
        }
        p
    }

    const SPS: &[u8] = &[0x67, 1, 2, 3];
    const PPS: &[u8] = &[0x68, 4];

    fn idr() -> Vec<u8> {
        [&[0x65][..], &[9; 3000]].concat()
    }

    fn p_slice(fill: u8) -> Vec<u8> {
        [&[0x41][..], &[fill; 2500]].concat()
    }

    /// A keyframe (STAP-A with SPS/PPS, then the IDR in FU-A) and then P pictures, each in
    /// FU-A: (payload, ts, marker) per packet.
    fn stream(pictures: usize) -> Vec<(Vec<u8>, u32, bool)> {
        let mut pkts = vec![(stap(&[SPS, PPS]), 0, false)];
        for (i, pic) in (0..pictures).enumerate() {
            let nal = if pic == 0 { idr() } else { p_slice(i as u8) };
            let frags = fu(&nal, 1000);
            let n = frags.len();
            for (j, f) in frags.into_iter().enumerate() {
                pkts.push((f, 3000 * i as u32, j == n - 1));
            }
        }
        pkts
    }

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| [&START[..], n].concat()).collect()
    }

    #[test]
    fn stap_a_and_fu_a_make_annex_b_access_units() {
        let mut a = H264Assembler::new(true);
        let (mut out, now) = (Vec::new(), Instant::now());
        for (p, ts, m) in stream(3) {
            assert!(!a.push(&p, ts, m, now, &mut out));
        }
        assert_eq!(out.len(), 3);
        assert!(out[0].keyframe && !out[1].keyframe);
        assert_eq!(out[0].data, annex_b(&[SPS, PPS, &idr()]));
        assert_eq!(out[2].data, annex_b(&[&p_slice(2)]));
        assert_eq!((out[1].ts, out[2].ts), (3000, 6000));
    }

    #[test]
    fn nothing_before_the_first_keyframe() {
        let mut a = H264Assembler::new(false);
        let (mut out, now) = (Vec::new(), Instant::now());
        assert!(a.push(&p_slice(1), 0, true, now, &mut out), "ask for one");
        assert!(out.is_empty() && a.waiting());
        for (p, ts, m) in stream(2) {
            a.push(&p, ts + 3000, m, now, &mut out);
        }
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn after_a_loss_it_skips_to_the_next_keyframe_and_asks_for_one() {
        let mut a = H264Assembler::new(true);
        let (mut out, now) = (Vec::new(), Instant::now());
        let pkts = stream(4);
        // Picture 2's second fragment is lost.
        let lost = pkts.iter().position(|(_, ts, _)| *ts == 6000).unwrap() + 1;
        let mut want = false;
        for (i, (p, ts, m)) in pkts.iter().enumerate() {
            if i == lost {
                a.gap();
                continue;
            }
            want |= a.push(p, *ts, *m, now, &mut out);
        }
        assert!(want, "a keyframe asked for");
        assert_eq!(out.len(), 2, "pictures 0 and 1, then nothing");
        assert_eq!(a.skipped, 2);
        assert!(a.waiting());
        // A keyframe ends the wait.
        for (p, ts, m) in stream(1) {
            a.push(&p, ts + 90_000, m, now, &mut out);
        }
        assert_eq!(out.len(), 3);
        assert!(out[2].keyframe && !a.waiting());
    }

    #[test]
    fn without_skipping_a_loss_passes_what_remains() {
        let mut a = H264Assembler::new(false);
        let (mut out, now) = (Vec::new(), Instant::now());
        let pkts = stream(4);
        let lost = pkts.iter().position(|(_, ts, _)| *ts == 6000).unwrap() + 1;
        for (i, (p, ts, m)) in pkts.iter().enumerate() {
            if i == lost {
                a.gap();
                continue;
            }
            assert!(!a.push(p, *ts, *m, now, &mut out));
        }
        assert_eq!(out.len(), 4, "the broken picture goes on");
        assert!(out[2].data.len() < annex_b(&[&p_slice(2)]).len());
    }

    /// Random sequence numbers, times and bytes through the jitter buffer and the assembler:
    /// no panic, and what comes out is in order.
    #[test]
    fn random_rtp_through_buffer_and_assembler_does_not_panic() {
        use crate::webrtc::jitter::{JitterBuffer, JitterConfig, Out};
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let t0 = Instant::now();
        for cfg in [JitterConfig::default(), JitterConfig::OFF] {
            let mut b = JitterBuffer::new(cfg, 90_000);
            let mut a = H264Assembler::new(!cfg.is_off());
            let mut out = Vec::new();
            let (mut last, mut resyncs) = (0, 0);
            for i in 0..20_000u32 {
                let now = t0 + std::time::Duration::from_millis(u64::from(i));
                let r = rnd();
                let seq = if r % 7 == 0 { r as u16 } else { (i / 2) as u16 };
                let len = (r >> 20) as usize % 40;
                let payload: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                b.push(now, seq, (r >> 32) as u32 % 4, r & 1 == 0, payload);
                while let Some(o) = b.pop(now) {
                    match o {
                        Out::Gap { .. } => a.gap(),
                        Out::Packet(p) => {
                            // In order, but for a restart (a jump) in between.
                            let r = b.counts().resyncs;
                            assert!(p.seq > last || r != resyncs, "{} after {last}", p.seq);
                            (last, resyncs) = (p.seq, r);
                            a.push(&p.payload, p.ts, p.marker, p.arrival, &mut out);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_payloads_break_the_access_unit_without_a_panic() {
        let mut a = H264Assembler::new(true);
        let (mut out, now) = (Vec::new(), Instant::now());
        for p in [&[][..], &[24, 0, 9, 1], &[28], &[28, 0x05, 1], &[30, 1]] {
            a.push(p, 0, false, now, &mut out);
        }
        a.push(&[0x65, 1], 0, true, now, &mut out);
        assert!(out.is_empty());
    }
}
