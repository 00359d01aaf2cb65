//! The state every HTTP handler shares: the configuration, the stream registry, the WebRTC
//! engine, the keys, the pipelines and the cluster membership. The tasks behind them belong
//! to the server (`server.rs`), which hands these over.

use std::sync::Arc;

use crate::config::ServeArgs;
use crate::limits::PerIp;
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
    /// What one client address may hold (`--max-per-ip`; its connections are counted by the
    /// accept loop).
    pub per_ip: PerIpLimits,
}

/// The per-address caps of the handlers (`--max-per-ip`), by the client's address as
/// `Caller::ip` has it (behind a trusted proxy: from `X-Forwarded-For`).
pub struct PerIpLimits {
    /// WHEP POSTs waiting for their stream.
    pub waiting: PerIp,
    /// WebRTC sessions (viewers and publishers); a session holds its slot until it ends.
    pub sessions: PerIp,
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
            per_ip: PerIpLimits {
                waiting: PerIp::new(cfg.max_per_ip, "waiting WHEP requests", &[]),
                sessions: PerIp::new(cfg.max_per_ip, "WebRTC sessions", &[]),
            },
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
