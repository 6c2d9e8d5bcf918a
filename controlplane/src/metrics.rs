//! The control plane's Prometheus metrics: what it pushed, what nodes ACKed and NACKed
//! (per type and group), how many nodes are connected, and how long a change took to
//! converge — from the registry recording it to the last connected node of its group
//! ACKing every type. Fed by the fleet view; served as text by `--metrics-listen`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::telemetry::{string, SpanIds, Telemetry};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A type and a group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeGroup {
    /// The message name of the type URL (`envoy.config.cluster.v3.Cluster`).
    pub r#type: String,
    pub group: String,
}

/// A group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

/// Every metric, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    pub pushes: Family<TypeGroup, Counter>,
    pub acks: Family<TypeGroup, Counter>,
    pub nacks: Family<TypeGroup, Counter>,
    pub connected_nodes: Family<GroupLabel, Gauge>,
    pub convergence: Family<GroupLabel, Histogram>,
    /// Per group: the oldest change not yet converged.
    pending: Mutex<HashMap<String, Pending>>,
    /// Where the changes' span trees go, with `--otlp-endpoint`.
    telemetry: OnceLock<Arc<Telemetry>>,
}

/// A change on its way to a group's nodes.
struct Pending {
    since: Instant,
    started: SystemTime,
    /// Whether anything was pushed since (before the first push every node is trivially
    /// in step).
    pushed: bool,
    /// When every connected node was first seen in step since the last push: the change's
    /// convergence time, should no other node turn out to be concerned.
    settled: Option<Instant>,
    revision: u64,
    source: String,
    span: SpanIds,
    /// Per node pushed since the change: its span (from that push) and whether the node
    /// has ACKed it.
    nodes: HashMap<String, (SpanIds, SystemTime, bool)>,
}

/// How long a change waits for a push to a node before it counts the node as not
/// concerned (a node subscribed to nothing the change touched is never pushed): ADS
/// pushes within the debounce window (10 ms by default).
const UNCONCERNED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_cp");
        let pushes = Family::<TypeGroup, Counter>::default();
        let acks = Family::<TypeGroup, Counter>::default();
        let nacks = Family::<TypeGroup, Counter>::default();
        let connected_nodes = Family::<GroupLabel, Gauge>::default();
        let convergence = Family::<GroupLabel, Histogram>::new_with_constructor(|| {
            // 1 ms to ~65 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 17,
            ))
        });
        registry.register(
            "xds_pushes",
            "Responses with a new version sent to nodes",
            pushes.clone(),
        );
        registry.register("xds_acks", "New versions nodes ACKed", acks.clone());
        registry.register("xds_nacks", "Versions nodes rejected", nacks.clone());
        registry.register(
            "connected_nodes",
            "Nodes with an open xDS stream",
            connected_nodes.clone(),
        );
        registry.register(
            "convergence_seconds",
            "From a change being recorded to the last connected node of its group ACKing it",
            convergence.clone(),
        );
        Self {
            registry,
            pushes,
            acks,
            nacks,
            connected_nodes,
            convergence,
            pending: Mutex::default(),
            telemetry: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Exports each change's span tree to `telemetry` from now on.
    pub fn trace_to(&self, telemetry: Arc<Telemetry>) {
        let _ = self.telemetry.set(telemetry);
    }

    /// Revision `revision` of `group` was recorded: its convergence clock starts (unless
    /// an older change is still converging, which this one then joins).
    pub fn changed(&self, group: &str, revision: u64, source: &str) {
        self.lock()
            .entry(group.to_string())
            .or_insert_with(|| Pending {
                since: Instant::now(),
                started: SystemTime::now(),
                pushed: false,
                settled: None,
                revision,
                source: source.to_string(),
                span: SpanIds::for_change(),
                nodes: HashMap::new(),
            });
    }

    /// Whether a change to `group` has not converged yet.
    pub fn converging(&self, group: &str) -> bool {
        self.lock().contains_key(group)
    }

    /// Something was pushed to `node` of `group`.
    pub fn pushed(&self, group: &str, node: &str) {
        if let Some(pending) = self.lock().get_mut(group) {
            pending.pushed = true;
            pending.settled = None;
            let span = pending.span;
            pending
                .nodes
                .entry(node.to_string())
                .or_insert_with(|| (span.child(), SystemTime::now(), false));
        }
    }

    /// `node` of `group` has ACKed everything it was sent: its span of a pending change
    /// ends.
    pub fn node_in_step(&self, group: &str, node: &str) {
        let ended = self
            .lock()
            .get_mut(group)
            .and_then(|p| p.nodes.get_mut(node))
            .filter(|(_, _, acked)| !acked)
            .map(|(span, started, acked)| {
                *acked = true;
                (*span, *started)
            });
        if let (Some((span, started)), Some(telemetry)) = (ended, self.telemetry.get()) {
            let attributes = vec![string("node.id", node), string("group", group)];
            telemetry.record(span.span(
                format!("push to {node}"),
                SpanKind::Client,
                started,
                attributes,
            ));
        }
    }

    /// Every node of `group` in `connected` has ACKed what it was sent: a pending change
    /// has converged once each of them was pushed it (or was not, for long enough to
    /// count as not concerned). When it waits for nodes that may not be concerned, the
    /// answer is how long: the caller then calls [`Metrics::settle`].
    pub fn in_step(&self, group: &str, connected: &[&str]) -> Option<std::time::Duration> {
        let mut pending = self.lock();
        let p = pending.get_mut(group).filter(|p| p.pushed)?;
        let settled = *p.settled.get_or_insert_with(Instant::now);
        let waited = p.since.elapsed();
        if !connected.iter().all(|n| p.nodes.contains_key(*n)) && waited < UNCONCERNED_AFTER {
            return Some(UNCONCERNED_AFTER - waited);
        }
        let done = pending.remove(group)?;
        drop(pending);
        self.converged(group, done, settled);
        None
    }

    /// The wait [`Metrics::in_step`] asked for is over: a change still in step since then
    /// converged when it settled (the nodes never pushed were not concerned).
    pub fn settle(&self, group: &str) {
        let mut pending = self.lock();
        let Some(settled) = pending
            .get(group)
            .filter(|p| p.since.elapsed() >= UNCONCERNED_AFTER)
            .and_then(|p| p.settled)
        else {
            return;
        };
        let Some(done) = pending.remove(group) else {
            return;
        };
        drop(pending);
        self.converged(group, done, settled);
    }

    fn converged(&self, group: &str, done: Pending, settled: Instant) {
        let took = settled.saturating_duration_since(done.since);
        self.convergence
            .get_or_create(&GroupLabel {
                group: group.to_string(),
            })
            .observe(took.as_secs_f64());
        if let Some(telemetry) = self.telemetry.get() {
            let attributes = vec![
                string("group", group),
                string("revision", &done.revision.to_string()),
                string("source", &done.source),
            ];
            let mut span = done.span.span(
                format!("converge {group}"),
                SpanKind::Internal,
                done.started,
                attributes,
            );
            span.end_time_unix_nano = (done.started + took)
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            telemetry.record(span);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` (any path, in fact) on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "metrics: accept failed");
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: Request<_>| {
                    let body = metrics.render();
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%error, "metrics: connection ended");
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(metrics: &Metrics) -> (u64, f64) {
        let text = metrics.render();
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            value("sluice_cp_convergence_seconds_count") as u64,
            value("sluice_cp_convergence_seconds_sum"),
        )
    }

    #[test]
    fn a_change_that_skips_a_node_converges_when_it_settled_without_another_event() {
        let metrics = Metrics::default();
        metrics.changed("edge", 2, "apply");
        metrics.pushed("edge", "a");
        metrics.node_in_step("edge", "a");
        // "b" was never pushed: it may still be, so the change waits.
        let wait = metrics.in_step("edge", &["a", "b"]).expect("waits for b");
        assert!(wait <= UNCONCERNED_AFTER);
        metrics.settle("edge");
        assert_eq!(observed(&metrics).0, 0, "too early to settle");
        std::thread::sleep(wait + std::time::Duration::from_millis(20));
        metrics.settle("edge");
        let (count, sum) = observed(&metrics);
        assert_eq!(count, 1);
        assert!(
            sum < 0.5,
            "converged when a ACKed, not after the wait: {sum}"
        );
        assert!(!metrics.converging("edge"));
    }

    #[test]
    fn a_push_after_settling_keeps_the_change_open() {
        let metrics = Metrics::default();
        metrics.changed("edge", 2, "apply");
        metrics.pushed("edge", "a");
        let wait = metrics.in_step("edge", &["a", "b"]).expect("waits for b");
        metrics.pushed("edge", "b");
        std::thread::sleep(wait + std::time::Duration::from_millis(20));
        metrics.settle("edge");
        assert!(metrics.converging("edge"), "b has not ACKed yet");
        assert_eq!(metrics.in_step("edge", &["a", "b"]), None);
        assert_eq!(observed(&metrics).0, 1);
    }
}
