//! Viewers on this node waiting for a name no node has a source for yet. A WHEP POST asks
//! Redis once; if there is no owner it only takes a place on the registry's waiting list (no
//! stream, no pull). One task per node then looks up every waited-for name at once (one
//! `MGET`) every [`RECHECK`], and creates and pulls those that got an owner elsewhere: what a
//! waiting viewer costs does not grow with the names asked for.
//!
//! ```text
//!  WHEP POST (no stream) ─► owner? ─ yes ─► create + pull::ensure
//!                             │ no
//!                             ▼
//!                      waiting list ◄── every RECHECK: MGET owners of the waited names
//!                             ▲                          │ an owner appeared
//!                             └── woken by the stream ◄──┴── create (--max-streams) + pull
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::{pull, Cluster};

/// Between two lookups of the waited-for names (a pull's own retry is as often).
pub const RECHECK: Duration = Duration::from_millis(250);

/// For the life of the server.
pub async fn run(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        recheck(&cluster).await;
    }
}

/// One round: pull the waited-for names that have an owner on another node now.
async fn recheck(cluster: &Arc<Cluster>) {
    let registry = &cluster.local.registry;
    let names = registry.waited_names();
    if names.is_empty() {
        return;
    }
    // Redis away: the viewers wait on (their POST ends at its deadline).
    let Ok(owners) = cluster.owners(&names).await else {
        return;
    };
    for (name, owner) in names.iter().zip(owners) {
        if owner.is_none_or(|o| o.id == cluster.id) {
            continue;
        }
        // At --max-streams the registry refuses (and logs it); the viewers' wait says so.
        if let Ok(stream) = registry.try_get_or_create(name) {
            pull::ensure(cluster, &stream);
        }
    }
}
