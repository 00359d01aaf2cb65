//! A cluster of nodes on a real `redis-server` (started here on a free port; Debian package
//! `redis-server`, installed and required by `.ci/run` through `TSBRIDGE_REQUIRE_REDIS=1`).
//! Three nodes in this process, each on its own HTTP and UDP ports; viewers are the `webrtc`
//! crate.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis::{redis, Redis};
use common::{request, WhepOptions, WhepSession};
use serde_json::Value;
use tokio::net::TcpListener;
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

/// The nodes' secret (`--cluster-token`): it also opens `/cluster`.
const CLUSTER_TOKEN: &str = "cluster-secret-0123456789";

struct Node {
    server: Server,
    url: String,
}

async fn node(redis: &Redis, f: impl FnOnce(&mut ServeArgs)) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut args = ServeArgs::loopback();
    args.cluster = Some(redis.url.clone());
    args.public_url = Some(url.clone());
    args.cluster_token = Some(CLUSTER_TOKEN.into());
    f(&mut args);
    let server = Server::start_on(listener, args).await.expect("node starts");
    Node { server, url }
}

fn replay(args: &mut ServeArgs, name: &str) {
    args.replays.push(Named {
        name: name.into(),
        value: common::testdata("h264_opus.ts"),
    });
}

/// `GET /cluster` of a node, once it has reached Redis (a node starts before it connects).
async fn cluster_json(n: &Node) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let auth = format!("Bearer {CLUSTER_TOKEN}");
        let r = request(
            "GET",
            &format!("{}/cluster", n.url),
            &[("Authorization", auth.as_str())],
            b"",
        )
        .await
        .unwrap();
        if r.status == 200 {
            return serde_json::from_str(&r.text()).unwrap();
        }
        assert!(Instant::now() < deadline, "{}: {}", r.status, r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /streams/{name}` of node `n` as another node sees it (with the owner's URL).
async fn as_node(n: &Node, name: &str) -> Value {
    let auth = format!("Bearer {CLUSTER_TOKEN}");
    common::stream_json_with(http_addr(n), name, &[("Authorization", auth.as_str())]).await
}

/// Waits until node `n` sees `count` nodes registered in the cluster.
async fn registered(n: &Node, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = cluster_json(n).await;
        if c["nodes"].as_array().map(Vec::len) == Some(count) {
            return;
        }
        assert!(Instant::now() < deadline, "not {count} nodes: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `n` lists stream `name` as owned in Redis (its source claimed it).
async fn owned(n: &Node, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = cluster_json(n).await;
        let mine = c["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["url"] == n.url.as_str()).cloned())
            .unwrap_or_default();
        if mine["streams_owned"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == name))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never owned: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http_addr(n: &Node) -> SocketAddr {
    n.server.http_addr
}

/// Viewers on B and C play A's stream: they are counted where they watch, and A sends its TS
/// once per edge (one reader each), however many viewers an edge has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_serve_the_owners_stream_from_one_pull_each() {
    let Some(redis) = redis("edges_serve_the_owners_stream_from_one_pull_each").await else {
        return;
    };
    let a = node(&redis, |a| replay(a, "cam")).await;
    let b = node(&redis, |_| {}).await;
    let c = node(&redis, |_| {}).await;
    owned(&a, "cam").await;
    let nodes = cluster_json(&b).await;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(3), "{nodes}");

    let opts = WhepOptions::default();
    let b1 = WhepSession::start(&format!("{}/whep/cam", b.url), &opts)
        .await
        .unwrap();
    let b2 = WhepSession::start(&format!("{}/whep/cam", b.url), &opts)
        .await
        .unwrap();
    let c1 = WhepSession::start(&format!("{}/whep/cam", c.url), &opts)
        .await
        .unwrap();
    for v in [&b1, &b2, &c1] {
        assert_eq!(v.status, 201, "{:?}", v.error_body);
        assert!(
            v.wait_until(Duration::from_secs(8), |c| c.video.len() > 60
                && c.audio.len() > 20)
                .await,
            "a viewer on an edge plays"
        );
    }
    let on_a = common::stream_json(http_addr(&a), "cam").await;
    let on_b = as_node(&b, "cam").await;
    let on_c = common::stream_json(http_addr(&c), "cam").await;
    assert_eq!(on_a["viewers"], 0, "{on_a}");
    assert_eq!(on_a["ts_readers"], 2, "one pull per edge: {on_a}");
    assert_eq!(on_b["viewers"], 2, "{on_b}");
    assert_eq!(on_b["source"], "pull", "{on_b}");
    assert_eq!(on_b["owner"], a.url.as_str(), "{on_b}");
    assert_eq!(on_c["viewers"], 1, "{on_c}");
    let aus = common::h264_access_units(&b1.collected().video);
    assert!(
        aus.iter().any(|a| a.is_keyframe()),
        "instant start on the edge"
    );
    for v in [b1, b2, c1] {
        v.finish().await;
    }
}

/// One source per name cluster-wide: a second one on another node gets 409 naming the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_source_on_another_node_is_409() {
    let Some(redis) = redis("a_second_source_on_another_node_is_409").await else {
        return;
    };
    let a = node(&redis, |a| replay(a, "cam")).await;
    let b = node(&redis, |_| {}).await;
    owned(&a, "cam").await;
    let r = request("PUT", &format!("{}/ingest/cam", b.url), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains(&a.url), "{}", r.text());
    // Another name is free.
    let r = request("PUT", &format!("{}/ingest/other", b.url), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A full node answers 307 to the least-loaded node with room, and the viewer plays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_redirects_to_one_with_room() {
    let Some(redis) = redis("a_full_node_redirects_to_one_with_room").await else {
        return;
    };
    let a = node(&redis, |a| replay(a, "cam")).await;
    let full = node(&redis, |a| a.max_sessions = 0).await;
    owned(&a, "cam").await;
    // Both registered (the full one says it has no room).
    registered(&full, 2).await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let r = request(
        "POST",
        &format!("{}/whep/cam", full.url),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 307, "{}", r.text());
    let to = r.header("location").unwrap().to_owned();
    assert_eq!(to, format!("{}/whep/cam", a.url));
    let played = common::whep_receive(
        &to,
        WhepOptions {
            seconds: 3.0,
            stop: common::StopWhen::VideoAus(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(played.status, 201);
    assert!(common::h264_access_units(&played.video).len() >= 30);
    // A publisher too goes to a node with room.
    let offer = common::whip_offer_sdp(
        &common::testdata("h264_opus.ts"),
        &common::WhipOptions::default(),
    )
    .await
    .unwrap();
    let r = request(
        "POST",
        &format!("{}/whip/cam2", full.url),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("{}/whip/cam2", a.url).as_str())
    );
}

/// Redis goes away: a viewer that plays goes on playing (RTP keeps coming), and a POST for a
/// stream the node cannot locate is a prompt 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_playing_goes_on_and_locating_is_a_prompt_503() {
    let Some(mut redis) = redis("without_redis_playing_goes_on_and_locating_is_a_prompt_503").await
    else {
        return;
    };
    let a = node(&redis, |a| replay(a, "cam")).await;
    let b = node(&redis, |_| {}).await;
    owned(&a, "cam").await;
    let viewer = WhepSession::start(&format!("{}/whep/cam", b.url), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    assert!(
        viewer
            .wait_until(Duration::from_secs(8), |c| c.video.len() > 60)
            .await
    );
    redis.child.kill().await.unwrap();
    let before = viewer.collected();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = viewer.collected();
    assert!(
        after.video.len() > before.video.len() + 60,
        "RTP continues without Redis: {} → {}",
        before.video.len(),
        after.video.len()
    );
    let seqs: Vec<u16> = after.video[before.video.len()..]
        .iter()
        .map(|p| p.seq)
        .collect();
    let gaps = seqs
        .windows(2)
        .filter(|w| w[1] != w[0].wrapping_add(1))
        .count();
    assert!(gaps <= 2, "continuous RTP: {gaps} gaps");
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let t = Instant::now();
    let r = request(
        "POST",
        &format!("{}/whep/nope", b.url),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // Redis comes back (empty): the nodes register again and A claims its stream again.
    let port = redis
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap()
        .to_owned();
    let _back = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("restart redis-server");
    owned(&a, "cam").await;
    registered(&b, 2).await;
    assert!(
        viewer.collected().video.len() > after.video.len(),
        "still playing"
    );
    viewer.finish().await;
}

/// A node that stops (SIGTERM) leaves the cluster at once (its key is deleted, not left to
/// expire), so no node sends viewers to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_leaves_at_once() {
    let Some(redis) = redis("a_stopping_node_leaves_at_once").await else {
        return;
    };
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    registered(&a, 2).await;
    b.server.shutdown().await;
    let nodes = cluster_json(&a).await;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");
}

fn push(n: &Node, name: &str) -> tokio::task::JoinHandle<Result<(), String>> {
    let url = format!("{}/ingest/{name}", n.url);
    tokio::spawn(async move {
        tsbridge::ingest::replay::push(&common::testdata("h264_opus.ts"), &url, false).await
    })
}

/// The WHEP wait works across nodes: a viewer POSTs on B before the stream exists anywhere;
/// when a source starts on A, B pulls it and answers the viewer, who plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_an_edge_waits_for_a_source_that_starts_on_another_node() {
    let Some(redis) =
        redis("a_viewer_on_an_edge_waits_for_a_source_that_starts_on_another_node").await
    else {
        return;
    };
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    cluster_json(&b).await;
    let url = format!("{}/whep/cam", b.url);
    let viewer =
        tokio::spawn(async move { WhepSession::start(&url, &WhepOptions::default()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pushing = push(&a, "cam");
    let viewer = viewer.await.unwrap().unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(8), |c| c.video.len() > 60)
            .await
    );
    viewer.finish().await;
    pushing.abort();
}

/// The owner goes away (node A stops, its publisher with it) and the source comes back on B (a
/// publisher reconnecting elsewhere): the edge C follows it within --source-grace and its
/// viewer keeps playing, its RTP time and sequence numbers continuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_follows_its_source_to_another_node() {
    let Some(redis) = redis("an_edge_follows_its_source_to_another_node").await else {
        return;
    };
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let c = node(&redis, |_| {}).await;
    let first = push(&a, "cam");
    owned(&a, "cam").await;
    let viewer = WhepSession::start(&format!("{}/whep/cam", c.url), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    assert!(
        viewer
            .wait_until(Duration::from_secs(8), |c| c.video.len() > 60)
            .await
    );
    first.abort();
    drop(a);
    let before = viewer.collected().video.len();
    // B takes the name once A's claim is gone (released, or expired with A).
    let deadline = Instant::now() + Duration::from_secs(8);
    let second = loop {
        let p = push(&b, "cam");
        tokio::time::sleep(Duration::from_millis(700)).await;
        if !p.is_finished() {
            break p;
        }
        assert!(Instant::now() < deadline, "B never got the name");
    };
    assert!(
        viewer
            .wait_until(Duration::from_secs(8), |c| c.video.len() > before + 60)
            .await,
        "the viewer on C plays B's source"
    );
    let on_c = as_node(&c, "cam").await;
    assert_eq!(on_c["owner"], b.url.as_str(), "{on_c}");
    assert_eq!(on_c["viewers"], 1, "{on_c}");
    let pkts = viewer.collected().video;
    let gaps = pkts
        .windows(2)
        .filter(|w| w[1].seq != w[0].seq.wrapping_add(1))
        .count();
    assert!(gaps <= 3, "sequence numbers continue: {gaps} gaps");
    let back = pkts
        .windows(2)
        .filter(|w| w[1].ts.wrapping_sub(w[0].ts) > u32::MAX / 2)
        .count();
    assert!(back <= 2, "RTP time goes on: {back} steps back");
    viewer.finish().await;
    second.abort();
}

/// The added latency of one hop (for `benches/cluster.sh`, not a pass/fail test): a viewer on
/// the origin and one on an edge receive the same stream; the same RTP payload arrives at both
/// (each node packetizes the same access units the same way), so the difference of arrival
/// times per payload is what the edge adds (TS pull, demux, packetize). Prints p50/p99/max.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: benches/cluster.sh runs it"]
async fn one_hop_latency() {
    use std::collections::HashMap;
    let Some(redis) = redis("one_hop_latency").await else {
        return;
    };
    let a = node(&redis, |a| replay(a, "cam")).await;
    let b = node(&redis, |_| {}).await;
    owned(&a, "cam").await;
    let opts = WhepOptions::default();
    let on_a = WhepSession::start(&format!("{}/whep/cam", a.url), &opts)
        .await
        .unwrap();
    let on_b = WhepSession::start(&format!("{}/whep/cam", b.url), &opts)
        .await
        .unwrap();
    assert!(
        on_b.wait_until(Duration::from_secs(8), |c| c.video.len() > 60)
            .await
    );
    let seconds: u64 = std::env::var("HOP_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (va, vb) = (on_a.collected().video, on_b.collected().video);
    // Live packets only (the GOP burst of a start goes at its own pace): the last N seconds.
    let cut = Instant::now() - Duration::from_secs(seconds.saturating_sub(1).max(1));
    let at_a: HashMap<&[u8], Instant> = va
        .iter()
        .filter(|p| p.at >= cut)
        .map(|p| (p.payload.as_slice(), p.at))
        .collect();
    let mut ms: Vec<f64> = vb
        .iter()
        .filter(|p| p.at >= cut)
        .filter_map(|p| {
            let a = at_a.get(p.payload.as_slice())?;
            Some(p.at.checked_duration_since(*a).map_or_else(
                || -(a.duration_since(p.at).as_secs_f64() * 1e3),
                |d| d.as_secs_f64() * 1e3,
            ))
        })
        .collect();
    assert!(ms.len() > 100, "{} packets matched", ms.len());
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p) as usize];
    println!(
        "one hop (origin viewer → edge viewer, same RTP payload, {} packets): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    on_a.finish().await;
    on_b.finish().await;
}

/// A cold edge starts at once (issue 24): its pull begins with the GOP the owner's stream is
/// in (`?start=gop`), so the first viewer on an edge that was not pulling a 5 s-GOP stream gets
/// a keyframe right after its POST, not at the owner's next IDR (3 s or more away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_edges_first_viewer_starts_at_once() {
    let Some(redis) = redis("a_cold_edges_first_viewer_starts_at_once").await else {
        return;
    };
    let a = node(&redis, |a| {
        a.replays.push(Named {
            name: "long".into(),
            value: common::testdata("long_gop.ts"),
        })
    })
    .await;
    let b = node(&redis, |_| {}).await;
    owned(&a, "long").await;
    registered(&b, 2).await;
    // Early in a GOP of the owner: its next IDR is at least 3 s away.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let j = common::stream_json(http_addr(&a), "long").await;
        let s = j["gop_cache"]["seconds"].as_f64().unwrap_or(0.0);
        if (0.3..2.0).contains(&s) {
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let viewer = WhepSession::start(&format!("{}/whep/long", b.url), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(3), |c| !c.video.is_empty())
            .await,
        "no video within 3 s"
    );
    let first = viewer.collected().video[0].at;
    let took = first.duration_since(viewer.posted_at);
    eprintln!("cold edge: first video packet {took:?} after the POST");
    // The old pull started at the owner's next IDR: 3 s or more.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(
        viewer
            .wait_until(Duration::from_secs(3), |c| c.video.len() > 100)
            .await
    );
    let aus = common::h264_access_units(&viewer.collected().video);
    assert!(aus[0].is_keyframe(), "an IDR first: {:?}", aus[0].nal_types);
}

/// WHEP server-sent events (issue 24): the 201 links the extension; a subscription's stream
/// says `active`, then the viewer count as it changes, and `reconnect` with another node's URL
/// when this node drains — in that order. A caller without the view token gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_events_say_active_viewercount_and_reconnect_on_drain() {
    let Some(redis) = redis("whep_events_say_active_viewercount_and_reconnect_on_drain").await
    else {
        return;
    };
    let a = node(&redis, |a| {
        replay(a, "cam");
        a.view_token = Some("viewers-token".into());
    })
    .await;
    let b = node(&redis, |_| {}).await;
    owned(&a, "cam").await;
    registered(&b, 2).await;
    let token = [(
        "Authorization".to_string(),
        "Bearer viewers-token".to_string(),
    )];
    let opts = WhepOptions {
        headers: token.to_vec(),
        ..Default::default()
    };
    let v1 = WhepSession::start(&format!("{}/whep/cam", a.url), &opts)
        .await
        .unwrap();
    assert_eq!(v1.status, 201, "{:?}", v1.error_body);
    let links = v1.response.headers_all("link");
    let link = links
        .iter()
        .find(|l| l.contains("urn:ietf:params:whep:ext:core:server-sent-events"))
        .unwrap_or_else(|| panic!("{links:?}"));
    let sse = link[1..link.find('>').unwrap()].to_owned();
    let auth = [
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer viewers-token"),
    ];
    let asked = br#"["active", "viewercount", "reconnect"]"#;
    let url = format!("{}{sse}", a.url);
    // Without the view token: nothing.
    let r = request("POST", &url, &auth[..1], asked).await.unwrap();
    assert_eq!(r.status, 401);
    let r = request("POST", &url, &auth, asked).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let events_url = format!("{}{}", a.url, r.header("location").unwrap());
    let r = request("GET", &events_url, &[], b"").await.unwrap();
    assert_eq!(r.status, 401, "no events without the token");
    let mut stream = common::http::open("GET", &events_url, &auth[1..], b"")
        .await
        .unwrap();
    assert_eq!(stream.status, 200);
    let mut text = String::new();
    let got = common::sse::events(&mut stream.body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(got[0].0, "active", "{got:?}");
    assert_eq!(
        got[1],
        ("viewercount".into(), serde_json::json!({"viewercount": 1}))
    );
    let _v2 = WhepSession::start(&format!("{}/whep/cam", a.url), &opts)
        .await
        .unwrap();
    let got = common::sse::events(&mut stream.body, &mut text, 3, Duration::from_secs(5)).await;
    assert_eq!(
        got[2],
        ("viewercount".into(), serde_json::json!({"viewercount": 2})),
        "{got:?}"
    );
    // The node drains: the viewer is sent to B.
    let Node { server, .. } = a;
    let stop = tokio::spawn(server.shutdown());
    let got = common::sse::events(&mut stream.body, &mut text, 4, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[3].0, "reconnect", "{got:?}");
    assert_eq!(got[3].1["url"], format!("{}/whep/cam", b.url), "{got:?}");
    let _ = stop.await;
}

/// On an edge, frames carry the origin's ingest time (the ingest marks of its pull): the
/// viewer's abs-capture-time is within 50 ms of when it receives a live frame, and the edge
/// measures from the origin's ingest (more than from its own arrival: the hop is in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_stamps_frames_with_the_origins_ingest_time() {
    let Some(redis) = redis("an_edge_stamps_frames_with_the_origins_ingest_time").await else {
        return;
    };
    let a = node(&redis, |a| replay(a, "cam")).await;
    let b = node(&redis, |_| {}).await;
    owned(&a, "cam").await;
    registered(&b, 2).await;
    let opts = WhepOptions {
        seconds: 4.0,
        header_extensions: vec![common::ABS_CAPTURE_TIME],
        ..Default::default()
    };
    let r = common::whep_receive(&format!("{}/whep/cam", b.url), opts)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.error_body);
    let id = common::extmap_id(&r.answer_sdp, common::ABS_CAPTURE_TIME).expect("answered");
    let times = common::capture_times(&r.video, id);
    assert!(times.len() > 20, "{} stamped", times.len());
    for &(captured, received) in &times[times.len() / 2..] {
        let ms = (received as i64 - captured as i64) as f64 / 1000.0;
        assert!((-2.0..50.0).contains(&ms), "received {ms} ms after ingest");
    }
    let j = common::stream_json(http_addr(&b), "cam").await;
    let l = &j["latency"];
    eprintln!("edge latency: {l}");
    let p50 = |k: &str| l[k]["p50"].as_f64().unwrap();
    assert!(p50("ingest_to_send_ms") > p50("added_ms"), "{l}");
    assert!(p50("ingest_to_send_ms") < 50.0, "{l}");
}

/// `--srt-pull` claims its name as a publisher does: while node A's HTTP push has `cam`, node
/// B, configured to pull `cam` from an SRT listener (`srt-live-transmit`), does not call it
/// (its stream has no source and no SRT figures); once A's source ends and its claim is
/// released, B calls, claims the name and the stream has frames there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_pull_waits_while_another_node_has_the_name() {
    let test = "srt_pull_waits_while_another_node_has_the_name";
    let Some(redis) = redis(test).await else {
        return;
    };
    if !common::tools::have(test, "ffmpeg", "-version", "ffmpeg")
        || !common::tools::have(test, "srt-live-transmit", "-version", "srt-tools")
    {
        return;
    }
    let (udp_in, srt_port) = (
        common::tools::free_udp_port(),
        common::tools::free_udp_port(),
    );
    let _ffmpeg = common::tools::ffmpeg_loop(
        "h264_opus.ts",
        "mpegts",
        &format!("udp://127.0.0.1:{udp_in}?pkt_size=1316"),
    );
    let _slt = common::tools::srt_live_transmit(udp_in, srt_port, None);
    let a = node(&redis, |_| {}).await;
    // (A push before the node reached Redis is a 503: its stream keys are out of reach.)
    registered(&a, 1).await;
    let url = format!("{}/ingest/cam", a.url);
    let pushing = tokio::spawn(async move {
        tsbridge::ingest::replay::push(&common::testdata("h264_opus.ts"), &url, true).await
    });
    owned(&a, "cam").await;
    let b = node(&redis, |b| {
        b.srt_pulls.push(Named {
            name: "cam".into(),
            value: format!("srt://127.0.0.1:{srt_port}"),
        })
    })
    .await;
    registered(&b, 2).await;
    // Several of the pull's tries (0.5, 1, 2 s apart) fall in these 4 s.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let j = as_node(&b, "cam").await;
        assert_eq!(j["srt"], Value::Null, "B called while A has the name: {j}");
        assert_eq!(j["source"], "waiting", "{j}");
        assert_eq!(j["video_frames"], 0, "{j}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let j = as_node(&a, "cam").await;
    assert_eq!(j["source"], "live", "A still has the source: {j}");

    pushing.abort();
    let ended = Instant::now();
    let deadline = ended + Duration::from_secs(20);
    let j = loop {
        let j = as_node(&b, "cam").await;
        if j["srt"].is_object() && j["video_frames"].as_u64() > Some(25) {
            break j;
        }
        assert!(Instant::now() < deadline, "B never pulled: {j}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "B pulled {:.1} s after A's source ended: {} frames, srt {}",
        ended.elapsed().as_secs_f64(),
        j["video_frames"],
        j["srt"]
    );
    assert_eq!(j["source"], "live", "{j}");
    assert!(j["srt"]["packets"].as_u64() > Some(0), "{j}");
    owned(&b, "cam").await;
}
