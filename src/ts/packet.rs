//! One 188-byte transport packet: header, adaptation field (ISO/IEC 13818-1 §2.4.3), and the
//! clock fields a packet can carry (PCR, and the PTS/DTS of a PES starting in it), found in
//! place so they can be read or rewritten without copying the packet.

use std::fmt;

use crate::time::PTS_MASK;

/// Size of a transport stream packet.
pub const PACKET_SIZE: usize = 188;
/// First byte of every packet.
pub const SYNC_BYTE: u8 = 0x47;
/// Bytes after the 4-byte header: adaptation field and payload.
pub(crate) const PAYLOAD_SIZE: usize = PACKET_SIZE - 4;

/// A 13-bit packet identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Pid(pub u16);

impl Pid {
    /// Program Association Table.
    pub const PAT: Pid = Pid(0x0000);
    /// Conditional Access Table.
    pub const CAT: Pid = Pid(0x0001);
    /// Null (stuffing) packets; also "no PCR" in a PMT.
    pub const NULL: Pid = Pid(0x1FFF);
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// The 4-byte packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub tei: bool,
    pub pusi: bool,
    pub pid: Pid,
    pub scrambled: bool,
    /// adaptation_field_control: bit 1 = adaptation field, bit 0 = payload.
    pub afc: u8,
    pub cc: u8,
}

impl Header {
    pub fn parse(pkt: &[u8; PACKET_SIZE]) -> Header {
        Header {
            tei: pkt[1] & 0x80 != 0,
            pusi: pkt[1] & 0x40 != 0,
            pid: Pid(u16::from(pkt[1] & 0x1F) << 8 | u16::from(pkt[2])),
            scrambled: pkt[3] & 0xC0 != 0,
            afc: (pkt[3] >> 4) & 0x3,
            cc: pkt[3] & 0x0F,
        }
    }

    pub fn has_payload(&self) -> bool {
        self.afc & 0b01 != 0
    }
}

/// The parts of the adaptation field the demuxer uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AdaptationField {
    pub discontinuity: bool,
    pub random_access: bool,
    /// PCR in 27 MHz units (base * 300 + extension).
    pub pcr: Option<u64>,
    /// The field is longer than its flagged fields: stuffing, which a muxer writes when it has
    /// no more payload for this packet (the end of a PES). Unknown (false) when private data
    /// or an extension is flagged.
    pub stuffed: bool,
}

/// Splits a packet after its header into adaptation field and payload.
/// Returns `Err(reason)` for an adaptation field that does not fit the packet.
pub(crate) fn split<'a>(
    pkt: &'a [u8; PACKET_SIZE],
    header: &Header,
) -> Result<(AdaptationField, &'a [u8]), &'static str> {
    let body = &pkt[4..];
    let mut af = AdaptationField::default();
    let payload_start = if header.afc & 0b10 != 0 {
        let len = usize::from(body[0]);
        let field = body
            .get(1..1 + len)
            .ok_or("adaptation_field_length beyond packet")?;
        if header.has_payload() && 1 + len >= body.len() {
            return Err("adaptation field leaves no room for the payload");
        }
        if let Some(&flags) = field.first() {
            af.discontinuity = flags & 0x80 != 0;
            af.random_access = flags & 0x40 != 0;
            if flags & 0x10 != 0 {
                let b = field
                    .get(1..7)
                    .and_then(|b| b.try_into().ok())
                    .ok_or("PCR beyond adaptation field")?;
                af.pcr = Some(read_pcr(b));
            }
            // flags byte, PCR, OPCR, splice_countdown
            let fields = 1
                + usize::from(flags & 0x10 != 0) * 6
                + usize::from(flags & 0x08 != 0) * 6
                + usize::from(flags & 0x04 != 0);
            af.stuffed = flags & 0x03 == 0 && len > fields;
        }
        // A zero-length field is one byte of stuffing (§2.4.3.5).
        af.stuffed |= len == 0;
        1 + len
    } else {
        0
    };
    let payload = if header.has_payload() {
        &body[payload_start..]
    } else {
        &[][..]
    };
    Ok((af, payload))
}

/// A PCR field: 33-bit base (90 kHz) and 9-bit extension, in 27 MHz units.
fn read_pcr(b: &[u8; 6]) -> u64 {
    let ext = u64::from(b[4] & 0x01) << 8 | u64::from(b[5]);
    read_pcr_base(b) * 300 + ext
}

/// The 33-bit base (90 kHz) of a PCR field.
fn read_pcr_base(b: &[u8; 6]) -> u64 {
    u64::from(b[0]) << 25
        | u64::from(b[1]) << 17
        | u64::from(b[2]) << 9
        | u64::from(b[3]) << 1
        | u64::from(b[4] >> 7)
}

/// Offset of the PCR field in the packet: bytes 6..12 when the adaptation field has one.
const PCR_AT: usize = 6;
/// Offsets in a PES header of the PTS and the DTS fields.
const PES_PTS_AT: usize = 9;
const PES_DTS_AT: usize = 14;

/// Where a packet's clock fields sit: the PCR, and the PTS and DTS of a PES whose header
/// starts in this packet (and fits in it). Found once; read or rewritten in place (the
/// replay loop shifts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timestamps {
    pcr: Option<usize>,
    pts: Option<usize>,
    dts: Option<usize>,
}

impl Timestamps {
    /// Finds the fields; a malformed packet has none.
    pub fn find(pkt: &[u8; PACKET_SIZE]) -> Timestamps {
        let header = Header::parse(pkt);
        let Ok((af, payload)) = split(pkt, &header) else {
            return Timestamps::default();
        };
        let mut t = Timestamps {
            pcr: af.pcr.map(|_| PCR_AT),
            ..Timestamps::default()
        };
        // A PES header with the optional fields: 00 00 01 id len len 10xxxxxx flags hdr_len.
        let pes = match payload {
            [0, 0, 1, id, _, _, b6, flags, len, ..]
                if header.pusi && has_optional_header(*id) && b6 & 0xC0 == 0x80 =>
            {
                Some((*flags >> 6, usize::from(*len)))
            }
            _ => None,
        };
        let at = PACKET_SIZE - payload.len();
        let fits = |field: usize, need: usize, hdr_len: usize| {
            (hdr_len >= need && at + field + 5 <= PACKET_SIZE).then_some(at + field)
        };
        match pes {
            Some((0b10, hdr_len)) => t.pts = fits(PES_PTS_AT, 5, hdr_len),
            Some((0b11, hdr_len)) => {
                t.pts = fits(PES_PTS_AT, 5, hdr_len);
                t.dts = t.pts.and(fits(PES_DTS_AT, 10, hdr_len));
            }
            _ => {}
        }
        t
    }

    /// The PCR in 27 MHz units.
    pub fn pcr(&self, pkt: &[u8; PACKET_SIZE]) -> Option<u64> {
        let at = self.pcr?;
        pkt.get(at..at + 6)
            .and_then(|b| b.try_into().ok())
            .map(read_pcr)
    }

    /// The PES PTS (33 bits, 90 kHz).
    pub fn pts(&self, pkt: &[u8; PACKET_SIZE]) -> Option<u64> {
        let at = self.pts?;
        pkt.get(at..at + 5)
            .and_then(|b| b.try_into().ok())
            .map(read_timestamp)
    }

    /// Adds `delta_90k` (modulo 2^33) to the PCR base and to the PTS and DTS; the PCR
    /// extension and the fields' prefixes are kept.
    pub fn shift(&self, pkt: &mut [u8; PACKET_SIZE], delta_90k: u64) {
        if let Some(b) = self
            .pcr
            .and_then(|at| pkt.get_mut(at..at + 6))
            .and_then(|b| <&mut [u8; 6]>::try_from(b).ok())
        {
            let base = (read_pcr_base(b) + delta_90k) & PTS_MASK;
            b[0] = (base >> 25) as u8;
            b[1] = (base >> 17) as u8;
            b[2] = (base >> 9) as u8;
            b[3] = (base >> 1) as u8;
            b[4] = (b[4] & 0x7F) | ((base & 1) as u8) << 7;
        }
        for at in [self.pts, self.dts].into_iter().flatten() {
            if let Some(b) = pkt
                .get_mut(at..at + 5)
                .and_then(|b| <&mut [u8; 5]>::try_from(b).ok())
            {
                *b = timestamp_bytes(b[0] >> 4, read_timestamp(b) + delta_90k);
            }
        }
    }
}

// ---- writing (the muxer) ----------------------------------------------------------------

/// Writes packet headers of one PID, with its continuity counter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PidWriter {
    pid: Pid,
    /// The counter of the next payload-bearing packet.
    cc: u8,
}

impl PidWriter {
    pub(crate) fn new(pid: Pid) -> Self {
        Self {
            pid: Pid(pid.0 & 0x1FFF),
            cc: 0,
        }
    }

    pub(crate) fn take_cc(&mut self) -> u8 {
        let cc = self.cc;
        self.cc = (cc + 1) & 0x0F;
        cc
    }

    /// The counter of the last payload-bearing packet (adaptation-field-only packets repeat it).
    pub(crate) fn last_cc(&self) -> u8 {
        self.cc.wrapping_sub(1) & 0x0F
    }

    /// Sync byte, PID with the payload_unit_start_indicator; byte 3 is left to the caller.
    pub(crate) fn header(&self, pkt: &mut [u8; PACKET_SIZE], pusi: bool) {
        pkt[0] = SYNC_BYTE;
        pkt[1] = u8::from(pusi) << 6 | (self.pid.0 >> 8) as u8 & 0x1F;
        pkt[2] = self.pid.0 as u8;
    }
}

/// Adaptation field contents of the first packet of a PES.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FirstPacket {
    /// PCR base (90 kHz, 33 bits).
    pub(crate) pcr: Option<u64>,
    pub(crate) random_access: bool,
    pub(crate) discontinuity: bool,
}

impl FirstPacket {
    /// The adaptation field after its length byte (flags, PCR); empty when nothing is set.
    pub(crate) fn fields(&self) -> ([u8; 7], usize) {
        let mut f = [0u8; 7];
        f[0] = u8::from(self.discontinuity) << 7
            | u8::from(self.random_access) << 6
            | u8::from(self.pcr.is_some()) << 4;
        if let Some(pcr) = self.pcr {
            f[1..7].copy_from_slice(&pcr_bytes(pcr));
            (f, 7)
        } else if f[0] != 0 {
            (f, 1)
        } else {
            (f, 0)
        }
    }
}

/// The 6 PCR bytes: 33-bit base, 6 reserved bits, 9-bit extension (0: 90 kHz precision).
pub(crate) fn pcr_bytes(base: u64) -> [u8; 6] {
    let base = base & PTS_MASK;
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        ((base & 1) as u8) << 7 | 0x7E,
        0,
    ]
}

/// Reads a 33-bit timestamp from the 5-byte PTS/DTS field; marker bits are not checked.
pub(crate) fn read_timestamp(b: &[u8; 5]) -> u64 {
    u64::from((b[0] >> 1) & 0x07) << 30
        | u64::from(b[1]) << 22
        | u64::from(b[2] >> 1) << 15
        | u64::from(b[3]) << 7
        | u64::from(b[4] >> 1)
}

/// The 5-byte PTS/DTS field: 4-bit prefix, the 33 bits (masked) in 3/15/15 with marker bits.
pub(crate) fn timestamp_bytes(prefix: u8, ts: u64) -> [u8; 5] {
    let ts = ts & PTS_MASK;
    [
        prefix << 4 | ((ts >> 29) & 0x0E) as u8 | 1,
        (ts >> 22) as u8,
        ((ts >> 14) & 0xFE) as u8 | 1,
        (ts >> 7) as u8,
        ((ts << 1) & 0xFE) as u8 | 1,
    ]
}

/// Stream ids without the optional PES header (program_stream_map, padding, private_stream_2,
/// ECM, EMM, directory, DSMCC, H.222.1 type E).
pub(crate) fn has_optional_header(stream_id: u8) -> bool {
    !matches!(
        stream_id,
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xFF | 0xF2 | 0xF8
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(b1: u8, b2: u8, b3: u8, rest: &[u8]) -> [u8; PACKET_SIZE] {
        let mut p = [0xFF; PACKET_SIZE];
        p[..4].copy_from_slice(&[SYNC_BYTE, b1, b2, b3]);
        p[4..4 + rest.len()].copy_from_slice(rest);
        p
    }

    #[test]
    fn header_fields_are_decoded() {
        let p = packet(0x41, 0x00, 0x17, &[]);
        let h = Header::parse(&p);
        assert_eq!(h.pid, Pid(0x100));
        assert!(h.pusi && !h.tei && !h.scrambled);
        assert_eq!((h.afc, h.cc), (1, 7));
        assert_eq!(Pid(0x100).to_string(), "0x0100");
    }

    #[test]
    fn pcr_is_base_times_300_plus_extension() {
        // base = 0x1_0000_0001, ext = 0x101
        let af = [7, 0x10, 0x80, 0x00, 0x00, 0x00, 0x81, 0x01];
        let p = packet(0x01, 0x00, 0x30, &af);
        let h = Header::parse(&p);
        let (af, payload) = split(&p, &h).unwrap();
        assert_eq!(af.pcr, Some(0x1_0000_0001 * 300 + 0x101));
        assert_eq!(payload.len(), PACKET_SIZE - 4 - 8);
    }

    #[test]
    fn stuffing_is_told_from_flagged_fields() {
        let stuffed = |af: &[u8]| {
            let p = packet(0x01, 0x00, 0x30, af);
            split(&p, &Header::parse(&p)).unwrap().0.stuffed
        };
        assert!(!stuffed(&[7, 0x10, 0, 0, 0, 0, 0, 0]), "a PCR, exactly");
        assert!(
            stuffed(&[9, 0x10, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
            "a PCR, then stuffing"
        );
        assert!(stuffed(&[0]), "a zero-length field is one stuffing byte");
        assert!(stuffed(&[3, 0x00, 0xFF, 0xFF]));
        assert!(!stuffed(&[1, 0x40]), "random_access only");
        assert!(!stuffed(&[4, 0x02, 2, 0, 0]), "private data: not known");
    }

    #[test]
    fn oversized_adaptation_field_is_rejected() {
        let p = packet(0x01, 0x00, 0x30, &[184]);
        assert!(split(&p, &Header::parse(&p)).is_err());
        let p = packet(0x01, 0x00, 0x30, &[183]);
        assert!(split(&p, &Header::parse(&p)).is_err());
        let p = packet(0x01, 0x00, 0x20, &[183, 0x40]);
        let (af, payload) = split(&p, &Header::parse(&p)).unwrap();
        assert!(af.random_access && payload.is_empty());
    }

    #[test]
    fn timestamps_are_read_and_shifted_in_place_across_the_wrap() {
        let base = PTS_MASK - 2;
        let mut rest = vec![
            7,
            0x10,
            (base >> 25) as u8,
            (base >> 17) as u8,
            (base >> 9) as u8,
            (base >> 1) as u8,
            ((base & 1) as u8) << 7 | 0x7E | 0x01,
            0x01,
        ];
        rest.extend([0, 0, 1, 0xE0, 0, 0, 0x80, 0xC0, 10]);
        rest.extend(timestamp_bytes(0b0011, PTS_MASK - 5));
        rest.extend(timestamp_bytes(0b0001, PTS_MASK - 3005));
        let mut p = packet(0x41, 0x00, 0x30, &rest);
        let t = Timestamps::find(&p);
        assert_eq!(t.pcr(&p), Some(base * 300 + 0x101));
        assert_eq!(t.pts(&p), Some(PTS_MASK - 5));
        t.shift(&mut p, 10);
        assert_eq!(
            t.pcr(&p),
            Some(7 * 300 + 0x101),
            "base wraps, extension kept"
        );
        assert_eq!(t.pts(&p), Some(4));
        assert_eq!(
            read_timestamp(p[26..31].try_into().unwrap()),
            PTS_MASK - 2995
        );
        assert_eq!((p[21] >> 4, p[26] >> 4), (0b0011, 0b0001), "prefixes kept");
        assert_eq!(Timestamps::find(&p), t);
        // No PES start, or a PES header without room for its PTS: nothing to find.
        let p = packet(0x01, 0x00, 0x10, &[0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5]);
        assert_eq!(Timestamps::find(&p), Timestamps::default());
        let p = packet(0x41, 0x00, 0x10, &[0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 2]);
        assert_eq!(Timestamps::find(&p).pts(&p), None);
    }
}
