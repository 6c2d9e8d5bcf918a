//! Upstream clusters at run time: hosts and their state, health checking, outlier
//! detection, load balancing, the connection pool, circuit breakers, DNS and TLS.
//!
//! A [`ClusterState`] is built from a validated [`xds_types::Cluster`] and lives in the
//! config snapshot. When an update leaves a cluster's config unchanged, the new snapshot
//! reuses the same `Arc<ClusterState>`. Hosts are kept by address in the cluster's
//! registry: an EDS or DNS update that keeps a host keeps its [`Host`] — connection pool,
//! requests in flight, health flags, ejection state — and a CDS update that changes the
//! cluster carries its hosts over when their connections can stay (else their health).
//! A host that leaves the set drains: its idle connections close, requests in flight
//! finish; with active health checks it first stays, `/pending_dynamic_removal`, until a
//! check fails (unless `ignore_health_on_host_removal`).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::AbortHandle;
use tracing::{debug, warn};
use xds_types::cluster::{
    Discovery, DnsLookupFamily, EdsHealth, EndpointAddress, LbEndpoint, Locality,
};

use crate::stats::{ClusterStats, HealthCheckStats, Stats};

pub mod circuit_breaker;
pub mod control;
pub mod health_check;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;
pub mod tls;

use circuit_breaker::Limits;
use host::flag;
pub use host::Host;
use lb::{LbView, Member, PickRequest};
use outlier::{Detector, Outcome};
use pool::{ClusterContext, PoolSettings};
use tls::{Transport, UpstreamStream};

/// Health flags a new host of a cluster copies from the host it replaces (same address)
/// when the connections could not be carried over.
const CARRIED_FLAGS: u16 = flag::FAILED_ACTIVE_HC | flag::ACTIVE_HC_TIMEOUT;

/// One endpoint as discovery describes it, keyed by `authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    authority: String,
    weight: u32,
    priority: u32,
    locality: Locality,
    locality_weight: Option<u32>,
    health: EdsHealth,
}

impl Endpoint {
    fn from_lb(e: &LbEndpoint, authority: String) -> Self {
        Self {
            authority,
            weight: e.weight,
            priority: e.priority,
            locality: e.locality.clone(),
            locality_weight: e.locality_weight,
            health: e.health,
        }
    }
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
    pub outlier: Option<Arc<Detector>>,
    settings: Arc<PoolSettings>,
    /// Every host by authority: the state that survives endpoint updates.
    registry: Mutex<HashMap<String, Arc<Host>>>,
    /// What discovery said last (the input of the next comparison).
    endpoints: Mutex<Vec<Endpoint>>,
    members: ArcSwap<Vec<Member>>,
    member_hosts: ArcSwap<Vec<Arc<Host>>>,
    lb: ArcSwap<LbView>,
    /// Serialises membership changes and load-balancer rebuilds.
    change: Mutex<()>,
    overprovisioning: AtomicU32,
    health_checks: Option<HealthChecks>,
    /// Health-check sessions by host authority.
    sessions: Mutex<HashMap<String, AbortHandle>>,
    /// Sessions that have not reported their first result yet, and the wake-up for
    /// [`ClusterState::first_health_checks`].
    unchecked: std::sync::atomic::AtomicUsize,
    first_results: tokio::sync::Notify,
    /// The resolver, reaper and outlier sweep.
    background: Mutex<Vec<AbortHandle>>,
    /// A newer version of this cluster took over its hosts and checks.
    superseded: AtomicBool,
    this: Weak<ClusterState>,
}

/// What the cluster's health-check sessions share.
struct HealthChecks {
    config: Arc<xds_types::cluster::HealthCheck>,
    stats: HealthCheckStats,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl ClusterState {
    /// Creates the cluster and its background tasks (DNS, pool reaping, health checks,
    /// outlier sweeps). `transport` carries the compiled upstream TLS context, `tls_key`
    /// what it was built from. `previous` is the version it replaces: its hosts are carried
    /// over when their connections can stay (same transport and pool settings), else their
    /// health-check state is; its circuit-breaker counters when the limits did not change.
    pub fn new(
        config: xds_types::Cluster,
        transport: Transport,
        tls_key: u64,
        stats: &Stats,
        previous: Option<&ClusterState>,
    ) -> Arc<Self> {
        let settings = Arc::new(PoolSettings {
            protocol: config.protocol,
            http2_keepalive: config.http2_keepalive,
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
        let carried =
            previous.map(|p| p.registry.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let reuse_hosts = previous.is_some_and(|p| {
            p.tls_key == tls_key && p.settings.same_as(&settings) && p.transport.same_as(&transport)
        });
        let registry: HashMap<String, Arc<Host>> = match (&carried, reuse_hosts) {
            (Some(hosts), true) => hosts.clone(),
            (Some(hosts), false) => hosts
                .iter()
                .map(|(authority, old)| {
                    let host = Host::new(
                        authority.clone(),
                        settings.clone(),
                        transport.clone(),
                        old.flags() & CARRIED_FLAGS,
                    );
                    (authority.clone(), host)
                })
                .collect(),
            (None, _) => HashMap::new(),
        };
        // Health a removed feature set no longer applies.
        for host in registry.values() {
            if config.health_check.is_none() {
                host.clear(CARRIED_FLAGS | flag::PENDING_ACTIVE_HC | flag::PENDING_DYNAMIC_REMOVAL);
            }
            if config.outlier_detection.is_none() {
                host.clear(flag::FAILED_OUTLIER_CHECK);
            }
        }
        let endpoints = previous
            .map(|p| {
                p.endpoints
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .unwrap_or_default();
        let cluster_stats = stats.cluster(&config.name);
        let outlier = config
            .outlier_detection
            .clone()
            .map(|o| Detector::new(o, stats.outlier(&config.name)));
        let health_checks = config.health_check.clone().map(|h| HealthChecks {
            config: Arc::new(h),
            stats: stats.health_check(&config.name),
        });
        let overprovisioning = config.overprovisioning_factor;
        let state = Arc::new_cyclic(|this| Self {
            config,
            stats: cluster_stats,
            transport,
            tls_key,
            limits,
            outlier,
            settings,
            registry: Mutex::new(registry),
            endpoints: Mutex::new(Vec::new()),
            members: ArcSwap::from_pointee(Vec::new()),
            member_hosts: ArcSwap::from_pointee(Vec::new()),
            lb: ArcSwap::from_pointee(LbView::default()),
            change: Mutex::new(()),
            overprovisioning: AtomicU32::new(overprovisioning),
            health_checks,
            sessions: Mutex::new(HashMap::new()),
            unchecked: std::sync::atomic::AtomicUsize::new(0),
            first_results: tokio::sync::Notify::new(),
            background: Mutex::new(Vec::new()),
            superseded: AtomicBool::new(false),
            this: this.clone(),
        });
        if let Some(p) = previous {
            p.supersede();
            state.overprovisioning.store(
                p.overprovisioning.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
        match state.config.discovery {
            Discovery::Static | Discovery::LogicalDns { .. } => {
                let endpoints = state
                    .config
                    .endpoints
                    .iter()
                    .map(|e| Endpoint::from_lb(e, endpoint_authority(&e.address)))
                    .collect();
                state.replace_endpoints(endpoints);
            }
            // Discovered clusters start with what the previous version had.
            Discovery::StrictDns { .. } | Discovery::Eds => state.replace_endpoints(endpoints),
        }
        let mut background = Vec::new();
        if let Discovery::StrictDns { refresh } = state.config.discovery {
            background
                .push(tokio::spawn(resolve_loop(Arc::downgrade(&state), refresh)).abort_handle());
        }
        background.push(tokio::spawn(reap_loop(Arc::downgrade(&state))).abort_handle());
        if let Some(detector) = &state.outlier {
            background.push(control::spawn(sweep_loop(
                Arc::downgrade(&state),
                detector.config.interval,
            )));
        }
        *state.background.lock().unwrap_or_else(|e| e.into_inner()) = background;
        state
    }

    /// A newer version took over: stop checking and sweeping (requests in flight may still
    /// hold this one).
    fn supersede(&self) {
        self.superseded.store(true, Ordering::Relaxed);
        for (_, task) in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            task.abort();
        }
        for task in self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
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
        self.stats.upstream_cx_total.inc();
        tls::connect(
            &host.authority,
            self.config.connect_timeout,
            &self.transport,
            None,
        )
        .await
    }

    /// Replaces an EDS cluster's endpoints when they differ.
    pub fn assign(&self, assignment: &xds_types::cluster::Assignment) {
        self.overprovisioning
            .store(assignment.overprovisioning_factor, Ordering::Relaxed);
        let next = assignment
            .endpoints
            .iter()
            .map(|e| Endpoint::from_lb(e, endpoint_authority(&e.address)))
            .collect();
        self.replace_endpoints(next);
    }

    /// Applies discovery's view: new hosts join (failing active health checks until their
    /// first one when the cluster has them), kept hosts keep their state, removed hosts
    /// drain — or, while they pass health checks, stay until they fail one.
    fn replace_endpoints(&self, next: Vec<Endpoint>) {
        let _change = self.change.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut last = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            let unchanged = *last == next && !self.members.load().is_empty();
            if unchanged {
                return;
            }
            *last = next.clone();
        }
        let checked = self.health_checks.is_some();
        let new_host_flags = if checked {
            flag::FAILED_ACTIVE_HC
                | if self.config.lb.ignore_new_hosts_until_first_hc {
                    flag::PENDING_ACTIVE_HC
                } else {
                    0
                }
        } else {
            0
        };
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        let mut members = Vec::with_capacity(next.len());
        for e in next {
            if !seen.insert(e.authority.clone()) {
                continue;
            }
            let host = registry
                .entry(e.authority.clone())
                .or_insert_with(|| {
                    Host::new(
                        e.authority.clone(),
                        self.settings.clone(),
                        self.transport.clone(),
                        new_host_flags,
                    )
                })
                .clone();
            host.clear(
                flag::FAILED_EDS_HEALTH
                    | flag::EDS_STATUS_DRAINING
                    | flag::DEGRADED_EDS_HEALTH
                    | flag::PENDING_DYNAMIC_REMOVAL,
            );
            match e.health {
                EdsHealth::Healthy => {}
                EdsHealth::Unhealthy => {
                    host.set(flag::FAILED_EDS_HEALTH);
                }
                EdsHealth::Draining => {
                    host.set(flag::EDS_STATUS_DRAINING);
                }
                EdsHealth::Degraded => {
                    host.set(flag::DEGRADED_EDS_HEALTH);
                }
            }
            members.push(Member {
                host,
                weight: e.weight,
                priority: e.priority,
                locality: e.locality,
                locality_weight: e.locality_weight,
            });
        }
        // Removed hosts that still pass their health checks stay until they fail one.
        let keep_while_healthy = checked && !self.config.ignore_health_on_host_removal;
        for old in self.members.load().iter() {
            if seen.contains(&old.host.authority) {
                continue;
            }
            if keep_while_healthy && !old.host.has(flag::FAILED_ACTIVE_HC) {
                old.host.set(flag::PENDING_DYNAMIC_REMOVAL);
                seen.insert(old.host.authority.clone());
                members.push(old.clone());
            }
        }
        registry.retain(|authority, host| {
            let keep = seen.contains(authority);
            if !keep {
                self.host_left(host);
            }
            keep
        });
        drop(registry);
        debug!(cluster = %self.config.name, hosts = members.len(), "hosts changed");
        self.stats.membership_change.inc();
        self.install(members);
    }

    fn host_left(&self, host: &Arc<Host>) {
        host.drain();
        if let Some(d) = &self.outlier {
            d.forget(host);
        }
        if let Some(task) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host.authority)
        {
            task.abort();
        }
    }

    /// Resolves once every host has had its first health check (at once without health
    /// checks), or after the checks' timeout and initial jitter plus a second: Envoy does
    /// not initialize a cluster before that round, so start-up does not send traffic to
    /// hosts nobody has checked yet.
    pub async fn first_health_checks(&self) {
        let Some(checks) = &self.health_checks else {
            return;
        };
        let bound = checks.config.timeout + checks.config.initial_jitter + Duration::from_secs(1);
        let all_reported = async {
            loop {
                let reported = self.first_results.notified();
                tokio::pin!(reported);
                reported.as_mut().enable();
                if self.unchecked.load(Ordering::SeqCst) == 0 {
                    return;
                }
                reported.await;
            }
        };
        if tokio::time::timeout(bound, all_reported).await.is_err() {
            warn!(cluster = %self.config.name, "first health checks still pending; serving anyway");
        }
    }

    /// Publishes a membership: hosts learn their owner, new hosts get a health-check
    /// session, and the load balancer is rebuilt.
    fn install(&self, members: Vec<Member>) {
        for m in &members {
            m.host.adopt(self.this.clone());
        }
        if !self.superseded.load(Ordering::Relaxed) {
            self.start_sessions(&members);
        }
        self.stats.membership_total.set(members.len() as i64);
        self.member_hosts
            .store(Arc::new(members.iter().map(|m| m.host.clone()).collect()));
        self.members.store(Arc::new(members));
        self.rebuild_lb();
    }

    fn start_sessions(&self, members: &[Member]) {
        let Some(checks) = &self.health_checks else {
            return;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for m in members {
            if sessions.contains_key(&m.host.authority) {
                continue;
            }
            let probe = health_check::probe(
                &checks.config,
                &self.config.name,
                self.transport.clone(),
                self.config.connect_timeout,
            );
            self.unchecked.fetch_add(1, Ordering::SeqCst);
            let env = Arc::new(CheckEnvironment {
                cluster: self.this.clone(),
                first: AtomicBool::new(true),
            });
            let task = control::spawn(health_check::run_session(
                m.host.clone(),
                checks.config.clone(),
                probe,
                env,
            ));
            sessions.insert(m.host.authority.clone(), task);
        }
    }

    /// Rebuilds the load balancer from the membership and the hosts' flags.
    fn rebuild_lb(&self) {
        let members = self.members.load();
        let view = LbView::build(
            &members,
            &self.config.lb,
            self.overprovisioning.load(Ordering::Relaxed),
        );
        let census = view.census;
        self.stats.membership_healthy.set(census.healthy as i64);
        self.stats.membership_degraded.set(census.degraded as i64);
        self.stats.membership_excluded.set(census.excluded as i64);
        if let Some(checks) = &self.health_checks {
            let passing = members
                .iter()
                .filter(|m| !m.host.has(flag::FAILED_ACTIVE_HC))
                .count();
            checks.stats.healthy.set(passing as i64);
        }
        self.lb.store(Arc::new(view));
    }

    /// A host's health flags changed: rebuild the load balancer.
    pub fn health_changed(&self) {
        let _change = self.change.lock().unwrap_or_else(|e| e.into_inner());
        self.rebuild_lb();
    }

    /// A host pending removal failed its health check: it goes now.
    fn remove_pending(&self, host: &Arc<Host>) {
        let _change = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let members: Vec<Member> = self
            .members
            .load()
            .iter()
            .filter(|m| !Arc::ptr_eq(&m.host, host))
            .cloned()
            .collect();
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host.authority);
        self.host_left(host);
        self.install(members);
    }

    /// The hosts and where they sit.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.load_full()
    }

    /// Picks a host for a request; `None` when the cluster has none.
    pub fn pick(&self, request: &PickRequest<'_>) -> Option<Arc<Host>> {
        let (host, panic) = self.lb.load().pick(&self.config.lb.policy, request)?;
        if panic {
            self.stats.lb_healthy_panic.inc();
        }
        Some(host)
    }

    /// The cluster a request to this one goes to: itself, or for an aggregate cluster one
    /// of its clusters in `all`, chosen by their health (a missing or aggregate member
    /// counts as having no hosts). `None`: no member has any host.
    pub fn resolve(
        self: &Arc<Self>,
        all: &HashMap<String, Arc<ClusterState>>,
    ) -> Option<Arc<ClusterState>> {
        if self.config.aggregate.is_empty() {
            return Some(self.clone());
        }
        let members: Vec<Option<&Arc<ClusterState>>> = self
            .config
            .aggregate
            .iter()
            .map(|name| all.get(name).filter(|c| c.config.aggregate.is_empty()))
            .collect();
        let (availability, counts): (Vec<f64>, Vec<usize>) = members
            .iter()
            .map(|m| match m {
                Some(c) => {
                    let view = c.lb.load();
                    (view.availability, view.census.total)
                }
                None => (0.0, 0),
            })
            .unzip();
        let chosen = lb::pick_aggregate(&availability, &counts)?;
        members[chosen].cloned()
    }

    /// Picks a host with nothing to hash on (the TCP proxy, the xDS client).
    pub fn pick_any(&self) -> Option<Arc<Host>> {
        self.pick(&PickRequest::default())
    }

    /// Records the outcome of a try against `host` for outlier detection and the host's
    /// counters.
    pub fn report(&self, host: &Arc<Host>, outcome: Outcome) {
        let c = &host.counters;
        match outcome {
            Outcome::Status(status) => {
                c.rq_total.fetch_add(1, Ordering::Relaxed);
                if status >= 500 {
                    c.rq_error.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.rq_success.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Timeout => {
                c.rq_total.fetch_add(1, Ordering::Relaxed);
                c.rq_timeout.fetch_add(1, Ordering::Relaxed);
                c.rq_error.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Reset | Outcome::ConnectFailed => {
                c.rq_total.fetch_add(1, Ordering::Relaxed);
                c.rq_error.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Connected => {}
        }
        if let Some(detector) = &self.outlier {
            detector.record(host, outcome, &self.member_hosts.load());
        }
    }

    /// Whether the cluster has connected for traffic (health checks slow down until it
    /// has, as Envoy's `no_traffic_interval`).
    fn traffic_seen(&self) -> bool {
        self.stats.upstream_cx_total.get() > 0
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

impl Drop for ClusterState {
    fn drop(&mut self) {
        self.supersede();
    }
}

/// The health-check sessions' view of their cluster.
struct CheckEnvironment {
    cluster: Weak<ClusterState>,
    /// No result reported yet.
    first: AtomicBool,
}

impl health_check::CheckEnv for CheckEnvironment {
    fn traffic_seen(&self) -> bool {
        self.cluster.upgrade().is_some_and(|c| c.traffic_seen())
    }

    fn on_result(
        &self,
        host: &Arc<Host>,
        passing: bool,
        changed: bool,
        verdict: health_check::Verdict,
    ) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        if self.first.swap(false, Ordering::SeqCst)
            && cluster.unchecked.fetch_sub(1, Ordering::SeqCst) == 1
        {
            cluster.first_results.notify_waiters();
        }
        if let Some(checks) = &cluster.health_checks {
            checks.stats.attempt.inc();
            if passing {
                checks.stats.success.inc();
            } else {
                checks.stats.failure.inc();
                if matches!(
                    verdict,
                    health_check::Verdict::Timeout
                        | health_check::Verdict::Fail { network: true, .. }
                ) {
                    checks.stats.network_failure.inc();
                }
            }
        }
        if passing {
            if let Some(detector) = &cluster.outlier {
                detector.health_check_passed(host);
            }
        }
        if !passing && host.has(flag::PENDING_DYNAMIC_REMOVAL | flag::FAILED_ACTIVE_HC) {
            cluster.remove_pending(host);
        } else if changed {
            host.health_changed();
        }
    }
}

impl PoolSettings {
    fn same_as(&self, other: &PoolSettings) -> bool {
        self.protocol == other.protocol
            && self.http2_keepalive == other.http2_keepalive
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

/// `host:port`, bracketing IPv6 literals.
/// The registry key of an endpoint: `host:port`, or `unix:` and the socket's path.
fn endpoint_authority(address: &EndpointAddress) -> String {
    match address {
        EndpointAddress::Socket { host, port } => authority(host, *port),
        EndpointAddress::Pipe(path) => format!("{}{path}", tls::UNIX_PREFIX),
    }
}

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

/// Runs the outlier detector's interval sweep until the cluster is dropped.
async fn sweep_loop(cluster: Weak<ClusterState>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(state) = cluster.upgrade() else {
            return;
        };
        if let Some(detector) = &state.outlier {
            detector.sweep(&state.member_hosts.load(), tokio::time::Instant::now());
        }
    }
}

/// Re-resolves a STRICT_DNS cluster's hostnames until the cluster is dropped.
async fn resolve_loop(cluster: Weak<ClusterState>, refresh: Duration) {
    loop {
        let Some(state) = cluster.upgrade() else {
            return;
        };
        let mut resolved = Vec::new();
        for e in &state.config.endpoints {
            // Validation keeps Unix sockets out of DNS clusters.
            let EndpointAddress::Socket { host, port } = &e.address else {
                continue;
            };
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => {
                    let mut addrs: Vec<SocketAddr> = addrs
                        .filter(|a| family_allows(state.config.dns_lookup_family, a))
                        .collect();
                    addrs.sort();
                    addrs.dedup();
                    resolved.extend(
                        addrs.into_iter().map(|a| {
                            Endpoint::from_lb(e, authority(&a.ip().to_string(), a.port()))
                        }),
                    );
                }
                Err(error) => {
                    warn!(cluster = %state.config.name, %host, %error, "dns resolution failed")
                }
            }
        }
        // An empty answer never replaces known endpoints (a DNS outage keeps the last
        // good set, as Envoy does).
        if !resolved.is_empty() || state.members.load().is_empty() {
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
