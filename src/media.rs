//! The per-stream media task: ring → demux → tracks and access units → timed frames for the
//! WebRTC engine. One per stream, however many viewers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::codec::h264::AccessUnit;
use crate::codec::opus::{self, OpusPacket};
use crate::codec::reorder::{ReorderDetector, B_FRAMES_ADVICE};
use crate::codec::transcode::{SourceCodec, Transcoder};
use crate::codec::{VideoAssembler, VideoCodec};
use crate::rtp::{H264Packetizer, H265Packetizer, OpusPacketizer, Packetizer, Payload};
use crate::stream::frame::{Frame, FrameSink, Kind};
use crate::stream::ring::Read;
use crate::stream::{Stream, VideoInfo};
use crate::time::{self, ClockRate, Timeline};
use crate::ts::{Codec, DemuxEvent, Demuxer, Pes, Pid, ProgramChoice, TrackSet};

/// One media-time → wall-clock mapping per stream, so audio and video sender reports agree.
///
/// It never puts a frame after its arrival: a sender report extrapolates the RTP time from the
/// last frame's wall-clock time, and one still to come gives str0m nothing to extrapolate from
/// (it then reports RTP time 0, and a browser's lip sync stalls the video to follow it). A TS
/// mux sends each track ahead of its presentation time by its own margin, video usually more
/// than audio: the mapping moves back to the frame with the largest margin, so every frame maps
/// at or before the moment it came in.
struct Clock {
    anchor: Option<(u64, Instant)>,
}

impl Clock {
    fn wallclock(&mut self, t90k: u64, now: Instant) -> Instant {
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

/// The sans-IO part of the task: demuxed events in, frames out.
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
    logged: HashSet<&'static str>,
    next_seq: u64,
    /// Transcode AAC/MPEG audio when there is no Opus (`--audio-transcode auto`).
    transcode: bool,
    transcoder: Option<(Pid, Transcoder)>,
    last_transcoded: Option<u64>,
    /// The latest SPS's details as published in the stream status (compared per PES without
    /// cloning the status).
    video_info: Option<VideoInfo>,
    video_rtp: Packetizer,
    opus_rtp: OpusPacketizer,
    payloads: Vec<Payload>,
    /// B-frames in the video (reported, not fixed).
    reorder: ReorderDetector,
}

impl Default for MediaState {
    fn default() -> Self {
        Self::new()
    }
}

impl MediaState {
    /// With the audio transcoder on (AAC/MPEG audio → Opus when there is no Opus track).
    /// Following `choice` of the TS's programs (an MPTS).
    pub fn with_program(mut self, choice: ProgramChoice) -> Self {
        let transcode = self.transcode;
        self.demux = Demuxer::with_program(choice);
        self.demux.set_transcodable_audio(transcode);
        self
    }

    pub fn with_transcoding(mut self, on: bool) -> Self {
        self.transcode = on;
        self.demux.set_transcodable_audio(on);
        self
    }

    pub fn new() -> Self {
        MediaState {
            demux: Demuxer::new(),
            video: VideoAssembler::new(VideoCodec::H264),
            events: Vec::new(),
            aus: Vec::new(),
            tracks: None,
            timeline: Timeline::new(),
            clock: Clock { anchor: None },
            video_offset: u64::from(rand::random::<u32>()),
            audio_offset: u64::from(rand::random::<u32>()),
            logged: HashSet::new(),
            next_seq: 0,
            transcode: false,
            transcoder: None,
            last_transcoded: None,
            video_info: None,
            video_rtp: Packetizer::H264(H264Packetizer::default()),
            opus_rtp: OpusPacketizer::new(),
            payloads: Vec::new(),
            reorder: ReorderDetector::new(),
        }
    }

    fn video_pid(&self) -> Option<Pid> {
        self.tracks.as_ref()?.video().map(|t| t.pid)
    }

    fn audio_pid(&self) -> Option<Pid> {
        self.tracks.as_ref()?.audio().map(|t| t.pid)
    }

    /// A source ended: flush what is complete, forget the input's PIDs and timing. The
    /// timeline re-anchors so viewers' RTP time stays continuous into the next source.
    pub fn end_of_input(&mut self, stream: &Arc<Stream>, sink: &dyn FrameSink, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        self.demux.flush(&mut events);
        self.handle_events(&mut events, stream, sink, now);
        self.events = events;
        if let Some((_, tc)) = self.transcoder.as_mut() {
            let mut frames = Vec::new();
            tc.flush(&mut frames);
            tc.reset();
        }
        self.demux.reset();
        self.video.reset();
        if self.reorder.has_b_frames() {
            stream.update_status(|s| s.b_frames = false);
        }
        self.reorder.reset();
        stream.gop.lock().clear();
        self.timeline.discontinuity();
    }

    pub fn push(&mut self, data: &[u8], stream: &Arc<Stream>, sink: &dyn FrameSink, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        self.demux.push(data, &mut events);
        self.handle_events(&mut events, stream, sink, now);
        self.events = events;
    }

    fn handle_events(
        &mut self,
        events: &mut Vec<DemuxEvent>,
        stream: &Arc<Stream>,
        sink: &dyn FrameSink,
        now: Instant,
    ) {
        for ev in events.drain(..) {
            match ev {
                DemuxEvent::Tracks(t) => self.on_tracks(t, stream, sink),
                DemuxEvent::Pes(pes) => self.on_pes(&pes, stream, sink, now),
                DemuxEvent::Pcr { .. } => {}
                // The other programs of an MPTS: this task plays the followed one (`Tracks`).
                DemuxEvent::Programs(list) => {
                    if list.len() > 1 && self.logged.insert("mpts") {
                        let numbers: Vec<u16> = list.iter().map(|t| t.program_number).collect();
                        info!(stream = %stream.name, programs = ?numbers,
                            "several programs in the TS: viewers pick one with ?program=N");
                    }
                    stream.update_status(|s| s.programs = Some(list.into()));
                }
                // Lost packets or a flagged discontinuity: the timeline re-anchors by itself
                // when the timestamps really jump (> 1 s); small gaps are kept as they are.
                DemuxEvent::Discontinuity { pid } => {
                    debug!(stream = %stream.name, %pid, "discontinuity");
                }
                DemuxEvent::Problem(p) => {
                    stream.stats.ts_problems.fetch_add(1, Ordering::Relaxed);
                    if self.logged.insert(p.cause()) {
                        warn!(stream = %stream.name, problem = ?p, "bad TS input (logged once per cause); resyncing and carrying on");
                    }
                }
            }
        }
    }

    /// Number the frame, keep it for late joiners, hand it to the viewers.
    fn emit(&mut self, stream: &Arc<Stream>, sink: &dyn FrameSink, mut frame: Frame) {
        self.payloads.clear();
        match frame.kind {
            Kind::Video => self.video_rtp.packetize(&frame.data, &mut self.payloads),
            Kind::Audio => self.opus_rtp.packetize(&frame.data, &mut self.payloads),
        }
        frame.payloads = Arc::from(&self.payloads[..]);
        frame.seq = self.next_seq;
        self.next_seq += 1;
        stream.gop.lock().push(&frame);
        sink.frame(stream, frame);
    }

    fn on_tracks(&mut self, tracks: TrackSet, stream: &Arc<Stream>, sink: &dyn FrameSink) {
        let transcode = self
            .transcode
            .then(|| crate::ts::transcodable_audio(&tracks))
            .flatten()
            .and_then(|pid| {
                let t = tracks.track(pid)?;
                Some((pid, SourceCodec::from_stream_type(t.stream_type)?))
            });
        match (&self.transcoder, transcode) {
            (Some((old, _)), Some((pid, _))) if *old == pid => {}
            (_, Some((pid, codec))) => {
                info!(stream = %stream.name, %pid, source = codec.name(), "transcoding audio to Opus for WebRTC");
                self.transcoder = Some((pid, Transcoder::new(codec)));
            }
            (_, None) => self.transcoder = None,
        }
        let transcoding = transcode.map(|(_, c)| c.name());
        for t in &tracks.tracks {
            match &t.codec {
                Codec::Unsupported { .. } if transcode.is_some_and(|(pid, _)| pid == t.pid) => {}
                Codec::Unsupported { reason } => warn!(
                    stream = %stream.name, pid = %t.pid, stream_type = t.stream_type.0,
                    codec = t.stream_type.name(), "track not playable over WebRTC: {reason}"
                ),
                codec => info!(stream = %stream.name, pid = %t.pid, ?codec, "track"),
            }
        }
        let codec = tracks.video().and_then(|t| match t.codec {
            Codec::H264 => Some(VideoCodec::H264),
            Codec::H265 => Some(VideoCodec::H265),
            _ => None,
        });
        if let Some(codec) = codec.filter(|&c| c != self.video.codec()) {
            self.video = VideoAssembler::new(codec);
            self.video_rtp = match codec {
                VideoCodec::H264 => Packetizer::H264(H264Packetizer::default()),
                VideoCodec::H265 => Packetizer::H265(H265Packetizer::default()),
            };
            self.video_info = None;
            stream.update_status(|s| s.video = None);
        }
        let changed = self.tracks.as_deref().is_some_and(|old| old != &tracks);
        if changed {
            info!(stream = %stream.name, "PMT changed");
        }
        let tracks = Arc::new(tracks);
        self.tracks = Some(tracks.clone());
        stream.update_status(|s| {
            s.tracks = Some(tracks);
            s.transcoding = transcoding;
        });
        if changed {
            sink.tracks_changed(stream);
        }
    }

    /// AAC/MPEG audio → Opus frames on the stream's timeline (the transcoder compensates its
    /// own delays, so frame times are source times).
    fn on_transcoded_audio(
        &mut self,
        pes: &Pes,
        pts: u64,
        stream: &Arc<Stream>,
        sink: &dyn FrameSink,
        now: Instant,
    ) {
        let t = self.timeline.map(pts, 1800);
        let Some((_, tc)) = self.transcoder.as_mut() else {
            return;
        };
        if pes.discontinuity {
            tc.discontinuity();
        }
        let mut frames = Vec::new();
        let started = Instant::now();
        let errors_before = tc.stats().decode_errors;
        let result = tc.push(&pes.data, Some(t), &mut frames);
        let st = &stream.stats;
        st.transcode_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        st.transcode_errors.fetch_add(
            tc.stats().decode_errors.saturating_sub(errors_before),
            Ordering::Relaxed,
        );
        if let Err(e) = result {
            if self.logged.insert("transcode_unsupported") {
                warn!(stream = %stream.name, error = %e, "audio cannot be transcoded; video plays without it");
            }
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
            st.audio_packets.fetch_add(1, Ordering::Relaxed);
            st.audio_bytes
                .fetch_add(f.data.len() as u64, Ordering::Relaxed);
            self.emit(
                stream,
                sink,
                Frame {
                    seq: 0,
                    kind: Kind::Audio,
                    rtp_time,
                    wallclock,
                    data: Arc::from(&f.data[..]),
                    keyframe: true,
                    payloads: Arc::from([]),
                },
            );
        }
    }

    fn on_pes(&mut self, pes: &Pes, stream: &Arc<Stream>, sink: &dyn FrameSink, now: Instant) {
        let Some(pts) = pes.pts else {
            if self.logged.insert("pes_without_pts") {
                warn!(stream = %stream.name, pid = %pes.pid, "PES without PTS dropped");
            }
            return;
        };
        if Some(pes.pid) == self.video_pid() {
            self.on_video(pes, stream, sink, now);
        } else if Some(pes.pid) == self.audio_pid() {
            self.on_audio(pes, pts, stream, sink, now);
        } else if self
            .transcoder
            .as_ref()
            .is_some_and(|(pid, _)| *pid == pes.pid)
        {
            self.on_transcoded_audio(pes, pts, stream, sink, now);
        }
    }

    fn on_video(&mut self, pes: &Pes, stream: &Arc<Stream>, sink: &dyn FrameSink, now: Instant) {
        let mut aus = std::mem::take(&mut self.aus);
        self.video.push(pes, &mut aus);
        if let Some(info) = self.video.info() {
            if self.video_info != Some(info) {
                self.video_info = Some(info);
                info!(stream = %stream.name, codec = info.profile.codec().name(),
                    profile = %info.profile, width = info.width, height = info.height, "video");
                stream.update_status(|s| s.video = Some(info));
            }
        }
        for au in aus.drain(..) {
            if self.reorder.push(au.pts) {
                warn!(stream = %stream.name, "{B_FRAMES_ADVICE}");
                stream.update_status(|s| s.b_frames = true);
            }
            // ~1 frame at 30 fps: the step used when the timeline has to re-anchor.
            let t = self.timeline.map(au.pts, 3000);
            stream.stats.video_frames.fetch_add(1, Ordering::Relaxed);
            stream
                .stats
                .video_bytes
                .fetch_add(au.data.len() as u64, Ordering::Relaxed);
            let wallclock = self.clock.wallclock(t, now);
            self.emit(
                stream,
                sink,
                Frame {
                    seq: 0,
                    kind: Kind::Video,
                    rtp_time: t + self.video_offset,
                    wallclock,
                    data: Arc::from(&au.data[..]),
                    keyframe: au.keyframe,
                    payloads: Arc::from([]),
                },
            );
        }
        self.aus = aus;
    }

    fn on_audio(
        &mut self,
        pes: &Pes,
        pts: u64,
        stream: &Arc<Stream>,
        sink: &dyn FrameSink,
        now: Instant,
    ) {
        let mut packets: Vec<OpusPacket<'_>> = Vec::new();
        if let Err(e) = opus::split_pes(&pes.data, &mut packets) {
            stream.stats.ts_problems.fetch_add(1, Ordering::Relaxed);
            if self.logged.insert("opus_control_header") {
                warn!(stream = %stream.name, error = %e, "bad Opus access unit (logged once); keeping the good ones");
            }
        }
        // 20 ms: the step used when the timeline has to re-anchor.
        let t = self.timeline.map(pts, 1800);
        let base = time::rescale(t, ClockRate::OPUS);
        for p in packets {
            stream.stats.audio_packets.fetch_add(1, Ordering::Relaxed);
            stream
                .stats
                .audio_bytes
                .fetch_add(p.data.len() as u64, Ordering::Relaxed);
            let offset = u64::from(p.offset_samples);
            // Opus frames are multiples of 2.5 ms (120 samples): exact in 90 kHz ticks.
            let wallclock = self.clock.wallclock(t + offset * 15 / 8, now);
            self.emit(
                stream,
                sink,
                Frame {
                    seq: 0,
                    kind: Kind::Audio,
                    rtp_time: base + offset + self.audio_offset,
                    wallclock,
                    data: Arc::from(p.data),
                    keyframe: true,
                    payloads: Arc::from([]),
                },
            );
        }
    }
}

/// Runs for the life of the stream: reads its ring and feeds the sink.
pub async fn run(stream: Arc<Stream>, sink: Arc<dyn FrameSink>, transcode: bool) {
    let mut state = MediaState::new()
        .with_transcoding(transcode)
        .with_program(stream.program_choice());
    let mut reader = stream.ring.reader_from_oldest();
    let mut buf = vec![0u8; 188 * 512];
    loop {
        // A program demuxed on its own (see `Registry::program`) stops when nobody watches it.
        let read = tokio::select! {
            read = reader.read(&mut buf) => read,
            () = stream.stopped() => break,
        };
        match read {
            Read::Data(n) => {
                stream.touch();
                stream.mark_data();
                state.push(&buf[..n], &stream, sink.as_ref(), Instant::now());
            }
            Read::Lapped(skipped) => {
                stream.stats.lapped.fetch_add(1, Ordering::Relaxed);
                warn!(stream = %stream.name, skipped, "demux fell behind the ring; resuming at the live edge");
            }
            Read::EndOfInput => {
                info!(stream = %stream.name, "source ended; waiting for a new one");
                state.end_of_input(&stream, sink.as_ref(), Instant::now());
                stream.mark_ended();
            }
            Read::Shutdown => break,
        }
    }
    debug!(stream = %stream.name, "media task ended");
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
        let mut clock = Clock { anchor: None };
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
