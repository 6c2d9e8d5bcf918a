//! Real Envoy, bootstrapped with ADS against `sluice-cp`, receives the config and serves
//! its routes; a change moves Envoy too. Once over state of the world, once over delta:
//! the proof that the protocol is real xDS. Then with endpoints and routes delivered
//! separately (EDS and RDS), where ordering and the endpoints push after a cluster change
//! decide whether Envoy's clusters ever leave warming. And a certificate delivered over
//! SDS (through ADS) that Envoy terminates TLS with, rotated without a restart; reads of it
//! through `sluicectl` never show the private key.

use std::time::Duration;

use serde_json::json;
use sluice_tests::client::serves;
use sluice_tests::config::{
    ads_bootstrap, cluster, eds_rds_resources, http_listener, xds_resources,
};
use sluice_tests::envoy::Envoy;
use sluice_tests::pki::{https_get, Pki};
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

/// A `Secret` document named `edge-cert` with the server certificate and key of `pki`.
fn edge_secret(pki: &Pki) -> String {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "edge-cert",
        "tls_certificate": {
            "certificate_chain": { "inline_string": read(&pki.server_cert) },
            "private_key": { "inline_string": read(&pki.server_key) }
        }
    })
    .to_string()
}

#[tokio::test]
async fn envoy_terminates_tls_with_a_certificate_from_sds_and_rotates_it() {
    let (first, second) = (Pki::generate().unwrap(), Pki::generate().unwrap());
    let upstream = Upstream::start("up").await;
    let (xds, plain, tls, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let resources = |pki: &Pki| {
        format!(
            "{}---\n{}\n",
            xds_resources(plain, upstream.addr, "v1"),
            edge_secret(pki)
        )
    };
    let cp = ControlPlane::start(&resources(&first), xds).await.unwrap();
    // Envoy's own static TLS listener takes its certificate by name over ADS.
    let mut bootstrap: serde_json::Value =
        serde_json::from_str(&ads_bootstrap(admin, xds, "GRPC", "envoy-sds")).unwrap();
    let mut listener = http_listener(
        "tls",
        tls,
        json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "up" } } ] } ] }),
        json!({}),
    );
    listener["filter_chains"][0]["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": { "tls_certificate_sds_secret_configs": [ {
                "name": "edge-cert",
                "sds_config": { "ads": {}, "resource_api_version": "V3" }
            } ] }
        }
    });
    bootstrap["static_resources"]["listeners"] = json!([listener]);
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(cluster("up", &[(upstream.addr, 1)], json!({})));
    let _envoy = Envoy::start(&bootstrap.to_string(), admin).await.unwrap();
    let trusted_by = |pki: &Pki| {
        let ca = pki.ca.clone();
        async move {
            https_get(tls, &ca, "localhost")
                .await
                .is_ok_and(|(status, body)| status == 200 && body.contains("\"server\":\"up\""))
        }
    };
    assert!(
        eventually(Duration::from_secs(15), || trusted_by(&first)).await,
        "Envoy serves TLS with the certificate from sluice-cp"
    );

    // Reads redact the key; applying a read back is refused, naming the field.
    let (ok, yaml, err) = cp.sluicectl(&["get", "secret", "edge-cert", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(
        yaml.contains("[redacted]") && !yaml.contains("PRIVATE KEY"),
        "{yaml}"
    );
    let dir = tempfile::tempdir().unwrap();
    let read_back = dir.path().join("read-back.yaml");
    std::fs::write(&read_back, &yaml).unwrap();
    let (ok, _, err) = cp.sluicectl(&["apply", "-f", read_back.to_str().unwrap()]);
    assert!(
        !ok && err.contains("tls_certificate.private_key") && !err.contains("PRIVATE KEY"),
        "{err}"
    );

    // Rotation: the next certificate is served to new connections without a restart.
    cp.update(&resources(&second)).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || trusted_by(&second)).await,
        "Envoy rotated to the new certificate"
    );
    assert!(!trusted_by(&first).await, "the old certificate is gone");
}
