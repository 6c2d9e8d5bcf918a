//! gRPC channels from filters to services in a cluster (authorization, rate limiting):
//! a host picked by the cluster's load balancer for each call, one lazily connected
//! channel per host, kept for the filter's lifetime.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::Snapshot;

/// The channels of one filter.
#[derive(Default)]
pub struct Channels(Mutex<HashMap<String, Channel>>);

impl Channels {
    /// A channel to a host of `cluster` in `snapshot`; `None` when the cluster is missing,
    /// has no host to pick, or speaks TLS (not supported for filter services yet).
    pub fn pick(
        &self,
        snapshot: &Snapshot,
        cluster: &str,
        connect_timeout: Duration,
    ) -> Option<Channel> {
        let host = snapshot
            .clusters
            .get(cluster)
            .filter(|c| c.config.tls.is_none())
            .and_then(|c| c.pick_any())?;
        let mut channels = self.0.lock().expect("channels lock");
        if let Some(c) = channels.get(&host.authority) {
            return Some(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{}", host.authority))
            .ok()?
            .connect_timeout(connect_timeout)
            .connect_lazy();
        channels.insert(host.authority.clone(), channel.clone());
        Some(channel)
    }
}
