//! The per-stream media task: ring → demux → tracks and access units → timed frames for the
//! WebRTC engine. One per stream (and per program of an MPTS that viewers watch on its own),
//! however many viewers.
//!
//! ```text
//!  ring ─► MediaState (state.rs, sans-IO) ─► MediaEvent ─► run(): status, GOP cache,
//!            demux, access units, time,                    counters, logs ─► FrameSink
//!            transcode, packetize once        ▲                              (the engine)
//!                                             └─ reencode.rs: the video re-encoder's thread
//!                                                (B-frames), its pictures back into the state
//! ```

mod clock;
mod reencode;
mod state;
mod tracks_log;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::codec::reencode::OUTPUT as REENCODED_TO;
use crate::codec::reorder::B_FRAMES_ADVICE;
use crate::stream::frame::{FrameSink, Kind};
use crate::stream::gop::GopBound;
use crate::stream::ring::Read;
use crate::stream::{Reencode, ReencodeWhy, StartPoints, Stream};
use reencode::{Done, Worker};
pub use state::{MediaEvent, MediaProblem, MediaState, ReencodeJob};

/// What a stream's media task does beyond passing media through.
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaOptions {
    /// AAC / MPEG audio → Opus when there is no Opus (`--audio-transcode auto`).
    pub audio_transcode: bool,
    /// H.264 with B-frames, or no keyframe within the GOP cache bound, re-encoded
    /// (`--video-transcode auto`).
    pub video_transcode: bool,
    /// How much video the GOP cache holds (`--gop-cache-max`).
    pub gop_cache_max: GopBound,
}

/// Applies what the state machine reported to the stream and hands frames to the viewers.
struct Apply<'a> {
    stream: &'a Arc<Stream>,
    sink: &'a dyn FrameSink,
    /// Problem causes already logged (each is logged once).
    logged: HashSet<&'static str>,
    /// B-frames and keyframe-less video are re-encoded (else they are only reported).
    reencode_on: bool,
    /// The GOP cache bound, for the start-point report.
    gop_bound: GopBound,
    /// The video re-encoder's thread, from the first time the stream needs it.
    worker: Option<Worker>,
    /// Re-encoder runs that could not start (no thread), for the state machine.
    failed: Vec<(u64, String)>,
}

impl Apply<'_> {
    fn events(&mut self, events: &mut Vec<MediaEvent>) {
        for ev in events.drain(..) {
            self.event(ev);
        }
    }

    fn event(&mut self, ev: MediaEvent) {
        let (stream, st) = (self.stream, &self.stream.stats);
        match ev {
            MediaEvent::Frame(frame) => {
                let (frames, bytes) = match frame.kind {
                    Kind::Video => (&st.video_frames, &st.video_bytes),
                    Kind::Audio => (&st.audio_packets, &st.audio_bytes),
                };
                frames.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(frame.data.len() as u64, Ordering::Relaxed);
                stream.gop.lock().push(&frame);
                self.sink.frame(stream, frame);
            }
            MediaEvent::Tracks {
                tracks,
                transcoding,
                changed,
            } => {
                tracks_log::log_tracks(stream, &tracks, transcoding.is_some());
                if changed {
                    info!(stream = %stream.name, "PMT changed");
                }
                stream.update_status(|s| {
                    s.tracks = Some(tracks);
                    s.transcoding = transcoding;
                    // A new transcoder, maybe for another track: it has not failed yet.
                    s.transcode_error = s.transcode_error.take().filter(|_| !changed);
                });
                if changed {
                    self.sink.tracks_changed(stream);
                }
            }
            MediaEvent::Programs(list) => {
                if list.len() > 1 && self.logged.insert("mpts") {
                    let numbers: Vec<u16> = list.iter().map(|t| t.program_number).collect();
                    info!(stream = %stream.name, programs = ?numbers,
                        "several programs in the TS: viewers pick one with ?program=N");
                }
                stream.update_status(|s| s.programs = Some(list));
            }
            MediaEvent::Video(info) => {
                if let Some(i) = info {
                    info!(stream = %stream.name, codec = i.profile.codec().name(),
                        profile = %i.profile, width = i.width, height = i.height, "video");
                }
                stream.update_status(|s| s.video = info);
            }
            MediaEvent::BFrames(on) => {
                // When they are re-encoded away, the re-encoder's start says so.
                if on && !self.reencode_on {
                    warn!(stream = %stream.name, "{B_FRAMES_ADVICE}");
                }
                stream.update_status(|s| s.b_frames = on);
            }
            MediaEvent::StartPoints(s) => {
                if let Some(report) = s.report(self.gop_bound, self.reencode_on) {
                    if self.logged.insert(s.cause()) {
                        // Re-encoded, viewers are served: worth knowing, nothing to fix.
                        if s == StartPoints::RecoveryPoints && self.reencode_on {
                            info!(stream = %stream.name, "start points: {report}");
                        } else {
                            warn!(stream = %stream.name, "start points: {report}");
                        }
                    }
                }
                stream.update_status(|st| st.start_points = s);
            }
            MediaEvent::Reencode(job) => self.reencode(job),
            MediaEvent::Reencoding(r) => self.reencoding(r),
            MediaEvent::Transcoded { errors, micros } => {
                st.transcode_us.fetch_add(micros, Ordering::Relaxed);
                st.transcode_errors.fetch_add(errors, Ordering::Relaxed);
            }
            MediaEvent::Cue(cue) => {
                debug!(stream = %stream.name, pid = %cue.pid, command = cue.cue.command.name(),
                    in_ms = ?cue.in_ms, "SCTE-35 cue");
                stream.stats.cues.push(cue);
            }
            MediaEvent::Discontinuity(pid) => {
                debug!(stream = %stream.name, %pid, "discontinuity");
            }
            MediaEvent::Problem(p) => self.problem(p),
            MediaEvent::Ended => {
                stream.gop.lock().clear();
                tracks_log::transcode_failed(stream, None);
            }
        }
    }

    /// The re-encoder started (and why), cannot run, or stopped: logged, and in the status.
    fn reencoding(&self, r: Reencode) {
        let stream = self.stream;
        match &r {
            Reencode::Active(ReencodeWhy::BFrames) => info!(stream = %stream.name,
                "the video has B-frames, which browsers cannot show: re-encoding it to \
                 {REENCODED_TO} without them, once for all viewers (encode the source \
                 with -bf 0 to save this CPU; --video-transcode off sends it as it is)"),
            Reencode::Active(ReencodeWhy::NoKeyframes) => info!(stream = %stream.name,
                "the video has no keyframe within the GOP cache bound ({}), and \
                 browsers start only at one: re-encoding it to {REENCODED_TO}, once \
                 for all viewers, with a keyframe at each start point of the source \
                 and on each viewer's request (--video-transcode off sends it as it is)",
                self.gop_bound),
            Reencode::Active(ReencodeWhy::Codec(c)) => info!(stream = %stream.name,
                "{} to {REENCODED_TO}", ReencodeWhy::codec_reason(*c)),
            // (B-frames pass through as they are; a codec no browser decodes cannot.)
            Reencode::Unsupported(why) if !stream.status().b_frames => warn!(
                stream = %stream.name, "the video cannot be re-encoded here: {why}"),
            Reencode::Unsupported(why) => warn!(stream = %stream.name,
                "{B_FRAMES_ADVICE}; it cannot be re-encoded here: {why}"),
            Reencode::Off => debug!(stream = %stream.name, "video re-encoder stopped"),
        }
        stream.update_status(|s| s.reencode = r);
    }

    /// A problem of the input: counted, and logged once per cause.
    fn problem(&mut self, p: MediaProblem) {
        let stream = self.stream;
        let st = &stream.stats;
        if p.is_ts_problem() {
            st.ts_problems.fetch_add(1, Ordering::Relaxed);
        }
        if let MediaProblem::TranscodeUnsupported(e) = &p {
            tracks_log::transcode_failed(stream, Some(e));
        }
        if self.logged.insert(p.cause()) {
            match p {
                MediaProblem::Ts(p) => warn!(stream = %stream.name, problem = ?p,
                    "bad TS input (logged once per cause); resyncing and carrying on"),
                MediaProblem::PesWithoutPts(pid) => {
                    warn!(stream = %stream.name, %pid, "PES without PTS dropped")
                }
                MediaProblem::OpusHeader(e) => warn!(stream = %stream.name, error = %e,
                    "bad Opus access unit (logged once); keeping the good ones"),
                MediaProblem::TranscodeUnsupported(e) => warn!(stream = %stream.name,
                    error = %e, "audio cannot be transcoded; video plays without it"),
            }
        }
    }

    fn reencode(&mut self, job: ReencodeJob) {
        if self.worker.is_none() {
            let ReencodeJob::Start { generation, .. } = job else {
                return;
            };
            match Worker::spawn(self.stream) {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    self.failed
                        .push((generation, format!("no thread for the re-encoder: {e}")));
                    return;
                }
            }
        }
        if let Some(w) = self.worker.as_mut() {
            w.send(job);
        }
    }
}

/// What woke the media task.
enum Wake {
    Read(Read),
    Reencoded(Done),
    Stop,
}

/// Runs for the life of the stream: reads its ring, feeds the state machine, applies what it
/// reports.
pub async fn run(stream: Arc<Stream>, sink: Arc<dyn FrameSink>, options: MediaOptions) {
    stream.gop.lock().set_bound(options.gop_cache_max);
    let mut state = MediaState::new()
        .with_gop_bound(options.gop_cache_max)
        .with_transcoding(options.audio_transcode)
        .with_reencoding(options.video_transcode)
        .with_audio(stream.audio_choice())
        .with_h264_video(stream.h264_video())
        .with_program(stream.program_choice());
    let mut apply = Apply {
        stream: &stream,
        sink: sink.as_ref(),
        logged: HashSet::new(),
        reencode_on: options.video_transcode,
        gop_bound: options.gop_cache_max,
        worker: None,
        failed: Vec::new(),
    };
    let mut events = Vec::new();
    let mut reader = stream.ring.reader_from_oldest();
    let mut buf = vec![0u8; 188 * 512];
    loop {
        // A program demuxed on its own (see `Registry::program`) stops when nobody watches it.
        let wake = tokio::select! {
            read = reader.read(&mut buf) => Wake::Read(read),
            Some(done) = async {
                match apply.worker.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => Wake::Reencoded(done),
            () = stream.stopped() => Wake::Stop,
        };
        if stream.take_keyframe_request() {
            if let Some(w) = &apply.worker {
                w.keyframe();
            }
        }
        let read = match wake {
            Wake::Read(read) => read,
            Wake::Reencoded(Done::Frame(generation, frame)) => {
                state.reencoded(generation, frame, Instant::now(), &mut events);
                apply.events(&mut events);
                continue;
            }
            Wake::Reencoded(Done::Failed(generation, why)) => {
                state.reencode_failed(generation, why, &mut events);
                apply.events(&mut events);
                continue;
            }
            Wake::Stop => break,
        };
        match read {
            Read::Data(n) => {
                stream.touch();
                stream.mark_data();
                // When the bytes reached the ring, not when this task got to them: the
                // latency measured is the whole bridge's.
                let arrived = reader.arrived().unwrap_or_else(Instant::now);
                state.push(&buf[..n], arrived, &mut events);
                apply.events(&mut events);
                for (generation, why) in std::mem::take(&mut apply.failed) {
                    state.reencode_failed(generation, why, &mut events);
                    apply.events(&mut events);
                }
            }
            Read::Lapped(skipped) => {
                stream.stats.lapped.fetch_add(1, Ordering::Relaxed);
                warn!(stream = %stream.name, skipped, "demux fell behind the ring; resuming at the live edge");
            }
            Read::EndOfInput => {
                info!(stream = %stream.name, "source ended; waiting for a new one");
                state.end_of_input(Instant::now(), &mut events);
                apply.events(&mut events);
                stream.mark_ended();
            }
            Read::Shutdown => break,
        }
    }
    debug!(stream = %stream.name, "media task ended");
}
