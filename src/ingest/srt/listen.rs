//! `--srt-listen`: callers publish TS into streams named by their stream id.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use super::ffi::{self, Recv, Socket, SrtSendStats};
use super::{streamid, Gate, Mode, Reader};
use crate::stream::link::LinkStats;
use crate::stream::ring::Read;
use crate::stream::SourceGuard;
use crate::ts::start::StartPoint;

/// How long a receive waits before the pump looks at its stop flag and statistics.
const POLL: Duration = Duration::from_millis(250);
/// Live-mode message size: 7 TS packets (SRT's default payload size).
const MESSAGE: usize = 7 * 188;
/// A publisher silent this long is taken for gone (libsrt's own peer timeout is 5 s).
const PEER_IDLE: Duration = Duration::from_secs(5);

/// The listener's settings.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub addr: SocketAddr,
    /// Every caller must encrypt with it (`--srt-passphrase`); none: no encryption.
    pub passphrase: Option<String>,
    /// Receive latency (`--srt-latency-ms`): how long a packet may take to be repaired.
    pub latency: Duration,
}

/// Closes the listener when the task that runs it ends (its accept thread then returns).
struct CloseOnDrop(i32);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        ffi::close_id(self.0);
    }
}

/// A bound SRT listener, not yet accepting.
pub struct Listener {
    socket: Socket,
    opts: ListenOptions,
    gate: Arc<dyn Gate>,
}

impl Listener {
    /// Loads libsrt and binds; fails at once when libsrt is missing, the passphrase is refused
    /// or the address cannot be bound (the server then does not start). `gate` checks its
    /// callers (and gives a stream's own passphrase during the handshake).
    pub fn bind(opts: ListenOptions, gate: Arc<dyn Gate>) -> std::io::Result<Listener> {
        ffi::load().map_err(std::io::Error::other)?;
        let socket = Socket::new()?;
        socket.set_latency(opts.latency)?;
        socket.set_int(ffi::SRTO_PEERIDLETIMEO, PEER_IDLE.as_millis() as i32)?;
        if let Some(p) = &opts.passphrase {
            socket.set_str(ffi::SRTO_PASSPHRASE, p)?;
        }
        // The hook's state lives as long as the process: libsrt may call the hook until the
        // listener is closed, and one small allocation per listener is not worth a race.
        let hook_gate: &'static Arc<dyn Gate> = Box::leak(Box::new(gate.clone()));
        // SAFETY: the pointer is to a leaked (never freed) `Arc<dyn Gate>`, which is `Sync`.
        unsafe {
            socket.set_listen_hook(listen_hook, hook_gate as *const Arc<dyn Gate> as *mut _)?
        };
        socket.bind(opts.addr)?;
        socket.listen(64)?;
        Ok(Listener { socket, opts, gate })
    }

    /// Accepts callers until the task is dropped (the listener is then closed).
    pub async fn run(self) -> std::io::Result<()> {
        let Listener { socket, opts, gate } = self;
        let _close = CloseOnDrop(socket.id());
        info!(
            addr = %opts.addr, latency_ms = opts.latency.as_millis() as u64,
            encrypted = opts.passphrase.is_some(),
            "listening for SRT callers (streamid #!::r=NAME,m=publish,s=TOKEN or NAME)"
        );
        let (tx, mut rx) = mpsc::channel::<(Socket, Option<SocketAddr>)>(16);
        std::thread::Builder::new()
            .name("srt-accept".into())
            .spawn(move || loop {
                match socket.accept() {
                    Ok(conn) => {
                        if tx.blocking_send(conn).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "SRT listener closed");
                        return;
                    }
                }
            })?;
        // The connections' tasks: when this task is dropped (server shutdown), so are they,
        // and their threads stop (see `StopOnDrop`).
        let mut conns = tokio::task::JoinSet::new();
        while let Some((sock, peer)) = rx.recv().await {
            while conns.try_join_next().is_some() {}
            conns.spawn(serve(sock, peer, gate.clone()));
        }
        Ok(())
    }
}

/// Looks at a caller's stream id during its handshake: a malformed one is refused there
/// (`SRT_REJX_BAD_REQUEST`, which the caller reports), `latency=` sets the connection's
/// latency, and a stream registered with its own passphrase gets it (the caller must use that
/// one, not `--srt-passphrase`). Runs on libsrt's receive thread: the only wait is the
/// gate's bounded passphrase lookup (the token is checked after accept, where the auth hook
/// may be asked), and no panic may cross into C.
extern "C" fn listen_hook(
    gate: *mut std::ffi::c_void,
    ns: i32,
    _hs_version: i32,
    peer: *const libc::sockaddr,
    stream_id: *const std::ffi::c_char,
) -> i32 {
    std::panic::catch_unwind(|| {
        // SAFETY: libsrt passes a valid address (or null) and a NUL-terminated id (or null).
        let (peer, raw) = unsafe { ffi::hook_args(peer, stream_id) };
        let pending = ffi::Pending(ns);
        match streamid::parse(&raw) {
            Err(why) => {
                let peer = peer.map_or_else(|| "?".into(), |p| p.to_string());
                warn!(%peer, streamid = %streamid::redacted(&raw), "SRT caller refused: {why}");
                pending.reject(ffi::SRT_REJX_BAD_REQUEST);
                -1
            }
            Ok(id) => {
                if let Some(Err(e)) = id.latency.map(|l| pending.set_latency(l)) {
                    warn!(error = %e, "SRT caller's latency= not applied");
                }
                // SAFETY: `bind` passed a pointer to an `Arc<dyn Gate>` that is never freed.
                let gate = unsafe { &*(gate as *const Arc<dyn Gate>) };
                if let Some(p) = gate.passphrase(&id.name) {
                    if let Err(e) = pending.set_passphrase(&p) {
                        warn!(stream = %id.name, error = %e, "SRT: the stream's passphrase not applied");
                        pending.reject(ffi::SRT_REJX_BAD_REQUEST);
                        return -1;
                    }
                }
                0
            }
        }
    })
    .unwrap_or(-1)
}

/// A flag a connection's thread checks between receives (every 250 ms) or reads (every
/// second): set when the task that waits for the thread is dropped (server shutdown, a pull
/// stopped), since a blocking thread cannot be aborted.
#[derive(Default)]
pub(super) struct StopOnDrop(pub(super) Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Wakes a reader's thread from its wait on the ring when the task that waits for the thread
/// is dropped: that wait runs on the runtime (with a tokio timer), and a tokio timer still
/// waiting when the runtime stops panics; woken, the thread leaves the wait first.
#[derive(Default)]
struct WakeOnDrop(Arc<Notify>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        // A permit if the thread is not waiting now: its next wait ends at once.
        self.0.notify_one();
    }
}

/// One accepted caller: checked, then pumped into its stream until it leaves.
async fn serve(sock: Socket, peer: Option<SocketAddr>, gate: Arc<dyn Gate>) {
    let raw = sock.stream_id();
    let peer_s = peer.map_or_else(|| "?".into(), |p| p.to_string());
    let id = match streamid::parse(&raw) {
        Ok(id) => id,
        Err(why) => {
            warn!(peer = %peer_s, streamid = %streamid::redacted(&raw), "SRT caller refused: {why}");
            return;
        }
    };
    if id.mode == Mode::Request {
        let name = id.name.clone();
        let reader = match gate.read(id, peer).await {
            Ok(r) => r,
            Err(why) => {
                warn!(peer = %peer_s, stream = %name, "SRT reader refused: {why}");
                return;
            }
        };
        info!(peer = %peer_s, stream = %name, "SRT reader connected (m=request)");
        let rt = tokio::runtime::Handle::current();
        let stop = StopOnDrop::default();
        let wake = WakeOnDrop::default();
        let (flag, woken) = (stop.0.clone(), wake.0.clone());
        let peer = peer_s.clone();
        let sent =
            tokio::task::spawn_blocking(move || send_ts(sock, reader, peer, rt, (flag, woken)))
                .await;
        match sent {
            Ok((why, s)) => info!(
                peer = %peer_s, stream = %name, packets = s.packets_sent, lost = s.lost,
                retransmitted = s.retransmitted, dropped = s.dropped, rtt_ms = s.rtt_ms,
                "SRT reader left ({why})"
            ),
            Err(e) => warn!(stream = %name, error = %e, "SRT reader's thread failed"),
        }
        return;
    }
    let name = id.name.clone();
    let guard = match gate.publish(id, peer).await {
        Ok(g) => g,
        Err(why) => {
            warn!(peer = %peer_s, stream = %name, "SRT publisher refused: {why}");
            return;
        }
    };
    info!(peer = %peer_s, stream = %name, "SRT publisher connected");
    let stream = guard.stream().clone();
    let stop = StopOnDrop::default();
    let watcher = tokio::spawn({
        let (stream, stop) = (stream.clone(), stop.0.clone());
        async move {
            stream.evicted().await;
            stop.store(true, Ordering::SeqCst);
        }
    });
    let flag = stop.0.clone();
    let pumped = tokio::task::spawn_blocking(move || pump(sock, guard, peer_s, flag)).await;
    watcher.abort();
    if let Err(e) = pumped {
        warn!(stream = %name, error = %e, "SRT publisher's thread failed");
    }
}

/// Receives into the stream until the peer leaves (or the stream is deleted); publishes the
/// connection's figures once a second. Returns why it ended.
pub(super) fn pump(
    sock: Socket,
    guard: SourceGuard,
    peer: String,
    stop: Arc<AtomicBool>,
) -> String {
    let stream = guard.stream().clone();
    if let Err(e) = sock.set_int(ffi::SRTO_RCVTIMEO, POLL.as_millis() as i32) {
        warn!(stream = %stream.name, error = %e, "SRT: cannot set the receive timeout");
        return e.to_string();
    }
    let mut buf = vec![0u8; 1500];
    let mut last_stats = Instant::now();
    let why = loop {
        if stop.load(Ordering::SeqCst) {
            break "the stream was deleted, or the server is stopping".to_owned();
        }
        match sock.recv(&mut buf) {
            Recv::Data(n) => guard.write(&buf[..n]),
            Recv::Timeout => {}
            Recv::Closed(e) => break e,
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            if let Some(s) = sock.stats() {
                stream.stats.link.set_srt(peer.clone(), s);
            }
        }
    };
    // A broken connection may have no statistics any more: keep the last ones then.
    if let Some(s) = sock.stats() {
        stream.stats.link.set_srt(peer.clone(), s);
    }
    let s = stream.stats.link.srt().map(|(_, s)| s).unwrap_or_default();
    info!(
        stream = %stream.name, %peer, packets = s.packets_received, lost = s.lost,
        retransmitted = s.retransmitted, dropped = s.dropped, rtt_ms = s.rtt_ms,
        "SRT source left ({why})"
    );
    why
}

/// An SRT reader's entry in its stream's link figures, removed when the reader leaves.
struct Listed<'a> {
    link: &'a LinkStats,
    id: u64,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.link.remove_srt_reader(self.id);
    }
}

/// Sends the stream's TS to a reader from the next join point (PAT, PMT, keyframe: as
/// `GET /streams/{s}.ts`), in messages of up to 7 TS packets, until it leaves or the stream
/// shuts down; publishes the connection's sender-side figures once a second while it lasts
/// (listed in the stream's `srt_readers` until it leaves); returns why it ended, and its last
/// figures.
fn send_ts(
    sock: Socket,
    reader: Reader,
    peer: String,
    rt: tokio::runtime::Handle,
    (stop, woken): (Arc<AtomicBool>, Arc<Notify>),
) -> (String, SrtSendStats) {
    let stream = reader.stream.clone();
    let link = &stream.stats.link;
    let listed = Listed {
        link,
        id: link.add_srt_reader(peer),
    };
    let mut cur = stream.ring.cursor();
    let mut start = StartPoint::new();
    let mut buf = vec![0u8; 188 * 512];
    let mut out = Vec::new();
    let mut last_stats = Instant::now();
    // The figures last published, for the log line as the reader leaves.
    let mut last = SrtSendStats::default();
    let why = 'read: loop {
        if stop.load(Ordering::SeqCst) {
            break "the server is stopping".into();
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            if let Some(s) = sock.send_stats() {
                link.set_srt_reader(listed.id, s);
                last = s;
            }
        }
        let read = rt.block_on(async {
            tokio::select! {
                biased;
                _ = woken.notified() => None,
                r = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.ring.read(&mut cur, &mut buf),
                ) => Some(r),
            }
        });
        let Some(read) = read else {
            break "the server is stopping".into();
        };
        match read {
            Ok(Read::Data(n)) => {
                out.clear();
                start.push(&buf[..n], &mut out);
                for message in out.chunks(MESSAGE) {
                    if let Err(e) = sock.send(message) {
                        break 'read e.to_string();
                    }
                }
            }
            // Lapped: the reader goes on at the live edge (the demuxer downstream resyncs);
            // the source ended: the next one continues the same ring.
            Ok(Read::Lapped(_) | Read::EndOfInput) => {}
            Ok(Read::Shutdown) => break "the stream was shut down".into(),
            // Quiet: is the caller still there?
            Err(_) if !sock.is_connected() => break "the caller left".into(),
            Err(_) => {}
        }
    };
    // A broken connection may have no statistics any more: the last ones published then.
    if let Some(s) = sock.send_stats() {
        link.set_srt_reader(listed.id, s);
        last = s;
    }
    (why, last)
}
