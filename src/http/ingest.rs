//! `PUT /ingest/{s}`: MPEG-TS pushed in a (usually chunked) request body.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::auth::{self, Action, Caller, Protocol};
use super::{check_name, ApiError, AppState};

pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    body: Body,
) -> Result<(StatusCode, String), ApiError> {
    check_name(&name)?;
    super::session::publishable(&app, &name)?;
    auth::check(
        &app,
        &caller,
        Action::Publish,
        Protocol::Ingest,
        Some(&name),
    )
    .await?;
    // The stream limit before the claim: a refused source claims nothing cluster-wide.
    let full = |e: crate::stream::StreamsFull| ApiError::Unavailable(e.to_string());
    app.registry.has_room_for(&name).map_err(full)?;
    super::session::claim(&app, &name).await?;
    let stream = app.registry.try_get_or_create(&name).map_err(full)?;
    if stream.has_source() {
        return Err(ApiError::Conflict(format!(
            "stream {name:?} already has a source; stop it first or use another name"
        )));
    }
    let guard = stream.attach_source();
    info!(stream = %name, "HTTP ingest started");
    let before = stream.stats.ingest_bytes.load(Ordering::Relaxed);
    let mut body = body.into_data_stream();
    // A source that sends nothing for --ingest-idle is taken for gone (a connection that died
    // without a close, which TCP keepalive finds only later): its name is freed.
    let idle = app.cfg.ingest_idle;
    let silent = tokio::time::sleep(idle);
    tokio::pin!(silent);
    let mut timed_out = false;
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            () = stream.evicted() => {
                info!(stream = %name, "HTTP ingest cut off: the stream was deleted");
                break;
            }
            () = &mut silent, if !idle.is_zero() => {
                info!(stream = %name, idle_s = idle.as_secs_f64(),
                    "HTTP ingest ended: no data for --ingest-idle; the name is free for the next source");
                timed_out = true;
                break;
            }
        };
        let Some(chunk) = chunk else { break };
        match chunk {
            Ok(bytes) => {
                if !bytes.is_empty() {
                    silent.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                guard.write(&bytes)
            }
            Err(e) => {
                warn!(stream = %name, error = %e, "HTTP ingest body ended with an error");
                break;
            }
        }
    }
    drop(guard);
    let n = stream.stats.ingest_bytes.load(Ordering::Relaxed) - before;
    info!(stream = %name, bytes = n, "HTTP ingest ended");
    if timed_out {
        let why = format!(
            "{n} bytes received, then nothing for {} s (--ingest-idle): ingest ended\n",
            idle.as_secs_f64()
        );
        return Ok((StatusCode::REQUEST_TIMEOUT, why));
    }
    Ok((StatusCode::OK, format!("{n} bytes received\n")))
}
