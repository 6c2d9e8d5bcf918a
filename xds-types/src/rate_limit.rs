//! Route `rate_limits`: the actions that turn a request into rate limit descriptors, for
//! the local (and later the global) rate limit filter.

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::route::v3 as pb;
use crate::route::HeaderMatcher;

/// One `RateLimit` entry: its actions together make one descriptor.
#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    pub stage: u32,
    pub actions: Vec<RateLimitAction>,
}

/// A descriptor entry source.
#[derive(Debug, Clone)]
pub enum RateLimitAction {
    /// `("remote_address", client IP)`.
    RemoteAddress,
    /// `("destination_cluster", the route's cluster)`.
    DestinationCluster,
    /// `(descriptor_key, the header's value)`; a missing header drops the descriptor,
    /// or only this entry with `skip_if_absent`.
    RequestHeader {
        header: http::HeaderName,
        key: String,
        skip_if_absent: bool,
    },
    /// `(descriptor_key or "generic_key", value)`.
    GenericKey { key: String, value: String },
    /// `(descriptor_key or "header_match", value)` when the headers match as expected.
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
}

impl TryFrom<&pb::RateLimit> for RateLimitPolicy {
    type Error = ValidationError;

    fn try_from(r: &pb::RateLimit) -> Result<Self> {
        if !r.disable_key.is_empty() {
            return Err(ValidationError::new(
                "disable_key",
                "runtime keys are not supported",
            ));
        }
        if r.actions.is_empty() {
            return Err(ValidationError::required("actions"));
        }
        let actions = r
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| action(a).map_err(|e| e.within(format!("actions[{i}]"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            stage: r.stage.as_ref().map_or(0, |s| s.value),
            actions,
        })
    }
}

fn action(a: &pb::rate_limit::Action) -> Result<RateLimitAction> {
    use pb::rate_limit::action::ActionSpecifier as A;
    Ok(match a.action_specifier.as_ref() {
        Some(A::RemoteAddress(_)) => RateLimitAction::RemoteAddress,
        Some(A::DestinationCluster(_)) => RateLimitAction::DestinationCluster,
        Some(A::RequestHeaders(h)) => RateLimitAction::RequestHeader {
            header: http::HeaderName::from_bytes(h.header_name.as_bytes()).map_err(|_| {
                ValidationError::new("request_headers.header_name", "not a valid header name")
            })?,
            key: if h.descriptor_key.is_empty() {
                return Err(ValidationError::required("request_headers.descriptor_key"));
            } else {
                h.descriptor_key.clone()
            },
            skip_if_absent: h.skip_if_absent,
        },
        Some(A::GenericKey(g)) => {
            if g.descriptor_value.is_empty() {
                return Err(ValidationError::required("generic_key.descriptor_value"));
            }
            RateLimitAction::GenericKey {
                key: non_empty_or(&g.descriptor_key, "generic_key"),
                value: g.descriptor_value.clone(),
            }
        }
        Some(A::HeaderValueMatch(m)) => {
            if m.descriptor_value.is_empty() {
                return Err(ValidationError::required("header_value_match.descriptor_value"));
            }
            RateLimitAction::HeaderValueMatch {
                key: non_empty_or(&m.descriptor_key, "header_match"),
                value: m.descriptor_value.clone(),
                expect_match: m.expect_match.as_ref().is_none_or(|v| v.value),
                headers: m
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        HeaderMatcher::try_from(h)
                            .map_err(|e| e.within(format!("header_value_match.headers[{i}]")))
                    })
                    .collect::<Result<_>>()?,
            }
        }
        Some(_) => {
            return Err(ValidationError::new(
                "",
                "only remote_address, destination_cluster, request_headers, generic_key and header_value_match actions are supported",
            ))
        }
        None => return Err(ValidationError::required("action_specifier")),
    })
}

fn non_empty_or(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

/// Converts a list of `rate_limits`, naming the entry on error.
pub fn policies(list: &[pb::RateLimit], path: &str) -> Result<Vec<RateLimitPolicy>> {
    list.iter()
        .enumerate()
        .map(|(i, r)| RateLimitPolicy::try_from(r).map_err(|e| e.within(format!("{path}[{i}]"))))
        .collect()
}
