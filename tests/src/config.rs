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

/// Control-plane resource documents: cluster `web` (one endpoint) and a listener on
/// `listener` routing to it, stamping `x-config: <stamp>` on responses.
pub fn xds_resources(listener: SocketAddr, upstream: SocketAddr, stamp: &str) -> String {
    let mut listener_doc = http_listener(
        "ingress",
        listener,
        json!({ "name": "routes", "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "response_headers_to_add": [ { "header": { "key": "x-config", "value": stamp } } ],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "web" } } ] } ] }),
        json!({}),
    );
    merge(
        &mut listener_doc,
        json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener" }),
    );
    let cluster_doc = json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "web", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "web", "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address(upstream) } } ] } ] }
    });
    format!("{cluster_doc}\n---\n{listener_doc}\n")
}

/// Control-plane documents with everything named and delivered separately: EDS cluster
/// `web` (with `connect_timeout`), its endpoints (`upstream`), route configuration `routes`
/// stamping `x-config: <stamp>`, and a listener on `listener` taking those routes over RDS.
pub fn eds_rds_resources(
    listener: SocketAddr,
    upstream: SocketAddr,
    stamp: &str,
    connect_timeout: &str,
) -> String {
    let mut listener_doc = http_listener("ingress", listener, json!(null), json!({}));
    let hcm = &mut listener_doc["filter_chains"][0]["filters"][0]["typed_config"];
    hcm.as_object_mut().unwrap().remove("route_config");
    merge(
        hcm,
        json!({ "rds": { "route_config_name": "routes", "config_source": { "ads": {}, "resource_api_version": "V3" } } }),
    );
    merge(
        &mut listener_doc,
        json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener" }),
    );
    let routes = json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "routes",
        "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "response_headers_to_add": [ { "header": { "key": "x-config", "value": stamp } } ],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "web" } } ] } ]
    });
    let cluster = json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "web", "type": "EDS", "connect_timeout": connect_timeout,
        "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } }
    });
    let endpoints = endpoints_doc("web", upstream);
    format!("{cluster}\n---\n{endpoints}\n---\n{listener_doc}\n---\n{routes}\n")
}

/// A `ClusterLoadAssignment` document: `name` with one endpoint.
pub fn endpoints_doc(name: &str, endpoint: SocketAddr) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": name,
        "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address(endpoint) } } ] } ]
    })
}

/// A bootstrap that takes listeners and clusters over ADS from `xds` (`api_type` is
/// `GRPC` or `DELTA_GRPC`); Envoy and sluice read the same document.
pub fn ads_bootstrap(admin: SocketAddr, xds: SocketAddr, api_type: &str, node_id: &str) -> String {
    let mut xds_cluster = cluster("xds", &[(xds, 1)], json!({}));
    merge(&mut xds_cluster, http2_options());
    json!({
        "node": { "id": node_id, "cluster": "default" },
        "admin": { "address": address(admin) },
        "dynamic_resources": {
            "ads_config": { "api_type": api_type, "transport_api_version": "V3",
                            "grpc_services": [ { "envoy_grpc": { "cluster_name": "xds" } } ] },
            "lds_config": { "ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "60s" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [ xds_cluster ] }
    })
    .to_string()
}

/// A `ConfigSource` for a stream of its own (`api_config_source`) to the static cluster
/// `cluster`; `api_type` is `GRPC` or `DELTA_GRPC`. The node goes on the first request of
/// each stream only, as Istio and go-control-plane set it.
pub fn api_config_source(api_type: &str, cluster: &str) -> Value {
    json!({ "api_config_source": { "api_type": api_type, "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [ { "envoy_grpc": { "cluster_name": cluster } } ] },
            "resource_api_version": "V3" })
}

/// A bootstrap without ADS: listeners and clusters each over a stream of its own (LDS and
/// CDS) to `xds`. Envoy and sluice read the same document.
pub fn per_type_bootstrap(
    admin: SocketAddr,
    xds: SocketAddr,
    api_type: &str,
    node_id: &str,
) -> String {
    let mut xds_cluster = cluster("xds", &[(xds, 1)], json!({}));
    merge(&mut xds_cluster, http2_options());
    let mut lds = api_config_source(api_type, "xds");
    merge(&mut lds, json!({ "initial_fetch_timeout": "60s" }));
    json!({
        "node": { "id": node_id, "cluster": "default" },
        "admin": { "address": address(admin) },
        "dynamic_resources": {
            "lds_config": lds,
            "cds_config": api_config_source(api_type, "xds")
        },
        "static_resources": { "clusters": [ xds_cluster ] }
    })
    .to_string()
}

/// A bootstrap with one listener running `routes` (plus `hcm_extra` HCM fields) and one
/// cluster `a` over `upstream`: the setup most suites share.
pub fn single_cluster(
    admin: SocketAddr,
    listener: SocketAddr,
    upstream: SocketAddr,
    routes: Value,
    hcm_extra: Value,
) -> String {
    bootstrap(
        admin,
        vec![http_listener("ingress", listener, routes, hcm_extra)],
        vec![cluster("a", &[(upstream, 1)], json!({}))],
    )
}

/// The HTTP connection manager network filter with `route_config` (plus `extra` fields).
pub fn hcm_filter(stat_prefix: &str, route_config: Value, extra: Value) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": route_config,
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
        }]
    });
    merge(&mut hcm, extra);
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm })
}

/// A route table answering every request itself with 200 and `body`.
pub fn answer(body: &str) -> Value {
    json!({ "name": format!("answer-{body}"), "virtual_hosts": [ { "name": "all", "domains": ["*"],
        "routes": [ { "match": { "prefix": "/" },
            "direct_response": { "status": 200, "body": { "inline_string": body } } } ] } ] })
}

/// A route table sending every request to `cluster`.
pub fn to_cluster(cluster: &str) -> Value {
    json!({ "name": format!("to-{cluster}"), "virtual_hosts": [ { "name": "all", "domains": ["*"],
        "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": cluster } } ] } ] })
}

/// The TCP proxy network filter to `cluster` (plus `extra` fields).
pub fn tcp_proxy(stat_prefix: &str, cluster: &str, extra: Value) -> Value {
    let mut t = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": stat_prefix, "cluster": cluster
    });
    merge(&mut t, extra);
    json!({ "name": "envoy.filters.network.tcp_proxy", "typed_config": t })
}

/// A `DownstreamTlsContext` transport socket offering `certificates` (inline PEM
/// `(chain, key)` pairs); `common` is merged into its `common_tls_context` and `context`
/// into the context itself.
pub fn tls_socket(certificates: &[(&str, &str)], common: Value, context: Value) -> Value {
    let certificates: Vec<Value> = certificates
        .iter()
        .map(|(chain, key)| {
            json!({ "certificate_chain": { "inline_string": chain },
            "private_key": { "inline_string": key } })
        })
        .collect();
    let mut common_tls = json!({ "tls_certificates": certificates });
    merge(&mut common_tls, common);
    let mut tls = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common_tls
    });
    merge(&mut tls, context);
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": tls })
}

/// The TLS inspector listener filter.
pub fn tls_inspector() -> Value {
    json!({ "name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } })
}
