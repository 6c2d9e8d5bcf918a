//! The control plane's OpenTelemetry spans, exported over OTLP/gRPC to `--otlp-endpoint`:
//! one SERVER span per operator API call, and for each change a span tree — the change
//! from being recorded to the last node of its group ACKing it, with one child per node
//! from its first push to its ACK. A change made by an API call is a child of that call's
//! span, so `sluicectl apply` shows as one trace down to every node. Spans are queued and
//! exported in batches off the serving path; when the collector is down they are dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

/// Spans waiting for export; past this they are dropped.
const QUEUE_SPANS: usize = 4096;
/// How long the exporter lets spans gather before it sends them.
const GATHER: Duration = Duration::from_millis(200);

tokio::task_local! {
    /// The API call being served: `(trace id, span id)`, so a change it makes joins its trace.
    static CALL: ([u8; 16], [u8; 8]);
}

/// Where spans go.
#[derive(Debug)]
pub struct Telemetry {
    queue: mpsc::Sender<Span>,
}

impl Telemetry {
    /// Starts the exporter to `endpoint` (`http://host:port`).
    pub fn start(endpoint: &str) -> Result<Arc<Self>, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let (queue, spans) = mpsc::channel(QUEUE_SPANS);
        tokio::spawn(export(spans, TraceServiceClient::new(channel)));
        Ok(Arc::new(Self { queue }))
    }

    /// Queues a finished span; never waits.
    pub fn record(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            debug!("span queue full: span dropped");
        }
    }
}

async fn export(
    mut spans: mpsc::Receiver<Span>,
    mut client: TraceServiceClient<tonic::transport::Channel>,
) {
    let resource = Resource {
        attributes: vec![string("service.name", "sluice-cp")],
        ..Resource::default()
    };
    while let Some(first) = spans.recv().await {
        tokio::time::sleep(GATHER).await;
        let mut batch = vec![first];
        while let Ok(span) = spans.try_recv() {
            batch.push(span);
        }
        let count = batch.len();
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
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(5));
        if let Err(status) = client.export(request).await {
            debug!(%status, spans = count, "span export failed: spans dropped");
        }
    }
}

/// A span's identity, to hang children on.
#[derive(Debug, Clone, Copy)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
}

impl SpanIds {
    /// A new root, or a child of the API call being served when there is one.
    pub fn for_change() -> Self {
        match CALL.try_with(|call| *call) {
            Ok((trace_id, parent)) => Self {
                trace_id,
                span_id: rand::random(),
                parent: Some(parent),
            },
            Err(_) => Self {
                trace_id: rand::random(),
                span_id: rand::random(),
                parent: None,
            },
        }
    }

    /// A child of this span.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: rand::random(),
            parent: Some(self.span_id),
        }
    }

    /// The finished span.
    pub fn span(
        &self,
        name: String,
        kind: span::SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Span {
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: kind as i32,
            start_time_unix_nano: nanos(start),
            end_time_unix_nano: nanos(SystemTime::now()),
            attributes,
            ..Span::default()
        }
    }
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A string attribute.
pub fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

/// A tower layer giving each gRPC call of the operator API a SERVER span.
#[derive(Clone)]
pub struct ApiSpans(pub Option<Arc<Telemetry>>);

impl<S> tower_layer::Layer<S> for ApiSpans {
    type Service = ApiSpanService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiSpanService {
            inner,
            telemetry: self.0.clone(),
        }
    }
}

/// [`ApiSpans`] around one service.
#[derive(Clone)]
pub struct ApiSpanService<S> {
    inner: S,
    telemetry: Option<Arc<Telemetry>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for ApiSpanService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(telemetry) = self.telemetry.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let path = request.uri().path().trim_start_matches('/').to_string();
        let ids = SpanIds {
            trace_id: rand::random(),
            span_id: rand::random(),
            parent: None,
        };
        let start = SystemTime::now();
        // The call's own log lines carry its trace id.
        let trace_hex: String = ids.trace_id.iter().map(|b| format!("{b:02x}")).collect();
        let call = self
            .inner
            .call(request)
            .instrument(tracing::info_span!("api_call", trace_id = %trace_hex));
        Box::pin(async move {
            let result = CALL.scope((ids.trace_id, ids.span_id), call).await;
            let status = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string(),
                Err(_) => "2".to_string(),
            };
            let (service, method) = path.split_once('/').unwrap_or((&path, ""));
            let attributes = vec![
                string("rpc.system", "grpc"),
                string("rpc.service", service),
                string("rpc.method", method),
                string("rpc.grpc.status_code", &status),
            ];
            telemetry.record(ids.span(path.clone(), span::SpanKind::Server, start, attributes));
            result
        })
    }
}
