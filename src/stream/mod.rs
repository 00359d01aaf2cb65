//! Streams: the per-name ring buffer, the ready state WHEP waits on, and the registry.

pub mod gop;
pub mod ring;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::codec::h264::ProfileLevelId;
use crate::ts::TrackSet;
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
    /// Audio the stream transcodes to Opus: the source codec's name.
    pub transcoding: Option<&'static str>,
    /// Viewers can be answered: a playable track exists and, for video, its SPS is known.
    pub ready: bool,
    /// The video has B-frames (see `codec::reorder`): reported, since browsers play it badly.
    pub b_frames: bool,
}

impl Status {
    /// Whether viewers get an Opus track (native or transcoded).
    pub fn has_audio(&self) -> bool {
        self.transcoding.is_some() || self.tracks.as_ref().is_some_and(|t| t.audio().is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoInfo {
    pub profile_level_id: ProfileLevelId,
    pub width: u32,
    pub height: u32,
}

impl Status {
    fn initial() -> Self {
        Status {
            source: SourceState::Waiting,
            tracks: None,
            video: None,
            transcoding: None,
            ready: false,
            b_frames: false,
        }
    }
}

/// Counters shown by the API; written by the media task and the WebRTC engine.
#[derive(Debug, Default)]
pub struct Stats {
    pub ingest_bytes: AtomicU64,
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
}

pub struct Stream {
    pub name: String,
    pub id: u64,
    pub ring: Ring,
    pub stats: Stats,
    /// Video since the last IDR, for instant start (written by the media task).
    pub gop: Mutex<GopCache>,
    status: watch::Sender<Status>,
    created: Instant,
    /// Number of sources currently attached (a new one replaces the old).
    sources: AtomicUsize,
    /// Last time something happened (source wrote, viewer joined), for idle cleanup.
    touched: Mutex<Instant>,
    /// When the last source ended (None while one is attached), for the viewers' grace period.
    ended_at: Mutex<Option<Instant>>,
}

impl Stream {
    fn new(name: String, id: u64, ring_bytes: usize) -> Self {
        Stream {
            name,
            id,
            ring: Ring::new(ring_bytes),
            stats: Stats::default(),
            gop: Mutex::new(GopCache::default()),
            status: watch::Sender::new(Status::initial()),
            created: Instant::now(),
            sources: AtomicUsize::new(0),
            touched: Mutex::new(Instant::now()),
            ended_at: Mutex::new(None),
        }
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

    pub fn touch(&self) {
        *self.touched.lock() = Instant::now();
    }

    pub fn age(&self) -> Duration {
        self.created.elapsed()
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
        self.ended_at.lock().map(|t| t.elapsed())
    }

    /// The media task saw the input end with no other source attached.
    pub fn mark_ended(&self) {
        if !self.has_source() {
            self.ended_at.lock().get_or_insert_with(Instant::now);
            self.update_status(|s| s.source = SourceState::Ended);
        }
    }

    pub fn has_source(&self) -> bool {
        self.sources.load(Ordering::SeqCst) > 0
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
        let stream = Arc::new(Stream::new(name.to_string(), id, self.ring_bytes));
        map.insert(name.to_string(), stream.clone());
        drop(map);
        (self.on_new)(&stream);
        stream
    }

    pub fn list(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.streams.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Drop streams nobody uses: no source, no viewers, no one waiting, idle for `idle`.
    /// Returns the removed streams (their rings are shut down).
    pub fn sweep(&self, idle: Duration) -> Vec<Arc<Stream>> {
        let mut map = self.streams.lock();
        let dead: Vec<String> = map
            .values()
            .filter(|s| {
                !s.has_source()
                    && s.stats.viewers.load(Ordering::Relaxed) == 0
                    && s.stats.waiting_viewers.load(Ordering::Relaxed) == 0
                    && s.touched.lock().elapsed() >= idle
            })
            .map(|s| s.name.clone())
            .collect();
        let removed: Vec<_> = dead.iter().filter_map(|n| map.remove(n)).collect();
        drop(map);
        for s in &removed {
            s.ring.shutdown();
        }
        removed
    }
}
