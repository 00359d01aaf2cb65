//! The stream's one media-time → wall-clock mapping (sender reports), sans-IO: `now` comes
//! from the caller.

use std::time::{Duration, Instant};

/// One media-time → wall-clock mapping per stream, so audio and video sender reports agree.
///
/// It never puts a frame after its arrival: a sender report extrapolates the RTP time from the
/// last frame's wall-clock time, and one still to come gives str0m nothing to extrapolate from
/// (it then reports RTP time 0, and a browser's lip sync stalls the video to follow it). A TS
/// mux sends each track ahead of its presentation time by its own margin, video usually more
/// than audio: the mapping moves back to the frame with the largest margin, so every frame maps
/// at or before the moment it came in.
#[derive(Debug, Default)]
pub(super) struct Clock {
    anchor: Option<(u64, Instant)>,
}

impl Clock {
    pub(super) fn wallclock(&mut self, t90k: u64, now: Instant) -> Instant {
        let ticks = |d: u64| Duration::from_micros(d.saturating_mul(1_000) / 90);
        let at = |(t0, i0): (u64, Instant)| match t90k.checked_sub(t0) {
            Some(d) => i0.checked_add(ticks(d)),
            None => i0.checked_sub(ticks(t0 - t90k)),
        };
        match self.anchor.and_then(|a| Some((a, at(a)?))) {
            // Re-anchor when the source drifts away from real time by more than a second
            // (a burst, a stall, a loop of a replayed file).
            Some(((t0, i0), w)) if w.abs_diff_instant(now) < Duration::from_secs(1) => {
                if w > now {
                    self.anchor = i0.checked_sub(w - now).map(|i| (t0, i));
                    now
                } else {
                    w
                }
            }
            _ => {
                self.anchor = Some((t90k, now));
                now
            }
        }
    }
}

trait AbsDiff {
    fn abs_diff_instant(self, other: Instant) -> Duration;
}

impl AbsDiff for Instant {
    fn abs_diff_instant(self, other: Instant) -> Duration {
        if self > other {
            self - other
        } else {
            other - self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Video that arrives 600 ms ahead of its presentation time and audio 100 ms ahead (as a
    /// TS mux sends them): no frame maps after its arrival, and once the mapping has settled,
    /// both tracks lie on one line.
    #[test]
    fn wall_clock_never_maps_a_frame_after_its_arrival() {
        let start = Instant::now();
        let secs = |t90k: u64| Duration::from_micros(t90k * 1_000 / 90);
        // (arrival, media time): 50 Hz audio over 10 s, and 30 fps video from the second on
        // (so the mapping starts from audio, the track with the smaller margin).
        let mut events: Vec<(Instant, u64)> = (30..300u64)
            .map(|i| i * 3000)
            .map(|t| (start + secs(t) + Duration::from_millis(400), t))
            .chain(
                (0..500u64)
                    .map(|i| i * 1800)
                    .map(|t| (start + secs(t) + Duration::from_millis(900), t)),
            )
            .collect();
        events.sort();
        let mut clock = Clock::default();
        for (n, &(arrival, t)) in events.iter().enumerate() {
            let w = clock.wallclock(t, arrival);
            assert!(w <= arrival, "frame {n} mapped after its arrival");
            if n >= 40 {
                let line = start + secs(t) + Duration::from_millis(400);
                assert!(
                    w.abs_diff_instant(line) < Duration::from_millis(1),
                    "frame {n}"
                );
            }
        }
    }
}
