//! The web-server filters through real Envoy and `sluice` with the same config: the
//! buffer filter (whole bodies, 413 past the limit, a route's own limit or none) and the
//! health check filter (answering and pass-through modes, `/healthcheck/fail`, cluster
//! minimums, what the access log and the upstream see).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use sluice_tests::client::{raw_exchange, raw_status, HttpClient};
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

const BUFFER: &str = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer";
const BUFFER_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute";

fn buffer_config(admin: SocketAddr, listener: SocketAddr, upstream: SocketAddr) -> String {
    let route = |prefix: &str, per_filter: Value| {
        json!({ "match": { "prefix": prefix }, "route": { "cluster": "app" },
                "typed_per_filter_config": per_filter })
    };
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        route("/wide", json!({ "envoy.filters.http.buffer": {
            "@type": BUFFER_PER_ROUTE, "buffer": { "max_request_bytes": 64 } } })),
        route("/off", json!({ "envoy.filters.http.buffer": {
            "@type": BUFFER_PER_ROUTE, "disabled": true } })),
        route("/", json!({})) ] } ] });
    let hcm = json!({ "http_filters": [
        { "name": "envoy.filters.http.buffer",
          "typed_config": { "@type": BUFFER, "max_request_bytes": 16 } },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] });
    bootstrap(
        admin,
        vec![http_listener("web", listener, routes, hcm)],
        vec![cluster("app", &[(upstream, 1)], json!({}))],
    )
}

/// What each case answered and what the upstream received, for one proxy.
async fn buffer_run(envoy: bool) -> Vec<Value> {
    let upstream = Upstream::start("app").await;
    let (admin, listener) = (free_addr(), free_addr());
    let config = buffer_config(admin, listener, upstream.addr);
    let _proxy: Box<dyn std::any::Any> = if envoy {
        Box::new(Envoy::start(&config, admin).await.expect("start envoy"))
    } else {
        Box::new(Sluice::start(&config, admin).await.expect("start sluice"))
    };
    let client = HttpClient::http1();
    let mut out = Vec::new();
    for (path, size) in [
        ("/small", 10),
        ("/exact", 16),
        ("/over", 17),
        ("/wide/in", 40),
        ("/wide/over", 100),
        ("/off/large", 100),
    ] {
        let reply = client
            .send(listener, Method::POST, "h", path, &[], vec![b'x'; size])
            .await
            .unwrap();
        out.push(json!({ "path": path, "status": reply.status.as_u16(),
            "body": if reply.status == 413 { String::from_utf8_lossy(&reply.body).into_owned() } else { String::new() } }));
    }
    let reply = client.get(listener, "h", "/get", &[]).await.unwrap();
    out.push(json!({ "path": "/get", "status": reply.status.as_u16() }));
    let reply = HttpClient::http2()
        .send(listener, Method::POST, "h", "/h2", &[], vec![b'y'; 12])
        .await
        .unwrap();
    out.push(json!({ "path": "/h2", "status": reply.status.as_u16() }));
    // Chunked: the filter holds the whole body, and the upstream gets it with a length.
    for (path, chunks) in [
        ("/chunked", vec!["hello ", "world"]),
        ("/chunked-over", vec!["0123456789", "0123456789"]),
    ] {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        for c in &chunks {
            raw.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
        }
        raw.push_str("0\r\n\r\n");
        let answer = raw_exchange(listener, raw.as_bytes(), Duration::from_secs(5))
            .await
            .unwrap();
        out.push(json!({ "path": path, "status": raw_status(&answer) }));
    }
    let seen: Vec<Value> = upstream
        .seen()
        .into_iter()
        .map(|s| {
            let header = |n: &str| s.headers.get(n).map(|v| v.to_str().unwrap().to_string());
            json!({ "path": s.path, "bytes": s.body_bytes,
                    "content-length": header("content-length"),
                    "chunked": header("transfer-encoding").is_some() })
        })
        .collect();
    out.push(json!({ "upstream saw": seen }));
    out
}

#[tokio::test]
async fn the_buffer_filter_answers_as_envoys() {
    let envoy = buffer_run(true).await;
    let sluice = buffer_run(false).await;
    let status = |run: &[Value], path: &str| {
        run.iter()
            .find(|v| v["path"] == path)
            .map(|v| v["status"].clone())
            .unwrap()
    };
    assert_eq!(status(&envoy, "/over"), 413, "{envoy:#?}");
    assert_eq!(status(&envoy, "/off/large"), 200, "{envoy:#?}");
    assert_eq!(envoy, sluice);
}

const HEALTH_CHECK: &str =
    "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck";

/// A listener whose health check filter takes `path` for a health check, with `extra`
/// filter settings, logging every other request to `log`.
fn health_listener(name: &str, addr: SocketAddr, path: &str, extra: Value, log: &Path) -> Value {
    let mut filter = json!({ "@type": HEALTH_CHECK,
        "headers": [ { "name": ":path", "string_match": { "exact": path } } ] });
    sluice_tests::config::merge(&mut filter, extra);
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "app" } } ] } ] });
    let hcm = json!({
        "http_filters": [
            { "name": "envoy.filters.http.health_check", "typed_config": filter },
            { "name": "envoy.filters.http.router",
              "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ],
        "access_log": [ { "name": "envoy.access_loggers.file",
            "filter": { "not_health_check_filter": {} },
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": log.to_str().unwrap(),
                "log_format": { "text_format_source": { "inline_string": format!("{name} %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n") } } } } ] });
    http_listener(name, addr, routes, hcm)
}

/// The health-check cases through one proxy: answers, the headers that mark them, what
/// reached the upstream, and the access log lines.
async fn health_run(envoy: bool) -> Vec<Value> {
    let upstream = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (admin, answering, passing, guarded) = (free_addr(), free_addr(), free_addr(), free_addr());
    let config = bootstrap(
        admin,
        vec![
            health_listener(
                "answering",
                answering,
                "/healthz",
                json!({
                "pass_through_mode": false,
                "cluster_min_healthy_percentages": { "app": { "value": 100 } } }),
                &log,
            ),
            health_listener(
                "passing",
                passing,
                "/hc",
                json!({
                "pass_through_mode": true, "cache_time": "60s" }),
                &log,
            ),
            health_listener(
                "guarded",
                guarded,
                "/healthz",
                json!({
                "pass_through_mode": false,
                "cluster_min_healthy_percentages": { "ghost": { "value": 50 } } }),
                &log,
            ),
        ],
        vec![cluster("app", &[(upstream.addr, 1)], json!({}))],
    );
    let _proxy: Box<dyn std::any::Any> = if envoy {
        Box::new(Envoy::start(&config, admin).await.expect("start envoy"))
    } else {
        Box::new(Sluice::start(&config, admin).await.expect("start sluice"))
    };
    let client = HttpClient::http1();
    let mut out = Vec::new();
    let mut probe = |label: &str, reply: sluice_tests::client::Reply| {
        out.push(json!({ "case": label, "status": reply.status.as_u16(),
            "body": String::from_utf8_lossy(&reply.body).len(),
            "headers": reply.headers_named(&[
                "x-envoy-upstream-healthchecked-cluster",
                "x-envoy-immediate-health-check-fail" ]) }));
    };
    let admin_post = |path: &'static str| {
        let client = HttpClient::http1();
        async move {
            let reply = client
                .send(admin, Method::POST, "admin", path, &[], Vec::new())
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "{path}");
        }
    };
    probe(
        "answered",
        client.get(answering, "h", "/healthz", &[]).await.unwrap(),
    );
    probe(
        "not a check",
        client.get(answering, "h", "/app", &[]).await.unwrap(),
    );
    probe(
        "guarded by a missing cluster",
        client.get(guarded, "h", "/healthz", &[]).await.unwrap(),
    );
    probe(
        "passed through",
        client.get(passing, "h", "/hc", &[]).await.unwrap(),
    );
    probe(
        "from the cache",
        client.get(passing, "h", "/hc", &[]).await.unwrap(),
    );
    admin_post("/healthcheck/fail").await;
    probe(
        "failing: answered",
        client.get(answering, "h", "/healthz", &[]).await.unwrap(),
    );
    probe(
        "failing: passed",
        client.get(passing, "h", "/hc", &[]).await.unwrap(),
    );
    probe(
        "failing: not a check",
        client.get(answering, "h", "/app", &[]).await.unwrap(),
    );
    admin_post("/healthcheck/ok").await;
    probe(
        "recovered",
        client.get(answering, "h", "/healthz", &[]).await.unwrap(),
    );
    let seen: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    out.push(json!({ "upstream saw": seen }));
    let lines = super::access_log::read_lines(&log, 2).await;
    out.push(json!({ "logged": lines }));
    out
}

#[tokio::test]
async fn the_health_check_filter_answers_as_envoys() {
    let envoy = health_run(true).await;
    let sluice = health_run(false).await;
    assert_eq!(envoy[0]["status"], 200, "{envoy:#?}");
    assert_eq!(envoy[5]["status"], 503, "{envoy:#?}");
    assert_eq!(envoy, sluice);
}
