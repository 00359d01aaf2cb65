//! A real `redis-server` for the cluster tests, started on a free port (Debian package
//! `redis-server`, installed and required by `.ci/run` through `TSBRIDGE_REQUIRE_REDIS=1`).

use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct Redis {
    pub child: tokio::process::Child,
    pub url: String,
    pub port: u16,
    /// What it was started with (for [`Redis::restart`]).
    args: Vec<String>,
}

impl Redis {
    /// Kills it and starts it again on the same port, empty (no persistence).
    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        self.child = start(self.port, &self.args)
            .await
            .expect("redis-server restarts on its port");
    }
}

/// `redis-server` with `args`, once it answers PING on `port`. `None` when it exited instead:
/// someone else took the port between our pick and its bind (the caller picks another).
async fn start(port: u16, args: &[String]) -> Option<tokio::process::Child> {
    let mut child = tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Whatever answers on the port must be this child: it is alive and says PONG. (A TLS
        // port answers no plain PING; its being alive after a connect is the check there.)
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            if args.iter().any(|a| a == "--tls-port") || pong(&mut s).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return match child.try_wait() {
                    Ok(None) => Some(child),
                    _ => None,
                };
            }
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pong(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 64];
    let answer = async {
        s.write_all(b"PING\r\n").await.ok()?;
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    };
    tokio::time::timeout(Duration::from_secs(1), answer)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A fresh redis-server, or `None` (said loudly) when there is none and CI does not require it.
pub async fn redis(test: &str) -> Option<Redis> {
    redis_with(test, &[]).await
}

/// [`redis`] with extra `redis-server` arguments (`--requirepass`, …).
pub async fn redis_with(test: &str, extra: &[&str]) -> Option<Redis> {
    redis_on(test, |port| {
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    })
    .await
}

/// A redis-server that speaks TLS only (`rediss://`), with `cert`/`key` (PEM) as its
/// certificate; `url` is `rediss://127.0.0.1:PORT/0`.
pub async fn redis_tls(test: &str, cert: &std::path::Path, key: &std::path::Path) -> Option<Redis> {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut r = redis_on(test, |port| {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
    .await?;
    r.url = format!("rediss://127.0.0.1:{}/0", r.port);
    Some(r)
}

/// A redis-server with the arguments `args(port)` gives, once `port` accepts connections.
async fn redis_on(test: &str, args: impl Fn(u16) -> Vec<String>) -> Option<Redis> {
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("TSBRIDGE_REQUIRE_REDIS").is_err(),
            "{test}: redis-server is required here (apt-get install redis-server)"
        );
        eprintln!("SKIPPED {test}: no redis-server on this machine (apt-get install redis-server)");
        return None;
    }
    // A port picked by binding 0 may be taken again before redis-server binds it: try another.
    let (port, args, child) = {
        let mut tries = 0;
        loop {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let args = args(port);
            if let Some(child) = start(port, &args).await {
                break (port, args, child);
            }
            tries += 1;
            assert!(tries < 5, "{test}: redis-server would not start");
        }
    };
    Some(Redis {
        child,
        url: format!("redis://127.0.0.1:{port}/0"),
        port,
        args,
    })
}
