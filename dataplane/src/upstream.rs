//! Upstream clusters at run time: hosts and their state, load balancing, the connection
//! pool, circuit breakers, DNS and TLS.
//!
//! A [`ClusterState`] is built from a validated [`xds_types::Cluster`] and lives in the
//! config snapshot. When an update leaves a cluster's config unchanged, the new snapshot
//! reuses the same `Arc<ClusterState>`. Hosts are kept by address in the cluster's
//! registry: an EDS or DNS update that keeps a host keeps its [`Host`] — connection pool,
//! requests in flight, and (with later features) health and ejection state — and a CDS
//! update that changes the cluster carries its hosts over when their connections can stay.
//! A host that leaves the set drains: its idle connections close, requests in flight finish.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use tracing::{debug, warn};
use xds_types::cluster::{Discovery, DnsLookupFamily, LbPolicy};

use crate::stats::{ClusterStats, Stats};

pub mod circuit_breaker;
pub mod pool;
pub mod tls;

use circuit_breaker::Limits;
use pool::{ClusterContext, HostPool, PoolSettings};
use tls::{Transport, UpstreamStream};

/// Most per-host pools a host of a cluster with auto SNI keeps (one per SNI).
const MAX_SNI_POOLS: usize = 64;

/// One upstream host, kept by address across endpoint updates.
#[derive(Debug)]
pub struct Host {
    /// `host:port`: the request authority and the registry key.
    pub authority: String,
    /// `authority` parsed once, so building an upstream URI does not re-parse it.
    pub uri_authority: Option<http::uri::Authority>,
    /// Requests in flight, for LEAST_REQUEST.
    pub active: AtomicU64,
    pool: Arc<HostPool>,
    /// With auto SNI: one pool per request host.
    sni_pools: Mutex<HashMap<String, Arc<HostPool>>>,
    settings: Arc<PoolSettings>,
    transport: Transport,
}

impl Host {
    fn new(authority: String, settings: Arc<PoolSettings>, transport: Transport) -> Arc<Self> {
        Arc::new(Self {
            uri_authority: authority.parse().ok(),
            pool: HostPool::new(authority.clone(), settings.clone(), transport.clone()),
            authority,
            active: AtomicU64::new(0),
            sni_pools: Mutex::new(HashMap::new()),
            settings,
            transport,
        })
    }

    /// The pool a request for `host` uses: the host's, or with auto SNI the one whose
    /// connections were made with `host` as SNI.
    pub fn pool_for(&self, host: &str) -> Arc<HostPool> {
        if !self.transport.tls().is_some_and(|t| t.auto_sni) || host.is_empty() {
            return self.pool.clone();
        }
        let sni = host_without_port(host).to_ascii_lowercase();
        let mut pools = self.sni_pools.lock().unwrap_or_else(|e| e.into_inner());
        if pools.len() >= MAX_SNI_POOLS && !pools.contains_key(&sni) {
            pools.clear();
        }
        pools
            .entry(sni)
            .or_insert_with(|| {
                HostPool::new(
                    self.authority.clone(),
                    self.settings.clone(),
                    self.transport.clone(),
                )
            })
            .clone()
    }

    fn pools(&self) -> Vec<Arc<HostPool>> {
        let mut all = vec![self.pool.clone()];
        all.extend(
            self.sni_pools
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        all
    }

    /// Closes the idle connections (the host left the cluster).
    fn drain(&self) {
        for pool in self.pools() {
            pool.close_idle();
        }
    }
}

/// The hosts of a cluster with their weights and the precomputed round-robin schedule.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    /// `weights[i]` is the load-balancing weight of `hosts[i]`.
    pub weights: Vec<u32>,
    /// Indices into `hosts`, each repeated by weight, interleaved (smooth WRR).
    schedule: Vec<usize>,
    total_weight: u64,
}

/// A cluster at run time.
pub struct ClusterState {
    pub config: xds_types::Cluster,
    pub stats: ClusterStats,
    /// Plaintext or TLS (compiled) to the hosts.
    pub transport: Transport,
    /// What the TLS context was built from (secret contents, file stamps), so a rotated
    /// secret rebuilds the cluster's pools and an unchanged one keeps them.
    pub tls_key: u64,
    pub limits: Arc<Limits>,
    settings: Arc<PoolSettings>,
    /// Every host by authority: the state that survives endpoint updates.
    registry: Mutex<HashMap<String, Arc<Host>>>,
    hosts: ArcSwap<HostSet>,
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

impl HostSet {
    fn new(entries: Vec<(Arc<Host>, u32)>) -> Self {
        let (hosts, weights): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let total_weight: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let schedule = smooth_weighted_schedule(&weights, total_weight);
        Self {
            hosts,
            weights,
            schedule,
            total_weight,
        }
    }
}

/// Nginx's smooth weighted round robin, unrolled once into a fixed schedule.
fn smooth_weighted_schedule(weights: &[u32], total: u64) -> Vec<usize> {
    let gcd = weights.iter().map(|w| u64::from(*w)).fold(0, num_gcd);
    if weights.is_empty() || gcd == 0 || total / gcd > MAX_SCHEDULE {
        return Vec::new();
    }
    let weights: Vec<i64> = weights
        .iter()
        .map(|w| (u64::from(*w) / gcd) as i64)
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
    /// Creates the cluster and (for DNS clusters) its resolver task. `transport` carries
    /// the compiled upstream TLS context, `tls_key` what it was built from. `previous` is
    /// the version it replaces: its hosts are carried over when their connections can stay
    /// (same transport and pool settings), and its circuit-breaker counters when the
    /// limits did not change.
    pub fn new(
        config: xds_types::Cluster,
        transport: Transport,
        tls_key: u64,
        stats: &Stats,
        previous: Option<&ClusterState>,
    ) -> Arc<Self> {
        let settings = Arc::new(PoolSettings {
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_requests_per_connection: config.max_requests_per_connection,
            max_connection_duration: config.max_connection_duration,
            keepalive: config.keepalive,
        });
        let limits = previous
            .filter(|p| p.config.circuit_breakers == config.circuit_breakers)
            .map(|p| p.limits.clone())
            .unwrap_or_else(|| Limits::new(config.circuit_breakers));
        let registry = previous
            .filter(|p| {
                p.tls_key == tls_key
                    && p.settings.same_as(&settings)
                    && p.transport.same_as(&transport)
            })
            .map(|p| p.registry.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let cluster_stats = stats.cluster(&config.name);
        let state = Arc::new(Self {
            config,
            stats: cluster_stats,
            transport,
            tls_key,
            limits,
            settings,
            registry: Mutex::new(registry),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            rr_cursor: AtomicUsize::new(0),
        });
        let static_endpoints: Vec<(String, u32)> = match state.config.discovery {
            Discovery::Static | Discovery::LogicalDns { .. } => state
                .config
                .endpoints
                .iter()
                .filter(|e| e.healthy)
                .map(|e| (authority(&e.host, e.port), e.weight))
                .collect(),
            Discovery::StrictDns { .. } | Discovery::Eds => Vec::new(),
        };
        state.replace_endpoints(static_endpoints);
        if let Discovery::StrictDns { refresh } = state.config.discovery {
            tokio::spawn(resolve_loop(Arc::downgrade(&state), refresh));
        }
        tokio::spawn(reap_loop(Arc::downgrade(&state)));
        state
    }

    /// What a request through this cluster's pools needs.
    pub fn context<'a>(&'a self, sni_host: Option<&'a str>) -> ClusterContext<'a> {
        ClusterContext {
            limits: &self.limits,
            stats: &self.stats,
            sni_host,
        }
    }

    /// A raw connection to `host` (for the TCP proxy), with the cluster's connect timeout
    /// and TLS.
    pub async fn connect(&self, host: &Host) -> std::io::Result<UpstreamStream> {
        tls::connect(
            &host.authority,
            self.config.connect_timeout,
            &self.transport,
            None,
        )
        .await
    }

    /// Replaces an EDS cluster's endpoints when they differ.
    pub fn assign(&self, assignment: &[xds_types::cluster::LbEndpoint]) {
        let next: Vec<(String, u32)> = assignment
            .iter()
            .filter(|e| e.healthy)
            .map(|e| (authority(&e.host, e.port), e.weight))
            .collect();
        self.replace_endpoints(next);
    }

    /// Swaps in `next` unless it equals the current endpoints. Hosts that stay keep their
    /// state; hosts that go drain.
    fn replace_endpoints(&self, next: Vec<(String, u32)>) {
        let current = self.hosts.load();
        let same = current.hosts.len() == next.len()
            && current
                .hosts
                .iter()
                .zip(&current.weights)
                .zip(&next)
                .all(|((h, w), (a, nw))| h.authority == *a && w == nw);
        if same && !next.is_empty() {
            return;
        }
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<(Arc<Host>, u32)> = next
            .iter()
            .map(|(authority, weight)| {
                let host = registry
                    .entry(authority.clone())
                    .or_insert_with(|| {
                        Host::new(
                            authority.clone(),
                            self.settings.clone(),
                            self.transport.clone(),
                        )
                    })
                    .clone();
                (host, *weight)
            })
            .collect();
        let wanted: std::collections::HashSet<&String> = next.iter().map(|(a, _)| a).collect();
        registry.retain(|authority, host| {
            let keep = wanted.contains(authority);
            if !keep {
                host.drain();
            }
            keep
        });
        drop(registry);
        debug!(cluster = %self.config.name, endpoints = entries.len(), "endpoints changed");
        self.stats.membership_total.set(entries.len() as i64);
        self.hosts.store(Arc::new(HostSet::new(entries)));
    }

    /// The current hosts.
    pub fn hosts(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Picks a host by the cluster's policy; `None` when there is none.
    pub fn pick(&self) -> Option<Arc<Host>> {
        let set = self.hosts.load();
        let n = set.hosts.len();
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
                    if set.hosts[other].active.load(Ordering::Relaxed)
                        < set.hosts[best].active.load(Ordering::Relaxed)
                    {
                        best = other;
                    }
                }
                best
            }
            LbPolicy::RoundRobin | LbPolicy::Random => weighted_random(&set),
        };
        Some(set.hosts[index].clone())
    }

    fn reap(&self) {
        let hosts: Vec<Arc<Host>> = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for host in hosts {
            for pool in host.pools() {
                pool.reap();
            }
        }
    }
}

impl PoolSettings {
    fn same_as(&self, other: &PoolSettings) -> bool {
        self.protocol == other.protocol
            && self.connect_timeout == other.connect_timeout
            && self.idle_timeout == other.idle_timeout
            && self.max_requests_per_connection == other.max_requests_per_connection
            && self.max_connection_duration == other.max_connection_duration
            && self.keepalive == other.keepalive
    }
}

impl Transport {
    fn same_as(&self, other: &Transport) -> bool {
        matches!(
            (self, other),
            (Transport::Plaintext, Transport::Plaintext) | (Transport::Tls(_), Transport::Tls(_))
        )
    }
}

fn weighted_random(set: &HostSet) -> usize {
    let mut target = rand::rng().random_range(0..set.total_weight.max(1));
    for (i, w) in set.weights.iter().enumerate() {
        let w = u64::from(*w);
        if target < w {
            return i;
        }
        target -= w;
    }
    set.hosts.len() - 1
}

/// `host:port`, bracketing IPv6 literals.
pub fn authority(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
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

/// Closes expired idle connections until the cluster is dropped.
async fn reap_loop(cluster: Weak<ClusterState>) {
    let every = cluster
        .upgrade()
        .and_then(|c| c.config.idle_timeout)
        .map_or(Duration::from_secs(30), |t| {
            (t / 2).clamp(Duration::from_millis(50), Duration::from_secs(30))
        });
    loop {
        tokio::time::sleep(every).await;
        let Some(state) = cluster.upgrade() else {
            return;
        };
        state.reap();
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
        if !resolved.is_empty() || state.hosts.load().hosts.is_empty() {
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
        assert_eq!(smooth_weighted_schedule(&[1, 1, 1], 3), vec![0, 1, 2]);
    }

    #[test]
    fn weights_interleave_smoothly() {
        assert_eq!(
            smooth_weighted_schedule(&[5, 1, 1], 7),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }
}
