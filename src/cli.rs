//! `tsbridge serve`: start, print where to look, run until Ctrl-C / SIGTERM. And
//! `tsbridge loadtest`: hand over to the load tool's own binary. `tsbridge health`: ask a
//! server whether it is ready, for container health checks.

use std::ffi::OsString;

use crate::config::ServeArgs;

/// `println!` that ignores a closed stdout (`tsbridge serve | head`, a parent that stopped
/// reading): the server must not panic over its banner.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
use crate::server::Server;

/// Every HTTP connection costs a file descriptor: lift the soft limit (often 1024) to the hard
/// one, as servers do, so `--max-connections` and not the limit decides.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read/write the one struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let names: Vec<String> = args
        .replays
        .iter()
        .map(|r| r.name.clone())
        .chain(args.udps.iter().map(|u| u.name.clone()))
        .chain(args.srt_pulls.iter().map(|p| p.name.clone()))
        .chain(args.stdin.clone())
        .chain(args.demo.then(|| "demo".to_string()))
        .collect();
    raise_fd_limit();
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let banner = |server: &Server| {
        let base = match server.http_addr {
            a if a.ip().is_unspecified() => format!("{scheme}://127.0.0.1:{}", a.port()),
            a => format!("{scheme}://{a}"),
        };
        say!("tsbridge is running: dashboard {base}/");
        for n in &names {
            say!("  stream {n}: player {base}/play/{n}   WHEP {base}/whep/{n}");
        }
        say!(
            "  push TS:  ffmpeg -re -i INPUT -c:v libx264 -bf 0 -c:a libopus -f mpegts -method PUT \
             {base}/ingest/NAME   (no B-frames: browsers cannot play them)"
        );
    };
    // On Ctrl-C / SIGTERM: every peer is told (DTLS close), then every task stops (pipeline
    // commands are killed and reaped); bounded, so the process exits within seconds.
    let shutdown = async {
        shutdown_signal().await;
        say!("tsbridge: shutting down");
    };
    crate::server::run(listener, args, shutdown, banner)
        .await
        .map_err(|e| format!("cannot start: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The load tool's binary, expected next to this one (`cargo build` puts both there).
pub const LOADTEST_BIN: &str = "tsbridge-loadtest";

/// `tsbridge loadtest ARGS…`: runs `tsbridge-loadtest ARGS…` from this binary's directory. On
/// Unix the process becomes the load tool (exec), so its output, exit status and signals
/// (Ctrl-C, a `timeout` around it) are the tool's own; returns only on failure.
pub fn loadtest(args: &[OsString]) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let tool = exe.with_file_name(format!("{LOADTEST_BIN}{}", std::env::consts::EXE_SUFFIX));
    if !tool.is_file() {
        return Err(format!(
            "the load tool is its own binary, and there is none at {}: build it with \
             `cargo build --release --bin {LOADTEST_BIN}` (or put it next to tsbridge)",
            tool.display()
        ));
    }
    let mut cmd = std::process::Command::new(&tool);
    cmd.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        Err(format!("cannot run {}: {e}", tool.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} ended with {status}", tool.display()))
        }
    }
}

/// `tsbridge health`: GET `/readyz` (or `/healthz` with `--live`) of a server; `Ok` on a 2xx
/// within the timeout, else what went wrong (the caller exits 1).
pub async fn health(args: &crate::config::HealthArgs) -> Result<(), String> {
    use crate::client::{Client, Request, Timeouts};
    let path = if args.live { "/healthz" } else { "/readyz" };
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let timeout = std::time::Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let r = Client::new()
        .request(Request::get(&url), Timeouts::all(timeout))
        .await
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&r.body);
    if (200..300).contains(&r.status) {
        say!("{url}: {} {}", r.status, body.trim());
        Ok(())
    } else {
        Err(format!("{url}: {} {}", r.status, body.trim()))
    }
}
