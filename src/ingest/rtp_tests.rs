use super::*;

/// A TS packet whose bytes after the header say which one it is.
fn ts(n: u8) -> Vec<u8> {
    let mut p = vec![n; TS_PACKET];
    p[0] = TS_SYNC;
    p
}

/// An RTP packet (PT 33, SSRC 7) carrying TS packets `n` and `n + 1`.
fn rtp(seq: u16, n: u8) -> Vec<u8> {
    rtp_with(seq, 7, n)
}

fn rtp_with(seq: u16, ssrc: u32, n: u8) -> Vec<u8> {
    let mut d = vec![0x80, PT_MP2T];
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&90_000u32.to_be_bytes());
    d.extend_from_slice(&ssrc.to_be_bytes());
    d.extend(ts(n));
    d.extend(ts(n.wrapping_add(1)));
    d
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The marker byte of each TS packet in `out`.
fn order(out: &[u8]) -> Vec<u8> {
    out.chunks(TS_PACKET).map(|p| p[1]).collect()
}

#[test]
fn header_with_csrcs_extension_and_padding_is_stripped() {
    let mut d = vec![0x80 | 0x20 | 0x10 | 2, 96];
    d.extend_from_slice(&[0, 5, 0, 0, 0, 1, 0, 0, 0, 9]);
    d.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
    d.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // one-word extension
    d.extend(ts(3));
    d.extend_from_slice(&[0, 0, 3]); // three bytes of padding
    match classify(&d) {
        Datagram::Rtp(p) => {
            assert_eq!((p.payload_type, p.seq, p.ssrc), (96, 5, 9));
            assert_eq!(p.payload, &ts(3)[..]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn plain_ts_rtcp_and_other_rtp_are_told_apart() {
    assert!(matches!(classify(&ts(1)), Datagram::Ts(_)));
    let sr = [0x80, 200, 0, 6, 0, 0, 0, 7, 0, 0, 0, 0];
    assert_eq!(classify(&sr), Datagram::Rtcp);
    // Dynamic PT but no TS inside (H.264 RTP sent to the wrong port): passed on as it is.
    let mut h264 = rtp(1, 0);
    h264[12] = 0x65;
    assert!(matches!(classify(&h264), Datagram::Other(_)));
    // A static PT other than 33 with TS inside is not taken either.
    let mut pt = rtp(1, 0);
    pt[1] = 26;
    assert!(matches!(classify(&pt), Datagram::Other(_)));
}

#[test]
fn no_bytes_make_it_panic() {
    let mut x: u32 = 1;
    let mut r = RtpReceiver::new(Duration::from_millis(20));
    let now = Instant::now();
    let mut out = Vec::new();
    for len in 0..400usize {
        let d: Vec<u8> = (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i == 0 {
                    0x80 | (x as u8 & 0x3f)
                } else {
                    x as u8
                }
            })
            .collect();
        let _ = classify(&d);
        r.push(addr(1), &d, now, &mut out);
        r.poll(now + Duration::from_millis(len as u64), &mut out);
    }
}

#[test]
fn in_order_packets_pass_at_once() {
    let mut r = RtpReceiver::new(Duration::from_millis(50));
    let now = Instant::now();
    let mut out = Vec::new();
    let first = r.push(addr(1), &rtp(65534, 0), now, &mut out);
    assert_eq!(
        first,
        Some(Detected::Rtp {
            payload_type: 33,
            ssrc: 7
        })
    );
    // Across the sequence wrap.
    assert_eq!(r.push(addr(1), &rtp(65535, 2), now, &mut out), None);
    r.push(addr(1), &rtp(0, 4), now, &mut out);
    assert_eq!(order(&out), [0, 1, 2, 3, 4, 5]);
    assert_eq!(r.deadline(), None);
    assert_eq!(
        *r.counts(),
        RtpCounts {
            packets: 3,
            ..Default::default()
        }
    );
}

#[test]
fn reordered_packets_come_out_in_order() {
    let mut r = RtpReceiver::new(Duration::from_millis(50));
    let now = Instant::now();
    let mut out = Vec::new();
    for (seq, n) in [(10, 0), (12, 4), (13, 6), (11, 2), (14, 8)] {
        r.push(addr(1), &rtp(seq, n), now, &mut out);
    }
    assert_eq!(order(&out), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let c = r.counts();
    assert_eq!((c.reordered, c.lost, c.duplicates), (1, 0, 0));
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut r = RtpReceiver::new(Duration::from_millis(50));
    let now = Instant::now();
    let mut out = Vec::new();
    for (seq, n) in [(1, 0), (1, 0), (3, 4), (3, 4), (2, 2)] {
        r.push(addr(1), &rtp(seq, n), now, &mut out);
    }
    assert_eq!(order(&out), [0, 1, 2, 3, 4, 5]);
    assert_eq!(r.counts().duplicates, 2);
}

#[test]
fn a_gap_is_given_up_after_hold_and_its_late_packet_dropped() {
    let hold = Duration::from_millis(40);
    let mut r = RtpReceiver::new(hold);
    let t0 = Instant::now();
    let mut out = Vec::new();
    r.push(addr(1), &rtp(1, 0), t0, &mut out);
    r.push(addr(1), &rtp(3, 4), t0, &mut out);
    r.push(addr(1), &rtp(4, 6), t0 + Duration::from_millis(5), &mut out);
    assert_eq!(order(&out), [0, 1], "3 and 4 wait for 2");
    assert_eq!(r.deadline(), Some(t0 + hold));
    r.poll(t0 + Duration::from_millis(39), &mut out);
    assert_eq!(order(&out).len(), 2);
    r.poll(t0 + hold, &mut out);
    assert_eq!(order(&out), [0, 1, 4, 5, 6, 7]);
    assert_eq!(r.deadline(), None);
    r.push(addr(1), &rtp(2, 2), t0 + hold, &mut out);
    r.push(addr(1), &rtp(5, 8), t0 + hold, &mut out);
    assert_eq!(order(&out), [0, 1, 4, 5, 6, 7, 8, 9], "2 came too late");
    let c = r.counts();
    assert_eq!((c.lost, c.late, c.duplicates), (1, 1, 0));
}

#[test]
fn a_full_window_moves_on_without_waiting() {
    let mut r = RtpReceiver::new(Duration::from_secs(10));
    let now = Instant::now();
    let mut out = Vec::new();
    r.push(addr(1), &rtp(0, 0), now, &mut out);
    // 1 is lost; WINDOW packets after it fill the window.
    for seq in 2..(2 + WINDOW as u16) {
        r.push(addr(1), &rtp(seq, seq as u8), now, &mut out);
    }
    // The last one did not fit: 1 was given up on, and everything went out.
    assert_eq!(out.len() / TS_PACKET, 2 * (WINDOW + 1));
    assert_eq!(r.deadline(), None);
    assert_eq!(r.counts().lost, 1);
}

#[test]
fn a_jump_or_a_new_ssrc_is_a_restart_not_loss() {
    let mut r = RtpReceiver::new(Duration::from_millis(50));
    let now = Instant::now();
    let mut out = Vec::new();
    r.push(addr(1), &rtp(100, 0), now, &mut out);
    r.push(addr(1), &rtp(30_000, 2), now, &mut out);
    r.push(addr(1), &rtp(30_001, 4), now, &mut out);
    let new = r.push(addr(1), &rtp_with(5, 8, 6), now, &mut out);
    assert_eq!(
        new,
        Some(Detected::Rtp {
            payload_type: 33,
            ssrc: 8
        })
    );
    assert_eq!(order(&out), [0, 1, 2, 3, 4, 5, 6, 7]);
    let c = r.counts();
    assert_eq!((c.lost, c.resyncs), (0, 2));
}

#[test]
fn a_new_sender_flushes_and_plain_ts_still_passes() {
    let mut r = RtpReceiver::new(Duration::from_millis(50));
    let now = Instant::now();
    let mut out = Vec::new();
    r.push(addr(1), &rtp(1, 0), now, &mut out);
    r.push(addr(1), &rtp(3, 4), now, &mut out);
    let plain = r.push(addr(2), &ts(9), now, &mut out);
    assert_eq!(plain, Some(Detected::Plain));
    assert_eq!(order(&out), [0, 1, 4, 5, 9], "what was held went out first");
    assert_eq!(r.push(addr(2), &ts(10), now, &mut out), None);
    assert_eq!(r.counts().lost, 1);
}
