//! A webrtc-rs [`Runtime`] that works around a receive race in webrtc/rtc 0.21.1.
//!
//! The driver drains a burst of up to 64 ready datagrams into the sans-I/O core before it pumps
//! the core's events, and the core only installs the SRTP keys when the "DTLS handshake
//! complete" event is pumped. RTP that a server sends right after its DTLS `Finished` (a tsbridge
//! sending its cached GOP the moment it is connected, say) lands in the same burst and is
//! dropped with "remote_srtp_context is not set yet" — so the client would lose the first
//! keyframe. Browsers don't lose it.
//!
//! The fix here: after a DTLS datagram (first byte 20..=63, RFC 7983) has been received, the next
//! receive poll reports "nothing ready" once, which ends the burst; the driver pumps events
//! (installing the keys) and re-polls the socket on its next loop turn, where the RTP is still
//! waiting in the kernel buffer. Everything else is Tokio's runtime unchanged.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// [`TokioRuntime`] with UDP sockets that end a receive burst after each DTLS datagram.
#[derive(Debug)]
pub struct DtlsGatedRuntime(TokioRuntime);

impl DtlsGatedRuntime {
    pub fn arc() -> Arc<dyn Runtime> {
        Arc::new(DtlsGatedRuntime(TokioRuntime))
    }
}

impl Runtime for DtlsGatedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.0.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.0.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(DtlsGatedSocket {
            inner: self.0.wrap_udp_socket(socket)?,
            end_burst: AtomicBool::new(false),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.0.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.0.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.0.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.0.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.0.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio-dtls-gated"
    }
}

#[derive(Debug)]
struct DtlsGatedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Set after a DTLS datagram was handed out: the next poll reports Pending once.
    end_burst: AtomicBool,
}

impl AsyncUdpSocket for DtlsGatedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.end_burst.swap(false, Ordering::AcqRel) {
            // Whoever polls next (the driver's main receive future) must not stall.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // One message at a time, so nothing after a DTLS record is delivered with it.
        let n = bufs.len().min(meta.len()).min(1);
        let res = self.inner.poll_recv(cx, &mut bufs[..n], &mut meta[..n]);
        if let Poll::Ready(Ok(got)) = &res {
            let dtls = bufs
                .iter()
                .zip(meta.iter())
                .take(*got)
                .any(|(b, m)| m.len > 0 && (20..=63).contains(&b[0]));
            if dtls {
                self.end_burst.store(true, Ordering::Release);
            }
        }
        res
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        // Keep the real value: the kernel may coalesce whatever we claim, and buffers sized for
        // one datagram would truncate. (A GSO sender could still put a DTLS record and RTP in
        // one coalesced message; tsbridge and browsers don't send DTLS with GSO.)
        self.inner.max_gro_segments()
    }
}
