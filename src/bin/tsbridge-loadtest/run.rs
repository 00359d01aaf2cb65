//! The run: a coordinator starts viewers at `--ramp` per second and hands each answered one
//! to an event loop. Once every viewer has connected or failed (or `--connect-timeout` has
//! passed since the ramp), and one more second to settle, it measures a steady-state window of
//! `--seconds`, then stops the loops, DELETEs every session and sums the viewers' statistics
//! into the report.
//!
//! [`run`] is these phases in order: [`prepare`] (argument checks, the server's address, the
//! viewers' shared [`Setup`]), [`EventLoops::start`], [`Coordinator::drive`] (the ramp, the
//! wait for connect and settle, the steady-state window), the end [`Sample`],
//! [`Coordinator::finish`] and [`EventLoops::finish`] (stopping), [`delete_sessions`], and
//! [`Sums`] (the viewers' statistics summed into the [`LoadReport`]).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinSet};
use tracing::warn;
use tsbridge::client::Target;

use crate::event_loop::{EventLoops, NewViewer, Progress};
use crate::procfs::{host_cpu_s, open_files_limit, proc_cpu_s, proc_rss_kb, udp_buf_errors};
use crate::report::{min_p50, ms, pct, percentiles, LoadReport, Packets, ServerSample, Steady};
use crate::setup::{delete_session, resolve, route_to, start_viewer, Setup, SetupError};
use crate::viewer::Stats;
use crate::LoadtestArgs;

/// A future that resolves at `at`, or never when `at` is `None`.
fn sleep_until_opt(at: Option<Instant>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at.into())),
        None => Box::pin(std::future::pending()),
    }
}

/// Run the load test and build the report.
pub(crate) async fn run(args: &LoadtestArgs) -> Result<LoadReport, String> {
    let plan = prepare(args).await?;
    let progress = Arc::new(Progress::default());
    let loops = EventLoops::start(args.tasks, &progress, args.decrypt_all);

    let cpu0 = proc_cpu_s("self").unwrap_or(0.0);
    let start = Instant::now();
    let mut coordinator = Coordinator::new(args, &plan, &loops, progress, start);
    coordinator.drive().await;

    // End of the window: sample first, then stop the loops, then clean up on the server.
    let end = Sample::take(plan.server_pid.as_deref());
    let (window, setup_errors) = coordinator.finish().await;
    let stats = loops.finish().await;
    let duration = start.elapsed();
    let client_cpu = proc_cpu_s("self").unwrap_or(0.0) - cpu0;
    let deleted = delete_sessions(plan.setup.server, &plan.origin, &stats, &setup_errors).await;

    let mut sums = Sums::new(&setup_errors);
    for s in &stats {
        sums.add(s);
    }
    if let Some(w0) = &window {
        sums.window(w0, &end, start, args.server_pid);
    }
    Ok(sums.report(args, client_cpu, duration, deleted))
}

/// What the run needs before it starts viewers.
struct Plan {
    /// What every viewer's start shares (the server's address, the certificate, …).
    setup: Arc<Setup>,
    /// The URL's scheme, host and port, for DELETEs by path.
    origin: String,
    /// `--server-pid`, as /proc wants it.
    server_pid: Option<String>,
}

/// Check the arguments, resolve the server and the local address that reaches it, and make
/// the one DTLS certificate every viewer uses.
async fn prepare(args: &LoadtestArgs) -> Result<Plan, String> {
    check_args(args)?;
    let target = Target::parse(&args.url).map_err(|e| e.to_string())?;
    let server = resolve(&target.host_port()).await?;
    let origin = target.origin();
    let local_ip = match args.bind {
        Some(ip) => ip,
        None => route_to(server.ip())
            .ok_or_else(|| format!("no local address routes to {}", server.ip()))?,
    };
    warn_if_few_open_files(args.viewers);
    let server_pid = args.server_pid.map(|p| p.to_string());
    if let Some(pid) = &server_pid {
        proc_cpu_s(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?;
    }

    let provider = str0m::crypto::from_feature_flags();
    // One certificate for every viewer: generating one costs milliseconds.
    let cert = provider
        .dtls_provider
        .generate_certificate()
        .ok_or("cannot generate a DTLS certificate")?;
    provider.install_process_default();
    let setup = Arc::new(Setup {
        server,
        url: args.url.clone(),
        local_ip,
        cert,
        connect_timeout: args.connect_timeout,
    });
    Ok(Plan {
        setup,
        origin,
        server_pid,
    })
}

fn check_args(args: &LoadtestArgs) -> Result<(), String> {
    if args.viewers == 0 {
        return Err("--viewers must be at least 1".into());
    }
    if !(args.ramp > 0.0 && args.ramp.is_finite()) {
        return Err("--ramp must be a positive number of viewers per second".into());
    }
    if !(1..=64).contains(&args.tasks) {
        return Err("--tasks must be between 1 and 64".into());
    }
    Ok(())
}

/// One UDP socket per viewer, plus a TCP connection while its POST is in flight.
fn warn_if_few_open_files(viewers: usize) {
    if let Some(limit) = open_files_limit() {
        let need = 2 * viewers as u64 + 64;
        if limit < need {
            warn!(
                limit,
                need, "the open-files limit may be too low for this many viewers (ulimit -n)"
            );
        }
    }
}

/// The counters read at the start and at the end of the steady-state window.
struct Sample {
    at: Instant,
    /// This process's CPU seconds.
    client_cpu_s: f64,
    /// The host's busy CPU seconds (and total), from /proc/stat.
    host: Option<(f64, f64)>,
    /// The host's UDP receive and send buffer errors.
    udp: Option<(u64, u64)>,
    /// The server's CPU seconds and RSS (with `--server-pid`).
    server: Option<(f64, u64)>,
}

impl Sample {
    fn take(server_pid: Option<&str>) -> Self {
        Sample {
            at: Instant::now(),
            client_cpu_s: proc_cpu_s("self").unwrap_or(0.0),
            host: host_cpu_s(),
            udp: udp_buf_errors(),
            server: server_pid
                .and_then(|pid| Some((proc_cpu_s(pid)?, proc_rss_kb(pid).unwrap_or(0)))),
        }
    }
}

type Starting = JoinSet<Result<NewViewer, SetupError>>;

/// Starts the viewers on the ramp, hands them to the event loops, waits for them to connect
/// and settle, and times the steady-state window.
struct Coordinator<'a> {
    args: &'a LoadtestArgs,
    setup: Arc<Setup>,
    server_pid: Option<&'a str>,
    loops: &'a EventLoops,
    progress: Arc<Progress>,
    start: Instant,
    ramp_step: Duration,
    /// Viewers between their start and their answer.
    starting: Starting,
    setup_errors: Vec<SetupError>,
    started: usize,
    assigned: usize,
    /// When the next viewer is due, until all have been started.
    next_start: Option<Instant>,
    ramp_end: Option<Instant>,
    settled_since: Option<Instant>,
    /// The start of the steady-state window, once it has started.
    window: Option<Sample>,
    report_at: Instant,
    last_packets: u64,
    /// Setup failures already logged (each reason once).
    logged_reasons: HashSet<String>,
}

impl<'a> Coordinator<'a> {
    fn new(
        args: &'a LoadtestArgs,
        plan: &'a Plan,
        loops: &'a EventLoops,
        progress: Arc<Progress>,
        start: Instant,
    ) -> Self {
        Coordinator {
            args,
            setup: plan.setup.clone(),
            server_pid: plan.server_pid.as_deref(),
            loops,
            progress,
            start,
            ramp_step: Duration::from_secs_f64(1.0 / args.ramp),
            starting: JoinSet::new(),
            setup_errors: Vec::new(),
            started: 0,
            assigned: 0,
            next_start: Some(start),
            ramp_end: None,
            settled_since: None,
            window: None,
            report_at: start + Duration::from_secs(1),
            last_packets: 0,
            logged_reasons: HashSet::new(),
        }
    }

    /// Ramp, settle, measure: returns at the end of the steady-state window, when nobody
    /// connected, or on Ctrl-C.
    async fn drive(&mut self) {
        let tick = Duration::from_millis(50);
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            tokio::select! {
                _ = sleep_until_opt(self.next_start) => self.start_due(),
                Some(done) = self.starting.join_next() => self.on_answer(done),
                _ = tokio::time::sleep(tick) => {}
                _ = &mut interrupted => {
                    // Ctrl-C: stop now, but still report and DELETE the sessions.
                    if !self.args.quiet {
                        eprintln!("loadtest: interrupted");
                    }
                    return;
                }
            }
            let now = Instant::now();
            let connected = self.progress.connected.load(Ordering::Relaxed);
            let failed = self.progress.failed.load(Ordering::Relaxed);
            self.log_progress(now, connected, failed);
            if self.is_over(now, connected, failed).await {
                return;
            }
        }
    }

    /// Start every viewer that is due on the ramp; note when the ramp has ended.
    fn start_due(&mut self) {
        let args = self.args;
        let now = Instant::now();
        while self.started < args.viewers
            && self.start + self.ramp_step * self.started as u32 <= now
        {
            let drop = if self.started < args.lossy {
                args.drop / 100.0
            } else {
                0.0
            };
            self.starting.spawn(start_viewer(self.setup.clone(), drop));
            self.started += 1;
        }
        self.next_start = if self.started < args.viewers {
            Some(self.start + self.ramp_step * self.started as u32)
        } else {
            self.ramp_end.get_or_insert(now);
            None
        };
    }

    /// A viewer's start is done: hand it to an event loop, or count its failure.
    fn on_answer(&mut self, done: Result<Result<NewViewer, SetupError>, JoinError>) {
        match done {
            Ok(Ok(v)) => {
                self.loops.add(self.assigned, v);
                self.assigned += 1;
            }
            Ok(Err(e)) => {
                if self.logged_reasons.insert(e.why.clone()) {
                    warn!(reason = %e.why, detail = %e.detail, "viewer failed");
                }
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
                self.setup_errors.push(e);
            }
            Err(e) => {
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
                self.setup_errors
                    .push(SetupError::new("viewer task failed", e));
            }
        }
    }

    /// A progress line on stderr every second (not with `--quiet`).
    fn log_progress(&mut self, now: Instant, connected: usize, failed: usize) {
        if now < self.report_at {
            return;
        }
        self.report_at += Duration::from_secs(1);
        if !self.args.quiet {
            let packets = self.progress.packets.load(Ordering::Relaxed);
            eprintln!(
                "loadtest {:6.1} s: started {}/{}, connected {connected}, failed {failed}, {} packets/s",
                (now - self.start).as_secs_f64(),
                self.started,
                self.args.viewers,
                packets - self.last_packets
            );
            self.last_packets = packets;
        }
    }

    /// Whether the run is over: the steady-state window has lasted `--seconds`, or every
    /// viewer has settled and none connected. Starts the window one second after the viewers
    /// have settled (all connected or failed after the ramp, or `--connect-timeout` passed).
    async fn is_over(&mut self, now: Instant, connected: usize, failed: usize) -> bool {
        if let Some(w0) = &self.window {
            return now >= w0.at + self.args.seconds;
        }
        let Some(ramp_end) = self.ramp_end else {
            return false;
        };
        let settled =
            connected + failed >= self.args.viewers || now >= ramp_end + self.args.connect_timeout;
        if !settled {
            return false;
        }
        if connected == 0 {
            // Nobody to measure (the errors say why).
            return true;
        }
        let since = *self.settled_since.get_or_insert(now);
        if now < since + Duration::from_secs(1) {
            return false;
        }
        self.loops.mark().await;
        if !self.args.quiet {
            eprintln!(
                "loadtest {:6.1} s: steady state: {connected} connected, measuring {:.1} s",
                (now - self.start).as_secs_f64(),
                self.args.seconds.as_secs_f64()
            );
        }
        self.window = Some(Sample::take(self.server_pid));
        false
    }

    /// Stop the viewers still starting. Returns the start of the steady-state window (if it
    /// started) and every viewer's setup error.
    async fn finish(mut self) -> (Option<Sample>, Vec<SetupError>) {
        self.starting.abort_all();
        while let Some(done) = self.starting.join_next().await {
            match done {
                Ok(Ok(v)) => {
                    // Answered just now: it was never measured, but its session must be deleted.
                    let mut e = SetupError::new("not connected at the end", "");
                    e.location = v.stats.location;
                    self.progress.failed.fetch_add(1, Ordering::Relaxed);
                    self.setup_errors.push(e);
                }
                Ok(Err(e)) => self.setup_errors.push(e),
                Err(_) => self
                    .setup_errors
                    .push(SetupError::new("no HTTP answer at the end", "")),
            }
        }
        (self.window, self.setup_errors)
    }
}

/// DELETE every session that has a Location, a few at a time, bounded in time. Returns how
/// many the server ended.
async fn delete_sessions(
    server: SocketAddr,
    origin: &str,
    stats: &[Stats],
    setup_errors: &[SetupError],
) -> usize {
    let locations: Vec<String> = stats
        .iter()
        .filter_map(|s| s.location.clone())
        .chain(setup_errors.iter().filter_map(|e| e.location.clone()))
        .collect();
    let deleted = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut deletes = JoinSet::new();
    for loc in locations {
        let (sem, deleted, origin) = (sem.clone(), deleted.clone(), origin.to_string());
        deletes.spawn(async move {
            let Ok(_permit) = sem.acquire().await else {
                return;
            };
            if delete_session(server, &origin, &loc).await {
                deleted.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while deletes.join_next().await.is_some() {}
    })
    .await;
    deletes.abort_all();
    deleted.load(Ordering::Relaxed)
}

/// The viewers' statistics summed for the report.
#[derive(Default)]
struct Sums {
    errors: BTreeMap<String, usize>,
    packets: Packets,
    bytes: u64,
    /// Packets expected by the viewers not made lossy.
    expected: u64,
    lossy_received: u64,
    lossy_expected: u64,
    lossy_video_received: u64,
    lossy_video_expected: u64,
    lossy_video_thrown: u64,
    steady: Steady,
    /// Packets received and expected in the window by the viewers not made lossy.
    steady_received: u64,
    steady_expected: u64,
    answer: Vec<f64>,
    ice: Vec<f64>,
    conn: Vec<f64>,
    rtp: Vec<f64>,
    key: Vec<f64>,
    per_viewer: Vec<u64>,
    per_viewer_steady: Vec<u64>,
    connected: usize,
    dropped: usize,
}

impl Sums {
    /// Start with the viewers that failed before reaching an event loop.
    fn new(setup_errors: &[SetupError]) -> Self {
        let mut sums = Sums::default();
        for e in setup_errors {
            *sums.errors.entry(e.why.clone()).or_default() += 1;
        }
        sums
    }

    /// Add one viewer of an event loop.
    fn add(&mut self, s: &Stats) {
        if let Some(e) = &s.error {
            *self.errors.entry(e.clone()).or_default() += 1;
        }
        self.packets.video += s.video.received;
        self.packets.audio += s.audio.received;
        self.bytes += s.bytes;
        if s.drop > 0.0 {
            self.lossy_received += s.packets();
            self.lossy_expected += s.expected();
            self.lossy_video_received += s.video.received;
            self.lossy_video_expected += s.video.expected();
            self.lossy_video_thrown += s.thrown_video;
        } else {
            self.expected += s.expected();
        }
        self.answer.extend(s.answered.map(ms));
        self.ice.extend(s.ice.map(ms));
        self.rtp.extend(s.first_rtp.map(ms));
        self.key.extend(s.first_key.map(ms));
        if s.mark.set {
            self.steady.packets += s.packets() - s.mark.packets;
            self.steady.bytes += s.bytes - s.mark.bytes;
            if s.drop == 0.0 {
                self.steady_received += s.packets() - s.mark.packets;
                self.steady_expected += s.expected() - s.mark.expected;
            }
        }
        let Some(c) = s.connected else { return };
        self.connected += 1;
        self.conn.push(ms(c));
        self.per_viewer.push(s.packets());
        if s.dropped {
            self.dropped += 1;
        } else {
            if s.ice_disconnected {
                *self
                    .errors
                    .entry("ICE disconnected at the end".into())
                    .or_default() += 1;
            }
            if s.packets() == 0 {
                *self
                    .errors
                    .entry("no RTP after connecting".into())
                    .or_default() += 1;
            }
            self.steady.viewers += 1;
        }
        if s.mark.set {
            self.per_viewer_steady.push(s.packets() - s.mark.packets);
        }
    }

    /// The steady-state window's rates, from the samples at its start and end.
    fn window(&mut self, w0: &Sample, w1: &Sample, start: Instant, server_pid: Option<u32>) {
        let steady = &mut self.steady;
        if let (Some((rcv0, snd0)), Some((rcv1, snd1))) = (w0.udp, w1.udp) {
            steady.udp_rcvbuf_errors = Some(rcv1.saturating_sub(rcv0));
            steady.udp_sndbuf_errors = Some(snd1.saturating_sub(snd0));
        }
        let secs = (w1.at - w0.at).as_secs_f64();
        steady.start_s = (w0.at - start).as_secs_f64();
        steady.seconds = secs;
        steady.packets_per_s = if secs > 0.0 {
            steady.packets as f64 / secs
        } else {
            0.0
        };
        steady.loss_pct = pct(
            self.steady_expected.saturating_sub(self.steady_received),
            self.steady_expected,
        );
        steady.per_viewer_packets = min_p50(std::mem::take(&mut self.per_viewer_steady));
        steady.client_cpu_s = w1.client_cpu_s - w0.client_cpu_s;
        steady.client_cpu_pct = if secs > 0.0 {
            steady.client_cpu_s / secs * 100.0
        } else {
            0.0
        };
        if let (Some((busy0, _)), Some((busy1, _))) = (w0.host, w1.host) {
            steady.host_cpu_pct = (secs > 0.0).then(|| (busy1 - busy0) / secs * 100.0);
        }
        if let (Some(pid), Some((cpu0, rss0)), Some((cpu1, rss1))) =
            (server_pid, w0.server, w1.server)
        {
            let cpu = cpu1 - cpu0;
            steady.server = Some(ServerSample {
                pid,
                cpu_s: cpu,
                cpu_pct: if secs > 0.0 { cpu / secs * 100.0 } else { 0.0 },
                rss_kb_start: rss0,
                rss_kb_end: rss1,
                us_per_packet: (steady.packets > 0).then(|| cpu * 1e6 / steady.packets as f64),
            });
        }
    }

    fn report(
        mut self,
        args: &LoadtestArgs,
        client_cpu_s: f64,
        duration: Duration,
        deleted: usize,
    ) -> LoadReport {
        let received = self.packets.video + self.packets.audio - self.lossy_received;
        self.steady.host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lossy = args.lossy > 0;
        LoadReport {
            url: args.url.clone(),
            viewers: args.viewers,
            connected: self.connected,
            failed: args.viewers - self.connected,
            dropped: self.dropped,
            errors: self.errors,
            packets: self.packets,
            bytes: self.bytes,
            loss_pct: pct(self.expected.saturating_sub(received), self.expected),
            lossy_loss_pct: lossy.then(|| {
                pct(
                    self.lossy_expected.saturating_sub(self.lossy_received),
                    self.lossy_expected,
                )
            }),
            lossy_video_loss_pct: lossy.then(|| {
                pct(
                    self.lossy_video_expected
                        .saturating_sub(self.lossy_video_received),
                    self.lossy_video_expected,
                )
            }),
            lossy_video_thrown: lossy.then_some(self.lossy_video_thrown),
            time_to_answer_ms: percentiles(self.answer),
            time_to_ice_ms: percentiles(self.ice),
            time_to_connected_ms: percentiles(self.conn),
            time_to_first_rtp_ms: percentiles(self.rtp),
            with_keyframe: self.key.len(),
            time_to_first_keyframe_ms: percentiles(self.key),
            per_viewer_packets: min_p50(self.per_viewer),
            client_cpu_s,
            duration_s: duration.as_secs_f64(),
            steady: self.steady,
            deleted,
        }
    }
}
