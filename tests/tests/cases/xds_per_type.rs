//! The per-type discovery services (LDS, RDS, CDS, EDS) for clients that do not use ADS,
//! driven by real tonic clients over loopback: named and wildcard subscriptions, updates,
//! delta, the unary fetch, and a request of the wrong type refused.

use std::time::Duration;

use prost::Message;
use sluice_tests::config::{eds_rds_resources, xds_resources};
use sluice_tests::free_addr;
use sluice_tests::process::ControlPlane;
use sluice_tests::upstream::Upstream;
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
