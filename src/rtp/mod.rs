//! RTP payloaders, sans-IO: access units / codec packets in, RTP payloads out, **once per
//! stream**; every viewer then sends the same payloads under its own 12-byte header.
//!
//! ```text
//!  H.264 access unit (Annex B) ─► H264Packetizer ─┐                 per viewer (str0m RTP mode):
//!                                  (RFC 6184)     │
//!  H.265 access unit (Annex B) ─► H265Packetizer ─┼─► [Payload] ──►  SSRC, seq, timestamp, SRTP
//!                                  (RFC 7798)     │   Arc<[u8]>      RtpWrite::new(.., data.clone())
//!  Opus packet ──────────────────► OpusPacketizer ┘   + marker
//!                                  (RFC 7587)
//! ```
//!
//! # Why a payload is one `Arc<[u8]>`
//!
//! str0m 0.25's RTP mode takes the payload as `impl Into<Arc<[u8]>>` (`RtpWrite::new`) and keeps
//! that `Arc` in the stream's send queue and RTX (NACK) cache. A payload that already *is* an
//! `Arc<[u8]>` therefore costs each viewer one reference-count increment: no allocation, no copy,
//! and the resend caches of all viewers share one copy of the bytes. A `Bytes` slice of the
//! access unit (or a 2-byte FU header + `Bytes` body) would avoid one copy per *stream* but force
//! an allocation and a copy per *viewer and packet* (`Arc::from(&bytes[..])`), and N copies in the
//! RTX caches. So the packetizer copies each access unit once, into one contiguous, ready-to-send
//! buffer per RTP packet (FU indicator/header or STAP-A lengths inline). A send path of our own
//! (own SRTP, `sendmmsg`) can equally write `header ‖ data` into one datagram per viewer without
//! allocating.

#![forbid(unsafe_code)]

pub mod h264;
pub mod h265;
pub mod nal;
pub mod opus;

use std::sync::Arc;

pub use h264::H264Packetizer;
pub use h265::H265Packetizer;
pub use opus::OpusPacketizer;

/// A sequence jump (either way) larger than this is a restarted sender, not loss.
pub const RESYNC_JUMP: u64 = 3000;

/// The extended sequence number of `seq` nearest to `highest` (RFC 3550 A.1's unwrap), for
/// the receivers (RTP-wrapped TS on `--udp`, a WHIP publisher's jitter buffer).
pub fn extend_seq(highest: u64, seq: u16) -> u64 {
    let delta = seq.wrapping_sub(highest as u16) as i16;
    highest.saturating_add_signed(i64::from(delta))
}

/// Largest RTP payload the packetizers produce by default.
///
/// 1120 is what str0m 0.25's own (frame API) packetizer uses with its default MTU: 1150
/// (`DATAGRAM_MTU_TARGET`) − 16 (largest SRTP tag), rounded down to the 16-byte SRTP block. So
/// moving to RTP mode keeps today's packet sizes. With the 12-byte RTP header, up to ~40 bytes of
/// header extensions (mid, TWCC, abs-send-time…), a 16-byte SRTP tag and the 2-byte RTX OSN a
/// datagram stays under 1232 bytes, the IPv6 minimum MTU less the IPv6 and UDP headers.
pub const DEFAULT_MAX_PAYLOAD: usize = 1120;

/// One RTP payload (no RTP header) and its marker bit. The sender adds the 12-byte header per
/// viewer (SSRC, sequence number and timestamp differ per viewer). Cloning is a reference-count
/// increment; see the module documentation for why the bytes are an `Arc<[u8]>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub marker: bool,
    pub data: Arc<[u8]>,
}

/// The payloader of one track.
#[derive(Clone, Debug)]
pub enum Packetizer {
    H264(H264Packetizer),
    H265(H265Packetizer),
    Opus(OpusPacketizer),
}

impl Packetizer {
    /// One H.264 / H.265 access unit (Annex B) or one Opus packet in; its payloads are appended
    /// to `out`.
    pub fn packetize(&mut self, data: &[u8], out: &mut Vec<Payload>) {
        match self {
            Packetizer::H264(p) => p.packetize(data, out),
            Packetizer::H265(p) => p.packetize(data, out),
            Packetizer::Opus(p) => p.packetize(data, out),
        }
    }
}
