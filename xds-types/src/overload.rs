//! The bootstrap's `layered_runtime` and `overload_manager`, as far as sluice honours them:
//! the static runtime layers (flattened into one key → value map, later layers winning),
//! and the global cap on downstream connections, which Istio and Envoy Gateway set (through
//! the `global_downstream_max_connections` monitor or the older runtime key).

use std::collections::BTreeMap;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::bootstrap::v3 as bootstrap;
use crate::pb::envoy::config::overload::v3 as overload;
use crate::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use crate::pb::google::protobuf::{value::Kind, Struct};
use crate::type_urls;
use crate::util::unpack_any;

/// The runtime key that caps downstream connections when no overload monitor does.
pub const GLOBAL_MAX_CONNECTIONS_KEY: &str = "overload.global_downstream_max_connections";

/// The runtime keys sluice reads; others are accepted and logged as without effect.
pub const HONOURED_RUNTIME_KEYS: &[&str] = &[GLOBAL_MAX_CONNECTIONS_KEY];

/// The static layers of `layered_runtime`, flattened as Envoy flattens them
/// (`{a: {b: 1}}` is key `a.b`); a later layer overrides an earlier one.
pub fn static_runtime(layered: Option<&bootstrap::LayeredRuntime>) -> BTreeMap<String, String> {
    use bootstrap::runtime_layer::LayerSpecifier;
    let mut values = BTreeMap::new();
    for layer in layered.into_iter().flat_map(|l| &l.layers) {
        if let Some(LayerSpecifier::StaticLayer(s)) = &layer.layer_specifier {
            flatten(s, "", &mut values);
        }
    }
    values
}

fn flatten(s: &Struct, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (key, value) in &s.fields {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match &value.kind {
            Some(Kind::StructValue(inner)) => flatten(inner, &key, out),
            Some(Kind::StringValue(v)) => {
                out.insert(key, v.clone());
            }
            Some(Kind::NumberValue(n)) => {
                out.insert(key, n.to_string());
            }
            Some(Kind::BoolValue(b)) => {
                out.insert(key, b.to_string());
            }
            _ => {}
        }
    }
}

/// The global cap on active downstream connections: the overload manager's
/// `envoy.resource_monitors.global_downstream_max_connections` monitor, else the runtime
/// key [`GLOBAL_MAX_CONNECTIONS_KEY`]; `None` is no cap.
pub fn max_downstream_connections(
    manager: Option<&overload::OverloadManager>,
    runtime: &BTreeMap<String, String>,
) -> Result<Option<u64>> {
    use overload::resource_monitor::ConfigType;
    if let Some(manager) = manager {
        // The field policy has refused every other monitor type already; of several
        // connection monitors the smallest cap binds.
        let mut cap: Option<u64> = None;
        for (i, monitor) in manager.resource_monitors.iter().enumerate() {
            let path = format!("overload_manager.resource_monitors[{i}].typed_config");
            let Some(ConfigType::TypedConfig(any)) = &monitor.config_type else {
                return Err(ValidationError::required(path));
            };
            let config: DownstreamConnectionsConfig =
                unpack_any(any, type_urls::DOWNSTREAM_CONNECTIONS_MONITOR, &path)?;
            if config.max_active_downstream_connections <= 0 {
                return Err(ValidationError::new(
                    format!("{path}.max_active_downstream_connections"),
                    "must be greater than 0",
                ));
            }
            let this = config.max_active_downstream_connections as u64;
            cap = Some(cap.map_or(this, |c| c.min(this)));
        }
        if cap.is_some() {
            return Ok(cap);
        }
    }
    match runtime.get(GLOBAL_MAX_CONNECTIONS_KEY) {
        None => Ok(None),
        Some(v) => v.parse::<f64>().ok().filter(|n| *n >= 0.0).map_or_else(
            || {
                Err(ValidationError::new(
                    "layered_runtime",
                    format!(
                        "{GLOBAL_MAX_CONNECTIONS_KEY} must be a non-negative number, not {v:?}"
                    ),
                ))
            },
            |n| Ok(Some(n as u64)),
        ),
    }
}

#[cfg(test)]
mod tests {
    fn bootstrap(yaml: &str) -> crate::Bootstrap {
        crate::Bootstrap::from_yaml(yaml).unwrap()
    }

    #[test]
    fn static_layers_flatten_and_the_monitor_wins_over_the_runtime_key() {
        let b = bootstrap(
            "layered_runtime: {layers: [\
               {name: a, static_layer: {overload: {global_downstream_max_connections: 10}, x.y: old}},\
               {name: b, static_layer: {x.y: new, flag: true}},\
               {name: admin, admin_layer: {}}]}",
        );
        assert_eq!(b.runtime["x.y"], "new");
        assert_eq!(b.runtime["flag"], "true");
        assert_eq!(b.max_downstream_connections, Some(10));
        let b = bootstrap(
            "layered_runtime: {layers: [{name: a, static_layer: {overload.global_downstream_max_connections: 10}}]}\n\
             overload_manager: {resource_monitors: [{name: envoy.resource_monitors.global_downstream_max_connections, typed_config: \
               {'@type': type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig, \
                max_active_downstream_connections: 3}}]}",
        );
        assert_eq!(b.max_downstream_connections, Some(3));
        assert_eq!(bootstrap("{}").max_downstream_connections, None);
    }

    #[test]
    fn a_monitor_without_a_maximum_is_refused() {
        let err = crate::Bootstrap::from_yaml(
            "overload_manager: {resource_monitors: [{name: m, typed_config: \
               {'@type': type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig}}]}",
        )
        .unwrap_err();
        assert!(
            err.path.ends_with("max_active_downstream_connections"),
            "{err}"
        );
    }
}
