//! The per-stream closable ring buffer of TS bytes.
//!
//! One writer that never waits: a write copies into the ring under a short lock and wakes the
//! readers. Every reader keeps its own absolute offset. A reader the writer has lapped is told
//! so ([`Read::Lapped`]) and resumes at the live edge, never fed overwritten bytes. Closing the
//! input marks an end-of-input position: readers drain what was written before it, then see
//! [`Read::EndOfInput`] once. A new source reopens the same ring, and readers carry on with its
//! bytes. [`Ring::shutdown`] ends it for good.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// At most this many end-of-input marks are remembered for slow readers.
const MAX_MARKS: usize = 16;
/// Arrival times kept: of the last this many writes (a reader further behind is told the
/// oldest, which is later than the truth).
const MAX_ARRIVALS: usize = 512;

pub struct Ring {
    state: Mutex<State>,
    wake: Notify,
}

struct State {
    buf: Box<[u8]>,
    /// Total bytes ever written: the absolute offset of the next byte.
    written: u64,
    /// Absolute offsets where an input ended, ascending.
    ends: VecDeque<u64>,
    /// (absolute offset after a write, when it was written), ascending: when bytes arrived,
    /// for the latency the bridge adds.
    arrivals: VecDeque<(u64, Instant)>,
    open: bool,
    shut: bool,
}

/// What a reader got.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were copied into the caller's buffer.
    Data(usize),
    /// The writer overwrote unread bytes: the reader skipped this many and now stands at the
    /// live edge.
    Lapped(u64),
    /// The input that was writing ended here (the next bytes, if any, come from a new source).
    EndOfInput,
    /// The ring was shut down and everything was read.
    Shutdown,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Ring {
            state: Mutex::new(State {
                buf: vec![0; capacity.max(188 * 64)].into_boxed_slice(),
                written: 0,
                ends: VecDeque::new(),
                arrivals: VecDeque::with_capacity(MAX_ARRIVALS),
                open: false,
                shut: false,
            }),
            wake: Notify::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.state.lock().buf.len()
    }

    /// Total bytes written since the ring was made.
    pub fn written(&self) -> u64 {
        self.state.lock().written
    }

    /// Whether [`Ring::shutdown`] was called.
    pub fn is_shut(&self) -> bool {
        self.state.lock().shut
    }

    /// A source starts writing.
    pub fn open(&self) {
        self.state.lock().open = true;
    }

    /// Append bytes. Never waits for readers.
    pub fn write(&self, data: &[u8]) {
        let now = Instant::now();
        let mut s = self.state.lock();
        if s.shut {
            return;
        }
        s.open = true;
        let cap = s.buf.len();
        // Only the last `cap` bytes can survive this write.
        let skip = data.len().saturating_sub(cap);
        s.written += skip as u64;
        let mut data = &data[skip..];
        while !data.is_empty() {
            let at = (s.written % cap as u64) as usize;
            let n = data.len().min(cap - at);
            s.buf[at..at + n].copy_from_slice(&data[..n]);
            s.written += n as u64;
            data = &data[n..];
        }
        if s.arrivals.len() == MAX_ARRIVALS {
            s.arrivals.pop_front();
        }
        let written = s.written;
        s.arrivals.push_back((written, now));
        drop(s);
        self.wake.notify_waiters();
    }

    /// The current source ended: readers drain, then see [`Read::EndOfInput`].
    pub fn close_input(&self) {
        let mut s = self.state.lock();
        if !s.open {
            return;
        }
        s.open = false;
        let at = s.written;
        if s.ends.back() != Some(&at) {
            s.ends.push_back(at);
        }
        if s.ends.len() > MAX_MARKS {
            s.ends.pop_front();
        }
        drop(s);
        self.wake.notify_waiters();
    }

    /// End the ring for good: readers drain, then see [`Read::Shutdown`].
    pub fn shutdown(&self) {
        self.close_input();
        self.state.lock().shut = true;
        self.wake.notify_waiters();
    }

    /// A cursor at the live edge.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            pos: self.state.lock().written,
            ended_at: None,
            arrived: None,
        }
    }

    /// A cursor at the oldest byte still held.
    pub fn cursor_from_oldest(&self) -> Cursor {
        let s = self.state.lock();
        Cursor {
            pos: s.written.saturating_sub(s.buf.len() as u64),
            ended_at: None,
            arrived: None,
        }
    }

    /// A reader at the live edge.
    pub fn reader(&self) -> RingReader<'_> {
        RingReader {
            ring: self,
            cur: self.cursor(),
        }
    }

    /// A reader at the oldest byte still held.
    pub fn reader_from_oldest(&self) -> RingReader<'_> {
        RingReader {
            ring: self,
            cur: self.cursor_from_oldest(),
        }
    }

    /// Read at `cur` without waiting; `None` when there is nothing new.
    pub fn try_read(&self, cur: &mut Cursor, out: &mut [u8]) -> Option<Read> {
        let s = self.state.lock();
        let cap = s.buf.len() as u64;
        if s.written.saturating_sub(cur.pos) > cap {
            let skipped = s.written - cur.pos;
            cur.pos = s.written;
            return Some(Read::Lapped(skipped));
        }
        // The next end mark this reader has not reported yet.
        let next_end = s
            .ends
            .iter()
            .copied()
            .find(|&e| e >= cur.pos && Some(e) != cur.ended_at);
        if next_end == Some(cur.pos) {
            cur.ended_at = next_end;
            return Some(Read::EndOfInput);
        }
        let limit = next_end.unwrap_or(s.written);
        if limit > cur.pos {
            let at = (cur.pos % cap) as usize;
            let avail = (limit - cur.pos) as usize;
            let n = avail.min(out.len()).min(s.buf.len() - at);
            out[..n].copy_from_slice(&s.buf[at..at + n]);
            cur.pos += n as u64;
            // The write that brought the last byte read.
            let i = s.arrivals.partition_point(|&(end, _)| end < cur.pos);
            cur.arrived = s.arrivals.get(i).or(s.arrivals.front()).map(|a| a.1);
            return Some(Read::Data(n));
        }
        if s.shut {
            return Some(Read::Shutdown);
        }
        None
    }

    /// Read at `cur`, waiting for bytes, an end of input or shutdown. Cancel-safe.
    pub async fn read(&self, cur: &mut Cursor, out: &mut [u8]) -> Read {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_read(cur, out) {
                return r;
            }
            notified.await;
        }
    }
}

/// A reader's place in the ring: its absolute offset and the last end mark it reported.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    pos: u64,
    ended_at: Option<u64>,
    arrived: Option<Instant>,
}

impl Cursor {
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// When the last byte read was written into the ring.
    pub fn arrived(&self) -> Option<Instant> {
        self.arrived
    }
}

/// A cursor bound to its ring.
pub struct RingReader<'a> {
    ring: &'a Ring,
    cur: Cursor,
}

impl RingReader<'_> {
    pub fn position(&self) -> u64 {
        self.cur.pos
    }

    /// When the last byte read was written into the ring.
    pub fn arrived(&self) -> Option<Instant> {
        self.cur.arrived
    }

    pub fn try_read(&mut self, out: &mut [u8]) -> Option<Read> {
        self.ring.try_read(&mut self.cur, out)
    }

    pub async fn read(&mut self, out: &mut [u8]) -> Read {
        self.ring.read(&mut self.cur, out).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut RingReader<'_>) -> (Vec<u8>, Option<Read>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            match r.try_read(&mut buf) {
                Some(Read::Data(n)) => got.extend_from_slice(&buf[..n]),
                other => return (got, other),
            }
        }
    }

    #[test]
    fn reader_sees_bytes_written_after_it_joined() {
        let ring = Ring::new(0);
        ring.write(b"old");
        let mut r = ring.reader();
        ring.write(b"hello");
        ring.write(b" world");
        assert_eq!(read_all(&mut r), (b"hello world".to_vec(), None));
    }

    #[test]
    fn a_read_tells_when_its_last_byte_arrived() {
        let ring = Ring::new(188 * 64);
        let mut r = ring.reader();
        assert_eq!(r.arrived(), None);
        ring.write(&[1; 100]);
        let first = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        ring.write(&[2; 100]);
        let mut buf = [0; 150];
        assert_eq!(r.try_read(&mut buf), Some(Read::Data(150)));
        let second = r.arrived().unwrap();
        assert!(second > first, "byte 150 came with the second write");
        let mut buf = [0; 50];
        assert_eq!(r.try_read(&mut buf), Some(Read::Data(50)));
        assert_eq!(r.arrived(), Some(second));
        let mut r = ring.reader_from_oldest();
        let mut buf = [0; 60];
        assert_eq!(r.try_read(&mut buf), Some(Read::Data(60)));
        assert!(r.arrived().unwrap() < first, "byte 60 came with the first");
    }

    #[test]
    fn wraps_around_the_end_of_the_buffer() {
        let ring = Ring::new(0);
        let cap = ring.capacity();
        let mut r = ring.reader();
        let data: Vec<u8> = (0..cap - 5).map(|i| i as u8).collect();
        ring.write(&data);
        assert_eq!(read_all(&mut r).0, data);
        let more: Vec<u8> = (0..100u8).collect();
        ring.write(&more);
        assert_eq!(read_all(&mut r).0, more);
    }

    #[test]
    fn lapped_reader_is_told_and_resumes_at_live_edge() {
        let ring = Ring::new(0);
        let cap = ring.capacity();
        let mut r = ring.reader();
        ring.write(&vec![1u8; cap + 10]);
        let mut buf = [0u8; 16];
        assert_eq!(r.try_read(&mut buf), Some(Read::Lapped(10 + cap as u64)));
        ring.write(b"live");
        assert_eq!(read_all(&mut r).0, b"live");
    }

    #[test]
    fn close_lets_readers_drain_then_signals_end_once() {
        let ring = Ring::new(0);
        let mut r = ring.reader();
        ring.write(b"abc");
        ring.close_input();
        assert_eq!(read_all(&mut r), (b"abc".to_vec(), Some(Read::EndOfInput)));
        let mut buf = [0u8; 4];
        assert_eq!(r.try_read(&mut buf), None);
    }

    #[test]
    fn new_source_continues_the_same_ring() {
        let ring = Ring::new(0);
        let mut r = ring.reader();
        ring.write(b"first");
        ring.close_input();
        ring.write(b"second");
        assert_eq!(
            read_all(&mut r),
            (b"first".to_vec(), Some(Read::EndOfInput))
        );
        assert_eq!(read_all(&mut r), (b"second".to_vec(), None));
    }

    #[test]
    fn shutdown_drains_then_ends() {
        let ring = Ring::new(0);
        let mut r = ring.reader();
        ring.write(b"x");
        ring.shutdown();
        assert_eq!(read_all(&mut r), (b"x".to_vec(), Some(Read::EndOfInput)));
        let mut buf = [0u8; 4];
        assert_eq!(r.try_read(&mut buf), Some(Read::Shutdown));
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_reader() {
        let ring = std::sync::Arc::new(Ring::new(0));
        let r2 = ring.clone();
        let task = tokio::spawn(async move {
            let mut r = r2.reader();
            let mut buf = [0u8; 8];
            r.read(&mut buf).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ring.open();
        ring.close_input();
        assert_eq!(task.await.unwrap(), Read::EndOfInput);
    }
}
