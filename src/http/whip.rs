//! WHIP (RFC 9725): `POST /whip/{s}` takes a publisher's offer; its media is muxed into TS and
//! becomes the stream (or, with `--pipeline`, the pipeline's input). `PATCH`/`DELETE` on the
//! session go through the same handlers as WHEP's.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::auth::{self, Action, Caller, Protocol};
use super::session::{
    claim, delete_session, elsewhere, header_value, ice_server_links, patch_session, read_offer,
    session_id, session_started, session_url, SDP,
};
use super::{ApiError, AppState};
use crate::webrtc::{Answered, OfferError};

pub async fn post(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    super::session::publishable(&app, &name)?;
    let who = (&caller, Action::Publish, Protocol::Whip);
    let offer = match read_offer(&app, who, &name, &headers, &body).await {
        // A full node sends the publisher to one with room.
        Err(full @ ApiError::Unavailable(_)) => {
            return Err(elsewhere(&app, ("whip", &name), &caller, full).await)
        }
        r => r?,
    };
    let pipelined = app.pipelines.enabled();
    let input_name = if pipelined {
        crate::pipeline::input_name(&name)
    } else {
        name.clone()
    };
    // With a pipeline, the output name must not be fed by something else either.
    let output_taken = pipelined
        && !app.pipelines.running(&name)
        && app.registry.get(&name).is_some_and(|s| s.has_source());
    // Limits before the claim: a refused publisher claims nothing cluster-wide.
    let full = |e: crate::stream::StreamsFull| ApiError::Unavailable(e.to_string());
    app.registry.has_room_for(&input_name).map_err(full)?;
    let ip_slot = app
        .per_ip
        .sessions
        .acquire(caller.ip)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    claim(&app, &name).await?;
    let stream = app.registry.try_get_or_create(&input_name).map_err(full)?;
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
    app.pipelines.ensure(&name, &stream);
    let mut session = session;
    session.client_ip = caller.ip;
    session.ip_slot = ip_slot;
    app.engine.add(session);
    session_started(&app, &name, &id, "publisher", &caller);
    info!(stream = %name, "WHIP publisher answered");

    let base = caller.base_url();
    let playback = format!("{base}/whep/{name}");
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
    ice_server_links(&app, h, &name);
    Ok(res)
}

pub async fn patch(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::check(&app, &caller, Action::Publish, Protocol::Whip, Some(&name)).await?;
    patch_session(&app, session_url(name, id, true), &headers, body).await
}

pub async fn delete(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    auth::check(&app, &caller, Action::Publish, Protocol::Whip, Some(&name)).await?;
    delete_session(&app, session_url(name, id, true)).await
}
