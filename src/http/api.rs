//! `GET /streams`, `GET /streams/{s}` (JSON) and `GET /streams/{s}.ts` (raw TS pull).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{authorize, check_name, ApiError, AppState, Role};
use crate::stream::ring::Read;
use crate::stream::Stream;
use crate::ts::start::StartPoint;
use crate::ts::Codec;

pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers, Role::View)?;
    let streams: Vec<Value> = app
        .registry
        .list()
        .iter()
        .map(|s| describe(&app, s))
        .collect();
    Ok(Json(json!({ "streams": streams })))
}

pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, Role::View)?;
    if let Some(base) = name.strip_suffix(".ts") {
        return pull(&app, base);
    }
    check_name(&name)?;
    let stream = app
        .registry
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no stream {name:?}")))?;
    Ok(Json(describe(&app, &stream)).into_response())
}

fn describe(app: &AppState, s: &Arc<Stream>) -> Value {
    let st = s.status();
    let tracks: Vec<Value> = st
        .tracks
        .as_ref()
        .map(|t| {
            t.tracks
                .iter()
                .map(|t| {
                    let mut v = json!({
                        "pid": t.pid.0,
                        "stream_type": t.stream_type.0,
                        "codec": t.codec_name(),
                    });
                    match &t.codec {
                        Codec::H264 => {
                            v["kind"] = "video".into();
                            v["playable"] = true.into();
                            if let Some(vi) = st.video {
                                v["profile_level_id"] = vi.profile_level_id.to_string().into();
                                v["width"] = vi.width.into();
                                v["height"] = vi.height.into();
                            }
                        }
                        Codec::Opus { channels } => {
                            v["kind"] = "audio".into();
                            v["playable"] = true.into();
                            v["channels"] = (*channels).into();
                        }
                        Codec::Unsupported { reason } => {
                            v["playable"] = false.into();
                            v["reason"] = (*reason).into();
                        }
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    let n = &s.name;
    let gop = {
        let g = s.gop.lock();
        json!({
            "frames": g.frames(),
            "bytes": g.bytes(),
            "seconds": g.duration_90k() as f64 / 90_000.0,
        })
    };
    json!({
        "name": n,
        "source": st.source,
        "ready": st.ready,
        "tracks": tracks,
        "viewers": s.stats.viewers.load(Ordering::Relaxed),
        "waiting_viewers": s.stats.waiting_viewers.load(Ordering::Relaxed),
        "sessions_total": s.stats.sessions_total.load(Ordering::Relaxed),
        "ingest_bytes": s.stats.ingest_bytes.load(Ordering::Relaxed),
        "ingest_kbps": app.ingest_kbps(s.id),
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
    let body = futures_util::stream::unfold(
        (stream, cursor, start, vec![0u8; 188 * 512]),
        |(stream, mut cur, mut start, mut buf)| async move {
            loop {
                match stream.ring.read(&mut cur, &mut buf).await {
                    Read::Data(n) => {
                        let mut out = Vec::new();
                        start.push(&buf[..n], &mut out);
                        if out.is_empty() {
                            continue;
                        }
                        let chunk = Bytes::from(out);
                        return Some((Ok::<_, std::io::Error>(chunk), (stream, cur, start, buf)));
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
