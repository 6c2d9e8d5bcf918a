//! The overload manager's actions. One task samples the heap monitors every
//! `refresh_interval`, turns each monitor's pressure into each action's state through its
//! triggers, and publishes the states in process-wide atomics, so the accept loops and the
//! connection managers decide with one load (no lock, nothing shared per request).
//!
//! A state is between 0 and 1. As in Envoy, a per-request or per-connection action applies
//! with probability equal to its state (always at 1, never at 0), and the actions that
//! cannot be partial (stop accepting connections, shrink the heap) apply at 1 only.
//! A listener with `bypass_overload_manager` is exempt from all of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tracing::{info, warn};
use xds_types::overload::{ActionKind, OverloadConfig};

use crate::stats::Stats;

/// One state per [`ActionKind`], as `f64` bits (0.0 is all-zero bits: inactive).
static STATES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

fn index(kind: ActionKind) -> usize {
    match kind {
        ActionKind::StopAcceptingRequests => 0,
        ActionKind::DisableHttpKeepalive => 1,
        ActionKind::StopAcceptingConnections => 2,
        ActionKind::RejectIncomingConnections => 3,
        ActionKind::ShrinkHeap => 4,
    }
}

fn slot(kind: ActionKind) -> &'static AtomicU64 {
    &STATES[index(kind)]
}

/// The action's current state, 0 to 1.
pub fn state(kind: ActionKind) -> f64 {
    f64::from_bits(slot(kind).load(Ordering::Relaxed))
}

/// Whether this request or connection is to be acted on: true with probability equal to
/// the action's state (Envoy's `bernoulli`), without drawing a random number at 0 or 1.
pub fn applies(kind: ActionKind) -> bool {
    let state = state(kind);
    if state <= 0.0 {
        false
    } else if state >= 1.0 {
        true
    } else {
        rand::random::<f64>() < state
    }
}

/// Whether the action is saturated (state 1).
fn saturated(kind: ActionKind) -> bool {
    state(kind) >= 1.0
}

/// Whether stop_accepting_connections is saturated, for accept loops to wait on (an accept
/// already pending must be abandoned when it turns on, not after one more connection).
static ACCEPT_PAUSED: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(false).0);

/// Follows [`ActionKind::StopAcceptingConnections`]'s saturation.
pub fn accept_paused() -> watch::Receiver<bool> {
    ACCEPT_PAUSED.subscribe()
}

/// Bytes the heap holds from the system: glibc's own figure where there is one, else the
/// resident anonymous memory (heap, stacks and anonymous maps: a larger, coarser figure).
fn heap_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        Some(glibc::heap_bytes())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// Returns free heap to the system (the shrink_heap action).
fn shrink_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::trim();
}

/// The allocator's figures and its trim call. These are C functions with no safe wrapper
/// in any maintained crate, so this module is the one place in the workspace that allows
/// `unsafe`: two calls that take plain values and touch no Rust memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    /// The arenas' bytes plus the mmapped blocks': what the heap holds from the system,
    /// free chunks not yet returned included, as tcmalloc's heap size less unmapped bytes
    /// that Envoy's fixed_heap monitor reads.
    pub(super) fn heap_bytes() -> u64 {
        // SAFETY: mallinfo2 (glibc 2.33+) takes no arguments and returns a struct by value.
        let info = unsafe { libc::mallinfo2() };
        (info.arena + info.hblkhd) as u64
    }

    /// Releases free memory at the top of each arena and whole free pages within them.
    pub(super) fn trim() {
        // SAFETY: malloc_trim takes a size and only gives free pages back to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// How often shrink_heap returns memory while saturated (Envoy's shrinker timer).
const SHRINK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The stats of one action (Envoy's `overload.<action>.active` and `.scale_percent`).
struct ActionStats {
    active: Gauge,
    scale_percent: Gauge,
}

/// Starts the sampler when there is something to sample; a config without heap monitors
/// leaves every action inactive and costs nothing.
pub fn start(config: &OverloadConfig, stats: &Arc<Stats>) {
    if config.heap_monitors.is_empty() {
        return;
    }
    let config = config.clone();
    let pressure: Vec<Gauge> = config
        .heap_monitors
        .iter()
        .map(|m| stats.overload_monitor_pressure(&m.name))
        .collect();
    let failed: Vec<Counter> = config
        .heap_monitors
        .iter()
        .map(|m| stats.overload_monitor_failed_updates(&m.name))
        .collect();
    let action_stats: Vec<Option<ActionStats>> = config
        .actions
        .iter()
        .map(|a| {
            (!a.load_shed_point).then(|| {
                let (active, scale_percent) = stats.overload_action(&a.name);
                ActionStats {
                    active,
                    scale_percent,
                }
            })
        })
        .collect();
    let shrink_count = config
        .actions
        .iter()
        .find(|a| a.kind == ActionKind::ShrinkHeap)
        .map(|a| stats.overload_shrink_count(&a.name));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(config.refresh_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_active = vec![false; config.actions.len()];
        let mut last_shrink = tokio::time::Instant::now();
        loop {
            ticker.tick().await;
            let Some(heap) = heap_bytes() else {
                failed.iter().for_each(|c| {
                    c.inc();
                });
                continue;
            };
            let pressures: Vec<f64> = config
                .heap_monitors
                .iter()
                .map(|m| heap as f64 / m.max_heap_size_bytes as f64)
                .collect();
            for (gauge, p) in pressure.iter().zip(&pressures) {
                gauge.set((p * 100.0) as i64);
            }
            // An action and the load shed point that acts alike share a state: the larger.
            let mut states = [0.0f64; 5];
            for (i, action) in config.actions.iter().enumerate() {
                let state = action
                    .triggers
                    .iter()
                    .map(|(monitor, trigger)| trigger.state(pressures[*monitor]))
                    .fold(0.0, f64::max);
                let at = index(action.kind);
                states[at] = states[at].max(state);
                if let Some(s) = &action_stats[i] {
                    s.active.set(i64::from(state >= 1.0));
                    s.scale_percent.set((state * 100.0) as i64);
                }
                let active = state > 0.0;
                if active != was_active[i] {
                    was_active[i] = active;
                    if active {
                        warn!(action = %action.name, state, heap_bytes = heap, "overload action active");
                    } else {
                        info!(action = %action.name, heap_bytes = heap, "overload action inactive");
                    }
                }
            }
            for (slot, state) in STATES.iter().zip(states) {
                slot.store(state.to_bits(), Ordering::Relaxed);
            }
            let pause = saturated(ActionKind::StopAcceptingConnections);
            ACCEPT_PAUSED.send_if_modified(|paused| std::mem::replace(paused, pause) != pause);
            // As Envoy's heap shrinker: at most every 10 s, so a heap at its limit is not
            // walked ten times a second.
            if saturated(ActionKind::ShrinkHeap) && last_shrink.elapsed() >= SHRINK_INTERVAL {
                last_shrink = tokio::time::Instant::now();
                shrink_heap();
                if let Some(c) = &shrink_count {
                    c.inc();
                }
            }
        }
    });
}
