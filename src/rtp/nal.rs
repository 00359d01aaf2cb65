//! The packetization loop H.264 (RFC 6184, packetization-mode=1) and H.265 (RFC 7798, no
//! DONL) share. Both send a NAL unit alone when it fits and nothing small is beside it,
//! aggregate runs of small ones (STAP-A / AP: a payload header, then each unit behind its
//! 16-bit size) and fragment large ones (FU-A / FU: a payload header and an FU header with
//! start/end bits, then a piece of the unit's body). What differs is the NAL unit header —
//! one byte or two, which bits an aggregate takes from its units — and that is [`NalSyntax`].

use std::marker::PhantomData;
use std::sync::Arc;

use super::{Payload, DEFAULT_MAX_PAYLOAD};
use crate::codec::h264::nal_units;

/// The NAL unit header rules of one codec.
pub trait NalSyntax {
    /// NAL unit header (and aggregation payload header) length in bytes.
    const HEADER_LEN: usize;
    /// Whether the unit goes out (at least `HEADER_LEN` bytes long, and not a type that
    /// carries nothing over RTP or that the receiver would read as an RTP packet type).
    fn sendable(nal: &[u8]) -> bool;
    /// The header bits an aggregate of units with headers `acc` and `header` carries (F
    /// ORed; H.264's NRI the highest, H.265's LayerId and TID the lowest). `merge(h, h)` is
    /// what a unit alone contributes.
    fn merge(acc: u16, header: u16) -> u16;
    /// The aggregation packet's header from merged bits.
    fn aggregate(merged: u16) -> u16;
    /// An FU's payload header(s) and its FU header without start/end bits, for `nal`:
    /// `HEADER_LEN + 1` bytes.
    fn fu_prefix(nal: &[u8]) -> [u8; 3];
}

pub const FU_START: u8 = 0x80;
pub const FU_END: u8 = 0x40;
/// Aggregated NAL unit sizes are 16 bits.
const MAX_PAYLOAD: usize = u16::MAX as usize;

/// Packetizes access units of one codec for RTP, once per stream (see the [module](super)
/// docs).
///
/// Per access unit, in order:
/// - NAL units that cannot be sent are dropped ([`NalSyntax::sendable`]).
/// - Runs of consecutive NAL units that fit in one packet together (the parameter sets, often
///   with SEI or a small slice) are aggregated greedily; a NAL unit with nothing to aggregate
///   with goes as a single NAL unit packet.
/// - A NAL unit larger than `max_payload` is split into fragments, each `max_payload` bytes
///   except the last.
/// - The marker bit is set on the last payload of the access unit.
///
/// Stateless across access units (parameter sets before keyframes are the assembler's job),
/// so it never holds back or reorders data. The only state is a scratch buffer, reused.
#[derive(Debug)]
pub struct NalPacketizer<S> {
    max_payload: usize,
    /// Aggregate / fragment under construction.
    scratch: Vec<u8>,
    syntax: PhantomData<S>,
}

impl<S: NalSyntax> Clone for NalPacketizer<S> {
    fn clone(&self) -> Self {
        Self::new(self.max_payload)
    }
}

impl<S: NalSyntax> Default for NalPacketizer<S> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

/// Consecutive small NAL units waiting to go out as one packet.
struct Pending<'a> {
    first: &'a [u8],
    count: usize,
    /// Size of the aggregate holding them: header + Σ (2 + len).
    size: usize,
    merged: u16,
}

impl<S: NalSyntax> NalPacketizer<S> {
    /// `max_payload`: the largest RTP payload to produce (no RTP header, extensions or SRTP
    /// tag included); [`DEFAULT_MAX_PAYLOAD`] is 1120. Clamped so a fragment carries at least
    /// one byte (3 for H.264, 4 for H.265), and to 65535.
    pub fn new(max_payload: usize) -> Self {
        let max_payload = max_payload.clamp(S::HEADER_LEN + 2, MAX_PAYLOAD);
        Self {
            max_payload,
            scratch: Vec::with_capacity(max_payload),
            syntax: PhantomData,
        }
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The unit's header as a number (one or two bytes); `nal` is sendable, so long enough.
    fn header(nal: &[u8]) -> u16 {
        match S::HEADER_LEN {
            1 => u16::from(nal[0]),
            _ => u16::from_be_bytes([nal[0], nal[1]]),
        }
    }

    /// One access unit in Annex B form (start codes, as the assemblers make them); its
    /// payloads are appended to `out`, the last one with the marker bit. Nothing is appended
    /// when the access unit has no NAL unit worth sending. Any input is safe: garbage gives
    /// garbage payloads, never a panic.
    pub fn packetize(&mut self, au: &[u8], out: &mut Vec<Payload>) {
        let before = out.len();
        let mut pending: Option<Pending<'_>> = None;
        for nal in nal_units(au).filter(|nal| S::sendable(nal)) {
            if nal.len() > self.max_payload {
                if let Some(p) = pending.take() {
                    self.flush(p, out);
                }
                self.fragment(nal, out);
                continue;
            }
            let h = Self::header(nal);
            match &mut pending {
                Some(p) if p.size + 2 + nal.len() <= self.max_payload => {
                    if p.count == 1 {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(&[0; 2][..S::HEADER_LEN]); // in `flush`
                        put_sized(&mut self.scratch, p.first);
                    }
                    put_sized(&mut self.scratch, nal);
                    p.count += 1;
                    p.size += 2 + nal.len();
                    p.merged = S::merge(p.merged, h);
                }
                _ => {
                    if let Some(p) = pending.take() {
                        self.flush(p, out);
                    }
                    pending = Some(Pending {
                        first: nal,
                        count: 1,
                        size: S::HEADER_LEN + 2 + nal.len(),
                        merged: S::merge(h, h),
                    });
                }
            }
        }
        if let Some(p) = pending.take() {
            self.flush(p, out);
        }
        if out.len() > before {
            if let Some(last) = out.last_mut() {
                last.marker = true;
            }
        }
    }

    /// Sends the pending NAL units: one as a single NAL unit packet, more as the aggregate
    /// built in `scratch`.
    fn flush(&mut self, p: Pending<'_>, out: &mut Vec<Payload>) {
        let data: Arc<[u8]> = if p.count == 1 {
            Arc::from(p.first)
        } else {
            let h = S::aggregate(p.merged).to_be_bytes();
            self.scratch[..S::HEADER_LEN].copy_from_slice(&h[2 - S::HEADER_LEN..]);
            Arc::from(&self.scratch[..])
        };
        out.push(Payload {
            marker: false,
            data,
        });
    }

    /// Fragments of a NAL unit longer than `max_payload` (so at least two: the start and end
    /// bits are never both set). The unit's header is not repeated: the FU's headers carry it.
    fn fragment(&mut self, nal: &[u8], out: &mut Vec<Payload>) {
        let prefix = S::fu_prefix(nal);
        let prefix = &prefix[..S::HEADER_LEN + 1];
        let body = &nal[S::HEADER_LEN..];
        let per_fragment = self.max_payload - prefix.len();
        let last = (body.len() - 1) / per_fragment;
        for (i, chunk) in body.chunks(per_fragment).enumerate() {
            self.scratch.clear();
            self.scratch.extend_from_slice(prefix);
            let fu_header = self.scratch.last_mut().expect("the prefix is 2 or 3 bytes");
            if i == 0 {
                *fu_header |= FU_START;
            }
            if i == last {
                *fu_header |= FU_END;
            }
            self.scratch.extend_from_slice(chunk);
            out.push(Payload {
                marker: false,
                data: Arc::from(&self.scratch[..]),
            });
        }
    }
}

/// An aggregated unit: 16-bit size, then the NAL unit (whose size fits, as it is ≤
/// max_payload).
fn put_sized(buf: &mut Vec<u8>, nal: &[u8]) {
    buf.extend_from_slice(&(nal.len() as u16).to_be_bytes());
    buf.extend_from_slice(nal);
}
