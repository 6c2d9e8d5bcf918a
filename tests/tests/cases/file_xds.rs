//! File-based xDS (`path_config_source`), the Kubernetes ConfigMap pattern: listeners and
//! clusters come from two watched files. While a bounded load runs, the listener file is
//! replaced 50 times by atomic rename (and the cluster file every tenth time): no request
//! fails and no response mixes two versions. A broken file keeps the last good config and
//! the log names the field. `--mode validate` lists every unsupported field of a config.
//! Routes (RDS) and endpoints (EDS) from files too, under a static listener and cluster:
//! the same answers as Envoy's through each replacement, and a broken file keeps the last
//! good routes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, cluster, http_listener, merge};
use sluice_tests::load::{LoadShape, StampedLoad, Tally};
use sluice_tests::process::{validate, Sluice};
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// Writes `text` to `path` as Kubernetes does: a new file in the same directory, renamed
/// over the old one.
fn replace(path: &Path, text: &str) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// Listener file version `n`: everything to `v1` (odd) or `v2` (even), stamped with the
/// target's name and the revision.
fn listeners(listener: SocketAddr, n: u32) -> String {
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
    merge(&mut l, json!({ "@type": LISTENER }));
    json!({ "version_info": format!("lds-{n}"), "resources": [l] }).to_string()
}

/// Cluster file version `n`: `v1` and `v2`, with a connect timeout that changes with `n`.
fn clusters(v1: SocketAddr, v2: SocketAddr, n: u32) -> String {
    let timeout = format!("{}s", 1 + n % 3);
    let c = |name: &str, addr: SocketAddr| {
        let mut c = cluster(name, &[(addr, 1)], json!({ "connect_timeout": timeout }));
        merge(&mut c, json!({ "@type": CLUSTER }));
        c
    };
    json!({ "version_info": format!("cds-{n}"), "resources": [c("v1", v1), c("v2", v2)] })
        .to_string()
}

fn file_bootstrap(admin: SocketAddr, lds: &Path, cds: &Path) -> String {
    json!({
        "node": { "id": "file-node", "cluster": "test" },
        "admin": { "address": address(admin) },
        "dynamic_resources": {
            "lds_config": { "path_config_source": { "path": lds.display().to_string() } },
            "cds_config": { "path_config_source": { "path": cds.display().to_string(),
                                                     "watched_directory": { "path": cds.parent().unwrap().display().to_string() } } }
        }
    })
    .to_string()
}

async fn revision(client: &HttpClient, listener: SocketAddr) -> Option<String> {
    let r = client.get(listener, "h", "/", &[]).await.ok()?;
    r.header("x-revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_file_swaps_under_load_fail_nothing_and_a_broken_file_keeps_the_last_good() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let (lds, cds) = (dir.path().join("lds.yaml"), dir.path().join("cds.yaml"));
    let (admin, listener) = (free_addr(), free_addr());
    replace(&cds, &clusters(v1.addr, v2.addr, 1));
    replace(&lds, &listeners(listener, 1));
    let log = dir.path().join("sluice.log");
    let sluice = Sluice::start_logged(&file_bootstrap(admin, &lds, &cds), admin, &log)
        .await
        .unwrap();
    let probe = HttpClient::http1();
    assert!(
        eventually(Duration::from_secs(10), || async {
            revision(&probe, listener).await.as_deref() == Some("1")
        })
        .await
    );

    let load = StampedLoad::start(
        listener,
        "x-config",
        LoadShape {
            workers: 4,
            requests: 50_000,
            limit: Duration::from_secs(60),
            reconnect_every: 50,
        },
    );
    for n in 2..=51 {
        if n % 10 == 0 {
            replace(&cds, &clusters(v1.addr, v2.addr, n));
        }
        replace(&lds, &listeners(listener, n));
        let want = n.to_string();
        assert!(
            eventually(Duration::from_secs(5), || async {
                revision(&probe, listener).await.as_deref() == Some(want.as_str())
            })
            .await,
            "revision {n} was not applied"
        );
    }
    let Tally {
        failures,
        mismatched,
        served,
    } = load.finish().await;
    assert_eq!(failures, 0, "failed requests");
    assert_eq!(mismatched, 0, "a response mixed two versions");
    assert!(
        served.contains_key("v1") && served.contains_key("v2"),
        "{served:?}"
    );
    let dump = sluice.admin_get("/config_dump").await.unwrap();
    assert!(dump.contains("lds-51") && dump.contains("cds-50"), "{dump}");

    // A broken listener (an unsupported field) keeps revision 51 serving, and the log
    // names the field; so does a file that is not YAML at all.
    let mut broken: serde_json::Value = serde_json::from_str(&listeners(listener, 52)).unwrap();
    broken["resources"][0]["freebind"] = json!(true);
    replace(&lds, &broken.to_string());
    replace(&cds, "resources: [ {");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("freebind") && text.contains("invalid YAML")
        })
        .await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(revision(&probe, listener).await.as_deref(), Some("51"));
    let r = probe.get(listener, "h", "/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn validate_lists_every_unsupported_field() {
    let (admin, listener, upstream) = (free_addr(), free_addr(), free_addr());
    let mut l = http_listener(
        "edge",
        listener,
        json!({ "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "web" } } ] } ] }),
        json!({ "http_filters": [
            { "name": "jwt", "typed_config": { "@type": "type.googleapis.com/no.such.v3.JwtThing" } },
            { "name": "envoy.filters.http.router",
              "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] }),
    );
    merge(
        &mut l,
        json!({ "enable_mptcp": true, "additional_addresses": [ { "address": address(admin) } ] }),
    );
    let mut c = cluster("web", &[(upstream, 1)], json!({}));
    merge(
        &mut c,
        json!({ "lrs_server": { "self": {} }, "upstream_bind_config": { "source_address": { "address": "127.0.0.1", "port_value": 0 } } }),
    );
    let config = json!({
        "admin": { "address": address(admin) },
        "static_resources": { "listeners": [l], "clusters": [c] }
    });
    let (ok, stderr) = validate(&config.to_string());
    assert!(!ok, "{stderr}");
    for problem in [
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: jwt (no.such.v3.JwtThing) is not supported by sluice",
        "static_resources.listeners[0].enable_mptcp: field is not supported by sluice",
        "static_resources.listeners[0].additional_addresses: field is not supported by sluice",
        "static_resources.clusters[0].lrs_server: field is not supported by sluice",
        "static_resources.clusters[0].upstream_bind_config: field is not supported by sluice",
    ] {
        assert!(stderr.contains(problem), "missing {problem:?} in:\n{stderr}");
    }
    assert!(stderr.contains("5 problem(s)"), "{stderr}");
}

const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// A route file: `local_route` sends `/` to cluster `web`, tagging answers with `tag`.
fn route_file(tag: &str) -> String {
    json!({ "version_info": tag, "resources": [ { "@type": ROUTES, "name": "local_route",
        "virtual_hosts": [ { "name": "all", "domains": ["*"],
            "response_headers_to_add": [ { "header": { "key": "x-routes", "value": tag } } ],
            "routes": [ { "match": { "prefix": "/" }, "route": { "cluster": "web" } } ] } ] } ] })
    .to_string()
}

/// An endpoint file: `web`'s one endpoint.
fn endpoint_file(upstream: SocketAddr) -> String {
    json!({ "resources": [ { "@type": ENDPOINTS, "cluster_name": "web",
        "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address(upstream) } } ] } ] } ] })
    .to_string()
}

fn rds_eds_bootstrap(admin: SocketAddr, listener: SocketAddr, rds: &Path, eds: &Path) -> String {
    let mut l = http_listener("ingress", listener, json!({}), json!({}));
    let hcm = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
    hcm.as_object_mut().unwrap().remove("route_config");
    hcm["rds"] = json!({ "route_config_name": "local_route",
        "config_source": { "path_config_source": { "path": rds.display().to_string() } } });
    json!({
        "node": { "id": "file-node", "cluster": "test" },
        "admin": { "address": address(admin) },
        "static_resources": {
            "listeners": [l],
            "clusters": [ { "name": "web", "type": "EDS", "connect_timeout": "1s",
                "eds_cluster_config": { "eds_config": { "path_config_source": { "path": eds.display().to_string() } } } } ]
        }
    })
    .to_string()
}

/// `(x-routes, the upstream's name)` of one answer.
async fn answer_of(listener: SocketAddr) -> Option<(String, String)> {
    let r = HttpClient::http1()
        .get(listener, "h", "/", &[])
        .await
        .ok()?;
    if r.status != 200 {
        return None;
    }
    Some((
        r.header("x-routes")?,
        r.json()["server"].as_str()?.to_string(),
    ))
}

/// Waits (bounded: 10 s) until the proxy answers `expected`; what it answered last.
async fn settles_on(listener: SocketAddr, expected: (&str, &str)) -> Option<(String, String)> {
    let want = Some((expected.0.to_string(), expected.1.to_string()));
    let mut last = None;
    for _ in 0..200 {
        last = answer_of(listener).await;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test]
async fn routes_and_endpoints_from_watched_files_follow_each_replacement_as_in_envoy() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut seen = Vec::new();
    for proxy in ["sluice", "envoy"] {
        let dir = tempfile::tempdir().unwrap();
        let (rds, eds) = (dir.path().join("rds.yaml"), dir.path().join("eds.yaml"));
        replace(&rds, &route_file("r1"));
        replace(&eds, &endpoint_file(a.addr));
        let (admin, listener) = (free_addr(), free_addr());
        let bootstrap = rds_eds_bootstrap(admin, listener, &rds, &eds);
        let process: Box<dyn std::any::Any> = match proxy {
            "envoy" => Box::new(
                sluice_tests::envoy::Envoy::start(&bootstrap, admin)
                    .await
                    .expect("start envoy"),
            ),
            _ => Box::new(Sluice::start(&bootstrap, admin).await.unwrap()),
        };
        let mut answers = vec![settles_on(listener, ("r1", "a")).await];
        replace(&rds, &route_file("r2"));
        answers.push(settles_on(listener, ("r2", "a")).await);
        replace(&eds, &endpoint_file(b.addr));
        answers.push(settles_on(listener, ("r2", "b")).await);
        // A file that does not parse: the last good routes keep serving. (An unknown field
        // would not do: Envoy only warns about those in dynamic resources.)
        replace(&rds, "resources: [{'@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration, name: local_route");
        tokio::time::sleep(Duration::from_millis(500)).await;
        answers.push(answer_of(listener).await);
        drop(process);
        seen.push(answers);
    }
    let expected: Vec<Option<(String, String)>> =
        [("r1", "a"), ("r2", "a"), ("r2", "b"), ("r2", "b")]
            .iter()
            .map(|(r, s)| Some((r.to_string(), s.to_string())))
            .collect();
    assert_eq!(seen[0], expected, "sluice");
    assert_eq!(seen[1], expected, "envoy");
}
