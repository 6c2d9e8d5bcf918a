//! A validated set of Envoy resources, grouped by type URL, with content-hash versions.
//!
//! Documents are Envoy resources in proto3-JSON/YAML with their `"@type"`, so a snippet
//! from Envoy's documentation applies as is. Each is decoded and validated with
//! `xds-types` (the same code the data plane runs), then encoded once; every stream that
//! sends it shares the bytes. Versions are content hashes, so a reconnecting node (or a
//! second replica) agrees on them without a resend.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use xds_types::pb::envoy::config::cluster::v3::Cluster;
use xds_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_types::pb::envoy::config::listener::v3::Listener;
use xds_types::pb::envoy::config::route::v3::RouteConfiguration;
use xds_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_types::pb::google::protobuf::Any;
use xds_types::{type_urls, ValidationError};

pub use xds_types::resource::{human as kind, kind_of as resource_type, Kind as ResourceType};

/// Every type served, in the order additions are pushed: each type before the types that
/// use it (make-before-break); removals go in the reverse order.
pub const TYPES: [ResourceType; 5] = xds_types::resource::KINDS;

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
    #[error(
        "{} {name:?} references unknown {} {missing:?}",
        kind(type_url),
        kind(missing_type)
    )]
    MissingReference {
        type_url: &'static str,
        name: String,
        missing_type: &'static str,
        missing: String,
    },
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
    /// The resources this one uses, as `(type URL, name)`: a listener its route
    /// configuration or clusters, a route configuration its clusters, an EDS cluster its
    /// endpoints. Empty when the resource is invalid (test hook).
    pub uses: Vec<(&'static str, String)>,
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
            let parsed = match type_url.as_str() {
                type_urls::LISTENER => parse::<Listener>(body, validate),
                type_urls::CLUSTER => parse::<Cluster>(body, validate),
                type_urls::ROUTE_CONFIGURATION => parse::<RouteConfiguration>(body, validate),
                type_urls::CLUSTER_LOAD_ASSIGNMENT => {
                    parse::<ClusterLoadAssignment>(body, validate)
                }
                type_urls::SECRET => parse::<Secret>(body, validate),
                other => {
                    return Err(ResourceError::UnsupportedType {
                        index,
                        type_url: other.to_string(),
                    })
                }
            };
            let Parsed {
                type_url,
                name,
                bytes,
                uses,
            } = parsed.map_err(|error| ResourceError::Invalid { index, error })?;
            let version = hex(&Sha256::digest(&bytes)[..8]);
            let document = canonical(type_url, &bytes);
            let entry = Entry {
                version,
                any: Arc::new(Any {
                    type_url: type_url.to_string(),
                    value: bytes,
                }),
                document,
                uses,
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
        if validate {
            set.check_references()?;
        }
        Ok(set)
    }

    /// Every referenced cluster and route configuration must be in the set. Endpoints may
    /// be missing: their cluster warms, then serves with none, as Envoy does.
    fn check_references(&self) -> Result<(), ResourceError> {
        for (type_url, entries) in &self.by_type {
            for (name, entry) in entries {
                let missing = entry.uses.iter().find(|(used_type, used)| {
                    *used_type != type_urls::CLUSTER_LOAD_ASSIGNMENT
                        && !self
                            .by_type
                            .get(used_type)
                            .is_some_and(|m| m.contains_key(used))
                });
                if let Some((missing_type, missing)) = missing {
                    return Err(ResourceError::MissingReference {
                        type_url,
                        name: name.clone(),
                        missing_type,
                        missing: missing.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The version of one type: a hash over its resources' names and versions.
    pub fn type_version(&self, type_url: &str) -> String {
        self.subset_version(type_url, |_| true)
    }

    /// The version of the resources of one type that `wanted` selects (what one
    /// state-of-the-world client subscribes to).
    pub fn subset_version(&self, type_url: &str, wanted: impl Fn(&str) -> bool) -> String {
        let mut hasher = Sha256::new();
        for (name, entry) in self
            .by_type
            .get(type_url)
            .into_iter()
            .flatten()
            .filter(|(name, _)| wanted(name))
        {
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

    /// The step between `previous` and this set when this set removes something: this set
    /// plus the resources it removes. Pushing it first, in [`TYPES`] order, and this set
    /// after, in reverse, makes every new resource live before anything that used the old
    /// ones goes away (make-before-break). `None` when nothing is removed.
    pub fn bridge_from(&self, previous: &ResourceSet) -> Option<ResourceSet> {
        let mut bridge = self.clone();
        let mut removes = false;
        for (type_url, entries) in &previous.by_type {
            let kept = bridge.by_type.entry(type_url).or_default();
            for (name, entry) in entries {
                if !kept.contains_key(name) {
                    kept.insert(name.clone(), entry.clone());
                    removes = true;
                }
            }
        }
        removes.then_some(bridge)
    }

    /// The resources of one type.
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.by_type.get(type_url).into_iter().flatten()
    }
}

/// One decoded document: its type, name, encoding and references.
struct Parsed {
    type_url: &'static str,
    name: String,
    bytes: Vec<u8>,
    uses: Vec<(&'static str, String)>,
}

/// An Envoy resource type the control plane serves: how it is named, validated (with
/// `xds-types`, as a data plane would) and what it references.
trait Served: Message + Default {
    const TYPE_URL: &'static str;
    fn name(&self) -> &str;
    /// Validates the resource and returns what it uses.
    fn uses(&self) -> Result<Vec<(&'static str, String)>, ValidationError>;
}

fn parse<T: Served>(body: serde_json::Value, validate: bool) -> Result<Parsed, ValidationError> {
    let pb: T = decode(body, T::TYPE_URL, validate)?;
    let uses = match pb.uses() {
        Ok(uses) => uses,
        Err(error) if validate => return Err(error),
        Err(_) => Vec::new(),
    };
    Ok(Parsed {
        type_url: T::TYPE_URL,
        name: pb.name().to_string(),
        bytes: pb.encode_to_vec(),
        uses,
    })
}

fn clusters_of(table: &xds_types::RouteTable) -> impl Iterator<Item = (&'static str, String)> + '_ {
    table
        .referenced_clusters()
        .map(|c| (type_urls::CLUSTER, c.to_string()))
}

impl Served for Listener {
    const TYPE_URL: &'static str = type_urls::LISTENER;
    fn name(&self) -> &str {
        &self.name
    }
    fn uses(&self) -> Result<Vec<(&'static str, String)>, ValidationError> {
        if self.api_listener.is_some() {
            let http = xds_types::listener::ApiListener::try_from(self)?.http;
            return Ok(match http.rds_name() {
                Some(rds) => vec![(type_urls::ROUTE_CONFIGURATION, rds.to_string())],
                None => http
                    .inline_routes()
                    .map(|t| clusters_of(t).collect())
                    .unwrap_or_default(),
            });
        }
        let listener = xds_types::Listener::try_from(self)?;
        let mut uses: Vec<(&'static str, String)> = listener
            .rds_names()
            .map(|n| (type_urls::ROUTE_CONFIGURATION, n.to_string()))
            .chain(
                listener
                    .referenced_clusters()
                    .into_iter()
                    .map(|c| (type_urls::CLUSTER, c.to_string())),
            )
            .chain(secrets_of(listener.sds_refs()))
            .collect();
        uses.sort();
        uses.dedup();
        Ok(uses)
    }
}

/// The SDS secrets (over ADS) a resource names: they must be in the group.
fn secrets_of<'a>(
    refs: impl Iterator<Item = &'a xds_types::tls::SdsRef> + 'a,
) -> impl Iterator<Item = (&'static str, String)> + 'a {
    refs.filter(|r| matches!(r.source, xds_types::tls::SecretSource::Xds { .. }))
        .map(|r| (type_urls::SECRET, r.name.clone()))
}

impl Served for Cluster {
    const TYPE_URL: &'static str = type_urls::CLUSTER;
    fn name(&self) -> &str {
        &self.name
    }
    fn uses(&self) -> Result<Vec<(&'static str, String)>, ValidationError> {
        let cluster = xds_types::cluster::dynamic_cluster(self)?;
        Ok(cluster
            .eds_name()
            .map(|n| (type_urls::CLUSTER_LOAD_ASSIGNMENT, n.to_string()))
            .into_iter()
            .chain(secrets_of(cluster.tls.iter().flat_map(|t| t.sds_names())))
            .collect())
    }
}

impl Served for RouteConfiguration {
    const TYPE_URL: &'static str = type_urls::ROUTE_CONFIGURATION;
    fn name(&self) -> &str {
        &self.name
    }
    fn uses(&self) -> Result<Vec<(&'static str, String)>, ValidationError> {
        if self.name.is_empty() {
            return Err(ValidationError::required("name"));
        }
        let table = xds_types::RouteTable::try_from(self)?;
        Ok(clusters_of(&table).collect())
    }
}

impl Served for ClusterLoadAssignment {
    const TYPE_URL: &'static str = type_urls::CLUSTER_LOAD_ASSIGNMENT;
    fn name(&self) -> &str {
        &self.cluster_name
    }
    fn uses(&self) -> Result<Vec<(&'static str, String)>, ValidationError> {
        xds_types::cluster::Assignment::try_from(self)?;
        Ok(Vec::new())
    }
}

impl Served for Secret {
    const TYPE_URL: &'static str = type_urls::SECRET;
    fn name(&self) -> &str {
        &self.name
    }
    fn uses(&self) -> Result<Vec<(&'static str, String)>, ValidationError> {
        xds_types::secret::Secret::try_from(self)?;
        Ok(Vec::new())
    }
}

/// Whether a field holds key material that no read from the control plane may show.
pub fn is_private(field: &str) -> bool {
    field == "private_key" || field == "privateKey"
}

/// A document as operators may read it: every private key replaced by `[redacted]`
/// (applying that back is refused, as the placeholder is not a key).
pub fn redacted(document: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match document {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    let v = if is_private(k) {
                        serde_json::json!({ "inline_string": "[redacted]" })
                    } else {
                        redacted(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
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
        let text = format!("{CLUSTER}---\n\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: bad\nlb_policy: CLUSTER_PROVIDED\n");
        let err = ResourceSet::from_yaml(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "document 1: lb_policy: CLUSTER_PROVIDED is not supported"
        );
    }
}
