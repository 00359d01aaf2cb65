//! A lossy UDP link between a sender and tsbridge (or any UDP service), to try settings such as
//! `--srt-latency-ms` against loss, duplicates, reordering and jitter before a real network does
//! it to you. No root or netem needed.
//!
//! ```text
//! cargo run --example lossy_relay -- --listen 127.0.0.1:9000 --to 127.0.0.1:5000 \
//!     --loss 5 --reorder 10 --jitter-ms 30
//! ffmpeg -re -i in.ts -c copy -f rtp_mpegts rtp://127.0.0.1:9000   # sender → relay
//! tsbridge serve --udp cam=127.0.0.1:5000                           # relay → tsbridge
//! ```
//!
//! Replies (SRT acknowledgements, RTCP) go back through the relay with the same impairments
//! unless `--forward-only`. Counters are printed every 5 s.

#[path = "../tests/common/relay.rs"]
mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use relay::{Impairment, Relay};

#[derive(Parser)]
#[command(about = "A lossy UDP link: drops, duplicates, reorders and delays datagrams, both ways")]
struct Args {
    /// Address senders send to.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Where datagrams go (the tsbridge --udp / --srt-listen address).
    #[arg(long)]
    to: SocketAddr,
    /// Datagrams dropped, in percent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Datagrams sent twice, in percent.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Datagrams held back by --reorder-ms so later ones overtake them, in percent.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// How long a reordered datagram is held back, in milliseconds.
    #[arg(long, default_value_t = 10)]
    reorder_ms: u64,
    /// Fixed one-way delay, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra one-way delay, uniform between 0 and this, in milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Leave the return path (upstream → sender) clean.
    #[arg(long)]
    forward_only: bool,
    /// Seed of the random choices (the same seed and traffic give the same losses).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let imp = Impairment {
        loss: a.loss / 100.0,
        duplicate: a.dup / 100.0,
        reorder: a.reorder / 100.0,
        reorder_hold: Duration::from_millis(a.reorder_ms),
        delay: Duration::from_millis(a.delay_ms),
        jitter: Duration::from_millis(a.jitter_ms),
    };
    let back = if a.forward_only {
        Impairment::NONE
    } else {
        imp
    };
    let relay = Relay::start(a.listen, a.to, imp, back, a.seed).await?;
    println!("relaying {} -> {} ({imp:?})", relay.addr(), a.to);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        println!("forward:  {}", relay.stats.forward.summary());
        println!("backward: {}", relay.stats.backward.summary());
    }
    println!("forward:  {}", relay.stats.forward.summary());
    println!("backward: {}", relay.stats.backward.summary());
    Ok(())
}
