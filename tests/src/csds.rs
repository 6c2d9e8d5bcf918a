//! Asks a control plane's Client Status Discovery Service what each node has.

use std::net::SocketAddr;

use xds_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use xds_types::pb::envoy::service::status::v3::ClientStatusRequest;

/// One node's status for one type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TypeStatus {
    pub node: String,
    pub acked_version: String,
    /// `envoy.service.status.v3.ConfigStatus` as a number.
    pub config_status: i32,
    /// The node's error for its last NACK, if any.
    pub error: String,
}

/// Every node's status for `type_url`, sorted by node; empty when CSDS cannot be reached.
pub async fn statuses(xds: SocketAddr, type_url: &str) -> Vec<TypeStatus> {
    let Ok(mut client) = ClientStatusDiscoveryServiceClient::connect(format!("http://{xds}")).await
    else {
        return Vec::new();
    };
    let Ok(response) = client
        .fetch_client_status(ClientStatusRequest::default())
        .await
    else {
        return Vec::new();
    };
    let mut out: Vec<TypeStatus> = response
        .into_inner()
        .config
        .into_iter()
        .flat_map(|c| {
            let node = c.node.map(|n| n.id).unwrap_or_default();
            c.generic_xds_configs
                .into_iter()
                .filter(|g| g.type_url == type_url)
                .map(move |g| TypeStatus {
                    node: node.clone(),
                    acked_version: g.version_info,
                    config_status: g.config_status,
                    error: g.error_state.map(|e| e.details).unwrap_or_default(),
                })
        })
        .collect();
    out.sort();
    out
}
