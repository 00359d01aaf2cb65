//! Packet alignment, sans-IO: bytes in any split → aligned 188-byte packets out.
//!
//! Real-world transport streams come in three packet strides, and a reader cannot be told which
//! one it gets:
//!
//! ```text
//! 188  TS          │47 ······ 188 ······│47 ······ 188 ······│
//! 192  M2TS        │hdr4│47 ···· 188 ····│hdr4│47 ···· 188 ····│   cameras, Blu-ray (TP_extra_header:
//!                                                                  copy permission + arrival time)
//! 204  TS + FEC    │47 ···· 188 ····│16 RS│47 ···· 188 ····│16 RS│ DVB/ATSC captures (Reed-Solomon
//!                                                                  parity after each packet)
//! ```
//!
//! [`Aligner`] is the one place that finds packets in bytes: the demuxer, the join point of
//! `GET /streams/{s}.ts` ([`super::start::StartPoint`]) and the file replayer all use it, so
//! they agree on what is a packet and all take every stride. Everything after it sees 188-byte
//! packets only.
//!
//! Sync is acquired where a sync byte repeats at +stride and +2·stride for one of the strides
//! (188 tried first), waiting for those bytes if they have not arrived yet: what is found does
//! not depend on how the input is split. Once in sync, each unit only has to have its sync
//! byte where the stride puts it; a unit without one drops back to searching. Bytes skipped
//! while searching are reported ([`AlignProblem::Resync`]), as is a partial packet at the end
//! of input. Only the tail of a partial unit is copied between `push` calls.

use std::ops::ControlFlow;

use super::packet::{PACKET_SIZE, SYNC_BYTE};

/// How packets are laid out in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stride {
    /// Plain transport stream: 188-byte packets back to back.
    Ts188,
    /// M2TS / BDAV: a 4-byte TP_extra_header before each packet (192-byte units).
    M2ts192,
    /// A packet followed by 16 bytes of Reed-Solomon parity (204-byte units).
    Fec204,
}

impl Stride {
    /// In the order they are tried when acquiring sync.
    pub const ALL: [Stride; 3] = [Stride::Ts188, Stride::M2ts192, Stride::Fec204];

    /// Bytes from one sync byte to the next.
    pub const fn unit_len(self) -> usize {
        match self {
            Stride::Ts188 => PACKET_SIZE,
            Stride::M2ts192 => PACKET_SIZE + 4,
            Stride::Fec204 => PACKET_SIZE + 16,
        }
    }

    /// Bytes of each unit before the packet (the M2TS header).
    pub const fn prefix(self) -> usize {
        match self {
            Stride::M2ts192 => 4,
            Stride::Ts188 | Stride::Fec204 => 0,
        }
    }

    /// Bytes of each unit after the packet (the FEC parity).
    pub const fn suffix(self) -> usize {
        self.unit_len() - PACKET_SIZE - self.prefix()
    }
}

/// Defects in the packet layout. Neither stops the aligner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlignProblem {
    /// Bytes that belong to no packet were skipped (garbage, a cut packet, a stride change).
    #[error("lost packet sync, skipped {skipped} bytes")]
    Resync { skipped: usize },
    /// The input ended inside a packet.
    #[error("input ended with {bytes} bytes of a partial packet")]
    Truncated { bytes: usize },
}

impl AlignProblem {
    /// A stable key per kind of problem, for "log once per cause".
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Resync { .. } => "resync",
            Self::Truncated { .. } => "truncated",
        }
    }
}

/// What the aligner hands its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Aligned<'a> {
    /// One packet. `offset` is where its sync byte sits in the input (bytes pushed since the
    /// aligner was made or reset); `stride` is the layout it was found in.
    Packet {
        packet: &'a [u8; PACKET_SIZE],
        offset: u64,
        stride: Stride,
    },
    Problem(AlignProblem),
}

/// Bytes needed to decide a candidate start while searching: it and the sync bytes two of the
/// widest units further on.
const SEARCH_WINDOW: usize = 2 * Stride::Fec204.unit_len() + 1;
/// While no sync is found, a `Resync` problem is reported every this many skipped bytes.
const RESYNC_REPORT: usize = 1 << 20;
/// How far the carry buffer is topped up while searching across `push` calls.
const SEARCH_CARRY: usize = 2 * SEARCH_WINDOW;

/// Sans-IO packet aligner: see the module documentation.
#[derive(Debug, Default)]
pub struct Aligner {
    /// The unprocessed tail of earlier input: less than one unit when in sync, less than
    /// [`SEARCH_CARRY`] while searching (more only after a callback stopped `push`).
    carry: Vec<u8>,
    /// The stride in sync with; `None` while searching. In sync, a packet is handed out as
    /// soon as its 188 bytes are in; the bytes after it up to the next sync byte (FEC parity,
    /// the next unit's M2TS header) are skipped as they come.
    locked: Option<Stride>,
    /// Bytes still to skip before the next packet, in sync.
    gap: usize,
    /// Bytes skipped so far in the current search.
    skipped: usize,
    /// Input offset of `carry[0]`, or of the next input byte when `carry` is empty.
    offset: u64,
}

impl Aligner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stride in sync with, if any.
    pub fn stride(&self) -> Option<Stride> {
        self.locked
    }

    /// Forgets all state; offsets start at 0 again.
    pub fn reset(&mut self) {
        self.carry.clear();
        self.locked = None;
        self.gap = 0;
        self.skipped = 0;
        self.offset = 0;
    }

    /// Feeds any chunk of bytes; `f` gets every packet (and problem) completed by it, in
    /// input order. When `f` returns `Break`, `push` returns `Break` at once and keeps every
    /// byte after that packet unprocessed: [`Aligner::take_pending`] hands them out.
    pub fn push<F>(&mut self, mut data: &[u8], f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(Aligned<'_>) -> ControlFlow<()>,
    {
        while !self.carry.is_empty() && !data.is_empty() {
            // Top up the partial unit just enough to decide, then carry on from `data`.
            let target = match self.locked {
                Some(_) => self.gap + PACKET_SIZE,
                None => SEARCH_CARRY,
            };
            let take = target.saturating_sub(self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            let carry = std::mem::take(&mut self.carry);
            let (used, flow) = self.process(&carry, false, f);
            self.carry = carry;
            self.carry.drain(..used);
            self.offset += used as u64;
            if flow.is_break() {
                self.carry.extend_from_slice(data);
                return flow;
            }
        }
        if !self.carry.is_empty() {
            return ControlFlow::Continue(());
        }
        let (used, flow) = self.process(data, false, f);
        self.offset += used as u64;
        self.carry.extend_from_slice(&data[used..]);
        flow
    }

    /// End of input: decides the last packets with whatever lookahead there is, reports the
    /// bytes skipped and a partial packet left over, and starts searching again for the next
    /// `push`. Missing FEC parity after the last packet is not reported.
    pub fn flush<F>(&mut self, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(Aligned<'_>) -> ControlFlow<()>,
    {
        let mut carry = std::mem::take(&mut self.carry);
        let (used, flow) = self.process(&carry, true, f);
        self.offset += used as u64;
        if flow.is_break() {
            carry.drain(..used);
            self.carry = carry;
            return flow;
        }
        let locked = self.locked.take();
        let gap = std::mem::take(&mut self.gap);
        if self.skipped > 0 {
            let skipped = std::mem::take(&mut self.skipped);
            f(Aligned::Problem(AlignProblem::Resync { skipped }))?;
        }
        let left = carry.len() - used;
        self.offset += left as u64;
        carry.clear();
        self.carry = carry;
        // In sync, the partial unit's M2TS header (or what came of it) was skipped as the gap
        // after the packet before it.
        let bytes = left + locked.map_or(0, |s| s.prefix().saturating_sub(gap));
        if bytes > 0 {
            f(Aligned::Problem(AlignProblem::Truncated { bytes }))?;
        }
        ControlFlow::Continue(())
    }

    /// The input kept unprocessed after a callback stopped `push` (or `flush`), in order;
    /// the aligner is then reset.
    pub fn take_pending(&mut self) -> Vec<u8> {
        let pending = std::mem::take(&mut self.carry);
        self.reset();
        pending
    }

    /// Handles every unit that can be decided in `buf` (which starts at `self.offset`);
    /// returns the bytes used, and whether `f` stopped.
    fn process<F>(&mut self, buf: &[u8], eof: bool, f: &mut F) -> (usize, ControlFlow<()>)
    where
        F: FnMut(Aligned<'_>) -> ControlFlow<()>,
    {
        let mut pos = 0;
        loop {
            if let Some(stride) = self.locked {
                // The rest of the last unit (FEC parity, the next M2TS header) first.
                let skip = self.gap.min(buf.len() - pos);
                pos += skip;
                self.gap -= skip;
                let Some(unit) = buf.get(pos..pos + PACKET_SIZE).filter(|_| self.gap == 0) else {
                    return (pos, ControlFlow::Continue(()));
                };
                if unit[0] == SYNC_BYTE {
                    let packet =
                        <&[u8; PACKET_SIZE]>::try_from(unit).expect("a slice of PACKET_SIZE bytes");
                    let offset = self.offset + pos as u64;
                    pos += PACKET_SIZE;
                    self.gap = stride.unit_len() - PACKET_SIZE;
                    let flow = f(Aligned::Packet {
                        packet,
                        offset,
                        stride,
                    });
                    if flow.is_break() {
                        return (pos, flow);
                    }
                    continue;
                }
                // The header consumed after the last packet did not lead to one: it is skipped.
                self.locked = None;
                self.skipped += stride.prefix();
            }
            match find_sync(&buf[pos..], eof) {
                Ok((skip, stride)) => {
                    pos += skip;
                    // A new M2TS unit's own header is not garbage.
                    let skipped = (self.skipped + skip).saturating_sub(stride.prefix());
                    self.skipped = 0;
                    self.locked = Some(stride);
                    self.gap = 0;
                    if skipped > 0 {
                        let flow = f(Aligned::Problem(AlignProblem::Resync { skipped }));
                        if flow.is_break() {
                            return (pos, flow);
                        }
                    }
                }
                Err(skip) => {
                    self.skipped += skip;
                    // Input that is not TS at all: say so now and then, not only at the end.
                    if self.skipped >= RESYNC_REPORT {
                        let skipped = std::mem::take(&mut self.skipped);
                        let flow = f(Aligned::Problem(AlignProblem::Resync { skipped }));
                        return (pos + skip, flow);
                    }
                    return (pos + skip, ControlFlow::Continue(()));
                }
            }
        }
    }
}

/// Finds the next packet start in `rest`: `Ok((offset of its sync byte, stride))`, or
/// `Err(bytes that can be skipped)` when none can be decided yet. Without `eof`, a start needs
/// its lookahead bytes; at `eof`, lookahead beyond the end counts as in step.
fn find_sync(rest: &[u8], eof: bool) -> Result<(usize, Stride), usize> {
    let mut at = 0;
    while let Some(i) = rest[at..]
        .iter()
        .position(|&b| b == SYNC_BYTE)
        .map(|i| at + i)
    {
        match start_at(rest, i, eof) {
            Some(Some(stride)) => return Ok((i, stride)),
            Some(None) => at = i + 1,
            None => return Err(i),
        }
    }
    Err(rest.len())
}

/// Whether the sync byte at `rest[i]` starts packets: `Some(Some(stride))` yes, `Some(None)`
/// no, `None` undecided (more bytes needed).
fn start_at(rest: &[u8], i: usize, eof: bool) -> Option<Option<Stride>> {
    if i + PACKET_SIZE > rest.len() {
        return None;
    }
    for stride in Stride::ALL {
        let ahead = |k: usize| rest.get(i + k * stride.unit_len()).map(|&b| b == SYNC_BYTE);
        match (ahead(1), ahead(2)) {
            (Some(false), _) | (_, Some(false)) => continue,
            (Some(true), Some(true)) => return Some(Some(stride)),
            _ if eof => return Some(Some(stride)),
            _ => return None,
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` packets with distinct content, as 188-byte units.
    fn packets(n: usize) -> Vec<[u8; PACKET_SIZE]> {
        (0..n)
            .map(|i| {
                let mut p = [0u8; PACKET_SIZE];
                p[0] = SYNC_BYTE;
                p[1] = i as u8;
                for (j, b) in p[4..].iter_mut().enumerate() {
                    *b = (i * 31 + j) as u8 & 0x3F; // never a sync byte
                }
                p
            })
            .collect()
    }

    /// The packets laid out in `stride`, with header/parity bytes that are never sync bytes.
    fn layout(packets: &[[u8; PACKET_SIZE]], stride: Stride) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            out.extend(std::iter::repeat_n(0x11, stride.prefix()));
            out.extend_from_slice(p);
            out.extend(std::iter::repeat_n(0x22, stride.suffix()));
        }
        out
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Item {
        Packet(Vec<u8>, u64, Stride),
        Problem(AlignProblem),
    }

    fn align(chunks: &[&[u8]]) -> Vec<Item> {
        let mut a = Aligner::new();
        let mut items = Vec::new();
        let mut f = |x: Aligned<'_>| {
            items.push(match x {
                Aligned::Packet {
                    packet,
                    offset,
                    stride,
                } => Item::Packet(packet.to_vec(), offset, stride),
                Aligned::Problem(p) => Item::Problem(p),
            });
            ControlFlow::Continue(())
        };
        for c in chunks {
            let _ = a.push(c, &mut f);
        }
        let _ = a.flush(&mut f);
        items
    }

    fn packets_of(items: &[Item]) -> Vec<&[u8]> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Packet(p, ..) => Some(&p[..]),
                Item::Problem(_) => None,
            })
            .collect()
    }

    fn problems_of(items: &[Item]) -> Vec<AlignProblem> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Problem(p) => Some(*p),
                Item::Packet(..) => None,
            })
            .collect()
    }

    #[test]
    fn every_stride_gives_the_same_packets_at_their_offsets() {
        let ps = packets(6);
        for stride in Stride::ALL {
            let data = layout(&ps, stride);
            let items = align(&[&data]);
            assert!(problems_of(&items).is_empty(), "{stride:?}: {items:?}");
            assert_eq!(
                packets_of(&items),
                ps.iter().map(|p| &p[..]).collect::<Vec<_>>()
            );
            for (k, item) in items.iter().enumerate() {
                let want = (k * stride.unit_len() + stride.prefix()) as u64;
                assert!(matches!(item, Item::Packet(_, o, s) if *o == want && *s == stride));
            }
        }
    }

    #[test]
    fn any_split_gives_identical_output() {
        let ps = packets(8);
        for stride in Stride::ALL {
            let mut data = layout(&ps[..4], stride);
            data.extend([0x00, 0x47, 0x12, 0x47, 0x99]); // garbage with stray sync bytes
            data.extend(layout(&ps[4..], stride));
            data.truncate(data.len() - 50);
            let whole = align(&[&data]);
            assert_eq!(packets_of(&whole).len(), 7, "{stride:?}");
            assert_eq!(
                problems_of(&whole),
                [
                    AlignProblem::Resync { skipped: 5 },
                    AlignProblem::Truncated {
                        bytes: stride.unit_len() - 50
                    }
                ],
                "{stride:?}"
            );
            for split in 1..data.len() {
                let (a, b) = data.split_at(split);
                assert_eq!(align(&[a, b]), whole, "{stride:?} split at {split}");
            }
            let bytewise: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(align(&bytewise), whole);
        }
    }

    #[test]
    fn stride_change_after_garbage_resyncs() {
        let ps = packets(9);
        let mut data = layout(&ps[..3], Stride::M2ts192);
        data.extend([0x55; 10]);
        data.extend(layout(&ps[3..6], Stride::Ts188));
        data.extend([0x55; 3]);
        data.extend(layout(&ps[6..], Stride::Fec204));
        let items = align(&[&data]);
        assert_eq!(
            packets_of(&items),
            ps.iter().map(|p| &p[..]).collect::<Vec<_>>()
        );
        assert_eq!(
            problems_of(&items),
            [
                AlignProblem::Resync { skipped: 10 },
                AlignProblem::Resync { skipped: 3 }
            ]
        );
        let strides: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Packet(_, _, s) => Some(*s),
                Item::Problem(_) => None,
            })
            .collect();
        use Stride::*;
        assert_eq!(
            strides,
            [M2ts192, M2ts192, M2ts192, Ts188, Ts188, Ts188, Fec204, Fec204, Fec204]
        );
    }

    #[test]
    fn break_keeps_the_rest_for_the_caller() {
        let data = layout(&packets(5), Stride::Ts188);
        for split in [0, 100, 188, 400, 900] {
            let mut a = Aligner::new();
            let mut seen = 0;
            let mut f = |x: Aligned<'_>| {
                if matches!(x, Aligned::Packet { .. }) {
                    seen += 1;
                    if seen == 2 {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            };
            let (head, tail) = data.split_at(split);
            let mut flow = a.push(head, &mut f);
            let mut rest = Vec::new();
            if flow.is_break() {
                rest.extend(a.take_pending());
                rest.extend_from_slice(tail);
            } else {
                flow = a.push(tail, &mut f);
                assert!(flow.is_break(), "split {split}");
                rest = a.take_pending();
            }
            assert_eq!(rest, data[2 * PACKET_SIZE..], "split {split}");
        }
    }

    #[test]
    fn non_ts_is_skipped_and_reported() {
        let junk: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let items = align(&[&junk]);
        assert!(packets_of(&items).is_empty());
        let total: usize = problems_of(&items)
            .iter()
            .map(|p| match p {
                AlignProblem::Resync { skipped } => *skipped,
                AlignProblem::Truncated { bytes } => *bytes,
            })
            .sum();
        assert_eq!(total, junk.len());
        assert_eq!(AlignProblem::Resync { skipped: 1 }.cause(), "resync");
        assert_eq!(AlignProblem::Truncated { bytes: 1 }.cause(), "truncated");
    }
}
