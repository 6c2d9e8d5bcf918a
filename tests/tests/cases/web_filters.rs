//! The web-server filters through real Envoy and `sluice` with the same config: the
//! buffer filter (whole bodies, 413 past the limit, a route's own limit or none).

use std::net::SocketAddr;
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
