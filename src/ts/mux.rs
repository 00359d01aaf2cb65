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

use super::packet::{Pid, PACKET_SIZE, SYNC_BYTE};
use super::pes::timestamp_bytes;
use super::psi::{crc32_mpeg2, StreamType};
use crate::codec::h264::{nal_units, NalType};
use crate::codec::opus::packet_samples;
use crate::time::{PTS_MASK, PTS_WRAP};

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
const PAYLOAD: usize = PACKET_SIZE - 4;
const STREAM_ID_VIDEO: u8 = 0xE0;
const STREAM_ID_PRIVATE_1: u8 = 0xBD;
const TABLE_PAT: u8 = 0x00;
const TABLE_PMT: u8 = 0x02;
const TRANSPORT_STREAM_ID: u16 = 1;
/// Access unit delimiter, primary_pic_type 7 (any slice type), with a 4-byte start code.
const AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xF0];
const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// `opus_control_header` prefix: 0x3FF in 11 bits, no trims, no control extension.
const OPUS_PREFIX: [u8; 2] = [0x7F, 0xE0];
/// The largest PES_packet_length.
const MAX_PES_LENGTH: usize = 0xFFFF;

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

/// Continuity counter of one PID.
#[derive(Clone, Copy, Debug)]
struct Output {
    pid: Pid,
    /// The counter of the next payload-bearing packet.
    cc: u8,
}

impl Output {
    fn new(pid: Pid) -> Self {
        Self {
            pid: Pid(pid.0 & 0x1FFF),
            cc: 0,
        }
    }

    fn take_cc(&mut self) -> u8 {
        let cc = self.cc;
        self.cc = (cc + 1) & 0x0F;
        cc
    }

    /// The counter of the last payload-bearing packet (adaptation-field-only packets repeat it).
    fn last_cc(&self) -> u8 {
        self.cc.wrapping_sub(1) & 0x0F
    }

    /// Sync byte, PID with the payload_unit_start_indicator; byte 3 is left to the caller.
    fn header(&self, pkt: &mut [u8; PACKET_SIZE], pusi: bool) {
        pkt[0] = SYNC_BYTE;
        pkt[1] = u8::from(pusi) << 6 | (self.pid.0 >> 8) as u8 & 0x1F;
        pkt[2] = self.pid.0 as u8;
    }
}

/// Adaptation field contents of the first packet of a PES.
#[derive(Clone, Copy, Debug, Default)]
struct FirstPacket {
    /// PCR base (90 kHz, 33 bits).
    pcr: Option<u64>,
    random_access: bool,
    discontinuity: bool,
}

impl FirstPacket {
    /// The adaptation field after its length byte (flags, PCR); empty when nothing is set.
    fn fields(&self) -> ([u8; 7], usize) {
        let mut f = [0u8; 7];
        f[0] = u8::from(self.discontinuity) << 7
            | u8::from(self.random_access) << 6
            | u8::from(self.pcr.is_some()) << 4;
        if let Some(pcr) = self.pcr {
            f[1..7].copy_from_slice(&pcr_bytes(pcr));
            (f, 7)
        } else if f[0] != 0 {
            (f, 1)
        } else {
            (f, 0)
        }
    }
}

/// The 6 PCR bytes: 33-bit base, 6 reserved bits, 9-bit extension (0: 90 kHz precision).
fn pcr_bytes(base: u64) -> [u8; 6] {
    let base = base & PTS_MASK;
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        ((base & 1) as u8) << 7 | 0x7E,
        0,
    ]
}

/// A PES header with data_alignment_indicator, PTS and (when it differs) DTS. PES_packet_length
/// is exact, or 0 (unbounded) when `payload_len` does not fit it.
fn pes_header(stream_id: u8, pts: u64, dts: u64, payload_len: usize) -> ([u8; 19], usize) {
    let (pts, dts) = (pts & PTS_MASK, dts & PTS_MASK);
    let mut h = [0u8; 19];
    h[..4].copy_from_slice(&[0, 0, 1, stream_id]);
    h[6] = 0x84; // '10', not scrambled, data_alignment_indicator
    let data_len: usize = if pts == dts {
        h[7] = 0x80;
        h[9..14].copy_from_slice(&timestamp_bytes(0b0010, pts));
        5
    } else {
        h[7] = 0xC0;
        h[9..14].copy_from_slice(&timestamp_bytes(0b0011, pts));
        h[14..19].copy_from_slice(&timestamp_bytes(0b0001, dts));
        10
    };
    h[8] = data_len as u8;
    let length = (3 + data_len).saturating_add(payload_len);
    let length = if length > MAX_PES_LENGTH { 0 } else { length };
    h[4..6].copy_from_slice(&(length as u16).to_be_bytes());
    (h, 9 + data_len)
}

/// Reads consecutive bytes out of several slices.
struct Gather<'a> {
    parts: &'a [&'a [u8]],
    index: usize,
    offset: usize,
}

impl Gather<'_> {
    /// Fills `dst` (or as much as the parts hold).
    fn fill(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let Some(part) = self.parts.get(self.index) else {
                return;
            };
            let rest = part.get(self.offset..).unwrap_or_default();
            let n = rest.len().min(dst.len());
            let (head, tail) = std::mem::take(&mut dst).split_at_mut(n);
            head.copy_from_slice(&rest[..n]);
            dst = tail;
            self.offset += n;
            if self.offset >= part.len() {
                self.index += 1;
                self.offset = 0;
            }
        }
    }
}

/// Splits one PES (the concatenation of `parts`, header first) into packets on `output`'s PID.
/// The first packet carries `first`'s adaptation field; the last is filled up with
/// adaptation-field stuffing, never with payload bytes.
fn write_pes(out: &mut Vec<u8>, output: &mut Output, first: FirstPacket, parts: &[&[u8]]) {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve((total / PAYLOAD + 2) * PACKET_SIZE);
    let mut gather = Gather {
        parts,
        index: 0,
        offset: 0,
    };
    let mut remaining = total;
    let mut af = Some(first);
    while remaining > 0 {
        let mut pkt = [0xFFu8; PACKET_SIZE];
        output.header(&mut pkt, af.is_some());
        let (fields, fields_len) = af.take().map_or(([0; 7], 0), |f| f.fields());
        let af_min = if fields_len > 0 { 1 + fields_len } else { 0 };
        let payload = remaining.min(PAYLOAD - af_min);
        // Adaptation field bytes, length byte included.
        let af_len = PAYLOAD - payload;
        let afc = if af_len > 0 { 0x30 } else { 0x10 };
        pkt[3] = afc | output.take_cc();
        if af_len > 0 {
            pkt[4] = (af_len - 1) as u8;
            if af_len > 1 {
                // Flags (0 when only stuffing), the PCR, then 0xFF stuffing already in place.
                pkt[5] = 0;
                pkt[5..5 + fields_len].copy_from_slice(&fields[..fields_len]);
            }
        }
        gather.fill(&mut pkt[4 + af_len..]);
        out.extend_from_slice(&pkt);
        remaining -= payload;
    }
}

/// One PSI section in one packet (pointer_field 0, 0xFF stuffing); CC set when written.
fn psi_packet(pid: Pid, table_id: u8, id: u16, body: &[u8]) -> [u8; PACKET_SIZE] {
    let mut pkt = [0xFFu8; PACKET_SIZE];
    Output::new(pid).header(&mut pkt, true);
    pkt[3] = 0x10;
    pkt[4] = 0; // pointer_field
    let section_length = 5 + body.len() + 4;
    let s = &mut pkt[5..];
    s[0] = table_id;
    s[1] = 0xB0 | (section_length >> 8) as u8 & 0x0F; // syntax indicator, '0', reserved
    s[2] = section_length as u8;
    s[3..5].copy_from_slice(&id.to_be_bytes());
    s[5] = 0xC1; // reserved, version 0, current_next_indicator
    s[6] = 0; // section_number
    s[7] = 0; // last_section_number
    s[8..8 + body.len()].copy_from_slice(body);
    let crc_at = 8 + body.len();
    let crc = crc32_mpeg2(&s[..crc_at]);
    s[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
    pkt
}

/// 13-bit PID with the 3 reserved bits set, as PAT and PMT write it.
fn reserved_pid(pid: Pid) -> [u8; 2] {
    (0xE000 | pid.0 & 0x1FFF).to_be_bytes()
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

/// `to - from` on the 33-bit clock, in (-2^32, 2^32]: a step above 2^32 is a step back.
fn diff(from: u64, to: u64) -> i64 {
    // Below 2^33: fits i64.
    let d = (to.wrapping_sub(from) & PTS_MASK) as i64;
    if d > (PTS_WRAP / 2) as i64 {
        d - PTS_WRAP as i64
    } else {
        d
    }
}

/// Where the NAL units of an access unit are, for `write_video`.
#[derive(Clone, Copy, Debug)]
struct AuLayout {
    /// The first start code (bytes before it are dropped).
    start: usize,
    /// The first NAL unit is an AUD.
    aud: bool,
    sps: bool,
    pps: bool,
    idr: bool,
    /// Where the parameter sets go when the access unit has no SPS: after its AUD.
    after_aud: usize,
    /// Where the PPS goes when the access unit has an SPS but no PPS: after the SPS.
    after_sps: usize,
}

/// The start code before the NAL unit at `nal_at` (4 bytes when a zero byte precedes it).
fn start_code_before(au: &[u8], nal_at: usize) -> usize {
    let three = nal_at.saturating_sub(3);
    match three.checked_sub(1) {
        Some(four) if au.get(four) == Some(&0) => four,
        _ => three,
    }
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
    pat_out: Output,
    pmt_out: Output,
    video_out: Output,
    audio_out: Output,
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
    /// The latest SPS and PPS seen (NAL units without start code).
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// Parameter sets put into the current access unit.
    inserted: Vec<u8>,
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
            pat_out: Output::new(Pid::PAT),
            pmt_out: Output::new(cfg.pmt_pid),
            video_out: Output::new(cfg.video_pid),
            audio_out: Output::new(cfg.audio_pid),
            cfg,
            pcr: None,
            pcr_ref: None,
            pcr_audio_at: None,
            last_audio: None,
            last_video_dts: None,
            video_step: None,
            video_anchor: None,
            psi_at: None,
            sps: Vec::new(),
            pps: Vec::new(),
            inserted: Vec::new(),
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
        let layout = self.scan(au).ok_or(MuxError::NoNalUnits)?;
        let keyframe = keyframe || layout.idr;
        self.inserted.clear();
        let mut at = layout.start;
        if keyframe && !layout.sps {
            for (ps, missing) in [(&self.sps, true), (&self.pps, !layout.pps)] {
                if missing && !ps.is_empty() {
                    self.inserted.extend_from_slice(&START_CODE);
                    self.inserted.extend_from_slice(ps);
                }
            }
            at = layout.after_aud;
        } else if keyframe && !layout.pps && !self.pps.is_empty() {
            self.inserted.extend_from_slice(&START_CODE);
            self.inserted.extend_from_slice(&self.pps);
            at = layout.after_sps;
        }
        let aud: &[u8] = if layout.aud { &[] } else { &AUD };
        // start <= at <= au.len(): both come from NAL positions in `au`.
        let (head, tail) = au.split_at(at.min(au.len()));
        let head = head.get(layout.start..).unwrap_or_default();
        let es_len = aud.len() + head.len() + self.inserted.len() + tail.len();

        let (pcr, discontinuity) = self.next_pcr(dts);
        self.pcr = Some(pcr);
        // The audio time of this video PES: its DTS if the clocks agree, else as near as the
        // last audio packet allows.
        let audio_now = self.last_audio.map(|(apts, duration)| {
            let into = diff(apts, dts).clamp(0, duration as i64);
            (apts + into.unsigned_abs()) & PTS_MASK
        });
        self.pcr_ref = Some((dts.wrapping_sub(PCR_DELAY) & PTS_MASK, audio_now));
        self.pcr_audio_at = audio_now;
        self.video_anchor = audio_now;
        if let Some(step) = self.last_video_dts.map(|prev| diff(prev, dts)) {
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
        let parts = [&header[..header_len], aud, head, &self.inserted, tail];
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

    /// Finds the NAL units of `au` and caches its SPS and PPS. `None`: no NAL unit.
    fn scan(&mut self, au: &[u8]) -> Option<AuLayout> {
        let base = au.as_ptr() as usize;
        let mut layout: Option<AuLayout> = None;
        let mut prev = None;
        for nal in nal_units(au) {
            // `nal` is a sub-slice of `au`, right after a start code.
            let start_code = start_code_before(au, (nal.as_ptr() as usize).saturating_sub(base));
            let kind = NalType::of(nal);
            let l = match &mut layout {
                Some(l) => {
                    if l.aud && l.after_aud == au.len() {
                        l.after_aud = start_code; // the NAL unit after the leading AUD
                    }
                    if prev == Some(NalType::SPS) && l.after_sps == au.len() {
                        l.after_sps = start_code; // the NAL unit after the first SPS
                    }
                    l
                }
                None => layout.insert(AuLayout {
                    start: start_code,
                    aud: kind == Some(NalType::AUD),
                    sps: false,
                    pps: false,
                    idr: false,
                    after_aud: if kind == Some(NalType::AUD) {
                        au.len()
                    } else {
                        start_code
                    },
                    after_sps: au.len(),
                }),
            };
            match kind {
                Some(NalType::SPS) => {
                    l.sps = true;
                    if self.sps != nal {
                        self.sps.clear();
                        self.sps.extend_from_slice(nal);
                    }
                }
                Some(NalType::PPS) => {
                    l.pps = true;
                    if self.pps != nal {
                        self.pps.clear();
                        self.pps.extend_from_slice(nal);
                    }
                }
                Some(NalType::IDR) => l.idr = true,
                _ => {}
            }
            prev = kind;
        }
        layout
    }

    /// The PCR for a PES timed `ts`, and whether it starts a new timeline.
    fn next_pcr(&self, ts: u64) -> (u64, bool) {
        let candidate = ts.wrapping_sub(PCR_DELAY) & PTS_MASK;
        match self.pcr {
            None => (candidate, false),
            Some(last) => match diff(last, candidate) {
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
        let since_pcr = diff(*self.pcr_audio_at.get_or_insert(pts), pts);
        let elapsed = diff(base_at, pts);
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
            (Some(step), Some(at)) => step <= PCR_PERIOD && diff(at, pts) < step as i64,
            _ => false,
        };
        if !late || video_due {
            return None;
        }
        // Never back: while the video's own time is behind the PCR (audio started it ahead),
        // the PCR waits for it.
        let value = base.wrapping_add_signed(elapsed) & PTS_MASK;
        let pcr = if diff(last, value) > 0 { value } else { last };
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
        pkt[4] = (PAYLOAD - 1) as u8;
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
                        !(0..PSI_PERIOD as i64).contains(&diff(*at.get_or_insert(now), now))
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
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::codec::h264::{AccessUnit, H264Assembler};
    use crate::codec::opus::split_pes;
    use crate::ts::{Codec, DemuxEvent, DemuxProblem, Demuxer, Pes, TrackSet};

    // ---- input: real access units and Opus packets from testdata/h264_opus.ts ----------------

    #[derive(Clone, Debug)]
    struct VideoIn {
        data: Vec<u8>,
        pts: u64,
        dts: u64,
        keyframe: bool,
    }

    #[derive(Clone, Debug)]
    struct AudioIn {
        data: Vec<u8>,
        pts: u64,
    }

    fn testdata(name: &str) -> Option<Vec<u8>> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        let data = std::fs::read(&path).ok();
        if data.is_none() {
            eprintln!("skipping: {} not found", path.display());
        }
        data
    }

    fn has_idr(annexb: &[u8]) -> bool {
        nal_units(annexb).any(|n| NalType::of(n) == Some(NalType::IDR))
    }

    fn types(annexb: &[u8]) -> Vec<u8> {
        nal_units(annexb).map(|n| n[0] & 0x1F).collect()
    }

    /// Video PES payloads as they are in the file (AUD first, SPS/PPS before IDRs), and every
    /// Opus packet with its own PTS.
    fn source() -> Option<(Vec<VideoIn>, Vec<AudioIn>)> {
        let d = demux(&testdata("h264_opus.ts")?);
        assert!(d.problems.is_empty());
        let video = d
            .video_pes
            .iter()
            .map(|p| VideoIn {
                data: p.data.to_vec(),
                pts: p.pts.unwrap(),
                dts: p.dts.or(p.pts).unwrap(),
                keyframe: has_idr(&p.data),
            })
            .collect();
        Some((video, d.opus))
    }

    /// The access units as the project's assembler gives them (no AUD, SPS/PPS before IDRs).
    fn assembled(video: &[VideoIn]) -> Vec<AccessUnit> {
        let mut a = H264Assembler::new();
        let mut out = Vec::new();
        for v in video {
            a.push(&pes(&v.data, v.pts, v.dts), &mut out);
        }
        out
    }

    fn pes(data: &[u8], pts: u64, dts: u64) -> Pes {
        Pes {
            pid: Pid(0x100),
            pts: Some(pts & PTS_MASK),
            dts: (pts != dts).then_some(dts & PTS_MASK),
            random_access: false,
            discontinuity: false,
            data: data.to_vec().into(),
        }
    }

    /// Muxes both lists interleaved by time (video first on a tie).
    fn mux(cfg: MuxConfig, video: &[VideoIn], audio: &[AudioIn]) -> Vec<u8> {
        mux_skewed(cfg, video, audio, 0)
    }

    /// As `mux`, with `audio_skew` added to each audio PTS but not to when it is written.
    fn mux_skewed(
        cfg: MuxConfig,
        video: &[VideoIn],
        audio: &[AudioIn],
        audio_skew: i64,
    ) -> Vec<u8> {
        let mut m = Muxer::new(cfg);
        let mut out = Vec::new();
        let (mut v, mut a) = (video.iter().peekable(), audio.iter().peekable());
        loop {
            match (v.peek(), a.peek()) {
                (Some(vi), Some(ai)) if vi.dts <= ai.pts => {
                    m.write_video(&vi.data, vi.pts, vi.dts, vi.keyframe, &mut out)
                        .unwrap();
                    v.next();
                }
                (Some(vi), None) => {
                    m.write_video(&vi.data, vi.pts, vi.dts, vi.keyframe, &mut out)
                        .unwrap();
                    v.next();
                }
                (_, Some(ai)) => {
                    m.write_audio(&ai.data, ai.pts.wrapping_add_signed(audio_skew), &mut out)
                        .unwrap();
                    a.next();
                }
                (None, None) => break,
            }
        }
        assert_eq!(out.len() % PACKET_SIZE, 0);
        out
    }

    // ---- output: through the project's demuxer and codec parsers ------------------------------

    #[derive(Default)]
    struct Demuxed {
        tracks: Vec<TrackSet>,
        video_pes: Vec<Pes>,
        aus: Vec<AccessUnit>,
        opus: Vec<AudioIn>,
        problems: Vec<DemuxProblem>,
        pcrs: Vec<u64>,
        discontinuities: usize,
    }

    fn demux(ts: &[u8]) -> Demuxed {
        let mut d = Demuxer::new();
        let mut events = Vec::new();
        d.push(ts, &mut events);
        d.flush(&mut events);
        let mut r = Demuxed::default();
        let mut h264 = H264Assembler::new();
        for e in events {
            match e {
                DemuxEvent::Tracks(t) => r.tracks.push(t),
                DemuxEvent::Programs(_) => {}
                DemuxEvent::Problem(p) => r.problems.push(p),
                DemuxEvent::Pcr { pcr_27mhz, .. } => r.pcrs.push(pcr_27mhz),
                DemuxEvent::Discontinuity { .. } => r.discontinuities += 1,
                DemuxEvent::Pes(p) => {
                    let t = r.tracks.last().expect("PES after the PMT");
                    if Some(p.pid) == t.h264().map(|v| v.pid) {
                        h264.push(&p, &mut r.aus);
                        r.video_pes.push(p);
                    } else if Some(p.pid) == t.audio().map(|a| a.pid) {
                        let mut packets = Vec::new();
                        split_pes(&p.data, &mut packets).expect("valid Opus PES");
                        for packet in packets {
                            r.opus.push(AudioIn {
                                data: packet.data.to_vec(),
                                pts: p.pts.unwrap() + u64::from(packet.offset_samples) * 15 / 8,
                            });
                        }
                    }
                }
            }
        }
        r
    }

    fn packets(ts: &[u8]) -> impl Iterator<Item = &[u8; PACKET_SIZE]> {
        ts.chunks_exact(PACKET_SIZE)
            .map(|p| <&[u8; PACKET_SIZE]>::try_from(p).unwrap())
    }

    fn pid_of(pkt: &[u8]) -> u16 {
        u16::from(pkt[1] & 0x1F) << 8 | u16::from(pkt[2])
    }

    /// PCR base of a packet, if it has one.
    fn pcr_of(pkt: &[u8; PACKET_SIZE]) -> Option<u64> {
        (pkt[3] & 0x20 != 0 && pkt[4] >= 7 && pkt[5] & 0x10 != 0).then(|| {
            u64::from(pkt[6]) << 25
                | u64::from(pkt[7]) << 17
                | u64::from(pkt[8]) << 9
                | u64::from(pkt[9]) << 1
                | u64::from(pkt[10] >> 7)
        })
    }

    fn stereo() -> MuxConfig {
        MuxConfig::default()
    }

    // ---- tests -------------------------------------------------------------------------------

    #[test]
    fn round_trip_restores_tracks_access_units_and_opus_packets() {
        let Some((video, audio)) = source() else {
            return;
        };
        let ts = mux(stereo(), &video, &audio);
        let d = demux(&ts);
        assert_eq!(d.problems, []);
        assert_eq!(d.discontinuities, 0);
        assert_eq!(d.tracks.len(), 1);
        let t = &d.tracks[0];
        assert_eq!(
            (t.program_number, t.pmt_pid, t.pcr_pid),
            (1, Pid(0x1000), Pid(0x100))
        );
        let codecs: Vec<_> = t.tracks.iter().map(|t| (t.pid, t.codec.clone())).collect();
        assert_eq!(
            codecs,
            [
                (Pid(0x100), Codec::H264),
                (Pid(0x101), Codec::Opus { channels: 2 })
            ]
        );
        // The file already has one AUD per access unit: none is added, the PES data is the same.
        assert_eq!(d.video_pes.len(), video.len());
        for (p, v) in d.video_pes.iter().zip(&video) {
            assert_eq!(&p.data[..], &v.data[..]);
            assert_eq!((p.pts, p.random_access), (Some(v.pts), v.keyframe));
        }
        assert_eq!(d.aus, assembled(&video));
        assert_eq!(d.aus.len(), 180);
        assert_eq!(d.aus.iter().filter(|au| au.keyframe).count(), 6);
        assert_eq!(d.opus.len(), 301);
        for (got, sent) in d.opus.iter().zip(&audio) {
            assert_eq!((&got.data, got.pts), (&sent.data, sent.pts));
        }
        assert!(!d.pcrs.is_empty());
        assert!(
            d.pcrs.windows(2).all(|w| w[1] >= w[0]),
            "PCR never goes back"
        );
    }

    #[test]
    fn aud_is_added_when_missing_and_never_doubled() {
        let Some((video, audio)) = source() else {
            return;
        };
        // The assembler's access units have no AUD (and SPS/PPS before every IDR).
        let aus = assembled(&video);
        let plain: Vec<VideoIn> = aus
            .iter()
            .map(|au| VideoIn {
                data: au.data.to_vec(),
                pts: au.pts,
                dts: au.dts,
                keyframe: au.keyframe,
            })
            .collect();
        let d = demux(&mux(stereo(), &plain, &audio));
        assert_eq!(d.problems, []);
        for (p, v) in d.video_pes.iter().zip(&plain) {
            assert_eq!(&p.data[..AUD.len()], &AUD);
            assert_eq!(&p.data[AUD.len()..], &v.data[..]);
            assert_eq!(types(&p.data).iter().filter(|&&t| t == 9).count(), 1);
        }
        assert_eq!(d.aus, aus);
    }

    #[test]
    fn sps_and_pps_are_inserted_before_an_idr_that_lacks_them() {
        let Some((video, audio)) = source() else {
            return;
        };
        // Later IDRs (AUD, SPS, PPS, IDR in the file) lose their parameter sets.
        let mut stripped = video.clone();
        let mut stripped_count = 0;
        for v in stripped.iter_mut().skip(1).filter(|v| v.keyframe) {
            assert_eq!(types(&v.data), [9, 7, 8, 5]);
            let idr = nal_units(&v.data).last().unwrap().to_vec();
            v.data = [&[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1][..], &idr].concat();
            stripped_count += 1;
        }
        assert_eq!(stripped_count, 5);
        let d = demux(&mux(stereo(), &stripped, &audio));
        assert_eq!(d.problems, []);
        for (p, v) in d.video_pes.iter().zip(&video).filter(|(_, v)| v.keyframe) {
            let t = types(&p.data);
            assert_eq!(&t[..3], [9, 7, 8], "AUD, SPS, PPS");
            assert_eq!(t.iter().filter(|&&t| t == 7).count(), 1);
            let want: Vec<_> = nal_units(&v.data).filter(|n| n[0] & 0x1F != 6).collect();
            let got: Vec<_> = nal_units(&p.data).filter(|n| n[0] & 0x1F != 6).collect();
            assert_eq!(got, want, "the file's own SPS and PPS bytes");
        }
        // What a viewer gets is the same as from the original file.
        assert_eq!(d.aus, assembled(&video));
    }

    #[test]
    fn missing_pps_goes_after_the_access_units_own_sps() {
        const SPS: &[u8] = &[0x67, 0x42, 0xC0, 0x1E, 0xD9];
        const PPS: &[u8] = &[0x68, 0xCE, 0x3C, 0x80];
        const IDR: &[u8] = &[0x65, 0x88, 0x84];
        const SLICE: &[u8] = &[0x41, 0x9A];
        let annexb = |nals: &[&[u8]]| -> Vec<u8> {
            nals.iter()
                .flat_map(|n| [&[0, 0, 1][..], n].concat())
                .collect()
        };
        let mut m = Muxer::new(MuxConfig {
            audio: None,
            ..stereo()
        });
        let mut ts = Vec::new();
        m.write_video(&annexb(&[SPS, PPS, IDR]), 0, 0, true, &mut ts)
            .unwrap();
        m.write_video(&annexb(&[SLICE]), 3000, 3000, false, &mut ts)
            .unwrap();
        // Garbage before the first start code is dropped; the flag alone makes a keyframe.
        let odd = [&[0xAB, 0xCD][..], &annexb(&[SPS, IDR])].concat();
        m.write_video(&odd, 6000, 6000, false, &mut ts).unwrap();
        m.write_video(&annexb(&[SLICE]), 9000, 9000, true, &mut ts)
            .unwrap();
        let d = demux(&ts);
        assert_eq!(d.problems, []);
        let nals: Vec<Vec<&[u8]>> = d
            .video_pes
            .iter()
            .map(|p| nal_units(&p.data).collect())
            .collect();
        const AUD_NAL: &[u8] = &[0x09, 0xF0];
        assert_eq!(nals[0], [AUD_NAL, SPS, PPS, IDR]);
        assert_eq!(nals[1], [AUD_NAL, SLICE]);
        assert_eq!(nals[2], [AUD_NAL, SPS, PPS, IDR]);
        assert_eq!(nals[3], [AUD_NAL, SPS, PPS, SLICE]);
        let flags: Vec<_> = d.video_pes.iter().map(|p| p.random_access).collect();
        assert_eq!(flags, [true, false, true, true]);
        // Start codes as they were; the inserted PPS has a 4-byte one.
        let want = [
            &AUD[..],
            &[0, 0, 1],
            SPS,
            &[0, 0, 0, 1],
            PPS,
            &[0, 0, 1],
            IDR,
        ]
        .concat();
        assert_eq!(&d.video_pes[2].data[..], &want[..]);
    }

    #[test]
    fn pts_wrap_33bit() {
        let Some((video, audio)) = source() else {
            return;
        };
        // Shift so the 33-bit wrap falls in the middle; the muxer takes u64 modulo 2^33.
        let shift = PTS_WRAP - video[90].pts;
        let video: Vec<_> = video
            .into_iter()
            .map(|v| VideoIn {
                pts: v.pts + shift,
                dts: v.dts + shift,
                ..v
            })
            .collect();
        let audio: Vec<_> = audio
            .into_iter()
            .map(|a| AudioIn {
                pts: a.pts + shift,
                ..a
            })
            .collect();
        let ts = mux(stereo(), &video, &audio);
        let d = demux(&ts);
        assert_eq!(d.problems, []);
        assert_eq!(d.discontinuities, 0, "a wrap is not a discontinuity");
        let pts: Vec<_> = d.aus.iter().map(|au| au.pts).collect();
        let want: Vec<_> = video.iter().map(|v| v.pts & PTS_MASK).collect();
        assert_eq!(pts, want);
        assert_eq!(d.aus[90].pts, 0);
        assert!(d
            .aus
            .iter()
            .zip(&video)
            .all(|(au, v)| au.keyframe == v.keyframe));
        let opus: Vec<_> = d.opus.iter().map(|a| (a.pts, &a.data)).collect();
        let want: Vec<_> = audio.iter().map(|a| (a.pts & PTS_MASK, &a.data)).collect();
        assert_eq!(opus, want);
        // The PCR steps forward across the wrap too.
        let pcrs: Vec<u64> = d.pcrs.iter().map(|p| p / 300).collect();
        assert!(pcrs
            .windows(2)
            .all(|w| (0..=PCR_PERIOD as i64).contains(&diff(w[0], w[1]))));
        assert!(pcrs.windows(2).any(|w| w[1] < w[0]), "wrapped");
    }

    #[test]
    fn continuity_counters_run_on_every_pid() {
        let Some((video, audio)) = source() else {
            return;
        };
        let ts = mux(stereo(), &video, &audio);
        let mut last = std::collections::HashMap::new();
        let mut af_only = 0;
        for pkt in packets(&ts) {
            assert_eq!(pkt[0], SYNC_BYTE);
            let pid = pid_of(pkt);
            let cc = pkt[3] & 0x0F;
            if pkt[3] & 0x10 != 0 {
                if let Some(prev) = last.insert(pid, cc) {
                    assert_eq!(cc, (prev + 1) & 0x0F, "PID {pid:#x}");
                }
            } else {
                af_only += 1;
                if let Some(&prev) = last.get(&pid) {
                    assert_eq!(cc, prev, "no payload: the counter repeats");
                }
            }
        }
        assert_eq!(
            last.keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            [0, 0x100, 0x101, 0x1000].into()
        );
        // 30 fps video gives a PCR every 33 ms: the audio clock is not needed once the frame
        // interval is known.
        assert!(af_only <= 2, "{af_only}");
    }

    #[test]
    fn psi_every_100ms_and_right_before_each_keyframe() {
        let Some((video, audio)) = source() else {
            return;
        };
        let ts = mux(stereo(), &video, &audio);
        let all: Vec<_> = packets(&ts).collect();
        assert_eq!((pid_of(all[0]), pid_of(all[1])), (0, 0x1000));
        let mut pcr = None;
        let mut pat_at = Vec::new();
        for (i, pkt) in all.iter().enumerate() {
            if let Some(p) = pcr_of(pkt) {
                pcr = Some(p);
            }
            match pid_of(*pkt) {
                0 => {
                    pat_at.extend(pcr);
                    assert_eq!(pid_of(all[i + 1]), 0x1000, "PMT right after the PAT");
                }
                0x100 if pkt[1] & 0x40 != 0 && pkt[5] & 0x40 != 0 => {
                    assert_eq!((pid_of(all[i - 2]), pid_of(all[i - 1])), (0, 0x1000));
                }
                _ => {}
            }
        }
        // Every ~100 ms of PCR time: at most one video frame late.
        assert!(pat_at.windows(2).all(|w| w[1] - w[0] <= PSI_PERIOD + 3000));
        assert!(pat_at.len() >= 55, "{}", pat_at.len());
        // 6 s: 60 by the period (a little more: the audio timeline, 20 ms steps, may come
        // first) and 6 before the keyframes.
        assert!(pat_at.len() <= 75, "{}", pat_at.len());
    }

    #[test]
    fn pcr_every_40ms_at_low_frame_rates_from_audio_time() {
        let Some((video, audio)) = source() else {
            return;
        };
        // 5 fps: every sixth frame (the demuxer does not decode, references do not matter).
        let slow: Vec<_> = video.iter().step_by(6).cloned().collect();
        let ts = mux(stereo(), &slow, &audio);
        let d = demux(&ts);
        assert_eq!(d.problems, []);
        let pcrs: Vec<u64> = d.pcrs.iter().map(|p| p / 300).collect();
        let steps: Vec<i64> = pcrs.windows(2).map(|w| diff(w[0], w[1])).collect();
        assert!(
            steps.iter().all(|&s| (0..=PCR_PERIOD as i64).contains(&s)),
            "{steps:?}"
        );
        // Those from the audio clock are adaptation-field-only packets on the video PID.
        let af_only = packets(&ts)
            .filter(|p| pid_of(*p) == 0x100 && p[3] & 0x30 == 0x20)
            .count();
        assert!(af_only > 100, "{af_only}");
        // The PCR stays behind each video DTS by at most PCR_DELAY.
        let mut pcr = None;
        for pkt in packets(&ts) {
            if let Some(p) = pcr_of(pkt) {
                pcr = Some(p);
            }
            if pid_of(pkt) == 0x100 && pkt[1] & 0x40 != 0 {
                let payload = &pkt[4 + usize::from(pkt[4]) + 1..];
                let dts = crate::ts::pes::read_timestamp(payload[9..14].try_into().unwrap());
                let lead = diff(pcr.unwrap(), dts);
                assert!((0..=PCR_DELAY as i64).contains(&lead), "{lead}");
            }
        }
    }

    #[test]
    fn audio_skewed_against_video_does_not_pull_the_pcr() {
        let Some((video, audio)) = source() else {
            return;
        };
        let slow: Vec<_> = video.iter().step_by(6).cloned().collect();
        // Audio timestamps 444 ms behind / ahead of the video ones for the same instant.
        for skew in [-40_000i64, 40_000] {
            let ts = mux_skewed(stereo(), &slow, &audio, skew);
            let d = demux(&ts);
            assert_eq!(d.problems, []);
            // A PCR started by audio ahead of the video waits for it (PCR held), one started
            // behind it jumps to it: after a second, the PCR follows the video.
            let settled = slow[0].dts + TIME_JUMP;
            let (mut pcr, mut pcrs) = (None, Vec::new());
            for pkt in packets(&ts) {
                if let Some(p) = pcr_of(pkt) {
                    pcr = Some(p);
                    pcrs.push(p);
                }
                if pid_of(pkt) == 0x100 && pkt[1] & 0x40 != 0 {
                    let payload = &pkt[4 + usize::from(pkt[4]) + 1..];
                    let dts = crate::ts::pes::read_timestamp(payload[9..14].try_into().unwrap());
                    if dts < settled {
                        pcrs.clear();
                        continue;
                    }
                    // Off by at most one audio packet (20 ms) from the video timing.
                    let lead = diff(pcr.unwrap(), dts);
                    let near = PCR_DELAY as i64 - 1800..=PCR_DELAY as i64;
                    assert!(near.contains(&lead), "skew {skew}: {lead}");
                }
            }
            let steps: Vec<i64> = pcrs.windows(2).map(|w| diff(w[0], w[1])).collect();
            assert!(steps.len() > 100);
            let ok = 0..=(PCR_PERIOD + 1800) as i64;
            assert!(
                steps.iter().all(|s| ok.contains(s)),
                "skew {skew}: {steps:?}"
            );
        }
    }

    #[test]
    fn audio_only_and_video_only_programs() {
        let Some((video, audio)) = source() else {
            return;
        };
        let mono = MuxConfig {
            video: false,
            audio: Some(1),
            ..stereo()
        };
        let d = demux(&mux(mono, &[], &audio));
        assert_eq!(d.problems, []);
        let t = &d.tracks[0];
        assert_eq!(t.pcr_pid, Pid(0x101));
        assert_eq!(t.tracks.len(), 1);
        assert_eq!(t.audio().unwrap().codec, Codec::Opus { channels: 1 });
        assert_eq!(d.opus.len(), audio.len());
        assert_eq!(d.pcrs.len(), audio.len(), "a PCR on every audio PES");

        let video_only = MuxConfig {
            audio: None,
            ..stereo()
        };
        let d = demux(&mux(video_only, &video, &[]));
        assert_eq!(d.problems, []);
        assert_eq!(d.tracks[0].tracks.len(), 1);
        assert_eq!(d.tracks[0].pcr_pid, Pid(0x100));
        assert_eq!(d.aus, assembled(&video));
        assert_eq!(d.pcrs.len(), video.len());

        let mut m = Muxer::new(video_only);
        let mut out = Vec::new();
        assert_eq!(
            m.write_audio(&[0xFC], 0, &mut out),
            Err(MuxError::NoAudioTrack)
        );
        let mut m = Muxer::new(mono);
        assert_eq!(
            m.write_video(&AUD, 0, 0, false, &mut out),
            Err(MuxError::NoVideoTrack)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn pes_headers_lengths_and_stuffing() {
        let mut m = Muxer::new(stereo());
        let mut ts = Vec::new();
        // A 100 kB access unit: PES_packet_length 0; a small one: exact; with DTS.
        let big = [&AUD[..], &[0, 0, 1, 0x65], &vec![0x55; 100_000]].concat();
        m.write_video(&big, 9000, 6000, true, &mut ts).unwrap();
        let small_at = ts.len();
        m.write_video(&[0, 0, 1, 0x41, 1, 2, 3], 12_000, 9000, false, &mut ts)
            .unwrap();
        let audio_at = ts.len();
        // 300 bytes: au_size is ff 2d.
        let opus = [&[0xFC][..], &[7; 299]].concat();
        m.write_audio(&opus, 9100, &mut ts).unwrap();

        let all: Vec<_> = packets(&ts).collect();
        let first_video = all.iter().position(|p| pid_of(*p) == 0x100).unwrap();
        let p = all[first_video];
        // Adaptation field: RAI and PCR (dts - 100 ms), then the PES header.
        assert_eq!(p[3] & 0x30, 0x30);
        assert_eq!(&p[4..6], &[7, 0x50]);
        assert_eq!(pcr_of(p), Some(PTS_WRAP + 6000 - PCR_DELAY));
        let pes = &p[12..];
        assert_eq!(&pes[..9], &[0, 0, 1, 0xE0, 0, 0, 0x84, 0xC0, 10]);
        assert_eq!(&pes[9..14], &timestamp_bytes(0b0011, 9000));
        assert_eq!(&pes[14..19], &timestamp_bytes(0b0001, 6000));

        let small = all[small_at / PACKET_SIZE..audio_at / PACKET_SIZE].to_vec();
        assert_eq!(small.len(), 1);
        let p = small[0];
        // PCR field, then 0xFF stuffing up to the PES: 19 + 13 bytes (AUD added).
        let af_len = usize::from(p[4]);
        assert_eq!(4 + 1 + af_len + 19 + 13, PACKET_SIZE);
        assert_eq!(p[5], 0x10);
        assert!(p[12..5 + af_len].iter().all(|&b| b == 0xFF));
        let pes = &p[5 + af_len..];
        assert_eq!(&pes[..9], &[0, 0, 1, 0xE0, 0, 3 + 10 + 13, 0x84, 0xC0, 10]);
        assert_eq!(
            &pes[19..],
            &[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x41, 1, 2, 3]
        );

        let audio: Vec<_> = all[audio_at / PACKET_SIZE..]
            .iter()
            .filter(|p| pid_of(**p) == 0x101)
            .collect();
        assert_eq!(audio.len(), 2);
        let p = audio[0];
        // RAI only, no PCR on audio when there is video.
        assert_eq!(&p[4..6], &[1, 0x40]);
        // PES_packet_length 3 + 5 + 4 + 300 = 312.
        assert_eq!(&p[6..15], &[0, 0, 1, 0xBD, 0x01, 0x38, 0x84, 0x80, 5]);
        assert_eq!(&p[15..20], &timestamp_bytes(0b0010, 9100));
        assert_eq!(&p[20..24], &[0x7F, 0xE0, 0xFF, 0x2D]);
        assert!(p[24] == 0xFC && p[25..].iter().all(|&b| b == 7));
        // 14 + 4 + 300 bytes of PES; 182 in the first packet, the rest after stuffing.
        let q = audio[1];
        assert_eq!(q[1] & 0x40, 0);
        let af_len = usize::from(q[4]);
        let tail = &q[5 + af_len..];
        assert_eq!(tail.len(), 14 + 4 + 300 - 182);
        assert!(tail.iter().all(|&b| b == 7));
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut m = Muxer::new(stereo());
        let mut out = Vec::new();
        for au in [&[][..], &[0], &[0, 0, 1], &[0, 0, 0, 1], &[1, 2, 3, 4, 5]] {
            assert_eq!(
                m.write_video(au, 0, 0, true, &mut out),
                Err(MuxError::NoNalUnits)
            );
        }
        assert!(out.is_empty(), "nothing written for refused input");
        assert_eq!(
            m.write_audio(&[], 0, &mut out),
            Err(MuxError::InvalidOpusPacket { len: 0 })
        );
        assert_eq!(
            m.write_audio(&[0xFF, 0x00], 0, &mut out),
            Err(MuxError::InvalidOpusPacket { len: 2 })
        );
        let huge = vec![0xFC; 70_000];
        assert_eq!(
            m.write_audio(&huge, 0, &mut out),
            Err(MuxError::OpusPacketTooLarge { len: 70_000 })
        );
        // The largest that fits: 3 + 5 + 2 + 256 + n = 65535.
        let largest = vec![0xFC; 65_269];
        m.write_audio(&largest, 0, &mut out).unwrap();
        assert_eq!(
            m.write_audio(&[0xFC; 65_270], 0, &mut out),
            Err(MuxError::OpusPacketTooLarge { len: 65_270 })
        );
        let big = [&[0, 0, 1, 0x65][..], &vec![0x01; 300_000]].concat();
        m.write_video(&big, 0, 0, true, &mut out).unwrap();
        assert_eq!(
            m.write_video(&vec![0x01; 300_000], 0, 0, true, &mut out),
            Err(MuxError::NoNalUnits)
        );
        assert_eq!(demux(&out).problems, []);

        // Pseudo-random access units and packets; timestamps that step, stall, go back a
        // little or a lot, jump anywhere (u64::MAX too).
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let configs = [
            stereo(),
            MuxConfig {
                video: false,
                ..stereo()
            },
            MuxConfig {
                audio: None,
                ..stereo()
            },
        ];
        for cfg in configs {
            let mut m = Muxer::new(cfg);
            let mut out = Vec::new();
            let mut t = next();
            for i in 0..3000 {
                t = match next() % 20 {
                    0 => next(),
                    1 => u64::MAX,
                    2 => t.wrapping_sub(next() % 200_000),
                    _ => t.wrapping_add(next() % 6000),
                };
                let len = (next() % 600) as usize;
                let mut data: Vec<u8> = (0..len).map(|_| next() as u8 % 4).collect();
                if i % 2 == 0 {
                    data.splice(0..0, [0, 0, 1, (next() % 32) as u8]);
                }
                if next() % 2 == 0 {
                    let dts = t.wrapping_sub(next() % 3 * 3000);
                    let _ = m.write_video(&data, t, dts, i % 5 == 0, &mut out);
                } else {
                    let _ = m.write_audio(&data, t, &mut out);
                }
            }
            assert_eq!(out.len() % PACKET_SIZE, 0);
            // Whatever went in, the output is valid TS: no problem for the demuxer.
            let d = demux(&out);
            assert_eq!(d.problems, [], "{cfg:?}");
            assert!(!d.video_pes.is_empty() || !cfg.video);
            assert!(!d.opus.is_empty() || cfg.audio.is_none());
        }
    }

    #[test]
    fn pat_and_pmt_sections() {
        let cfg = MuxConfig {
            audio: Some(1),
            program_number: 7,
            pmt_pid: Pid(0x1234),
            ..stereo()
        };
        let pat = pat_packet(&cfg);
        assert_eq!(&pat[..5], &[0x47, 0x40, 0x00, 0x10, 0x00]);
        let section = &pat[5..5 + 16];
        assert_eq!(
            &section[..12],
            &[0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x07, 0xF2, 0x34]
        );
        assert_eq!(crc32_mpeg2(section), 0);
        assert!(pat[5 + 16..].iter().all(|&b| b == 0xFF));

        let pmt = pmt_packet(&cfg);
        assert_eq!(&pmt[..5], &[0x47, 0x52, 0x34, 0x10, 0x00]);
        let len = 3 + (usize::from(pmt[6] & 0x0F) << 8 | usize::from(pmt[7]));
        let section = &pmt[5..5 + len];
        assert_eq!(crc32_mpeg2(section), 0);
        assert_eq!(
            &section[3..len - 4],
            &[
                0x00, 0x07, 0xC1, 0x00, 0x00, // program 7, version 0, current
                0xE1, 0x00, 0xF0, 0x00, // PCR PID 0x100, no program info
                0x1B, 0xE1, 0x00, 0xF0, 0x00, // H.264
                0x06, 0xE1, 0x01, 0xF0, 0x0A, // private PES, 10 bytes of descriptors
                0x05, 0x04, b'O', b'p', b'u', b's', 0x7F, 0x02, 0x80, 0x01,
            ][..]
        );
    }

    #[test]
    fn backwards_jump_starts_a_new_timeline() {
        let mut m = Muxer::new(MuxConfig {
            audio: None,
            ..stereo()
        });
        let mut ts = Vec::new();
        let slice = [0, 0, 1, 0x41, 9];
        for (i, pts) in [900_000u64, 903_000, 906_000, 902_000, 90_000, 93_000]
            .into_iter()
            .enumerate()
        {
            m.write_video(&slice, pts, pts, i == 0, &mut ts).unwrap();
        }
        let d = demux(&ts);
        assert_eq!(d.problems, []);
        let pcrs: Vec<u64> = d.pcrs.iter().map(|p| p / 300).collect();
        let at = |pts: u64| pts - PCR_DELAY;
        // A small step back holds the PCR; a big one is a new timeline.
        assert_eq!(
            pcrs,
            [
                at(900_000),
                at(903_000),
                at(906_000),
                at(906_000),
                at(90_000),
                at(93_000)
            ]
        );
        assert_eq!(d.discontinuities, 1);
        assert!(d.video_pes[4].discontinuity);
    }

    #[test]
    fn ffprobe_reads_the_muxed_file() {
        let Some((video, audio)) = source() else {
            return;
        };
        if std::process::Command::new("ffprobe")
            .arg("-version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "ffprobe is required in CI"
            );
            eprintln!("skipping: ffprobe not found");
            return;
        }
        let path = std::env::temp_dir().join(format!("tsbridge-mux-{}.ts", std::process::id()));
        std::fs::write(&path, mux(stereo(), &video, &audio)).unwrap();
        let output = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_streams",
                "-show_packets",
                "-of",
                "json",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.stderr.is_empty(),
            "ffprobe complained: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let streams = json["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        let index_of = |codec: &str| {
            let s = streams
                .iter()
                .find(|s| s["codec_name"] == codec)
                .unwrap_or_else(|| panic!("no {codec} stream"));
            s["index"].as_u64().unwrap()
        };
        let (v, a) = (index_of("h264"), index_of("opus"));
        let opus = &streams[a as usize];
        assert_eq!(opus["channels"], 2);
        assert_eq!(opus["id"], "0x101");
        assert_eq!(streams[v as usize]["id"], "0x100");
        let packets = json["packets"].as_array().unwrap();
        let pts_of = |index: u64| -> Vec<u64> {
            packets
                .iter()
                .filter(|p| p["stream_index"].as_u64() == Some(index))
                .map(|p| p["pts"].as_u64().unwrap())
                .collect()
        };
        let key_count = packets
            .iter()
            .filter(|p| p["stream_index"].as_u64() == Some(v))
            .filter(|p| p["flags"].as_str().unwrap_or("").starts_with('K'))
            .count();
        assert_eq!(pts_of(v), video.iter().map(|v| v.pts).collect::<Vec<_>>());
        assert_eq!(pts_of(a), audio.iter().map(|a| a.pts).collect::<Vec<_>>());
        assert_eq!(key_count, 6);
    }
}
