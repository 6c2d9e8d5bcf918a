//! `envoy.filters.http.ext_authz`: each request's head — and with `with_request_body`
//! its body, read first — goes to an authorization service in a cluster, either an
//! `envoy.service.auth.v3.Authorization` gRPC service or a plain HTTP one
//! ([`http_service`]). The answer lets the request on (with headers added or removed
//! upstream and on the response) or denies it with the service's status, headers and
//! body. A check that fails (error, deadline, no host) lets the request through only with
//! `failure_mode_allow`, else answers `status_on_error`.

mod http_service;

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
use crate::http::filter::{BodyLimit, Decision, Edits, HttpFilter, PerRoute};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::stats::Stats;

static FAILURE_MODE_ALLOWED: HeaderName =
    HeaderName::from_static("x-envoy-auth-failure-mode-allowed");
/// Sent to the service with a body: whether the body was cut at the limit.
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

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

/// The body read before a check: what was received, how much of it the check carries.
struct CheckBody<'a> {
    received: &'a [u8],
    max_bytes: usize,
    as_bytes: bool,
}

/// The check request Envoy builds from a request head (and body).
fn check_request(
    ctx: &RequestCtx<'_>,
    request: &Parts,
    extensions: &[(String, String)],
    body: Option<CheckBody<'_>>,
) -> auth::CheckRequest {
    use auth::attribute_context::{HttpRequest, Peer, Request};
    let mut headers: HashMap<String, String> = HashMap::new();
    // A client's own partial-body header would mislead the service.
    for (name, value) in request.headers.iter().filter(|(n, _)| *n != PARTIAL_BODY) {
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
    let (mut text, mut raw) = (String::new(), Vec::new());
    let mut size = 0;
    if let Some(body) = body.filter(|b| !b.received.is_empty()) {
        // As Envoy: the size is what has been received, the body at most the limit, and
        // "partial" means the body sent is shorter than what was received.
        size = body.received.len() as i64;
        let sent = &body.received[..body.received.len().min(body.max_bytes)];
        let partial = sent.len() < body.received.len();
        headers.insert(PARTIAL_BODY.into(), partial.to_string());
        if body.as_bytes {
            raw = sent.to_vec();
        } else {
            text = String::from_utf8_lossy(sent).into_owned();
        }
    }
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
                    size,
                    body: text,
                    raw_body: raw,
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

/// What a service answered: let the request on (with these edits) or answer for it.
enum Verdict {
    Allow(Edits),
    Deny(LocalReply),
}

/// What a gRPC check's answer means for the request.
fn grpc_verdict(response: auth::CheckResponse) -> Verdict {
    use auth::check_response::HttpResponse;
    let code = response.status.as_ref().map_or(GRPC_OK, |s| s.code);
    if code == GRPC_OK {
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
        return Verdict::Allow(edits);
    }
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
    Verdict::Deny(reply)
}

/// Asks the gRPC service; `None` when it gave no answer in time.
async fn grpc_check(
    channel: Option<tonic::transport::Channel>,
    check: auth::CheckRequest,
    timeout: std::time::Duration,
) -> Option<Verdict> {
    let mut client = auth::authorization_client::AuthorizationClient::new(channel?);
    let mut call = tonic::Request::new(check);
    call.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.check(call)).await {
        Ok(Ok(response)) => Some(grpc_verdict(response.into_inner())),
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

impl ExtAuthzFilter {
    /// Sends the check and decides on its answer.
    fn check(
        &self,
        ctx: &RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &Parts,
        body: Option<CheckBody<'_>>,
    ) -> Decision {
        let extensions = match per_route {
            Some(PerRoute::ExtAuthz(ExtAuthzPerRoute::Check {
                context_extensions, ..
            })) => context_extensions.as_slice(),
            _ => &[],
        };
        let check = check_request(ctx, request, extensions, body);
        let config = self.config.clone();
        let answer: std::pin::Pin<Box<dyn std::future::Future<Output = Option<Verdict>> + Send>> =
            match &config.http {
                Some(_) => {
                    let snapshot = ctx.snapshot.clone();
                    let config = config.clone();
                    Box::pin(async move {
                        let service = config.http.as_deref()?;
                        http_service::check(&snapshot, &config, service, check).await
                    })
                }
                None => {
                    let channel = self
                        .channels
                        .pick(ctx.snapshot, &config.cluster, config.timeout);
                    Box::pin(grpc_check(channel, check, config.timeout))
                }
            };
        let counters = self.counters.clone();
        Decision::Wait(Box::pin(async move {
            match answer.await {
                Some(Verdict::Allow(edits)) => {
                    counters.ok.inc();
                    Decision::ContinueWith(edits)
                }
                Some(Verdict::Deny(mut reply)) => {
                    counters.denied.inc();
                    reply.flag = Some(ResponseFlag::UnauthorizedExternalService);
                    Decision::Respond(reply)
                }
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

impl HttpFilter for ExtAuthzFilter {
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision {
        let mut read_body = self.config.with_request_body;
        match per_route {
            Some(PerRoute::ExtAuthz(ExtAuthzPerRoute::Disabled)) => return Decision::Continue,
            Some(PerRoute::ExtAuthz(ExtAuthzPerRoute::Check {
                disable_request_body_buffering: true,
                ..
            })) => read_body = None,
            _ => {}
        }
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
        match read_body {
            Some(b) => Decision::ReadBody(BodyLimit {
                max_bytes: b.max_request_bytes,
                allow_partial: b.allow_partial_message,
            }),
            None => self.check(ctx, per_route, request, None),
        }
    }

    fn on_request_body(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
        body: &[u8],
        _complete: bool,
    ) -> Decision {
        let Some(settings) = self.config.with_request_body else {
            return self.check(ctx, per_route, request, None);
        };
        let body = CheckBody {
            received: body,
            max_bytes: settings.max_request_bytes,
            as_bytes: settings.pack_as_bytes,
        };
        self.check(ctx, per_route, request, Some(body))
    }
}
