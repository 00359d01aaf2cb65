//! Audio transcoding to Opus, sans-IO: AAC (ADTS or LATM) and MPEG-1/2 audio PES payloads in,
//! 20 ms Opus frames with source-timeline timestamps out. Pure Rust: symphonia decodes, a
//! polyphase windowed-sinc resampler converts to 48 kHz, mousiki encodes Opus.
//!
//! ```text
//! PES payload + PTS ─► framing (ADTS / LOAS-LATM / MPEG audio header; resync after garbage)
//!                       │  the PES PTS goes to the first frame that starts in that payload
//!                       ▼
//!                      timing: a frame whose PTS strays more than one frame from the sample
//!                       │      count re-anchors (flush, start again at that PTS)
//!                       ▼
//!                      decode (symphonia; a bad frame becomes silence of its length, counted)
//!                       ▼
//!                      mix to the encoder's channels (1 or 2) ─► resample to 48 kHz
//!                       ▼
//!                      drop the encoder's lookahead once per segment ─► 960-sample Opus frames
//! ```
//!
//! **Time.** Within a segment (from an anchor PTS until the next re-anchor) everything is
//! counted in samples, so nothing drifts: the resampler is zero-phase (48 kHz output sample
//! `n` is the source signal at `anchor + n / 48000`), and the first `lookahead` resampled
//! samples are not fed to the encoder, so the decoder's output sample `k` of frame `i` is the
//! source at `anchor + (960 i + k) / 48000`. Frame `i` therefore carries
//! `pts_90k = anchor + 1800 i` exactly. The cost of the alignment is the encoder's 6.5 ms of
//! lookahead being silent at the start of each segment.

use std::ops::Range;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use symphonia_bundle_mp3::MpaDecoder;
use symphonia_codec_aac::AacDecoder;
use symphonia_core::audio::layouts::{CHANNEL_LAYOUT_MONO, CHANNEL_LAYOUT_STEREO};
use symphonia_core::audio::{Audio, GenericAudioBufferRef};
use symphonia_core::codecs::audio::well_known::{
    CODEC_ID_AAC, CODEC_ID_MP1, CODEC_ID_MP2, CODEC_ID_MP3,
};
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::PacketRef;
use symphonia_core::units::{Duration, Timestamp};

use super::aac::{self, AacConfig, AdtsHeader, Latm, LatmError};
use super::mpa::{self, MpaHeader};
use crate::ts::StreamType;

/// Opus RTP clock and the only rate the encoder is run at.
pub const OPUS_RATE: u32 = 48_000;
/// Samples per channel in one 20 ms Opus frame at 48 kHz.
pub const FRAME_SAMPLES: u32 = 960;
/// One Opus frame in 90 kHz ticks.
pub const FRAME_TICKS: u64 = 1800;
/// Largest Opus packet (RFC 6716 §3.2.1).
const MAX_PACKET: usize = 1276;
/// Bytes kept while looking for a frame before the oldest are dropped as garbage.
const MAX_PENDING: usize = 64 * 1024;
/// Frames in a row of an unsupported variant (HE-AAC, AAC Main, …) before the stream is
/// declared unsupported: one corrupted header must not condemn a stream.
const UNSUPPORTED_AFTER: u32 = 8;
/// Source channels looked at when downmixing.
const MAX_SOURCE_CHANNELS: usize = 8;

/// The source audio formats this module transcodes, by PMT stream_type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceCodec {
    /// stream_type 0x0F: AAC in ADTS frames.
    AacAdts,
    /// stream_type 0x11: AAC in LATM, LOAS sync layer.
    AacLatm,
    /// stream_type 0x03 / 0x04: MPEG-1/2 audio, layer I, II or III.
    MpegAudio,
}

impl SourceCodec {
    pub fn from_stream_type(stream_type: StreamType) -> Option<Self> {
        match stream_type {
            StreamType::AAC_ADTS => Some(Self::AacAdts),
            StreamType::AAC_LATM => Some(Self::AacLatm),
            StreamType::MPEG1_AUDIO | StreamType::MPEG2_AUDIO => Some(Self::MpegAudio),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::AacAdts => "AAC (ADTS)",
            Self::AacLatm => "AAC (LATM)",
            Self::MpegAudio => "MPEG audio",
        }
    }
}

/// One encoded 20 ms Opus frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpusFrame {
    pub data: Bytes,
    /// Source-timeline time (the caller's unwrapped 90 kHz PTS) of the first sample this frame
    /// decodes to: encoder and resampler delay are already accounted for.
    pub pts_90k: u64,
    /// Samples per channel at 48 kHz: always [`FRAME_SAMPLES`].
    pub samples: u32,
}

/// Encoder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranscodeConfig {
    /// Opus bitrate for a mono source, bit/s.
    pub mono_bitrate: u32,
    /// Opus bitrate for a stereo (or downmixed multichannel) source, bit/s.
    pub stereo_bitrate: u32,
    /// Opus encoder complexity, 0..=10 (CPU against quality).
    pub complexity: u8,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self {
            mono_bitrate: 48_000,
            stereo_bitrate: 96_000,
            complexity: 5,
        }
    }
}

/// What the caller surfaces; decode errors of single frames are not errors (they are counted
/// in [`TranscodeStats`]), only a stream this transcoder cannot play is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    /// The stream uses a codec variant the decoder cannot play (HE-AAC, AAC Main, more than two
    /// AAC channels, …). Sticky until [`Transcoder::reset`]; show it like an unsupported track.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// Counters since creation (not cleared by `reset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranscodeStats {
    /// Source frames found by the framing (ADTS/MPEG frames, LATM sub-frames).
    pub source_frames: u64,
    /// Source frames the decoder turned into audio.
    pub decoded_frames: u64,
    /// Source frames the decoder rejected; each was replaced by silence of its length.
    pub decode_errors: u64,
    /// Bytes skipped while looking for the next frame header (garbage, cut frames).
    pub skipped_bytes: u64,
    /// Source frames dropped because no PTS had been given yet.
    pub frames_without_pts: u64,
    /// Opus frames produced.
    pub encoded_frames: u64,
    /// Opus frames the encoder failed on (skipped; the timeline goes on).
    pub encode_errors: u64,
    /// Times the timeline was re-anchored (PTS jump, sample rate change, discontinuity).
    pub reanchors: u64,
}

/// The source stream as decoded, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceFormat {
    /// "AAC-LC", "MP1", "MP2" or "MP3".
    pub codec: &'static str,
    pub sample_rate: u32,
    pub channels: u8,
}

/// Transcodes one audio track to Opus. Create it when the PMT shows a [`SourceCodec`] track,
/// feed it every PES payload of that track in order.
pub struct Transcoder {
    codec: SourceCodec,
    config: TranscodeConfig,
    framer: Framer,
    latm: Latm,
    latm_buf: Vec<u8>,
    latm_payloads: Vec<Range<usize>>,
    decoder: Option<Decoder>,
    format: Option<SourceFormat>,
    unsupported: Option<&'static str>,
    /// Frames in a row whose header said "unsupported".
    unsupported_run: u32,
    pipeline: Pipeline,
    stats: TranscodeStats,
}

impl Transcoder {
    pub fn new(codec: SourceCodec) -> Self {
        Self::with_config(codec, TranscodeConfig::default())
    }

    pub fn with_config(codec: SourceCodec, config: TranscodeConfig) -> Self {
        Self {
            codec,
            config,
            framer: Framer::new(codec),
            latm: Latm::new(),
            latm_buf: Vec::new(),
            latm_payloads: Vec::new(),
            decoder: None,
            format: None,
            unsupported: None,
            unsupported_run: 0,
            pipeline: Pipeline::new(config),
            stats: TranscodeStats::default(),
        }
    }

    pub fn codec(&self) -> SourceCodec {
        self.codec
    }

    pub fn config(&self) -> TranscodeConfig {
        self.config
    }

    /// One PES payload (any number of whole or partial frames) and its PTS, already unwrapped
    /// to the caller's 64-bit 90 kHz timeline (`None` for a PES without PTS: its frames follow
    /// on from the previous ones). Finished Opus frames are appended to `out`.
    ///
    /// Garbage never panics: it is skipped and counted. `Err` only for a stream the decoder
    /// cannot play, and then on every call until [`Transcoder::reset`].
    pub fn push(
        &mut self,
        pes_payload: &[u8],
        pts_90k: Option<u64>,
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), TranscodeError> {
        if let Some(reason) = self.unsupported {
            return Err(TranscodeError::Unsupported(reason));
        }
        self.framer.push(pes_payload, pts_90k, &mut self.stats);
        while let Some((header, range, pts)) = self.framer.next(&mut self.stats) {
            // Lent out while the frame is processed (a pointer swap, no copy).
            let buf = std::mem::take(&mut self.framer.buf);
            let frame = &buf[range];
            let result = match header {
                Header::Adts(h) => self.adts_frame(h, frame, pts, out),
                Header::Mpa(h) => self.mpa_frame(h, frame, pts, out),
                Header::Loas => self.loas_frame(frame, pts, out),
            };
            self.framer.buf = buf;
            if let Err(e) = result {
                let TranscodeError::Unsupported(reason) = e;
                self.unsupported = Some(reason);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Ends the stream: the last partial Opus frame is completed with silence and emitted.
    pub fn flush(&mut self, out: &mut Vec<OpusFrame>) {
        self.pipeline.flush(out, &mut self.stats);
    }

    /// Data was lost before the next payload (the PES follows a discontinuity): drops the
    /// partial frame held from the previous payload. Timing follows from the next PTS.
    pub fn discontinuity(&mut self) {
        self.framer.clear();
    }

    /// The source restarted (a new publisher, a new file): forget everything but the counters
    /// and the encoder's channel count (the Opus track keeps its shape). The next PTS anchors.
    /// Pending audio is dropped: call [`Transcoder::flush`] first to send it.
    pub fn reset(&mut self) {
        self.framer.clear();
        self.latm.reset();
        self.decoder = None;
        self.format = None;
        self.unsupported = None;
        self.unsupported_run = 0;
        self.pipeline.reset();
    }

    /// Opus channel count (1 or 2), known once the first frame has decoded. More source
    /// channels are downmixed to stereo; a later change of the source's channel count is mixed
    /// to this one.
    pub fn channels(&self) -> Option<u8> {
        self.pipeline.encoder.as_ref().map(|e| e.channels as u8)
    }

    /// The source format as last decoded.
    pub fn source_format(&self) -> Option<SourceFormat> {
        self.format
    }

    pub fn stats(&self) -> TranscodeStats {
        self.stats
    }

    fn adts_frame(
        &mut self,
        h: AdtsHeader,
        frame: &[u8],
        pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), TranscodeError> {
        if let Some(reason) = h.config.unsupported() {
            return self.unsupported_frame(reason, out);
        }
        self.unsupported_run = 0;
        self.stats.source_frames += 1;
        let raw = &frame[h.header_len.min(frame.len())..];
        // Several raw data blocks without a CRC have no offsets: the decoder cannot split them.
        let decodable = h.raw_blocks == 1;
        self.aac_frame(h.config, raw, decodable, pts, out);
        Ok(())
    }

    /// A frame of a variant the decoder cannot play. One such header may be corruption (it
    /// becomes silence); [`UNSUPPORTED_AFTER`] in a row make the stream unsupported.
    fn unsupported_frame(
        &mut self,
        reason: &'static str,
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), TranscodeError> {
        self.unsupported_run += 1;
        if self.unsupported_run >= UNSUPPORTED_AFTER {
            return Err(TranscodeError::Unsupported(reason));
        }
        self.stats.source_frames += 1;
        self.stats.decode_errors += 1;
        // Its header is not to be trusted: keep time with one frame of the current format.
        self.pipeline.feed_silence(1024, out, &mut self.stats);
        Ok(())
    }

    fn loas_frame(
        &mut self,
        frame: &[u8],
        mut pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), TranscodeError> {
        self.latm_buf.clear();
        self.latm_payloads.clear();
        let config = match self
            .latm
            .parse_frame(frame, &mut self.latm_buf, &mut self.latm_payloads)
        {
            Ok(c) => c,
            Err(LatmError::Unsupported(reason)) => return Err(TranscodeError::Unsupported(reason)),
            Err(LatmError::NoConfig) => {
                // Wait for a StreamMuxConfig; nothing is known about this frame's length.
                self.stats.skipped_bytes += frame.len() as u64;
                return Ok(());
            }
            Err(LatmError::Invalid) => {
                self.stats.source_frames += 1;
                self.stats.decode_errors += 1;
                if let Some(config) = self.latm.config() {
                    self.pipeline.silence(
                        config.sample_rate,
                        config.frame_samples,
                        pts,
                        out,
                        &mut self.stats,
                    );
                }
                return Ok(());
            }
        };
        if let Some(reason) = config.unsupported() {
            return self.unsupported_frame(reason, out);
        }
        self.unsupported_run = 0;
        let payloads = std::mem::take(&mut self.latm_payloads);
        let buf = std::mem::take(&mut self.latm_buf);
        for range in &payloads {
            self.stats.source_frames += 1;
            self.aac_frame(config, &buf[range.clone()], true, pts.take(), out);
        }
        self.latm_payloads = payloads;
        self.latm_buf = buf;
        Ok(())
    }

    fn aac_frame(
        &mut self,
        config: AacConfig,
        raw: &[u8],
        decodable: bool,
        pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
    ) {
        let samples = config.frame_samples;
        let rate = config.sample_rate;
        if !self
            .pipeline
            .timing(rate, samples, pts, out, &mut self.stats)
        {
            return;
        }
        let key = DecoderKey::Aac {
            sample_rate: rate,
            channels: config.channels(),
        };
        let decoder = match self.decoder.take() {
            Some(d) if d.key == key => Some(d),
            _ => Decoder::aac(config),
        };
        self.decode(decoder, key, raw, decodable, rate, samples, out);
    }

    fn mpa_frame(
        &mut self,
        h: MpaHeader,
        frame: &[u8],
        pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), TranscodeError> {
        self.stats.source_frames += 1;
        if !self
            .pipeline
            .timing(h.sample_rate, h.samples, pts, out, &mut self.stats)
        {
            return Ok(());
        }
        let key = DecoderKey::Mpa {
            layer: h.layer,
            sample_rate: h.sample_rate,
            channels: h.channels,
        };
        let decoder = match self.decoder.take() {
            Some(d) if d.key == key => Some(d),
            _ => Decoder::mpa(h),
        };
        self.decode(decoder, key, frame, true, h.sample_rate, h.samples, out);
        Ok(())
    }

    /// Decodes one frame (or, if it cannot, counts it and uses silence of its length) and
    /// feeds the result on. The pipeline's timing has already accepted the frame.
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &mut self,
        decoder: Option<Decoder>,
        key: DecoderKey,
        data: &[u8],
        decodable: bool,
        rate: u32,
        samples: u32,
        out: &mut Vec<OpusFrame>,
    ) {
        let Some(mut decoder) = decoder else {
            self.stats.decode_errors += 1;
            self.pipeline.feed_silence(samples, out, &mut self.stats);
            return;
        };
        let packet = PacketRef::new(
            0,
            Timestamp::new(0),
            Duration::new(u64::from(samples)),
            data,
        );
        // symphonia is not fuzzed for us: a panic on hostile input is caught, counted as a
        // decode error, and the decoder re-created for the next frame.
        let inner = &mut decoder.inner;
        let decoded = if decodable {
            std::panic::catch_unwind(AssertUnwindSafe(move || {
                let inner = inner; // moved in: the buffer borrows the decoder, not the closure
                inner.decode_ref(&packet).ok()
            }))
        } else {
            Ok(None)
        };
        let panicked = decoded.is_err();
        match decoded {
            Ok(Some(buf)) if buf.frames() > 0 => {
                self.stats.decoded_frames += 1;
                let channels = buf.num_planes().min(255) as u8;
                self.format = Some(SourceFormat {
                    codec: key.name(),
                    sample_rate: rate,
                    channels,
                });
                self.pipeline.feed_decoded(&buf, out, &mut self.stats);
            }
            _ => {
                self.stats.decode_errors += 1;
                self.pipeline.feed_silence(samples, out, &mut self.stats);
            }
        }
        if !panicked {
            self.decoder = Some(decoder);
        }
    }
}

/// Which decoder instance fits a frame: a change re-creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecoderKey {
    Aac {
        sample_rate: u32,
        channels: u8,
    },
    Mpa {
        layer: u8,
        sample_rate: u32,
        channels: u8,
    },
}

impl DecoderKey {
    fn name(&self) -> &'static str {
        match self {
            Self::Aac { .. } => "AAC-LC",
            Self::Mpa { layer: 1, .. } => "MP1",
            Self::Mpa { layer: 2, .. } => "MP2",
            Self::Mpa { .. } => "MP3",
        }
    }
}

struct Decoder {
    key: DecoderKey,
    inner: Box<dyn AudioDecoder>,
}

impl Decoder {
    fn aac(config: AacConfig) -> Option<Self> {
        let mut params = AudioCodecParameters::new();
        params
            .for_codec(CODEC_ID_AAC)
            .with_sample_rate(config.sample_rate)
            .with_channels(if config.channel_config == 1 {
                CHANNEL_LAYOUT_MONO
            } else {
                CHANNEL_LAYOUT_STEREO
            });
        let inner = AacDecoder::try_new(&params, &AudioDecoderOptions::default()).ok()?;
        Some(Self {
            key: DecoderKey::Aac {
                sample_rate: config.sample_rate,
                channels: config.channels(),
            },
            inner: Box::new(inner),
        })
    }

    fn mpa(h: MpaHeader) -> Option<Self> {
        let mut params = AudioCodecParameters::new();
        params.for_codec(match h.layer {
            1 => CODEC_ID_MP1,
            2 => CODEC_ID_MP2,
            _ => CODEC_ID_MP3,
        });
        let inner = MpaDecoder::try_new(&params, &AudioDecoderOptions::default()).ok()?;
        Some(Self {
            key: DecoderKey::Mpa {
                layer: h.layer,
                sample_rate: h.sample_rate,
                channels: h.channels,
            },
            inner: Box::new(inner),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

#[derive(Clone, Copy, Debug)]
enum Header {
    Adts(AdtsHeader),
    Mpa(MpaHeader),
    Loas,
}

/// Cuts the byte stream into frames, across PES boundaries, resyncing after garbage.
struct Framer {
    codec: SourceCodec,
    buf: Vec<u8>,
    /// Consumed bytes at the front of `buf`.
    pos: usize,
    /// Where the newest PES payload starts in `buf`, and its PTS.
    mark: Option<(usize, u64)>,
    /// The previous frame ended where this one starts: trust a header without checking the
    /// next one.
    locked: bool,
}

impl Framer {
    fn new(codec: SourceCodec) -> Self {
        Self {
            codec,
            buf: Vec::new(),
            pos: 0,
            mark: None,
            locked: false,
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.mark = None;
        self.locked = false;
    }

    fn push(&mut self, data: &[u8], pts: Option<u64>, stats: &mut TranscodeStats) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.mark = self
                .mark
                .and_then(|(at, pts)| at.checked_sub(self.pos).map(|at| (at, pts)));
            self.pos = 0;
        }
        if self.buf.len() > MAX_PENDING {
            // Never found a frame in all this: drop it.
            stats.skipped_bytes += self.buf.len() as u64;
            self.clear();
        }
        if let Some(pts) = pts {
            self.mark = Some((self.buf.len(), pts));
        }
        self.buf.extend_from_slice(data);
    }

    fn min_header(&self) -> usize {
        match self.codec {
            SourceCodec::AacAdts => 7,
            SourceCodec::AacLatm => 3,
            SourceCodec::MpegAudio => 4,
        }
    }

    fn parse(&self, b: &[u8]) -> Option<(Header, usize)> {
        match self.codec {
            SourceCodec::AacAdts => aac::parse_adts(b).map(|h| (Header::Adts(h), h.frame_len)),
            SourceCodec::AacLatm => aac::loas_frame_len(b).map(|len| (Header::Loas, len)),
            SourceCodec::MpegAudio => mpa::parse_header(b).map(|h| (Header::Mpa(h), h.frame_len)),
        }
    }

    /// The next whole frame: its header, its bytes in `buf`, and the PTS if it is the first
    /// frame starting in a PES that had one.
    fn next(&mut self, stats: &mut TranscodeStats) -> Option<(Header, Range<usize>, Option<u64>)> {
        let min = self.min_header();
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() < min {
                return None;
            }
            match self.parse(rest) {
                Some((header, len)) if len <= rest.len() => {
                    // Out of sync, a header is believed only if another one follows it or
                    // it ends the data so far (PES payloads usually end on a frame).
                    let confirmed = self.locked
                        || rest.len() == len
                        || rest.len() - len < min
                        || self.parse(&rest[len..]).is_some();
                    if !confirmed {
                        self.skip(1, stats);
                        continue;
                    }
                    let start = self.pos;
                    self.pos += len;
                    self.locked = true;
                    let pts = match self.mark {
                        Some((at, pts)) if at <= start => {
                            self.mark = None;
                            Some(pts)
                        }
                        _ => None,
                    };
                    return Some((header, start..start + len, pts));
                }
                // A header whose frame is not complete yet: wait for more.
                Some(_) => return None,
                None => {
                    self.locked = false;
                    // Skip to the next byte that could start a header.
                    let sync = if self.codec == SourceCodec::AacLatm {
                        0x56
                    } else {
                        0xFF
                    };
                    let n = rest[1..]
                        .iter()
                        .position(|&b| b == sync)
                        .map_or(rest.len(), |i| i + 1);
                    self.skip(n, stats);
                }
            }
        }
    }

    fn skip(&mut self, n: usize, stats: &mut TranscodeStats) {
        self.pos += n;
        self.locked = false;
        stats.skipped_bytes += n as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// Timing, resampling, encoding

/// One stretch of continuous source time.
#[derive(Clone, Copy, Debug)]
struct Segment {
    /// 90 kHz time of the segment's first source sample (= resampled sample 0).
    anchor: u64,
    in_rate: u32,
    /// Source samples (per channel) fed since the anchor.
    in_samples: u64,
    /// Resampled samples still to be dropped (the encoder's lookahead).
    to_drop: usize,
    /// Opus frames emitted in this segment.
    frames: u64,
}

impl Segment {
    /// Where the next source sample should be on the 90 kHz timeline.
    fn expected_pts(&self) -> u64 {
        self.anchor + self.in_samples * 90_000 / u64::from(self.in_rate)
    }
}

struct Pipeline {
    config: TranscodeConfig,
    segment: Option<Segment>,
    resampler: Option<Resampler>,
    encoder: Option<Encoder>,
    /// Source audio of one frame, mixed to the encoder's channels, planar.
    planes: [Vec<f32>; 2],
    /// 48 kHz interleaved samples not yet encoded.
    pending: Vec<f32>,
}

impl Pipeline {
    fn new(config: TranscodeConfig) -> Self {
        Self {
            config,
            segment: None,
            resampler: None,
            encoder: None,
            planes: [Vec::new(), Vec::new()],
            pending: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.segment = None;
        self.resampler = None;
        self.pending.clear();
        if let Some(e) = &mut self.encoder {
            e.reset();
        }
    }

    /// Places the next source frame (`samples` at `rate`, with `pts` if one applies) on the
    /// timeline, re-anchoring if needed. `false`: no timeline yet (no PTS seen), drop it.
    fn timing(
        &mut self,
        rate: u32,
        samples: u32,
        pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
        stats: &mut TranscodeStats,
    ) -> bool {
        let new_anchor = match (&self.segment, pts) {
            (None, None) => {
                stats.frames_without_pts += 1;
                return false;
            }
            (None, Some(pts)) => Some(pts),
            (Some(seg), _) if seg.in_rate != rate => Some(pts.unwrap_or(seg.expected_pts())),
            (Some(seg), Some(pts)) => {
                // One source frame of slack: PTS are rounded to ticks, and a stray of less
                // than a frame is within the A/V sync promise anyway.
                let tolerance = (u64::from(samples) * 90_000 / u64::from(rate)).max(FRAME_TICKS);
                (pts.abs_diff(seg.expected_pts()) > tolerance).then_some(pts)
            }
            (Some(_), None) => None,
        };
        if let Some(anchor) = new_anchor {
            if self.segment.is_some() {
                stats.reanchors += 1;
                self.flush(out, stats);
            }
            self.start_segment(anchor, rate);
        }
        true
    }

    fn start_segment(&mut self, anchor: u64, rate: u32) {
        let lookahead = self.encoder.as_ref().map_or(0, |e| e.lookahead);
        self.segment = Some(Segment {
            anchor,
            in_rate: rate,
            in_samples: 0,
            to_drop: lookahead,
            frames: 0,
        });
        self.resampler = None;
        self.pending.clear();
    }

    /// Completes the segment's last frame with silence and emits it, then forgets the segment.
    fn flush(&mut self, out: &mut Vec<OpusFrame>, stats: &mut TranscodeStats) {
        let Some(seg) = self.segment else {
            return;
        };
        if let Some(resampler) = &mut self.resampler {
            let mut tail = Vec::new();
            resampler.flush(&mut tail);
            self.append(&tail, out, stats);
        }
        // Frames up to the last output sample that carries source audio.
        let real = (seg.in_samples * u64::from(OPUS_RATE)).div_ceil(u64::from(seg.in_rate));
        if let (Some(encoder), Some(seg)) = (&mut self.encoder, &mut self.segment) {
            let frame_len = FRAME_SAMPLES as usize * encoder.channels;
            while seg.frames * u64::from(FRAME_SAMPLES) < real {
                if self.pending.len() < frame_len {
                    self.pending.resize(frame_len, 0.0);
                }
                encode_one(encoder, seg, &mut self.pending, out, stats);
            }
            encoder.reset();
        }
        self.segment = None;
        self.resampler = None;
        self.pending.clear();
    }

    fn encoder_channels(&mut self, source_channels: usize) -> usize {
        let config = self.config;
        let encoder = self.encoder.get_or_insert_with(|| {
            let channels = source_channels.clamp(1, 2);
            Encoder::new(channels, config)
        });
        if let Some(seg) = &mut self.segment {
            if seg.in_samples == 0 && seg.frames == 0 {
                // The first frame of the stream created the encoder: its lookahead is known now.
                seg.to_drop = encoder.lookahead;
            }
        }
        encoder.channels
    }

    fn feed_decoded(
        &mut self,
        buf: &GenericAudioBufferRef<'_>,
        out: &mut Vec<OpusFrame>,
        stats: &mut TranscodeStats,
    ) {
        let frames = buf.frames();
        let channels = self.encoder_channels(buf.num_planes());
        let [left, right] = &mut self.planes;
        left.clear();
        right.clear();
        match buf {
            GenericAudioBufferRef::F32(b) => {
                let mut source: [&[f32]; MAX_SOURCE_CHANNELS] = [&[]; MAX_SOURCE_CHANNELS];
                let n = b.num_planes().min(MAX_SOURCE_CHANNELS);
                for (i, s) in source.iter_mut().enumerate().take(n) {
                    *s = b.plane(i).unwrap_or(&[]);
                }
                mix(&source[..n], channels, left, right, frames);
            }
            other => {
                // Not what symphonia's AAC and MPEG decoders produce: convert, allocating.
                let mut planes: Vec<Vec<f32>> = Vec::new();
                other.copy_to_vecs_planar::<f32>(&mut planes);
                let source: Vec<&[f32]> = planes.iter().map(|p| p.as_slice()).collect();
                mix(&source, channels, left, right, frames);
            }
        }
        self.feed_planes(frames, out, stats);
    }

    /// Silence for a frame that could not be decoded, so the sample clock stays right.
    fn feed_silence(&mut self, samples: u32, out: &mut Vec<OpusFrame>, stats: &mut TranscodeStats) {
        let Some(encoder) = &self.encoder else {
            // Nothing decoded yet: no channel count, and nothing to keep continuous. Time
            // still passes.
            if let Some(seg) = &mut self.segment {
                seg.in_samples += u64::from(samples);
                seg.anchor_shift_if_empty();
            }
            return;
        };
        let channels = encoder.channels;
        let n = samples as usize;
        for (i, p) in self.planes.iter_mut().enumerate() {
            p.clear();
            if i < channels {
                p.resize(n, 0.0);
            }
        }
        self.feed_planes(n, out, stats);
    }

    /// A frame that failed before the decoder (e.g. a broken LATM frame): place it, then
    /// silence.
    fn silence(
        &mut self,
        rate: u32,
        samples: u32,
        pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
        stats: &mut TranscodeStats,
    ) {
        if self.timing(rate, samples, pts, out, stats) {
            self.feed_silence(samples, out, stats);
        }
    }

    fn feed_planes(&mut self, frames: usize, out: &mut Vec<OpusFrame>, stats: &mut TranscodeStats) {
        let (Some(seg), Some(encoder)) = (&mut self.segment, &self.encoder) else {
            return;
        };
        seg.in_samples += frames as u64;
        let rate = seg.in_rate;
        let channels = encoder.channels;
        let resampler = self
            .resampler
            .get_or_insert_with(|| Resampler::new(rate, OPUS_RATE, channels));
        let mut resampled = std::mem::take(&mut resampler.out);
        resampled.clear();
        resampler.process(&self.planes[..channels], &mut resampled);
        self.append(&resampled, out, stats);
        if let Some(r) = &mut self.resampler {
            r.out = resampled;
        }
    }

    /// Appends 48 kHz interleaved samples (after the segment's lookahead drop) and encodes
    /// every whole frame.
    fn append(&mut self, samples: &[f32], out: &mut Vec<OpusFrame>, stats: &mut TranscodeStats) {
        let (Some(seg), Some(encoder)) = (&mut self.segment, &mut self.encoder) else {
            return;
        };
        let ch = encoder.channels;
        let drop = seg.to_drop.min(samples.len() / ch);
        seg.to_drop -= drop;
        self.pending.extend_from_slice(&samples[drop * ch..]);
        let frame_len = FRAME_SAMPLES as usize * ch;
        while self.pending.len() >= frame_len {
            encode_one(encoder, seg, &mut self.pending, out, stats);
        }
    }
}

impl Segment {
    /// Before anything decoded the segment has no audio yet: keep its anchor on the first
    /// audio that will come, so the first Opus frame starts where audio starts.
    fn anchor_shift_if_empty(&mut self) {
        if self.frames == 0 {
            self.anchor = self.expected_pts();
            self.in_samples = 0;
        }
    }
}

/// Encodes the first frame of `pending` (which holds at least one) and removes it.
fn encode_one(
    encoder: &mut Encoder,
    seg: &mut Segment,
    pending: &mut Vec<f32>,
    out: &mut Vec<OpusFrame>,
    stats: &mut TranscodeStats,
) {
    let frame_len = FRAME_SAMPLES as usize * encoder.channels;
    let pts_90k = seg.anchor + seg.frames * FRAME_TICKS;
    seg.frames += 1;
    match encoder.encode(&mut pending[..frame_len]) {
        Some(data) => {
            stats.encoded_frames += 1;
            out.push(OpusFrame {
                data,
                pts_90k,
                samples: FRAME_SAMPLES,
            });
        }
        None => stats.encode_errors += 1,
    }
    pending.drain(..frame_len);
}

/// Mixes source planes to 1 or 2 output planes: mono is duplicated, stereo averaged for
/// mono, more channels downmixed (front pair plus the rest at -3 dB each side).
fn mix(
    source: &[&[f32]],
    channels: usize,
    left: &mut Vec<f32>,
    right: &mut Vec<f32>,
    frames: usize,
) {
    let get = |i: usize| -> &[f32] { source.get(i).map_or(&[][..], |p| &p[..frames.min(p.len())]) };
    let at = |p: &[f32], i: usize| p.get(i).copied().unwrap_or(0.0);
    match (source.len(), channels) {
        (0, _) => {
            left.resize(frames, 0.0);
            if channels == 2 {
                right.resize(frames, 0.0);
            }
        }
        (1, 1) => left.extend_from_slice(get(0)),
        (1, _) => {
            left.extend_from_slice(get(0));
            right.extend_from_slice(get(0));
        }
        (2, 1) => {
            let (l, r) = (get(0), get(1));
            left.extend((0..frames).map(|i| 0.5 * (at(l, i) + at(r, i))));
        }
        (2, _) => {
            left.extend_from_slice(get(0));
            right.extend_from_slice(get(1));
        }
        (n, _) => {
            // Front left/right, then every other channel shared by both sides at -3 dB.
            let scale = 1.0 / (1.0 + 0.707 * (n - 2) as f32);
            for i in 0..frames {
                let rest: f32 = (2..n).map(|c| at(get(c), i)).sum::<f32>() * 0.707;
                let l = (at(get(0), i) + rest) * scale;
                let r = (at(get(1), i) + rest) * scale;
                if channels == 1 {
                    left.push(0.5 * (l + r));
                } else {
                    left.push(l);
                    right.push(r);
                }
            }
        }
    }
    // Planes shorter than `frames` (never from symphonia): pad so the clock stays right.
    left.resize(frames, 0.0);
    if channels == 2 {
        right.resize(frames, 0.0);
    }
}

/// The Opus encoder (mousiki, a port of libopus), 48 kHz, 20 ms frames.
struct Encoder {
    inner: mousiki::Encoder,
    channels: usize,
    /// Samples of lookahead (libopus OPUS_GET_LOOKAHEAD: 2.5 ms + 4 ms for the Audio
    /// application = 312).
    lookahead: usize,
    packet: Vec<u8>,
    config: TranscodeConfig,
}

impl Encoder {
    fn new(channels: usize, config: TranscodeConfig) -> Self {
        use mousiki::c_style_api::opus_encoder::{opus_encoder_ctl, OpusEncoderCtlRequest};
        let bitrate = if channels == 1 {
            config.mono_bitrate
        } else {
            config.stereo_bitrate
        };
        let build = |complexity: i32, bitrate: i32| {
            mousiki::Encoder::builder(
                OPUS_RATE,
                if channels == 1 {
                    mousiki::Channels::Mono
                } else {
                    mousiki::Channels::Stereo
                },
                mousiki::Application::Audio,
            )
            .bitrate(mousiki::Bitrate::Bits(bitrate))
            .complexity(complexity)
            .build()
        };
        let complexity = i32::from(config.complexity.min(10));
        let bitrate = i32::try_from(bitrate.clamp(6_000, 510_000)).unwrap_or(96_000);
        // The arguments are in range, so building cannot fail; the defaults are the fallback.
        let mut inner = build(complexity, bitrate)
            .or_else(|_| build(5, 96_000))
            .expect("the Opus encoder builds with default settings");
        let mut lookahead = 0i32;
        if opus_encoder_ctl(
            inner.as_raw_mut(),
            OpusEncoderCtlRequest::GetLookahead(&mut lookahead),
        )
        .is_err()
        {
            lookahead = 312;
        }
        Self {
            inner,
            channels,
            lookahead: usize::try_from(lookahead).unwrap_or(312),
            packet: vec![0; MAX_PACKET],
            config,
        }
    }

    /// Encodes one frame of interleaved samples (clamped to ±1, NaN as 0, in place).
    fn encode(&mut self, pcm: &mut [f32]) -> Option<Bytes> {
        for v in pcm.iter_mut() {
            *v = if v.is_nan() { 0.0 } else { v.clamp(-1.0, 1.0) };
        }
        // A panic inside the encoder (a dependency bug) must not take the stream task down:
        // the frame is lost and the encoder rebuilt.
        let (inner, packet) = (&mut self.inner, &mut self.packet);
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.encode_float(pcm, packet))) {
            Ok(Ok(len)) => Some(Bytes::copy_from_slice(&self.packet[..len])),
            Ok(Err(_)) => None,
            Err(_) => {
                *self = Self::new(self.channels, self.config);
                None
            }
        }
    }

    fn reset(&mut self) {
        // Resetting a valid encoder does not fail.
        let _ = self.inner.reset_state();
    }
}

/// Rational-ratio polyphase resampler with a Kaiser-windowed sinc, zero phase: output sample
/// `n` is the input signal at input position `n * in_rate / out_rate` exactly (it is produced
/// once `HALF` input samples past that position have arrived). Planar in, interleaved out.
struct Resampler {
    channels: usize,
    /// out_rate / in_rate = up / down, reduced.
    up: u64,
    down: u64,
    /// Half the filter length in input samples; 0 = pass-through.
    half: usize,
    /// `up` phases of `2 * half` taps.
    table: Vec<f32>,
    /// Input history per channel; index 0 is input sample `hist_start`.
    hist: [Vec<f32>; 2],
    hist_start: i64,
    /// The next output's input position: `base + phase / up`.
    base: i64,
    phase: u64,
    /// Reusable output buffer for the caller.
    out: Vec<f32>,
}

/// Half-length of the filter for upsampling, in input samples (48 taps).
const RESAMPLER_HALF: usize = 24;
/// Kaiser window beta (about 80 dB stop band).
const KAISER_BETA: f64 = 8.0;
/// Largest number of phases (up factor) the table is built for.
const MAX_PHASES: u64 = 4096;

impl Resampler {
    fn new(in_rate: u32, out_rate: u32, channels: usize) -> Self {
        let g = gcd(u64::from(in_rate), u64::from(out_rate)).max(1);
        let (mut up, mut down) = (u64::from(out_rate) / g, u64::from(in_rate) / g);
        if up > MAX_PHASES {
            // An odd explicit rate: round it to the nearest 1/MAX_PHASES step. The error is
            // below 0.03 %, well inside the one-frame sync tolerance before re-anchoring.
            down = (down * MAX_PHASES).div_ceil(up).max(1);
            up = MAX_PHASES;
        }
        let mut r = Self {
            channels: channels.clamp(1, 2),
            up,
            down,
            half: 0,
            table: Vec::new(),
            hist: [Vec::new(), Vec::new()],
            hist_start: 0,
            base: 0,
            phase: 0,
            out: Vec::new(),
        };
        if up == down {
            return r;
        }
        let ratio = up as f64 / down as f64;
        // Cut-off in cycles per input sample: below the lower Nyquist, with room for the
        // transition band.
        let cutoff = 0.5 * ratio.min(1.0) * 0.91;
        let half = ((RESAMPLER_HALF as f64) / ratio.min(1.0)).ceil() as usize;
        let taps = 2 * half;
        let i0_beta = bessel_i0(KAISER_BETA);
        let mut table = Vec::with_capacity(up as usize * taps);
        for p in 0..up {
            let start = table.len();
            for k in 0..taps {
                // Input sample `base - half + 1 + k` against output position `base + p/up`.
                let d = (k as f64 - (half as f64 - 1.0)) - p as f64 / up as f64;
                let x = d / half as f64;
                let w = if x.abs() >= 1.0 {
                    0.0
                } else {
                    bessel_i0(KAISER_BETA * (1.0 - x * x).sqrt()) / i0_beta
                };
                let s = 2.0 * cutoff * sinc(2.0 * cutoff * d);
                table.push((s * w) as f32);
            }
            // Unity gain at DC for every phase.
            let sum: f32 = table[start..].iter().sum();
            if sum != 0.0 {
                table[start..].iter_mut().for_each(|t| *t /= sum);
            }
        }
        r.half = half;
        r.table = table;
        r.hist_start = -(half as i64 - 1);
        for h in &mut r.hist {
            h.resize(half - 1, 0.0);
        }
        r
    }

    /// `planes` (one per channel, equal lengths) in, interleaved output appended to `out`.
    fn process(&mut self, planes: &[Vec<f32>], out: &mut Vec<f32>) {
        let ch = self.channels;
        if self.half == 0 {
            let n = planes.first().map_or(0, Vec::len);
            out.reserve(n * ch);
            for i in 0..n {
                for p in &planes[..ch.min(planes.len())] {
                    out.push(p.get(i).copied().unwrap_or(0.0));
                }
            }
            return;
        }
        for (c, h) in self.hist.iter_mut().enumerate().take(ch) {
            if let Some(p) = planes.get(c) {
                h.extend_from_slice(p);
            }
        }
        // Both channels' histories have the same length (planes of one frame are equal).
        let len = self.hist[0].len();
        if ch == 2 && self.hist[1].len() != len {
            self.hist[1].resize(len, 0.0);
        }
        let taps = 2 * self.half;
        let hist_end = self.hist_start + len as i64;
        loop {
            let first = self.base - (self.half as i64 - 1);
            if self.base + self.half as i64 >= hist_end {
                break;
            }
            let off = (first - self.hist_start) as usize;
            let coefs = &self.table[self.phase as usize * taps..][..taps];
            for h in &self.hist[..ch] {
                out.push(dot(&h[off..off + taps], coefs));
            }
            self.phase += self.down;
            self.base += (self.phase / self.up) as i64;
            self.phase %= self.up;
        }
        // Forget input no later output needs.
        let keep_from = self.base - (self.half as i64 - 1);
        let drop = (keep_from - self.hist_start).max(0) as usize;
        if drop > 4096 {
            for h in &mut self.hist[..ch] {
                h.drain(..drop.min(h.len()));
            }
            self.hist_start += drop as i64;
        }
    }

    /// Pushes the filter's lookahead of silence so the output covers all input so far.
    fn flush(&mut self, out: &mut Vec<f32>) {
        let zeros = vec![0.0; self.half];
        let planes = [zeros.clone(), zeros];
        self.process(&planes[..self.channels], out);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four partial sums let the compiler vectorise.
    let mut acc = [0.0f32; 4];
    let (ca, ra) = a.split_at(a.len() / 4 * 4);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(4).zip(cb.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-9 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..50 {
        term *= half / k as f64;
        sum += term * term;
        if term * term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
#[path = "../../tests/common/tone.rs"]
mod tone;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::tone::{dominant_frequency, rms};
    use super::*;
    use crate::time::Timeline;
    use crate::ts::{DemuxEvent, Demuxer};

    fn read(name: &str) -> Option<Vec<u8>> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        let data = std::fs::read(&path).ok();
        if data.is_none() {
            eprintln!("skipping: {} not found", path.display());
        }
        data
    }

    /// A PES payload and its PTS on the unwrapped timeline.
    struct AudioPes {
        data: Vec<u8>,
        pts: Option<u64>,
    }

    /// The transcodable audio track of a TS file, as the media task gets it: the project's
    /// `Demuxer` with transcodable audio on, PTS through a `Timeline` (so the first maps to 0).
    fn audio_track(data: &[u8]) -> (SourceCodec, Vec<AudioPes>) {
        let mut demuxer = Demuxer::new();
        demuxer.set_transcodable_audio(true);
        let mut events = Vec::new();
        demuxer.push(data, &mut events);
        demuxer.flush(&mut events);
        let tracks = demuxer.tracks().expect("a PMT");
        let pid = crate::ts::transcodable_audio(tracks).expect("an AAC or MPEG audio track");
        let codec = tracks
            .tracks
            .iter()
            .find(|t| t.pid == pid)
            .and_then(|t| SourceCodec::from_stream_type(t.stream_type))
            .expect("a transcodable codec");
        let mut timeline = Timeline::new();
        let out = events
            .into_iter()
            .filter_map(|e| match e {
                DemuxEvent::Pes(p) if p.pid == pid => Some(AudioPes {
                    data: p.data.to_vec(),
                    pts: p.pts.map(|pts| timeline.map(pts, 1920)),
                }),
                _ => None,
            })
            .collect();
        (codec, out)
    }

    fn transcode_all(t: &mut Transcoder, pes: &[AudioPes]) -> Vec<OpusFrame> {
        let mut out = Vec::new();
        for p in pes {
            t.push(&p.data, p.pts, &mut out).expect("supported");
        }
        t.flush(&mut out);
        out
    }

    /// Decodes with the same crate's decoder (a libopus port); interleaved f32.
    fn decode(frames: &[OpusFrame], channels: usize) -> Vec<f32> {
        let ch = if channels == 1 {
            mousiki::Channels::Mono
        } else {
            mousiki::Channels::Stereo
        };
        let mut decoder = mousiki::Decoder::new(OPUS_RATE, ch).unwrap();
        let mut pcm = vec![0.0f32; 5760 * channels];
        let mut all = Vec::new();
        for f in frames {
            let n = decoder.decode_float(&f.data, &mut pcm, false).unwrap();
            assert_eq!(n, FRAME_SAMPLES as usize);
            all.extend_from_slice(&pcm[..n * channels]);
        }
        all
    }

    fn channel(pcm: &[f32], channels: usize, c: usize) -> Vec<f32> {
        pcm.iter().skip(c).step_by(channels).copied().collect()
    }

    /// Frames are 960 samples, 1800 ticks apart without a gap, from the first PTS.
    fn check_timestamps(frames: &[OpusFrame], first_pts: u64) {
        assert!(frames.iter().all(|f| f.samples == FRAME_SAMPLES));
        assert_eq!(frames[0].pts_90k, first_pts);
        for w in frames.windows(2) {
            assert_eq!(w[1].pts_90k - w[0].pts_90k, FRAME_TICKS);
        }
    }

    /// Decodes, checks loudness and pitch on every channel (skipping the first 100 ms).
    fn check_tone(frames: &[OpusFrame], channels: usize, tone: f32) {
        let pcm = decode(frames, channels);
        for c in 0..channels {
            let x = channel(&pcm, channels, c);
            let x = &x[4800..x.len() - 4800];
            let level = rms(x);
            assert!(level > 0.05, "channel {c} is silent: rms {level}");
            let f = dominant_frequency(&x[..x.len().min(48_000)], OPUS_RATE as f32);
            assert!(
                (f - tone).abs() <= tone * 0.02,
                "channel {c}: dominant {f} Hz, expected {tone} Hz"
            );
        }
    }

    fn run_file(name: &str, codec: SourceCodec, channels: u8, tone: f32) -> Option<Transcoder> {
        let data = read(name)?;
        let (found, pes) = audio_track(&data);
        assert_eq!(found, codec);
        let mut t = Transcoder::new(codec);
        let frames = transcode_all(&mut t, &pes);
        dump_ogg(name, &frames, channels);
        assert_eq!(t.channels(), Some(channels));
        check_timestamps(&frames, pes[0].pts.unwrap());
        check_tone(&frames, usize::from(channels), tone);
        let s = t.stats();
        assert_eq!(s.decode_errors, 0);
        assert_eq!(s.skipped_bytes, 0);
        assert_eq!(s.reanchors, 0);
        assert_eq!(s.encoded_frames, frames.len() as u64);
        // Every source sample is covered, and no more than one frame beyond.
        let format = t.source_format().unwrap();
        let source_ticks = s.decoded_frames
            * u64::from(match format.codec {
                "MP2" => 1152u32,
                _ => 1024,
            })
            * 90_000
            / u64::from(format.sample_rate);
        let opus_ticks = frames.len() as u64 * FRAME_TICKS;
        assert!(opus_ticks >= source_ticks && opus_ticks < source_ticks + FRAME_TICKS);
        Some(t)
    }

    #[test]
    fn aac_stereo_48k_becomes_stereo_opus_at_440hz() {
        let Some(t) = run_file("h264_aac.ts", SourceCodec::AacAdts, 2, 440.0) else {
            return;
        };
        assert_eq!(
            t.source_format(),
            Some(SourceFormat {
                codec: "AAC-LC",
                sample_rate: 48_000,
                channels: 2
            })
        );
        assert_eq!(t.stats().decoded_frames, 189);
    }

    #[test]
    fn aac_mono_44k_becomes_mono_opus_at_1khz() {
        let Some(t) = run_file("h264_aac_mono44.ts", SourceCodec::AacAdts, 1, 1000.0) else {
            return;
        };
        assert_eq!(t.source_format().unwrap().sample_rate, 44_100);
    }

    #[test]
    fn mp2_stereo_44k_becomes_stereo_opus_at_660hz() {
        let Some(t) = run_file("h264_mp2.ts", SourceCodec::MpegAudio, 2, 660.0) else {
            return;
        };
        assert_eq!(t.source_format().unwrap().codec, "MP2");
    }

    #[test]
    fn aac_latm_becomes_stereo_opus_at_880hz() {
        run_file("aac_latm.ts", SourceCodec::AacLatm, 2, 880.0);
    }

    /// The decoder's output sample k of a frame is the source at `pts + k / 48000`: encoder
    /// lookahead and resampler delay are compensated (checked by cross-correlation with the
    /// ideal signal, for a resampled and a 48 kHz source).
    #[test]
    fn decoded_output_lines_up_with_source_time() {
        for rate in [48_000u32, 44_100, 32_000] {
            let anchor = 90_000u64;
            // A 200 ms burst of 40 tones (100 Hz to 8 kHz, fixed pseudo-random phases) in a Hann
            // envelope, starting 100 ms in: its autocorrelation has one sharp peak.
            let tones: Vec<(f64, f64)> = (0..40u32)
                .map(|i| {
                    let h = i.wrapping_mul(2_654_435_761) >> 8;
                    (100.0 + 197.3 * f64::from(i), f64::from(h % 6283) / 1000.0)
                })
                .collect();
            let signal = |t: f64| -> f32 {
                let (start, len) = (0.1, 0.2);
                if !(start..start + len).contains(&t) {
                    return 0.0;
                }
                let pi2 = 2.0 * std::f64::consts::PI;
                let env = 0.5 - 0.5 * (pi2 * (t - start) / len).cos();
                let sum: f64 = tones.iter().map(|(f, ph)| (pi2 * f * t + ph).sin()).sum();
                (env * sum * 0.02) as f32
            };
            let mut p = Pipeline::new(TranscodeConfig::default());
            let mut out = Vec::new();
            let mut stats = TranscodeStats::default();
            let frame = 1024usize;
            let total = rate as usize / 2; // 500 ms
            for (i, start) in (0..total).step_by(frame).enumerate() {
                let pts = anchor + start as u64 * 90_000 / u64::from(rate);
                assert!(p.timing(rate, frame as u32, Some(pts), &mut out, &mut stats));
                p.encoder_channels(1);
                p.planes[0].clear();
                p.planes[0]
                    .extend((start..start + frame).map(|n| signal(n as f64 / f64::from(rate))));
                p.feed_planes(frame, &mut out, &mut stats);
                assert_eq!(stats.reanchors, 0, "frame {i}");
            }
            p.flush(&mut out, &mut stats);
            check_timestamps(&out, anchor);
            let decoded = decode(&out, 1);
            let ideal: Vec<f32> = (0..decoded.len())
                .map(|n| signal(n as f64 / f64::from(OPUS_RATE)))
                .collect();
            let lag = (-200i32..=200)
                .map(|lag| {
                    let c: f32 = (4800..decoded.len() - 4800)
                        .map(|n| decoded[n] * ideal[(n as i32 + lag) as usize])
                        .sum();
                    (lag, c)
                })
                .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a })
                .0;
            assert!(
                lag.abs() <= 1,
                "{rate} Hz: decoded output is {lag} samples off"
            );
        }
    }

    #[test]
    fn pts_jump_reanchors_at_the_new_pts() {
        let Some(data) = read("h264_aac.ts") else {
            return;
        };
        let (codec, mut pes) = audio_track(&data);
        // Forward by 10 s from PES 6, then backwards by 20 s from PES 12.
        let (jump, back) = (6, 12);
        for p in &mut pes[jump..] {
            p.pts = p.pts.map(|t| t + 900_000);
        }
        for p in &mut pes[back..] {
            p.pts = p.pts.map(|t| t + 100_000_000 - 1_800_000);
        }
        let mut t = Transcoder::new(codec);
        let frames = transcode_all(&mut t, &pes);
        assert_eq!(t.stats().reanchors, 2);
        let starts: Vec<usize> = (1..frames.len())
            .filter(|&i| frames[i].pts_90k != frames[i - 1].pts_90k + FRAME_TICKS)
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(frames[starts[0]].pts_90k, pes[jump].pts.unwrap());
        assert_eq!(frames[starts[1]].pts_90k, pes[back].pts.unwrap());
        // The segment before each jump ended with its last partial frame, not earlier.
        let end = |i: usize| frames[i - 1].pts_90k + FRAME_TICKS;
        assert!(end(starts[0]) >= pes[jump].pts.unwrap() - 900_000);
        assert!(end(starts[0]) < pes[jump].pts.unwrap() - 900_000 + FRAME_TICKS);
        check_tone(&frames[starts[0]..starts[1]], 2, 440.0);
    }

    #[test]
    fn pts_jitter_under_a_frame_does_not_reanchor() {
        let Some(data) = read("h264_mp2.ts") else {
            return;
        };
        let (codec, mut pes) = audio_track(&data);
        let first = pes[0].pts.unwrap();
        for (i, p) in pes.iter_mut().enumerate().skip(1) {
            p.pts = p.pts.map(|t| if i % 2 == 0 { t + 900 } else { t - 900 });
        }
        let mut t = Transcoder::new(codec);
        let frames = transcode_all(&mut t, &pes);
        assert_eq!(t.stats().reanchors, 0);
        check_timestamps(&frames, first);
    }

    #[test]
    fn payload_split_anywhere_gives_the_same_frames() {
        let Some(data) = read("h264_aac_mono44.ts") else {
            return;
        };
        let (codec, pes) = audio_track(&data);
        let mut whole = Transcoder::new(codec);
        let expected = transcode_all(&mut whole, &pes);
        // The same bytes in odd-sized pieces; each PTS stays with the piece its PES starts in.
        let mut split = Transcoder::new(codec);
        let mut out = Vec::new();
        for p in &pes {
            for (i, piece) in p.data.chunks(97).enumerate() {
                split
                    .push(piece, if i == 0 { p.pts } else { None }, &mut out)
                    .unwrap();
            }
        }
        split.flush(&mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn garbage_never_panics_and_is_counted() {
        let mut x = 0x1234_5678u32;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for codec in [
            SourceCodec::AacAdts,
            SourceCodec::AacLatm,
            SourceCodec::MpegAudio,
        ] {
            let mut t = Transcoder::new(codec);
            let mut out = Vec::new();
            for i in 0..300u64 {
                let len = (rand() % 2000) as usize;
                let mut payload: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                // Plenty of sync-looking bytes.
                for _ in 0..len / 16 {
                    let at = rand() as usize % len.max(1);
                    if let Some(b) = payload.get_mut(at) {
                        *b = if rand() % 2 == 0 { 0xFF } else { 0x56 };
                    }
                }
                let pts = (i % 3 != 0).then_some(i * 1920);
                match t.push(&payload, pts, &mut out) {
                    Ok(()) => {}
                    // Random headers may well claim HE-AAC or a PCE: fine, start again.
                    Err(TranscodeError::Unsupported(_)) => t.reset(),
                }
            }
            t.flush(&mut out);
            let s = t.stats();
            assert!(s.skipped_bytes > 0, "{codec:?}: {s:?}");
        }
    }

    #[test]
    fn corrupt_frames_become_counted_silence_and_time_goes_on() {
        for name in ["h264_aac.ts", "h264_mp2.ts"] {
            let Some(data) = read(name) else {
                return;
            };
            let (codec, mut pes) = audio_track(&data);
            // Scramble the bodies of all frames of PES 4 (headers intact, so framing holds).
            let p = &mut pes[4].data;
            let mut at = 0;
            while at + 7 < p.len() {
                let len = match codec {
                    SourceCodec::AacAdts => aac::parse_adts(&p[at..]).unwrap().frame_len,
                    _ => mpa::parse_header(&p[at..]).unwrap().frame_len,
                };
                let end = (at + len).min(p.len());
                for (i, b) in p[at + 9..end].iter_mut().enumerate() {
                    *b ^= (i as u8).wrapping_mul(37) | 0x11;
                }
                at += len;
            }
            let mut t = Transcoder::new(codec);
            let frames = transcode_all(&mut t, &pes);
            let s = t.stats();
            assert!(s.decode_errors > 0, "{name}: {s:?}");
            assert_eq!(s.reanchors, 0, "{name}");
            assert_eq!(
                s.decode_errors + s.decoded_frames,
                s.source_frames,
                "{name}"
            );
            check_timestamps(&frames, pes[0].pts.unwrap());
        }
    }

    #[test]
    fn frames_before_the_first_pts_are_dropped() {
        let Some(data) = read("h264_aac.ts") else {
            return;
        };
        let (codec, pes) = audio_track(&data);
        let mut t = Transcoder::new(codec);
        let mut out = Vec::new();
        t.push(&pes[0].data, None, &mut out).unwrap();
        assert!(out.is_empty());
        let dropped = t.stats().frames_without_pts;
        assert!(dropped > 0);
        for p in &pes[1..] {
            t.push(&p.data, p.pts, &mut out).unwrap();
        }
        check_timestamps(&out, pes[1].pts.unwrap());
    }

    #[test]
    fn reset_starts_again_at_the_next_pts() {
        let Some(data) = read("h264_aac.ts") else {
            return;
        };
        let (codec, pes) = audio_track(&data);
        let mut t = Transcoder::new(codec);
        let first = transcode_all(&mut t, &pes[..5]);
        t.reset();
        let again = transcode_all(&mut t, &pes);
        assert_eq!(t.channels(), Some(2));
        check_timestamps(&first, pes[0].pts.unwrap());
        check_timestamps(&again, pes[0].pts.unwrap());
    }

    /// Writes bits MSB first (for hand-made LATM headers).
    struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        fn put(&mut self, n: u32, v: u32) {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                let last = self.bytes.len() - 1;
                self.bytes[last] |= bit << (7 - self.bits % 8);
                self.bits += 1;
            }
        }
    }

    /// A LOAS frame with a StreamMuxConfig (audioMuxVersion 0) around `asc` bits and one
    /// payload.
    fn loas_frame(asc: &[(u32, u32)], payload: &[u8]) -> Vec<u8> {
        let mut w = BitWriter {
            bytes: Vec::new(),
            bits: 0,
        };
        w.put(1, 0); // useSameStreamMux
        w.put(1, 0); // audioMuxVersion
        w.put(1, 1); // allStreamsSameTimeFraming
        w.put(6, 0); // numSubFrames
        w.put(4, 0); // numProgram
        w.put(3, 0); // numLayer
        for &(n, v) in asc {
            w.put(n, v);
        }
        w.put(3, 0); // frameLengthType
        w.put(8, 0xFF); // latmBufferFullness
        w.put(1, 0); // otherDataPresent
        w.put(1, 0); // crcCheckPresent
        w.put(8, payload.len() as u32);
        for &b in payload {
            w.put(8, u32::from(b));
        }
        let len = w.bytes.len();
        let mut frame = vec![0x56, 0xE0 | (len >> 8) as u8, len as u8];
        frame.extend_from_slice(&w.bytes);
        frame
    }

    #[test]
    fn he_aac_is_unsupported_with_a_reason() {
        // Explicit SBR: AOT 5, 24 kHz core, stereo, 48 kHz extension, AOT 2, GA flags.
        let he = [(5, 5), (4, 6), (4, 2), (4, 3), (5, 2), (3, 0)];
        let frame = loas_frame(&he, &[0x21, 0x00, 0x49, 0x90, 0x02, 0x19, 0x00, 0x23, 0x80]);
        let mut t = Transcoder::new(SourceCodec::AacLatm);
        let mut out = Vec::new();
        // Declared after UNSUPPORTED_AFTER frames in a row (one might be a corrupt header).
        let mut pts = 0;
        let mut push = |t: &mut Transcoder, data: &[u8]| {
            pts += 1920;
            t.push(data, Some(pts), &mut out)
        };
        for _ in 1..UNSUPPORTED_AFTER {
            push(&mut t, &frame).unwrap();
        }
        let err = push(&mut t, &frame).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported: HE-AAC (SBR/PS) is not supported by the AAC decoder"
        );
        // Sticky: the caller lists the track as unsupported and stops feeding it.
        assert!(push(&mut t, &frame).is_err());
        // A plain AAC-LC config is fine.
        let lc = [(5, 2), (4, 3), (4, 2), (3, 0)];
        let mut t = Transcoder::new(SourceCodec::AacLatm);
        let lc_frame = loas_frame(&lc, &[0x21, 0x00]);
        for _ in 0..2 * UNSUPPORTED_AFTER {
            push(&mut t, &lc_frame).unwrap();
        }
        // ADTS: the Main profile is not decodable either.
        let mut t = Transcoder::new(SourceCodec::AacAdts);
        let adts = [0xFF, 0xF1, 3 << 2, 2 << 6, 0x01, 0x1F, 0xFC, 0x00];
        let results: Vec<_> = (0..UNSUPPORTED_AFTER)
            .map(|_| push(&mut t, &adts))
            .collect();
        let err = results.last().unwrap().clone().unwrap_err();
        assert!(err.to_string().contains("Main"), "{err}");
    }

    #[test]
    fn one_corrupt_header_does_not_condemn_the_stream() {
        let Some(data) = read("h264_aac.ts") else {
            return;
        };
        let (codec, mut pes) = audio_track(&data);
        // The second ADTS frame of PES 3 claims the Main profile.
        let p = &mut pes[3].data;
        let second = aac::parse_adts(p).unwrap().frame_len;
        p[second + 2] &= 0x3F;
        let mut t = Transcoder::new(codec);
        let frames = transcode_all(&mut t, &pes);
        let s = t.stats();
        assert_eq!((s.decode_errors, s.reanchors), (1, 0));
        check_timestamps(&frames, pes[0].pts.unwrap());
        check_tone(&frames, 2, 440.0);
    }

    #[test]
    fn resampler_is_clean_and_exact_in_length() {
        for (rate, tone) in [(44_100u32, 1000.0f64), (32_000, 3000.0), (96_000, 5000.0)] {
            let mut r = Resampler::new(rate, OPUS_RATE, 1);
            let mut out = Vec::new();
            let n = rate as usize; // 1 s in 10 ms pieces
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    (2.0 * std::f64::consts::PI * tone * i as f64 / f64::from(rate)).sin() as f32
                })
                .collect();
            for piece in x.chunks(rate as usize / 100) {
                r.process(&[piece.to_vec()], &mut out);
            }
            r.flush(&mut out);
            // One second in, one second out: the flush covers exactly the input.
            assert_eq!(out.len(), OPUS_RATE as usize);
            let (mut s, mut e) = (0.0f64, 0.0f64);
            for (i, &y) in out.iter().enumerate().take(47_000).skip(1000) {
                let ideal =
                    (2.0 * std::f64::consts::PI * tone * i as f64 / f64::from(OPUS_RATE)).sin();
                s += ideal * ideal;
                e += (ideal - f64::from(y)).powi(2);
            }
            let snr = 10.0 * (s / e).log10();
            assert!(snr > 70.0, "{rate} Hz: SNR {snr:.1} dB");
        }
    }

    /// With `TSBRIDGE_TRANSCODE_OGG=dir`, writes each file's Opus output as Ogg Opus there, for
    /// an outside decoder (`ffmpeg -c:a libopus -i x.ogg`).
    fn dump_ogg(name: &str, frames: &[OpusFrame], channels: u8) {
        let Some(dir) = std::env::var_os("TSBRIDGE_TRANSCODE_OGG") else {
            return;
        };
        fn crc(data: &[u8]) -> u32 {
            data.iter().fold(0u32, |mut c, &b| {
                c ^= u32::from(b) << 24;
                for _ in 0..8 {
                    c = if c & 0x8000_0000 != 0 {
                        (c << 1) ^ 0x04C1_1DB7
                    } else {
                        c << 1
                    };
                }
                c
            })
        }
        fn page(out: &mut Vec<u8>, flags: u8, granule: u64, seq: u32, packet: &[u8]) {
            let start = out.len();
            out.extend_from_slice(b"OggS\0");
            out.push(flags);
            out.extend_from_slice(&granule.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            let lacing = packet.len() / 255 + 1;
            out.push(lacing as u8);
            out.extend(std::iter::repeat_n(255u8, lacing - 1));
            out.push((packet.len() % 255) as u8);
            out.extend_from_slice(packet);
            let c = crc(&out[start..]);
            out[start + 22..start + 26].copy_from_slice(&c.to_le_bytes());
        }
        let mut ogg = Vec::new();
        let mut head = b"OpusHead\x01".to_vec();
        head.push(channels);
        head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip: already compensated
        head.extend_from_slice(&OPUS_RATE.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        page(&mut ogg, 2, 0, 0, &head);
        page(&mut ogg, 0, 0, 1, b"OpusTags\x04\0\0\0test\0\0\0\0");
        for (i, f) in frames.iter().enumerate() {
            let last = if i + 1 == frames.len() { 4 } else { 0 };
            page(&mut ogg, last, (i as u64 + 1) * 960, i as u32 + 2, &f.data);
        }
        let path = PathBuf::from(dir).join(name).with_extension("ogg");
        std::fs::write(&path, ogg).unwrap();
    }
}
