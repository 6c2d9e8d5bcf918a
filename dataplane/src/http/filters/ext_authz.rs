//! `envoy.filters.http.ext_authz` over gRPC: each request's head goes to an
//! `envoy.service.auth.v3.Authorization` service in a cluster; its answer lets the request
//! on (with headers added or removed upstream and on the response) or denies it with the
//! service's status, headers and body. A check that fails (error, deadline, no host) lets
//! the request through only with `failure_mode_allow`, else answers `status_on_error`.

use std::collections::HashMap;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;
use tracing::debug;
use xds_types::http_filter::{ExtAuthz, ExtAuthzPerRoute};
use xds_types::pb::envoy::config::core::v3 as core;
use xds_types::pb::envoy::service::auth::v3 as auth;

use super::grpc::Channels;
use super::sample;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{Decision, Edits, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::stats::Stats;

static FAILURE_MODE_ALLOWED: HeaderName =
    HeaderName::from_static("x-envoy-auth-failure-mode-allowed");

/// gRPC `OK`.
const GRPC_OK: i32 = 0;

#[derive(Clone)]
struct Counters {
    ok: Counter,
    denied: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
    disabled: Counter,
}

/// The filter: its config, counters and one gRPC channel per service host.
pub struct ExtAuthzFilter {
    config: Arc<ExtAuthz>,
    counters: Counters,
    channels: Channels,
}

impl ExtAuthzFilter {
    pub fn new(config: &ExtAuthz, hcm_prefix: &str, stats: &Stats) -> Self {
        let prefix = super::stat_scope("ext_authz", &config.stat_prefix);
        let c = |n: &str| stats.filter_counter(hcm_prefix, &format!("{prefix}{n}"));
        Self {
            config: Arc::new(config.clone()),
            counters: Counters {
                ok: c("ok"),
                denied: c("denied"),
                error: c("error"),
                failure_mode_allowed: c("failure_mode_allowed"),
                disabled: c("disabled"),
            },
            channels: Channels::default(),
        }
    }
}

fn socket_address(addr: std::net::SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// The check request Envoy builds from a request head.
fn check_request(
    ctx: &RequestCtx<'_>,
    request: &Parts,
    extensions: &[(String, String)],
) -> auth::CheckRequest {
    use auth::attribute_context::{HttpRequest, Peer, Request};
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &request.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let id = headers.get("x-request-id").cloned().unwrap_or_default();
    headers.insert(":authority".into(), ctx.host.to_string());
    headers.insert(":method".into(), request.method.to_string());
    headers.insert(":path".into(), path.to_string());
    let protocol = match request.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(Peer {
                address: Some(socket_address(ctx.remote)),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(socket_address(ctx.local)),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id,
                    method: request.method.to_string(),
                    headers,
                    path: path.to_string(),
                    host: ctx.host.to_string(),
                    scheme: ctx.scheme.to_string(),
                    protocol: protocol.to_string(),
                    size: -1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions.iter().cloned().collect(),
            ..Default::default()
        }),
    }
}

/// `(name, value, append)` of header options the service returned; invalid ones skipped.
fn header_options(options: &[core::HeaderValueOption]) -> Vec<(HeaderName, HeaderValue, bool)> {
    options
        .iter()
        .filter_map(|o| {
            let h = o.header.as_ref()?;
            let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
            let value = if h.raw_value.is_empty() {
                HeaderValue::from_str(&h.value).ok()?
            } else {
                HeaderValue::from_bytes(&h.raw_value).ok()?
            };
            // Unset `append` overwrites, as Envoy's check client does (services still set
            // the deprecated field).
            #[allow(deprecated)]
            let append = o.append.as_ref().is_some_and(|a| a.value);
            Some((name, value, append))
        })
        .collect()
}

/// What a check's answer means for the request.
fn decide(response: auth::CheckResponse, counters: &Counters) -> Decision {
    use auth::check_response::HttpResponse;
    let code = response.status.as_ref().map_or(GRPC_OK, |s| s.code);
    if code == GRPC_OK {
        counters.ok.inc();
        let mut edits = Edits::default();
        if let Some(HttpResponse::OkResponse(ok)) = response.http_response {
            edits.request = header_options(&ok.headers);
            edits.remove = ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .filter(|n| n != http::header::HOST)
                .collect();
            edits.response = header_options(&ok.response_headers_to_add)
                .into_iter()
                .map(|(n, v, _)| (n, v))
                .collect();
        }
        return Decision::ContinueWith(edits);
    }
    counters.denied.inc();
    let mut reply = LocalReply::new(StatusCode::FORBIDDEN, "");
    if let Some(HttpResponse::DeniedResponse(denied)) = response.http_response {
        if let Some(status) = denied
            .status
            .as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .filter(|c| *c >= 100)
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            reply.status = status;
        }
        reply.body = denied.body.into();
        reply.headers = header_options(&denied.headers)
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect();
    }
    reply.flag = Some(ResponseFlag::UnauthorizedExternalService);
    Decision::Respond(reply)
}

impl HttpFilter for ExtAuthzFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let extensions: &[(String, String)] = match per_route {
            Some(PerRoute::ExtAuthz(ExtAuthzPerRoute::Disabled)) => return Decision::Continue,
            Some(PerRoute::ExtAuthz(ExtAuthzPerRoute::ContextExtensions(e))) => e,
            _ => &[],
        };
        if !sample(self.config.filter_enabled) {
            self.counters.disabled.inc();
            if self.config.deny_at_disable {
                self.counters.denied.inc();
                let mut reply = LocalReply::new(StatusCode::FORBIDDEN, "");
                reply.flag = Some(ResponseFlag::UnauthorizedExternalService);
                return Decision::Respond(reply);
            }
            return Decision::Continue;
        }
        let check = check_request(ctx, request, extensions);
        let channel = self
            .channels
            .pick(ctx.snapshot, &self.config.cluster, self.config.timeout);
        let config = self.config.clone();
        let counters = self.counters.clone();
        Decision::Wait(Box::pin(async move {
            let answer = match channel {
                None => None,
                Some(channel) => {
                    let mut client = auth::authorization_client::AuthorizationClient::new(channel);
                    let mut call = tonic::Request::new(check);
                    call.set_timeout(config.timeout);
                    match tokio::time::timeout(config.timeout, client.check(call)).await {
                        Ok(Ok(response)) => Some(response.into_inner()),
                        Ok(Err(status)) => {
                            debug!(%status, "authorization check failed");
                            None
                        }
                        Err(_) => {
                            debug!("authorization check timed out");
                            None
                        }
                    }
                }
            };
            match answer {
                Some(response) => decide(response, &counters),
                None => {
                    counters.error.inc();
                    if config.failure_mode_allow {
                        counters.failure_mode_allowed.inc();
                        let mut edits = Edits::default();
                        if config.failure_mode_allow_header_add {
                            edits.request.push((
                                FAILURE_MODE_ALLOWED.clone(),
                                HeaderValue::from_static("true"),
                                false,
                            ));
                        }
                        return Decision::ContinueWith(edits);
                    }
                    let mut reply = LocalReply::new(config.status_on_error, "");
                    reply.flag = Some(ResponseFlag::UnauthorizedExternalService);
                    Decision::Respond(reply)
                }
            }
        }))
    }
}
