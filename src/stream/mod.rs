//! Streams: the per-name ring buffer, the ready state WHEP waits on, and the registry.

pub mod frame;
pub mod gop;
pub mod ring;
pub mod starts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::ts::{ProgramChoice, TrackSet};
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
    /// Viewers can be answered: a playable track exists and, for video, its SPS is known.
    pub ready: bool,
    /// The video has B-frames (see `codec::reorder`): reported, since browsers play it badly.
    pub b_frames: bool,
    /// Whether the video is re-encoded (`--video-transcode auto`), and why.
    pub reencode: Reencode,
    /// The source's start points against the GOP cache bound (`media::StartPoints`).
    pub start_points: StartPoints,
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
    /// Number of sources currently attached (a new one replaces the old).
    sources: AtomicUsize,
    /// Last time something happened (source wrote, viewer joined), for idle cleanup.
    touched: Mutex<Instant>,
    /// When the last source ended (None while one is attached), for the viewers' grace period.
    ended_at: Mutex<Option<Instant>>,
    /// The program the media task follows: the stream's choice, or a fixed one for a program
    /// of an MPTS that is not the stream's own.
    choice: ProgramChoice,
    /// For such a program: the stream whose ring it reads (its source state is the parent's).
    parent: Option<Arc<Stream>>,
    /// The programs of this stream that viewers asked for by number, each demuxed once.
    programs: Mutex<HashMap<u16, Arc<Stream>>>,
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
            sources: AtomicUsize::new(0),
            touched: Mutex::new(Instant::now()),
            ended_at: Mutex::new(None),
            choice: ProgramChoice::Auto,
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

    /// For a program of an MPTS read from another stream: that stream.
    pub fn parent(&self) -> Option<&Arc<Stream>> {
        self.parent.as_ref()
    }

    /// The programs viewers asked for by number (not the one the stream follows itself).
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
            f(s);
            let playable = s.has_audio() || s.tracks.as_ref().is_some_and(|t| t.video().is_some());
            let video_known = s
                .tracks
                .as_ref()
                .is_none_or(|t| t.video().is_none() || s.video.is_some());
            s.ready = playable && video_known && s.source != SourceState::Waiting;
        });
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

/// All streams by name. A stream exists from its first source or first waiting viewer on.
pub struct Registry {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    next_id: AtomicU64,
    ring_bytes: usize,
    on_new: OnNewStream,
}

impl Registry {
    /// `on_new` starts the per-stream work (the media task) for each new stream.
    pub fn new(ring_bytes: usize, on_new: impl Fn(&Arc<Stream>) + Send + Sync + 'static) -> Self {
        Registry {
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            ring_bytes,
            on_new: Box::new(on_new),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams.lock().get(name).cloned()
    }

    pub fn get_or_create(&self, name: &str) -> Arc<Stream> {
        let mut map = self.streams.lock();
        if let Some(s) = map.get(name) {
            return s.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ring = Arc::new(Ring::new(self.ring_bytes));
        let stream = Arc::new(Stream::new(name.to_string(), id, ring));
        map.insert(name.to_string(), stream.clone());
        drop(map);
        (self.on_new)(&stream);
        stream
    }

    /// Program `number` of `parent`'s TS, demuxed on its own (once, however many viewers it
    /// has), for viewers who asked for a program the stream does not follow itself.
    pub fn program(&self, parent: &Arc<Stream>, number: u16) -> Arc<Stream> {
        let mut programs = parent.programs.lock();
        if let Some(p) = programs.get(&number) {
            return p.clone();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut stream = Stream::new(format!("{}#{number}", parent.name), id, parent.ring.clone());
        stream.choice = ProgramChoice::Number(number);
        stream.parent = Some(parent.clone());
        let source = parent.status().source;
        stream.status.send_modify(|s| s.source = source);
        let stream = Arc::new(stream);
        programs.insert(number, stream.clone());
        drop(programs);
        (self.on_new)(&stream);
        stream
    }

    /// WHEP POSTs waiting for their stream (or program), all streams together.
    pub fn waiting(&self) -> usize {
        self.list()
            .iter()
            .flat_map(|s| std::iter::once(s.clone()).chain(s.programs()))
            .map(|s| s.stats.waiting_viewers.load(Ordering::Relaxed))
            .sum()
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
