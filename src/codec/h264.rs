//! H.264 in TS: NAL splitting, SPS parsing (for `profile-level-id` and size) and access units
//! ready for RFC 6184 packetization (ITU-T H.264 §7.3).

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::{EsUnit, Recovery};
use crate::time::PTS_MASK;

/// nal_unit_type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NalType(pub u8);

impl NalType {
    pub const SLICE: Self = Self(1);
    pub const IDR: Self = Self(5);
    pub const SEI: Self = Self(6);
    pub const SPS: Self = Self(7);
    pub const PPS: Self = Self(8);
    pub const AUD: Self = Self(9);
    pub const END_OF_SEQUENCE: Self = Self(10);
    pub const END_OF_STREAM: Self = Self(11);
    pub const FILLER: Self = Self(12);

    /// The type of a NAL unit (its first byte), `None` for an empty one.
    pub fn of(nal: &[u8]) -> Option<Self> {
        nal.first().map(|b| Self(b & 0x1F))
    }

    /// Coded slice NAL units (types 1–5).
    pub fn is_vcl(self) -> bool {
        (1..=5).contains(&self.0)
    }
}

/// Iterator over the NAL units of an Annex B byte stream; see [`nal_units`].
#[derive(Clone, Debug)]
pub struct NalUnits<'a> {
    rest: &'a [u8],
}

/// Position of the next `00 00 01` in `data`.
fn find_start_code(data: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 2 < data.len() {
        match data[i + 2] {
            1 if data[i] == 0 && data[i + 1] == 0 => return Some(i),
            0 => i += 1,
            _ => i += 3,
        }
    }
    None
}

/// The first SPS NAL unit (header byte included) of an Annex B access unit.
pub fn find_sps(annexb: &[u8]) -> Option<&[u8]> {
    nal_units(annexb).find(|n| NalType::of(n) == Some(NalType::SPS))
}

/// Splits an Annex B stream on `00 00 01` / `00 00 00 01` start codes. Each item is one NAL unit
/// without start code, trailing zero bytes trimmed; bytes before the first start code and empty
/// units are skipped.
pub fn nal_units(annexb: &[u8]) -> NalUnits<'_> {
    let rest = match find_start_code(annexb) {
        Some(at) => &annexb[at + 3..],
        None => &[],
    };
    NalUnits { rest }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (nal, rest) = match find_start_code(self.rest) {
                Some(at) => (&self.rest[..at], &self.rest[at + 3..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            let end = nal.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
            if end > 0 {
                return Some(&nal[..end]);
            }
        }
        None
    }
}

/// profile_idc, constraint flags and level_idc: the SDP `profile-level-id`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ProfileLevelId(pub [u8; 3]);

impl ProfileLevelId {
    pub fn profile_idc(self) -> u8 {
        self.0[0]
    }

    /// constraint_set0..5 flags and the two reserved bits.
    pub fn constraint_flags(self) -> u8 {
        self.0[1]
    }

    pub fn level_idc(self) -> u8 {
        self.0[2]
    }
}

impl fmt::Display for ProfileLevelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}{:02x}", self.0[0], self.0[1], self.0[2])
    }
}

/// What the bridge needs from a sequence parameter set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpsInfo {
    pub profile_level_id: ProfileLevelId,
    /// Displayed size, after frame cropping.
    pub width: u32,
    pub height: u32,
    /// 1 = 4:2:0 (what WebRTC decoders and the re-encoder take), 2 = 4:2:2, 3 = 4:4:4.
    pub chroma_format_idc: u8,
    /// Luma bit depth (8 for everything a browser decodes).
    pub bit_depth: u8,
    /// Frames only (no field or MBAFF coding).
    pub progressive: bool,
}

/// Reads RBSP bits from a NAL payload, skipping emulation prevention bytes (`00 00 03`).
/// Shared with the H.265 SPS parser (same RBSP rules, ITU-T H.265 §7.4.2).
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Bits left in `cur`.
    bits: u32,
    cur: u8,
    zeros: u8,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            bits: 0,
            cur: 0,
            zeros: 0,
        }
    }

    pub(crate) fn bit(&mut self) -> Option<u32> {
        if self.bits == 0 {
            let mut byte = *self.data.get(self.pos)?;
            self.pos += 1;
            if self.zeros >= 2 && byte == 3 {
                byte = *self.data.get(self.pos)?;
                self.pos += 1;
                self.zeros = 0;
            }
            self.zeros = if byte == 0 {
                self.zeros.saturating_add(1)
            } else {
                0
            };
            self.cur = byte;
            self.bits = 8;
        }
        self.bits -= 1;
        Some(u32::from(self.cur >> self.bits) & 1)
    }

    pub(crate) fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0, |acc, _| Some(acc << 1 | self.bit()?))
    }

    pub(crate) fn flag(&mut self) -> Option<bool> {
        self.bit().map(|b| b == 1)
    }

    /// Skips `n` bits.
    pub(crate) fn skip(&mut self, n: u32) -> Option<()> {
        (0..n).try_for_each(|_| self.bit().map(drop))
    }

    /// ue(v), up to 32 bits.
    pub(crate) fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let value = (1u64 << zeros) - 1 + u64::from(self.bits(zeros)?);
        u32::try_from(value).ok()
    }

    /// se(v).
    pub(crate) fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v).ok()
    }
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            // delta_scale is -128..=127 (H.264 7.4.2.1.1.1); more is a broken SPS (and the sum
            // could overflow).
            let delta = r.se().filter(|d| (-128..=127).contains(d))?;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Parses an SPS NAL unit (header byte included) far enough for profile, level and size.
/// `None` for anything malformed; never panics.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    if NalType::of(nal)? != NalType::SPS {
        return None;
    }
    let mut r = BitReader::new(nal.get(1..)?);
    let profile_idc = r.bits(8)? as u8;
    let constraints = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    let _sps_id = r.ue()?;
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    let mut bit_depth = 8;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return None;
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        bit_depth = r.ue()?.checked_add(8)?;
        let _bit_depth_chroma = r.ue()?;
        let _transform_bypass = r.flag()?;
        if r.flag()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    let _log2_max_frame_num = r.ue()?;
    match r.ue()? {
        0 => {
            let _log2_max_poc_lsb = r.ue()?;
        }
        1 => {
            let _delta_pic_order_always_zero = r.flag()?;
            let _offset_for_non_ref_pic = r.se()?;
            let _offset_for_top_to_bottom_field = r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    let _max_num_ref_frames = r.ue()?;
    let _gaps_allowed = r.flag()?;
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.flag()?;
    if !frame_mbs_only {
        let _mb_adaptive_frame_field = r.flag()?;
    }
    let _direct_8x8_inference = r.flag()?;
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        left = u64::from(r.ue()?);
        right = u64::from(r.ue()?);
        top = u64::from(r.ue()?);
        bottom = u64::from(r.ue()?);
    }
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (crop_x, crop_y) = match chroma_array_type {
        0 => (1, field_factor),
        1 => (2, 2 * field_factor),
        2 => (2, field_factor),
        _ => (1, field_factor),
    };
    let width = (width_mbs * 16).checked_sub(crop_x * (left + right))?;
    let height = (height_map_units * 16 * field_factor).checked_sub(crop_y * (top + bottom))?;
    Some(SpsInfo {
        profile_level_id: ProfileLevelId([profile_idc, constraints, level_idc]),
        width: u32::try_from(width).ok().filter(|&w| w > 0)?,
        height: u32::try_from(height).ok().filter(|&h| h > 0)?,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth: u8::try_from(bit_depth).ok()?,
        progressive: frame_mbs_only,
    })
}

/// An H.264 recovery point SEI message (ITU-T H.264 D.1.8, D.2.8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecoveryPoint {
    /// recovery_frame_cnt: decoding from this picture on, pictures are right from this many
    /// frames later on, in output order (x264's intra refresh: about the picture's width in
    /// macroblocks).
    pub frames: u32,
    pub exact_match: bool,
    /// The pictures right after it in decode order may be broken (an open GOP was cut).
    pub broken_link: bool,
}

/// SEI payloadType of a recovery point.
const SEI_RECOVERY_POINT: u32 = 6;

/// The recovery point of an SEI NAL unit (header byte included), if it carries one. The SEI
/// messages are read in order; a message that does not parse ends the search, so a truncated
/// NAL unit (the first bytes of a PES) gives what its whole messages say. Never panics.
pub fn recovery_point(nal: &[u8]) -> Option<RecoveryPoint> {
    if NalType::of(nal)? != NalType::SEI {
        return None;
    }
    let mut r = BitReader::new(nal.get(1..)?);
    // payloadType and payloadSize: a run of 0xFF bytes adds 255 each, the last byte the rest
    // (7.3.2.3.1); bounded by the input's length.
    let value = |r: &mut BitReader<'_>| -> Option<u32> {
        let mut sum = 0u32;
        loop {
            let byte = r.bits(8)?;
            sum = sum.saturating_add(byte);
            if byte != 0xFF {
                return Some(sum);
            }
        }
    };
    loop {
        let payload_type = value(&mut r)?;
        let size = value(&mut r)?;
        if payload_type == SEI_RECOVERY_POINT {
            let frames = r.ue()?;
            let exact_match = r.flag()?;
            let broken_link = r.flag()?;
            let _changing_slice_group_idc = r.bits(2)?;
            return Some(RecoveryPoint {
                frames,
                exact_match,
                broken_link,
            });
        }
        // Payloads are whole bytes of the RBSP; skip this one (it fails past the end).
        r.skip(size.checked_mul(8)?)?;
    }
}

/// One coded picture, ready for packetization (H.264, and H.265 from
/// [`H265Assembler`](super::h265::H265Assembler)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessUnit {
    /// 33-bit 90 kHz PTS, as in the PES (map it through the program's `time::Timeline`).
    pub pts: u64,
    /// 33-bit 90 kHz DTS (the PTS when the PES has none).
    pub dts: u64,
    /// Contains an IDR slice (H.265: an IRAP picture).
    pub keyframe: bool,
    /// Not a keyframe, but a recovery point (H.264), or a picture a viewer starting at the
    /// keyframe before it skips (an H.265 RASL picture).
    pub recovery: Recovery,
    /// Annex B with 4-byte start codes; AUD and filler removed; before an IDR and a recovery
    /// point, the latest SPS and PPS are present (prepended when the access unit lacked them;
    /// H.265: VPS, SPS, PPS before an IRAP picture).
    pub data: Bytes,
}

pub(crate) const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// Frame duration assumed until two PES timestamps were seen (30 fps).
const DEFAULT_FRAME_TICKS: u64 = 3000;

/// Cuts the PES packets of a video track into access units and times them; shared by the
/// H.264 and H.265 assemblers, which differ in what an AUD is and in how they rebuild an
/// access unit.
///
/// TS carries one access unit per PES; a PES holding several (several AUDs) is split at each
/// AUD, the later ones timed one frame duration apart (the duration estimated from the PTS
/// steps between PES packets).
#[derive(Debug, Default)]
pub(crate) struct AuSplitter {
    /// PTS and access-unit count of the previous PES, for the frame duration.
    prev: Option<(u64, u64)>,
    frame_ticks: Option<u64>,
}

impl AuSplitter {
    /// Calls `emit(annexb, pts, dts)` for each access unit of `pes`, in order. `annexb` starts
    /// at the start code of the access unit's first NAL unit (its AUD, after the first one).
    /// A PES without PTS gives nothing: its time is unknown.
    pub(crate) fn split(
        &mut self,
        pes: EsUnit<'_>,
        is_aud: impl Fn(&[u8]) -> bool,
        mut emit: impl FnMut(&[u8], u64, u64),
    ) {
        let Some(pts) = pes.pts else { return };
        let dts = pes.dts.unwrap_or(pts);
        let data = pes.data;
        let step = self.frame_ticks.unwrap_or(DEFAULT_FRAME_TICKS);
        let mut count = 0u64;
        let mut emit_at = |annexb: &[u8], count: u64| {
            let delta = count * step;
            emit(annexb, (pts + delta) & PTS_MASK, (dts + delta) & PTS_MASK);
        };
        // Offset of the start code of the current access unit's first NAL unit.
        let mut au_start = None;
        for nal in nal_units(data) {
            // `nal` is a sub-slice of `data` right after a 3-byte start code.
            let start_code = (nal.as_ptr() as usize - data.as_ptr() as usize).saturating_sub(3);
            match au_start {
                None => au_start = Some(start_code),
                Some(start) if is_aud(nal) => {
                    emit_at(&data[start..start_code], count);
                    count += 1;
                    au_start = Some(start_code);
                }
                Some(_) => {}
            }
        }
        if let Some(start) = au_start {
            emit_at(&data[start..], count);
            count += 1;
        }
        if let Some((prev_pts, prev_count)) = self.prev {
            let diff = pts.wrapping_sub(prev_pts) & PTS_MASK;
            let per_frame = diff / prev_count.max(1);
            if (1..=90_000).contains(&per_frame) {
                self.frame_ticks = Some(per_frame);
            }
        }
        self.prev = Some((pts, count.max(1)));
    }
}

/// Turns H.264 PES packets into access units.
///
/// TS carries one access unit per PES; a PES holding several (several AUDs) is split at each
/// AUD, the later ones timed one frame duration apart (the duration estimated from the PTS
/// steps between PES packets). A PES without PTS is dropped: its time is unknown.
/// Frames before the first SPS/PPS/IDR are output too; the caller decides what to skip.
#[derive(Debug, Default)]
pub struct H264Assembler {
    sps: Vec<u8>,
    pps: Vec<u8>,
    sps_info: Option<SpsInfo>,
    splitter: AuSplitter,
    /// Output buffer; each access unit is split off it, so its capacity is reused.
    buf: BytesMut,
}

impl H264Assembler {
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
        let (mut has_sps, mut has_pps, mut keyframe, mut any) = (false, false, false, false);
        let mut point = None;
        let mut nals = 0;
        for nal in nal_units(annexb) {
            nals += 1;
            match NalType::of(nal) {
                Some(NalType::SPS) => {
                    has_sps = true;
                    if self.sps != nal {
                        self.sps.clear();
                        self.sps.extend_from_slice(nal);
                        if let Some(info) = parse_sps(nal) {
                            self.sps_info = Some(info);
                        }
                    }
                }
                Some(NalType::PPS) => {
                    has_pps = true;
                    self.pps.clear();
                    self.pps.extend_from_slice(nal);
                }
                Some(NalType::IDR) => keyframe = true,
                Some(NalType::SEI) if point.is_none() => point = recovery_point(nal),
                _ => {}
            }
            any |= !matches!(NalType::of(nal), Some(NalType::AUD | NalType::FILLER));
        }
        if !any {
            return;
        }
        let recovery = match point {
            Some(p) if !keyframe => Recovery::Point { frames: p.frames },
            _ => Recovery::None,
        };
        // A decoder starting here needs the parameter sets.
        let start = keyframe || recovery.is_point();
        let add_sps = start && !has_sps && !self.sps.is_empty();
        let add_pps = start && !has_pps && !self.pps.is_empty();
        // One allocation per access unit: each start code grows by at most one byte.
        self.buf
            .reserve(annexb.len() + nals + 2 * START_CODE.len() + self.sps.len() + self.pps.len());
        let buf = &mut self.buf;
        let mut put = |nal: &[u8]| {
            buf.extend_from_slice(&START_CODE);
            buf.extend_from_slice(nal);
        };
        if add_sps {
            put(&self.sps);
            if add_pps {
                put(&self.pps);
            }
        }
        let mut pps_pending = add_pps && !add_sps;
        for nal in nal_units(annexb) {
            match NalType::of(nal) {
                Some(NalType::AUD | NalType::FILLER) => continue,
                Some(t) if pps_pending && (t.is_vcl() || t == NalType::SEI) => {
                    // The access unit has its own SPS but no PPS: the cached one goes after it.
                    put(&self.pps);
                    pps_pending = false;
                }
                _ => {}
            }
            put(nal);
            if pps_pending && NalType::of(nal) == Some(NalType::SPS) {
                put(&self.pps);
                pps_pending = false;
            }
        }
        out.push(AccessUnit {
            pts,
            dts,
            keyframe,
            recovery,
            data: self.buf.split().freeze(),
        });
    }
}

// ---- access units for a TS mux (WHIP → TS) ----------------------------------------------

/// An access unit delimiter (type 9, primary_pic_type 7: any slice type), with start code.
pub(crate) const AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xF0];

/// Where the NAL units of an access unit are, for [`AuFixup`].
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

/// Makes H.264 access units what a TS carries (ISO/IEC 13818-1 §2.14): an AUD first, and
/// before a keyframe that lacks them the latest SPS and PPS seen in earlier access units (a
/// WebRTC publisher sends them once, or out of band). Sans-IO; it keeps those parameter sets
/// and one scratch buffer.
#[derive(Debug, Default)]
pub struct AuFixup {
    /// The latest SPS and PPS seen (NAL units without start code).
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// Parameter sets put into the current access unit.
    inserted: Vec<u8>,
}

/// How [`AuFixup::fix`] changes one access unit: its bytes are [`AuFixup::parts`].
#[derive(Clone, Copy, Debug)]
pub struct FixedAu {
    /// An IDR slice, or the caller said so.
    pub keyframe: bool,
    aud: bool,
    start: usize,
    /// Where the inserted parameter sets go.
    at: usize,
}

impl FixedAu {
    /// The fixed access unit's length.
    pub fn len(&self, au: &[u8], fixup: &AuFixup) -> usize {
        fixup.parts(au, self).iter().map(|p| p.len()).sum()
    }
}

impl AuFixup {
    /// Looks at `au` (Annex B; bytes before the first start code are dropped) and notes its
    /// parameter sets; `None` when it has no NAL unit.
    pub fn fix(&mut self, au: &[u8], keyframe: bool) -> Option<FixedAu> {
        let layout = self.scan(au)?;
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
        Some(FixedAu {
            keyframe,
            aud: layout.aud,
            start: layout.start,
            at,
        })
    }

    /// The fixed access unit as four slices, in order: an AUD if it lacked one, its bytes up
    /// to where parameter sets go, those, the rest.
    pub fn parts<'a>(&'a self, au: &'a [u8], fixed: &FixedAu) -> [&'a [u8]; 4] {
        let aud: &[u8] = if fixed.aud { &[] } else { &AUD };
        // start <= at <= au.len(): both come from NAL positions in `au`.
        let (head, tail) = au.split_at(fixed.at.min(au.len()));
        let head = head.get(fixed.start..).unwrap_or_default();
        [aud, head, &self.inserted, tail]
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

    /// SPS NAL units written by x264 (ffmpeg -c:v libx264 -profile:v …).
    const SPS_640X360_HIGH: &str =
        "67 64 00 1e ac d9 40 a0 2f f9 70 11 00 00 03 00 01 00 00 03 00 3c 0f 16 2d 96";
    const SPS_1920X1080_HIGH: &str =
        "67 64 00 28 ac d9 40 78 02 27 e5 c0 44 00 00 03 00 04 00 00 03 00 f0 3c 60 c6 58";
    const SPS_320X240_BASELINE: &str =
        "67 42 c0 0d d9 01 41 fb 01 10 00 00 03 00 10 00 00 03 03 c0 f1 42 a4 80";
    const SPS_176X144_MAIN: &str =
        "67 4d 40 0b ec a1 62 76 02 20 00 00 03 00 20 00 00 07 81 e2 85 32 c0";
    const SPS_642X362_HIGH444: &str =
        "67 f4 00 1e 91 9b 28 14 85 fc 7c f8 08 80 00 00 03 00 80 00 00 1e 07 8b 16 cb";

    #[test]
    fn parse_sps_of_real_x264_streams() {
        let cases = [
            (SPS_640X360_HIGH, "64001e", 640, 360),
            (SPS_1920X1080_HIGH, "640028", 1920, 1080),
            (SPS_320X240_BASELINE, "42c00d", 320, 240),
            (SPS_176X144_MAIN, "4d400b", 176, 144),
            (SPS_642X362_HIGH444, "f4001e", 642, 362),
        ];
        for (sps, pli, w, h) in cases {
            let info = parse_sps(&hex(sps)).unwrap_or_else(|| panic!("{sps}"));
            assert_eq!(
                (info.profile_level_id.to_string(), info.width, info.height),
                (pli.to_string(), w, h)
            );
        }
        let pli = parse_sps(&hex(SPS_640X360_HIGH)).unwrap().profile_level_id;
        assert_eq!(
            (pli.profile_idc(), pli.constraint_flags(), pli.level_idc()),
            (100, 0, 30)
        );
    }

    /// Found by the `h264` fuzz target: a scaling list whose delta_scale is near i32::MAX
    /// overflowed the running sum. Out-of-range deltas now make the SPS invalid.
    #[test]
    fn sps_with_huge_scaling_delta_is_rejected_not_a_panic() {
        let mut bits = String::from("01100111"); // NAL header: SPS
        bits += "01100100"; // profile_idc 100 (High): chroma and scaling fields follow
        bits += "00000000"; // constraint flags
        bits += "00011111"; // level_idc 31
        bits += "1"; // seq_parameter_set_id ue 0
        bits += "010"; // chroma_format_idc ue 1
        bits += "11"; // bit depths ue 0, ue 0
        bits += "0"; // qpprime_y_zero_transform_bypass_flag
        bits += "1"; // seq_scaling_matrix_present_flag
        bits += "1"; // seq_scaling_list_present_flag[0]
        let at = bits.len();
        // delta_scale se = 2^31 - 1, i.e. ue k = 2^32 - 3 (odd: positive): 31 zeros, a 1, then
        // the 31 bits of k - (2^31 - 1).
        bits += &"0".repeat(31);
        bits += "1";
        bits += &format!("{:031b}", (1u64 << 31) - 2);
        bits += &"1".repeat(64);
        // '0'/'1' text to bytes, the last one padded with zeros.
        let bytes = |bits: &str| -> Vec<u8> {
            bits.as_bytes()
                .chunks(8)
                .map(|c| {
                    let s = std::str::from_utf8(c).unwrap();
                    u8::from_str_radix(&format!("{s:0<8}"), 2).unwrap()
                })
                .collect()
        };
        assert_eq!(parse_sps(&bytes(&bits)), None);
        // A legal delta (se 1: ue 1, "010") parses on through the list.
        let legal = bits[..at].to_string() + "010" + &"1".repeat(200);
        let _ = parse_sps(&bytes(&legal));
    }

    #[test]
    fn parse_sps_never_panics_on_garbage() {
        assert_eq!(parse_sps(&[]), None);
        assert_eq!(parse_sps(&[0x68, 1, 2, 3]), None);
        let sps = hex(SPS_1920X1080_HIGH);
        for len in 0..sps.len() {
            let _ = parse_sps(&sps[..len]);
        }
        let mut x = 0x9E37_79B9u32;
        for _ in 0..5000 {
            let mut nal = vec![0x67];
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                nal.push(x as u8);
            }
            let _ = parse_sps(&nal);
            if let Some(profile) = nal.get_mut(1) {
                *profile = 100;
            }
            let _ = parse_sps(&nal);
        }
        let _ = parse_sps(&[0x67, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let _ = parse_sps(&[0x67, 100, 0, 0, 0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn nal_units_split_on_3_and_4_byte_start_codes() {
        let data = [
            0xAA, 0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 0, 1, 0x68, 3, 0, 0, 1, 0,
            0, 1, 0x65, 9, 0, 0,
        ];
        let nals: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(
            nals,
            [&[0x09, 0xF0][..], &[0x67, 1, 2], &[0x68, 3], &[0x65, 9]]
        );
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 1][..], n].concat())
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

    const AUD: &[u8] = &[0x09, 0xF0];
    const PPS: &[u8] = &[0x68, 0xEB, 0xE3, 0xCB, 0x22, 0xC0];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x21];
    const SLICE: &[u8] = &[0x41, 0x9A, 0x02];
    const FILLER: &[u8] = &[0x0C, 0xFF, 0xFF, 0x80];

    #[test]
    fn aud_and_filler_dropped_and_sps_pps_prepended_before_idr() {
        let sps = hex(SPS_640X360_HIGH);
        let mut a = H264Assembler::new();
        let mut out = Vec::new();
        a.push(&pes(0, annexb(&[AUD, &sps, PPS, IDR])), &mut out);
        a.push(&pes(3000, annexb(&[AUD, SLICE, FILLER])), &mut out);
        a.push(&pes(6000, annexb(&[AUD, IDR])), &mut out);
        assert_eq!(a.sps().unwrap().width, 640);
        let expect = |nals: &[&[u8]]| -> Vec<u8> {
            nals.iter()
                .flat_map(|n| [&START_CODE[..], n].concat())
                .collect()
        };
        assert_eq!(
            out.iter()
                .map(|au| (au.pts, au.keyframe))
                .collect::<Vec<_>>(),
            [(0, true), (3000, false), (6000, true)]
        );
        assert_eq!(out[0].data, expect(&[&sps, PPS, IDR]));
        assert_eq!(out[1].data, expect(&[SLICE]));
        assert_eq!(out[2].data, expect(&[&sps, PPS, IDR]));
    }

    #[test]
    fn missing_pps_goes_after_the_access_units_own_sps() {
        let sps = hex(SPS_320X240_BASELINE);
        let mut a = H264Assembler::new();
        let mut out = Vec::new();
        a.push(&pes(0, annexb(&[&sps, PPS, IDR])), &mut out);
        a.push(
            &pes(3000, annexb(&[AUD, &sps, &[0x06, 5, 1, 0x80], IDR])),
            &mut out,
        );
        let expect: Vec<u8> = [&sps[..], PPS, &[0x06, 5, 1, 0x80], IDR]
            .iter()
            .flat_map(|n| [&START_CODE[..], n].concat())
            .collect();
        assert_eq!(out[1].data, expect);
    }

    #[test]
    fn frames_before_parameter_sets_are_output_without_them() {
        let mut a = H264Assembler::new();
        let mut out = Vec::new();
        a.push(&pes(0, annexb(&[AUD, SLICE])), &mut out);
        a.push(&pes(3000, annexb(&[AUD, IDR])), &mut out);
        a.push(
            &Pes {
                pts: None,
                ..pes(6000, annexb(&[AUD, SLICE]))
            },
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert!(!out[0].keyframe && out[1].keyframe);
        assert_eq!(&out[1].data[..], &[&START_CODE[..], IDR].concat()[..]);
        assert!(a.sps().is_none());
    }

    /// x264's recovery point with `intra-refresh=1` at 320x180 (testdata/h264_intra_refresh.ts):
    /// payloadType 6, size 2, recovery_frame_cnt 18, exact_match_flag 1.
    const SEI_RECOVERY_X264: &[u8] = &[0x06, 0x06, 0x02, 0x09, 0xc4, 0x80];

    #[test]
    fn recovery_point_sei_of_x264_intra_refresh() {
        assert_eq!(
            recovery_point(SEI_RECOVERY_X264),
            Some(RecoveryPoint {
                frames: 18,
                exact_match: true,
                broken_link: false,
            })
        );
        // Not an SEI, or an SEI without one.
        assert_eq!(recovery_point(&[0x41, 0x06, 0x02, 0x09, 0xc4, 0x80]), None);
        assert_eq!(recovery_point(&[0x06, 0x05, 0x01, 0xAA, 0x80]), None);
    }

    #[test]
    fn recovery_point_found_after_other_sei_messages_and_across_emulation_prevention() {
        // user_data_unregistered (5) of 300 bytes (size FF 2D) full of zeros: emulation
        // prevention bytes inside, which payloadSize does not count; then pic_timing (1) of 1
        // byte; then the recovery point: recovery_frame_cnt 0 (ue "1"), broken_link 1.
        let mut rbsp = vec![0x05, 0xFF, 0x2D];
        rbsp.extend([0u8; 300]);
        rbsp.extend([0x01, 0x01, 0x00, 0x06, 0x01, 0b1010_1000, 0x80]);
        let nal = crate::codec::nal_with_emulation_prevention(&[0x06], &rbsp);
        assert!(nal.len() > 300 + 100, "emulation prevention bytes inserted");
        assert_eq!(
            recovery_point(&nal),
            Some(RecoveryPoint {
                frames: 0,
                exact_match: false,
                broken_link: true,
            })
        );
        // Cut inside the first message: nothing, no panic.
        assert_eq!(recovery_point(&nal[..200]), None);
    }

    #[test]
    fn recovery_point_never_panics_on_garbage() {
        assert_eq!(recovery_point(&[]), None);
        assert_eq!(recovery_point(&[0x06]), None);
        for len in 0..SEI_RECOVERY_X264.len() {
            let _ = recovery_point(&SEI_RECOVERY_X264[..len]);
        }
        // Sizes and types that run to u32::MAX and beyond.
        let _ = recovery_point(&[&[0x06][..], &[0xFF; 5000]].concat());
        let _ = recovery_point(&[&[0x06, 0x05][..], &[0xFF; 5000]].concat());
        let mut x = 0x2545_F491u32;
        for _ in 0..5000 {
            let mut nal = vec![0x06];
            for _ in 0..(x % 48) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                nal.push(x as u8);
            }
            let _ = recovery_point(&nal);
            if let Some(t) = nal.get_mut(1) {
                *t = 6;
            }
            let _ = recovery_point(&nal);
        }
    }

    #[test]
    fn recovery_point_gets_the_parameter_sets_and_an_idr_stays_a_keyframe() {
        let sps = hex(SPS_640X360_HIGH);
        let mut a = H264Assembler::new();
        let mut out = Vec::new();
        a.push(&pes(0, annexb(&[AUD, &sps, PPS, IDR])), &mut out);
        a.push(&pes(3000, annexb(&[AUD, SLICE])), &mut out);
        a.push(
            &pes(6000, annexb(&[AUD, SEI_RECOVERY_X264, SLICE])),
            &mut out,
        );
        a.push(&pes(9000, annexb(&[AUD, SEI_RECOVERY_X264, IDR])), &mut out);
        let kinds: Vec<(bool, Recovery)> =
            out.iter().map(|au| (au.keyframe, au.recovery)).collect();
        assert_eq!(
            kinds,
            [
                (true, Recovery::None),
                (false, Recovery::None),
                (false, Recovery::Point { frames: 18 }),
                (true, Recovery::None),
            ]
        );
        let expect: Vec<u8> = [&sps[..], PPS, SEI_RECOVERY_X264, SLICE]
            .iter()
            .flat_map(|n| [&START_CODE[..], n].concat())
            .collect();
        assert_eq!(out[2].data, expect);
    }

    #[test]
    fn intra_refresh_testdata_has_one_idr_then_recovery_points() {
        let aus =
            crate::ts::testutil::testdata_video_aus("h264_intra_refresh.ts").expect("testdata");
        assert_eq!(aus.len(), 120);
        let starts: Vec<(usize, bool, Recovery)> = aus
            .iter()
            .enumerate()
            .filter(|(_, au)| au.keyframe || au.recovery != Recovery::None)
            .map(|(i, au)| (i, au.keyframe, au.recovery))
            .collect();
        let point = Recovery::Point { frames: 18 };
        assert_eq!(
            starts,
            [
                (0, true, Recovery::None),
                (30, false, point),
                (60, false, point),
                (90, false, point),
            ]
        );
        for (i, ..) in &starts {
            assert!(find_sps(&aus[*i].data).is_some(), "SPS before start {i}");
        }
    }

    #[test]
    fn pes_with_several_auds_is_split_one_frame_apart() {
        let mut a = H264Assembler::new();
        let mut out = Vec::new();
        a.push(&pes(90_000, annexb(&[AUD, SLICE])), &mut out);
        a.push(&pes(93_600, annexb(&[AUD, SLICE])), &mut out); // 25 fps
        a.push(
            &pes(97_200, annexb(&[AUD, SLICE, AUD, SLICE, AUD, SLICE])),
            &mut out,
        );
        assert_eq!(
            out.iter().map(|au| au.pts).collect::<Vec<_>>(),
            [90_000, 93_600, 97_200, 100_800, 104_400]
        );
        // Across the 33-bit wrap.
        a.push(
            &pes(
                crate::time::PTS_WRAP - 100,
                annexb(&[AUD, SLICE, AUD, SLICE]),
            ),
            &mut out,
        );
        assert_eq!(out[6].pts, 3500);
    }
}
