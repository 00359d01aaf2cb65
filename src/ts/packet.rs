//! One 188-byte transport packet: header and adaptation field (ISO/IEC 13818-1 §2.4.3).

use std::fmt;

/// Size of a transport stream packet.
pub const PACKET_SIZE: usize = 188;
/// First byte of every packet.
pub const SYNC_BYTE: u8 = 0x47;

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
                let b = field.get(1..7).ok_or("PCR beyond adaptation field")?;
                let base = u64::from(b[0]) << 25
                    | u64::from(b[1]) << 17
                    | u64::from(b[2]) << 9
                    | u64::from(b[3]) << 1
                    | u64::from(b[4] >> 7);
                let ext = u64::from(b[4] & 0x01) << 8 | u64::from(b[5]);
                af.pcr = Some(base * 300 + ext);
            }
        }
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
    fn oversized_adaptation_field_is_rejected() {
        let p = packet(0x01, 0x00, 0x30, &[184]);
        assert!(split(&p, &Header::parse(&p)).is_err());
        let p = packet(0x01, 0x00, 0x30, &[183]);
        assert!(split(&p, &Header::parse(&p)).is_err());
        let p = packet(0x01, 0x00, 0x20, &[183, 0x40]);
        let (af, payload) = split(&p, &Header::parse(&p)).unwrap();
        assert!(af.random_access && payload.is_empty());
    }
}
