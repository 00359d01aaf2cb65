//! Media time, sans-IO: 33-bit PTS → continuous 64-bit 90 kHz timeline → RTP timestamps.
//!
//! The order matters: unwrap the 33-bit PTS first, then rebase, then scale with exact integer
//! maths, then add the random RTP offset and cut to 32 bits. Truncating a 90 kHz value to 32
//! bits survives the PTS wrap only because 2^32 divides 2^33; scaling the raw 33-bit value to
//! 48 kHz does not (it jumps at every wrap).

#![forbid(unsafe_code)]

/// A clock rate in Hz.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClockRate(pub u32);

impl ClockRate {
    /// MPEG-TS PTS/DTS and H.264 RTP.
    pub const NINETY_KHZ: Self = Self(90_000);
    /// Opus RTP (RFC 7587), whatever the real sample rate.
    pub const OPUS: Self = Self(48_000);
}

/// PTS, DTS and the PCR base are 33-bit 90 kHz values and wrap here (about 26.5 hours): the
/// one definition in the crate.
pub const PTS_WRAP: u64 = 1 << 33;
/// The 33 bits of a PTS/DTS/PCR base.
pub const PTS_MASK: u64 = PTS_WRAP - 1;

/// `to - from` on the 33-bit clock, in (-2^32, 2^32]: a step above 2^32 is a step back.
pub fn pts_diff(from: u64, to: u64) -> i64 {
    // Below 2^33: fits i64.
    let d = (to.wrapping_sub(from) & PTS_MASK) as i64;
    if d > (PTS_WRAP / 2) as i64 {
        d - PTS_WRAP as i64
    } else {
        d
    }
}

/// Unwraps 33-bit PTS values into a 64-bit timeline that starts at the first value: each step
/// is taken modulo 2^33, and a step above 2^32 is a step backwards.
#[derive(Clone, Debug, Default)]
pub struct PtsUnwrapper {
    /// The last raw value and what it unwrapped to.
    last: Option<(u64, i64)>,
}

impl PtsUnwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// `pts33` is masked to 33 bits. Values before the first one can be negative.
    pub fn unwrap(&mut self, pts33: u64) -> i64 {
        let raw = pts33 & PTS_MASK;
        let out = match self.last {
            // In range: raw < 2^33.
            None => raw as i64,
            Some((last_raw, last_out)) => {
                let step = raw.wrapping_sub(last_raw) & PTS_MASK;
                // Both fit in i64: step < 2^33.
                let step = if step > PTS_WRAP / 2 {
                    step as i64 - PTS_WRAP as i64
                } else {
                    step as i64
                };
                last_out.saturating_add(step)
            }
        };
        self.last = Some((raw, out));
        out
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Recent inputs kept for jump detection (audio and video interleave in one timeline).
const RECENT: usize = 8;

/// The time line of one program: unwraps PTS and keeps the output continuous across
/// discontinuities.
///
/// **Audio and video of a program must share one `Timeline`**: map every PTS of the program
/// (video access units and Opus PES alike) through the same instance, so a re-anchor shifts
/// both tracks by the same amount and A/V stay aligned.
///
/// Output starts at 0 for the first PTS mapped. Small steps in either direction (B-frames,
/// audio/video interleaving) are kept as they are; a value before the very first one saturates
/// at 0. A jump larger than `max_jump` away from every recent input, or the first value after
/// [`Timeline::discontinuity`], re-anchors: it maps to the highest output so far plus
/// `expected_step`, and later values follow from there.
///
/// Call `discontinuity()` when the clock really changed (discontinuity_indicator, a new
/// source). After lost packets the clock is still the same and the jump check suffices.
#[derive(Clone, Debug)]
pub struct Timeline {
    unwrapper: PtsUnwrapper,
    max_jump: u64,
    /// output = unwrapped input + offset.
    offset: i64,
    recent: [i64; RECENT],
    /// Number of valid entries in `recent` (0 before the first value).
    recent_len: usize,
    next_slot: usize,
    high: u64,
    pending: bool,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// Jumps over one second re-anchor.
    pub const DEFAULT_MAX_JUMP: u64 = 90_000;

    pub fn new() -> Self {
        Self::with_max_jump(Self::DEFAULT_MAX_JUMP)
    }

    /// `max_jump` in 90 kHz ticks.
    pub fn with_max_jump(max_jump: u64) -> Self {
        Self {
            unwrapper: PtsUnwrapper::new(),
            max_jump,
            offset: 0,
            recent: [0; RECENT],
            recent_len: 0,
            next_slot: 0,
            high: 0,
            pending: false,
        }
    }

    /// Maps a 33-bit PTS to the continuous 64-bit 90 kHz timeline. `expected_step` is the
    /// nominal duration of one frame of this track in 90 kHz ticks (0 if unknown), used as the
    /// gap when re-anchoring.
    pub fn map(&mut self, pts33: u64, expected_step: u64) -> u64 {
        let input = self.unwrapper.unwrap(pts33);
        let recent = &self.recent[..self.recent_len];
        let continuous = recent.iter().any(|&r| input.abs_diff(r) <= self.max_jump);
        if self.recent_len == 0 {
            self.offset = -input;
        } else if self.pending || !continuous {
            let target = self.high.saturating_add(expected_step).min(i64::MAX as u64) as i64;
            self.offset = target.saturating_sub(input);
            // The old clock's values say nothing about the new one.
            self.recent_len = 0;
            self.next_slot = 0;
        }
        self.pending = false;
        self.recent[self.next_slot] = input;
        self.next_slot = (self.next_slot + 1) % RECENT;
        self.recent_len = (self.recent_len + 1).min(RECENT);
        // Saturates at 0 below the origin (max(0) makes the cast lossless).
        let out = input.saturating_add(self.offset).max(0) as u64;
        self.high = self.high.max(out);
        out
    }

    /// The clock changed: the next `map` re-anchors.
    pub fn discontinuity(&mut self) {
        self.pending = true;
    }

    /// Forget everything: the next value maps to 0 again.
    pub fn reset(&mut self) {
        *self = Self::with_max_jump(self.max_jump);
    }
}

/// Exact integer rescale of a 90 kHz value: `t * rate / 90_000` (u128 intermediate, rounded
/// down, saturating).
pub fn rescale(t90k: u64, to: ClockRate) -> u64 {
    let scaled = u128::from(t90k) * u128::from(to.0) / 90_000;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// The RTP timestamp: `(rescale(t) + offset) mod 2^32`.
pub fn to_rtp(t90k: u64, to: ClockRate, offset: u32) -> u32 {
    (rescale(t90k, to) as u32).wrapping_add(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pts_wrap_33bit_unwraps_forward_and_backward() {
        let mut u = PtsUnwrapper::new();
        assert_eq!(u.unwrap(PTS_WRAP - 3000), (PTS_WRAP - 3000) as i64);
        assert_eq!(u.unwrap(0), PTS_WRAP as i64);
        assert_eq!(u.unwrap(3000), (PTS_WRAP + 3000) as i64);
        assert_eq!(u.unwrap(PTS_WRAP - 1500), (PTS_WRAP - 1500) as i64); // back across the wrap
        assert_eq!(u.unwrap(PTS_WRAP + 6000), (PTS_WRAP + 6000) as i64); // masked to 33 bits
        let mut u = PtsUnwrapper::new();
        assert_eq!(u.unwrap(1000), 1000);
        assert_eq!(u.unwrap(PTS_WRAP - 1000), -1000);
        u.reset();
        assert_eq!(u.unwrap(5), 5);
    }

    /// Successive RTP timestamp differences of `n` PTS from `start` in steps of `step`: through
    /// the timeline, and from naively scaling the raw 33-bit value.
    fn rtp_steps(start: u64, step: u64, n: u64, rate: ClockRate) -> (Vec<i64>, Vec<i64>) {
        let mut tl = Timeline::new();
        let (mut ours, mut naive) = (Vec::new(), Vec::new());
        let (mut prev_ours, mut prev_naive) = (None::<u32>, None::<u32>);
        for i in 0..n {
            let pts33 = (start + i * step) % PTS_WRAP;
            let a = to_rtp(tl.map(pts33, step), rate, 0x8000_0000);
            let b = (rescale(pts33, rate) as u32).wrapping_add(0x8000_0000);
            if let (Some(pa), Some(pb)) = (prev_ours, prev_naive) {
                ours.push(a.wrapping_sub(pa) as i32 as i64);
                naive.push(b.wrapping_sub(pb) as i32 as i64);
            }
            (prev_ours, prev_naive) = (Some(a), Some(b));
        }
        (ours, naive)
    }

    #[test]
    fn opus_rtp_is_continuous_across_the_33bit_wrap_where_raw_scaling_jumps() {
        // 20 ms steps: 1800 ticks at 90 kHz, 960 at 48 kHz.
        let (ours, naive) = rtp_steps(PTS_WRAP - 5 * 1800, 1800, 10, ClockRate::OPUS);
        assert!(ours.iter().all(|&d| d == 960), "{ours:?}");
        assert!(
            naive.iter().any(|&d| d != 960),
            "scaling the raw 33-bit PTS should jump: {naive:?}"
        );
    }

    #[test]
    fn opus_rtp_is_continuous_across_the_32bit_boundary() {
        let (ours, _) = rtp_steps((1 << 32) - 5 * 1800, 1800, 10, ClockRate::OPUS);
        assert!(ours.iter().all(|&d| d == 960), "{ours:?}");
        // Far from the start, where the 48 kHz value passes 2^32 itself.
        let t = (1u64 << 32) * 90_000 / 48_000;
        let (a, b) = (
            to_rtp(t - 1875, ClockRate::OPUS, 7),
            to_rtp(t + 1875, ClockRate::OPUS, 7),
        );
        assert_eq!(b.wrapping_sub(a), 2000);
    }

    #[test]
    fn video_rtp_is_continuous_across_both_boundaries() {
        for start in [(1u64 << 32) - 5 * 3000, PTS_WRAP - 5 * 3000] {
            let (ours, naive) = rtp_steps(start, 3000, 10, ClockRate::NINETY_KHZ);
            assert!(ours.iter().all(|&d| d == 3000), "{ours:?}");
            // Plain truncation of 90 kHz happens to survive: 2^32 divides 2^33.
            assert!(naive.iter().all(|&d| d == 3000), "{naive:?}");
        }
    }

    #[test]
    fn timeline_maps_the_wrap_to_a_continuous_64bit_value() {
        let mut tl = Timeline::new();
        assert_eq!(tl.map(PTS_WRAP - 3000, 3000), 0);
        assert_eq!(tl.map(0, 3000), 3000);
        assert_eq!(tl.map(3000, 3000), 6000);
        assert_eq!(rescale(6000, ClockRate::OPUS), 3200);
        assert_eq!(rescale(u64::MAX, ClockRate::NINETY_KHZ), u64::MAX);
        assert_eq!(rescale(u64::MAX, ClockRate(1_000_000)), u64::MAX);
    }

    #[test]
    fn small_backward_steps_are_kept_not_reanchored() {
        let mut tl = Timeline::new();
        // I P B B (B-frames come after the P in decode order, with earlier PTS).
        let out: Vec<u64> = [90_000, 99_000, 93_000, 96_000, 108_000]
            .map(|p| tl.map(p, 3000))
            .to_vec();
        assert_eq!(out, [0, 9000, 3000, 6000, 18_000]);
        // Audio interleaved slightly behind video in the same timeline.
        assert_eq!(tl.map(80_000, 1800), 0, "before the origin saturates at 0");
        assert_eq!(tl.map(110_000, 3000), 20_000);
    }

    #[test]
    fn big_jumps_reanchor_continuously() {
        let mut tl = Timeline::new();
        assert_eq!(tl.map(1_000_000, 3000), 0);
        assert_eq!(tl.map(1_003_000, 3000), 3000);
        // Forward by an hour.
        assert_eq!(tl.map(1_003_000 + 324_000_000, 3000), 6000);
        assert_eq!(tl.map(1_006_000 + 324_000_000, 3000), 9000);
        // Backward by ten seconds.
        assert_eq!(tl.map(500_000, 3000), 12_000);
        assert_eq!(tl.map(503_000, 3000), 15_000);
        // Audio of the new clock, interleaved a little behind, follows the same offset.
        assert_eq!(tl.map(498_500, 1800), 10_500);
    }

    #[test]
    fn explicit_discontinuity_reanchors_even_a_small_jump() {
        let mut tl = Timeline::new();
        assert_eq!(tl.map(10_000, 3000), 0);
        assert_eq!(tl.map(13_000, 3000), 3000);
        tl.discontinuity();
        // A new source whose clock happens to be close: still re-anchored after the last output.
        assert_eq!(tl.map(5_000, 3000), 6000);
        assert_eq!(tl.map(8_000, 3000), 9000);
        tl.reset();
        assert_eq!(tl.map(123, 3000), 0);
    }
}
