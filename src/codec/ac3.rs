//! AC-3 and E-AC-3 sync frame headers (ATSC A/52), sans-IO: enough to cut the elementary
//! stream into frames and time them. Decoding is libavcodec's (`--features ffmpeg`).

/// A parsed AC-3 / E-AC-3 sync frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ac3Header {
    /// E-AC-3 (bsid 11–16), else AC-3 (bsid ≤ 8).
    pub eac3: bool,
    /// An E-AC-3 dependent substream (extra channels of the independent frame before it).
    pub dependent: bool,
    pub sample_rate: u32,
    /// Samples per channel: 1536 for AC-3, 256 per audio block for E-AC-3.
    pub samples: u32,
    /// Full-bandwidth channels plus the LFE.
    pub channels: u8,
    /// Whole frame, header included.
    pub frame_len: usize,
}

const SYNC: [u8; 2] = [0x0B, 0x77];
/// Full-bandwidth channels by acmod (1+1 dual mono counts 2).
const NFCHANS: [u8; 8] = [2, 1, 2, 3, 3, 4, 4, 5];
/// AC-3 bitrates (kbit/s) by frmsizecod / 2.
const BITRATES: [u32; 19] = [
    32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640,
];

/// Bits of `b` from bit `at` (MSB first), `n` ≤ 8 of them; 0 past the end.
fn bits(b: &[u8], at: usize, n: usize) -> u8 {
    let mut v = 0u8;
    for i in at..at + n {
        let bit = b.get(i / 8).map_or(0, |byte| (byte >> (7 - i % 8)) & 1);
        v = v << 1 | bit;
    }
    v
}

/// Parses the header at the start of `b` (at least 8 bytes). `None` if it is no usable one:
/// no sync word, a reserved rate, frame size or bsid.
pub fn parse_header(b: &[u8]) -> Option<Ac3Header> {
    if b.len() < 8 || b[..2] != SYNC {
        return None;
    }
    let bsid = bits(b, 40, 5);
    match bsid {
        0..=8 => parse_ac3(b),
        11..=16 => parse_eac3(b),
        _ => None,
    }
}

/// acmod at bit `at`, then the LFE flag after the mix-level fields acmod brings: channels.
fn channels(b: &[u8], at: usize, eac3: bool) -> u8 {
    let acmod = bits(b, at, 3);
    let mut pos = at + 3;
    if !eac3 {
        if acmod & 1 != 0 && acmod != 1 {
            pos += 2; // cmixlev
        }
        if acmod & 4 != 0 {
            pos += 2; // surmixlev
        }
        if acmod == 2 {
            pos += 2; // dsurmod
        }
    }
    NFCHANS[usize::from(acmod)] + bits(b, pos, 1)
}

fn parse_ac3(b: &[u8]) -> Option<Ac3Header> {
    let fscod = bits(b, 32, 2);
    let frmsizecod = bits(b, 34, 6);
    let kbps = *BITRATES.get(usize::from(frmsizecod / 2))?;
    let (sample_rate, words) = match fscod {
        0 => (48_000, 2 * kbps),
        1 => (
            44_100,
            kbps * 1000 * 1536 / 44_100 / 16 + u32::from(frmsizecod & 1),
        ),
        2 => (32_000, 3 * kbps),
        _ => return None,
    };
    Some(Ac3Header {
        eac3: false,
        dependent: false,
        sample_rate,
        samples: 1536,
        // After syncinfo (5 bytes) and bsid/bsmod (1): acmod.
        channels: channels(b, 48, false),
        frame_len: words as usize * 2,
    })
}

fn parse_eac3(b: &[u8]) -> Option<Ac3Header> {
    let strmtyp = bits(b, 16, 2);
    let frmsiz = usize::from(bits(b, 21, 3)) << 8 | usize::from(b[3]);
    let fscod = bits(b, 32, 2);
    let (sample_rate, blocks, acmod_at) = if fscod == 3 {
        let rate = match bits(b, 34, 2) {
            0 => 24_000,
            1 => 22_050,
            2 => 16_000,
            _ => return None,
        };
        (rate, 6, 36)
    } else {
        let rate = [48_000, 44_100, 32_000][usize::from(fscod)];
        (rate, [1, 2, 3, 6][usize::from(bits(b, 34, 2))], 36)
    };
    if strmtyp == 3 {
        return None; // reserved
    }
    Some(Ac3Header {
        eac3: true,
        dependent: strmtyp == 1,
        sample_rate,
        samples: 256 * blocks,
        channels: channels(b, acmod_at, true),
        frame_len: (frmsiz + 1) * 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ac3_stereo_48k_192kbps() {
        // fscod 0, frmsizecod 20 (192 kbit/s), bsid 8, bsmod 0, acmod 2 (L R), dsurmod, lfeon 0.
        let h = parse_header(&[0x0B, 0x77, 0, 0, 0x14, 0x40, 0x40, 0x00]).unwrap();
        assert_eq!(
            h,
            Ac3Header {
                eac3: false,
                dependent: false,
                sample_rate: 48_000,
                samples: 1536,
                channels: 2,
                frame_len: 768,
            }
        );
    }

    #[test]
    fn ac3_5_1_at_44k1_odd_frame_size_code() {
        // fscod 1, frmsizecod 1 (32 kbit/s, one word more), bsid 8, acmod 7 (3/2), cmixlev,
        // surmixlev, lfeon 1: 0b111_01_01_1.
        let h = parse_header(&[0x0B, 0x77, 0, 0, 0x41, 0x40, 0b1110_1011, 0]).unwrap();
        assert_eq!((h.sample_rate, h.channels, h.frame_len), (44_100, 6, 140));
    }

    #[test]
    fn eac3_5_1_six_blocks() {
        // strmtyp 0, substreamid 0, frmsiz 767 (1536 bytes), fscod 0, numblkscod 3, acmod 7,
        // lfeon 1, bsid 16.
        let h = parse_header(&[0x0B, 0x77, 0x02, 0xFF, 0x3F, 0x80, 0, 0]).unwrap();
        assert_eq!(
            h,
            Ac3Header {
                eac3: true,
                dependent: false,
                sample_rate: 48_000,
                samples: 1536,
                channels: 6,
                frame_len: 1536,
            }
        );
        // A dependent substream (strmtyp 1).
        let d = parse_header(&[0x0B, 0x77, 0x42, 0xFF, 0x3F, 0x80, 0, 0]).unwrap();
        assert!(d.dependent);
    }

    #[test]
    fn garbage_and_reserved_values_are_no_header() {
        assert_eq!(parse_header(&[0x0B, 0x77, 0, 0]), None);
        assert_eq!(parse_header(&[0x0B, 0x78, 0, 0, 0x14, 0x40, 0x40, 0]), None);
        // fscod 3 in AC-3, frmsizecod 38+, bsid 10.
        assert_eq!(parse_header(&[0x0B, 0x77, 0, 0, 0xD4, 0x40, 0x40, 0]), None);
        assert_eq!(parse_header(&[0x0B, 0x77, 0, 0, 0x26, 0x40, 0x40, 0]), None);
        assert_eq!(parse_header(&[0x0B, 0x77, 0, 0, 0x14, 0x50, 0x40, 0]), None);
    }
}
