//! The server's rules for SRT callers: the same checks, in the same order, as
//! `PUT /ingest/{s}` (publishers, see `ingest.rs`) and `GET /streams/{s}.ts` (readers), with
//! the token from the caller's stream id and the auth hook told `protocol: "srt"`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::auth::{self, Action, Caller, Protocol};
use super::{App, AppState};
use crate::ingest::srt::{Gate, Reader, StreamId};
use crate::stream::SourceGuard;

/// How long a caller's handshake may wait for its stream's keys (Redis in a cluster).
const KEY_LOOKUP: std::time::Duration = std::time::Duration::from_millis(300);

/// [`Gate`] on the server's state.
pub struct SrtGate {
    app: AppState,
    /// For the passphrase lookup, which libsrt's thread (outside the runtime) waits for.
    rt: tokio::runtime::Handle,
}

impl SrtGate {
    /// Made inside the server's runtime.
    pub fn new(app: AppState) -> Self {
        SrtGate {
            app,
            rt: tokio::runtime::Handle::current(),
        }
    }
}

impl Gate for SrtGate {
    fn passphrase(&self, name: &str) -> Option<String> {
        let app = &self.app;
        let lookup = async { tokio::time::timeout(KEY_LOOKUP, app.keys.get(name)).await };
        match self.rt.block_on(lookup) {
            Ok(Ok(keys)) => keys.and_then(|k| k.srt_passphrase),
            Ok(Err(e)) => {
                tracing::warn!(stream = %name, error = %e, "SRT: the stream's keys are out of reach; the listener's passphrase applies");
                None
            }
            Err(_) => {
                tracing::warn!(stream = %name, "SRT: the stream's keys took over {KEY_LOOKUP:?}; the listener's passphrase applies");
                None
            }
        }
    }

    fn publish(
        &self,
        id: StreamId,
        peer: Option<SocketAddr>,
    ) -> Pin<Box<dyn Future<Output = Result<SourceGuard, String>> + Send + '_>> {
        Box::pin(publish(self.app.clone(), id, peer))
    }

    fn read(
        &self,
        id: StreamId,
        peer: Option<SocketAddr>,
    ) -> Pin<Box<dyn Future<Output = Result<Reader, String>> + Send + '_>> {
        Box::pin(read(self.app.clone(), id, peer))
    }
}

fn caller(id: &StreamId, peer: Option<SocketAddr>) -> Caller {
    Caller {
        token: id.token.clone(),
        ip: peer.map(|p| p.ip()),
        query: None,
        scheme: "srt",
        host: None,
    }
}

/// As `GET /streams/{s}.ts`: the view rules, an existing stream, `--max-ts-readers`.
async fn read(app: Arc<App>, id: StreamId, peer: Option<SocketAddr>) -> Result<Reader, String> {
    let name = id.name.as_str();
    auth::check(
        &app,
        &caller(&id, peer),
        Action::View,
        Protocol::Srt,
        Some(name),
    )
    .await
    .map_err(|_| {
        "wrong or missing token: put it in the stream id (#!::r=NAME,m=request,s=TOKEN)".to_owned()
    })?;
    let stream = app
        .registry
        .get(name)
        .ok_or_else(|| format!("no stream {name:?}"))?;
    let max = app.cfg.max_ts_readers;
    let slot = super::api::TsReader::new(stream.clone(), max).ok_or_else(|| {
        format!("stream {name:?} has {max} TS readers, the most allowed (--max-ts-readers)")
    })?;
    Ok(Reader {
        stream,
        slot: Box::new(slot),
    })
}

async fn publish(
    app: Arc<App>,
    id: StreamId,
    peer: Option<SocketAddr>,
) -> Result<SourceGuard, String> {
    let name = id.name.as_str();
    super::session::publishable(&app, name).map_err(|e| e.to_string())?;
    auth::check(
        &app,
        &caller(&id, peer),
        Action::Publish,
        Protocol::Srt,
        Some(name),
    )
    .await
    .map_err(|_| {
        "wrong or missing token: put it in the stream id (#!::r=NAME,m=publish,s=TOKEN)".to_owned()
    })?;
    app.registry.has_room_for(name).map_err(|e| e.to_string())?;
    super::session::claim(&app, name)
        .await
        .map_err(|e| e.to_string())?;
    let stream = app
        .registry
        .try_get_or_create(name)
        .map_err(|e| e.to_string())?;
    if stream.has_source() {
        return Err(format!(
            "stream {name:?} already has a source; stop it first or use another name"
        ));
    }
    Ok(stream.attach_source())
}
