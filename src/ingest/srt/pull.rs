//! `--srt-pull NAME=srt://…`: tsbridge calls a remote SRT listener (an encoder, a peer server,
//! `srt-live-transmit`) and takes what it sends as stream NAME's source; when the connection
//! fails or ends, it calls again with backoff (0.5 s doubling to 5 s, back to 0.5 s after a
//! connection that lasted). Each change of state is logged once: repeated failures for the
//! same reason stay quiet until something changes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::ffi::{self, Socket};
use super::listen::{pump, StopOnDrop};
use super::url::SrtUrl;
use crate::stream::Stream;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the backoff.
const LASTED: Duration = Duration::from_secs(10);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Pulls `url` into `stream` forever (until the task is dropped).
pub async fn run(stream: Arc<Stream>, url: SrtUrl, latency: Duration) {
    let mut retry = FIRST_RETRY;
    let mut last_failure: Option<String> = None;
    info!(stream = %stream.name, url = %url.authority, "SRT pull: calling");
    loop {
        let started = Instant::now();
        let (s, u) = (stream.clone(), url.clone());
        let stop = StopOnDrop::default();
        let flag = stop.0.clone();
        let outcome =
            tokio::task::spawn_blocking(move || connect_and_pump(s, &u, latency, flag)).await;
        drop(stop);
        let failure = match outcome {
            Ok(Ok(why)) => {
                info!(stream = %stream.name, url = %url.authority,
                    "SRT pull: connection ended ({why}); calling again");
                None
            }
            Ok(Err(e)) => Some(e),
            Err(e) => Some(format!("thread failed: {e}")),
        };
        if started.elapsed() >= LASTED {
            retry = FIRST_RETRY;
        }
        if let Some(f) = &failure {
            if last_failure.as_ref() != Some(f) {
                warn!(stream = %stream.name, url = %url.authority,
                    "SRT pull: cannot connect ({f}); retrying every {:?} up to {MAX_RETRY:?}, \
                     logged again when this changes", retry);
            }
        }
        last_failure = failure;
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// One attempt: connects, then receives until the connection ends. `Ok`: it was up (why it
/// ended); `Err`: it never came up.
fn connect_and_pump(
    stream: Arc<Stream>,
    url: &SrtUrl,
    latency: Duration,
    stop: Arc<AtomicBool>,
) -> Result<String, String> {
    let addr: SocketAddr = url
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {e}", url.authority))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", url.authority))?;
    let sock = Socket::new().map_err(|e| e.to_string())?;
    let set = |r: std::io::Result<()>| r.map_err(|e| e.to_string());
    set(sock.set_latency(url.latency.unwrap_or(latency)))?;
    set(sock.set_int(ffi::SRTO_CONNTIMEO, CONNECT_TIMEOUT.as_millis() as i32))?;
    if let Some(p) = &url.passphrase {
        set(sock.set_str(ffi::SRTO_PASSPHRASE, p))?;
    }
    if let Some(id) = &url.stream_id {
        set(sock.set_str(ffi::SRTO_STREAMID, id))?;
    }
    sock.connect(addr).map_err(|e| e.to_string())?;
    info!(stream = %stream.name, %addr, "SRT pull: connected");
    let guard = stream.attach_source();
    Ok(pump(sock, guard, addr.to_string(), stop))
}
