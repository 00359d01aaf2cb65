//! The event loop's outgoing datagrams, sent in batches.
//!
//! Sessions push what str0m gives them; the loop flushes once per wake-up (and whenever the
//! queue is long). On Linux a flush is one `sendmmsg(2)` per 64 messages, and each message
//! carries a whole run of equal-size datagrams to one peer as one UDP GSO send (`UDP_SEGMENT`):
//! a frame's FU-A packets to a viewer cross the socket layer once instead of once per packet.
//! The kernel cuts the segments; peers see ordinary datagrams. Where GSO is refused the outbox
//! falls back to one message per datagram for good.
//!
//! Queued datagrams live end to end in one buffer that is kept between flushes, so queueing
//! allocates nothing: the direct send path (`direct`) writes and encrypts its packets in place
//! there, and str0m's datagrams are copied in.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use str0m::net::Transmit;
use tokio::net::UdpSocket;

use crate::metrics::Metrics;

/// Flush when this many datagrams are waiting (a frame to many viewers).
const FLUSH_AT: usize = 1024;

pub(super) struct Outbox {
    socket: Arc<UdpSocket>,
    /// Destination and byte range in `bytes` of each queued datagram.
    queue: Vec<(SocketAddr, Range<usize>)>,
    bytes: Vec<u8>,
    metrics: Arc<Metrics>,
    /// Whether UDP GSO may be used (cleared after the kernel refuses it once).
    gso: bool,
}

impl Outbox {
    pub fn new(socket: Arc<UdpSocket>, metrics: Arc<Metrics>) -> Self {
        Outbox {
            socket,
            queue: Vec::with_capacity(FLUSH_AT),
            bytes: Vec::with_capacity(FLUSH_AT * 1300),
            metrics,
            gso: cfg!(target_os = "linux"),
        }
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Queue a datagram from str0m; a full queue is flushed.
    pub fn push(&mut self, t: Transmit) {
        self.push_with(t.destination, t.contents.len(), |buf| {
            buf.copy_from_slice(&t.contents);
            buf.len()
        });
    }

    /// Queue a datagram of at most `max` bytes that `write` makes in place, returning its
    /// length; a full queue is flushed.
    pub fn push_with(
        &mut self,
        to: SocketAddr,
        max: usize,
        write: impl FnOnce(&mut [u8]) -> usize,
    ) {
        let start = self.bytes.len();
        self.bytes.resize(start + max, 0);
        let len = write(&mut self.bytes[start..]).min(max);
        self.bytes.truncate(start + len);
        self.queue.push((to, start..start + len));
        if self.queue.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Send everything queued. UDP semantics: what the socket buffer cannot take is dropped
    /// (and counted), as the network would drop it.
    pub fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let (sent, bytes) = self.send_queue();
        let dropped = self.queue.len() - sent;
        self.queue.clear();
        self.bytes.clear();
        let m = &self.metrics;
        m.packets_sent.fetch_add(sent as u64, Ordering::Relaxed);
        m.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        if dropped > 0 {
            m.send_drops.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// (datagrams sent, bytes sent)
    #[cfg(not(target_os = "linux"))]
    fn send_queue(&mut self) -> (usize, usize) {
        let mut sent = (0, 0);
        for (to, range) in &self.queue {
            if let Ok(n) = self.socket.try_send_to(&self.bytes[range.clone()], *to) {
                sent = (sent.0 + 1, sent.1 + n);
            }
        }
        sent
    }

    #[cfg(target_os = "linux")]
    fn send_queue(&mut self) -> (usize, usize) {
        let runs = runs(&self.queue, self.gso);
        match linux::send_runs(&self.socket, &self.queue, &self.bytes, &runs) {
            Ok(sent) => sent,
            Err(linux::GsoRefused { sent, from }) => {
                tracing::warn!("the kernel refused UDP GSO; sending one datagram per message");
                self.gso = false;
                let rest = runs_without_gso(from..self.queue.len());
                let more = linux::send_runs(&self.socket, &self.queue, &self.bytes, &rest)
                    .unwrap_or_default();
                (sent.0 + more.0, sent.1 + more.1)
            }
        }
    }
}

/// A run of queued datagrams `start..end` to one destination, all `seg` bytes long but the
/// last (which may be shorter): one GSO message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: usize,
    end: usize,
    seg: usize,
}

/// Most segments the kernel takes in one GSO send (`UDP_MAX_SEGMENTS`) and most bytes.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// Split the queue into GSO runs (or single datagrams when `gso` is off).
fn runs(queue: &[(SocketAddr, Range<usize>)], gso: bool) -> Vec<Run> {
    if !gso {
        return runs_without_gso(0..queue.len());
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < queue.len() {
        let (to, first) = &queue[i];
        let seg = first.len();
        let mut end = i + 1;
        let mut bytes = seg;
        while end < queue.len() && end - i < GSO_MAX_SEGMENTS {
            let (next_to, next) = &queue[end];
            if next_to != to || next.len() > seg || bytes + next.len() > GSO_MAX_BYTES {
                break;
            }
            bytes += next.len();
            end += 1;
            if next.len() < seg {
                break; // a shorter datagram can only end a run
            }
        }
        out.push(Run { start: i, end, seg });
        i = end;
    }
    out
}

fn runs_without_gso(datagrams: std::ops::Range<usize>) -> Vec<Run> {
    datagrams
        .map(|i| Run {
            start: i,
            end: i + 1,
            seg: 0,
        })
        .collect()
}

#[cfg(target_os = "linux")]
mod linux {
    //! `sendmmsg(2)` with `UDP_SEGMENT` control messages. The unsafe code only builds the
    //! message headers the syscall reads; every pointer in them points into vectors that live,
    //! unmoved, until the call returns.

    use std::io;
    use std::net::SocketAddr;
    use std::ops::Range;
    use std::os::fd::AsRawFd;

    use socket2::SockAddr;
    use tokio::net::UdpSocket;

    use super::Run;

    /// Messages per `sendmmsg` call.
    const BATCH: usize = 64;

    /// The kernel rejected a GSO message: what was sent before it, and the index of the
    /// first datagram not sent.
    pub struct GsoRefused {
        pub sent: (usize, usize),
        pub from: usize,
    }

    /// Room for one `cmsghdr` carrying a u16, with `cmsghdr` alignment.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    struct Cmsg([u8; 32]);

    /// Send the runs; returns (datagrams sent, bytes sent), or where the kernel refused GSO.
    pub fn send_runs(
        socket: &UdpSocket,
        queue: &[(SocketAddr, Range<usize>)],
        bytes: &[u8],
        runs: &[Run],
    ) -> Result<(usize, usize), GsoRefused> {
        let fd = socket.as_raw_fd();
        let mut sent = (0, 0);
        for batch in runs.chunks(BATCH) {
            let addrs: Vec<SockAddr> = batch.iter().map(|r| queue[r.start].0.into()).collect();
            let iovs: Vec<libc::iovec> = batch
                .iter()
                .flat_map(|r| &queue[r.start..r.end])
                .map(|(_, range)| libc::iovec {
                    iov_base: bytes[range.clone()].as_ptr() as *mut libc::c_void,
                    iov_len: range.len(),
                })
                .collect();
            let mut cmsgs = vec![Cmsg([0; 32]); batch.len()];
            let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(batch.len());
            let mut iov_at = 0;
            for ((run, addr), cmsg) in batch.iter().zip(&addrs).zip(&mut cmsgs) {
                let n = run.end - run.start;
                // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                hdr.msg_namelen = addr.len();
                hdr.msg_iov = iovs[iov_at..].as_ptr() as *mut libc::iovec;
                hdr.msg_iovlen = n;
                iov_at += n;
                if n > 1 {
                    set_segment_size(&mut hdr, cmsg, run.seg as u16);
                }
                msgs.push(libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                });
            }
            let mut done = 0;
            while done < msgs.len() {
                // SAFETY: `msgs` and everything it points to (addrs, iovs, cmsgs, the queued
                // datagrams) are alive and unmoved for the duration of the call.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        msgs[done..].as_mut_ptr(),
                        (msgs.len() - done) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r < 0 {
                    let err = io::Error::last_os_error();
                    let run = batch[done];
                    let refused = matches!(
                        err.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                    );
                    if refused && run.end - run.start > 1 {
                        return Err(GsoRefused {
                            sent,
                            from: run.start,
                        });
                    }
                    if err.kind() == io::ErrorKind::WouldBlock {
                        return Ok(sent); // the send buffer is full: the rest is dropped
                    }
                    // This message failed (e.g. unreachable address): skip it.
                    done += 1;
                    continue;
                }
                for (m, run) in msgs[done..done + r as usize].iter().zip(&batch[done..]) {
                    sent.0 += run.end - run.start;
                    sent.1 += m.msg_len as usize;
                }
                done += r as usize;
            }
        }
        Ok(sent)
    }

    fn set_segment_size(hdr: &mut libc::msghdr, buf: &mut Cmsg, seg: u16) {
        hdr.msg_control = buf.0.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; CMSG_FIRSTHDR points into `buf`,
        // which has room for one cmsghdr plus a u16 (32 ≥ CMSG_SPACE(2) = 24 on 64-bit).
        unsafe {
            hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
            let c = libc::CMSG_FIRSTHDR(hdr);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[(u16, usize)]) -> Vec<(SocketAddr, Range<usize>)> {
        let mut at = 0;
        items
            .iter()
            .map(|&(port, len)| {
                at += len;
                (SocketAddr::from(([127, 0, 0, 1], port)), at - len..at)
            })
            .collect()
    }

    #[test]
    fn runs_group_equal_sizes_to_one_destination() {
        let queue = q(&[
            (1, 1200),
            (1, 1200),
            (1, 700),
            (1, 1200),
            (2, 1200),
            (2, 90),
        ]);
        let r = runs(&queue, true);
        let spans: Vec<(usize, usize, usize)> = r.iter().map(|r| (r.start, r.end, r.seg)).collect();
        // A shorter datagram ends a run; a new destination starts one.
        assert_eq!(spans, [(0, 3, 1200), (3, 4, 1200), (4, 6, 1200)]);
        // A larger datagram cannot follow smaller segments.
        let r = runs(&q(&[(1, 500), (1, 600)]), true);
        assert_eq!(r.len(), 2);
        assert_eq!(runs(&queue, false).len(), queue.len());
    }

    #[test]
    fn runs_respect_the_kernel_limits() {
        let queue = q(&[(1, 100); 200]);
        let r = runs(&queue, true);
        assert!(r.iter().all(|r| r.end - r.start <= GSO_MAX_SEGMENTS));
        assert_eq!(r.iter().map(|r| r.end - r.start).sum::<usize>(), 200);
        let queue = q(&[(1, 1400); 64]);
        for r in runs(&queue, true) {
            assert!((r.end - r.start) * 1400 <= GSO_MAX_BYTES);
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_flush_delivers_every_datagram_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let tx = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let metrics = Arc::new(Metrics::default());
        let mut out = Outbox::new(tx, metrics.clone());
        let sizes = [1200, 1200, 1200, 345, 1200, 17, 17, 1200];
        for (i, &n) in sizes.iter().enumerate() {
            out.push_with(to, n + 10, |buf| {
                buf[..n].fill(i as u8);
                n
            });
        }
        out.flush();
        assert!(out.gso, "this kernel refused UDP GSO");
        let mut buf = [0u8; 2048];
        for (i, &n) in sizes.iter().enumerate() {
            let got = rx.recv(&mut buf).unwrap();
            assert_eq!(got, n, "datagram {i}");
            assert!(buf[..got].iter().all(|&b| b == i as u8), "datagram {i}");
        }
        assert_eq!(metrics.packets_sent.load(Ordering::Relaxed), 8);
        let total: usize = sizes.iter().sum();
        assert_eq!(metrics.bytes_sent.load(Ordering::Relaxed), total as u64);
    }
}
