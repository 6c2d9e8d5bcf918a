//! `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz` over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`): every request is checked by an
//! authorization service in a cluster before it goes on.

use std::time::Duration;

use http::StatusCode;

use super::Fraction;
use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::http::ext_authz::v3 as pb;

/// Envoy's default gRPC timeout for the check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// The validated filter config.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    /// The cluster of the authorization service (`grpc_service.envoy_grpc`).
    pub cluster: String,
    /// `:authority` of the check calls (the cluster name unless set).
    pub authority: String,
    pub timeout: Duration,
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

/// A route's override (`ExtAuthzPerRoute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzPerRoute {
    Disabled,
    /// `check_settings.context_extensions`, sent with the check.
    ContextExtensions(Vec<(String, String)>),
}

impl TryFrom<&pb::ExtAuthz> for ExtAuthz {
    type Error = ValidationError;

    fn try_from(c: &pb::ExtAuthz) -> Result<Self> {
        use crate::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
        let grpc = match c.services.as_ref() {
            Some(pb::ext_authz::Services::GrpcService(g)) => g,
            Some(pb::ext_authz::Services::HttpService(_)) => {
                return Err(ValidationError::new(
                    "http_service",
                    "only the gRPC authorization service is supported",
                ))
            }
            None => return Err(ValidationError::required("grpc_service")),
        };
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
            cluster: envoy.cluster_name.clone(),
            authority: if envoy.authority.is_empty() {
                envoy.cluster_name.clone()
            } else {
                envoy.authority.clone()
            },
            timeout,
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
                if s.disable_request_body_buffering {
                    return Err(ValidationError::new(
                        "check_settings",
                        "only context_extensions may be set per route",
                    ));
                }
                let mut extensions: Vec<(String, String)> = s
                    .context_extensions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                extensions.sort();
                Ok(Self::ContextExtensions(extensions))
            }
            None => Err(ValidationError::required("disabled")),
        }
    }
}
