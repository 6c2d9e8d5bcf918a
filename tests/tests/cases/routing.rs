//! Every route match and action of the data plane, through the real `sluice` binary to
//! real upstream servers.

use std::collections::HashMap;
use std::net::SocketAddr;

use http::Method;
use serde_json::{json, Value};
use sluice_tests::client::HttpClient;
use sluice_tests::config::{bootstrap, cluster, http2_options, http_listener};
use sluice_tests::free_addr;
use sluice_tests::process::Sluice;
use sluice_tests::upstream::Upstream;

struct Fixture {
    sluice: Sluice,
    listener: SocketAddr,
    a: Upstream,
    /// Kept alive for the clusters that route to it.
    _b: Upstream,
    rr: Vec<Upstream>,
    client: HttpClient,
}

fn direct(body: &str) -> Value {
    json!({ "status": 200, "body": { "inline_string": body } })
}

fn routes() -> Value {
    json!({
        "name": "routing_test",
        "request_headers_to_add": [
            { "header": { "key": "x-table", "value": "t" }, "append_action": "ADD_IF_ABSENT" }
        ],
        "response_headers_to_add": [ { "header": { "key": "x-resp-table", "value": "t" } } ],
        "virtual_hosts": [
            { "name": "exact", "domains": ["exact.test"], "routes": [ { "match": { "prefix": "/" }, "direct_response": direct("vh-exact") } ] },
            { "name": "suffix", "domains": ["*.wild.test"], "routes": [ { "match": { "prefix": "/" }, "direct_response": direct("vh-suffix") } ] },
            { "name": "prefix", "domains": ["pre.*"], "routes": [ { "match": { "prefix": "/" }, "direct_response": direct("vh-prefix") } ] },
            { "name": "main", "domains": ["*"],
              "request_headers_to_add": [ { "header": { "key": "x-vhost", "value": "v" } } ],
              "response_headers_to_add": [ { "header": { "key": "x-resp-vhost", "value": "v" } } ],
              "routes": [
                { "match": { "path": "/exact" }, "route": { "cluster": "a" } },
                { "match": { "prefix": "/CaseLess", "case_sensitive": false }, "direct_response": direct("caseless") },
                { "match": { "safe_regex": { "regex": "/regex/[0-9]+" } }, "direct_response": direct("regex") },
                { "match": { "path_separated_prefix": "/sep" }, "direct_response": direct("sep") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-match", "string_match": { "exact": "yes" } } ] }, "direct_response": direct("hdr-exact") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-match", "string_match": { "prefix": "pre", "ignore_case": true } } ] }, "direct_response": direct("hdr-prefix") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-match", "safe_regex_match": { "regex": "r[0-9]+" } } ] }, "direct_response": direct("hdr-regex") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-present", "present_match": true } ] }, "direct_response": direct("hdr-present") },
                { "match": { "prefix": "/hdr", "headers": [ { "name": "x-block", "present_match": true, "invert_match": true } ] }, "direct_response": direct("hdr-not-blocked") },
                { "match": { "prefix": "/hdr" }, "direct_response": direct("hdr-none") },
                { "match": { "prefix": "/q", "query_parameters": [ { "name": "v", "string_match": { "exact": "1" } } ] }, "direct_response": direct("q-exact") },
                { "match": { "prefix": "/q", "query_parameters": [ { "name": "flag", "present_match": true } ] }, "direct_response": direct("q-present") },
                { "match": { "prefix": "/q" }, "direct_response": direct("q-none") },
                { "match": { "prefix": "/rewrite/prefix/" }, "route": { "cluster": "a", "prefix_rewrite": "/new/" } },
                { "match": { "prefix": "/rewrite/regex/" }, "route": { "cluster": "a",
                    "regex_rewrite": { "pattern": { "regex": "^/rewrite/regex/([a-z]+)/([0-9]+)$" }, "substitution": "/r/\\2/\\1" } } },
                { "match": { "prefix": "/host" }, "route": { "cluster": "a", "host_rewrite_literal": "rewritten.example" } },
                { "match": { "prefix": "/redirect/https" }, "redirect": { "https_redirect": true } },
                { "match": { "prefix": "/redirect/path" }, "redirect": { "path_redirect": "/elsewhere", "response_code": "PERMANENT_REDIRECT", "strip_query": true } },
                { "match": { "prefix": "/redirect/prefix/" }, "redirect": { "prefix_rewrite": "/moved/", "host_redirect": "other.example", "port_redirect": 8443, "response_code": "FOUND" } },
                { "match": { "prefix": "/direct" }, "direct_response": { "status": 418, "body": { "inline_string": "teapot" } } },
                { "match": { "prefix": "/headers" },
                  "route": { "cluster": "a" },
                  "request_headers_to_add": [
                    { "header": { "key": "x-route", "value": "r" }, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD" },
                    { "header": { "key": "x-append", "value": "added" } },
                    { "header": { "key": "x-only-if-present", "value": "replaced" }, "append_action": "OVERWRITE_IF_EXISTS" }
                  ],
                  "request_headers_to_remove": ["x-remove-me"],
                  "response_headers_to_add": [ { "header": { "key": "x-resp-route", "value": "r" } } ],
                  "response_headers_to_remove": ["x-upstream"] },
                { "match": { "prefix": "/rr" }, "route": { "cluster": "rr3" } },
                { "match": { "prefix": "/weighted" }, "route": { "weighted_clusters": { "clusters": [ { "name": "a", "weight": 70 }, { "name": "b", "weight": 30 } ] } } },
                { "match": { "prefix": "/retrycodes" }, "route": { "cluster": "a",
                    "retry_policy": { "retry_on": "retriable-status-codes", "retriable_status_codes": [409], "num_retries": 2,
                                      "retry_back_off": { "base_interval": "0.001s", "max_interval": "0.002s" } } } },
                { "match": { "prefix": "/retry" }, "route": { "cluster": "a",
                    "retry_policy": { "retry_on": "5xx", "num_retries": 3, "retry_back_off": { "base_interval": "0.001s" } } } },
                { "match": { "prefix": "/gateway" }, "route": { "cluster": "a",
                    "retry_policy": { "retry_on": "gateway-error", "num_retries": 3, "retry_back_off": { "base_interval": "0.001s" } } } },
                { "match": { "prefix": "/timeout" }, "route": { "cluster": "a", "timeout": "0.3s" } },
                { "match": { "prefix": "/pertry" }, "route": { "cluster": "a", "timeout": "5s",
                    "retry_policy": { "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s", "retry_back_off": { "base_interval": "0.001s" } } } },
                { "match": { "prefix": "/down" }, "route": { "cluster": "dead",
                    "retry_policy": { "retry_on": "connect-failure", "num_retries": 2, "retry_back_off": { "base_interval": "0.001s" } } } },
                { "match": { "prefix": "/reset" }, "route": { "cluster": "a" } },
                { "match": { "prefix": "/lr" }, "route": { "cluster": "least" } },
                { "match": { "prefix": "/random" }, "route": { "cluster": "random" } },
                { "match": { "prefix": "/strictdns" }, "route": { "cluster": "strict_dns" } },
                { "match": { "prefix": "/logicaldns" }, "route": { "cluster": "logical_dns" } },
                { "match": { "prefix": "/dnsextension" }, "route": { "cluster": "dns_extension" } },
                { "match": { "prefix": "/h2up" }, "route": { "cluster": "h2" } },
                { "match": { "prefix": "/" }, "route": { "cluster": "a" } }
              ]
            }
        ]
    })
}

impl Fixture {
    async fn start() -> Self {
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let mut rr = Vec::new();
        for name in ["u1", "u2", "u3"] {
            rr.push(Upstream::start(name).await);
        }
        let admin = free_addr();
        let listener = free_addr();
        let dead = free_addr();
        let ep = |u: &Upstream| (u.addr, 1);
        let dns = |name: &str, kind: &str, port: u16| {
            json!({ "name": name, "type": kind, "connect_timeout": "1s", "dns_refresh_rate": "1s", "dns_lookup_family": "V4_ONLY",
                    "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [
                        { "endpoint": { "address": { "socket_address": { "address": "localhost", "port_value": port } } } } ] } ] } })
        };
        let config = bootstrap(
            admin,
            vec![http_listener(
                "ingress",
                listener,
                routes(),
                json!({ "use_remote_address": true }),
            )],
            vec![
                cluster("a", &[ep(&a)], json!({})),
                cluster("b", &[ep(&b)], json!({})),
                cluster(
                    "rr3",
                    &rr.iter().map(ep).collect::<Vec<_>>(),
                    json!({ "lb_policy": "ROUND_ROBIN" }),
                ),
                cluster("dead", &[(dead, 1)], json!({ "connect_timeout": "0.5s" })),
                cluster(
                    "least",
                    &[ep(&a), ep(&b)],
                    json!({ "lb_policy": "LEAST_REQUEST", "least_request_lb_config": { "choice_count": 2 } }),
                ),
                cluster(
                    "random",
                    &[ep(&a), ep(&b)],
                    json!({ "lb_policy": "RANDOM" }),
                ),
                dns("strict_dns", "STRICT_DNS", b.addr.port()),
                dns("logical_dns", "LOGICAL_DNS", b.addr.port()),
                // The same, as newer control planes write it: the envoy.cluster.dns extension.
                json!({ "name": "dns_extension", "connect_timeout": "1s",
                        "cluster_type": { "name": "envoy.cluster.dns", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
                            "dns_refresh_rate": "1s", "dns_lookup_family": "V4_ONLY" } },
                        "load_assignment": { "cluster_name": "dns_extension", "endpoints": [ { "lb_endpoints": [
                            { "endpoint": { "address": { "socket_address": { "address": "localhost", "port_value": b.addr.port() } } } } ] } ] } }),
                cluster("h2", &[ep(&b)], http2_options()),
            ],
        );
        let sluice = Sluice::start(&config, admin).await.expect("start sluice");
        Self {
            sluice,
            listener,
            a,
            _b: b,
            rr,
            client: HttpClient::http1(),
        }
    }

    async fn get(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> sluice_tests::client::Reply {
        self.client
            .get(self.listener, host, path, headers)
            .await
            .expect("request")
    }

    async fn body(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
        String::from_utf8_lossy(&self.get(host, path, headers).await.body).into_owned()
    }
}

#[tokio::test]
async fn virtual_hosts_are_selected_by_domain() {
    let f = Fixture::start().await;
    assert_eq!(f.body("exact.test", "/", &[]).await, "vh-exact");
    assert_eq!(f.body("EXACT.test", "/", &[]).await, "vh-exact");
    assert_eq!(f.body("x.wild.test", "/", &[]).await, "vh-suffix");
    assert_eq!(f.body("pre.anything", "/", &[]).await, "vh-prefix");
    assert_eq!(
        f.get("other.test", "/exact", &[]).await.json()["server"],
        "a"
    );
}

#[tokio::test]
async fn path_matchers() {
    let f = Fixture::start().await;
    assert_eq!(f.get("h", "/exact", &[]).await.json()["path"], "/exact");
    assert_eq!(
        f.get("h", "/exact/more", &[]).await.json()["path"],
        "/exact/more",
        "falls through to /"
    );
    assert_eq!(f.body("h", "/caseless/x", &[]).await, "caseless");
    assert_eq!(f.body("h", "/CASELESS", &[]).await, "caseless");
    assert_eq!(f.body("h", "/regex/123", &[]).await, "regex");
    assert_eq!(f.body("h", "/regex/123?q=1", &[]).await, "regex");
    assert_ne!(f.body("h", "/regex/12a", &[]).await, "regex");
    assert_eq!(f.body("h", "/sep", &[]).await, "sep");
    assert_eq!(f.body("h", "/sep/x", &[]).await, "sep");
    assert_ne!(f.body("h", "/separate", &[]).await, "sep");
}

#[tokio::test]
async fn header_and_query_matchers() {
    let f = Fixture::start().await;
    assert_eq!(
        f.body("h", "/hdr", &[("x-match", "yes")]).await,
        "hdr-exact"
    );
    assert_eq!(
        f.body("h", "/hdr", &[("x-match", "PREfix")]).await,
        "hdr-prefix"
    );
    assert_eq!(
        f.body("h", "/hdr", &[("x-match", "r42")]).await,
        "hdr-regex"
    );
    assert_eq!(
        f.body("h", "/hdr", &[("x-present", "")]).await,
        "hdr-present"
    );
    assert_eq!(f.body("h", "/hdr", &[]).await, "hdr-not-blocked");
    assert_eq!(f.body("h", "/hdr", &[("x-block", "1")]).await, "hdr-none");
    assert_eq!(f.body("h", "/q?v=1", &[]).await, "q-exact");
    assert_eq!(f.body("h", "/q?a=b&flag", &[]).await, "q-present");
    assert_eq!(f.body("h", "/q?v=2", &[]).await, "q-none");
}

#[tokio::test]
async fn rewrites() {
    let f = Fixture::start().await;
    assert_eq!(
        f.get("h", "/rewrite/prefix/x?y=1", &[]).await.json()["path"],
        "/new/x?y=1"
    );
    assert_eq!(
        f.get("h", "/rewrite/regex/abc/42", &[]).await.json()["path"],
        "/r/42/abc"
    );
    let r = f.get("original.example", "/host", &[]).await;
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("rewritten.example")
    );
    let r = f.get("original.example", "/exact", &[]).await;
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("original.example"),
        "Host is preserved"
    );
}

#[tokio::test]
async fn redirects_and_direct_responses() {
    let f = Fixture::start().await;
    let r = f
        .get("site.example:8080", "/redirect/https/a?b=c", &[])
        .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://site.example/redirect/https/a?b=c")
    );
    let r = f.get("site.example", "/redirect/path/a?b=c", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://site.example/elsewhere")
    );
    let r = f
        .get("site.example", "/redirect/prefix/rest?q=1", &[])
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://other.example:8443/moved/rest?q=1")
    );
    let r = f.get("site.example", "/direct", &[]).await;
    assert_eq!(r.status, 418);
    assert_eq!(&r.body[..], b"teapot");
}

#[tokio::test]
async fn header_mutations_at_every_level() {
    let f = Fixture::start().await;
    let r = f
        .get(
            "h",
            "/headers",
            &[
                ("x-remove-me", "1"),
                ("x-route", "client"),
                ("x-append", "client"),
                ("x-table", "client"),
            ],
        )
        .await;
    let up = |n: &str| r.upstream_header(n);
    assert_eq!(up("x-remove-me"), None);
    assert_eq!(up("x-route").as_deref(), Some("r"), "overwrite");
    assert_eq!(up("x-append").as_deref(), Some("client,added"), "append");
    assert_eq!(
        up("x-only-if-present"),
        None,
        "OVERWRITE_IF_EXISTS does not add"
    );
    assert_eq!(up("x-vhost").as_deref(), Some("v"));
    assert_eq!(
        up("x-table").as_deref(),
        Some("client"),
        "ADD_IF_ABSENT keeps the client's"
    );
    assert_eq!(r.header("x-resp-route").as_deref(), Some("r"));
    assert_eq!(r.header("x-resp-vhost").as_deref(), Some("v"));
    assert_eq!(r.header("x-resp-table").as_deref(), Some("t"));
    assert_eq!(r.header("x-upstream"), None, "response header removed");
    let r = f
        .get("h", "/headers", &[("x-only-if-present", "old")])
        .await;
    assert_eq!(
        r.upstream_header("x-only-if-present").as_deref(),
        Some("replaced")
    );
}

#[tokio::test]
async fn proxy_headers_follow_envoy() {
    let f = Fixture::start().await;
    let r = f
        .get(
            "h",
            "/exact",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
            ],
        )
        .await;
    // A loopback peer is recorded as the node's own IPv4 address, as Envoy does (the
    // differential suite compares the exact value with Envoy's).
    let xff = r.upstream_header("x-forwarded-for").unwrap_or_default();
    let (client, node) = xff.split_once(',').expect("one hop appended");
    assert_eq!(client, "203.0.113.7");
    assert!(node.parse::<std::net::Ipv4Addr>().is_ok(), "{xff}");
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    let id = r
        .upstream_header("x-request-id")
        .expect("request id generated");
    assert_eq!(id.len(), 36);
    assert_eq!(r.upstream_header("x-hop"), None);
    assert_eq!(r.upstream_header("keep-alive"), None);
    assert_eq!(r.header("server").as_deref(), Some("sluice"));
    let r2 = f.get("h", "/exact", &[]).await;
    assert_ne!(
        r2.upstream_header("x-request-id"),
        Some(id),
        "a fresh id per request"
    );
}

#[tokio::test]
async fn round_robin_order_is_exact_over_three_endpoints() {
    let f = Fixture::start().await;
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(
            f.get("h", "/rr", &[]).await.json()["server"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let first: Vec<_> = order[..3].to_vec();
    let mut distinct = first.clone();
    distinct.sort();
    assert_eq!(distinct, vec!["u1", "u2", "u3"]);
    assert_eq!(order[3..6], first[..]);
    assert_eq!(order[6..9], first[..]);
    assert!(f.rr.iter().all(|u| u.seen().len() == 3));
}

#[tokio::test]
async fn weighted_clusters_split_within_five_percent() {
    let f = Fixture::start().await;
    let total = 10_000;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = f.client.clone();
        let addr = f.listener;
        tasks.push(tokio::spawn(async move {
            let mut counts: HashMap<String, u32> = HashMap::new();
            for _ in 0..(total / 20) {
                let r = client
                    .get(addr, "h", "/weighted", &[])
                    .await
                    .expect("request");
                *counts
                    .entry(r.json()["server"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: HashMap<String, u32> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let a = f64::from(counts["a"]) / f64::from(total);
    let b = f64::from(counts["b"]) / f64::from(total);
    assert!((a - 0.70).abs() < 0.05 * 0.70, "a got {a}");
    assert!((b - 0.30).abs() < 0.05 * 0.30, "b got {b}");
}

#[tokio::test]
async fn retries_then_success() {
    let f = Fixture::start().await;
    let r = f
        .get(
            "h",
            "/retry",
            &[("x-test-fail-first", "2"), ("x-test-key", "k1")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(f.a.seen().iter().filter(|s| s.path == "/retry").count(), 3);
    assert_eq!(
        f.sluice.stat("cluster.a.upstream_rq_retry").await.unwrap(),
        2
    );
    // Exhausted: the last upstream response is returned.
    let r = f
        .get(
            "h",
            "/retry",
            &[("x-test-fail-first", "9"), ("x-test-key", "k2")],
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(&r.body[..], b"planned failure");
    assert_eq!(f.sluice.stat("http.response_flag.URX").await.unwrap(), 1);
    // Retriable status codes only retry the listed ones.
    let r = f.get("h", "/retrycodes", &[("x-test-status", "409")]).await;
    assert_eq!(r.status, 409);
    assert_eq!(
        f.a.seen()
            .iter()
            .filter(|s| s.path == "/retrycodes")
            .count(),
        3
    );
    let r = f
        .get("h", "/retrycodes/x", &[("x-test-status", "500")])
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(
        f.a.seen()
            .iter()
            .filter(|s| s.path == "/retrycodes/x")
            .count(),
        1
    );
    // gateway-error does not retry a 500.
    f.get("h", "/gateway", &[("x-test-status", "500")]).await;
    assert_eq!(
        f.a.seen().iter().filter(|s| s.path == "/gateway").count(),
        1
    );
    f.get("h", "/gateway/2", &[("x-test-status", "502")]).await;
    assert_eq!(
        f.a.seen().iter().filter(|s| s.path == "/gateway/2").count(),
        4
    );
    // A POST body is replayed on every try.
    let r = f
        .client
        .send(
            f.listener,
            Method::POST,
            "h",
            "/retry/post",
            &[("x-test-fail-first", "1"), ("x-test-key", "k3")],
            vec![7u8; 1000],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 1000);
}

#[tokio::test]
async fn timeouts_answer_504() {
    let f = Fixture::start().await;
    let r = f.get("h", "/timeout", &[("x-test-delay-ms", "2000")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(&r.body[..], b"upstream request timeout");
    assert_eq!(f.sluice.stat("http.response_flag.UT").await.unwrap(), 1);
    let r = f.get("h", "/pertry", &[("x-test-delay-ms", "1000")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        f.sluice
            .stat("cluster.a.upstream_rq_per_try_timeout")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        f.get("h", "/timeout", &[("x-test-delay-ms", "10")])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn upstream_failures_answer_503_with_flags() {
    let f = Fixture::start().await;
    let r = f.get("h", "/down", &[]).await;
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("connection failure"));
    assert_eq!(
        f.sluice
            .stat("cluster.dead.upstream_cx_connect_fail")
            .await
            .unwrap(),
        3
    );
    assert_eq!(f.sluice.stat("http.response_flag.URX").await.unwrap(), 1);
    let prom = f.sluice.admin_get("/stats/prometheus").await.unwrap();
    assert!(
        prom.contains(
            "envoy_cluster_upstream_cx_connect_fail_total{envoy_cluster_name=\"dead\"} 3"
        ),
        "{prom}"
    );
}

#[tokio::test]
async fn load_balancers_and_cluster_types() {
    let f = Fixture::start().await;
    let mut servers = HashMap::<String, u32>::new();
    for path in ["/lr", "/random"] {
        for _ in 0..60 {
            *servers
                .entry(
                    f.get("h", path, &[]).await.json()["server"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
                .or_default() += 1;
        }
    }
    assert!(servers["a"] > 10 && servers["b"] > 10, "{servers:?}");
    for path in ["/strictdns", "/logicaldns", "/dnsextension"] {
        let r = f.get("h", path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["server"], "b");
    }
    let r = f.get("h", "/h2up", &[]).await;
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(
        f.get("h", "/exact", &[]).await.json()["version"],
        "HTTP/1.1"
    );
}

#[tokio::test]
async fn http2_cleartext_downstream() {
    let f = Fixture::start().await;
    let h2 = HttpClient::http2();
    let r = h2.get(f.listener, "h", "/exact", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["server"], "a");
    let r = h2
        .send(
            f.listener,
            Method::POST,
            "h",
            "/exact",
            &[],
            vec![1u8; 100_000],
        )
        .await
        .unwrap();
    assert_eq!(r.json()["body_bytes"], 100_000);
    assert_eq!(
        h2.get(f.listener, "x.wild.test", "/", &[])
            .await
            .unwrap()
            .body,
        "vh-suffix"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let f = Fixture::start().await;
    f.get("h", "/exact", &[]).await;
    let stats = f.sluice.admin_get("/stats").await.unwrap();
    assert!(
        stats.contains("http.ingress.downstream_rq_2xx: 1"),
        "{stats}"
    );
    assert!(stats.contains("cluster.a.upstream_rq_total: 1"), "{stats}");
    let info: Value =
        serde_json::from_str(&f.sluice.admin_get("/server_info").await.unwrap()).unwrap();
    assert_eq!(info["node"]["id"], "test-node");
    let dump: Value =
        serde_json::from_str(&f.sluice.admin_get("/config_dump").await.unwrap()).unwrap();
    let clusters_dump = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        .unwrap();
    assert_eq!(
        clusters_dump["static_clusters"].as_array().unwrap().len(),
        10
    );
    let clusters = f.sluice.admin_get("/clusters").await.unwrap();
    assert!(
        clusters.contains(&format!("a::{}::weight::1", f.a.addr)),
        "{clusters}"
    );
    assert_eq!(f.sluice.admin_get("/ready").await.unwrap(), "LIVE\n");
}
