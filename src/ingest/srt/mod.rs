//! SRT (Secure Reliable Transport): MPEG-TS between sites over lossy networks, as ffmpeg, OBS,
//! GStreamer, hardware encoders and peer servers send it.
//!
//! ```text
//!  caller ──SRT──► --srt-listen ──► accept thread ──► Gate (auth, claim, one source per name)
//!                  (libsrt: ARQ,                         │
//!                   AES, TSBPD)                          └─► pump thread: recv ──► SourceGuard
//!                                                             stats each second ─► /streams/{s}
//!  caller ◄─SRT── (m=request) ◄── send thread: ring ─► join point (PAT, PMT, keyframe) ─► 7×188
//! ```
//!
//! libsrt does the protocol on its own threads (`ffi.rs`); our side of each connection is a
//! blocking receive loop on a thread of its own, which is what libsrt's API is made for. What
//! a publisher may do is decided by the server through [`Gate`] (the same rules as HTTP), so
//! this module knows nothing of HTTP or tokens.

pub mod ffi;
pub mod listen;
pub mod pull;
pub mod streamid;
pub mod url;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

pub use streamid::{Mode, StreamId};
pub use url::SrtUrl;

use std::sync::Arc;

use crate::stream::{SourceGuard, Stream};

/// Decides whether a caller may publish, and hands it its stream's source guard.
pub trait Gate: Send + Sync + 'static {
    /// Checks `id` (name, token) from `peer` like an HTTP publisher; `Err` says why not (for
    /// the log line).
    fn publish(
        &self,
        id: StreamId,
        peer: Option<SocketAddr>,
    ) -> Pin<Box<dyn Future<Output = Result<SourceGuard, String>> + Send + '_>>;

    /// Checks `id` from `peer` like a `GET /streams/{s}.ts` reader.
    fn read(
        &self,
        id: StreamId,
        peer: Option<SocketAddr>,
    ) -> Pin<Box<dyn Future<Output = Result<Reader, String>> + Send + '_>>;

    /// Stream `name`'s own passphrase, if it was registered with one. Called on libsrt's
    /// thread during a caller's handshake: it may block, briefly (a bounded key lookup).
    fn passphrase(&self, name: &str) -> Option<String>;
}

/// A caller allowed to read a stream.
pub struct Reader {
    pub stream: Arc<Stream>,
    /// Held for as long as it reads (it counts against `--max-ts-readers`).
    pub slot: Box<dyn Send>,
}
