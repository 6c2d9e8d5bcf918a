//! Outlier detection: hosts are ejected for the errors requests see (consecutive 5xx,
//! consecutive gateway failures, consecutive local-origin failures, a success rate far
//! below the others', a failure percentage over a threshold), within
//! `max_ejection_percent`, for `base_ejection_time × ejections` (capped), and return at the
//! first interval sweep after that, or as soon as an active health check passes.
//!
//! Results are recorded on the request path with a few atomic operations; a detection
//! takes the cluster's detector lock. The interval sweep runs on the control runtime.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tracing::info;
use xds_types::outlier::OutlierDetection;

use super::host::{flag, Host};
use crate::stats::OutlierStats;

/// What one try against a host came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailed,
    /// The connection failed before a response.
    Reset,
    /// No response in time.
    Timeout,
    /// A connection was made and that is all the proxy learns (the TCP proxy).
    Connected,
}

/// Why a host is ejected; the order of Envoy's per-type stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    LocalOriginSuccessRate,
    FailurePercentage,
    LocalOriginFailurePercentage,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Consecutive5xx,
        Kind::ConsecutiveGatewayFailure,
        Kind::ConsecutiveLocalOriginFailure,
        Kind::SuccessRate,
        Kind::LocalOriginSuccessRate,
        Kind::FailurePercentage,
        Kind::LocalOriginFailurePercentage,
    ];

    /// The suffix of Envoy's `ejections_detected_*` / `ejections_enforced_*` stats.
    pub fn stat_name(self) -> &'static str {
        match self {
            Kind::Consecutive5xx => "consecutive_5xx",
            Kind::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Kind::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Kind::SuccessRate => "success_rate",
            Kind::LocalOriginSuccessRate => "local_origin_success_rate",
            Kind::FailurePercentage => "failure_percentage",
            Kind::LocalOriginFailurePercentage => "local_origin_failure_percentage",
        }
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).expect("listed")
    }
}

/// Requests and successes in the current interval.
#[derive(Debug, Default)]
struct Bucket {
    total: AtomicU64,
    success: AtomicU64,
}

impl Bucket {
    fn record(&self, success: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if success {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(success rate in percent, requests)` of the interval that ended, and a fresh one.
    fn take(&self) -> (f64, u64) {
        let total = self.total.swap(0, Ordering::Relaxed);
        let success = self.success.swap(0, Ordering::Relaxed).min(total);
        if total == 0 {
            return (100.0, 0);
        }
        (100.0 * success as f64 / total as f64, total)
    }
}

/// A host's outlier-detection state.
#[derive(Debug)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    external: Bucket,
    local: Bucket,
    ejection: Mutex<Ejection>,
    /// The success rate the last sweep computed, in hundredths of a percent (`u64::MAX`
    /// when it had too few requests), for `/clusters`.
    success_rate: AtomicU64,
}

#[derive(Debug, Default)]
struct Ejection {
    ejected_at: Option<Instant>,
    /// Multiplies `base_ejection_time`: up after each ejection, down after each interval
    /// the host stayed in.
    backoff: u32,
    jitter: Duration,
    unejected_at: Option<Instant>,
}

impl Default for HostOutlier {
    fn default() -> Self {
        Self {
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            external: Bucket::default(),
            local: Bucket::default(),
            ejection: Mutex::new(Ejection::default()),
            success_rate: AtomicU64::new(u64::MAX),
        }
    }
}

impl HostOutlier {
    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }

    /// The last computed success rate in percent, if the last interval had enough
    /// requests (Envoy prints -1 otherwise).
    pub fn success_rate(&self) -> Option<f64> {
        let v = self.success_rate.load(Ordering::Relaxed);
        (v != u64::MAX).then(|| v as f64 / 100.0)
    }
}

/// A cluster's outlier detector.
pub struct Detector {
    pub config: OutlierDetection,
    stats: OutlierStats,
    /// Serialises ejection decisions, so `max_ejection_percent` holds under races.
    lock: Mutex<()>,
    /// `(mean, ejection threshold)` of the last success-rate pass, external and local
    /// origin; `None` when too few hosts had enough requests (`/clusters` prints -1).
    success_rate_stats: Mutex<[Option<(f64, f64)>; 2]>,
}

impl Detector {
    pub fn new(config: OutlierDetection, stats: OutlierStats) -> Arc<Self> {
        Arc::new(Self {
            config,
            stats,
            lock: Mutex::new(()),
            success_rate_stats: Mutex::new([None, None]),
        })
    }

    /// Records the outcome of one try. `hosts` is the cluster's membership (for
    /// `max_ejection_percent`). Returns true when the host was ejected.
    pub fn record(&self, host: &Arc<Host>, outcome: Outcome, hosts: &[Arc<Host>]) -> bool {
        let state = &host.outlier;
        let split = self.config.split_external_local_origin_errors;
        let status = match (outcome, split) {
            (Outcome::Status(s), _) => {
                if split {
                    self.local_result(host, false, hosts);
                }
                s
            }
            (Outcome::Connected, true) => return self.local_result(host, false, hosts),
            (Outcome::Connected, false) => 200,
            (_, true) => return self.local_result(host, true, hosts),
            // Without the split, local failures count as the gateway errors they become.
            (Outcome::Timeout, false) => 504,
            (Outcome::ConnectFailed | Outcome::Reset, false) => 503,
        };
        let failed = (500..600).contains(&status);
        state.external.record(!failed);
        if !failed {
            state.consecutive_5xx.store(0, Ordering::Relaxed);
            state.consecutive_gateway.store(0, Ordering::Relaxed);
            return false;
        }
        let mut ejected = false;
        if matches!(status, 502..=504) {
            let n = state.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
            if n == self.config.consecutive_gateway_failure {
                ejected |= self.detected(host, Kind::ConsecutiveGatewayFailure, hosts);
            }
        } else {
            state.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        let n = state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.config.consecutive_5xx {
            ejected |= self.detected(host, Kind::Consecutive5xx, hosts);
        }
        ejected
    }

    fn local_result(&self, host: &Arc<Host>, failed: bool, hosts: &[Arc<Host>]) -> bool {
        let state = &host.outlier;
        state.local.record(!failed);
        if !failed {
            state.consecutive_local.store(0, Ordering::Relaxed);
            return false;
        }
        let n = state.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
        n == self.config.consecutive_local_origin_failure
            && self.detected(host, Kind::ConsecutiveLocalOriginFailure, hosts)
    }

    fn enforcing(&self, kind: Kind) -> u32 {
        let c = &self.config;
        match kind {
            Kind::Consecutive5xx => c.enforcing_consecutive_5xx,
            Kind::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            Kind::ConsecutiveLocalOriginFailure => c.enforcing_consecutive_local_origin_failure,
            Kind::SuccessRate => c.success_rate.enforcing,
            Kind::LocalOriginSuccessRate => c.success_rate.enforcing_local_origin,
            Kind::FailurePercentage => c.failure_percentage.enforcing,
            Kind::LocalOriginFailurePercentage => c.failure_percentage.enforcing_local_origin,
        }
    }

    /// An outlier was detected: count it, then eject it if `max_ejection_percent` and the
    /// type's enforcement allow.
    fn detected(&self, host: &Arc<Host>, kind: Kind, hosts: &[Arc<Host>]) -> bool {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            Kind::Consecutive5xx => {
                host.outlier.consecutive_5xx.store(0, Ordering::Relaxed);
                self.stats.ejections_consecutive_5xx.inc();
            }
            Kind::ConsecutiveGatewayFailure => {
                host.outlier.consecutive_gateway.store(0, Ordering::Relaxed);
            }
            Kind::ConsecutiveLocalOriginFailure => {
                host.outlier.consecutive_local.store(0, Ordering::Relaxed);
            }
            Kind::SuccessRate | Kind::LocalOriginSuccessRate => {
                self.stats.ejections_success_rate.inc();
            }
            _ => {}
        }
        if host.has(flag::FAILED_OUTLIER_CHECK) {
            return false;
        }
        self.stats.by_kind[kind.index()].0.inc();
        let ejected_now = hosts
            .iter()
            .filter(|h| h.has(flag::FAILED_OUTLIER_CHECK))
            .count();
        let percent_after = 100.0 * (ejected_now + 1) as f64 / hosts.len().max(1) as f64;
        let allowed = percent_after <= f64::from(self.config.max_ejection_percent)
            || (self.config.always_eject_one_host && ejected_now == 0);
        if !allowed {
            self.stats.ejections_overflow.inc();
            return false;
        }
        self.stats.ejections_total.inc();
        if rand::rng().random_range(0..100) >= self.enforcing(kind) {
            return false;
        }
        self.eject(host, kind, Instant::now());
        true
    }

    fn eject(&self, host: &Arc<Host>, kind: Kind, now: Instant) {
        let c = &self.config;
        let mut e = host
            .outlier
            .ejection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        e.ejected_at = Some(now);
        // The back-off grows while the ejection time is under the cap.
        if c.base_ejection_time * e.backoff < c.max_ejection_time + c.base_ejection_time {
            e.backoff += 1;
        }
        e.jitter = if c.max_ejection_time_jitter.is_zero() {
            Duration::ZERO
        } else {
            let max = c.max_ejection_time_jitter.as_millis().max(1) as u64;
            Duration::from_millis(rand::rng().random_range(0..max))
        };
        drop(e);
        host.set(flag::FAILED_OUTLIER_CHECK);
        self.stats.ejections_active.inc();
        self.stats.ejections_enforced_total.inc();
        self.stats.by_kind[kind.index()].1.inc();
        info!(host = %host.authority, reason = kind.stat_name(), "outlier ejected");
        host.health_changed();
    }

    /// How long the host's current ejection lasts.
    fn ejection_time(&self, e: &Ejection) -> Duration {
        let c = &self.config;
        (c.base_ejection_time * e.backoff).min(c.max_ejection_time.max(c.base_ejection_time))
            + e.jitter
    }

    /// Returns an ejected host to service.
    pub fn uneject(&self, host: &Arc<Host>, now: Instant) {
        let mut e = host
            .outlier
            .ejection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !host.clear(flag::FAILED_OUTLIER_CHECK) {
            return;
        }
        e.ejected_at = None;
        e.unejected_at = Some(now);
        drop(e);
        host.outlier.reset_consecutive();
        self.stats.ejections_active.dec();
        info!(host = %host.authority, "outlier returned to service");
        host.health_changed();
    }

    /// `(mean, ejection threshold)` of the last success-rate pass: external origin, then
    /// local origin.
    pub fn success_rate_stats(&self) -> [Option<(f64, f64)>; 2] {
        *self
            .success_rate_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// An active health check passed: an ejected host returns at once (Envoy's default).
    pub fn health_check_passed(&self, host: &Arc<Host>) {
        if self.config.successful_active_health_check_uneject_host
            && host.has(flag::FAILED_OUTLIER_CHECK)
        {
            self.uneject(host, Instant::now());
        }
    }

    /// A host left the cluster: its ejection no longer counts.
    pub fn forget(&self, host: &Arc<Host>) {
        if host.clear(flag::FAILED_OUTLIER_CHECK) {
            self.stats.ejections_active.dec();
        }
    }

    /// The interval sweep: returns hosts whose ejection is over, then ejects by success
    /// rate and failure percentage over the interval that ended.
    pub fn sweep(&self, hosts: &[Arc<Host>], now: Instant) {
        for host in hosts {
            let mut e = host
                .outlier
                .ejection
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if host.has(flag::FAILED_OUTLIER_CHECK) {
                let over = e
                    .ejected_at
                    .is_none_or(|at| now.duration_since(at) >= self.ejection_time(&e));
                drop(e);
                if over {
                    self.uneject(host, now);
                }
            } else if e.backoff > 0
                && e.unejected_at
                    .is_some_and(|at| now.duration_since(at) >= self.config.interval)
            {
                e.backoff -= 1;
            }
        }
        let external: Vec<(f64, u64)> = hosts.iter().map(|h| h.outlier.external.take()).collect();
        let local: Vec<(f64, u64)> = hosts.iter().map(|h| h.outlier.local.take()).collect();
        for (host, (rate, volume)) in hosts.iter().zip(&external) {
            let shown = if *volume >= u64::from(self.config.success_rate.request_volume.max(1)) {
                (rate * 100.0) as u64
            } else {
                u64::MAX
            };
            host.outlier.success_rate.store(shown, Ordering::Relaxed);
        }
        self.statistical(hosts, &external, Kind::SuccessRate, Kind::FailurePercentage);
        if self.config.split_external_local_origin_errors {
            self.statistical(
                hosts,
                &local,
                Kind::LocalOriginSuccessRate,
                Kind::LocalOriginFailurePercentage,
            );
        }
    }

    fn statistical(
        &self,
        hosts: &[Arc<Host>],
        rates: &[(f64, u64)],
        success_kind: Kind,
        failure_kind: Kind,
    ) {
        let sr = &self.config.success_rate;
        let fp = &self.config.failure_percentage;
        let candidates = |volume: u32| -> Vec<(&Arc<Host>, f64)> {
            hosts
                .iter()
                .zip(rates)
                .filter(|(h, (_, v))| {
                    !h.has(flag::FAILED_OUTLIER_CHECK) && *v >= u64::from(volume.max(1))
                })
                .map(|(h, (rate, _))| (h, *rate))
                .collect()
        };
        let by_success = candidates(sr.request_volume);
        let slot = usize::from(success_kind == Kind::LocalOriginSuccessRate);
        self.success_rate_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())[slot] = None;
        if !by_success.is_empty() && by_success.len() >= sr.minimum_hosts as usize {
            let n = by_success.len() as f64;
            let mean = by_success.iter().map(|(_, r)| r).sum::<f64>() / n;
            let variance = by_success
                .iter()
                .map(|(_, r)| (r - mean).powi(2))
                .sum::<f64>()
                / n;
            let threshold = mean - f64::from(sr.stdev_factor) / 1000.0 * variance.sqrt();
            self.success_rate_stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())[slot] = Some((mean, threshold));
            for (host, rate) in &by_success {
                if *rate < threshold {
                    self.detected(host, success_kind, hosts);
                }
            }
        }
        let by_failure = candidates(fp.request_volume);
        if !by_failure.is_empty() && by_failure.len() >= fp.minimum_hosts as usize {
            for (host, rate) in &by_failure {
                if 100.0 - rate >= f64::from(fp.threshold) && !host.has(flag::FAILED_OUTLIER_CHECK)
                {
                    self.detected(host, failure_kind, hosts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn hosts(n: usize) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| Host::for_tests(&format!("127.0.0.1:{}", 1000 + i), 0))
            .collect()
    }

    fn detector(config: OutlierDetection) -> Arc<Detector> {
        Detector::new(config, Stats::new().outlier("c"))
    }

    #[test]
    fn five_consecutive_5xx_eject_and_a_success_resets_the_count() {
        let hosts = hosts(2);
        let d = detector(OutlierDetection {
            max_ejection_percent: 50,
            ..Default::default()
        });
        for _ in 0..4 {
            assert!(!d.record(&hosts[0], Outcome::Status(500), &hosts));
        }
        d.record(&hosts[0], Outcome::Status(200), &hosts);
        for _ in 0..4 {
            assert!(!d.record(&hosts[0], Outcome::Status(503), &hosts));
        }
        assert!(d.record(&hosts[0], Outcome::ConnectFailed, &hosts));
        assert!(hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        assert_eq!(hosts[0].describe_flags(), "/failed_outlier_check");
    }

    #[test]
    fn max_ejection_percent_holds_unless_one_host_may_always_go() {
        let hosts = hosts(3);
        // Envoy's default 10%: one of three hosts is 33%, so nothing is ejected.
        let d = detector(OutlierDetection::default());
        for _ in 0..5 {
            d.record(&hosts[0], Outcome::Status(500), &hosts);
        }
        assert!(!hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        let d = detector(OutlierDetection {
            always_eject_one_host: true,
            ..Default::default()
        });
        for h in &hosts[..2] {
            for _ in 0..5 {
                d.record(h, Outcome::Status(500), &hosts);
            }
        }
        assert!(hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        assert!(!hosts[1].has(flag::FAILED_OUTLIER_CHECK), "only one");
    }

    #[test]
    fn gateway_failures_are_detected_but_not_enforced_by_default() {
        let hosts = hosts(2);
        let d = detector(OutlierDetection {
            max_ejection_percent: 100,
            consecutive_5xx: 100,
            ..Default::default()
        });
        for _ in 0..5 {
            assert!(!d.record(&hosts[0], Outcome::Status(502), &hosts));
        }
        assert!(!hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        assert_eq!(
            d.stats.by_kind[Kind::ConsecutiveGatewayFailure.index()]
                .0
                .get(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_each_ejection_and_ends_at_a_sweep() {
        let hosts = hosts(2);
        let config = OutlierDetection {
            max_ejection_percent: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            ..Default::default()
        };
        let d = detector(config);
        let eject = |d: &Detector| {
            for _ in 0..5 {
                d.record(&hosts[0], Outcome::Status(500), &hosts);
            }
            assert!(hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        };
        eject(&d);
        let start = Instant::now();
        // Sweeps every 10s: still out at 20s, back at the 30s sweep.
        tokio::time::advance(Duration::from_secs(20)).await;
        d.sweep(&hosts, Instant::now());
        assert!(hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        tokio::time::advance(Duration::from_secs(10)).await;
        d.sweep(&hosts, Instant::now());
        assert!(!hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // The second ejection lasts 2 × 30s.
        eject(&d);
        tokio::time::advance(Duration::from_secs(50)).await;
        d.sweep(&hosts, Instant::now());
        assert!(
            hosts[0].has(flag::FAILED_OUTLIER_CHECK),
            "60s the second time"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        d.sweep(&hosts, Instant::now());
        assert!(!hosts[0].has(flag::FAILED_OUTLIER_CHECK));
    }

    #[test]
    fn a_passing_health_check_unejects() {
        let hosts = hosts(2);
        let d = detector(OutlierDetection {
            max_ejection_percent: 100,
            ..Default::default()
        });
        for _ in 0..5 {
            d.record(&hosts[1], Outcome::Timeout, &hosts);
        }
        assert!(hosts[1].has(flag::FAILED_OUTLIER_CHECK));
        d.health_check_passed(&hosts[1]);
        assert!(!hosts[1].has(flag::FAILED_OUTLIER_CHECK));
    }

    #[test]
    fn success_rate_ejects_the_host_far_below_the_mean() {
        let hosts = hosts(6);
        let d = detector(OutlierDetection {
            max_ejection_percent: 50,
            consecutive_5xx: 1000,
            ..Default::default()
        });
        for (i, h) in hosts.iter().enumerate() {
            for n in 0..200 {
                let failed = if i == 0 { n % 2 == 0 } else { n % 100 == 0 };
                d.record(h, Outcome::Status(if failed { 500 } else { 200 }), &hosts);
            }
        }
        tokio_test_sweep(&d, &hosts);
        assert!(hosts[0].has(flag::FAILED_OUTLIER_CHECK));
        assert!(hosts[1..]
            .iter()
            .all(|h| !h.has(flag::FAILED_OUTLIER_CHECK)));
        assert_eq!(hosts[1].outlier.success_rate(), Some(99.0));
    }

    fn tokio_test_sweep(d: &Detector, hosts: &[Arc<Host>]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { d.sweep(hosts, Instant::now()) });
    }
}
