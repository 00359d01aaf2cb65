//! A real `redis-server` for the cluster tests, started on a free port (Debian package
//! `redis-server`, installed and required by `.ci/run` through `TSBRIDGE_REQUIRE_REDIS=1`).

use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct Redis {
    pub child: tokio::process::Child,
    pub url: String,
    pub port: u16,
}

/// A fresh redis-server, or `None` (said loudly) when there is none and CI does not require it.
pub async fn redis(test: &str) -> Option<Redis> {
    redis_with(test, &[]).await
}

/// [`redis`] with extra `redis-server` arguments (`--requirepass`, …).
pub async fn redis_with(test: &str, extra: &[&str]) -> Option<Redis> {
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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(Redis {
        child,
        url: format!("redis://127.0.0.1:{port}/0"),
        port,
    })
}
