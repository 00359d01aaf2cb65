//! `tsbridge loadtest`: many WHEP viewers in one process, for fan-out benchmarks.
//!
//! Each viewer is a str0m `Rtc` in RTP mode with its own UDP socket (the server routes by source
//! address), offering recvonly H.264 (packetization-mode=1, the profiles Chromium offers) and
//! Opus. The load tool shares the WebRTC stack with the server (str0m) on purpose: it is sans-IO
//! and cheap, so a thousand receivers fit beside the server on a small box. Correctness against
//! an *independent* stack is the test suite's job (it plays the server with the `webrtc` crate);
//! this tool measures scale: who connected, how fast, how many RTP packets arrived, what was lost.
//!
//! Per packet the client does only what it must: the SRTP decrypt inside str0m (RTP mode, so no
//! depacketizing or jitter buffer), a sequence-number range per SSRC for loss, and, until the
//! first keyframe has arrived, a look at the first bytes of the H.264 payload.
//!
//! Shape: a coordinator starts viewers at `--ramp` per second; each start is a small task that
//! binds the socket, builds the offer, POSTs it and parses the answer, then hands the `Rtc` to one
//! of `--tasks` event loops. An event loop owns its viewers and polls their sockets itself: each
//! socket gets a waker that puts the viewer's index on a ready queue, so a wake-up costs
//! O(viewers with data), not O(viewers). After the ramp, once every viewer has connected or
//! failed, a steady-state window of `--seconds` is measured (packets, the client's CPU, and with
//! `--server-pid` the server's CPU time and RSS from /proc); then every session is DELETEd.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use clap::Args;
use parking_lot::Mutex;
use serde::Serialize;
use str0m::change::SdpAnswer;
use str0m::config::DtlsCert;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::http::client::split_url;

/// `tsbridge loadtest`: the command line.
#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// WHEP URL of the stream, e.g. http://127.0.0.1:8889/whep/demo
    #[arg(long)]
    pub url: String,

    /// Number of WHEP viewers to run.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,

    /// Length of the steady-state window, in seconds: measured once every viewer has connected
    /// or failed (after the ramp), after one more second to settle.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub seconds: Duration,

    /// Viewers started per second.
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,

    /// Print the report as JSON (default: a short text summary).
    #[arg(long)]
    pub json: bool,

    /// Seconds a viewer has from its POST to a connected session (the POST itself waits for
    /// a stream that is not ready yet, then ICE and DTLS).
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// Event-loop tasks the viewers are spread over (1 keeps the client on one core).
    #[arg(long, default_value_t = 1)]
    pub tasks: usize,

    /// PID of the server: sample its CPU time and RSS from /proc over the steady-state window
    /// (Linux), and report µs of server CPU per delivered RTP packet.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Local IP for the viewers' sockets (default: the address that routes to the URL's host).
    #[arg(long)]
    pub bind: Option<IpAddr>,

    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// Make the first N viewers lossy: they throw away `--drop` percent of the RTP they
    /// receive, like a viewer on a bad link (RTCP, STUN and DTLS pass). Their loss is reported
    /// apart (`lossy_loss_pct`); `loss_pct` counts the others.
    #[arg(long, default_value_t = 0)]
    pub lossy: usize,

    /// Percent of RTP the lossy viewers throw away.
    #[arg(long, default_value_t = 30.0)]
    pub drop: f64,

    /// Put every RTP packet through SRTP and str0m. By default a viewer does so until its first
    /// keyframe has arrived whole (that checks the media), then counts video RTP by its
    /// clear-text header (SSRC, sequence number: loss is still exact), which costs a fraction
    /// of the CPU so the tool can run beside the server. Audio still goes through str0m, so the
    /// viewer keeps receiving and reporting a stream like a real one; it sends no video NACKs.
    /// Lossy viewers always decrypt everything.
    #[arg(long)]
    pub decrypt_all: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err("must be between 0 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------------
// The report.

/// What `tsbridge loadtest` prints (as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub viewers: usize,
    /// Viewers whose session reached ICE+DTLS connected.
    pub connected: usize,
    /// Viewers that never connected.
    pub failed: usize,
    /// Connected viewers that lost their session before the end.
    pub dropped: usize,
    /// Why viewers failed or misbehaved, with counts.
    pub errors: BTreeMap<String, usize>,
    /// RTP packets received over the whole run (after str0m's de-duplication; RTX repairs count).
    pub packets: Packets,
    /// RTP header + payload bytes received over the whole run.
    pub bytes: u64,
    /// Sequence-number gaps / expected packets, over the whole run, in percent (viewers not
    /// made lossy).
    pub loss_pct: f64,
    /// The same for the `--lossy` viewers.
    pub lossy_loss_pct: Option<f64>,
    /// The `--lossy` viewers' video alone: what retransmissions repair (Opus is not resent).
    pub lossy_video_loss_pct: Option<f64>,
    /// Video packets the `--lossy` viewers threw away (retransmissions not counted).
    pub lossy_video_thrown: Option<u64>,
    /// From the start of the POST to the HTTP answer.
    pub time_to_answer_ms: Option<Percentiles>,
    /// From the start of the POST to ICE connected (a nominated pair).
    pub time_to_ice_ms: Option<Percentiles>,
    /// From the start of the POST to ICE+DTLS connected.
    pub time_to_connected_ms: Option<Percentiles>,
    /// From the start of the POST to the first RTP packet.
    pub time_to_first_rtp_ms: Option<Percentiles>,
    /// From the start of the POST to the last packet of the first H.264 keyframe (IDR / SPS).
    pub time_to_first_keyframe_ms: Option<Percentiles>,
    /// Viewers that received a keyframe.
    pub with_keyframe: usize,
    /// RTP packets per connected viewer over the whole run.
    pub per_viewer_packets: Option<MinP50>,
    /// CPU time (user + system) of this process over the whole run.
    pub client_cpu_s: f64,
    /// Wall time of the whole run.
    pub duration_s: f64,
    /// The steady-state window (after the ramp and connection set-up).
    pub steady: Steady,
    /// Sessions ended with DELETE at the end (2xx), of those that got a Location.
    pub deleted: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Packets {
    pub video: u64,
    pub audio: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MinP50 {
    pub min: u64,
    pub p50: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Steady {
    /// Seconds from the start of the run to the window.
    pub start_s: f64,
    pub seconds: f64,
    /// Viewers alive and connected at the end of the window.
    pub viewers: usize,
    /// RTP packets delivered to all viewers in the window.
    pub packets: u64,
    pub bytes: u64,
    pub packets_per_s: f64,
    pub loss_pct: f64,
    /// RTP packets per connected viewer in the window.
    pub per_viewer_packets: Option<MinP50>,
    /// CPU time of this process in the window, and as percent of one core.
    pub client_cpu_s: f64,
    pub client_cpu_pct: f64,
    /// CPU busy on the whole host in the window (every process, from /proc/stat; 100 = one
    /// core), and the host's CPU count: what neither the server nor this tool used is
    /// interference from elsewhere.
    pub host_cpu_pct: Option<f64>,
    pub host_cpus: usize,
    /// UDP datagrams the host's kernel dropped in the window because a socket's receive
    /// buffer was full (IPv4, every socket: /proc/net/snmp RcvbufErrors). Loss with these is
    /// a receiver (often this tool) not keeping up, not the server's doing.
    pub udp_rcvbuf_errors: Option<u64>,
    /// Same for full send buffers (SndbufErrors).
    pub udp_sndbuf_errors: Option<u64>,
    /// The server's figures over the window (with `--server-pid`).
    pub server: Option<ServerSample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerSample {
    pub pid: u32,
    /// Server CPU time (user + system) in the window, and as percent of one core.
    pub cpu_s: f64,
    pub cpu_pct: f64,
    pub rss_kb_start: u64,
    pub rss_kb_end: u64,
    /// Server CPU µs per RTP packet delivered to one viewer: cpu_s / steady.packets.
    pub us_per_packet: Option<f64>,
}

impl LoadReport {
    /// A short human-readable summary.
    pub fn text(&self) -> String {
        let p = |p: &Option<Percentiles>| match p {
            Some(p) => format!("p50 {:.0} / p95 {:.0} / max {:.0} ms", p.p50, p.p95, p.max),
            None => "-".to_string(),
        };
        let mut s = format!(
            "{}: {} viewers, {} connected, {} failed, {} dropped\n",
            self.url, self.viewers, self.connected, self.failed, self.dropped
        );
        for (why, n) in &self.errors {
            s += &format!("  {n} × {why}\n");
        }
        s += &format!(
            "packets: {} video + {} audio, {:.1} MB, loss {:.3} %\n",
            self.packets.video,
            self.packets.audio,
            self.bytes as f64 / 1e6,
            self.loss_pct
        );
        if let (Some(l), Some(v), Some(t)) = (
            self.lossy_loss_pct,
            self.lossy_video_loss_pct,
            self.lossy_video_thrown,
        ) {
            s += &format!(
                "lossy viewers: threw away {t} video packets; loss {l:.1} % (video {v:.1} %, after retransmissions)\n"
            );
        }
        s += &format!("answer:        {}\n", p(&self.time_to_answer_ms));
        s += &format!("ICE:           {}\n", p(&self.time_to_ice_ms));
        s += &format!("connected:     {}\n", p(&self.time_to_connected_ms));
        s += &format!("first RTP:     {}\n", p(&self.time_to_first_rtp_ms));
        s += &format!(
            "first keyframe: {} ({} viewers)\n",
            p(&self.time_to_first_keyframe_ms),
            self.with_keyframe
        );
        let st = &self.steady;
        s += &format!(
            "steady {:.1} s: {} viewers, {:.0} packets/s, loss {:.3} %, client CPU {:.0} %, host CPU {} % of {}00 %\n",
            st.seconds,
            st.viewers,
            st.packets_per_s,
            st.loss_pct,
            st.client_cpu_pct,
            st.host_cpu_pct.map_or("-".into(), |p| format!("{p:.0}")),
            st.host_cpus
        );
        if let Some(n) = st.udp_rcvbuf_errors.filter(|n| *n > 0) {
            s += &format!("host UDP receive-buffer drops in the window: {n}\n");
        }
        if let Some(srv) = &st.server {
            s += &format!(
                "server: CPU {:.0} %, {} µs per delivered packet, RSS {} → {} KB\n",
                srv.cpu_pct,
                srv.us_per_packet
                    .map_or("-".to_string(), |u| format!("{u:.2}")),
                srv.rss_kb_start,
                srv.rss_kb_end
            );
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Per-viewer state and statistics.

/// H.264 payload types we offer: (pt, rtx pt, profile-level-id), as Chromium does (all with
/// packetization-mode=1). Anything else that arrives is the Opus track.
const H264_OFFER: [(u8, u8, u32); 3] = [
    (102, 103, 0x42001f),
    (106, 107, 0x42e01f),
    (116, 117, 0x4d001f),
];

fn is_video_pt(pt: u8) -> bool {
    H264_OFFER.iter().any(|(p, _, _)| *p == pt)
}

/// Loss accounting for one track: the extended sequence-number range per SSRC.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    ssrc: Option<Ssrc>,
    first: u64,
    max: u64,
    received: u64,
    /// Expected packets of earlier SSRCs (a new SSRC starts a new range).
    expected_before: u64,
}

impl Track {
    #[inline]
    fn on_packet(&mut self, ssrc: Ssrc, seq: u64) {
        if self.ssrc != Some(ssrc) {
            self.expected_before = self.expected();
            self.ssrc = Some(ssrc);
            self.first = seq;
            self.max = seq;
        } else if seq > self.max {
            self.max = seq;
        } else if seq < self.first {
            self.first = seq;
        }
        self.received += 1;
    }

    fn expected(&self) -> u64 {
        self.expected_before + self.ssrc.map_or(0, |_| self.max - self.first + 1)
    }

    /// A packet known by its 16-bit sequence number: extended next to the highest seen so far
    /// (the same numbering str0m's extended sequence numbers use).
    #[inline]
    fn on_header(&mut self, ssrc: Ssrc, seq: u16) {
        let ext = match self.ssrc {
            Some(s) if s == ssrc => extend_seq(self.max, seq),
            _ => u64::from(seq),
        };
        self.on_packet(ssrc, ext);
    }
}

/// The 64-bit sequence number ending in `seq` nearest to `near`.
fn extend_seq(near: u64, seq: u16) -> u64 {
    let base = near & !0xffff;
    [base.wrapping_sub(0x1_0000), base, base + 0x1_0000]
        .into_iter()
        .map(|b| b | u64::from(seq))
        .filter(|&c| c <= near + 0x8000)
        .min_by_key(|&c| c.abs_diff(near))
        .unwrap_or(u64::from(seq))
}

/// Counters at the start of the steady-state window.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    packets: u64,
    expected: u64,
    bytes: u64,
    set: bool,
}

/// Everything measured about one viewer; survives the viewer's session.
#[derive(Debug, Clone)]
struct Stats {
    t0: Instant,
    location: Option<String>,
    answered: Option<Duration>,
    ice: Option<Duration>,
    connected: Option<Duration>,
    first_rtp: Option<Duration>,
    first_key: Option<Duration>,
    /// RTP timestamp of the keyframe access unit being received (until it is complete).
    key_ts: Option<u32>,
    video: Track,
    audio: Track,
    bytes: u64,
    mark: Mark,
    /// Why it failed (never connected) or misbehaved.
    error: Option<String>,
    /// Connected, then lost the session before the end.
    dropped: bool,
    ice_disconnected: bool,
    /// Share of received RTP to throw away (a lossy viewer), 0..1.
    drop: f64,
    /// Video packets (original payload type, not RTX) a lossy viewer threw away.
    thrown_video: u64,
}

impl Stats {
    fn new(t0: Instant) -> Self {
        Stats {
            t0,
            location: None,
            answered: None,
            ice: None,
            connected: None,
            first_rtp: None,
            first_key: None,
            key_ts: None,
            video: Track::default(),
            audio: Track::default(),
            bytes: 0,
            mark: Mark::default(),
            error: None,
            dropped: false,
            ice_disconnected: false,
            drop: 0.0,
            thrown_video: 0,
        }
    }

    fn packets(&self) -> u64 {
        self.video.received + self.audio.received
    }

    fn expected(&self) -> u64 {
        self.video.expected() + self.audio.expected()
    }

    /// Count a video SRTP packet by its clear-text header (RFC 3711 does not encrypt it), if
    /// this viewer counts video that way by now (see `--decrypt-all`). False: decrypt it.
    #[inline]
    fn counted_by_header(&mut self, d: &[u8], decrypt_all: bool) -> bool {
        let by_header = !decrypt_all
            && self.drop == 0.0
            && self.first_key.is_some()
            && is_rtp(d)
            && is_video_pt(d[1] & 0x7f);
        if by_header {
            let ssrc = Ssrc::from(u32::from_be_bytes([d[8], d[9], d[10], d[11]]));
            self.bytes += d.len() as u64;
            self.video.on_header(ssrc, u16::from_be_bytes([d[2], d[3]]));
        }
        by_header
    }

    #[inline]
    fn on_rtp(&mut self, p: &RtpPacket, now: Instant) {
        if self.first_rtp.is_none() {
            self.first_rtp = Some(now - self.t0);
        }
        let h = &p.header;
        self.bytes += (h.header_len + p.payload.len()) as u64;
        if !is_video_pt(*h.payload_type) {
            self.audio.on_packet(h.ssrc, *p.seq_no);
            return;
        }
        self.video.on_packet(h.ssrc, *p.seq_no);
        if self.first_key.is_some() {
            return;
        }
        match self.key_ts {
            // The keyframe's access unit ends at its marker bit, or when a later one starts
            // (its last packet was lost).
            Some(ts) if ts != h.timestamp || h.marker => {
                self.first_key = Some(now - self.t0);
            }
            Some(_) => {}
            None if h264_keyframe_start(&p.payload) => {
                self.key_ts = Some(h.timestamp);
                if h.marker {
                    self.first_key = Some(now - self.t0);
                }
            }
            None => {}
        }
    }
}

/// Whether an H.264 RTP payload (RFC 6184) starts a keyframe: an SPS or IDR as a single NAL
/// unit or inside a STAP-A, or the first fragment of an IDR in an FU-A.
pub fn h264_keyframe_start(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if len == 0 || rest.len() < 2 + len {
                    return false;
                }
                if matches!(rest[2] & 0x1f, IDR | SPS) {
                    return true;
                }
                rest = &rest[2 + len..];
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Event loops.

/// A viewer whose offer was answered, on its way to an event loop.
struct NewViewer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    stats: Stats,
    deadline: Instant,
}

enum Ctrl {
    Add(Box<NewViewer>),
    /// Start the steady-state window: remember every viewer's counters.
    Mark(oneshot::Sender<()>),
    /// Stop: hand back every viewer's statistics (dropping the sessions).
    Finish(oneshot::Sender<Vec<Stats>>),
}

/// Shared by an event loop and its viewers' wakers.
struct ReadyQueue {
    ready: Mutex<Vec<u32>>,
    notify: Notify,
}

/// A viewer's socket waker: queue the viewer, wake its loop.
struct ViewerWaker {
    idx: u32,
    queue: Arc<ReadyQueue>,
}

impl Wake for ViewerWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.ready.lock().push(self.idx);
        self.queue.notify.notify_one();
    }
}

struct Live {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
}

struct Viewer {
    live: Option<Live>,
    waker: Waker,
    next_timeout: Instant,
    deadline: Instant,
    stats: Stats,
}

/// Counters every loop publishes for the coordinator's progress and settle checks.
#[derive(Default)]
struct Progress {
    connected: AtomicUsize,
    failed: AtomicUsize,
    packets: AtomicU64,
}

/// Datagrams taken from one socket before the loop moves on to the next ready viewer.
const RECV_BATCH: usize = 32;
/// Longest sleep between timeout scans (connect deadlines, liveness).
const MAX_SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest: str0m's timers need no finer grain, and this keeps the loop from spinning.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(1);

struct EventLoop {
    rx: mpsc::UnboundedReceiver<Ctrl>,
    queue: Arc<ReadyQueue>,
    progress: Arc<Progress>,
    viewers: Vec<Viewer>,
    buf: Vec<u8>,
    /// Packets not yet added to `progress.packets`.
    unpublished: u64,
    decrypt_all: bool,
}

impl EventLoop {
    async fn run(mut self) {
        let sleep = tokio::time::sleep(MIN_SCAN_INTERVAL);
        tokio::pin!(sleep);
        let mut deadline = Instant::now() + MIN_SCAN_INTERVAL;
        let mut ready: Vec<u32> = Vec::new();
        loop {
            tokio::select! {
                biased;
                ctrl = self.rx.recv() => match ctrl {
                    Some(Ctrl::Add(n)) => {
                        let idx = self.add(*n);
                        if let Some(t) = self.process(idx) {
                            deadline = deadline.min(t);
                        }
                    }
                    Some(Ctrl::Mark(done)) => {
                        for v in &mut self.viewers {
                            v.stats.mark = Mark {
                                packets: v.stats.packets(),
                                expected: v.stats.expected(),
                                bytes: v.stats.bytes,
                                set: true,
                            };
                        }
                        let _ = done.send(());
                    }
                    Some(Ctrl::Finish(done)) => {
                        let stats = self.viewers.drain(..).map(|v| v.stats).collect();
                        let _ = done.send(stats);
                        return;
                    }
                    None => return,
                },
                _ = self.queue.notify.notified() => {}
                _ = &mut sleep => {}
            }

            std::mem::swap(&mut ready, &mut *self.queue.ready.lock());
            for idx in ready.drain(..) {
                // A viewer may want an earlier timeout than the last scan found.
                if let Some(t) = self.process(idx) {
                    deadline = deadline.min(t);
                }
            }

            let now = Instant::now();
            if now >= deadline {
                deadline = self.scan(now);
            }
            let deadline_clamped = deadline.max(now + MIN_SCAN_INTERVAL);
            if sleep.deadline() != deadline_clamped.into() {
                sleep.as_mut().reset(deadline_clamped.into());
            }
            if self.unpublished > 0 {
                self.progress
                    .packets
                    .fetch_add(self.unpublished, Ordering::Relaxed);
                self.unpublished = 0;
            }
        }
    }

    /// Take a viewer on and send its first output (STUN checks).
    fn add(&mut self, n: NewViewer) -> u32 {
        let idx = u32::try_from(self.viewers.len()).unwrap_or(u32::MAX);
        let waker = Waker::from(Arc::new(ViewerWaker {
            idx,
            queue: self.queue.clone(),
        }));
        let mut v = Viewer {
            live: Some(Live {
                rtc: n.rtc,
                socket: n.socket,
                local: n.local,
            }),
            waker,
            next_timeout: Instant::now(),
            deadline: n.deadline,
            stats: n.stats,
        };
        if let Some(live) = &mut v.live {
            drain(live, &mut v.stats, &mut v.next_timeout, &self.progress);
        }
        self.viewers.push(v);
        idx
    }

    /// Read what the viewer's socket holds (registering its waker when drained) and feed it in.
    /// Returns when the viewer's `Rtc` wants its next timeout, if it is still alive.
    fn process(&mut self, idx: u32) -> Option<Instant> {
        let v = self.viewers.get_mut(idx as usize)?;
        let live = v.live.as_mut()?;
        let mut cx = Context::from_waker(&v.waker);
        let mut taken = 0;
        let mut failed = false;
        while taken < RECV_BATCH {
            let mut rb = tokio::io::ReadBuf::new(&mut self.buf);
            match live.socket.poll_recv_from(&mut cx, &mut rb) {
                Poll::Ready(Ok(source)) => {
                    taken += 1;
                    let now = Instant::now();
                    if v.stats.drop > 0.0
                        && is_rtp(rb.filled())
                        && rand::random::<f64>() < v.stats.drop
                    {
                        let d = rb.filled();
                        v.stats.thrown_video += u64::from(is_video_pt(d[1] & 0x7f));
                        continue; // a lossy viewer's bad link
                    }
                    if v.stats.counted_by_header(rb.filled(), self.decrypt_all) {
                        self.unpublished += 1;
                        continue;
                    }
                    let Ok(contents) = rb.filled().try_into() else {
                        continue;
                    };
                    let input = Input::Receive(
                        now,
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: live.local,
                            contents,
                        },
                    );
                    let before = v.stats.packets();
                    if let Err(e) = live.rtc.handle_input(input) {
                        debug!(error = %e, "viewer input");
                        failed = true;
                        break;
                    }
                    drain(live, &mut v.stats, &mut v.next_timeout, &self.progress);
                    self.unpublished += v.stats.packets() - before;
                }
                Poll::Ready(Err(e)) => {
                    // UDP receive errors are per datagram (e.g. a queued ICMP error): go on.
                    debug!(error = %e, "viewer UDP receive");
                    taken += 1;
                }
                Poll::Pending => break,
            }
        }
        if failed {
            end(v, "WebRTC error", &self.progress);
            return None;
        }
        if taken >= RECV_BATCH {
            // Not drained, so the waker is not registered: come back on the next turn.
            self.queue.ready.lock().push(idx);
            self.queue.notify.notify_one();
        }
        Some(v.next_timeout)
    }

    /// Drive timeouts, enforce connect deadlines, notice dead sessions. Returns the next scan.
    fn scan(&mut self, now: Instant) -> Instant {
        let mut next = now + MAX_SCAN_INTERVAL;
        for v in &mut self.viewers {
            let Some(live) = &mut v.live else { continue };
            if v.next_timeout <= now {
                if live.rtc.handle_input(Input::Timeout(now)).is_err() {
                    end(v, "WebRTC error", &self.progress);
                    continue;
                }
                drain(live, &mut v.stats, &mut v.next_timeout, &self.progress);
            }
            if !live.rtc.is_alive() {
                end(v, "session closed", &self.progress);
                continue;
            }
            if v.stats.connected.is_none() && now >= v.deadline {
                end(v, "ICE/DTLS connect timeout", &self.progress);
                continue;
            }
            next = next.min(v.next_timeout);
        }
        next
    }
}

/// An RTP (not RTCP) packet: first byte 128..=191 (RFC 7983), payload type not 64..=95
/// (where RTCP's 192..=223 packet types fall with the marker bit, RFC 5761).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && (128..=191).contains(&d[0]) && !(64..=95).contains(&(d[1] & 0x7f))
}

/// Poll the viewer's `Rtc` until it wants time to pass: send, count, note the next timeout.
fn drain(live: &mut Live, stats: &mut Stats, next_timeout: &mut Instant, progress: &Progress) {
    loop {
        match live.rtc.poll_output() {
            Ok(Output::Transmit(t)) => {
                // UDP: a full buffer drops the datagram, as the network would.
                let _ = live.socket.try_send_to(&t.contents, t.destination);
            }
            Ok(Output::Timeout(t)) => {
                *next_timeout = t;
                return;
            }
            Ok(Output::Event(e)) => match e {
                Event::RtpPacket(p) => stats.on_rtp(&p, p.timestamp),
                Event::Connected if stats.connected.is_none() => {
                    stats.connected = Some(stats.t0.elapsed());
                    progress.connected.fetch_add(1, Ordering::Relaxed);
                }
                Event::IceConnectionStateChange(s) => {
                    stats.ice_disconnected = s == IceConnectionState::Disconnected;
                    if matches!(
                        s,
                        IceConnectionState::Connected | IceConnectionState::Completed
                    ) && stats.ice.is_none()
                    {
                        stats.ice = Some(stats.t0.elapsed());
                    }
                }
                _ => {}
            },
            Err(e) => {
                debug!(error = %e, "viewer output");
                live.rtc.disconnect();
                *next_timeout = Instant::now();
                return;
            }
        }
    }
}

/// End a viewer's session (its statistics stay).
fn end(v: &mut Viewer, why: &str, progress: &Progress) {
    v.live = None;
    if v.stats.connected.is_some() {
        v.stats.dropped = true;
        v.stats
            .error
            .get_or_insert_with(|| format!("{why} after connecting"));
    } else {
        v.stats.error.get_or_insert_with(|| why.to_string());
        progress.failed.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Setting a viewer up: socket, offer, POST, answer.

/// What every viewer start needs.
struct Setup {
    server: SocketAddr,
    host: String,
    path: String,
    local_ip: IpAddr,
    cert: DtlsCert,
    connect_timeout: Duration,
}

/// A viewer that failed before reaching an event loop.
struct SetupError {
    why: String,
    detail: String,
    location: Option<String>,
}

impl SetupError {
    fn new(why: impl Into<String>, detail: impl ToString) -> Self {
        SetupError {
            why: why.into(),
            detail: detail.to_string(),
            location: None,
        }
    }
}

async fn start_viewer(setup: Arc<Setup>, drop: f64) -> Result<NewViewer, SetupError> {
    let t0 = Instant::now();
    let deadline = t0 + setup.connect_timeout;
    let socket = viewer_socket(setup.local_ip)
        .map_err(|e| SetupError::new(format!("UDP socket: {:?}", e.kind()), e))?;
    let local = socket
        .local_addr()
        .map_err(|e| SetupError::new("UDP socket", e))?;

    let mut cfg = RtcConfig::new()
        .clear_codecs()
        .set_rtp_mode(true)
        .set_dtls_cert(setup.cert.clone());
    let codecs = cfg.codec_config();
    for (pt, rtx, plid) in H264_OFFER {
        codecs.add_h264(pt.into(), Some(rtx.into()), true, plid);
    }
    cfg = cfg.enable_opus(true, false);
    let mut rtc = cfg.build(Instant::now());
    let candidate =
        Candidate::host(local, "udp").map_err(|e| SetupError::new("local candidate", e))?;
    rtc.add_local_candidate(candidate);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| SetupError::new("offer", "no changes to offer"))?;

    let res = tokio::time::timeout(
        setup.connect_timeout,
        http(
            setup.server,
            &setup.host,
            "POST",
            &setup.path,
            Some(("application/sdp", offer.to_sdp_string().as_bytes())),
        ),
    )
    .await
    .map_err(|_| SetupError::new("HTTP timeout", "no answer to the POST"))?
    .map_err(|e| SetupError::new(format!("HTTP: {:?}", e.kind()), e))?;
    let answered = t0.elapsed();
    if res.status != 201 && res.status != 200 {
        let mut err = SetupError::new(format!("HTTP {}", res.status), res.body.trim());
        err.location = res.location;
        return Err(err);
    }
    let location = res.location;
    let fail = |why: &str, detail: String| SetupError {
        why: why.into(),
        detail,
        location: location.clone(),
    };
    let answer =
        SdpAnswer::from_sdp_string(&res.body).map_err(|e| fail("bad SDP answer", e.to_string()))?;
    // The answer is network input: keep a panic inside the stack to this viewer.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rtc.sdp_api().accept_answer(pending, answer)
    }))
    .map_err(|_| fail("answer not accepted", "panic in the WebRTC stack".into()))?
    .map_err(|e| fail("answer not accepted", e.to_string()))?;

    let mut stats = Stats::new(t0);
    stats.drop = drop;
    stats.location = location;
    stats.answered = Some(answered);
    Ok(NewViewer {
        rtc,
        socket,
        local,
        stats,
        deadline,
    })
}

/// Receive buffer per viewer socket: ~2 s of a 2 Mbit/s stream, so that a client briefly
/// starved of CPU (it shares the machine with the server) does not turn that into loss.
const VIEWER_RCVBUF: usize = 512 << 10;

/// A viewer's own UDP socket on an ephemeral port.
fn viewer_socket(ip: IpAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Capped by net.core.rmem_max; best effort.
    let _ = socket.set_recv_buffer_size(VIEWER_RCVBUF);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// A response: status, `Location`, body.
struct HttpResponse {
    status: u16,
    location: Option<String>,
    body: String,
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), body read to EOF.
async fn http(
    server: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<HttpResponse> {
    const MAX_RESPONSE: u64 = 1 << 20;
    let mut tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    match body {
        Some((ctype, b)) => {
            req += &format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            let mut bytes = req.into_bytes();
            bytes.extend_from_slice(b);
            tcp.write_all(&bytes).await?;
        }
        None => {
            req += "Content-Length: 0\r\n\r\n";
            tcp.write_all(req.as_bytes()).await?;
        }
    }
    let mut raw = Vec::new();
    tcp.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response"))
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut location = None;
    let mut len = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("location") {
            location = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("content-length") {
            len = v.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = &rest[..len.unwrap_or(rest.len()).min(rest.len())];
    Some(HttpResponse {
        status,
        location,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// DELETE a session by its `Location` (a path on the same server, or an absolute http:// URL).
async fn delete_session(server: SocketAddr, host: &str, location: &str) -> bool {
    let (server, host, path) = if location.starts_with("http://") {
        let Ok((h, p)) = split_url(location) else {
            return false;
        };
        match resolve(&h).await {
            Ok(addr) => (addr, h, p),
            Err(_) => return false,
        }
    } else {
        (server, host.to_string(), location.to_string())
    };
    match http(server, &host, "DELETE", &path, None).await {
        Ok(r) => (200..300).contains(&r.status),
        Err(_) => false,
    }
}

async fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// The local address the kernel would use to reach `to` (no packet is sent).
fn route_to(to: IpAddr) -> Option<IpAddr> {
    if to.is_loopback() {
        return Some(to);
    }
    let any: IpAddr = match to {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    s.connect(SocketAddr::new(to, 9)).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

// ---------------------------------------------------------------------------------------------
// /proc sampling (Linux).

/// Clock ticks per second of /proc/*/stat: Linux's USER_HZ, 100 on every mainstream
/// architecture; `CLK_TCK` in the environment (e.g. from `getconf CLK_TCK`) overrides it.
fn clk_tck() -> f64 {
    std::env::var("CLK_TCK")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in seconds.
fn proc_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clk_tck())
}

/// Resident set size of a process, in KB.
fn proc_rss_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Busy and total time of all CPUs, in seconds, from the first line of /proc/stat.
fn host_cpu_s() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((
        busy as f64 / clk_tck(),
        (busy + idle + iowait) as f64 / clk_tck(),
    ))
}

/// The host's UDP (IPv4) RcvbufErrors and SndbufErrors counters, from /proc/net/snmp.
fn udp_buf_errors() -> Option<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some((get("RcvbufErrors")?, get("SndbufErrors")?))
}

/// Open-file limit (soft), from /proc/self/limits.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The run.

fn percentiles(mut v: Vec<f64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Some(Percentiles {
        p50: round(rank(0.50)),
        p95: round(rank(0.95)),
        max: round(v[v.len() - 1]),
    })
}

fn min_p50(mut v: Vec<u64>) -> Option<MinP50> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(MinP50 {
        min: v[0],
        p50: v[v.len().div_ceil(2) - 1],
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64 * 1000.0).round() / 1000.0
    }
}

/// A future that resolves at `at`, or never when `at` is `None`.
fn sleep_until_opt(at: Option<Instant>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at.into())),
        None => Box::pin(std::future::pending()),
    }
}

/// Run the load test and build the report.
pub async fn run(args: &LoadtestArgs) -> Result<LoadReport, String> {
    if args.viewers == 0 {
        return Err("--viewers must be at least 1".into());
    }
    if !(args.ramp > 0.0 && args.ramp.is_finite()) {
        return Err("--ramp must be a positive number of viewers per second".into());
    }
    if !(1..=64).contains(&args.tasks) {
        return Err("--tasks must be between 1 and 64".into());
    }
    let (host, path) = split_url(&args.url)?;
    let server = resolve(&host).await?;
    let local_ip = match args.bind {
        Some(ip) => ip,
        None => route_to(server.ip())
            .ok_or_else(|| format!("no local address routes to {}", server.ip()))?,
    };
    // One UDP socket per viewer, plus a TCP connection while its POST is in flight.
    if let Some(limit) = open_files_limit() {
        let need = 2 * args.viewers as u64 + 64;
        if limit < need {
            warn!(
                limit,
                need, "the open-files limit may be too low for this many viewers (ulimit -n)"
            );
        }
    }
    let server_pid = args.server_pid.map(|p| p.to_string());
    if let Some(pid) = &server_pid {
        proc_cpu_s(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?;
    }

    let provider = str0m::crypto::from_feature_flags();
    // One certificate for every viewer: generating one costs milliseconds.
    let cert = provider
        .dtls_provider
        .generate_certificate()
        .ok_or("cannot generate a DTLS certificate")?;
    provider.install_process_default();
    let setup = Arc::new(Setup {
        server,
        host: host.clone(),
        path,
        local_ip,
        cert,
        connect_timeout: args.connect_timeout,
    });

    let progress = Arc::new(Progress::default());
    let mut loops = Vec::new();
    let mut loop_tasks = Vec::new();
    for _ in 0..args.tasks {
        let (tx, rx) = mpsc::unbounded_channel();
        let ev = EventLoop {
            rx,
            queue: Arc::new(ReadyQueue {
                ready: Mutex::new(Vec::new()),
                notify: Notify::new(),
            }),
            progress: progress.clone(),
            viewers: Vec::new(),
            buf: vec![0u8; 2048],
            unpublished: 0,
            decrypt_all: args.decrypt_all,
        };
        loops.push(tx);
        loop_tasks.push(tokio::spawn(ev.run()));
    }

    let cpu0 = proc_cpu_s("self").unwrap_or(0.0);
    let start = Instant::now();
    let ramp_step = Duration::from_secs_f64(1.0 / args.ramp);
    let mut starting: JoinSet<Result<NewViewer, SetupError>> = JoinSet::new();
    let mut setup_errors: Vec<SetupError> = Vec::new();
    let mut started = 0usize;
    let mut assigned = 0usize;
    let mut next_start = Some(start);
    let mut settled_since: Option<Instant> = None;
    type Sample = (
        Instant,
        f64,
        Option<(f64, u64)>,
        Option<(f64, f64)>,
        Option<(u64, u64)>,
    );
    let mut window: Option<Sample> = None;
    let mut ramp_end: Option<Instant> = None;
    let mut report_at = start + Duration::from_secs(1);
    let mut last_packets = 0u64;
    let mut logged_reasons: HashMap<String, ()> = HashMap::new();
    let tick = Duration::from_millis(50);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);

    loop {
        tokio::select! {
            _ = sleep_until_opt(next_start) => {
                let now = Instant::now();
                while started < args.viewers && start + ramp_step * started as u32 <= now {
                    let drop = if started < args.lossy { args.drop / 100.0 } else { 0.0 };
                    starting.spawn(start_viewer(setup.clone(), drop));
                    started += 1;
                }
                next_start = if started < args.viewers {
                    Some(start + ramp_step * started as u32)
                } else {
                    ramp_end.get_or_insert(now);
                    None
                };
            }
            Some(done) = starting.join_next() => match done {
                Ok(Ok(v)) => {
                    let _ = loops[assigned % loops.len()].send(Ctrl::Add(Box::new(v)));
                    assigned += 1;
                }
                Ok(Err(e)) => {
                    if logged_reasons.insert(e.why.clone(), ()).is_none() {
                        warn!(reason = %e.why, detail = %e.detail, "viewer failed");
                    }
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    setup_errors.push(e);
                }
                Err(e) => {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    setup_errors.push(SetupError::new("viewer task failed", e));
                }
            },
            _ = tokio::time::sleep(tick) => {}
            _ = &mut interrupted => {
                // Ctrl-C: stop now, but still report and DELETE the sessions.
                if !args.quiet {
                    eprintln!("loadtest: interrupted");
                }
                break;
            }
        }

        let now = Instant::now();
        let connected = progress.connected.load(Ordering::Relaxed);
        let failed = progress.failed.load(Ordering::Relaxed);
        if now >= report_at {
            report_at += Duration::from_secs(1);
            if !args.quiet {
                let packets = progress.packets.load(Ordering::Relaxed);
                eprintln!(
                    "loadtest {:6.1} s: started {started}/{}, connected {connected}, failed {failed}, {} packets/s",
                    (now - start).as_secs_f64(),
                    args.viewers,
                    packets - last_packets
                );
                last_packets = packets;
            }
        }
        match window {
            None => {
                let Some(ramp_end) = ramp_end else { continue };
                let settled =
                    connected + failed >= args.viewers || now >= ramp_end + args.connect_timeout;
                if !settled {
                    continue;
                }
                if connected == 0 {
                    // Nobody to measure (the errors say why).
                    break;
                }
                let since = *settled_since.get_or_insert(now);
                if now < since + Duration::from_secs(1) {
                    continue;
                }
                let mut acks = Vec::new();
                for l in &loops {
                    let (tx, rx) = oneshot::channel();
                    let _ = l.send(Ctrl::Mark(tx));
                    acks.push(rx);
                }
                for a in acks {
                    let _ = a.await;
                }
                let client = proc_cpu_s("self").unwrap_or(0.0);
                let server = server_pid
                    .as_deref()
                    .and_then(|pid| Some((proc_cpu_s(pid)?, proc_rss_kb(pid).unwrap_or(0))));
                if !args.quiet {
                    eprintln!(
                        "loadtest {:6.1} s: steady state: {connected} connected, measuring {:.1} s",
                        (now - start).as_secs_f64(),
                        args.seconds.as_secs_f64()
                    );
                }
                window = Some((
                    Instant::now(),
                    client,
                    server,
                    host_cpu_s(),
                    udp_buf_errors(),
                ));
            }
            Some((w0, ..)) => {
                if now >= w0 + args.seconds {
                    break;
                }
            }
        }
    }

    // End of the window: sample first, then stop the loops, then clean up on the server.
    let w_end = Instant::now();
    let client_end = proc_cpu_s("self").unwrap_or(0.0);
    let host_end = host_cpu_s();
    let udp_end = udp_buf_errors();
    let server_end = server_pid
        .as_deref()
        .and_then(|pid| Some((proc_cpu_s(pid)?, proc_rss_kb(pid).unwrap_or(0))));
    starting.abort_all();
    while let Some(done) = starting.join_next().await {
        match done {
            Ok(Ok(v)) => {
                // Answered just now: it was never measured, but its session must be deleted.
                let mut e = SetupError::new("not connected at the end", "");
                e.location = v.stats.location;
                progress.failed.fetch_add(1, Ordering::Relaxed);
                setup_errors.push(e);
            }
            Ok(Err(e)) => setup_errors.push(e),
            Err(_) => setup_errors.push(SetupError::new("no HTTP answer at the end", "")),
        }
    }
    let mut stats: Vec<Stats> = Vec::new();
    for l in &loops {
        let (tx, rx) = oneshot::channel();
        let _ = l.send(Ctrl::Finish(tx));
        if let Ok(s) = rx.await {
            stats.extend(s);
        }
    }
    for t in loop_tasks {
        let _ = t.await;
    }
    let duration = start.elapsed();
    let client_cpu = proc_cpu_s("self").unwrap_or(0.0) - cpu0;

    // DELETE every session that has a Location, a few at a time, bounded in time.
    let locations: Vec<String> = stats
        .iter()
        .filter_map(|s| s.location.clone())
        .chain(setup_errors.iter().filter_map(|e| e.location.clone()))
        .collect();
    let deleted = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut deletes = JoinSet::new();
    for loc in locations {
        let (sem, deleted, host) = (sem.clone(), deleted.clone(), host.clone());
        deletes.spawn(async move {
            let Ok(_permit) = sem.acquire().await else {
                return;
            };
            if delete_session(server, &host, &loc).await {
                deleted.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while deletes.join_next().await.is_some() {}
    })
    .await;
    deletes.abort_all();

    // The report.
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for e in &setup_errors {
        *errors.entry(e.why.clone()).or_default() += 1;
    }
    let mut packets = Packets::default();
    let (mut bytes, mut expected) = (0u64, 0u64);
    let (mut lossy_received, mut lossy_expected) = (0u64, 0u64);
    let (mut lossy_video_received, mut lossy_video_expected) = (0u64, 0u64);
    let mut lossy_video_thrown = 0;
    let mut steady = Steady::default();
    let (mut steady_received, mut steady_expected) = (0u64, 0u64);
    let (mut answer, mut ice, mut conn) = (vec![], vec![], vec![]);
    let (mut rtp, mut key) = (vec![], vec![]);
    let (mut per_viewer, mut per_viewer_steady) = (vec![], vec![]);
    let (mut connected, mut dropped) = (0, 0);
    for s in &stats {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
        packets.video += s.video.received;
        packets.audio += s.audio.received;
        bytes += s.bytes;
        if s.drop > 0.0 {
            lossy_received += s.packets();
            lossy_expected += s.expected();
            lossy_video_received += s.video.received;
            lossy_video_expected += s.video.expected();
            lossy_video_thrown += s.thrown_video;
        } else {
            expected += s.expected();
        }
        answer.extend(s.answered.map(ms));
        ice.extend(s.ice.map(ms));
        rtp.extend(s.first_rtp.map(ms));
        key.extend(s.first_key.map(ms));
        if s.mark.set {
            steady.packets += s.packets() - s.mark.packets;
            steady.bytes += s.bytes - s.mark.bytes;
            if s.drop == 0.0 {
                steady_received += s.packets() - s.mark.packets;
                steady_expected += s.expected() - s.mark.expected;
            }
        }
        let Some(c) = s.connected else { continue };
        connected += 1;
        conn.push(ms(c));
        per_viewer.push(s.packets());
        if s.dropped {
            dropped += 1;
        } else {
            if s.ice_disconnected {
                *errors
                    .entry("ICE disconnected at the end".into())
                    .or_default() += 1;
            }
            if s.packets() == 0 {
                *errors.entry("no RTP after connecting".into()).or_default() += 1;
            }
            steady.viewers += 1;
        }
        if s.mark.set {
            per_viewer_steady.push(s.packets() - s.mark.packets);
        }
    }
    let received = packets.video + packets.audio - lossy_received;
    steady.host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some((w0, client0, server0, host0, udp0)) = window {
        if let (Some((rcv0, snd0)), Some((rcv1, snd1))) = (udp0, udp_end) {
            steady.udp_rcvbuf_errors = Some(rcv1.saturating_sub(rcv0));
            steady.udp_sndbuf_errors = Some(snd1.saturating_sub(snd0));
        }
        let secs = (w_end - w0).as_secs_f64();
        steady.start_s = (w0 - start).as_secs_f64();
        steady.seconds = secs;
        steady.packets_per_s = if secs > 0.0 {
            steady.packets as f64 / secs
        } else {
            0.0
        };
        steady.loss_pct = pct(
            steady_expected.saturating_sub(steady_received),
            steady_expected,
        );
        steady.per_viewer_packets = min_p50(per_viewer_steady);
        steady.client_cpu_s = client_end - client0;
        steady.client_cpu_pct = if secs > 0.0 {
            steady.client_cpu_s / secs * 100.0
        } else {
            0.0
        };
        if let (Some((busy0, _)), Some((busy1, _))) = (host0, host_end) {
            steady.host_cpu_pct = (secs > 0.0).then(|| (busy1 - busy0) / secs * 100.0);
        }
        if let (Some(pid), Some((cpu0, rss0)), Some((cpu1, rss1))) =
            (args.server_pid, server0, server_end)
        {
            let cpu = cpu1 - cpu0;
            steady.server = Some(ServerSample {
                pid,
                cpu_s: cpu,
                cpu_pct: if secs > 0.0 { cpu / secs * 100.0 } else { 0.0 },
                rss_kb_start: rss0,
                rss_kb_end: rss1,
                us_per_packet: (steady.packets > 0).then(|| cpu * 1e6 / steady.packets as f64),
            });
        }
    }
    Ok(LoadReport {
        url: args.url.clone(),
        viewers: args.viewers,
        connected,
        failed: args.viewers - connected,
        dropped,
        errors,
        packets,
        bytes,
        loss_pct: pct(expected.saturating_sub(received), expected),
        lossy_loss_pct: (args.lossy > 0).then(|| {
            pct(
                lossy_expected.saturating_sub(lossy_received),
                lossy_expected,
            )
        }),
        lossy_video_loss_pct: (args.lossy > 0).then(|| {
            pct(
                lossy_video_expected.saturating_sub(lossy_video_received),
                lossy_video_expected,
            )
        }),
        lossy_video_thrown: (args.lossy > 0).then_some(lossy_video_thrown),
        time_to_answer_ms: percentiles(answer),
        time_to_ice_ms: percentiles(ice),
        time_to_connected_ms: percentiles(conn),
        time_to_first_rtp_ms: percentiles(rtp),
        with_keyframe: key.len(),
        time_to_first_keyframe_ms: percentiles(key),
        per_viewer_packets: min_p50(per_viewer),
        client_cpu_s: client_cpu,
        duration_s: duration.as_secs_f64(),
        steady,
        deleted: deleted.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_starts_are_found_in_single_stap_a_and_fu_a_payloads() {
        // Single NAL units: IDR (5) and SPS (7) start a keyframe; a P slice (1) does not.
        assert!(h264_keyframe_start(&[0x65, 0x88]));
        assert!(h264_keyframe_start(&[0x67, 0x42]));
        assert!(!h264_keyframe_start(&[0x41, 0x9a]));
        // STAP-A with SPS + PPS.
        assert!(h264_keyframe_start(&[
            0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce
        ]));
        // STAP-A with only a PPS and an SEI, and a truncated one.
        assert!(!h264_keyframe_start(&[
            0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x06, 0x05
        ]));
        assert!(!h264_keyframe_start(&[0x78, 0x00, 0x09, 0x67]));
        // FU-A: start of an IDR, a middle fragment of it, the start of a P slice.
        assert!(h264_keyframe_start(&[0x7c, 0x85, 0x00]));
        assert!(!h264_keyframe_start(&[0x7c, 0x05, 0x00]));
        assert!(!h264_keyframe_start(&[0x7c, 0x81, 0x00]));
        assert!(!h264_keyframe_start(&[]));
    }

    #[test]
    fn loss_counts_gaps_per_ssrc_range() {
        let mut t = Track::default();
        for seq in [10, 11, 13, 14] {
            t.on_packet(Ssrc::from(1), seq);
        }
        assert_eq!((t.expected(), t.received), (5, 4));
        // Reordered packet fills the gap; a new SSRC starts a new range.
        t.on_packet(Ssrc::from(1), 12);
        t.on_packet(Ssrc::from(2), 1000);
        t.on_packet(Ssrc::from(2), 1002);
        assert_eq!((t.expected(), t.received), (8, 7));
    }

    #[test]
    fn header_counting_extends_sequence_numbers_across_the_wrap() {
        assert_eq!(extend_seq(10, 11), 11);
        assert_eq!(extend_seq(65_535, 0), 65_536);
        assert_eq!(extend_seq(65_537, 65_534), 65_534);
        assert_eq!(extend_seq(3 << 16 | 5, 3), 3 << 16 | 3);
        assert_eq!(extend_seq(0, 65_535), 65_535, "never below zero");
        // Decrypted packets (str0m's extended numbers), then headers, across a wrap: no loss.
        let mut t = Track::default();
        for seq in 65_530..65_536 {
            t.on_packet(Ssrc::from(7), seq);
        }
        for seq in [0u16, 1, 3, 2, 4] {
            t.on_header(Ssrc::from(7), seq);
        }
        assert_eq!((t.expected(), t.received), (11, 11));
        t.on_header(Ssrc::from(7), 6);
        assert_eq!((t.expected(), t.received), (13, 12), "5 is lost");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((p.p50, p.p95, p.max), (50.0, 95.0, 100.0));
        let p = percentiles(vec![7.0]).unwrap();
        assert_eq!((p.p50, p.p95, p.max), (7.0, 7.0, 7.0));
        assert!(percentiles(Vec::new()).is_none());
        let m = min_p50(vec![5, 1, 9, 3]).unwrap();
        assert_eq!((m.min, m.p50), (1, 3));
    }

    #[test]
    fn responses_give_status_location_and_body() {
        let raw = b"HTTP/1.1 201 Created\r\nlocation: /whep/a/1\r\ncontent-length: 3\r\n\r\nv=0xx";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.location.as_deref(), Some("/whep/a/1"));
        assert_eq!(r.body, "v=0");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_none());
    }
}
