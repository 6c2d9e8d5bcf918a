//! Real Envoy, bootstrapped with ADS against `sluice-cp`, receives the config and serves
//! its routes; a change moves Envoy too. Once over state of the world, once over delta:
//! the proof that the protocol is real xDS.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, http2_options, merge};
use sluice_tests::envoy::Envoy;
use sluice_tests::process::ControlPlane;
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

/// Resource documents: a listener routing to cluster `web` (one endpoint), stamping
/// `x-config` on responses.
fn resources(listener: SocketAddr, upstream: SocketAddr, stamp: &str) -> String {
    let listener_doc = sluice_tests::config::http_listener(
        "ingress",
        listener,
        json!({ "name": "routes", "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "response_headers_to_add": [ { "header": { "key": "x-config", "value": stamp } } ],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "web" } } ] } ] }),
        json!({}),
    );
    let mut listener_doc = listener_doc;
    merge(
        &mut listener_doc,
        json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener" }),
    );
    let cluster_doc = json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "web", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "web", "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address(upstream) } } ] } ] }
    });
    format!("{cluster_doc}\n---\n{listener_doc}\n")
}

fn envoy_bootstrap(admin: SocketAddr, xds: SocketAddr, api_type: &str) -> String {
    let mut xds_cluster = json!({
        "name": "xds", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "xds", "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address(xds) } } ] } ] }
    });
    merge(&mut xds_cluster, http2_options());
    json!({
        "node": { "id": format!("envoy-{}", api_type.to_lowercase()), "cluster": "default" },
        "admin": { "address": address(admin) },
        "dynamic_resources": {
            "ads_config": { "api_type": api_type, "transport_api_version": "V3",
                            "grpc_services": [ { "envoy_grpc": { "cluster_name": "xds" } } ] },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [ xds_cluster ] }
    })
    .to_string()
}

async fn envoy_follows_the_control_plane(api_type: &str) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start(&resources(listener, first.addr, "v1"), xds)
        .await
        .unwrap();
    let _envoy = Envoy::start(&envoy_bootstrap(admin, xds, api_type), admin)
        .await
        .unwrap();
    let client = HttpClient::http1();
    let serves = |server: &'static str, stamp: &'static str| {
        let client = client.clone();
        async move {
            match client.get(listener, "h", "/", &[]).await {
                Ok(r) => {
                    r.status == 200
                        && r.json()["server"] == server
                        && r.header("x-config").as_deref() == Some(stamp)
                }
                Err(_) => false,
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(15), || serves("first", "v1")).await,
        "envoy never served v1 ({api_type})"
    );
    cp.update(&resources(listener, second.addr, "v2")).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves("second", "v2")).await,
        "envoy never moved to v2 ({api_type})"
    );
}

#[tokio::test]
async fn envoy_state_of_the_world() {
    envoy_follows_the_control_plane("GRPC").await;
}

#[tokio::test]
async fn envoy_delta() {
    envoy_follows_the_control_plane("DELTA_GRPC").await;
}
