//! How far apart the source's start points are, against the GOP cache bound (sans-IO): what
//! the API and the log report, and what makes `media::MediaState` re-encode a source whose
//! keyframes are further apart than the bound (browsers start only at a keyframe).

use super::gop::GopBound;

/// Why a video without keyframes within the bound is re-encoded, for the API (beside the
/// B-frames reason, `codec::reorder::B_FRAMES_REENCODED`).
pub fn no_keyframes_reencoded(bound: GopBound) -> String {
    let secs = (bound.seconds() * 100.0).round() / 100.0;
    format!(
        "no IDR within the GOP cache bound ({secs} s; periodic intra refresh or a very long \
         GOP), and browsers' WebRTC decoders start only at one: re-encoded once for all \
         viewers, with an IDR at each start point of the source and at each joining viewer's \
         request, so joining viewers get a keyframe at once (--video-transcode off sends it as \
         it is)"
    )
}

/// The source's start points, the worst seen since it started (ordered from best to worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum StartPoints {
    /// A keyframe within the bound each time (so far).
    #[default]
    Keyframes,
    /// No keyframe within the bound's seconds, but recovery points within the bound: periodic
    /// intra refresh. The GOP cache starts at those; browsers decode nothing before a keyframe.
    RecoveryPoints,
    /// No start point within the bound: its seconds, or its bytes (`by_bytes`). The GOP cache
    /// holds nothing then; new viewers wait for the next start point.
    None { by_bytes: bool },
}

impl StartPoints {
    /// A stable key per state, for "log once per cause".
    pub fn cause(self) -> &'static str {
        match self {
            StartPoints::Keyframes => "start_points_keyframes",
            StartPoints::RecoveryPoints => "start_points_recovery_only",
            StartPoints::None { .. } => "start_points_none",
        }
    }

    /// What the API and the log say, and what to do; `None` when all is well.
    pub fn report(self, bound: GopBound, reencoded: bool) -> Option<String> {
        let secs = (bound.seconds() * 100.0).round() / 100.0;
        match self {
            StartPoints::Keyframes => None,
            StartPoints::RecoveryPoints if reencoded => Some(format!(
                "recovery points only, no keyframe within {secs} s (periodic intra refresh): \
                 the GOP cache starts at them, and the video is re-encoded so that browsers, \
                 which start only at a keyframe, get one"
            )),
            StartPoints::RecoveryPoints => Some(format!(
                "recovery points only, no keyframe within {secs} s (periodic intra refresh): \
                 browsers decode nothing before a keyframe, so they show nothing; \
                 --video-transcode auto re-encodes such a stream, or make the encoder send \
                 keyframes at least every {secs} s"
            )),
            StartPoints::None { by_bytes } => {
                let within = match by_bytes {
                    true => format!("{} bytes", bound.bytes),
                    false => format!("{secs} s"),
                };
                Some(format!(
                    "none within {within}: the GOP cache holds nothing and new viewers wait \
                     for the next keyframe; send keyframes (or intra-refresh recovery points) \
                     at least every {secs} s (x264: -g, keyint), or raise --gop-cache-max"
                ))
            }
        }
    }
}

/// Watches the source's video access units, in decode order on the stream's timeline.
#[derive(Debug, Default)]
pub struct StartWatch {
    bound: GopBound,
    /// Timeline time of the last keyframe and the last start point (at first: of the first
    /// access unit, so a source that never sends one is found out too).
    last_keyframe: Option<u64>,
    last_start: Option<u64>,
    /// Bytes since the last start point.
    bytes: usize,
    worst: StartPoints,
    /// Keyframes came further apart than the bound's seconds (whatever else did).
    keyframes_too_far: bool,
}

impl StartWatch {
    pub fn new(bound: GopBound) -> Self {
        StartWatch {
            bound,
            ..Self::default()
        }
    }

    /// One access unit at timeline time `t` (90 kHz). The new state when it got worse.
    pub fn push(&mut self, t: u64, len: usize, keyframe: bool, point: bool) -> Option<StartPoints> {
        if keyframe {
            self.last_keyframe = Some(t);
        }
        if keyframe || point {
            self.last_start = Some(t);
            self.bytes = 0;
        }
        self.bytes = self.bytes.saturating_add(len);
        let since = |at: &mut Option<u64>| t.saturating_sub(*at.get_or_insert(t));
        let (no_keyframe, no_start) = (since(&mut self.last_keyframe), since(&mut self.last_start));
        self.keyframes_too_far |= no_keyframe > self.bound.ticks;
        let now = if no_start > self.bound.ticks {
            StartPoints::None { by_bytes: false }
        } else if self.bytes > self.bound.bytes {
            StartPoints::None { by_bytes: true }
        } else if no_keyframe > self.bound.ticks {
            StartPoints::RecoveryPoints
        } else {
            StartPoints::Keyframes
        };
        (now > self.worst).then(|| {
            self.worst = now;
            now
        })
    }

    pub fn state(&self) -> StartPoints {
        self.worst
    }

    /// Keyframes were further apart than the bound's seconds: browsers cannot start at will
    /// (the source is one for the re-encoder).
    pub fn keyframes_too_far(&self) -> bool {
        self.keyframes_too_far
    }

    /// The source ended: a new one starts from scratch. True if something was reported.
    pub fn reset(&mut self) -> bool {
        let reported = self.worst != StartPoints::Keyframes;
        *self = Self::new(self.bound);
        reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> StartWatch {
        StartWatch::new(GopBound {
            ticks: 90_000,
            bytes: 10_000,
        })
    }

    #[test]
    fn keyframes_within_the_bound_report_nothing() {
        let mut w = watch();
        for i in 0..300u64 {
            assert_eq!(w.push(i * 3000, 100, i % 30 == 0, false), None);
        }
        assert_eq!(w.state(), StartPoints::Keyframes);
    }

    #[test]
    fn intra_refresh_is_found_once_the_keyframe_is_older_than_the_bound() {
        let mut w = watch();
        let mut reports = Vec::new();
        for i in 0..100u64 {
            if let Some(s) = w.push(i * 3000, 100, i == 0, i > 0 && i % 10 == 0) {
                reports.push((i, s));
            }
        }
        // 31 frames after the IDR: more than 1 s.
        assert_eq!(reports, [(31, StartPoints::RecoveryPoints)]);
        assert!(w.keyframes_too_far());
        assert!(w.reset());
        assert_eq!(w.state(), StartPoints::Keyframes);
    }

    #[test]
    fn no_start_point_by_time_or_by_bytes() {
        let mut w = watch();
        let got: Vec<_> = (0..40u64)
            .filter_map(|i| w.push(i * 3000, 100, false, false))
            .collect();
        assert_eq!(got, [StartPoints::None { by_bytes: false }]);
        assert!(w.keyframes_too_far());
        let mut w = watch();
        assert_eq!(w.push(0, 6000, true, false), None);
        assert_eq!(
            w.push(3000, 6000, false, false),
            Some(StartPoints::None { by_bytes: true })
        );
        assert!(!w.keyframes_too_far(), "large, not keyframe-less");
        let text = w.state().report(GopBound::DEFAULT, false).unwrap();
        assert!(text.starts_with("none within 16777216 bytes"), "{text}");
    }

    #[test]
    fn reports_say_what_to_do() {
        let b = GopBound::DEFAULT;
        assert_eq!(StartPoints::Keyframes.report(b, false), None);
        let off = StartPoints::RecoveryPoints.report(b, false).unwrap();
        assert!(off.contains("no keyframe within 15 s") && off.contains("--video-transcode auto"));
        let on = StartPoints::RecoveryPoints.report(b, true).unwrap();
        assert!(on.contains("re-encoded"), "{on}");
        let none = StartPoints::None { by_bytes: false }
            .report(b, false)
            .unwrap();
        assert!(none.starts_with("none within 15 s") && none.contains("--gop-cache-max"));
    }
}
