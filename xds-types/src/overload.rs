//! The bootstrap's `layered_runtime` and `overload_manager`, as far as sluice honours them:
//! the static runtime layers (flattened into one key → value map, later layers winning),
//! the global cap on downstream connections, which Istio and Envoy Gateway set (through
//! the `global_downstream_max_connections` monitor or the older runtime key), and the
//! fixed-heap monitor with the actions and load shed points its pressure triggers, as in
//! Envoy's overload manager examples.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::error::{Result, ValidationError};
use crate::pb::envoy::config::bootstrap::v3 as bootstrap;
use crate::pb::envoy::config::overload::v3 as overload;
use crate::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use crate::pb::envoy::extensions::resource_monitors::fixed_heap::v3::FixedHeapConfig;
use crate::pb::google::protobuf::{value::Kind, Struct};
use crate::type_urls;
use crate::util::{duration, unpack_any};

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

/// The well-known monitor that caps downstream connections.
pub const CONNECTIONS_MONITOR: &str = "envoy.resource_monitors.global_downstream_max_connections";

/// `refresh_interval`'s default, as Envoy's.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// What the overload manager runs besides the connection cap: heap monitors sampled every
/// `refresh_interval` and the actions their pressure drives.
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadConfig {
    pub refresh_interval: Duration,
    /// `envoy.resource_monitors.fixed_heap` monitors (pressure: heap in use / the maximum).
    pub heap_monitors: Vec<HeapMonitor>,
    /// Actions and load shed points, each with its triggers on those monitors.
    pub actions: Vec<OverloadAction>,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            heap_monitors: Vec::new(),
            actions: Vec::new(),
        }
    }
}

/// A fixed-heap resource monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapMonitor {
    /// The monitor's `name`, which triggers refer to and its stats carry.
    pub name: String,
    pub max_heap_size_bytes: u64,
}

/// What an action does while its state is above 0 (with probability equal to the state,
/// as Envoy, where the effect is per request or per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// New requests get a 503 `envoy overloaded` before any filter runs.
    StopAcceptingRequests,
    /// HTTP/1 responses close their connection; HTTP/2 connections drain with GOAWAY.
    DisableHttpKeepalive,
    /// The listeners stop accepting (saturated state only); the backlog holds new peers.
    StopAcceptingConnections,
    /// New connections are closed as soon as they are accepted.
    RejectIncomingConnections,
    /// Free heap is returned to the system at every refresh (saturated state only).
    ShrinkHeap,
}

/// An overload action or load shed point and its triggers.
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadAction {
    /// Envoy's name (`envoy.overload_actions.…` or `envoy.load_shed_points.…`).
    pub name: String,
    pub kind: ActionKind,
    /// A load shed point (no `overload.<name>.*` gauges, as Envoy).
    pub load_shed_point: bool,
    /// Index into [`OverloadConfig::heap_monitors`], and how pressure maps to state.
    pub triggers: Vec<(usize, Trigger)>,
}

/// How a monitor's pressure (0 to 1) becomes an action's state (0 to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// 1 at or above the value, else 0.
    Threshold(f64),
    /// 0 below `scaling`, 1 at or above `saturation`, linear between.
    Scaled { scaling: f64, saturation: f64 },
}

impl Trigger {
    /// The state this trigger gives at `pressure`.
    pub fn state(&self, pressure: f64) -> f64 {
        match *self {
            Self::Threshold(value) => f64::from(u8::from(pressure >= value)),
            Self::Scaled {
                scaling,
                saturation,
            } => {
                if pressure >= saturation {
                    1.0
                } else if pressure <= scaling {
                    0.0
                } else {
                    (pressure - scaling) / (saturation - scaling)
                }
            }
        }
    }
}

/// The actions and load shed points sluice implements, by Envoy's name.
const ACTIONS: &[(&str, ActionKind)] = &[
    (
        "envoy.overload_actions.stop_accepting_requests",
        ActionKind::StopAcceptingRequests,
    ),
    (
        "envoy.overload_actions.disable_http_keepalive",
        ActionKind::DisableHttpKeepalive,
    ),
    (
        "envoy.overload_actions.stop_accepting_connections",
        ActionKind::StopAcceptingConnections,
    ),
    (
        "envoy.overload_actions.reject_incoming_connections",
        ActionKind::RejectIncomingConnections,
    ),
    ("envoy.overload_actions.shrink_heap", ActionKind::ShrinkHeap),
];
const LOAD_SHED_POINTS: &[(&str, ActionKind)] = &[
    (
        "envoy.load_shed_points.tcp_listener_accept",
        ActionKind::RejectIncomingConnections,
    ),
    (
        "envoy.load_shed_points.http_connection_manager_decode_headers",
        ActionKind::StopAcceptingRequests,
    ),
];

/// The overload manager as sluice runs it: the cap on active downstream connections (the
/// `global_downstream_max_connections` monitor, else the runtime key
/// [`GLOBAL_MAX_CONNECTIONS_KEY`]; `None` is no cap) and the heap-driven actions.
pub fn overload(
    manager: Option<&overload::OverloadManager>,
    runtime: &BTreeMap<String, String>,
) -> Result<(Option<u64>, OverloadConfig)> {
    let mut config = OverloadConfig::default();
    let mut cap: Option<u64> = None;
    let mut connection_monitors = HashSet::new();
    if let Some(manager) = manager {
        if let Some(interval) = &manager.refresh_interval {
            let interval = duration(interval, "overload_manager.refresh_interval")?;
            if interval.is_zero() {
                return Err(ValidationError::new(
                    "overload_manager.refresh_interval",
                    "must be greater than 0",
                ));
            }
            config.refresh_interval = interval;
        }
        let mut names = HashSet::new();
        for (i, monitor) in manager.resource_monitors.iter().enumerate() {
            let path = format!("overload_manager.resource_monitors[{i}]");
            if monitor.name.is_empty() {
                return Err(ValidationError::required(format!("{path}.name")));
            }
            if !names.insert(monitor.name.as_str()) {
                return Err(ValidationError::new(
                    format!("{path}.name"),
                    format!("duplicate resource monitor {:?}", monitor.name),
                ));
            }
            match monitor_config(monitor, &path)? {
                Monitor::Connections(max) => {
                    // Of several connection monitors the smallest cap binds.
                    cap = Some(cap.map_or(max, |c| c.min(max)));
                    connection_monitors.insert(monitor.name.as_str());
                }
                Monitor::Heap(max_heap_size_bytes) => config.heap_monitors.push(HeapMonitor {
                    name: monitor.name.clone(),
                    max_heap_size_bytes,
                }),
            }
        }
        let mut kinds = HashSet::new();
        let actions = manager.actions.iter().enumerate().map(|(i, a)| {
            let path = format!("overload_manager.actions[{i}]");
            (path, &a.name, &a.triggers, false)
        });
        let points = manager.loadshed_points.iter().enumerate().map(|(i, p)| {
            let path = format!("overload_manager.loadshed_points[{i}]");
            (path, &p.name, &p.triggers, true)
        });
        for (path, name, triggers, load_shed_point) in actions.chain(points) {
            let known = if load_shed_point {
                LOAD_SHED_POINTS
            } else {
                ACTIONS
            };
            let Some(&(_, kind)) = known.iter().find(|(n, _)| n == name) else {
                return Err(ValidationError::new(
                    format!("{path}.name"),
                    format!(
                        "{name:?} is not supported by sluice (it implements {})",
                        known.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            if !kinds.insert(name.as_str()) {
                return Err(ValidationError::new(
                    format!("{path}.name"),
                    format!("duplicate {name:?}"),
                ));
            }
            let triggers = action_triggers(triggers, &config.heap_monitors, &connection_monitors)
                .map_err(|e| e.within(&path))?;
            config.actions.push(OverloadAction {
                name: name.clone(),
                kind,
                load_shed_point,
                triggers,
            });
        }
    }
    if cap.is_some() {
        return Ok((cap, config));
    }
    let cap = match runtime.get(GLOBAL_MAX_CONNECTIONS_KEY) {
        None => None,
        Some(v) => match v.parse::<f64>().ok().filter(|n| *n >= 0.0) {
            Some(n) => Some(n as u64),
            None => {
                return Err(ValidationError::new(
                    "layered_runtime",
                    format!(
                        "{GLOBAL_MAX_CONNECTIONS_KEY} must be a non-negative number, not {v:?}"
                    ),
                ))
            }
        },
    };
    Ok((cap, config))
}

enum Monitor {
    Connections(u64),
    Heap(u64),
}

fn monitor_config(monitor: &overload::ResourceMonitor, path: &str) -> Result<Monitor> {
    use overload::resource_monitor::ConfigType;
    let path = format!("{path}.typed_config");
    let Some(ConfigType::TypedConfig(any)) = &monitor.config_type else {
        return Err(ValidationError::required(path));
    };
    if any.type_url == type_urls::FIXED_HEAP_MONITOR {
        let config: FixedHeapConfig = unpack_any(any, type_urls::FIXED_HEAP_MONITOR, &path)?;
        if config.max_heap_size_bytes == 0 {
            return Err(ValidationError::new(
                format!("{path}.max_heap_size_bytes"),
                "must be greater than 0",
            ));
        }
        return Ok(Monitor::Heap(config.max_heap_size_bytes));
    }
    let config: DownstreamConnectionsConfig =
        unpack_any(any, type_urls::DOWNSTREAM_CONNECTIONS_MONITOR, &path)?;
    if config.max_active_downstream_connections <= 0 {
        return Err(ValidationError::new(
            format!("{path}.max_active_downstream_connections"),
            "must be greater than 0",
        ));
    }
    Ok(Monitor::Connections(
        config.max_active_downstream_connections as u64,
    ))
}

fn action_triggers(
    triggers: &[overload::Trigger],
    heap_monitors: &[HeapMonitor],
    connection_monitors: &HashSet<&str>,
) -> Result<Vec<(usize, Trigger)>> {
    use overload::trigger::TriggerOneof;
    if triggers.is_empty() {
        return Err(ValidationError::required("triggers"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(triggers.len());
    for (i, trigger) in triggers.iter().enumerate() {
        let path = format!("triggers[{i}]");
        let name = trigger.name.as_str();
        let Some(monitor) = heap_monitors.iter().position(|m| m.name == name) else {
            let why = if connection_monitors.contains(name) {
                format!("{name:?} caps connections at accept and drives no action")
            } else {
                format!("{name:?} names no resource monitor")
            };
            return Err(ValidationError::new(format!("{path}.name"), why));
        };
        if !seen.insert(name) {
            return Err(ValidationError::new(
                format!("{path}.name"),
                format!("duplicate trigger on {name:?}"),
            ));
        }
        let in_unit = |v: f64, field: &str| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(ValidationError::new(
                    format!("{path}.{field}"),
                    "must be between 0 and 1",
                ))
            }
        };
        let trigger = match &trigger.trigger_oneof {
            None => {
                return Err(ValidationError::new(
                    &path,
                    "threshold or scaled is required",
                ))
            }
            Some(TriggerOneof::Threshold(t)) => {
                Trigger::Threshold(in_unit(t.value, "threshold.value")?)
            }
            Some(TriggerOneof::Scaled(s)) => {
                let scaling = in_unit(s.scaling_threshold, "scaled.scaling_threshold")?;
                let saturation = in_unit(s.saturation_threshold, "scaled.saturation_threshold")?;
                if scaling >= saturation {
                    return Err(ValidationError::new(
                        format!("{path}.scaled"),
                        "scaling_threshold must be less than saturation_threshold",
                    ));
                }
                Trigger::Scaled {
                    scaling,
                    saturation,
                }
            }
        };
        out.push((monitor, trigger));
    }
    Ok(out)
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

    const HEAP: &str = "{name: heap, typed_config: {'@type': type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig, max_heap_size_bytes: 1000}}";

    fn refusal(manager: &str) -> crate::ValidationError {
        crate::Bootstrap::from_yaml(&format!("overload_manager: {manager}")).unwrap_err()
    }

    #[test]
    fn heap_actions_parse_with_their_triggers() {
        use super::{ActionKind, Trigger};
        let b = bootstrap(&format!(
            "overload_manager: {{refresh_interval: 0.1s, resource_monitors: [{HEAP}], actions: [\
               {{name: envoy.overload_actions.stop_accepting_requests, triggers: [{{name: heap, threshold: {{value: 0.9}}}}]}}], \
             loadshed_points: [{{name: envoy.load_shed_points.tcp_listener_accept, \
               triggers: [{{name: heap, scaled: {{scaling_threshold: 0.5, saturation_threshold: 0.7}}}}]}}]}}"
        ));
        let o = &b.overload;
        assert_eq!(o.refresh_interval, std::time::Duration::from_millis(100));
        assert_eq!(o.heap_monitors[0].max_heap_size_bytes, 1000);
        assert_eq!(o.actions[0].kind, ActionKind::StopAcceptingRequests);
        assert!(!o.actions[0].load_shed_point);
        assert_eq!(o.actions[1].kind, ActionKind::RejectIncomingConnections);
        assert!(o.actions[1].load_shed_point);
        assert_eq!(o.actions[0].triggers, vec![(0, Trigger::Threshold(0.9))]);
        assert_eq!(b.max_downstream_connections, None);
        assert_eq!(
            bootstrap("{}").overload.refresh_interval,
            super::DEFAULT_REFRESH_INTERVAL
        );
    }

    #[test]
    fn trigger_states_follow_envoys_formulas() {
        use super::Trigger;
        assert_eq!(Trigger::Threshold(0.9).state(0.89), 0.0);
        assert_eq!(Trigger::Threshold(0.9).state(0.9), 1.0);
        let scaled = Trigger::Scaled {
            scaling: 0.5,
            saturation: 0.7,
        };
        assert_eq!(scaled.state(0.4), 0.0);
        assert!((scaled.state(0.6) - 0.5).abs() < 1e-9);
        assert_eq!(scaled.state(0.7), 1.0);
        assert_eq!(scaled.state(1.5), 1.0);
    }

    #[test]
    fn bad_actions_are_refused_by_path() {
        let action = |name: &str, trigger: &str| {
            refusal(&format!(
                "{{resource_monitors: [{HEAP}], actions: [{{name: {name}, triggers: [{trigger}]}}]}}"
            ))
        };
        let ok_trigger = "{name: heap, threshold: {value: 0.9}}";
        let err = action("envoy.overload_actions.reduce_timeouts", ok_trigger);
        assert_eq!(err.path, "overload_manager.actions[0].name", "{err}");
        assert!(err.message.contains("not supported by sluice"), "{err}");
        let err = action(
            "envoy.overload_actions.shrink_heap",
            "{name: elsewhere, threshold: {value: 0.9}}",
        );
        assert_eq!(
            err.path, "overload_manager.actions[0].triggers[0].name",
            "{err}"
        );
        let err = action(
            "envoy.overload_actions.shrink_heap",
            "{name: heap, scaled: {scaling_threshold: 0.9, saturation_threshold: 0.5}}",
        );
        assert_eq!(
            err.path, "overload_manager.actions[0].triggers[0].scaled",
            "{err}"
        );
        let err = action(
            "envoy.overload_actions.shrink_heap",
            "{name: heap, threshold: {value: 1.5}}",
        );
        assert_eq!(
            err.path, "overload_manager.actions[0].triggers[0].threshold.value",
            "{err}"
        );
        let err = refusal(&format!("{{resource_monitors: [{HEAP}, {HEAP}]}}"));
        assert_eq!(
            err.path, "overload_manager.resource_monitors[1].name",
            "{err}"
        );
        let err = refusal(
            "{resource_monitors: [{name: heap, typed_config: {'@type': type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig}}]}",
        );
        assert!(err.path.ends_with("max_heap_size_bytes"), "{err}");
        let err = refusal(&format!(
            "{{resource_monitors: [{HEAP}], loadshed_points: [{{name: envoy.load_shed_points.http1_server_abort_dispatch, triggers: [{ok_trigger}]}}]}}"
        ));
        assert_eq!(
            err.path, "overload_manager.loadshed_points[0].name",
            "{err}"
        );
    }
}
