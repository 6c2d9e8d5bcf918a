//! `envoy.filters.http.ext_authz` against a real gRPC authorization server (tonic, from
//! Envoy's `envoy.service.auth.v3` protos), through Envoy and `sluice` with the same
//! config: allow with headers injected upstream and on the response, deny with the
//! service's status, headers and body, per-route context extensions and disabling, and
//! both failure modes (a dead service, a service slower than the deadline).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::client::{HttpClient, Reply};
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;
use xds_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use xds_types::pb::envoy::r#type::v3::HttpStatus;
use xds_types::pb::envoy::service::auth::v3 as auth;
use xds_types::pb::google::rpc::Status;

/// Decides by the request's `x-auth` header: `allow`, `deny`, `slow` (answers after 1 s),
/// anything else a bare PERMISSION_DENIED.
struct Authorizer;

#[allow(deprecated)] // authorization services still set `append`
fn header(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| xds_types::pb::google::protobuf::BoolValue { value }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl auth::authorization_server::Authorization for Authorizer {
    async fn check(
        &self,
        request: tonic::Request<auth::CheckRequest>,
    ) -> Result<tonic::Response<auth::CheckResponse>, tonic::Status> {
        use auth::check_response::HttpResponse;
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let verdict = http.headers.get("x-auth").cloned().unwrap_or_default();
        let team = attributes
            .context_extensions
            .get("team")
            .cloned()
            .unwrap_or_else(|| "none".into());
        let response = match verdict.as_str() {
            "allow" | "slow" => {
                if verdict == "slow" {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                auth::CheckResponse {
                    status: Some(Status::default()),
                    http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                        headers: vec![
                            header("x-auth-user", "alice", None),
                            header("x-auth-team", &team, None),
                            header("x-auth-path", &http.path, None),
                            header("x-client", "added", Some(true)),
                        ],
                        headers_to_remove: vec!["x-secret".into()],
                        response_headers_to_add: vec![header("x-auth-checked", "yes", None)],
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            }
            "deny" => auth::CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![
                        header("x-deny-reason", "no badge", None),
                        header("content-type", "application/json", None),
                    ],
                    body: "{\"error\":\"go away\"}".into(),
                })),
                ..Default::default()
            },
            _ => auth::CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        Ok(tonic::Response::new(response))
    }
}

async fn start_authorizer() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(auth::authorization_server::AuthorizationServer::new(
                Authorizer,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn ext_authz(cluster: &str, extra: Value) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": { "envoy_grpc": { "cluster_name": cluster }, "timeout": "0.3s" }
    });
    sluice_tests::config::merge(&mut config, extra);
    json!([
        { "name": "envoy.filters.http.ext_authz", "typed_config": config },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
    ])
}

fn routes() -> Value {
    let per_route = |v: Value| {
        let mut v = v;
        v["@type"] = json!(
            "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
        );
        json!({ "envoy.filters.http.ext_authz": v })
    };
    json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/open" }, "route": { "cluster": "a" },
          "typed_per_filter_config": per_route(json!({ "disabled": true })) },
        { "match": { "prefix": "/team" }, "route": { "cluster": "a" },
          "typed_per_filter_config": per_route(json!({ "check_settings": { "context_extensions": { "team": "blue" } } })) },
        { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] })
}

/// Three listeners: the live service; a dead one with failure_mode_allow; a dead one
/// answering 503.
fn config(
    admin: SocketAddr,
    listeners: [SocketAddr; 3],
    upstream: &Upstream,
    authorizer: SocketAddr,
    dead: SocketAddr,
) -> String {
    let h2 = sluice_tests::config::http2_options();
    bootstrap(
        admin,
        vec![
            http_listener(
                "authz",
                listeners[0],
                routes(),
                json!({ "http_filters": ext_authz("authz", json!({})) }),
            ),
            http_listener(
                "open_on_failure",
                listeners[1],
                routes(),
                json!({ "http_filters": ext_authz("dead",
                json!({ "failure_mode_allow": true, "failure_mode_allow_header_add": true })) }),
            ),
            http_listener(
                "closed_on_failure",
                listeners[2],
                routes(),
                json!({ "http_filters": ext_authz("dead",
                json!({ "status_on_error": { "code": 503 } })) }),
            ),
        ],
        vec![
            cluster("a", &[(upstream.addr, 1)], json!({})),
            cluster("authz", &[(authorizer, 1)], h2.clone()),
            cluster("dead", &[(dead, 1)], h2),
        ],
    )
}

const UPSTREAM_HEADERS: &[&str] = &[
    "x-auth-user",
    "x-auth-team",
    "x-auth-path",
    "x-client",
    "x-secret",
    "x-envoy-auth-failure-mode-allowed",
];
const RESPONSE_HEADERS: &[&str] = &["x-auth-checked", "x-deny-reason", "content-type"];

fn normalize(reply: &Reply) -> Value {
    let headers = reply.headers_named(RESPONSE_HEADERS);
    let body = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(json) if json.get("server").is_some() => {
            let seen = sluice_tests::client::echoed_headers(&json, UPSTREAM_HEADERS);
            json!({ "upstream": seen })
        }
        _ => Value::from(String::from_utf8_lossy(&reply.body).into_owned()),
    };
    json!({ "status": reply.status.as_u16(), "headers": headers, "body": body })
}

/// `(label, listener index, path, request headers)`.
type Case = (
    &'static str,
    usize,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

async fn run(listeners: [SocketAddr; 3]) -> Vec<Value> {
    let client = HttpClient::http1();
    let cases: Vec<Case> = vec![
        (
            "allow",
            0,
            "/x?y=1",
            vec![("x-auth", "allow"), ("x-secret", "s"), ("x-client", "mine")],
        ),
        (
            "deny with the service's answer",
            0,
            "/x",
            vec![("x-auth", "deny")],
        ),
        ("bare denial", 0, "/x", vec![]),
        (
            "slower than the deadline",
            0,
            "/x",
            vec![("x-auth", "slow")],
        ),
        ("disabled per route", 0, "/open", vec![]),
        (
            "context extensions per route",
            0,
            "/team",
            vec![("x-auth", "allow")],
        ),
        (
            "dead service, failure mode allow",
            1,
            "/x",
            vec![("x-auth", "allow")],
        ),
        (
            "dead service, status on error",
            2,
            "/x",
            vec![("x-auth", "allow")],
        ),
    ];
    let mut out = Vec::new();
    for (label, listener, path, headers) in cases {
        let reply = client
            .get(listeners[listener], "h", path, &headers)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        out.push(json!({ "case": label, "reply": normalize(&reply) }));
    }
    out
}

#[tokio::test]
async fn ext_authz_matches_envoy_against_a_real_authorization_server() {
    let upstream = Upstream::start("a").await;
    let authorizer = start_authorizer().await;
    let dead = free_addr();
    let listeners = [free_addr(), free_addr(), free_addr()];

    let admin = free_addr();
    let envoy = Envoy::start(
        &config(admin, listeners, &upstream, authorizer, dead),
        admin,
    )
    .await
    .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = run(listeners).await;
    drop(envoy);

    let admin = free_addr();
    let sluice = Sluice::start(
        &config(admin, listeners, &upstream, authorizer, dead),
        admin,
    )
    .await
    .expect("start sluice");
    let from_sluice = run(listeners).await;
    let denied = sluice.stat("http.authz.ext_authz.denied").await.ok();
    let allowed_on_failure = sluice
        .stat("http.open_on_failure.ext_authz.failure_mode_allowed")
        .await
        .ok();
    drop(sluice);

    sluice_tests::assert_same_replies(&from_envoy, &from_sluice);
    assert_eq!(
        from_sluice[0]["reply"]["body"]["upstream"]["x-auth-user"],
        "alice"
    );
    assert_eq!(denied, Some(2));
    assert_eq!(allowed_on_failure, Some(1));
}
