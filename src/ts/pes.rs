//! PES reassembly for one elementary PID (ISO/IEC 13818-1 §2.4.3.6).

use bytes::Bytes;

use super::event::{DemuxEvent, DemuxProblem, Pes, MAX_PES_SIZE};
use super::packet::{
    has_optional_header, read_timestamp, timestamp_bytes, FirstPacket, Pid, PidWriter, PACKET_SIZE,
    PAYLOAD_SIZE,
};
use crate::time::PTS_MASK;

/// The parsed fixed part of a PES header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PesHeader {
    /// Bytes before the payload.
    header_len: usize,
    /// Total PES size (6 + PES_packet_length) when PES_packet_length is not 0.
    total_len: Option<usize>,
    pts: Option<u64>,
    dts: Option<u64>,
}

/// Parses the PES header at the start of `buf`. `Ok(None)`: more bytes are needed.
fn parse_header(buf: &[u8]) -> Result<Option<PesHeader>, &'static str> {
    if buf.len() < 6 {
        return Ok(None);
    }
    if buf[..3] != [0, 0, 1] {
        return Err("no PES start code");
    }
    let packet_length = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    let total_len = (packet_length != 0).then_some(6 + packet_length);
    if !has_optional_header(buf[3]) {
        return Ok(Some(PesHeader {
            header_len: 6,
            total_len,
            pts: None,
            dts: None,
        }));
    }
    if buf.len() < 9 {
        return Ok(None);
    }
    let header_len = 9 + usize::from(buf[8]);
    let Some(fields) = buf.get(9..header_len) else {
        return Ok(None);
    };
    if total_len.is_some_and(|total| total < header_len) {
        return Err("PES_packet_length shorter than its header");
    }
    let ts = |at: usize| {
        fields
            .get(at..at + 5)
            .and_then(|b| b.try_into().ok())
            .map(read_timestamp)
    };
    let (pts, dts) = match buf[7] >> 6 {
        0b10 => (Some(ts(0).ok_or("PTS beyond PES header")?), None),
        0b11 => (
            Some(ts(0).ok_or("PTS beyond PES header")?),
            Some(ts(5).ok_or("DTS beyond PES header")?),
        ),
        _ => (None, None),
    };
    Ok(Some(PesHeader {
        header_len,
        total_len,
        pts,
        dts,
    }))
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Skipping payload until a packet with payload_unit_start_indicator (start of input, or
    /// after a dropped PES).
    #[default]
    WaitStart,
    /// Collecting; the header is parsed once enough bytes are in.
    Collecting { header: Option<PesHeader> },
    /// The PES was completed by its PES_packet_length; payload before the next unit start
    /// would be an overrun.
    Done,
    /// An unbounded PES was emitted at its stuffed last packet (see [`EarlyEnd`]); payload
    /// before the next unit start would prove that wrong.
    Ended,
}

/// Whether a packet ending in adaptation-field stuffing ends an unbounded PES on this PID.
///
/// A PES without PES_packet_length (video) is known complete only when the next one starts, a
/// frame interval later: most of the latency the bridge would add. Muxers (ffmpeg's, ours) end
/// each PES with stuffing in its last packet, and put none before, so there the PES is whole.
/// Trusted once [`CONFIRM`] stuffed packets were each followed by a unit start; never again
/// once payload followed one (the PES emitted then went out cut, once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyEnd {
    Learning(u8),
    Trusted,
    Off,
}

/// Stuffed packets followed by a unit start before [`EarlyEnd`] is trusted.
const CONFIRM: u8 = 8;

/// Reassembles PES packets of one PID. The buffer keeps its capacity between PES packets.
#[derive(Debug)]
pub(crate) struct PesAssembler {
    pid: Pid,
    buf: Vec<u8>,
    state: State,
    random_access: bool,
    /// The PES being collected follows a discontinuity.
    discontinuity: bool,
    /// A discontinuity was seen: flags the next PES to start.
    pending_discontinuity: bool,
    early: EarlyEnd,
    /// The last packet pushed ended in stuffing.
    stuffed: bool,
}

impl PesAssembler {
    pub fn new(pid: Pid) -> Self {
        Self {
            pid,
            buf: Vec::new(),
            state: State::WaitStart,
            random_access: false,
            discontinuity: false,
            pending_discontinuity: false,
            early: EarlyEnd::Learning(0),
            stuffed: false,
        }
    }

    /// Flags the next PES as discontinuous; with `drop_partial`, the PES in progress is dropped.
    pub fn discontinuity(&mut self, drop_partial: bool) {
        if drop_partial {
            self.drop_partial();
        }
        self.pending_discontinuity = true;
    }

    /// Feeds the payload of one packet; complete PES packets and problems go to `out`.
    /// A PES with a PES_packet_length is emitted as soon as its last byte arrives; one without
    /// at its last packet when that ends in stuffing (`stuffed`; see [`EarlyEnd`]), else at
    /// the next unit start (or `flush`). `discontinuity` (the packet's indicator) flags the
    /// PES starting in this packet, or else the next one to start.
    pub fn push(
        &mut self,
        (pusi, random_access, discontinuity, stuffed): (bool, bool, bool, bool),
        payload: &[u8],
        out: &mut Vec<DemuxEvent>,
    ) {
        let after_stuffing = std::mem::replace(&mut self.stuffed, stuffed);
        self.early = match (self.early, after_stuffing, pusi) {
            (EarlyEnd::Learning(n), true, true) if n + 1 >= CONFIRM => EarlyEnd::Trusted,
            (EarlyEnd::Learning(n), true, true) => EarlyEnd::Learning(n + 1),
            (_, true, false) if !payload.is_empty() => EarlyEnd::Off,
            (early, _, _) => early,
        };
        if pusi {
            self.finish(out);
            self.state = State::Collecting { header: None };
            self.random_access = random_access;
            self.discontinuity = std::mem::take(&mut self.pending_discontinuity) || discontinuity;
        } else if discontinuity {
            self.pending_discontinuity = true;
        }
        let header = match self.state {
            State::Collecting { header } => header,
            State::WaitStart => return,
            State::Ended => {
                if !payload.is_empty() {
                    self.problem(out, DemuxProblem::CutEarly { pid: self.pid });
                    self.state = State::WaitStart;
                }
                return;
            }
            State::Done => {
                if !payload.is_empty() {
                    self.problem(out, DemuxProblem::PesLengthMismatch { pid: self.pid });
                    self.state = State::WaitStart;
                }
                return;
            }
        };
        if self.buf.len() + payload.len() > MAX_PES_SIZE {
            self.problem(out, DemuxProblem::PesTooLarge { pid: self.pid });
            self.drop_partial();
            return;
        }
        self.buf.extend_from_slice(payload);
        let header = match header {
            Some(h) => h,
            None => match parse_header(&self.buf) {
                Ok(Some(h)) => {
                    self.state = State::Collecting { header: Some(h) };
                    h
                }
                Ok(None) => return,
                Err(_) => {
                    self.problem(out, DemuxProblem::BadPes { pid: self.pid });
                    self.drop_partial();
                    return;
                }
            },
        };
        match header.total_len {
            Some(total) if self.buf.len() >= total => {
                self.emit(header, total, out);
                self.state = State::Done;
            }
            None if stuffed && self.early == EarlyEnd::Trusted => {
                self.emit(header, self.buf.len(), out);
                self.state = State::Ended;
            }
            _ => {}
        }
    }

    /// End of input: a PES without PES_packet_length is complete; one whose length was not
    /// reached is dropped.
    pub fn flush(&mut self, out: &mut Vec<DemuxEvent>) {
        self.finish(out);
        self.state = State::WaitStart;
    }

    /// Ends the PES in progress at a unit start or end of input.
    fn finish(&mut self, out: &mut Vec<DemuxEvent>) {
        match self.state {
            State::Collecting { header: Some(h) } if h.total_len.is_none() => {
                self.emit(h, self.buf.len(), out)
            }
            State::Collecting { header: Some(_) } => {
                self.problem(out, DemuxProblem::PesLengthMismatch { pid: self.pid })
            }
            State::Collecting { header: None } => {
                self.problem(out, DemuxProblem::BadPes { pid: self.pid })
            }
            State::WaitStart | State::Done | State::Ended => {}
        }
        self.buf.clear();
    }

    fn drop_partial(&mut self) {
        self.state = State::WaitStart;
        self.buf.clear();
    }

    /// A dropped PES is lost data: the next one is flagged discontinuous.
    fn problem(&mut self, out: &mut Vec<DemuxEvent>, problem: DemuxProblem) {
        self.pending_discontinuity = true;
        out.push(DemuxEvent::Problem(problem));
    }

    /// Emits `buf[header_len..end]`. Empty PES packets are not emitted.
    fn emit(&mut self, header: PesHeader, end: usize, out: &mut Vec<DemuxEvent>) {
        if let Some(data) = self
            .buf
            .get(header.header_len..end)
            .filter(|d| !d.is_empty())
        {
            out.push(DemuxEvent::Pes(Pes {
                pid: self.pid,
                pts: header.pts,
                dts: header.dts,
                random_access: self.random_access,
                discontinuity: self.discontinuity,
                data: Bytes::copy_from_slice(data),
            }));
        }
        self.buf.clear();
    }
}

// ---- writing (the muxer) ----------------------------------------------------------------

/// Largest PES_packet_length; a longer PES (video) is written with 0 (unbounded).
pub(crate) const MAX_PES_LENGTH: usize = 0xFFFF;

/// A PES header with data_alignment_indicator, PTS and (when it differs) DTS. PES_packet_length
/// is exact, or 0 (unbounded) when `payload_len` does not fit it.
pub(crate) fn pes_header(
    stream_id: u8,
    pts: u64,
    dts: u64,
    payload_len: usize,
) -> ([u8; 19], usize) {
    let (pts, dts) = (pts & PTS_MASK, dts & PTS_MASK);
    let mut h = [0u8; 19];
    h[..4].copy_from_slice(&[0, 0, 1, stream_id]);
    h[6] = 0x84; // '10', not scrambled, data_alignment_indicator
    let data_len: usize = if pts == dts {
        h[7] = 0x80;
        h[9..14].copy_from_slice(&timestamp_bytes(0b0010, pts));
        5
    } else {
        h[7] = 0xC0;
        h[9..14].copy_from_slice(&timestamp_bytes(0b0011, pts));
        h[14..19].copy_from_slice(&timestamp_bytes(0b0001, dts));
        10
    };
    h[8] = data_len as u8;
    let length = (3 + data_len).saturating_add(payload_len);
    let length = if length > MAX_PES_LENGTH { 0 } else { length };
    h[4..6].copy_from_slice(&(length as u16).to_be_bytes());
    (h, 9 + data_len)
}

/// Reads consecutive bytes out of several slices.
struct Gather<'a> {
    parts: &'a [&'a [u8]],
    index: usize,
    offset: usize,
}

impl Gather<'_> {
    /// Fills `dst` (or as much as the parts hold).
    fn fill(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let Some(part) = self.parts.get(self.index) else {
                return;
            };
            let rest = part.get(self.offset..).unwrap_or_default();
            let n = rest.len().min(dst.len());
            let (head, tail) = std::mem::take(&mut dst).split_at_mut(n);
            head.copy_from_slice(&rest[..n]);
            dst = tail;
            self.offset += n;
            if self.offset >= part.len() {
                self.index += 1;
                self.offset = 0;
            }
        }
    }
}

/// Splits one PES (the concatenation of `parts`, header first) into packets on `output`'s PID.
/// The first packet carries `first`'s adaptation field; the last is filled up with
/// adaptation-field stuffing, never with payload bytes.
pub(crate) fn write_pes(
    out: &mut Vec<u8>,
    output: &mut PidWriter,
    first: FirstPacket,
    parts: &[&[u8]],
) {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve((total / PAYLOAD_SIZE + 2) * PACKET_SIZE);
    let mut gather = Gather {
        parts,
        index: 0,
        offset: 0,
    };
    let mut remaining = total;
    let mut af = Some(first);
    while remaining > 0 {
        let mut pkt = [0xFFu8; PACKET_SIZE];
        output.header(&mut pkt, af.is_some());
        let (fields, fields_len) = af.take().map_or(([0; 7], 0), |f| f.fields());
        let af_min = if fields_len > 0 { 1 + fields_len } else { 0 };
        let payload = remaining.min(PAYLOAD_SIZE - af_min);
        // Adaptation field bytes, length byte included.
        let af_len = PAYLOAD_SIZE - payload;
        let afc = if af_len > 0 { 0x30 } else { 0x10 };
        pkt[3] = afc | output.take_cc();
        if af_len > 0 {
            pkt[4] = (af_len - 1) as u8;
            if af_len > 1 {
                // Flags (0 when only stuffing), the PCR, then 0xFF stuffing already in place.
                pkt[5] = 0;
                pkt[5..5 + fields_len].copy_from_slice(&fields[..fields_len]);
            }
        }
        gather.fill(&mut pkt[4 + af_len..]);
        out.extend_from_slice(&pkt);
        remaining -= payload;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::testutil::{pes_bytes, pts_bytes};

    #[test]
    fn pts_parse_ignores_marker_bits() {
        let pts = 0x1_2345_6789 & PTS_MASK;
        let b = pts_bytes(0b0010, pts);
        assert_eq!(read_timestamp(&b), pts);
        let mut bad = b;
        bad[0] &= !1;
        bad[2] &= !1;
        bad[4] &= !1;
        assert_eq!(read_timestamp(&bad), pts);
        assert_eq!(read_timestamp(&pts_bytes(0b0010, PTS_MASK)), PTS_MASK);
    }

    #[test]
    fn header_with_pts_and_dts() {
        let pes = pes_bytes(0xE0, Some(1000), Some(900), b"abc", true);
        let h = parse_header(&pes).unwrap().unwrap();
        assert_eq!(
            (h.pts, h.dts, h.header_len, h.total_len),
            (Some(1000), Some(900), 19, Some(22))
        );
        assert_eq!(parse_header(&pes[..10]), Ok(None));
        assert!(parse_header(&[0, 0, 2, 0xE0, 0, 0]).is_err());
    }

    fn pes_of(events: &[DemuxEvent]) -> Vec<&Pes> {
        events
            .iter()
            .filter_map(|e| {
                if let DemuxEvent::Pes(p) = e {
                    Some(p)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn pes_with_length_completes_without_next_unit_start() {
        let mut a = PesAssembler::new(Pid(0x101));
        let pes = pes_bytes(0xC0, Some(90), None, &[7; 300], true);
        let mut out = Vec::new();
        a.push((true, true, false, false), &pes[..184], &mut out);
        assert!(out.is_empty());
        a.push((false, false, false, false), &pes[184..], &mut out);
        let p = pes_of(&out)[0];
        assert_eq!(
            (p.pts, p.dts, p.random_access, p.data.len()),
            (Some(90), None, true, 300)
        );
        // Payload past the announced length is reported once.
        a.push((false, false, false, false), &[1, 2, 3], &mut out);
        a.push((false, false, false, false), &[1, 2, 3], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1],
            DemuxEvent::Problem(DemuxProblem::PesLengthMismatch { pid: Pid(0x101) })
        );
    }

    #[test]
    fn pes_without_length_completes_at_next_unit_start_or_flush() {
        let mut a = PesAssembler::new(Pid(0x100));
        let mut out = Vec::new();
        a.push(
            (true, false, false, false),
            &pes_bytes(0xE0, Some(1), Some(0), b"one", false),
            &mut out,
        );
        a.push(
            (true, false, false, false),
            &pes_bytes(0xE0, Some(2), None, b"two", false),
            &mut out,
        );
        assert_eq!(pes_of(&out).len(), 1);
        a.flush(&mut out);
        let pes = pes_of(&out);
        assert_eq!(
            (pes[0].pts, pes[0].dts, &pes[0].data[..]),
            (Some(1), Some(0), &b"one"[..])
        );
        assert_eq!((pes[1].pts, &pes[1].data[..]), (Some(2), &b"two"[..]));
    }

    #[test]
    fn short_pes_is_dropped_and_next_one_flagged() {
        let mut a = PesAssembler::new(Pid(0x101));
        let mut out = Vec::new();
        let long = pes_bytes(0xC0, Some(1), None, &[0; 500], true);
        a.push((true, false, false, false), &long[..184], &mut out);
        a.push(
            (true, false, false, false),
            &pes_bytes(0xC0, Some(2), None, b"ok", true),
            &mut out,
        );
        assert_eq!(
            out[0],
            DemuxEvent::Problem(DemuxProblem::PesLengthMismatch { pid: Pid(0x101) })
        );
        let p = pes_of(&out)[0];
        assert!(p.discontinuity && p.pts == Some(2));
    }

    #[test]
    fn pes_over_the_size_cap_is_dropped() {
        let mut a = PesAssembler::new(Pid(0x100));
        let mut out = Vec::new();
        a.push(
            (true, false, false, false),
            &pes_bytes(0xE0, Some(0), None, &[], false),
            &mut out,
        );
        let chunk = [0u8; 184];
        for _ in 0..(MAX_PES_SIZE / 184 + 2) {
            a.push((false, false, false, false), &chunk, &mut out);
        }
        assert_eq!(
            out,
            [DemuxEvent::Problem(DemuxProblem::PesTooLarge {
                pid: Pid(0x100)
            })]
        );
        a.flush(&mut out);
        assert_eq!(out.len(), 1);
    }

    /// A video PES (no PES_packet_length) split over packets as a muxer writes it: the last
    /// one stuffed (`stuffed_last`); (unit start, stuffed, payload) per packet.
    fn video_packets(pts: u64, len: usize, stuffed_last: bool) -> Vec<(bool, bool, Vec<u8>)> {
        let pes = pes_bytes(0xE0, Some(pts), None, &vec![pts as u8; len], false);
        let chunks: Vec<&[u8]> = pes.chunks(184).collect();
        let n = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i == 0, stuffed_last && i == n - 1, c.to_vec()))
            .collect()
    }

    fn feed(a: &mut PesAssembler, packets: &[(bool, bool, Vec<u8>)], out: &mut Vec<DemuxEvent>) {
        for (pusi, stuffed, payload) in packets {
            a.push((*pusi, false, false, *stuffed), payload, out);
        }
    }

    #[test]
    fn a_stuffed_last_packet_ends_a_video_pes_once_the_pid_has_shown_it_does() {
        let mut a = PesAssembler::new(Pid(0x100));
        let mut out = Vec::new();
        // Learning: each PES still waits for the next unit start.
        for pts in 0..u64::from(CONFIRM) {
            feed(&mut a, &video_packets(pts, 400, true), &mut out);
            assert_eq!(
                pes_of(&out).len(),
                pts as usize,
                "PES {pts}: at the next start"
            );
        }
        // Trusted: the PES is out at its last packet, whole.
        out.clear();
        feed(&mut a, &video_packets(50, 400, true), &mut out);
        let pes = pes_of(&out);
        assert_eq!(
            pes.len(),
            2,
            "the one before, then this one at its last packet"
        );
        assert_eq!((pes[1].pts, pes[1].data.len()), (Some(50), 400));
        // A PES whose last packet happens to be full waits for the next start.
        out.clear();
        feed(&mut a, &video_packets(51, 184 * 3 - 14, false), &mut out);
        assert!(pes_of(&out).is_empty());
        feed(&mut a, &video_packets(52, 10, true), &mut out);
        let pes = pes_of(&out);
        assert_eq!((pes.len(), pes[0].data.len()), (2, 184 * 3 - 14));
    }

    #[test]
    fn payload_after_stuffing_turns_early_ends_off_for_good() {
        let mut a = PesAssembler::new(Pid(0x100));
        let mut out = Vec::new();
        for pts in 0..u64::from(CONFIRM) {
            feed(&mut a, &video_packets(pts, 400, true), &mut out);
        }
        out.clear();
        // A muxer that stuffs mid-PES: this PES goes out cut, once, with a problem.
        let mut odd = video_packets(60, 600, true);
        odd[1].1 = true;
        feed(&mut a, &odd, &mut out);
        assert_eq!(pes_of(&out).len(), 2, "the previous PES, then this one cut");
        assert!(out.contains(&DemuxEvent::Problem(DemuxProblem::CutEarly {
            pid: Pid(0x100)
        })));
        // From now on, at the next unit start, whole.
        out.clear();
        feed(&mut a, &video_packets(61, 400, true), &mut out);
        assert!(pes_of(&out).is_empty());
        feed(&mut a, &video_packets(62, 10, true), &mut out);
        let pes = pes_of(&out);
        assert_eq!((pes[0].pts, pes[0].data.len()), (Some(61), 400));
        // Learning is over too: a PID stuffed mid-PES is never trusted again.
        for pts in 63..63 + u64::from(CONFIRM) * 2 {
            feed(&mut a, &video_packets(pts, 400, true), &mut out);
        }
        out.clear();
        feed(&mut a, &video_packets(99, 400, true), &mut out);
        assert_eq!(pes_of(&out).len(), 1, "only the one before");
    }
}
