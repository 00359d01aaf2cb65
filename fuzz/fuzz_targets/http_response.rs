//! A server's response, any bytes, to the project's HTTP client (`tsbridge::client`): byte 0
//! picks the read (bit 0: whole body through `request_on`, else streamed through
//! `get_streaming_on`), how the bytes are cut into writes (bits 1–3) and, for a streamed read,
//! after how many pieces the sink says stop (bits 4–7, 0 = never). The rest is the response,
//! written into an in-memory pipe, once the request head is in, and the server side then
//! closes its write half.
//!
//! Properties besides "no panic": a response that has ended (the pipe closed) is never waited
//! on (no timeout, on a paused clock that would otherwise skip ahead to it); a whole body is
//! within its cap; a streamed read hands out no more bytes than the server sent, and no empty
//! piece.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tsbridge::client::{self, ClientError, Request, Timeouts};

/// The whole-body cap used here: small, so the fuzzer reaches it.
const MAX_BODY: usize = 4096;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, response)) = data.split_first() else {
        return;
    };
    let whole = mode & 1 == 1;
    let piece = [usize::MAX, 1, 2, 3, 7, 16, 100, 1000][usize::from(mode >> 1 & 7)];
    let stop_after = usize::from(mode >> 4);
    let response = response.to_vec();
    let sent = response.len();

    runtime().block_on(async move {
        let (client_end, mut server_end) = tokio::io::duplex(1 << 16);
        let server = async move {
            // As a server does: the request head first (else hyper takes the bytes for an
            // unexpected message on an idle connection and never parses them).
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match server_end.read(&mut b).await {
                    Ok(1) => head.push(b[0]),
                    _ => return,
                }
            }
            for p in response.chunks(piece.min(response.len().max(1))) {
                if server_end.write_all(p).await.is_err() {
                    return;
                }
            }
            let _ = server_end.shutdown().await;
            // Take the request (and anything else) until the client is gone.
            let mut sink = [0u8; 1024];
            while server_end.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        };
        let t = Timeouts::all(Duration::from_secs(30));
        let req = Request::get("http://fuzz.example/streams/x.ts").max_body(MAX_BODY);
        let client = async move {
            if whole {
                match client::request_on(client_end, req, t).await {
                    Ok(r) => assert!(r.body.len() <= MAX_BODY, "{} bytes", r.body.len()),
                    Err(e) => check(&e),
                }
            } else {
                let (mut got, mut pieces) = (0usize, 0usize);
                let r = client::get_streaming_on(client_end, req, t, |b| {
                    assert!(!b.is_empty(), "an empty piece");
                    got += b.len();
                    pieces += 1;
                    stop_after == 0 || pieces < stop_after
                })
                .await;
                assert!(got <= sent, "{got} bytes out of {sent} sent");
                if let Err(e) = r {
                    check(&e);
                }
            }
        };
        tokio::join!(server, client);
    });
});

fn check(e: &ClientError) {
    assert!(!e.is_timeout(), "waited on a response that had ended: {e}");
}
