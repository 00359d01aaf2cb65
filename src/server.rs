//! The server shell: wires the pieces together (registry + media tasks, the WebRTC engine,
//! sources, HTTP, housekeeping), owns every task, and stops them all on one signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{ServeArgs, Transcode};
use crate::http::App;
use crate::ingest;
use crate::media;
use crate::stream::frame::FrameSink;
use crate::stream::Registry;
use crate::tasks::Tasks;
use crate::webrtc::{Engine, EngineOptions};

/// A running server (what `serve` runs, and what tests start on 127.0.0.1:0). Dropping it
/// stops its tasks; [`Server::shutdown`] first says goodbye to every peer.
pub struct Server {
    pub http_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub app: Arc<App>,
    /// Every task the server runs: stopped together.
    tasks: Tasks,
    /// Tells the HTTP side to stop accepting and drain.
    stop: tokio::sync::watch::Sender<bool>,
    /// The HTTP accept loop, awaited while it drains.
    http: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds `cfg.listen` and starts.
    pub async fn start(cfg: ServeArgs) -> std::io::Result<Server> {
        let listener = TcpListener::bind(cfg.listen).await?;
        Self::start_on(listener, cfg).await
    }

    /// Starts on a bound HTTP listener.
    pub async fn start_on(listener: TcpListener, mut cfg: ServeArgs) -> std::io::Result<Server> {
        if cfg.demo {
            cfg.replays.push(crate::config::Named {
                name: "demo".into(),
                value: demo_file(),
            });
        }
        let tasks = Tasks::default();
        let events = match &cfg.event_hook {
            Some(url) => {
                let (sink, deliver) = crate::events::EventSink::new(url.clone());
                tasks.spawn(deliver);
                sink
            }
            None => crate::events::EventSink::default(),
        };
        let engine = Engine::start(
            cfg.ice_udp,
            &cfg.ice_hosts,
            EngineOptions {
                ice_timeout: cfg.ice_timeout,
                threads: cfg.media_threads,
                direct_send: !cfg.no_direct_send,
                backlog_rate: (cfg.backlog_rate * 1e6 / 8.0) as u64,
                playout_delay: cfg.playout_delay,
                whip_jitter: cfg.whip_jitter_ms,
            },
            events.clone(),
        )
        .await?;
        let sink: Arc<dyn FrameSink> = Arc::new(engine.clone());
        let options = media::MediaOptions {
            audio_transcode: cfg.audio_transcode == Transcode::Auto,
            video_transcode: cfg.video_transcode == Transcode::Auto,
            gop_cache_max: cfg.gop_cache_max,
        };
        let media_tasks = tasks.clone();
        let registry = Arc::new(Registry::new(
            cfg.ring_bytes,
            cfg.max_streams,
            move |stream| {
                if events.enabled() {
                    stream.on_status_change(stream_events(events.clone()));
                }
                media_tasks.spawn(media::run(stream.clone(), sink.clone(), options));
            },
        ));
        let http_addr = listener.local_addr()?;
        let file_keys =
            crate::keys::FileKeys::open(cfg.data_dir.as_deref()).map_err(std::io::Error::other)?;
        let (cluster, keys) = start_cluster(&cfg, &registry, &engine, &tasks, file_keys)?;
        let pipelines =
            crate::pipeline::Pipelines::new(cfg.pipeline.clone(), registry.clone(), tasks.clone());
        let app = Arc::new(App::new(
            cfg.clone(),
            registry.clone(),
            engine.clone(),
            keys,
            pipelines,
            cluster,
        ));

        start_sources(&cfg, &app, &tasks)?;
        tasks.spawn(housekeeping(app.clone()));

        let router = crate::http::router(app.clone());
        let limits = crate::http::serve::HttpLimits::from(&cfg);
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::http::serve::tls_acceptor(cert, key).map_err(std::io::Error::other)?)
            }
            _ => None,
        };
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let http = tokio::spawn(crate::http::serve::serve(
            listener, router, limits, tls, stopping,
        ));
        info!(http = %http_addr, "tsbridge listening");
        Ok(Server {
            http_addr,
            udp_addr: engine.local_addr(),
            app,
            tasks,
            stop,
            http: Some(http),
        })
    }

    /// Stops in order, each step bounded in time: a cluster node leaves the cluster (new
    /// viewers go elsewhere, its viewers' event streams send them on); HTTP stops accepting
    /// and lets requests in flight finish; every session is closed (RTCP BYE, DTLS
    /// close_notify); the event streams and other long responses end with them; then every
    /// task stops: sources, media tasks, pipeline commands (killed and reaped).
    pub async fn shutdown(mut self) {
        if let Some(c) = &self.app.cluster {
            c.leave().await;
            // Viewers' event streams send them to another node (`reconnect`) within a tick.
            if self.app.engine.live_sessions() > 0 {
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
        }
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.app.engine.shutdown()).await;
        if let Some(http) = self.http.take() {
            // Bounded by the accept loop's own drain.
            let _ = http.await;
        }
        self.tasks.abort_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(http) = &self.http {
            http.abort();
        }
        self.tasks.abort_all();
    }
}

/// Serves on `listener` until `shutdown` resolves, then stops everything (see
/// [`Server::shutdown`]). `ready` is called once the server runs, with it.
pub async fn run(
    listener: TcpListener,
    cfg: ServeArgs,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Server),
) -> std::io::Result<()> {
    let server = Server::start_on(listener, cfg).await?;
    ready(&server);
    shutdown.await;
    server.shutdown().await;
    Ok(())
}

/// `--srt-pull`'s claim in the cluster, as an HTTP or SRT publisher's (`Cluster::claim_source`):
/// the URL of the node that has the name's source, if another has it.
fn pull_claim(cluster: Arc<crate::cluster::Cluster>) -> ingest::srt::pull::Claim {
    Arc::new(move |name: String| {
        let cluster = cluster.clone();
        Box::pin(async move { cluster.claim_source(&name).await })
    })
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

/// With `--cluster` and `--public-url`: the node's cluster duties started (its tick, the
/// waiting viewers' lookups), and the keys kept in Redis (the file's imported); else none,
/// and the keys in the file.
fn start_cluster(
    cfg: &ServeArgs,
    registry: &Arc<Registry>,
    engine: &Engine,
    tasks: &Tasks,
    file_keys: crate::keys::FileKeys,
) -> std::io::Result<(Option<Arc<crate::cluster::Cluster>>, crate::keys::KeyStore)> {
    let cluster = match (&cfg.cluster, &cfg.public_url) {
        (Some(redis), Some(url)) => {
            let local = crate::cluster::Local {
                registry: registry.clone(),
                engine: engine.clone(),
                tasks: tasks.clone(),
                max_sessions: cfg.max_sessions,
                max_viewers: cfg.max_viewers,
            };
            let token = crate::config::cluster_token(cfg).map_err(std::io::Error::other)?;
            let cluster = crate::cluster::Cluster::new(redis, url, token, local)
                .map_err(std::io::Error::other)?;
            Some(Arc::new(cluster))
        }
        _ => None,
    };
    let keys = match &cluster {
        Some(c) => {
            tasks.spawn(crate::cluster::run(c.clone()));
            tasks.spawn(crate::cluster::waiting::run(c.clone()));
            let (keys, import) = crate::keys::KeyStore::in_cluster(c.clone(), file_keys);
            tasks.spawn(import);
            keys
        }
        None => crate::keys::KeyStore::File(file_keys),
    };
    Ok((cluster, keys))
}

/// The sources the command line names: replays, UDP, the SRT listener and pulls, stdin.
/// libsrt missing or a port taken: the server does not start, saying why.
fn start_sources(cfg: &ServeArgs, app: &Arc<App>, tasks: &Tasks) -> std::io::Result<()> {
    let registry = &app.registry;
    for r in &cfg.replays {
        let stream = registry.get_or_create(&r.name);
        tasks.spawn(ingest::replay::serve_file(stream, r.value.clone()));
    }
    for u in &cfg.udps {
        let stream = registry.get_or_create(&u.name);
        let addr = u.value;
        let reorder = Duration::from_millis(cfg.udp_reorder_ms);
        tasks.spawn(async move {
            if let Err(e) = ingest::udp::run(stream, addr, reorder).await {
                warn!(%addr, error = %e, "UDP source failed");
            }
        });
    }
    if let Some(addr) = cfg.srt_listen {
        let opts = ingest::srt::listen::ListenOptions {
            addr,
            passphrase: cfg.srt_passphrase.clone(),
            latency: Duration::from_millis(cfg.srt_latency_ms),
        };
        // libsrt missing or the port taken: the server does not start, saying why.
        let gate = Arc::new(crate::http::srt::SrtGate::new(app.clone()));
        let listener = ingest::srt::listen::Listener::bind(opts, gate)
            .map_err(|e| std::io::Error::other(format!("--srt-listen {addr}: {e}")))?;
        tasks.spawn(async move {
            if let Err(e) = listener.run().await {
                warn!(%addr, error = %e, "SRT listener failed");
            }
        });
    }
    for p in &cfg.srt_pulls {
        let url: ingest::srt::SrtUrl = p
            .value
            .parse()
            .map_err(|e| std::io::Error::other(format!("--srt-pull {}: {e}", p.name)))?;
        ingest::srt::ffi::load()
            .map_err(|e| std::io::Error::other(format!("--srt-pull {}: {e}", p.name)))?;
        let stream = registry.get_or_create(&p.name);
        let latency = Duration::from_millis(cfg.srt_latency_ms);
        tasks.spawn(ingest::srt::pull::run(
            stream,
            url,
            latency,
            app.cluster.clone().map(pull_claim),
        ));
    }
    if let Some(name) = &cfg.stdin {
        let stream = registry.get_or_create(name);
        tasks.spawn(ingest::pump_reader(stream, tokio::io::stdin(), "stdin"));
    }
    Ok(())
}

/// Once a second: bitrates, and the viewers of sources gone past their grace. Every 10 s:
/// drop streams nobody uses.
async fn housekeeping(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        n += 1;
        for s in app.registry.list() {
            s.sample_rate();
        }
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
                info!(stream = %s.name, "idle stream removed");
            }
        }
    }
}

/// The event hook's `stream.ready` when a stream becomes playable and `stream.ended` when its
/// source ends, told by the stream as its status changes (so before anything that change lets
/// happen, such as a viewer's `session.started`).
fn stream_events(events: crate::events::EventSink) -> crate::stream::StatusHook {
    use crate::stream::SourceState;
    Box::new(move |name, (was_ready, was_source), (ready, source)| {
        if ready && !was_ready {
            events.emit("stream.ready", serde_json::json!({ "stream": name }));
        }
        if source == SourceState::Ended && was_source != SourceState::Ended {
            events.emit("stream.ended", serde_json::json!({ "stream": name }));
        }
    })
}
