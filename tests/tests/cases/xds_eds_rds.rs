//! Endpoints (EDS) and route configurations (RDS) delivered as resources of their own:
//! `sluice` follows them, warms a cluster or listener until what it needs arrives (or its
//! `initial_fetch_timeout` passes), and its named subscriptions follow its clusters, so a
//! removed cluster's endpoints subscription ends.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::client::{serves, HttpClient};
use sluice_tests::config::{
    ads_bootstrap, eds_rds_resources, endpoints_doc, http_listener, merge, xds_resources,
};
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

async fn follows_endpoints_and_routes(api_type: &str) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start(&eds_rds_resources(listener, first.addr, "v1", "1s"), xds)
        .await
        .unwrap();
    let sluice = Sluice::start(&ads_bootstrap(admin, xds, api_type, "sluice-1"), admin)
        .await
        .unwrap();
    assert!(
        serves(listener, "first", "v1").await,
        "ready, so the listener, its routes, the cluster and its endpoints are all live ({api_type})"
    );
    // The cluster changes (not its endpoints) and the routes change.
    cp.update(&eds_rds_resources(listener, first.addr, "v2", "2s"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || serves(listener, "first", "v2")).await,
        "v2 routes ({api_type})"
    );
    // New endpoints move the traffic.
    cp.update(&eds_rds_resources(listener, second.addr, "v3", "2s"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || serves(listener, "second", "v3")).await,
        "v3 endpoints ({api_type})"
    );
    assert_eq!(
        sluice.stat("cluster.web.membership_total").await.unwrap(),
        1
    );
}

#[tokio::test]
async fn state_of_the_world_endpoints_and_routes() {
    follows_endpoints_and_routes("GRPC").await;
}

#[tokio::test]
async fn delta_endpoints_and_routes() {
    follows_endpoints_and_routes("DELTA_GRPC").await;
}

/// An EDS cluster document; `initial_fetch_timeout` of its endpoints when given.
fn eds_cluster(name: &str, initial_fetch_timeout: Option<&str>) -> Value {
    let mut source = json!({ "ads": {}, "resource_api_version": "V3" });
    if let Some(timeout) = initial_fetch_timeout {
        merge(&mut source, json!({ "initial_fetch_timeout": timeout }));
    }
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name, "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": { "eds_config": source }
    })
}

/// A listener document with inline routes: `/` to `cluster`.
fn listener_to(addr: SocketAddr, cluster: &str) -> Value {
    let mut doc = http_listener(
        "ingress",
        addr,
        json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": cluster } } ] } ] }),
        json!({}),
    );
    merge(
        &mut doc,
        json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener" }),
    );
    doc
}

fn documents(docs: &[Value]) -> String {
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

async fn status_of(listener: SocketAddr) -> Option<u16> {
    let r = HttpClient::http1()
        .get(listener, "h", "/", &[])
        .await
        .ok()?;
    Some(r.status.as_u16())
}

#[tokio::test]
async fn a_cluster_without_endpoints_goes_live_empty_after_its_initial_fetch_timeout() {
    let upstream = Upstream::start("up").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let resources = documents(&[eds_cluster("web", Some("1s")), listener_to(listener, "web")]);
    let cp = ControlPlane::start(&resources, xds).await.unwrap();
    // Ready only once nothing warms: here, once the 1s endpoints timeout has passed.
    let sluice = Sluice::start(&ads_bootstrap(admin, xds, "GRPC", "sluice-w"), admin)
        .await
        .unwrap();
    assert_eq!(
        status_of(listener).await,
        Some(503),
        "live with no endpoints"
    );
    let clusters = sluice.admin_get("/clusters").await.unwrap();
    assert!(clusters.contains("web::added_via_api::true"), "{clusters}");
    // The endpoints arrive: traffic flows.
    let with_endpoints = documents(&[
        eds_cluster("web", Some("1s")),
        endpoints_doc("web", upstream.addr),
        listener_to(listener, "web"),
    ]);
    cp.update(&with_endpoints).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(listener).await == Some(200)
        })
        .await,
        "endpoints applied"
    );
}

#[tokio::test]
async fn a_listener_warms_until_its_route_configuration_arrives() {
    let upstream = Upstream::start("up").await;
    let (xds, ready_listener, warming_listener, admin) =
        (free_addr(), free_addr(), free_addr(), free_addr());
    let base = xds_resources(ready_listener, upstream.addr, "v1");
    // Validation is bypassed so a listener can name a route configuration that is not
    // there yet.
    let cp = ControlPlane::start_with_args(&base, xds, &["--unsafe-skip-validation"])
        .await
        .unwrap();
    let sluice = Sluice::start(&ads_bootstrap(admin, xds, "DELTA_GRPC", "sluice-r"), admin)
        .await
        .unwrap();
    let rds = eds_rds_resources(warming_listener, upstream.addr, "rds", "1s");
    let listener_doc = rds
        .split("\n---\n")
        .find(|d| d.contains("envoy.config.listener.v3.Listener"))
        .unwrap()
        .replace("\"ingress\"", "\"warming\"")
        .replace("\"routes\"", "\"later\"");
    // The listener names route configuration `later` (default 15s timeout): not bound.
    cp.update(&format!("{base}\n---\n{listener_doc}\n"))
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokio::net::TcpStream::connect(warming_listener)
                .await
                .is_err(),
            "a warming listener accepts nothing"
        );
    }
    assert!(serves(ready_listener, "up", "v1").await, "the rest serves");
    let dump = sluice.admin_get("/config_dump").await.unwrap();
    let dump: Value = serde_json::from_str(&dump).unwrap();
    let warming = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["dynamic_listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|l| l["name"] == "warming")
        .expect("the warming listener is in /config_dump");
    assert!(warming["warming_state"].is_object(), "{warming}");
    // The route configuration arrives: the listener goes live with it.
    let routes = rds
        .split("\n---\n")
        .find(|d| d.contains("RouteConfiguration"))
        .unwrap()
        .replace(r#""name":"routes""#, r#""name":"later""#);
    cp.update(&format!("{base}\n---\n{listener_doc}\n---\n{routes}\n"))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || serves(
            warming_listener,
            "up",
            "rds"
        ))
        .await,
        "the listener went live with its routes"
    );
}

/// `(subscribed names, sent version)` of the endpoints type for `node`.
fn endpoints_subscription(cp: &ControlPlane, node: &str) -> (Vec<String>, String) {
    let (ok, out, err) = cp.sluicectl(&["nodes", "-o", "json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let row = rows.iter().find(|r| r["id"] == node);
    let endpoints = row
        .map(|r| r["types"]["endpoints"].clone())
        .unwrap_or_default();
    let names = endpoints["subscribed"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    let sent = endpoints["sent_version"].as_str().unwrap_or("").to_string();
    (names, sent)
}

async fn removed_clusters_endpoints_subscription_ends(api_type: &str) {
    let (a, b, b2) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("b2").await,
    );
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let with_b = |b_endpoint: SocketAddr, route_to: &str| {
        documents(&[
            eds_cluster("a", None),
            eds_cluster("b", None),
            endpoints_doc("a", a.addr),
            endpoints_doc("b", b_endpoint),
            listener_to(listener, route_to),
        ])
    };
    let cp = ControlPlane::start(&with_b(b.addr, "b"), xds)
        .await
        .unwrap();
    let sluice = Sluice::start(&ads_bootstrap(admin, xds, api_type, "sluice-s"), admin)
        .await
        .unwrap();
    assert!(serves_server(listener, "b").await);
    assert_eq!(endpoints_subscription(&cp, "sluice-s").0, ["a", "b"]);

    // Cluster b goes away; its endpoints resource stays in the control plane.
    let without_b = documents(&[
        eds_cluster("a", None),
        endpoints_doc("a", a.addr),
        endpoints_doc("b", b.addr),
        listener_to(listener, "a"),
    ]);
    cp.update(&without_b).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            endpoints_subscription(&cp, "sluice-s").0 == ["a"]
        })
        .await,
        "the node unsubscribed from b's endpoints ({api_type}): {:?}",
        endpoints_subscription(&cp, "sluice-s")
    );
    assert!(serves_server(listener, "a").await);
    let (_, sent_before) = endpoints_subscription(&cp, "sluice-s");

    // A change to b's endpoints is not sent to the node any more.
    let b_moved = without_b.replace(&b.addr.port().to_string(), &b2.addr.port().to_string());
    cp.update(&b_moved).unwrap();
    // The reload is asynchronous (SIGHUP): wait until the control plane holds it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (ok, out, _) = cp.sluicectl(&["get", "endpoints", "b", "-o", "json"]);
            ok && out.contains(&b2.addr.port().to_string())
        })
        .await,
        "the control plane took the moved endpoints"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        endpoints_subscription(&cp, "sluice-s").1,
        sent_before,
        "no endpoints push for an unsubscribed resource ({api_type})"
    );
    let clusters = sluice.admin_get("/clusters").await.unwrap();
    assert!(!clusters.contains("b::"), "{clusters}");

    // Cluster b comes back: the node subscribes again and gets b's current endpoints.
    cp.update(&with_b(b2.addr, "b")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || serves_server(listener, "b2")).await,
        "re-subscribed endpoints delivered ({api_type})"
    );
}

async fn serves_server(listener: SocketAddr, server: &str) -> bool {
    HttpClient::http1()
        .get(listener, "h", "/", &[])
        .await
        .is_ok_and(|r| r.status == 200 && r.json()["server"] == server)
}

#[tokio::test]
async fn delta_removed_clusters_endpoints_subscription_ends() {
    removed_clusters_endpoints_subscription_ends("DELTA_GRPC").await;
}

#[tokio::test]
async fn state_of_the_world_removed_clusters_endpoints_subscription_ends() {
    removed_clusters_endpoints_subscription_ends("GRPC").await;
}
