//! `envoy.extensions.filters.http.ratelimit.v3.RateLimit`: global rate limiting against a
//! rate limit service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) in a
//! cluster, with the descriptors of the route's `rate_limits` at the filter's stage.

use std::time::Duration;

use http::StatusCode;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::http::ratelimit::v3 as pb;
use crate::rate_limit::{policies, RateLimitPolicy};
use crate::route::{mutations, HeaderMutations};

/// Envoy's default deadline for the rate limit call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

/// The validated filter config.
#[derive(Debug, Clone)]
pub struct GlobalRateLimit {
    pub domain: String,
    pub stage: u32,
    /// The rate limit service's cluster (`rate_limit_service.grpc_service.envoy_grpc`).
    pub cluster: String,
    pub timeout: Duration,
    /// On a failed call, refuse the request (`status_on_error`) instead of letting it on.
    pub failure_mode_deny: bool,
    pub x_ratelimit_headers: bool,
    pub x_envoy_ratelimited_header: bool,
    pub rate_limited_status: StatusCode,
    pub status_on_error: StatusCode,
    /// Added to a 429 this filter answers.
    pub response_headers: HeaderMutations,
    /// Descriptors from these actions instead of the route's.
    pub rate_limits: Vec<RateLimitPolicy>,
}

fn status(
    s: Option<&crate::pb::envoy::r#type::v3::HttpStatus>,
    default: StatusCode,
    field: &str,
) -> Result<StatusCode> {
    match s {
        None => Ok(default),
        Some(s) => u16::try_from(s.code)
            .ok()
            .filter(|c| *c >= 400)
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| {
                ValidationError::new(format!("{field}.code"), "must be a 4xx or 5xx code")
            }),
    }
}

impl TryFrom<&pb::RateLimit> for GlobalRateLimit {
    type Error = ValidationError;

    fn try_from(c: &pb::RateLimit) -> Result<Self> {
        use crate::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
        if c.domain.is_empty() {
            return Err(ValidationError::required("domain"));
        }
        if !matches!(c.request_type.as_str(), "" | "both") {
            return Err(ValidationError::new(
                "request_type",
                "only \"both\" (the default) is supported",
            ));
        }
        let grpc = c
            .rate_limit_service
            .as_ref()
            .and_then(|s| s.grpc_service.as_ref())
            .ok_or_else(|| ValidationError::required("rate_limit_service.grpc_service"))?;
        let cluster = match grpc.target_specifier.as_ref() {
            Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => {
                e.cluster_name.clone()
            }
            _ => {
                return Err(ValidationError::required(
                    "rate_limit_service.grpc_service.envoy_grpc.cluster_name",
                ))
            }
        };
        let timeout = match c.timeout.as_ref() {
            None => DEFAULT_TIMEOUT,
            Some(d) => crate::util::duration(d, "timeout")?,
        };
        Ok(Self {
            domain: c.domain.clone(),
            stage: c.stage,
            cluster,
            timeout,
            failure_mode_deny: c.failure_mode_deny,
            x_ratelimit_headers: c.enable_x_ratelimit_headers == 1,
            x_envoy_ratelimited_header: !c.disable_x_envoy_ratelimited_header,
            rate_limited_status: status(
                c.rate_limited_status.as_ref(),
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited_status",
            )?,
            status_on_error: status(
                c.status_on_error.as_ref(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "status_on_error",
            )?,
            response_headers: mutations(
                &c.response_headers_to_add,
                &[],
                "response_headers_to_add",
                "",
            )?,
            rate_limits: policies(&c.rate_limits, "rate_limits")?,
        })
    }
}
