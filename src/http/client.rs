//! A minimal HTTP/1.1 client for `tsbridge replay` and `probe URL` (no TLS: local servers).

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

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

/// Status, Content-Length, and whether the body is chunked.
pub async fn read_head(
    r: &mut (impl AsyncBufReadExt + Unpin),
) -> std::io::Result<(u16, Option<usize>, bool)> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                len = v.parse().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    Ok((status, len, chunked))
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
}
