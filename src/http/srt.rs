//! The server's rules for SRT publishers: the same checks, in the same order, as
//! `PUT /ingest/{s}` (see `ingest.rs`), with the token from the caller's stream id and the
//! auth hook told `protocol: "srt"`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::auth::{self, Action, Caller, Protocol};
use super::{App, AppState};
use crate::ingest::srt::{Gate, StreamId};
use crate::stream::SourceGuard;

/// [`Gate`] on the server's state.
pub struct SrtGate(pub AppState);

impl Gate for SrtGate {
    fn publish(
        &self,
        id: StreamId,
        peer: Option<SocketAddr>,
    ) -> Pin<Box<dyn Future<Output = Result<SourceGuard, String>> + Send + '_>> {
        Box::pin(publish(self.0.clone(), id, peer))
    }
}

async fn publish(
    app: Arc<App>,
    id: StreamId,
    peer: Option<SocketAddr>,
) -> Result<SourceGuard, String> {
    let name = id.name.as_str();
    super::session::publishable(&app, name).map_err(|e| e.to_string())?;
    let caller = Caller {
        token: id.token.clone(),
        ip: peer.map(|p| p.ip()),
        query: None,
        scheme: "srt",
        host: None,
    };
    auth::check(&app, &caller, Action::Publish, Protocol::Srt, Some(name))
        .await
        .map_err(|_| {
            "wrong or missing token: put it in the stream id (#!::r=NAME,m=publish,s=TOKEN)"
                .to_owned()
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
