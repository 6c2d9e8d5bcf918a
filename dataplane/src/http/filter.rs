//! The HTTP filter chain: the connection manager's `http_filters` in front of the router,
//! built once per filter chain (and carried across snapshots while the chain is
//! unchanged, so token buckets and counters keep their state).
//!
//! A filter is a phase object:
//! - request headers: continue, answer locally (the router and the filters after it never
//!   see the request), wait (a fault delay, a call out), or ask for the request body;
//! - request body: the part of the body it asked for, read before anything goes upstream
//!   (what was read is replayed to the upstream unchanged); the same choices;
//! - response headers and response body (a streaming wrapper), whoever produced the
//!   response — the router or a later filter's local reply — for every filter that saw
//!   the request, last first, as Envoy's encoder path runs;
//! - the end of the stream: hooks a filter leaves in the [`RequestCtx`] run once the
//!   response has been sent or the stream was abandoned (the log phase).
//!
//! What a filter wants added to every response it leaves in the [`RequestCtx`] too.
//! Per-route overrides are looked up by filter name, most specific level first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use tracing::warn;
use xds_types::http_filter::{FilterConfig, HttpFilters, PerFilterConfig, PerFilterConfigs};

use super::ctx::RequestCtx;
use super::filters;
use crate::body::{Body, Downstream, IdleTimer};
use crate::local_reply::{LocalReply, ResponseFlag};
use crate::stats::Stats;

/// What a filter decided about a request.
pub enum Decision {
    /// Hand the request to the next filter.
    Continue,
    /// Answer now; later filters and the router do not run.
    Respond(LocalReply),
    /// Hand the request on with these changes (what an authorization service asked for).
    ContinueWith(Edits),
    /// Decide later (a delay, a call to another service).
    Wait(Pin<Box<dyn Future<Output = Decision> + Send>>),
    /// Read the request body first, then decide in [`HttpFilter::on_request_body`].
    ReadBody(BodyLimit),
}

/// How much of the request body a filter reads before it decides.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: usize,
    /// A longer body is decided on its first `max_bytes`; otherwise it is answered 413.
    pub allow_partial: bool,
}

/// Header changes a filter decided on without holding the request.
#[derive(Default)]
pub struct Edits {
    /// `(name, value, append)`: appended to a header the request has (and dropped when it
    /// has none, as Envoy's authorization filter does), or set over any existing value.
    pub request: Vec<(HeaderName, HeaderValue, bool)>,
    /// Appended whether or not the request has the header.
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
    /// Added to the response.
    pub response: Vec<(HeaderName, HeaderValue)>,
}

/// One HTTP filter's behaviour.
pub trait HttpFilter: Send + Sync {
    /// Runs on the request headers. `per_route` is the most specific override for this
    /// filter (never [`PerRoute::Disabled`]: disabled filters are not called).
    fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        per_route: Option<&PerRoute>,
        request: &mut Parts,
    ) -> Decision;

    /// Runs after [`Decision::ReadBody`] with the body read so far (at least the limit's
    /// bytes unless the body is shorter, perhaps more: data arrives in whole frames);
    /// `complete` when that is the whole body.
    fn on_request_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        _request: &mut Parts,
        _body: &[u8],
        _complete: bool,
    ) -> Decision {
        Decision::Continue
    }

    /// Runs on the response headers, whoever made the response (the router or a later
    /// filter's local reply), for filters that saw the request, last filter first.
    /// `end_stream`: the response has no body.
    fn on_response(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        _response: &mut http::response::Parts,
        _end_stream: bool,
    ) {
    }

    /// Wraps the response body, after every filter's [`HttpFilter::on_response`], in the
    /// same order: a transformation streams (it must not hold the whole body).
    fn on_response_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _per_route: Option<&PerRoute>,
        _response: &http::response::Parts,
        body: Body,
    ) -> Body {
        body
    }
}

/// The `Payload Too Large` answer to a body over a filter's limit, as Envoy's.
fn too_large() -> LocalReply {
    LocalReply::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large")
}

/// A per-route override, compiled with the route table (state such as a route's own
/// token buckets lives here, and is kept while the table is unchanged).
pub enum PerRoute {
    Disabled,
    Cors(Box<xds_types::http_filter::CorsPolicy>),
    LocalRateLimit(Arc<filters::local_ratelimit::Limiter>),
    BasicAuth(xds_types::http_filter::basic_auth::Users),
    Rbac(Option<Arc<filters::rbac::Engine>>),
    Fault(Box<xds_types::http_filter::Fault>),
    ExtAuthz(xds_types::http_filter::ExtAuthzPerRoute),
    JwtAuthn(xds_types::http_filter::JwtPerRoute),
    HeaderMutation(Box<xds_types::http_filter::header_mutation::Mutations>),
    Buffer { max_request_bytes: u32 },
    Compressor(Box<xds_types::http_filter::CompressorPerRoute>),
    FileServer(Arc<filters::file_server::Site>),
}

/// The overrides of one level (route, virtual host or route table), by filter name.
pub type Overrides = Vec<(String, PerRoute)>;

/// Compiles one level's `typed_per_filter_config`.
pub fn compile_overrides(configs: &PerFilterConfigs, hcm_prefix: &str, stats: &Stats) -> Overrides {
    configs
        .iter()
        .map(|(name, config)| {
            let compiled = match config {
                PerFilterConfig::Disabled => PerRoute::Disabled,
                PerFilterConfig::Cors(p) => PerRoute::Cors(p.clone()),
                PerFilterConfig::LocalRateLimit(c) => PerRoute::LocalRateLimit(Arc::new(
                    filters::local_ratelimit::Limiter::new(c, stats),
                )),
                PerFilterConfig::BasicAuth(users) => PerRoute::BasicAuth(users.clone()),
                PerFilterConfig::Rbac(r) => PerRoute::Rbac(
                    r.as_ref()
                        .map(|r| Arc::new(filters::rbac::Engine::new(r, hcm_prefix, stats))),
                ),
                PerFilterConfig::Fault(f) => PerRoute::Fault(f.clone()),
                PerFilterConfig::ExtAuthz(e) => PerRoute::ExtAuthz(e.clone()),
                PerFilterConfig::JwtAuthn(j) => PerRoute::JwtAuthn(j.clone()),
                PerFilterConfig::HeaderMutation(m) => PerRoute::HeaderMutation(m.clone()),
                PerFilterConfig::Buffer { max_request_bytes } => PerRoute::Buffer {
                    max_request_bytes: *max_request_bytes,
                },
                PerFilterConfig::Compressor(c) => PerRoute::Compressor(c.clone()),
                PerFilterConfig::FileServer(f) => {
                    PerRoute::FileServer(Arc::new(filters::file_server::Site::new(f)))
                }
            };
            (name.clone(), compiled)
        })
        .collect()
}

struct Entry {
    name: String,
    disabled: bool,
    filter: Box<dyn HttpFilter>,
}

/// The filters of one connection manager, in order.
pub struct HttpFilterChain {
    entries: Vec<Entry>,
}

impl HttpFilterChain {
    /// Builds the filters of a connection manager (`hcm_prefix` is its `stat_prefix`).
    pub fn new(config: &HttpFilters, skipped: &[String], hcm_prefix: &str, stats: &Stats) -> Self {
        for name in skipped {
            warn!(filter = %name, "optional HTTP filter of a type sluice does not implement: skipped");
        }
        let entries = config
            .filters
            .iter()
            .map(|f| {
                let filter: Box<dyn HttpFilter> = match &f.config {
                    FilterConfig::Cors => Box::new(filters::cors::Cors::new(hcm_prefix, stats)),
                    FilterConfig::LocalRateLimit(c) => Box::new(
                        filters::local_ratelimit::LocalRateLimitFilter::new(c, stats),
                    ),
                    FilterConfig::BasicAuth(c) => Box::new(
                        filters::basic_auth::BasicAuthFilter::new(c, hcm_prefix, stats),
                    ),
                    FilterConfig::Rbac(c) => {
                        Box::new(filters::rbac::RbacFilter::new(c, hcm_prefix, stats))
                    }
                    FilterConfig::Fault(c) => {
                        Box::new(filters::fault::FaultFilter::new(c, hcm_prefix, stats))
                    }
                    FilterConfig::ExtAuthz(c) => Box::new(filters::ext_authz::ExtAuthzFilter::new(
                        c, hcm_prefix, stats,
                    )),
                    FilterConfig::RateLimit(c) => {
                        Box::new(filters::ratelimit::RateLimitFilter::new(c, stats))
                    }
                    FilterConfig::JwtAuthn(c) => Box::new(filters::jwt_authn::JwtAuthnFilter::new(
                        c, hcm_prefix, stats,
                    )),
                    FilterConfig::HeaderMutation(c) => {
                        Box::new(filters::header_mutation::HeaderMutationFilter::new(c))
                    }
                    FilterConfig::Buffer { max_request_bytes } => {
                        Box::new(filters::buffer::BufferFilter::new(*max_request_bytes))
                    }
                    FilterConfig::HealthCheck(c) => {
                        Box::new(filters::health_check::HealthCheckFilter::new(c))
                    }
                    FilterConfig::Compressor(c) => Box::new(
                        filters::compressor::CompressorFilter::new(c, hcm_prefix, stats),
                    ),
                    FilterConfig::Decompressor(c) => Box::new(
                        filters::decompressor::DecompressorFilter::new(c, hcm_prefix, stats),
                    ),
                    FilterConfig::FileServer(c) => {
                        Box::new(filters::file_server::FileServerFilter::new(c))
                    }
                    FilterConfig::GrpcWeb => Box::new(filters::grpc_web::GrpcWebFilter),
                    FilterConfig::Cache(c) => {
                        Box::new(filters::cache::CacheFilter::new(c, hcm_prefix, stats))
                    }
                };
                Entry {
                    name: f.name.clone(),
                    disabled: f.disabled,
                    filter,
                }
            })
            .collect();
        Self { entries }
    }

    /// Whether only the router runs (the request path skips the chain entirely).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The filter's override, or `Err` when it does not run for this request.
    fn enabled<'a>(entry: &Entry, ctx: &RequestCtx<'a>) -> Result<Option<&'a PerRoute>, ()> {
        match ctx.override_for(&entry.name) {
            Some(PerRoute::Disabled) => Err(()),
            None if entry.disabled => Err(()),
            other => Ok(other),
        }
    }

    /// Runs the request phases of every enabled filter, in order; `Some` is a local reply.
    /// Body data a filter reads touches `idle`. Returns how many filters saw the request
    /// (the response phases run on those).
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx<'_>,
        request: &mut Parts,
        body: &mut Downstream,
        idle: Option<&IdleTimer>,
    ) -> (Option<LocalReply>, usize) {
        for (index, entry) in self.entries.iter().enumerate() {
            let Ok(per_route) = Self::enabled(entry, ctx) else {
                continue;
            };
            let mut decision = entry.filter.on_request(ctx, per_route, request);
            for transform in ctx.request_body.drain(..) {
                body.wrap(transform);
            }
            loop {
                match decision {
                    Decision::Continue => break,
                    Decision::ContinueWith(edits) => {
                        for name in edits.remove {
                            request.headers.remove(name);
                        }
                        for (name, value, append) in edits.request {
                            if append {
                                if request.headers.contains_key(&name) {
                                    request.headers.append(name, value);
                                }
                            } else {
                                request.headers.insert(name, value);
                            }
                        }
                        for (name, value) in edits.add {
                            request.headers.append(name, value);
                        }
                        ctx.response_headers.extend(edits.response);
                        break;
                    }
                    Decision::Respond(reply) => return (Some(reply), index + 1),
                    Decision::Wait(later) => decision = later.await,
                    Decision::ReadBody(limit) => {
                        let Ok(ended) = body.read_up_to(limit.max_bytes, idle).await else {
                            let mut reply = LocalReply::new(StatusCode::BAD_REQUEST, "");
                            reply.flag = Some(ResponseFlag::DownstreamProtocolError);
                            return (Some(reply), index + 1);
                        };
                        let held = body.buffered();
                        if held.len() > limit.max_bytes && !limit.allow_partial {
                            return (Some(too_large()), index + 1);
                        }
                        decision = entry
                            .filter
                            .on_request_body(ctx, per_route, request, held, ended);
                        for transform in ctx.request_body.drain(..) {
                            body.wrap(transform);
                        }
                    }
                }
            }
        }
        (None, self.entries.len())
    }

    /// Runs the response phases of the first `ran` filters, last first: every filter's
    /// header phase, then every filter's body wrapper.
    pub fn on_response(
        &self,
        ctx: &mut RequestCtx<'_>,
        response: http::Response<Body>,
        ran: usize,
    ) -> http::Response<Body> {
        use http_body::Body as _;
        let (mut head, mut body) = response.into_parts();
        let end_stream = body.is_end_stream();
        let ran = &self.entries[..ran.min(self.entries.len())];
        for entry in ran.iter().rev() {
            if let Ok(per_route) = Self::enabled(entry, ctx) {
                entry
                    .filter
                    .on_response(ctx, per_route, &mut head, end_stream);
            }
        }
        for entry in ran.iter().rev() {
            if let Ok(per_route) = Self::enabled(entry, ctx) {
                body = entry.filter.on_response_body(ctx, per_route, &head, body);
            }
        }
        http::Response::from_parts(head, body)
    }
}
