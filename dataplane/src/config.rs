//! The config snapshot: everything a request needs, immutable, published with one
//! `ArcSwap::store`. A request calls [`SnapshotStore::load`] once and makes every
//! decision (listener settings, route, cluster) from that one view.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use xds_types::cluster::LbEndpoint;
use xds_types::hcm::RouteSource;
use xds_types::{type_urls, Bootstrap, Cluster, Listener, RouteTable};

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

/// Resources received over xDS, by name.
#[derive(Debug, Clone, Default)]
pub struct DynamicResources {
    pub listeners: BTreeMap<String, Listener>,
    pub clusters: BTreeMap<String, Cluster>,
    /// RDS route configurations.
    pub routes: BTreeMap<String, RouteTable>,
    /// EDS endpoints, by EDS name.
    pub assignments: BTreeMap<String, Vec<LbEndpoint>>,
    /// Every accepted resource as received, by type URL and name, for `/config_dump`.
    pub received: BTreeMap<(String, String), Received>,
}

/// One accepted xDS resource as the control plane sent it.
#[derive(Debug, Clone)]
pub struct Received {
    pub version: String,
    pub resource: Arc<xds_types::pb::google::protobuf::Any>,
}

/// An EDS or RDS resource a cluster or listener needs before it can go live (warming).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependency {
    /// `CLUSTER_LOAD_ASSIGNMENT` or `ROUTE_CONFIGURATION`.
    pub type_url: &'static str,
    pub name: String,
    /// Envoy's `initial_fetch_timeout` of the config source; `None` waits forever.
    pub initial_fetch_timeout: Option<Duration>,
}

impl Sources {
    /// Every EDS and RDS resource the current clusters and listeners use, static and
    /// dynamic, and whether it has arrived.
    fn dependencies(&self) -> Vec<(Dependency, bool)> {
        let clusters = self
            .bootstrap
            .clusters
            .iter()
            .chain(self.dynamic.clusters.values());
        let listeners = self
            .bootstrap
            .listeners
            .iter()
            .chain(self.dynamic.listeners.values());
        let endpoints = clusters.filter_map(|c| c.eds.as_ref()).map(|eds| {
            let dependency = Dependency {
                type_url: type_urls::CLUSTER_LOAD_ASSIGNMENT,
                name: eds.service_name.clone(),
                initial_fetch_timeout: eds.initial_fetch_timeout,
            };
            let arrived = self.dynamic.assignments.contains_key(&eds.service_name);
            (dependency, arrived)
        });
        let routes = listeners.filter_map(|l| match &l.http.routes {
            RouteSource::Inline(_) => None,
            RouteSource::Rds {
                name,
                initial_fetch_timeout,
            } => Some((
                Dependency {
                    type_url: type_urls::ROUTE_CONFIGURATION,
                    name: name.clone(),
                    initial_fetch_timeout: *initial_fetch_timeout,
                },
                self.dynamic.routes.contains_key(name),
            )),
        });
        let mut all: Vec<_> = endpoints.chain(routes).collect();
        all.sort();
        all.dedup();
        all
    }
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

    /// The EDS and RDS resources the configured clusters and listeners use, each with
    /// whether it has arrived (a cluster or listener waiting for one is warming).
    pub fn dependencies(&self) -> Vec<(Dependency, bool)> {
        self.sources.lock().expect("sources lock").dependencies()
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
    let dynamic = &sources.dynamic;
    // A cluster or listener still waiting for its EDS or RDS resource (warming) is not
    // live: the version it replaces, if any, keeps serving until it is ready.
    let clusters = cluster_configs
        .filter_map(|config| {
            let assignment = match config.eds_name() {
                None => None,
                Some(eds_name) => match dynamic.assignments.get(eds_name) {
                    Some(endpoints) => Some(endpoints),
                    None => {
                        let live = previous.and_then(|p| p.clusters.get(&config.name))?;
                        return Some((config.name.clone(), live.clone()));
                    }
                },
            };
            let reused = previous
                .and_then(|p| p.clusters.get(&config.name))
                .filter(|existing| existing.config == *config)
                .cloned();
            let state = reused.unwrap_or_else(|| ClusterState::new(config.clone(), stats));
            if let Some(endpoints) = assignment {
                state.assign(endpoints);
            }
            Some((config.name.clone(), state))
        })
        .collect();
    let listeners = listener_configs
        .filter_map(|l| {
            let table = match &l.http.routes {
                RouteSource::Inline(table) => table,
                RouteSource::Rds { name, .. } => match dynamic.routes.get(name) {
                    Some(table) => table,
                    None => {
                        let live = previous.and_then(|p| p.listeners.get(&l.name))?;
                        return Some((l.name.clone(), live.clone()));
                    }
                },
            };
            let runtime = ListenerRuntime {
                config: l.clone(),
                routes: CompiledRoutes::new(table.clone()),
                stats: stats.http(&l.http.stat_prefix),
            };
            Some((l.name.clone(), Arc::new(runtime)))
        })
        .collect();
    Snapshot {
        version,
        bootstrap: bootstrap.clone(),
        listeners,
        clusters,
    }
}
