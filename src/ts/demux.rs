//! The demuxer: continuity, PSI of every program, PES reassembly of the followed program.
//!
//! Packets come from the [`Aligner`] (any of the 188/192/204-byte layouts). The PAT and the
//! PMT of every program it lists are parsed, so a multi-program TS (MPTS) is listed whole
//! ([`DemuxEvent::Programs`]); one program is followed ([`ProgramChoice`]): its tracks are
//! [`DemuxEvent::Tracks`], and only its supported tracks are reassembled. Watching several
//! programs takes one `Demuxer` per program, each with its own [`ProgramChoice::Number`].

use std::ops::ControlFlow;

use super::align::{AlignProblem, Aligned, Aligner};
use super::packet::{self, Header, Pid, PACKET_SIZE};
use super::pes::{Pes, PesAssembler, MAX_PES_SIZE};
use super::psi::{self, SectionBuf, SectionStep, TrackSet};
use super::psi::{Codec, StreamType};

/// What the demuxer found in its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DemuxEvent {
    /// The followed program's tracks: on its first PMT, and whenever the PMT changes (version,
    /// PIDs, types). A PMT repeated unchanged is not reported again.
    Tracks(TrackSet),
    /// Every program whose PMT has been seen, in PAT order, whenever that list changes (a new
    /// or changed PMT, a program gone from the PAT). Comes before the `Tracks` it leads to; a
    /// single-program stream gets one alongside its first `Tracks`.
    Programs(Vec<TrackSet>),
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

/// Which program of the PAT a [`Demuxer`] follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgramChoice {
    /// The first program (PAT order) with a track every WebRTC stack plays
    /// ([`plays_everywhere`]), else the first with any supported track, else the first whose
    /// PMT was seen. Decided once the PMTs of all programs in the PAT have been seen, or one
    /// PMT twice (a whole PSI repetition cycle went by without the others), so a PMT arriving
    /// late cannot flip the choice back and forth; decided again only when the followed
    /// program leaves the PAT. A single-program stream is followed as soon as its PMT arrives.
    #[default]
    Auto,
    /// This program_number only: no `Tracks` until its PMT arrives, nothing new while it is
    /// not in the PAT.
    Number(u16),
}

/// Whether a program has a track every WebRTC stack plays: H.264, Opus, or audio the
/// transcoder turns into Opus ([`transcodable_audio`]).
pub fn plays_everywhere(tracks: &TrackSet) -> bool {
    tracks
        .tracks
        .iter()
        .any(|t| matches!(t.codec, Codec::H264 | Codec::Opus { .. }))
        || transcodable_audio(tracks).is_some()
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

#[derive(Debug)]
enum Role {
    Pat(SectionBuf),
    Pmt(SectionBuf),
    Es(PesAssembler),
}

/// Per-PID state of the PIDs the demuxer follows (PAT, the PMTs, supported tracks).
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

/// One program of the PAT.
#[derive(Debug)]
struct Program {
    number: u16,
    pmt_pid: Pid,
    /// Its tracks, once its PMT was seen.
    tracks: Option<TrackSet>,
    /// The last PMT section applied, to skip unchanged repetitions cheaply.
    last_pmt: Vec<u8>,
    /// PMT sections seen since the PAT last changed, repetitions included (saturating).
    pmts_seen: u8,
}

impl Program {
    fn new(number: u16, pmt_pid: Pid) -> Self {
        Self {
            number,
            pmt_pid,
            tracks: None,
            last_pmt: Vec::new(),
            pmts_seen: 0,
        }
    }
}

/// Sans-IO MPEG-TS demuxer: bytes in (any split, any packet stride, garbage allowed), events
/// out.
///
/// Alignment is the [`Aligner`]'s: a packet start is accepted while resyncing when the sync
/// byte repeats one and two strides (188, 192 or 204 bytes) further on (waiting for them if
/// needed, so events do not depend on how the input is split); once in sync, each following
/// packet only has to start with a sync byte. Only the tail of a partial packet is copied
/// between `push` calls.
#[derive(Debug)]
pub struct Demuxer {
    align: Aligner,
    choice: ProgramChoice,
    /// The programs of the PAT, in PAT order.
    programs: Vec<Program>,
    /// The program_number followed; `None` while undecided or (with `Number`) not in the PAT.
    followed: Option<u16>,
    /// The followed program's tracks as last reported. They stay, their PIDs reassembled,
    /// until another PMT replaces them (there is no "no tracks" event): a program gone from
    /// the PAT normally stops sending on its PIDs anyway.
    tracks: Option<TrackSet>,
    /// The programs as last reported in `Programs`.
    reported: Vec<TrackSet>,
    /// The last single-section PAT applied, to skip unchanged repetitions cheaply.
    last_pat: Vec<u8>,
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

impl Demuxer {
    /// Reassemble PES of the transcodable audio track too (see [`transcodable_audio`]).
    pub fn set_transcodable_audio(&mut self, on: bool) {
        self.transcodable_audio = on;
    }

    /// Follows the first program of the PAT ([`ProgramChoice::Auto`]).
    pub fn new() -> Self {
        Self::with_program(ProgramChoice::Auto)
    }

    /// Follows the program `choice` names.
    pub fn with_program(choice: ProgramChoice) -> Self {
        Self {
            align: Aligner::new(),
            choice,
            programs: Vec::new(),
            followed: None,
            tracks: None,
            reported: Vec::new(),
            last_pat: Vec::new(),
            pids: vec![PidState::new(Pid::PAT, Role::Pat(SectionBuf::default()))],
            sections: Vec::new(),
            transcodable_audio: false,
        }
    }

    /// The followed program's current tracks, once a PMT was seen.
    pub fn tracks(&self) -> Option<&TrackSet> {
        self.tracks.as_ref()
    }

    /// The program_number followed, once decided.
    pub fn followed(&self) -> Option<u16> {
        self.followed
    }

    /// Forgets all input state (a new source on the same stream); the program choice and
    /// the transcodable-audio setting are kept.
    pub fn reset(&mut self) {
        let transcodable_audio = self.transcodable_audio;
        *self = Self::with_program(self.choice);
        self.transcodable_audio = transcodable_audio;
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
                        self.on_pat(&header, section, body, out);
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

    /// Takes the PAT's programs (program_number != 0) in its order. A single-section PAT is
    /// the whole list: programs it no longer lists are gone. A section of a PAT in several
    /// sections only adds programs (or moves one to another PMT PID).
    fn on_pat(
        &mut self,
        header: &psi::SectionHeader,
        section: &[u8],
        body: &[u8],
        out: &mut Vec<DemuxEvent>,
    ) {
        let whole = header.section_number == 0 && header.last_section_number == 0;
        if whole && section == self.last_pat {
            return;
        }
        // A new whole PAT replaces the list (it may drop or reorder programs); a section of a
        // PAT in several sections only adds programs or moves one to another PMT PID.
        let mut changed = whole;
        let (mut programs, mut old) = if whole {
            self.last_pat.clear();
            self.last_pat.extend_from_slice(section);
            (Vec::new(), std::mem::take(&mut self.programs))
        } else {
            (std::mem::take(&mut self.programs), Vec::new())
        };
        for (number, pmt_pid) in psi::pat_programs(body) {
            if pmt_pid == Pid::PAT || pmt_pid == Pid::NULL {
                let (pid, reason) = (Pid::PAT, "PMT on a reserved PID");
                Self::problem(out, DemuxProblem::BadPsi { pid, reason });
                continue;
            }
            if let Some(p) = programs.iter_mut().find(|p| p.number == number) {
                // Listed twice in one PAT: the first entry wins.
                if !whole && p.pmt_pid != pmt_pid {
                    *p = Program::new(number, pmt_pid);
                    changed = true;
                }
                continue;
            }
            let kept = old
                .iter()
                .position(|p| p.number == number && p.pmt_pid == pmt_pid)
                .map(|i| old.remove(i));
            changed |= kept.is_none();
            programs.push(kept.unwrap_or_else(|| Program::new(number, pmt_pid)));
        }
        self.programs = programs;
        if !changed {
            return;
        }
        for p in &mut self.programs {
            p.pmts_seen = 0;
        }
        // Follow the PMT PIDs of the programs listed now, and only those.
        let pmt_pids: Vec<Pid> = self.programs.iter().map(|p| p.pmt_pid).collect();
        self.pids
            .retain(|s| !matches!(s.role, Role::Pmt(_)) || pmt_pids.contains(&s.pid));
        for &pid in &pmt_pids {
            let is_pmt = |s: &PidState| s.pid == pid && matches!(s.role, Role::Pmt(_));
            if !self.pids.iter().any(is_pmt) {
                self.pids.retain(|s| s.pid != pid);
                self.pids
                    .push(PidState::new(pid, Role::Pmt(SectionBuf::default())));
            }
        }
        if self
            .followed
            .is_some_and(|n| !self.programs.iter().any(|p| p.number == n))
        {
            self.followed = None;
        }
        self.report_programs(out);
        self.follow(out);
    }

    fn on_pmt(
        &mut self,
        pid: Pid,
        header: &psi::SectionHeader,
        section: &[u8],
        body: &[u8],
        out: &mut Vec<DemuxEvent>,
    ) {
        if header.table_id != psi::TABLE_PMT {
            return; // another table on a PMT PID
        }
        let Some(i) = self
            .programs
            .iter()
            .position(|p| p.number == header.id && p.pmt_pid == pid)
        else {
            return; // the PMT of a program not in the PAT (or not on this PID)
        };
        if header.section_number != 0 || header.last_section_number != 0 {
            let reason = "PMT in more than one section";
            return Self::problem(out, DemuxProblem::BadPsi { pid, reason });
        }
        let program = &mut self.programs[i];
        program.pmts_seen = program.pmts_seen.saturating_add(1);
        if section != program.last_pmt {
            let tracks = match psi::parse_pmt(header, pid, body) {
                Ok(tracks) => tracks,
                Err(reason) => return Self::problem(out, DemuxProblem::BadPsi { pid, reason }),
            };
            program.last_pmt.clear();
            program.last_pmt.extend_from_slice(section);
            if program.tracks.as_ref() != Some(&tracks) {
                program.tracks = Some(tracks);
                self.report_programs(out);
            }
        }
        self.follow(out);
    }

    /// Emits `Programs` if the list of programs with a PMT differs from the last one reported.
    fn report_programs(&mut self, out: &mut Vec<DemuxEvent>) {
        let mut seen = self.programs.iter().filter_map(|p| p.tracks.as_ref());
        let same = seen.clone().count() == self.reported.len()
            && seen.by_ref().zip(&self.reported).all(|(a, b)| a == b);
        if same {
            return;
        }
        self.reported = self
            .programs
            .iter()
            .filter_map(|p| p.tracks.clone())
            .collect();
        out.push(DemuxEvent::Programs(self.reported.clone()));
    }

    /// Decides which program to follow if that is still open, and applies its tracks when
    /// they differ from the ones reported.
    fn follow(&mut self, out: &mut Vec<DemuxEvent>) {
        if self.followed.is_none() {
            self.followed = match self.choice {
                ProgramChoice::Number(n) => {
                    self.programs.iter().any(|p| p.number == n).then_some(n)
                }
                ProgramChoice::Auto => self.auto_choice(),
            };
        }
        let Some(n) = self.followed else { return };
        let tracks = self
            .programs
            .iter()
            .find(|p| p.number == n)
            .and_then(|p| p.tracks.as_ref());
        if let Some(tracks) = tracks.filter(|&t| self.tracks.as_ref() != Some(t)) {
            self.apply_tracks(tracks.clone(), out);
        }
    }

    /// The `Auto` choice, once it can be made (see [`ProgramChoice::Auto`]).
    fn auto_choice(&self) -> Option<u16> {
        let all_seen = self.programs.iter().all(|p| p.tracks.is_some());
        let cycle = self.programs.iter().any(|p| p.pmts_seen >= 2);
        if !all_seen && !cycle {
            return None;
        }
        let seen = || {
            self.programs
                .iter()
                .filter_map(|p| Some((p.number, p.tracks.as_ref()?)))
        };
        seen()
            .find(|(_, t)| plays_everywhere(t))
            .or_else(|| seen().find(|(_, t)| t.tracks.iter().any(|t| t.codec.is_supported())))
            .or_else(|| seen().next())
            .map(|(number, _)| number)
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

    fn programs_events(events: &[DemuxEvent]) -> Vec<Vec<u16>> {
        events
            .iter()
            .filter_map(|e| {
                if let DemuxEvent::Programs(list) = e {
                    Some(list.iter().map(|t| t.program_number).collect())
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

    // ---- programs of an MPTS --------------------------------------------------------------

    const HEVC_PMT: u16 = 0x1000;
    const AV_PMT: u16 = 0x1001;
    const H264_PMT: u16 = 0x1002;

    /// Program 1: HEVC only; program 2: H.264 + Opus; program 3: H.264 only.
    fn mpts_pmt(program: u16) -> Vec<u8> {
        match program {
            1 => pmt(1, 0, 0x100, &[(0x24, 0x100, &[])]),
            2 => pmt(
                2,
                0,
                0x200,
                &[(0x1B, 0x200, &[]), (0x06, 0x201, OPUS_STEREO)],
            ),
            _ => pmt(3, 0, 0x300, &[(0x1B, 0x300, &[])]),
        }
    }

    /// PSI for three programs, `cycles` times, then one video PES on each program's video PID.
    fn mpts(cycles: usize) -> Mux {
        let mut m = Mux::default();
        for _ in 0..cycles {
            m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT), (3, H264_PMT)]));
            m.psi(HEVC_PMT, &mpts_pmt(1));
            m.psi(AV_PMT, &mpts_pmt(2));
            m.psi(H264_PMT, &mpts_pmt(3));
        }
        for (i, pid) in [0x100, 0x200, 0x300].into_iter().enumerate() {
            let pes = pes_bytes(0xE0, Some(i as u64), None, &[i as u8; 50], true);
            m.pes(pid, &pes, &[]);
        }
        m
    }

    fn demux_with(choice: ProgramChoice, data: &[u8]) -> (Demuxer, Vec<DemuxEvent>) {
        let mut d = Demuxer::with_program(choice);
        let mut out = Vec::new();
        d.push(data, &mut out);
        d.flush(&mut out);
        (d, out)
    }

    #[test]
    fn mpts_auto_follows_first_program_with_h264_or_opus() {
        let m = mpts(2);
        let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
        assert!(problems(&events).is_empty(), "{events:?}");
        let t = tracks_events(&events);
        assert_eq!(t.len(), 1, "decided once, when every PMT was seen");
        assert_eq!((t[0].program_number, t[0].pmt_pid), (2, Pid(AV_PMT)));
        assert_eq!(d.followed(), Some(2));
        assert_eq!(d.tracks(), Some(t[0]));
        // Only the followed program's supported tracks are reassembled.
        let pids: Vec<Pid> = pes_events(&events).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [Pid(0x200)]);
        // Nothing plays everywhere: the first program with a supported track; none: the first.
        let mut m = Mux::default();
        m.psi(0, &pat_of(0, &[(1, 0x1000), (2, 0x1001), (3, 0x1002)]));
        m.psi(0x1000, &pmt(1, 0, 0x100, &[(0x02, 0x100, &[])]));
        m.psi(0x1001, &pmt(2, 0, 0x200, &[(0x24, 0x200, &[])]));
        m.psi(0x1002, &pmt(3, 0, 0x300, &[(0x0F, 0x300, &[])]));
        let (d, _) = demux_with(ProgramChoice::Auto, &m.out);
        assert_eq!(d.followed(), Some(3), "AAC goes through the transcoder");
        // HEVC is supported (for viewers that offer H.265), MPEG-2 video is not.
        let mut m = Mux::default();
        m.psi(0, &pat_of(0, &[(1, 0x1000), (2, 0x1001)]));
        m.psi(0x1000, &pmt(1, 0, 0x100, &[(0x02, 0x100, &[])]));
        m.psi(0x1001, &pmt(2, 0, 0x200, &[(0x24, 0x200, &[])]));
        let (d, _) = demux_with(ProgramChoice::Auto, &m.out);
        assert_eq!(d.followed(), Some(2));
        let mut m = Mux::default();
        m.psi(0, &pat_of(0, &[(1, 0x1000), (2, 0x1001)]));
        m.psi(0x1000, &pmt(1, 0, 0x100, &[(0x02, 0x100, &[])]));
        m.psi(0x1001, &pmt(2, 0, 0x200, &[(0x81, 0x200, &[])]));
        let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
        assert_eq!(d.followed(), Some(1));
        assert_eq!(tracks_events(&events)[0].program_number, 1);
    }

    #[test]
    fn plays_everywhere_means_h264_opus_or_transcodable_audio() {
        let set = |streams: &[(u8, u16, &[u8])]| {
            let section = pmt(1, 0, 0x100, streams);
            let (h, body) = psi::check_section(&section).unwrap();
            psi::parse_pmt(&h, Pid(0x1000), body).unwrap()
        };
        assert!(plays_everywhere(&set(&[(0x1B, 0x100, &[])])));
        assert!(plays_everywhere(&set(&[(0x06, 0x101, OPUS_MONO)])));
        assert!(plays_everywhere(&set(&[
            (0x24, 0x100, &[]),
            (0x0F, 0x101, &[])
        ])));
        assert!(!plays_everywhere(&set(&[(0x24, 0x100, &[])])));
        assert!(!plays_everywhere(&set(&[
            (0x02, 0x100, &[]),
            (0x81, 0x101, &[])
        ])));
    }

    #[test]
    fn mpts_number_follows_the_chosen_program() {
        let m = mpts(1);
        let (d, events) = demux_with(ProgramChoice::Number(3), &m.out);
        let t = tracks_events(&events);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].program_number, 3);
        assert_eq!(d.followed(), Some(3));
        let pids: Vec<Pid> = pes_events(&events).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [Pid(0x300)]);
        // No Tracks before its PMT: its PMT comes last in each cycle.
        let at = |pred: &dyn Fn(&DemuxEvent) -> bool| events.iter().position(pred).unwrap();
        let tracks_at = at(&|e| matches!(e, DemuxEvent::Tracks(_)));
        let all_programs_at = at(&|e| matches!(e, DemuxEvent::Programs(l) if l.len() == 3));
        assert_eq!(tracks_at, all_programs_at + 1);
        // A number the PAT does not list: programs are listed, nothing is followed.
        let (d, events) = demux_with(ProgramChoice::Number(9), &m.out);
        assert!(tracks_events(&events).is_empty() && pes_events(&events).is_empty());
        assert_eq!(programs_events(&events).last().unwrap(), &[1, 2, 3]);
        assert_eq!((d.followed(), d.tracks()), (None, None));
    }

    #[test]
    fn programs_event_lists_every_pmt() {
        let mut m = Mux::default();
        m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
        m.psi(HEVC_PMT, &mpts_pmt(1));
        m.psi(AV_PMT, &mpts_pmt(2));
        m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
        m.psi(HEVC_PMT, &mpts_pmt(1));
        m.psi(AV_PMT, &mpts_pmt(2));
        // Program 2's PMT changes; then program 1 leaves the PAT.
        let v1 = pmt(2, 1, 0x200, &[(0x1B, 0x200, &[])]);
        m.psi(AV_PMT, &v1);
        m.psi(0, &pat_of(1, &[(2, AV_PMT)]));
        m.psi(HEVC_PMT, &mpts_pmt(1)); // no longer listed: ignored
        m.psi(AV_PMT, &v1);
        let events = demux_all(&[&m.out]);
        assert!(problems(&events).is_empty(), "{events:?}");
        assert_eq!(
            programs_events(&events),
            [vec![1], vec![1, 2], vec![1, 2], vec![2]]
        );
        let lists: Vec<&Vec<TrackSet>> = events
            .iter()
            .filter_map(|e| match e {
                DemuxEvent::Programs(l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(lists[1][1].version, 0);
        assert_eq!(lists[2][1].version, 1);
        assert_eq!(lists[3][0].version, 1);
        // Program 2 is followed throughout: its Tracks follow its PMT.
        let t = tracks_events(&events);
        assert_eq!(
            t.iter()
                .map(|t| (t.program_number, t.version))
                .collect::<Vec<_>>(),
            [(2, 0), (2, 1)]
        );
    }

    #[test]
    fn single_program_stream_gets_one_programs_event_before_its_tracks() {
        let m = av_stream(3);
        let events = demux_all(&[&m.out]);
        let t = tracks_events(&events);
        assert_eq!(t.len(), 1);
        let at = events
            .iter()
            .position(|e| matches!(e, DemuxEvent::Tracks(_)))
            .unwrap();
        assert_eq!(events[at - 1], DemuxEvent::Programs(vec![t[0].clone()]));
        assert_eq!(programs_events(&events).len(), 1);
        // As soon as its PMT arrives (and the aligner's lookahead of two packets): before the
        // first PES, without waiting for a second PSI cycle.
        let mut d = Demuxer::new();
        let mut out = Vec::new();
        d.push(&m.out[..4 * PACKET_SIZE + 1], &mut out);
        assert_eq!(d.tracks(), Some(t[0]));
        assert!(pes_events(&out).is_empty());
        // The events without `Programs` are what they were before programs were listed.
        let rest: Vec<&DemuxEvent> = events
            .iter()
            .filter(|e| !matches!(e, DemuxEvent::Programs(_)))
            .collect();
        assert!(matches!(rest[0], DemuxEvent::Tracks(_)));
        assert_eq!(rest.len(), events.len() - 1);
    }

    #[test]
    fn late_pmt_does_not_flip_the_choice() {
        let mut m = Mux::default();
        // Program 2's PMT (H.264) is missing from the first two cycles.
        for _ in 0..2 {
            m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
            m.psi(HEVC_PMT, &mpts_pmt(1));
        }
        m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
        m.psi(HEVC_PMT, &mpts_pmt(1));
        m.psi(AV_PMT, &mpts_pmt(2));
        let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
        // Decided on the second sight of program 1's PMT, and kept.
        let t = tracks_events(&events);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].program_number, 1);
        assert_eq!(d.followed(), Some(1));
        assert_eq!(programs_events(&events), [vec![1], vec![1, 2]]);
        // With one sight only, the choice waits for the other PMT.
        let mut m = Mux::default();
        m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
        m.psi(HEVC_PMT, &mpts_pmt(1));
        m.psi(AV_PMT, &mpts_pmt(2));
        let (d, _) = demux_with(ProgramChoice::Auto, &m.out);
        assert_eq!(d.followed(), Some(2));
    }

    #[test]
    fn followed_program_leaving_the_pat() {
        let mut m = Mux::default();
        m.psi(0, &pat_of(0, &[(2, AV_PMT), (3, H264_PMT)]));
        m.psi(AV_PMT, &mpts_pmt(2));
        m.psi(H264_PMT, &mpts_pmt(3));
        m.psi(0, &pat_of(1, &[(3, H264_PMT)]));
        m.psi(H264_PMT, &mpts_pmt(3));
        m.pes(0x300, &pes_bytes(0xE0, Some(1), None, &[3; 50], true), &[]);

        // Auto: decided again among the programs left; program 3's PMT is known already.
        let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
        let t = tracks_events(&events);
        assert_eq!(
            t.iter().map(|t| t.program_number).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(d.followed(), Some(3));
        assert_eq!(pes_events(&events).len(), 1);
        assert_eq!(programs_events(&events), [vec![2], vec![2, 3], vec![3]]);

        // Number: nothing is followed any more; the last tracks stay until a PMT replaces them.
        let (mut d, events) = demux_with(ProgramChoice::Number(2), &m.out);
        assert_eq!(tracks_events(&events).len(), 1);
        assert_eq!(d.followed(), None);
        assert_eq!(d.tracks().map(|t| t.program_number), Some(2));
        assert!(pes_events(&events).is_empty());
        // It comes back: followed again, same tracks, no new Tracks event.
        let mut back = Mux {
            cc: m.cc.clone(),
            ..Mux::default()
        };
        back.psi(0, &pat_of(2, &[(2, AV_PMT), (3, H264_PMT)]));
        back.psi(AV_PMT, &mpts_pmt(2));
        let mut out = Vec::new();
        d.push(&back.out, &mut out);
        d.flush(&mut out);
        assert_eq!(d.followed(), Some(2));
        assert!(tracks_events(&out).is_empty());
    }

    #[test]
    fn reset_keeps_the_program_choice_and_transcoding() {
        let mut d = Demuxer::with_program(ProgramChoice::Number(3));
        d.set_transcodable_audio(true);
        let mut out = Vec::new();
        d.push(&mpts(1).out, &mut out);
        d.reset();
        assert_eq!((d.followed(), d.tracks()), (None, None));
        let mut m = Mux::default();
        m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (3, H264_PMT)]));
        m.psi(
            H264_PMT,
            &pmt(3, 0, 0x300, &[(0x1B, 0x300, &[]), (0x0F, 0x301, &[])]),
        );
        m.pes(0x301, &pes_bytes(0xC0, Some(1), None, &[1; 50], true), &[]);
        let mut out = Vec::new();
        d.push(&m.out, &mut out);
        assert_eq!(d.followed(), Some(3));
        assert_eq!(pes_events(&out).len(), 1, "the AAC track is reassembled");
    }
}
