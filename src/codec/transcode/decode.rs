//! Decoding one source frame to PCM (symphonia's AAC-LC and MPEG audio decoders).
//!
//! A decoder instance fits one format ([`DecoderKey`]: codec, rate, channels); a frame of
//! another format gets a fresh one. A frame the decoder rejects, or a decoder that cannot be
//! made, becomes silence of the frame's length, counted in `decode_errors`: dropping it would
//! pull every later frame earlier and break the sample clock. symphonia is not fuzzed for us,
//! so a panic on hostile input is caught and the decoder re-created.

use std::panic::AssertUnwindSafe;

use symphonia_bundle_mp3::MpaDecoder;
use symphonia_codec_aac::AacDecoder;
use symphonia_core::audio::layouts::{CHANNEL_LAYOUT_MONO, CHANNEL_LAYOUT_STEREO};
use symphonia_core::codecs::audio::well_known::{
    CODEC_ID_AAC, CODEC_ID_MP1, CODEC_ID_MP2, CODEC_ID_MP3,
};
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::PacketRef;
use symphonia_core::units::{Duration, Timestamp};

use super::{OpusFrame, SourceFormat, Transcoder};
use crate::codec::aac::AacConfig;
use crate::codec::mpa::MpaHeader;

impl Transcoder {
    /// Decodes one frame (or, if it cannot, counts it and uses silence of its length) and
    /// feeds the result on. The pipeline's timing has already accepted the frame.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode(
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
pub(super) enum DecoderKey {
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

pub(super) struct Decoder {
    pub(super) key: DecoderKey,
    inner: Box<dyn AudioDecoder>,
}

impl Decoder {
    pub(super) fn aac(config: AacConfig) -> Option<Self> {
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

    pub(super) fn mpa(h: MpaHeader) -> Option<Self> {
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
