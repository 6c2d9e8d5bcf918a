//! `envoy.access_loggers.open_telemetry`: each logged stream becomes an OTLP `LogRecord`
//! whose body and attributes are Envoy's substitution format applied to string values
//! (nested lists and maps keep their shape), exported in batches to a collector over
//! OTLP/gRPC or OTLP/HTTP, as Envoy's logger does.

use std::time::Duration;

use prost::Message;

use super::{parse_format, LogFormat, Segment, Sink};
use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use crate::pb::opentelemetry::proto::common::v1::{
    any_value::Value as AnyKind, AnyValue, KeyValueList,
};
use crate::tracing::{custom_tags, resource_detectors, Collector, CustomTag, ResourceDetector};

/// Envoy's defaults: a batch goes when it passes 16 KiB or is 1 s old.
const DEFAULT_BUFFER_SIZE_BYTES: u32 = 16 * 1024;
const DEFAULT_BUFFER_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Where the records go and how they are batched; loggers with equal sinks share one
/// exporter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OtlpLogSink {
    pub collector: Collector,
    /// The `log_name` resource attribute (top-level, else `common_config`'s).
    pub log_name: String,
    /// Leave out the built-in resource attributes (`log_name`, `zone_name`,
    /// `cluster_name`, `node_name`).
    pub disable_builtin_labels: bool,
    /// Over the built-in labels, under `resource_attributes`.
    pub resource_detectors: Vec<ResourceDetector>,
    /// `resource_attributes` as its encoded `KeyValueList`: copied into the resource as
    /// written (no formatting), over the built-in and detected labels of the same key.
    pub resource_attributes: Vec<u8>,
    pub buffer_flush_interval: Duration,
    pub buffer_size_bytes: u32,
    /// Stats live under `access_logs.open_telemetry_access_log.<stat_prefix>`.
    pub stat_prefix: String,
}

/// A formatted value of the body or of an attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum OtlpValue {
    /// A string with command operators; always rendered as a string (absent: `-`).
    Text(Vec<Segment>),
    List(Vec<OtlpValue>),
    Map(Vec<(String, OtlpValue)>),
}

/// What each record carries besides its time and trace context.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpRecordFormat {
    pub body: Option<OtlpValue>,
    pub attributes: Vec<(String, OtlpValue)>,
    /// Appended to the attributes, as Envoy does.
    pub custom_tags: Vec<CustomTag>,
}

/// Converts the logger's typed config into its sink and record format.
pub(super) fn logger(c: &OpenTelemetryAccessLogConfig) -> Result<(Sink, LogFormat)> {
    #[allow(deprecated)]
    let common = c.common_config.as_ref();
    let transports = [
        c.http_service.is_some(),
        c.grpc_service.is_some(),
        common.is_some_and(|c| c.grpc_service.is_some()),
    ];
    if transports.iter().filter(|set| **set).count() > 1 {
        return Err(ValidationError::new(
            "http_service",
            "only one of common_config.grpc_service, grpc_service and http_service may be set",
        ));
    }
    let collector = if let Some(http) = &c.http_service {
        Collector::http(http, "http_service", "/v1/logs")?
    } else if let Some(grpc) = &c.grpc_service {
        Collector::grpc(grpc, "grpc_service")?
    } else if let Some(grpc) = common.and_then(|c| c.grpc_service.as_ref()) {
        Collector::grpc(grpc, "common_config.grpc_service")?
    } else {
        return Err(ValidationError::required("grpc_service"));
    };
    if let Some(common) = common {
        use crate::pb::envoy::config::core::v3::ApiVersion;
        if common.transport_api_version != ApiVersion::V3 as i32 {
            return Err(ValidationError::new(
                "common_config.transport_api_version",
                "must be V3",
            ));
        }
    }
    if !c.formatters.is_empty() {
        return Err(ValidationError::unsupported("formatters"));
    }
    // Sluice keeps no filter state objects; asking for them would log nothing silently.
    if !c.filter_state_objects_to_log.is_empty() {
        return Err(ValidationError::unsupported("filter_state_objects_to_log"));
    }
    if common.is_some_and(|c| !c.filter_state_objects_to_log.is_empty()) {
        return Err(ValidationError::unsupported(
            "common_config.filter_state_objects_to_log",
        ));
    }
    let log_name = match (c.log_name.as_str(), common) {
        ("", Some(common)) => common.log_name.clone(),
        (name, _) => name.to_string(),
    };
    let buffer_flush_interval = match c
        .buffer_flush_interval
        .as_ref()
        .map(|d| (d, "buffer_flush_interval"))
        .or_else(|| {
            common.and_then(|c| {
                c.buffer_flush_interval
                    .as_ref()
                    .map(|d| (d, "common_config.buffer_flush_interval"))
            })
        }) {
        None => DEFAULT_BUFFER_FLUSH_INTERVAL,
        Some((d, field)) => crate::util::duration(d, field)?,
    };
    if buffer_flush_interval.is_zero() {
        return Err(ValidationError::new(
            "buffer_flush_interval",
            "must be greater than 0",
        ));
    }
    let buffer_size_bytes = c
        .buffer_size_bytes
        .as_ref()
        .or_else(|| common.and_then(|c| c.buffer_size_bytes.as_ref()))
        .map_or(DEFAULT_BUFFER_SIZE_BYTES, |v| v.value);
    let body = c
        .body
        .as_ref()
        .filter(|b| b.value.is_some())
        .map(|b| template(b, "body"))
        .transpose()?;
    let attributes = match &c.attributes {
        None => Vec::new(),
        Some(list) => map(list, "attributes")?,
    };
    let sink = OtlpLogSink {
        collector,
        log_name,
        disable_builtin_labels: c.disable_builtin_labels,
        resource_detectors: resource_detectors(&c.resource_detectors, "resource_detectors")?,
        resource_attributes: c
            .resource_attributes
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default(),
        buffer_flush_interval,
        buffer_size_bytes,
        stat_prefix: c.stat_prefix.clone(),
    };
    let format = OtlpRecordFormat {
        body,
        attributes,
        custom_tags: custom_tags(&c.custom_tags)?,
    };
    Ok((Sink::OpenTelemetry(Box::new(sink)), LogFormat::Otlp(format)))
}

fn map(list: &KeyValueList, field: &str) -> Result<Vec<(String, OtlpValue)>> {
    list.values
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            let field = format!("{field}.values[{i}]");
            let value = kv
                .value
                .as_ref()
                .ok_or_else(|| ValidationError::required(format!("{field}.value")))?;
            Ok((kv.key.clone(), template(value, &format!("{field}.value"))?))
        })
        .collect()
}

/// As Envoy: only strings (formatted), arrays and key-value lists may be formatted.
fn template(value: &AnyValue, field: &str) -> Result<OtlpValue> {
    match &value.value {
        Some(AnyKind::StringValue(text)) => parse_format(text)
            .map(OtlpValue::Text)
            .map_err(|m| ValidationError::new(format!("{field}.string_value"), m)),
        Some(AnyKind::ArrayValue(array)) => array
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| template(v, &format!("{field}.array_value.values[{i}]")))
            .collect::<Result<_>>()
            .map(OtlpValue::List),
        Some(AnyKind::KvlistValue(list)) => {
            map(list, &format!("{field}.kvlist_value")).map(OtlpValue::Map)
        }
        Some(_) | None => Err(ValidationError::new(
            field,
            "only string values, arrays and key-value lists can be formatted (as in Envoy)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::config::core::v3::{grpc_service, GrpcService};
    use crate::pb::opentelemetry::proto::common::v1::{ArrayValue, KeyValue};

    fn text(s: &str) -> AnyValue {
        AnyValue {
            value: Some(AnyKind::StringValue(s.to_string())),
        }
    }

    fn grpc() -> Option<GrpcService> {
        Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: "otel".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
    }

    #[test]
    fn body_and_attributes_keep_their_shape_and_defaults_are_envoys() {
        let config = OpenTelemetryAccessLogConfig {
            grpc_service: grpc(),
            log_name: "edge".into(),
            body: Some(text("%REQ(:METHOD)% %RESPONSE_CODE%")),
            attributes: Some(KeyValueList {
                values: vec![KeyValue {
                    key: "list".into(),
                    value: Some(AnyValue {
                        value: Some(AnyKind::ArrayValue(ArrayValue {
                            values: vec![text("%PROTOCOL%")],
                        })),
                    }),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let (Sink::OpenTelemetry(sink), LogFormat::Otlp(format)) = logger(&config).unwrap() else {
            panic!("an OpenTelemetry logger");
        };
        assert_eq!(sink.collector.cluster, "otel");
        assert_eq!(sink.buffer_size_bytes, 16384);
        assert_eq!(sink.buffer_flush_interval, Duration::from_secs(1));
        assert_eq!(sink.log_name, "edge");
        assert!(matches!(format.body, Some(OtlpValue::Text(ref s)) if s.len() == 3));
        assert!(matches!(&format.attributes[0].1, OtlpValue::List(l) if l.len() == 1));
    }

    #[test]
    fn refusals_name_the_field() {
        let with = |f: &dyn Fn(&mut OpenTelemetryAccessLogConfig)| {
            let mut config = OpenTelemetryAccessLogConfig {
                grpc_service: grpc(),
                ..Default::default()
            };
            f(&mut config);
            logger(&config).unwrap_err().to_string()
        };
        let err = with(&|c| {
            c.body = Some(AnyValue {
                value: Some(AnyKind::IntValue(3)),
            })
        });
        assert!(err.contains("body"), "{err}");
        let err = with(&|c| c.body = Some(text("%NOPE%")));
        assert!(
            err.contains("body.string_value") && err.contains("NOPE"),
            "{err}"
        );
        let err = with(&|c| c.filter_state_objects_to_log = vec!["x".into()]);
        assert!(err.contains("filter_state_objects_to_log"), "{err}");
        let err = with(&|c| c.grpc_service = None);
        assert!(err.contains("grpc_service"), "{err}");
    }
}
