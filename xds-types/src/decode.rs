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
use crate::fields::{self, Problems};

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
    let value = parse_yaml(text)?;
    from_json_value(value, full_name)
}

/// YAML (or JSON, which YAML includes) as a JSON value.
fn parse_yaml(text: &str) -> Result<serde_json::Value> {
    serde_yaml_ng::from_str(text)
        .map_err(|e| ValidationError::new("", format!("invalid YAML/JSON: {e}")))
}

/// Parses YAML or JSON into a dynamic message of `full_name` without the field policy,
/// for a container (a file's `DiscoveryResponse`) whose parts are checked one by one.
pub fn dynamic_from_yaml(text: &str, full_name: &str) -> Result<DynamicMessage> {
    let value = parse_yaml(text)?;
    dynamic_from_json(value, full_name)
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
pub fn dynamic_from_json(mut value: serde_json::Value, full_name: &str) -> Result<DynamicMessage> {
    let descriptor = message_descriptor(full_name)?;
    let mut found = Problems::default();
    set_aside_unknown_types(&mut value, "", descriptor.parent_pool(), &mut found);
    if let Some(first) = found.errors.into_iter().next() {
        return Err(first);
    }
    decode_json(value, descriptor)
}

/// What the field policy finds in a config: every problem, and every setting that does
/// nothing here.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Extensions outside the pool, then (when the JSON decodes) every unsupported field,
    /// each once at its outermost path. Empty when the config passes the policy; the typed
    /// conversion may still refuse its values, so callers run that next.
    pub unsupported: Vec<ValidationError>,
    /// Set fields accepted without effect.
    pub inert: Vec<fields::InertField>,
}

/// Inspects a YAML or JSON config of type `full_name` whole, not stopping at the first
/// problem (see [`Inspection`]).
pub fn inspect_yaml(text: &str, full_name: &str) -> Inspection {
    let failed = |e| Inspection {
        unsupported: vec![e],
        inert: Vec::new(),
    };
    let mut value = match parse_yaml(text) {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let descriptor = match message_descriptor(full_name) {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let mut found = Problems::default();
    set_aside_unknown_types(&mut value, "", descriptor.parent_pool(), &mut found);
    match decode_json(value, descriptor) {
        Ok(dynamic) => {
            let walked = fields::inspect(&dynamic);
            walked.errors.into_iter().for_each(|e| found.push(e));
            found.inert = walked.inert;
        }
        Err(e) => found.push(e),
    }
    Inspection {
        unsupported: found.errors,
        inert: found.inert,
    }
}

fn decode_json(value: serde_json::Value, descriptor: MessageDescriptor) -> Result<DynamicMessage> {
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize(descriptor, deserializer).map_err(|e| {
        let path = track.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ValidationError::new(path, e.to_string())
    })
}

/// The `Any` that takes the place of one whose type is outside the pool, so the rest of the
/// config still decodes.
fn placeholder_any() -> serde_json::Value {
    serde_json::json!({ "@type": "type.googleapis.com/google.protobuf.Empty", "value": {} })
}

/// Records every `"@type"` in `value` that names a message outside the pool — an
/// extension Sluice does not implement — as an error naming the extension (where the JSON
/// decoder would only say the message was not found), and replaces it with a placeholder
/// so the rest of the config can still be checked. An `Any` under a named object (a
/// filter, a logger, a transport socket) is reported at that object, with its name. An
/// optional HTTP filter's (`is_optional`) is no error: Envoy skips such a filter, so its
/// config becomes a `Struct` holding the original type URL and the filter list skips it.
fn set_aside_unknown_types(
    value: &mut serde_json::Value,
    path: &str,
    pool: &DescriptorPool,
    found: &mut Problems,
) {
    let missing = |v: &serde_json::Value| {
        let url = v.get("@type")?.as_str()?;
        let message = crate::type_urls::message_name(url);
        pool.get_message_by_name(message)
            .is_none()
            .then(|| (url.to_string(), message.to_string()))
    };
    match value {
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                set_aside_unknown_types(item, &format!("{path}[{i}]"), pool, found);
            }
        }
        serde_json::Value::Object(_) if missing(value).is_some() => {
            let (_, message) = missing(value).unwrap_or_default();
            found.push(ValidationError::new(
                path,
                format!("{message} is not supported by sluice"),
            ));
            *value = placeholder_any();
        }
        serde_json::Value::Object(fields) => {
            let name = fields
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned);
            let optional = fields.get("is_optional").and_then(|o| o.as_bool()) == Some(true);
            for (key, child) in fields.iter_mut() {
                match (&name, missing(child)) {
                    (Some(_), Some((url, _))) if optional && key == "typed_config" => {
                        *child = serde_json::json!({
                            "@type": "type.googleapis.com/google.protobuf.Struct",
                            "value": { "skipped_type": url },
                        });
                    }
                    (Some(name), Some((_, message))) => {
                        found.push(crate::http_filter::unsupported_type(path, name, &message));
                        *child = placeholder_any();
                    }
                    _ => set_aside_unknown_types(child, &fields::join(path, key), pool, found),
                }
            }
        }
        _ => {}
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
    fn every_problem_of_a_config_is_listed_once() {
        let problems = inspect_yaml(
            "name: a\n\
             transport_socket: {name: alts, typed_config: {'@type': type.googleapis.com/no.such.v1.Alts}}\n\
             lrs_server: {self: {}}\n\
             upstream_bind_config: {source_address: {address: 127.0.0.1, port_value: 0}, freebind: true}\n\
             load_assignment: {cluster_name: a, policy: {drop_overloads: [{category: x}]}}",
            "envoy.config.cluster.v3.Cluster",
        )
        .unsupported;
        // The extension first (the pre-pass), then the fields in field-number order.
        let paths: Vec<&str> = problems.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "transport_socket",
                "upstream_bind_config",
                "load_assignment.policy.drop_overloads",
                "lrs_server",
            ],
            "{problems:?}"
        );
        assert_eq!(
            problems[0].message,
            "alts (no.such.v1.Alts) is not supported by sluice"
        );
    }

    #[test]
    fn an_unsupported_parent_covers_the_unknown_extension_inside_it_and_inert_fields_are_named() {
        let found = inspect_yaml(
            "name: a\n\
             lrs_server: {self: {}}\n\
             typed_extension_protocol_options: {x: {'@type': type.googleapis.com/no.such.v1.Opts}}\n\
             connect_timeout: 1s\n\
             per_connection_buffer_limit_bytes: 32768",
            "envoy.config.cluster.v3.Cluster",
        );
        let paths: Vec<&str> = found.unsupported.iter().map(|e| e.path.as_str()).collect();
        assert!(
            !paths.is_empty() && paths.iter().all(|p| !p.contains("[")),
            "{paths:?}"
        );
        let inert: Vec<&str> = found.inert.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            inert,
            ["per_connection_buffer_limit_bytes"],
            "{:?}",
            found.inert
        );
        assert_eq!(
            found.inert[0].field,
            "envoy.config.cluster.v3.Cluster.per_connection_buffer_limit_bytes"
        );
    }

    #[test]
    fn an_optional_filter_outside_the_pool_is_skipped_not_refused() {
        let hcm = format!(
            "stat_prefix: x\nroute_config: {{name: r}}\nhttp_filters: [\
             {{name: wasm, is_optional: true, typed_config: {{'@type': type.googleapis.com/no.such.v1.Wasm}}}},\
             {{name: router, typed_config: {{'@type': {}}}}}]",
            crate::type_urls::ROUTER
        );
        let name =
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
        assert_eq!(inspect_yaml(&hcm, name).unsupported, []);
        let proto: crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
            from_yaml(&hcm, name).unwrap();
        let converted = crate::HttpConnectionManager::try_from(&proto).unwrap();
        assert_eq!(converted.skipped_filters, ["wasm"]);
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
