//! A cluster's circuit breakers (Envoy's `circuit_breakers`, default priority): how many
//! connections, pending requests, requests and retries it may have at once. A request over
//! a limit is answered 503 with the `UO` flag instead of queueing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use xds_types::cluster::Thresholds;

/// The counters and their limits, shared by every host of the cluster (and kept across
/// updates that leave the cluster's limits unchanged).
#[derive(Debug)]
pub struct Limits {
    pub thresholds: Thresholds,
    pub connections: AtomicUsize,
    pub pending: AtomicUsize,
    pub requests: AtomicUsize,
    pub retries: AtomicUsize,
    /// Woken when a connection closes (a pending request may open one).
    pub released: Notify,
}

/// Releases one unit of a counter when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    which: Counter,
}

#[derive(Debug, Clone, Copy)]
enum Counter {
    Pending,
    Request,
    Retry,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let counter = match self.which {
            Counter::Pending => &self.limits.pending,
            Counter::Request => &self.limits.requests,
            Counter::Retry => &self.limits.retries,
        };
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limits {
    /// Counters at zero under `thresholds`.
    pub fn new(thresholds: Thresholds) -> Arc<Self> {
        Arc::new(Self {
            thresholds,
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            released: Notify::new(),
        })
    }

    /// Counts a new connection if the cluster is under `max_connections`.
    pub fn try_open_connection(&self) -> bool {
        take(&self.connections, self.thresholds.max_connections)
    }

    /// A pending request (waiting for a connection), within `max_pending_requests`.
    pub fn try_pend(self: &Arc<Self>) -> Option<Slot> {
        self.slot(
            Counter::Pending,
            &self.pending,
            self.thresholds.max_pending_requests,
        )
    }

    /// A request in flight, within `max_requests`.
    pub fn try_request(self: &Arc<Self>) -> Option<Slot> {
        self.slot(
            Counter::Request,
            &self.requests,
            self.thresholds.max_requests,
        )
    }

    /// A retry in flight, within `max_retries` (and the retry budget, when one is set: a
    /// share of the requests in flight, at least `min_retry_concurrency`).
    pub fn try_retry(self: &Arc<Self>) -> Option<Slot> {
        let max = match self.thresholds.retry_budget {
            None => self.thresholds.max_retries,
            Some(budget) => {
                let active =
                    self.requests.load(Ordering::Relaxed) + self.pending.load(Ordering::Relaxed);
                let share = (active as f64 * budget.budget_percent / 100.0) as usize;
                share.max(budget.min_retry_concurrency as usize)
            }
        };
        self.slot(Counter::Retry, &self.retries, max)
    }

    fn slot(self: &Arc<Self>, which: Counter, counter: &AtomicUsize, max: usize) -> Option<Slot> {
        take(counter, max).then(|| Slot {
            limits: self.clone(),
            which,
        })
    }
}

/// Increments `counter` if it is below `max`.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released_on_drop() {
        let limits = Limits::new(Thresholds {
            max_requests: 2,
            ..Thresholds::default()
        });
        let a = limits.try_request().unwrap();
        let _b = limits.try_request().unwrap();
        assert!(limits.try_request().is_none());
        drop(a);
        assert!(limits.try_request().is_some());
    }

    #[test]
    fn a_retry_budget_scales_with_the_requests_in_flight() {
        let limits = Limits::new(Thresholds {
            retry_budget: Some(xds_types::cluster::RetryBudget {
                budget_percent: 50.0,
                min_retry_concurrency: 1,
            }),
            ..Thresholds::default()
        });
        let requests: Vec<Slot> = (0..10).filter_map(|_| limits.try_request()).collect();
        let retries: Vec<Slot> = (0..10).filter_map(|_| limits.try_retry()).collect();
        assert_eq!((requests.len(), retries.len()), (10, 5));
    }
}
