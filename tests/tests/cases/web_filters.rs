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

/// Envoy or sluice with `config`, kept running until the value is dropped.
async fn start(envoy: bool, config: &str, admin: SocketAddr) -> Box<dyn std::any::Any> {
    if envoy {
        Box::new(Envoy::start(config, admin).await.expect("start envoy"))
    } else {
        Box::new(Sluice::start(config, admin).await.expect("start sluice"))
    }
}

/// The non-zero admin counters under `prefix` that `keep` accepts, by name.
async fn counters(
    admin: SocketAddr,
    prefix: &str,
    keep: impl Fn(&str) -> bool,
) -> std::collections::BTreeMap<String, i64> {
    let stats = HttpClient::http1()
        .get(admin, "admin", "/stats", &[])
        .await
        .unwrap();
    String::from_utf8_lossy(&stats.body)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            let value: i64 = value.trim().parse().ok()?;
            (value != 0 && keep(name)).then(|| (name.to_string(), value))
        })
        .collect()
}

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
    let _proxy = start(envoy, &config, admin).await;
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
    let _proxy = start(envoy, &config, admin).await;
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

const COMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor";
const COMPRESSOR_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI: &str = "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD: &str = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd";

/// Two compressor filters (gzip from 10 bytes, uncompressible 206; brotli from 100 bytes,
/// removing Accept-Encoding upstream) in front of an upstream, a direct response, a route
/// whose only cluster has no hosts (a local reply), a route with gzip off and one with
/// gzip replaced by zstd.
fn compression_config(admin: SocketAddr, listener: SocketAddr, upstream: SocketAddr) -> String {
    let text = String::from_utf8(sluice_tests::upstream::test_text(300)).unwrap();
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/direct" },
          "direct_response": { "status": 200, "body": { "inline_string": text } } },
        { "match": { "prefix": "/dead" }, "route": { "cluster": "dead" } },
        { "match": { "prefix": "/plain" }, "route": { "cluster": "app" },
          "typed_per_filter_config": { "gzip": { "@type": COMPRESSOR_PER_ROUTE, "disabled": true } } },
        { "match": { "prefix": "/zstd" }, "route": { "cluster": "app" },
          "typed_per_filter_config": { "gzip": { "@type": COMPRESSOR_PER_ROUTE,
              "overrides": { "compressor_library": { "name": "z",
                  "typed_config": { "@type": ZSTD } } } } } },
        { "match": { "prefix": "/" }, "route": { "cluster": "app" } } ] } ] });
    let hcm = json!({ "http_filters": [
        { "name": "gzip", "typed_config": { "@type": COMPRESSOR,
            "compressor_library": { "name": "text", "typed_config": { "@type": GZIP,
                "compression_level": "BEST_SPEED", "window_bits": 15 } },
            "response_direction_config": {
                "common_config": { "min_content_length": 10 },
                "uncompressible_response_codes": [206] } } },
        { "name": "brotli", "typed_config": { "@type": COMPRESSOR,
            "compressor_library": { "name": "br", "typed_config": { "@type": BROTLI } },
            "response_direction_config": {
                "common_config": { "min_content_length": 100,
                    "content_type_matcher": [ { "prefix": "text/" }, { "exact": "application/json" } ] },
                "remove_accept_encoding_header": true } } },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] });
    bootstrap(
        admin,
        vec![http_listener("web", listener, routes, hcm)],
        vec![
            cluster("app", &[(upstream, 1)], json!({})),
            cluster("dead", &[], json!({})),
        ],
    )
}

/// The body as the client reads it after undoing `Content-Encoding`.
fn decoded(encoding: Option<&str>, body: &[u8]) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let result = match encoding {
        Some("gzip") => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        Some("br") => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        Some("zstd") => {
            zstd::stream::read::Decoder::new(body).and_then(|mut d| d.read_to_end(&mut out))
        }
        _ => {
            out = body.to_vec();
            Ok(0)
        }
    };
    match result {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) => format!("undecodable {encoding:?}: {e}"),
    }
}

/// One compression case: a request and what the upstream is asked to answer.
struct Squeeze {
    name: &'static str,
    method: Method,
    path: &'static str,
    accept: Option<&'static str>,
    upstream: Vec<(&'static str, &'static str)>,
    h2: bool,
}

fn squeeze(name: &'static str, path: &'static str, accept: Option<&'static str>) -> Squeeze {
    Squeeze {
        name,
        method: Method::GET,
        path,
        accept,
        upstream: vec![("x-test-text-bytes", "500")],
        h2: false,
    }
}

impl Squeeze {
    fn with(mut self, name: &'static str, value: &'static str) -> Self {
        if let Some(slot) = self.upstream.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            self.upstream.push((name, value));
        }
        self
    }
}

fn compression_corpus() -> Vec<Squeeze> {
    let header = "x-test-response-header";
    let huge: &'static str = Box::leak("x;q=0.1,".repeat(1000).into_boxed_str());
    let mut cases = vec![
        squeeze("gzip", "/a", Some("gzip")),
        squeeze("br", "/a", Some("br")),
        squeeze("zstd unknown here", "/a", Some("zstd")),
        squeeze("absent", "/a", None),
        squeeze("gzip q=0", "/a", Some("gzip;q=0")),
        squeeze("q list gzip wins", "/a", Some("br;q=0.5, gzip;q=0.8")),
        squeeze("q list br wins", "/a", Some("gzip;q=0.5, br")),
        squeeze("wildcard", "/a", Some("*")),
        squeeze("wildcard minus gzip", "/a", Some("gzip;q=0, *")),
        squeeze("wildcard q=0", "/a", Some("*;q=0")),
        squeeze("identity", "/a", Some("identity")),
        squeeze("identity over gzip", "/a", Some("identity;q=1, gzip;q=0.5")),
        squeeze("upper case", "/a", Some("GZIP")),
        squeeze("tie", "/a", Some("gzip, br")),
        squeeze(
            "spaces and params",
            "/a",
            Some(" br ; level=1 , gzip;Q=0.2"),
        ),
        squeeze("bad q", "/a", Some("gzip;q=abc")),
        squeeze("empty q", "/a", Some("gzip;q=")),
        squeeze("only commas", "/a", Some(",,,")),
        squeeze("huge header", "/a", Some(huge)),
        squeeze("br too small for br", "/a", Some("br")).with("x-test-text-bytes", "50"),
        squeeze("gzip small enough", "/a", Some("gzip")).with("x-test-text-bytes", "50"),
        squeeze("below every minimum", "/a", Some("gzip")).with("x-test-text-bytes", "9"),
        squeeze("image", "/a", Some("gzip, br")).with(header, "content-type: image/png"),
        squeeze("json with charset", "/a", Some("br"))
            .with(header, "content-type: application/json; charset=utf-8"),
        squeeze("no content type", "/a", Some("gzip")).with(header, "content-type: -"),
        squeeze("no-transform", "/a", Some("gzip"))
            .with(header, "cache-control: public, no-transform"),
        squeeze("already encoded", "/a", Some("gzip")).with(header, "content-encoding: gzip"),
        squeeze("strong etag", "/a", Some("gzip")).with(header, "etag: \"v1\""),
        squeeze("weak etag", "/a", Some("gzip")).with(header, "etag: W/\"v1\""),
        squeeze("vary kept", "/a", Some("gzip")).with(header, "vary: Origin"),
        squeeze("vary listed", "/a", Some("gzip")).with(header, "vary: Accept-Encoding"),
        squeeze("streamed", "/a", Some("gzip")).with("x-test-chunked", "1"),
        squeeze("streamed br", "/a", Some("br")).with("x-test-chunked", "1"),
        squeeze("partial content", "/a", Some("gzip")).with("x-test-status", "206"),
        squeeze("partial content br", "/a", Some("br")).with("x-test-status", "206"),
        squeeze("not found", "/a", Some("gzip")).with("x-test-status", "404"),
        squeeze("not modified", "/a", Some("gzip")).with("x-test-status", "304"),
        squeeze("direct response", "/direct", Some("gzip")),
        squeeze("local reply", "/dead", Some("gzip")),
        squeeze("local reply br", "/dead", Some("br")),
        squeeze("gzip off on route", "/plain", Some("gzip")),
        squeeze("gzip off on route br", "/plain", Some("br")),
        squeeze("zstd on route", "/zstd", Some("zstd")),
        squeeze("zstd route gzip", "/zstd", Some("gzip")),
    ];
    let mut head = squeeze("head", "/a", Some("gzip"));
    head.method = Method::HEAD;
    cases.push(head);
    let mut h2 = squeeze("h2", "/a", Some("gzip"));
    h2.h2 = true;
    cases.push(h2);
    let mut h2_streamed = squeeze("h2 streamed br", "/a", Some("br")).with("x-test-chunked", "1");
    h2_streamed.h2 = true;
    cases.push(h2_streamed);
    cases
}

/// What each case answered, what the upstream saw, and the compressor counters.
async fn compression_run(envoy: bool) -> (Vec<Value>, std::collections::BTreeMap<String, i64>) {
    let upstream = Upstream::start("app").await;
    let (admin, listener) = (free_addr(), free_addr());
    let config = compression_config(admin, listener, upstream.addr);
    let proxy = start(envoy, &config, admin).await;
    let (h1, h2) = (HttpClient::http1(), HttpClient::http2());
    let mut out = Vec::new();
    for case in compression_corpus() {
        let mut headers: Vec<(&str, &str)> = case.upstream.clone();
        if let Some(accept) = case.accept {
            headers.push(("accept-encoding", accept));
        }
        let client = if case.h2 { &h2 } else { &h1 };
        let reply = client
            .send(
                listener,
                case.method.clone(),
                "h",
                case.path,
                &headers,
                Vec::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let header = |n: &str| {
            let values: Vec<&str> = reply
                .headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        let encoding = header("content-encoding");
        out.push(json!({
            "case": case.name,
            "status": reply.status.as_u16(),
            "content-encoding": encoding,
            "vary": header("vary"),
            "etag": header("etag"),
            "content-length": header("content-length"),
            "body": decoded(encoding.as_deref(), &reply.body),
        }));
    }
    let seen: Vec<Value> = upstream
        .seen()
        .into_iter()
        .map(|s| {
            json!(s
                .headers
                .get("accept-encoding")
                .map(|v| v.to_str().unwrap().to_string()))
        })
        .collect();
    out.push(json!({ "upstream saw accept-encoding": seen }));
    // Byte totals differ with the codecs' output; events must not.
    let counters = counters(admin, "http.web.compressor.", |name| {
        !name.ends_with("_bytes")
    })
    .await;
    drop(proxy);
    (out, counters)
}

#[tokio::test]
async fn the_compressor_answers_as_envoys() {
    let (envoy, envoy_counters) = compression_run(true).await;
    let (sluice, sluice_counters) = compression_run(false).await;
    let find = |run: &[Value], case: &str| run.iter().find(|v| v["case"] == case).cloned().unwrap();
    assert_eq!(
        find(&envoy, "gzip")["content-encoding"],
        "gzip",
        "{envoy:#?}"
    );
    assert_eq!(find(&envoy, "br")["content-encoding"], "br", "{envoy:#?}");
    let differ: Vec<_> = envoy.iter().zip(&sluice).filter(|(e, s)| e != s).collect();
    assert!(differ.is_empty(), "envoy, then sluice: {differ:#?}");
    assert_eq!(envoy.len(), sluice.len());
    assert_eq!(envoy_counters, sluice_counters);
}

const DECOMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor";

/// A gzip decompressor with Envoy's defaults, then a brotli one that does not advertise
/// and decodes responses even under `no-transform`.
fn decompression_config(admin: SocketAddr, listener: SocketAddr, upstream: SocketAddr) -> String {
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "app" } } ] } ] });
    let hcm = json!({ "http_filters": [
        { "name": "gunzip", "typed_config": { "@type": DECOMPRESSOR,
            "decompressor_library": { "name": "gz", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip" } } } },
        { "name": "unbrotli", "typed_config": { "@type": DECOMPRESSOR,
            "decompressor_library": { "name": "br", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli" } },
            "request_direction_config": { "advertise_accept_encoding": false },
            "response_direction_config": { "common_config": { "ignore_no_transform_header": true } } } },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] });
    bootstrap(
        admin,
        vec![http_listener("web", listener, routes, hcm)],
        vec![cluster("app", &[(upstream, 1)], json!({}))],
    )
}

/// One decompression case: request headers and body, and whether it goes over HTTP/2.
struct Unsqueeze {
    name: &'static str,
    method: Method,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    h2: bool,
}

fn decompression_corpus() -> Vec<Unsqueeze> {
    use sluice_tests::upstream::{encode, test_text};
    let text = test_text(3000);
    let post = |name, headers: Vec<(&'static str, &'static str)>, body: Vec<u8>| Unsqueeze {
        name,
        method: Method::POST,
        headers: [vec![("x-test-echo-body", "1")], headers].concat(),
        body,
        h2: false,
    };
    let get = |name, headers: Vec<(&'static str, &'static str)>| Unsqueeze {
        name,
        method: Method::GET,
        headers: [vec![("x-test-text-bytes", "3000")], headers].concat(),
        body: Vec::new(),
        h2: false,
    };
    let mut cases = vec![
        post(
            "request gzip",
            vec![("content-encoding", "gzip")],
            encode("gzip", &text),
        ),
        post(
            "request gzip then br listed",
            vec![("content-encoding", "gzip, br")],
            encode("gzip", &encode("br", &text)),
        ),
        post(
            "request upper case",
            vec![("content-encoding", "GZIP")],
            encode("gzip", &text),
        ),
        post(
            "request no-transform",
            vec![
                ("content-encoding", "gzip"),
                ("cache-control", "no-transform"),
            ],
            encode("gzip", &text),
        ),
        post(
            "request br no-transform",
            vec![
                ("content-encoding", "br"),
                ("cache-control", "no-transform"),
            ],
            encode("br", &text),
        ),
        post(
            "request br",
            vec![("content-encoding", "br")],
            encode("br", &text),
        ),
        post(
            "request zstd passes",
            vec![("content-encoding", "zstd")],
            encode("zstd", &text),
        ),
        post("request plain", vec![], text.clone()),
        post(
            "request advertised after",
            vec![("accept-encoding", "br")],
            text.clone(),
        ),
        get(
            "no body, nothing advertised",
            vec![("accept-encoding", "br")],
        ),
        get("response gzip", vec![("x-test-encode", "gzip")]),
        get("response br", vec![("x-test-encode", "br")]),
        get("response zstd passes", vec![("x-test-encode", "zstd")]),
        get(
            "response gzip no-transform",
            vec![
                ("x-test-encode", "gzip"),
                ("x-test-response-header", "cache-control: no-transform"),
            ],
        ),
        get(
            "response br no-transform ignored",
            vec![
                ("x-test-encode", "br"),
                ("x-test-response-header", "cache-control: no-transform"),
            ],
        ),
        get(
            "response gzip, identity",
            vec![
                ("x-test-encode", "gzip"),
                ("x-test-response-header", "content-encoding: gzip, identity"),
            ],
        ),
        get(
            "response streamed",
            vec![("x-test-encode", "gzip"), ("x-test-chunked", "1")],
        ),
    ];
    let mut head = get("head", vec![("x-test-encode", "gzip")]);
    head.method = Method::HEAD;
    cases.push(head);
    let mut h2 = post(
        "h2 request gzip",
        vec![("content-encoding", "gzip")],
        encode("gzip", &text),
    );
    h2.h2 = true;
    cases.push(h2);
    let mut h2 = get("h2 response br", vec![("x-test-encode", "br")]);
    h2.h2 = true;
    cases.push(h2);
    cases
}

/// A body as the comparison shows it: the test text by its length, anything else as text.
fn summary(body: &[u8]) -> String {
    if body == sluice_tests::upstream::test_text(body.len()).as_slice() {
        format!("test text, {} bytes", body.len())
    } else {
        String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
    }
}

/// What each case answered and what the upstream saw, and the decompressor counters.
async fn decompression_run(envoy: bool) -> (Vec<Value>, std::collections::BTreeMap<String, i64>) {
    let upstream = Upstream::start("app").await;
    let (admin, listener) = (free_addr(), free_addr());
    let config = decompression_config(admin, listener, upstream.addr);
    let proxy = start(envoy, &config, admin).await;
    let (h1, h2) = (HttpClient::http1(), HttpClient::http2());
    let mut out = Vec::new();
    for case in decompression_corpus() {
        let client = if case.h2 { &h2 } else { &h1 };
        let reply = client
            .send(
                listener,
                case.method.clone(),
                "h",
                "/x",
                &case.headers,
                case.body.clone(),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let header = |n: &str| {
            reply
                .headers
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let encoding = header("content-encoding");
        // Undo what is left, so bodies compare as text.
        let mut body = reply.body.to_vec();
        for coding in encoding
            .iter()
            .flat_map(|e| e.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            body = decoded(Some(coding), &body).into_bytes();
        }
        let seen = upstream.seen().pop().unwrap();
        let saw = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        out.push(json!({
            "case": case.name,
            "status": reply.status.as_u16(),
            "content-encoding": encoding,
            "content-length": header("content-length").is_some(),
            "body": summary(&body),
            "upstream": { "content-encoding": saw("content-encoding"),
                "content-length": saw("content-length").is_some(),
                "accept-encoding": saw("accept-encoding"), "bytes": seen.body_bytes },
        }));
    }
    let counters = counters(admin, "http.web.decompressor.", |_| true).await;
    drop(proxy);
    (out, counters)
}

#[tokio::test]
async fn the_decompressor_answers_as_envoys() {
    let (envoy, envoy_counters) = decompression_run(true).await;
    let (sluice, sluice_counters) = decompression_run(false).await;
    let find = |run: &[Value], case: &str| run.iter().find(|v| v["case"] == case).cloned().unwrap();
    assert_eq!(
        find(&envoy, "request gzip")["upstream"]["content-encoding"],
        Value::Null,
        "{envoy:#?}"
    );
    assert_eq!(
        find(&envoy, "response br")["content-encoding"],
        Value::Null,
        "{envoy:#?}"
    );
    let differ: Vec<_> = envoy.iter().zip(&sluice).filter(|(e, s)| e != s).collect();
    assert!(differ.is_empty(), "envoy, then sluice: {differ:#?}");
    assert_eq!(envoy.len(), sluice.len());
    assert_eq!(envoy_counters, sluice_counters);
}

/// Compressed bombs through the decompressor: a gzip body that inflates past
/// `max_inflate_ratio` is cut off before the upstream has it all; a brotli one (no ratio in
/// Envoy's library) streams through in bounded memory; the proxy serves on.
#[tokio::test]
async fn compressed_bombs_are_cut_off_or_streamed_in_bounded_memory() {
    use std::io::Write;
    let upstream = Upstream::start("app").await;
    let (admin, listener) = (free_addr(), free_addr());
    let sluice = Sluice::start(&decompression_config(admin, listener, upstream.addr), admin)
        .await
        .expect("start sluice");
    let zeros = vec![0u8; 128 << 20];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&zeros).unwrap();
    let gzip_bomb = gz.finish().unwrap();
    let brotli_bomb = sluice_tests::upstream::encode("br", &zeros);
    drop(zeros);
    let client = HttpClient::http1();
    let gzip = client
        .send(
            listener,
            Method::POST,
            "h",
            "/gzip-bomb",
            &[("content-encoding", "gzip")],
            gzip_bomb.clone(),
        )
        .await;
    assert!(
        gzip.as_ref().map_or(true, |r| r.status != 200),
        "a body past max_inflate_ratio must not be answered 200: {:?}",
        gzip.map(|r| r.status)
    );
    // A fresh connection: the gzip bomb's was reset, and a pooled one may still look open.
    let brotli = HttpClient::http1()
        .send(
            listener,
            Method::POST,
            "h",
            "/brotli-bomb",
            &[("content-encoding", "br")],
            brotli_bomb.clone(),
        )
        .await
        .unwrap();
    assert_eq!(brotli.status, 200);
    let seen = upstream.seen();
    assert!(
        !seen.iter().any(|s| s.path == "/gzip-bomb"),
        "the gzip bomb reached the upstream whole: {:?}",
        seen.iter()
            .map(|s| (&s.path, s.body_bytes))
            .collect::<Vec<_>>()
    );
    let streamed = seen.iter().find(|s| s.path == "/brotli-bomb").unwrap();
    assert_eq!(streamed.body_bytes, 128 << 20);
    let peak = sluice_tests::process::peak_rss_of(sluice.pid());
    assert!(
        peak < 64 << 20,
        "sluice's peak RSS was {} MiB for {} KiB of brotli inflating to 128 MiB",
        peak >> 20,
        brotli_bomb.len() >> 10
    );
    let after = client.get(listener, "h", "/after", &[]).await.unwrap();
    assert_eq!(after.status, 200);
    let ratio = sluice
        .stat("http.web.decompressor.gz.gzip.request.total_uncompressed_bytes")
        .await
        .unwrap();
    assert!(
        ratio as usize <= 100 * gzip_bomb.len() + (64 << 10),
        "inflated {ratio} bytes from {}",
        gzip_bomb.len()
    );
}
