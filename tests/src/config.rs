//! Builders for Envoy bootstrap documents (as JSON, which YAML readers accept), so each
//! suite states only what it tests.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// `{socket_address: {address, port_value}}`.
pub fn address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// A listener running the HTTP connection manager with `route_config`, plus any extra
/// HCM fields in `hcm_extra` (an object merged into the HCM).
pub fn http_listener(name: &str, addr: SocketAddr, route_config: Value, hcm_extra: Value) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": route_config,
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
        }]
    });
    merge(&mut hcm, hcm_extra);
    json!({
        "name": name,
        "address": address(addr),
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }] }]
    })
}

/// A cluster over `endpoints` (`(address, weight)`), with `extra` fields merged in.
pub fn cluster(name: &str, endpoints: &[(SocketAddr, u32)], extra: Value) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(a, w)| json!({ "endpoint": { "address": address(*a) }, "load_balancing_weight": w }))
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] }
    });
    merge(&mut c, extra);
    c
}

/// Marks a cluster as speaking HTTP/2 to its endpoints.
pub fn http2_options() -> Value {
    json!({ "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    }})
}

/// A whole bootstrap.
pub fn bootstrap(admin: SocketAddr, listeners: Vec<Value>, clusters: Vec<Value>) -> String {
    json!({
        "node": { "id": "test-node", "cluster": "test" },
        "admin": { "address": address(admin) },
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
    .to_string()
}

/// Merges the fields of object `extra` into object `base` (shallow).
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}
