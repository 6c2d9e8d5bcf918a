//! The xDS client: one ADS stream (state of the world or delta) to the control plane named
//! in the bootstrap's `dynamic_resources`.
//!
//! Each response is converted resource by resource with `xds-types` (the same code the
//! control plane validates with): valid resources apply, rejected ones are named with their
//! field paths in one NACK, and a rejected resource keeps its last accepted version. Every
//! accepted update becomes one new snapshot. When the control plane is away the last good
//! config keeps serving and the client reconnects with exponential back-off and jitter.
//!
//! Listeners and clusters are subscribed by wildcard; the RDS route configurations, EDS
//! endpoints and SDS secrets they name are subscribed by name, following every change of
//! those names. A cluster or listener waiting for them is warming (see [`crate::config`]);
//! when one does not arrive within its `initial_fetch_timeout` it is taken as empty (no
//! endpoints, no routes) or, for a secret, as absent (TLS that needs it fails), as in
//! Envoy. Certificate, key and CA files a resource names are read and checked when it
//! arrives, so a missing or broken file is a NACK naming the field.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};
use xds_types::bootstrap::AdsSource;
use xds_types::cluster::Assignment;
use xds_types::pb::envoy::config::cluster::v3::Cluster as ClusterPb;
use xds_types::pb::envoy::config::core::v3::Node;
use xds_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as AssignmentPb;
use xds_types::pb::envoy::config::listener::v3::Listener as ListenerPb;
use xds_types::pb::envoy::config::route::v3::RouteConfiguration as RoutesPb;
use xds_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as SecretPb;
use xds_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, Resource,
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

/// Runs the client until the process exits; `ready` turns true after the first response
/// of every subscribed type (or after `initial_fetch_timeout`).
pub async fn run(
    source: AdsSource,
    node: Node,
    store: SnapshotStore,
    listeners: Arc<ListenerManager>,
    ready: Arc<AtomicBool>,
) {
    let deadline = ready.clone();
    let timeout = source.initial_fetch_timeout;
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if !deadline.swap(true, Ordering::Relaxed) {
            warn!(
                ?timeout,
                "initial fetch timeout: serving without a full xDS sync"
            );
        }
    });
    let mut failures = 0u32;
    // What the client has accepted, kept across reconnects: SotW sends the last accepted
    // version per type, delta the version of every resource it holds.
    let mut accepted = Accepted::default();
    loop {
        let client = Client {
            source: &source,
            node: &node,
            store: &store,
            listeners: &listeners,
            ready: &ready,
        };
        let result = if source.delta {
            client.delta(&mut accepted).await
        } else {
            client.sotw(&mut accepted).await
        };
        match result {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                warn!(%error, attempt = failures, "xDS stream failed; keeping the last good config");
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

struct Client<'a> {
    source: &'a AdsSource,
    node: &'a Node,
    store: &'a SnapshotStore,
    listeners: &'a ListenerManager,
    ready: &'a AtomicBool,
}

/// The types subscribed by wildcard, clusters first (make-before-break).
fn wildcard_types(source: &AdsSource) -> Vec<&'static str> {
    let mut types = Vec::new();
    if source.clusters {
        types.push(type_urls::CLUSTER);
    }
    if source.listeners {
        types.push(type_urls::LISTENER);
    }
    types
}

/// Names subscribed per named type (EDS, then RDS).
type NamedSubscriptions = BTreeMap<&'static str, BTreeSet<String>>;

/// The SDS, EDS and RDS names the current clusters and listeners need, in push order.
fn wanted(dependencies: &[(Dependency, bool)]) -> Vec<(&'static str, BTreeSet<String>)> {
    [
        type_urls::SECRET,
        type_urls::CLUSTER_LOAD_ASSIGNMENT,
        type_urls::ROUTE_CONFIGURATION,
    ]
    .into_iter()
    .map(|type_url| {
        let names = dependencies
            .iter()
            // What files hold is the file watcher's, not the control plane's.
            .filter(|(d, _)| d.type_url == type_url && d.file.is_none())
            .map(|(d, _)| d.name.clone())
            .collect();
        (type_url, names)
    })
    .collect()
}

/// Deadlines of the EDS and RDS resources that clusters and listeners are warming for.
#[derive(Debug, Default)]
struct Warming {
    deadlines: HashMap<(&'static str, String), Instant>,
}

impl Warming {
    /// Starts a deadline for every dependency still missing and forgets those that arrived.
    fn track(&mut self, dependencies: &[(Dependency, bool)]) {
        let now = Instant::now();
        let mut missing = HashMap::new();
        // A file's resources are the file watcher's to wait for.
        for (dependency, arrived) in dependencies.iter().filter(|(d, _)| d.file.is_none()) {
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

impl Client<'_> {
    async fn connect(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, StreamError> {
        let snapshot = self.store.load();
        let cluster = snapshot.clusters.get(&self.source.cluster);
        let endpoint = cluster
            .and_then(|c| c.pick_any())
            .ok_or_else(|| StreamError::NoEndpoint(self.source.cluster.clone()))?;
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
        info!(control_plane = %endpoint.authority, delta = self.source.delta, "xDS connected");
        Ok(AggregatedDiscoveryServiceClient::new(channel))
    }

    /// Publishes the dynamic resources after an update of `type_url`, restarts warming
    /// deadlines, and turns ready once every wildcard type has answered and nothing warms.
    /// Returns what the published clusters and listeners depend on.
    fn publish(
        &self,
        type_url: &str,
        dynamic: DynamicResources,
        warming: &mut Warming,
        received: &[String],
    ) -> Vec<(Dependency, bool)> {
        let snapshot = self.store.publish_dynamic(dynamic);
        if let Err(error) = self.listeners.reconcile(&snapshot) {
            warn!(%error, "listener from xDS failed to start");
        }
        debug!(%type_url, version = snapshot.version, "xDS update applied");
        let dependencies = self.store.dependencies();
        warming.track(&dependencies);
        let synced = wildcard_types(self.source)
            .iter()
            .all(|t| received.iter().any(|r| r == t))
            && dependencies.iter().all(|(_, arrived)| *arrived);
        if synced && !self.ready.swap(true, Ordering::Relaxed) {
            info!("first xDS sync complete");
        }
        dependencies
    }

    /// Takes every dependency whose `initial_fetch_timeout` passed as empty, as Envoy does:
    /// its cluster goes live with no endpoints, its listener with no routes; a missing
    /// secret makes the TLS that needs it fail.
    fn expire(&self, warming: &mut Warming, current: &mut DynamicResources, received: &[String]) {
        for (type_url, name) in warming.expired() {
            warn!(%type_url, %name, "initial fetch timeout: going live without it");
            if type_url == type_urls::CLUSTER_LOAD_ASSIGNMENT {
                current
                    .assignments
                    .insert(name.clone(), Assignment::empty(&name));
            } else if type_url == type_urls::SECRET {
                current.expired_secrets.insert(name);
            } else {
                current.routes.insert(
                    name.clone(),
                    RouteTable {
                        name,
                        ..RouteTable::default()
                    },
                );
            }
        }
        // Names do not change on expiry, so subscriptions stay as they are.
        self.publish("initial_fetch_timeout", current.clone(), warming, received);
    }

    /// The next response of the stream (`None` when it ends); a warming deadline that
    /// passes meanwhile is applied first.
    async fn next_response<T: prost::Message + Default>(
        &self,
        responses: &mut tonic::Streaming<T>,
        warming: &mut Warming,
        current: &mut DynamicResources,
        received: &[String],
    ) -> Result<Option<T>, StreamError> {
        loop {
            tokio::select! {
                message = responses.message() => return Ok(message?),
                () = warming.next_expiry() => self.expire(warming, current, received),
            }
        }
    }

    async fn sotw(&self, accepted: &mut Accepted) -> Result<(), StreamError> {
        let mut client = self.connect().await?;
        let (tx, rx) = mpsc::channel(16);
        let versions = &mut accepted.type_versions;
        let request = |type_url: &str, names: Vec<String>, versions: &HashMap<String, String>| {
            DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.to_string(),
                version_info: versions.get(type_url).cloned().unwrap_or_default(),
                resource_names: names,
                ..Default::default()
            }
        };
        for type_url in wildcard_types(self.source) {
            let _ = tx.send(request(type_url, Vec::new(), versions)).await;
        }
        let mut current = self.store.dynamic();
        let mut named = NamedSubscriptions::new();
        let mut nonces: HashMap<String, String> = HashMap::new();
        let dependencies = self.store.dependencies();
        for request in
            self.sotw_subscriptions(&dependencies, &mut named, &mut current, versions, &nonces)
        {
            let _ = tx.send(request).await;
        }
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut received = Vec::new();
        let mut warming = Warming::default();
        warming.track(&dependencies);
        while let Some(response) = self
            .next_response(&mut responses, &mut warming, &mut current, &received)
            .await?
        {
            let type_url = response.type_url.clone();
            // Listeners and clusters are whole sets; EDS and RDS responses name only what
            // they carry, and an absent one is not deleted.
            let replace = type_url == type_urls::LISTENER || type_url == type_urls::CLUSTER;
            let (rejected, next) = convert_all(
                &type_url,
                &response.version_info,
                response.resources.iter().map(|a| (None, a)),
                &current,
                replace,
            );
            current = next;
            if !received.contains(&type_url) {
                received.push(type_url.clone());
            }
            let dependencies = self.publish(&type_url, current.clone(), &mut warming, &received);
            if rejected.is_empty() {
                versions.insert(type_url.clone(), response.version_info.clone());
            } else {
                warn!(%type_url, version = %response.version_info, errors = %nack(&rejected).message, "NACK");
            }
            nonces.insert(type_url.clone(), response.nonce.clone());
            let ack = DiscoveryRequest {
                response_nonce: response.nonce,
                error_detail: (!rejected.is_empty()).then(|| nack(&rejected)),
                resource_names: named
                    .get(type_url.as_str())
                    .map(|n| n.iter().cloned().collect())
                    .unwrap_or_default(),
                ..request(&type_url, Vec::new(), versions)
            };
            if tx.send(ack).await.is_err() {
                break;
            }
            for request in
                self.sotw_subscriptions(&dependencies, &mut named, &mut current, versions, &nonces)
            {
                if tx.send(request).await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// State of the world: a request for every named type whose wanted names changed (the
    /// full new list), dropping the resources no longer wanted.
    fn sotw_subscriptions(
        &self,
        dependencies: &[(Dependency, bool)],
        named: &mut NamedSubscriptions,
        current: &mut DynamicResources,
        versions: &HashMap<String, String>,
        nonces: &HashMap<String, String>,
    ) -> Vec<DiscoveryRequest> {
        let mut requests = Vec::new();
        for (type_url, names) in wanted(dependencies) {
            let had = named.get(type_url);
            if had == Some(&names) || (had.is_none() && names.is_empty()) {
                continue;
            }
            for gone in had.into_iter().flat_map(|h| h.difference(&names)) {
                forget(current, type_url, gone);
            }
            debug!(%type_url, ?names, "subscribing");
            requests.push(DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.to_string(),
                version_info: versions.get(type_url).cloned().unwrap_or_default(),
                resource_names: names.iter().cloned().collect(),
                response_nonce: nonces.get(type_url).cloned().unwrap_or_default(),
                ..Default::default()
            });
            named.insert(type_url, names);
        }
        requests
    }

    async fn delta(&self, accepted: &mut Accepted) -> Result<(), StreamError> {
        let mut client = self.connect().await?;
        let (tx, rx) = mpsc::channel(16);
        let mut current = self.store.dynamic();
        let known = &mut accepted.resource_versions;
        for type_url in wildcard_types(self.source) {
            // Reconnect: tell the server what we hold, so it sends only what changed and
            // removes what was deleted meanwhile.
            let initial = known.get(type_url).cloned().unwrap_or_default();
            let _ = tx
                .send(DeltaDiscoveryRequest {
                    node: Some(self.node.clone()),
                    type_url: type_url.to_string(),
                    initial_resource_versions: initial.into_iter().collect(),
                    ..Default::default()
                })
                .await;
        }
        let mut named = NamedSubscriptions::new();
        let dependencies = self.store.dependencies();
        for request in self.delta_subscriptions(&dependencies, &mut named, &mut current, known) {
            let _ = tx.send(request).await;
        }
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut received = Vec::new();
        let mut warming = Warming::default();
        warming.track(&dependencies);
        while let Some(response) = self
            .next_response(&mut responses, &mut warming, &mut current, &received)
            .await?
        {
            let type_url = response.type_url.clone();
            let updates = response
                .resources
                .iter()
                .filter_map(|r: &Resource| r.resource.as_ref().map(|a| (Some(r), a)));
            let (rejected, mut next) = convert_all(&type_url, "", updates, &current, false);
            let versions = known.entry(type_url.clone()).or_default();
            for r in &response.resources {
                if !rejected.iter().any(|x| x.name == r.name) {
                    versions.insert(r.name.clone(), r.version.clone());
                }
            }
            for name in &response.removed_resources {
                versions.remove(name);
                remove(&mut next, &type_url, name);
            }
            current = next;
            if !received.contains(&type_url) {
                received.push(type_url.clone());
            }
            let dependencies = self.publish(&type_url, current.clone(), &mut warming, &received);
            if !rejected.is_empty() {
                warn!(%type_url, errors = %nack(&rejected).message, "NACK");
            }
            let ack = DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url,
                response_nonce: response.nonce,
                error_detail: (!rejected.is_empty()).then(|| nack(&rejected)),
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                break;
            }
            for request in self.delta_subscriptions(&dependencies, &mut named, &mut current, known)
            {
                if tx.send(request).await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Delta: subscribes to newly wanted EDS/RDS names and unsubscribes from those no longer
    /// wanted (dropping their resources); the first request of a type carries the versions
    /// already held.
    fn delta_subscriptions(
        &self,
        dependencies: &[(Dependency, bool)],
        named: &mut NamedSubscriptions,
        current: &mut DynamicResources,
        known: &mut HashMap<String, BTreeMap<String, String>>,
    ) -> Vec<DeltaDiscoveryRequest> {
        let mut requests = Vec::new();
        for (type_url, names) in wanted(dependencies) {
            let first = !named.contains_key(type_url);
            let had = named.entry(type_url).or_default();
            let subscribe: Vec<String> = names.difference(had).cloned().collect();
            let unsubscribe: Vec<String> = had.difference(&names).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            let versions = known.entry(type_url.to_string()).or_default();
            for gone in &unsubscribe {
                forget(current, type_url, gone);
                versions.remove(gone);
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
            debug!(%type_url, ?subscribe, ?unsubscribe, "subscription change");
            requests.push(DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                initial_resource_versions: initial,
                ..Default::default()
            });
            *had = names;
        }
        requests
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
