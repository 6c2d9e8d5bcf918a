//! The operator API (`sluice.admin.v1.Admin`, defined in `proto/`): apply, validate, get,
//! delete, history, rollback and the fleet, over the [`Registry`] and the [`Fleet`].

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};

use crate::auth::{Access, Tokens};
use crate::fleet::Fleet;
use crate::registry::{self, group_name, Change, Registry, RegistryError};
use crate::resources::{redacted, ResourceSet, TYPES};

/// Generated types and service of `proto/sluice/admin/v1/admin.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("sluice.admin.v1");
}

use pb::admin_server::Admin;

/// The operator API service.
pub struct AdminApi {
    registry: Arc<Registry>,
    fleet: Arc<Fleet>,
    tokens: Tokens,
}

impl AdminApi {
    /// A service over `registry` and `fleet`, answering only requests with one of `tokens`
    /// (write methods only with a write token).
    pub fn new(registry: Arc<Registry>, fleet: Arc<Fleet>, tokens: Tokens) -> Self {
        Self {
            registry,
            fleet,
            tokens,
        }
    }

    fn allow<T>(&self, request: &Request<T>, access: Access, method: &str) -> Result<(), Status> {
        self.tokens.check(request.metadata(), access, method)?;
        Ok(())
    }

    /// Checks a write and names its author for history: the token's name, and under
    /// mutual TLS the client certificate's subject.
    fn writer<T>(&self, request: &Request<T>, method: &str) -> Result<String, Status> {
        let token = self
            .tokens
            .check(request.metadata(), Access::Write, method)?;
        let subject = request
            .peer_certs()
            .and_then(|chain| chain.first().and_then(|leaf| certificate_subject(leaf)));
        Ok(match subject {
            Some(subject) => format!("{token} (cert {subject})"),
            None => token.to_string(),
        })
    }
}

/// The subject of a DER certificate, as `CN=…, O=…`.
fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.subject().to_string())
}

/// A type's short name (`route`), its plural (`routes`) or its type URL → type URL; empty
/// → `None` (every type).
pub fn type_url(short: &str) -> Result<Option<&'static str>, Status> {
    if short.is_empty() {
        return Ok(None);
    }
    TYPES
        .iter()
        .find(|t| t.url == short || t.short == short || short.strip_suffix('s') == Some(t.short))
        .map(|t| Some(t.url))
        .ok_or_else(|| {
            let known: Vec<&str> = TYPES.iter().map(|t| t.short).collect();
            Status::invalid_argument(format!(
                "type: unknown resource type {short:?} ({})",
                known.join(", ")
            ))
        })
}

fn status(error: RegistryError) -> Status {
    match error {
        RegistryError::Invalid(_) | RegistryError::UnknownRevision(..) => {
            Status::invalid_argument(error.to_string())
        }
        RegistryError::NotFound(..) => Status::not_found(error.to_string()),
        RegistryError::Conflict { .. } | RegistryError::Contended { .. } => {
            Status::aborted(error.to_string())
        }
        RegistryError::Store(_) | RegistryError::CorruptRevision { .. } => {
            Status::internal(error.to_string())
        }
    }
}

fn reply(change: Change) -> Response<pb::ApplyResponse> {
    Response::new(pb::ApplyResponse {
        revision: change.revision,
        changed: change.changed,
    })
}

fn parse(documents: &str) -> Result<ResourceSet, Status> {
    ResourceSet::from_yaml(documents).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let author = self.writer(&request, "Apply")?;
        let r = request.into_inner();
        let incoming = parse(&r.documents)?;
        let change = registry::Request {
            author,
            expect_revision: r.expect_revision,
        };
        self.registry
            .apply(group_name(&r.group), &incoming, &change)
            .await
            .map(reply)
            .map_err(status)
    }

    async fn validate(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        self.allow(&request, Access::Read, "Validate")?;
        let r = request.into_inner();
        let incoming = parse(&r.documents)?;
        self.registry
            .validate(group_name(&r.group), &incoming)
            .map(reply)
            .map_err(status)
    }

    async fn diff(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        self.allow(&request, Access::Read, "Diff")?;
        let r = request.into_inner();
        let incoming = parse(&r.documents)?;
        let diffs = self
            .registry
            .diff(group_name(&r.group), &incoming)
            .map_err(status)?;
        let resources = diffs
            .into_iter()
            .map(|d| pb::ResourceDiff {
                type_url: d.type_url,
                name: d.name,
                change: if d.added { "added" } else { "changed" }.to_string(),
                fields: d
                    .fields
                    .into_iter()
                    .map(|(path, live, proposed)| pb::FieldChange {
                        path,
                        live,
                        proposed,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::DiffResponse { resources }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.allow(&request, Access::Read, "Get")?;
        let r = request.into_inner();
        let wanted = type_url(&r.r#type)?;
        let current = self.registry.current(group_name(&r.group));
        let documents: Vec<String> = current
            .by_type
            .iter()
            .filter(|(t, _)| wanted.is_none_or(|w| w == **t))
            .flat_map(|(_, m)| m.iter())
            .filter(|(name, _)| r.name.is_empty() || **name == r.name)
            .map(|(_, e)| serde_yaml_ng::to_string(&redacted(&e.document)).unwrap_or_default())
            .collect();
        if documents.is_empty() && !r.name.is_empty() {
            return Err(Status::not_found(format!(
                "{} {:?} does not exist",
                r.r#type, r.name
            )));
        }
        Ok(Response::new(pb::GetResponse {
            documents: documents.join("---\n"),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let author = self.writer(&request, "Delete")?;
        let r = request.into_inner();
        let type_url =
            type_url(&r.r#type)?.ok_or_else(|| Status::invalid_argument("type: required"))?;
        let change = registry::Request {
            author,
            expect_revision: r.expect_revision,
        };
        self.registry
            .delete(group_name(&r.group), type_url, &r.name, &change)
            .await
            .map(reply)
            .map_err(status)
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.allow(&request, Access::Read, "History")?;
        let revisions = self
            .registry
            .history(group_name(&request.get_ref().group))
            .into_iter()
            .map(|r| {
                let changes = r.changes.unwrap_or_default();
                pb::Revision {
                    number: r.number,
                    created_unix_ms: r.created_unix_ms,
                    source: r.source,
                    resources: r.documents.len() as u32,
                    author: r.author,
                    added: changes.added,
                    changed: changes.changed,
                    removed: changes.removed,
                }
            })
            .collect();
        Ok(Response::new(pb::HistoryResponse { revisions }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let author = self.writer(&request, "Rollback")?;
        let r = request.into_inner();
        let change = registry::Request {
            author,
            expect_revision: r.expect_revision,
        };
        self.registry
            .rollback(group_name(&r.group), r.revision, &change)
            .await
            .map(reply)
            .map_err(status)
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.allow(&request, Access::Read, "ListNodes")?;
        Ok(Response::new(fleet_view(&self.fleet, &self.registry)))
    }

    type WatchNodesStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::ListNodesResponse, Status>> + Send>,
    >;

    async fn watch_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<Self::WatchNodesStream>, Status> {
        self.allow(&request, Access::Read, "WatchNodes")?;
        let fleet = self.fleet.clone();
        let registry = self.registry.clone();
        let mut changes = fleet.watch();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                changes.borrow_and_update();
                if tx.send(Ok(fleet_view(&fleet, &registry))).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The fleet view as the API shows it; per type, the names a node subscribes to that its
/// group lacks (what it warms on).
fn fleet_view(fleet: &Fleet, registry: &Registry) -> pb::ListNodesResponse {
    let nodes = fleet
        .nodes()
        .into_iter()
        .map(|n| {
            let current = registry.current(group_name(&n.group));
            pb::NodeStatus {
                id: n.node.id.clone(),
                group: n.group.clone(),
                connected: n.connected(),
                protocol: if n.delta { "delta" } else { "sotw" }.to_string(),
                connected_since_unix_ms: n
                    .connected_since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                types: n
                    .types
                    .iter()
                    .map(|(t, s)| pb::TypeStatus {
                        type_url: t.clone(),
                        sent_version: s.sent_version.clone().unwrap_or_default(),
                        acked_version: s.acked_version.clone().unwrap_or_default(),
                        nack_version: s
                            .last_nack
                            .as_ref()
                            .map(|n| n.version.clone())
                            .unwrap_or_default(),
                        nack_error: s
                            .last_nack
                            .as_ref()
                            .map(|n| n.error.clone())
                            .unwrap_or_default(),
                        subscribed: s
                            .subscribed
                            .clone()
                            .unwrap_or_else(|| vec!["*".to_string()]),
                        missing: s
                            .subscribed
                            .iter()
                            .flatten()
                            .filter(|name| {
                                !current
                                    .by_type
                                    .get(t.as_str())
                                    .is_some_and(|m| m.contains_key(*name))
                            })
                            .cloned()
                            .collect(),
                    })
                    .collect(),
            }
        })
        .collect();
    pb::ListNodesResponse { nodes }
}
