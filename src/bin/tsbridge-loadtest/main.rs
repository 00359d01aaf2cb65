//! `tsbridge-loadtest`: many WHEP viewers in one process, for fan-out benchmarks.
//!
//! Each viewer is a str0m `Rtc` in RTP mode with its own UDP socket (the server routes by source
//! address), offering recvonly H.264 (packetization-mode=1, the profiles Chromium offers) and
//! Opus. The load tool shares the WebRTC stack with the server (str0m) on purpose: it is sans-IO
//! and cheap, so a thousand receivers fit beside the server on a small box. Correctness against
//! an *independent* stack is the test suite's job (it plays the server with the `webrtc` crate);
//! this tool measures scale: who connected, how fast, how many RTP packets arrived, what was lost.
//!
//! Per packet the client does only what it must: the SRTP decrypt inside str0m (RTP mode, so no
//! depacketizing or jitter buffer), a sequence-number range per SSRC for loss, and, until the
//! first keyframe has arrived, a look at the first bytes of the H.264 payload.
//!
//! Shape: a coordinator starts viewers at `--ramp` per second; each start is a small task that
//! binds the socket, builds the offer, POSTs it and parses the answer, then hands the `Rtc` to one
//! of `--tasks` event loops. An event loop owns its viewers and polls their sockets itself: each
//! socket gets a waker that puts the viewer's index on a ready queue, so a wake-up costs
//! O(viewers with data), not O(viewers). After the ramp, once every viewer has connected or
//! failed, a steady-state window of `--seconds` is measured (packets, the client's CPU, and with
//! `--server-pid` the server's CPU time and RSS from /proc); then every session is DELETEd.
//!
//! A client of the server, so its own binary: the server library does not carry it.
//! `tsbridge loadtest …` runs this binary (it must sit next to `tsbridge`). The files:
//!
//! - `run.rs`: the coordinator (ramp, settle, steady-state window, DELETEs, the report's sums)
//! - `setup.rs`: one viewer's start: socket, offer, POST (`tsbridge::client`), answer
//! - `event_loop.rs`: the event loops that own the viewers and poll their sockets
//! - `viewer.rs`: what is counted per viewer (loss by sequence ranges, first keyframe)
//! - `report.rs`: the report, as JSON or text, and its statistics
//! - `procfs.rs`: CPU, memory and UDP counters from /proc (Linux)

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

mod event_loop;
mod procfs;
mod report;
mod run;
mod setup;
mod viewer;

/// Run N WHEP viewers against a server and report connections, packets, loss and start-up
/// times (JSON with --json): a load tool for fan-out benchmarks (benches/fanout.sh).
#[derive(Debug, Clone, Parser)]
#[command(name = "tsbridge-loadtest", version, long_about = None)]
pub struct LoadtestArgs {
    /// WHEP URL of the stream, e.g. http://127.0.0.1:8889/whep/demo
    #[arg(long)]
    pub url: String,

    /// Number of WHEP viewers to run.
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,

    /// Length of the steady-state window, in seconds: measured once every viewer has connected
    /// or failed (after the ramp), after one more second to settle.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub seconds: Duration,

    /// Viewers started per second.
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,

    /// Print the report as JSON (default: a short text summary).
    #[arg(long)]
    pub json: bool,

    /// Seconds a viewer has from its POST to a connected session (the POST itself waits for
    /// a stream that is not ready yet, then ICE and DTLS).
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// Event-loop tasks the viewers are spread over (1 keeps the client on one core).
    #[arg(long, default_value_t = 1)]
    pub tasks: usize,

    /// PID of the server: sample its CPU time and RSS from /proc over the steady-state window
    /// (Linux), and report µs of server CPU per delivered RTP packet.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Local IP for the viewers' sockets (default: the address that routes to the URL's host).
    #[arg(long)]
    pub bind: Option<IpAddr>,

    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// Make the first N viewers lossy: they throw away `--drop` percent of the RTP they
    /// receive, like a viewer on a bad link (RTCP, STUN and DTLS pass). Their loss is reported
    /// apart (`lossy_loss_pct`); `loss_pct` counts the others.
    #[arg(long, default_value_t = 0)]
    pub lossy: usize,

    /// Percent of RTP the lossy viewers throw away.
    #[arg(long, default_value_t = 30.0)]
    pub drop: f64,

    /// Put every RTP packet through SRTP and str0m. By default a viewer does so until its first
    /// keyframe has arrived whole (that checks the media), then counts video RTP by its
    /// clear-text header (SSRC, sequence number: loss is still exact), which costs a fraction
    /// of the CPU so the tool can run beside the server. Audio still goes through str0m, so the
    /// viewer keeps receiving and reporting a stream like a real one; it sends no video NACKs.
    /// Lossy viewers always decrypt everything.
    #[arg(long)]
    pub decrypt_all: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err("must be between 0 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let args = LoadtestArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TSBRIDGE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tsbridge-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run::run(&args)).and_then(|report| {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
        } else {
            print!("{}", report.text());
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsbridge-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
