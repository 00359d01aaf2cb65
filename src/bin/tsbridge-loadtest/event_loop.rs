//! The event loops: each owns its viewers (a str0m `Rtc` and a UDP socket each) and drives
//! them. str0m is sans-IO: the loop feeds each `Rtc` its datagrams and timeouts, sends what it
//! transmits and counts the RTP it hands back.
//!
//! Each viewer socket gets a waker that puts the viewer's index on the loop's ready queue,
//! so a wake-up costs O(viewers with data), not O(viewers); a scan of every viewer (at least
//! every 100 ms, sooner when a viewer's timer is due) drives timeouts and connect deadlines.
//!
//! [`EventLoops`] is the coordinator's handle on them: start, hand over viewers, mark the
//! steady-state window, finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;

use crate::viewer::{is_rtp, is_video_pt, Mark, Stats};

/// A viewer whose offer was answered, on its way to an event loop.
pub(crate) struct NewViewer {
    pub(crate) rtc: Rtc,
    pub(crate) socket: UdpSocket,
    pub(crate) local: SocketAddr,
    pub(crate) stats: Stats,
    pub(crate) deadline: Instant,
}

pub(crate) enum Ctrl {
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
pub(crate) struct Progress {
    pub(crate) connected: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) packets: AtomicU64,
}

/// Datagrams taken from one socket before the loop moves on to the next ready viewer.
const RECV_BATCH: usize = 32;
/// Longest sleep between timeout scans (connect deadlines, liveness).
const MAX_SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest: str0m's timers need no finer grain, and this keeps the loop from spinning.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(1);

pub(crate) struct EventLoop {
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
    /// A loop without viewers, taking its orders from `rx` (see `--decrypt-all`).
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Ctrl>,
        progress: Arc<Progress>,
        decrypt_all: bool,
    ) -> Self {
        EventLoop {
            rx,
            queue: Arc::new(ReadyQueue {
                ready: Mutex::new(Vec::new()),
                notify: Notify::new(),
            }),
            progress,
            viewers: Vec::new(),
            buf: vec![0u8; 2048],
            unpublished: 0,
            decrypt_all,
        }
    }

    pub(crate) async fn run(mut self) {
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

/// The coordinator's handle on the event loops: `n` tasks, each an [`EventLoop`].
pub(crate) struct EventLoops {
    senders: Vec<mpsc::UnboundedSender<Ctrl>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EventLoops {
    /// Spawn `n` event loops that publish to `progress` (`n` is at least 1: see `--tasks`).
    pub(crate) fn start(n: usize, progress: &Arc<Progress>, decrypt_all: bool) -> Self {
        let mut loops = EventLoops {
            senders: Vec::new(),
            tasks: Vec::new(),
        };
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let ev = EventLoop::new(rx, progress.clone(), decrypt_all);
            loops.senders.push(tx);
            loops.tasks.push(tokio::spawn(ev.run()));
        }
        loops
    }

    /// Hand the `nth` answered viewer to a loop (round robin).
    pub(crate) fn add(&self, nth: usize, v: NewViewer) {
        let _ = self.senders[nth % self.senders.len()].send(Ctrl::Add(Box::new(v)));
    }

    /// Start the steady-state window in every loop; returns once each has marked its viewers.
    pub(crate) async fn mark(&self) {
        let mut acks = Vec::new();
        for l in &self.senders {
            let (tx, rx) = oneshot::channel();
            let _ = l.send(Ctrl::Mark(tx));
            acks.push(rx);
        }
        for a in acks {
            let _ = a.await;
        }
    }

    /// Stop every loop and collect its viewers' statistics.
    pub(crate) async fn finish(self) -> Vec<Stats> {
        let mut stats: Vec<Stats> = Vec::new();
        for l in &self.senders {
            let (tx, rx) = oneshot::channel();
            let _ = l.send(Ctrl::Finish(tx));
            if let Ok(s) = rx.await {
                stats.extend(s);
            }
        }
        for t in self.tasks {
            let _ = t.await;
        }
        stats
    }
}
