//! Operator integration: the auth hook, the event hook, per-stream keys, the admin API, the
//! OpenAPI document, JSON logs and TURN credentials in `Link`. The hooks are stand-in HTTP
//! servers inside the test; the viewers are the `webrtc` crate.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::hook::hook;
use common::{request, WhepOptions, WhepSession};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tsbridge::config::{Named, ServeArgs};
use tsbridge::server::Server;

async fn serve(f: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut args = ServeArgs::loopback();
    f(&mut args);
    Server::start(args).await.expect("server starts")
}

fn replay(args: &mut ServeArgs, name: &str, file: &str) {
    args.replays.push(Named {
        name: name.into(),
        value: common::testdata(file),
    });
}

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

async fn status(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    request(method, url, headers, body).await.unwrap().status
}

// ---- auth hook ----------------------------------------------------------------------------

/// Each action asks the hook with its protocol, stream, token and the client's address; 2xx
/// allows, anything else is 401 with WWW-Authenticate; answers are cached per token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_hook_allows_and_refuses_each_action() {
    let h = hook(|v| Some(if v["token"] == "good" { 200 } else { 403 })).await;
    let hook_url = h.url.clone();
    let s = serve(|a| {
        a.auth_hook = Some(hook_url);
        replay(a, "cam", "h264_opus.ts");
    })
    .await;
    let good = [("Authorization", "Bearer good")];
    let bad = [("Authorization", "Bearer bad")];
    let sdp = [("Content-Type", "application/sdp")];
    // API read.
    assert_eq!(status("GET", &url(&s, "/streams"), &good, b"").await, 200);
    let r = request("GET", &url(&s, "/streams/cam"), &bad, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    // View: past the hook, the offer is checked (400: not SDP), else 401.
    let view = |t: &'static str| [sdp[0], ("Authorization", t)];
    assert_eq!(
        status("POST", &url(&s, "/whep/cam"), &view("Bearer good"), b"x").await,
        400
    );
    assert_eq!(
        status("POST", &url(&s, "/whep/cam"), &view("Bearer bad"), b"x").await,
        401
    );
    // Publish (ingest, token in the query as OBS/ffmpeg URLs carry it) and TS pull.
    assert_eq!(
        status("PUT", &url(&s, "/ingest/new?token=bad"), &[], b"").await,
        401
    );
    assert_eq!(
        status("PUT", &url(&s, "/ingest/new?token=good"), &[], b"").await,
        200
    );
    assert_eq!(
        status("GET", &url(&s, "/streams/nope.ts?token=bad"), &[], b"").await,
        401
    );
    let asked = h.bodies.lock().clone();
    let find = |action: &str, protocol: &str, token: &str| {
        asked.iter().any(|v| {
            v["action"] == action
                && v["protocol"] == protocol
                && v["token"] == token
                && v["ip"] == "127.0.0.1"
        })
    };
    assert!(find("api", "api", "good"), "{asked:?}");
    assert!(find("view", "whep", "bad"), "{asked:?}");
    assert!(find("publish", "ingest", "good"), "{asked:?}");
    assert!(find("view", "ts", "bad"), "{asked:?}");
    assert!(asked
        .iter()
        .any(|v| v["stream"] == "cam" && v["query"].is_null()));
    assert!(asked.iter().any(|v| v["query"] == "token=bad"));
    // Cached: asking again within the cache time does not reach the hook.
    let before = h.bodies.lock().len();
    assert_eq!(status("GET", &url(&s, "/streams"), &good, b"").await, 200);
    assert_eq!(h.bodies.lock().len(), before);
}

/// A hook that is down, or does not answer within --auth-hook-timeout, is a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_hook_down_or_silent_fails_closed() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hook", dead.local_addr().unwrap());
    drop(dead);
    let s = serve(|a| a.auth_hook = Some(dead_url)).await;
    assert_eq!(status("GET", &url(&s, "/streams"), &[], b"").await, 401);

    let silent = hook(|_| None).await;
    let s = serve(|a| {
        a.auth_hook = Some(silent.url.clone());
        a.auth_hook_timeout = Duration::from_millis(500);
    })
    .await;
    let t = Instant::now();
    assert_eq!(status("GET", &url(&s, "/streams"), &[], b"").await, 401);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

// ---- event hook ---------------------------------------------------------------------------

/// A stream's and a session's life arrive as events, in order, with what they carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_a_stream_and_a_session_life_in_order() {
    let h = hook(|_| Some(200)).await;
    let hook_url = h.url.clone();
    let s = serve(|a| a.event_hook = Some(hook_url)).await;
    // A source that comes and goes: a 6 s file pushed over HTTP in real time.
    let push = tokio::spawn({
        let u = url(&s, "/ingest/cam");
        async move {
            let file = common::testdata("h264_opus.ts");
            tsbridge::ingest::replay::push(&file, &u, false)
                .await
                .unwrap();
        }
    });
    let viewer = WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201, "{:?}", viewer.error_body);
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 20)
            .await
    );
    let r = viewer.finish().await;
    assert!(r.video.len() > 20);
    push.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let ev = h.bodies.lock().clone();
        if ev.iter().any(|e| e["type"] == "stream.ended")
            && ev.iter().any(|e| e["type"] == "session.ended")
        {
            break ev;
        }
        assert!(Instant::now() < deadline, "events: {ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let at = |t: &str| types.iter().position(|x| *x == t).unwrap_or(usize::MAX);
    assert!(at("stream.ready") < at("session.started"), "{types:?}");
    assert!(at("session.started") < at("session.ended"), "{types:?}");
    assert!(at("stream.ready") < at("stream.ended"), "{types:?}");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "delivered in order: {seqs:?}"
    );
    let started = &events[at("session.started")];
    let ended = &events[at("session.ended")];
    assert_eq!(started["stream"], "cam");
    assert_eq!(started["role"], "viewer");
    assert_eq!(started["ip"], "127.0.0.1");
    assert_eq!(started["session"], ended["session"]);
    assert!(ended["bytes"].as_u64() > Some(10_000), "{ended}");
    assert!(ended["packets"].as_u64() > Some(20), "{ended}");
    assert!(ended["duration_seconds"].as_f64() > Some(0.1), "{ended}");
    assert_eq!(ended["cause"], "deleted by client");
}

/// An event hook that never answers delays nothing: the session connects at once and media
/// flows at its rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_never_answers_delays_nothing() {
    let silent = hook(|_| None).await;
    let hook_url = silent.url.clone();
    let s = serve(|a| {
        a.event_hook = Some(hook_url);
        replay(a, "cam", "h264_opus.ts");
    })
    .await;
    let t = Instant::now();
    let r = common::whep_receive(
        &url(&s, "/whep/cam"),
        WhepOptions {
            seconds: 3.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    let connected = r.connected_at.expect("connected");
    assert!(connected.duration_since(r.posted_at) < Duration::from_secs(2));
    // 30 fps for ~3 s: the GOP cache and then live frames, as without a hook.
    let aus = common::h264_access_units(&r.video).len();
    assert!(aus >= 70, "{aus} access units in {:?}", t.elapsed());
}

// ---- per-stream keys and the admin API ----------------------------------------------------

/// Registration makes keys; the stream then takes only them; DELETE + POST rotates them; they
/// survive a restart (--data-dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_streams_take_only_their_keys_which_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("tsbridge-op-{}", rand::random::<u64>()));
    let start = |dir: std::path::PathBuf| {
        serve(move |a| {
            a.admin_token = Some("admin-secret".into());
            a.publish_token = Some("global-publish".into());
            a.data_dir = Some(dir);
        })
    };
    let s = start(dir.clone()).await;
    let admin = [("Authorization", "Bearer admin-secret")];
    assert_eq!(
        status("POST", &url(&s, "/streams/cam"), &[], b"").await,
        401
    );
    let r = request(
        "POST",
        &url(&s, "/streams/cam"),
        &admin,
        br#"{"view_token": true}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let keys: Value = serde_json::from_str(&r.text()).unwrap();
    let publish = keys["publish_token"].as_str().unwrap().to_owned();
    let view = keys["view_token"].as_str().unwrap().to_owned();
    assert_eq!(publish.len(), 32);
    assert_ne!(publish, view);
    assert!(keys["urls"]["whip"]
        .as_str()
        .unwrap()
        .ends_with("/whip/cam"));
    assert_eq!(keys["persistent"], true);
    assert_eq!(
        status("POST", &url(&s, "/streams/cam"), &admin, b"").await,
        409
    );
    let put = |token: String| {
        let u = url(&s, &format!("/ingest/cam?token={token}"));
        async move { status("PUT", &u, &[], b"").await }
    };
    // The global publish token no longer opens it; its own key does.
    assert_eq!(put("global-publish".into()).await, 401);
    assert_eq!(put(publish.clone()).await, 200);
    // Viewing (and reading it) takes its view key.
    assert_eq!(status("GET", &url(&s, "/streams/cam"), &[], b"").await, 401);
    let bearer = format!("Bearer {view}");
    assert_eq!(
        status(
            "GET",
            &url(&s, "/streams/cam"),
            &[("Authorization", &bearer)],
            b""
        )
        .await,
        200
    );
    // Other streams keep the global token.
    assert_eq!(
        status(
            "PUT",
            &url(&s, "/ingest/other?token=global-publish"),
            &[],
            b""
        )
        .await,
        200
    );
    drop(s);

    // After a restart, the same keys.
    let s = start(dir.clone()).await;
    let u = url(&s, &format!("/ingest/cam?token={publish}"));
    assert_eq!(status("PUT", &u, &[], b"").await, 200);
    // Rotation: DELETE, then POST with given keys.
    assert_eq!(
        status("DELETE", &url(&s, "/streams/cam"), &admin, b"").await,
        200
    );
    let r = request(
        "POST",
        &url(&s, "/streams/cam"),
        &admin,
        br#"{"publish_token": "a-new-publish-key"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(status("PUT", &u, &[], b"").await, 401);
    let u = url(&s, "/ingest/cam?token=a-new-publish-key");
    assert_eq!(status("PUT", &u, &[], b"").await, 200);
    let _ = std::fs::remove_dir_all(dir);
}

/// The admin lists a stream's sessions with their figures and ends one: its RTP stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_sessions_and_kicks_one() {
    let s = serve(|a| {
        a.admin_token = Some("admin-secret".into());
        replay(a, "cam", "h264_opus.ts");
    })
    .await;
    let admin = [("Authorization", "Bearer admin-secret")];
    let viewer = WhepSession::start(&url(&s, "/whep/cam"), &WhepOptions::default())
        .await
        .unwrap();
    assert_eq!(viewer.status, 201);
    assert!(
        viewer
            .wait_until(Duration::from_secs(5), |c| c.video.len() > 30)
            .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        status("GET", &url(&s, "/streams/cam/sessions"), &[], b"").await,
        401
    );
    let r = request("GET", &url(&s, "/streams/cam/sessions"), &admin, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let list: Value = serde_json::from_str(&r.text()).unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{list}");
    let v = &sessions[0];
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["connected"], true);
    assert!(v["packets_sent"].as_u64() > Some(30), "{v}");
    assert!(v["bytes_sent"].as_u64() > Some(10_000), "{v}");
    assert!(v["codecs"].as_array().is_some_and(|c| !c.is_empty()), "{v}");
    let id = v["id"].as_str().unwrap();
    let kick = url(&s, &format!("/streams/cam/sessions/{id}"));
    assert_eq!(status("DELETE", &kick, &admin, b"").await, 204);
    assert_eq!(status("DELETE", &kick, &admin, b"").await, 404);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = viewer.collected().video.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        viewer.collected().video.len(),
        n,
        "the kicked viewer's RTP stopped"
    );
    let metrics = request("GET", &url(&s, "/metrics"), &[], b"")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("cause=\"ended by the admin API\"} 1"),
        "the session's end cause"
    );
    // Without --admin-token the admin API is off.
    let plain = serve(|_| {}).await;
    assert_eq!(
        status("GET", &url(&plain, "/streams/cam/sessions"), &admin, b"").await,
        403
    );
}

/// `/metrics` takes the metrics token (or the admin token) when --metrics-token is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let s = serve(|a| {
        a.metrics_token = Some("m-token".into());
        a.admin_token = Some("admin-secret".into());
    })
    .await;
    assert_eq!(status("GET", &url(&s, "/metrics"), &[], b"").await, 401);
    assert_eq!(
        status(
            "GET",
            &url(&s, "/metrics"),
            &[("Authorization", "Bearer m-token")],
            b""
        )
        .await,
        200
    );
    assert_eq!(
        status(
            "GET",
            &url(&s, "/metrics"),
            &[("Authorization", "Bearer admin-secret")],
            b""
        )
        .await,
        200
    );
}

// ---- the HTTP surface, documented ---------------------------------------------------------

/// `/openapi.json` names every route of the router with its methods, and the server answers
/// every path and method it names (none falls through to "no such endpoint" or 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_covers_every_route() {
    let s = serve(|a| a.admin_token = Some("admin-secret".into())).await;
    let r = request("GET", &url(&s, "/openapi.json"), &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let spec: Value = serde_json::from_str(&r.text()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    // The router, from its source.
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    let router = &src[src.find("Router::new()").unwrap()..src.find(".fallback(").unwrap()];
    let mut routes = 0;
    for part in router.split(".route(").skip(1) {
        let path = part.split('"').nth(1).unwrap();
        let methods: Vec<&str> = ["get", "post", "put", "patch", "delete", "head", "options"]
            .into_iter()
            .filter(|m| {
                part.contains(&format!("{m}(")) && !part.contains(&format!("{m}_"))
                    || part.contains(&format!(".{m}("))
                    || part.contains(&format!("::{m}("))
            })
            .collect();
        assert!(!methods.is_empty(), "{path}");
        let doc = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is routed but not in openapi.json"));
        for m in methods {
            assert!(
                doc.get(m).is_some(),
                "{m} {path} is routed but not in openapi.json"
            );
        }
        routes += 1;
    }
    assert!(routes >= 14);
    // The server, for every documented path and method.
    for (path, ops) in paths {
        let concrete = path.replace("{stream}", "cam").replace("{session}", "0000");
        for m in ops.as_object().unwrap().keys() {
            let method = m.to_uppercase();
            let u = url(&s, &concrete);
            let r = common::http::request_with_timeout(
                &method,
                &u,
                &[("Authorization", "Bearer admin-secret")],
                b"",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
            assert_ne!(r.status, 405, "{method} {path}");
            if r.status == 404 {
                assert!(
                    !r.text().contains("no such endpoint"),
                    "{method} {path}: {}",
                    r.text()
                );
            }
        }
    }
}

// ---- logs and the web edge ----------------------------------------------------------------

/// `--log-format json`: every line on stderr is a JSON object with a level and a message; and
/// no colour codes when stderr is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse() {
    use tokio::io::AsyncBufReadExt;
    for format in ["json", "text"] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsbridge"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ice-udp",
                "127.0.0.1:0",
            ])
            .args(["--log-format", format, "--replay"])
            .arg(format!(
                "cam={}",
                common::testdata("h264_opus.ts").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Ok(Some(l)) = lines.next_line().await {
                seen.push(l);
            }
        })
        .await;
        let _ = child.kill().await;
        assert!(seen.len() >= 3, "{seen:?}");
        for l in &seen {
            assert!(!l.contains('\u{1b}'), "no ANSI codes: {l:?}");
            if format == "json" {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
                assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
            }
        }
    }
}

/// TURN servers go out in `Link` headers with their credentials; STUN ones without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_headers_carry_turn_credentials() {
    let s = serve(|a| {
        replay(a, "cam", "h264_opus.ts");
        a.ice_servers = vec![
            "stun:stun.example.net:3478".into(),
            "turn:turn.example.net:3478?transport=udp".into(),
        ];
        a.ice_username = Some("user1".into());
        a.ice_credential = Some("pass1".into());
    })
    .await;
    let r = common::whep_receive(
        &url(&s, "/whep/cam"),
        WhepOptions {
            seconds: 0.5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    let links = r.response.headers_all("link");
    assert!(
        links
            .iter()
            .any(|l| l.contains("<stun:stun.example.net:3478>") && !l.contains("username")),
        "{links:?}"
    );
    assert!(
        links
            .iter()
            .any(|l| l.contains("<turn:turn.example.net:3478?transport=udp>")
                && l.contains("username=\"user1\"")
                && l.contains("credential=\"pass1\"")),
        "{links:?}"
    );
    let _: SocketAddr = s.http_addr;
}

/// Behind a trusted proxy, `X-Forwarded-Proto/Host` shape the absolute `Playback-Url`; from
/// anybody else they are ignored. (`Location` is relative, so it resolves through the proxy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_a_trusted_proxy_shape_urls() {
    let offer = common::whip_offer_sdp(
        &common::testdata("h264_opus.ts"),
        &common::WhipOptions::default(),
    )
    .await
    .unwrap();
    for (trusted, want) in [
        (true, "https://tv.example.com/whep/cam".to_string()),
        (false, String::new()),
    ] {
        let s = serve(|a| {
            if trusted {
                a.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
        })
        .await;
        let want = if trusted { want } else { url(&s, "/whep/cam") };
        let r = request(
            "POST",
            &url(&s, "/whip/cam"),
            &[
                ("Content-Type", "application/sdp"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "tv.example.com"),
            ],
            offer.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("playback-url"), Some(want.as_str()));
        assert!(r.header("location").unwrap().starts_with("/whip/cam/"));
    }
}

/// WHEP over HTTPS: the TLS handshake with the configured certificate, then the same answer as
/// over HTTP; a plain-HTTP request to the HTTPS port gets no HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_over_https() {
    use rustls_pki_types::pem::PemObject;
    let dir = std::env::temp_dir().join(format!("tsbridge-tls-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = common::self_signed_cert(&dir);
    let der = rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap();
    let s = serve(|a| {
        a.tls_cert = Some(cert);
        a.tls_key = Some(key);
        replay(a, "cam", "h264_opus.ts");
    })
    .await;
    let offer = common::offer_sdp(&WhepOptions::default()).await.unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(PinnedCert(der, provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(s.http_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let req = format!(
        "POST /whep/cam HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{offer}",
        offer.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(text.contains("a=fingerprint"), "{text}");
    let plain = request("GET", &url(&s, "/streams"), &[], b"").await;
    assert!(
        plain.is_err(),
        "plain HTTP gets no HTTP answer: {:?}",
        plain.map(|r| r.status)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Trusts exactly one (self-signed) certificate; signatures checked by the provider.
#[derive(Debug)]
struct PinnedCert(
    rustls_pki_types::CertificateDer<'static>,
    std::sync::Arc<rustls::crypto::CryptoProvider>,
);

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the server's certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.1.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.1.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// Issue 23: `/healthz` and `/readyz` answer without a token (a server with tokens set); a
/// clustered node whose Redis is out of reach is alive but not ready (503, with why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_without_a_token() {
    let s = serve(|a| {
        a.view_token = Some("view-secret".into());
        a.admin_token = Some("admin-secret".into());
    })
    .await;
    let get = |path: &str| {
        let u = url(&s, path);
        async move { request("GET", &u, &[], b"").await.unwrap() }
    };
    let (health, ready) = (get("/healthz").await, get("/readyz").await);
    assert_eq!(
        (health.status, ready.status),
        (200, 200),
        "{}",
        ready.text()
    );
    assert!(ready.text().contains("\"ready\""), "{}", ready.text());

    // Nothing listens on port 1: the node starts, and says it is not ready.
    let lonely = serve(|a| {
        a.cluster = Some("redis://127.0.0.1:1/0".into());
        a.cluster_token = Some("cluster-secret-0123456789".into());
        a.public_url = Some("http://127.0.0.1:9".into());
    })
    .await;
    let ready = request("GET", &url(&lonely, "/readyz"), &[], b"")
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("Redis"), "{}", ready.text());
    let health = request("GET", &url(&lonely, "/healthz"), &[], b"")
        .await
        .unwrap();
    assert_eq!(health.status, 200);

    // `tsbridge health`, the container's HEALTHCHECK: 0 when ready, 1 when not (with why),
    // 0 with --live on a node that serves but is not ready.
    let health_cmd = |base: String, live: bool| async move {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_tsbridge"));
        c.args(["health", "--url", &base]);
        if live {
            c.arg("--live");
        }
        c.output().await.unwrap()
    };
    let base = |s: &tsbridge::server::Server| format!("http://{}", s.http_addr);
    assert!(health_cmd(base(&s), false).await.status.success());
    let not_ready = health_cmd(base(&lonely), false).await;
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("503"));
    assert!(health_cmd(base(&lonely), true).await.status.success());
}

/// Shutdown drains (issue 23): new connections are refused at once, an idle keep-alive
/// connection is closed, and a request in flight (its body still coming) is answered before
/// its connection closes; the whole stop is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_connections_and_answers_requests_in_flight() {
    let s = serve(|_| {}).await;
    let addr = s.http_addr;
    // In flight: a WHEP POST whose body is not sent yet.
    let body = b"not an SDP offer";
    let mut in_flight = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /whep/cam HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    // Idle: a keep-alive connection after one request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let stopping = tokio::spawn(s.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while stopping"
    );
    // The idle connection was closed (EOF), not left open.
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // The request in flight gets its answer (a 400 for its body), then the connection ends.
    in_flight.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), in_flight.read_to_end(&mut answer))
        .await
        .expect("answered and closed within the drain")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
}
