//! The xDS client: gRPC streams (state of the world or delta) to the control planes that
//! the bootstrap and the resources name: the ADS stream of `ads_config`, which every
//! `ads: {}` source shares, and one stream per resource type to each server an
//! `api_config_source` names (LDS, CDS, RDS, EDS and SDS services, as Envoy's per-type
//! subscriptions). A supervisor opens the streams the current config needs and closes
//! those it no longer does; every stream applies what it receives to the one set of
//! dynamic resources, under the store's lock, so streams never overwrite each other.
//!
//! Each response is converted resource by resource with `xds-types` (the same code the
//! control plane validates with): valid resources apply, rejected ones are named with their
//! field paths in one NACK, and a rejected resource keeps its last accepted version. Every
//! accepted update becomes one new snapshot. When a control plane is away the last good
//! config keeps serving and its stream reconnects with exponential back-off and jitter.
//!
//! Listeners and clusters are subscribed by wildcard; the RDS route configurations, EDS
//! endpoints and SDS secrets they name are subscribed by name on the stream their config
//! source names, following every change of those names, whichever stream delivered the
//! listener or cluster. A cluster or listener waiting for them is warming (see
//! [`crate::config`]); when one does not arrive within its `initial_fetch_timeout` it is
//! taken as empty (no endpoints, no routes) or, for a secret, as absent (TLS that needs it
//! fails), as in Envoy. Certificate, key and CA files a resource names are read and checked
//! when it arrives, so a missing or broken file is a NACK naming the field.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};
use xds_types::bootstrap::XdsSources;
use xds_types::cluster::Assignment;
use xds_types::config_source::{GrpcServer, Origin};
use xds_types::pb::envoy::config::cluster::v3::Cluster as ClusterPb;
use xds_types::pb::envoy::config::core::v3::Node;
use xds_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as AssignmentPb;
use xds_types::pb::envoy::config::listener::v3::Listener as ListenerPb;
use xds_types::pb::envoy::config::route::v3::RouteConfiguration as RoutesPb;
use xds_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as SecretPb;
use xds_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_types::pb::google::protobuf::Any;
use xds_types::pb::google::rpc::Status as RpcStatus;
use xds_types::secret::Secret;
use xds_types::{type_urls, Cluster, Listener, RouteTable, ValidationError};

use crate::config::{Dependency, DynamicResources, Received, SnapshotStore};
use crate::listener::ListenerManager;
use crate::upstream::tls::{connect_unix, unix_path};

/// Back-off bounds between reconnect attempts.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The types subscribed by name, in push order.
const NAMED_TYPES: [&str; 3] = [
    type_urls::SECRET,
    type_urls::CLUSTER_LOAD_ASSIGNMENT,
    type_urls::ROUTE_CONFIGURATION,
];

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("no endpoint in the xDS cluster {0:?}")]
    NoEndpoint(String),
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("xDS cluster TLS: {0}")]
    Tls(ValidationError),
    #[error("the xDS cluster has TLS to a Unix socket, which is not supported")]
    TlsOverUnix,
}

/// Dials the control plane on a Unix socket (a sidecar's local agent, as Istio's).
#[derive(Clone)]
struct UnixConnector(Arc<str>);

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { connect_unix(&path).await.map(hyper_util::rt::TokioIo::new) })
    }
}

/// The client TLS configuration of the xDS cluster, its files read now (so a rotated
/// certificate is picked up at the next reconnect). tonic verifies the server's name (the
/// `sni`, else the endpoint's host), which is stricter than Envoy's default.
fn client_tls(
    tls: &xds_types::tls::UpstreamTls,
    static_secrets: &[Secret],
) -> Result<tonic::transport::ClientTlsConfig, StreamError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    use xds_types::secret::SecretValue;
    use xds_types::tls::{CertificateSource, SecretSource, ValidationSource};
    let secret = |name: &str| static_secrets.iter().find(|s| s.name == name);
    let read = |source: &xds_types::tls::DataSource, field: &str| {
        source
            .load(&crate::tls::read_file, field)
            .map_err(StreamError::Tls)
    };
    let ca = match &tls.validation {
        Some(ValidationSource::Static(v))
        | Some(ValidationSource::Combined { defaults: v, .. })
            if v.trusted_ca.is_some() =>
        {
            v.trusted_ca.clone()
        }
        Some(ValidationSource::Sds(r) | ValidationSource::Combined { sds: r, .. })
            if r.source == SecretSource::Static =>
        {
            match secret(&r.name).map(|s| &s.value) {
                Some(SecretValue::ValidationContext(v)) => v.trusted_ca.clone(),
                _ => None,
            }
        }
        _ => None,
    };
    let ca = ca.ok_or_else(|| {
        StreamError::Tls(ValidationError::required(
            "transport_socket.typed_config.common_tls_context.validation_context.trusted_ca",
        ))
    })?;
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca, "trusted_ca")?));
    if let Some(sni) = &tls.sni {
        config = config.domain_name(sni);
    }
    let pair = match &tls.client_certificate {
        None => None,
        Some(CertificateSource::Static(pair)) => Some(pair.clone()),
        Some(CertificateSource::Sds(r)) => match secret(&r.name).map(|s| &s.value) {
            Some(SecretValue::TlsCertificate(pair)) => Some(pair.clone()),
            _ => None,
        },
    };
    if let Some(pair) = pair {
        config = config.identity(Identity::from_pem(
            read(&pair.certificate_chain, "certificate_chain")?,
            read(&pair.private_key, "private_key")?,
        ));
    }
    Ok(config)
}

/// Which discovery service a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Service {
    /// The aggregated service: every type on one stream.
    Aggregated,
    /// One type's own service (`ListenerDiscoveryService` and the like).
    Only(&'static str),
}

/// One stream: the server it goes to and the service it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct StreamKey {
    server: GrpcServer,
    service: Service,
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.service {
            Service::Aggregated => write!(f, "ADS to {}", self.server.cluster),
            Service::Only(t) => write!(
                f,
                "{} to {}",
                type_urls::message_name(t),
                self.server.cluster
            ),
        }
    }
}

/// What the streams share.
struct Shared {
    sources: XdsSources,
    node: Node,
    store: SnapshotStore,
    listeners: Arc<ListenerManager>,
    ready: Arc<AtomicBool>,
    /// Whether readiness waits for xDS (`ads_config`, or listeners or clusters over xDS);
    /// else it is the bootstrap's or the files' to give.
    gates_readiness: bool,
    /// The wildcard types (listeners, clusters) that have had a first response.
    answered: Mutex<BTreeSet<String>>,
}

impl Shared {
    /// The stream that carries resources of `type_url` from `origin` (none for a file, or
    /// for ADS when there is no `ads_config`).
    fn stream_of(&self, origin: &Origin, type_url: &'static str) -> Option<StreamKey> {
        match origin {
            Origin::Ads => self.sources.ads.clone().map(|server| StreamKey {
                server,
                service: Service::Aggregated,
            }),
            Origin::Grpc(server) => Some(StreamKey {
                server: server.clone(),
                service: Service::Only(type_url),
            }),
            Origin::File(_) => None,
        }
    }

    /// The wildcard types and where each comes from, clusters first (make before break).
    fn wildcard_sources(&self) -> impl Iterator<Item = (&'static str, &Origin)> {
        [
            (type_urls::CLUSTER, self.sources.clusters.as_ref()),
            (type_urls::LISTENER, self.sources.listeners.as_ref()),
        ]
        .into_iter()
        .filter_map(|(type_url, origin)| Some((type_url, origin?)))
    }

    /// The streams the bootstrap and the current dependencies need.
    fn needed(&self, dependencies: &[(Dependency, bool)]) -> BTreeSet<StreamKey> {
        let wildcard = self
            .wildcard_sources()
            .filter_map(|(type_url, origin)| self.stream_of(origin, type_url));
        let named = dependencies
            .iter()
            .filter_map(|(d, _)| self.stream_of(&d.origin, d.type_url));
        wildcard.chain(named).collect()
    }
}

/// Runs the xDS client until the process exits: opens the streams the config needs as it
/// changes. `ready` turns true after the first response of every wildcard type with
/// nothing warming (or after the listeners' and clusters' `initial_fetch_timeout`).
pub async fn run(
    sources: XdsSources,
    node: Node,
    store: SnapshotStore,
    listeners: Arc<ListenerManager>,
    ready: Arc<AtomicBool>,
) {
    let gates_readiness =
        sources.ads.is_some() || sources.listeners.is_some() || sources.clusters.is_some();
    if gates_readiness {
        let deadline = ready.clone();
        let timeout = sources.initial_fetch_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if !deadline.swap(true, Ordering::Relaxed) {
                warn!(
                    ?timeout,
                    "initial fetch timeout: serving without a full xDS sync"
                );
            }
        });
    }
    let mut published = store.subscribe();
    let shared = Arc::new(Shared {
        sources,
        node,
        store,
        listeners,
        ready,
        gates_readiness,
        answered: Mutex::new(BTreeSet::new()),
    });
    let mut streams: HashMap<StreamKey, JoinHandle<()>> = HashMap::new();
    loop {
        let needed = shared.needed(&shared.store.dependencies());
        let unneeded: Vec<StreamKey> = streams
            .keys()
            .filter(|k| !needed.contains(*k))
            .cloned()
            .collect();
        for key in &unneeded {
            info!(stream = %key, "xDS stream no longer needed; closing it");
            if let Some(task) = streams.remove(key) {
                task.abort();
            }
        }
        if !unneeded.is_empty() {
            forget_unused(&shared.store);
        }
        for key in needed {
            if let std::collections::hash_map::Entry::Vacant(slot) = streams.entry(key) {
                let task = tokio::spawn(run_stream(shared.clone(), slot.key().clone()));
                slot.insert(task);
            }
        }
        if published.changed().await.is_err() {
            return;
        }
    }
}

/// Drops the EDS, RDS and SDS resources that nothing names any longer (those a closed
/// stream delivered).
fn forget_unused(store: &SnapshotStore) {
    let dependencies = store.dependencies();
    let wanted: HashSet<(&str, &str)> = dependencies
        .iter()
        .filter(|(d, _)| d.origin.file().is_none())
        .map(|(d, _)| (d.type_url, d.name.as_str()))
        .collect();
    store.update_dynamic(|current| {
        let held = current
            .routes
            .keys()
            .map(|n| (type_urls::ROUTE_CONFIGURATION, n))
            .chain(
                current
                    .assignments
                    .keys()
                    .map(|n| (type_urls::CLUSTER_LOAD_ASSIGNMENT, n)),
            )
            .chain(current.secrets.keys().map(|n| (type_urls::SECRET, n)))
            .chain(
                current
                    .expired_secrets
                    .iter()
                    .map(|n| (type_urls::SECRET, n)),
            );
        let unused: Vec<(&str, String)> = held
            .filter(|(t, n)| !wanted.contains(&(*t, n.as_str())))
            .map(|(t, n)| (t, n.clone()))
            .collect();
        if unused.is_empty() {
            return None;
        }
        let mut next = current.clone();
        for (type_url, name) in unused {
            forget(&mut next, type_url, &name);
        }
        Some((next, ()))
    });
}

/// One stream, reconnected with back-off until it is no longer needed.
async fn run_stream(shared: Arc<Shared>, key: StreamKey) {
    let mut failures = 0u32;
    // What the stream has accepted, kept across reconnects: SotW sends the last accepted
    // version per type, delta the version of every resource it holds.
    let mut accepted = Accepted::default();
    loop {
        let client = Client {
            shared: &shared,
            key: &key,
        };
        let result = if key.server.delta {
            client.delta(&mut accepted).await
        } else {
            client.sotw(&mut accepted).await
        };
        match result {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                warn!(stream = %key, %error, attempt = failures, "xDS stream failed; keeping the last good config");
            }
        }
        let ceiling = BACKOFF_BASE
            .saturating_mul(1 << failures.min(7))
            .min(BACKOFF_MAX);
        let wait = Duration::from_millis(
            rand::rng().random_range(ceiling.as_millis() as u64 / 2..=ceiling.as_millis() as u64),
        );
        tokio::time::sleep(wait).await;
    }
}

/// Versions accepted from the control plane.
#[derive(Debug, Default)]
struct Accepted {
    /// State of the world: type URL → version_info.
    type_versions: HashMap<String, String>,
    /// Delta: type URL → resource name → version.
    resource_versions: HashMap<String, BTreeMap<String, String>>,
}

/// Names subscribed per named type (SDS, EDS, RDS).
type NamedSubscriptions = BTreeMap<&'static str, BTreeSet<String>>;

/// Deadlines of the EDS, RDS and SDS resources that clusters and listeners are warming for.
#[derive(Debug, Default)]
struct Warming {
    deadlines: HashMap<(&'static str, String), Instant>,
}

impl Warming {
    /// Starts a deadline for every dependency of `mine` still missing and forgets those
    /// that arrived.
    fn track<'a>(&mut self, mine: impl Iterator<Item = &'a (Dependency, bool)>) {
        let now = Instant::now();
        let mut missing = HashMap::new();
        for (dependency, arrived) in mine {
            if let (false, Some(timeout)) = (arrived, dependency.initial_fetch_timeout) {
                missing.insert(
                    (dependency.type_url, dependency.name.clone()),
                    now + timeout,
                );
            }
        }
        self.deadlines.retain(|key, _| missing.contains_key(key));
        for (key, deadline) in missing {
            self.deadlines.entry(key).or_insert(deadline);
        }
    }

    /// Waits for the earliest deadline (forever when there is none).
    async fn next_expiry(&self) {
        match self.deadlines.values().min() {
            Some(deadline) => tokio::time::sleep_until(*deadline).await,
            None => std::future::pending().await,
        }
    }

    /// Removes and returns the dependencies whose deadline has passed.
    fn expired(&mut self) -> Vec<(&'static str, String)> {
        let now = Instant::now();
        let expired: Vec<_> = self
            .deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.deadlines.remove(key);
        }
        expired
    }
}

/// A request that carries the node (both protocols' requests).
trait XdsRequest {
    fn set_node(&mut self, node: Option<Node>);
}

impl XdsRequest for DiscoveryRequest {
    fn set_node(&mut self, node: Option<Node>) {
        self.node = node;
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    fn set_node(&mut self, node: Option<Node>) {
        self.node = node;
    }
}

/// The requests of one stream: each gets the node, or only the first one when the server
/// asked for that (`set_node_on_first_message_only`).
struct Outbox<T> {
    tx: mpsc::Sender<T>,
    node: Node,
    first_only: bool,
    sent: bool,
}

impl<T: XdsRequest> Outbox<T> {
    /// Sends `request`; false once the stream is gone.
    async fn send(&mut self, mut request: T) -> bool {
        let node = (!self.first_only || !self.sent).then(|| self.node.clone());
        request.set_node(node);
        self.sent = true;
        self.tx.send(request).await.is_ok()
    }
}

/// What a stream waits for next.
enum Event<T> {
    Response(T),
    /// Another publisher changed the config: the names to subscribe may have changed.
    Changed,
    Ended,
}

struct Client<'a> {
    shared: &'a Shared,
    key: &'a StreamKey,
}

impl Client<'_> {
    /// The wildcard types this stream carries.
    fn wildcard_types(&self) -> Vec<&'static str> {
        self.shared
            .wildcard_sources()
            .filter(|(type_url, origin)| {
                self.shared.stream_of(origin, type_url).as_ref() == Some(self.key)
            })
            .map(|(type_url, _)| type_url)
            .collect()
    }

    /// Whether this stream delivers `dependency`.
    fn carries(&self, dependency: &Dependency) -> bool {
        self.shared
            .stream_of(&dependency.origin, dependency.type_url)
            .as_ref()
            == Some(self.key)
    }

    /// The names this stream should subscribe to per named type, in push order.
    fn wanted(&self, dependencies: &[(Dependency, bool)]) -> Vec<(&'static str, BTreeSet<String>)> {
        NAMED_TYPES
            .into_iter()
            .filter(|t| match self.key.service {
                Service::Aggregated => true,
                Service::Only(only) => only == *t,
            })
            .map(|type_url| {
                let names = dependencies
                    .iter()
                    .filter(|(d, _)| d.type_url == type_url && self.carries(d))
                    .map(|(d, _)| d.name.clone())
                    .collect();
                (type_url, names)
            })
            .collect()
    }

    fn outbox<T>(&self, tx: mpsc::Sender<T>) -> Outbox<T> {
        Outbox {
            tx,
            node: self.shared.node.clone(),
            first_only: self.key.server.node_on_first_message_only,
            sent: false,
        }
    }

    async fn connect(&self) -> Result<tonic::transport::Channel, StreamError> {
        let snapshot = self.shared.store.load();
        let name = &self.key.server.cluster;
        let cluster = snapshot.clusters.get(name);
        let endpoint = cluster
            .and_then(|c| c.pick_any())
            .ok_or_else(|| StreamError::NoEndpoint(name.clone()))?;
        let tls = cluster.and_then(|c| c.config.tls.as_ref());
        let scheme = if tls.is_some() { "https" } else { "http" };
        // The xDS cluster's `connection_keepalive`, else a PING every 30 s.
        let keepalive = cluster.and_then(|c| c.config.http2_keepalive);
        let unix = unix_path(&endpoint.authority);
        let authority = unix.map_or(endpoint.authority.as_str(), |_| "localhost");
        let mut channel =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{authority}"))?
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(
                    keepalive.map_or(Duration::from_secs(30), |k| k.interval),
                );
        if let Some(k) = keepalive {
            channel = channel
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(true);
        }
        let channel = match (unix, tls) {
            (Some(_), Some(_)) => return Err(StreamError::TlsOverUnix),
            (Some(path), None) => {
                channel
                    .connect_with_connector(UnixConnector(path.into()))
                    .await?
            }
            (None, Some(tls)) => {
                channel
                    .tls_config(client_tls(tls, &snapshot.bootstrap.secrets)?)?
                    .connect()
                    .await?
            }
            (None, None) => channel.connect().await?,
        };
        info!(stream = %self.key, control_plane = %endpoint.authority, delta = self.key.server.delta, "xDS connected");
        Ok(channel)
    }

    /// Applies `change` to the dynamic resources and publishes them, reconciles the
    /// listeners, restarts this stream's warming deadlines, and turns ready once every
    /// wildcard type has answered and nothing warms. Returns `change`'s result (`None` when
    /// it published nothing) and what the clusters and listeners depend on.
    fn update<R>(
        &self,
        warming: &mut Warming,
        change: impl FnOnce(&DynamicResources) -> Option<(DynamicResources, R)>,
    ) -> (Option<R>, Vec<(Dependency, bool)>) {
        let result = self
            .shared
            .store
            .update_dynamic(change)
            .map(|(result, snapshot)| {
                if let Err(error) = self.shared.listeners.reconcile_latest() {
                    warn!(%error, "listener from xDS failed to start");
                }
                debug!(stream = %self.key, version = snapshot.version, "xDS update applied");
                result
            });
        let dependencies = self.shared.store.dependencies();
        warming.track(dependencies.iter().filter(|(d, _)| self.carries(d)));
        let answered = self.shared.answered.lock().expect("answered lock");
        let synced = self
            .shared
            .wildcard_sources()
            .all(|(t, _)| answered.contains(t))
            && dependencies.iter().all(|(_, arrived)| *arrived);
        drop(answered);
        if synced && self.shared.gates_readiness && !self.shared.ready.swap(true, Ordering::Relaxed)
        {
            info!("first xDS sync complete");
        }
        (result, dependencies)
    }

    /// Applies a response of `type_url` (`resources` with their delta entry when delta;
    /// `replace` when it is the whole set; `removed`: the names delta deletes) and records a
    /// wildcard type as answered. Returns the rejections and the dependencies after it.
    fn apply_response<'r>(
        &self,
        warming: &mut Warming,
        type_url: &str,
        version_info: &str,
        resources: impl Iterator<Item = (Option<&'r Resource>, &'r Any)>,
        replace: bool,
        removed: &[String],
    ) -> (Vec<Rejection>, Vec<(Dependency, bool)>) {
        if self.wildcard_types().contains(&type_url) {
            self.shared
                .answered
                .lock()
                .expect("answered lock")
                .insert(type_url.to_string());
        }
        let without_ads = self.shared.sources.ads.is_none();
        let (rejected, dependencies) = self.update(warming, |current| {
            let (mut rejected, mut next) =
                convert_all(type_url, version_info, resources, current, replace);
            for name in removed {
                remove(&mut next, type_url, name);
            }
            if without_ads {
                crate::file_xds::refuse_xds_dependencies(&mut next, current, &mut rejected);
            }
            Some((next, rejected))
        });
        (rejected.unwrap_or_default(), dependencies)
    }

    /// Takes every dependency whose `initial_fetch_timeout` passed as empty, as Envoy does:
    /// its cluster goes live with no endpoints, its listener with no routes; a missing
    /// secret makes the TLS that needs it fail.
    fn expire(&self, warming: &mut Warming) {
        let expired = warming.expired();
        if expired.is_empty() {
            return;
        }
        self.update(warming, |current| {
            let mut next = current.clone();
            for (type_url, name) in expired {
                warn!(%type_url, %name, "initial fetch timeout: going live without it");
                if type_url == type_urls::CLUSTER_LOAD_ASSIGNMENT {
                    next.assignments
                        .insert(name.clone(), Assignment::empty(&name));
                } else if type_url == type_urls::SECRET {
                    next.expired_secrets.insert(name);
                } else {
                    next.routes.insert(
                        name.clone(),
                        RouteTable {
                            name,
                            ..RouteTable::default()
                        },
                    );
                }
            }
            Some((next, ()))
        });
    }

    /// Drops the resources of names this stream no longer subscribes to.
    fn forget(&self, warming: &mut Warming, gone: Vec<(&'static str, String)>) {
        if gone.is_empty() {
            return;
        }
        self.update(warming, |current| {
            let mut next = current.clone();
            for (type_url, name) in &gone {
                forget(&mut next, type_url, name);
            }
            Some((next, ()))
        });
    }

    /// The next thing to act on: a response, or a config change made elsewhere; a warming
    /// deadline that passes meanwhile is applied first.
    async fn next_event<T: prost::Message + Default>(
        &self,
        responses: &mut tonic::Streaming<T>,
        warming: &mut Warming,
        published: &mut watch::Receiver<u64>,
    ) -> Result<Event<T>, StreamError> {
        loop {
            tokio::select! {
                message = responses.message() => return Ok(match message? {
                    Some(response) => Event::Response(response),
                    None => Event::Ended,
                }),
                changed = published.changed() => return Ok(match changed {
                    Ok(()) => Event::Changed,
                    Err(_) => Event::Ended,
                }),
                () = warming.next_expiry() => self.expire(warming),
            }
        }
    }

    async fn open_sotw(
        &self,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> Result<tonic::Streaming<DiscoveryResponse>, StreamError> {
        use xds_types::pb::envoy::service as s;
        let channel = self.connect().await?;
        let response = match self.key.service {
            Service::Aggregated => {
                s::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel)
                    .stream_aggregated_resources(requests)
                    .await?
            }
            Service::Only(type_urls::LISTENER) => {
                s::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient::new(channel)
                    .stream_listeners(requests)
                    .await?
            }
            Service::Only(type_urls::CLUSTER) => {
                s::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient::new(channel)
                    .stream_clusters(requests)
                    .await?
            }
            Service::Only(type_urls::ROUTE_CONFIGURATION) => {
                s::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient::new(channel)
                    .stream_routes(requests)
                    .await?
            }
            Service::Only(type_urls::CLUSTER_LOAD_ASSIGNMENT) => {
                s::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient::new(channel)
                    .stream_endpoints(requests)
                    .await?
            }
            Service::Only(_) => {
                s::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient::new(channel)
                    .stream_secrets(requests)
                    .await?
            }
        };
        Ok(response.into_inner())
    }

    async fn open_delta(
        &self,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<tonic::Streaming<DeltaDiscoveryResponse>, StreamError> {
        use xds_types::pb::envoy::service as s;
        let channel = self.connect().await?;
        let response = match self.key.service {
            Service::Aggregated => {
                s::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel)
                    .delta_aggregated_resources(requests)
                    .await?
            }
            Service::Only(type_urls::LISTENER) => {
                s::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient::new(channel)
                    .delta_listeners(requests)
                    .await?
            }
            Service::Only(type_urls::CLUSTER) => {
                s::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient::new(channel)
                    .delta_clusters(requests)
                    .await?
            }
            Service::Only(type_urls::ROUTE_CONFIGURATION) => {
                s::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient::new(channel)
                    .delta_routes(requests)
                    .await?
            }
            Service::Only(type_urls::CLUSTER_LOAD_ASSIGNMENT) => {
                s::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient::new(channel)
                    .delta_endpoints(requests)
                    .await?
            }
            Service::Only(_) => {
                s::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient::new(channel)
                    .delta_secrets(requests)
                    .await?
            }
        };
        Ok(response.into_inner())
    }

    async fn sotw(&self, accepted: &mut Accepted) -> Result<(), StreamError> {
        let (tx, rx) = mpsc::channel(16);
        let mut outbox = self.outbox(tx);
        let versions = &mut accepted.type_versions;
        let request = |type_url: &str, versions: &HashMap<String, String>| DiscoveryRequest {
            type_url: type_url.to_string(),
            version_info: versions.get(type_url).cloned().unwrap_or_default(),
            ..Default::default()
        };
        for type_url in self.wildcard_types() {
            outbox.send(request(type_url, versions)).await;
        }
        let mut named = NamedSubscriptions::new();
        let mut nonces: HashMap<String, String> = HashMap::new();
        let mut published = self.shared.store.subscribe();
        published.borrow_and_update();
        let mut warming = Warming::default();
        let dependencies = self.shared.store.dependencies();
        warming.track(dependencies.iter().filter(|(d, _)| self.carries(d)));
        let (requests, gone) =
            self.sotw_subscriptions(&dependencies, &mut named, versions, &nonces);
        self.forget(&mut warming, gone);
        for request in requests {
            outbox.send(request).await;
        }
        let mut responses = self.open_sotw(ReceiverStream::new(rx)).await?;
        loop {
            let response = match self
                .next_event(&mut responses, &mut warming, &mut published)
                .await?
            {
                Event::Response(response) => response,
                Event::Ended => break,
                Event::Changed => {
                    let dependencies = self.shared.store.dependencies();
                    warming.track(dependencies.iter().filter(|(d, _)| self.carries(d)));
                    let (requests, gone) =
                        self.sotw_subscriptions(&dependencies, &mut named, versions, &nonces);
                    self.forget(&mut warming, gone);
                    for request in requests {
                        if !outbox.send(request).await {
                            return Ok(());
                        }
                    }
                    continue;
                }
            };
            let type_url = response.type_url.clone();
            // Listeners and clusters are whole sets; EDS and RDS responses name only what
            // they carry, and an absent one is not deleted.
            let replace = type_url == type_urls::LISTENER || type_url == type_urls::CLUSTER;
            let (rejected, dependencies) = self.apply_response(
                &mut warming,
                &type_url,
                &response.version_info,
                response.resources.iter().map(|a| (None, a)),
                replace,
                &[],
            );
            published.borrow_and_update();
            if rejected.is_empty() {
                versions.insert(type_url.clone(), response.version_info.clone());
            } else {
                warn!(stream = %self.key, %type_url, version = %response.version_info, errors = %nack(&rejected).message, "NACK");
            }
            nonces.insert(type_url.clone(), response.nonce.clone());
            let ack = DiscoveryRequest {
                response_nonce: response.nonce,
                error_detail: (!rejected.is_empty()).then(|| nack(&rejected)),
                resource_names: named
                    .get(type_url.as_str())
                    .map(|n| n.iter().cloned().collect())
                    .unwrap_or_default(),
                ..request(&type_url, versions)
            };
            if !outbox.send(ack).await {
                break;
            }
            let (requests, gone) =
                self.sotw_subscriptions(&dependencies, &mut named, versions, &nonces);
            self.forget(&mut warming, gone);
            for request in requests {
                if !outbox.send(request).await {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// State of the world: a request for every named type whose wanted names changed (the
    /// full new list), and the resources no longer wanted.
    fn sotw_subscriptions(
        &self,
        dependencies: &[(Dependency, bool)],
        named: &mut NamedSubscriptions,
        versions: &HashMap<String, String>,
        nonces: &HashMap<String, String>,
    ) -> (Vec<DiscoveryRequest>, Vec<(&'static str, String)>) {
        let mut requests = Vec::new();
        let mut gone = Vec::new();
        for (type_url, names) in self.wanted(dependencies) {
            let had = named.get(type_url);
            if had == Some(&names) || (had.is_none() && names.is_empty()) {
                continue;
            }
            for name in had.into_iter().flat_map(|h| h.difference(&names)) {
                gone.push((type_url, name.clone()));
            }
            debug!(stream = %self.key, %type_url, ?names, "subscribing");
            requests.push(DiscoveryRequest {
                type_url: type_url.to_string(),
                version_info: versions.get(type_url).cloned().unwrap_or_default(),
                resource_names: names.iter().cloned().collect(),
                response_nonce: nonces.get(type_url).cloned().unwrap_or_default(),
                ..Default::default()
            });
            named.insert(type_url, names);
        }
        (requests, gone)
    }

    async fn delta(&self, accepted: &mut Accepted) -> Result<(), StreamError> {
        let (tx, rx) = mpsc::channel(16);
        let mut outbox = self.outbox(tx);
        let known = &mut accepted.resource_versions;
        for type_url in self.wildcard_types() {
            // Reconnect: tell the server what we hold, so it sends only what changed and
            // removes what was deleted meanwhile.
            let initial = known.get(type_url).cloned().unwrap_or_default();
            outbox
                .send(DeltaDiscoveryRequest {
                    type_url: type_url.to_string(),
                    initial_resource_versions: initial.into_iter().collect(),
                    ..Default::default()
                })
                .await;
        }
        let mut named = NamedSubscriptions::new();
        let mut published = self.shared.store.subscribe();
        published.borrow_and_update();
        let mut warming = Warming::default();
        let dependencies = self.shared.store.dependencies();
        warming.track(dependencies.iter().filter(|(d, _)| self.carries(d)));
        let (requests, gone) = self.delta_subscriptions(&dependencies, &mut named, known);
        self.forget(&mut warming, gone);
        for request in requests {
            outbox.send(request).await;
        }
        let mut responses = self.open_delta(ReceiverStream::new(rx)).await?;
        loop {
            let response = match self
                .next_event(&mut responses, &mut warming, &mut published)
                .await?
            {
                Event::Response(response) => response,
                Event::Ended => break,
                Event::Changed => {
                    let dependencies = self.shared.store.dependencies();
                    warming.track(dependencies.iter().filter(|(d, _)| self.carries(d)));
                    let (requests, gone) =
                        self.delta_subscriptions(&dependencies, &mut named, known);
                    self.forget(&mut warming, gone);
                    for request in requests {
                        if !outbox.send(request).await {
                            return Ok(());
                        }
                    }
                    continue;
                }
            };
            let type_url = response.type_url.clone();
            let updates = response
                .resources
                .iter()
                .filter_map(|r: &Resource| r.resource.as_ref().map(|a| (Some(r), a)));
            let (rejected, dependencies) = self.apply_response(
                &mut warming,
                &type_url,
                "",
                updates,
                false,
                &response.removed_resources,
            );
            published.borrow_and_update();
            let versions = known.entry(type_url.clone()).or_default();
            for r in &response.resources {
                if !rejected.iter().any(|x| x.name == r.name) {
                    versions.insert(r.name.clone(), r.version.clone());
                }
            }
            for name in &response.removed_resources {
                versions.remove(name);
            }
            if !rejected.is_empty() {
                warn!(stream = %self.key, %type_url, errors = %nack(&rejected).message, "NACK");
            }
            let ack = DeltaDiscoveryRequest {
                type_url,
                response_nonce: response.nonce,
                error_detail: (!rejected.is_empty()).then(|| nack(&rejected)),
                ..Default::default()
            };
            if !outbox.send(ack).await {
                break;
            }
            let (requests, gone) = self.delta_subscriptions(&dependencies, &mut named, known);
            self.forget(&mut warming, gone);
            for request in requests {
                if !outbox.send(request).await {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Delta: subscribes to newly wanted names and unsubscribes from those no longer
    /// wanted (returned, for their resources to be dropped); the first request of a type
    /// carries the versions already held.
    fn delta_subscriptions(
        &self,
        dependencies: &[(Dependency, bool)],
        named: &mut NamedSubscriptions,
        known: &mut HashMap<String, BTreeMap<String, String>>,
    ) -> (Vec<DeltaDiscoveryRequest>, Vec<(&'static str, String)>) {
        let mut requests = Vec::new();
        let mut gone = Vec::new();
        for (type_url, names) in self.wanted(dependencies) {
            let first = !named.contains_key(type_url);
            let had = named.entry(type_url).or_default();
            let subscribe: Vec<String> = names.difference(had).cloned().collect();
            let unsubscribe: Vec<String> = had.difference(&names).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            let versions = known.entry(type_url.to_string()).or_default();
            for name in &unsubscribe {
                gone.push((type_url, name.clone()));
                versions.remove(name);
            }
            let initial = if first {
                versions
                    .iter()
                    .filter(|(name, _)| names.contains(*name))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect()
            } else {
                HashMap::new()
            };
            debug!(stream = %self.key, %type_url, ?subscribe, ?unsubscribe, "subscription change");
            requests.push(DeltaDiscoveryRequest {
                type_url: type_url.to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                initial_resource_versions: initial,
                ..Default::default()
            });
            *had = names;
        }
        (requests, gone)
    }
}

/// Removes a resource the server deleted (delta). A deleted endpoint assignment leaves
/// its cluster with no endpoints, as in Envoy.
fn remove(dynamic: &mut DynamicResources, type_url: &str, name: &str) {
    dynamic
        .received
        .remove(&(type_url.to_string(), name.to_string()));
    match type_url {
        type_urls::LISTENER => {
            dynamic.listeners.remove(name);
        }
        type_urls::CLUSTER => {
            dynamic.clusters.remove(name);
        }
        type_urls::ROUTE_CONFIGURATION => {
            dynamic.routes.remove(name);
        }
        type_urls::CLUSTER_LOAD_ASSIGNMENT => {
            dynamic
                .assignments
                .insert(name.to_string(), Assignment::empty(name));
        }
        type_urls::SECRET => {
            dynamic.secrets.remove(name);
        }
        _ => {}
    }
}

/// Drops an EDS or RDS resource this client no longer subscribes to.
fn forget(dynamic: &mut DynamicResources, type_url: &str, name: &str) {
    dynamic
        .received
        .remove(&(type_url.to_string(), name.to_string()));
    match type_url {
        type_urls::CLUSTER_LOAD_ASSIGNMENT => {
            dynamic.assignments.remove(name);
        }
        type_urls::SECRET => {
            dynamic.secrets.remove(name);
            dynamic.expired_secrets.remove(name);
        }
        _ => {
            dynamic.routes.remove(name);
        }
    }
}

/// A resource the client refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// The resource name, or `resources[i]` when it could not be read.
    pub(crate) name: String,
    pub(crate) error: String,
}

/// The NACK for `rejected`: every rejected resource with its field path.
pub(crate) fn nack(rejected: &[Rejection]) -> RpcStatus {
    let message = rejected
        .iter()
        .map(|r| format!("{}: {}", r.name, r.error))
        .collect::<Vec<_>>()
        .join("; ");
    RpcStatus {
        code: 3,
        message,
        ..Default::default()
    }
}

/// Converts every resource of a response of `type_url`. `replace`: the response is the
/// whole set (state-of-the-world listeners and clusters), so resources absent from it are
/// removed; otherwise it adds or updates. A rejected resource keeps its previously accepted
/// version. Returns the rejections and the resulting resources.
pub(crate) fn convert_all<'r>(
    type_url: &str,
    version_info: &str,
    resources: impl Iterator<Item = (Option<&'r Resource>, &'r Any)>,
    current: &DynamicResources,
    replace: bool,
) -> (Vec<Rejection>, DynamicResources) {
    let update = Update {
        type_url,
        version_info,
        current,
        replace,
    };
    match type_url {
        type_urls::LISTENER => apply::<ListenerPb>(update, resources),
        type_urls::CLUSTER => apply::<ClusterPb>(update, resources),
        type_urls::ROUTE_CONFIGURATION => apply::<RoutesPb>(update, resources),
        type_urls::CLUSTER_LOAD_ASSIGNMENT => apply::<AssignmentPb>(update, resources),
        type_urls::SECRET => apply::<SecretPb>(update, resources),
        other => {
            let rejection = Rejection {
                name: other.to_string(),
                error: "unsupported resource type".to_string(),
            };
            (vec![rejection], current.clone())
        }
    }
}

/// One response being applied: its type, the response's version (state of the world)
/// and the resources it starts from.
#[derive(Clone, Copy)]
struct Update<'a> {
    type_url: &'a str,
    version_info: &'a str,
    current: &'a DynamicResources,
    /// The response is the whole set of its type.
    replace: bool,
}

fn apply<'r, R: XdsResource>(
    update: Update<'_>,
    resources: impl Iterator<Item = (Option<&'r Resource>, &'r Any)>,
) -> (Vec<Rejection>, DynamicResources) {
    let Update {
        type_url,
        version_info,
        current,
        replace,
    } = update;
    let mut next = current.clone();
    let mut accepted = BTreeMap::new();
    let mut rejected = Vec::new();
    for (index, (resource, any)) in resources.enumerate() {
        match convert::<R>(any, type_url) {
            Ok((name, model)) => {
                let version = resource.map_or(version_info, |r| r.version.as_str());
                let received = Received {
                    version: version.to_string(),
                    resource: Arc::new(any.clone()),
                };
                next.received
                    .insert((type_url.to_string(), name.clone()), received);
                accepted.insert(name, model);
            }
            Err((name, error)) => {
                if let Some((name, old)) = name
                    .as_ref()
                    .and_then(|n| R::slot(current).get_key_value(n))
                {
                    accepted.insert(name.clone(), old.clone());
                }
                let label =
                    resource.map_or_else(|| format!("resources[{index}]"), |r| r.name.clone());
                rejected.push(Rejection {
                    name: name.unwrap_or(label),
                    error: error.to_string(),
                });
            }
        }
    }
    if type_url == type_urls::SECRET {
        for name in accepted.keys() {
            next.expired_secrets.remove(name);
        }
    }
    let slot = R::slot_mut(&mut next);
    if replace {
        *slot = accepted;
        let kept: Vec<String> = slot.keys().cloned().collect();
        next.received
            .retain(|(t, name), _| t != type_url || kept.contains(name));
    } else {
        slot.extend(accepted);
    }
    (rejected, next)
}

/// Decodes one `Any` (checking unsupported fields) and converts it to its model with its
/// name; on failure returns the resource name when it could be read.
fn convert<R: XdsResource>(
    any: &Any,
    type_url: &str,
) -> Result<(String, R::Model), (Option<String>, ValidationError)> {
    if any.type_url != type_url {
        return Err((
            None,
            ValidationError::new(
                "",
                format!("type {:?} in a {type_url} response", any.type_url),
            ),
        ));
    }
    let name = R::decode(any.value.as_slice())
        .ok()
        .map(|p| p.name().to_string())
        .filter(|n| !n.is_empty());
    let pb: R = xds_types::decode::from_bytes(&any.value, R::KIND.message())
        .map_err(|e| (name.clone(), e))?;
    let model = pb.to_model().map_err(|e| (name.clone(), e))?;
    Ok((pb.name().to_string(), model))
}

/// An xDS resource type this client accepts: its validated model, and where the model
/// lives in [`DynamicResources`].
trait XdsResource: xds_types::resource::Resource {
    type Model: Clone;
    fn to_model(&self) -> Result<Self::Model, ValidationError>;
    fn slot(dynamic: &DynamicResources) -> &BTreeMap<String, Self::Model>;
    fn slot_mut(dynamic: &mut DynamicResources) -> &mut BTreeMap<String, Self::Model>;
}

/// Implements [`XdsResource`] for a proto, converted by `$convert` into the map `$slot`
/// of [`DynamicResources`].
macro_rules! xds_resource {
    ($pb:ty => $model:ty, slot: $slot:ident, convert: $convert:expr) => {
        impl XdsResource for $pb {
            type Model = $model;
            fn to_model(&self) -> Result<$model, ValidationError> {
                $convert(self)
            }
            fn slot(dynamic: &DynamicResources) -> &BTreeMap<String, $model> {
                &dynamic.$slot
            }
            fn slot_mut(dynamic: &mut DynamicResources) -> &mut BTreeMap<String, $model> {
                &mut dynamic.$slot
            }
        }
    };
}

xds_resource!(ListenerPb => Listener, slot: listeners, convert: |pb: &ListenerPb| {
    let listener = Listener::try_from(pb)?;
    crate::tls::check_listener_files(&listener)?;
    Ok(listener)
});
xds_resource!(ClusterPb => Cluster, slot: clusters, convert: |pb: &ClusterPb| {
    let cluster = xds_types::cluster::dynamic_cluster(pb)?;
    crate::tls::check_cluster_files(&cluster)?;
    Ok(cluster)
});
xds_resource!(SecretPb => Secret, slot: secrets, convert: |pb: &SecretPb| {
    let secret = Secret::try_from(pb)?;
    crate::tls::check_secret_files(&secret)?;
    Ok(secret)
});
xds_resource!(RoutesPb => RouteTable, slot: routes, convert: |pb: &RoutesPb| {
    // A route configuration delivered on its own is found by name, so it needs one.
    if pb.name.is_empty() {
        return Err(ValidationError::required("name"));
    }
    RouteTable::try_from(pb)
});
xds_resource!(AssignmentPb => Assignment, slot: assignments,
    convert: |pb: &AssignmentPb| Assignment::try_from(pb));

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn cluster_any(yaml: &str) -> Any {
        let pb: ClusterPb = xds_types::decode::from_yaml(yaml, "envoy.config.cluster.v3.Cluster")
            .or_else(|_| {
                // Unsupported fields are refused by from_yaml; build those from JSON without the check.
                let json: serde_json::Value = serde_json::from_str(yaml).unwrap();
                let dynamic =
                    xds_types::decode::dynamic_from_json(json, "envoy.config.cluster.v3.Cluster")?;
                dynamic
                    .transcode_to::<ClusterPb>()
                    .map_err(|e| ValidationError::new("", e.to_string()))
            })
            .unwrap();
        Any {
            type_url: type_urls::CLUSTER.to_string(),
            value: pb.encode_to_vec(),
        }
    }

    #[test]
    fn valid_resources_apply_and_rejected_ones_are_named_with_their_field() {
        let good = cluster_any("name: good\nconnect_timeout: 1s");
        let bad = cluster_any(r#"{"name": "bad", "lrs_server": {"self": {}}}"#);
        let previous = DynamicResources::default();
        let (rejected, next) = convert_all(
            type_urls::CLUSTER,
            "v1",
            [(None, &good), (None, &bad)].into_iter(),
            &previous,
            true,
        );
        assert_eq!(
            vec![nack(&rejected).message],
            vec!["bad: lrs_server: field is not supported by sluice".to_string()]
        );
        assert!(next.clusters.contains_key("good"));
        assert!(!next.clusters.contains_key("bad"));
    }

    #[test]
    fn a_rejected_resource_keeps_its_last_accepted_version() {
        let v1 = cluster_any("name: web\nconnect_timeout: 1s");
        let (_, accepted) = convert_all(
            type_urls::CLUSTER,
            "v1",
            [(None, &v1)].into_iter(),
            &DynamicResources::default(),
            true,
        );
        let broken = cluster_any(r#"{"name": "web", "lb_policy": "CLUSTER_PROVIDED"}"#);
        let (rejected, next) = convert_all(
            type_urls::CLUSTER,
            "v2",
            [(None, &broken)].into_iter(),
            &accepted,
            true,
        );
        assert_eq!(
            vec![nack(&rejected).message],
            vec!["web: lb_policy: CLUSTER_PROVIDED is not supported".to_string()]
        );
        assert_eq!(next.clusters["web"].connect_timeout, Duration::from_secs(1));
    }

    /// An `Any` of `message` from JSON, without the unsupported-field check (so tests can
    /// send what a hostile control plane would).
    fn any_of<P: prost::Message + Default>(json: serde_json::Value, type_url: &str) -> Any {
        let dynamic =
            xds_types::decode::dynamic_from_json(json, type_urls::message_name(type_url)).unwrap();
        let pb: P = dynamic.transcode_to().unwrap();
        Any {
            type_url: type_url.to_string(),
            value: pb.encode_to_vec(),
        }
    }

    #[test]
    fn bad_endpoints_are_nacked_by_field_and_the_last_good_ones_stay() {
        let endpoints = |host: &str| {
            any_of::<AssignmentPb>(
                serde_json::json!({ "cluster_name": "web", "endpoints": [ { "lb_endpoints": [ { "endpoint": {
                    "address": { "socket_address": { "address": host, "port_value": 8080 } } } } ] } ] }),
                type_urls::CLUSTER_LOAD_ASSIGNMENT,
            )
        };
        let good = endpoints("127.0.0.1");
        let (_, accepted) = convert_all(
            type_urls::CLUSTER_LOAD_ASSIGNMENT,
            "",
            [(None, &good)].into_iter(),
            &DynamicResources::default(),
            false,
        );
        let bad = endpoints("example.com");
        let (rejected, next) = convert_all(
            type_urls::CLUSTER_LOAD_ASSIGNMENT,
            "",
            [(None, &bad)].into_iter(),
            &accepted,
            false,
        );
        let message = nack(&rejected).message;
        assert!(
            message.starts_with(
                "web: endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: \"example.com\" is not an IP address"
            ),
            "{message}"
        );
        assert_eq!(
            next.assignments["web"].endpoints[0].address,
            xds_types::cluster::EndpointAddress::Socket {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn an_unnamed_route_configuration_is_nacked_by_position() {
        let unnamed = any_of::<RoutesPb>(
            serde_json::json!({ "virtual_hosts": [] }),
            type_urls::ROUTE_CONFIGURATION,
        );
        let (rejected, next) = convert_all(
            type_urls::ROUTE_CONFIGURATION,
            "",
            [(None, &unnamed)].into_iter(),
            &DynamicResources::default(),
            false,
        );
        assert_eq!(
            nack(&rejected).message,
            "resources[0]: name: field is required"
        );
        assert!(next.routes.is_empty());
    }
}
