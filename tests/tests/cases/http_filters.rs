//! The HTTP filter chain through real Envoy and `sluice`: one connection manager with
//! CORS, local rate limit, basic auth (disabled on the listener, switched on per route),
//! RBAC and fault in front of the router, and a corpus of requests whose statuses, bodies
//! and CORS / WWW-Authenticate / rate-limit headers must be the same from both. Then the
//! per-client rate limit from two loopback addresses, and hostile filter inputs.

use std::net::SocketAddr;

use http::Method;
use serde_json::{json, Value};
use sluice_tests::client::{HttpClient, Reply};
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

/// `{SHA}` of "test" (`htpasswd -s`); the users are `user` and `admin`, both "test".
const USERS: &str = "user:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=";
const ADMINS: &str = "admin:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=";

const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "www-authenticate",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-rl-by",
    "grpc-status",
    "grpc-message",
    "x-resp-mut",
    "x-resp-route",
];
const UPSTREAM_HEADERS: &[&str] = &[
    "x-username",
    "x-rl",
    "authorization",
    "x-added",
    "x-strip-me",
];

fn typed(url: &str, mut body: Value) -> Value {
    body["@type"] = json!(url);
    body
}

const CORS_POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const LOCAL_RL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const RBAC_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
const HEADER_MUTATION: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation";

fn http_filters() -> Value {
    json!([
        { "name": "envoy.filters.http.header_mutation",
          "typed_config": { "@type": HEADER_MUTATION, "mutations": {
              "request_mutations": [ { "remove": "x-strip-me" },
                  { "append": { "header": { "key": "x-added", "value": "listener" }, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD" } } ],
              "response_mutations": [ { "append": { "header": { "key": "x-resp-mut", "value": "listener" } } } ] } } },
        { "name": "envoy.filters.http.cors",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" } },
        { "name": "envoy.filters.http.local_ratelimit",
          "typed_config": typed(LOCAL_RL, json!({
              "stat_prefix": "listener_rl",
              "token_bucket": { "max_tokens": 1, "fill_interval": "3600s" },
              "enable_x_ratelimit_headers": "DRAFT_VERSION_03" })) },
        { "name": "envoy.filters.http.basic_auth", "disabled": true,
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
                            "users": { "inline_string": USERS }, "forward_username_header": "x-username" } },
        { "name": "envoy.filters.http.rbac",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
              "rules": { "action": "DENY", "policies": {
                  "evil": { "permissions": [ { "or_rules": { "rules": [
                                { "header": { "name": "x-evil", "present_match": true } },
                                { "url_path": { "path": { "prefix": "/admin" } } } ] } } ],
                            "principals": [ { "any": true } ] } } },
              "shadow_rules": { "action": "ALLOW", "policies": {
                  "get-only": { "permissions": [ { "header": { "name": ":method", "string_match": { "exact": "GET" } } } ],
                                "principals": [ { "any": true } ] } } } } },
        { "name": "envoy.filters.http.fault",
          "typed_config": typed(FAULT, json!({})) },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
    ])
}

fn route(prefix: &str, per_filter: Value) -> Value {
    json!({ "match": { "prefix": prefix }, "route": { "cluster": "a" }, "typed_per_filter_config": per_filter })
}

fn routes() -> Value {
    let limited = |max: u32, enforced: bool| {
        let mut c = json!({
            "stat_prefix": "route_rl",
            "token_bucket": { "max_tokens": max, "fill_interval": "3600s" },
            "filter_enabled": { "default_value": { "numerator": 100 } },
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "request_headers_to_add_when_not_enforced": [ { "header": { "key": "x-rl", "value": "over" } } ],
            "response_headers_to_add": [ { "header": { "key": "x-rl-by", "value": "route" } } ] });
        if enforced {
            c["filter_enforced"] = json!({ "default_value": { "numerator": 100 } });
        }
        typed(LOCAL_RL, c)
    };
    json!({
        "name": "filters",
        "virtual_hosts": [
            { "name": "nothing", "domains": ["empty.test"], "routes": [] },
            { "name": "main", "domains": ["*"],
              "typed_per_filter_config": {
                  "envoy.filters.http.cors": typed(CORS_POLICY, json!({
                      "allow_origin_string_match": [ { "exact": "https://good.example" } ],
                      "allow_methods": "GET, POST", "allow_headers": "x-a, x-b",
                      "expose_headers": "x-exp", "max_age": "600", "allow_credentials": true })) },
              "routes": [
                route("/cors-star", json!({ "envoy.filters.http.cors": typed(CORS_POLICY, json!({
                    "allow_origin_string_match": [ { "suffix": ".star.example" } ],
                    "allow_methods": "*", "allow_headers": "*",
                    "forward_not_matching_preflights": false })) })),
                { "match": { "prefix": "/direct" }, "direct_response": { "status": 200, "body": { "inline_string": "direct" } } },
                route("/limited-shadow", json!({ "envoy.filters.http.local_ratelimit": limited(1, false) })),
                route("/limited", json!({ "envoy.filters.http.local_ratelimit": limited(2, true) })),
                route("/auth-on", json!({ "envoy.filters.http.basic_auth": typed(FILTER_CONFIG, json!({ "disabled": false,
                    "config": typed("type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute",
                        json!({ "users": { "inline_string": USERS } })) })) })),
                route("/auth-admins", json!({ "envoy.filters.http.basic_auth": typed(
                    "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute",
                    json!({ "users": { "inline_string": ADMINS } })) })),
                route("/rbac-off", json!({ "envoy.filters.http.rbac": typed(RBAC_PER_ROUTE, json!({})) })),
                route("/rbac-role", json!({ "envoy.filters.http.rbac": typed(RBAC_PER_ROUTE, json!({ "rbac": { "rules": {
                    "action": "ALLOW", "policies": { "admins": {
                        "permissions": [ { "header": { "name": ":method", "string_match": { "exact": "GET" } } } ],
                        "principals": [ { "header": { "name": "x-role", "string_match": { "exact": "admin" } } } ] } } } } })) })),
                route("/fault-abort", json!({ "envoy.filters.http.fault": typed(FAULT, json!({
                    "abort": { "http_status": 503, "percentage": { "numerator": 100 } } })) })),
                route("/fault-body", json!({ "envoy.filters.http.fault": typed(FAULT, json!({
                    "abort": { "http_status": 429, "response_body": "slow down", "percentage": { "numerator": 100 } } })) })),
                route("/fault-header", json!({ "envoy.filters.http.fault": typed(FAULT, json!({
                    "abort": { "header_abort": {}, "percentage": { "numerator": 100 } } })) })),
                route("/fault-delay", json!({ "envoy.filters.http.fault": typed(FAULT, json!({
                    "delay": { "fixed_delay": "0.05s", "percentage": { "numerator": 100 } } })) })),
                route("/fault-grpc", json!({ "envoy.filters.http.fault": typed(FAULT, json!({
                    "abort": { "grpc_status": 14, "percentage": { "numerator": 100 } } })) })),
                route("/fault-none", json!({ "envoy.filters.http.fault": typed(FAULT, json!({
                    "abort": { "http_status": 500, "percentage": { "numerator": 0 } } })) })),
                route("/mutate", json!({ "envoy.filters.http.header_mutation": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
                    "mutations": {
                        "request_mutations": [ { "append": { "header": { "key": "x-added", "value": "route" }, "append_action": "APPEND_IF_EXISTS_OR_ADD" } } ],
                        "response_mutations": [ { "remove_on_match": { "key_matcher": { "prefix": "x-resp-m" } } },
                                                { "append": { "header": { "key": "x-resp-route", "value": "route" } } } ] } } })),
                route("/fault-off", json!({ "envoy.filters.http.fault": typed(FILTER_CONFIG, json!({ "disabled": true })) })),
                route("/", json!({}))
              ] }
        ]
    })
}

type Case = (
    &'static str,
    &'static str,
    Method,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

/// `Authorization` for `name:test`.
fn basic(name: &str) -> &'static str {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{name}:test"));
    Box::leak(format!("Basic {token}").into_boxed_str())
}

fn corpus() -> Vec<Case> {
    use Method as M;
    let good = ("origin", "https://good.example");
    let bad = ("origin", "https://evil.example");
    let acrm = |m: &'static str| ("access-control-request-method", m);
    vec![
        ("cors simple allowed", "h", M::GET, "/cors/x", vec![good]),
        ("cors simple disallowed", "h", M::GET, "/cors/x", vec![bad]),
        ("cors no origin", "h", M::GET, "/cors/x", vec![]),
        (
            "cors empty origin",
            "h",
            M::GET,
            "/cors/x",
            vec![("origin", "")],
        ),
        (
            "cors preflight allowed",
            "h",
            M::OPTIONS,
            "/cors/x",
            vec![good, acrm("POST")],
        ),
        (
            "cors preflight with request headers",
            "h",
            M::OPTIONS,
            "/cors/x",
            vec![good, acrm("PUT"), ("access-control-request-headers", "x-z")],
        ),
        (
            "cors preflight disallowed is forwarded",
            "h",
            M::OPTIONS,
            "/cors/x",
            vec![bad, acrm("GET")],
        ),
        (
            "cors options without request method",
            "h",
            M::OPTIONS,
            "/cors/x",
            vec![good],
        ),
        ("cors post allowed", "h", M::POST, "/cors/post", vec![good]),
        (
            "cors route policy echoes",
            "h",
            M::OPTIONS,
            "/cors-star",
            vec![
                ("origin", "https://a.star.example"),
                acrm("PATCH"),
                ("access-control-request-headers", "x-q, x-r"),
            ],
        ),
        (
            "cors route policy refuses preflight",
            "h",
            M::OPTIONS,
            "/cors-star",
            vec![("origin", "https://good.example"), acrm("GET")],
        ),
        (
            "cors route simple allowed",
            "h",
            M::GET,
            "/cors-star",
            vec![("origin", "https://b.star.example")],
        ),
        (
            "cors on direct response",
            "h",
            M::GET,
            "/direct",
            vec![good],
        ),
        ("cors no route", "empty.test", M::GET, "/", vec![good]),
        (
            "ratelimit listener default is off",
            "h",
            M::GET,
            "/cors/a",
            vec![],
        ),
        (
            "ratelimit listener default is off again",
            "h",
            M::GET,
            "/cors/b",
            vec![],
        ),
        ("ratelimit first", "h", M::GET, "/limited", vec![]),
        ("ratelimit second", "h", M::GET, "/limited", vec![]),
        ("ratelimit third refused", "h", M::GET, "/limited", vec![]),
        (
            "ratelimit refused with origin",
            "h",
            M::GET,
            "/limited",
            vec![good],
        ),
        (
            "ratelimit shadow first",
            "h",
            M::GET,
            "/limited-shadow",
            vec![],
        ),
        (
            "ratelimit shadow over not enforced",
            "h",
            M::GET,
            "/limited-shadow",
            vec![],
        ),
        (
            "basic auth off on listener",
            "h",
            M::GET,
            "/cors/auth",
            vec![],
        ),
        ("basic auth missing", "h", M::GET, "/auth-on/x?y=1", vec![]),
        (
            "basic auth wrong scheme",
            "h",
            M::GET,
            "/auth-on/x",
            vec![("authorization", "Bearer abc")],
        ),
        (
            "basic auth no colon",
            "h",
            M::GET,
            "/auth-on/x",
            vec![("authorization", "Basic dXNlcg==")],
        ),
        (
            "basic auth garbage",
            "h",
            M::GET,
            "/auth-on/x",
            vec![("authorization", "Basic !!!")],
        ),
        (
            "basic auth wrong password",
            "h",
            M::GET,
            "/auth-on/x",
            vec![("authorization", "Basic dXNlcjpub3Bl")],
        ),
        (
            "basic auth ok",
            "h",
            M::GET,
            "/auth-on/x",
            vec![("authorization", basic("user"))],
        ),
        (
            "basic auth refused with cors",
            "h",
            M::GET,
            "/auth-on/x",
            vec![good],
        ),
        (
            "basic auth route users refuse",
            "h",
            M::GET,
            "/auth-admins",
            vec![("authorization", basic("user"))],
        ),
        (
            "basic auth route users accept",
            "h",
            M::GET,
            "/auth-admins",
            vec![("authorization", basic("admin"))],
        ),
        (
            "rbac header denied",
            "h",
            M::GET,
            "/cors/x",
            vec![("x-evil", "1")],
        ),
        ("rbac path denied", "h", M::GET, "/admin/panel", vec![]),
        (
            "rbac off per route",
            "h",
            M::GET,
            "/rbac-off",
            vec![("x-evil", "1")],
        ),
        ("rbac route role missing", "h", M::GET, "/rbac-role", vec![]),
        (
            "rbac route role ok",
            "h",
            M::GET,
            "/rbac-role",
            vec![("x-role", "admin")],
        ),
        (
            "rbac route ignores listener rule",
            "h",
            M::GET,
            "/rbac-role",
            vec![("x-role", "admin"), ("x-evil", "1")],
        ),
        (
            "rbac route method refused",
            "h",
            M::POST,
            "/rbac-role",
            vec![("x-role", "admin")],
        ),
        ("fault abort", "h", M::GET, "/fault-abort", vec![]),
        (
            "fault abort with cors",
            "h",
            M::GET,
            "/fault-abort",
            vec![good],
        ),
        (
            "fault abort after rbac",
            "h",
            M::GET,
            "/fault-abort",
            vec![("x-evil", "1")],
        ),
        ("fault body", "h", M::GET, "/fault-body", vec![]),
        (
            "fault header abort",
            "h",
            M::GET,
            "/fault-header",
            vec![("x-envoy-fault-abort-request", "418")],
        ),
        ("fault header absent", "h", M::GET, "/fault-header", vec![]),
        (
            "fault header percentage zero",
            "h",
            M::GET,
            "/fault-header",
            vec![
                ("x-envoy-fault-abort-request", "418"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
        ),
        ("fault delay", "h", M::GET, "/fault-delay", vec![]),
        (
            "fault grpc",
            "h",
            M::POST,
            "/fault-grpc",
            vec![("content-type", "application/grpc")],
        ),
        ("fault never", "h", M::GET, "/fault-none", vec![]),
        ("fault disabled", "h", M::GET, "/fault-off", vec![]),
        (
            "header mutation",
            "h",
            M::GET,
            "/cors/m",
            vec![("x-strip-me", "1"), ("x-added", "client")],
        ),
        (
            "header mutation per route",
            "h",
            M::GET,
            "/mutate",
            vec![("x-strip-me", "1")],
        ),
    ]
}

fn config(admin: SocketAddr, listener: SocketAddr, upstream: &Upstream) -> String {
    bootstrap(
        admin,
        vec![http_listener(
            "filters",
            listener,
            routes(),
            json!({ "http_filters": http_filters() }),
        )],
        vec![cluster("a", &[(upstream.addr, 1)], json!({}))],
    )
}

fn normalize(reply: &Reply) -> Value {
    let headers = reply.headers_named(RESPONSE_HEADERS);
    let body = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(json) if json.get("server").is_some() => {
            let seen = sluice_tests::client::echoed_headers(&json, UPSTREAM_HEADERS);
            json!({ "upstream": json["server"], "path": json["path"], "headers": seen })
        }
        _ => Value::from(String::from_utf8_lossy(&reply.body).into_owned()),
    };
    json!({ "status": reply.status.as_u16(), "headers": headers, "body": body })
}

async fn run_corpus(listener: SocketAddr) -> Vec<Value> {
    let client = HttpClient::http1();
    let mut out = Vec::new();
    for (label, host, method, path, headers) in corpus() {
        let reply = client
            .send(listener, method, host, path, &headers, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        out.push(json!({ "case": label, "reply": normalize(&reply) }));
    }
    out
}

#[tokio::test]
async fn filter_chain_matches_envoy() {
    assert!(corpus().len() >= 40);
    let upstream = Upstream::start("a").await;

    let (admin, listener) = (free_addr(), free_addr());
    let envoy = Envoy::start(&config(admin, listener, &upstream), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let envoy_replies = run_corpus(listener).await;
    let envoy_denied = envoy.stat("http.filters.rbac.denied").await;
    drop(envoy);

    let (admin, listener) = (free_addr(), free_addr());
    let sluice = Sluice::start(&config(admin, listener, &upstream), admin)
        .await
        .expect("start sluice");
    let sluice_replies = run_corpus(listener).await;
    let sluice_denied = sluice.stat("http.filters.rbac.denied").await.ok();
    let limited = sluice
        .stat("route_rl.http_local_rate_limit.enforced")
        .await
        .ok();
    drop(sluice);

    sluice_tests::assert_same_replies(&envoy_replies, &sluice_replies);
    assert_eq!(sluice_denied, envoy_denied, "http.filters.rbac.denied");
    // Both must have counted: two missing stats would compare equal too.
    assert!(
        sluice_denied.is_some_and(|n| n > 0),
        "http.filters.rbac.denied"
    );
    assert_eq!(limited, Some(2), "route_rl.http_local_rate_limit.enforced");
}

/// One HTTP/1.1 request from `source` (a loopback address); the response's status.
async fn status_from(source: &str, listener: SocketAddr, path: &str, extra: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(listener).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    sluice_tests::client::raw_status(&String::from_utf8_lossy(&answer)).unwrap_or(0)
}

/// A listener limiting each client address to two requests an hour, at most 1,000
/// client buckets at once.
fn per_client_config(admin: SocketAddr, listener: SocketAddr, upstream: &Upstream) -> String {
    let filters = json!([
        { "name": "envoy.filters.http.local_ratelimit",
          "typed_config": typed(LOCAL_RL, json!({
              "stat_prefix": "per_client",
              "token_bucket": { "max_tokens": 1000000, "fill_interval": "1s" },
              "filter_enabled": { "default_value": { "numerator": 100 } },
              "filter_enforced": { "default_value": { "numerator": 100 } },
              "descriptors": [ { "entries": [ { "key": "remote_address", "value": "" } ],
                                 "token_bucket": { "max_tokens": 2, "fill_interval": "3600s" } } ],
              "max_dynamic_descriptors": 1000 })) },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
    ]);
    let routes = json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/" }, "route": { "cluster": "a", "rate_limits": [ { "actions": [ { "remote_address": {} } ] } ] } } ] } ] });
    bootstrap(
        admin,
        vec![http_listener(
            "per_client",
            listener,
            routes,
            json!({ "http_filters": filters }),
        )],
        vec![cluster("a", &[(upstream.addr, 1)], json!({}))],
    )
}

async fn two_clients(listener: SocketAddr) -> Vec<(&'static str, u16)> {
    let mut out = Vec::new();
    for source in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.2",
        "127.0.0.3",
    ] {
        out.push((source, status_from(source, listener, "/", "").await));
    }
    out
}

#[tokio::test]
async fn clients_on_different_addresses_get_their_own_buckets() {
    let upstream = Upstream::start("a").await;
    let expected = vec![
        ("127.0.0.2", 200),
        ("127.0.0.3", 200),
        ("127.0.0.2", 200),
        ("127.0.0.3", 200),
        ("127.0.0.2", 429),
        ("127.0.0.3", 429),
    ];

    let (admin, listener) = (free_addr(), free_addr());
    let envoy = Envoy::start(&per_client_config(admin, listener, &upstream), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    assert_eq!(two_clients(listener).await, expected, "envoy");
    drop(envoy);

    let (admin, listener) = (free_addr(), free_addr());
    let sluice = Sluice::start(&per_client_config(admin, listener, &upstream), admin)
        .await
        .expect("start sluice");
    assert_eq!(two_clients(listener).await, expected, "sluice");

    // Rotating client addresses (here through x-forwarded-for, which is what the
    // connection manager trusts without use_remote_address) must not grow memory past
    // the 1,000 buckets allowed.
    let rss_before = sluice_tests::process::rss_of(sluice.pid());
    const DISTINCT: u32 = 20_000;
    let client = HttpClient::http1();
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut limited = 0u32;
            for i in (worker..DISTINCT).step_by(8) {
                let xff = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
                let reply = client
                    .get(listener, "h", "/", &[("x-forwarded-for", &xff)])
                    .await
                    .expect("request");
                limited += u32::from(reply.status == 429);
            }
            limited
        }));
    }
    let mut limited = 0;
    for t in tasks {
        limited += t.await.unwrap();
    }
    let rss_after = sluice_tests::process::rss_of(sluice.pid());
    eprintln!(
        "{DISTINCT} distinct client addresses: RSS {} KiB -> {} KiB",
        rss_before / 1024,
        rss_after / 1024
    );
    assert_eq!(limited, 0, "each new address has a fresh bucket");
    assert!(
        rss_after.saturating_sub(rss_before) < 32 << 20,
        "RSS grew from {rss_before} to {rss_after} bytes"
    );
    drop(sluice);
}

#[tokio::test]
async fn hostile_filter_inputs_get_a_clear_4xx() {
    let upstream = Upstream::start("a").await;
    let (admin, listener) = (free_addr(), free_addr());
    let sluice = Sluice::start(&config(admin, listener, &upstream), admin)
        .await
        .expect("start sluice");
    let huge = "A".repeat(40 * 1024);
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "/auth-on/x",
            format!("authorization: Basic {huge}\r\n"),
            401,
        ),
        ("/auth-on/x", format!("authorization: {huge}\r\n"), 401),
        ("/auth-on/x", "authorization: Basic \r\n".into(), 401),
        ("/auth-on/x", "authorization: Basic ::::\r\n".into(), 401),
        ("/auth-on/x", "authorization: Basic Og==\r\n".into(), 401),
        ("/cors/x", format!("origin: https://{huge}\r\n"), 200),
        // Control characters are not a header value: the codec refuses the request.
        ("/cors/x", "origin: \x01\x7f\r\n".into(), 400),
        (
            "/cors/x",
            format!("origin: https://good.example\r\naccess-control-request-method: {huge}\r\n"),
            200,
        ),
        (
            "/fault-header",
            "x-envoy-fault-abort-request: 99999999999999999999\r\n".into(),
            200,
        ),
        (
            "/fault-header",
            "x-envoy-fault-abort-request: 99\r\n".into(),
            200,
        ),
        (
            "/fault-header",
            "x-envoy-fault-abort-request-percentage: -5\r\n".into(),
            200,
        ),
    ];
    for (path, headers, expected) in cases {
        let status = status_from("127.0.0.1", listener, path, &headers).await;
        assert_eq!(status, expected, "{path} with {:.60}", headers);
    }
    // Still serving.
    assert_eq!(status_from("127.0.0.1", listener, "/cors/x", "").await, 200);
    drop(sluice);
}
