//! Concurrent changes to one group all land: many `sluicectl apply` and `delete` at once
//! against one `sluice-cp` (file store) make exactly one revision each, each a superset of
//! the one before but for what it deletes; `--expect-revision` refuses a stale change and
//! writes nothing; a SIGKILL in the middle of a burst loses no acknowledged change and
//! leaves no partial revision.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::config::address;
use sluice_tests::free_addr;
use sluice_tests::process::ControlPlane;

/// A document holding one STATIC cluster named `name`.
fn cluster_doc(name: &str) -> String {
    json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [
            { "endpoint": { "address": address(free_addr()) } } ] } ] }
    })
    .to_string()
}

/// Writes one cluster file per name; returns their paths by name.
fn cluster_files(dir: &std::path::Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, cluster_doc(name)).unwrap();
            path.display().to_string()
        })
        .collect()
}

/// Waits for every child; returns (success, stdout, stderr) per child, in order.
fn finish(children: Vec<Child>) -> Vec<(bool, String, String)> {
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("wait for sluicectl");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

/// The cluster names of one stored revision.
fn clusters_of(revision: &Value) -> BTreeSet<String> {
    revision["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster")
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

/// The stored revisions of `group`, oldest first.
fn group_revisions(cp: &ControlPlane, group: &str) -> Vec<Value> {
    cp.stored_revisions()
        .unwrap()
        .into_iter()
        .filter(|r| r["group"] == group)
        .collect()
}

/// Checks that each of `revisions` is its predecessor plus one added cluster or minus one
/// deleted one (never a change that dropped another's work); returns the last set.
fn assert_one_step_each(
    before: BTreeSet<String>,
    revisions: &[Value],
    added: &BTreeSet<String>,
    deleted: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut previous = before;
    for revision in revisions {
        let now = clusters_of(revision);
        let gained: Vec<&String> = now.difference(&previous).collect();
        let lost: Vec<&String> = previous.difference(&now).collect();
        let one_add = gained.len() == 1 && lost.is_empty() && added.contains(gained[0]);
        let one_delete = lost.len() == 1 && gained.is_empty() && deleted.contains(lost[0]);
        assert!(
            one_add || one_delete,
            "revision {} gained {gained:?} and lost {lost:?}",
            revision["number"]
        );
        previous = now;
    }
    previous
}

#[tokio::test]
async fn twenty_concurrent_applies_and_deletes_all_land_twenty_times() {
    let cp = ControlPlane::start_empty(free_addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let group = format!("round-{round}");
        let first: Vec<String> = (0..20).map(|i| format!("c{round}-{i}")).collect();
        let files = cluster_files(dir.path(), &first);

        // 20 applies at once, each adding one cluster.
        let children = files
            .iter()
            .map(|f| cp.sluicectl_spawn(&["apply", "-f", f, "--group", &group]))
            .collect();
        for (ok, out, err) in finish(children) {
            assert!(ok && out.contains("applied"), "{out}{err}");
        }
        let revisions = group_revisions(&cp, &group);
        assert_eq!(revisions.len(), 20, "exactly one revision per apply");
        let all: BTreeSet<String> = first.iter().cloned().collect();
        let last = assert_one_step_each(BTreeSet::new(), &revisions, &all, &BTreeSet::new());
        assert_eq!(last, all, "every apply is in the last revision");

        // 10 applies of new clusters and 10 deletes of the first ten, interleaved.
        let second: Vec<String> = (0..10).map(|i| format!("d{round}-{i}")).collect();
        let new_files = cluster_files(dir.path(), &second);
        let mut children = Vec::new();
        for i in 0..10 {
            children.push(cp.sluicectl_spawn(&["apply", "-f", &new_files[i], "--group", &group]));
            children.push(cp.sluicectl_spawn(&["delete", "cluster", &first[i], "--group", &group]));
        }
        for (ok, out, err) in finish(children) {
            assert!(ok && out.contains("applied"), "{out}{err}");
        }
        let revisions = group_revisions(&cp, &group);
        assert_eq!(revisions.len(), 40, "exactly one revision per change");
        let added: BTreeSet<String> = second.iter().cloned().collect();
        let deleted: BTreeSet<String> = first[..10].iter().cloned().collect();
        let last = assert_one_step_each(all.clone(), &revisions[20..], &added, &deleted);
        let expected: BTreeSet<String> = first[10..].iter().chain(&second).cloned().collect();
        assert_eq!(last, expected);

        // What the API serves is what the store holds.
        let (ok, table, err) = cp.sluicectl(&["get", "cluster", "--group", &group]);
        assert!(ok, "{err}");
        let served: BTreeSet<String> = table
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect();
        assert_eq!(served, expected);
    }
}

#[tokio::test]
async fn a_stale_expected_revision_fails_and_writes_nothing() {
    let cp = ControlPlane::start_empty(free_addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = cluster_files(
        dir.path(),
        &["a".to_string(), "b".to_string(), "c".to_string()],
    );
    let (ok, out, err) = cp.sluicectl(&["apply", "-f", &files[0], "--expect-revision", "0"]);
    assert!(ok && out.starts_with("revision 1 applied"), "{out}{err}");

    // Stale: the group is at 1, the operator read 0.
    let (ok, out, err) = cp.sluicectl(&["apply", "-f", &files[1], "--expect-revision", "0"]);
    assert!(!ok, "{out}");
    assert_eq!(
        err.trim(),
        format!(
            "error: {}: group \"default\" is at revision 1, not the expected revision 0; \
             nothing was written",
            files[1]
        )
    );
    let (ok, out, err) = cp.sluicectl(&["delete", "cluster", "a", "--expect-revision", "7"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("at revision 1, not the expected revision 7"),
        "{err}"
    );
    assert_eq!(
        cp.stored_revisions().unwrap().len(),
        1,
        "nothing was written"
    );
    let (_, table, _) = cp.sluicectl(&["get", "cluster"]);
    assert!(!table.contains(" b") && table.contains(" a"), "{table}");

    // Current: applied.
    let (ok, out, err) = cp.sluicectl(&["apply", "-f", &files[1], "--expect-revision", "1"]);
    assert!(ok && out.starts_with("revision 2 applied"), "{out}{err}");
    let (ok, out, err) = cp.sluicectl(&["delete", "cluster", "a", "--expect-revision", "2"]);
    assert!(ok && out.starts_with("revision 3 applied"), "{out}{err}");

    // History: when, by which credential, what each revision changed.
    let (ok, json, err) = cp.sluicectl(&["history", "-o", "json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    let changes: Vec<(Value, Value, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["added"].clone(),
                r["changed"].clone(),
                r["removed"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (json!(["cluster/a"]), json!([]), json!([])),
            (json!(["cluster/b"]), json!([]), json!([])),
            (json!([]), json!([]), json!(["cluster/a"])),
        ]
    );
    for row in &rows {
        assert_eq!(row["author"], "admin-token", "{json}");
        let created = row["created"].as_str().unwrap();
        assert!(
            created.len() >= 20 && created.as_bytes()[10] == b'T' && created.ends_with('Z'),
            "RFC 3339 in UTC: {created}"
        );
    }
    let (_, table, _) = cp.sluicectl(&["history"]);
    assert!(
        table.starts_with("REVISION  CREATED") && table.contains("-cluster/a"),
        "{table}"
    );
}

#[tokio::test]
async fn a_sigkill_mid_burst_loses_no_acknowledged_change() {
    let mut cp = ControlPlane::start_empty(free_addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..60).map(|i| format!("k-{i}")).collect();
    let files = cluster_files(dir.path(), &names);
    let mut children: Vec<Child> = files
        .iter()
        .map(|f| cp.sluicectl_spawn(&["apply", "-f", f]))
        .collect();
    // Kill the control plane once a few applies were acknowledged, with others in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut done = 0;
        for child in children.iter_mut() {
            if child.try_wait().ok().flatten().is_some_and(|s| s.success()) {
                done += 1;
            }
        }
        if done >= 10 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cp.kill();
    let results = finish(children);
    cp.start_again().await.unwrap();

    let acknowledged: Vec<(String, u64)> = results
        .iter()
        .zip(&names)
        .filter(|((ok, _, _), _)| *ok)
        .map(|((_, out, _), name)| {
            let number = out
                .strip_prefix("revision ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("an acknowledged apply names its revision: {out}"));
            (name.clone(), number)
        })
        .collect();
    assert!(
        acknowledged.len() >= 10 && acknowledged.len() < names.len(),
        "the kill landed mid-burst: {} of {} acknowledged",
        acknowledged.len(),
        names.len()
    );

    // Every stored revision is whole and one step from the one before; every
    // acknowledged revision is there and holds its cluster, and so does the current one.
    let revisions = cp.stored_revisions().unwrap();
    let all: BTreeSet<String> = names.iter().cloned().collect();
    let current = assert_one_step_each(BTreeSet::new(), &revisions, &all, &BTreeSet::new());
    for (name, number) in &acknowledged {
        let revision = revisions
            .iter()
            .find(|r| r["number"] == *number)
            .unwrap_or_else(|| panic!("acknowledged revision {number} is stored"));
        assert!(clusters_of(revision).contains(name));
        assert!(current.contains(name), "{name} is served after the restart");
    }
    let last_acknowledged = acknowledged.iter().map(|(_, n)| *n).max().unwrap();
    let (_, json, _) = cp.sluicectl(&["history", "-o", "json"]);
    let history: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(history.len(), revisions.len());
    let newest = history.last().unwrap()["revision"].as_u64().unwrap();
    assert!(
        newest >= last_acknowledged,
        "current revision {newest} is at least the last acknowledged, {last_acknowledged}"
    );
    // The restarted control plane takes changes on from there.
    let extra = cluster_files(dir.path(), &["after".to_string()]);
    let (ok, out, err) = cp.sluicectl(&["apply", "-f", &extra[0]]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("revision {} applied\n", newest + 1));
}
