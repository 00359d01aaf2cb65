//! Attacks on the trust model (issue 20), each one a request that succeeded before and is
//! refused now. Cluster attacks run real `tsbridge` processes on a real `redis-server`; the
//! others run a server in the test. Status codes before the offer is parsed tell auth apart:
//! 401 is the token refused, 400 ("x" is not SDP) is auth passed.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{self, registered, CLUSTER_TOKEN};
use common::hook::hook;
use common::redis::{redis, redis_tls, redis_with, Redis};
use common::{request, TsbridgeProcess};
use serde_json::Value;
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_tsbridge");
const ADMIN: &str = "admin-secret-0123";
const VIEW: &str = "global-view-token";
const PUBLISH: &str = "global-publish-token";

async fn status(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    request(method, url, headers, body).await.unwrap().status
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A WHEP POST whose body is not SDP: 400 once auth passed, 401 before.
async fn whep_auth(base: &str, stream: &str, token: &str) -> u16 {
    let auth = bearer(token);
    let h = [
        ("Content-Type", "application/sdp"),
        ("Authorization", auth.as_str()),
    ];
    status("POST", &format!("{base}/whep/{stream}"), &h, b"x").await
}

/// A cluster node ([`cluster::node`]) with the admin, view and publish tokens.
fn node(redis_url: &str, extra: &[&str]) -> TsbridgeProcess {
    let mut args = vec![
        "--admin-token",
        ADMIN,
        "--view-token",
        VIEW,
        "--publish-token",
        PUBLISH,
    ];
    args.extend_from_slice(extra);
    cluster::node(redis_url, &args)
}

/// `POST /streams/{name}` with the admin token: the answer (with the clear keys).
async fn register(base: &str, name: &str, body: &str) -> Value {
    let auth = bearer(ADMIN);
    let r = request(
        "POST",
        &format!("{base}/streams/{name}"),
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn redis_cli(r: &Redis, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &r.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---- 1. the cluster token ------------------------------------------------------------------

/// The cluster token reads TS and `/cluster` only: no WHEP, no API, no publishing. A node
/// refuses to start without one, or with one that is also a viewer's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_token_opens_nothing_but_the_nodes_doors() {
    let Some(redis) = redis("the_cluster_token_opens_nothing_but_the_nodes_doors").await else {
        return;
    };
    // Before: without --cluster-token the view token was the cluster token.
    for (flags, says) in [
        (vec![], "--cluster needs --cluster-token"),
        (
            vec!["--cluster-token", VIEW, "--view-token", VIEW],
            "must differ from --view-token",
        ),
        (vec!["--cluster-token", "short"], "at least 16"),
    ] {
        let out = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ice-udp",
                "127.0.0.1:0",
            ])
            .args([
                "--cluster",
                &redis.url,
                "--public-url",
                "http://127.0.0.1:1",
            ])
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
    let a = node(&redis.url, &["--replay", "cam=testdata/h264_opus.ts"]);
    registered(&a.base, 1).await;
    let keys = register(&a.base, "cam", r#"{"view_token": true}"#).await;
    let key = keys["view_token"].as_str().unwrap();
    assert_eq!(whep_auth(&a.base, "cam", CLUSTER_TOKEN).await, 401);
    assert_eq!(whep_auth(&a.base, "cam", VIEW).await, 401);
    assert_eq!(whep_auth(&a.base, "cam", key).await, 400);
    let node = bearer(CLUSTER_TOKEN);
    let h = [("Authorization", node.as_str())];
    assert_eq!(
        status("GET", &format!("{}/streams/cam", a.base), &h, b"").await,
        401
    );
    assert_eq!(
        status("GET", &format!("{}/streams", a.base), &h, b"").await,
        401
    );
    assert_eq!(
        status("PUT", &format!("{}/ingest/new", a.base), &h, b"").await,
        401
    );
    // What it is for: another node's pull, and /cluster.
    let r = common::http::open("GET", &format!("{}/streams/cam.ts", a.base), &h, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        status("GET", &format!("{}/cluster", a.base), &h, b"").await,
        200
    );
}

// ---- 2. keys on every node -----------------------------------------------------------------

/// A stream's keys hold on every node: another node refuses the global tokens for it, takes
/// its keys, and stops taking them within a second of `DELETE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_hold_on_every_node_and_a_delete_revokes_them_everywhere() {
    let Some(redis) = redis("keys_hold_on_every_node").await else {
        return;
    };
    let a = node(&redis.url, &["--replay", "cam=testdata/h264_opus.ts"]);
    let b = node(&redis.url, &[]);
    registered(&a.base, 2).await;
    let keys = register(&a.base, "cam", r#"{"view_token": true}"#).await;
    let view_key = keys["view_token"].as_str().unwrap().to_owned();
    let private = register(&a.base, "private", "").await;
    // Before: B had no keys for cam: the global view token passed, and B pulled it.
    assert_eq!(whep_auth(&b.base, "cam", VIEW).await, 401);
    assert_eq!(whep_auth(&b.base, "cam", &view_key).await, 400);
    // Before: the global publish token claimed a registered name from another node.
    let publish = bearer(PUBLISH);
    let h = [("Authorization", publish.as_str())];
    assert_eq!(
        status("PUT", &format!("{}/ingest/private", b.base), &h, b"").await,
        401
    );
    let own = bearer(private["publish_token"].as_str().unwrap());
    let h = [("Authorization", own.as_str())];
    assert_eq!(
        status("PUT", &format!("{}/ingest/private", b.base), &h, b"").await,
        200
    );
    // Registration is cluster-wide: B cannot register cam again.
    let admin = bearer(ADMIN);
    let h = [("Authorization", admin.as_str())];
    assert_eq!(
        status("POST", &format!("{}/streams/cam", b.base), &h, b"").await,
        409
    );
    // DELETE on A: B stops taking the key within a second.
    assert_eq!(
        status("DELETE", &format!("{}/streams/cam", a.base), &h, b"").await,
        200
    );
    let deleted = Instant::now();
    while whep_auth(&b.base, "cam", &view_key).await != 401 {
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "B still takes a deleted key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the hashes are in Redis.
    let kept = redis_cli(&redis, &["GET", "tsbridge:keys:private"]);
    assert!(kept.contains("publish_sha256"), "{kept}");
    assert!(
        !kept.contains(private["publish_token"].as_str().unwrap()),
        "{kept}"
    );
}

// ---- 3. derived streams --------------------------------------------------------------------

/// `{s}.input` (a pipeline's raw input) takes `{s}`'s keys, and nobody outside publishes
/// into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_input_takes_its_streams_keys() {
    let s = serve(|a| {
        a.pipeline = Some("cat".into());
        a.view_token = Some(VIEW.into());
        a.publish_token = Some(PUBLISH.into());
        a.admin_token = Some(ADMIN.into());
    })
    .await;
    let base = format!("http://{}", s.http_addr);
    let keys = register(&base, "cam", r#"{"view_token": true}"#).await;
    let view = bearer(VIEW);
    let h = [("Authorization", view.as_str())];
    // Before: 200/400 with the global view token.
    assert_eq!(
        status("GET", &format!("{base}/streams/cam.input.ts"), &h, b"").await,
        401
    );
    assert_eq!(whep_auth(&base, "cam.input", VIEW).await, 401);
    assert_eq!(
        whep_auth(&base, "cam.input", keys["view_token"].as_str().unwrap()).await,
        400
    );
    // Before: the global publish token fed the input past the pipeline's publisher.
    let publish = bearer(PUBLISH);
    let h = [("Authorization", publish.as_str())];
    assert_eq!(
        status("PUT", &format!("{base}/ingest/cam.input"), &h, b"").await,
        403
    );
    let own = bearer(keys["publish_token"].as_str().unwrap());
    let h = [
        ("Authorization", own.as_str()),
        ("Content-Type", "application/sdp"),
    ];
    assert_eq!(
        status("POST", &format!("{base}/whip/cam.input"), &h, b"x").await,
        403
    );
}

// ---- 4 and 5. the client's address and the hook's cache ------------------------------------

async fn serve(f: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut args = ServeArgs::loopback();
    f(&mut args);
    Server::start(args).await.expect("server starts")
}

/// Behind a proxy that appends, the address the client wrote itself is never believed: the
/// hook, events and the admin list get the one our proxy saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_a_proxy_cannot_choose_its_address() {
    let h = hook(|_| Some(200)).await;
    let hook_url = h.url.clone();
    let s = serve(|a| {
        a.auth_hook = Some(hook_url);
        a.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    // The client sent "X-Forwarded-For: 6.6.6.6"; our proxy (127.0.0.1) appended its peer.
    let xff = [("X-Forwarded-For", "6.6.6.6, 203.0.113.5")];
    assert_eq!(
        status("GET", &format!("http://{}/streams", s.http_addr), &xff, b"").await,
        200
    );
    let seen = h.bodies.lock().clone();
    assert_eq!(seen.len(), 1);
    // Before: "6.6.6.6".
    assert_eq!(seen[0]["ip"], "203.0.113.5", "{seen:?}");
}

/// One allowed caller does not let in the next for 5 s: the hook is asked again for another
/// address or query (IP rules, signed URLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hooks_answer_is_not_reused_for_another_address_or_query() {
    let h = hook(|v| {
        let ok = v["ip"] == "203.0.113.5" && v["query"] == "sig=good";
        Some(if ok { 200 } else { 403 })
    })
    .await;
    let hook_url = h.url.clone();
    let s = serve(|a| {
        a.auth_hook = Some(hook_url);
        a.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let url = |q: &str| format!("http://{}/streams?{q}", s.http_addr);
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    assert_eq!(
        status("GET", &url("sig=good"), &from("203.0.113.5"), b"").await,
        200
    );
    // Before: both 200 from the cache (same action, stream and token: none).
    assert_eq!(
        status("GET", &url("sig=good"), &from("198.51.100.9"), b"").await,
        401
    );
    assert_eq!(
        status("GET", &url("sig=forged"), &from("203.0.113.5"), b"").await,
        401
    );
    assert_eq!(h.bodies.lock().len(), 3, "the hook was asked each time");
    // The same question again is answered from the cache.
    assert_eq!(
        status("GET", &url("sig=good"), &from("203.0.113.5"), b"").await,
        200
    );
    assert_eq!(h.bodies.lock().len(), 3);
}

// ---- 6. TURN credentials -------------------------------------------------------------------

/// TURN credentials never go into a page anyone can load: an `OPTIONS` or POST with the
/// stream's token carries them; `--turn-secret` mints them per session and stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_go_only_to_callers_with_a_token() {
    let s = serve(|a| {
        a.view_token = Some(VIEW.into());
        a.ice_servers = vec![
            "stun:stun.example.net".into(),
            "turn:turn.example.net".into(),
        ];
        a.ice_username = Some("relay-user".into());
        a.ice_credential = Some("relay-password".into());
    })
    .await;
    let base = format!("http://{}", s.http_addr);
    for page in ["/play/cam", "/publish/cam"] {
        let r = request("GET", &format!("{base}{page}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // Before: the page carried the TURN username and password.
        assert!(
            !r.text().contains("relay-password") && !r.text().contains("turn:"),
            "{page}"
        );
    }
    let links = |r: &common::HttpResponse| r.headers_all("link").join(" | ");
    let r = request("OPTIONS", &format!("{base}/whep/cam"), &[], b"")
        .await
        .unwrap();
    assert!(!links(&r).contains("relay-password"), "{}", links(&r));
    let view = bearer(VIEW);
    let h = [("Authorization", view.as_str())];
    let r = request("OPTIONS", &format!("{base}/whep/cam"), &h, b"")
        .await
        .unwrap();
    assert!(
        links(&r).contains("credential=\"relay-password\""),
        "{}",
        links(&r)
    );
    let wrong = [("Authorization", "Bearer wrong-token")];
    let r = request("OPTIONS", &format!("{base}/whep/cam"), &wrong, b"")
        .await
        .unwrap();
    assert!(!links(&r).contains("relay-password"), "{}", links(&r));

    // Minted: `expiry:stream`, expiring after --turn-ttl.
    let s = serve(|a| {
        a.ice_servers = vec!["turn:turn.example.net".into()];
        a.turn_secret = Some("shared-with-coturn".into());
        a.turn_ttl = Duration::from_secs(600);
    })
    .await;
    let token = [("Authorization", "Bearer anyone")];
    let r = request(
        "OPTIONS",
        &format!("http://{}/whep/cam", s.http_addr),
        &token,
        b"",
    )
    .await
    .unwrap();
    let link = links(&r);
    let user = link
        .split("username=\"")
        .nth(1)
        .and_then(|u| u.split('"').next())
        .unwrap_or_else(|| panic!("{link}"));
    let (expiry, stream) = user.split_once(':').unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now + 590..=now + 610).contains(&expiry), "{user}");
    assert_eq!(stream, "cam");
    assert!(link.contains("credential=\"") && !link.contains("shared-with-coturn"));
}

// ---- 10. Redis is not trusted blindly ------------------------------------------------------

/// Records in Redis that no node signed are never contacted: no pull (which would carry the
/// cluster token) and no redirect (which would carry the client's token) goes to them.
/// Redis with a password works; no `KEYS` scan runs (it is renamed away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_records_in_redis_are_never_contacted() {
    let Some(redis) = redis_with(
        "forged_records_in_redis_are_never_contacted",
        &[
            "--requirepass",
            "redis-pass",
            "--rename-command",
            "KEYS",
            "",
        ],
    )
    .await
    else {
        return;
    };
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let visits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let v = visits.clone();
    tokio::spawn(async move {
        while let Ok((_tcp, _)) = trap.accept().await {
            v.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let url = format!("redis://:redis-pass@127.0.0.1:{}/0", redis.port);
    // Full at once: a viewer would be sent elsewhere.
    let b = node(&url, &["--max-sessions", "0"]);
    registered(&b.base, 1).await;
    let cli = |args: &[&str]| {
        let mut all = vec!["-a", "redis-pass", "--no-auth-warning"];
        all.extend_from_slice(args);
        redis_cli(&redis, &all)
    };
    let forged_node = format!(
        "00 {}",
        serde_json::json!({"id": "evil", "url": trap_url, "sessions": 0, "viewers": 0,
            "max_sessions": 100, "max_viewers": 100, "egress_bps": 0, "streams_owned": ["cam"],
            "streams_pulled": [], "draining": false})
    );
    cli(&["SET", "tsbridge:node:evil", &forged_node, "PX", "60000"]);
    cli(&["ZADD", "tsbridge:nodes", "99999999999999", "evil"]);
    cli(&[
        "SET",
        "tsbridge:stream:cam",
        &format!("evil {trap_url} 00"),
        "PX",
        "60000",
    ]);
    let c = registered(&b.base, 1).await;
    assert!(!c.to_string().contains(&trap_url), "{c}");
    // A full node with only a forged one elsewhere: 503, not a 307 to it.
    let offer = common::offer_sdp(&common::WhepOptions::default())
        .await
        .unwrap();
    let r = request(
        "POST",
        &format!("{}/whep/cam?token={VIEW}", b.base),
        &[("Content-Type", "application/sdp")],
        offer.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let b2 = node(&url, &[]);
    registered(&b2.base, 2).await;
    let auth = bearer(VIEW);
    let h = [
        ("Content-Type", "application/sdp"),
        ("Authorization", auth.as_str()),
    ];
    let _ = common::http::request_with_timeout(
        "POST",
        &format!("{}/whep/cam", b2.base),
        &h,
        offer.as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        visits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a forged URL was contacted"
    );
}

/// Redis answering slowly (`DEBUG SLEEP`) holds no request past its bound (a prompt 503), and
/// Redis restarted empty is noticed: the nodes and the stream's claim come back by themselves,
/// and the loss of its data (registered keys) is counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_emptied_redis_holds_no_request() {
    let test = "a_slow_or_emptied_redis_holds_no_request";
    let Some(mut redis) = redis_with(test, &["--enable-debug-command", "local"]).await else {
        return;
    };
    let a = node(&redis.url, &["--replay", "cam=testdata/h264_opus.ts"]);
    let b = node(&redis.url, &[]);
    registered(&a.base, 2).await;
    let port = redis.port.to_string();
    let sleeper = std::thread::spawn(move || {
        Command::new("redis-cli")
            .args(["-p", &port, "DEBUG", "SLEEP", "3"])
            .output()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let offer = common::offer_sdp(&common::WhepOptions::default())
        .await
        .unwrap();
    let view = bearer(VIEW);
    let sdp = [
        ("Content-Type", "application/sdp"),
        ("Authorization", view.as_str()),
    ];
    let cluster = bearer(CLUSTER_TOKEN);
    let node_auth = [("Authorization", cluster.as_str())];
    let stream_url = format!("{}/streams/cam", b.base);
    prompt_503(
        "POST",
        &format!("{}/whep/elsewhere", b.base),
        &sdp,
        offer.as_bytes(),
    )
    .await;
    prompt_503("GET", &stream_url, &[("Authorization", view.as_str())], b"").await;
    prompt_503("GET", &format!("{}/cluster", b.base), &node_auth, b"").await;
    let _ = sleeper.join();
    // Emptied: nodes and claims return within a few ticks; the loss is counted.
    redis.restart().await;
    registered(&a.base, 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = registered(&b.base, 2).await;
        let owned = c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["streams_owned"] == serde_json::json!(["cam"]));
        let metrics = request("GET", &format!("{}/metrics", a.base), &[], b"")
            .await
            .unwrap()
            .text();
        if owned && metrics.contains("tsbridge_cluster_redis_data_lost_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "claim or loss not seen: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request Redis cannot answer now: 503 within its bound (500 ms per Redis call).
async fn prompt_503(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) {
    let t = Instant::now();
    let r = request(method, url, headers, body).await.unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{method} {url}: {}", r.text());
    assert!(
        took < Duration::from_millis(1500),
        "{method} {url} took {took:?}"
    );
}

/// `rediss://`: nodes reach a TLS-only Redis, verified against the CA in `SSL_CERT_FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_redis_over_tls() {
    let dir = std::env::temp_dir().join(format!("tsbridge-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = common::ca_signed_cert(&dir);
    let Some(redis) = redis_tls("nodes_reach_redis_over_tls", &cert, &key).await else {
        return;
    };
    // rustls-native-certs reads it instead of the system's roots.
    let env = [("SSL_CERT_FILE", ca.as_path())];
    let a = cluster::node_with_env(&redis.url, &["--replay", "cam=testdata/h264_opus.ts"], &env);
    let b = cluster::node_with_env(&redis.url, &[], &env);
    let c = registered(&a.base, 2).await;
    assert_eq!(c["redis"], "up", "{c}");
    registered(&b.base, 2).await;
    let _ = std::fs::remove_dir_all(dir);
}

// ---- 11 and 12. registration and listings --------------------------------------------------

/// Registration has one winner; names a path or a flag could mistake are refused; listings
/// show a private stream and node URLs only to whom may see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_has_one_winner_and_listings_hide_private_streams() {
    let s = serve(|a| {
        a.view_token = Some(VIEW.into());
        a.admin_token = Some(ADMIN.into());
        a.replays.push(Named {
            name: "secret".into(),
            value: common::testdata("h264_opus.ts"),
        });
        a.replays.push(Named {
            name: "public".into(),
            value: common::testdata("h264_opus.ts"),
        });
    })
    .await;
    let base = format!("http://{}", s.http_addr);
    let admin = bearer(ADMIN);
    let h = [("Authorization", admin.as_str())];
    let race = format!("{base}/streams/race");
    let posts = (0..20).map(|_| status("POST", &race, &h, b""));
    let codes = futures_util::future::join_all(posts).await;
    assert_eq!(codes.iter().filter(|&&c| c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 19, "{codes:?}");
    register(&base, "secret", r#"{"view_token": true}"#).await;
    for bad in [".", "..", "-x", "_a"] {
        assert_eq!(
            status("POST", &format!("{base}/streams/{bad}"), &h, b"").await,
            400,
            "{bad}"
        );
    }
    let list = |token: &str| {
        let auth = bearer(token);
        let url = format!("{base}/streams");
        async move {
            let r = request("GET", &url, &[("Authorization", &auth)], b"")
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            let names: Vec<String> = v["streams"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect();
            names
        }
    };
    // Before: the global view token listed the private stream.
    assert_eq!(list(VIEW).await, ["public"]);
    assert_eq!(list(ADMIN).await, ["public", "secret"]);
    // Not in a cluster: /cluster says so, but only to the admin.
    let view = bearer(VIEW);
    let h = [("Authorization", view.as_str())];
    assert_eq!(
        status("GET", &format!("{base}/cluster"), &h, b"").await,
        401
    );
    let _: SocketAddr = s.http_addr;
}
