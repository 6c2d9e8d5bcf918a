//! Real Envoy, bootstrapped with ADS against `sluice-cp`, receives the config and serves
//! its routes; a change moves Envoy too. Once over state of the world, once over delta:
//! the proof that the protocol is real xDS. Then with endpoints and routes delivered
//! separately (EDS and RDS), where ordering and the endpoints push after a cluster change
//! decide whether Envoy's clusters ever leave warming.

use std::time::Duration;

use sluice_tests::client::serves;
use sluice_tests::config::{ads_bootstrap, eds_rds_resources, xds_resources};
use sluice_tests::envoy::Envoy;
use sluice_tests::process::ControlPlane;
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

async fn envoy_follows_the_control_plane(api_type: &str) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start(&xds_resources(listener, first.addr, "v1"), xds)
        .await
        .unwrap();
    let _envoy = Envoy::start(&ads_bootstrap(admin, xds, api_type, "envoy"), admin)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "first", "v1")).await,
        "envoy never served v1 ({api_type})"
    );
    cp.update(&xds_resources(listener, second.addr, "v2"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "second", "v2")).await,
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

async fn envoy_follows_endpoints_and_routes(api_type: &str) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start(&eds_rds_resources(listener, first.addr, "v1", "1s"), xds)
        .await
        .unwrap();
    let envoy = Envoy::start(&ads_bootstrap(admin, xds, api_type, "envoy"), admin)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "first", "v1")).await,
        "envoy never served v1 over EDS and RDS ({api_type})"
    );
    // The cluster changes, its endpoints do not: Envoy warms the new cluster until an
    // endpoints response arrives, so the control plane must send one anyway.
    cp.update(&eds_rds_resources(listener, first.addr, "v2", "2s"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "first", "v2")).await,
        "envoy never took the v2 routes ({api_type})"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            envoy.stat("cluster_manager.cluster_modified").await == Some(1)
                && envoy.stat("cluster_manager.warming_clusters").await == Some(0)
        })
        .await,
        "the modified cluster must finish warming well before initial_fetch_timeout ({api_type}): modified {:?}, warming {:?}",
        envoy.stat("cluster_manager.cluster_modified").await,
        envoy.stat("cluster_manager.warming_clusters").await,
    );
    // New endpoints move the traffic.
    cp.update(&eds_rds_resources(listener, second.addr, "v3", "2s"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || serves(listener, "second", "v3")).await,
        "envoy never moved to the v3 endpoints ({api_type})"
    );
}

#[tokio::test]
async fn envoy_eds_and_rds_state_of_the_world() {
    envoy_follows_endpoints_and_routes("GRPC").await;
}

#[tokio::test]
async fn envoy_eds_and_rds_delta() {
    envoy_follows_endpoints_and_routes("DELTA_GRPC").await;
}
