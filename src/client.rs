//! A minimal HTTP/1.1 client for `tsbridge replay`, `probe URL`, the load tool
//! (`tsbridge-loadtest`) and the operator's hooks: no TLS, small exchanges.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `http://host:port/path?q` → ("host:port", "/path?q").
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

/// Read a response head and a Content-Length (or to-EOF) body.
pub async fn read_response(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u16, String)> {
    let mut r = BufReader::new(r);
    let (status, len, _) = read_head(&mut r).await?;
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).await?;
        }
        None => {
            r.read_to_end(&mut body).await?;
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Status, Content-Length, and whether the body is chunked. A head cut short by the end of
/// the input ends there (see [`request`] for a strict reader).
pub async fn read_head(
    r: &mut (impl AsyncBufReadExt + Unpin),
) -> std::io::Result<(u16, Option<usize>, bool)> {
    let (head, _complete) = read_head_fields(r).await?;
    Ok((head.status, head.content_length(), head.chunked()))
}

/// A response head: the status and the header fields in the order sent (names lower-cased,
/// values trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// A header's value by its name (any case); the last one if it was sent more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Length`, if sent and a number.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    /// Whether a `Transfer-Encoding: chunked` was sent.
    pub fn chunked(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    }
}

/// Reads a head up to its blank line; `false` when the input ended before it.
async fn read_head_fields(r: &mut (impl AsyncBufReadExt + Unpin)) -> std::io::Result<(Head, bool)> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    let complete = loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            break false;
        }
        if line.trim().is_empty() {
            break true;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    };
    Ok((Head { status, headers }, complete))
}

/// A whole response: its head and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

/// Largest response [`request`] reads, head and body: it is for small exchanges (SDP, JSON).
pub const MAX_RESPONSE: u64 = 1 << 20;

/// One request on its own connection (`Connection: close`): `headers` after `Host`, then a
/// `Content-Length` for `body` (0 when empty). The response is read as [`read_whole_response`]
/// reads it.
pub async fn request(
    server: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += &format!("Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    tcp.write_all(&bytes).await?;
    read_whole_response(&mut tcp.take(MAX_RESPONSE)).await
}

/// POST `json` to an `http://` URL (the auth and event hooks); the response's status.
pub async fn post_json(url: &str, json: &str) -> std::io::Result<u16> {
    let (host, path) = split_url(url).map_err(std::io::Error::other)?;
    let server = tokio::net::lookup_host(&host)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host}: no address")))?;
    let headers = [("Content-Type", "application/json")];
    let r = request(server, &host, "POST", &path, &headers, json.as_bytes()).await?;
    Ok(r.head.status)
}

/// GET `url` and hand its body to `sink` as it arrives (chunked or not), until it ends or
/// `sink` says stop (`false`). `Err` for a failed connection or a status other than 200.
pub async fn get_streaming(
    url: &str,
    headers: &[(&str, &str)],
    mut sink: impl FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let (host, path) = split_url(url)?;
    let tcp = TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(tcp);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    r.get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let (status, _, chunked) = read_head(&mut r).await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = String::new();
    loop {
        let n = if chunked {
            line.clear();
            if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Ok(());
            }
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| "bad chunk size".to_string())?;
            if n == 0 {
                return Ok(());
            }
            buf.resize(buf.len().max(n + 2), 0);
            r.read_exact(&mut buf[..n + 2])
                .await
                .map_err(|e| e.to_string())?;
            n
        } else {
            match r.read(&mut buf).await.map_err(|e| e.to_string())? {
                0 => return Ok(()),
                n => n,
            }
        };
        if !sink(&buf[..n]) {
            return Ok(());
        }
    }
}

/// A response from a connection the server closes after it: the head must end with its blank
/// line; the body is `Content-Length` bytes, or fewer if the input ends first, or everything
/// to the end without one. Chunked bodies are not decoded.
pub async fn read_whole_response(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Response> {
    let mut r = BufReader::new(r);
    let (head, complete) = read_head_fields(&mut r).await?;
    if !complete {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the response ended inside its head",
        ));
    }
    let mut body = Vec::new();
    match head.content_length() {
        Some(n) => r.take(n as u64).read_to_end(&mut body).await?,
        None => r.read_to_end(&mut body).await?,
    };
    Ok(Response { head, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8889/ingest/a").unwrap(),
            ("127.0.0.1:8889".into(), "/ingest/a".into())
        );
        assert_eq!(split_url("http://h").unwrap(), ("h:80".into(), "/".into()));
        assert!(split_url("https://h/x").is_err());
    }

    #[tokio::test]
    async fn responses_give_status_location_and_body() {
        let raw = b"HTTP/1.1 201 Created\r\nlocation: /whep/a/1\r\ncontent-length: 3\r\n\r\nv=0xx";
        let r = read_whole_response(&mut &raw[..]).await.unwrap();
        assert_eq!(r.head.status, 201);
        assert_eq!(r.head.header("location"), Some("/whep/a/1"));
        assert_eq!(r.body, b"v=0");
        assert!(read_whole_response(&mut &b"HTTP/1.1 200 OK\r\n"[..])
            .await
            .is_err());
    }
}
