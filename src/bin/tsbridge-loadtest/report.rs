//! The report: what a run measured, printed as JSON (`--json`) or as a short text, and the
//! statistics it is made of (nearest-rank percentiles, loss in percent).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// What `tsbridge loadtest` prints (as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub viewers: usize,
    /// Viewers whose session reached ICE+DTLS connected.
    pub connected: usize,
    /// Viewers that never connected.
    pub failed: usize,
    /// Connected viewers that lost their session before the end.
    pub dropped: usize,
    /// Why viewers failed or misbehaved, with counts.
    pub errors: BTreeMap<String, usize>,
    /// RTP packets received over the whole run (after str0m's de-duplication; RTX repairs count).
    pub packets: Packets,
    /// RTP header + payload bytes received over the whole run.
    pub bytes: u64,
    /// Sequence-number gaps / expected packets, over the whole run, in percent (viewers not
    /// made lossy).
    pub loss_pct: f64,
    /// The same for the `--lossy` viewers.
    pub lossy_loss_pct: Option<f64>,
    /// The `--lossy` viewers' video alone: what retransmissions repair (Opus is not resent).
    pub lossy_video_loss_pct: Option<f64>,
    /// Video packets the `--lossy` viewers threw away (retransmissions not counted).
    pub lossy_video_thrown: Option<u64>,
    /// From the start of the POST to the HTTP answer.
    pub time_to_answer_ms: Option<Percentiles>,
    /// From the start of the POST to ICE connected (a nominated pair).
    pub time_to_ice_ms: Option<Percentiles>,
    /// From the start of the POST to ICE+DTLS connected.
    pub time_to_connected_ms: Option<Percentiles>,
    /// From the start of the POST to the first RTP packet.
    pub time_to_first_rtp_ms: Option<Percentiles>,
    /// From the start of the POST to the last packet of the first H.264 keyframe (IDR / SPS).
    pub time_to_first_keyframe_ms: Option<Percentiles>,
    /// Viewers that received a keyframe.
    pub with_keyframe: usize,
    /// RTP packets per connected viewer over the whole run.
    pub per_viewer_packets: Option<MinP50>,
    /// CPU time (user + system) of this process over the whole run.
    pub client_cpu_s: f64,
    /// Wall time of the whole run.
    pub duration_s: f64,
    /// The steady-state window (after the ramp and connection set-up).
    pub steady: Steady,
    /// Sessions ended with DELETE at the end (2xx), of those that got a Location.
    pub deleted: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Packets {
    pub video: u64,
    pub audio: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MinP50 {
    pub min: u64,
    pub p50: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Steady {
    /// Seconds from the start of the run to the window.
    pub start_s: f64,
    pub seconds: f64,
    /// Viewers alive and connected at the end of the window.
    pub viewers: usize,
    /// RTP packets delivered to all viewers in the window.
    pub packets: u64,
    pub bytes: u64,
    pub packets_per_s: f64,
    pub loss_pct: f64,
    /// RTP packets per connected viewer in the window.
    pub per_viewer_packets: Option<MinP50>,
    /// CPU time of this process in the window, and as percent of one core.
    pub client_cpu_s: f64,
    pub client_cpu_pct: f64,
    /// CPU busy on the whole host in the window (every process, from /proc/stat; 100 = one
    /// core), and the host's CPU count: what neither the server nor this tool used is
    /// interference from elsewhere.
    pub host_cpu_pct: Option<f64>,
    pub host_cpus: usize,
    /// UDP datagrams the host's kernel dropped in the window because a socket's receive
    /// buffer was full (IPv4, every socket: /proc/net/snmp RcvbufErrors). Loss with these is
    /// a receiver (often this tool) not keeping up, not the server's doing.
    pub udp_rcvbuf_errors: Option<u64>,
    /// Same for full send buffers (SndbufErrors).
    pub udp_sndbuf_errors: Option<u64>,
    /// The server's figures over the window (with `--server-pid`).
    pub server: Option<ServerSample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerSample {
    pub pid: u32,
    /// Server CPU time (user + system) in the window, and as percent of one core.
    pub cpu_s: f64,
    pub cpu_pct: f64,
    pub rss_kb_start: u64,
    pub rss_kb_end: u64,
    /// Server CPU µs per RTP packet delivered to one viewer: cpu_s / steady.packets.
    pub us_per_packet: Option<f64>,
}

impl LoadReport {
    /// A short human-readable summary.
    pub fn text(&self) -> String {
        let p = |p: &Option<Percentiles>| match p {
            Some(p) => format!("p50 {:.0} / p95 {:.0} / max {:.0} ms", p.p50, p.p95, p.max),
            None => "-".to_string(),
        };
        let mut s = format!(
            "{}: {} viewers, {} connected, {} failed, {} dropped\n",
            self.url, self.viewers, self.connected, self.failed, self.dropped
        );
        for (why, n) in &self.errors {
            s += &format!("  {n} × {why}\n");
        }
        s += &format!(
            "packets: {} video + {} audio, {:.1} MB, loss {:.3} %\n",
            self.packets.video,
            self.packets.audio,
            self.bytes as f64 / 1e6,
            self.loss_pct
        );
        if let (Some(l), Some(v), Some(t)) = (
            self.lossy_loss_pct,
            self.lossy_video_loss_pct,
            self.lossy_video_thrown,
        ) {
            s += &format!(
                "lossy viewers: threw away {t} video packets; loss {l:.1} % (video {v:.1} %, after retransmissions)\n"
            );
        }
        s += &format!("answer:        {}\n", p(&self.time_to_answer_ms));
        s += &format!("ICE:           {}\n", p(&self.time_to_ice_ms));
        s += &format!("connected:     {}\n", p(&self.time_to_connected_ms));
        s += &format!("first RTP:     {}\n", p(&self.time_to_first_rtp_ms));
        s += &format!(
            "first keyframe: {} ({} viewers)\n",
            p(&self.time_to_first_keyframe_ms),
            self.with_keyframe
        );
        let st = &self.steady;
        s += &format!(
            "steady {:.1} s: {} viewers, {:.0} packets/s, loss {:.3} %, client CPU {:.0} %, host CPU {} % of {}00 %\n",
            st.seconds,
            st.viewers,
            st.packets_per_s,
            st.loss_pct,
            st.client_cpu_pct,
            st.host_cpu_pct.map_or("-".into(), |p| format!("{p:.0}")),
            st.host_cpus
        );
        if let Some(n) = st.udp_rcvbuf_errors.filter(|n| *n > 0) {
            s += &format!("host UDP receive-buffer drops in the window: {n}\n");
        }
        if let Some(srv) = &st.server {
            s += &format!(
                "server: CPU {:.0} %, {} µs per delivered packet, RSS {} → {} KB\n",
                srv.cpu_pct,
                srv.us_per_packet
                    .map_or("-".to_string(), |u| format!("{u:.2}")),
                srv.rss_kb_start,
                srv.rss_kb_end
            );
        }
        s
    }
}

pub(crate) fn percentiles(mut v: Vec<f64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Some(Percentiles {
        p50: round(rank(0.50)),
        p95: round(rank(0.95)),
        max: round(v[v.len() - 1]),
    })
}

pub(crate) fn min_p50(mut v: Vec<u64>) -> Option<MinP50> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(MinP50 {
        min: v[0],
        p50: v[v.len().div_ceil(2) - 1],
    })
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64 * 1000.0).round() / 1000.0
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((p.p50, p.p95, p.max), (50.0, 95.0, 100.0));
        let p = percentiles(vec![7.0]).unwrap();
        assert_eq!((p.p50, p.p95, p.max), (7.0, 7.0, 7.0));
        assert!(percentiles(Vec::new()).is_none());
        let m = min_p50(vec![5, 1, 9, 3]).unwrap();
        assert_eq!((m.min, m.p50), (1, 3));
    }
}
