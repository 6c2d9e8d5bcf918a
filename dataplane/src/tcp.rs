//! The `tcp_proxy` network filter: a connection's bytes go, both ways, to an endpoint of a
//! cluster its load balancer picks (`max_connect_attempts` endpoints are tried), with
//! half-close passed through, until either side closes, nothing moves for `idle_timeout`,
//! `max_downstream_connection_duration` passes, or the chain drains.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;
use xds_types::route::ClusterTarget;

use crate::access_log::Entry;
use crate::config::{SnapshotStore, TcpRuntime};
use crate::listener::Drain;
use crate::local_reply::ResponseFlag;
use crate::upstream::outlier::Outcome;

/// How long a draining TCP connection may go on before it is closed.
pub const TCP_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// What a proxied connection did, for the access logs.
#[derive(Debug, Default)]
pub struct TcpOutcome {
    /// Bytes from the downstream, and to it.
    pub received: u64,
    pub sent: u64,
    pub cluster: Option<String>,
    pub upstream: Option<String>,
    /// Envoy's response flags, in its order.
    pub flags: Vec<ResponseFlag>,
}

/// The connection a TCP proxy serves, as its access log describes it.
pub struct TcpPeer {
    pub remote: SocketAddr,
    pub direct_remote: SocketAddr,
    pub local: SocketAddr,
    pub server_name: Option<String>,
    pub connection_id: u64,
}

/// Proxies `downstream` to the proxy's cluster until the connection ends, then writes the
/// proxy's access logs.
pub async fn proxy<S>(
    downstream: S,
    tcp: &TcpRuntime,
    store: &SnapshotStore,
    drain: Drain,
    peer: &TcpPeer,
) -> TcpOutcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let start = SystemTime::now();
    let started = Instant::now();
    let mut outcome = TcpOutcome::default();
    run(downstream, tcp, store, drain, &mut outcome).await;
    if let Some(logs) = &tcp.access_logs {
        logs.write(
            &Entry {
                start,
                duration: started.elapsed(),
                bytes_received: outcome.received,
                bytes_sent: outcome.sent,
                flags: &outcome.flags,
                upstream_host: outcome.upstream.as_deref(),
                upstream_cluster: outcome.cluster.as_deref(),
                server_name: peer.server_name.as_deref(),
                ..Entry::connection(
                    peer.remote,
                    peer.direct_remote,
                    peer.local,
                    peer.connection_id,
                    start,
                )
            },
            store,
        );
    }
    outcome
}

async fn run<S>(
    downstream: S,
    tcp: &TcpRuntime,
    store: &SnapshotStore,
    mut drain: Drain,
    outcome: &mut TcpOutcome,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let stats = &tcp.stats;
    stats.downstream_cx_total.inc();
    let snapshot = store.load();
    let name = match &tcp.config.target {
        ClusterTarget::Cluster(name) => name.as_str(),
        ClusterTarget::Weighted { clusters, total } => {
            crate::proxy::pick_weighted(clusters, *total)
        }
    };
    outcome.cluster = Some(name.to_string());
    let Some(cluster) = snapshot.clusters.get(name).cloned() else {
        outcome.flags.push(ResponseFlag::NoClusterFound);
        stats.downstream_cx_no_route.inc();
        debug!(cluster = %name, "tcp proxy: no such cluster");
        return;
    };
    // An aggregate cluster hands the connection to one of its clusters.
    let Some(cluster) = cluster.resolve(&snapshot.clusters) else {
        outcome.flags.push(ResponseFlag::NoHealthyUpstream);
        return;
    };
    drop(snapshot);
    let mut upstream = None;
    for attempt in 1..=tcp.config.max_connect_attempts {
        let Some(endpoint) = cluster.pick_any() else {
            cluster.stats.upstream_cx_none_healthy.inc();
            outcome.flags.push(ResponseFlag::NoHealthyUpstream);
            return;
        };
        outcome.upstream = Some(endpoint.authority.clone());
        match cluster.connect(&endpoint).await {
            Ok(stream) => {
                cluster.report(&endpoint, Outcome::Connected);
                upstream = Some(stream);
                break;
            }
            Err(error) => {
                cluster.stats.upstream_cx_connect_fail.inc();
                endpoint
                    .counters
                    .cx_connect_fail
                    .fetch_add(1, Ordering::Relaxed);
                cluster.report(&endpoint, Outcome::ConnectFailed);
                debug!(cluster = %name, endpoint = %endpoint.authority, attempt, %error, "tcp proxy: connect failed");
            }
        }
    }
    let Some(upstream) = upstream else {
        // As Envoy: every attempt failed, and the attempts are spent.
        outcome.flags.extend([
            ResponseFlag::UpstreamConnectionFailure,
            ResponseFlag::UpstreamRetryLimitExceeded,
        ]);
        return;
    };
    let activity = Arc::new(AtomicU64::new(0));
    let mut downstream = Counted {
        inner: downstream,
        activity: activity.clone(),
        read: 0,
    };
    let mut upstream = Counted {
        inner: upstream,
        activity: activity.clone(),
        read: 0,
    };
    // The copy borrows both streams until this block ends.
    {
        let copy = tokio::io::copy_bidirectional(&mut downstream, &mut upstream);
        tokio::pin!(copy);
        let idle = tcp.config.idle_timeout;
        let tick = idle.map_or(Duration::from_secs(3600), |t| {
            (t / 4).max(Duration::from_millis(10))
        });
        let mut ticker = tokio::time::interval(tick);
        let mut last = (
            activity.load(Ordering::Relaxed),
            tokio::time::Instant::now(),
        );
        let lifetime = sleep_opt(tcp.config.max_downstream_connection_duration);
        tokio::pin!(lifetime);
        let mut drain_deadline = None;
        loop {
            tokio::select! {
                result = &mut copy => {
                    if let Ok((sent, received)) = result {
                        stats.downstream_cx_rx_bytes_total.inc_by(sent);
                        stats.downstream_cx_tx_bytes_total.inc_by(received);
                    }
                    break;
                }
                _ = ticker.tick(), if idle.is_some() => {
                    let now = activity.load(Ordering::Relaxed);
                    if now != last.0 {
                        last = (now, tokio::time::Instant::now());
                    } else if last.1.elapsed() >= idle.unwrap_or_default() {
                        stats.idle_timeout.inc();
                        break;
                    }
                }
                () = &mut lifetime => {
                    stats.max_downstream_connection_duration.inc();
                    break;
                }
                () = drain.signaled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(tokio::time::Instant::now() + TCP_DRAIN_GRACE);
                }
                () = sleep_until_opt(drain_deadline) => break,
            }
        }
    }
    outcome.received = downstream.read;
    outcome.sent = upstream.read;
}

async fn sleep_opt(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A stream that counts its reads and writes (for the idle timeout), and the bytes read
/// from it (for the access log).
struct Counted<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    read: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.fetch_add(1, Ordering::Relaxed);
            self.read += read as u64;
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
