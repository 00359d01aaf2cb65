//! Sending a frame to one viewer: the stream's shared RTP payloads under this viewer's header
//! (SSRC, sequence number, timestamp), by the direct path (`direct`) or through str0m, and the
//! direct path's answers to NACKs.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use str0m::media::{MediaTime, Mid, Pt};
use str0m::rtp::rtcp::Nack;
use str0m::rtp::{AbsCaptureTime, Extension, ExtensionValues, RtpWrite, Ssrc};
use str0m::Input;
use tracing::debug;

use super::Session;
use crate::metrics::Metrics;
use crate::stream::frame::{Frame, Kind, Recovery};
use crate::stream::Stream;
use crate::webrtc::codecs::choose_pt;
use crate::webrtc::direct::{Direct, FrameExts};
use crate::webrtc::outbox::Outbox;
use crate::webrtc::srtp::RtpProtector;
use crate::webrtc::PlayoutDelay;

/// str0m sends a packet of each kind at least this often (its sender reports' RTP/NTP
/// mapping); the rest goes the direct way.
const STR0M_MAPPING: Duration = Duration::from_secs(1);

impl Session {
    /// A viewer reports lost video: retransmit what the direct path sent (str0m answers for
    /// what it sent itself when the direct path is off).
    pub(super) fn on_nack(&mut self, nack: &Nack, out: &mut Outbox) {
        let (Some(d), Some(to)) = (self.video.direct.as_mut(), self.media_dest) else {
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
                resent += u64::from(d.resend(out, to, seq, self.video.seq));
            }
        }
        self.metrics
            .retransmissions
            .fetch_add(resent, Ordering::Relaxed);
    }

    /// Returns the (packets, bytes) sent the direct way, for the caller to count (once per
    /// frame or tick for all its viewers, not per viewer: the counters are shared by cores).
    pub(super) fn write_now(&mut self, f: &Frame, now: Instant, out: &mut Outbox) -> (u64, u64) {
        let Some((mid, pt)) = self.admit(f) else {
            return (0, 0);
        };
        // RTP mode: the stream packetized the frame once; this viewer adds its header (SSRC,
        // sequence number, timestamp) and the SRTP. That is the direct path's, but for the
        // last packet of a frame a second after the last one str0m sent (its sender reports
        // need the RTP/NTP mapping that gives it); everything goes through str0m when the
        // direct path is off (with its NACK/RTX history then).
        let media_dest = self.media_dest;
        let t = match f.kind {
            Kind::Video => &mut self.video,
            Kind::Audio => &mut self.audio,
        };
        let nackable = f.kind == Kind::Video && t.direct.is_none();
        let mut direct = t.direct.as_mut().zip(media_dest);
        let refresh = direct.is_none()
            || t.str0m_mapped
                .is_none_or(|t| f.wallclock.saturating_duration_since(t) >= STR0M_MAPPING);
        let seq = &mut t.seq;
        let time = f.rtp_time as u32; // wraps like the 64-bit timeline: see time.rs
        let (first, last) = (*seq, f.payloads.len().saturating_sub(1));
        let (mut packets, mut bytes, mut to_str0m) = (0, 0, false);
        for (i, p) in f.payloads.iter().enumerate() {
            match direct {
                Some((ref mut d, to)) if i < last || !refresh => {
                    let first = (i == 0).then_some(f.ingested_us);
                    bytes += d.send(out, to, (*pt, *seq, time), p, first) as u64;
                    packets += 1;
                }
                _ => {
                    let mut api = self.rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                        return (packets, bytes);
                    };
                    let mut write =
                        RtpWrite::new(pt, (*seq).into(), time, f.wallclock, p.data.clone())
                            .marker(p.marker)
                            .nackable(nackable);
                    if i == 0 {
                        write = write.ext_vals(frame_ext_vals(f, self.playout_delay));
                    }
                    tx.write_rtp(write);
                    t.str0m_mapped = Some(f.wallclock);
                    to_str0m = true;
                }
            }
            *seq += 1;
        }
        if let Some(d) = t.direct.as_mut().filter(|_| f.kind == Kind::Video) {
            d.remember(first, *pt, time, f.payloads.clone());
        }
        let direct_path = t.direct.is_some();
        self.last_seq = Some(f.seq);
        if f.kind == Kind::Video && !self.first_frame_sent {
            self.first_frame_sent = true;
            self.metrics
                .first_frame(now.saturating_duration_since(self.created));
        }
        if to_str0m {
            // str0m releases a written packet on its next timeout. Beside the direct path,
            // make that now, so the packet goes out in order with the direct ones around it
            // (on its own, str0m keeps its order, and a timer turn per frame costs more).
            if direct_path {
                self.handle_input(Input::Timeout(now));
            }
            self.poll(now, out);
        }
        (packets, bytes)
    }

    /// Whether frame `f` goes to this viewer now, and where: the section's mid and the
    /// payload type (chosen, and the direct path decided, at the kind's first frame). Video
    /// starts at a start point and skips the RASL pictures after it.
    fn admit(&mut self, f: &Frame) -> Option<(Mid, Pt)> {
        if !self.connected || self.last_seq.is_some_and(|s| f.seq <= s) {
            return None;
        }
        let (mid, pt) = self.track(f.kind).slot?;
        if f.kind == Kind::Video && !self.video_started {
            if !f.is_start() {
                return None;
            }
            self.video_started = true;
            self.leading = true;
        } else if f.kind == Kind::Video && self.leading {
            // RASL pictures after the CRA it started at refer to pictures it never got.
            if f.recovery == Recovery::Rasl {
                return None;
            }
            self.leading = false;
        }
        let pt = match pt {
            Some(pt) => pt,
            None => {
                let chosen = self.choose_pt(mid, f.kind)?;
                self.track(f.kind).slot = Some((mid, Some(chosen)));
                chosen
            }
        };
        if !self.track(f.kind).direct_decided {
            let direct = self.start_direct(mid, f.kind);
            let t = self.track(f.kind);
            t.direct_decided = true;
            t.direct = direct;
        }
        Some((mid, pt))
    }

    /// The payload type for `kind` on `mid`, among those the viewer offered (see
    /// `codecs::choose_pt`); for video, also notes its RTX payload type.
    fn choose_pt(&mut self, mid: Mid, kind: Kind) -> Option<Pt> {
        let profile = self.stream.status().video.map(|v| v.profile);
        let offered = self.rtc.media(mid).map(|m| m.remote_pts().to_vec());
        let offered = offered.unwrap_or_default();
        let params = self.rtc.codec_config().params();
        let chosen = choose_pt(
            params.iter().filter(|p| offered.contains(&p.pt())),
            kind,
            profile,
        )?;
        if kind == Kind::Video {
            self.rtx_pt = params
                .iter()
                .find(|p| p.pt() == chosen)
                .and_then(|p| p.resend())
                .map(|rtx| *rtx);
        }
        Some(chosen)
    }

    /// The direct send path for this viewer's `kind`, if its SRTP profile is AEAD-AES-GCM.
    pub(super) fn start_direct(&mut self, mid: Mid, kind: Kind) -> Option<Direct> {
        let keying = self.keys.as_ref()?.get()?;
        let Some(srtp) = RtpProtector::new(keying) else {
            debug!(stream = %self.stream.name, session = %crate::webrtc::short(&self.id),
                profile = %keying.profile, "SRTP profile: every packet goes through str0m");
            return None;
        };
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None)?;
        let (ssrc, rtx) = (tx.ssrc(), tx.rtx());
        let exts = self.rtc.media(mid)?.remote_extmap();
        let one_byte = |e: Extension| exts.id_of(e).filter(|id| (1..=14).contains(id));
        let ext_id = exts.id_of(Extension::RtpMid);
        let frame_exts = FrameExts {
            abs_capture_time: one_byte(Extension::AbsoluteCaptureTime),
            playout_delay: one_byte(Extension::PlayoutDelay)
                .zip(self.playout_delay.map(PlayoutDelay::bytes)),
        };
        // Opus is not retransmitted (str0m's rule too): late audio is as good as lost.
        let rtx = rtx
            .zip(self.rtx_pt)
            .filter(|_| kind == Kind::Video)
            .map(|(ssrc, pt): (Ssrc, u8)| (*ssrc, pt));
        let mid = ext_id.map(|id| (id, &*mid));
        Some(Direct::new(srtp, (*ssrc, rtx), mid, frame_exts))
    }
}

/// A frame's first packet's header extension values, for str0m (which writes those the viewer
/// negotiated): its ingest time, and the playout delay.
#[allow(clippy::field_reassign_with_default)] // non_exhaustive: no struct literal
fn frame_ext_vals(f: &Frame, delay: Option<PlayoutDelay>) -> ExtensionValues {
    let mut ev = ExtensionValues::default();
    ev.abs_capture_time = Some(AbsCaptureTime {
        capture_time: std::time::UNIX_EPOCH + Duration::from_micros(f.ingested_us),
        clock_offset: None,
    });
    if let Some(d) = delay {
        let (min, max) = d.units();
        ev.play_delay_min = Some(MediaTime::from_hundredths(u64::from(min)));
        ev.play_delay_max = Some(MediaTime::from_hundredths(u64::from(max)));
    }
    ev
}

/// Count what the direct path sent to a stream's viewers (str0m's packets are counted as they
/// are polled).
pub(in crate::webrtc) fn count_direct(
    stream: &Stream,
    metrics: &Metrics,
    (packets, bytes): (u64, u64),
) {
    if packets > 0 {
        let st = &stream.stats;
        st.packets_sent.fetch_add(packets, Ordering::Relaxed);
        st.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        metrics.direct_packets.fetch_add(packets, Ordering::Relaxed);
    }
}

/// What a session keeps per kind (video, audio): where it goes and how it is sent.
pub(super) struct Track {
    /// The m-line, and (from its first frame) the payload type chosen for it.
    pub(super) slot: Option<(Mid, Option<Pt>)>,
    /// Next RTP sequence number; random start below 2^15.
    pub(super) seq: u64,
    /// The direct send path (see `direct`), when the SRTP profile allows it; decided at the
    /// kind's first frame.
    pub(super) direct: Option<Direct>,
    direct_decided: bool,
    /// The wall-clock time of the last frame str0m sent a packet of, which is the RTP/NTP
    /// mapping of its sender reports.
    str0m_mapped: Option<Instant>,
}

impl Track {
    pub(super) fn new() -> Self {
        Track {
            slot: None,
            seq: u64::from(rand::random::<u16>() >> 1),
            direct: None,
            direct_decided: false,
            str0m_mapped: None,
        }
    }
}

impl Session {
    pub(super) fn track(&mut self, kind: Kind) -> &mut Track {
        match kind {
            Kind::Video => &mut self.video,
            Kind::Audio => &mut self.audio,
        }
    }
}
