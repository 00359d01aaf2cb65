//! An edge's pull from an owner whose host stops answering (issue 20, finding 9): a real
//! `redis-server` and two nodes in this process, the owner behind a TCP proxy that can be
//! frozen — connections stay open and new ones are accepted, but no byte moves, as for a
//! SIGSTOPped host (its kernel still accepts and acknowledges). The edge's pull ends within
//! its progress timeout, is tried again, and plays again once the host answers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{request, WhepOptions, WhepSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

/// A TCP proxy to `to` that moves nothing while frozen (`true` on the returned sender).
async fn freezable_proxy(to: SocketAddr) -> (SocketAddr, Arc<watch::Sender<bool>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(watch::Sender::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let f = f.clone();
            tokio::spawn(async move {
                thawed(&f).await;
                let Ok(server) = TcpStream::connect(to).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pipe(cr, sw, f.clone()), pipe(sr, cw, f));
            });
        }
    });
    (addr, frozen)
}

async fn thawed(frozen: &watch::Sender<bool>) {
    let _ = frozen.subscribe().wait_for(|f| !f).await;
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<watch::Sender<bool>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        thawed(&frozen).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        thawed(&frozen).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `tsbridge_cluster_pulls_total` of a node.
async fn pulls_started(node: SocketAddr) -> u64 {
    let r = request("GET", &format!("http://{node}/metrics"), &[], b"")
        .await
        .unwrap();
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("tsbridge_cluster_pulls_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn plays_on(edge: SocketAddr) -> WhepSession {
    let v = WhepSession::start(&format!("http://{edge}/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(v.status, 201, "{:?}", v.error_body);
    assert!(
        v.wait_until(Duration::from_secs(10), |c| c.video.len() > 60)
            .await,
        "a viewer on the edge plays"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_an_owner_that_stops_answering_ends_in_seconds_and_starts_again() {
    let Some(redis) = common::redis::redis("pull_from_a_stopped_owner").await else {
        return;
    };
    let redis_url = redis.url.clone();
    let owner_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (proxy, frozen) = freezable_proxy(owner_listener.local_addr().unwrap()).await;
    let mut args = ServeArgs::loopback();
    args.cluster = Some(redis_url.clone());
    // Other nodes reach the owner through the proxy only.
    args.public_url = Some(format!("http://{proxy}"));
    args.cluster_token = Some("cluster-secret-0123456789".into());
    args.replays.push(Named {
        name: "cam".into(),
        value: common::testdata("h264_opus.ts"),
    });
    let _owner = Server::start_on(owner_listener, args).await.unwrap();
    let edge_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut args = ServeArgs::loopback();
    args.cluster = Some(redis_url);
    args.public_url = Some(format!("http://{}", edge_listener.local_addr().unwrap()));
    args.cluster_token = Some("cluster-secret-0123456789".into());
    let edge = Server::start_on(edge_listener, args).await.unwrap();
    let edge_addr = edge.http_addr;

    // A node reaches Redis a moment after it starts (until then it cannot locate a stream).
    let auth = "Bearer cluster-secret-0123456789";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = format!("http://{edge_addr}/cluster");
        let r = request("GET", &url, &[("Authorization", auth)], b"").await;
        if r.is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the edge never reached Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The owner's claim reaches Redis within a tick: a viewer waits for it meanwhile.
    let viewer = plays_on(edge_addr).await;
    let before = pulls_started(edge_addr).await;
    assert!(before >= 1);

    frozen.send_replace(true);
    let t0 = Instant::now();
    while pulls_started(edge_addr).await == before {
        assert!(
            t0.elapsed() < Duration::from_secs(9),
            "the pull from a stopped host did not end within its 5 s progress timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended_after = t0.elapsed();
    eprintln!("the pull ended {ended_after:?} after the owner's host stopped");
    assert!(
        ended_after >= Duration::from_secs(4),
        "ended before the progress timeout: {ended_after:?}"
    );
    viewer.finish().await;

    // The host answers again: the next viewer plays through a new pull.
    frozen.send_replace(false);
    let again = plays_on(edge_addr).await;
    assert!(pulls_started(edge_addr).await > before);
    let on_edge = common::stream_json(edge_addr, "cam").await;
    assert_eq!(on_edge["source"], "pull", "{on_edge}");
    again.finish().await;
}
