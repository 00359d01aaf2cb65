//! Per-stream keys (`POST /streams/{s}` with the admin token): a registered stream takes only
//! its own publish key, and its view key when it has one. Kept in `--data-dir/keys.json`
//! (written whole to a temporary file, then renamed) so they survive a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamKeys {
    pub publish_token: String,
    pub view_token: Option<String>,
}

pub struct KeyStore {
    keys: Mutex<BTreeMap<String, StreamKeys>>,
    file: Option<PathBuf>,
}

impl KeyStore {
    /// The keys kept under `dir` (none yet when it has no `keys.json`); in memory only without.
    pub fn open(dir: Option<&Path>) -> Result<KeyStore, String> {
        let file = dir.map(|d| d.join("keys.json"));
        let keys = match &file {
            Some(f) if f.exists() => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a key file: {e}", f.display()))?
            }
            _ => BTreeMap::new(),
        };
        Ok(KeyStore {
            keys: Mutex::new(keys),
            file,
        })
    }

    pub fn get(&self, stream: &str) -> Option<StreamKeys> {
        self.keys.lock().get(stream).cloned()
    }

    pub fn is_registered(&self, stream: &str) -> bool {
        self.keys.lock().contains_key(stream)
    }

    /// Registers `stream` (replacing its keys). `Err` when they could not be saved: the
    /// registration is then undone, so memory and disk agree.
    pub fn insert(&self, stream: &str, keys: StreamKeys) -> Result<(), String> {
        let mut map = self.keys.lock();
        let old = map.insert(stream.to_owned(), keys);
        if let Err(e) = self.save(&map) {
            match old {
                Some(o) => map.insert(stream.to_owned(), o),
                None => map.remove(stream),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Forgets `stream`; whether it was registered.
    pub fn remove(&self, stream: &str) -> bool {
        let mut map = self.keys.lock();
        let had = map.remove(stream).is_some();
        if had {
            if let Err(e) = self.save(&map) {
                warn!(stream, error = %e, "could not save the key file after a removal");
            }
        }
        had
    }

    pub fn persistent(&self) -> bool {
        self.file.is_some()
    }

    fn save(&self, map: &BTreeMap<String, StreamKeys>) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(map).map_err(|e| e.to_string())?;
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, file).map_err(|e| format!("cannot replace {}: {e}", file.display()))
    }
}

/// A new key: 128 bits from the OS's CSPRNG (through `rand`), hex.
pub fn new_token() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_reopen_and_a_removal_is_saved() {
        let dir = std::env::temp_dir().join(format!("tsbridge-keys-{}", new_token()));
        let store = KeyStore::open(Some(&dir)).unwrap();
        let k = StreamKeys {
            publish_token: new_token(),
            view_token: None,
        };
        store.insert("cam", k.clone()).unwrap();
        store.insert("two", k.clone()).unwrap();
        assert!(store.remove("two"));
        let again = KeyStore::open(Some(&dir)).unwrap();
        assert_eq!(again.get("cam"), Some(k));
        assert!(!again.is_registered("two"));
        std::fs::write(dir.join("keys.json"), "nonsense").unwrap();
        assert!(KeyStore::open(Some(&dir)).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
