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

/// Two nodes of `xds`'s fleet, one state of the world (`node-a`) and one delta (`node-b`),
/// sharing the listener port (SO_REUSEPORT); returned once both ACKed the clusters.
async fn two_synced_nodes(xds: std::net::SocketAddr) -> (Sluice, Sluice) {
    let (admin_a, admin_b) = (free_addr(), free_addr());
    let a = Sluice::start(&ads_bootstrap(admin_a, xds, "GRPC", "node-a"), admin_a)
        .await
        .unwrap();
    let b = Sluice::start(
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
    (a, b)
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
    let _nodes = two_synced_nodes(xds).await;
    let synced = ConfigStatus::Synced as i32;

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

#[tokio::test]
async fn an_apply_is_one_trace_from_the_api_call_to_every_nodes_ack() {
    let first = Upstream::start("first").await;
    let receiver = sluice_tests::otlp::OtlpReceiver::start().await;
    let (xds, listener) = (free_addr(), free_addr());
    let endpoint = format!("http://{}", receiver.addr);
    let cp = ControlPlane::start_with_args(
        &xds_resources(listener, first.addr, "v1"),
        xds,
        &["--otlp-endpoint", &endpoint],
    )
    .await
    .unwrap();
    let _nodes = two_synced_nodes(xds).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v2.yaml");
    std::fs::write(&file, xds_resources(listener, first.addr, "v2")).unwrap();
    let (ok, _, err) = cp.sluicectl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{err}");

    // The API call, the change it made, and one push per node, all in one trace.
    let find = |name: &str| {
        let name = name.to_string();
        let receiver = &receiver;
        async move {
            let mut found = None;
            for _ in 0..100 {
                found = receiver.spans().into_iter().find(|s| s.span.name == name);
                if found.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            found.unwrap_or_else(|| panic!("no span {name}: {:?}", receiver.spans()))
        }
    };
    let call = find("sluice.admin.v1.Admin/Apply").await;
    assert_eq!(call.span.kind, 2, "a SERVER span");
    assert_eq!(call.service_name.as_deref(), Some("sluice-cp"));
    assert_eq!(call.attribute("rpc.grpc.status_code").as_deref(), Some("0"));
    let trace = call.trace_id();
    let in_trace = || {
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(10), || async { in_trace().len() >= 4 }).await,
        "the call, the change and two pushes: {:?}\n{}",
        in_trace()
            .iter()
            .map(|s| s.span.name.clone())
            .collect::<Vec<_>>(),
        cp.sluicectl(&["nodes"]).1
    );
    let spans = in_trace();
    let change = spans
        .iter()
        .find(|s| s.span.name == "converge default")
        .expect("the change's span");
    assert_eq!(
        change.parent_span_id(),
        call.span_id(),
        "the change is the call's child"
    );
    assert_eq!(change.attribute("source").as_deref(), Some("apply"));
    let mut pushes: Vec<String> = spans
        .iter()
        .filter(|s| s.parent_span_id() == change.span_id())
        .map(|s| s.span.name.clone())
        .collect();
    pushes.sort();
    assert_eq!(pushes, ["push to node-a", "push to node-b"]);
    // Every push ended (its node ACKed) before the change converged.
    for push in spans
        .iter()
        .filter(|s| s.parent_span_id() == change.span_id())
    {
        assert!(push.span.end_time_unix_nano <= change.span.end_time_unix_nano);
        assert!(push.span.start_time_unix_nano >= change.span.start_time_unix_nano);
    }
}

#[tokio::test]
async fn an_api_calls_log_lines_carry_its_trace_id() {
    let receiver = sluice_tests::otlp::OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (xds, api) = (free_addr(), free_addr());
    let log_path = dir.path().join("cp.log");
    let store = dir.path().join("store");
    let mut cp = std::process::Command::new(sluice_tests::process::binary("sluice-cp"))
        .args(["--log-format", "json", "--otlp-endpoint"])
        .arg(format!("http://{}", receiver.addr))
        .args([
            "--xds-listen",
            &xds.to_string(),
            "--api-listen",
            &api.to_string(),
        ])
        .arg("--store")
        .arg(format!("file:{}", store.display()))
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let token = store.join("admin-token");
    let listening = eventually(Duration::from_secs(10), || async {
        token.exists() && tokio::net::TcpStream::connect(api).await.is_ok()
    })
    .await;
    let file = dir.path().join("resources.yaml");
    std::fs::write(&file, xds_resources(free_addr(), free_addr(), "v1")).unwrap();
    let applied = std::process::Command::new(sluice_tests::process::binary("sluicectl"))
        .args(["--server", &format!("http://{api}"), "apply", "-f"])
        .arg(&file)
        .env("SLUICE_TOKEN_FILE", &token)
        .output()
        .unwrap();
    let call = receiver.wait_for(1, Duration::from_secs(10)).await;
    let _ = cp.kill();
    let _ = cp.wait();
    assert!(listening, "sluice-cp listens");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let call = call
        .iter()
        .find(|s| s.span.name == "sluice.admin.v1.Admin/Apply")
        .expect("the Apply call's span");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let recorded: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "change recorded")
        .unwrap_or_else(|| panic!("no change recorded line: {log}"));
    assert_eq!(
        recorded["span"]["trace_id"],
        call.trace_id().as_str(),
        "{recorded}"
    );
    assert_eq!(recorded["fields"]["source"], "apply");
}
