//! Upstreams that fail, and hashing that must stay put. Every scenario runs through `sluice`
//! and through real Envoy with the same bootstrap and is held to the same observable
//! behaviour: the statuses clients get, which hosts get traffic, and the health flags
//! `/clusters` shows for each host. Envoy's defaults are part of each scenario (uneject on a
//! passing health check, the 50 % panic threshold), since each one surprises a
//! reimplementation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{address, bootstrap, http_listener};
use sluice_tests::envoy::Envoy;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;
use sluice_tests::{eventually, free_addr};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sluice,
    Envoy,
}

/// Either proxy, seen through its admin endpoint.
enum Proxy {
    Sluice(Sluice),
    Envoy(Envoy),
}

impl Proxy {
    async fn start(kind: Kind, config: &str, admin: SocketAddr) -> Self {
        match kind {
            Kind::Sluice => Proxy::Sluice(Sluice::start(config, admin).await.expect("sluice")),
            Kind::Envoy => Proxy::Envoy(Envoy::start(config, admin).await.expect("envoy")),
        }
    }

    fn admin(&self) -> SocketAddr {
        match self {
            Proxy::Sluice(s) => s.admin,
            Proxy::Envoy(e) => e.admin,
        }
    }

    async fn admin_get(&self, path: &str) -> String {
        match HttpClient::http1()
            .get(self.admin(), "admin", path, &[])
            .await
        {
            Ok(r) => String::from_utf8_lossy(&r.body).into_owned(),
            Err(_) => String::new(),
        }
    }

    async fn stat(&self, name: &str) -> i64 {
        sluice_tests::client::stat_value(&self.admin_get("/stats").await, name).unwrap_or(0)
    }

    /// The host's `health_flags` on `/clusters` (`healthy`, or `/failed_active_hc…`).
    async fn flags(&self, cluster: &str, host: SocketAddr) -> String {
        let prefix = format!("{cluster}::{host}::health_flags::");
        self.admin_get("/clusters")
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| "absent".to_string())
    }

    /// Waits until the host's flags satisfy `check`; fails with what they were.
    async fn await_flags(
        &self,
        kind: Kind,
        cluster: &str,
        host: SocketAddr,
        within: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) {
        let reached =
            eventually(within, || async { check(&self.flags(cluster, host).await) }).await;
        if !reached {
            let stats = self.admin_get("/stats").await;
            let outlier: Vec<&str> = stats
                .lines()
                .filter(|l| l.starts_with(&format!("cluster.{cluster}.outlier_detection.")))
                .collect();
            panic!(
                "{kind:?}: {cluster} {host} never {what}; flags: {}; {outlier:?}",
                self.flags(cluster, host).await
            );
        }
    }
}

/// Health checks every half second on `/healthz`, traffic or not, two results to flip.
fn health_check() -> Value {
    json!({ "timeout": "0.25s", "interval": "0.5s", "no_traffic_interval": "0.5s",
        "unhealthy_threshold": 2, "healthy_threshold": 2,
        "http_health_check": { "path": "/healthz" } })
}

fn endpoints(name: &str, hosts: &[SocketAddr]) -> Value {
    let lb_endpoints: Vec<Value> = hosts
        .iter()
        .map(|a| json!({ "endpoint": { "address": address(*a) } }))
        .collect();
    json!({ "cluster_name": name, "endpoints": [ { "lb_endpoints": lb_endpoints } ] })
}

fn cluster(name: &str, hosts: &[SocketAddr], extra: Value) -> Value {
    let mut c = json!({ "name": name, "type": "STATIC", "connect_timeout": "0.5s",
        "load_assignment": endpoints(name, hosts) });
    sluice_tests::config::merge(&mut c, extra);
    c
}

/// One listener whose routes send `/<cluster>…` to each cluster, with `route_extra` merged
/// into every route action.
fn proxy_config(
    admin: SocketAddr,
    listener: SocketAddr,
    clusters: Vec<Value>,
    route_extra: Value,
) -> String {
    let routes: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap();
            let mut action = json!({ "cluster": name });
            sluice_tests::config::merge(&mut action, route_extra.clone());
            json!({ "match": { "prefix": format!("/{name}") }, "route": action })
        })
        .collect();
    let table = json!({ "name": "r", "virtual_hosts": [ { "name": "all", "domains": ["*"], "routes": routes } ] });
    bootstrap(
        admin,
        vec![http_listener("in", listener, table, json!({}))],
        clusters,
    )
}

/// Client tasks sending GETs until told to stop (or 60 s, or 50,000 requests in all).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(listener: SocketAddr, path: &'static str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let tasks = (0..clients)
            .map(|_| {
                let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
                let client = HttpClient::http1();
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst)
                        && tokio::time::Instant::now() < deadline
                        && sent.fetch_add(1, Ordering::SeqCst) < 50_000
                    {
                        let reply = tokio::time::timeout(
                            Duration::from_secs(5),
                            client.get(listener, "load", path, &[]),
                        )
                        .await;
                        match reply {
                            Ok(Ok(r)) if r.status == 200 => {}
                            Ok(Ok(r)) => failures.lock().unwrap().push(format!(
                                "{} {}",
                                r.status,
                                r.header("x-envoy-response-flags").unwrap_or_default()
                            )),
                            Ok(Err(e)) => failures.lock().unwrap().push(e.to_string()),
                            Err(_) => failures.lock().unwrap().push("timed out".into()),
                        }
                        // Paced, so the debug build keeps up and the run stays bounded.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            failures,
            tasks,
        }
    }

    /// Stops the clients; returns (requests sent, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::SeqCst), failures)
    }
}

/// Kill one of three upstreams, restart it, then make another answer 500: clients see no
/// failure at any point (retries to other hosts, health checks, outlier detection), and the
/// flags on `/clusters` follow each step.
async fn chaos(kind: Kind) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let hosts = [a.addr, b.addr, c.addr];
    let (listener, admin) = (free_addr(), free_addr());
    // Four failed checks (2 s) to mark a host that refuses connections down, so that the
    // outlier detector's five connect failures in a row come first.
    let mut chaos_check = health_check();
    chaos_check["unhealthy_threshold"] = json!(4);
    let web = cluster(
        "web",
        &hosts,
        // Ejecting one of three takes max_ejection_percent over the default 10; and a
        // burst of retries needs more than the default 3 at once.
        json!({ "health_checks": [chaos_check],
                "outlier_detection": { "max_ejection_percent": 50 },
                "circuit_breakers": { "thresholds": [ { "max_retries": 100 } ] } }),
    );
    let retries = json!({ "retry_policy": {
        "retry_on": "5xx,reset,connect-failure", "num_retries": 3,
        "retry_host_predicate": [ { "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" } } ],
        "host_selection_retry_max_attempts": 3 } });
    let proxy = Proxy::start(
        kind,
        &proxy_config(admin, listener, vec![web], retries),
        admin,
    )
    .await;
    for host in hosts {
        proxy
            .await_flags(
                kind,
                "web",
                host,
                Duration::from_secs(5),
                "became healthy",
                |f| f == "healthy",
            )
            .await;
    }
    let load = Load::start(listener, "/web", 4);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // C dies: its connections close and new ones are refused.
    let c_addr = c.addr;
    drop(c);
    proxy
        .await_flags(
            kind,
            "web",
            c_addr,
            Duration::from_secs(8),
            "failed its health check",
            |f| f.contains("/failed_active_hc"),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // C comes back: passing health checks readmit it (and uneject it, Envoy's default,
    // though the 30 s base ejection time has not passed).
    let c = Upstream::start_on(c_addr, "c").await;
    proxy
        .await_flags(
            kind,
            "web",
            c_addr,
            Duration::from_secs(10),
            "was readmitted",
            |f| f == "healthy",
        )
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async { c.traffic_seen() > 0 }).await,
        "{kind:?}: readmitted C gets traffic again"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // B breaks: every answer, health checks included, is 500. Whichever notices first
    // takes it out: outlier detection after five 5xx in a row, or its next health check
    // (an unexpected status fails a host at once, whatever `unhealthy_threshold`, as in
    // Envoy); traffic to it stops either way.
    b.fail_with(500, false);
    proxy
        .await_flags(
            kind,
            "web",
            b.addr,
            Duration::from_secs(5),
            "was taken out",
            |f| f.contains("/failed_outlier_check") || f.contains("/failed_active_hc"),
        )
        .await;
    // Traffic to B stops within a few seconds (sluice at once; Envoy 1.40 keeps routing
    // some to it until its health check fails too), and stays stopped.
    let settled = eventually(Duration::from_secs(4), || async {
        let before = b.traffic_seen();
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.traffic_seen() == before
    })
    .await;
    assert!(settled, "{kind:?}: traffic to B stops once it is ejected");
    let stopped_at = b.traffic_seen();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = b.traffic_seen();
    proxy
        .await_flags(
            kind,
            "web",
            b.addr,
            Duration::from_secs(6),
            "failed its health check",
            |f| f.contains("/failed_active_hc"),
        )
        .await;
    let (sent, failures) = load.finish().await;
    eprintln!(
        "{kind:?}: {sent} requests, {} failed; a saw {}, b {}, c {} after its restart",
        failures.len(),
        a.traffic_seen(),
        b.traffic_seen(),
        c.traffic_seen()
    );

    assert_eq!(after, stopped_at, "{kind:?}: no traffic reaches ejected B");
    assert!(sent > 300, "{kind:?}: the load ran ({sent} requests)");
    assert!(
        failures.is_empty(),
        "{kind:?}: {} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        proxy
            .stat("cluster.web.outlier_detection.ejections_enforced_total")
            .await
            >= 1
    );
    assert!(proxy.stat("cluster.web.health_check.failure").await >= 2);
    assert!(a.traffic_seen() > 0 && c.traffic_seen() > 0);
}

#[tokio::test]
async fn sluice_routes_around_a_dead_a_restarted_and_a_failing_upstream() {
    chaos(Kind::Sluice).await;
}

#[tokio::test]
async fn envoy_routes_around_a_dead_a_restarted_and_a_failing_upstream() {
    chaos(Kind::Envoy).await;
}

/// Two of three hosts fail their health checks. With the default 50 % panic threshold the
/// cluster panics and spreads traffic over all three; with the threshold at 0 only the
/// healthy host gets traffic.
async fn panic_threshold(kind: Kind) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    b.fail_with(503, false);
    c.fail_with(503, false);
    let hosts = [a.addr, b.addr, c.addr];
    let (listener, admin) = (free_addr(), free_addr());
    let panics = cluster(
        "panics",
        &hosts,
        json!({ "health_checks": [health_check()] }),
    );
    let strict = cluster(
        "strict",
        &hosts,
        json!({ "health_checks": [health_check()],
                "common_lb_config": { "healthy_panic_threshold": { "value": 0 } } }),
    );
    let config = proxy_config(admin, listener, vec![panics, strict], json!({}));
    let proxy = Proxy::start(kind, &config, admin).await;
    for cluster in ["panics", "strict"] {
        proxy
            .await_flags(
                kind,
                cluster,
                a.addr,
                Duration::from_secs(5),
                "became healthy",
                |f| f == "healthy",
            )
            .await;
        for host in [b.addr, c.addr] {
            proxy
                .await_flags(kind, cluster, host, Duration::from_secs(5), "failed", |f| {
                    f == "/failed_active_hc"
                })
                .await;
        }
    }
    // Hosts start as failed until their first check; wait for real failures.
    for cluster in ["panics", "strict"] {
        let name = format!("cluster.{cluster}.health_check.failure");
        assert!(
            eventually(Duration::from_secs(5), || async {
                proxy.stat(&name).await >= 4
            })
            .await,
            "{kind:?}: {name}"
        );
    }
    let client = HttpClient::http1();
    for (path, expect_all) in [("/panics", true), ("/strict", false)] {
        let mut by_server: HashMap<String, usize> = HashMap::new();
        for _ in 0..60 {
            let r = client.get(listener, "x", path, &[]).await.unwrap();
            let server = r.json()["server"].as_str().unwrap_or("none").to_string();
            *by_server.entry(server).or_default() += 1;
        }
        if expect_all {
            for name in ["a", "b", "c"] {
                assert!(
                    by_server.get(name).copied().unwrap_or(0) >= 10,
                    "{kind:?}: panic mode spreads over every host: {by_server:?}"
                );
            }
        } else {
            assert_eq!(
                by_server,
                HashMap::from([("a".to_string(), 60)]),
                "{kind:?}: without panic only the healthy host gets traffic"
            );
        }
    }
    assert!(proxy.stat("cluster.panics.lb_healthy_panic").await >= 60);
    assert_eq!(proxy.stat("cluster.strict.lb_healthy_panic").await, 0);
}

#[tokio::test]
async fn sluice_panics_below_the_healthy_threshold() {
    panic_threshold(Kind::Sluice).await;
}

#[tokio::test]
async fn envoy_panics_below_the_healthy_threshold() {
    panic_threshold(Kind::Envoy).await;
}

const KEYS: usize = 10_000;

/// The host each of `KEYS` keys lands on through `path`, keyed by `x-key`.
async fn placement(listener: SocketAddr, path: &str) -> Vec<String> {
    let client = HttpClient::http1();
    let mut placed = Vec::with_capacity(KEYS);
    let chunks: Vec<Vec<usize>> = (0..KEYS)
        .collect::<Vec<_>>()
        .chunks(KEYS / 16)
        .map(<[usize]>::to_vec)
        .collect();
    let lookups = chunks.into_iter().map(|keys| {
        let client = client.clone();
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let key = format!("key-{k}");
                let r = client
                    .get(listener, "x", path, &[("x-key", &key)])
                    .await
                    .expect("hashed request");
                out.push(r.json()["server"].as_str().unwrap_or("none").to_string());
            }
            out
        }
    });
    for part in futures_util::future::join_all(lookups).await {
        placed.extend(part);
    }
    placed
}

fn hashed_config(admin: SocketAddr, listener: SocketAddr, hosts: &[SocketAddr]) -> String {
    let ring = cluster("ring", hosts, json!({ "lb_policy": "RING_HASH" }));
    let maglev = cluster("maglev", hosts, json!({ "lb_policy": "MAGLEV" }));
    proxy_config(
        admin,
        listener,
        vec![ring, maglev],
        json!({ "hash_policy": [ { "header": { "header_name": "x-key" } } ] }),
    )
}

/// Where 10,000 keys land with five hosts and with one of them gone, per policy.
async fn hashed_placements(kind: Kind, upstreams: &[Upstream]) -> Vec<(Vec<String>, Vec<String>)> {
    let all: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let mut out = Vec::new();
    for hosts in [&all[..], &all[..4]] {
        let (listener, admin) = (free_addr(), free_addr());
        let proxy = Proxy::start(kind, &hashed_config(admin, listener, hosts), admin).await;
        let ring = placement(listener, "/ring").await;
        let maglev = placement(listener, "/maglev").await;
        drop(proxy);
        out.push((ring, maglev));
    }
    out
}

/// Counts the keys that moved, and of those, the ones whose host is still there.
fn moved(before: &[String], after: &[String], removed: &str) -> (usize, usize) {
    let moved: Vec<usize> = (0..before.len())
        .filter(|i| before[*i] != after[*i])
        .collect();
    let between_remaining = moved.iter().filter(|i| before[**i] != removed).count();
    (moved.len(), between_remaining)
}

/// Ring hash and Maglev: a key always lands on the same host, the same host Envoy picks,
/// and removing one of five hosts moves about a fifth of the keys.
#[tokio::test]
async fn consistent_hashing_keeps_keys_in_place_and_agrees_with_envoy() {
    let mut upstreams = Vec::new();
    for name in ["h0", "h1", "h2", "h3", "h4"] {
        upstreams.push(Upstream::start(name).await);
    }
    let sluice = hashed_placements(Kind::Sluice, &upstreams).await;
    let envoy = hashed_placements(Kind::Envoy, &upstreams).await;

    let (listener, admin) = (free_addr(), free_addr());
    let all: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let again = Sluice::start(&hashed_config(admin, listener, &all), admin)
        .await
        .unwrap();
    assert_eq!(
        placement(listener, "/ring").await,
        sluice[0].0,
        "the same key lands on the same host after a restart"
    );
    drop(again);

    for (policy, pick) in [("ring hash", 0usize), ("maglev", 1usize)] {
        let choose =
            |p: &(Vec<String>, Vec<String>)| if pick == 0 { p.0.clone() } else { p.1.clone() };
        let (before, after) = (choose(&sluice[0]), choose(&sluice[1]));
        let differ = (0..KEYS)
            .filter(|i| before[*i] != choose(&envoy[0])[*i])
            .count();
        assert_eq!(
            differ, 0,
            "{policy}: sluice and Envoy place every key alike"
        );
        assert_eq!(
            after,
            choose(&envoy[1]),
            "{policy}: and alike with four hosts"
        );
        let (total, between) = moved(&before, &after, "h4");
        let on_removed = before.iter().filter(|h| *h == "h4").count();
        eprintln!(
            "{policy}: removing 1 of 5 hosts moved {total} of {KEYS} keys ({on_removed} were on it, {between} moved between remaining hosts)"
        );
        assert!(on_removed > KEYS / 10, "{policy}: h4 had its share");
        // The keys of the removed host move, and a few more: ring hash rescales every
        // host's share of its ring (Envoy does the same, key for key, as checked above).
        assert!(
            total >= on_removed && total < KEYS * 35 / 100,
            "{policy}: about 1/5 of the keys move, not {total}"
        );
    }
}

/// A cookie hash policy with a TTL: the first answer sets the cookie (Envoy's format), and
/// requests carrying it stay on one host.
async fn sticky_cookie(kind: Kind) -> String {
    let mut upstreams = Vec::new();
    for name in ["h0", "h1", "h2"] {
        upstreams.push(Upstream::start(name).await);
    }
    let hosts: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let (listener, admin) = (free_addr(), free_addr());
    let config = proxy_config(
        admin,
        listener,
        vec![cluster(
            "sticky",
            &hosts,
            json!({ "lb_policy": "RING_HASH" }),
        )],
        json!({ "hash_policy": [ { "cookie": { "name": "session", "ttl": "60s", "path": "/" } } ] }),
    );
    let _proxy = Proxy::start(kind, &config, admin).await;
    let client = HttpClient::http1();
    let first = client.get(listener, "x", "/sticky", &[]).await.unwrap();
    let set_cookie = first.header("set-cookie").expect("a generated cookie");
    let pair = set_cookie.split(';').next().unwrap().to_string();
    let server = first.json()["server"].as_str().unwrap().to_string();
    for _ in 0..20 {
        let r = client
            .get(listener, "x", "/sticky", &[("cookie", &pair)])
            .await
            .unwrap();
        assert_eq!(
            r.json()["server"].as_str().unwrap(),
            server,
            "{kind:?}: sticky"
        );
        assert!(r.header("set-cookie").is_none(), "{kind:?}: set only once");
    }
    // The value depends on the connection's addresses; the rest is the format.
    let value_end = set_cookie[9..].find('"').unwrap() + 9;
    format!("{}<value>{}", &set_cookie[..9], &set_cookie[value_end..])
}

#[tokio::test]
async fn a_generated_cookie_keeps_a_client_on_one_host_as_envoy() {
    let ours = sticky_cookie(Kind::Sluice).await;
    let envoys = sticky_cookie(Kind::Envoy).await;
    assert_eq!(ours, envoys);
}

/// A TCP server that answers each connection's first read with `reply`.
fn tcp_responder(
    listener: tokio::net::TcpListener,
    reply: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// gRPC health checks follow the service's serving status; TCP health checks pass when
/// the expected bytes come back and fail otherwise.
async fn grpc_and_tcp_health_checks(kind: Kind) {
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("demo", tonic_health::ServingStatus::Serving)
        .await;
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                grpc_listener,
            )),
    );
    let pong = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nope = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pong_addr, nope_addr) = (pong.local_addr().unwrap(), nope.local_addr().unwrap());
    let servers = [tcp_responder(pong, b"PONG"), tcp_responder(nope, b"NOPE")];

    let mut grpc_check = health_check();
    grpc_check
        .as_object_mut()
        .unwrap()
        .remove("http_health_check");
    grpc_check["grpc_health_check"] = json!({ "service_name": "demo" });
    let mut grpc_cluster = cluster(
        "grpc",
        &[grpc_addr],
        json!({ "health_checks": [grpc_check] }),
    );
    sluice_tests::config::merge(&mut grpc_cluster, sluice_tests::config::http2_options());
    let mut tcp_check = health_check();
    tcp_check
        .as_object_mut()
        .unwrap()
        .remove("http_health_check");
    // "PING" and "PONG" in hex, as the API spells payloads.
    tcp_check["tcp_health_check"] =
        json!({ "send": { "text": "50494E47" }, "receive": [ { "text": "504F4E47" } ] });
    let tcp_cluster = cluster(
        "tcp",
        &[pong_addr, nope_addr],
        json!({ "health_checks": [tcp_check] }),
    );
    let (listener, admin) = (free_addr(), free_addr());
    let config = proxy_config(admin, listener, vec![grpc_cluster, tcp_cluster], json!({}));
    let proxy = Proxy::start(kind, &config, admin).await;

    let within = Duration::from_secs(5);
    proxy
        .await_flags(kind, "tcp", pong_addr, within, "passed", |f| f == "healthy")
        .await;
    proxy
        // A reply without the expected bytes is waited on until the timeout.
        .await_flags(kind, "tcp", nope_addr, within, "timed out", |f| {
            f == "/failed_active_hc/active_hc_timeout"
        })
        .await;
    proxy
        .await_flags(kind, "grpc", grpc_addr, within, "passed", |f| {
            f == "healthy"
        })
        .await;
    reporter
        .set_service_status("demo", tonic_health::ServingStatus::NotServing)
        .await;
    proxy
        .await_flags(kind, "grpc", grpc_addr, within, "failed", |f| {
            f == "/failed_active_hc"
        })
        .await;
    reporter
        .set_service_status("demo", tonic_health::ServingStatus::Serving)
        .await;
    proxy
        .await_flags(kind, "grpc", grpc_addr, within, "recovered", |f| {
            f == "healthy"
        })
        .await;
    assert!(proxy.stat("cluster.tcp.health_check.failure").await >= 2);
    grpc.abort();
    for s in servers {
        s.abort();
    }
}

#[tokio::test]
async fn sluice_checks_grpc_and_tcp_health() {
    grpc_and_tcp_health_checks(Kind::Sluice).await;
}

#[tokio::test]
async fn envoy_checks_grpc_and_tcp_health() {
    grpc_and_tcp_health_checks(Kind::Envoy).await;
}

/// Start-up waits for the first health checks, as Envoy's cluster initialization does: the
/// very first requests go only to hosts that passed, none to the one that refuses
/// connections (without the wait, every host would start unchecked and in panic).
async fn first_requests_after_the_first_checks(kind: Kind) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dead = free_addr();
    let (listener, admin) = (free_addr(), free_addr());
    // The live hosts take 300 ms to answer a check, so the first round is not over before
    // a proxy that does not wait would take its first requests.
    let mut slow_check = health_check();
    slow_check["timeout"] = json!("1s");
    slow_check["http_health_check"]["request_headers_to_add"] =
        json!([ { "header": { "key": "x-test-delay-ms", "value": "300" } } ]);
    let web = cluster(
        "web",
        &[a.addr, b.addr, dead],
        json!({ "health_checks": [slow_check] }),
    );
    let proxy = Proxy::start(
        kind,
        &proxy_config(admin, listener, vec![web], json!({})),
        admin,
    )
    .await;
    let client = HttpClient::http1();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(
            client
                .get(listener, "x", "/web", &[])
                .await
                .map_or(0, |r| r.status.as_u16()),
        );
    }
    assert!(statuses.iter().all(|s| *s == 200), "{kind:?}: {statuses:?}");
    assert_eq!(proxy.flags("web", dead).await, "/failed_active_hc");
    assert_eq!(proxy.stat("cluster.web.lb_healthy_panic").await, 0);
}

#[tokio::test]
async fn sluice_serves_after_the_first_health_checks() {
    first_requests_after_the_first_checks(Kind::Sluice).await;
}

#[tokio::test]
async fn envoy_serves_after_the_first_health_checks() {
    first_requests_after_the_first_checks(Kind::Envoy).await;
}

/// Which upstreams 60 requests to `path` reach.
async fn spread(listener: SocketAddr, path: &str) -> HashMap<String, usize> {
    let client = HttpClient::http1();
    let mut by_server: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let r = client.get(listener, "x", path, &[]).await.unwrap();
        let server = r.json()["server"].as_str().unwrap_or("none").to_string();
        *by_server.entry(server).or_default() += 1;
    }
    by_server
}

/// An aggregate cluster over `primary` (a, b, health checked) and `secondary` (c): all
/// traffic to the primary while it is healthy, spilling over to the secondary as its
/// hosts fail (half of them: 70% availability with the 1.4 overprovisioning factor), all
/// to the secondary once none is left.
async fn aggregate_failover(kind: Kind) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let (listener, admin) = (free_addr(), free_addr());
    let primary = cluster(
        "primary",
        &[a.addr, b.addr],
        json!({ "health_checks": [health_check()] }),
    );
    let secondary = cluster("secondary", &[c.addr], json!({}));
    let failover = json!({ "name": "failover", "connect_timeout": "0.5s", "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": { "name": "envoy.clusters.aggregate", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
            "clusters": ["primary", "secondary"] } } });
    let config = proxy_config(
        admin,
        listener,
        vec![primary, secondary, failover],
        json!({}),
    );
    let proxy = Proxy::start(kind, &config, admin).await;
    for host in [a.addr, b.addr] {
        proxy
            .await_flags(
                kind,
                "primary",
                host,
                Duration::from_secs(5),
                "healthy",
                |f| f == "healthy",
            )
            .await;
    }
    let healthy = spread(listener, "/failover").await;
    assert_eq!(
        healthy.get("c"),
        None,
        "{kind:?}: a healthy primary takes everything: {healthy:?}"
    );
    a.fail_with(503, false);
    proxy
        .await_flags(
            kind,
            "primary",
            a.addr,
            Duration::from_secs(5),
            "failed",
            |f| f == "/failed_active_hc",
        )
        .await;
    // The aggregate sees a member's health change shortly after the member does.
    let spills = |m: &HashMap<String, usize>| {
        m.get("a").is_none() && m.get("b") > Some(&15) && m.get("c") > Some(&3)
    };
    let mut half = HashMap::new();
    for _ in 0..20 {
        half = spread(listener, "/failover").await;
        if spills(&half) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        spills(&half),
        "{kind:?}: with half the primary down, some traffic spills over: {half:?}"
    );
    b.fail_with(503, false);
    proxy
        .await_flags(
            kind,
            "primary",
            b.addr,
            Duration::from_secs(5),
            "failed",
            |f| f == "/failed_active_hc",
        )
        .await;
    let all_c = HashMap::from([("c".to_string(), 60)]);
    let mut down = HashMap::new();
    for _ in 0..20 {
        down = spread(listener, "/failover").await;
        if down == all_c {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        down, all_c,
        "{kind:?}: with the primary down the secondary takes everything"
    );
}

#[tokio::test]
async fn sluice_fails_over_across_an_aggregate_cluster() {
    aggregate_failover(Kind::Sluice).await;
}

#[tokio::test]
async fn envoy_fails_over_across_an_aggregate_cluster() {
    aggregate_failover(Kind::Envoy).await;
}
