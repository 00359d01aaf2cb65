//! MPEG-TS over UDP, unicast or multicast (the group is joined on all interfaces), plain or
//! wrapped in RTP (RFC 2250: detected per datagram, put back in sequence order, gaps counted;
//! see [`super::rtp`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{info, warn};

use super::rtp::{Detected, RtpReceiver};
use crate::stream::{SourceGuard, Stream};

/// Silence longer than this ends the input (viewers then see the source as ended).
const IDLE: Duration = Duration::from_secs(5);

pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    // Room for bursts: 4 MB (the kernel may cap it at net.core.rmem_max).
    let _ = socket.set_recv_buffer_size(4 << 20);
    let multicast = addr.ip().is_multicast();
    let bind_to: SocketAddr = if multicast {
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port())
    } else {
        addr
    };
    socket.bind(&bind_to.into())?;
    if let SocketAddr::V4(v4) = addr {
        if multicast {
            socket.join_multicast_v4(v4.ip(), &Ipv4Addr::UNSPECIFIED)?;
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Receives `addr` into `stream` until the socket fails; `reorder` is how long an RTP packet
/// may wait for the ones before it (`--udp-reorder-ms`).
pub async fn run(stream: Arc<Stream>, addr: SocketAddr, reorder: Duration) -> std::io::Result<()> {
    let socket = bind(addr)?;
    info!(stream = %stream.name, %addr, "listening for MPEG-TS over UDP (plain or RTP)");
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536);
    let mut rtp = RtpReceiver::new(reorder);
    let mut guard: Option<SourceGuard> = None;
    let mut reported_loss = 0;
    loop {
        let deadline = rtp.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = tokio::time::timeout(IDLE, socket.recv_from(&mut buf)) => match r {
                Ok(Ok((n, from))) => {
                    let g = guard.get_or_insert_with(|| {
                        info!(stream = %stream.name, %from, "UDP source started");
                        stream.attach_source()
                    });
                    match rtp.push(from, &buf[..n], std::time::Instant::now(), &mut out) {
                        Some(Detected::Rtp { payload_type, ssrc }) => info!(
                            stream = %stream.name, %from, payload_type, ssrc = format_args!("{ssrc:08x}"),
                            "RTP-wrapped TS: headers stripped, reordered within {reorder:?}"
                        ),
                        Some(Detected::Plain) => {
                            tracing::debug!(stream = %stream.name, %from, "plain TS over UDP")
                        }
                        None => {}
                    }
                    if !out.is_empty() {
                        g.write(&out);
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    if let Some(g) = guard.take() {
                        rtp.flush(&mut out);
                        if !out.is_empty() {
                            g.write(&out);
                        }
                        let c = rtp.counts();
                        info!(
                            stream = %stream.name, rtp_packets = c.packets, lost = c.lost,
                            reordered = c.reordered, duplicates = c.duplicates, late = c.late,
                            "UDP source silent for {IDLE:?}; input ended"
                        );
                    }
                }
            },
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if deadline.is_some() => {
                rtp.poll(std::time::Instant::now(), &mut out);
                if let Some(g) = guard.as_ref().filter(|_| !out.is_empty()) {
                    g.write(&out);
                }
            }
        }
        out.clear();
        let c = rtp.counts();
        stream.stats.link.set_rtp(c);
        // One line when loss starts, then at most one per 1000 packets lost: a bad link is
        // told without a line per gap.
        if c.lost > reported_loss && (reported_loss == 0 || c.lost >= reported_loss + 1000) {
            warn!(
                stream = %stream.name, lost = c.lost, packets = c.packets,
                "RTP packets lost on the way in (see /streams/{{s}} \"rtp\")"
            );
            reported_loss = c.lost;
        }
    }
}
