//! The process lifecycle: a bad bootstrap exits with the field path, SIGHUP swaps the
//! config under load without a failed request (and every response comes from one
//! snapshot), an invalid reload keeps the old config, SIGTERM drains.

use std::time::Duration;

use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::load::{LoadShape, StampedLoad, Tally};
use sluice_tests::process::{binary, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

fn versioned(
    admin: std::net::SocketAddr,
    listener: std::net::SocketAddr,
    version: u32,
    v1: &Upstream,
    v2: &Upstream,
) -> String {
    let target = if version % 2 == 1 { "v1" } else { "v2" };
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"],
        "response_headers_to_add": [ { "header": { "key": "x-config-version", "value": target } } ],
        "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": target } } ] } ] });
    bootstrap(
        admin,
        vec![http_listener("ingress", listener, routes, json!({}))],
        vec![
            cluster("v1", &[(v1.addr, 1)], json!({})),
            cluster("v2", &[(v2.addr, 1)], json!({})),
        ],
    )
}

/// A running `sluice` on config version 1, with both versions' upstreams.
struct Versioned {
    sluice: Sluice,
    admin: std::net::SocketAddr,
    listener: std::net::SocketAddr,
    v1: Upstream,
    v2: Upstream,
}

impl Versioned {
    async fn start() -> Self {
        let v1 = Upstream::start("v1").await;
        let v2 = Upstream::start("v2").await;
        let (admin, listener) = (free_addr(), free_addr());
        let sluice = Sluice::start(&versioned(admin, listener, 1, &v1, &v2), admin)
            .await
            .unwrap();
        Self {
            sluice,
            admin,
            listener,
            v1,
            v2,
        }
    }
}

#[tokio::test]
async fn invalid_bootstrap_exits_with_the_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
static_resources:
  clusters:
  - name: a
    lb_policy: CLUSTER_PROVIDED
"#,
    )
    .unwrap();
    let out = std::process::Command::new(binary("sluice"))
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("static_resources.clusters[0].lb_policy"),
        "{stderr}"
    );

    std::fs::write(
        &path,
        "static_resources: {clusters: [{name: a, lrs_server: {self: {}}}]}",
    )
    .unwrap();
    let out = std::process::Command::new(binary("sluice"))
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("static_resources.clusters[0].lrs_server: field is not supported"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sighup_swaps_under_load_fail_no_request() {
    let v = Versioned::start().await;
    let (admin, listener, v1, v2) = (v.admin, v.listener, &v.v1, &v.v2);

    // Bounded: stops when told, after 30 s, or after 20,000 requests per worker.
    let load = StampedLoad::start(
        listener,
        "x-config-version",
        LoadShape {
            workers: 8,
            requests: 20_000,
            limit: Duration::from_secs(30),
            reconnect_every: 0,
        },
    );
    for version in 2..=51 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        v.sluice
            .reload(&versioned(admin, listener, version, v1, v2))
            .unwrap();
        let expected = i64::from(version);
        assert!(
            eventually(Duration::from_secs(5), || async {
                let info: serde_json::Value =
                    serde_json::from_str(&v.sluice.admin_get("/server_info").await.unwrap())
                        .unwrap();
                info["config_version"].as_i64() == Some(expected)
            })
            .await,
            "reload {version} not applied"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Tally {
        failures,
        mismatched,
        served,
    } = load.finish().await;
    let total: u64 = served.values().sum();
    eprintln!("served {total} requests across 50 swaps: {served:?}");
    assert_eq!(failures, 0, "failed requests");
    assert_eq!(mismatched, 0, "a response mixed two config versions");
    assert!(
        served.get("v1").copied().unwrap_or(0) > 0 && served.get("v2").copied().unwrap_or(0) > 0,
        "{served:?}"
    );
    assert!(total > 1000, "load too small: {total}");
}

#[tokio::test]
async fn invalid_reload_keeps_the_previous_config() {
    let v = Versioned::start().await;
    let (admin, listener, v1, v2) = (v.admin, v.listener, &v.v1, &v.v2);
    let client = HttpClient::http1();
    v.sluice
        .reload("static_resources: {listeners: [{name: broken}]}")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client.get(listener, "h", "/", &[]).await.unwrap();
    assert_eq!(r.json()["server"], "v1");
    let info: serde_json::Value =
        serde_json::from_str(&v.sluice.admin_get("/server_info").await.unwrap()).unwrap();
    assert_eq!(info["config_version"], 1);
    // A valid reload afterwards applies.
    v.sluice
        .reload(&versioned(admin, listener, 2, v1, v2))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get(listener, "h", "/", &[]).await.unwrap().json()["server"] == "v2"
        })
        .await
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let mut v = Versioned::start().await;
    let (listener, v1) = (v.listener, &v.v1);
    let client = HttpClient::http1();
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(listener, "h", "/slow", &[("x-test-delay-ms", "800")])
                .await
        }
    });
    assert!(eventually(Duration::from_secs(5), || async { !v1.seen().is_empty() }).await);
    v.sluice.signal(libc::SIGTERM);
    let reply = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!(reply.status, 200);
    let status = v.sluice.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(
        tokio::net::TcpStream::connect(listener).await.is_err(),
        "no longer accepting"
    );
}
