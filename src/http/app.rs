//! The state every HTTP handler shares: the configuration, the stream registry, the WebRTC
//! engine, the keys, the pipelines and the cluster membership. The tasks behind them belong
//! to the server (`server.rs`), which hands these over.

use std::sync::Arc;

use crate::config::ServeArgs;
use crate::pipeline::Pipelines;
use crate::stream::Registry;
use crate::webrtc::Engine;

/// Shared state of a running server's HTTP side.
pub struct App {
    pub cfg: ServeArgs,
    pub registry: Arc<Registry>,
    pub engine: Engine,
    /// Registered streams' own keys.
    pub keys: crate::keys::KeyStore,
    /// The auth hook's recent answers.
    pub(crate) auth_cache: super::auth::HookCache,
    /// WHIP streams' pipeline commands (`--pipeline`).
    pub pipelines: Pipelines,
    /// This node's cluster membership (`--cluster`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl App {
    pub(crate) fn new(
        cfg: ServeArgs,
        registry: Arc<Registry>,
        engine: Engine,
        keys: crate::keys::KeyStore,
        pipelines: Pipelines,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Self {
        App {
            cfg,
            registry,
            engine,
            keys,
            auth_cache: Default::default(),
            pipelines,
            cluster,
        }
    }
}
