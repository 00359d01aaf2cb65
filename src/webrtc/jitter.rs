//! A WHIP publisher's jitter buffer, sans-IO: RTP packets and `now` in, packets in sequence
//! order (and the gaps given up on) out, each no sooner than its deadline.
//!
//! ```text
//!  push(now, seq, ts, ..) ──► [ held by sequence number ] ──► pop(now): Packet | Gap { lost }
//!                              a packet is due at its expected arrival + delay; a hole is given
//!                              up on when the packet after it is due (str0m NACKs the hole until
//!                              then, so a resent packet that comes in time fills it)
//! ```
//!
//! *Expected arrival* is the packet's RTP time plus the smallest transit time seen (the floor):
//! a packet that came the fastest way is held exactly `delay`, one that the network held back
//! is held that much less. So a hole costs at most `delay` of waiting, and the output keeps the
//! sender's spacing.
//!
//! *Delay* stays between MIN and MAX: it follows the largest transit excess over the floor seen
//! lately (a packet resent after a NACK counts with the time its resend took), so it grows when
//! the link's jitter (or the recovery it needs) demands and shrinks back, with a time constant
//! of [`SHRINK`], when the link calms down. MIN 0 and MAX 0 turn the buffer off: packets pass in
//! arrival order, a packet behind one already passed is late.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::rtp::{extend_seq, RESYNC_JUMP};

/// The transit excess that sets the delay decays with this time constant.
const SHRINK: Duration = Duration::from_secs(8);
/// The floor is the smallest transit of the last one to two of these windows, so that it
/// follows a route that got slower (or a sender clock slower than ours) within seconds.
const FLOOR_WINDOW: Duration = Duration::from_secs(5);
/// Held packets beyond this are released regardless of their deadline (a stalled hole must not
/// take the memory with it).
const MAX_HELD: usize = 4096;
/// Sequence numbers given up on that a late packet is recognised by (anything else behind the
/// release point is a duplicate).
const LOST_MEMORY: usize = 512;

/// `--whip-jitter-ms MIN[,MAX]`: MAX left out is MIN (a fixed hold); `0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    pub min: Duration,
    pub max: Duration,
}

impl JitterConfig {
    pub const OFF: JitterConfig = JitterConfig {
        min: Duration::ZERO,
        max: Duration::ZERO,
    };

    pub fn is_off(&self) -> bool {
        self.max.is_zero()
    }
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            min: Duration::from_millis(40),
            max: Duration::from_millis(400),
        }
    }
}

impl std::str::FromStr for JitterConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rule = "MIN[,MAX] in milliseconds, MIN <= MAX <= 10000 (e.g. 40,400), or 0 (off)";
        let ms = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{s:?}: {rule}"))
        };
        let (min, max) = match s.split_once(',') {
            Some((a, b)) => (ms(a)?, ms(b)?),
            None => (ms(s)?, ms(s)?),
        };
        if min > max || max > 10_000 {
            return Err(format!("{s:?}: {rule}"));
        }
        Ok(JitterConfig {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        })
    }
}

/// What the buffer counted since it began (plain numbers; the session publishes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterCounts {
    /// Packets pushed (duplicates and late ones included).
    pub packets: u64,
    /// Sequence numbers given up on (missing when their deadline passed).
    pub lost: u64,
    /// Packets that came after their place was given up on (dropped).
    pub late: u64,
    /// Packets that filled a hole before its deadline: reordered, or resent after a NACK.
    pub recovered: u64,
    /// Packets that came twice (the copy is dropped).
    pub duplicates: u64,
    /// Times the sequence jumped so far that the sender was taken as restarted.
    pub resyncs: u64,
}

/// A held RTP packet (`seq` extended past 65535).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T> {
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    pub arrival: Instant,
    pub payload: T,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out<T> {
    /// The next packet in sequence.
    Packet(Packet<T>),
    /// `lost` packets before the next one were given up on (0: the sender restarted).
    Gap { lost: u64 },
}

struct Held<T> {
    packet: Packet<T>,
    /// RTP time extended past 2^32, in clock ticks.
    ts_ext: i64,
}

pub struct JitterBuffer<T> {
    cfg: JitterConfig,
    clock_rate: i64,
    held: BTreeMap<u64, Held<T>>,
    /// The next sequence number to release.
    next: Option<u64>,
    highest: Option<u64>,
    /// The last RTP time seen (raw and extended), to extend the next one.
    last_ts: Option<(u32, i64)>,
    epoch: Option<Instant>,
    /// The smallest transit (arrival − RTP time, µs) of the previous window, and of the
    /// current one with when it began; the floor is the smaller.
    floor_prev: Option<i64>,
    floor_cur: Option<(i64, Instant)>,
    floor: Option<i64>,
    /// The largest transit excess over the floor seen lately (µs, decaying); when it decayed.
    peak: (f64, Option<Instant>),
    delay: Duration,
    lost_recent: VecDeque<u64>,
    pending_gap: Option<u64>,
    counts: JitterCounts,
}

impl<T> JitterBuffer<T> {
    /// Whether it holds nothing (`--whip-jitter-ms 0`).
    pub fn is_off(&self) -> bool {
        self.cfg.is_off()
    }

    pub fn new(cfg: JitterConfig, clock_rate: u32) -> Self {
        JitterBuffer {
            cfg,
            clock_rate: i64::from(clock_rate.max(1)),
            held: BTreeMap::new(),
            next: None,
            highest: None,
            last_ts: None,
            epoch: None,
            floor_prev: None,
            floor_cur: None,
            floor: None,
            peak: (0.0, None),
            delay: cfg.min,
            lost_recent: VecDeque::new(),
            pending_gap: None,
            counts: JitterCounts::default(),
        }
    }

    pub fn counts(&self) -> JitterCounts {
        self.counts
    }

    /// The hold now: between MIN and MAX.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// A packet as it arrived.
    pub fn push(&mut self, now: Instant, seq: u16, ts: u32, marker: bool, payload: T) {
        self.counts.packets += 1;
        let epoch = *self.epoch.get_or_insert(now);
        let ts_ext = match self.last_ts {
            // A wrapping difference: RTP time runs both ways around a reordered packet.
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw) as i32),
            None => i64::from(ts),
        };
        if self.last_ts.is_none_or(|(_, ext)| ts_ext > ext) {
            self.last_ts = Some((ts, ts_ext));
        }
        self.observe(now, epoch, ts_ext);

        // Room below the first sequence number, so that reordered packets before it extend.
        let seq_ext = match self.highest {
            Some(h) => extend_seq(h, seq),
            None => (1 << 16) + u64::from(seq),
        };
        let packet = Packet {
            seq: seq_ext,
            ts,
            marker,
            arrival: now,
            payload,
        };
        let Some(next) = self.next else {
            self.next = Some(seq_ext);
            self.highest = Some(seq_ext);
            self.held.insert(seq_ext, Held { packet, ts_ext });
            return;
        };
        let highest = self.highest.unwrap_or(seq_ext);
        if seq_ext > highest + RESYNC_JUMP || seq_ext + RESYNC_JUMP < next {
            // The sender restarted (or jumped): start over from this packet.
            self.counts.resyncs += 1;
            self.held.clear();
            self.lost_recent.clear();
            self.pending_gap = Some(0);
            self.next = Some(seq_ext);
            self.highest = Some(seq_ext);
            self.held.insert(seq_ext, Held { packet, ts_ext });
            return;
        }
        if seq_ext < next {
            if let Some(i) = self.lost_recent.iter().position(|&s| s == seq_ext) {
                self.lost_recent.remove(i);
                self.counts.late += 1;
            } else {
                self.counts.duplicates += 1;
            }
            return;
        }
        if self.held.contains_key(&seq_ext) {
            self.counts.duplicates += 1;
            return;
        }
        if seq_ext < highest {
            self.counts.recovered += 1;
        }
        self.highest = Some(highest.max(seq_ext));
        self.held.insert(seq_ext, Held { packet, ts_ext });
    }

    /// The next packet or gap due at `now`, if any.
    pub fn pop(&mut self, now: Instant) -> Option<Out<T>> {
        if let Some(lost) = self.pending_gap.take() {
            return Some(Out::Gap { lost });
        }
        self.decay(now);
        let next = self.next?;
        let (&seq, first) = self.held.first_key_value()?;
        if now < self.due(first) && self.held.len() <= MAX_HELD {
            return None;
        }
        if seq > next {
            let lost = seq - next;
            self.counts.lost += lost;
            for s in next..seq {
                if self.lost_recent.len() == LOST_MEMORY {
                    self.lost_recent.pop_front();
                }
                self.lost_recent.push_back(s);
            }
            self.next = Some(seq);
            return Some(Out::Gap { lost });
        }
        let held = self.held.pop_first()?;
        self.next = Some(seq + 1);
        Some(Out::Packet(held.1.packet))
    }

    /// When `pop` has something next (None: nothing held).
    pub fn deadline(&self) -> Option<Instant> {
        if self.pending_gap.is_some() {
            return self.epoch;
        }
        self.held.first_key_value().map(|(_, h)| self.due(h))
    }

    /// When a held packet is due: its expected arrival plus the delay. Off: at once.
    fn due(&self, h: &Held<T>) -> Instant {
        let (Some(epoch), Some(floor), false) = (self.epoch, self.floor, self.cfg.is_off()) else {
            return h.packet.arrival;
        };
        let expected = self.media_us(h.ts_ext) + floor + self.delay.as_micros() as i64;
        match u64::try_from(expected) {
            Ok(us) => epoch + Duration::from_micros(us),
            Err(_) => h.packet.arrival,
        }
    }

    fn media_us(&self, ts_ext: i64) -> i64 {
        (i128::from(ts_ext) * 1_000_000 / i128::from(self.clock_rate)) as i64
    }

    /// A packet's transit moves the floor and the peak excess, and so the delay.
    fn observe(&mut self, now: Instant, epoch: Instant, ts_ext: i64) {
        let arrival_us = now.saturating_duration_since(epoch).as_micros() as i64;
        let transit = arrival_us - self.media_us(ts_ext);
        self.floor_cur = match self.floor_cur {
            Some((m, since)) if now.saturating_duration_since(since) < FLOOR_WINDOW => {
                Some((m.min(transit), since))
            }
            Some((m, _)) => {
                self.floor_prev = Some(m);
                Some((transit, now))
            }
            None => Some((transit, now)),
        };
        let cur = self.floor_cur.map_or(transit, |(m, _)| m);
        let floor = self.floor_prev.map_or(cur, |p| p.min(cur));
        self.floor = Some(floor);
        self.decay(now);
        let excess = (transit - floor) as f64;
        if excess > self.peak.0 {
            self.peak.0 = excess;
        }
        self.set_delay();
    }

    fn decay(&mut self, now: Instant) {
        let (peak, at) = self.peak;
        if let Some(at) = at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.peak.0 = peak * (-dt / SHRINK.as_secs_f64()).exp();
        }
        self.peak.1 = Some(now);
        self.set_delay();
    }

    fn set_delay(&mut self) {
        let want = Duration::from_micros(self.peak.0 as u64);
        self.delay = want.clamp(self.cfg.min, self.cfg.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg(min: u64, max: u64) -> JitterConfig {
        JitterConfig {
            min: MS * min as u32,
            max: MS * max as u32,
        }
    }

    /// Everything due by `now`.
    fn drain(b: &mut JitterBuffer<u16>, now: Instant) -> Vec<Out<u16>> {
        std::iter::from_fn(|| b.pop(now)).collect()
    }

    fn seqs(out: &[Out<u16>]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Out::Packet(p) => p.payload.to_string(),
                Out::Gap { lost } => format!("gap{lost}"),
            })
            .collect()
    }

    /// Packet `i` of a 90 kHz stream sending one packet every 10 ms.
    fn ts(i: u16) -> u32 {
        u32::from(i) * 900
    }

    #[test]
    fn the_flag_parses_min_max_a_fixed_hold_and_off() {
        assert_eq!("40,400".parse(), Ok(cfg(40, 400)));
        assert_eq!("100".parse(), Ok(cfg(100, 100)));
        let off: JitterConfig = "0".parse().unwrap();
        assert!(off.is_off());
        assert!(!cfg(0, 400).is_off());
        assert!("400,40".parse::<JitterConfig>().is_err());
        assert!("x".parse::<JitterConfig>().is_err());
        assert!("40,20000".parse::<JitterConfig>().is_err());
    }

    #[test]
    fn reordered_packets_come_out_in_order_after_the_hold() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(40, 40), 90_000);
        b.push(t0, 0, ts(0), true, 0);
        // 2 overtakes 1.
        b.push(t0 + 20 * MS, 2, ts(2), true, 2);
        b.push(t0 + 25 * MS, 1, ts(1), true, 1);
        assert!(drain(&mut b, t0 + 39 * MS).is_empty(), "held at least MIN");
        assert_eq!(seqs(&drain(&mut b, t0 + 40 * MS)), ["0"]);
        assert_eq!(b.deadline(), Some(t0 + 50 * MS));
        assert_eq!(seqs(&drain(&mut b, t0 + 60 * MS)), ["1", "2"]);
        assert_eq!(b.counts().recovered, 1);
        assert_eq!(b.counts().lost, 0);
    }

    #[test]
    fn a_hole_is_given_up_when_the_packet_after_it_is_due_and_its_packet_is_late() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(40, 40), 90_000);
        b.push(t0, 0, ts(0), true, 0);
        b.push(t0 + 20 * MS, 2, ts(2), true, 2);
        assert_eq!(seqs(&drain(&mut b, t0 + 40 * MS)), ["0"]);
        // Still waiting for 1 (a NACK's resend may come) until 2 is due.
        assert!(drain(&mut b, t0 + 59 * MS).is_empty());
        assert_eq!(seqs(&drain(&mut b, t0 + 60 * MS)), ["gap1", "2"]);
        b.push(t0 + 70 * MS, 1, ts(1), true, 1);
        assert!(drain(&mut b, t0 + 200 * MS).is_empty());
        let c = b.counts();
        assert_eq!((c.lost, c.late, c.duplicates), (1, 1, 0));
    }

    #[test]
    fn duplicates_are_dropped_held_or_passed() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(40, 40), 90_000);
        b.push(t0, 0, ts(0), true, 0);
        b.push(t0, 0, ts(0), true, 0);
        assert_eq!(seqs(&drain(&mut b, t0 + 50 * MS)), ["0"]);
        b.push(t0 + 60 * MS, 0, ts(0), true, 0);
        assert!(drain(&mut b, t0 + 100 * MS).is_empty());
        assert_eq!(b.counts().duplicates, 2);
        assert_eq!(b.counts().late, 0);
    }

    #[test]
    fn the_sequence_wraps_at_65535() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(0, 0), 90_000);
        let mut out = Vec::new();
        for (i, seq) in [65533u16, 65534, 65535, 0, 1].into_iter().enumerate() {
            let at = t0 + MS * (10 * i as u32);
            b.push(at, seq, 900 * i as u32, true, seq);
            out.extend(drain(&mut b, at));
        }
        assert_eq!(seqs(&out), ["65533", "65534", "65535", "0", "1"]);
        assert_eq!(b.counts().lost, 0);
        // And with reordering across the wrap.
        let mut b = JitterBuffer::new(cfg(40, 40), 90_000);
        b.push(t0, 65535, 0, true, 65535);
        b.push(t0 + 10 * MS, 1, 1800, true, 1);
        b.push(t0 + 12 * MS, 0, 900, true, 0);
        assert_eq!(seqs(&drain(&mut b, t0 + MS * 100)), ["65535", "0", "1"]);
        assert_eq!(b.counts().recovered, 1);
    }

    #[test]
    fn off_passes_in_arrival_order_and_counts_the_overtaken_late() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(JitterConfig::OFF, 90_000);
        let mut out = Vec::new();
        for (at, seq) in [(0, 0u16), (10, 2), (12, 1), (20, 3)] {
            b.push(t0 + MS * at, seq, ts(seq), true, seq);
            out.extend(drain(&mut b, t0 + MS * at));
        }
        assert_eq!(seqs(&out), ["0", "gap1", "2", "3"]);
        assert_eq!((b.counts().lost, b.counts().late), (1, 1));
    }

    #[test]
    fn the_delay_grows_with_jitter_up_to_max_and_shrinks_back() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(40, 200), 90_000);
        let mut i = 0u16;
        let mut send = |b: &mut JitterBuffer<u16>, extra_ms: u32| {
            let at = t0 + MS * (10 * u32::from(i) + extra_ms);
            b.push(at, i, ts(i), true, i);
            drain(b, at);
            i += 1;
        };
        for _ in 0..50 {
            send(&mut b, 0);
        }
        assert_eq!(b.delay(), 40 * MS);
        // One packet 120 ms late: the delay follows it.
        send(&mut b, 120);
        assert!(b.delay() >= 115 * MS, "{:?}", b.delay());
        // Far beyond MAX: capped.
        send(&mut b, 900);
        assert_eq!(b.delay(), 200 * MS);
        // A calm link for 30 s: back to MIN.
        for _ in 0..3000 {
            send(&mut b, 0);
        }
        assert_eq!(b.delay(), 40 * MS);
    }

    #[test]
    fn a_slower_route_is_followed_and_the_delay_comes_back() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(40, 400), 90_000);
        let mut out = 0;
        for i in 0..4000u16 {
            // From packet 500 on, every packet takes 150 ms longer.
            let extra = if i < 500 { 0 } else { 150 };
            let at = t0 + MS * (10 * u32::from(i) + extra);
            b.push(at, i, ts(i), true, i);
            out += drain(&mut b, at).len();
        }
        assert_eq!(b.delay(), 40 * MS, "the floor moved with the route");
        assert_eq!(b.counts().lost, 0);
        assert!(out > 3900, "{out}");
    }

    #[test]
    fn a_sender_restart_resyncs_instead_of_counting_thousands_lost() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(0, 0), 90_000);
        b.push(t0, 100, 0, true, 100);
        b.push(t0 + MS, 30_000, 900, true, 30_000);
        assert_eq!(
            seqs(&drain(&mut b, t0 + MS)),
            ["gap0", "30000"],
            "a gap of nothing"
        );
        assert_eq!((b.counts().resyncs, b.counts().lost), (1, 0));
    }

    #[test]
    fn a_stalled_hole_does_not_hold_more_than_max_held() {
        let t0 = Instant::now();
        let mut b = JitterBuffer::new(cfg(400, 400), 90_000);
        b.push(t0, 0, 0, true, 0);
        for i in 2..(MAX_HELD as u16 + 10) {
            b.push(t0, i, 0, true, i);
        }
        let out = drain(&mut b, t0);
        assert!(out.len() > 2, "{}", out.len());
    }
}
