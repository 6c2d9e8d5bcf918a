//! `envoy.access_loggers.open_telemetry`: one OTLP `LogRecord` per logged stream — its
//! start time, the formatted body and attributes, the custom tags and the stream's trace
//! context — queued off the request path and exported in batches to the logger's
//! collector ([`crate::otlp`]), under a resource that names the node as Envoy's does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::UNIX_EPOCH;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::mpsc;
use xds_types::access_log::{OtlpLogSink, OtlpRecordFormat, OtlpValue};
use xds_types::tracing::TagValue;
use xds_types::Bootstrap;

use super::{compile_segments, index_of, render_text, Entry, Piece};
use crate::config::SnapshotStore;
use crate::otlp::{put_attribute, string_attribute, Batching, Counters, Payload};
use crate::stats::Stats;

/// A record format with its header lookups resolved.
pub(super) struct CompiledRecord {
    body: Option<Template>,
    attributes: Vec<(String, Template)>,
    tags: Vec<(String, Tag)>,
}

enum Template {
    Text(Vec<Piece>),
    List(Vec<Template>),
    Map(Vec<(String, Template)>),
}

/// A custom tag's value: fixed when the config loads, or a request header.
enum Tag {
    Constant(String),
    Request { index: usize, default: String },
}

impl CompiledRecord {
    pub(super) fn new(
        format: &OtlpRecordFormat,
        request: &mut Vec<String>,
        response: &mut Vec<String>,
    ) -> Self {
        let tags = format
            .custom_tags
            .iter()
            .map(|t| {
                let tag = match &t.value {
                    TagValue::Literal(v) => Tag::Constant(v.clone()),
                    TagValue::Environment { name, default } => {
                        Tag::Constant(std::env::var(name).unwrap_or_else(|_| default.clone()))
                    }
                    TagValue::RequestHeader { name, default } => Tag::Request {
                        index: index_of(request, name),
                        default: default.clone(),
                    },
                };
                (t.tag.clone(), tag)
            })
            .collect();
        Self {
            body: format.body.as_ref().map(|b| compile(b, request, response)),
            attributes: format
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), compile(v, request, response)))
                .collect(),
            tags,
        }
    }

    /// The stream's record: start time, body, attributes, then the custom tags that have
    /// a value, and the trace context when the stream has one.
    pub(super) fn render(&self, entry: &Entry<'_>) -> LogRecord {
        let mut attributes: Vec<KeyValue> = self
            .attributes
            .iter()
            .map(|(k, t)| key_value(k, render(t, entry)))
            .collect();
        for (key, tag) in &self.tags {
            let value = match tag {
                Tag::Constant(v) => v.clone(),
                Tag::Request { index, default } => entry
                    .request
                    .get(*index)
                    .and_then(Option::as_ref)
                    .map_or_else(
                        || default.clone(),
                        |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    ),
            };
            if !value.is_empty() {
                attributes.push(string_attribute(key, value));
            }
        }
        LogRecord {
            time_unix_nano: entry
                .start
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            body: self.body.as_ref().map(|b| render(b, entry)),
            attributes,
            trace_id: entry.trace.map_or_else(Vec::new, |t| t.trace_id.to_vec()),
            span_id: entry.trace.map_or_else(Vec::new, |t| t.span_id.to_vec()),
            ..LogRecord::default()
        }
    }
}

fn compile(value: &OtlpValue, request: &mut Vec<String>, response: &mut Vec<String>) -> Template {
    match value {
        OtlpValue::Text(segments) => Template::Text(compile_segments(segments, request, response)),
        OtlpValue::List(items) => Template::List(
            items
                .iter()
                .map(|v| compile(v, request, response))
                .collect(),
        ),
        OtlpValue::Map(pairs) => Template::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), compile(v, request, response)))
                .collect(),
        ),
    }
}

/// As Envoy: every formatted string is a string value, `-` standing for what is absent.
fn render(template: &Template, entry: &Entry<'_>) -> AnyValue {
    let value = match template {
        Template::Text(pieces) => {
            let mut text = String::new();
            render_text(pieces, entry, &mut text);
            any_value::Value::StringValue(text)
        }
        Template::List(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(|t| render(t, entry)).collect(),
        }),
        Template::Map(pairs) => any_value::Value::KvlistValue(KeyValueList {
            values: pairs
                .iter()
                .map(|(k, t)| key_value(k, render(t, entry)))
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..KeyValue::default()
    }
}

/// One logger's queue and counters, shared by every access log with the same sink.
pub(super) struct OtlpLogger {
    sink: OtlpLogSink,
    resource: Resource,
    /// Started by the first record, on the runtime that serves requests.
    queue: OnceLock<mpsc::Sender<LogRecord>>,
    written: Counter,
    dropped: Counter,
}

fn registry() -> &'static Mutex<HashMap<OtlpLogSink, Weak<OtlpLogger>>> {
    static LOGGERS: OnceLock<Mutex<HashMap<OtlpLogSink, Weak<OtlpLogger>>>> = OnceLock::new();
    LOGGERS.get_or_init(Default::default)
}

impl OtlpLogger {
    /// The logger for `sink`, shared while any access log uses it.
    pub(super) fn shared(sink: &OtlpLogSink, node: &Bootstrap, stats: &Stats) -> Arc<Self> {
        let mut open = registry().lock().expect("OpenTelemetry access loggers");
        if let Some(logger) = open.get(sink).and_then(Weak::upgrade) {
            return logger;
        }
        let prefix = &sink.stat_prefix;
        let logger = Arc::new(Self {
            sink: sink.clone(),
            resource: resource(sink, node),
            queue: OnceLock::new(),
            written: stats.otlp_log_counter(
                prefix,
                "logs_written",
                "Access log records queued for the collector",
            ),
            dropped: stats.otlp_log_counter(
                prefix,
                "logs_dropped",
                "Access log records dropped: the queue was full or the export failed",
            ),
        });
        open.retain(|_, l| l.strong_count() > 0);
        open.insert(sink.clone(), Arc::downgrade(&logger));
        logger
    }

    /// Queues `record`; never waits. The first record starts the export task, which
    /// picks hosts of the collector's cluster from `store`.
    pub(super) fn submit(&self, record: LogRecord, store: &SnapshotStore) {
        let queue = self.queue.get_or_init(|| {
            let (queue, records) = mpsc::channel(crate::otlp::QUEUE_ITEMS);
            let batching = Batching {
                flush_interval: self.sink.buffer_flush_interval,
                min_items: usize::MAX,
                min_bytes: self.sink.buffer_size_bytes as usize,
            };
            let counters = Counters {
                exported: None,
                dropped: self.dropped.clone(),
            };
            let resource = self.resource.clone();
            tokio::spawn(crate::otlp::run(
                records,
                batching,
                self.sink.collector.clone(),
                store.clone(),
                counters,
                move |batch| {
                    Payload::Logs(ExportLogsServiceRequest {
                        resource_logs: vec![ResourceLogs {
                            resource: Some(resource.clone()),
                            scope_logs: vec![ScopeLogs {
                                log_records: batch,
                                ..ScopeLogs::default()
                            }],
                            ..ResourceLogs::default()
                        }],
                    })
                },
            ));
            queue
        });
        let counter = match queue.try_send(record) {
            Ok(()) => &self.written,
            Err(_) => &self.dropped,
        };
        counter.inc();
    }
}

/// Envoy's resource: the built-in labels (unless disabled), then what the detectors find,
/// then `resource_attributes`, a later key replacing an earlier one in place.
fn resource(sink: &OtlpLogSink, node: &Bootstrap) -> Resource {
    let mut attributes: Vec<KeyValue> = Vec::new();
    if !sink.disable_builtin_labels {
        attributes = vec![
            string_attribute("log_name", sink.log_name.clone()),
            string_attribute("zone_name", node.node_zone.clone()),
            string_attribute("cluster_name", node.node_cluster.clone()),
            string_attribute("node_name", node.node_id.clone()),
        ];
    }
    crate::otlp::detect_resource(&mut attributes, &sink.resource_detectors);
    // The same wire format as Envoy's copy of the OpenTelemetry protos.
    if let Ok(list) = KeyValueList::decode(sink.resource_attributes.as_slice()) {
        for attribute in list.values {
            put_attribute(&mut attributes, attribute);
        }
    }
    Resource {
        attributes,
        ..Resource::default()
    }
}
