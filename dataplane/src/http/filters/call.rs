//! Plain HTTP calls from filters to a service in a cluster (a JWKS endpoint, an HTTP
//! authorization service): a host picked by the cluster's load balancer, its connection
//! pool, and an answer read into memory up to a bound.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method};
use http_body_util::BodyExt;

use crate::config::Snapshot;

/// A request to send.
pub struct Call<'a> {
    pub cluster: &'a str,
    pub method: Method,
    /// Path and query.
    pub path: &'a str,
    /// `Host` of the request.
    pub authority: &'a str,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timeout: Duration,
    /// A longer answer counts as no answer.
    pub max_response_bytes: usize,
}

/// A service's answer: its head and its whole body.
pub type Answer = (http::response::Parts, Bytes);

/// The answer; `None` when there is no answer in time (no cluster or host, a connection
/// failure, a timeout, an answer over the bound).
pub fn send<'a>(
    snapshot: &'a Snapshot,
    call: Call<'a>,
) -> Pin<Box<dyn Future<Output = Option<Answer>> + Send + 'a>> {
    // Boxed: the pool's future is large.
    Box::pin(async move {
        let timeout = call.timeout;
        tokio::time::timeout(timeout, exchange(snapshot, call))
            .await
            .ok()
            .flatten()
    })
}

async fn exchange(snapshot: &Snapshot, call: Call<'_>) -> Option<(http::response::Parts, Bytes)> {
    let cluster = snapshot.clusters.get(call.cluster)?;
    let host = cluster.pick_any()?;
    let scheme = if cluster.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = format!("{scheme}://{}{}", host.uri_authority.as_ref()?, call.path);
    let mut request = http::Request::builder()
        .method(call.method)
        .uri(uri)
        .body(crate::body::full(call.body))
        .ok()?;
    *request.headers_mut() = call.headers;
    let headers = request.headers_mut();
    headers.insert(header::HOST, call.authority.parse().ok()?);
    // What Envoy's own calls carry: marked internal, with the deadline the caller keeps.
    headers.insert("x-envoy-internal", http::HeaderValue::from_static("true"));
    headers.insert(
        "x-envoy-expected-rq-timeout-ms",
        http::HeaderValue::from(call.timeout.as_millis() as u64),
    );
    let pool = host.pool_for(call.authority, false);
    let response = pool
        .send(request, &cluster.context(Some(call.authority)))
        .await
        .ok()?;
    let (head, mut body) = response.into_parts();
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > call.max_response_bytes {
                return None;
            }
        }
    }
    Some((head, bytes.freeze()))
}
