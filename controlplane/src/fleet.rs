//! The fleet view: every node that opened an xDS stream, what it was sent and what it
//! ACKed per type, what it subscribes to, and its last NACK with the error. Written by the
//! ADS streams; read by the Client Status Discovery Service and the operator API, which
//! can also watch it change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use xds_types::pb::envoy::config::core::v3::Node;

use crate::metrics::{GroupLabel, Metrics, TypeGroup};

/// One node's xDS status.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node: Node,
    /// `node.cluster`, or `default` when empty.
    pub group: String,
    pub connected_since: SystemTime,
    /// Open xDS streams: one for ADS, one per type for per-type clients. A node that
    /// reconnects may open its new stream before the old one is seen closing.
    pub streams: u32,
    pub delta: bool,
    /// By type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

impl NodeStatus {
    /// Whether any stream of the node is open.
    pub fn connected(&self) -> bool {
        self.streams > 0
    }
}

/// One type's status on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    /// The names subscribed to; `None` for a wildcard subscription.
    pub subscribed: Option<Vec<String>>,
    /// The last rejected version and the node's error for it.
    pub last_nack: Option<Nack>,
}

impl TypeStatus {
    /// Whether the node ACKed what it was last sent (or was sent nothing).
    pub fn in_step(&self) -> bool {
        self.sent_version.is_none() || self.acked_version == self.sent_version
    }
}

/// A rejected version and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: String,
    pub error: String,
}

/// All nodes known to this control plane, by node id.
#[derive(Debug)]
pub struct Fleet {
    nodes: Mutex<BTreeMap<String, NodeStatus>>,
    /// Bumped on every change, so watchers wake (several changes may wake them once).
    changes: watch::Sender<u64>,
    /// Pushes, ACKs, NACKs, connected nodes and convergence, counted as the view changes.
    pub metrics: Arc<Metrics>,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
            changes: watch::channel(0).0,
            metrics: Arc::default(),
        }
    }
}

impl Fleet {
    /// Records a newly opened stream.
    pub fn connected(&self, node: &Node, delta: bool) {
        let group = crate::registry::group_name(&node.cluster).to_string();
        let mut nodes = self.nodes.lock().expect("fleet lock");
        let entry = nodes.entry(node.id.clone()).or_insert_with(|| NodeStatus {
            node: node.clone(),
            group: group.clone(),
            connected_since: SystemTime::now(),
            streams: 0,
            delta,
            types: BTreeMap::new(),
        });
        if entry.streams == 0 {
            entry.connected_since = SystemTime::now();
            self.count_connected(&group, 1);
        }
        entry.node = node.clone();
        entry.group = group;
        entry.streams += 1;
        entry.delta = delta;
        drop(nodes);
        self.changed();
    }

    /// A receiver that is notified after every change of the fleet view.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Records a closed stream; with its last stream gone the node stays listed,
    /// disconnected.
    pub fn disconnected(&self, node_id: &str) {
        if let Some(n) = self.nodes.lock().expect("fleet lock").get_mut(node_id) {
            if n.streams == 1 {
                self.count_connected(&n.group, -1);
            }
            n.streams = n.streams.saturating_sub(1);
        }
        self.changed();
    }

    /// Applies `update` to one type's status of one node.
    pub fn update(&self, node_id: &str, type_url: &str, update: impl FnOnce(&mut TypeStatus)) {
        let mut nodes = self.nodes.lock().expect("fleet lock");
        let Some(node) = nodes.get_mut(node_id) else {
            return;
        };
        let status = node.types.entry(type_url.to_string()).or_default();
        let before = status.clone();
        update(status);
        let changed = *status != before;
        if changed {
            let group = node.group.clone();
            let labels = TypeGroup {
                r#type: xds_types::type_urls::message_name(type_url).to_string(),
                group: group.clone(),
            };
            if status.sent_version != before.sent_version {
                self.metrics.pushes.get_or_create(&labels).inc();
                self.metrics.pushed(&group, node_id);
            }
            if status.acked_version.is_some() && status.acked_version != before.acked_version {
                self.metrics.acks.get_or_create(&labels).inc();
            }
            if status.last_nack.is_some() && status.last_nack != before.last_nack {
                self.metrics.nacks.get_or_create(&labels).inc();
            }
            // Only while a change converges is the group's state worth a look.
            if self.metrics.converging(&group) {
                if node.types.values().all(TypeStatus::in_step) {
                    self.metrics.node_in_step(&group, node_id);
                }
                let members: Vec<&str> = nodes
                    .values()
                    .filter(|n| n.group == group && n.connected())
                    .map(|n| n.node.id.as_str())
                    .collect();
                let in_step = nodes
                    .values()
                    .filter(|n| n.group == group && n.connected())
                    .flat_map(|n| n.types.values())
                    .all(TypeStatus::in_step);
                if in_step {
                    if let Some(wait) = self.metrics.in_step(&group, &members) {
                        self.settle_after(group.clone(), wait);
                    }
                }
            }
            drop(nodes);
            self.changed();
        }
    }

    /// Finishes a change that waits only for nodes it may not concern once `wait` is
    /// over, so its convergence is observed without waiting for the next fleet event.
    fn settle_after(&self, group: String, wait: std::time::Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let metrics = self.metrics.clone();
        runtime.spawn(async move {
            tokio::time::sleep(wait + std::time::Duration::from_millis(10)).await;
            metrics.settle(&group);
        });
    }

    fn count_connected(&self, group: &str, by: i64) {
        self.metrics
            .connected_nodes
            .get_or_create(&GroupLabel {
                group: group.to_string(),
            })
            .inc_by(by);
    }

    /// A copy of every node's status.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.nodes
            .lock()
            .expect("fleet lock")
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_connected_while_any_of_its_streams_is_open() {
        let fleet = Fleet::default();
        let node = Node {
            id: "n".into(),
            ..Default::default()
        };
        // A reconnect: the new stream opens before the old one is seen closing.
        fleet.connected(&node, false);
        fleet.connected(&node, false);
        fleet.disconnected("n");
        assert!(fleet.nodes()[0].connected());
        fleet.disconnected("n");
        assert!(!fleet.nodes()[0].connected());
        assert_eq!(fleet.nodes()[0].group, "default");
    }
}
