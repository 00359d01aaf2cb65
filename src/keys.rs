//! Per-stream keys (`POST /streams/{s}` with the admin token): a registered stream takes only
//! its own publish key, and its view key when it has one.
//!
//! Keys are kept as SHA-256 hashes; the clear key is shown once, in the registration's answer.
//! Where they are kept:
//!
//! - one node: `--data-dir/keys.json` (0600, written whole to a temporary file, fsynced,
//!   renamed, the directory fsynced), or memory only without `--data-dir`;
//! - a cluster: Redis (`tsbridge:keys:{name}`), so every node checks the same keys. A node
//!   reads a name's keys at most every [`FRESH_FOR`] (a `DELETE` is in force everywhere within
//!   it); while Redis is away it goes on with the last keys it read, and a name it never read
//!   is refused (fail closed). A `keys.json` from before the node joined is copied into Redis
//!   once, never overwriting.
//!
//! Registration is atomic in both (one winner: `SET NX`, or check-and-insert under one lock),
//! and a registration or removal that could not be saved is an error, with nothing changed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::secret::{constant_time_eq, sha256_hex};

/// How long a node uses the keys it read from Redis before reading them again.
pub const FRESH_FOR: Duration = Duration::from_millis(500);
/// Names whose keys a node remembers (read from Redis); past it the oldest are forgotten.
const CACHE_MAX: usize = 10_000;
const REDIS_PREFIX: &str = "tsbridge:keys:";

/// A registered stream's keys as kept: the SHA-256 of each, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamKeys {
    pub publish_sha256: String,
    /// `None`: viewing takes the server's `--view-token` rule.
    pub view_sha256: Option<String>,
    /// The stream's own SRT passphrase, in clear: libsrt needs the passphrase itself to derive
    /// the stream's AES key (a hash would not do). `None`: `--srt-passphrase` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srt_passphrase: Option<String>,
}

impl StreamKeys {
    /// The keys of clear `publish` and `view` keys.
    pub fn new(publish: &str, view: Option<&str>) -> Self {
        StreamKeys {
            publish_sha256: sha256_hex(publish),
            view_sha256: view.map(sha256_hex),
            srt_passphrase: None,
        }
    }

    /// With the stream's own SRT passphrase.
    pub fn with_srt_passphrase(mut self, passphrase: Option<String>) -> Self {
        self.srt_passphrase = passphrase;
        self
    }

    /// Whether `token` is the publish key.
    pub fn publishes(&self, token: Option<&str>) -> bool {
        matches(token, Some(&self.publish_sha256))
    }

    /// Whether `token` is the view key (never when the stream has none).
    pub fn views(&self, token: Option<&str>) -> bool {
        matches(token, self.view_sha256.as_deref())
    }
}

fn matches(token: Option<&str>, hash: Option<&str>) -> bool {
    match (token, hash) {
        (Some(t), Some(h)) => constant_time_eq(sha256_hex(t).as_bytes(), h.as_bytes()),
        _ => false,
    }
}

/// A new key: 128 bits from the OS's CSPRNG (through `rand`), hex.
pub fn new_token() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the cluster's Redis is unreachable, so stream keys cannot be checked or changed")]
    Unreachable,
    #[error("{0}")]
    Save(String),
}

/// Where the keys are.
pub enum KeyStore {
    /// One node: memory, and `keys.json` when it has a file.
    File(FileKeys),
    /// A cluster: Redis, with what this node last read.
    Redis {
        cluster: Arc<Cluster>,
        cache: Mutex<HashMap<String, (Option<StreamKeys>, Instant)>>,
    },
}

impl KeyStore {
    /// `stream`'s keys, if it is registered.
    pub async fn get(&self, stream: &str) -> Result<Option<StreamKeys>, KeyError> {
        let (cluster, cache) = match self {
            KeyStore::File(f) => return Ok(f.get(stream)),
            KeyStore::Redis { cluster, cache } => (cluster, cache),
        };
        let known = cache.lock().get(stream).cloned();
        if let Some((keys, at)) = &known {
            if at.elapsed() < FRESH_FOR {
                return Ok(keys.clone());
            }
        }
        match cluster.get(&format!("{REDIS_PREFIX}{stream}")).await {
            Ok(v) => {
                let keys = v.and_then(|v| serde_json::from_str::<StreamKeys>(&v).ok());
                let mut cache = cache.lock();
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, (_, at)| at.elapsed() < FRESH_FOR);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(stream.to_owned(), (keys.clone(), Instant::now()));
                Ok(keys)
            }
            // Redis away: the last keys read, or nothing known (refused).
            Err(_) => known.map(|(k, _)| k).ok_or(KeyError::Unreachable),
        }
    }

    /// Registers `stream`: `Ok(false)` when it is registered already (nothing changed).
    pub async fn register(&self, stream: &str, keys: &StreamKeys) -> Result<bool, KeyError> {
        match self {
            KeyStore::File(f) => f.insert_new(stream, keys),
            KeyStore::Redis { cluster, cache } => {
                let json =
                    serde_json::to_string(keys).map_err(|e| KeyError::Save(e.to_string()))?;
                let key = format!("{REDIS_PREFIX}{stream}");
                let set = cluster
                    .set_nx(&key, &json)
                    .await
                    .map_err(|_| KeyError::Unreachable)?;
                if set {
                    cache
                        .lock()
                        .insert(stream.to_owned(), (Some(keys.clone()), Instant::now()));
                }
                Ok(set)
            }
        }
    }

    /// Forgets `stream`'s keys: whether it was registered.
    pub async fn remove(&self, stream: &str) -> Result<bool, KeyError> {
        match self {
            KeyStore::File(f) => f.remove(stream),
            KeyStore::Redis { cluster, cache } => {
                let removed = cluster
                    .del(&format!("{REDIS_PREFIX}{stream}"))
                    .await
                    .map_err(|_| KeyError::Unreachable)?;
                cache
                    .lock()
                    .insert(stream.to_owned(), (None, Instant::now()));
                Ok(removed)
            }
        }
    }

    /// Where registrations are kept: `memory`, `file` or `redis`.
    pub fn kept_in(&self) -> &'static str {
        match self {
            KeyStore::File(f) if f.file.is_some() => "file",
            KeyStore::File(_) => "memory",
            KeyStore::Redis { .. } => "redis",
        }
    }

    /// Whether registrations outlive this process.
    pub fn persistent(&self) -> bool {
        self.kept_in() != "memory"
    }

    /// The keys of a cluster node: in Redis. `local`'s registrations (a `keys.json` from
    /// before) are copied there once Redis answers, by the task returned.
    pub fn in_cluster(
        cluster: Arc<Cluster>,
        local: FileKeys,
    ) -> (KeyStore, impl std::future::Future<Output = ()> + Send) {
        let store = KeyStore::Redis {
            cluster: cluster.clone(),
            cache: Mutex::new(HashMap::new()),
        };
        let import = async move {
            let entries: Vec<(String, StreamKeys)> =
                local.keys.lock().clone().into_iter().collect();
            if entries.is_empty() {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut left = entries;
            while !left.is_empty() {
                tick.tick().await;
                let mut failed = Vec::new();
                for (name, keys) in left {
                    let json = serde_json::to_string(&keys).unwrap_or_default();
                    match cluster
                        .set_nx(&format!("{REDIS_PREFIX}{name}"), &json)
                        .await
                    {
                        Ok(true) => {
                            info!(stream = %name, "cluster: registered stream's keys copied from keys.json into Redis")
                        }
                        Ok(false) => {
                            warn!(stream = %name, "cluster: keys.json registers a stream Redis already has; Redis's keys hold")
                        }
                        Err(_) => failed.push((name, keys)),
                    }
                }
                left = failed;
            }
        };
        (store, import)
    }
}

/// Registrations in memory and, with a data directory, in `keys.json`.
pub struct FileKeys {
    keys: Mutex<BTreeMap<String, StreamKeys>>,
    file: Option<PathBuf>,
}

/// `keys.json` as older versions wrote it: the keys in clear (hashed when read).
#[derive(Deserialize)]
#[serde(untagged)]
enum FileEntry {
    Hashed(StreamKeys),
    Clear {
        publish_token: String,
        view_token: Option<String>,
    },
}

impl FileKeys {
    /// The keys kept under `dir` (none yet when it has no `keys.json`); in memory only without.
    /// A file with keys in clear (written by an older version) is rewritten hashed.
    pub fn open(dir: Option<&Path>) -> Result<FileKeys, String> {
        let file = dir.map(|d| d.join("keys.json"));
        let mut clear = false;
        let keys = match &file {
            Some(f) if f.exists() => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                let entries: BTreeMap<String, FileEntry> = serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a key file: {e}", f.display()))?;
                entries
                    .into_iter()
                    .map(|(name, e)| {
                        let keys = match e {
                            FileEntry::Hashed(k) => k,
                            FileEntry::Clear {
                                publish_token,
                                view_token,
                            } => {
                                clear = true;
                                StreamKeys::new(&publish_token, view_token.as_deref())
                            }
                        };
                        (name, keys)
                    })
                    .collect()
            }
            _ => BTreeMap::new(),
        };
        let store = FileKeys {
            keys: Mutex::new(keys),
            file,
        };
        if clear {
            store.save(&store.keys.lock())?;
        }
        Ok(store)
    }

    fn get(&self, stream: &str) -> Option<StreamKeys> {
        self.keys.lock().get(stream).cloned()
    }

    /// Registers `stream` unless it is: `Ok(false)` then. `Err` when it could not be saved
    /// (nothing registered).
    fn insert_new(&self, stream: &str, keys: &StreamKeys) -> Result<bool, KeyError> {
        let mut map = self.keys.lock();
        if map.contains_key(stream) {
            return Ok(false);
        }
        map.insert(stream.to_owned(), keys.clone());
        if let Err(e) = self.save(&map) {
            map.remove(stream);
            return Err(KeyError::Save(e));
        }
        Ok(true)
    }

    /// Forgets `stream`: whether it was registered. `Err` when that could not be saved (it
    /// stays registered).
    fn remove(&self, stream: &str) -> Result<bool, KeyError> {
        let mut map = self.keys.lock();
        let Some(old) = map.remove(stream) else {
            return Ok(false);
        };
        if let Err(e) = self.save(&map) {
            map.insert(stream.to_owned(), old);
            return Err(KeyError::Save(e));
        }
        Ok(true)
    }

    /// Writes the whole file: a 0600 temporary file, fsynced, renamed over it, the directory
    /// fsynced (a crash leaves the old file or the new one, never a mix or nothing).
    fn save(&self, map: &BTreeMap<String, StreamKeys>) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let text = serde_json::to_string_pretty(map).map_err(|e| e.to_string())?;
        let tmp = file.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot save {}: {e}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("tsbridge-keys-{}", new_token()))
    }

    #[tokio::test]
    async fn keys_are_hashed_survive_a_reopen_and_a_removal_is_saved() {
        let dir = temp_dir();
        let store = KeyStore::File(FileKeys::open(Some(&dir)).unwrap());
        let k = StreamKeys::new("publish-secret", Some("view-secret"));
        assert!(store.register("cam", &k).await.unwrap());
        assert!(!store.register("cam", &k).await.unwrap(), "one winner");
        assert!(store.register("two", &k).await.unwrap());
        assert!(store.remove("two").await.unwrap());
        let text = std::fs::read_to_string(dir.join("keys.json")).unwrap();
        assert!(!text.contains("publish-secret") && !text.contains("view-secret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("keys.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = KeyStore::File(FileKeys::open(Some(&dir)).unwrap());
        let cam = again.get("cam").await.unwrap().unwrap();
        assert!(cam.publishes(Some("publish-secret")) && !cam.publishes(Some("view-secret")));
        assert!(cam.views(Some("view-secret")) && !cam.views(None));
        assert_eq!(again.get("two").await.unwrap(), None);
        std::fs::write(dir.join("keys.json"), "nonsense").unwrap();
        assert!(FileKeys::open(Some(&dir)).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn clear_keys_of_an_older_file_are_hashed_when_read() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("keys.json"),
            r#"{"cam": {"publish_token": "p-old-key", "view_token": null}}"#,
        )
        .unwrap();
        let store = KeyStore::File(FileKeys::open(Some(&dir)).unwrap());
        let cam = store.get("cam").await.unwrap().unwrap();
        assert!(cam.publishes(Some("p-old-key")));
        assert_eq!(cam.view_sha256, None);
        let text = std::fs::read_to_string(dir.join("keys.json")).unwrap();
        assert!(!text.contains("p-old-key"), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_failed_save_registers_and_removes_nothing() {
        let dir = temp_dir();
        let store = FileKeys::open(Some(&dir)).unwrap();
        let k = StreamKeys::new("publish-secret", None);
        assert!(store.insert_new("cam", &k).unwrap());
        // The directory becomes a file: nothing can be written under it.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, "not a directory").unwrap();
        assert!(store.insert_new("new", &k).is_err());
        assert_eq!(store.get("new"), None);
        assert!(store.remove("cam").is_err());
        assert_eq!(store.get("cam"), Some(k));
        let _ = std::fs::remove_file(dir);
    }
}
