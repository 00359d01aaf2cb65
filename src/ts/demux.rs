//! The demuxer: continuity, PSI, PES reassembly, on packets from the [`Aligner`] (any of the
//! 188/192/204-byte layouts).

use std::ops::ControlFlow;

use super::align::{AlignProblem, Aligned, Aligner};
use super::packet::{self, Header, Pid, PACKET_SIZE};
use super::pes::{Pes, PesAssembler, MAX_PES_SIZE};
use super::psi::StreamType;
use super::psi::{self, SectionBuf, SectionStep, TrackSet};

/// What the demuxer found in its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DemuxEvent {
    /// The program's tracks: on its first PMT, and whenever the PMT changes (version, PIDs,
    /// types). A PMT repeated unchanged is not reported again.
    Tracks(TrackSet),
    /// A complete PES of a supported track (H.264, H.265 or Opus).
    Pes(Pes),
    /// A PCR on the program's PCR PID.
    Pcr { pid: Pid, pcr_27mhz: u64 },
    /// A discontinuity_indicator on a track or the PCR PID, or lost packets (continuity error)
    /// on a track, whose partial PES is then dropped.
    Discontinuity { pid: Pid },
    /// Something wrong in the input; see [`DemuxProblem::cause`] for logging once per cause.
    Problem(DemuxProblem),
}

/// Defects in the input. None of them stops the demuxer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DemuxProblem {
    #[error("lost packet sync, skipped {skipped} bytes")]
    Resync { skipped: usize },
    #[error("input ended with {bytes} bytes of a partial packet")]
    Truncated { bytes: usize },
    #[error("PID {pid}: transport_error_indicator set, packet dropped")]
    TransportError { pid: Pid },
    #[error("PID {pid}: bad packet ({reason}), dropped")]
    BadPacket { pid: Pid, reason: &'static str },
    #[error("PID {pid}: scrambled packet, dropped")]
    Scrambled { pid: Pid },
    #[error("PID {pid}: continuity counter error, packets lost")]
    ContinuityError { pid: Pid },
    #[error("PID {pid}: bad PSI section ({reason})")]
    BadPsi { pid: Pid, reason: &'static str },
    #[error("PID {pid}: PES larger than {} bytes, dropped", MAX_PES_SIZE)]
    PesTooLarge { pid: Pid },
    #[error("PID {pid}: bad PES header, dropped")]
    BadPes { pid: Pid },
    #[error("PID {pid}: PES data does not match PES_packet_length")]
    PesLengthMismatch { pid: Pid },
}

impl DemuxProblem {
    /// A stable key per kind of problem, for "log once per cause".
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Resync { .. } => "resync",
            Self::Truncated { .. } => "truncated",
            Self::TransportError { .. } => "transport_error",
            Self::BadPacket { .. } => "bad_packet",
            Self::Scrambled { .. } => "scrambled",
            Self::ContinuityError { .. } => "continuity_error",
            Self::BadPsi { .. } => "bad_psi",
            Self::PesTooLarge { .. } => "pes_too_large",
            Self::BadPes { .. } => "bad_pes",
            Self::PesLengthMismatch { .. } => "pes_length_mismatch",
        }
    }
}

impl From<AlignProblem> for DemuxProblem {
    fn from(p: AlignProblem) -> Self {
        match p {
            AlignProblem::Resync { skipped } => Self::Resync { skipped },
            AlignProblem::Truncated { bytes } => Self::Truncated { bytes },
        }
    }
}

#[derive(Debug)]
enum Role {
    Pat(SectionBuf),
    Pmt(SectionBuf),
    Es(PesAssembler),
}

/// Per-PID state of the PIDs the demuxer follows (PAT, the PMT, supported tracks).
#[derive(Debug)]
struct PidState {
    pid: Pid,
    /// Continuity counter of the last payload-bearing packet; `None` = accept any.
    cc: Option<u8>,
    /// The last packet may still be repeated once (ISO/IEC 13818-1 duplicate packets).
    dup_allowed: bool,
    last_payload: [u8; PACKET_SIZE - 4],
    last_len: usize,
    role: Role,
}

impl PidState {
    fn new(pid: Pid, role: Role) -> Self {
        Self {
            pid,
            cc: None,
            dup_allowed: false,
            last_payload: [0; PACKET_SIZE - 4],
            last_len: 0,
            role,
        }
    }

    fn is_duplicate(&self, payload: &[u8]) -> bool {
        self.dup_allowed && self.last_payload.get(..self.last_len) == Some(payload)
    }

    fn remember(&mut self, cc: u8, payload: &[u8]) {
        self.cc = Some(cc);
        self.dup_allowed = true;
        self.last_len = payload.len().min(self.last_payload.len());
        self.last_payload[..self.last_len].copy_from_slice(&payload[..self.last_len]);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Program {
    number: u16,
    pmt_pid: Pid,
}

/// Sans-IO MPEG-TS demuxer for one program: bytes in (any split, any packet stride, garbage
/// allowed), events out.
///
/// Alignment is the [`Aligner`]'s: a packet start is accepted while resyncing when the sync
/// byte repeats one and two strides (188, 192 or 204 bytes) further on (waiting for them if
/// needed, so events do not depend on how the input is split); once in sync, each following
/// packet only has to start with a sync byte. Only the tail of a partial packet is copied
/// between `push` calls.
#[derive(Debug)]
pub struct Demuxer {
    align: Aligner,
    program: Option<Program>,
    tracks: Option<TrackSet>,
    /// The last PMT section applied, to skip unchanged repetitions cheaply.
    last_pmt: Vec<u8>,
    pids: Vec<PidState>,
    /// Complete PSI sections of the current packet.
    sections: Vec<u8>,
    /// Also reassemble the first AAC/MPEG-audio track of a program without Opus (for the
    /// audio transcoder).
    transcodable_audio: bool,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

/// The track the audio transcoder takes: the first AAC (ADTS/LATM) or MPEG-1/2 audio track
/// of a program that has no Opus track.
pub fn transcodable_audio(tracks: &TrackSet) -> Option<Pid> {
    if tracks.audio().is_some() {
        return None;
    }
    tracks
        .tracks
        .iter()
        .find(|t| {
            matches!(
                t.stream_type,
                StreamType::AAC_ADTS
                    | StreamType::AAC_LATM
                    | StreamType::MPEG1_AUDIO
                    | StreamType::MPEG2_AUDIO
            )
        })
        .map(|t| t.pid)
}

impl Demuxer {
    /// Reassemble PES of the transcodable audio track too (see [`transcodable_audio`]).
    pub fn set_transcodable_audio(&mut self, on: bool) {
        self.transcodable_audio = on;
    }

    pub fn new() -> Self {
        Self {
            align: Aligner::new(),
            program: None,
            tracks: None,
            last_pmt: Vec::new(),
            pids: vec![PidState::new(Pid::PAT, Role::Pat(SectionBuf::default()))],
            sections: Vec::new(),
            transcodable_audio: false,
        }
    }

    /// The program's current tracks, once a PMT was seen.
    pub fn tracks(&self) -> Option<&TrackSet> {
        self.tracks.as_ref()
    }

    /// Forgets all state (a new source on the same stream).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Feeds any chunk of bytes; events of every packet completed by it go to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<DemuxEvent>) {
        let mut align = std::mem::take(&mut self.align);
        // `aligned` never stops the aligner.
        let _ = align.push(data, &mut |item| self.aligned(item, out));
        self.align = align;
    }

    /// End of input: decides the last packets with whatever lookahead there is, and emits each
    /// pending PES that has no PES_packet_length (one whose length was not reached is dropped).
    /// Tracks are kept; the next `push` starts by resyncing.
    pub fn flush(&mut self, out: &mut Vec<DemuxEvent>) {
        let mut align = std::mem::take(&mut self.align);
        let _ = align.flush(&mut |item| self.aligned(item, out));
        self.align = align;
        for state in &mut self.pids {
            if let Role::Es(pes) = &mut state.role {
                pes.flush(out);
            }
        }
    }

    fn aligned(&mut self, item: Aligned<'_>, out: &mut Vec<DemuxEvent>) -> ControlFlow<()> {
        match item {
            Aligned::Packet { packet, .. } => self.packet(packet, out),
            Aligned::Problem(p) => out.push(DemuxEvent::Problem(p.into())),
        }
        ControlFlow::Continue(())
    }

    fn problem(out: &mut Vec<DemuxEvent>, problem: DemuxProblem) {
        out.push(DemuxEvent::Problem(problem));
    }

    fn pcr_pid(&self) -> Option<Pid> {
        self.tracks
            .as_ref()
            .map(|t| t.pcr_pid)
            .filter(|&pid| pid != Pid::NULL)
    }

    /// One aligned packet.
    fn packet(&mut self, pkt: &[u8; PACKET_SIZE], out: &mut Vec<DemuxEvent>) {
        let header = Header::parse(pkt);
        let pid = header.pid;
        if header.tei {
            return Self::problem(out, DemuxProblem::TransportError { pid });
        }
        let index = self.pids.iter().position(|s| s.pid == pid);
        let is_pcr = self.pcr_pid() == Some(pid);
        if index.is_none() && !is_pcr {
            return; // not a PID of ours (or null packets)
        }
        if header.afc == 0 {
            let reason = "adaptation_field_control is 00";
            return Self::problem(out, DemuxProblem::BadPacket { pid, reason });
        }
        let (af, payload) = match packet::split(pkt, &header) {
            Ok(split) => split,
            Err(reason) => return Self::problem(out, DemuxProblem::BadPacket { pid, reason }),
        };
        let is_es = index.is_some_and(|i| matches!(self.pids[i].role, Role::Es(_)));

        // Continuity, counted on payload-bearing packets (ISO/IEC 13818-1 §2.4.3.3). A
        // discontinuity_indicator, even on an adaptation-field-only packet, allows any next CC.
        let mut lost = false;
        if let Some(state) = index.map(|i| &mut self.pids[i]) {
            if af.discontinuity {
                state.cc = None;
            }
            if header.has_payload() {
                match state.cc {
                    Some(last) if last == header.cc && state.is_duplicate(payload) => {
                        state.dup_allowed = false;
                        return; // a duplicate: ignored silently
                    }
                    Some(last) => lost = header.cc != (last + 1) & 0x0F,
                    None => {}
                }
                state.remember(header.cc, payload);
            }
        }

        if af.discontinuity && (is_es || is_pcr) {
            out.push(DemuxEvent::Discontinuity { pid });
        }
        if let Some(pcr_27mhz) = af.pcr.filter(|_| is_pcr) {
            out.push(DemuxEvent::Pcr { pid, pcr_27mhz });
        }
        let Some(i) = index else { return };
        if lost {
            Self::problem(out, DemuxProblem::ContinuityError { pid });
            match &mut self.pids[i].role {
                Role::Es(pes) => {
                    out.push(DemuxEvent::Discontinuity { pid });
                    pes.discontinuity(true);
                }
                Role::Pat(sections) | Role::Pmt(sections) => sections.reset(),
            }
        }
        if !header.has_payload() {
            if let (true, Role::Es(pes)) = (af.discontinuity, &mut self.pids[i].role) {
                pes.discontinuity(false);
            }
            return;
        }
        if header.scrambled {
            return Self::problem(out, DemuxProblem::Scrambled { pid });
        }
        match &mut self.pids[i].role {
            Role::Es(pes) => pes.push(
                header.pusi,
                af.random_access,
                af.discontinuity,
                payload,
                out,
            ),
            Role::Pat(sections) | Role::Pmt(sections) => {
                collect_sections(sections, pid, header.pusi, payload, &mut self.sections, out);
                self.handle_sections(pid, out);
            }
        }
    }

    fn handle_sections(&mut self, pid: Pid, out: &mut Vec<DemuxEvent>) {
        let sections = std::mem::take(&mut self.sections);
        let mut rest = &sections[..];
        while rest.len() >= 3 {
            let len =
                (3 + (usize::from(rest[1] & 0x0F) << 8 | usize::from(rest[2]))).min(rest.len());
            let (section, tail) = rest.split_at(len);
            rest = tail;
            match psi::check_section(section) {
                Err(reason) => Self::problem(out, DemuxProblem::BadPsi { pid, reason }),
                Ok((header, _)) if !header.current_next => {}
                Ok((header, body)) if pid == Pid::PAT => {
                    if header.table_id == psi::TABLE_PAT {
                        self.on_pat(&header, body, out);
                    } else {
                        let reason = "table_id is not PAT on PID 0";
                        Self::problem(out, DemuxProblem::BadPsi { pid, reason });
                    }
                }
                Ok((header, body)) => self.on_pmt(pid, &header, section, body, out),
            }
        }
        self.sections = sections;
        self.sections.clear();
    }

    /// Follows the first program of the PAT (program_number != 0).
    fn on_pat(&mut self, header: &psi::SectionHeader, body: &[u8], out: &mut Vec<DemuxEvent>) {
        let current = self.program;
        let listed =
            current.and_then(|cur| psi::pat_programs(body).find(|&(n, _)| n == cur.number));
        let chosen = match (current, listed) {
            (_, Some(found)) => Some(found),
            // Our program is gone from a single-section PAT (or we have none yet): take the first.
            (None, None) => psi::pat_programs(body).next(),
            (Some(_), None) if header.last_section_number == 0 => psi::pat_programs(body).next(),
            (Some(_), None) => None,
        };
        let Some((number, pmt_pid)) = chosen else {
            return;
        };
        let program = Program { number, pmt_pid };
        if Some(program) == current {
            return;
        }
        if pmt_pid == Pid::PAT || pmt_pid == Pid::NULL {
            let reason = "PMT on a reserved PID";
            return Self::problem(
                out,
                DemuxProblem::BadPsi {
                    pid: Pid::PAT,
                    reason,
                },
            );
        }
        // Keep the tracks until the new PMT arrives; follow the new PMT PID from now on.
        self.pids
            .retain(|s| !matches!(s.role, Role::Pmt(_)) && s.pid != pmt_pid);
        self.pids
            .push(PidState::new(pmt_pid, Role::Pmt(SectionBuf::default())));
        self.program = Some(program);
        self.last_pmt.clear();
    }

    fn on_pmt(
        &mut self,
        pid: Pid,
        header: &psi::SectionHeader,
        section: &[u8],
        body: &[u8],
        out: &mut Vec<DemuxEvent>,
    ) {
        let Some(program) = self.program.filter(|p| p.pmt_pid == pid) else {
            return;
        };
        if header.table_id != psi::TABLE_PMT || header.id != program.number {
            return; // another table or another program's PMT on the same PID
        }
        if header.section_number != 0 || header.last_section_number != 0 {
            let reason = "PMT in more than one section";
            return Self::problem(out, DemuxProblem::BadPsi { pid, reason });
        }
        if section == self.last_pmt {
            return;
        }
        let tracks = match psi::parse_pmt(header, pid, body) {
            Ok(tracks) => tracks,
            Err(reason) => return Self::problem(out, DemuxProblem::BadPsi { pid, reason }),
        };
        self.last_pmt.clear();
        self.last_pmt.extend_from_slice(section);
        if self.tracks.as_ref() != Some(&tracks) {
            self.apply_tracks(tracks, out);
        }
    }

    /// Follows the supported tracks of a new PMT; PES state of a PID whose track is gone (or
    /// changed codec) is dropped.
    fn apply_tracks(&mut self, tracks: TrackSet, out: &mut Vec<DemuxEvent>) {
        let old = self.tracks.take();
        let same_codec = |pid: Pid| {
            let codec =
                |set: Option<&TrackSet>| set.and_then(|s| s.track(pid)).map(|t| t.codec.clone());
            codec(old.as_ref()) == codec(Some(&tracks))
        };
        self.pids
            .retain(|s| !matches!(s.role, Role::Es(_)) || same_codec(s.pid));
        let transcoded = transcodable_audio(&tracks).filter(|_| self.transcodable_audio);
        for track in tracks
            .tracks
            .iter()
            .filter(|t| t.codec.is_supported() || Some(t.pid) == transcoded)
        {
            if !self.pids.iter().any(|s| s.pid == track.pid) {
                self.pids.push(PidState::new(
                    track.pid,
                    Role::Es(PesAssembler::new(track.pid)),
                ));
            }
        }
        self.tracks = Some(tracks.clone());
        out.push(DemuxEvent::Tracks(tracks));
    }
}

/// Splits one packet's PSI payload into complete sections, appended to `sections`.
fn collect_sections(
    buf: &mut SectionBuf,
    pid: Pid,
    pusi: bool,
    payload: &[u8],
    sections: &mut Vec<u8>,
    out: &mut Vec<DemuxEvent>,
) {
    let bad = |out: &mut Vec<DemuxEvent>, reason| {
        out.push(DemuxEvent::Problem(DemuxProblem::BadPsi { pid, reason }))
    };
    if !pusi {
        if buf.is_active() {
            match buf.extend(payload) {
                SectionStep::Complete(_) => sections.extend_from_slice(buf.section()),
                SectionStep::Bad(reason) => bad(out, reason),
                SectionStep::Incomplete | SectionStep::Stuffing => {}
            }
        }
        return;
    }
    let Some((&pointer, rest)) = payload.split_first() else {
        return;
    };
    let Some((tail, mut data)) = rest.split_at_checked(usize::from(pointer)) else {
        buf.reset();
        return bad(out, "pointer_field beyond packet");
    };
    if buf.is_active() {
        match buf.extend(tail) {
            SectionStep::Complete(_) => sections.extend_from_slice(buf.section()),
            SectionStep::Bad(reason) => bad(out, reason),
            SectionStep::Incomplete | SectionStep::Stuffing => bad(out, "section cut short"),
        }
    }
    loop {
        match buf.start(data) {
            SectionStep::Complete(used) => {
                sections.extend_from_slice(buf.section());
                data = &data[used..];
            }
            SectionStep::Bad(reason) => return bad(out, reason),
            SectionStep::Incomplete | SectionStep::Stuffing => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::testutil::*;
    use crate::ts::{Codec, StreamType, Stride};

    const PMT_PID: u16 = 0x1000;
    const VIDEO: u16 = 0x100;
    const AUDIO: u16 = 0x101;

    fn av_pmt(version: u8) -> Vec<u8> {
        pmt(
            1,
            version,
            VIDEO,
            &[(0x1B, VIDEO, &[]), (0x06, AUDIO, OPUS_STEREO)],
        )
    }

    /// PAT, PMT, then `frames` video PES (no length) with PCR and audio PES (with length).
    fn av_stream(frames: u64) -> Mux {
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(PMT_PID, &av_pmt(0));
        for i in 0..frames {
            let video = pes_bytes(
                0xE0,
                Some(3000 * i),
                None,
                &vec![i as u8; 400 + i as usize * 50],
                false,
            );
            m.pes(
                VIDEO,
                &video,
                &af_pcr(i * 3000 * 300, if i == 0 { 0x40 } else { 0 }),
            );
            let audio = pes_bytes(
                0xC0,
                Some(3000 * i + 10),
                None,
                &[0xA0 | i as u8; 150],
                true,
            );
            m.pes(AUDIO, &audio, &[]);
        }
        m
    }

    fn demux_all(chunks: &[&[u8]]) -> Vec<DemuxEvent> {
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out);
        }
        d.flush(&mut out);
        out
    }

    fn pes_events(events: &[DemuxEvent]) -> Vec<&Pes> {
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

    fn problems(events: &[DemuxEvent]) -> Vec<DemuxProblem> {
        events
            .iter()
            .filter_map(|e| {
                if let DemuxEvent::Problem(p) = e {
                    Some(*p)
                } else {
                    None
                }
            })
            .collect()
    }

    fn tracks_events(events: &[DemuxEvent]) -> Vec<&TrackSet> {
        events
            .iter()
            .filter_map(|e| {
                if let DemuxEvent::Tracks(t) = e {
                    Some(t)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn clean_stream_gives_tracks_pes_and_pcr() {
        let m = av_stream(3);
        let events = demux_all(&[&m.out]);
        assert!(problems(&events).is_empty(), "{events:?}");
        let tracks = tracks_events(&events);
        assert_eq!(tracks.len(), 1);
        let t = tracks[0];
        assert_eq!(
            (t.program_number, t.pmt_pid, t.pcr_pid),
            (1, Pid(PMT_PID), Pid(VIDEO))
        );
        assert_eq!(t.video().unwrap().pid, Pid(VIDEO));
        assert_eq!(t.audio().unwrap().codec, Codec::Opus { channels: 2 });
        let pes = pes_events(&events);
        assert_eq!(pes.len(), 6);
        let video: Vec<_> = pes.iter().filter(|p| p.pid == Pid(VIDEO)).collect();
        assert_eq!(
            video.iter().map(|p| p.pts.unwrap()).collect::<Vec<_>>(),
            [0, 3000, 6000]
        );
        assert!(video[0].random_access && !video[1].random_access);
        assert_eq!(video[2].data.len(), 500);
        let pcrs: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, DemuxEvent::Pcr { .. }))
            .collect();
        assert_eq!(pcrs.len(), 3);
        assert_eq!(
            pcrs[1],
            &DemuxEvent::Pcr {
                pid: Pid(VIDEO),
                pcr_27mhz: 900_000
            }
        );
    }

    #[test]
    fn audio_pes_is_emitted_at_its_length_not_at_next_unit_start() {
        let m = av_stream(2);
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        // Everything but the flush: the last audio PES is complete, the last video PES is not.
        d.push(&m.out, &mut out);
        let pes = pes_events(&out);
        assert_eq!(pes.last().unwrap().pid, Pid(AUDIO));
        assert_eq!(pes.last().unwrap().pts, Some(3010));
        assert_eq!(pes.iter().filter(|p| p.pid == Pid(VIDEO)).count(), 1);
        d.flush(&mut out);
        assert_eq!(
            pes_events(&out)
                .iter()
                .filter(|p| p.pid == Pid(VIDEO))
                .count(),
            2
        );
    }

    #[test]
    fn any_split_gives_identical_events() {
        let mut m = av_stream(4);
        // Garbage (with a stray sync byte) between packets, and a truncated packet.
        let mut stream = m.out[..3 * PACKET_SIZE].to_vec();
        stream.extend([0x00, 0x47, 0x12, 0x47, 0x99]);
        stream.extend_from_slice(&m.out[3 * PACKET_SIZE..6 * PACKET_SIZE]);
        stream.extend_from_slice(&m.out[6 * PACKET_SIZE..6 * PACKET_SIZE + 100]);
        stream.extend_from_slice(&m.out[7 * PACKET_SIZE..]);
        m.out = stream;
        let whole = demux_all(&[&m.out]);
        assert!(problems(&whole).contains(&DemuxProblem::Resync { skipped: 5 }));
        for split in 1..400 {
            let (a, b) = m.out.split_at(split);
            assert_eq!(demux_all(&[a, b]), whole, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = m.out.chunks(1).collect();
        assert_eq!(demux_all(&bytewise), whole);
        let odd: Vec<&[u8]> = m.out.chunks(191).collect();
        assert_eq!(demux_all(&odd), whole);
    }

    #[test]
    fn resync_after_leading_garbage_and_garbage_between_packets() {
        let m = av_stream(2);
        let mut stream = vec![0x47, 0x00, 0x47];
        stream.extend_from_slice(&m.out[..5 * PACKET_SIZE]);
        stream.extend([0xAB; 7]);
        stream.extend_from_slice(&m.out[5 * PACKET_SIZE..]);
        let events = demux_all(&[&stream]);
        assert_eq!(
            problems(&events),
            [
                DemuxProblem::Resync { skipped: 3 },
                DemuxProblem::Resync { skipped: 7 }
            ]
        );
        assert_eq!(pes_events(&events), pes_events(&demux_all(&[&m.out])));
    }

    #[test]
    fn truncated_packet_costs_only_nearby_data() {
        let m = av_stream(3);
        let packets: Vec<&[u8]> = m.packets().collect();
        // Cut the second packet of the first video PES short.
        let mut stream = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            stream.extend_from_slice(if i == 3 { &p[..100] } else { p });
        }
        stream.extend_from_slice(&packets[0][..50]); // and a partial packet at the end
        let events = demux_all(&[&stream]);
        let probs = problems(&events);
        assert!(
            probs
                .iter()
                .any(|p| matches!(p, DemuxProblem::Resync { .. })),
            "{probs:?}"
        );
        assert_eq!(probs.last(), Some(&DemuxProblem::Truncated { bytes: 50 }));
        let pes = pes_events(&events);
        // The damaged first video PES is lost; everything after it is intact.
        let video: Vec<_> = pes
            .iter()
            .filter(|p| p.pid == Pid(VIDEO))
            .map(|p| p.pts)
            .collect();
        assert_eq!(video, [Some(3000), Some(6000)]);
        assert_eq!(pes.iter().filter(|p| p.pid == Pid(AUDIO)).count(), 3);
    }

    #[test]
    fn continuity_error_drops_partial_pes() {
        let m = av_stream(3);
        let packets: Vec<&[u8]> = m.packets().collect();
        // Packets: PAT, PMT, V0 (3 packets), A0 (1), V1 (3), A1, ... drop V1's middle packet.
        let stream: Vec<u8> = packets
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 7)
            .flat_map(|(_, p)| p.to_vec())
            .collect();
        let events = demux_all(&[&stream]);
        assert_eq!(
            problems(&events),
            [DemuxProblem::ContinuityError { pid: Pid(VIDEO) }]
        );
        assert!(events.contains(&DemuxEvent::Discontinuity { pid: Pid(VIDEO) }));
        let video: Vec<_> = pes_events(&events)
            .into_iter()
            .filter(|p| p.pid == Pid(VIDEO))
            .collect();
        assert_eq!(
            video.iter().map(|p| p.pts).collect::<Vec<_>>(),
            [Some(0), Some(6000)]
        );
        assert!(!video[0].discontinuity && video[1].discontinuity);
    }

    #[test]
    fn duplicate_packet_is_ignored_but_a_third_copy_is_not() {
        let m = av_stream(2);
        let packets: Vec<&[u8]> = m.packets().collect();
        let mut dup = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            dup.extend_from_slice(p);
            if i == 3 {
                dup.extend_from_slice(p);
            }
        }
        assert_eq!(demux_all(&[&dup]), demux_all(&[&m.out]));
        let mut triple = dup.clone();
        triple.splice(4 * PACKET_SIZE..4 * PACKET_SIZE, packets[3].iter().copied());
        assert!(problems(&demux_all(&[&triple]))
            .contains(&DemuxProblem::ContinuityError { pid: Pid(VIDEO) }));
        // Same CC but different content: 16 packets were lost.
        let mut other = m.out.clone();
        let mut fake = packets[3].to_vec();
        fake[100] ^= 0xFF;
        other.splice(4 * PACKET_SIZE..4 * PACKET_SIZE, fake);
        assert!(problems(&demux_all(&[&other]))
            .contains(&DemuxProblem::ContinuityError { pid: Pid(VIDEO) }));
    }

    #[test]
    fn discontinuity_indicator_keeps_pes_and_flags_the_next() {
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(PMT_PID, &av_pmt(0));
        m.pes(
            VIDEO,
            &pes_bytes(0xE0, Some(0), None, &[1; 100], false),
            &[],
        );
        // Discontinuity with a CC jump on the next PES.
        let pes = pes_bytes(0xE0, Some(900_000), None, &[2; 100], false);
        m.out
            .extend_from_slice(&packet(VIDEO, true, 9, &[0x80], &pes));
        m.cc.insert(VIDEO, 9);
        m.pes(
            VIDEO,
            &pes_bytes(0xE0, Some(903_000), None, &[3; 100], false),
            &[],
        );
        let events = demux_all(&[&m.out]);
        assert!(problems(&events).is_empty(), "{events:?}");
        assert!(events.contains(&DemuxEvent::Discontinuity { pid: Pid(VIDEO) }));
        let pes = pes_events(&events);
        assert_eq!(
            pes.iter().map(|p| p.discontinuity).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn discontinuity_on_adaptation_field_only_packet_allows_a_cc_jump() {
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(PMT_PID, &av_pmt(0));
        m.pes(
            VIDEO,
            &pes_bytes(0xE0, Some(0), None, &[1; 100], false),
            &[],
        );
        m.out
            .extend_from_slice(&packet(VIDEO, false, 0, &af_pcr(27_000_000, 0x80), &[]));
        m.cc.insert(VIDEO, 11);
        m.pes(
            VIDEO,
            &pes_bytes(0xE0, Some(90_000), None, &[2; 100], false),
            &[],
        );
        let events = demux_all(&[&m.out]);
        assert!(problems(&events).is_empty(), "{events:?}");
        let at = events
            .iter()
            .position(|e| *e == DemuxEvent::Discontinuity { pid: Pid(VIDEO) });
        assert_eq!(
            events[at.unwrap() + 1],
            DemuxEvent::Pcr {
                pid: Pid(VIDEO),
                pcr_27mhz: 27_000_000
            }
        );
        let pes = pes_events(&events);
        assert_eq!(
            pes.iter().map(|p| p.discontinuity).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn non_ts_input_is_reported_while_it_lasts() {
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        let zeros = vec![0u8; 64 * 1024];
        for _ in 0..20 {
            d.push(&zeros, &mut out);
        }
        assert!(
            matches!(problems(&out)[..], [DemuxProblem::Resync { skipped }] if skipped >= 1 << 20)
        );
        d.flush(&mut out);
        let total: usize = problems(&out)
            .iter()
            .map(|p| match p {
                DemuxProblem::Resync { skipped } | DemuxProblem::Truncated { bytes: skipped } => {
                    *skipped
                }
                _ => 0,
            })
            .sum();
        assert_eq!(total, 20 * 64 * 1024);
    }

    #[test]
    fn pat_and_pmt_spanning_packets() {
        // A PMT with many streams: longer than one packet.
        let info = [0x0A, 0x04, b'e', b'n', b'g', 0x00];
        let mut streams: Vec<(u8, u16, &[u8])> = vec![(0x1B, VIDEO, &[]), (0x06, AUDIO, OPUS_MONO)];
        for i in 0..20 {
            streams.push((0x0F, 0x200 + i, &info));
        }
        let section = pmt(1, 3, VIDEO, &streams);
        assert!(section.len() > 184);
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(PMT_PID, &section);
        let events = demux_all(&[&m.out]);
        let t = tracks_events(&events);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].tracks.len(), 22);
        assert_eq!(t[0].version, 3);
        assert_eq!(t[0].audio().unwrap().codec, Codec::Opus { channels: 1 });
        assert_eq!(t[0].tracks[5].stream_type, StreamType::AAC_ADTS);
        assert!(!t[0].tracks[5].codec.is_supported());
    }

    #[test]
    fn section_continued_after_pointer_field_and_followed_by_another() {
        // Two PMT sections on one PID (another program's, then ours), ours split across packets
        // and completed through the next packet's pointer_field, which then starts ours again.
        let other = pmt(7, 0, 0x300, &[(0x1B, 0x301, &[])]);
        let ours = av_pmt(0);
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        let mut first = vec![0u8];
        first.extend(&other);
        first.extend(&ours[..20]);
        m.raw(PMT_PID, true, &[], &first);
        let mut second = vec![(ours.len() - 20) as u8];
        second.extend(&ours[20..]);
        second.extend(&ours);
        m.raw(PMT_PID, true, &[], &second);
        let events = demux_all(&[&m.out]);
        assert!(problems(&events).is_empty(), "{events:?}");
        assert_eq!(tracks_events(&events).len(), 1);
        assert_eq!(tracks_events(&events)[0].program_number, 1);
    }

    #[test]
    fn crc_failure_is_reported_and_section_ignored() {
        let mut section = av_pmt(0);
        let n = section.len();
        section[n - 1] ^= 1;
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(PMT_PID, &section);
        let events = demux_all(&[&m.out]);
        assert_eq!(
            problems(&events),
            [DemuxProblem::BadPsi {
                pid: Pid(PMT_PID),
                reason: "CRC mismatch"
            }]
        );
        assert!(tracks_events(&events).is_empty());
    }

    #[test]
    fn repeated_pmt_is_not_reemitted_but_a_change_is() {
        let mut m = Mux::default();
        for _ in 0..3 {
            m.psi(0, &pat(1, PMT_PID, 0));
            m.psi(PMT_PID, &av_pmt(0));
        }
        // Audio half-way through a PES when the PMT drops the audio track.
        let audio = pes_bytes(0xC0, Some(5), None, &[9; 300], true);
        m.raw(AUDIO, true, &[], &audio[..184]);
        m.psi(PMT_PID, &pmt(1, 1, VIDEO, &[(0x1B, VIDEO, &[])]));
        m.raw(AUDIO, false, &[], &audio[184..]);
        m.psi(
            PMT_PID,
            &pmt(1, 2, VIDEO, &[(0x1B, VIDEO, &[]), (0x0F, AUDIO, &[])]),
        );
        let events = demux_all(&[&m.out]);
        let t = tracks_events(&events);
        assert_eq!(
            t.iter()
                .map(|t| (t.version, t.tracks.len()))
                .collect::<Vec<_>>(),
            [(0, 2), (1, 1), (2, 2)]
        );
        assert_eq!(t[2].audio(), None);
        assert!(pes_events(&events).is_empty());
        assert!(problems(&events).is_empty());
    }

    #[test]
    fn pat_change_switches_program() {
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(PMT_PID, &av_pmt(0));
        m.psi(0, &pat(2, 0x1100, 1));
        m.psi(PMT_PID, &av_pmt(0)); // the old PMT is no longer followed
        m.psi(0x1100, &pmt(2, 0, 0x1FFF, &[(0x24, 0x400, &[])]));
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        d.push(&m.out, &mut out);
        let t = tracks_events(&out);
        assert_eq!(t.len(), 2, "{out:?}");
        assert_eq!(
            (t[1].program_number, t[1].pmt_pid, t[1].pcr_pid),
            (2, Pid(0x1100), Pid::NULL)
        );
        assert_eq!(d.tracks(), Some(t[1]));
        d.reset();
        assert_eq!(d.tracks(), None);
    }

    #[test]
    fn unsupported_tracks_are_listed_not_reassembled() {
        let mut m = Mux::default();
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(
            PMT_PID,
            &pmt(1, 0, VIDEO, &[(0x1B, VIDEO, &[]), (0x0F, AUDIO, &[])]),
        );
        m.pes(AUDIO, &pes_bytes(0xC0, Some(5), None, &[9; 100], true), &[]);
        let events = demux_all(&[&m.out]);
        let t = tracks_events(&events)[0];
        assert_eq!(t.audio(), None);
        assert_eq!(
            t.tracks[1].codec,
            Codec::Unsupported {
                reason: "AAC (ADTS) is not playable in WebRTC"
            }
        );
        assert!(pes_events(&events).is_empty());
    }

    #[test]
    fn bad_packets_are_dropped_without_panicking() {
        let m = av_stream(1);
        let mut stream = m.out.clone();
        stream[PACKET_SIZE + 1] |= 0x80; // TEI on the PMT
        let events = demux_all(&[&stream]);
        assert_eq!(
            problems(&events),
            [DemuxProblem::TransportError { pid: Pid(PMT_PID) }]
        );
        // Every byte pattern at every header position.
        for pos in [1usize, 3, 4, 5, 6, 11, 12, 13] {
            for v in [0x00, 0x0F, 0x20, 0x47, 0x80, 0xB7, 0xFF] {
                let mut s = m.out.clone();
                for p in 0..s.len() / PACKET_SIZE {
                    s[p * PACKET_SIZE + pos] = v;
                }
                demux_all(&[&s]);
            }
        }
        // Random garbage.
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..20_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 188 == 0 {
                    0x47
                } else {
                    x as u8
                }
            })
            .collect();
        demux_all(&[&noise]);
    }

    #[test]
    fn problem_causes_are_stable() {
        assert_eq!(DemuxProblem::Resync { skipped: 1 }.cause(), "resync");
        assert_eq!(
            DemuxProblem::ContinuityError { pid: Pid(1) }.cause(),
            "continuity_error"
        );
        assert_eq!(
            DemuxProblem::BadPsi {
                pid: Pid(0x20),
                reason: "CRC mismatch"
            }
            .to_string(),
            "PID 0x0020: bad PSI section (CRC mismatch)"
        );
    }

    #[test]
    fn m2ts_and_fec_strides_demux_to_the_same_events_in_any_split() {
        let m = av_stream(4);
        let whole = demux_all(&[&m.out]);
        assert!(problems(&whole).is_empty());
        for stride in [Stride::M2ts192, Stride::Fec204] {
            let data = restride(&m.out, stride);
            assert_eq!(demux_all(&[&data]), whole, "{stride:?}");
            for split in 1..3 * stride.unit_len() {
                let (a, b) = data.split_at(split);
                assert_eq!(demux_all(&[a, b]), whole, "{stride:?} split at {split}");
            }
            let bytewise: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(demux_all(&bytewise), whole, "{stride:?} bytewise");
            let odd: Vec<&[u8]> = data.chunks(191).collect();
            assert_eq!(demux_all(&odd), whole, "{stride:?} in 191-byte chunks");
        }
    }

    #[test]
    fn stride_change_after_garbage_resyncs() {
        let m = av_stream(4);
        let n = m.out.len() / PACKET_SIZE;
        let (a, b) = (5 * PACKET_SIZE, (n - 6) * PACKET_SIZE);
        let mut stream = restride(&m.out[..a], Stride::M2ts192);
        stream.extend([0x00; 9]);
        stream.extend_from_slice(&m.out[a..b]);
        stream.extend([0x01, 0x02, 0x03]);
        stream.extend(restride(&m.out[b..], Stride::Fec204));
        let events = demux_all(&[&stream]);
        assert_eq!(
            problems(&events),
            [
                DemuxProblem::Resync { skipped: 9 },
                DemuxProblem::Resync { skipped: 3 }
            ]
        );
        assert_eq!(pes_events(&events), pes_events(&demux_all(&[&m.out])));
        for split in (1..stream.len()).step_by(97) {
            let (x, y) = stream.split_at(split);
            assert_eq!(demux_all(&[x, y]), events, "split at {split}");
        }
    }
}
