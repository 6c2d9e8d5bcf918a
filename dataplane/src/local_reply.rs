//! Responses the proxy answers itself, and Envoy's response flags. Every proxy error
//! becomes a response here and nowhere else.

use http::{header, HeaderValue, Response, StatusCode};

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
}

impl ResponseFlag {
    /// Every flag, for pre-creating counters.
    pub const ALL: [ResponseFlag; 10] = [
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
        }
    }
}

/// A locally generated response; bodies are Envoy's default texts so clients and tests
/// see the same thing from either proxy.
pub fn reply(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(if text.is_empty() {
        body::empty()
    } else {
        body::full(text)
    });
    *response.status_mut() = status;
    if !text.is_empty() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// The local reply for a flag.
pub fn for_flag(flag: ResponseFlag) -> Response<Body> {
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
    }
}
