//! The connection manager's path policy through Envoy and `sluice`: the same corpus of
//! encoded, dotted and doubled-slash paths, under each escaped-slash action, must reach
//! the same cluster with the same upstream path (or get the same refusal or redirect).
//! Also the router's `x-envoy-*` headers, `suppress_envoy_headers`, headers with
//! underscores, `server_header_transformation` and port stripping.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::client::raw_exchange;
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

const PATHS: &[&str] = &[
    "/a/./b",
    "/a/../b/x",
    "/%62/x",
    "//b//x",
    "/b//x///y",
    "/b%2Fx",
    "/b%2fx%5Cy",
    "/a/%2e%2e/b/y",
    "/a/%2E/b",
    "/b/x?q=/../z//w",
    "/a/..%2Fb/x",
    "/x/%7Euser",
    "/x/%7euser",
    "/x/%41%42",
    "/x/%3a%2F",
    "/x/%C3%A9",
    "/..",
    "/../b/x",
    "/b/x/.",
    "/b/x/..",
    "/b/./../b/x",
    "/b//../x",
    "/%2e%2e/b/x",
    "/b/%2e",
    "/x/%zz",
    "/x/%4",
];

/// `(stat_prefix, HCM fields)`: one listener per policy.
fn policies() -> Vec<(&'static str, Value)> {
    vec![
        ("off", json!({})),
        (
            "normalize",
            json!({ "normalize_path": true, "merge_slashes": true }),
        ),
        (
            "reject",
            json!({ "path_with_escaped_slashes_action": "REJECT_REQUEST" }),
        ),
        (
            "redirect",
            json!({ "normalize_path": true, "merge_slashes": true, "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT" }),
        ),
        (
            "unescape",
            json!({ "normalize_path": true, "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD" }),
        ),
    ]
}

fn routes() -> Value {
    json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/b/" }, "route": { "cluster": "b" } },
        { "match": { "prefix": "/" }, "route": { "cluster": "a", "timeout": "7s" } } ] } ] })
}

fn config(admin: SocketAddr, listeners: &[SocketAddr], a: &Upstream, b: &Upstream) -> String {
    bootstrap(
        admin,
        policies()
            .into_iter()
            .zip(listeners)
            .map(|((name, extra), addr)| http_listener(name, *addr, routes(), extra))
            .collect(),
        vec![
            cluster("a", &[(a.addr, 1)], json!({})),
            cluster("b", &[(b.addr, 1)], json!({})),
        ],
    )
}

/// A raw request's answer reduced to status, location, and the upstream and path the
/// echo upstream saw.
async fn send(listener: SocketAddr, path: &str) -> Value {
    let raw = format!("GET {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
    let answer = raw_exchange(listener, raw.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap_or_default();
    let status = sluice_tests::client::raw_status(&answer).unwrap_or(0);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(str::to_string);
    let echo: Value = body
        .find('{')
        .and_then(|i| serde_json::from_str(body[i..].trim_end_matches(|c| c != '}')).ok())
        .unwrap_or(Value::Null);
    json!({ "status": status, "location": location, "upstream": echo["server"], "path": echo["path"] })
}

async fn run(listeners: &[SocketAddr]) -> Vec<Value> {
    let mut out = Vec::new();
    for ((name, _), listener) in policies().iter().zip(listeners) {
        for path in PATHS {
            out.push(json!({ "policy": name, "path": path, "reply": send(*listener, path).await }));
        }
    }
    out
}

#[tokio::test]
async fn path_policies_route_like_envoy() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let listeners: Vec<SocketAddr> = policies().iter().map(|_| free_addr()).collect();

    let admin = free_addr();
    let envoy = Envoy::start(&config(admin, &listeners, &a, &b), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let envoy_replies = run(&listeners).await;
    drop(envoy);

    let admin = free_addr();
    let sluice = Sluice::start(&config(admin, &listeners, &a, &b), admin)
        .await
        .expect("start sluice");
    let sluice_replies = run(&listeners).await;
    drop(sluice);

    sluice_tests::assert_same_replies(&envoy_replies, &sluice_replies);
}

/// What the upstream and the client see of the router's headers and the connection
/// manager's header policies.
async fn header_policies(listener: SocketAddr, suppressed: SocketAddr) -> Value {
    let client = sluice_tests::client::HttpClient::http1();
    let plain = client
        .get(listener, "h:8080", "/x", &[("x_under", "1"), ("x-ok", "1")])
        .await
        .unwrap();
    let quiet = client.get(suppressed, "h", "/x", &[]).await.unwrap();
    let seen = plain.json();
    json!({
        "expected_timeout": seen["headers"]["x-envoy-expected-rq-timeout-ms"],
        "attempt_count_up": seen["headers"]["x-envoy-attempt-count"],
        "underscore_dropped": seen["headers"]["x_under"].is_null(),
        "service_time_present": plain.header("x-envoy-upstream-service-time").is_some_and(|v| v.parse::<u64>().is_ok()),
        "attempt_count_down": plain.header("x-envoy-attempt-count"),
        "server": plain.header("server"),
        "host_seen": seen["headers"]["host"],
        "suppressed_expected_timeout": quiet.json()["headers"]["x-envoy-expected-rq-timeout-ms"],
        "suppressed_service_time": quiet.header("x-envoy-upstream-service-time"),
    })
}

fn header_config(
    admin: SocketAddr,
    listener: SocketAddr,
    suppressed: SocketAddr,
    a: &Upstream,
) -> String {
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"],
        "include_request_attempt_count": true, "include_attempt_count_in_response": true,
        "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "a", "timeout": "7s",
            "retry_policy": { "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "3s" } } } ] } ] });
    let router = |suppress: bool| {
        json!([{ "name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "suppress_envoy_headers": suppress } }])
    };
    bootstrap(
        admin,
        vec![
            http_listener(
                "headers",
                listener,
                routes.clone(),
                json!({
                "http_filters": router(false),
                "common_http_protocol_options": { "headers_with_underscores_action": "DROP_HEADER" },
                "server_header_transformation": "PASS_THROUGH",
                "strip_any_host_port": true }),
            ),
            http_listener(
                "quiet",
                suppressed,
                routes,
                json!({ "http_filters": router(true) }),
            ),
        ],
        vec![cluster("a", &[(a.addr, 1)], json!({}))],
    )
}

#[tokio::test]
async fn router_headers_and_header_policies_match_envoy() {
    let a = Upstream::start("a").await;
    let (listener, suppressed) = (free_addr(), free_addr());
    let admin = free_addr();
    let envoy = Envoy::start(&header_config(admin, listener, suppressed, &a), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = header_policies(listener, suppressed).await;
    drop(envoy);
    let admin = free_addr();
    let sluice = Sluice::start(&header_config(admin, listener, suppressed, &a), admin)
        .await
        .expect("start sluice");
    let from_sluice = header_policies(listener, suppressed).await;
    let dropped = sluice
        .stat("http.headers.dropped_headers_with_underscores")
        .await
        .ok();
    drop(sluice);
    assert_eq!(from_sluice, from_envoy);
    assert_eq!(from_sluice["expected_timeout"], "3000");
    assert_eq!(dropped, Some(1));
}

fn mirror_config(
    admin: SocketAddr,
    listener: SocketAddr,
    a: &Upstream,
    shadow: &Upstream,
) -> String {
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/never" }, "route": { "cluster": "a",
            "request_mirror_policies": [ { "cluster": "shadow", "runtime_fraction": { "default_value": { "numerator": 0 } } } ] } },
        { "match": { "prefix": "/plain" }, "route": { "cluster": "a",
            "request_mirror_policies": [ { "cluster": "shadow", "disable_shadow_host_suffix_append": true } ] } },
        { "match": { "prefix": "/" }, "route": { "cluster": "a", "prefix_rewrite": "/up/",
            "request_mirror_policies": [ { "cluster": "shadow" } ] } } ] } ] });
    bootstrap(
        admin,
        vec![http_listener("mirror", listener, routes, json!({}))],
        vec![
            cluster("a", &[(a.addr, 1)], json!({})),
            cluster("shadow", &[(shadow.addr, 1)], json!({})),
        ],
    )
}

/// What the shadow upstream saw: `(method, host, path, body bytes)`, sorted.
async fn mirrored(listener: SocketAddr, shadow: &Upstream) -> Vec<(String, String, String, u64)> {
    let client = sluice_tests::client::HttpClient::http1();
    for (method, host, path, body) in [
        (http::Method::GET, "h", "/one?q=1", ""),
        (http::Method::POST, "svc.example:8080", "/two", "payload"),
        (http::Method::GET, "h", "/never", ""),
        (http::Method::GET, "h", "/plain", ""),
    ] {
        let reply = client
            .send(listener, method, host, path, &[], body.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
    }
    assert!(
        sluice_tests::eventually(Duration::from_secs(5), || async {
            shadow.seen().len() >= 3
        })
        .await,
        "three requests mirrored"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen: Vec<_> = shadow
        .seen()
        .into_iter()
        .map(|s| {
            let host = s
                .headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (s.method, host, s.path, s.body_bytes)
        })
        .collect();
    seen.sort();
    shadow.clear();
    seen
}

#[tokio::test]
async fn request_mirrors_match_envoy() {
    let (a, shadow) = (Upstream::start("a").await, Upstream::start("shadow").await);
    let listener = free_addr();
    let admin = free_addr();
    let envoy = Envoy::start(&mirror_config(admin, listener, &a, &shadow), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = mirrored(listener, &shadow).await;
    drop(envoy);
    let admin = free_addr();
    let sluice = Sluice::start(&mirror_config(admin, listener, &a, &shadow), admin)
        .await
        .expect("start sluice");
    let from_sluice = mirrored(listener, &shadow).await;
    drop(sluice);
    assert_eq!(from_sluice, from_envoy);
    assert_eq!(from_sluice.len(), 3);
}

fn timeout_config(admin: SocketAddr, listeners: [SocketAddr; 3], a: &Upstream) -> String {
    let [request_limited, duration_limited, idle_limited] = listeners;
    // No route timeout: only the connection manager's timers end these streams.
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "a", "timeout": "0s" } } ] } ] });
    let limited = |name: &str, addr: SocketAddr, extra: Value| {
        http_listener(name, addr, routes.clone(), extra)
    };
    bootstrap(
        admin,
        vec![
            limited(
                "request_limited",
                request_limited,
                json!({ "request_timeout": "0.5s" }),
            ),
            limited(
                "duration_limited",
                duration_limited,
                json!({ "common_http_protocol_options": { "max_stream_duration": "0.5s" } }),
            ),
            limited(
                "idle_limited",
                idle_limited,
                json!({ "stream_idle_timeout": "0.5s" }),
            ),
        ],
        vec![cluster("a", &[(a.addr, 1)], json!({}))],
    )
}

/// `(status, body)` of a raw exchange.
async fn raw(listener: SocketAddr, request: &str) -> (u16, String) {
    let answer = raw_exchange(listener, request.as_bytes(), Duration::from_secs(3))
        .await
        .unwrap_or_default();
    let status = sluice_tests::client::raw_status(&answer).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let body = if body.starts_with('{') {
        "<upstream>".to_string()
    } else {
        body
    };
    (status, body)
}

async fn timeouts(listeners: [SocketAddr; 3]) -> Vec<(u16, String)> {
    let [request_limited, duration_limited, idle_limited] = listeners;
    const STALLED: &str = "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc";
    const SLOW: &str =
        "GET / HTTP/1.1\r\nhost: h\r\nx-test-delay-ms: 1000\r\nconnection: close\r\n\r\n";
    const QUICK: &str = "GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n";
    vec![
        // The body never completes: the request timeout answers.
        raw(request_limited, STALLED).await,
        // Received in full: a slow upstream is not the request timeout's business.
        raw(request_limited, SLOW).await,
        // The stream as a whole may not outlive max_stream_duration.
        raw(duration_limited, SLOW).await,
        raw(duration_limited, QUICK).await,
        // No activity on the stream for the idle timeout, before any response.
        raw(idle_limited, STALLED).await,
        raw(idle_limited, SLOW).await,
        raw(idle_limited, QUICK).await,
    ]
}

#[tokio::test]
async fn request_stream_and_idle_timeouts_match_envoy() {
    let a = Upstream::start("a").await;
    let listeners = [free_addr(), free_addr(), free_addr()];
    let admin = free_addr();
    let envoy = Envoy::start(&timeout_config(admin, listeners, &a), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = timeouts(listeners).await;
    drop(envoy);
    let admin = free_addr();
    let sluice = Sluice::start(&timeout_config(admin, listeners, &a), admin)
        .await
        .expect("start sluice");
    let from_sluice = timeouts(listeners).await;
    drop(sluice);
    assert_eq!(from_sluice, from_envoy);
    assert_eq!(from_sluice[0].0, 408);
    assert_eq!(from_sluice[1].0, 200);
    assert_eq!(from_sluice[4].0, 408);
}
