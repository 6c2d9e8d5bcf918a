//! `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`: token buckets kept in
//! each proxy, one default bucket and one per configured descriptor. A descriptor entry
//! with an empty value is a wildcard: every distinct value gets its own bucket, at most
//! `max_dynamic_descriptors` of them (least recently used go first), which bounds the
//! memory an attacker rotating client addresses can make it use.

use std::time::Duration;

use http::StatusCode;

use super::Fraction;
use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::http::local_ratelimit::v3 as pb;
use crate::rate_limit::{policies, RateLimitPolicy};
use crate::route::{mutations, HeaderMutations};

/// Envoy's default `max_dynamic_descriptors`.
pub const DEFAULT_MAX_DYNAMIC_DESCRIPTORS: u32 = 20;
/// Envoy refuses faster refills.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// A token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// A descriptor with its own bucket.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// `(key, value)`; an empty value matches any value, one bucket per value.
    pub entries: Vec<(String, String)>,
    pub token_bucket: TokenBucket,
}

impl Descriptor {
    /// Whether any entry is a wildcard.
    pub fn is_dynamic(&self) -> bool {
        self.entries.iter().any(|(_, v)| v.is_empty())
    }
}

/// What to do with the virtual host's `rate_limits` (Envoy's `VhRateLimitsOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhRateLimits {
    /// Use them only when the route has none.
    Override,
    Include,
    Ignore,
}

/// The validated filter config.
#[derive(Debug, Clone)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    pub status: StatusCode,
    /// `None`: the default bucket never limits.
    pub token_bucket: Option<TokenBucket>,
    /// Share of requests the filter checks (Envoy: 0 % when unset).
    pub filter_enabled: Fraction,
    /// Share of checked requests actually refused when over the limit (0 % when unset).
    pub filter_enforced: Fraction,
    pub request_headers_when_not_enforced: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub descriptors: Vec<Descriptor>,
    pub stage: u32,
    pub per_connection: bool,
    pub x_ratelimit_headers: bool,
    pub vh_rate_limits: VhRateLimits,
    pub always_consume_default_token_bucket: bool,
    /// Descriptors from the filter's own `rate_limits` (instead of the route's).
    pub rate_limits: Vec<RateLimitPolicy>,
    pub max_dynamic_descriptors: u32,
}

fn bucket(b: &crate::pb::envoy::r#type::v3::TokenBucket, path: &str) -> Result<TokenBucket> {
    let fill_interval = b
        .fill_interval
        .as_ref()
        .map(|d| crate::util::duration(d, &format!("{path}.fill_interval")))
        .transpose()?
        .ok_or_else(|| ValidationError::required(format!("{path}.fill_interval")))?;
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(ValidationError::new(
            format!("{path}.fill_interval"),
            "must be at least 50ms",
        ));
    }
    let tokens_per_fill = b.tokens_per_fill.as_ref().map_or(1, |v| v.value);
    if tokens_per_fill == 0 {
        return Err(ValidationError::new(
            format!("{path}.tokens_per_fill"),
            "must be at least 1",
        ));
    }
    if b.max_tokens == 0 {
        return Err(ValidationError::new(
            format!("{path}.max_tokens"),
            "must be at least 1",
        ));
    }
    Ok(TokenBucket {
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

impl TryFrom<&pb::LocalRateLimit> for LocalRateLimit {
    type Error = ValidationError;

    fn try_from(c: &pb::LocalRateLimit) -> Result<Self> {
        if c.stat_prefix.is_empty() {
            return Err(ValidationError::required("stat_prefix"));
        }
        if c.local_cluster_rate_limit.is_some() {
            return Err(ValidationError::new(
                "local_cluster_rate_limit",
                "sharing a limit across a local cluster is not supported",
            ));
        }
        let status = match c.status.as_ref() {
            None => StatusCode::TOO_MANY_REQUESTS,
            Some(s) => u16::try_from(s.code)
                .ok()
                .filter(|c| *c >= 400)
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| ValidationError::new("status.code", "must be a 4xx or 5xx code"))?,
        };
        let token_bucket = c
            .token_bucket
            .as_ref()
            .map(|b| bucket(b, "token_bucket"))
            .transpose()?;
        let mut descriptors: Vec<Descriptor> = Vec::new();
        for (i, d) in c.descriptors.iter().enumerate() {
            let path = format!("descriptors[{i}]");
            if d.shadow_mode {
                return Err(ValidationError::new(
                    format!("{path}.shadow_mode"),
                    "shadow mode descriptors are not supported",
                ));
            }
            if d.entries.is_empty() {
                return Err(ValidationError::required(format!("{path}.entries")));
            }
            let entries: Vec<(String, String)> = d
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let token_bucket = d
                .token_bucket
                .as_ref()
                .ok_or_else(|| ValidationError::required(format!("{path}.token_bucket")))
                .and_then(|b| bucket(b, &format!("{path}.token_bucket")))?;
            if descriptors.iter().any(|o| o.entries == entries) {
                return Err(ValidationError::new(path, "duplicate descriptor"));
            }
            descriptors.push(Descriptor {
                entries,
                token_bucket,
            });
        }
        use crate::pb::envoy::extensions::common::ratelimit::v3::VhRateLimitsOptions as V;
        let vh_rate_limits = match V::try_from(c.vh_rate_limits) {
            Ok(V::Override) => VhRateLimits::Override,
            Ok(V::Include) => VhRateLimits::Include,
            Ok(V::Ignore) => VhRateLimits::Ignore,
            Err(_) => return Err(ValidationError::new("vh_rate_limits", "unknown value")),
        };
        Ok(Self {
            stat_prefix: c.stat_prefix.clone(),
            status,
            token_bucket,
            filter_enabled: Fraction::runtime(c.filter_enabled.as_ref(), Fraction::NEVER),
            filter_enforced: Fraction::runtime(c.filter_enforced.as_ref(), Fraction::NEVER),
            request_headers_when_not_enforced: mutations(
                &c.request_headers_to_add_when_not_enforced,
                &[],
                "request_headers_to_add_when_not_enforced",
                "",
            )?,
            response_headers: mutations(
                &c.response_headers_to_add,
                &[],
                "response_headers_to_add",
                "",
            )?,
            descriptors,
            stage: c.stage,
            per_connection: c.local_rate_limit_per_downstream_connection,
            x_ratelimit_headers: c.enable_x_ratelimit_headers == 1,
            vh_rate_limits,
            always_consume_default_token_bucket: c
                .always_consume_default_token_bucket
                .as_ref()
                .is_none_or(|v| v.value),
            rate_limits: policies(&c.rate_limits, "rate_limits")?,
            max_dynamic_descriptors: c
                .max_dynamic_descriptors
                .as_ref()
                .map_or(DEFAULT_MAX_DYNAMIC_DESCRIPTORS, |v| v.value),
        })
    }
}
