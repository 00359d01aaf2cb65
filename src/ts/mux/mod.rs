//! MPEG-TS muxing, sans-IO: H.264 access units and Opus packets in, 188-byte packets out
//! (ISO/IEC 13818-1; Opus per ETSI TS 102 366 style `opus_control_header`, as ffmpeg writes it).
//!
//! ```text
//! write_video(AU, pts, dts) ─► + AUD, + SPS/PPS before an IDR ─► PES 0xE0 ─┐
//!                                                                          ├─► PAT/PMT, PCR, CC ─► out
//! write_audio(Opus, pts)    ─► opus_control_header            ─► PES 0xBD ─┘
//! ```
//!
//! This is the WHIP side of the bridge: depacketized media becomes the same TS a pipeline would
//! produce, so the ring, the demuxer, `GET /streams/{s}.ts` and the WHEP side see one format.
//!
//! **Clock.** The PCR is media time minus [`PCR_DELAY`]. With video it is on the video PID: in
//! the first packet of every video PES, from its DTS; between video PES, elapsed audio time
//! carries it on in adaptation-field-only packets on the video PID whenever waiting for the next
//! audio packet would leave more than [`PCR_PERIOD`] without a PCR and no video PES is due
//! before then (low frame rates, camera off, audio before the first video frame). Only elapsed
//! audio time counts, never its absolute value, so audio timestamps skewed against the video's
//! do not pull the PCR off the video DTS (by more than one audio packet). The PCR never steps
//! back by less than [`TIME_JUMP`]: it is held until media time catches up; a step back by more
//! starts a new timeline, flagged with the `discontinuity_indicator`. Forward jumps (a pause) are
//! taken as they come. Without video the PCR is on the audio PID, from each audio PTS.
//!
//! PAT and PMT go out before the first packet, before every keyframe, at a PCR discontinuity,
//! and whenever [`PSI_PERIOD`] has passed on the video or the audio timeline.

use super::packet::{pcr_bytes, FirstPacket, Pid, PidWriter, PACKET_SIZE, PAYLOAD_SIZE};
use super::pes::{pes_header, write_pes, MAX_PES_LENGTH};
use super::psi::{psi_packet, reserved_pid, StreamType, TABLE_PAT, TABLE_PMT};
use crate::codec::h264::AuFixup;
use crate::codec::opus::packet_samples;
use crate::time::{pts_diff, PTS_MASK};

/// PCR = media time minus this (100 ms at 90 kHz): every PES arrives before its DTS, with room
/// for audio/video jitter, at little latency for players that pace by the PCR.
pub const PCR_DELAY: u64 = 9_000;
/// Longest PCR interval while some stream gives a clock (40 ms, as DVB asks).
pub const PCR_PERIOD: u64 = 3_600;
/// PAT/PMT repetition interval (100 ms).
pub const PSI_PERIOD: u64 = 9_000;
/// A timestamp this far (1 s) behind the clock starts a new timeline.
pub const TIME_JUMP: u64 = 90_000;

/// TS payload bytes per packet.
const STREAM_ID_VIDEO: u8 = 0xE0;
const STREAM_ID_PRIVATE_1: u8 = 0xBD;
const TRANSPORT_STREAM_ID: u16 = 1;
/// `opus_control_header` prefix: 0x3FF in 11 bits, no trims, no control extension.
const OPUS_PREFIX: [u8; 2] = [0x7F, 0xE0];

/// What the muxer writes: which tracks, on which PIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuxConfig {
    /// An H.264 track.
    pub video: bool,
    /// An Opus track with this many channels (1 or 2: the `channel_config_code`).
    pub audio: Option<u8>,
    pub pmt_pid: Pid,
    pub video_pid: Pid,
    pub audio_pid: Pid,
    pub program_number: u16,
}

impl Default for MuxConfig {
    /// H.264 + stereo Opus on the PIDs ffmpeg uses (PMT 0x1000, video 0x100, audio 0x101).
    fn default() -> Self {
        Self {
            video: true,
            audio: Some(2),
            pmt_pid: Pid(0x1000),
            video_pid: Pid(0x100),
            audio_pid: Pid(0x101),
            program_number: 1,
        }
    }
}

impl MuxConfig {
    /// The PID carrying the PCR: video if there is video, else audio (`Pid::NULL`: neither).
    pub fn pcr_pid(&self) -> Pid {
        if self.video {
            self.video_pid
        } else if self.audio.is_some() {
            self.audio_pid
        } else {
            Pid::NULL
        }
    }
}

/// Input the muxer refuses; nothing is written for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("the muxer has no video track")]
    NoVideoTrack,
    #[error("the muxer has no audio track")]
    NoAudioTrack,
    #[error("access unit without NAL units (no Annex B start code)")]
    NoNalUnits,
    #[error("invalid Opus packet ({len} bytes)")]
    InvalidOpusPacket { len: usize },
    #[error("Opus packet of {len} bytes does not fit one PES")]
    OpusPacketTooLarge { len: usize },
}

fn pat_packet(cfg: &MuxConfig) -> [u8; PACKET_SIZE] {
    let mut body = [0u8; 4];
    body[..2].copy_from_slice(&cfg.program_number.to_be_bytes());
    body[2..].copy_from_slice(&reserved_pid(cfg.pmt_pid));
    psi_packet(Pid::PAT, TABLE_PAT, TRANSPORT_STREAM_ID, &body)
}

fn pmt_packet(cfg: &MuxConfig) -> [u8; PACKET_SIZE] {
    // PCR_PID, program_info_length 0, then at most 5 + 15 bytes of streams.
    let mut body = [0u8; 24];
    body[..2].copy_from_slice(&reserved_pid(cfg.pcr_pid()));
    body[2..4].copy_from_slice(&[0xF0, 0x00]);
    let mut len = 4;
    if cfg.video {
        body[len] = StreamType::H264.0;
        body[len + 1..len + 3].copy_from_slice(&reserved_pid(cfg.video_pid));
        body[len + 3..len + 5].copy_from_slice(&[0xF0, 0x00]);
        len += 5;
    }
    if let Some(channels) = cfg.audio {
        // Registration descriptor 'Opus', DVB extension descriptor (0x7F) with
        // descriptor_tag_extension 0x80 and the channel_config_code.
        let descriptors = [
            0x05, 0x04, b'O', b'p', b'u', b's', 0x7F, 0x02, 0x80, channels,
        ];
        body[len] = StreamType::PRIVATE_PES.0;
        body[len + 1..len + 3].copy_from_slice(&reserved_pid(cfg.audio_pid));
        body[len + 3..len + 5].copy_from_slice(&[0xF0, descriptors.len() as u8]);
        body[len + 5..len + 15].copy_from_slice(&descriptors);
        len += 15;
    }
    psi_packet(cfg.pmt_pid, TABLE_PMT, cfg.program_number, &body[..len])
}

/// Sans-IO MPEG-TS muxer for one program with an H.264 and/or an Opus track.
///
/// Timestamps are 90 kHz; any `u64` is taken modulo 2^33. Every call appends whole 188-byte
/// packets to `out` (nothing is buffered between calls) and allocates nothing beyond growing
/// `out` and, once, its parameter-set caches.
#[derive(Debug)]
pub struct Muxer {
    cfg: MuxConfig,
    /// PAT and PMT, continuity counter 0; written with their PID's counter.
    pat: [u8; PACKET_SIZE],
    pmt: [u8; PACKET_SIZE],
    pat_out: PidWriter,
    pmt_out: PidWriter,
    video_out: PidWriter,
    audio_out: PidWriter,
    /// The last PCR base written.
    pcr: Option<u64>,
    /// Where the audio clock carries the PCR on from: a PCR time (the last video PES's own
    /// DTS - PCR_DELAY, even when the PCR was held) and the audio time matching it.
    pcr_ref: Option<(u64, Option<u64>)>,
    /// Audio time of the last PCR written.
    pcr_audio_at: Option<u64>,
    /// PTS and duration (90 kHz) of the last audio packet.
    last_audio: Option<(u64, u64)>,
    /// DTS of the last video PES, and the step to it from the one before (the frame interval).
    last_video_dts: Option<u64>,
    video_step: Option<u64>,
    /// Audio time of the last video PES.
    video_anchor: Option<u64>,
    /// Video DTS and audio PTS at the last PAT/PMT (or when first seen after it); `None`
    /// before the first PAT/PMT. Each stream's own time counts, so a held PCR or audio skewed
    /// against video does not stretch the period.
    psi_at: Option<(Option<u64>, Option<u64>)>,
    /// AUD and parameter sets for access units that lack them.
    fixup: AuFixup,
    /// The current Opus control header.
    opus_header: Vec<u8>,
}

impl Muxer {
    /// PIDs are taken modulo 2^13; they should differ from each other and from 0x0000, 0x0001
    /// and 0x1FFF.
    pub fn new(cfg: MuxConfig) -> Self {
        Self {
            pat: pat_packet(&cfg),
            pmt: pmt_packet(&cfg),
            pat_out: PidWriter::new(Pid::PAT),
            pmt_out: PidWriter::new(cfg.pmt_pid),
            video_out: PidWriter::new(cfg.video_pid),
            audio_out: PidWriter::new(cfg.audio_pid),
            cfg,
            pcr: None,
            pcr_ref: None,
            pcr_audio_at: None,
            last_audio: None,
            last_video_dts: None,
            video_step: None,
            video_anchor: None,
            psi_at: None,
            fixup: AuFixup::default(),
            opus_header: Vec::new(),
        }
    }

    pub fn config(&self) -> &MuxConfig {
        &self.cfg
    }

    /// One H.264 access unit in Annex B (bytes before the first start code are dropped), `pts`
    /// and `dts` in 90 kHz. An AUD is put first if the access unit does not start with one.
    /// Before a keyframe (`keyframe`, or an IDR slice in the access unit) the latest SPS and PPS
    /// seen in earlier access units are inserted when it lacks them. The PES has stream_id 0xE0
    /// and PES_packet_length 0 when it is longer than 65535 bytes.
    pub fn write_video(
        &mut self,
        au: &[u8],
        pts: u64,
        dts: u64,
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        if !self.cfg.video {
            return Err(MuxError::NoVideoTrack);
        }
        let fixed = self.fixup.fix(au, keyframe).ok_or(MuxError::NoNalUnits)?;
        let keyframe = fixed.keyframe;
        let es_len = fixed.len(au, &self.fixup);

        let (pcr, discontinuity) = self.next_pcr(dts);
        self.pcr = Some(pcr);
        // The audio time of this video PES: its DTS if the clocks agree, else as near as the
        // last audio packet allows.
        let audio_now = self.last_audio.map(|(apts, duration)| {
            let into = pts_diff(apts, dts).clamp(0, duration as i64);
            (apts + into.unsigned_abs()) & PTS_MASK
        });
        self.pcr_ref = Some((dts.wrapping_sub(PCR_DELAY) & PTS_MASK, audio_now));
        self.pcr_audio_at = audio_now;
        self.video_anchor = audio_now;
        if let Some(step) = self.last_video_dts.map(|prev| pts_diff(prev, dts)) {
            if (1..=TIME_JUMP as i64).contains(&step) {
                self.video_step = Some(step.unsigned_abs());
            } else if step != 0 {
                self.video_step = None;
            }
        }
        self.last_video_dts = Some(dts);
        self.write_psi_if_due(keyframe || discontinuity, out);
        let (header, header_len) = pes_header(STREAM_ID_VIDEO, pts, dts, es_len);
        let first = FirstPacket {
            pcr: Some(pcr),
            random_access: keyframe,
            discontinuity,
        };
        let [aud, head, inserted, tail] = self.fixup.parts(au, &fixed);
        let parts = [&header[..header_len], aud, head, inserted, tail];
        write_pes(out, &mut self.video_out, first, &parts);
        Ok(())
    }

    /// One Opus packet (an RTP payload), `pts` in 90 kHz: one PES (stream_id 0xBD, exact
    /// PES_packet_length) holding one Opus access unit behind an `opus_control_header`.
    pub fn write_audio(
        &mut self,
        packet: &[u8],
        pts: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        if self.cfg.audio.is_none() {
            return Err(MuxError::NoAudioTrack);
        }
        let len = packet.len();
        let samples = packet_samples(packet).ok_or(MuxError::InvalidOpusPacket { len })?;
        // au_size: a run of 0xFF, then the rest.
        let header_len = OPUS_PREFIX.len() + len / 255 + 1;
        // PES header after PES_packet_length: 3 bytes + PTS.
        if 3 + 5 + header_len + len > MAX_PES_LENGTH {
            return Err(MuxError::OpusPacketTooLarge { len });
        }
        self.opus_header.clear();
        self.opus_header.extend_from_slice(&OPUS_PREFIX);
        self.opus_header
            .extend(std::iter::repeat_n(0xFF, len / 255));
        self.opus_header.push((len % 255) as u8);

        let pts = pts & PTS_MASK;
        // 48 kHz samples to 90 kHz: at most 5760 * 15 / 8.
        let duration = u64::from(samples) * 15 / 8;
        self.last_audio = Some((pts, duration));
        let mut first = FirstPacket {
            random_access: true,
            ..FirstPacket::default()
        };
        if self.cfg.video {
            // The PCR is on the video PID; audio time carries it on between video PES.
            let keepalive = self.audio_keepalive(pts, duration);
            self.write_psi_if_due(false, out);
            if let Some(pcr) = keepalive {
                self.write_pcr_only(pcr, out);
            }
        } else {
            let (pcr, discontinuity) = self.next_pcr(pts);
            self.pcr = Some(pcr);
            self.write_psi_if_due(discontinuity, out);
            first.pcr = Some(pcr);
            first.discontinuity = discontinuity;
        }
        let (header, header_len) =
            pes_header(STREAM_ID_PRIVATE_1, pts, pts, self.opus_header.len() + len);
        let parts = [&header[..header_len], &self.opus_header, packet];
        write_pes(out, &mut self.audio_out, first, &parts);
        Ok(())
    }

    /// The PCR for a PES timed `ts`, and whether it starts a new timeline.
    fn next_pcr(&self, ts: u64) -> (u64, bool) {
        let candidate = ts.wrapping_sub(PCR_DELAY) & PTS_MASK;
        match self.pcr {
            None => (candidate, false),
            Some(last) => match pts_diff(last, candidate) {
                d if d >= 0 => (candidate, false),
                d if d > -(TIME_JUMP as i64) => (last, false),
                _ => (candidate, true),
            },
        }
    }

    /// With video as the PCR PID: the PCR to send now on the video PID (elapsed audio time
    /// since the last one added to it), if waiting for the next audio packet would leave more
    /// than [`PCR_PERIOD`] without one, or if none was sent yet. `duration`: this packet's.
    fn audio_keepalive(&mut self, pts: u64, duration: u64) -> Option<u64> {
        let (Some(last), Some((base, base_at))) = (self.pcr, self.pcr_ref) else {
            // No PCR yet: the audio starts the clock.
            let pcr = pts.wrapping_sub(PCR_DELAY) & PTS_MASK;
            self.pcr = Some(pcr);
            self.pcr_ref = Some((pcr, Some(pts)));
            self.pcr_audio_at = Some(pts);
            return Some(pcr);
        };
        // Video PES written before any audio: their audio time is taken to be now.
        let base_at = base_at.unwrap_or(pts);
        self.pcr_ref = Some((base, Some(base_at)));
        let since_pcr = pts_diff(*self.pcr_audio_at.get_or_insert(pts), pts);
        let elapsed = pts_diff(base_at, pts);
        if elapsed.unsigned_abs() > TIME_JUMP || since_pcr.unsigned_abs() > TIME_JUMP {
            // The audio clock jumped: measure from here.
            self.pcr_ref = Some((last, Some(pts)));
            self.pcr_audio_at = Some(pts);
            return None;
        }
        // The next chance after this packet is one packet later: too late for the period?
        // Then now, unless the video (at a frame rate that keeps the period) has a PES due
        // before then.
        let late = since_pcr > 0 && since_pcr.unsigned_abs() + duration > PCR_PERIOD;
        let video_due = match (self.video_step, self.video_anchor) {
            (Some(step), Some(at)) => step <= PCR_PERIOD && pts_diff(at, pts) < step as i64,
            _ => false,
        };
        if !late || video_due {
            return None;
        }
        // Never back: while the video's own time is behind the PCR (audio started it ahead),
        // the PCR waits for it.
        let value = base.wrapping_add_signed(elapsed) & PTS_MASK;
        let pcr = if pts_diff(last, value) > 0 {
            value
        } else {
            last
        };
        self.pcr = Some(pcr);
        self.pcr_audio_at = Some(pts);
        Some(pcr)
    }

    /// An adaptation-field-only packet with a PCR on the video PID.
    fn write_pcr_only(&mut self, pcr: u64, out: &mut Vec<u8>) {
        let mut pkt = [0xFFu8; PACKET_SIZE];
        self.video_out.header(&mut pkt, false);
        // Adaptation field only: the counter does not advance.
        pkt[3] = 0x20 | self.video_out.last_cc();
        pkt[4] = (PAYLOAD_SIZE - 1) as u8;
        pkt[5] = 0x10;
        pkt[6..12].copy_from_slice(&pcr_bytes(pcr));
        out.extend_from_slice(&pkt);
    }

    /// PAT and PMT, if `force`d, never sent, or [`PSI_PERIOD`] has passed on the video or
    /// the audio timeline (each stream's latest time is set before this is called).
    fn write_psi_if_due(&mut self, force: bool, out: &mut Vec<u8>) {
        let now = (self.last_video_dts, self.last_audio.map(|(pts, _)| pts));
        let due = match &mut self.psi_at {
            None => true,
            Some((video_at, audio_at)) => {
                let stale = |at: &mut Option<u64>, now: Option<u64>| match now {
                    Some(now) => {
                        !(0..PSI_PERIOD as i64).contains(&pts_diff(*at.get_or_insert(now), now))
                    }
                    None => false,
                };
                // Both are looked at, so a stream first seen now starts its measure.
                let video = stale(video_at, now.0);
                let audio = stale(audio_at, now.1);
                video || audio
            }
        };
        if !(force || due) {
            return;
        }
        self.psi_at = Some(now);
        for (pkt, output) in [
            (&mut self.pat, &mut self.pat_out),
            (&mut self.pmt, &mut self.pmt_out),
        ] {
            pkt[3] = 0x10 | output.take_cc();
            out.extend_from_slice(pkt);
        }
    }
}

#[cfg(test)]
mod tests;
