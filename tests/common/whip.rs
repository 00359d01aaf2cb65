//! A WHIP publisher on webrtc-rs 0.21 (the same independent stack as the WHEP viewer).
//!
//! [`whip_publish`] demuxes a `testdata/*.ts` file with the project's own demuxer into H.264
//! access units and Opus packets, POSTs a sendonly offer (non-trickle, one host candidate on
//! 127.0.0.1, H.264 packetization-mode=1 with the file's `profile-level-id`, Opus), applies the
//! answer and then sends the media in real time, paced by its timestamps, looping.
//!
//! The peer connection runs on a Tokio runtime of its own, on its own thread, so that
//! [`WhipPublisher::stop`] can make it vanish the way a crashed process does: no DELETE, no DTLS
//! close, no more STUN. Inbound keyframe requests (PLI/FIR) are counted from the video sender's
//! RTCP ([`TrackLocal::poll`]); an interceptor at the end of the chain marks them for the
//! application (webrtc-rs hands inbound RTCP to nobody otherwise).

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_PCMU, MIME_TYPE_VP8,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{oneshot, watch};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCBundlePolicy, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

use tsbridge::codec::h264::H264Assembler;
use tsbridge::codec::opus;
use tsbridge::ts::{DemuxEvent, Demuxer};

use super::http::{self, HttpResponse, Url};
use super::runtime::DtlsGatedRuntime;

/// Payload type offered for H.264.
pub const WHIP_H264_PT: u8 = 102;
/// Payload type offered for VP8.
pub const WHIP_VP8_PT: u8 = 96;
/// Payload type offered for Opus.
pub const WHIP_OPUS_PT: u8 = 111;
/// Payload type offered for PCMU.
pub const WHIP_PCMU_PT: u8 = 0;
/// `profile-level-id` offered when the file's SPS does not say.
pub const DEFAULT_H264_PROFILE: &str = "42e01f";

const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A codec to put in the offer ([`WhipOptions::codecs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferCodec {
    /// H.264, packetization-mode=1, with this `profile-level-id` (`None`: the file's, else
    /// [`DEFAULT_H264_PROFILE`]).
    H264(Option<String>),
    Vp8,
    Opus,
    Pcmu,
}

impl OfferCodec {
    fn kind(&self) -> RtpCodecKind {
        match self {
            OfferCodec::H264(_) | OfferCodec::Vp8 => RtpCodecKind::Video,
            OfferCodec::Opus | OfferCodec::Pcmu => RtpCodecKind::Audio,
        }
    }
}

/// What to offer and send.
#[derive(Debug, Clone)]
pub struct WhipOptions {
    /// Send the file's video (H.264 unless `codecs` says otherwise).
    pub video: bool,
    /// Send the file's audio (Opus unless `codecs` says otherwise).
    pub audio: bool,
    /// The codecs to offer, overriding `video`/`audio`: one sendonly m-line per kind that has a
    /// codec here, the first codec of each kind being the one the track is created with. `None`:
    /// H.264 (the file's profile) if `video`, Opus if `audio`.
    pub codecs: Option<Vec<OfferCodec>>,
    /// Sent as `Authorization: Bearer {token}`.
    pub token: Option<String>,
    /// Start again at the end of the file (timestamps keep counting up).
    pub looping: bool,
    /// How long the POST may take.
    pub post_timeout: Duration,
    /// Extra request headers for the POST.
    pub headers: Vec<(String, String)>,
    /// Wait this long after `Connected` before the first frame is sent.
    pub media_delay: Duration,
    /// Send the media to this address instead of the answer's candidates (a lossy relay in
    /// front of the server's ICE port): each candidate's address in the answer is replaced.
    pub media_via: Option<std::net::SocketAddr>,
}

impl Default for WhipOptions {
    fn default() -> Self {
        WhipOptions {
            video: true,
            audio: true,
            codecs: None,
            token: None,
            looping: true,
            post_timeout: http::DEFAULT_TIMEOUT,
            headers: Vec::new(),
            media_delay: Duration::ZERO,
            media_via: None,
        }
    }
}

/// The media of a TS file, ready to send: timestamps relative to each track's first frame.
#[derive(Debug, Clone, Default)]
pub struct FileMedia {
    /// H.264 access units (Annex B, SPS/PPS before IDRs): (90 kHz ticks until the next AU, data,
    /// keyframe).
    pub video: Vec<(u64, Bytes, bool)>,
    /// Opus packets: (48 kHz samples, data).
    pub audio: Vec<(u64, Bytes)>,
    /// `profile-level-id` from the file's SPS.
    pub profile_level_id: Option<String>,
}

impl FileMedia {
    /// Demuxes `path` with tsbridge's own demuxer (`ts::Demuxer`, `H264Assembler`,
    /// `opus::split_pes`).
    pub fn load(path: &Path) -> Result<FileMedia, String> {
        let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Ok(Self::from_ts(&data))
    }

    /// Demuxes TS bytes (whatever the chunking, at whatever packet it starts).
    pub fn from_ts(data: &[u8]) -> FileMedia {
        let mut demux = Demuxer::new();
        let mut events = Vec::new();
        for c in data.chunks(64 * 1024) {
            demux.push(c, &mut events);
        }
        demux.flush(&mut events);
        let mut h264 = H264Assembler::new();
        let mut aus = Vec::new();
        let mut tracks = None;
        let mut out = FileMedia::default();
        for e in &events {
            match e {
                DemuxEvent::Tracks(t) => tracks = Some(t.clone()),
                DemuxEvent::Pes(pes) => {
                    let Some(t) = &tracks else { continue };
                    if t.video().map(|v| v.pid) == Some(pes.pid) {
                        h264.push(pes, &mut aus);
                    } else if t.audio().map(|a| a.pid) == Some(pes.pid) {
                        let mut packets = Vec::new();
                        // Keep the packets before a bad one, as the server does.
                        let _ = opus::split_pes(&pes.data, &mut packets);
                        for p in packets {
                            out.audio
                                .push((u64::from(p.samples), Bytes::copy_from_slice(p.data)));
                        }
                    }
                }
                _ => {}
            }
        }
        // Each AU lasts until the next one's PTS (33-bit wrap-safe); the last one as long as
        // the one before it.
        let mut last_step = 3000;
        for (i, au) in aus.iter().enumerate() {
            let step = match aus.get(i + 1) {
                Some(next) => {
                    let d = next.pts.wrapping_sub(au.pts) & ((1 << 33) - 1);
                    if (1..=90_000).contains(&d) {
                        d
                    } else {
                        last_step
                    }
                }
                None => last_step,
            };
            last_step = step;
            out.video.push((step, au.data.clone(), au.keyframe));
        }
        out.profile_level_id = h264.sps().map(|s| s.profile_level_id.to_string());
        out
    }
}

/// Counters of a running publisher, updated as it goes.
#[derive(Debug, Default)]
pub struct WhipStats {
    /// Video access units written to the track.
    pub video_frames: AtomicU64,
    /// Audio packets written to the track.
    pub audio_packets: AtomicU64,
    /// PLIs received on the video sender.
    pub pli: AtomicU64,
    /// FIRs received on the video sender.
    pub fir: AtomicU64,
    /// Writes that failed (the track was not bound, the connection closed…).
    pub write_errors: AtomicU64,
    connected_at: Mutex<Option<Instant>>,
    states: Mutex<Vec<RTCPeerConnectionState>>,
    /// When the first media was written.
    media_started_at: Mutex<Option<Instant>>,
}

impl WhipStats {
    pub fn video_frames(&self) -> u64 {
        self.video_frames.load(Ordering::Relaxed)
    }
    pub fn audio_packets(&self) -> u64 {
        self.audio_packets.load(Ordering::Relaxed)
    }
    /// PLI + FIR received.
    pub fn keyframe_requests(&self) -> u64 {
        self.pli.load(Ordering::Relaxed) + self.fir.load(Ordering::Relaxed)
    }
    pub fn connected_at(&self) -> Option<Instant> {
        *self.connected_at.lock().unwrap()
    }
    pub fn media_started_at(&self) -> Option<Instant> {
        *self.media_started_at.lock().unwrap()
    }
    /// Peer connection states in the order they were reported.
    pub fn states(&self) -> Vec<RTCPeerConnectionState> {
        self.states.lock().unwrap().clone()
    }
}

/// A running (or refused) WHIP publishing.
pub struct WhipPublisher {
    /// The WHIP endpoint that was POSTed to.
    pub url: String,
    /// Status of the POST.
    pub status: u16,
    /// `Location`, resolved to an absolute URL.
    pub location: Option<String>,
    /// `Playback-Url` exactly as the server sent it.
    pub playback_url: Option<String>,
    /// `ETag` exactly as the server sent it.
    pub etag: Option<String>,
    /// The whole POST response.
    pub response: HttpResponse,
    pub offer_sdp: String,
    /// The answer (empty unless 201).
    pub answer_sdp: String,
    /// Body of a non-201 response.
    pub error_body: Option<String>,
    /// Status of the DELETE, once sent.
    pub delete_status: Option<u16>,
    /// Just before the POST was sent.
    pub posted_at: Instant,
    /// When the 201 (or other) response had been read.
    pub answered_at: Instant,
    /// `profile-level-id` offered for H.264, if H.264 was offered.
    pub h264_profile: Option<String>,
    pub stats: Arc<WhipStats>,
    /// Tells the publisher's thread to end (true: vanish, false: close the connection).
    control: Option<oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    token: Option<String>,
}

impl std::fmt::Debug for WhipPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhipPublisher")
            .field("url", &self.url)
            .field("status", &self.status)
            .field("location", &self.location)
            .field("playback_url", &self.playback_url)
            .field("error_body", &self.error_body)
            .field("stats", &self.stats)
            .finish()
    }
}

impl WhipPublisher {
    /// Waits until `pred` holds on the stats (checked every 20 ms) or `timeout` passes.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&WhipStats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for ICE + DTLS (`Connected`).
    pub async fn wait_connected(&self, timeout: Duration) -> Option<Instant> {
        self.wait_until(timeout, |s| s.connected_at().is_some())
            .await;
        self.stats.connected_at()
    }

    /// Sends `DELETE {Location}` (once), then closes the peer connection. Returns the status.
    pub async fn delete(&mut self) -> Option<u16> {
        if self.delete_status.is_none() {
            if let Some(loc) = &self.location {
                let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
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
        self.end(false).await;
        self.delete_status
    }

    /// Closes the peer connection without a DELETE (the server sees the DTLS close, or the ICE
    /// timeout).
    pub async fn close(&mut self) {
        self.end(false).await;
    }

    /// Vanishes like a crashed process: no DELETE, no DTLS close; its socket is simply gone.
    /// The server notices only by the ICE timeout.
    pub async fn stop(&mut self) {
        self.end(true).await;
    }

    async fn end(&mut self, vanish: bool) {
        if let Some(tx) = self.control.take() {
            let _ = tx.send(vanish);
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for WhipPublisher {
    fn drop(&mut self) {
        // Close (no DELETE); the thread finishes on its own.
        if let Some(tx) = self.control.take() {
            let _ = tx.send(false);
        }
    }
}

/// What the publisher's thread reports once the POST is answered.
struct Setup {
    status: u16,
    response: HttpResponse,
    offer_sdp: String,
    answer_sdp: String,
    setup_error: Option<String>,
    posted_at: Instant,
    answered_at: Instant,
}

/// POSTs a sendonly offer for `file`'s media to `url` (a `/whip/{s}` endpoint), applies the
/// answer and starts sending in real time. A non-201 answer is a publisher with `status` and
/// `error_body` set (and nothing running), not an `Err`; `Err` is for failures on this side.
pub async fn whip_publish(
    url: &str,
    file: &Path,
    opts: WhipOptions,
) -> Result<WhipPublisher, String> {
    let base = Url::parse(url)?;
    let media = FileMedia::load(file)?;
    let codecs = offered_codecs(&opts);
    if codecs.is_empty() {
        return Err("WhipOptions: nothing to offer".into());
    }
    let h264_profile = codecs.iter().find_map(|c| match c {
        OfferCodec::H264(p) => Some(
            p.clone()
                .or_else(|| media.profile_level_id.clone())
                .unwrap_or_else(|| DEFAULT_H264_PROFILE.to_owned()),
        ),
        _ => None,
    });
    let stats = Arc::new(WhipStats::default());
    let (setup_tx, setup_rx) = oneshot::channel::<Result<Setup, String>>();
    let (control_tx, control_rx) = oneshot::channel::<bool>();
    let thread = {
        let (url, stats, opts, profile) = (
            url.to_owned(),
            Arc::clone(&stats),
            opts.clone(),
            h264_profile.clone(),
        );
        std::thread::Builder::new()
            .name("whip-publisher".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = setup_tx.send(Err(format!("publisher runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(run_publisher(
                    url, media, codecs, profile, opts, stats, setup_tx, control_rx,
                ));
                // Whatever is still running (the driver, if the connection was made to
                // vanish) is dropped with the runtime.
                rt.shutdown_background();
            })
            .map_err(|e| format!("spawn publisher thread: {e}"))?
    };
    let setup = setup_rx
        .await
        .map_err(|_| "publisher thread ended before the POST was answered".to_owned())??;
    let location = setup.response.header("location").map(|l| base.join(l));
    let mut p = WhipPublisher {
        url: url.to_owned(),
        status: setup.status,
        location,
        playback_url: setup.response.header("playback-url").map(str::to_owned),
        etag: setup.response.header("etag").map(str::to_owned),
        response: setup.response,
        offer_sdp: setup.offer_sdp,
        answer_sdp: setup.answer_sdp,
        error_body: None,
        delete_status: None,
        posted_at: setup.posted_at,
        answered_at: setup.answered_at,
        h264_profile,
        stats,
        control: Some(control_tx),
        thread: Some(thread),
        token: opts.token.clone(),
    };
    if p.status != 201 {
        p.error_body = Some(p.response.text());
        p.end(false).await;
    } else if let Some(e) = setup.setup_error {
        p.end(false).await;
        return Err(e);
    }
    Ok(p)
}

/// `sdp` with every candidate's address and port replaced by `via`.
fn candidates_at(sdp: &str, via: std::net::SocketAddr) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            let Some(rest) = line.strip_prefix("a=candidate:") else {
                return line.to_owned();
            };
            let eol = &line[line.trim_end().len()..];
            let mut f: Vec<String> = rest.trim_end().split(' ').map(str::to_owned).collect();
            if f.len() > 5 {
                f[4] = via.ip().to_string();
                f[5] = via.port().to_string();
            }
            format!("a=candidate:{}{eol}", f.join(" "))
        })
        .collect()
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn codec_params(c: &OfferCodec, profile: Option<&str>) -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    let video_fb = || {
        vec![
            fb("goog-remb", ""),
            fb("transport-cc", ""),
            fb("ccm", "fir"),
            fb("nack", ""),
            fb("nack", "pli"),
        ]
    };
    let (mime, clock_rate, channels, fmtp, rtcp_feedback, pt) = match c {
        OfferCodec::H264(_) => (
            MIME_TYPE_H264,
            90000,
            0,
            format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={}",
                profile.unwrap_or(DEFAULT_H264_PROFILE)
            ),
            video_fb(),
            WHIP_H264_PT,
        ),
        OfferCodec::Vp8 => (
            MIME_TYPE_VP8,
            90000,
            0,
            String::new(),
            video_fb(),
            WHIP_VP8_PT,
        ),
        OfferCodec::Opus => (
            MIME_TYPE_OPUS,
            48000,
            2,
            "minptime=10;useinbandfec=1".to_owned(),
            vec![fb("transport-cc", "")],
            WHIP_OPUS_PT,
        ),
        OfferCodec::Pcmu => (MIME_TYPE_PCMU, 8000, 1, String::new(), vec![], WHIP_PCMU_PT),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp,
            rtcp_feedback,
        },
        payload_type: pt,
    }
}

/// Marks inbound PLI/FIR for the application (so [`TrackLocal::poll`] sees them) and drops the
/// rest of the inbound RTCP at the end of the chain, where the interceptors have used it.
#[derive(Default)]
struct KeyframeRequestsToApp {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestsToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                })
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestsToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

struct Handler {
    stats: Arc<WhipStats>,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
}

type BoxFut<'a> = Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

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
                self.gathered.send_replace(true);
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
            self.stats.states.lock().unwrap().push(state);
            if state == RTCPeerConnectionState::Connected {
                self.stats
                    .connected_at
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
                self.connected.send_replace(true);
            }
        })
    }
}

/// One local track and how to write to it.
struct Sending {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    pt: u8,
}

fn local_track(kind: RtpCodecKind, codec: &RTCRtpCodecParameters) -> Result<Sending, String> {
    let ssrc = rand::random::<u32>();
    let name = if kind == RtpCodecKind::Video {
        "video"
    } else {
        "audio"
    };
    let track = TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            "tsbridge-test-whip".to_owned(),
            format!("tsbridge-test-whip-{name}"),
            name.to_owned(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.rtp_codec.clone(),
                ..Default::default()
            }],
        ),
    )
    .map_err(err("local track"))?;
    Ok(Sending {
        track: Arc::new(track),
        ssrc,
        pt: codec.payload_type,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_publisher(
    url: String,
    media: FileMedia,
    codecs: Vec<OfferCodec>,
    profile: Option<String>,
    opts: WhipOptions,
    stats: Arc<WhipStats>,
    setup_tx: oneshot::Sender<Result<Setup, String>>,
    control_rx: oneshot::Receiver<bool>,
) {
    let (built, setup) = match setup(&url, &codecs, profile.as_deref(), &opts, &stats).await {
        Ok(x) => x,
        Err(e) => {
            let _ = setup_tx.send(Err(e));
            return;
        }
    };
    let Built {
        pc,
        video,
        audio,
        mut connected,
        ..
    } = built;
    let ok = setup.status == 201 && setup.setup_error.is_none();
    let _ = setup_tx.send(Ok(setup));
    if !ok {
        let _ = pc.close().await;
        return;
    }

    let stop = Arc::new(AtomicBool::new(false));
    if let Some(v) = &video {
        // Keyframe requests from the server, read on the video sender.
        let (track, stats, ssrc) = (Arc::clone(&v.track), Arc::clone(&stats), v.ssrc);
        tokio::spawn(async move {
            while let Some(evt) = track.poll().await {
                let TrackLocalEvent::OnRtcpPacket(packets) = evt else {
                    continue;
                };
                for p in &packets {
                    let any = p.as_any();
                    if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                        if pli.media_ssrc == ssrc || pli.media_ssrc == 0 {
                            stats.pli.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if any.is::<FullIntraRequest>() {
                        stats.fir.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let sender = {
        let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
        let (looping, delay) = (opts.looping, opts.media_delay);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, connected.wait_for(|c| *c)).await;
            tokio::time::sleep(delay).await;
            send_media(media, video, audio, looping, &stats, &stop).await;
        })
    };
    let vanish = control_rx.await.unwrap_or(false);
    stop.store(true, Ordering::Relaxed);
    sender.abort();
    let _ = sender.await;
    if vanish {
        // Nothing may be sent any more, not even a DTLS close: leak the connection; its tasks
        // and its socket go with the runtime.
        std::mem::forget(pc);
    } else {
        let _ = pc.close().await;
    }
}

/// A built peer connection with its sendonly tracks, before the offer.
struct Built {
    pc: Arc<dyn PeerConnection>,
    video: Option<Sending>,
    audio: Option<Sending>,
    gathered: watch::Receiver<bool>,
    connected: watch::Receiver<bool>,
}

/// The publisher's peer connection: the offered codecs, default interceptors plus
/// [`KeyframeRequestsToApp`], one sendonly transceiver per kind (video first), one UDP socket on
/// 127.0.0.1, no ICE servers, no mDNS.
async fn build_pc(
    codecs: &[OfferCodec],
    profile: Option<&str>,
    stats: &Arc<WhipStats>,
) -> Result<Built, String> {
    let mut media = MediaEngine::default();
    let mut first = [None, None];
    for c in codecs {
        let params = codec_params(c, profile);
        let kind = c.kind();
        media
            .register_codec(params.clone(), kind)
            .map_err(err("register codec"))?;
        let slot = &mut first[usize::from(kind == RtpCodecKind::Audio)];
        if slot.is_none() {
            *slot = Some(params);
        }
    }
    let registry =
        register_default_interceptors(Registry::new(), &mut media).map_err(err("interceptors"))?;
    // Last in the chain: every interceptor has seen the RTCP before keyframe requests are
    // picked out for the application.
    let registry = registry.with(Slot::from(14_000), KeyframeRequestsToApp::default());
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let config = RTCConfigurationBuilder::new()
        .with_bundle_policy(RTCBundlePolicy::MaxBundle)
        .build();
    let (gathered, gathered_rx) = watch::channel(false);
    let (connected, connected_rx) = watch::channel(false);
    let handler = Handler {
        stats: Arc::clone(stats),
        gathered,
        connected,
    };
    let pc = PeerConnectionBuilder::new()
        .with_runtime(DtlsGatedRuntime::arc())
        .with_configuration(config)
        .with_media_engine(media)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(handler))
        // A concrete address is bound as given, loopback included (a wildcard would skip it).
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .map_err(err("build peer connection"))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);

    let [video_codec, audio_codec] = first;
    let mut tracks = [None, None];
    for (i, (kind, codec)) in [
        (RtpCodecKind::Video, video_codec),
        (RtpCodecKind::Audio, audio_codec),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(codec) = codec else { continue };
        let s = local_track(kind, &codec)?;
        let added = pc
            .add_transceiver_from_track(
                Arc::clone(&s.track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    ..Default::default()
                }),
            )
            .await;
        if let Err(e) = added {
            let _ = pc.close().await;
            return Err(format!("add transceiver: {e}"));
        }
        tracks[i] = Some(s);
    }
    let [video, audio] = tracks;
    Ok(Built {
        pc,
        video,
        audio,
        gathered: gathered_rx,
        connected: connected_rx,
    })
}

/// Creates the offer, sets it locally and waits for ICE gathering; returns the complete SDP.
async fn gathered_offer(b: &mut Built) -> Result<String, String> {
    let offer = b.pc.create_offer(None).await.map_err(err("create_offer"))?;
    b.pc.set_local_description(offer)
        .await
        .map_err(err("set_local_description"))?;
    tokio::time::timeout(GATHER_TIMEOUT, b.gathered.wait_for(|g| *g))
        .await
        .map_err(|_| format!("ICE gathering not complete within {GATHER_TIMEOUT:?}"))?
        .map_err(err("gathering watch"))?;
    Ok(b.pc
        .local_description()
        .await
        .ok_or("no local description after gathering")?
        .sdp)
}

async fn setup(
    url: &str,
    codecs: &[OfferCodec],
    profile: Option<&str>,
    opts: &WhipOptions,
    stats: &Arc<WhipStats>,
) -> Result<(Built, Setup), String> {
    let mut built = build_pc(codecs, profile, stats).await?;
    let offer_sdp = match gathered_offer(&mut built).await {
        Ok(sdp) => sdp,
        Err(e) => {
            let _ = built.pc.close().await;
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
            let _ = built.pc.close().await;
            return Err(e);
        }
    };
    let answered_at = Instant::now();
    let mut setup = Setup {
        status: response.status,
        answer_sdp: String::new(),
        response,
        offer_sdp,
        setup_error: None,
        posted_at,
        answered_at,
    };
    if setup.status == 201 {
        setup.answer_sdp = setup.response.text();
        let answer = match opts.media_via {
            Some(via) => candidates_at(&setup.answer_sdp, via),
            None => setup.answer_sdp.clone(),
        };
        let applied = match RTCSessionDescription::answer(answer) {
            Ok(answer) => built.pc.set_remote_description(answer).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            setup.setup_error = Some(format!("set_remote_description: {e}"));
        }
    }
    Ok((built, setup))
}

/// `ticks` of a `rate` clock as a Duration, rounded up, so that the packetizer's
/// `(duration × rate) as u32` gives back exactly `ticks`.
fn ticks(ticks: u64, rate: u64) -> Duration {
    Duration::from_nanos((ticks * 1_000_000_000).div_ceil(rate))
}

/// Writes the media in real time: each frame when its track's timeline says so, both tracks
/// on one schedule. Each track's timeline is continuous (the durations of what came before),
/// looping included.
async fn send_media(
    media: FileMedia,
    video: Option<Sending>,
    audio: Option<Sending>,
    looping: bool,
    stats: &WhipStats,
    stop: &AtomicBool,
) {
    let video = video.filter(|_| !media.video.is_empty());
    let audio = audio.filter(|_| !media.audio.is_empty());
    let start = tokio::time::Instant::now();
    *stats.media_started_at.lock().unwrap() = Some(Instant::now());
    // Next index and elapsed ticks per track.
    let (mut vi, mut vt) = (0usize, 0u64);
    let (mut ai, mut at) = (0usize, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let v_due = video
            .as_ref()
            .filter(|_| looping || vi < media.video.len())
            .map(|_| start + ticks(vt, 90_000));
        let a_due = audio
            .as_ref()
            .filter(|_| looping || ai < media.audio.len())
            .map(|_| start + ticks(at, 48_000));
        let (is_video, due) = match (v_due, a_due) {
            (None, None) => break,
            (Some(v), Some(a)) if v <= a => (true, v),
            (Some(v), None) => (true, v),
            (_, Some(a)) => (false, a),
        };
        tokio::time::sleep_until(due).await;
        let (sending, data, samples, rate, counter) = if is_video {
            let (step, data, _) = &media.video[vi % media.video.len()];
            vi += 1;
            vt += step;
            (&video, data, *step, 90_000, &stats.video_frames)
        } else {
            let (n, data) = &media.audio[ai % media.audio.len()];
            ai += 1;
            at += n;
            (&audio, data, *n, 48_000, &stats.audio_packets)
        };
        let Some(s) = sending else { continue };
        let sample = Sample {
            data: data.clone(),
            duration: ticks(samples, rate),
            ..Sample::new(Instant::now())
        };
        match s.track.write_sample(s.ssrc, s.pt, &sample, &[]).await {
            Ok(()) => counter.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.write_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The offer [`whip_publish`] would POST for `file` and `opts` (complete, with its 127.0.0.1
/// candidate), for tests that send it by hand.
pub async fn whip_offer_sdp(file: &Path, opts: &WhipOptions) -> Result<String, String> {
    let media = FileMedia::load(file)?;
    let codecs = offered_codecs(opts);
    let profile = media
        .profile_level_id
        .unwrap_or_else(|| DEFAULT_H264_PROFILE.to_owned());
    let stats = Arc::new(WhipStats::default());
    let mut built = build_pc(&codecs, Some(&profile), &stats).await?;
    let sdp = gathered_offer(&mut built).await;
    let _ = built.pc.close().await;
    sdp
}

fn offered_codecs(opts: &WhipOptions) -> Vec<OfferCodec> {
    opts.codecs.clone().unwrap_or_else(|| {
        let mut c = Vec::new();
        if opts.video {
            c.push(OfferCodec::H264(None));
        }
        if opts.audio {
            c.push(OfferCodec::Opus);
        }
        c
    })
}
