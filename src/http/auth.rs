//! Who may publish, view and read the API: a registered stream's own keys, the global tokens,
//! the admin token, and the operator's auth hook (`--auth-hook`), in that order; every check
//! that applies must pass.
//!
//! - A stream registered with `POST /streams/{s}` takes only its own keys: its publish key to
//!   publish, its view key (if it has one) to view or read it. The keys are the cluster's
//!   (`crate::keys`): every node checks the same ones.
//! - A derived stream takes its parent's keys: `{s}.input` (the raw input of a `--pipeline`)
//!   is `{s}`'s; the programs of an MPTS are reached through their stream's name already.
//! - Otherwise `--publish-token` / `--view-token` (when set).
//! - `--admin-token` is accepted wherever a token is.
//! - `--cluster-token` is for the nodes only: it reads a stream's TS (the edges' pull) and
//!   `/cluster`, nothing else ([`node`]).
//! - Then the hook, when set: POST `{"action", "protocol", "stream", "token", "ip", "query"}`;
//!   2xx allows, anything else (or no answer within `--auth-hook-timeout`) is a 401. Answers
//!   are kept [`CACHE_FOR`] per question (all six fields), so a burst of viewers costs the hook
//!   one request and no answer is reused for another address, protocol or query.
//!
//! The token is the `Authorization: Bearer` one, else `?token=` (players, OBS, ffmpeg URLs).
//! Tokens never reach a log line.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use parking_lot::Mutex;
use serde_json::json;
use tracing::warn;

use super::{ApiError, App};
use crate::secret::constant_time_eq;

/// How long an answer of the auth hook is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    View,
    Api,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::View => "view",
            Action::Api => "api",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Whip,
    Whep,
    Ingest,
    Ts,
    Api,
    /// An SRT caller (`--srt-listen`).
    Srt,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Whip => "whip",
            Protocol::Whep => "whep",
            Protocol::Ingest => "ingest",
            Protocol::Ts => "ts",
            Protocol::Api => "api",
            Protocol::Srt => "srt",
        }
    }
}

/// What a request says about who sends it: its token, address and how it reached us (a
/// trusted proxy's `X-Forwarded-*`).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub token: Option<String>,
    /// The client's address (behind trusted proxies: the right-most `X-Forwarded-For` entry
    /// that is not one of them).
    pub ip: Option<IpAddr>,
    pub query: Option<String>,
    /// `https` or `http`, as the client sees this server.
    pub scheme: &'static str,
    /// The `Host` the client used (behind a trusted proxy: `X-Forwarded-Host`).
    pub host: Option<String>,
}

impl Caller {
    /// Whether the request carries `want` (compared in constant time); never for `None`.
    pub fn has_token(&self, want: Option<&str>) -> bool {
        match (self.token.as_deref(), want) {
            (Some(t), Some(w)) => constant_time_eq(t.as_bytes(), w.as_bytes()),
            _ => false,
        }
    }

    /// `scheme://host` of this server as the client reached it.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            self.scheme,
            self.host.as_deref().unwrap_or("localhost")
        )
    }
}

impl FromRequestParts<std::sync::Arc<App>> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &std::sync::Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let query = parts.uri.query().map(str::to_owned);
        Ok(caller(
            &parts.headers,
            peer,
            query,
            &app.cfg.trusted_proxies,
            app.cfg.tls_cert.is_some(),
        ))
    }
}

fn caller(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    query: Option<String>,
    trusted: &[IpAddr],
    tls: bool,
) -> Caller {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = h("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let token = bearer.or_else(|| {
        query
            .as_deref()?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(percent_decode)
    });
    let proxied = peer.is_some_and(|p| trusted.contains(&p));
    // The value the nearest proxy set (the last one: a proxy appends to what it got).
    let forwarded = |name: &str| {
        proxied
            .then(|| h(name))
            .flatten()
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let ip = match proxied.then(|| h("x-forwarded-for")).flatten() {
        Some(list) => forwarded_client(list, trusted).or(peer),
        None => peer,
    };
    let scheme = match forwarded("x-forwarded-proto").as_deref() {
        Some("https") => "https",
        Some("http") => "http",
        _ if tls => "https",
        _ => "http",
    };
    let host =
        forwarded("x-forwarded-host").or_else(|| h(header::HOST.as_str()).map(str::to_owned));
    Caller {
        token: token.filter(|t| !t.is_empty()),
        ip,
        query,
        scheme,
        host,
    }
}

/// The client in an `X-Forwarded-For` list: walking from the right (the entries our own
/// proxies added), the first address that is not a trusted proxy. What a client wrote itself
/// is to the left of it and never believed. `None` when an entry is not an address.
fn forwarded_client(list: &str, trusted: &[IpAddr]) -> Option<IpAddr> {
    let mut last = None;
    for entry in list.rsplit(',') {
        let ip: IpAddr = entry.trim().parse().ok()?;
        if !trusted.contains(&ip) {
            return Some(ip);
        }
        last = Some(ip);
    }
    last
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the hook was asked: every field it was sent.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Question {
    action: Action,
    protocol: Protocol,
    stream: String,
    token: Option<String>,
    ip: Option<IpAddr>,
    query: Option<String>,
}

/// The auth hook's recent answers: allowed, and when.
#[derive(Default)]
pub struct HookCache(Mutex<HashMap<Question, (bool, Instant)>>);

/// The admin API: the admin token only; off (403) without `--admin-token`.
pub fn admin(app: &App, caller: &Caller) -> Result<(), ApiError> {
    match &app.cfg.admin_token {
        None => Err(ApiError::Forbidden(
            "the admin API is off: start the server with --admin-token".into(),
        )),
        Some(t) if caller.has_token(Some(t)) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("admin")),
    }
}

/// `/metrics`: open, unless `--metrics-token` is set; then it, or the admin token.
pub fn metrics(app: &App, caller: &Caller) -> Result<(), ApiError> {
    let cfg = &app.cfg;
    match &cfg.metrics_token {
        Some(t) if !caller.has_token(Some(t)) && !caller.has_token(cfg.admin_token.as_deref()) => {
            Err(ApiError::Unauthorized("metrics"))
        }
        _ => Ok(()),
    }
}

/// Whether `caller` is another node of the cluster (its `--cluster-token`), or the admin:
/// what the inter-node TS pull and `/cluster` take.
pub fn node(app: &App, caller: &Caller) -> bool {
    let cluster_token = app.cluster.as_ref().map(|c| c.token.as_str());
    caller.has_token(cluster_token) || caller.has_token(app.cfg.admin_token.as_deref())
}

/// The stream whose keys guard `stream`: `{s}` for a pipeline's input `{s}.input`.
pub fn key_owner<'a>(app: &App, stream: &'a str) -> &'a str {
    match stream.strip_suffix(crate::pipeline::INPUT_SUFFIX) {
        Some(parent) if app.pipelines.enabled() => parent,
        _ => stream,
    }
}

/// Whether `caller`'s token allows `action` on `stream` (`None`: the stream list, metrics)
/// by the keys and tokens alone (the hook is not asked).
pub async fn tokens_allow(
    app: &App,
    caller: &Caller,
    action: Action,
    stream: Option<&str>,
) -> Result<bool, ApiError> {
    let is = |want: Option<&str>| caller.has_token(want);
    if is(app.cfg.admin_token.as_deref()) {
        return Ok(true);
    }
    let keys = match stream {
        Some(s) => app
            .keys
            .get(key_owner(app, s))
            .await
            .map_err(|e| ApiError::Unavailable(format!("{e}; retry")))?,
        None => None,
    };
    let token = caller.token.as_deref();
    Ok(match (&keys, action) {
        (Some(k), Action::Publish) => k.publishes(token),
        (Some(k), _) if k.view_sha256.is_some() => k.views(token),
        (None, Action::Publish) => {
            app.cfg.publish_token.is_none() || is(app.cfg.publish_token.as_deref())
        }
        (_, _) => app.cfg.view_token.is_none() || is(app.cfg.view_token.as_deref()),
    })
}

/// Whether `caller` may do `action` on `stream` (`None`: the stream list, metrics).
pub async fn check(
    app: &App,
    caller: &Caller,
    action: Action,
    protocol: Protocol,
    stream: Option<&str>,
) -> Result<(), ApiError> {
    let what = match action {
        Action::Publish => "publish",
        Action::View | Action::Api => "view",
    };
    if !tokens_allow(app, caller, action, stream).await? {
        return Err(ApiError::Unauthorized(what));
    }
    let Some(hook) = &app.cfg.auth_hook else {
        return Ok(());
    };
    let key = Question {
        action,
        protocol,
        stream: stream.unwrap_or("").to_owned(),
        token: caller.token.clone(),
        ip: caller.ip,
        query: caller.query.clone(),
    };
    if let Some(&(ok, at)) = app.auth_cache.0.lock().get(&key) {
        if at.elapsed() < CACHE_FOR {
            return if ok {
                Ok(())
            } else {
                Err(ApiError::Unauthorized(what))
            };
        }
    }
    let body = json!({
        "action": action.name(),
        "protocol": protocol.name(),
        "stream": stream,
        "token": caller.token,
        "ip": caller.ip.map(|i| i.to_string()),
        "query": caller.query,
    });
    let asked = tokio::time::timeout(
        app.cfg.auth_hook_timeout,
        crate::client::post_json(hook, &body.to_string(), app.cfg.auth_hook_timeout),
    )
    .await;
    let ok = match asked {
        Ok(Ok(status)) => (200..300).contains(&status),
        Ok(Err(e)) => {
            warn!(action = action.name(), stream, error = %e,
                "auth hook unreachable: refusing (fail closed)");
            return Err(ApiError::Unauthorized(what));
        }
        Err(_) => {
            warn!(
                action = action.name(),
                stream,
                timeout_s = app.cfg.auth_hook_timeout.as_secs_f64(),
                "auth hook did not answer in time (--auth-hook-timeout): refusing (fail closed)"
            );
            return Err(ApiError::Unauthorized(what));
        }
    };
    let mut cache = app.auth_cache.0.lock();
    if cache.len() >= CACHE_MAX {
        cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
    }
    cache.insert(key, (ok, Instant::now()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_bearer_or_query_and_proxies_only_when_trusted() {
        let mut h = HeaderMap::new();
        // The client wrote the first entry itself; our proxies appended the others.
        h.insert(
            "x-forwarded-for",
            "198.18.0.66, 203.0.113.9, 10.0.0.2".parse().unwrap(),
        );
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "tv.example.com".parse().unwrap());
        h.insert("host", "10.0.0.5:8889".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        let c = caller(
            &h,
            Some(proxy),
            Some("a=1&token=s%2Bx".into()),
            &[proxy, inner],
            false,
        );
        assert_eq!(c.token.as_deref(), Some("s+x"));
        assert_eq!(c.ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(c.base_url(), "https://tv.example.com");
        // The same headers from anybody else are ignored.
        let other: IpAddr = "198.51.100.7".parse().unwrap();
        let c = caller(&h, Some(other), None, &[proxy], false);
        assert_eq!(c.ip, Some(other));
        assert_eq!(c.base_url(), "http://10.0.0.5:8889");
        assert_eq!(c.token, None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        let c = caller(&h, Some(other), Some("token=q".into()), &[], true);
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.scheme, "https");
    }
}
