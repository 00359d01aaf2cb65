//! A lossy UDP link you can run here: there is no netem (no root, no `tc`) on these machines.
//!
//! ```text
//!  client ──► relay.addr() ──[forward: loss, dup, reorder, delay+jitter]──► upstream
//!  client ◄── relay.addr() ◄─[backward: the same, its own settings]──────── upstream
//! ```
//!
//! Each client address gets its own socket towards the upstream (as a NAT would), so replies
//! (SRT ACK/NAK, RTCP, STUN, DTLS) find their way back through the same impairments. Random
//! choices come from a seeded RNG per direction, so a run is reproducible for a given arrival
//! order. Used by the tests (`mod common;`) and by `examples/lossy_relay.rs`, which users run to
//! try their settings against a bad link.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most client addresses one relay serves (each has a socket and a task).
const MAX_CLIENTS: usize = 64;

/// What the link does to the datagrams of one direction. Rates are probabilities (0.05 = 5 %).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Datagrams dropped.
    pub loss: f64,
    /// Datagrams sent twice (the copy right behind the original).
    pub duplicate: f64,
    /// Datagrams held back by [`Impairment::reorder_hold`] on top of their delay, so that the
    /// ones sent after them arrive first.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_hold: Duration,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..=jitter` per datagram (it reorders too, when it is larger
    /// than the gap between datagrams, as netem's jitter does).
    pub jitter: Duration,
}

impl Impairment {
    /// A perfect link.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_hold: Duration::from_millis(10),
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// A link that carries nothing (to cut a connection for a while).
    pub const CUT: Impairment = Impairment {
        loss: 1.0,
        ..Impairment::NONE
    };
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment::NONE
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Datagrams received from the sending side.
    pub received: AtomicU64,
    /// Datagrams delivered (duplicates included).
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
}

impl DirectionStats {
    /// `received / sent / dropped / duplicated / reordered` as one line.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "received {} sent {} dropped {} duplicated {} reordered {}",
            g(&self.received),
            g(&self.sent),
            g(&self.dropped),
            g(&self.duplicated),
            g(&self.reordered)
        )
    }
}

/// Both directions' counters.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Client → upstream.
    pub forward: DirectionStats,
    /// Upstream → client.
    pub backward: DirectionStats,
}

/// One direction's settings and random source; settings can change while it runs.
struct Link {
    impairment: Mutex<Impairment>,
    rng: Mutex<StdRng>,
}

impl Link {
    fn new(impairment: Impairment, seed: u64) -> Link {
        Link {
            impairment: Mutex::new(impairment),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// When each copy of a datagram received `now` goes out: none (dropped), one or two.
    fn schedule(&self, now: Instant, stats: &DirectionStats) -> Vec<Instant> {
        let imp = *self.impairment.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        stats.received.fetch_add(1, Ordering::Relaxed);
        if imp.loss > 0.0 && rng.random_bool(imp.loss.min(1.0)) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let mut at = now + imp.delay;
        if !imp.jitter.is_zero() {
            at += imp.jitter.mul_f64(rng.random::<f64>());
        }
        if imp.reorder > 0.0 && rng.random_bool(imp.reorder.min(1.0)) {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            at += imp.reorder_hold;
        }
        let mut out = vec![at];
        if imp.duplicate > 0.0 && rng.random_bool(imp.duplicate.min(1.0)) {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
            out.push(at);
        }
        out
    }
}

/// A datagram waiting for its time: ordered by time, then by arrival.
struct Due {
    at: Instant,
    n: u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Arc<[u8]>,
    stats: Arc<RelayStats>,
    forward: bool,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.n) == (other.at, other.n)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.n).cmp(&(other.at, other.n))
    }
}

/// A running relay; stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    forward: Arc<Link>,
    backward: Arc<Link>,
    tasks: Vec<JoinHandle<()>>,
    clients: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on `listen` (port 0: any) and relays to `upstream`, `forward` applied to what
    /// clients send, `backward` to the replies; `seed` makes the random choices repeatable.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        forward: Impairment,
        backward: Impairment,
        seed: u64,
    ) -> std::io::Result<Relay> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let addr = socket.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let fwd = Arc::new(Link::new(forward, seed));
        let back = Arc::new(Link::new(backward, seed.wrapping_add(1)));
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        let clients: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let sender = tokio::spawn(send_when_due(due_rx));
        let receiver = tokio::spawn(from_clients(
            socket,
            upstream,
            fwd.clone(),
            back.clone(),
            stats.clone(),
            due_tx,
            clients.clone(),
        ));
        Ok(Relay {
            addr,
            stats,
            forward: fwd,
            backward: back,
            tasks: vec![sender, receiver],
            clients,
        })
    }

    /// [`Relay::start`] on `127.0.0.1:0` with the same impairment both ways.
    pub async fn loopback(upstream: SocketAddr, both: Impairment, seed: u64) -> Relay {
        Relay::start("127.0.0.1:0".parse().unwrap(), upstream, both, both, seed)
            .await
            .expect("bind the relay on 127.0.0.1")
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the link does from now on (client → upstream, upstream → client).
    pub fn set(&self, forward: Impairment, backward: Impairment) {
        *self.forward.impairment.lock().unwrap() = forward;
        *self.backward.impairment.lock().unwrap() = backward;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.clients.lock().unwrap().iter() {
            t.abort();
        }
    }
}

/// Reads what clients send; each new client gets its own socket towards `upstream` and a task
/// that brings the replies back.
async fn from_clients(
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    forward: Arc<Link>,
    backward: Arc<Link>,
    stats: Arc<RelayStats>,
    due: mpsc::UnboundedSender<Due>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut outward: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut n = 0u64;
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else {
            continue; // ICMP errors (a port not listening yet) surface here on Linux
        };
        let out = match outward.get(&client) {
            Some(s) => s.clone(),
            None if outward.len() >= MAX_CLIENTS => continue,
            None => {
                let bind: SocketAddr = if upstream.is_ipv4() {
                    "0.0.0.0:0".parse().unwrap()
                } else {
                    "[::]:0".parse().unwrap()
                };
                let Ok(s) = UdpSocket::bind(bind).await else {
                    continue;
                };
                let s = Arc::new(s);
                outward.insert(client, s.clone());
                tasks.lock().unwrap().push(tokio::spawn(replies(
                    s.clone(),
                    socket.clone(),
                    client,
                    backward.clone(),
                    stats.clone(),
                    due.clone(),
                )));
                s
            }
        };
        let data: Arc<[u8]> = buf[..len].into();
        for at in forward.schedule(Instant::now(), &stats.forward) {
            n += 1;
            let _ = due.send(Due {
                at,
                n,
                socket: out.clone(),
                to: upstream,
                data: data.clone(),
                stats: stats.clone(),
                forward: true,
            });
        }
    }
}

/// Brings what `upstream` answers on `outward` back to `client`.
async fn replies(
    outward: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    backward: Arc<Link>,
    stats: Arc<RelayStats>,
    due: mpsc::UnboundedSender<Due>,
) {
    let mut buf = vec![0u8; 65536];
    // Numbered apart from the forward direction's (order only matters at equal times).
    let mut n = 1u64 << 62;
    loop {
        let Ok((len, _)) = outward.recv_from(&mut buf).await else {
            continue;
        };
        let data: Arc<[u8]> = buf[..len].into();
        for at in backward.schedule(Instant::now(), &stats.backward) {
            n += 1;
            let _ = due.send(Due {
                at,
                n,
                socket: listen.clone(),
                to: client,
                data: data.clone(),
                stats: stats.clone(),
                forward: false,
            });
        }
    }
}

/// Sends every datagram at its time, earliest first.
async fn send_when_due(mut rx: mpsc::UnboundedReceiver<Due>) {
    let mut heap: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|d| d.0.at);
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => heap.push(Reverse(d)),
                None => return,
            },
            _ = async { tokio::time::sleep_until(next.unwrap_or_else(Instant::now)).await },
                if next.is_some() => {}
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|d| d.0.at <= now) {
            let Reverse(d) = heap.pop().expect("peeked");
            if d.socket.send_to(&d.data, d.to).await.is_ok() {
                let dir = if d.forward {
                    &d.stats.forward
                } else {
                    &d.stats.backward
                };
                dir.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
