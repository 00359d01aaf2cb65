//! Cluster nodes as real processes: the `tsbridge` binary with `--cluster` on a real
//! `redis-server` ([`super::redis`]), and what tests ask of them through their HTTP API.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{request, TsbridgeProcess};

/// Every node's `--cluster-token` (16+ characters, distinct from every other token).
pub const CLUSTER_TOKEN: &str = "nodes-only-secret-0123456789";

/// A free TCP port on 127.0.0.1 (a node's public URL has to be known before it starts).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A cluster node: the `tsbridge` binary with `--cluster`, its public URL, [`CLUSTER_TOKEN`]
/// and `extra`.
pub fn node(redis_url: &str, extra: &[&str]) -> TsbridgeProcess {
    node_with_env(redis_url, extra, &[])
}

/// [`node`] with `env` set for its process (`SSL_CERT_FILE`, …).
pub fn node_with_env(
    redis_url: &str,
    extra: &[&str],
    env: &[(&str, &std::path::Path)],
) -> TsbridgeProcess {
    let port = free_port();
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--ice-udp",
        "127.0.0.1:0",
        "--cluster",
        redis_url,
        "--public-url",
        &format!("http://127.0.0.1:{port}"),
        "--cluster-token",
        CLUSTER_TOKEN,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    TsbridgeProcess::spawn_with_env(env!("CARGO_BIN_EXE_tsbridge"), args, env).expect("node starts")
}

/// `GET {base}/cluster` with the cluster token: 200 and its JSON, or the status.
pub async fn cluster_json(base: &str) -> Result<Value, u16> {
    let auth = format!("Bearer {CLUSTER_TOKEN}");
    let r = request(
        "GET",
        &format!("{base}/cluster"),
        &[("Authorization", &auth)],
        b"",
    )
    .await
    .unwrap();
    match r.status {
        200 => Ok(serde_json::from_slice(&r.body).unwrap()),
        s => Err(s),
    }
}

/// `GET /cluster` as a node sees it, once `n` nodes registered.
pub async fn registered(base: &str, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = cluster_json(base).await;
        if let Ok(v) = &c {
            if v["nodes"].as_array().map(Vec::len) == Some(n) {
                return v.clone();
            }
        }
        assert!(Instant::now() < deadline, "not {n} nodes: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The record of the node at `url` in `GET {base}/cluster` (what it last wrote to Redis).
pub async fn node_record(base: &str, url: &str) -> Option<Value> {
    let c = cluster_json(base).await.ok()?;
    c["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["url"] == url)
        .cloned()
}
