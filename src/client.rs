//! The one HTTP/1.1 client of the project, on hyper: the auth and event hooks, the cluster's
//! inter-node TS pull, `tsbridge replay` (a paced chunked PUT), `tsbridge probe URL` and the
//! load tool (`tsbridge-loadtest`). `http://` and `https://` (rustls).
//!
//! ```text
//!  Request ─► connect (resolve, TCP, TLS) ─► hyper http1 ─► head ─► body: whole (capped)
//!             └──── Timeouts::connect ────┘                 │        or streamed to a sink
//!                                          Timeouts::head ──┘        Timeouts::first_data, ::idle
//!  └───────────────────────────── Timeouts::total (when set) ─────────────────────────────┘
//! ```
//!
//! Why it looks like this: the network on the other side may be dead, stopped (a SIGSTOPped
//! host still accepts TCP connections and acknowledges keepalives, but never answers) or
//! hostile. So every wait has a bound, and parsing is hyper's (heads capped in size and
//! header count, chunk sizes checked for overflow, chunks streamed, never preallocated):
//! nothing a server sends can panic this module or make it allocate without bound. Every
//! outcome that is not a response is a [`ClientError`] naming the URL (its query, which may
//! carry a token, left out) and what failed.
//!
//! One request per connection (`Connection: close`): the exchanges are few and small, or one
//! long stream; no pool to keep healthy. The connection's task is aborted when the call
//! returns or its future is dropped, so nothing outlives a call.
//!
//! TLS trusts the system's CA bundle (`SSL_CERT_FILE`, else the usual Linux/BSD paths), plus
//! the PEM file named by `TSBRIDGE_CA_FILE` (a private CA for node URLs); a [`Client`] can
//! also be built to trust exactly given roots ([`Client::with_roots_pem`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub use hyper::header::HeaderMap;
pub use hyper::Method;

/// Largest body a whole-body read accepts unless the request says otherwise
/// ([`Request::max_body`]): hooks, SDP and JSON are far smaller.
pub const MAX_BODY: usize = 1 << 20;
/// Largest response head (status line and header fields).
pub const MAX_HEAD: usize = 64 << 10;
/// Most header fields in a response head.
pub const MAX_HEADERS: usize = 64;
/// Read buffer cap per connection (hyper's minimum is 8 KiB).
const MAX_BUF: usize = 256 << 10;
/// TCP keepalive on streaming connections: probes after 10 s idle, every 5 s, 3 unanswered
/// ones end it — a host that vanished (power, cable) is noticed even when no data is due.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// Where Linux and BSD systems keep their CA bundle, in the order tried (rustls-native-certs'
/// and openssl's list, first existing file wins).
const CA_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

/// Everything that can end an exchange other than a response. `url` is the request's URL
/// without its query (a token may ride there).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {why}")]
    Url { url: String, why: &'static str },
    #[error("{url}: bad request header {name:?}")]
    Header { url: String, name: String },
    #[error("{url}: cannot resolve the host: {source}")]
    Resolve { url: String, source: io::Error },
    #[error("{url}: connect to {addr}: {source}")]
    Connect {
        url: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("{url}: not connected within {after:?}")]
    ConnectTimeout { url: String, after: Duration },
    #[error("{url}: TLS: {why}")]
    Tls { url: String, why: String },
    #[error("{url}: nothing received for {after:?} while waiting for {waiting_for}")]
    ReadTimeout {
        url: String,
        after: Duration,
        waiting_for: &'static str,
    },
    #[error("{url}: not finished within {after:?}")]
    TotalTimeout { url: String, after: Duration },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: response body over {limit} bytes")]
    BodyTooLarge { url: String, limit: usize },
    /// A response hyper would not take (head too large, bad chunk size, connection closed in
    /// the middle), or the connection failed while reading or writing.
    #[error("{url}: {source}")]
    Http { url: String, source: hyper::Error },
}

impl ClientError {
    /// A bound ran out (connect, read or total), rather than something refused or broken.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ClientError::ConnectTimeout { .. }
                | ClientError::ReadTimeout { .. }
                | ClientError::TotalTimeout { .. }
        )
    }
}

/// The bounds of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Resolving the host, the TCP connection and the TLS handshake, together.
    pub connect: Duration,
    /// From the request sent (for a streamed upload: from its end) to the whole response head.
    pub head: Duration,
    /// Longest wait for the body's first bytes: a TS pull waits for the next keyframe.
    pub first_data: Duration,
    /// Longest silence between two pieces of the body after the first (progress).
    pub idle: Duration,
    /// The whole exchange, connection to last byte; `None` for a stream that lasts.
    pub total: Option<Duration>,
}

impl Timeouts {
    /// Every bound `d`: a small exchange that must be over within `d`.
    pub const fn all(d: Duration) -> Timeouts {
        Timeouts {
            connect: d,
            head: d,
            first_data: d,
            idle: d,
            total: Some(d),
        }
    }

    /// A stream without an end: `connect` and `head` as given, then at most `idle` of
    /// silence, the first bytes included; no total.
    pub const fn stream(connect: Duration, head: Duration, idle: Duration) -> Timeouts {
        Timeouts {
            connect,
            head,
            first_data: idle,
            idle,
            total: None,
        }
    }

    /// The same with a longer wait for the body's first bytes.
    pub const fn first_data(self, d: Duration) -> Timeouts {
        Timeouts {
            first_data: d,
            ..self
        }
    }
}

/// What to send. `connect_to` skips resolving the URL's host (the load tool resolves once).
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    connect_to: Option<SocketAddr>,
    max_body: usize,
}

impl Request {
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            connect_to: None,
            max_body: MAX_BODY,
        }
    }

    pub fn get(url: impl Into<String>) -> Request {
        Request::new(Method::GET, url)
    }

    /// A header field, after `Host`.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The body, sent with its `Content-Length`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = body.into();
        self
    }

    /// Connect to `addr` rather than to what the URL's host resolves to (`Host` is still the
    /// URL's).
    pub fn connect_to(mut self, addr: SocketAddr) -> Request {
        self.connect_to = Some(addr);
        self
    }

    /// The largest response body a whole-body read takes ([`MAX_BODY`] unless set).
    pub fn max_body(mut self, limit: usize) -> Request {
        self.max_body = limit;
        self
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// A header's value by name (any case), if sent and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    tls: bool,
    /// Without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// `host[:port]` as written, for `Host`.
    authority: String,
    /// Path and query, `/` at least.
    path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ClientError> {
        let bad = |why| ClientError::Url {
            url: without_query(url).to_owned(),
            why,
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("only http:// and https:// URLs are supported")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Target {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        })
    }

    /// `host:port` (IPv6 in brackets), for resolving.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://authority`, no trailing slash.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// Path and query.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// For errors and logs: no query.
    fn shown(&self) -> String {
        format!("{}{}", self.origin(), without_query(&self.path))
    }
}

fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

/// Makes requests. Cheap to create and clone: the default TLS roots are loaded once per
/// process, on the first `https://` request.
#[derive(Clone, Default)]
pub struct Client {
    /// `None`: the process's roots (system bundle + `TSBRIDGE_CA_FILE`).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("own_roots", &self.tls.is_some())
            .finish()
    }
}

impl Client {
    pub fn new() -> Client {
        Client::default()
    }

    /// A client that trusts exactly the CA certificates in `pem` for `https://`.
    pub fn with_roots_pem(pem: &[u8]) -> Result<Client, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("CA certificates: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("CA certificates: none usable in the PEM".into());
        }
        Ok(Client {
            tls: Some(tls_config(roots)),
        })
    }

    /// One exchange; the whole response body is read (up to the request's `max_body`). Any
    /// status is a response: `Err` only when there is none.
    pub async fn request(&self, req: Request, t: Timeouts) -> Result<Response, ClientError> {
        let target = Target::parse(&req.url)?;
        let url = target.shown();
        bounded(&url, t.total, async {
            let conn = self
                .connect(&target, req.connect_to, t.connect, false)
                .await?;
            exchange(conn, &target, req, None, t, Read::Whole).await
        })
        .await
        .map(expect_whole)
    }

    /// GET-style streaming read: `sink` gets the body as it arrives until it ends or `sink`
    /// returns `false` (`Ok` both). A status other than 2xx is [`ClientError::Status`].
    /// TCP keepalive is on.
    pub async fn get_streaming(
        &self,
        req: Request,
        t: Timeouts,
        sink: impl FnMut(Bytes) -> bool + Send,
    ) -> Result<(), ClientError> {
        let target = Target::parse(&req.url)?;
        let url = target.shown();
        bounded(&url, t.total, async {
            let conn = self
                .connect(&target, req.connect_to, t.connect, true)
                .await?;
            exchange(conn, &target, req, None, t, Read::Stream(Box::new(sink))).await
        })
        .await
        .map(|_| ())
    }

    /// A streamed upload (chunked): the head and `req`'s headers, then every buffer `body`
    /// yields, until its senders are gone; then the response, read whole. The sender paces
    /// it (a bounded channel: a server that stops reading stops the sender, who bounds that
    /// wait). `t.head` runs from the end of the upload, as a server may answer only then; a
    /// server that answers early (a refusal) ends the upload. TCP keepalive is on.
    pub async fn put_streaming(
        &self,
        req: Request,
        body: mpsc::Receiver<Bytes>,
        t: Timeouts,
    ) -> Result<Response, ClientError> {
        let target = Target::parse(&req.url)?;
        let url = target.shown();
        bounded(&url, t.total, async {
            let conn = self
                .connect(&target, req.connect_to, t.connect, true)
                .await?;
            exchange(conn, &target, req, Some(body), t, Read::Whole).await
        })
        .await
        .map(expect_whole)
    }

    /// Resolve, connect, TLS: all within `within`.
    async fn connect(
        &self,
        target: &Target,
        connect_to: Option<SocketAddr>,
        within: Duration,
        keepalive: bool,
    ) -> Result<Conn, ClientError> {
        let url = target.shown();
        let connecting = async {
            let addrs: Vec<SocketAddr> = match connect_to {
                Some(a) => vec![a],
                None => tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await
                    .map_err(|source| ClientError::Resolve {
                        url: url.clone(),
                        source,
                    })?
                    .collect(),
            };
            let mut failed = None;
            let mut tcp = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(source) => failed = Some((addr, source)),
                }
            }
            let tcp = match (tcp, failed) {
                (Some(tcp), _) => tcp,
                (None, Some((addr, source))) => {
                    return Err(ClientError::Connect {
                        url: url.clone(),
                        addr,
                        source,
                    })
                }
                (None, None) => {
                    return Err(ClientError::Resolve {
                        url: url.clone(),
                        source: io::Error::other("no address"),
                    })
                }
            };
            // Best effort: a socket without these still works, with fewer safeguards.
            let _ = tcp.set_nodelay(true);
            if keepalive {
                let ka = socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE_IDLE)
                    .with_interval(KEEPALIVE_INTERVAL)
                    .with_retries(KEEPALIVE_RETRIES);
                let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
            }
            if !target.tls {
                return Ok(Conn::Tcp(tcp));
            }
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => default_tls().map_err(|why| ClientError::Tls {
                    url: url.clone(),
                    why,
                })?,
            };
            let tls_err = |why: String| ClientError::Tls {
                url: url.clone(),
                why,
            };
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| tls_err(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| tls_err(e.to_string()))?;
            Ok(Conn::Tls(Box::new(tls)))
        };
        tokio::time::timeout(within, connecting)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::ConnectTimeout {
                    url: url.clone(),
                    after: within,
                })
            })
    }
}

/// [`Client::request`] on a connection that is already open (a test's or fuzzer's in-memory
/// pipe); `req`'s URL gives `Host`, the path and the name in errors.
pub async fn request_on<IO>(io: IO, req: Request, t: Timeouts) -> Result<Response, ClientError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let target = Target::parse(&req.url)?;
    bounded(&target.shown(), t.total, async {
        exchange(io, &target, req, None, t, Read::Whole).await
    })
    .await
    .map(expect_whole)
}

/// [`Client::get_streaming`] on a connection that is already open.
pub async fn get_streaming_on<IO>(
    io: IO,
    req: Request,
    t: Timeouts,
    sink: impl FnMut(Bytes) -> bool + Send,
) -> Result<(), ClientError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let target = Target::parse(&req.url)?;
    bounded(&target.shown(), t.total, async {
        exchange(io, &target, req, None, t, Read::Stream(Box::new(sink))).await
    })
    .await
    .map(|_| ())
}

/// POST `json` (the hooks) and give the response's status; `within` bounds it all.
pub async fn post_json(url: &str, json: &str, within: Duration) -> Result<u16, ClientError> {
    let req = Request::new(Method::POST, url)
        .header("Content-Type", "application/json")
        .body(json.to_owned());
    Ok(Client::new()
        .request(req, Timeouts::all(within))
        .await?
        .status)
}

/// [`Client::get_streaming`] with the default client.
pub async fn get_streaming(
    req: Request,
    t: Timeouts,
    sink: impl FnMut(Bytes) -> bool + Send,
) -> Result<(), ClientError> {
    Client::new().get_streaming(req, t, sink).await
}

/// How the body is read.
enum Read<'a> {
    Whole,
    Stream(Box<dyn FnMut(Bytes) -> bool + Send + 'a>),
}

/// `Some` for a whole read.
type Exchanged = Option<Response>;

fn expect_whole(r: Exchanged) -> Response {
    r.expect("a whole-body exchange returns its response")
}

async fn bounded<T>(
    url: &str,
    total: Option<Duration>,
    f: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match total {
        None => f.await,
        Some(after) => tokio::time::timeout(after, f).await.unwrap_or_else(|_| {
            Err(ClientError::TotalTimeout {
                url: url.to_owned(),
                after,
            })
        }),
    }
}

/// Aborts the connection's task when dropped: nothing outlives the call.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An exchange's connection while its response body is read: dropped at the end of the
/// exchange (the driver first, which aborts the connection's task).
struct Open {
    _driver: Driver,
    _sender: hyper::client::conn::http1::SendRequest<ReqBody>,
}

/// Send `req` on `io` (an upload from `upload` instead of `req.body` when given) and read the
/// response as `read` says; bounded by `t` except `t.total` (the caller's) and `t.connect`.
async fn exchange<IO>(
    io: IO,
    target: &Target,
    req: Request,
    upload: Option<mpsc::Receiver<Bytes>>,
    t: Timeouts,
    read: Read<'_>,
) -> Result<Exchanged, ClientError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let url = target.shown();
    let max_body = req.max_body;
    let (request, upload_ended) = hyper_request(target, &url, req, upload)?;
    // The connection runs until `_open` is dropped: after the body has been read.
    let (response, _open) = send(io, request, upload_ended, t.head, &url).await?;
    match read {
        Read::Whole => read_whole(response, max_body, t, &url).await.map(Some),
        Read::Stream(sink) => read_stream(response, sink, t, &url).await.map(|()| None),
    }
}

/// `req` as hyper's request to `target`, with its body (or the `upload`, chunked: then also
/// the signal that the upload has ended).
fn hyper_request(
    target: &Target,
    url: &str,
    req: Request,
    upload: Option<mpsc::Receiver<Bytes>>,
) -> Result<(hyper::Request<ReqBody>, Option<oneshot::Receiver<()>>), ClientError> {
    let (body, upload_ended) = match upload {
        None => (ReqBody::Full(Some(req.body)), None),
        Some(rx) => {
            let (tx, ended) = oneshot::channel();
            (
                ReqBody::Channel {
                    rx,
                    ended: Some(tx),
                },
                Some(ended),
            )
        }
    };
    let mut head = hyper::Request::builder()
        .method(req.method)
        .uri(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONNECTION, "close")
        .header(
            hyper::header::USER_AGENT,
            concat!("tsbridge/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &req.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            return Err(ClientError::Header {
                url: url.to_owned(),
                name: k.clone(),
            });
        };
        head = head.header(name, value);
    }
    let request = head.body(body).map_err(|_| ClientError::Url {
        url: url.to_owned(),
        why: "not a valid request target",
    })?;
    Ok((request, upload_ended))
}

/// The HTTP/1 handshake on `io`, then `request` sent and its response head read, within
/// `head` of sending it (of the upload's end, `upload_ended`, for a streamed upload). The
/// connection stays [`Open`] while the body is read.
async fn send<IO>(
    io: IO,
    request: hyper::Request<ReqBody>,
    upload_ended: Option<oneshot::Receiver<()>>,
    head: Duration,
    url: &str,
) -> Result<(hyper::Response<Incoming>, Open), ClientError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let http = |source| ClientError::Http {
        url: url.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let _driver = Driver(tokio::spawn(async move {
        // Its errors reach the request's or the body's future too.
        let _ = conn.await;
    }));

    let responding = sender.send_request(request);
    let head_timeout = || ClientError::ReadTimeout {
        url: url.to_owned(),
        after: head,
        waiting_for: "the response head",
    };
    let response = match upload_ended {
        None => tokio::time::timeout(head, responding)
            .await
            .map_err(|_| head_timeout())?,
        Some(ended) => {
            tokio::pin!(responding);
            let after_upload = async {
                // Dropped unsent when hyper drops the body (a failure, an early answer):
                // `responding` has the outcome then.
                let _ = ended.await;
                tokio::time::sleep(head).await;
            };
            tokio::select! {
                r = &mut responding => r,
                () = after_upload => return Err(head_timeout()),
            }
        }
    }
    .map_err(http)?;
    Ok((
        response,
        Open {
            _driver,
            _sender: sender,
        },
    ))
}

/// What a body read waits for, as [`ClientError::ReadTimeout`] names it: its first bytes
/// (within `Timeouts::first_data`), then more (within `Timeouts::idle`).
const FIRST_DATA: &str = "the body's first bytes";
const MORE_DATA: &str = "more of the body";

/// The whole body, at most `limit` bytes.
async fn read_whole(
    response: hyper::Response<Incoming>,
    limit: usize,
    t: Timeouts,
    url: &str,
) -> Result<Response, ClientError> {
    let (parts, mut body) = response.into_parts();
    let too_large = || ClientError::BodyTooLarge {
        url: url.to_owned(),
        limit,
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut wait = (t.first_data, FIRST_DATA);
    let mut all = BytesMut::new();
    while let Some(data) = next_data(&mut body, wait, url).await? {
        if data.len() > limit - all.len() {
            return Err(too_large());
        }
        all.extend_from_slice(&data);
        if !data.is_empty() {
            wait = (t.idle, MORE_DATA);
        }
    }
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: all.freeze(),
    })
}

/// A 2xx response's body, piece by piece into `sink` until it returns false or the body ends.
async fn read_stream(
    response: hyper::Response<Incoming>,
    mut sink: Box<dyn FnMut(Bytes) -> bool + Send + '_>,
    t: Timeouts,
    url: &str,
) -> Result<(), ClientError> {
    let (parts, mut body) = response.into_parts();
    if !parts.status.is_success() {
        return Err(ClientError::Status {
            url: url.to_owned(),
            status: parts.status.as_u16(),
        });
    }
    let mut wait = (t.first_data, FIRST_DATA);
    while let Some(data) = next_data(&mut body, wait, url).await? {
        if data.is_empty() {
            continue;
        }
        wait = (t.idle, MORE_DATA);
        if !sink(data) {
            break;
        }
    }
    Ok(())
}

/// The body's next data (empty for a frame without any), `None` at its end; at most
/// `wait.0` of silence.
async fn next_data(
    body: &mut Incoming,
    wait: (Duration, &'static str),
    url: &str,
) -> Result<Option<Bytes>, ClientError> {
    match tokio::time::timeout(wait.0, body.frame()).await {
        Err(_) => Err(ClientError::ReadTimeout {
            url: url.to_owned(),
            after: wait.0,
            waiting_for: wait.1,
        }),
        Ok(None) => Ok(None),
        Ok(Some(Err(source))) => Err(ClientError::Http {
            url: url.to_owned(),
            source,
        }),
        // Trailers carry no data.
        Ok(Some(Ok(frame))) => Ok(Some(frame.into_data().unwrap_or_default())),
    }
}

/// A request's body: all at once, or streamed from a channel (chunked) with a signal when
/// it ends.
enum ReqBody {
    Full(Option<Bytes>),
    Channel {
        rx: mpsc::Receiver<Bytes>,
        ended: Option<oneshot::Sender<()>>,
    },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            ReqBody::Channel { rx, ended } => loop {
                match rx.poll_recv(cx) {
                    // An empty chunk would read as the end of a chunked body.
                    Poll::Ready(Some(b)) if b.is_empty() => continue,
                    Poll::Ready(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Poll::Ready(None) => {
                        if let Some(tx) = ended.take() {
                            let _ = tx.send(());
                        }
                        return Poll::Ready(None);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ReqBody::Full(b) if b.as_ref().is_none_or(Bytes::is_empty))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Channel { .. } => SizeHint::default(),
        }
    }
}

/// A connection, plain or TLS.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs's default provider supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The process's TLS client configuration: the system bundle (`SSL_CERT_FILE`, else the first
/// of [`CA_BUNDLES`] that exists) and `TSBRIDGE_CA_FILE`. Loaded once.
fn default_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static TLS: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        let system = std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                CA_BUNDLES
                    .iter()
                    .map(std::path::PathBuf::from)
                    .find(|p| p.is_file())
            });
        if let Some(path) = &system {
            // A bundle may hold entries rustls cannot use: those are skipped.
            if let Ok(certs) = CertificateDer::pem_file_iter(path) {
                roots.add_parsable_certificates(certs.flatten());
            }
        }
        if let Some(path) = std::env::var_os("TSBRIDGE_CA_FILE") {
            let path = std::path::PathBuf::from(path);
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("TSBRIDGE_CA_FILE {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "TSBRIDGE_CA_FILE {}: no usable certificate in it",
                    path.display()
                ));
            }
        }
        if roots.is_empty() {
            return Err(
                "no CA certificates to verify servers with: no system bundle found \
                 (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt, …); set TSBRIDGE_CA_FILE"
                    .into(),
            );
        }
        Ok(tls_config(roots))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_and_path() {
        let t = Target::parse("http://127.0.0.1:8889/ingest/a?token=x").unwrap();
        assert_eq!(t.host_port(), "127.0.0.1:8889");
        assert_eq!(t.path(), "/ingest/a?token=x");
        assert_eq!(t.origin(), "http://127.0.0.1:8889");
        assert_eq!(t.shown(), "http://127.0.0.1:8889/ingest/a");
        let t = Target::parse("http://h").unwrap();
        assert_eq!((t.host_port().as_str(), t.path()), ("h:80", "/"));
        let t = Target::parse("https://[::1]/x").unwrap();
        assert_eq!((t.host_port().as_str(), t.is_tls()), ("[::1]:443", true));
        assert_eq!(t.origin(), "https://[::1]");
    }

    #[test]
    fn bad_urls_are_errors_that_hide_the_query() {
        for url in [
            "ftp://h/x?token=secret",
            "http:///x?token=secret",
            "h:80/x?token=secret",
            "http://u:p@h/x?token=secret",
            "",
        ] {
            let e = Target::parse(url).unwrap_err();
            assert!(matches!(e, ClientError::Url { .. }), "{url}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    async fn answer(raw: &'static [u8], t: Timeouts) -> Result<Response, ClientError> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server.write_all(raw).await;
            // Keep the pipe open: the client must end on its own.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        request_on(client, Request::get("http://h/x"), t).await
    }

    #[tokio::test]
    async fn whole_responses_give_status_headers_and_body() {
        let t = Timeouts::all(Duration::from_secs(5));
        let r = answer(
            b"HTTP/1.1 201 Created\r\nlocation: /whep/a/1\r\ncontent-length: 3\r\n\r\nv=0xx",
            t,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("Location"), Some("/whep/a/1"));
        assert_eq!(&r.body[..], b"v=0");
        let r = answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            t,
        )
        .await
        .unwrap();
        assert_eq!(&r.body[..], b"abcde");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_before_it_is_read() {
        let t = Timeouts::all(Duration::from_secs(5));
        let e = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\nab", t)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::BodyTooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_head_cut_short_is_an_error() {
        // The head's bound well inside the total one, so that it is the one that fires.
        let t = Timeouts {
            head: Duration::from_millis(300),
            ..Timeouts::all(Duration::from_secs(10))
        };
        let e = answer(b"HTTP/1.1 200 OK\r\ncontent-le", t)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::ReadTimeout {
                    waiting_for: "the response head",
                    ..
                }
            ),
            "{e}"
        );
    }
}
