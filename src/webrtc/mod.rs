//! WebRTC sessions (str0m), all on one UDP socket, driven by one event-loop task.
//!
//! The HTTP side builds each session's `Rtc` from the offer and hands it over as a command; the
//! loop owns every `Rtc`, routes datagrams to them by source address (or by ICE credentials for
//! the first packet from an address), writes the stream's frames into each and sends what they
//! produce. Nothing here blocks: the socket is non-blocking and every session is sans-IO.

pub mod publish;
pub mod sdpfrag;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::media::{Frame, FrameSink};
use crate::metrics::Metrics;
use crate::stream::{SourceGuard, Stream};
pub use sdpfrag::{SdpFrag, SdpFragError};
use session::Session;

/// A session ready to join the loop.
pub struct NewSession {
    pub id: String,
    pub stream: Arc<Stream>,
    pub rtc: Rtc,
    pub remote_ufrag: Option<String>,
    /// Set for a WHIP publisher.
    pub ingest: Option<publish::Ingest>,
}

/// A parsed SDP offer, with what we need from it besides str0m's view.
pub struct Offer {
    sdp: SdpOffer,
    remote_ufrag: Option<String>,
}

/// Why an offer cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("malformed SDP offer: {0}")]
    Malformed(String),
    #[error("cannot answer this offer: {0}")]
    Rejected(String),
    #[error(
        "the offer has no media this stream can send (it has {has}); offer recvonly H.264 \
         (packetization-mode=1) and/or Opus"
    )]
    NoCommonMedia { has: String },
    #[error(
        "tsbridge takes H.264 (packetization-mode=1) and Opus; the offer has {has}: \
         send H.264 and/or Opus"
    )]
    NoPublishableMedia { has: String },
}

/// Whether the answer has an active `m=` section of `kind` that we receive on.
fn sdp_media_receives(answer: &str, kind: &str) -> bool {
    let mut in_kind = false;
    let mut active = false;
    for line in answer.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_kind && active {
                return true;
            }
            let mut it = m.split_whitespace();
            in_kind = it.next() == Some(kind);
            active = it.next().is_some_and(|port| port != "0");
        } else if in_kind && (line == "a=inactive" || line == "a=sendonly") {
            active = false;
        }
    }
    in_kind && active
}

/// The codec names an SDP offers (`a=rtpmap:PT NAME/…`), for error messages.
fn offered_codecs(sdp: &str) -> String {
    let mut names: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| c.split('/').next())
        .filter(|c| {
            !matches!(
                c.to_ascii_lowercase().as_str(),
                "rtx" | "red" | "ulpfec" | "flexfec-03"
            )
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "no codecs".into()
    } else {
        names.join(", ")
    }
}

impl Offer {
    pub fn parse(sdp: &str) -> Result<Offer, OfferError> {
        let parsed =
            SdpOffer::from_sdp_string(sdp).map_err(|e| OfferError::Malformed(e.to_string()))?;
        let remote_ufrag = sdp
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
            .map(str::to_string);
        Ok(Offer {
            sdp: parsed,
            remote_ufrag,
        })
    }
}

/// An accepted offer: the session to hand to the engine and the answer for the client.
pub struct Answered {
    pub session: NewSession,
    pub answer: String,
    /// Our ICE ufrag, used as the session's ETag.
    pub ufrag: String,
}

/// Why a PATCH failed.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("no such session")]
    NotFound,
    #[error("{0}")]
    Bad(String),
}

/// The answer to a PATCH: nothing (trickle) or an sdpfrag (ICE restart).
pub type PatchReply = Result<Option<String>, PatchError>;

enum Cmd {
    Add(Box<NewSession>),
    Frame(Arc<Stream>, Frame),
    Patch(String, SdpFrag, oneshot::Sender<PatchReply>),
    Delete(String, oneshot::Sender<bool>),
    Count(oneshot::Sender<usize>),
    EndViewers(u64),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the engine: cheap to clone, used by HTTP handlers and media tasks.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Cmd>,
    local: SocketAddr,
    candidates: Arc<[SocketAddr]>,
    /// One certificate for every session: generating one per session costs milliseconds.
    dtls_cert: DtlsCert,
    /// Sessions handed to the loop and not yet closed.
    live: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: Arc<Metrics>,
}

impl Engine {
    /// Bind the UDP socket and start the loop. `hosts` are the addresses to announce (IPs or
    /// DNS names); empty means the bound address (loopback + primary address for a wildcard).
    pub async fn start(
        bind: SocketAddr,
        hosts: &[String],
        ice_timeout: Duration,
    ) -> std::io::Result<Engine> {
        let provider = str0m::crypto::from_feature_flags();
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| std::io::Error::other("cannot generate a DTLS certificate"))?;
        provider.install_process_default();
        let socket = bind_media_socket(bind)?;
        let local = socket.local_addr()?;
        let candidates = announce_addresses(local, hosts).await;
        info!(udp = %local, candidates = ?candidates, "WebRTC media socket");
        let (tx, rx) = mpsc::unbounded_channel();
        let candidates: Arc<[SocketAddr]> = candidates.into();
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::default());
        let ev = EventLoop {
            live: live.clone(),
            metrics: metrics.clone(),
            socket,
            rx,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            publishers: HashMap::new(),
            candidates: candidates.clone(),
            ice_timeout,
        };
        tokio::spawn(ev.run());
        Ok(Engine {
            tx,
            local,
            candidates,
            dtls_cert,
            live,
            metrics,
        })
    }

    /// Answer `offer` for a viewer of `stream`, sending exactly the tracks in `tracks`: an
    /// offered m-line the stream has no track for is rejected in the answer.
    pub fn accept(
        &self,
        id: String,
        stream: Arc<Stream>,
        offer: Offer,
        status: &crate::stream::Status,
    ) -> Result<Answered, OfferError> {
        let tracks = status
            .tracks
            .as_deref()
            .ok_or_else(|| OfferError::Rejected("the stream has no tracks yet".into()))?;
        let video = status.video;
        let mut cfg = RtcConfig::new()
            .clear_codecs()
            .set_dtls_cert(self.dtls_cert.clone())
            .set_rtp_mode(true)
            .set_stats_interval(Some(Duration::from_secs(1)));
        if tracks.video().is_some() {
            cfg = cfg.enable_h264(true);
            // str0m's defaults cover Baseline, Constrained Baseline, Main and High; add
            // Constrained High (Safari) and the source's own profile when it is none of those,
            // so such an offer is answered with it rather than with a lesser profile. (Two
            // configs of one profile class would claim the same offered PT: str0m panics.)
            let own = video.and_then(|v| {
                let [p, c, l] = v.profile_level_id.0;
                (![0x42, 0x4d, 0x64].contains(&p)).then(|| u32::from_be_bytes([0, p, c, l]))
            });
            let codecs = cfg.codec_config();
            for (pt, rtx, plid) in [(37, 38, own), (39, 40, Some(0x640c1f))] {
                if let Some(plid) = plid {
                    codecs.add_h264(pt.into(), Some(rtx.into()), true, plid);
                }
            }
        }
        if status.has_audio() {
            cfg = cfg.enable_opus(true, false);
        }
        let mut rtc = cfg.build(Instant::now());
        let answer = self.answer(&mut rtc, offer.sdp)?;
        if !answer.lines().any(|l| l.trim() == "a=sendonly") {
            let has: Vec<&str> = tracks.tracks.iter().map(|t| t.codec_name()).collect();
            return Err(OfferError::NoCommonMedia {
                has: has.join(", "),
            });
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Ok(Answered {
            session: NewSession {
                id,
                stream,
                rtc,
                remote_ufrag: offer.remote_ufrag,
                ingest: None,
            },
            answer,
            ufrag,
        })
    }

    /// Our host candidates, then the answer to `offer`.
    fn answer(&self, rtc: &mut Rtc, offer: SdpOffer) -> Result<String, OfferError> {
        for addr in self.candidates.iter() {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        // The offer is network input: a panic inside the WebRTC stack must not take the
        // server's task down with it.
        let accepted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rtc.sdp_api().accept_offer(offer)
        }))
        .map_err(|_| OfferError::Rejected("the WebRTC stack could not process it".into()))?;
        Ok(accepted
            .map_err(|e| OfferError::Rejected(e.to_string()))?
            .to_sdp_string())
    }

    /// Answer a WHIP publisher's offer: receive H.264 (any profile it offers,
    /// packetization-mode 1) and Opus, muxed into TS through `guard`.
    pub fn accept_publisher(
        &self,
        id: String,
        guard: SourceGuard,
        offer: Offer,
        offered: &str,
    ) -> Result<Answered, OfferError> {
        let stream = guard.stream().clone();
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .set_dtls_cert(self.dtls_cert.clone())
            .enable_h264(true)
            .enable_opus(true, false)
            .build(Instant::now());
        let answer = self.answer(&mut rtc, offer.sdp)?;
        let receives = |kind: &str| sdp_media_receives(&answer, kind);
        let (video, audio) = (receives("video"), receives("audio"));
        if !video && !audio {
            return Err(OfferError::NoPublishableMedia {
                has: offered_codecs(offered),
            });
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Ok(Answered {
            session: NewSession {
                id,
                stream,
                rtc,
                remote_ufrag: offer.remote_ufrag,
                ingest: Some(publish::Ingest::new(guard, video, audio)),
            },
            answer,
            ufrag,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The host candidates every session announces.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    pub fn add(&self, s: NewSession) {
        self.live.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Add(Box::new(s)));
    }

    /// Sessions alive (viewers and publishers), without asking the loop.
    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Close every session (server shutdown); returns when they are closed.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Shutdown(tx));
        let _ = rx.await;
    }

    pub async fn patch(&self, id: &str, frag: SdpFrag) -> PatchReply {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Patch(id.to_string(), frag, tx));
        rx.await.unwrap_or(Err(PatchError::NotFound))
    }

    /// End a session; false if it did not exist.
    pub async fn delete(&self, id: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Delete(id.to_string(), tx));
        rx.await.unwrap_or(false)
    }

    /// Close every viewer of a stream (its source is gone for good).
    pub fn end_viewers(&self, stream: &Stream) {
        let _ = self.tx.send(Cmd::EndViewers(stream.id));
    }

    /// Sessions alive in the loop.
    pub async fn session_count(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Count(tx));
        rx.await.unwrap_or(0)
    }
}

impl FrameSink for Engine {
    fn frame(&self, stream: &Arc<Stream>, frame: Frame) {
        if stream.stats.viewers.load(Ordering::Relaxed) > 0 {
            let _ = self.tx.send(Cmd::Frame(stream.clone(), frame));
        }
    }
}

/// The shared media socket, with room for bursts (a new viewer's GOP backlog, many viewers).
fn bind_media_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel may cap these at net.core.{w,r}mem_max; best effort.
    let _ = socket.set_send_buffer_size(8 << 20);
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Host candidate addresses for a socket bound to `local`.
async fn announce_addresses(local: SocketAddr, hosts: &[String]) -> Vec<SocketAddr> {
    let port = local.port();
    let mut out = Vec::new();
    for h in hosts {
        match h.parse::<IpAddr>() {
            Ok(ip) => out.push(SocketAddr::new(ip, port)),
            Err(_) => match tokio::net::lookup_host((h.as_str(), port)).await {
                Ok(addrs) => out.extend(addrs.filter(|a| a.is_ipv4())),
                Err(e) => warn!(host = %h, error = %e, "--ice-host name does not resolve; skipped"),
            },
        }
    }
    if out.is_empty() {
        if local.ip().is_unspecified() {
            out.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
            if let Some(ip) = primary_ip() {
                out.push(SocketAddr::new(ip, port));
            }
        } else {
            out.push(local);
        }
    }
    out.dedup();
    out
}

/// The address of the default route (no packet is sent: connect() on UDP only picks a route).
fn primary_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

struct EventLoop {
    live: Arc<std::sync::atomic::AtomicUsize>,
    metrics: Arc<Metrics>,
    socket: UdpSocket,
    rx: mpsc::UnboundedReceiver<Cmd>,
    sessions: HashMap<String, Session>,
    by_addr: HashMap<SocketAddr, String>,
    /// Stream id → its WHIP publisher's session, for keyframe requests.
    publishers: HashMap<u64, String>,
    candidates: Arc<[SocketAddr]>,
    ice_timeout: Duration,
}

impl EventLoop {
    async fn run(mut self) {
        let mut buf = vec![0u8; 2048];
        loop {
            let next = self
                .sessions
                .values()
                .map(|s| s.next_timeout)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.on_cmd(cmd);
                    // Take whatever else is queued before the next timeout scan.
                    while let Ok(cmd) = self.rx.try_recv() {
                        self.on_cmd(cmd);
                    }
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => self.on_datagram(&buf[..n], source),
                    Err(e) => debug!(error = %e, "UDP receive"),
                },
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            self.on_timeouts(Instant::now());
            self.forward_keyframe_requests();
        }
    }

    /// Viewers' PLI/FIR go to the stream's WHIP publisher, if it has one (rate-limited there).
    fn forward_keyframe_requests(&mut self) {
        let mut wanted = Vec::new();
        for s in self.sessions.values_mut() {
            if s.take_keyframe_request() {
                wanted.push(s.stream.id);
            }
        }
        for stream in wanted {
            let Some(id) = self.publishers.get(&stream) else {
                continue;
            };
            if let Some(p) = self.sessions.get_mut(id) {
                if p.request_keyframe() {
                    self.metrics
                        .keyframes_requested_upstream
                        .fetch_add(1, Ordering::Relaxed);
                }
                p.poll(&self.socket);
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(n) => {
                let n = *n;
                let counter = match n.ingest {
                    Some(_) => &self.metrics.publishers_created,
                    None => &self.metrics.viewers_created,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if n.ingest.is_some() {
                    info!(stream = %n.stream.name, session = %short(&n.id), "publisher session created");
                    self.publishers.insert(n.stream.id, n.id.clone());
                } else {
                    info!(stream = %n.stream.name, session = %short(&n.id), "viewer session created");
                }
                let mut s = Session::new(n, self.ice_timeout, self.metrics.clone());
                s.poll(&self.socket);
                self.sessions.insert(s.id.clone(), s);
            }
            Cmd::Frame(stream, frame) => {
                for s in self.sessions.values_mut() {
                    if s.stream.id == stream.id && !s.is_publisher() {
                        s.write_frame(&frame);
                        s.poll(&self.socket);
                    }
                }
            }
            Cmd::Patch(id, frag, reply) => {
                let r = match self.sessions.get_mut(&id) {
                    Some(s) => {
                        let r = s.patch(frag, &self.candidates);
                        s.poll(&self.socket);
                        r
                    }
                    None => Err(PatchError::NotFound),
                };
                let _ = reply.send(r);
            }
            Cmd::Delete(id, reply) => {
                let found = self.remove(&id, "deleted by client");
                let _ = reply.send(found);
            }
            Cmd::Count(reply) => {
                let _ = reply.send(self.sessions.len());
            }
            Cmd::Shutdown(reply) => {
                let ids: Vec<String> = self.sessions.keys().cloned().collect();
                for id in ids {
                    self.remove(&id, "server shutting down");
                }
                let _ = reply.send(());
            }
            Cmd::EndViewers(stream) => {
                let ids: Vec<String> = self
                    .sessions
                    .values()
                    .filter(|s| s.stream.id == stream && !s.is_publisher())
                    .map(|s| s.id.clone())
                    .collect();
                for id in ids {
                    self.remove(&id, "the stream's source ended");
                }
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.destination_for(source),
                contents,
            },
        );
        // The session this address belongs to; a STUN check with another session's ufrag moves
        // the address. DTLS from a known address goes to its session even before str0m's own
        // ICE check has nominated the pair (else the first ClientHello is lost: +1 s start-up).
        let mapped = self
            .by_addr
            .get(&source)
            .filter(|id| self.sessions.contains_key(*id))
            .cloned();
        let id = match mapped {
            Some(id) if self.sessions[&id].rtc.accepts(&input) => id,
            mapped => match self.sessions.values().find(|s| s.rtc.accepts(&input)) {
                Some(s) => {
                    let id = s.id.clone();
                    self.by_addr.insert(source, id.clone());
                    id
                }
                None => match mapped {
                    Some(id) => id,
                    None => return,
                },
            },
        };
        if let Some(s) = self.sessions.get_mut(&id) {
            s.handle_input(input);
            s.poll(&self.socket);
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
                self.socket
                    .local_addr()
                    .expect("bound socket has an address")
            })
    }

    fn on_timeouts(&mut self, now: Instant) {
        let mut dead = Vec::new();
        for s in self.sessions.values_mut() {
            if s.next_timeout <= now {
                s.handle_input(Input::Timeout(now));
                s.poll(&self.socket);
                if s.has_queue() {
                    s.drain_queue(&self.socket);
                }
            }
            if let Some(why) = s.end_reason(now) {
                dead.push((s.id.clone(), why));
            }
        }
        for (id, why) in dead {
            self.remove(&id, why);
        }
    }

    fn remove(&mut self, id: &str, why: &'static str) -> bool {
        let Some(mut s) = self.sessions.remove(id) else {
            return false;
        };
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.metrics.session_closed(why);
        s.close(&self.socket);
        self.by_addr.retain(|_, v| v != id);
        if self.publishers.get(&s.stream.id).is_some_and(|p| p == id) {
            self.publishers.remove(&s.stream.id);
        }
        let role = if s.is_publisher() {
            "publisher"
        } else {
            "viewer"
        };
        info!(stream = %s.stream.name, session = %short(id), reason = why, "{role} session closed");
        true
    }
}

/// Session ids are secrets; logs show only a prefix.
fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}
