//! Replaying a TS file in real time, looping seamlessly.
//!
//! [`Replayer`] is sans-IO: it cuts the file into chunks that end at a PCR, each with the media
//! time it must leave at. Every loop after the first is rewritten (PCR, PTS, DTS shifted by the
//! file's duration, continuity counters carried on), so the output is one continuous stream: a
//! viewer, a TS puller or a pipeline sees no jump at the loop point.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::stream::Stream;

const TS: usize = 188;
const WRAP: u64 = 1 << 33;

/// One piece of output: bytes to send at `at_90k` (media time since the start, 90 kHz).
pub struct Chunk<'a> {
    pub data: &'a [u8],
    pub at_90k: u64,
}

pub struct Replayer {
    file: Vec<u8>,
    pos: usize,
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
    #[error("{0}: not an MPEG-TS file (no 0x47 sync at 188-byte spacing)")]
    NotTs(PathBuf),
}

impl Replayer {
    pub fn open(path: &Path, looping: bool) -> Result<Replayer, ReplayError> {
        let data = std::fs::read(path).map_err(|e| ReplayError::Io(path.to_owned(), e))?;
        Replayer::new(data, looping).ok_or_else(|| ReplayError::NotTs(path.to_owned()))
    }

    /// `None` if `data` holds no aligned TS packets.
    pub fn new(data: Vec<u8>, looping: bool) -> Option<Replayer> {
        let start = (0..TS.min(data.len())).find(|&i| {
            data.get(i) == Some(&0x47)
                && data.get(i + TS).is_none_or(|&b| b == 0x47)
                && data.get(i + 2 * TS).is_none_or(|&b| b == 0x47)
        })?;
        let file: Vec<u8> = data[start..].to_vec();
        if file.len() < TS {
            return None;
        }
        let duration = pass_duration(&file);
        Some(Replayer {
            file,
            pos: 0,
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
            self.carry_continuity();
        }
        self.out.clear();
        let offset = (self.loops * self.duration) % WRAP;
        let mut mark = None;
        while self.pos < self.file.len() && mark.is_none() {
            // Damaged files are replayed as they are: bytes between packets pass through.
            let mut pkt = match piece_at(&self.file, self.pos) {
                Piece::Packet(pkt) => pkt,
                Piece::Garbage(n) => {
                    self.out
                        .extend_from_slice(&self.file[self.pos..self.pos + n]);
                    self.pos += n;
                    continue;
                }
            };
            self.pos += TS;
            let pid = usize::from(u16::from_be_bytes([pkt[1], pkt[2]]) & 0x1FFF);
            if self.loops > 0 {
                shift_times(&mut pkt, offset);
            }
            if pkt[3] & 0x10 != 0 {
                let cc = (pkt[3].wrapping_add(self.cc_shift[pid])) & 0x0F;
                pkt[3] = (pkt[3] & 0xF0) | cc;
                self.last_cc[pid] = Some(cc);
            }
            if let Some(pcr) = pcr_90k(&pkt) {
                mark = Some(pcr);
            }
            self.out.extend_from_slice(&pkt);
        }
        let at = match (mark, self.first_mark) {
            (Some(m), None) => {
                self.first_mark = Some(m);
                0
            }
            (Some(m), Some(f)) => m.wrapping_sub(f) % WRAP,
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
        for pkt in packets(&self.file) {
            let pid = usize::from(u16::from_be_bytes([pkt[1], pkt[2]]) & 0x1FFF);
            if pkt[3] & 0x10 != 0 && first[pid].is_none() {
                first[pid] = Some(pkt[3] & 0x0F);
            }
        }
        for ((shift, first), last) in self.cc_shift.iter_mut().zip(first).zip(self.last_cc.iter()) {
            if let (Some(f), Some(last)) = (first, last) {
                *shift = last.wrapping_add(1).wrapping_sub(f) & 0x0F;
            }
        }
    }
}

/// What starts at an offset of a (possibly damaged) TS file.
enum Piece {
    Packet([u8; TS]),
    /// This many bytes up to the next packet (or the end).
    Garbage(usize),
}

/// A sync byte with a packet's room after it, and a neighbour packet in step with it (the
/// next one, or for the last packet before damage, the previous one).
fn is_packet_start(file: &[u8], at: usize) -> bool {
    file.get(at) == Some(&0x47)
        && at + TS <= file.len()
        && (file.get(at + TS).is_none_or(|&b| b == 0x47) || (at >= TS && file[at - TS] == 0x47))
}

fn piece_at(file: &[u8], pos: usize) -> Piece {
    if is_packet_start(file, pos) {
        let mut pkt = [0u8; TS];
        pkt.copy_from_slice(&file[pos..pos + TS]);
        return Piece::Packet(pkt);
    }
    let skip = (pos + 1..file.len())
        .find(|&i| is_packet_start(file, i))
        .unwrap_or(file.len())
        - pos;
    Piece::Garbage(skip)
}

/// The whole packets of a file, skipping anything between them.
fn packets(file: &[u8]) -> impl Iterator<Item = [u8; TS]> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < file.len() {
            match piece_at(file, pos) {
                Piece::Packet(p) => {
                    pos += TS;
                    return Some(p);
                }
                Piece::Garbage(n) => pos += n,
            }
        }
        None
    })
}

/// PCR of a packet in 90 kHz units, if it carries one.
fn pcr_90k(pkt: &[u8; TS]) -> Option<u64> {
    if pkt[3] & 0x20 == 0 || pkt[4] < 7 || pkt[5] & 0x10 == 0 {
        return None;
    }
    let b = &pkt[6..11];
    Some(
        (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | (u64::from(b[4]) >> 7),
    )
}

/// Offset of the payload in a packet, if it has one.
fn payload_start(pkt: &[u8; TS]) -> Option<usize> {
    let start = match pkt[3] & 0x30 {
        0x10 => 4,
        0x30 => 5 + usize::from(pkt[4]),
        _ => return None,
    };
    (start < TS).then_some(start)
}

/// Add `offset` (mod 2^33) to the PCR and to a PES header's PTS/DTS in this packet.
fn shift_times(pkt: &mut [u8; TS], offset: u64) {
    if let Some(pcr) = pcr_90k(pkt) {
        let v = (pcr + offset) % WRAP;
        pkt[6] = (v >> 25) as u8;
        pkt[7] = (v >> 17) as u8;
        pkt[8] = (v >> 9) as u8;
        pkt[9] = (v >> 1) as u8;
        pkt[10] = (pkt[10] & 0x7F) | (((v & 1) as u8) << 7);
    }
    let pusi = pkt[1] & 0x40 != 0;
    let Some(p) = payload_start(pkt) else { return };
    if !pusi || p + 14 > TS || pkt[p..p + 3] != [0, 0, 1] || pkt[p + 6] & 0xC0 != 0x80 {
        return;
    }
    let flags = pkt[p + 7];
    if flags & 0x80 != 0 && p + 14 <= TS {
        rewrite_timestamp(&mut pkt[p + 9..p + 14], offset);
    }
    if flags & 0xC0 == 0xC0 && p + 19 <= TS {
        rewrite_timestamp(&mut pkt[p + 14..p + 19], offset);
    }
}

fn read_timestamp(b: &[u8]) -> u64 {
    (u64::from(b[0] >> 1 & 0x07) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

fn rewrite_timestamp(b: &mut [u8], offset: u64) {
    let v = (read_timestamp(b) + offset) % WRAP;
    b[0] = (b[0] & 0xF0) | ((v >> 29) as u8 & 0x0E) | 1;
    b[1] = (v >> 22) as u8;
    b[2] = ((v >> 14) as u8 & 0xFE) | 1;
    b[3] = (v >> 7) as u8;
    b[4] = ((v << 1) as u8) | 1;
}

/// One pass's duration: the longest track's PTS span plus its PES interval.
fn pass_duration(file: &[u8]) -> u64 {
    let mut per_pid: std::collections::HashMap<u16, Vec<u64>> = Default::default();
    let mut pcrs = Vec::new();
    for pkt in packets(file) {
        let pkt = &pkt;
        if let Some(pcr) = pcr_90k(pkt) {
            pcrs.push(pcr);
        }
        let Some(p) = payload_start(pkt) else {
            continue;
        };
        if pkt[1] & 0x40 != 0
            && p + 14 <= TS
            && pkt[p..p + 3] == [0, 0, 1]
            && pkt[p + 6] & 0xC0 == 0x80
            && pkt[p + 7] & 0x80 != 0
        {
            let pid = u16::from_be_bytes([pkt[1], pkt[2]]) & 0x1FFF;
            per_pid
                .entry(pid)
                .or_default()
                .push(read_timestamp(&pkt[p + 9..p + 14]));
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

/// `tsbridge replay FILE --to URL [--loop]`: PUT the file to a server, paced in real time.
pub async fn push(path: &Path, url: &str, looping: bool) -> Result<(), String> {
    let r = Replayer::open(path, looping).map_err(|e| e.to_string())?;
    let (host, path_q) = crate::http::client::split_url(url)?;
    let mut conn = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let head = format!(
        "PUT {path_q} HTTP/1.1\r\nHost: {host}\r\nContent-Type: video/mp2t\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let conn = std::sync::Arc::new(tokio::sync::Mutex::new(conn));
    let c2 = conn.clone();
    pace(r, move |data| {
        let c = c2.clone();
        async move {
            let mut c = c.lock().await;
            c.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            c.write_all(&data).await?;
            c.write_all(b"\r\n").await
        }
    })
    .await
    .map_err(|e| format!("sending to {url}: {e}"))?;
    let mut c = conn.lock().await;
    c.write_all(b"0\r\n\r\n").await.map_err(|e| e.to_string())?;
    let (status, body) = crate::http::client::read_response(&mut *c)
        .await
        .map_err(|e| e.to_string())?;
    if !(200..300).contains(&status) {
        return Err(format!("server answered {status}: {body}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut ts = [0x21, 0, 1, 0, 1];
            rewrite_timestamp(&mut ts, pts);
            p[at + 9..at + 14].copy_from_slice(&ts);
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
    fn timestamp_roundtrip() {
        let mut b = [0x21, 0, 1, 0, 1];
        rewrite_timestamp(&mut b, (1 << 33) - 5);
        assert_eq!(read_timestamp(&b), (1 << 33) - 5);
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
            ptss.push(read_timestamp(&c.data[12 + 9..12 + 14]));
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
        let file = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/h264_opus.ts"
        ))
        .unwrap();
        assert_eq!(pass_duration(&file), 61 * 9000);
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
}
