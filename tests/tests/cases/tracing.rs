//! Tracing as Envoy does it, checked against a real OTLP/gRPC receiver: W3C trace context
//! extracted from the request and propagated upstream with the proxy's span id, sampling,
//! Envoy's span names, kinds and attribute keys (compared with real Envoy's spans for the
//! same config), two hops forming one trace, and a collector that is down costing nothing
//! but counted drops.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{bootstrap, cluster, http2_options, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::eventually;
use sluice_tests::free_addr;
use sluice_tests::otlp::{OtlpReceiver, Received};
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// The connection manager's `tracing` to the `otel` cluster, plus `extra` fields.
fn tracing(extra: Value) -> Value {
    let mut t = json!({
        "provider": { "name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": "edge",
            "grpc_service": { "envoy_grpc": { "cluster_name": "otel" }, "timeout": "1s" } } },
        "custom_tags": [
            { "tag": "team", "literal": { "value": "payments" } },
            { "tag": "user", "request_header": { "name": "x-user", "default_value": "nobody" } },
        ],
    });
    sluice_tests::config::merge(&mut t, extra);
    t
}

/// A listener on `listener` tracing to `collector`, routing `/` to `upstream`.
fn traced_config(
    admin: SocketAddr,
    listener: SocketAddr,
    upstream: SocketAddr,
    collector: SocketAddr,
    tracing_extra: Value,
) -> String {
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/decorated" }, "route": { "cluster": "app" },
          "decorator": { "operation": "checkout" } },
        { "match": { "prefix": "/" }, "route": { "cluster": "app" } } ] } ] });
    let hcm = json!({ "tracing": tracing(tracing_extra) });
    let mut config: Value = serde_json::from_str(&bootstrap(
        admin,
        vec![http_listener("edge", listener, routes, hcm)],
        vec![
            cluster("app", &[(upstream, 1)], json!({})),
            cluster("otel", &[(collector, 1)], http2_options()),
        ],
    ))
    .unwrap();
    for_envoy(&mut config);
    config.to_string()
}

/// Envoy flushes spans every 5 s by default; both flush every 0.2 s here (sluice by flag).
const FLUSH: &[&str] = &["--trace-flush-interval-ms", "200"];

/// Adds Envoy's runtime key for the flush interval (sluice's bootstrap has no runtime, so
/// the key is stripped again for it by [`for_sluice`]).
fn for_envoy(config: &mut Value) {
    config["layered_runtime"] = json!({ "layers": [ { "name": "static", "static_layer": {
        "tracing.opentelemetry.flush_interval_ms": 200 } } ] });
}

fn for_sluice(config: &str) -> String {
    let mut config: Value = serde_json::from_str(config).unwrap();
    config.as_object_mut().unwrap().remove("layered_runtime");
    config.to_string()
}

/// Either proxy, running `config`.
async fn start_proxy(envoy: bool, config: &str, admin: SocketAddr) -> Box<dyn std::any::Any> {
    if envoy {
        Box::new(Envoy::start(config, admin).await.expect("start envoy"))
    } else {
        Box::new(
            Sluice::start_with_args(&for_sluice(config), admin, FLUSH)
                .await
                .expect("start sluice"),
        )
    }
}

fn traceparent(trace: &str, span: &str, flags: &str) -> String {
    format!("00-{trace}-{span}-{flags}")
}

/// The parts of a span two implementations must agree on.
fn shape(s: &Received) -> Value {
    json!({
        "name": s.span.name, "kind": s.span.kind, "flags": s.span.flags,
        "service": s.service_name, "keys": s.attribute_keys(),
        "error": s.span.status.as_ref().map(|st| st.code),
        "has_parent": !s.span.parent_span_id.is_empty(),
    })
}

/// One run of the propagation cases; returns the spans and what the upstream saw, by path.
async fn propagation_run(
    envoy: bool,
) -> (Vec<Received>, Vec<(String, Option<String>, Option<String>)>) {
    let upstream = Upstream::start("app").await;
    let receiver = OtlpReceiver::start().await;
    let (admin, listener) = (free_addr(), free_addr());
    let config = traced_config(admin, listener, upstream.addr, receiver.addr, json!({}));
    let proxy = start_proxy(envoy, &config, admin).await;
    let client = HttpClient::http1();
    let unsampled = traceparent(TRACE, PARENT, "00");
    let sampled = traceparent(TRACE, PARENT, "01");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        // Nothing is exported for these two.
        ("/unsampled", vec![("traceparent", unsampled.as_str())]),
        ("/malformed", vec![("traceparent", "00-not-a-trace-01")]),
        (
            "/decorated/sampled?q=1",
            vec![
                ("traceparent", sampled.as_str()),
                ("tracestate", "vendor=opaque"),
            ],
        ),
        ("/root", vec![("x-user", "ann")]),
        ("/failing", vec![("x-test-status", "503")]),
    ];
    for (path, headers) in &cases {
        client.get(listener, "h", path, headers).await.unwrap();
    }
    let mut spans = receiver.wait_for(3, Duration::from_secs(10)).await;
    // Long enough for stray spans of the first two requests to arrive too.
    tokio::time::sleep(Duration::from_millis(600)).await;
    spans.extend(receiver.spans().into_iter().skip(spans.len()));
    drop(proxy);
    let seen = upstream
        .seen()
        .into_iter()
        .map(|s| {
            let header = |n: &str| s.headers.get(n).map(|v| v.to_str().unwrap().to_string());
            (s.path, header("traceparent"), header("tracestate"))
        })
        .collect();
    spans.sort_by_key(|s| s.attribute("http.url"));
    (spans, seen)
}

fn seen_at<'a>(
    seen: &'a [(String, Option<String>, Option<String>)],
    path: &str,
) -> &'a (String, Option<String>, Option<String>) {
    seen.iter()
        .find(|(p, ..)| p == path)
        .unwrap_or_else(|| panic!("upstream never saw {path}"))
}

fn span_for<'a>(spans: &'a [Received], path: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.attribute("http.url") == Some(format!("http://h{path}")))
        .unwrap_or_else(|| panic!("no span for {path}"))
}

/// The checks the issue names, for one proxy's run.
fn assert_propagation(
    who: &str,
    spans: &[Received],
    seen: &[(String, Option<String>, Option<String>)],
) {
    assert_eq!(
        spans.len(),
        3,
        "{who}: spans {:#?}",
        spans.iter().map(shape).collect::<Vec<_>>()
    );
    // A sampled context: the same trace, the incoming parent, tracestate forwarded, and the
    // upstream sees the proxy's span.
    let sampled = span_for(spans, "/decorated/sampled?q=1");
    assert_eq!(sampled.trace_id(), TRACE, "{who}");
    assert_eq!(sampled.parent_span_id(), PARENT, "{who}");
    assert_eq!(sampled.span.trace_state, "vendor=opaque", "{who}");
    assert_eq!(
        sampled.span.name, "checkout",
        "{who}: the decorator names the span"
    );
    assert_eq!(sampled.service_name.as_deref(), Some("edge"), "{who}");
    let (_, tp, ts) = seen_at(seen, "/decorated/sampled?q=1");
    assert_eq!(
        tp.as_deref(),
        Some(traceparent(TRACE, &sampled.span_id(), "01").as_str()),
        "{who}"
    );
    assert_eq!(ts.as_deref(), Some("vendor=opaque"), "{who}");
    // No header: a new root trace, propagated.
    let root = span_for(spans, "/root");
    assert!(
        root.parent_span_id().is_empty(),
        "{who}: a root has no parent"
    );
    assert_ne!(root.trace_id(), TRACE, "{who}");
    assert_eq!(root.span.name, "ingress", "{who}");
    assert_eq!(
        root.attribute("user").as_deref(),
        Some("ann"),
        "{who}: header tag"
    );
    assert_eq!(
        root.attribute("team").as_deref(),
        Some("payments"),
        "{who}: literal tag"
    );
    assert_eq!(
        root.attribute("http.method").as_deref(),
        Some("GET"),
        "{who}"
    );
    assert_eq!(
        root.attribute("http.status_code").as_deref(),
        Some("200"),
        "{who}"
    );
    assert_eq!(
        root.attribute("upstream_cluster").as_deref(),
        Some("app"),
        "{who}"
    );
    assert_eq!(
        root.attribute("node_id").as_deref(),
        Some("test-node"),
        "{who}"
    );
    let (_, tp, _) = seen_at(seen, "/root");
    assert_eq!(
        tp.as_deref(),
        Some(traceparent(&root.trace_id(), &root.span_id(), "01").as_str()),
        "{who}"
    );
    // A failing upstream marks the span as an error.
    let failing = span_for(spans, "/failing");
    assert_eq!(failing.attribute("error").as_deref(), Some("true"), "{who}");
    assert_eq!(
        failing.attribute("http.status_code").as_deref(),
        Some("503"),
        "{who}"
    );
    // Flags 00: not exported, but propagated unsampled with the proxy's own span id.
    let (_, tp, _) = seen_at(seen, "/unsampled");
    let tp = tp.as_deref().unwrap();
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-00"),
        "{who}: {tp}"
    );
    assert!(
        !tp.contains(PARENT),
        "{who}: the parent is replaced by the proxy's span: {tp}"
    );
    // Malformed: forwarded untouched, nothing started.
    let (_, tp, ts) = seen_at(seen, "/malformed");
    assert_eq!(tp.as_deref(), Some("00-not-a-trace-01"), "{who}");
    assert_eq!(ts, &None, "{who}");
}

#[tokio::test]
async fn trace_context_is_extracted_and_propagated_with_envoys_span_shapes() {
    let (envoy_spans, envoy_seen) = propagation_run(true).await;
    assert_propagation("envoy", &envoy_spans, &envoy_seen);
    let (sluice_spans, sluice_seen) = propagation_run(false).await;
    assert_propagation("sluice", &sluice_spans, &sluice_seen);
    let shapes = |spans: &[Received]| spans.iter().map(shape).collect::<Vec<_>>();
    assert_eq!(
        shapes(&envoy_spans),
        shapes(&sluice_spans),
        "span names, kinds and attribute keys"
    );
}

#[tokio::test]
async fn a_trace_across_envoy_and_sluice_is_one_trace_and_upstream_spans_are_children() {
    let upstream = Upstream::start("app").await;
    let receiver = OtlpReceiver::start().await;
    let (sluice_admin, sluice_listener) = (free_addr(), free_addr());
    let sluice_config = traced_config(
        sluice_admin,
        sluice_listener,
        upstream.addr,
        receiver.addr,
        json!({ "spawn_upstream_span": true }),
    );
    let _sluice = start_proxy(false, &sluice_config, sluice_admin).await;
    // Envoy in front, forwarding to sluice's listener.
    let (envoy_admin, envoy_listener) = (free_addr(), free_addr());
    let envoy_config = traced_config(
        envoy_admin,
        envoy_listener,
        sluice_listener,
        receiver.addr,
        json!({}),
    );
    let _envoy = start_proxy(true, &envoy_config, envoy_admin).await;
    let reply = HttpClient::http1()
        .get(envoy_listener, "h", "/two-hops", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let spans = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(
        spans.len(),
        3,
        "{:#?}",
        spans.iter().map(shape).collect::<Vec<_>>()
    );
    let trace = spans[0].trace_id();
    assert!(spans.iter().all(|s| s.trace_id() == trace), "one trace");
    let root = spans
        .iter()
        .find(|s| s.parent_span_id().is_empty())
        .expect("Envoy's root span");
    let server = spans
        .iter()
        .find(|s| s.span.kind == 2 && s.parent_span_id() == root.span_id())
        .expect("sluice's SERVER span, child of Envoy's");
    let client = spans
        .iter()
        .find(|s| s.span.kind == 3)
        .expect("sluice's CLIENT span");
    assert_eq!(client.parent_span_id(), server.span_id());
    assert_eq!(client.span.name, "router app egress");
    // The upstream saw sluice's CLIENT span as its parent.
    let seen = upstream.seen();
    let tp = seen[0]
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(tp, traceparent(&trace, &client.span_id(), "01"));
}

#[tokio::test]
async fn sampling_fractions_and_the_sampled_flag_decide_what_is_exported() {
    let upstream = Upstream::start("app").await;
    let receiver = OtlpReceiver::start().await;
    let (admin, listener) = (free_addr(), free_addr());
    let config = traced_config(
        admin,
        listener,
        upstream.addr,
        receiver.addr,
        json!({ "random_sampling": { "value": 0 }, "client_sampling": { "value": 100 } }),
    );
    let _sluice = start_proxy(false, &config, admin).await;
    let client = HttpClient::http1();
    let sampled = traceparent(TRACE, PARENT, "01");
    for (path, headers) in [
        ("/random", vec![]),
        ("/forced", vec![("x-client-trace-id", "client-1")]),
        ("/parent", vec![("traceparent", sampled.as_str())]),
    ] {
        client.get(listener, "h", path, &headers).await.unwrap();
    }
    let spans = receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut urls: Vec<String> = receiver
        .spans()
        .iter()
        .filter_map(|s| s.attribute("http.url"))
        .collect();
    urls.sort();
    assert_eq!(urls, ["http://h/forced", "http://h/parent"], "{spans:?}");
    let all = receiver.spans();
    let forced = span_for(&all, "/forced");
    assert_eq!(
        forced.attribute("guid:x-client-trace-id").as_deref(),
        Some("client-1")
    );
}

#[tokio::test]
async fn a_collector_that_is_down_drops_and_counts_spans_and_never_slows_requests() {
    let upstream = Upstream::start("app").await;
    let collector = free_addr();
    let (admin, listener) = (free_addr(), free_addr());
    let config = traced_config(admin, listener, upstream.addr, collector, json!({}));
    let sluice = Sluice::start_with_args(&for_sluice(&config), admin, FLUSH)
        .await
        .unwrap();
    let client = HttpClient::http1();
    for i in 0..50 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.get(listener, "h", &format!("/r{i}"), &[]),
        )
        .await
        .expect("a request waited on the collector")
        .unwrap();
        assert_eq!(reply.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            sluice
                .stat("tracing.opentelemetry.spans_dropped")
                .await
                .unwrap_or(0)
                >= 1
        })
        .await,
        "dropped spans are counted"
    );
    // The collector comes up: once the exporter's backoff (at most 10 s) is over, spans
    // reach it again.
    let receiver = OtlpReceiver::start_at(collector).await;
    let mut arrived = false;
    for _ in 0..60 {
        client.get(listener, "h", "/after", &[]).await.unwrap();
        if !receiver
            .wait_for(1, Duration::from_millis(500))
            .await
            .is_empty()
        {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "no span reached the collector once it was up");
    assert!(receiver
        .spans()
        .iter()
        .all(|s| s.attribute("http.url").as_deref() == Some("http://h/after")));
    assert!(
        eventually(Duration::from_secs(5), || async {
            sluice
                .stat("tracing.opentelemetry.spans_sent")
                .await
                .unwrap_or(0)
                >= 1
        })
        .await,
        "sent spans are counted"
    );
}

#[tokio::test]
async fn a_traced_streams_own_log_lines_carry_its_trace_id() {
    let receiver = OtlpReceiver::start().await;
    let (admin, listener, dead) = (free_addr(), free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("bootstrap.json");
    std::fs::write(
        &config_path,
        for_sluice(&traced_config(
            admin,
            listener,
            dead,
            receiver.addr,
            json!({}),
        )),
    )
    .unwrap();
    let log_path = dir.path().join("sluice.log");
    let mut child = std::process::Command::new(sluice_tests::process::binary("sluice"))
        .arg("-c")
        .arg(&config_path)
        .args([
            "--log-format",
            "json",
            "--log-level",
            "info,sluice::proxy=debug",
        ])
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let client = HttpClient::http1();
    let ready = eventually(Duration::from_secs(10), || async {
        client
            .get(admin, "admin", "/ready", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    // The upstream is down: the router logs the failed attempt inside the stream's span.
    let tp = traceparent(TRACE, PARENT, "01");
    let reply = client
        .get(listener, "h", "/down", &[("traceparent", tp.as_str())])
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "sluice became ready");
    assert_eq!(reply.unwrap().status, 503);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let failed: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "upstream request failed")
        .collect();
    assert!(!failed.is_empty(), "{log}");
    assert!(
        failed.iter().all(|l| l["span"]["trace_id"] == TRACE),
        "{failed:?}"
    );
}

#[tokio::test]
async fn spans_go_over_otlp_http_as_envoy_sends_them() {
    let mut heads = Vec::new();
    for envoy in [true, false] {
        let upstream = Upstream::start("app").await;
        let receiver = OtlpReceiver::start_http().await;
        let (admin, listener) = (free_addr(), free_addr());
        let mut config: Value = serde_json::from_str(&traced_config(
            admin,
            listener,
            upstream.addr,
            receiver.addr,
            json!({}),
        ))
        .unwrap();
        let hcm = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        hcm["tracing"]["provider"]["typed_config"] = json!({
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": "edge",
            "http_service": {
                "http_uri": { "uri": format!("http://collector.test:{}/v1/traces", receiver.addr.port()),
                              "cluster": "otel", "timeout": "1s" },
                "request_headers_to_add": [ { "header": { "key": "x-tenant", "value": "edge" } } ] } });
        // Plain HTTP/1.1 to the collector.
        config["static_resources"]["clusters"][1]
            .as_object_mut()
            .unwrap()
            .remove("typed_extension_protocol_options");
        let proxy = start_proxy(envoy, &config.to_string(), admin).await;
        let tp = traceparent(TRACE, PARENT, "01");
        HttpClient::http1()
            .get(listener, "h", "/over-http", &[("traceparent", tp.as_str())])
            .await
            .unwrap();
        let spans = receiver.wait_for(1, Duration::from_secs(10)).await;
        drop(proxy);
        let who = if envoy { "envoy" } else { "sluice" };
        assert_eq!(spans.len(), 1, "{who}");
        assert_eq!(spans[0].trace_id(), TRACE, "{who}");
        assert_eq!(spans[0].parent_span_id(), PARENT, "{who}");
        assert_eq!(spans[0].service_name.as_deref(), Some("edge"), "{who}");
        let (path, headers) = receiver.http_heads().remove(0);
        let header = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_string());
        heads.push((
            path,
            header("content-type"),
            header("x-tenant"),
            header("host").map(|h| h.replace(&receiver.addr.port().to_string(), "PORT")),
            shape(&spans[0]),
        ));
    }
    assert_eq!(heads[0].0, "/v1/traces");
    assert_eq!(heads[0].1.as_deref(), Some("application/x-protobuf"));
    assert_eq!(
        heads[0].3.as_deref(),
        Some("collector.test:PORT"),
        "the URI's host"
    );
    assert_eq!(heads[0], heads[1], "Envoy's export and sluice's");
}

fn static_detector(attributes: Value) -> Value {
    json!({ "name": "envoy.tracers.opentelemetry.resource_detectors.static_config", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig",
        "attributes": attributes } })
}

/// The OpenTelemetry access logger on the traced listener, to the `otel` cluster.
fn otlp_access_log() -> Value {
    let text = |s: &str| json!({ "string_value": s });
    json!([{ "name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "grpc_service": { "envoy_grpc": { "cluster_name": "otel" }, "timeout": "1s" },
        "log_name": "edge-log",
        "stat_prefix": "edge.",
        "buffer_flush_interval": "0.2s",
        "resource_detectors": [ static_detector(json!({ "deployment": "test", "region": "detected" })) ],
        "resource_attributes": { "values": [
            { "key": "region", "value": text("local") },
            { "key": "cluster_name", "value": text("overridden") } ] },
        "body": text("%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE%"),
        "attributes": { "values": [
            { "key": "status", "value": text("%RESPONSE_CODE%") },
            { "key": "flags", "value": text("%RESPONSE_FLAGS%") },
            { "key": "absent", "value": text("%REQ(X-NOT-THERE)%") },
            { "key": "short_path", "value": text("%REQ(:PATH):4%") },
            { "key": "trace", "value": text("%TRACE_ID%") },
            { "key": "hops", "value": { "array_value": { "values": [
                text("%UPSTREAM_CLUSTER%"), text("fixed") ] } } },
            { "key": "peer", "value": { "kvlist_value": { "values": [
                { "key": "ip", "value": text("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%") } ] } } } ] },
        "custom_tags": [
            { "tag": "team", "literal": { "value": "payments" } },
            { "tag": "user", "request_header": { "name": "x-user" } } ] } }])
}

/// One proxy's records for the four requests, keyed by path, its written counter, and
/// the resource keys of its spans.
async fn otlp_logged_run(envoy: bool) -> (Vec<(String, Value)>, i64, Vec<String>) {
    let upstream = Upstream::start("app").await;
    let receiver = OtlpReceiver::start().await;
    let (admin, listener) = (free_addr(), free_addr());
    let mut config: Value = serde_json::from_str(&traced_config(
        admin,
        listener,
        upstream.addr,
        receiver.addr,
        json!({}),
    ))
    .unwrap();
    config["node"]["locality"] = json!({ "zone": "zone-a" });
    let hcm = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    hcm["access_log"] = otlp_access_log();
    hcm["tracing"]["provider"]["typed_config"]["resource_detectors"] =
        json!([static_detector(json!({ "deployment": "test" }))]);
    let config = config.to_string();
    let (envoy_proxy, sluice_proxy) = if envoy {
        (
            Some(Envoy::start(&config, admin).await.expect("start envoy")),
            None,
        )
    } else {
        let sluice = Sluice::start_with_args(&for_sluice(&config), admin, FLUSH)
            .await
            .expect("start sluice");
        (None, Some(sluice))
    };
    let client = HttpClient::http1();
    let sampled = traceparent(TRACE, PARENT, "01");
    let unsampled = traceparent(TRACE, PARENT, "00");
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        ("/sampled", vec![("traceparent", sampled.as_str())]),
        ("/unsampled", vec![("traceparent", unsampled.as_str())]),
        ("/root", vec![("x-user", "ann")]),
        ("/failing", vec![("x-test-status", "503")]),
    ];
    for (path, headers) in &cases {
        client.get(listener, "h", path, headers).await.unwrap();
    }
    let logs = receiver.wait_for_logs(4, Duration::from_secs(10)).await;
    let spans = receiver.wait_for(1, Duration::from_secs(10)).await;
    let span_resource = spans
        .first()
        .map(|s| s.resource_keys.clone())
        .unwrap_or_default();
    let written = match (&envoy_proxy, &sluice_proxy) {
        (Some(e), _) => e
            .stat("access_logs.open_telemetry_access_log.edge.logs_written")
            .await
            .unwrap_or(0),
        (_, Some(s)) => s
            .stat("access_logs.open_telemetry_access_log.edge.logs_written")
            .await
            .unwrap(),
        _ => unreachable!(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut records: Vec<(String, Value)> = logs
        .iter()
        .map(|log| {
            let r = &log.record;
            assert!(
                now.abs_diff(r.time_unix_nano) < 30_000_000_000,
                "the request's start time: {}",
                r.time_unix_nano
            );
            let mut resource: Vec<String> = log
                .resource
                .iter()
                .map(|kv| format!("{}={:?}", kv.key, kv.value))
                .collect();
            resource.sort();
            let trace = sluice_tests::otlp::hex(&r.trace_id);
            // Sorted: Envoy's custom tags pass through a map, in no set order.
            let mut attributes: Vec<Value> = r
                .attributes
                .iter()
                .map(|kv| {
                    let mut value = format!("{:?}", kv.value);
                    // A new root's id is random; equal to the record's own trace id.
                    if !trace.is_empty() && trace != TRACE {
                        value = value.replace(&trace, "<root trace>");
                    }
                    json!([kv.key, value])
                })
                .collect();
            attributes.sort_by_key(|kv| kv[0].as_str().unwrap_or_default().to_string());
            let body = format!("{:?}", r.body);
            let path = cases
                .iter()
                .map(|(p, _)| *p)
                .find(|p| body.contains(&format!(" {p} ")))
                .unwrap_or("?")
                .to_string();
            let record = json!({
                "body": body,
                "attributes": attributes,
                "trace_id": if trace == TRACE || trace.is_empty() { trace.clone() } else { "<root trace>".into() },
                "has_span_id": r.span_id.len() == 8,
                "resource": resource,
            });
            (path, record)
        })
        .collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    (records, written, span_resource)
}

#[tokio::test]
async fn open_telemetry_access_log_records_match_envoys() {
    let (envoy_records, envoy_written, envoy_span_resource) = otlp_logged_run(true).await;
    let (sluice_records, sluice_written, sluice_span_resource) = otlp_logged_run(false).await;
    // The tracer's resource: service.name, telemetry.sdk.* (the values name each proxy)
    // and what the static detector adds.
    assert!(
        envoy_span_resource.contains(&"deployment".to_string()),
        "{envoy_span_resource:?}"
    );
    assert_eq!(
        envoy_span_resource, sluice_span_resource,
        "span resource keys"
    );
    assert_eq!(envoy_records.len(), 4, "envoy: {envoy_records:#?}");
    assert_eq!(envoy_written, 4, "Envoy's logs_written");
    assert_eq!(sluice_written, 4, "sluice's logs_written");
    for ((envoy_path, envoy), (sluice_path, sluice)) in envoy_records.iter().zip(&sluice_records) {
        assert_eq!(envoy_path, sluice_path);
        assert_eq!(envoy, sluice, "the record for {envoy_path}");
    }
    assert_eq!(envoy_records.len(), sluice_records.len());
    // What the comparison rests on, spelled out for sluice's records.
    let record = |path: &str| &sluice_records.iter().find(|(p, _)| p == path).unwrap().1;
    assert_eq!(record("/sampled")["trace_id"], TRACE);
    assert_eq!(record("/root")["trace_id"], "<root trace>");
    let resource = record("/root")["resource"].to_string();
    for expected in [
        "log_name",
        "edge-log",
        "zone-a",
        "overridden",
        "test-node",
        "deployment",
    ] {
        assert!(resource.contains(expected), "{expected} in {resource}");
    }
    assert!(
        resource.contains("local") && !resource.contains("detected"),
        "resource_attributes win over detectors: {resource}"
    );
    let attributes = record("/root")["attributes"].to_string();
    assert!(
        attributes.contains("payments") && attributes.contains("ann"),
        "{attributes}"
    );
}

#[tokio::test]
async fn open_telemetry_access_logs_go_over_http_and_a_dead_collector_only_costs_records() {
    let upstream = Upstream::start("app").await;
    let receiver = OtlpReceiver::start_http().await;
    let dead = free_addr();
    let (admin, listener) = (free_addr(), free_addr());
    let mut config: Value = serde_json::from_str(&bootstrap(
        admin,
        vec![http_listener(
            "edge",
            listener,
            json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"],
                "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "app" } } ] } ] }),
            json!({}),
        )],
        vec![
            cluster("app", &[(upstream.addr, 1)], json!({})),
            cluster("collector", &[(receiver.addr, 1)], json!({})),
            cluster("dead", &[(dead, 1)], http2_options()),
        ],
    ))
    .unwrap();
    let logger = |transport: Value, prefix: &str| {
        let mut typed = json!({
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
            "log_name": prefix, "stat_prefix": format!("{prefix}."),
            "buffer_flush_interval": "0.1s",
            "body": { "string_value": "%REQ(:PATH)% %RESPONSE_CODE%" } });
        sluice_tests::config::merge(&mut typed, transport);
        json!({ "name": "envoy.access_loggers.open_telemetry", "typed_config": typed })
    };
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["access_log"] = json!([
        logger(
            json!({ "http_service": { "http_uri": {
            "uri": format!("http://collector.test:{}/v1/logs", receiver.addr.port()),
            "cluster": "collector", "timeout": "1s" } } }),
            "live"
        ),
        logger(
            json!({ "grpc_service": { "envoy_grpc": { "cluster_name": "dead" },
            "timeout": "0.2s" } }),
            "dead"
        ),
    ]);
    let sluice = Sluice::start(&config.to_string(), admin)
        .await
        .expect("start sluice");
    const REQUESTS: usize = 40;
    let client = HttpClient::http1();
    for i in 0..REQUESTS {
        let reply = client
            .get(listener, "h", &format!("/r{i}"), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "request {i} with a dead collector");
    }
    let logs = receiver
        .wait_for_logs(REQUESTS, Duration::from_secs(10))
        .await;
    assert_eq!(
        logs.len(),
        REQUESTS,
        "every record reached the live collector"
    );
    let (path, headers) = receiver.http_heads().remove(0);
    assert_eq!(path, "/v1/logs");
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/x-protobuf")
    );
    let body = format!("{:?}", logs[0].record.body);
    assert!(body.contains("/r0 200"), "{body}");
    let dropped_all = eventually(Duration::from_secs(15), || async {
        sluice
            .stat("access_logs.open_telemetry_access_log.dead.logs_dropped")
            .await
            .unwrap()
            == REQUESTS as i64
    })
    .await;
    assert!(
        dropped_all,
        "the dead collector's records are dropped and counted"
    );
    assert_eq!(
        sluice
            .stat("access_logs.open_telemetry_access_log.live.logs_dropped")
            .await
            .unwrap(),
        0
    );
}

/// One run of a request retried twice against a failing upstream: the spans' shapes
/// (sorted: CLIENT spans by retry count, then the SERVER span) and, per upstream attempt,
/// whether its `traceparent` named that attempt's CLIENT span.
async fn retried_run(envoy: bool) -> (Vec<Value>, Vec<bool>) {
    let upstream = Upstream::start("app").await;
    let receiver = OtlpReceiver::start().await;
    let (admin, listener) = (free_addr(), free_addr());
    let mut config: Value = serde_json::from_str(&traced_config(
        admin,
        listener,
        upstream.addr,
        receiver.addr,
        json!({ "spawn_upstream_span": true }),
    ))
    .unwrap();
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["retry_policy"] =
        json!({ "retry_on": "5xx", "num_retries": 2 });
    let proxy = start_proxy(envoy, &config.to_string(), admin).await;
    let reply = HttpClient::http1()
        .get(listener, "h", "/retried", &[("x-test-status", "503")])
        .await
        .unwrap();
    assert_eq!(reply.status, 503);
    let mut spans = receiver.wait_for(4, Duration::from_secs(10)).await;
    drop(proxy);
    spans.sort_by_key(|s| (s.span.kind, s.attribute("retry.count")));
    let server = spans
        .iter()
        .find(|s| s.span.kind == 2)
        .expect("a SERVER span");
    let clients: Vec<&Received> = spans.iter().filter(|s| s.span.kind == 3).collect();
    for client in &clients {
        assert_eq!(
            client.parent_span_id(),
            server.span_id(),
            "children of the SERVER span"
        );
    }
    let named = upstream
        .seen()
        .iter()
        .zip(&clients)
        .map(|(seen, client)| {
            seen.headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_string())
                == Some(traceparent(&client.trace_id(), &client.span_id(), "01"))
        })
        .collect();
    let shapes = spans
        .iter()
        .map(|s| {
            json!({ "shape": shape(s), "retry": s.attribute("retry.count"),
                    "canceled": s.attribute("canceled"), "status": s.attribute("http.status_code"),
                    "flags": s.attribute("response_flags") })
        })
        .collect();
    (shapes, named)
}

#[tokio::test]
async fn each_retry_gets_its_own_upstream_span_as_in_envoy() {
    let (envoy_spans, envoy_named) = retried_run(true).await;
    let (sluice_spans, sluice_named) = retried_run(false).await;
    assert_eq!(
        envoy_spans.len(),
        4,
        "three attempts and the stream: {envoy_spans:#?}"
    );
    assert_eq!(
        envoy_named,
        vec![true; 3],
        "envoy: each attempt names its span"
    );
    assert_eq!(
        sluice_named,
        vec![true; 3],
        "sluice: each attempt names its span"
    );
    assert_eq!(envoy_spans, sluice_spans);
}

/// A health check passed to the upstream with a sampled `traceparent`, and an ordinary
/// request after it: what the upstream saw of each, and how many spans were exported.
async fn health_check_trace_run(envoy: bool) -> (Vec<Option<String>>, usize) {
    let upstream = Upstream::start("app").await;
    let receiver = OtlpReceiver::start().await;
    let (admin, listener) = (free_addr(), free_addr());
    let mut config: Value = serde_json::from_str(&traced_config(
        admin,
        listener,
        upstream.addr,
        receiver.addr,
        json!({}),
    ))
    .unwrap();
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"] = json!([
        { "name": "envoy.filters.http.health_check", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
            "pass_through_mode": true,
            "headers": [ { "name": ":path", "string_match": { "exact": "/healthz" } } ] } },
        { "name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ]);
    let proxy = start_proxy(envoy, &config.to_string(), admin).await;
    let sampled = traceparent(TRACE, PARENT, "01");
    let client = HttpClient::http1();
    for path in ["/healthz", "/work"] {
        let reply = client
            .get(listener, "h", path, &[("traceparent", sampled.as_str())])
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{path}");
    }
    let spans = receiver.wait_for(1, Duration::from_secs(10)).await;
    // Long enough for a stray span of the health check to arrive too.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(proxy);
    let flags = upstream
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.rsplit('-').next().unwrap_or_default().to_string())
        })
        .collect();
    (flags, spans.len().max(receiver.spans().len()))
}

#[tokio::test]
async fn health_checks_are_not_traced_as_in_envoy() {
    let (envoy_flags, envoy_spans) = health_check_trace_run(true).await;
    let (sluice_flags, sluice_spans) = health_check_trace_run(false).await;
    assert_eq!(envoy_spans, 1, "only the ordinary request's span");
    assert_eq!(
        envoy_flags,
        vec![Some("00".to_string()), Some("01".to_string())],
        "envoy: the health check goes upstream unsampled"
    );
    assert_eq!((sluice_flags, sluice_spans), (envoy_flags, envoy_spans));
}
