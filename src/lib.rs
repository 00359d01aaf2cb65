//! tsbridge: an MPEG-TS to WebRTC (WHEP) playback bridge.
//!
//! ```text
//!  sources (ingest/)          per stream (stream/, media/)                            viewers (webrtc/)
//!  PUT /ingest/{s}  ─┐
//!  UDP / multicast  ─┤ closable  align + demux     PMT-driven    access units, time,   WHEP sessions
//!  file replay      ─┼─► TS ring ─► (ts/)      ──► tracks    ──► RTP payloads once ──► (str0m Rtc each,
//!  stdin, WHIP      ─┘ (ring.rs)   any program   (TrackSet)    (codec/, time, rtp/)  one UDP port)
//!                         │                          │
//!                         └─► GET /streams/{s}.ts    └─► "ready" wakes waiting WHEP POSTs (http/)
//! ```
//!
//! The core (`ts`, `codec`, `time`, `rtp`, and the media task's `media::MediaState`) is
//! sans-IO: bytes and explicit times in, events out. Everything with sockets, tasks and clocks
//! lives in `ingest`, `stream`, `media::run`, `webrtc`, `http` and `server`; imports run one
//! way along that flow (no cycles).

pub mod cli;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod events;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod pipeline;
pub mod probe;
pub mod rtp;
pub mod secret;
pub mod server;
pub mod stream;
pub mod tasks;
#[cfg(test)]
mod testdata;
pub mod time;
pub mod ts;
pub mod wallclock;
pub mod webrtc;
