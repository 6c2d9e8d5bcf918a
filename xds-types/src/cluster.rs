//! Validated `Cluster`, and the `ClusterLoadAssignment` that carries its endpoints
//! (inline for STATIC and DNS clusters, a resource of its own for EDS clusters).

use std::net::IpAddr;
use std::time::Duration;

use crate::config_source::{config_source, Origin};
use crate::error::{Result, ValidationError};
pub use crate::health_check::HealthCheck;
pub use crate::lb::{LbConfig, LbPolicy};
pub use crate::outlier::OutlierDetection;
use crate::pb::envoy::config::cluster::v3 as pb;
use crate::pb::envoy::config::core::v3 as core;
use crate::pb::envoy::config::endpoint::v3 as endpoint;
use crate::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use crate::tls::{self, UpstreamTls};
use crate::type_urls;
use crate::util::{duration, fingerprint, optional_timeout, unpack_any};

/// Envoy's default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// Envoy's default idle timeout of upstream connections.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A named group of upstream endpoints and how to reach them.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    /// An aggregate cluster (`envoy.clusters.aggregate`): these clusters, in priority
    /// order; a request goes to one of them by their health. Empty for other clusters.
    pub aggregate: Vec<String>,
    pub lb: LbConfig,
    pub connect_timeout: Duration,
    pub endpoints: Vec<LbEndpoint>,
    /// The assignment's `overprovisioning_factor` in percent (Envoy's default 140).
    pub overprovisioning_factor: u32,
    pub protocol: UpstreamProtocol,
    /// PINGs on HTTP/2 upstream connections (`connection_keepalive`).
    pub http2_keepalive: Option<crate::hcm::Http2Keepalive>,
    /// Idle pooled connections are closed after this long; `None` keeps them.
    pub idle_timeout: Option<Duration>,
    pub dns_lookup_family: DnsLookupFamily,
    /// Set for EDS clusters: where their endpoints come from.
    pub eds: Option<EdsConfig>,
    /// TLS to the endpoints.
    pub tls: Option<UpstreamTls>,
    /// `circuit_breakers` for the default priority (Envoy's defaults when absent).
    pub circuit_breakers: Thresholds,
    /// Close a connection after this many requests; `None`: no limit.
    pub max_requests_per_connection: Option<u32>,
    /// Close a connection this long after it was made; `None`: no limit.
    pub max_connection_duration: Option<Duration>,
    /// TCP keepalive on upstream connections (`upstream_connection_options`).
    pub keepalive: Option<crate::listener::Keepalive>,
    /// Active health checking of the hosts.
    pub health_check: Option<HealthCheck>,
    /// Passive health checking: ejecting hosts for the errors they return.
    pub outlier_detection: Option<OutlierDetection>,
    /// A host removed from discovery goes at once, even while it passes health checks
    /// (else it stays, `/pending_dynamic_removal`, until it fails one).
    pub ignore_health_on_host_removal: bool,
    /// Hash of the cluster's proto: equal for an unchanged cluster across updates.
    pub fingerprint: u64,
}

/// Envoy's `CircuitBreakers.Thresholds`: what a cluster may have in flight at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_requests: usize,
    pub max_retries: usize,
    /// When set, replaces `max_retries`.
    pub retry_budget: Option<RetryBudget>,
}

impl Default for Thresholds {
    /// Envoy's defaults: 1024 connections, pending requests and requests, 3 retries.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// Envoy's `RetryBudget`: retries in flight as a share of the requests in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Default 20 %.
    pub budget_percent: f64,
    /// Default 3.
    pub min_retry_concurrency: u32,
}

fn circuit_breakers(c: &pb::Cluster) -> Result<Thresholds> {
    let Some(breakers) = c.circuit_breakers.as_ref() else {
        return Ok(Thresholds::default());
    };
    if !breakers.per_host_thresholds.is_empty() {
        return Err(ValidationError::unsupported(
            "circuit_breakers.per_host_thresholds",
        ));
    }
    let mut out = Thresholds::default();
    let mut seen = Vec::new();
    for (i, t) in breakers.thresholds.iter().enumerate() {
        let path = format!("circuit_breakers.thresholds[{i}]");
        if seen.contains(&t.priority) {
            return Err(ValidationError::new(
                format!("{path}.priority"),
                "one threshold per priority",
            ));
        }
        seen.push(t.priority);
        // Routes all use the default priority: HIGH thresholds are kept but never reached.
        if t.priority != core::RoutingPriority::Default as i32 {
            continue;
        }
        let value = |v: Option<&crate::pb::google::protobuf::UInt32Value>, default: usize| {
            v.map_or(default, |v| v.value as usize)
        };
        out = Thresholds {
            max_connections: value(t.max_connections.as_ref(), out.max_connections),
            max_pending_requests: value(t.max_pending_requests.as_ref(), out.max_pending_requests),
            max_requests: value(t.max_requests.as_ref(), out.max_requests),
            max_retries: value(t.max_retries.as_ref(), out.max_retries),
            retry_budget: t.retry_budget.as_ref().map(|b| RetryBudget {
                budget_percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                min_retry_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
            }),
        };
        if let Some(b) = t.retry_budget.as_ref() {
            if b.budget_interval.is_some() {
                return Err(ValidationError::unsupported(format!(
                    "{path}.retry_budget.budget_interval"
                )));
            }
        }
        if t.max_connection_pools.is_some() {
            return Err(ValidationError::unsupported(format!(
                "{path}.max_connection_pools"
            )));
        }
    }
    Ok(out)
}

/// A cluster received over xDS: as [`Cluster::try_from`]. (Upstream TLS files name
/// paths on the node, as in Envoy.)
pub fn dynamic_cluster(c: &pb::Cluster) -> Result<Cluster> {
    Cluster::try_from(c)
}

/// Where an EDS cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdsConfig {
    /// The `ClusterLoadAssignment` to subscribe to: `service_name`, else the cluster name.
    pub service_name: String,
    /// How long the cluster warms waiting for its endpoints before it goes live with none;
    /// `None` waits forever.
    pub initial_fetch_timeout: Option<Duration>,
    pub origin: Origin,
}

/// The endpoints of one cluster, as an EDS `ClusterLoadAssignment` resource delivers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The EDS name (`cluster_name` of the resource).
    pub name: String,
    pub endpoints: Vec<LbEndpoint>,
    /// `policy.overprovisioning_factor` in percent (default 140).
    pub overprovisioning_factor: u32,
}

impl Assignment {
    /// No endpoints: what an EDS cluster goes live with when its endpoints never came.
    pub fn empty(name: &str) -> Self {
        Self {
            name: name.to_string(),
            endpoints: Vec::new(),
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
        }
    }
}

impl TryFrom<&endpoint::ClusterLoadAssignment> for Assignment {
    type Error = ValidationError;

    fn try_from(la: &endpoint::ClusterLoadAssignment) -> Result<Self> {
        if la.cluster_name.is_empty() {
            return Err(ValidationError::required("cluster_name"));
        }
        Ok(Self {
            name: la.cluster_name.clone(),
            endpoints: endpoints(la, Discovery::Eds)?,
            overprovisioning_factor: overprovisioning_factor(la)?,
        })
    }
}

impl Cluster {
    /// The EDS resource this cluster's endpoints come from, if it is an EDS cluster.
    pub fn eds_name(&self) -> Option<&str> {
        self.eds.as_ref().map(|e| e.service_name.as_str())
    }
}

/// How the endpoint addresses are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Addresses are IP literals.
    Static,
    /// Every address of every hostname is an endpoint, re-resolved at this rate.
    StrictDns { refresh: Duration },
    /// One hostname; connections go to the first address it resolves to.
    LogicalDns { refresh: Duration },
    /// IP endpoints delivered over EDS as a separate resource.
    Eds,
}

/// Which IP family DNS clusters use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

/// HTTP version spoken to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// HTTP/2 when the TLS handshake negotiates `h2` by ALPN, else HTTP/1.1
    /// (`auto_config`).
    Auto,
    /// The downstream request's own: HTTP/2 for an HTTP/2 request, else HTTP/1.1
    /// (`use_downstream_protocol_config` with both protocols configured).
    Downstream,
}

/// One endpoint, its weight and where it sits (priority, locality).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbEndpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    /// The `health_status` discovery reported.
    pub health: EdsHealth,
    /// 0 is the highest priority; lower ones take traffic as higher ones fail.
    pub priority: u32,
    pub locality: Locality,
    /// The locality's `load_balancing_weight`, for locality-weighted load balancing.
    pub locality_weight: Option<u32>,
}

/// Where an endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// An IP literal (STATIC and EDS) or a hostname (DNS clusters), and a port.
    Socket { host: String, port: u16 },
    /// A Unix domain socket (`pipe`): a path, or `@name` in the abstract namespace — how a
    /// sidecar reaches its local agent (Istio's xDS and SDS sockets).
    Pipe(String),
}

/// An endpoint's `health_status` as discovery reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdsHealth {
    /// `UNKNOWN` (the default) and `HEALTHY`: eligible.
    Healthy,
    /// `UNHEALTHY` and `TIMEOUT`: Envoy's `/failed_eds_health`.
    Unhealthy,
    /// `DRAINING`: Envoy's `/eds_status_draining`.
    Draining,
    /// `DEGRADED`: Envoy's `/degraded_eds_health`; used only when no healthy host is left.
    Degraded,
}

/// Where an endpoint runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// A `typed_dns_resolver_config` that only picks a resolver implementation; sluice asks the
/// system resolver, which is what both mean when no name servers are given.
fn dns_resolver(config: Option<&core::TypedExtensionConfig>, path: &str) -> Result<()> {
    let Some(config) = config else {
        return Ok(());
    };
    let any = config
        .typed_config
        .as_ref()
        .ok_or_else(|| ValidationError::required(format!("{path}.typed_config")))?;
    match any.type_url.as_str() {
        // The field policy refuses a c-ares config that names its own resolvers.
        type_urls::GETADDRINFO_DNS_RESOLVER | type_urls::CARES_DNS_RESOLVER => Ok(()),
        other => Err(ValidationError::new(
            path,
            format!(
                "{} ({}) is not supported by sluice",
                config.name,
                other.rsplit('/').next().unwrap_or_default()
            ),
        )),
    }
}

/// A `cluster_type` extension sluice implements.
enum Custom {
    Dns(Discovery, DnsLookupFamily),
    /// `envoy.clusters.aggregate`: the clusters, in priority order.
    Aggregate(Vec<String>),
}

fn custom_cluster(custom: &pb::cluster::CustomClusterType) -> Result<Custom> {
    use crate::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig;
    let path = "cluster_type.typed_config";
    match custom.typed_config.as_ref().map(|a| a.type_url.as_str()) {
        Some(type_urls::AGGREGATE_CLUSTER) => {
            let any = custom.typed_config.as_ref().expect("matched");
            let config: ClusterConfig = unpack_any(any, type_urls::AGGREGATE_CLUSTER, path)?;
            if config.clusters.is_empty() {
                return Err(ValidationError::required(format!("{path}.clusters")));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = config.clusters.iter().find(|c| !seen.insert(c.as_str())) {
                return Err(ValidationError::new(
                    format!("{path}.clusters"),
                    format!("{twice:?} is listed twice"),
                ));
            }
            Ok(Custom::Aggregate(config.clusters))
        }
        _ => {
            let (discovery, family) = dns_cluster(custom)?;
            Ok(Custom::Dns(discovery, family))
        }
    }
}

/// The `envoy.cluster.dns` extension (`cluster_type` with a `DnsCluster`), which newer
/// control planes emit instead of `type: STRICT_DNS` / `LOGICAL_DNS`: the same discovery,
/// its refresh rate and lookup family in the extension's config.
fn dns_cluster(custom: &pb::cluster::CustomClusterType) -> Result<(Discovery, DnsLookupFamily)> {
    use crate::pb::envoy::extensions::clusters::common::dns::v3::DnsLookupFamily as F;
    use crate::pb::envoy::extensions::clusters::dns::v3::DnsCluster;
    let path = "cluster_type.typed_config";
    let any = custom
        .typed_config
        .as_ref()
        .ok_or_else(|| ValidationError::required(path))?;
    if any.type_url != type_urls::DNS_CLUSTER {
        return Err(ValidationError::new(
            "cluster_type",
            format!(
                "{} ({}) is not supported by sluice (it implements envoy.cluster.dns and envoy.clusters.aggregate)",
                custom.name,
                any.type_url.rsplit('/').next().unwrap_or_default()
            ),
        ));
    }
    let config: DnsCluster = unpack_any(any, type_urls::DNS_CLUSTER, path)?;
    dns_resolver(
        config.typed_dns_resolver_config.as_ref(),
        &format!("{path}.typed_dns_resolver_config"),
    )?;
    let refresh = optional_timeout(
        config.dns_refresh_rate.as_ref(),
        &format!("{path}.dns_refresh_rate"),
        Some(DEFAULT_DNS_REFRESH),
    )?
    .unwrap_or(DEFAULT_DNS_REFRESH);
    if refresh < Duration::from_millis(1) {
        return Err(ValidationError::new(
            format!("{path}.dns_refresh_rate"),
            "must be at least 1ms",
        ));
    }
    let family = match F::try_from(config.dns_lookup_family) {
        Ok(F::Unspecified | F::Auto) => DnsLookupFamily::Auto,
        Ok(F::V4Only) => DnsLookupFamily::V4Only,
        Ok(F::V6Only) => DnsLookupFamily::V6Only,
        Ok(F::V4Preferred) => DnsLookupFamily::V4Preferred,
        Ok(F::All) => DnsLookupFamily::All,
        Err(_) => {
            return Err(ValidationError::new(
                format!("{path}.dns_lookup_family"),
                "unknown value",
            ))
        }
    };
    let discovery = match config.all_addresses_in_single_endpoint {
        true => Discovery::LogicalDns { refresh },
        false => Discovery::StrictDns { refresh },
    };
    Ok((discovery, family))
}

impl TryFrom<&pb::Cluster> for Cluster {
    type Error = ValidationError;

    fn try_from(c: &pb::Cluster) -> Result<Self> {
        use pb::cluster::{ClusterDiscoveryType as T, DiscoveryType as D};
        if c.name.is_empty() {
            return Err(ValidationError::required("name"));
        }
        let refresh = optional_timeout(
            c.dns_refresh_rate.as_ref(),
            "dns_refresh_rate",
            Some(DEFAULT_DNS_REFRESH),
        )?
        .unwrap_or(DEFAULT_DNS_REFRESH);
        if refresh < Duration::from_millis(1) {
            return Err(ValidationError::new(
                "dns_refresh_rate",
                "must be at least 1ms",
            ));
        }
        let custom = match c.cluster_discovery_type.as_ref() {
            Some(T::ClusterType(custom)) => Some(custom_cluster(custom)?),
            _ => None,
        };
        let (dns_cluster, aggregate) = match custom {
            Some(Custom::Dns(discovery, family)) => (Some((discovery, family)), Vec::new()),
            Some(Custom::Aggregate(clusters)) => {
                if clusters.contains(&c.name) {
                    return Err(ValidationError::new(
                        "cluster_type.typed_config.clusters",
                        "an aggregate cluster cannot include itself",
                    ));
                }
                (None, clusters)
            }
            None => (None, Vec::new()),
        };
        let discovery = match c.cluster_discovery_type.as_ref() {
            None => Discovery::Static,
            Some(T::ClusterType(_)) => match dns_cluster {
                Some((discovery, _)) => discovery,
                None => Discovery::Static,
            },
            Some(T::Type(t)) => match D::try_from(*t) {
                Ok(D::Static) => Discovery::Static,
                Ok(D::StrictDns) => Discovery::StrictDns { refresh },
                Ok(D::LogicalDns) => Discovery::LogicalDns { refresh },
                Ok(D::Eds) => Discovery::Eds,
                Ok(other) => {
                    return Err(ValidationError::new(
                        "type",
                        format!("cluster type {} is not supported", other.as_str_name()),
                    ))
                }
                Err(_) => return Err(ValidationError::new("type", "unknown cluster type")),
            },
        };
        dns_resolver(
            c.typed_dns_resolver_config.as_ref(),
            "typed_dns_resolver_config",
        )?;
        let lb = if aggregate.is_empty() {
            crate::lb::lb_config(c)?
        } else {
            use pb::cluster::LbPolicy as L;
            // As Envoy: the aggregate's own balancing is its clusters' priority order.
            if L::try_from(c.lb_policy) != Ok(L::ClusterProvided) {
                return Err(ValidationError::new(
                    "lb_policy",
                    "an aggregate cluster needs CLUSTER_PROVIDED",
                ));
            }
            if c.load_assignment.is_some() {
                return Err(ValidationError::new(
                    "load_assignment",
                    "an aggregate cluster has no endpoints of its own",
                ));
            }
            crate::lb::LbConfig::default()
        };
        let dns_lookup_family = if let Some((_, family)) = dns_cluster {
            family
        } else {
            use pb::cluster::DnsLookupFamily as F;
            match F::try_from(c.dns_lookup_family) {
                Ok(F::Auto) => DnsLookupFamily::Auto,
                Ok(F::V4Only) => DnsLookupFamily::V4Only,
                Ok(F::V6Only) => DnsLookupFamily::V6Only,
                Ok(F::V4Preferred) => DnsLookupFamily::V4Preferred,
                Ok(F::All) => DnsLookupFamily::All,
                Err(_) => return Err(ValidationError::new("dns_lookup_family", "unknown value")),
            }
        };
        let eds = match (discovery, c.eds_cluster_config.as_ref()) {
            (Discovery::Eds, config) => {
                let config =
                    config.ok_or_else(|| ValidationError::required("eds_cluster_config"))?;
                let source = config
                    .eds_config
                    .as_ref()
                    .ok_or_else(|| ValidationError::required("eds_cluster_config.eds_config"))?;
                let source = config_source(source, "eds_cluster_config.eds_config", true)?;
                Some(EdsConfig {
                    service_name: if config.service_name.is_empty() {
                        c.name.clone()
                    } else {
                        config.service_name.clone()
                    },
                    initial_fetch_timeout: source.initial_fetch_timeout,
                    origin: source.origin,
                })
            }
            (_, Some(_)) => {
                return Err(ValidationError::new(
                    "eds_cluster_config",
                    "only valid with type EDS",
                ))
            }
            (_, None) => None,
        };
        let (endpoints, overprovisioning_factor) = match c.load_assignment.as_ref() {
            Some(_) if eds.is_some() => {
                return Err(ValidationError::new(
                    "load_assignment",
                    "EDS clusters receive their endpoints over EDS",
                ))
            }
            Some(la) => (
                endpoints(la, discovery).map_err(|e| e.within("load_assignment"))?,
                overprovisioning_factor(la).map_err(|e| e.within("load_assignment"))?,
            ),
            None => (Vec::new(), DEFAULT_OVERPROVISIONING_FACTOR),
        };
        if matches!(discovery, Discovery::LogicalDns { .. }) && endpoints.len() != 1 {
            return Err(ValidationError::new(
                "load_assignment",
                "LOGICAL_DNS clusters need exactly one endpoint",
            ));
        }
        let options = protocol_options(c)?;
        let mut tls = match c.transport_socket.as_ref() {
            Some(socket) => Some(tls::upstream(socket).map_err(|e| e.within("transport_socket"))?),
            None => None,
        };
        if let Some(t) = tls.as_mut() {
            t.auto_sni |= options.auto_sni;
            t.auto_san_validation |= options.auto_san_validation;
        } else if options.auto_sni || options.auto_san_validation {
            return Err(ValidationError::new(
                "typed_extension_protocol_options",
                "auto_sni and auto_san_validation need a TLS transport_socket",
            ));
        }
        #[allow(deprecated)]
        let legacy_max_requests = c.max_requests_per_connection.as_ref().map(|v| v.value);
        let keepalive = c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref())
            .map(|k| crate::listener::Keepalive {
                time: k
                    .keepalive_time
                    .as_ref()
                    .map(|v| Duration::from_secs(v.value.into())),
                interval: k
                    .keepalive_interval
                    .as_ref()
                    .map(|v| Duration::from_secs(v.value.into())),
                probes: k.keepalive_probes.as_ref().map(|v| v.value),
            });
        let health_check = match c.health_checks.as_slice() {
            [] => None,
            [h] => Some(HealthCheck::try_from(h).map_err(|e| e.within("health_checks[0]"))?),
            _ => {
                return Err(ValidationError::new(
                    "health_checks",
                    "at most one health check per cluster is supported",
                ))
            }
        };
        let outlier_detection = c
            .outlier_detection
            .as_ref()
            .map(|o| OutlierDetection::try_from(o).map_err(|e| e.within("outlier_detection")))
            .transpose()?;
        Ok(Self {
            health_check,
            outlier_detection,
            ignore_health_on_host_removal: c.ignore_health_on_host_removal,
            overprovisioning_factor,
            circuit_breakers: circuit_breakers(c)?,
            max_requests_per_connection: options
                .max_requests_per_connection
                .or(legacy_max_requests)
                .filter(|n| *n > 0),
            max_connection_duration: options.max_connection_duration,
            keepalive,
            name: c.name.clone(),
            discovery,
            aggregate,
            lb,
            connect_timeout: match c.connect_timeout.as_ref() {
                Some(d) => duration(d, "connect_timeout")?,
                None => DEFAULT_CONNECT_TIMEOUT,
            },
            endpoints,
            protocol: options.protocol,
            http2_keepalive: options.http2_keepalive,
            idle_timeout: options.idle_timeout,
            dns_lookup_family,
            eds,
            tls,
            fingerprint: fingerprint(c, "envoy.config.cluster.v3.Cluster"),
        })
    }
}

/// What a cluster's `HttpProtocolOptions` decide.
struct ProtocolOptions {
    protocol: UpstreamProtocol,
    http2_keepalive: Option<crate::hcm::Http2Keepalive>,
    idle_timeout: Option<Duration>,
    max_requests_per_connection: Option<u32>,
    max_connection_duration: Option<Duration>,
    auto_sni: bool,
    auto_san_validation: bool,
}

/// An upstream's HTTP/2 settings: only `connection_keepalive` applies; the others sluice
/// applies downstream only, so on a cluster they are refused.
fn upstream_http2_settings(
    o: &crate::pb::envoy::config::core::v3::Http2ProtocolOptions,
    path: &str,
) -> Result<Option<crate::hcm::Http2Keepalive>> {
    let others = crate::pb::envoy::config::core::v3::Http2ProtocolOptions {
        connection_keepalive: None,
        ..o.clone()
    };
    if others != Default::default() {
        return Err(ValidationError::new(
            path,
            "HTTP/2 settings other than connection_keepalive apply to downstream connections only; an upstream's must be unset",
        ));
    }
    crate::hcm::http2_keepalive(o, path)
}

fn protocol_options(c: &pb::Cluster) -> Result<ProtocolOptions> {
    let http2_keepalive = match &c.http2_protocol_options {
        Some(o) => upstream_http2_settings(o, "http2_protocol_options")?,
        None => None,
    };
    let mut out = ProtocolOptions {
        http2_keepalive,
        protocol: if c.http2_protocol_options.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        },
        idle_timeout: Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
        max_requests_per_connection: None,
        max_connection_duration: None,
        auto_sni: false,
        auto_san_validation: false,
    };
    for (key, any) in &c.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[{key:?}]");
        if key != type_urls::HTTP_PROTOCOL_OPTIONS_KEY {
            return Err(ValidationError::new(path, "unsupported protocol options"));
        }
        let options: upstream_http::HttpProtocolOptions =
            unpack_any(any, type_urls::HTTP_PROTOCOL_OPTIONS, &path)?;
        use upstream_http::http_protocol_options::{
            explicit_http_config::ProtocolConfig as P, UpstreamProtocolOptions as U,
        };
        match options.upstream_protocol_options {
            None => {}
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(P::HttpProtocolOptions(_)) => out.protocol = UpstreamProtocol::Http1,
                Some(P::Http2ProtocolOptions(o)) => {
                    out.http2_keepalive = upstream_http2_settings(
                        &o,
                        &format!("{path}.explicit_http_config.http2_protocol_options"),
                    )?;
                    out.protocol = UpstreamProtocol::Http2
                }
                _ => {
                    return Err(ValidationError::new(
                        format!("{path}.explicit_http_config"),
                        "one of http_protocol_options or http2_protocol_options is required",
                    ))
                }
            },
            Some(U::AutoConfig(auto)) => {
                if let Some(o) = &auto.http2_protocol_options {
                    out.http2_keepalive = upstream_http2_settings(
                        o,
                        &format!("{path}.auto_config.http2_protocol_options"),
                    )?;
                }
                if c.transport_socket.is_none() {
                    return Err(ValidationError::new(
                        format!("{path}.auto_config"),
                        "chooses the protocol by ALPN, which needs a TLS transport_socket",
                    ));
                }
                out.protocol = UpstreamProtocol::Auto;
            }
            Some(U::UseDownstreamProtocolConfig(d)) => {
                let at = format!("{path}.use_downstream_protocol_config");
                if d.http3_protocol_options.is_some() {
                    return Err(ValidationError::new(
                        format!("{at}.http3_protocol_options"),
                        "HTTP/3 upstream is not supported",
                    ));
                }
                // As Envoy: an HTTP/2 request goes upstream over HTTP/2 only when HTTP/2
                // is configured; everything else over HTTP/1.1.
                out.protocol = match &d.http2_protocol_options {
                    None => UpstreamProtocol::Http1,
                    Some(o) => {
                        out.http2_keepalive =
                            upstream_http2_settings(o, &format!("{at}.http2_protocol_options"))?;
                        if c.transport_socket.is_some() {
                            return Err(ValidationError::new(
                                at,
                                "over TLS the protocol is chosen by ALPN: use auto_config",
                            ));
                        }
                        UpstreamProtocol::Downstream
                    }
                };
            }
        }
        if let Some(common) = options.common_http_protocol_options.as_ref() {
            let at = format!("{path}.common_http_protocol_options");
            for (set, field) in [
                (
                    common.headers_with_underscores_action != 0,
                    "headers_with_underscores_action",
                ),
                (common.max_stream_duration.is_some(), "max_stream_duration"),
            ] {
                if set {
                    return Err(ValidationError::new(
                        format!("{at}.{field}"),
                        "applies to downstream connections only",
                    ));
                }
            }
            out.idle_timeout = http_idle_timeout(common, &at, out.idle_timeout)?;
            out.max_requests_per_connection =
                common.max_requests_per_connection.as_ref().map(|v| v.value);
            out.max_connection_duration = optional_timeout(
                common.max_connection_duration.as_ref(),
                &format!("{at}.max_connection_duration"),
                None,
            )?;
        }
        if let Some(u) = options.upstream_http_protocol_options.as_ref() {
            if !u.override_auto_sni_header.is_empty() {
                return Err(ValidationError::unsupported(format!(
                    "{path}.upstream_http_protocol_options.override_auto_sni_header"
                )));
            }
            out.auto_sni = u.auto_sni;
            out.auto_san_validation = u.auto_san_validation;
        }
    }
    Ok(out)
}

/// Envoy's `HttpProtocolOptions.idle_timeout` (zero disables).
pub(crate) fn http_idle_timeout(
    options: &core::HttpProtocolOptions,
    path: &str,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    optional_timeout(
        options.idle_timeout.as_ref(),
        &format!("{path}.idle_timeout"),
        default,
    )
}

fn endpoints(
    la: &endpoint::ClusterLoadAssignment,
    discovery: Discovery,
) -> Result<Vec<LbEndpoint>> {
    use core::HealthStatus as H;
    let mut out = Vec::new();
    for (l, locality) in la.endpoints.iter().enumerate() {
        let lpath = format!("endpoints[{l}]");
        if locality.priority > MAX_PRIORITY {
            return Err(ValidationError::new(
                format!("{lpath}.priority"),
                format!("must be at most {MAX_PRIORITY}"),
            ));
        }
        let locality_weight = locality.load_balancing_weight.as_ref().map(|w| w.value);
        if locality_weight == Some(0) {
            return Err(ValidationError::new(
                format!("{lpath}.load_balancing_weight"),
                "must be at least 1",
            ));
        }
        let place = locality
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        for (e, lb) in locality.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.lb_endpoints[{e}]");
            let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) =
                lb.host_identifier.as_ref()
            else {
                return Err(ValidationError::required(format!("{epath}.endpoint")));
            };
            let address = ep
                .address
                .as_ref()
                .ok_or_else(|| ValidationError::required(format!("{epath}.endpoint.address")))?;
            let address = endpoint_address(address, discovery)
                .map_err(|e| e.within(format!("{epath}.endpoint.address")))?;
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |v| v.value);
            if weight == 0 {
                return Err(ValidationError::new(
                    format!("{epath}.load_balancing_weight"),
                    "must be at least 1",
                ));
            }
            let health = match H::try_from(lb.health_status) {
                Ok(H::Unknown | H::Healthy) => EdsHealth::Healthy,
                Ok(H::Unhealthy | H::Timeout) => EdsHealth::Unhealthy,
                Ok(H::Draining) => EdsHealth::Draining,
                Ok(H::Degraded) => EdsHealth::Degraded,
                Err(_) => {
                    return Err(ValidationError::new(
                        format!("{epath}.health_status"),
                        "unknown status",
                    ))
                }
            };
            out.push(LbEndpoint {
                address,
                weight,
                health,
                priority: locality.priority,
                locality: place.clone(),
                locality_weight,
            });
        }
    }
    Ok(out)
}

/// Envoy's default `overprovisioning_factor` (percent).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;
/// Highest priority level accepted (Envoy allows 128 levels).
const MAX_PRIORITY: u32 = 127;

fn overprovisioning_factor(la: &endpoint::ClusterLoadAssignment) -> Result<u32> {
    let Some(policy) = la.policy.as_ref() else {
        return Ok(DEFAULT_OVERPROVISIONING_FACTOR);
    };
    let factor = policy
        .overprovisioning_factor
        .as_ref()
        .map_or(DEFAULT_OVERPROVISIONING_FACTOR, |v| v.value);
    if factor == 0 {
        return Err(ValidationError::new(
            "policy.overprovisioning_factor",
            "must be greater than 0",
        ));
    }
    Ok(factor)
}

/// An endpoint's address: a socket address (an IP for STATIC and EDS clusters), or a
/// Unix socket outside DNS clusters (they resolve names).
fn endpoint_address(address: &core::Address, discovery: Discovery) -> Result<EndpointAddress> {
    use core::address::Address as A;
    if let Some(A::Pipe(pipe)) = address.address.as_ref() {
        if matches!(
            discovery,
            Discovery::StrictDns { .. } | Discovery::LogicalDns { .. }
        ) {
            return Err(ValidationError::new(
                "pipe",
                "a DNS cluster resolves hostnames; use STATIC or EDS for a Unix socket",
            ));
        }
        if pipe.path.is_empty() {
            return Err(ValidationError::required("pipe.path"));
        }
        return Ok(EndpointAddress::Pipe(pipe.path.clone()));
    }
    let (host, port) = socket_address(address)?;
    if matches!(discovery, Discovery::Static | Discovery::Eds) && host.parse::<IpAddr>().is_err() {
        return Err(ValidationError::new(
            "socket_address.address",
            format!("{host:?} is not an IP address (STATIC and EDS endpoints need IPs; use STRICT_DNS for hostnames)"),
        ));
    }
    Ok(EndpointAddress::Socket { host, port })
}

/// Host and port of an Envoy `Address` (TCP socket addresses only).
pub fn socket_address(address: &core::Address) -> Result<(String, u16)> {
    use core::address::Address as A;
    let sa =
        match address.address.as_ref() {
            Some(A::SocketAddress(sa)) => sa,
            Some(A::Pipe(_)) => return Err(ValidationError::new(
                "pipe",
                "Unix domain sockets are supported for listeners and cluster endpoints, not here",
            )),
            _ => return Err(ValidationError::required("socket_address")),
        };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(ValidationError::new(
            "socket_address.protocol",
            "only TCP is supported",
        ));
    }
    if sa.address.is_empty() {
        return Err(ValidationError::required("socket_address.address"));
    }
    let port = match sa.port_specifier.as_ref() {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(*p).map_err(|_| {
                ValidationError::new("socket_address.port_value", "must be at most 65535")
            })?
        }
        _ => return Err(ValidationError::required("socket_address.port_value")),
    };
    Ok((sa.address.clone(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Result<Cluster> {
        let c: pb::Cluster = crate::decode::from_yaml(yaml, "envoy.config.cluster.v3.Cluster")?;
        Cluster::try_from(&c)
    }

    #[test]
    fn a_unix_socket_endpoint_is_taken_outside_dns_clusters() {
        let with = |kind: &str| {
            cluster(&format!(
                "name: a\ntype: {kind}\nload_assignment: {{cluster_name: a, endpoints: [{{lb_endpoints: [
                 {{endpoint: {{address: {{pipe: {{path: '@agent'}}}}}}}}]}}]}}"
            ))
        };
        assert_eq!(
            with("STATIC").unwrap().endpoints[0].address,
            EndpointAddress::Pipe("@agent".into())
        );
        let err = with("STRICT_DNS").unwrap_err();
        assert_eq!(
            err.path,
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe"
        );
    }

    #[test]
    fn static_cluster_needs_ips() {
        let err = cluster(
            "name: a\ntype: STATIC\nload_assignment: {cluster_name: a, endpoints: [{lb_endpoints: [
               {endpoint: {address: {socket_address: {address: localhost, port_value: 1}}}}]}]}",
        )
        .unwrap_err();
        assert_eq!(
            err.path,
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
        );
    }

    #[test]
    fn http2_via_typed_protocol_options() {
        let c = cluster(
            r#"name: a
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {}}
"#,
        )
        .unwrap();
        assert_eq!(c.protocol, UpstreamProtocol::Http2);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn an_upstream_takes_http2_keepalive_and_refuses_downstream_only_settings() {
        let options = |h2: &str| {
            cluster(&format!(
                r#"name: a
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {{http2_protocol_options: {h2}}}
"#
            ))
        };
        let c = options("{connection_keepalive: {interval: 30s, timeout: 5s}}").unwrap();
        assert_eq!(
            c.http2_keepalive,
            Some(crate::hcm::Http2Keepalive {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(5)
            })
        );
        let c = options("{connection_keepalive: {timeout: 5s}}").unwrap();
        assert_eq!(c.http2_keepalive, None, "no interval: no periodic PING");
        let err = options("{connection_keepalive: {interval: 1s}}").unwrap_err();
        assert!(err.path.ends_with("connection_keepalive.timeout"), "{err}");
        let err = options("{max_concurrent_streams: 10}").unwrap_err();
        assert!(
            err.path
                .ends_with("explicit_http_config.http2_protocol_options"),
            "{err}"
        );
    }

    #[test]
    fn eds_clusters_name_their_assignment_and_refuse_inline_endpoints() {
        let c = cluster(
            "name: web\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}, initial_fetch_timeout: 2s}, service_name: web-eds}",
        )
        .unwrap();
        assert_eq!(c.eds_name(), Some("web-eds"));
        assert_eq!(
            c.eds.unwrap().initial_fetch_timeout,
            Some(Duration::from_secs(2))
        );
        let err = cluster("name: web\ntype: EDS").unwrap_err();
        assert_eq!(err.path, "eds_cluster_config");
        let err = cluster(
            "name: web\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}}}\nload_assignment: {cluster_name: web}",
        )
        .unwrap_err();
        assert_eq!(err.path, "load_assignment");
    }

    #[test]
    fn assignments_need_ip_endpoints() {
        let la: endpoint::ClusterLoadAssignment = crate::decode::from_yaml(
            "cluster_name: web\nendpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: example.com, port_value: 80}}}}]}]",
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
        )
        .unwrap();
        let err = Assignment::try_from(&la).unwrap_err();
        assert_eq!(
            err.path,
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
        );
    }

    #[test]
    fn upstream_tls_takes_files_or_inline_pem() {
        let yaml = r#"name: xds
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: api.example
    common_tls_context:
      validation_context: { trusted_ca: { filename: /ca.pem } }
"#;
        let c = cluster(yaml).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.sni.as_deref(), Some("api.example"));
        assert!(matches!(
            tls.validation,
            Some(tls::ValidationSource::Static(tls::ValidationContext {
                trusted_ca: Some(tls::DataSource::File(_)),
                ..
            }))
        ));
        let inline = yaml.replace("filename: /ca.pem", "inline_string: x");
        assert_eq!(
            cluster(&inline).unwrap_err().path,
            "transport_socket.typed_config.common_tls_context.validation_context.trusted_ca"
        );
    }

    #[test]
    fn unsupported_lb_policy_is_named() {
        let err = cluster("name: a\nlb_policy: CLUSTER_PROVIDED").unwrap_err();
        assert_eq!(err.path, "lb_policy");
    }

    #[test]
    fn endpoints_keep_priority_locality_and_health() {
        let c = cluster(
            "name: a\nload_assignment: {cluster_name: a, policy: {overprovisioning_factor: 100}, endpoints: [
               {priority: 1, locality: {zone: z1}, load_balancing_weight: 3, lb_endpoints: [
                 {health_status: DRAINING, endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}",
        )
        .unwrap();
        assert_eq!(c.overprovisioning_factor, 100);
        let e = &c.endpoints[0];
        assert_eq!((e.priority, e.locality_weight), (1, Some(3)));
        assert_eq!(e.locality.zone, "z1");
        assert_eq!(e.health, EdsHealth::Draining);
    }

    #[test]
    fn the_dns_cluster_extension_is_strict_or_logical_dns() {
        let cluster = |config: &str| {
            let yaml = format!(
                "name: c\ncluster_type: {{name: envoy.cluster.dns, typed_config: {{'@type': type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster{config}}}}}\n\
                 load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: localhost, port_value: 80}}}}}}}}]}}]}}"
            );
            let raw: pb::Cluster =
                crate::decode::from_yaml(&yaml, "envoy.config.cluster.v3.Cluster")?;
            Cluster::try_from(&raw)
        };
        let strict = cluster(", dns_refresh_rate: 2s").unwrap();
        assert_eq!(
            strict.discovery,
            Discovery::StrictDns {
                refresh: Duration::from_secs(2)
            }
        );
        assert_eq!(strict.dns_lookup_family, DnsLookupFamily::Auto);
        let logical =
            cluster(", all_addresses_in_single_endpoint: true, dns_lookup_family: V6_ONLY")
                .unwrap();
        assert_eq!(
            logical.discovery,
            Discovery::LogicalDns {
                refresh: DEFAULT_DNS_REFRESH
            }
        );
        assert_eq!(logical.dns_lookup_family, DnsLookupFamily::V6Only);
        let err = cluster(", respect_dns_ttl: true").unwrap_err();
        assert!(err.path.contains("respect_dns_ttl"), "{err}");
        let err = cluster(
            ", typed_dns_resolver_config: {name: envoy.network.dns_resolver.cares, typed_config: \
             {'@type': type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, \
              resolvers: [{socket_address: {address: 10.0.0.53, port_value: 53}}]}}",
        )
        .unwrap_err();
        assert!(
            err.path
                .ends_with("typed_dns_resolver_config.typed_config.resolvers"),
            "{err}"
        );
    }

    #[test]
    fn an_aggregate_lists_its_clusters_and_needs_cluster_provided() {
        let aggregate = |extra: &str, clusters: &str| {
            cluster(&format!(
                "name: agg\n{extra}cluster_type: {{name: envoy.clusters.aggregate, typed_config: \
                 {{'@type': type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig, clusters: {clusters}}}}}"
            ))
        };
        let ok = aggregate("lb_policy: CLUSTER_PROVIDED\n", "[a, b]").unwrap();
        assert_eq!(ok.aggregate, ["a", "b"]);
        assert_eq!(aggregate("", "[a]").unwrap_err().path, "lb_policy");
        let err = aggregate("lb_policy: CLUSTER_PROVIDED\n", "[a, agg]").unwrap_err();
        assert!(err.message.contains("itself"), "{err}");
        let err = aggregate("lb_policy: CLUSTER_PROVIDED\n", "[a, a]").unwrap_err();
        assert!(err.message.contains("twice"), "{err}");
    }
}
