//! The operator path: `sluicectl` against `sluice-cp` with a real `sluice` node attached.
//! Apply → get -o yaml → apply of that output is a no-op; rollback restores the previous
//! routing at the node; `nodes` shows what the node ACKed; a bad file is one clear error
//! line naming file, document and field; revisions survive a SIGKILL restart; `nodes
//! --watch` streams the fleet's changes.

use std::time::Duration;

use sluice_tests::client::serves;
use sluice_tests::config::{ads_bootstrap, xds_resources};
use sluice_tests::process::{ControlPlane, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn apply_get_rollback_nodes_and_restart() {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let mut cp = ControlPlane::start_empty(xds).await.unwrap();
    let _node = Sluice::start(&ads_bootstrap(admin, xds, "GRPC", "node-1"), admin)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Apply v1: the node serves it.
    let v1 = write(
        dir.path(),
        "v1.yaml",
        &xds_resources(listener, first.addr, "v1"),
    );
    let (ok, out, err) = cp.sluicectl(&["apply", "-f", &v1]);
    assert!(ok, "{err}");
    assert!(out.starts_with("revision 1 applied"), "{out}");
    assert!(eventually(Duration::from_secs(10), || serves(listener, "first", "v1")).await);

    // get -o yaml, then applying that output changes nothing (no new revision).
    let (ok, yaml, err) = cp.sluicectl(&["get", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(
        yaml.contains("type.googleapis.com/envoy.config.listener.v3.Listener"),
        "{yaml}"
    );
    let exported = write(dir.path(), "exported.yaml", &yaml);
    let (ok, out, err) = cp.sluicectl(&["apply", "-f", &exported]);
    assert!(ok, "{err}");
    assert!(out.starts_with("unchanged (revision 1)"), "{out}");
    let (_, table, _) = cp.sluicectl(&["get", "cluster"]);
    assert!(table.contains("Cluster  web"), "{table}");

    // Apply v2, then roll back to revision 1: the node routes as before.
    let v2 = write(
        dir.path(),
        "v2.yaml",
        &xds_resources(listener, second.addr, "v2"),
    );
    assert!(cp
        .sluicectl(&["apply", "-f", &v2])
        .1
        .starts_with("revision 2 applied"));
    assert!(eventually(Duration::from_secs(10), || serves(listener, "second", "v2")).await);
    let (ok, out, err) = cp.sluicectl(&["rollback", "1"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("revision 3 applied"), "{out}");
    assert!(
        eventually(Duration::from_secs(10), || serves(listener, "first", "v1")).await,
        "rollback restores v1 at the node"
    );
    let (_, history, _) = cp.sluicectl(&["history"]);
    assert!(history.contains("rollback to 1"), "{history}");
    assert_eq!(
        history.lines().count(),
        4,
        "header + 3 revisions: {history}"
    );

    // nodes: the node, connected, with the listener version it ACKed.
    let nodes_ok = || async {
        let (_, json, _) = cp.sluicectl(&["nodes", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        v[0]["id"] == "node-1"
            && v[0]["connected"] == true
            && v[0]["types"]["listener"]["acked_version"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
    };
    assert!(eventually(Duration::from_secs(10), nodes_ok).await);
    let (_, table, _) = cp.sluicectl(&["nodes"]);
    assert!(
        table.starts_with("NODE") && table.contains("node-1") && table.contains("connected"),
        "{table}"
    );

    // A bad file: one line naming the file, the document and the field; nothing changes.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &xds_resources(listener, second.addr, "v9").replace(
            "\"name\":\"web\"",
            "\"name\":\"web\",\"lb_policy\":\"CLUSTER_PROVIDED\"",
        ),
    );
    let (ok, _, err) = cp.sluicectl(&["apply", "-f", &bad]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!("error: {bad}: document 0: lb_policy: CLUSTER_PROVIDED is not supported")
    );
    assert!(serves(listener, "first", "v1").await);

    // SIGKILL and restart on the same store: the history and the served config remain.
    cp.restart().await.unwrap();
    let (_, history, _) = cp.sluicectl(&["history"]);
    assert_eq!(history.lines().count(), 4, "{history}");
    assert!(serves(listener, "first", "v1").await);
    assert!(cp
        .sluicectl(&["apply", "-f", &v2])
        .1
        .starts_with("revision 4 applied"));
    assert!(
        eventually(Duration::from_secs(30), || serves(listener, "second", "v2")).await,
        "a change after the restart reaches the node"
    );
}

#[tokio::test]
async fn nodes_receive_their_groups_resources() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (xds, l_default, l_canary) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start_empty(xds).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let default_file = write(
        dir.path(),
        "default.yaml",
        &xds_resources(l_default, stable.addr, "default"),
    );
    let canary_file = write(
        dir.path(),
        "canary.yaml",
        &xds_resources(l_canary, canary.addr, "canary"),
    );
    assert!(cp.sluicectl(&["apply", "-f", &default_file]).0);
    assert!(
        cp.sluicectl(&["apply", "-f", &canary_file, "--group", "canary"])
            .0
    );

    let (admin_a, admin_b) = (free_addr(), free_addr());
    let _a = Sluice::start(&ads_bootstrap(admin_a, xds, "GRPC", "node-a"), admin_a)
        .await
        .unwrap();
    let canary_bootstrap = ads_bootstrap(admin_b, xds, "DELTA_GRPC", "node-b")
        .replace("\"cluster\":\"default\"", "\"cluster\":\"canary\"");
    assert!(canary_bootstrap.contains("\"cluster\":\"canary\""));
    let _b = Sluice::start(&canary_bootstrap, admin_b).await.unwrap();

    assert!(
        eventually(Duration::from_secs(10), || serves(
            l_default, "stable", "default"
        ))
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || serves(
            l_canary, "canary", "canary"
        ))
        .await
    );
    let (_, json, _) = cp.sluicectl(&["nodes", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&json).unwrap();
    let group_of = |id: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["group"].clone())
    };
    assert_eq!(group_of("node-a"), Some("default".into()), "{json}");
    assert_eq!(group_of("node-b"), Some("canary".into()), "{json}");
    // Each group's history is its own.
    assert_eq!(
        cp.sluicectl(&["history", "--group", "canary"])
            .1
            .lines()
            .count(),
        2
    );
}

#[tokio::test]
async fn diff_shows_exactly_the_changed_fields() {
    let upstream = Upstream::start("first").await;
    let (xds, listener) = (free_addr(), free_addr());
    let cp = ControlPlane::start_empty(xds).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = xds_resources(listener, upstream.addr, "v1");
    let v1_file = write(dir.path(), "v1.yaml", &v1);
    assert_eq!(
        cp.sluicectl(&["diff", "-f", &v1_file]).1,
        "+ cluster web\n+ listener ingress\n"
    );
    assert!(cp.sluicectl(&["apply", "-f", &v1_file]).0);
    assert_eq!(cp.sluicectl(&["diff", "-f", &v1_file]).1, "no changes\n");
    let changed = v1
        .replace("\"connect_timeout\":\"1s\"", "\"connect_timeout\":\"2s\"")
        .replace("\"value\":\"v1\"", "\"value\":\"v2\"");
    let changed_file = write(dir.path(), "changed.yaml", &changed);
    let (ok, out, err) = cp.sluicectl(&["diff", "-f", &changed_file]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "~ cluster web\n    connect_timeout: \"1s\" -> \"2s\"\n\
         ~ listener ingress\n    filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].response_headers_to_add[0].header.value: \"v1\" -> \"v2\"\n"
    );
    // diff changes nothing.
    assert_eq!(cp.sluicectl(&["history"]).1.lines().count(), 2);
}

#[tokio::test]
async fn nodes_watch_streams_every_change_of_the_fleet() {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let (xds, listener, admin) = (free_addr(), free_addr(), free_addr());
    let cp = ControlPlane::start(&xds_resources(listener, first.addr, "v1"), xds)
        .await
        .unwrap();
    let watch = cp.sluicectl_watch(&["nodes", "--watch", "-o", "json"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            watch.output().starts_with("[]")
        })
        .await,
        "the first view is the empty fleet: {}",
        watch.output()
    );
    let node = Sluice::start(&ads_bootstrap(admin, xds, "DELTA_GRPC", "watched"), admin)
        .await
        .unwrap();
    let acked = |version: String| {
        let watch = &watch;
        async move {
            watch
                .output()
                .contains(&format!("\"acked_version\": \"{version}\""))
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            watch.output().contains("\"id\": \"watched\"")
        })
        .await,
        "the node appears: {}",
        watch.output()
    );
    // A change shows up as the node ACKs it: the listener type's new version.
    cp.update(&xds_resources(listener, second.addr, "v2"))
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || serves(listener, "second", "v2")).await);
    let (_, nodes, _) = cp.sluicectl(&["nodes", "-o", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&nodes).unwrap();
    let v2 = rows[0]["types"]["listener"]["acked_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(Duration::from_secs(10), || acked(v2.clone())).await,
        "the watch shows the ACK of v2 ({v2}): {}",
        watch.output()
    );
    // And the node going away.
    drop(node);
    assert!(
        eventually(Duration::from_secs(10), || async {
            watch.output().contains("\"connected\": false")
        })
        .await,
        "the disconnect shows: {}",
        watch.output()
    );
}
