//! A real proxyless gRPC client (grpcio) takes its channel's config from `sluice-cp`: it
//! asks for the listener named by its `xds:///greeter` target, then the route
//! configuration, cluster and endpoints, each by name; an endpoints change moves its
//! calls to another server without a restart.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::config::endpoints_doc;
use sluice_tests::grpc::{health_server, proxyless_client};
use sluice_tests::process::ControlPlane;
use sluice_tests::{eventually, free_addr};

fn documents(endpoint: std::net::SocketAddr) -> String {
    let listener = json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "greeter",
        "api_listener": { "api_listener": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "greeter",
            "rds": { "route_config_name": "greeter-routes", "config_source": { "ads": {}, "resource_api_version": "V3" } },
            "http_filters": [ { "name": "envoy.filters.http.router",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ]
        } }
    });
    let routes = json!({
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "greeter-routes",
        "virtual_hosts": [ { "name": "greeter", "domains": ["greeter"],
            "routes": [ { "match": { "prefix": "" }, "route": { "cluster": "greeter-backend" } } ] } ]
    });
    let cluster = json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "greeter-backend", "type": "EDS", "lb_policy": "ROUND_ROBIN",
        "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } }
    });
    // gRPC needs a locality, and ignores one without a weight.
    let mut endpoints = endpoints_doc("greeter-backend", endpoint);
    endpoints["endpoints"][0]["locality"] = json!({ "zone": "local" });
    endpoints["endpoints"][0]["load_balancing_weight"] = json!(1);
    [listener, routes, cluster, endpoints]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test]
async fn a_proxyless_grpc_client_follows_sluice_cp() {
    let (serving, not_serving, xds) = (free_addr(), free_addr(), free_addr());
    let _first = health_server(serving, "SERVING").unwrap();
    let _second = health_server(not_serving, "NOT_SERVING").unwrap();
    let cp = ControlPlane::start(&documents(serving), xds).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("grpc-bootstrap.json");
    std::fs::write(
        &bootstrap,
        json!({
            "xds_servers": [ { "server_uri": xds.to_string(),
                               "channel_creds": [ { "type": "insecure" } ],
                               "server_features": ["xds_v3"] } ],
            "node": { "id": "grpc-client", "cluster": "" }
        })
        .to_string(),
    )
    .unwrap();
    let client = proxyless_client(
        &bootstrap,
        "greeter",
        &["SERVING", "NOT_SERVING"],
        Duration::from_secs(60),
    )
    .unwrap();
    client
        .wait_for("seen SERVING", Duration::from_secs(30))
        .expect("the client reached the server through xDS");

    // It asked for the listener by name, not by wildcard.
    let subscribed = || {
        let (ok, out, err) = cp.sluicectl(&["nodes", "-o", "json"]);
        assert!(ok, "{err}");
        let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
        let node = rows.into_iter().find(|r| r["id"] == "grpc-client");
        node.map(|n| n["types"]["listener"]["subscribed"].clone())
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            subscribed() == Some(json!(["greeter"]))
        })
        .await,
        "{:?}",
        subscribed()
    );

    // New endpoints: the same client's calls move.
    cp.update(&documents(not_serving)).unwrap();
    client
        .wait_for("seen NOT_SERVING", Duration::from_secs(30))
        .expect("the client followed the endpoints change");
}
