//! `envoy.extensions.filters.http.cors.v3.CorsPolicy` (per route or virtual host), and the
//! deprecated `cors` fields of `VirtualHost` and `RouteAction`, which carry the same
//! policy. Unset fields stay unset: the filter takes each one from the most specific
//! policy that sets it, as Envoy does.

use super::Fraction;
use crate::error::{Result, ValidationError};
use crate::route::{string_matcher, StringMatcher};

/// One CORS policy.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: String,
    pub allow_credentials: Option<bool>,
    pub allow_private_network_access: Option<bool>,
    pub forward_not_matching_preflights: Option<bool>,
    /// Share of requests the policy is enforced on (Envoy: 100 % when unset).
    pub filter_enabled: Fraction,
    /// Share of requests evaluated for stats only; `None` when unset.
    pub shadow_enabled: Option<Fraction>,
}

macro_rules! cors_from {
    ($ty:ty, |$p:ident| $enabled:expr) => {
        impl TryFrom<&$ty> for CorsPolicy {
            type Error = ValidationError;

            fn try_from($p: &$ty) -> Result<Self> {
                let p = $p;
                Ok(Self {
                    allow_origins: p
                        .allow_origin_string_match
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            string_matcher(m)
                                .map_err(|e| e.within(format!("allow_origin_string_match[{i}]")))
                        })
                        .collect::<Result<_>>()?,
                    allow_methods: p.allow_methods.clone(),
                    allow_headers: p.allow_headers.clone(),
                    expose_headers: p.expose_headers.clone(),
                    max_age: p.max_age.clone(),
                    allow_credentials: p.allow_credentials.as_ref().map(|v| v.value),
                    allow_private_network_access: p
                        .allow_private_network_access
                        .as_ref()
                        .map(|v| v.value),
                    forward_not_matching_preflights: p
                        .forward_not_matching_preflights
                        .as_ref()
                        .map(|v| v.value),
                    filter_enabled: Fraction::runtime($enabled, Fraction::ALWAYS),
                    shadow_enabled: p
                        .shadow_enabled
                        .as_ref()
                        .map(|s| Fraction::runtime(Some(s), Fraction::NEVER)),
                })
            }
        }
    };
}

cors_from!(
    crate::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy,
    |p| p.filter_enabled.as_ref()
);
cors_from!(
    crate::pb::envoy::config::route::v3::CorsPolicy,
    |p| match p.enabled_specifier.as_ref() {
        Some(
            crate::pb::envoy::config::route::v3::cors_policy::EnabledSpecifier::FilterEnabled(f),
        ) => {
            Some(f)
        }
        None => None,
    }
);
