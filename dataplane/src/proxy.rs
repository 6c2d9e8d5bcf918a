//! The request path: one snapshot load, route, then a direct response, a redirect, or a
//! forward to an upstream cluster with Envoy's timeout, retry and header semantics.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use tracing::{debug, Instrument};
use xds_types::hcm::{HttpConnectionManager, ServerHeader, StripPort, UnderscoresAction};
use xds_types::overload::ActionKind;
use xds_types::route::{
    AppendAction, ClusterTarget, DirectResponse, ForwardAction, HeaderMutations, Redirect,
    RedirectPath, RetryPolicy, RouteAction,
};

use crate::access_log::{AccessLogs, Entry, RequestView};
use crate::body::{self, Body, EndOfStream, FireOnDrop, Guarded};
use crate::config::{ChainRuntime, HttpRuntime, Network, Snapshot, SnapshotStore};
use crate::conn::ConnState;
use crate::http::ctx::{client_ip, RequestCtx};
use crate::http::filters::local_ratelimit::ConnLimiters;
use crate::http::filters::sample;
use crate::http::path::PathOutcome;
use crate::listener::tls::TlsInfo;
use crate::local_reply::{self, LocalReply, ProxyError, ResponseFlag};
use crate::router::RouteMatch;
use crate::stats::{class_index, Stats};
use crate::upstream::lb::PickRequest;
use crate::upstream::outlier::Outcome as TryOutcome;
use crate::upstream::pool::UpstreamError;
use crate::upstream::Host;

/// Request bodies up to this size are buffered when a retry policy may need to replay
/// them (Envoy's default per-connection buffer limit); larger ones stream once.
const RETRY_BUFFER_LIMIT: u64 = 1 << 20;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// What every request on one downstream connection shares.
pub struct ConnContext {
    pub listener_name: Arc<str>,
    /// The filter chain as the connection was accepted; a request uses the current version
    /// of the same chain when there is one (a route-only update), else this one (a
    /// draining chain keeps serving its connections).
    pub chain: Arc<ChainRuntime>,
    pub store: SnapshotStore,
    /// The downstream address (the PROXY protocol's source when there is one).
    pub remote: SocketAddr,
    /// The TCP peer.
    pub direct_remote: SocketAddr,
    /// `%CONNECTION_ID%`.
    pub connection_id: u64,
    pub local: SocketAddr,
    /// Set on TLS connections.
    pub tls: Option<Arc<TlsInfo>>,
    pub conn: Arc<ConnState>,
    pub flags: Arc<FlagCounters>,
    /// Rate limiters kept per downstream connection.
    pub limiters: ConnLimiters,
    /// The listener bypasses the overload manager (`bypass_overload_manager`).
    pub overload_exempt: bool,
}

/// One counter per [`ResponseFlag`].
pub struct FlagCounters(Vec<(ResponseFlag, prometheus_client::metrics::counter::Counter)>);

impl FlagCounters {
    /// Creates the counters in `stats`.
    pub fn new(stats: &Stats) -> Arc<Self> {
        Arc::new(Self(
            ResponseFlag::ALL
                .iter()
                .map(|f| (*f, stats.response_flag(f.short_name())))
                .collect(),
        ))
    }

    fn inc(&self, flag: ResponseFlag) {
        if let Some((_, c)) = self.0.iter().find(|(f, _)| *f == flag) {
            c.inc();
        }
    }
}

/// What happened to a request, for stats and the access logs. The strings are filled only
/// when there are access logs (`detailed`), to keep allocations off the request path.
#[derive(Default)]
struct Outcome {
    detailed: bool,
    flag: Option<ResponseFlag>,
    cluster: Option<String>,
    upstream: Option<String>,
    attempts: u32,
    /// Fires when the whole request has been received (it stops `request_timeout`).
    end_of_request: Arc<EndOfStream>,
    /// The stream's idle clock, touched by request body data.
    idle: Option<Arc<body::IdleTimer>>,
    /// The filters' log-phase hooks, run when the response ends.
    at_end: Vec<crate::http::ctx::EndHook>,
    /// The request headers the access logs read (as the upstream got them, once sent).
    logged_request: Vec<Option<HeaderValue>>,
    /// Request body bytes received, counted when there are access logs.
    received: Option<Arc<AtomicU64>>,
    /// The matched route's name (with access logs only).
    route: Option<String>,
    /// The stream's span, when the connection manager traces and the request is traced.
    trace: Option<crate::trace::ActiveSpan>,
    /// The health check filter took the request for a health check.
    health_check: bool,
}

/// Decrements a gauge when dropped.
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Marks a host busy for least-request balancing until dropped.
struct EndpointGuard(Arc<Host>);

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one downstream request.
pub async fn serve(
    ctx: Arc<ConnContext>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let active = ctx.conn.request_started();
    let started = Instant::now();
    let snapshot = ctx.store.load();
    let chain = snapshot
        .listeners
        .get(&*ctx.listener_name)
        .and_then(|l| l.chain(ctx.chain.identity))
        .cloned()
        .unwrap_or_else(|| ctx.chain.clone());
    let Network::Http(listener) = &chain.network else {
        // A chain's identity covers its network filter: this cannot be a TCP proxy.
        return Ok(local_reply::reply(StatusCode::INTERNAL_SERVER_ERROR, ""));
    };
    let stats = listener.stats.clone();
    stats.downstream_rq_total.inc();
    let rq_active = GaugeGuard::new(&stats.downstream_rq_active);
    let refused = prepare(&ctx, listener, &mut request);
    let method = request.method().clone();
    let version = request.version();
    let grpc = crate::router::is_grpc(request.headers());
    let request_keeps_alive = version == Version::HTTP_10
        && request
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
    let path = path_and_query(request.uri()).to_string();
    let host = request_host(&request).to_string();

    let hcm = &listener.config;
    let logs = listener.access_logs.as_ref();
    let start = logs.map(|_| SystemTime::now());
    let tracer = listener.tracer.as_ref();
    let mut outcome = Outcome {
        detailed: logs.is_some(),
        logged_request: logs.map_or_else(Vec::new, |logs| {
            logs.capture_request(&RequestView {
                method: &method,
                path: &path,
                authority: &host,
                scheme: scheme(&ctx),
                headers: request.headers(),
                original_path: None,
            })
        }),
        received: logs.map(|_| Arc::new(AtomicU64::new(0))),
        idle: hcm
            .stream_idle_timeout
            .map(|t| Arc::new(body::IdleTimer::new(t))),
        ..Outcome::default()
    };
    let stream_start = tokio::time::Instant::now();
    let route = if refused.is_none() {
        listener
            .routes
            .route(request.method(), &host, &path, request.headers())
    } else {
        None
    };
    // The route may set the stream's lifetime (from grpc-timeout) or lift the manager's.
    let stream_limit = match route.map(|m| &m.route.action) {
        Some(RouteAction::Forward(forward)) => forward
            .stream_duration
            .limit(grpc_timeout(request.headers()), hcm.max_stream_duration),
        _ => hcm.max_stream_duration,
    };
    let stream_deadline = stream_limit.map(|d| stream_start + d);
    // The decision follows route selection, as in Envoy (a route may override sampling).
    if let (None, Some(tracer)) = (&refused, tracer) {
        outcome.trace = tracer.start(
            request.headers(),
            route.map(|m| m.route),
            crate::trace::RequestLine {
                method: request.method().as_str(),
                scheme: scheme(&ctx),
                host: &host,
                path: &path,
            },
        );
    }
    let sampled = outcome.trace.as_ref().is_some_and(|s| s.context.sampled);
    if sampled {
        // A sampled span records the cluster, the upstream host and the bytes received.
        outcome.detailed = true;
        outcome
            .received
            .get_or_insert_with(|| Arc::new(AtomicU64::new(0)));
    }
    // A traced stream's own log lines carry its trace id.
    let log_span = outcome
        .trace
        .as_ref()
        .filter(|_| sampled)
        .map(|span| tracing::info_span!("stream", trace_id = %span.context.trace_id_hex()));
    let mut response = if let Some(error) = refused {
        outcome.flag = error.flag();
        local_reply::render(error)
    } else if hcm.request_timeout.is_none() && stream_deadline.is_none() && outcome.idle.is_none() {
        in_span(
            handle(
                &ctx,
                &snapshot,
                listener,
                request,
                route,
                &host,
                &path,
                &mut outcome,
            ),
            log_span,
        )
        .await
    } else {
        let received = outcome.end_of_request.clone();
        let request_timer = async {
            match hcm.request_timeout {
                Some(limit) => tokio::select! {
                    () = tokio::time::sleep(limit) => {}
                    () = received.wait() => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        // Before the response starts a timer answers, as Envoy: 408 while the request is
        // still arriving, 504 once it has arrived (the wait is then the upstream's). The
        // status is read when the timer fires, before the request's future is dropped.
        let waiting = || {
            if received.is_done() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::REQUEST_TIMEOUT
            }
        };
        let stream_timer = async {
            match stream_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
            waiting()
        };
        let idle = outcome.idle.clone();
        let idle_timer = async {
            match &idle {
                Some(idle) => idle.expired().await,
                None => std::future::pending().await,
            }
            waiting()
        };
        let timed_out = |status: StatusCode, text: &'static str, grpc_status: Option<u32>| {
            let mut reply = LocalReply::new(status, text);
            reply.grpc_status = grpc_status;
            local_reply::render(ProxyError::Local(reply))
        };
        tokio::select! {
            response = in_span(handle(&ctx, &snapshot, listener, request, route, &host, &path, &mut outcome), log_span) => response,
            () = request_timer => timed_out(StatusCode::REQUEST_TIMEOUT, "request timeout", None),
            status = idle_timer => timed_out(status, "stream timeout", None),
            status = stream_timer => timed_out(
                status,
                "downstream duration timeout",
                Some(local_reply::GRPC_DEADLINE_EXCEEDED),
            ),
        }
    };
    if grpc {
        response = local_reply::into_grpc(response);
    }
    // An HTTP/1.0 connection closes after the answer unless the client asked to keep it:
    // say so, as Envoy does.
    if version == Version::HTTP_10
        && !request_keeps_alive
        && !response.headers().contains_key(header::CONNECTION)
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !ctx.overload_exempt
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
        && crate::overload::applies(ActionKind::DisableHttpKeepalive)
    {
        disable_keepalive(&ctx, version, &mut response, &stats);
    }
    let set_server = match listener.config.server_header {
        ServerHeader::Overwrite => true,
        ServerHeader::AppendIfAbsent => !response.headers().contains_key(header::SERVER),
        ServerHeader::PassThrough => false,
    };
    if set_server {
        if let Ok(server) = HeaderValue::from_str(&listener.config.server_name) {
            response.headers_mut().insert(header::SERVER, server);
        }
    }

    let status = response.status().as_u16();
    stats.downstream_rq_xx[class_index(status)].inc();
    if let Some(flag) = outcome.flag {
        ctx.flags.inc(flag);
    }
    let (parts, mut body) = response.into_parts();
    if let Some(at) = stream_deadline {
        body = body::Timed::deadline(body, at).boxed();
    }
    if let Some(timeout) = hcm.stream_idle_timeout {
        body = body::Timed::idle(body, timeout).boxed();
    }
    let trace = logs.and(outcome.trace.as_ref()).map(|s| s.context);
    let sent = (logs.is_some() || sampled).then(|| Arc::new(AtomicU64::new(0)));
    if let Some(sent) = &sent {
        body = body::Counted::new(body, sent.clone()).boxed();
    }
    if let (Some(tracer), Some(span), true) = (tracer, outcome.trace.take(), sampled) {
        let record = TraceRecord {
            tracer: tracer.clone(),
            span,
            received: outcome.received.clone().unwrap_or_default(),
            sent: sent.clone().unwrap_or_default(),
            protocol: protocol_name(version),
            cluster: outcome.cluster.clone(),
        };
        let ctx = ctx.clone();
        outcome
            .at_end
            .push(Box::new(move |end| record.finish(&ctx, end)));
    }
    if let (Some(logs), Some(start)) = (logs, start) {
        let sent = sent.unwrap_or_default();
        let record = HttpRecord {
            logs: logs.clone(),
            start,
            request: std::mem::take(&mut outcome.logged_request),
            response: logs.capture_response(&parts.headers),
            response_duration: started.elapsed(),
            received: outcome.received.take().unwrap_or_default(),
            sent,
            protocol: protocol_name(version),
            cluster: outcome.cluster.take(),
            upstream: outcome.upstream.take(),
            attempts: outcome.attempts,
            route: outcome.route.take(),
            trace,
            traced: sampled,
            health_check: outcome.health_check,
        };
        let ctx = ctx.clone();
        outcome
            .at_end
            .push(Box::new(move |end| record.write(&ctx, end)));
    }
    let at_end = (!outcome.at_end.is_empty())
        .then(|| crate::http::ctx::AtEnd::new(outcome.at_end, parts.status, outcome.flag, started));
    let body = Guarded::new(body, (active, rq_active, at_end)).boxed();
    Ok(Response::from_parts(parts, body))
}

/// `future` inside `span` when there is one: a stream that is not traced pays for no
/// wrapper.
fn in_span<F: std::future::Future>(
    future: F,
    span: Option<tracing::Span>,
) -> futures_util::future::Either<tracing::instrument::Instrumented<F>, F> {
    match span {
        Some(span) => futures_util::future::Either::Left(future.instrument(span)),
        None => futures_util::future::Either::Right(future),
    }
}

/// The connection manager's checks and rewrites before filters and routing. Refused
/// (`Some`, the answer): HTTP/1.0 unless the listener accepts it (426, as Envoy), both
/// `Content-Length` and `Transfer-Encoding` (a smuggling attempt), HTTP/1.x without
/// `Host` (RFC 9112 §3.2; an HTTP/1.0 request may get the listener's default), header
/// names with underscores when the listener refuses them, a path the normalisation refuses or redirects. Otherwise
/// headers with underscores may be dropped, the port stripped from `Host` and the path
/// normalised, and the upstream sees the result.
fn prepare(
    ctx: &ConnContext,
    listener: &HttpRuntime,
    request: &mut Request<Incoming>,
) -> Option<ProxyError> {
    let bad = Some(ProxyError::Flag(ResponseFlag::DownstreamProtocolError));
    let hcm = &listener.config;
    if request.version() == Version::HTTP_10 {
        if !hcm.http1.accept_http_10 {
            return Some(codec_refusal(
                StatusCode::UPGRADE_REQUIRED,
                "Upgrade Required",
            ));
        }
        if let Some(host) = &hcm.http1.default_host_for_http_10 {
            if !request.headers().contains_key(header::HOST) {
                request.headers_mut().insert(header::HOST, host.clone());
            }
        }
    }
    let conflicting = ctx.conn.conflicting_framing.swap(false, Ordering::Relaxed);
    // HTTP/1.1 needs a Host (RFC 9112 §3.2); so does an HTTP/1.0 request, as Envoy.
    let missing_host =
        request.version() <= Version::HTTP_11 && !request.headers().contains_key(header::HOST);
    if conflicting {
        return bad;
    }
    if missing_host {
        // Envoy's codec answers this one with an empty body.
        return Some(codec_refusal(StatusCode::BAD_REQUEST, ""));
    }
    if hcm.headers_with_underscores != UnderscoresAction::Allow {
        let named: Vec<HeaderName> = request
            .headers()
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        if !named.is_empty() {
            if hcm.headers_with_underscores == UnderscoresAction::Reject {
                listener
                    .stats
                    .requests_rejected_with_underscores_in_headers
                    .inc();
                return bad;
            }
            listener
                .stats
                .dropped_headers_with_underscores
                .inc_by(named.len() as u64);
            for name in named {
                request.headers_mut().remove(name);
            }
        }
    }
    // As Envoy, right after the codec's checks: no filter, route or header work is spent
    // on a request the overload manager turns away.
    if !ctx.overload_exempt && crate::overload::applies(ActionKind::StopAcceptingRequests) {
        listener.stats.downstream_rq_overload_close.inc();
        return Some(ProxyError::Local(LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "envoy overloaded",
        )));
    }
    if hcm.strip_port != StripPort::Keep {
        let stripped = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| match split_host_port(h) {
                (name, Some(port))
                    if hcm.strip_port == StripPort::Any || port.parse() == Ok(ctx.local.port()) =>
                {
                    HeaderValue::from_str(name).ok()
                }
                _ => None,
            });
        if let Some(host) = stripped {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    // As Envoy's connection manager, before routing: the routes, the filters, the access
    // logs and the upstream all see the forwarding headers.
    let origin = Origin::of(ctx.remote.ip(), request.headers(), hcm);
    if hcm.use_remote_address && !hcm.skip_xff_append {
        // As Envoy: a loopback peer (a sidecar's own application) is recorded as this
        // node's address, which is what the application behind expects to see.
        let peer = ctx.remote.ip();
        let ip = if peer.is_loopback() {
            node_address()
        } else {
            peer
        }
        .to_string();
        let value = match request
            .headers()
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(existing) => format!("{existing},{ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            request.headers_mut().insert(X_FORWARDED_FOR.clone(), v);
        }
    }
    // A trusted hop in front may have set the scheme; otherwise it is this connection's.
    let keep_proto = request.headers().contains_key(&X_FORWARDED_PROTO)
        && (!hcm.use_remote_address || hcm.xff_num_trusted_hops > 0);
    if !keep_proto {
        request.headers_mut().insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(scheme(ctx)),
        );
    }
    origin.sanitize(
        request.headers_mut(),
        &listener.routes.table.internal_only_headers,
    );
    // As Envoy's connection manager: before filters, so they, the access logs and the
    // upstream all see the same id.
    let regenerate = hcm.use_remote_address && !hcm.preserve_external_request_id;
    if hcm.generate_request_id && (regenerate || !request.headers().contains_key(&X_REQUEST_ID)) {
        // A v4 UUID from the thread-local RNG: no getrandom syscall per request.
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut text);
        request.headers_mut().insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_str(text).expect("uuid is ascii"),
        );
    }
    match crate::http::path::apply(&hcm.path, path_and_query(request.uri())) {
        PathOutcome::Forward(Cow::Borrowed(_)) => None,
        PathOutcome::Forward(Cow::Owned(normalized)) => {
            let mut parts = request.uri().clone().into_parts();
            let Ok(path) = normalized.parse() else {
                return bad;
            };
            parts.path_and_query = Some(path);
            match Uri::from_parts(parts) {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return bad,
            }
            None
        }
        PathOutcome::Reject => bad,
        PathOutcome::Redirect(location) => {
            let mut reply = LocalReply::new(StatusCode::TEMPORARY_REDIRECT, "");
            let Ok(location) = HeaderValue::from_str(&location) else {
                return bad;
            };
            reply.headers.push((header::LOCATION, location));
            Some(ProxyError::Local(reply))
        }
    }
}

/// What Envoy's HTTP/1 codec answers to a request it refuses: the answer, then the
/// connection closes.
/// The disable_http_keepalive action on one response: an HTTP/1 connection closes after
/// it, an HTTP/2 connection starts draining (GOAWAY), as Envoy's connection manager.
fn disable_keepalive(
    ctx: &ConnContext,
    version: Version,
    response: &mut Response<Body>,
    stats: &crate::stats::HttpStats,
) {
    if version <= Version::HTTP_11 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        stats.downstream_cx_overload_disable_keepalive.inc();
    } else if ctx.conn.request_drain() {
        stats.downstream_cx_overload_disable_keepalive.inc();
    }
}

fn codec_refusal(status: StatusCode, body: &'static str) -> ProxyError {
    let mut reply = LocalReply::new(status, body);
    reply
        .headers
        .push((header::CONNECTION, HeaderValue::from_static("close")));
    reply.flag = Some(ResponseFlag::DownstreamProtocolError);
    ProxyError::Local(reply)
}

/// Routes the request, runs the HTTP filters, then the router; renders whatever error
/// comes out, and adds the response headers the filters asked for.
#[allow(clippy::too_many_arguments)]
async fn handle<'s>(
    ctx: &ConnContext,
    snapshot: &Arc<Snapshot>,
    listener: &'s HttpRuntime,
    request: Request<Incoming>,
    route: Option<RouteMatch<'s>>,
    host: &str,
    path: &str,
    outcome: &mut Outcome,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    // Built only when there are filters: a router-only chain skips all of this.
    let mut filter_ctx = (!listener.filters.is_empty()).then(|| RequestCtx {
        snapshot,
        remote: ctx.remote,
        local: ctx.local,
        tls: ctx.tls.as_deref(),
        client_ip: client_ip(
            ctx.remote.ip(),
            &parts.headers,
            listener.config.use_remote_address,
            listener.config.xff_num_trusted_hops,
        ),
        host,
        scheme: if ctx.tls.is_some() { "https" } else { "http" },
        route,
        response_headers: Vec::new(),
        conn_limiters: &ctx.limiters,
        at_end: Vec::new(),
        state: http::Extensions::new(),
        request_has_body: !http_body::Body::is_end_stream(&body),
        request_body: Vec::new(),
    });
    let mut body = body::Downstream::new(body);
    if let Some(received) = &outcome.received {
        body.count_into(received.clone());
        outcome.route = route
            .map(|m| m.route.name.clone())
            .filter(|n| !n.is_empty());
    }
    let (local_reply, ran) = match filter_ctx.as_mut() {
        None => (None, 0),
        Some(filter_ctx) => {
            let decided = listener
                .filters
                .on_request(filter_ctx, &mut parts, &mut body, outcome.idle.as_deref())
                .await;
            // Moved out of the request's future once the filters have decided: a timeout
            // that drops the future later still runs them.
            outcome.at_end.append(&mut filter_ctx.at_end);
            if filter_ctx
                .state
                .get::<crate::http::filters::health_check::HealthCheckRequest>()
                .is_some()
            {
                // As Envoy: a health check is not traced (the upstream sees it unsampled).
                outcome.health_check = true;
                if let Some(span) = outcome.trace.as_mut() {
                    span.context.sampled = false;
                }
            }
            decided
        }
    };
    let request = Request::from_parts(parts, body);
    let (result, mutations) = match local_reply {
        Some(reply) => (Err(ProxyError::Local(reply)), Vec::new()),
        None => route_request(ctx, snapshot, listener, route, request, host, path, outcome).await,
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            outcome.flag = error.flag();
            local_reply::render(error)
        }
    };
    for m in mutations {
        apply_mutations(response.headers_mut(), m);
    }
    let Some(mut filter_ctx) = filter_ctx else {
        return response;
    };
    for (name, value) in std::mem::take(&mut filter_ctx.response_headers) {
        response.headers_mut().append(name, value);
    }
    listener.filters.on_response(&mut filter_ctx, response, ran)
}

/// The router: executes the route's action. Returns the response (or why there is none)
/// and the route's response header mutations (route, virtual host, route table: Envoy's
/// order), which apply to whatever the router answers.
#[allow(clippy::too_many_arguments)]
async fn route_request<'s>(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    listener: &'s HttpRuntime,
    route: Option<RouteMatch<'s>>,
    request: Request<body::Downstream>,
    host: &str,
    path: &str,
    outcome: &mut Outcome,
) -> (Result<Response<Body>, ProxyError>, Vec<&'s HeaderMutations>) {
    let Some(RouteMatch {
        virtual_host,
        route,
        ..
    }) = route
    else {
        listener.stats.no_route.inc();
        return (
            Err(ProxyError::Flag(ResponseFlag::NoRouteFound)),
            Vec::new(),
        );
    };
    let mutations = vec![
        &route.response_headers,
        &virtual_host.response_headers,
        &listener.routes.table.response_headers,
    ];
    let response = match &route.action {
        RouteAction::Direct(direct) => Ok(direct_response(direct)),
        RouteAction::Redirect(redirect) => {
            if let (Some(logs), Some(RedirectPath::Prefix(prefix))) =
                (&listener.access_logs, &redirect.path)
            {
                // As Envoy's router, which rewrites the request's path before it answers
                // a prefix redirect: the logs see the rewritten path.
                let rewritten = replace_matched_prefix(route, prefix, path);
                let suppress = listener.config.http_filters.router.suppress_envoy_headers;
                outcome.logged_request = logs.capture_request(&RequestView {
                    method: request.method(),
                    path: &rewritten,
                    authority: host,
                    scheme: scheme(ctx),
                    headers: request.headers(),
                    original_path: (!suppress).then_some(path),
                });
            }
            Ok(redirect_response(redirect, route, host, path))
        }
        RouteAction::Forward(action) => {
            let request_mutations = [
                &route.request_headers,
                &virtual_host.request_headers,
                &listener.routes.table.request_headers,
            ];
            let policy = action
                .retry_policy
                .as_ref()
                .or(virtual_host.retry_policy.as_ref());
            let envoy_headers = (!listener.config.http_filters.router.suppress_envoy_headers)
                .then_some(EnvoyHeaders {
                    attempt_count_upstream: virtual_host.include_request_attempt_count,
                    attempt_count_downstream: virtual_host.include_attempt_count_in_response,
                });
            let plan = ForwardPlan {
                action,
                policy,
                request_mutations,
                rewrite_prefix: route.matcher.rewritable_prefix(),
                envoy_headers,
            };
            let forwarded =
                forward(ctx, snapshot, listener, plan, request, host, path, outcome).await;
            match forwarded {
                // Envoy marks a circuit breaker's refusal so clients can back off.
                Err(ProxyError::Flag(ResponseFlag::UpstreamOverflow))
                    if envoy_headers.is_some() =>
                {
                    let mut response =
                        local_reply::render(ProxyError::Flag(ResponseFlag::UpstreamOverflow));
                    response
                        .headers_mut()
                        .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
                    outcome.flag = Some(ResponseFlag::UpstreamOverflow);
                    Ok(response)
                }
                other => other,
            }
        }
    };
    (response, mutations)
}

fn direct_response(direct: &DirectResponse) -> Response<Body> {
    let mut response = match &direct.body {
        Some(b) => {
            let mut r = Response::new(body::full(Bytes::from(b.clone())));
            local_reply::text_headers(r.headers_mut(), b.len());
            r
        }
        None => Response::new(body::empty()),
    };
    *response.status_mut() = StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK);
    let text = direct
        .body
        .as_ref()
        .map_or_else(Bytes::new, |b| Bytes::from(b.clone()));
    local_reply::mark(&mut response, text);
    response
}

/// `path` with the part the route's prefix matched replaced by `prefix`.
fn replace_matched_prefix(route: &xds_types::route::Route, prefix: &str, path: &str) -> String {
    let matched = route.matcher.rewritable_prefix().unwrap_or("").len();
    format!("{prefix}{}", path.get(matched..).unwrap_or(""))
}

fn redirect_response(
    redirect: &Redirect,
    route: &xds_types::route::Route,
    host: &str,
    path_and_query: &str,
) -> Response<Body> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let (original_host, original_port) = split_host_port(host);
    let scheme = redirect.scheme.as_deref().unwrap_or("http");
    let target_host = redirect.host.as_deref().unwrap_or(original_host);
    let port = match (redirect.port, redirect.scheme.is_some()) {
        (Some(p), _) => Some(p.to_string()),
        // A scheme change drops the original port, as Envoy does for default ports.
        (None, true) => None,
        (None, false) => original_port.map(str::to_string),
    };
    let mut new_path = match &redirect.path {
        None => path.to_string(),
        Some(RedirectPath::Replace(p)) => p.clone(),
        Some(RedirectPath::Prefix(p)) => replace_matched_prefix(route, p, path),
    };
    if !redirect.strip_query && !new_path.contains('?') {
        if let Some(q) = query {
            new_path.push('?');
            new_path.push_str(q);
        }
    }
    let location = match port {
        Some(p) => format!("{scheme}://{target_host}:{p}{new_path}"),
        None => format!("{scheme}://{target_host}{new_path}"),
    };
    let mut response = Response::new(body::empty());
    *response.status_mut() =
        StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    local_reply::mark(&mut response, Bytes::new());
    response
}

/// Everything `forward` needs from the matched route.
struct ForwardPlan<'a> {
    action: &'a ForwardAction,
    policy: Option<&'a RetryPolicy>,
    request_mutations: [&'a HeaderMutations; 3],
    rewrite_prefix: Option<&'a str>,
    /// The router's `x-envoy-*` headers: `None` with `suppress_envoy_headers`.
    envoy_headers: Option<EnvoyHeaders>,
}

/// Which of the router's `x-envoy-*` headers a request gets.
#[derive(Clone, Copy)]
struct EnvoyHeaders {
    /// `x-envoy-attempt-count` upstream (the virtual host's `include_request_attempt_count`).
    attempt_count_upstream: bool,
    /// `x-envoy-attempt-count` downstream (`include_attempt_count_in_response`).
    attempt_count_downstream: bool,
}

static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_EXPECTED_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

/// A request body as the retry loop sees it.
enum RequestBody {
    /// Fully buffered: every try can send it again.
    Replayable(Bytes),
    /// Streamed: sent once, so the request gets exactly one try.
    Streaming(Option<Body>),
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    listener: &HttpRuntime,
    plan: ForwardPlan<'_>,
    mut request: Request<body::Downstream>,
    host: &str,
    path: &str,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let action = plan.action;
    let cluster_name = match &action.target {
        ClusterTarget::Cluster(name) => name.as_str(),
        ClusterTarget::Weighted { clusters, total } => pick_weighted(clusters, *total),
    };
    if outcome.detailed {
        outcome.cluster = Some(cluster_name.to_string());
    }
    let Some(cluster) = snapshot.clusters.get(cluster_name).cloned() else {
        listener.stats.no_cluster.inc();
        let status = StatusCode::from_u16(action.cluster_not_found_status)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Err(ProxyError::ClusterNotFound(status));
    };
    // An aggregate cluster hands the request to one of its clusters.
    let Some(cluster) = cluster.resolve(&snapshot.clusters) else {
        return Err(ProxyError::Flag(ResponseFlag::NoHealthyUpstream));
    };

    let upgrade = requested_upgrade(request.headers());
    if let Some(protocol) = &upgrade {
        let listed =
            |list: &[(String, bool)]| list.iter().find(|(t, _)| t == protocol).map(|(_, on)| *on);
        let allowed = listed(&listener.config.upgrades)
            .is_some_and(|on| listed(&action.upgrades).unwrap_or(on));
        if !allowed {
            return Err(ProxyError::Flag(ResponseFlag::UpgradeFailed));
        }
    }
    let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (parts, incoming) = request.into_parts();
    let request_hash = if cluster.config.lb.policy.is_consistent_hash() {
        crate::hash_policy::compute(
            &action.hash_policy,
            &parts.headers,
            &parts.uri,
            ctx.remote,
            ctx.local,
        )
    } else {
        Default::default()
    };
    let is_chunked_h1 = parts.version <= Version::HTTP_11
        && parts
            .headers
            .get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));

    let mut headers = Some(upstream_headers(
        ctx,
        listener,
        &plan,
        parts.headers,
        host,
        upgrade.is_some(),
    ));
    if let (Some(span), Some(headers)) = (&outcome.trace, headers.as_mut()) {
        span.inject(headers);
    }
    let rewritten = rewrite_path(action, plan.rewrite_prefix, path);
    let upstream_path = match &rewritten {
        // Unchanged: reuse the request's parsed path (a cheap `Bytes` clone).
        None => parts.uri.path_and_query().cloned(),
        Some(rewritten) => rewritten.parse().ok(),
    };
    let Some(upstream_path) = upstream_path else {
        return Err(ProxyError::Flag(ResponseFlag::DownstreamProtocolError));
    };
    if let (Some(logs), Some(headers)) = (&listener.access_logs, &headers) {
        // The logs see the request as the upstream gets it, as Envoy's do.
        let authority = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(host);
        outcome.logged_request = logs.capture_request(&RequestView {
            method: &parts.method,
            path: upstream_path.as_str(),
            authority,
            scheme: scheme(ctx),
            headers,
            original_path: rewritten.is_some().then_some(path),
        });
    }
    let version = upstream_version(cluster.config.protocol, parts.version);
    let scheme = if cluster.config.tls.is_some() {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };

    let end_of_request = outcome.end_of_request.clone();
    let may_retry = plan.policy.is_some_and(|p| p.num_retries > 0);
    // Retries and mirrors both need the body again: buffer it when it is small enough.
    let buffer = may_retry || !action.mirrors.is_empty();
    let mut body = match prepare_body(
        incoming,
        buffer,
        is_chunked_h1,
        &end_of_request,
        outcome.idle.as_ref(),
    )
    .await
    {
        Ok(body) => body,
        Err(()) => return Err(ProxyError::Flag(ResponseFlag::DownstreamProtocolError)),
    };
    if let (RequestBody::Replayable(bytes), Some(headers)) = (&body, &headers) {
        for mirror in action.mirrors.iter().filter(|m| sample(m.fraction)) {
            let Some(target) = snapshot.clusters.get(&mirror.cluster).cloned() else {
                debug!(cluster = %mirror.cluster, "mirror cluster not found");
                continue;
            };
            let shadow = Shadow {
                method: parts.method.clone(),
                downstream_version: parts.version,
                headers: headers.clone(),
                host: if mirror.shadow_suffix {
                    shadow_host(host)
                } else {
                    host.to_string()
                },
                path: upstream_path.clone(),
                body: bytes.clone(),
            };
            tokio::spawn(shadow.send(target));
        }
    }
    let max_tries = match (&body, plan.policy) {
        (RequestBody::Replayable(_), Some(p)) => 1 + p.num_retries,
        _ => 1,
    };

    // The cluster's max_requests circuit breaker: held until the response ends.
    let Some(request_slot) = cluster.limits.try_request() else {
        cluster.stats.upstream_rq_pending_overflow.inc();
        return Err(ProxyError::Flag(ResponseFlag::UpstreamOverflow));
    };
    let request_slot = Arc::new(request_slot);
    let sni_host = cluster
        .transport
        .tls()
        .is_some_and(|t| t.auto_sni)
        .then_some(host);
    let overall = deadline_after(end_of_request.clone(), action.timeout);
    tokio::pin!(overall);
    let mut attempt = 0;
    let mut retry_slot = None;
    let previous_hosts = plan.policy.filter(|p| p.previous_hosts);
    let mut tried: Vec<Arc<Host>> = Vec::new();
    loop {
        attempt += 1;
        outcome.attempts = attempt;
        let picked = cluster.pick(&PickRequest {
            hash: request_hash.hash,
            avoid: if previous_hosts.is_some() {
                &tried
            } else {
                &[]
            },
            reselect: previous_hosts.map_or(0, |p| p.host_selection_retry_max_attempts),
        });
        let Some(endpoint) = picked else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return Err(ProxyError::Flag(ResponseFlag::NoHealthyUpstream));
        };
        if outcome.detailed {
            outcome.upstream = Some(endpoint.authority.clone());
        }
        if previous_hosts.is_some() {
            tried.push(endpoint.clone());
        }
        let try_body = match &mut body {
            RequestBody::Replayable(bytes) => body::full(bytes.clone()),
            RequestBody::Streaming(b) => b.take().unwrap_or_else(body::empty),
        };
        // The last try takes the headers; earlier ones clone them.
        let mut try_headers = if attempt < max_tries {
            headers.clone().unwrap_or_default()
        } else {
            headers.take().unwrap_or_default()
        };
        if plan.envoy_headers.is_some_and(|e| e.attempt_count_upstream) {
            try_headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
        }
        if let Some(span) = outcome.trace.as_mut() {
            span.begin_attempt(&mut try_headers, &endpoint.authority);
        }
        let upstream_request = match build_request(
            &parts.method,
            version,
            &scheme,
            &endpoint,
            &upstream_path,
            try_headers,
            try_body,
        ) {
            Some(r) => r,
            None => {
                return Err(ProxyError::Flag(ResponseFlag::DownstreamProtocolError));
            }
        };
        cluster.stats.upstream_rq_total.inc();
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        let in_flight = (
            EndpointGuard(endpoint.clone()),
            GaugeGuard::new(&cluster.stats.upstream_rq_active),
            request_slot.clone(),
            retry_slot.take(),
        );
        let per_try = deadline_after(
            end_of_request.clone(),
            plan.policy.and_then(|p| p.per_try_timeout),
        );

        let pool = endpoint.pool_for(host, version == Version::HTTP_2);
        let context = cluster.context(sni_host);
        let sent = Instant::now();
        let exchange = async {
            if downstream_upgrade.is_some() {
                pool.send_upgrade(upstream_request, &context)
                    .await
                    .map(Exchanged::Upgrade)
            } else {
                pool.send(upstream_request, &context)
                    .await
                    .map(Exchanged::Plain)
            }
        };
        let result = tokio::select! {
            r = exchange => TryResult::Done(r),
            _ = &mut overall => TryResult::Timeout,
            _ = per_try => TryResult::PerTryTimeout,
        };
        if let TryResult::Done(Err(UpstreamError::Overflow(_))) = result {
            return Err(ProxyError::Flag(ResponseFlag::UpstreamOverflow));
        }
        if let (TryResult::Done(Ok(response)), Some(span)) = (&result, outcome.trace.as_mut()) {
            span.attempt_answered(response.status().as_u16());
        }
        cluster.report(
            &endpoint,
            match &result {
                TryResult::Done(Ok(response)) => TryOutcome::Status(response.status().as_u16()),
                TryResult::Done(Err(UpstreamError::Connect(_))) => TryOutcome::ConnectFailed,
                TryResult::Done(Err(_)) => TryOutcome::Reset,
                TryResult::Timeout | TryResult::PerTryTimeout => TryOutcome::Timeout,
            },
        );
        // A retry needs room in the cluster's retry circuit breaker.
        let mut retries_left = attempt < max_tries;
        let policy = plan.policy;
        let retry_flag = match result {
            TryResult::Done(Ok(response)) => {
                let status = response.status().as_u16();
                cluster.stats.upstream_rq_xx[class_index(status)].inc();
                if retries_left && policy.is_some_and(|p| p.retries_status(status)) {
                    retry_slot = cluster.limits.try_retry();
                    if retry_slot.is_none() {
                        cluster.stats.upstream_rq_retry_overflow.inc();
                        retries_left = false;
                    }
                }
                if retries_left && policy.is_some_and(|p| p.retries_status(status)) {
                    debug!(cluster = %cluster.config.name, status, attempt, "retrying on status");
                    None
                } else {
                    if attempt > 1 && policy.is_some_and(|p| p.retries_status(status)) {
                        outcome.flag = Some(ResponseFlag::UpstreamRetryLimitExceeded);
                        cluster.stats.upstream_rq_retry_limit_exceeded.inc();
                    }
                    let idle = listener.config.stream_idle_timeout;
                    let mut response =
                        upstream_response(response, downstream_upgrade, in_flight, idle);
                    if let Some(cookie) = request_hash.set_cookie {
                        response.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    if let Some(envoy) = plan.envoy_headers {
                        let took = sent.elapsed().as_millis() as u64;
                        let headers = response.headers_mut();
                        headers.insert(X_ENVOY_SERVICE_TIME.clone(), HeaderValue::from(took));
                        if envoy.attempt_count_downstream {
                            headers
                                .insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
                        }
                    }
                    return Ok(response);
                }
            }
            TryResult::Done(Err(error)) => {
                let connect = error.is_connect();
                if connect {
                    cluster.stats.upstream_cx_connect_fail.inc();
                }
                debug!(cluster = %cluster.config.name, %error, attempt, "upstream request failed");
                let flag = if connect {
                    ResponseFlag::UpstreamConnectionFailure
                } else {
                    ResponseFlag::UpstreamConnectionTermination
                };
                let retriable = policy.is_some_and(|p| {
                    if connect {
                        p.retries_connect_failure()
                    } else {
                        p.retries_reset()
                    }
                });
                Some((flag, retriable))
            }
            TryResult::PerTryTimeout => {
                cluster.stats.upstream_rq_per_try_timeout.inc();
                let retriable = policy.is_some_and(|p| p.retries_status(504) || p.retries_reset());
                Some((ResponseFlag::UpstreamRequestTimeout, retriable))
            }
            TryResult::Timeout => {
                cluster.stats.upstream_rq_timeout.inc();
                listener.stats.downstream_rq_timeout.inc();
                return Err(ProxyError::Flag(ResponseFlag::UpstreamRequestTimeout));
            }
        };
        drop(in_flight);
        if let Some((flag, retriable)) = retry_flag {
            if retries_left && retriable {
                retry_slot = cluster.limits.try_retry();
                if retry_slot.is_none() {
                    cluster.stats.upstream_rq_retry_overflow.inc();
                    retries_left = false;
                }
            }
            if !(retries_left && retriable) {
                if attempt > 1 && retriable {
                    cluster.stats.upstream_rq_retry_limit_exceeded.inc();
                    return Err(ProxyError::RetriesExhausted(flag));
                }
                return Err(ProxyError::Flag(flag));
            }
        }
        cluster.stats.upstream_rq_retry.inc();
        if let Some(span) = outcome.trace.as_mut() {
            span.attempt_retried();
        }
        let policy = policy.expect("retries imply a policy");
        tokio::select! {
            _ = tokio::time::sleep(backoff(policy, attempt)) => {}
            _ = &mut overall => {
                cluster.stats.upstream_rq_timeout.inc();
                return Err(ProxyError::Flag(ResponseFlag::UpstreamRequestTimeout));
            }
        }
    }
}

/// A copy of a request for a mirror cluster; its answer is read and dropped.
struct Shadow {
    method: Method,
    downstream_version: Version,
    headers: HeaderMap,
    host: String,
    path: http::uri::PathAndQuery,
    body: Bytes,
}

impl Shadow {
    async fn send(mut self, cluster: Arc<crate::upstream::ClusterState>) {
        let Some(endpoint) = cluster.pick(&PickRequest::default()) else {
            return;
        };
        if let Ok(v) = HeaderValue::from_str(&self.host) {
            self.headers.insert(header::HOST, v);
        }
        let version = upstream_version(cluster.config.protocol, self.downstream_version);
        let scheme = if cluster.config.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let Some(request) = build_request(
            &self.method,
            version,
            &scheme,
            &endpoint,
            &self.path,
            self.headers,
            body::full(self.body),
        ) else {
            return;
        };
        cluster.stats.upstream_rq_total.inc();
        let pool = endpoint.pool_for(&self.host, version == Version::HTTP_2);
        let sent =
            tokio::time::timeout(MIRROR_TIMEOUT, pool.send(request, &cluster.context(None))).await;
        if let Ok(Ok(response)) = sent {
            cluster.stats.upstream_rq_xx[class_index(response.status().as_u16())].inc();
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, response.into_body().collect()).await;
        }
    }
}

/// A `grpc-timeout` header's duration (RFC-style: up to 8 digits and a unit, `H`, `M`,
/// `S`, `m`, `u` or `n`); `None` when absent or malformed, as Envoy ignores a bad one.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The HTTP version a request goes upstream in: the cluster's, or with the downstream's
/// protocol the request's own (HTTP/2 for HTTP/2, else HTTP/1.1). With ALPN (`Auto`) the
/// pool speaks HTTP/2 on connections that negotiated it, whatever this says.
fn upstream_version(
    protocol: xds_types::cluster::UpstreamProtocol,
    downstream: Version,
) -> Version {
    use xds_types::cluster::UpstreamProtocol as P;
    match protocol {
        P::Http2 => Version::HTTP_2,
        P::Downstream if downstream == Version::HTTP_2 => Version::HTTP_2,
        P::Http1 | P::Auto | P::Downstream => Version::HTTP_11,
    }
}

/// Longest a mirrored request may take (it never holds up the original).
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// `host-shadow`, keeping a port at the end (Envoy's shadow host).
fn shadow_host(host: &str) -> String {
    match split_host_port(host) {
        (name, Some(port)) => format!("{name}-shadow:{port}"),
        (name, None) => format!("{name}-shadow"),
    }
}

enum TryResult {
    Done(Result<Exchanged, UpstreamError>),
    Timeout,
    PerTryTimeout,
}

/// An upstream response: a normal one (its body drives a pooled connection) or the answer
/// to an upgrade request.
enum Exchanged {
    Plain(Response<Body>),
    Upgrade(Response<Incoming>),
}

impl Exchanged {
    fn status(&self) -> StatusCode {
        match self {
            Self::Plain(r) => r.status(),
            Self::Upgrade(r) => r.status(),
        }
    }
}

/// Resolves `timeout` after the request body completed; never when `timeout` is `None`.
async fn deadline_after(end_of_request: Arc<EndOfStream>, timeout: Option<Duration>) {
    match timeout {
        Some(t) => {
            end_of_request.wait().await;
            tokio::time::sleep(t).await;
        }
        None => std::future::pending().await,
    }
}

/// Envoy's fully jittered exponential back-off.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let ceiling = policy
        .base_interval
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(policy.max_interval);
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// Picks a cluster of a weighted set, in proportion to the weights.
pub fn pick_weighted(clusters: &[(String, u32)], total: u32) -> &str {
    let mut target = rand::rng().random_range(0..total);
    for (name, weight) in clusters {
        if target < *weight {
            return name;
        }
        target -= weight;
    }
    &clusters[clusters.len() - 1].0
}

/// Buffers a body that may need replaying, or passes it through as a stream. A chunked
/// HTTP/1 body's first frame is read before anything goes upstream, so malformed chunking
/// is answered with 400 and never reaches an upstream.
async fn prepare_body(
    incoming: body::Downstream,
    may_retry: bool,
    is_chunked_h1: bool,
    end_of_request: &Arc<EndOfStream>,
    idle: Option<&Arc<body::IdleTimer>>,
) -> Result<RequestBody, ()> {
    if incoming.is_end_stream() {
        end_of_request.fire();
        return Ok(RequestBody::Replayable(Bytes::new()));
    }
    if may_retry
        && incoming
            .size_hint()
            .exact()
            .is_some_and(|n| n <= RETRY_BUFFER_LIMIT)
    {
        // Data arriving while the body is buffered is stream activity too.
        let collected = match idle {
            Some(idle) => body::Touching::new(BodyExt::boxed(incoming), idle.clone())
                .collect()
                .await
                .map_err(|_| ())?,
            None => incoming.collect().await.map_err(|_| ())?,
        };
        end_of_request.fire();
        return Ok(RequestBody::Replayable(collected.to_bytes()));
    }
    let guard = FireOnDrop(end_of_request.clone());
    let body = if is_chunked_h1 {
        let mut stream = BodyStream::new(incoming);
        match stream.next().await {
            None => {
                end_of_request.fire();
                return Ok(RequestBody::Replayable(Bytes::new()));
            }
            Some(Err(_)) => return Err(()),
            Some(Ok(first)) => {
                let rest = stream;
                let all = futures_util::stream::once(async move { Ok(first) }).chain(rest);
                BodyExt::boxed(StreamBody::new(all))
            }
        }
    } else {
        BodyExt::boxed(incoming)
    };
    let body = match idle {
        Some(idle) => body::Touching::new(body, idle.clone()).boxed(),
        None => body,
    };
    Ok(RequestBody::Streaming(Some(
        Guarded::new(body, guard).boxed(),
    )))
}

fn build_request(
    method: &Method,
    version: Version,
    scheme: &http::uri::Scheme,
    endpoint: &Host,
    path: &http::uri::PathAndQuery,
    headers: HeaderMap,
    body: Body,
) -> Option<Request<Body>> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(endpoint.uri_authority.clone()?);
    parts.path_and_query = Some(path.clone());
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = Uri::from_parts(parts).ok()?;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Some(request)
}

/// Turns the upstream response into the downstream one; for a completed upgrade, splices
/// the two upgraded connections together, until either closes or no bytes have crossed
/// for `idle` (the stream idle timeout, as Envoy applies it to upgraded streams).
fn upstream_response<G: Send + Sync + 'static>(
    response: Exchanged,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    in_flight: G,
    idle: Option<Duration>,
) -> Response<Body> {
    let mut response = match response {
        Exchanged::Plain(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            return Response::from_parts(parts, Guarded::new(body, in_flight).boxed());
        }
        Exchanged::Upgrade(response) => response,
    };
    let upgraded =
        response.status() == StatusCode::SWITCHING_PROTOCOLS && downstream_upgrade.is_some();
    if upgraded {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let downstream_upgrade = downstream_upgrade.expect("checked above");
        tokio::spawn(async move {
            let _in_flight = in_flight;
            match tokio::try_join!(downstream_upgrade, upstream_upgrade) {
                Ok((down, up)) => {
                    let timer = idle.map(|t| Arc::new(body::IdleTimer::new(t)));
                    let mut down = body::TouchingIo::new(TokioIo::new(down), timer.clone());
                    let mut up = body::TouchingIo::new(TokioIo::new(up), timer.clone());
                    let expired = async {
                        match &timer {
                            Some(timer) => timer.expired().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        ended = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                            if let Err(error) = ended {
                                debug!(%error, "upgraded connection ended");
                            }
                        }
                        () = expired => debug!("upgraded connection idle: closed"),
                    }
                }
                Err(error) => debug!(%error, "upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, body::empty());
    }
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(
        parts,
        Guarded::new(body::incoming(incoming), in_flight).boxed(),
    )
}

fn upstream_headers(
    ctx: &ConnContext,
    listener: &HttpRuntime,
    plan: &ForwardPlan<'_>,
    mut headers: HeaderMap,
    host: &str,
    keep_upgrade: bool,
) -> HeaderMap {
    let hcm = &listener.config;
    strip_hop_by_hop(&mut headers, keep_upgrade);
    headers.remove(header::EXPECT);
    crate::xfcc::apply(
        &mut headers,
        hcm.forward_client_cert,
        hcm.client_cert_details,
        ctx.tls.as_deref(),
    );
    let host_value = plan.action.host_rewrite.as_deref().unwrap_or(host);
    if let Ok(v) = HeaderValue::from_str(host_value) {
        headers.insert(header::HOST, v);
    }
    for m in plan.request_mutations {
        apply_mutations(&mut headers, m);
    }
    if plan.envoy_headers.is_some() {
        // What the upstream may take: the per-try timeout when shorter, else the route's.
        let per_try = plan.policy.and_then(|p| p.per_try_timeout);
        let expected = match (per_try, plan.action.timeout) {
            (Some(t), Some(overall)) => Some(t.min(overall)),
            (t, overall) => t.or(overall),
        };
        if let Some(t) = expected {
            headers.insert(
                X_ENVOY_EXPECTED_TIMEOUT.clone(),
                HeaderValue::from(t.as_millis() as u64),
            );
        }
    }
    headers
}

/// This node's address as Envoy picks it: the first non-loopback IPv4 address of the
/// host's interfaces (loopback when there is none), read once.
/// Where a request comes from, as Envoy's connection manager decides it: the client
/// address it trusts and whether the request is internal (from an `internal_address_config`
/// range, through no proxy) or arrives at the edge (`use_remote_address`, not internal).
struct Origin {
    client: Option<std::net::IpAddr>,
    internal: bool,
    edge: bool,
}

/// Headers only a trusted hop may set, removed from every request that is not internal.
static EXTERNAL_STRIPPED: [&str; 11] = [
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
];

/// Headers that describe the hop in front, removed at the edge (where there is none).
static EDGE_STRIPPED: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

impl Origin {
    /// Reads the request as it arrived, before `x-forwarded-for` gets this hop's entry.
    fn of(peer: std::net::IpAddr, headers: &HeaderMap, hcm: &HttpConnectionManager) -> Self {
        let entries = || {
            headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .rev()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.rsplit(','))
                .map(str::trim)
        };
        let from_right = |n: usize| entries().nth(n).and_then(|e| e.parse().ok());
        let (client, single) = if hcm.use_remote_address {
            // Behind N trusted hops the client is the Nth entry from the right.
            let forwarded = (hcm.xff_num_trusted_hops as usize)
                .checked_sub(1)
                .and_then(from_right);
            (
                Some(forwarded.unwrap_or(peer)),
                !headers.contains_key(&X_FORWARDED_FOR),
            )
        } else {
            (
                from_right(hcm.xff_num_trusted_hops as usize),
                entries().count() == 1,
            )
        };
        let internal = single
            && client.is_some_and(|ip| hcm.internal_addresses.iter().any(|r| r.contains(ip)));
        Self {
            client,
            internal,
            edge: hcm.use_remote_address && !internal,
        }
    }

    /// Marks an internal request; strips what an outside client must not set from the
    /// others, and records the client's address at the edge.
    fn sanitize(&self, headers: &mut HeaderMap, internal_only: &[HeaderName]) {
        if self.internal {
            headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
            return;
        }
        for name in EXTERNAL_STRIPPED {
            headers.remove(name);
        }
        for name in internal_only {
            headers.remove(name);
        }
        if self.edge {
            for name in EDGE_STRIPPED {
                headers.remove(name);
            }
            if let Some(ip) = self.client {
                let text = HeaderValue::from_str(&ip.to_string()).expect("an address is ASCII");
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), text);
            }
        }
    }
}

fn node_address() -> std::net::IpAddr {
    static NODE: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();
    *NODE.get_or_init(|| {
        if_addrs::get_if_addrs()
            .ok()
            .and_then(|list| {
                list.into_iter()
                    .map(|i| i.ip())
                    .find(|ip| ip.is_ipv4() && !ip.is_loopback())
            })
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    })
}

/// The upstream path when a rewrite applies; `None` when the path is unchanged.
fn rewrite_path(
    action: &ForwardAction,
    matched_prefix: Option<&str>,
    path: &str,
) -> Option<String> {
    if action.prefix_rewrite.is_none() && action.regex_rewrite.is_none() {
        return None;
    }
    let mut path = path.to_string();
    if let (Some(new_prefix), Some(matched)) = (&action.prefix_rewrite, matched_prefix) {
        let rest = path.get(matched.len()..).unwrap_or("");
        path = format!("{new_prefix}{rest}");
    }
    if let Some((regex, substitution)) = &action.regex_rewrite {
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.clone(), None),
        };
        let rewritten = regex.replace_all(&p, substitution.as_str()).into_owned();
        path = match q {
            Some(q) => format!("{rewritten}?{q}"),
            None => rewritten,
        };
    }
    if path.is_empty() {
        path.push('/');
    }
    Some(path)
}

/// Applies removals, then additions, of one level.
pub fn apply_mutations(headers: &mut HeaderMap, m: &HeaderMutations) {
    for name in &m.remove {
        headers.remove(name);
    }
    for add in &m.add {
        apply_addition(headers, add);
    }
}

/// Adds one header as its `append_action` says (an empty value only when kept).
pub fn apply_addition(headers: &mut HeaderMap, add: &xds_types::route::HeaderAddition) {
    if add.value.is_empty() && !add.keep_empty_value {
        return;
    }
    match add.action {
        AppendAction::AppendIfExistsOrAdd => {
            headers.append(add.name.clone(), add.value.clone());
        }
        AppendAction::AddIfAbsent => {
            if !headers.contains_key(&add.name) {
                headers.insert(add.name.clone(), add.value.clone());
            }
        }
        AppendAction::OverwriteIfExistsOrAdd => {
            headers.insert(add.name.clone(), add.value.clone());
        }
        AppendAction::OverwriteIfExists => {
            if headers.contains_key(&add.name) {
                headers.insert(add.name.clone(), add.value.clone());
            }
        }
    }
}

/// The upgrade protocol a request asks for (`Connection: upgrade` plus `Upgrade: x`).
fn requested_upgrade(headers: &HeaderMap) -> Option<String> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// Removes hop-by-hop headers (and those named by `Connection`); an upgrade keeps
/// `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &HTTP2_SETTINGS] {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The downstream scheme.
fn scheme(ctx: &ConnContext) -> &'static str {
    if ctx.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// `%PROTOCOL%`.
fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// What a stream's access log line needs once the stream ends.
struct HttpRecord {
    logs: Arc<AccessLogs>,
    start: SystemTime,
    request: Vec<Option<HeaderValue>>,
    response: Vec<Option<HeaderValue>>,
    response_duration: Duration,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    protocol: &'static str,
    cluster: Option<String>,
    upstream: Option<String>,
    attempts: u32,
    route: Option<String>,
    trace: Option<crate::trace::SpanContext>,
    traced: bool,
    health_check: bool,
}

/// What a stream's span needs once the stream ends.
struct TraceRecord {
    tracer: Arc<crate::trace::Tracer>,
    span: crate::trace::ActiveSpan,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    protocol: &'static str,
    cluster: Option<String>,
}

impl TraceRecord {
    fn finish(self, ctx: &ConnContext, end: &crate::http::ctx::StreamEnd) {
        let end = crate::trace::SpanEnd {
            status: end.status.as_u16(),
            flags: end.flag.map_or("-", ResponseFlag::short_name),
            protocol: self.protocol,
            peer: ctx.remote.ip(),
            request_size: self.received.load(Ordering::Relaxed),
            response_size: self.sent.load(Ordering::Relaxed),
            cluster: self.cluster.as_deref(),
        };
        self.tracer.finish(self.span, &end, &ctx.store);
    }
}

impl HttpRecord {
    fn write(self, ctx: &ConnContext, end: &crate::http::ctx::StreamEnd) {
        self.logs.write(
            &Entry {
                request: &self.request,
                response: &self.response,
                status: end.status.as_u16(),
                flags: end.flag.as_slice(),
                duration: end.duration,
                response_duration: Some(self.response_duration),
                bytes_received: self.received.load(Ordering::Relaxed),
                bytes_sent: self.sent.load(Ordering::Relaxed),
                protocol: Some(self.protocol),
                upstream_host: self.upstream.as_deref(),
                upstream_cluster: self.cluster.as_deref(),
                attempts: (self.attempts > 0).then_some(self.attempts),
                server_name: ctx.tls.as_ref().and_then(|t| t.sni.as_deref()),
                route_name: self.route.as_deref(),
                trace: self.trace,
                traced: self.traced,
                health_check: self.health_check,
                ..Entry::connection(
                    ctx.remote,
                    ctx.direct_remote,
                    ctx.local,
                    ctx.connection_id,
                    self.start,
                )
            },
            &ctx.store,
        );
    }
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

fn request_host<B>(request: &Request<B>) -> &str {
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// `host[:port]` split; an IPv6 literal keeps its brackets.
pub(crate) fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.rsplit_once("]:") {
            Some((h, p)) => (&host[..h.len() + 1], Some(p)),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => (h, Some(p)),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection_manager(extra: &str) -> HttpConnectionManager {
        use xds_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as pb;
        let yaml = format!(
            "stat_prefix: t\nroute_config: {{virtual_hosts: []}}\nhttp_filters: [{{name: r, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]\n{extra}"
        );
        let proto: pb::HttpConnectionManager = xds_types::decode::from_yaml(
            &yaml,
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        )
        .unwrap();
        HttpConnectionManager::try_from(&proto).unwrap()
    }

    fn sanitized(hcm: &HttpConnectionManager, peer: [u8; 4], xff: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", "5xx".parse().unwrap());
        h.insert("x-envoy-internal", "true".parse().unwrap());
        h.insert("x-envoy-downstream-service-node", "forged".parse().unwrap());
        h.insert("x-secret", "forged".parse().unwrap());
        if let Some(xff) = xff {
            h.insert(&X_FORWARDED_FOR, xff.parse().unwrap());
        }
        let origin = Origin::of(std::net::IpAddr::from(peer), &h, hcm);
        origin.sanitize(&mut h, &[HeaderName::from_static("x-secret")]);
        h
    }

    #[test]
    fn the_edge_strips_what_clients_forge_and_records_their_address() {
        let edge = connection_manager("use_remote_address: true");
        let h = sanitized(&edge, [10, 1, 2, 3], None);
        assert_eq!(h["x-envoy-external-address"], "10.1.2.3");
        for forged in [
            "x-envoy-retry-on",
            "x-envoy-internal",
            "x-envoy-downstream-service-node",
            "x-secret",
        ] {
            assert!(!h.contains_key(forged), "{forged} kept");
        }
        // Behind one trusted hop the client is the entry that hop appended.
        let behind = connection_manager("use_remote_address: true\nxff_num_trusted_hops: 1");
        let h = sanitized(&behind, [10, 1, 2, 3], Some("192.0.2.9, 10.9.9.9"));
        assert_eq!(h["x-envoy-external-address"], "10.9.9.9");
        // Not at the edge: the hop in front's descriptions stay, internal headers do not.
        let inner = connection_manager("");
        let h = sanitized(&inner, [10, 1, 2, 3], Some("192.0.2.9"));
        assert!(!h.contains_key("x-envoy-external-address"));
        assert!(h.contains_key("x-envoy-downstream-service-node"));
        assert!(!h.contains_key("x-envoy-retry-on"));
    }

    #[test]
    fn a_client_in_an_internal_range_without_a_proxy_is_internal() {
        let hcm = connection_manager(
            "use_remote_address: true\ninternal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
        );
        let h = sanitized(&hcm, [10, 1, 2, 3], None);
        assert_eq!(h["x-envoy-internal"], "true");
        assert_eq!(h["x-envoy-retry-on"], "5xx");
        assert_eq!(h["x-secret"], "forged");
        assert!(!h.contains_key("x-envoy-external-address"));
        // Through a proxy (an x-forwarded-for already), or from outside the range: external.
        let h = sanitized(&hcm, [10, 1, 2, 3], Some("10.5.5.5"));
        assert!(!h.contains_key("x-envoy-internal"));
        let h = sanitized(&hcm, [192, 0, 2, 1], None);
        assert_eq!(h["x-envoy-external-address"], "192.0.2.1");
    }

    #[test]
    fn grpc_timeout_headers_parse_as_grpc_defines_them() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers, deflate".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(split_host_port("a.com:80"), ("a.com", Some("80")));
        assert_eq!(split_host_port("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_host_port("a.com"), ("a.com", None));
    }
}
