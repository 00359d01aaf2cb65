//! Streams: the per-name ring buffer, the ready state WHEP waits on, and the registry.

pub mod cues;
pub mod frame;
pub mod gop;
pub mod link;
pub mod ring;
pub mod starts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::ts::{AudioChoice, ProgramChoice, TrackSet};
use gop::GopCache;
use ring::Ring;

/// Where a stream's input stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// No source has written yet.
    Waiting,
    /// A source is writing.
    Live,
    /// The last source ended; a new one may continue the stream.
    Ended,
}

/// What viewers need to know about a stream; published through a `watch` so WHEP POSTs can wait
/// for it condvar-style without holding a thread.
#[derive(Debug, Clone)]
pub struct Status {
    pub source: SourceState,
    /// The latest PMT's tracks.
    pub tracks: Option<Arc<TrackSet>>,
    /// From the latest SPS.
    pub video: Option<VideoInfo>,
    /// Every program of the TS (an MPTS has several), in PAT order, once their PMTs were seen.
    pub programs: Option<Arc<[TrackSet]>>,
    /// Audio the stream transcodes to Opus: the source codec's name.
    pub transcoding: Option<&'static str>,
    /// Why the transcoder cannot play that audio after all (a variant the PMT does not show:
    /// HE-AAC, more than two AAC channels without FFmpeg's decoders), until the source ends.
    pub transcode_error: Option<Arc<str>>,
    /// Viewers can be answered: a playable track exists and, for video, its SPS is known.
    pub ready: bool,
    /// The video has B-frames (see `codec::reorder`): reported, since browsers play it badly.
    pub b_frames: bool,
    /// Whether the video is re-encoded (`--video-transcode auto`), and why.
    pub reencode: Reencode,
    /// The source's start points against the GOP cache bound (`media::StartPoints`).
    pub start_points: StartPoints,
}

/// What a stream demuxed on its own beside its parent serves (see [`Registry::variant`]): a
/// program of the TS, with its default audio track or the one viewers picked, and its HEVC
/// video as it is or re-encoded to H.264 for viewers without H.265. Its video is demuxed and
/// packetized (and re-encoded, when the source needs it) once more for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub program: u16,
    pub audio: AudioChoice,
    /// HEVC video re-encoded to H.264 (`--features ffmpeg`): for viewers whose offer has no
    /// H.265, only while they watch.
    pub h264: bool,
}

/// The video re-encoder of a stream (see `codec::reencode`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reencode {
    /// The video goes out as the source sent it.
    #[default]
    Off,
    /// Viewers get the video re-encoded, for this reason.
    Active(ReencodeWhy),
    /// It has B-frames and cannot be re-encoded: why (it goes out as it is).
    Unsupported(Arc<str>),
}

/// Why a stream's video is re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReencodeWhy {
    /// B-frames, which browsers' WebRTC decoders cannot show.
    BFrames,
    /// No keyframe within the GOP cache bound (periodic intra refresh, very long GOPs):
    /// browsers start only at a keyframe, and the re-encoder makes one on their request.
    NoKeyframes,
    /// A codec browsers do not decode (MPEG-2 video), or that the viewers of this stream did
    /// not offer (HEVC, in the variant for viewers without H.265).
    Codec(crate::codec::VideoCodec),
}

impl ReencodeWhy {
    /// Why a codec is re-encoded, for the API and the log.
    pub fn codec_reason(codec: crate::codec::VideoCodec) -> String {
        if codec == crate::codec::VideoCodec::H265 {
            return "the video is H.265, which these viewers' offers do not have: it is \
                    decoded with FFmpeg's decoder and re-encoded for them, once, while they \
                    watch (viewers that offer H.265 get it as it is)"
                .into();
        }
        format!(
            "the video is {}, which browsers' WebRTC decoders do not decode: it is decoded \
             with FFmpeg's decoder (interlaced pictures deinterlaced) and re-encoded, once for \
             all viewers",
            codec.name()
        )
    }
}

impl Status {
    /// Whether viewers get an Opus track (native or transcoded).
    pub fn has_audio(&self) -> bool {
        self.transcoding.is_some() || self.tracks.as_ref().is_some_and(|t| t.audio().is_some())
    }
}

pub use crate::codec::{VideoInfo, VideoProfile};
pub use starts::StartPoints;

impl Status {
    /// Nothing known yet (also: a program nobody demuxes).
    pub fn unknown() -> Self {
        Self::initial()
    }

    fn initial() -> Self {
        Status {
            source: SourceState::Waiting,
            tracks: None,
            programs: None,
            video: None,
            transcoding: None,
            transcode_error: None,
            ready: false,
            b_frames: false,
            reencode: Reencode::Off,
            start_points: StartPoints::Keyframes,
        }
    }
}

/// Counters shown by the API; written by the media task and the WebRTC engine.
#[derive(Debug, Default)]
pub struct Stats {
    pub ingest_bytes: AtomicU64,
    /// Ingest bitrate over the last second (see [`Stream::sample_rate`]), and the byte count
    /// it was taken from.
    pub ingest_kbps: AtomicU64,
    ingest_bytes_sampled: AtomicU64,
    pub video_frames: AtomicU64,
    pub video_bytes: AtomicU64,
    pub audio_packets: AtomicU64,
    pub audio_bytes: AtomicU64,
    pub ts_problems: AtomicU64,
    pub lapped: AtomicU64,
    pub viewers: AtomicUsize,
    pub waiting_viewers: AtomicUsize,
    pub sessions_total: AtomicU64,
    /// Datagrams and bytes sent to this stream's viewers.
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Times a viewer fell behind and was moved on to the next keyframe.
    pub slow_viewer_skips: AtomicU64,
    /// Audio transcoder: frames it could not decode, and microseconds spent.
    pub transcode_errors: AtomicU64,
    pub transcode_us: AtomicU64,
    /// `GET /streams/{s}.ts` readers now (in a cluster: one per edge that pulls the stream).
    pub ts_readers: AtomicUsize,
    /// Bytes those readers were sent (a cluster origin's egress to its edges).
    pub ts_bytes_sent: AtomicU64,
    /// Video re-encoder: pictures decoded and encoded, its errors (decoder restarts, encoder
    /// failures, frames dropped when it fell behind), its thread's CPU time and the media time
    /// it encoded (both µs), and keyframes it made for viewers' requests.
    pub reencode_decoded: AtomicU64,
    pub reencode_encoded: AtomicU64,
    pub reencode_errors: AtomicU64,
    pub reencode_us: AtomicU64,
    pub reencode_media_us: AtomicU64,
    pub reencode_keyframes: AtomicU64,
    /// From a frame's arrival to its first RTP packet on the wire (see `metrics::Latency`).
    pub latency: crate::metrics::Latency,
    /// How the network treated the source (RTP sequence gaps).
    pub link: link::LinkStats,
    /// SCTE-35 cues of the followed program.
    pub cues: cues::Cues,
}

pub struct Stream {
    pub name: String,
    pub id: u64,
    /// Shared with the stream's programs (see [`Stream::program`]).
    pub ring: Arc<Ring>,
    pub stats: Stats,
    /// Video since the last IDR, for instant start (written by the media task).
    pub gop: Mutex<GopCache>,
    status: watch::Sender<Status>,
    /// Told of ready/source changes as they happen (see [`Stream::on_status_change`]).
    status_hook: std::sync::OnceLock<StatusHook>,
    /// Number of sources currently attached (a new one replaces the old).
    sources: AtomicUsize,
    /// Last time something happened (source wrote, viewer joined), for idle cleanup.
    touched: Mutex<Instant>,
    /// When the last source ended (None while one is attached), for the viewers' grace period.
    ended_at: Mutex<Option<Instant>>,
    /// The program the media task follows: the stream's choice, or a fixed one for a program
    /// of an MPTS that is not the stream's own.
    choice: ProgramChoice,
    /// The audio track viewers of this stream get: the program's default, or the one a
    /// variant of the stream was made for (see [`Registry::variant`]).
    audio: AudioChoice,
    /// Its HEVC video goes out re-encoded to H.264 (see [`Variant::h264`]).
    h264: bool,
    /// For such a program: the stream whose ring it reads (its source state is the parent's).
    parent: Option<Arc<Stream>>,
    /// The programs of this stream, and the audio tracks, that viewers asked for, each
    /// demuxed once (see [`Variant`]).
    programs: Mutex<HashMap<Variant, Arc<Stream>>>,
    /// Since when nobody watches or waits for this program (for removing it).
    unwatched_since: Mutex<Option<Instant>>,
    /// Wakes the media task of a removed program.
    stop: Notify,
    /// A viewer asked for a keyframe (PLI/FIR): a re-encoded stream can make one.
    keyframe_wanted: AtomicBool,
    /// The admin API deleted the stream: its HTTP ingest stops.
    evicted: AtomicBool,
    evict: Notify,
}

impl Stream {
    fn new(name: String, id: u64, ring: Arc<Ring>) -> Self {
        Stream {
            name,
            id,
            ring,
            stats: Stats::default(),
            gop: Mutex::new(GopCache::default()),
            status: watch::Sender::new(Status::initial()),
            status_hook: std::sync::OnceLock::new(),
            sources: AtomicUsize::new(0),
            touched: Mutex::new(Instant::now()),
            ended_at: Mutex::new(None),
            choice: ProgramChoice::Auto,
            audio: AudioChoice::Auto,
            h264: false,
            parent: None,
            programs: Mutex::new(HashMap::new()),
            unwatched_since: Mutex::new(None),
            stop: Notify::new(),
            keyframe_wanted: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    /// The admin API deleted the stream: its pushing source is cut off.
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.evict.notify_waiters();
    }

    /// Resolves once the stream is evicted.
    pub async fn evicted(&self) {
        loop {
            let notified = self.evict.notified();
            if self.evicted.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// A viewer's keyframe request (PLI/FIR), for the media task.
    pub fn request_keyframe(&self) {
        self.keyframe_wanted.store(true, Ordering::Relaxed);
    }

    pub fn take_keyframe_request(&self) -> bool {
        self.keyframe_wanted.swap(false, Ordering::Relaxed)
    }

    /// Which program of the TS the media task follows.
    pub fn program_choice(&self) -> ProgramChoice {
        self.choice
    }

    /// Which audio track of its program the media task sends.
    pub fn audio_choice(&self) -> AudioChoice {
        self.audio
    }

    /// Whether its HEVC video goes out re-encoded to H.264 (see [`Variant::h264`]).
    pub fn h264_video(&self) -> bool {
        self.h264
    }

    /// For a program of an MPTS read from another stream: that stream.
    pub fn parent(&self) -> Option<&Arc<Stream>> {
        self.parent.as_ref()
    }

    /// The programs viewers asked for by number (not the one the stream follows itself), and
    /// the streams of the audio tracks viewers chose (see [`Variant`]).
    pub fn programs(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.programs.lock().values().cloned().collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// Resolves when the stream is removed (a program nobody watches any more).
    pub async fn stopped(&self) {
        self.stop.notified().await
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(|s| {
            let was = (s.ready, s.source);
            f(s);
            let playable = s.has_audio() || s.tracks.as_ref().is_some_and(|t| t.video().is_some());
            let video_known = s
                .tracks
                .as_ref()
                .is_none_or(|t| t.video().is_none() || s.video.is_some());
            s.ready = playable && video_known && s.source != SourceState::Waiting;
            // Before anyone waiting on the status wakes: what they do next comes after.
            if let Some(hook) = self.status_hook.get() {
                if was != (s.ready, s.source) {
                    hook(&self.name, was, (s.ready, s.source));
                }
            }
        });
    }

    /// Call `hook(name, (ready, source) before, after)` on every change of the stream's ready
    /// state or source state, before the change is published (the event hook's
    /// `stream.ready`/`stream.ended` thus come before any `session.started` they allow). Set
    /// once.
    pub fn on_status_change(&self, hook: StatusHook) {
        let _ = self.status_hook.set(hook);
    }

    /// Once a second (housekeeping): the ingest bitrate since the last call.
    pub fn sample_rate(&self) {
        let bytes = self.stats.ingest_bytes.load(Ordering::Relaxed);
        let last = self
            .stats
            .ingest_bytes_sampled
            .swap(bytes, Ordering::Relaxed);
        let kbps = bytes.saturating_sub(last) * 8 / 1000;
        self.stats.ingest_kbps.store(kbps, Ordering::Relaxed);
    }

    pub fn touch(&self) {
        *self.touched.lock() = Instant::now();
    }

    /// A source attaches: the ring opens for it.
    pub fn attach_source(self: &Arc<Self>) -> SourceGuard {
        self.sources.fetch_add(1, Ordering::SeqCst);
        *self.ended_at.lock() = None;
        self.ring.open();
        self.update_status(|s| s.source = SourceState::Live);
        self.touch();
        SourceGuard {
            stream: self.clone(),
        }
    }

    /// How long ago the last source ended, if none has attached since.
    pub fn ended_for(&self) -> Option<Duration> {
        match &self.parent {
            Some(p) => p.ended_for(),
            None => self.ended_at.lock().map(|t| t.elapsed()),
        }
    }

    /// The media task saw the input end with no other source attached.
    pub fn mark_ended(&self) {
        if !self.has_source() {
            self.ended_at.lock().get_or_insert_with(Instant::now);
            self.update_status(|s| s.source = SourceState::Ended);
        }
    }

    /// The media task read data: a program read from another stream follows that stream's
    /// source state (a source attaches to the parent, not to it).
    pub fn mark_data(&self) {
        if self.parent.is_some() && self.status.borrow().source != SourceState::Live {
            *self.ended_at.lock() = None;
            self.update_status(|s| s.source = SourceState::Live);
        }
    }

    pub fn has_source(&self) -> bool {
        match &self.parent {
            Some(p) => p.has_source(),
            None => self.sources.load(Ordering::SeqCst) > 0,
        }
    }

    /// Whether viewers use it (connected or waiting).
    fn watched(&self) -> bool {
        self.stats.viewers.load(Ordering::Relaxed) > 0
            || self.stats.waiting_viewers.load(Ordering::Relaxed) > 0
    }
}

/// See [`Stream::on_status_change`]: the stream's name, (ready, source) before and after.
pub type StatusHook = Box<dyn Fn(&str, (bool, SourceState), (bool, SourceState)) + Send + Sync>;

/// Held by a source while it writes; dropping it closes the stream's input.
pub struct SourceGuard {
    stream: Arc<Stream>,
}

impl SourceGuard {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    pub fn write(&self, data: &[u8]) {
        self.stream
            .stats
            .ingest_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.stream.ring.write(data);
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if self.stream.sources.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.stream.ring.close_input();
            self.stream.touch();
        }
    }
}

/// Starts the per-stream work for a new stream.
type OnNewStream = Box<dyn Fn(&Arc<Stream>) + Send + Sync>;

/// `--max-streams` is reached: a new source or pull is refused (503 + Retry-After).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server has {count} streams, the most allowed (--max-streams); retry later (streams \
     nothing uses are removed after a minute) or raise --max-streams"
)]
pub struct StreamsFull {
    pub count: usize,
    pub max: usize,
}

/// WHEP POSTs waiting for a name that has no stream: how many, and the channel that hands
/// them the stream once a source creates it. This is all an unknown name costs: no ring, no
/// media task, no pull.
struct Waiters {
    /// Which entry a [`WaitEntry`] counts in (the name may get a new entry later).
    id: u64,
    count: usize,
    tx: watch::Sender<Option<Arc<Stream>>>,
}

type WaitingList = Arc<Mutex<HashMap<String, Waiters>>>;

/// What a viewer finds under a name: the stream, or a place on the name's waiting list.
pub enum Lookup {
    Stream(Arc<Stream>),
    Wait(WaitEntry),
}

/// A place on the waiting list of a name that has no stream (see [`Registry::lookup`]); the
/// count drops however the wait ends (the stream came, the deadline, the client gone).
pub struct WaitEntry {
    list: WaitingList,
    name: String,
    id: u64,
    rx: watch::Receiver<Option<Arc<Stream>>>,
}

impl WaitEntry {
    /// Resolves with the stream once something creates it (a source, a cluster pull).
    pub async fn stream(&mut self) -> Arc<Stream> {
        // The sender goes with the entry only after handing over the stream (or with the
        // registry): then there is nothing left to wait for.
        let handed = match self.rx.wait_for(Option::is_some).await {
            Ok(s) => s.clone(),
            Err(_) => None,
        };
        match handed {
            Some(s) => s,
            None => std::future::pending().await,
        }
    }
}

impl Drop for WaitEntry {
    fn drop(&mut self) {
        let mut list = self.list.lock();
        if let Some(w) = list.get_mut(&self.name).filter(|w| w.id == self.id) {
            w.count -= 1;
            if w.count == 0 {
                list.remove(&self.name);
            }
        }
    }
}

/// All streams by name. A stream exists from its first source on (a viewer of a name nothing
/// feeds only waits on the name's waiting list); `--max-streams` caps the sources and pulls
/// that may create one.
pub struct Registry {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Lock order: `streams`, then `waiting`.
    waiting: WaitingList,
    next_id: AtomicU64,
    ring_bytes: usize,
    max_streams: usize,
    /// A refusal at `max_streams` was logged since the last stream was created.
    full_logged: AtomicBool,
    on_new: OnNewStream,
}

impl Registry {
    /// `on_new` starts the per-stream work (the media task) for each new stream; at most
    /// `max_streams` are created through [`Registry::try_get_or_create`].
    pub fn new(
        ring_bytes: usize,
        max_streams: usize,
        on_new: impl Fn(&Arc<Stream>) + Send + Sync + 'static,
    ) -> Self {
        Registry {
            streams: Mutex::new(HashMap::new()),
            waiting: Default::default(),
            next_id: AtomicU64::new(1),
            ring_bytes,
            max_streams,
            full_logged: AtomicBool::new(false),
            on_new: Box::new(on_new),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams.lock().get(name).cloned()
    }

    /// Stream `name`, created if needed whatever the count: for the sources the operator
    /// configured (replay, UDP, stdin) and a pipeline's output. They count against
    /// `--max-streams` but are never refused.
    pub fn get_or_create(&self, name: &str) -> Arc<Stream> {
        match self.create_within(name, usize::MAX) {
            Ok(s) => s,
            Err(_) => unreachable!("no registry holds usize::MAX streams"),
        }
    }

    /// Stream `name`, created if there is room under `--max-streams` (a client's source, a
    /// cluster pull).
    pub fn try_get_or_create(&self, name: &str) -> Result<Arc<Stream>, StreamsFull> {
        self.create_within(name, self.max_streams)
    }

    /// Whether [`Registry::try_get_or_create`] would take `name` now (checked before a
    /// cluster claim, so a refused source claims nothing).
    pub fn has_room_for(&self, name: &str) -> Result<(), StreamsFull> {
        let map = self.streams.lock();
        if map.contains_key(name) || map.len() < self.max_streams {
            return Ok(());
        }
        Err(StreamsFull {
            count: map.len(),
            max: self.max_streams,
        })
    }

    fn create_within(&self, name: &str, max: usize) -> Result<Arc<Stream>, StreamsFull> {
        let mut map = self.streams.lock();
        if let Some(s) = map.get(name) {
            return Ok(s.clone());
        }
        if map.len() >= max {
            let full = StreamsFull {
                count: map.len(),
                max,
            };
            if !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(stream = %name, max,
                    "stream limit reached (--max-streams): new sources and pulls get 503");
            }
            return Err(full);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ring = Arc::new(Ring::new(self.ring_bytes));
        let stream = Arc::new(Stream::new(name.to_string(), id, ring));
        map.insert(name.to_string(), stream.clone());
        // Viewers waiting for the name get it now (under the streams lock: a viewer looking
        // the name up either finds the stream or is on the list handed over here).
        if let Some(w) = self.waiting.lock().remove(name) {
            w.tx.send_replace(Some(stream.clone()));
        }
        drop(map);
        self.full_logged.store(false, Ordering::Relaxed);
        (self.on_new)(&stream);
        Ok(stream)
    }

    /// For a viewer: stream `name`, or (when nothing created it) a place on its waiting list.
    /// Waiting creates nothing: no stream, ring or task until a source comes.
    pub fn lookup(&self, name: &str) -> Lookup {
        let map = self.streams.lock();
        if let Some(s) = map.get(name) {
            return Lookup::Stream(s.clone());
        }
        let mut list = self.waiting.lock();
        let w = list.entry(name.to_owned()).or_insert_with(|| Waiters {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            count: 0,
            tx: watch::Sender::new(None),
        });
        w.count += 1;
        Lookup::Wait(WaitEntry {
            list: self.waiting.clone(),
            name: name.to_owned(),
            id: w.id,
            rx: w.tx.subscribe(),
        })
    }

    /// The names viewers wait for that have no stream (for a cluster node to look up).
    pub fn waited_names(&self) -> Vec<String> {
        self.waiting.lock().keys().cloned().collect()
    }

    /// WHEP POSTs waiting for name `name` while it has no stream.
    pub fn waiting_for(&self, name: &str) -> usize {
        self.waiting.lock().get(name).map_or(0, |w| w.count)
    }

    /// WHEP POSTs waiting for names that have no stream.
    pub fn waiting_for_unknown(&self) -> usize {
        self.waiting.lock().values().map(|w| w.count).sum()
    }

    /// Streams now (not counting the programs of an MPTS viewers watch on their own).
    pub fn len(&self) -> usize {
        self.streams.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Program `number` of `parent`'s TS, demuxed on its own (once, however many viewers it
    /// has), for viewers who asked for a program the stream does not follow itself.
    pub fn program(&self, parent: &Arc<Stream>, number: u16) -> Arc<Stream> {
        let variant = Variant {
            program: number,
            audio: AudioChoice::Auto,
            h264: false,
        };
        self.variant(parent, variant)
    }

    /// `variant` of the TS `parent` (or the stream `parent` reads from) carries, demuxed on
    /// its own, once however many viewers it has: a program the stream does not follow, or
    /// another audio track than its default. It shares the ring and the source state of the
    /// stream that has the source, and goes when nobody watched it for a while.
    pub fn variant(&self, parent: &Arc<Stream>, variant: Variant) -> Arc<Stream> {
        let parent = parent.parent.as_ref().unwrap_or(parent);
        let mut programs = parent.programs.lock();
        if let Some(p) = programs.get(&variant) {
            return p.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut name = match variant.audio {
            AudioChoice::Auto => format!("{}#{}", parent.name, variant.program),
            AudioChoice::Index(n) => format!("{}#{}/audio{n}", parent.name, variant.program),
        };
        if variant.h264 {
            name.push_str("/h264");
        }
        let mut stream = Stream::new(name, id, parent.ring.clone());
        stream.choice = ProgramChoice::Number(variant.program);
        stream.audio = variant.audio;
        stream.h264 = variant.h264;
        stream.parent = Some(parent.clone());
        let source = parent.status().source;
        stream.status.send_modify(|s| s.source = source);
        let stream = Arc::new(stream);
        programs.insert(variant, stream.clone());
        drop(programs);
        (self.on_new)(&stream);
        stream
    }

    /// WHEP POSTs waiting for their stream (or program), all streams and names together.
    pub fn waiting(&self) -> usize {
        let on_streams: usize = self
            .list()
            .iter()
            .flat_map(|s| std::iter::once(s.clone()).chain(s.programs()))
            .map(|s| s.stats.waiting_viewers.load(Ordering::Relaxed))
            .sum();
        on_streams + self.waiting_for_unknown()
    }

    pub fn list(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.streams.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Forget stream `name` now (the admin API deleted it): its ring shuts down, and so does
    /// its media task and those of its programs.
    pub fn remove(&self, name: &str) -> Option<Arc<Stream>> {
        let s = self.streams.lock().remove(name)?;
        s.ring.shutdown();
        for p in s.programs.lock().drain() {
            p.1.stop.notify_one();
        }
        Some(s)
    }

    /// Drop streams nobody uses: no source, no viewers, no one waiting, idle for `idle`; and
    /// programs of an MPTS nobody has watched for `idle`. Returns the removed streams (their
    /// rings are shut down; removed programs' media tasks are stopped).
    pub fn sweep(&self, idle: Duration) -> Vec<Arc<Stream>> {
        let mut map = self.streams.lock();
        let dead: Vec<String> = map
            .values()
            .filter(|s| !s.has_source() && !s.watched() && s.touched.lock().elapsed() >= idle)
            .map(|s| s.name.clone())
            .collect();
        let mut removed: Vec<_> = dead.iter().filter_map(|n| map.remove(n)).collect();
        let parents: Vec<Arc<Stream>> = map.values().cloned().collect();
        drop(map);
        for s in &removed {
            s.ring.shutdown();
        }
        let now = Instant::now();
        for parent in parents.iter().chain(&removed.clone()) {
            parent.programs.lock().retain(|_, p| {
                let mut since = p.unwatched_since.lock();
                let gone = if p.watched() {
                    *since = None;
                    false
                } else {
                    now.duration_since(*since.get_or_insert(now)) >= idle || parent.ring.is_shut()
                };
                if gone {
                    p.stop.notify_one();
                    removed.push(p.clone());
                }
                !gone
            });
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A registry that counts the media tasks it would start.
    fn registry(max_streams: usize) -> (Registry, Arc<AtomicUsize>) {
        let started = Arc::new(AtomicUsize::new(0));
        let n = started.clone();
        let r = Registry::new(4096, max_streams, move |_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        (r, started)
    }

    #[tokio::test]
    async fn a_viewer_of_an_unknown_name_creates_nothing_and_gets_the_stream_when_a_source_comes() {
        let (r, started) = registry(10);
        let Lookup::Wait(mut a) = r.lookup("cam") else {
            panic!("no stream yet")
        };
        let Lookup::Wait(mut b) = r.lookup("cam") else {
            panic!("no stream yet")
        };
        assert!(r.is_empty());
        assert_eq!(started.load(Ordering::Relaxed), 0, "no media task");
        assert_eq!((r.waiting_for("cam"), r.waiting()), (2, 2));
        assert_eq!(r.waited_names(), ["cam"]);

        let s = r.try_get_or_create("cam").unwrap();
        assert_eq!(started.load(Ordering::Relaxed), 1);
        assert!(Arc::ptr_eq(&a.stream().await, &s));
        assert!(Arc::ptr_eq(&b.stream().await, &s));
        assert!(r.waited_names().is_empty(), "the list is handed over");
        assert!(matches!(r.lookup("cam"), Lookup::Stream(_)));
    }

    #[test]
    fn a_viewer_that_stops_waiting_leaves_nothing_behind() {
        let (r, _) = registry(10);
        let entries: Vec<_> = (0..100).map(|i| r.lookup(&format!("n{i}"))).collect();
        assert_eq!(r.waiting_for_unknown(), 100);
        drop(entries);
        assert_eq!(r.waiting(), 0);
        assert!(r.waited_names().is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn a_name_waited_for_again_after_its_stream_went_counts_right() {
        let (r, _) = registry(10);
        let old = r.lookup("cam");
        r.get_or_create("cam");
        r.remove("cam");
        let new = r.lookup("cam");
        assert_eq!(r.waiting_for("cam"), 1);
        // The old entry (handed its stream, then dropped) does not count in the new one.
        drop(old);
        assert_eq!(r.waiting_for("cam"), 1);
        drop(new);
        assert_eq!(r.waiting_for("cam"), 0);
    }

    #[test]
    fn max_streams_refuses_new_names_but_not_existing_ones_nor_operator_sources() {
        let (r, started) = registry(2);
        r.try_get_or_create("a").unwrap();
        r.try_get_or_create("b").unwrap();
        let Err(full) = r.try_get_or_create("c") else {
            panic!("a third stream past --max-streams 2")
        };
        assert_eq!(full, StreamsFull { count: 2, max: 2 });
        assert!(full.to_string().contains("--max-streams"), "{full}");
        assert!(r.has_room_for("c").is_err());
        assert!(r.has_room_for("a").is_ok());
        assert!(
            r.try_get_or_create("a").is_ok(),
            "an existing stream is no new one"
        );
        // A replay or UDP source configured by the operator is counted, never refused.
        r.get_or_create("replay");
        assert_eq!((r.len(), started.load(Ordering::Relaxed)), (3, 3));
        r.remove("replay");
        r.remove("b");
        assert!(r.try_get_or_create("c").is_ok());
    }
}
