//! `envoy.filters.http.ratelimit` against a real rate limit service (tonic, from Envoy's
//! `envoy.service.ratelimit.v3` protos), through Envoy and `sluice` with the same config:
//! under the limit (headers from the service upstream and downstream, `x-ratelimit-*`),
//! over it (429, `x-envoy-ratelimited`, the service's body), the descriptors sent, and the
//! failure modes (a service slower than the deadline, an UNKNOWN answer).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{bootstrap, cluster, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;
use xds_types::pb::envoy::config::core::v3::HeaderValue;
use xds_types::pb::envoy::service::ratelimit::v3 as rls;

struct Limiter;

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl rls::rate_limit_service_server::RateLimitService for Limiter {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<rls::RateLimitRequest>,
    ) -> Result<tonic::Response<rls::RateLimitResponse>, tonic::Status> {
        use rls::rate_limit_response::{rate_limit::Unit, Code, DescriptorStatus, RateLimit};
        let request = request.into_inner();
        if request.domain != "edge" {
            return Err(tonic::Status::invalid_argument("unknown domain"));
        }
        let entries: Vec<String> = request
            .descriptors
            .iter()
            .flat_map(|d| d.entries.iter().map(|e| format!("{}={}", e.key, e.value)))
            .collect();
        let first = request.descriptors[0].entries[0].value.clone();
        let status = |code: Code, per_unit: u32, remaining: u32, reset: i64| DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                requests_per_unit: per_unit,
                unit: Unit::Minute as i32,
                ..Default::default()
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(xds_types::pb::google::protobuf::Duration {
                seconds: reset,
                nanos: 0,
            }),
            ..Default::default()
        };
        let mut response = rls::RateLimitResponse {
            response_headers_to_add: vec![header("x-rls-entries", &entries.join(","))],
            ..Default::default()
        };
        match first.as_str() {
            "limited" => {
                response.overall_code = Code::OverLimit as i32;
                response.statuses = vec![status(Code::OverLimit, 5, 0, 42)];
                response.raw_body = b"slow down".to_vec();
            }
            "ok" => {
                response.overall_code = Code::Ok as i32;
                response.statuses = vec![status(Code::Ok, 10, 7, 30)];
                response.request_headers_to_add = vec![header("x-rl-checked", "yes")];
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(800)).await;
                response.overall_code = Code::Ok as i32;
            }
            _ => response.overall_code = Code::Unknown as i32,
        }
        Ok(tonic::Response::new(response))
    }
}

async fn start_limiter() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(rls::rate_limit_service_server::RateLimitServiceServer::new(
                Limiter,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn filters(failure_mode_deny: bool) -> Value {
    json!([
        { "name": "envoy.filters.http.ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "edge", "timeout": "0.3s", "failure_mode_deny": failure_mode_deny,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": { "transport_api_version": "V3",
                "grpc_service": { "envoy_grpc": { "cluster_name": "rls" } } } } },
        { "name": "envoy.filters.http.router",
          "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
    ])
}

fn routes() -> Value {
    let limited = |key: &str| {
        json!([ { "actions": [
        { "generic_key": { "descriptor_value": key } }, { "remote_address": {} } ] } ])
    };
    json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": [
        { "match": { "prefix": "/limited" }, "route": { "cluster": "a", "rate_limits": limited("limited") } },
        { "match": { "prefix": "/ok" }, "route": { "cluster": "a", "rate_limits": limited("ok") } },
        { "match": { "prefix": "/slow" }, "route": { "cluster": "a", "rate_limits": limited("slow") } },
        { "match": { "prefix": "/unknown" }, "route": { "cluster": "a", "rate_limits": limited("unknown") } },
        { "match": { "prefix": "/" }, "route": { "cluster": "a" } } ] } ] })
}

fn config(
    admin: SocketAddr,
    open: SocketAddr,
    closed: SocketAddr,
    upstream: &Upstream,
    limiter: SocketAddr,
) -> String {
    let h2 = sluice_tests::config::http2_options();
    bootstrap(
        admin,
        vec![
            http_listener(
                "open",
                open,
                routes(),
                json!({ "http_filters": filters(false) }),
            ),
            http_listener(
                "closed",
                closed,
                routes(),
                json!({ "http_filters": filters(true) }),
            ),
        ],
        vec![
            cluster("a", &[(upstream.addr, 1)], json!({})),
            cluster("rls", &[(limiter, 1)], h2),
        ],
    )
}

const RESPONSE_HEADERS: &[&str] = &[
    "x-envoy-ratelimited",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-rls-entries",
];

async fn run(open: SocketAddr, closed: SocketAddr) -> Vec<Value> {
    let client = HttpClient::http1();
    let mut out = Vec::new();
    for (listener, path) in [
        (open, "/ok"),
        (open, "/limited"),
        (open, "/slow"),
        (open, "/unknown"),
        (open, "/none"),
        (closed, "/slow"),
        (closed, "/unknown"),
        (closed, "/ok"),
    ] {
        let reply = client.get(listener, "h", path, &[]).await.unwrap();
        let headers = reply.headers_named(RESPONSE_HEADERS);
        let json = reply.json();
        let body = if json.get("server").is_some() {
            json!({ "upstream_saw_checked": json["headers"]["x-rl-checked"] })
        } else {
            Value::from(String::from_utf8_lossy(&reply.body).into_owned())
        };
        out.push(json!({ "path": path, "status": reply.status.as_u16(), "headers": headers, "body": body }));
    }
    out
}

#[tokio::test]
async fn global_rate_limit_matches_envoy_against_a_real_service() {
    let upstream = Upstream::start("a").await;
    let limiter = start_limiter().await;
    let (open, closed) = (free_addr(), free_addr());

    let admin = free_addr();
    let envoy = Envoy::start(&config(admin, open, closed, &upstream, limiter), admin)
        .await
        .expect("start envoy (installed by tests/run.sh)");
    let from_envoy = run(open, closed).await;
    drop(envoy);

    let admin = free_addr();
    let sluice = Sluice::start(&config(admin, open, closed, &upstream, limiter), admin)
        .await
        .expect("start sluice");
    let from_sluice = run(open, closed).await;
    let over = sluice.stat("cluster.rls.ratelimit.over_limit").await.ok();
    drop(sluice);

    sluice_tests::assert_same_replies(&from_envoy, &from_sluice);
    assert_eq!(from_sluice[1]["status"], 429);
    assert_eq!(over, Some(1));
}
