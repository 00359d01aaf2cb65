//! `tsbridge probe FILE|URL`: what a TS holds, from its PMTs (no guessing), plus codec details,
//! GOP and bitrate measured over the first seconds.
//!
//! Every program of the PAT is listed; the one a stream would play ([`ProgramChoice::Auto`])
//! is marked, and its tracks are measured and also reported at the top level, where readers
//! of single-program reports look for them.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use crate::client;
use crate::codec::opus;
use crate::codec::reencode::OUTPUT as REENCODED_TO;
use crate::codec::reorder::{ReorderDetector, B_FRAMES_ADVICE};
use crate::codec::{VideoAssembler, VideoCodec, VideoProfile};
#[cfg(doc)]
use crate::ts::ProgramChoice;
use crate::ts::{AudioChoice, Codec, DemuxEvent, Demuxer, TrackInfo, TrackSet};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The followed program (see `programs`): its number, PMT PID and tracks.
    pub program_number: Option<u16>,
    pub pmt_pid: Option<u16>,
    pub tracks: Vec<TrackReport>,
    /// Every program whose PMT was seen, in PAT order.
    pub programs: Vec<ProgramReport>,
    pub bytes: u64,
    pub duration_s: f64,
    pub bitrate_kbps: f64,
    pub problems: u64,
}

/// One program of the PAT.
#[derive(Debug, Default, Serialize)]
pub struct ProgramReport {
    pub number: u16,
    pub pmt_pid: u16,
    /// The program a stream plays (the first with H.264/Opus, see `ProgramChoice::Auto`);
    /// only its tracks are measured.
    pub followed: bool,
    pub tracks: Vec<TrackReport>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TrackReport {
    pub pid: u16,
    pub stream_type: u8,
    pub codec: String,
    /// video, audio, data or unknown.
    pub kind: String,
    /// ISO 639-2, from the PMT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    pub playable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Audio: its place among the program's audio tracks (`POST /whep/{s}?audio=N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_index: Option<u8>,
    /// Audio: viewers get it when they pick none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// What the server turns it into for viewers (`--audio-transcode auto`, the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcoded_to: Option<String>,
    /// H.264: from the SPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_level_id: Option<String>,
    /// H.265: `profile-id=…;tier-flag=…;level-id=…` from the SPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    pub frames: u64,
    pub keyframes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gop_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// For video: whether pictures came out of presentation order (B-frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_frames: Option<bool>,
    /// What to do about a problem with a playable track.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Accumulates a report from TS bytes (sans-IO).
pub struct Prober {
    demux: Demuxer,
    video: Option<VideoAssembler>,
    reorder: ReorderDetector,
    events: Vec<DemuxEvent>,
    tracks: Option<TrackSet>,
    programs: Vec<TrackSet>,
    report: Report,
    video_pts: Vec<u64>,
    key_pts: Vec<u64>,
    audio_packets: u64,
    first_pts: Option<u64>,
    last_pts: Option<u64>,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    pub fn new() -> Self {
        Prober {
            demux: Demuxer::new(),
            video: None,
            reorder: ReorderDetector::new(),
            events: Vec::new(),
            tracks: None,
            programs: Vec::new(),
            report: Report::default(),
            video_pts: Vec::new(),
            key_pts: Vec::new(),
            audio_packets: 0,
            first_pts: None,
            last_pts: None,
        }
    }

    /// Media seconds seen so far.
    pub fn seconds(&self) -> f64 {
        match (self.first_pts, self.last_pts) {
            (Some(a), Some(b)) => b.wrapping_sub(a) as f64 / 90_000.0,
            _ => 0.0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.report.bytes += data.len() as u64;
        let mut events = std::mem::take(&mut self.events);
        self.demux.push(data, &mut events);
        self.handle(&mut events);
        self.events = events;
    }

    fn handle(&mut self, events: &mut Vec<DemuxEvent>) {
        for ev in events.drain(..) {
            match ev {
                DemuxEvent::Tracks(t) => {
                    let codec = t.video().and_then(|v| match v.codec {
                        Codec::H264 => Some(VideoCodec::H264),
                        Codec::H265 => Some(VideoCodec::H265),
                        Codec::Mpeg2Video => Some(VideoCodec::Mpeg2),
                        _ => None,
                    });
                    if codec != self.video.as_ref().map(VideoAssembler::codec) {
                        self.video = codec.map(VideoAssembler::new);
                    }
                    self.tracks = Some(t);
                }
                DemuxEvent::Programs(list) => self.programs = list,
                DemuxEvent::Problem(_) => self.report.problems += 1,
                DemuxEvent::Pes(pes) => {
                    let Some(t) = &self.tracks else { continue };
                    if let Some(pts) = pes.pts {
                        self.first_pts.get_or_insert(pts);
                        self.last_pts = Some(pts);
                    }
                    if t.video().is_some_and(|v| v.pid == pes.pid) {
                        let mut aus = Vec::new();
                        if let Some(v) = self.video.as_mut() {
                            v.push(&pes, &mut aus);
                        }
                        for au in aus {
                            self.reorder.push(au.pts);
                            self.video_pts.push(au.pts);
                            if au.keyframe {
                                self.key_pts.push(au.pts);
                            }
                        }
                    } else if t.audio().is_some_and(|a| a.pid == pes.pid) {
                        let mut pk = Vec::new();
                        let _ = opus::split_pes(&pes.data, &mut pk);
                        self.audio_packets += pk.len() as u64;
                    }
                }
                _ => {}
            }
        }
    }

    pub fn finish(mut self) -> Report {
        let mut events = std::mem::take(&mut self.events);
        self.demux.flush(&mut events);
        self.handle(&mut events);
        let secs = self.seconds();
        let mut r = self.report;
        r.duration_s = secs;
        if secs > 0.0 {
            r.bitrate_kbps = (r.bytes as f64 * 8.0 / secs / 1000.0 * 10.0).round() / 10.0;
        }
        let followed = self.tracks.as_ref().map(|t| t.program_number);
        r.programs = self
            .programs
            .iter()
            .map(|p| ProgramReport {
                number: p.program_number,
                pmt_pid: p.pmt_pid.0,
                followed: Some(p.program_number) == followed,
                tracks: p.tracks.iter().map(|t| track_report(p, t)).collect(),
            })
            .collect();
        let Some(ts) = self.tracks else { return r };
        r.program_number = Some(ts.program_number);
        r.pmt_pid = Some(ts.pmt_pid.0);
        for t in &ts.tracks {
            let mut tr = track_report(&ts, t);
            match &t.codec {
                c if c.is_video() && ts.video().is_some_and(|v| v.pid == t.pid) => {
                    if let Some(VideoAssembler::Mpeg2(a)) = &self.video {
                        if let Some(seq) = a.sequence() {
                            tr.width = Some(seq.width);
                            tr.height = Some(seq.height);
                        }
                    }
                    if let Some(info) = self.video.as_ref().and_then(VideoAssembler::info) {
                        match info.profile {
                            VideoProfile::H264(p) => tr.profile_level_id = Some(p.to_string()),
                            VideoProfile::H265(p) => tr.profile = Some(p.to_string()),
                        }
                        tr.width = Some(info.width);
                        tr.height = Some(info.height);
                    }
                    tr.frames = self.video_pts.len() as u64;
                    tr.keyframes = self.key_pts.len() as u64;
                    // (MPEG-2 is re-encoded anyway: its B-frames go with it.)
                    let mpeg2 = t.codec == Codec::Mpeg2Video;
                    tr.b_frames = (!mpeg2).then(|| self.reorder.has_b_frames());
                    if self.reorder.has_b_frames() && !mpeg2 {
                        tr.warning = Some(B_FRAMES_ADVICE.to_string());
                    }
                    if self.key_pts.len() > 1 {
                        let span = self.key_pts[self.key_pts.len() - 1] - self.key_pts[0];
                        tr.gop_s = Some(span as f64 / 90_000.0 / (self.key_pts.len() - 1) as f64);
                    }
                    if self.video_pts.len() > 1 {
                        let lo = self.video_pts.iter().min().copied().unwrap_or(0);
                        let hi = self.video_pts.iter().max().copied().unwrap_or(0);
                        if hi > lo {
                            let fps =
                                (self.video_pts.len() - 1) as f64 * 90_000.0 / (hi - lo) as f64;
                            tr.fps = Some((fps * 100.0).round() / 100.0);
                        }
                    }
                }
                c if c.is_video() => {
                    tr.playable = false;
                    tr.reason = Some("another video track of the program is sent".to_string());
                }
                Codec::Opus { .. } if ts.audio().is_some_and(|a| a.pid == t.pid) => {
                    tr.frames = self.audio_packets
                }
                _ => {}
            }
            r.tracks.push(tr);
        }
        // The followed program's entry gets the measured tracks too.
        if let Some(p) = r.programs.iter_mut().find(|p| p.followed) {
            p.tracks.clone_from(&r.tracks);
        }
        r
    }
}

/// What the PMT alone says about a track of program `ts`, and what a viewer gets of it from
/// a server with the default settings.
fn track_report(ts: &TrackSet, t: &TrackInfo) -> TrackReport {
    let mut tr = TrackReport {
        pid: t.pid.0,
        stream_type: t.stream_type.0,
        codec: t.codec_name().to_string(),
        kind: t.kind.name().to_string(),
        language: t.language.map(|l| l.to_string()),
        playable: t.playable(true),
        ..Default::default()
    };
    if let Some(i) = ts.audio_tracks().position(|a| a.pid == t.pid) {
        tr.audio_index = Some(i as u8);
        let default = AudioChoice::Auto.pick(ts).map(|(i, _)| usize::from(i));
        tr.default = Some(default == Some(i));
    }
    match &t.codec {
        Codec::H264 | Codec::H265 => {}
        Codec::Mpeg2Video => tr.transcoded_to = Some(REENCODED_TO.into()),
        Codec::Opus { channels } => tr.channels = Some(*channels),
        Codec::Transcodable(_) => tr.transcoded_to = Some("Opus".into()),
        Codec::Data { what } => tr.reason = Some(format!("{what}: not sent to viewers")),
        Codec::Unsupported { reason } => tr.reason = Some(reason.to_string()),
    }
    tr
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let several = self.programs.len() > 1;
        for p in &self.programs {
            s.push_str(&format!("program {}, PMT PID {}", p.number, p.pmt_pid));
            match (several, p.followed) {
                (true, true) => s.push_str(" (followed)"),
                (true, false) => s.push_str(" (not followed, not measured)"),
                (false, _) => {}
            }
            s.push('\n');
            for t in &p.tracks {
                track_line(&mut s, t, p.followed);
            }
        }
        if self.programs.is_empty() {
            match self.program_number {
                Some(p) => s.push_str(&format!(
                    "program {p}, PMT PID {}\n",
                    self.pmt_pid.unwrap_or(0)
                )),
                None => s.push_str("no PAT/PMT found: not an MPEG-TS stream, or too short\n"),
            }
            for t in &self.tracks {
                track_line(&mut s, t, true);
            }
        }
        s.push_str(&format!(
            "{} bytes, {:.2} s, {} kbit/s, {} TS problems\n",
            self.bytes, self.duration_s, self.bitrate_kbps, self.problems
        ));
        s
    }
}

/// One track's line of the text report; `measured`: with its packet count.
fn track_line(s: &mut String, t: &TrackReport, measured: bool) {
    s.push_str(&format!(
        "  PID {:>5} type 0x{:02x} {:<12}",
        t.pid, t.stream_type, t.codec
    ));
    let profile = t
        .profile_level_id
        .as_ref()
        .map(|p| format!("profile-level-id {p}"))
        .or_else(|| t.profile.clone());
    if let Some(p) = profile {
        s.push_str(&format!(
            " {p} {}x{}",
            t.width.unwrap_or(0),
            t.height.unwrap_or(0)
        ));
    } else if let (Some(w), Some(h)) = (t.width, t.height) {
        s.push_str(&format!(" {w}x{h}"));
    }
    if let Some(fps) = t.fps {
        s.push_str(&format!(" {fps} fps"));
    }
    if let Some(g) = t.gop_s {
        s.push_str(&format!(" GOP {g:.2} s"));
    }
    if let Some(l) = &t.language {
        s.push_str(&format!(" [{l}]"));
    }
    if let Some(c) = t.channels {
        s.push_str(&format!(" {c} ch"));
        if measured && t.default == Some(true) {
            s.push_str(&format!(", {} packets", t.frames));
        }
    }
    if let Some(to) = &t.transcoded_to {
        s.push_str(&format!(" -> {to} (transcoded)"));
    }
    match (t.audio_index, t.default) {
        (Some(_), Some(true)) => s.push_str(" default audio"),
        (Some(i), _) if t.playable => s.push_str(&format!(" picked with ?audio={i}")),
        _ => {}
    }
    if t.b_frames == Some(true) {
        s.push_str(" B-frames");
    }
    match &t.reason {
        Some(r) if t.kind == "data" => s.push_str(&format!(" ignored: {r}")),
        Some(r) => s.push_str(&format!(" NOT PLAYABLE: {r}")),
        None => {}
    }
    s.push('\n');
    if let Some(w) = &t.warning {
        s.push_str(&format!("    WARNING: {w}\n"));
    }
    if t.b_frames == Some(true) {
        s.push_str(
            "    `tsbridge serve` re-encodes such video once per stream (--video-transcode auto, \
             the default: ~25 % of a core at 720p30), at a CPU cost -bf 0 avoids\n",
        );
    }
}

/// Probe a file or an `http(s)://` URL, reading at most `limit` seconds of media.
pub async fn run(input: &str, limit: Duration) -> Result<Report, String> {
    let mut p = Prober::new();
    if input.starts_with("http://") || input.starts_with("https://") {
        // Give up on a stream that sends nothing for 10 s, and read for `limit` plus a margin
        // at most: what came by then is the report.
        let timeouts = client::Timeouts::stream(URL_WAIT, URL_WAIT, URL_WAIT);
        let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(5);
        let mut got = false;
        let read = client::get_streaming(client::Request::get(input), timeouts, |data| {
            if p.seconds() > limit.as_secs_f64() {
                return false;
            }
            got = true;
            p.push(&data);
            true
        });
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(())) | Err(_) => {}
            // Cut off after some media: report what came.
            Ok(Err(e)) if got && !matches!(e, client::ClientError::Status { .. }) => {}
            Ok(Err(e)) => return Err(e.to_string()),
        }
    } else {
        let f = tokio::fs::File::open(input)
            .await
            .map_err(|e| format!("{input}: {e}"))?;
        read_all(&mut BufReader::new(f), &mut p, limit)
            .await
            .map_err(|e| format!("{input}: {e}"))?;
    }
    Ok(p.finish())
}

/// Connecting, the response head, and silence in the stream, when probing a URL.
const URL_WAIT: Duration = Duration::from_secs(10);

async fn read_all(
    r: &mut (impl AsyncRead + Unpin),
    p: &mut Prober,
    limit: Duration,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 188 * 256];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 || p.seconds() > limit.as_secs_f64() {
            return Ok(());
        }
        p.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str) -> Option<Report> {
        let data = crate::testdata::read(name)?;
        let mut p = Prober::new();
        for chunk in data.chunks(188 * 256) {
            p.push(chunk);
        }
        Some(p.finish())
    }

    #[test]
    fn probe_lists_every_program_and_marks_the_followed_one() {
        let Some(r) = probe("mpts.ts") else { return };
        // The top level is the followed program, as for a single-program stream.
        assert_eq!((r.program_number, r.pmt_pid), (Some(2), Some(0x1001)));
        assert_eq!(r.tracks.len(), 2);
        assert_eq!(r.tracks[0].profile_level_id.as_deref(), Some("42c00d"));
        assert_eq!(r.tracks[0].frames, 120);
        let summary: Vec<_> = r
            .programs
            .iter()
            .map(|p| (p.number, p.pmt_pid, p.followed, p.tracks.len()))
            .collect();
        assert_eq!(summary, [(1, 0x1000, false, 1), (2, 0x1001, true, 2)]);
        let hevc = &r.programs[0].tracks[0];
        assert_eq!(
            (hevc.pid, hevc.stream_type, hevc.playable),
            (0x100, 0x24, true)
        );
        assert_eq!(r.programs[1].tracks[1].channels, Some(2));
        assert_eq!(r.programs[1].tracks[0].fps, Some(30.0));
        let text = r.text();
        assert!(
            text.contains("program 1, PMT PID 4096 (not followed, not measured)\n"),
            "{text}"
        );
        assert!(
            text.contains("program 2, PMT PID 4097 (followed)\n"),
            "{text}"
        );
        assert!(text.contains("H.265"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["programs"][1]["number"], 2);
        assert_eq!(json["programs"][1]["followed"], true);
        assert_eq!(json["programs"][0]["tracks"][0]["codec"], "H.265");
        assert_eq!(json["program_number"], 2);
    }

    #[test]
    fn single_program_report_keeps_its_shape() {
        let Some(r) = probe("h264_opus.ts") else {
            return;
        };
        assert_eq!((r.program_number, r.pmt_pid), (Some(1), Some(0x1000)));
        assert_eq!(r.programs.len(), 1);
        assert!(r.programs[0].followed);
        assert_eq!(r.tracks[1].frames, 301);
        let text = r.text();
        assert!(text.starts_with("program 1, PMT PID 4096\n"), "{text}");
        assert!(text.contains("2 ch, 301 packets"), "{text}");
    }

    #[test]
    fn b_frames_are_reported_with_what_to_do() {
        let Some(r) = probe("h264_bframes.ts") else {
            return;
        };
        let v = &r.tracks[0];
        assert_eq!(v.b_frames, Some(true));
        assert!(v.warning.as_deref().unwrap_or("").contains("-bf 0"));
        assert!(r.text().contains("WARNING"), "{}", r.text());
        let Some(r) = probe("h264_opus.ts") else {
            return;
        };
        assert_eq!(r.tracks[0].b_frames, Some(false));
        assert!(r.tracks[0].warning.is_none());
    }

    #[test]
    fn m2ts_is_probed() {
        let Some(r) = probe("h264_opus.m2ts") else {
            return;
        };
        assert_eq!(r.problems, 0);
        assert_eq!(r.tracks[0].frames, 90);
        assert_eq!(r.tracks[0].gop_s, Some(1.0));
    }
}
