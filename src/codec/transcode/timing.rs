//! The sample clock: from decoded frames to timestamped 20 ms Opus frames.
//!
//! A [`Segment`] is a stretch of continuous source time from an anchor PTS. Inside it
//! everything is counted in samples (source samples in, 48 kHz samples out, 960 per Opus
//! frame), so nothing drifts and frame `i` carries `anchor + 1800 i` exactly. A frame whose
//! PTS strays more than a frame from that count, or a new sample rate, ends the segment (its
//! last partial frame is completed with silence) and anchors a new one at that PTS.
//!
//! [`Pipeline`] owns the per-segment state around the pure parts: mixing to the encoder's
//! channels, the [`Resampler`], the encoder's lookahead drop, the [`Encoder`].

use symphonia_core::audio::{Audio, GenericAudioBufferRef};

use super::encode::Encoder;
use super::resample::Resampler;
use super::{OpusFrame, TranscodeConfig, TranscodeStats, FRAME_SAMPLES, FRAME_TICKS, OPUS_RATE};

/// Source channels looked at when downmixing.
const MAX_SOURCE_CHANNELS: usize = 8;

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

pub(super) struct Pipeline {
    config: TranscodeConfig,
    segment: Option<Segment>,
    resampler: Option<Resampler>,
    pub(super) encoder: Option<Encoder>,
    /// Source audio of one frame, mixed to the encoder's channels, planar.
    pub(super) planes: [Vec<f32>; 2],
    /// 48 kHz interleaved samples not yet encoded.
    pending: Vec<f32>,
}

impl Pipeline {
    pub(super) fn new(config: TranscodeConfig) -> Self {
        Self {
            config,
            segment: None,
            resampler: None,
            encoder: None,
            planes: [Vec::new(), Vec::new()],
            pending: Vec::new(),
        }
    }

    pub(super) fn reset(&mut self) {
        self.segment = None;
        self.resampler = None;
        self.pending.clear();
        if let Some(e) = &mut self.encoder {
            e.reset();
        }
    }

    /// Places the next source frame (`samples` at `rate`, with `pts` if one applies) on the
    /// timeline, re-anchoring if needed. `false`: no timeline yet (no PTS seen), drop it.
    pub(super) fn timing(
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
    pub(super) fn flush(&mut self, out: &mut Vec<OpusFrame>, stats: &mut TranscodeStats) {
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

    pub(super) fn encoder_channels(&mut self, source_channels: usize) -> usize {
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

    pub(super) fn feed_decoded(
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

    /// Decoded planes (1, 2, or the 6 of 5.1 in ITU-R BS.775 order: L R C LFE Ls Rs), from a
    /// decoder other than symphonia's.
    #[cfg(feature = "ffmpeg")]
    pub(super) fn feed_f32(
        &mut self,
        source: &[&[f32]],
        frames: usize,
        out: &mut Vec<OpusFrame>,
        stats: &mut TranscodeStats,
    ) {
        let channels = self.encoder_channels(source.len());
        let [left, right] = &mut self.planes;
        left.clear();
        right.clear();
        mix(source, channels, left, right, frames);
        self.feed_planes(frames, out, stats);
    }

    /// Silence for a frame that could not be decoded, so the sample clock stays right.
    pub(super) fn feed_silence(
        &mut self,
        samples: u32,
        out: &mut Vec<OpusFrame>,
        stats: &mut TranscodeStats,
    ) {
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
    pub(super) fn silence(
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

    pub(super) fn feed_planes(
        &mut self,
        frames: usize,
        out: &mut Vec<OpusFrame>,
        stats: &mut TranscodeStats,
    ) {
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

/// The -3 dB gain ITU-R BS.775 gives the centre and surround channels in a stereo downmix.
const BS775_MINUS_3DB: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Mixes source planes to 1 or 2 output planes: mono is duplicated, stereo averaged for
/// mono, 5.1 (L R C LFE Ls Rs) downmixed by ITU-R BS.775 (centre and each surround at -3 dB,
/// LFE left out, scaled so a full-scale sum cannot clip), other counts with the front pair
/// plus the rest at -3 dB each side.
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
        (6, _) => {
            let (fl, fr, c, sl, sr) = (get(0), get(1), get(2), get(4), get(5));
            let scale = 1.0 / (1.0 + 2.0 * BS775_MINUS_3DB);
            for i in 0..frames {
                let centre = BS775_MINUS_3DB * at(c, i);
                let l = (at(fl, i) + centre + BS775_MINUS_3DB * at(sl, i)) * scale;
                let r = (at(fr, i) + centre + BS775_MINUS_3DB * at(sr, i)) * scale;
                if channels == 1 {
                    left.push(0.5 * (l + r));
                } else {
                    left.push(l);
                    right.push(r);
                }
            }
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

#[cfg(test)]
mod downmix_tests {
    use super::*;

    /// ITU-R BS.775: L' = L + 0.707 C + 0.707 Ls, R' = R + 0.707 C + 0.707 Rs, no LFE; scaled
    /// by 1 / (1 + 2 x 0.707) so that in-phase full-scale channels stay within full scale.
    #[test]
    fn five_one_is_downmixed_by_bs775() {
        let plane = |v: f32| vec![v; 4];
        // L R C LFE Ls Rs, each with its own level.
        let planes = [
            plane(0.1),
            plane(0.2),
            plane(0.3),
            plane(0.9),
            plane(0.4),
            plane(0.5),
        ];
        let source: Vec<&[f32]> = planes.iter().map(|p| &p[..]).collect();
        let (mut left, mut right) = (Vec::new(), Vec::new());
        mix(&source, 2, &mut left, &mut right, 4);
        let g = std::f32::consts::FRAC_1_SQRT_2;
        let scale = 1.0 / (1.0 + 2.0 * g);
        let l = (0.1 + g * 0.3 + g * 0.4) * scale;
        let r = (0.2 + g * 0.3 + g * 0.5) * scale;
        assert!(left.iter().all(|&x| (x - l).abs() < 1e-6), "{left:?} {l}");
        assert!(right.iter().all(|&x| (x - r).abs() < 1e-6), "{right:?} {r}");
        // Full scale on every channel stays at full scale.
        let ones: Vec<&[f32]> = vec![&[1.0f32][..]; 6];
        let (mut left, mut right) = (Vec::new(), Vec::new());
        mix(&ones, 2, &mut left, &mut right, 1);
        assert!((left[0] - 1.0).abs() < 1e-6 && (right[0] - 1.0).abs() < 1e-6);
    }
}
