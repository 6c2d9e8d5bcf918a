//! The connection manager's `tracing` and a route's `tracing` and `decorator`, validated:
//! which requests are traced, what their spans carry, and where the spans go. The only
//! provider is OpenTelemetry, over OTLP/gRPC or OTLP/HTTP to a cluster, as Envoy configures
//! it; [`Collector`] is shared with the OpenTelemetry access logger.

use std::time::Duration;

use crate::error::{Result, ValidationError};
use crate::http_filter::Fraction;
use crate::pb;
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracingPb;
use crate::type_urls;

/// Envoy's `max_path_tag_length` default.
pub const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;

/// The connection manager's tracing: sampling, tags and the exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// Requests with `x-client-trace-id` that are traced (default 100 %).
    pub client_sampling: Fraction,
    /// Requests without a trace decision that are traced (default 100 %).
    pub random_sampling: Fraction,
    /// Applied after the other two (default 100 %).
    pub overall_sampling: Fraction,
    pub custom_tags: Vec<CustomTag>,
    /// A CLIENT span per upstream request, child of the SERVER span.
    pub spawn_upstream_span: bool,
    /// `http.url` is cut to this many bytes.
    pub max_path_tag_length: usize,
    pub provider: OpenTelemetry,
}

/// `envoy.tracers.opentelemetry`: spans exported over OTLP to a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpenTelemetry {
    pub collector: Collector,
    /// The resource's `service.name` (Envoy's default `unknown_service:envoy`).
    pub service_name: String,
    /// Merged into the resource in order, a later key replacing an earlier one.
    pub resource_detectors: Vec<ResourceDetector>,
}

/// Where more resource attributes come from (`resource_detectors`), read when the data
/// plane compiles the config, as Envoy reads them when it creates the tracer or logger.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceDetector {
    /// `envoy.tracers.opentelemetry.resource_detectors.environment`:
    /// `OTEL_RESOURCE_ATTRIBUTES` as `key=value,key=value`.
    Environment,
    /// `envoy.tracers.opentelemetry.resource_detectors.static_config`, sorted by key.
    Static(Vec<(String, String)>),
}

/// `resource_detectors`, checked: the environment and static detectors; others are
/// refused by name.
pub fn resource_detectors(
    detectors: &[pb::envoy::config::core::v3::TypedExtensionConfig],
    field: &str,
) -> Result<Vec<ResourceDetector>> {
    use pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3 as detectors_pb;
    detectors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let field = format!("{field}[{i}].typed_config");
            let any = d
                .typed_config
                .as_ref()
                .ok_or_else(|| ValidationError::required(&field))?;
            match any.type_url.as_str() {
                type_urls::ENVIRONMENT_RESOURCE_DETECTOR => Ok(ResourceDetector::Environment),
                type_urls::STATIC_RESOURCE_DETECTOR => {
                    let config: detectors_pb::StaticConfigResourceDetectorConfig =
                        crate::util::unpack_any(any, type_urls::STATIC_RESOURCE_DETECTOR, &field)?;
                    let mut attributes: Vec<(String, String)> =
                        config.attributes.into_iter().collect();
                    attributes.sort();
                    Ok(ResourceDetector::Static(attributes))
                }
                other => Err(ValidationError::unsupported(format!(
                    "{field}: resource detector {} ({}) is not supported by sluice",
                    d.name,
                    type_urls::message_name(other)
                ))),
            }
        })
        .collect()
}

/// Where OTLP exports go, for the tracer and the OpenTelemetry access logger alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Collector {
    pub cluster: String,
    /// The export call's deadline (the gRPC service's `timeout`, default 5 s; the HTTP
    /// URI's, required).
    pub timeout: Duration,
    pub transport: OtlpTransport,
}

/// How the exports travel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OtlpTransport {
    /// `grpc_service`: the collector's trace or logs service.
    Grpc,
    /// `http_service`: protobuf POSTed to `path` with `Host: authority` and `headers`.
    Http {
        path: String,
        authority: String,
        headers: Vec<(String, String)>,
    },
}

/// A tag every span of the connection manager (or route) gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomTag {
    pub tag: String,
    pub value: TagValue,
}

/// Where a custom tag's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagValue {
    Literal(String),
    /// An environment variable, read when the config loads; `default` when unset.
    Environment {
        name: String,
        default: String,
    },
    /// A request header (lowercased name); `default` when absent (no tag when empty).
    RequestHeader {
        name: String,
        default: String,
    },
}

/// A route's `tracing`: sampling overrides and more tags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTracing {
    pub client_sampling: Option<Fraction>,
    pub random_sampling: Option<Fraction>,
    pub overall_sampling: Option<Fraction>,
    pub custom_tags: Vec<CustomTag>,
}

/// An `envoy.type.v3.Percent` (0–100, fractional) as a fraction; `unset` when absent.
fn percent(p: Option<&pb::envoy::r#type::v3::Percent>, field: &str) -> Result<Fraction> {
    let Some(p) = p else {
        return Ok(Fraction::ALWAYS);
    };
    if !(0.0..=100.0).contains(&p.value) {
        return Err(ValidationError::new(
            format!("{field}.value"),
            "must be between 0 and 100",
        ));
    }
    Ok(Fraction {
        per_million: (p.value * 10_000.0).round() as u32,
    })
}

/// Custom tags, checked: a name and a supported value kind each.
pub fn custom_tags(tags: &[pb::envoy::r#type::tracing::v3::CustomTag]) -> Result<Vec<CustomTag>> {
    use pb::envoy::r#type::tracing::v3::custom_tag::Type;
    tags.iter()
        .enumerate()
        .map(|(i, t)| {
            let field = format!("custom_tags[{i}]");
            if t.tag.is_empty() {
                return Err(ValidationError::required(format!("{field}.tag")));
            }
            let value = match t.r#type.as_ref() {
                None => return Err(ValidationError::required(format!("{field}.type"))),
                Some(Type::Literal(l)) => TagValue::Literal(l.value.clone()),
                Some(Type::Environment(e)) => TagValue::Environment {
                    name: e.name.clone(),
                    default: e.default_value.clone(),
                },
                Some(Type::RequestHeader(h)) => {
                    if h.name.is_empty() {
                        return Err(ValidationError::required(format!(
                            "{field}.request_header.name"
                        )));
                    }
                    TagValue::RequestHeader {
                        name: h.name.to_ascii_lowercase(),
                        default: h.default_value.clone(),
                    }
                }
                Some(Type::Metadata(_)) => {
                    return Err(ValidationError::unsupported(format!("{field}.metadata")))
                }
                Some(_) => return Err(ValidationError::unsupported(format!("{field}.value"))),
            };
            Ok(CustomTag {
                tag: t.tag.clone(),
                value,
            })
        })
        .collect()
}

impl TryFrom<&HcmTracingPb> for Tracing {
    type Error = ValidationError;

    fn try_from(t: &HcmTracingPb) -> Result<Self> {
        let provider = t
            .provider
            .as_ref()
            .ok_or_else(|| ValidationError::unsupported("provider: tracing needs a provider"))?;
        Ok(Self {
            client_sampling: percent(t.client_sampling.as_ref(), "client_sampling")?,
            random_sampling: percent(t.random_sampling.as_ref(), "random_sampling")?,
            overall_sampling: percent(t.overall_sampling.as_ref(), "overall_sampling")?,
            custom_tags: custom_tags(&t.custom_tags)?,
            spawn_upstream_span: t.spawn_upstream_span.as_ref().is_some_and(|b| b.value),
            max_path_tag_length: t
                .max_path_tag_length
                .as_ref()
                .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value as usize),
            provider: OpenTelemetry::try_from(provider).map_err(|e| e.within("provider"))?,
        })
    }
}

impl TryFrom<&pb::envoy::config::trace::v3::tracing::Http> for OpenTelemetry {
    type Error = ValidationError;

    fn try_from(http: &pb::envoy::config::trace::v3::tracing::Http) -> Result<Self> {
        use pb::envoy::config::trace::v3::tracing::http::ConfigType;
        let Some(ConfigType::TypedConfig(any)) = http.config_type.as_ref() else {
            return Err(ValidationError::required("typed_config"));
        };
        if any.type_url != type_urls::OPEN_TELEMETRY_CONFIG {
            return Err(ValidationError::unsupported(format!(
                "typed_config: tracer {} (only envoy.tracers.opentelemetry)",
                type_urls::message_name(&any.type_url)
            )));
        }
        let config: pb::envoy::config::trace::v3::OpenTelemetryConfig =
            crate::util::unpack_any(any, type_urls::OPEN_TELEMETRY_CONFIG, "typed_config")?;
        let service_name = if config.service_name.is_empty() {
            "unknown_service:envoy".to_string()
        } else {
            config.service_name.clone()
        };
        let collector = match (config.http_service.as_ref(), config.grpc_service.as_ref()) {
            (Some(http), _) => Collector::http(http, "typed_config.http_service", "/v1/traces")?,
            (None, Some(grpc)) => Collector::grpc(grpc, "typed_config.grpc_service")?,
            (None, None) => return Err(ValidationError::required("typed_config.grpc_service")),
        };
        Ok(Self {
            collector,
            service_name,
            resource_detectors: resource_detectors(
                &config.resource_detectors,
                "typed_config.resource_detectors",
            )?,
        })
    }
}

impl Collector {
    /// `grpc_service` with `envoy_grpc`: OTLP/gRPC to a cluster.
    pub fn grpc(grpc: &pb::envoy::config::core::v3::GrpcService, field: &str) -> Result<Self> {
        use pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
        let Some(TargetSpecifier::EnvoyGrpc(envoy_grpc)) = grpc.target_specifier.as_ref() else {
            return Err(ValidationError::unsupported(format!(
                "{field}: only envoy_grpc"
            )));
        };
        if envoy_grpc.cluster_name.is_empty() {
            return Err(ValidationError::required(format!(
                "{field}.envoy_grpc.cluster_name"
            )));
        }
        let timeout = match grpc.timeout.as_ref() {
            None => Duration::from_secs(5),
            Some(d) => crate::util::duration(d, &format!("{field}.timeout"))?,
        };
        Ok(Self {
            cluster: envoy_grpc.cluster_name.clone(),
            timeout,
            transport: OtlpTransport::Grpc,
        })
    }

    /// `http_service`: the collector's `http_uri` (its cluster, path and host) and the
    /// headers every export carries; `default_path` when the URI has none.
    pub fn http(
        http: &pb::envoy::config::core::v3::HttpService,
        field: &str,
        default_path: &str,
    ) -> Result<Self> {
        use pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
        let uri_field = format!("{field}.http_uri");
        let uri = http
            .http_uri
            .as_ref()
            .ok_or_else(|| ValidationError::required(&uri_field))?;
        let parsed: http::Uri = uri
            .uri
            .parse()
            .map_err(|_| ValidationError::new(format!("{uri_field}.uri"), "not a URI"))?;
        let cluster = match uri.http_upstream_type.as_ref() {
            Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
            _ => return Err(ValidationError::required(format!("{uri_field}.cluster"))),
        };
        let authority = parsed
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| ValidationError::new(format!("{uri_field}.uri"), "needs a host"))?;
        // Required, as in Envoy.
        let timeout = match uri.timeout.as_ref() {
            None => return Err(ValidationError::required(format!("{uri_field}.timeout"))),
            Some(d) => crate::util::duration(d, &format!("{uri_field}.timeout"))?,
        };
        let headers = http
            .request_headers_to_add
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let header = h.header.as_ref().ok_or_else(|| {
                    ValidationError::required(format!("{field}.request_headers_to_add[{i}].header"))
                })?;
                Ok((header.key.to_ascii_lowercase(), header.value.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        // As Envoy: the URI's own path, even `/`.
        let path = parsed
            .path_and_query()
            .map_or(default_path, |p| p.as_str())
            .to_string();
        Ok(Self {
            cluster,
            timeout,
            transport: OtlpTransport::Http {
                path,
                authority,
                headers,
            },
        })
    }
}

impl TryFrom<&pb::envoy::config::route::v3::Tracing> for RouteTracing {
    type Error = ValidationError;

    fn try_from(t: &pb::envoy::config::route::v3::Tracing) -> Result<Self> {
        Ok(Self {
            client_sampling: t.client_sampling.as_ref().map(Fraction::from_proto),
            random_sampling: t.random_sampling.as_ref().map(Fraction::from_proto),
            overall_sampling: t.overall_sampling.as_ref().map(Fraction::from_proto),
            custom_tags: custom_tags(&t.custom_tags)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_parts_per_million_and_bounded() {
        let p = |value| pb::envoy::r#type::v3::Percent { value };
        assert_eq!(percent(None, "x").unwrap(), Fraction::ALWAYS);
        assert_eq!(percent(Some(&p(1.0)), "x").unwrap().per_million, 10_000);
        assert_eq!(percent(Some(&p(0.01)), "x").unwrap().per_million, 100);
        let err = percent(Some(&p(150.0)), "random_sampling").unwrap_err();
        assert!(err.to_string().contains("random_sampling.value"), "{err}");
    }
}
