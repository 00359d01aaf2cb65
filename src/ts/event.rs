//! What the demuxer reports: its events and the defects of its input, as data (each defect
//! with a stable cause key, so logging once per cause and metrics need no string matching).
//! Shared by the demuxer and the PES assembler without either importing the other; the
//! [`Pes`] they hand on is here too, so the flow runs one way: `packet ← psi ← event ← pes`.

use bytes::Bytes;

use super::packet::Pid;
use super::psi::TrackSet;
use super::scte35::Cue;

/// A complete PES packet of a supported track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pes {
    pub pid: Pid,
    /// 33-bit 90 kHz presentation time stamp.
    pub pts: Option<u64>,
    /// 33-bit 90 kHz decoding time stamp, when it differs from the PTS.
    pub dts: Option<u64>,
    /// random_access_indicator of the packet that started this PES.
    pub random_access: bool,
    /// This PES follows a discontinuity: a discontinuity_indicator on its first packet or since
    /// the previous PES of the PID, or lost/dropped data before it.
    pub discontinuity: bool,
    /// The PES payload: elementary stream bytes, PES header stripped.
    pub data: Bytes,
}

impl<'a> From<&'a Pes> for crate::codec::EsUnit<'a> {
    fn from(pes: &'a Pes) -> Self {
        crate::codec::EsUnit {
            data: &pes.data,
            pts: pes.pts,
            dts: pes.dts,
        }
    }
}

/// Largest PES the demuxer reassembles (a 4K intra frame fits comfortably).
pub const MAX_PES_SIZE: usize = 4 << 20;

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
    /// An SCTE-35 splice_info_section on one of the followed program's cue PIDs.
    Cue { pid: Pid, cue: Box<Cue> },
    /// An ingest mark (see [`super::mark`]): the bytes after it reached the cluster's origin
    /// at this many µs since the Unix epoch.
    Ingested(u64),
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
    #[error("PID {pid}: a PES went on after the stuffed packet that seemed to end it; one picture went out cut, and this PID's PES are now emitted at the next unit start")]
    CutEarly { pid: Pid },
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
            Self::CutEarly { .. } => "pes_cut_early",
        }
    }
}
