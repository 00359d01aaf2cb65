//! A stream's SCTE-35 cues, as they arrived: the last few kept for the API, each new one
//! broadcast to the viewers' event streams (WHEP `scte35` events). A subscriber that falls
//! behind loses the oldest, not the stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::ts::scte35::Cue;
use crate::ts::Pid;

/// Cues kept for the API.
const KEPT: usize = 8;
/// Cues a slow event stream may be behind before it loses some.
const QUEUE: usize = 32;

/// One cue as the stream saw it.
#[derive(Clone, Debug)]
pub struct StreamCue {
    pub pid: Pid,
    pub cue: Cue,
    /// Media time from the video that came before the cue to its splice point (ms; negative
    /// when the point is already past), when the cue names a time and there was video.
    pub in_ms: Option<i64>,
    /// When it arrived, ms since the Unix epoch.
    pub unix_ms: u64,
}

#[derive(Debug)]
pub struct Cues {
    tx: broadcast::Sender<Arc<StreamCue>>,
    recent: Mutex<VecDeque<Arc<StreamCue>>>,
    pub total: AtomicU64,
}

impl Default for Cues {
    fn default() -> Self {
        Cues {
            tx: broadcast::Sender::new(QUEUE),
            recent: Mutex::new(VecDeque::with_capacity(KEPT)),
            total: AtomicU64::new(0),
        }
    }
}

impl Cues {
    pub fn push(&self, cue: StreamCue) {
        let cue = Arc::new(cue);
        {
            let mut recent = self.recent.lock();
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(cue.clone());
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        // No subscriber is not an error.
        let _ = self.tx.send(cue);
    }

    /// The last cues, oldest first.
    pub fn recent(&self) -> Vec<Arc<StreamCue>> {
        self.recent.lock().iter().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StreamCue>> {
        self.tx.subscribe()
    }
}
