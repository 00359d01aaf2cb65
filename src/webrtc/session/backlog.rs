//! Instant start: a new viewer's GOP backlog, paced by a token bucket and stamped by when
//! each frame goes, then live frames queued behind it; a viewer whose queue does not drain is
//! moved on to the next keyframe.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{count_direct, Session};
use crate::stream::frame::Frame;
use crate::webrtc::outbox::Outbox;

/// The GOP backlog is paced (`--backlog-rate`, 25 Mbit/s by default) in slices this far
/// apart: a burst at the speed of the server's NIC is lost on a slower link (and repaired
/// only within the retransmission budget), and fills the socket buffer.
const BACKLOG_TICK: Duration = Duration::from_millis(2);

/// A token bucket for the backlog: `rate` bytes per second, at most one tick's worth banked.
/// Frames go whole, so a large one (an IDR) overdraws it and the next waits until it is repaid.
pub(super) struct Pace {
    rate: u64,
    credit: i64,
    at: Instant,
}

impl Pace {
    pub(super) fn new(rate: u64, now: Instant) -> Self {
        Pace {
            rate: rate.max(1),
            credit: 0,
            at: now,
        }
    }

    fn tick_bytes(&self) -> i64 {
        (u128::from(self.rate) * BACKLOG_TICK.as_nanos() / 1_000_000_000).max(1) as i64
    }

    /// A new backlog: one tick's worth may go at once.
    fn start(&mut self, now: Instant) {
        self.credit = self.tick_bytes();
        self.at = now;
    }

    fn refill(&mut self, now: Instant) {
        let earned = u128::from(self.rate) * now.saturating_duration_since(self.at).as_nanos()
            / 1_000_000_000;
        self.credit = (self.credit + earned.min(i64::MAX as u128) as i64).min(self.tick_bytes());
        self.at = now;
    }

    /// When the next slice may go: once the credit is positive again, a tick from now at the
    /// soonest.
    pub(super) fn next(&self, now: Instant) -> Instant {
        let debt = (-self.credit).max(0) as u64;
        let wait = Duration::from_nanos(debt.saturating_mul(1_000_000_000) / self.rate);
        now + wait.max(BACKLOG_TICK)
    }
}

/// A viewer whose queue (backlog, then live frames behind it) has not emptied for this long
/// has fallen behind: the queue is dropped and it goes on at the next live keyframe.
const SLOW_QUEUE: Duration = Duration::from_secs(2);

impl Session {
    /// Instant start: the cached GOP, IDR first, so the picture shows as soon as DTLS is up.
    /// It goes at `--backlog-rate`, or four times the stream's rate if that is more (so it
    /// drains in about a third of its duration). Its timestamps are rewritten to follow the
    /// sending and end at the live frame, at least a tick apart: the browser sees frames
    /// arrive as their timestamps say (its jitter estimate stays calm), plays the backlog in
    /// fast motion and goes on at live pace. Audio starts live.
    pub(super) fn send_backlog(&mut self, now: Instant, out: &mut Outbox) {
        let backlog = self.stream.gop.lock().snapshot();
        let (Some(first), Some(last)) = (backlog.first(), backlog.last()) else {
            return;
        };
        let (live_time, live_clock) = (last.rtp_time, last.wallclock);
        let bytes: u64 = backlog.iter().map(|f| f.data.len() as u64).sum();
        let span = last.rtp_time.saturating_sub(first.rtp_time);
        if let Some(stream_rate) = (bytes * 90_000).checked_div(span) {
            self.pace.rate = self.pace.rate.max(4 * stream_rate);
        }
        let plan = backlog_plan(&backlog, self.pace.rate, self.pace.tick_bytes() as u64);
        let n = backlog.len();
        self.queued = backlog
            .into_iter()
            .zip(plan)
            .map(|(f, behind)| Frame {
                rtp_time: live_time.saturating_sub(behind),
                wallclock: live_clock
                    .checked_sub(Duration::from_nanos(behind * 11_111))
                    .unwrap_or(live_clock),
                ..f
            })
            .collect();
        // The viewer is skipped if its queue has not drained `SLOW_QUEUE` after the backlog
        // should have gone.
        let sending = Duration::from_secs_f64(bytes as f64 / self.pace.rate as f64);
        self.queued_since = Some(now + sending);
        debug!(stream = %self.stream.name, frames = n, bytes, rate = self.pace.rate,
            "sending the GOP backlog");
        self.pace.start(now);
        self.drain_queue(now, out);
    }

    /// Write queued frames (the backlog, then live frames that came meanwhile) as far as the
    /// pace allows: neither our socket buffer nor the viewer's link should overflow.
    pub fn drain_queue(&mut self, now: Instant, out: &mut Outbox) {
        self.pace.refill(now);
        let mut sent = (0, 0);
        while self.pace.credit > 0 {
            let Some(f) = self.queued.pop_front() else {
                break;
            };
            self.pace.credit -= f.data.len() as i64;
            let (p, b) = self.write_now(&f, now, out);
            sent = (sent.0 + p, sent.1 + b);
        }
        self.count_sent(sent.0, sent.1);
        count_direct(&self.stream, &self.metrics, sent);
        if !self.queued.is_empty() {
            self.next_timeout = self.next_timeout.min(self.pace.next(now));
        }
    }

    pub fn has_queue(&self) -> bool {
        !self.queued.is_empty()
    }

    /// A frame from the stream: sent now, or after what is still queued. Returns the
    /// (packets, bytes) sent the direct way (see `write_now`).
    pub fn write_frame(&mut self, f: &Frame, now: Instant, out: &mut Outbox) -> (u64, u64) {
        if self.queued.is_empty() {
            self.queued_since = None;
            return self.write_now(f, now, out);
        } else if self.connected {
            let since = *self.queued_since.get_or_insert(now);
            if now.saturating_duration_since(since) > SLOW_QUEUE {
                self.queued.clear();
                self.skip_to_keyframe("its queue has not drained for 2 s");
                return self.write_now(f, now, out);
            }
            self.queued.push_back(f.clone());
        }
        (0, 0)
    }

    /// This viewer cannot keep up: send it no more video until the next keyframe (audio goes
    /// on). RTP sequence numbers stay continuous: the viewer sees a jump in time, not loss.
    pub(super) fn skip_to_keyframe(&mut self, why: &str) {
        if !self.video_started {
            return; // already waiting for one
        }
        self.video_started = false;
        self.skips += 1;
        self.metrics
            .slow_viewer_skips
            .fetch_add(1, Ordering::Relaxed);
        let st = &self.stream.stats;
        st.slow_viewer_skips.fetch_add(1, Ordering::Relaxed);
        if self.skips == 1 {
            info!(stream = %self.stream.name, session = %crate::webrtc::short(&self.id), why,
                "slow viewer: skipping to the next keyframe");
        } else {
            debug!(stream = %self.stream.name, session = %crate::webrtc::short(&self.id), why,
                skips = self.skips, "slow viewer: skipping to the next keyframe");
        }
    }
}

/// How far behind the live frame (in 90 kHz ticks) each backlog frame is stamped: by when it
/// goes at `rate` bytes per second (frames whole, `tick` bytes at once), at least a tick apart,
/// the last one at 0.
fn backlog_plan(backlog: &[Frame], rate: u64, tick: u64) -> Vec<u64> {
    let mut before = 0u64;
    let sent_at: Vec<u64> = backlog
        .iter()
        .map(|f| {
            let at = u128::from(before.saturating_sub(tick)) * 90_000 / u128::from(rate.max(1));
            before += f.data.len() as u64;
            at as u64
        })
        .collect();
    let end = sent_at.last().copied().unwrap_or(0);
    let mut behind = vec![0u64; sent_at.len()];
    for i in (0..sent_at.len().saturating_sub(1)).rev() {
        behind[i] = (end - sent_at[i]).max(behind[i + 1] + 1);
    }
    behind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::frame::Kind;
    use std::sync::Arc;

    #[test]
    fn backlog_is_stamped_by_when_each_frame_goes() {
        let frame = |len: usize| Frame {
            seq: 0,
            kind: Kind::Video,
            rtp_time: 0,
            wallclock: Instant::now(),
            arrived: Instant::now(),
            ingested_us: 0,
            data: vec![0u8; len].into(),
            keyframe: false,
            recovery: crate::stream::frame::Recovery::None,
            payloads: Arc::new([]),
        };
        // 90 kB/s: a byte a tick. The first 1000 bytes go at once, then each byte costs a tick.
        let backlog = [frame(3000), frame(500), frame(500), frame(10), frame(10)];
        let behind = backlog_plan(&backlog, 90_000, 1000);
        // Sent at 0, 2000, 2500, 3000, 3010: stamped that far before the last.
        assert_eq!(behind, [3010, 1010, 510, 10, 0]);
        // Faster than a tick a frame, they stay a tick apart.
        let behind = backlog_plan(&backlog, 90_000_000, 1000);
        assert_eq!(behind, [4, 3, 2, 1, 0]);
        assert_eq!(backlog_plan(&backlog[..1], 1, 1), [0]);
        assert!(backlog_plan(&[], 1, 1).is_empty());
    }

    #[test]
    fn backlog_pace_banks_one_tick_and_waits_out_an_overdraft() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut p = Pace::new(1_000_000, t0); // 1 MB/s: 2000 bytes per 2 ms tick
        p.start(t0);
        assert_eq!(p.credit, 2000);
        p.credit -= 10_000; // an IDR goes whole
        assert_eq!(p.next(t0), t0 + ms(8));
        p.refill(t0 + ms(8));
        assert_eq!(p.credit, 0, "repaid, nothing to spend yet");
        assert_eq!(p.next(t0 + ms(8)), t0 + ms(10), "a tick at the soonest");
        p.refill(t0 + ms(1000));
        assert_eq!(
            p.credit, 2000,
            "an idle second banks one tick, not a second's worth"
        );
        // 1000 Mbit/s: 250 kB a tick.
        assert_eq!(Pace::new(125_000_000, Instant::now()).tick_bytes(), 250_000);
    }
}
