//! MPEG-2 video (ISO/IEC 13818-2) access units out of PES payloads, sans-IO: one coded
//! picture each, with the sequence header and extension, GOP header and user data before it,
//! and what the re-encoder needs to know of the stream (size, frame rate, interlacing).
//!
//! Pictures are cut at picture start codes (a new one starts with whatever headers precede
//! its picture header); a PES's PTS goes to the first picture that starts in it (ISO/IEC
//! 13818-1), the others have none and take their time from the decoder's order. A keyframe
//! is an I-picture that a sequence header precedes in its access unit: a decoder starts
//! there. Browsers cannot play MPEG-2 at all: these go to FFmpeg's decoder and the H.264
//! re-encoder (`--features ffmpeg`).

use bytes::Bytes;

use super::EsUnit;

const PICTURE: u8 = 0x00;
const SEQUENCE_HEADER: u8 = 0xB3;
const EXTENSION: u8 = 0xB5;
const GOP: u8 = 0xB8;

/// What a sequence header (and its extension) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceInfo {
    pub width: u32,
    pub height: u32,
    /// Frames per second as a fraction (`frame_rate_code`, MPEG-2 extension ignored).
    pub frame_rate: (u32, u32),
    /// `progressive_sequence` of the sequence extension (MPEG-1: always progressive).
    pub progressive: bool,
}

/// One coded picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// 33-bit 90 kHz PTS of the PES it starts in, for the first picture of that PES.
    pub pts: Option<u64>,
    /// An I-picture after a sequence header.
    pub keyframe: bool,
    /// I (1), P (2) or B (3).
    pub coding_type: u8,
    /// Start code to start code, headers before the picture included.
    pub data: Bytes,
}

/// Reassembles pictures from PES payloads. Positions are counted from the start of the
/// stream (`drained` bytes have left `buf` already).
#[derive(Debug, Default)]
pub struct Mpeg2Assembler {
    /// Bytes from the start of the access unit being collected on.
    buf: Vec<u8>,
    drained: usize,
    /// Start codes before this position have been handled.
    scanned: usize,
    /// Where the collected access unit's picture start code is, once it has one.
    picture_at: Option<usize>,
    /// Its PTS.
    pts: Option<u64>,
    /// The newest PES's PTS and where that PES starts: for the first picture starting in it.
    pending_pts: Option<(usize, u64)>,
    sequence: Option<SequenceInfo>,
}

/// Positions of start codes (the code byte after `00 00 01`) in `data`.
fn start_codes(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    data.windows(3)
        .enumerate()
        .filter(|(_, w)| *w == [0, 0, 1])
        .map(|(i, _)| i + 3)
        .filter(|&i| i < data.len())
}

impl Mpeg2Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest sequence header's details.
    pub fn sequence(&self) -> Option<SequenceInfo> {
        self.sequence
    }

    /// One PES payload; the pictures it completes go to `out`. A picture is complete when
    /// the next access unit starts (a sequence or GOP header, or a picture header, after it),
    /// or at `flush`.
    pub fn push<'a>(&mut self, pes: impl Into<EsUnit<'a>>, out: &mut Vec<Picture>) {
        let pes = pes.into();
        let end = self.drained + self.buf.len();
        if let Some(pts) = pes.pts {
            self.pending_pts = Some((end, pts));
        }
        self.buf.extend_from_slice(pes.data);
        // A start code may straddle the PES boundary: look from 3 bytes back.
        let from = self.scanned.saturating_sub(3).max(self.drained) - self.drained;
        let codes: Vec<usize> = start_codes(&self.buf[from..])
            .map(|i| self.drained + from + i)
            .filter(|&p| p >= self.scanned)
            .collect();
        self.scanned = self.drained + self.buf.len();
        for p in codes {
            let code = self.buf[p - self.drained];
            match code {
                SEQUENCE_HEADER | GOP => {
                    if self.picture_at.is_some() {
                        self.emit(p - 3, out);
                    }
                    if code == SEQUENCE_HEADER {
                        let at = p - self.drained + 1;
                        if let Some(info) = self.buf.get(at..).and_then(parse_sequence) {
                            self.sequence = Some(info);
                        }
                    }
                }
                PICTURE => {
                    if self.picture_at.is_some() {
                        self.emit(p - 3, out);
                    }
                    self.picture_at = Some(p);
                    if let Some((from, pts)) = self.pending_pts {
                        if p >= from {
                            self.pts = Some(pts);
                            self.pending_pts = None;
                        }
                    }
                }
                EXTENSION => {
                    // Sequence extension (id 1): progressive_sequence is bit 3 of its 2nd byte.
                    let at = p - self.drained;
                    let ext = (self.buf.get(at + 1), self.buf.get(at + 2));
                    if let (Some(s), (Some(&id), Some(&b1))) = (self.sequence.as_mut(), ext) {
                        if id >> 4 == 1 {
                            s.progressive = b1 & 0x08 != 0;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The end of the source: the picture being collected is complete.
    pub fn flush(&mut self, out: &mut Vec<Picture>) {
        if self.picture_at.is_some() {
            self.emit(self.drained + self.buf.len(), out);
        }
        self.drained += self.buf.len();
        self.buf.clear();
        self.scanned = self.drained;
        self.pending_pts = None;
    }

    /// Emits the bytes before stream position `end` as the picture collected.
    fn emit(&mut self, end: usize, out: &mut Vec<Picture>) {
        let n = (end - self.drained).min(self.buf.len());
        let data: Vec<u8> = self.buf.drain(..n).collect();
        let at = self.picture_at.take().map_or(0, |p| p - self.drained);
        self.drained += n;
        // picture_coding_type: the 3 bits after the 10-bit temporal_reference.
        let coding_type = data.get(at + 2).map_or(0, |b| (b >> 3) & 0x07);
        let has_sequence = start_codes(&data).any(|i| data[i] == SEQUENCE_HEADER);
        out.push(Picture {
            pts: self.pts.take(),
            keyframe: coding_type == 1 && has_sequence,
            coding_type,
            data: Bytes::from(data),
        });
    }
}

/// width (12 bits), height (12), aspect (4), frame_rate_code (4).
fn parse_sequence(b: &[u8]) -> Option<SequenceInfo> {
    let b = b.get(..4)?;
    let width = u32::from(b[0]) << 4 | u32::from(b[1] >> 4);
    let height = u32::from(b[1] & 0x0F) << 8 | u32::from(b[2]);
    let frame_rate = match b[3] & 0x0F {
        1 => (24_000, 1001),
        2 => (24, 1),
        3 => (25, 1),
        4 => (30_000, 1001),
        5 => (30, 1),
        6 => (50, 1),
        7 => (60_000, 1001),
        8 => (60, 1),
        _ => return None,
    };
    (width > 0 && height > 0).then_some(SequenceInfo {
        width,
        height,
        frame_rate,
        progressive: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// testdata/mpeg2_576i_mp2.ts: 25 pictures (GOP 12, two B-frames), 720x576 interlaced at
    /// 25 fps, one picture per PES; cut anywhere, the same pictures come out.
    #[test]
    fn pictures_of_ffmpeg_mpeg2_576i() {
        let Some(data) = crate::testdata::read("mpeg2_576i_mp2.ts") else {
            return;
        };
        let pes = crate::ts::testutil::pes_of_pid(&data, 0x100);
        assert_eq!(pes.len(), 25);
        let run = |split: usize| {
            let mut a = Mpeg2Assembler::new();
            let mut out = Vec::new();
            for (data, pts) in &pes {
                let mut pts = *pts;
                for chunk in data.chunks(split) {
                    let unit = EsUnit {
                        data: chunk,
                        pts: pts.take(),
                        dts: None,
                    };
                    a.push(unit, &mut out);
                }
            }
            a.flush(&mut out);
            (a, out)
        };
        let (a, pictures) = run(usize::MAX);
        assert_eq!(pictures.len(), 25);
        let types: String = pictures
            .iter()
            .map(|p| match p.coding_type {
                1 => 'I',
                2 => 'P',
                3 => 'B',
                _ => '?',
            })
            .collect();
        assert!(types.starts_with("IPBB"), "{types}");
        let keys: Vec<usize> = (pictures.iter().enumerate())
            .filter(|(_, p)| p.keyframe)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(keys.len(), 3, "{types}");
        assert!(pictures.iter().all(|p| p.pts.is_some()));
        let total: usize = pes.iter().map(|p| p.0.len()).sum();
        assert_eq!(pictures.iter().map(|p| p.data.len()).sum::<usize>(), total);
        assert_eq!(
            a.sequence(),
            Some(SequenceInfo {
                width: 720,
                height: 576,
                frame_rate: (25, 1),
                progressive: false,
            })
        );
        for split in [1, 7, 188] {
            assert_eq!(run(split).1, pictures, "cut every {split} bytes");
        }
    }
}
