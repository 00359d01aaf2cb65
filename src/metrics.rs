//! Counters for `GET /metrics` (Prometheus text exposition). Updated with relaxed atomics on
//! the hot paths; rendered on request.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Upper bounds (seconds) of the time-to-first-frame histogram buckets.
pub const TTFF_BUCKETS: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0];

#[derive(Debug, Default)]
pub struct Metrics {
    pub viewers_created: AtomicU64,
    pub publishers_created: AtomicU64,
    closed: Mutex<BTreeMap<&'static str, u64>>,
    /// Datagrams and bytes the media socket sent (RTP, RTCP, STUN, DTLS).
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Datagrams dropped because the socket's send buffer was full.
    pub send_drops: AtomicU64,
    pub nacks_received: AtomicU64,
    /// RTP packets sent again (RTX) in answer to NACKs.
    pub retransmissions: AtomicU64,
    /// RTP packets written and protected by the direct send path rather than str0m.
    pub direct_packets: AtomicU64,
    pub plis_received: AtomicU64,
    pub firs_received: AtomicU64,
    pub keyframes_requested_upstream: AtomicU64,
    /// Viewers that fell behind and were moved on to the next keyframe.
    pub slow_viewer_skips: AtomicU64,
    ttff: Histogram<{ TTFF_BUCKETS.len() }>,
}

/// A Prometheus histogram of durations: a count per bucket (upper bounds in seconds, the last
/// one +Inf) and the sum; updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    counts: [AtomicU64; N],
    over: AtomicU64,
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match self.bounds.iter().position(|&b| s <= b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of one labelled series (`labels` without
    /// braces, may be empty).
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        let les = self.bounds.iter().map(|b| b.to_string());
        let counts = self.counts.iter().chain([&self.over]);
        for (le, count) in les.chain(["+Inf".to_string()]).zip(counts) {
            cumulative += g(count);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = |l: &str| match l.is_empty() {
            true => String::new(),
            false => format!("{{{l}}}"),
        };
        let sum = g(&self.sum_us) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// The time-to-first-frame histogram's buckets (`Metrics` is made by `Default`).
impl Default for Histogram<{ TTFF_BUCKETS.len() }> {
    fn default() -> Self {
        Histogram::new(TTFF_BUCKETS)
    }
}

/// One histogram family; `series` is `(label text without braces, histogram)`.
pub fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    series: &[(&str, &Histogram<N>)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in series {
        h.render_series(out, name, labels);
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
];
/// Recent latency samples kept for the percentiles of the API (about 20 s of a 30 fps stream
/// with its audio).
const RECENT: usize = 2048;

/// A stream's latency: from a frame's arrival on this node (`added`, what the bridge adds) and
/// from its ingest into the cluster (`from_ingest`: across an edge hop, on the two nodes'
/// clocks) to its first RTP packet on the wire. Histograms for the metrics, recent samples for
/// the API's percentiles.
#[derive(Debug)]
pub struct Latency {
    pub added: Histogram<{ LATENCY_BUCKETS.len() }>,
    pub from_ingest: Histogram<{ LATENCY_BUCKETS.len() }>,
    recent: Mutex<VecDeque<(u32, u32)>>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            added: Histogram::new(LATENCY_BUCKETS),
            from_ingest: Histogram::new(LATENCY_BUCKETS),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }
}

/// Percentiles of the recent latency samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub added_ms: Percentiles,
    pub ingest_to_send_ms: Percentiles,
    pub samples: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

impl Latency {
    pub fn record(&self, added: Duration, from_ingest: Duration) {
        self.added.observe(added);
        self.from_ingest.observe(from_ingest);
        let us = |d: Duration| d.as_micros().min(u128::from(u32::MAX)) as u32;
        let mut recent = self.recent.lock();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back((us(added), us(from_ingest)));
    }

    /// None before the first sample.
    pub fn summary(&self) -> Option<LatencySummary> {
        let recent = self.recent.lock();
        let (mut added, mut ingest): (Vec<u32>, Vec<u32>) = recent.iter().copied().unzip();
        drop(recent);
        let pct = |v: &mut Vec<u32>| {
            v.sort_unstable();
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
            Percentiles {
                p50: at(0.5),
                p99: at(0.99),
            }
        };
        (!added.is_empty()).then(|| LatencySummary {
            added_ms: pct(&mut added),
            ingest_to_send_ms: pct(&mut ingest),
            samples: added.len(),
        })
    }
}

impl Metrics {
    pub fn session_closed(&self, reason: &'static str) {
        *self.closed.lock().entry(reason).or_default() += 1;
    }

    /// Time from the WHEP answer to the first video frame sent to that viewer.
    pub fn first_frame(&self, after: Duration) {
        self.ttff.observe(after);
    }

    /// The global part of the exposition.
    pub fn render(&self, out: &mut String) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            out,
            "tsbridge_sessions_created_total",
            "WebRTC sessions created",
            &[
                ("role=\"viewer\"", g(&self.viewers_created)),
                ("role=\"publisher\"", g(&self.publishers_created)),
            ],
        );
        let closed: Vec<(String, u64)> = self
            .closed
            .lock()
            .iter()
            .map(|(k, v)| (format!("cause=\"{k}\""), *v))
            .collect();
        let closed: Vec<(&str, u64)> = closed.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        counter(
            out,
            "tsbridge_sessions_closed_total",
            "WebRTC sessions closed, by cause",
            &closed,
        );
        for (name, help, v) in [
            (
                "tsbridge_packets_sent_total",
                "UDP datagrams sent to WebRTC peers",
                &self.packets_sent,
            ),
            (
                "tsbridge_bytes_sent_total",
                "UDP bytes sent to WebRTC peers",
                &self.bytes_sent,
            ),
            (
                "tsbridge_send_drops_total",
                "datagrams dropped on a full socket buffer",
                &self.send_drops,
            ),
            (
                "tsbridge_nacks_received_total",
                "NACKs received from viewers",
                &self.nacks_received,
            ),
            (
                "tsbridge_retransmissions_total",
                "RTP packets retransmitted (RTX) in answer to NACKs",
                &self.retransmissions,
            ),
            (
                "tsbridge_direct_packets_total",
                "video RTP packets protected and sent by the direct path (not through str0m)",
                &self.direct_packets,
            ),
            (
                "tsbridge_plis_received_total",
                "PLIs received from viewers",
                &self.plis_received,
            ),
            (
                "tsbridge_firs_received_total",
                "FIRs received from viewers",
                &self.firs_received,
            ),
            (
                "tsbridge_keyframes_requested_upstream_total",
                "keyframe requests forwarded to WHIP publishers",
                &self.keyframes_requested_upstream,
            ),
            (
                "tsbridge_slow_viewer_skips_total",
                "slow viewers moved on to the next keyframe",
                &self.slow_viewer_skips,
            ),
        ] {
            counter(out, name, help, &[("", g(v))]);
        }
        histogram(
            out,
            "tsbridge_time_to_first_frame_seconds",
            "WHEP answer to first video frame sent",
            &[("", &self.ttff)],
        );
    }
}

/// CPU time the calling thread has used (a transcoder's cost, in the API and the benches).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One counter family; `labels` is `(label text without braces, value)`.
pub fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    family(out, name, help, "counter", values);
}

pub fn gauge(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    family(out, name, help, "gauge", values);
}

fn family(out: &mut String, name: &str, help: &str, kind: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.first_frame(Duration::from_millis(40));
        m.first_frame(Duration::from_millis(250));
        m.first_frame(Duration::from_secs(20));
        m.session_closed("deleted by client");
        let mut s = String::new();
        m.render(&mut s);
        assert!(s.contains("tsbridge_time_to_first_frame_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(s.contains("tsbridge_time_to_first_frame_seconds_bucket{le=\"0.3\"} 2\n"));
        assert!(s.contains("tsbridge_time_to_first_frame_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("tsbridge_sessions_closed_total{cause=\"deleted by client\"} 1\n"));
        assert!(s.contains("tsbridge_time_to_first_frame_seconds_count 3\n"));
    }

    #[test]
    fn latency_gives_recent_percentiles_and_labelled_histograms() {
        let l = Latency::default();
        assert_eq!(l.summary(), None);
        for ms in 1..=100 {
            l.record(Duration::from_micros(ms * 10), Duration::from_millis(ms));
        }
        let s = l.summary().unwrap();
        assert_eq!(s.samples, 100);
        assert_eq!((s.added_ms.p50, s.added_ms.p99), (0.51, 0.99));
        assert_eq!(
            (s.ingest_to_send_ms.p50, s.ingest_to_send_ms.p99),
            (51.0, 99.0)
        );
        let mut out = String::new();
        histogram(&mut out, "x", "h", &[("stream=\"a\"", &l.added)]);
        assert!(
            out.contains("x_bucket{stream=\"a\",le=\"0.0005\"} 50\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{stream=\"a\",le=\"+Inf\"} 100\n"));
        assert!(out.contains("x_count{stream=\"a\"} 100\n"));
    }
}
