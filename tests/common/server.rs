//! Starting the `tsbridge` binary for a test: `serve` on 127.0.0.1 with ephemeral ports.
//!
//! Pass `env!("CARGO_BIN_EXE_tsbridge")` as the binary (Cargo sets it for integration tests).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `tsbridge serve`; killed when dropped.
pub struct TsbridgeProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    /// The command line it was started with (its stdout and stderr go to the test's output).
    pub args: Vec<String>,
    /// Its log (stderr), each line with when it was read.
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl TsbridgeProcess {
    /// Runs `{bin} serve --listen 127.0.0.1:0 --ice-udp 127.0.0.1:0 {extra…}` and waits (up to
    /// 20 s) for the banner line `tsbridge is running: dashboard http://…/` on stdout.
    pub fn serve(bin: &str, extra: &[&str]) -> Result<TsbridgeProcess, String> {
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ice-udp",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(bin, args)
    }

    /// Runs `{bin} {args…}` (which must be a `serve` that prints the banner).
    pub fn spawn(bin: &str, args: Vec<String>) -> Result<TsbridgeProcess, String> {
        Self::spawn_with_env(bin, args, &[])
    }

    /// [`TsbridgeProcess::spawn`] with `env` set for the process (only: never the test's own
    /// environment, which other tests' threads read).
    pub fn spawn_with_env(
        bin: &str,
        args: Vec<String>,
        env: &[(&str, &std::path::Path)],
    ) -> Result<TsbridgeProcess, String> {
        let mut child = Command::new(bin)
            .args(&args)
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {bin}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Default::default();
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (kept, pid) = (log.clone(), child.id());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[tsbridge {pid}] {line}");
                kept.lock().unwrap().push((Instant::now(), line));
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[tsbridge] {line}");
                if let Some(i) = line.find("http://") {
                    if let Some(tx) = tx.take() {
                        let url = line[i..].split_whitespace().next().unwrap_or("");
                        let _ = tx.send(url.trim_end_matches('/').to_owned());
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(base) => Ok(TsbridgeProcess {
                child,
                base,
                args,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "{bin} {args:?}: no 'http://' banner on stdout within 20 s"
                ))
            }
        }
    }

    /// `{base}/whep/{stream}`.
    pub fn whep_url(&self, stream: &str) -> String {
        format!("{}/whep/{stream}", self.base)
    }

    /// `host:port` of the HTTP listener (for [`super::http::request_raw`]).
    pub fn authority(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// The first line of its log read after `since` that contains `needle`, with when it was
    /// read.
    pub fn logged_after(&self, since: Instant, needle: &str) -> Option<(Instant, String)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|(at, line)| *at >= since && line.contains(needle))
            .cloned()
    }

    /// The process id (for signals, `SIGSTOP` and `SIGCONT`; and `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory now, in kB (`VmRSS` of `/proc/PID/status`; 0 if unreadable).
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// `SIGKILL` (a node that dies without a word: no leaving the cluster, sockets closed by
    /// the kernel), and reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TsbridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `tsbridge serve` on 127.0.0.1 ephemeral ports with `extra` arguments, as a tokio child
/// (stdin piped when asked, killed on drop); returns it and the base URL it printed.
#[allow(dead_code)] // not every test binary uses it
pub async fn serve_async(extra: &[String], stdin: bool) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsbridge"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ice-udp",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tsbridge");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .expect("read the server's stdout")
            .expect("the server prints its URL");
        if let Some(at) = line.find("http://") {
            return (child, line[at..].trim_end_matches('/').to_string());
        }
    }
}
