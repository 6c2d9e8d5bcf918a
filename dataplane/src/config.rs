//! The config snapshot: everything a connection and a request need, immutable, published
//! with one `ArcSwap::store`. A request calls [`SnapshotStore::load`] once and makes every
//! decision (chain settings, route, cluster) from that one view.
//!
//! Building a snapshot reuses what did not change: a cluster whose config and secrets are
//! the same keeps its `ClusterState` (pools, counters); a filter chain keeps its compiled
//! TLS context and its connection-limit counter. A cluster or listener still waiting for an
//! EDS, RDS or SDS resource (warming) is not live; the version it replaces keeps serving.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tracing::warn;
use xds_types::cluster::Assignment;
use xds_types::config_source::Origin;
use xds_types::hcm::RouteSource;
use xds_types::listener::{FilterChain, NetworkFilter};
use xds_types::secret::{Secret, SecretValue};
use xds_types::tcp_proxy::TcpProxy;
use xds_types::tls::{CertificateSource, DataSource, SdsRef, SecretSource};
use xds_types::{type_urls, Bootstrap, Cluster, HttpConnectionManager, Listener, RouteTable};

use crate::access_log::AccessLogs;
use crate::http::filter::HttpFilterChain;
use crate::listener::tls::ServerTls;
use crate::router::CompiledRoutes;
use crate::stats::{HttpStats, ListenerStats, Stats, TcpStats};
use crate::tls::{file_stamps, Secrets, TlsError};
use crate::upstream::tls::{ClientTls, Transport};
use crate::upstream::ClusterState;

/// One immutable view of the whole configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with every publish; shown by `/config_dump`.
    pub version: u64,
    pub bootstrap: Arc<Bootstrap>,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    pub clusters: HashMap<String, Arc<ClusterState>>,
}

/// A listener ready to accept: its config and its compiled filter chains.
pub struct ListenerRuntime {
    pub config: Listener,
    /// In the order of `config.filter_chains`.
    pub chains: Vec<Arc<ChainRuntime>>,
    pub default_chain: Option<Arc<ChainRuntime>>,
    pub stats: ListenerStats,
    /// The listener's own access logs: one line per connection.
    pub access_logs: Option<Arc<AccessLogs>>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl ListenerRuntime {
    /// The chain with this identity, current or default.
    pub fn chain(&self, identity: u64) -> Option<&Arc<ChainRuntime>> {
        self.chains
            .iter()
            .chain(self.default_chain.as_ref())
            .find(|c| c.identity == identity)
    }

    /// Every chain identity, for draining the chains an update removed.
    pub fn identities(&self) -> HashSet<u64> {
        self.chains
            .iter()
            .chain(self.default_chain.as_ref())
            .map(|c| c.identity)
            .collect()
    }
}

/// A filter chain ready to take connections.
pub struct ChainRuntime {
    pub name: String,
    /// Unchanged by route-only updates (see [`xds_types::listener::FilterChain::identity`]).
    pub identity: u64,
    pub tls: ChainTls,
    pub handshake_timeout: Option<Duration>,
    /// Permits for `connection_limit`, shared by every version of the chain.
    pub connection_limit: Option<(Arc<Semaphore>, Option<Duration>)>,
    pub network: Network,
}

impl std::fmt::Debug for ChainRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainRuntime")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A chain's TLS termination.
#[derive(Debug, Clone)]
pub enum ChainTls {
    Plaintext,
    Terminate {
        server: Arc<ServerTls>,
        /// What it was compiled from (secret contents, file stamps).
        key: u64,
    },
    /// A secret it names did not arrive within its `initial_fetch_timeout`: handshakes are
    /// refused (never served in plaintext).
    Unavailable(String),
}

/// A chain's terminal network filter, compiled.
pub enum Network {
    Http(Box<HttpRuntime>),
    Tcp(TcpRuntime),
}

/// An HTTP connection manager with its compiled route table and counters.
pub struct HttpRuntime {
    pub config: HttpConnectionManager,
    /// Carried over from the previous snapshot while the table is unchanged (with the
    /// per-route filter state it holds).
    pub routes: Arc<CompiledRoutes>,
    /// The HTTP filters in front of the router; carried over while the chain is unchanged.
    pub filters: Arc<HttpFilterChain>,
    pub stats: HttpStats,
    pub access_logs: Option<Arc<AccessLogs>>,
    /// Spans for the streams, when the connection manager traces.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
}

/// A TCP proxy with its counters.
pub struct TcpRuntime {
    pub config: TcpProxy,
    pub stats: TcpStats,
    pub access_logs: Option<Arc<AccessLogs>>,
}

/// Resources received over xDS, by name.
#[derive(Debug, Clone, Default)]
pub struct DynamicResources {
    pub listeners: BTreeMap<String, Listener>,
    pub clusters: BTreeMap<String, Cluster>,
    /// RDS route configurations.
    pub routes: BTreeMap<String, RouteTable>,
    /// EDS endpoints, by EDS name.
    pub assignments: BTreeMap<String, Assignment>,
    /// SDS secrets.
    pub secrets: BTreeMap<String, Secret>,
    /// SDS secrets that did not arrive within their `initial_fetch_timeout`.
    pub expired_secrets: BTreeSet<String>,
    /// Every accepted resource as received, by type URL and name, for `/config_dump`.
    pub received: BTreeMap<(String, String), Received>,
}

/// RDS and EDS resources read from files (`path_config_source`), by file and name. They
/// are kept apart from what ADS delivers (which publishes its whole set of resources at
/// each update), and a file's resource serves only the listeners and clusters that name
/// that file, as an Envoy subscription is per config source.
#[derive(Debug, Clone, Default)]
pub struct FileResources {
    pub routes: BTreeMap<(PathBuf, String), RouteTable>,
    pub assignments: BTreeMap<(PathBuf, String), Assignment>,
}

/// One accepted xDS resource as the control plane sent it.
#[derive(Debug, Clone)]
pub struct Received {
    pub version: String,
    pub resource: Arc<xds_types::pb::google::protobuf::Any>,
}

/// An EDS, RDS or SDS resource a cluster or listener needs before it can go live.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependency {
    /// `CLUSTER_LOAD_ASSIGNMENT`, `ROUTE_CONFIGURATION` or `SECRET`.
    pub type_url: &'static str,
    pub name: String,
    /// Envoy's `initial_fetch_timeout` of the config source; `None` waits forever.
    pub initial_fetch_timeout: Option<Duration>,
    /// Where it arrives from: ADS, a stream of its type's own service, or a file.
    pub origin: Origin,
}

impl Sources {
    /// The route table `name`, from xDS or from the file `origin` names.
    fn routes(&self, name: &str, origin: &Origin) -> Option<&RouteTable> {
        match origin.file() {
            None => self.dynamic.routes.get(name),
            Some(f) => self.files.routes.get(&(f.to_path_buf(), name.to_string())),
        }
    }

    /// The endpoints `name`, from xDS or from the file `origin` names.
    fn assignment(&self, name: &str, origin: &Origin) -> Option<&Assignment> {
        match origin.file() {
            None => self.dynamic.assignments.get(name),
            Some(f) => self
                .files
                .assignments
                .get(&(f.to_path_buf(), name.to_string())),
        }
    }

    fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.bootstrap
            .clusters
            .iter()
            .chain(self.dynamic.clusters.values())
    }

    fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.bootstrap
            .listeners
            .iter()
            .chain(self.dynamic.listeners.values())
    }

    /// Every EDS, RDS and SDS resource the current clusters and listeners use, static and
    /// dynamic, and whether it has arrived.
    fn dependencies(&self) -> Vec<(Dependency, bool)> {
        let endpoints = self.clusters().filter_map(|c| c.eds.as_ref()).map(|eds| {
            let dependency = Dependency {
                type_url: type_urls::CLUSTER_LOAD_ASSIGNMENT,
                name: eds.service_name.clone(),
                initial_fetch_timeout: eds.initial_fetch_timeout,
                origin: eds.origin.clone(),
            };
            let arrived = self.assignment(&eds.service_name, &eds.origin).is_some();
            (dependency, arrived)
        });
        let routes = self
            .listeners()
            .flat_map(|l| l.http_managers())
            .filter_map(|h| match &h.routes {
                RouteSource::Inline(_) => None,
                RouteSource::Rds {
                    name,
                    initial_fetch_timeout,
                    origin,
                } => Some((
                    Dependency {
                        type_url: type_urls::ROUTE_CONFIGURATION,
                        name: name.clone(),
                        initial_fetch_timeout: *initial_fetch_timeout,
                        origin: origin.clone(),
                    },
                    self.routes(name, origin).is_some(),
                )),
            });
        let secret_refs = self.listeners().flat_map(|l| l.sds_refs()).chain(
            self.clusters()
                .filter_map(|c| c.tls.as_ref())
                .flat_map(|t| t.sds_names()),
        );
        let secrets = secret_refs.filter_map(|r| match &r.source {
            SecretSource::Static => None,
            SecretSource::Xds {
                origin,
                initial_fetch_timeout,
            } => Some((
                Dependency {
                    type_url: type_urls::SECRET,
                    name: r.name.clone(),
                    initial_fetch_timeout: *initial_fetch_timeout,
                    origin: origin.clone(),
                },
                self.dynamic.secrets.contains_key(&r.name)
                    || self.dynamic.expired_secrets.contains(&r.name),
            )),
        });
        let mut all: Vec<_> = endpoints.chain(routes).chain(secrets).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// What snapshots are built from: the bootstrap (static) and xDS (dynamic).
struct Sources {
    bootstrap: Arc<Bootstrap>,
    dynamic: DynamicResources,
    files: FileResources,
}

/// Where the current snapshot lives; cheap to clone.
#[derive(Clone)]
pub struct SnapshotStore {
    current: Arc<ArcSwap<Snapshot>>,
    versions: Arc<AtomicU64>,
    stats: Arc<Stats>,
    /// Serialises publishers (SIGHUP, xDS streams, files); never touched by requests.
    sources: Arc<Mutex<Sources>>,
    /// The version of every snapshot published, for the xDS streams to follow each
    /// other's changes (a cluster from CDS naming endpoints another stream delivers).
    published: Arc<tokio::sync::watch::Sender<u64>>,
}

impl SnapshotStore {
    /// A store holding the snapshot built from `bootstrap`.
    pub fn new(bootstrap: Bootstrap, stats: Arc<Stats>) -> Self {
        let sources = Sources {
            bootstrap: Arc::new(bootstrap),
            dynamic: DynamicResources::default(),
            files: FileResources::default(),
        };
        let snapshot = build(&sources, None, &stats, 1);
        Self {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            versions: Arc::new(AtomicU64::new(1)),
            stats,
            sources: Arc::new(Mutex::new(sources)),
            published: Arc::new(tokio::sync::watch::Sender::new(1)),
        }
    }

    /// The current snapshot; hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot from a new bootstrap, reusing what did not change, and publishes
    /// it atomically. Returns the new snapshot.
    pub fn publish(&self, bootstrap: Bootstrap) -> Arc<Snapshot> {
        let mut sources = self.sources.lock().expect("sources lock");
        sources.bootstrap = Arc::new(bootstrap);
        self.rebuild(&sources)
    }

    /// Computes the next resources received over xDS from the current ones and publishes
    /// the merged snapshot, under the lock every publisher takes: each xDS stream (and
    /// file) changes only its own types, and none overwrites another's. `change` returns
    /// `None` to publish nothing.
    pub fn update_dynamic<R>(
        &self,
        change: impl FnOnce(&DynamicResources) -> Option<(DynamicResources, R)>,
    ) -> Option<(R, Arc<Snapshot>)> {
        let mut sources = self.sources.lock().expect("sources lock");
        let (next, result) = change(&sources.dynamic)?;
        sources.dynamic = next;
        Some((result, self.rebuild(&sources)))
    }

    /// Follows the published snapshot versions.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Replaces what `file` holds of `type_url` (routes or endpoints, by name) and
    /// publishes the merged snapshot.
    pub fn publish_file(
        &self,
        file: &std::path::Path,
        routes: BTreeMap<String, RouteTable>,
        assignments: BTreeMap<String, Assignment>,
    ) -> Arc<Snapshot> {
        let mut sources = self.sources.lock().expect("sources lock");
        let files = &mut sources.files;
        files.routes.retain(|(f, _), _| f != file);
        files.assignments.retain(|(f, _), _| f != file);
        for (name, table) in routes {
            files.routes.insert((file.to_path_buf(), name), table);
        }
        for (name, assignment) in assignments {
            files
                .assignments
                .insert((file.to_path_buf(), name), assignment);
        }
        self.rebuild(&sources)
    }

    /// What the RDS and EDS files hold now, for the file watcher to start from.
    pub fn files(&self) -> FileResources {
        self.sources.lock().expect("sources lock").files.clone()
    }

    /// The resources last received over xDS.
    pub fn dynamic(&self) -> DynamicResources {
        self.sources.lock().expect("sources lock").dynamic.clone()
    }

    /// The EDS, RDS and SDS resources the configured clusters and listeners use, each with
    /// whether it has arrived (a cluster or listener waiting for one is warming).
    pub fn dependencies(&self) -> Vec<(Dependency, bool)> {
        self.sources.lock().expect("sources lock").dependencies()
    }

    fn rebuild(&self, sources: &Sources) -> Arc<Snapshot> {
        let previous = self.current.load_full();
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let next = Arc::new(build(sources, Some(&previous), &self.stats, version));
        self.current.store(next.clone());
        self.published.send_replace(version);
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
    let dynamic = &sources.dynamic;
    let secrets = Secrets {
        static_secrets: &bootstrap.secrets,
        dynamic: &dynamic.secrets,
    };
    let static_clusters: HashSet<&str> =
        bootstrap.clusters.iter().map(|c| c.name.as_str()).collect();
    let static_listeners: HashSet<&str> = bootstrap
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    let cluster_configs = bootstrap.clusters.iter().chain(
        dynamic
            .clusters
            .values()
            .filter(|c| !static_clusters.contains(c.name.as_str())),
    );
    let listener_configs = bootstrap.listeners.iter().chain(
        dynamic
            .listeners
            .values()
            .filter(|l| !static_listeners.contains(l.name.as_str())),
    );
    let clusters = cluster_configs
        .filter_map(|config| {
            let live = || previous.and_then(|p| p.clusters.get(&config.name)).cloned();
            let assignment = match config.eds.as_ref() {
                None => None,
                Some(eds) => match sources.assignment(&eds.service_name, &eds.origin) {
                    Some(endpoints) => Some(endpoints),
                    None => return live().map(|l| (config.name.clone(), l)),
                },
            };
            let state =
                match cluster_state(config, live(), &secrets, &dynamic.expired_secrets, stats) {
                    Ok(state) => state,
                    Err(Warming) => return live().map(|l| (config.name.clone(), l)),
                };
            if let Some(endpoints) = assignment {
                state.assign(endpoints);
            }
            Some((config.name.clone(), state))
        })
        .collect();
    let listeners = listener_configs
        .filter_map(|l| {
            let live = previous.and_then(|p| p.listeners.get(&l.name));
            match listener_runtime(l, live, sources, &secrets, bootstrap, stats) {
                Ok(runtime) => Some((l.name.clone(), Arc::new(runtime))),
                Err(Warming) => live.map(|r| (l.name.clone(), r.clone())),
            }
        })
        .collect();
    Snapshot {
        version,
        bootstrap: bootstrap.clone(),
        listeners,
        clusters,
    }
}

/// A resource cannot go live yet: it waits for another, or its TLS does not build.
struct Warming;

/// The cluster's state: the live one when neither its config nor its secrets changed.
fn cluster_state(
    config: &Cluster,
    live: Option<Arc<ClusterState>>,
    secrets: &Secrets<'_>,
    expired: &BTreeSet<String>,
    stats: &Stats,
) -> Result<Arc<ClusterState>, Warming> {
    let (transport, key) = match &config.tls {
        None => (Transport::Plaintext, 0),
        Some(tls) => {
            let refs: Vec<&SdsRef> = tls.sds_names().collect();
            if refs
                .iter()
                .any(|r| secrets.get(r).is_none() && !expired.contains(&r.name))
            {
                return Err(Warming);
            }
            let key = secrets_key(
                &refs,
                secrets,
                tls.client_certificate.iter(),
                tls.validation_files(),
            );
            if let Some(live) = live
                .as_ref()
                .filter(|l| l.config.fingerprint == config.fingerprint && l.tls_key == key)
            {
                return Ok(live.clone());
            }
            match ClientTls::build(tls, config.protocol, secrets) {
                Ok(built) => (Transport::Tls(built), key),
                Err(TlsError::MissingSecret(name)) if expired.contains(&name) => {
                    warn!(cluster = %config.name, secret = %name, "secret timed out: TLS to this cluster fails until it arrives");
                    let reason = format!("secret {name:?} has not arrived");
                    (Transport::Unavailable(reason.into()), key)
                }
                Err(error) => {
                    warn!(cluster = %config.name, %error, "upstream TLS does not build; keeping the previous cluster");
                    return Err(Warming);
                }
            }
        }
    };
    if let Some(live) = live
        .as_ref()
        .filter(|l| l.config.fingerprint == config.fingerprint && l.tls_key == key)
    {
        return Ok(live.clone());
    }
    Ok(ClusterState::new(
        config.clone(),
        transport,
        key,
        stats,
        live.as_deref(),
    ))
}

/// The listener's runtime, reusing the live version's TLS contexts and connection limits
/// chain by chain.
fn listener_runtime(
    l: &Listener,
    live: Option<&Arc<ListenerRuntime>>,
    sources: &Sources,
    secrets: &Secrets<'_>,
    node: &Bootstrap,
    stats: &Stats,
) -> Result<ListenerRuntime, Warming> {
    let chain = |c: &FilterChain| -> Result<Arc<ChainRuntime>, Warming> {
        let previous = live.and_then(|r| r.chain(c.identity));
        chain_runtime(l, c, previous, sources, secrets, node, stats).map(Arc::new)
    };
    let chains = l
        .filter_chains
        .iter()
        .map(chain)
        .collect::<Result<Vec<_>, _>>()?;
    let default_chain = l.default_filter_chain.as_ref().map(chain).transpose()?;
    Ok(ListenerRuntime {
        config: l.clone(),
        chains,
        default_chain,
        stats: stats.listener(&l.address.to_string()),
        access_logs: AccessLogs::new(&l.access_log, node, stats),
    })
}

fn chain_runtime(
    listener: &Listener,
    c: &FilterChain,
    previous: Option<&Arc<ChainRuntime>>,
    sources: &Sources,
    secrets: &Secrets<'_>,
    node: &Bootstrap,
    stats: &Stats,
) -> Result<ChainRuntime, Warming> {
    let network = match &c.network {
        NetworkFilter::Http(h) => {
            let table = match &h.routes {
                RouteSource::Inline(table) => table,
                RouteSource::Rds { name, origin, .. } => {
                    sources.routes(name, origin).ok_or(Warming)?
                }
            };
            let previous = previous.and_then(|p| match &p.network {
                Network::Http(http) => Some(http),
                Network::Tcp(_) => None,
            });
            let routes = match previous {
                Some(p)
                    if p.routes.table.fingerprint == table.fingerprint
                        && p.routes.table.name == table.name =>
                {
                    p.routes.clone()
                }
                _ => Arc::new(CompiledRoutes::new(table.clone(), &h.stat_prefix, stats)),
            };
            // The same identity is the same chain, filters included.
            let filters = match previous {
                Some(p) => p.filters.clone(),
                None => Arc::new(HttpFilterChain::new(
                    &h.http_filters,
                    &h.skipped_filters,
                    &h.stat_prefix,
                    stats,
                )),
            };
            Network::Http(Box::new(HttpRuntime {
                config: (**h).clone(),
                routes,
                filters,
                stats: stats.http(&h.stat_prefix),
                access_logs: AccessLogs::new(&h.access_log, node, stats),
                tracer: h
                    .tracing
                    .as_ref()
                    .map(|t| crate::trace::Tracer::new(t, &node.node_id, stats)),
            }))
        }
        NetworkFilter::Tcp(t) => Network::Tcp(TcpRuntime {
            config: t.clone(),
            stats: stats.tcp(&t.stat_prefix),
            access_logs: AccessLogs::new(&t.access_log, node, stats),
        }),
    };
    let tls = match &c.tls {
        None => ChainTls::Plaintext,
        Some(tls) => {
            let refs: Vec<&SdsRef> = tls.sds_names().collect();
            let expired = |r: &&SdsRef| sources.dynamic.expired_secrets.contains(&r.name);
            if let Some(missing) = refs.iter().find(|r| secrets.get(r).is_none()) {
                if !expired(missing) {
                    return Err(Warming);
                }
                warn!(listener = %listener.name, chain = %c.name, secret = %missing.name,
                    "secret timed out: the chain refuses handshakes until it arrives");
                ChainTls::Unavailable(format!("secret {:?} has not arrived", missing.name))
            } else {
                let key = secrets_key(
                    &refs,
                    secrets,
                    tls.certificates.iter(),
                    tls.validation_files(),
                );
                match previous.map(|p| &p.tls) {
                    Some(ChainTls::Terminate { server, key: k }) if *k == key => {
                        ChainTls::Terminate {
                            server: server.clone(),
                            key,
                        }
                    }
                    _ => match ServerTls::build(tls, secrets) {
                        Ok(server) => ChainTls::Terminate {
                            server: Arc::new(server),
                            key,
                        },
                        Err(error) => {
                            warn!(listener = %listener.name, chain = %c.name, %error,
                                "TLS does not build; keeping the previous listener");
                            return Err(Warming);
                        }
                    },
                }
            }
        }
    };
    let connection_limit = c.connection_limit.map(|limit| {
        let semaphore = previous
            .and_then(|p| p.connection_limit.as_ref())
            .map(|(s, _)| s.clone())
            .unwrap_or_else(|| {
                Arc::new(Semaphore::new(
                    limit.max_connections.min(Semaphore::MAX_PERMITS as u64) as usize,
                ))
            });
        (semaphore, limit.delay)
    });
    Ok(ChainRuntime {
        name: c.name.clone(),
        identity: c.identity,
        tls,
        handshake_timeout: c.handshake_timeout,
        connection_limit,
        network,
    })
}

/// A hash of what a TLS context was built from beyond its config: the secrets it names
/// (their contents) and the stamps of the files it reads.
fn secrets_key<'a>(
    refs: &[&SdsRef],
    secrets: &Secrets<'_>,
    certificates: impl Iterator<Item = &'a CertificateSource>,
    validation_files: Vec<&'a DataSource>,
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut files: Vec<&DataSource> = validation_files;
    for source in certificates {
        if let CertificateSource::Static(pair) = source {
            files.push(&pair.certificate_chain);
            files.push(&pair.private_key);
        }
    }
    for r in refs {
        r.name.hash(&mut hasher);
        match secrets.get(r).map(|s| &s.value) {
            Some(SecretValue::TlsCertificate(pair)) => {
                pair.hash(&mut hasher);
                files.push(&pair.certificate_chain);
                files.push(&pair.private_key);
            }
            Some(SecretValue::ValidationContext(v)) => {
                v.trusted_ca.hash(&mut hasher);
                format!("{:?}", v.subject_alt_names).hash(&mut hasher);
                files.extend(v.trusted_ca.iter());
            }
            None => 0u8.hash(&mut hasher),
        }
    }
    let mut stamps: Vec<_> = file_stamps(files.into_iter()).into_iter().collect();
    stamps.sort();
    stamps.hash(&mut hasher);
    hasher.finish()
}
