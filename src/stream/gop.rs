//! The GOP cache: the video frames since the last start point, so a new viewer starts at once
//! with a picture instead of waiting for the source's next keyframe (a TS source cannot make
//! one).
//!
//! A GOP starts at a keyframe (an H.264 IDR, an H.265 IRAP picture) or at an H.264 recovery
//! point (a periodic-intra-refresh source sends one IDR and then only those). Every receiver
//! decodes from a keyframe, browsers' WebRTC decoders only from one, so a GOP led by a keyframe
//! is kept as long as it fits the bound, recovery points inside it noted; a recovery point
//! starts a GOP when there is none (before the first keyframe, after an overflow) or when the
//! GOP is itself led by one. A keyframe-led GOP that outgrows the bound is cut to its latest
//! recovery point; without one, nothing is cached until the next start point.
//!
//! ```text
//!   IDR  P  P  RP  P  P  RP  P … (bound)  → cut to the last RP:   RP  P  P  RP …
//!   RP   P  P  RP                         → a new GOP at each RP: RP  P …
//!   CRA  RASL  TRAIL …                    → the RASL pictures after the first CRA are left out
//! ```

use std::fmt;
use std::str::FromStr;

use super::frame::{Frame, Kind};
use crate::codec::Recovery;

/// Frames beyond which timestamps are not believed (two minutes at 60 fps): only a stream
/// whose timestamps do not advance reaches it before the time bound.
pub const MAX_FRAMES: usize = 7200;

/// How much video the cache may hold (`--gop-cache-max SECONDS[,BYTES]`): a GOP longer or
/// larger than this is not cached whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopBound {
    /// Media time, in 90 kHz ticks.
    pub ticks: u64,
    pub bytes: usize,
}

impl GopBound {
    /// 15 s: x264's default keyframe interval, 250 frames, is 10.4 s at 24 fps (a bound of
    /// 10 s would call such ordinary sources keyframe-less); 16 MiB: 15 s at 8 Mbit/s.
    pub const DEFAULT: GopBound = GopBound {
        ticks: 15 * 90_000,
        bytes: 16 << 20,
    };

    pub fn seconds(&self) -> f64 {
        self.ticks as f64 / 90_000.0
    }
}

impl Default for GopBound {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for GopBound {
    /// `15 s / 16 MiB`, as the flag takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = (self.seconds() * 1000.0).round() / 1000.0;
        write!(f, "{secs} s / ")?;
        match self.bytes {
            b if b % (1 << 20) == 0 => write!(f, "{} MiB", b >> 20),
            b if b % (1 << 10) == 0 => write!(f, "{} KiB", b >> 10),
            b => write!(f, "{b} bytes"),
        }
    }
}

impl FromStr for GopBound {
    type Err = String;

    /// `SECONDS[,BYTES]`: seconds 0.1–600 (fractions allowed); bytes a number with an optional
    /// `KiB`/`MiB`/`GiB` (or `K`/`M`/`G`, the same) or `kB`/`MB`/`GB` (powers of ten) suffix,
    /// 64 KiB to 4 GiB. Without bytes, the default's.
    fn from_str(s: &str) -> Result<Self, String> {
        let (secs, bytes) = match s.split_once(',') {
            Some((a, b)) => (a.trim(), Some(b.trim())),
            None => (s.trim(), None),
        };
        let secs: f64 = secs
            .parse()
            .map_err(|_| format!("{secs:?}: expected SECONDS[,BYTES], e.g. 15 or 15,16MiB"))?;
        if !(0.1..=600.0).contains(&secs) {
            return Err(format!("{secs} s: the seconds must be between 0.1 and 600"));
        }
        let bytes = match bytes {
            None => Self::DEFAULT.bytes,
            Some(b) => parse_bytes(b)?,
        };
        Ok(GopBound {
            ticks: (secs * 90_000.0).round() as u64,
            bytes,
        })
    }
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(at);
    let unit_bytes: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KiB" | "k" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "{other:?}: unknown unit (use KiB, MiB, GiB, kB, MB, GB)"
            ))
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 16MiB or 8000000"))?;
    let bytes = number * unit_bytes;
    if !(65_536.0..=4_294_967_296.0).contains(&bytes) {
        return Err(format!("{s}: the size must be between 64 KiB and 4 GiB"));
    }
    Ok(bytes as usize)
}

/// What the cached GOP starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// A keyframe: every receiver starts there.
    Keyframe,
    /// A recovery point: receivers that need an IDR (browsers) do not start there.
    RecoveryPoint,
}

impl Lead {
    pub fn name(self) -> &'static str {
        match self {
            Lead::Keyframe => "keyframe",
            Lead::RecoveryPoint => "recovery_point",
        }
    }
}

#[derive(Debug, Default)]
pub struct GopCache {
    frames: Vec<Frame>,
    bytes: usize,
    bound: GopBound,
    /// What `frames[0]` is (meaningless while empty).
    lead: Option<Lead>,
    /// The latest recovery point inside a keyframe-led GOP: where it is cut when it outgrows
    /// the bound.
    last_point: Option<usize>,
    /// No picture but RASL ones since the lead: those are left out.
    leading: bool,
    /// Times a GOP outgrew the bound with no later start point to cut to.
    overflows: u64,
}

impl GopCache {
    pub fn new(bound: GopBound) -> Self {
        GopCache {
            bound,
            ..Self::default()
        }
    }

    pub fn bound(&self) -> GopBound {
        self.bound
    }

    /// A new bound, for the frames to come.
    pub fn set_bound(&mut self, bound: GopBound) {
        self.bound = bound;
    }

    /// Record a frame the stream just produced.
    pub fn push(&mut self, f: &Frame) {
        if f.kind != Kind::Video {
            return;
        }
        let lead = if f.keyframe {
            Some(Lead::Keyframe)
        } else if f.recovery.is_point() && self.lead != Some(Lead::Keyframe) {
            Some(Lead::RecoveryPoint)
        } else {
            None
        };
        if let Some(lead) = lead {
            self.clear();
            self.lead = Some(lead);
            self.leading = true;
        } else if self.frames.is_empty() {
            return; // waiting for a start point
        } else if self.leading && f.recovery == Recovery::Rasl {
            return; // refers to pictures before the lead
        } else {
            self.leading = false;
            if f.recovery.is_point() {
                self.last_point = Some(self.frames.len());
            }
        }
        self.bytes += f.data.len();
        self.frames.push(f.clone());
        while self.over_bound() {
            match self.last_point.take() {
                Some(at) if at > 0 => {
                    self.frames.drain(..at);
                    self.bytes = self.frames.iter().map(|f| f.data.len()).sum();
                    self.lead = Some(Lead::RecoveryPoint);
                }
                _ => {
                    self.clear();
                    self.overflows += 1;
                }
            }
        }
    }

    fn over_bound(&self) -> bool {
        !self.frames.is_empty()
            && (self.bytes > self.bound.bytes
                || self.frames.len() > MAX_FRAMES
                || self.duration_90k() > self.bound.ticks)
    }

    /// Forget everything (the source ended or changed).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.lead = None;
        self.last_point = None;
        self.leading = false;
    }

    /// The cached frames, the start point first (cheap: the payloads are shared).
    pub fn snapshot(&self) -> Vec<Frame> {
        self.frames.clone()
    }

    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the cached GOP starts with; `None` when empty.
    pub fn lead(&self) -> Option<Lead> {
        self.lead.filter(|_| !self.frames.is_empty())
    }

    /// Times a GOP outgrew the bound and nothing could be kept.
    pub fn overflows(&self) -> u64 {
        self.overflows
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
            arrived: Instant::now(),
            ingested_us: 0,
            data: Arc::from(vec![0u8; len]),
            keyframe,
            recovery: Recovery::None,
            payloads: Arc::from([]),
        }
    }

    fn with(recovery: Recovery, f: Frame) -> Frame {
        Frame { recovery, ..f }
    }

    fn seqs(g: &GopCache) -> Vec<u64> {
        g.snapshot().iter().map(|f| f.seq).collect()
    }

    const POINT: Recovery = Recovery::Point { frames: 29 };

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
        assert_eq!(g.lead(), Some(Lead::Keyframe));
        g.push(&frame(4, Kind::Video, true, 50));
        let s = g.snapshot();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].seq, 4);
        assert_eq!(g.duration_90k(), 0);
    }

    #[test]
    fn oversized_gop_is_dropped_until_the_next_idr() {
        let mut g = GopCache::default();
        g.push(&frame(1, Kind::Video, true, GopBound::DEFAULT.bytes - 10));
        g.push(&frame(2, Kind::Video, false, 100));
        assert_eq!(g.frames(), 0);
        assert_eq!(g.overflows(), 1);
        g.push(&frame(3, Kind::Video, false, 1));
        assert_eq!(g.frames(), 0);
        g.push(&frame(4, Kind::Video, true, 1));
        assert_eq!(g.frames(), 1);
    }

    #[test]
    fn recovery_point_starts_a_gop_when_no_keyframe_leads_one() {
        let mut g = GopCache::default();
        g.push(&frame(0, Kind::Video, false, 10));
        g.push(&with(POINT, frame(1, Kind::Video, false, 10)));
        g.push(&frame(2, Kind::Video, false, 10));
        assert_eq!(seqs(&g), [1, 2]);
        assert_eq!(g.lead(), Some(Lead::RecoveryPoint));
        // The next recovery point starts the next GOP.
        g.push(&with(POINT, frame(3, Kind::Video, false, 10)));
        assert_eq!(seqs(&g), [3]);
        // A keyframe takes over, and recovery points inside its GOP do not cut it.
        g.push(&frame(4, Kind::Video, true, 10));
        g.push(&with(POINT, frame(5, Kind::Video, false, 10)));
        g.push(&frame(6, Kind::Video, false, 10));
        assert_eq!(seqs(&g), [4, 5, 6]);
        assert_eq!(g.lead(), Some(Lead::Keyframe));
    }

    #[test]
    fn keyframe_gop_past_the_bound_is_cut_to_its_latest_recovery_point() {
        // 1 s bound (30 frames), an IDR then a recovery point every 10 frames: intra refresh.
        let mut g = GopCache::new(GopBound {
            ticks: 90_000,
            bytes: 1 << 20,
        });
        for seq in 0..200u64 {
            let f = frame(seq, Kind::Video, seq == 0, 100);
            let f = if seq > 0 && seq % 10 == 0 {
                with(POINT, f)
            } else {
                f
            };
            g.push(&f);
            assert!(g.duration_90k() <= 90_000, "{seq}: {}", g.duration_90k());
            if seq == 31 {
                // The IDR's GOP outgrew the bound (0..=31 spans 31 frames, over 1 s): cut to
                // its latest recovery point.
                assert_eq!(seqs(&g), [30, 31]);
                assert_eq!(g.lead(), Some(Lead::RecoveryPoint));
            }
        }
        // From then on, each recovery point starts a GOP.
        assert_eq!(seqs(&g), (190..200).collect::<Vec<_>>());
        assert_eq!(g.overflows(), 0);
    }

    #[test]
    fn source_without_start_points_within_the_bound_caches_nothing_and_counts_it() {
        let mut g = GopCache::new(GopBound {
            ticks: 90_000,
            bytes: 1 << 20,
        });
        for seq in 0..100u64 {
            g.push(&frame(seq, Kind::Video, seq == 0 || seq == 60, 100));
        }
        // 0..=31 overflowed at 31, 60..=91 at 91: nothing until the next start point.
        assert_eq!(g.frames(), 0);
        assert_eq!(g.overflows(), 2);
        // The byte bound too.
        let mut g = GopCache::new(GopBound {
            ticks: 90_000,
            bytes: 1000,
        });
        g.push(&with(POINT, frame(0, Kind::Video, false, 600)));
        g.push(&frame(1, Kind::Video, false, 600));
        assert_eq!((g.frames(), g.overflows()), (0, 1));
    }

    #[test]
    fn rasl_pictures_after_the_first_cra_are_left_out() {
        let mut g = GopCache::default();
        let rasl = |seq| with(Recovery::Rasl, frame(seq, Kind::Video, false, 10));
        g.push(&frame(0, Kind::Video, true, 10)); // CRA (an IRAP: a keyframe)
        g.push(&rasl(1));
        g.push(&rasl(2));
        g.push(&frame(3, Kind::Video, false, 10));
        // RASL pictures of a later CRA inside the GOP are the stream's own: kept.
        g.push(&rasl(4));
        assert_eq!(seqs(&g), [0, 3, 4]);
    }

    #[test]
    fn bound_parses_seconds_and_sizes() {
        let b = |s: &str| s.parse::<GopBound>();
        assert_eq!(b("15,16MiB"), Ok(GopBound::DEFAULT));
        assert_eq!(b("15"), Ok(GopBound::DEFAULT));
        assert_eq!(
            b("2.5, 8M"),
            Ok(GopBound {
                ticks: 225_000,
                bytes: 8 << 20
            })
        );
        assert_eq!(b("4,2000000").map(|g| g.bytes), Ok(2_000_000));
        assert_eq!(b("4,3MB").map(|g| g.bytes), Ok(3_000_000));
        assert_eq!(b("4,512KiB").map(|g| g.bytes), Ok(512 << 10));
        assert!(b("0").unwrap_err().contains("between 0.1 and 600"));
        assert!(b("ten").unwrap_err().contains("SECONDS[,BYTES]"));
        assert!(b("10,16 parsecs").unwrap_err().contains("unknown unit"));
        assert!(b("10,100").unwrap_err().contains("64 KiB"));
        assert_eq!(GopBound::DEFAULT.to_string(), "15 s / 16 MiB");
        assert_eq!(b("2.5,3MB").unwrap().to_string(), "2.5 s / 3000000 bytes");
    }
}
