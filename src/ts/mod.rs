//! MPEG-TS demuxing, sans-IO: bytes in, [`DemuxEvent`]s out.
//!
//! ```text
//! bytes ─► align/resync ─► packet header, adaptation field ─► continuity per PID
//!  188/192/204  (align.rs)      (packet.rs)                       │   (demux.rs)
//!                          PAT ─► PMT of every program ─► TrackSets ◄─┤ (psi.rs)
//!                          PES of the followed program's tracks ◄─────┘ (pes.rs)
//! ```
//!
//! Packets are found in one place, [`Aligner`], for every consumer of TS bytes (demuxer, the
//! join point of a TS pull, the file replayer), whatever the packet stride. One [`Demuxer`]
//! lists every program of the PAT and follows one ([`ProgramChoice`]). Tracks are discovered
//! from the PMT alone; H.264, H.265 and Opus tracks are reassembled, so is the audio track viewers
//! get when it must be transcoded ([`AudioChoice`]); the others are listed with what they are
//! ([`Codec::Data`]) or why they do not play ([`Codec::Unsupported`]).

#![forbid(unsafe_code)]

mod align;
mod demux;
mod event;
pub mod mark;
pub mod mux;
pub(crate) mod packet;
pub(crate) mod pes;
mod psi;
pub mod scte35;
pub mod start;
#[cfg(test)]
mod testdata;
#[cfg(test)]
pub(crate) mod testutil;
mod track;

pub use align::{AlignProblem, Aligned, Aligner, Stride};
pub use demux::{plays_everywhere, transcodable_audio, AudioChoice, Demuxer, ProgramChoice};
pub use event::{DemuxEvent, DemuxProblem, Pes, MAX_PES_SIZE};
pub use mux::{MuxConfig, MuxError, Muxer};
pub use packet::{Pid, PACKET_SIZE, SYNC_BYTE};
pub use psi::{crc32_mpeg2, Codec, StreamType, TrackInfo, TrackSet};
pub use track::{Language, TrackKind};
