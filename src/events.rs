//! The event hook (`--event-hook URL`): `stream.ready`, `stream.ended`, `session.started`,
//! `session.ended` as JSON POSTs, for the operator's billing and monitoring.
//!
//! Emitting never waits: events go into a bounded queue ([`QUEUE`]) that one task delivers in
//! order, each tried [`TRIES`] times with a growing pause. A hook that is slow or down fills the
//! queue; what does not fit is dropped and counted (`tsbridge_events_dropped_total`), so media
//! and requests never wait for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub const QUEUE: usize = 1024;
pub const TRIES: u32 = 3;
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the event hook, for `/metrics`.
#[derive(Debug, Default)]
pub struct EventStats {
    pub delivered: AtomicU64,
    /// Given up after [`TRIES`].
    pub failed: AtomicU64,
    /// The queue was full.
    pub dropped: AtomicU64,
}

/// Where events go; a no-op without `--event-hook`. Cheap to clone.
#[derive(Clone, Default)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Value>>,
    pub stats: Arc<EventStats>,
    seq: Arc<AtomicU64>,
}

impl EventSink {
    /// A sink for `url` and the task that delivers to it (the caller runs it).
    pub fn new(url: String) -> (EventSink, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = EventSink {
            tx: Some(tx),
            ..Default::default()
        };
        let stats = sink.stats.clone();
        (sink, deliver(url, rx, stats))
    }

    /// Queue event `kind` with `fields` (an object), stamped with its type, a sequence number
    /// and the time (Unix ms).
    pub fn emit(&self, kind: &str, mut fields: Value) {
        let Some(tx) = &self.tx else { return };
        if let Value::Object(m) = &mut fields {
            m.insert("type".into(), kind.into());
            m.insert(
                "seq".into(),
                self.seq.fetch_add(1, Ordering::Relaxed).into(),
            );
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            m.insert("time_ms".into(), ms.into());
        }
        if tx.try_send(fields).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }
}

async fn deliver(url: String, mut rx: mpsc::Receiver<Value>, stats: Arc<EventStats>) {
    let mut down_logged = false;
    while let Some(event) = rx.recv().await {
        let body = event.to_string();
        let mut delivered = false;
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            match crate::client::post_json(&url, &body, TIMEOUT).await {
                Ok(status) if (200..300).contains(&status) => {
                    delivered = true;
                    break;
                }
                Ok(status) => debug!(status, "event hook refused an event"),
                Err(e) if e.is_timeout() => debug!(error = %e, "event hook did not answer in time"),
                Err(e) => debug!(error = %e, "event hook unreachable"),
            }
        }
        if delivered {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            if down_logged {
                warn!("event hook delivers again");
                down_logged = false;
            }
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            if !down_logged {
                warn!(tries = TRIES, "event hook failed: dropping events it cannot take (counted in tsbridge_events_failed_total)");
                down_logged = true;
            }
        }
    }
}

/// A stream event's fields.
pub fn stream_fields(stream: &str) -> Value {
    json!({ "stream": stream })
}
