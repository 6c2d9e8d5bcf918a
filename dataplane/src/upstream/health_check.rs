//! Active health checks: one session per host, on the control runtime, checking over
//! HTTP, TCP or gRPC (`grpc.health.v1`) with the cluster's transport (plain or TLS), with
//! Envoy's state machine and intervals: a host is `/failed_active_hc` until its first
//! pass, fails at once on a non-retriable bad answer or after `unhealthy_threshold`
//! network failures, passes after `healthy_threshold` successes, and is checked every
//! `no_traffic_interval` until the cluster has carried a request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;
use xds_types::health_check::{Checker, GrpcCheck, HealthCheck, HttpCheck, TcpCheck};

use super::host::{flag, Host};
use super::tls::{connect, Transport, UpstreamStream};

/// Most response body a check reads when it does not look at the body.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// What one check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// A bad answer (`network: false`), or a connection error.
    Fail {
        network: bool,
        retriable: bool,
    },
    /// No answer within `timeout` (a network failure that also sets `/active_hc_timeout`).
    Timeout,
}

/// Whether a check moved the host between healthy and unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// On the way: a threshold is not reached yet.
    Pending,
    Changed,
}

/// One host's consecutive results.
#[derive(Debug)]
pub struct Session {
    first_check: bool,
    healthy_in_a_row: u32,
    unhealthy_in_a_row: u32,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            first_check: true,
            healthy_in_a_row: 0,
            unhealthy_in_a_row: 0,
        }
    }
}

impl Session {
    /// Applies a verdict to the host's flags; returns whether the host now passes its
    /// checks and how its health moved.
    pub fn apply(
        &mut self,
        host: &Host,
        config: &HealthCheck,
        verdict: Verdict,
    ) -> (bool, Transition) {
        let first = std::mem::replace(&mut self.first_check, false);
        match verdict {
            Verdict::Pass => {
                self.unhealthy_in_a_row = 0;
                let mut transition = Transition::Unchanged;
                if host.has(flag::FAILED_ACTIVE_HC) {
                    self.healthy_in_a_row += 1;
                    // A host's very first result counts at once, as in Envoy.
                    if first || self.healthy_in_a_row >= config.healthy_threshold {
                        host.clear(flag::FAILED_ACTIVE_HC | flag::ACTIVE_HC_TIMEOUT);
                        transition = Transition::Changed;
                    } else {
                        transition = Transition::Pending;
                    }
                }
                if host.clear(flag::PENDING_ACTIVE_HC) && transition == Transition::Unchanged {
                    transition = Transition::Changed;
                }
                (true, transition)
            }
            Verdict::Fail { .. } | Verdict::Timeout => {
                self.healthy_in_a_row = 0;
                let network = matches!(
                    verdict,
                    Verdict::Timeout | Verdict::Fail { network: true, .. }
                );
                let retriable = matches!(
                    verdict,
                    Verdict::Fail {
                        retriable: true,
                        ..
                    }
                );
                let mut transition = Transition::Unchanged;
                if !host.has(flag::FAILED_ACTIVE_HC) {
                    self.unhealthy_in_a_row += 1;
                    if (!network && !retriable)
                        || self.unhealthy_in_a_row >= config.unhealthy_threshold
                    {
                        host.set(flag::FAILED_ACTIVE_HC);
                        transition = Transition::Changed;
                    } else {
                        transition = Transition::Pending;
                    }
                }
                if verdict == Verdict::Timeout {
                    host.set(flag::ACTIVE_HC_TIMEOUT);
                }
                if host.clear(flag::PENDING_ACTIVE_HC) && transition == Transition::Unchanged {
                    transition = Transition::Changed;
                }
                (false, transition)
            }
        }
    }
}

/// The delay before the next check: Envoy's choice between `interval`,
/// `unhealthy_interval`, the edge intervals and (before the cluster's first request)
/// `no_traffic_interval`, plus jitter.
pub fn next_interval(
    config: &HealthCheck,
    traffic_seen: bool,
    passing: bool,
    transition: Transition,
) -> Duration {
    let pending = transition == Transition::Pending;
    let base = if !traffic_seen {
        if passing && !pending {
            config.no_traffic_healthy_interval
        } else {
            config.no_traffic_interval
        }
    } else if passing {
        if pending {
            config.healthy_edge_interval
        } else {
            config.interval
        }
    } else if pending {
        config.unhealthy_edge_interval
    } else {
        config.unhealthy_interval
    };
    let mut rng = rand::rng();
    let mut jitter = Duration::ZERO;
    let percent_ms = base.as_millis() as u64 * u64::from(config.interval_jitter_percent) / 100;
    if percent_ms > 0 {
        jitter += Duration::from_millis(rng.random_range(0..percent_ms));
    }
    let interval_ms = config.interval_jitter.as_millis() as u64;
    if interval_ms > 0 {
        jitter += Duration::from_millis(rng.random_range(0..interval_ms));
    }
    base + jitter
}

/// What a host's session needs from its cluster.
pub trait CheckEnv: Send + Sync + 'static {
    /// Whether the cluster has made a connection for traffic yet.
    fn traffic_seen(&self) -> bool;
    /// Called after every check with its result; `changed` when the host's health moved.
    fn on_result(&self, host: &Arc<Host>, passing: bool, changed: bool, verdict: Verdict);
}

/// Performs one check against a host, keeping what it may reuse (a connection).
pub trait Probe: Send + 'static {
    fn check<'a>(
        &'a mut self,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;
    /// Drops a connection after a timeout.
    fn reset(&mut self);
}

/// Checks `host` until the task is aborted (the host or the cluster went away).
pub async fn run_session(
    host: Arc<Host>,
    config: Arc<HealthCheck>,
    mut probe: Box<dyn Probe>,
    env: Arc<dyn CheckEnv>,
) {
    if !config.initial_jitter.is_zero() {
        let ms = config.initial_jitter.as_millis().max(1) as u64;
        let delay = Duration::from_millis(rand::rng().random_range(0..ms));
        tokio::time::sleep(delay).await;
    }
    let mut session = Session::default();
    loop {
        let verdict = match tokio::time::timeout(config.timeout, probe.check(&host)).await {
            Ok(v) => v,
            Err(_) => {
                probe.reset();
                Verdict::Timeout
            }
        };
        let (passing, transition) = session.apply(&host, &config, verdict);
        if verdict != Verdict::Pass {
            debug!(host = %host.authority, ?verdict, "health check failed");
        }
        env.on_result(&host, passing, transition == Transition::Changed, verdict);
        let delay = next_interval(&config, env.traffic_seen(), passing, transition);
        tokio::time::sleep(delay).await;
    }
}

/// The probe for a cluster's configured checker.
pub fn probe(
    config: &HealthCheck,
    cluster_name: &str,
    transport: Transport,
    connect_timeout: Duration,
) -> Box<dyn Probe> {
    let target = Target {
        transport,
        connect_timeout,
        alt_port: config.alt_port,
    };
    match &config.checker {
        Checker::Http(http) => Box::new(HttpProbe {
            target,
            authority: http
                .host
                .clone()
                .unwrap_or_else(|| cluster_name.to_string()),
            config: http.clone(),
            reuse: config.reuse_connection,
            sender: None,
        }),
        Checker::Tcp(tcp) => Box::new(TcpProbe {
            target,
            config: tcp.clone(),
            reuse: config.reuse_connection,
            stream: None,
        }),
        Checker::Grpc(grpc) => Box::new(GrpcProbe {
            target,
            authority: grpc
                .authority
                .clone()
                .unwrap_or_else(|| cluster_name.to_string()),
            config: grpc.clone(),
            reuse: config.reuse_connection,
            sender: None,
        }),
    }
}

/// Where and how checks connect.
struct Target {
    transport: Transport,
    connect_timeout: Duration,
    alt_port: Option<u16>,
}

impl Target {
    async fn connect(&self, host: &Host) -> std::io::Result<UpstreamStream> {
        let authority = match self.alt_port {
            // A Unix socket has no port to replace.
            None => host.authority.clone(),
            Some(_) if super::tls::unix_path(&host.authority).is_some() => host.authority.clone(),
            Some(port) => match host.authority.rsplit_once(':') {
                Some((h, _)) => format!("{h}:{port}"),
                None => host.authority.clone(),
            },
        };
        connect(&authority, self.connect_timeout, &self.transport, None).await
    }
}

const NETWORK: Verdict = Verdict::Fail {
    network: true,
    retriable: false,
};

/// A request sender, HTTP/1.1 or HTTP/2, whose connection task runs on its own.
enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn open(stream: UpstreamStream, h2: bool) -> Result<Self, hyper::Error> {
        let io = TokioIo::new(stream);
        if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            let (sender, connection) = builder.handshake(io).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Self::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Self::Http1(sender))
        }
    }

    fn is_usable(&self) -> bool {
        match self {
            Self::Http1(s) => !s.is_closed(),
            Self::Http2(s) => !s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Self::Http1(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
            Self::Http2(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
        }
    }
}

/// Sends a probe over the kept connection, connecting first when there is none usable; any
/// failure to connect or exchange is a network failure and drops the connection.
async fn exchange(
    sender: &mut Option<Sender>,
    target: &Target,
    host: &Host,
    h2: bool,
    request: Option<Request<Full<Bytes>>>,
) -> Result<http::Response<hyper::body::Incoming>, Verdict> {
    if !sender.as_ref().is_some_and(Sender::is_usable) {
        let stream = target.connect(host).await.map_err(|_| NETWORK)?;
        *sender = Some(Sender::open(stream, h2).await.map_err(|_| NETWORK)?);
    }
    let request = request.ok_or(NETWORK)?;
    let open = sender.as_mut().expect("connected above");
    match open.send(request).await {
        Ok(response) => Ok(response),
        Err(_) => {
            *sender = None;
            Err(NETWORK)
        }
    }
}

struct HttpProbe {
    target: Target,
    authority: String,
    config: HttpCheck,
    reuse: bool,
    sender: Option<Sender>,
}

impl HttpProbe {
    fn request(&self) -> Option<Request<Full<Bytes>>> {
        let h2 = self.config.http2;
        let uri: http::Uri = if h2 {
            let scheme = if self.target.transport.tls().is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}{}", self.authority, self.config.path)
                .parse()
                .ok()?
        } else {
            self.config.path.parse().ok()?
        };
        let body = Bytes::from(self.config.send.clone().unwrap_or_default());
        let mut request = Request::builder()
            .method(self.config.method.clone())
            .uri(uri)
            .body(Full::new(body))
            .ok()?;
        let headers = request.headers_mut();
        if !h2 {
            headers.insert(
                http::header::HOST,
                HeaderValue::from_str(&self.authority).ok()?,
            );
        }
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("Envoy/HC"),
        );
        crate::proxy::apply_mutations(headers, &self.config.headers);
        Some(request)
    }

    async fn run(&mut self, host: &Host) -> Verdict {
        let request = self.request();
        let response = match exchange(
            &mut self.sender,
            &self.target,
            host,
            self.config.http2,
            request,
        )
        .await
        {
            Ok(r) => r,
            Err(verdict) => return verdict,
        };
        let status = response.status().as_u16();
        let closes = response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let wanted = if self.config.receive.is_empty() {
            MAX_DRAINED_BODY
        } else {
            self.config.response_buffer_size
        };
        let body = read_limited(response.into_body(), wanted).await;
        if closes || !self.reuse || !body.as_ref().is_some_and(|(_, complete)| *complete) {
            self.sender = None;
        }
        if !self.config.passes(status) {
            return Verdict::Fail {
                network: false,
                retriable: self.config.is_retriable(status),
            };
        }
        if !self.config.receive.is_empty()
            && !contains_in_order(&body.unwrap_or_default().0, &self.config.receive)
        {
            return Verdict::Fail {
                network: false,
                retriable: false,
            };
        }
        Verdict::Pass
    }
}

impl Probe for HttpProbe {
    fn check<'a>(
        &'a mut self,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
        Box::pin(self.run(host))
    }

    fn reset(&mut self) {
        self.sender = None;
    }
}

/// Up to `limit` bytes of a body, and whether it was read to its end (only then may
/// the connection be reused); `None` when reading failed.
async fn read_limited(mut body: hyper::body::Incoming, limit: usize) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Ok(data) = frame.into_data() {
            let room = limit - out.len();
            if data.len() > room {
                out.extend_from_slice(&data[..room]);
                return Some((out, false));
            }
            out.extend_from_slice(&data);
        }
    }
    Some((out, true))
}

/// Whether every payload appears in `haystack`, each after the previous one.
fn contains_in_order(haystack: &[u8], payloads: &[Vec<u8>]) -> bool {
    let mut rest = haystack;
    for p in payloads {
        match rest.windows(p.len().max(1)).position(|w| w == p.as_slice()) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}

struct TcpProbe {
    target: Target,
    config: TcpCheck,
    reuse: bool,
    stream: Option<UpstreamStream>,
}

impl TcpProbe {
    async fn run(&mut self, host: &Host) -> Verdict {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => match self.target.connect(host).await {
                Ok(s) => s,
                Err(_) => return NETWORK,
            },
        };
        if let Some(send) = &self.config.send {
            if stream.write_all(send).await.is_err() || stream.flush().await.is_err() {
                return NETWORK;
            }
        }
        if self.config.receive.is_empty() {
            return Verdict::Pass;
        }
        let wanted: usize = self.config.receive.iter().map(Vec::len).sum();
        let mut buffer = BytesMut::with_capacity(wanted.max(64));
        // Bytes are read until every payload has arrived in order; a mismatch waits for
        // more, so it ends as a timeout, as in Envoy.
        loop {
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return NETWORK,
                Ok(_) => {
                    if contains_in_order(&buffer, &self.config.receive) {
                        break;
                    }
                    if buffer.len() > 64 * 1024 {
                        buffer.advance(buffer.len() - wanted);
                    }
                }
            }
        }
        if self.reuse {
            self.stream = Some(stream);
        }
        Verdict::Pass
    }
}

impl Probe for TcpProbe {
    fn check<'a>(
        &'a mut self,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
        Box::pin(self.run(host))
    }

    fn reset(&mut self) {
        self.stream = None;
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: i32 = 1;

struct GrpcProbe {
    target: Target,
    authority: String,
    config: GrpcCheck,
    reuse: bool,
    sender: Option<Sender>,
}

impl GrpcProbe {
    fn request(&self) -> Option<Request<Full<Bytes>>> {
        use prost::Message;
        let message = HealthCheckRequest {
            service: self.config.service_name.clone(),
        }
        .encode_to_vec();
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(0);
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let scheme = if self.target.transport.tls().is_some() {
            "https"
        } else {
            "http"
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!(
                "{scheme}://{}/grpc.health.v1.Health/Check",
                self.authority
            ))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .header(http::header::USER_AGENT, "Envoy/HC")
            .body(Full::new(Bytes::from(frame)))
            .ok()?;
        crate::proxy::apply_mutations(request.headers_mut(), &self.config.metadata);
        Some(request)
    }

    async fn run(&mut self, host: &Host) -> Verdict {
        use prost::Message;
        let request = self.request();
        let response = match exchange(&mut self.sender, &self.target, host, true, request).await {
            Ok(r) => r,
            Err(verdict) => return verdict,
        };
        if !self.reuse {
            self.sender = None;
        }
        let bad = Verdict::Fail {
            network: false,
            retriable: false,
        };
        if response.status() != StatusCode::OK {
            return bad;
        }
        let header_status = response.headers().get("grpc-status").cloned();
        let collected = match response.into_body().collect().await {
            Ok(c) => c,
            Err(_) => {
                self.sender = None;
                return NETWORK;
            }
        };
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(header_status);
        if grpc_status.as_ref().map(HeaderValue::as_bytes) != Some(b"0") {
            return bad;
        }
        let body = collected.to_bytes();
        if body.len() < 5 || body[0] != 0 {
            return bad;
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        match body
            .get(5..5 + len)
            .and_then(|m| HealthCheckResponse::decode(m).ok())
        {
            Some(r) if r.status == SERVING => Verdict::Pass,
            _ => bad,
        }
    }
}

impl Probe for GrpcProbe {
    fn check<'a>(
        &'a mut self,
        host: &'a Host,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
        Box::pin(self.run(host))
    }

    fn reset(&mut self) {
        self.sender = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    fn config(yaml: &str) -> HealthCheck {
        let pb: xds_types::pb::envoy::config::core::v3::HealthCheck =
            xds_types::decode::from_yaml(yaml, "envoy.config.core.v3.HealthCheck").unwrap();
        HealthCheck::try_from(&pb).unwrap()
    }

    fn host(flags: u16) -> Arc<Host> {
        Host::for_tests("127.0.0.1:1", flags)
    }

    const CHECK: &str = "timeout: 1s\ninterval: 5s\nunhealthy_threshold: 3\nhealthy_threshold: 2\nhttp_health_check: {path: /}";
    const FAIL: Verdict = Verdict::Fail {
        network: false,
        retriable: false,
    };

    #[test]
    fn the_first_pass_makes_a_new_host_healthy_at_once() {
        let c = config(CHECK);
        let h = host(flag::FAILED_ACTIVE_HC);
        let mut s = Session::default();
        assert_eq!(s.apply(&h, &c, Verdict::Pass), (true, Transition::Changed));
        assert!(!h.has(flag::FAILED_ACTIVE_HC));
    }

    #[test]
    fn a_bad_answer_fails_at_once_and_network_failures_need_the_threshold() {
        let c = config(CHECK);
        let h = host(0);
        let mut s = Session::default();
        assert_eq!(s.apply(&h, &c, NETWORK), (false, Transition::Pending));
        assert_eq!(
            s.apply(&h, &c, Verdict::Timeout),
            (false, Transition::Pending)
        );
        assert!(h.has(flag::ACTIVE_HC_TIMEOUT) && !h.has(flag::FAILED_ACTIVE_HC));
        assert_eq!(s.apply(&h, &c, NETWORK), (false, Transition::Changed));
        assert!(h.has(flag::FAILED_ACTIVE_HC));
        // Back: two passes in a row (not the first check any more).
        assert_eq!(s.apply(&h, &c, Verdict::Pass), (true, Transition::Pending));
        assert_eq!(s.apply(&h, &c, Verdict::Pass), (true, Transition::Changed));
        assert_eq!(h.describe_flags(), "healthy");
        // A 500 (not retriable) fails a healthy host at once.
        assert_eq!(s.apply(&h, &c, FAIL), (false, Transition::Changed));
        // A retriable status counts like a network failure.
        let h = host(0);
        let retriable = Verdict::Fail {
            network: false,
            retriable: true,
        };
        let mut s = Session::default();
        assert_eq!(s.apply(&h, &c, retriable), (false, Transition::Pending));
    }

    struct Scripted {
        verdicts: VecDeque<Verdict>,
    }

    impl Probe for Scripted {
        fn check<'a>(
            &'a mut self,
            _: &'a Host,
        ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
            let v = self.verdicts.pop_front().unwrap_or(Verdict::Pass);
            Box::pin(async move { v })
        }
        fn reset(&mut self) {}
    }

    struct Recorder {
        traffic: bool,
        results: Mutex<Vec<(Instant, bool)>>,
    }

    impl CheckEnv for Recorder {
        fn traffic_seen(&self) -> bool {
            self.traffic
        }
        fn on_result(&self, _: &Arc<Host>, passing: bool, _: bool, _: Verdict) {
            self.results.lock().unwrap().push((Instant::now(), passing));
        }
    }

    async fn times(traffic: bool, verdicts: Vec<Verdict>, run_for: Duration) -> Vec<(u64, bool)> {
        let env = Arc::new(Recorder {
            traffic,
            results: Mutex::new(Vec::new()),
        });
        let start = Instant::now();
        let task = tokio::spawn(run_session(
            host(flag::FAILED_ACTIVE_HC),
            Arc::new(config(
                "timeout: 1s\ninterval: 5s\nunhealthy_interval: 2s\nunhealthy_threshold: 2\nhealthy_threshold: 2\nhttp_health_check: {path: /}",
            )),
            Box::new(Scripted {
                verdicts: verdicts.into(),
            }),
            env.clone(),
        ));
        tokio::time::sleep(run_for).await;
        task.abort();
        let results = env.results.lock().unwrap().clone();
        results
            .into_iter()
            .map(|(t, p)| ((t - start).as_secs(), p))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn without_traffic_hosts_are_checked_every_no_traffic_interval() {
        let seen = times(false, vec![], Duration::from_secs(130)).await;
        assert_eq!(seen, vec![(0, true), (60, true), (120, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn with_traffic_intervals_follow_health() {
        // Pass at 0 (first check: healthy), fail (2 network failures needed; the pending
        // one waits `unhealthy_edge_interval` = `unhealthy_interval`), then fail hard.
        let seen = times(
            true,
            vec![Verdict::Pass, NETWORK, FAIL, FAIL],
            Duration::from_secs(17),
        )
        .await;
        assert_eq!(
            seen,
            vec![
                (0, true),
                (5, false),
                (7, false),
                (9, false),
                (11, true),
                (16, true)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_without_an_answer_times_out() {
        struct Silent;
        impl Probe for Silent {
            fn check<'a>(
                &'a mut self,
                _: &'a Host,
            ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
                Box::pin(std::future::pending())
            }
            fn reset(&mut self) {}
        }
        let env = Arc::new(Recorder {
            traffic: true,
            results: Mutex::new(Vec::new()),
        });
        let h = host(0);
        let task = tokio::spawn(run_session(
            h.clone(),
            Arc::new(config(CHECK)),
            Box::new(Silent),
            env.clone(),
        ));
        // Timeouts at 1s, 7s (1 + 5 + 1), 13s: the third reaches the threshold of 3.
        tokio::time::sleep(Duration::from_millis(12_500)).await;
        assert!(!h.has(flag::FAILED_ACTIVE_HC));
        assert!(h.has(flag::ACTIVE_HC_TIMEOUT));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(h.has(flag::FAILED_ACTIVE_HC));
        task.abort();
    }

    #[test]
    fn payloads_must_arrive_in_order() {
        assert!(contains_in_order(
            b"xxPONGyyOK",
            &[b"PONG".to_vec(), b"OK".to_vec()]
        ));
        assert!(!contains_in_order(
            b"OK PONG",
            &[b"PONG".to_vec(), b"OK".to_vec()]
        ));
    }
}
