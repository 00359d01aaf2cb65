//! An edge's pull: a stream this node has no source for, whose owner is another node, is read
//! from `GET {owner}/streams/{s}.ts` into the local stream's ring — once per stream however many
//! viewers it has here; from there on it is a stream like any other (demux, GOP cache, instant
//! start). When the pull ends (the owner's source ended, the owner went away), the owner is
//! looked up again: a source that comes back, on any node, within `--source-grace` keeps the
//! viewers (RTP continuous, as for a restart on one node). The pull stops a while after the
//! last viewer here left.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, info};

use super::Cluster;
use crate::client;
use crate::stream::Stream;

/// How long a pull outlives the last viewer (a viewer reloading its page finds it running).
pub const LINGER: Duration = Duration::from_secs(10);
/// Between lookups of a stream's owner while there is none (or Redis is away).
const RETRY: Duration = Duration::from_millis(250);
/// A pull's bounds: an owner that stops sending (a stopped or vanished host) ends the pull
/// after 5 s of silence; its first bytes may take a GOP (the owner starts a reader at a
/// keyframe).
const PULL_TIMEOUTS: client::Timeouts = client::Timeouts::stream(
    Duration::from_secs(3),
    Duration::from_secs(5),
    Duration::from_secs(5),
)
.first_data(Duration::from_secs(20));

/// Start pulling `stream` from its owner unless this node already does (or has its source).
pub fn ensure(cluster: &Arc<Cluster>, stream: &Arc<Stream>) {
    {
        let mut pulled = cluster.pulled.lock();
        if stream.has_source() || pulled.contains_key(&stream.name) {
            return;
        }
        pulled.insert(stream.name.clone(), String::new());
    }
    let entry = PullEntry {
        pulled: cluster.pulled.clone(),
        name: stream.name.clone(),
    };
    let (c, s) = (cluster.clone(), stream.clone());
    cluster.local.tasks.spawn(async move {
        let _entry = entry;
        run(&c, &s).await;
    });
}

/// A stream's entry in `pulled`, removed however its pull ends (returns, panics, is aborted),
/// so a later viewer starts the pull again.
struct PullEntry {
    pulled: Arc<Mutex<HashMap<String, String>>>,
    name: String,
}

impl Drop for PullEntry {
    fn drop(&mut self) {
        self.pulled.lock().remove(&self.name);
    }
}

fn watched(s: &Stream) -> bool {
    s.stats.viewers.load(Ordering::Relaxed) > 0
        || s.stats.waiting_viewers.load(Ordering::Relaxed) > 0
}

async fn run(cluster: &Cluster, stream: &Arc<Stream>) {
    let name = &stream.name;
    let mut idle_since = Instant::now();
    let token = format!("Bearer {}", cluster.token);
    loop {
        if watched(stream) {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= LINGER {
            debug!(stream = %name, "cluster: no viewers here; pull stopped");
            return;
        }
        let owner = match cluster.owner(name).await {
            Ok(Some(o)) if o.id != cluster.id => o,
            _ => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if stream.has_source() {
            // A source of its own here after all (it will claim the name).
            return;
        }
        cluster.stats.pulls_started.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = cluster.pulled.lock().get_mut(name) {
            o.clone_from(&owner.url);
        }
        info!(stream = %name, owner = %owner.url, "cluster: pulling the stream from its owner");
        // The source attaches with the first bytes: a try that fails (a dead owner, tried
        // again every RETRY) does not restart the viewers' --source-grace.
        let mut guard = None;
        // From the GOP the owner's stream is in: the first viewer here starts at once.
        let url = format!("{}/streams/{name}.ts?start=gop", owner.url);
        let req = client::Request::get(url).header("Authorization", &token);
        let pull = client::get_streaming(req, PULL_TIMEOUTS, |data| {
            guard
                .get_or_insert_with(|| stream.attach_source())
                .write(&data);
            true
        });
        // Stop when nobody here watches any more, or the owner's stream ends.
        let linger = async {
            let mut since = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if watched(stream) {
                    since = Instant::now();
                } else if since.elapsed() >= LINGER {
                    return;
                }
            }
        };
        let ended = tokio::select! {
            r = pull => r.err().map(|e| e.to_string()),
            () = linger => {
                debug!(stream = %name, "cluster: no viewers here; pull stopped");
                return;
            }
        };
        drop(guard);
        info!(stream = %name, owner = %owner.url, why = ended.as_deref().unwrap_or("the owner's stream ended"),
            "cluster: pull ended");
        idle_since = Instant::now();
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pull_that_panics_leaves_no_entry_behind() {
        let pulled: Arc<Mutex<HashMap<String, String>>> = Default::default();
        pulled.lock().insert("cam".into(), String::new());
        let entry = PullEntry {
            pulled: pulled.clone(),
            name: "cam".into(),
        };
        let task = tokio::spawn(async move {
            let _entry = entry;
            tokio::task::yield_now().await;
            panic!("a bug in a pull");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(pulled.lock().is_empty());
    }
}
