//! Small HTTP clients for tests: a pooled HTTP/1.1 client, an HTTP/2 prior-knowledge
//! client, and raw-socket helpers for malformed input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body parsed as JSON (the echo upstream's answer).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header of the request as the upstream saw it (from the echo JSON).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }

    /// A response header as a string.
    /// The response headers among `names` that are present, as a JSON object (what a
    /// differential compares).
    pub fn headers_named(&self, names: &[&str]) -> serde_json::Map<String, serde_json::Value> {
        names
            .iter()
            .filter_map(|h| self.header(h).map(|v| (h.to_string(), v.into())))
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// A pooled client speaking HTTP/1.1 (or HTTP/2 with prior knowledge).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// An HTTP/1.1 client.
    pub fn http1() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// An HTTP/2 cleartext (prior knowledge) client.
    pub fn http2() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends a request to `addr` and reads the whole response.
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", host);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body.into()))?;
        let response =
            tokio::time::timeout(Duration::from_secs(30), self.client.request(request)).await??;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GET with headers.
    pub async fn get(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send(addr, Method::GET, host, path, headers, Bytes::new())
            .await
    }
}

/// Writes `raw` to a new connection and reads until the server closes it or `timeout`.
pub async fn raw_exchange(
    addr: SocketAddr,
    raw: &[u8],
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The status code of the first response in a raw HTTP/1 answer.
pub fn raw_status(answer: &str) -> Option<u16> {
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `listener` answers 200 from upstream `server` with `x-config: stamp`.
pub async fn serves(listener: SocketAddr, server: &str, stamp: &str) -> bool {
    match HttpClient::http1().get(listener, "h", "/", &[]).await {
        Ok(r) => {
            r.status == 200
                && r.json()["server"] == server
                && r.header("x-config").as_deref() == Some(stamp)
        }
        Err(_) => false,
    }
}

/// One entry of an Envoy-style `/stats` text (`name: value` lines), if present.
pub fn stat_value(stats: &str, name: &str) -> Option<i64> {
    stats.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

/// The request headers among `names` that the echo upstream reports in its JSON answer.
pub fn echoed_headers(
    echo: &serde_json::Value,
    names: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    names
        .iter()
        .filter_map(|h| {
            echo["headers"][*h]
                .as_str()
                .map(|v| (h.to_string(), v.into()))
        })
        .collect()
}
