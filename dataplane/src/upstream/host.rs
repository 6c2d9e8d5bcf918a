//! One upstream host: its address, connection pools, counters, health flags and
//! outlier-detection state. A host is kept by address in its cluster's registry, so all
//! of this survives endpoint updates (and cluster updates that keep the connections).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::outlier::HostOutlier;
use super::pool::{HostPool, PoolSettings};
use super::tls::Transport;
use super::ClusterState;

/// Most per-host pools a host of a cluster with auto SNI keeps (one per SNI).
const MAX_SNI_POOLS: usize = 64;

/// Envoy's host health flags, in the order `/clusters` prints them.
pub mod flag {
    pub const FAILED_ACTIVE_HC: u16 = 1 << 0;
    pub const FAILED_OUTLIER_CHECK: u16 = 1 << 1;
    pub const FAILED_EDS_HEALTH: u16 = 1 << 2;
    pub const DEGRADED_EDS_HEALTH: u16 = 1 << 3;
    pub const PENDING_DYNAMIC_REMOVAL: u16 = 1 << 4;
    pub const PENDING_ACTIVE_HC: u16 = 1 << 5;
    pub const ACTIVE_HC_TIMEOUT: u16 = 1 << 6;
    pub const EDS_STATUS_DRAINING: u16 = 1 << 7;

    /// Flags that take a host out of load balancing.
    pub const UNHEALTHY: u16 =
        FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK | FAILED_EDS_HEALTH | EDS_STATUS_DRAINING;
    /// Flags that take a host out of load balancing and out of the health arithmetic.
    pub const EXCLUDED: u16 = PENDING_ACTIVE_HC;

    /// `(flag, name)` as Envoy's `/clusters` spells them.
    pub const NAMES: [(u16, &str); 8] = [
        (FAILED_ACTIVE_HC, "/failed_active_hc"),
        (FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
        (FAILED_EDS_HEALTH, "/failed_eds_health"),
        (DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
        (PENDING_DYNAMIC_REMOVAL, "/pending_dynamic_removal"),
        (PENDING_ACTIVE_HC, "/pending_active_hc"),
        (ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
        (EDS_STATUS_DRAINING, "/eds_status_draining"),
    ];
}

/// Per-host counters for `/clusters`.
#[derive(Debug, Default)]
pub struct HostCounters {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicI64,
    pub cx_connect_fail: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

/// One upstream host.
#[derive(Debug)]
pub struct Host {
    /// `host:port`: the request authority and the registry key.
    pub authority: String,
    /// `authority` parsed once, so building an upstream URI does not re-parse it.
    pub uri_authority: Option<http::uri::Authority>,
    /// Requests in flight, for LEAST_REQUEST.
    pub active: AtomicU64,
    pub counters: Arc<HostCounters>,
    pub outlier: HostOutlier,
    health: AtomicU16,
    pool: Arc<HostPool>,
    /// With the downstream's protocol (`use_downstream_protocol_config`): the HTTP/2 pool
    /// for HTTP/2 requests (`pool` speaks HTTP/1.1).
    h2_pool: Option<Arc<HostPool>>,
    /// With auto SNI: one pool per request host (and protocol).
    sni_pools: Mutex<HashMap<String, Arc<HostPool>>>,
    settings: Arc<PoolSettings>,
    transport: Transport,
    /// The cluster version whose load balancer must hear of this host's health changes.
    owner: Mutex<Weak<ClusterState>>,
}

impl Host {
    /// A host with the given initial health flags.
    pub(super) fn new(
        authority: String,
        settings: Arc<PoolSettings>,
        transport: Transport,
        flags: u16,
    ) -> Arc<Self> {
        let counters = Arc::new(HostCounters::default());
        let (settings, h2_settings) = split_by_protocol(settings);
        Arc::new(Self {
            h2_pool: h2_settings.map(|h2| {
                HostPool::new(authority.clone(), h2, transport.clone(), counters.clone())
            }),
            // Over a Unix socket the URI needs some authority; the Host header is the
            // request's own.
            uri_authority: if super::tls::unix_path(&authority).is_some() {
                Some(http::uri::Authority::from_static("localhost"))
            } else {
                authority.parse().ok()
            },
            pool: HostPool::new(
                authority.clone(),
                settings.clone(),
                transport.clone(),
                counters.clone(),
            ),
            authority,
            active: AtomicU64::new(0),
            counters,
            outlier: HostOutlier::default(),
            health: AtomicU16::new(flags),
            sni_pools: Mutex::new(HashMap::new()),
            settings,
            transport,
            owner: Mutex::new(Weak::new()),
        })
    }

    /// A plaintext HTTP/1.1 host with default pool settings, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(authority: &str, flags: u16) -> Arc<Self> {
        let settings = Arc::new(PoolSettings {
            protocol: xds_types::cluster::UpstreamProtocol::Http1,
            http2_keepalive: None,
            connect_timeout: std::time::Duration::from_secs(1),
            idle_timeout: None,
            max_requests_per_connection: None,
            max_connection_duration: None,
            keepalive: None,
        });
        Self::new(authority.to_string(), settings, Transport::Plaintext, flags)
    }

    /// The pool a request for `host` uses: the host's, or with auto SNI the one whose
    /// connections were made with `host` as SNI; an HTTP/2 request (`h2`) takes the
    /// HTTP/2 pool of a host that follows the downstream's protocol.
    pub fn pool_for(&self, host: &str, h2: bool) -> Arc<HostPool> {
        let h2_pool = self.h2_pool.as_ref().filter(|_| h2);
        if !self.transport.tls().is_some_and(|t| t.auto_sni) || host.is_empty() {
            return h2_pool.unwrap_or(&self.pool).clone();
        }
        let sni = super::host_without_port(host).to_ascii_lowercase();
        let mut pools = self.sni_pools.lock().unwrap_or_else(|e| e.into_inner());
        if pools.len() >= MAX_SNI_POOLS && !pools.contains_key(&sni) {
            pools.clear();
        }
        pools
            .entry(if h2_pool.is_some() {
                format!("h2 {sni}")
            } else {
                sni
            })
            .or_insert_with(|| {
                HostPool::new(
                    self.authority.clone(),
                    h2_pool.map_or_else(|| self.settings.clone(), |p| p.settings().clone()),
                    self.transport.clone(),
                    self.counters.clone(),
                )
            })
            .clone()
    }

    pub(super) fn pools(&self) -> Vec<Arc<HostPool>> {
        let mut all = vec![self.pool.clone()];
        all.extend(self.h2_pool.clone());
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
    pub(super) fn drain(&self) {
        for pool in self.pools() {
            pool.close_idle();
        }
    }

    /// The current health flags.
    pub fn flags(&self) -> u16 {
        self.health.load(Ordering::Acquire)
    }

    /// Whether every one of `bits` is set.
    pub fn has(&self, bits: u16) -> bool {
        self.flags() & bits == bits
    }

    /// Sets `bits`; true when that changed the flags. The caller tells the load balancer
    /// ([`Host::health_changed`]) once it is done.
    pub fn set(&self, bits: u16) -> bool {
        self.health.fetch_or(bits, Ordering::AcqRel) & bits != bits
    }

    /// Clears `bits`; true when that changed the flags.
    pub fn clear(&self, bits: u16) -> bool {
        self.health.fetch_and(!bits, Ordering::AcqRel) & bits != 0
    }

    /// Whether the host may take traffic outside panic mode.
    pub fn is_healthy(&self) -> bool {
        self.flags() & (flag::UNHEALTHY | flag::EXCLUDED) == 0
    }

    /// Envoy's `health_flags` text: `healthy`, or the set flags (`/failed_active_hc…`).
    pub fn describe_flags(&self) -> String {
        let flags = self.flags();
        let set: String = flag::NAMES
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if set.is_empty() {
            "healthy".to_string()
        } else {
            set
        }
    }

    /// Records the cluster version that balances over this host.
    pub(super) fn adopt(&self, owner: Weak<ClusterState>) {
        *self.owner.lock().unwrap_or_else(|e| e.into_inner()) = owner;
    }

    /// Rebuilds the owning cluster's load balancer after a health flag changed.
    pub fn health_changed(&self) {
        let owner = self
            .owner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade();
        if let Some(cluster) = owner {
            cluster.health_changed();
        }
    }

    /// Open connections to the host.
    pub fn connections(&self) -> i64 {
        self.counters.cx_active.load(Ordering::Relaxed)
    }
}

/// The pool settings of a host, and for one that follows the downstream's protocol the
/// HTTP/2 pool's as well (the first then speaks HTTP/1.1).
fn split_by_protocol(
    settings: Arc<PoolSettings>,
) -> (Arc<PoolSettings>, Option<Arc<PoolSettings>>) {
    use xds_types::cluster::UpstreamProtocol;
    if settings.protocol != UpstreamProtocol::Downstream {
        return (settings, None);
    }
    let with = |protocol| {
        Arc::new(PoolSettings {
            protocol,
            ..(*settings).clone()
        })
    };
    (
        with(UpstreamProtocol::Http1),
        Some(with(UpstreamProtocol::Http2)),
    )
}
