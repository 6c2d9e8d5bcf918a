//! The resource sets of every group and their revision history: every change is
//! persisted to the [`Store`] first, then published to the group's xDS streams.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::resources::{ResourceError, ResourceSet};
use crate::store::{Store, StoreError, StoredRevision};

/// The group a node without `node.cluster` belongs to.
pub const DEFAULT_GROUP: &str = "default";

/// The group a name selects: itself, or [`DEFAULT_GROUP`] when empty (a node's empty
/// `node.cluster`, an API request naming no group).
pub fn group_name(name: &str) -> &str {
    if name.is_empty() {
        DEFAULT_GROUP
    } else {
        name
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] ResourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("revision {0} is not a revision of group {1:?}")]
    UnknownRevision(u64, String),
    #[error("{0} {1:?} does not exist in group {2:?}")]
    NotFound(String, String, String),
    #[error("stored revision {number} is invalid: {error}")]
    CorruptRevision { number: u64, error: ResourceError },
}

/// The outcome of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The group's current revision (0 when it has none).
    pub revision: u64,
    pub changed: bool,
}

/// One resource `apply` would add or change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDiff {
    pub type_url: String,
    pub name: String,
    pub added: bool,
    /// `(path, live JSON, proposed JSON)`; empty JSON means absent.
    pub fields: Vec<(String, String, String)>,
}

/// Collects the paths where two proto3-JSON values differ.
fn json_diff(
    path: &str,
    live: &serde_json::Value,
    proposed: &serde_json::Value,
    out: &mut Vec<(String, String, String)>,
) {
    use serde_json::Value;
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (live, proposed) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                json_diff(&child(key), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let (x, y) = (
                    a.get(i).unwrap_or(&Value::Null),
                    b.get(i).unwrap_or(&Value::Null),
                );
                json_diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => {
            let private = path.split(['.', '[']).any(crate::resources::is_private);
            let show = |v: &Value| {
                if v.is_null() {
                    String::new()
                } else if private {
                    "\"[redacted]\"".to_string()
                } else {
                    v.to_string()
                }
            };
            out.push((path.to_string(), show(a), show(b)));
        }
        _ => {}
    }
}

struct Group {
    revisions: Vec<StoredRevision>,
    current: watch::Sender<Arc<ResourceSet>>,
}

struct Inner {
    next: u64,
    groups: BTreeMap<String, Group>,
}

/// Every group's resources and history.
pub struct Registry {
    store: Box<dyn Store>,
    inner: Mutex<Inner>,
}

impl Registry {
    /// Loads every stored revision; each group serves its latest.
    pub fn open(store: Box<dyn Store>) -> Result<Self, RegistryError> {
        let mut inner = Inner {
            next: 1,
            groups: BTreeMap::new(),
        };
        for revision in store.load_all()? {
            let set = ResourceSet::from_documents(revision.documents.clone()).map_err(|error| {
                RegistryError::CorruptRevision {
                    number: revision.number,
                    error,
                }
            })?;
            inner.next = inner.next.max(revision.number + 1);
            let group = group_entry(&mut inner.groups, &revision.group);
            group.current.send_replace(Arc::new(set));
            group.revisions.push(revision);
        }
        Ok(Self {
            store,
            inner: Mutex::new(inner),
        })
    }

    /// The group's resources, now and as they change.
    pub fn subscribe(&self, group: &str) -> watch::Receiver<Arc<ResourceSet>> {
        group_entry(&mut self.lock().groups, group)
            .current
            .subscribe()
    }

    /// The group's current resources.
    pub fn current(&self, group: &str) -> Arc<ResourceSet> {
        group_entry(&mut self.lock().groups, group)
            .current
            .borrow()
            .clone()
    }

    /// Upserts `incoming` into the group, all or nothing.
    pub fn apply(&self, group: &str, incoming: &ResourceSet) -> Result<Change, RegistryError> {
        let merged = self.current(group).merged(incoming)?;
        self.commit(group, merged, "apply".to_string())
    }

    /// What `apply` would do, without doing it.
    pub fn validate(&self, group: &str, incoming: &ResourceSet) -> Result<Change, RegistryError> {
        let current = self.current(group);
        let merged = current.merged(incoming)?;
        Ok(Change {
            revision: self.revision(group),
            changed: !merged.same_as(&current),
        })
    }

    /// What `apply` would change: per resource of `incoming` that differs from the live
    /// one, `(type URL, name, added?, [(path, live, proposed)])`.
    pub fn diff(
        &self,
        group: &str,
        incoming: &ResourceSet,
    ) -> Result<Vec<ResourceDiff>, RegistryError> {
        let current = self.current(group);
        let merged = current.merged(incoming)?;
        let mut out = Vec::new();
        for (type_url, entries) in &incoming.by_type {
            for name in entries.keys() {
                let proposed = &merged.by_type[type_url][name];
                match current.by_type.get(type_url).and_then(|m| m.get(name)) {
                    None => out.push(ResourceDiff {
                        type_url: type_url.to_string(),
                        name: name.clone(),
                        added: true,
                        fields: Vec::new(),
                    }),
                    Some(live) if live.version != proposed.version => {
                        let mut fields = Vec::new();
                        json_diff("", &live.document, &proposed.document, &mut fields);
                        out.push(ResourceDiff {
                            type_url: type_url.to_string(),
                            name: name.clone(),
                            added: false,
                            fields,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(out)
    }

    /// Makes `set` the group's whole resource set.
    pub fn replace(
        &self,
        group: &str,
        set: ResourceSet,
        source: &str,
    ) -> Result<Change, RegistryError> {
        self.commit(group, set, source.to_string())
    }

    /// Removes one resource.
    pub fn delete(&self, group: &str, type_url: &str, name: &str) -> Result<Change, RegistryError> {
        let current = self.current(group);
        if !current
            .by_type
            .get(type_url)
            .is_some_and(|m| m.contains_key(name))
        {
            return Err(RegistryError::NotFound(
                type_url.to_string(),
                name.to_string(),
                group.to_string(),
            ));
        }
        let next = current.without(type_url, name)?;
        self.commit(group, next, "delete".to_string())
    }

    /// Makes revision `number`'s resources current again, as a new revision.
    pub fn rollback(&self, group: &str, number: u64) -> Result<Change, RegistryError> {
        let documents = self
            .lock()
            .groups
            .get(group)
            .and_then(|g| g.revisions.iter().find(|r| r.number == number))
            .map(|r| r.documents.clone())
            .ok_or_else(|| RegistryError::UnknownRevision(number, group.to_string()))?;
        let set = ResourceSet::from_documents(documents)?;
        self.commit(group, set, format!("rollback to {number}"))
    }

    /// The group's revisions, oldest first.
    pub fn history(&self, group: &str) -> Vec<StoredRevision> {
        self.lock()
            .groups
            .get(group)
            .map(|g| g.revisions.clone())
            .unwrap_or_default()
    }

    fn revision(&self, group: &str) -> u64 {
        self.lock()
            .groups
            .get(group)
            .and_then(|g| g.revisions.last())
            .map_or(0, |r| r.number)
    }

    fn commit(
        &self,
        group: &str,
        set: ResourceSet,
        source: String,
    ) -> Result<Change, RegistryError> {
        let mut inner = self.lock();
        let number = inner.next;
        let entry = group_entry(&mut inner.groups, group);
        if set.same_as(&entry.current.borrow()) {
            let revision = entry.revisions.last().map_or(0, |r| r.number);
            return Ok(Change {
                revision,
                changed: false,
            });
        }
        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let revision = StoredRevision {
            number,
            group: group.to_string(),
            created_unix_ms,
            source,
            documents: set.documents(),
        };
        self.store.append(&revision)?;
        entry.revisions.push(revision);
        entry.current.send_replace(Arc::new(set));
        inner.next += 1;
        Ok(Change {
            revision: number,
            changed: true,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn group_entry<'a>(groups: &'a mut BTreeMap<String, Group>, name: &str) -> &'a mut Group {
    groups.entry(name.to_string()).or_insert_with(|| Group {
        revisions: Vec::new(),
        current: watch::channel(Arc::new(ResourceSet::default())).0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_never_shows_key_material() {
        let live = serde_json::json!({ "name": "edge", "tls_certificate": {
            "certificate_chain": { "inline_string": "CERT-1" },
            "private_key": { "inline_string": "KEY-1" } } });
        let proposed = serde_json::json!({ "name": "edge", "tls_certificate": {
            "certificate_chain": { "inline_string": "CERT-2" },
            "private_key": { "inline_string": "KEY-2" } } });
        let mut fields = Vec::new();
        json_diff("", &live, &proposed, &mut fields);
        let shown = format!("{fields:?}");
        assert!(shown.contains("CERT-2"), "{shown}");
        assert!(
            !shown.contains("KEY-1") && !shown.contains("KEY-2"),
            "{shown}"
        );
        assert!(fields
            .iter()
            .any(|(path, _, _)| path == "tls_certificate.private_key.inline_string"));
    }
}
