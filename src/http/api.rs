//! `GET /streams`, `GET /streams/{s}` (JSON) and `GET /streams/{s}.ts` (raw TS pull).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tracing::info;

use super::auth::{self, Action, Caller, Protocol};
use super::{check_name, ApiError, AppState};
use crate::codec::reencode::OUTPUT as REENCODED_TO;
use crate::codec::reorder::{B_FRAMES_ADVICE, B_FRAMES_REENCODED};
use crate::config::Transcode;
use crate::stream::gop::GopBound;
use crate::stream::ring::Read;
use crate::stream::starts::no_keyframes_reencoded;
use crate::stream::{Reencode, ReencodeWhy, Status, Stream, VideoProfile};
use crate::ts::start::StartPoint;
use crate::ts::{mark, AudioChoice, Codec, ProgramChoice, TrackInfo, TrackKind, TrackSet};

/// `GET /streams`: the streams the caller may see (a registered stream with its own view key
/// only to a holder of that key or the admin).
pub async fn list(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    auth::check(&app, &caller, Action::Api, Protocol::Api, None).await?;
    let internal = auth::node(&app, &caller);
    let mut streams = Vec::new();
    for s in app.registry.list() {
        // A name whose keys cannot be read now (Redis away) is left out.
        if matches!(
            auth::tokens_allow(&app, &caller, Action::Api, Some(&s.name)).await,
            Ok(true)
        ) {
            streams.push(describe(&app, &s, internal));
        }
    }
    Ok(Json(json!({ "streams": streams })))
}

pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<StreamQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if let Some(base) = name.strip_suffix(".ts") {
        check_name(base)?;
        // Another node's pull (or the admin), else a viewer's.
        let node = auth::node(&app, &caller);
        if !node {
            auth::check(&app, &caller, Action::View, Protocol::Ts, Some(base)).await?;
        }
        return pull(&app, base, query.start, !node);
    }
    check_name(&name)?;
    auth::check(&app, &caller, Action::Api, Protocol::Api, Some(&name)).await?;
    let Some(stream) = app.registry.get(&name) else {
        // Viewers waiting for a name create no stream: only their count is known.
        let waiting = match app.registry.waiting_for(&name) {
            0 => String::new(),
            n => format!(" (WHEP requests waiting for it: {n})"),
        };
        return Err(ApiError::NotFound(format!("no stream {name:?}{waiting}")));
    };
    let internal = auth::node(&app, &caller);
    Ok(Json(describe(&app, &stream, internal)).into_response())
}

/// Who plays H.265, for the API.
const H265_NOTE: &str = "H.265 goes to viewers whose offer has H.265 (Chrome 136+ with a \
     hardware decoder, Safari, GStreamer); other viewers get the stream's other tracks";

/// Who plays H.265 when FFmpeg's decoder is built in.
const H265_NOTE_FFMPEG: &str = "H.265 goes to viewers whose offer has H.265 (Chrome 136+ \
     with a hardware decoder, Safari, GStreamer); other viewers get it re-encoded to H.264, \
     once for all of them, while they watch (`without_h265`)";

/// What the video re-encoder of `s` does, and why.
fn reencoded_json(s: &Stream, why: &ReencodeWhy, bound: GopBound, v: &mut Value) {
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let cpu = r(&s.stats.reencode_us) as f64 * 100.0 / r(&s.stats.reencode_media_us).max(1) as f64;
    v["transcoded_to"] = REENCODED_TO.into();
    v["transcode_reason"] = match why {
        ReencodeWhy::BFrames => B_FRAMES_REENCODED.to_string(),
        ReencodeWhy::NoKeyframes => no_keyframes_reencoded(bound),
        ReencodeWhy::Codec(c) => ReencodeWhy::codec_reason(*c),
    }
    .into();
    v["transcoder_cpu_pct"] = ((cpu * 100.0).round() / 100.0).into();
    v["transcode_errors"] = r(&s.stats.reencode_errors).into();
    v["frames_decoded"] = r(&s.stats.reencode_decoded).into();
    v["frames_encoded"] = r(&s.stats.reencode_encoded).into();
    v["keyframes_on_request"] = r(&s.stats.reencode_keyframes).into();
}

/// One track of a PMT as JSON; codec details come from `st`, the status of the stream that
/// demuxes its program (none for a program nobody watches). `program`: the program's number
/// when viewers must ask for it (`?program=N`).
fn track_json(
    app: &AppState,
    s: &Arc<Stream>,
    st: &Status,
    (t_set, program): (&TrackSet, Option<u16>),
    t: &TrackInfo,
) -> Value {
    let mut v = json!({
        "pid": t.pid.0,
        "stream_type": t.stream_type.0,
        "codec": t.codec_name(),
        "kind": t.kind.name(),
    });
    if let Some(lang) = t.language {
        v["language"] = lang.as_str().into();
    }
    if t.kind == TrackKind::Audio {
        audio_json(app, s, st, (t_set, program), t, &mut v);
        return v;
    }
    match &t.codec {
        Codec::H264 | Codec::H265 | Codec::Mpeg2Video => video_json(s, st, t_set, t, &mut v),
        Codec::Data { what } => {
            v["playable"] = false.into();
            v["reason"] =
                format!("{what}: not sent to viewers (WebRTC carries audio and video)").into();
        }
        Codec::Opus { .. } | Codec::Transcodable(_) | Codec::Unsupported { .. } => {
            v["playable"] = false.into();
            if let Codec::Unsupported { reason } = &t.codec {
                v["reason"] = (*reason).into();
            }
        }
    }
    v
}

/// A video track: whether it is the one sent, its profile and size, the H.264 rendition of an
/// H.265 track, B-frames, start points and the re-encoder.
fn video_json(s: &Arc<Stream>, st: &Status, t_set: &TrackSet, t: &TrackInfo, v: &mut Value) {
    v["kind"] = "video".into();
    // A program may have both; viewers get the first H.264 track, else H.265.
    let sent = t_set.video().is_some_and(|sent| sent.pid == t.pid);
    v["playable"] = sent.into();
    if !sent {
        v["reason"] = "another video track of the program is sent".into();
        return;
    }
    match st.video.map(|vi| (vi, vi.profile)) {
        Some((vi, VideoProfile::H264(p))) => {
            v["profile_level_id"] = p.to_string().into();
            v["width"] = vi.width.into();
            v["height"] = vi.height.into();
        }
        Some((vi, VideoProfile::H265(p))) => {
            v["profile_id"] = p.profile_id.into();
            v["tier_flag"] = u8::from(p.tier_flag).into();
            v["level_id"] = p.level_id.into();
            v["width"] = vi.width.into();
            v["height"] = vi.height.into();
        }
        None => {}
    }
    let bound = s.gop.lock().bound();
    if t.codec == Codec::H265 {
        let root = s.parent().unwrap_or(s);
        let h264 = root.programs().into_iter().find(|p| {
            p.h264_video() && p.program_choice() == ProgramChoice::Number(t_set.program_number)
        });
        v["note"] = match cfg!(feature = "ffmpeg") {
            true => H265_NOTE_FFMPEG,
            false => H265_NOTE,
        }
        .into();
        // The variant that re-encodes it for viewers without H.265, while it exists.
        if let Some(h) = h264 {
            let mut w = json!({
                "viewers": h.stats.viewers.load(Ordering::Relaxed),
            });
            if let Reencode::Active(why) = &h.status().reencode {
                reencoded_json(&h, why, bound, &mut w);
            }
            v["without_h265"] = w;
        }
    }
    v["b_frames"] = st.b_frames.into();
    let reencoded = matches!(st.reencode, Reencode::Active(_));
    if let Some(report) = st.start_points.report(bound, reencoded) {
        v["start_points"] = report.into();
    }
    match &st.reencode {
        Reencode::Active(why) => reencoded_json(s, why, bound, v),
        Reencode::Unsupported(why) if t.codec == Codec::Mpeg2Video => {
            // It plays re-encoded or not at all.
            v["playable"] = false.into();
            v["reason"] = why.as_ref().into();
        }
        Reencode::Unsupported(why) => {
            if st.b_frames {
                v["warning"] = B_FRAMES_ADVICE.into();
            }
            v["transcode_error"] = why.as_ref().into();
        }
        Reencode::Off if st.b_frames => v["warning"] = B_FRAMES_ADVICE.into(),
        Reencode::Off => {}
    }
}

/// An audio track: its place among the program's audio tracks (`?audio=N`), whether and how
/// it plays, whether viewers get it by default, and the URLs that pick it. A track viewers
/// picked is transcoded by the stream made for it (see `stream::Variant`), once for all of
/// them: its figures are that stream's.
fn audio_json(
    app: &AppState,
    s: &Arc<Stream>,
    st: &Status,
    (t_set, program): (&TrackSet, Option<u16>),
    t: &TrackInfo,
    v: &mut Value,
) {
    let index = t_set
        .audio_tracks()
        .position(|a| a.pid == t.pid)
        .unwrap_or(0);
    let transcode = app.cfg.audio_transcode == Transcode::Auto;
    // The stream made for the viewers who picked it, if any has.
    let root = s.parent().unwrap_or(s);
    let picked = root.programs().into_iter().find(|p| {
        p.program_choice() == ProgramChoice::Number(t_set.program_number)
            && p.audio_choice() == AudioChoice::Index(index as u8)
            && !p.h264_video()
    });
    let sent_by_default = s
        .audio_choice()
        .pick(t_set)
        .is_some_and(|(_, a)| a.pid == t.pid);
    // What its transcoder found once it decoded it (the PMT does not say HE-AAC or 5.1).
    let failed = match &picked {
        _ if sent_by_default => st.transcode_error.clone(),
        Some(p) => p.status().transcode_error,
        None => None,
    };
    let playable = t.playable(transcode) && failed.is_none();
    let default = playable && sent_by_default;
    v["audio_index"] = index.into();
    v["playable"] = playable.into();
    v["default"] = default.into();
    match &t.codec {
        Codec::Opus { channels } => v["channels"] = (*channels).into(),
        Codec::Transcodable(_) if playable => v["transcoded_to"] = "Opus".into(),
        Codec::Transcodable(_) if failed.is_some() => {}
        Codec::Transcodable(c) => {
            v["reason"] = format!(
                "{} plays only transcoded to Opus, and transcoding is off (--audio-transcode off)",
                c.name()
            )
            .into()
        }
        Codec::Unsupported { reason } => v["reason"] = (*reason).into(),
        _ => {}
    }
    if let Some(why) = failed {
        v["reason"] = format!("the transcoder cannot play it: {why}").into();
    }
    if !playable {
        return;
    }
    let mut query = format!("audio={index}");
    if let Some(n) = program {
        query = format!("program={n}&{query}");
    }
    // The stream viewers name (a program or an audio track of it is a variant of it).
    let n = &root.name;
    v["urls"] = json!({
        "whep": format!("/whep/{n}?{query}"),
        "play": format!("/play/{n}?{query}"),
    });
    // The stream that sends it: this one for its default track, else the one made for the
    // viewers who picked it (none while nobody has).
    let (sender, transcoding) = match &picked {
        _ if default => (s, st.transcoding.is_some()),
        Some(p) => (p, p.status().transcoding.is_some()),
        None => return,
    };
    if !default {
        v["viewers"] = sender.stats.viewers.load(Ordering::Relaxed).into();
    }
    if transcoding {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let media_us = r(&sender.stats.audio_packets) * 20_000;
        let cpu = r(&sender.stats.transcode_us) as f64 * 100.0 / media_us.max(1) as f64;
        v["transcoder_cpu_pct"] = ((cpu * 100.0).round() / 100.0).into();
        v["transcode_errors"] = r(&sender.stats.transcode_errors).into();
    }
}

/// Every program of the stream's TS: its tracks, viewers, and the URLs that play it.
fn programs_json(app: &AppState, s: &Arc<Stream>, st: &Status) -> Vec<Value> {
    let Some(programs) = &st.programs else {
        return Vec::new();
    };
    let demuxed = s.programs();
    let n = &s.name;
    programs
        .iter()
        .map(|t_set| {
            let number = t_set.program_number;
            let followed = st
                .tracks
                .as_ref()
                .is_some_and(|t| t.program_number == number);
            let own = demuxed.iter().find(|p| {
                p.program_choice() == ProgramChoice::Number(number)
                    && p.audio_choice() == AudioChoice::Auto
                    && !p.h264_video()
            });
            let (src, src_status) = match own {
                _ if followed => (s, st.clone()),
                Some(p) => (p, p.status()),
                None => (s, Status::unknown()),
            };
            let tracks: Vec<Value> = t_set
                .tracks
                .iter()
                .map(|t| {
                    let program = (!followed).then_some(number);
                    track_json(app, src, &src_status, (t_set, program), t)
                })
                .collect();
            let viewers = match own {
                _ if followed => s.stats.viewers.load(Ordering::Relaxed),
                Some(p) => p.stats.viewers.load(Ordering::Relaxed),
                None => 0,
            };
            json!({
                "number": number,
                "pmt_pid": t_set.pmt_pid.0,
                "followed": followed,
                "tracks": tracks,
                "viewers": viewers,
                "urls": {
                    "whep": format!("/whep/{n}?program={number}"),
                    "play": format!("/play/{n}?program={number}"),
                },
            })
        })
        .collect()
}

/// A stream as JSON; `internal` (the admin, another node) adds the node it is pulled from.
fn describe(app: &AppState, s: &Arc<Stream>, internal: bool) -> Value {
    let st = s.status();
    let tracks: Vec<Value> = st
        .tracks
        .as_ref()
        .map(|t_set| {
            t_set
                .tracks
                .iter()
                .map(|t| track_json(app, s, &st, (t_set, None), t))
                .collect()
        })
        .unwrap_or_default();
    let programs = programs_json(app, s, &st);
    let viewers = s.stats.viewers.load(Ordering::Relaxed)
        + s.programs()
            .iter()
            .map(|p| p.stats.viewers.load(Ordering::Relaxed))
            .sum::<usize>();
    let n = &s.name;
    let gop = {
        let g = s.gop.lock();
        json!({
            "frames": g.frames(),
            "bytes": g.bytes(),
            "seconds": g.duration_90k() as f64 / 90_000.0,
            "starts_at": g.lead().map(|l| l.name()),
            "max_seconds": g.bound().seconds(),
            "max_bytes": g.bound().bytes,
            "overflows": g.overflows(),
        })
    };
    // On an edge of a cluster: "pull", and (for the admin) the owner it is pulled from.
    let pulled = app.cluster.as_ref().and_then(|c| c.pulled_from(n));
    let source = match &pulled {
        Some(_) => json!("pull"),
        None => json!(st.source),
    };
    let pulled = pulled.filter(|_| internal);
    let mut v = json!({
        "name": n,
        "source": source,
        "owner": pulled,
        "ts_readers": s.stats.ts_readers.load(Ordering::Relaxed),
        "ts_bytes_sent": s.stats.ts_bytes_sent.load(Ordering::Relaxed),
        "ready": st.ready,
        "program": st.tracks.as_ref().map(|t| t.program_number),
        "tracks": tracks,
        "programs": programs,
        "viewers": viewers,
        "waiting_viewers": s.stats.waiting_viewers.load(Ordering::Relaxed),
        "sessions_total": s.stats.sessions_total.load(Ordering::Relaxed),
        "ingest_bytes": s.stats.ingest_bytes.load(Ordering::Relaxed),
        "ingest_kbps": s.stats.ingest_kbps.load(Ordering::Relaxed),
        "video_frames": s.stats.video_frames.load(Ordering::Relaxed),
        "audio_packets": s.stats.audio_packets.load(Ordering::Relaxed),
        "ts_problems": s.stats.ts_problems.load(Ordering::Relaxed),
        "bytes_sent": s.stats.bytes_sent.load(Ordering::Relaxed),
        "latency": s.stats.latency.summary(),
        "scte35": {
            "cues": s.stats.cues.total.load(Ordering::Relaxed),
            "recent": s.stats.cues.recent().iter().map(|c| super::sse::cue_json(c)).collect::<Vec<_>>(),
        },
        "gop_cache": gop,
        "urls": {
            "whep": format!("/whep/{n}"),
            "play": format!("/play/{n}"),
            "ts": format!("/streams/{n}.ts"),
        },
    });
    if let (Value::Object(v), Value::Object(link)) = (&mut v, link_json(s, internal)) {
        v.extend(link);
    }
    v
}

/// How the network treated the stream's source and SRT readers: `rtp` (RTP-wrapped TS on
/// `--udp`), `srt` (an SRT publisher), `srt_readers` (`m=request`), `whip` (a WHIP
/// publisher's jitter buffer); each null (or empty) without one. Peers only to `internal`.
fn link_json(s: &Stream, internal: bool) -> Value {
    json!({
        "rtp": s.stats.link.rtp().map(|c| json!({
            "packets": c.packets,
            "lost": c.lost,
            "reordered": c.reordered,
            "duplicates": c.duplicates,
            "late": c.late,
            "resyncs": c.resyncs,
        })),
        "srt": s.stats.link.srt().map(|(peer, c)| json!({
            "peer": if internal { json!(peer) } else { json!(null) },
            "rtt_ms": c.rtt_ms,
            "bandwidth_mbps": c.bandwidth_mbps,
            "recv_rate_mbps": c.recv_rate_mbps,
            "packets": c.packets_received,
            "lost": c.lost,
            "retransmitted": c.retransmitted,
            "dropped": c.dropped,
            "undecrypted": c.undecrypted,
            "receive_buffer_ms": c.receive_buffer_ms,
            "latency_ms": c.latency_ms,
        })),
        "srt_readers": s.stats.link.srt_readers().iter().map(|r| json!({
            "peer": if internal { json!(r.peer) } else { json!(null) },
            "rtt_ms": r.stats.rtt_ms,
            "bandwidth_mbps": r.stats.bandwidth_mbps,
            "send_rate_mbps": r.stats.send_rate_mbps,
            "packets_sent": r.stats.packets_sent,
            "bytes_sent": r.stats.bytes_sent,
            "lost": r.stats.lost,
            "retransmitted": r.stats.retransmitted,
            "dropped": r.stats.dropped,
            "send_buffer_ms": r.stats.send_buffer_ms,
            "latency_ms": r.stats.latency_ms,
        })).collect::<Vec<_>>(),
        "whip": s.stats.link.whip().map(|c| json!({
            "delay_ms": c.delay_ms,
            "packets": c.packets,
            "lost": c.lost,
            "late": c.late,
            "recovered": c.recovered,
            "duplicates": c.duplicates,
            "skipped_frames": c.skipped_frames,
            "nacks": c.nacks,
            "plis": c.plis,
            "audio_packets": c.audio_packets,
            "audio_lost": c.audio_lost,
        })),
    })
}

/// Whether a TS reader keeps up with its stream: one the ring laps [`Progress::MAX_LAPS`]
/// times without reading [`Progress::RECOVERED`] rings' worth in between (it lost a whole
/// ring each time, and takes data at a trickle) is disconnected; its connection is better
/// spent on a fresh start. A reader a little slower than the stream is lapped now and then
/// and stays.
struct Progress {
    laps: u32,
    since_lap: u64,
    ring: u64,
}

impl Progress {
    const MAX_LAPS: u32 = 3;
    const RECOVERED: u64 = 4;

    fn new(ring_bytes: usize) -> Self {
        Progress {
            laps: 0,
            since_lap: 0,
            ring: ring_bytes as u64,
        }
    }

    fn read(&mut self, n: usize) {
        self.since_lap += n as u64;
        if self.since_lap >= Self::RECOVERED * self.ring {
            self.laps = 0;
        }
    }

    /// The ring lapped the reader: whether it may go on.
    fn lapped(&mut self) -> bool {
        self.laps += 1;
        self.since_lap = 0;
        self.laps < Self::MAX_LAPS
    }
}

/// The stream's TS, from the live edge: it starts with the latest PAT and PMT and the next IDR
/// (bytes before are held back), so a decoder or pipeline can start at once. Ends when the
/// source ends (`from`: or from the GOP it is in). At most `--max-ts-readers` at once per
/// stream (`counted`: not another node's pull, which also gets ingest marks: see `ts::mark`). A reader that stops taking data is cut by the
/// connection's write timeout (see `serve.rs`), one that takes it at a trickle by its
/// [`Progress`].
fn pull(app: &AppState, name: &str, from: TsStart, counted: bool) -> Result<Response, ApiError> {
    check_name(name)?;
    let stream = app
        .registry
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no stream {name:?}")))?;
    let max = if counted {
        app.cfg.max_ts_readers
    } else {
        usize::MAX
    };
    let Some(reader) = TsReader::new(stream, max) else {
        return Err(ApiError::Unavailable(format!(
            "stream {name:?} has {max} TS readers, the most allowed (--max-ts-readers); retry later"
        )));
    };
    let stream = &reader.0;
    let (cursor, start, held) = match from {
        TsStart::Live => (stream.ring.cursor(), StartPoint::new(), None),
        TsStart::Gop => join_at_last_gop(stream),
    };
    if let Some(held) = &held {
        let sent = &stream.stats.ts_bytes_sent;
        sent.fetch_add(held.len() as u64, Ordering::Relaxed);
    }
    let progress = Progress::new(stream.ring.capacity());
    let body = futures_util::stream::unfold(
        (reader, cursor, start, vec![0u8; 188 * 512], progress),
        move |(reader, mut cur, mut start, mut buf, mut progress)| async move {
            let stream = &reader.0;
            loop {
                match stream.ring.read(&mut cur, &mut buf).await {
                    Read::Data(n) => {
                        progress.read(n);
                        let mut out = Vec::new();
                        start.push(&buf[..n], &mut out);
                        if out.is_empty() {
                            continue;
                        }
                        // Another node's pull learns when these bytes reached this one.
                        if !counted && mark::worth_a_mark(&out) {
                            let at = cur.arrived().unwrap_or_else(Instant::now);
                            let m = mark::ingest_mark(crate::wallclock::unix_micros(at));
                            out.splice(0..0, m);
                        }
                        let chunk = Bytes::from(out);
                        let sent = &stream.stats.ts_bytes_sent;
                        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        return Some((Ok(chunk), (reader, cur, start, buf, progress)));
                    }
                    Read::Lapped(_) if progress.lapped() => {}
                    Read::Lapped(_) => {
                        info!(stream = %stream.name, laps = Progress::MAX_LAPS,
                            "TS reader disconnected: it cannot keep up with the stream");
                        // An error, not an end: the reader can tell it from the source ending.
                        let cut = std::io::Error::other("the TS reader cannot keep up");
                        return Some((Err(cut), (reader, cur, start, buf, progress)));
                    }
                    Read::EndOfInput | Read::Shutdown => return None,
                }
            }
        },
    );
    let held = futures_util::stream::iter(held.map(Ok::<_, std::io::Error>));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "video/mp2t")],
        Body::from_stream(futures_util::StreamExt::chain(held, body)),
    )
        .into_response())
}

/// Where a TS pull starts: `?start=live` (the default: the next start point) or `?start=gop`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TsStart {
    #[default]
    Live,
    /// The GOP the stream is in (from the ring), then live: what a cluster edge pulls, so its
    /// first viewer starts at once.
    Gop,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    start: TsStart,
}

/// A reader of the latest GOP the ring holds, then live: the bytes from its start point (with
/// the PAT and PMT in force there), a cursor at the live edge and a pass-through start. Without
/// a start point in the ring (or for 192/204-byte input), a live join.
fn join_at_last_gop(stream: &Stream) -> (crate::stream::ring::Cursor, StartPoint, Option<Bytes>) {
    let mut cur = stream.ring.cursor_from_oldest();
    let mut held = Vec::new();
    let mut buf = vec![0u8; 188 * 512];
    while let Some(read) = stream.ring.try_read(&mut cur, &mut buf) {
        match read {
            Read::Data(n) => held.extend_from_slice(&buf[..n]),
            // What came before belongs to an earlier source (or was overwritten).
            Read::EndOfInput | Read::Lapped(_) => held.clear(),
            Read::Shutdown => break,
        }
    }
    match crate::ts::start::last_start(&held) {
        Some((at, mut out)) => {
            out.extend_from_slice(&held[at..]);
            (cur, StartPoint::passing_through(), Some(Bytes::from(out)))
        }
        None => (stream.ring.cursor(), StartPoint::new(), None),
    }
}

/// Counts a TS pull reader of a stream for as long as its response lives.
pub(super) struct TsReader(Arc<Stream>);

impl TsReader {
    /// A reader, unless the stream has `max` already.
    pub(super) fn new(s: Arc<Stream>, max: usize) -> Option<Self> {
        let readers = &s.stats.ts_readers;
        readers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(TsReader(s))
    }
}

impl Drop for TsReader {
    fn drop(&mut self) {
        self.0.stats.ts_readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /cluster`: the nodes of this node's cluster, with their load and streams.
/// The nodes' internal URLs: for the nodes (`--cluster-token`) and the admin only.
pub async fn cluster(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    if !auth::node(&app, &caller) {
        return Err(ApiError::Unauthorized("cluster or admin"));
    }
    let Some(c) = &app.cluster else {
        return Err(ApiError::NotFound(
            "this node is not in a cluster (--cluster redis://…)".into(),
        ));
    };
    let nodes = c
        .nodes()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({
        "node": c.id,
        "url": c.url,
        "redis": if c.is_up() { "up" } else { "down" },
        "nodes": nodes,
    })))
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn a_ts_reader_lapped_again_and_again_at_a_trickle_is_cut() {
        let mut p = Progress::new(1000);
        p.read(10);
        assert!(p.lapped());
        p.read(10);
        assert!(p.lapped());
        p.read(10);
        assert!(!p.lapped(), "the third lap without reading much in between");
    }

    #[test]
    fn a_ts_reader_a_little_slower_than_the_stream_stays() {
        let mut p = Progress::new(1000);
        for _ in 0..100 {
            assert!(p.lapped());
            // Lapped once every few rings' worth read.
            for _ in 0..5 {
                p.read(1000);
            }
        }
    }
}
