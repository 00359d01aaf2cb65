//! A WHIP publisher's media becomes MPEG-TS: its RTP (str0m in RTP mode) goes through a jitter
//! buffer per track (`jitter`: reordered, held, holes NACKed until their deadline), video is
//! depacketized into access units (`depack`: after a hole given up on, skipped to the next
//! keyframe, which is asked for), and both are put on one 90 kHz timeline and muxed into the
//! stream's ring.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::MediaKind;
use tracing::{debug, info, warn};

use super::depack::{AccessUnit, H264Assembler};
use super::jitter::{JitterBuffer, JitterConfig, Out};
use crate::stream::link::WhipCounts;
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
    /// The last RTP time as sent and extended past 2^32 (starting at 2^32: room below).
    raw: Option<(u32, u64)>,
}

impl TrackClock {
    fn new(rate: u64) -> Self {
        TrackClock {
            anchor: None,
            rate: rate.max(1),
            last: 0,
            raw: None,
        }
    }

    /// `map` for an RTP time as sent (32 bits, wrapping).
    fn map32(&mut self, rtp: u32, arrival_90k: u64) -> u64 {
        let ext = match self.raw {
            Some((raw, ext)) => ext.saturating_add_signed(i64::from(rtp.wrapping_sub(raw) as i32)),
            None => (1 << 32) + u64::from(rtp),
        };
        self.raw = Some((rtp, ext));
        self.map(ext, arrival_90k)
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

/// A publisher's ingest state: jitter buffers, clocks, muxer, and the stream it writes.
pub struct Ingest {
    guard: SourceGuard,
    muxer: Muxer,
    epoch: Instant,
    video: TrackClock,
    audio: TrackClock,
    video_buffer: JitterBuffer<Arc<[u8]>>,
    audio_buffer: JitterBuffer<Arc<[u8]>>,
    assembler: H264Assembler,
    aus: Vec<AccessUnit>,
    out: Vec<u8>,
    frames: u64,
    /// Keyframe requests (PLI) the session sent for this ingest.
    pub plis: u64,
    /// The delay last logged, to log each change of it once.
    logged_delay: Duration,
    /// Lost packets when loss was last logged.
    logged_lost: u64,
}

impl Ingest {
    pub fn new(guard: SourceGuard, video: bool, audio: bool, jitter: JitterConfig) -> Self {
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
            video_buffer: JitterBuffer::new(jitter, 90_000),
            audio_buffer: JitterBuffer::new(jitter, 48_000),
            // With the buffer off, nothing is skipped: the decoder conceals.
            assembler: H264Assembler::new(!jitter.is_off()),
            aus: Vec::new(),
            out: Vec::new(),
            frames: 0,
            plis: 0,
            logged_delay: jitter.min,
            logged_lost: 0,
        }
    }

    pub fn stream_name(&self) -> &str {
        &self.guard.stream().name
    }

    /// Whether the jitter buffer holds packets (not `--whip-jitter-ms 0`).
    pub fn holds(&self) -> bool {
        !self.video_buffer.is_off()
    }

    /// One RTP packet as it arrived (str0m has taken duplicates and RTX off it).
    pub fn push_rtp(
        &mut self,
        kind: MediaKind,
        now: Instant,
        header: &str0m::rtp::RtpHeader,
        payload: Arc<[u8]>,
    ) {
        let buffer = match kind {
            MediaKind::Video => &mut self.video_buffer,
            MediaKind::Audio => &mut self.audio_buffer,
        };
        buffer.push(
            now,
            header.sequence_number,
            header.timestamp,
            header.marker,
            payload,
        );
    }

    /// When `drain` has something to do next.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.video_buffer.deadline(), self.audio_buffer.deadline()) {
            (Some(v), Some(a)) => Some(v.min(a)),
            (v, a) => v.or(a),
        }
    }

    /// Mux what the buffers release at `now`. Returns true when a keyframe should be
    /// requested (a loss, or a start without one).
    pub fn drain(&mut self, now: Instant) -> bool {
        let mut want_keyframe = false;
        let was_waiting = self.assembler.waiting();
        while let Some(o) = self.video_buffer.pop(now) {
            match o {
                Out::Gap { .. } => self.assembler.gap(),
                // Padding (bandwidth probes): it held its sequence number, that is all.
                Out::Packet(p) if p.payload.is_empty() => {}
                Out::Packet(p) => {
                    want_keyframe |=
                        self.assembler
                            .push(&p.payload, p.ts, p.marker, p.arrival, &mut self.aus);
                }
            }
        }
        if self.assembler.waiting() && !was_waiting && self.frames > 0 {
            debug!(stream = %self.stream_name(), "video loss: waiting for a keyframe");
        }
        let mut aus = std::mem::take(&mut self.aus);
        for au in aus.drain(..) {
            let pts = self.video.map32(au.ts, self.arrival_90k(au.arrival));
            let r = self
                .muxer
                .write_video(&au.data, pts, pts, au.keyframe, &mut self.out);
            want_keyframe |= self.written(MediaKind::Video, r);
        }
        self.aus = aus;
        while let Some(o) = self.audio_buffer.pop(now) {
            // A gap in Opus is just missing audio; padding carries none.
            if let Out::Packet(p) = o {
                if p.payload.is_empty() {
                    continue;
                }
                let pts = self.audio.map32(p.ts, self.arrival_90k(p.arrival));
                let r = self.muxer.write_audio(&p.payload, pts, &mut self.out);
                self.written(MediaKind::Audio, r);
            }
        }
        // Video loss is logged when it starts, then once per 1000 packets (a bad link is not a
        // log line per hole).
        let lost = self.video_buffer.counts().lost;
        if lost > 0 && (self.logged_lost == 0 || lost >= self.logged_lost + 1000) {
            let c = self.counts();
            info!(stream = %self.stream_name(), lost, late = c.late, recovered = c.recovered,
                delay_ms = c.delay_ms, "WHIP video packets lost: missing at their jitter buffer deadline");
            self.logged_lost = lost;
        }
        let delay = self.video_buffer.delay();
        if delay != self.logged_delay && delay.abs_diff(self.logged_delay) >= DELAY_LOG_STEP {
            info!(stream = %self.stream_name(), delay_ms = delay.as_millis() as u64,
                "WHIP jitter buffer delay changed");
            self.logged_delay = delay;
        }
        want_keyframe
    }

    /// What the buffers counted, for the stream's stats.
    pub fn counts(&self) -> WhipCounts {
        let (v, a) = (self.video_buffer.counts(), self.audio_buffer.counts());
        WhipCounts {
            delay_ms: self.video_buffer.delay().as_millis() as u64,
            packets: v.packets,
            lost: v.lost,
            late: v.late,
            recovered: v.recovered,
            duplicates: v.duplicates,
            skipped_frames: self.assembler.skipped,
            plis: self.plis,
            nacks: 0,
            audio_packets: a.packets,
            audio_lost: a.lost,
        }
    }

    fn arrival_90k(&self, at: Instant) -> u64 {
        let arrival = at.saturating_duration_since(self.epoch);
        EPOCH_90K + arrival.as_micros() as u64 * 9 / 100
    }

    /// Writes a muxed frame out; true when video could not be muxed (ask for a keyframe).
    fn written(&mut self, kind: MediaKind, r: Result<(), crate::ts::mux::MuxError>) -> bool {
        match r {
            Ok(()) => {
                if self.frames == 0 {
                    info!(stream = %self.stream_name(), "first WHIP media muxed");
                }
                self.frames += 1;
                self.guard.write(&self.out);
                self.out.clear();
                false
            }
            Err(e) => {
                self.out.clear();
                warn!(stream = %self.stream_name(), error = %e, "WHIP frame not muxed");
                kind == MediaKind::Video
            }
        }
    }
}

/// Changes of the buffer's delay smaller than this are not logged (it moves with every
/// packet while jitter lasts).
const DELAY_LOG_STEP: Duration = Duration::from_millis(50);

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
        let mut v = TrackClock::new(90_000);
        v.map32(u32::MAX - 1499, 90_000);
        assert_eq!(v.map32(1500, 93_000), 93_000);
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
