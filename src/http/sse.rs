//! WHEP server-sent events (draft-ietf-wish-whep, extension
//! `urn:ietf:params:whep:ext:core:server-sent-events`): a viewer learns that its stream went
//! away and came back, how many watch it, where to go when this node drains or the stream's
//! source started again on another node, and the stream's SCTE-35 cues (`scte35`). A node that is full moves nobody: its
//! viewers are served, and new ones are sent elsewhere by the POST's 307 (docs/DESIGN.md).
//!
//! ```text
//!  201 to POST /whep/{s}        Link: </whep/{s}/{id}/sse>; rel="urn:…:server-sent-events"; events="…"
//!  POST /whep/{s}/{id}/sse      ["active", "viewercount", …]  →  201, Location: …/sse?events=…
//!  GET  that Location           text/event-stream: `event: active` …, until the session ends
//! ```
//!
//! The session's unguessable URL is the capability, checked with the stream's view rules as
//! every other session request is. The event stream is stateless on the server (the events
//! asked for are in its URL): a watcher of the stream's status, its viewer count (each second)
//! and the cluster's draining flag, ended with the session (looked up only when the stream's
//! sessions changed, so idle subscribers cost the engine nothing). While the stream is not
//! live, a subscriber to `reconnect` asks Redis once a second who has its source.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{self, Action, Caller, Protocol};
use super::session::header_value;
use super::{check_name, require_content_type, ApiError, AppState};
use crate::stream::cues::StreamCue;
use crate::stream::{SourceState, Stream};

/// The extension's link relation.
pub const REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";

/// An event a viewer may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// The stream is live (sent first when it is).
    Active,
    /// The stream's source is gone (viewers wait for it to come back).
    Inactive,
    /// How many watch the stream, when it changes.
    ViewerCount,
    /// Go to this URL: the node drains, or the stream's source went to another node.
    Reconnect,
    /// An SCTE-35 cue of the stream (an ad break, a program boundary), as it arrived.
    Scte35,
}

impl Event {
    const ALL: [Event; 5] = [
        Event::Active,
        Event::Inactive,
        Event::ViewerCount,
        Event::Reconnect,
        Event::Scte35,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::Active => "active",
            Event::Inactive => "inactive",
            Event::ViewerCount => "viewercount",
            Event::Reconnect => "reconnect",
            Event::Scte35 => "scte35",
        }
    }

    fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == s)
    }
}

/// The `Link` a WHEP 201 carries for session `id` of `stream`.
pub(super) fn link(stream: &str, id: &str) -> String {
    let events: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
    format!(
        "</whep/{stream}/{id}/sse>; rel=\"{REL}\"; events=\"{}\"",
        events.join(",")
    )
}

/// `POST /whep/{s}/{id}/sse`: a JSON array of event names; 201 with the event stream's URL.
pub async fn subscribe(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    auth::check(&app, &caller, Action::View, Protocol::Whep, Some(&name)).await?;
    require_content_type(&headers, "application/json")?;
    let asked: Vec<String> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("a JSON array of event names, as [\"active\"]: {e}"))
    })?;
    let mut events = Vec::new();
    for a in &asked {
        match Event::parse(a) {
            Some(e) if !events.contains(&e) => events.push(e),
            Some(_) => {}
            None => {
                return Err(ApiError::BadRequest(format!(
                "unknown event {a:?}: this server sends active, inactive, viewercount, reconnect, scte35"
            )))
            }
        }
    }
    session_exists(&app, &name, &id).await?;
    let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
    let location = format!("/whep/{name}/{id}/sse?events={}", names.join(","));
    let mut res = StatusCode::CREATED.into_response();
    res.headers_mut()
        .insert(header::LOCATION, header_value(&location));
    Ok(res)
}

/// `OPTIONS /whep/{s}/{id}/sse`: the CORS preflight of a subscription from another origin —
/// the player after a `reconnect` subscribes on the node it moved to, from the first node's
/// page (a JSON POST is not a simple request).
pub async fn options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, POST, GET"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "OPTIONS, POST, GET"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Content-Type, Authorization",
            ),
        ],
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    events: String,
}

/// `GET /whep/{s}/{id}/sse?events=…`: the event stream, until the session ends.
pub async fn events(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Query(q): Query<StreamQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    auth::check(&app, &caller, Action::View, Protocol::Whep, Some(&name)).await?;
    let wanted: Vec<Event> = q.events.split(',').filter_map(Event::parse).collect();
    session_exists(&app, &name, &id).await?;
    let stream = app
        .registry
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no stream {name:?}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(feed(app, stream, id, wanted, tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(chunk), rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Writes the events of session `id` the subscriber `wanted` into `tx`, as they happen, until
/// the session or the subscriber goes (or the subscriber is sent to another node).
async fn feed(
    app: AppState,
    stream: Arc<Stream>,
    id: String,
    wanted: Vec<Event>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let want = |e: Event| wanted.contains(&e);
    let mut status = stream.subscribe();
    let mut cues = want(Event::Scte35).then(|| stream.stats.cues.subscribe());
    let mut active: Option<bool> = None;
    let mut viewers: Option<usize> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Viewers and sessions ever made when this session was last seen to exist.
    let mut checked = (
        stream.stats.viewers.load(Ordering::Relaxed),
        stream.stats.sessions_total.load(Ordering::Relaxed),
    );
    let send = |e: Event, data: String| {
        let tx = tx.clone();
        async move {
            let msg = format!("event: {}\ndata: {data}\n\n", e.name());
            tx.send(Bytes::from(msg)).await.is_ok()
        }
    };
    loop {
        let live = {
            let s = status.borrow_and_update();
            s.ready && s.source != SourceState::Ended
        };
        if active != Some(live) {
            active = Some(live);
            let e = if live { Event::Active } else { Event::Inactive };
            if want(e) && !send(e, "{}".into()).await {
                return;
            }
        }
        let n = stream.stats.viewers.load(Ordering::Relaxed);
        if viewers != Some(n) {
            viewers = Some(n);
            let data = serde_json::json!({ "viewercount": n }).to_string();
            if want(Event::ViewerCount) && !send(Event::ViewerCount, data).await {
                return;
            }
        }
        if let Some(c) = &app.cluster {
            // Draining: every subscriber goes, asked for `reconnect` or not (the session
            // ends with the node). The source moved: only those who asked move.
            let to = if c.is_draining() {
                c.elsewhere().await
            } else if !live && want(Event::Reconnect) {
                c.moved_to(&stream.name).await
            } else {
                None
            };
            if let Some(node) = to {
                let url = format!("{}/whep/{}", node.url, stream.name);
                let data = serde_json::json!({ "url": url }).to_string();
                if want(Event::Reconnect) {
                    let _ = send(Event::Reconnect, data).await;
                }
                return;
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            cue = next_cue(&mut cues) => {
                if let Some(cue) = cue {
                    if !send(Event::Scte35, cue_json(&cue).to_string()).await {
                        return;
                    }
                }
            }
            _ = tick.tick() => {
                // Ask the engine (every shard) only when a session came or went.
                let sessions = (
                    stream.stats.viewers.load(Ordering::Relaxed),
                    stream.stats.sessions_total.load(Ordering::Relaxed),
                );
                if sessions != checked {
                    checked = sessions;
                    if session_exists(&app, &stream.name, &id).await.is_err() {
                        return;
                    }
                }
            }
            () = tx.closed() => return,
        }
    }
}

/// The next cue for a subscriber to `scte35` (never, for others); `None` when it fell behind
/// and lost some (it goes on with the next).
async fn next_cue(
    cues: &mut Option<tokio::sync::broadcast::Receiver<Arc<StreamCue>>>,
) -> Option<Arc<StreamCue>> {
    match cues {
        Some(rx) => rx.recv().await.ok(),
        None => std::future::pending().await,
    }
}

/// A cue as JSON, for the `scte35` event and the stream API: what it says, how far ahead its
/// splice point is (`in_ms`, media time from the video before it), and the whole section in
/// hex (as HLS's `SCTE35-OUT=0x…` carries it) for a field not read here.
pub(super) fn cue_json(c: &StreamCue) -> serde_json::Value {
    use crate::ts::scte35::{type_name, Command};
    let ms = |ticks: u64| ticks / 90;
    let mut v = serde_json::json!({
        "pid": c.pid.0,
        "command": c.cue.command.name(),
        "splice_pts": c.cue.splice_pts(),
        "in_ms": c.in_ms,
        "received_unix_ms": c.unix_ms,
        "encrypted": c.cue.encrypted,
        "section_hex": format!("0x{}", hex(&c.cue.section)),
    });
    if let Command::Insert(i) = &c.cue.command {
        v["event_id"] = i.event_id.into();
        v["cancel"] = i.cancel.into();
        v["out_of_network"] = i.out_of_network.into();
        v["immediate"] = i.immediate.into();
        v["duration_ms"] = i.duration.map(|(d, _)| ms(d)).into();
        v["auto_return"] = i.duration.map(|(_, a)| a).into();
    }
    let segments: Vec<serde_json::Value> = c
        .cue
        .segments
        .iter()
        .map(|s| {
            serde_json::json!({
                "event_id": s.event_id,
                "cancel": s.cancel,
                "type_id": s.type_id,
                "type": type_name(s.type_id),
                "duration_ms": s.duration.map(ms),
                "upid_type": s.upid_type,
                "upid_hex": hex(&s.upid),
                "segment_num": s.segment_num,
                "segments_expected": s.segments_expected,
            })
        })
        .collect();
    if !segments.is_empty() {
        v["segments"] = segments.into();
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02X}")).collect()
}

/// 404 unless viewer session `id` of stream `name` is on this node.
async fn session_exists(app: &AppState, name: &str, id: &str) -> Result<(), ApiError> {
    if app.engine.sessions(name).await.iter().any(|s| s.id == id) {
        Ok(())
    } else {
        Err(ApiError::NotFound("no such session".into()))
    }
}
