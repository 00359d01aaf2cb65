//! AAC framing, sans-IO: ADTS headers (stream_type 0x0F) and LOAS/LATM (stream_type 0x11).
//!
//! Only the framing is parsed here; the raw AAC payloads go to the decoder (symphonia) in
//! [`crate::codec::transcode`]. What the decoder cannot play is reported as an
//! [`AacConfig::unsupported`] reason, not guessed at.

/// Sampling frequencies by `sampling_frequency_index` (ISO/IEC 14496-3 Table 1.18).
const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// MPEG-4 audio object types that matter here.
pub const AOT_AAC_MAIN: u8 = 1;
pub const AOT_AAC_LC: u8 = 2;
pub const AOT_SBR: u8 = 5;
pub const AOT_PS: u8 = 29;

/// What the decoder needs to know about an AAC stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AacConfig {
    /// MPEG-4 audio object type (2 = AAC-LC).
    pub object_type: u8,
    pub sample_rate: u32,
    /// channel_configuration: 1 mono, 2 stereo, 3..=7 multichannel, 0 = defined by a PCE.
    pub channel_config: u8,
    /// Samples per channel in one raw data block (1024, or 960 with frameLengthFlag).
    pub frame_samples: u32,
    /// HE-AAC signalled explicitly (object type 5 or 29 in an AudioSpecificConfig).
    pub sbr: bool,
}

impl AacConfig {
    /// Why the (pure-Rust, AAC-LC only) decoder cannot play this stream, if it cannot.
    pub fn unsupported(&self) -> Option<&'static str> {
        if self.sbr || self.object_type == AOT_SBR || self.object_type == AOT_PS {
            return Some("HE-AAC (SBR/PS) is not supported by the AAC decoder");
        }
        if self.object_type != AOT_AAC_LC {
            return Some(match self.object_type {
                AOT_AAC_MAIN => "AAC Main profile is not supported (AAC-LC only)",
                3 => "AAC SSR profile is not supported (AAC-LC only)",
                4 => "AAC LTP profile is not supported (AAC-LC only)",
                _ => "this MPEG-4 audio object type is not supported (AAC-LC only)",
            });
        }
        match self.channel_config {
            1 | 2 => {}
            0 => return Some("AAC with a program config element is not supported"),
            _ => return Some("AAC with more than 2 channels is not supported"),
        }
        if self.frame_samples != 1024 {
            return Some("AAC with 960-sample frames is not supported");
        }
        None
    }

    pub fn channels(&self) -> u8 {
        self.channel_config
    }
}

/// A parsed ADTS header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdtsHeader {
    pub config: AacConfig,
    /// 7, or 9 with a CRC.
    pub header_len: usize,
    /// Whole frame, header included.
    pub frame_len: usize,
    /// Raw data blocks in the frame (1..=4).
    pub raw_blocks: u8,
}

impl AdtsHeader {
    /// Samples per channel in the whole frame.
    pub fn samples(&self) -> u32 {
        self.config.frame_samples * u32::from(self.raw_blocks)
    }
}

/// Parses an ADTS header at the start of `b` (needs 7 bytes). `None` if it is not a plausible
/// one: no sync word, MPEG layer not 0, a reserved sampling frequency, or a frame length
/// shorter than its header.
pub fn parse_adts(b: &[u8]) -> Option<AdtsHeader> {
    if b.len() < 7 || b[0] != 0xFF || b[1] & 0xF6 != 0xF0 {
        return None;
    }
    let protection_absent = b[1] & 1 == 1;
    let profile = b[2] >> 6;
    let sf_index = usize::from((b[2] >> 2) & 0x0F);
    let channel_config = ((b[2] & 1) << 2) | (b[3] >> 6);
    let frame_len =
        (usize::from(b[3] & 0x03) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
    let raw_blocks = (b[6] & 0x03) + 1;
    let header_len = if protection_absent { 7 } else { 9 };
    let sample_rate = *SAMPLE_RATES.get(sf_index)?;
    if frame_len <= header_len {
        return None;
    }
    Some(AdtsHeader {
        config: AacConfig {
            object_type: profile + 1,
            sample_rate,
            channel_config,
            frame_samples: 1024,
            sbr: false,
        },
        header_len,
        frame_len,
        raw_blocks,
    })
}

/// Reads bits MSB first; reading past the end is an error, never a panic.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(crate) fn bits_left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Up to 32 bits.
    pub(crate) fn read(&mut self, n: u32) -> Option<u32> {
        debug_assert!(n <= 32);
        if self.bits_left() < n as usize {
            return None;
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            let byte = self.data[self.pos / 8];
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u64::from(bit);
            self.pos += 1;
        }
        // n <= 32 bits were read.
        Some(v as u32)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Option<()> {
        if self.bits_left() < n {
            return None;
        }
        self.pos += n;
        Some(())
    }

    pub(crate) fn flag(&mut self) -> Option<bool> {
        self.read(1).map(|b| b == 1)
    }

    /// Copies `n` bytes starting at the current (possibly unaligned) bit position.
    fn read_bytes(&mut self, n: usize, out: &mut Vec<u8>) -> Option<()> {
        if self.bits_left() < n * 8 {
            return None;
        }
        let shift = self.pos % 8;
        let start = self.pos / 8;
        if shift == 0 {
            out.extend_from_slice(&self.data[start..start + n]);
        } else {
            for i in 0..n {
                let hi = self.data[start + i] << shift;
                let lo = self.data.get(start + i + 1).map_or(0, |b| b >> (8 - shift));
                out.push(hi | lo);
            }
        }
        self.pos += n * 8;
        Some(())
    }
}

/// Parses an AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1) as far as this decoder cares: up to
/// the end of the GASpecificConfig for AAC object types. Explicit SBR/PS signalling is noted.
pub(crate) fn parse_audio_specific_config(r: &mut BitReader<'_>) -> Option<AacConfig> {
    fn object_type(r: &mut BitReader<'_>) -> Option<u8> {
        let aot = r.read(5)? as u8;
        if aot == 31 {
            Some(32 + r.read(6)? as u8)
        } else {
            Some(aot)
        }
    }
    fn sample_rate(r: &mut BitReader<'_>) -> Option<u32> {
        let index = r.read(4)? as usize;
        if index == 0x0F {
            r.read(24)
        } else {
            SAMPLE_RATES.get(index).copied()
        }
    }
    let mut aot = object_type(r)?;
    let mut rate = sample_rate(r)?;
    let channel_config = r.read(4)? as u8;
    let mut sbr = false;
    if aot == AOT_SBR || aot == AOT_PS {
        sbr = true;
        // The extension's (output) rate, then the core's object type.
        rate = sample_rate(r)?;
        aot = object_type(r)?;
    }
    let mut frame_samples = 1024;
    if matches!(aot, 1..=4 | 6 | 7 | 17 | 19..=23) {
        // GASpecificConfig.
        if r.flag()? {
            frame_samples = 960;
        }
        if r.flag()? {
            r.skip(14)?; // coreCoderDelay
        }
        let extension = r.flag()?;
        if channel_config == 0 {
            // A program_config_element follows: not supported, stop here.
            return Some(AacConfig {
                object_type: aot,
                sample_rate: rate,
                channel_config,
                frame_samples,
                sbr,
            });
        }
        if aot == 6 || aot == 20 {
            r.skip(3)?; // layerNr
        }
        if extension {
            if aot == 22 {
                r.skip(16)?; // numOfSubFrame, layer_length
            }
            if matches!(aot, 17 | 19 | 20 | 23) {
                r.skip(3)?; // resilience flags
            }
            r.skip(1)?; // extensionFlag3
        }
    }
    Some(AacConfig {
        object_type: aot,
        sample_rate: rate,
        channel_config,
        frame_samples,
        sbr,
    })
}

/// The LOAS sync word (11 bits, 0x2B7) as it appears in the first two bytes.
fn is_loas_sync(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x56 && b[1] & 0xE0 == 0xE0
}

/// Length of the LOAS frame at the start of `b` (3-byte header included), if `b` starts with
/// a LOAS sync word.
pub fn loas_frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 3 || !is_loas_sync(b) {
        return None;
    }
    let len = (usize::from(b[1] & 0x1F) << 8) | usize::from(b[2]);
    Some(3 + len)
}

/// State of a LATM stream: the last StreamMuxConfig.
#[derive(Clone, Debug, Default)]
pub struct Latm {
    config: Option<LatmConfig>,
}

#[derive(Clone, Copy, Debug)]
struct LatmConfig {
    aac: AacConfig,
    sub_frames: u32,
}

/// Why a LOAS frame gave no audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatmError {
    /// Truncated or inconsistent bits.
    Invalid,
    /// `useSameStreamMux` before any StreamMuxConfig: wait for one.
    NoConfig,
    /// A LATM feature this parser does not follow (several programs or layers, CELP/HVXC
    /// framing, audioMuxVersionA).
    Unsupported(&'static str),
}

impl Latm {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn config(&self) -> Option<AacConfig> {
        self.config.map(|c| c.aac)
    }

    pub fn reset(&mut self) {
        self.config = None;
    }

    /// Parses one LOAS frame (header included, as delimited by [`loas_frame_len`]); the raw AAC
    /// payloads (one per sub-frame) are appended to `payloads`, each as a byte range of `buf`.
    pub fn parse_frame(
        &mut self,
        frame: &[u8],
        buf: &mut Vec<u8>,
        payloads: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<AacConfig, LatmError> {
        let body = frame.get(3..).ok_or(LatmError::Invalid)?;
        let mut r = BitReader::new(body);
        let same_mux = r.flag().ok_or(LatmError::Invalid)?;
        if !same_mux {
            self.config = Some(parse_stream_mux_config(&mut r)?);
        }
        let config = self.config.ok_or(LatmError::NoConfig)?;
        for _ in 0..=config.sub_frames {
            // PayloadLengthInfo, frameLengthType 0: MuxSlotLengthBytes.
            let mut len = 0usize;
            loop {
                let b = r.read(8).ok_or(LatmError::Invalid)?;
                len += b as usize;
                if b != 255 {
                    break;
                }
            }
            let start = buf.len();
            r.read_bytes(len, buf).ok_or(LatmError::Invalid)?;
            payloads.push(start..buf.len());
        }
        // Other data and byte alignment may follow; nothing here needs them.
        Ok(config.aac)
    }
}

fn latm_get_value(r: &mut BitReader<'_>) -> Option<u32> {
    let bytes = r.read(2)?;
    let mut v: u32 = 0;
    for _ in 0..=bytes {
        v = (v << 8) | r.read(8)?;
    }
    Some(v)
}

fn parse_stream_mux_config(r: &mut BitReader<'_>) -> Result<LatmConfig, LatmError> {
    let invalid = LatmError::Invalid;
    let version = r.read(1).ok_or(invalid)?;
    let version_a = if version == 1 {
        r.read(1).ok_or(invalid)?
    } else {
        0
    };
    if version_a != 0 {
        return Err(LatmError::Unsupported("LATM audioMuxVersionA 1"));
    }
    if version == 1 {
        latm_get_value(r).ok_or(invalid)?; // taraBufferFullness
    }
    let _all_same_framing = r.flag().ok_or(invalid)?;
    let sub_frames = r.read(6).ok_or(invalid)?;
    let programs = r.read(4).ok_or(invalid)?;
    let layers = r.read(3).ok_or(invalid)?;
    if programs != 0 || layers != 0 {
        return Err(LatmError::Unsupported(
            "LATM with several programs or layers",
        ));
    }
    let aac = if version == 0 {
        parse_audio_specific_config(r).ok_or(invalid)?
    } else {
        let asc_len = latm_get_value(r).ok_or(invalid)? as usize;
        let start = r.position();
        let aac = parse_audio_specific_config(r).ok_or(invalid)?;
        let used = r.position() - start;
        r.skip(asc_len.checked_sub(used).ok_or(invalid)?)
            .ok_or(invalid)?;
        aac
    };
    let frame_length_type = r.read(3).ok_or(invalid)?;
    if frame_length_type != 0 {
        return Err(LatmError::Unsupported("LATM frameLengthType other than 0"));
    }
    r.skip(8).ok_or(invalid)?; // latmBufferFullness
    if r.flag().ok_or(invalid)? {
        // otherDataLenBits: read past it (the data itself comes after the payloads).
        if version == 1 {
            latm_get_value(r).ok_or(invalid)?;
        } else {
            while r.flag().ok_or(invalid)? {
                r.skip(8).ok_or(invalid)?;
            }
            r.skip(8).ok_or(invalid)?;
        }
    }
    if r.flag().ok_or(invalid)? {
        r.skip(8).ok_or(invalid)?; // crcCheckSum
    }
    Ok(LatmConfig { aac, sub_frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ADTS header of ffmpeg's AAC-LC, 48 kHz stereo, no CRC.
    #[test]
    fn adts_header_fields() {
        // profile LC (1), sf index 3 (48 kHz), channel config 2, frame length 0x155.
        let len = 0x155usize;
        let b = [
            0xFF,
            0xF1,
            (1 << 6) | (3 << 2),
            (2 << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            ((len & 7) << 5) as u8 | 0x1F,
            0xFC,
        ];
        let h = parse_adts(&b).unwrap();
        assert_eq!(h.config.object_type, AOT_AAC_LC);
        assert_eq!(h.config.sample_rate, 48_000);
        assert_eq!(h.config.channel_config, 2);
        assert_eq!(h.frame_len, len);
        assert_eq!(h.header_len, 7);
        assert_eq!(h.samples(), 1024);
        assert_eq!(h.config.unsupported(), None);
        assert!(parse_adts(&b[..6]).is_none());
        let mut bad = b;
        bad[2] = (1 << 6) | (13 << 2); // reserved sampling frequency index
        assert!(parse_adts(&bad).is_none());
    }

    #[test]
    fn audio_specific_config_lc_and_he() {
        // AAC-LC, 44.1 kHz, mono: 00010 0100 0001 000
        let lc = [0x12, 0x08];
        let c = parse_audio_specific_config(&mut BitReader::new(&lc)).unwrap();
        assert_eq!(
            (c.object_type, c.sample_rate, c.channel_config),
            (2, 44_100, 1)
        );
        assert_eq!(c.unsupported(), None);
        // HE-AAC (explicit, AOT 5): 00101 0110 (24k) 0010 0011 (48k) 00010 (LC) ...
        let he = [0x2B, 0x11, 0x88, 0x00];
        let c = parse_audio_specific_config(&mut BitReader::new(&he)).unwrap();
        assert!(c.sbr);
        assert_eq!(c.sample_rate, 48_000);
        assert!(c.unsupported().unwrap().contains("HE-AAC"));
    }

    #[test]
    fn bit_reader_never_reads_past_the_end() {
        let mut r = BitReader::new(&[0xA5]);
        assert_eq!(r.read(4), Some(0xA));
        assert_eq!(r.read(5), None);
        assert_eq!(r.read(4), Some(0x5));
        assert_eq!(r.read(1), None);
        let mut out = Vec::new();
        let mut r = BitReader::new(&[0x0F, 0xF0]);
        r.skip(4).unwrap();
        r.read_bytes(1, &mut out).unwrap();
        assert_eq!(out, [0xFF]);
        assert!(r.read_bytes(1, &mut out).is_none());
    }

    #[test]
    fn latm_garbage_is_an_error_not_a_panic() {
        let mut latm = Latm::new();
        let mut buf = Vec::new();
        let mut payloads = Vec::new();
        for seed in 0u32..2000 {
            let mut x = seed.wrapping_mul(2_654_435_761);
            let mut frame = vec![0x56, 0xE0, 0x20];
            for _ in 0..32 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                frame.push(x as u8);
            }
            let _ = latm.parse_frame(&frame, &mut buf, &mut payloads);
        }
        assert!(loas_frame_len(&[0x56, 0xE0]).is_none());
        assert_eq!(loas_frame_len(&[0x56, 0xE1, 0x02]), Some(3 + 0x102));
    }
}
