//! One WebRTC session (a WHEP viewer or a WHIP publisher): its `Rtc`, the mids and payload
//! types it negotiated, and where it stands. Sending a frame is in `send`, a new viewer's GOP
//! backlog and its pacing in `backlog`.

mod backlog;
mod send;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::rtp::rtcp::{ReceiverReport, Rtcp, SenderReport};
use str0m::rtp::RawPacket;
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use tracing::{debug, info, warn};

use super::outbox::Outbox;
use super::publish::Ingest;
use super::srtp::KeySlot;
use super::{EngineOptions, NewSession, PatchError, PatchReply, SdpFrag};
use crate::metrics::Metrics;
use crate::stream::frame::Frame;
use crate::stream::Stream;
use backlog::Pace;
pub(super) use send::count_direct;
use send::Track;

pub(super) struct Session {
    pub id: String,
    /// The stream name of the session's URL (see `SessionUrl`).
    pub url_stream: String,
    pub stream: Arc<Stream>,
    pub rtc: Rtc,
    pub next_timeout: Instant,
    /// The deadline this session has in its shard's timer heap, if any.
    pub armed: Option<Instant>,
    /// Our ICE ufrag: a STUN check naming it belongs to this session.
    pub local_ufrag: String,
    /// Peer addresses we sent STUN/DTLS to since the shard last looked (ICE checks go out to
    /// candidates before the peer's own checks arrive from them).
    pub peer_addrs: Vec<SocketAddr>,
    remote_ufrag: Option<String>,
    /// The viewer's mids that carry media (see `NewSession::active`).
    active: Vec<String>,
    /// Per kind: its m-line, payload type, sequence numbers and send path (see `send`).
    video: Track,
    audio: Track,
    connected: bool,
    /// Video goes to the viewer from a start point on (a keyframe or a recovery point).
    video_started: bool,
    /// Since its start, nothing but RASL pictures came (those it does not get).
    leading: bool,
    /// The stream's GOP is to be sent as soon as the connection is up.
    backlog_due: bool,
    /// The last stream frame written (frames come from the backlog and then live).
    last_seq: Option<u64>,
    created: Instant,
    disconnected_since: Option<Instant>,
    ice_timeout: Duration,
    /// Set for a WHIP publisher: its media goes into the stream as TS.
    ingest: Option<Ingest>,
    /// A viewer asked for a keyframe (the engine forwards it to a WHIP publisher).
    keyframe_wanted: bool,
    last_keyframe_request: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Cumulative (NACK, PLI, FIR) counts str0m last reported per mid.
    feedback: Vec<(Mid, [u64; 3])>,
    first_frame_sent: bool,
    /// Frames waiting to be sent: the GOP backlog, then live frames behind it.
    queued: std::collections::VecDeque<Frame>,
    /// When the peer last sent anything (STUN, DTLS, RTP, RTCP).
    last_received: Instant,
    /// Since when `queued` has not been empty.
    queued_since: Option<Instant>,
    /// How fast `queued` drains.
    pace: Pace,
    /// Told in the playout-delay extension, when the viewer negotiated it.
    playout_delay: Option<super::PlayoutDelay>,
    /// Times this viewer was moved on to the next keyframe.
    skips: u64,
    /// The RTX payload type of the video PT this viewer gets: its packets are retransmissions.
    rtx_pt: Option<u8>,
    /// The SRTP keys, once DTLS is done (for viewers; see `srtp`).
    keys: Option<KeySlot>,
    /// Where str0m last sent DTLS, RTP or RTCP: the peer's address on the selected pair.
    media_dest: Option<SocketAddr>,
    client_ip: Option<std::net::IpAddr>,
    /// Held while the session lives (see `NewSession::ip_slot`).
    _ip_slot: Option<crate::limits::IpSlot>,
    /// Datagrams and bytes sent to the peer.
    sent: (u64, u64),
    /// The video's latest loss and round-trip time from the peer's receiver reports.
    loss: Option<f32>,
    rtt: Option<Duration>,
    /// A publisher's jitter buffer figures last published to the stream, and the NACKs str0m
    /// counted per mid.
    whip_published: crate::stream::link::WhipCounts,
    nacks_sent: Vec<(Mid, u64)>,
    /// A publisher's video streams whose NACKs were turned on.
    nack_on: Vec<str0m::rtp::Ssrc>,
}

/// A viewer whose receiver reports say it lost more than this share of the video (after
/// retransmissions) cannot take the stream's rate: it skips to the next keyframe, which gives
/// its link the rest of the GOP to drain and shows a frozen picture instead of a broken one.
const SLOW_LOSS: f32 = 0.10;

/// Keyframe requests to a publisher are sent at most this often.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

impl Session {
    pub fn new(n: NewSession, opts: &EngineOptions, metrics: Arc<Metrics>, now: Instant) -> Self {
        if n.ingest.is_none() {
            let st = &n.stream.stats;
            st.viewers.fetch_add(1, Ordering::Relaxed);
            st.sessions_total.fetch_add(1, Ordering::Relaxed);
        }
        let mut rtc = n.rtc;
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Session {
            id: n.id,
            url_stream: n.url_stream,
            stream: n.stream,
            rtc,
            next_timeout: now,
            armed: None,
            local_ufrag,
            peer_addrs: Vec::new(),
            remote_ufrag: n.remote_ufrag,
            active: n.active,
            video: Track::new(),
            audio: Track::new(),
            connected: false,
            video_started: false,
            leading: false,
            backlog_due: false,
            last_seq: None,
            created: now,
            disconnected_since: None,
            ice_timeout: opts.ice_timeout,
            ingest: n.ingest,
            keyframe_wanted: false,
            last_keyframe_request: None,
            metrics,
            feedback: Vec::new(),
            first_frame_sent: false,
            queued: Default::default(),
            last_received: now,
            queued_since: None,
            pace: Pace::new(opts.backlog_rate, now),
            playout_delay: opts.playout_delay,
            skips: 0,
            rtx_pt: None,
            keys: n.keys,
            media_dest: None,
            client_ip: n.client_ip,
            _ip_slot: n.ip_slot,
            sent: (0, 0),
            loss: None,
            rtt: None,
            whip_published: Default::default(),
            nacks_sent: Vec::new(),
            nack_on: Vec::new(),
        }
    }

    pub fn count_sent(&mut self, packets: u64, bytes: u64) {
        self.sent.0 += packets;
        self.sent.1 += bytes;
    }

    /// What the admin API shows of this session.
    pub fn info(&self, now: Instant) -> super::SessionInfo {
        let codecs = [self.video.slot, self.audio.slot]
            .into_iter()
            .flatten()
            .filter_map(|(_, pt)| pt)
            .filter_map(|pt| {
                self.rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|p| p.pt() == pt)
                    .map(|p| p.spec().codec.to_string())
            })
            .collect();
        super::SessionInfo {
            id: self.id.clone(),
            role: if self.is_publisher() {
                "publisher"
            } else {
                "viewer"
            },
            client_ip: self.client_ip.map(|i| i.to_string()),
            media_address: self.media_dest.map(|a| a.to_string()),
            since_seconds: now.saturating_duration_since(self.created).as_secs_f64(),
            connected: self.connected,
            packets_sent: self.sent.0,
            bytes_sent: self.sent.1,
            loss: self.loss,
            rtt_ms: self.rtt.map(|d| d.as_secs_f64() * 1e3),
            codecs,
        }
    }

    pub fn is_publisher(&self) -> bool {
        self.ingest.is_some()
    }

    fn role(&self) -> &'static str {
        if self.is_publisher() {
            "publisher"
        } else {
            "viewer"
        }
    }

    /// Whether a viewer asked for a keyframe since the last call.
    pub fn take_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_wanted)
    }

    /// Ask this (publishing) peer for a keyframe, at most every 500 ms. True if one was sent.
    pub fn request_keyframe(&mut self, now: Instant) -> bool {
        if self
            .last_keyframe_request
            .is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
        {
            return false;
        }
        let Some((mid, _)) = self.video.slot else {
            return false;
        };
        // Publishers are in RTP mode (str0m's frame `writer` panics there): the receive
        // stream of the video mid takes the request.
        let mut api = self.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, None) else {
            return false;
        };
        rx.request_keyframe(KeyframeRequestKind::Pli);
        self.last_keyframe_request = Some(now);
        if let Some(ingest) = self.ingest.as_mut() {
            ingest.plis += 1;
        }
        debug!(stream = %self.stream.name, "PLI sent to publisher");
        true
    }

    pub fn handle_input(&mut self, input: Input) {
        if let Input::Receive(at, _) = &input {
            self.last_received = *at;
        }
        if let Err(e) = self.rtc.handle_input(input) {
            debug!(error = %e, "session input");
            self.rtc.disconnect();
        }
    }

    /// Drain the `Rtc`'s output: send datagrams, handle events, note the next timeout.
    /// `now` is the caller's (the shard's) time: the session reads no clock.
    pub fn poll(&mut self, now: Instant, out: &mut Outbox) {
        let (mut packets, mut bytes) = (0, 0);
        self.poll_counting(now, out, &mut packets, &mut bytes);
        if self.drain_ingest(now) {
            // The PLI goes out now.
            self.poll_counting(now, out, &mut packets, &mut bytes);
        }
        if let Some(due) = self.ingest.as_ref().and_then(Ingest::deadline) {
            self.next_timeout = self.next_timeout.min(due);
        }
        self.count_sent(packets, bytes);
        // One update of the stream's shared counters per poll, not per packet.
        if packets > 0 {
            let st = &self.stream.stats;
            st.packets_sent.fetch_add(packets, Ordering::Relaxed);
            st.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// A publisher's media that its jitter buffers release at `now` goes into the stream;
    /// true when a keyframe request was sent.
    fn drain_ingest(&mut self, now: Instant) -> bool {
        let Some(ingest) = self.ingest.as_mut() else {
            return false;
        };
        let sent = ingest.drain(now) && self.request_keyframe(now);
        let Some(ingest) = self.ingest.as_ref() else {
            return sent;
        };
        let mut c = ingest.counts();
        c.nacks = self.nacks_sent.iter().map(|(_, n)| n).sum();
        if c != self.whip_published {
            self.whip_published = c;
            self.stream.stats.link.set_whip(c);
        }
        sent
    }

    fn poll_counting(
        &mut self,
        now: Instant,
        out: &mut Outbox,
        packets: &mut u64,
        bytes: &mut u64,
    ) {
        while self.rtc.is_alive() {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    // RTP/RTCP start at 128 (RFC 7983); DTLS at 20-63, below is STUN. The RTP
                    // header is clear text in SRTP: its payload type tells a retransmission.
                    let first = t.contents.first().copied().unwrap_or(0);
                    if first >= 20 {
                        self.media_dest = Some(t.destination);
                    }
                    if first < 128 && self.peer_addrs.last() != Some(&t.destination) {
                        self.peer_addrs.push(t.destination);
                    } else if first >= 128
                        && self.rtx_pt.is_some()
                        && t.contents.get(1).map(|b| b & 0x7f) == self.rtx_pt
                    {
                        self.metrics.retransmissions.fetch_add(1, Ordering::Relaxed);
                    }
                    *packets += 1;
                    *bytes += t.contents.len() as u64;
                    out.push(t);
                }
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = if self.queued.is_empty() {
                        t
                    } else {
                        t.min(self.pace.next(now))
                    };
                    if self.backlog_due {
                        self.backlog_due = false;
                        self.send_backlog(now, out);
                        continue;
                    }
                    return;
                }
                Ok(Output::Event(Event::RawPacket(p))) => match *p {
                    RawPacket::RtcpRx(Rtcp::Nack(nack)) => self.on_nack(&nack, out),
                    RawPacket::RtcpRx(Rtcp::ReceiverReport(ReceiverReport { reports, .. }))
                    | RawPacket::RtcpRx(Rtcp::SenderReport(SenderReport { reports, .. })) => {
                        for r in reports.iter() {
                            let both = [&mut self.video.direct, &mut self.audio.direct];
                            for d in both.into_iter().flatten() {
                                d.reported(*r.ssrc);
                            }
                        }
                    }
                    _ => {}
                },
                Ok(Output::Event(e)) => self.on_event(e, now),
                Err(e) => {
                    warn!(stream = %self.stream.name, error = %e, "session failed");
                    self.rtc.disconnect();
                }
            }
        }
        self.next_timeout = now;
    }

    fn on_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.backlog_due = !self.is_publisher();
                info!(stream = %self.stream.name, session = %super::short(&self.id),
                    setup_ms = now.saturating_duration_since(self.created).as_millis() as u64, "{} connected", self.role());
            }
            Event::IceConnectionStateChange(state) => match state {
                IceConnectionState::Disconnected => {
                    self.disconnected_since.get_or_insert(now);
                }
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    self.disconnected_since = None;
                }
                _ => {}
            },
            // A viewer's sections answered inactive get nothing (see `sdp::shape_answer`).
            Event::MediaAdded(m)
                if !self.is_publisher() && !self.active.iter().any(|a| **a == *m.mid) => {}
            Event::MediaAdded(m) => match m.kind {
                MediaKind::Video => self.video.slot = Some((m.mid, None)),
                MediaKind::Audio => self.audio.slot = Some((m.mid, None)),
            },
            Event::KeyframeRequest(_) => {
                // Forwarded to a WHIP publisher, or to the video re-encoder; a TS source
                // passed through cannot make a keyframe on demand (the GOP cache covers new
                // viewers).
                self.keyframe_wanted = true;
            }
            Event::MediaEgressStats(st) => {
                let is_video = self.video.slot.is_some_and(|(mid, _)| mid == st.mid);
                if is_video {
                    self.loss = st.loss.or(self.loss);
                    self.rtt = st.rtt.or(self.rtt);
                }
                if let Some(loss) = st.loss.filter(|&l| is_video && l > SLOW_LOSS) {
                    self.skip_to_keyframe(&format!("it reports {:.0} % video loss", loss * 100.0));
                }
                let now = [st.nacks, st.plis, st.firs];
                let prev = match self.feedback.iter_mut().find(|(m, _)| *m == st.mid) {
                    Some((_, prev)) => prev,
                    None => {
                        self.feedback.push((st.mid, [0; 3]));
                        &mut self.feedback.last_mut().expect("just pushed").1
                    }
                };
                let m = &self.metrics;
                for (i, counter) in [&m.nacks_received, &m.plis_received, &m.firs_received]
                    .into_iter()
                    .enumerate()
                {
                    counter.fetch_add(now[i].saturating_sub(prev[i]), Ordering::Relaxed);
                }
                *prev = now;
            }
            Event::RtpPacket(_) if self.ingest.is_none() => {}
            Event::RtpPacket(p) => {
                let pt = p.header.payload_type;
                let video = self
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|c| c.pt() == pt)
                    .map(|c| c.spec().codec.is_video());
                let kind = match video {
                    Some(true) => MediaKind::Video,
                    Some(false) => MediaKind::Audio,
                    None => return,
                };
                let ssrc = p.header.ssrc;
                let holds = self.ingest.as_ref().is_some_and(Ingest::holds);
                if kind == MediaKind::Video && holds && !self.nack_on.contains(&ssrc) {
                    // str0m NACKs only streams with an RTX payload type; a publisher without
                    // one (webrtc-rs, GStreamer) resends on the stream itself, which str0m
                    // takes just as well: the jitter buffer's holes are worth asking for (with
                    // the buffer off, a resend would only come late).
                    if let Some(rx) = self.rtc.direct_api().stream_rx(&ssrc) {
                        rx.suppress_nack(false);
                        self.nack_on.push(ssrc);
                    }
                }
                if let Some(i) = self.ingest.as_mut() {
                    i.push_rtp(kind, p.timestamp, &p.header, p.payload);
                }
            }
            Event::MediaIngressStats(st) => {
                match self.nacks_sent.iter_mut().find(|(m, _)| *m == st.mid) {
                    Some((_, n)) => *n = st.nacks,
                    None => self.nacks_sent.push((st.mid, st.nacks)),
                }
            }
            _ => {}
        }
    }

    /// Why this session should end now, if it should.
    pub fn end_reason(&self, now: Instant) -> Option<&'static str> {
        if !self.rtc.is_alive() {
            return Some("connection closed");
        }
        if !self.connected && now.duration_since(self.created) > self.ice_timeout {
            return Some("ICE/DTLS setup timed out");
        }
        // A live peer sends RTCP or consent checks every few seconds: silence for longer than
        // the ICE timeout means it is gone (str0m's own ICE verdict takes ~20 s longer).
        if self.connected && now.duration_since(self.last_received) > self.ice_timeout {
            return Some("ICE timeout (peer silent)");
        }
        if self
            .disconnected_since
            .is_some_and(|t| now.duration_since(t) > self.ice_timeout)
        {
            return Some("ICE timeout (viewer gone)");
        }
        None
    }

    /// Trickle ICE candidates, or an ICE restart when the remote credentials change. The
    /// request's `If-Match` must name the session's ETag (its ICE ufrag) or `*` when present,
    /// and is required for a restart (RFC 9725 §4.3.1, draft-ietf-wish-whep §4.3).
    pub fn patch(&mut self, patch: super::Patch, local: &[SocketAddr]) -> PatchReply {
        let frag = patch.frag;
        let restart = match (&frag.ufrag, &self.remote_ufrag) {
            (Some(new), Some(old)) => new != old,
            (Some(_), None) => true,
            _ => false,
        };
        match patch.if_match.as_deref() {
            None if restart => return Err(PatchError::PreconditionRequired),
            Some(tags) if !etag_matches(tags, &self.local_ufrag) => {
                return Err(PatchError::PreconditionFailed(tags.to_string()))
            }
            _ => {}
        }
        let mut reply = None;
        if restart {
            let (Some(ufrag), Some(pass)) = (frag.ufrag.clone(), frag.pwd.clone()) else {
                return Err(PatchError::Bad(
                    "ICE restart needs a=ice-ufrag and a=ice-pwd".into(),
                ));
            };
            let ours = IceCreds::new();
            let mut api = self.rtc.direct_api();
            api.set_remote_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass,
            });
            api.set_local_ice_credentials(ours.clone());
            self.local_ufrag = ours.ufrag.clone();
            self.remote_ufrag = Some(ufrag);
            info!(stream = %self.stream.name, session = %super::short(&self.id), "ICE restart");
            // The peer may move: media goes through str0m until it sends on the new pair.
            self.media_dest = None;
            reply = Some(SdpFrag::answer(&ours, local));
        }
        for c in &frag.candidates {
            match Candidate::from_sdp_string(c) {
                Ok(c) => self.rtc.add_remote_candidate(c),
                Err(e) => return Err(PatchError::Bad(format!("bad candidate {c:?}: {e}"))),
            }
        }
        Ok(reply)
    }

    /// The stream's track set changed (a new PMT). The viewer keeps what is still there (a new
    /// SPS/PPS reaches it ahead of the next IDR, and a track that comes back resumes on its
    /// m-line); false when none of the tracks it plays is left: the session should end, which
    /// tells the peer at once (see `close`), so it can reconnect and get the new track set.
    pub fn tracks_changed(&mut self, status: &crate::stream::Status) -> bool {
        if self.is_publisher() {
            return true;
        }
        let plays = |slot: Option<(Mid, Option<Pt>)>| {
            slot.and_then(|(mid, _)| self.rtc.media(mid))
                .is_some_and(|m| m.direction().is_sending())
        };
        // (kind, this viewer plays it, the stream still has it)
        let kinds = [
            (
                "video",
                plays(self.video.slot),
                status.tracks.as_ref().is_some_and(|t| t.video().is_some()),
            ),
            ("audio", plays(self.audio.slot), status.has_audio()),
        ];
        let keeps = kinds.iter().any(|&(_, plays, has)| plays && has);
        for (kind, _, _) in kinds.iter().filter(|&&(_, plays, has)| plays && !has) {
            if keeps {
                info!(stream = %self.stream.name, session = %super::short(&self.id), kind,
                    "a track this viewer plays left the stream; the rest continues");
            }
        }
        keeps
    }

    /// End the session and tell the peer: RTCP BYE and a DTLS close_notify, so a browser sees
    /// the connection close at once instead of waiting for its consent checks to fail.
    pub fn close(&mut self, now: Instant, out: &mut Outbox) {
        if let Err(e) = self.rtc.close() {
            debug!(error = %e, "closing the session");
            self.rtc.disconnect();
        }
        self.poll(now, out);
        if !self.is_publisher() {
            self.stream.stats.viewers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether an `If-Match` value (`*`, or a list of entity tags, weak or strong) names the
/// session's ETag, which is its ICE ufrag in quotes.
fn etag_matches(if_match: &str, ufrag: &str) -> bool {
    if_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").trim_matches('"') == ufrag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_names_the_session_etag_or_anything() {
        assert!(etag_matches("\"abc\"", "abc"));
        assert!(etag_matches("W/\"abc\"", "abc"));
        assert!(etag_matches("*", "abc"));
        assert!(etag_matches("\"x\", \"abc\"", "abc"));
        assert!(!etag_matches("\"abd\"", "abc"));
        assert!(!etag_matches("", "abc"));
    }
}
