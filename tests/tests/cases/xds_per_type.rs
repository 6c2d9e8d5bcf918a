//! The per-type discovery services (LDS, RDS, CDS, EDS) for clients that do not use ADS,
//! driven by real tonic clients over loopback: named and wildcard subscriptions, updates,
//! delta, the unary fetch, and a request of the wrong type refused. Then data planes that
//! use them (`api_config_source`), sluice and real Envoy from the same bootstraps: every
//! type on a stream of its own, and endpoints from a second control plane beside ADS.

use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use sluice_tests::client::serves;
use sluice_tests::config::{
    ads_bootstrap, api_config_source, cluster, eds_rds_resources, endpoints_doc, http2_options,
    merge, per_type_bootstrap, xds_resources,
};
use sluice_tests::process::ControlPlane;
use sluice_tests::proxy::{Kind, Proxy};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_types::pb::envoy::config::core::v3::Node;
use xds_types::pb::envoy::config::listener::v3::Listener;
use xds_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use xds_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use xds_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use xds_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use xds_types::type_urls;

fn node() -> Option<Node> {
    Some(Node {
        id: "proxyless".into(),
        ..Default::default()
    })
}

fn listener_names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|a| Listener::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a response within 10s")
        .expect("stream open")
        .expect("a response")
}

#[tokio::test]
async fn lds_named_subscription_follows_updates() {
    let (first, second) = (Upstream::start("a").await, Upstream::start("b").await);
    let (xds, listener) = (free_addr(), free_addr());
    // A second listener the client does not name: a named subscription must leave it out.
    let (other, other_addr) = (Upstream::start("other").await, free_addr());
    let with_other = |resources: String| {
        let other_listener = xds_resources(other_addr, other.addr, "other")
            .split("\n---\n")
            .find(|d| d.contains("envoy.config.listener.v3.Listener"))
            .unwrap()
            .replace("\"ingress\"", "\"other\"");
        format!("{resources}\n---\n{other_listener}")
    };
    let cp = ControlPlane::start(&with_other(xds_resources(listener, first.addr, "v1")), xds)
        .await
        .unwrap();
    let mut client = ListenerDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    // Proxyless gRPC clients name the listener they want, and leave type_url to the
    // service or set it; both are accepted.
    tx.send(DiscoveryRequest {
        node: node(),
        resource_names: vec!["ingress".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .stream_listeners(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let v1 = next(&mut responses).await;
    assert_eq!(v1.type_url, type_urls::LISTENER);
    assert_eq!(listener_names(&v1), ["ingress"]);
    tx.send(DiscoveryRequest {
        node: node(),
        type_url: type_urls::LISTENER.into(),
        version_info: v1.version_info.clone(),
        response_nonce: v1.nonce.clone(),
        resource_names: vec!["ingress".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    cp.update(&with_other(xds_resources(listener, second.addr, "v2")))
        .unwrap();
    let v2 = next(&mut responses).await;
    assert_eq!(listener_names(&v2), ["ingress"]);
    assert_ne!(
        v2.version_info, v1.version_info,
        "the update is a new version"
    );
}

#[tokio::test]
async fn cds_delta_and_eds_fetch() {
    let upstream = Upstream::start("a").await;
    let (xds, listener) = (free_addr(), free_addr());
    let _cp = ControlPlane::start(&eds_rds_resources(listener, upstream.addr, "v1", "1s"), xds)
        .await
        .unwrap();
    let mut clusters = ClusterDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: type_urls::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = clusters
        .delta_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut responses).await;
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["web"], "wildcard: every cluster");

    let mut endpoints = EndpointDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let fetched = endpoints
        .fetch_endpoints(DiscoveryRequest {
            node: node(),
            resource_names: vec!["web".into(), "absent".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.type_url, type_urls::CLUSTER_LOAD_ASSIGNMENT);
    assert_eq!(
        fetched.resources.len(),
        1,
        "only what exists of what was named"
    );
    assert!(!fetched.version_info.is_empty());
}

#[tokio::test]
async fn a_request_for_another_type_is_refused() {
    let upstream = Upstream::start("a").await;
    let (xds, listener) = (free_addr(), free_addr());
    let _cp = ControlPlane::start(&xds_resources(listener, upstream.addr, "v1"), xds)
        .await
        .unwrap();
    let mut client = ListenerDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    let status = client
        .fetch_listeners(DiscoveryRequest {
            node: node(),
            type_url: type_urls::CLUSTER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("type_url"),
        "{}",
        status.message()
    );
}

/// `eds_rds_resources` with the endpoints and routes each on a stream of its own (EDS and
/// RDS) to the static cluster `cluster`, instead of `ads: {}`.
fn over_own_streams(resources: &str, api_type: &str, cluster: &str) -> String {
    let ads = json!({ "ads": {}, "resource_api_version": "V3" }).to_string();
    assert_eq!(resources.matches(&ads).count(), 2, "{resources}");
    resources.replace(&ads, &api_config_source(api_type, cluster).to_string())
}

/// A data plane without ADS: LDS, CDS, RDS and EDS each over its own stream to
/// `sluice-cp`'s per-type services, following updates of every type.
async fn every_type_on_its_own_stream(kind: Kind, api_type: &str) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let resources = |upstream, stamp, timeout| {
        over_own_streams(
            &eds_rds_resources(listener, upstream, stamp, timeout),
            api_type,
            "xds",
        )
    };
    let cp = ControlPlane::start(&resources(first.addr, "v1", "1s"), xds)
        .await
        .unwrap();
    let _proxy = Proxy::start(
        kind,
        &per_type_bootstrap(admin, xds, api_type, "per-type"),
        admin,
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "first", "v1")).await,
        "{kind:?} serves v1 over LDS, CDS, RDS and EDS streams ({api_type})"
    );
    // A cluster and routes change (CDS, RDS), then the endpoints (EDS).
    cp.update(&resources(first.addr, "v2", "2s")).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "first", "v2")).await,
        "{kind:?} takes the v2 routes ({api_type})"
    );
    cp.update(&resources(second.addr, "v3", "2s")).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "second", "v3")).await,
        "{kind:?} follows the v3 endpoints ({api_type})"
    );
    let (ok, nodes, err) = cp.sluicectl(&["nodes"]);
    assert!(ok, "{err}");
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("per-type") && l.contains(" connected")),
        "the node, sending its id on each stream's first request only, is known: {nodes}"
    );
}

#[tokio::test]
async fn sluice_takes_every_type_on_its_own_stream() {
    every_type_on_its_own_stream(Kind::Sluice, "GRPC").await;
    every_type_on_its_own_stream(Kind::Sluice, "DELTA_GRPC").await;
}

#[tokio::test]
async fn envoy_takes_every_type_on_its_own_stream() {
    every_type_on_its_own_stream(Kind::Envoy, "GRPC").await;
    every_type_on_its_own_stream(Kind::Envoy, "DELTA_GRPC").await;
}

/// Listeners and clusters over ADS from one control plane, a cluster's endpoints over an
/// EDS stream to a second one (as Istio takes certificates from its local agent): each
/// control plane's changes apply, and when no cluster names the second one any longer,
/// the stream to it is closed, by both proxies.
async fn endpoints_from_a_second_control_plane(kind: Kind) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, eds, listener, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let resources = |stamp| {
        let all = eds_rds_resources(listener, first.addr, stamp, "1s");
        let ads = json!({ "ads": {}, "resource_api_version": "V3" }).to_string();
        let endpoints_source = format!("\"eds_config\":{ads}");
        assert!(all.contains(&endpoints_source), "{all}");
        // The endpoints come from the second control plane only.
        all.replace(
            &endpoints_source,
            &format!("\"eds_config\":{}", api_config_source("GRPC", "eds-server")),
        )
        .split("\n---\n")
        .filter(|d| !d.contains("ClusterLoadAssignment"))
        .collect::<Vec<_>>()
        .join("\n---\n")
    };
    let cp = ControlPlane::start(&resources("v1"), xds).await.unwrap();
    let endpoints_cp = ControlPlane::start(&endpoints_doc("web", first.addr).to_string(), eds)
        .await
        .unwrap();
    let mut bootstrap: Value =
        serde_json::from_str(&ads_bootstrap(admin, xds, "GRPC", "two-servers")).unwrap();
    let mut eds_cluster = cluster("eds-server", &[(eds, 1)], json!({}));
    merge(&mut eds_cluster, http2_options());
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(eds_cluster);
    let _proxy = Proxy::start(kind, &bootstrap.to_string(), admin)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "first", "v1")).await,
        "{kind:?} serves with the second control plane's endpoints"
    );
    endpoints_cp
        .update(&endpoints_doc("web", second.addr).to_string())
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "second", "v1")).await,
        "{kind:?} follows the second control plane's endpoints"
    );
    cp.update(&resources("v2")).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "second", "v2")).await,
        "{kind:?} takes the first control plane's routes, keeping the endpoints"
    );
    // The cluster no longer needs endpoints from anywhere.
    cp.update(&xds_resources(listener, first.addr, "v3"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "first", "v3")).await,
        "{kind:?} takes the static-endpoints cluster"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, nodes, _) = endpoints_cp.sluicectl(&["nodes"]);
            nodes
                .lines()
                .any(|l| l.starts_with("two-servers") && l.contains("disconnected"))
        })
        .await,
        "the EDS stream nothing needs is closed: {}",
        endpoints_cp.sluicectl(&["nodes"]).1
    );
}

#[tokio::test]
async fn sluice_takes_endpoints_from_a_second_control_plane() {
    endpoints_from_a_second_control_plane(Kind::Sluice).await;
}

#[tokio::test]
async fn envoy_takes_endpoints_from_a_second_control_plane() {
    endpoints_from_a_second_control_plane(Kind::Envoy).await;
}
