//! The run: a coordinator starts viewers at `--ramp` per second and hands each answered one
//! to an event loop. Once every viewer has connected or failed (or `--connect-timeout` has
//! passed since the ramp), and one more second to settle, it measures a steady-state window of
//! `--seconds`, then stops the loops, DELETEs every session and sums the viewers' statistics
//! into the report.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::warn;
use tsbridge::client::Target;

use crate::event_loop::{Ctrl, EventLoop, NewViewer, Progress};
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
    if args.viewers == 0 {
        return Err("--viewers must be at least 1".into());
    }
    if !(args.ramp > 0.0 && args.ramp.is_finite()) {
        return Err("--ramp must be a positive number of viewers per second".into());
    }
    if !(1..=64).contains(&args.tasks) {
        return Err("--tasks must be between 1 and 64".into());
    }
    let target = Target::parse(&args.url).map_err(|e| e.to_string())?;
    let server = resolve(&target.host_port()).await?;
    let origin = target.origin();
    let local_ip = match args.bind {
        Some(ip) => ip,
        None => route_to(server.ip())
            .ok_or_else(|| format!("no local address routes to {}", server.ip()))?,
    };
    // One UDP socket per viewer, plus a TCP connection while its POST is in flight.
    if let Some(limit) = open_files_limit() {
        let need = 2 * args.viewers as u64 + 64;
        if limit < need {
            warn!(
                limit,
                need, "the open-files limit may be too low for this many viewers (ulimit -n)"
            );
        }
    }
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

    let progress = Arc::new(Progress::default());
    let mut loops = Vec::new();
    let mut loop_tasks = Vec::new();
    for _ in 0..args.tasks {
        let (tx, rx) = mpsc::unbounded_channel();
        let ev = EventLoop::new(rx, progress.clone(), args.decrypt_all);
        loops.push(tx);
        loop_tasks.push(tokio::spawn(ev.run()));
    }

    let cpu0 = proc_cpu_s("self").unwrap_or(0.0);
    let start = Instant::now();
    let ramp_step = Duration::from_secs_f64(1.0 / args.ramp);
    let mut starting: JoinSet<Result<NewViewer, SetupError>> = JoinSet::new();
    let mut setup_errors: Vec<SetupError> = Vec::new();
    let mut started = 0usize;
    let mut assigned = 0usize;
    let mut next_start = Some(start);
    let mut settled_since: Option<Instant> = None;
    type Sample = (
        Instant,
        f64,
        Option<(f64, u64)>,
        Option<(f64, f64)>,
        Option<(u64, u64)>,
    );
    let mut window: Option<Sample> = None;
    let mut ramp_end: Option<Instant> = None;
    let mut report_at = start + Duration::from_secs(1);
    let mut last_packets = 0u64;
    let mut logged_reasons: HashMap<String, ()> = HashMap::new();
    let tick = Duration::from_millis(50);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);

    loop {
        tokio::select! {
            _ = sleep_until_opt(next_start) => {
                let now = Instant::now();
                while started < args.viewers && start + ramp_step * started as u32 <= now {
                    let drop = if started < args.lossy { args.drop / 100.0 } else { 0.0 };
                    starting.spawn(start_viewer(setup.clone(), drop));
                    started += 1;
                }
                next_start = if started < args.viewers {
                    Some(start + ramp_step * started as u32)
                } else {
                    ramp_end.get_or_insert(now);
                    None
                };
            }
            Some(done) = starting.join_next() => match done {
                Ok(Ok(v)) => {
                    let _ = loops[assigned % loops.len()].send(Ctrl::Add(Box::new(v)));
                    assigned += 1;
                }
                Ok(Err(e)) => {
                    if logged_reasons.insert(e.why.clone(), ()).is_none() {
                        warn!(reason = %e.why, detail = %e.detail, "viewer failed");
                    }
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    setup_errors.push(e);
                }
                Err(e) => {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    setup_errors.push(SetupError::new("viewer task failed", e));
                }
            },
            _ = tokio::time::sleep(tick) => {}
            _ = &mut interrupted => {
                // Ctrl-C: stop now, but still report and DELETE the sessions.
                if !args.quiet {
                    eprintln!("loadtest: interrupted");
                }
                break;
            }
        }

        let now = Instant::now();
        let connected = progress.connected.load(Ordering::Relaxed);
        let failed = progress.failed.load(Ordering::Relaxed);
        if now >= report_at {
            report_at += Duration::from_secs(1);
            if !args.quiet {
                let packets = progress.packets.load(Ordering::Relaxed);
                eprintln!(
                    "loadtest {:6.1} s: started {started}/{}, connected {connected}, failed {failed}, {} packets/s",
                    (now - start).as_secs_f64(),
                    args.viewers,
                    packets - last_packets
                );
                last_packets = packets;
            }
        }
        match window {
            None => {
                let Some(ramp_end) = ramp_end else { continue };
                let settled =
                    connected + failed >= args.viewers || now >= ramp_end + args.connect_timeout;
                if !settled {
                    continue;
                }
                if connected == 0 {
                    // Nobody to measure (the errors say why).
                    break;
                }
                let since = *settled_since.get_or_insert(now);
                if now < since + Duration::from_secs(1) {
                    continue;
                }
                let mut acks = Vec::new();
                for l in &loops {
                    let (tx, rx) = oneshot::channel();
                    let _ = l.send(Ctrl::Mark(tx));
                    acks.push(rx);
                }
                for a in acks {
                    let _ = a.await;
                }
                let client = proc_cpu_s("self").unwrap_or(0.0);
                let server = server_pid
                    .as_deref()
                    .and_then(|pid| Some((proc_cpu_s(pid)?, proc_rss_kb(pid).unwrap_or(0))));
                if !args.quiet {
                    eprintln!(
                        "loadtest {:6.1} s: steady state: {connected} connected, measuring {:.1} s",
                        (now - start).as_secs_f64(),
                        args.seconds.as_secs_f64()
                    );
                }
                window = Some((
                    Instant::now(),
                    client,
                    server,
                    host_cpu_s(),
                    udp_buf_errors(),
                ));
            }
            Some((w0, ..)) => {
                if now >= w0 + args.seconds {
                    break;
                }
            }
        }
    }

    // End of the window: sample first, then stop the loops, then clean up on the server.
    let w_end = Instant::now();
    let client_end = proc_cpu_s("self").unwrap_or(0.0);
    let host_end = host_cpu_s();
    let udp_end = udp_buf_errors();
    let server_end = server_pid
        .as_deref()
        .and_then(|pid| Some((proc_cpu_s(pid)?, proc_rss_kb(pid).unwrap_or(0))));
    starting.abort_all();
    while let Some(done) = starting.join_next().await {
        match done {
            Ok(Ok(v)) => {
                // Answered just now: it was never measured, but its session must be deleted.
                let mut e = SetupError::new("not connected at the end", "");
                e.location = v.stats.location;
                progress.failed.fetch_add(1, Ordering::Relaxed);
                setup_errors.push(e);
            }
            Ok(Err(e)) => setup_errors.push(e),
            Err(_) => setup_errors.push(SetupError::new("no HTTP answer at the end", "")),
        }
    }
    let mut stats: Vec<Stats> = Vec::new();
    for l in &loops {
        let (tx, rx) = oneshot::channel();
        let _ = l.send(Ctrl::Finish(tx));
        if let Ok(s) = rx.await {
            stats.extend(s);
        }
    }
    for t in loop_tasks {
        let _ = t.await;
    }
    let duration = start.elapsed();
    let client_cpu = proc_cpu_s("self").unwrap_or(0.0) - cpu0;

    // DELETE every session that has a Location, a few at a time, bounded in time.
    let locations: Vec<String> = stats
        .iter()
        .filter_map(|s| s.location.clone())
        .chain(setup_errors.iter().filter_map(|e| e.location.clone()))
        .collect();
    let deleted = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut deletes = JoinSet::new();
    for loc in locations {
        let (sem, deleted, origin) = (sem.clone(), deleted.clone(), origin.clone());
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

    // The report.
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for e in &setup_errors {
        *errors.entry(e.why.clone()).or_default() += 1;
    }
    let mut packets = Packets::default();
    let (mut bytes, mut expected) = (0u64, 0u64);
    let (mut lossy_received, mut lossy_expected) = (0u64, 0u64);
    let (mut lossy_video_received, mut lossy_video_expected) = (0u64, 0u64);
    let mut lossy_video_thrown = 0;
    let mut steady = Steady::default();
    let (mut steady_received, mut steady_expected) = (0u64, 0u64);
    let (mut answer, mut ice, mut conn) = (vec![], vec![], vec![]);
    let (mut rtp, mut key) = (vec![], vec![]);
    let (mut per_viewer, mut per_viewer_steady) = (vec![], vec![]);
    let (mut connected, mut dropped) = (0, 0);
    for s in &stats {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
        packets.video += s.video.received;
        packets.audio += s.audio.received;
        bytes += s.bytes;
        if s.drop > 0.0 {
            lossy_received += s.packets();
            lossy_expected += s.expected();
            lossy_video_received += s.video.received;
            lossy_video_expected += s.video.expected();
            lossy_video_thrown += s.thrown_video;
        } else {
            expected += s.expected();
        }
        answer.extend(s.answered.map(ms));
        ice.extend(s.ice.map(ms));
        rtp.extend(s.first_rtp.map(ms));
        key.extend(s.first_key.map(ms));
        if s.mark.set {
            steady.packets += s.packets() - s.mark.packets;
            steady.bytes += s.bytes - s.mark.bytes;
            if s.drop == 0.0 {
                steady_received += s.packets() - s.mark.packets;
                steady_expected += s.expected() - s.mark.expected;
            }
        }
        let Some(c) = s.connected else { continue };
        connected += 1;
        conn.push(ms(c));
        per_viewer.push(s.packets());
        if s.dropped {
            dropped += 1;
        } else {
            if s.ice_disconnected {
                *errors
                    .entry("ICE disconnected at the end".into())
                    .or_default() += 1;
            }
            if s.packets() == 0 {
                *errors.entry("no RTP after connecting".into()).or_default() += 1;
            }
            steady.viewers += 1;
        }
        if s.mark.set {
            per_viewer_steady.push(s.packets() - s.mark.packets);
        }
    }
    let received = packets.video + packets.audio - lossy_received;
    steady.host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some((w0, client0, server0, host0, udp0)) = window {
        if let (Some((rcv0, snd0)), Some((rcv1, snd1))) = (udp0, udp_end) {
            steady.udp_rcvbuf_errors = Some(rcv1.saturating_sub(rcv0));
            steady.udp_sndbuf_errors = Some(snd1.saturating_sub(snd0));
        }
        let secs = (w_end - w0).as_secs_f64();
        steady.start_s = (w0 - start).as_secs_f64();
        steady.seconds = secs;
        steady.packets_per_s = if secs > 0.0 {
            steady.packets as f64 / secs
        } else {
            0.0
        };
        steady.loss_pct = pct(
            steady_expected.saturating_sub(steady_received),
            steady_expected,
        );
        steady.per_viewer_packets = min_p50(per_viewer_steady);
        steady.client_cpu_s = client_end - client0;
        steady.client_cpu_pct = if secs > 0.0 {
            steady.client_cpu_s / secs * 100.0
        } else {
            0.0
        };
        if let (Some((busy0, _)), Some((busy1, _))) = (host0, host_end) {
            steady.host_cpu_pct = (secs > 0.0).then(|| (busy1 - busy0) / secs * 100.0);
        }
        if let (Some(pid), Some((cpu0, rss0)), Some((cpu1, rss1))) =
            (args.server_pid, server0, server_end)
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
    Ok(LoadReport {
        url: args.url.clone(),
        viewers: args.viewers,
        connected,
        failed: args.viewers - connected,
        dropped,
        errors,
        packets,
        bytes,
        loss_pct: pct(expected.saturating_sub(received), expected),
        lossy_loss_pct: (args.lossy > 0).then(|| {
            pct(
                lossy_expected.saturating_sub(lossy_received),
                lossy_expected,
            )
        }),
        lossy_video_loss_pct: (args.lossy > 0).then(|| {
            pct(
                lossy_video_expected.saturating_sub(lossy_video_received),
                lossy_video_expected,
            )
        }),
        lossy_video_thrown: (args.lossy > 0).then_some(lossy_video_thrown),
        time_to_answer_ms: percentiles(answer),
        time_to_ice_ms: percentiles(ice),
        time_to_connected_ms: percentiles(conn),
        time_to_first_rtp_ms: percentiles(rtp),
        with_keyframe: key.len(),
        time_to_first_keyframe_ms: percentiles(key),
        per_viewer_packets: min_p50(per_viewer),
        client_cpu_s: client_cpu,
        duration_s: duration.as_secs_f64(),
        steady,
        deleted: deleted.load(Ordering::Relaxed),
    })
}
