//! Program Specific Information: section reassembly, CRC, PAT and PMT (ISO/IEC 13818-1 §2.4.4),
//! and the PMT-driven track discovery.

use std::fmt;

use super::packet::{Pid, PidWriter, PACKET_SIZE};
use super::track::{Language, TrackKind};
use crate::codec::transcode::SourceCodec;

/// An elementary stream_type from the PMT.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct StreamType(pub u8);

impl StreamType {
    pub const MPEG1_VIDEO: Self = Self(0x01);
    pub const MPEG2_VIDEO: Self = Self(0x02);
    pub const MPEG1_AUDIO: Self = Self(0x03);
    pub const MPEG2_AUDIO: Self = Self(0x04);
    pub const PRIVATE_SECTIONS: Self = Self(0x05);
    pub const PRIVATE_PES: Self = Self(0x06);
    pub const AAC_ADTS: Self = Self(0x0F);
    pub const MPEG4_VIDEO: Self = Self(0x10);
    pub const AAC_LATM: Self = Self(0x11);
    pub const METADATA_PES: Self = Self(0x15);
    pub const H264: Self = Self(0x1B);
    pub const HEVC: Self = Self(0x24);
    pub const VVC: Self = Self(0x33);
    pub const AC3: Self = Self(0x81);
    pub const SCTE35: Self = Self(0x86);
    pub const EAC3: Self = Self(0x87);

    /// Human-readable name, for logs and the stream listing.
    pub fn name(self) -> &'static str {
        match self {
            Self::MPEG1_VIDEO => "MPEG-1 video",
            Self::MPEG2_VIDEO => "MPEG-2 video",
            Self::MPEG1_AUDIO => "MPEG-1 audio",
            Self::MPEG2_AUDIO => "MPEG-2 audio",
            Self::PRIVATE_SECTIONS => "private sections",
            Self::PRIVATE_PES => "private data (PES)",
            Self::AAC_ADTS => "AAC (ADTS)",
            Self::MPEG4_VIDEO => "MPEG-4 video",
            Self::AAC_LATM => "AAC (LATM)",
            Self::METADATA_PES => "metadata (PES)",
            Self::H264 => "H.264",
            Self::HEVC => "HEVC",
            Self::VVC => "H.266",
            Self::AC3 => "AC-3",
            Self::SCTE35 => "SCTE-35",
            Self::EAC3 => "E-AC-3",
            _ => "unknown",
        }
    }
}

impl StreamType {
    /// The audio the transcoder takes (to Opus), by stream type.
    pub fn transcodable(self) -> Option<SourceCodec> {
        match self {
            Self::AAC_ADTS => Some(SourceCodec::AacAdts),
            Self::AAC_LATM => Some(SourceCodec::AacLatm),
            Self::MPEG1_AUDIO | Self::MPEG2_AUDIO => Some(SourceCodec::MpegAudio),
            Self::AC3 if cfg!(feature = "ffmpeg") => Some(SourceCodec::Ac3),
            Self::EAC3 if cfg!(feature = "ffmpeg") => Some(SourceCodec::Eac3),
            _ => None,
        }
    }
}

impl fmt::Display for StreamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), self.0)
    }
}

/// What the bridge can do with an elementary stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Codec {
    H264,
    /// HEVC: sent to viewers whose offer has H.265 (RFC 7798).
    H265,
    /// MPEG-2 video: sent re-encoded to H.264 (`--features ffmpeg`; without it, it is
    /// `Unsupported` with that advice).
    Mpeg2Video,
    /// Single-stream Opus, mono or stereo.
    Opus {
        channels: u8,
    },
    /// Audio the transcoder turns into Opus (AAC, MPEG audio): playable when transcoding is
    /// on (`--audio-transcode auto`, the default), reassembled when viewers get it.
    Transcodable(SourceCodec),
    /// Teletext, subtitles, SCTE-35, KLV/ID3 metadata, private sections: `what` it is. Listed,
    /// never reassembled, not a problem.
    Data {
        what: &'static str,
    },
    /// Listed so it can be shown, never reassembled.
    Unsupported {
        reason: &'static str,
    },
}

impl Codec {
    /// Viewers get it (MPEG-2 video re-encoded): the demuxer reassembles its PES.
    pub fn is_supported(&self) -> bool {
        matches!(
            self,
            Codec::H264 | Codec::H265 | Codec::Mpeg2Video | Codec::Opus { .. }
        )
    }

    /// A video codec viewers get, as it is or re-encoded.
    pub fn is_video(&self) -> bool {
        matches!(self, Codec::H264 | Codec::H265 | Codec::Mpeg2Video)
    }
}

/// One elementary stream of the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackInfo {
    pub pid: Pid,
    pub stream_type: StreamType,
    pub codec: Codec,
    pub kind: TrackKind,
    /// From the ISO 639 language descriptor (or a DVB teletext/subtitling descriptor).
    pub language: Option<Language>,
}

impl TrackInfo {
    /// The codec's name for people: "H.264", "Opus", what the data is ("teletext"), or what
    /// the stream type says.
    pub fn codec_name(&self) -> &'static str {
        match self.codec {
            Codec::H264 => "H.264",
            Codec::H265 => "H.265",
            Codec::Mpeg2Video => "MPEG-2 video",
            Codec::Opus { .. } => "Opus",
            Codec::Transcodable(c) => c.name(),
            Codec::Data { what } => what,
            Codec::Unsupported { .. } => self.stream_type.name(),
        }
    }

    /// Viewers can be given it: as it is, or transcoded to Opus when `transcode` is on.
    pub fn playable(&self, transcode: bool) -> bool {
        self.codec.is_supported() || transcode && matches!(self.codec, Codec::Transcodable(_))
    }
}

/// The program as its PMT describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackSet {
    pub program_number: u16,
    pub pmt_pid: Pid,
    /// PMT version_number.
    pub version: u8,
    /// `Pid::NULL` when the program has no PCR.
    pub pcr_pid: Pid,
    /// In PMT order, unsupported ones included.
    pub tracks: Vec<TrackInfo>,
}

impl TrackSet {
    /// The video track viewers get: the first H.264 track (every WebRTC stack plays it),
    /// else the first H.265 one, else the first MPEG-2 one (re-encoded to H.264).
    pub fn video(&self) -> Option<&TrackInfo> {
        self.h264()
            .or_else(|| self.hevc())
            .or_else(|| self.tracks.iter().find(|t| t.codec == Codec::Mpeg2Video))
    }

    /// The first H.264 track.
    pub fn h264(&self) -> Option<&TrackInfo> {
        self.tracks.iter().find(|t| t.codec == Codec::H264)
    }

    /// The first H.265 track.
    pub fn hevc(&self) -> Option<&TrackInfo> {
        self.tracks.iter().find(|t| t.codec == Codec::H265)
    }

    /// The first Opus track.
    pub fn audio(&self) -> Option<&TrackInfo> {
        self.tracks
            .iter()
            .find(|t| matches!(t.codec, Codec::Opus { .. }))
    }

    /// The audio tracks in PMT order, playable or not: a viewer picks one by its place in
    /// this list (`?audio=N`, from 0) or by its language.
    pub fn audio_tracks(&self) -> impl Iterator<Item = &TrackInfo> + Clone {
        self.tracks.iter().filter(|t| t.kind == TrackKind::Audio)
    }

    pub fn track(&self, pid: Pid) -> Option<&TrackInfo> {
        self.tracks.iter().find(|t| t.pid == pid)
    }
}

// ---- CRC ---------------------------------------------------------------------------------

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init all ones, no reflection, no final xor).
/// Over a whole section including its CRC field the result is 0.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

// ---- section reassembly -----------------------------------------------------------------

/// Largest section_length allowed for PAT and PMT.
const MAX_SECTION_LENGTH: usize = 1021;
/// Largest section_length of a private section (SCTE-35's splice_info_section).
const MAX_PRIVATE_SECTION_LENGTH: usize = 4093;

/// Reassembles sections of one PSI PID across packets.
#[derive(Debug, Default)]
pub(crate) struct SectionBuf {
    buf: Vec<u8>,
    /// A section has started and is not complete yet.
    active: bool,
    /// Short-form sections up to 4093 bytes (SCTE-35's splice_info_section), not PAT/PMT's
    /// long form.
    private: bool,
}

/// What one chunk of section bytes produced.
pub(crate) enum SectionStep {
    /// Bytes consumed; the section needs more packets.
    Incomplete,
    /// A complete section (header to CRC, not yet checked); `usize` = bytes of input consumed.
    Complete(usize),
    /// A malformed section header; the section is abandoned.
    Bad(&'static str),
    /// Followed by stuffing: nothing more in this packet.
    Stuffing,
}

impl SectionBuf {
    /// For a PID of private sections (SCTE-35 cues).
    pub fn private() -> Self {
        SectionBuf {
            private: true,
            ..Default::default()
        }
    }

    pub fn reset(&mut self) {
        self.buf.clear();
        self.active = false;
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn section(&self) -> &[u8] {
        &self.buf
    }

    /// Starts a new section at `data` (after a pointer_field or a previous section).
    pub fn start(&mut self, data: &[u8]) -> SectionStep {
        self.reset();
        match data.first() {
            None | Some(0xFF) => SectionStep::Stuffing,
            Some(_) => {
                self.active = true;
                self.extend(data)
            }
        }
    }

    /// Appends bytes to the section in progress, up to its end.
    pub fn extend(&mut self, data: &[u8]) -> SectionStep {
        debug_assert!(self.active);
        let have = self.buf.len();
        // Fill the 3-byte header first.
        let head = data.len().min(3usize.saturating_sub(have));
        self.buf.extend_from_slice(&data[..head]);
        if self.buf.len() < 3 {
            return SectionStep::Incomplete;
        }
        let section_length = usize::from(self.buf[1] & 0x0F) << 8 | usize::from(self.buf[2]);
        if self.private {
            if section_length > MAX_PRIVATE_SECTION_LENGTH {
                self.reset();
                return SectionStep::Bad("section_length above 4093");
            }
        } else if self.buf[1] & 0x80 == 0 {
            self.reset();
            return SectionStep::Bad("section_syntax_indicator is 0");
        } else if section_length > MAX_SECTION_LENGTH {
            self.reset();
            return SectionStep::Bad("section_length above 1021");
        }
        if section_length < 9 {
            self.reset();
            return SectionStep::Bad("section_length too short");
        }
        let total = 3 + section_length;
        let take = (total - self.buf.len()).min(data.len() - head);
        self.buf.extend_from_slice(&data[head..head + take]);
        if self.buf.len() == total {
            self.active = false;
            SectionStep::Complete(head + take)
        } else {
            SectionStep::Incomplete
        }
    }
}

/// The long-form section header fields shared by PAT and PMT.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SectionHeader {
    pub table_id: u8,
    /// transport_stream_id (PAT) or program_number (PMT).
    pub id: u16,
    pub version: u8,
    pub current_next: bool,
    pub section_number: u8,
    pub last_section_number: u8,
}

/// Checks the CRC and splits a complete section into header and body (without CRC).
pub(crate) fn check_section(section: &[u8]) -> Result<(SectionHeader, &[u8]), &'static str> {
    if section.len() < 12 {
        return Err("section too short");
    }
    if crc32_mpeg2(section) != 0 {
        return Err("CRC mismatch");
    }
    let header = SectionHeader {
        table_id: section[0],
        id: u16::from_be_bytes([section[3], section[4]]),
        version: (section[5] >> 1) & 0x1F,
        current_next: section[5] & 0x01 != 0,
        section_number: section[6],
        last_section_number: section[7],
    };
    Ok((header, &section[8..section.len() - 4]))
}

pub(crate) const TABLE_PAT: u8 = 0x00;
pub(crate) const TABLE_PMT: u8 = 0x02;

/// Programs listed in a PAT section body: `(program_number, pmt_pid)`, network PID entries skipped.
pub(crate) fn pat_programs(body: &[u8]) -> impl Iterator<Item = (u16, Pid)> + '_ {
    body.chunks_exact(4)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                Pid(u16::from(e[2] & 0x1F) << 8 | u16::from(e[3])),
            )
        })
        .filter(|&(program, _)| program != 0)
}

/// Parses a PMT section body into a `TrackSet`.
pub(crate) fn parse_pmt(
    header: &SectionHeader,
    pmt_pid: Pid,
    body: &[u8],
) -> Result<TrackSet, &'static str> {
    if body.len() < 4 {
        return Err("PMT too short");
    }
    let pcr_pid = Pid(u16::from(body[0] & 0x1F) << 8 | u16::from(body[1]));
    let info_len = usize::from(body[2] & 0x0F) << 8 | usize::from(body[3]);
    let mut rest = body
        .get(4 + info_len..)
        .ok_or("program_info_length beyond section")?;
    let mut tracks = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err("truncated ES loop");
        }
        let stream_type = StreamType(rest[0]);
        let pid = Pid(u16::from(rest[1] & 0x1F) << 8 | u16::from(rest[2]));
        let es_info_len = usize::from(rest[3] & 0x0F) << 8 | usize::from(rest[4]);
        let descriptors = rest
            .get(5..5 + es_info_len)
            .ok_or("ES_info_length beyond section")?;
        rest = &rest[5 + es_info_len..];
        if tracks.iter().any(|t: &TrackInfo| t.pid == pid) {
            continue; // a PID listed twice: the first entry wins
        }
        let (kind, codec) = classify(stream_type, descriptors);
        tracks.push(TrackInfo {
            pid,
            stream_type,
            codec,
            kind,
            language: language(descriptors),
        });
    }
    Ok(TrackSet {
        program_number: header.id,
        pmt_pid,
        version: header.version,
        pcr_pid,
        tracks,
    })
}

const TAG_REGISTRATION: u8 = 0x05;
const TAG_LANGUAGE: u8 = 0x0A;
const TAG_METADATA: u8 = 0x26;
const TAG_VBI_TELETEXT: u8 = 0x46;
const TAG_TELETEXT: u8 = 0x56;
const TAG_SUBTITLING: u8 = 0x59;
const TAG_AC3: u8 = 0x6A;
const TAG_EAC3: u8 = 0x7A;
const TAG_EXTENSION: u8 = 0x7F;
const EXT_TAG_OPUS: u8 = 0x80;

/// `(tag, payload)` of each well-formed descriptor; stops at the first truncated one.
fn descriptors(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&tag, rest) = data.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let payload = rest.get(..usize::from(len))?;
        data = &rest[usize::from(len)..];
        Some((tag, payload))
    })
}

/// The track's language: the ISO 639 language descriptor's first entry, else the first entry
/// of a DVB teletext or subtitling descriptor (each entry starts with the code).
fn language(es_info: &[u8]) -> Option<Language> {
    descriptors(es_info)
        .find(|&(tag, _)| tag == TAG_LANGUAGE)
        .or_else(|| {
            descriptors(es_info)
                .find(|&(tag, _)| matches!(tag, TAG_TELETEXT | TAG_VBI_TELETEXT | TAG_SUBTITLING))
        })
        .and_then(|(_, d)| Language::new(d))
}

/// A registration descriptor (or a metadata descriptor's format identifier) says `id`.
fn registered(es_info: &[u8], id: &[u8; 4]) -> bool {
    descriptors(es_info).any(|(tag, d)| {
        (tag == TAG_REGISTRATION && d.starts_with(id))
            || (tag == TAG_METADATA && metadata_format(d) == Some(&id[..]))
    })
}

/// The metadata_format_identifier of a metadata_descriptor (ISO/IEC 13818-1 §2.6.60): after
/// the application format (2 bytes, 4 more when it is 0xFFFF) and a metadata_format of 0xFF.
fn metadata_format(d: &[u8]) -> Option<&[u8]> {
    let at = if d.get(..2)? == [0xFF, 0xFF] { 6 } else { 2 };
    (*d.get(at)? == 0xFF).then_some(())?;
    d.get(at + 1..at + 5)
}

/// What an SCTE-35 PID is listed as; the demuxer reads these PIDs' sections.
pub const SCTE35_CUES: &str = "SCTE-35 cues";

/// What a data PID carries, from its descriptors (teletext, DVB subtitles, KLV, ID3), if it
/// says.
fn data_kind(es_info: &[u8]) -> Option<&'static str> {
    let has = |t: u8| descriptors(es_info).any(|(tag, _)| tag == t);
    if has(TAG_TELETEXT) || has(TAG_VBI_TELETEXT) {
        Some("teletext")
    } else if has(TAG_SUBTITLING) {
        Some("DVB subtitles")
    } else if registered(es_info, b"KLVA") {
        Some("KLV metadata")
    } else if registered(es_info, b"ID3 ") {
        Some("ID3 metadata")
    } else if registered(es_info, b"CUEI") {
        Some(SCTE35_CUES)
    } else {
        None
    }
}

const AC3_NEEDS_FFMPEG: &str = "AC-3 is not playable in WebRTC; it plays transcoded to Opus \
     with FFmpeg's decoder: rebuild with --features ffmpeg";
const E_AC3_NEEDS_FFMPEG: &str = "E-AC-3 is not playable in WebRTC; it plays transcoded to \
     Opus with FFmpeg's decoder: rebuild with --features ffmpeg";

const MPEG2_NEEDS_FFMPEG: &str = "MPEG-2 video is not playable in WebRTC; it plays \
     re-encoded to H.264 with FFmpeg's decoder: rebuild with --features ffmpeg";

/// Decides the codec from the stream_type and the ES_info descriptors alone (no probing).
pub(crate) fn classify(stream_type: StreamType, es_info: &[u8]) -> (TrackKind, Codec) {
    let unsupported = |kind, reason| (kind, Codec::Unsupported { reason });
    let data = |what| (TrackKind::Data, Codec::Data { what });
    let audio = TrackKind::Audio;
    let video = TrackKind::Video;
    // AC-3 / E-AC-3: transcoded with FFmpeg's decoders, when they are built in.
    let dolby = |codec: SourceCodec| match codec {
        _ if cfg!(feature = "ffmpeg") => (audio, Codec::Transcodable(codec)),
        SourceCodec::Eac3 => unsupported(audio, E_AC3_NEEDS_FFMPEG),
        _ => unsupported(audio, AC3_NEEDS_FFMPEG),
    };
    match stream_type {
        StreamType::H264 => (video, Codec::H264),
        StreamType::PRIVATE_PES => {
            let opus = registered(es_info, b"Opus");
            if opus {
                let code = descriptors(es_info)
                    .find(|&(tag, d)| tag == TAG_EXTENSION && d.first() == Some(&EXT_TAG_OPUS))
                    .map(|(_, d)| d.get(1).copied());
                return match code {
                    // No extension descriptor: stereo is the draft's default.
                    None => (audio, Codec::Opus { channels: 2 }),
                    Some(None) => unsupported(
                        audio,
                        "Opus extension descriptor without channel_config_code",
                    ),
                    Some(Some(c @ 1..=2)) => (audio, Codec::Opus { channels: c }),
                    // Dual mono is two Opus streams (mapping family 255, multistream framing):
                    // a WebRTC Opus decoder only takes one stream.
                    Some(Some(0)) => unsupported(
                        audio,
                        "Opus dual mono (two streams) is not playable in WebRTC",
                    ),
                    Some(Some(3..=8)) => unsupported(audio, "Opus with more than 2 channels"),
                    Some(Some(_)) => unsupported(audio, "Opus channel configuration not supported"),
                };
            }
            if descriptors(es_info).any(|(tag, _)| tag == TAG_AC3) || registered(es_info, b"AC-3") {
                dolby(SourceCodec::Ac3)
            } else if descriptors(es_info).any(|(tag, _)| tag == TAG_EAC3)
                || registered(es_info, b"EAC3")
            {
                dolby(SourceCodec::Eac3)
            } else if let Some(what) = data_kind(es_info) {
                data(what)
            } else {
                unsupported(TrackKind::Unknown, "private data")
            }
        }
        StreamType::AAC_ADTS => (audio, Codec::Transcodable(SourceCodec::AacAdts)),
        StreamType::AAC_LATM => (audio, Codec::Transcodable(SourceCodec::AacLatm)),
        StreamType::MPEG1_AUDIO | StreamType::MPEG2_AUDIO => {
            (audio, Codec::Transcodable(SourceCodec::MpegAudio))
        }
        StreamType::HEVC => (video, Codec::H265),
        StreamType::VVC => unsupported(video, "H.266 is not supported (H.264 only)"),
        StreamType::MPEG2_VIDEO if cfg!(feature = "ffmpeg") => (video, Codec::Mpeg2Video),
        StreamType::MPEG2_VIDEO => unsupported(video, MPEG2_NEEDS_FFMPEG),
        StreamType::MPEG1_VIDEO => unsupported(video, "MPEG-1 video is not playable in WebRTC"),
        StreamType::MPEG4_VIDEO => unsupported(video, "MPEG-4 video is not playable in WebRTC"),
        StreamType::AC3 => dolby(SourceCodec::Ac3),
        StreamType::EAC3 => dolby(SourceCodec::Eac3),
        StreamType::SCTE35 => data(SCTE35_CUES),
        StreamType::METADATA_PES => data(data_kind(es_info).unwrap_or("metadata")),
        StreamType::PRIVATE_SECTIONS => data(data_kind(es_info).unwrap_or("private sections")),
        _ => unsupported(TrackKind::Unknown, "unknown stream type"),
    }
}

// ---- writing (the muxer) ----------------------------------------------------------------

/// One PSI section in one packet (pointer_field 0, 0xFF stuffing); CC set when written.
pub(crate) fn psi_packet(pid: Pid, table_id: u8, id: u16, body: &[u8]) -> [u8; PACKET_SIZE] {
    let mut pkt = [0xFFu8; PACKET_SIZE];
    PidWriter::new(pid).header(&mut pkt, true);
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
pub(crate) fn reserved_pid(pid: Pid) -> [u8; 2] {
    (0xE000 | pid.0 & 0x1FFF).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_known_pat() {
        // A PAT from ffmpeg: program 1 -> PMT 0x1000, CRC 2a b1 04 b2.
        let pat = [
            0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0x2A, 0xB1,
            0x04, 0xB2,
        ];
        assert_eq!(crc32_mpeg2(&pat[..12]), 0x2AB1_04B2);
        assert_eq!(crc32_mpeg2(&pat), 0);
        let (h, body) = check_section(&pat).unwrap();
        assert_eq!(
            (h.table_id, h.id, h.version, h.current_next),
            (0, 1, 0, true)
        );
        assert_eq!(pat_programs(body).collect::<Vec<_>>(), [(1, Pid(0x1000))]);
    }

    fn opus(es_info: &[u8]) -> Codec {
        classify(StreamType::PRIVATE_PES, es_info).1
    }

    #[test]
    fn opus_channels_come_from_the_extension_descriptor() {
        let reg = [0x05, 0x04, b'O', b'p', b'u', b's'];
        let with = |code: u8| [&reg[..], &[0x7F, 0x02, 0x80, code]].concat();
        assert_eq!(opus(&with(1)), Codec::Opus { channels: 1 });
        assert_eq!(opus(&with(2)), Codec::Opus { channels: 2 });
        assert_eq!(opus(&reg), Codec::Opus { channels: 2 });
        assert!(!opus(&with(0)).is_supported(), "dual mono is multistream");
        assert_eq!(
            opus(&with(6)),
            Codec::Unsupported {
                reason: "Opus with more than 2 channels"
            }
        );
    }

    #[test]
    fn private_data_without_opus_registration_is_unsupported() {
        assert_eq!(
            opus(&[]),
            Codec::Unsupported {
                reason: "private data"
            }
        );
        let (ac3, eac3) = if cfg!(feature = "ffmpeg") {
            (
                Codec::Transcodable(SourceCodec::Ac3),
                Codec::Transcodable(SourceCodec::Eac3),
            )
        } else {
            let reason = |reason| Codec::Unsupported { reason };
            (reason(AC3_NEEDS_FFMPEG), reason(E_AC3_NEEDS_FFMPEG))
        };
        assert_eq!(opus(&[0x6A, 0x01, 0x00]), ac3);
        assert_eq!(opus(&[0x7A, 0x01, 0x00]), eac3);
        // A truncated descriptor loop is not read past its end.
        assert_eq!(
            opus(&[0x05, 0x09, b'O', b'p']),
            Codec::Unsupported {
                reason: "private data"
            }
        );
    }

    #[test]
    fn aac_is_transcodable_audio_and_hevc_is_h265() {
        let codec = |t| classify(t, &[]).1;
        assert_eq!(
            classify(StreamType::AAC_ADTS, &[]),
            (TrackKind::Audio, Codec::Transcodable(SourceCodec::AacAdts))
        );
        assert_eq!(
            codec(StreamType::AAC_LATM),
            Codec::Transcodable(SourceCodec::AacLatm)
        );
        assert!(!codec(StreamType::AAC_LATM).is_supported());
        assert_eq!(
            classify(StreamType::HEVC, &[]),
            (TrackKind::Video, Codec::H265)
        );
        assert!(codec(StreamType::HEVC).is_supported());
        assert_eq!(
            classify(StreamType(0x99), &[]),
            (
                TrackKind::Unknown,
                Codec::Unsupported {
                    reason: "unknown stream type"
                }
            )
        );
        assert_eq!(StreamType::AAC_ADTS.name(), "AAC (ADTS)");
        assert_eq!(StreamType::H264.to_string(), "H.264 (0x1b)");
    }

    /// Broadcast data PIDs say what they are, as DVB, SCTE and ID3/KLV carriage signal it.
    #[test]
    fn data_pids_are_named_from_their_descriptors() {
        let private = |d: &[u8]| classify(StreamType::PRIVATE_PES, d);
        let data = |what| (TrackKind::Data, Codec::Data { what });
        // teletext_descriptor: ISO 639 code, type/magazine, page.
        assert_eq!(
            private(&[0x56, 5, b'd', b'e', b'u', 0x09, 0x00]),
            data("teletext")
        );
        assert_eq!(
            private(&[0x59, 8, b'f', b'r', b'a', 0x10, 0, 1, 0, 1]),
            data("DVB subtitles")
        );
        assert_eq!(classify(StreamType::SCTE35, &[]), data("SCTE-35 cues"));
        // metadata_descriptor as HLS timed metadata writes it: application format 0xFFFF and
        // 'ID3 ', format 0xFF and 'ID3 ', service id, flags.
        let id3 = [
            0x26, 13, 0xFF, 0xFF, b'I', b'D', b'3', b' ', 0xFF, b'I', b'D', b'3', b' ', 0, 0x0F,
        ];
        assert_eq!(
            classify(StreamType::METADATA_PES, &id3),
            data("ID3 metadata")
        );
        let klv = [0x05, 4, b'K', b'L', b'V', b'A'];
        assert_eq!(private(&klv), data("KLV metadata"));
        assert_eq!(classify(StreamType::METADATA_PES, &[]), data("metadata"));
        assert_eq!(
            classify(StreamType::PRIVATE_SECTIONS, &[]),
            data("private sections")
        );
    }

    #[test]
    fn the_language_comes_from_the_iso_639_descriptor_or_a_dvb_text_descriptor() {
        let lang = |d: &[u8]| language(d).map(|l| l.to_string());
        assert_eq!(
            lang(&[0x0A, 4, b's', b'p', b'a', 0]).as_deref(),
            Some("spa")
        );
        assert_eq!(
            lang(&[0x56, 5, b'd', b'e', b'u', 9, 0]).as_deref(),
            Some("deu")
        );
        assert_eq!(lang(&[0x0A, 2, b's', b'p']), None, "too short");
        assert_eq!(lang(&[]), None);
    }

    #[test]
    fn section_length_bounds_are_enforced() {
        let mut sb = SectionBuf::default();
        assert!(matches!(sb.start(&[0x02, 0xB3, 0xFF]), SectionStep::Bad(_)));
        assert!(matches!(sb.start(&[0x02, 0x30, 0x20]), SectionStep::Bad(_)));
        assert!(matches!(sb.start(&[0xFF, 0xFF]), SectionStep::Stuffing));
        // Header split across two chunks.
        assert!(matches!(sb.start(&[0x02]), SectionStep::Incomplete));
        assert!(matches!(
            sb.extend(&[0xB0, 0x09, 1, 2, 3]),
            SectionStep::Incomplete
        ));
        assert!(matches!(
            sb.extend(&[4, 5, 6, 7, 8, 9, 0xAA]),
            SectionStep::Complete(6)
        ));
        assert_eq!(sb.section().len(), 12);
    }
}
