//! Upstream clusters at run time: endpoints, load balancing and the connection pools.
//!
//! A [`ClusterState`] is built from a validated [`xds_types::Cluster`] and lives in the
//! config snapshot. When an update leaves a cluster's config unchanged, the new snapshot
//! reuses the same `Arc<ClusterState>`, so pools, least-request counters and round-robin
//! position carry across. DNS results are cluster run-time state (like health), refreshed
//! by a task owned by the cluster, not config: they swap inside the cluster.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use tracing::{debug, warn};
use xds_types::cluster::{Discovery, DnsLookupFamily, LbPolicy, UpstreamProtocol};

use crate::body::Body;
use crate::stats::{ClusterStats, Stats};

pub mod tls;

use tls::{Connector, Transport, UpstreamStream};

/// The pooled HTTP client of one cluster (pools are per endpoint authority).
pub type UpstreamClient = Client<Connector, Body>;

/// Most per-host pools a cluster with auto SNI keeps (each SNI needs its own connections).
const MAX_SNI_POOLS: usize = 64;

/// One endpoint as the load balancer sees it.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` used as the request authority (and pool key).
    pub authority: String,
    /// `authority` parsed once, so building an upstream URI does not re-parse it.
    pub uri_authority: Option<http::uri::Authority>,
    pub weight: u32,
    /// Requests in flight, for LEAST_REQUEST.
    pub active: AtomicU64,
}

/// The endpoints of a cluster and the precomputed round-robin schedule over them.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Indices into `endpoints`, each repeated by weight, interleaved (smooth WRR).
    schedule: Vec<usize>,
    total_weight: u64,
}

/// A cluster at run time.
pub struct ClusterState {
    pub config: xds_types::Cluster,
    pub client: UpstreamClient,
    pub stats: ClusterStats,
    /// TLS to the endpoints, compiled; also what identifies it across updates (with the
    /// config's fingerprint).
    pub transport: Transport,
    /// What the TLS context was built from (secret contents, file stamps), so a rotated
    /// secret rebuilds the cluster's pools and an unchanged one keeps them.
    pub tls_key: u64,
    /// With auto SNI: one pool per request host.
    sni_clients: Mutex<HashMap<String, UpstreamClient>>,
    endpoints: ArcSwap<EndpointSet>,
    rr_cursor: AtomicUsize,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Longest round-robin schedule precomputed; larger weight sums use weighted random.
const MAX_SCHEDULE: u64 = 1 << 16;

impl EndpointSet {
    /// Builds the set from `(authority, weight)` pairs.
    pub fn new(endpoints: Vec<(String, u32)>) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|(authority, weight)| {
                Arc::new(Endpoint {
                    uri_authority: authority.parse().ok(),
                    authority,
                    weight,
                    active: AtomicU64::new(0),
                })
            })
            .collect();
        let total_weight: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
        let schedule = smooth_weighted_schedule(&endpoints, total_weight);
        Self {
            endpoints,
            schedule,
            total_weight,
        }
    }
}

/// Nginx's smooth weighted round robin, unrolled once into a fixed schedule.
fn smooth_weighted_schedule(endpoints: &[Arc<Endpoint>], total: u64) -> Vec<usize> {
    let gcd = endpoints
        .iter()
        .map(|e| u64::from(e.weight))
        .fold(0, num_gcd);
    if endpoints.is_empty() || gcd == 0 || total / gcd > MAX_SCHEDULE {
        return Vec::new();
    }
    let weights: Vec<i64> = endpoints
        .iter()
        .map(|e| (u64::from(e.weight) / gcd) as i64)
        .collect();
    let sum: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("non-empty");
        current[best] -= sum;
        schedule.push(best);
    }
    schedule
}

fn num_gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        num_gcd(b, a % b)
    }
}

impl ClusterState {
    /// Creates the cluster, its pool and (for DNS clusters) its resolver task.
    /// `transport` carries the compiled upstream TLS context, `tls_key` what it was built
    /// from.
    pub fn new(
        config: xds_types::Cluster,
        transport: Transport,
        tls_key: u64,
        stats: &Stats,
    ) -> Arc<Self> {
        let client = pool(&config, transport.clone(), None);
        let static_endpoints = match config.discovery {
            Discovery::Static | Discovery::LogicalDns { .. } => config
                .endpoints
                .iter()
                .filter(|e| e.healthy)
                .map(|e| (authority(&e.host, e.port), e.weight))
                .collect(),
            Discovery::StrictDns { .. } | Discovery::Eds => Vec::new(),
        };
        let cluster_stats = stats.cluster(&config.name);
        let state = Arc::new(Self {
            config,
            client,
            stats: cluster_stats,
            transport,
            tls_key,
            sni_clients: Mutex::new(HashMap::new()),
            endpoints: ArcSwap::from_pointee(EndpointSet::new(static_endpoints)),
            rr_cursor: AtomicUsize::new(0),
        });
        state
            .stats
            .membership_total
            .set(state.endpoints.load().endpoints.len() as i64);
        if let Discovery::StrictDns { refresh } = state.config.discovery {
            tokio::spawn(resolve_loop(Arc::downgrade(&state), refresh));
        }
        state
    }

    /// The pool a request to `host` uses: the cluster's, or with auto SNI the one whose
    /// connections were made with `host` as SNI.
    pub fn client_for(&self, host: &str) -> UpstreamClient {
        if !self.transport.tls().is_some_and(|t| t.auto_sni) || host.is_empty() {
            return self.client.clone();
        }
        let host = host_without_port(host).to_ascii_lowercase();
        let mut clients = self.sni_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&host) {
            return client.clone();
        }
        if clients.len() >= MAX_SNI_POOLS {
            clients.clear();
        }
        let client = pool(&self.config, self.transport.clone(), Some(host.clone()));
        clients.insert(host, client.clone());
        client
    }

    /// A raw connection to `endpoint` (for the TCP proxy), with the cluster's connect
    /// timeout and TLS.
    pub async fn connect(&self, endpoint: &Endpoint) -> std::io::Result<UpstreamStream> {
        tls::connect(
            &endpoint.authority,
            self.config.connect_timeout,
            &self.transport,
            None,
        )
        .await
    }

    /// Replaces an EDS cluster's endpoints when they differ; pools of endpoints that stay
    /// are kept (they live in the cluster's client, keyed by authority).
    pub fn assign(&self, assignment: &[xds_types::cluster::LbEndpoint]) {
        let next: Vec<(String, u32)> = assignment
            .iter()
            .filter(|e| e.healthy)
            .map(|e| (authority(&e.host, e.port), e.weight))
            .collect();
        self.replace_endpoints(next);
    }

    /// Swaps in `next` unless it equals the current endpoints.
    fn replace_endpoints(&self, next: Vec<(String, u32)>) {
        let current: Vec<(String, u32)> = self
            .endpoints
            .load()
            .endpoints
            .iter()
            .map(|e| (e.authority.clone(), e.weight))
            .collect();
        if current != next {
            debug!(cluster = %self.config.name, endpoints = next.len(), "endpoints changed");
            self.stats.membership_total.set(next.len() as i64);
            self.endpoints.store(Arc::new(EndpointSet::new(next)));
        }
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Picks an endpoint by the cluster's policy; `None` when there is none.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let n = set.endpoints.len();
        if n == 0 {
            return None;
        }
        let index = match self.config.lb_policy {
            LbPolicy::RoundRobin if !set.schedule.is_empty() => {
                let i = self.rr_cursor.fetch_add(1, Ordering::Relaxed);
                set.schedule[i % set.schedule.len()]
            }
            LbPolicy::LeastRequest { choice_count } => {
                let mut rng = rand::rng();
                let mut best = rng.random_range(0..n);
                for _ in 1..choice_count {
                    let other = rng.random_range(0..n);
                    if set.endpoints[other].active.load(Ordering::Relaxed)
                        < set.endpoints[best].active.load(Ordering::Relaxed)
                    {
                        best = other;
                    }
                }
                best
            }
            LbPolicy::RoundRobin | LbPolicy::Random => weighted_random(&set),
        };
        Some(set.endpoints[index].clone())
    }
}

/// A pool for `config`'s endpoints.
fn pool(
    config: &xds_types::Cluster,
    transport: Transport,
    sni_host: Option<String>,
) -> UpstreamClient {
    let connector = Connector {
        timeout: config.connect_timeout,
        transport,
        sni_host,
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.idle_timeout)
        .http2_only(config.protocol == UpstreamProtocol::Http2)
        .set_host(false);
    builder.build(connector)
}

/// `host` without a `:port` suffix.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn weighted_random(set: &EndpointSet) -> usize {
    let mut target = rand::rng().random_range(0..set.total_weight.max(1));
    for (i, e) in set.endpoints.iter().enumerate() {
        let w = u64::from(e.weight);
        if target < w {
            return i;
        }
        target -= w;
    }
    set.endpoints.len() - 1
}

/// `host:port`, bracketing IPv6 literals.
pub fn authority(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Re-resolves a STRICT_DNS cluster's hostnames until the cluster is dropped.
async fn resolve_loop(cluster: Weak<ClusterState>, refresh: Duration) {
    loop {
        let Some(state) = cluster.upgrade() else {
            return;
        };
        let mut resolved = Vec::new();
        for e in state.config.endpoints.iter().filter(|e| e.healthy) {
            match tokio::net::lookup_host((e.host.as_str(), e.port)).await {
                Ok(addrs) => {
                    let mut addrs: Vec<SocketAddr> = addrs
                        .filter(|a| family_allows(state.config.dns_lookup_family, a))
                        .collect();
                    addrs.sort();
                    addrs.dedup();
                    resolved.extend(
                        addrs
                            .into_iter()
                            .map(|a| (authority(&a.ip().to_string(), a.port()), e.weight)),
                    );
                }
                Err(error) => {
                    warn!(cluster = %state.config.name, host = %e.host, %error, "dns resolution failed")
                }
            }
        }
        // An empty answer never replaces known endpoints (a DNS outage keeps the last
        // good set, as Envoy does).
        if !resolved.is_empty() || state.endpoints.load().endpoints.is_empty() {
            state.replace_endpoints(resolved);
        }
        drop(state);
        tokio::time::sleep(refresh).await;
    }
}

fn family_allows(family: DnsLookupFamily, addr: &SocketAddr) -> bool {
    match family {
        DnsLookupFamily::V4Only => addr.is_ipv4(),
        DnsLookupFamily::V6Only => addr.is_ipv6(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_are_plain_round_robin() {
        let set = EndpointSet::new(vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
        assert_eq!(set.schedule, vec![0, 1, 2]);
    }

    #[test]
    fn weights_interleave_smoothly() {
        let set = EndpointSet::new(vec![("a".into(), 5), ("b".into(), 1), ("c".into(), 1)]);
        assert_eq!(set.schedule, vec![0, 0, 1, 0, 2, 0, 0]);
    }
}
