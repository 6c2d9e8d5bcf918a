//! Validated `envoy.filters.network.tcp_proxy`: which cluster a connection's bytes go to,
//! and the timeouts that end it.

use std::time::Duration;

use crate::access_log::AccessLog;
use crate::error::{Result, ValidationError};
use crate::pb::envoy::extensions::filters::network::tcp_proxy::v3 as pb;
use crate::route::ClusterTarget;
use crate::util::optional_timeout;

/// Envoy's default `idle_timeout` of a TCP proxy.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A TCP proxy network filter.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub target: ClusterTarget,
    /// Close when no bytes moved either way this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Connect attempts (each to an endpoint the load balancer picks) before giving up.
    pub max_connect_attempts: u32,
    /// Close the connection this long after it was accepted; `None`: never.
    pub max_downstream_connection_duration: Option<Duration>,
    /// One line per connection, when it closes.
    pub access_log: Vec<AccessLog>,
}

impl TcpProxy {
    /// The clusters it may send a connection to.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        let names: Vec<&str> = match &self.target {
            ClusterTarget::Cluster(name) => vec![name.as_str()],
            ClusterTarget::Weighted { clusters, .. } => {
                clusters.iter().map(|(n, _)| n.as_str()).collect()
            }
        };
        names.into_iter()
    }
}

impl TryFrom<&pb::TcpProxy> for TcpProxy {
    type Error = ValidationError;

    fn try_from(t: &pb::TcpProxy) -> Result<Self> {
        use pb::tcp_proxy::ClusterSpecifier as S;
        if t.stat_prefix.is_empty() {
            return Err(ValidationError::required("stat_prefix"));
        }
        let target = match t.cluster_specifier.as_ref() {
            Some(S::Cluster(name)) if !name.is_empty() => ClusterTarget::Cluster(name.clone()),
            Some(S::WeightedClusters(w)) => {
                let mut clusters = Vec::new();
                for (i, c) in w.clusters.iter().enumerate() {
                    let at = format!("weighted_clusters.clusters[{i}]");
                    if c.name.is_empty() {
                        return Err(ValidationError::required(format!("{at}.name")));
                    }
                    if c.metadata_match.is_some() {
                        return Err(ValidationError::unsupported(format!("{at}.metadata_match")));
                    }
                    if c.weight > 0 {
                        clusters.push((c.name.clone(), c.weight));
                    }
                }
                let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
                if total == 0 {
                    return Err(ValidationError::new(
                        "weighted_clusters.clusters",
                        "at least one cluster needs a weight above 0",
                    ));
                }
                let total = u32::try_from(total).map_err(|_| {
                    ValidationError::new("weighted_clusters.clusters", "weights sum past 2^32")
                })?;
                ClusterTarget::Weighted { clusters, total }
            }
            _ => return Err(ValidationError::required("cluster")),
        };
        let max_connect_attempts = t.max_connect_attempts.as_ref().map_or(1, |v| v.value);
        if max_connect_attempts == 0 {
            return Err(ValidationError::new(
                "max_connect_attempts",
                "must be at least 1",
            ));
        }
        Ok(Self {
            access_log: AccessLog::list(&t.access_log, "access_log")?,
            stat_prefix: t.stat_prefix.clone(),
            target,
            idle_timeout: optional_timeout(
                t.idle_timeout.as_ref(),
                "idle_timeout",
                Some(DEFAULT_IDLE_TIMEOUT),
            )?,
            max_connect_attempts,
            max_downstream_connection_duration: optional_timeout(
                t.max_downstream_connection_duration.as_ref(),
                "max_downstream_connection_duration",
                None,
            )?,
        })
    }
}
