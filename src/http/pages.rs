//! `GET /` (streams with links) and `GET /play/{s}` (a WHEP player): plain HTML + JS.

use axum::extract::{Path, State};
use axum::response::Html;
use serde_json::json;

use super::{check_name, ApiError, AppState};

pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

pub async fn play(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Html<String>, ApiError> {
    page(&app, include_str!("play.html"), &name)
}

pub async fn publish(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Html<String>, ApiError> {
    page(&app, include_str!("publish.html"), &name)
}

/// A page for stream `name`, with the ICE servers (and trickle ICE) of `ice.js`.
fn page(app: &AppState, html: &str, name: &str) -> Result<Html<String>, ApiError> {
    check_name(name)?;
    // The name is [A-Za-z0-9._-] only: safe to put into the page as is.
    let ice = include_str!("ice.js").replace("{{ICE_SERVERS}}", &ice_servers_json(app));
    Ok(Html(
        html.replace("{{ICE_JS}}", &ice).replace("{{STREAM}}", name),
    ))
}

/// The STUN servers of `--ice-server` as RTCIceServer objects, safe inside a <script>. The
/// page is served to anyone: TURN servers and their credentials reach it only from an
/// authorised `OPTIONS` or POST (`Link` headers).
fn ice_servers_json(app: &AppState) -> String {
    let servers: Vec<_> = app
        .cfg
        .ice_servers
        .iter()
        .filter(|url| !url.starts_with("turn"))
        .map(|url| json!({ "urls": url }))
        .collect();
    serde_json::Value::from(servers)
        .to_string()
        .replace('<', "\\u003c")
}
