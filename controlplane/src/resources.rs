//! A validated set of Envoy resources, grouped by type URL, with content-hash versions.
//!
//! Documents are Envoy resources in proto3-JSON/YAML with their `"@type"`, so a snippet
//! from Envoy's documentation applies as is. Each is decoded and validated with
//! `xds-types` (the same code the data plane runs), then encoded once; every stream that
//! sends it shares the bytes. Versions are content hashes, so a reconnecting node (or a
//! second replica) agrees on them without a resend.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use xds_types::pb::envoy::config::cluster::v3::Cluster;
use xds_types::pb::envoy::config::listener::v3::Listener;
use xds_types::pb::google::protobuf::Any;
use xds_types::{type_urls, ValidationError};

/// The order types are pushed in: clusters before the listeners that use them
/// (make-before-break).
pub const PUSH_ORDER: [&str; 2] = [type_urls::CLUSTER, type_urls::LISTENER];

/// Why a resource set was refused; names the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("invalid YAML/JSON: {0}")]
    Syntax(String),
    #[error("document {index}: {error}")]
    Invalid {
        index: usize,
        error: ValidationError,
    },
    #[error("document {index}: unsupported resource type {type_url:?}")]
    UnsupportedType { index: usize, type_url: String },
    #[error("document {index}: duplicate {type_url} {name:?}")]
    Duplicate {
        index: usize,
        type_url: String,
        name: String,
    },
    #[error("listener {listener:?} routes to unknown cluster {cluster:?}")]
    MissingCluster { listener: String, cluster: String },
}

/// One resource, encoded once.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Content hash of the encoded resource.
    pub version: String,
    pub any: Arc<Any>,
    /// The resource as a canonical proto3-JSON document with `"@type"` (what `get`
    /// returns and the store keeps).
    pub document: serde_json::Value,
}

/// Every resource, by type URL then name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResourceSet {
    pub by_type: BTreeMap<&'static str, BTreeMap<String, Entry>>,
}

impl ResourceSet {
    /// Parses and validates YAML/JSON documents (one resource each, `---`-separated).
    pub fn from_yaml(text: &str) -> Result<Self, ResourceError> {
        Self::parse(text, true)
    }

    /// Test hook: parses without the validation a data plane would apply, so tests can
    /// make every node NACK. Never use it to serve a fleet.
    pub fn from_yaml_unvalidated(text: &str) -> Result<Self, ResourceError> {
        Self::parse(text, false)
    }

    fn parse(text: &str, validate: bool) -> Result<Self, ResourceError> {
        use serde::Deserialize;
        let documents = serde_yaml_ng::Deserializer::from_str(text)
            .map(|document| {
                serde_json::Value::deserialize(document)
                    .map_err(|e| ResourceError::Syntax(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_values(documents, validate)
    }

    /// Builds the set from JSON documents; document indexes in errors count every document,
    /// empty ones included, as an operator numbers them in their file.
    fn from_values(
        documents: Vec<serde_json::Value>,
        validate: bool,
    ) -> Result<Self, ResourceError> {
        let mut set = ResourceSet::default();
        let mut listeners = Vec::new();
        for (index, value) in documents.into_iter().enumerate() {
            if value.is_null() {
                continue;
            }
            let type_url = value
                .get("@type")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string();
            let mut body = value.clone();
            if let Some(object) = body.as_object_mut() {
                object.remove("@type");
            }
            let invalid = |error| ResourceError::Invalid { index, error };
            let (type_url, name, bytes) = match type_url.as_str() {
                type_urls::LISTENER => {
                    let pb: Listener =
                        decode(body, type_urls::LISTENER, validate).map_err(invalid)?;
                    if validate {
                        listeners.push(xds_types::Listener::try_from(&pb).map_err(invalid)?);
                    }
                    (type_urls::LISTENER, pb.name.clone(), pb.encode_to_vec())
                }
                type_urls::CLUSTER => {
                    let pb: Cluster =
                        decode(body, type_urls::CLUSTER, validate).map_err(invalid)?;
                    if validate {
                        xds_types::Cluster::try_from(&pb).map_err(invalid)?;
                    }
                    (type_urls::CLUSTER, pb.name.clone(), pb.encode_to_vec())
                }
                other => {
                    return Err(ResourceError::UnsupportedType {
                        index,
                        type_url: other.to_string(),
                    })
                }
            };
            let version = hex(&Sha256::digest(&bytes)[..8]);
            let document = canonical(type_url, &bytes);
            let entry = Entry {
                version,
                any: Arc::new(Any {
                    type_url: type_url.to_string(),
                    value: bytes,
                }),
                document,
            };
            if set
                .by_type
                .entry(type_url)
                .or_default()
                .insert(name.clone(), entry)
                .is_some()
            {
                return Err(ResourceError::Duplicate {
                    index,
                    type_url: type_url.to_string(),
                    name,
                });
            }
        }
        let clusters: HashSet<&str> = set
            .by_type
            .get(type_urls::CLUSTER)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for l in &listeners {
            if let Some(missing) = l
                .http
                .route_table
                .referenced_clusters()
                .find(|c| !clusters.contains(c))
            {
                return Err(ResourceError::MissingCluster {
                    listener: l.name.clone(),
                    cluster: missing.to_string(),
                });
            }
        }
        Ok(set)
    }

    /// The version of one type: a hash over its resources' names and versions.
    pub fn type_version(&self, type_url: &str) -> String {
        let mut hasher = Sha256::new();
        for (name, entry) in self.by_type.get(type_url).into_iter().flatten() {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(entry.version.as_bytes());
            hasher.update([0]);
        }
        hex(&hasher.finalize()[..8])
    }

    /// Every resource as a document, by type then name.
    pub fn documents(&self) -> Vec<serde_json::Value> {
        self.by_type
            .values()
            .flat_map(|m| m.values().map(|e| e.document.clone()))
            .collect()
    }

    /// This set with `other`'s resources added or replacing same-named ones, re-validated
    /// as a whole (so references are checked against the result).
    pub fn merged(&self, other: &ResourceSet) -> Result<ResourceSet, ResourceError> {
        let mut by_key: BTreeMap<(&str, &String), &serde_json::Value> = BTreeMap::new();
        for set in [self, other] {
            for (type_url, entries) in &set.by_type {
                for (name, entry) in entries {
                    by_key.insert((type_url, name), &entry.document);
                }
            }
        }
        Self::from_documents(by_key.into_values().cloned().collect())
    }

    /// This set without one resource.
    pub fn without(&self, type_url: &str, name: &str) -> Result<ResourceSet, ResourceError> {
        let documents = self
            .by_type
            .iter()
            .flat_map(|(t, m)| {
                m.iter()
                    .filter(move |(n, _)| !(*t == type_url && n.as_str() == name))
                    .map(|(_, e)| e.document.clone())
            })
            .collect();
        Self::from_documents(documents)
    }

    /// A validated set from JSON documents (each with `"@type"`).
    pub fn from_documents(documents: Vec<serde_json::Value>) -> Result<ResourceSet, ResourceError> {
        Self::from_values(documents, true)
    }

    /// Whether both sets hold the same resources at the same versions.
    pub fn same_as(&self, other: &ResourceSet) -> bool {
        let versions = |s: &ResourceSet| -> Vec<(String, String, String)> {
            s.by_type
                .iter()
                .flat_map(|(t, m)| {
                    m.iter()
                        .map(move |(n, e)| (t.to_string(), n.clone(), e.version.clone()))
                })
                .collect()
        };
        versions(self) == versions(other)
    }

    /// The resources of one type.
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.by_type.get(type_url).into_iter().flatten()
    }
}

/// The resource as proto3-JSON with its `"@type"`, keys in a stable order.
fn canonical(type_url: &str, bytes: &[u8]) -> serde_json::Value {
    let name = type_urls::message_name(type_url);
    let mut json = xds_types::decode::message_descriptor(name)
        .ok()
        .and_then(|d| prost_reflect::DynamicMessage::decode(d, bytes).ok())
        .and_then(|m| xds_types::decode::dynamic_to_json(&m).ok())
        .unwrap_or(serde_json::Value::Null);
    if let Some(object) = json.as_object_mut() {
        object.insert("@type".to_string(), serde_json::Value::from(type_url));
    }
    json
}

/// Decodes a proto3-JSON document; `validate` also applies the unsupported-field check.
fn decode<T: prost::Message + Default>(
    body: serde_json::Value,
    type_url: &str,
    validate: bool,
) -> Result<T, ValidationError> {
    let name = type_urls::message_name(type_url);
    if validate {
        return xds_types::decode::from_json_value(body, name);
    }
    xds_types::decode::dynamic_from_json(body, name)?
        .transcode_to::<T>()
        .map_err(|e| ValidationError::new("", e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: web
type: STATIC
load_assignment:
  cluster_name: web
  endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } } }] }]
"#;

    #[test]
    fn the_demo_config_is_valid() {
        // deploy/quickstart.sh applies these; keep the README's run command true.
        let resources =
            ResourceSet::from_yaml(include_str!("../../deploy/demo/resources.yaml")).unwrap();
        assert_eq!(resources.documents().len(), 2);
        for bootstrap in [
            include_str!("../../deploy/demo/sluice-ads.yaml"),
            include_str!("../../deploy/demo/bootstrap.yaml"),
        ] {
            xds_types::Bootstrap::from_yaml(bootstrap).unwrap();
        }
    }

    #[test]
    fn versions_are_content_hashes() {
        let a = ResourceSet::from_yaml(CLUSTER).unwrap();
        let b = ResourceSet::from_yaml(CLUSTER).unwrap();
        assert_eq!(
            a.type_version(type_urls::CLUSTER),
            b.type_version(type_urls::CLUSTER)
        );
        let c = ResourceSet::from_yaml(&CLUSTER.replace("8080", "8081")).unwrap();
        assert_ne!(
            a.type_version(type_urls::CLUSTER),
            c.type_version(type_urls::CLUSTER)
        );
    }

    #[test]
    fn invalid_documents_name_the_document_and_field() {
        let text = format!("{CLUSTER}---\n\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: bad\nlb_policy: MAGLEV\n");
        let err = ResourceSet::from_yaml(&text).unwrap_err().to_string();
        assert_eq!(err, "document 1: lb_policy: MAGLEV is not supported");
    }
}
