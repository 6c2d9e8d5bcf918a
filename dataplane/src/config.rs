//! The config snapshot: everything a request needs, immutable, published with one
//! `ArcSwap::store`. A request calls [`SnapshotStore::load`] once and makes every
//! decision (listener settings, route, cluster) from that one view.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use xds_types::{Bootstrap, Cluster, Listener};

use crate::cluster::ClusterState;
use crate::router::CompiledRoutes;
use crate::stats::{HttpStats, Stats};

/// One immutable view of the whole configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with every publish; shown by `/config_dump`.
    pub version: u64,
    pub bootstrap: Arc<Bootstrap>,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    pub clusters: HashMap<String, Arc<ClusterState>>,
}

/// A listener's config with its compiled route table and its counters.
pub struct ListenerRuntime {
    pub config: Listener,
    pub routes: CompiledRoutes,
    pub stats: HttpStats,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Listeners and clusters received over xDS, by name.
#[derive(Debug, Clone, Default)]
pub struct DynamicResources {
    pub listeners: BTreeMap<String, Listener>,
    pub clusters: BTreeMap<String, Cluster>,
}

/// What snapshots are built from: the bootstrap (static) and xDS (dynamic).
struct Sources {
    bootstrap: Arc<Bootstrap>,
    dynamic: DynamicResources,
}

/// Where the current snapshot lives; cheap to clone.
#[derive(Clone)]
pub struct SnapshotStore {
    current: Arc<ArcSwap<Snapshot>>,
    versions: Arc<AtomicU64>,
    stats: Arc<Stats>,
    /// Serialises publishers (SIGHUP and xDS); never touched by requests.
    sources: Arc<Mutex<Sources>>,
}

impl SnapshotStore {
    /// A store holding the snapshot built from `bootstrap`.
    pub fn new(bootstrap: Bootstrap, stats: Arc<Stats>) -> Self {
        let sources = Sources {
            bootstrap: Arc::new(bootstrap),
            dynamic: DynamicResources::default(),
        };
        let snapshot = build(&sources, None, &stats, 1);
        Self {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            versions: Arc::new(AtomicU64::new(1)),
            stats,
            sources: Arc::new(Mutex::new(sources)),
        }
    }

    /// The current snapshot; hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot from a new bootstrap, reusing unchanged clusters, and publishes
    /// it atomically. Returns the new snapshot.
    pub fn publish(&self, bootstrap: Bootstrap) -> Arc<Snapshot> {
        let mut sources = self.sources.lock().expect("sources lock");
        sources.bootstrap = Arc::new(bootstrap);
        self.rebuild(&sources)
    }

    /// Replaces the resources received over xDS and publishes the merged snapshot.
    pub fn publish_dynamic(&self, dynamic: DynamicResources) -> Arc<Snapshot> {
        let mut sources = self.sources.lock().expect("sources lock");
        sources.dynamic = dynamic;
        self.rebuild(&sources)
    }

    /// The resources last received over xDS.
    pub fn dynamic(&self) -> DynamicResources {
        self.sources.lock().expect("sources lock").dynamic.clone()
    }

    fn rebuild(&self, sources: &Sources) -> Arc<Snapshot> {
        let previous = self.current.load_full();
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let next = Arc::new(build(sources, Some(&previous), &self.stats, version));
        self.current.store(next.clone());
        next
    }

    /// The process-wide metrics.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// Static resources win over dynamic ones of the same name, as in Envoy.
fn build(sources: &Sources, previous: Option<&Snapshot>, stats: &Stats, version: u64) -> Snapshot {
    let bootstrap = &sources.bootstrap;
    let static_clusters: HashSet<&str> =
        bootstrap.clusters.iter().map(|c| c.name.as_str()).collect();
    let static_listeners: HashSet<&str> = bootstrap
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    let cluster_configs = bootstrap.clusters.iter().chain(
        sources
            .dynamic
            .clusters
            .values()
            .filter(|c| !static_clusters.contains(c.name.as_str())),
    );
    let listener_configs = bootstrap.listeners.iter().chain(
        sources
            .dynamic
            .listeners
            .values()
            .filter(|l| !static_listeners.contains(l.name.as_str())),
    );
    let clusters = cluster_configs
        .map(|config| {
            let reused = previous
                .and_then(|p| p.clusters.get(&config.name))
                .filter(|existing| existing.config == *config)
                .cloned();
            let state = reused.unwrap_or_else(|| ClusterState::new(config.clone(), stats));
            (config.name.clone(), state)
        })
        .collect();
    let listeners = listener_configs
        .map(|l| {
            let runtime = ListenerRuntime {
                config: l.clone(),
                routes: CompiledRoutes::new(l.http.route_table.clone()),
                stats: stats.http(&l.http.stat_prefix),
            };
            (l.name.clone(), Arc::new(runtime))
        })
        .collect();
    Snapshot {
        version,
        bootstrap: bootstrap.clone(),
        listeners,
        clusters,
    }
}
