//! A media shard: one thread, one UDP socket, its share of the sessions.
//!
//! Every shard's socket is bound to the same address with `SO_REUSEPORT`, so all sessions
//! share one port and the kernel spreads incoming datagrams over the shards by address hash.
//! A session lives in one shard (chosen at creation, the least loaded); a datagram that lands
//! on another shard's socket is forwarded to it, found by the peer's address or, for a first
//! STUN check, by the ICE ufrag it names. Each shard sends from its own socket, so the fan-out
//! of a frame runs on all cores at once.
//!
//! Within a shard nothing blocks: sessions are sans-IO, timeouts sit in a heap, datagrams go
//! out in batches (see `outbox`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use str0m::net::{Protocol, Receive};
use str0m::Input;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::outbox::Outbox;
use super::session::{self, Session};
use super::{short, Cmd, EngineOptions, NewSession, Patch, PatchError, PatchReply, SessionUrl};
use crate::metrics::Metrics;
use crate::stream::frame::Frame;
use crate::stream::Stream;

/// How often every session is checked for its end (ICE timeout, closed) and keyframe
/// requests are collected.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Datagrams read per wake-up before the loop looks at its other work.
const RECV_BATCH: usize = 64;

/// Where sessions are, shared by the engine and all shards.
pub(super) struct Router {
    /// Session id → shard, for PATCH and DELETE.
    ids: Mutex<HashMap<String, usize>>,
    /// Our ICE ufrag → shard, for a first STUN check that lands on another shard.
    ufrags: RwLock<HashMap<String, usize>>,
    /// Peer address → shard.
    addrs: RwLock<HashMap<SocketAddr, usize>>,
    /// Sessions per shard.
    load: Box<[AtomicUsize]>,
}

impl Router {
    pub fn new(shards: usize) -> Self {
        Router {
            ids: Default::default(),
            ufrags: Default::default(),
            addrs: Default::default(),
            load: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// The shard for a new session: the one with the fewest.
    pub fn place(&self, id: &str, ufrag: &str) -> usize {
        let shard = (0..self.load.len())
            .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.load[shard].fetch_add(1, Ordering::Relaxed);
        self.ids.lock().insert(id.to_string(), shard);
        self.ufrags.write().insert(ufrag.to_string(), shard);
        shard
    }

    pub fn shard_of(&self, id: &str) -> Option<usize> {
        self.ids.lock().get(id).copied()
    }

    pub fn shards(&self) -> usize {
        self.load.len()
    }
}

/// The first (our) part of a STUN binding request's USERNAME, `ours:theirs` (RFC 8445 §7.2.2).
fn stun_local_ufrag(d: &[u8]) -> Option<&str> {
    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    if d.len() < 20 || d[0..2] != [0x00, 0x01] || d[4..8] != COOKIE {
        return None;
    }
    let end = (20 + usize::from(u16::from_be_bytes([d[2], d[3]]))).min(d.len());
    let mut at = 20;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([d[at], d[at + 1]]);
        let len = usize::from(u16::from_be_bytes([d[at + 2], d[at + 3]]));
        let value = d.get(at + 4..at + 4 + len)?;
        if kind == 0x0006 {
            let user = std::str::from_utf8(value).ok()?;
            return user.split(':').next();
        }
        at += 4 + len.next_multiple_of(4);
    }
    None
}

/// What every shard shares with the engine and the other shards (the engine's handle is not
/// among it: a shard needs only these).
#[derive(Clone)]
pub(super) struct Shared {
    pub router: Arc<Router>,
    /// Every shard's command queue (weak: the loops end when the engine is dropped).
    pub peers: Arc<[mpsc::WeakUnboundedSender<Cmd>]>,
    /// Sessions alive in all shards (the engine's count for --max-sessions).
    pub live: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    /// Our host candidates (answers to an ICE restart carry them).
    pub candidates: Arc<[SocketAddr]>,
    /// The engine's settings the sessions run with.
    pub opts: EngineOptions,
    /// Where session events go.
    pub events: crate::events::EventSink,
}

pub(super) struct Shard {
    index: usize,
    router: Arc<Router>,
    peers: Arc<[mpsc::WeakUnboundedSender<Cmd>]>,
    live: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    out: Outbox,
    rx: mpsc::UnboundedReceiver<Cmd>,
    candidates: Arc<[SocketAddr]>,
    opts: EngineOptions,
    /// Sessions by slot; freed slots are reused.
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    ids: HashMap<String, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    by_ufrag: HashMap<String, usize>,
    /// Stream id → its viewers' slots here.
    by_stream: HashMap<u64, Vec<usize>>,
    /// Stream id → its WHIP publisher's slot, when the publisher is on this shard.
    publishers: HashMap<u64, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    next_sweep: Instant,
    events: crate::events::EventSink,
    /// Frames queued for the wire since the last flush: their stream, arrival and ingest time,
    /// for the latency measured at the flush.
    queued_frames: Vec<(Arc<Stream>, Instant, u64)>,
}

impl Shard {
    /// Shard `index`, sending on `out`'s socket, taking commands from `rx`.
    pub fn new(
        index: usize,
        shared: Shared,
        rx: mpsc::UnboundedReceiver<Cmd>,
        out: Outbox,
    ) -> Self {
        Shard {
            index,
            router: shared.router,
            peers: shared.peers,
            live: shared.live,
            metrics: shared.metrics,
            out,
            rx,
            candidates: shared.candidates,
            opts: shared.opts,
            sessions: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_stream: HashMap::new(),
            publishers: HashMap::new(),
            timers: BinaryHeap::new(),
            next_sweep: Instant::now(),
            events: shared.events,
            queued_frames: Vec::new(),
        }
    }

    pub async fn run(mut self) {
        let mut buf = vec![0u8; 2048];
        loop {
            let next = self
                .timers
                .peek()
                .map_or(self.next_sweep, |Reverse((t, _))| (*t).min(self.next_sweep));
            tokio::select! {
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.on_cmd(cmd);
                    // Take whatever else is queued before looking at timeouts.
                    while let Ok(cmd) = self.rx.try_recv() {
                        self.on_cmd(cmd);
                    }
                }
                r = self.out.socket().recv_from(&mut buf) => match r {
                    Ok((n, source)) => {
                        let now = Instant::now();
                        self.on_datagram(&buf[..n], source, now);
                        for _ in 1..RECV_BATCH {
                            let Ok((n, source)) = self.out.socket().try_recv_from(&mut buf) else {
                                break;
                            };
                            self.on_datagram(&buf[..n], source, now);
                        }
                    }
                    Err(e) => debug!(error = %e, "UDP receive"),
                },
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            let now = Instant::now();
            self.on_timeouts(now);
            if now >= self.next_sweep {
                self.sweep(now);
                self.next_sweep = now + SWEEP_EVERY;
            }
            self.measure_latency();
            self.out.flush();
        }
    }

    /// The frames queued since the last flush go on the wire now, their first packets first.
    fn measure_latency(&mut self) {
        if self.queued_frames.is_empty() {
            return;
        }
        let now = Instant::now();
        let wall = crate::wallclock::unix_micros(now);
        for (stream, arrived, ingested_us) in self.queued_frames.drain(..) {
            let from_ingest = Duration::from_micros(wall.saturating_sub(ingested_us));
            let added = now.saturating_duration_since(arrived);
            stream.stats.latency.record(added, from_ingest);
        }
    }

    fn session(&mut self, slot: usize) -> Option<&mut Session> {
        self.sessions.get_mut(slot).and_then(Option::as_mut)
    }

    /// After a session did something: note where it sends to, and its next deadline.
    fn settle(&mut self, slot: usize) {
        let Some(s) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if s.armed.is_none_or(|t| s.next_timeout < t) {
            s.armed = Some(s.next_timeout);
            self.timers.push(Reverse((s.next_timeout, slot)));
        }
        if !s.peer_addrs.is_empty() {
            for addr in std::mem::take(&mut s.peer_addrs) {
                if self.by_addr.get(&addr) != Some(&slot) {
                    self.map_addr(addr, slot);
                }
            }
        }
    }

    fn map_addr(&mut self, addr: SocketAddr, slot: usize) {
        self.by_addr.insert(addr, slot);
        let mut addrs = self.router.addrs.write();
        addrs.insert(addr, self.index);
    }

    /// The session at `slot` after it did something, at the shard's time.
    fn poll(&mut self, slot: usize) {
        let now = Instant::now();
        if let Some(s) = self.sessions.get_mut(slot).and_then(Option::as_mut) {
            s.poll(now, &mut self.out);
        }
        self.settle(slot);
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(n) => self.add(*n),
            Cmd::Frame(stream, frame) => self.frame(&stream, &frame),
            Cmd::Datagram(source, data, at) => self.on_datagram(&data, source, at),
            Cmd::KeyframeWanted(stream) => self.request_keyframe(stream, false),
            Cmd::Patch(url, patch, reply) => self.patch(&url, patch, reply),
            Cmd::Delete(url, why, reply) => {
                let found = match self.slot_of(&url) {
                    Some(slot) => self.remove(slot, why),
                    None => false,
                };
                let _ = reply.send(found);
            }
            Cmd::Count(reply) => {
                let _ = reply.send(self.ids.len());
            }
            Cmd::Shutdown(reply) => {
                let ids: Vec<String> = self.ids.keys().cloned().collect();
                for id in ids {
                    self.remove_id(&id, "server shutting down");
                }
                self.out.flush();
                let _ = reply.send(());
            }
            Cmd::TracksChanged(stream) => {
                let status = stream.status();
                for slot in self.by_stream.get(&stream.id).cloned().unwrap_or_default() {
                    let keep = self.session(slot).is_none_or(|s| s.tracks_changed(&status));
                    if !keep {
                        self.remove(slot, "its tracks left the stream (PMT change)");
                    }
                }
            }
            Cmd::EndViewers(stream) => {
                for slot in self.by_stream.remove(&stream).unwrap_or_default() {
                    self.remove(slot, "the stream's source ended");
                }
            }
            Cmd::EndStream(name, reply) => {
                let slots: Vec<usize> = self
                    .ids
                    .values()
                    .copied()
                    .filter(|&slot| {
                        let s = self.sessions.get(slot).and_then(Option::as_ref);
                        s.is_some_and(|s| s.url_stream == name)
                    })
                    .collect();
                let n = slots
                    .into_iter()
                    .filter(|&slot| self.remove(slot, "the stream was deleted (admin API)"))
                    .count();
                let _ = reply.send(n);
            }
            Cmd::List(name, reply) => {
                let now = Instant::now();
                let list = self
                    .sessions
                    .iter()
                    .flatten()
                    .filter(|s| s.url_stream == name)
                    .map(|s| s.info(now))
                    .collect();
                let _ = reply.send(list);
            }
        }
    }

    /// A frame of `stream` to each of its viewers on this shard.
    fn frame(&mut self, stream: &Arc<Stream>, frame: &Frame) {
        let Some(viewers) = self.by_stream.get_mut(&stream.id) else {
            return;
        };
        let viewers = std::mem::take(viewers);
        let now = Instant::now();
        let mut sent = (0, 0);
        for &slot in &viewers {
            if let Some(s) = self.sessions.get_mut(slot).and_then(Option::as_mut) {
                let (p, b) = s.write_frame(frame, now, &mut self.out);
                s.count_sent(p, b);
                sent = (sent.0 + p, sent.1 + b);
            }
            self.settle(slot);
        }
        session::count_direct(stream, &self.metrics, sent);
        if sent.0 > 0 {
            let at = (frame.arrived, frame.ingested_us);
            self.queued_frames.push((stream.clone(), at.0, at.1));
        }
        self.by_stream.insert(stream.id, viewers);
    }

    /// A viewer's ICE restart or trickled candidates (`PATCH`), answered on `reply`.
    fn patch(&mut self, url: &SessionUrl, patch: Patch, reply: oneshot::Sender<PatchReply>) {
        let Some(slot) = self.slot_of(url) else {
            let _ = reply.send(Err(PatchError::NotFound));
            return;
        };
        let candidates = self.candidates.clone();
        let Some(s) = self.session(slot) else { return };
        let old_ufrag = s.local_ufrag.clone();
        let r = s.patch(patch, &candidates);
        let new_ufrag = s.local_ufrag.clone();
        if new_ufrag != old_ufrag {
            self.by_ufrag.remove(&old_ufrag);
            self.by_ufrag.insert(new_ufrag.clone(), slot);
            let mut ufrags = self.router.ufrags.write();
            ufrags.remove(&old_ufrag);
            ufrags.insert(new_ufrag, self.index);
        }
        self.poll(slot);
        let _ = reply.send(r);
    }

    fn add(&mut self, n: NewSession) {
        let publisher = n.ingest.is_some();
        let counter = match publisher {
            true => &self.metrics.publishers_created,
            false => &self.metrics.viewers_created,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let role = if publisher { "publisher" } else { "viewer" };
        info!(stream = %n.stream.name, session = %short(&n.id), shard = self.index,
            "{role} session created");
        let s = Session::new(n, &self.opts, self.metrics.clone(), Instant::now());
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.sessions.push(None);
                self.sessions.len() - 1
            }
        };
        self.ids.insert(s.id.clone(), slot);
        self.by_ufrag.insert(s.local_ufrag.clone(), slot);
        if publisher {
            self.publishers.insert(s.stream.id, slot);
        } else {
            self.by_stream.entry(s.stream.id).or_default().push(slot);
        }
        self.sessions[slot] = Some(s);
        self.poll(slot);
    }

    fn on_datagram(&mut self, data: &[u8], source: SocketAddr, at: Instant) {
        // A STUN check names its session by our ufrag, and moves the address to it. Anything
        // else from a known address goes to its session, DTLS too even before str0m's own ICE
        // check has nominated the pair (else the first ClientHello is lost: +1 s start-up).
        let slot = match stun_local_ufrag(data) {
            Some(ufrag) => match self.by_ufrag.get(ufrag) {
                Some(&slot) => slot,
                None => {
                    let shard = self.router.ufrags.read().get(ufrag).copied();
                    return self.forward(shard, data, source, at);
                }
            },
            None => match self.by_addr.get(&source) {
                Some(&slot) => slot,
                None => {
                    let shard = self.router.addrs.read().get(&source).copied();
                    return self.forward(shard, data, source, at);
                }
            },
        };
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            at,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.destination_for(source),
                contents,
            },
        );
        let Some(s) = self.session(slot) else { return };
        s.handle_input(input);
        if self.by_addr.get(&source) != Some(&slot) {
            self.map_addr(source, slot);
        }
        self.poll(slot);
    }

    /// A datagram for a session on another shard goes there; one for no session is dropped.
    fn forward(&self, shard: Option<usize>, data: &[u8], source: SocketAddr, at: Instant) {
        let Some(shard) = shard.filter(|&s| s != self.index) else {
            return;
        };
        if let Some(tx) = self.peers.get(shard).and_then(|w| w.upgrade()) {
            let _ = tx.send(Cmd::Datagram(source, data.to_vec(), at));
        }
    }

    /// Which of our announced addresses a datagram was sent to (the socket may be a wildcard).
    fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        let want_loopback = source.ip().is_loopback();
        self.candidates
            .iter()
            .find(|c| c.ip().is_loopback() == want_loopback)
            .or(self.candidates.first())
            .copied()
            .unwrap_or_else(|| {
                self.out
                    .socket()
                    .local_addr()
                    .expect("bound socket has an address")
            })
    }

    /// Sessions whose deadline has come: their `Rtc` timeout, the backlog's next slice.
    fn on_timeouts(&mut self, now: Instant) {
        while let Some(&Reverse((t, slot))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(s) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if s.armed != Some(t) {
                continue; // superseded by an earlier deadline, or the slot was reused
            }
            s.armed = None;
            if s.next_timeout <= now {
                s.handle_input(Input::Timeout(now));
                s.poll(now, &mut self.out);
                if s.has_queue() {
                    s.drain_queue(now, &mut self.out);
                }
            }
            self.settle(slot);
        }
    }

    /// Ended sessions go; viewers' keyframe requests go to their stream (its video re-encoder)
    /// and to its WHIP publisher.
    fn sweep(&mut self, now: Instant) {
        let mut dead = Vec::new();
        let mut wanted = Vec::new();
        for (slot, s) in self.sessions.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            if let Some(why) = s.end_reason(now) {
                dead.push((slot, why));
            }
            if s.take_keyframe_request() {
                // A re-encoded stream makes one; a WHIP publisher is asked below.
                s.stream.request_keyframe();
                wanted.push(s.stream.id);
            }
        }
        for (slot, why) in dead {
            self.remove(slot, why);
        }
        wanted.sort_unstable();
        wanted.dedup();
        for stream in wanted {
            self.request_keyframe(stream, true);
        }
    }

    /// Ask the stream's publisher for a keyframe: here if it is on this shard, else (when
    /// `spread`) by asking the other shards.
    fn request_keyframe(&mut self, stream: u64, spread: bool) {
        if let Some(&slot) = self.publishers.get(&stream) {
            if let Some(p) = self.session(slot) {
                if p.request_keyframe(Instant::now()) {
                    self.metrics
                        .keyframes_requested_upstream
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            self.poll(slot);
        } else if spread {
            for (i, peer) in self.peers.iter().enumerate() {
                if i != self.index {
                    if let Some(tx) = peer.upgrade() {
                        let _ = tx.send(Cmd::KeyframeWanted(stream));
                    }
                }
            }
        }
    }

    /// The slot of the session at `url`: its id, under the stream and role it was created with.
    fn slot_of(&self, url: &SessionUrl) -> Option<usize> {
        let &slot = self.ids.get(&url.id)?;
        let s = self.sessions.get(slot)?.as_ref()?;
        (s.url_stream == url.stream && s.is_publisher() == url.publisher).then_some(slot)
    }

    fn remove_id(&mut self, id: &str, why: &'static str) -> bool {
        match self.ids.get(id) {
            Some(&slot) => self.remove(slot, why),
            None => false,
        }
    }

    fn remove(&mut self, slot: usize, why: &'static str) -> bool {
        let Some(mut s) = self.sessions.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        self.free.push(slot);
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.router.load[self.index].fetch_sub(1, Ordering::Relaxed);
        self.metrics.session_closed(why);
        s.close(Instant::now(), &mut self.out);
        self.ids.remove(&s.id);
        self.router.ids.lock().remove(&s.id);
        self.by_ufrag.remove(&s.local_ufrag);
        self.router.ufrags.write().remove(&s.local_ufrag);
        let mut gone = Vec::new();
        self.by_addr.retain(|addr, v| {
            let keep = *v != slot;
            if !keep {
                gone.push(*addr);
            }
            keep
        });
        if !gone.is_empty() {
            let mut addrs = self.router.addrs.write();
            for addr in gone {
                if addrs.get(&addr) == Some(&self.index) {
                    addrs.remove(&addr);
                }
            }
        }
        if self.publishers.get(&s.stream.id) == Some(&slot) {
            self.publishers.remove(&s.stream.id);
        }
        if let Some(v) = self.by_stream.get_mut(&s.stream.id) {
            v.retain(|&x| x != slot);
            if v.is_empty() {
                self.by_stream.remove(&s.stream.id);
            }
        }
        let role = if s.is_publisher() {
            "publisher"
        } else {
            "viewer"
        };
        info!(stream = %s.stream.name, session = %short(&s.id), reason = why, "{role} session closed");
        if self.events.enabled() {
            let info = s.info(Instant::now());
            self.events.emit(
                "session.ended",
                serde_json::json!({
                    "stream": s.url_stream,
                    "session": s.id,
                    "role": role,
                    "ip": info.client_ip,
                    "duration_seconds": info.since_seconds,
                    "bytes": info.bytes_sent,
                    "packets": info.packets_sent,
                    "cause": why,
                }),
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_username_names_our_ufrag() {
        // Binding request, USERNAME "abcd:xyz" (8 bytes), then a FINGERPRINT-like attribute.
        let mut m = vec![0x00, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
        m.extend_from_slice(b"abcd:xyz");
        m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(stun_local_ufrag(&m), Some("abcd"));
        // A response has no USERNAME for us; truncations and other protocols are not STUN.
        let mut resp = m.clone();
        resp[0..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(stun_local_ufrag(&resp), None);
        for n in 0..m.len() - 8 {
            assert_ne!(stun_local_ufrag(&m[..n]), Some("abcd:xyz"));
        }
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None);
    }
}
