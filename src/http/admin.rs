//! The admin API (`--admin-token`): streams registered with their own keys, and the sessions
//! of a stream.
//!
//! - `POST /streams/{s}`: register (201 with the keys and URLs; 409 when it is registered).
//! - `DELETE /streams/{s}`: end its source and sessions, forget it and its keys.
//! - `GET /streams/{s}/sessions`: who is connected, with RTCP loss/RTT and bytes sent.
//! - `DELETE /streams/{s}/sessions/{id}`: end one (the peer is told, as on a client DELETE).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::auth::{self, Caller};
use super::{check_name, ApiError, AppState};
use crate::config::valid_srt_passphrase;
use crate::keys::{new_token, KeyError, StreamKeys};
use crate::webrtc::SessionUrl;

/// The body of a registration (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    /// Given, or made (128 random bits).
    publish_token: Option<String>,
    /// A string, `true` to have one made, or absent/null: viewing then takes the server's
    /// `--view-token` (if any).
    #[serde(default)]
    view_token: Option<Value>,
    /// The stream's own SRT passphrase (10 to 79 characters, as libsrt takes), `true` to have
    /// one made, or absent/null: `--srt-passphrase` (if any) applies to it.
    #[serde(default)]
    srt_passphrase: Option<Value>,
}

pub async fn register(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::admin(&app, &caller)?;
    check_name(&name)?;
    let req: Register = if body.iter().all(u8::is_ascii_whitespace) {
        Register::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("registration body: {e}")))?
    };
    let token = |t: String| -> Result<String, ApiError> {
        if t.len() < 8 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::BadRequest(
                "a token is at least 8 visible ASCII characters".into(),
            ));
        }
        Ok(t)
    };
    let view_token = match req.view_token {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(new_token()),
        Some(Value::String(s)) => Some(token(s)?),
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "view_token: a string, true or null, not {v}"
            )))
        }
    };
    let srt_passphrase = match req.srt_passphrase {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(new_token()),
        Some(Value::String(s)) if valid_srt_passphrase(&s) && !s.contains('\0') => Some(s),
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "srt_passphrase: 10 to 79 characters (libsrt's rule), true or null, not {v}"
            )))
        }
    };
    let publish_token = req
        .publish_token
        .map(token)
        .transpose()?
        .unwrap_or_else(new_token);
    let keys = StreamKeys::new(&publish_token, view_token.as_deref())
        .with_srt_passphrase(srt_passphrase.clone());
    if !app.keys.register(&name, &keys).await.map_err(key_error)? {
        return Err(ApiError::Conflict(format!(
            "stream {name:?} is registered already: DELETE /streams/{name} first to change its keys"
        )));
    }
    let kept_in = app.keys.kept_in();
    info!(stream = %name, kept_in, "stream registered with its own keys");
    let base = caller.base_url();
    let body = json!({
        "stream": name,
        // Shown this once: only their hashes are kept.
        "publish_token": publish_token,
        "view_token": view_token,
        "srt_passphrase": srt_passphrase,
        "persistent": app.keys.persistent(),
        "kept_in": kept_in,
        "urls": {
            "whip": format!("{base}/whip/{name}"),
            "ingest": format!("{base}/ingest/{name}"),
            "whep": format!("{base}/whep/{name}"),
            "play": format!("{base}/play/{name}"),
            "publish": format!("{base}/publish/{name}"),
        },
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn unregister(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&app, &caller)?;
    check_name(&name)?;
    let had_keys = app.keys.remove(&name).await.map_err(key_error)?;
    let stream = app.registry.get(&name);
    if !had_keys && stream.is_none() {
        return Err(ApiError::NotFound(format!("no stream {name:?}")));
    }
    if let Some(s) = &stream {
        s.evict();
    }
    let sessions = app.engine.end_stream(&name).await;
    app.registry.remove(&name);
    info!(stream = %name, sessions, "stream deleted (admin API)");
    Ok(Json(
        json!({ "stream": name, "sessions_ended": sessions, "keys_removed": had_keys }),
    ))
}

/// A key store that could not answer: 503 when the cluster's Redis is away, else 500 (the
/// disk refused a write).
fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Unreachable => ApiError::Unavailable(format!("{e}; retry")),
        KeyError::Save(why) => {
            ApiError::Internal(format!("the registration was not changed: {why}"))
        }
    }
}

pub async fn sessions(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    auth::admin(&app, &caller)?;
    check_name(&name)?;
    let list = app.engine.sessions(&name).await;
    Ok(Json(json!({ "stream": name, "sessions": list })))
}

pub async fn kick(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    auth::admin(&app, &caller)?;
    for publisher in [false, true] {
        let url = SessionUrl {
            id: id.clone(),
            stream: name.clone(),
            publisher,
        };
        if app.engine.end(url, "ended by the admin API").await {
            info!(stream = %name, "session ended by the admin API");
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(ApiError::NotFound(format!(
        "no session {id:?} under stream {name:?}"
    )))
}
