//! Framing: the source's elementary stream cut into whole frames (ADTS headers, LOAS sync
//! words for LATM, MPEG audio headers), across PES boundaries.
//!
//! PES payloads need not end on a frame, so bytes are kept until a frame is whole. After
//! garbage or a cut frame the framer is out of sync and believes a header only if another
//! follows it (or it ends the data so far): a stray 0xFFF in the payload must not become a
//! frame. The PTS of a PES goes to the first frame that starts in that PES, as ISO/IEC
//! 13818-1 defines it.

use std::ops::Range;

use super::{SourceCodec, TranscodeStats};
use crate::codec::aac::{self, AdtsHeader};
use crate::codec::ac3::{self, Ac3Header};
use crate::codec::mpa::{self, MpaHeader};

/// Bytes kept while looking for a frame before the oldest are dropped as garbage.
const MAX_PENDING: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
pub(super) enum Header {
    Adts(AdtsHeader),
    Mpa(MpaHeader),
    Loas,
    Ac3(Ac3Header),
}

/// Cuts the byte stream into frames, across PES boundaries, resyncing after garbage.
pub(super) struct Framer {
    codec: SourceCodec,
    pub(super) buf: Vec<u8>,
    /// Consumed bytes at the front of `buf`.
    pos: usize,
    /// Where the newest PES payload starts in `buf`, and its PTS.
    mark: Option<(usize, u64)>,
    /// The previous frame ended where this one starts: trust a header without checking the
    /// next one.
    locked: bool,
}

impl Framer {
    pub(super) fn new(codec: SourceCodec) -> Self {
        Self {
            codec,
            buf: Vec::new(),
            pos: 0,
            mark: None,
            locked: false,
        }
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.mark = None;
        self.locked = false;
    }

    pub(super) fn push(&mut self, data: &[u8], pts: Option<u64>, stats: &mut TranscodeStats) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.mark = self
                .mark
                .and_then(|(at, pts)| at.checked_sub(self.pos).map(|at| (at, pts)));
            self.pos = 0;
        }
        if self.buf.len() > MAX_PENDING {
            // Never found a frame in all this: drop it.
            stats.skipped_bytes += self.buf.len() as u64;
            self.clear();
        }
        if let Some(pts) = pts {
            self.mark = Some((self.buf.len(), pts));
        }
        self.buf.extend_from_slice(data);
    }

    fn min_header(&self) -> usize {
        match self.codec {
            SourceCodec::AacAdts => 7,
            SourceCodec::AacLatm => 3,
            SourceCodec::MpegAudio => 4,
            SourceCodec::Ac3 | SourceCodec::Eac3 => 8,
        }
    }

    fn parse(&self, b: &[u8]) -> Option<(Header, usize)> {
        match self.codec {
            SourceCodec::AacAdts => aac::parse_adts(b).map(|h| (Header::Adts(h), h.frame_len)),
            SourceCodec::AacLatm => aac::loas_frame_len(b).map(|len| (Header::Loas, len)),
            SourceCodec::MpegAudio => mpa::parse_header(b).map(|h| (Header::Mpa(h), h.frame_len)),
            SourceCodec::Ac3 | SourceCodec::Eac3 => {
                ac3::parse_header(b).map(|h| (Header::Ac3(h), h.frame_len))
            }
        }
    }

    /// The next whole frame: its header, its bytes in `buf`, and the PTS if it is the first
    /// frame starting in a PES that had one.
    pub(super) fn next(
        &mut self,
        stats: &mut TranscodeStats,
    ) -> Option<(Header, Range<usize>, Option<u64>)> {
        let min = self.min_header();
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() < min {
                return None;
            }
            match self.parse(rest) {
                Some((header, len)) if len <= rest.len() => {
                    // Out of sync, a header is believed only if another one follows it or
                    // it ends the data so far (PES payloads usually end on a frame).
                    let confirmed = self.locked
                        || rest.len() == len
                        || rest.len() - len < min
                        || self.parse(&rest[len..]).is_some();
                    if !confirmed {
                        self.skip(1, stats);
                        continue;
                    }
                    let start = self.pos;
                    self.pos += len;
                    self.locked = true;
                    let pts = match self.mark {
                        Some((at, pts)) if at <= start => {
                            self.mark = None;
                            Some(pts)
                        }
                        _ => None,
                    };
                    return Some((header, start..start + len, pts));
                }
                // A header whose frame is not complete yet: wait for more.
                Some(_) => return None,
                None => {
                    self.locked = false;
                    // Skip to the next byte that could start a header.
                    let sync = match self.codec {
                        SourceCodec::AacLatm => 0x56,
                        SourceCodec::Ac3 | SourceCodec::Eac3 => 0x0B,
                        _ => 0xFF,
                    };
                    let n = rest[1..]
                        .iter()
                        .position(|&b| b == sync)
                        .map_or(rest.len(), |i| i + 1);
                    self.skip(n, stats);
                }
            }
        }
    }

    fn skip(&mut self, n: usize, stats: &mut TranscodeStats) {
        self.pos += n;
        self.locked = false;
        stats.skipped_bytes += n as u64;
    }
}
