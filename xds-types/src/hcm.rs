//! Validated HTTP connection manager: its route table (inline, or named and delivered
//! over RDS) and its router filter.

use std::time::Duration;

use crate::access_log::AccessLog;
use crate::cluster::http_idle_timeout;
use crate::config_source::{config_source, Origin};
use crate::error::{Result, ValidationError};
use crate::http_filter::HttpFilters;
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3 as pb;
use crate::route::RouteTable;
use crate::util::optional_timeout;

/// Envoy's default downstream idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default stream idle timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default drain timeout.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `max_request_headers_kb`.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Envoy's default `max_headers_count`.
pub const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;

/// How a listener speaks HTTP to its clients and where its routes come from.
#[derive(Debug, Clone)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    /// Lowercased upgrade protocols (e.g. `websocket`) and whether they are enabled; a
    /// route may switch a listed one on or off, an unlisted one is refused.
    pub upgrades: Vec<(String, bool)>,
    /// Time allowed for the request headers; `None` = no limit (Envoy's default).
    pub request_headers_timeout: Option<Duration>,
    /// Close connections with no active request after this long.
    pub idle_timeout: Option<Duration>,
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    /// Client addresses whose requests are internal (`internal_address_config`): they get
    /// `x-envoy-internal: true` and keep the internal headers. None by default, as in
    /// Envoy since it made the internal addresses explicit.
    pub internal_addresses: Vec<crate::filter_chain::CidrRange>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub drain_timeout: Duration,
    /// Value of the `server` response header.
    pub server_name: String,
    /// What happens to `x-forwarded-client-cert` on requests over mutual TLS.
    pub forward_client_cert: ForwardClientCert,
    /// What the element sluice adds to `x-forwarded-client-cert` carries, besides
    /// `By` and `Hash`.
    pub client_cert_details: ClientCertDetails,
    /// The filters in front of the router.
    pub http_filters: HttpFilters,
    /// What happens to the path before filters and routing see it.
    pub path: PathPolicy,
    pub headers_with_underscores: UnderscoresAction,
    pub server_header: ServerHeader,
    pub strip_port: StripPort,
    pub http2: Http2Settings,
    pub http1: Http1Settings,
    /// Time allowed to receive the whole request (until it is sent upstream or the
    /// response starts); `None`: no limit (Envoy's default).
    pub request_timeout: Option<Duration>,
    /// A stream's whole lifetime; `None`: no limit (Envoy's default).
    pub max_stream_duration: Option<Duration>,
    /// A stream with no activity this long ends (Envoy's default 5 min); `None`: never.
    pub stream_idle_timeout: Option<Duration>,
    /// Optional filters of types Sluice does not implement, skipped (logged once).
    pub skipped_filters: Vec<String>,
    /// One line per stream, when it ends.
    pub access_log: Vec<AccessLog>,
    /// Spans for the streams, exported over OTLP; `None`: not traced.
    pub tracing: Option<crate::tracing::Tracing>,
}

/// `http_protocol_options` of the downstream HTTP/1 codec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Http1Settings {
    /// HTTP/1.0 requests are served; otherwise they are answered 426, as Envoy does by
    /// default.
    pub accept_http_10: bool,
    /// The `Host` of an HTTP/1.0 request that has none (`accept_http_10` only).
    pub default_host_for_http_10: Option<http::HeaderValue>,
}

/// Path normalisation, in Envoy's order: escaped slashes, then RFC 3986 normalisation,
/// then merging slashes. The upstream sees the result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathPolicy {
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

/// Envoy's `PathWithEscapedSlashesAction` (`%2F`, `%5C`, any case).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    #[default]
    Keep,
    Reject,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// Envoy's `HeadersWithUnderscoresAction`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnderscoresAction {
    #[default]
    Allow,
    Reject,
    Drop,
}

/// Envoy's `ServerHeaderTransformation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerHeader {
    #[default]
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// Whether the port is removed from `Host` before routing (and upstream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StripPort {
    #[default]
    Keep,
    /// Only when it is the listener's port.
    Matching,
    Any,
}

/// Downstream HTTP/2 settings; `None` keeps hyper's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http2Settings {
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window_size: Option<u32>,
    pub initial_connection_window_size: Option<u32>,
    pub keepalive: Option<Http2Keepalive>,
}

/// HTTP/2 PING keepalive (`connection_keepalive`): a peer that stops answering pings has
/// its connection closed, so a dead agent or a half-open connection through a NAT is
/// noticed within `interval + timeout` instead of when the next request hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// `connection_keepalive` of an `Http2ProtocolOptions` at `path`; `None` when absent or
/// when its interval is unset or zero (Envoy then sends no periodic ping).
pub(crate) fn http2_keepalive(
    o: &crate::pb::envoy::config::core::v3::Http2ProtocolOptions,
    path: &str,
) -> Result<Option<Http2Keepalive>> {
    let Some(k) = o.connection_keepalive.as_ref() else {
        return Ok(None);
    };
    let at = format!("{path}.connection_keepalive");
    let timeout = optional_timeout(k.timeout.as_ref(), &format!("{at}.timeout"), None)?
        .ok_or_else(|| ValidationError::new(format!("{at}.timeout"), "must be at least 1ms"))?;
    let interval = optional_timeout(k.interval.as_ref(), &format!("{at}.interval"), None)?;
    Ok(interval.map(|interval| Http2Keepalive { interval, timeout }))
}

/// Envoy's `ForwardClientCertDetails`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Remove the header (Envoy's default).
    #[default]
    Sanitize,
    /// Forward it as received, on mutual TLS connections only.
    ForwardOnly,
    /// Append this connection's element, on mutual TLS connections; else remove it.
    AppendForward,
    /// Replace it with this connection's element, on mutual TLS connections; else remove it.
    SanitizeSet,
    /// Forward it as received, always.
    AlwaysForwardOnly,
}

/// Envoy's `SetCurrentClientCertDetails`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub cert: bool,
    pub chain: bool,
    pub dns: bool,
    pub uri: bool,
}

/// Where a connection manager's routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    Inline(RouteTable),
    /// A `RouteConfiguration` resource delivered over RDS (through ADS, its own stream,
    /// or from a file).
    Rds {
        name: String,
        /// How long the listener warms waiting for it before it goes live with an empty
        /// table; `None` waits forever.
        initial_fetch_timeout: Option<Duration>,
        origin: Origin,
    },
}

impl HttpConnectionManager {
    /// The inline route table, if the routes are not delivered over RDS.
    pub fn inline_routes(&self) -> Option<&RouteTable> {
        match &self.routes {
            RouteSource::Inline(table) => Some(table),
            RouteSource::Rds { .. } => None,
        }
    }

    /// The RDS route configuration this connection manager waits for, if any.
    pub fn rds_name(&self) -> Option<&str> {
        match &self.routes {
            RouteSource::Inline(_) => None,
            RouteSource::Rds { name, .. } => Some(name),
        }
    }
}

/// Which HTTP versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1, or HTTP/2 with prior knowledge (detected by the preface).
    Auto,
    Http1,
    Http2,
}

impl TryFrom<&pb::HttpConnectionManager> for HttpConnectionManager {
    type Error = ValidationError;

    fn try_from(h: &pb::HttpConnectionManager) -> Result<Self> {
        use pb::http_connection_manager::{CodecType as C, RouteSpecifier as R};
        let codec = match C::try_from(h.codec_type) {
            Ok(C::Auto) => Codec::Auto,
            Ok(C::Http1) => Codec::Http1,
            Ok(C::Http2) => Codec::Http2,
            _ => {
                return Err(ValidationError::new(
                    "codec_type",
                    "only AUTO, HTTP1 and HTTP2 are supported",
                ))
            }
        };
        let routes = match h.route_specifier.as_ref() {
            Some(R::RouteConfig(rc)) => {
                RouteSource::Inline(RouteTable::try_from(rc).map_err(|e| e.within("route_config"))?)
            }
            Some(R::Rds(rds)) => {
                if rds.route_config_name.is_empty() {
                    return Err(ValidationError::required("rds.route_config_name"));
                }
                let source_config = rds
                    .config_source
                    .as_ref()
                    .ok_or_else(|| ValidationError::required("rds.config_source"))?;
                let source = config_source(source_config, "rds.config_source", true)?;
                RouteSource::Rds {
                    name: rds.route_config_name.clone(),
                    initial_fetch_timeout: source.initial_fetch_timeout,
                    origin: source.origin,
                }
            }
            Some(_) => return Err(ValidationError::unsupported("route_specifier")),
            None => return Err(ValidationError::required("route_config")),
        };
        let (http_filters, skipped_filters) = HttpFilters::from_proto(&h.http_filters)?;
        use pb::http_connection_manager::{
            PathWithEscapedSlashesAction as P, ServerHeaderTransformation as T, StripPortMode,
        };
        let escaped_slashes = match P::try_from(h.path_with_escaped_slashes_action) {
            Ok(P::ImplementationSpecificDefault | P::KeepUnchanged) => EscapedSlashes::Keep,
            Ok(P::RejectRequest) => EscapedSlashes::Reject,
            Ok(P::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
            Ok(P::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
            Err(_) => {
                return Err(ValidationError::new(
                    "path_with_escaped_slashes_action",
                    "unknown value",
                ))
            }
        };
        let server_header = match T::try_from(h.server_header_transformation) {
            Ok(T::Overwrite) => ServerHeader::Overwrite,
            Ok(T::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
            Ok(T::PassThrough) => ServerHeader::PassThrough,
            Err(_) => {
                return Err(ValidationError::new(
                    "server_header_transformation",
                    "unknown value",
                ))
            }
        };
        if h.strip_matching_host_port && h.strip_port_mode.is_some() {
            return Err(ValidationError::new(
                "strip_any_host_port",
                "only one of strip_matching_host_port and strip_any_host_port may be set",
            ));
        }
        let strip_port = match h.strip_port_mode.as_ref() {
            Some(StripPortMode::StripAnyHostPort(true)) => StripPort::Any,
            _ if h.strip_matching_host_port => StripPort::Matching,
            _ => StripPort::Keep,
        };
        let headers_with_underscores = match h
            .common_http_protocol_options
            .as_ref()
            .map_or(0, |o| o.headers_with_underscores_action)
        {
            0 => UnderscoresAction::Allow,
            1 => UnderscoresAction::Reject,
            2 => UnderscoresAction::Drop,
            _ => {
                return Err(ValidationError::new(
                    "common_http_protocol_options.headers_with_underscores_action",
                    "unknown value",
                ))
            }
        };
        let http2 = h
            .http2_protocol_options
            .as_ref()
            .map(|o| {
                let window = |v: &Option<crate::pb::google::protobuf::UInt32Value>, field: &str| {
                    v.as_ref()
                        .map(|v| {
                            if (65_535..=2_147_483_647).contains(&v.value) {
                                Ok(v.value)
                            } else {
                                Err(ValidationError::new(
                                    format!("http2_protocol_options.{field}"),
                                    "must be in [65535, 2147483647]",
                                ))
                            }
                        })
                        .transpose()
                };
                Ok::<_, ValidationError>(Http2Settings {
                    max_concurrent_streams: o.max_concurrent_streams.as_ref().map(|v| v.value),
                    initial_stream_window_size: window(
                        &o.initial_stream_window_size,
                        "initial_stream_window_size",
                    )?,
                    initial_connection_window_size: window(
                        &o.initial_connection_window_size,
                        "initial_connection_window_size",
                    )?,
                    keepalive: http2_keepalive(o, "http2_protocol_options")?,
                })
            })
            .transpose()?
            .unwrap_or_default();
        let http1 = match h.http_protocol_options.as_ref() {
            None => Http1Settings::default(),
            Some(o) => {
                let default_host = (!o.default_host_for_http_10.is_empty())
                    .then(|| {
                        if !o.accept_http_10 {
                            return Err(ValidationError::new(
                                "http_protocol_options.default_host_for_http_10",
                                "needs accept_http_10",
                            ));
                        }
                        http::HeaderValue::from_str(&o.default_host_for_http_10).map_err(|_| {
                            ValidationError::new(
                                "http_protocol_options.default_host_for_http_10",
                                "not a valid host",
                            )
                        })
                    })
                    .transpose()?;
                Http1Settings {
                    accept_http_10: o.accept_http_10,
                    default_host_for_http_10: default_host,
                }
            }
        };
        let upgrades = h
            .upgrade_configs
            .iter()
            .map(|u| {
                (
                    u.upgrade_type.to_ascii_lowercase(),
                    u.enabled.as_ref().is_none_or(|v| v.value),
                )
            })
            .collect();
        if let Some(o) = h.common_http_protocol_options.as_ref() {
            for (field, set) in [
                (
                    "max_requests_per_connection",
                    o.max_requests_per_connection.is_some(),
                ),
                (
                    "max_connection_duration",
                    o.max_connection_duration.is_some(),
                ),
            ] {
                if set {
                    return Err(ValidationError::new(
                        format!("common_http_protocol_options.{field}"),
                        "is supported on clusters (upstream), not on downstream connections yet",
                    ));
                }
            }
        }
        let (idle_timeout, max_headers_count) = match h.common_http_protocol_options.as_ref() {
            Some(o) => (
                http_idle_timeout(
                    o,
                    "common_http_protocol_options",
                    Some(DEFAULT_IDLE_TIMEOUT),
                )?,
                o.max_headers_count
                    .as_ref()
                    .map_or(DEFAULT_MAX_HEADERS_COUNT, |v| v.value),
            ),
            None => (Some(DEFAULT_IDLE_TIMEOUT), DEFAULT_MAX_HEADERS_COUNT),
        };
        let max_request_headers_kb = h
            .max_request_headers_kb
            .as_ref()
            .map_or(DEFAULT_MAX_REQUEST_HEADERS_KB, |v| v.value);
        if !(1..=8192).contains(&max_request_headers_kb) {
            return Err(ValidationError::new(
                "max_request_headers_kb",
                "must be in [1, 8192]",
            ));
        }
        if max_headers_count == 0 {
            return Err(ValidationError::new(
                "common_http_protocol_options.max_headers_count",
                "must be at least 1",
            ));
        }
        use pb::http_connection_manager::ForwardClientCertDetails as F;
        let forward_client_cert = match F::try_from(h.forward_client_cert_details) {
            Ok(F::Sanitize) => ForwardClientCert::Sanitize,
            Ok(F::ForwardOnly) => ForwardClientCert::ForwardOnly,
            Ok(F::AppendForward) => ForwardClientCert::AppendForward,
            Ok(F::SanitizeSet) => ForwardClientCert::SanitizeSet,
            Ok(F::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
            Err(_) => {
                return Err(ValidationError::new(
                    "forward_client_cert_details",
                    "unknown value",
                ))
            }
        };
        let client_cert_details = h
            .set_current_client_cert_details
            .as_ref()
            .map(|d| ClientCertDetails {
                subject: d.subject.as_ref().is_some_and(|v| v.value),
                cert: d.cert,
                chain: d.chain,
                dns: d.dns,
                uri: d.uri,
            })
            .unwrap_or_default();
        Ok(Self {
            access_log: AccessLog::list(&h.access_log, "access_log")?,
            tracing: h
                .tracing
                .as_ref()
                .map(|t| crate::tracing::Tracing::try_from(t).map_err(|e| e.within("tracing")))
                .transpose()?,
            stream_idle_timeout: optional_timeout(
                h.stream_idle_timeout.as_ref(),
                "stream_idle_timeout",
                Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            )?,
            request_timeout: optional_timeout(h.request_timeout.as_ref(), "request_timeout", None)?,
            max_stream_duration: optional_timeout(
                h.common_http_protocol_options
                    .as_ref()
                    .and_then(|o| o.max_stream_duration.as_ref()),
                "common_http_protocol_options.max_stream_duration",
                None,
            )?,
            path: PathPolicy {
                normalize: h.normalize_path.as_ref().is_some_and(|v| v.value),
                merge_slashes: h.merge_slashes,
                escaped_slashes,
            },
            headers_with_underscores,
            server_header,
            strip_port,
            http2,
            http1,
            http_filters,
            skipped_filters,
            forward_client_cert,
            client_cert_details,
            stat_prefix: h.stat_prefix.clone(),
            codec,
            routes,
            upgrades,
            request_headers_timeout: optional_timeout(
                h.request_headers_timeout.as_ref(),
                "request_headers_timeout",
                None,
            )?,
            idle_timeout,
            max_request_headers_kb,
            max_headers_count,
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|v| v.value),
            xff_num_trusted_hops: h.xff_num_trusted_hops,
            skip_xff_append: h.skip_xff_append,
            internal_addresses: h
                .internal_address_config
                .as_ref()
                .map_or(Ok(Vec::new()), |c| {
                    c.cidr_ranges
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            crate::filter_chain::cidr(
                                r,
                                &format!("internal_address_config.cidr_ranges[{i}]"),
                            )
                        })
                        .collect()
                })?,
            generate_request_id: h.generate_request_id.as_ref().is_none_or(|v| v.value),
            preserve_external_request_id: h.preserve_external_request_id,
            drain_timeout: optional_timeout(
                h.drain_timeout.as_ref(),
                "drain_timeout",
                Some(DEFAULT_DRAIN_TIMEOUT),
            )?
            .unwrap_or(Duration::ZERO),
            server_name: if h.server_name.is_empty() {
                "sluice".into()
            } else {
                h.server_name.clone()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm(extra: &str) -> Result<HttpConnectionManager> {
        let yaml = format!(
            "stat_prefix: t\nroute_config: {{virtual_hosts: []}}\nhttp_filters: [{{name: r, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]\n{extra}"
        );
        let proto: pb::HttpConnectionManager = crate::decode::from_yaml(
            &yaml,
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        )?;
        HttpConnectionManager::try_from(&proto)
    }

    #[test]
    fn the_stream_idle_timeout_defaults_to_five_minutes() {
        assert_eq!(
            hcm("").unwrap().stream_idle_timeout,
            Some(DEFAULT_STREAM_IDLE_TIMEOUT)
        );
        assert_eq!(
            hcm("stream_idle_timeout: 0s").unwrap().stream_idle_timeout,
            None
        );
    }

    #[test]
    fn one_port_stripping_mode_at_most() {
        assert_eq!(
            hcm("strip_any_host_port: true").unwrap().strip_port,
            StripPort::Any
        );
        assert!(hcm("strip_any_host_port: true\nstrip_matching_host_port: true").is_err());
    }
}
