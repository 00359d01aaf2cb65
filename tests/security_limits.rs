//! Limits no client can exhaust (issue 20, findings 7 and 8), each as the attack that worked
//! before: unknown names that cost streams, memory and tasks; connections, waiting requests,
//! sessions and TS readers without a per-client cap; a TS reader that stops reading; an
//! ingest connection that goes silent and holds its name.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{ChunkedUpload, HttpResponse};
use common::{request, TsbridgeProcess, WhepOptions, WhepSession};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

async fn serve(tweak: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut args = ServeArgs::loopback();
    tweak(&mut args);
    Server::start(args).await.expect("server starts")
}

fn replay(args: &mut ServeArgs, name: &str) {
    args.replays.push(Named {
        name: name.into(),
        value: common::testdata("h264_opus.ts"),
    });
}

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

const SDP: (&str, &str) = ("Content-Type", "application/sdp");

/// A 503 that tells the client when to come back, and which limit it hit.
fn assert_503(r: &HttpResponse, flag: &str) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "no Retry-After");
    assert!(r.text().contains(flag), "{flag} not named: {}", r.text());
}

/// `n` WHEP POSTs of `offer` to distinct unknown names (`{prefix}{i}`), `lanes` at a time;
/// returns how many got each status.
async fn flood(
    base: &str,
    prefix: &str,
    n: usize,
    lanes: usize,
    offer: &str,
) -> std::collections::BTreeMap<u16, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..lanes {
        let (next, base, prefix, offer) = (
            next.clone(),
            base.to_owned(),
            prefix.to_owned(),
            offer.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return statuses;
                }
                let url = format!("{base}/whep/{prefix}{i}");
                let r = request("POST", &url, &[SDP], offer.as_bytes()).await;
                statuses.push(r.map_or(0, |r| r.status));
            }
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for w in workers {
        for status in w.await.unwrap() {
            *counts.entry(status).or_default() += 1;
        }
    }
    counts
}

/// Finding 7: 2,000 WHEP POSTs to random names (no token, the default) created 2,000 streams,
/// each with a ring and a media task, kept for a minute. Now: no stream, the memory stays
/// where it was, and a real viewer of a real stream plays on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_posts_to_random_names_create_nothing_and_cost_no_memory() {
    let server = TsbridgeProcess::serve(
        env!("CARGO_BIN_EXE_tsbridge"),
        // A small ring: the replay fills it (and the process's RSS) within seconds, not
        // during the measure.
        &[
            "--replay",
            "cam=testdata/h264_opus.ts",
            "--whep-wait",
            "0.2",
            "--ring-bytes",
            "262144",
        ],
    )
    .unwrap();
    let opts = WhepOptions {
        seconds: 120.0,
        ..Default::default()
    };
    let viewer = WhepSession::start(&server.whep_url("cam"), &opts)
        .await
        .unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(10), |c| c.video.len() > 30)
            .await,
        "the viewer plays"
    );
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    // Warm-up (the allocator's high-water mark of 50 requests at once, the runtime's
    // threads), then the measure.
    flood(&server.base, "warm", 200, 50, &offer).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kb();

    let started = Instant::now();
    let base = server.base.clone();
    let posts = tokio::spawn(async move { flood(&base, "rnd", 2000, 50, &offer).await });
    // The viewer gets video in every second of the flood.
    let mut last = viewer.collected().video.len();
    let mut quiet = Vec::new();
    while !posts.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = viewer.collected().video.len();
        if now == last {
            quiet.push(started.elapsed());
        }
        last = now;
    }
    let statuses = posts.await.unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kb();
    eprintln!(
        "2000 POSTs in {took:?}: {statuses:?}; RSS {before} kB -> {after} kB ({:+} kB)",
        after as i64 - before as i64
    );
    assert_eq!(statuses.get(&404), Some(&2000), "{statuses:?}");
    assert!(quiet.is_empty(), "no video at {quiet:?} into the flood");

    let r = request("GET", &format!("{}/streams", server.base), &[], b"")
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let names: Vec<&str> = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["cam"], "no stream for a name nothing feeds");
    let m = request("GET", &format!("{}/metrics", server.base), &[], b"")
        .await
        .unwrap()
        .text();
    assert!(m.contains("\ntsbridge_streams 1\n"), "{m}");
    assert!(
        m.contains("\ntsbridge_waiting_for_unknown_streams 0\n"),
        "{m}"
    );
    assert!(after < before + 5 * 1024, "RSS grew {before} -> {after} kB");
    viewer.finish().await;
}

/// `--max-waiting` is checked before anything is made: past it, a POST for a new name is 503
/// and leaves no stream and no waiting entry behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_waiting_is_checked_before_anything_is_created() {
    let s = serve(|a| {
        a.max_waiting = 3;
        a.whep_wait = Duration::from_secs(5);
    })
    .await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let mut waiting = Vec::new();
    for i in 0..3 {
        let (u, o) = (url(&s, &format!("/whep/w{i}")), offer.clone());
        waiting.push(tokio::spawn(async move {
            request("POST", &u, &[SDP], o.as_bytes()).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.app.registry.waiting() < 3 {
        assert!(Instant::now() < deadline, "the POSTs never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = request("POST", &url(&s, "/whep/w3"), &[SDP], offer.as_bytes())
        .await
        .unwrap();
    assert_503(&r, "--max-waiting");
    assert!(s.app.registry.is_empty(), "waiting creates no stream");
    let mut names = s.app.registry.waited_names();
    names.sort();
    assert_eq!(names, ["w0", "w1", "w2"]);
    for w in waiting {
        w.abort();
    }
}

/// `--max-streams`: a new source past it is 503 + Retry-After (ingest and WHIP alike); the
/// operator's own sources (replay) count but are never refused; an existing stream takes a
/// new source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_refuses_a_new_source_with_503() {
    let s = serve(|a| {
        a.max_streams = 2;
        for name in ["cam1", "cam2", "cam3"] {
            replay(a, name);
        }
    })
    .await;
    assert_eq!(s.app.registry.len(), 3, "replays are never refused");
    let ts = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
    let r = request("PUT", &url(&s, "/ingest/new"), &[], &ts[..188 * 10])
        .await
        .unwrap();
    assert_503(&r, "--max-streams");
    let file = common::testdata("h264_opus.ts");
    let offer = common::whip_offer_sdp(&file, &Default::default())
        .await
        .unwrap();
    let r = request("POST", &url(&s, "/whip/new"), &[SDP], offer.as_bytes())
        .await
        .unwrap();
    assert_503(&r, "--max-streams");
    assert!(s.app.registry.get("new").is_none());
    // A name that exists is no new stream: 409 while its source runs, not 503.
    let r = request("PUT", &url(&s, "/ingest/cam1"), &[], &ts[..188])
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
}

/// `--max-per-ip`, HTTP connections: the next connection from the same address is 503 +
/// Retry-After, and once one closes there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_per_ip_refuses_the_next_connection() {
    let s = serve(|a| a.max_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(s.http_addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(s.http_addr).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut head))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("Retry-After:"), "{head}");
    assert!(head.contains("--max-per-ip"), "{head}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = request("GET", &url(&s, "/streams"), &[], b"").await;
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no room after closing: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--max-per-ip`, WHEP POSTs waiting and WebRTC sessions, by the client's address (here
/// from a trusted proxy's X-Forwarded-For, whose own connections are not capped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_per_ip_refuses_the_next_waiting_post_and_session() {
    let s = serve(|a| {
        a.max_per_ip = 3;
        a.whep_wait = Duration::from_secs(5);
        a.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        replay(a, "cam");
    })
    .await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let from = |ip: &'static str| [SDP, ("X-Forwarded-For", ip)];

    // Three POSTs from one address wait for names nothing feeds; its fourth is refused.
    let mut waiting = Vec::new();
    for i in 0..3 {
        let (u, o) = (url(&s, &format!("/whep/none{i}")), offer.clone());
        waiting.push(tokio::spawn(async move {
            request("POST", &u, &from("192.0.2.7"), o.as_bytes()).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.app.registry.waiting() < 3 {
        assert!(Instant::now() < deadline, "the POSTs never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = request(
        "POST",
        &url(&s, "/whep/none3"),
        &from("192.0.2.7"),
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_503(&r, "--max-per-ip");
    assert!(r.text().contains("waiting"), "{}", r.text());
    for w in waiting {
        w.abort();
    }

    // Sessions: three from one address, the fourth refused; one ends, there is room again;
    // another address is not affected.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
        let r = request(
            "POST",
            &url(&s, "/whep/cam"),
            &from("192.0.2.9"),
            offer.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        sessions.push(r.header("location").unwrap().to_owned());
    }
    let r = request(
        "POST",
        &url(&s, "/whep/cam"),
        &from("192.0.2.9"),
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_503(&r, "--max-per-ip");
    assert!(r.text().contains("sessions"), "{}", r.text());
    let r = request(
        "POST",
        &url(&s, "/whep/cam"),
        &from("192.0.2.10"),
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "another address: {}", r.text());
    let d = request("DELETE", &url(&s, &sessions[0]), &[], b"")
        .await
        .unwrap();
    assert_eq!(d.status, 200);
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let r = request(
        "POST",
        &url(&s, "/whep/cam"),
        &from("192.0.2.9"),
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "a session ended: room again: {}", r.text());
}

/// `--max-ts-readers`: the next `GET /streams/{s}.ts` is 503 + Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ts_readers_refuses_the_next_reader() {
    let s = serve(|a| {
        a.max_ts_readers = 2;
        replay(a, "cam");
    })
    .await;
    let ts = url(&s, "/streams/cam.ts");
    let mut readers = Vec::new();
    for _ in 0..2 {
        let r = common::http::open("GET", &ts, &[], b"").await.unwrap();
        assert_eq!(r.status, 200);
        readers.push(r);
    }
    let r = request("GET", &ts, &[], b"").await.unwrap();
    assert_503(&r, "--max-ts-readers");
    drop(readers);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = common::http::open("GET", &ts, &[], b"").await.unwrap();
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "readers that left still count");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pushes the TS file to `/ingest/{name}` as fast as ~20 MB/s, looping, until aborted.
fn push_fast(s: &Server, name: &str) -> tokio::task::JoinHandle<()> {
    let u = url(s, &format!("/ingest/{name}"));
    tokio::spawn(async move {
        let ts = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
        let mut up = ChunkedUpload::start("PUT", &u, &[]).await.unwrap();
        loop {
            for piece in ts.chunks(1 << 20) {
                if up.send(piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

/// A TS reader that stops reading (its socket takes no more data) is disconnected after
/// --http-timeout: it no longer counts as a reader nor holds its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ts_reader_that_stops_reading_is_dropped() {
    let s = serve(|a| a.http_timeout = Duration::from_secs(1)).await;
    let pusher = push_fast(&s, "fast");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.app.registry.get("fast").is_some_and(|f| f.has_source()) {
        assert!(Instant::now() < deadline, "the source never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A reader with a small receive buffer that reads its response head, then nothing.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut reader = sock.connect(s.http_addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    reader
        .write_all(b"GET /streams/fast.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = reader.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    let stream = s.app.registry.get("fast").unwrap();
    assert_eq!(stream.stats.ts_readers.load(Ordering::Relaxed), 1);
    let stalled = Instant::now();
    let deadline = stalled + Duration::from_secs(15);
    loop {
        let j = common::stream_json(s.http_addr, "fast").await;
        if j["ts_readers"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled reader is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("stalled reader dropped after {:?}", stalled.elapsed());
    // Its connection is closed: what it reads now ends (after what was buffered).
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is still open");
    pusher.abort();
}

/// An ingest whose client stops sending but keeps its connection (a camera that lost power
/// behind a NAT) ends after --ingest-idle: the camera's next connection takes the name
/// instead of 409 forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_ingest_ends_after_ingest_idle_and_frees_its_name() {
    let s = serve(|a| a.ingest_idle = Duration::from_secs(1)).await;
    let ts = std::fs::read(common::testdata("h264_opus.ts")).unwrap();
    let ingest = url(&s, "/ingest/cam");
    let mut first = ChunkedUpload::start("PUT", &ingest, &[]).await.unwrap();
    first.send(&ts[..188 * 100]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.app.registry.get("cam").is_some_and(|c| c.has_source()) {
        assert!(Instant::now() < deadline, "the ingest never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = request("PUT", &ingest, &[], &ts[..188]).await.unwrap();
    assert_eq!(r.status, 409, "the name is taken while it sends");
    // Silence (the connection stays open).
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = request("PUT", &ingest, &[], &ts[..188]).await.unwrap();
        if r.status != 409 || Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(r.status, 200, "the reconnect takes the name: {}", r.text());
    drop(first);
}

async fn node(redis: &common::redis::Redis, f: impl FnOnce(&mut ServeArgs)) -> (Server, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut args = ServeArgs::loopback();
    args.cluster = Some(redis.url.clone());
    args.public_url = Some(url.clone());
    args.cluster_token = Some("cluster-secret-0123456789".into());
    f(&mut args);
    let server = Server::start_on(listener, args).await.expect("node starts");
    (server, url)
}

/// In a cluster each unknown name also started a pull task polling Redis every 250 ms. Now
/// 200 of them on an edge create no stream and no pull, while a real viewer waiting there
/// for a stream that starts on another node is answered and plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_on_an_edge_create_no_stream_and_no_pull() {
    let Some(redis) =
        common::redis::redis("unknown_names_on_an_edge_create_no_stream_and_no_pull").await
    else {
        return;
    };
    let (a, a_url) = node(&redis, |_| {}).await;
    let (b, b_url) = node(&redis, |a| a.whep_wait = Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.app.cluster.as_ref().unwrap().is_up() {
        assert!(Instant::now() < deadline, "B never reached Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let names = {
        let (base, offer) = (b_url.clone(), offer.clone());
        tokio::spawn(async move { flood(&base, "ghost", 200, 50, &offer).await })
    };
    let viewer = {
        let u = format!("{b_url}/whep/cam");
        tokio::spawn(async move { WhepSession::start(&u, &WhepOptions::default()).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cluster = b.app.cluster.as_ref().unwrap();
    assert!(b.app.registry.is_empty(), "waiting creates no stream");
    assert!(
        b.app.registry.waiting_for_unknown() > 1,
        "the POSTs wait (on the waiting list)"
    );
    assert_eq!(cluster.pulled_from("cam"), None, "and start no pull");

    let ingest = format!("{a_url}/ingest/cam");
    let pushing = tokio::spawn(async move {
        tsbridge::ingest::replay::push(&common::testdata("h264_opus.ts"), &ingest, false).await
    });
    let viewer = viewer.await.unwrap().unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(8), |c| c.video.len() > 60)
            .await
    );
    let statuses = names.await.unwrap();
    assert_eq!(statuses.get(&404), Some(&200), "{statuses:?}");
    let streams: Vec<String> = b
        .app
        .registry
        .list()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(streams, ["cam"], "only the stream with a source");
    for i in 0..200 {
        assert_eq!(cluster.pulled_from(&format!("ghost{i}")), None);
    }
    viewer.finish().await;
    pushing.abort();
    drop(a);
}
