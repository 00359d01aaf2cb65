//! `GET /streams`, `GET /streams/{s}` (JSON) and `GET /streams/{s}.ts` (raw TS pull).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::{self, Action, Caller, Protocol};
use super::{check_name, ApiError, AppState};
use crate::codec::reencode::OUTPUT as REENCODED_TO;
use crate::codec::reorder::{B_FRAMES_ADVICE, B_FRAMES_REENCODED};
use crate::stream::ring::Read;
use crate::stream::starts::no_keyframes_reencoded;
use crate::stream::{Reencode, ReencodeWhy, Status, Stream, VideoProfile};
use crate::ts::start::StartPoint;
use crate::ts::{Codec, ProgramChoice, TrackInfo, TrackSet};

/// `GET /streams`: the streams the caller may see (a registered stream with its own view key
/// only to a holder of that key or the admin).
pub async fn list(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    auth::check(&app, &caller, Action::Api, Protocol::Api, None).await?;
    let internal = auth::node(&app, &caller);
    let mut streams = Vec::new();
    for s in app.registry.list() {
        // A name whose keys cannot be read now (Redis away) is left out.
        if matches!(
            auth::tokens_allow(&app, &caller, Action::Api, Some(&s.name)).await,
            Ok(true)
        ) {
            streams.push(describe(&app, &s, internal));
        }
    }
    Ok(Json(json!({ "streams": streams })))
}

pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if let Some(base) = name.strip_suffix(".ts") {
        check_name(base)?;
        // Another node's pull (or the admin), else a viewer's.
        if !auth::node(&app, &caller) {
            auth::check(&app, &caller, Action::View, Protocol::Ts, Some(base)).await?;
        }
        return pull(&app, base);
    }
    check_name(&name)?;
    auth::check(&app, &caller, Action::Api, Protocol::Api, Some(&name)).await?;
    let stream = app
        .registry
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no stream {name:?}")))?;
    let internal = auth::node(&app, &caller);
    Ok(Json(describe(&app, &stream, internal)).into_response())
}

/// Who plays H.265, for the API.
const H265_NOTE: &str = "H.265 goes to viewers whose offer has H.265 (Chrome 136+ with a \
     hardware decoder, Safari, GStreamer); other viewers get the stream's other tracks";

/// One track of a PMT as JSON; codec details come from `st`, the status of the stream that
/// demuxes its program (none for a program nobody watches).
fn track_json(s: &Stream, st: &Status, t_set: &TrackSet, t: &TrackInfo) -> Value {
    let mut v = json!({
        "pid": t.pid.0,
        "stream_type": t.stream_type.0,
        "codec": t.codec_name(),
    });
    match &t.codec {
        Codec::H264 | Codec::H265 => {
            v["kind"] = "video".into();
            // A program may have both; viewers get the first H.264 track, else H.265.
            let sent = t_set.video().is_some_and(|sent| sent.pid == t.pid);
            v["playable"] = sent.into();
            if !sent {
                v["reason"] = "another video track of the program is sent".into();
                return v;
            }
            match st.video.map(|vi| (vi, vi.profile)) {
                Some((vi, VideoProfile::H264(p))) => {
                    v["profile_level_id"] = p.to_string().into();
                    v["width"] = vi.width.into();
                    v["height"] = vi.height.into();
                }
                Some((vi, VideoProfile::H265(p))) => {
                    v["profile_id"] = p.profile_id.into();
                    v["tier_flag"] = u8::from(p.tier_flag).into();
                    v["level_id"] = p.level_id.into();
                    v["width"] = vi.width.into();
                    v["height"] = vi.height.into();
                }
                None => {}
            }
            if t.codec == Codec::H265 {
                v["note"] = H265_NOTE.into();
            }
            v["b_frames"] = st.b_frames.into();
            let bound = s.gop.lock().bound();
            let reencoded = matches!(st.reencode, Reencode::Active(_));
            if let Some(report) = st.start_points.report(bound, reencoded) {
                v["start_points"] = report.into();
            }
            match &st.reencode {
                Reencode::Active(why) => {
                    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                    let cpu = r(&s.stats.reencode_us) as f64 * 100.0
                        / r(&s.stats.reencode_media_us).max(1) as f64;
                    v["transcoded_to"] = REENCODED_TO.into();
                    v["transcode_reason"] = match why {
                        ReencodeWhy::BFrames => B_FRAMES_REENCODED.to_string(),
                        ReencodeWhy::NoKeyframes => no_keyframes_reencoded(bound),
                    }
                    .into();
                    v["transcoder_cpu_pct"] = ((cpu * 100.0).round() / 100.0).into();
                    v["transcode_errors"] = r(&s.stats.reencode_errors).into();
                    v["frames_decoded"] = r(&s.stats.reencode_decoded).into();
                    v["frames_encoded"] = r(&s.stats.reencode_encoded).into();
                    v["keyframes_on_request"] = r(&s.stats.reencode_keyframes).into();
                }
                Reencode::Unsupported(why) => {
                    if st.b_frames {
                        v["warning"] = B_FRAMES_ADVICE.into();
                    }
                    v["transcode_error"] = why.as_ref().into();
                }
                Reencode::Off if st.b_frames => v["warning"] = B_FRAMES_ADVICE.into(),
                Reencode::Off => {}
            }
        }
        Codec::Opus { channels } => {
            v["kind"] = "audio".into();
            v["playable"] = true.into();
            v["channels"] = (*channels).into();
        }
        Codec::Unsupported { .. }
            if st.transcoding.is_some() && crate::ts::transcodable_audio(t_set) == Some(t.pid) =>
        {
            let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let media_us = r(&s.stats.audio_packets) * 20_000;
            let cpu = r(&s.stats.transcode_us) as f64 * 100.0 / media_us.max(1) as f64;
            v["kind"] = "audio".into();
            v["playable"] = true.into();
            v["transcoded_to"] = "Opus".into();
            v["transcoder_cpu_pct"] = ((cpu * 100.0).round() / 100.0).into();
            v["transcode_errors"] = r(&s.stats.transcode_errors).into();
        }
        Codec::Unsupported { reason } => {
            v["playable"] = false.into();
            v["reason"] = (*reason).into();
        }
    }
    v
}

/// Every program of the stream's TS: its tracks, viewers, and the URLs that play it.
fn programs_json(s: &Arc<Stream>, st: &Status) -> Vec<Value> {
    let Some(programs) = &st.programs else {
        return Vec::new();
    };
    let demuxed = s.programs();
    let n = &s.name;
    programs
        .iter()
        .map(|t_set| {
            let number = t_set.program_number;
            let followed = st
                .tracks
                .as_ref()
                .is_some_and(|t| t.program_number == number);
            let own = demuxed
                .iter()
                .find(|p| p.program_choice() == ProgramChoice::Number(number));
            let (src, src_status) = match own {
                _ if followed => (s, st.clone()),
                Some(p) => (p, p.status()),
                None => (s, Status::unknown()),
            };
            let tracks: Vec<Value> = t_set
                .tracks
                .iter()
                .map(|t| track_json(src, &src_status, t_set, t))
                .collect();
            let viewers = match own {
                _ if followed => s.stats.viewers.load(Ordering::Relaxed),
                Some(p) => p.stats.viewers.load(Ordering::Relaxed),
                None => 0,
            };
            json!({
                "number": number,
                "pmt_pid": t_set.pmt_pid.0,
                "followed": followed,
                "tracks": tracks,
                "viewers": viewers,
                "urls": {
                    "whep": format!("/whep/{n}?program={number}"),
                    "play": format!("/play/{n}?program={number}"),
                },
            })
        })
        .collect()
}

/// A stream as JSON; `internal` (the admin, another node) adds the node it is pulled from.
fn describe(app: &AppState, s: &Arc<Stream>, internal: bool) -> Value {
    let st = s.status();
    let tracks: Vec<Value> = st
        .tracks
        .as_ref()
        .map(|t_set| {
            t_set
                .tracks
                .iter()
                .map(|t| track_json(s, &st, t_set, t))
                .collect()
        })
        .unwrap_or_default();
    let programs = programs_json(s, &st);
    let viewers = s.stats.viewers.load(Ordering::Relaxed)
        + s.programs()
            .iter()
            .map(|p| p.stats.viewers.load(Ordering::Relaxed))
            .sum::<usize>();
    let n = &s.name;
    let gop = {
        let g = s.gop.lock();
        json!({
            "frames": g.frames(),
            "bytes": g.bytes(),
            "seconds": g.duration_90k() as f64 / 90_000.0,
            "starts_at": g.lead().map(|l| l.name()),
            "max_seconds": g.bound().seconds(),
            "max_bytes": g.bound().bytes,
            "overflows": g.overflows(),
        })
    };
    // On an edge of a cluster: "pull", and (for the admin) the owner it is pulled from.
    let pulled = app.cluster.as_ref().and_then(|c| c.pulled_from(n));
    let source = match &pulled {
        Some(_) => json!("pull"),
        None => json!(st.source),
    };
    let pulled = pulled.filter(|_| internal);
    json!({
        "name": n,
        "source": source,
        "owner": pulled,
        "ts_readers": s.stats.ts_readers.load(Ordering::Relaxed),
        "ts_bytes_sent": s.stats.ts_bytes_sent.load(Ordering::Relaxed),
        "ready": st.ready,
        "program": st.tracks.as_ref().map(|t| t.program_number),
        "tracks": tracks,
        "programs": programs,
        "viewers": viewers,
        "waiting_viewers": s.stats.waiting_viewers.load(Ordering::Relaxed),
        "sessions_total": s.stats.sessions_total.load(Ordering::Relaxed),
        "ingest_bytes": s.stats.ingest_bytes.load(Ordering::Relaxed),
        "ingest_kbps": s.stats.ingest_kbps.load(Ordering::Relaxed),
        "video_frames": s.stats.video_frames.load(Ordering::Relaxed),
        "audio_packets": s.stats.audio_packets.load(Ordering::Relaxed),
        "ts_problems": s.stats.ts_problems.load(Ordering::Relaxed),
        "gop_cache": gop,
        "urls": {
            "whep": format!("/whep/{n}"),
            "play": format!("/play/{n}"),
            "ts": format!("/streams/{n}.ts"),
        },
    })
}

/// The stream's TS, from the live edge: it starts with the latest PAT and PMT and the next IDR
/// (bytes before are held back), so a decoder or pipeline can start at once. Ends when the
/// source ends.
fn pull(app: &AppState, name: &str) -> Result<Response, ApiError> {
    check_name(name)?;
    let stream = app
        .registry
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no stream {name:?}")))?;
    let cursor = stream.ring.cursor();
    let start = StartPoint::new();
    let reader = TsReader::new(stream);
    let body = futures_util::stream::unfold(
        (reader, cursor, start, vec![0u8; 188 * 512]),
        |(reader, mut cur, mut start, mut buf)| async move {
            let stream = &reader.0;
            loop {
                match stream.ring.read(&mut cur, &mut buf).await {
                    Read::Data(n) => {
                        let mut out = Vec::new();
                        start.push(&buf[..n], &mut out);
                        if out.is_empty() {
                            continue;
                        }
                        let chunk = Bytes::from(out);
                        let sent = &stream.stats.ts_bytes_sent;
                        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        return Some((Ok::<_, std::io::Error>(chunk), (reader, cur, start, buf)));
                    }
                    Read::Lapped(_) => continue,
                    Read::EndOfInput | Read::Shutdown => return None,
                }
            }
        },
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "video/mp2t")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Counts a TS pull reader of a stream for as long as its response lives.
struct TsReader(Arc<Stream>);

impl TsReader {
    fn new(s: Arc<Stream>) -> Self {
        s.stats.ts_readers.fetch_add(1, Ordering::Relaxed);
        TsReader(s)
    }
}

impl Drop for TsReader {
    fn drop(&mut self) {
        self.0.stats.ts_readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /cluster`: the nodes of this node's cluster, with their load and streams.
/// The nodes' internal URLs: for the nodes (`--cluster-token`) and the admin only.
pub async fn cluster(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    if !auth::node(&app, &caller) {
        return Err(ApiError::Unauthorized("cluster or admin"));
    }
    let Some(c) = &app.cluster else {
        return Err(ApiError::NotFound(
            "this node is not in a cluster (--cluster redis://…)".into(),
        ));
    };
    let nodes = c
        .nodes()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({
        "node": c.id,
        "url": c.url,
        "redis": if c.is_up() { "up" } else { "down" },
        "nodes": nodes,
    })))
}

/// `GET /metrics`: Prometheus text exposition, global and per stream.
pub async fn metrics(State(app): State<AppState>, caller: Caller) -> Response {
    use crate::metrics::{counter, gauge};
    if let Err(e) = auth::metrics(&app, &caller) {
        return e.into_response();
    }
    let mut out = String::new();
    app.engine.metrics.render(&mut out);
    let streams = app.registry.list();
    let labels: Vec<String> = streams
        .iter()
        .map(|s| format!("stream=\"{}\"", s.name))
        .collect();
    let per = |f: &dyn Fn(&Stream) -> u64| -> Vec<(&str, u64)> {
        labels
            .iter()
            .zip(&streams)
            .map(|(l, s)| (l.as_str(), f(s)))
            .collect()
    };
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        &mut out,
        "tsbridge_streams",
        "streams known",
        &[("", streams.len() as u64)],
    );
    gauge(
        &mut out,
        "tsbridge_viewers",
        "viewers connected",
        &per(&|s| s.stats.viewers.load(Ordering::Relaxed) as u64),
    );
    gauge(
        &mut out,
        "tsbridge_waiting_viewers",
        "WHEP POSTs waiting for the stream",
        &per(&|s| s.stats.waiting_viewers.load(Ordering::Relaxed) as u64),
    );
    gauge(
        &mut out,
        "tsbridge_source_live",
        "1 while a source is writing",
        &per(&|s| u64::from(s.has_source())),
    );
    counter(
        &mut out,
        "tsbridge_ingest_bytes_total",
        "TS bytes received from sources",
        &per(&|s| r(&s.stats.ingest_bytes)),
    );
    counter(
        &mut out,
        "tsbridge_ts_errors_total",
        "TS problems (resyncs, CC errors, bad PSI/PES)",
        &per(&|s| r(&s.stats.ts_problems)),
    );
    counter(
        &mut out,
        "tsbridge_video_frames_total",
        "video access units demuxed",
        &per(&|s| r(&s.stats.video_frames)),
    );
    counter(
        &mut out,
        "tsbridge_audio_packets_total",
        "Opus packets demuxed",
        &per(&|s| r(&s.stats.audio_packets)),
    );
    counter(
        &mut out,
        "tsbridge_stream_packets_sent_total",
        "datagrams sent to the stream's viewers",
        &per(&|s| r(&s.stats.packets_sent)),
    );
    counter(
        &mut out,
        "tsbridge_stream_bytes_sent_total",
        "bytes sent to the stream's viewers",
        &per(&|s| r(&s.stats.bytes_sent)),
    );
    counter(
        &mut out,
        "tsbridge_stream_slow_viewer_skips_total",
        "times a viewer of the stream fell behind and was moved on to the next keyframe",
        &per(&|s| r(&s.stats.slow_viewer_skips)),
    );
    counter(
        &mut out,
        "tsbridge_viewer_sessions_total",
        "viewer sessions created",
        &per(&|s| r(&s.stats.sessions_total)),
    );
    for (name, help, f) in [
        (
            "tsbridge_video_frames_decoded_total",
            "pictures the video re-encoder decoded (B-frame sources)",
            (|s: &Stream| s.stats.reencode_decoded.load(Ordering::Relaxed)) as fn(&Stream) -> u64,
        ),
        (
            "tsbridge_video_frames_encoded_total",
            "pictures the video re-encoder encoded",
            |s: &Stream| s.stats.reencode_encoded.load(Ordering::Relaxed),
        ),
        (
            "tsbridge_video_transcode_errors_total",
            "video re-encoder errors: decoder restarts, encoder failures, pictures dropped behind",
            |s: &Stream| s.stats.reencode_errors.load(Ordering::Relaxed),
        ),
        (
            "tsbridge_video_transcode_cpu_seconds_total",
            "CPU time of the video re-encoder's thread",
            |s: &Stream| s.stats.reencode_us.load(Ordering::Relaxed) / 1_000_000,
        ),
    ] {
        counter(&mut out, name, help, &per(&f));
    }
    if let Some(c) = &app.cluster {
        for (name, help, v) in [
            (
                "tsbridge_cluster_pulls_total",
                "TS pulls this edge started from streams' owners",
                &c.stats.pulls_started,
            ),
            (
                "tsbridge_cluster_redirects_total",
                "WHEP POSTs sent to another node (307) because this one was full",
                &c.stats.redirects,
            ),
            (
                "tsbridge_cluster_redis_errors_total",
                "Redis commands that failed or timed out",
                &c.stats.redis_errors,
            ),
            (
                "tsbridge_cluster_forged_records_total",
                "records in Redis that did not verify with the cluster token (ignored)",
                &c.stats.forged_records,
            ),
            (
                "tsbridge_cluster_redis_data_lost_total",
                "times Redis was seen to have lost its data (registered keys gone)",
                &c.stats.redis_data_lost,
            ),
        ] {
            counter(&mut out, name, help, &[("", r(v))]);
        }
    }
    let ev = &app.engine.events.stats;
    for (name, help, v) in [
        (
            "tsbridge_events_delivered_total",
            "events the event hook took",
            &ev.delivered,
        ),
        (
            "tsbridge_events_failed_total",
            "events given up on after retries (the hook refused or was down)",
            &ev.failed,
        ),
        (
            "tsbridge_events_dropped_total",
            "events dropped on a full queue (the hook too slow)",
            &ev.dropped,
        ),
    ] {
        counter(&mut out, name, help, &[("", r(v))]);
    }
    gauge(
        &mut out,
        "tsbridge_gop_cache_bytes",
        "bytes in the GOP cache",
        &per(&|s| s.gop.lock().bytes() as u64),
    );
    gauge(
        &mut out,
        "tsbridge_gop_cache_frames",
        "frames in the GOP cache",
        &per(&|s| s.gop.lock().frames() as u64),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
