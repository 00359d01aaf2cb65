//! The state every HTTP handler shares: the configuration, the stream registry, the WebRTC
//! engine, and the tasks the server runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::ServeArgs;
use crate::stream::Registry;
use crate::webrtc::Engine;

/// The server's tasks, in one `JoinSet`, so that one call stops them all.
#[derive(Clone, Default)]
pub struct Tasks(Arc<Mutex<tokio::task::JoinSet<()>>>);

impl Tasks {
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.0.lock();
        // Reap the finished ones as new ones come (a stream's media task ends with it).
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    /// Aborts every task.
    pub fn abort_all(&self) {
        self.0.lock().abort_all();
    }
}

/// Shared state of a running server.
pub struct App {
    pub cfg: ServeArgs,
    pub registry: Arc<Registry>,
    pub engine: Engine,
    /// Bytes per stream at the last rate sample (for bitrates in the API).
    rates: Mutex<std::collections::HashMap<u64, (u64, u64)>>,
    /// Streams whose pipeline command runs (by output name).
    pipelines: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Every task the server runs (sources, media tasks, pipelines, HTTP, housekeeping):
    /// aborted together when it stops.
    pub(crate) tasks: Tasks,
    /// Registered streams' own keys.
    pub keys: super::keys::KeyStore,
    /// The auth hook's recent answers.
    pub(crate) auth_cache: super::auth::HookCache,
    /// This node's cluster membership (`--cluster`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl App {
    /// Whether stream `name`'s pipeline command is running (so `name` is fed by it).
    pub fn pipeline_running(&self, name: &str) -> bool {
        self.pipelines.lock().contains(name)
    }

    /// Start the pipeline command for stream `name` once (it then runs for the stream's life).
    pub fn ensure_pipeline(&self, name: &str, input: &Arc<crate::stream::Stream>) {
        let Some(cmd) = &self.cfg.pipeline else {
            return;
        };
        if !self.pipelines.lock().insert(name.to_string()) {
            return;
        }
        let output = self.registry.get_or_create(name);
        let (cmd, input, running) = (cmd.clone(), input.clone(), self.pipelines.clone());
        self.tasks.spawn(async move {
            crate::pipeline::run(cmd, input, output.clone()).await;
            running.lock().remove(&output.name);
        });
    }

    /// Ingest bitrate in kbit/s of stream `id`, sampled once a second.
    pub fn ingest_kbps(&self, id: u64) -> u64 {
        self.rates.lock().get(&id).map_or(0, |r| r.1)
    }

    /// Samples every stream's ingest bitrate (once a second).
    pub(crate) fn sample_rates(&self) {
        let mut rates = self.rates.lock();
        for s in self.registry.list() {
            let bytes = s.stats.ingest_bytes.load(Ordering::Relaxed);
            let e = rates.entry(s.id).or_insert((bytes, 0));
            *e = (bytes, (bytes - e.0) * 8 / 1000);
        }
    }

    /// A stream was removed: forget its bitrate.
    pub(crate) fn forget_rate(&self, id: u64) {
        self.rates.lock().remove(&id);
    }

    pub(crate) fn new(
        cfg: ServeArgs,
        registry: Arc<Registry>,
        engine: Engine,
        tasks: Tasks,
        keys: super::keys::KeyStore,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Self {
        App {
            cfg,
            registry,
            engine,
            rates: Mutex::new(Default::default()),
            pipelines: Default::default(),
            tasks,
            keys,
            auth_cache: Default::default(),
            cluster,
        }
    }
}
