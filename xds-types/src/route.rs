//! Validated `RouteConfiguration`: virtual hosts, routes, matchers and actions.
//!
//! Matchers here are pure values with `matches` methods; the data plane indexes virtual
//! hosts by domain once per table. Regexes compile during conversion, never per request.

use std::time::Duration;

use regex::Regex;

use crate::error::{Result, ValidationError};
use crate::http_filter::{per_filter_configs, CorsPolicy, PerFilterConfigs};
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::route::v3 as pb;
use crate::pb::envoy::r#type::matcher::v3 as matcher;
use crate::rate_limit::{policies, RateLimitPolicy};
use crate::util::{duration, optional_timeout};

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default retry back-off base interval.
pub const DEFAULT_RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// A whole route configuration, ready to be indexed by the data plane. The default is
/// the empty table (every request gets 404), what a listener serves when its RDS
/// configuration did not arrive within `initial_fetch_timeout`.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Route-configuration-level mutations; applied after virtual host and route level.
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    /// Filter overrides for every route of the table (the least specific level).
    pub per_filter: PerFilterConfigs,
    /// Virtual hosts are matched on `Host` without its port.
    pub ignore_port_in_host_matching: bool,
    /// Headers only internal callers may set: removed from every other request before
    /// filters and routing, so an outside client cannot forge them.
    pub internal_only_headers: Vec<http::HeaderName>,
    /// Hash of the resource as received: an unchanged table keeps its compiled form (and
    /// the filters' per-route state) across snapshots.
    pub fingerprint: u64,
}

/// A set of domains and the routes tried, in order, for requests to them.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    /// Lowercased domains: exact, `*.suffix`/`*suffix`, `prefix*`, or `*`.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// Used by routes that have no retry policy of their own.
    pub retry_policy: Option<RetryPolicy>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: PerFilterConfigs,
    /// The deprecated `VirtualHost.cors`, used when no per-filter CORS policy is set.
    pub cors: Option<Box<CorsPolicy>>,
    pub rate_limits: Vec<RateLimitPolicy>,
    /// Send `x-envoy-attempt-count` upstream.
    pub include_request_attempt_count: bool,
    /// Send `x-envoy-attempt-count` downstream.
    pub include_attempt_count_in_response: bool,
}

/// One route: the first whose matcher accepts a request decides its fate.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: PerFilterConfigs,
    /// The decorator's operation: the span's name instead of Envoy's default.
    pub decorator: Option<String>,
    /// Sampling overrides and tags for this route's spans.
    pub tracing: Option<crate::tracing::RouteTracing>,
}

/// Conditions on path, headers and query parameters; all must hold.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// When false, `prefix`/`path`/`path_separated_prefix` compare case-insensitively.
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// `grpc: {}`: only gRPC requests (content-type `application/grpc` or
    /// `application/grpc+…`).
    pub grpc: bool,
}

/// The path specifier of a route.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Matches the start of `:path` (query included, as Envoy).
    Prefix(String),
    /// Matches `:path` without its query exactly.
    Exact(String),
    /// Full match of `:path` without its query.
    Regex(Regex),
    /// The path equals the prefix or continues with `/` after it.
    SeparatedPrefix(String),
}

/// A condition on one request header.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Lowercased header name.
    pub name: String,
    pub kind: HeaderMatchKind,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// What a header must look like.
#[derive(Debug, Clone)]
pub enum HeaderMatchKind {
    /// Presence (`true`) or absence (`false`).
    Present(bool),
    Value(StringMatcher),
}

/// A condition on one query parameter.
#[derive(Debug, Clone)]
pub struct QueryParameterMatcher {
    pub name: String,
    /// `None` means "present".
    pub value: Option<StringMatcher>,
}

/// Envoy's `StringMatcher`.
#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub pattern: StringPattern,
    pub ignore_case: bool,
}

/// The pattern of a [`StringMatcher`].
#[derive(Debug, Clone)]
pub enum StringPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Full match.
    Regex(Regex),
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Box<ForwardAction>),
    Redirect(Redirect),
    Direct(DirectResponse),
}

/// A route's `max_stream_duration`: how long a stream on it may last, from the request's
/// `grpc-timeout` header or in place of the connection manager's limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamDuration {
    /// Replaces the connection manager's `max_stream_duration`; zero lifts it.
    pub max: Option<Duration>,
    /// When set, a `grpc-timeout` header is the stream's duration, capped at this (zero:
    /// uncapped).
    pub grpc_timeout_header_max: Option<Duration>,
    /// Taken off a `grpc-timeout` duration, for the time the hops after this one take.
    pub grpc_timeout_header_offset: Option<Duration>,
}

impl StreamDuration {
    /// The stream's lifetime on this route, as Envoy's connection manager decides it:
    /// the `grpc-timeout` value (capped, less the offset) when the route honours it and
    /// the request has one, else the route's limit, else the connection manager's.
    /// `None`: unbounded.
    pub fn limit(
        &self,
        grpc_timeout: Option<Duration>,
        manager: Option<Duration>,
    ) -> Option<Duration> {
        match (grpc_timeout, self.grpc_timeout_header_max) {
            (Some(timeout), Some(cap)) => {
                let capped = if cap.is_zero() {
                    timeout
                } else {
                    timeout.min(cap)
                };
                let offset = self.grpc_timeout_header_offset.unwrap_or_default();
                // A zero duration is no limit, as a zero timeout anywhere in Envoy.
                Some(capped.saturating_sub(offset)).filter(|d| !d.is_zero())
            }
            _ => match self.max {
                Some(max) => Some(max).filter(|d| !d.is_zero()),
                None => manager,
            },
        }
    }
}

/// Send the request upstream.
#[derive(Debug, Clone)]
pub struct ForwardAction {
    pub target: ClusterTarget,
    pub prefix_rewrite: Option<String>,
    /// Pattern and substitution in Rust `regex` replacement syntax (`${1}`).
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<String>,
    /// `None` disables the timeout (Envoy's `0s`).
    pub timeout: Option<Duration>,
    /// The route's `max_stream_duration`: the stream's lifetime, from `grpc-timeout`.
    pub stream_duration: StreamDuration,
    pub retry_policy: Option<RetryPolicy>,
    /// Status when the named cluster does not exist (503 or 404).
    pub cluster_not_found_status: u16,
    /// How the request's hash for RING_HASH and MAGLEV clusters is computed.
    pub hash_policy: Vec<HashPolicy>,
    /// The deprecated `RouteAction.cors`, used when no per-filter CORS policy is set.
    pub cors: Option<Box<CorsPolicy>>,
    pub rate_limits: Vec<RateLimitPolicy>,
    /// Also use the virtual host's `rate_limits`.
    pub include_vh_rate_limits: bool,
    /// Per-route upgrade switches (lowercased type, enabled); they override the
    /// connection manager's `upgrade_configs` for this route.
    pub upgrades: Vec<(String, bool)>,
    /// Shadow copies of the request, fire and forget (`request_mirror_policies`).
    pub mirrors: Vec<Mirror>,
}

/// One `RequestMirrorPolicy`.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests mirrored (100 % when unset).
    pub fraction: crate::http_filter::Fraction,
    /// Append `-shadow` to the host (Envoy's default).
    pub shadow_suffix: bool,
}

/// One input of a request's consistent hash (Envoy's `RouteAction.HashPolicy`).
#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub source: HashSource,
    /// When this policy produced a hash, the later ones are skipped.
    pub terminal: bool,
}

/// What a hash policy hashes.
#[derive(Debug, Clone)]
pub enum HashSource {
    /// A request header's value, optionally rewritten first.
    Header {
        name: http::HeaderName,
        rewrite: Option<(Regex, String)>,
    },
    /// A cookie's value; with a `ttl`, a missing cookie is generated and set on the
    /// response (`Some(0s)`: a session cookie).
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
        attributes: Vec<(String, String)>,
    },
    /// The downstream IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// Which cluster receives the request.
#[derive(Debug, Clone)]
pub enum ClusterTarget {
    Cluster(String),
    /// `(cluster, weight)`, weights > 0 summing to `total`.
    Weighted {
        clusters: Vec<(String, u32)>,
        total: u32,
    },
}

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: a retry avoids the hosts already tried.
    pub previous_hosts: bool,
    /// How often host selection is repeated to satisfy `previous_hosts` (default 1).
    pub host_selection_retry_max_attempts: u32,
}

/// The retry conditions Sluice implements (Envoy's `x-envoy-retry-on` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, connect failure or reset.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub reset: bool,
    pub retriable_status_codes: bool,
}

/// A redirect answered by the proxy itself.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<RedirectPath>,
    pub status: u16,
    pub strip_query: bool,
}

/// How a redirect changes the path.
#[derive(Debug, Clone)]
pub enum RedirectPath {
    Replace(String),
    /// Replace the matched route prefix.
    Prefix(String),
}

/// A response answered by the proxy itself.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<Vec<u8>>,
}

/// Header additions and removals at one level.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub add: Vec<HeaderAddition>,
    pub remove: Vec<http::HeaderName>,
}

/// One header to add.
#[derive(Debug, Clone)]
pub struct HeaderAddition {
    pub name: http::HeaderName,
    pub value: http::HeaderValue,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

/// Envoy's `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

impl RouteTable {
    /// Every cluster name any route may send to.
    pub fn referenced_clusters(&self) -> impl Iterator<Item = &str> {
        self.virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.iter())
            .flat_map(|r| match &r.action {
                RouteAction::Forward(f) => {
                    let mut names: Vec<&str> = match &f.target {
                        ClusterTarget::Cluster(c) => vec![c.as_str()],
                        ClusterTarget::Weighted { clusters, .. } => {
                            clusters.iter().map(|(c, _)| c.as_str()).collect()
                        }
                    };
                    names.extend(f.mirrors.iter().map(|m| m.cluster.as_str()));
                    names
                }
                _ => Vec::new(),
            })
    }
}

impl TryFrom<&pb::RouteConfiguration> for RouteTable {
    type Error = ValidationError;

    fn try_from(rc: &pb::RouteConfiguration) -> Result<Self> {
        let virtual_hosts = rc
            .virtual_hosts
            .iter()
            .enumerate()
            .map(|(i, vh)| {
                VirtualHost::try_from(vh).map_err(|e| e.within(format!("virtual_hosts[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut seen = std::collections::HashSet::new();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for domain in &vh.domains {
                if !seen.insert(domain.clone()) {
                    return Err(ValidationError::new(
                        format!("virtual_hosts[{i}].domains"),
                        format!("domain {domain:?} appears in more than one virtual host"),
                    ));
                }
            }
        }
        Ok(Self {
            per_filter: per_filter_configs(&rc.typed_per_filter_config, "typed_per_filter_config")?,
            fingerprint: crate::util::fingerprint(rc, "envoy.config.route.v3.RouteConfiguration"),
            ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
            internal_only_headers: rc
                .internal_only_headers
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let at = format!("internal_only_headers[{i}]");
                    let n = validate_header_name(n).map_err(|e| e.within(&at))?;
                    http::HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| ValidationError::new(at, "a pseudo-header cannot be removed"))
                })
                .collect::<Result<_>>()?,
            name: rc.name.clone(),
            virtual_hosts,
            request_headers: mutations(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response_headers: mutations(
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
        })
    }
}

impl TryFrom<&pb::VirtualHost> for VirtualHost {
    type Error = ValidationError;

    fn try_from(vh: &pb::VirtualHost) -> Result<Self> {
        if vh.domains.is_empty() {
            return Err(ValidationError::required("domains"));
        }
        let domains = vh
            .domains
            .iter()
            .enumerate()
            .map(|(i, d)| validate_domain(d).map_err(|e| e.within(format!("domains[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        let routes = vh
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::try_from(r).map_err(|e| e.within(format!("routes[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        let retry_policy = vh
            .retry_policy
            .as_ref()
            .map(|p| retry_policy(p).map_err(|e| e.within("retry_policy")))
            .transpose()?;
        Ok(Self {
            per_filter: per_filter_configs(&vh.typed_per_filter_config, "typed_per_filter_config")?,
            cors: cors_policy(vh.cors.as_ref())?,
            rate_limits: policies(&vh.rate_limits, "rate_limits")?,
            include_request_attempt_count: vh.include_request_attempt_count,
            include_attempt_count_in_response: vh.include_attempt_count_in_response,
            name: vh.name.clone(),
            domains,
            routes,
            retry_policy,
            request_headers: mutations(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response_headers: mutations(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
        })
    }
}

/// The deprecated `cors` field of a virtual host or route action.
fn cors_policy(c: Option<&pb::CorsPolicy>) -> Result<Option<Box<CorsPolicy>>> {
    c.map(|c| {
        CorsPolicy::try_from(c)
            .map(Box::new)
            .map_err(|e| e.within("cors"))
    })
    .transpose()
}

fn validate_domain(domain: &str) -> Result<String> {
    let d = domain.to_ascii_lowercase();
    if d.is_empty() {
        return Err(ValidationError::new("", "domain must not be empty"));
    }
    let stars = d.matches('*').count();
    let ok = stars == 0 || d == "*" || (stars == 1 && (d.starts_with('*') || d.ends_with('*')));
    if !ok {
        return Err(ValidationError::new(
            "",
            format!(
                "invalid domain {domain:?}: a wildcard may only be the first or last character"
            ),
        ));
    }
    Ok(d)
}

impl TryFrom<&pb::Route> for Route {
    type Error = ValidationError;

    fn try_from(r: &pb::Route) -> Result<Self> {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| ValidationError::required("match"))?;
        let matcher = RouteMatch::try_from(m).map_err(|e| e.within("match"))?;
        let action = match r.action.as_ref() {
            None => {
                return Err(ValidationError::new(
                    "",
                    "one of route, redirect or direct_response is required",
                ))
            }
            Some(pb::route::Action::Route(a)) => RouteAction::Forward(Box::new(
                ForwardAction::try_from(a).map_err(|e| e.within("route"))?,
            )),
            Some(pb::route::Action::Redirect(a)) => {
                RouteAction::Redirect(Redirect::try_from(a).map_err(|e| e.within("redirect"))?)
            }
            Some(pb::route::Action::DirectResponse(a)) => RouteAction::Direct(
                DirectResponse::try_from(a).map_err(|e| e.within("direct_response"))?,
            ),
            Some(_) => return Err(ValidationError::unsupported("action")),
        };
        if let (
            RouteAction::Redirect(Redirect {
                path: Some(RedirectPath::Prefix(_)),
                ..
            }),
            PathMatch::Regex(_),
        ) = (&action, &matcher.path)
        {
            return Err(ValidationError::new(
                "redirect.prefix_rewrite",
                "prefix_rewrite needs a prefix or path route match",
            ));
        }
        if let RouteAction::Forward(f) = &action {
            if f.prefix_rewrite.is_some() && matches!(matcher.path, PathMatch::Regex(_)) {
                return Err(ValidationError::new(
                    "route.prefix_rewrite",
                    "prefix_rewrite needs a prefix, path or path_separated_prefix match",
                ));
            }
        }
        let decorator = match r.decorator.as_ref() {
            None => None,
            Some(d) if d.operation.is_empty() => {
                return Err(ValidationError::required("decorator.operation"))
            }
            Some(d) => Some(d.operation.clone()),
        };
        Ok(Self {
            per_filter: per_filter_configs(&r.typed_per_filter_config, "typed_per_filter_config")?,
            decorator,
            tracing: r
                .tracing
                .as_ref()
                .map(|t| crate::tracing::RouteTracing::try_from(t).map_err(|e| e.within("tracing")))
                .transpose()?,
            name: r.name.clone(),
            matcher,
            action,
            request_headers: mutations(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response_headers: mutations(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
        })
    }
}

impl TryFrom<&pb::RouteMatch> for RouteMatch {
    type Error = ValidationError;

    fn try_from(m: &pb::RouteMatch) -> Result<Self> {
        use pb::route_match::PathSpecifier as P;
        let case_sensitive = m.case_sensitive.as_ref().is_none_or(|v| v.value);
        let fold = |s: &str| {
            if case_sensitive {
                s.to_string()
            } else {
                s.to_ascii_lowercase()
            }
        };
        let path = match m.path_specifier.as_ref() {
            None => {
                return Err(ValidationError::new(
                    "",
                    "one of prefix, path, safe_regex or path_separated_prefix is required",
                ))
            }
            Some(P::Prefix(p)) => PathMatch::Prefix(fold(p)),
            Some(P::Path(p)) => PathMatch::Exact(fold(p)),
            Some(P::SafeRegex(r)) => {
                PathMatch::Regex(regex(r).map_err(|e| e.within("safe_regex"))?)
            }
            Some(P::PathSeparatedPrefix(p)) => {
                if !p.starts_with('/') || p.ends_with('/') || p.contains(['?', '#']) {
                    return Err(ValidationError::new(
                        "path_separated_prefix",
                        "must start with '/', must not end with '/', and must not contain '?' or '#'",
                    ));
                }
                PathMatch::SeparatedPrefix(fold(p))
            }
            Some(_) => return Err(ValidationError::unsupported("path_specifier")),
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::try_from(h).map_err(|e| e.within(format!("headers[{i}]"))))
            .collect::<Result<_>>()?;
        let query_parameters = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| query_matcher(q).map_err(|e| e.within(format!("query_parameters[{i}]"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            path,
            case_sensitive,
            headers,
            query_parameters,
            grpc: m.grpc.is_some(),
        })
    }
}

impl RouteMatch {
    /// Whether the path part of `path_and_query` satisfies the path specifier.
    pub fn matches_path(&self, path_and_query: &str) -> bool {
        let path_only = path_and_query.split('?').next().unwrap_or("");
        let lowered;
        let (full, path_only) = if self.case_sensitive {
            (path_and_query, path_only)
        } else {
            lowered = path_and_query.to_ascii_lowercase();
            let p = lowered.split('?').next().unwrap_or("");
            (lowered.as_str(), p)
        };
        match &self.path {
            PathMatch::Prefix(p) => full.starts_with(p.as_str()),
            PathMatch::Exact(p) => path_only == p,
            // Regex matching is case sensitive in Envoy regardless of `case_sensitive`.
            PathMatch::Regex(r) => r.is_match(path_and_query.split('?').next().unwrap_or("")),
            PathMatch::SeparatedPrefix(p) => {
                path_only == p
                    || (path_only.starts_with(p.as_str())
                        && path_only.as_bytes().get(p.len()) == Some(&b'/'))
            }
        }
    }

    /// The matched prefix to replace for `prefix_rewrite` (Envoy rewrites only prefix,
    /// path and path_separated_prefix matches).
    pub fn rewritable_prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => Some(p),
            PathMatch::Regex(_) => None,
        }
    }
}

impl TryFrom<&pb::HeaderMatcher> for HeaderMatcher {
    type Error = ValidationError;

    fn try_from(h: &pb::HeaderMatcher) -> Result<Self> {
        use pb::header_matcher::HeaderMatchSpecifier as S;
        let name = validate_header_name(&h.name).map_err(|e| e.within("name"))?;
        let exact = |s: &str| StringMatcher {
            pattern: StringPattern::Exact(s.into()),
            ignore_case: false,
        };
        let kind = match h.header_match_specifier.as_ref() {
            None => HeaderMatchKind::Present(true),
            Some(S::ExactMatch(v)) => HeaderMatchKind::Value(exact(v)),
            Some(S::SafeRegexMatch(r)) => HeaderMatchKind::Value(StringMatcher {
                pattern: StringPattern::Regex(regex(r).map_err(|e| e.within("safe_regex_match"))?),
                ignore_case: false,
            }),
            Some(S::PresentMatch(p)) => HeaderMatchKind::Present(*p),
            Some(S::PrefixMatch(p)) => HeaderMatchKind::Value(StringMatcher {
                pattern: StringPattern::Prefix(p.clone()),
                ignore_case: false,
            }),
            Some(S::SuffixMatch(p)) => HeaderMatchKind::Value(StringMatcher {
                pattern: StringPattern::Suffix(p.clone()),
                ignore_case: false,
            }),
            Some(S::ContainsMatch(p)) => HeaderMatchKind::Value(StringMatcher {
                pattern: StringPattern::Contains(p.clone()),
                ignore_case: false,
            }),
            Some(S::StringMatch(m)) => {
                HeaderMatchKind::Value(string_matcher(m).map_err(|e| e.within("string_match"))?)
            }
            Some(_) => return Err(ValidationError::unsupported("header_match_specifier")),
        };
        Ok(Self {
            name,
            kind,
            invert: h.invert_match,
            treat_missing_as_empty: h.treat_missing_header_as_empty,
        })
    }
}

impl HeaderMatcher {
    /// Evaluates the matcher against the header's value (multiple values joined by `,`).
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = match value {
            None if self.treat_missing_as_empty => Some(""),
            v => v,
        };
        let result = match (&self.kind, value) {
            (HeaderMatchKind::Present(want), v) => v.is_some() == *want,
            (HeaderMatchKind::Value(_), None) => return false,
            (HeaderMatchKind::Value(m), Some(v)) => m.matches(v),
        };
        result != self.invert
    }
}

pub(crate) fn query_matcher(q: &pb::QueryParameterMatcher) -> Result<QueryParameterMatcher> {
    use pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    if q.name.is_empty() {
        return Err(ValidationError::required("name"));
    }
    let value = match q.query_parameter_match_specifier.as_ref() {
        None | Some(S::PresentMatch(true)) => None,
        Some(S::PresentMatch(false)) => {
            return Err(ValidationError::new(
                "present_match",
                "present_match: false is not meaningful; omit the matcher",
            ))
        }
        Some(S::StringMatch(m)) => Some(string_matcher(m).map_err(|e| e.within("string_match"))?),
    };
    Ok(QueryParameterMatcher {
        name: q.name.clone(),
        value,
    })
}

impl QueryParameterMatcher {
    /// Whether `query` (without `?`) satisfies this matcher.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        query_pairs(query).any(|(k, v)| self.matches_pair(k, v))
    }

    /// Whether one `name=value` pair satisfies this matcher.
    pub fn matches_pair(&self, name: &str, value: &str) -> bool {
        name == self.name && self.value.as_ref().is_none_or(|m| m.matches(value))
    }
}

/// The `name=value` pairs of a query string (without `?`), as Envoy reads them: no
/// percent-decoding, a name without `=` has an empty value.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Converts an Envoy `StringMatcher`.
pub fn string_matcher(m: &matcher::StringMatcher) -> Result<StringMatcher> {
    use matcher::string_matcher::MatchPattern as P;
    let pattern = match m.match_pattern.as_ref() {
        None => {
            return Err(ValidationError::new(
                "",
                "one of exact, prefix, suffix, contains or safe_regex is required",
            ))
        }
        Some(P::Exact(s)) => StringPattern::Exact(s.clone()),
        Some(P::Prefix(s)) => StringPattern::Prefix(s.clone()),
        Some(P::Suffix(s)) => StringPattern::Suffix(s.clone()),
        Some(P::Contains(s)) => StringPattern::Contains(s.clone()),
        Some(P::SafeRegex(r)) => {
            StringPattern::Regex(regex(r).map_err(|e| e.within("safe_regex"))?)
        }
        Some(_) => return Err(ValidationError::unsupported("match_pattern")),
    };
    Ok(StringMatcher {
        pattern,
        ignore_case: m.ignore_case,
    })
}

impl StringMatcher {
    /// Evaluates the matcher (regexes ignore `ignore_case`, as in Envoy).
    pub fn matches(&self, value: &str) -> bool {
        let fold = |s: &str| {
            if self.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match &self.pattern {
            StringPattern::Exact(p) => fold(value) == fold(p),
            StringPattern::Prefix(p) => fold(value).starts_with(&fold(p)),
            StringPattern::Suffix(p) => fold(value).ends_with(&fold(p)),
            StringPattern::Contains(p) => fold(value).contains(&fold(p)),
            StringPattern::Regex(r) => r.is_match(value),
        }
    }
}

/// Compiles an Envoy `RegexMatcher` as a full-string match.
fn regex(r: &matcher::RegexMatcher) -> Result<Regex> {
    compile_regex(&r.regex, true).map_err(|e| e.within("regex"))
}

fn compile_regex(pattern: &str, anchored: bool) -> Result<Regex> {
    if pattern.len() > 4096 {
        return Err(ValidationError::new("", "regex is longer than 4096 bytes"));
    }
    let source = if anchored {
        format!("^(?:{pattern})$")
    } else {
        pattern.to_string()
    };
    regex::RegexBuilder::new(&source)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ValidationError::new("", format!("invalid regex: {e}")))
}

impl TryFrom<&pb::RouteAction> for ForwardAction {
    type Error = ValidationError;

    fn try_from(a: &pb::RouteAction) -> Result<Self> {
        use pb::route_action::ClusterSpecifier as C;
        let target = match a.cluster_specifier.as_ref() {
            Some(C::Cluster(c)) if !c.is_empty() => ClusterTarget::Cluster(c.clone()),
            Some(C::Cluster(_)) => return Err(ValidationError::required("cluster")),
            Some(C::WeightedClusters(w)) => {
                weighted(w).map_err(|e| e.within("weighted_clusters"))?
            }
            Some(_) => return Err(ValidationError::unsupported("cluster_specifier")),
            None => {
                return Err(ValidationError::new(
                    "",
                    "one of cluster or weighted_clusters is required",
                ))
            }
        };
        let regex_rewrite = a
            .regex_rewrite
            .as_ref()
            .map(regex_substitution)
            .transpose()
            .map_err(|e| e.within("regex_rewrite"))?;
        let host_rewrite = match a.host_rewrite_specifier.as_ref() {
            None => None,
            Some(pb::route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                http::HeaderValue::from_str(h).map_err(|_| {
                    ValidationError::new("host_rewrite_literal", "not a valid header value")
                })?;
                Some(h.clone())
            }
            Some(_) => return Err(ValidationError::unsupported("host_rewrite_specifier")),
        };
        let cluster_not_found_status = match a.cluster_not_found_response_code {
            0 => 503,
            1 => 404,
            2 => 500,
            other => {
                return Err(ValidationError::new(
                    "cluster_not_found_response_code",
                    format!("unknown code {other}"),
                ))
            }
        };
        Ok(Self {
            target,
            prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
            regex_rewrite,
            host_rewrite,
            timeout: optional_timeout(a.timeout.as_ref(), "timeout", Some(DEFAULT_ROUTE_TIMEOUT))?,
            stream_duration: stream_duration(a.max_stream_duration.as_ref())?,
            retry_policy: a
                .retry_policy
                .as_ref()
                .map(|p| retry_policy(p).map_err(|e| e.within("retry_policy")))
                .transpose()?,
            cluster_not_found_status,
            hash_policy: a
                .hash_policy
                .iter()
                .enumerate()
                .map(|(i, h)| hash_policy(h).map_err(|e| e.within(format!("hash_policy[{i}]"))))
                .collect::<Result<_>>()?,
            cors: cors_policy(a.cors.as_ref())?,
            rate_limits: policies(&a.rate_limits, "rate_limits")?,
            include_vh_rate_limits: a.include_vh_rate_limits.as_ref().is_some_and(|v| v.value),
            mirrors: a
                .request_mirror_policies
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let path = format!("request_mirror_policies[{i}]");
                    if m.cluster.is_empty() {
                        return Err(ValidationError::required(format!("{path}.cluster")));
                    }
                    if !m.cluster_header.is_empty() || !m.request_headers_mutations.is_empty() {
                        return Err(ValidationError::new(
                            path,
                            "only cluster, runtime_fraction, trace_sampled and disable_shadow_host_suffix_append are supported",
                        ));
                    }
                    Ok(Mirror {
                        cluster: m.cluster.clone(),
                        fraction: crate::http_filter::Fraction::runtime(
                            m.runtime_fraction.as_ref(),
                            crate::http_filter::Fraction::ALWAYS,
                        ),
                        shadow_suffix: !m.disable_shadow_host_suffix_append,
                    })
                })
                .collect::<Result<_>>()?,
            upgrades: a
                .upgrade_configs
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    if u.connect_config.is_some() {
                        return Err(ValidationError::new(
                            format!("upgrade_configs[{i}].connect_config"),
                            "CONNECT termination is not supported",
                        ));
                    }
                    Ok((
                        u.upgrade_type.to_ascii_lowercase(),
                        u.enabled.as_ref().is_none_or(|v| v.value),
                    ))
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// A `RegexMatchAndSubstitute`: the compiled pattern and the substitution with RE2's
/// `\N` group references translated.
fn regex_substitution(r: &matcher::RegexMatchAndSubstitute) -> Result<(Regex, String)> {
    let pattern = r
        .pattern
        .as_ref()
        .ok_or_else(|| ValidationError::required("pattern"))?;
    let re = compile_regex(&pattern.regex, false).map_err(|e| e.within("pattern.regex"))?;
    Ok((re, re2_substitution(&r.substitution)))
}

fn hash_policy(h: &pb::route_action::HashPolicy) -> Result<HashPolicy> {
    use pb::route_action::hash_policy::PolicySpecifier as P;
    let source = match h.policy_specifier.as_ref() {
        Some(P::Header(header)) => {
            let name = validate_header_name(&header.header_name)
                .map_err(|e| e.within("header.header_name"))?;
            let rewrite = header
                .regex_rewrite
                .as_ref()
                .map(regex_substitution)
                .transpose()
                .map_err(|e| e.within("header.regex_rewrite"))?;
            HashSource::Header {
                name: http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ValidationError::new("header.header_name", "not a header name"))?,
                rewrite,
            }
        }
        Some(P::Cookie(c)) => {
            if c.name.is_empty() {
                return Err(ValidationError::required("cookie.name"));
            }
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            };
            if !token(&c.name) {
                return Err(ValidationError::new("cookie.name", "not a cookie name"));
            }
            let attributes = c
                .attributes
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    if !token(&a.name)
                        || a.value.contains(';')
                        || a.value.contains(|c: char| c.is_control())
                    {
                        return Err(ValidationError::new(
                            format!("cookie.attributes[{i}]"),
                            "not a cookie attribute",
                        ));
                    }
                    Ok((a.name.clone(), a.value.clone()))
                })
                .collect::<Result<_>>()?;
            if c.path.contains(';') || c.path.contains(|c: char| c.is_control()) {
                return Err(ValidationError::new("cookie.path", "not a cookie path"));
            }
            HashSource::Cookie {
                name: c.name.clone(),
                ttl: c
                    .ttl
                    .as_ref()
                    .map(|t| duration(t, "cookie.ttl"))
                    .transpose()?,
                path: (!c.path.is_empty()).then(|| c.path.clone()),
                attributes,
            }
        }
        Some(P::ConnectionProperties(p)) => {
            if !p.source_ip {
                return Err(ValidationError::new(
                    "connection_properties.source_ip",
                    "must be true",
                ));
            }
            HashSource::SourceIp
        }
        Some(P::QueryParameter(q)) => {
            if q.name.is_empty() {
                return Err(ValidationError::required("query_parameter.name"));
            }
            HashSource::QueryParameter(q.name.clone())
        }
        Some(P::FilterState(_)) => return Err(ValidationError::unsupported("filter_state")),
        None => {
            return Err(ValidationError::new(
                "",
                "one of header, cookie, connection_properties or query_parameter is required",
            ))
        }
    };
    Ok(HashPolicy {
        source,
        terminal: h.terminal,
    })
}

/// RE2 substitutions use `\1`; Rust's regex uses `${1}`. `$` must be escaped.
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn weighted(w: &pb::WeightedCluster) -> Result<ClusterTarget> {
    if w.clusters.is_empty() {
        return Err(ValidationError::required("clusters"));
    }
    let mut clusters = Vec::with_capacity(w.clusters.len());
    let mut total: u32 = 0;
    for (i, c) in w.clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        if c.name.is_empty() {
            return Err(ValidationError::required(format!("{path}.name")));
        }
        let weight = c.weight.as_ref().map_or(0, |v| v.value);
        total = total
            .checked_add(weight)
            .ok_or_else(|| ValidationError::new(format!("{path}.weight"), "weights overflow"))?;
        if weight > 0 {
            clusters.push((c.name.clone(), weight));
        }
    }
    if total == 0 {
        return Err(ValidationError::new(
            "clusters",
            "the sum of weights must be greater than 0",
        ));
    }
    if let Some(expected) = w.total_weight.as_ref().map(|v| v.value) {
        if expected != total {
            return Err(ValidationError::new(
                "total_weight",
                format!("is {expected} but the weights sum to {total}"),
            ));
        }
    }
    Ok(ClusterTarget::Weighted { clusters, total })
}

fn retry_policy(p: &pb::RetryPolicy) -> Result<RetryPolicy> {
    let mut retry_on = RetryOn::default();
    for cond in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match cond {
            "5xx" => retry_on.server_error = true,
            "gateway-error" => retry_on.gateway_error = true,
            "connect-failure" => retry_on.connect_failure = true,
            "reset" => retry_on.reset = true,
            "retriable-status-codes" => retry_on.retriable_status_codes = true,
            other => {
                return Err(ValidationError::new(
                    "retry_on",
                    format!("unsupported retry condition {other:?}"),
                ))
            }
        }
    }
    let (base_interval, max_interval) = match p.retry_back_off.as_ref() {
        None => (
            DEFAULT_RETRY_BASE_INTERVAL,
            DEFAULT_RETRY_BASE_INTERVAL * 10,
        ),
        Some(b) => {
            let base = b
                .base_interval
                .as_ref()
                .ok_or_else(|| ValidationError::required("retry_back_off.base_interval"))?;
            let base = duration(base, "retry_back_off.base_interval")?;
            if base.is_zero() {
                return Err(ValidationError::new(
                    "retry_back_off.base_interval",
                    "must be greater than 0",
                ));
            }
            let max = match b.max_interval.as_ref() {
                Some(m) => duration(m, "retry_back_off.max_interval")?,
                None => base * 10,
            };
            if max < base {
                return Err(ValidationError::new(
                    "retry_back_off.max_interval",
                    "must not be less than base_interval",
                ));
            }
            (base, max)
        }
    };
    let retriable_status_codes = p
        .retriable_status_codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    ValidationError::new(
                        "retriable_status_codes",
                        format!("{c} is not an HTTP status"),
                    )
                })
        })
        .collect::<Result<_>>()?;
    let mut previous_hosts = false;
    for (i, predicate) in p.retry_host_predicate.iter().enumerate() {
        use pb::retry_policy::retry_host_predicate::ConfigType;
        let typed = match predicate.config_type.as_ref() {
            Some(ConfigType::TypedConfig(any)) => crate::type_urls::message_name(&any.type_url),
            None => "",
        };
        match (predicate.name.as_str(), typed) {
            (_, "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")
            | ("envoy.retry_host_predicates.previous_hosts", "") => previous_hosts = true,
            (other, _) => {
                return Err(ValidationError::new(
                    format!("retry_host_predicate[{i}].name"),
                    format!(
                    "{other:?} is not supported (envoy.retry_host_predicates.previous_hosts is)"
                ),
                ))
            }
        }
    }
    let host_selection_retry_max_attempts = match p.host_selection_retry_max_attempts {
        0 => 1,
        n if (1..=100).contains(&n) => n as u32,
        _ => {
            return Err(ValidationError::new(
                "host_selection_retry_max_attempts",
                "must be between 1 and 100",
            ))
        }
    };
    Ok(RetryPolicy {
        previous_hosts,
        host_selection_retry_max_attempts,
        retry_on,
        num_retries: p.num_retries.as_ref().map_or(1, |v| v.value),
        per_try_timeout: optional_timeout(p.per_try_timeout.as_ref(), "per_try_timeout", None)?,
        retriable_status_codes,
        base_interval,
        max_interval,
    })
}

impl RetryPolicy {
    /// Whether an upstream response status calls for another try.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.retry_on.server_error && (500..600).contains(&status))
            || (self.retry_on.gateway_error && matches!(status, 502..=504))
            || (self.retry_on.retriable_status_codes
                && self.retriable_status_codes.contains(&status))
    }

    /// Whether a failure to connect calls for another try.
    pub fn retries_connect_failure(&self) -> bool {
        self.retry_on.server_error || self.retry_on.gateway_error || self.retry_on.connect_failure
    }

    /// Whether a reset (no response headers) calls for another try.
    pub fn retries_reset(&self) -> bool {
        self.retry_on.server_error || self.retry_on.gateway_error || self.retry_on.reset
    }
}

impl TryFrom<&pb::RedirectAction> for Redirect {
    type Error = ValidationError;

    fn try_from(r: &pb::RedirectAction) -> Result<Self> {
        use pb::redirect_action::{
            PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
        };
        let scheme = match r.scheme_rewrite_specifier.as_ref() {
            None => None,
            Some(S::HttpsRedirect(true)) => Some("https".to_string()),
            Some(S::HttpsRedirect(false)) => None,
            Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        };
        let port = match r.port_redirect {
            0 => None,
            p => Some(
                u16::try_from(p)
                    .map_err(|_| ValidationError::new("port_redirect", "must be at most 65535"))?,
            ),
        };
        let path = match r.path_rewrite_specifier.as_ref() {
            None => None,
            Some(P::PathRedirect(p)) => Some(RedirectPath::Replace(p.clone())),
            Some(P::PrefixRewrite(p)) => Some(RedirectPath::Prefix(p.clone())),
            Some(_) => return Err(ValidationError::unsupported("regex_rewrite")),
        };
        let status = match C::try_from(r.response_code) {
            Ok(C::MovedPermanently) => 301,
            Ok(C::Found) => 302,
            Ok(C::SeeOther) => 303,
            Ok(C::TemporaryRedirect) => 307,
            Ok(C::PermanentRedirect) => 308,
            Err(_) => {
                return Err(ValidationError::new(
                    "response_code",
                    "unknown redirect code",
                ))
            }
        };
        Ok(Self {
            scheme,
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            port,
            path,
            status,
            strip_query: r.strip_query,
        })
    }
}

impl TryFrom<&pb::DirectResponseAction> for DirectResponse {
    type Error = ValidationError;

    fn try_from(d: &pb::DirectResponseAction) -> Result<Self> {
        if !(200..600).contains(&d.status) {
            return Err(ValidationError::new("status", "must be in [200, 600)"));
        }
        let body = d
            .body
            .as_ref()
            .map(|b| data_source(b).map_err(|e| e.within("body")))
            .transpose()?;
        Ok(Self {
            status: d.status as u16,
            body,
        })
    }
}

pub(crate) fn data_source(d: &core::DataSource) -> Result<Vec<u8>> {
    use core::data_source::Specifier as S;
    match d.specifier.as_ref() {
        Some(S::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(S::InlineBytes(b)) => Ok(b.clone()),
        Some(_) => Err(ValidationError::new(
            "",
            "only inline_string and inline_bytes are supported here",
        )),
        None => Err(ValidationError::new(
            "",
            "one of inline_string or inline_bytes is required",
        )),
    }
}

fn stream_duration(d: Option<&pb::route_action::MaxStreamDuration>) -> Result<StreamDuration> {
    let Some(d) = d else {
        return Ok(StreamDuration::default());
    };
    let at = |field: &str| format!("max_stream_duration.{field}");
    let exact = |v: Option<&crate::pb::google::protobuf::Duration>, field: &str| {
        v.map(|v| crate::util::duration(v, &at(field))).transpose()
    };
    Ok(StreamDuration {
        max: exact(d.max_stream_duration.as_ref(), "max_stream_duration")?,
        grpc_timeout_header_max: exact(
            d.grpc_timeout_header_max.as_ref(),
            "grpc_timeout_header_max",
        )?,
        grpc_timeout_header_offset: exact(
            d.grpc_timeout_header_offset.as_ref(),
            "grpc_timeout_header_offset",
        )?,
    })
}

fn validate_header_name(name: &str) -> Result<String> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty() {
        return Err(ValidationError::required(""));
    }
    if lower.starts_with(':') {
        // Pseudo-headers such as `:authority` are matchable in Envoy.
        return Ok(lower);
    }
    http::HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| ValidationError::new("", format!("{name:?} is not a valid header name")))?;
    Ok(lower)
}

/// Converts one level's header additions and removals.
pub fn mutations(
    add: &[core::HeaderValueOption],
    remove: &[String],
    add_field: &str,
    remove_field: &str,
) -> Result<HeaderMutations> {
    let add = add
        .iter()
        .enumerate()
        .map(|(i, o)| header_addition(o).map_err(|e| e.within(format!("{add_field}[{i}]"))))
        .collect::<Result<_>>()?;
    let remove = remove
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let n =
                validate_header_name(n).map_err(|e| e.within(format!("{remove_field}[{i}]")))?;
            if n.starts_with(':') || n == "host" {
                return Err(ValidationError::new(
                    format!("{remove_field}[{i}]"),
                    "pseudo-headers and host cannot be removed",
                ));
            }
            Ok(http::HeaderName::from_bytes(n.as_bytes()).expect("validated above"))
        })
        .collect::<Result<_>>()?;
    Ok(HeaderMutations { add, remove })
}

pub(crate) fn header_addition(o: &core::HeaderValueOption) -> Result<HeaderAddition> {
    use core::header_value_option::HeaderAppendAction as A;
    let header = o
        .header
        .as_ref()
        .ok_or_else(|| ValidationError::required("header"))?;
    let name = validate_header_name(&header.key).map_err(|e| e.within("header.key"))?;
    if name.starts_with(':') || name == "host" {
        return Err(ValidationError::new(
            "header.key",
            "pseudo-headers and host cannot be added",
        ));
    }
    if header.value.contains('%') {
        return Err(ValidationError::new(
            "header.value",
            "command operators (%...%) are not supported",
        ));
    }
    let value = http::HeaderValue::from_str(&header.value)
        .map_err(|_| ValidationError::new("header.value", "not a valid header value"))?;
    let action = match (
        o.append.as_ref().map(|v| v.value),
        A::try_from(o.append_action),
    ) {
        (Some(_), Ok(a)) if a != A::AppendIfExistsOrAdd => {
            return Err(ValidationError::new(
                "append",
                "append and append_action cannot both be set",
            ))
        }
        (Some(true), _) => AppendAction::AppendIfExistsOrAdd,
        (Some(false), _) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(A::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
        (None, Ok(A::AddIfAbsent)) => AppendAction::AddIfAbsent,
        (None, Ok(A::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(A::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
        (None, Err(_)) => return Err(ValidationError::new("append_action", "unknown action")),
    };
    let name = http::HeaderName::from_bytes(name.as_bytes()).expect("validated above");
    Ok(HeaderAddition {
        name,
        value,
        action,
        keep_empty_value: o.keep_empty_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_takes_its_stream_duration_from_grpc_timeout_capped_and_offset() {
        let ms = Duration::from_millis;
        let honoured = StreamDuration {
            max: Some(ms(9_000)),
            grpc_timeout_header_max: Some(ms(1_000)),
            grpc_timeout_header_offset: Some(ms(100)),
        };
        assert_eq!(honoured.limit(Some(ms(500)), None), Some(ms(400)));
        assert_eq!(
            honoured.limit(Some(ms(5_000)), None),
            Some(ms(900)),
            "capped"
        );
        assert_eq!(
            honoured.limit(Some(ms(50)), None),
            None,
            "the offset eats it all"
        );
        assert_eq!(
            honoured.limit(None, Some(ms(7))),
            Some(ms(9_000)),
            "no header: the route's"
        );
        let uncapped = StreamDuration {
            grpc_timeout_header_max: Some(Duration::ZERO),
            ..StreamDuration::default()
        };
        assert_eq!(uncapped.limit(Some(ms(60_000)), None), Some(ms(60_000)));
        assert_eq!(
            uncapped.limit(None, Some(ms(7))),
            Some(ms(7)),
            "the manager's"
        );
        let lifted = StreamDuration {
            max: Some(Duration::ZERO),
            ..StreamDuration::default()
        };
        assert_eq!(
            lifted.limit(Some(ms(5)), Some(ms(7))),
            None,
            "not honoured, and lifted"
        );
    }

    fn table(yaml: &str) -> Result<RouteTable> {
        let rc: pb::RouteConfiguration =
            crate::decode::from_yaml(yaml, "envoy.config.route.v3.RouteConfiguration")?;
        RouteTable::try_from(&rc)
    }

    #[test]
    fn invalid_regex_names_its_route() {
        let err = table(
            "virtual_hosts: [{name: a, domains: ['*'], routes: [
               {match: {prefix: /}, route: {cluster: c}},
               {match: {safe_regex: {regex: '(['}}, route: {cluster: c}}]}]",
        )
        .unwrap_err();
        assert_eq!(
            err.path,
            "virtual_hosts[0].routes[1].match.safe_regex.regex"
        );
    }

    #[test]
    fn bad_retry_condition_is_rejected() {
        let err = table(
            "virtual_hosts: [{name: a, domains: ['*'], routes: [
               {match: {prefix: /}, route: {cluster: c, retry_policy: {retry_on: 'envoy-ratelimited'}}}]}]",
        )
        .unwrap_err();
        assert_eq!(
            err.path,
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on"
        );
    }

    #[test]
    fn duplicate_domains_are_rejected() {
        let err =
            table("virtual_hosts: [{name: a, domains: ['x.com']}, {name: b, domains: ['X.com']}]")
                .unwrap_err();
        assert_eq!(err.path, "virtual_hosts[1].domains");
    }

    #[test]
    fn path_matchers() {
        let t = table(
            "virtual_hosts: [{name: a, domains: ['*'], routes: [
               {match: {path_separated_prefix: /api}, route: {cluster: c}},
               {match: {prefix: /CaSe, case_sensitive: false}, route: {cluster: c}},
               {match: {safe_regex: {regex: '/v[0-9]+/.*'}}, route: {cluster: c}}]}]",
        )
        .unwrap();
        let r = &t.virtual_hosts[0].routes;
        assert!(r[0].matcher.matches_path("/api"));
        assert!(r[0].matcher.matches_path("/api/x?q"));
        assert!(!r[0].matcher.matches_path("/apix"));
        assert!(r[1].matcher.matches_path("/case/x"));
        assert!(r[2].matcher.matches_path("/v12/x?y=1"));
        assert!(!r[2].matcher.matches_path("/x/v12/x"));
    }

    #[test]
    fn substitution_translates_group_references() {
        assert_eq!(re2_substitution(r"/\1/$x\\"), "/${1}/$$x\\");
    }

    #[test]
    fn header_value_formatters_are_rejected() {
        let err = table("request_headers_to_add: [{header: {key: x, value: '%START_TIME%'}}]")
            .unwrap_err();
        assert_eq!(err.path, "request_headers_to_add[0].header.value");
    }
}
