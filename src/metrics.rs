//! What is counted, and how it is written out: the node's counters, histograms of durations,
//! a stream's latency, and the Prometheus text exposition (`Exposition`, fed tables of
//! `Family`). Counters are updated with relaxed atomics on the hot paths and read on request;
//! every family of `GET /metrics` is declared in one place, `http/metrics.rs`.

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
    ttff: Ttff,
}

/// The time-to-first-frame histogram (its own type for its buckets, so `Metrics` derives
/// `Default`).
#[derive(Debug)]
struct Ttff(Histogram);

impl Default for Ttff {
    fn default() -> Self {
        Ttff(Histogram::new(&TTFF_BUCKETS))
    }
}

/// A Prometheus histogram of durations: a count per bucket (upper bounds in seconds, then
/// +Inf) and the sum; updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the +Inf bucket.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series.
    fn write_series(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let les = self.bounds.iter().map(|b| b.to_string());
        let mut cumulative = 0;
        for (le, count) in les.chain(["+Inf".to_string()]).zip(self.counts.iter()) {
            cumulative += get(count);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = get(&self.sum_us) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
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
    pub added: Histogram,
    pub from_ingest: Histogram,
    recent: Mutex<VecDeque<(u32, u32)>>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            added: Histogram::new(&LATENCY_BUCKETS),
            from_ingest: Histogram::new(&LATENCY_BUCKETS),
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

    /// Sessions closed so far, by cause.
    pub fn closed(&self) -> Vec<(&'static str, u64)> {
        self.closed.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Time from the WHEP answer to the first video frame sent to that viewer.
    pub fn first_frame(&self, after: Duration) {
        self.ttff.0.observe(after);
    }

    pub fn time_to_first_frame(&self) -> &Histogram {
        &self.ttff.0
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

/// An atomic counter's value now.
pub fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Counter (only goes up) or gauge (a level now).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One family of the exposition read off a subject (the node's counters, a stream, the
/// cluster): each subject gives one series. Families are declared in tables, in one place
/// (`http/metrics.rs`).
pub struct Family<T> {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub value: fn(&T) -> u64,
}

impl<T> Family<T> {
    pub const fn counter(name: &'static str, help: &'static str, value: fn(&T) -> u64) -> Self {
        Family {
            name,
            help,
            kind: Kind::Counter,
            value,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str, value: fn(&T) -> u64) -> Self {
        Family {
            name,
            help,
            kind: Kind::Gauge,
            value,
        }
    }
}

/// The Prometheus text exposition (format 0.0.4) being written. Labels are given as their
/// text without braces (`stream="cam"`), empty for none.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Each of `families`, with one series per subject: `(labels, subject)`.
    pub fn families<T>(&mut self, families: &[Family<T>], subjects: &[(&str, &T)]) {
        for f in families {
            self.family(
                f.name,
                f.help,
                f.kind,
                subjects.iter().map(|(l, s)| (*l, (f.value)(s))),
            );
        }
    }

    /// One family from its series: `(labels, value)`.
    pub fn family<L: AsRef<str>>(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        series: impl IntoIterator<Item = (L, u64)>,
    ) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.head(name, help, kind);
        for (labels, v) in series {
            let _ = writeln!(self.out, "{name}{} {v}", braces(labels.as_ref()));
        }
    }

    /// One histogram family from its series: `(labels, histogram)`.
    pub fn histogram<'h, L: AsRef<str>>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, &'h Histogram)>,
    ) {
        self.head(name, help, "histogram");
        for (labels, h) in series {
            h.write_series(&mut self.out, name, labels.as_ref());
        }
    }

    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `{labels}`, or nothing for no labels.
fn braces(labels: &str) -> String {
    match labels.is_empty() {
        true => String::new(),
        false => format!("{{{labels}}}"),
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
        let mut x = Exposition::default();
        x.histogram(
            "tsbridge_time_to_first_frame_seconds",
            "h",
            [("", m.time_to_first_frame())],
        );
        x.family(
            "tsbridge_sessions_closed_total",
            "h",
            Kind::Counter,
            m.closed()
                .iter()
                .map(|(k, v)| (format!("cause=\"{k}\""), *v)),
        );
        let s = x.finish();
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
        let mut x = Exposition::default();
        x.histogram("x", "h", [("stream=\"a\"", &l.added)]);
        let out = x.finish();
        assert!(
            out.contains("x_bucket{stream=\"a\",le=\"0.0005\"} 50\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{stream=\"a\",le=\"+Inf\"} 100\n"));
        assert!(out.contains("x_count{stream=\"a\"} 100\n"));
    }
}
