//! The ingest mark: a packet a node puts into the TS it serves another node of its cluster,
//! saying when the bytes after it reached the origin (µs since the Unix epoch, the origin's
//! clock). The edge stamps its frames with it, so abs-capture-time and the latency measured on
//! an edge count from the origin's ingest, not from the hop. It rides on a PID of its own that
//! no PMT names, so any other reader of such TS skips it as it skips every unknown PID.

use super::packet::{Pid, PACKET_SIZE, SYNC_BYTE};

/// The PID of ingest marks.
pub const MARK_PID: Pid = Pid(0x1FEE);
const MAGIC: &[u8; 16] = b"tsbridge/ingest1";

/// An ingest mark saying `unix_us`.
pub fn ingest_mark(unix_us: u64) -> [u8; PACKET_SIZE] {
    let mut p = [0xFF; PACKET_SIZE];
    // Payload only, unit start; continuity counter 0 throughout (no reader tracks it).
    p[..4].copy_from_slice(&[
        SYNC_BYTE,
        0x40 | (MARK_PID.0 >> 8) as u8,
        MARK_PID.0 as u8,
        0x10,
    ]);
    p[4..20].copy_from_slice(MAGIC);
    p[20..28].copy_from_slice(&unix_us.to_be_bytes());
    p
}

/// What an ingest mark says, if `pkt` is one.
pub fn read_ingest_mark(pkt: &[u8; PACKET_SIZE]) -> Option<u64> {
    let pid = u16::from(pkt[1] & 0x1F) << 8 | u16::from(pkt[2]);
    if pid != MARK_PID.0 || pkt[4..20] != *MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(pkt[20..28].try_into().ok()?))
}

/// Whether `chunk` (188-byte packets) starts or ends a PES: a unit start, or an adaptation
/// field (a PCR at a start, stuffing at an end). A mark goes before such a chunk only, so a
/// stream of small reads does not get a mark per read.
pub fn worth_a_mark(chunk: &[u8]) -> bool {
    chunk.len().is_multiple_of(PACKET_SIZE)
        && chunk.chunks(PACKET_SIZE).all(|p| p[0] == SYNC_BYTE)
        && chunk
            .chunks(PACKET_SIZE)
            .any(|p| p[1] & 0x40 != 0 || p[3] & 0x20 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_nothing_else_reads_as_one() {
        let m = ingest_mark(1_765_000_000_123_456);
        assert_eq!(read_ingest_mark(&m), Some(1_765_000_000_123_456));
        let mut other = m;
        other[2] = 0x00;
        assert_eq!(read_ingest_mark(&other), None, "another PID");
        let mut other = m;
        other[10] ^= 1;
        assert_eq!(read_ingest_mark(&other), None, "no magic");
    }

    #[test]
    fn only_chunks_that_start_or_end_a_pes_are_worth_a_mark() {
        let mut pkt = [0u8; PACKET_SIZE];
        pkt[0] = SYNC_BYTE;
        pkt[3] = 0x10;
        let mut chunk = pkt.repeat(3);
        assert!(!worth_a_mark(&chunk), "mid-PES payload");
        chunk[PACKET_SIZE + 3] = 0x30;
        assert!(worth_a_mark(&chunk), "an adaptation field");
        assert!(
            !worth_a_mark(&chunk[..PACKET_SIZE * 2 + 4]),
            "not whole packets"
        );
        let mut m2ts = [0u8; 192].repeat(2);
        m2ts[4] = SYNC_BYTE;
        m2ts[5] = 0x40;
        assert!(!worth_a_mark(&m2ts), "192-byte packets");
    }
}
