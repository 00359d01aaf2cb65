//! Counters for `GET /metrics` (Prometheus text exposition). Updated with relaxed atomics on
//! the hot paths; rendered on request.

use std::collections::BTreeMap;
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
    ttff: [AtomicU64; TTFF_BUCKETS.len() + 1],
    ttff_sum_us: AtomicU64,
}

impl Metrics {
    pub fn session_closed(&self, reason: &'static str) {
        *self.closed.lock().entry(reason).or_default() += 1;
    }

    /// Time from the WHEP answer to the first video frame sent to that viewer.
    pub fn first_frame(&self, after: Duration) {
        let s = after.as_secs_f64();
        let i = TTFF_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(TTFF_BUCKETS.len());
        self.ttff[i].fetch_add(1, Ordering::Relaxed);
        self.ttff_sum_us
            .fetch_add(after.as_micros() as u64, Ordering::Relaxed);
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
        let _ = writeln!(
            out,
            "# HELP tsbridge_time_to_first_frame_seconds WHEP answer to first video frame sent"
        );
        let _ = writeln!(out, "# TYPE tsbridge_time_to_first_frame_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in TTFF_BUCKETS.iter().enumerate() {
            cumulative += g(&self.ttff[i]);
            let _ = writeln!(
                out,
                "tsbridge_time_to_first_frame_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        cumulative += g(&self.ttff[TTFF_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "tsbridge_time_to_first_frame_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "tsbridge_time_to_first_frame_seconds_sum {}",
            g(&self.ttff_sum_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "tsbridge_time_to_first_frame_seconds_count {cumulative}"
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
    }
}
