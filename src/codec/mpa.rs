//! MPEG-1/2 audio (layers I, II, III) frame headers, sans-IO (stream_type 0x03 / 0x04).

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MpegVersion {
    Mpeg1,
    Mpeg2,
    /// The unofficial MPEG-2.5 low sampling rates (8–12 kHz).
    Mpeg25,
}

/// A parsed MPEG audio frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpaHeader {
    pub version: MpegVersion,
    /// 1, 2 or 3.
    pub layer: u8,
    pub sample_rate: u32,
    pub channels: u8,
    /// kbit/s.
    pub bitrate: u32,
    /// Whole frame, the 4-byte header included.
    pub frame_len: usize,
    /// Samples per channel in the frame.
    pub samples: u32,
}

impl MpaHeader {
    /// The name for people: "MP1", "MP2" or "MP3".
    pub fn name(&self) -> &'static str {
        match self.layer {
            1 => "MP1",
            2 => "MP2",
            _ => "MP3",
        }
    }
}

const BITRATES_V1: [[u16; 15]; 3] = [
    [
        0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
    ],
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ],
    [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ],
];
const BITRATES_V2_L1: [u16; 15] = [
    0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
];
const BITRATES_V2_L23: [u16; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];

/// Parses the 4-byte header at the start of `b`. `None` if it is not a usable one: no sync,
/// reserved version/layer/rate, a bad bitrate index, or free format (bitrate index 0: the frame
/// length is not in the header, and the decoder does not follow it either).
pub fn parse_header(b: &[u8]) -> Option<MpaHeader> {
    if b.len() < 4 || b[0] != 0xFF || b[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = match (b[1] >> 3) & 3 {
        0 => MpegVersion::Mpeg25,
        2 => MpegVersion::Mpeg2,
        3 => MpegVersion::Mpeg1,
        _ => return None,
    };
    let layer = match (b[1] >> 1) & 3 {
        1 => 3,
        2 => 2,
        3 => 1,
        _ => return None,
    };
    let bitrate_index = usize::from(b[2] >> 4);
    if bitrate_index == 0 || bitrate_index == 15 {
        return None;
    }
    let rate_index = usize::from((b[2] >> 2) & 3);
    let base_rate = [44_100, 48_000, 32_000].get(rate_index)?;
    let sample_rate = match version {
        MpegVersion::Mpeg1 => *base_rate,
        MpegVersion::Mpeg2 => base_rate / 2,
        MpegVersion::Mpeg25 => base_rate / 4,
    };
    let bitrate = u32::from(match (version, layer) {
        (MpegVersion::Mpeg1, _) => BITRATES_V1[usize::from(layer - 1)][bitrate_index],
        (_, 1) => BITRATES_V2_L1[bitrate_index],
        _ => BITRATES_V2_L23[bitrate_index],
    });
    let padding = u32::from((b[2] >> 1) & 1);
    let channels = if b[3] >> 6 == 3 { 1 } else { 2 };
    let (frame_len, samples) = match layer {
        1 => ((12 * bitrate * 1000 / sample_rate + padding) * 4, 384),
        2 => (144 * bitrate * 1000 / sample_rate + padding, 1152),
        _ if version == MpegVersion::Mpeg1 => (144 * bitrate * 1000 / sample_rate + padding, 1152),
        _ => (72 * bitrate * 1000 / sample_rate + padding, 576),
    };
    if frame_len <= 4 {
        return None;
    }
    Some(MpaHeader {
        version,
        layer,
        sample_rate,
        channels,
        bitrate,
        frame_len: frame_len as usize,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp2_header_of_ffmpeg_default() {
        // MPEG-1 layer II, 384 kbit/s? No: index 0xC = 256 kbit/s, 44.1 kHz, stereo.
        let h = parse_header(&[0xFF, 0xFD, 0xC0, 0x04]).unwrap();
        assert_eq!(h.version, MpegVersion::Mpeg1);
        assert_eq!(
            (h.layer, h.sample_rate, h.channels, h.bitrate),
            (2, 44_100, 2, 256)
        );
        assert_eq!(h.frame_len, 144 * 256_000 / 44_100);
        assert_eq!(h.samples, 1152);
        assert_eq!(h.name(), "MP2");
    }

    #[test]
    fn mpeg2_layer3_and_mono() {
        // MPEG-2 layer III, 64 kbit/s (index 8), 24 kHz (index 1), padding, mono.
        let h = parse_header(&[0xFF, 0xF3, 0x86, 0xC0]).unwrap();
        assert_eq!(h.version, MpegVersion::Mpeg2);
        assert_eq!((h.layer, h.sample_rate, h.channels), (3, 24_000, 1));
        assert_eq!(h.frame_len, 72 * 64_000 / 24_000 + 1);
        assert_eq!(h.samples, 576);
    }

    #[test]
    fn rejects_free_format_and_reserved() {
        assert!(parse_header(&[0xFF, 0xFD, 0x00, 0x00]).is_none()); // free format
        assert!(parse_header(&[0xFF, 0xFD, 0xF0, 0x00]).is_none()); // bad bitrate
        assert!(parse_header(&[0xFF, 0xFD, 0xCC, 0x00]).is_none()); // reserved rate
        assert!(parse_header(&[0xFF, 0xE9, 0xC0, 0x00]).is_none()); // reserved version
        assert!(parse_header(&[0xFF, 0xF9, 0xC0, 0x00]).is_none()); // reserved layer
        assert!(parse_header(&[0xFF, 0xFD, 0xC0]).is_none());
    }
}
