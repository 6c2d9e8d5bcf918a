//! `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`: every request is checked by an
//! authorization service in a cluster before it goes on, over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`) or as a plain HTTP request whose answer's
//! status decides.

use std::time::Duration;

use http::StatusCode;

use super::Fraction;
use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::http::ext_authz::v3 as pb;
use crate::pb::envoy::r#type::matcher::v3::ListStringMatcher;
use crate::route::{string_matcher, StringMatcher};

/// Envoy's default gRPC timeout for the check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// The validated filter config.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    /// The cluster of the authorization service (`grpc_service.envoy_grpc` or
    /// `http_service.server_uri`).
    pub cluster: String,
    /// `:authority` of the check calls (gRPC: the cluster name unless set; HTTP: the
    /// server URI's host).
    pub authority: String,
    pub timeout: Duration,
    /// `Some` for an HTTP authorization service, `None` for gRPC.
    pub http: Option<Box<HttpService>>,
    /// `with_request_body`: the check carries (up to a limit of) the request body.
    pub with_request_body: Option<BufferSettings>,
    /// On a failed check (error, timeout, no host): let the request through.
    pub failure_mode_allow: bool,
    /// With `failure_mode_allow`, mark such requests `x-envoy-auth-failure-mode-allowed`.
    pub failure_mode_allow_header_add: bool,
    /// The answer to a failed check otherwise (Envoy: 403).
    pub status_on_error: StatusCode,
    pub stat_prefix: String,
    /// Share of requests checked (100 % when unset).
    pub filter_enabled: Fraction,
    /// A request not checked because of `filter_enabled` is denied.
    pub deny_at_disable: bool,
}

/// `with_request_body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSettings {
    pub max_request_bytes: usize,
    /// A longer body is checked on its first `max_request_bytes` (else 413).
    pub allow_partial_message: bool,
    /// gRPC: the body goes as `raw_body` bytes rather than as a UTF-8 `body` string.
    pub pack_as_bytes: bool,
}

/// An HTTP authorization service: the check is a request to it (the client's method and
/// path, selected headers); a 200 allows, a 5xx or no answer is an error, anything else
/// denies with the service's answer.
#[derive(Debug, Clone)]
pub struct HttpService {
    /// What the check's path is: `path_prefix` before the client's path, or
    /// `path_override` instead of it.
    pub path: CheckPath,
    /// Client headers sent with the check, besides `Authorization`, `:method`, `:path`
    /// and `:authority` (always sent).
    pub allowed_headers: Vec<StringMatcher>,
    /// Headers set on every check.
    pub headers_to_add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// On 200: the service's headers set on the upstream request.
    pub upstream_headers: Vec<StringMatcher>,
    /// On 200: the service's headers appended to the upstream request.
    pub upstream_headers_to_append: Vec<StringMatcher>,
    /// On a denial: the service's headers sent to the client (unset: all but `Host`; set:
    /// these and `:status`, `Content-Length`, `WWW-Authenticate`, `Location`).
    pub client_headers: Option<Vec<StringMatcher>>,
    /// On 200: the service's headers added to the client's response.
    pub client_headers_on_success: Vec<StringMatcher>,
}

/// The path of an HTTP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckPath {
    Prefix(String),
    Override(String),
}

/// A route's override (`ExtAuthzPerRoute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzPerRoute {
    Disabled,
    /// `check_settings`.
    Check {
        /// Sent with the check.
        context_extensions: Vec<(String, String)>,
        /// The body is not read for this route's checks.
        disable_request_body_buffering: bool,
    },
}

impl TryFrom<&pb::ExtAuthz> for ExtAuthz {
    type Error = ValidationError;

    fn try_from(c: &pb::ExtAuthz) -> Result<Self> {
        use crate::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
        let (cluster, authority, timeout, http) = match c.services.as_ref() {
            Some(pb::ext_authz::Services::GrpcService(grpc)) => {
                let envoy = match grpc.target_specifier.as_ref() {
                    Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => e,
                    _ => {
                        return Err(ValidationError::required(
                            "grpc_service.envoy_grpc.cluster_name",
                        ))
                    }
                };
                let timeout = match grpc.timeout.as_ref() {
                    None => DEFAULT_TIMEOUT,
                    Some(d) => crate::util::duration(d, "grpc_service.timeout")?,
                };
                let authority = if envoy.authority.is_empty() {
                    envoy.cluster_name.clone()
                } else {
                    envoy.authority.clone()
                };
                (envoy.cluster_name.clone(), authority, timeout, None)
            }
            Some(pb::ext_authz::Services::HttpService(h)) => {
                let (cluster, authority, timeout, service) =
                    http_service(h).map_err(|e| e.within("http_service"))?;
                (cluster, authority, timeout, Some(Box::new(service)))
            }
            None => return Err(ValidationError::required("grpc_service")),
        };
        let with_request_body = c
            .with_request_body
            .as_ref()
            .map(|b| {
                if b.max_request_bytes == 0 {
                    return Err(ValidationError::new(
                        "with_request_body.max_request_bytes",
                        "must be greater than 0",
                    ));
                }
                Ok(BufferSettings {
                    max_request_bytes: b.max_request_bytes as usize,
                    allow_partial_message: b.allow_partial_message,
                    pack_as_bytes: b.pack_as_bytes,
                })
            })
            .transpose()?;
        let status_on_error = match c.status_on_error.as_ref() {
            None => StatusCode::FORBIDDEN,
            Some(s) => u16::try_from(s.code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    ValidationError::new("status_on_error.code", "not an HTTP status")
                })?,
        };
        Ok(Self {
            cluster,
            authority,
            timeout,
            http,
            with_request_body,
            failure_mode_allow: c.failure_mode_allow,
            failure_mode_allow_header_add: c.failure_mode_allow_header_add,
            status_on_error,
            stat_prefix: c.stat_prefix.clone(),
            filter_enabled: Fraction::runtime(c.filter_enabled.as_ref(), Fraction::ALWAYS),
            deny_at_disable: c
                .deny_at_disable
                .as_ref()
                .and_then(|d| d.default_value.as_ref())
                .is_some_and(|v| v.value),
        })
    }
}

impl TryFrom<&pb::ExtAuthzPerRoute> for ExtAuthzPerRoute {
    type Error = ValidationError;

    fn try_from(c: &pb::ExtAuthzPerRoute) -> Result<Self> {
        use pb::ext_authz_per_route::Override;
        match c.r#override.as_ref() {
            Some(Override::Disabled(true)) => Ok(Self::Disabled),
            Some(Override::Disabled(false)) => {
                Err(ValidationError::new("disabled", "must be true"))
            }
            Some(Override::CheckSettings(s)) => {
                let mut context_extensions: Vec<(String, String)> = s
                    .context_extensions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                context_extensions.sort();
                Ok(Self::Check {
                    context_extensions,
                    disable_request_body_buffering: s.disable_request_body_buffering,
                })
            }
            None => Err(ValidationError::required("disabled")),
        }
    }
}

fn string_matchers(list: Option<&ListStringMatcher>, field: &str) -> Result<Vec<StringMatcher>> {
    list.map_or(Ok(Vec::new()), |l| {
        l.patterns
            .iter()
            .enumerate()
            .map(|(i, m)| string_matcher(m).map_err(|e| e.within(format!("{field}.patterns[{i}]"))))
            .collect()
    })
}

/// `(cluster, authority, timeout, service)` of an `HttpService`.
fn http_service(h: &pb::HttpService) -> Result<(String, String, Duration, HttpService)> {
    use crate::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
    if h.retry_policy.is_some() {
        return Err(ValidationError::unsupported("retry_policy"));
    }
    let uri = h
        .server_uri
        .as_ref()
        .ok_or_else(|| ValidationError::required("server_uri"))?;
    let cluster = match uri.http_upstream_type.as_ref() {
        Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return Err(ValidationError::required("server_uri.cluster")),
    };
    let parsed: http::Uri = uri
        .uri
        .parse()
        .map_err(|_| ValidationError::new("server_uri.uri", "not a URI"))?;
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| ValidationError::new("server_uri.uri", "needs a host"))?;
    let timeout = uri
        .timeout
        .as_ref()
        .map(|d| crate::util::duration(d, "server_uri.timeout"))
        .transpose()?
        .ok_or_else(|| ValidationError::required("server_uri.timeout"))?;
    let path = match (h.path_prefix.is_empty(), h.path_override.is_empty()) {
        (_, true) => CheckPath::Prefix(h.path_prefix.clone()),
        (true, false) => CheckPath::Override(h.path_override.clone()),
        (false, false) => {
            return Err(ValidationError::new(
                "path_override",
                "only one of path_prefix and path_override may be set",
            ))
        }
    };
    for (field, value) in [
        ("path_prefix", &h.path_prefix),
        ("path_override", &h.path_override),
    ] {
        if http::HeaderValue::from_str(value).is_err() || value.contains(['\r', '\n']) {
            return Err(ValidationError::new(field, "not a valid path"));
        }
    }
    let request = h.authorization_request.clone().unwrap_or_default();
    let headers_to_add = request
        .headers_to_add
        .iter()
        .enumerate()
        .map(|(i, header)| {
            let at = format!("authorization_request.headers_to_add[{i}]");
            let name = http::HeaderName::from_bytes(header.key.to_ascii_lowercase().as_bytes())
                .map_err(|_| ValidationError::new(format!("{at}.key"), "not a header name"))?;
            if header.value.contains('%') {
                return Err(ValidationError::new(
                    format!("{at}.value"),
                    "command operators (%...%) are not supported",
                ));
            }
            let value = http::HeaderValue::from_str(&header.value)
                .map_err(|_| ValidationError::new(format!("{at}.value"), "not a header value"))?;
            Ok((name, value))
        })
        .collect::<Result<_>>()?;
    let response = h.authorization_response.clone().unwrap_or_default();
    if response.dynamic_metadata_from_headers.is_some() {
        return Err(ValidationError::unsupported(
            "authorization_response.dynamic_metadata_from_headers",
        ));
    }
    let service = HttpService {
        path,
        allowed_headers: string_matchers(
            request.allowed_headers.as_ref(),
            "authorization_request.allowed_headers",
        )?,
        headers_to_add,
        upstream_headers: string_matchers(
            response.allowed_upstream_headers.as_ref(),
            "authorization_response.allowed_upstream_headers",
        )?,
        upstream_headers_to_append: string_matchers(
            response.allowed_upstream_headers_to_append.as_ref(),
            "authorization_response.allowed_upstream_headers_to_append",
        )?,
        client_headers: response
            .allowed_client_headers
            .as_ref()
            .map(|l| string_matchers(Some(l), "authorization_response.allowed_client_headers"))
            .transpose()?,
        client_headers_on_success: string_matchers(
            response.allowed_client_headers_on_success.as_ref(),
            "authorization_response.allowed_client_headers_on_success",
        )?,
    };
    Ok((cluster, authority, timeout, service))
}
