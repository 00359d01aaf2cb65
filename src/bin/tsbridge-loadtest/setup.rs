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
use tsbridge::client::{Client, ClientError, Method, Request, Timeouts};

use crate::event_loop::NewViewer;
use crate::viewer::{Stats, H264_OFFER};

/// What every viewer start needs.
pub(crate) struct Setup {
    /// Where the WHEP URL's host was resolved to, once.
    pub(crate) server: SocketAddr,
    /// The WHEP URL.
    pub(crate) url: String,
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

    let post = Request::new(Method::POST, setup.url.as_str())
        .header("Content-Type", "application/sdp")
        .body(offer.to_sdp_string())
        .connect_to(setup.server);
    let res = Client::new()
        .request(post, Timeouts::all(setup.connect_timeout))
        .await
        .map_err(|e| SetupError::new(error_kind(&e), e))?;
    let answered = t0.elapsed();
    let location = res.header("location").map(str::to_string);
    let body = String::from_utf8_lossy(&res.body);
    if res.status != 201 && res.status != 200 {
        let mut err = SetupError::new(format!("HTTP {}", res.status), body.trim());
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

/// How a failed POST is counted in the report.
fn error_kind(e: &ClientError) -> String {
    match e {
        _ if e.is_timeout() => "HTTP timeout".into(),
        ClientError::Connect { source, .. } => format!("HTTP: {:?}", source.kind()),
        ClientError::Http { .. } => "HTTP: bad or cut response".into(),
        ClientError::BodyTooLarge { .. } => "HTTP: answer too large".into(),
        _ => "HTTP".into(),
    }
}

/// Bounds of a DELETE.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// DELETE a session by its `Location`: a path on the server at `origin` (resolved to
/// `server`), or an absolute URL.
pub(crate) async fn delete_session(server: SocketAddr, origin: &str, location: &str) -> bool {
    let req = if location.starts_with("http://") || location.starts_with("https://") {
        Request::new(Method::DELETE, location)
    } else {
        Request::new(Method::DELETE, format!("{origin}{location}")).connect_to(server)
    };
    match Client::new()
        .request(req, Timeouts::all(DELETE_TIMEOUT))
        .await
    {
        Ok(r) => (200..300).contains(&r.status),
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
