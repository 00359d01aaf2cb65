//! B-frame detection: pictures that arrive out of presentation order.
//!
//! A TS carries video in decode order; with B-frames (libx264's and OBS's defaults) a picture's
//! PTS can be earlier than the one decoded before it. RTP time comes from the PTS and frames go
//! out in decode order, and browsers' WebRTC decoders expect one picture out per picture in:
//! Chromium then shows a handful of frames in several seconds. Nothing in the PMT says so, and
//! PTS ≠ DTS alone is not proof (some encoders send a constant DTS offset without reordering),
//! so the signal is the PTS itself going backwards between consecutive access units, by less
//! than a second (a larger step back is a discontinuity, not a reordered picture).

use crate::time::PTS_WRAP;

/// What a user should do about B-frames, for the API, the dashboard, logs and `probe`.
pub const B_FRAMES_ADVICE: &str = "the video has B-frames (pictures out of presentation \
     order): browsers' WebRTC decoders show only a few frames of it. Encode without B-frames: \
     ffmpeg/x264 -bf 0 (x265: -x265-params bframes=0), OBS x264 options bframes=0";

/// What the API says of a video re-encoded because of its B-frames.
pub const B_FRAMES_REENCODED: &str = "the video has B-frames, which browsers' WebRTC decoders \
     cannot show: it is re-encoded without them, once for all viewers. Encoding the source \
     with -bf 0 saves that CPU (--video-transcode off sends it as it is)";

/// A step back larger than this is a discontinuity, not a reordered picture (90 kHz).
const MAX_REORDER: u64 = 90_000;

/// Watches the PTS of one video track's access units, in decode order (sans-IO).
#[derive(Debug, Default, Clone)]
pub struct ReorderDetector {
    last_pts: Option<u64>,
    /// Access units whose PTS was earlier than their predecessor's.
    reordered: u64,
}

impl ReorderDetector {
    pub fn new() -> Self {
        Self::default()
    }

    /// One access unit's 33-bit PTS, in decode order. True when this one is the first
    /// reordered picture seen (so the caller reports it once).
    pub fn push(&mut self, pts: u64) -> bool {
        let pts = pts % PTS_WRAP;
        let back = self
            .last_pts
            .map(|last| (last + PTS_WRAP - pts) % PTS_WRAP)
            .is_some_and(|d| d > 0 && d <= MAX_REORDER);
        self.last_pts = Some(pts);
        if back {
            self.reordered += 1;
        }
        back && self.reordered == 1
    }

    /// Whether B-frames (reordered pictures) were seen.
    pub fn has_b_frames(&self) -> bool {
        self.reordered > 0
    }

    /// How many access units came before one with a later PTS.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// A new source: forget what was seen.
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_in_presentation_order_are_not_b_frames() {
        let mut d = ReorderDetector::new();
        for i in 0..100u64 {
            assert!(!d.push(126_000 + i * 3000));
        }
        assert!(!d.has_b_frames());
    }

    #[test]
    fn ibbp_decode_order_is_detected_once() {
        // Decode order I0 P3 B1 B2 P6 B4 B5 (frame numbers = presentation order).
        let mut d = ReorderDetector::new();
        let order = [0u64, 3, 1, 2, 6, 4, 5];
        let firsts: Vec<bool> = order.iter().map(|&f| d.push(f * 3000)).collect();
        assert_eq!(firsts, [false, false, true, false, false, false, false]);
        assert!(d.has_b_frames());
        assert_eq!(d.reordered(), 2);
    }

    #[test]
    fn pts_wrap_is_not_a_b_frame() {
        let mut d = ReorderDetector::new();
        d.push(PTS_WRAP - 3000);
        assert!(!d.push(0));
        assert!(!d.push(3000));
        assert!(!d.has_b_frames());
    }

    #[test]
    fn a_big_step_back_is_a_discontinuity_not_a_b_frame() {
        let mut d = ReorderDetector::new();
        d.push(10 * 90_000);
        assert!(!d.push(90_000));
        assert!(!d.has_b_frames());
    }

    #[test]
    fn b_frames_across_the_wrap_are_detected() {
        let mut d = ReorderDetector::new();
        d.push(PTS_WRAP - 3000);
        d.push(6000); // P after the wrap
        assert!(d.push(0)); // B before it
    }
}
