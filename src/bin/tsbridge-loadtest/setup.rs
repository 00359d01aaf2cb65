//! Setting a viewer up: its own UDP socket, a recvonly H.264 + Opus offer, the WHEP POST
//! (through the library's HTTP client), the answer; and at the end, the DELETE.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::config::DtlsCert;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, RtcConfig};
use tokio::net::UdpSocket;
use tsbridge::client::{self, split_url};

use crate::event_loop::NewViewer;
use crate::viewer::{Stats, H264_OFFER};

/// What every viewer start needs.
pub(crate) struct Setup {
    pub(crate) server: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) local_ip: IpAddr,
    pub(crate) cert: DtlsCert,
    pub(crate) connect_timeout: Duration,
}

/// A viewer that failed before reaching an event loop.
pub(crate) struct SetupError {
    pub(crate) why: String,
    pub(crate) detail: String,
    pub(crate) location: Option<String>,
}

impl SetupError {
    pub(crate) fn new(why: impl Into<String>, detail: impl ToString) -> Self {
        SetupError {
            why: why.into(),
            detail: detail.to_string(),
            location: None,
        }
    }
}

pub(crate) async fn start_viewer(setup: Arc<Setup>, drop: f64) -> Result<NewViewer, SetupError> {
    let t0 = Instant::now();
    let deadline = t0 + setup.connect_timeout;
    let socket = viewer_socket(setup.local_ip)
        .map_err(|e| SetupError::new(format!("UDP socket: {:?}", e.kind()), e))?;
    let local = socket
        .local_addr()
        .map_err(|e| SetupError::new("UDP socket", e))?;

    let mut cfg = RtcConfig::new()
        .clear_codecs()
        .set_rtp_mode(true)
        .set_dtls_cert(setup.cert.clone());
    let codecs = cfg.codec_config();
    for (pt, rtx, plid) in H264_OFFER {
        codecs.add_h264(pt.into(), Some(rtx.into()), true, plid);
    }
    cfg = cfg.enable_opus(true, false);
    let mut rtc = cfg.build(Instant::now());
    let candidate =
        Candidate::host(local, "udp").map_err(|e| SetupError::new("local candidate", e))?;
    rtc.add_local_candidate(candidate);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| SetupError::new("offer", "no changes to offer"))?;

    let res = tokio::time::timeout(
        setup.connect_timeout,
        client::request(
            setup.server,
            &setup.host,
            "POST",
            &setup.path,
            &[("Content-Type", "application/sdp")],
            offer.to_sdp_string().as_bytes(),
        ),
    )
    .await
    .map_err(|_| SetupError::new("HTTP timeout", "no answer to the POST"))?
    .map_err(|e| SetupError::new(format!("HTTP: {:?}", e.kind()), e))?;
    let answered = t0.elapsed();
    let location = res.head.header("location").map(str::to_string);
    let body = String::from_utf8_lossy(&res.body);
    if res.head.status != 201 && res.head.status != 200 {
        let mut err = SetupError::new(format!("HTTP {}", res.head.status), body.trim());
        err.location = location;
        return Err(err);
    }
    let fail = |why: &str, detail: String| SetupError {
        why: why.into(),
        detail,
        location: location.clone(),
    };
    let answer =
        SdpAnswer::from_sdp_string(&body).map_err(|e| fail("bad SDP answer", e.to_string()))?;
    // The answer is network input: keep a panic inside the stack to this viewer.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rtc.sdp_api().accept_answer(pending, answer)
    }))
    .map_err(|_| fail("answer not accepted", "panic in the WebRTC stack".into()))?
    .map_err(|e| fail("answer not accepted", e.to_string()))?;

    let mut stats = Stats::new(t0);
    stats.drop = drop;
    stats.location = location;
    stats.answered = Some(answered);
    Ok(NewViewer {
        rtc,
        socket,
        local,
        stats,
        deadline,
    })
}

/// Receive buffer per viewer socket: ~2 s of a 2 Mbit/s stream, so that a client briefly
/// starved of CPU (it shares the machine with the server) does not turn that into loss.
const VIEWER_RCVBUF: usize = 512 << 10;

/// A viewer's own UDP socket on an ephemeral port.
fn viewer_socket(ip: IpAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Capped by net.core.rmem_max; best effort.
    let _ = socket.set_recv_buffer_size(VIEWER_RCVBUF);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// DELETE a session by its `Location` (a path on the same server, or an absolute http:// URL).
pub(crate) async fn delete_session(server: SocketAddr, host: &str, location: &str) -> bool {
    let (server, host, path) = if location.starts_with("http://") {
        let Ok((h, p)) = split_url(location) else {
            return false;
        };
        match resolve(&h).await {
            Ok(addr) => (addr, h, p),
            Err(_) => return false,
        }
    } else {
        (server, host.to_string(), location.to_string())
    };
    match client::request(server, &host, "DELETE", &path, &[], b"").await {
        Ok(r) => (200..300).contains(&r.head.status),
        Err(_) => false,
    }
}

pub(crate) async fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// The local address the kernel would use to reach `to` (no packet is sent).
pub(crate) fn route_to(to: IpAddr) -> Option<IpAddr> {
    if to.is_loopback() {
        return Some(to);
    }
    let any: IpAddr = match to {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    s.connect(SocketAddr::new(to, 9)).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}
