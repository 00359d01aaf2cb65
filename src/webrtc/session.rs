//! One WHEP viewer: its `Rtc`, the mids and payload types it negotiated, and where it stands.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec as RtcCodec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::rtp::rtcp::{Nack, ReceiverReport, Rtcp, SenderReport};
use str0m::rtp::{Extension, RawPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use tracing::{debug, info, warn};

use super::direct::Direct;
use super::outbox::Outbox;
use super::publish::Ingest;
use super::srtp::{KeySlot, RtpProtector};
use super::{EngineOptions, NewSession, PatchError, PatchReply, SdpFrag};
use crate::codec::h264::ProfileLevelId;
use crate::codec::VideoProfile;
use crate::media::{Frame, Kind};
use crate::metrics::Metrics;
use crate::stream::Stream;

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
    video: Option<(Mid, Option<Pt>)>,
    audio: Option<(Mid, Option<Pt>)>,
    connected: bool,
    video_started: bool,
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
    /// Next RTP sequence number per kind (video, audio); random start below 2^15.
    seq: [u64; 2],
    /// Frames waiting to be sent: the GOP backlog, then live frames behind it.
    queued: std::collections::VecDeque<Frame>,
    /// When the peer last sent anything (STUN, DTLS, RTP, RTCP).
    last_received: Instant,
    /// Since when `queued` has not been empty.
    queued_since: Option<Instant>,
    /// How fast `queued` drains.
    pace: Pace,
    /// Times this viewer was moved on to the next keyframe.
    skips: u64,
    /// The RTX payload type of the video PT this viewer gets: its packets are retransmissions.
    rtx_pt: Option<u8>,
    /// The SRTP keys, once DTLS is done (for viewers; see `srtp`).
    keys: Option<KeySlot>,
    /// The direct send path per kind (video, audio), when the SRTP profile allows it (see
    /// `direct`); decided at the kind's first frame.
    direct: [Option<Direct>; 2],
    direct_decided: [bool; 2],
    /// Per kind: the wall-clock time of the last frame str0m sent a packet of, which is the
    /// RTP/NTP mapping of its sender reports.
    str0m_mapped: [Option<Instant>; 2],
    /// Where str0m last sent DTLS, RTP or RTCP: the peer's address on the selected pair.
    media_dest: Option<SocketAddr>,
}

/// The GOP backlog is paced (`--backlog-rate`, 25 Mbit/s by default) in slices this far
/// apart: a burst at the speed of the server's NIC is lost on a slower link (and repaired
/// only within the retransmission budget), and fills the socket buffer.
const BACKLOG_TICK: Duration = Duration::from_millis(2);

/// A token bucket for the backlog: `rate` bytes per second, at most one tick's worth banked.
/// Frames go whole, so a large one (an IDR) overdraws it and the next waits until it is repaid.
struct Pace {
    rate: u64,
    credit: i64,
    at: Instant,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Pace {
            rate: rate.max(1),
            credit: 0,
            at: Instant::now(),
        }
    }

    fn tick_bytes(&self) -> i64 {
        (u128::from(self.rate) * BACKLOG_TICK.as_nanos() / 1_000_000_000).max(1) as i64
    }

    /// A new backlog: one tick's worth may go at once.
    fn start(&mut self, now: Instant) {
        self.credit = self.tick_bytes();
        self.at = now;
    }

    fn refill(&mut self, now: Instant) {
        let earned = u128::from(self.rate) * now.saturating_duration_since(self.at).as_nanos()
            / 1_000_000_000;
        self.credit = (self.credit + earned.min(i64::MAX as u128) as i64).min(self.tick_bytes());
        self.at = now;
    }

    /// When the next slice may go: once the credit is positive again, a tick from now at the
    /// soonest.
    fn next(&self, now: Instant) -> Instant {
        let debt = (-self.credit).max(0) as u64;
        let wait = Duration::from_nanos(debt.saturating_mul(1_000_000_000) / self.rate);
        now + wait.max(BACKLOG_TICK)
    }
}

/// A viewer whose receiver reports say it lost more than this share of the video (after
/// retransmissions) cannot take the stream's rate: it skips to the next keyframe, which gives
/// its link the rest of the GOP to drain and shows a frozen picture instead of a broken one.
const SLOW_LOSS: f32 = 0.10;
/// A viewer whose queue (backlog, then live frames behind it) has not emptied for this long
/// has fallen behind: the queue is dropped and it goes on at the next live keyframe.
const SLOW_QUEUE: Duration = Duration::from_secs(2);

/// str0m sends a packet of each kind at least this often (its sender reports' RTP/NTP
/// mapping); the rest goes the direct way.
const STR0M_MAPPING: Duration = Duration::from_secs(1);

/// Keyframe requests to a publisher are sent at most this often.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

impl Session {
    pub fn new(n: NewSession, opts: &EngineOptions, metrics: Arc<Metrics>) -> Self {
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
            next_timeout: Instant::now(),
            armed: None,
            local_ufrag,
            peer_addrs: Vec::new(),
            remote_ufrag: n.remote_ufrag,
            active: n.active,
            video: None,
            audio: None,
            connected: false,
            video_started: false,
            backlog_due: false,
            last_seq: None,
            created: Instant::now(),
            disconnected_since: None,
            ice_timeout: opts.ice_timeout,
            ingest: n.ingest,
            keyframe_wanted: false,
            last_keyframe_request: None,
            metrics,
            feedback: Vec::new(),
            first_frame_sent: false,
            seq: [
                u64::from(rand::random::<u16>() >> 1),
                u64::from(rand::random::<u16>() >> 1),
            ],
            queued: Default::default(),
            last_received: Instant::now(),
            queued_since: None,
            pace: Pace::new(opts.backlog_rate),
            skips: 0,
            rtx_pt: None,
            keys: n.keys,
            direct: [None, None],
            direct_decided: [false; 2],
            str0m_mapped: [None; 2],
            media_dest: None,
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
    pub fn request_keyframe(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_keyframe_request
            .is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
        {
            return false;
        }
        let Some((mid, _)) = self.video else {
            return false;
        };
        let Some(mut w) = self.rtc.writer(mid) else {
            return false;
        };
        if !w.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
            return false;
        }
        let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
        self.last_keyframe_request = Some(now);
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
    pub fn poll(&mut self, out: &mut Outbox) {
        let (mut packets, mut bytes) = (0, 0);
        self.poll_counting(out, &mut packets, &mut bytes);
        // One update of the stream's shared counters per poll, not per packet.
        if packets > 0 {
            let st = &self.stream.stats;
            st.packets_sent.fetch_add(packets, Ordering::Relaxed);
            st.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn poll_counting(&mut self, out: &mut Outbox, packets: &mut u64, bytes: &mut u64) {
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
                        t.min(self.pace.next(Instant::now()))
                    };
                    if self.backlog_due {
                        self.backlog_due = false;
                        self.send_backlog(out);
                        continue;
                    }
                    return;
                }
                Ok(Output::Event(Event::RawPacket(p))) => match *p {
                    RawPacket::RtcpRx(Rtcp::Nack(nack)) => self.on_nack(&nack, out),
                    RawPacket::RtcpRx(Rtcp::ReceiverReport(ReceiverReport { reports, .. }))
                    | RawPacket::RtcpRx(Rtcp::SenderReport(SenderReport { reports, .. })) => {
                        for r in reports.iter() {
                            for d in self.direct.iter_mut().flatten() {
                                d.reported(*r.ssrc);
                            }
                        }
                    }
                    _ => {}
                },
                Ok(Output::Event(e)) => self.on_event(e),
                Err(e) => {
                    warn!(stream = %self.stream.name, error = %e, "session failed");
                    self.rtc.disconnect();
                }
            }
        }
        self.next_timeout = Instant::now();
    }

    /// A viewer reports lost video: retransmit what the direct path sent (str0m answers for
    /// what it sent itself when the direct path is off).
    fn on_nack(&mut self, nack: &Nack, out: &mut Outbox) {
        let (Some(d), Some(to)) = (self.direct[0].as_mut(), self.media_dest) else {
            return;
        };
        if *nack.ssrc != d.ssrc() {
            return;
        }
        let mut resent = 0;
        for e in nack.reports.iter() {
            // RFC 4585 §6.2.1: PID, and a bit for each of the 16 packets after it.
            let lost = (0..16)
                .filter(|i| e.blp >> i & 1 == 1)
                .map(|i| e.pid.wrapping_add(i + 1));
            for seq in std::iter::once(e.pid).chain(lost) {
                resent += u64::from(d.resend(out, to, seq, self.seq[0]));
            }
        }
        self.metrics
            .retransmissions
            .fetch_add(resent, Ordering::Relaxed);
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.backlog_due = !self.is_publisher();
                info!(stream = %self.stream.name, session = %super::short(&self.id),
                    setup_ms = self.created.elapsed().as_millis() as u64, "{} connected", self.role());
            }
            Event::IceConnectionStateChange(state) => match state {
                IceConnectionState::Disconnected => {
                    self.disconnected_since.get_or_insert_with(Instant::now);
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
                MediaKind::Video => self.video = Some((m.mid, None)),
                MediaKind::Audio => self.audio = Some((m.mid, None)),
            },
            Event::KeyframeRequest(_) => {
                // Forwarded when the source is a WHIP publisher; a TS source cannot make a
                // keyframe on demand (the GOP cache covers new viewers).
                self.keyframe_wanted = true;
            }
            Event::MediaEgressStats(st) => {
                let is_video = self.video.is_some_and(|(mid, _)| mid == st.mid);
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
            Event::MediaData(d) => {
                let kind = match (self.video, self.audio) {
                    (Some((mid, _)), _) if mid == d.mid => MediaKind::Video,
                    (_, Some((mid, _))) if mid == d.mid => MediaKind::Audio,
                    _ => return,
                };
                let want = self.ingest.as_mut().is_some_and(|i| i.push(kind, &d));
                if want {
                    self.request_keyframe();
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

    /// Instant start: the cached GOP, IDR first, so the picture shows as soon as DTLS is up.
    /// It goes at `--backlog-rate`, or four times the stream's rate if that is more (so it
    /// drains in about a third of its duration). Its timestamps are rewritten to follow the
    /// sending and end at the live frame, at least a tick apart: the browser sees frames
    /// arrive as their timestamps say (its jitter estimate stays calm), plays the backlog in
    /// fast motion and goes on at live pace. Audio starts live.
    fn send_backlog(&mut self, out: &mut Outbox) {
        let backlog = self.stream.gop.lock().snapshot();
        let (Some(first), Some(last)) = (backlog.first(), backlog.last()) else {
            return;
        };
        let (live_time, live_clock) = (last.rtp_time, last.wallclock);
        let bytes: u64 = backlog.iter().map(|f| f.data.len() as u64).sum();
        let span = last.rtp_time.saturating_sub(first.rtp_time);
        if let Some(stream_rate) = (bytes * 90_000).checked_div(span) {
            self.pace.rate = self.pace.rate.max(4 * stream_rate);
        }
        let plan = backlog_plan(&backlog, self.pace.rate, self.pace.tick_bytes() as u64);
        let n = backlog.len();
        self.queued = backlog
            .into_iter()
            .zip(plan)
            .map(|(f, behind)| Frame {
                rtp_time: live_time.saturating_sub(behind),
                wallclock: live_clock
                    .checked_sub(Duration::from_nanos(behind * 11_111))
                    .unwrap_or(live_clock),
                ..f
            })
            .collect();
        let now = Instant::now();
        // The viewer is skipped if its queue has not drained `SLOW_QUEUE` after the backlog
        // should have gone.
        let sending = Duration::from_secs_f64(bytes as f64 / self.pace.rate as f64);
        self.queued_since = Some(now + sending);
        debug!(stream = %self.stream.name, frames = n, bytes, rate = self.pace.rate,
            "sending the GOP backlog");
        self.pace.start(now);
        self.drain_queue(out);
    }

    /// Write queued frames (the backlog, then live frames that came meanwhile) as far as the
    /// pace allows: neither our socket buffer nor the viewer's link should overflow.
    pub fn drain_queue(&mut self, out: &mut Outbox) {
        let now = Instant::now();
        self.pace.refill(now);
        let mut sent = (0, 0);
        while self.pace.credit > 0 {
            let Some(f) = self.queued.pop_front() else {
                break;
            };
            self.pace.credit -= f.data.len() as i64;
            let (p, b) = self.write_now(&f, out);
            sent = (sent.0 + p, sent.1 + b);
        }
        count_direct(&self.stream, &self.metrics, sent);
        if !self.queued.is_empty() {
            self.next_timeout = self.next_timeout.min(self.pace.next(now));
        }
    }

    pub fn has_queue(&self) -> bool {
        !self.queued.is_empty()
    }

    /// A frame from the stream: sent now, or after what is still queued. Returns the
    /// (packets, bytes) sent the direct way (see `write_now`).
    pub fn write_frame(&mut self, f: &Frame, out: &mut Outbox) -> (u64, u64) {
        if self.queued.is_empty() {
            self.queued_since = None;
            return self.write_now(f, out);
        } else if self.connected {
            let since = *self.queued_since.get_or_insert_with(Instant::now);
            if since.elapsed() > SLOW_QUEUE {
                self.queued.clear();
                self.skip_to_keyframe("its queue has not drained for 2 s");
                return self.write_now(f, out);
            }
            self.queued.push_back(f.clone());
        }
        (0, 0)
    }

    /// This viewer cannot keep up: send it no more video until the next keyframe (audio goes
    /// on). RTP sequence numbers stay continuous: the viewer sees a jump in time, not loss.
    fn skip_to_keyframe(&mut self, why: &str) {
        if !self.video_started {
            return; // already waiting for one
        }
        self.video_started = false;
        self.skips += 1;
        self.metrics
            .slow_viewer_skips
            .fetch_add(1, Ordering::Relaxed);
        let st = &self.stream.stats;
        st.slow_viewer_skips.fetch_add(1, Ordering::Relaxed);
        if self.skips == 1 {
            info!(stream = %self.stream.name, session = %super::short(&self.id), why,
                "slow viewer: skipping to the next keyframe");
        } else {
            debug!(stream = %self.stream.name, session = %super::short(&self.id), why,
                skips = self.skips, "slow viewer: skipping to the next keyframe");
        }
    }

    /// Returns the (packets, bytes) sent the direct way, for the caller to count (once per
    /// frame or tick for all its viewers, not per viewer: the counters are shared by cores).
    fn write_now(&mut self, f: &Frame, out: &mut Outbox) -> (u64, u64) {
        if !self.connected || self.last_seq.is_some_and(|s| f.seq <= s) {
            return (0, 0);
        }
        let slot = match f.kind {
            Kind::Video => &mut self.video,
            Kind::Audio => &mut self.audio,
        };
        let Some((mid, pt)) = slot else {
            return (0, 0);
        };
        let mid = *mid;
        if f.kind == Kind::Video && !self.video_started {
            if !f.keyframe {
                return (0, 0);
            }
            self.video_started = true;
        }
        let pt = match pt {
            Some(pt) => *pt,
            None => {
                let profile = self.stream.status().video.map(|v| v.profile);
                let offered = self.rtc.media(mid).map(|m| m.remote_pts().to_vec());
                let offered = offered.unwrap_or_default();
                let params = self
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .filter(|p| offered.contains(&p.pt()));
                let Some(chosen) = choose_pt(params, f.kind, profile) else {
                    return (0, 0);
                };
                *pt = Some(chosen);
                if f.kind == Kind::Video {
                    self.rtx_pt = self
                        .rtc
                        .codec_config()
                        .params()
                        .iter()
                        .find(|p| p.pt() == chosen)
                        .and_then(|p| p.resend())
                        .map(|rtx| *rtx);
                }
                chosen
            }
        };
        let k = kind_index(f.kind);
        if !self.direct_decided[k] {
            self.direct_decided[k] = true;
            self.direct[k] = self.start_direct(mid, f.kind);
        }
        // RTP mode: the stream packetized the frame once; this viewer adds its header (SSRC,
        // sequence number, timestamp) and the SRTP. That is the direct path's, but for the
        // last packet of a frame a second after the last one str0m sent (its sender reports
        // need the RTP/NTP mapping that gives it); everything goes through str0m when the
        // direct path is off (with its NACK/RTX history then).
        let nackable = f.kind == Kind::Video && self.direct[k].is_none();
        let mut direct = self.direct[k].as_mut().zip(self.media_dest);
        let refresh = direct.is_none()
            || self.str0m_mapped[k]
                .is_none_or(|t| f.wallclock.saturating_duration_since(t) >= STR0M_MAPPING);
        let seq = &mut self.seq[k];
        let time = f.rtp_time as u32; // wraps like the 64-bit timeline: see time.rs
        let (first, last) = (*seq, f.payloads.len().saturating_sub(1));
        let (mut packets, mut bytes, mut to_str0m) = (0, 0, false);
        for (i, p) in f.payloads.iter().enumerate() {
            match direct {
                Some((ref mut d, to)) if i < last || !refresh => {
                    bytes += d.send(out, to, (*pt, *seq, time), p) as u64;
                    packets += 1;
                }
                _ => {
                    let mut api = self.rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                        return (packets, bytes);
                    };
                    let write = RtpWrite::new(pt, (*seq).into(), time, f.wallclock, p.data.clone())
                        .marker(p.marker)
                        .nackable(nackable);
                    tx.write_rtp(write);
                    self.str0m_mapped[k] = Some(f.wallclock);
                    to_str0m = true;
                }
            }
            *seq += 1;
        }
        if let Some(d) = self.direct[k].as_mut().filter(|_| f.kind == Kind::Video) {
            d.remember(first, *pt, time, f.payloads.clone());
        }
        self.last_seq = Some(f.seq);
        if f.kind == Kind::Video && !self.first_frame_sent {
            self.first_frame_sent = true;
            self.metrics.first_frame(self.created.elapsed());
        }
        if to_str0m {
            // str0m releases a written packet on its next timeout. Beside the direct path,
            // make that now, so the packet goes out in order with the direct ones around it
            // (on its own, str0m keeps its order, and a timer turn per frame costs more).
            if self.direct[k].is_some() {
                self.handle_input(Input::Timeout(Instant::now()));
            }
            self.poll(out);
        }
        (packets, bytes)
    }

    /// The direct send path for this viewer's `kind`, if its SRTP profile is AEAD-AES-GCM.
    fn start_direct(&mut self, mid: Mid, kind: Kind) -> Option<Direct> {
        let keying = self.keys.as_ref()?.get()?;
        let Some(srtp) = RtpProtector::new(keying) else {
            debug!(stream = %self.stream.name, session = %super::short(&self.id),
                profile = %keying.profile, "SRTP profile: every packet goes through str0m");
            return None;
        };
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None)?;
        let (ssrc, rtx) = (tx.ssrc(), tx.rtx());
        let ext_id = self
            .rtc
            .media(mid)?
            .remote_extmap()
            .id_of(Extension::RtpMid);
        // Opus is not retransmitted (str0m's rule too): late audio is as good as lost.
        let rtx = rtx
            .zip(self.rtx_pt)
            .filter(|_| kind == Kind::Video)
            .map(|(ssrc, pt): (Ssrc, u8)| (*ssrc, pt));
        Some(Direct::new(srtp, *ssrc, rtx, ext_id.map(|id| (id, &*mid))))
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
                plays(self.video),
                status.tracks.as_ref().is_some_and(|t| t.video().is_some()),
            ),
            ("audio", plays(self.audio), status.has_audio()),
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
    pub fn close(&mut self, out: &mut Outbox) {
        if let Err(e) = self.rtc.close() {
            debug!(error = %e, "closing the session");
            self.rtc.disconnect();
        }
        self.poll(out);
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

/// How far behind the live frame (in 90 kHz ticks) each backlog frame is stamped: by when it
/// goes at `rate` bytes per second (frames whole, `tick` bytes at once), at least a tick apart,
/// the last one at 0.
fn backlog_plan(backlog: &[Frame], rate: u64, tick: u64) -> Vec<u64> {
    let mut before = 0u64;
    let sent_at: Vec<u64> = backlog
        .iter()
        .map(|f| {
            let at = u128::from(before.saturating_sub(tick)) * 90_000 / u128::from(rate.max(1));
            before += f.data.len() as u64;
            at as u64
        })
        .collect();
    let end = sent_at.last().copied().unwrap_or(0);
    let mut behind = vec![0u64; sent_at.len()];
    for i in (0..sent_at.len().saturating_sub(1)).rev() {
        behind[i] = (end - sent_at[i]).max(behind[i + 1] + 1);
    }
    behind
}

/// Count what the direct path sent to a stream's viewers (str0m's packets are counted as they
/// are polled).
pub(super) fn count_direct(stream: &Stream, metrics: &Metrics, (packets, bytes): (u64, u64)) {
    if packets > 0 {
        let st = &stream.stats;
        st.packets_sent.fetch_add(packets, Ordering::Relaxed);
        st.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        metrics.direct_packets.fetch_add(packets, Ordering::Relaxed);
    }
}

/// Index of per-kind session state.
fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Video => 0,
        Kind::Audio => 1,
    }
}

/// The negotiated payload type to send with. For H.264, the one whose profile best fits the
/// stream's SPS: the same profile if the viewer took it, else the closest it decodes (any H.264
/// decoder in a browser decodes High even when it negotiated Baseline/Main, so a High source
/// still plays where only those were offered). H.265 was negotiated for the source's profile
/// and tier only.
fn choose_pt<'a>(
    params: impl Iterator<Item = &'a PayloadParams>,
    kind: Kind,
    profile: Option<VideoProfile>,
) -> Option<Pt> {
    let want = match (kind, profile) {
        (Kind::Video, Some(VideoProfile::H265(_))) => RtcCodec::H265,
        (Kind::Video, _) => RtcCodec::H264,
        (Kind::Audio, _) => RtcCodec::Opus,
    };
    let profile = match profile {
        Some(VideoProfile::H264(p)) => Some(p),
        _ => None,
    };
    params
        .filter(|p| p.spec().codec == want)
        .max_by_key(|p| {
            let fmt = p.spec().format;
            let mode1 = u8::from(fmt.packetization_mode == Some(1));
            let score = match (kind, profile, fmt.profile_level_id) {
                (Kind::Video, Some(src), Some(plid)) => h264_fit(src, plid),
                _ => 0,
            };
            (score, mode1)
        })
        .map(|p| p.pt())
}

/// How well an offered `profile-level-id` fits the source's: higher is better. Exact match,
/// then the same profile, then the nearest profile, preferring one that is a superset of the
/// source's (Constrained Baseline ⊂ Baseline ⊂ Main ⊂ High).
fn h264_fit(src: ProfileLevelId, offered: u32) -> u8 {
    let [p, c, _] = src.0;
    let (op, oc) = ((offered >> 16) as u8, (offered >> 8) as u8);
    if op == p && oc == c {
        return 20;
    }
    if op == p {
        return 19;
    }
    let rank = |profile: u8, constraints: u8| -> i8 {
        match profile {
            0x42 if constraints & 0x40 != 0 => 0,
            0x42 => 1,
            0x4d => 2,
            0x64 => 3,
            _ => 4,
        }
    };
    let (rs, ro) = (rank(p, c), rank(op, oc));
    let distance = (rs - ro).unsigned_abs();
    18 - distance * 2 - u8::from(ro < rs)
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

    #[test]
    fn backlog_is_stamped_by_when_each_frame_goes() {
        let frame = |len: usize| Frame {
            seq: 0,
            kind: Kind::Video,
            rtp_time: 0,
            wallclock: Instant::now(),
            data: vec![0u8; len].into(),
            keyframe: false,
            payloads: Arc::new([]),
        };
        // 90 kB/s: a byte a tick. The first 1000 bytes go at once, then each byte costs a tick.
        let backlog = [frame(3000), frame(500), frame(500), frame(10), frame(10)];
        let behind = backlog_plan(&backlog, 90_000, 1000);
        // Sent at 0, 2000, 2500, 3000, 3010: stamped that far before the last.
        assert_eq!(behind, [3010, 1010, 510, 10, 0]);
        // Faster than a tick a frame, they stay a tick apart.
        let behind = backlog_plan(&backlog, 90_000_000, 1000);
        assert_eq!(behind, [4, 3, 2, 1, 0]);
        assert_eq!(backlog_plan(&backlog[..1], 1, 1), [0]);
        assert!(backlog_plan(&[], 1, 1).is_empty());
    }

    #[test]
    fn backlog_pace_banks_one_tick_and_waits_out_an_overdraft() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut p = Pace::new(1_000_000); // 1 MB/s: 2000 bytes per 2 ms tick
        p.start(t0);
        assert_eq!(p.credit, 2000);
        p.credit -= 10_000; // an IDR goes whole
        assert_eq!(p.next(t0), t0 + ms(8));
        p.refill(t0 + ms(8));
        assert_eq!(p.credit, 0, "repaid, nothing to spend yet");
        assert_eq!(p.next(t0 + ms(8)), t0 + ms(10), "a tick at the soonest");
        p.refill(t0 + ms(1000));
        assert_eq!(
            p.credit, 2000,
            "an idle second banks one tick, not a second's worth"
        );
        // 1000 Mbit/s: 250 kB a tick.
        assert_eq!(Pace::new(125_000_000).tick_bytes(), 250_000);
    }

    #[test]
    fn h264_payload_type_fits_the_source_profile_best() {
        let high = ProfileLevelId([0x64, 0x00, 0x1f]);
        // Chromium here offers 42001f, 42e01f, 4d001f: Main is the closest to High.
        assert!(h264_fit(high, 0x64001f) > h264_fit(high, 0x4d001f));
        assert!(h264_fit(high, 0x4d001f) > h264_fit(high, 0x42001f));
        assert!(h264_fit(high, 0x42001f) > h264_fit(high, 0x42e01f));
        let cb = ProfileLevelId([0x42, 0xc0, 0x1e]);
        assert_eq!(h264_fit(cb, 0x42c01f), 20);
        assert_eq!(h264_fit(cb, 0x42e01f), 19);
        // A superset profile beats a subset one at the same distance.
        let main = ProfileLevelId([0x4d, 0x00, 0x1f]);
        assert!(h264_fit(main, 0x64001f) > h264_fit(main, 0x42001f));
    }
}
