//! A cluster of nodes on Redis (`--cluster redis://…`): Redis holds who is in the cluster and
//! who has which stream's source; the nodes move TS between each other over HTTP (an edge pulls
//! `GET {owner}/streams/{s}.ts` once, however many viewers it has) and spread viewers with
//! WHEP's own 307.
//!
//! Keys (with a TTL, refreshed every [`TICK`], so a node that dies leaves by itself):
//!
//! - `tsbridge:node:{id}` → `{sig} {json}`: the node's [`NodeInfo`] (URL, load, limits,
//!   streams); `tsbridge:nodes`, a sorted set of the ids scored by their records' expiry, lists
//!   them (no `KEYS` scan).
//! - `tsbridge:stream:{name}` → `{id} {url} {sig}` of the node whose source has it: claimed
//!   with `SET NX`, kept with a compare-and-expire, released with a compare-and-delete.
//! - `tsbridge:keys:{name}`: registered streams' keys (see `crate::keys`; no TTL).
//!
//! Redis is not trusted blindly: every record is signed with the cluster token (HMAC-SHA256),
//! and one that does not verify is ignored, so a node never sends its token to, nor redirects
//! a client to, a URL that no node of the cluster wrote. `redis://user:pass@host` authenticates
//! (Redis ACLs); `rediss://` is TLS.
//!
//! Redis down: nothing local stops (streams, pulls already running, sessions); what needs it
//! (locating a stream, claiming one) answers at once with an error the caller turns into 503;
//! the connection is retried with backoff and the node registers again.

pub mod pull;
pub mod waiting;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::stream::Registry;
use crate::tasks::Tasks;
use crate::webrtc::Engine;

/// How often a node refreshes its keys; they live [`TTL`].
pub const TICK: Duration = Duration::from_secs(1);
pub const TTL: Duration = Duration::from_secs(5);
/// No Redis call waits longer (then the node acts as if Redis were down).
const OP_TIMEOUT: Duration = Duration::from_millis(500);

const NODE_PREFIX: &str = "tsbridge:node:";
const STREAM_PREFIX: &str = "tsbridge:stream:";
/// Set once (`SET NX`) by the first node to reach an empty Redis: a change means Redis lost
/// its data.
const EPOCH_KEY: &str = "tsbridge:epoch";
/// A sorted set of the node ids, scored by when their record expires (ms since the epoch).
const NODES_KEY: &str = "tsbridge:nodes";

/// What a node says of itself in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub url: String,
    pub sessions: usize,
    pub viewers: usize,
    pub max_sessions: usize,
    pub max_viewers: usize,
    pub egress_bps: u64,
    pub streams_owned: Vec<String>,
    pub streams_pulled: Vec<String>,
    /// Shutting down: it takes no new viewers.
    pub draining: bool,
}

impl NodeInfo {
    /// Whether it can take another session.
    pub fn has_room(&self) -> bool {
        !self.draining && self.sessions < self.max_sessions
    }
}

/// Where a stream's source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub id: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster's Redis is unreachable")]
    Unreachable,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub pulls_started: AtomicU64,
    pub redirects: AtomicU64,
    pub redis_errors: AtomicU64,
    /// Records in Redis that did not verify (ignored).
    pub forged_records: AtomicU64,
    /// Times Redis was seen to have lost its data (its epoch changed).
    pub redis_data_lost: AtomicU64,
}

/// What a node's cluster duties read of the node and where they run their pulls: handed over
/// by the server (the cluster knows nothing of HTTP).
pub struct Local {
    pub registry: Arc<Registry>,
    pub engine: Engine,
    pub tasks: Tasks,
    pub max_sessions: usize,
    pub max_viewers: usize,
}

pub struct Cluster {
    pub id: String,
    /// This node's public URL, without a trailing slash.
    pub url: String,
    /// Sent to other nodes (TS pulls) and accepted from them; signs the node records.
    pub token: String,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    up: AtomicBool,
    draining: AtomicBool,
    /// Streams whose source is on this node and that it claimed.
    owned: Mutex<HashSet<String>>,
    /// Streams this node pulls from their owner (an edge), with the owner's URL once known.
    pub(crate) pulled: Arc<Mutex<HashMap<String, String>>>,
    pub stats: ClusterStats,
    /// Egress bytes at the last tick, for the bitrate.
    last_bytes: AtomicU64,
    egress_bps: AtomicU64,
    /// Held by a tick and by `leave`, so a tick in flight cannot register the node again
    /// after it left.
    ticking: tokio::sync::Mutex<()>,
    pub(crate) local: Local,
    forged_logged: AtomicBool,
    /// The cluster's epoch as this node last saw it.
    epoch: Mutex<Option<String>>,
    /// Streams with a source here that another node has claimed (logged once).
    conflicts: Mutex<HashSet<String>>,
}

impl Cluster {
    pub fn new(
        redis_url: &str,
        public_url: &str,
        token: String,
        local: Local,
    ) -> Result<Cluster, String> {
        // `rediss://` connects with rustls's process-wide provider: ours (aws-lc-rs).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client =
            redis::Client::open(redis_url).map_err(|e| format!("--cluster {redis_url:?}: {e}"))?;
        let v: u64 = rand::random();
        Ok(Cluster {
            id: format!("{v:016x}"),
            url: public_url.trim_end_matches('/').to_owned(),
            token,
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            owned: Mutex::new(HashSet::new()),
            pulled: Default::default(),
            stats: ClusterStats::default(),
            last_bytes: AtomicU64::new(0),
            egress_bps: AtomicU64::new(0),
            ticking: tokio::sync::Mutex::new(()),
            local,
            forged_logged: AtomicBool::new(false),
            epoch: Mutex::new(None),
            conflicts: Mutex::new(HashSet::new()),
        })
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The owner's URL when this node pulls stream `name` from it.
    pub fn pulled_from(&self, name: &str) -> Option<String> {
        self.pulled.lock().get(name).cloned()
    }

    fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        self.conn.lock().clone().ok_or(ClusterError::Unreachable)
    }

    /// One command, bounded in time; a failure marks Redis down (logged once).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let mut conn = self.conn()?;
        self.bounded(cmd.query_async::<T>(&mut conn)).await
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn()?;
        let mut inv = script.key(key);
        for a in args {
            inv.arg(*a);
        }
        self.bounded(inv.invoke_async::<T>(&mut conn)).await
    }

    /// A Redis call within [`OP_TIMEOUT`]; its outcome says whether Redis is up.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(v)) => {
                self.mark(true);
                Ok(v)
            }
            _ => {
                self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                self.mark(false);
                Err(ClusterError::Unreachable)
            }
        }
    }

    fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                info!("cluster: Redis reachable; registered");
            } else {
                warn!("cluster: Redis unreachable; local streams and sessions go on, locating other nodes' streams answers 503 until it is back");
            }
        }
    }

    /// HMAC-SHA256 of `what` with the cluster token, hex: what every record in Redis carries,
    /// so that a node only believes (sends its token to, redirects clients to) what another
    /// node of the cluster wrote.
    fn sign(&self, what: &str) -> String {
        crate::secret::hmac_sha256_hex(&self.token, what)
    }

    fn verify(&self, what: &str, sig: &str) -> bool {
        crate::secret::constant_time_eq(self.sign(what).as_bytes(), sig.as_bytes())
    }

    /// A node record as kept: `{sig} {json}`.
    fn signed_info(&self, json: &str) -> String {
        format!("{} {json}", self.sign(&format!("node\n{json}")))
    }

    /// A node record that verifies.
    fn read_info(&self, value: &str) -> Option<NodeInfo> {
        let (sig, json) = value.split_once(' ')?;
        if !self.verify(&format!("node\n{json}"), sig) {
            self.forged();
            return None;
        }
        serde_json::from_str(json).ok()
    }

    /// A stream's claim as kept: `{id} {url} {sig}`, the signature binding the name.
    fn claim_value(&self, name: &str) -> String {
        let sig = self.sign(&format!("stream\n{name}\n{}\n{}", self.id, self.url));
        format!("{} {} {sig}", self.id, self.url)
    }

    /// A stream's claim that verifies.
    fn read_claim(&self, name: &str, value: &str) -> Option<Owner> {
        let mut parts = value.split(' ');
        let (id, url, sig) = (parts.next()?, parts.next()?, parts.next()?);
        if !self.verify(&format!("stream\n{name}\n{id}\n{url}"), sig) {
            self.forged();
            return None;
        }
        Some(Owner {
            id: id.to_owned(),
            url: url.to_owned(),
        })
    }

    /// A record in Redis did not verify: not written by a node with our token.
    fn forged(&self) {
        self.stats.forged_records.fetch_add(1, Ordering::Relaxed);
        if !self.forged_logged.swap(true, Ordering::Relaxed) {
            warn!(
                "cluster: a record in Redis does not verify with this node's --cluster-token \
                   (another token, or written by something else): ignored, never contacted"
            );
        }
    }

    /// Claim stream `name` for a source on this node: `Ok(None)` when it is ours now (or was),
    /// `Ok(Some(owner))` when another node has it.
    pub async fn claim(&self, name: &str) -> Result<Option<Owner>, ClusterError> {
        let key = format!("{STREAM_PREFIX}{name}");
        let set = |nx: bool| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(self.claim_value(name));
            if nx {
                cmd.arg("NX");
            }
            cmd.arg("PX").arg(TTL.as_millis() as u64);
            cmd
        };
        let claimed: Option<String> = self.query(&set(true)).await?;
        if claimed.is_none() {
            let held: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
            match held.map(|v| self.read_claim(name, &v)) {
                Some(Some(o)) if o.id != self.id => return Ok(Some(o)),
                Some(Some(_)) => {}
                // A claim that does not verify holds nothing: take its place.
                Some(None) => {
                    let _: Option<String> = self.query(&set(false)).await?;
                }
                // Gone in between: try once more.
                None => {
                    if self.query::<Option<String>>(&set(true)).await?.is_none() {
                        return self.owner(name).await;
                    }
                }
            }
        }
        self.owned.lock().insert(name.to_owned());
        Ok(None)
    }

    /// Claim stream `name` for a source about to start here: the other node's URL when it has
    /// it (or this node pulls it from one). With Redis away the source is taken, and claimed
    /// once Redis is back.
    pub async fn claim_source(&self, name: &str) -> Option<String> {
        if let Some(owner) = self.pulled_from(name) {
            return Some(owner);
        }
        match self.claim(name).await {
            Ok(owner) => owner.map(|o| o.url),
            Err(e) => {
                warn!(stream = %name, error = %e,
                    "cannot claim the stream in the cluster; taking the source");
                None
            }
        }
    }

    /// The value of Redis key `key` (bounded in time).
    pub async fn get(&self, key: &str) -> Result<Option<String>, ClusterError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// Sets `key` to `value` unless it exists: whether it was set.
    pub async fn set_nx(&self, key: &str, value: &str) -> Result<bool, ClusterError> {
        let set: Option<String> = self
            .query(redis::cmd("SET").arg(key).arg(value).arg("NX"))
            .await?;
        Ok(set.is_some())
    }

    /// Deletes `key`: whether it existed.
    pub async fn del(&self, key: &str) -> Result<bool, ClusterError> {
        let n: i64 = self.query(redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    /// Where stream `name`'s source is, if anywhere in the cluster.
    pub async fn owner(&self, name: &str) -> Result<Option<Owner>, ClusterError> {
        let v: Option<String> = self
            .query(redis::cmd("GET").arg(format!("{STREAM_PREFIX}{name}")))
            .await?;
        Ok(v.and_then(|v| self.read_claim(name, &v)))
    }

    /// Every node registered (this one included) whose record verifies: the ids in the
    /// [`NODES_KEY`] set not expired, then their records.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let now = unix_ms();
        let ids: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(NODES_KEY)
                    .arg(now)
                    .arg("+inf"),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{NODE_PREFIX}{id}")).collect();
        let values: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        let mut nodes: Vec<NodeInfo> = values
            .into_iter()
            .flatten()
            .filter_map(|v| self.read_info(&v))
            .collect();
        nodes.sort_by(|a, b| a.url.cmp(&b.url));
        Ok(nodes)
    }

    /// The least-loaded other node with room for a session, if any.
    pub async fn elsewhere(&self) -> Option<NodeInfo> {
        self.elsewhere_preferring(None).await
    }

    /// Node `preferred` if it has room, else the least-loaded other node with room.
    async fn elsewhere_preferring(&self, preferred: Option<&str>) -> Option<NodeInfo> {
        pick(self.nodes().await.ok()?, &self.id, preferred)
    }

    /// Where this node's viewers of stream `name` go now that its source is on another node:
    /// that node when it has room (no hop between the source and them), else the
    /// least-loaded other node with room. `None` while the name is claimed by nobody or by
    /// this node, and on an edge (its pull follows the source wherever it goes, on the same
    /// RTP clock: its viewers need not move).
    pub async fn moved_to(&self, name: &str) -> Option<NodeInfo> {
        if self.pulled_from(name).is_some() {
            return None;
        }
        let owner = self.owner(name).await.ok()??;
        if owner.id == self.id {
            return None;
        }
        self.elsewhere_preferring(Some(&owner.id)).await
    }

    /// Leave the cluster (shutdown): new viewers go elsewhere, the node's key goes at once.
    pub async fn leave(&self) {
        let _tick = self.ticking.lock().await;
        self.draining.store(true, Ordering::Relaxed);
        let _: Result<i64, _> = self
            .query(redis::cmd("DEL").arg(format!("{NODE_PREFIX}{}", self.id)))
            .await;
        let _: Result<i64, _> = self
            .query(redis::cmd("ZREM").arg(NODES_KEY).arg(&self.id))
            .await;
        let owned: Vec<String> = self.owned.lock().drain().collect();
        for name in owned {
            let _: Result<i64, _> = self
                .script(
                    &release_script(),
                    &format!("{STREAM_PREFIX}{name}"),
                    &[&self.claim_value(&name)],
                )
                .await;
        }
        info!("cluster: left (node key removed, streams released)");
    }

    /// This node as it registers itself.
    fn info(&self) -> NodeInfo {
        let local = &self.local;
        let streams = local.registry.list();
        let mut owned: Vec<String> = self.owned.lock().iter().cloned().collect();
        owned.sort();
        let mut pulled: Vec<String> = self.pulled.lock().keys().cloned().collect();
        pulled.sort();
        NodeInfo {
            id: self.id.clone(),
            url: self.url.clone(),
            sessions: local.engine.live_sessions(),
            viewers: streams
                .iter()
                .map(|s| s.stats.viewers.load(Ordering::Relaxed))
                .sum(),
            max_sessions: local.max_sessions,
            max_viewers: local.max_viewers,
            egress_bps: self.egress_bps.load(Ordering::Relaxed),
            streams_owned: owned,
            streams_pulled: pulled,
            draining: self.is_draining(),
        }
    }

    /// Notices a Redis that lost its data (restarted without persistence): the cluster's
    /// epoch, set once by the first node, changed. Nodes and claims come back by themselves
    /// within a tick; registered streams' keys do not, which is said loudly.
    async fn check_epoch(&self) {
        let mine: u64 = rand::random();
        let set = self
            .query::<Option<String>>(redis::cmd("SET").arg(EPOCH_KEY).arg(mine).arg("NX"))
            .await;
        let Ok(Some(now)) = self.get(EPOCH_KEY).await else {
            return;
        };
        let mut epoch = self.epoch.lock();
        match epoch.as_deref() {
            Some(was) if was != now => {
                self.stats.redis_data_lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "cluster: Redis lost its data (restarted without persistence?): nodes and \
                     stream claims come back by themselves, but registered streams' keys are \
                     gone — register them again, and give Redis persistence (appendonly yes)"
                );
            }
            _ if set.is_err() => return,
            _ => {}
        }
        *epoch = Some(now);
    }

    /// Claims a stream whose source is here (replay, UDP, stdin, or one taken while Redis was
    /// away); another node having it too is logged once, until this node has the claim.
    async fn claim_local_source(&self, name: &str) {
        match self.claim(name).await {
            Ok(Some(other)) => {
                if self.conflicts.lock().insert(name.to_owned()) {
                    warn!(stream = %name, other = %other.url,
                        "cluster: another node has a source for this stream too");
                }
            }
            Ok(None) => {
                self.conflicts.lock().remove(name);
            }
            Err(_) => {}
        }
    }

    /// Once per [`TICK`]: connect if needed, register, keep our claims (and claim the streams
    /// that have a source here: replay, UDP, stdin), release the ones whose source is gone.
    async fn tick(&self) {
        let _tick = self.ticking.lock().await;
        if self.conn.lock().is_none() {
            match tokio::time::timeout(OP_TIMEOUT * 4, ConnectionManager::new(self.client.clone()))
                .await
            {
                Ok(Ok(c)) => *self.conn.lock() = Some(c),
                _ => {
                    self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                    self.mark(false);
                    return;
                }
            }
        }
        let bytes = self.local.engine.metrics.bytes_sent.load(Ordering::Relaxed);
        let last = self.last_bytes.swap(bytes, Ordering::Relaxed);
        self.egress_bps.store(
            bytes.saturating_sub(last) * 8 / TICK.as_secs().max(1),
            Ordering::Relaxed,
        );
        if self.is_draining() {
            return;
        }
        self.check_epoch().await;
        let info = self.info();
        let json = serde_json::to_string(&info).unwrap_or_default();
        let now = unix_ms();
        let ttl = TTL.as_millis() as u64;
        let set: Result<Option<String>, _> = self
            .query(
                redis::cmd("SET")
                    .arg(format!("{NODE_PREFIX}{}", self.id))
                    .arg(self.signed_info(&json))
                    .arg("PX")
                    .arg(ttl),
            )
            .await;
        if set.is_err() {
            return;
        }
        // The id in the set of nodes (scored by its expiry), and the expired ones out of it.
        let listed: Result<i64, _> = self
            .query(
                redis::cmd("ZADD")
                    .arg(NODES_KEY)
                    .arg(now + ttl)
                    .arg(&self.id),
            )
            .await;
        let pruned: Result<i64, _> = self
            .query(
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(NODES_KEY)
                    .arg("-inf")
                    .arg(now),
            )
            .await;
        if listed.is_err() || pruned.is_err() {
            return;
        }
        let pulled = self.pulled.lock().clone();
        for s in self.local.registry.list() {
            let has_source = s.has_source();
            let owned = self.owned.lock().contains(&s.name);
            let key = format!("{STREAM_PREFIX}{}", s.name);
            if has_source && !pulled.contains_key(&s.name) {
                if owned {
                    let kept: Result<i64, _> = self
                        .script(
                            &keep_script(),
                            &key,
                            &[&self.claim_value(&s.name), &TTL.as_millis().to_string()],
                        )
                        .await;
                    if matches!(kept, Ok(0)) {
                        // Expired (Redis was away): take it again if nobody else did.
                        self.owned.lock().remove(&s.name);
                        self.claim_local_source(&s.name).await;
                    }
                } else {
                    self.claim_local_source(&s.name).await;
                }
            } else if owned {
                self.owned.lock().remove(&s.name);
                let _: Result<i64, _> = self
                    .script(&release_script(), &key, &[&self.claim_value(&s.name)])
                    .await;
            }
        }
    }

    /// Where each of `names`' sources is, if anywhere (one `MGET`, for the names viewers wait
    /// for on this node: see `waiting`).
    pub async fn owners(&self, names: &[String]) -> Result<Vec<Option<Owner>>, ClusterError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names
            .iter()
            .map(|n| format!("{STREAM_PREFIX}{n}"))
            .collect();
        let values: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        Ok(names
            .iter()
            .zip(values)
            .map(|(name, v)| v.and_then(|v| self.read_claim(name, &v)))
            .collect())
    }
}

/// Where to send a client of node `me`: node `preferred` if it has room, else the
/// least-loaded other node with room.
fn pick(nodes: Vec<NodeInfo>, me: &str, preferred: Option<&str>) -> Option<NodeInfo> {
    nodes
        .into_iter()
        .filter(|n| n.id != me && n.has_room())
        .min_by_key(|n| (Some(n.id.as_str()) != preferred, n.sessions))
}

/// Milliseconds since the Unix epoch (the scores of the node set).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Extend the TTL of KEYS[1] if it still holds ARGV[1].
fn keep_script() -> redis::Script {
    redis::Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then \
         return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end",
    )
}

/// Delete KEYS[1] if it still holds ARGV[1].
fn release_script() -> redis::Script {
    redis::Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then \
         return redis.call('del', KEYS[1]) else return 0 end",
    )
}

/// The node's cluster duties, for the life of the server.
pub async fn run(cluster: Arc<Cluster>) {
    info!(node = %cluster.id, url = %cluster.url, "cluster: joining");
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        cluster.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, sessions: usize, max_sessions: usize) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: format!("http://{id}"),
            sessions,
            viewers: sessions,
            max_sessions,
            max_viewers: 100,
            egress_bps: 0,
            streams_owned: Vec::new(),
            streams_pulled: Vec::new(),
            draining: false,
        }
    }

    #[test]
    fn a_client_goes_to_the_preferred_node_while_it_has_room_else_the_least_loaded() {
        let nodes = vec![node("me", 0, 10), node("owner", 8, 10), node("idle", 1, 10)];
        let to =
            |nodes: &[NodeInfo], preferred| pick(nodes.to_vec(), "me", preferred).map(|n| n.id);
        assert_eq!(to(&nodes, None).as_deref(), Some("idle"));
        assert_eq!(to(&nodes, Some("owner")).as_deref(), Some("owner"));
        let full = vec![
            node("me", 0, 10),
            node("owner", 10, 10),
            node("idle", 1, 10),
        ];
        assert_eq!(to(&full, Some("owner")).as_deref(), Some("idle"));
        let mut draining = nodes.clone();
        draining[2].draining = true;
        draining[1].draining = true;
        assert_eq!(to(&draining, Some("owner")), None, "never itself");
    }
}
