//! Opus in TS: splitting a PES payload into Opus packets (ETSI TS 102 366 style
//! `opus_control_header`, as written by ffmpeg) and packet durations (RFC 6716 §3.1).

/// One Opus packet out of a PES, without its control header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusPacket<'a> {
    pub data: &'a [u8],
    /// 48 kHz samples since the PES PTS (the sum of the packets before it).
    pub offset_samples: u32,
    /// 48 kHz samples in this packet, from its TOC byte.
    pub samples: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpusError {
    #[error("no opus_control_header prefix at byte {offset}")]
    BadPrefix { offset: usize },
    #[error("Opus access unit at byte {offset} runs past the PES")]
    Truncated { offset: usize },
    #[error("invalid Opus packet (TOC) at byte {offset}")]
    InvalidPacket { offset: usize },
}

/// Splits an Opus PES payload. Each access unit is behind an `opus_control_header`: 11 bits of
/// 0x3FF, start_trim_flag, end_trim_flag, control_extension_flag, 2 reserved bits, `au_size` as
/// a run of 0xFF bytes plus a final byte, then the 16-bit trims and the control extension
/// (length + bytes) when flagged. Trims are skipped: RTP cannot carry them.
///
/// On error, `out` keeps the packets parsed before it.
pub fn split_pes<'a>(payload: &'a [u8], out: &mut Vec<OpusPacket<'a>>) -> Result<(), OpusError> {
    let mut pos = 0;
    let mut offset_samples = 0u32;
    while pos < payload.len() {
        let offset = pos;
        let truncated = OpusError::Truncated { offset };
        let header = payload.get(pos..pos + 2).ok_or(truncated)?;
        if u16::from_be_bytes([header[0], header[1]]) & 0xFFE0 != 0x7FE0 {
            return Err(OpusError::BadPrefix { offset });
        }
        let flags = header[1];
        pos += 2;
        let mut au_size = 0usize;
        loop {
            let b = *payload.get(pos).ok_or(truncated)?;
            pos += 1;
            au_size += usize::from(b);
            if b != 0xFF {
                break;
            }
        }
        if flags & 0x10 != 0 {
            pos += 2; // start_trim
        }
        if flags & 0x08 != 0 {
            pos += 2; // end_trim
        }
        if flags & 0x04 != 0 {
            let len = *payload.get(pos).ok_or(truncated)?;
            pos += 1 + usize::from(len);
        }
        let data = payload.get(pos..pos + au_size).ok_or(truncated)?;
        pos += au_size;
        let samples = packet_samples(data).ok_or(OpusError::InvalidPacket { offset })?;
        out.push(OpusPacket {
            data,
            offset_samples,
            samples,
        });
        offset_samples = offset_samples.saturating_add(samples);
    }
    Ok(())
}

/// Samples at 48 kHz in an Opus packet, from its TOC byte and frame count (RFC 6716 §3.1).
/// `None` for an empty or malformed packet, or one longer than 120 ms.
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        // SILK: 10, 20, 40, 60 ms
        0..=11 => [480, 960, 1920, 2880][usize::from(config & 3)],
        // Hybrid: 10, 20 ms
        12..=15 => [480, 960][usize::from(config & 1)],
        // CELT: 2.5, 5, 10, 20 ms
        _ => [120, 240, 480, 960][usize::from(config & 3)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let total = frame * frames;
    (frames > 0 && total <= 5760).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control header with the given trims and extension, then the packet.
    fn au(
        packet: &[u8],
        start_trim: Option<u16>,
        end_trim: Option<u16>,
        ext: Option<&[u8]>,
    ) -> Vec<u8> {
        let flags = 0xE0
            | u8::from(start_trim.is_some()) << 4
            | u8::from(end_trim.is_some()) << 3
            | u8::from(ext.is_some()) << 2;
        let mut v = vec![0x7F, flags];
        let mut size = packet.len();
        while size >= 255 {
            v.push(0xFF);
            size -= 255;
        }
        v.push(size as u8);
        for trim in [start_trim, end_trim].into_iter().flatten() {
            v.extend(trim.to_be_bytes());
        }
        if let Some(ext) = ext {
            v.push(ext.len() as u8);
            v.extend_from_slice(ext);
        }
        v.extend_from_slice(packet);
        v
    }

    #[test]
    fn control_headers_with_trims_and_size_runs() {
        let p1 = [[0xFC].as_slice(), &[0x11; 299]].concat(); // 20 ms CELT, 300 bytes: ff 2d
        let p2 = [[0xFC].as_slice(), &[0x22; 509]].concat(); // 510 bytes: ff ff 00
        let p3 = [0x00, 0x33]; // 10 ms SILK
        let mut pes = au(&p1, Some(312), None, None);
        assert_eq!(pes[..4], [0x7F, 0xF0, 0xFF, 0x2D]);
        pes.extend(au(&p2, None, Some(100), Some(&[1, 2, 3])));
        pes.extend(au(&p3, Some(1), Some(2), None));
        let mut out = Vec::new();
        split_pes(&pes, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0],
            OpusPacket {
                data: &p1,
                offset_samples: 0,
                samples: 960
            }
        );
        assert_eq!(
            out[1],
            OpusPacket {
                data: &p2,
                offset_samples: 960,
                samples: 960
            }
        );
        assert_eq!(
            out[2],
            OpusPacket {
                data: &p3,
                offset_samples: 1920,
                samples: 480
            }
        );
    }

    #[test]
    fn errors_keep_the_packets_before_them() {
        let good = au(&[0xFC, 1, 2], None, None, None);
        let mut out = Vec::new();
        let mut pes = good.clone();
        pes.extend([0x12, 0x34, 0x00]);
        assert_eq!(
            split_pes(&pes, &mut out),
            Err(OpusError::BadPrefix { offset: 6 })
        );
        assert_eq!(out.len(), 1);
        out.clear();
        let mut pes = good.clone();
        pes.extend(&au(&[0xFC; 10], Some(0), None, None)[..8]);
        assert_eq!(
            split_pes(&pes, &mut out),
            Err(OpusError::Truncated { offset: 6 })
        );
        assert_eq!(out.len(), 1);
        // A run of 0xFF reaching the end, and a lone prefix byte.
        assert!(split_pes(&[0x7F, 0xE0, 0xFF, 0xFF], &mut out).is_err());
        assert!(split_pes(&[0x7F], &mut out).is_err());
        let empty = au(&[], None, None, None);
        assert_eq!(
            split_pes(&empty, &mut out),
            Err(OpusError::InvalidPacket { offset: 0 })
        );
        out.clear();
        assert_eq!(split_pes(&[], &mut out), Ok(()));
        assert!(out.is_empty());
    }

    #[test]
    fn packet_samples_for_several_tocs() {
        assert_eq!(packet_samples(&[0xFC]), Some(960)); // CELT FB 20 ms, code 0
        assert_eq!(packet_samples(&[0xF8]), Some(960));
        assert_eq!(packet_samples(&[0xE0]), Some(120)); // CELT 2.5 ms
        assert_eq!(packet_samples(&[0x78]), Some(960)); // Hybrid FB 20 ms
        assert_eq!(packet_samples(&[0x70]), Some(480)); // Hybrid FB 10 ms
        assert_eq!(packet_samples(&[0x18]), Some(2880)); // SILK NB 60 ms
        assert_eq!(packet_samples(&[0x0B]), None); // SILK 20 ms, code 3 needs a count byte
        assert_eq!(packet_samples(&[0x0B, 0x03]), Some(2880));
        assert_eq!(packet_samples(&[0xFD]), Some(1920)); // code 1: two frames
        assert_eq!(packet_samples(&[0xFE, 0x00]), Some(1920)); // code 2: two frames
        assert_eq!(packet_samples(&[0xFF, 0x06]), Some(5760)); // code 3: 6 x 20 ms
        assert_eq!(packet_samples(&[0xFF, 0x07]), None); // over 120 ms
        assert_eq!(packet_samples(&[0xFF, 0x80]), None); // zero frames
        assert_eq!(packet_samples(&[0xFF]), None);
        assert_eq!(packet_samples(&[]), None);
    }
}
