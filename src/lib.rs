//! tsbridge: an MPEG-TS to WebRTC (WHEP) playback bridge.
//!
//! ```text
//!  sources (ingest/)             per stream (stream/, media.rs)                         viewers (webrtc/)
//!  PUT /ingest/{s}  ─┐
//!  UDP / multicast  ─┤  closable   align + demux    PMT-driven     access units,       WHEP sessions
//!  file replay      ─┼─► TS ring ──► (ts/)      ──► tracks     ──► 64-bit time    ──► (str0m Rtc each,
//!  stdin            ─┘  (ring.rs)                  (TrackSet)      (codec/, time.rs)   one UDP socket)
//!                          │                          │
//!                          └─► GET /streams/{s}.ts    └─► "ready" wakes waiting WHEP POSTs (http/)
//! ```
//!
//! The TS/codec/time core (`ts`, `codec`, `time`) is sans-IO: bytes and explicit times in,
//! events out. Everything with sockets, tasks and clocks lives in `ingest`, `stream`, `media`,
//! `webrtc` and `http`.

pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod http;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod pipeline;
pub mod probe;
pub mod rtp;
pub mod server;
pub mod stream;
pub mod time;
pub mod ts;
pub mod webrtc;
