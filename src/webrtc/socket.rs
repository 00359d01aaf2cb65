//! The media sockets: one UDP socket per shard on the same port (`SO_REUSEPORT`), and the
//! host candidates announced for it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tracing::warn;

/// One shard's media socket, with room for bursts (a new viewer's GOP backlog, many viewers).
/// Every shard binds the same address (`SO_REUSEPORT`).
pub(super) fn bind_media_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel may cap these at net.core.{w,r}mem_max; best effort.
    let _ = socket.set_send_buffer_size(8 << 20);
    let _ = socket.set_recv_buffer_size(4 << 20);
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Host candidate addresses for a socket bound to `local`.
pub(super) async fn announce_addresses(local: SocketAddr, hosts: &[String]) -> Vec<SocketAddr> {
    let port = local.port();
    let mut out = Vec::new();
    for h in hosts {
        match h.parse::<IpAddr>() {
            Ok(ip) => out.push(SocketAddr::new(ip, port)),
            Err(_) => match tokio::net::lookup_host((h.as_str(), port)).await {
                Ok(addrs) => out.extend(addrs.filter(|a| a.is_ipv4())),
                Err(e) => warn!(host = %h, error = %e, "--ice-host name does not resolve; skipped"),
            },
        }
    }
    if out.is_empty() {
        if local.ip().is_unspecified() {
            out.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
            if let Some(ip) = primary_ip() {
                out.push(SocketAddr::new(ip, port));
            }
        } else {
            out.push(local);
        }
    }
    out.dedup();
    out
}

/// The address of the default route (no packet is sent: connect() on UDP only picks a route).
fn primary_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}
