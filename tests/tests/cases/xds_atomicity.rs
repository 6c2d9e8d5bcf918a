//! Atomicity under load across a fleet: three `sluice` nodes (two state of the world, one
//! delta) share a listener; while a bounded load runs, the control plane switches the
//! whole route table 100 times. No request fails and no response mixes two versions
//! (each version routes to its own upstream and stamps its name); every fifth change is
//! ACKed by all three nodes. (Propagation time is measured by `tests/perf/run.sh`, in its
//! `control_plane` scenario, not here.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, ads_bootstrap, http_listener, merge};
use sluice_tests::csds::statuses;
use sluice_tests::load::{LoadShape, StampedLoad, Tally};
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};
use xds_types::pb::envoy::service::status::v3::ConfigStatus;
use xds_types::type_urls;

/// Version `n` routes everything to `v1` (odd) or `v2` (even) and stamps that name.
fn resources(listener: SocketAddr, v1: SocketAddr, v2: SocketAddr, n: u32) -> String {
    let target = if n % 2 == 1 { "v1" } else { "v2" };
    let mut l = http_listener(
        "ingress",
        listener,
        json!({ "name": "routes", "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "response_headers_to_add": [ { "header": { "key": "x-config", "value": target } },
                                         { "header": { "key": "x-revision", "value": n.to_string() } } ],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": target } } ] } ] }),
        json!({}),
    );
    merge(
        &mut l,
        json!({ "@type": "type.googleapis.com/envoy.config.listener.v3.Listener" }),
    );
    let cluster = |name: &str, addr: SocketAddr| {
        json!({ "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address(addr) } } ] } ] } })
    };
    format!(
        "{}\n---\n{}\n---\n{l}\n",
        cluster("v1", v1),
        cluster("v2", v2)
    )
}

/// `(node, ACKed listener version, config status)` for every node.
async fn listener_versions(xds: SocketAddr) -> Vec<(String, String, i32)> {
    statuses(xds, type_urls::LISTENER)
        .await
        .into_iter()
        .map(|s| (s.node, s.acked_version, s.config_status))
        .collect()
}

/// Whether every one of `nodes` ACKed the current listener config.
async fn all_synced(xds: SocketAddr, nodes: usize) -> bool {
    let v = statuses(xds, type_urls::LISTENER).await;
    v.len() == nodes
        && v.iter()
            .all(|s| s.config_status == ConfigStatus::Synced as i32)
}

/// Three nodes on `xds`: two state of the world, one delta.
async fn start_fleet(xds: SocketAddr) -> Vec<Sluice> {
    let mut nodes = Vec::new();
    for (i, api) in ["GRPC", "GRPC", "DELTA_GRPC"].iter().enumerate() {
        let admin = free_addr();
        let bootstrap = ads_bootstrap(admin, xds, api, &format!("node-{i}"));
        nodes.push(Sluice::start(&bootstrap, admin).await.unwrap());
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_route_table_switches_under_load_across_three_nodes() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let (xds, listener) = (free_addr(), free_addr());
    let cp = ControlPlane::start(&resources(listener, v1.addr, v2.addr, 1), xds)
        .await
        .unwrap();
    let _fleet = start_fleet(xds).await;
    assert!(eventually(Duration::from_secs(10), || all_synced(xds, 3)).await);
    // The operators' view: three connected nodes, all on the same listener version.
    let (ok, json, err) = cp.sluicectl(&["nodes", "-o", "json"]);
    assert!(ok, "{err}");
    let nodes: serde_json::Value = serde_json::from_str(&json).unwrap();
    let versions: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["connected"] == true)
        .filter_map(|n| n["types"]["listener"]["acked_version"].as_str())
        .collect();
    assert_eq!(versions.len(), 3, "{json}");
    assert!(
        versions.iter().all(|v| *v == versions[0] && !v.is_empty()),
        "{json}"
    );

    // New connections now and then, so the kernel spreads load over all nodes.
    let load = StampedLoad::start(
        listener,
        "x-config",
        LoadShape {
            workers: 8,
            requests: 50_000,
            limit: Duration::from_secs(60),
            reconnect_every: 50,
        },
    );

    for n in 2..=101 {
        cp.update(&resources(listener, v1.addr, v2.addr, n))
            .unwrap();
        // Every 5th change, wait for all three ACKs.
        if n % 5 == 0 {
            assert!(
                eventually(Duration::from_secs(10), || async {
                    tokio::time::sleep(Duration::from_millis(30)).await; // let the push leave first
                    all_synced(xds, 3).await
                })
                .await
            );
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Tally {
        failures,
        mismatched,
        served,
    } = load.finish().await;
    assert_eq!(failures, 0, "failed requests");
    assert_eq!(mismatched, 0, "a response mixed two versions");
    assert!(served.values().sum::<u64>() > 1000, "{served:?}");
    assert!(
        served.contains_key("v1") && served.contains_key("v2"),
        "{served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_and_restarted_under_load() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let (xds, listener) = (free_addr(), free_addr());
    let cp = ControlPlane::start(&resources(listener, v1.addr, v2.addr, 1), xds)
        .await
        .unwrap();
    let _fleet = start_fleet(xds).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            let client = HttpClient::http1();
            for _ in 0..100_000u32 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match client.get(listener, "h", "/", &[]).await {
                    Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    assert!(eventually(Duration::from_secs(10), || all_synced(xds, 3)).await);
    let before = listener_versions(xds).await[0].1.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(cp); // SIGKILL
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Restarted on the same resources, then a change: it must reach every node.
    let cp = ControlPlane::start(&resources(listener, v1.addr, v2.addr, 1), xds)
        .await
        .unwrap();
    cp.update(&resources(listener, v1.addr, v2.addr, 2))
        .unwrap();
    let every_node_has_the_change = || async {
        let v = listener_versions(xds).await;
        v.len() == 3
            && v.iter().all(|(_, acked, status)| {
                *acked != before && *acked == v[0].1 && *status == ConfigStatus::Synced as i32
            })
    };
    assert!(
        eventually(Duration::from_secs(30), every_node_has_the_change).await,
        "the change after the restart reached every node: {:?}",
        listener_versions(xds).await
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    eprintln!(
        "served {} requests across the control-plane restart",
        served.load(Ordering::Relaxed)
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests while the control plane was down"
    );
    assert!(served.load(Ordering::Relaxed) > 500);
}
