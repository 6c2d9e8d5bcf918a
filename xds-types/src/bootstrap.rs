//! Envoy's bootstrap (the subset `sluice -c` reads): node, admin and static resources.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::cluster::{socket_address, Cluster};
use crate::decode;
use crate::error::{Result, ValidationError};
use crate::listener::Listener;
use crate::pb::envoy::config::bootstrap::v3 as pb;

/// Full name of the bootstrap message.
pub const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// A validated bootstrap. `raw` keeps the accepted proto for `/config_dump`.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub node_id: String,
    pub node_cluster: String,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    pub raw: pb::Bootstrap,
}

impl Bootstrap {
    /// Parses and validates a YAML or JSON bootstrap.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let raw: pb::Bootstrap = decode::from_yaml(text, BOOTSTRAP)?;
        Self::try_from(raw)
    }
}

impl TryFrom<pb::Bootstrap> for Bootstrap {
    type Error = ValidationError;

    fn try_from(raw: pb::Bootstrap) -> Result<Self> {
        let node = raw.node.clone().unwrap_or_default();
        let admin = match raw.admin.as_ref().and_then(|a| a.address.as_ref()) {
            None => None,
            Some(address) => {
                let (host, port) =
                    socket_address(address).map_err(|e| e.within("admin.address"))?;
                let ip = host.parse().map_err(|_| {
                    ValidationError::new(
                        "admin.address.socket_address.address",
                        "must be an IP address",
                    )
                })?;
                Some(SocketAddr::new(ip, port))
            }
        };
        let statics = raw.static_resources.clone().unwrap_or_default();
        let clusters = statics
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Cluster::try_from(c)
                    .map_err(|e| e.within(format!("static_resources.clusters[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        let listeners = statics
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Listener::try_from(l)
                    .map_err(|e| e.within(format!("static_resources.listeners[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
        unique(
            clusters.iter().map(|c| c.name.as_str()),
            "static_resources.clusters",
            "cluster",
        )?;
        unique(
            listeners.iter().map(|l| l.name.as_str()),
            "static_resources.listeners",
            "listener",
        )?;
        let mut addresses = HashSet::new();
        for (i, l) in listeners.iter().enumerate() {
            if !addresses.insert(l.address) {
                return Err(ValidationError::new(
                    format!("static_resources.listeners[{i}].address"),
                    format!("{} is used by another listener", l.address),
                ));
            }
        }
        let names: HashSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        for (i, l) in listeners.iter().enumerate() {
            if let Some(missing) = l
                .http
                .route_table
                .referenced_clusters()
                .find(|c| !names.contains(c))
            {
                return Err(ValidationError::new(
                    format!(
                        "static_resources.listeners[{i}].filter_chains[0].filters.route_config"
                    ),
                    format!("route references unknown cluster {missing:?}"),
                ));
            }
        }
        Ok(Self {
            node_id: node.id,
            node_cluster: node.cluster,
            admin,
            listeners,
            clusters,
            raw,
        })
    }
}

fn unique<'a>(names: impl Iterator<Item = &'a str>, path: &str, what: &str) -> Result<()> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(ValidationError::new(
                format!("{path}[{i}].name"),
                format!("duplicate {what} name {name:?}"),
            ));
        }
    }
    Ok(())
}
