//! The contribution inputs (issue 22): datagrams on `--udp` told apart and put back in order
//! (`ingest::rtp`: RTP-wrapped TS, plain TS, RTCP, anything else), SRT stream ids
//! (`streamid::parse`, from a caller) and SRT URLs (`SrtUrl`, from the operator).
//!
//! The input is cut into datagrams at each 0xFE byte, each arriving 1 ms after the last
//! from one of two senders (the first byte's low bit), so reordering windows, gaps given up,
//! sender changes and resyncs all happen. Properties: nothing panics; the TS released is made
//! of the datagrams' bytes (never more than came in); the counts stay consistent. The whole
//! input is also a stream id and an SRT URL.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tsbridge::ingest::rtp::{classify, Datagram, RtpReceiver};
use tsbridge::ingest::srt::{streamid, url::SrtUrl};

fuzz_target!(|data: &[u8]| {
    let senders: [SocketAddr; 2] = ["10.0.0.1:5000".parse().unwrap(), "10.0.0.2:5000".parse().unwrap()];
    let mut rx = RtpReceiver::new(Duration::from_millis(20));
    let start = Instant::now();
    let (mut out, mut came) = (Vec::new(), 0usize);
    for (i, d) in data.split(|&b| b == 0xFE).enumerate() {
        let now = start + Duration::from_millis(i as u64);
        if let Datagram::Rtp(p) = classify(d) {
            assert_eq!(p.payload.len() % 188, 0);
            assert_eq!(p.payload.first(), Some(&0x47));
        }
        came += d.len();
        let from = senders[usize::from(d.first().copied().unwrap_or(0) & 1)];
        rx.push(from, d, now, &mut out);
        rx.poll(now, &mut out);
        assert!(out.len() <= came, "more TS out than came in");
    }
    rx.flush(&mut out);
    assert!(out.len() <= came);

    let text = String::from_utf8_lossy(data);
    if let Ok(id) = streamid::parse(&text) {
        assert!(!id.name.is_empty() && id.name.len() <= 64, "{id:?}");
    }
    let _ = text.parse::<SrtUrl>();
});
