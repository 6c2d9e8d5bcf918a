//! Invalid config reaching the fleet (validation bypassed by the control plane's test
//! hook): every node NACKs it naming the field, the control plane's CSDS shows each
//! node's error, traffic keeps flowing on the previous version, and a good push afterwards
//! is ACKed everywhere. The control plane's `/metrics` counts all of it and times the
//! convergence.

use std::time::Duration;

use sluice_tests::client::HttpClient;
use sluice_tests::config::{ads_bootstrap, xds_resources};
use sluice_tests::csds::statuses;
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};
use xds_types::pb::envoy::service::status::v3::ConfigStatus;
use xds_types::type_urls;

/// `(node id, config_status, error details)` of every node's cluster config.
async fn cluster_status(xds: std::net::SocketAddr) -> Vec<(String, i32, String)> {
    statuses(xds, type_urls::CLUSTER)
        .await
        .into_iter()
        .map(|s| (s.node, s.config_status, s.error))
        .collect()
}

#[tokio::test]
async fn every_node_nacks_invalid_config_and_keeps_serving() {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, metrics) = (free_addr(), free_addr(), free_addr());
    let metrics_arg = metrics.to_string();
    let cp = ControlPlane::start_with_args(
        &xds_resources(listener, first.addr, "v1"),
        xds,
        &["--unsafe-skip-validation", "--metrics-listen", &metrics_arg],
    )
    .await
    .unwrap();
    let (admin_a, admin_b) = (free_addr(), free_addr());
    // Two nodes share the listener port (SO_REUSEPORT): one state of the world, one delta.
    let _a = Sluice::start(&ads_bootstrap(admin_a, xds, "GRPC", "node-a"), admin_a)
        .await
        .unwrap();
    let _b = Sluice::start(
        &ads_bootstrap(admin_b, xds, "DELTA_GRPC", "node-b"),
        admin_b,
    )
    .await
    .unwrap();
    let synced = ConfigStatus::Synced as i32;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let s = cluster_status(xds).await;
            s.len() == 2 && s.iter().all(|(_, status, _)| *status == synced)
        })
        .await,
        "both nodes ACK the first config: {:?}",
        cluster_status(xds).await
    );

    // An unsupported load-balancing policy: every node rejects the cluster.
    let invalid = xds_resources(listener, second.addr, "v1").replace(
        "\"name\":\"web\"",
        "\"name\":\"web\",\"lb_policy\":\"CLUSTER_PROVIDED\"",
    );
    assert!(invalid.contains("CLUSTER_PROVIDED"));
    cp.update(&invalid).unwrap();
    let error = ConfigStatus::Error as i32;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let s = cluster_status(xds).await;
            s.len() == 2
                && s.iter().all(|(_, status, details)| {
                    *status == error
                        && details.contains("web: lb_policy: CLUSTER_PROVIDED is not supported")
                })
        })
        .await,
        "both nodes NACK naming the field: {:?}",
        cluster_status(xds).await
    );
    // The operators' view says the same, naming the field.
    let (ok, table, err) = cp.sluicectl(&["nodes"]);
    assert!(ok, "{err}");
    for node in ["node-a", "node-b"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_default();
        assert!(
            line.contains("cluster: web: lb_policy: CLUSTER_PROVIDED is not supported"),
            "{table}"
        );
    }
    let client = HttpClient::http1();
    for _ in 0..20 {
        let r = client.get(listener, "h", "/", &[]).await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.json()["server"].as_str()),
            (200, Some("first")),
            "previous version keeps serving"
        );
    }

    // A good push afterwards is ACKed by every node and moves the traffic.
    cp.update(&xds_resources(listener, second.addr, "v2"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let s = cluster_status(xds).await;
            s.len() == 2 && s.iter().all(|(_, status, _)| *status == synced)
        })
        .await,
        "both nodes ACK the fixed config: {:?}",
        cluster_status(xds).await
    );
    for _ in 0..10 {
        let r = client.get(listener, "h", "/", &[]).await.unwrap();
        assert_eq!(r.json()["server"], "second");
    }

    // The control plane's metrics, read by a Prometheus text parser.
    let scrape = || async {
        let reply = client.get(metrics, "cp", "/metrics", &[]).await.unwrap();
        assert_eq!(reply.status, 200);
        let text = String::from_utf8(reply.body.to_vec()).unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    };
    let value = |scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                _ => 0.0,
            })
            .sum::<f64>()
    };
    let cluster = [
        ("type", "envoy.config.cluster.v3.Cluster"),
        ("group", "default"),
    ];
    let s = scrape().await;
    assert_eq!(
        value(&s, "sluice_cp_connected_nodes", &[("group", "default")]),
        2.0
    );
    // Each node: v1, the rejected version and v2 pushed; v1 and v2 ACKed; one NACK.
    assert!(
        value(&s, "sluice_cp_xds_pushes_total", &cluster) >= 6.0,
        "{:?}",
        s.samples
    );
    assert!(value(&s, "sluice_cp_xds_acks_total", &cluster) >= 4.0);
    assert_eq!(value(&s, "sluice_cp_xds_nacks_total", &cluster), 2.0);
    let converged = value(
        &s,
        "sluice_cp_convergence_seconds_count",
        &[("group", "default")],
    );
    assert!(
        converged >= 1.0,
        "the fixed config converged: {:?}",
        s.samples
    );
    // Another change: the histogram moves.
    cp.update(&xds_resources(listener, first.addr, "v3"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            value(
                &scrape().await,
                "sluice_cp_convergence_seconds_count",
                &[("group", "default")],
            ) > converged
        })
        .await,
        "a new change converges and is observed"
    );
}
