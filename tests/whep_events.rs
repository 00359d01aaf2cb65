//! WHEP server-sent events across a cluster on real processes (issue 24): a `redis-server` and
//! two `tsbridge` nodes (`common::cluster`). When `reconnect` is sent and when not is in
//! docs/DESIGN.md ("When `reconnect` is sent"): the node drains (SIGTERM), or the stream's
//! source stopped here and started on another node; a full node moves nobody.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{node, node_record, registered};
use common::redis::redis;
use common::sse::{events, subscribe};
use common::{request, TsbridgeProcess, WhepOptions, WhepSession};

/// Waits until `on` sees node `owner`'s record list `name` as owned.
async fn owned(on: &str, owner: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = node_record(on, owner).await;
        if r.as_ref()
            .and_then(|r| r["streams_owned"].as_array())
            .is_some_and(|s| s.iter().any(|x| x == name))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{owner} never owned {name}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `testdata/h264_opus.ts` pushed to `{base}/ingest/cam`, looping, until aborted.
fn push(base: &str) -> tokio::task::JoinHandle<Result<(), String>> {
    let url = format!("{base}/ingest/cam");
    tokio::spawn(async move {
        tsbridge::ingest::replay::push(&common::testdata("h264_opus.ts"), &url, true).await
    })
}

async fn viewer(on: &TsbridgeProcess, opts: &WhepOptions) -> WhepSession {
    let v = WhepSession::start(&on.whep_url("cam"), opts).await.unwrap();
    assert_eq!(v.status, 201, "{:?}", v.error_body);
    v
}

/// A SIGTERM'd node sends its viewers to the other node: `active`, the viewer count, then
/// `reconnect` with B's URL, in that order. A caller without the view token gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_sends_viewers_to_another_node_and_strangers_hear_nothing() {
    let test = "a_sigterm_sends_viewers_to_another_node_and_strangers_hear_nothing";
    let Some(redis) = redis(test).await else {
        return;
    };
    let a = node(
        &redis.url,
        &[
            "--replay",
            "cam=testdata/h264_opus.ts",
            "--view-token",
            "viewers-token",
        ],
    );
    let b = node(&redis.url, &[]);
    registered(&b.base, 2).await;
    owned(&b.base, &a.base, "cam").await;
    let auth = [("Authorization", "Bearer viewers-token")];
    let opts = WhepOptions {
        headers: vec![(auth[0].0.into(), auth[0].1.into())],
        ..Default::default()
    };
    let v = viewer(&a, &opts).await;
    let asked = br#"["active", "viewercount", "reconnect"]"#;
    // Without the token: no subscription, no event stream.
    let sub = format!("{}{}", a.base, common::sse::link(&v));
    let json = [("Content-Type", "application/json")];
    let r = request("POST", &sub, &json, asked).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let mut stream = subscribe(&a.base, &v, asked, &auth).await;
    let r = request("GET", &format!("{sub}?events=active"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let mut text = String::new();
    let got = events(&mut stream.body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "active", "{got:?}");
    assert_eq!(got[1].1, serde_json::json!({"viewercount": 1}), "{got:?}");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let got = events(&mut stream.body, &mut text, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].0, "reconnect", "{got:?}");
    assert_eq!(got[2].1["url"], b.whep_url("cam"), "{got:?}");
    v.finish().await;
}

/// The source moves: a viewer on A, where the source was, hears `inactive` when it stops, and
/// `reconnect` to B once a source for the name starts there (B has its claim), so it watches
/// where the source is rather than through a pull A would start for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_sent_to_the_node_their_source_moved_to() {
    let Some(redis) = redis("viewers_are_sent_to_the_node_their_source_moved_to").await else {
        return;
    };
    let a = node(&redis.url, &[]);
    let b = node(&redis.url, &[]);
    registered(&b.base, 2).await;
    let first = push(&a.base);
    owned(&b.base, &a.base, "cam").await;
    let v = viewer(&a, &WhepOptions::default()).await;
    let mut stream = subscribe(&a.base, &v, br#"["active", "inactive", "reconnect"]"#, &[]).await;
    let mut text = String::new();
    let got = events(&mut stream.body, &mut text, 1, Duration::from_secs(5)).await;
    assert_eq!(got.first().map(|e| e.0.as_str()), Some("active"), "{got:?}");
    first.abort();
    let got = events(&mut stream.body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(
        got.get(1).map(|e| e.0.as_str()),
        Some("inactive"),
        "{got:?}"
    );
    // B gets the name once A released its claim (within a tick): until then its PUT is 409.
    let deadline = Instant::now() + Duration::from_secs(8);
    let second = loop {
        let p = push(&b.base);
        tokio::time::sleep(Duration::from_millis(700)).await;
        if !p.is_finished() {
            break p;
        }
        assert!(Instant::now() < deadline, "B never got the name");
    };
    let got = events(&mut stream.body, &mut text, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].0, "reconnect", "{got:?}");
    assert_eq!(got[2].1["url"], b.whep_url("cam"), "{got:?}");
    v.finish().await;
    second.abort();
}

/// A full node (`--max-sessions 1`) moves none of its viewers: its one viewer hears no
/// `reconnect` and plays on while the next POST is sent to B (307).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_keeps_its_viewers_and_sends_new_ones_elsewhere() {
    let Some(redis) = redis("a_full_node_keeps_its_viewers_and_sends_new_ones_elsewhere").await
    else {
        return;
    };
    let a = node(
        &redis.url,
        &[
            "--replay",
            "cam=testdata/h264_opus.ts",
            "--max-sessions",
            "1",
        ],
    );
    let b = node(&redis.url, &[]);
    registered(&b.base, 2).await;
    owned(&b.base, &a.base, "cam").await;
    let v = viewer(&a, &WhepOptions::default()).await;
    let asked = br#"["active", "viewercount", "reconnect"]"#;
    let mut stream = subscribe(&a.base, &v, asked, &[]).await;
    let mut text = String::new();
    let got = events(&mut stream.body, &mut text, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    // A second viewer: A is full, B has room.
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let sdp = [("Content-Type", "application/sdp")];
    let r = request("POST", &a.whep_url("cam"), &sdp, offer.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(r.header("location"), Some(b.whep_url("cam").as_str()));
    let before = v.collected().video.len();
    let got = events(&mut stream.body, &mut text, 3, Duration::from_secs(3)).await;
    assert!(
        got.iter().all(|(e, _)| e != "reconnect"),
        "a full node's viewer stays: {got:?}"
    );
    assert!(
        v.wait_until(Duration::from_secs(3), |c| c.video.len() > before + 30)
            .await,
        "and plays on"
    );
    v.finish().await;
}
