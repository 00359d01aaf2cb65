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
use super::session::{
    check_session_limit, delete_session, elsewhere, header_value, ice_server_links, patch_session,
    read_offer, session_id, session_started, session_url, SDP,
};
use super::{ApiError, AppState};
use crate::stream::{Lookup, Status, Stream, Variant};
use crate::ts::{AudioChoice, Language, TrackSet};
use crate::webrtc::{Answered, OfferError, SessionUrl};

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
    let live = |s: &Status| {
        s.ready
            && (s.source != crate::stream::SourceState::Ended
                || stream.ended_for().is_none_or(|t| t <= grace))
    };
    wait_status(stream, deadline, live)
        .await
        .ok_or_else(|| not_ready(stream, deadline))
}

/// The stream's status once `until` holds of it, counted as a waiting viewer meanwhile, or
/// `None` after `deadline`.
async fn wait_status(
    stream: &Arc<Stream>,
    deadline: Duration,
    until: impl FnMut(&Status) -> bool,
) -> Option<Status> {
    let _waiting = Waiting::new(stream.clone());
    let mut rx = stream.subscribe();
    let waited = tokio::time::timeout(deadline, rx.wait_for(until)).await;
    match waited {
        Ok(Ok(status)) => Some(status.clone()),
        _ => None,
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

/// `POST /whep/{s}?program=N`: a program of an MPTS other than the one the stream follows;
/// `?audio=N` (from 0, in PMT order) or `?lang=spa` (ISO 639-2): one of its audio tracks.
#[derive(Debug, serde::Deserialize)]
pub struct WhepQuery {
    program: Option<u16>,
    audio: Option<u8>,
    lang: Option<String>,
}

/// How a viewer picked an audio track.
#[derive(Debug, Clone, Copy)]
enum AudioPick {
    Index(u8),
    Lang(Language),
}

impl WhepQuery {
    fn audio_pick(&self) -> Result<Option<AudioPick>, ApiError> {
        match (self.audio, &self.lang) {
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "give ?audio=N or ?lang=xyz, not both".into(),
            )),
            (Some(n), None) => Ok(Some(AudioPick::Index(n))),
            (None, Some(lang)) => lang
                .parse()
                .map(|l| Some(AudioPick::Lang(l)))
                .map_err(|e| ApiError::BadRequest(format!("?lang: {e}"))),
            (None, None) => Ok(None),
        }
    }
}

/// The audio tracks of a program as a viewer reads them in an error: `0 (eng, AAC (ADTS))`.
fn audio_list(tracks: &TrackSet, transcode: bool) -> String {
    let list: Vec<String> = tracks
        .audio_tracks()
        .enumerate()
        .map(|(i, t)| {
            let lang = t.language.map(|l| format!("{l}, ")).unwrap_or_default();
            let plays = if t.playable(transcode) {
                ""
            } else {
                ", not playable"
            };
            format!("{i} ({lang}{}{plays})", t.codec_name())
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// The stream's tracks once its PMT is known (counted as a waiting viewer meanwhile), or the
/// not-ready answer after `deadline`.
async fn tracks_within(
    stream: &Arc<Stream>,
    deadline: Duration,
) -> Result<Arc<crate::ts::TrackSet>, ApiError> {
    wait_status(stream, deadline, |s| s.tracks.is_some())
        .await
        .and_then(|s| s.tracks)
        .ok_or_else(|| not_ready(stream, deadline))
}

/// The stream a viewer who picked an audio track is served from: `stream` itself when that
/// is the track it sends, else the variant made for that track (one per track, however many
/// viewers picked it: its audio is transcoded once). Waits (within `deadline`) for the PMT.
async fn audio_stream(
    app: &AppState,
    stream: Arc<Stream>,
    pick: AudioPick,
    deadline: Duration,
) -> Result<Arc<Stream>, ApiError> {
    let tracks = tracks_within(&stream, deadline).await?;
    let transcode = app.cfg.audio_transcode == crate::config::Transcode::Auto;
    let name = &stream.name;
    let found = match pick {
        AudioPick::Index(n) => tracks.audio_tracks().nth(usize::from(n)).map(|t| (n, t)),
        AudioPick::Lang(lang) => {
            let with_lang = || {
                (tracks.audio_tracks().enumerate())
                    .filter(|(_, t)| t.language == Some(lang))
                    .map(|(i, t)| (i as u8, t))
            };
            with_lang()
                .find(|(_, t)| t.playable(transcode))
                .or_else(|| with_lang().next())
        }
    };
    let Some((index, track)) = found else {
        let asked = match pick {
            AudioPick::Index(n) => format!("audio track {n}"),
            AudioPick::Lang(l) => format!("audio track in {l:?}"),
        };
        return Err(ApiError::NotFound(format!(
            "stream {name:?} has no {asked}; its audio tracks are {}",
            audio_list(&tracks, transcode)
        )));
    };
    if !track.playable(transcode) {
        let why = match &track.codec {
            crate::ts::Codec::Unsupported { reason } => reason.to_string(),
            _ => "it plays only transcoded to Opus, and --audio-transcode is off".into(),
        };
        return Err(ApiError::NotAcceptable(format!(
            "audio track {index} of stream {name:?} ({}) does not play: {why}; its audio \
             tracks are {}",
            track.codec_name(),
            audio_list(&tracks, transcode)
        )));
    }
    let sent = stream.audio_choice().pick(&tracks).map(|(i, _)| i);
    if sent == Some(index) {
        return Ok(stream);
    }
    let variant = Variant {
        program: tracks.program_number,
        audio: AudioChoice::Index(index),
        h264: false,
    };
    Ok(app.registry.variant(&stream, variant))
}

/// The stream a viewer whose offer has no H.265 is served from: `stream` itself unless its
/// video is HEVC, else the variant that re-encodes it to H.264 (`--features ffmpeg`,
/// `--video-transcode auto`): one for all such viewers, there only while they watch. Waits
/// (within `deadline`) for the PMT.
async fn h264_stream(
    app: &AppState,
    stream: Arc<Stream>,
    deadline: Duration,
) -> Result<Arc<Stream>, ApiError> {
    if app.cfg.video_transcode != crate::config::Transcode::Auto || stream.h264_video() {
        return Ok(stream);
    }
    let tracks = tracks_within(&stream, deadline).await?;
    if tracks
        .video()
        .is_none_or(|t| t.codec != crate::ts::Codec::H265)
    {
        return Ok(stream);
    }
    let variant = Variant {
        program: tracks.program_number,
        audio: stream.audio_choice(),
        h264: true,
    };
    Ok(app.registry.variant(&stream, variant))
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

/// The stream a viewer of `name` is served from, once it exists. A name with no stream costs
/// only a place on its waiting list (no stream, ring, media task or pull) until a source
/// creates it, or `deadline` passes (404). In a cluster, Redis is asked once whether another
/// node has the name: then it is pulled from there at once; else the node's one waiting-list
/// task (`cluster::waiting`) pulls it when an owner appears.
async fn find_stream(
    app: &AppState,
    name: &str,
    deadline: Duration,
) -> Result<Arc<Stream>, ApiError> {
    let unreachable =
        |e| ApiError::Unavailable(format!("cannot locate stream {name:?}: {e}; retry"));
    let mut entry = match app.registry.lookup(name) {
        Lookup::Stream(stream) => {
            // Known here without a source: find its owner (a prompt 503 when Redis is away)
            // and pull it once.
            if let Some(cluster) = app.cluster.as_ref().filter(|_| !stream.has_source()) {
                cluster.owner(name).await.map_err(unreachable)?;
                crate::cluster::pull::ensure(cluster, &stream);
            }
            return Ok(stream);
        }
        Lookup::Wait(entry) => entry,
    };
    if let Some(cluster) = &app.cluster {
        match cluster.owner(name).await.map_err(unreachable)? {
            Some(owner) if owner.id != cluster.id => {
                let stream = app
                    .registry
                    .try_get_or_create(name)
                    .map_err(|full| ApiError::Unavailable(full.to_string()))?;
                crate::cluster::pull::ensure(cluster, &stream);
                return Ok(stream);
            }
            _ => {}
        }
    }
    match tokio::time::timeout(deadline, entry.stream()).await {
        Ok(stream) => Ok(stream),
        // A source for it may have been refused at --max-streams: say so rather than 404.
        Err(_) => Err(match app.registry.has_room_for(name) {
            Err(full) => ApiError::Unavailable(full.to_string()),
            Ok(()) => ApiError::NotFound(format!(
                "no source is sending stream {name:?} (waited {:.1} s)",
                deadline.as_secs_f64()
            )),
        }),
    }
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
    let audio_pick = query.audio_pick()?;

    let posted = Instant::now();
    if app.cluster.as_ref().is_some_and(|c| c.is_draining()) {
        let why = ApiError::Unavailable("this node is shutting down; retry".into());
        return Err(elsewhere(&app, ("whep", &name), &caller, why).await);
    }
    // The limits on waiting come before anything is looked up or created.
    let waiting = app.registry.waiting();
    if waiting >= app.cfg.max_waiting {
        return Err(ApiError::Unavailable(format!(
            "{waiting} WHEP requests are already waiting for their streams (--max-waiting); retry later"
        )));
    }
    let waiting_here = app
        .per_ip
        .waiting
        .acquire(caller.ip)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    // (An offer without video, or with H.265, needs no H.264 made for it.)
    let h264_only = offer.has_codec("H264") && !offer.has_codec("H265");
    let stream = served_stream(&app, &name, &query, audio_pick, h264_only, posted).await?;
    let left = app.cfg.whep_wait.saturating_sub(posted.elapsed());
    let status = wait_ready(&stream, left, app.cfg.source_grace).await?;
    drop(waiting_here);
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
    let ip_slot = app
        .per_ip
        .sessions
        .acquire(caller.ip)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
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
    session.ip_slot = ip_slot;
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
    ice_server_links(&app, h, &name);
    h.append(
        header::LINK,
        header_value(&super::sse::link(&name, &session_id)),
    );
    Ok(res)
}

/// The stream a viewer of `name` is served from, waited for until `--whep-wait` after
/// `posted`: the stream itself, or the one made for its `?program=`, its audio pick, or an
/// H.264 rendition for an offer that takes nothing else.
async fn served_stream(
    app: &AppState,
    name: &str,
    query: &WhepQuery,
    audio_pick: Option<AudioPick>,
    h264_only: bool,
    posted: Instant,
) -> Result<Arc<Stream>, ApiError> {
    let stream = find_stream(app, name, app.cfg.whep_wait).await?;
    let left = || app.cfg.whep_wait.saturating_sub(posted.elapsed());
    let stream = match query.program {
        None => stream,
        Some(n) => program_stream(app, stream, n, left()).await?,
    };
    let stream = match audio_pick {
        None => stream,
        Some(pick) => audio_stream(app, stream, pick, left()).await?,
    };
    Ok(match cfg!(feature = "ffmpeg") && h264_only {
        true => h264_stream(app, stream, left()).await?,
        false => stream,
    })
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
