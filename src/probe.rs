//! `tsbridge probe FILE|URL`: what a TS holds, from its PMT (no guessing), plus codec details,
//! GOP and bitrate measured over the first seconds.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::codec::opus;
use crate::codec::reorder::{ReorderDetector, B_FRAMES_ADVICE};
use crate::codec::{VideoAssembler, VideoCodec, VideoProfile};
use crate::ts::{Codec, DemuxEvent, Demuxer, TrackSet};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub program_number: Option<u16>,
    pub pmt_pid: Option<u16>,
    pub tracks: Vec<TrackReport>,
    pub bytes: u64,
    pub duration_s: f64,
    pub bitrate_kbps: f64,
    pub problems: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct TrackReport {
    pub pid: u16,
    pub stream_type: u8,
    pub codec: String,
    pub playable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    events: Vec<DemuxEvent>,
    tracks: Option<TrackSet>,
    report: Report,
    video_pts: Vec<u64>,
    key_pts: Vec<u64>,
    reorder: ReorderDetector,
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
            events: Vec::new(),
            tracks: None,
            report: Report::default(),
            video_pts: Vec::new(),
            key_pts: Vec::new(),
            reorder: ReorderDetector::new(),
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
                        _ => None,
                    });
                    if codec != self.video.as_ref().map(VideoAssembler::codec) {
                        self.video = codec.map(VideoAssembler::new);
                    }
                    self.tracks = Some(t);
                }
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
        let Some(ts) = self.tracks else { return r };
        r.program_number = Some(ts.program_number);
        r.pmt_pid = Some(ts.pmt_pid.0);
        for t in &ts.tracks {
            let mut tr = TrackReport {
                pid: t.pid.0,
                stream_type: t.stream_type.0,
                codec: t.codec_name().to_string(),
                ..Default::default()
            };
            match &t.codec {
                Codec::H264 | Codec::H265 if ts.video().is_some_and(|v| v.pid == t.pid) => {
                    tr.playable = true;
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
                    tr.b_frames = Some(self.reorder.has_b_frames());
                    if self.reorder.has_b_frames() {
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
                Codec::Opus { channels } => {
                    tr.playable = true;
                    tr.channels = Some(*channels);
                    tr.frames = self.audio_packets;
                }
                Codec::H264 | Codec::H265 => {
                    tr.reason = Some("another video track of the program is sent".to_string())
                }
                Codec::Unsupported { reason } => tr.reason = Some(reason.to_string()),
            }
            r.tracks.push(tr);
        }
        r
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        match self.program_number {
            Some(p) => s.push_str(&format!(
                "program {p}, PMT PID {}\n",
                self.pmt_pid.unwrap_or(0)
            )),
            None => s.push_str("no PAT/PMT found: not an MPEG-TS stream, or too short\n"),
        }
        for t in &self.tracks {
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
            }
            if let Some(fps) = t.fps {
                s.push_str(&format!(" {fps} fps"));
            }
            if let Some(g) = t.gop_s {
                s.push_str(&format!(" GOP {g:.2} s"));
            }
            if let Some(c) = t.channels {
                s.push_str(&format!(" {c} ch, {} packets", t.frames));
            }
            if t.b_frames == Some(true) {
                s.push_str(" B-frames");
            }
            if let Some(r) = &t.reason {
                s.push_str(&format!(" NOT PLAYABLE: {r}"));
            }
            s.push('\n');
            if let Some(w) = &t.warning {
                s.push_str(&format!("    WARNING: {w}\n"));
            }
        }
        s.push_str(&format!(
            "{} bytes, {:.2} s, {} kbit/s, {} TS problems\n",
            self.bytes, self.duration_s, self.bitrate_kbps, self.problems
        ));
        s
    }
}

/// Probe a file or an http:// URL, reading at most `limit` seconds of media.
pub async fn run(input: &str, limit: Duration) -> Result<Report, String> {
    let mut p = Prober::new();
    if input.starts_with("http://") {
        let (host, path) = crate::http::client::split_url(input)?;
        let mut conn = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| format!("connect {host}: {e}"))?;
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(conn);
        let (status, _, chunked) = crate::http::client::read_head(&mut r)
            .await
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{input}: HTTP {status}"));
        }
        let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(5);
        let read = async {
            if chunked {
                read_chunked(&mut r, &mut p, limit).await
            } else {
                read_all(&mut r, &mut p, limit).await
            }
        };
        let _ = tokio::time::timeout_at(deadline, read).await;
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

async fn read_chunked(
    r: &mut (impl AsyncBufReadExt + Unpin),
    p: &mut Prober,
    limit: Duration,
) -> std::io::Result<()> {
    let mut line = String::new();
    let mut buf = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if n == 0 || p.seconds() > limit.as_secs_f64() {
            return Ok(());
        }
        buf.resize(n + 2, 0);
        r.read_exact(&mut buf).await?;
        p.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(file: &str) -> Report {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(file);
        let mut p = Prober::new();
        for chunk in std::fs::read(path).expect("testdata").chunks(188 * 64) {
            p.push(chunk);
        }
        p.finish()
    }

    #[test]
    fn b_frames_are_reported_with_what_to_do() {
        let r = probe("h264_bframes.ts");
        let v = &r.tracks[0];
        assert_eq!(v.b_frames, Some(true));
        assert!(v.warning.as_deref().unwrap_or("").contains("-bf 0"));
        assert!(r.text().contains("WARNING"), "{}", r.text());
        let r = probe("h264_opus.ts");
        assert_eq!(r.tracks[0].b_frames, Some(false));
        assert!(r.tracks[0].warning.is_none());
    }
}
