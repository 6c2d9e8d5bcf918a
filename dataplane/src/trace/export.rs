//! Spans leave the request path through a bounded queue; one task per provider batches
//! them and exports each batch to the provider's collector ([`crate::otlp`]). A span that
//! finds the queue full, or whose batch fails, is dropped and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use xds_types::tracing::OpenTelemetry;

use crate::config::SnapshotStore;
use crate::otlp::{string_attribute, Batching, Counters, Payload};
use crate::stats::Stats;

/// Envoy's `tracing.opentelemetry.flush_interval_ms` default; `--trace-flush-interval-ms`.
static FLUSH_INTERVAL_MS: AtomicU64 = AtomicU64::new(5000);
/// Envoy's `tracing.opentelemetry.min_flush_spans` default: a batch this big goes at once.
const MIN_FLUSH_SPANS: usize = 5;

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
            let (queue, spans) = mpsc::channel(crate::otlp::QUEUE_ITEMS);
            // As Envoy's tracer: service.name and the SDK's own attributes, then what the
            // detectors find.
            let mut attributes = vec![
                string_attribute("service.name", self.provider.service_name.clone()),
                string_attribute("telemetry.sdk.language", "rust"),
                string_attribute("telemetry.sdk.name", "sluice"),
                string_attribute("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ];
            crate::otlp::detect_resource(&mut attributes, &self.provider.resource_detectors);
            let resource = Resource {
                attributes,
                ..Resource::default()
            };
            let batching = Batching {
                flush_interval: flush_interval(),
                min_items: MIN_FLUSH_SPANS,
                min_bytes: usize::MAX,
            };
            let counters = Counters {
                exported: Some(self.sent.clone()),
                dropped: self.dropped.clone(),
            };
            tokio::spawn(crate::otlp::run(
                spans,
                batching,
                self.provider.collector.clone(),
                store.clone(),
                counters,
                move |batch| {
                    Payload::Traces(ExportTraceServiceRequest {
                        resource_spans: vec![ResourceSpans {
                            resource: Some(resource.clone()),
                            scope_spans: vec![ScopeSpans {
                                spans: batch,
                                ..ScopeSpans::default()
                            }],
                            ..ResourceSpans::default()
                        }],
                    })
                },
            ));
            queue
        });
        if queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}
