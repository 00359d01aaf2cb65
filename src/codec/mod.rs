//! Elementary stream parsing, sans-IO: H.264/H.265 access units and Opus packets out of PES
//! payloads.

// Denied, not forbidden: `h264_decoder` holds the few FFI calls OpenH264's safe API lacks,
// `ffmpeg` the calls to libavcodec (`--features ffmpeg`).
#![deny(unsafe_code)]

pub mod aac;
pub mod ac3;
pub mod deinterlace;
#[cfg(feature = "ffmpeg")]
pub mod ffmpeg;
pub mod h264;
pub mod h264_decoder;
pub mod h265;
pub mod mpa;
pub mod mpeg2;
pub mod opus;
pub mod reencode;
pub mod reorder;
pub mod transcode;

use h264::{AccessUnit, H264Assembler, ProfileLevelId};
use h265::{H265Assembler, ProfileTierLevel};

/// One PES's worth of elementary stream: its payload and 33-bit 90 kHz timestamps. What the
/// codec layer takes, so it needs nothing of the TS layer (`ts::Pes` converts into it).
#[derive(Clone, Copy, Debug)]
pub struct EsUnit<'a> {
    pub data: &'a [u8],
    pub pts: Option<u64>,
    /// When it differs from the PTS.
    pub dts: Option<u64>,
}

/// Where else than at a keyframe (an H.264 IDR, an H.265 IRAP picture: every decoder starts
/// there) a viewer joining a video stream may start, or what it must skip. A closed set, carried
/// from the access unit to the viewers' frames (`stream::frame::Frame::recovery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// An ordinary picture (or a keyframe: nothing more to say).
    #[default]
    None,
    /// An H.264 recovery point (SEI payload 6) on a picture that is no IDR: a decoder can start
    /// here (with the parameter sets, which the assembler puts before it), and its pictures are
    /// right from `frames` frames on, in output order. Periodic intra refresh (x264
    /// `intra-refresh`, NVENC, low-latency encoders) and open GOPs send these instead of IDRs.
    /// Browsers' WebRTC decoders do not start at one (they wait for an IDR).
    Point { frames: u32 },
    /// An H.265 RASL picture (NAL types 8, 9): it refers to pictures before its CRA in decode
    /// order, so a viewer whose first picture is that CRA must not get it (it follows the CRA
    /// directly, before any trailing picture).
    Rasl,
}

impl Recovery {
    /// A recovery point: a start for a decoder that does not insist on an IDR.
    pub fn is_point(self) -> bool {
        matches!(self, Recovery::Point { .. })
    }
}

/// The video codecs of the tracks viewers get: as they are (H.264, H.265), or re-encoded to
/// H.264 (MPEG-2, which no browser decodes; `--features ffmpeg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    H265,
    Mpeg2,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H.264",
            VideoCodec::H265 => "H.265",
            VideoCodec::Mpeg2 => "MPEG-2 video",
        }
    }
}

/// The video's profile as its SPS says (what the answer negotiates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoProfile {
    H264(ProfileLevelId),
    H265(ProfileTierLevel),
}

impl VideoProfile {
    pub fn codec(self) -> VideoCodec {
        match self {
            VideoProfile::H264(_) => VideoCodec::H264,
            VideoProfile::H265(_) => VideoCodec::H265,
        }
    }
}

impl std::fmt::Display for VideoProfile {
    /// As the SDP `fmtp` says it: `profile-level-id=64001e`, or `profile-id=1;tier-flag=0;…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VideoProfile::H264(p) => write!(f, "profile-level-id={p}"),
            VideoProfile::H265(p) => write!(f, "{p}"),
        }
    }
}

/// What viewers need to know of the video, from its latest SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoInfo {
    pub profile: VideoProfile,
    pub width: u32,
    pub height: u32,
}

impl From<&h264::SpsInfo> for VideoInfo {
    fn from(s: &h264::SpsInfo) -> Self {
        VideoInfo {
            profile: VideoProfile::H264(s.profile_level_id),
            width: s.width,
            height: s.height,
        }
    }
}

/// The access-unit assembler of a video track, by codec.
#[derive(Debug)]
pub enum VideoAssembler {
    H264(H264Assembler),
    H265(H265Assembler),
    Mpeg2(Mpeg2Units),
}

/// MPEG-2 pictures as access units: the same shape as H.264's, so the media task times,
/// holds and hands them to the re-encoder alike (they never go to viewers as they are).
#[derive(Debug, Default)]
pub struct Mpeg2Units {
    pictures: mpeg2::Mpeg2Assembler,
    scratch: Vec<mpeg2::Picture>,
    /// The latest picture's PTS (decode order), for one that came without.
    last_pts: Option<u64>,
}

impl Mpeg2Units {
    fn push<'a>(&mut self, pes: impl Into<EsUnit<'a>>, out: &mut Vec<AccessUnit>) {
        self.pictures.push(pes, &mut self.scratch);
        self.take_pictures(out);
    }

    /// The end of the source: the picture being collected is complete.
    fn flush(&mut self, out: &mut Vec<AccessUnit>) {
        self.pictures.flush(&mut self.scratch);
        self.take_pictures(out);
    }

    /// The pictures completed, timed, as access units.
    fn take_pictures(&mut self, out: &mut Vec<AccessUnit>) {
        // A PES that starts no picture gives its PTS to none; a picture without one is given
        // the last one plus a frame (in decode order: a guess the decoder's reordering does
        // not use, but one that keeps the timeline moving).
        let frame = self.pictures.sequence().map_or(3000, |s| {
            (90_000 * u64::from(s.frame_rate.1)) / u64::from(s.frame_rate.0.max(1))
        });
        for p in self.scratch.drain(..) {
            let pts = match (p.pts, self.last_pts) {
                (Some(pts), _) => pts,
                (None, Some(last)) => (last + frame) & crate::time::PTS_MASK,
                // Nothing to time it by yet: a decoder could not start there anyway.
                (None, None) => continue,
            };
            self.last_pts = Some(pts);
            out.push(AccessUnit {
                pts,
                dts: pts,
                keyframe: p.keyframe,
                recovery: Recovery::None,
                data: p.data,
            });
        }
    }

    /// The sequence header's details.
    pub fn sequence(&self) -> Option<mpeg2::SequenceInfo> {
        self.pictures.sequence()
    }
}

impl VideoAssembler {
    pub fn new(codec: VideoCodec) -> Self {
        match codec {
            VideoCodec::H264 => VideoAssembler::H264(H264Assembler::new()),
            VideoCodec::H265 => VideoAssembler::H265(H265Assembler::new()),
            VideoCodec::Mpeg2 => VideoAssembler::Mpeg2(Mpeg2Units::default()),
        }
    }

    pub fn codec(&self) -> VideoCodec {
        match self {
            VideoAssembler::H264(_) => VideoCodec::H264,
            VideoAssembler::H265(_) => VideoCodec::H265,
            VideoAssembler::Mpeg2(_) => VideoCodec::Mpeg2,
        }
    }

    /// One PES in, its access units out (see the codec's assembler).
    pub fn push<'a>(&mut self, pes: impl Into<EsUnit<'a>>, out: &mut Vec<AccessUnit>) {
        match self {
            VideoAssembler::H264(a) => a.push(pes, out),
            VideoAssembler::H265(a) => a.push(pes, out),
            VideoAssembler::Mpeg2(a) => a.push(pes, out),
        }
    }

    /// From the latest SPS that parsed (none for MPEG-2: viewers get the re-encoder's H.264,
    /// described by its SPS).
    pub fn info(&self) -> Option<VideoInfo> {
        match self {
            VideoAssembler::H264(a) => a.sps().map(VideoInfo::from),
            VideoAssembler::H265(a) => a.sps().map(|s| VideoInfo {
                profile: VideoProfile::H265(s.ptl),
                width: s.width,
                height: s.height,
            }),
            VideoAssembler::Mpeg2(_) => None,
        }
    }

    /// The end of the source: what is complete only then (an MPEG-2 picture; H.264 and
    /// H.265 access units come out with their PES).
    pub fn flush(&mut self, out: &mut Vec<AccessUnit>) {
        if let VideoAssembler::Mpeg2(a) = self {
            a.flush(out);
        }
    }

    pub fn reset(&mut self) {
        *self = Self::new(self.codec());
    }
}

/// A NAL unit for tests: `header`, then `rbsp` with emulation prevention bytes inserted (a
/// 0x03 after two zeros before any byte up to 3), as an encoder writes it.
#[cfg(test)]
pub(crate) fn nal_with_emulation_prevention(header: &[u8], rbsp: &[u8]) -> Vec<u8> {
    let mut nal = header.to_vec();
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            nal.push(3);
            zeros = 0;
        }
        nal.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    nal
}
