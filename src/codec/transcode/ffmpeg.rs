//! Frames FFmpeg decodes (`--features ffmpeg`): AC-3, E-AC-3, and the AAC the pure-Rust
//! decoder does not play (multichannel, HE-AAC, Main). Each decoded frame is timed by what
//! the decoder says (an HE-AAC header gives the core's rate, the decoder the doubled one),
//! then mixed (5.1 → stereo by ITU-R BS.775) and encoded like any other.

use super::{OpusFrame, SourceFormat, Transcoder};
use crate::codec::ffmpeg::{AudioCodec, AudioDecoder};

impl Transcoder {
    /// One coded frame; `(rate, samples, channels)` from its header, for the silence that
    /// replaces it if it does not decode.
    pub(super) fn ffmpeg_frame(
        &mut self,
        codec: AudioCodec,
        frame: &[u8],
        (rate, samples, channels): (u32, u32, u8),
        pts: Option<u64>,
        out: &mut Vec<OpusFrame>,
    ) {
        self.unsupported_run = 0;
        self.stats.source_frames += 1;
        if self.ffmpeg.as_ref().map(AudioDecoder::codec) != Some(codec) {
            self.ffmpeg = AudioDecoder::new(codec);
        }
        let mut decoded = std::mem::take(&mut self.ffmpeg_out);
        decoded.clear();
        let ok = self
            .ffmpeg
            .as_mut()
            .is_some_and(|d| d.decode(frame, &mut decoded).is_ok());
        if !ok || decoded.is_empty() {
            // Rejected (or held back): silence of its length keeps the sample clock.
            self.stats.decode_errors += u64::from(!ok);
            self.pipeline
                .silence(rate, samples, pts, out, &mut self.stats);
            self.ffmpeg_out = decoded;
            return;
        }
        let mut pts = pts;
        for d in &decoded {
            if !self
                .pipeline
                .timing(d.rate, d.samples as u32, pts.take(), out, &mut self.stats)
            {
                continue;
            }
            self.stats.decoded_frames += 1;
            self.format = Some(SourceFormat {
                codec: match codec {
                    AudioCodec::Ac3 => "AC-3",
                    AudioCodec::Eac3 => "E-AC-3",
                    AudioCodec::AacAdts | AudioCodec::AacLatm => "AAC (FFmpeg)",
                },
                sample_rate: d.rate,
                channels,
            });
            let planes: Vec<&[f32]> = (0..d.planes).map(|i| d.plane(i)).collect();
            self.pipeline
                .feed_f32(&planes, d.samples, out, &mut self.stats);
        }
        self.ffmpeg_out = decoded;
    }
}
