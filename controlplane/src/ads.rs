//! The Aggregated Discovery Service (state of the world and delta on one gRPC stream),
//! and the per-type services (LDS, RDS, CDS, EDS, SDS) for clients that do not use ADS: the
//! same protocol state machines, each stream held to its one type.
//!
//! Each stream runs one task that owns its protocol state; it reacts to client requests
//! and to new resource sets (a `watch` channel), and writes responses to a bounded channel
//! that tonic drains. Where other control planes are known to go wrong:
//! - a response nonce that is not the last one sent is stale and ignored (SotW);
//! - a NACK (`error_detail`) is recorded and the rejected version is not sent again until
//!   the resources change;
//! - a change of subscribed names is always answered, even with an unchanged version;
//! - delta honours `initial_resource_versions` on reconnect and removes what was deleted
//!   meanwhile;
//! - every type takes wildcard or named subscriptions (EDS and RDS are always named; a
//!   state-of-the-world version covers exactly the subscribed resources, so a change to a
//!   resource a node does not subscribe to sends it nothing);
//! - pushes are make-before-break: additions in the order CDS → EDS → LDS → RDS, with the
//!   resources being removed still present, then the removals in reverse;
//! - after clusters are added or changed, their endpoints follow even when unchanged
//!   (Envoy keeps a changed EDS cluster warming until it receives them).

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use xds_types::pb::envoy::config::core::v3::Node;
use xds_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService;
use xds_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use xds_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService;
use xds_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService;
use xds_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryService;
use xds_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use xds_types::type_urls;

use crate::fleet::{Fleet, Nack};
use crate::registry::{group_name, Registry};
use crate::resources::{kind, ResourceSet, TYPES};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The ADS service; cheap to share between streams.
#[derive(Clone)]
pub struct Ads {
    groups: Arc<Registry>,
    fleet: Arc<Fleet>,
    debounce: Duration,
}

/// Debounce window: a change within this long of the previous push waits until the group
/// has been unchanged this long, so a burst of applies becomes one or two pushes; an
/// isolated change is pushed at once.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(10);

impl Ads {
    /// A service serving each node its group's resources (the group is the node's
    /// `node.cluster`, `default` when empty), recording every node's status in `fleet`.
    pub fn new(groups: Arc<Registry>, fleet: Arc<Fleet>) -> Self {
        Self {
            groups,
            fleet,
            debounce: DEFAULT_DEBOUNCE,
        }
    }

    /// Sets the debounce window (zero pushes every change at once); a burst is held at
    /// most ten times this long.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }
}

impl Ads {
    /// Spawns the task that drives one stream and returns its response stream.
    fn serve<P: Protocol>(
        &self,
        protocol: P,
        requests: impl Stream<Item = Result<P::Request, Status>> + Send + Unpin + 'static,
    ) -> Response<ResponseStream<P::Response>> {
        let (tx, rx) = mpsc::channel(16);
        let groups = self.groups.clone();
        tokio::spawn(run(protocol, requests, groups, self.debounce, tx));
        Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    fn sotw(&self) -> SotwStream {
        SotwStream {
            fleet: self.fleet.clone(),
            ..Default::default()
        }
    }

    fn delta(&self) -> DeltaStream {
        DeltaStream {
            fleet: self.fleet.clone(),
            ..Default::default()
        }
    }

    /// A per-type service's unary fetch: the node's group's resources of `type_url` that
    /// the request names (or all, for a wildcard type), at their current version.
    fn fetch(
        &self,
        type_url: &'static str,
        mut request: DiscoveryRequest,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        hold_to_type(type_url, &mut request)?;
        let group = group_of(request.node.as_ref());
        let current = self.groups.current(&group);
        let wildcard = sotw_wildcard(type_url, &request.resource_names);
        let wanted = |name: &str| wildcard || request.resource_names.iter().any(|n| n == name);
        let resources = current
            .of_type(type_url)
            .filter(|(name, _)| wanted(name))
            .map(|(_, e)| (*e.any).clone())
            .collect();
        Ok(Response::new(DiscoveryResponse {
            version_info: current.subset_version(type_url, wanted),
            resources,
            type_url: type_url.to_string(),
            ..Default::default()
        }))
    }
}

/// A discovery request of either flavour, as far as holding it to one type goes.
trait TypedRequest {
    fn type_url_mut(&mut self) -> &mut String;
}

impl TypedRequest for DiscoveryRequest {
    fn type_url_mut(&mut self) -> &mut String {
        &mut self.type_url
    }
}

impl TypedRequest for DeltaDiscoveryRequest {
    fn type_url_mut(&mut self) -> &mut String {
        &mut self.type_url
    }
}

/// A per-type service serves only its type: an empty `type_url` means it, another one is
/// refused.
fn hold_to_type(type_url: &'static str, request: &mut impl TypedRequest) -> Result<(), Status> {
    let requested = request.type_url_mut();
    if requested.is_empty() {
        *requested = type_url.to_string();
    }
    if requested != type_url {
        return Err(Status::invalid_argument(format!(
            "type_url: {requested:?} on the {} service",
            kind(type_url)
        )));
    }
    Ok(())
}

/// A per-type stream's requests, each held to `type_url` (the stream ends on another).
fn only<R: TypedRequest + Send + 'static>(
    type_url: &'static str,
    requests: Streaming<R>,
) -> impl Stream<Item = Result<R, Status>> + Send + Unpin + 'static {
    requests.map(move |request| {
        let mut request = request?;
        hold_to_type(type_url, &mut request)?;
        Ok(request)
    })
}

/// Implements one per-type discovery service (`stream_*`, `delta_*`, `fetch_*`) on [`Ads`].
macro_rules! per_type_service {
    ($service:path, $type_url:expr,
     $stream:ident: $stream_type:ident, $delta:ident: $delta_type:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $service for Ads {
            type $stream_type = ResponseStream<DiscoveryResponse>;
            type $delta_type = ResponseStream<DeltaDiscoveryResponse>;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$stream_type>, Status> {
                Ok(self.serve(self.sotw(), only($type_url, request.into_inner())))
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::$delta_type>, Status> {
                Ok(self.serve(self.delta(), only($type_url, request.into_inner())))
            }

            async fn $fetch(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch($type_url, request.into_inner())
            }
        }
    };
}

per_type_service!(
    ListenerDiscoveryService, type_urls::LISTENER,
    stream_listeners: StreamListenersStream, delta_listeners: DeltaListenersStream, fetch_listeners
);
per_type_service!(
    RouteDiscoveryService, type_urls::ROUTE_CONFIGURATION,
    stream_routes: StreamRoutesStream, delta_routes: DeltaRoutesStream, fetch_routes
);
per_type_service!(
    ClusterDiscoveryService, type_urls::CLUSTER,
    stream_clusters: StreamClustersStream, delta_clusters: DeltaClustersStream, fetch_clusters
);
per_type_service!(
    SecretDiscoveryService, type_urls::SECRET,
    stream_secrets: StreamSecretsStream, delta_secrets: DeltaSecretsStream, fetch_secrets
);
per_type_service!(
    EndpointDiscoveryService, type_urls::CLUSTER_LOAD_ASSIGNMENT,
    stream_endpoints: StreamEndpointsStream, delta_endpoints: DeltaEndpointsStream, fetch_endpoints
);

/// The group a node belongs to: its `node.cluster`, `default` when empty.
fn group_of(node: Option<&Node>) -> String {
    group_name(node.map_or("", |n| n.cluster.as_str())).to_string()
}

/// Whether a state-of-the-world request (or fetch) asks for every resource of its type:
/// it names `*`, or names nothing for listeners and clusters.
fn sotw_wildcard(type_url: &str, names: &[String]) -> bool {
    names.iter().any(|n| n == "*")
        || (names.is_empty() && (type_url == type_urls::LISTENER || type_url == type_urls::CLUSTER))
}

fn node_id(node: Option<&xds_types::pb::envoy::config::core::v3::Node>) -> String {
    node.map(|n| n.id.clone()).unwrap_or_default()
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.serve(self.sotw(), request.into_inner()))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.serve(self.delta(), request.into_inner()))
    }
}

/// One flavour of the xDS protocol (state of the world or delta) on one stream.
trait Protocol: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// The answer to a client request, if one is due.
    fn on_request(
        &mut self,
        request: Self::Request,
        current: &ResourceSet,
    ) -> Option<Self::Response>;
    /// The update for `type_url` after the resources changed, if the client lacks it.
    fn on_change(&mut self, type_url: &str, current: &ResourceSet) -> Option<Self::Response>;
    /// The node on the other end, for logs.
    fn node(&self) -> &str;
    /// The fleet view this stream reports to.
    fn fleet(&self) -> &Fleet;
    /// The node a request names.
    fn request_node(request: &Self::Request) -> Option<&Node>;
}

/// Drives one stream: client requests and resource changes in, responses out, until
/// either side goes away.
async fn run<P: Protocol>(
    mut protocol: P,
    mut requests: impl Stream<Item = Result<P::Request, Status>> + Unpin,
    groups: Arc<Registry>,
    debounce: Duration,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) {
    // The first request names the node, and so its group.
    let first = match requests.next().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
        None => return,
    };
    let group = group_of(P::request_node(&first));
    let mut resources = groups.subscribe(&group);
    let mut pushed = resources.borrow_and_update().clone();
    if let Some(response) = protocol.on_request(first, &pushed) {
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
    debug!(node = %protocol.node(), %group, "serving group");
    let mut last_push = tokio::time::Instant::now();
    loop {
        tokio::select! {
            message = requests.next() => match message {
                Some(Ok(request)) => {
                    let current = resources.borrow().clone();
                    if let Some(response) = protocol.on_request(request, &current) {
                        if tx.send(Ok(response)).await.is_err() { break; }
                    }
                }
                None => break,
                Some(Err(status)) => {
                    debug!(node = %protocol.node(), %status, "stream ended");
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            },
            changed = resources.changed() => {
                if changed.is_err() { break; }
                // A change right after a push is part of a burst: wait for it to settle.
                // An isolated change goes out at once.
                if last_push.elapsed() < debounce {
                    settle(&mut resources, debounce).await;
                }
                last_push = tokio::time::Instant::now();
                let next = resources.borrow_and_update().clone();
                for (type_url, set) in push_steps(&pushed, &next) {
                    if let Some(response) = protocol.on_change(type_url, &set) {
                        if tx.send(Ok(response)).await.is_err() { return; }
                    }
                }
                pushed = next;
            }
        }
    }
    protocol.fleet().disconnected(protocol.node());
    info!(node = %protocol.node(), "stream closed");
}

/// Waits until the group has been quiet for `quiet` (at most ten times that), so a burst
/// of changes becomes one push.
async fn settle(resources: &mut watch::Receiver<Arc<ResourceSet>>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet * 10;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return;
        }
        match tokio::time::timeout(wait, resources.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// The pushes from `pushed` to `next`, make-before-break: every type in [`TYPES`] order
/// with the removed resources still present, then (only when something is removed) every
/// type in reverse with the final set. A step that changes nothing for a stream sends
/// nothing.
fn push_steps(
    pushed: &Arc<ResourceSet>,
    next: &Arc<ResourceSet>,
) -> Vec<(&'static str, Arc<ResourceSet>)> {
    match next.bridge_from(pushed) {
        None => TYPES.iter().map(|t| (t.url, next.clone())).collect(),
        Some(bridge) => {
            let bridge = Arc::new(bridge);
            let adds = TYPES.iter().map(|t| (t.url, bridge.clone()));
            let removals = TYPES.iter().rev().map(|t| (t.url, next.clone()));
            adds.chain(removals).collect()
        }
    }
}

/// The subscription as the fleet view shows it: `None` for a wildcard.
fn shown(wildcard: bool, names: &BTreeSet<String>) -> Option<Vec<String>> {
    (!wildcard).then(|| names.iter().cloned().collect())
}

/// State-of-the-world protocol state of one type on one stream.
#[derive(Debug, Default)]
struct SotwType {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    sent_version: Option<String>,
    /// Name → version of the resources in the last response.
    sent: HashMap<String, String>,
    nonce: String,
    acked_version: Option<String>,
}

#[derive(Debug, Default)]
struct SotwStream {
    fleet: Arc<Fleet>,
    node: String,
    types: HashMap<String, SotwType>,
    nonces: u64,
    /// Clusters added or changed by the last cluster push: the next endpoints push is due
    /// even if the endpoints did not change.
    clusters_changed: bool,
}

impl SotwStream {
    fn handle_request(
        &mut self,
        request: DiscoveryRequest,
        current: &ResourceSet,
    ) -> Option<DiscoveryResponse> {
        if self.node.is_empty() {
            self.node = node_id(request.node.as_ref());
            self.fleet
                .connected(&request.node.clone().unwrap_or_default(), false);
            info!(node = %self.node, "sotw stream opened");
        }
        let type_url = request.type_url.clone();
        let state = self.types.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() && request.response_nonce != state.nonce {
            debug!(node = %self.node, %type_url, nonce = %request.response_nonce, "stale nonce ignored");
            return None;
        }
        if let Some(error) = &request.error_detail {
            warn!(node = %self.node, %type_url, version = ?state.sent_version, error = %error.message, "NACK");
            let nack = Nack {
                version: state.sent_version.clone().unwrap_or_default(),
                error: error.message.clone(),
            };
            self.fleet
                .update(&self.node, &type_url, |t| t.last_nack = Some(nack));
        } else if !request.response_nonce.is_empty() {
            state.acked_version = Some(request.version_info.clone());
            self.fleet.update(&self.node, &type_url, |t| {
                t.acked_version = Some(request.version_info.clone())
            });
            debug!(node = %self.node, %type_url, version = %request.version_info, "ACK");
        }
        let wildcard = sotw_wildcard(&type_url, &request.resource_names);
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        let subscribed = shown(wildcard, &names);
        let names = (!wildcard).then_some(names);
        let first = request.response_nonce.is_empty() && state.sent_version.is_none();
        let changed = names != state.names;
        state.names = names;
        if changed || first {
            self.fleet
                .update(&self.node, &type_url, |t| t.subscribed = subscribed);
        }
        (first || changed)
            .then(|| self.push(&type_url, current, true))
            .flatten()
    }

    /// A response for `type_url` when the client is subscribed and lacks this version
    /// (or `force`: a new subscription is always answered).
    fn push(
        &mut self,
        type_url: &str,
        current: &ResourceSet,
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let resend_endpoints = type_url == type_urls::CLUSTER_LOAD_ASSIGNMENT
            && std::mem::take(&mut self.clusters_changed);
        let state = self.types.get_mut(type_url)?;
        let wanted = |name: &str| state.names.as_ref().is_none_or(|n| n.contains(name));
        let version = current.subset_version(type_url, wanted);
        if !force && !resend_endpoints && state.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        let sent: HashMap<String, String> = current
            .of_type(type_url)
            .filter(|(name, _)| wanted(name))
            .map(|(name, e)| (name.clone(), e.version.clone()))
            .collect();
        let resources = current
            .of_type(type_url)
            .filter(|(name, _)| sent.contains_key(*name))
            .map(|(_, e)| (*e.any).clone())
            .collect();
        if type_url == type_urls::CLUSTER {
            self.clusters_changed = sent.iter().any(|(n, v)| state.sent.get(n) != Some(v));
        }
        state.sent = sent;
        self.nonces += 1;
        state.nonce = self.nonces.to_string();
        state.sent_version = Some(version.clone());
        self.fleet.update(&self.node, type_url, |t| {
            t.sent_version = Some(version.clone())
        });
        debug!(node = %self.node, %type_url, %version, "sotw push");
        Some(DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_string(),
            nonce: state.nonce.clone(),
            ..Default::default()
        })
    }
}

/// Delta protocol state of one type on one stream.
#[derive(Debug, Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has: name → version.
    known: HashMap<String, String>,
    started: bool,
    /// Nonce and system version of the last response, to match its ACK or NACK.
    pending: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct DeltaStream {
    fleet: Arc<Fleet>,
    node: String,
    types: HashMap<String, DeltaType>,
    nonces: u64,
    /// Clusters added or changed by the last cluster push: their endpoints are due next,
    /// even if unchanged.
    clusters_changed: Vec<String>,
}

impl DeltaStream {
    fn handle_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        current: &ResourceSet,
    ) -> Option<DeltaDiscoveryResponse> {
        if self.node.is_empty() {
            self.node = node_id(request.node.as_ref());
            self.fleet
                .connected(&request.node.clone().unwrap_or_default(), true);
            info!(node = %self.node, "delta stream opened");
        }
        let type_url = request.type_url.clone();
        let state = self.types.entry(type_url.clone()).or_default();
        let answered = state.pending.take_if(|(nonce, _)| {
            !request.response_nonce.is_empty() && *nonce == request.response_nonce
        });
        if let Some((_, version)) = answered {
            match &request.error_detail {
                Some(error) => {
                    warn!(node = %self.node, %type_url, %version, error = %error.message, "NACK");
                    let nack = Nack {
                        version,
                        error: error.message.clone(),
                    };
                    self.fleet
                        .update(&self.node, &type_url, |t| t.last_nack = Some(nack));
                }
                None => self
                    .fleet
                    .update(&self.node, &type_url, |t| t.acked_version = Some(version)),
            }
        }
        let first = !state.started;
        if first {
            state.started = true;
            state.known = request.initial_resource_versions.clone();
            state.wildcard = request.resource_names_subscribe.is_empty();
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.known.remove(name);
            }
        }
        let subscription_changed = !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        if first || subscription_changed {
            let subscribed = shown(state.wildcard, &state.names);
            self.fleet
                .update(&self.node, &type_url, |t| t.subscribed = subscribed);
            self.push(&type_url, current, first)
        } else {
            None
        }
    }

    /// The resources the client lacks and the names it must drop; `None` when there is
    /// nothing to say (unless `always`, for the first answer of a type).
    fn push(
        &mut self,
        type_url: &str,
        current: &ResourceSet,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let resend: Vec<String> = if type_url == type_urls::CLUSTER_LOAD_ASSIGNMENT {
            let clusters = std::mem::take(&mut self.clusters_changed);
            let present = |name: &String| {
                current
                    .by_type
                    .get(type_urls::CLUSTER_LOAD_ASSIGNMENT)
                    .is_some_and(|m| m.contains_key(name))
            };
            clusters
                .iter()
                .filter_map(|c| current.by_type.get(type_urls::CLUSTER)?.get(c))
                .flat_map(|e| e.uses.iter().map(|(_, name)| name.clone()))
                .filter(present)
                .collect()
        } else {
            Vec::new()
        };
        let state = self.types.get_mut(type_url)?;
        for name in &resend {
            state.known.remove(name);
        }
        let wanted = |name: &str| state.wildcard || state.names.contains(name);
        let resources: Vec<Resource> = current
            .of_type(type_url)
            .filter(|(name, entry)| wanted(name) && state.known.get(*name) != Some(&entry.version))
            .map(|(name, entry)| Resource {
                name: name.clone(),
                version: entry.version.clone(),
                resource: Some((*entry.any).clone()),
                ..Default::default()
            })
            .collect();
        let present: BTreeSet<&String> = current.of_type(type_url).map(|(n, _)| n).collect();
        let removed: Vec<String> = state
            .known
            .keys()
            .filter(|name| !present.contains(name) || !wanted(name))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        for r in &resources {
            state.known.insert(r.name.clone(), r.version.clone());
        }
        if type_url == type_urls::CLUSTER {
            self.clusters_changed = resources.iter().map(|r| r.name.clone()).collect();
        }
        for name in &removed {
            state.known.remove(name);
        }
        self.nonces += 1;
        let version = current.type_version(type_url);
        state.pending = Some((self.nonces.to_string(), version.clone()));
        self.fleet.update(&self.node, type_url, |t| {
            t.sent_version = Some(version.clone())
        });
        debug!(node = %self.node, %type_url, updated = resources.len(), removed = removed.len(), "delta push");
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: self.nonces.to_string(),
            ..Default::default()
        })
    }
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;

    fn request_node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    type Response = DiscoveryResponse;

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        current: &ResourceSet,
    ) -> Option<DiscoveryResponse> {
        self.handle_request(request, current)
    }

    fn on_change(&mut self, type_url: &str, current: &ResourceSet) -> Option<DiscoveryResponse> {
        self.push(type_url, current, false)
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;

    fn request_node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }
    type Response = DeltaDiscoveryResponse;

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        current: &ResourceSet,
    ) -> Option<DeltaDiscoveryResponse> {
        self.handle_request(request, current)
    }

    fn on_change(
        &mut self,
        type_url: &str,
        current: &ResourceSet,
    ) -> Option<DeltaDiscoveryResponse> {
        self.push(type_url, current, false)
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DEFAULT_GROUP;

    fn cluster(name: &str, port: u16) -> String {
        format!(
            "\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: {name}\ntype: STATIC\n\
             load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}\n"
        )
    }

    fn eds_cluster(name: &str, connect_timeout: &str) -> String {
        format!(
            "\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: {name}\ntype: EDS\n\
             connect_timeout: {connect_timeout}\neds_cluster_config: {{eds_config: {{ads: {{}}}}}}\n"
        )
    }

    fn endpoints(name: &str, port: u16) -> String {
        format!(
            "\"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\ncluster_name: {name}\n\
             endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]\n"
        )
    }

    fn rds_listener(route_config: &str) -> String {
        format!(
            r#""@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: web
address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: web
      http_filters: [{{name: router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
      rds: {{route_config_name: {route_config}, config_source: {{ads: {{}}}}}}
"#
        )
    }

    fn routes(name: &str, cluster: &str) -> String {
        format!(
            "\"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\nname: {name}\n\
             virtual_hosts: [{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]\n"
        )
    }

    fn sotw_request(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn resource_names(r: &DiscoveryResponse) -> Vec<String> {
        let mut names: Vec<String> = r
            .resources
            .iter()
            .map(|a| {
                match a.type_url.as_str() {
                    type_urls::CLUSTER => {
                        <xds_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(a.value.as_slice()).unwrap().name
                    }
                    type_urls::CLUSTER_LOAD_ASSIGNMENT => {
                        <xds_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as prost::Message>::decode(a.value.as_slice()).unwrap().cluster_name
                    }
                    type_urls::ROUTE_CONFIGURATION => {
                        <xds_types::pb::envoy::config::route::v3::RouteConfiguration as prost::Message>::decode(a.value.as_slice()).unwrap().name
                    }
                    _ => <xds_types::pb::envoy::config::listener::v3::Listener as prost::Message>::decode(a.value.as_slice()).unwrap().name,
                }
            })
            .collect();
        names.sort();
        names
    }

    /// A SotW stream subscribed to every type: clusters and listeners by wildcard,
    /// endpoints and routes by the given names.
    fn sotw_subscribed(set: &ResourceSet, eds: &[&str], rds: &[&str]) -> SotwStream {
        let mut stream = SotwStream::default();
        for (type_url, names) in [
            (type_urls::CLUSTER, &[][..]),
            (type_urls::CLUSTER_LOAD_ASSIGNMENT, eds),
            (type_urls::LISTENER, &[][..]),
            (type_urls::ROUTE_CONFIGURATION, rds),
        ] {
            let response = stream
                .handle_request(sotw_request(type_url, names, ""), set)
                .unwrap();
            stream.handle_request(sotw_request(type_url, names, &response.nonce), set);
        }
        stream
    }

    /// Drives one change through [`push_steps`], returning `(type, resource names)` of
    /// every response in the order sent.
    fn drive(
        stream: &mut SotwStream,
        before: &ResourceSet,
        after: &ResourceSet,
    ) -> Vec<(&'static str, Vec<String>)> {
        push_steps(&Arc::new(before.clone()), &Arc::new(after.clone()))
            .into_iter()
            .filter_map(|(type_url, set)| {
                let response = stream.push(type_url, &set, false)?;
                Some((kind(type_url), resource_names(&response)))
            })
            .collect()
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_switch_to_new_cluster_and_routes_is_make_before_break() {
        let before = set(&[
            eds_cluster("blue", "1s"),
            endpoints("blue", 1),
            rds_listener("routes"),
            routes("routes", "blue"),
        ]);
        let after = set(&[
            eds_cluster("green", "1s"),
            endpoints("green", 2),
            rds_listener("routes"),
            routes("routes", "green"),
        ]);
        let mut stream = sotw_subscribed(&before, &["blue"], &["routes"]);
        // The node subscribes to green's endpoints when it sees the green cluster; here
        // it already does, as it would by the time the endpoints step runs.
        stream
            .types
            .get_mut(type_urls::CLUSTER_LOAD_ASSIGNMENT)
            .unwrap()
            .names = Some(["blue".to_string(), "green".to_string()].into());
        let pushes = drive(&mut stream, &before, &after);
        assert_eq!(
            pushes,
            vec![
                ("cluster", strings(&["blue", "green"])),
                ("endpoints", strings(&["blue", "green"])),
                ("route configuration", strings(&["routes"])),
                ("endpoints", strings(&["green"])),
                ("cluster", strings(&["green"])),
            ],
            "new cluster and endpoints before the routes move; old ones removed after"
        );
    }

    #[test]
    fn a_changed_cluster_is_followed_by_its_unchanged_endpoints() {
        let before = set(&[eds_cluster("web", "1s"), endpoints("web", 1)]);
        let after = set(&[eds_cluster("web", "2s"), endpoints("web", 1)]);
        let mut stream = sotw_subscribed(&before, &["web"], &[]);
        let pushes = drive(&mut stream, &before, &after);
        assert_eq!(
            pushes,
            vec![
                ("cluster", strings(&["web"])),
                ("endpoints", strings(&["web"])),
            ]
        );
        // Nothing changed for this node: nothing is sent.
        assert!(drive(&mut stream, &after, &after).is_empty());
    }

    #[test]
    fn a_change_to_endpoints_a_node_does_not_subscribe_to_sends_it_nothing() {
        let before = set(&[eds_cluster("a", "1s"), endpoints("a", 1), endpoints("b", 2)]);
        let after = set(&[eds_cluster("a", "1s"), endpoints("a", 1), endpoints("b", 3)]);
        let mut stream = sotw_subscribed(&before, &["a"], &[]);
        assert!(drive(&mut stream, &before, &after).is_empty());
    }

    #[test]
    fn delta_resends_the_endpoints_of_a_changed_cluster() {
        let before = set(&[eds_cluster("web", "1s"), endpoints("web", 1)]);
        let after = set(&[eds_cluster("web", "2s"), endpoints("web", 1)]);
        let mut stream = DeltaStream::default();
        stream.handle_request(subscribe(&[]), &before).unwrap();
        let eds = DeltaDiscoveryRequest {
            type_url: type_urls::CLUSTER_LOAD_ASSIGNMENT.to_string(),
            resource_names_subscribe: vec!["web".into()],
            ..Default::default()
        };
        assert_eq!(
            names(&stream.handle_request(eds, &before).unwrap()),
            vec!["web"]
        );
        let clusters = stream.push(type_urls::CLUSTER, &after, false).unwrap();
        assert_eq!(names(&clusters), vec!["web"]);
        let endpoints = stream
            .push(type_urls::CLUSTER_LOAD_ASSIGNMENT, &after, false)
            .unwrap();
        assert_eq!(names(&endpoints), vec!["web"]);
    }

    #[test]
    fn delta_unsubscribed_endpoints_are_no_longer_sent() {
        let before = set(&[eds_cluster("a", "1s"), endpoints("a", 1), endpoints("b", 2)]);
        let mut stream = DeltaStream::default();
        let eds = |subscribe: &[&str], unsubscribe: &[&str]| DeltaDiscoveryRequest {
            type_url: type_urls::CLUSTER_LOAD_ASSIGNMENT.to_string(),
            resource_names_subscribe: strings(subscribe),
            resource_names_unsubscribe: strings(unsubscribe),
            ..Default::default()
        };
        let first = stream
            .handle_request(eds(&["a", "b"], &[]), &before)
            .unwrap();
        assert_eq!(names(&first), vec!["a", "b"]);
        stream.handle_request(eds(&[], &["b"]), &before);
        let after = set(&[eds_cluster("a", "1s"), endpoints("a", 1), endpoints("b", 3)]);
        assert!(stream
            .push(type_urls::CLUSTER_LOAD_ASSIGNMENT, &after, false)
            .is_none());
    }

    #[tokio::test]
    async fn a_burst_of_changes_becomes_one_push() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::FileStore::open(dir.path()).unwrap();
        let registry = Arc::new(Registry::open(Box::new(store)).await.unwrap());
        let request = crate::registry::Request::default();
        registry
            .replace(DEFAULT_GROUP, set(&[cluster("a", 1)]), "test", &request)
            .await
            .unwrap();
        // A window wide enough that the fsynced store's own pace on a busy disk (each
        // change below is a durable write) stays inside it: only the debounce is tested.
        let ads = Ads::new(registry.clone(), Arc::new(Fleet::default()))
            .with_debounce(Duration::from_millis(250));
        let (requests, rx) = mpsc::channel(4);
        let mut responses = ads
            .serve(ads.sotw(), tokio_stream::wrappers::ReceiverStream::new(rx))
            .into_inner();
        requests
            .send(Ok(sotw_request(type_urls::CLUSTER, &[], "")))
            .await
            .unwrap();
        let first = responses.next().await.unwrap().unwrap();
        requests
            .send(Ok(sotw_request(type_urls::CLUSTER, &[], &first.nonce)))
            .await
            .unwrap();
        for port in 2..=21 {
            registry
                .replace(DEFAULT_GROUP, set(&[cluster("a", port)]), "test", &request)
                .await
                .unwrap();
            // Give the stream the chance to push between changes.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = registry
            .current(DEFAULT_GROUP)
            .type_version(type_urls::CLUSTER);
        let mut pushes = Vec::new();
        while let Ok(Some(Ok(push))) =
            tokio::time::timeout(Duration::from_millis(1500), responses.next()).await
        {
            pushes.push(push.version_info);
        }
        // Without the quiet time this pushes about 18 times.
        assert!(
            !pushes.is_empty() && pushes.len() <= 3,
            "20 changes in a burst, {} pushes",
            pushes.len()
        );
        assert_eq!(
            pushes.last(),
            Some(&last),
            "the burst ends at the last change"
        );
    }

    fn set(docs: &[String]) -> ResourceSet {
        ResourceSet::from_yaml(&docs.join("---\n")).unwrap()
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    fn subscribe(initial: &[(&str, &str)]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_urls::CLUSTER.to_string(),
            initial_resource_versions: initial
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn delta_reconnect_sends_only_changes_and_removes_what_was_deleted() {
        let before = set(&[cluster("a", 1), cluster("b", 2), cluster("c", 3)]);
        let version = |s: &ResourceSet, n: &str| s.by_type[type_urls::CLUSTER][n].version.clone();
        // While the node was away: `b` changed, `c` was deleted, `d` was added.
        let after = set(&[cluster("a", 1), cluster("b", 20), cluster("d", 4)]);
        let mut stream = DeltaStream::default();
        let known = [
            ("a", version(&before, "a")),
            ("b", version(&before, "b")),
            ("c", version(&before, "c")),
        ];
        let known: Vec<(&str, &str)> = known.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = stream.handle_request(subscribe(&known), &after).unwrap();
        assert_eq!(names(&response), vec!["b", "d"], "`a` is not re-sent");
        assert_eq!(response.removed_resources, vec!["c".to_string()]);
    }

    #[test]
    fn delta_pushes_only_what_changed_and_nothing_when_nothing_did() {
        let v1 = set(&[cluster("a", 1), cluster("b", 2)]);
        let mut stream = DeltaStream::default();
        let first = stream.handle_request(subscribe(&[]), &v1).unwrap();
        assert_eq!(names(&first), vec!["a", "b"]);
        assert!(
            stream.push(type_urls::CLUSTER, &v1, false).is_none(),
            "no change, no push"
        );
        let v2 = set(&[cluster("a", 1), cluster("b", 22)]);
        let update = stream.push(type_urls::CLUSTER, &v2, false).unwrap();
        assert_eq!(names(&update), vec!["b"]);
    }

    #[test]
    fn sotw_ignores_stale_nonces_and_does_not_resend_a_nacked_version() {
        let v1 = set(&[cluster("a", 1)]);
        let mut stream = SotwStream::default();
        let request = |nonce: &str, error: bool| DiscoveryRequest {
            type_url: type_urls::CLUSTER.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: error.then(|| xds_types::pb::google::rpc::Status {
                message: "bad".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let first = stream.handle_request(request("", false), &v1).unwrap();
        assert_eq!(first.resources.len(), 1);
        // A NACK of that response: recorded, and nothing is re-sent.
        assert!(stream
            .handle_request(request(&first.nonce, true), &v1)
            .is_none());
        assert!(
            stream.push(type_urls::CLUSTER, &v1, false).is_none(),
            "rejected version not re-sent"
        );
        // A stale nonce is ignored even if it carries a subscription change.
        let mut stale = request("not-the-last-nonce", false);
        stale.resource_names = vec!["other".into()];
        assert!(stream.handle_request(stale, &v1).is_none());
        // The next change is pushed.
        let v2 = set(&[cluster("a", 2)]);
        assert!(stream.push(type_urls::CLUSTER, &v2, false).is_some());
    }
}
