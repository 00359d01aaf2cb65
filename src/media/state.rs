//! The media state machine, sans-IO: TS bytes and `now` in, [`MediaEvent`]s out. It demuxes
//! the followed program, assembles access units, maps time, transcodes audio when it must,
//! and packetizes each frame once; the task around it (`media::run`) applies the events to the
//! stream (status, GOP cache, counters, logs) and hands frames to the viewers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::clock::Clock;
use crate::codec::h264::{self, AccessUnit};
use crate::codec::opus::{self, OpusError, OpusPacket};
use crate::codec::reencode::{self, EncodedFrame};
use crate::codec::reorder::ReorderDetector;
use crate::codec::transcode::Transcoder;
use crate::codec::{Recovery, VideoAssembler, VideoCodec, VideoInfo};
use crate::rtp::{H264Packetizer, H265Packetizer, OpusPacketizer, Packetizer, Payload};
use crate::stream::cues::StreamCue;
use crate::stream::frame::{Frame, Kind};
use crate::stream::gop::GopBound;
use crate::stream::starts::{StartPoints, StartWatch};
use crate::stream::{Reencode, ReencodeWhy};
use crate::time::{self, ClockRate, Timeline};
use crate::ts::{
    AudioChoice, Codec, DemuxEvent, DemuxProblem, Demuxer, Pes, Pid, ProgramChoice, TrackSet,
};

/// What the state machine reports, in order.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    /// A frame for the viewers: numbered, timed, packetized.
    Frame(Frame),
    /// The followed program's PMT: its tracks, the audio codec transcoded to Opus (if any),
    /// and whether it changed a track set viewers already have.
    Tracks {
        tracks: Arc<TrackSet>,
        transcoding: Option<&'static str>,
        changed: bool,
    },
    /// Every program of the TS (an MPTS has several).
    Programs(Arc<[TrackSet]>),
    /// The video's details from a new SPS; `None` when the video codec changed (nothing is
    /// known of the new one yet).
    Video(Option<VideoInfo>),
    /// B-frames were seen (`true`), or forgotten with the source (`false`).
    BFrames(bool),
    /// The source's start points got worse against the GOP cache bound, or were forgotten
    /// with the source (`Keyframes`).
    StartPoints(StartPoints),
    /// Work for the video re-encoder (B-frames, `--video-transcode auto`); what it gives back
    /// goes to [`MediaState::reencoded`].
    Reencode(ReencodeJob),
    /// The video is re-encoded now, or no longer, or cannot be.
    Reencoding(Reencode),
    /// The audio transcoder took one PES: its decode errors, and its CPU time.
    Transcoded { errors: u64, micros: u64 },
    /// A discontinuity on a track (lost packets, a flagged discontinuity).
    Discontinuity(Pid),
    /// An SCTE-35 cue of the followed program.
    Cue(StreamCue),
    /// Something wrong in the input; the stream carries on.
    Problem(MediaProblem),
    /// The source ended: what was complete has been reported; the GOP cache is stale.
    Ended,
}

/// What the video re-encoder is asked to do, in order.
#[derive(Debug, Clone)]
pub enum ReencodeJob {
    /// Start (again): from the next keyframe on, encode the pictures shown from `from` on
    /// (those before went out as they were); the access units are `source`'s. Results carry
    /// `generation`.
    Start {
        generation: u64,
        from: u64,
        source: VideoCodec,
    },
    /// An access unit of the source, in decode order, on the stream's timeline.
    Frame {
        generation: u64,
        pts: u64,
        keyframe: bool,
        recovery: Recovery,
        data: Bytes,
    },
    /// The source ended: drop what is pending.
    Stop,
}

/// Access units kept since the last start point, for the re-encoder to start from when it is
/// needed mid-GOP (a longer GOP starts at its next start point).
const MAX_HELD: usize = 512;

/// A video access unit of the source kept for the re-encoder: timeline PTS, keyframe,
/// recovery, the data.
type Held = (u64, bool, Recovery, Bytes);

/// Defects of the input beyond the TS layer's, each with a stable [`MediaProblem::cause`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaProblem {
    Ts(DemuxProblem),
    /// A PES without PTS: its time is unknown, it is dropped.
    PesWithoutPts(Pid),
    /// A bad Opus access unit; the good ones of its PES are kept.
    OpusHeader(OpusError),
    /// The transcoder cannot take the audio (e.g. HE-AAC); the video plays without it.
    TranscodeUnsupported(String),
}

impl MediaProblem {
    /// A stable key per kind of problem, for "log once per cause".
    pub fn cause(&self) -> &'static str {
        match self {
            MediaProblem::Ts(p) => p.cause(),
            MediaProblem::PesWithoutPts(_) => "pes_without_pts",
            MediaProblem::OpusHeader(_) => "opus_control_header",
            MediaProblem::TranscodeUnsupported(_) => "transcode_unsupported",
        }
    }

    /// Whether it counts among the stream's TS problems (the API's `ts_problems`).
    pub fn is_ts_problem(&self) -> bool {
        matches!(self, MediaProblem::Ts(_) | MediaProblem::OpusHeader(_))
    }
}

/// The sans-IO part of the media task.
pub struct MediaState {
    demux: Demuxer,
    /// The video track's assembler (its codec follows the PMT).
    video: VideoAssembler,
    events: Vec<DemuxEvent>,
    aus: Vec<AccessUnit>,
    tracks: Option<Arc<TrackSet>>,
    timeline: Timeline,
    clock: Clock,
    video_offset: u64,
    audio_offset: u64,
    next_seq: u64,
    /// Transcode AAC/MPEG audio when there is no Opus (`--audio-transcode auto`).
    transcode: bool,
    /// The audio track viewers get (`?audio=N`).
    audio: AudioChoice,
    transcoder: Option<(Pid, Transcoder)>,
    last_transcoded: Option<u64>,
    /// The transcoder's CPU time is measured with this (instrumentation, not logic: tests
    /// and benches may pass a fixed clock).
    stopwatch: fn() -> Instant,
    /// The latest SPS's details as reported.
    video_info: Option<VideoInfo>,
    video_rtp: Packetizer,
    opus_rtp: OpusPacketizer,
    payloads: Vec<Payload>,
    /// B-frames in the video: reported, and re-encoded away when `reencode_on`.
    reorder: ReorderDetector,
    reencode_on: bool,
    /// HEVC goes out re-encoded to H.264 (the variant for viewers without H.265).
    hevc_to_h264: bool,
    /// The generation of the re-encoder's current run, while the video is re-encoded.
    reencoding: Option<u64>,
    generation: u64,
    /// The video cannot be re-encoded (until the source ends): it goes out as it is.
    reencode_blocked: bool,
    /// Video access units since the last start point, while the re-encoder may be needed.
    held: Vec<Held>,
    /// The source's start points against the GOP cache bound.
    starts: StartWatch,
    /// The latest-shown video frame that went out as the source sent it.
    passed_until: Option<u64>,
    /// When the bytes being handled arrived (see `Frame::arrived`).
    arrived: Instant,
    /// The latest ingest mark: the origin's µs, and when it came.
    mark: Option<(u64, Instant)>,
    /// The PTS (33-bit, as sent) of the last video PES, to say how far ahead a cue's splice
    /// point is.
    last_video_pts: Option<u64>,
    /// (timeline time, arrival, ingest µs) of the video frames the re-encoder may be given,
    /// so that its pictures are measured from their source's arrival.
    to_encoder: VecDeque<(u64, Instant, u64)>,
}

/// An ingest mark older than this no longer says where the stream's bytes come from.
const MARK_FRESH: Duration = Duration::from_secs(2);
/// Arrivals kept for the re-encoder's pictures (its delay is a few frames).
const TO_ENCODER: usize = 64;

impl Default for MediaState {
    fn default() -> Self {
        Self::new()
    }
}

impl MediaState {
    pub fn new() -> Self {
        MediaState {
            demux: Demuxer::new(),
            video: VideoAssembler::new(VideoCodec::H264),
            events: Vec::new(),
            aus: Vec::new(),
            tracks: None,
            timeline: Timeline::new(),
            clock: Clock::default(),
            video_offset: u64::from(rand::random::<u32>()),
            audio_offset: u64::from(rand::random::<u32>()),
            next_seq: 0,
            transcode: false,
            audio: AudioChoice::Auto,
            transcoder: None,
            last_transcoded: None,
            stopwatch: Instant::now,
            video_info: None,
            video_rtp: Packetizer::H264(H264Packetizer::default()),
            opus_rtp: OpusPacketizer::new(),
            payloads: Vec::new(),
            reorder: ReorderDetector::new(),
            reencode_on: false,
            hevc_to_h264: false,
            reencoding: None,
            generation: 0,
            reencode_blocked: false,
            held: Vec::new(),
            starts: StartWatch::new(GopBound::DEFAULT),
            passed_until: None,
            arrived: Instant::now(),
            mark: None,
            last_video_pts: None,
            to_encoder: VecDeque::new(),
        }
    }

    /// With the GOP cache bound start points are measured against (`--gop-cache-max`).
    pub fn with_gop_bound(mut self, bound: GopBound) -> Self {
        self.starts = StartWatch::new(bound);
        self
    }

    /// With the video re-encoded when it has B-frames (`--video-transcode auto`).
    pub fn with_reencoding(mut self, on: bool) -> Self {
        self.reencode_on = on;
        self
    }

    /// With HEVC video re-encoded to H.264 (for viewers without H.265, `Variant::h264`).
    pub fn with_h264_video(mut self, on: bool) -> Self {
        self.hevc_to_h264 = on;
        self
    }

    /// Whether the video goes to viewers only re-encoded: MPEG-2 (no browser decodes it),
    /// HEVC for the viewers without H.265.
    fn only_reencoded(&self) -> bool {
        match self.video.codec() {
            VideoCodec::Mpeg2 => true,
            VideoCodec::H265 => self.hevc_to_h264,
            VideoCodec::H264 => false,
        }
    }

    /// With the audio transcoder on (AAC/MPEG audio → Opus when there is no Opus track).
    pub fn with_transcoding(mut self, on: bool) -> Self {
        self.transcode = on;
        self.demux.set_transcodable_audio(on);
        self
    }

    /// Following `choice` of the TS's programs (an MPTS).
    pub fn with_program(mut self, choice: ProgramChoice) -> Self {
        self.demux = Demuxer::with_program(choice);
        self.demux.set_transcodable_audio(self.transcode);
        self.demux.set_audio(self.audio);
        self
    }

    /// With `choice` of the program's audio tracks for the viewers.
    pub fn with_audio(mut self, choice: AudioChoice) -> Self {
        self.audio = choice;
        self.demux.set_audio(choice);
        self
    }

    /// Bytes of the stream's TS (any split), arriving at `now`.
    pub fn push(&mut self, data: &[u8], now: Instant, out: &mut Vec<MediaEvent>) {
        self.arrived = now;
        let mut events = std::mem::take(&mut self.events);
        self.demux.push(data, &mut events);
        self.handle_events(&mut events, now, out);
        self.events = events;
    }

    /// A source ended: flush what is complete, forget the input's PIDs and timing. The
    /// timeline re-anchors so viewers' RTP time stays continuous into the next source.
    pub fn end_of_input(&mut self, now: Instant, out: &mut Vec<MediaEvent>) {
        let mut events = std::mem::take(&mut self.events);
        self.demux.flush(&mut events);
        self.handle_events(&mut events, now, out);
        self.events = events;
        // An MPEG-2 picture is complete when the next starts: the last one, at the end.
        let mut aus = std::mem::take(&mut self.aus);
        self.video.flush(&mut aus);
        self.on_access_units(&mut aus, now, out);
        self.aus = aus;
        if let Some((_, tc)) = self.transcoder.as_mut() {
            let mut frames = Vec::new();
            tc.flush(&mut frames);
            tc.reset();
        }
        self.demux.reset();
        self.video.reset();
        if self.reorder.has_b_frames() {
            out.push(MediaEvent::BFrames(false));
        }
        self.reorder.reset();
        if self.starts.reset() {
            out.push(MediaEvent::StartPoints(StartPoints::Keyframes));
        }
        self.stop_reencoding(out);
        self.timeline.discontinuity();
        out.push(MediaEvent::Ended);
    }

    fn video_pid(&self) -> Option<Pid> {
        self.tracks.as_ref()?.video().map(|t| t.pid)
    }

    /// The Opus track viewers get, when it is one.
    fn audio_pid(&self) -> Option<Pid> {
        let (_, t) = self.audio.pick(self.tracks.as_ref()?)?;
        matches!(t.codec, Codec::Opus { .. }).then_some(t.pid)
    }

    fn handle_events(
        &mut self,
        events: &mut Vec<DemuxEvent>,
        now: Instant,
        out: &mut Vec<MediaEvent>,
    ) {
        for ev in events.drain(..) {
            match ev {
                DemuxEvent::Tracks(t) => self.on_tracks(t, out),
                DemuxEvent::Pes(pes) => self.on_pes(&pes, now, out),
                DemuxEvent::Pcr { .. } => {}
                DemuxEvent::Programs(list) => out.push(MediaEvent::Programs(list.into())),
                // Lost packets or a flagged discontinuity: the timeline re-anchors by itself
                // when the timestamps really jump (> 1 s); small gaps are kept as they are.
                DemuxEvent::Discontinuity { pid } => out.push(MediaEvent::Discontinuity(pid)),
                DemuxEvent::Problem(p) => out.push(MediaEvent::Problem(MediaProblem::Ts(p))),
                DemuxEvent::Ingested(us) => self.mark = Some((us, now)),
                DemuxEvent::Cue { pid, cue } => {
                    // Both on the source's 33-bit clock: the nearer way round the wrap.
                    let in_ms = (cue.splice_pts().zip(self.last_video_pts))
                        .map(|(at, last)| time::pts_diff(last, at) / 90);
                    let unix_ms = crate::wallclock::unix_micros(now) / 1000;
                    let cue = *cue;
                    out.push(MediaEvent::Cue(StreamCue {
                        pid,
                        cue,
                        in_ms,
                        unix_ms,
                    }));
                }
            }
        }
    }

    /// When the bytes that arrived at `now` reached the cluster: the latest ingest mark, moved
    /// on by the time since it came; else `now` on this node's clock.
    fn ingested_us(&self, now: Instant) -> u64 {
        match self.mark {
            Some((us, at)) if now.saturating_duration_since(at) < MARK_FRESH => {
                us + now.saturating_duration_since(at).as_micros() as u64
            }
            _ => crate::wallclock::unix_micros(now),
        }
    }

    /// Number the frame and packetize it once for every viewer.
    fn emit(&mut self, mut frame: Frame, out: &mut Vec<MediaEvent>) {
        self.payloads.clear();
        match frame.kind {
            Kind::Video => self.video_rtp.packetize(&frame.data, &mut self.payloads),
            Kind::Audio => self.opus_rtp.packetize(&frame.data, &mut self.payloads),
        }
        frame.payloads = Arc::from(&self.payloads[..]);
        if frame.ingested_us == 0 {
            frame.ingested_us = self.ingested_us(frame.arrived);
        }
        frame.seq = self.next_seq;
        self.next_seq += 1;
        out.push(MediaEvent::Frame(frame));
    }

    fn on_tracks(&mut self, tracks: TrackSet, out: &mut Vec<MediaEvent>) {
        let transcode = self
            .transcode
            .then(|| self.audio.transcoded(&tracks))
            .flatten()
            .and_then(|t| match t.codec {
                Codec::Transcodable(codec) => Some((t.pid, codec)),
                _ => None,
            });
        match (&self.transcoder, transcode) {
            (Some((old, _)), Some((pid, _))) if *old == pid => {}
            (_, Some((pid, codec))) => self.transcoder = Some((pid, Transcoder::new(codec))),
            (_, None) => self.transcoder = None,
        }
        let codec = tracks.video().and_then(|t| match t.codec {
            Codec::H264 => Some(VideoCodec::H264),
            Codec::H265 => Some(VideoCodec::H265),
            Codec::Mpeg2Video => Some(VideoCodec::Mpeg2),
            _ => None,
        });
        if let Some(codec) = codec.filter(|&c| c != self.video.codec()) {
            self.video = VideoAssembler::new(codec);
            self.video_rtp = match codec {
                VideoCodec::H265 if !self.hevc_to_h264 => {
                    Packetizer::H265(H265Packetizer::default())
                }
                // MPEG-2 (and HEVC for viewers without H.265) go to viewers re-encoded.
                _ => Packetizer::H264(H264Packetizer::default()),
            };
            self.video_info = None;
            self.stop_reencoding(out);
            out.push(MediaEvent::Video(None));
        }
        let changed = self.tracks.as_deref().is_some_and(|old| old != &tracks);
        let tracks = Arc::new(tracks);
        self.tracks = Some(tracks.clone());
        out.push(MediaEvent::Tracks {
            tracks,
            transcoding: transcode.map(|(_, c)| c.name()),
            changed,
        });
    }

    fn on_pes(&mut self, pes: &Pes, now: Instant, out: &mut Vec<MediaEvent>) {
        let Some(pts) = pes.pts else {
            out.push(MediaEvent::Problem(MediaProblem::PesWithoutPts(pes.pid)));
            return;
        };
        if Some(pes.pid) == self.video_pid() {
            self.last_video_pts = Some(pts);
            self.on_video(pes, now, out);
        } else if Some(pes.pid) == self.audio_pid() {
            self.on_audio(pes, pts, now, out);
        } else if self
            .transcoder
            .as_ref()
            .is_some_and(|(pid, _)| *pid == pes.pid)
        {
            self.on_transcoded_audio(pes, pts, now, out);
        }
    }

    fn on_video(&mut self, pes: &Pes, now: Instant, out: &mut Vec<MediaEvent>) {
        let mut aus = std::mem::take(&mut self.aus);
        self.video.push(pes, &mut aus);
        self.on_access_units(&mut aus, now, out);
        self.aus = aus;
    }

    fn on_access_units(
        &mut self,
        aus: &mut Vec<AccessUnit>,
        now: Instant,
        out: &mut Vec<MediaEvent>,
    ) {
        // While re-encoding, viewers get the encoder's SPS (see `reencoded`); so do they when
        // the video goes out only re-encoded.
        if self.reencoding.is_none() && !self.only_reencoded() {
            self.report_video(self.video.info(), out);
        }
        for au in aus.drain(..) {
            // (MPEG-2's B-frames go with its re-encoding: nothing to report.)
            let b_frames = !self.only_reencoded() && self.reorder.push(au.pts);
            if b_frames {
                out.push(MediaEvent::BFrames(true));
            }
            // ~1 frame at 30 fps: the step used when the timeline has to re-anchor.
            let t = self.timeline.map(au.pts, 3000);
            let start = au.keyframe || au.recovery.is_point();
            let far_before = self.starts.keyframes_too_far();
            if let Some(s) = self.starts.push(t, au.data.len(), au.keyframe, start) {
                out.push(MediaEvent::StartPoints(s));
            }
            let keyframes_far = !far_before && self.starts.keyframes_too_far();
            if self.reencoding.is_some() || self.reencode_on {
                if self.to_encoder.len() == TO_ENCODER {
                    self.to_encoder.pop_front();
                }
                let us = self.ingested_us(now);
                self.to_encoder.push_back((t, now, us));
            }
            if let Some(generation) = self.reencoding {
                out.push(MediaEvent::Reencode(ReencodeJob::Frame {
                    generation,
                    pts: t,
                    keyframe: au.keyframe,
                    recovery: au.recovery,
                    data: au.data.clone(),
                }));
                continue;
            }
            if self.only_reencoded() {
                // These viewers cannot decode it as it is: nothing goes out until the
                // re-encoder runs, from the first keyframe (or ever, when it cannot).
                if au.keyframe && !self.reencode_blocked {
                    self.held.clear();
                    self.held
                        .push((t, au.keyframe, au.recovery, au.data.clone()));
                    self.start_reencoding(ReencodeWhy::Codec(self.video.codec()), out);
                }
                continue;
            }
            if self.reencode_on && !self.reencode_blocked && self.video.codec() == VideoCodec::H264
            {
                if start || self.held.len() >= MAX_HELD {
                    // (Full: the re-encoder would start at the next start point anyway.)
                    self.held.clear();
                }
                self.held
                    .push((t, au.keyframe, au.recovery, au.data.clone()));
                let why = match (b_frames, keyframes_far) {
                    (true, _) => Some(ReencodeWhy::BFrames),
                    (false, true) => Some(ReencodeWhy::NoKeyframes),
                    (false, false) => None,
                };
                if let Some(why) = why {
                    if self.start_reencoding(why, out) {
                        continue;
                    }
                }
            }
            self.passed_until = Some(self.passed_until.map_or(t, |p| p.max(t)));
            self.emit_video(
                t,
                Arc::from(&au.data[..]),
                (au.keyframe, au.recovery),
                (now, now, 0),
                out,
            );
        }
    }

    /// A video frame at timeline time `t`, for the viewers; `start`: whether it is a keyframe,
    /// and a recovery point or a RASL picture; made at `now`, from bytes that arrived then
    /// (0 µs: unknown yet) or earlier (re-encoded).
    fn emit_video(
        &mut self,
        t: u64,
        data: Arc<[u8]>,
        (keyframe, recovery): (bool, Recovery),
        (now, arrived, ingested_us): (Instant, Instant, u64),
        out: &mut Vec<MediaEvent>,
    ) {
        let frame = Frame {
            seq: 0,
            kind: Kind::Video,
            rtp_time: t + self.video_offset,
            wallclock: self.clock.wallclock(t, now),
            arrived,
            ingested_us,
            data,
            keyframe,
            recovery,
            payloads: Arc::from([]),
        };
        self.emit(frame, out);
    }

    /// Report the video's details when they change (from the source's SPS, or the
    /// re-encoder's).
    fn report_video(&mut self, info: Option<VideoInfo>, out: &mut Vec<MediaEvent>) {
        if let Some(info) = info.filter(|&i| self.video_info != Some(i)) {
            self.video_info = Some(info);
            out.push(MediaEvent::Video(Some(info)));
        }
    }

    /// B-frames were found, or keyframes are too far apart for browsers: hand the video to the
    /// re-encoder from the GOP's start point on (the pictures already shown are not encoded
    /// again). `false` when the video cannot be re-encoded (it goes out as it is, and the
    /// reason is reported).
    fn start_reencoding(&mut self, why: ReencodeWhy, out: &mut Vec<MediaEvent>) -> bool {
        let format = match &self.video {
            VideoAssembler::H264(a) => a.sps().map(reencode::check_format),
            VideoAssembler::H265(_) | VideoAssembler::Mpeg2(_) => None,
        };
        if let Some(Err(e)) = format {
            self.reencode_failed(self.generation, e.to_string(), out);
            return false;
        }
        if !self.reencode_on {
            // (Only a codec no browser decodes asks while re-encoding is off.)
            let why = format!(
                "{} plays re-encoded to H.264 and video re-encoding is off: run with \
                 --video-transcode auto (the default)",
                self.video.codec().name()
            );
            self.reencode_failed(self.generation, why, out);
            return false;
        }
        self.generation += 1;
        let generation = self.generation;
        self.reencoding = Some(generation);
        out.push(MediaEvent::Reencoding(Reencode::Active(why)));
        out.push(MediaEvent::Reencode(ReencodeJob::Start {
            generation,
            from: self.passed_until.map_or(0, |t| t + 1),
            source: self.video.codec(),
        }));
        for (pts, keyframe, recovery, data) in self.held.drain(..) {
            out.push(MediaEvent::Reencode(ReencodeJob::Frame {
                generation,
                pts,
                keyframe,
                recovery,
                data,
            }));
        }
        true
    }

    fn stop_reencoding(&mut self, out: &mut Vec<MediaEvent>) {
        let running = self.reencoding.take().is_some();
        if running {
            out.push(MediaEvent::Reencode(ReencodeJob::Stop));
        }
        if running || self.reencode_blocked {
            out.push(MediaEvent::Reencoding(Reencode::Off));
        }
        self.reencode_blocked = false;
        self.held.clear();
        self.passed_until = None;
    }

    /// The re-encoder could not take the video (`generation` is the run it was on): it goes
    /// out as the source sends it until the source ends, and why is reported.
    pub fn reencode_failed(&mut self, generation: u64, why: String, out: &mut Vec<MediaEvent>) {
        if self.reencoding.is_some_and(|g| g != generation) {
            return;
        }
        self.reencoding = None;
        self.reencode_blocked = true;
        self.held.clear();
        out.push(MediaEvent::Reencoding(Reencode::Unsupported(why.into())));
        if !self.only_reencoded() {
            self.report_video(self.video.info(), out);
        }
    }

    /// A picture from the re-encoder (in display order), for the viewers: on the stream's
    /// timeline and RTP clock like any frame. Results of an earlier run are dropped.
    pub fn reencoded(
        &mut self,
        generation: u64,
        f: EncodedFrame,
        now: Instant,
        out: &mut Vec<MediaEvent>,
    ) {
        if self.reencoding != Some(generation) {
            return;
        }
        if f.keyframe {
            let sps = h264::find_sps(&f.data).and_then(h264::parse_sps);
            self.report_video(sps.as_ref().map(VideoInfo::from), out);
        }
        let source = self.to_encoder.iter().find(|e| e.0 == f.pts);
        let (arrived, us) = source.map_or((now, 0), |&(_, a, us)| (a, us));
        self.emit_video(
            f.pts,
            Arc::from(f.data),
            (f.keyframe, Recovery::None),
            (now, arrived, us),
            out,
        );
    }

    fn on_audio(&mut self, pes: &Pes, pts: u64, now: Instant, out: &mut Vec<MediaEvent>) {
        let mut packets: Vec<OpusPacket<'_>> = Vec::new();
        if let Err(e) = opus::split_pes(&pes.data, &mut packets) {
            out.push(MediaEvent::Problem(MediaProblem::OpusHeader(e)));
        }
        // 20 ms: the step used when the timeline has to re-anchor.
        let t = self.timeline.map(pts, 1800);
        let base = time::rescale(t, ClockRate::OPUS);
        for p in packets {
            let offset = u64::from(p.offset_samples);
            // Opus frames are multiples of 2.5 ms (120 samples): exact in 90 kHz ticks.
            let wallclock = self.clock.wallclock(t + offset * 15 / 8, now);
            let frame = Frame {
                seq: 0,
                kind: Kind::Audio,
                rtp_time: base + offset + self.audio_offset,
                wallclock,
                arrived: now,
                ingested_us: 0,
                data: Arc::from(p.data),
                keyframe: true,
                recovery: Recovery::None,
                payloads: Arc::from([]),
            };
            self.emit(frame, out);
        }
    }

    /// AAC/MPEG audio → Opus frames on the stream's timeline (the transcoder compensates its
    /// own delays, so frame times are source times).
    fn on_transcoded_audio(
        &mut self,
        pes: &Pes,
        pts: u64,
        now: Instant,
        out: &mut Vec<MediaEvent>,
    ) {
        let t = self.timeline.map(pts, 1800);
        let Some((_, tc)) = self.transcoder.as_mut() else {
            return;
        };
        if pes.discontinuity {
            tc.discontinuity();
        }
        let mut frames = Vec::new();
        let started = (self.stopwatch)();
        let errors_before = tc.stats().decode_errors;
        let result = tc.push(&pes.data, Some(t), &mut frames);
        out.push(MediaEvent::Transcoded {
            errors: tc.stats().decode_errors.saturating_sub(errors_before),
            micros: (self.stopwatch)()
                .saturating_duration_since(started)
                .as_micros() as u64,
        });
        if let Err(e) = result {
            out.push(MediaEvent::Problem(MediaProblem::TranscodeUnsupported(
                e.to_string(),
            )));
        }
        for f in frames {
            // A re-anchored transcoder (a source restart, a loop point) may start a frame
            // that overlaps the last one: keep the Opus clock moving forward by 20 ms.
            let mut rtp_time = time::rescale(f.pts_90k, ClockRate::OPUS) + self.audio_offset;
            if let Some(last) = self.last_transcoded {
                if rtp_time < last + 960 && last + 960 - rtp_time < 48_000 {
                    rtp_time = last + 960;
                }
            }
            self.last_transcoded = Some(rtp_time);
            let wallclock = self.clock.wallclock(f.pts_90k, now);
            let frame = Frame {
                seq: 0,
                kind: Kind::Audio,
                rtp_time,
                wallclock,
                arrived: now,
                ingested_us: 0,
                data: Arc::from(&f.data[..]),
                keyframe: true,
                recovery: Recovery::None,
                payloads: Arc::from([]),
            };
            self.emit(frame, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h264_decoder::{DecodeState, H264Decoder};

    fn run(file: &str, chunk: usize) -> Vec<MediaEvent> {
        let data = crate::testdata::bytes(file);
        let mut m = MediaState::new().with_transcoding(true);
        let mut out = Vec::new();
        let now = Instant::now();
        for c in data.chunks(chunk) {
            m.push(c, now, &mut out);
        }
        m.end_of_input(now, &mut out);
        out
    }

    /// What goes to the re-encoder (and what to viewers) for a video that plays only
    /// re-encoded: MPEG-2 always, HEVC in the variant for viewers without H.265.
    #[cfg(feature = "ffmpeg")]
    fn only_reencoded(file: &str, h264_video: bool) -> Vec<MediaEvent> {
        let data = crate::testdata::bytes(file);
        let mut m = MediaState::new()
            .with_transcoding(true)
            .with_reencoding(true)
            .with_h264_video(h264_video);
        let mut out = Vec::new();
        let now = Instant::now();
        m.push(&data, now, &mut out);
        m.end_of_input(now, &mut out);
        out
    }

    /// MPEG-2, and HEVC for viewers without H.265: no video frame goes out as the source
    /// sent it; the re-encoder starts at the first keyframe, told the codec, with the reason
    /// reported; the packetizer is H.264's. HEVC otherwise passes through.
    #[cfg(feature = "ffmpeg")]
    #[test]
    fn mpeg2_and_hevc_for_h264_viewers_go_to_the_reencoder_from_a_keyframe() {
        for (file, h264_video, codec, aus) in [
            ("mpeg2_576i_mp2.ts", false, VideoCodec::Mpeg2, 25),
            ("hevc_aac.ts", true, VideoCodec::H265, 60),
        ] {
            let events = only_reencoded(file, h264_video);
            assert!(frames(&events, Kind::Video).is_empty(), "{file}");
            assert!(
                !frames(&events, Kind::Audio).is_empty(),
                "{file}: audio plays"
            );
            let active = events.iter().find_map(|e| match e {
                MediaEvent::Reencoding(Reencode::Active(why)) => Some(*why),
                _ => None,
            });
            assert_eq!(active, Some(ReencodeWhy::Codec(codec)), "{file}");
            let start = events.iter().find_map(|e| match e {
                MediaEvent::Reencode(ReencodeJob::Start { source, .. }) => Some(*source),
                _ => None,
            });
            assert_eq!(start, Some(codec), "{file}");
            let sent: Vec<bool> = events
                .iter()
                .filter_map(|e| match e {
                    MediaEvent::Reencode(ReencodeJob::Frame { keyframe, .. }) => Some(*keyframe),
                    _ => None,
                })
                .collect();
            assert_eq!(sent.len(), aus, "{file}");
            assert!(sent[0], "{file}: from a keyframe");
            assert!(!events
                .iter()
                .any(|e| matches!(e, MediaEvent::BFrames(true))));
        }
        let events = only_reencoded("hevc_aac.ts", false);
        assert_eq!(
            frames(&events, Kind::Video).len(),
            60,
            "HEVC passes through"
        );
        assert!(!events.iter().any(|e| matches!(e, MediaEvent::Reencode(_))));
    }

    fn frames(events: &[MediaEvent], kind: Kind) -> Vec<&Frame> {
        events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) if f.kind == kind => Some(f),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn h264_and_opus_become_numbered_packetized_frames_on_one_timeline() {
        let events = run("h264_opus.ts", 1316);
        let tracks = events
            .iter()
            .position(|e| matches!(e, MediaEvent::Tracks { changed: false, .. }))
            .expect("tracks first");
        let first_frame = events
            .iter()
            .position(|e| matches!(e, MediaEvent::Frame(_)))
            .unwrap();
        assert!(tracks < first_frame);
        let video = frames(&events, Kind::Video);
        let audio = frames(&events, Kind::Audio);
        assert_eq!(video.len(), 180);
        assert_eq!(audio.len(), 301);
        assert!(video[0].keyframe);
        assert!(video
            .windows(2)
            .all(|w| w[1].rtp_time - w[0].rtp_time == 3000));
        let steps: Vec<u64> = audio
            .windows(2)
            .map(|w| w[1].rtp_time - w[0].rtp_time)
            .collect();
        // 20 ms apart, but after the first PES: ffmpeg times the second one after the first's
        // start trim (its pre-skip), so the trimmed samples are not played twice.
        assert!(steps[5..].iter().all(|&s| s == 960), "{steps:?}");
        assert!(video.iter().chain(&audio).all(|f| !f.payloads.is_empty()));
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some(f.seq),
                _ => None,
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "frames numbered in order"
        );
        assert!(matches!(events.last(), Some(MediaEvent::Ended)));
        let infos: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Video(Some(v)) => Some((v.width, v.height)),
                _ => None,
            })
            .collect();
        assert_eq!(infos, [(640, 360)]);
    }

    #[test]
    fn b_frames_are_reported_once_then_forgotten_with_the_source() {
        let events = run("h264_bframes.ts", 4096);
        let reports: Vec<bool> = events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::BFrames(b) => Some(*b),
                _ => None,
            })
            .collect();
        assert_eq!(reports, [true, false]);
    }

    #[test]
    fn aac_is_transcoded_with_its_cpu_time_and_hevc_switches_the_assembler() {
        let events = run("h264_aac.ts", 1316);
        assert!(events.iter().any(|e| matches!(
            e,
            MediaEvent::Tracks {
                transcoding: Some(_),
                ..
            }
        )));
        assert!(events
            .iter()
            .any(|e| matches!(e, MediaEvent::Transcoded { .. })));
        assert!(frames(&events, Kind::Audio).len() > 100);
        let events = run("hevc_opus.ts", 1316);
        assert!(events.iter().any(|e| matches!(e, MediaEvent::Video(None))));
        let video = frames(&events, Kind::Video);
        assert_eq!(video.len(), 180);
        assert!(video[0].keyframe);
    }

    #[test]
    fn b_frames_go_to_the_reencoder_and_come_back_as_one_rising_video_timeline() {
        use crate::codec::reencode::{Reencoder, SourceFrame};
        let data = crate::testdata::bytes("h264_bframes.ts");
        let mut m = MediaState::new().with_reencoding(true);
        let now = Instant::now();
        // The media task's part, synchronously: jobs to the re-encoder, pictures back.
        struct Worker(Reencoder, u64, Vec<crate::codec::reencode::EncodedFrame>);
        impl Worker {
            fn drive(
                &mut self,
                m: &mut MediaState,
                events: &mut Vec<MediaEvent>,
                all: &mut Vec<MediaEvent>,
                now: Instant,
            ) {
                while !events.is_empty() {
                    for ev in std::mem::take(events) {
                        match &ev {
                            MediaEvent::Reencode(ReencodeJob::Start {
                                generation, from, ..
                            }) => {
                                self.1 = *generation;
                                self.0.start_at(*from);
                            }
                            MediaEvent::Reencode(ReencodeJob::Frame {
                                pts,
                                keyframe,
                                recovery,
                                data,
                                ..
                            }) => {
                                let au = SourceFrame {
                                    pts: *pts,
                                    keyframe: *keyframe,
                                    recovery: *recovery,
                                    data,
                                };
                                self.0.push(au, &mut self.2).unwrap();
                            }
                            MediaEvent::Reencode(ReencodeJob::Stop) => self.0.reset(),
                            _ => {}
                        }
                        all.push(ev);
                    }
                    for f in self.2.drain(..) {
                        m.reencoded(self.1, f, now, events);
                    }
                }
            }
        }
        let mut w = Worker(Reencoder::new(), 0, Vec::new());
        let (mut events, mut all) = (Vec::new(), Vec::new());
        for c in data.chunks(1316) {
            m.push(c, now, &mut events);
            w.drive(&mut m, &mut events, &mut all, now);
        }
        w.0.flush(&mut w.2);
        w.drive(&mut m, &mut vec![], &mut all, now);
        for f in w.2.drain(..) {
            m.reencoded(w.1, f, now, &mut events);
        }
        m.end_of_input(now, &mut events);
        w.drive(&mut m, &mut events, &mut all, now);

        let states: Vec<&Reencode> = all
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Reencoding(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(
            states,
            [&Reencode::Active(ReencodeWhy::BFrames), &Reencode::Off]
        );
        let video = frames(&all, Kind::Video);
        // A couple of pictures went out as they were before B-frames showed (the ones shown
        // between them are skipped: the clock never goes back); then every later picture,
        // re-encoded, starting with an IDR, RTP time rising by one frame each.
        assert!((115..=120).contains(&video.len()), "{}", video.len());
        assert!(video.windows(2).all(|w| w[1].rtp_time > w[0].rtp_time));
        let first = video.iter().skip(1).position(|f| f.keyframe).unwrap() + 1;
        assert!(first <= 3, "{first}");
        let steps: Vec<u64> = video
            .windows(2)
            .map(|w| (w[1].rtp_time - w[0].rtp_time) / 3000)
            .collect();
        // (The source's last access unit comes out of the demuxer only when the source ends,
        // and then the re-encoder's run is over: a stream loses its last picture or two.)
        let tail = steps.len() - 1;
        assert!(
            steps[first..tail].iter().all(|&s| s == 1),
            "{first} {steps:?}"
        );
        let profiles: Vec<u8> = all
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Video(Some(VideoInfo {
                    profile: crate::codec::VideoProfile::H264(p),
                    ..
                })) => Some(p.profile_idc()),
                _ => None,
            })
            .collect();
        assert_eq!(profiles, [100, 66], "High from the source, then Baseline");
        let seqs: Vec<u64> = all
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some(f.seq),
                _ => None,
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }

    /// A picture's planes, cropped to its size: what a viewer would see.
    fn planes(p: &impl openh264::formats::YUVSource) -> Vec<u8> {
        let ((w, h), (ys, us, vs)) = (p.dimensions(), p.strides());
        let rows = |plane: &[u8], stride: usize, w: usize, h: usize| -> Vec<u8> {
            (0..h)
                .flat_map(|r| plane[r * stride..r * stride + w].to_vec())
                .collect()
        };
        let mut v = rows(p.y(), ys, w, h);
        v.extend(rows(p.u(), us, w / 2, h / 2));
        v.extend(rows(p.v(), vs, w / 2, h / 2));
        v
    }

    /// Decodes access units with OpenH264 as a viewer that starts at the first would: its
    /// pictures (display order, the held-back last one flushed) and the decoder's states.
    fn decode(aus: &[&[u8]], conceal: bool) -> (Vec<Vec<u8>>, Vec<DecodeState>) {
        let mut d = H264Decoder::new(conceal).unwrap();
        let (mut pictures, mut states) = (Vec::new(), Vec::new());
        for au in aus {
            let (state, picture) = d.decode(au);
            states.push(state);
            pictures.extend(picture.map(|p| planes(&p)));
        }
        pictures.extend(d.flush_remaining().iter().map(planes));
        (pictures, states)
    }

    /// `testdata/h264_intra_refresh.ts` (one IDR, then recovery points) and a 1 s GOP cache
    /// bound.
    fn intra_refresh_with_a_1s_bound() -> (Vec<u8>, GopBound) {
        let data = crate::testdata::bytes("h264_intra_refresh.ts");
        let bound = GopBound {
            ticks: 90_000,
            bytes: 1 << 20,
        };
        (data, bound)
    }

    /// Issue 24: a source with one IDR and then recovery points (x264 intra refresh) gives a
    /// joining viewer a start it can decode. Its frames go through the media state and the
    /// GOP cache (bound 1 s, so the IDR's GOP is long gone) as for a live stream; what the
    /// cache holds is decoded by OpenH264 like a viewer that joins then would: the first frame
    /// is a recovery point, pictures come out for every frame, the decoder reports nothing but
    /// the missing IDR (concealed), and from `recovery_frame_cnt` frames on the pictures are
    /// exactly those of a decode from the IDR.
    #[test]
    fn joining_an_intra_refresh_source_decodes_from_the_recovery_point() {
        use crate::stream::gop::{GopCache, Lead};
        let (data, bound) = intra_refresh_with_a_1s_bound();
        let mut m = MediaState::new().with_gop_bound(bound);
        let mut gop = GopCache::new(bound);
        let (mut events, mut video, mut joined) = (Vec::new(), Vec::new(), None);
        let now = Instant::now();
        for chunk in data.chunks(1316) {
            m.push(chunk, now, &mut events);
            for e in events.drain(..) {
                if let MediaEvent::Frame(f) = e {
                    gop.push(&f);
                    if f.kind == Kind::Video {
                        video.push(f);
                        // A viewer joins after the 90th picture: access units 60..=89.
                        if video.len() == 90 {
                            joined = Some(gop.snapshot());
                            assert_eq!(gop.lead(), Some(Lead::RecoveryPoint));
                            assert!(gop.duration_90k() <= bound.ticks);
                        }
                    }
                }
            }
        }
        let joined = joined.expect("90 pictures");
        assert_eq!(joined.len(), 30);
        assert_eq!(joined[0].seq, video[60].seq);
        let frames = match joined[0].recovery {
            Recovery::Point { frames } => frames as usize,
            other => panic!("the cache starts at {other:?}"),
        };
        assert_eq!(frames, 18);
        assert!(!joined[0].keyframe, "no IDR: a recovery point");

        let all: Vec<&[u8]> = video.iter().map(|f| &f.data[..]).collect();
        let (reference, states) = decode(&all, false);
        assert_eq!(reference.len(), video.len());
        assert!(states.iter().all(|s| *s == DecodeState::OK));

        let from_cache: Vec<&[u8]> = joined.iter().map(|f| &f.data[..]).collect();
        let (pictures, states) = decode(&from_cache, true);
        assert_eq!(pictures.len(), joined.len(), "a picture for every frame");
        // The IDR it never got: lost (then concealed) at the first frame; every later picture
        // refers to that one, and OpenH264 (which knows nothing of recovery points) keeps
        // saying "concealed". No other error.
        assert!(!states[0].fails(DecodeState::REF_LOST | DecodeState::CONCEALED));
        assert!(states[1..].iter().all(|s| !s.fails(DecodeState::CONCEALED)));
        assert_ne!(
            pictures[0], reference[60],
            "the first picture is an approximation"
        );
        for i in frames..joined.len() {
            assert!(
                pictures[i] == reference[60 + i],
                "picture {} differs",
                60 + i
            );
        }
    }

    /// Intra refresh with `--video-transcode auto`: once the IDR is older than the bound, the
    /// video goes to the re-encoder (it starts at the latest recovery point), the reason is
    /// reported, and so are the start points.
    #[test]
    fn keyframes_further_apart_than_the_bound_go_to_the_reencoder() {
        let (data, bound) = intra_refresh_with_a_1s_bound();
        let mut m = MediaState::new()
            .with_reencoding(true)
            .with_gop_bound(bound);
        let mut events = Vec::new();
        for chunk in data.chunks(1316) {
            m.push(chunk, Instant::now(), &mut events);
        }
        let mut seen = Vec::new();
        let mut first_job = None;
        let mut passed = 0;
        for e in &events {
            match e {
                MediaEvent::StartPoints(s) => seen.push(format!("{s:?}")),
                MediaEvent::Reencoding(r) => seen.push(format!("{r:?}")),
                MediaEvent::Reencode(ReencodeJob::Frame {
                    keyframe, recovery, ..
                }) if first_job.is_none() => first_job = Some((*keyframe, *recovery)),
                MediaEvent::Frame(f) if f.kind == Kind::Video => passed += 1,
                _ => {}
            }
        }
        assert_eq!(seen, ["RecoveryPoints", "Active(NoKeyframes)"]);
        // The IDR's GOP and one picture past the bound went out as they were.
        assert_eq!(passed, 31);
        assert_eq!(first_job, Some((false, Recovery::Point { frames: 18 })));
        // Without the re-encoder the same is reported, and the video passes.
        let mut m = MediaState::new().with_gop_bound(bound);
        let mut events = Vec::new();
        m.push(&data, Instant::now(), &mut events);
        m.end_of_input(Instant::now(), &mut events);
        let reports: Vec<StartPoints> = events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::StartPoints(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(
            reports,
            [StartPoints::RecoveryPoints, StartPoints::Keyframes],
            "reported, then forgotten with the source"
        );
        assert!(!events.iter().any(|e| matches!(e, MediaEvent::Reencode(_))));
    }

    #[test]
    fn without_reencoding_b_frames_pass_through() {
        let events = run("h264_bframes.ts", 4096);
        assert!(!events.iter().any(|e| matches!(e, MediaEvent::Reencode(_))));
        assert_eq!(frames(&events, Kind::Video).len(), 120);
    }

    #[test]
    fn garbage_is_a_counted_problem_not_a_stop() {
        let mut m = MediaState::new();
        let mut out = Vec::new();
        m.push(&[0x55; 100_000], Instant::now(), &mut out);
        m.end_of_input(Instant::now(), &mut out);
        let problems: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Problem(p) => Some(p),
                _ => None,
            })
            .collect();
        assert!(!problems.is_empty());
        assert!(problems
            .iter()
            .all(|p| p.is_ts_problem() && p.cause() == "resync"));
    }
}
