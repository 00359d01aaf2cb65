//! MPEG-TS over UDP, unicast or multicast (the group is joined on all interfaces).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::info;

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

pub async fn run(stream: Arc<Stream>, addr: SocketAddr) -> std::io::Result<()> {
    let socket = bind(addr)?;
    info!(stream = %stream.name, %addr, "listening for MPEG-TS over UDP");
    let mut buf = vec![0u8; 65536];
    let mut guard: Option<SourceGuard> = None;
    loop {
        match tokio::time::timeout(IDLE, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                let g = guard.get_or_insert_with(|| {
                    info!(stream = %stream.name, %from, "UDP source started");
                    stream.attach_source()
                });
                g.write(&buf[..n]);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                if guard.take().is_some() {
                    info!(stream = %stream.name, "UDP source silent for {IDLE:?}; input ended");
                }
            }
        }
    }
}
