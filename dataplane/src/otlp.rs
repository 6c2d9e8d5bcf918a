//! OTLP export, shared by the tracer and the OpenTelemetry access logger: a bounded queue
//! off the request path, one task that gathers the queue into batches, and each batch sent
//! to a host of the collector's cluster over OTLP/gRPC or POSTed as protobuf (OTLP/HTTP).
//! A collector that is down or slow costs requests nothing: an item that finds the queue
//! full, or whose batch fails, is dropped and counted, and after a failure the collector
//! is left alone for a backoff (0.5 s, doubling to 10 s) before the next try.

use std::future::Future;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use xds_types::tracing::{Collector, OtlpTransport, ResourceDetector};

use crate::config::SnapshotStore;
use crate::http::filters::grpc::Channels;

/// Items waiting for export, per exporter; past this they are dropped.
pub const QUEUE_ITEMS: usize = 8192;
/// The most items in one export call.
const MAX_BATCH: usize = 512;
/// How long the exporter lets items gather before it looks at the queue.
const GATHER: Duration = Duration::from_millis(20);
/// The pause after a failed export, doubling while the collector keeps failing.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// When a batch is full enough to go before its flush interval ends.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub flush_interval: Duration,
    /// Items (Envoy's tracer: 5 spans).
    pub min_items: usize,
    /// Encoded bytes (Envoy's logger: `buffer_size_bytes`).
    pub min_bytes: usize,
}

/// What the batch loop counts: `exported` after a successful export (spans), `dropped`
/// for every item a failure or a skipped batch loses.
pub struct Counters {
    pub exported: Option<Counter>,
    pub dropped: Counter,
}

/// One export call's payload.
pub enum Payload {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
}

impl Payload {
    fn encode(&self) -> Vec<u8> {
        match self {
            Payload::Traces(r) => r.encode_to_vec(),
            Payload::Logs(r) => r.encode_to_vec(),
        }
    }
}

/// A string attribute.
pub fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// Adds `attribute` to a resource's attributes, replacing one with the same key in place
/// (the OpenTelemetry resource merge).
pub fn put_attribute(attributes: &mut Vec<KeyValue>, attribute: KeyValue) {
    match attributes.iter_mut().find(|a| a.key == attribute.key) {
        Some(existing) => *existing = attribute,
        None => attributes.push(attribute),
    }
}

/// Merges what `detectors` find into `attributes`, in order.
pub fn detect_resource(attributes: &mut Vec<KeyValue>, detectors: &[ResourceDetector]) {
    for detector in detectors {
        match detector {
            ResourceDetector::Environment => {
                let text = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
                for (key, value) in environment_attributes(&text) {
                    put_attribute(attributes, string_attribute(key, value));
                }
            }
            ResourceDetector::Static(pairs) => {
                for (key, value) in pairs {
                    put_attribute(attributes, string_attribute(key, value.clone()));
                }
            }
        }
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES` read as Envoy's environment detector reads it: pairs split
/// on `,` and `=`, empty pieces skipped, anything but a key and a value skipped.
fn environment_attributes(text: &str) -> Vec<(&str, &str)> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let parts: Vec<&str> = pair.split('=').filter(|p| !p.is_empty()).collect();
            match parts.as_slice() {
                [key, value] => Some((*key, *value)),
                _ => {
                    warn!(%pair, "OTEL_RESOURCE_ATTRIBUTES: not key=value, skipped");
                    None
                }
            }
        })
        .collect()
}

/// Gathers `queue` into batches, turns each into a payload with `wrap` and exports it
/// to `collector`, until every sender is gone.
pub async fn run<T: Message>(
    mut queue: mpsc::Receiver<T>,
    batching: Batching,
    collector: Collector,
    store: SnapshotStore,
    counters: Counters,
    wrap: impl Fn(Vec<T>) -> Payload,
) {
    let channels = Channels::default();
    let mut backoff = BACKOFF_MIN;
    while let Some(first) = queue.recv().await {
        let mut bytes = first.encoded_len();
        let mut batch = vec![first];
        let full = |batch: &Vec<T>, bytes: usize| {
            batch.len() >= batching.min_items || bytes >= batching.min_bytes
        };
        let deadline = tokio::time::Instant::now() + batching.flush_interval;
        // Resting instead of waiting on the queue: an item queued meanwhile wakes nobody,
        // and under load each export carries what GATHER brought.
        tokio::time::sleep(GATHER.min(batching.flush_interval)).await;
        drain(&mut queue, &mut batch, &mut bytes);
        while !full(&batch, bytes) {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(item)) => {
                    bytes += item.encoded_len();
                    batch.push(item);
                }
                Ok(None) | Err(_) => break,
            }
        }
        drain(&mut queue, &mut batch, &mut bytes);
        let count = batch.len() as u64;
        match export(&channels, &store, &collector, wrap(batch)).await {
            Ok(()) => {
                if let Some(exported) = &counters.exported {
                    exported.inc_by(count);
                }
                backoff = BACKOFF_MIN;
            }
            Err(error) => {
                debug!(cluster = %collector.cluster, %error, items = count, "OTLP export failed");
                counters.dropped.inc_by(count);
                // A collector that is down is not asked again for a while; what queues
                // meanwhile is dropped without an attempt.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let mut skipped = 0;
                while queue.try_recv().is_ok() {
                    skipped += 1;
                }
                counters.dropped.inc_by(skipped);
            }
        }
    }
}

fn drain<T: Message>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, bytes: &mut usize) {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(item) => {
                *bytes += item.encoded_len();
                batch.push(item);
            }
            Err(_) => break,
        }
    }
}

/// Sends one payload over the collector's transport.
async fn export(
    channels: &Channels,
    store: &SnapshotStore,
    collector: &Collector,
    payload: Payload,
) -> Result<(), String> {
    if let OtlpTransport::Http {
        path,
        authority,
        headers,
    } = &collector.transport
    {
        return post(store, collector, path, authority, headers, payload.encode()).await;
    }
    let channel = channels
        .pick(&store.load(), &collector.cluster, collector.timeout)
        .ok_or_else(|| format!("no host in cluster {}", collector.cluster))?;
    let timeout = collector.timeout;
    match payload {
        Payload::Traces(request) => {
            let mut client = TraceServiceClient::new(channel);
            grpc_call(timeout, request, |r| async move { client.export(r).await }).await
        }
        Payload::Logs(request) => {
            let mut client = LogsServiceClient::new(channel);
            grpc_call(timeout, request, |r| async move { client.export(r).await }).await
        }
    }
}

async fn grpc_call<Req, Resp, Fut>(
    timeout: Duration,
    request: Req,
    call: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Result<(), String>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, call(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

/// OTLP/HTTP: the payload as protobuf, POSTed through the cluster's connection pool.
async fn post(
    store: &SnapshotStore,
    collector: &Collector,
    path: &str,
    authority: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<(), String> {
    let mut header_map = http::HeaderMap::new();
    header_map.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            header_map.append(name, value);
        }
    }
    let snapshot = store.load();
    let call = crate::http::filters::call::Call {
        cluster: &collector.cluster,
        method: http::Method::POST,
        path,
        authority,
        headers: header_map,
        body: body.into(),
        timeout: collector.timeout,
        max_response_bytes: 64 * 1024,
    };
    match crate::http::filters::call::send(&snapshot, call).await {
        Some((head, _)) if head.status.is_success() => Ok(()),
        Some((head, _)) => Err(format!("collector answered {}", head.status)),
        None => Err("no answer from the collector".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_attributes_are_read_as_envoy_reads_them() {
        assert_eq!(
            environment_attributes("a=1,,b=2,broken,c=x=y,d==4"),
            vec![("a", "1"), ("b", "2"), ("d", "4")]
        );
        let mut attributes = vec![string_attribute("a", "0"), string_attribute("z", "9")];
        detect_resource(
            &mut attributes,
            &[ResourceDetector::Static(vec![(
                "a".into(),
                "static".into(),
            )])],
        );
        let keys: Vec<(&str, String)> = attributes
            .iter()
            .map(|a| (a.key.as_str(), format!("{:?}", a.value)))
            .collect();
        assert_eq!(keys.len(), 2, "a replaced in place: {keys:?}");
        assert_eq!(keys[0].0, "a");
        assert!(keys[0].1.contains("static"), "{keys:?}");
    }
}
