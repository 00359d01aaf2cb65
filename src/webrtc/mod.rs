//! WebRTC sessions (str0m), all on one UDP port, driven by one event loop per core.
//!
//! The HTTP side builds each session's `Rtc` from the offer and hands it to a shard (see
//! `shard`) as a command; the shard owns the `Rtc`, routes datagrams to it by source address
//! (or by ICE ufrag for the first packet from an address), writes the stream's frames into it
//! and sends what it produces. Nothing here blocks: sockets are non-blocking and every session
//! is sans-IO.

mod codecs;
mod depack;
mod direct;
pub mod jitter;
mod outbox;
pub mod publish;
mod sdp;
pub mod sdpfrag;
mod session;
mod shard;
mod socket;
mod srtp;
pub mod turn;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::rtp::Extension;
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::metrics::Metrics;
use crate::stream::frame::{Frame, FrameSink};
use crate::stream::{SourceGuard, Stream};
use crate::ts::Codec;
use outbox::Outbox;
pub use sdpfrag::{SdpFrag, SdpFragError};
use shard::{Router, Shard};

/// A session's URL: `/whep/{stream}/{id}` for a viewer, `/whip/{stream}/{id}` for a
/// publisher. A session answers only under the URL it was created with.
#[derive(Debug, Clone)]
pub struct SessionUrl {
    pub id: String,
    /// The stream name in the URL (a publisher with a pipeline writes into another stream).
    pub stream: String,
    pub publisher: bool,
}

/// Whether `mid` is a video section str0m accepted (it then sends the stream's video).
fn rtc_sends_video(rtc: &Rtc, mid: &str) -> bool {
    rtc.media(mid.into())
        .is_some_and(|m| m.kind() == str0m::media::MediaKind::Video)
}

/// A session ready to join the loop.
pub struct NewSession {
    pub id: String,
    /// The stream name of its URL (see [`SessionUrl`]).
    pub url_stream: String,
    pub stream: Arc<Stream>,
    pub rtc: Rtc,
    pub remote_ufrag: Option<String>,
    /// Set for a WHIP publisher.
    pub ingest: Option<publish::Ingest>,
    /// A viewer's SRTP keys, for the direct send path.
    pub keys: Option<srtp::KeySlot>,
    /// A viewer's mids that carry media (one per kind at most); its other sections were
    /// answered inactive. Empty for a publisher (it sends on what it negotiated).
    pub active: Vec<String>,
    /// The HTTP client's address (the admin API and events show it).
    pub client_ip: Option<std::net::IpAddr>,
    /// The place the session takes under its address's cap (`--max-per-ip`): given back when
    /// the session ends, however it ends.
    pub ip_slot: Option<crate::limits::IpSlot>,
}

/// A session as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub role: &'static str,
    /// The address that made the WHEP/WHIP request.
    pub client_ip: Option<String>,
    /// Where its media goes (the selected ICE pair's remote address).
    pub media_address: Option<String>,
    pub since_seconds: f64,
    pub connected: bool,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// From the viewer's RTCP receiver reports (video).
    pub loss: Option<f32>,
    pub rtt_ms: Option<f64>,
    pub codecs: Vec<String>,
}

/// How the engine runs its sessions (from `serve`'s flags).
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// ICE/DTLS setup deadline and disconnect timeout.
    pub ice_timeout: Duration,
    /// Media threads (shards); 0: one per core.
    pub threads: usize,
    /// Viewers' video goes the direct way (see `direct`).
    pub direct_send: bool,
    /// A new viewer's GOP backlog (instant start) is paced at this many bytes per second.
    pub backlog_rate: u64,
    /// What viewers that offer the playout-delay header extension are told; None: not
    /// negotiated.
    pub playout_delay: Option<PlayoutDelay>,
    /// WHIP publishers' jitter buffer (`--whip-jitter-ms`).
    pub whip_jitter: jitter::JitterConfig,
}

/// The playout-delay header extension's bounds on a viewer's jitter buffer, in milliseconds
/// (sent in 10 ms steps, at most 40950).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutDelay {
    pub min_ms: u16,
    pub max_ms: u16,
}

impl std::str::FromStr for PlayoutDelay {
    type Err = String;

    /// `MIN,MAX` in ms, or `off`.
    fn from_str(s: &str) -> Result<Self, String> {
        let rule = "MIN,MAX in milliseconds, 0 <= MIN <= MAX <= 40950 (e.g. 0,1000), or off";
        let (min, max) = s.split_once(',').ok_or(format!("{s:?}: {rule}"))?;
        let ms = |v: &str| {
            v.trim()
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: {rule}"))
        };
        let (min_ms, max_ms) = (ms(min)?, ms(max)?);
        if min_ms > max_ms || max_ms > 40_950 {
            return Err(format!("{s:?}: {rule}"));
        }
        Ok(PlayoutDelay { min_ms, max_ms })
    }
}

impl PlayoutDelay {
    /// MIN and MAX in the extension's 10 ms units (MAX rounded up).
    pub fn units(self) -> (u16, u16) {
        (self.min_ms / 10, self.max_ms.div_ceil(10))
    }

    /// The extension's 3 bytes: MIN and MAX in 10 ms units, 12 bits each.
    pub fn bytes(self) -> [u8; 3] {
        let (min, max) = self.units();
        [
            (min >> 4) as u8,
            (min << 4) as u8 | (max >> 8) as u8,
            max as u8,
        ]
    }
}

/// A parsed SDP offer, with what we need from it besides str0m's view.
pub struct Offer {
    sdp: SdpOffer,
    text: String,
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
        "the offer has no media this stream can send ({why}): the stream has {has}, the offer \
         has {offered}; offer recvonly H.264 (packetization-mode=1), H.265 for an H.265 \
         stream, and/or Opus"
    )]
    NoCommonMedia {
        has: String,
        offered: String,
        why: String,
    },
    #[error(
        "tsbridge takes H.264 (packetization-mode=1) and Opus; the offer has {has}: \
         send H.264 and/or Opus"
    )]
    NoPublishableMedia { has: String },
}

impl Offer {
    /// Whether it offers `codec` (an `a=rtpmap` encoding name, any case: "H265").
    pub fn has_codec(&self, codec: &str) -> bool {
        self.text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("a=rtpmap:"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|c| c.split('/').next())
            .any(|c| c.eq_ignore_ascii_case(codec))
    }

    pub fn parse(sdp: &str) -> Result<Offer, OfferError> {
        let parsed =
            SdpOffer::from_sdp_string(sdp).map_err(|e| OfferError::Malformed(e.to_string()))?;
        sdp::check_payload_types(sdp)?;
        let remote_ufrag = sdp
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
            .map(str::to_string);
        Ok(Offer {
            sdp: parsed,
            text: sdp.to_string(),
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

/// A PATCH of a session: the sdpfrag and the request's `If-Match` (the session's ETag is its
/// current ICE ufrag, quoted).
#[derive(Debug)]
pub struct Patch {
    pub frag: SdpFrag,
    pub if_match: Option<String>,
}

/// Why a PATCH failed.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("no such session")]
    NotFound,
    #[error("{0}")]
    Bad(String),
    /// `If-Match` names another ETag than the session's (RFC 9725 §4.3.1).
    #[error("If-Match {0} does not match the session's ETag (it changes at every ICE restart)")]
    PreconditionFailed(String),
    /// An ICE restart must say which session state it restarts (`If-Match: *` or the ETag).
    #[error("an ICE restart needs If-Match (the session's ETag, or *)")]
    PreconditionRequired,
}

/// The answer to a PATCH: nothing (trickle) or an sdpfrag (ICE restart).
pub type PatchReply = Result<Option<String>, PatchError>;

enum Cmd {
    Add(Box<NewSession>),
    Frame(Arc<Stream>, Frame),
    /// A datagram that reached another shard's socket.
    Datagram(SocketAddr, Vec<u8>, Instant),
    /// A viewer on another shard wants a keyframe from this stream's publisher.
    KeyframeWanted(u64),
    Patch(SessionUrl, Patch, oneshot::Sender<PatchReply>),
    /// End a session, for this reason (logs, metrics, the event hook).
    Delete(SessionUrl, &'static str, oneshot::Sender<bool>),
    Count(oneshot::Sender<usize>),
    EndViewers(u64),
    /// Every session (viewers and publisher) under a stream name; how many ended.
    EndStream(String, oneshot::Sender<usize>),
    /// The sessions under a stream name.
    List(String, oneshot::Sender<Vec<SessionInfo>>),
    /// A new PMT changed the stream's tracks.
    TracksChanged(Arc<Stream>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the engine: cheap to clone, used by HTTP handlers and media tasks.
#[derive(Clone)]
pub struct Engine {
    /// Each shard's command queue.
    shards: Arc<[mpsc::UnboundedSender<Cmd>]>,
    router: Arc<Router>,
    local: SocketAddr,
    candidates: Arc<[SocketAddr]>,
    /// One certificate for every session: generating one per session costs milliseconds.
    dtls_cert: DtlsCert,
    /// Sessions handed to the loop and not yet closed.
    live: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: Arc<Metrics>,
    opts: EngineOptions,
    /// Where session events go (`--event-hook`).
    pub events: crate::events::EventSink,
}

impl Engine {
    /// Bind the UDP sockets and start the shards, `opts.threads` of them (0: one per core).
    /// `hosts` are the addresses to announce (IPs or DNS names); empty means the bound address
    /// (loopback + primary address for a wildcard).
    pub async fn start(
        bind: SocketAddr,
        hosts: &[String],
        opts: EngineOptions,
        events: crate::events::EventSink,
    ) -> std::io::Result<Engine> {
        let provider = str0m::crypto::from_feature_flags();
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| std::io::Error::other("cannot generate a DTLS certificate"))?;
        provider.install_process_default();
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let first = socket::bind_media_socket(bind)?;
        let local = first
            .local_addr()?
            .as_socket()
            .expect("a UDP socket has an IP address");
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(socket::bind_media_socket(local)?);
        }
        let candidates = socket::announce_addresses(local, hosts).await;
        info!(udp = %local, candidates = ?candidates, threads, direct_send = opts.direct_send,
            backlog_mbit_s = opts.backlog_rate * 8 / 1_000_000, "WebRTC media socket");
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let peers: Arc<[_]> = txs.iter().map(|tx| tx.downgrade()).collect();
        let engine = Engine {
            shards: txs.into(),
            router: Arc::new(Router::new(threads)),
            local,
            candidates: candidates.into(),
            dtls_cert,
            live: Default::default(),
            metrics: Default::default(),
            opts,
            events,
        };
        let shared = shard::Shared {
            router: engine.router.clone(),
            peers,
            live: engine.live.clone(),
            metrics: engine.metrics.clone(),
            candidates: engine.candidates.clone(),
            opts,
            events: engine.events.clone(),
        };
        for (index, (socket, rx)) in sockets.into_iter().zip(rxs).enumerate() {
            let shared = shared.clone();
            let shard = |socket| {
                let out = Outbox::new(Arc::new(socket), shared.metrics.clone());
                Shard::new(index, shared, rx, out)
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // The socket joins the shard's own runtime (its reactor), so it is made there.
            let shard = {
                let _in_rt = rt.enter();
                shard(UdpSocket::from_std(socket.into())?)
            };
            std::thread::Builder::new()
                .name(format!("tsbridge-media-{index}"))
                .spawn(move || rt.block_on(shard.run()))?;
        }
        Ok(engine)
    }

    /// Answer `offer` for a viewer of `stream`, sending exactly the tracks in `tracks`: an
    /// offered m-line the stream has no track for is rejected in the answer.
    pub fn accept(
        &self,
        url: SessionUrl,
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
            .set_stats_interval(Some(Duration::from_secs(1)))
            // Only the MID extension (BUNDLE demux). Transport-wide sequence numbers and
            // abs-send-time feed a sender's bandwidth estimate; a TS source cannot change its
            // bitrate, so they would cost a header write and a TWCC register entry per packet
            // per viewer (and the viewers' feedback) for nothing.
            .clear_extension_map()
            .set_extension(4, Extension::RtpMid)
            // When offered: the frame's ingest time (receivers compute glass-to-glass delay),
            // and bounds on the viewer's jitter buffer (a live source wants it small).
            .set_extension(2, Extension::AbsoluteCaptureTime);
        if self.opts.playout_delay.is_some() {
            cfg = cfg.set_extension(6, Extension::PlayoutDelay);
        }
        cfg = codecs::viewer_codecs(cfg, tracks, video, status.has_audio());
        // The direct path answers NACKs itself: it reads them from str0m's raw RTCP events.
        let (mut rtc, keys) = match self.opts.direct_send {
            true => srtp::build(cfg.enable_raw_packets(true), Instant::now()),
            false => (cfg.build(Instant::now()), None),
        };
        let answer = self.answer(&mut rtc, offer.sdp)?;
        let wanted = |kind: &str| match kind {
            "video" => tracks.video().is_some(),
            _ => status.has_audio(),
        };
        let shaped = sdp::shape_answer(&answer, &offer.text, wanted);
        // A viewer that did not take the stream's H.265 video gets its other tracks.
        let h265_refused = tracks.video().is_some_and(|t| t.codec == Codec::H265)
            && !shaped.active.iter().any(|mid| rtc_sends_video(&rtc, mid));
        let why = match h265_refused {
            true => match video.map(|v| v.profile) {
                Some(p) => format!(
                    "the stream's video is H.265 ({p}) and the offer has no H.265 of that \
                     profile and tier (Chrome 136+ with a hardware decoder, Safari and \
                     GStreamer offer it)"
                ),
                None => "the stream's video is H.265".into(),
            },
            false => "the stream has no such track".into(),
        };
        if shaped.active.is_empty() {
            let has: Vec<&str> = tracks.tracks.iter().map(|t| t.codec_name()).collect();
            return Err(OfferError::NoCommonMedia {
                has: has.join(", "),
                offered: sdp::offered_codecs(&offer.text),
                why,
            });
        }
        if !shaped.idle.is_empty() {
            info!(stream = %stream.name, idle = ?shaped.idle, "the viewer gets no media on some of its offered sections ({why}): answered inactive");
        }
        let answer = shaped.answer;
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Ok(Answered {
            session: NewSession {
                id: url.id,
                url_stream: url.stream,
                stream,
                rtc,
                remote_ufrag: offer.remote_ufrag,
                ingest: None,
                keys,
                active: shaped.active,
                client_ip: None,
                ip_slot: None,
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
        url: SessionUrl,
        guard: SourceGuard,
        offer: Offer,
    ) -> Result<Answered, OfferError> {
        let stream = guard.stream().clone();
        let offer_text = offer.text;
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .set_dtls_cert(self.dtls_cert.clone())
            .enable_h264(true)
            .enable_opus(true, false)
            // Our jitter buffer and depacketizer take the RTP (see `publish`); str0m still
            // NACKs holes, unwraps RTX and drops duplicates, and counts the NACKs it sent.
            .set_rtp_mode(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(Instant::now());
        let answer = self.answer(&mut rtc, offer.sdp)?;
        // Sections str0m rejected (a codec it does not take) are answered inactive, as for
        // viewers, so that every stack accepts the answer.
        let answer = sdp::shape_answer(&answer, &offer_text, |_| true).answer;
        let receives = |kind: &str| sdp::media_receives(&answer, kind);
        let (video, audio) = (receives("video"), receives("audio"));
        if !video && !audio {
            return Err(OfferError::NoPublishableMedia {
                has: sdp::offered_codecs(&offer_text),
            });
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Ok(Answered {
            session: NewSession {
                id: url.id,
                url_stream: url.stream,
                stream,
                rtc,
                remote_ufrag: offer.remote_ufrag,
                ingest: Some(publish::Ingest::new(
                    guard,
                    video,
                    audio,
                    self.opts.whip_jitter,
                )),
                keys: None,
                active: Vec::new(),
                client_ip: None,
                ip_slot: None,
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

    pub fn add(&self, mut s: NewSession) {
        self.live.fetch_add(1, Ordering::Relaxed);
        let ufrag = s.rtc.direct_api().local_ice_credentials().ufrag;
        let shard = self.router.place(&s.id, &ufrag);
        let _ = self.shards[shard].send(Cmd::Add(Box::new(s)));
    }

    /// Send a command to every shard.
    fn broadcast(&self, mut cmd: impl FnMut() -> Cmd) {
        for tx in self.shards.iter() {
            let _ = tx.send(cmd());
        }
    }

    /// The shard holding session `id`.
    fn shard_of(&self, id: &str) -> Option<&mpsc::UnboundedSender<Cmd>> {
        self.router.shard_of(id).map(|i| &self.shards[i])
    }

    /// Sessions alive (viewers and publishers), without asking the loop.
    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Close every session (server shutdown); returns when they are closed.
    pub async fn shutdown(&self) {
        let mut replies = Vec::new();
        self.broadcast(|| {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            Cmd::Shutdown(tx)
        });
        for rx in replies {
            let _ = rx.await;
        }
    }

    pub async fn patch(&self, url: SessionUrl, patch: Patch) -> PatchReply {
        let Some(shard) = self.shard_of(&url.id) else {
            return Err(PatchError::NotFound);
        };
        let (tx, rx) = oneshot::channel();
        let _ = shard.send(Cmd::Patch(url, patch, tx));
        rx.await.unwrap_or(Err(PatchError::NotFound))
    }

    /// End a session; false if it does not exist under that URL.
    pub async fn delete(&self, url: SessionUrl) -> bool {
        self.end(url, "deleted by client").await
    }

    /// End a session for `why`; false if it does not exist under that URL.
    pub async fn end(&self, url: SessionUrl, why: &'static str) -> bool {
        let Some(shard) = self.shard_of(&url.id) else {
            return false;
        };
        let (tx, rx) = oneshot::channel();
        let _ = shard.send(Cmd::Delete(url, why, tx));
        rx.await.unwrap_or(false)
    }

    /// Close every viewer of a stream (its source is gone for good).
    pub fn end_viewers(&self, stream: &Stream) {
        self.broadcast(|| Cmd::EndViewers(stream.id));
    }

    /// End every session under stream name `name` (the admin deleted the stream); how many.
    pub async fn end_stream(&self, name: &str) -> usize {
        let mut replies = Vec::new();
        self.broadcast(|| {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            Cmd::EndStream(name.to_owned(), tx)
        });
        let mut n = 0;
        for rx in replies {
            n += rx.await.unwrap_or(0);
        }
        n
    }

    /// The sessions under stream name `name`, oldest first.
    pub async fn sessions(&self, name: &str) -> Vec<SessionInfo> {
        let mut replies = Vec::new();
        self.broadcast(|| {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            Cmd::List(name.to_owned(), tx)
        });
        let mut all = Vec::new();
        for rx in replies {
            all.extend(rx.await.unwrap_or_default());
        }
        all.sort_by(|a, b| b.since_seconds.total_cmp(&a.since_seconds));
        all
    }

    /// Sessions alive in the shards.
    pub async fn session_count(&self) -> usize {
        let mut replies = Vec::new();
        self.broadcast(|| {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            Cmd::Count(tx)
        });
        let mut n = 0;
        for rx in replies {
            n += rx.await.unwrap_or(0);
        }
        n
    }

    /// How many media threads (shards) run.
    pub fn threads(&self) -> usize {
        self.router.shards()
    }
}

impl FrameSink for Engine {
    fn frame(&self, stream: &Arc<Stream>, frame: Frame) {
        if stream.stats.viewers.load(Ordering::Relaxed) > 0 {
            self.broadcast(|| Cmd::Frame(stream.clone(), frame.clone()));
        }
    }

    fn tracks_changed(&self, stream: &Arc<Stream>) {
        if stream.stats.viewers.load(Ordering::Relaxed) > 0 {
            self.broadcast(|| Cmd::TracksChanged(stream.clone()));
        }
    }
}

/// Session ids are secrets; logs show only a prefix.
fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_OFFER: &str = include_str!("../../fuzz/seeds/sdp_offer/chromium_whep_recvonly");

    #[test]
    fn a_payload_type_with_two_meanings_is_a_bad_offer_not_a_panic() {
        assert!(Offer::parse(CHROMIUM_OFFER).is_ok());
        // The audio section also claims video's PT 102 (the fuzzer's find: str0m panicked).
        let twice = CHROMIUM_OFFER.replace(
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:111 opus/48000/2\r\na=rtpmap:102 H264/90000",
        );
        match Offer::parse(&twice) {
            Err(OfferError::Malformed(why)) => assert!(why.contains("payload type 102"), "{why}"),
            other => panic!("{:?}", other.err()),
        }
        // The fuzzer's own input.
        let found = include_bytes!("../../fuzz/seeds/sdp_offer/regression-pt-in-two-sections");
        assert!(Offer::parse(&String::from_utf8_lossy(found)).is_err());
    }
}
