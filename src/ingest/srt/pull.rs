//! `--srt-pull NAME=srt://…`: tsbridge calls a remote SRT listener (an encoder, a peer server,
//! `srt-live-transmit`) and takes what it sends as stream NAME's source; when the connection
//! fails or ends, it calls again with backoff (0.5 s doubling to 5 s, back to 0.5 s after a
//! connection that lasted). Each change of state is logged once: repeated failures for the
//! same reason stay quiet until something changes.
//!
//! In a cluster the name is claimed before each call, as an HTTP or SRT publisher's is
//! ([`Claim`], handed over by the server: this module knows nothing of the cluster): while
//! another node has the name's source, the pull does not call, and asks again with its
//! backoff until the name is free.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
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

/// Claims a stream name for a source on this node before the pull calls: `None` when this
/// node may take the source (claimed, no cluster, or the cluster out of reach), `Some(url)`
/// of the node that has it.
pub type Claim =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// Pulls `url` into `stream` forever (until the task is dropped); `claim`, in a cluster, is
/// asked before each call and again once connected, just before the source attaches (a
/// claim with no source behind it is released by the cluster's tick while a call waits).
pub async fn run(stream: Arc<Stream>, url: SrtUrl, latency: Duration, claim: Option<Claim>) {
    let mut retry = FIRST_RETRY;
    let mut last_failure: Option<String> = None;
    // The node that had the name when the pull last asked (logged once per owner).
    let mut held_by: Option<String> = None;
    info!(stream = %stream.name, url = %url.authority, "SRT pull: calling");
    loop {
        let owner = match &claim {
            Some(c) => c(stream.name.clone()).await,
            None => None,
        };
        if let Some(owner) = owner {
            held(&mut held_by, owner, &stream, &url);
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(MAX_RETRY);
            continue;
        }
        if held_by.take().is_some() {
            info!(stream = %stream.name, url = %url.authority,
                "stream {} is free in the cluster; --srt-pull calls", stream.name);
        }
        let started = Instant::now();
        let (s, u) = (stream.clone(), url.clone());
        let stop = StopOnDrop::default();
        let flag = stop.0.clone();
        let outcome = async {
            let (sock, addr) = tokio::task::spawn_blocking(move || connect(&s, &u, latency))
                .await
                .map_err(|e| format!("thread failed: {e}"))??;
            // The claim again, now that the call is up: another node's source may have
            // started while it was being made.
            if let Some(c) = &claim {
                if let Some(owner) = c(stream.name.clone()).await {
                    return Ok(Err(owner));
                }
            }
            let guard = stream.attach_source();
            let peer = addr.to_string();
            tokio::task::spawn_blocking(move || pump(sock, guard, peer, flag))
                .await
                .map(Ok)
                .map_err(|e| format!("thread failed: {e}"))
        }
        .await;
        drop(stop);
        let failure = match outcome {
            Ok(Ok(why)) => {
                info!(stream = %stream.name, url = %url.authority,
                    "SRT pull: connection ended ({why}); calling again");
                None
            }
            Ok(Err(owner)) => {
                held(&mut held_by, owner, &stream, &url);
                None
            }
            Err(e) => Some(e),
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

/// Another node has the stream's name (its URL: `owner`): logged when that is news.
fn held(held_by: &mut Option<String>, owner: String, stream: &Stream, url: &SrtUrl) {
    if held_by.as_ref() != Some(&owner) {
        info!(stream = %stream.name, url = %url.authority,
            "stream {} is another node's ({owner}); --srt-pull waits", stream.name);
    }
    *held_by = Some(owner);
}

/// One call: the connected socket and the listener's address, or why it did not come up.
fn connect(
    stream: &Stream,
    url: &SrtUrl,
    latency: Duration,
) -> Result<(Socket, SocketAddr), String> {
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
    Ok((sock, addr))
}
