//! `GET /metrics`: the Prometheus text exposition. Every family is declared here, in tables read
//! off their subject: the node's counters, each stream (labelled `stream="…"`), the cluster and
//! the event hook; the few families labelled otherwise (by role, by cause, by where latency is
//! counted from) are written after them with the same `Exposition`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::{self, Caller};
use super::AppState;
use crate::cluster::ClusterStats;
use crate::events::EventStats;
use crate::metrics::{get, Exposition, Family, Kind, Metrics};
use crate::stream::link::{RtpCounts, SrtReaderTotals, SrtSendStats, SrtStats, WhipCounts};
use crate::stream::Stream;

pub async fn metrics(State(app): State<AppState>, caller: Caller) -> Response {
    if let Err(e) = auth::metrics(&app, &caller) {
        return e.into_response();
    }
    let mut x = Exposition::default();
    let m = &app.engine.metrics;
    x.family(
        "tsbridge_sessions_created_total",
        "WebRTC sessions created",
        Kind::Counter,
        [
            ("role=\"viewer\"", get(&m.viewers_created)),
            ("role=\"publisher\"", get(&m.publishers_created)),
        ],
    );
    x.family(
        "tsbridge_sessions_closed_total",
        "WebRTC sessions closed, by cause",
        Kind::Counter,
        m.closed()
            .into_iter()
            .map(|(cause, n)| (format!("cause=\"{cause}\""), n)),
    );
    x.families(NODE, &[("", m)]);
    x.histogram(
        "tsbridge_time_to_first_frame_seconds",
        "WHEP answer to first video frame sent",
        [("", m.time_to_first_frame())],
    );

    let streams = app.registry.list();
    x.family(
        "tsbridge_streams",
        "streams known",
        Kind::Gauge,
        [("", streams.len() as u64)],
    );
    x.family(
        "tsbridge_waiting_for_unknown_streams",
        "WHEP POSTs waiting for a name that has no stream (yet)",
        Kind::Gauge,
        [("", app.registry.waiting_for_unknown() as u64)],
    );
    let labels: Vec<String> = streams
        .iter()
        .map(|s| format!("stream=\"{}\"", s.name))
        .collect();
    let figures: Vec<Figures> = streams.iter().map(Figures::of).collect();
    let subjects: Vec<(&str, &Figures)> = labels.iter().map(String::as_str).zip(&figures).collect();
    x.families(STREAM, &subjects);
    x.histogram(
        "tsbridge_latency_seconds",
        "from a frame's arrival on this node (from=\"arrival\": what the bridge adds), or its \
         ingest into the cluster (from=\"ingest\": across an edge hop), to its first RTP packet \
         on the wire",
        subjects.iter().flat_map(|(l, f)| {
            let latency = &f.s.stats.latency;
            [
                (format!("{l},from=\"arrival\""), &latency.added),
                (format!("{l},from=\"ingest\""), &latency.from_ingest),
            ]
        }),
    );

    if let Some(c) = &app.cluster {
        x.families(CLUSTER, &[("", &c.stats)]);
    }
    x.families(EVENTS, &[("", &*app.engine.events.stats)]);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        x.finish(),
    )
        .into_response()
}

/// The node's media counters (`Engine::metrics`).
const NODE: &[Family<Metrics>] = &[
    Family::counter(
        "tsbridge_packets_sent_total",
        "UDP datagrams sent to WebRTC peers",
        |m| get(&m.packets_sent),
    ),
    Family::counter(
        "tsbridge_bytes_sent_total",
        "UDP bytes sent to WebRTC peers",
        |m| get(&m.bytes_sent),
    ),
    Family::counter(
        "tsbridge_send_drops_total",
        "datagrams dropped on a full socket buffer",
        |m| get(&m.send_drops),
    ),
    Family::counter(
        "tsbridge_nacks_received_total",
        "NACKs received from viewers",
        |m| get(&m.nacks_received),
    ),
    Family::counter(
        "tsbridge_retransmissions_total",
        "RTP packets retransmitted (RTX) in answer to NACKs",
        |m| get(&m.retransmissions),
    ),
    Family::counter(
        "tsbridge_direct_packets_total",
        "video RTP packets protected and sent by the direct path (not through str0m)",
        |m| get(&m.direct_packets),
    ),
    Family::counter(
        "tsbridge_plis_received_total",
        "PLIs received from viewers",
        |m| get(&m.plis_received),
    ),
    Family::counter(
        "tsbridge_firs_received_total",
        "FIRs received from viewers",
        |m| get(&m.firs_received),
    ),
    Family::counter(
        "tsbridge_keyframes_requested_upstream_total",
        "keyframe requests forwarded to WHIP publishers",
        |m| get(&m.keyframes_requested_upstream),
    ),
    Family::counter(
        "tsbridge_slow_viewer_skips_total",
        "slow viewers moved on to the next keyframe",
        |m| get(&m.slow_viewer_skips),
    ),
];

/// A stream's figures for one scrape: each lock it takes (link stats, GOP cache) taken once,
/// so the series agree with each other. A link figure is 0 without that link.
struct Figures {
    s: Arc<Stream>,
    rtp: RtpCounts,
    srt: SrtStats,
    /// SRT readers (`m=request`): connected now, the largest RTT and send backlog among them
    /// (ms), and their counts since the stream began.
    readers: usize,
    reader_rtt_max_ms: u64,
    reader_send_buffer_max_ms: u64,
    reader_totals: SrtReaderTotals,
    whip: WhipCounts,
    gop_bytes: u64,
    gop_frames: u64,
}

impl Figures {
    fn of(s: &Arc<Stream>) -> Self {
        let link = &s.stats.link;
        let readers = link.srt_readers();
        let max = |f: fn(&SrtSendStats) -> f64| {
            readers
                .iter()
                .map(|r| f(&r.stats))
                .fold(0.0, f64::max)
                .round() as u64
        };
        let (gop_bytes, gop_frames) = {
            let g = s.gop.lock();
            (g.bytes() as u64, g.frames() as u64)
        };
        Figures {
            s: s.clone(),
            rtp: link.rtp().unwrap_or_default(),
            srt: link.srt().map(|(_, c)| c).unwrap_or_default(),
            readers: readers.len(),
            reader_rtt_max_ms: max(|r| r.rtt_ms),
            reader_send_buffer_max_ms: max(|r| r.send_buffer_ms as f64),
            reader_totals: link.srt_reader_totals(),
            whip: link.whip().unwrap_or_default(),
            gop_bytes,
            gop_frames,
        }
    }
}

/// One series per stream, labelled `stream="NAME"`.
const STREAM: &[Family<Figures>] = &[
    Family::gauge("tsbridge_viewers", "viewers connected", |f| {
        f.s.stats.viewers.load(Ordering::Relaxed) as u64
    }),
    Family::gauge(
        "tsbridge_waiting_viewers",
        "WHEP POSTs waiting for the stream",
        |f| f.s.stats.waiting_viewers.load(Ordering::Relaxed) as u64,
    ),
    Family::gauge("tsbridge_source_live", "1 while a source is writing", |f| {
        u64::from(f.s.has_source())
    }),
    Family::counter(
        "tsbridge_ingest_bytes_total",
        "TS bytes received from sources",
        |f| get(&f.s.stats.ingest_bytes),
    ),
    Family::counter(
        "tsbridge_ts_errors_total",
        "TS problems (resyncs, CC errors, bad PSI/PES)",
        |f| get(&f.s.stats.ts_problems),
    ),
    Family::counter(
        "tsbridge_video_frames_total",
        "video access units demuxed",
        |f| get(&f.s.stats.video_frames),
    ),
    Family::counter(
        "tsbridge_audio_packets_total",
        "Opus packets demuxed",
        |f| get(&f.s.stats.audio_packets),
    ),
    Family::counter(
        "tsbridge_stream_packets_sent_total",
        "datagrams sent to the stream's viewers",
        |f| get(&f.s.stats.packets_sent),
    ),
    Family::counter(
        "tsbridge_stream_bytes_sent_total",
        "bytes sent to the stream's viewers",
        |f| get(&f.s.stats.bytes_sent),
    ),
    Family::counter(
        "tsbridge_stream_slow_viewer_skips_total",
        "times a viewer of the stream fell behind and was moved on to the next keyframe",
        |f| get(&f.s.stats.slow_viewer_skips),
    ),
    Family::counter(
        "tsbridge_viewer_sessions_total",
        "viewer sessions created",
        |f| get(&f.s.stats.sessions_total),
    ),
    Family::gauge("tsbridge_gop_cache_bytes", "bytes in the GOP cache", |f| {
        f.gop_bytes
    }),
    Family::gauge(
        "tsbridge_gop_cache_frames",
        "frames in the GOP cache",
        |f| f.gop_frames,
    ),
    Family::counter(
        "tsbridge_rtp_packets_total",
        "RTP packets of RTP-wrapped TS received on --udp (duplicates included)",
        |f| f.rtp.packets,
    ),
    Family::counter(
        "tsbridge_rtp_lost_total",
        "RTP packets of a --udp source given up on (missing when the reorder wait ended)",
        |f| f.rtp.lost,
    ),
    Family::counter(
        "tsbridge_rtp_reordered_total",
        "RTP packets of a --udp source that arrived out of order and were put back in order",
        |f| f.rtp.reordered,
    ),
    Family::counter(
        "tsbridge_rtp_duplicates_total",
        "RTP packets of a --udp source that arrived twice",
        |f| f.rtp.duplicates,
    ),
    Family::counter(
        "tsbridge_rtp_late_total",
        "RTP packets of a --udp source that came after they were given up on",
        |f| f.rtp.late,
    ),
    Family::counter(
        "tsbridge_srt_packets_total",
        "packets the stream's SRT publisher's connection received",
        |f| f.srt.packets_received,
    ),
    Family::counter(
        "tsbridge_srt_lost_total",
        "packets found missing on the SRT publisher's connection (then asked for again)",
        |f| f.srt.lost,
    ),
    Family::counter(
        "tsbridge_srt_retransmitted_total",
        "packets the SRT publisher sent again (ARQ)",
        |f| f.srt.retransmitted,
    ),
    Family::counter(
        "tsbridge_srt_dropped_total",
        "packets of the SRT publisher given up on: too late for --srt-latency-ms",
        |f| f.srt.dropped,
    ),
    Family::gauge(
        "tsbridge_srt_rtt_milliseconds",
        "round trip time of the stream's SRT publisher's connection",
        |f| f.srt.rtt_ms.round() as u64,
    ),
    Family::gauge(
        "tsbridge_srt_receive_buffer_milliseconds",
        "media time waiting in the SRT receive buffer",
        |f| f.srt.receive_buffer_ms,
    ),
    Family::gauge(
        "tsbridge_srt_readers",
        "SRT readers (m=request) of the stream connected now",
        |f| f.readers as u64,
    ),
    Family::counter(
        "tsbridge_srt_reader_packets_sent_total",
        "packets sent to the stream's SRT readers, retransmissions included",
        |f| f.reader_totals.packets_sent,
    ),
    Family::counter(
        "tsbridge_srt_reader_bytes_sent_total",
        "payload bytes sent to the stream's SRT readers",
        |f| f.reader_totals.bytes_sent,
    ),
    Family::counter(
        "tsbridge_srt_reader_lost_total",
        "packets the stream's SRT readers reported missing (then sent again unless too late)",
        |f| f.reader_totals.lost,
    ),
    Family::counter(
        "tsbridge_srt_reader_retransmitted_total",
        "packets sent again to the stream's SRT readers (ARQ)",
        |f| f.reader_totals.retransmitted,
    ),
    Family::counter(
        "tsbridge_srt_reader_dropped_total",
        "packets for the stream's SRT readers given up on: too late to send within the latency",
        |f| f.reader_totals.dropped,
    ),
    Family::gauge(
        "tsbridge_srt_reader_rtt_milliseconds",
        "largest round trip time among the stream's connected SRT readers",
        |f| f.reader_rtt_max_ms,
    ),
    Family::gauge(
        "tsbridge_srt_reader_send_buffer_milliseconds",
        "largest send-buffer backlog among the stream's connected SRT readers",
        |f| f.reader_send_buffer_max_ms,
    ),
    Family::counter(
        "tsbridge_whip_packets_total",
        "video RTP packets of the stream's WHIP publisher (duplicates included)",
        |f| f.whip.packets,
    ),
    Family::counter(
        "tsbridge_whip_lost_total",
        "video RTP packets of a WHIP publisher given up on: missing at their --whip-jitter-ms \
         deadline",
        |f| f.whip.lost,
    ),
    Family::counter(
        "tsbridge_whip_late_total",
        "video RTP packets of a WHIP publisher that came after they were given up on",
        |f| f.whip.late,
    ),
    Family::counter(
        "tsbridge_whip_recovered_total",
        "video RTP packets of a WHIP publisher that filled a hole in time (reordered, or resent \
         after a NACK)",
        |f| f.whip.recovered,
    ),
    Family::counter(
        "tsbridge_whip_skipped_frames_total",
        "video frames of a WHIP publisher dropped while waiting for a keyframe after a loss",
        |f| f.whip.skipped_frames,
    ),
    Family::counter(
        "tsbridge_whip_nacks_total",
        "NACKs sent to the stream's WHIP publisher",
        |f| f.whip.nacks,
    ),
    Family::counter(
        "tsbridge_whip_plis_total",
        "keyframe requests (PLI) sent to the stream's WHIP publisher",
        |f| f.whip.plis,
    ),
    Family::counter(
        "tsbridge_whip_audio_lost_total",
        "audio RTP packets of a WHIP publisher given up on (audio is not NACKed)",
        |f| f.whip.audio_lost,
    ),
    Family::gauge(
        "tsbridge_whip_jitter_delay_milliseconds",
        "the hold of the WHIP publisher's jitter buffer now (between --whip-jitter-ms MIN and \
         MAX)",
        |f| f.whip.delay_ms,
    ),
    Family::counter(
        "tsbridge_video_frames_decoded_total",
        "pictures the video re-encoder decoded (B-frame sources)",
        |f| get(&f.s.stats.reencode_decoded),
    ),
    Family::counter(
        "tsbridge_video_frames_encoded_total",
        "pictures the video re-encoder encoded",
        |f| get(&f.s.stats.reencode_encoded),
    ),
    Family::counter(
        "tsbridge_video_transcode_errors_total",
        "video re-encoder errors: decoder restarts, encoder failures, pictures dropped behind",
        |f| get(&f.s.stats.reencode_errors),
    ),
    Family::counter(
        "tsbridge_video_transcode_cpu_seconds_total",
        "CPU time of the video re-encoder's thread",
        |f| get(&f.s.stats.reencode_us) / 1_000_000,
    ),
];

/// This node's part in the cluster (only with `--cluster`).
const CLUSTER: &[Family<ClusterStats>] = &[
    Family::counter(
        "tsbridge_cluster_pulls_total",
        "TS pulls this edge started from streams' owners",
        |c| get(&c.pulls_started),
    ),
    Family::counter(
        "tsbridge_cluster_redirects_total",
        "WHEP POSTs sent to another node (307) because this one was full",
        |c| get(&c.redirects),
    ),
    Family::counter(
        "tsbridge_cluster_redis_errors_total",
        "Redis commands that failed or timed out",
        |c| get(&c.redis_errors),
    ),
    Family::counter(
        "tsbridge_cluster_forged_records_total",
        "records in Redis that did not verify with the cluster token (ignored)",
        |c| get(&c.forged_records),
    ),
    Family::counter(
        "tsbridge_cluster_redis_data_lost_total",
        "times Redis was seen to have lost its data (registered keys gone)",
        |c| get(&c.redis_data_lost),
    ),
];

/// The event hook's delivery (`--event-hook`).
const EVENTS: &[Family<EventStats>] = &[
    Family::counter(
        "tsbridge_events_delivered_total",
        "events the event hook took",
        |e| get(&e.delivered),
    ),
    Family::counter(
        "tsbridge_events_failed_total",
        "events given up on after retries (the hook refused or was down)",
        |e| get(&e.failed),
    ),
    Family::counter(
        "tsbridge_events_dropped_total",
        "events dropped on a full queue (the hook too slow)",
        |e| get(&e.dropped),
    ),
];
