//! WHEP: `POST /whep/{s}` (waits for the stream), `PATCH`/`DELETE /whep/{s}/{id}`, `OPTIONS`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::{debug, info};

use super::auth::{self, Action, Caller, Protocol};
use super::{check_name, require_content_type, ApiError, AppState};
use crate::stream::{Status, Stream};
use crate::webrtc::{Answered, Offer, OfferError, Patch, PatchError, SdpFrag, SessionUrl};

pub(super) const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

pub async fn options(State(_app): State<AppState>) -> Response {
    (
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
        .into_response()
}

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

/// Counts a WHEP POST waiting for its stream; the count drops however the wait ends (ready,
/// deadline, or the client going away, which drops this future).
struct Waiting(Arc<Stream>);

impl Waiting {
    fn new(s: Arc<Stream>) -> Self {
        s.stats.waiting_viewers.fetch_add(1, Ordering::Relaxed);
        Waiting(s)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.stats.waiting_viewers.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Wait, without holding a thread, until the stream can be answered or the deadline passes.
/// A stream whose source ended longer than `grace` ago is not answered until a source is
/// back: its viewers would be ended at once.
async fn wait_ready(
    stream: &Arc<Stream>,
    deadline: Duration,
    grace: Duration,
) -> Result<Status, ApiError> {
    let _waiting = Waiting::new(stream.clone());
    let mut rx = stream.subscribe();
    let live = |s: &Status| {
        s.ready
            && (s.source != crate::stream::SourceState::Ended
                || stream.ended_for().is_none_or(|t| t <= grace))
    };
    let waited = tokio::time::timeout(deadline, rx.wait_for(live)).await;
    match waited {
        Ok(Ok(status)) => Ok(status.clone()),
        _ => Err(not_ready(stream, deadline)),
    }
}

/// The 404 after the wait, saying why.
fn not_ready(stream: &Stream, waited: Duration) -> ApiError {
    let (status, name) = (stream.status(), &stream.name);
    let received = stream.stats.ingest_bytes.load(Ordering::Relaxed);
    let problems = stream.stats.ts_problems.load(Ordering::Relaxed);
    let why = match &status.tracks {
        None if received > 0 => format!(
            "stream {name:?} received {received} bytes but no PAT/PMT in them ({problems} TS \
             problems): is the source sending MPEG-TS?"
        ),
        None if status.source == crate::stream::SourceState::Ended => {
            format!("stream {name:?} is not live: its source ended; retry when it is back")
        }
        None if status.source != crate::stream::SourceState::Live => {
            format!("no source is sending stream {name:?}")
        }
        None => format!("stream {name:?} has a source but no PAT/PMT was seen yet"),
        Some(t) if t.video().is_none() && t.audio().is_none() => {
            let kinds: Vec<String> = t
                .tracks
                .iter()
                .map(|t| format!("{} (PID {})", t.codec_name(), t.pid))
                .collect();
            format!(
                "stream {name:?} has no WebRTC-playable track (H.264, H.265 or Opus); it has: {}",
                kinds.join(", ")
            )
        }
        Some(_) if status.source == crate::stream::SourceState::Ended => {
            format!("stream {name:?} is not live: its source ended; retry when it is back")
        }
        Some(_) => format!("stream {name:?} has not sent an H.264 SPS/keyframe yet"),
    };
    let why = format!("{why} (waited {:.1} s)", waited.as_secs_f64());
    // A stream that had a source, which has ended: known but not live (WHEP: 409 +
    // Retry-After). A name nothing ever fed stays 404.
    if status.source == crate::stream::SourceState::Ended {
        ApiError::NotLive(why)
    } else {
        ApiError::NotFound(why)
    }
}

/// `POST /whep/{s}?program=N`: a program of an MPTS other than the one the stream follows.
#[derive(Debug, serde::Deserialize)]
pub struct WhepQuery {
    program: Option<u16>,
}

/// The stream a viewer of program `number` of `parent` is served from: `parent` itself when
/// it follows that program, else the program demuxed on its own. Waits (within `deadline`)
/// for the parent's PAT and PMTs to list it.
async fn program_stream(
    app: &AppState,
    parent: Arc<Stream>,
    number: u16,
    deadline: Duration,
) -> Result<Arc<Stream>, ApiError> {
    let _waiting = Waiting::new(parent.clone());
    let mut rx = parent.subscribe();
    let listed = |s: &Status| {
        s.programs
            .as_ref()
            .is_some_and(|p| p.iter().any(|t| t.program_number == number))
    };
    // Once the stream follows a program, every PMT of its PAT has been seen (or one twice):
    // a program not listed by then is not there.
    let known = |s: &Status| listed(s) || (s.tracks.is_some() && s.programs.is_some());
    let waited = tokio::time::timeout(deadline, rx.wait_for(known)).await;
    let status = match waited {
        Ok(Ok(status)) if listed(&status) => status.clone(),
        _ => {
            let status = parent.status();
            return Err(match status.programs {
                Some(p) if !p.is_empty() => {
                    let numbers: Vec<String> =
                        p.iter().map(|t| t.program_number.to_string()).collect();
                    ApiError::NotFound(format!(
                        "stream {:?} has no program {number}; its programs are {}",
                        parent.name,
                        numbers.join(", ")
                    ))
                }
                _ => not_ready(&parent, deadline),
            });
        }
    };
    if status
        .tracks
        .as_ref()
        .is_some_and(|t| t.program_number == number)
    {
        return Ok(parent);
    }
    Ok(app.registry.program(&parent, number))
}

pub async fn post(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<WhepQuery>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Fail fast on a bad offer, before waiting for the stream.
    let who = (&caller, Action::View, Protocol::Whep);
    let offer = match read_offer(&app, who, &name, &headers, &body).await {
        Err(full @ ApiError::Unavailable(_)) => {
            return Err(elsewhere(&app, ("whep", &name), &caller, full).await)
        }
        r => r?,
    };

    let posted = Instant::now();
    let stream = app.registry.get_or_create(&name);
    if let Some(cluster) = &app.cluster {
        if cluster.is_draining() {
            let why = ApiError::Unavailable("this node is shutting down; retry".into());
            return Err(elsewhere(&app, ("whep", &name), &caller, why).await);
        }
        // Not here: find its owner (a prompt 503 when Redis is away) and pull it once.
        if !stream.has_source() {
            if let Err(e) = cluster.owner(&name).await {
                return Err(ApiError::Unavailable(format!(
                    "cannot locate stream {name:?}: {e}; retry"
                )));
            }
            crate::cluster::pull::ensure(&app, &stream);
        }
    }
    let waiting = app.registry.waiting();
    if waiting >= app.cfg.max_waiting {
        return Err(ApiError::Unavailable(format!(
            "{waiting} WHEP requests are already waiting for their streams (--max-waiting); retry later"
        )));
    }
    let stream = match query.program {
        None => stream,
        Some(n) => program_stream(&app, stream, n, app.cfg.whep_wait).await?,
    };
    let waited = posted.elapsed();
    let left = app.cfg.whep_wait.saturating_sub(waited);
    let status = wait_ready(&stream, left, app.cfg.source_grace).await?;
    if let Err(full) = check_session_limit(&app) {
        return Err(elsewhere(&app, ("whep", &name), &caller, full).await);
    }
    let viewers = stream.stats.viewers.load(Ordering::Relaxed);
    if viewers >= app.cfg.max_viewers {
        let full = ApiError::Unavailable(format!(
            "stream {name:?} has {viewers} viewers, the most allowed (--max-viewers); retry later"
        ));
        return Err(elsewhere(&app, ("whep", &name), &caller, full).await);
    }
    let id = session_id();
    // Relative: it resolves against the URL the client used, through any proxy.
    let location = format!("/whep/{name}/{id}");
    let url = SessionUrl {
        id,
        stream: name.clone(),
        publisher: false,
    };
    let Answered {
        session,
        answer,
        ufrag,
    } = app
        .engine
        .accept(url, stream, offer, &status)
        .map_err(|e| match e {
            OfferError::NoCommonMedia { .. } => ApiError::NotAcceptable(e.to_string()),
            e => ApiError::BadRequest(e.to_string()),
        })?;
    let mut session = session;
    session.client_ip = caller.ip;
    let session_id = session.id.clone();
    app.engine.add(session);
    session_started(&app, &name, &session_id, "viewer", &caller);
    info!(stream = %name, wait_ms = posted.elapsed().as_millis() as u64, "WHEP session answered");
    debug!(answer = %answer, "SDP answer");

    let mut res = (StatusCode::CREATED, answer).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert(header::LOCATION, header_value(&location));
    h.insert(header::ETAG, header_value(&format!("\"{ufrag}\"")));
    ice_server_links(&app, h);
    Ok(res)
}

/// `Link: <url>; rel="ice-server"` per `--ice-server`, with `--ice-username/--ice-credential`
/// (draft-ietf-wish-whep §4.6, RFC 9725 §4.6): clients (and the player and publish pages)
/// take their STUN/TURN servers from there.
pub(super) fn ice_server_links(app: &AppState, h: &mut HeaderMap) {
    for server in &app.cfg.ice_servers {
        let mut link = format!("<{server}>; rel=\"ice-server\"");
        if let (Some(user), Some(cred)) = (&app.cfg.ice_username, &app.cfg.ice_credential) {
            if server.starts_with("turn") {
                link += &format!(
                    "; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\""
                );
            }
        }
        h.append(header::LINK, header_value(&link));
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

pub async fn patch(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth::check(&app, &caller, Action::View, Protocol::Whep, Some(&name)).await?;
    patch_session(&app, session_url(name, id, false), &headers, body).await
}

pub async fn delete(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    auth::check(&app, &caller, Action::View, Protocol::Whep, Some(&name)).await?;
    delete_session(&app, session_url(name, id, false)).await
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
