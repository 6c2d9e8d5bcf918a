//! Decoding Envoy resources from the two shapes they arrive in: proto3-JSON/YAML (the
//! authoring format of Envoy's docs and bootstraps) and protobuf bytes (xDS).
//!
//! Both go through a `prost-reflect` [`DynamicMessage`] built from Envoy's own descriptors
//! (shipped by `envoy-types`), so `"@type"`-tagged `Any` fields resolve, unknown JSON fields
//! are refused with their path, and [`crate::fields::check`] sees every set field before
//! the typed conversion runs. We chose `prost-reflect` over `xds-api`'s serde because it
//! works with the same prost/tonic generation as `envoy-types` and covers every Envoy type.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage};

use crate::error::{Result, ValidationError};
use crate::fields;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Envoy's descriptor pool, decoded on demand. It is only needed while config is decoded,
/// and keeping it costs the proxy several MB of resident memory for its whole life, so
/// [`release_idle_pool`] frees it once config has stopped changing. Decoding it again
/// takes a few tens of milliseconds, which is why it is not freed after every use.
pub fn pool() -> Arc<DescriptorPool> {
    let mut cached = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if let Some((pool, last_used)) = cached.as_mut() {
        *last_used = now;
        return pool.clone();
    }
    let pool = Arc::new(
        DescriptorPool::decode(DESCRIPTORS).expect("envoy-types ships a valid descriptor set"),
    );
    *cached = Some((pool.clone(), now));
    pool
}

/// Frees the descriptor pool when it has not been used for `max_idle` (call it
/// periodically from a long-running process).
pub fn release_idle_pool(max_idle: Duration) {
    let mut cached = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if cached
        .as_ref()
        .is_some_and(|(_, last_used)| last_used.elapsed() >= max_idle)
    {
        *cached = None;
    }
}

static POOL: Mutex<Option<(Arc<DescriptorPool>, Instant)>> = Mutex::new(None);

/// Descriptor of a message by full name (`envoy.config.cluster.v3.Cluster`).
pub fn message_descriptor(full_name: &str) -> Result<MessageDescriptor> {
    pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| ValidationError::new("", format!("unknown message type {full_name}")))
}

/// Parses YAML (or JSON, which YAML includes) in Envoy's proto3-JSON shape into `T`,
/// rejecting unknown and unsupported fields with their paths.
pub fn from_yaml<T: prost::Message + Default>(text: &str, full_name: &str) -> Result<T> {
    let value: serde_json::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ValidationError::new("", format!("invalid YAML/JSON: {e}")))?;
    from_json_value(value, full_name)
}

/// Converts a JSON value in proto3-JSON shape into `T` (see [`from_yaml`]).
pub fn from_json_value<T: prost::Message + Default>(
    value: serde_json::Value,
    full_name: &str,
) -> Result<T> {
    let dynamic = dynamic_from_json(value, full_name)?;
    fields::check(&dynamic)?;
    dynamic
        .transcode_to::<T>()
        .map_err(|e| ValidationError::new("", format!("cannot convert {full_name}: {e}")))
}

/// Parses a JSON value into a dynamic message of `full_name`, naming the JSON path of the
/// first offending value.
pub fn dynamic_from_json(value: serde_json::Value, full_name: &str) -> Result<DynamicMessage> {
    let descriptor = message_descriptor(full_name)?;
    if let Some(err) = unknown_type(&value, "", descriptor.parent_pool()) {
        return Err(err);
    }
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize(descriptor, deserializer).map_err(|e| {
        let path = track.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ValidationError::new(path, e.to_string())
    })
}

/// The first `"@type"` in `value` that names a message outside the pool — an extension
/// Sluice does not implement — as an error naming the extension, where the JSON decoder
/// would only say the message was not found. An `Any` under a named object (a filter, a
/// logger, a transport socket) is reported at that object, with its name.
fn unknown_type(
    value: &serde_json::Value,
    path: &str,
    pool: &DescriptorPool,
) -> Option<ValidationError> {
    match value {
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| unknown_type(item, &format!("{path}[{i}]"), pool)),
        serde_json::Value::Object(fields) => {
            let missing = |v: &serde_json::Value| {
                let url = v.get("@type")?.as_str()?;
                let message = crate::type_urls::message_name(url);
                pool.get_message_by_name(message)
                    .is_none()
                    .then(|| message.to_string())
            };
            if let Some(message) = missing(value) {
                return Some(ValidationError::new(
                    path,
                    format!("{message} is not supported by sluice"),
                ));
            }
            let name = fields.get("name").and_then(|n| n.as_str());
            fields
                .iter()
                .find_map(|(key, child)| match (name, missing(child)) {
                    (Some(name), Some(message)) => {
                        Some(crate::http_filter::unsupported_type(path, name, &message))
                    }
                    _ => unknown_type(child, &fields::join(path, key), pool),
                })
        }
        _ => None,
    }
}

/// Decodes protobuf bytes of `full_name` into `T` after the unsupported-field check.
pub fn from_bytes<T: prost::Message + Default>(bytes: &[u8], full_name: &str) -> Result<T> {
    let descriptor = message_descriptor(full_name)?;
    let dynamic = DynamicMessage::decode(descriptor, bytes)
        .map_err(|e| ValidationError::new("", format!("cannot decode {full_name}: {e}")))?;
    fields::check(&dynamic)?;
    T::decode(bytes)
        .map_err(|e| ValidationError::new("", format!("cannot decode {full_name}: {e}")))
}

/// Renders a typed message as proto3-JSON (for `/config_dump` and CLI output).
pub fn to_json<T: prost::Message>(message: &T, full_name: &str) -> Result<serde_json::Value> {
    bytes_to_json(&message.encode_to_vec(), full_name)
}

/// Renders encoded bytes of message `full_name` as proto3-JSON.
pub fn bytes_to_json(bytes: &[u8], full_name: &str) -> Result<serde_json::Value> {
    let descriptor = message_descriptor(full_name)?;
    let dynamic = DynamicMessage::decode(descriptor, bytes)
        .map_err(|e| ValidationError::new("", format!("cannot decode {full_name}: {e}")))?;
    dynamic_to_json(&dynamic)
}

/// Renders a dynamic message as proto3-JSON.
pub fn dynamic_to_json(dynamic: &DynamicMessage) -> Result<serde_json::Value> {
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| {
            ValidationError::new(
                "",
                format!("cannot render {}: {e}", dynamic.descriptor().full_name()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn unknown_json_field_is_named() {
        let err = from_yaml::<Cluster>(
            "name: a\nload_assignment: {cluster_name: a, endpointz: []}",
            "envoy.config.cluster.v3.Cluster",
        )
        .unwrap_err();
        assert!(err.path.contains("load_assignment"), "{err}");
        assert!(err.message.contains("endpointz"), "{err}");
    }

    #[test]
    fn an_extension_outside_the_pool_is_named_with_its_owner() {
        let err = from_yaml::<Cluster>(
            "name: a\ntransport_socket: {name: envoy.transport_sockets.alts, typed_config: {'@type': type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts}}",
            "envoy.config.cluster.v3.Cluster",
        )
        .unwrap_err();
        assert_eq!(err.path, "transport_socket");
        assert_eq!(
            err.message,
            "envoy.transport_sockets.alts (envoy.extensions.transport_sockets.alts.v3.Alts) is not supported by sluice"
        );
        let err = from_yaml::<Cluster>(
            "name: a\nmetadata: {typed_filter_metadata: {x: {'@type': type.googleapis.com/no.such.v1.Thing}}}",
            "envoy.config.cluster.v3.Cluster",
        )
        .unwrap_err();
        assert_eq!(err.path, "metadata.typed_filter_metadata.x");
        assert_eq!(err.message, "no.such.v1.Thing is not supported by sluice");
    }

    #[test]
    fn yaml_round_trips_through_json() {
        let cluster: Cluster = from_yaml(
            "name: web\nconnect_timeout: 0.25s\ntype: STATIC",
            "envoy.config.cluster.v3.Cluster",
        )
        .unwrap();
        assert_eq!(cluster.name, "web");
        let json = to_json(&cluster, "envoy.config.cluster.v3.Cluster").unwrap();
        assert_eq!(json["connect_timeout"], "0.250s");
    }
}
