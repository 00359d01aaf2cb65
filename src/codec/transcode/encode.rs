//! The Opus encoder: mousiki (a pure-Rust port of libopus), 48 kHz, 20 ms frames, mono or
//! stereo.
//!
//! Its lookahead (libopus `OPUS_GET_LOOKAHEAD`) is read once, so the timing can drop that many
//! samples at the start of each segment and keep output aligned with source time. Samples are
//! clamped and NaN-cleaned before encoding; a panic inside the encoder (a dependency bug)
//! costs one frame and a rebuilt encoder, not the stream task.

use std::panic::AssertUnwindSafe;

use bytes::Bytes;

use super::{TranscodeConfig, OPUS_RATE};

/// Largest Opus packet (RFC 6716 §3.2.1).
const MAX_PACKET: usize = 1276;

/// The Opus encoder (mousiki, a port of libopus), 48 kHz, 20 ms frames.
pub(super) struct Encoder {
    inner: mousiki::Encoder,
    pub(super) channels: usize,
    /// Samples of lookahead (libopus OPUS_GET_LOOKAHEAD: 2.5 ms + 4 ms for the Audio
    /// application = 312).
    pub(super) lookahead: usize,
    packet: Vec<u8>,
    config: TranscodeConfig,
}

impl Encoder {
    pub(super) fn new(channels: usize, config: TranscodeConfig) -> Self {
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
    pub(super) fn encode(&mut self, pcm: &mut [f32]) -> Option<Bytes> {
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

    pub(super) fn reset(&mut self) {
        // Resetting a valid encoder does not fail.
        let _ = self.inner.reset_state();
    }
}
