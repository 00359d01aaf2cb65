//! Health for orchestrators (Kubernetes probes, compose, systemd, load balancers), no token:
//! `GET /healthz` says the process serves HTTP; `GET /readyz` whether it should get new
//! viewers and sources — not while it drains (SIGTERM in a cluster), nor while the cluster's
//! Redis is out of reach (its claims and keys could not be checked).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// `GET /healthz`: 200 while the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when ready for new sessions, else 503 with why.
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let why = match &app.cluster {
        Some(c) if c.is_draining() => Some("draining: viewers are moving to other nodes"),
        Some(c) if !c.is_up() => Some("the cluster's Redis is out of reach"),
        _ => None,
    };
    match why {
        None => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "why": why })),
        ),
    }
}
