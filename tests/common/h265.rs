//! An RFC 7798 depacketizer for tests: RTP payloads (single NAL unit packets, aggregation
//! packets, fragmentation units) back to access units, split at marker bits.

use super::RtpPkt;

/// One access unit as received: its NAL units (2-byte header included) and RTP timestamp.
#[derive(Debug, Clone)]
pub struct HevcAu {
    pub ts: u32,
    pub nals: Vec<Vec<u8>>,
}

impl HevcAu {
    /// The NAL unit types, in order.
    pub fn types(&self) -> Vec<u8> {
        self.nals.iter().map(|n| (n[0] >> 1) & 0x3F).collect()
    }

    /// Holds an IRAP picture (types 16–23).
    pub fn is_irap(&self) -> bool {
        self.types().iter().any(|t| (16..=23).contains(t))
    }
}

/// Access units from the video packets of one SSRC, in arrival order (packets are assumed in
/// order: the tests run on loopback). A fragmented unit missing its start is dropped.
pub fn hevc_access_units(pkts: &[RtpPkt]) -> Vec<HevcAu> {
    let mut out = Vec::new();
    let mut nals: Vec<Vec<u8>> = Vec::new();
    let mut fu: Option<Vec<u8>> = None;
    for p in pkts {
        let b = &p.payload;
        if b.len() < 3 {
            continue;
        }
        match (b[0] >> 1) & 0x3F {
            48 => {
                let mut rest = &b[2..];
                while rest.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let Some(nal) = rest.get(2..2 + n) else { break };
                    nals.push(nal.to_vec());
                    rest = &rest[2 + n..];
                }
            }
            49 => {
                let (start, end, t) = (b[2] & 0x80 != 0, b[2] & 0x40 != 0, b[2] & 0x3F);
                if start {
                    let mut nal = vec![(b[0] & 0x81) | (t << 1), b[1]];
                    nal.extend_from_slice(&b[3..]);
                    fu = Some(nal);
                } else if let Some(nal) = fu.as_mut() {
                    nal.extend_from_slice(&b[3..]);
                }
                if end {
                    if let Some(nal) = fu.take() {
                        nals.push(nal);
                    }
                }
            }
            _ => nals.push(b.to_vec()),
        }
        if p.marker {
            out.push(HevcAu {
                ts: p.ts,
                nals: std::mem::take(&mut nals),
            });
        }
    }
    out
}
