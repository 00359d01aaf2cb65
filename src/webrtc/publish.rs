//! A WHIP publisher's media becomes MPEG-TS: depacketized frames (str0m reorders and drops
//! frames with lost fragments) are put on one 90 kHz timeline and muxed into the stream's ring.

use std::time::{Duration, Instant};

use str0m::media::{MediaData, MediaKind};
use tracing::{debug, info, warn};

use crate::stream::SourceGuard;
use crate::ts::mux::{MuxConfig, Muxer};

/// Where the TS timeline starts (10 s): room below for DTS/PCR offsets.
const EPOCH_90K: u64 = 900_000;
/// A track whose RTP time drifts this far from its arrival time has jumped: re-anchor it.
const MAX_DRIFT: Duration = Duration::from_secs(1);

/// RTP time → the stream's 90 kHz timeline, for one track. Anchored on arrival time, so
/// tracks with unrelated random RTP offsets line up, and a publisher whose clock jumps (or
/// restarts) is re-anchored instead of taking the timeline with it.
struct TrackClock {
    /// (extended RTP time, its arrival in 90 kHz since the epoch)
    anchor: Option<(u64, u64)>,
    rate: u64,
    last: u64,
}

impl TrackClock {
    fn new(rate: u64) -> Self {
        TrackClock {
            anchor: None,
            rate: rate.max(1),
            last: 0,
        }
    }

    fn map(&mut self, rtp: u64, arrival_90k: u64) -> u64 {
        let scaled = |d: i128| d * 90_000 / i128::from(self.rate);
        if let Some((r0, a0)) = self.anchor {
            let t = a0 as i128 + scaled(rtp as i128 - r0 as i128);
            let drift = (t - arrival_90k as i128).unsigned_abs();
            if t >= 0 && drift < MAX_DRIFT.as_micros() * 90 / 1000 {
                self.last = t as u64;
                return self.last;
            }
            debug!(
                drift_ms = drift / 90,
                "publisher clock jumped; re-anchoring"
            );
        }
        // Never go back in time on a re-anchor.
        let at = arrival_90k.max(self.last);
        self.anchor = Some((rtp, at));
        self.last = at;
        at
    }
}

/// A publisher's ingest state: clocks, muxer, and the stream it writes.
pub struct Ingest {
    guard: SourceGuard,
    muxer: Muxer,
    epoch: Instant,
    video: TrackClock,
    audio: TrackClock,
    /// Video waits for a keyframe at the start and after loss.
    need_keyframe: bool,
    out: Vec<u8>,
    frames: u64,
}

impl Ingest {
    pub fn new(guard: SourceGuard, video: bool, audio: bool) -> Self {
        let muxer = Muxer::new(MuxConfig {
            video,
            audio: audio.then_some(2),
            ..MuxConfig::default()
        });
        Ingest {
            guard,
            muxer,
            epoch: Instant::now(),
            video: TrackClock::new(90_000),
            audio: TrackClock::new(48_000),
            need_keyframe: true,
            out: Vec::new(),
            frames: 0,
        }
    }

    pub fn stream_name(&self) -> &str {
        &self.guard.stream().name
    }

    /// One depacketized frame. Returns true when a keyframe should be requested (loss).
    pub fn push(&mut self, kind: MediaKind, d: &MediaData) -> bool {
        let arrival = d.network_time.saturating_duration_since(self.epoch);
        let arrival_90k = EPOCH_90K + arrival.as_micros() as u64 * 9 / 100;
        self.out.clear();
        let mut want_keyframe = false;
        let result = match kind {
            MediaKind::Video => {
                if !d.contiguous && !d.is_keyframe() {
                    if !self.need_keyframe {
                        debug!(stream = %self.stream_name(), "video loss: waiting for a keyframe");
                    }
                    self.need_keyframe = true;
                }
                if self.need_keyframe && !d.is_keyframe() {
                    return !d.contiguous || self.frames == 0;
                }
                self.need_keyframe = false;
                let pts = self.video.map(d.time.numer(), arrival_90k);
                self.muxer
                    .write_video(&d.data, pts, pts, d.is_keyframe(), &mut self.out)
            }
            MediaKind::Audio => {
                let pts = self.audio.map(d.time.numer(), arrival_90k);
                self.muxer.write_audio(&d.data, pts, &mut self.out)
            }
        };
        match result {
            Ok(()) => {
                if self.frames == 0 {
                    info!(stream = %self.stream_name(), "first WHIP media muxed");
                }
                self.frames += 1;
                self.guard.write(&self.out);
            }
            Err(e) => {
                want_keyframe |= kind == MediaKind::Video;
                warn!(stream = %self.stream_name(), error = %e, "WHIP frame not muxed")
            }
        }
        want_keyframe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_with_unrelated_rtp_offsets_share_one_timeline() {
        let mut v = TrackClock::new(90_000);
        let mut a = TrackClock::new(48_000);
        // Both start at arrival 1 s; RTP offsets are random.
        assert_eq!(v.map(3_000_000_000, 90_000), 90_000);
        assert_eq!(a.map(77, 90_000), 90_000);
        // 100 ms later on both clocks.
        assert_eq!(v.map(3_000_009_000, 99_000), 99_000);
        assert_eq!(a.map(77 + 4_800, 99_100), 99_000);
    }

    #[test]
    fn rtp_wrap_is_continuous_with_extended_time() {
        let mut v = TrackClock::new(90_000);
        v.map((1 << 32) - 1500, 90_000);
        assert_eq!(v.map((1 << 32) + 1500, 93_000), 93_000);
    }

    #[test]
    fn clock_jump_reanchors_on_arrival_and_never_goes_back() {
        let mut v = TrackClock::new(90_000);
        v.map(1000, 90_000);
        assert_eq!(v.map(4000, 93_000), 93_000);
        // The publisher's clock leaps by an hour: follow arrival time instead.
        assert_eq!(v.map(4000 + 90_000 * 3600, 96_000), 96_000);
        assert_eq!(v.map(7000 + 90_000 * 3600, 99_000), 99_000);
        // And back: still monotonic.
        assert_eq!(v.map(10_000, 95_000), 99_000);
    }
}
