//! Spans leave the request path through a bounded queue. One task per provider batches
//! them and exports each batch over OTLP/gRPC to a host of the provider's cluster. A
//! collector that is down or slow costs requests nothing: a span that finds the queue
//! full, or whose batch fails to export, is dropped and counted, and after a failure the
//! collector is left alone for a backoff (0.5 s, doubling to 10 s) before the next try.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracing::debug;
use xds_types::tracing::{OpenTelemetry, OtlpTransport};

use crate::config::SnapshotStore;
use crate::http::filters::grpc::Channels;
use crate::stats::Stats;

/// Envoy's `tracing.opentelemetry.flush_interval_ms` default; `--trace-flush-interval-ms`.
static FLUSH_INTERVAL_MS: AtomicU64 = AtomicU64::new(5000);
/// Envoy's `tracing.opentelemetry.min_flush_spans` default: a batch this big goes at once.
const MIN_FLUSH_SPANS: usize = 5;
/// Spans waiting for export, per provider; past this they are dropped.
const QUEUE_SPANS: usize = 8192;
/// The most spans in one export call.
const MAX_BATCH: usize = 512;
/// How long the exporter lets spans gather before it looks at the queue.
const GATHER: Duration = Duration::from_millis(20);
/// The pause after a failed export, doubling while the collector keeps failing.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Sets how long a span waits for a batch to fill before it is exported anyway.
pub fn set_flush_interval(interval: Duration) {
    FLUSH_INTERVAL_MS.store(interval.as_millis().max(1) as u64, Ordering::Relaxed);
}

fn flush_interval() -> Duration {
    Duration::from_millis(FLUSH_INTERVAL_MS.load(Ordering::Relaxed))
}

/// One provider's queue and counters.
pub struct Exporter {
    provider: OpenTelemetry,
    /// Started by the first span, on the runtime that serves requests.
    queue: OnceLock<mpsc::Sender<Span>>,
    sent: Counter,
    dropped: Counter,
}

/// Exporters by provider: connection managers with the same provider share one.
fn registry() -> &'static Mutex<HashMap<OpenTelemetry, Weak<Exporter>>> {
    static EXPORTERS: OnceLock<Mutex<HashMap<OpenTelemetry, Weak<Exporter>>>> = OnceLock::new();
    EXPORTERS.get_or_init(Default::default)
}

impl Exporter {
    /// The exporter for `provider`, shared while any tracer uses it.
    pub fn shared(provider: &OpenTelemetry, stats: &Stats) -> Arc<Self> {
        let mut open = registry().lock().expect("trace exporters");
        if let Some(exporter) = open.get(provider).and_then(Weak::upgrade) {
            return exporter;
        }
        let exporter = Arc::new(Self {
            provider: provider.clone(),
            queue: OnceLock::new(),
            sent: stats.tracing_counter("sent", "Spans exported to the collector"),
            dropped: stats.tracing_counter(
                "dropped",
                "Spans dropped: the export queue was full or the export failed",
            ),
        });
        open.retain(|_, e| e.strong_count() > 0);
        open.insert(provider.clone(), Arc::downgrade(&exporter));
        exporter
    }

    /// Queues `span`; never waits. The first span starts the export task, which picks
    /// hosts of the provider's cluster from `store`.
    pub fn submit(&self, span: Span, store: &SnapshotStore) {
        let queue = self.queue.get_or_init(|| {
            let (queue, spans) = mpsc::channel(QUEUE_SPANS);
            tokio::spawn(run(
                spans,
                self.provider.clone(),
                store.clone(),
                self.sent.clone(),
                self.dropped.clone(),
            ));
            queue
        });
        if queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// Batches and exports until every tracer of the provider is gone.
async fn run(
    mut spans: mpsc::Receiver<Span>,
    provider: OpenTelemetry,
    store: SnapshotStore,
    sent: Counter,
    dropped: Counter,
) {
    let channels = Channels::default();
    let resource = Resource {
        attributes: vec![super::string("service.name", provider.service_name.clone())],
        ..Resource::default()
    };
    let mut backoff = BACKOFF_MIN;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + flush_interval();
        // Resting instead of waiting on the queue: a span queued meanwhile wakes nobody,
        // and under load each export carries what GATHER brought.
        tokio::time::sleep(GATHER.min(flush_interval())).await;
        while batch.len() < MAX_BATCH {
            match spans.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        while batch.len() < MIN_FLUSH_SPANS {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        while batch.len() < MAX_BATCH {
            match spans.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    spans: batch,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        match export(&channels, &store, &provider, request).await {
            Ok(()) => {
                sent.inc_by(count);
                backoff = BACKOFF_MIN;
            }
            Err(error) => {
                debug!(cluster = %provider.cluster, %error, spans = count, "span export failed");
                dropped.inc_by(count);
                // A collector that is down is not asked again for a while; what queues
                // meanwhile is dropped without an attempt.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let mut skipped = 0;
                while spans.try_recv().is_ok() {
                    skipped += 1;
                }
                dropped.inc_by(skipped);
            }
        }
    }
}

async fn export(
    channels: &Channels,
    store: &SnapshotStore,
    provider: &OpenTelemetry,
    request: ExportTraceServiceRequest,
) -> Result<(), String> {
    if let OtlpTransport::Http {
        path,
        authority,
        headers,
    } = &provider.transport
    {
        return export_http(store, provider, path, authority, headers, request).await;
    }
    let channel = channels
        .pick(&store.load(), &provider.cluster, provider.timeout)
        .ok_or_else(|| format!("no host in cluster {}", provider.cluster))?;
    let mut request = tonic::Request::new(request);
    request.set_timeout(provider.timeout);
    let mut client = TraceServiceClient::new(channel);
    match tokio::time::timeout(provider.timeout, client.export(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

/// OTLP/HTTP: the batch as protobuf, POSTed through the cluster's connection pool.
async fn export_http(
    store: &SnapshotStore,
    provider: &OpenTelemetry,
    path: &str,
    authority: &str,
    headers: &[(String, String)],
    request: ExportTraceServiceRequest,
) -> Result<(), String> {
    use prost::Message;
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
        cluster: &provider.cluster,
        method: http::Method::POST,
        path,
        authority,
        headers: header_map,
        body: request.encode_to_vec().into(),
        timeout: provider.timeout,
        max_response_bytes: 64 * 1024,
    };
    match crate::http::filters::call::send(&snapshot, call).await {
        Some((head, _)) if head.status.is_success() => Ok(()),
        Some((head, _)) => Err(format!("collector answered {}", head.status)),
        None => Err("no answer from the collector".to_string()),
    }
}
