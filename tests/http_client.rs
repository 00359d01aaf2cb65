//! The project's HTTP client (`tsbridge::client`) against real local TCP servers that
//! misbehave: every wait ends within its bound, hostile responses are errors (never a panic or
//! an unbounded allocation), good ones arrive intact, over http:// and https://.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tsbridge::client::{self, Client, ClientError, Method, Request, Timeouts};

/// Serves every connection with `answer`: the request is read (up to its blank line), then
/// `answer` writes what it likes to the socket.
async fn server<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            read_head(&mut tcp).await;
            tokio::spawn(answer(tcp));
        }
    });
    addr
}

/// Reads up to the end of a request head.
async fn read_head(tcp: &mut TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match tcp.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
}

/// A server that writes `raw` and then holds the connection open without a word.
async fn answering(raw: Vec<u8>) -> SocketAddr {
    server(move |mut tcp| {
        let raw = raw.clone();
        async move {
            let _ = tcp.write_all(&raw).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
    .await
}

/// A server that writes `raw` and closes.
async fn answering_then_closing(raw: Vec<u8>) -> SocketAddr {
    server(move |mut tcp| {
        let raw = raw.clone();
        async move {
            let _ = tcp.write_all(&raw).await;
        }
    })
    .await
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/streams/cam.ts?token=secret")
}

const QUICK: Duration = Duration::from_millis(400);

/// Well within the time a bound of `QUICK` may take, scheduling included.
fn assert_within_bound(t0: Instant) {
    assert!(t0.elapsed() < QUICK * 5, "took {:?}", t0.elapsed());
}

async fn stream_all(addr: SocketAddr, t: Timeouts) -> (Vec<u8>, Result<(), ClientError>) {
    let mut got = Vec::new();
    let r = client::get_streaming(Request::get(url(addr)), t, |b| {
        got.extend_from_slice(&b);
        true
    })
    .await;
    (got, r)
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_times_out_within_the_bound() {
    let addr = server(|tcp| async move {
        let _held = tcp;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let t0 = Instant::now();
    let e = Client::new()
        .request(Request::get(url(addr)), Timeouts::all(QUICK))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_within_bound(t0);
    assert!(!e.to_string().contains("secret"), "no query in errors: {e}");

    let t0 = Instant::now();
    let (got, r) = stream_all(addr, Timeouts::stream(QUICK, QUICK, QUICK)).await;
    let e = r.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::ReadTimeout {
                waiting_for: "the response head",
                ..
            }
        ),
        "{e}"
    );
    assert!(got.is_empty());
    assert_within_bound(t0);
}

#[tokio::test]
async fn a_connection_that_is_never_accepted_times_out_within_the_bound() {
    // A listener with a full accept queue: Linux drops further SYNs, the connect hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(c)) => queued.push(c),
            _ => break,
        }
    }
    let t0 = Instant::now();
    let e = Client::new()
        .request(
            Request::get(url(addr)),
            Timeouts {
                connect: QUICK,
                ..Timeouts::all(Duration::from_secs(5))
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::ConnectTimeout { .. }),
        "{e} ({} connections queued)",
        queued.len()
    );
    assert_within_bound(t0);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_naming_the_address() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let e = client::post_json(&url(addr), "{}", QUICK)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn a_chunk_size_of_u64_max_is_an_error_not_a_panic() {
    let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    // The size fits 64 bits: the data is streamed as it comes, never allocated up front, and
    // the body cut short is an error.
    let mut raw = head.to_vec();
    raw.extend_from_slice(b"ffffffffffffffff\r\nabc");
    let addr = answering_then_closing(raw.clone()).await;
    let e = Client::new()
        .request(Request::get(url(addr)), Timeouts::all(QUICK))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Http { .. }), "{e}");
    let (got, r) = stream_all(addr, Timeouts::stream(QUICK, QUICK, QUICK)).await;
    assert!(matches!(r, Err(ClientError::Http { .. })), "{r:?}");
    assert_eq!(got, b"abc");

    // One digit more overflows.
    let mut raw = head.to_vec();
    raw.extend_from_slice(b"1ffffffffffffffff\r\nabc");
    let addr = answering(raw).await;
    let t0 = Instant::now();
    let (got, r) = stream_all(addr, Timeouts::stream(QUICK, QUICK, QUICK)).await;
    assert!(matches!(r, Err(ClientError::Http { .. })), "{r:?}");
    assert!(got.is_empty());
    assert_within_bound(t0);

    // A server that keeps sending into the huge chunk: a whole read stops at its cap.
    let addr = server(move |mut tcp| async move {
        let _ = tcp.write_all(head).await;
        let _ = tcp.write_all(b"ffffffffffffffff\r\n").await;
        let block = vec![b'x'; 64 << 10];
        while tcp.write_all(&block).await.is_ok() {}
    })
    .await;
    let e = Client::new()
        .request(
            Request::get(url(addr)).max_body(100_000),
            Timeouts::all(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::BodyTooLarge { limit: 100_000, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn a_megabyte_header_line_is_an_error() {
    let mut raw = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 1 << 20));
    raw.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    let addr = answering(raw).await;
    let t0 = Instant::now();
    let e = Client::new()
        .request(
            Request::get(url(addr)),
            Timeouts::all(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Http { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // So are a thousand small ones.
    let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..1000 {
        raw.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
    }
    raw.extend_from_slice(b"content-length: 0\r\n\r\n");
    let addr = answering(raw).await;
    let e = Client::new()
        .request(
            Request::get(url(addr)),
            Timeouts::all(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Http { .. }), "{e}");
}

#[tokio::test]
async fn a_server_that_stops_mid_body_ends_the_stream_with_a_timeout() {
    let addr = server(|mut tcp| async move {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        // Stopped (as a SIGSTOPped host): the connection stays, nothing more comes.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let t0 = Instant::now();
    let t = Timeouts::stream(QUICK, QUICK, QUICK).first_data(Duration::from_secs(5));
    let (got, r) = stream_all(addr, t).await;
    let e = r.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::ReadTimeout {
                waiting_for: "more of the body",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(got, b"hello");
    assert_within_bound(t0);
}

#[tokio::test]
async fn a_normal_chunked_stream_is_delivered_intact() {
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let body = sent.clone();
    let addr = server(move |mut tcp| {
        let body = body.clone();
        async move {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let mut at = 0;
            let mut n = 1;
            while at < body.len() {
                let end = (at + n).min(body.len());
                let mut chunk = format!("{:x};ext=1\r\n", end - at).into_bytes();
                chunk.extend_from_slice(&body[at..end]);
                chunk.extend_from_slice(b"\r\n");
                if tcp.write_all(&chunk).await.is_err() {
                    return;
                }
                at = end;
                n = n * 3 % 40_000 + 1;
                tokio::task::yield_now().await;
            }
            let _ = tcp.write_all(b"0\r\nx-trailer: 1\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
    .await;
    let (got, r) = stream_all(addr, Timeouts::stream(QUICK, QUICK, QUICK)).await;
    r.unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent);

    // The same as one whole body.
    let r = Client::new()
        .request(
            Request::get(url(addr)),
            Timeouts::all(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == sent);
}

#[tokio::test]
async fn a_stream_with_an_error_status_is_refused_before_its_body() {
    let addr = answering(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno".to_vec()).await;
    let (got, r) = stream_all(addr, Timeouts::stream(QUICK, QUICK, QUICK)).await;
    assert!(
        matches!(r, Err(ClientError::Status { status: 404, .. })),
        "{r:?}"
    );
    assert!(got.is_empty());
}

#[tokio::test]
async fn requests_carry_host_headers_and_body() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&req).ends_with("{\"a\":1}") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0);
            req.extend_from_slice(&buf[..n]);
        }
        let _ = tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let _ = tx.lock().unwrap().take().unwrap().send(req);
    });
    let status = client::post_json(&format!("http://{addr}/hook?x=1"), "{\"a\":1}", QUICK * 5)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let req = String::from_utf8(rx.await.unwrap()).unwrap().to_lowercase();
    assert!(req.starts_with("post /hook?x=1 http/1.1\r\n"), "{req}");
    assert!(req.contains(&format!("host: {addr}\r\n")), "{req}");
    assert!(req.contains("content-type: application/json\r\n"), "{req}");
    assert!(req.contains("content-length: 7\r\n"), "{req}");
}

/// A server for uploads: `PUT /up` answers the body's length once it has read it all;
/// `PUT /refuse` answers 409 at once.
async fn upload_server() -> SocketAddr {
    use axum::routing::put;
    let app = axum::Router::new()
        .route(
            "/up",
            put(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/refuse",
            put(|| async { (axum::http::StatusCode::CONFLICT, "taken") }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_streamed_upload_arrives_whole_and_the_answer_comes_after_it() {
    let addr = upload_server().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feed = tokio::spawn(async move {
        for i in 0..50u8 {
            tx.send(Bytes::from(vec![i; 1000 + i as usize]))
                .await
                .unwrap();
            // An empty buffer must not end the chunked body.
            tx.send(Bytes::new()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let r = Client::new()
        .put_streaming(
            Request::new(Method::PUT, format!("http://{addr}/up")),
            rx,
            Timeouts::stream(QUICK, QUICK, QUICK),
        )
        .await
        .unwrap();
    feed.await.unwrap();
    assert_eq!(r.status, 200);
    let want: usize = (0..50).map(|i| 1000 + i).sum();
    assert_eq!(r.body, want.to_string());
}

#[tokio::test]
async fn a_refusal_ends_a_streamed_upload_at_once() {
    let addr = upload_server().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let t0 = Instant::now();
    let r = Client::new()
        .put_streaming(
            Request::new(Method::PUT, format!("http://{addr}/refuse")),
            rx,
            Timeouts::stream(QUICK, QUICK, QUICK),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.body, "taken");
    assert_within_bound(t0);
    drop(tx);
}

#[tokio::test]
async fn an_upload_the_server_never_answers_times_out_after_its_end() {
    let addr = server(|mut tcp| async move {
        // Reads everything, answers nothing.
        let mut buf = [0u8; 4096];
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feed = tokio::spawn(async move {
        // Longer than the head timeout: the wait for the answer starts at the upload's end.
        for _ in 0..6 {
            tx.send(Bytes::from_static(b"data")).await.unwrap();
            tokio::time::sleep(QUICK / 2).await;
        }
    });
    let t0 = Instant::now();
    let e = Client::new()
        .put_streaming(
            Request::new(Method::PUT, url(addr)),
            rx,
            Timeouts::stream(QUICK, QUICK, QUICK),
        )
        .await
        .unwrap_err();
    feed.await.unwrap();
    assert!(
        matches!(
            e,
            ClientError::ReadTimeout {
                waiting_for: "the response head",
                ..
            }
        ),
        "{e}"
    );
    assert!(t0.elapsed() >= QUICK * 3, "{:?}", t0.elapsed());
    assert!(t0.elapsed() < QUICK * 8, "{:?}", t0.elapsed());
}

/// A certificate for 127.0.0.1 that is its own issuer (not a CA: webpki takes it as a trust
/// anchor and as the server's certificate).
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes the test certificate (apt-get install openssl)");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

#[tokio::test]
async fn https_works_with_the_servers_certificate_as_root_and_fails_without_it() {
    let dir = std::env::temp_dir().join(format!("tsbridge-client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let acceptor = tsbridge::http::serve::tls_acceptor(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut b).await {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nsecure\r\n0\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let pem = std::fs::read(&cert).unwrap();
    let https = Client::with_roots_pem(&pem).unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let port = addr.port();
        let r = https
            .request(
                Request::get(format!("https://{host}:{port}/x")),
                Timeouts::all(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"secure"[..]), "{host}");
    }
    let mut got = Vec::new();
    https
        .get_streaming(
            Request::get(format!("https://{addr}/x")),
            Timeouts::stream(QUICK, QUICK, QUICK),
            |b| {
                got.extend_from_slice(&b);
                true
            },
        )
        .await
        .unwrap();
    assert_eq!(got, b"secure");

    // Roots that do not include it.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = self_signed(&other_dir);
    let stranger = Client::with_roots_pem(&std::fs::read(&other.0).unwrap()).unwrap();
    let e = stranger
        .request(
            Request::get(format!("https://{addr}/x")),
            Timeouts::all(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Tls { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tsbridge probe URL` reads through the client: a chunked body and one that ends with the
/// connection both give the file's tracks and size.
#[tokio::test]
async fn probe_reads_a_url_chunked_or_to_the_end() {
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ts")).unwrap();
    let len = file.len() as u64;
    for chunked in [true, false] {
        let file = file.clone();
        let addr = server(move |mut tcp| {
            let file = file.clone();
            async move {
                if chunked {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    for c in file.chunks(188 * 7) {
                        let mut chunk = format!("{:x}\r\n", c.len()).into_bytes();
                        chunk.extend_from_slice(c);
                        chunk.extend_from_slice(b"\r\n");
                        let _ = tcp.write_all(&chunk).await;
                    }
                    let _ = tcp.write_all(b"0\r\n\r\n").await;
                } else {
                    let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                    let _ = tcp.write_all(&file).await;
                }
            }
        })
        .await;
        let r = tsbridge::probe::run(
            &format!("http://{addr}/streams/x.ts"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(r.bytes, len, "chunked: {chunked}");
        assert_eq!(r.tracks[0].codec, "H.264", "chunked: {chunked}");
    }
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let e = tsbridge::probe::run(&format!("http://{gone}/x.ts"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(e.contains("connect"), "{e}");
}
