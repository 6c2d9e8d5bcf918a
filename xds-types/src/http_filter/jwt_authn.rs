//! `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`: JWTs verified against
//! providers (issuer, audiences, keys from a local JWKS or one fetched through a cluster),
//! with requirements chosen by route rules or by a route's `requirement_name`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use crate::route::{data_source, RouteMatch};

/// Envoy's default JWKS cache duration.
pub const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(300);
/// Envoy's default allowed clock skew.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u32 = 60;

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum Jwks {
    /// The JWKS document itself.
    Local(String),
    Remote {
        /// The URI's path and query (the request goes to `cluster`).
        path: String,
        /// `Host` of the fetch.
        authority: String,
        cluster: String,
        timeout: Duration,
        cache_duration: Duration,
    },
}

/// Where a token is looked for.
#[derive(Debug, Clone)]
pub struct TokenHeader {
    pub name: http::HeaderName,
    pub value_prefix: String,
}

/// One provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// `None`: any issuer.
    pub issuer: Option<String>,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub require_expiration: bool,
    /// Keep the token in the request sent upstream.
    pub forward: bool,
    pub from_headers: Vec<TokenHeader>,
    pub from_params: Vec<String>,
    /// Header that carries the payload (base64url) upstream.
    pub forward_payload_header: Option<http::HeaderName>,
    /// `(header, claim)`: claims copied into request headers; `a.b` reaches nested ones.
    pub claim_to_headers: Vec<(http::HeaderName, String)>,
    pub clock_skew: Duration,
    pub jwks: Jwks,
}

/// What a request must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Provider {
        name: String,
        audiences: Option<Vec<String>>,
    },
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Missing is fine; a token that is present must verify.
    AllowMissing,
    /// Missing or failing are both fine.
    AllowMissingOrFailed,
}

/// A route rule: the first whose match accepts the request decides its requirement.
#[derive(Debug, Clone)]
pub struct Rule {
    pub matcher: RouteMatch,
    /// `None`: nothing required.
    pub requires: Option<Requirement>,
}

/// The validated filter config.
#[derive(Debug, Clone)]
pub struct JwtAuthn {
    pub providers: BTreeMap<String, Provider>,
    pub rules: Vec<Rule>,
    pub requirement_map: BTreeMap<String, Requirement>,
    /// CORS preflights pass without a token.
    pub bypass_cors_preflight: bool,
    pub stat_prefix: String,
}

/// A route's override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtPerRoute {
    Disabled,
    RequirementName(String),
}

fn header_name(name: &str, field: &str) -> Result<http::HeaderName> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ValidationError::new(field, "not a valid header name"))
}

fn provider(p: &pb::JwtProvider) -> Result<Provider> {
    use pb::jwt_provider::JwksSourceSpecifier as S;
    for (set, field) in [
        (p.subjects.is_some(), "subjects"),
        (p.max_lifetime.is_some(), "max_lifetime"),
        (!p.from_cookies.is_empty(), "from_cookies"),
        (!p.payload_in_metadata.is_empty(), "payload_in_metadata"),
        (!p.header_in_metadata.is_empty(), "header_in_metadata"),
        (
            !p.failed_status_in_metadata.is_empty(),
            "failed_status_in_metadata",
        ),
        (p.pad_forward_payload_header, "pad_forward_payload_header"),
    ] {
        if set {
            return Err(ValidationError::unsupported(field));
        }
    }
    let jwks = match p.jwks_source_specifier.as_ref() {
        Some(S::LocalJwks(d)) => Jwks::Local(
            String::from_utf8(data_source(d).map_err(|e| e.within("local_jwks"))?)
                .map_err(|_| ValidationError::new("local_jwks", "not UTF-8"))?,
        ),
        Some(S::RemoteJwks(r)) => {
            use crate::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
            if r.async_fetch.is_some() || r.retry_policy.is_some() {
                return Err(ValidationError::new(
                    "remote_jwks",
                    "async_fetch and retry_policy are not supported",
                ));
            }
            let uri = r
                .http_uri
                .as_ref()
                .ok_or_else(|| ValidationError::required("remote_jwks.http_uri"))?;
            let parsed: http::Uri = uri
                .uri
                .parse()
                .map_err(|_| ValidationError::new("remote_jwks.http_uri.uri", "not a URI"))?;
            let cluster = match uri.http_upstream_type.as_ref() {
                Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
                _ => return Err(ValidationError::required("remote_jwks.http_uri.cluster")),
            };
            Jwks::Remote {
                path: parsed
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
                authority: parsed
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .ok_or_else(|| {
                        ValidationError::new("remote_jwks.http_uri.uri", "needs a host")
                    })?,
                cluster,
                timeout: uri
                    .timeout
                    .as_ref()
                    .map(|d| crate::util::duration(d, "remote_jwks.http_uri.timeout"))
                    .transpose()?
                    .unwrap_or(Duration::from_secs(1)),
                cache_duration: r
                    .cache_duration
                    .as_ref()
                    .map(|d| crate::util::duration(d, "remote_jwks.cache_duration"))
                    .transpose()?
                    .unwrap_or(DEFAULT_CACHE_DURATION),
            }
        }
        None => return Err(ValidationError::required("local_jwks")),
    };
    Ok(Provider {
        issuer: (!p.issuer.is_empty()).then(|| p.issuer.clone()),
        audiences: p.audiences.clone(),
        require_expiration: p.require_expiration,
        forward: p.forward,
        from_headers: p
            .from_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Ok(TokenHeader {
                    name: header_name(&h.name, &format!("from_headers[{i}].name"))?,
                    value_prefix: h.value_prefix.clone(),
                })
            })
            .collect::<Result<_>>()?,
        from_params: p.from_params.clone(),
        forward_payload_header: (!p.forward_payload_header.is_empty())
            .then(|| header_name(&p.forward_payload_header, "forward_payload_header"))
            .transpose()?,
        claim_to_headers: p
            .claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok((
                    header_name(
                        &c.header_name,
                        &format!("claim_to_headers[{i}].header_name"),
                    )?,
                    c.claim_name.clone(),
                ))
            })
            .collect::<Result<_>>()?,
        clock_skew: Duration::from_secs(u64::from(if p.clock_skew_seconds == 0 {
            DEFAULT_CLOCK_SKEW_SECONDS
        } else {
            p.clock_skew_seconds
        })),
        jwks,
    })
}

fn requirement(
    r: &pb::JwtRequirement,
    providers: &BTreeMap<String, Provider>,
) -> Result<Requirement> {
    use pb::jwt_requirement::RequiresType as R;
    let known = |name: &str, field: &str| -> Result<String> {
        if providers.contains_key(name) {
            Ok(name.to_string())
        } else {
            Err(ValidationError::new(
                field,
                format!("no provider named {name:?}"),
            ))
        }
    };
    let list = |items: &[pb::JwtRequirement], field: &str| -> Result<Vec<Requirement>> {
        items
            .iter()
            .enumerate()
            .map(|(i, r)| {
                requirement(r, providers)
                    .map_err(|e| e.within(format!("{field}.requirements[{i}]")))
            })
            .collect()
    };
    Ok(match r.requires_type.as_ref() {
        Some(R::ProviderName(n)) => Requirement::Provider {
            name: known(n, "provider_name")?,
            audiences: None,
        },
        Some(R::ProviderAndAudiences(p)) => Requirement::Provider {
            name: known(&p.provider_name, "provider_and_audiences.provider_name")?,
            audiences: Some(p.audiences.clone()),
        },
        Some(R::RequiresAny(l)) => Requirement::Any(list(&l.requirements, "requires_any")?),
        Some(R::RequiresAll(l)) => Requirement::All(list(&l.requirements, "requires_all")?),
        Some(R::AllowMissing(_)) => Requirement::AllowMissing,
        Some(R::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(_) => return Err(ValidationError::unsupported("requires_type")),
        None => return Err(ValidationError::required("provider_name")),
    })
}

impl TryFrom<&pb::JwtAuthentication> for JwtAuthn {
    type Error = ValidationError;

    fn try_from(c: &pb::JwtAuthentication) -> Result<Self> {
        if c.filter_state_rules.is_some() {
            return Err(ValidationError::unsupported("filter_state_rules"));
        }
        let providers = c
            .providers
            .iter()
            .map(|(name, p)| {
                Ok((
                    name.clone(),
                    provider(p).map_err(|e| e.within(format!("providers[{name:?}]")))?,
                ))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let requirement_map = c
            .requirement_map
            .iter()
            .map(|(name, r)| {
                Ok((
                    name.clone(),
                    requirement(r, &providers)
                        .map_err(|e| e.within(format!("requirement_map[{name:?}]")))?,
                ))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let rules = c
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                use pb::requirement_rule::RequirementType as T;
                let path = format!("rules[{i}]");
                let matcher = r
                    .r#match
                    .as_ref()
                    .ok_or_else(|| ValidationError::required(format!("{path}.match")))
                    .and_then(|m| {
                        RouteMatch::try_from(m).map_err(|e| e.within(format!("{path}.match")))
                    })?;
                let requires = match r.requirement_type.as_ref() {
                    None => None,
                    Some(T::Requires(req)) => Some(
                        requirement(req, &providers)
                            .map_err(|e| e.within(format!("{path}.requires")))?,
                    ),
                    Some(T::RequirementName(n)) => {
                        Some(requirement_map.get(n).cloned().ok_or_else(|| {
                            ValidationError::new(
                                format!("{path}.requirement_name"),
                                format!("no requirement named {n:?}"),
                            )
                        })?)
                    }
                };
                Ok(Rule { matcher, requires })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            providers,
            rules,
            requirement_map,
            bypass_cors_preflight: c.bypass_cors_preflight,
            stat_prefix: c.stat_prefix.clone(),
        })
    }
}

impl TryFrom<&pb::PerRouteConfig> for JwtPerRoute {
    type Error = ValidationError;

    fn try_from(c: &pb::PerRouteConfig) -> Result<Self> {
        use pb::per_route_config::RequirementSpecifier as S;
        match c.requirement_specifier.as_ref() {
            Some(S::Disabled(true)) => Ok(Self::Disabled),
            Some(S::Disabled(false)) => Err(ValidationError::new("disabled", "must be true")),
            Some(S::RequirementName(n)) => Ok(Self::RequirementName(n.clone())),
            None => Err(ValidationError::required("requirement_name")),
        }
    }
}
