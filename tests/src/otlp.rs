//! A real OTLP/gRPC trace receiver: the collector's `TraceService` from the
//! `opentelemetry-proto` definitions, served with tonic on loopback. It keeps every span
//! it receives with its resource's `service.name`, so tests read what a proxy exported.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// One received span and the `service.name` of the resource it came with.
#[derive(Debug, Clone)]
pub struct Received {
    pub service_name: Option<String>,
    pub span: Span,
}

impl Received {
    /// The span's attribute `key` as text (numbers and booleans rendered).
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// The span's attribute keys, sorted.
    pub fn attribute_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.span.attributes.iter().map(|a| a.key.clone()).collect();
        keys.sort();
        keys
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// `key`'s value in `attributes`, as text.
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<u64>>,
    /// OTLP/HTTP: each export's path and headers.
    http_heads: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl Collector {
    fn keep(&self, request: ExportTraceServiceRequest) {
        *self.requests.lock().unwrap() += 1;
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"));
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    collector: Collector,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Serves on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Self::serve(listener)
    }

    /// Serves on `addr` (to stand up a collector where one was down).
    pub async fn start_at(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            addr,
            collector,
            task,
        }
    }

    /// Serves OTLP/HTTP (protobuf bodies on any path) on a free loopback port.
    pub async fn start_http() -> Self {
        use http_body_util::BodyExt;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let serving = collector.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let collector = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let collector = collector.clone();
                            async move {
                                let (head, body) = request.into_parts();
                                let bytes = body.collect().await?.to_bytes();
                                let status =
                                    match <ExportTraceServiceRequest as prost::Message>::decode(
                                        bytes,
                                    ) {
                                        Ok(export) => {
                                            collector.keep(export);
                                            http::StatusCode::OK
                                        }
                                        Err(_) => http::StatusCode::BAD_REQUEST,
                                    };
                                collector
                                    .http_heads
                                    .lock()
                                    .unwrap()
                                    .push((head.uri.path().to_string(), head.headers));
                                let mut response = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *response.status_mut() = status;
                                Ok::<_, hyper::Error>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            collector,
            task,
        }
    }

    /// OTLP/HTTP exports received so far: path and headers of each.
    pub fn http_heads(&self) -> Vec<(String, http::HeaderMap)> {
        self.collector.http_heads.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.collector.spans.lock().unwrap().clone()
    }

    /// Export calls received so far.
    pub fn requests(&self) -> u64 {
        *self.collector.requests.lock().unwrap()
    }

    /// Waits (up to `limit`) until at least `count` spans arrived, and returns them all.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if spans.len() >= count || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
