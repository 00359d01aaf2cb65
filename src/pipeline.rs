//! The pipeline command: a WHIP stream's TS goes through `CMD` (stdin → stdout) on its way to
//! the viewers, so an AI model or an ffmpeg filter plugs in with no other glue.
//!
//! The publisher writes stream `{s}.input`; the command's stdout is stream `{s}`. When the
//! command exits while the publisher is still there, it is restarted with backoff; the output
//! stream's input closes and reopens, which viewers ride through (the timeline re-anchors, so
//! RTP stays continuous). When the publisher goes, the command gets EOF and is reaped.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tracing::{info, warn};

use parking_lot::Mutex;

use crate::stream::ring::Read;
use crate::stream::{Registry, SourceState, Stream};
use crate::tasks::Tasks;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A command that ran this long before exiting gets the first backoff again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// After stdin closes, the command gets this long to finish before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The pipeline commands of a server (`--pipeline`): one per WHIP stream, started with its
/// first publisher, running for the stream's life.
pub struct Pipelines {
    command: Option<String>,
    /// Output streams whose command runs.
    running: Arc<Mutex<std::collections::HashSet<String>>>,
    registry: Arc<Registry>,
    tasks: Tasks,
}

impl Pipelines {
    pub fn new(command: Option<String>, registry: Arc<Registry>, tasks: Tasks) -> Self {
        Pipelines {
            command,
            running: Default::default(),
            registry,
            tasks,
        }
    }

    /// Whether a pipeline command is configured.
    pub fn enabled(&self) -> bool {
        self.command.is_some()
    }

    /// Whether stream `name`'s command is running (so `name` is fed by it).
    pub fn running(&self, name: &str) -> bool {
        self.running.lock().contains(name)
    }

    /// Start the command for output stream `name`, fed by `input`, once.
    pub fn ensure(&self, name: &str, input: &Arc<Stream>) {
        let Some(cmd) = &self.command else {
            return;
        };
        if !self.running.lock().insert(name.to_string()) {
            return;
        }
        let output = self.registry.get_or_create(name);
        let (cmd, input, running) = (cmd.clone(), input.clone(), self.running.clone());
        self.tasks.spawn(async move {
            run(cmd, input, output.clone()).await;
            running.lock().remove(&output.name);
        });
    }
}

/// What a pipeline's input stream's name ends with.
pub const INPUT_SUFFIX: &str = ".input";

/// The name of the stream a WHIP publisher of `name` writes when a pipeline is configured.
pub fn input_name(name: &str) -> String {
    format!("{name}{INPUT_SUFFIX}")
}

/// Run `template` for the life of the output stream.
pub async fn run(template: String, input: Arc<Stream>, output: Arc<Stream>) {
    let command = template.replace("{stream}", &output.name);
    let mut backoff = FIRST_BACKOFF;
    let mut status = input.subscribe();
    loop {
        // Wait for a publisher (until the input stream is dropped as idle).
        match tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| s.source == SourceState::Live),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) if input.ring.is_shut() || output.ring.is_shut() => return,
            Err(_) => continue,
        }
        let started = Instant::now();
        match run_once(&command, &input, &output).await {
            Ok(Outcome::InputEnded) => {
                backoff = FIRST_BACKOFF;
                // Wait for the input to be marked as ended before waiting for a new one.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    status.wait_for(|s| s.source != SourceState::Live),
                )
                .await;
            }
            Ok(Outcome::Exited(code)) => {
                if started.elapsed() > HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                warn!(stream = %output.name, %code, "pipeline command exited; restarting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                warn!(stream = %output.name, error = %e, command = %command, "cannot start the pipeline command; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if input.ring.is_shut() || output.ring.is_shut() {
            return;
        }
    }
}

enum Outcome {
    /// The publisher went away; the command was given EOF and reaped.
    InputEnded,
    /// The command exited (or crashed) on its own.
    Exited(String),
}

async fn run_once(
    command: &str,
    input: &Arc<Stream>,
    output: &Arc<Stream>,
) -> std::io::Result<Outcome> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    info!(stream = %output.name, pid = child.id().unwrap_or(0), command, "pipeline command started");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");

    let name = output.name.clone();
    let log_stderr = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            info!(stream = %name, "pipeline: {line}");
        }
    });

    let out = output.clone();
    let copy_out = tokio::spawn(async move {
        let guard = out.attach_source();
        let mut buf = vec![0u8; 188 * 348];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => guard.write(&buf[..n]),
            }
        }
    });

    // Feed the command until the publisher ends or the command stops reading.
    let mut cursor = input.ring.cursor();
    let mut buf = vec![0u8; 188 * 348];
    let outcome = loop {
        tokio::select! {
            r = input.ring.read(&mut cursor, &mut buf) => match r {
                Read::Data(n) => {
                    if stdin.write_all(&buf[..n]).await.is_err() {
                        // It closed its stdin: it is exiting.
                        let status = child.wait().await?;
                        break Outcome::Exited(status.to_string());
                    }
                }
                Read::Lapped(skipped) => {
                    warn!(stream = %output.name, skipped, "pipeline command is slower than real time; skipped input");
                }
                Read::EndOfInput | Read::Shutdown => break Outcome::InputEnded,
            },
            status = child.wait() => break Outcome::Exited(status?.to_string()),
        }
    };
    if let Outcome::InputEnded = outcome {
        drop(stdin);
        match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
            Ok(status) => {
                info!(stream = %output.name, status = %status?, "publisher ended; pipeline command finished");
            }
            Err(_) => {
                warn!(stream = %output.name, "pipeline command did not exit {EXIT_GRACE:?} after EOF; killing it");
                child.kill().await?;
            }
        }
    }
    let _ = copy_out.await;
    let _ = log_stderr.await;
    Ok(outcome)
}
