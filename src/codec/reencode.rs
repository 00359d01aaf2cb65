//! Video re-encoding, sans-IO: H.264 with B-frames in (decode order), H.264 without B-frames
//! out (display order), for browsers' WebRTC decoders, which do not reorder. With
//! `--features ffmpeg` also MPEG-2 video (which no browser decodes; interlaced pictures are
//! deinterlaced by [`deinterlace`](super::deinterlace)) and HEVC (for viewers without H.265):
//! libavcodec decodes them into the same encoder ([`Source`]).
//!
//! ```text
//! access unit (decode order, timeline PTS) ─► OpenH264 decoder (Main/High, B-frames; it
//!     reorders: pictures come out in display order) ─► the smallest PTS still pending is the
//!     picture's ─► OpenH264 encoder (Constrained Baseline, no B-frames: one picture in, one
//!     access unit out) ─► access unit (display order = decode order)
//! ```
//!
//! The output mirrors the source: same size, frame rate and start points (an IDR wherever the
//! source has a keyframe or a recovery point, so the GOP cache and instant start behave as for
//! a pass-through stream, and a periodic-intra-refresh source gets the IDRs browsers need), at
//! about the source's bitrate (measured from start point to start point; the encoder is rebuilt
//! at one when it strays by more than a third). A viewer's keyframe request can add an IDR, at
//! most one per [`KEYFRAME_EVERY`]. A decoder error or an SPS change starts the decoder again
//! at the next start point; a picture format the decoder cannot take (4:2:2, 10-bit,
//! interlaced) is an [`ReencodeError::Unsupported`] the caller reports (and it passes the video
//! through).
//!
//! Started at a recovery point, the decoder conceals the missing references (a grey picture,
//! see [`h264_decoder`](super::h264_decoder)) and the intra refresh paints the picture in: the
//! `recovery_frame_cnt` pictures until it is whole are decoded, not encoded.
//!
//! Time is the caller's (90 kHz timeline ticks); the PTS of a picture is the one of the access
//! unit it was decoded from. OpenH264 keeps no timestamps through its reorder buffer, but it
//! outputs every picture once in display order, so the smallest pending PTS is the right one.

use std::collections::BTreeMap;

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, UsageType,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};

use super::h264::{find_sps, parse_sps, AccessUnit, SpsInfo};
use super::h264_decoder::{DecodeState, H264Decoder};
use super::{Recovery, VideoCodec};

/// What the output is, for the API and logs.
pub const OUTPUT: &str = "H.264 Constrained Baseline";
/// At most one keyframe on request per this many 90 kHz ticks (1 s).
pub const KEYFRAME_EVERY: u64 = 90_000;
/// Pictures the decoder may hold back for reordering before a pending PTS is taken as lost.
const MAX_PENDING: usize = 16;
/// After a start at a recovery point, access units whose missing references are not an error:
/// the pictures until the recovery is complete, and leading pictures of an open GOP.
const RECOVERY_GRACE: u32 = MAX_PENDING as u32;
/// Bitrate assumed before a GOP was measured, per pixel per frame (≈ 2.2 Mbit/s at 720p30).
const BITS_PER_PIXEL: f64 = 0.08;

/// One access unit of the source, in decode order.
#[derive(Debug, Clone, Copy)]
pub struct SourceFrame<'a> {
    /// On the caller's timeline (90 kHz, monotonic apart from B-frame reordering).
    pub pts: u64,
    pub keyframe: bool,
    /// A recovery point (the re-encoder starts there too).
    pub recovery: Recovery,
    /// Annex B, parameter sets before a keyframe (as `h264::AccessUnit::data`).
    pub data: &'a [u8],
}

impl SourceFrame<'_> {
    /// A keyframe or a recovery point.
    pub fn is_start(&self) -> bool {
        self.keyframe || self.recovery.is_point()
    }
}

impl<'a> From<&'a AccessUnit> for SourceFrame<'a> {
    /// An access unit on its own PES time (for a stream that does not wrap).
    fn from(au: &'a AccessUnit) -> Self {
        SourceFrame {
            pts: au.pts,
            keyframe: au.keyframe,
            recovery: au.recovery,
            data: &au.data,
        }
    }
}

/// One re-encoded access unit, in display order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    pub pts: u64,
    /// An IDR with its SPS and PPS before it.
    pub keyframe: bool,
    /// Annex B with start codes.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReencodeError {
    /// The decoder cannot take this video at all; pass it through and say why.
    #[error("{0}")]
    Unsupported(String),
    /// OpenH264 could not be set up (should not happen; reported, video passes through).
    #[error("codec setup failed: {0}")]
    Setup(String),
}

/// Counters since the re-encoder was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReencodeStats {
    pub decoded: u64,
    pub encoded: u64,
    /// Access units the decoder rejected (each restarts it at the next keyframe).
    pub decode_errors: u64,
    pub encode_errors: u64,
    /// Keyframes added for viewers' requests.
    pub keyframes_requested: u64,
    /// Encoder rebuilds (size, frame rate or bitrate changed).
    pub encoder_restarts: u64,
}

/// The encoder and what it was set up for.
struct Output {
    encoder: Encoder,
    size: (usize, usize),
    fps: f64,
    bps: u32,
}

/// The decoder of the source's codec: OpenH264 for H.264 (its decoder conceals a start at a
/// recovery point), libavcodec for MPEG-2 and HEVC.
enum Decoder {
    H264(H264Decoder),
    #[cfg(feature = "ffmpeg")]
    Ffmpeg(super::ffmpeg::VideoDecoder),
}

/// What is decoded with what: OpenH264 for H.264, FFmpeg's decoders for the rest.
fn decoder_for(source: VideoCodec, concealing: bool) -> Result<Decoder, ReencodeError> {
    match source {
        VideoCodec::H264 => H264Decoder::new(concealing)
            .map(Decoder::H264)
            .map_err(ReencodeError::Setup),
        #[cfg(feature = "ffmpeg")]
        VideoCodec::Mpeg2 | VideoCodec::H265 => {
            use super::ffmpeg::{VideoCodec as Ff, VideoDecoder};
            let which = match source {
                VideoCodec::Mpeg2 => Ff::Mpeg2,
                _ => Ff::Hevc,
            };
            VideoDecoder::new(which)
                .map(Decoder::Ffmpeg)
                .ok_or_else(|| {
                    ReencodeError::Setup(format!("FFmpeg has no {} decoder", source.name()))
                })
        }
        #[cfg(not(feature = "ffmpeg"))]
        VideoCodec::Mpeg2 | VideoCodec::H265 => Err(ReencodeError::Unsupported(format!(
            "{} is re-encoded with FFmpeg's decoder: rebuild with --features ffmpeg",
            source.name()
        ))),
    }
}

/// An I420 picture in one buffer (libavcodec's, copied out by the shim), for the encoder.
#[cfg_attr(not(feature = "ffmpeg"), allow(dead_code))]
struct I420<'a> {
    width: usize,
    height: usize,
    yuv: &'a [u8],
}

#[cfg_attr(not(feature = "ffmpeg"), allow(dead_code))]
impl I420<'_> {
    fn chroma(&self) -> (usize, usize) {
        (self.width.div_ceil(2), self.height.div_ceil(2))
    }

    /// The buffer holds the three planes (else it is not encoded).
    fn is_whole(&self) -> bool {
        let (cw, ch) = self.chroma();
        self.yuv.len() >= self.width * self.height + 2 * cw * ch
    }
}

impl YUVSource for I420<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let (cw, _) = self.chroma();
        (self.width, cw, cw)
    }

    fn y(&self) -> &[u8] {
        &self.yuv[..self.width * self.height]
    }

    fn u(&self) -> &[u8] {
        let (cw, ch) = self.chroma();
        let at = self.width * self.height;
        &self.yuv[at..at + cw * ch]
    }

    fn v(&self) -> &[u8] {
        let (cw, ch) = self.chroma();
        let at = self.width * self.height + cw * ch;
        &self.yuv[at..at + cw * ch]
    }
}

pub struct Reencoder {
    /// What the source is coded with.
    source: VideoCodec,
    decoder: Option<Decoder>,
    #[cfg(feature = "ffmpeg")]
    pictures: Vec<super::ffmpeg::Picture>,
    /// Scratch line of the deinterlacer.
    #[cfg(feature = "ffmpeg")]
    line: Vec<u8>,
    /// PTS of the access units in the decoder not yet out as pictures, with whether each is a
    /// source start point (keyframe or recovery point: the output has an IDR there).
    pending: BTreeMap<u64, bool>,
    /// Until a start point arrives, access units are dropped (at the start, after an error).
    need_keyframe: bool,
    /// The decoder started at a recovery point: the state bits that are no error, and for how
    /// many more access units a lost reference is none either.
    started_at_point: bool,
    grace: u32,
    /// The SPS the decoder was started with (a new one restarts it).
    sps: Option<Vec<u8>>,
    /// Source bytes and PTS span since the last keyframe measured, for the bitrate.
    gop_bytes: u64,
    gop_start: Option<u64>,
    enc: Encoding,
    stats: ReencodeStats,
}

/// The encoder's side: what it was set up for, and how it times and keys its pictures.
#[derive(Default)]
struct Encoding {
    output: Option<Output>,
    /// Recent display-order PTS steps, for the frame rate.
    steps: Vec<u64>,
    last_out: Option<u64>,
    /// The source's bitrate, once a GOP was measured.
    measured_bps: Option<u32>,
    /// Rebuild the encoder at the next source keyframe (the bitrate moved).
    restart: bool,
    keyframe_wanted: bool,
    last_forced: Option<u64>,
    /// Pictures shown before this are decoded (they are references) but not encoded.
    start_pts: u64,
    /// Pictures still to decode but not encode: a start at a recovery point is right only
    /// this many pictures later.
    warmup: u32,
}

impl Default for Reencoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Reencoder {
    /// For H.264.
    pub fn new() -> Self {
        Self::for_source(VideoCodec::H264)
    }

    /// For a source coded with `source` (MPEG-2 and HEVC need `--features ffmpeg`; without,
    /// the first keyframe is an [`ReencodeError::Unsupported`] that says so).
    pub fn for_source(source: VideoCodec) -> Self {
        Reencoder {
            source,
            decoder: None,
            #[cfg(feature = "ffmpeg")]
            pictures: Vec::new(),
            #[cfg(feature = "ffmpeg")]
            line: Vec::new(),
            pending: BTreeMap::new(),
            need_keyframe: true,
            started_at_point: false,
            grace: 0,
            sps: None,
            gop_bytes: 0,
            gop_start: None,
            enc: Encoding::default(),
            stats: ReencodeStats::default(),
        }
    }

    pub fn stats(&self) -> ReencodeStats {
        self.stats
    }

    /// The source's codec changed (a new PMT): what is held is of the old one.
    pub fn set_source(&mut self, source: VideoCodec) {
        if source != self.source {
            self.source = source;
            self.reset();
        }
    }

    /// Start (again) at the next keyframe; pictures shown before `pts` are decoded but not
    /// encoded (catching up from a GOP's keyframe to the live edge costs decoding only).
    pub fn start_at(&mut self, pts: u64) {
        self.reset();
        self.enc.start_pts = pts;
    }

    /// Forget the source (it ended or was replaced): decoder, pending pictures, encoder.
    pub fn reset(&mut self) {
        self.decoder = None;
        self.pending.clear();
        self.need_keyframe = true;
        self.started_at_point = false;
        self.grace = 0;
        self.sps = None;
        self.gop_bytes = 0;
        self.gop_start = None;
        let wanted = self.enc.keyframe_wanted;
        self.enc = Encoding {
            keyframe_wanted: wanted,
            ..Encoding::default()
        };
    }

    /// A viewer asked for a keyframe: the next picture is an IDR unless one went out less than
    /// [`KEYFRAME_EVERY`] ago.
    pub fn request_keyframe(&mut self) {
        self.enc.keyframe_wanted = true;
    }

    /// One access unit in (decode order); the pictures it completes out, encoded.
    pub fn push(
        &mut self,
        au: SourceFrame<'_>,
        out: &mut Vec<EncodedFrame>,
    ) -> Result<(), ReencodeError> {
        if au.is_start() {
            self.on_start(au)?;
        } else if self.need_keyframe {
            return Ok(());
        }
        self.measure(au);
        if self.decoder.is_none() {
            self.decoder = Some(decoder_for(self.source, self.started_at_point)?);
        }
        self.pending.insert(au.pts, au.is_start());
        match &mut self.decoder {
            Some(Decoder::H264(_)) => self.push_h264(au, out),
            #[cfg(feature = "ffmpeg")]
            Some(Decoder::Ffmpeg(_)) => self.push_ffmpeg(au, out)?,
            None => {}
        }
        // Pictures the decoder dropped without an error: do not let their PTS shift the others.
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
        }
        Ok(())
    }

    fn push_h264(&mut self, au: SourceFrame<'_>, out: &mut Vec<EncodedFrame>) {
        let Some(Decoder::H264(decoder)) = &mut self.decoder else {
            return;
        };
        let mut allowed = 0;
        if self.started_at_point {
            allowed |= DecodeState::CONCEALED;
            if self.grace > 0 {
                self.grace -= 1;
                allowed |= DecodeState::REF_LOST;
            }
        }
        let (state, picture) = decoder.decode(au.data);
        if state.fails(allowed) {
            // A corrupt access unit: start again at the next start point (viewers keep the
            // last picture meanwhile).
            self.decode_failed();
        } else if let Some(picture) = picture {
            self.stats.decoded += 1;
            if let Some((pts, key)) = self.pending.pop_first() {
                self.enc.picture(&mut self.stats, &picture, pts, key, out);
            }
        }
    }

    /// libavcodec keeps each picture's PTS through its reordering: the pending entry of that
    /// PTS says whether it was a start point; entries before it were dropped by the decoder.
    /// An empty `data` drains the decoder (the end of the source).
    #[cfg(feature = "ffmpeg")]
    fn push_ffmpeg(
        &mut self,
        au: SourceFrame<'_>,
        out: &mut Vec<EncodedFrame>,
    ) -> Result<(), ReencodeError> {
        use super::ffmpeg::VideoError;
        let Some(Decoder::Ffmpeg(decoder)) = &mut self.decoder else {
            return Ok(());
        };
        let mut pictures = std::mem::take(&mut self.pictures);
        let pts = i64::try_from(au.pts).unwrap_or(i64::MAX);
        match decoder.decode(au.data, pts, &mut pictures) {
            Ok(()) => {}
            Err(VideoError::Format { width, height }) => {
                return Err(ReencodeError::Unsupported(format!(
                    "{} {width}x{height} is not 8-bit 4:2:0, which the H.264 encoder takes",
                    self.source.name()
                )));
            }
            // A corrupt access unit: what came out before it still goes; then start again
            // at the next start point.
            Err(VideoError::Decode(_)) => self.decode_failed(),
        }
        for p in pictures.iter_mut() {
            self.stats.decoded += 1;
            let pts = u64::try_from(p.pts).unwrap_or(0);
            let key = self.pending.remove(&pts).unwrap_or(false);
            self.pending = self.pending.split_off(&pts);
            if p.interlaced {
                super::deinterlace::blend_i420(&mut p.yuv, p.width, p.height, &mut self.line);
            }
            let picture = I420 {
                width: p.width,
                height: p.height,
                yuv: &p.yuv,
            };
            if picture.is_whole() {
                self.enc.picture(&mut self.stats, &picture, pts, key, out);
            }
        }
        pictures.clear();
        self.pictures = pictures;
        Ok(())
    }

    fn decode_failed(&mut self) {
        self.stats.decode_errors += 1;
        self.decoder = None;
        self.pending.clear();
        self.need_keyframe = true;
    }

    /// The source ended: the pictures the decoder still holds, encoded.
    pub fn flush(&mut self, out: &mut Vec<EncodedFrame>) {
        match self.decoder.as_mut() {
            None => {}
            Some(Decoder::H264(decoder)) => {
                for picture in decoder.flush_remaining() {
                    self.stats.decoded += 1;
                    let Some((pts, key)) = self.pending.pop_first() else {
                        break;
                    };
                    self.enc.picture(&mut self.stats, &picture, pts, key, out);
                }
            }
            #[cfg(feature = "ffmpeg")]
            Some(Decoder::Ffmpeg(_)) => {
                let drain = SourceFrame {
                    pts: 0,
                    keyframe: false,
                    recovery: Recovery::None,
                    data: &[],
                };
                let _ = self.push_ffmpeg(drain, out);
                // A drained libavcodec decoder takes nothing more.
                self.decoder = None;
                self.need_keyframe = true;
            }
        }
    }

    /// A keyframe or a recovery point: check its SPS (a picture format the decoder cannot take
    /// is an error; a new SPS restarts the decoder), start the decoder there if it waits for
    /// one, and take the bitrate since the last one.
    fn on_start(&mut self, au: SourceFrame<'_>) -> Result<(), ReencodeError> {
        // (H.264's SPS only: an MPEG-2 slice start code reads as an H.264 SPS NAL header.
        // libavcodec follows parameter changes by itself.)
        let sps = (self.source == VideoCodec::H264)
            .then(|| find_sps(au.data))
            .flatten();
        if let Some(sps) = sps {
            if let Some(info) = parse_sps(sps) {
                check_format(&info)?;
            }
            if self.sps.as_deref() != Some(sps) {
                if self.sps.is_some() {
                    // New parameters: what the old decoder holds is of the old stream.
                    self.decoder = None;
                    self.pending.clear();
                }
                self.sps = Some(sps.to_vec());
            }
        }
        if self.decoder.is_none() || self.need_keyframe {
            self.decoder = None;
            self.pending.clear();
            self.started_at_point = !au.keyframe;
            self.grace = 0;
            self.enc.warmup = 0;
            if let (false, Recovery::Point { frames }) = (au.keyframe, au.recovery) {
                // The pictures until the recovery is complete are approximations.
                self.enc.warmup = frames;
                self.grace = frames.saturating_add(RECOVERY_GRACE);
            }
        }
        if let Some(start) = self.gop_start {
            let span = au.pts.saturating_sub(start);
            if span >= 2 * 90_000 {
                let bps = (self.gop_bytes * 8 * 90_000 / span).min(u64::from(u32::MAX)) as u32;
                self.enc.measured_bps = Some(bps);
                self.gop_bytes = 0;
                self.gop_start = Some(au.pts);
                if let Some(o) = &self.enc.output {
                    let (a, b) = (f64::from(o.bps), f64::from(bps));
                    if (a - b).abs() > a.max(b) / 3.0 {
                        self.enc.restart = true;
                    }
                }
            }
        } else {
            self.gop_start = Some(au.pts);
            self.gop_bytes = 0;
        }
        self.need_keyframe = false;
        Ok(())
    }

    fn measure(&mut self, au: SourceFrame<'_>) {
        if self.gop_start.is_some() {
            self.gop_bytes += au.data.len() as u64;
        }
    }
}

impl Encoding {
    /// Encode one decoded picture (display order) unless it is before `start_pts`.
    fn picture(
        &mut self,
        stats: &mut ReencodeStats,
        picture: &impl YUVSource,
        pts: u64,
        source_key: bool,
        out: &mut Vec<EncodedFrame>,
    ) {
        if let Some(last) = self.last_out {
            let step = pts.saturating_sub(last);
            if step > 0 && step < 90_000 {
                if self.steps.len() == 16 {
                    self.steps.remove(0);
                }
                self.steps.push(step);
            }
        }
        self.last_out = Some(pts);
        let warming = self.warmup > 0;
        self.warmup = self.warmup.saturating_sub(1);
        if pts < self.start_pts || warming {
            return;
        }
        let size = picture.dimensions();
        let fps = frame_rate(&self.steps);
        let stale = self.output.as_ref().is_none_or(|o| {
            o.size != size || (o.fps - fps).abs() > o.fps / 5.0 || (self.restart && source_key)
        });
        if stale {
            let guess = size.0 as f64 * size.1 as f64 * fps * BITS_PER_PIXEL;
            let bps = self.measured_bps.unwrap_or(guess as u32);
            let bps = bps.clamp(150_000, 20_000_000);
            match new_encoder(fps, bps) {
                Ok(encoder) => {
                    if self.output.is_some() {
                        stats.encoder_restarts += 1;
                    }
                    self.output = Some(Output {
                        encoder,
                        size,
                        fps,
                        bps,
                    });
                    self.restart = false;
                }
                Err(_) => {
                    stats.encode_errors += 1;
                    return;
                }
            }
        }
        let Some(o) = self.output.as_mut() else {
            return;
        };
        let requested = self.keyframe_wanted
            && self
                .last_forced
                .is_none_or(|t| pts.saturating_sub(t) >= KEYFRAME_EVERY);
        if source_key || requested {
            o.encoder.force_intra_frame();
            if requested && !source_key {
                stats.keyframes_requested += 1;
            }
            self.keyframe_wanted = false;
            self.last_forced = Some(pts);
        }
        match o
            .encoder
            .encode_at(picture, Timestamp::from_millis(pts / 90))
        {
            Ok(bs) => {
                let keyframe = bs.frame_type() == FrameType::IDR;
                if matches!(bs.frame_type(), FrameType::Skip | FrameType::Invalid) {
                    return;
                }
                let data = bs.to_vec();
                if data.is_empty() {
                    return;
                }
                stats.encoded += 1;
                out.push(EncodedFrame {
                    pts,
                    keyframe,
                    data,
                });
            }
            Err(_) => {
                // Start the next picture with a fresh encoder (its first picture is an IDR).
                stats.encode_errors += 1;
                self.output = None;
            }
        }
    }
}

/// Whether OpenH264's decoder takes this SPS's pictures: 8-bit 4:2:0 frames only.
pub fn check_format(sps: &SpsInfo) -> Result<(), ReencodeError> {
    if sps.chroma_format_idc != 1 {
        let name = match sps.chroma_format_idc {
            0 => "4:0:0 (monochrome)",
            2 => "4:2:2",
            _ => "4:4:4",
        };
        return Err(ReencodeError::Unsupported(format!(
            "{name} chroma cannot be re-encoded (only 4:2:0); encode with -pix_fmt yuv420p -bf 0"
        )));
    }
    if sps.bit_depth != 8 {
        return Err(ReencodeError::Unsupported(format!(
            "{}-bit video cannot be re-encoded (only 8-bit); encode with -pix_fmt yuv420p -bf 0",
            sps.bit_depth
        )));
    }
    if !sps.progressive {
        return Err(ReencodeError::Unsupported(
            "interlaced video cannot be re-encoded; deinterlace and encode with -bf 0".into(),
        ));
    }
    Ok(())
}

/// Frames per second from recent PTS steps (their median), 30 until two pictures were seen.
fn frame_rate(steps: &[u64]) -> f64 {
    if steps.is_empty() {
        return 30.0;
    }
    let mut s = steps.to_vec();
    s.sort_unstable();
    (90_000.0 / s[s.len() / 2] as f64).clamp(1.0, 120.0)
}

fn new_encoder(fps: f64, bps: u32) -> Result<Encoder, ReencodeError> {
    let config = EncoderConfig::new()
        .profile(Profile::Baseline)
        .usage_type(UsageType::CameraVideoRealTime)
        .rate_control_mode(RateControlMode::Bitrate)
        .bitrate(BitRate::from_bps(bps))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        // Keyframes where the source has them (and on request), not on a timer or scene cut.
        .intra_frame_period(IntraFramePeriod::from_num_frames(0))
        .scene_change_detect(false)
        // Every picture: a skipped one would be a stutter the source did not have.
        .skip_frames(false)
        .complexity(Complexity::Low)
        // One thread per stream: the cost of a stream is one core at most, and predictable.
        .num_threads(1);
    Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| ReencodeError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h264::{nal_units, NalType};

    fn access_units(file: &str) -> Vec<AccessUnit> {
        crate::ts::testutil::testdata_video_aus(file).expect("testdata")
    }

    fn reencode(file: &str, keyframe_requests: bool) -> (Vec<EncodedFrame>, ReencodeStats) {
        let aus = access_units(file);
        let mut r = Reencoder::new();
        let mut out = Vec::new();
        for (i, au) in aus.iter().enumerate() {
            if keyframe_requests && i % 10 == 5 {
                r.request_keyframe();
            }
            r.push(SourceFrame::from(au), &mut out).unwrap();
        }
        r.flush(&mut out);
        (out, r.stats())
    }

    #[test]
    fn b_frames_become_baseline_pictures_in_display_order_with_the_source_keyframes() {
        let source = access_units("h264_bframes.ts");
        assert_eq!(source.len(), 120);
        assert!(
            source.windows(2).any(|w| w[1].pts < w[0].pts),
            "the source reorders"
        );
        let (out, stats) = reencode("h264_bframes.ts", false);
        assert_eq!(out.len(), 120, "every picture, once");
        assert_eq!(
            (stats.decoded, stats.encoded, stats.decode_errors),
            (120, 120, 0)
        );
        // Display order is decode order now: PTS rise by one frame each.
        assert!(out.windows(2).all(|w| w[1].pts - w[0].pts == 3000));
        let mut source_pts: Vec<u64> = source.iter().map(|a| a.pts).collect();
        source_pts.sort_unstable();
        assert_eq!(out.iter().map(|f| f.pts).collect::<Vec<_>>(), source_pts);
        // Keyframes exactly where the source has them, each with its SPS and PPS.
        let source_keys: Vec<u64> = source
            .iter()
            .filter(|a| a.keyframe)
            .map(|a| a.pts)
            .collect();
        let keys: Vec<u64> = out.iter().filter(|f| f.keyframe).map(|f| f.pts).collect();
        assert_eq!(keys, source_keys);
        for f in &out {
            let types: Vec<NalType> = nal_units(&f.data).filter_map(NalType::of).collect();
            assert!(!types.is_empty());
            if f.keyframe {
                assert!(types.contains(&NalType::SPS) && types.contains(&NalType::PPS));
                let sps = find_sps(&f.data).and_then(parse_sps).unwrap();
                // Constrained Baseline (constraint_set1), the source's size.
                assert_eq!(sps.profile_level_id.profile_idc(), 66);
                assert_ne!(sps.profile_level_id.constraint_flags() & 0x40, 0);
                assert_eq!((sps.width, sps.height), (640, 360));
            }
        }
        // About the source's bitrate (400 kbit/s): the first GOPs at the per-pixel guess,
        // then measured.
        let bytes: usize = out.iter().map(|f| f.data.len()).sum();
        let kbps = bytes as f64 * 8.0 / 4.0 / 1000.0;
        assert!((150.0..1200.0).contains(&kbps), "{kbps} kbit/s");
    }

    #[test]
    fn keyframe_requests_add_idrs_at_most_once_a_second() {
        // 10 s with IDRs at 0 and 5 s; a request every 10 pictures.
        let (out, stats) = reencode("long_gop.ts", true);
        assert_eq!(out.len(), 300);
        let keys: Vec<u64> = out.iter().filter(|f| f.keyframe).map(|f| f.pts).collect();
        assert!((8..=11).contains(&keys.len()), "{keys:?}");
        assert!(stats.keyframes_requested > 0);
        assert!(
            keys.windows(2).all(|w| w[1] - w[0] >= KEYFRAME_EVERY),
            "{keys:?}"
        );
    }

    #[test]
    fn pictures_before_the_start_are_decoded_not_encoded() {
        let source = access_units("h264_bframes.ts");
        let mut r = Reencoder::new();
        r.start_at(source[0].pts + 10 * 3000);
        let mut out = Vec::new();
        for au in &source[..60] {
            r.push(SourceFrame::from(au), &mut out).unwrap();
        }
        assert!(out[0].keyframe, "the first picture out is an IDR");
        assert_eq!(out[0].pts, source[0].pts + 10 * 3000);
        assert!(r.stats().decoded > r.stats().encoded);
    }

    #[test]
    fn garbage_restarts_the_decoder_at_the_next_keyframe() {
        let source = access_units("h264_bframes.ts");
        let mut r = Reencoder::new();
        let mut out = Vec::new();
        for (i, au) in source.iter().enumerate() {
            let mut data = au.data.to_vec();
            if i == 40 {
                // Keep the start code and NAL header, scramble the slice.
                for b in data.iter_mut().skip(8) {
                    *b = 0xff;
                }
            }
            r.push(
                SourceFrame {
                    pts: au.pts,
                    keyframe: au.keyframe,
                    recovery: au.recovery,
                    data: &data,
                },
                &mut out,
            )
            .unwrap();
        }
        r.flush(&mut out);
        // Something was lost around the bad access unit, and it came back at a keyframe.
        assert!(out.len() >= 90, "{}", out.len());
        assert!(out.windows(2).all(|w| w[1].pts > w[0].pts));
        assert!(out.last().unwrap().pts >= source.iter().map(|a| a.pts).max().unwrap() - 3000);
    }

    #[test]
    fn a_new_sps_restarts_the_decoder_and_the_encoder_at_the_new_size() {
        let first = access_units("h264_bframes.ts");
        let second = access_units("h264_bframes_long_gop.ts");
        // The second source continues the first's timeline (as `time::Timeline` makes it).
        let end = first.iter().map(|a| a.pts).max().unwrap() + 3000;
        let base = second.iter().map(|a| a.pts).min().unwrap();
        let mut r = Reencoder::new();
        let mut out = Vec::new();
        let shifted = second.iter().map(|a| (a, a.pts + end - base));
        for (au, pts) in first.iter().map(|a| (a, a.pts)).chain(shifted) {
            let au = SourceFrame {
                pts,
                keyframe: au.keyframe,
                recovery: au.recovery,
                data: &au.data,
            };
            r.push(au, &mut out).unwrap();
        }
        r.flush(&mut out);
        let sizes: Vec<(u32, u32)> = out
            .iter()
            .filter(|f| f.keyframe)
            .filter_map(|f| find_sps(&f.data).and_then(parse_sps))
            .map(|s| (s.width, s.height))
            .collect();
        assert_eq!(sizes.first(), Some(&(640, 360)));
        assert_eq!(sizes.last(), Some(&(320, 180)), "{sizes:?}");
        // Pictures of both, in order; a few at the switch may be lost, not more.
        assert!(out.len() >= 120 + 180 - 6, "{}", out.len());
        assert!(out.windows(2).all(|w| w[1].pts > w[0].pts));
        assert_eq!(r.stats().decode_errors, 0);
    }

    /// testdata/h264_intra_refresh.ts: one IDR, then recovery points (recovery_frame_cnt 18) at
    /// access units 30, 60 and 90.
    #[test]
    fn a_start_at_a_recovery_point_encodes_from_where_the_picture_is_whole() {
        let source = access_units("h264_intra_refresh.ts");
        assert_eq!(source.len(), 120);
        let mut r = Reencoder::new();
        let mut out = Vec::new();
        for au in &source[30..] {
            r.push(SourceFrame::from(au), &mut out).unwrap();
        }
        r.flush(&mut out);
        // Decoded from 30 on; encoded from 48 on (18 pictures later), every picture, IDRs there
        // and at each later source start point.
        let pts: Vec<u64> = out.iter().map(|f| f.pts).collect();
        let expected: Vec<u64> = source[48..].iter().map(|a| a.pts).collect();
        assert_eq!(pts, expected);
        let keys: Vec<u64> = out.iter().filter(|f| f.keyframe).map(|f| f.pts).collect();
        assert_eq!(keys, [source[48].pts, source[60].pts, source[90].pts]);
        for f in out.iter().filter(|f| f.keyframe) {
            let types: Vec<NalType> = nal_units(&f.data).filter_map(NalType::of).collect();
            assert!(
                types.starts_with(&[NalType::SPS, NalType::PPS]),
                "IDR at {}: {types:?}",
                f.pts
            );
        }
        let stats = r.stats();
        assert_eq!((stats.decoded, stats.decode_errors), (90, 0));
        // From the IDR: an IDR at each start point of the source.
        let (out, stats) = reencode("h264_intra_refresh.ts", false);
        assert_eq!((out.len(), stats.decode_errors), (120, 0));
        let keys: Vec<u64> = out.iter().filter(|f| f.keyframe).map(|f| f.pts).collect();
        let starts: Vec<u64> = [0, 30, 60, 90].iter().map(|&i| source[i].pts).collect();
        assert_eq!(keys, starts);
    }

    /// MPEG-2 and HEVC through libavcodec into the same encoder: every picture once, in
    /// display order, IDRs (with SPS and PPS, the source's size) where the source has
    /// keyframes; 576i deinterlaced on the way.
    #[cfg(feature = "ffmpeg")]
    #[test]
    fn mpeg2_and_hevc_become_baseline_pictures_in_display_order() {
        use crate::codec::{VideoAssembler, VideoCodec};
        for (file, codec, size, pictures) in [
            ("mpeg2_576i_mp2.ts", VideoCodec::Mpeg2, (720, 576), 25),
            ("hevc_aac.ts", VideoCodec::H265, (1280, 720), 60),
        ] {
            let Some(data) = crate::testdata::read(file) else {
                return;
            };
            let mut assembler = VideoAssembler::new(codec);
            let mut aus = Vec::new();
            for (payload, pts) in crate::ts::testutil::pes_of_pid(&data, 0x100) {
                let unit = crate::codec::EsUnit {
                    data: &payload,
                    pts,
                    dts: None,
                };
                assembler.push(unit, &mut aus);
            }
            if let VideoAssembler::Mpeg2(_) = &assembler {
                // The last picture is complete only at the end of the source.
                assert_eq!(aus.len(), pictures - 1, "{file}");
            }
            let mut r = Reencoder::for_source(codec);
            let mut out = Vec::new();
            for au in &aus {
                r.push(SourceFrame::from(au), &mut out).unwrap();
            }
            r.flush(&mut out);
            let stats = r.stats();
            assert_eq!(stats.decode_errors, 0, "{file}");
            assert_eq!(out.len(), aus.len(), "{file}: every picture, once");
            assert!(out.windows(2).all(|w| w[1].pts > w[0].pts), "{file}");
            let source_keys: Vec<u64> = aus.iter().filter(|a| a.keyframe).map(|a| a.pts).collect();
            let keys: Vec<u64> = out.iter().filter(|f| f.keyframe).map(|f| f.pts).collect();
            assert_eq!(keys, source_keys, "{file}");
            for f in out.iter().filter(|f| f.keyframe) {
                let sps = find_sps(&f.data).and_then(parse_sps).unwrap();
                assert_eq!((sps.width, sps.height), size, "{file}");
                assert_eq!(sps.profile_level_id.profile_idc(), 66);
            }
        }
    }

    #[test]
    fn formats_the_decoder_cannot_take_are_named() {
        let sps = SpsInfo {
            profile_level_id: crate::codec::h264::ProfileLevelId([122, 0, 40]),
            width: 1920,
            height: 1080,
            chroma_format_idc: 2,
            bit_depth: 10,
            progressive: true,
        };
        let e = check_format(&sps).unwrap_err().to_string();
        assert!(e.contains("4:2:2"), "{e}");
        let e = check_format(&SpsInfo {
            chroma_format_idc: 1,
            ..sps
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("10-bit"), "{e}");
    }
}
