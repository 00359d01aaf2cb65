//! `GET /streams`, `GET /streams/{s}` (JSON) and `GET /streams/{s}.ts` (raw TS pull).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{check_name, ApiError, AppState};
use crate::stream::ring::Read;
use crate::stream::Stream;
use crate::ts::Codec;

pub async fn list(State(app): State<AppState>) -> Json<Value> {
    let streams: Vec<Value> = app
        .registry
        .list()
        .iter()
        .map(|s| describe(&app, s))
        .collect();
    Json(json!({ "streams": streams }))
}

pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
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

/// The stream's TS as it arrives, from the live edge (a TS reader resyncs on 0x47 and waits
/// for the next PAT/PMT). Ends when the source ends.
fn pull(app: &AppState, name: &str) -> Result<Response, ApiError> {
    check_name(name)?;
    let stream = app
        .registry
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no stream {name:?}")))?;
    let cursor = stream.ring.cursor();
    let body = futures_util::stream::unfold(
        (stream, cursor, vec![0u8; 188 * 512]),
        |(stream, mut cur, mut buf)| async move {
            loop {
                match stream.ring.read(&mut cur, &mut buf).await {
                    Read::Data(n) => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        return Some((Ok::<_, std::io::Error>(chunk), (stream, cur, buf)));
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
