//! An HTTP upstream for tests and the demo: it answers with a JSON description of the
//! request, and its behaviour is steered by request headers (so path rewrites by the proxy
//! do not interfere):
//! - `x-test-status: N` — answer with status N;
//! - `x-test-fail-first: K` with `x-test-key: ID` — the first K requests of that key get 503;
//! - `x-test-delay-ms: N` — wait before answering;
//! - `x-test-response-bytes: N` — stream N bytes instead of JSON;
//! - `x-test-echo-body: 1` — stream the request body back;
//! - a gRPC request (`application/grpc`) to `/test.Echo/…` — a gRPC answer: the request's
//!   messages back, trailers `grpc-status: 0` and `grpc-message: echoed`, and the request's
//!   `content-type`, `te`, `grpc-accept-encoding` and `content-length` in `x-seen-*`.
//!
//! A test can also make requests fail (`fail_with`: all of them, or all but health checks
//! on `/healthz`) and stop the upstream, closing its open connections as a crashed process
//! would, then start it again on the same address.
//!
//! It records every request whose body it read completely, so tests can assert what an
//! upstream did (or did not) see.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A request the upstream received in full.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body_bytes: u64,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    concurrency: Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
    forced: Arc<Forced>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    failures: Mutex<HashMap<String, u64>>,
    /// Requests being handled now, and the most ever at once.
    concurrency: Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
    forced: Arc<Forced>,
}

/// The status every request gets when not 0, and whether `/healthz` is spared.
#[derive(Default)]
struct Forced {
    status: AtomicU16,
    spare_health_checks: AtomicBool,
}

impl Upstream {
    /// Starts an upstream named `name` (reported as `server` in its JSON) on a free port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(listener, name)
    }

    /// Starts an HTTPS upstream (HTTP/1.1 or h2 by ALPN) with `tls`'s certificate.
    pub async fn start_tls(name: &str, tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve_with(listener, name, Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    /// Starts an upstream on `addr` (one that was stopped before, say).
    pub async fn start_on(addr: SocketAddr, name: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream again");
        Self::serve(listener, name)
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener, name: &str) -> Self {
        Self::serve_with(listener, name, None)
    }

    fn serve_with(
        listener: TcpListener,
        name: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let concurrency = Arc::default();
        let forced = Arc::new(Forced::default());
        let state = Arc::new(State {
            name: name.to_string(),
            seen: seen.clone(),
            failures: Mutex::default(),
            concurrency: Arc::clone(&concurrency),
            forced: Arc::clone(&forced),
        });
        let task = tokio::spawn(async move {
            // The connections live in this task's set, so stopping the upstream closes them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    Some(_) = connections.join_next() => continue,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |r| handle(state.clone(), r));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            name: name.to_string(),
            seen,
            concurrency,
            forced,
            task,
        }
    }

    /// From now on answers every request with `status` (0: behave normally again); with
    /// `spare_health_checks`, requests for `/healthz` still get 200.
    pub fn fail_with(&self, status: u16, spare_health_checks: bool) {
        use std::sync::atomic::Ordering;
        self.forced
            .spare_health_checks
            .store(spare_health_checks, Ordering::SeqCst);
        self.forced.status.store(status, Ordering::SeqCst);
    }

    /// Requests seen in full for paths other than `/healthz` (traffic, not health checks).
    pub fn traffic_seen(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !s.path.starts_with("/healthz"))
            .count()
    }

    /// Requests received in full so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The most delayed (`x-test-delay-ms`) requests it was handling at once.
    pub fn peak_concurrency(&self) -> usize {
        self.concurrency.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets what was seen.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header<'a>(r: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let forced = state
        .forced
        .status
        .load(std::sync::atomic::Ordering::SeqCst);
    let spared = request.uri().path().starts_with("/healthz")
        && state
            .forced
            .spare_health_checks
            .load(std::sync::atomic::Ordering::SeqCst);
    let status = match forced {
        0 => header(&request, "x-test-status").and_then(|s| s.parse().ok()),
        _ if spared => None,
        forced => Some(forced),
    };
    let delay = header(&request, "x-test-delay-ms").and_then(|s| s.parse().ok());
    let response_bytes: Option<u64> =
        header(&request, "x-test-response-bytes").and_then(|s| s.parse().ok());
    let echo = header(&request, "x-test-echo-body").is_some();
    let fail_first: Option<u64> =
        header(&request, "x-test-fail-first").and_then(|s| s.parse().ok());
    let key = header(&request, "x-test-key").unwrap_or("").to_string();
    let text = text_response(&request);
    let method = request.method().to_string();
    let version = format!("{:?}", request.version());
    let path = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let headers = request.headers().clone();
    let mut all_headers = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        all_headers.insert(name.to_string(), values.join(",").into());
    }

    if path.starts_with("/test.Echo/")
        && header(&request, "content-type") == Some("application/grpc")
    {
        return Ok(grpc_echo(request).await);
    }
    if echo {
        let seen = state.seen.clone();
        let (_, body) = request.into_parts();
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = total.clone();
        let stream = body.into_data_stream().map(move |chunk| {
            let chunk =
                chunk.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk))
        });
        let on_end = futures_util::stream::once(async move {
            let body_bytes = total.load(std::sync::atomic::Ordering::Relaxed);
            seen.lock().unwrap().push(Seen {
                method,
                path,
                headers,
                body_bytes,
            });
            Ok(Frame::data(Bytes::new()))
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(
            stream.chain(on_end),
        ))));
    }

    // Read the whole body, counting bytes without keeping them.
    let mut body = request.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => {
                return Ok(simple(StatusCode::BAD_REQUEST, "bad body"));
            }
        }
    }
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body_bytes,
    });

    if let Some(ms) = delay {
        use std::sync::atomic::Ordering;
        let (now, peak) = &*state.concurrency;
        let current = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(current, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        now.fetch_sub(1, Ordering::SeqCst);
    }
    if let Some(k) = fail_first {
        let mut failures = state.failures.lock().unwrap();
        let n = failures.entry(key).or_insert(0);
        *n += 1;
        if *n <= k {
            return Ok(simple(StatusCode::SERVICE_UNAVAILABLE, "planned failure"));
        }
    }
    if let Some(text) = text {
        return Ok(text.into_response(status));
    }
    if let Some(n) = response_bytes {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len() as u64;
        let rest = (n % chunk.len() as u64) as usize;
        let tail = chunk.slice(..rest);
        let stream = futures_util::stream::iter((0..chunks).map(move |_| chunk.clone()))
            .chain(futures_util::stream::iter((rest > 0).then_some(tail)))
            .map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        return Ok(r);
    }
    let json = serde_json::json!({
        "server": state.name,
        "method": method,
        "version": version,
        "path": path,
        "headers": all_headers,
        "body_bytes": body_bytes,
    });
    let mut r = Response::new(
        Full::new(Bytes::from(json.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("x-upstream", state.name.parse().unwrap());
    Ok(r)
}

/// The gRPC echo (see the module's docs).
async fn grpc_echo(request: Request<Incoming>) -> Response<Body> {
    let mut seen = HeaderMap::new();
    for name in [
        "content-type",
        "te",
        "grpc-accept-encoding",
        "content-length",
    ] {
        if let Some(v) = request.headers().get(name) {
            if let Ok(seen_name) = http::HeaderName::try_from(format!("x-seen-{name}")) {
                seen.insert(seen_name, v.clone());
            }
        }
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers.insert("grpc-message", http::HeaderValue::from_static("echoed"));
    let frames = futures_util::stream::iter([
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(body)),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    *response.headers_mut() = seen;
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A text answer the request asks for, for the web-filter tests: `x-test-text-bytes: N`
/// (N bytes of compressible text, `text/plain`), each `x-test-response-header: name:
/// value` set on the response (`name: -` removes it), `x-test-chunked` to stream the
/// text in three frames without a length, and `x-test-encode: gzip|br|zstd` to send it
/// compressed with that `Content-Encoding`.
struct TextResponse {
    bytes: usize,
    headers: Vec<(String, String)>,
    chunked: bool,
    encode: Option<String>,
}

fn text_response(request: &Request<Incoming>) -> Option<TextResponse> {
    let bytes = header(request, "x-test-text-bytes")?.parse().ok()?;
    let headers = request
        .headers()
        .get_all("x-test-response-header")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(TextResponse {
        bytes,
        headers,
        chunked: request.headers().contains_key("x-test-chunked"),
        encode: header(request, "x-test-encode").map(str::to_string),
    })
}

/// `data` compressed with `coding` (gzip, br or zstd; anything else as it is).
pub fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(data).unwrap();
            }
            out
        }
        "zstd" => zstd::encode_all(data, 3).unwrap(),
        _ => data.to_vec(),
    }
}

/// The text the upstream sends for `x-test-text-bytes: n`.
pub fn test_text(n: usize) -> Vec<u8> {
    b"sluice streams compressible text; "
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

impl TextResponse {
    fn into_response(self, status: Option<u16>) -> Response<Body> {
        let mut text = Bytes::from(test_text(self.bytes));
        if let Some(coding) = &self.encode {
            text = Bytes::from(encode(coding, &text));
        }
        let mut r = if self.chunked {
            let third = text.len() / 3;
            let parts = [
                text.slice(..third),
                text.slice(third..2 * third),
                text.slice(2 * third..),
            ];
            let stream = futures_util::stream::iter(parts)
                .map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        } else {
            Response::new(Full::new(text).map_err(|never| match never {}).boxed())
        };
        *r.status_mut() = status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        r.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        if let Some(coding) = &self.encode {
            r.headers_mut()
                .insert("content-encoding", coding.parse().unwrap());
        }
        for (name, value) in self.headers {
            let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            if value == "-" {
                r.headers_mut().remove(&name);
            } else if let Ok(value) = value.parse() {
                r.headers_mut().insert(name, value);
            }
        }
        r
    }
}

fn simple(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}
