//! Validated HTTP filters: the connection manager's `http_filters` list and the per-route
//! `typed_per_filter_config` overrides, for the filters Sluice implements.
//!
//! A filter is known by the type of its `typed_config`, as in Envoy; its `name` is what
//! per-route overrides refer to. The router is the terminal filter and is not part of
//! [`HttpFilters::filters`].

use std::collections::{BTreeMap, HashMap};

use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use crate::pb::google::protobuf::Any;
use crate::type_urls;

pub mod basic_auth;
pub mod cache;
pub mod compressor;
pub mod cors;
pub mod decompressor;
pub mod ext_authz;
pub mod fault;
pub mod file_server;
pub mod header_mutation;
pub mod jwt_authn;
pub mod local_ratelimit;
pub mod ratelimit;
pub mod rbac;

pub use basic_auth::BasicAuth;
pub use cache::Cache;
pub use compressor::{Compressor, CompressorPerRoute};
pub use cors::CorsPolicy;
pub use decompressor::Decompressor;
pub use ext_authz::{ExtAuthz, ExtAuthzPerRoute};
pub use fault::Fault;
pub use file_server::FileServer;
pub use header_mutation::HeaderMutationConfig;
pub use jwt_authn::{JwtAuthn, JwtPerRoute};
pub use local_ratelimit::LocalRateLimit;
pub use ratelimit::GlobalRateLimit;
pub use rbac::Rbac;

/// The filters in front of the router, in order, and the router's own settings.
#[derive(Debug, Clone, Default)]
pub struct HttpFilters {
    pub filters: Vec<HttpFilter>,
    pub router: RouterConfig,
}

/// `envoy.extensions.filters.http.router.v3.Router`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouterConfig {
    /// Leaves out the `x-envoy-*` headers the router adds.
    pub suppress_envoy_headers: bool,
}

/// One configured HTTP filter.
#[derive(Debug, Clone)]
pub struct HttpFilter {
    /// The name per-route configs refer to.
    pub name: String,
    /// Off unless a route or virtual host enables it with a per-filter config.
    pub disabled: bool,
    pub config: FilterConfig,
}

/// A filter's listener-level configuration.
#[derive(Debug, Clone)]
pub enum FilterConfig {
    /// `envoy.filters.http.cors`: its policies come from the routes.
    Cors,
    LocalRateLimit(Box<LocalRateLimit>),
    BasicAuth(BasicAuth),
    Rbac(Box<Rbac>),
    Fault(Box<Fault>),
    ExtAuthz(Box<ExtAuthz>),
    RateLimit(Box<GlobalRateLimit>),
    JwtAuthn(Box<JwtAuthn>),
    HeaderMutation(Box<HeaderMutationConfig>),
    /// `envoy.filters.http.buffer`: the whole request body is read before the request goes
    /// on; a longer one than this many bytes is answered 413.
    Buffer {
        max_request_bytes: u32,
    },
    HealthCheck(Box<HealthCheckFilter>),
    Compressor(Box<Compressor>),
    Decompressor(Box<Decompressor>),
    FileServer(Box<FileServer>),
    Cache(Box<Cache>),
    /// `envoy.filters.http.grpc_web`: gRPC-Web (binary or base64 text) from browsers
    /// becomes gRPC upstream, and the answer gRPC-Web again (trailers in the body).
    GrpcWeb,
}

/// `envoy.filters.http.health_check`: which requests are health checks, and whether the
/// proxy answers them itself (from its own health-check state and its clusters') or
/// passes them to the upstream.
#[derive(Debug, Clone)]
pub struct HealthCheckFilter {
    pub pass_through_mode: bool,
    /// Pass-through mode: an upstream's answer is reused for this long.
    pub cache_time: Option<std::time::Duration>,
    /// Answering mode: 503 unless each cluster has at least this percentage of its hosts
    /// healthy (sorted by cluster name).
    pub cluster_min_healthy_percentages: Vec<(String, f64)>,
    /// A request is a health check when all match.
    pub headers: Vec<crate::route::HeaderMatcher>,
}

/// A per-route, per-virtual-host or per-route-table override of one filter.
#[derive(Debug, Clone)]
pub enum PerFilterConfig {
    /// `FilterConfig { disabled: true }`: the filter does not run here.
    Disabled,
    Cors(Box<CorsPolicy>),
    LocalRateLimit(Box<LocalRateLimit>),
    /// Replaces the filter's users.
    BasicAuth(basic_auth::Users),
    /// `None`: no policy, every request is allowed.
    Rbac(Option<Box<Rbac>>),
    Fault(Box<Fault>),
    ExtAuthz(ExtAuthzPerRoute),
    JwtAuthn(JwtPerRoute),
    HeaderMutation(Box<header_mutation::Mutations>),
    /// `BufferPerRoute.buffer`: the route's own limit (`disabled` is [`Self::Disabled`]).
    Buffer {
        max_request_bytes: u32,
    },
    Compressor(Box<CompressorPerRoute>),
    /// The file server's config for this route.
    FileServer(Box<FileServer>),
}

/// Overrides keyed by filter name.
pub type PerFilterConfigs = BTreeMap<String, PerFilterConfig>;

/// Type URLs of the HTTP filters Sluice knows, with their extension names for messages.
const FILTERS: &[(&str, &str)] = &[
    (type_urls::ROUTER, "envoy.filters.http.router"),
    (type_urls::CORS, "envoy.filters.http.cors"),
    (
        type_urls::LOCAL_RATE_LIMIT,
        "envoy.filters.http.local_ratelimit",
    ),
    (type_urls::BASIC_AUTH, "envoy.filters.http.basic_auth"),
    (type_urls::RBAC, "envoy.filters.http.rbac"),
    (type_urls::FAULT, "envoy.filters.http.fault"),
    (type_urls::EXT_AUTHZ, "envoy.filters.http.ext_authz"),
    (type_urls::GLOBAL_RATE_LIMIT, "envoy.filters.http.ratelimit"),
    (type_urls::JWT_AUTHN, "envoy.filters.http.jwt_authn"),
    (
        type_urls::HEADER_MUTATION,
        "envoy.filters.http.header_mutation",
    ),
    (type_urls::BUFFER, "envoy.filters.http.buffer"),
    (
        type_urls::HEALTH_CHECK_FILTER,
        "envoy.filters.http.health_check",
    ),
    (type_urls::COMPRESSOR, "envoy.filters.http.compressor"),
    (type_urls::DECOMPRESSOR, "envoy.filters.http.decompressor"),
    (type_urls::FILE_SERVER, "sluice.filters.http.file_server"),
    (type_urls::CACHE, "envoy.filters.http.cache"),
    (type_urls::GRPC_WEB, "envoy.filters.http.grpc_web"),
];

/// Whether `type_url` is the config of an HTTP filter Sluice implements (the field check
/// skips optional filters that are not).
pub fn is_known_filter(type_url: &str) -> bool {
    FILTERS.iter().any(|(url, _)| *url == type_url)
        || type_url == type_urls::ROUTE_FILTER_CONFIG
        || PER_ROUTE_TYPES.contains(&type_url)
}

const PER_ROUTE_TYPES: &[&str] = &[
    type_urls::CORS_POLICY,
    type_urls::BASIC_AUTH_PER_ROUTE,
    type_urls::RBAC_PER_ROUTE,
    type_urls::EXT_AUTHZ_PER_ROUTE,
    type_urls::JWT_PER_ROUTE,
    type_urls::HEADER_MUTATION_PER_ROUTE,
    type_urls::BUFFER_PER_ROUTE,
    type_urls::COMPRESSOR_PER_ROUTE,
    type_urls::FILE_SERVER_PER_ROUTE,
];

/// The error for an extension Sluice does not implement: its name in the config and its
/// message type, so an operator can look both up in Envoy's docs.
pub(crate) fn unsupported_type(path: &str, name: &str, type_url: &str) -> ValidationError {
    let message = type_urls::message_name(type_url);
    ValidationError::new(
        path,
        format!("{name} ({message}) is not supported by sluice"),
    )
}

impl HttpFilters {
    /// Converts the connection manager's list: the router last, filters before it,
    /// unknown optional filters skipped (the caller logs [`HttpFilters::skipped`]).
    pub fn from_proto(list: &[hcm_pb::HttpFilter]) -> Result<(Self, Vec<String>)> {
        use hcm_pb::http_filter::ConfigType;
        if list.is_empty() {
            return Err(ValidationError::new(
                "http_filters",
                "the router filter is required",
            ));
        }
        let mut filters = Vec::new();
        let mut router = RouterConfig::default();
        let mut skipped = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, f) in list.iter().enumerate() {
            let path = format!("http_filters[{i}]");
            let last = i + 1 == list.len();
            let any = match f.config_type.as_ref() {
                Some(ConfigType::TypedConfig(any)) => any,
                Some(_) => {
                    return Err(ValidationError::new(
                        format!("{path}.config_discovery"),
                        "filter config discovery is not supported",
                    ))
                }
                None => return Err(ValidationError::required(format!("{path}.typed_config"))),
            };
            if !names.insert(f.name.as_str()) {
                return Err(ValidationError::new(
                    format!("{path}.name"),
                    format!("filter name {:?} appears twice", f.name),
                ));
            }
            if any.type_url == type_urls::ROUTER {
                if !last {
                    return Err(ValidationError::new(
                        path,
                        "the router filter must be the last filter",
                    ));
                }
                let r: crate::pb::envoy::extensions::filters::http::router::v3::Router =
                    crate::util::unpack_any(
                        any,
                        type_urls::ROUTER,
                        &format!("{path}.typed_config"),
                    )?;
                router.suppress_envoy_headers = r.suppress_envoy_headers;
                continue;
            }
            if last {
                return Err(ValidationError::new(
                    path,
                    "the last filter must be the router (envoy.filters.http.router)",
                ));
            }
            let typed_path = format!("{path}.typed_config");
            let config = match filter_config(any, &typed_path) {
                Ok(Some(c)) => c,
                Ok(None) if f.is_optional => {
                    skipped.push(f.name.clone());
                    continue;
                }
                Ok(None) => return Err(unsupported_type(&path, &f.name, &any.type_url)),
                Err(e) => return Err(e),
            };
            filters.push(HttpFilter {
                name: f.name.clone(),
                disabled: f.disabled,
                config,
            });
        }
        Ok((Self { filters, router }, skipped))
    }
}

/// A listener-level filter config; `None` for a type Sluice does not implement.
fn filter_config(any: &Any, path: &str) -> Result<Option<FilterConfig>> {
    use crate::util::unpack_any;
    Ok(Some(match any.type_url.as_str() {
        type_urls::CORS => {
            let _: crate::pb::envoy::extensions::filters::http::cors::v3::Cors =
                unpack_any(any, type_urls::CORS, path)?;
            FilterConfig::Cors
        }
        type_urls::LOCAL_RATE_LIMIT => FilterConfig::LocalRateLimit(Box::new(
            LocalRateLimit::try_from(&unpack_any(any, type_urls::LOCAL_RATE_LIMIT, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::BASIC_AUTH => FilterConfig::BasicAuth(
            BasicAuth::try_from(&unpack_any(any, type_urls::BASIC_AUTH, path)?)
                .map_err(|e| e.within(path))?,
        ),
        type_urls::RBAC => FilterConfig::Rbac(Box::new(
            Rbac::try_from(&unpack_any(any, type_urls::RBAC, path)?).map_err(|e| e.within(path))?,
        )),
        type_urls::FAULT => FilterConfig::Fault(Box::new(
            Fault::try_from(&unpack_any(any, type_urls::FAULT, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::EXT_AUTHZ => FilterConfig::ExtAuthz(Box::new(
            ExtAuthz::try_from(&unpack_any(any, type_urls::EXT_AUTHZ, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::GLOBAL_RATE_LIMIT => FilterConfig::RateLimit(Box::new(
            GlobalRateLimit::try_from(&unpack_any(any, type_urls::GLOBAL_RATE_LIMIT, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::JWT_AUTHN => FilterConfig::JwtAuthn(Box::new(
            JwtAuthn::try_from(&unpack_any(any, type_urls::JWT_AUTHN, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::HEADER_MUTATION => FilterConfig::HeaderMutation(Box::new(
            HeaderMutationConfig::try_from(&unpack_any(any, type_urls::HEADER_MUTATION, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::HEALTH_CHECK_FILTER => {
            let h: crate::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck =
                unpack_any(any, type_urls::HEALTH_CHECK_FILTER, path)?;
            FilterConfig::HealthCheck(Box::new(
                HealthCheckFilter::try_from(&h).map_err(|e| e.within(path))?,
            ))
        }
        type_urls::COMPRESSOR => FilterConfig::Compressor(Box::new(
            Compressor::try_from(&unpack_any(any, type_urls::COMPRESSOR, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::DECOMPRESSOR => FilterConfig::Decompressor(Box::new(
            Decompressor::try_from(&unpack_any(any, type_urls::DECOMPRESSOR, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::FILE_SERVER => {
            let f: file_server::pb::FileServer = unpack_any(any, type_urls::FILE_SERVER, path)?;
            FilterConfig::FileServer(Box::new(
                FileServer::try_from(&f).map_err(|e| e.within(path))?,
            ))
        }
        type_urls::GRPC_WEB => FilterConfig::GrpcWeb,
        type_urls::CACHE => FilterConfig::Cache(Box::new(
            Cache::try_from(&unpack_any(any, type_urls::CACHE, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::BUFFER => {
            let b: crate::pb::envoy::extensions::filters::http::buffer::v3::Buffer =
                unpack_any(any, type_urls::BUFFER, path)?;
            FilterConfig::Buffer {
                max_request_bytes: buffer_limit(b.max_request_bytes.as_ref(), path)?,
            }
        }
        _ => return Ok(None),
    }))
}

/// Converts a `typed_per_filter_config` map. Entries for filter types Sluice does not
/// implement are refused unless wrapped in a `FilterConfig` with `is_optional`.
pub fn per_filter_configs(map: &HashMap<String, Any>, path: &str) -> Result<PerFilterConfigs> {
    let mut out = BTreeMap::new();
    for (name, any) in map {
        let entry_path = format!("{path}[{name:?}]");
        if let Some(config) = per_filter_config(name, any, &entry_path)? {
            out.insert(name.clone(), config);
        }
    }
    Ok(out)
}

fn per_filter_config(name: &str, any: &Any, path: &str) -> Result<Option<PerFilterConfig>> {
    use crate::util::unpack_any;
    if any.type_url == type_urls::ROUTE_FILTER_CONFIG {
        let wrapper: crate::pb::envoy::config::route::v3::FilterConfig =
            unpack_any(any, type_urls::ROUTE_FILTER_CONFIG, path)?;
        if wrapper.disabled {
            return Ok(Some(PerFilterConfig::Disabled));
        }
        // As Envoy: an enabling wrapper must carry the filter's per-route config.
        let Some(inner) = wrapper.config.as_ref() else {
            return Err(ValidationError::new(
                format!("{path}.config"),
                format!("empty per-filter configuration for {name}"),
            ));
        };
        if wrapper.is_optional && !is_known_filter(&inner.type_url) {
            return Ok(None);
        }
        return per_filter_config(name, inner, &format!("{path}.config"));
    }
    Ok(Some(match any.type_url.as_str() {
        type_urls::CORS_POLICY => PerFilterConfig::Cors(Box::new(
            CorsPolicy::try_from(&unpack_any::<
                crate::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy,
            >(any, type_urls::CORS_POLICY, path)?)
            .map_err(|e| e.within(path))?,
        )),
        type_urls::LOCAL_RATE_LIMIT => {
            let proto: crate::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit =
                unpack_any(any, type_urls::LOCAL_RATE_LIMIT, path)?;
            let config = LocalRateLimit::try_from(&proto).map_err(|e| e.within(path))?;
            if config.token_bucket.is_none() {
                return Err(ValidationError::new(
                    format!("{path}.token_bucket"),
                    "a per-route local rate limit needs a token bucket",
                ));
            }
            PerFilterConfig::LocalRateLimit(Box::new(config))
        }
        type_urls::BASIC_AUTH_PER_ROUTE => {
            let p: crate::pb::envoy::extensions::filters::http::basic_auth::v3::BasicAuthPerRoute =
                unpack_any(any, type_urls::BASIC_AUTH_PER_ROUTE, path)?;
            let users = p
                .users
                .as_ref()
                .ok_or_else(|| ValidationError::required(format!("{path}.users")))?;
            PerFilterConfig::BasicAuth(
                basic_auth::users(users).map_err(|e| e.within(format!("{path}.users")))?,
            )
        }
        type_urls::RBAC_PER_ROUTE => {
            let p: crate::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute =
                unpack_any(any, type_urls::RBAC_PER_ROUTE, path)?;
            PerFilterConfig::Rbac(
                p.rbac
                    .as_ref()
                    .map(|r| Rbac::try_from(r).map(Box::new))
                    .transpose()
                    .map_err(|e| e.within(format!("{path}.rbac")))?,
            )
        }
        type_urls::FAULT => PerFilterConfig::Fault(Box::new(
            Fault::try_from(&unpack_any(any, type_urls::FAULT, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::EXT_AUTHZ_PER_ROUTE => PerFilterConfig::ExtAuthz(
            ExtAuthzPerRoute::try_from(&unpack_any(any, type_urls::EXT_AUTHZ_PER_ROUTE, path)?)
                .map_err(|e| e.within(path))?,
        ),
        type_urls::JWT_PER_ROUTE => PerFilterConfig::JwtAuthn(
            JwtPerRoute::try_from(&unpack_any(any, type_urls::JWT_PER_ROUTE, path)?)
                .map_err(|e| e.within(path))?,
        ),
        type_urls::HEADER_MUTATION_PER_ROUTE => {
            let p: crate::pb::envoy::extensions::filters::http::header_mutation::v3::HeaderMutationPerRoute =
                unpack_any(any, type_urls::HEADER_MUTATION_PER_ROUTE, path)?;
            PerFilterConfig::HeaderMutation(Box::new(
                header_mutation::Mutations::try_from(&p).map_err(|e| e.within(path))?,
            ))
        }
        type_urls::BUFFER_PER_ROUTE => {
            use crate::pb::envoy::extensions::filters::http::buffer::v3::buffer_per_route::Override;
            let p: crate::pb::envoy::extensions::filters::http::buffer::v3::BufferPerRoute =
                unpack_any(any, type_urls::BUFFER_PER_ROUTE, path)?;
            match p.r#override {
                Some(Override::Disabled(true)) => PerFilterConfig::Disabled,
                Some(Override::Buffer(b)) => PerFilterConfig::Buffer {
                    max_request_bytes: buffer_limit(
                        b.max_request_bytes.as_ref(),
                        &format!("{path}.buffer"),
                    )?,
                },
                _ => {
                    return Err(ValidationError::new(
                        path,
                        "BufferPerRoute needs disabled: true or buffer",
                    ))
                }
            }
        }
        type_urls::COMPRESSOR_PER_ROUTE => PerFilterConfig::Compressor(Box::new(
            CompressorPerRoute::try_from(&unpack_any(any, type_urls::COMPRESSOR_PER_ROUTE, path)?)
                .map_err(|e| e.within(path))?,
        )),
        type_urls::FILE_SERVER_PER_ROUTE => {
            let p: file_server::pb::FileServerPerRoute =
                unpack_any(any, type_urls::FILE_SERVER_PER_ROUTE, path)?;
            PerFilterConfig::FileServer(Box::new(
                FileServer::try_from(&p).map_err(|e| e.within(path))?,
            ))
        }
        other => return Err(unsupported_type(path, name, other)),
    }))
}

impl TryFrom<&crate::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck>
    for HealthCheckFilter
{
    type Error = ValidationError;

    fn try_from(
        h: &crate::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck,
    ) -> Result<Self> {
        let pass_through_mode = h
            .pass_through_mode
            .as_ref()
            .ok_or_else(|| ValidationError::required("pass_through_mode"))?
            .value;
        let cache_time = h
            .cache_time
            .as_ref()
            .map(|d| crate::util::duration(d, "cache_time"))
            .transpose()?
            .filter(|d| !d.is_zero());
        let mut cluster_min_healthy_percentages: Vec<(String, f64)> = h
            .cluster_min_healthy_percentages
            .iter()
            .map(|(name, p)| {
                if !(0.0..=100.0).contains(&p.value) {
                    return Err(ValidationError::new(
                        format!("cluster_min_healthy_percentages[{name:?}].value"),
                        "must be between 0 and 100",
                    ));
                }
                Ok((name.clone(), p.value))
            })
            .collect::<Result<_>>()?;
        cluster_min_healthy_percentages.sort_by(|a, b| a.0.cmp(&b.0));
        let headers = h
            .headers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                crate::route::HeaderMatcher::try_from(m)
                    .map_err(|e| e.within(format!("headers[{i}]")))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            pass_through_mode,
            cache_time,
            cluster_min_healthy_percentages,
            headers,
        })
    }
}

/// `max_request_bytes`: required and above zero, as Envoy validates it.
fn buffer_limit(
    value: Option<&crate::pb::google::protobuf::UInt32Value>,
    path: &str,
) -> Result<u32> {
    match value.map(|v| v.value) {
        None => Err(ValidationError::required(format!(
            "{path}.max_request_bytes"
        ))),
        Some(0) => Err(ValidationError::new(
            format!("{path}.max_request_bytes"),
            "must be greater than 0",
        )),
        Some(n) => Ok(n),
    }
}

/// A probability, in parts per million (Envoy's `FractionalPercent`, normalised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub per_million: u32,
}

impl Fraction {
    pub const ALWAYS: Fraction = Fraction {
        per_million: 1_000_000,
    };
    pub const NEVER: Fraction = Fraction { per_million: 0 };

    /// `numerator / denominator`, capped at 100 % as Envoy caps it.
    pub fn from_proto(p: &crate::pb::envoy::r#type::v3::FractionalPercent) -> Self {
        Self {
            per_million: p
                .numerator
                .saturating_mul(Self::unit(p.denominator))
                .min(1_000_000),
        }
    }

    /// A `RuntimeFractionalPercent`'s default value (there is no runtime); `unset` when
    /// the field is absent.
    pub fn runtime(
        p: Option<&crate::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
        unset: Fraction,
    ) -> Self {
        match p {
            None => unset,
            Some(r) => r
                .default_value
                .as_ref()
                .map_or(Fraction::NEVER, Fraction::from_proto),
        }
    }

    /// The scale of a `FractionalPercent` denominator: how many parts per million one
    /// unit of its numerator is.
    pub fn unit(denominator: i32) -> u32 {
        match denominator {
            0 => 10_000,
            1 => 100,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::r#type::v3::FractionalPercent;

    fn hcm(filters: &str) -> crate::error::Result<crate::HttpConnectionManager> {
        let yaml =
            format!("stat_prefix: t\nroute_config: {{virtual_hosts: []}}\nhttp_filters: {filters}");
        let proto: crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
            crate::decode::from_yaml(
                &yaml,
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            )?;
        crate::HttpConnectionManager::try_from(&proto)
    }

    const ROUTER: &str = "{name: r, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";
    const UNKNOWN: &str =
        "typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}";

    #[test]
    fn unknown_filters_are_named_unless_optional() {
        let err = hcm(&format!("[{{name: hm, {UNKNOWN}}}, {ROUTER}]")).unwrap_err();
        assert_eq!(err.path, "http_filters[0]");
        assert!(
            err.message
                == "hm (envoy.extensions.filters.http.lua.v3.Lua) is not supported by sluice",
            "{err}"
        );
        let ok = hcm(&format!(
            "[{{name: hm, is_optional: true, {UNKNOWN}}}, {ROUTER}]"
        ))
        .unwrap();
        assert!(ok.http_filters.filters.is_empty());
        assert_eq!(ok.skipped_filters, ["hm"]);
    }

    #[test]
    fn the_router_must_be_last_and_names_unique() {
        let cors = "{name: c, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}";
        assert!(hcm(&format!("[{ROUTER}, {cors}]")).is_err());
        assert!(hcm(&format!("[{cors}]")).is_err());
        assert!(hcm(&format!("[{cors}, {cors}, {ROUTER}]"))
            .unwrap_err()
            .message
            .contains("twice"));
        assert_eq!(
            hcm(&format!("[{cors}, {ROUTER}]"))
                .unwrap()
                .http_filters
                .filters
                .len(),
            1
        );
    }

    #[test]
    fn fractions_normalise_to_parts_per_million() {
        let f = |n, d| {
            Fraction::from_proto(&FractionalPercent {
                numerator: n,
                denominator: d,
            })
        };
        assert_eq!(f(50, 0).per_million, 500_000);
        assert_eq!(f(50, 1).per_million, 5_000);
        assert_eq!(f(50, 2).per_million, 50);
        assert_eq!(f(500, 0), Fraction::ALWAYS);
    }
}
