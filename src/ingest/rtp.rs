//! RTP-wrapped MPEG-TS (RFC 2250) on a UDP source, sans-IO: datagrams and `now` in, TS bytes
//! out, in sequence order.
//!
//! ```text
//!  datagram ──► classify ──► 0x47…            plain TS: passed as it is
//!                       ├──► RTP v2, PT 33 or   header (CSRCs, extension, padding) stripped,
//!                       │    96–127, 188×N TS   payload into the reorder window ──► in order
//!                       ├──► RTCP               dropped
//!                       └──► anything else      passed as it is (the aligner resyncs)
//! ```
//!
//! IPTV multicast and many encoders and gateways send TS in RTP, whose sequence numbers say
//! what a bare UDP datagram cannot: that one went missing, came twice, or overtook another.
//! A datagram starting with 0x47 is plain TS (an RTP header's first byte is 0x80–0xBF), so
//! both kinds are told apart datagram by datagram, and a sender may switch. Out-of-order
//! packets are held in a small window until the gap before them fills or its oldest packet
//! has waited `hold`; then the missing ones are given up on (counted lost), since TS must not
//! wait long: the demuxer copes with a lost packet, a player with a late stream less well.
//! A new sender (address or SSRC) or a jump of more than [`RESYNC_JUMP`](crate::rtp::RESYNC_JUMP) sequence numbers
//! starts the window afresh.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rtp::{extend_seq, RESYNC_JUMP};
use crate::stream::link::RtpCounts;

/// MPEG-TS packet size and sync byte.
const TS_PACKET: usize = 188;
const TS_SYNC: u8 = 0x47;
/// RFC 3551's static payload type for MP2T.
pub const PT_MP2T: u8 = 33;
/// RTCP packet types 200–204 seen through the RTP header's payload-type bits (RFC 5761).
const RTCP_PT: std::ops::RangeInclusive<u8> = 72..=76;
/// Dynamic payload types (RFC 3551), which some senders use for MP2T.
const DYNAMIC_PT: std::ops::RangeInclusive<u8> = 96..=127;
/// Packets the window holds at most: at 10 Mbit/s (950 packets of 7 TS packets a second)
/// about 130 ms, past any `hold` worth setting; each held packet keeps its buffer for reuse.
pub const WINDOW: usize = 128;

/// What one datagram is.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Starts with the TS sync byte.
    Ts(&'a [u8]),
    /// RTP carrying whole TS packets.
    Rtp(RtpTs<'a>),
    /// RTCP (a sender report): nothing for the stream.
    Rtcp,
    /// Neither: passed on as it is.
    Other(&'a [u8]),
}

/// The fields of an RTP packet that carries TS.
#[derive(Debug, PartialEq, Eq)]
pub struct RtpTs<'a> {
    pub payload_type: u8,
    pub seq: u16,
    pub ssrc: u32,
    /// Whole TS packets (188 × N, the first starting with 0x47).
    pub payload: &'a [u8],
}

/// Tells what `d` is; never panics, whatever the bytes.
pub fn classify(d: &[u8]) -> Datagram<'_> {
    if d.first() == Some(&TS_SYNC) {
        return Datagram::Ts(d);
    }
    if d.len() < 12 || d[0] >> 6 != 2 {
        return Datagram::Other(d);
    }
    let pt = d[1] & 0x7f;
    if RTCP_PT.contains(&pt) {
        return Datagram::Rtcp;
    }
    let csrcs = usize::from(d[0] & 0x0f);
    let mut start = 12 + 4 * csrcs;
    if d[0] & 0x10 != 0 {
        // Header extension: 16-bit profile, 16-bit length in 32-bit words.
        let Some(ext) = d.get(start..start + 4) else {
            return Datagram::Other(d);
        };
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = d.len();
    if d[0] & 0x20 != 0 {
        end = end.saturating_sub(usize::from(d[d.len() - 1]));
    }
    let payload = match d.get(start..end) {
        Some(p) => p,
        None => return Datagram::Other(d),
    };
    let carries_ts = !payload.is_empty()
        && payload.len() % TS_PACKET == 0
        && payload[0] == TS_SYNC
        && (pt == PT_MP2T || DYNAMIC_PT.contains(&pt));
    if !carries_ts {
        return Datagram::Other(d);
    }
    Datagram::Rtp(RtpTs {
        payload_type: pt,
        seq: u16::from_be_bytes([d[2], d[3]]),
        ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
        payload,
    })
}

/// What changed about the sender, for a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// RTP-wrapped TS from this sender (first packet, or a new SSRC).
    Rtp { payload_type: u8, ssrc: u32 },
    /// Plain TS from this sender (first datagram, or after RTP).
    Plain,
}

/// One slot of the window.
#[derive(Debug, Default)]
struct Slot {
    /// Extended sequence number held here, if any.
    seq: Option<u64>,
    arrived: Option<Instant>,
    data: Vec<u8>,
}

/// Where the in-order output stands.
#[derive(Debug, Clone, Copy)]
struct Position {
    ssrc: u32,
    /// Extended sequence number of the next packet to output.
    next: u64,
    /// Highest extended sequence number seen.
    highest: u64,
    /// Bit i: sequence `next - 1 - i` was given up on (so its late arrival is not a duplicate).
    given_up: u64,
}

/// The receiver of one UDP source: classifies, strips, reorders and counts.
#[derive(Debug)]
pub struct RtpReceiver {
    hold: Duration,
    sender: Option<SocketAddr>,
    kind: Option<Detected>,
    pos: Option<Position>,
    slots: Vec<Slot>,
    held: usize,
    counts: RtpCounts,
}

impl RtpReceiver {
    /// `hold`: how long a packet waits for the gap before it to fill (0: no reordering; a gap
    /// is given up on at once).
    pub fn new(hold: Duration) -> RtpReceiver {
        RtpReceiver {
            hold,
            sender: None,
            kind: None,
            pos: None,
            slots: (0..WINDOW).map(|_| Slot::default()).collect(),
            held: 0,
            counts: RtpCounts::default(),
        }
    }

    /// The counts since this receiver started.
    pub fn counts(&self) -> &RtpCounts {
        &self.counts
    }

    /// Takes one datagram from `from` that arrived at `now`; appends the TS it releases to
    /// `out`. Returns what changed about the sender, if anything.
    pub fn push(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Detected> {
        if self.sender != Some(from) {
            // A new sender: what the old one left in the window goes out first.
            self.flush(out);
            self.sender = Some(from);
            self.kind = None;
        }
        match classify(datagram) {
            Datagram::Ts(d) => {
                let changed = self.kind != Some(Detected::Plain);
                if changed {
                    self.flush(out);
                    self.kind = Some(Detected::Plain);
                }
                out.extend_from_slice(d);
                changed.then_some(Detected::Plain)
            }
            Datagram::Other(d) => {
                out.extend_from_slice(d);
                None
            }
            Datagram::Rtcp => None,
            Datagram::Rtp(p) => {
                self.counts.packets += 1;
                let detected = Detected::Rtp {
                    payload_type: p.payload_type,
                    ssrc: p.ssrc,
                };
                let changed = self.kind != Some(detected);
                if changed {
                    self.kind = Some(detected);
                }
                self.rtp(p.ssrc, p.seq, p.payload, now, out);
                changed.then_some(detected)
            }
        }
    }

    /// When [`RtpReceiver::poll`] has something to do: the oldest held packet's deadline.
    pub fn deadline(&self) -> Option<Instant> {
        if self.held == 0 {
            return None;
        }
        self.slots
            .iter()
            .filter(|s| s.seq.is_some())
            .filter_map(|s| s.arrived)
            .min()
            .map(|t| t + self.hold)
    }

    /// Gives up on gaps whose later packets waited `hold`; appends what that releases.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<u8>) {
        while self.deadline().is_some_and(|d| d <= now) {
            self.skip_gap(out);
        }
    }

    /// Outputs everything held, in order, giving up on the gaps between (the sender changed
    /// or the source ended).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        while self.held > 0 {
            self.skip_gap(out);
        }
    }

    fn rtp(&mut self, ssrc: u32, seq: u16, payload: &[u8], now: Instant, out: &mut Vec<u8>) {
        let pos = match self.pos {
            Some(p) if p.ssrc == ssrc => p,
            Some(_) => {
                self.flush(out);
                self.counts.resyncs += 1;
                self.start(ssrc, seq)
            }
            None => self.start(ssrc, seq),
        };
        let s = extend_seq(pos.highest, seq);
        if s.abs_diff(pos.highest) > RESYNC_JUMP {
            self.flush(out);
            self.counts.resyncs += 1;
            self.start(ssrc, seq);
            return self.rtp(ssrc, seq, payload, now, out);
        }
        if s < pos.next {
            let back = pos.next - 1 - s;
            let p = self.pos.as_mut().expect("set by start or before");
            if back < 64 && p.given_up & (1 << back) != 0 {
                p.given_up &= !(1 << back);
                self.counts.late += 1;
            } else {
                self.counts.duplicates += 1;
            }
            return;
        }
        let slot = (s % WINDOW as u64) as usize;
        if self.slots[slot].seq == Some(s) {
            self.counts.duplicates += 1;
            return;
        }
        if s < pos.highest {
            self.counts.reordered += 1;
        }
        // Room in the window: give up on the oldest gaps until `s` fits.
        while s >= self.pos.expect("set").next + WINDOW as u64 {
            if self.held == 0 {
                let p = self.pos.as_mut().expect("set");
                let missing = s + 1 - WINDOW as u64 - p.next;
                self.counts.lost += missing;
                p.given_up =
                    p.given_up.checked_shl(missing as u32).unwrap_or(0) | low_bits(missing);
                p.next += missing;
            } else {
                self.skip_gap(out);
            }
        }
        let p = self.pos.as_mut().expect("set");
        p.highest = p.highest.max(s);
        if s == p.next && self.held == 0 {
            // The usual case: in order, nothing waiting.
            out.extend_from_slice(payload);
            p.next += 1;
            p.given_up <<= 1;
            return;
        }
        let slot = &mut self.slots[(s % WINDOW as u64) as usize];
        slot.seq = Some(s);
        slot.arrived = Some(now);
        slot.data.clear();
        slot.data.extend_from_slice(payload);
        self.held += 1;
        self.release(out);
        if self.hold.is_zero() {
            self.flush(out);
        }
    }

    fn start(&mut self, ssrc: u32, seq: u16) -> Position {
        let p = Position {
            ssrc,
            next: u64::from(seq) + (1 << 16),
            highest: u64::from(seq) + (1 << 16),
            given_up: 0,
        };
        self.pos = Some(p);
        p
    }

    /// Outputs the held packets that follow on from `next`.
    fn release(&mut self, out: &mut Vec<u8>) {
        let Some(p) = self.pos.as_mut() else { return };
        loop {
            let slot = &mut self.slots[(p.next % WINDOW as u64) as usize];
            if slot.seq != Some(p.next) {
                return;
            }
            out.extend_from_slice(&slot.data);
            slot.seq = None;
            slot.arrived = None;
            self.held -= 1;
            p.next += 1;
            p.given_up <<= 1;
        }
    }

    /// Gives up on the sequence numbers before the lowest held packet, then releases.
    fn skip_gap(&mut self, out: &mut Vec<u8>) {
        let Some(p) = self.pos.as_mut() else {
            self.held = 0;
            return;
        };
        let lowest = (0..WINDOW as u64)
            .map(|i| p.next + i)
            .find(|s| self.slots[(s % WINDOW as u64) as usize].seq == Some(*s));
        let Some(lowest) = lowest else {
            // Nothing held after all (an invariant broken): start clean.
            self.slots.iter_mut().for_each(|s| s.seq = None);
            self.held = 0;
            return;
        };
        let missing = lowest - p.next;
        self.counts.lost += missing;
        p.given_up = p.given_up.checked_shl(missing as u32).unwrap_or(0) | low_bits(missing);
        p.next = lowest;
        self.release(out);
    }
}

/// `n` low bits set (all 64 for n ≥ 64).
fn low_bits(n: u64) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[cfg(test)]
#[path = "rtp_tests.rs"]
mod tests;
