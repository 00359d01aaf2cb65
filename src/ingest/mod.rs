//! Sources: everything that writes MPEG-TS into a stream's ring.
//!
//! HTTP PUT (in `http::ingest`), UDP unicast/multicast, file replay paced in real time, stdin.
//! Each holds a [`SourceGuard`](crate::stream::SourceGuard) while it writes; when it ends, the
//! stream's input closes and a later source continues the same stream.

pub mod replay;
pub mod rtp;
pub mod srt;
pub mod udp;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{info, warn};

use crate::stream::Stream;

/// Copy a byte stream (stdin, a pipe) into a stream's ring until it ends.
pub async fn pump_reader(stream: Arc<Stream>, mut r: impl AsyncRead + Unpin, what: &'static str) {
    let guard = stream.attach_source();
    info!(stream = %stream.name, source = what, "source attached");
    let mut buf = vec![0u8; 188 * 348];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => guard.write(&buf[..n]),
            Err(e) => {
                warn!(stream = %stream.name, source = what, error = %e, "read failed");
                break;
            }
        }
    }
    info!(stream = %stream.name, source = what, "source ended");
}
