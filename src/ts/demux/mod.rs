//! The demuxer: continuity, PSI of every program, PES reassembly of the followed program.
//!
//! Packets come from the [`Aligner`] (any of the 188/192/204-byte layouts). The PAT and the
//! PMT of every program it lists are parsed, so a multi-program TS (MPTS) is listed whole
//! ([`DemuxEvent::Programs`]); one program is followed ([`ProgramChoice`]): its tracks are
//! [`DemuxEvent::Tracks`], and only its supported tracks are reassembled. Watching several
//! programs takes one `Demuxer` per program, each with its own [`ProgramChoice::Number`].

use std::ops::ControlFlow;

use super::align::{AlignProblem, Aligned, Aligner};
use super::event::{DemuxEvent, DemuxProblem};
use super::packet::{self, Header, Pid, PACKET_SIZE};
use super::pes::PesAssembler;
use super::psi::{self, SectionBuf, SectionStep, TrackSet};
use super::psi::{Codec, TrackInfo, SCTE35_CUES};
use super::scte35;

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
        // (MPEG-2 video exists only with FFmpeg's decoder built in: re-encoded to H.264.)
        .any(|t| {
            matches!(
                t.codec,
                Codec::H264 | Codec::Mpeg2Video | Codec::Opus { .. }
            )
        })
        || transcodable_audio(tracks).is_some()
}

/// Which audio track of the followed program viewers get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AudioChoice {
    /// The first Opus track (it needs no transcoding), else the first track the transcoder
    /// takes.
    #[default]
    Auto,
    /// This one of the program's audio tracks ([`TrackSet::audio_tracks`], from 0), when it
    /// is Opus or transcodable; no audio otherwise.
    Index(u8),
}

impl AudioChoice {
    /// The track it picks, with its place among the audio tracks.
    pub fn pick(self, tracks: &TrackSet) -> Option<(u8, &TrackInfo)> {
        let audio = || tracks.audio_tracks().enumerate().map(|(i, t)| (i as u8, t));
        match self {
            AudioChoice::Auto => audio()
                .find(|(_, t)| matches!(t.codec, Codec::Opus { .. }))
                .or_else(|| audio().find(|(_, t)| matches!(t.codec, Codec::Transcodable(_)))),
            AudioChoice::Index(n) => audio()
                .nth(usize::from(n))
                .filter(|(_, t)| matches!(t.codec, Codec::Opus { .. } | Codec::Transcodable(_))),
        }
    }

    /// The track it picks when that must be transcoded to Opus.
    pub fn transcoded(self, tracks: &TrackSet) -> Option<&TrackInfo> {
        self.pick(tracks)
            .map(|(_, t)| t)
            .filter(|t| matches!(t.codec, Codec::Transcodable(_)))
    }
}

/// The track the audio transcoder takes by default: the first AAC (ADTS/LATM) or MPEG-1/2
/// audio track of a program that has no Opus track.
pub fn transcodable_audio(tracks: &TrackSet) -> Option<Pid> {
    AudioChoice::Auto.transcoded(tracks).map(|t| t.pid)
}

#[derive(Debug)]
enum Role {
    Pat(SectionBuf),
    Pmt(SectionBuf),
    Es(PesAssembler),
    /// SCTE-35 splice information of the followed program.
    Cues(SectionBuf),
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
    /// Also reassemble the chosen audio track when it is AAC/MPEG audio (for the audio
    /// transcoder).
    transcodable_audio: bool,
    /// The audio track viewers get.
    audio: AudioChoice,
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Demuxer {
    /// Reassemble PES of the chosen audio track too when it must be transcoded (see
    /// [`AudioChoice::transcoded`]).
    pub fn set_transcodable_audio(&mut self, on: bool) {
        self.transcodable_audio = on;
    }

    /// Which audio track is chosen (the one reassembled for the transcoder).
    pub fn set_audio(&mut self, choice: AudioChoice) {
        self.audio = choice;
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
            audio: AudioChoice::Auto,
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

    /// Forgets all input state (a new source on the same stream); the program choice, the
    /// audio choice and the transcodable-audio setting are kept.
    pub fn reset(&mut self) {
        let (transcodable_audio, audio) = (self.transcodable_audio, self.audio);
        *self = Self::with_program(self.choice);
        self.transcodable_audio = transcodable_audio;
        self.audio = audio;
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
            if let Some(us) = super::mark::read_ingest_mark(pkt) {
                out.push(DemuxEvent::Ingested(us));
            }
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
                Role::Pat(sections) | Role::Pmt(sections) | Role::Cues(sections) => {
                    sections.reset()
                }
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
                (header.pusi, af.random_access, af.discontinuity, af.stuffed),
                payload,
                out,
            ),
            Role::Pat(sections) | Role::Pmt(sections) => {
                collect_sections(sections, pid, header.pusi, payload, &mut self.sections, out);
                self.handle_sections(pid, out);
            }
            Role::Cues(sections) => {
                collect_sections(sections, pid, header.pusi, payload, &mut self.sections, out);
                self.handle_cues(pid, out);
            }
        }
    }

    fn handle_sections(&mut self, pid: Pid, out: &mut Vec<DemuxEvent>) {
        let sections = std::mem::take(&mut self.sections);
        for section in split_sections(&sections) {
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

    /// SCTE-35 sections: each a cue, or a problem (another table on the PID is skipped).
    fn handle_cues(&mut self, pid: Pid, out: &mut Vec<DemuxEvent>) {
        for section in split_sections(&self.sections) {
            if section[0] != scte35::TABLE_ID {
                continue;
            }
            match scte35::parse(section) {
                Ok(cue) => out.push(DemuxEvent::Cue {
                    pid,
                    cue: Box::new(cue),
                }),
                Err(reason) => Self::problem(out, DemuxProblem::BadPsi { pid, reason }),
            }
        }
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
        let is_cues = |t: &TrackInfo| t.codec == (Codec::Data { what: SCTE35_CUES });
        let cue_pids: Vec<Pid> = tracks
            .tracks
            .iter()
            .filter(|t| is_cues(t))
            .map(|t| t.pid)
            .collect();
        self.pids
            .retain(|s| !matches!(s.role, Role::Cues(_)) || cue_pids.contains(&s.pid));
        for &pid in &cue_pids {
            if !self.pids.iter().any(|s| s.pid == pid) {
                self.pids
                    .push(PidState::new(pid, Role::Cues(SectionBuf::private())));
            }
        }
        let transcoded =
            (self.audio.transcoded(&tracks).map(|t| t.pid)).filter(|_| self.transcodable_audio);
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

/// The sections a PID's payload holds back to back (each at least its 3-byte head; the last
/// cut short where the bytes end).
fn split_sections(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if rest.len() < 3 {
            return None;
        }
        let len = (3 + (usize::from(rest[1] & 0x0F) << 8 | usize::from(rest[2]))).min(rest.len());
        let (section, tail) = rest.split_at(len);
        rest = tail;
        Some(section)
    })
}

#[cfg(test)]
mod tests;
