//! A tiny HTTP/1.1 client over `tokio::net::TcpStream`, for tests.
//!
//! Only `http://host:port/path` URLs. Every request is sent with `Connection: close` on a fresh
//! connection, so a response without `Content-Length` or chunking simply ends at EOF. Responses
//! with `Content-Length` and `Transfer-Encoding: chunked` are both handled, `1xx` interim responses
//! are skipped. Because it writes the request bytes itself, tests can also send malformed
//! requests ([`request_raw`]) and stream bodies in either direction ([`open`], [`ChunkedUpload`]).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Default limit for a whole request/response exchange. A WHEP POST may legitimately wait for its
/// stream (the server's `--whep-wait`, 15 s by default), so this is generous.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` (port defaults to 80).
    pub authority: String,
    /// Path plus query, always starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("only http:// URLs are supported: {url:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("no host in URL {url:?}"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            path: path.to_owned(),
        })
    }

    /// `http://authority/path`.
    pub fn to_url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }

    /// Resolves a `Location`-style reference against this URL: absolute `http://…` URLs are taken
    /// as they are, `/abs/path` replaces the path, anything else is relative to the last `/`.
    pub fn join(&self, reference: &str) -> String {
        if reference.starts_with("http://") || reference.starts_with("https://") {
            reference.to_owned()
        } else if reference.starts_with('/') {
            format!("http://{}{}", self.authority, reference)
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("http://{}{}{}", self.authority, dir, reference)
        }
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Reason phrase from the status line.
    pub reason: String,
    /// Header names and values in the order received (names as sent by the server).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// Every header with this name, case-insensitively.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sends one request and reads the whole response, within [`DEFAULT_TIMEOUT`].
///
/// `Host`, `Connection: close` and (when `body` is non-empty or the method is POST/PUT/PATCH)
/// `Content-Length` are added unless `headers` already has them.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    request_with_timeout(method, url, headers, body, DEFAULT_TIMEOUT).await
}

/// [`request`] with an explicit overall timeout.
pub async fn request_with_timeout(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let fut = async {
        let mut resp = open(method, url, headers, body).await?;
        let body = resp.body.read_to_end().await?;
        Ok(HttpResponse {
            status: resp.status,
            reason: resp.reason,
            headers: resp.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("{method} {url}: no complete response within {timeout:?}"))?
}

/// Writes `raw` verbatim to `authority` (`host:port`) and reads one response. For malformed
/// requests; the caller writes everything, including `Connection: close` if it wants EOF framing.
pub async fn request_raw(authority: &str, raw: &[u8]) -> Result<HttpResponse, String> {
    let fut = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        stream
            .write_all(raw)
            .await
            .map_err(|e| format!("write to {authority}: {e}"))?;
        let mut resp = read_response_head(stream, false).await?;
        let body = resp.body.read_to_end().await?;
        Ok(HttpResponse {
            status: resp.status,
            reason: resp.reason,
            headers: resp.headers,
            body,
        })
    };
    tokio::time::timeout(DEFAULT_TIMEOUT, fut)
        .await
        .map_err(|_| {
            format!("raw request to {authority}: no response within {DEFAULT_TIMEOUT:?}")
        })?
}

/// A response whose body has not been read yet (for endless bodies such as `GET /streams/x.ts`).
pub struct StreamingResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: BodyReader,
}

impl StreamingResponse {
    /// First header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

/// Sends a request and returns once the response head is in; read the body with
/// [`BodyReader::chunk`] or [`BodyReader::read_to_end`]. No timeout: wrap it yourself.
pub async fn open(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<StreamingResponse, String> {
    let u = Url::parse(url)?;
    let mut stream = TcpStream::connect(&u.authority)
        .await
        .map_err(|e| format!("connect {}: {e}", u.authority))?;
    let mut head = request_head(method, &u, headers);
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("content-length")
        && !has("transfer-encoding")
        && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut buf = head.into_bytes();
    buf.extend_from_slice(body);
    stream
        .write_all(&buf)
        .await
        .map_err(|e| format!("{method} {url}: write: {e}"))?;
    read_response_head(stream, method == "HEAD").await
}

fn request_head(method: &str, u: &Url, headers: &[(&str, &str)]) -> String {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {} HTTP/1.1\r\n", u.path);
    if !has("host") {
        head.push_str(&format!("Host: {}\r\n", u.authority));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head
}

/// A request whose body is sent with `Transfer-Encoding: chunked`, piece by piece (e.g. `PUT
/// /ingest/{s}` paced like a live source).
pub struct ChunkedUpload {
    stream: TcpStream,
    what: String,
}

impl ChunkedUpload {
    /// Connects and sends the request head (with `Transfer-Encoding: chunked`).
    pub async fn start(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<ChunkedUpload, String> {
        let u = Url::parse(url)?;
        let mut stream = TcpStream::connect(&u.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", u.authority))?;
        let mut head = request_head(method, &u, headers);
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("{method} {url}: write head: {e}"))?;
        Ok(ChunkedUpload {
            stream,
            what: format!("{method} {url}"),
        })
    }

    /// Sends one chunk (an empty slice is skipped: it would end the body).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = format!("{:x}\r\n", data.len()).into_bytes();
        buf.extend_from_slice(data);
        buf.extend_from_slice(b"\r\n");
        self.stream
            .write_all(&buf)
            .await
            .map_err(|e| format!("{}: write chunk: {e}", self.what))
    }

    /// Sends the last chunk and reads the whole response.
    pub async fn finish(mut self) -> Result<HttpResponse, String> {
        self.stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| format!("{}: write last chunk: {e}", self.what))?;
        let mut resp = read_response_head(self.stream, false).await?;
        let body = resp.body.read_to_end().await?;
        Ok(HttpResponse {
            status: resp.status,
            reason: resp.reason,
            headers: resp.headers,
            body,
        })
    }

    /// Drops the connection without ending the body (a source that dies mid-stream).
    pub fn abort(self) {}
}

enum Framing {
    Length(u64),
    Chunked { left_in_chunk: u64, done: bool },
    Eof,
}

/// Reads a response body incrementally, de-chunking if needed.
pub struct BodyReader {
    stream: TcpStream,
    buf: Vec<u8>,
    framing: Framing,
    eof: bool,
}

impl BodyReader {
    async fn fill(&mut self) -> Result<usize, String> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut tmp)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.eof || self.fill().await? == 0 {
                return Err("connection closed inside a chunked body".into());
            }
        }
    }

    /// The next piece of the body, `None` at its end. Pieces follow the network reads (and chunk
    /// boundaries), not any application framing.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(left) => {
                if self.buf.is_empty() && (self.eof || self.fill().await? == 0) {
                    return Err(format!("connection closed with {left} body bytes missing"));
                }
                let n = (left as usize).min(self.buf.len());
                let out: Vec<u8> = self.buf.drain(..n).collect();
                self.framing = Framing::Length(left - n as u64);
                Ok(Some(out))
            }
            Framing::Eof => {
                if self.buf.is_empty() && (self.eof || self.fill().await? == 0) {
                    return Ok(None);
                }
                Ok(Some(std::mem::take(&mut self.buf)))
            }
            Framing::Chunked { done: true, .. } => Ok(None),
            Framing::Chunked {
                left_in_chunk: 0, ..
            } => {
                let line = self.line().await?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| format!("bad chunk size line {line:?}"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        if self.line().await?.is_empty() {
                            break;
                        }
                    }
                    self.framing = Framing::Chunked {
                        left_in_chunk: 0,
                        done: true,
                    };
                    return Ok(None);
                }
                self.framing = Framing::Chunked {
                    left_in_chunk: size,
                    done: false,
                };
                Box::pin(self.chunk()).await
            }
            Framing::Chunked { left_in_chunk, .. } => {
                if self.buf.is_empty() && (self.eof || self.fill().await? == 0) {
                    return Err("connection closed inside a chunk".into());
                }
                let n = (left_in_chunk as usize).min(self.buf.len());
                let out: Vec<u8> = self.buf.drain(..n).collect();
                let left = left_in_chunk - n as u64;
                if left == 0 {
                    // The CRLF after the chunk data.
                    while self.buf.len() < 2 {
                        if self.eof || self.fill().await? == 0 {
                            return Err("connection closed after chunk data".into());
                        }
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    self.buf.drain(..2);
                }
                self.framing = Framing::Chunked {
                    left_in_chunk: left,
                    done: false,
                };
                Ok(Some(out))
            }
        }
    }

    /// Reads until the end of the body.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// Reads until at least `n` body bytes have arrived (or the body ends); returns what came.
    pub async fn read_at_least(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.chunk().await? {
                Some(c) => out.extend_from_slice(&c),
                None => break,
            }
        }
        Ok(out)
    }
}

async fn read_response_head(
    stream: TcpStream,
    head_only: bool,
) -> Result<StreamingResponse, String> {
    let mut body = BodyReader {
        stream,
        buf: Vec::new(),
        framing: Framing::Eof,
        eof: false,
    };
    loop {
        let end = loop {
            if let Some(i) = body.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if body.buf.len() > 64 * 1024 {
                return Err("response head larger than 64 KiB".into());
            }
            if body.eof || body.fill().await? == 0 {
                return Err(format!(
                    "connection closed before a complete response head ({} bytes: {:?})",
                    body.buf.len(),
                    String::from_utf8_lossy(&body.buf)
                ));
            }
        };
        let head = String::from_utf8_lossy(&body.buf[..end]).into_owned();
        body.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {status_line:?}"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let reason = parts.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        for line in lines {
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response, e.g. 100 Continue
        }
        let chunked = header_of(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        body.framing = if head_only || status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked {
                left_in_chunk: 0,
                done: false,
            }
        } else if let Some(len) = header_of(&headers, "content-length") {
            Framing::Length(
                len.parse()
                    .map_err(|_| format!("bad Content-Length {len:?}"))?,
            )
        } else {
            Framing::Eof
        };
        return Ok(StreamingResponse {
            status,
            reason,
            headers,
            body,
        });
    }
}
