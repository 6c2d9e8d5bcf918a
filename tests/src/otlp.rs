//! A real OTLP receiver: the collector's `TraceService` and `LogsService` from the
//! `opentelemetry-proto` definitions, served with tonic on loopback (or as OTLP/HTTP). It
//! keeps every span with its resource's `service.name`, and every log record with its
//! resource's attributes, so tests read what a proxy exported.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// One received span and the `service.name` of the resource it came with.
#[derive(Debug, Clone)]
pub struct Received {
    pub service_name: Option<String>,
    /// The resource's attribute keys, sorted.
    pub resource_keys: Vec<String>,
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

/// One received log record and the attributes of the resource it came with.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    pub resource: Vec<KeyValue>,
    pub record: LogRecord,
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
    logs: Arc<Mutex<Vec<ReceivedLog>>>,
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
            let mut resource_keys: Vec<String> = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter().map(|a| a.key.clone()))
                .collect();
            resource_keys.sort();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service_name: service_name.clone(),
                        resource_keys: resource_keys.clone(),
                        span,
                    });
                }
            }
        }
    }
}

impl Collector {
    fn keep_logs(&self, request: ExportLogsServiceRequest) {
        *self.requests.lock().unwrap() += 1;
        let mut logs = self.logs.lock().unwrap();
        for resource_logs in request.resource_logs {
            let resource = resource_logs
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope in resource_logs.scope_logs {
                for record in scope.log_records {
                    logs.push(ReceivedLog {
                        resource: resource.clone(),
                        record,
                    });
                }
            }
        }
    }

    /// Keeps an OTLP/HTTP body: logs on `/v1/logs`, spans on any other path.
    fn keep_http(&self, path: &str, body: bytes::Bytes) -> bool {
        use prost::Message;
        if path.ends_with("/logs") {
            ExportLogsServiceRequest::decode(body)
                .map(|r| self.keep_logs(r))
                .is_ok()
        } else {
            ExportTraceServiceRequest::decode(body)
                .map(|r| self.keep(r))
                .is_ok()
        }
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.keep_logs(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
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
        let logs = LogsServiceServer::new(collector.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(logs)
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
                                let status = if collector.keep_http(head.uri.path(), bytes) {
                                    http::StatusCode::OK
                                } else {
                                    http::StatusCode::BAD_REQUEST
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

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.collector.logs.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) until at least `count` log records arrived, and returns them.
    pub async fn wait_for_logs(&self, count: usize, limit: Duration) -> Vec<ReceivedLog> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let logs = self.logs();
            if logs.len() >= count || tokio::time::Instant::now() >= deadline {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
