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
//!
//! The files, in the order a frame goes through them:
//!
//! - `framing.rs`: cuts PES payloads into ADTS / LOAS-LATM / MPEG-audio frames, across PES
//!   boundaries, and resyncs after garbage; a PES's PTS goes with the first frame that
//!   starts in it.
//! - `decode.rs`: one symphonia decoder per source format; a frame it rejects (or panics on)
//!   becomes silence of its length, so the sample clock never skips.
//! - `timing.rs`: the sample clock. It places each frame on the timeline (re-anchoring on a
//!   PTS jump), mixes to the encoder's channels, resamples, drops the encoder's lookahead
//!   and cuts 960-sample frames, each stamped `anchor + 1800 i`.
//! - `resample.rs`: the polyphase windowed-sinc resampler (zero phase, exact in length).
//! - `encode.rs`: the Opus encoder (mousiki), rebuilt if it panics.
//!
//! `mod.rs` keeps the public API ([`Transcoder`], [`SourceCodec`] and the frame, config,
//! error and statistics types) and the per-frame dispatch from framing to decoding.

use std::ops::Range;

use bytes::Bytes;

use super::aac::{AacConfig, AdtsHeader, Latm, LatmError};
use super::mpa::MpaHeader;

mod decode;
mod encode;
#[cfg(feature = "ffmpeg")]
mod ffmpeg;
mod framing;
mod resample;
mod timing;
#[cfg(test)]
mod tone;

#[cfg(test)]
mod tests;

use decode::{Decoder, DecoderKey};
use framing::{Framer, Header};
use timing::Pipeline;

/// Opus RTP clock and the only rate the encoder is run at.
pub const OPUS_RATE: u32 = 48_000;
/// Samples per channel in one 20 ms Opus frame at 48 kHz.
pub const FRAME_SAMPLES: u32 = 960;
/// One Opus frame in 90 kHz ticks.
pub const FRAME_TICKS: u64 = 1800;
/// Frames in a row of an unsupported variant (HE-AAC, AAC Main, …) before the stream is
/// declared unsupported: one corrupted header must not condemn a stream.
#[cfg_attr(feature = "ffmpeg", allow(dead_code))]
const UNSUPPORTED_AFTER: u32 = 8;

/// The source audio formats this module transcodes, by PMT stream_type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceCodec {
    /// stream_type 0x0F: AAC in ADTS frames.
    AacAdts,
    /// stream_type 0x11: AAC in LATM, LOAS sync layer.
    AacLatm,
    /// stream_type 0x03 / 0x04: MPEG-1/2 audio, layer I, II or III.
    MpegAudio,
    /// stream_type 0x81, or 0x06 with an AC-3 descriptor: decoded by FFmpeg
    /// (`--features ffmpeg`).
    Ac3,
    /// stream_type 0x87, or 0x06 with an E-AC-3 descriptor: decoded by FFmpeg.
    Eac3,
}

impl SourceCodec {
    pub fn name(&self) -> &'static str {
        match self {
            Self::AacAdts => "AAC (ADTS)",
            Self::AacLatm => "AAC (LATM)",
            Self::MpegAudio => "MPEG audio",
            Self::Ac3 => "AC-3",
            Self::Eac3 => "E-AC-3",
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

/// What a stream FFmpeg's decoders would play says when they are not built in.
const FFMPEG_HINT: &str = if cfg!(feature = "ffmpeg") {
    ""
} else {
    " (FFmpeg's decoders play it: rebuild with --features ffmpeg)"
};

/// What the caller surfaces; decode errors of single frames are not errors (they are counted
/// in [`TranscodeStats`]), only a stream this transcoder cannot play is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    /// The stream uses a codec variant the decoder cannot play (HE-AAC, AAC Main, more than two
    /// AAC channels, …). Sticky until [`Transcoder::reset`]; show it like an unsupported track.
    #[error("unsupported: {0}{FFMPEG_HINT}")]
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
    /// FFmpeg's decoder, for what symphonia does not play (AC-3, E-AC-3, multichannel and
    /// HE-AAC), and its output buffers.
    #[cfg(feature = "ffmpeg")]
    ffmpeg: Option<crate::codec::ffmpeg::AudioDecoder>,
    #[cfg(feature = "ffmpeg")]
    ffmpeg_out: Vec<crate::codec::ffmpeg::DecodedAudio>,
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
            #[cfg(feature = "ffmpeg")]
            ffmpeg: None,
            #[cfg(feature = "ffmpeg")]
            ffmpeg_out: Vec::new(),
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
                Header::Ac3(h) => self.ac3_frame(h, frame, pts, out),
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
        #[cfg(feature = "ffmpeg")]
        {
            self.ffmpeg = None;
        }
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
            #[cfg(feature = "ffmpeg")]
            {
                let _ = reason;
                use crate::codec::ffmpeg::AudioCodec;
                let (rate, samples, ch) = (
                    h.config.sample_rate,
                    h.config.frame_samples,
                    h.config.channels(),
                );
                self.ffmpeg_frame(AudioCodec::AacAdts, frame, (rate, samples, ch), pts, out);
                return Ok(());
            }
            #[cfg(not(feature = "ffmpeg"))]
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
    #[cfg_attr(feature = "ffmpeg", allow(dead_code))]
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
            #[cfg(feature = "ffmpeg")]
            {
                let _ = reason;
                use crate::codec::ffmpeg::AudioCodec;
                let (rate, samples, ch) =
                    (config.sample_rate, config.frame_samples, config.channels());
                self.ffmpeg_frame(AudioCodec::AacLatm, frame, (rate, samples, ch), pts, out);
                return Ok(());
            }
            #[cfg(not(feature = "ffmpeg"))]
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

    /// An AC-3 / E-AC-3 sync frame: FFmpeg's decoder, when built in. An E-AC-3 dependent
    /// substream (channels beyond 5.1) is left out: its independent frame has the 5.1 mix.
    fn ac3_frame(
        &mut self,
        h: crate::codec::ac3::Ac3Header,
        frame: &[u8],
        pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
    ) -> Result<(), TranscodeError> {
        #[cfg(feature = "ffmpeg")]
        {
            use crate::codec::ffmpeg::AudioCodec;
            if h.dependent {
                self.stats.skipped_bytes += frame.len() as u64;
                return Ok(());
            }
            let codec = if h.eac3 {
                AudioCodec::Eac3
            } else {
                AudioCodec::Ac3
            };
            let format = (h.sample_rate, h.samples, h.channels);
            self.ffmpeg_frame(codec, frame, format, pts, out);
            Ok(())
        }
        #[cfg(not(feature = "ffmpeg"))]
        {
            let _ = (h, frame, pts, out);
            Err(TranscodeError::Unsupported("AC-3 and E-AC-3"))
        }
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
}
