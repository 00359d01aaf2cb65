//! A WHEP viewer on webrtc-rs 0.21 (an independent WebRTC stack, so the server under test and
//! this client never share code).
//!
//! Non-trickle: the offer is sent once ICE gathering is complete. ICE is restricted to one host
//! candidate on 127.0.0.1 (no STUN, no mDNS), so it works in a sandbox without network. RTP is
//! read raw from each remote track (`TrackRemote::poll`), headers intact, with the local arrival
//! time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_HEVC, MIME_TYPE_OPUS,
};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{watch, Notify};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::Track;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCBundlePolicy, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::runtime::{Runtime, TokioRuntime};

use super::h264::h264_access_units;
use super::http::{self, HttpResponse, Url};
use super::runtime::DtlsGatedRuntime;
use super::RtpPkt;

/// H.264 `profile-level-id`s a Chromium offer carries for packetization-mode 1, without High
/// (Chrome also offers `640032`; leave it out so a High-only source must be handled explicitly).
pub const CHROMIUM_H264_PROFILES: [&str; 3] = ["42001f", "42e01f", "4d001f"];
/// Firefox's H.264 offer.
pub const FIREFOX_H264_PROFILES: [&str; 2] = ["42e01f", "42001f"];
/// Safari's H.264 offer.
pub const SAFARI_H264_PROFILES: [&str; 4] = ["640c1f", "42e01f", "640c34", "42e034"];

/// First payload type used for H.264 (one per offered profile, counting up, skipping 111).
pub const H264_FIRST_PT: u8 = 102;
/// Payload type offered for Opus.
pub const OPUS_PT: u8 = 111;
/// The payload type of H.265 in offers with [`WhepOptions::h265`].
pub const H265_PT: u8 = 49;

/// How long to wait for ICE gathering (loopback only, so it should be instant).
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);

/// When [`whep_receive`] stops reading (always at `seconds` at the latest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StopWhen {
    /// Read for the whole `seconds`.
    #[default]
    Elapsed,
    /// Stop once a complete access unit containing an IDR has arrived.
    FirstKeyframe,
    /// Stop after this many video access units (counted at marker bits).
    VideoAus(usize),
    /// Stop after this many audio packets.
    AudioPackets(usize),
}

/// What to offer and how long to watch.
#[derive(Debug, Clone)]
pub struct WhepOptions {
    /// Offer a recvonly H.264 m-line.
    pub video: bool,
    /// Offer a recvonly Opus m-line.
    pub audio: bool,
    /// How long to read RTP after the answer is applied (upper bound with [`StopWhen`]).
    pub seconds: f64,
    /// Sent as `Authorization: Bearer {token}`.
    pub token: Option<String>,
    /// Offered H.264 `profile-level-id`s, one payload type each, packetization-mode=1,
    /// level-asymmetry-allowed=1. Default [`CHROMIUM_H264_PROFILES`].
    pub h264_profiles: Vec<&'static str>,
    /// Offer H.265 too, first (as Chrome with a hardware HEVC decoder does: Main profile,
    /// Main tier, level-id 180, tx-mode SRST), payload type [`H265_PT`].
    pub h265: bool,
    /// Stop early on a condition.
    pub stop: StopWhen,
    /// Send `DELETE {Location}` at the end (default true). `false` simulates a viewer that
    /// just disappears.
    pub delete: bool,
    /// Extra request headers for the POST.
    pub headers: Vec<(String, String)>,
    /// How long the POST may take (the server may hold it until the stream is ready).
    pub post_timeout: Duration,
    /// Use webrtc-rs's plain Tokio runtime instead of [`DtlsGatedRuntime`]; the first RTP
    /// packets after the DTLS handshake may then be lost (see `runtime.rs`). Default false.
    pub plain_runtime: bool,
    /// The SRTP protection profiles the DTLS handshake offers; empty: webrtc-rs's default
    /// (AES-128-GCM, AES-256-GCM, AES-CM + HMAC-SHA1).
    pub srtp_profiles: Vec<SrtpProtectionProfile>,
    /// RTP header extensions offered (URIs), on video and audio.
    pub header_extensions: Vec<&'static str>,
}

impl Default for WhepOptions {
    fn default() -> Self {
        WhepOptions {
            video: true,
            audio: true,
            seconds: 3.0,
            token: None,
            h264_profiles: CHROMIUM_H264_PROFILES.to_vec(),
            h265: false,
            stop: StopWhen::Elapsed,
            delete: true,
            headers: Vec::new(),
            post_timeout: http::DEFAULT_TIMEOUT,
            plain_runtime: false,
            srtp_profiles: Vec::new(),
            header_extensions: Vec::new(),
        }
    }
}

/// Everything one WHEP viewing produced.
#[derive(Debug, Clone)]
pub struct WhepResult {
    /// Status of the POST.
    pub status: u16,
    /// `Location` of the session, resolved to an absolute URL.
    pub location: Option<String>,
    /// The answer SDP (empty unless 201).
    pub answer_sdp: String,
    /// The offer that was POSTed.
    pub offer_sdp: String,
    /// The whole POST response (headers such as `ETag`, `Link`, `Content-Type`).
    pub response: HttpResponse,
    /// RTP received on the video track, in arrival order.
    pub video: Vec<RtpPkt>,
    /// RTP received on the audio track, in arrival order.
    pub audio: Vec<RtpPkt>,
    /// Just before the POST was sent.
    pub posted_at: Instant,
    /// When the peer connection reached `Connected` (ICE + DTLS done).
    pub connected_at: Option<Instant>,
    /// Negotiated video MIME type as the remote track reports it (e.g. `video/H264`).
    pub video_pt_mime: Option<String>,
    /// Negotiated video fmtp line as the remote track reports it.
    pub video_fmtp: Option<String>,
    /// Negotiated audio MIME type (e.g. `audio/opus`).
    pub audio_mime: Option<String>,
    /// Body of a non-201 response.
    pub error_body: Option<String>,
    /// Status of the DELETE, if one was sent.
    pub delete_status: Option<u16>,
    /// The client could not use the answer (set_remote_description failed), or never connected.
    pub setup_error: Option<String>,
    /// Peer connection states in the order they were reported.
    pub states: Vec<RTCPeerConnectionState>,
}

impl WhepResult {
    /// Arrival time of the first video packet.
    pub fn first_video_at(&self) -> Option<Instant> {
        self.video.first().map(|p| p.at)
    }

    /// Arrival time of the first audio packet.
    pub fn first_audio_at(&self) -> Option<Instant> {
        self.audio.first().map(|p| p.at)
    }
}

/// What the event handler and the track readers have collected so far.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    pub video: Vec<RtpPkt>,
    pub audio: Vec<RtpPkt>,
    pub connected_at: Option<Instant>,
    pub video_mime: Option<String>,
    pub video_fmtp: Option<String>,
    pub audio_mime: Option<String>,
    pub states: Vec<RTCPeerConnectionState>,
    /// Number of video packets with the marker bit (≈ access units).
    pub video_markers: usize,
}

struct Shared {
    collected: Mutex<Collected>,
    changed: Notify,
    gathered: watch::Sender<bool>,
    /// The remote video track, once it has started (to send it RTCP such as a PLI).
    video_track: Mutex<Option<Arc<dyn TrackRemote>>>,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            collected: Mutex::new(Collected::default()),
            changed: Notify::new(),
            gathered: watch::Sender::new(false),
            video_track: Mutex::new(None),
        })
    }

    fn update(&self, f: impl FnOnce(&mut Collected)) {
        // Poisoning only follows a panic elsewhere in the test, which fails it anyway.
        f(&mut self.collected.lock().unwrap());
        self.changed.notify_waiters();
    }

    fn snapshot(&self) -> Collected {
        self.collected.lock().unwrap().clone()
    }
}

/// Event handler. `PeerConnectionEventHandler` is an `#[async_trait]` trait; the `async-trait`
/// crate is not our dependency, so these are written in the form the macro expands to.
struct Handler {
    shared: Arc<Shared>,
}

type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

impl PeerConnectionEventHandler for Handler {
    fn on_ice_gathering_state_change<'life0, 'async_trait>(
        &'life0 self,
        state: RTCIceGatheringState,
    ) -> BoxFut<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if state == RTCIceGatheringState::Complete {
                self.shared.gathered.send_replace(true);
            }
        })
    }

    fn on_connection_state_change<'life0, 'async_trait>(
        &'life0 self,
        state: RTCPeerConnectionState,
    ) -> BoxFut<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let now = Instant::now();
            self.shared.update(|c| {
                c.states.push(state);
                if state == RTCPeerConnectionState::Connected && c.connected_at.is_none() {
                    c.connected_at = Some(now);
                }
            });
        })
    }

    fn on_track<'life0, 'async_trait>(
        &'life0 self,
        track: Arc<dyn TrackRemote>,
    ) -> BoxFut<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let shared = Arc::clone(&self.shared);
            // Runs on the connection's driver: hand the reading to a task at once.
            tokio::spawn(read_track(track, shared));
        })
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let kind = track.kind().await;
    let is_video = kind == RtpCodecKind::Video;
    if is_video {
        *shared.video_track.lock().unwrap() = Some(Arc::clone(&track));
    }
    let mut codec_known = false;
    while let Some(evt) = track.poll().await {
        match evt {
            TrackRemoteEvent::OnRtpPacket(p) => {
                let at = Instant::now();
                let pkt = RtpPkt {
                    pt: p.header.payload_type,
                    seq: p.header.sequence_number,
                    ts: p.header.timestamp,
                    marker: p.header.marker,
                    ssrc: p.header.ssrc,
                    payload: p.payload.to_vec(),
                    at,
                    exts: (p.header.extensions.iter())
                        .map(|e| (e.id, e.payload.to_vec()))
                        .collect(),
                };
                let codec = if codec_known {
                    None
                } else {
                    codec_known = true;
                    track.codec(pkt.ssrc).await
                };
                shared.update(|c| {
                    if let Some(codec) = codec {
                        if is_video {
                            c.video_mime = Some(codec.mime_type.clone());
                            c.video_fmtp = Some(codec.sdp_fmtp_line.clone());
                        } else {
                            c.audio_mime = Some(codec.mime_type.clone());
                        }
                    }
                    if is_video {
                        c.video_markers += usize::from(pkt.marker);
                        c.video.push(pkt);
                    } else {
                        c.audio.push(pkt);
                    }
                });
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

fn h264_codec(profile: &str, pt: u8) -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
            ),
            rtcp_feedback: vec![
                fb("goog-remb", ""),
                fb("transport-cc", ""),
                fb("ccm", "fir"),
                fb("nack", ""),
                fb("nack", "pli"),
            ],
        },
        payload_type: pt,
    }
}

fn h265_codec() -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_HEVC.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: "level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST".to_owned(),
            rtcp_feedback: vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
        },
        payload_type: H265_PT,
    }
}

fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![RTCPFeedback {
                typ: "transport-cc".to_owned(),
                parameter: String::new(),
            }],
        },
        payload_type: OPUS_PT,
    }
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Builds the client's peer connection: H.264 (per `opts.h264_profiles`) and/or Opus, recvonly
/// transceivers (video first), default interceptors (NACK, RTCP reports, TWCC), one UDP socket
/// on 127.0.0.1, no ICE servers, no mDNS.
async fn build_pc(
    opts: &WhepOptions,
    shared: Arc<Shared>,
) -> Result<Arc<dyn PeerConnection>, String> {
    if !opts.video && !opts.audio {
        return Err("WhepOptions: neither video nor audio".into());
    }
    let mut media = MediaEngine::default();
    if opts.video && opts.h265 {
        media
            .register_codec(h265_codec(), RtpCodecKind::Video)
            .map_err(err("register H265"))?;
    }
    if opts.video {
        let mut pt = H264_FIRST_PT;
        for profile in &opts.h264_profiles {
            if pt == OPUS_PT {
                pt += 1;
            }
            media
                .register_codec(h264_codec(profile, pt), RtpCodecKind::Video)
                .map_err(err("register H264"))?;
            pt += 1;
        }
    }
    if opts.audio {
        media
            .register_codec(opus_codec(), RtpCodecKind::Audio)
            .map_err(err("register Opus"))?;
    }
    for uri in &opts.header_extensions {
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            let ext = RTCRtpHeaderExtensionCapability {
                uri: uri.to_string(),
            };
            media
                .register_header_extension(ext, kind, None)
                .map_err(err("register a header extension"))?;
        }
    }
    let registry =
        register_default_interceptors(Registry::new(), &mut media).map_err(err("interceptors"))?;
    let mut settings =
        SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled);
    if !opts.srtp_profiles.is_empty() {
        settings = settings.with_srtp_protection_profiles(opts.srtp_profiles.clone());
    }
    let settings = settings.build();
    let config = RTCConfigurationBuilder::new()
        .with_bundle_policy(RTCBundlePolicy::MaxBundle)
        .build();
    let runtime: Arc<dyn Runtime> = if opts.plain_runtime {
        Arc::new(TokioRuntime)
    } else {
        DtlsGatedRuntime::arc()
    };
    let pc = PeerConnectionBuilder::new()
        .with_runtime(runtime)
        .with_configuration(config)
        .with_media_engine(media)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { shared }))
        // A concrete address is bound as given, loopback included (a wildcard would skip it).
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .map_err(err("build peer connection"))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let recvonly = || {
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            ..Default::default()
        })
    };
    if opts.video {
        pc.add_transceiver_from_kind(RtpCodecKind::Video, recvonly())
            .await
            .map_err(err("add video transceiver"))?;
    }
    if opts.audio {
        pc.add_transceiver_from_kind(RtpCodecKind::Audio, recvonly())
            .await
            .map_err(err("add audio transceiver"))?;
    }
    Ok(pc)
}

/// Creates the offer, sets it locally and waits for ICE gathering to complete; returns the
/// complete local SDP (with candidates).
async fn gathered_offer(pc: &Arc<dyn PeerConnection>, shared: &Shared) -> Result<String, String> {
    let mut gathered = shared.gathered.subscribe();
    let offer = pc.create_offer(None).await.map_err(err("create_offer"))?;
    pc.set_local_description(offer)
        .await
        .map_err(err("set_local_description"))?;
    tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|g| *g))
        .await
        .map_err(|_| format!("ICE gathering not complete within {GATHER_TIMEOUT:?}"))?
        .map_err(err("gathering watch"))?;
    let local = pc
        .local_description()
        .await
        .ok_or("no local description after gathering")?;
    Ok(local.sdp)
}

/// The offer this client would POST for `opts` (complete, with its 127.0.0.1 candidate).
pub async fn offer_sdp(opts: &WhepOptions) -> Result<String, String> {
    let shared = Shared::new();
    let pc = build_pc(opts, Arc::clone(&shared)).await?;
    let sdp = gathered_offer(&pc, &shared).await;
    let _ = pc.close().await;
    sdp
}

/// A running WHEP viewing: the POST is done, media may be flowing.
pub struct WhepSession {
    /// The WHEP endpoint that was POSTed to.
    pub url: String,
    pub status: u16,
    pub location: Option<String>,
    pub answer_sdp: String,
    pub offer_sdp: String,
    pub response: HttpResponse,
    pub posted_at: Instant,
    pub error_body: Option<String>,
    pub setup_error: Option<String>,
    pub delete_status: Option<u16>,
    pc: Option<Arc<dyn PeerConnection>>,
    shared: Arc<Shared>,
    opts: WhepOptions,
}

impl WhepSession {
    /// Builds the peer connection, POSTs the gathered offer and applies the answer. A non-201
    /// response is not an `Err`: the session then has `status`/`error_body` and no media.
    /// `Err` is for failures on this side (bad URL, connection refused, timeouts).
    pub async fn start(url: &str, opts: &WhepOptions) -> Result<WhepSession, String> {
        let base = Url::parse(url)?;
        let shared = Shared::new();
        let pc = build_pc(opts, Arc::clone(&shared)).await?;
        let offer_sdp = match gathered_offer(&pc, &shared).await {
            Ok(sdp) => sdp,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };

        let auth = opts.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/sdp")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        for (n, v) in &opts.headers {
            headers.push((n, v));
        }
        let posted_at = Instant::now();
        let response = match http::request_with_timeout(
            "POST",
            url,
            &headers,
            offer_sdp.as_bytes(),
            opts.post_timeout,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let location = response.header("location").map(|l| base.join(l));
        let mut session = WhepSession {
            url: url.to_owned(),
            status: response.status,
            location,
            answer_sdp: String::new(),
            offer_sdp,
            response,
            posted_at,
            error_body: None,
            setup_error: None,
            delete_status: None,
            pc: None,
            shared,
            opts: opts.clone(),
        };
        if session.status != 201 {
            session.error_body = Some(session.response.text());
            let _ = pc.close().await;
            return Ok(session);
        }
        session.answer_sdp = session.response.text();
        let applied = match RTCSessionDescription::answer(session.answer_sdp.clone()) {
            Ok(answer) => pc.set_remote_description(answer).await,
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => session.pc = Some(pc),
            Err(e) => {
                session.setup_error = Some(format!("set_remote_description: {e}"));
                let _ = pc.close().await;
            }
        }
        Ok(session)
    }

    /// Copy of what has arrived so far.
    pub fn collected(&self) -> Collected {
        self.shared.snapshot()
    }

    /// Waits until `pred` holds on what has arrived (checked on every packet and state change),
    /// or `timeout` passes. Returns whether `pred` held.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Collected) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&self.shared.collected.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.shared.collected.lock().unwrap());
            }
        }
    }

    /// Sends a PLI (RFC 4585 picture loss indication) for the received video, as a decoder that
    /// lost its reference would. Fails when no video has arrived yet.
    pub async fn send_pli(&self) -> Result<(), String> {
        let track = self
            .shared
            .video_track
            .lock()
            .unwrap()
            .clone()
            .ok_or("no video track yet")?;
        let media_ssrc = *track
            .ssrcs()
            .await
            .first()
            .ok_or("video track has no SSRC")?;
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        track
            .write_rtcp(vec![Box::new(pli)])
            .await
            .map_err(|e| format!("write PLI: {e}"))
    }

    /// Waits for `Connected`; returns when it was reached.
    pub async fn wait_connected(&self, timeout: Duration) -> Option<Instant> {
        self.wait_until(timeout, |c| c.connected_at.is_some()).await;
        self.shared.snapshot().connected_at
    }

    /// Waits for the options' [`StopWhen`] condition, at most `seconds`.
    pub async fn wait_stop(&self) {
        let limit = Duration::from_secs_f64(self.opts.seconds.max(0.0));
        if self.pc.is_none() {
            return;
        }
        match self.opts.stop {
            StopWhen::Elapsed => tokio::time::sleep(limit).await,
            StopWhen::FirstKeyframe => {
                self.wait_until(limit, |c| {
                    c.video_markers > 0
                        && h264_access_units(&c.video)
                            .iter()
                            .any(|au| au.complete && au.is_keyframe())
                })
                .await;
            }
            StopWhen::VideoAus(n) => {
                self.wait_until(limit, |c| c.video_markers >= n).await;
            }
            StopWhen::AudioPackets(n) => {
                self.wait_until(limit, |c| c.audio.len() >= n).await;
            }
        }
    }

    /// Sends `DELETE {Location}` (once); returns its status.
    pub async fn delete(&mut self) -> Option<u16> {
        if self.delete_status.is_none() {
            if let Some(loc) = &self.location {
                let auth = self.opts.token.as_ref().map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> = auth
                    .as_deref()
                    .map(|a| vec![("Authorization", a)])
                    .unwrap_or_default();
                self.delete_status = http::request("DELETE", loc, &headers, b"")
                    .await
                    .ok()
                    .map(|r| r.status);
            }
        }
        self.delete_status
    }

    /// Closes the peer connection (no DELETE).
    pub async fn close(&mut self) {
        if let Some(pc) = self.pc.take() {
            let _ = pc.close().await;
        }
    }

    /// DELETEs (if `opts.delete`), closes, and returns everything collected.
    pub async fn finish(mut self) -> WhepResult {
        if self.opts.delete && self.status == 201 {
            self.delete().await;
        }
        self.close().await;
        let c = self.shared.snapshot();
        let setup_error = self.setup_error.clone().or_else(|| {
            (self.status == 201 && c.connected_at.is_none())
                .then(|| "peer connection never reached Connected".to_owned())
        });
        WhepResult {
            status: self.status,
            location: self.location,
            answer_sdp: self.answer_sdp,
            offer_sdp: self.offer_sdp,
            response: self.response,
            video: c.video,
            audio: c.audio,
            posted_at: self.posted_at,
            connected_at: c.connected_at,
            video_pt_mime: c.video_mime,
            video_fmtp: c.video_fmtp,
            audio_mime: c.audio_mime,
            error_body: self.error_body,
            delete_status: self.delete_status,
            setup_error,
            states: c.states,
        }
    }
}

/// POSTs a recvonly offer (H.264 and/or Opus per `opts`) to `url`, reads RTP on both tracks for
/// `opts.seconds` (or until `opts.stop`), then DELETEs the session and closes.
///
/// A non-201 answer is returned as a result with `status`/`error_body` set, not as `Err`.
pub async fn whep_receive(url: &str, opts: WhepOptions) -> Result<WhepResult, String> {
    let session = WhepSession::start(url, &opts).await?;
    session.wait_stop().await;
    Ok(session.finish().await)
}

/// One codec from an SDP's `a=rtpmap`/`a=fmtp` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpCodec {
    /// `audio` or `video` (the m-line's media).
    pub media: String,
    /// The m-line's port (0 = rejected).
    pub port: u16,
    /// The m-line's direction attribute if any (`recvonly`, `sendonly`, …).
    pub direction: Option<String>,
    pub pt: u8,
    /// e.g. `H264`, `opus`.
    pub encoding: String,
    pub clock_rate: u32,
    pub fmtp: Option<String>,
}

/// Every codec of every m-line in `sdp`, in order (m-lines without rtpmap give nothing).
pub fn sdp_codecs(sdp: &str) -> Vec<SdpCodec> {
    let mut out = Vec::new();
    let mut media = String::new();
    let mut port = 0u16;
    let mut direction: Option<String> = None;
    let mut section: Vec<SdpCodec> = Vec::new();
    let flush = |section: &mut Vec<SdpCodec>, out: &mut Vec<SdpCodec>, dir: &Option<String>| {
        for mut c in section.drain(..) {
            c.direction = dir.clone();
            out.push(c);
        }
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            flush(&mut section, &mut out, &direction);
            let mut it = m.split_whitespace();
            media = it.next().unwrap_or("").to_owned();
            port = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            direction = None;
        } else if let Some(d) = line.strip_prefix("a=") {
            if matches!(d, "sendrecv" | "sendonly" | "recvonly" | "inactive") {
                direction = Some(d.to_owned());
            } else if let Some(r) = d.strip_prefix("rtpmap:") {
                let (pt, rest) = r.split_once(' ').unwrap_or((r, ""));
                let mut parts = rest.split('/');
                section.push(SdpCodec {
                    media: media.clone(),
                    port,
                    direction: None,
                    pt: pt.parse().unwrap_or(0),
                    encoding: parts.next().unwrap_or("").to_owned(),
                    clock_rate: parts.next().and_then(|c| c.parse().ok()).unwrap_or(0),
                    fmtp: None,
                });
            } else if let Some(f) = d.strip_prefix("fmtp:") {
                let (pt, params) = f.split_once(' ').unwrap_or((f, ""));
                let pt: u8 = pt.parse().unwrap_or(0);
                if let Some(c) = section.iter_mut().find(|c| c.pt == pt) {
                    c.fmtp = Some(params.to_owned());
                }
            }
        }
    }
    flush(&mut section, &mut out, &direction);
    out
}
