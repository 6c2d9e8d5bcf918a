//! The standard Client Status Discovery Service, answered from the fleet view, so
//! existing tools can ask the control plane what each node has. One entry per node and
//! type: `version_info` is the ACKed version; `config_status` is SYNCED when the node
//! ACKed what it was sent, ERROR when it NACKed it (with the node's error), STALE while an
//! answer is pending.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use xds_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use xds_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use xds_types::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryService;
use xds_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};

use crate::fleet::{Fleet, TypeStatus};

/// CSDS over the fleet view.
#[derive(Clone)]
pub struct Csds {
    fleet: Arc<Fleet>,
}

impl Csds {
    /// A service reading `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }

    fn status(&self, request: &ClientStatusRequest) -> ClientStatusResponse {
        let wanted = request
            .node
            .as_ref()
            .map(|n| n.id.as_str())
            .filter(|id| !id.is_empty());
        let config = self
            .fleet
            .nodes()
            .into_iter()
            .filter(|n| wanted.is_none_or(|id| id == n.node.id))
            .map(|n| ClientConfig {
                node: Some(n.node.clone()),
                generic_xds_configs: n
                    .types
                    .iter()
                    .map(|(type_url, t)| generic(type_url, t))
                    .collect(),
                ..Default::default()
            })
            .collect();
        ClientStatusResponse { config }
    }
}

fn generic(type_url: &str, t: &TypeStatus) -> GenericXdsConfig {
    let nacked_current = t
        .last_nack
        .as_ref()
        .is_some_and(|n| Some(&n.version) == t.sent_version.as_ref());
    let (config_status, client_status) = if nacked_current {
        (ConfigStatus::Error, ClientResourceStatus::Nacked)
    } else if t.acked_version.is_some() && t.acked_version == t.sent_version {
        (ConfigStatus::Synced, ClientResourceStatus::Acked)
    } else {
        (ConfigStatus::Stale, ClientResourceStatus::Requested)
    };
    GenericXdsConfig {
        type_url: type_url.to_string(),
        version_info: t.acked_version.clone().unwrap_or_default(),
        config_status: config_status as i32,
        client_status: client_status as i32,
        error_state: t.last_nack.as_ref().map(|n| UpdateFailureState {
            details: n.error.clone(),
            version_info: n.version.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = StatusStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let this = self.clone();
        let answers = request
            .into_inner()
            .map(move |r| r.map(|r| this.status(&r)));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(self.status(request.get_ref())))
    }
}
