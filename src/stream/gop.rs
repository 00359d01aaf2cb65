//! The GOP cache: the video frames since the last IDR, so a new viewer starts at once with a
//! picture instead of waiting for the source's next keyframe (a TS source cannot make one).

use super::frame::{Frame, Kind};

/// Bounds: a GOP longer or larger than this is not cached (viewers then wait for an IDR).
pub const MAX_FRAMES: usize = 600;
pub const MAX_BYTES: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct GopCache {
    frames: Vec<Frame>,
    bytes: usize,
    /// The current GOP outgrew the bounds: nothing is cached until the next IDR.
    overflowed: bool,
}

impl GopCache {
    /// Record a frame the stream just produced.
    pub fn push(&mut self, f: &Frame) {
        if f.kind != Kind::Video {
            return;
        }
        if f.keyframe {
            self.frames.clear();
            self.bytes = 0;
            self.overflowed = false;
        } else if self.frames.is_empty() || self.overflowed {
            return;
        }
        if self.frames.len() >= MAX_FRAMES || self.bytes + f.data.len() > MAX_BYTES {
            self.frames.clear();
            self.bytes = 0;
            self.overflowed = true;
            return;
        }
        self.bytes += f.data.len();
        self.frames.push(f.clone());
    }

    /// Forget everything (the source ended or changed).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.overflowed = false;
    }

    /// The cached frames, IDR first (cheap: the payloads are shared).
    pub fn snapshot(&self) -> Vec<Frame> {
        self.frames.clone()
    }

    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Media time covered, in 90 kHz ticks.
    pub fn duration_90k(&self) -> u64 {
        match (self.frames.first(), self.frames.last()) {
            (Some(a), Some(b)) => b.rtp_time.saturating_sub(a.rtp_time),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    fn frame(seq: u64, kind: Kind, keyframe: bool, len: usize) -> Frame {
        Frame {
            seq,
            kind,
            rtp_time: seq * 3000,
            wallclock: Instant::now(),
            data: Arc::from(vec![0u8; len]),
            keyframe,
            payloads: Arc::from([]),
        }
    }

    #[test]
    fn holds_the_frames_since_the_last_idr() {
        let mut g = GopCache::default();
        g.push(&frame(0, Kind::Video, false, 10)); // before any IDR: useless
        assert_eq!(g.frames(), 0);
        g.push(&frame(1, Kind::Video, true, 100));
        g.push(&frame(2, Kind::Audio, true, 10)); // audio is not cached
        g.push(&frame(3, Kind::Video, false, 10));
        assert_eq!(g.frames(), 2);
        assert_eq!(g.bytes(), 110);
        g.push(&frame(4, Kind::Video, true, 50));
        let s = g.snapshot();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].seq, 4);
        assert_eq!(g.duration_90k(), 0);
    }

    #[test]
    fn oversized_gop_is_dropped_until_the_next_idr() {
        let mut g = GopCache::default();
        g.push(&frame(1, Kind::Video, true, MAX_BYTES - 10));
        g.push(&frame(2, Kind::Video, false, 100));
        assert_eq!(g.frames(), 0);
        g.push(&frame(3, Kind::Video, false, 1));
        assert_eq!(g.frames(), 0);
        g.push(&frame(4, Kind::Video, true, 1));
        assert_eq!(g.frames(), 1);
    }
}
