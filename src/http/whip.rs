//! WHIP (RFC 9725): `POST /whip/{s}` takes a publisher's offer; its media is muxed into TS and
//! becomes the stream (or, with `--pipeline`, the pipeline's input). `PATCH`/`DELETE` on the
//! session go through the same handlers as WHEP's.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::whep::{
    delete_session, header_value, patch_session, read_offer, session_id, session_url, SDP,
};
use super::{authorize, ApiError, AppState, Role};
use crate::webrtc::{Answered, OfferError};

pub async fn options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, POST"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "OPTIONS, POST"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Content-Type, Authorization, If-Match",
            ),
            (HeaderName::from_static("accept-post"), SDP),
        ],
    )
        .into_response()
}

pub async fn post(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let offer = read_offer(&app, &name, &headers, &body, Role::Publish)?;
    let input_name = match app.cfg.pipeline {
        Some(_) => crate::pipeline::input_name(&name),
        None => name.clone(),
    };
    // With a pipeline, the output name must not be fed by something else either.
    let output_taken = app.cfg.pipeline.is_some()
        && !app.pipeline_running(&name)
        && app.registry.get(&name).is_some_and(|s| s.has_source());
    let stream = app.registry.get_or_create(&input_name);
    if stream.has_source() || output_taken {
        return Err(ApiError::Conflict(format!(
            "stream {name:?} already has a publisher (or another source); DELETE that session \
             first, or publish under another name"
        )));
    }
    let guard = stream.attach_source();
    let id = session_id();
    let Answered {
        session,
        answer,
        ufrag,
    } = app
        .engine
        .accept_publisher(session_url(name.clone(), id.clone(), true), guard, offer)
        .map_err(|e| match e {
            OfferError::NoPublishableMedia { .. } => ApiError::NotAcceptable(e.to_string()),
            e => ApiError::BadRequest(e.to_string()),
        })?;
    if app.cfg.pipeline.is_some() {
        app.ensure_pipeline(&name, &stream);
    }
    app.engine.add(session);
    info!(stream = %name, "WHIP publisher answered");

    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let playback = format!("http://{host}/whep/{name}");
    let mut res = (StatusCode::CREATED, answer).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert(
        header::LOCATION,
        header_value(&format!("/whip/{name}/{id}")),
    );
    h.insert(header::ETAG, header_value(&format!("\"{ufrag}\"")));
    h.insert(
        HeaderName::from_static("playback-url"),
        header_value(&playback),
    );
    for server in &app.cfg.ice_servers {
        h.append(
            header::LINK,
            header_value(&format!("<{server}>; rel=\"ice-server\"")),
        );
    }
    Ok(res)
}

pub async fn patch(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, Role::Publish)?;
    patch_session(&app, session_url(name, id, true), &headers, body).await
}

pub async fn delete(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&app, &headers, Role::Publish)?;
    delete_session(&app, session_url(name, id, true)).await
}
