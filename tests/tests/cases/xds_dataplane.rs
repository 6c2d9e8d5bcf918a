//! `sluice` configured over xDS by `sluice-cp`: state of the world and delta, readiness
//! only after the first full sync, last good config kept while the control plane is away.

use std::time::Duration;

use sluice_tests::client::{serves, HttpClient};
use sluice_tests::config::{ads_bootstrap, xds_resources};
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

async fn follows_the_control_plane(api_type: &str) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start(&xds_resources(listener, first.addr, "v1"), xds)
        .await
        .unwrap();
    // `start` returns once /ready is 200, which needs the first full sync.
    let sluice = Sluice::start(&ads_bootstrap(admin, xds, api_type, "sluice-1"), admin)
        .await
        .unwrap();
    assert!(
        serves(listener, "first", "v1").await,
        "not serving the xDS config after ready ({api_type})"
    );
    cp.update(&xds_resources(listener, second.addr, "v2"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || serves(listener, "second", "v2")).await,
        "no update ({api_type})"
    );
    assert!(sluice.stat("cluster.web.upstream_rq_total").await.unwrap() >= 2);
}

#[tokio::test]
async fn state_of_the_world() {
    follows_the_control_plane("GRPC").await;
}

#[tokio::test]
async fn delta() {
    follows_the_control_plane("DELTA_GRPC").await;
}

#[tokio::test]
async fn ready_after_first_sync_and_last_good_config_survives_the_control_plane() {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let config = ads_bootstrap(admin, xds, "DELTA_GRPC", "sluice-2");
    // No control plane yet: the process runs but is not ready (Sluice::start would wait).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, &config).unwrap();
    let mut child = std::process::Command::new(sluice_tests::process::binary("sluice"))
        .arg("-c")
        .arg(&path)
        .spawn()
        .unwrap();
    let client = HttpClient::http1();
    let ready = |expect: u16| {
        let client = client.clone();
        async move {
            client
                .get(admin, "admin", "/ready", &[])
                .await
                .is_ok_and(|r| r.status == expect)
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || ready(503)).await,
        "/ready should answer 503 before the first sync"
    );

    let cp = ControlPlane::start(&xds_resources(listener, first.addr, "v1"), xds)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || ready(200)).await,
        "ready after the control plane came"
    );
    assert!(eventually(Duration::from_secs(5), || serves(listener, "first", "v1")).await);

    // The control plane goes away: the last good config keeps serving.
    drop(cp);
    for _ in 0..20 {
        assert!(
            serves(listener, "first", "v1").await,
            "request failed while the control plane was down"
        );
    }
    // It comes back with a change: the node reconnects and applies it.
    let _cp = ControlPlane::start(&xds_resources(listener, second.addr, "v2"), xds)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || serves(listener, "second", "v2")).await,
        "no reconnect"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn delta_reconnect_removes_a_listener_deleted_while_disconnected() {
    let upstream = Upstream::start("first").await;
    let (xds, kept, deleted, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let mut extra = sluice_tests::config::http_listener(
        "deleted-meanwhile",
        deleted,
        serde_json::json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "web" } } ] } ] }),
        serde_json::json!({}),
    );
    sluice_tests::config::merge(
        &mut extra,
        serde_json::json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener" }),
    );
    let both = format!("{}---\n{extra}\n", xds_resources(kept, upstream.addr, "v1"));
    let cp = ControlPlane::start(&both, xds).await.unwrap();
    let _sluice = Sluice::start(&ads_bootstrap(admin, xds, "DELTA_GRPC", "sluice-3"), admin)
        .await
        .unwrap();
    assert!(serves(kept, "first", "v1").await);
    assert!(
        HttpClient::http1()
            .get(deleted, "h", "/", &[])
            .await
            .unwrap()
            .status
            == 200
    );

    // The listener is deleted while the node is disconnected.
    drop(cp);
    let _cp = ControlPlane::start(&xds_resources(kept, upstream.addr, "v1"), xds)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(deleted).await.is_err()
        })
        .await,
        "the deleted listener still accepts after the reconnect"
    );
    assert!(
        serves(kept, "first", "v1").await,
        "the kept listener serves throughout"
    );
}
