//! Where revisions live, behind one trait: an embedded file store by default (nothing to
//! install; revisions survive a restart), etcd in a later issue.
//!
//! The one write primitive is a compare-and-swap on a group's latest revision
//! ([`Store::compare_and_append`]): a change commits only if nothing else committed to its
//! group since the change read it. That is what keeps concurrent applies — in one process
//! or, later, across replicas sharing a store — from overwriting each other.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// One revision of one group: its whole resource set after a change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRevision {
    /// Global, increasing across groups; assigned by the store.
    pub number: u64,
    pub group: String,
    pub created_unix_ms: i64,
    /// What made it: "apply", "delete", "rollback to N", "resources file".
    pub source: String,
    /// Which credential made it: a token's name, a client certificate's subject, or
    /// "resources file". Empty in revisions written before authors were recorded.
    #[serde(default)]
    pub author: String,
    /// What it changed against the group's previous revision. `None` in revisions written
    /// before changes were recorded (the registry derives it when loading them).
    #[serde(default)]
    pub changes: Option<Changes>,
    /// Every resource of the group, as proto3-JSON with "@type".
    pub documents: Vec<serde_json::Value>,
}

/// The resources a revision added, changed and removed, each as `kind/name`
/// (`cluster/web`), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// A revision not yet committed: the store gives it its number and time.
#[derive(Debug, Clone)]
pub struct Draft {
    pub group: String,
    pub source: String,
    pub author: String,
    pub changes: Changes,
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
    #[error("{path}: the store is in use by another sluice-cp")]
    Locked { path: PathBuf },
    /// The compare-and-swap failed: another change committed to the group first.
    #[error("group {group:?} is at revision {current}, not {expected}")]
    Conflict {
        group: String,
        expected: u64,
        current: u64,
    },
}

/// A store operation in flight.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Durable, append-only revisions with a compare-and-swap per group.
pub trait Store: Send + Sync {
    /// Commits `draft` as its group's next revision if the group's latest revision is still
    /// `expected` (0: the group has none); otherwise [`StoreError::Conflict`] and nothing
    /// is written. Durable when it returns.
    fn compare_and_append(&self, expected: u64, draft: Draft) -> StoreFuture<'_, StoredRevision>;
    /// Every revision, oldest first.
    fn load_all(&self) -> StoreFuture<'_, Vec<StoredRevision>>;
    /// The group's revisions newer than `after`, oldest first: how a writer that lost a
    /// compare-and-swap catches up before it merges again.
    fn load_since<'a>(&'a self, group: &'a str, after: u64)
        -> StoreFuture<'a, Vec<StoredRevision>>;
}

/// One JSON file per revision under `DIR/revisions/`, written atomically (temp file, fsync,
/// rename, fsync of the directory). One process owns a directory at a time (`DIR/lock`).
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// Held for the store's lifetime: the advisory lock that keeps a second `sluice-cp`
    /// off this directory (the compare-and-swap below is only atomic within one process).
    _lock: File,
    /// The next revision number and every group's latest one. An async mutex, held across
    /// the file write, so compare and append are one step.
    index: tokio::sync::Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    next: u64,
    heads: HashMap<String, u64>,
}

impl FileStore {
    /// Opens (creating if missing) the store in `dir`; fails if another process has it
    /// open. Blocking: call it before serving.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root: PathBuf = dir.into();
        let dir = root.join("revisions");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: root });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        remove_partial_writes(&dir)?;
        let mut index = Index {
            next: 1,
            heads: HashMap::new(),
        };
        for revision in read_revisions(&dir, |_| true)? {
            index.next = index.next.max(revision.number + 1);
            let head = index.heads.entry(revision.group).or_default();
            *head = (*head).max(revision.number);
        }
        Ok(Self {
            dir,
            _lock: lock,
            index: tokio::sync::Mutex::new(index),
        })
    }
}

impl Store for FileStore {
    fn compare_and_append(&self, expected: u64, draft: Draft) -> StoreFuture<'_, StoredRevision> {
        Box::pin(async move {
            let mut index = self.index.lock().await;
            let current = index.heads.get(&draft.group).copied().unwrap_or(0);
            if current != expected {
                return Err(StoreError::Conflict {
                    group: draft.group,
                    expected,
                    current,
                });
            }
            let revision = StoredRevision {
                number: index.next,
                group: draft.group,
                created_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                source: draft.source,
                author: draft.author,
                changes: Some(draft.changes),
                documents: draft.documents,
            };
            let bytes = serde_json::to_vec_pretty(&revision).map_err(|e| StoreError::Corrupt {
                path: self.dir.clone(),
                message: e.to_string(),
            })?;
            let path = self.dir.join(format!("{:020}.json", revision.number));
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || write_durably(&dir, &path, &bytes))
                .await
                .map_err(|e| StoreError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other(e),
                })??;
            index.next += 1;
            index.heads.insert(revision.group.clone(), revision.number);
            Ok(revision)
        })
    }

    fn load_all(&self) -> StoreFuture<'_, Vec<StoredRevision>> {
        self.read(Arc::new(|_| true))
    }

    fn load_since<'a>(
        &'a self,
        group: &'a str,
        after: u64,
    ) -> StoreFuture<'a, Vec<StoredRevision>> {
        let group = group.to_string();
        Box::pin(async move {
            let revisions = self.read(Arc::new(move |number| number > after)).await?;
            Ok(revisions.into_iter().filter(|r| r.group == group).collect())
        })
    }
}

impl FileStore {
    /// Reads the revisions whose number `wanted` selects, off the async runtime.
    fn read(
        &self,
        wanted: Arc<dyn Fn(u64) -> bool + Send + Sync>,
    ) -> StoreFuture<'_, Vec<StoredRevision>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_revisions(&dir, |n| wanted(n)))
                .await
                .map_err(|e| StoreError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other(e),
                })?
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` so that a crash at any point leaves either no file or the
/// whole file, and a returned call survives a power loss.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    // Owner-only: a revision may hold private keys (secrets).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(&temp))?;
    file.write_all(bytes).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Removes the temp files of writes a crash interrupted (never renamed, so never
/// committed).
fn remove_partial_writes(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// The revisions in `dir` whose number `wanted` selects, oldest first.
fn read_revisions(
    dir: &Path,
    wanted: impl Fn(u64) -> bool,
) -> Result<Vec<StoredRevision>, StoreError> {
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| {
            let number = p.file_stem()?.to_str()?.parse::<u64>().ok()?;
            Some((number, p))
        })
        .filter(|(number, _)| wanted(*number))
        .collect();
    numbered.sort();
    numbered
        .into_iter()
        .map(|(_, path)| {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(group: &str) -> Draft {
        Draft {
            group: group.to_string(),
            source: "apply".to_string(),
            author: "test".to_string(),
            changes: Changes::default(),
            documents: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_stale_expected_revision_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let first = store.compare_and_append(0, draft("a")).await.unwrap();
        assert_eq!(first.number, 1);
        // Another group's head is its own; numbers are global.
        assert_eq!(
            store
                .compare_and_append(0, draft("b"))
                .await
                .unwrap()
                .number,
            2
        );
        let refused = store.compare_and_append(0, draft("a")).await.unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Conflict {
                    expected: 0,
                    current: 1,
                    ..
                }
            ),
            "{refused}"
        );
        assert_eq!(store.load_all().await.unwrap().len(), 2);
        assert_eq!(
            store
                .compare_and_append(1, draft("a"))
                .await
                .unwrap()
                .number,
            3
        );
        let since: Vec<u64> = store
            .load_since("a", 1)
            .await
            .unwrap()
            .iter()
            .map(|r| r.number)
            .collect();
        assert_eq!(since, vec![3]);
    }

    #[tokio::test]
    async fn one_process_owns_a_store_and_a_reopen_continues_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.compare_and_append(0, draft("a")).await.unwrap();
        assert!(matches!(
            FileStore::open(dir.path()).unwrap_err(),
            StoreError::Locked { .. }
        ));
        drop(store);
        // A write a crash interrupted is never renamed, so it is not a revision.
        std::fs::write(dir.path().join("revisions/00000000000000000002.tmp"), "{").unwrap();
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(reopened.load_all().await.unwrap().len(), 1);
        assert!(!dir
            .path()
            .join("revisions/00000000000000000002.tmp")
            .exists());
        let next = reopened.compare_and_append(1, draft("a")).await.unwrap();
        assert_eq!(next.number, 2);
    }
}
