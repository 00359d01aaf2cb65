//! Contribution over real networks: the lossy link of the test support, and sources that
//! cross it (RTP-wrapped TS on `--udp`).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::relay::{Impairment, Relay};
use tokio::net::UdpSocket;

/// Loss, duplicates and reordering happen at about their rates, and replies come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_impairs_at_its_rates_and_carries_replies() {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let imp = Impairment {
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.1,
        ..Impairment::NONE
    };
    let relay = Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        echo_addr,
        imp,
        Impairment::NONE,
        7,
    )
    .await
    .unwrap();
    let client = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // Read while sending: a burst of replies would overflow the socket's buffer.
    let reader = tokio::spawn({
        let client = client.clone();
        async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while let Ok(Ok((4, _))) =
                tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await
            {
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
            }
            got
        }
    });
    for i in 0..1000u32 {
        client
            .send_to(&i.to_be_bytes(), relay.addr())
            .await
            .unwrap();
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let got = reader.await.unwrap();
    let f = &relay.stats.forward;
    eprintln!("forward: {}", f.summary());
    let dropped = f.dropped.load(Ordering::Relaxed);
    assert!((60..=140).contains(&dropped), "{}", f.summary());
    assert!(f.duplicated.load(Ordering::Relaxed) > 20, "{}", f.summary());
    assert_eq!(got.len() as u64, f.sent.load(Ordering::Relaxed));
    assert_eq!(
        relay.stats.backward.sent.load(Ordering::Relaxed),
        got.len() as u64
    );
    assert!(
        got.windows(2).any(|w| w[1] < w[0]),
        "some datagrams overtook others"
    );
}
