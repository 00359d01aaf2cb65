//! H.265 (HEVC) in TS: NAL unit types, SPS parsing (profile, tier, level, size, bit depth for
//! the SDP and the logs) and access units ready for RFC 7798 packetization.
//!
//! HEVC shares H.264's byte stream format (Annex B start codes) and RBSP rules (emulation
//! prevention), so the NAL splitting, the bit reader and the PES → access unit cutting are
//! [`h264`](super::h264)'s. What differs: a 2-byte NAL unit header (ITU-T H.265 §7.3.1.2), a
//! third parameter set (VPS), IRAP pictures (BLA/IDR/CRA, types 16–23) as keyframes, and the
//! SPS syntax (§7.3.2.2.1, with `profile_tier_level` §7.3.3).

use std::fmt;

use bytes::BytesMut;

use super::h264::{nal_units, AccessUnit, AuSplitter, BitReader, START_CODE};
use super::{EsUnit, Recovery};

/// nal_unit_type: the 6 bits after the forbidden_zero_bit of the 2-byte NAL unit header
/// (ITU-T H.265 Table 7-1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NalType(pub u8);

impl NalType {
    pub const TRAIL_N: Self = Self(0);
    pub const TRAIL_R: Self = Self(1);
    pub const TSA_N: Self = Self(2);
    pub const TSA_R: Self = Self(3);
    pub const STSA_N: Self = Self(4);
    pub const STSA_R: Self = Self(5);
    pub const RADL_N: Self = Self(6);
    pub const RADL_R: Self = Self(7);
    pub const RASL_N: Self = Self(8);
    pub const RASL_R: Self = Self(9);
    pub const BLA_W_LP: Self = Self(16);
    pub const BLA_W_RADL: Self = Self(17);
    pub const BLA_N_LP: Self = Self(18);
    pub const IDR_W_RADL: Self = Self(19);
    pub const IDR_N_LP: Self = Self(20);
    pub const CRA_NUT: Self = Self(21);
    pub const VPS: Self = Self(32);
    pub const SPS: Self = Self(33);
    pub const PPS: Self = Self(34);
    /// Access unit delimiter.
    pub const AUD: Self = Self(35);
    /// End of sequence.
    pub const EOS: Self = Self(36);
    /// End of bitstream.
    pub const EOB: Self = Self(37);
    /// Filler data.
    pub const FD: Self = Self(38);
    pub const PREFIX_SEI: Self = Self(39);
    pub const SUFFIX_SEI: Self = Self(40);

    /// The type of a NAL unit (from its first header byte), `None` for one shorter than the
    /// 2-byte header.
    pub fn of(nal: &[u8]) -> Option<Self> {
        match nal {
            [first, _, ..] => Some(Self((first >> 1) & 0x3F)),
            _ => None,
        }
    }

    /// Coded slice segments (types 0–31, reserved ones included).
    pub fn is_vcl(self) -> bool {
        self.0 <= 31
    }

    /// Intra random access point pictures: BLA, IDR, CRA and the reserved IRAP types (16–23).
    /// Decoding can start at one; the bridge's keyframes.
    pub fn is_irap(self) -> bool {
        (16..=23).contains(&self.0)
    }

    /// Random access skipped leading pictures: they follow a CRA (or BLA) in decode order and
    /// refer to pictures before it, so a decoder that started at that CRA cannot decode them.
    pub fn is_rasl(self) -> bool {
        self == Self::RASL_N || self == Self::RASL_R
    }
}

/// The general profile, tier and level of an SPS: the SDP `profile-id`, `tier-flag` and
/// `level-id` of RFC 7798 §7.1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ProfileTierLevel {
    /// general_profile_idc: 1 Main, 2 Main 10, 3 Main Still Picture, 4 format range extensions…
    pub profile_id: u8,
    /// general_tier_flag: false for the Main tier, true for the High tier.
    pub tier_flag: bool,
    /// general_level_idc: 30 times the level number (93 is level 3.1).
    pub level_id: u8,
}

impl fmt::Display for ProfileTierLevel {
    /// In SDP `fmtp` form: `profile-id=1;tier-flag=0;level-id=93`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "profile-id={};tier-flag={};level-id={}",
            self.profile_id,
            u8::from(self.tier_flag),
            self.level_id
        )
    }
}

/// What the bridge needs from a sequence parameter set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpsInfo {
    pub ptl: ProfileTierLevel,
    /// Displayed size, after the conformance window.
    pub width: u32,
    pub height: u32,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u8,
    /// Luma bit depth (8 for Main, up to 10 for Main 10).
    pub bit_depth: u8,
}

/// sps_max_sub_layers_minus1 is 0..=6 (§7.4.3.2.1).
const MAX_SUB_LAYERS_MINUS1: u32 = 6;
/// bit_depth_{luma,chroma}_minus8 are 0..=8 (§7.4.3.2.1).
const MAX_BIT_DEPTH_MINUS8: u32 = 8;
/// Bits of a profile's fields in `profile_tier_level` after profile_space, tier and
/// profile_idc: 32 compatibility flags, 4 source flags, 43 constraint bits and 1 more
/// (inbld/reserved).
const PROFILE_FLAGS_BITS: u32 = 32 + 4 + 43 + 1;
/// A sub-layer's profile fields: profile_space, tier, profile_idc and the flags above.
const SUB_LAYER_PROFILE_BITS: u32 = 2 + 1 + 5 + PROFILE_FLAGS_BITS;

/// `profile_tier_level(1, max_sub_layers_minus1)` (§7.3.3): the general fields kept, the
/// sub-layer ones skipped.
fn profile_tier_level(
    r: &mut BitReader<'_>,
    max_sub_layers_minus1: u32,
) -> Option<ProfileTierLevel> {
    let _profile_space = r.bits(2)?;
    let tier_flag = r.flag()?;
    let profile_id = r.bits(5)? as u8;
    r.skip(PROFILE_FLAGS_BITS)?;
    let level_id = r.bits(8)? as u8;
    // Two flags per sub-layer, read before any sub-layer's fields; at most 6 sub-layers.
    let mut present = [(false, false); MAX_SUB_LAYERS_MINUS1 as usize];
    let sub_layers = present.get_mut(..max_sub_layers_minus1 as usize)?;
    for (profile, level) in sub_layers.iter_mut() {
        *profile = r.flag()?;
        *level = r.flag()?;
    }
    if max_sub_layers_minus1 > 0 {
        // reserved_zero_2bits up to 8 entries.
        r.skip(2 * (8 - max_sub_layers_minus1))?;
    }
    for &(profile, level) in sub_layers.iter() {
        if profile {
            r.skip(SUB_LAYER_PROFILE_BITS)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    Some(ProfileTierLevel {
        profile_id,
        tier_flag,
        level_id,
    })
}

/// Parses an SPS NAL unit (2-byte header included, emulation prevention bytes in place) far
/// enough for profile, tier, level, size, chroma format and bit depth. Only base-layer SPSs
/// (nuh_layer_id 0) are read: a multi-layer SPS has another syntax. `None` for anything
/// malformed; never panics.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    let [h0, h1, rbsp @ ..] = nal else {
        return None;
    };
    let layer_id = (u16::from_be_bytes([*h0, *h1]) >> 3) & 0x3F;
    if NalType::of(nal)? != NalType::SPS || layer_id != 0 {
        return None;
    }
    let mut r = BitReader::new(rbsp);
    let _vps_id = r.bits(4)?;
    let max_sub_layers_minus1 = r.bits(3)?;
    if max_sub_layers_minus1 > MAX_SUB_LAYERS_MINUS1 {
        return None;
    }
    let _temporal_id_nesting = r.flag()?;
    let ptl = profile_tier_level(&mut r, max_sub_layers_minus1)?;
    let _sps_id = r.ue()?;
    let chroma_format_idc = r.ue()?;
    let separate_colour_plane = match chroma_format_idc {
        0..=2 => false,
        3 => r.flag()?,
        _ => return None,
    };
    let pic_width = u64::from(r.ue()?);
    let pic_height = u64::from(r.ue()?);
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        left = u64::from(r.ue()?);
        right = u64::from(r.ue()?);
        top = u64::from(r.ue()?);
        bottom = u64::from(r.ue()?);
    }
    let bit_depth_luma_minus8 = r.ue()?;
    let bit_depth_chroma_minus8 = r.ue()?;
    if bit_depth_luma_minus8 > MAX_BIT_DEPTH_MINUS8
        || bit_depth_chroma_minus8 > MAX_BIT_DEPTH_MINUS8
    {
        return None;
    }
    // SubWidthC, SubHeightC (Table 6-1): the conformance window is in chroma samples.
    let (sub_width, sub_height) = match (chroma_format_idc, separate_colour_plane) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let crop = |a: u64, b: u64, sub: u64| a.checked_add(b)?.checked_mul(sub);
    let width = pic_width.checked_sub(crop(left, right, sub_width)?)?;
    let height = pic_height.checked_sub(crop(top, bottom, sub_height)?)?;
    Some(SpsInfo {
        ptl,
        width: u32::try_from(width).ok().filter(|&w| w > 0)?,
        height: u32::try_from(height).ok().filter(|&h| h > 0)?,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth: (bit_depth_luma_minus8 + 8) as u8,
    })
}

/// The parameter sets an IRAP access unit must carry, in the order they must come.
const PARAMETER_SETS: [NalType; 3] = [NalType::VPS, NalType::SPS, NalType::PPS];

/// Index of a parameter set type in [`PARAMETER_SETS`].
fn rank(t: NalType) -> Option<usize> {
    PARAMETER_SETS.iter().position(|&p| p == t)
}

/// Turns H.265 PES packets into access units (the same contract as
/// [`H264Assembler`](super::h264::H264Assembler)).
///
/// TS carries one access unit per PES; a PES holding several (several AUDs) is split at each
/// AUD, the later ones timed one frame duration apart. A PES without PTS is dropped: its time
/// is unknown. AUD and filler data are removed, and so are NAL units shorter than their 2-byte
/// header. The latest VPS, SPS and PPS are kept; an IRAP access unit lacking some of them gets
/// the cached ones, in the order VPS, SPS, PPS, before its first slice or prefix SEI and after
/// the lower-ranked parameter sets it has itself (ffmpeg's decoder, for one, rejects a PPS
/// whose SPS it has not seen). Frames before the first parameter sets or IRAP picture are
/// output too; the caller decides what to skip.
#[derive(Debug, Default)]
pub struct H265Assembler {
    /// The latest VPS, SPS and PPS, as in [`PARAMETER_SETS`]; empty until seen.
    params: [Vec<u8>; 3],
    sps_info: Option<SpsInfo>,
    splitter: AuSplitter,
    /// Output buffer; each access unit is split off it, so its capacity is reused.
    buf: BytesMut,
}

impl H265Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest SPS that parsed.
    pub fn sps(&self) -> Option<&SpsInfo> {
        self.sps_info.as_ref()
    }

    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// One PES in, its access units out.
    pub fn push<'a>(&mut self, pes: impl Into<EsUnit<'a>>, out: &mut Vec<AccessUnit>) {
        let pes = pes.into();
        // `emit` needs `self` while the splitter runs: it is taken out for the call.
        let mut splitter = std::mem::take(&mut self.splitter);
        splitter.split(
            pes,
            |nal| NalType::of(nal) == Some(NalType::AUD),
            |annexb, pts, dts| self.emit(annexb, pts, dts, out),
        );
        self.splitter = splitter;
    }

    /// Builds one access unit from the Annex B bytes `annexb` (may start with a start code).
    fn emit(&mut self, annexb: &[u8], pts: u64, dts: u64, out: &mut Vec<AccessUnit>) {
        // Parameter sets of each kind in this access unit, not yet copied to the output.
        let mut present = [0usize; 3];
        let (mut keyframe, mut rasl, mut any, mut nals) = (false, false, false, 0);
        for nal in nal_units(annexb) {
            nals += 1;
            let Some(t) = NalType::of(nal) else { continue };
            if let Some(i) = rank(t) {
                present[i] += 1;
                if self.params[i] != nal {
                    self.params[i].clear();
                    self.params[i].extend_from_slice(nal);
                    if t == NalType::SPS {
                        if let Some(info) = parse_sps(nal) {
                            self.sps_info = Some(info);
                        }
                    }
                }
            }
            keyframe |= t.is_irap();
            rasl |= t.is_rasl();
            any |= t != NalType::AUD && t != NalType::FD;
        }
        if !any {
            return;
        }
        // Cached parameter sets still to insert.
        let mut missing = [false; 3];
        for (m, (&n, cached)) in missing.iter_mut().zip(present.iter().zip(&self.params)) {
            *m = keyframe && n == 0 && !cached.is_empty();
        }
        // One allocation per access unit: each start code grows by at most one byte.
        let extra: usize = self.params.iter().map(|p| START_CODE.len() + p.len()).sum();
        self.buf.reserve(annexb.len() + nals + extra);
        let (buf, params) = (&mut self.buf, &self.params);
        let put = |buf: &mut BytesMut, nal: &[u8]| {
            buf.extend_from_slice(&START_CODE);
            buf.extend_from_slice(nal);
        };
        // Inserts the missing parameter sets ranked below `below` whose lower-ranked ones are
        // all out already (none of the access unit's own still to come).
        let insert = |buf: &mut BytesMut, missing: &mut [bool; 3], present: &[usize; 3], below| {
            for i in 0..below {
                if present[..i].iter().any(|&n| n > 0) {
                    break;
                }
                if missing[i] {
                    put(buf, &params[i]);
                    missing[i] = false;
                }
            }
        };
        for nal in nal_units(annexb) {
            let Some(t) = NalType::of(nal) else { continue };
            if t == NalType::AUD || t == NalType::FD {
                continue;
            }
            if let Some(i) = rank(t) {
                insert(buf, &mut missing, &present, i);
                present[i] -= 1;
            } else if t.is_vcl() || t == NalType::PREFIX_SEI {
                insert(buf, &mut missing, &present, PARAMETER_SETS.len());
            }
            put(buf, nal);
        }
        insert(buf, &mut missing, &present, PARAMETER_SETS.len());
        out.push(AccessUnit {
            pts,
            dts,
            keyframe,
            recovery: if rasl && !keyframe {
                Recovery::Rasl
            } else {
                Recovery::None
            },
            data: self.buf.split().freeze(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::{Pes, Pid};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    // Parameter sets written by x265 3.5 through ffmpeg 5.1, e.g. for the 640x360 ones:
    //   ffmpeg -f lavfi -i testsrc2=size=640x360:rate=30 -t 2 -c:v libx265 \
    //     -x265-params keyint=30:bframes=0 -pix_fmt yuv420p -f hevc out.h265
    // The others change the size, -pix_fmt, or add x265 parameters, as their names say.
    const VPS_640X360_MAIN: &str =
        "40 01 0c 01 ff ff 01 60 00 00 03 00 90 00 00 03 00 00 03 00 3f 92 80 90";
    const SPS_640X360_MAIN: &str = "42 01 01 01 60 00 00 03 00 90 00 00 03 00 00 03 00 3f a0 05 \
        02 01 69 65 92 a4 93 2b c0 5a 02 00 00 03 00 02 00 00 03 00 3c 10";
    const PPS_640X360_MAIN: &str = "44 01 c1 72 b4 62 40";
    const SPS_1280X720_MAIN: &str = "42 01 01 01 60 00 00 03 00 90 00 00 03 00 00 03 00 5d a0 02 \
        80 80 2d 16 59 59 a4 93 2b c0 5a 02 00 00 03 00 02 00 00 03 00 3c 10";
    /// -pix_fmt yuv420p10le: Main 10, pic 648x368 with a conformance window.
    const SPS_642X362_MAIN10: &str = "42 01 01 02 20 00 00 03 00 90 00 00 03 00 00 03 00 3f a0 05 \
        12 01 71 c9 23 65 95 9a 49 32 bc 05 a0 20 00 00 03 00 20 00 00 03 03 c1";
    /// -pix_fmt yuv444p: format range extensions profile (4), chroma_format_idc 3.
    const SPS_352X288_REXT444: &str = "42 01 01 04 08 00 00 03 00 9e 08 00 00 03 00 00 3c 90 01 \
        61 00 90 b2 ca cd 24 99 5e 02 d0 10 00 00 03 00 10 00 00 03 01 e0 80";
    /// -pix_fmt yuv422p10le: 4:2:2, pic 328 wide cropped by 3 chroma samples on the right.
    const SPS_322X240_REXT422_10: &str = "42 01 01 04 08 00 00 03 00 9d 08 00 00 03 00 00 3c b0 \
        0a 48 0f 1c 9b 65 95 9a 49 32 bc 05 a0 20 00 00 03 00 20 00 00 03 03 c1";
    /// -pix_fmt gray: 4:0:0.
    const SPS_320X240_MONO: &str = "42 01 01 04 08 00 00 03 00 9f c8 00 00 03 00 00 3c c0 28 20 \
        3c 59 65 66 92 4c af 01 6c 08 00 00 03 00 08 00 00 03 00 f0 40";
    /// -x265-params high-tier=1:level-idc=5.1.
    const SPS_1920X1080_HIGH_TIER: &str = "42 01 01 21 60 00 00 03 00 90 00 00 03 00 00 03 00 99 \
        a0 03 c0 80 10 e5 96 56 69 24 ca f0 16 80 80 00 00 03 00 80 00 00 0f 04";
    /// -x265-params temporal-layers=1: sps_max_sub_layers_minus1 = 1.
    const SPS_320X240_TWO_SUB_LAYERS: &str = "42 01 02 01 60 00 00 03 00 90 00 00 03 00 00 03 00 \
        3c 00 00 a0 0a 08 0f 16 59 59 8a cd 24 99 5e 02 d0 10 00 00 03 00 10 00 00 03 01 e0 80";

    fn ptl(profile_id: u8, tier_flag: bool, level_id: u8) -> ProfileTierLevel {
        ProfileTierLevel {
            profile_id,
            tier_flag,
            level_id,
        }
    }

    #[test]
    fn sps_of_ffmpeg_libx265_1280x720_main() {
        let info = parse_sps(&hex(SPS_1280X720_MAIN)).unwrap();
        assert_eq!(
            info,
            SpsInfo {
                ptl: ptl(1, false, 93),
                width: 1280,
                height: 720,
                chroma_format_idc: 1,
                bit_depth: 8,
            }
        );
        assert_eq!(info.ptl.to_string(), "profile-id=1;tier-flag=0;level-id=93");
    }

    /// Expected values from ffprobe (profile, level, width, height, pix_fmt) and the x265
    /// parameters (tier).
    #[test]
    fn sps_of_ffmpeg_libx265_streams_of_every_chroma_format_and_depth() {
        let cases = [
            (SPS_640X360_MAIN, ptl(1, false, 63), 640, 360, 1, 8),
            (SPS_642X362_MAIN10, ptl(2, false, 63), 642, 362, 1, 10),
            (SPS_352X288_REXT444, ptl(4, false, 60), 352, 288, 3, 8),
            (SPS_322X240_REXT422_10, ptl(4, false, 60), 322, 240, 2, 10),
            (SPS_320X240_MONO, ptl(4, false, 60), 320, 240, 0, 8),
            (SPS_1920X1080_HIGH_TIER, ptl(1, true, 153), 1920, 1080, 1, 8),
            (
                SPS_320X240_TWO_SUB_LAYERS,
                ptl(1, false, 60),
                320,
                240,
                1,
                8,
            ),
        ];
        for (sps, ptl, width, height, chroma_format_idc, bit_depth) in cases {
            let info = parse_sps(&hex(sps)).unwrap_or_else(|| panic!("{sps}"));
            let expected = SpsInfo {
                ptl,
                width,
                height,
                chroma_format_idc,
                bit_depth,
            };
            assert_eq!(info, expected, "{sps}");
        }
    }

    /// RBSP bits to a NAL unit: header, emulation prevention inserted, stop bit and padding.
    fn sps_nal(bits: &str) -> Vec<u8> {
        let bits = format!("{bits}1");
        let rbsp: Vec<u8> = bits
            .as_bytes()
            .chunks(8)
            .map(|c| {
                let s = std::str::from_utf8(c).unwrap();
                u8::from_str_radix(&format!("{s:0<8}"), 2).unwrap()
            })
            .collect();
        crate::codec::nal_with_emulation_prevention(&[0x42, 0x01], &rbsp)
    }

    fn ue(v: u32) -> String {
        let code = format!("{:b}", u64::from(v) + 1);
        "0".repeat(code.len() - 1) + &code
    }

    /// An SPS with 3 sub-layers, the first with profile and level fields, the second with a
    /// level only, then 1920x1088 cropped to 1080 (4:2:0: 4 chroma rows).
    fn sps_with_sub_layer_fields(bottom_offset: u32) -> String {
        let mut b = String::from("0000"); // sps_video_parameter_set_id
        b += "010"; // sps_max_sub_layers_minus1 = 2
        b += "1"; // sps_temporal_id_nesting_flag
        b += "00"; // general_profile_space
        b += "1"; // general_tier_flag: High
        b += "00010"; // general_profile_idc: Main 10
        b += &"0".repeat(80); // compatibility, source and constraint flags
        b += &format!("{:08b}", 120); // general_level_idc: 4
        b += "11"; // sub-layer 0: profile and level present
        b += "01"; // sub-layer 1: level present
        b += &"0".repeat(12); // reserved_zero_2bits for sub-layers 2..8
        b += &"0".repeat(88); // sub-layer 0 profile: zeros, so emulation prevention bytes
        b += &format!("{:08b}", 90); // sub-layer 0 level
        b += &format!("{:08b}", 93); // sub-layer 1 level
        b += &ue(0); // sps_seq_parameter_set_id
        b += &ue(1); // chroma_format_idc
        b += &ue(1920);
        b += &ue(1088);
        b += "1"; // conformance_window_flag
        b += &(ue(0) + &ue(0) + &ue(0) + &ue(bottom_offset));
        b += &(ue(2) + &ue(2)); // 10-bit
        b += &"1".repeat(30); // the rest of the SPS, not read
        b
    }

    #[test]
    fn sps_sub_layer_profile_and_level_fields_are_skipped() {
        let nal = sps_nal(&sps_with_sub_layer_fields(4));
        assert!(
            nal.windows(3).any(|w| w == [0, 0, 3]),
            "the test SPS has emulation prevention bytes"
        );
        assert_eq!(
            parse_sps(&nal),
            Some(SpsInfo {
                ptl: ptl(2, true, 120),
                width: 1920,
                height: 1080,
                chroma_format_idc: 1,
                bit_depth: 10,
            })
        );
    }

    #[test]
    fn sps_cropped_to_nothing_or_beyond_is_rejected() {
        // 1088 - 2 * 544 = 0 rows; then 2 rows too many.
        assert_eq!(parse_sps(&sps_nal(&sps_with_sub_layer_fields(544))), None);
        assert_eq!(parse_sps(&sps_nal(&sps_with_sub_layer_fields(545))), None);
        // Offsets near u32::MAX do not overflow.
        assert_eq!(
            parse_sps(&sps_nal(&sps_with_sub_layer_fields(u32::MAX - 1))),
            None
        );
    }

    #[test]
    fn sps_with_another_type_layer_or_too_many_sub_layers_is_rejected() {
        let sps = hex(SPS_1280X720_MAIN);
        assert_eq!(parse_sps(&[&[0x44, 0x01][..], &sps[2..]].concat()), None); // PPS type
        assert_eq!(parse_sps(&[&[0x42, 0x09][..], &sps[2..]].concat()), None); // layer 1
        let mut seven = sps.clone();
        seven[2] |= 0x0E; // sps_max_sub_layers_minus1 = 7
        assert_eq!(parse_sps(&seven), None);
        let mut chroma = sps_with_sub_layer_fields(4);
        let at = chroma.find(&(ue(0) + &ue(1) + &ue(1920))).unwrap();
        chroma.replace_range(at..at + 4, &(ue(0) + &ue(4))); // chroma_format_idc 4
        assert_eq!(parse_sps(&sps_nal(&chroma)), None);
    }

    #[test]
    fn parse_sps_never_panics_on_garbage() {
        assert_eq!(parse_sps(&[]), None);
        assert_eq!(parse_sps(&[0x42]), None);
        assert_eq!(parse_sps(&[0x42, 0x01]), None);
        for sps in [
            SPS_640X360_MAIN,
            SPS_320X240_TWO_SUB_LAYERS,
            SPS_352X288_REXT444,
        ] {
            let sps = hex(sps);
            for len in 0..sps.len() {
                let _ = parse_sps(&sps[..len]);
            }
        }
        let mut x = 0x9E37_79B9u32;
        for _ in 0..5000 {
            let mut nal = vec![0x42, 0x01];
            for _ in 0..(x % 60) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                nal.push(x as u8);
            }
            if let Some(info) = parse_sps(&nal) {
                assert!(info.width > 0 && info.height > 0);
            }
        }
        let _ = parse_sps(&[0x42, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let _ = parse_sps(&[0x42, 0x01, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn nal_types_from_the_two_byte_header() {
        assert_eq!(NalType::of(&[0x40, 0x01]), Some(NalType::VPS));
        assert_eq!(NalType::of(&[0x26, 0x01, 0xAF]), Some(NalType::IDR_W_RADL));
        assert_eq!(NalType::of(&[0xCE, 0x01]), Some(NalType::PREFIX_SEI)); // F bit ignored
        assert_eq!(NalType::of(&[0x46]), None);
        let irap: Vec<u8> = (0..64).filter(|&t| NalType(t).is_irap()).collect();
        assert_eq!(irap, (16..=23).collect::<Vec<_>>());
        assert!(NalType::TRAIL_N.is_vcl() && NalType::RASL_R.is_vcl() && NalType(31).is_vcl());
        assert!(!NalType::VPS.is_vcl() && !NalType::AUD.is_vcl());
        assert!(!NalType::RASL_N.is_irap() && NalType::CRA_NUT.is_irap());
        assert!(NalType::BLA_W_LP.is_irap() && NalType::IDR_N_LP.is_irap());
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 1][..], n].concat())
            .collect()
    }

    fn expect(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&START_CODE[..], n].concat())
            .collect()
    }

    fn pes(pts: u64, data: Vec<u8>) -> Pes {
        Pes {
            pid: Pid(0x100),
            pts: Some(pts),
            dts: None,
            random_access: false,
            discontinuity: false,
            data: data.into(),
        }
    }

    const AUD: &[u8] = &[0x46, 0x01, 0x50];
    const FILLER: &[u8] = &[0x4C, 0x01, 0xFF, 0xFF, 0x80];
    const SEI: &[u8] = &[0x4E, 0x01, 0x05, 0x02, 0x11, 0x22, 0x80];
    const IDR: &[u8] = &[0x26, 0x01, 0xAF, 0x09, 0x40];
    const CRA: &[u8] = &[0x2A, 0x01, 0xAF, 0x1C, 0x40];
    const TRAIL: &[u8] = &[0x02, 0x01, 0xD0, 0x31, 0x80];

    /// The 640x360 parameter sets.
    fn params() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        (
            hex(VPS_640X360_MAIN),
            hex(SPS_640X360_MAIN),
            hex(PPS_640X360_MAIN),
        )
    }

    fn run(pes_list: &[(u64, Vec<u8>)]) -> (H265Assembler, Vec<AccessUnit>) {
        let mut a = H265Assembler::new();
        let mut out = Vec::new();
        for (pts, data) in pes_list {
            a.push(&pes(*pts, data.clone()), &mut out);
        }
        (a, out)
    }

    #[test]
    fn irap_gets_cached_vps_sps_pps() {
        let (vps, sps, pps) = params();
        let (a, out) = run(&[
            (0, annexb(&[AUD, &vps, &sps, &pps, SEI, IDR])),
            (3000, annexb(&[AUD, TRAIL, FILLER])),
            (6000, annexb(&[AUD, CRA])),
            (9000, annexb(&[AUD, SEI, IDR])),
        ]);
        let info = a.sps().unwrap();
        assert_eq!((info.width, info.height, info.ptl.level_id), (640, 360, 63));
        assert_eq!(
            out.iter()
                .map(|au| (au.pts, au.keyframe))
                .collect::<Vec<_>>(),
            [(0, true), (3000, false), (6000, true), (9000, true)]
        );
        assert_eq!(out[0].data, expect(&[&vps, &sps, &pps, SEI, IDR]));
        assert_eq!(out[1].data, expect(&[TRAIL]));
        assert_eq!(out[2].data, expect(&[&vps, &sps, &pps, CRA]));
        assert_eq!(out[3].data, expect(&[&vps, &sps, &pps, SEI, IDR]));
    }

    #[test]
    fn missing_pps_goes_after_the_access_units_own_vps_and_sps() {
        let (vps, sps, pps) = params();
        let (_, out) = run(&[
            (0, annexb(&[&vps, &sps, &pps, IDR])),
            (3000, annexb(&[AUD, &vps, &sps, SEI, IDR])),
            // A SEI between the access unit's own parameter sets: the PPS still follows the SPS.
            (6000, annexb(&[AUD, &vps, SEI, &sps, IDR])),
        ]);
        assert_eq!(out[1].data, expect(&[&vps, &sps, &pps, SEI, IDR]));
        assert_eq!(out[2].data, expect(&[&vps, SEI, &sps, &pps, IDR]));
    }

    #[test]
    fn missing_vps_goes_before_the_access_units_own_sps() {
        let (vps, sps, pps) = params();
        let (_, out) = run(&[
            (0, annexb(&[&vps, &sps, &pps, IDR])),
            (3000, annexb(&[AUD, &sps, &pps, IDR])),
            (6000, annexb(&[AUD, &pps, SEI, IDR])),
        ]);
        assert_eq!(out[1].data, expect(&[&vps, &sps, &pps, IDR]));
        assert_eq!(out[2].data, expect(&[&vps, &sps, &pps, SEI, IDR]));
    }

    #[test]
    fn newest_parameter_sets_are_the_ones_inserted() {
        let (vps, sps, pps) = params();
        let sps720 = hex(SPS_1280X720_MAIN);
        let pps2: &[u8] = &[0x44, 0x01, 0xC1, 0x72, 0x86, 0x0C, 0x46, 0x24];
        let (a, out) = run(&[
            (0, annexb(&[&vps, &sps, &pps, IDR])),
            (3000, annexb(&[&sps720, pps2, TRAIL])),
            (6000, annexb(&[IDR])),
        ]);
        assert_eq!(a.sps().unwrap().width, 1280);
        assert!(!out[1].keyframe);
        assert_eq!(out[2].data, expect(&[&vps, &sps720, pps2, IDR]));
    }

    #[test]
    fn every_irap_type_is_a_keyframe_and_leading_pictures_are_not() {
        let (vps, sps, pps) = params();
        // Not parameter sets, AUD or filler (those are tested elsewhere).
        for t in (0..=31).chain(36..=37).chain(39..=40u8) {
            let slice = [t << 1, 0x01, 0xAF, 0x40];
            let (_, out) = run(&[
                (0, annexb(&[&vps, &sps, &pps, TRAIL])),
                (3000, annexb(&[&slice])),
            ]);
            let irap = (16..=23).contains(&t);
            assert_eq!(out[1].keyframe, irap, "type {t}");
            let rasl = if matches!(t, 8 | 9) {
                Recovery::Rasl
            } else {
                Recovery::None
            };
            assert_eq!(out[1].recovery, rasl, "type {t}");
            let with_params: &[&[u8]] = if irap {
                &[&vps, &sps, &pps, &slice]
            } else {
                &[&slice]
            };
            assert_eq!(out[1].data, expect(with_params), "type {t}");
        }
    }

    #[test]
    fn open_gop_testdata_has_rasl_pictures_after_its_cras() {
        let aus = crate::ts::testutil::testdata_video_aus("hevc_open_gop.ts").expect("testdata");
        assert_eq!(aus.len(), 90);
        let marks: Vec<(usize, bool, Recovery)> = aus
            .iter()
            .enumerate()
            .filter(|(_, au)| au.keyframe || au.recovery != Recovery::None)
            .map(|(i, au)| (i, au.keyframe, au.recovery))
            .collect();
        assert_eq!(
            marks,
            [
                (0, true, Recovery::None),
                (29, true, Recovery::None),
                (30, false, Recovery::Rasl),
                (59, true, Recovery::None),
                (60, false, Recovery::Rasl),
            ]
        );
        // The RASL picture is shown before its CRA.
        assert!(aus[30].pts < aus[29].pts);
    }

    #[test]
    fn aud_filler_and_truncated_nal_units_are_dropped() {
        let (_, out) = run(&[
            (0, annexb(&[AUD, FILLER])),
            (3000, annexb(&[AUD, &[0x02], TRAIL, FILLER, &[0x4E]])),
        ]);
        assert_eq!(
            out.len(),
            1,
            "an access unit of AUD and filler gives nothing"
        );
        assert_eq!(out[0].data, expect(&[TRAIL]));
    }

    #[test]
    fn frames_before_parameter_sets_are_output_without_them() {
        let (mut a, mut out) = run(&[(0, annexb(&[AUD, TRAIL])), (3000, annexb(&[AUD, IDR]))]);
        a.push(
            &Pes {
                pts: None,
                ..pes(6000, annexb(&[AUD, TRAIL]))
            },
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert!(!out[0].keyframe && out[1].keyframe);
        assert_eq!(out[1].data, expect(&[IDR]));
        assert!(a.sps().is_none());
        a.reset();
        assert!(a.sps().is_none());
    }

    #[test]
    fn pes_with_several_auds_is_split_one_frame_apart() {
        let (_, out) = run(&[
            (90_000, annexb(&[AUD, TRAIL])),
            (93_600, annexb(&[AUD, TRAIL])), // 25 fps
            (97_200, annexb(&[AUD, TRAIL, AUD, TRAIL, AUD, IDR])),
            ((1 << 33) - 100, annexb(&[AUD, TRAIL, AUD, TRAIL])),
        ]);
        assert_eq!(
            out.iter().map(|au| au.pts).collect::<Vec<_>>(),
            [
                90_000,
                93_600,
                97_200,
                100_800,
                104_400,
                (1 << 33) - 100,
                3500
            ]
        );
        assert!(out[4].keyframe && !out[3].keyframe);
    }
}
