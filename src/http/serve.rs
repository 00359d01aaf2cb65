//! The HTTP accept loop: HTTP/1.1 per connection, with the limits a server facing the internet
//! needs. A client has `--http-timeout` to send its request head and then its body (TS ingest
//! excepted: it streams for as long as its source runs); an idle keep-alive connection is
//! closed after the same time. At most `--max-connections` are open at once; past that a new
//! connection is answered 503 with Retry-After and closed, so idle or slow clients can hold
//! neither file descriptors nor memory without bound, and never delay anybody else's request.
//! One client address holds at most `--max-per-ip` of them (a trusted proxy's excepted). A
//! write the client does not take within `--http-timeout` ends the connection
//! ([`WriteTimeout`]), and TCP keepalive finds peers that vanished without a close.
//! With `--tls-cert/--tls-key` every connection is HTTPS (rustls; the handshake counts against
//! the same timeout).
//!
//! Stopping drains, as mini-redis does: when [`Stop`] fires the loop stops accepting (the
//! listener is closed, so new connections are refused by the kernel, not left in a queue),
//! every connection is told to finish its request in flight and close (idle keep-alive ones
//! close at once), and [`serve`] returns when all are gone or [`DRAIN`] has passed; what is
//! left then (a TS upload, a TS reader, an event stream) is cut when its task is dropped.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower_layer::Layer;
use tracing::{debug, warn};

use crate::limits::PerIp;

/// How long requests in flight get to finish once the server stops.
pub const DRAIN: Duration = Duration::from_secs(3);

/// The server's stop signal: `true` once it stops (a `watch`, so a connection that starts
/// waiting late still sees it).
pub type Stop = tokio::sync::watch::Receiver<bool>;

async fn stopped(stop: &mut Stop) {
    // An error means the sender is gone: the server is gone, which is a stop too.
    let _ = stop.wait_for(|s| *s).await;
}

/// The limits of the HTTP side.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// For the request head, a (non-streaming) body, and a write the client does not take.
    pub timeout: Duration,
    pub max_body: usize,
    /// Connections per client address (0: no cap); trusted proxies are not capped.
    pub max_per_ip: usize,
    pub trusted_proxies: Arc<[IpAddr]>,
}

impl From<&crate::config::ServeArgs> for HttpLimits {
    fn from(cfg: &crate::config::ServeArgs) -> Self {
        HttpLimits {
            max_connections: cfg.max_connections.max(1),
            timeout: cfg.http_timeout,
            max_body: cfg.max_body,
            max_per_ip: cfg.max_per_ip,
            trusted_proxies: cfg.trusted_proxies.as_slice().into(),
        }
    }
}

/// TCP keepalive on every accepted connection: a peer that vanished without a close (power
/// cut, NAT state lost) is found in about 30 s of silence rather than never.
fn keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        debug!(error = %e, "TCP keepalive not set");
    }
}

/// The TLS side of the listener, from PEM files: the certificate chain and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serve `router` on `listener` until `stop` fires, then drain (see the module docs; HTTPS
/// when `tls` is given).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: Stop,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerIp::new(
        limits.max_per_ip,
        "HTTP connections",
        &limits.trusted_proxies,
    );
    let mut full_logged = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be freed.
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if !full_logged {
                warn!(max = limits.max_connections, %peer,
                    "HTTP connection limit reached (--max-connections): answering 503");
                full_logged = true;
            }
            let why = "too many HTTP connections (--max-connections); retry later\n";
            tokio::spawn(refuse(tcp, why.into()));
            continue;
        };
        full_logged = false;
        let ip_slot = match per_ip.acquire(Some(peer.ip())) {
            Ok(slot) => slot,
            Err(e) => {
                tokio::spawn(refuse(tcp, format!("{e}\n")));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp);
        let timeout = limits.timeout;
        let tcp = WriteTimeout::new(tcp, timeout);
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(tcp, peer, router, timeout, stop).await,
                Some(tls) => match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => connection(stream, peer, router, timeout, stop).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                },
            }
            drop((permit, ip_slot));
        });
    }
    drop(listener);
    // Every connection holds a permit: all of them back means all connections are gone.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN, permits.acquire_many(all)).await;
    let left = limits.max_connections - permits.available_permits();
    match drained {
        Ok(_) => debug!("HTTP: every connection finished"),
        Err(_) => debug!(left, "HTTP: connections still open after the drain are cut"),
    }
}

async fn connection<I>(io: I, peer: SocketAddr, router: Router, timeout: Duration, mut stop: Stop)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Every request carries the client's address (`ConnectInfo`), for the auth hook and logs.
    let service = TowerToHyperService::new(axum::Extension(ConnectInfo(peer)).layer(router));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            // The request in flight is answered, then the connection closes.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// Past a connection limit: a short 503 and close (never a hang in the accept queue).
async fn refuse(mut tcp: TcpStream, body: String) {
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// A connection whose writes must be taken: a write or flush that makes no progress for
/// `limit` (the client stopped reading: a TS reader gone quiet, a half-open connection with
/// data queued) fails with `TimedOut`, which ends the connection and drops its response
/// (a TS reader's place with it). The timer runs only while a write waits; an idle
/// connection or a long WHEP wait is not affected.
struct WriteTimeout<I> {
    io: I,
    limit: Duration,
    /// Since the first write that could not go on.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteTimeout<I> {
    fn new(io: I, limit: Duration) -> Self {
        WriteTimeout {
            io,
            limit,
            stalled: None,
        }
    }

    /// After a write that could not go on: `Pending`, or the error once stalled too long.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no data for --http-timeout",
            ))),
        }
    }

    /// A write's outcome: progress (or an error) stops the timer, none starts it.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.track(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.track(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.track(cx, r)
    }
}

/// Middleware: read a request's body within the time limit (408 when it does not arrive, 413
/// when it is too large), so a handler never waits on a slow client. TS ingest streams its
/// body and is left alone.
pub async fn read_body_in_time(
    limits: axum::extract::State<HttpLimits>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().starts_with("/ingest/") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limits.max_body);
    let bytes = match tokio::time::timeout(limits.timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            let msg = format!(
                "request body larger than {} bytes (--max-body)\n",
                limits.max_body
            );
            return (StatusCode::PAYLOAD_TOO_LARGE, msg).into_response();
        }
        Ok(Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")).into_response();
        }
        Err(_) => {
            let msg = format!(
                "the request body did not arrive within {} s (--http-timeout)\n",
                limits.timeout.as_secs_f64()
            );
            let mut res = (StatusCode::REQUEST_TIMEOUT, msg).into_response();
            res.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return res;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
