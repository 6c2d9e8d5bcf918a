//! Our own connection pool, one per host: HTTP/1.1 connections used one request at a
//! time and driven inline by the request's task (the response body polls the connection,
//! so no hand-off to a connection task and back), one shared HTTP/2 connection driven by a
//! task of its own, plain or TLS; connect timeout, idle timeout, requests per connection
//! and connection lifetime; and the failure signal of every attempt, for outlier detection.
//!
//! The cluster's circuit breakers (connections, pending requests) are checked here, where a
//! connection is made or waited for.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tracing::debug;
use xds_types::cluster::UpstreamProtocol;

use super::circuit_breaker::Limits;
use super::host::HostCounters;
use super::tls::{connect, Transport, UpstreamStream};
use crate::body::{Body, BoxError};
use crate::stats::ClusterStats;

type Io = TokioIo<UpstreamStream>;
type H1Connection = http1::Connection<Io, Body>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (or its TLS handshake failed): Envoy's `UF`.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The cluster's circuit breaker refused the request: `UO`.
    #[error("circuit breaker open: {0}")]
    Overflow(&'static str),
    /// The connection failed after the request was sent, before a response: `UC`.
    #[error("upstream: {0}")]
    Reset(hyper::Error),
}

impl UpstreamError {
    /// Whether the failure happened while connecting (retried by `connect-failure`).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// How a cluster's pools make and keep connections.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub protocol: UpstreamProtocol,
    /// PINGs on HTTP/2 connections, which close one whose peer stops answering.
    pub http2_keepalive: Option<xds_types::hcm::Http2Keepalive>,
    pub connect_timeout: Duration,
    /// Close a connection idle this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Close a connection after this many requests; `None`: no limit.
    pub max_requests_per_connection: Option<u32>,
    /// Close a connection this long after it was made; `None`: no limit.
    pub max_connection_duration: Option<Duration>,
    pub keepalive: Option<xds_types::listener::Keepalive>,
}

/// An idle HTTP/1.1 connection.
struct IdleConnection {
    connection: Http1,
    since: Instant,
}

/// An HTTP/1.1 connection: the sender and the connection future the request drives.
struct Http1 {
    sender: http1::SendRequest<Body>,
    connection: Pin<Box<H1Connection>>,
    created: Instant,
    requests: u32,
    /// Counts against the cluster's `max_connections` until dropped.
    _counted: ConnectionCount,
}

/// A shared HTTP/2 connection, driven by its own task.
struct Http2 {
    sender: http2::SendRequest<Body>,
    created: Instant,
    requests: Arc<AtomicUsize>,
    _counted: Arc<ConnectionCount>,
}

/// One host's connections.
pub struct HostPool {
    authority: String,
    settings: Arc<PoolSettings>,
    transport: Transport,
    counters: Arc<HostCounters>,
    idle: Mutex<Vec<IdleConnection>>,
    http2: Mutex<Option<Http2>>,
    /// Woken when a connection of this host is returned or closed (a pending request may
    /// take it).
    released: Notify,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Decrements the cluster's and the host's open-connection counts when dropped.
struct ConnectionCount {
    limits: Arc<Limits>,
    stats: ClusterStats,
    host: Arc<HostCounters>,
}

impl ConnectionCount {
    fn new(limits: &Arc<Limits>, stats: &ClusterStats, host: &Arc<HostCounters>) -> Self {
        host.cx_active.fetch_add(1, Ordering::Relaxed);
        Self {
            limits: limits.clone(),
            stats: stats.clone(),
            host: host.clone(),
        }
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.limits.connections.fetch_sub(1, Ordering::Relaxed);
        self.stats.upstream_cx_active.dec();
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
        self.limits.released.notify_waiters();
    }
}

/// What a request needs from its cluster to go through a pool.
pub struct ClusterContext<'a> {
    pub limits: &'a Arc<Limits>,
    pub stats: &'a ClusterStats,
    /// SNI from the request's host (auto SNI).
    pub sni_host: Option<&'a str>,
}

impl HostPool {
    /// An empty pool for `authority` (`host:port`), counting into the host's `counters`.
    pub fn new(
        authority: String,
        settings: Arc<PoolSettings>,
        transport: Transport,
        counters: Arc<HostCounters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            authority,
            settings,
            transport,
            counters,
            idle: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            released: Notify::new(),
        })
    }

    /// Closes every idle connection (a removed host drains; in-flight requests finish).
    pub fn close_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        *self.http2.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Closes connections idle past the idle timeout or lifetime (called periodically).
    pub fn reap(&self) {
        let settings = &self.settings;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|i| !expired(settings, &i.connection, i.since));
    }

    /// Sends `request` and returns the response; its body drives the connection.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<Body>,
        cluster: &ClusterContext<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut request = request;
        loop {
            if let Some(sender) = self.shared_http2() {
                return send_http2(sender, request).await;
            }
            let (mut connection, reused) = match self.acquire(cluster).await? {
                Acquired::Idle(c) => (c, true),
                // Boxed, as the dial in `acquire`: connecting is rare, and inline its state
                // would make every request's future (moved whole when spawned) kilobytes larger.
                Acquired::Opened(stream, counted) => {
                    match Box::pin(self.handshake(*stream, counted)).await? {
                        Connected::Http1(c) => (c, false),
                        Connected::Http2(sender) => return send_http2(sender, request).await,
                    }
                }
            };
            connection.requests += 1;
            // HTTP/1.1 requests go out in origin form (`GET /path`), as Envoy sends them;
            // the full URI is kept in case the request comes back unsent.
            let origin = origin_form(request.uri());
            let uri = std::mem::replace(request.uri_mut(), origin);
            let sent = connection.sender.try_send_request(request);
            match drive(&mut connection.connection, sent).await {
                Ok(response) => return Ok(self.respond(response, connection)),
                Err(mut error) => match error.take_message() {
                    // A pooled connection the upstream closed before the request went out
                    // (hyper hands the request back): try the next one. A fresh connection
                    // gets no second chance.
                    Some(mut unsent) if reused => {
                        debug!(host = %self.authority, "pooled connection closed; retrying on another");
                        *unsent.uri_mut() = uri;
                        request = unsent;
                    }
                    _ => return Err(UpstreamError::Reset(error.into_error())),
                },
            }
        }
    }

    /// Sends an upgrade request (WebSocket) on a new connection driven by a task, so the
    /// upgraded stream outlives this call.
    pub async fn send_upgrade(
        self: &Arc<Self>,
        request: Request<Body>,
        cluster: &ClusterContext<'_>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let limits = cluster.limits;
        if !limits.try_open_connection() {
            cluster.stats.upstream_cx_overflow.inc();
            return Err(UpstreamError::Overflow("max_connections"));
        }
        let counted = ConnectionCount::new(limits, cluster.stats, &self.counters);
        let stream = self.dial(cluster).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Reset)?;
        tokio::spawn(async move {
            let _counted = counted;
            let _ = connection.with_upgrades().await;
        });
        let mut request = request;
        *request.uri_mut() = origin_form(request.uri());
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Reset)
    }

    /// The host's HTTP/2 connection, while it is open and within its lifetime and request
    /// limits.
    fn shared_http2(&self) -> Option<http2::SendRequest<Body>> {
        let mut shared = self.http2.lock().unwrap_or_else(|e| e.into_inner());
        let h2 = shared.as_ref()?;
        let settings = &self.settings;
        let young = settings
            .max_connection_duration
            .is_none_or(|d| h2.created.elapsed() < d);
        let under_limit = settings
            .max_requests_per_connection
            .is_none_or(|max| h2.requests.fetch_add(1, Ordering::Relaxed) < max as usize);
        if !h2.sender.is_closed() && young && under_limit {
            return Some(h2.sender.clone());
        }
        *shared = None;
        None
    }

    /// A live idle HTTP/1.1 connection, if there is one.
    fn checkout(&self) -> Option<Http1> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(IdleConnection {
            mut connection,
            since,
        }) = idle.pop()
        {
            if expired(&self.settings, &connection, since) || !alive(&mut connection) {
                continue;
            }
            return Some(connection);
        }
        None
    }

    /// An idle connection, or a new one within the cluster's `max_connections`; at the
    /// limit the request waits (as a pending request, within `max_pending_requests`) for a
    /// connection to be returned or closed.
    async fn acquire(&self, cluster: &ClusterContext<'_>) -> Result<Acquired, UpstreamError> {
        let limits = cluster.limits;
        // The common case, without registering for wake-ups.
        if let Some(connection) = self.checkout() {
            return Ok(Acquired::Idle(connection));
        }
        let mut pending = None;
        loop {
            // Registered before checking, so a release between the check and the wait is
            // not missed.
            let returned = self.released.notified();
            let closed = limits.released.notified();
            tokio::pin!(returned, closed);
            returned.as_mut().enable();
            closed.as_mut().enable();
            if let Some(connection) = self.checkout() {
                return Ok(Acquired::Idle(connection));
            }
            if limits.try_open_connection() {
                let counted = ConnectionCount::new(limits, cluster.stats, &self.counters);
                return Ok(Acquired::Opened(
                    Box::new(Box::pin(self.dial(cluster)).await?),
                    counted,
                ));
            }
            if pending.is_none() {
                match limits.try_pend() {
                    Some(guard) => {
                        cluster.stats.upstream_cx_overflow.inc();
                        pending = Some(guard);
                    }
                    None => {
                        cluster.stats.upstream_rq_pending_overflow.inc();
                        return Err(UpstreamError::Overflow("max_pending_requests"));
                    }
                }
            }
            tokio::select! {
                () = returned => {}
                () = closed => {}
            }
        }
    }

    /// How this pool makes and keeps connections.
    pub fn settings(&self) -> &Arc<PoolSettings> {
        &self.settings
    }

    /// A new connection to the host (TCP, then TLS when the cluster has it).
    async fn dial(&self, cluster: &ClusterContext<'_>) -> Result<UpstreamStream, UpstreamError> {
        cluster.stats.upstream_cx_total.inc();
        cluster.stats.upstream_cx_active.inc();
        self.counters.cx_total.fetch_add(1, Ordering::Relaxed);
        let stream = connect(
            &self.authority,
            self.settings.connect_timeout,
            &self.transport,
            cluster.sni_host,
        )
        .await
        .map_err(|e| {
            self.counters
                .cx_connect_fail
                .fetch_add(1, Ordering::Relaxed);
            UpstreamError::Connect(e)
        })?;
        if let (Some(k), UpstreamStream::Plain(tcp)) = (self.settings.keepalive, &stream) {
            crate::listener::apply_keepalive(tcp, k);
        }
        Ok(stream)
    }

    async fn handshake(
        &self,
        stream: UpstreamStream,
        counted: ConnectionCount,
    ) -> Result<Connected, UpstreamError> {
        let h2 = match self.settings.protocol {
            UpstreamProtocol::Http2 => true,
            // A host that follows the downstream splits into one pool per protocol.
            UpstreamProtocol::Http1 | UpstreamProtocol::Downstream => false,
            UpstreamProtocol::Auto => stream.negotiated_h2(),
        };
        let io = TokioIo::new(stream);
        if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            if let Some(k) = self.settings.http2_keepalive {
                builder
                    .keep_alive_interval(k.interval)
                    .keep_alive_timeout(k.timeout)
                    .keep_alive_while_idle(true);
            }
            let (sender, connection) = builder
                .handshake::<_, Body>(io)
                .await
                .map_err(UpstreamError::Reset)?;
            let counted = Arc::new(counted);
            let held = counted.clone();
            tokio::spawn(async move {
                let _held = held;
                if let Err(error) = connection.await {
                    debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            let requests = Arc::new(AtomicUsize::new(1));
            *self.http2.lock().unwrap_or_else(|e| e.into_inner()) = Some(Http2 {
                sender: sender.clone(),
                created: Instant::now(),
                requests,
                _counted: counted,
            });
            return Ok(Connected::Http2(sender));
        }
        let (sender, connection) = http1::Builder::new()
            .handshake::<_, Body>(io)
            .await
            .map_err(UpstreamError::Reset)?;
        Ok(Connected::Http1(Http1 {
            sender,
            connection: Box::pin(connection),
            created: Instant::now(),
            requests: 0,
            _counted: counted,
        }))
    }

    /// The downstream response: its body keeps driving the connection and returns it to
    /// the pool once the body has ended.
    fn respond(
        self: &Arc<Self>,
        response: Response<Incoming>,
        connection: Http1,
    ) -> Response<Body> {
        let (parts, incoming) = response.into_parts();
        let reusable = self
            .settings
            .max_requests_per_connection
            .is_none_or(|max| connection.requests < max);
        if http_body::Body::is_end_stream(&incoming) {
            // No body to drive the connection with: back to the pool now.
            if reusable {
                self.release(connection);
            }
            return Response::from_parts(parts, crate::body::empty());
        }
        let body = Driving {
            inner: incoming,
            connection: Some(connection),
            closed: false,
            reusable,
            pool: self.clone(),
        };
        Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }

    fn release(&self, connection: Http1) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(IdleConnection {
                connection,
                since: Instant::now(),
            });
        self.released.notify_one();
    }
}

/// A connection for a request: an idle one, or a new stream (counted) to handshake on.
enum Acquired {
    Idle(Http1),
    Opened(Box<UpstreamStream>, ConnectionCount),
}

/// A new connection, by the protocol it speaks. It lives only from the dial to its first
/// use, so the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Connected {
    Http1(Http1),
    Http2(http2::SendRequest<Body>),
}

async fn send_http2(
    mut sender: http2::SendRequest<Body>,
    request: Request<Body>,
) -> Result<Response<Body>, UpstreamError> {
    sender.ready().await.map_err(UpstreamError::Reset)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(UpstreamError::Reset)?;
    Ok(response.map(crate::body::incoming))
}

fn expired(settings: &PoolSettings, connection: &Http1, since: Instant) -> bool {
    settings.idle_timeout.is_some_and(|t| since.elapsed() >= t)
        || settings
            .max_connection_duration
            .is_some_and(|d| connection.created.elapsed() >= d)
}

/// Polls an idle connection once: false when the upstream closed it meanwhile.
fn alive(connection: &mut Http1) -> bool {
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    if connection.connection.as_mut().poll(&mut cx).is_ready() {
        return false;
    }
    connection.sender.is_ready()
}

/// Drives `connection` until the response head of `sent` arrives.
async fn drive<F>(
    connection: &mut Pin<Box<H1Connection>>,
    sent: F,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>
where
    F: Future<
        Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>,
    >,
{
    tokio::pin!(sent);
    let mut connection_done = false;
    std::future::poll_fn(|cx| {
        if !connection_done {
            // When the connection ends, the response future resolves with its error.
            connection_done = connection.as_mut().poll(cx).is_ready();
        }
        sent.as_mut().poll(cx)
    })
    .await
}

pin_project_lite::pin_project! {
    /// A response body that drives its HTTP/1.1 connection (reading the body, writing
    /// what is left of the request) and returns it to the pool at the end of the body —
    /// when the last frame is read, or when the body is dropped after its end (hyper stops
    /// polling a body whose length it has written).
    struct Driving {
        #[pin]
        inner: Incoming,
        connection: Option<Http1>,
        closed: bool,
        reusable: bool,
        pool: Arc<HostPool>,
    }

    impl PinnedDrop for Driving {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if http_body::Body::is_end_stream(&*this.inner) {
                finish(this.connection, *this.reusable && !*this.closed, this.pool);
            }
        }
    }
}

/// Returns the connection to the pool when it can serve another request.
fn finish(connection: &mut Option<Http1>, reusable: bool, pool: &HostPool) {
    if let Some(connection) = connection.take() {
        if reusable {
            pool.release(connection);
        }
    }
}

impl http_body::Body for Driving {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let (Some(connection), false) = (this.connection.as_mut(), *this.closed) {
            *this.closed = connection.connection.as_mut().poll(cx).is_ready();
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Err(_)) => *this.connection = None,
            None => finish(this.connection, *this.reusable && !*this.closed, this.pool),
            Some(Ok(_)) if this.inner.is_end_stream() => {
                finish(this.connection, *this.reusable && !*this.closed, this.pool)
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The origin form of a request target: its path and query.
fn origin_form(uri: &http::Uri) -> http::Uri {
    uri.path_and_query().map_or_else(
        || http::Uri::from_static("/"),
        |p| http::Uri::from(p.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's future embeds `send`'s state, and an HTTP/2 downstream moves it whole
    /// into a task: connecting (TCP, TLS, handshake) is boxed so it stays small. Inline,
    /// it was 9 KB and cost 10 % more CPU per request (docs/performance.md).
    #[test]
    fn the_send_future_stays_small() {
        let host = crate::upstream::host::Host::for_tests("127.0.0.1:1", 0);
        let pool = host.pool_for("127.0.0.1", false);
        let limits = Limits::new(Default::default());
        let stats = crate::stats::Stats::new().cluster("c");
        let context = ClusterContext {
            limits: &limits,
            stats: &stats,
            sni_host: None,
        };
        let send = pool.send(Request::new(crate::body::empty()), &context);
        assert!(
            std::mem::size_of_val(&send) < 4096,
            "{} bytes",
            std::mem::size_of_val(&send)
        );
    }
}
