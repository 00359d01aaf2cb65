//! Replaying a TS file in real time, looping seamlessly.
//!
//! [`Replayer`] is sans-IO: it cuts the file into chunks that end at a PCR, each with the media
//! time it must leave at. Every loop after the first is rewritten (PCR, PTS, DTS shifted by the
//! file's duration, continuity counters carried on), so the output is one continuous stream: a
//! viewer, a TS puller or a pipeline sees no jump at the loop point.
//!
//! The file's packets are found by the crate's [`Aligner`], so M2TS (192-byte) and 204-byte
//! files play too; the output is always 188-byte TS. Bytes between packets (a damaged file)
//! are replayed as they are.

use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use crate::client;
use crate::stream::Stream;
use crate::time::PTS_WRAP;
use crate::ts::packet::{Header, Timestamps};
use crate::ts::{Aligned, Aligner, PACKET_SIZE};

/// One piece of output: bytes to send at `at_90k` (media time since the start, 90 kHz).
pub struct Chunk<'a> {
    pub data: &'a [u8],
    pub at_90k: u64,
}

/// One pass of the file as it is sent: 188-byte packets, and the bytes the aligner found
/// between them (damage) where they were.
struct Pass {
    bytes: Vec<u8>,
    /// The spans of `bytes` that are not packets, in order.
    garbage: Vec<Range<usize>>,
}

/// What starts at a position of a [`Pass`].
enum Piece<'a> {
    Packet(&'a [u8; PACKET_SIZE]),
    Garbage(&'a [u8]),
}

impl Pass {
    /// `None` if `data` holds no packet. Bytes before the first packet are left out.
    fn new(data: &[u8]) -> Option<Pass> {
        let mut bytes = Vec::with_capacity(data.len());
        let mut garbage = Vec::new();
        // End (in `data`) of the last packet's unit.
        let mut last_end: Option<usize> = None;
        let mut keep = |from: usize, to: usize, bytes: &mut Vec<u8>| {
            if to > from {
                garbage.push(bytes.len()..bytes.len() + to - from);
                bytes.extend_from_slice(&data[from..to]);
            }
        };
        let mut on = |item: Aligned<'_>| {
            if let Aligned::Packet {
                packet,
                offset,
                stride,
            } = item
            {
                // The file is in memory: its offsets fit usize.
                let offset = offset as usize;
                if let Some(end) = last_end {
                    keep(
                        end,
                        offset.saturating_sub(stride.prefix()).max(end),
                        &mut bytes,
                    );
                }
                bytes.extend_from_slice(packet);
                last_end = Some((offset + PACKET_SIZE + stride.suffix()).min(data.len()));
            }
            ControlFlow::Continue(())
        };
        let mut aligner = Aligner::new();
        let _ = aligner.push(data, &mut on);
        let _ = aligner.flush(&mut on);
        let end = last_end?;
        keep(end, data.len(), &mut bytes);
        Some(Pass { bytes, garbage })
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The piece at `pos`, a packet or garbage boundary; `next_garbage` is the index of the
    /// first garbage span not before `pos`.
    fn piece(&self, pos: usize, next_garbage: usize) -> Option<Piece<'_>> {
        match self.garbage.get(next_garbage) {
            Some(g) if g.start == pos => Some(Piece::Garbage(&self.bytes[g.clone()])),
            _ => self
                .bytes
                .get(pos..pos + PACKET_SIZE)
                .map(|p| Piece::Packet(p.try_into().expect("a slice of PACKET_SIZE bytes"))),
        }
    }

    /// Every piece, in order.
    fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        let (mut pos, mut next_garbage) = (0, 0);
        std::iter::from_fn(move || {
            let piece = self.piece(pos, next_garbage)?;
            match &piece {
                Piece::Packet(_) => pos += PACKET_SIZE,
                Piece::Garbage(g) => {
                    pos += g.len();
                    next_garbage += 1;
                }
            }
            Some(piece)
        })
    }

    fn packets(&self) -> impl Iterator<Item = &[u8; PACKET_SIZE]> {
        self.pieces().filter_map(|p| match p {
            Piece::Packet(p) => Some(p),
            Piece::Garbage(_) => None,
        })
    }
}

pub struct Replayer {
    file: Pass,
    pos: usize,
    /// Index of the first garbage span of `file` not before `pos`.
    next_garbage: usize,
    looping: bool,
    /// How many times the file has been played completely.
    loops: u64,
    /// Length of one pass in 90 kHz ticks: the offset added per loop.
    duration: u64,
    first_mark: Option<u64>,
    /// Per PID: the last continuity counter written, and the shift applied this loop.
    last_cc: Box<[Option<u8>; 8192]>,
    cc_shift: Box<[u8; 8192]>,
    out: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not an MPEG-TS file (no 0x47 sync at 188-, 192- or 204-byte spacing)")]
    NotTs(PathBuf),
}

impl Replayer {
    pub fn open(path: &Path, looping: bool) -> Result<Replayer, ReplayError> {
        let data = std::fs::read(path).map_err(|e| ReplayError::Io(path.to_owned(), e))?;
        Replayer::new(data, looping).ok_or_else(|| ReplayError::NotTs(path.to_owned()))
    }

    /// `None` if `data` holds no TS packets (of any stride).
    pub fn new(data: Vec<u8>, looping: bool) -> Option<Replayer> {
        let file = Pass::new(&data)?;
        let duration = pass_duration(&file);
        Some(Replayer {
            file,
            pos: 0,
            next_garbage: 0,
            looping,
            loops: 0,
            duration,
            first_mark: None,
            last_cc: Box::new([None; 8192]),
            cc_shift: Box::new([0; 8192]),
            out: Vec::new(),
        })
    }

    /// Length of one pass of the file (90 kHz).
    pub fn duration_90k(&self) -> u64 {
        self.duration
    }

    /// The next chunk, or `None` at the end (when not looping).
    pub fn next_chunk(&mut self) -> Option<Chunk<'_>> {
        if self.pos >= self.file.len() {
            if !self.looping {
                return None;
            }
            self.loops += 1;
            self.pos = 0;
            self.next_garbage = 0;
            self.carry_continuity();
        }
        self.out.clear();
        let offset = (self.loops * self.duration) % PTS_WRAP;
        let mut mark = None;
        while mark.is_none() {
            // Damaged files are replayed as they are: bytes between packets pass through.
            let mut pkt = match self.file.piece(self.pos, self.next_garbage) {
                None => break,
                Some(Piece::Packet(pkt)) => *pkt,
                Some(Piece::Garbage(g)) => {
                    self.out.extend_from_slice(g);
                    self.pos += g.len();
                    self.next_garbage += 1;
                    continue;
                }
            };
            self.pos += PACKET_SIZE;
            let header = Header::parse(&pkt);
            let pid = usize::from(header.pid.0);
            let times = Timestamps::find(&pkt);
            if self.loops > 0 {
                times.shift(&mut pkt, offset);
            }
            if header.has_payload() {
                let cc = (header.cc + self.cc_shift[pid]) & 0x0F;
                pkt[3] = (pkt[3] & 0xF0) | cc;
                self.last_cc[pid] = Some(cc);
            }
            if let Some(pcr) = times.pcr(&pkt) {
                mark = Some(pcr / 300);
            }
            self.out.extend_from_slice(&pkt);
        }
        let at = match (mark, self.first_mark) {
            (Some(m), None) => {
                self.first_mark = Some(m);
                0
            }
            (Some(m), Some(f)) => m.wrapping_sub(f) % PTS_WRAP,
            // Trailing packets after the last PCR: send with the previous chunk's time.
            (None, Some(_)) | (None, None) => u64::MAX,
        };
        Some(Chunk {
            data: &self.out,
            at_90k: at,
        })
    }

    /// At a loop point, shift every PID's counters so its first packet follows its last one.
    fn carry_continuity(&mut self) {
        let mut first = [None::<u8>; 8192];
        for pkt in self.file.packets() {
            let header = Header::parse(pkt);
            let pid = usize::from(header.pid.0);
            if header.has_payload() && first[pid].is_none() {
                first[pid] = Some(header.cc);
            }
        }
        for ((shift, first), last) in self.cc_shift.iter_mut().zip(first).zip(self.last_cc.iter()) {
            if let (Some(f), Some(last)) = (first, last) {
                *shift = last.wrapping_add(1).wrapping_sub(f) & 0x0F;
            }
        }
    }
}

/// One pass's duration: the longest track's PTS span plus its PES interval.
fn pass_duration(file: &Pass) -> u64 {
    let mut per_pid: std::collections::HashMap<u16, Vec<u64>> = Default::default();
    let mut pcrs = Vec::new();
    for pkt in file.packets() {
        let times = Timestamps::find(pkt);
        if let Some(pcr) = times.pcr(pkt) {
            pcrs.push(pcr / 300);
        }
        if let Some(pts) = times.pts(pkt) {
            per_pid
                .entry(Header::parse(pkt).pid.0)
                .or_default()
                .push(pts);
        }
    }
    // Each track's span plus its own PES interval; the longest track sets the loop length, so
    // no track overlaps itself at the loop point (a shorter one gets a small gap instead).
    let longest = per_pid
        .values()
        .filter(|v| v.len() > 1)
        .map(|pts| {
            let mut sorted = pts.clone();
            sorted.sort_unstable();
            let step = sorted
                .windows(2)
                .map(|w| w[1] - w[0])
                .filter(|&d| d > 0)
                .min()
                .unwrap_or(3000);
            sorted[sorted.len() - 1] - sorted[0] + step
        })
        .max();
    if let Some(d) = longest {
        return d;
    }
    match (pcrs.first(), pcrs.last()) {
        (Some(a), Some(b)) if b > a => (b - a) + (b - a) / pcrs.len() as u64,
        _ => 90_000,
    }
}

/// Longest believable gap between two PCRs (90 kHz): 1 s.
const MAX_PCR_STEP: u64 = 90_000;

fn to_duration(t90k: u64) -> Duration {
    Duration::from_micros(t90k.saturating_mul(1_000) / 90)
}

/// Pace chunks in real time, calling `write` for each; ends at EOF when not looping.
pub async fn pace<F, Fut>(mut r: Replayer, mut write: F) -> std::io::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let mut anchor = (Instant::now(), 0u64);
    let mut last_at = 0u64;
    while let Some(chunk) = r.next_chunk() {
        let at = if chunk.at_90k == u64::MAX {
            last_at
        } else {
            chunk.at_90k
        };
        // A clock that goes backwards or leaps ahead (a damaged PCR): re-anchor on it rather
        // than burst or stall.
        if at < last_at || at - last_at > MAX_PCR_STEP {
            let due = anchor.0 + to_duration(last_at - anchor.1);
            anchor = (due, at);
        }
        let data = chunk.data.to_vec();
        last_at = at;
        let due = anchor.0 + to_duration(at - anchor.1);
        tokio::time::sleep_until(due.into()).await;
        write(data).await?;
    }
    Ok(())
}

/// `serve --replay NAME=FILE`: loop the file into the stream forever.
pub async fn serve_file(stream: Arc<Stream>, path: PathBuf) {
    let r = match Replayer::open(&path, true) {
        Ok(r) => r,
        Err(e) => {
            warn!(stream = %stream.name, error = %e, "cannot replay");
            return;
        }
    };
    info!(stream = %stream.name, file = %path.display(),
        seconds = r.duration_90k() as f64 / 90_000.0, "replaying in real time, looping");
    let guard = stream.attach_source();
    let _ = pace(r, |data| {
        guard.write(&data);
        async { Ok(()) }
    })
    .await;
}

/// How long `tsbridge replay --to` waits for a connection, for the server to take more of the
/// stream, and for its answer once the file has been sent.
const PUSH_WAIT: Duration = Duration::from_secs(10);
/// Chunks (each up to a PCR) queued between the pacing and the connection.
const PUSH_QUEUE: usize = 8;

/// `tsbridge replay FILE --to URL [--loop]`: PUT the file to a server as one chunked body,
/// paced in real time.
pub async fn push(path: &Path, url: &str, looping: bool) -> Result<(), String> {
    use std::io::ErrorKind::TimedOut;
    let r = Replayer::open(path, looping).map_err(|e| e.to_string())?;
    let req = client::Request::new(client::Method::PUT, url).header("Content-Type", "video/mp2t");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(PUSH_QUEUE);
    let timeouts = client::Timeouts::stream(PUSH_WAIT, PUSH_WAIT, PUSH_WAIT);
    let http = client::Client::new();
    let upload = http.put_streaming(req, rx, timeouts);
    // Ends the body when it returns: `tx` goes with the closure.
    let feed = pace(r, move |data| {
        let tx = tx.clone();
        async move {
            match tokio::time::timeout(PUSH_WAIT, tx.send(Bytes::from(data))).await {
                Ok(Ok(())) => Ok(()),
                // The upload is over: its own result says why.
                Ok(Err(_)) => Err(std::io::Error::other("the upload ended")),
                Err(_) => Err(std::io::Error::new(
                    TimedOut,
                    format!("the server took nothing for {PUSH_WAIT:?}"),
                )),
            }
        }
    });
    tokio::pin!(upload);
    let answered_early = tokio::select! {
        r = &mut upload => Some(r),
        fed = feed => match fed {
            Err(e) if e.kind() == TimedOut => return Err(format!("sending to {url}: {e}")),
            _ => None,
        },
    };
    let response = match answered_early {
        Some(r) => r,
        None => upload.await,
    }
    .map_err(|e| e.to_string())?;
    if !(200..300).contains(&response.status) {
        return Err(format!(
            "server answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::packet::{read_timestamp, timestamp_bytes};
    use crate::ts::{DemuxEvent, Demuxer};

    const TS: usize = PACKET_SIZE;

    fn packet(pid: u16, cc: u8, pcr: Option<u64>, pts: Option<u64>) -> [u8; TS] {
        let mut p = [0xFFu8; TS];
        p[0] = 0x47;
        p[1] = ((pid >> 8) as u8 & 0x1F) | if pts.is_some() { 0x40 } else { 0 };
        p[2] = pid as u8;
        let mut at = 4;
        if let Some(pcr) = pcr {
            p[3] = 0x30 | cc;
            p[4] = 7;
            p[5] = 0x10;
            p[6] = (pcr >> 25) as u8;
            p[7] = (pcr >> 17) as u8;
            p[8] = (pcr >> 9) as u8;
            p[9] = (pcr >> 1) as u8;
            p[10] = ((pcr & 1) as u8) << 7 | 0x7E;
            p[11] = 0;
            at = 12;
        } else {
            p[3] = 0x10 | cc;
        }
        if let Some(pts) = pts {
            p[at..at + 9].copy_from_slice(&[0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5]);
            p[at + 9..at + 14].copy_from_slice(&timestamp_bytes(0b0010, pts));
        }
        p
    }

    fn file() -> Vec<u8> {
        let mut f = Vec::new();
        for i in 0..30u64 {
            f.extend_from_slice(&packet(
                0x100,
                (i % 16) as u8,
                Some(1000 + i * 3000),
                Some(4000 + i * 3000),
            ));
        }
        f
    }

    #[test]
    fn loop_is_seamless_in_time_and_continuity() {
        let mut r = Replayer::new(file(), true).unwrap();
        assert_eq!(r.duration_90k(), 30 * 3000);
        let mut ats = Vec::new();
        let mut ccs = Vec::new();
        let mut ptss = Vec::new();
        for _ in 0..70 {
            let c = r.next_chunk().unwrap();
            ats.push(c.at_90k);
            ccs.push(c.data[3] & 0x0F);
            ptss.push(read_timestamp(c.data[12 + 9..12 + 14].try_into().unwrap()));
        }
        for w in ats.windows(2) {
            assert_eq!(w[1] - w[0], 3000, "{ats:?}");
        }
        for w in ptss.windows(2) {
            assert_eq!(w[1] - w[0], 3000);
        }
        for w in ccs.windows(2) {
            assert_eq!(w[1], (w[0] + 1) & 0x0F, "{ccs:?}");
        }
    }

    #[test]
    fn loop_length_covers_the_longest_track() {
        // ffmpeg's h264_opus.ts: 180 video frames (6.0 s) but 61 Opus PES of 100 ms (6.1 s).
        let file = crate::testdata::bytes("h264_opus.ts");
        assert_eq!(pass_duration(&Pass::new(&file).unwrap()), 61 * 9000);
    }

    #[test]
    fn damaged_file_is_replayed_as_is_with_its_packets_found() {
        let mut f = file();
        f.splice(188 * 3..188 * 3, b"junk\x47junk".iter().copied());
        let mut r = Replayer::new(f.clone(), false).unwrap();
        assert_eq!(r.duration_90k(), 30 * 3000);
        let mut out = Vec::new();
        let mut ats = Vec::new();
        while let Some(c) = r.next_chunk() {
            out.extend_from_slice(c.data);
            ats.push(c.at_90k);
        }
        assert_eq!(out, f);
        assert_eq!(ats.len(), 30, "one chunk per PCR, the junk rides along");
    }

    #[test]
    fn non_ts_input_is_refused() {
        assert!(Replayer::new(b"hello world".repeat(100), false).is_none());
    }

    #[test]
    fn without_loop_ends_at_eof() {
        let mut r = Replayer::new(file(), false).unwrap();
        let mut n = 0;
        while r.next_chunk().is_some() {
            n += 1;
        }
        assert_eq!(n, 30);
    }

    use crate::testdata::read as testdata;

    /// (PTS, DTS, payload) of the video and of the audio PES, whatever their PIDs.
    type PesList = Vec<(Option<u64>, Option<u64>, bytes::Bytes)>;

    fn pes_by_kind(ts: &[u8]) -> (PesList, PesList) {
        let mut d = Demuxer::new();
        let mut events = Vec::new();
        d.push(ts, &mut events);
        d.flush(&mut events);
        let tracks = d.tracks().expect("a PMT").clone();
        let (mut video, mut audio) = (Vec::new(), Vec::new());
        for e in events {
            if let DemuxEvent::Pes(p) = e {
                let list = if Some(p.pid) == tracks.video().map(|t| t.pid) {
                    &mut video
                } else {
                    &mut audio
                };
                list.push((p.pts, p.dts, p.data));
            }
        }
        (video, audio)
    }

    #[test]
    fn m2ts_file_replays_as_188_byte_ts_with_the_same_pes() {
        let (Some(m2ts), Some(ts)) = (testdata("h264_opus.m2ts"), testdata("h264_opus.ts")) else {
            return;
        };
        assert!(m2ts.len() % 192 == 0 && m2ts[4] == 0x47);
        let mut r = Replayer::new(m2ts.clone(), true).unwrap();
        let mut first_pass = Vec::new();
        while first_pass.len() < m2ts.len() / 192 * TS {
            first_pass.extend_from_slice(r.next_chunk().unwrap().data);
        }
        assert_eq!(
            first_pass.len(),
            m2ts.len() / 192 * TS,
            "no chunk straddles the loop"
        );
        assert!(first_pass.chunks(TS).all(|p| p[0] == 0x47));
        let units: Vec<u8> = m2ts.chunks(192).flat_map(|u| u[4..].to_vec()).collect();
        assert_eq!(
            first_pass, units,
            "the first pass is the file's packets, unchanged"
        );
        // The same media as the 188-byte file it was remuxed from (its first 3 s; ffmpeg's
        // M2TS mode moved the PIDs).
        let (video, audio) = pes_by_kind(&first_pass);
        let (ts_video, ts_audio) = pes_by_kind(&ts);
        assert_eq!(video.len(), 90);
        assert!(video[..] == ts_video[..video.len()]);
        // ffmpeg rewrote the first Opus PES's control header (start_trim dropped, 2 bytes):
        // the rest is the same.
        assert!(audio.len() >= 25, "{}", audio.len());
        assert_eq!(audio[0].0, ts_audio[0].0);
        assert!(audio[1..] == ts_audio[1..audio.len()]);
        // The loop is rewritten as for any file: the second pass continues the first.
        let mut second = Vec::new();
        while second.len() < first_pass.len() {
            second.extend_from_slice(r.next_chunk().unwrap().data);
        }
        let both = [first_pass.clone(), second].concat();
        let (v2, _) = pes_by_kind(&both);
        assert_eq!(v2.len(), 180);
        let step = r.duration_90k();
        for (a, b) in v2[..90].iter().zip(&v2[90..]) {
            assert_eq!(b.0, a.0.map(|t| (t + step) % PTS_WRAP));
            assert_eq!(b.2, a.2);
        }
    }

    #[test]
    fn fec_204_file_replays_as_188_byte_ts() {
        let mut f = Vec::new();
        for p in file().chunks(TS) {
            f.extend_from_slice(p);
            f.extend([0xAB; 16]);
        }
        let mut r = Replayer::new(f, false).unwrap();
        assert_eq!(r.duration_90k(), 30 * 3000);
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk() {
            out.extend_from_slice(c.data);
        }
        assert_eq!(out, file());
    }
}
