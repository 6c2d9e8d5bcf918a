//! The xDS client: one ADS stream (state of the world or delta) to the control plane named
//! in the bootstrap's `dynamic_resources`.
//!
//! Each response is converted resource by resource with `xds-types` (the same code the
//! control plane validates with): valid resources apply, rejected ones are named with their
//! field paths in one NACK, and a rejected resource keeps its last accepted version. Every
//! accepted update becomes one new snapshot. When the control plane is away the last good
//! config keeps serving and the client reconnects with exponential back-off and jitter.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};
use xds_types::bootstrap::AdsSource;
use xds_types::pb::envoy::config::cluster::v3::Cluster as ClusterPb;
use xds_types::pb::envoy::config::core::v3::Node;
use xds_types::pb::envoy::config::listener::v3::Listener as ListenerPb;
use xds_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, Resource,
};
use xds_types::pb::google::protobuf::Any;
use xds_types::pb::google::rpc::Status as RpcStatus;
use xds_types::{type_urls, Cluster, Listener, ValidationError};

use crate::config::{DynamicResources, SnapshotStore};
use crate::listener::ListenerManager;

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

/// The types this client subscribes to, clusters first (make-before-break).
fn subscribed(source: &AdsSource) -> Vec<&'static str> {
    let mut types = Vec::new();
    if source.clusters {
        types.push(type_urls::CLUSTER);
    }
    if source.listeners {
        types.push(type_urls::LISTENER);
    }
    types
}

impl Client<'_> {
    async fn connect(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, StreamError> {
        let snapshot = self.store.load();
        let endpoint = snapshot
            .clusters
            .get(&self.source.cluster)
            .and_then(|c| c.pick())
            .ok_or_else(|| StreamError::NoEndpoint(self.source.cluster.clone()))?;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", endpoint.authority))?
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(30))
                .connect()
                .await?;
        info!(control_plane = %endpoint.authority, delta = self.source.delta, "xDS connected");
        Ok(AggregatedDiscoveryServiceClient::new(channel))
    }

    /// Publishes the dynamic resources after an update of `type_url`.
    fn publish(&self, type_url: &str, dynamic: DynamicResources) {
        let snapshot = self.store.publish_dynamic(dynamic);
        if let Err(error) = self.listeners.reconcile(&snapshot) {
            warn!(%error, "listener from xDS failed to start");
        }
        debug!(%type_url, version = snapshot.version, "xDS update applied");
    }

    fn mark_received(&self, received: &mut Vec<String>, type_url: &str) {
        if !received.iter().any(|t| t == type_url) {
            received.push(type_url.to_string());
        }
        if subscribed(self.source)
            .iter()
            .all(|t| received.iter().any(|r| r == t))
            && !self.ready.swap(true, Ordering::Relaxed)
        {
            info!("first xDS sync complete");
        }
    }

    async fn sotw(&self, accepted: &mut Accepted) -> Result<(), StreamError> {
        let mut client = self.connect().await?;
        let (tx, rx) = mpsc::channel(16);
        for type_url in subscribed(self.source) {
            let _ = tx
                .send(DiscoveryRequest {
                    node: Some(self.node.clone()),
                    type_url: type_url.to_string(),
                    version_info: accepted
                        .type_versions
                        .get(type_url)
                        .cloned()
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .await;
        }
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let versions = &mut accepted.type_versions;
        let mut received = Vec::new();
        let mut current = self.store.dynamic();
        while let Some(response) = responses.message().await? {
            let type_url = response.type_url.clone();
            let (rejected, next) = convert_all(
                &type_url,
                response.resources.iter().map(|a| (None, a)),
                &current,
                true,
            );
            current = next;
            self.publish(&type_url, current.clone());
            if rejected.is_empty() {
                versions.insert(type_url.clone(), response.version_info.clone());
            } else {
                warn!(%type_url, version = %response.version_info, errors = %nack(&rejected).message, "NACK");
            }
            let request = DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.clone(),
                version_info: versions.get(&type_url).cloned().unwrap_or_default(),
                response_nonce: response.nonce,
                error_detail: (!rejected.is_empty()).then(|| nack(&rejected)),
                ..Default::default()
            };
            self.mark_received(&mut received, &type_url);
            if tx.send(request).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    async fn delta(&self, accepted: &mut Accepted) -> Result<(), StreamError> {
        let mut client = self.connect().await?;
        let (tx, rx) = mpsc::channel(16);
        let mut current = self.store.dynamic();
        let known = &mut accepted.resource_versions;
        for type_url in subscribed(self.source) {
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
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut received = Vec::new();
        while let Some(response) = responses.message().await? {
            let type_url = response.type_url.clone();
            let versions = known.entry(type_url.clone()).or_default();
            let updates = response
                .resources
                .iter()
                .filter_map(|r: &Resource| r.resource.as_ref().map(|a| (Some(r), a)));
            let (rejected, mut next) = convert_all(&type_url, updates, &current, false);
            for r in &response.resources {
                if !rejected.iter().any(|x| x.name == r.name) {
                    versions.insert(r.name.clone(), r.version.clone());
                }
            }
            for name in &response.removed_resources {
                versions.remove(name);
                if type_url == type_urls::LISTENER {
                    next.listeners.remove(name);
                } else if type_url == type_urls::CLUSTER {
                    next.clusters.remove(name);
                }
            }
            current = next;
            self.publish(&type_url, current.clone());
            if !rejected.is_empty() {
                warn!(%type_url, errors = %nack(&rejected).message, "NACK");
            }
            self.mark_received(&mut received, &type_url);
            let request = DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url,
                response_nonce: response.nonce,
                error_detail: (!rejected.is_empty()).then(|| nack(&rejected)),
                ..Default::default()
            };
            if tx.send(request).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// A resource the client refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rejection {
    /// The resource name, or `resources[i]` when it could not be read.
    name: String,
    error: String,
}

/// The NACK for `rejected`: every rejected resource with its field path.
fn nack(rejected: &[Rejection]) -> RpcStatus {
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

/// Converts every resource of a response. `replace` (state of the world): the response is
/// the whole set, so resources absent from it are removed, but a rejected resource keeps
/// its previously accepted version. Returns the rejections and the resulting resources.
fn convert_all<'r>(
    type_url: &str,
    resources: impl Iterator<Item = (Option<&'r Resource>, &'r Any)>,
    current: &DynamicResources,
    replace: bool,
) -> (Vec<Rejection>, DynamicResources) {
    let mut next = current.clone();
    let mut rejected = Vec::new();
    let mut listeners = BTreeMap::new();
    let mut clusters = BTreeMap::new();
    for (index, (resource, any)) in resources.enumerate() {
        let label = || resource.map_or_else(|| format!("resources[{index}]"), |r| r.name.clone());
        let outcome = match type_url {
            type_urls::LISTENER => convert_into::<ListenerPb, Listener>(
                any,
                type_url,
                |pb: &ListenerPb| Listener::try_from(pb),
                |l| &l.name,
                &current.listeners,
                &mut listeners,
            ),
            type_urls::CLUSTER => convert_into::<ClusterPb, Cluster>(
                any,
                type_url,
                |pb: &ClusterPb| Cluster::try_from(pb),
                |c| &c.name,
                &current.clusters,
                &mut clusters,
            ),
            other => Err((None, format!("unsupported type {other}"))),
        };
        if let Err((name, error)) = outcome {
            rejected.push(Rejection {
                name: name.unwrap_or_else(label),
                error,
            });
        }
    }
    match type_url {
        type_urls::LISTENER if replace => next.listeners = listeners,
        type_urls::LISTENER => next.listeners.extend(listeners),
        type_urls::CLUSTER if replace => next.clusters = clusters,
        type_urls::CLUSTER => next.clusters.extend(clusters),
        _ => {}
    }
    (rejected, next)
}

/// Converts one resource into `out`; a rejected one keeps its `current` version there.
fn convert_into<P, M>(
    any: &Any,
    type_url: &str,
    to_model: impl FnOnce(&P) -> Result<M, ValidationError>,
    name_of: impl Fn(&M) -> &String,
    current: &BTreeMap<String, M>,
    out: &mut BTreeMap<String, M>,
) -> Result<(), (Option<String>, String)>
where
    P: prost::Message + Default + Named,
    M: Clone,
{
    match convert::<P, M>(any, type_url, to_model) {
        Ok(model) => {
            out.insert(name_of(&model).clone(), model);
            Ok(())
        }
        Err((name, error)) => {
            if let Some(old) = name.as_ref().and_then(|n| current.get(n)) {
                out.insert(name_of(old).clone(), old.clone());
            }
            Err((name, error.to_string()))
        }
    }
}

/// Decodes one `Any` (checking unsupported fields) and converts it; on failure returns the
/// resource name when it could be read.
fn convert<P, M>(
    any: &Any,
    type_url: &str,
    to_model: impl FnOnce(&P) -> Result<M, ValidationError>,
) -> Result<M, (Option<String>, ValidationError)>
where
    P: prost::Message + Default + Named,
{
    if any.type_url != type_url {
        return Err((
            None,
            ValidationError::new(
                "",
                format!("type {:?} in a {type_url} response", any.type_url),
            ),
        ));
    }
    let name = P::decode(any.value.as_slice())
        .ok()
        .map(|p| p.name().to_string());
    let pb: P = xds_types::decode::from_bytes(&any.value, type_urls::message_name(type_url))
        .map_err(|e| (name.clone(), e))?;
    to_model(&pb).map_err(|e| (name, e))
}

/// Resources with a `name` field.
trait Named {
    fn name(&self) -> &str;
}

impl Named for ListenerPb {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for ClusterPb {
    fn name(&self) -> &str {
        &self.name
    }
}

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
        let bad = cluster_any(
            r#"{"name": "bad", "circuit_breakers": {"thresholds": [{"max_connections": 1}]}}"#,
        );
        let previous = DynamicResources::default();
        let (rejected, next) = convert_all(
            type_urls::CLUSTER,
            [(None, &good), (None, &bad)].into_iter(),
            &previous,
            true,
        );
        assert_eq!(
            vec![nack(&rejected).message],
            vec!["bad: circuit_breakers: field is not supported by sluice".to_string()]
        );
        assert!(next.clusters.contains_key("good"));
        assert!(!next.clusters.contains_key("bad"));
    }

    #[test]
    fn a_rejected_resource_keeps_its_last_accepted_version() {
        let v1 = cluster_any("name: web\nconnect_timeout: 1s");
        let (_, accepted) = convert_all(
            type_urls::CLUSTER,
            [(None, &v1)].into_iter(),
            &DynamicResources::default(),
            true,
        );
        let broken = cluster_any(r#"{"name": "web", "lb_policy": "MAGLEV"}"#);
        let (rejected, next) = convert_all(
            type_urls::CLUSTER,
            [(None, &broken)].into_iter(),
            &accepted,
            true,
        );
        assert_eq!(
            vec![nack(&rejected).message],
            vec!["web: lb_policy: MAGLEV is not supported".to_string()]
        );
        assert_eq!(next.clusters["web"].connect_timeout, Duration::from_secs(1));
    }
}
