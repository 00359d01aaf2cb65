//! What WHEP and WHIP sessions share: the checks a POST starts with, the answer's headers
//! (`Location`, `ETag`, ICE servers), redirects to a node with room, and `PATCH`/`DELETE`/
//! `OPTIONS`/`HEAD` on endpoints and sessions.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::info;

use super::auth::{self, Action, Caller, Protocol};
use super::{check_name, require_content_type, ApiError, AppState};
use crate::webrtc::{Offer, Patch, PatchError, SdpFrag, SessionUrl};

pub(super) const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// `OPTIONS` on a WHEP endpoint: CORS, `Accept-Post`, and for a caller who may view the
/// stream, its ICE servers (`Link`, TURN credentials included: the player asks here before
/// it makes its peer connection).
pub async fn options_whep(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
) -> Response {
    options(&app, &name, &caller, Action::View).await
}

/// `OPTIONS` on a WHIP endpoint: as on WHEP's, for a caller who may publish.
pub async fn options_whip(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Caller,
) -> Response {
    options(&app, &name, &caller, Action::Publish).await
}

async fn options(app: &AppState, name: &str, caller: &Caller, action: Action) -> Response {
    let mut res = (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, POST"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "OPTIONS, POST"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Content-Type, Authorization, If-Match",
            ),
            (header::HeaderName::from_static("accept-post"), SDP),
        ],
    )
        .into_response();
    // A CORS preflight carries no token: it gets no ICE servers.
    if caller.token.is_some()
        && crate::config::valid_stream_name(name)
        && matches!(
            auth::tokens_allow(app, caller, action, Some(name)).await,
            Ok(true)
        )
    {
        ice_server_links(app, res.headers_mut(), name);
    }
    res
}

/// `OPTIONS` on a WHEP or WHIP session.
pub async fn options_session() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, PATCH, DELETE"),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "OPTIONS, PATCH, DELETE",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Content-Type, Authorization, If-Match",
            ),
            (header::HeaderName::from_static("accept-patch"), SDPFRAG),
        ],
    )
        .into_response()
}

/// `Link: <url>; rel="ice-server"` per `--ice-server` (draft-ietf-wish-whep §4.6, RFC 9725
/// §4.6), only in answers to a caller who passed the stream's checks: clients (and the player
/// and publish pages) take their STUN/TURN servers from there. A TURN server gets credentials
/// minted for this session and `stream` with `--turn-secret`, else the static
/// `--ice-username/--ice-credential`.
pub(super) fn ice_server_links(app: &AppState, h: &mut HeaderMap, stream: &str) {
    let cfg = &app.cfg;
    let minted = cfg.turn_secret.as_deref().map(|secret| {
        crate::webrtc::turn::rest_credentials(secret, stream, cfg.turn_ttl, SystemTime::now())
    });
    for server in &cfg.ice_servers {
        let mut link = format!("<{server}>; rel=\"ice-server\"");
        let creds = match (&minted, &cfg.ice_username, &cfg.ice_credential) {
            (Some((user, cred)), _, _) => Some((user.as_str(), cred.as_str())),
            (None, Some(user), Some(cred)) => Some((user.as_str(), cred.as_str())),
            _ => None,
        };
        if let Some((user, cred)) = creds.filter(|_| server.starts_with("turn")) {
            link += &format!(
                "; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\""
            );
        }
        h.append(header::LINK, header_value(&link));
    }
}

/// Refuses publishing into a pipeline's input `{s}.input` from outside: only the publisher of
/// `{s}` writes it.
pub(super) fn publishable(app: &AppState, name: &str) -> Result<(), ApiError> {
    match name.strip_suffix(crate::pipeline::INPUT_SUFFIX) {
        Some(parent) if app.pipelines.enabled() => Err(ApiError::Forbidden(format!(
            "stream {name:?} is the input of {parent:?}'s pipeline (--pipeline): publish to \
             {parent:?}"
        ))),
        _ => Ok(()),
    }
}

/// A node that cannot take a session sends the client (307) to the same endpoint (`whep` or
/// `whip`) on the least-loaded node of its cluster with room; `full` (503 + Retry-After) when
/// there is none, or no cluster.
pub(super) async fn elsewhere(
    app: &AppState,
    (endpoint, name): (&str, &str),
    caller: &Caller,
    full: ApiError,
) -> ApiError {
    let Some(cluster) = &app.cluster else {
        return full;
    };
    let Some(node) = cluster.elsewhere().await else {
        return full;
    };
    cluster.stats.redirects.fetch_add(1, Ordering::Relaxed);
    let query = caller
        .query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    info!(stream = %name, to = %node.url, "full: client sent to another node of the cluster");
    ApiError::Redirect(format!("{}/{endpoint}/{name}{query}", node.url))
}

/// The `session.started` event (the hook's `session.ended` comes from the engine).
pub(super) fn session_started(app: &AppState, stream: &str, id: &str, role: &str, caller: &Caller) {
    app.engine.events.emit(
        "session.started",
        serde_json::json!({
            "stream": stream,
            "session": id,
            "role": role,
            "ip": caller.ip.map(|i| i.to_string()),
        }),
    );
}

pub(super) fn header_value(s: &str) -> HeaderValue {
    // Built only from stream names, hex ids and config: always visible ASCII.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// 128 random bits, hex: the session's unguessable Location.
pub(super) fn session_id() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

/// The checks every WHEP/WHIP POST starts with, then its parsed offer.
pub(super) async fn read_offer(
    app: &AppState,
    (caller, action, protocol): (&Caller, Action, Protocol),
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Offer, ApiError> {
    check_name(name)?;
    auth::check(app, caller, action, protocol, Some(name)).await?;
    require_content_type(headers, SDP)?;
    let sdp = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("SDP offer is not UTF-8".into()))?;
    let offer = Offer::parse(sdp).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    check_session_limit(app)?;
    Ok(offer)
}

/// 503 when the server holds as many sessions as `--max-sessions` allows.
pub(super) fn check_session_limit(app: &AppState) -> Result<(), ApiError> {
    let live = app.engine.live_sessions();
    if live >= app.cfg.max_sessions {
        return Err(ApiError::Unavailable(format!(
            "the server has {live} sessions, the most allowed (--max-sessions); retry later"
        )));
    }
    Ok(())
}

pub(super) fn session_url(stream: String, id: String, publisher: bool) -> SessionUrl {
    SessionUrl {
        id,
        stream,
        publisher,
    }
}

/// `HEAD` on a WHEP or WHIP endpoint: 200 with the media type a POST takes
/// (draft-ietf-wish-whep §4.1, RFC 9725 §4.2).
pub async fn head() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, SDP)]).into_response()
}

/// PATCH on a WHEP or WHIP session (the caller checked the token of the session's role).
pub(super) async fn patch_session(
    app: &AppState,
    url: SessionUrl,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name(&url.stream)?;
    require_content_type(headers, SDPFRAG)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("sdpfrag is not UTF-8".into()))?;
    let frag = SdpFrag::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let if_match = headers
        .get(header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match app.engine.patch(url, Patch { frag, if_match }).await {
        Ok(None) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(Some(answer)) => {
            let etag = answer
                .lines()
                .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
                .unwrap_or("")
                .to_string();
            let mut res = (StatusCode::OK, answer).into_response();
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            res.headers_mut()
                .insert(header::ETAG, header_value(&format!("\"{etag}\"")));
            Ok(res)
        }
        Err(PatchError::NotFound) => Err(ApiError::NotFound("no such session".into())),
        Err(e @ PatchError::PreconditionFailed(_)) => {
            Err(ApiError::PreconditionFailed(e.to_string()))
        }
        Err(e @ PatchError::PreconditionRequired) => {
            Err(ApiError::PreconditionRequired(e.to_string()))
        }
        Err(PatchError::Bad(why)) => Err(ApiError::BadRequest(why)),
    }
}

/// DELETE of a WHEP or WHIP session.
pub(super) async fn delete_session(
    app: &AppState,
    url: SessionUrl,
) -> Result<StatusCode, ApiError> {
    check_name(&url.stream)?;
    if app.engine.delete(url).await {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::NotFound("no such session".into()))
    }
}

/// Claim stream `name` cluster-wide for a source about to start here: 409 when another node
/// has its source (see `Cluster::claim_source`).
pub(super) async fn claim(app: &AppState, name: &str) -> Result<(), ApiError> {
    let Some(cluster) = &app.cluster else {
        return Ok(());
    };
    match cluster.claim_source(name).await {
        None => Ok(()),
        Some(owner) => Err(ApiError::Conflict(format!(
            "stream {name:?} has a source on another node of the cluster ({owner}); stop it \
             first or use another name"
        ))),
    }
}
