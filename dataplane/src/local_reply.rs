//! Responses the proxy answers itself, and Envoy's response flags. Every proxy error
//! ([`ProxyError`]) becomes a response here and nowhere else.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use xds_types::route::HeaderMutations;

use crate::body::{self, Body};

/// Envoy's response flags (the `%RESPONSE_FLAGS%` short names) Sluice can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// No healthy upstream host.
    NoHealthyUpstream,
    /// Upstream connection failure.
    UpstreamConnectionFailure,
    /// Upstream request timeout.
    UpstreamRequestTimeout,
    /// No route configured.
    NoRouteFound,
    /// The route's cluster does not exist.
    NoClusterFound,
    /// Retries exhausted.
    UpstreamRetryLimitExceeded,
    /// Upstream connection terminated (reset) before a response.
    UpstreamConnectionTermination,
    /// Downstream protocol error (malformed request).
    DownstreamProtocolError,
    /// The upgrade was not allowed by configuration.
    UpgradeFailed,
    /// A circuit breaker of the cluster refused the request.
    UpstreamOverflow,
    /// The local rate limit filter refused the request.
    RateLimited,
    /// The RBAC filter denied the request.
    RbacAccessDenied,
    /// The fault filter aborted the request.
    FaultInjected,
    /// The external authorization service denied the request (or could not be asked).
    UnauthorizedExternalService,
    /// The rate limit service could not be asked and the filter fails closed.
    RateLimitServiceError,
    /// The health check filter answered 503: the proxy is failing its health checks.
    FailedLocalHealthCheck,
}

impl ResponseFlag {
    /// Every flag, for pre-creating counters.
    pub const ALL: [ResponseFlag; 16] = [
        Self::NoHealthyUpstream,
        Self::UpstreamConnectionFailure,
        Self::UpstreamRequestTimeout,
        Self::NoRouteFound,
        Self::NoClusterFound,
        Self::UpstreamRetryLimitExceeded,
        Self::UpstreamConnectionTermination,
        Self::DownstreamProtocolError,
        Self::UpgradeFailed,
        Self::UpstreamOverflow,
        Self::RateLimited,
        Self::RbacAccessDenied,
        Self::FaultInjected,
        Self::UnauthorizedExternalService,
        Self::RateLimitServiceError,
        Self::FailedLocalHealthCheck,
    ];

    /// Envoy's short name.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamRequestTimeout => "UT",
            Self::NoRouteFound => "NR",
            Self::NoClusterFound => "NC",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::UpstreamConnectionTermination => "UC",
            Self::DownstreamProtocolError => "DPE",
            Self::UpgradeFailed => "UPE",
            Self::UpstreamOverflow => "UO",
            Self::RateLimited => "RL",
            Self::RbacAccessDenied => "RBAC",
            Self::FaultInjected => "FI",
            Self::UnauthorizedExternalService => "UAEX",
            Self::RateLimitServiceError => "RLSE",
            Self::FailedLocalHealthCheck => "LH",
        }
    }

    /// Envoy's long name (`%RESPONSE_FLAGS_LONG%`).
    pub fn long_name(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "NoHealthyUpstream",
            Self::UpstreamConnectionFailure => "UpstreamConnectionFailure",
            Self::UpstreamRequestTimeout => "UpstreamRequestTimeout",
            Self::NoRouteFound => "NoRouteFound",
            Self::NoClusterFound => "NoClusterFound",
            Self::UpstreamRetryLimitExceeded => "UpstreamRetryLimitExceeded",
            Self::UpstreamConnectionTermination => "UpstreamConnectionTermination",
            Self::DownstreamProtocolError => "DownstreamProtocolError",
            Self::UpgradeFailed => "UpgradeFailed",
            Self::UpstreamOverflow => "UpstreamOverflow",
            Self::RateLimited => "RateLimited",
            Self::RbacAccessDenied => "RbacAccessDenied",
            Self::FaultInjected => "FaultInjected",
            Self::UnauthorizedExternalService => "UnauthorizedExternalService",
            Self::RateLimitServiceError => "RateLimitServiceError",
            Self::FailedLocalHealthCheck => "FailedLocalHealthCheck",
        }
    }
}

/// A locally generated response; bodies are Envoy's default texts so clients and tests
/// see the same thing from either proxy.
pub(crate) fn reply(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(if text.is_empty() {
        body::empty()
    } else {
        body::full(text)
    });
    *response.status_mut() = status;
    if !text.is_empty() {
        text_headers(response.headers_mut(), text.len());
    }
    response
}

/// A proxy-made text body's headers: its type, and its length, which Envoy's filters see
/// on a local reply (the compressor's minimum length reads it).
pub(crate) fn text_headers(headers: &mut http::HeaderMap, len: usize) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// A reply a filter makes instead of forwarding the request.
#[derive(Debug)]
pub struct LocalReply {
    pub status: StatusCode,
    /// Sent as `text/plain` when not empty.
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The filter's configured response header mutations.
    pub mutations: Option<HeaderMutations>,
    pub flag: Option<ResponseFlag>,
    /// A streamed body that replaces `body`, sent with the reply's own headers only (a
    /// file the file server answers with).
    pub stream: Option<Body>,
    /// The `grpc-status` a gRPC request gets, when not derived from `status`.
    pub grpc_status: Option<u32>,
}

/// Marks a response the proxy made itself, with its text, so that a gRPC request's
/// reply can be turned into gRPC's form at the end.
#[derive(Debug, Clone)]
struct Local {
    message: Bytes,
    grpc_status: Option<u32>,
}

/// Marks a response the router made itself (a direct response, a redirect) as a local
/// reply with `message`, as Envoy sends those through its local reply path too.
pub fn mark(response: &mut Response<Body>, message: Bytes) {
    response.extensions_mut().insert(Local {
        message,
        grpc_status: None,
    });
}

/// `grpc-status` DEADLINE_EXCEEDED, for a stream over its duration.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// Turns a local reply to a gRPC request into gRPC's trailers-only form, as Envoy does:
/// status 200, `content-type: application/grpc`, `grpc-status` (the reply's, else mapped
/// from the HTTP status) and the text as a percent-encoded `grpc-message`, no body. A
/// reply that already carries a `grpc-status` keeps it; upstream responses are untouched.
pub fn into_grpc(response: Response<Body>) -> Response<Body> {
    let Some(local) = response.extensions().get::<Local>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    let grpc_status = local
        .grpc_status
        .unwrap_or_else(|| grpc_status_for(parts.status));
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let status = HeaderName::from_static("grpc-status");
    if !headers.contains_key(&status) {
        headers.insert(status, HeaderValue::from(grpc_status));
    }
    let message = local.message.strip_suffix(b"\n").unwrap_or(&local.message);
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&grpc_message(message)) {
            headers.insert(HeaderName::from_static("grpc-message"), v);
        }
    }
    Response::from_parts(parts, body::empty())
}

/// The text of a reply the proxy made itself; `None` for an upstream's response.
pub(crate) fn message_of(response: &http::response::Parts) -> Option<&Bytes> {
    response.extensions.get::<Local>().map(|l| &l.message)
}

/// Envoy's HTTP status → gRPC status mapping (the gRPC spec's, with 400 as INTERNAL).
pub(crate) fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII but `%` as is.
pub(crate) fn grpc_message(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl LocalReply {
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
            mutations: None,
            flag: None,
            stream: None,
            grpc_status: None,
        }
    }
}

/// Why the proxy answers a request itself.
#[derive(Debug)]
pub enum ProxyError {
    /// A failure Envoy names by a response flag, answered with Envoy's text.
    Flag(ResponseFlag),
    /// The route's cluster does not exist; the route chose the status.
    ClusterNotFound(StatusCode),
    /// Every try failed this way and the retries are spent (flag `URX`).
    RetriesExhausted(ResponseFlag),
    /// A filter's answer.
    Local(LocalReply),
}

impl ProxyError {
    /// The response flag for stats and the access log.
    pub fn flag(&self) -> Option<ResponseFlag> {
        match self {
            Self::Flag(f) => Some(*f),
            Self::ClusterNotFound(_) => Some(ResponseFlag::NoClusterFound),
            Self::RetriesExhausted(_) => Some(ResponseFlag::UpstreamRetryLimitExceeded),
            Self::Local(reply) => reply.flag,
        }
    }
}

/// The response for a proxy error: the only place errors become responses.
pub fn render(error: ProxyError) -> Response<Body> {
    let (message, grpc_status) = match &error {
        ProxyError::Local(local) if local.stream.is_some() => (None, None),
        ProxyError::Local(local) => (Some(local.body.clone()), local.grpc_status),
        ProxyError::Flag(f) | ProxyError::RetriesExhausted(f) => {
            (Some(Bytes::from_static(flag_text(*f).1.as_bytes())), None)
        }
        ProxyError::ClusterNotFound(_) => (Some(Bytes::new()), None),
    };
    let mut response = render_http(error);
    if let Some(message) = message {
        response.extensions_mut().insert(Local {
            message,
            grpc_status,
        });
    }
    response
}

fn render_http(error: ProxyError) -> Response<Body> {
    match error {
        ProxyError::Flag(flag) => {
            let mut response = for_flag(flag);
            if flag == ResponseFlag::DownstreamProtocolError {
                // A malformed request leaves the connection in an unknown state.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
        ProxyError::ClusterNotFound(status) => reply(status, ""),
        ProxyError::RetriesExhausted(last) => for_flag(last),
        ProxyError::Local(local) => {
            let has_body = !local.body.is_empty() && local.stream.is_none();
            let len = local.body.len();
            let mut response = Response::new(match local.stream {
                Some(stream) => stream,
                None if has_body => body::full(local.body),
                None => body::empty(),
            });
            *response.status_mut() = local.status;
            let headers = response.headers_mut();
            if has_body {
                text_headers(headers, len);
            }
            for (name, value) in local.headers {
                // A reply's own content type replaces the default one.
                if name == header::CONTENT_TYPE {
                    headers.insert(name, value);
                } else {
                    headers.append(name, value);
                }
            }
            if let Some(m) = &local.mutations {
                crate::proxy::apply_mutations(headers, m);
            }
            response
        }
    }
}

/// The local reply for a flag.
fn for_flag(flag: ResponseFlag) -> Response<Body> {
    let (status, text) = flag_text(flag);
    reply(status, text)
}

/// The status and Envoy's text of the local reply for a flag.
fn flag_text(flag: ResponseFlag) -> (StatusCode, &'static str) {
    let reply = |status, text| (status, text);
    match flag {
        ResponseFlag::NoHealthyUpstream => reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        ResponseFlag::UpstreamConnectionFailure | ResponseFlag::UpstreamRetryLimitExceeded => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        ),
        ResponseFlag::UpstreamConnectionTermination => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        ),
        ResponseFlag::UpstreamRequestTimeout => reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        ResponseFlag::NoRouteFound => reply(StatusCode::NOT_FOUND, ""),
        ResponseFlag::NoClusterFound => reply(StatusCode::SERVICE_UNAVAILABLE, ""),
        ResponseFlag::DownstreamProtocolError => reply(StatusCode::BAD_REQUEST, "Bad Request"),
        ResponseFlag::UpgradeFailed => reply(StatusCode::FORBIDDEN, "upgrade failed"),
        ResponseFlag::UpstreamOverflow => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
        // Filters make these replies themselves ([`ProxyError::Local`]).
        ResponseFlag::RateLimited => reply(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited"),
        ResponseFlag::RbacAccessDenied => reply(StatusCode::FORBIDDEN, "RBAC: access denied"),
        ResponseFlag::FaultInjected => reply(StatusCode::SERVICE_UNAVAILABLE, "fault filter abort"),
        ResponseFlag::UnauthorizedExternalService => reply(StatusCode::FORBIDDEN, ""),
        ResponseFlag::RateLimitServiceError => reply(StatusCode::INTERNAL_SERVER_ERROR, ""),
        ResponseFlag::FailedLocalHealthCheck => reply(StatusCode::SERVICE_UNAVAILABLE, ""),
    }
}
