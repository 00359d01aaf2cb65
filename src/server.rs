//! Wires the pieces together: registry + media tasks, the WebRTC engine, sources, HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::ServeArgs;
use crate::ingest;
use crate::media;
use crate::stream::frame::FrameSink;
use crate::stream::Registry;
use crate::webrtc::{Engine, EngineOptions};

/// Shared state of a running server.
pub struct App {
    pub cfg: ServeArgs,
    pub registry: Arc<Registry>,
    pub engine: Engine,
    /// Bytes per stream at the last rate sample (for bitrates in the API).
    rates: Mutex<std::collections::HashMap<u64, (u64, u64)>>,
    /// Streams whose pipeline command runs (by output name).
    pipelines: Arc<Mutex<std::collections::HashSet<String>>>,
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
        tokio::spawn(async move {
            crate::pipeline::run(cmd, input, output.clone()).await;
            running.lock().remove(&output.name);
        });
    }

    /// Ingest bitrate in kbit/s of stream `id`, sampled once a second.
    pub fn ingest_kbps(&self, id: u64) -> u64 {
        self.rates.lock().get(&id).map_or(0, |r| r.1)
    }
}

/// A running server (what `serve` runs, and what tests start on 127.0.0.1:0).
pub struct Server {
    pub http_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub app: Arc<App>,
}

impl Server {
    pub async fn start(mut cfg: ServeArgs) -> std::io::Result<Server> {
        if cfg.demo {
            cfg.replays.push(crate::config::Named {
                name: "demo".into(),
                value: demo_file(),
            });
        }
        let engine = Engine::start(
            cfg.ice_udp,
            &cfg.ice_hosts,
            EngineOptions {
                ice_timeout: cfg.ice_timeout,
                threads: cfg.media_threads,
                direct_send: !cfg.no_direct_send,
                backlog_rate: (cfg.backlog_rate * 1e6 / 8.0) as u64,
            },
        )
        .await?;
        let sink: Arc<dyn FrameSink> = Arc::new(engine.clone());
        let transcode = cfg.audio_transcode == crate::config::AudioTranscode::Auto;
        let registry = Arc::new(Registry::new(cfg.ring_bytes, move |stream| {
            tokio::spawn(media::run(stream.clone(), sink.clone(), transcode));
        }));
        let listener = TcpListener::bind(cfg.listen).await?;
        let http_addr = listener.local_addr()?;
        let app = Arc::new(App {
            cfg: cfg.clone(),
            registry: registry.clone(),
            engine: engine.clone(),
            rates: Mutex::new(Default::default()),
            pipelines: Default::default(),
        });

        for r in &cfg.replays {
            let stream = registry.get_or_create(&r.name);
            tokio::spawn(ingest::replay::serve_file(stream, r.value.clone()));
        }
        for u in &cfg.udps {
            let stream = registry.get_or_create(&u.name);
            let addr = u.value;
            tokio::spawn(async move {
                if let Err(e) = ingest::udp::run(stream, addr).await {
                    warn!(%addr, error = %e, "UDP source failed");
                }
            });
        }
        if let Some(name) = &cfg.stdin {
            let stream = registry.get_or_create(name);
            tokio::spawn(ingest::pump_reader(stream, tokio::io::stdin(), "stdin"));
        }
        tokio::spawn(housekeeping(app.clone()));

        let router = crate::http::router(app.clone());
        let limits = crate::http::serve::HttpLimits::from(&cfg);
        tokio::spawn(crate::http::serve::serve(listener, router, limits));
        info!(http = %http_addr, "tsbridge listening");
        Ok(Server {
            http_addr,
            udp_addr: engine.local_addr(),
            app,
        })
    }
}

/// The demo file: next to the binary's source tree (cargo run) or in the working directory.
fn demo_file() -> PathBuf {
    let in_tree = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/h264_opus.ts");
    if in_tree.exists() {
        in_tree
    } else {
        PathBuf::from("testdata/h264_opus.ts")
    }
}

/// Once a second: bitrates. Every 10 s: drop streams nobody uses.
async fn housekeeping(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        {
            let mut rates = app.rates.lock();
            for s in app.registry.list() {
                let bytes = s.stats.ingest_bytes.load(Ordering::Relaxed);
                let e = rates.entry(s.id).or_insert((bytes, 0));
                *e = (bytes, (bytes - e.0) * 8 / 1000);
            }
        }
        // Viewers of a stream whose source ended and did not come back in time end too.
        // (The programs of an MPTS that viewers watch on their own share their stream's source.)
        for s in app
            .registry
            .list()
            .into_iter()
            .flat_map(|s| std::iter::once(s.clone()).chain(s.programs()))
        {
            if s.ended_for().is_some_and(|t| t > app.cfg.source_grace)
                && s.stats.viewers.load(Ordering::Relaxed) > 0
            {
                info!(stream = %s.name, "source gone for longer than --source-grace; ending its viewers");
                app.engine.end_viewers(&s);
            }
        }
        if n.is_multiple_of(10) {
            for s in app.registry.sweep(Duration::from_secs(60)) {
                app.rates.lock().remove(&s.id);
                info!(stream = %s.name, "idle stream removed");
            }
        }
    }
}
