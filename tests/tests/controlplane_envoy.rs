//! Real Envoy, bootstrapped with ADS against `sluice-cp`, receives the config and serves
//! its routes; a change moves Envoy too. Once over state of the world, once over delta:
//! the proof that the protocol is real xDS.

use std::time::Duration;

use sluice_tests::client::serves;
use sluice_tests::config::{ads_bootstrap, xds_resources};
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
