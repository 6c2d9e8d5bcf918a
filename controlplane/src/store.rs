//! Where revisions live, behind one trait: an embedded file store by default (nothing to
//! install; revisions survive a restart), etcd in a later issue.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One revision of one group: its whole resource set after a change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRevision {
    /// Global, increasing across groups.
    pub number: u64,
    pub group: String,
    pub created_unix_ms: i64,
    /// What made it: "apply", "delete", "rollback to N", "resources file".
    pub source: String,
    /// Every resource of the group, as proto3-JSON with "@type".
    pub documents: Vec<serde_json::Value>,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt revision: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// Durable, append-only revisions.
pub trait Store: Send + Sync {
    /// Persists a revision before it is served.
    fn append(&self, revision: &StoredRevision) -> Result<(), StoreError>;
    /// Every revision, oldest first.
    fn load_all(&self) -> Result<Vec<StoredRevision>, StoreError>;
}

/// One JSON file per revision under `DIR/revisions/`, written atomically (temp + rename).
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into().join("revisions");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }
}

impl Store for FileStore {
    fn append(&self, revision: &StoredRevision) -> Result<(), StoreError> {
        let path = self.dir.join(format!("{:020}.json", revision.number));
        let temp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(revision).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // Owner-only: a revision may hold private keys (secrets).
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?
                .write_all(&bytes)
        };
        write().map_err(|source| StoreError::Io {
            path: temp.clone(),
            source,
        })?;
        std::fs::rename(&temp, &path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })
    }

    fn load_all(&self) -> Result<Vec<StoredRevision>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path,
                    message: e.to_string(),
                })
            })
            .collect()
    }
}
