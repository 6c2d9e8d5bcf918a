//! `envoy.filters.http.ext_authz` against a real gRPC authorization server (tonic, from
//! Envoy's `envoy.service.auth.v3` protos) and a real HTTP one (hyper), through Envoy and
//! `sluice` with the same config: allow with headers injected upstream and on the
//! response, deny with the service's status, headers and body, per-route context
//! extensions and disabling, both failure modes (a dead service, a service slower than
//! the deadline, an HTTP service answering 5xx), and `with_request_body` — the body sent
//! whole, cut at the limit, refused over it, and still reaching the upstream unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
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
        let body = if http.raw_body.is_empty() {
            http.body.clone()
        } else {
            format!("raw:{}", String::from_utf8_lossy(&http.raw_body))
        };
        let partial = http
            .headers
            .get("x-envoy-auth-partial-body")
            .cloned()
            .unwrap_or_else(|| "none".into());
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
                            header("x-auth-body", &body, None),
                            header("x-auth-partial", &partial, None),
                            header("x-auth-size", &http.size.to_string(), None),
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

/// The HTTP authorization service: decides by the check's `x-auth` header like the gRPC
/// one (`error` answers 503, `redirect` 302) and reports what the check carried.
async fn http_authorizer(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let (head, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let verdict = head
        .headers
        .get("x-auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let reply = http::Response::builder();
    let reply = match verdict.as_str() {
        "allow" | "slow" => {
            if verdict == "slow" {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let host = head.headers.get("host").and_then(|v| v.to_str().ok());
            reply
                .header("x-auth-user", "alice")
                .header("x-auth-saw-path", head.uri.to_string())
                .header("x-auth-saw-method", head.method.as_str())
                .header("x-auth-saw-host", host.unwrap_or("-"))
                .header(
                    "x-auth-saw-body",
                    String::from_utf8_lossy(&body).into_owned() + "|",
                )
                .header("x-auth-saw-headers", names.join(","))
                .header("x-trace", "from-authz")
                .header("x-checked", "yes")
                .header("x-other", "not-forwarded")
                .header("x-envoy-auth-headers-to-remove", "x-secret, x-unused")
                .body(Default::default())
        }
        "error" => reply.status(503).body("down".into()),
        "redirect" => reply
            .status(302)
            .header("location", "/login")
            .header("x-deny-reason", "moved")
            .body(Default::default()),
        _ => reply
            .status(401)
            .header("www-authenticate", "Bearer")
            .header("x-deny-reason", "no badge")
            .header("content-type", "application/json")
            .body("{\"error\":\"go away\"}".into()),
    };
    Ok(reply.unwrap())
}

async fn start_http_authorizer() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(http_authorizer),
            ));
        }
    });
    addr
}

fn ext_authz(cluster: &str, extra: Value) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": { "envoy_grpc": { "cluster_name": cluster }, "timeout": "0.3s" }
    });
    if extra.get("http_service").is_some() {
        config.as_object_mut().unwrap().remove("grpc_service");
    }
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
        { "match": { "prefix": "/nobody" }, "route": { "cluster": "a" },
          "typed_per_filter_config": per_route(json!({ "check_settings": { "disable_request_body_buffering": true } })) },
        { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] })
}

const LISTENERS: usize = 7;

/// The listeners: the live gRPC service; a dead one with failure_mode_allow; a dead one
/// answering 503; the gRPC service with the body (whole only, then partial and as bytes);
/// the HTTP service with the body and default client headers; the HTTP service with a
/// path override and listed client headers.
fn config(
    admin: SocketAddr,
    listeners: [SocketAddr; LISTENERS],
    upstream: &Upstream,
    authorizer: SocketAddr,
    http_authorizer: SocketAddr,
    dead: SocketAddr,
) -> String {
    let http_service = |extra: Value| {
        let mut service = json!({
            "server_uri": { "uri": "http://authz.local/ignored", "cluster": "http_authz", "timeout": "0.3s" },
            "authorization_request": { "allowed_headers": { "patterns": [{ "exact": "x-auth" }] } },
            "authorization_response": {
                "allowed_upstream_headers": { "patterns": [{ "exact": "x-auth-user" }, { "prefix": "x-auth-saw-" }] },
                "allowed_upstream_headers_to_append": { "patterns": [{ "exact": "x-trace" }] },
                "allowed_client_headers_on_success": { "patterns": [{ "exact": "x-checked" }] }
            }
        });
        sluice_tests::config::merge(&mut service, extra);
        service
    };
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
            http_listener(
                "grpc_body",
                listeners[3],
                routes(),
                json!({ "http_filters": ext_authz("authz",
                json!({ "with_request_body": { "max_request_bytes": 16 } })) }),
            ),
            http_listener(
                "grpc_partial",
                listeners[4],
                routes(),
                json!({ "http_filters": ext_authz("authz",
                json!({ "with_request_body": { "max_request_bytes": 16,
                    "allow_partial_message": true, "pack_as_bytes": true } })) }),
            ),
            http_listener(
                "http_authz",
                listeners[5],
                routes(),
                json!({ "http_filters": ext_authz("http_authz", json!({
                    "http_service": http_service(json!({ "path_prefix": "/check" })),
                    "with_request_body": { "max_request_bytes": 16, "allow_partial_message": true }
                })) }),
            ),
            http_listener(
                "http_listed",
                listeners[6],
                routes(),
                json!({ "http_filters": ext_authz("http_authz", json!({
                    "http_service": http_service(json!({
                        "path_override": "/verify",
                        "authorization_request": {
                            "allowed_headers": { "patterns": [{ "exact": "x-auth" }] },
                            "headers_to_add": [{ "key": "x-authz-from", "value": "edge" }]
                        },
                        "authorization_response": {
                            "allowed_upstream_headers": { "patterns": [{ "prefix": "x-auth-saw-" }] },
                            "allowed_client_headers": { "patterns": [{ "exact": "x-deny-reason" }] }
                        }
                    })),
                    "status_on_error": { "code": 502 }
                })) }),
            ),
        ],
        vec![
            cluster("a", &[(upstream.addr, 1)], json!({})),
            cluster("authz", &[(authorizer, 1)], h2.clone()),
            cluster("http_authz", &[(http_authorizer, 1)], json!({})),
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
    "x-auth-body",
    "x-auth-partial",
    "x-auth-size",
    "x-auth-saw-path",
    "x-auth-saw-method",
    "x-auth-saw-host",
    "x-auth-saw-body",
    "x-auth-saw-headers",
    "x-trace",
    "x-other",
];
const RESPONSE_HEADERS: &[&str] = &[
    "x-auth-checked",
    "x-deny-reason",
    "content-type",
    "x-checked",
    "x-other",
    "www-authenticate",
    "location",
];

fn normalize(reply: &Reply) -> Value {
    let headers = reply.headers_named(RESPONSE_HEADERS);
    let body = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(json) if json.get("server").is_some() => {
            let seen = sluice_tests::client::echoed_headers(&json, UPSTREAM_HEADERS);
            json!({ "upstream": seen, "method": json["method"], "body_bytes": json["body_bytes"] })
        }
        _ => Value::from(String::from_utf8_lossy(&reply.body).into_owned()),
    };
    json!({ "status": reply.status.as_u16(), "headers": headers, "body": body })
}

/// `(label, listener index, method, path, request headers, body)`.
type Case = (
    &'static str,
    usize,
    Method,
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

const LONG_BODY: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

async fn run(listeners: [SocketAddr; LISTENERS]) -> Vec<Value> {
    let client = HttpClient::http1();
    let allow = || vec![("x-auth", "allow")];
    let get = Method::GET;
    let post = Method::POST;
    let cases: Vec<Case> = vec![
        (
            "allow",
            0,
            get.clone(),
            "/x?y=1",
            vec![("x-auth", "allow"), ("x-secret", "s"), ("x-client", "mine")],
            "",
        ),
        (
            "deny with the service's answer",
            0,
            get.clone(),
            "/x",
            vec![("x-auth", "deny")],
            "",
        ),
        ("bare denial", 0, get.clone(), "/x", vec![], ""),
        (
            "slower than the deadline",
            0,
            get.clone(),
            "/x",
            vec![("x-auth", "slow")],
            "",
        ),
        ("disabled per route", 0, get.clone(), "/open", vec![], ""),
        (
            "context extensions per route",
            0,
            get.clone(),
            "/team",
            allow(),
            "",
        ),
        (
            "a body is not sent without with_request_body",
            0,
            post.clone(),
            "/x",
            allow(),
            "hello",
        ),
        (
            "dead service, failure mode allow",
            1,
            get.clone(),
            "/x",
            allow(),
            "",
        ),
        (
            "dead service, status on error",
            2,
            get.clone(),
            "/x",
            allow(),
            "",
        ),
        ("body: a GET has none", 3, get.clone(), "/x", allow(), ""),
        (
            "body: sent whole, then upstream",
            3,
            post.clone(),
            "/x",
            allow(),
            "hello",
        ),
        (
            "body: a client's partial header is dropped",
            3,
            post.clone(),
            "/x",
            vec![("x-auth", "allow"), ("x-envoy-auth-partial-body", "maybe")],
            "hello",
        ),
        (
            "body: over the limit",
            3,
            post.clone(),
            "/x",
            allow(),
            LONG_BODY,
        ),
        (
            "body: buffering disabled per route",
            3,
            post.clone(),
            "/nobody",
            allow(),
            LONG_BODY,
        ),
        (
            "body: denied after reading it",
            3,
            post.clone(),
            "/x",
            vec![("x-auth", "deny")],
            "hi",
        ),
        (
            "partial body as bytes",
            4,
            post.clone(),
            "/x",
            allow(),
            LONG_BODY,
        ),
        (
            "short body as bytes",
            4,
            post.clone(),
            "/x",
            allow(),
            "tiny",
        ),
        (
            "http: allow",
            5,
            get.clone(),
            "/x?y=1",
            vec![
                ("x-auth", "allow"),
                ("x-secret", "s"),
                ("x-trace", "mine"),
                ("x-hidden", "h"),
            ],
            "",
        ),
        (
            "http: allow with a partial body",
            5,
            post.clone(),
            "/x",
            allow(),
            LONG_BODY,
        ),
        (
            "http: allow with a body",
            5,
            Method::PUT,
            "/x",
            allow(),
            "hello",
        ),
        (
            "http: deny",
            5,
            get.clone(),
            "/x",
            vec![("x-auth", "deny")],
            "",
        ),
        (
            "http: redirect",
            5,
            get.clone(),
            "/x",
            vec![("x-auth", "redirect")],
            "",
        ),
        (
            "http: 5xx is an error",
            5,
            get.clone(),
            "/x",
            vec![("x-auth", "error")],
            "",
        ),
        (
            "http: slower than the deadline",
            5,
            get.clone(),
            "/x",
            vec![("x-auth", "slow")],
            "",
        ),
        (
            "http: disabled per route",
            5,
            get.clone(),
            "/open",
            vec![],
            "",
        ),
        ("http listed: allow", 6, get.clone(), "/y", allow(), ""),
        (
            "http listed: deny",
            6,
            get.clone(),
            "/y",
            vec![("x-auth", "deny")],
            "",
        ),
        (
            "http listed: redirect",
            6,
            get.clone(),
            "/y",
            vec![("x-auth", "redirect")],
            "",
        ),
        (
            "http listed: status on error",
            6,
            get.clone(),
            "/y",
            vec![("x-auth", "error")],
            "",
        ),
    ];
    let mut out = Vec::new();
    for (label, listener, method, path, headers, body) in cases {
        let reply = client
            .send(listeners[listener], method, "h", path, &headers, body)
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
    let http_authorizer = start_http_authorizer().await;
    let dead = free_addr();
    let listeners = std::array::from_fn(|_| free_addr());
    let config = |admin| {
        config(
            admin,
            listeners,
            &upstream,
            authorizer,
            http_authorizer,
            dead,
        )
    };

    let admin = free_addr();
    let envoy = Envoy::start(&config(admin), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = run(listeners).await;
    drop(envoy);

    let admin = free_addr();
    let sluice = Sluice::start(&config(admin), admin)
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
