//! The video re-encoder's thread: one per stream whose video is re-encoded, so decoding and
//! encoding (milliseconds a picture) never hold up the runtime that moves everyone's packets.
//!
//! ```text
//! media task ── ReencodeJob (bounded queue) ──► thread: codec::reencode::Reencoder
//!            ◄── Done (encoded pictures, failures) ──┘   stats → the stream's counters
//! ```
//!
//! If the thread falls behind (a machine too slow for the picture size), the queue fills:
//! access units are dropped until the next start point, where the re-encoder starts again, and
//! each dropped one counts as an error. Viewers see the last picture meanwhile, not a stall of
//! the other streams.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::warn;

use super::state::ReencodeJob;
use crate::codec::reencode::{EncodedFrame, Reencoder, SourceFrame};
use crate::codec::{Recovery, VideoCodec};
use crate::metrics::thread_cpu_time;
use crate::stream::Stream;

/// Access units queued for the thread: a long GOP's catch-up fits, a stalled thread is found
/// within seconds.
const QUEUE: usize = 600;

/// What the thread gives back.
pub(super) enum Done {
    /// A picture of run `generation`, in display order.
    Frame(u64, EncodedFrame),
    /// Run `generation` cannot go on: why.
    Failed(u64, String),
}

enum Job {
    Media(ReencodeJob),
    Keyframe,
}

pub(super) struct Worker {
    jobs: SyncSender<Job>,
    done: UnboundedReceiver<Done>,
    stream: Arc<Stream>,
    /// The queue was full: drop access units until a keyframe.
    behind: bool,
    /// The source's codec, from the latest start (a restart after falling behind repeats it).
    source: VideoCodec,
}

impl Worker {
    pub(super) fn spawn(stream: &Arc<Stream>) -> std::io::Result<Worker> {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let (results, done) = unbounded_channel();
        let s = stream.clone();
        std::thread::Builder::new()
            .name(format!("reencode-{}", stream.id))
            .spawn(move || work(&s, &queue, &results))?;
        Ok(Worker {
            jobs,
            done,
            stream: stream.clone(),
            behind: false,
            source: VideoCodec::H264,
        })
    }

    pub(super) async fn next(&mut self) -> Option<Done> {
        self.done.recv().await
    }

    pub(super) fn send(&mut self, job: ReencodeJob) {
        match &job {
            ReencodeJob::Start { source, .. } => {
                self.behind = false;
                self.source = *source;
            }
            ReencodeJob::Stop => self.behind = false,
            ReencodeJob::Frame {
                generation,
                pts,
                keyframe,
                recovery,
                ..
            } if self.behind && (*keyframe || recovery.is_point()) => {
                let restart = ReencodeJob::Start {
                    generation: *generation,
                    from: *pts,
                    source: self.source,
                };
                if !self.try_send(Job::Media(restart)) {
                    return self.dropped();
                }
                self.behind = false;
            }
            ReencodeJob::Frame { .. } if self.behind => return self.dropped(),
            ReencodeJob::Frame { .. } => {}
        }
        if !self.try_send(Job::Media(job)) {
            warn!(stream = %self.stream.name,
                "video re-encoder fell behind: dropping pictures until the next keyframe");
            self.behind = true;
            self.dropped();
        }
    }

    /// A viewer wants a keyframe (the re-encoder rate-limits them).
    pub(super) fn keyframe(&self) {
        let _ = self.jobs.try_send(Job::Keyframe);
    }

    fn try_send(&self, job: Job) -> bool {
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    fn dropped(&self) {
        self.stream
            .stats
            .reencode_errors
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The thread: runs until the media task drops its [`Worker`].
fn work(stream: &Stream, jobs: &Receiver<Job>, done: &UnboundedSender<Done>) {
    let st = &stream.stats;
    let mut r = Reencoder::new();
    let mut generation = 0;
    let mut out = Vec::new();
    let mut last_pts: Option<u64> = None;
    while let Ok(job) = jobs.recv() {
        let (g, pts, keyframe, recovery, data): (u64, u64, bool, Recovery, Bytes) = match job {
            Job::Keyframe => {
                r.request_keyframe();
                continue;
            }
            Job::Media(ReencodeJob::Start {
                generation: g,
                from,
                source,
            }) => {
                generation = g;
                r.set_source(source);
                r.start_at(from);
                last_pts = None;
                continue;
            }
            Job::Media(ReencodeJob::Stop) => {
                generation = 0;
                r.reset();
                continue;
            }
            Job::Media(ReencodeJob::Frame {
                generation,
                pts,
                keyframe,
                recovery,
                data,
            }) => (generation, pts, keyframe, recovery, data),
        };
        if g != generation {
            continue;
        }
        let before = r.stats();
        let cpu = thread_cpu_time();
        let result = r.push(
            SourceFrame {
                pts,
                keyframe,
                recovery,
                data: &data,
            },
            &mut out,
        );
        st.reencode_us.fetch_add(
            (thread_cpu_time().saturating_sub(cpu)).as_micros() as u64,
            Ordering::Relaxed,
        );
        let after = r.stats();
        let add = |counter: &std::sync::atomic::AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&st.reencode_decoded, after.decoded - before.decoded);
        add(&st.reencode_encoded, after.encoded - before.encoded);
        add(
            &st.reencode_errors,
            (after.decode_errors + after.encode_errors)
                - (before.decode_errors + before.encode_errors),
        );
        add(
            &st.reencode_keyframes,
            after.keyframes_requested - before.keyframes_requested,
        );
        if let Err(e) = result {
            let _ = done.send(Done::Failed(generation, e.to_string()));
            generation = 0;
            r.reset();
            out.clear();
            continue;
        }
        for f in out.drain(..) {
            if let Some(last) = last_pts {
                // Media time encoded, for the CPU share (a jump counts as one frame at most).
                let step = f.pts.saturating_sub(last).min(9_000);
                add(&st.reencode_media_us, step * 100 / 9);
            }
            last_pts = Some(f.pts);
            if done.send(Done::Frame(generation, f)).is_err() {
                return;
            }
        }
    }
}
