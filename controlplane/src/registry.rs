//! The resource sets of every group and their revision history: every change is
//! persisted to the [`Store`] first, then published to the group's xDS streams.
//!
//! Every change (apply, delete, rollback, the resources file) is one read-modify-write:
//! read the group's latest revision, merge or remove, validate, and commit with the
//! store's compare-and-swap on that revision number; a lost race re-reads and merges
//! again, so concurrent changes all land and none overwrites another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::resources::{resource_type, ResourceError, ResourceSet};
use crate::store::{Changes, Draft, Store, StoreError, StoredRevision};

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
    /// `expect_revision` no longer holds: the group moved on; nothing was written.
    #[error("group {group:?} is at revision {current}, not the expected revision {expected}; nothing was written")]
    Conflict {
        group: String,
        expected: u64,
        current: u64,
    },
    /// Too many concurrent changes won the compare-and-swap first; nothing was written.
    #[error("group {group:?} changed under this change {attempts} times in a row; nothing was written, try again")]
    Contended { group: String, attempts: usize },
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
    /// Oldest first; numbers increase.
    revisions: Vec<StoredRevision>,
    current: watch::Sender<Arc<ResourceSet>>,
}

impl Group {
    fn head(&self) -> u64 {
        self.revisions.last().map_or(0, |r| r.number)
    }
}

/// How many times one change re-reads and re-merges after losing the compare-and-swap to
/// concurrent changes before it gives up (each loss means another change committed).
const MAX_ATTEMPTS: usize = 64;

/// Who asks for a change and what they expect, as the operator API passes it on.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The credential: a token's name, with the client certificate's subject under
    /// mutual TLS. Recorded in the revision.
    pub author: String,
    /// Optimistic concurrency: refuse the change unless the group is still at this
    /// revision (0: the group has none yet).
    pub expect_revision: Option<u64>,
}

/// Every group's resources and history.
pub struct Registry {
    store: Box<dyn Store>,
    /// Held only briefly and never across an `.await`: the store's compare-and-swap, not
    /// this lock, orders the changes.
    groups: Mutex<BTreeMap<String, Group>>,
    /// Told of every new head revision, to time how long the fleet takes to converge.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl Registry {
    /// Reports each group's new head revisions to `metrics` from now on.
    pub fn report_to(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Loads every stored revision; each group serves its latest.
    pub async fn open(store: Box<dyn Store>) -> Result<Self, RegistryError> {
        let registry = Self {
            groups: Mutex::new(BTreeMap::new()),
            store,
            metrics: std::sync::OnceLock::new(),
        };
        for revision in registry.store.load_all().await? {
            registry.record_stored(revision)?;
        }
        Ok(registry)
    }

    /// The group's resources, now and as they change.
    pub fn subscribe(&self, group: &str) -> watch::Receiver<Arc<ResourceSet>> {
        group_entry(&mut self.lock(), group).current.subscribe()
    }

    /// The group's current resources.
    pub fn current(&self, group: &str) -> Arc<ResourceSet> {
        group_entry(&mut self.lock(), group)
            .current
            .borrow()
            .clone()
    }

    /// Upserts `incoming` into the group, all or nothing.
    pub async fn apply(
        &self,
        group: &str,
        incoming: &ResourceSet,
        request: &Request,
    ) -> Result<Change, RegistryError> {
        self.change(group, "apply", request, |base| Ok(base.merged(incoming)?))
            .await
    }

    /// What `apply` would do, without doing it.
    pub fn validate(&self, group: &str, incoming: &ResourceSet) -> Result<Change, RegistryError> {
        let (revision, current) = self.head(group);
        let merged = current.merged(incoming)?;
        Ok(Change {
            revision,
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

    /// Makes `set` the group's whole resource set (the `--resources` file).
    pub async fn replace(
        &self,
        group: &str,
        set: ResourceSet,
        source: &str,
        request: &Request,
    ) -> Result<Change, RegistryError> {
        self.change(group, source, request, |_| Ok(set.clone()))
            .await
    }

    /// Removes one resource.
    pub async fn delete(
        &self,
        group: &str,
        type_url: &str,
        name: &str,
        request: &Request,
    ) -> Result<Change, RegistryError> {
        self.change(group, "delete", request, |base| {
            if !base
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
            Ok(base.without(type_url, name)?)
        })
        .await
    }

    /// Makes revision `number`'s resources current again, as a new revision.
    pub async fn rollback(
        &self,
        group: &str,
        number: u64,
        request: &Request,
    ) -> Result<Change, RegistryError> {
        let documents = self
            .lock()
            .get(group)
            .and_then(|g| g.revisions.iter().find(|r| r.number == number))
            .map(|r| r.documents.clone())
            .ok_or_else(|| RegistryError::UnknownRevision(number, group.to_string()))?;
        let set = ResourceSet::from_documents(documents)?;
        self.change(group, &format!("rollback to {number}"), request, |_| {
            Ok(set.clone())
        })
        .await
    }

    /// The group's revisions, oldest first.
    pub fn history(&self, group: &str) -> Vec<StoredRevision> {
        self.lock()
            .get(group)
            .map(|g| g.revisions.clone())
            .unwrap_or_default()
    }

    /// The group's latest revision number and resources.
    fn head(&self, group: &str) -> (u64, Arc<ResourceSet>) {
        let mut groups = self.lock();
        let entry = group_entry(&mut groups, group);
        let set = entry.current.borrow().clone();
        (entry.head(), set)
    }

    /// One atomic read-modify-write of a group: read its latest revision, `edit` it, and
    /// commit only if the group is still at that revision; on a conflict, catch up with
    /// what was committed meanwhile and edit again.
    async fn change(
        &self,
        group: &str,
        source: &str,
        request: &Request,
        edit: impl Fn(&ResourceSet) -> Result<ResourceSet, RegistryError>,
    ) -> Result<Change, RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut revision, mut base) = self.head(group);
            if let Some(expected) = request.expect_revision {
                if expected != revision {
                    // This view may lag the store (a commit not yet recorded here).
                    self.catch_up(group, revision).await?;
                    (revision, base) = self.head(group);
                    if expected != revision {
                        return Err(RegistryError::Conflict {
                            group: group.to_string(),
                            expected,
                            current: revision,
                        });
                    }
                }
            }
            let next = edit(&base)?;
            if next.same_as(&base) {
                return Ok(Change {
                    revision,
                    changed: false,
                });
            }
            let draft = Draft {
                group: group.to_string(),
                source: source.to_string(),
                author: request.author.clone(),
                changes: changes_between(&base, &next),
                documents: next.documents(),
            };
            match self.store.compare_and_append(revision, draft).await {
                Ok(stored) => {
                    let number = stored.number;
                    tracing::info!(group, revision = number, source, author = %request.author, "change recorded");
                    self.record(stored, Arc::new(next));
                    return Ok(Change {
                        revision: number,
                        changed: true,
                    });
                }
                Err(StoreError::Conflict { .. }) => self.catch_up(group, revision).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Contended {
            group: group.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Records the group's revisions committed after `after` that this view has not seen.
    async fn catch_up(&self, group: &str, after: u64) -> Result<(), RegistryError> {
        for revision in self.store.load_since(group, after).await? {
            self.record_stored(revision)?;
        }
        Ok(())
    }

    /// Records a revision read back from the store.
    fn record_stored(&self, mut revision: StoredRevision) -> Result<(), RegistryError> {
        let set = ResourceSet::from_documents(revision.documents.clone()).map_err(|error| {
            RegistryError::CorruptRevision {
                number: revision.number,
                error,
            }
        })?;
        if revision.changes.is_none() {
            // Written before changes were recorded: derive them from its predecessor.
            let previous = self
                .lock()
                .get(&revision.group)
                .and_then(|g| {
                    g.revisions
                        .iter()
                        .rev()
                        .find(|r| r.number < revision.number)
                })
                .map(|r| r.documents.clone());
            let previous = match previous {
                Some(documents) => ResourceSet::from_documents(documents).map_err(|error| {
                    RegistryError::CorruptRevision {
                        number: revision.number,
                        error,
                    }
                })?,
                None => ResourceSet::default(),
            };
            revision.changes = Some(changes_between(&previous, &set));
        }
        self.record(revision, Arc::new(set));
        Ok(())
    }

    /// Adds a committed revision to its group's history (once, in number order) and serves
    /// it if it is the newest. Commits may be recorded out of order; the newest wins.
    fn record(&self, revision: StoredRevision, set: Arc<ResourceSet>) {
        let mut groups = self.lock();
        let entry = group_entry(&mut groups, &revision.group);
        let position = entry
            .revisions
            .partition_point(|r| r.number < revision.number);
        if entry
            .revisions
            .get(position)
            .is_some_and(|r| r.number == revision.number)
        {
            return;
        }
        let newest = position == entry.revisions.len();
        if newest {
            // Before the streams see it: a push must find its change already recorded.
            if let Some(metrics) = self.metrics.get() {
                metrics.changed(&revision.group, revision.number, &revision.source);
            }
        }
        entry.revisions.insert(position, revision);
        if newest {
            entry.current.send_replace(set);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `next` adds, changes and removes against `base`, as `kind/name`.
fn changes_between(base: &ResourceSet, next: &ResourceSet) -> Changes {
    let mut changes = Changes::default();
    let label = |type_url: &str, name: &str| {
        let short = resource_type(type_url).map_or("resource", |t| t.short);
        format!("{short}/{name}")
    };
    for (type_url, entries) in &next.by_type {
        for (name, entry) in entries {
            match base.by_type.get(type_url).and_then(|m| m.get(name)) {
                None => changes.added.push(label(type_url, name)),
                Some(old) if old.version != entry.version => {
                    changes.changed.push(label(type_url, name))
                }
                Some(_) => {}
            }
        }
    }
    for (type_url, entries) in &base.by_type {
        for name in entries.keys() {
            if !next
                .by_type
                .get(type_url)
                .is_some_and(|m| m.contains_key(name))
            {
                changes.removed.push(label(type_url, name));
            }
        }
    }
    for list in [
        &mut changes.added,
        &mut changes.changed,
        &mut changes.removed,
    ] {
        list.sort();
    }
    changes
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

    fn cluster(name: &str) -> ResourceSet {
        ResourceSet::from_yaml(&format!(
            r#"{{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "{name}", "connect_timeout": "1s", "load_assignment": {{"cluster_name": "{name}", "endpoints": [{{"lb_endpoints": [{{"endpoint": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": 8080}}}}}}}}]}}]}}}}"#
        ))
        .unwrap()
    }

    async fn registry(dir: &std::path::Path) -> Arc<Registry> {
        let store = crate::store::FileStore::open(dir).unwrap();
        Arc::new(Registry::open(Box::new(store)).await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_applies_and_deletes_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).await;
        let anyone = Request::default();
        for i in 0..10 {
            let set = cluster(&format!("old-{i}"));
            registry.apply("g", &set, &anyone).await.unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..10 {
            let adder = registry.clone();
            tasks.push(tokio::spawn(async move {
                let request = Request::default();
                adder
                    .apply("g", &cluster(&format!("new-{i}")), &request)
                    .await
            }));
            let deleter = registry.clone();
            tasks.push(tokio::spawn(async move {
                let request = Request::default();
                let name = format!("old-{i}");
                deleter
                    .delete("g", xds_types::type_urls::CLUSTER, &name, &request)
                    .await
            }));
        }
        for task in tasks {
            assert!(task.await.unwrap().unwrap().changed);
        }
        let names: Vec<String> = registry
            .current("g")
            .of_type(xds_types::type_urls::CLUSTER)
            .map(|(n, _)| n.clone())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("new-{i}")).collect();
        assert_eq!(names, expected);
        let history = registry.history("g");
        assert_eq!(history.len(), 30);
        for revision in &history[10..] {
            let changes = revision.changes.as_ref().unwrap();
            assert_eq!(
                changes.added.len() + changes.removed.len(),
                1,
                "one resource per change: {changes:?}"
            );
            assert!(changes.changed.is_empty());
        }
        // The store holds the same history and serves the same set after a restart.
        let before = registry.current("g");
        drop(registry);
        let reopened = super::tests::registry(dir.path()).await;
        assert_eq!(reopened.history("g").len(), 30);
        assert!(reopened.current("g").same_as(&before));
    }

    #[tokio::test]
    async fn a_stale_expected_revision_is_a_conflict_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).await;
        let first = registry
            .apply("g", &cluster("a"), &Request::default())
            .await
            .unwrap();
        assert_eq!(first.revision, 1);
        let stale = Request {
            expect_revision: Some(0),
            ..Request::default()
        };
        let refused = registry
            .apply("g", &cluster("b"), &stale)
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "group \"g\" is at revision 1, not the expected revision 0; nothing was written"
        );
        assert_eq!(registry.history("g").len(), 1);
        let current = Request {
            expect_revision: Some(1),
            author: "ci".to_string(),
        };
        let applied = registry.apply("g", &cluster("b"), &current).await.unwrap();
        assert_eq!(applied.revision, 2);
        let history = registry.history("g");
        assert_eq!(history[1].author, "ci");
        assert_eq!(
            history[1].changes,
            Some(Changes {
                added: vec!["cluster/b".to_string()],
                ..Changes::default()
            })
        );
    }
}
